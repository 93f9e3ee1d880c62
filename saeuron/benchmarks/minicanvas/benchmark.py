"""MiniCanvas as a benchmark: its shipped pipeline, captions, classifier and procedural real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saeuron.benchmarks.base import FID_MODES, Benchmark
from saeuron.benchmarks.judges import Judge, MiniCanvasJudge
from saeuron.benchmarks.minicanvas import concepts, load_minicanvas
from saeuron.sections import JudgeConfig

REAL_IMAGE_SEED = 20_251_129
"""Seed of MiniCanvas's "real" renders for FID; not one the classifier was trained on."""
ATTACK_IMAGE_SEED = 20_261_130
"""Seed of the renders an attack targets: real images of the concept that neither FID nor the classifier saw."""


class MiniCanvasBenchmark(Benchmark):
    def resolve_model_path(self, model_path: str | None) -> Path:
        return super().resolve_model_path(model_path) if model_path else load_minicanvas().pipeline_path

    def training_captions(self, anchor_prompts_dir: str | None) -> dict[str, list[str]]:
        return {obj: concepts.captions(obj) for obj in concepts.OBJECTS}

    def load_judge(self, judge: JudgeConfig, device: str | torch.device = "cpu") -> Judge:
        return MiniCanvasJudge(load_minicanvas().load_classifier(device))

    def fid_mode(self, requested: str, real_images_dir: str) -> str:
        """``auto``: the domain FID over the shipped classifier's features, against procedural renders."""
        if requested not in FID_MODES:
            raise ValueError(f"fid must be one of {FID_MODES}, got {requested!r}")
        return "domain" if requested == "auto" else requested

    def attack_images(self, style: str, obj: str, images_dir: str) -> list[Path]:
        return super().attack_images(style, obj, images_dir) if images_dir else []

    def attack_image(self, style: str, obj: str, index: int, images_dir: str, size: int) -> torch.Tensor:
        """A procedural render (any index is an image) unless a folder of images is given."""
        from saeuron.benchmarks.minicanvas.data import image_seed
        from saeuron.benchmarks.minicanvas.render import render

        if images_dir:
            return super().attack_image(style, obj, index, images_dir, size)
        if index < 0:
            raise ValueError(f"attack index {index} is negative")
        seed = image_seed(ATTACK_IMAGE_SEED, concepts.STYLE_LABELS.index(style), concepts.OBJECTS.index(obj), index)
        image = torch.from_numpy(render(style, obj, seed).copy()).permute(2, 0, 1).float() / 255
        return (
            torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear")[0]
            if image.shape[-1] != size
            else image
        )

    def domain_real_images(self, cells: list[tuple[str, str]], per_cell: int) -> torch.Tensor:
        from saeuron.benchmarks.minicanvas.data import image_seed
        from saeuron.benchmarks.minicanvas.render import render

        images = [
            render(s, o, image_seed(REAL_IMAGE_SEED, concepts.STYLE_LABELS.index(s), concepts.OBJECTS.index(o), i))
            for s, o in sorted(set(cells))
            for i in range(per_cell)
        ]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


# MiniCanvas's objects are unlearned at its mid block, not at the paper's up.1.1. Its UNet has three
# levels, so up_blocks.1 already draws the shape: a linear probe tells the object from one patch of
# up.1.1 for 53-79 % of patches (by step), from one patch of mid_block.attentions.0 for 100 %; and
# the method's selected up.1.1 latents fire on 75-90 % of every object's patches. At the mid block
# forgetting Stars keeps every other object (README, "Objects").
MINICANVAS = MiniCanvasBenchmark(
    "minicanvas",
    concepts.STYLES,
    concepts.OBJECTS,
    concepts.STYLES,
    (188, 288, 588, 688, 888),
    # SAEs of ~1,000 latents, where p = 99.99 keeps nothing: percentiles that keep about 5 to 30 latents
    # per timestep, and multipliers from a gentle to a strong edit.
    search_percentiles=(97.0, 98.0, 99.0, 99.5),
    search_multipliers=(-0.5, -1.0, -2.0, -5.0, -10.0),
    object_hookpoint="unet.mid_block.attentions.0",
)
