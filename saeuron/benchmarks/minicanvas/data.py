"""The procedural MiniCanvas image set, generated on the fly and deterministic in its seed."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from saeuron.benchmarks.minicanvas.concepts import OBJECTS, STYLE_LABELS
from saeuron.benchmarks.minicanvas.render import render


@dataclass
class LabelledImages:
    images: np.ndarray
    """[N, 32, 32, 3] uint8."""
    styles: np.ndarray
    """[N] index into ``STYLE_LABELS`` (the last one is "none")."""
    objects: np.ndarray
    """[N] index into ``OBJECTS``."""

    def __len__(self) -> int:
        return len(self.images)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images as float [N, 3, 32, 32] in [0, 1], and the two label vectors."""
        images = torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 255
        return images, torch.from_numpy(self.styles).long(), torch.from_numpy(self.objects).long()


def image_seed(seed: int, style: int, obj: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, style, obj, index]).generate_state(1)[0])


def _render_one(args: tuple[int, int, int, int]) -> np.ndarray:
    seed, style, obj, index = args
    return render(STYLE_LABELS[style], OBJECTS[obj], image_seed(seed, style, obj, index))


def render_dataset(per_pair: int, seed: int, styles: tuple[str, ...] = STYLE_LABELS, workers: int = 1) -> LabelledImages:
    """``per_pair`` images of every (style, object) pair, the unstyled "none" rendering included."""
    jobs = [(seed, STYLE_LABELS.index(style), obj, i) for style in styles for obj in range(len(OBJECTS)) for i in range(per_pair)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            images = list(pool.map(_render_one, jobs, chunksize=256))
    else:
        images = [_render_one(job) for job in jobs]
    return LabelledImages(
        np.stack(images),
        np.array([job[1] for job in jobs], dtype=np.int64),
        np.array([job[2] for job in jobs], dtype=np.int64),
    )
