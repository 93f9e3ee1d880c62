"""MiniCanvas's style and object classifier: a small CNN with two heads.

It is the judge for MiniCanvas the way UnlearnCanvas's ViT-L/16 classifiers are for SD: logits
over the benchmark's style list (the styles plus "none") and object list. ``features`` gives the
penultimate activations, the feature space of MiniCanvas's domain FID.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from saeuron.atomic_files import atomic_paths
from saeuron.benchmarks.minicanvas.concepts import OBJECTS, STYLE_LABELS


@dataclass
class ClassifierConfig:
    styles: tuple[str, ...] = STYLE_LABELS
    objects: tuple[str, ...] = OBJECTS
    widths: tuple[int, ...] = (32, 64, 96)


class ClassifierOutput(NamedTuple):
    style_logits: Tensor
    object_logits: Tensor


class MiniCanvasClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig | None = None):
        super().__init__()
        self.cfg = cfg or ClassifierConfig()
        layers, channels = [], 3
        for width in self.cfg.widths:
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.style_head = nn.Linear(channels, len(self.cfg.styles))
        self.object_head = nn.Linear(channels, len(self.cfg.objects))

    def features(self, images: Tensor) -> Tensor:
        """[N, widths[-1]] pooled features of images in [0, 1], [N, 3, H, W]."""
        return self.body((images - 0.5) / 0.5).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> ClassifierOutput:
        features = self.features(images)
        return ClassifierOutput(self.style_head(features), self.object_head(features))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_paths(folder / "model.safetensors", folder / "config.json") as (weights, config):
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(weights))
            config.write_text(json.dumps(asdict(self.cfg), indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> MiniCanvasClassifier:
        folder = Path(folder)
        raw = json.loads((folder / "config.json").read_text())
        model = cls(ClassifierConfig(**{k: tuple(v) for k, v in raw.items()}))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.to(device).eval()


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Perturbations a generated image may carry: ±2 px shifts, blur, colour jitter, noise."""
    n = images.shape[0]
    shifts = torch.randint(-2, 3, (2,), generator=generator).tolist()
    images = torch.roll(images, shifts=shifts, dims=(2, 3))
    blur = torch.rand(n, generator=generator) < 0.3
    if blur.any():
        kernel = torch.full((3, 1, 3, 3), 1 / 9)
        images[blur] = F.conv2d(F.pad(images[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    gain = 1 + 0.12 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    offset = 0.08 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    noise = torch.randn(images.shape, generator=generator) * (0.06 * torch.rand(n, 1, 1, 1, generator=generator))
    return (images * gain + offset + noise).clamp(0, 1)


@torch.no_grad()
def classify(model: MiniCanvasClassifier, images: Tensor, batch_size: int = 256) -> ClassifierOutput:
    outs = [model(images[i : i + batch_size].to(next(model.parameters()).device)) for i in range(0, len(images), batch_size)]
    return ClassifierOutput(torch.cat([o.style_logits for o in outs]), torch.cat([o.object_logits for o in outs]))
