"""SAE configuration, field-compatible with the published SAeUron ``cfg.json``."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any


@dataclass
class SaeConfig:
    """Architecture of one sparse autoencoder.

    The first eight fields mean exactly what they mean in the reference ``SaeConfig``
    (its defaults too); ``threshold`` is ours.
    """

    expansion_factor: int = 32
    """Latents per input dimension, used when ``num_latents`` is 0."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm (renormalise each step, project out parallel grads)."""
    num_latents: int = 0
    """Number of latents F; 0 means ``d_in * expansion_factor``."""
    k: int = 32
    """Active latents per vector (TopK) or on average per vector (BatchTopK)."""
    batch_topk: bool = False
    """Train with BatchTopK: the k·N largest pre-activations of a batch of N vectors."""
    sample_topk: bool = False
    """Reference field (dead code there); refused if set, kept so its cfg.json loads."""
    input_unit_norm: bool = False
    """Standardise every vector before encoding and undo it after decoding."""
    multi_topk: bool = False
    """Add the FVU of a 4k reconstruction (weight 1/8) to the loss."""
    threshold: float | None = None
    """Learned BatchTopK inference threshold; when set, inference keeps latents above it
    (so inference matches BatchTopK training) instead of the per-vector top k."""

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")
        if self.sample_topk:
            raise ValueError(
                "sample_topk=True is not supported: it is dead code in the reference and the "
                "published SAEs do not use it; use batch_topk=True or plain TopK"
            )

    def latents_for(self, d_in: int) -> int:
        return self.num_latents if self.num_latents > 0 else d_in * self.expansion_factor

    def to_json_dict(self, d_in: int) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "d_in": d_in}

    @classmethod
    def from_json_dict(cls, raw: dict[str, Any], source: str = "cfg.json") -> tuple[SaeConfig, int]:
        """Returns the config and ``d_in``; unknown fields warn instead of failing, so that
        checkpoints written by newer or other tools still load."""
        raw = dict(raw)
        if "d_in" not in raw:
            raise ValueError(f"{source} has no 'd_in' field; is this an SAE checkpoint folder?")
        d_in = int(raw.pop("d_in"))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown SAE config fields {unknown}", stacklevel=3)
        # The reference loader forces these off for inference; we keep the training mode
        # as information, since inference never depends on it here.
        raw["sample_topk"] = False
        return cls(**{key: value for key, value in raw.items() if key in known}), d_in
