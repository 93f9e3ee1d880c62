"""Checks on a local diffusers pipeline folder that run before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from diffusers import UNet2DConditionModel

from saeuron.diffusion.hooks import unet_cross_attention_blocks


def check_pipeline_folder(path: str | Path) -> dict:
    """The folder's ``model_index.json``; fails clearly when it is not an SD-style pipeline."""
    folder = Path(path)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); point model_path at a "
            f"local folder written by StableDiffusionPipeline.save_pretrained"
        )
    model_index = json.loads(index.read_text())
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if c not in model_index]
    if missing:
        raise ValueError(f"{folder} lacks pipeline components {missing}: not a Stable Diffusion pipeline")
    return model_index


def block_channels(path: str | Path, hookpoints: Sequence[str]) -> dict[str, int]:
    """Channels (d_in) of each hookpoint's block, from the UNet config on the meta device;
    an unknown hookpoint fails listing the cross-attention blocks of that UNet."""
    check_pipeline_folder(path)
    config = UNet2DConditionModel.load_config(Path(path) / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    blocks = unet_cross_attention_blocks(unet)
    channels = {}
    for hookpoint in hookpoints:
        if hookpoint not in blocks:
            raise ValueError(f"unknown hookpoint {hookpoint!r} for {path}; the cross-attention blocks of this UNet are: {', '.join(blocks)}")
        channels[hookpoint] = int(blocks[hookpoint].config.in_channels)
    return channels
