"""A resumable training checkpoint without pickle: the SAE in the published format plus the
trainer's state as ``trainer_state.safetensors`` (tensors) and ``trainer_state.json`` (the rest).

    <folder>/<hookpoint>/cfg.json, sae.safetensors    the SAE, loadable by Sae.load_from_disk
    <folder>/trainer_state.safetensors                 Adam moments, dead-latent counters
    <folder>/trainer_state.json                        step, schedule, threshold, data position
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from saeuron.atomic_files import save_tensors_and_json
from saeuron.sae.model import Sae
from saeuron.sae.trainer import SaeTrainer

TENSORS = "trainer_state.safetensors"
META = "trainer_state.json"


def save_checkpoint(folder: str | Path, hookpoint: str, trainer: SaeTrainer, extra: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    trainer.sae.save_to_disk(folder / hookpoint)
    state = trainer.state_dict()
    optimizer = state["optimizer"]
    tensors = {"vectors_since_fired": state["vectors_since_fired"].cpu()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {
        "hookpoint": hookpoint,
        "step_count": state["step_count"],
        "threshold": state["threshold"],
        "param_groups": optimizer["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": state["scheduler"],
        "extra": extra or {},
    }
    return save_tensors_and_json(folder, TENSORS, tensors, META, meta)


def load_checkpoint(folder: str | Path, trainer: SaeTrainer) -> dict[str, Any]:
    """Restore ``trainer`` (and its SAE) from ``folder``; returns the ``extra`` dict saved with it."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    saved = Sae.load_from_disk(folder / meta["hookpoint"], device=trainer.sae.device, dtype=trainer.sae.dtype)
    trainer.sae.load_state_dict(saved.state_dict())
    trainer.sae.cfg.threshold = saved.cfg.threshold
    tensors = load_file(str(folder / TENSORS))
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value.to(trainer.sae.device)
    for index, entries in meta["optimizer_scalars"].items():
        optimizer_state.setdefault(int(index), {}).update(entries)
    trainer.load_state_dict(
        {
            "optimizer": {"state": optimizer_state, "param_groups": meta["param_groups"]},
            "scheduler": meta["scheduler"],
            "step_count": meta["step_count"],
            "vectors_since_fired": tensors["vectors_since_fired"],
            "threshold": meta["threshold"],
        }
    )
    return meta["extra"]
