"""Concept statistics as a Ray Data job: prompts → actors (pipeline + SAE) → per-concept sums.

Each actor runs its prompts through the pipeline, encodes the hooked block's output (conditional
CFG half, as the reference) with the SAE in inference mode, averages over patches and returns
per-(concept, timestep) sums and counts; the driver adds them up into
:class:`saeuron.method.statistics.ConceptStatistics`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.prompts import UNSTYLED, PromptRow, rows_from_batch
from saeuron.cluster.actor_pool import load_hooked_sae_in_actor, map_with_actor_pool
from saeuron.cluster.registry import load_sae
from saeuron.cluster.tracking import tracking_uri_of
from saeuron.console import logger
from saeuron.diffusion.pipeline import block_channels, check_sampler
from saeuron.method.gather_maps import check_map_options, gather_maps
from saeuron.method.statistics import ConceptStatistics, PatchMoments, patch_moments, sae_fingerprint
from saeuron.sections import WithModel, WithResources, WithSampling, WithTracking
from saeuron.storage import Location, check_writable
from saeuron.storage.mirror import mirror_path, push


@dataclass
class GatherOptions:
    """What a study's gather section holds."""

    styled_objects: bool = False
    """For objects: also gather each caption in a (rotating) style, not only unstyled as the reference."""
    unstyled_reference: bool = False
    """For styles: also gather every object's first caption unstyled, as a retained concept "none", so that a
    latent the plain rendering uses as much as the style is not the style's (best with ``contrast: max``)."""
    seed: int = 188
    """Seed of the first statistics prompt; prompt i uses seed + i (recorded with the statistics)."""
    sae_inference: str = ""
    """"topk" or "threshold"; empty: the SAE's learned threshold when it has one."""
    max_prompts_per_concept: int = 0
    """Statistics prompts per concept, the first in order (0: all of them, as the reference)."""
    batch_size: int = 8
    """Prompts per actor call."""
    cell_means: bool = False
    """Also keep the sums per concept and value of the prompts' other label (a style's object, an object's style or
    "none"): what the "cell" gate detects by. [concepts, values, timesteps, latents] more: 14 MB on MiniCanvas's
    styles; at SD v1.5 scale use the gate's ``keep``."""
    map_anchor: str = ""
    """For styles: also fit each style's map edit toward this caption ("none": the unstyled one, or another style;
    :mod:`saeuron.method.block_map`): every statistics prompt is sampled ``map_seeds`` more times beside the anchor's
    caption on the same latents. Empty: no maps. A recipe's map edit (``search.map_strengths``) needs them."""
    map_seeds: int = 10
    """Fresh seeds per style statistics prompt for the map's pairs (MiniCanvas: 8 prompts a style, 80 images)."""
    map_start: int = 2
    """The step from which the fitting trajectories are swapped (0 the noisiest): where the edit starts, the step the
    "cell" and "nearest" gates decide on (their default wait, 2)."""
    map_ridge: float = 10.0
    """Ridge added to the diagonal of each step's summed XᵀX."""
    map_companions: list[str] = field(default_factory=list)
    """Other cross-attention blocks mapped with the hookpoint (``all``: every one), all swapped on the fitting
    trajectories; a map edit then moves each of them too, from the step after the gate's decision for a block that
    runs before the hookpoint (:class:`saeuron.method.block_map.CompanionSchedule`). The hookpoint's map alone misses
    what fills a shape on four MiniCanvas styles; with every block, all ten keep their objects (README, "Every
    concept", item 28). Empty: the hookpoint alone."""


@dataclass
class GatherConfig(GatherOptions, WithResources, WithSampling, WithModel, WithTracking):
    sae: str = ""
    """SAE of the hookpoint: a folder (or a folder of <hookpoint>/ folders) or models:/NAME@alias."""
    kind: str = "style"
    """"style" or "object"."""
    hookpoint: str = ""
    """Empty: the benchmark's hookpoint for ``kind`` (styles: up_blocks.1.attentions.2; objects: the paper's
    up_blocks.1.attentions.1 on UnlearnCanvas, mid_block.attentions.0 on MiniCanvas)."""
    output_dir: str = ""
    """Where the statistics go (a folder or an s3:// / gs:// prefix); empty means <study_dir>/statistics/<kind>-<hookpoint>."""

    @property
    def resolved_hookpoint(self) -> str:
        return self.hookpoint or get_benchmark(self.model.benchmark).hookpoint(self.kind)

    @property
    def statistics_dir(self) -> Location:
        if self.output_dir:
            return Location.parse(self.output_dir)
        return self.tracking.storage / "statistics" / f"{self.kind}-{self.resolved_hookpoint}"


class StatisticsActor:
    def __init__(
        self,
        model_path: str,
        sae_ref: str,
        hookpoint: str,
        kind: str,
        num_inference_steps: int,
        guidance_scale: float,
        dtype: str,
        sampler: str,
        sae_inference: str,
        tracking_uri: str,
        cpu_threads: int,
        cells: bool = False,
    ):
        self.hooked, self.sae, _ = load_hooked_sae_in_actor(
            model_path, dtype, cpu_threads, sampler, sae_ref, hookpoint, sae_inference, tracking_uri
        )
        self.hookpoint, self.kind, self.cells = hookpoint, kind, cells
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from ray.data.extensions import ArrowTensorArray

        rows = rows_from_batch(batch)
        capture = self.hooked.generate(
            [r["prompt"] for r in rows],
            [int(r["seed"]) for r in rows],
            capture=[self.hookpoint],
            output_type="latent",
            capture_device=self.hooked.device,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
        ).captures[self.hookpoint]
        maps = capture.stacked()  # [B, T, P, C]
        per_step = [patch_moments(self.sae, maps[:, t]) for t in range(maps.shape[1])]
        moments = PatchMoments(*(torch.stack(m, dim=1) for m in zip(*per_step)))  # each [B, T, F]
        # With cells, summed per (concept, other label): the driver adds each pair to its concept and to its cell.
        # Without, per concept as always, so that the statistics stay what they were to the last bit.
        pairs = [(concept_of(r, self.kind), other_of(r, self.kind) if self.cells else "") for r in rows]
        out: dict[str, list] = {"concept": [], "cell": [], "timestep": [], "count": []}
        sums: dict[str, list] = {name: [] for name in PatchMoments._fields}
        for concept, cell in sorted(set(pairs)):
            members = torch.tensor([p == (concept, cell) for p in pairs], device=moments.mean.device)
            for t, timestep in enumerate(capture.timesteps):
                out["concept"].append(concept)
                out["cell"].append(cell)
                out["timestep"].append(int(timestep))
                out["count"].append(int(members.sum()))
                for name, values in moments._asdict().items():
                    sums[name].append(values[members, t].double().sum(0).cpu().numpy())
        return pa.table({**out, **{name: ArrowTensorArray.from_numpy(np.stack(v)) for name, v in sums.items()}})


def concept_of(row: PromptRow | dict, kind: str) -> str:
    """The statistics concept of a prompt row; unstyled prompts count as ``UNSTYLED``."""
    return (row[kind] if isinstance(row, dict) else getattr(row, kind)) or UNSTYLED


def other_of(row: PromptRow | dict, kind: str) -> str:
    """The prompt row's other label: a style prompt's object, an object prompt's style (``UNSTYLED`` if none)."""
    return concept_of(row, "object" if kind == "style" else "style")


def _check(cfg: GatherConfig):
    if not cfg.sae:
        raise ValueError("no SAE given: pass --sae <folder> or --sae models:/NAME@alias")
    if cfg.kind not in ("style", "object"):
        raise ValueError(f"kind must be 'style' or 'object', got {cfg.kind!r}")
    benchmark = get_benchmark(cfg.model.benchmark)
    model_path = benchmark.resolve_model_path(cfg.model.model_path)
    check_sampler(model_path, cfg.model.sampler)
    d_in = block_channels(model_path, [cfg.resolved_hookpoint])[cfg.resolved_hookpoint]
    check_writable(cfg.statistics_dir, "the statistics folder")
    registry_uri = tracking_uri_of(cfg.tracking)  # where models:/ SAE references resolve
    sae = load_sae(cfg.sae, cfg.resolved_hookpoint, inference=cfg.sae_inference or None, tracking_uri=registry_uri)
    if sae.d_in != d_in:
        raise ValueError(
            f"the SAE reads {sae.d_in}-dim vectors but {cfg.resolved_hookpoint} outputs {d_in}: wrong SAE for this hookpoint"
        )
    rows = benchmark.statistics_prompt_rows(
        cfg.kind, cfg.model.anchor_prompts_dir, cfg.seed, cfg.styled_objects, cfg.unstyled_reference
    )
    if cfg.max_prompts_per_concept < 0:
        raise ValueError(f"max_prompts_per_concept must be >= 0 (0: all), got {cfg.max_prompts_per_concept}")
    if cfg.max_prompts_per_concept:
        taken: dict[str, int] = {}
        kept = []
        for row in rows:
            concept = concept_of(row, cfg.kind)
            if taken.get(concept, 0) < cfg.max_prompts_per_concept:
                taken[concept] = taken.get(concept, 0) + 1
                kept.append(row)
        rows = kept
    if not rows:
        raise ValueError(f"no statistics prompts for {cfg.model.benchmark!r}")
    check_map_options(cfg, benchmark.styles, model_path)
    return model_path, sae, rows


def gather(cfg: GatherConfig) -> ConceptStatistics:
    model_path, sae, rows = _check(cfg)
    started = time.perf_counter()
    batches = map_with_actor_pool(
        [r.as_dict() for r in rows],
        StatisticsActor,
        dict(
            model_path=str(model_path),
            sae_ref=str(cfg.sae),
            hookpoint=cfg.resolved_hookpoint,
            kind=cfg.kind,
            num_inference_steps=cfg.sampling.num_inference_steps,
            guidance_scale=cfg.sampling.guidance_scale,
            dtype=cfg.model.dtype,
            sampler=cfg.model.sampler,
            sae_inference=cfg.sae_inference,
            tracking_uri=tracking_uri_of(cfg.tracking),
            cpu_threads=cfg.resources.actor.cpus,
            cells=cfg.cell_means,
        ),
        cfg.batch_size,
        cfg.resources,
    )
    concepts = list(dict.fromkeys(concept_of(r, cfg.kind) for r in rows))
    stats: ConceptStatistics | None = None
    for part in batches.iter_batches(batch_format="pyarrow", batch_size=None):
        if stats is None:
            timesteps = sorted(set(part.column("timestep").to_pylist()), reverse=True)
            stats = ConceptStatistics.empty(
                cfg.resolved_hookpoint,
                concepts,
                timesteps,
                sae.num_latents,
                str(cfg.sae),
                sae_fingerprint(sae),
                cfg.kind,
                sae.inference_mode,
                [r.seed for r in rows],
                list(dict.fromkeys(other_of(r, cfg.kind) for r in rows)) if cfg.cell_means else None,
            )
        sums, fires, squares = (part.column(name).to_numpy(zero_copy_only=False) for name in PatchMoments._fields)
        for concept, cell, timestep, count, latent_sum, fired, squared in zip(
            part.column("concept").to_pylist(),
            part.column("cell").to_pylist(),
            part.column("timestep").to_pylist(),
            part.column("count").to_pylist(),
            sums,
            fires,
            squares,
        ):
            mean, fire, square = (torch.from_numpy(np.array(v)) for v in (latent_sum, fired, squared))  # writable copies
            stats.add(concept, timestep, mean, count, fire, square, cell)
    if stats is None:
        raise ValueError(
            f"gather: the actors returned no statistics for {len(rows)} prompts ({cfg.kind} at {cfg.resolved_hookpoint}); "
            "nothing to save"
        )
    counted = int(stats.counts.sum(0).min())
    if counted != len(rows):  # a prompt missing at some timestep would bias its concept's means without a word
        raise RuntimeError(
            f"gather: the statistics cover {counted} of {len(rows)} prompts at some timestep although no actor failed; "
            f"nothing was saved, run again"
        )
    if cfg.map_anchor:
        stats.maps = gather_maps(cfg, str(model_path), rows, stats.concepts)
    local = mirror_path(cfg.statistics_dir)
    stats.save(local)
    push(local, cfg.statistics_dir)
    logger.info(
        f"gather: {len(rows)} prompts, {len(concepts)} {cfg.kind} concepts × {len(stats.timesteps)} timesteps × "
        f"{stats.num_latents} latents in {time.perf_counter() - started:.1f}s -> {cfg.statistics_dir}"
    )
    return stats


def gather_tracked(cfg: GatherConfig) -> ConceptStatistics:
    import mlflow

    from saeuron.cluster.tracking import tracked_run

    with tracked_run(cfg, cfg.tracking, run_name=f"gather {cfg.kind} {cfg.resolved_hookpoint}", tags={"saeuron.stage": "gather"}):
        stats = gather(cfg)
        mlflow.log_artifacts(str(mirror_path(cfg.statistics_dir)), "statistics")
        mlflow.log_metrics(
            {"concepts": len(stats.concepts), "timesteps": len(stats.timesteps), "prompts": float(stats.counts[:, 0].sum())}
        )
    return stats
