"""Which CFG half a recipe edits: "both" as the reference, or "cond", where the unconditional half passes untouched
and the conditional half is edited exactly as an edit of every row would edit it; the choice survives a save, an
older recipe reads as "both", and what cannot be honoured is refused."""

import json

import numpy as np
import pytest
import torch

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe, edit_label, halves_from_entry
from saeuron.method.statistics import ConceptStatistics, sae_fingerprint
from saeuron.method.steering import Steer
from saeuron.sae import Sae, SaeConfig

CFG_CALL = BlockCall("h", timestep=501, step_index=0, num_uncond=3, height=2, width=2)
"""Rows [0, 3) the unconditional half, [3, 6) the conditional one, as diffusers orders a CFG batch."""
NO_CFG_CALL = BlockCall("h", timestep=501, step_index=0, num_uncond=0, height=2, width=2)


def setup():
    """An SAE, a CFG batch of tokens (the same three images in both halves, so that an edit of every row moves the
    unconditional rows exactly as the conditional ones), and statistics whose "c" fires on some of their patches."""
    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(num_latents=64, k=8))
    half = torch.randn(3, 4, 16)
    with torch.no_grad():
        acts, indices = sae.encode(half.reshape(-1, 16))
    dense = torch.zeros(12, 64).scatter(1, indices, acts)
    stats = ConceptStatistics.empty("h", ["c", "other", "none"], [501], 64, "sae", sae_fingerprint(sae), "style")
    stats.add("c", 501, dense[:4].mean(0) * 4, 1)
    stats.add("other", 501, dense[4:].mean(0), 1)
    stats.add("none", 501, dense.mean(0) + 0.1, 1)
    return sae, stats, torch.cat([half, half])


@pytest.mark.parametrize("edit", [-2.0, Steer("none", 3.0)], ids=["scaled", "steered"])
def test_a_cond_recipe_leaves_the_unconditional_half_bit_for_bit_and_edits_the_conditional_one_as_both_would(edit):
    sae, stats, tokens = setup()
    both = Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base")
    cond = Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base", halves="cond")
    edited_both = UnlearningEdit(sae, both)(tokens, CFG_CALL)
    edited_cond = UnlearningEdit(sae, cond)(tokens, CFG_CALL)
    assert not torch.equal(edited_both[:3], tokens[:3])  # the reference's edit moves the unconditional half
    assert torch.equal(edited_cond[:3], tokens[:3]) and not torch.equal(edited_cond[3:], tokens[3:])
    assert torch.equal(edited_cond[3:], edited_both[3:])
    # Without CFG every row is conditional: both settings edit all of them alike.
    assert torch.equal(UnlearningEdit(sae, cond)(tokens, NO_CFG_CALL), UnlearningEdit(sae, both)(tokens, NO_CFG_CALL))


def test_the_half_is_saved_and_an_older_recipe_reads_as_both(tmp_path):
    sae, stats, tokens = setup()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, -0.25)}, "base", "max", halves="cond")
    recipe.save(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "recipe.json").read_text())["halves"] == "cond"
    loaded = Recipe.load(tmp_path / "r")
    assert loaded.halves == "cond" and edit_label(loaded.edit_of("c"), loaded.halves) == "γ -0.25 cond"
    assert torch.equal(UnlearningEdit(sae, loaded)(tokens, CFG_CALL), UnlearningEdit(sae, recipe)(tokens, CFG_CALL))

    meta = json.loads((tmp_path / "r" / "recipe.json").read_text())
    del meta["halves"]  # as every recipe written before the setting existed
    (tmp_path / "r" / "recipe.json").write_text(json.dumps(meta))
    assert Recipe.load(tmp_path / "r").halves == "both"
    Recipe.from_statistics(stats, {"c": (90.0, -0.25)}, "base", "max").save(tmp_path / "paper")
    assert "halves" not in json.loads((tmp_path / "paper" / "recipe.json").read_text())  # as before the setting
    assert halves_from_entry({"multiplier": -1.0}) == "both" and edit_label(-1.0) == "γ -1"


def test_a_half_that_does_not_exist_or_the_reference_error_mode_on_one_half_is_refused(tmp_path):
    from saeuron.config import build_config
    from saeuron.method.make_recipe import RecipeConfig, make_recipe

    sae, stats, _ = setup()
    with pytest.raises(ValueError, match=r"halves must be one of \('both', 'cond'\).*got 'uncond'"):
        Recipe.from_statistics(stats, {"c": (90.0, -1.0)}, "base", halves="uncond")
    with pytest.raises(ValueError, match="halves must be one of"):
        halves_from_entry({"multiplier": -1.0, "halves": "cfg"})
    cond = Recipe.from_statistics(stats, {"c": (90.0, -1.0)}, "base", halves="cond")
    with pytest.raises(ValueError, match="edits the 'cond' half only: use error_mode 'correct'"):
        UnlearningEdit(sae, cond, error_mode="reference")
    # Refused before the statistics are read: there are none at that path, which would raise FileNotFoundError.
    with pytest.raises(ValueError, match="halves must be one of"):
        make_recipe(build_config(RecipeConfig, statistics=str(tmp_path / "nothing"), concepts=["c"], halves="uncond"))


def test_the_unlearned_pipeline_edits_the_half_its_recipe_names_and_keeps_it_through_save_pretrained(
    minicanvas_pipeline, tmp_path
):
    """Sampled for real: the pipeline a search trial and the evaluation build from a "cond" recipe gives exactly the
    images of the edit applied to the conditional rows by hand, other images than "both", and the same as "both"
    without CFG (every row conditional)."""
    from helpers import STEPS, STYLE_HOOK

    from saeuron.diffusion.hooks import HookedPipeline, resolve_module
    from saeuron.method.selection import Rules
    from saeuron.method.unlearned_pipeline import UnlearnedPipeline

    torch.manual_seed(0)
    width = resolve_module(minicanvas_pipeline, STYLE_HOOK).proj_out.out_channels
    sae = Sae(width, SaeConfig(num_latents=64, k=8))
    rules = Rules(  # 16 latents scaled by −2 wherever active, at every step (one timestep covers all)
        torch.zeros(16, dtype=torch.long),
        torch.arange(16),
        torch.full((16,), -2.0),
        torch.zeros(16),
        torch.zeros(16, dtype=torch.long),
    )

    def recipe(halves):
        concepts = {"Neon_Glow": {"percentile": 99.0, "multiplier": -2.0}}
        return Recipe(STYLE_HOOK, "sae", sae_fingerprint(sae), "base", concepts, [501], rules, halves=halves)

    prompts, seeds = ["An image of Stars in Neon Glow style.", "An image of Hearts."], [1, 2]

    def images(pipe, guidance=7.5):
        return pipe.generate(prompts, seeds, num_inference_steps=STEPS, guidance_scale=guidance, output_type="np").images

    both = UnlearnedPipeline.from_recipe(minicanvas_pipeline, sae, recipe("both"))
    cond = UnlearnedPipeline.from_recipe(minicanvas_pipeline, sae, recipe("cond"))
    edit = UnlearningEdit(sae, recipe("both"))

    def by_hand(tokens, call):
        return torch.cat([tokens[: call.num_uncond], edit(tokens[call.num_uncond :], call)])

    hooked = HookedPipeline(minicanvas_pipeline)
    expected = hooked.generate(
        prompts, seeds, edits={STYLE_HOOK: by_hand}, num_inference_steps=STEPS, guidance_scale=7.5, output_type="np"
    ).images
    from_cond = images(cond)
    assert np.array_equal(from_cond, expected)
    assert np.abs(from_cond - images(both)).max() > 0.05
    assert np.array_equal(images(cond, guidance=1.0), images(both, guidance=1.0))
    cond.save_pretrained(tmp_path / "unlearned")
    again = UnlearnedPipeline.from_pretrained(tmp_path / "unlearned", dtype=torch.float32)
    again.set_progress_bar_config(disable=True)
    assert again.recipe.recipe.halves == "cond" and np.array_equal(images(again), from_cond)
