"""The "cell" gate: the nearest gate over one mean per concept and value of the prompts' other label (a style's
rendering of each object), gathered with ``cell_means``."""

import json

import pytest
import torch
from test_image_gate import CALL, setup

from saeuron.method.detection import NearestDetector
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.selection import Gate
from saeuron.method.statistics import ConceptStatistics, patch_moments, sae_fingerprint

STYLE_HOOK = "unet.up_blocks.1.attentions.2"


def cell_setup():
    """``setup``'s SAE and images, with statistics kept per cell: concept "c" is images 0 ("x") and 1 ("y"), "other"
    images 2 ("x") and 3 ("x"): "other" has no "y" prompt."""
    sae, _, tokens = setup()
    stats = ConceptStatistics.empty("h", ["c", "other"], [501], 64, "sae", sae_fingerprint(sae), "style", cells=["x", "y"])
    moments = patch_moments(sae, tokens)
    for image, (concept, cell) in enumerate([("c", "x"), ("c", "y"), ("other", "x"), ("other", "x")]):
        one = slice(image, image + 1)
        stats.add(concept, 501, moments.mean[one].sum(0), 1, moments.fires[one].sum(0), moments.squares[one].sum(0), cell)
    return sae, stats, tokens, moments


def test_cell_statistics_sum_to_the_concepts_and_travel_with_them(tmp_path):
    sae, stats, tokens, moments = cell_setup()
    assert stats.cell_counts[:, :, 0].tolist() == [[1, 1], [2, 0]]
    torch.testing.assert_close(stats.cell_sums.sum(1), stats.sums)
    means = stats.cell_means()
    assert torch.equal(means[0, 1, 0], moments.mean[1])
    torch.testing.assert_close(means[1, 0, 0], moments.mean[2:].mean(0))
    assert bool(means[1, 1].isnan().all()) and not bool(means[:, 0].isnan().any())  # no "other" prompt of "y"
    stats.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "statistics.json").read_text())["cells"] == ["x", "y"]
    loaded = ConceptStatistics.load(tmp_path / "s")
    assert loaded.cells == ["x", "y"] and torch.equal(loaded.cell_sums, stats.cell_sums)
    assert torch.equal(loaded.cell_counts, stats.cell_counts)
    with pytest.raises(ValueError, match=r"kept per \['x', 'y'\]: got prompts of 'z'"):
        stats.add("c", 501, moments.mean[0], 1, cell="z")
    _, plain, _ = setup()  # gathered without cells: saved and loaded as before, refused by the cell gate
    plain.save(tmp_path / "p")
    assert "cells" not in json.loads((tmp_path / "p" / "statistics.json").read_text())
    with pytest.raises(ValueError, match="cell_means: true"):
        ConceptStatistics.load(tmp_path / "p").cell_means()


def test_the_nearest_cell_finds_an_image_its_concepts_mean_does_not():
    # Concept "gone" draws "a" as [4, 0, 0] and "b" as [0, 0, 2]: its mean [2, 0, 1] blurs them. "kept" draws "a" as
    # [0, 1, 0] and has no "b" (NaN). An image at [0, 0.6, 1.8], one of "gone"'s "b", is nearer "kept"'s mean (3.4
    # against 5.0) but nearest the cell ("gone", "b"): 0.4.
    cells = torch.tensor([[[[4.0, 0.0, 0.0]], [[0.0, 0.0, 2.0]]], [[[0.0, 1.0, 0.0]], [[float("nan")] * 3]]])  # [C, K, T, F]
    means = torch.stack([cells[0].mean(0), cells[1, 0]])  # [C, T, F]
    by_cells = NearestDetector(cells, forgotten=1, wait=0)
    assert by_cells.forgotten == 2 and by_cells.centroids.shape == (3, 1, 3)  # the empty cell left out
    acts, indices = torch.tensor([[1.2], [3.6]]), torch.tensor([[1], [2]])  # one image of two patches
    assert by_cells(acts, indices, 1, 0, timestep=1, index=0).tolist() == [True]
    assert NearestDetector(means, forgotten=1, wait=0)(acts, indices, 1, 0, timestep=1, index=0).tolist() == [False]


def test_the_cell_gate_recipe_edits_as_the_nearest_gate_and_travels(tmp_path):
    sae, stats, tokens, _ = cell_setup()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("cell", wait=0))
    assert recipe.detect.shape == (2, 2, 1, 64)
    assert torch.equal(recipe.detect.nan_to_num(), stats.cell_means().nan_to_num())  # "c" first already
    nearest = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("nearest", wait=0))
    edit = UnlearningEdit(sae, recipe)
    assert torch.equal(edit(tokens, CALL), UnlearningEdit(sae, nearest)(tokens, CALL))
    assert edit.detector.detected.tolist() == [True, True, False, False]
    recipe.save(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "recipe.json").read_text())["gate"] == {
        "kind": "cell",
        "sigmas": 1.0,
        "share": 0.1,
        "wait": 0,
    }
    loaded = Recipe.load(tmp_path / "r")
    assert loaded.gate == Gate("cell", wait=0) and torch.equal(loaded.detect.nan_to_num(), recipe.detect.nan_to_num())
    assert torch.equal(UnlearningEdit(sae, loaded)(tokens, CALL), edit(tokens, CALL))
    compact = Recipe.from_statistics(stats, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("cell", wait=0, keep=8))
    assert compact.detect.shape == compact.detect_index.shape == (2, 2, 1, 8)
    assert UnlearningEdit(sae, compact).detector is not None
    _, plain, _ = setup()
    with pytest.raises(ValueError, match="cell_means: true"):
        Recipe.from_statistics(plain, {"c": (90.0, -2.0)}, "base", "max", gate=Gate("cell"))


def test_the_cell_gates_spec_and_refusals():
    from saeuron.study.config import StudyConfig
    from saeuron.tuning.config import SearchOptions

    assert Gate.parse("cell") == Gate("cell") and Gate.parse("cell:3:16") == Gate("cell", wait=3, keep=16)
    with pytest.raises(ValueError, match="gate_sigmas 2 applies to the 'others' and 'image' gates only"):
        Gate("cell", sigmas=2.0).check()
    with pytest.raises(ValueError, match="wait 3 applies to the 'nearest' and 'cell' gates only"):
        Gate("image", wait=3).check()
    with pytest.raises(ValueError, match="set gather.cell_means: true"):
        StudyConfig(search=SearchOptions(gate=["nearest", "cell"]))


def test_a_search_under_the_cell_gate_refuses_statistics_without_cells_before_ray(tmp_path):
    from saeuron.benchmarks import get_benchmark
    from saeuron.tuning.choice import search_targets
    from saeuron.tuning.config import SearchConfig

    for name, cells in (("plain", None), ("cells", ["Circles"])):
        stats = ConceptStatistics.empty("h", ["Neon_Glow", "Flat_Pop"], [501], 8, "sae", "f", "style", cells=cells)
        stats.save(tmp_path / name)
    benchmark = get_benchmark("minicanvas")

    def search(folder: str, gate: list[str]):
        return search_targets(SearchConfig(concepts=["Neon_Glow"], style_statistics=str(tmp_path / folder), gate=gate), benchmark)

    assert search("plain", ["nearest"])["Neon_Glow"][0].hookpoint == "h"
    with pytest.raises(ValueError, match="cell_means: true"):
        search("plain", ["nearest", "cell"])
    assert search("cells", ["cell:2:16"])["Neon_Glow"][0].hookpoint == "h"


@pytest.mark.slow
def test_gathered_cells_add_up_to_each_styles_statistics(style_sae, tmp_path):
    from helpers import fixture_statistics

    from saeuron.benchmarks import get_benchmark

    folder = fixture_statistics(style_sae, STYLE_HOOK, "style", tmp_path, max_prompts_per_concept=2, cell_means=True)
    stats = ConceptStatistics.load(folder)
    benchmark = get_benchmark("minicanvas")
    # The first two statistics prompts of a style draw the first two objects, one prompt each: the cells are theirs.
    assert stats.cells == list(benchmark.objects[:2])
    assert stats.cell_counts.shape == (len(benchmark.styles), 2, len(stats.timesteps))
    assert bool((stats.cell_counts == 1).all())
    torch.testing.assert_close(stats.cell_sums.sum(1), stats.sums, rtol=1e-12, atol=1e-9)
    assert not bool(stats.cell_means().isnan().any())
