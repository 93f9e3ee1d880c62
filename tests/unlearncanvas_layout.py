"""Files laid out exactly as UnlearnCanvas and its SD v1.5 checkpoint ship them, with tiny random weights.

- ``diffusers/style50/``: a pipeline folder as diffusers' text-to-image training script saves it: a
  ``model_index.json`` that lists ``safety_checker`` and ``feature_extractor``, SD v1.5's PNDM scheduler config, a
  CLIP tokenizer with 77 positions, a VAE with 4 levels (scale factor 8) and a 512-pixel sample size; channels
  small enough for two CPU cores. The UNet has SD's paper hookpoints (``up_blocks.1.attentions.1`` and ``.2``).
- ``anchor_prompts/finetune_prompts/sd_prompt_<Object>.txt``: the anchor captions, a few lines per object.
- ``classifiers/style50.pth`` and ``style50_cls.pth``: timm ViTs (51-way style, 20-way object) saved as
  UnlearnCanvas saves them, ``{"model_state_dict": ...}``; a tiny architecture stands in for ViT-L/16.
- ``UnlearnCanvas/<Style>/<Object>/<n>.jpg``: real images, and pytorch-fid's Inception layout with random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SD15_PNDM = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
CLASSIFIER_ARCH = "vit_tiny_patch16_224"


def write_pipeline(folder: Path, tokenizer_dir: Path) -> Path:
    from diffusers import PNDMScheduler

    from saeuron.benchmarks.minicanvas.architecture import Architecture, build_pipeline

    arch = Architecture(image_size=512, vae_channels=(8, 8, 8, 8), vae_norm_groups=4, max_tokens=77)
    pipe = build_pipeline(arch, tokenizer_dir, seed=0)
    pipe.scheduler = PNDMScheduler.from_config(SD15_PNDM)
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["requires_safety_checker"] = True
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_PNDM, indent=2))
    return folder


def write_anchor_prompts(folder: Path, lines_per_object: int = 2) -> Path:
    from saeuron.benchmarks.prompts import UNLEARNCANVAS_OBJECTS

    folder.mkdir(parents=True, exist_ok=True)
    scenes = ["A {o} in a quiet field.", "A close view of {o} at dusk.", "Two {o} beside a river."]
    for obj in UNLEARNCANVAS_OBJECTS:
        name = obj.lower().rstrip("s")
        text = "\n".join(scenes[i % len(scenes)].format(o=name) for i in range(lines_per_object))
        (folder / f"sd_prompt_{obj}.txt").write_text(text + "\n")
    return folder


def write_classifiers(folder: Path) -> tuple[Path, Path]:
    import timm

    from saeuron.benchmarks.prompts import UNLEARNCANVAS_OBJECTS, UNLEARNCANVAS_THEMES

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, classes, seed in (("style50.pth", UNLEARNCANVAS_THEMES, 1), ("style50_cls.pth", UNLEARNCANVAS_OBJECTS, 2)):
        torch.manual_seed(seed)
        model = timm.create_model(CLASSIFIER_ARCH, pretrained=False, num_classes=len(classes))
        torch.save({"model_state_dict": model.state_dict(), "epoch": 10}, folder / name)
        paths.append(folder / name)
    return paths[0], paths[1]


def write_real_images(folder: Path, per_cell: int = 2, size: int = 64) -> Path:
    from PIL import Image

    from saeuron.benchmarks.prompts import UNLEARNCANVAS_OBJECTS, UNLEARNCANVAS_STYLES

    rng = np.random.default_rng(0)
    for s, style in enumerate(UNLEARNCANVAS_STYLES):
        for o, obj in enumerate(UNLEARNCANVAS_OBJECTS):
            cell = folder / style / obj
            cell.mkdir(parents=True, exist_ok=True)
            base = np.array([s * 5 % 256, o * 12 % 256, 128], dtype=np.float64)
            for n in range(1, per_cell + 1):
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(cell / f"{n}.jpg", quality=90)
    return folder


def write_fid_inception(path: Path) -> Path:
    """pytorch-fid's FID Inception layout with random weights: no real weights exist offline, so this checks
    the plumbing (files → activations → Fréchet distance)."""
    from pytorch_fid import inception as pi

    torch.manual_seed(0)
    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in [
        ("Mixed_5b", pi.FIDInceptionA(192, pool_features=32)),
        ("Mixed_5c", pi.FIDInceptionA(256, pool_features=64)),
        ("Mixed_5d", pi.FIDInceptionA(288, pool_features=64)),
        ("Mixed_6b", pi.FIDInceptionC(768, channels_7x7=128)),
        ("Mixed_6c", pi.FIDInceptionC(768, channels_7x7=160)),
        ("Mixed_6d", pi.FIDInceptionC(768, channels_7x7=160)),
        ("Mixed_6e", pi.FIDInceptionC(768, channels_7x7=192)),
        ("Mixed_7b", pi.FIDInceptionE_1(1280)),
        ("Mixed_7c", pi.FIDInceptionE_2(2048)),
    ]:
        setattr(net, name, block)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def write_unlearncanvas(root: Path) -> dict[str, Path]:
    from saeuron.benchmarks.minicanvas.tokenizer import write_clip_tokenizer

    style, obj = write_classifiers(root / "classifiers")
    return {
        "model_path": write_pipeline(
            root / "diffusers" / "style50", write_clip_tokenizer(root / "tokenizer", model_max_length=77)
        ),
        "anchor_prompts_dir": write_anchor_prompts(root / "anchor_prompts" / "finetune_prompts"),
        "style_classifier": style,
        "object_classifier": obj,
        "real_images_dir": write_real_images(root / "UnlearnCanvas"),
        "inception_weights": write_fid_inception(root / "models" / "pt_inception-2015-12-05-6726825d.pth"),
    }
