"""Steering, a recipe's second edit mode: a steered concept moves exactly the patches where its selected latents fire,
by β times the decoded difference of the anchor's and its own mean latents, and nothing else; the recipe keeps it
through a save and a load, and scaled and steered concepts combine in one edit."""

import pytest
import torch

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.components import DiffusersRecipe
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe, edit_label
from saeuron.method.selection import importance_scores, selected_latents
from saeuron.method.statistics import ConceptStatistics, sae_fingerprint
from saeuron.method.steering import Steer
from saeuron.sae import Sae, SaeConfig

CALL = BlockCall("h", timestep=501, step_index=0, num_uncond=0, height=2, width=2)


def setup():
    """An SAE, tokens, and statistics of two styles and the unstyled anchor at one timestep, built from the tokens' own
    codes so that the selected latents fire on some patches and not on others."""
    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(num_latents=64, k=8))
    tokens = torch.randn(3, 4, 16)
    with torch.no_grad():
        acts, indices = sae.encode(tokens.reshape(-1, 16))
    dense = torch.zeros(12, 64).scatter(1, indices, acts)
    stats = ConceptStatistics.empty("h", ["c", "other", "none"], [501], 64, "sae", sae_fingerprint(sae), "style")
    stats.add("c", 501, dense[:3].mean(0) * 4, 1)
    stats.add("other", 501, dense[3:9].mean(0), 1)
    stats.add("none", 501, dense[9:].mean(0) + 0.1, 1)
    return sae, stats, tokens, acts, indices


def expected_fires(stats, concept, percentile, acts, indices):
    means = stats.means()
    latents = selected_latents(importance_scores(means[:, 0], stats.concepts.index(concept), "mean"), percentile)
    threshold = torch.full((64,), float("inf"))
    threshold[latents] = means.mean(0)[0, latents]
    return (acts > threshold[indices]).any(-1)


def test_a_steered_concept_moves_only_where_it_fires_by_beta_times_the_decoded_anchor_difference(tmp_path):
    sae, stats, tokens, acts, indices = setup()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, Steer("none", 3.0))}, "base")
    assert len(recipe.rules) == 0 and recipe.concepts == {
        "c": {"percentile": 90.0, "anchor": "none", "strength": 3.0, "where": "fires"}
    }
    means = stats.means()
    torch.testing.assert_close(recipe.steering.delta[0, 0], means[2, 0] - means[0, 0])
    direction = (means[2, 0] - means[0, 0]) @ sae.W_dec
    fires = expected_fires(stats, "c", 90.0, acts, indices)
    assert int(fires.sum()) == 7  # of 12 patches (measured): some move, some do not
    flat = tokens.reshape(-1, 16)
    out = UnlearningEdit(sae, recipe)(tokens, CALL).reshape(-1, 16)
    assert torch.equal(out[~fires], flat[~fires])
    torch.testing.assert_close(out[fires], flat[fires] + 3.0 * direction)

    recipe.save(tmp_path / "r")
    loaded = Recipe.load(tmp_path / "r")
    assert loaded.edit_of("c") == Steer("none", 3.0, "fires") and edit_label(loaded.edit_of("c")) == "→none β3"
    assert torch.equal(UnlearningEdit(sae, loaded)(tokens, CALL).reshape(-1, 16), out)

    component = DiffusersRecipe.from_pretrained(tmp_path / "r")  # a pipeline's component keeps the steering too
    component.save_pretrained(tmp_path / "again")
    assert torch.equal(UnlearningEdit(sae, Recipe.load(tmp_path / "again"))(tokens, CALL).reshape(-1, 16), out)

    everywhere = Recipe.from_statistics(stats, {"c": (90.0, Steer("none", 3.0, "all"))}, "base")
    torch.testing.assert_close(UnlearningEdit(sae, everywhere)(tokens, CALL).reshape(-1, 16), flat + 3.0 * direction)


def test_scaled_and_steered_concepts_combine_in_one_edit():
    sae, stats, tokens, acts, indices = setup()
    both = Recipe.from_statistics(stats, {"other": (90.0, -2.0), "c": (90.0, Steer("none", 2.0))}, "base")
    scaled_only = Recipe.from_statistics(stats, {"other": (90.0, -2.0)}, "base")
    steered_only = Recipe.from_statistics(stats, {"c": (90.0, Steer("none", 2.0))}, "base")
    assert both.rules.concept_index.unique().tolist() == [0] and both.steering.concept_index.unique().tolist() == [1]
    assert [i for i, _ in both.steers()] == [1] and both.edit_of("other") == -2.0
    selection = both.selection()  # what the atlas reads: every concept's latents, the steered ones scaling nothing
    assert len(selection) == len(both.rules) + len(both.steering) and (selection.scale[len(both.rules) :] == 1).all()
    flat = tokens.reshape(-1, 16)
    scaled = UnlearningEdit(sae, scaled_only)(tokens, CALL).reshape(-1, 16)
    steered = UnlearningEdit(sae, steered_only)(tokens, CALL).reshape(-1, 16)
    assert not torch.equal(scaled, flat) and not torch.equal(steered, flat)
    torch.testing.assert_close(UnlearningEdit(sae, both)(tokens, CALL).reshape(-1, 16), scaled + steered - flat)


def test_steering_passes_a_surrogate_gradient_and_leaves_the_forward_alone():
    sae, stats, tokens, *_ = setup()
    recipe = Recipe.from_statistics(stats, {"c": (90.0, Steer("none", 3.0))}, "base")
    x = tokens.clone().requires_grad_(True)
    out = UnlearningEdit(sae, recipe)(x, CALL)
    with torch.no_grad():
        plain = UnlearningEdit(sae, recipe)(tokens, CALL)
    assert torch.equal(out.detach(), plain)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not torch.allclose(x.grad, torch.ones_like(x.grad))  # the fire decision's surrogate adds to the identity
    assert not UnlearningEdit(sae, recipe, gradient="blocked")(tokens.clone().requires_grad_(True), CALL).requires_grad


def test_a_bad_steering_edit_is_refused_naming_the_fix():
    sae, stats, *_ = setup()
    with pytest.raises(ValueError, match="not the anchor 'Flat_Pop'.*unstyled_reference: true"):
        Recipe.from_statistics(stats, {"c": (90.0, Steer("Flat_Pop", 3.0))}, "base")
    with pytest.raises(ValueError, match="cannot be steered toward itself"):
        Recipe.from_statistics(stats, {"c": (90.0, Steer("c", 3.0))}, "base")
    with pytest.raises(ValueError, match="strength β must be positive"):
        Recipe.from_statistics(stats, {"c": (90.0, Steer("none", -1.0))}, "base")
    with pytest.raises(ValueError, match="where must be one of"):
        Recipe.from_statistics(stats, {"c": (90.0, Steer("none", 1.0, "mask"))}, "base")
    recipe = Recipe.from_statistics(stats, {"c": (90.0, Steer("none", 3.0))}, "base")
    with pytest.raises(ValueError, match="this recipe steers \\['c'\\]: use error_mode 'correct'"):
        UnlearningEdit(sae, recipe, error_mode="reference")


def test_the_recipe_job_refuses_options_of_the_edit_it_does_not_apply():
    from saeuron.method.make_recipe import RecipeConfig, make_recipe

    with pytest.raises(ValueError, match="--anchor none steers and --multiplier -2.0 scales: give one of them"):
        make_recipe(RecipeConfig(concepts=["c"], anchor="none", multiplier=-2.0))
    with pytest.raises(ValueError, match="--strength 3.0 only apply to steering: add --anchor"):
        make_recipe(RecipeConfig(concepts=["c"], strength=3.0))
