"""Shared fixtures. Everything runs on one CPU thread per process (see environment notes)."""

from __future__ import annotations

import os

for _name, _value in {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_name, _value)

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A randomly initialised pipeline with MiniCanvas's SD-v1 layout, built from configs."""
    from saeuron.minicanvas.architecture import Architecture, build_pipeline
    from saeuron.minicanvas.tokenizer import write_clip_tokenizer

    tokenizer_dir = write_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return build_pipeline(Architecture(), tokenizer_dir, seed=0)
