import pytest
import torch

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.selection import Rules, build_rules, importance_scores, selected_latents
from saeuron.method.statistics import ConceptStatistics, patch_mean_latents, sae_fingerprint
from saeuron.sae import Sae, SaeConfig


def stats_from_means(means, timesteps=(901, 1), concepts=None, fingerprint="x"):
    """means: [C, T, F]."""
    means = torch.as_tensor(means, dtype=torch.float64)
    c, t, f = means.shape
    stats = ConceptStatistics.empty(
        "unet.up_blocks.1.attentions.2", concepts or [f"c{i}" for i in range(c)], list(timesteps), f, "sae", fingerprint, "style"
    )
    stats.sums += means * 2
    stats.counts += 2
    return stats


def test_importance_is_normalised_mean_minus_that_of_the_others():
    means = torch.tensor([[2.0, 2.0, 0.0, 0.0], [0.0, 1.0, 1.0, 2.0], [0.0, 1.0, 3.0, 0.0]])
    # p_c = [.5, .5, 0, 0]; others' mean = [0, 1, 2, 1] → p = [0, .25, .5, .25]
    torch.testing.assert_close(importance_scores(means, 0), torch.tensor([0.5, 0.25, -0.5, -0.25]))


def test_max_contrast_scores_against_the_closest_other_concept(tmp_path):
    # Latent 0 fires for every concept, a little more for c0: the others' mean leaves it ahead, their max does not.
    means = torch.tensor([[4.0, 1.0, 0.0], [3.0, 0.0, 1.0], [1.0, 0.0, 3.0]])
    # p_c0 = [.8, .2, 0]; mean of others = [2, 0, 2] → [.5, 0, .5]; others' p: [.75, 0, .25] and [.25, 0, .75]
    torch.testing.assert_close(importance_scores(means, 0), torch.tensor([0.3, 0.2, -0.5]))
    torch.testing.assert_close(importance_scores(means, 0, "max"), torch.tensor([0.05, 0.2, -0.75]))
    assert selected_latents(importance_scores(means, 0), 50).tolist() == [0]
    assert selected_latents(importance_scores(means, 0, "max"), 50).tolist() == [1]
    recipe = Recipe.from_statistics(stats_from_means(means[:, None].expand(3, 2, 3)), {"c0": (50, -1.0)}, "m", "max")
    assert recipe.rules.latent.tolist() == [1, 1] and recipe.contrast == "max"
    recipe.save(tmp_path / "r")
    assert Recipe.load(tmp_path / "r").contrast == "max"
    with pytest.raises(ValueError, match="contrast must be one of"):
        build_rules(stats_from_means(means[:, None]), {"c0": (50, -1.0)}, "median")


def test_percentile_keeps_scores_strictly_above_the_interpolated_quantile():
    scores = torch.arange(8, dtype=torch.float32)  # quantile(0.75) = 5.25
    assert selected_latents(scores, 75).tolist() == [6, 7]
    with pytest.raises(ValueError, match=r"\(0, 100\)"):
        selected_latents(scores, 100)


def test_rules_take_scale_from_the_concept_and_threshold_from_all_concepts():
    means = torch.zeros(3, 2, 8)
    means[0, :, 5] = 4.0
    means[1, :, 6] = 2.0
    means[2, :, 5] = 1.0
    rules = build_rules(stats_from_means(means), {"c0": (95, -2.0)})
    assert rules.latent.tolist() == [5, 5] and rules.timestep_index.tolist() == [0, 1]
    torch.testing.assert_close(rules.scale, torch.tensor([-8.0, -8.0]))
    torch.testing.assert_close(rules.threshold, torch.tensor([5.0 / 3, 5.0 / 3]))


def test_several_concepts_give_one_rule_per_latent_the_strongest():
    means = torch.zeros(3, 1, 8)
    means[0, 0, 5], means[1, 0, 5] = 4.0, 6.0  # both concepts select latent 5
    means[0, 0, 1], means[1, 0, 2] = 3.0, 3.0
    rules = build_rules(stats_from_means(means, timesteps=(1,)), {"c0": (80, -1.0), "c1": (80, -1.0)})
    pairs = list(zip(rules.timestep_index.tolist(), rules.latent.tolist()))
    assert len(pairs) == len(set(pairs))
    five = rules.latent.tolist().index(5)
    assert rules.scale[five].item() == -6.0 and rules.concept_index[five].item() == 1
    with pytest.raises(ValueError, match="c0"):
        build_rules(stats_from_means(means, timesteps=(1,)), {"Van_Gogh": (99, -1.0)})


def test_statistics_and_recipe_round_trip_and_timesteps_map_to_the_nearest(tmp_path):
    stats = stats_from_means(torch.rand(3, 2, 8), timesteps=(901, 451))
    stats.save(tmp_path / "stats")
    again = ConceptStatistics.load(tmp_path / "stats")
    assert torch.equal(again.sums, stats.sums) and again.timesteps == [901, 451]
    recipe = Recipe.from_statistics(again, {"c1": (75, -3.0)}, "embedded:minicanvas")
    recipe.save(tmp_path / "recipe")
    loaded = Recipe.load(tmp_path / "recipe")
    assert loaded.concepts == {"c1": {"percentile": 75.0, "multiplier": -3.0}}
    assert torch.equal(loaded.rules.latent, recipe.rules.latent)
    assert loaded.timestep_index(881) == 0 and loaded.timestep_index(461) == 1 and loaded.timestep_index(1) == 1


def make_sae():
    torch.manual_seed(0)
    return Sae(16, SaeConfig(num_latents=64, k=4))


def call(t=901):
    return BlockCall("unet.up_blocks.1.attentions.2", t, 0, 2, 2, 2)


def recipe_for(sae, rules, timesteps=(901,)):
    return Recipe("unet.up_blocks.1.attentions.2", "sae", sae_fingerprint(sae), "embedded:minicanvas", {}, list(timesteps), rules)


def test_hook_formula_correct_and_reference_error_modes():
    sae = make_sae()
    x = torch.randn(4, 4, 16)
    acts, indices = sae.encode(x.reshape(-1, 16))
    target = int(indices[0, 0])
    rules = Rules(torch.tensor([0]), torch.tensor([target]), torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([0]))
    edited = torch.where(indices == target, acts * -2.0, acts)
    x_hat, x_hat_edited = sae.decode(acts, indices), sae.decode(edited, indices)
    flat = x.reshape(-1, 16)
    correct = UnlearningEdit(sae, recipe_for(sae, rules))(x, call())
    torch.testing.assert_close(correct.reshape(-1, 16), flat + (x_hat_edited - x_hat))
    reference = UnlearningEdit(sae, recipe_for(sae, rules), error_mode="reference")(x, call())
    torch.testing.assert_close(reference.reshape(-1, 16), x_hat_edited + (x_hat - flat))
    # Patches where the latent is not active are untouched in the correct mode.
    untouched = ~(indices == target).any(-1)
    torch.testing.assert_close(correct.reshape(-1, 16)[untouched], flat[untouched])


def test_without_rules_correct_mode_is_identity_and_reference_mode_is_not():
    sae = make_sae()
    empty = Rules.empty()
    x = torch.randn(2, 4, 16)
    assert UnlearningEdit(sae, recipe_for(sae, empty))(x, call()) is x
    reference = UnlearningEdit(sae, recipe_for(sae, empty), error_mode="reference")(x, call())
    x_hat = sae.reconstruct(x.reshape(-1, 16))
    torch.testing.assert_close(reference.reshape(-1, 16), 2 * x_hat - x.reshape(-1, 16))


def test_recipe_of_another_sae_is_refused():
    sae = make_sae()
    other = Sae(16, SaeConfig(num_latents=64, k=4))
    empty = Rules.empty()
    with pytest.raises(ValueError, match="another SAE"):
        UnlearningEdit(other, recipe_for(sae, empty))
    with pytest.raises(ValueError, match="error_mode"):
        UnlearningEdit(sae, recipe_for(sae, empty), error_mode="sign_bug")


def test_inference_mode_travels_from_statistics_to_recipe_and_a_mismatch_is_refused(tmp_path):
    stats = stats_from_means(torch.rand(3, 2, 8), timesteps=(901, 451))
    stats.sae_inference = "threshold"
    stats.save(tmp_path / "stats")
    recipe = Recipe.from_statistics(ConceptStatistics.load(tmp_path / "stats"), {"c1": (75, -3.0)}, "embedded:minicanvas")
    recipe.save(tmp_path / "recipe")
    assert Recipe.load(tmp_path / "recipe").sae_inference == "threshold"
    sae = make_sae()
    topk_recipe = recipe_for(sae, Rules.empty())
    topk_recipe.sae_inference = "threshold"
    with pytest.raises(ValueError, match="inference='threshold'"):
        UnlearningEdit(sae, topk_recipe)  # a plain TopK SAE runs top-k inference
    topk_recipe.sae_inference = "topk"
    UnlearningEdit(sae, topk_recipe)


def test_an_sae_of_another_block_is_refused_by_its_folder_name(tmp_path):
    from saeuron.cluster.registry import load_sae

    make_sae().save_to_disk(tmp_path / "unet.mid_block.attentions.0")
    with pytest.raises(ValueError, match="SAE of unet.mid_block.attentions.0, not of unet.up_blocks.1.attentions.2"):
        load_sae(tmp_path / "unet.mid_block.attentions.0", "unet.up_blocks.1.attentions.2")
    assert load_sae(tmp_path / "unet.mid_block.attentions.0", "unet.mid_block.attentions.0").d_in == 16
    assert load_sae(tmp_path, "unet.mid_block.attentions.0").d_in == 16  # a run folder of <hookpoint>/ folders


def test_patch_mean_latents_densifies_and_averages():
    sae = make_sae()
    tokens = torch.randn(3, 5, 16)
    acts, indices = sae.encode(tokens.reshape(-1, 16))
    dense = torch.zeros(15, 64).scatter(1, indices, acts).reshape(3, 5, 64).mean(1)
    torch.testing.assert_close(patch_mean_latents(sae, tokens), dense)


def test_every_statistics_prompt_has_its_own_seed_and_the_statistics_record_them(tmp_path):
    from saeuron.benchmarks import get_benchmark

    for kind, styled in (("style", False), ("object", False), ("object", True)):
        rows = get_benchmark("minicanvas").statistics_prompt_rows(kind, seed=188, styled_objects=styled)
        assert [r.seed for r in rows] == list(range(188, 188 + len(rows)))
    stats = stats_from_means(torch.rand(2, 2, 8))
    stats.prompt_seeds = [188, 189, 190]
    stats.save(tmp_path / "stats")
    assert ConceptStatistics.load(tmp_path / "stats").prompt_seeds == [188, 189, 190]
