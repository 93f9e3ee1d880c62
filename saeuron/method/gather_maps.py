"""The map edit's fitting pairs as a Ray Data job: style prompts → actors (pipeline) → per-(style, step) sums.

Each actor samples its style prompts beside the anchor's caption on the same latents, the block swapped from the
start step on (:func:`saeuron.method.block_map.paired_sampling`), and sums every step's output pairs of the
conditional half per style; the driver adds them up and solves each style's per-step affine map
(:class:`saeuron.method.block_map.BlockMaps`), kept with the statistics.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.prompts import UNSTYLED, PromptRow, rows_from_batch
from saeuron.cluster.actor_pool import load_pipeline_in_actor, map_with_actor_pool
from saeuron.console import logger
from saeuron.diffusion.hooks import HookedPipeline
from saeuron.method.block_map import AffineSums, BlockMaps, paired_sampling, solve_affine

SUMS = ("xx", "xy", "yy", "pairs")


class MapPairsActor:
    def __init__(
        self,
        model_path: str,
        hookpoint: str,
        num_inference_steps: int,
        guidance_scale: float,
        dtype: str,
        sampler: str,
        cpu_threads: int,
        start: int,
    ):
        pipe, _, _ = load_pipeline_in_actor(model_path, dtype, cpu_threads, sampler)
        self.hooked, self.hookpoint, self.start, self.steps = HookedPipeline(pipe), hookpoint, start, num_inference_steps
        self.sampling = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "output_type": "latent"}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from ray.data.extensions import ArrowTensorArray

        rows = rows_from_batch(batch)
        styles = [r["style"] for r in rows]
        steps = self.steps
        sums: dict[str, AffineSums] = {}

        # Each style's rows of the batch, found once rather than at every step of every generation.
        members = {style: torch.tensor([s == style for s in styles]) for style in dict.fromkeys(styles)}

        def add(step: int, own: torch.Tensor, anchor: torch.Tensor) -> None:
            for style, rows_of in members.items():
                mine = rows_of.to(own.device)
                sums.setdefault(style, AffineSums.zeros(steps, own.shape[-1])).add(step, own[mine], anchor[mine])

        paired_sampling(
            self.hooked,
            self.hookpoint,
            [r["prompt"] for r in rows],
            [r["anchor_prompt"] for r in rows],
            [int(r["seed"]) for r in rows],
            (self.start, steps),
            add,
            **self.sampling,
        )
        out: dict[str, list[Any]] = {"style": [], "step": [], **{name: [] for name in SUMS}}
        for style, part in sums.items():
            for step in range(steps):
                out["style"].append(style)
                out["step"].append(step)
                out["xx"].append(part.xx[step].numpy())
                out["xy"].append(part.xy[step].numpy())
                out["yy"].append(float(part.yy[step]))
                out["pairs"].append(int(part.pairs[step]))
        arrays = {name: ArrowTensorArray.from_numpy(np.stack(out[name])) for name in ("xx", "xy")}
        return pa.table({"style": out["style"], "step": out["step"], **arrays, "yy": out["yy"], "pairs": out["pairs"]})


def gather_maps(cfg: Any, model_path: str, rows: list[PromptRow], concepts: list[str], channels: int) -> BlockMaps:
    """Every style of ``concepts``' map toward ``cfg.map_anchor`` (a :class:`~saeuron.method.gather.GatherConfig`),
    fitted on its statistics prompts ``rows``; NaN rows for the concepts without one (the anchor, the unstyled
    reference)."""
    started = time.perf_counter()
    pairs = get_benchmark(cfg.model.benchmark).map_prompt_pairs(rows, cfg.map_anchor, cfg.model.anchor_prompts_dir, cfg.map_seeds)
    items = [{**row.as_dict(), "anchor_prompt": anchor} for row, anchor in pairs]
    parts = map_with_actor_pool(
        items,
        MapPairsActor,
        dict(
            model_path=str(model_path),
            hookpoint=cfg.resolved_hookpoint,
            num_inference_steps=cfg.sampling.num_inference_steps,
            guidance_scale=cfg.sampling.guidance_scale,
            dtype=cfg.model.dtype,
            sampler=cfg.model.sampler,
            cpu_threads=cfg.resources.actor.cpus,
            start=cfg.map_start,
        ),
        cfg.batch_size,
        cfg.resources,
    )
    steps = cfg.sampling.num_inference_steps
    totals: dict[str, AffineSums] = {}
    for part in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        xx, xy = (part.column(name).to_numpy(zero_copy_only=False) for name in ("xx", "xy"))
        for style, step, a, b, yy, count in zip(
            part.column("style").to_pylist(),
            part.column("step").to_pylist(),
            xx,
            xy,
            part["yy"].to_pylist(),
            part["pairs"].to_pylist(),
        ):
            total = totals.setdefault(style, AffineSums.zeros(steps, channels))
            total.xx[step] += torch.from_numpy(np.array(a)).reshape(total.xx[step].shape)  # Arrow may hand them flat
            total.xy[step] += torch.from_numpy(np.array(b)).reshape(total.xy[step].shape)
            total.yy[step] += yy
            total.pairs[step] += count
    expected = {str(row.style) for row, _ in pairs}
    if set(totals) != expected or any(int(t.pairs.min()) == 0 for t in totals.values()):
        raise RuntimeError(
            f"gather: the map pairs cover {sorted(totals)} of the styles {sorted(expected)}; nothing was saved, run again"
        )
    weights = torch.full((len(concepts), steps, channels + 1, channels), float("nan"))
    unexplained = torch.full((len(concepts), steps), float("nan"))
    for style, total in totals.items():
        c = concepts.index(style)
        weights[c], unexplained[c] = solve_affine(total, cfg.map_ridge)
    shares = ", ".join(f"{s} {float(unexplained[concepts.index(s), cfg.map_start :].mean()):.3f}" for s in totals)
    logger.info(
        f"gather: maps toward {cfg.map_anchor} of {len(totals)} styles from {len(items)} paired prompts in "
        f"{time.perf_counter() - started:.1f}s; unexplained from step {cfg.map_start}: {shares}"
    )
    return BlockMaps(
        cfg.map_anchor, weights, unexplained, {"start": cfg.map_start, "ridge": cfg.map_ridge, "seeds": cfg.map_seeds}
    )


def check_map_options(cfg: Any, styles: tuple[str, ...] | list[str]) -> None:
    """``cfg.map_*`` checked before any sampling (a :class:`~saeuron.method.gather.GatherConfig`)."""
    if not cfg.map_anchor:
        return
    if cfg.kind != "style":
        raise ValueError(f"map_anchor fits maps of a style's rendering; gathering {cfg.kind!r} statistics: drop map_anchor")
    if cfg.map_anchor != UNSTYLED and cfg.map_anchor not in styles:
        raise ValueError(
            f"map_anchor {cfg.map_anchor!r} is neither a style ({list(styles)}) nor {UNSTYLED!r} (the unstyled caption)"
        )
    if cfg.map_seeds < 1:
        raise ValueError(f"map_seeds (seeds per statistics prompt for the map's pairs) must be >= 1, got {cfg.map_seeds}")
    if not 0 <= cfg.map_start < cfg.sampling.num_inference_steps:
        raise ValueError(
            f"map_start {cfg.map_start} must be a step of the {cfg.sampling.num_inference_steps} sampled (0 the noisiest)"
        )
    if cfg.map_ridge < 0:
        raise ValueError(f"map_ridge must be >= 0, got {cfg.map_ridge}")
