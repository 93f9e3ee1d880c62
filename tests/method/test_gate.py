"""The edit's gate: the paper's all-concept patch mean, or above what a latent gives where it fires on kept concepts."""

import json

import pytest
import torch

from saeuron.method.recipe import Recipe
from saeuron.method.selection import Gate, build_rules, gate_thresholds
from saeuron.method.statistics import ConceptStatistics, patch_moments
from saeuron.method.steering import Steer
from saeuron.sae import Sae, SaeConfig


def firing_stats(timesteps=(901, 1)):
    """Three concepts, one timestep's worth repeated, four latents; two prompts each.

    Latent 0 fires on half of c0's patches at 4 (σ 0), on a quarter of c1's at 2 ± 1 (values 1 and 3), never on c2's.
    Latent 1 fires on every patch of every concept at 1. Latents 2 and 3 never fire."""
    stats = ConceptStatistics.empty("unet.up_blocks.1.attentions.2", ["c0", "c1", "c2"], list(timesteps), 4, "sae", "x", "style")
    per_prompt = {  # concept: (patch mean, firing fraction, patch mean of squares)
        0: ([2.0, 1.0, 0, 0], [0.5, 1.0, 0, 0], [8.0, 1.0, 0, 0]),
        1: ([0.5, 1.0, 0, 0], [0.25, 1.0, 0, 0], [1.25, 1.0, 0, 0]),  # (1² + 3²) / 8 patches = 1.25
        2: ([0.0, 1.0, 0, 0], [0.0, 1.0, 0, 0], [0.0, 1.0, 0, 0]),
    }
    for c, (mean, fires, squares) in per_prompt.items():
        for t in timesteps:
            stats.add(stats.concepts[c], t, 2 * torch.tensor(mean), 2, 2 * torch.tensor(fires), 2 * torch.tensor(squares))
    return stats


def test_firing_moments_are_the_mean_and_spread_where_the_latent_fires():
    mean, spread = firing_stats().firing_moments()
    torch.testing.assert_close(mean[:, 0, :2], torch.tensor([[4.0, 1.0], [2.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(spread[:, 0, :2], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))


def test_the_others_gate_sits_above_the_kept_concepts_firing_and_never_below_the_papers():
    stats = firing_stats()
    paper = gate_thresholds(stats, [1, 2])
    torch.testing.assert_close(paper[0], torch.tensor([2.5 / 3, 1.0, 0.0, 0.0]))  # mean of the patch means
    others = gate_thresholds(stats, [1, 2], Gate("others", 1.0))
    torch.testing.assert_close(others[0], torch.tensor([3.0, 1.0, 0.0, 0.0]))  # c1's 2 + 1σ; latent 1: 1 everywhere
    torch.testing.assert_close(gate_thresholds(stats, [1, 2], Gate("others", 0.0))[0, 0], torch.tensor(2.0))
    torch.testing.assert_close(gate_thresholds(stats, [2], Gate("others", 1.0))[0, 0], paper[0, 0])  # c2 never fires it
    rules = build_rules(stats, {"c0": (70, -1.0)}, "max", Gate("others", 1.0))
    assert rules.latent.tolist() == [0, 0] and rules.threshold.tolist() == [3.0, 3.0]
    assert build_rules(stats, {"c0": (70, -1.0)}, "max").threshold.tolist() == pytest.approx([2.5 / 3] * 2)


def test_forgetting_two_concepts_gates_above_the_concepts_kept_only():
    stats = firing_stats()
    rules = build_rules(stats, {"c0": (70, -1.0), "c1": (70, -1.0)}, "max", Gate("others", 1.0))
    assert rules.latent.tolist() == [0, 0]  # c1 is forgotten too: only c2, which never fires it, counts
    assert rules.threshold.tolist() == pytest.approx([2.5 / 3] * 2)
    steered = Recipe.from_statistics(stats, {"c0": (70, Steer("c2", 5.0))}, "base", "max", gate=Gate("others", 1.0))
    assert steered.steering.latent.tolist() == [0, 0] and steered.steering.threshold.tolist() == [3.0, 3.0]


def test_the_gate_travels_with_the_recipe_and_the_papers_recipe_file_is_unchanged(tmp_path):
    stats = firing_stats()
    Recipe.from_statistics(stats, {"c0": (70, -1.0)}, "base", "max").save(tmp_path / "paper")
    assert "gate" not in json.loads((tmp_path / "paper" / "recipe.json").read_text())
    assert Recipe.load(tmp_path / "paper").gate == Gate()
    Recipe.from_statistics(stats, {"c0": (70, -1.0)}, "base", "max", gate=Gate("others", 0.5)).save(tmp_path / "gated")
    assert json.loads((tmp_path / "gated" / "recipe.json").read_text())["gate"] == {"kind": "others", "sigmas": 0.5, "share": 0.1}
    assert Recipe.load(tmp_path / "gated").gate == Gate("others", 0.5)


def test_bad_gates_and_statistics_without_firing_moments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="gate must be one of"):
        Gate("median").check()
    with pytest.raises(ValueError, match=">= 0"):
        Gate("others", -1.0).check()
    with pytest.raises(ValueError, match="applies to the .others. and .image. gates only"):
        Gate("mean", 2.0).check()
    stats = firing_stats()
    stats.save(tmp_path / "new")
    loaded = ConceptStatistics.load(tmp_path / "new")
    assert torch.equal(loaded.fires, stats.fires) and torch.equal(loaded.squares, stats.squares)
    assert json.loads((tmp_path / "new" / "statistics.json").read_text())["firing_moments"] is True
    stats.fires = stats.squares = None  # as gathered before saeuron recorded them
    stats.save(tmp_path / "old")
    old = ConceptStatistics.load(tmp_path / "old")
    assert old.fires is None and build_rules(old, {"c0": (70, -1.0)}).threshold.numel() == 2
    with pytest.raises(ValueError, match="run jobs/gather.py again"):
        build_rules(old, {"c0": (70, -1.0)}, gate=Gate("others"))


def test_patch_moments_count_the_active_patches_and_their_squares():
    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(num_latents=64, k=4))
    tokens = torch.randn(3, 5, 16)
    acts, indices = sae.encode(tokens.reshape(-1, 16))
    dense = torch.zeros(15, 64).scatter(1, indices, acts).reshape(3, 5, 64)
    moments = patch_moments(sae, tokens)
    torch.testing.assert_close(moments.mean, dense.mean(1))
    torch.testing.assert_close(moments.fires, (dense > 0).float().mean(1))
    torch.testing.assert_close(moments.squares, dense.square().mean(1))


def test_a_study_regathers_statistics_that_hold_no_firing_moments(tmp_path):
    from saeuron.study.run import gathered_with_firing

    stats = firing_stats()
    stats.save(tmp_path / "new")
    stats.fires = stats.squares = None
    stats.save(tmp_path / "old")
    assert gathered_with_firing(str(tmp_path / "new")) and not gathered_with_firing(str(tmp_path / "old"))
    assert not gathered_with_firing(str(tmp_path / "missing"))


@pytest.mark.slow
def test_gathered_statistics_record_how_latents_fire(style_statistics):
    stats = ConceptStatistics.load(style_statistics)
    fraction = stats.fires / stats.counts[..., None]
    assert float(fraction.min()) >= 0 and float(fraction.max()) <= 1
    firing_mean, spread = stats.firing_moments()
    fired = stats.fires > 0
    assert bool((firing_mean[fired] >= stats.means()[fired] - 1e-6).all()) and bool((spread >= 0).all())
    concept = stats.concepts.index("Neon_Glow")
    kept = [i for i in range(len(stats.concepts)) if i != concept]
    paper, gated = gate_thresholds(stats, kept), gate_thresholds(stats, kept, Gate("others", 1.0))
    assert bool((gated >= paper).all()) and bool((gated > paper).any())
