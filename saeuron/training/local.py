"""Training an SAE in this process straight from the Parquet activations, without Ray.

The bare loop the Ray Train job is benchmarked against, and a quick way to get an SAE in tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from saeuron.collection import activations
from saeuron.sae import Sae, SaeConfig
from saeuron.sae.trainer import SaeTrainConfig, SaeTrainer


def load_vectors(root: str | Path, hookpoint: str) -> torch.Tensor:
    manifest = activations.read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root} has no {activations.MANIFEST}: not an activation dataset (run jobs/collect.py first)")
    d_in = manifest["d_in"][hookpoint]
    # Sorted by prompt and step: file order depends on the writer, and the same data must give the same tensor.
    table = activations.read_hookpoint(root, hookpoint, ["prompt_id", "step_index", "activations"])
    return torch.from_numpy(activations.binary_to_vectors(table.column("activations"), d_in).astype(np.float32))


def train_locally(
    root: str | Path, hookpoint: str, sae_cfg: SaeConfig, optim: SaeTrainConfig, batch_size: int, steps: int, seed: int = 0
) -> tuple[Sae, float]:
    """Returns the SAE and the training throughput in vectors/s (from the first finished step)."""
    vectors = load_vectors(root, hookpoint)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sae = Sae(vectors.shape[1], sae_cfg)
    trainer = SaeTrainer(sae, optim, steps)
    order = torch.randperm(len(vectors), generator=generator)
    flowing = time.perf_counter()  # restarted once the first step has finished
    for step in range(steps):
        start = (step * batch_size) % max(len(vectors) - batch_size, 1)
        trainer.step(vectors[order[start : start + batch_size]])
        if step == 0:
            flowing = time.perf_counter()
    speed = (steps - 1) * batch_size / (time.perf_counter() - flowing) if steps > 1 else float("nan")
    return sae, speed
