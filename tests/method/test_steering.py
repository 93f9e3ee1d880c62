"""Anchor steering moves exactly the patches where the recipe's latents fire, by β times the decoded difference of
the anchor's and the concept's mean latents, and nothing else."""

import pytest
import torch

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.recipe import Recipe
from saeuron.method.selection import Rules
from saeuron.method.statistics import ConceptStatistics, sae_fingerprint
from saeuron.method.steering import AnchorSteerEdit, steering_directions
from saeuron.sae import Sae, SaeConfig

CALL = BlockCall("h", timestep=501, step_index=0, num_uncond=0, height=2, width=2)


def setup():
    """An SAE, statistics of a concept and the unstyled anchor, and a recipe whose two latents are the ones that fire
    most on the first patch (threshold 0)."""
    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(num_latents=64, k=8))
    tokens = torch.randn(3, 4, 16)
    acts, indices = sae.encode(tokens.reshape(-1, 16))
    latents = indices[0, acts[0].argsort(descending=True)[:2]]
    rules = Rules(
        torch.zeros(2, dtype=torch.long), latents, torch.full((2,), -2.0), torch.zeros(2), torch.zeros(2, dtype=torch.long)
    )
    recipe = Recipe("h", "sae", sae_fingerprint(sae), "base", {"c": {"percentile": 99.0, "multiplier": -2.0}}, [501], rules)
    stats = ConceptStatistics.empty("h", ["c", "none"], [501], 64, "sae", sae_fingerprint(sae), "style")
    stats.add("c", 501, torch.rand(64) * 4, 2)
    stats.add("none", 501, torch.rand(64) * 4, 2)
    return sae, recipe, stats, tokens, acts, indices, latents


def test_the_direction_is_the_decoded_difference_of_the_anchor_and_concept_means():
    sae, _, stats, *_ = setup()
    directions = steering_directions(stats, "c", "none", sae)
    means = stats.means()
    assert directions.shape == (1, 16)
    torch.testing.assert_close(directions[0], (means[1, 0] - means[0, 0]) @ sae.W_dec)


def test_only_the_patches_where_the_recipe_fires_move_and_by_strength_times_the_direction():
    sae, recipe, stats, tokens, acts, indices, latents = setup()
    directions = steering_directions(stats, "c", "none", sae)
    out = AnchorSteerEdit(sae, recipe, directions, strength=3.0)(tokens, CALL).reshape(-1, 16)
    fires = (torch.isin(indices, latents) & (acts > 0)).any(-1)
    assert fires[0] and 0 < int(fires.sum()) < len(fires)
    flat = tokens.reshape(-1, 16)
    assert torch.equal(out[~fires], flat[~fires])
    torch.testing.assert_close(out[fires], flat[fires] + 3.0 * directions[0])
    everywhere = AnchorSteerEdit(sae, recipe, directions, strength=3.0, where="all")(tokens, CALL).reshape(-1, 16)
    torch.testing.assert_close(everywhere, flat + 3.0 * directions[0])
    assert torch.equal(AnchorSteerEdit(sae, recipe, directions, strength=0.0)(tokens, CALL), tokens)


def test_a_missing_anchor_or_directions_of_another_shape_are_refused():
    sae, recipe, stats, *_ = setup()
    with pytest.raises(ValueError, match="not \\['Flat_Pop'\\].*unstyled_reference: true"):
        steering_directions(stats, "c", "Flat_Pop", sae)
    with pytest.raises(ValueError, match="directions must be \\[timesteps, d_in\\] = \\[1, 16\\]"):
        AnchorSteerEdit(sae, recipe, torch.zeros(2, 16), 1.0)
    with pytest.raises(ValueError, match="where must be one of"):
        AnchorSteerEdit(sae, recipe, torch.zeros(1, 16), 1.0, where="mask")
