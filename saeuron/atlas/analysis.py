"""What a latent's page says, computed from the recording (plain numpy/torch, no plotting).

- top images and activation bands: images ranked by the latent's peak activation (over steps and patches); below
  the top, a few images from each band of that peak (75–100 %, 50–75 %, 25–50 %, 0–25 % of the maximum), and the
  density: the share of images where it fires at all and the histogram of its peaks;
- timestep curves: mean and peak activation per step on the target concept's images, and on every other concept's
  (their median and quartiles);
- specificity: the AUROC of the per-image mean activation for "this image is of the target concept" — 1 when the
  latent fires more on every concept image than on any other, 0.5 when it does not tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

BANDS = ((0.75, 1.0), (0.5, 0.75), (0.25, 0.5), (0.0, 0.25))


@dataclass
class Recording:
    """The recorder's table as arrays; ``L`` latents in the order they were recorded."""

    labels: np.ndarray
    """[N] the concept each image shows on the atlas's axis (style or object)."""
    prompts: list[str]
    styles: list[str]
    """"" for an unstyled image."""
    objects: list[str]
    seeds: list[int]
    images: list[bytes]
    timesteps: list[int]
    max_by_step: np.ndarray
    """[N, T, L]"""
    mean_by_step: np.ndarray
    """[N, T, L]"""
    heat: np.ndarray
    """[N, S, P, L] patch maps at the heat steps."""
    side: int

    @classmethod
    def from_table(cls, table: pa.Table, kind: str) -> Recording:
        from saeuron.atlas.record import heat_steps

        table = table.sort_by([("prompt_id", "ascending")])
        steps, side = len(table.column("timesteps")[0].as_py()), int(table.column("height")[0].as_py())

        def tensor(name: str, *shape: int) -> np.ndarray:
            # Parquet keeps a tensor column as a flat list: every row is reshaped to the dimensions known here.
            rows = [np.asarray(v, dtype=np.float32).reshape(-1) for v in table.column(name).to_numpy(zero_copy_only=False)]
            stacked = np.stack(rows)
            return stacked.reshape(len(rows), *shape, stacked.shape[1] // int(np.prod(shape)))

        return cls(
            np.array(table.column(kind).to_pylist(), dtype=object),
            table.column("prompt").to_pylist(),
            table.column("style").to_pylist(),
            table.column("object").to_pylist(),
            table.column("seed").to_pylist(),
            table.column("image").to_pylist(),
            table.column("timesteps")[0].as_py(),
            tensor("max_by_step", steps),
            tensor("mean_by_step", steps),
            tensor("heat", len(heat_steps(steps)), side * side),
            side,
        )


@dataclass
class LatentSummary:
    latent: int
    concept: str
    peak: float
    """Its largest activation over every image, step and patch (the colour scale of its heatmaps)."""
    firing_share: float
    """Share of images where it fires anywhere at any step."""
    specificity: float
    """AUROC of the per-image mean activation for the target concept against the rest."""
    top: list[int]
    """Image rows, strongest first (only images where it fires)."""
    top_concept_share: float
    """Share of the top images that show the target concept."""
    bands: list[list[int]] = field(default_factory=list)
    density: list[int] = field(default_factory=list)
    """Histogram (10 bins over (0, peak]) of the per-image peaks of the images where it fires."""
    curves: dict[str, list[float]] = field(default_factory=dict)
    """Per step: target_mean, target_max, others_median, others_q25, others_q75 (of per-concept means)."""


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    from torchmetrics.functional.classification import binary_auroc

    if positive.all() or not positive.any():
        return float("nan")
    return float(binary_auroc(torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(positive.astype(np.int64))))


def summarise_latent(
    rec: Recording, column: int, latent: int, concept: str, top_count: int = 6, per_band: int = 3
) -> LatentSummary:
    peaks = rec.max_by_step[:, :, column].max(1)
    firing = peaks > 0
    order = [int(i) for i in np.argsort(-peaks, kind="stable") if firing[i]]
    top = order[:top_count]
    peak = float(peaks.max()) if len(peaks) else 0.0
    bands = []
    for low, high in BANDS:
        members = [i for i in order[top_count:] if low * peak < peaks[i] <= high * peak]
        bands.append(members[:per_band])
    density = np.histogram(peaks[firing], bins=10, range=(0, peak))[0].tolist() if peak > 0 else [0] * 10
    mine = rec.labels == concept
    means = rec.mean_by_step[:, :, column]
    others = [means[rec.labels == c].mean(0) for c in sorted(set(rec.labels[~mine]))]
    others_stack = np.stack(others) if others else np.zeros((1, means.shape[1]))
    curves = {
        "target_mean": means[mine].mean(0).tolist() if mine.any() else [],
        "target_max": rec.max_by_step[mine, :, column].max(0).tolist() if mine.any() else [],
        "others_median": np.median(others_stack, 0).tolist(),
        "others_q25": np.quantile(others_stack, 0.25, 0).tolist(),
        "others_q75": np.quantile(others_stack, 0.75, 0).tolist(),
    }
    return LatentSummary(
        latent,
        concept,
        peak,
        float(firing.mean()) if len(firing) else 0.0,
        auroc(means.mean(1), mine),
        top,
        float(np.mean([rec.labels[i] == concept for i in top])) if top else 0.0,
        bands,
        density,
        curves,
    )
