"""The edit's gradient: straight through by default (an attacker optimises against the deployed model), blocked as
the reference's `torch.no_grad()` edit; the forward pass is the same either way."""

import pytest
import torch

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.selection import Rules
from saeuron.method.statistics import sae_fingerprint
from saeuron.sae import Sae, SaeConfig

CALL = BlockCall("h", timestep=501, step_index=0, num_uncond=0, height=2, width=2)


def setup():
    """A block (the layer before the hook), an SAE on its output, and a recipe scaling by −2 the two latents that fire
    most on the first patch, where they fire above 0."""
    torch.manual_seed(0)
    block = torch.nn.Linear(16, 16)
    sae = Sae(16, SaeConfig(num_latents=64, k=8))
    inputs = torch.randn(3, 4, 16)
    acts, indices = sae.encode(block(inputs).reshape(-1, 16))
    latents = indices[0, acts[0].argsort(descending=True)[:2]]
    rules = Rules(
        timestep_index=torch.zeros(2, dtype=torch.long),
        latent=latents,
        scale=torch.full((2,), -2.0),
        threshold=torch.zeros(2),
        concept_index=torch.zeros(2, dtype=torch.long),
    )
    recipe = Recipe("h", "sae", sae_fingerprint(sae), "base", {"c": {"percentile": 99.0, "multiplier": -2.0}}, [501], rules)
    return block, sae, recipe, inputs


def test_the_gradient_crosses_the_edit_and_reaches_the_block_before_it():
    block, sae, recipe, inputs = setup()
    with torch.no_grad():
        reference = UnlearningEdit(sae, recipe)(block(inputs), CALL)
    assert not torch.equal(reference, block(inputs).detach())  # the recipe does edit this input
    through = UnlearningEdit(sae, recipe, gradient="straight_through")(block(inputs), CALL)
    blocked = UnlearningEdit(sae, recipe, gradient="blocked")(block(inputs), CALL)
    assert torch.equal(through.detach(), reference) and torch.equal(blocked, reference)  # the forward, bit for bit
    through.square().sum().backward()
    grad = block.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The reference's edit runs under no_grad: nothing upstream of it gets a gradient through it.
    assert not blocked.requires_grad


def test_the_surrogate_adds_a_gradient_for_the_threshold_decision():
    """The hard mask's step has zero gradient almost everywhere: without the surrogate the gradient is that of
    where(fires, acts·scale, acts); the surrogate adds the decision's own term."""
    from saeuron.sae.sparse import decode_fixed_width

    block, sae, recipe, inputs = setup()
    tokens = block(inputs).detach().reshape(-1, 16).requires_grad_(True)
    edit = UnlearningEdit(sae, recipe)
    edit(tokens, CALL).sum().backward()
    with_surrogate, tokens.grad = tokens.grad.clone(), None

    acts, indices = sae.encode(tokens)
    scale, threshold = edit._table(CALL.timestep)
    edited = torch.where(acts > threshold[indices], acts * scale[indices], acts)
    (tokens + decode_fixed_width(edited - acts, indices, sae.W_dec)).sum().backward()
    hard_mask = tokens.grad
    assert torch.isfinite(with_surrogate).all() and not torch.allclose(with_surrogate, hard_mask, atol=1e-4)


def test_an_unknown_gradient_mode_is_refused():
    _, sae, recipe, _ = setup()
    with pytest.raises(ValueError, match="gradient must be one of"):
        UnlearningEdit(sae, recipe, gradient="soft")
