"""A baseline without the SAE: zero (or scale by a multiplier) the raw block channels most tied to a concept.

The channels are ranked by how much higher their mean activation is on the concept's vectors
than on all others, in units of their overall standard deviation, over the collected (labelled)
activation dataset. The SAE method has to beat this at the same retain accuracy.

A recipe under the "nearest" gate edits only the images whose SAE code is nearest a forgotten concept's mean, and
steers them by a difference of mean codes. Its baseline does both without the SAE (``RawGatedEdit``): the images
are found by the nearest mean of the raw block output, and moved by the difference of raw means — on every patch,
where the SAE's steering moves only the patches its selected latents fire on.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from saeuron.collection import activations
from saeuron.diffusion.hooks import BlockCall, EditFn
from saeuron.method.block_map import with_bias
from saeuron.method.detection import NearestDetector
from saeuron.method.edit import CompanionMapEdit
from saeuron.method.recipe import nearest_timestep


def labelled_vectors(root: str | Path, hookpoint: str, kind: str, *labels: str) -> tuple[pa.Table, np.ndarray]:
    """A hookpoint's rows (with their ``kind`` label and further ``labels``, timestep and patches) and their vectors
    [patches, d] float32."""
    manifest = activations.read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root} has no {activations.MANIFEST}: not an activation dataset (run jobs/collect.py first)")
    d_in = manifest["d_in"][hookpoint]
    table = activations.read_hookpoint(root, hookpoint, ["timestep", kind, *labels, "activations", "patch_index"])
    return table, activations.binary_to_vectors(table.column("activations"), d_in).astype(np.float32)


def channel_rankings(root: str | Path, hookpoint: str, kind: str, count: int) -> dict[str, list[int]]:
    """For every concept of ``kind`` in the dataset, its ``count`` channels most tied to it: the hookpoint's vectors
    are read once for all of them (a collection at SD scale holds gigabytes of them)."""
    table, vectors = labelled_vectors(root, hookpoint, kind)
    labels = np.repeat(
        np.array(table.column(kind).to_pylist(), dtype=object), [len(p) for p in table.column("patch_index").to_pylist()]
    )
    spread = vectors.std(0) + 1e-6
    rankings = {}
    for concept in sorted({label for label in labels if label is not None}):
        mine = labels == concept
        gap = (vectors[mine].mean(0) - vectors[~mine].mean(0)) / spread
        rankings[concept] = np.argsort(-gap)[:count].tolist()
    return rankings


def concept_channels(root: str | Path, hookpoint: str, concept: str, kind: str, count: int) -> list[int]:
    rankings = channel_rankings(root, hookpoint, kind, count)
    if concept not in rankings:
        raise ValueError(f"no vectors of {kind} {concept!r} in {root}")
    return rankings[concept]


class ChannelScaleEdit:
    """Multiply ``channels`` of the block output by ``multiplier`` at every step: 0 zeroes them (the ablation); a
    negative one pushes them the other way, as the SAE edit's multiplier does its latents."""

    def __init__(self, channels: list[int], multiplier: float = 0.0):
        self.channels = torch.tensor(channels, dtype=torch.long)
        self.multiplier = float(multiplier)

    def __call__(self, tokens: Tensor, call: BlockCall) -> Tensor:
        out = tokens.clone()
        channels = self.channels.to(tokens.device)
        out[..., channels] = out[..., channels] * self.multiplier
        return out


def raw_means(root: str | Path, hookpoint: str, kind: str, cells: bool = False) -> tuple[list[str], list[int], Tensor]:
    """Every concept's mean raw block output per denoising step, over the collected vectors: (concepts, the "none"
    of unlabelled prompts last where the collection has them; timesteps [T], noisiest first; means [C, T, d]). The
    raw counterpart of the statistics' mean SAE codes, which the "nearest" gate and steering read. With ``cells``
    (the "cell" gate's), [C, K, T, d] per value of the prompts' other label ("none" where unlabelled, last), NaN
    where the collection has no such prompt."""
    other = "object" if kind == "style" else "style"
    table, vectors = labelled_vectors(root, hookpoint, kind, *([other] if cells else []))
    patches = {len(p) for p in table.column("patch_index").to_pylist()}
    if len(patches) != 1:
        raise ValueError(f"{root}/{hookpoint}: rows hold {sorted(patches)} patches; the means need whole images")
    d_in = vectors.shape[-1]
    per_row = torch.from_numpy(vectors).reshape(table.num_rows, patches.pop(), d_in).mean(1)  # [rows, d]
    labels = ["none" if label is None else label for label in table.column(kind).to_pylist()]
    values = ["none" if v is None else v for v in table.column(other).to_pylist()] if cells else ["none"] * len(labels)
    steps = [int(t) for t in table.column("timestep").to_pylist()]
    timesteps = sorted(set(steps), reverse=True)
    concepts = sorted(set(labels) - {"none"}) + (["none"] if "none" in labels else [])
    kept = sorted(set(values) - {"none"}) + (["none"] if "none" in values else [])
    concept_of, value_of, step_of = ({x: i for i, x in enumerate(xs)} for xs in (concepts, kept, timesteps))
    T, K = len(timesteps), len(kept)
    cell = torch.tensor(
        [(concept_of[c] * K + value_of[v]) * T + step_of[t] for c, v, t in zip(labels, values, steps)], dtype=torch.long
    )
    sums = torch.zeros(len(concepts) * K * T, d_in).index_add_(0, cell, per_row)
    counts = torch.bincount(cell, minlength=len(concepts) * K * T)[:, None]
    means = (sums / counts.clamp_min(1)).masked_fill(counts == 0, float("nan")).reshape(len(concepts), K, T, d_in)
    return concepts, timesteps, means if cells else means[:, 0]


_NO_CODE = torch.empty(0, dtype=torch.long)
"""What the raw detector is given for the SAE code's indices: it reads the block output itself."""


class RawNearestDetector(NearestDetector):
    """The "nearest" gate without the SAE: the image's patch-averaged raw block output against every concept's raw
    mean (``raw_means``), the forgotten ones first; the evidence adds up and decides as the SAE gate's does."""

    def evidence(self, acts: Tensor, indices: Tensor, rows: int, num_uncond: int, index: int) -> Tensor:
        image = acts.float().reshape(rows, -1, acts.shape[-1])[num_uncond:].mean(1)  # [images, d]
        return torch.cdist(image, self._means(index, acts.device)).square()


class RawGatedEdit:
    """The baseline of a gated recipe, without the SAE: on the images a :class:`RawNearestDetector` finds (on the
    ``halves`` the recipe edits), either add β·(μ_anchor,t − μ_concept,t) of the raw means to every patch
    (``anchor``), multiply ``channels`` by ``multiplier``, or move every patch by a map edit's [x, 1]·``maps[t]``
    (β·(W_t − [I; 0]), the recipe's own maps: only the gate is raw), at its ``companions`` blocks too (:meth:`hooks`)."""

    def __init__(
        self,
        means: Tensor,
        timesteps: list[int],
        wait: int,
        halves: str = "both",
        anchor: int | None = None,
        strength: float = 0.0,
        channels: list[int] | None = None,
        multiplier: float = 1.0,
        maps: Tensor | None = None,
        companions: dict[str, Tensor] | None = None,
    ):
        """``means`` [C, T, d] (or [C, K, T, d] per cell): the forgotten concept's row first; ``anchor``: another
        row of it; ``maps`` [T, d+1, d] and ``companions`` {block: [T, d_b+1, d_b]} at ``timesteps``."""
        if sum(x is not None for x in (anchor, channels, maps)) != 1:
            raise ValueError("a raw gated edit steers toward an anchor, scales channels or moves by a map: give one of them")
        if companions and maps is None:
            raise ValueError("companion blocks' maps go with a map edit at the hookpoint: give maps")
        self.detector = RawNearestDetector(means, 1, wait)
        self.means, self.timesteps, self.halves = means, timesteps, halves
        self.anchor, self.strength = anchor, float(strength)
        self.channels = None if channels is None else torch.tensor(channels, dtype=torch.long)
        self.multiplier = float(multiplier)
        self.maps, self.companions = maps, dict(companions or {})

    def hooks(self, hookpoint: str) -> dict[str, EditFn]:
        """This edit at ``hookpoint`` and its map's companion blocks, moved on the images its detector finds."""
        return {
            hookpoint: self,
            **{block: CompanionMapEdit(self.detector, partial(self._table, maps)) for block, maps in self.companions.items()},
        }

    def _table(self, maps: Tensor, timestep: int, device: torch.device) -> Tensor:
        return maps[nearest_timestep(self.timesteps, timestep)].to(device, torch.float32)

    def __call__(self, tokens: Tensor, call: BlockCall) -> Tensor:
        if self.halves == "cond" and call.num_uncond:
            return torch.cat([tokens[: call.num_uncond], self._edit(tokens[call.num_uncond :], call, 0)])
        return self._edit(tokens, call, call.num_uncond)

    def _edit(self, tokens: Tensor, call: BlockCall, num_uncond: int) -> Tensor:
        index = nearest_timestep(self.timesteps, call.timestep)
        flat = tokens.reshape(-1, tokens.shape[-1])
        shown = self.detector(flat, _NO_CODE, tokens.shape[0], num_uncond, call.timestep, index)  # [rows]
        out = tokens.clone()
        if self.anchor is not None:
            mean = self.means.nanmean(1) if self.means.dim() == 4 else self.means  # per cell: over its cells
            step = self.strength * (mean[self.anchor, index] - mean[0, index]).to(tokens.device, tokens.dtype)
            out[shown] = out[shown] + step
        elif self.maps is not None:
            picked = out[shown]
            out[shown] = picked + (with_bias(picked.float()) @ self._table(self.maps, call.timestep, tokens.device)).to(
                tokens.dtype
            )
        else:
            assert self.channels is not None
            channels = self.channels.to(tokens.device)
            picked = out[shown]
            picked[..., channels] = picked[..., channels] * self.multiplier
            out[shown] = picked
        return out
