"""How much an edit changes the images it should leave alone.

Drift is the mean absolute pixel difference (images in [0, 1]) between a forget model's image of a kept concept and
the original model's image of the same prompt and seed. Both models start from the same noise, so the pair differs
only by what the edit did (and, on a GPU, by kernel noise). On MiniCanvas it tracks a style model's domain FID (the
FID is computed on the same kept images): over 45 evaluated style models its rank correlation with FID / the
original's FID is 0.96, and 21 of the 22 with drift ≤ 0.025 kept FID within 1.5× of the original's (README,
"Every concept", item 17, which also has a counter-example). Unlike FID it needs no real images and no feature
network, and a search trial's 72 pairs gave the evaluation's drift within 0.002 — what a search can afford.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from saeuron.evaluation.judging import load_images

Row = TypeVar("Row", bound=Mapping)


def image_drift(edited: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per image pair, the mean absolute difference over pixels and channels: float [N, C, H, W] in [0, 1] → [N]."""
    if edited.shape != original.shape:
        raise ValueError(f"drift compares images pairwise: shapes {tuple(edited.shape)} and {tuple(original.shape)} differ")
    return (edited.float() - original.float()).abs().flatten(1).mean(dim=1)


def kept_rows(rows: Sequence[Row], kind: str, forgotten: Sequence[str]) -> list[Row]:
    """The styled images of the concepts a model forgetting the ``kind`` concepts ``forgotten`` should keep: what
    drift and FID are measured on."""
    if kind not in ("style", "object"):
        raise ValueError(f"kind must be 'style' or 'object', got {kind!r}")
    return [r for r in rows if r["style"] is not None and r[kind] not in forgotten]


def mean_drift(rows: Sequence[Mapping]) -> float | None:
    """The mean of the ``drift`` the rows carry (a search's judged images), None when none does yet."""
    values = [r["drift"] for r in rows if r.get("drift") is not None]
    return sum(values) / len(values) if values else None


def paired_files(rows: Sequence[Mapping], original_rows: Sequence[Mapping]) -> list[tuple[str, str]]:
    """(edited file, original file) for every row, paired by prompt and seed."""
    original = {(r["prompt"], r["seed"]): r["file"] for r in original_rows}
    missing = [(r["prompt"], r["seed"]) for r in rows if (r["prompt"], r["seed"]) not in original]
    if missing:
        raise ValueError(
            f"the original model has no image of {len(missing)} of the {len(rows)} prompts and seeds to compare "
            f"(e.g. {missing[:2]}); generate both grids with the same prompts and seeds"
        )
    return [(r["file"], original[(r["prompt"], r["seed"])]) for r in rows]


def folder_drift(
    edited_dir: Path, original_dir: Path, rows: Sequence[Mapping], original_rows: Sequence[Mapping], chunk: int = 64
) -> float:
    """Mean drift of the images ``rows`` name (in ``edited_dir``) from the original model's (``original_dir``),
    read ``chunk`` pairs at a time so that a grid of 512 px images never sits in memory whole."""
    pairs = paired_files(rows, original_rows)
    if not pairs:
        raise ValueError("no images to measure drift on")
    total = 0.0
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        edited = load_images([edited_dir / e for e, _ in part])
        original = load_images([original_dir / o for _, o in part])
        total += float(image_drift(edited, original).sum())
    return total / len(pairs)
