"""Scoring an edit in one process, without Ray: the benchmarks' sweeps over many edits of one loaded pipeline,
where starting a job per point would cost more than the point (88 MiniCanvas images in ≈ 15 s on two cores)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from saeuron.benchmarks.judges import judge_batch
from saeuron.evaluation.metrics import ForgettingScores


def judge_grid(generate: Callable, rows: list[dict], judge, batch_size: int) -> list[dict]:
    """Generate ``rows`` (prompt, seed) in batches with ``generate(prompts, seeds)`` and judge each image."""
    judged = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        with torch.no_grad():
            images = generate([r["prompt"] for r in chunk], [r["seed"] for r in chunk]).images
        judged += judge_batch(judge, images.float(), chunk)
    return judged


def short(s: ForgettingScores) -> str:
    """One line: UA, IRA, CRA and, for a style, the object accuracy on its own images."""
    own = f" own {s.cra_forgotten:.3f}" if s.cra_forgotten is not None else ""
    return f"UA {s.ua:.3f} IRA {s.ira:.3f} CRA {s.cra:.3f}{own}"
