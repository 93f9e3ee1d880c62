"""Anchor steering: move a forgotten concept's patches toward another concept's rendering, in the SAE's space.

The paper's edit multiplies a concept's selected latents by a negative factor: it pushes the block *away* from the
concept and nowhere in particular. On MiniCanvas a style's shape is drawn in its rendering, so pushing the
rendering away loses the object with it (README, "Every concept", items 2 and 7). Steering instead adds, on the
patches where the recipe's latents fire above their thresholds, β times the decoded difference of the two
concepts' mean latents at that timestep,

    d_t = (μ_anchor,t − μ_concept,t) · W_dec,

so the block is moved toward the anchor (for a style: the unstyled rendering, the statistics' ``none`` concept
from ``gather.unstyled_reference``). The recipe only says where (its rules' latents and thresholds); its scale
factors are not applied. A measured lead, not yet a recipe edit mode: ``benchmarks/anchor_steering.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saeuron.diffusion.hooks import BlockCall
from saeuron.method.recipe import Recipe
from saeuron.method.statistics import ConceptStatistics
from saeuron.sae import Sae

WHERE = ("fires", "all")


def steering_directions(stats: ConceptStatistics, concept: str, anchor: str, sae: Sae) -> Tensor:
    """[T, d] decoded differences of mean latents, anchor minus concept, one per statistics timestep."""
    missing = [c for c in (concept, anchor) if c not in stats.concepts]
    if missing:
        raise ValueError(
            f"the statistics know {stats.concepts}, not {missing}; for the unstyled anchor 'none' gather them with "
            f"unstyled_reference: true"
        )
    means = stats.means()
    difference = means[stats.concepts.index(anchor)] - means[stats.concepts.index(concept)]
    return difference.to(sae.W_dec) @ sae.W_dec


class AnchorSteerEdit:
    """Add ``strength`` · d_t to the block output on the patches where the recipe's latents fire (``where="fires"``)
    or on every patch (``"all"``)."""

    def __init__(self, sae: Sae, recipe: Recipe, directions: Tensor, strength: float, where: str = "fires"):
        if where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {where!r}")
        if directions.shape != (len(recipe.timesteps), sae.d_in):
            raise ValueError(
                f"directions must be [timesteps, d_in] = {[len(recipe.timesteps), sae.d_in]} (steering_directions on the "
                f"recipe's statistics), got {list(directions.shape)}"
            )
        self.sae, self.recipe, self.directions = sae, recipe, directions
        self.strength, self.where = float(strength), where
        self._thresholds: dict[int, Tensor | None] = {}  # per recipe timestep, built once: this runs every UNet call

    def __call__(self, tokens: Tensor, call: BlockCall) -> Tensor:
        with torch.no_grad():
            flat = tokens.reshape(-1, tokens.shape[-1])
            x = flat.to(self.sae.dtype)
            index = self.recipe.timestep_index(call.timestep)
            if self.where == "all":
                mask = torch.ones(len(x), dtype=torch.bool, device=x.device)
            else:
                mask = self._fires(x, call.timestep)
            step = self.strength * self.directions[index].to(x)
            if self.sae.cfg.input_unit_norm:  # the SAE decodes in units of each patch's own scale
                step = step * (x.std(-1, keepdim=True) + 1e-5)
            out = x + mask[:, None].to(x) * step
            return out.to(tokens.dtype).reshape(tokens.shape)

    def _threshold(self, timestep: int) -> Tensor | None:
        """Dense [F] thresholds of the recipe's latents at ``timestep`` (+inf: no rule), None without rules."""
        index = self.recipe.timestep_index(timestep)
        if index not in self._thresholds:
            latents, _, thresholds = self.recipe.rules_at(timestep)
            table = None
            if len(latents):
                table = torch.full((self.sae.num_latents,), float("inf"), device=self.sae.device, dtype=self.sae.dtype)
                table[latents.to(table.device)] = thresholds.to(table)
            self._thresholds[index] = table
        return self._thresholds[index]

    def _fires(self, x: Tensor, timestep: int) -> Tensor:
        threshold = self._threshold(timestep)
        if threshold is None:
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        acts, indices = self.sae.encode(x)
        return (acts > threshold[indices]).any(-1)
