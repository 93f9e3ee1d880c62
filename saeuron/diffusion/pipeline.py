"""Loading a local diffusers Stable Diffusion folder, and the checks that run before any model loads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from saeuron.diffusion.hooks import unet_cross_attention_blocks

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` is float16 on a GPU and float32 on a CPU (CPU kernels for half precision are slow or missing)."""
    if name == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


SAMPLERS = ("ddim", "folder")


def load_pipeline(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32, sampler: str = "ddim"
):
    """The one way a diffusers folder is loaded: a ``StableDiffusionPipeline`` from local files only
    (nothing is downloaded), without the safety checker, progress bars off, on ``device``.

    ``sampler="ddim"`` samples with DDIM built from the folder's scheduler config, as the reference does
    whatever the folder holds (SD v1.5 and UnlearnCanvas ship PNDM, whose PLMS calls the UNet once more than
    there are steps); ``"folder"`` keeps the folder's own.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    check_sampler(path, sampler)
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, torch.device(device).type)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True
    ).to(device)
    if sampler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_sampler(path: str | Path, sampler: str) -> str:
    """The folder's scheduler class; fails when ``sampler`` is unknown or DDIM cannot stand in for it."""
    from diffusers import DDIMScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"model.sampler must be one of {SAMPLERS}, got {sampler!r}")
    check_pipeline_folder(path)
    config = DDIMScheduler.load_config(Path(path) / "scheduler")
    name = str(config.get("_class_name", ""))
    compatible = {c if isinstance(c, str) else c.__name__ for c in DDIMScheduler._compatibles}
    if sampler == "ddim" and name not in compatible:
        raise ValueError(
            f"{path}: its scheduler {name or '(unnamed)'} has no DDIM equivalent (DDIM replaces {sorted(compatible)}); "
            f"pass --model.sampler folder to sample with it as it is"
        )
    return name


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
    needed = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    missing = [c for c in needed if c not in model_index or not (folder / c).is_dir()]
    if missing:
        raise ValueError(
            f"{folder} lacks pipeline components {missing} (in model_index.json or as folders): "
            f"not a complete Stable Diffusion pipeline folder"
        )
    return model_index


def block_channels(path: str | Path, hookpoints: Sequence[str] | None = None) -> dict[str, int]:
    """Channels (d_in) of each hookpoint's block (None: of every cross-attention block, in the UNet's order), from the
    UNet config on the meta device; an unknown hookpoint fails listing the cross-attention blocks of that UNet."""
    check_pipeline_folder(path)
    config = UNet2DConditionModel.load_config(Path(path) / "unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    blocks = unet_cross_attention_blocks(unet)
    channels = {}
    for hookpoint in blocks if hookpoints is None else hookpoints:
        if hookpoint not in blocks:
            raise ValueError(
                f"unknown hookpoint {hookpoint!r} for {path}; the cross-attention blocks of this UNet are: {', '.join(blocks)}"
            )
        channels[hookpoint] = int(blocks[hookpoint].config.in_channels)
    return channels
