"""MiniCanvas: the embedded benchmark — a tiny SD-architecture pipeline and classifiers trained
on a procedural style × object image set, shipped with the package (see weights/README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from saeuron.benchmarks.minicanvas.concepts import NO_STYLE, OBJECTS, STYLE_LABELS, STYLES

WEIGHTS = Path(__file__).resolve().parent / "weights"
TRAIN_COMMAND = "python -m saeuron.benchmarks.minicanvas.train --stage all"


@dataclass(frozen=True)
class MiniCanvas:
    root: Path

    styles = STYLES
    objects = OBJECTS
    style_labels = STYLE_LABELS
    """The style classifier's classes: the styles then "none"."""

    @property
    def pipeline_path(self) -> Path:
        return self.root / "pipeline"

    @property
    def classifier_path(self) -> Path:
        return self.root / "classifier"

    def load_pipeline(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from saeuron.diffusion.pipeline import load_pipeline

        return load_pipeline(self.pipeline_path, device, dtype)

    def load_classifier(self, device: str | torch.device = "cpu"):
        from saeuron.benchmarks.minicanvas.classifier import MiniCanvasClassifier

        return MiniCanvasClassifier.from_pretrained(self.classifier_path, device)


def load_minicanvas(root: str | Path = WEIGHTS) -> MiniCanvas:
    root = Path(root)
    for part in ("pipeline/model_index.json", "classifier/model.safetensors"):
        if not (root / part).is_file():
            raise FileNotFoundError(f"MiniCanvas weights missing: {root / part}; rebuild them with `{TRAIN_COMMAND}`")
    return MiniCanvas(root)


__all__ = ["MiniCanvas", "load_minicanvas", "STYLES", "OBJECTS", "STYLE_LABELS", "NO_STYLE"]
