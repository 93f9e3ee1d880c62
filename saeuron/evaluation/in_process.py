"""Scoring an edit in one process, without Ray: the benchmarks' sweeps over many edits of one loaded pipeline,
where starting a job per point would cost more than the point (88 MiniCanvas images in ≈ 15 s on two cores)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from saeuron.benchmarks import Benchmark, get_benchmark
from saeuron.benchmarks.judges import judge_batch
from saeuron.diffusion.pipeline import load_pipeline, resolve_dtype
from saeuron.evaluation.metrics import ForgettingScores
from saeuron.sections import JudgeConfig


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """What every sweep shares: the evaluation grid's seeds, the model, sampling and where it runs."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[188])
    parser.add_argument("--benchmark", default="minicanvas")
    parser.add_argument("--model_path", default="", help="the base model's diffusers folder (empty: the benchmark's own)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch_size", type=int, default=44)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)


class Grid(NamedTuple):
    """The loaded pipeline and judge, and the evaluation grid's rows, for :func:`judge_grid`."""

    benchmark: Benchmark
    pipe: Any
    judge: Any
    rows: list[dict]
    sampling: dict
    """Keyword arguments of ``generate``: steps, guidance, tensors out."""


def load_grid(args: argparse.Namespace) -> Grid:
    """Pipeline, judge and rows as :func:`add_grid_arguments`' options say."""
    torch.set_num_threads(args.threads)
    benchmark = get_benchmark(args.benchmark)
    model = benchmark.resolve_model_path(args.model_path or None)
    pipe = load_pipeline(model, args.device, resolve_dtype(args.dtype, args.device))
    judge = benchmark.load_judge(JudgeConfig(), args.device)
    rows = [r.as_dict() for r in benchmark.evaluation_prompt_rows(args.seeds)]
    return Grid(
        benchmark, pipe, judge, rows, dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt")
    )


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
