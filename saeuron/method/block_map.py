"""Map edits: per timestep, an affine map of a block's output, fitted to what the block outputs for another caption
on the same latents.

Replacing the conditional output of MiniCanvas's style block by what the unstyled caption gives on the same latents
(the *swap*) redraws every style with its objects; the per-step affine map of the block's own output fitted to the
swap leaves 1-2.5 % of its change unexplained and forgets six styles of ten with every object, where the mean
difference (steering) leaves 24-56 % (README, "Every concept", item 26). The pairs are recorded on swapped
trajectories from step ``start`` on, so that the map is fitted on the latents an edited image passes through, not
those the unedited image would have.

A fit needs sums only: XᵀX and XᵀY of the outputs with a bias column, per step, which add across prompts and actors.
Plain torch; :func:`paired_sampling` runs a diffusers pipeline through :class:`~saeuron.diffusion.hooks.HookedPipeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from saeuron.diffusion.hooks import BlockCall, HookedPipeline, initial_noise

OnPairs = Callable[[str, int, Tensor, Tensor], None]
"""(block, step index, concept output, anchor output): ``[rows, patches, channels]`` of the conditional half each."""


class AffineSums(NamedTuple):
    """What a per-step affine fit of ``y ≈ [x, 1] W`` needs, summed over pairs of patches (float64)."""

    xx: Tensor
    """[T, d+1, d+1] Σ x̃ᵀx̃, x̃ = [x, 1]."""
    xy: Tensor
    """[T, d+1, d] Σ x̃ᵀy."""
    yy: Tensor
    """[T] Σ |y|²."""
    pairs: Tensor
    """[T] pairs summed."""

    @classmethod
    def zeros(cls, steps: int, channels: int) -> AffineSums:
        f64 = torch.float64
        return cls(
            torch.zeros(steps, channels + 1, channels + 1, dtype=f64),
            torch.zeros(steps, channels + 1, channels, dtype=f64),
            torch.zeros(steps, dtype=f64),
            torch.zeros(steps, dtype=torch.long),
        )

    def add(self, step: int, x: Tensor, y: Tensor) -> None:
        """Adds the pairs (x, y), ``[..., d]`` each, at ``step``, in place."""
        design = with_bias(x.reshape(-1, x.shape[-1]).double())
        target = y.reshape(-1, y.shape[-1]).double()
        self.xx[step] += (design.T @ design).cpu()
        self.xy[step] += (design.T @ target).cpu()
        self.yy[step] += float(target.square().sum())
        self.pairs[step] += len(target)


def with_bias(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, device=x.device, dtype=x.dtype)], -1)


def solve_affine(sums: AffineSums, ridge: float) -> tuple[Tensor, Tensor]:
    """([T, d+1, d] float32 weights, [T] share of the change y − x they leave unexplained on the fitting pairs); NaN
    at a step without pairs."""
    eye = torch.eye(sums.xx.shape[-1], dtype=sums.xx.dtype)
    weights = torch.full_like(sums.xy, float("nan"))
    paired = sums.pairs > 0
    weights[paired] = torch.linalg.solve(sums.xx[paired] + ridge * eye, sums.xy[paired])
    d = weights.shape[-1]
    # |y − x̃W|² and |y − x|² from the sums alone: yy − 2 tr(WᵀXᵀY) + tr(WᵀXᵀX W), and the same with W = [I; 0].
    residual = sums.yy - 2 * (weights * sums.xy).sum((1, 2)) + (weights * (sums.xx @ weights)).sum((1, 2))
    change = sums.yy - 2 * sums.xy[:, :d].diagonal(dim1=1, dim2=2).sum(-1) + sums.xx[:, :d, :d].diagonal(dim1=1, dim2=2).sum(-1)
    return weights.float(), (residual / change.clamp_min(1e-12)).float()


def apply_map(weights: Tensor, x: Tensor) -> Tensor:
    """[d+1, d] weights of one step applied to ``x`` [..., d] (in float32, returned in x's dtype)."""
    return (with_bias(x.float()) @ weights.to(x.device, torch.float32)).to(x.dtype)


class BlockMaps(NamedTuple):
    """Every concept's map toward one anchor, as statistics keep them."""

    anchor: str
    """The concept whose caption the maps were fitted to ("none": the unstyled caption)."""
    weights: Tensor
    """[C, T, d+1, d] float32 per statistics concept and timestep; NaN for a concept without a map (the anchor)."""
    unexplained: Tensor
    """[C, T] share of the swap's change each map leaves unexplained on its fitting pairs (NaN: no map)."""
    record: dict
    """How they were fitted: ``start`` (first swapped step), ``ridge``, ``seeds`` (per statistics caption), and
    ``companions`` (the other blocks mapped with it, in order)."""
    companions: dict[str, tuple[Tensor, Tensor]] = {}
    """Per other block mapped with the statistics' block (:class:`CompanionSchedule`): its ([C, T, d_b+1, d_b]
    weights, [C, T] unexplained), fitted on the same trajectories, all blocks swapped. Empty: the block alone."""

    def of(self, concepts: list[str], concept: str) -> Tensor:
        """[T, d+1, d] the map of ``concept`` (statistics order ``concepts``), refused where there is none."""
        weights = self.weights[concepts.index(concept)]
        if torch.isnan(weights).any():
            raise ValueError(f"the statistics hold no map of {concept!r} toward {self.anchor!r} (a concept has none to itself)")
        return weights

    def companions_of(self, concepts: list[str], concept: str) -> dict[str, Tensor]:
        """{block: [T, d_b+1, d_b]} the companion blocks' maps of ``concept`` (checked by :meth:`of`)."""
        self.of(concepts, concept)
        return {block: weights[concepts.index(concept)] for block, (weights, _) in self.companions.items()}


class CompanionSchedule:
    """Which calls a map edit at ``block`` and its ``companions`` (other blocks) edits, within ``window``.

    The gate decides at ``block``, at ``window``'s first step; a companion that runs before it in a UNet call can
    act on that decision from the next step only, one that runs after it from the same step. Which is which is read
    from the calls as they come (a companion called in a step before ``block`` runs before it)."""

    def __init__(self, block: str, companions: Sequence[str], window: tuple[int, int]):
        if block in companions:
            raise ValueError(f"{block} is the block the gate reads; its companions are other blocks, got {list(companions)}")
        self.block, self.window = block, window
        self._decided_at = -1  # the step at which ``block`` last ran

    def active(self, path: str, step: int) -> bool:
        """Whether this call of ``path`` at ``step`` is edited."""
        if path == self.block:
            self._decided_at = step
        first = self.window[0] + int(path != self.block and self._decided_at != step)
        return first <= step < self.window[1]


def paired_sampling(
    hooked: HookedPipeline,
    block: str,
    captions: Sequence[str],
    anchor_captions: Sequence[str],
    seeds: Sequence[int],
    window: tuple[int, int],
    on_pairs: OnPairs | None = None,
    companions: Sequence[str] = (),
    **sampling,
) -> Tensor:
    """``captions`` sampled beside ``anchor_captions`` from the same noise, the anchor rows put back on the caption
    rows' latents after every step (both captions read the same latents), and within ``window`` (steps START:END, 0
    the noisiest) the caption rows' conditional output of ``block`` replaced by the anchor rows' (the swap). Every
    step's output pairs go to ``on_pairs``; returns the caption rows' images (``sampling``'s output type).

    ``companions``, other blocks, are swapped too, as a map edit at several blocks is applied: ``block`` is where the
    gate decides, so a companion that runs before it in a UNet call is swapped from the step after ``window``'s first,
    one that runs after it from that step (on SD's UNet, MiniCanvas's too, the text reaches the image through the
    cross-attention blocks only: swapping all of them is sampling the anchor caption)."""
    n = len(captions)
    if len(anchor_captions) != n or len(seeds) != n:
        raise ValueError(
            f"paired sampling needs one anchor caption and one seed per caption: {n}, {len(anchor_captions)}, {len(seeds)}"
        )
    schedule = CompanionSchedule(block, companions, window)

    def swapper(path: str):
        def swap(tokens: Tensor, call: BlockCall) -> Tensor:
            cond = call.num_uncond
            own, anchor = tokens[cond : cond + n], tokens[cond + n : cond + 2 * n]
            if on_pairs is not None:
                on_pairs(path, call.step_index, own, anchor)
            if not schedule.active(path, call.step_index):
                return tokens
            out = tokens.clone()
            out[cond : cond + n] = anchor
            return out

        return swap

    def same_latents(_pipe, _step, _t, tensors: dict) -> dict:
        latents = tensors["latents"]
        latents[n:] = latents[:n]
        return {"latents": latents}

    latents = initial_noise([*seeds, *seeds], hooked.latent_shape(), hooked.device, hooked.dtype)
    with hooked.hooks({path: swapper(path) for path in [block, *companions]}), torch.no_grad():
        out = hooked.pipe(
            [*captions, *anchor_captions],
            latents=latents,
            callback_on_step_end=same_latents,
            callback_on_step_end_tensor_inputs=["latents"],
            **sampling,
        )
    return out.images[:n]
