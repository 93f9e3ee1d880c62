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


def concept_channels(root: str | Path, hookpoint: str, concept: str, kind: str, count: int) -> list[int]:
    manifest = activations.read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root} has no {activations.MANIFEST}: not an activation dataset (run jobs/collect.py first)")
    d_in = manifest["d_in"][hookpoint]
    table = activations.read_hookpoint(root, hookpoint, ["prompt_id", "step_index", kind, "activations", "patch_index"])
    labels = np.repeat(
        np.array(table.column(kind).to_pylist(), dtype=object), [len(p) for p in table.column("patch_index").to_pylist()]
    )
    vectors = activations.binary_to_vectors(table.column("activations"), d_in).astype(np.float32)
    mine = labels == concept
    if not mine.any():
        raise ValueError(f"no vectors of {kind} {concept!r} in {root}")
    gap = (vectors[mine].mean(0) - vectors[~mine].mean(0)) / (vectors.std(0) + 1e-6)
    return np.argsort(-gap)[:count].tolist()


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
