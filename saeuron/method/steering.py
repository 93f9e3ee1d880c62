"""Anchor steering: a recipe's second edit mode, moving a concept's patches toward another concept's rendering.

The paper's edit multiplies a concept's selected latents by a negative factor: it pushes the block *away* from the
concept and nowhere in particular. On MiniCanvas a style's shape is drawn in its rendering, so pushing the rendering
away loses the object with it (README, "Every concept", items 2 and 7). A steered concept instead adds, on the patches
where its selected latents fire above their thresholds (``where="fires"``; ``"all"``: every patch), β times the decoded
difference of the anchor's and the concept's mean latents at that timestep,

    d_t = (μ_anchor,t − μ_concept,t) · W_dec,

so the block is moved toward the anchor (for a style: another style, or the unstyled rendering, the statistics'
``none`` concept from ``gather.unstyled_reference``). The selection (percentile, contrast, gate) is the scaling edit's;
only what is done where it fires differs. A recipe stores the latent-space difference, so it stays tied to its SAE
by the fingerprint, as the rules are.

A steer ``by="map"`` moves the block output x instead by β·(M_t(x) − x), M_t the concept's affine map toward the
anchor's rendering at that timestep (:mod:`saeuron.method.block_map`, from statistics gathered with ``map_anchor``):
β = 1 is the map itself. The map was fitted on the conditional CFG half, so it edits that half only (``halves:
cond``), and on MiniCanvas on whole images (``where="all"``) that a detecting gate found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from saeuron.method.selection import PAPER_GATE, Gate, gate_thresholds, importance_scores, kept_concepts, selected_latents
from saeuron.method.statistics import ConceptStatistics

WHERE = ("fires", "all")
BY = ("mean", "map")
COMPANION = "steer_map@"
"""A companion block's map in a recipe's tensors: ``steer_map@unet/down_blocks/1/attentions/0`` (a module buffer's
name has no dots)."""
TENSORS = ("timestep_index", "latent", "threshold", "concept_index", "delta")


class Steer(NamedTuple):
    """A concept's steering edit, given in place of a multiplier γ."""

    anchor: str
    """The concept whose rendering the block is moved toward (same statistics)."""
    strength: float
    """β > 0: how far, in units of the two concepts' mean difference."""
    where: str = "fires"
    """"fires": the patches where the concept's selected latents fire above their thresholds; "all": every patch."""
    by: str = "mean"
    """"mean": add β times the decoded mean difference; "map": move β of the way to the fitted map's output."""


def check_steer(concept: str, steer: Steer, known: list[str]) -> Steer:
    if steer.where not in WHERE:
        raise ValueError(f"{concept}: steering's where must be one of {WHERE}, got {steer.where!r}")
    if not steer.strength > 0:
        raise ValueError(f"{concept}: steering strength β must be positive (toward the anchor), got {steer.strength}")
    if steer.by not in BY:
        raise ValueError(f"{concept}: steering's by must be one of {BY}, got {steer.by!r}")
    if steer.anchor == concept:
        raise ValueError(f"{concept} cannot be steered toward itself: pick another concept as its anchor")
    if steer.by == "map":
        return steer  # its anchor is the statistics' map anchor: checked where the map is read
    if steer.anchor not in known:
        raise ValueError(
            f"{concept}: the statistics know {known}, not the anchor {steer.anchor!r}; for the unstyled anchor 'none' "
            f"gather them with unstyled_reference: true"
        )
    return steer


@dataclass
class Steering:
    """The steered concepts of a recipe: parallel [R] tensors, one entry per (concept, timestep, latent) that says
    where the concept fires, and ``delta`` [C, T, F], μ_anchor − μ_concept per recipe concept (zero rows for the
    concepts the recipe scales). ``concept_index`` indexes the recipe's concepts, as the rules' does."""

    timestep_index: Tensor
    latent: Tensor
    threshold: Tensor
    concept_index: Tensor
    delta: Tensor
    maps: Tensor | None = None
    """[C, T, d+1, d]: the map of each recipe concept steered ``by="map"`` (NaN rows for the others); None: none is."""
    companions: dict[str, Tensor] = field(default_factory=dict)
    """{block: [C, T, d_b+1, d_b]} the same maps at the other blocks they were fitted with (statistics gathered with
    ``map_companions``), stored as ``steer_map@<block, / for .>``; empty: the hookpoint alone."""

    @classmethod
    def empty(cls) -> Steering:
        long = torch.zeros(0, dtype=torch.long)
        return cls(long, long.clone(), torch.zeros(0), long.clone(), torch.zeros(0, 0, 0))

    def __len__(self) -> int:
        return len(self.latent)

    def tensors(self) -> dict[str, Tensor]:
        maps = {} if self.maps is None else {"steer_map": self.maps}
        companions = {COMPANION + block.replace(".", "/"): weights for block, weights in self.companions.items()}
        return {**{f"steer_{name}": getattr(self, name) for name in TENSORS}, **maps, **companions}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Steering:
        """The recipe's steering tensors; an empty Steering for a recipe without (older, or scaling only)."""
        if "steer_latent" not in tensors:
            return cls.empty()
        parts = {name: tensors[f"steer_{name}"] for name in TENSORS}
        companions = {k[len(COMPANION) :].replace("/", "."): v for k, v in tensors.items() if k.startswith(COMPANION)}
        return cls(**parts, maps=tensors.get("steer_map"), companions=companions)


def build_steering(stats: ConceptStatistics, params: dict, contrast: str = "mean", gate: Gate = PAPER_GATE) -> Steering:
    """Where each concept of ``params`` ({concept: (percentile, Steer | γ)}) given a :class:`Steer` fires, and its
    anchor difference. Unlike the scaling rules, steered concepts keep every selected latent: each has its own mask."""
    steered = {c: (p, e) for c, (p, e) in params.items() if isinstance(e, Steer)}
    if not steered:
        return Steering.empty()
    means = stats.means()  # [C, T, F]
    thresholds = gate_thresholds(stats, kept_concepts(stats, params), gate)  # [T, F]: as the scaling rules'
    delta = torch.zeros(len(params), *means.shape[1:])
    maps = None
    companions: dict[str, Tensor] = {}
    rows: list[tuple[int, int, int]] = []
    for order, concept in enumerate(params):
        if concept not in steered:
            continue
        percentile, steer = steered[concept]
        check_steer(concept, steer, stats.concepts)
        c = stats.concepts.index(concept)
        if steer.by == "map":
            fitted = map_of(stats, concept, steer.anchor)
            maps = torch.full((len(params), *fitted.shape), float("nan")) if maps is None else maps
            maps[order] = fitted
            assert stats.maps is not None  # map_of refuses statistics without
            for block, weights in stats.maps.companions_of(stats.concepts, concept).items():
                companions.setdefault(block, torch.full((len(params), *weights.shape), float("nan")))[order] = weights
        else:
            delta[order] = means[stats.concepts.index(steer.anchor)] - means[c]
        for t in range(len(stats.timesteps)):
            rows += [(order, t, f) for f in selected_latents(importance_scores(means[:, t], c, contrast), percentile).tolist()]
    return Steering(
        timestep_index=torch.tensor([t for _, t, _ in rows], dtype=torch.long),
        latent=torch.tensor([f for _, _, f in rows], dtype=torch.long),
        threshold=torch.tensor([float(thresholds[t, f]) for _, t, f in rows], dtype=torch.float32),
        concept_index=torch.tensor([o for o, _, _ in rows], dtype=torch.long),
        delta=delta,
        maps=maps,
        companions=companions,
    )


def map_of(stats: ConceptStatistics, concept: str, anchor: str) -> Tensor:
    """[T, d+1, d] the statistics' map of ``concept`` toward ``anchor``, refused when they hold none."""
    if stats.maps is None or stats.maps.anchor != anchor:
        held = "no maps" if stats.maps is None else f"maps toward {stats.maps.anchor!r}"
        raise ValueError(
            f"{concept}: a map edit toward {anchor!r} needs statistics gathered with map_anchor {anchor!r}; these hold {held}"
        )
    return stats.maps.of(stats.concepts, concept)


class SteeringTable(NamedTuple):
    """What the edit needs at one timestep, for the S steered concepts."""

    threshold: Tensor
    """[S, F]: a concept's selected latents' thresholds, +inf elsewhere."""
    step: Tensor
    """[S, d]: β · d_t, in the block's units (before a unit-norm SAE's per-patch scale)."""
    everywhere: Tensor
    """[S] bool: the concept moves every patch (``where="all"``)."""
    maps: Tensor | None = None
    """[S, d+1, d]: β·(W_t − [I; 0]) of a concept steered ``by="map"`` (zeros for the others), so that a patch's shift
    is [x, 1]·maps[s] = β·(M_t(x) − x); None: no concept is."""


def steering_table(steering: Steering, steers: list[tuple[int, Steer]], index: int, w_dec: Tensor) -> SteeringTable | None:
    """The table at recipe timestep ``index`` for ``steers`` ((recipe concept index, Steer) of the steered concepts);
    None if no concept is steered."""
    if not steers:
        return None
    device, dtype = w_dec.device, w_dec.dtype
    threshold = torch.full((len(steers), w_dec.shape[0]), float("inf"), device=device, dtype=dtype)
    step = torch.zeros(len(steers), w_dec.shape[1], device=device, dtype=dtype)
    at_step = steering.timestep_index == index
    maps = None
    for row, (order, steer) in enumerate(steers):
        mine = at_step & (steering.concept_index == order)
        threshold[row, steering.latent[mine].to(device)] = steering.threshold[mine].to(device, dtype)
        if steer.by == "map":
            assert steering.maps is not None, "a recipe steering by a map stores it (Recipe checks)"
            fitted = steering.maps[order, index].to(device, torch.float32)
            maps = torch.zeros(len(steers), *fitted.shape, device=device) if maps is None else maps
            identity = torch.eye(fitted.shape[0], fitted.shape[1], device=device)  # [I; 0]: x̃ ↦ x
            maps[row] = steer.strength * (fitted - identity)
        else:
            step[row] = steer.strength * (steering.delta[order, index].to(device, dtype) @ w_dec)
    everywhere = torch.tensor([s.where == "all" for _, s in steers], device=device)
    return SteeringTable(threshold, step, everywhere, maps)


def companion_map(
    steering: Steering, steers: list[tuple[int, Steer]], block: str, index: int, device: torch.device
) -> Tensor | None:
    """[d_b+1, d_b]: Σ β·(W_t − [I; 0]) at companion ``block`` over the concepts ``steers`` moves by a map, at recipe
    timestep ``index`` (the images the gate found show one of them: each moves as at the hookpoint, where a map steer
    moves every patch); None if none does."""
    total = None
    for order, steer in steers:
        if steer.by == "map" and block in steering.companions:
            fitted = steering.companions[block][order, index].to(device, torch.float32)
            identity = torch.eye(fitted.shape[0], fitted.shape[1], device=device)
            total = steer.strength * (fitted - identity) + (0 if total is None else total)
    return total


def steering_shift(table: SteeringTable, fires: Tensor) -> Tensor:
    """[N, d]: what the mean-difference steers add to N patches, in the SAE's input units (before a unit-norm SAE's
    per-patch scale), ``fires`` [S, N] from :func:`steering_fires`."""
    return fires.T @ table.step


def map_shift(table: SteeringTable, fires: Tensor, x: Tensor) -> Tensor | None:
    """[N, d]: what the map steers add to N patches ``x`` [N, d] of the block's output, in its units (float32);
    None when no concept steers by a map."""
    if table.maps is None:
        return None
    design = torch.cat([x.float(), torch.ones(len(x), 1, device=x.device)], -1)
    return torch.einsum("sn,nd,sde->ne", fires.float(), design, table.maps)


def steering_fires(table: SteeringTable, acts: Tensor, indices: Tensor, surrogate_width: float | None) -> Tensor:
    """[S, N]: where each steered concept moves N patches whose SAE code is (``acts``, ``indices``) [N, k].

    With ``surrogate_width`` (gradients enabled, straight-through), the hard "fires" decision passes a sigmoid
    surrogate's gradient in the backward pass only, as the scaling edit does; the forward is unchanged."""
    theta = table.threshold[:, indices]  # [S, N, k]
    fires = ((acts > theta).any(-1) | table.everywhere[:, None]).to(acts.dtype)  # [S, N]
    if surrogate_width is not None:
        ruled = torch.isfinite(theta)
        theta0 = torch.where(ruled, theta, torch.zeros_like(theta))
        width = ((theta0.abs() + acts.detach().abs()) * surrogate_width).clamp_min(1e-6)
        soft = (torch.sigmoid((acts - theta0) / width) * ruled).amax(-1) * (~table.everywhere[:, None])
        fires = fires + (soft - soft.detach())
    return fires
