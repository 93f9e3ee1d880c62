"""The unlearning edit: scale the recipe's latents in the block output during sampling.

On each patch where a selected latent is active above its mask threshold, its activation is
multiplied by the rule's scale factor (γ·μ, negative for γ < 0). What the SAE does not explain is
kept: output = x + (x̂' − x̂), which equals x wherever nothing was edited. ``error_mode="reference"``
reproduces the reference code instead, x̂' + (x̂ − x), which moves every patch by 2(x̂ − x) even when
no latent is edited — only to compare with the paper's numbers. Both CFG halves are edited, as the reference does,
unless the recipe says ``halves="cond"``: then the unconditional half passes unchanged (``saeuron.method.recipe.HALVES``).

A recipe's steered concepts (:mod:`saeuron.method.steering`) add β·d_t on the patches where they fire, from the same
encoding: output = x + (x̂' − x̂) + Σ_c fires_c · β_c·d_c,t (times the patch's scale for a unit-norm SAE); those steered
by a map add fires_c · β_c·(M_c,t(x) − x) (:mod:`saeuron.method.block_map`); where the map was fitted with companion
blocks, :class:`CompanionMapEdit` moves each of them the same way on the images the gate has found (install
:meth:`UnlearningEdit.hooks`, not the edit alone).

With the "image" and "nearest" gates (``saeuron.method.selection.Gate``) both edits act only on the images the
recipe's detector (:mod:`saeuron.method.detection`) finds showing a forgotten concept; the others pass unchanged.

Gradients (an attacker optimising against the deployed model needs them; sampling runs without): with
``gradient="straight_through"`` the kept latents' values are differentiable as they are, and the hard "fires above
its threshold" decision passes a sigmoid surrogate's gradient in the backward pass only — the forward is unchanged,
bit for bit. ``gradient="blocked"`` is the reference's edit under ``torch.no_grad()``: no gradient crosses it, nor
reaches the blocks before it through this path.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch
from torch import Tensor

from saeuron.diffusion.hooks import BlockCall, EditFn
from saeuron.method.block_map import with_bias
from saeuron.method.detection import ImageDetector, NearestDetector
from saeuron.method.recipe import Recipe
from saeuron.method.selection import NEAREST
from saeuron.method.statistics import sae_fingerprint
from saeuron.method.steering import (
    SteeringTable,
    companion_map,
    map_shift,
    steering_fires,
    steering_shift,
    steering_table,
)
from saeuron.sae import Sae
from saeuron.sae.sparse import decode_fixed_width

ERROR_MODES = ("correct", "reference")
CompanionTable = Callable[[int, torch.device], Tensor | None]
"""(timestep, device) → the [d+1, d] matrix a companion block's patches move by (None: not at this step)."""
GRADIENTS = ("straight_through", "blocked")


def detector_of(recipe: Recipe, num_latents: int) -> ImageDetector | NearestDetector | None:
    if recipe.detect is None:
        return None
    if recipe.gate.kind in NEAREST:
        return NearestDetector(recipe.detect, len(recipe.concepts), recipe.gate.wait, recipe.detect_index, num_latents)
    return ImageDetector(recipe.detect, recipe.gate.share)


class UnlearningEdit:
    def __init__(
        self,
        sae: Sae,
        recipe: Recipe,
        error_mode: str = "correct",
        check_fingerprint: bool = True,
        gradient: str = "straight_through",
        surrogate_width: float = 1.0,
    ):
        if error_mode not in ERROR_MODES:
            raise ValueError(f"error_mode must be one of {ERROR_MODES}, got {error_mode!r}")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if check_fingerprint and sae_fingerprint(sae) != recipe.sae_fingerprint:
            raise ValueError(
                f"the recipe was built for another SAE ({recipe.sae_ref}, fingerprint {recipe.sae_fingerprint}); "
                f"load that SAE or rebuild the recipe from statistics of this one"
            )
        if recipe.sae_inference and recipe.sae_inference != sae.inference_mode:
            raise ValueError(
                f"the recipe's statistics were gathered with the SAE in {recipe.sae_inference!r} inference mode, but this "
                f"SAE runs in {sae.inference_mode!r}: load it with inference={recipe.sae_inference!r}"
            )
        if recipe.halves != "both" and error_mode == "reference":
            raise ValueError(
                f"the reference's error mode reproduces the paper's edit, on both CFG halves; this recipe edits the "
                f"{recipe.halves!r} half only: use error_mode 'correct'"
            )
        if recipe.steers() and error_mode == "reference":
            raise ValueError(
                "the reference's error mode reproduces the paper's scaling edit; this recipe steers "
                f"{[list(recipe.concepts)[i] for i, _ in recipe.steers()]}: "
                "use error_mode 'correct'"
            )
        self.sae = sae
        self.recipe = recipe
        self.error_mode = error_mode
        self.gradient = gradient
        self.surrogate_width = surrogate_width
        """The surrogate's sigmoid width, relative to |θ| + |activation| (so that it has a gradient at any scale, and
        a threshold of 0 is no special case)."""
        # Per recipe timestep: dense [F] scale (1 = untouched) and threshold (+inf = never) tables.
        self._tables: dict[int, tuple[Tensor, Tensor] | None] = {}
        self._steer_tables: dict[int, SteeringTable | None] = {}
        self._steers = recipe.steers()
        self.detector = detector_of(recipe, sae.num_latents)
        """With the "image" and "nearest" gates: which images of the current generation show the concept (the others
        are not edited)."""
        self.companions = {
            block: CompanionMapEdit(self.detector, partial(self._companion_table, block), gradient == "blocked")
            for block in recipe.steering.companions
        }
        self._companion_tables: dict[tuple[str, int, torch.device], Tensor | None] = {}

    def hooks(self) -> dict[str, EditFn]:
        """What to install, by block: this edit at the recipe's hookpoint, and its map's companion blocks'."""
        return {self.recipe.hookpoint: self, **self.companions}

    def _companion_table(self, block: str, timestep: int, device: torch.device) -> Tensor | None:
        index = self.recipe.timestep_index(timestep)
        key = (block, index, device)
        if key not in self._companion_tables:
            self._companion_tables[key] = companion_map(self.recipe.steering, self._steers, block, index, device)
        return self._companion_tables[key]

    def _steering(self, timestep: int) -> SteeringTable | None:
        index = self.recipe.timestep_index(timestep)
        if index not in self._steer_tables:
            self._steer_tables[index] = steering_table(self.recipe.steering, self._steers, index, self.sae.W_dec)
        return self._steer_tables[index]

    def _table(self, timestep: int) -> tuple[Tensor, Tensor] | None:
        index = self.recipe.timestep_index(timestep)
        if index not in self._tables:
            latents, scales, thresholds = self.recipe.rules_at(timestep)
            if len(latents) == 0:
                self._tables[index] = None
            else:
                scale = torch.ones(self.sae.num_latents, device=self.sae.device, dtype=self.sae.dtype)
                threshold = torch.full((self.sae.num_latents,), float("inf"), device=self.sae.device, dtype=self.sae.dtype)
                scale[latents] = scales.to(scale)
                threshold[latents] = thresholds.to(threshold)
                self._tables[index] = (scale, threshold)
        return self._tables[index]

    def __call__(self, tokens: Tensor, call: BlockCall) -> Tensor:
        if self.recipe.halves == "cond" and call.num_uncond:
            cond = tokens[call.num_uncond :]
            edited = self._edit_rows(cond, call, 0)
            return tokens if edited is cond else torch.cat([tokens[: call.num_uncond], edited])  # no rule: no copy
        return self._edit_rows(tokens, call, call.num_uncond)

    def _edit_rows(self, tokens: Tensor, call: BlockCall, num_uncond: int) -> Tensor:
        if self.gradient == "blocked":
            with torch.no_grad():
                return self._edit(tokens, call, num_uncond)
        return self._edit(tokens, call, num_uncond)

    def _edit(self, tokens: Tensor, call: BlockCall, num_uncond: int) -> Tensor:
        table, steering = self._table(call.timestep), self._steering(call.timestep)
        if table is None and steering is None and self.error_mode == "correct":
            return tokens
        sae = self.sae
        flat = tokens.reshape(-1, tokens.shape[-1])
        x = flat.to(sae.dtype)
        acts, indices = sae.encode(x)
        shown = None  # [N, 1] with the image gate: 1 on the patches of images that show the concept
        if self.detector is not None:
            index = self.recipe.timestep_index(call.timestep)
            rows = self.detector(acts, indices, tokens.shape[0], num_uncond, call.timestep, index)
            shown = rows.repeat_interleave(tokens.shape[1])[:, None]
        if table is None:
            edited = acts
        else:
            scale, threshold = table
            fire = acts > threshold[indices]
            if shown is not None:
                fire = fire & shown
            edited = torch.where(fire, acts * scale[indices], acts)
            if torch.is_grad_enabled() and self.gradient == "straight_through":
                surrogate = self._surrogate(acts, scale[indices], threshold[indices])
                edited = edited + (surrogate if shown is None else surrogate * shown)
        std = x.std(-1, keepdim=True) + 1e-5 if sae.cfg.input_unit_norm else None
        if self.error_mode == "correct":
            delta = decode_fixed_width(edited - acts, indices, sae.W_dec)  # x̂' − x̂ (biases cancel)
            mapped = None
            if steering is not None:
                straight_through = torch.is_grad_enabled() and self.gradient == "straight_through"
                fires = steering_fires(steering, acts, indices, self.surrogate_width if straight_through else None)
                shift = steering_shift(steering, fires)
                delta = delta + (shift if shown is None else shift * shown)
                mapped = map_shift(steering, fires, x)  # in the block's units: no unit-norm scale
            out = x + (delta if std is None else delta * std)
            if mapped is not None:
                out = out + (mapped if shown is None else mapped * shown).to(out.dtype)
        else:
            x_hat = sae.decode(acts, indices)
            x_hat_edited = sae.decode(edited, indices)
            if std is not None:
                mean = x.mean(-1, keepdim=True)
                x_hat, x_hat_edited = x_hat * std + mean, x_hat_edited * std + mean
            out = x_hat_edited + (x_hat.float() - x.float()).to(x_hat.dtype)
        return out.to(tokens.dtype).reshape(tokens.shape)

    def _surrogate(self, acts: Tensor, scale: Tensor, threshold: Tensor) -> Tensor:
        """Zero in the forward pass; in the backward pass, the gradient of acts·(scale − 1)·σ((acts − θ)/w): the
        straight-through stand-in for the step "fires above θ" (whose own gradient is zero almost everywhere)."""
        ruled = torch.isfinite(threshold)  # latents without a rule: threshold +inf, scale 1, no term
        theta = torch.where(ruled, threshold, torch.zeros_like(threshold))
        width = ((theta.abs() + acts.detach().abs()) * self.surrogate_width).clamp_min(1e-6)
        soft = torch.sigmoid((acts - theta) / width) * ruled
        return acts * (scale - 1) * (soft - soft.detach())


class CompanionMapEdit:
    """A map edit at one of the other blocks its map was fitted with: the conditional half of each image the
    ``detector`` has found so far moves by [x, 1]·``table(timestep, device)`` (Σ β·(W_t − [I; 0]): β·(M_t(x) − x) per
    map), as at the hookpoint. A block that runs before the hookpoint in a UNet call acts on the previous step's
    decision, one after it on this step's: the schedule the companions' maps were fitted on
    (:class:`saeuron.method.block_map.CompanionSchedule`). Recipes refuse companions without a detecting gate; the
    raw-activation baseline (:mod:`saeuron.method.baseline`) drives one by its own detector."""

    def __init__(self, detector: ImageDetector | NearestDetector | None, table: CompanionTable, blocked: bool = False):
        self.detector, self.table, self.blocked = detector, table, blocked

    def __call__(self, tokens: Tensor, call: BlockCall) -> Tensor:
        found = None if self.detector is None else self.detector.found(call.timestep, tokens.shape[0] - call.num_uncond)
        table = None if found is None else self.table(call.timestep, tokens.device)
        if found is None or table is None:
            return tokens
        cond = tokens[call.num_uncond :]
        with torch.no_grad() if self.blocked else nullcontext():
            moved = cond + (with_bias(cond.float()) @ table).to(cond.dtype)
        # Every row moved and the found ones kept: no host sync on which rows were found.
        edited = torch.where(found[:, None, None], moved, cond)
        return torch.cat([tokens[: call.num_uncond], edited])
