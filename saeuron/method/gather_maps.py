"""The map edit's fitting pairs as a Ray Data job: style prompts → actors (pipeline) → per-(style, step) sums.

Each actor samples its style prompts beside the anchor's caption on the same latents, the block swapped from the
start step on (:func:`saeuron.method.block_map.paired_sampling`; with ``map_companions``, the other blocks too), and
sums every step's output pairs of the conditional half per style and block; the driver adds them up and solves each
style's per-step affine maps (:class:`saeuron.method.block_map.BlockMaps`), kept with the statistics. The sums travel
flat (a block's d+1 squared floats a row): blocks of different widths share one table.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.prompts import UNSTYLED, PromptRow, rows_from_batch
from saeuron.cluster.actor_pool import load_pipeline_in_actor, map_with_actor_pool
from saeuron.console import logger
from saeuron.diffusion.hooks import HookedPipeline
from saeuron.diffusion.pipeline import block_channels
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
        companions: list[str],
    ):
        pipe, _, _ = load_pipeline_in_actor(model_path, dtype, cpu_threads, sampler)
        self.hooked, self.hookpoint, self.start, self.steps = HookedPipeline(pipe), hookpoint, start, num_inference_steps
        self.companions = companions
        self.sampling = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "output_type": "latent"}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = rows_from_batch(batch)
        styles = [r["style"] for r in rows]
        steps = self.steps
        sums: dict[tuple[str, str], AffineSums] = {}

        # Each style's rows of the batch, found once rather than at every step of every generation.
        members = {style: torch.tensor([s == style for s in styles]) for style in dict.fromkeys(styles)}

        def add(block: str, step: int, own: torch.Tensor, anchor: torch.Tensor) -> None:
            for style, rows_of in members.items():
                mine = rows_of.to(own.device)
                sums.setdefault((style, block), AffineSums.zeros(steps, own.shape[-1])).add(step, own[mine], anchor[mine])

        paired_sampling(
            self.hooked,
            self.hookpoint,
            [r["prompt"] for r in rows],
            [r["anchor_prompt"] for r in rows],
            [int(r["seed"]) for r in rows],
            (self.start, steps),
            add,
            self.companions,
            **self.sampling,
        )
        out: dict[str, list[Any]] = {"style": [], "block": [], "step": [], **{name: [] for name in SUMS}}
        for (style, block), part in sums.items():
            for step in range(steps):
                out["style"].append(style)
                out["block"].append(block)
                out["step"].append(step)
                out["xx"].append(part.xx[step].numpy().ravel())
                out["xy"].append(part.xy[step].numpy().ravel())
                out["yy"].append(float(part.yy[step]))
                out["pairs"].append(int(part.pairs[step]))
        flat = pa.list_(pa.float64())
        return pa.table(
            {
                **{k: out[k] for k in ("style", "block", "step", "yy", "pairs")},
                **{name: pa.array(out[name], type=flat) for name in ("xx", "xy")},
            }
        )


def gather_maps(cfg: Any, model_path: str, rows: list[PromptRow], concepts: list[str]) -> BlockMaps:
    """Every style of ``concepts``' maps toward ``cfg.map_anchor`` (a :class:`~saeuron.method.gather.GatherConfig`)
    at the hookpoint and ``cfg.map_companions``, fitted on its statistics prompts ``rows``; NaN rows for the concepts
    without one (the anchor, the unstyled reference)."""
    started = time.perf_counter()
    hookpoint, companions = cfg.resolved_hookpoint, map_companions(cfg, model_path)
    channels = block_channels(model_path, [hookpoint, *companions])
    pairs = get_benchmark(cfg.model.benchmark).map_prompt_pairs(rows, cfg.map_anchor, cfg.model.anchor_prompts_dir, cfg.map_seeds)
    items = [{**row.as_dict(), "anchor_prompt": anchor} for row, anchor in pairs]
    parts = map_with_actor_pool(
        items,
        MapPairsActor,
        dict(
            model_path=str(model_path),
            hookpoint=hookpoint,
            num_inference_steps=cfg.sampling.num_inference_steps,
            guidance_scale=cfg.sampling.guidance_scale,
            dtype=cfg.model.dtype,
            sampler=cfg.model.sampler,
            cpu_threads=cfg.resources.actor.cpus,
            start=cfg.map_start,
            companions=companions,
        ),
        cfg.batch_size,
        cfg.resources,
    )
    steps = cfg.sampling.num_inference_steps
    totals: dict[tuple[str, str], AffineSums] = {}
    for part in parts.iter_batches(batch_format="pyarrow", batch_size=None):
        columns = {name: part.column(name).to_pylist() for name in ("style", "block", "step", "yy", "pairs")}
        xx, xy = (part.column(name).to_numpy(zero_copy_only=False) for name in ("xx", "xy"))
        for style, block, step, a, b, yy, count in zip(
            *(columns[k] for k in ("style", "block", "step")), xx, xy, columns["yy"], columns["pairs"]
        ):
            total = totals.setdefault((style, block), AffineSums.zeros(steps, channels[block]))
            total.xx[step] += torch.from_numpy(np.array(a)).reshape(total.xx[step].shape)
            total.xy[step] += torch.from_numpy(np.array(b)).reshape(total.xy[step].shape)
            total.yy[step] += yy
            total.pairs[step] += count
    expected = {(str(row.style), block) for row, _ in pairs for block in (hookpoint, *companions)}
    if set(totals) != expected or any(int(t.pairs.min()) == 0 for t in totals.values()):
        raise RuntimeError(
            f"gather: the map pairs cover {len(totals)} of the {len(expected)} (style, block) pairs expected; nothing was "
            f"saved, run again"
        )
    solved = {block: _solve(cfg, totals, block, concepts, channels[block]) for block in (hookpoint, *companions)}
    styles = sorted({style for style, _ in totals})
    shares = ", ".join(f"{s} {float(solved[hookpoint][1][concepts.index(s), cfg.map_start :].mean()):.3f}" for s in styles)
    logger.info(
        f"gather: maps toward {cfg.map_anchor} of {len(styles)} styles at {1 + len(companions)} blocks from {len(items)} "
        f"paired prompts in {time.perf_counter() - started:.1f}s; unexplained at {hookpoint} from step {cfg.map_start}: "
        f"{shares}"
    )
    record = {"start": cfg.map_start, "ridge": cfg.map_ridge, "seeds": cfg.map_seeds}
    return BlockMaps(cfg.map_anchor, *solved[hookpoint], record, {block: solved[block] for block in companions})


def _solve(cfg: Any, totals: dict, block: str, concepts: list[str], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([C, T, d+1, d] weights, [C, T] unexplained) of every style at ``block``; NaN for the other concepts."""
    steps = cfg.sampling.num_inference_steps
    weights = torch.full((len(concepts), steps, channels + 1, channels), float("nan"))
    unexplained = torch.full((len(concepts), steps), float("nan"))
    for (style, at), total in totals.items():
        if at == block:
            c = concepts.index(style)
            weights[c], unexplained[c] = solve_affine(total, cfg.map_ridge)
    return weights, unexplained


def map_companions(cfg: Any, model_path: str | Path) -> list[str]:
    """``cfg.map_companions`` with ``all`` made every cross-attention block but the hookpoint; each checked against
    the UNet (on the meta device: nothing is loaded)."""
    asked = list(cfg.map_companions)
    if asked == ["all"]:
        return [block for block in block_channels(model_path) if block != cfg.resolved_hookpoint]
    if "all" in asked:
        raise ValueError(f"map_companions: 'all' stands alone (every cross-attention block), got {asked}")
    if cfg.resolved_hookpoint in asked or len(set(asked)) != len(asked):
        raise ValueError(
            f"map_companions {asked} are the other blocks mapped with the hookpoint {cfg.resolved_hookpoint}: each once, "
            f"the hookpoint not among them"
        )
    block_channels(model_path, asked)  # an unknown block fails listing the UNet's cross-attention blocks
    return asked


def check_map_options(cfg: Any, styles: tuple[str, ...] | list[str], model_path: str | Path) -> None:
    """``cfg.map_*`` checked before any sampling (a :class:`~saeuron.method.gather.GatherConfig`)."""
    if not cfg.map_anchor:
        if cfg.map_companions:
            raise ValueError("map_companions are blocks mapped with the hookpoint's map: set map_anchor, or drop them")
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
    map_companions(cfg, model_path)
