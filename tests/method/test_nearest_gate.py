"""The "nearest" gate: the paper's edit on the images whose patch-averaged SAE code, its squared distance to each
concept's mean summed over the generation's steps, is nearest a forgotten concept's mean, decided after ``wait``
steps; no edit on the others."""

import json

import pytest
import torch
from test_image_gate import CALL, setup

from saeuron.method.components import DiffusersRecipe
from saeuron.method.detection import NearestDetector
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.selection import Gate


def codes(per_image: list[list[float]]):
    """(acts, indices) [images·2 patches, 1]: each image's two patches carry latent 0 and latent 1 with the values
    given, so its patch-averaged code is [a / 2, b / 2, 0]."""
    acts = torch.tensor([[v] for a, b in per_image for v in (a, b)])
    indices = torch.tensor([[i % 2] for i in range(len(acts))])
    return acts, indices


def test_an_image_shows_the_concept_once_the_concepts_mean_is_nearest_over_the_steps_so_far_after_the_wait():
    # Concepts "gone" (forgotten, first), "kept" and "other" at two timesteps; latent 2 never fires in these codes.
    centroids = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]] * 2])
    detector = NearestDetector(centroids, forgotten=1, wait=1)
    # Step 1, decided on nothing yet: image 0 is at "gone"'s mean, image 1 nearer "kept".
    assert detector(*codes([[2, 0], [0, 1.6]]), 2, 0, timestep=901, index=0).tolist() == [False, False]
    # Step 2: image 0 drifts to "kept" ([0, 0.6]: 1.16 from "gone", 0.16 from "kept") but its sum stays nearer "gone"
    # (1.16 against 2.16); image 1 moves to "gone" ([0.75, 0]: 0.0625 vs 1.5625) yet its sum (0.7225 vs 1.5825) does
    # not tip. Both halves of an image alike.
    found = detector(*codes([[0, 1.2], [1.5, 0]]), 2, 0, timestep=451, index=1)
    assert found.tolist() == [True, False]
    # Sticky, whatever step 3 says; a higher timestep starts a new generation, waiting again.
    assert detector(*codes([[0, 2], [0, 2]]), 2, 0, timestep=201, index=1).tolist() == [True, False]
    cfg = detector(*codes([[0, 0], [0, 0], [2, 0], [0, 2]]), 4, 2, timestep=901, index=0)
    assert cfg.tolist() == [False] * 4 and detector.detected.tolist() == [False, False]
    assert detector(*codes([[0, 0], [0, 0], [2, 0], [0, 2]]), 4, 2, timestep=451, index=1).tolist() == [True, False] * 2


@pytest.mark.parametrize("edit", [-2.0, -5.0], ids=["gamma-2", "gamma-5"])
def test_the_nearest_gate_edits_the_concepts_images_as_the_paper_does_and_leaves_the_others_bit_for_bit(edit):
    sae, stats, tokens = setup()
    paper = UnlearningEdit(sae, Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base", "max"))(tokens, CALL)
    recipe = Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base", "max", gate=Gate("nearest", wait=0))
    assert torch.equal(recipe.detect, stats.means().float())  # "c" is the statistics' first concept already
    assert torch.equal(recipe.rules.threshold, Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base", "max").rules.threshold)
    edit_fn = UnlearningEdit(sae, recipe)
    gated = edit_fn(tokens, CALL)
    assert edit_fn.detector.detected.tolist() == [True, True, False, False]
    assert torch.equal(gated[:2], paper[:2]) and not torch.equal(gated[:2], tokens[:2])
    assert torch.equal(gated[2:], tokens[2:]) and not torch.equal(paper[2:], tokens[2:])
    # Forgetting "other" instead puts its mean first: the same images, the other way round.
    other = Recipe.from_statistics(stats, {"other": (90.0, edit)}, "base", "max", gate=Gate("nearest", wait=0))
    assert torch.equal(other.detect, stats.means().float().flip(0))
    edit_other = UnlearningEdit(sae, other)
    edit_other(tokens, CALL)
    assert edit_other.detector.detected.tolist() == [False, False, True, True]
    # With the default wait nothing is found, nor edited, on a generation's first step.
    waiting = UnlearningEdit(sae, Recipe.from_statistics(stats, {"c": (90.0, edit)}, "base", "max", gate=Gate("nearest")))
    assert torch.equal(waiting(tokens, CALL), tokens)


def test_the_nearest_gate_travels_with_the_recipe_and_its_component(tmp_path):
    sae, stats, tokens = setup()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate.parse("nearest:0"))
    recipe.save(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "recipe.json").read_text())["gate"] == {
        "kind": "nearest",
        "sigmas": 1.0,
        "share": 0.1,
        "wait": 0,
    }
    loaded = Recipe.load(tmp_path / "r")
    assert loaded.gate == Gate("nearest", wait=0) and torch.equal(loaded.detect, recipe.detect)
    DiffusersRecipe.from_pretrained(tmp_path / "r").save_pretrained(tmp_path / "again")
    assert torch.equal(Recipe.load(tmp_path / "again").detect, recipe.detect)
    assert torch.equal(UnlearningEdit(sae, loaded)(tokens, CALL), UnlearningEdit(sae, recipe)(tokens, CALL))
    loaded.detect = None
    with pytest.raises(ValueError, match="'nearest' gate needs what it detects images by"):
        loaded.__post_init__()


def test_the_nearest_gates_spec_and_refusals():
    assert Gate.parse("nearest") == Gate("nearest", wait=2) and Gate.parse("nearest:5", 2.0, 0.3) == Gate("nearest", wait=5)
    assert Gate.parse("image:0.5:0.2").record() == {"kind": "image", "sigmas": 0.5, "share": 0.2}  # recipes as before
    with pytest.raises(ValueError, match="wait and keep whole numbers of steps and latents"):
        Gate.parse("nearest:1.5")
    with pytest.raises(ValueError, match="'nearest:WAIT:KEEP'"):
        Gate.parse("nearest:1:2:3")
    with pytest.raises(ValueError, match="wait 3 applies to the 'nearest' and 'cell' gates only"):
        Gate("image", wait=3).check()
    with pytest.raises(ValueError, match=r"whole number of steps \(>= 0\), got -1"):
        Gate("nearest", wait=-1).check()
    with pytest.raises(ValueError, match="gate_sigmas 2 applies to the 'others' and 'image' gates only"):
        Gate("nearest", 2.0).check()


def test_jobs_recipe_takes_the_nearest_gates_spec_and_refuses_numbers_it_would_ignore(tmp_path):
    from saeuron.config import build_config
    from saeuron.method.make_recipe import RecipeConfig, make_recipe

    sae, stats, _ = setup()
    stats.save(tmp_path / "stats")
    made = make_recipe(
        build_config(
            RecipeConfig, statistics=str(tmp_path / "stats"), concepts=["c"], gate="nearest:1", output_dir=str(tmp_path / "r")
        )
    )
    assert Recipe.load(tmp_path / "r").gate == made.gate == Gate("nearest", wait=1)
    # Refused before the statistics are read: there are none at that path, which would raise FileNotFoundError.
    nothing = str(tmp_path / "nothing")
    with pytest.raises(
        ValueError, match="gate_sigmas 2 applies to the 'others' and 'image' gates named without a z, not 'nearest'"
    ):
        make_recipe(build_config(RecipeConfig, statistics=nothing, concepts=["c"], gate="nearest", gate_sigmas=2.0))
    with pytest.raises(ValueError, match="gate_share 0.3 applies to an 'image' gate named without a share, not 'image:1:0.05'"):
        make_recipe(build_config(RecipeConfig, statistics=nothing, concepts=["c"], gate="image:1:0.05", gate_share=0.3))


def test_compact_means_keep_each_concepts_largest_entries_and_find_the_same_images(tmp_path):
    sae, stats, tokens = setup()
    means = stats.means().float()
    whole = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("nearest", wait=0))
    compact = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate.parse("nearest:0:3"))
    assert compact.gate == Gate("nearest", wait=0, keep=3) and compact.detect.shape == (2, 1, 3)
    top = means.topk(3, -1)
    assert torch.equal(compact.detect, top.values) and torch.equal(compact.detect_index, top.indices)
    # Three of 64 latents a concept are enough here to tell the images apart: the same images, edited alike.
    edit = UnlearningEdit(sae, compact)
    assert torch.equal(edit(tokens, CALL), UnlearningEdit(sae, whole)(tokens, CALL))
    assert edit.detector.detected.tolist() == [True, True, False, False]
    # The detector measures the distance to the truncated mean: the rest of the mean counts as 0.
    truncated = torch.zeros_like(means).scatter_(-1, top.indices, top.values)
    acts, indices = sae.encode(tokens.reshape(-1, 16))
    expected = NearestDetector(truncated, 1, 0).evidence(acts, indices, 4, 0, 0)
    torch.testing.assert_close(NearestDetector(top.values, 1, 0, top.indices, 64).evidence(acts, indices, 4, 0, 0), expected)
    # Recorded (keep 0, every entry, is recorded as before it existed), saved, loaded, and through the component.
    compact.save(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "recipe.json").read_text())["gate"]["keep"] == 3
    assert "keep" not in Gate("nearest").record()
    loaded = Recipe.load(tmp_path / "r")
    assert loaded.gate == compact.gate and torch.equal(loaded.detect_index, compact.detect_index)
    DiffusersRecipe.from_pretrained(tmp_path / "r").save_pretrained(tmp_path / "again")
    again = Recipe.load(tmp_path / "again")
    assert torch.equal(again.detect, compact.detect) and torch.equal(again.detect_index, compact.detect_index)
    # A keep at or above the SAE's latents keeps the means whole.
    assert Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("nearest", keep=64)).detect_index is None


def test_compact_means_refusals():
    with pytest.raises(ValueError, match=r"keep is a number of latents \(>= 0; 0 keeps every one\), got -1"):
        Gate("nearest", keep=-1).check()
    with pytest.raises(ValueError, match="keep 8 applies to the 'nearest' and 'cell' gates only"):
        Gate("image", keep=8).check()
    with pytest.raises(ValueError, match="below the SAE's number of latents"):
        NearestDetector(torch.ones(2, 1, 3), 1, 0, torch.tensor([[[0, 1, 64]], [[0, 1, 2]]]), 64)
    sae, stats, _ = setup()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("nearest", keep=3))
    recipe.detect_index = recipe.detect_index[:, :, :2]
    with pytest.raises(ValueError, match="detect_index shaped as detect"):
        recipe.__post_init__()
