"""The judges of a benchmark: a style classifier and an object classifier behind one interface.

``predict(images)`` takes RGB images in [0, 1] ([N, 3, H, W], any size) and returns logits over the
judge's ``styles`` and ``objects`` lists. Two judges:

- MiniCanvas: the shipped two-headed CNN (its style list ends with "none" for unstyled images);
- UnlearnCanvas: the benchmark's two ViT-L/16 checkpoints (51-way style including ``Seed_Images``,
  20-way object), created with timm **without** pretrained weights and filled from the files the user
  gives — nothing is downloaded. Preprocessing as UnlearnCanvas: resize to 224, normalise 0.5 / 0.5.

Prediction is the argmax over every class, so an image judged ``Seed_Images`` (or "none") is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torchvision.transforms.v2.functional import normalize, resize

from saeuron.benchmarks.minicanvas.classifier import ClassifierOutput, MiniCanvasClassifier
from saeuron.benchmarks.prompts import UNLEARNCANVAS_OBJECTS, UNLEARNCANVAS_THEMES
from saeuron.storage.inputs import is_remote, local_input

UNLEARNCANVAS_ARCH = "vit_large_patch16_224"


class Judge(Protocol):
    styles: tuple[str, ...]
    objects: tuple[str, ...]
    identity: str
    """Names the weights: predictions cached under another identity are not reused."""

    def predict(self, images: Tensor) -> ClassifierOutput: ...


def judge_batch(judge: Judge, images: Tensor, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Judge one batch of images, ``rows[i]`` (with its true ``style`` and ``object``) describing ``images[i]``.

    Returns each row plus ``style_pred`` and ``object_pred`` (the argmax over every class of the judge) and
    ``style_prob`` and ``object_prob``: the probability the judge gives the row's true style / object, 0.0 when
    that is not one of its classes (an unstyled row's style ``None``). The one way images are judged: evaluation,
    the hyperparameter search and MiniCanvas's quality check all come through here.
    """
    if len(rows) != len(images):
        raise ValueError(f"{len(images)} images but {len(rows)} rows")
    out = judge.predict(images)
    style_pred, object_pred = out.style_logits.argmax(1).tolist(), out.object_logits.argmax(1).tolist()
    style_probs, object_probs = out.style_logits.softmax(1).cpu(), out.object_logits.softmax(1).cpu()

    def probability(probs: Tensor, classes: tuple[str, ...], label: Any) -> float:
        return float(probs[classes.index(label)]) if label in classes else 0.0

    return [
        {
            **row,
            "style_pred": judge.styles[style_pred[i]],
            "object_pred": judge.objects[object_pred[i]],
            "style_prob": probability(style_probs[i], judge.styles, row["style"]),
            "object_prob": probability(object_probs[i], judge.objects, row["object"]),
        }
        for i, row in enumerate(rows)
    ]


class MiniCanvasJudge:
    def __init__(self, classifier: MiniCanvasClassifier, identity: str = "minicanvas-classifier"):
        self.classifier = classifier.eval()
        self.styles, self.objects = tuple(classifier.cfg.styles), tuple(classifier.cfg.objects)
        self.identity = identity

    @torch.no_grad()
    def predict(self, images: Tensor) -> ClassifierOutput:
        return self.classifier(images.to(next(self.classifier.parameters()).device))

    def features(self) -> nn.Module:
        """The penultimate features, the space of MiniCanvas's domain FID."""
        return ClassifierFeatures(self.classifier)


class ClassifierFeatures(nn.Module):
    """Feature extractor for torchmetrics' FID: images in [0, 1] → [N, D]."""

    def __init__(self, classifier: MiniCanvasClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.style_head.in_features

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


def _input_identity(ref: str) -> str:
    return ref if is_remote(ref) else str(Path(ref).resolve())


def load_unlearncanvas_vit(
    path: str | Path, classes: tuple[str, ...], what: str, arch: str = UNLEARNCANVAS_ARCH, device: str | torch.device = "cpu"
) -> nn.Module:
    """One UnlearnCanvas classifier checkpoint (state dict under ``model_state_dict``)."""
    import timm

    path = local_input(path, f"the {what} classifier checkpoint")
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} classifier checkpoint {path} does not exist; give the UnlearnCanvas "
            f"{'style50.pth' if what == 'style' else 'style50_cls.pth'} file (nothing is downloaded)"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model_state_dict") if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(f"{path} has no 'model_state_dict': not an UnlearnCanvas classifier checkpoint")
    head = state.get("head.weight")
    if head is None or head.shape[0] != len(classes):
        found = "no head.weight" if head is None else f"a {head.shape[0]}-way head"
        raise ValueError(
            f"{path} has {found}, but the {what} classifier must be {len(classes)}-way "
            f"({', '.join(classes[:3])}, ...); is it the {'object' if what == 'style' else 'style'} checkpoint?"
        )
    model = timm.create_model(arch, pretrained=False, num_classes=len(classes))
    model.load_state_dict(state)
    return model.to(device).eval()


class UnlearnCanvasJudge:
    def __init__(self, style_model: nn.Module, object_model: nn.Module, identity: str, image_size: int = 224):
        self.style_model, self.object_model = style_model, object_model
        self.styles: tuple[str, ...] = UNLEARNCANVAS_THEMES
        self.objects: tuple[str, ...] = UNLEARNCANVAS_OBJECTS
        self.identity, self.image_size = identity, image_size

    @classmethod
    def from_checkpoints(
        cls, style_checkpoint: str, object_checkpoint: str, arch: str = UNLEARNCANVAS_ARCH, device: str | torch.device = "cpu"
    ) -> UnlearnCanvasJudge:
        style = load_unlearncanvas_vit(style_checkpoint, UNLEARNCANVAS_THEMES, "style", arch, device)
        obj = load_unlearncanvas_vit(object_checkpoint, UNLEARNCANVAS_OBJECTS, "object", arch, device)
        identity = f"unlearncanvas:{_input_identity(style_checkpoint)}:{_input_identity(object_checkpoint)}"
        return cls(style, obj, identity)

    @torch.no_grad()
    def predict(self, images: Tensor) -> ClassifierOutput:
        device = next(self.style_model.parameters()).device
        # UnlearnCanvas: transforms.Resize((224, 224)) on the PIL image, ToTensor, Normalize(0.5, 0.5).
        x = resize(images.float().to(device), [self.image_size, self.image_size], antialias=True)
        x = normalize(x, [0.5] * 3, [0.5] * 3)
        return ClassifierOutput(self.style_model(x), self.object_model(x))
