"""A baseline without the SAE: zero (or scale by a multiplier) the raw block channels most tied to a concept.

The channels are ranked by how much higher their mean activation is on the concept's vectors
than on all others, in units of their overall standard deviation, over the collected (labelled)
activation dataset. The SAE method has to beat this at the same retain accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from saeuron.collection import activations
from saeuron.diffusion.hooks import BlockCall


def channel_rankings(root: str | Path, hookpoint: str, kind: str, count: int) -> dict[str, list[int]]:
    """For every concept of ``kind`` in the dataset, its ``count`` channels most tied to it: the hookpoint's vectors
    are read once for all of them (a collection at SD scale holds gigabytes of them)."""
    manifest = activations.read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root} has no {activations.MANIFEST}: not an activation dataset (run jobs/collect.py first)")
    d_in = manifest["d_in"][hookpoint]
    table = activations.read_hookpoint(root, hookpoint, ["prompt_id", "step_index", kind, "activations", "patch_index"])
    labels = np.repeat(
        np.array(table.column(kind).to_pylist(), dtype=object), [len(p) for p in table.column("patch_index").to_pylist()]
    )
    vectors = activations.binary_to_vectors(table.column("activations"), d_in).astype(np.float32)
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
