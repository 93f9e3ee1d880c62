"""The feature atlas: its parts against their definitions, its bad input, and an atlas of a MiniCanvas style recipe."""

import io
import json

import numpy as np
import pytest
import torch
from helpers import STEPS, STYLE_HOOK, browser_check, neon_glow_recipe, recipe_for_another_sae
from PIL import Image

from saeuron.atlas.analysis import Recording, summarise_latent
from saeuron.atlas.effect import LatentScaleEdit
from saeuron.atlas.job import AtlasConfig, atlas, atlas_tracked
from saeuron.atlas.pages import curves_picture, images_picture, write_index, write_latent_page
from saeuron.atlas.record import latent_activations
from saeuron.config import build_config
from saeuron.diffusion.hooks import HookedPipeline
from saeuron.sae import Sae, SaeConfig


def test_latent_activations_are_the_dense_code_at_those_latents():
    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(expansion_factor=4, k=3))
    x = torch.randn(2, 5, 16)
    acts, indices = sae.encode(x)
    dense = torch.zeros(2, 5, 64).scatter_(-1, indices, acts)
    latents = torch.tensor([indices[0, 0, 0].item(), 63, indices[1, 4, 2].item()])
    torch.testing.assert_close(latent_activations(sae, x, latents), dense[..., latents])


def test_scaling_a_latent_by_one_leaves_the_image_exactly_as_it_is(minicanvas_pipeline):
    torch.manual_seed(0)
    hooked = HookedPipeline(minicanvas_pipeline)
    sae = Sae(64, SaeConfig(expansion_factor=4, k=8))
    kwargs = dict(num_inference_steps=4, guidance_scale=7.5, output_type="np")
    plain = hooked.generate(["An image of Stars in Neon Glow style."], [188], capture=[STYLE_HOOK], **kwargs)
    latent = int(sae.encode(plain.captures[STYLE_HOOK].stacked())[1].flatten().mode().values)  # the one firing most often
    plain = plain.images
    same = hooked.generate(
        ["An image of Stars in Neon Glow style."], [188], edits={STYLE_HOOK: LatentScaleEdit(sae, latent, 1.0)}, **kwargs
    )
    ablated = hooked.generate(
        ["An image of Stars in Neon Glow style."], [188], edits={STYLE_HOOK: LatentScaleEdit(sae, latent, 0.0)}, **kwargs
    )
    assert np.array_equal(plain, same.images) and not np.array_equal(plain, ablated.images)


def synthetic_recording(fire_on_target: float, fire_elsewhere: float) -> Recording:
    """Four images (two of concept A), three steps, a 2×2 patch grid, two latents: one firing, one silent."""
    labels = np.array(["A", "A", "B", "C"], dtype=object)
    max_by_step = np.zeros((4, 3, 2), dtype=np.float32)
    max_by_step[:2, :, 0] = fire_on_target
    max_by_step[2:, :, 0] = fire_elsewhere
    heat = np.zeros((4, 3, 4, 2), dtype=np.float32)
    heat[:, :, 0, 0] = max_by_step[:, :, 0]
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, format="PNG")
    return Recording(
        labels,
        ["p"] * 4,
        ["A", "A", "B", "C"],
        ["o"] * 4,
        [1, 2, 3, 4],
        [image.getvalue()] * 4,
        [901, 501, 1],
        max_by_step,
        max_by_step / 4,
        heat,
        2,
    )


def test_a_latent_summary_ranks_bands_and_scores_and_a_silent_latent_draws_as_silent(tmp_path):
    rec = synthetic_recording(2.0, 0.5)
    firing = summarise_latent(rec, 0, 7, "A", top_count=2)
    assert firing.top == [0, 1] and firing.top_concept_share == 1.0 and firing.peak == 2.0 and firing.firing_share == 1.0
    assert firing.specificity == 1.0 and firing.bands == [[], [], [], [2, 3]]  # 0.5 is 25 % of the peak: band (0, 25 %]
    assert firing.curves["target_mean"] == [0.5, 0.5, 0.5] and firing.curves["others_median"] == [0.125] * 3
    silent = summarise_latent(rec, 1, 8, "A")
    assert silent.peak == 0.0 and silent.top == [] and silent.firing_share == 0.0 and silent.specificity == 0.5
    for summary, column in ((firing, 0), (silent, 1)):
        images_picture(rec, column, summary, ["early", "middle", "late"], tmp_path / f"{summary.latent}_images.png")
        curves_picture(rec, summary, {501: 0.3}, {}, tmp_path / f"{summary.latent}_curves.png")
        write_latent_page(tmp_path, summary)
    records = write_index(tmp_path, "test", [7, 8])
    assert [r["latent"] for r in records] == [7, 8]  # most specific first
    assert json.loads((tmp_path / "latent_000008.json").read_text())["peak"] == 0.0


@pytest.fixture
def recipe_and_sae(tmp_path):
    return recipe_for_another_sae(tmp_path, latents=(3,))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(), "the recipe was built for another SAE"),
        (dict(recipe="", latents=[3]), "the listed latents need --concept"),
        (
            dict(recipe="", latents=[3, 128], concept="Neon_Glow"),
            r"latents \[128\] are out of range: the SAE has 128 latents \(0..127\)",
        ),
        (dict(recipe="", latents=[1], concept="Neon_Glow", hookpoint=""), "pass --recipe or --hookpoint"),
        (dict(recipe="", latents=[1, 2], concept="Starz"), "'Starz' is neither a style nor an object of minicanvas"),
        (dict(recipe="", latents=[1], concept="Neon_Glow", top=2), "--top needs --statistics"),
    ],
)
def test_bad_input_fails_before_any_sampling(recipe_and_sae, tmp_path, overrides, message):
    recipe, sae = recipe_and_sae
    values = {**dict(recipe=str(recipe), sae=str(sae), hookpoint=STYLE_HOOK, study_dir=str(tmp_path / "study")), **overrides}
    with pytest.raises(ValueError, match=message):
        atlas(build_config(AtlasConfig, **values))
    assert not (tmp_path / "study" / "atlas").exists()


@pytest.mark.slow
def test_an_atlas_of_a_style_recipe_shows_the_style_and_its_pages_load(style_sae, style_statistics, tmp_path, ray_cluster):
    neon_glow_recipe(style_statistics, tmp_path / "recipe")
    cfg = build_config(
        AtlasConfig,
        recipe=str(tmp_path / "recipe"),
        sae=str(style_sae),
        study_dir=str(tmp_path / "study"),
        max_latents=4,
        grid__seeds=[188],
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        effect_images=2,
        effect_factors=[0.0, -2.0, 5.0],
    )
    records = atlas_tracked(cfg)
    keys = ("latent", "specificity", "top_concept_share", "firing_share", "effect_probability", "effect_pixel_change")
    print(json.dumps([{k: r[k] for k in keys} for r in records], indent=1))
    folder = cfg.atlas_dir().local_path
    groups = json.loads((folder / "groups.json").read_text())
    print(json.dumps(groups))
    assert len(records) == 4
    # Measured with the fixture's SAE (p 99, γ −1; its 4 most often selected latents, 88 images of seed 188): top
    # images of Neon Glow 6/6, 6/6, 5/6, 4/6, specificity 0.978–0.983. Ablating one latent changes the image (mean
    # pixel change 0.002–0.018) but moves the judge's probability of Neon Glow by < 1e-4; scaled by −2 the strongest
    # latent alone takes it from 0.9999 to 0.0006, the four together to 0.009 (×0 together: 0.9998).
    assert np.mean([r["top_concept_share"] for r in records]) >= 0.75 and min(r["specificity"] for r in records) >= 0.95
    for r in records:
        assert r["effect_pixel_change"]["0"] > 1e-3 and abs(r["effect_probability_drop"]) < 1e-3
    assert min(r["effect_probability"]["-2"] for r in records) < 0.01
    together = groups["Neon_Glow"]["probability"]
    assert together["1"] > 0.99 and together["0"] > 0.99 and together["-2"] < 0.1
    loaded, total = browser_check(folder / "index.html")
    assert total == 0 and loaded == 0  # the index is a table of links
    loaded, total = browser_check(folder / f"latent_{records[0]['latent']:06d}.html")
    assert loaded == total == 3
    # A rerun reuses the recording and writes no page again.
    pages = {p.name: p.stat().st_mtime_ns for p in folder.glob("latent_*.json")}
    again = atlas(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("latent_*.json")} == pages and again == records
