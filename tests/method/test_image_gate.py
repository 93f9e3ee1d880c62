"""The "image" gate: the paper's edit on the images whose patches pass the strict threshold often enough over the
generation so far, no edit on the others; the detection is per image, sticky, and starts again with a generation."""

import json

import pytest
import torch

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.components import DiffusersRecipe
from saeuron.method.detection import ImageDetector
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.selection import Gate, gate_thresholds
from saeuron.method.statistics import ConceptStatistics, patch_moments, sae_fingerprint
from saeuron.method.steering import Steer
from saeuron.sae import Sae, SaeConfig


def code(values_per_image: list[list[float]]):
    """(acts, indices) [images·patches, 2] where latent 0 has the given value on each patch and latent 1 is 0.5."""
    values = torch.tensor(values_per_image, dtype=torch.float32).reshape(-1, 1)
    acts = torch.cat([values, torch.full_like(values, 0.5)], 1)
    return acts, torch.tensor([[0, 1]]).expand(len(values), 2)


def test_an_image_shows_the_concept_once_its_mean_share_reaches_the_gates_and_keeps_showing_it():
    detector = ImageDetector(torch.tensor([[1.0, float("inf")], [1.0, float("inf")]]), share=0.3)
    # Step 1: image 0 passes on 2 of 4 patches (0.5), image 1 on none.
    first = detector(*code([[2, 2, 0, 0], [0, 0, 0, 0]]), 2, 0, timestep=901, index=0)
    assert first.tolist() == [True, False]
    # Step 2: image 1 on 3 of 4 (mean 0.375: found), image 0 on none (mean 0.25, but found already: it stays).
    assert detector(*code([[0, 0, 0, 0], [2, 2, 2, 0]]), 2, 0, timestep=451, index=1).tolist() == [True, True]
    assert first.tolist() == [True, False]  # what a call returned is its own, not the detector's changing state
    # A higher timestep starts a new generation; with CFG the unconditional rows follow their image's conditional row.
    cfg = detector(*code([[2, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 0, 0]]), 4, 2, timestep=901, index=0)
    assert cfg.tolist() == [False, True, False, True] and detector.detected.tolist() == [False, True]
    with pytest.raises(ValueError, match="unconditional rows then as many conditional ones"):
        detector(*code([[0] * 4] * 3), 3, 1, timestep=901, index=0)


def setup():
    """An SAE, four images of 4 patches (the first two scaled up, so that they are concept "c"'s), and statistics of
    "c" (those two) and "other" (the rest) with firing moments, gathered from those very patches."""
    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(num_latents=64, k=4))
    tokens = torch.randn(4, 4, 16)
    tokens[:2] *= 3
    stats = ConceptStatistics.empty("h", ["c", "other"], [501], 64, "sae", sae_fingerprint(sae), "style")
    moments = patch_moments(sae, tokens)
    for concept, rows in (("c", slice(0, 2)), ("other", slice(2, 4))):
        stats.add(concept, 501, moments.mean[rows].sum(0), 2, moments.fires[rows].sum(0), moments.squares[rows].sum(0))
    return sae, stats, tokens


CALL = BlockCall("h", timestep=501, step_index=0, num_uncond=0, height=2, width=2)


@pytest.mark.parametrize("edit", [-2.0, Steer("other", 3.0)], ids=["scaled", "steered"])
def test_the_image_gate_edits_the_concepts_images_as_the_paper_does_and_leaves_the_others_bit_for_bit(edit):
    sae, stats, tokens = setup()
    paper = UnlearningEdit(sae, Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base", "max"))(tokens, CALL)
    recipe = Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base", "max", gate=Gate("image", 1.0, 0.2))
    selected = recipe.selection()
    strict = gate_thresholds(stats, [1], Gate("others", 1.0))
    assert torch.equal(recipe.detect[selected.timestep_index, selected.latent], strict[selected.timestep_index, selected.latent])
    assert int(torch.isfinite(recipe.detect).sum()) == len(selected)
    edit_fn = UnlearningEdit(sae, recipe)
    gated = edit_fn(tokens, CALL)
    assert edit_fn.detector.detected.tolist() == [True, True, False, False]
    assert torch.equal(gated[:2], paper[:2]) and not torch.equal(gated[:2], tokens[:2])
    assert torch.equal(gated[2:], tokens[2:]) and not torch.equal(paper[2:], tokens[2:])  # the paper's edit moves them


def test_the_image_gate_travels_with_the_recipe_and_its_component(tmp_path):
    sae, stats, tokens = setup()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("image", 0.5, 0.25))
    recipe.save(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "recipe.json").read_text())["gate"] == {"kind": "image", "sigmas": 0.5, "share": 0.25}
    loaded = Recipe.load(tmp_path / "r")
    assert loaded.gate == Gate("image", 0.5, 0.25) and torch.equal(loaded.detect, recipe.detect)
    component = DiffusersRecipe.from_pretrained(tmp_path / "r")
    component.save_pretrained(tmp_path / "again")
    assert torch.equal(Recipe.load(tmp_path / "again").detect, recipe.detect)
    assert torch.equal(UnlearningEdit(sae, loaded)(tokens, CALL), UnlearningEdit(sae, recipe)(tokens, CALL))
    loaded.detect = None
    with pytest.raises(ValueError, match="'image' gate needs what it detects images by"):
        loaded.__post_init__()
    with pytest.raises(ValueError, match="gate_share 0.5 applies to the 'image' gate only"):
        Gate("others", 1.0, 0.5).check()
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        Gate("image", 1.0, 0.0).check()
