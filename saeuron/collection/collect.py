"""Collection of block activations as a Ray Data stream: prompt rows → GPU actors → Parquet.

Ray Data reads the pending prompt rows, ``map_batches`` sends batches to a pool of actors that
each hold one pipeline (one GPU per actor when the cluster has GPUs, CPU otherwise) and sample
with the capture hook, and the stream is written with ``write_parquet`` partitioned by hookpoint.

Resume is exactly-once: before writing, :func:`saeuron.collection.resume.reconcile` drops files that a
killed write left unreadable, committed files whose bytes changed, and rows of prompts that are not
complete in every hookpoint, so a prompt is either present once with all its rows or generated again;
what it keeps is committed in the manifest. The dataset folder may be a local or shared folder or an
``s3://``/``gs://`` prefix, and a collection holds its lease (:mod:`saeuron.storage.leases`) while it runs,
so a second collection into the same folder is refused instead of deleting the first one's files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from saeuron.benchmarks import Benchmark, get_benchmark
from saeuron.benchmarks.prompts import rows_from_batch
from saeuron.cluster.actor_pool import load_pipeline_in_actor, map_with_actor_pool
from saeuron.collection import activations, resume
from saeuron.console import logger
from saeuron.diffusion.hooks import CAPTURE_HALVES, HookedPipeline
from saeuron.diffusion.pipeline import block_channels, check_sampler, resolve_dtype
from saeuron.sections import SamplingConfig, WithModel, WithResources, WithTracking
from saeuron.storage import Location, check_writable, holding_lease


@dataclass
class CollectOptions:
    """What a study's collect section holds: the collection's own settings."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(num_inference_steps=50))
    """Sampling while collecting (the reference: 50 steps, guidance 9.0)."""
    capture_half: str = "cond"
    """"cond": the conditional CFG half only (the reference), or "both"."""
    every_k_steps: int = 1
    """Keep the block output of every k-th denoising step (step indices 0, k, 2k, ...)."""
    patches_per_map: int = 0
    """Keep a random subset of this many patches of each feature map (0 = all)."""
    max_prompts: int = 0
    """Collect at most this many prompts (a seeded subset; 0 = all). Raising it later extends
    the same collection."""
    seeds_per_prompt: int = 1
    """Seeds per training prompt (each one more image of the prompt)."""
    seed: int = 42
    """Base seed of the prompts' noise and of the max_prompts subset."""
    batch_size: int = 8
    """Prompts per actor call."""
    overwrite: bool = False
    """Replace an existing dataset collected with a different config."""


@dataclass
class CollectConfig(CollectOptions, WithResources, WithModel, WithTracking):
    hookpoints: list[str] = field(default_factory=list)
    """Blocks to record; empty means the benchmark's object and style hookpoints (UnlearnCanvas: the
    paper's up_blocks.1.attentions.1 and .2; MiniCanvas: mid_block.attentions.0 and up_blocks.1.attentions.2)."""
    output_dir: str = ""
    """Activation dataset folder or s3:// / gs:// prefix; empty means <study_dir>/activations."""

    @property
    def benchmark(self) -> Benchmark:
        return get_benchmark(self.model.benchmark)

    @property
    def resolved_hookpoints(self) -> list[str]:
        return self.hookpoints or self.benchmark.hookpoints

    @property
    def dataset_dir(self) -> Location:
        return Location.parse(self.output_dir) if self.output_dir else self.tracking.storage / "activations"

    def identity(self) -> dict[str, Any]:
        """The fields that decide what the data is; a dataset is resumed only under the same."""
        identity = {
            "benchmark": self.model.benchmark,
            "anchor_prompts_dir": self.model.anchor_prompts_dir,
            "hookpoints": self.resolved_hookpoints,
            "num_inference_steps": self.sampling.num_inference_steps,
            "guidance_scale": self.sampling.guidance_scale,
        }
        identity.update(
            {key: getattr(self, key) for key in ("capture_half", "every_k_steps", "patches_per_map", "seeds_per_prompt", "seed")}
        )
        identity["dtype"] = self.model.dtype
        if self.model.sampler != "ddim":  # so the identity of every DDIM dataset collected before this field stays
            identity["sampler"] = self.model.sampler
        identity["model_path"] = self.benchmark.model_identity(self.model.model_path)
        return identity

    def kept_steps(self) -> int:
        return math.ceil(self.sampling.num_inference_steps / self.every_k_steps)


def _check(cfg: CollectConfig) -> tuple[Path, dict[str, int], list]:
    """Every check that can fail, before Ray or a model is touched."""
    if cfg.capture_half not in CAPTURE_HALVES:
        raise ValueError(f"capture_half must be one of {CAPTURE_HALVES}, got {cfg.capture_half!r}")
    for name, value in (
        ("sampling.num_inference_steps", cfg.sampling.num_inference_steps),
        ("every_k_steps", cfg.every_k_steps),
        ("resources.num_actors", cfg.resources.num_actors),
        ("batch_size", cfg.batch_size),
        ("seeds_per_prompt", cfg.seeds_per_prompt),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if cfg.patches_per_map < 0 or cfg.max_prompts < 0:
        raise ValueError("patches_per_map and max_prompts must be >= 0 (0 means all)")
    resolve_dtype(cfg.model.dtype, "cpu")
    model_path = cfg.benchmark.resolve_model_path(cfg.model.model_path)
    check_sampler(model_path, cfg.model.sampler)
    channels = block_channels(model_path, cfg.resolved_hookpoints)
    rows = cfg.benchmark.training_prompt_rows(
        cfg.model.anchor_prompts_dir, cfg.seed, cfg.seeds_per_prompt, cfg.max_prompts or None
    )
    if not rows:
        raise ValueError(f"the prompt set of {cfg.model.benchmark!r} is empty; check anchor_prompts_dir and max_prompts")
    check_writable(cfg.dataset_dir, "the activation dataset")
    manifest = activations.read_manifest(cfg.dataset_dir)
    if manifest is not None and manifest.get("identity") != cfg.identity() and not cfg.overwrite:
        differing = sorted(k for k in cfg.identity() if manifest.get("identity", {}).get(k) != cfg.identity()[k])
        raise ValueError(
            f"{cfg.dataset_dir.uri} holds activations collected with a different config (differs in {differing}); "
            f"choose another output_dir or pass --overwrite true to replace them"
        )
    return model_path, channels, rows


class ActivationCollector:
    """A Ray Data actor: one pipeline, loaded once; each call samples a batch of prompts."""

    def __init__(
        self,
        model_path: str,
        hookpoints: list[str],
        num_inference_steps: int,
        guidance_scale: float,
        capture_half: str,
        every_k_steps: int,
        patches_per_map: int,
        dtype: str,
        sampler: str,
        cpu_threads: int,
    ):
        pipe, _, _ = load_pipeline_in_actor(model_path, dtype, cpu_threads, sampler)
        self.hooked = HookedPipeline(pipe)
        self.hookpoints = hookpoints
        self.num_inference_steps, self.guidance_scale, self.capture_half = num_inference_steps, guidance_scale, capture_half
        self.every_k_steps = every_k_steps
        self.patches_per_map = patches_per_map
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = rows_from_batch(batch)
        out = self.hooked.generate(
            [row["prompt"] for row in rows],
            [int(row["seed"]) for row in rows],
            capture=self.hookpoints,
            capture_filter=lambda call: call.step_index % self.every_k_steps == 0,
            output_type="latent",
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            capture_half=self.capture_half,
        )
        expected = math.ceil(self.num_inference_steps / self.every_k_steps)
        for hp, cap in out.captures.items():
            if len(cap.timesteps) != expected or len(set(cap.step_indices)) != expected:
                scheduler = type(self.hooked.pipe.scheduler).__name__
                raise ValueError(
                    f"{hp}: kept {len(cap.timesteps)} UNet calls per prompt at step indices {sorted(set(cap.step_indices))}, "
                    f"expected {expected} ({self.num_inference_steps} steps, every {self.every_k_steps}): {scheduler} does not "
                    f"call the UNet once per step; collect with --model.sampler ddim"
                )
        table = pa.concat_tables(
            [
                activations.activation_table(hp, rows, cap.stacked(), cap.timesteps, cap.step_indices, self.patches_per_map)
                for hp, cap in out.captures.items()
            ]
        )
        # Which node computed each row: the manifest counts them, so a run on a cluster shows where its work went.
        return table.append_column(activations.NODE, pa.array([self.node_id] * len(table), pa.string()))


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Run (or resume) a collection; returns the final manifest."""
    model_path, channels, rows = _check(cfg)
    root = cfg.dataset_dir
    with holding_lease(root, "collect", ttl_s=cfg.tracking.lease_seconds) as lease:
        previous = activations.read_manifest(root)
        if cfg.overwrite and previous is not None and previous.get("identity") != cfg.identity():
            for hookpoint in previous.get("d_in", {}):
                activations.hookpoint_dir(root, hookpoint).delete_folder()
            previous = None
        existing = resume.reconcile(root, cfg.resolved_hookpoints, cfg.kept_steps(), (previous or {}).get("files"))
        pending = [row.as_dict() for row in rows if row.prompt_id not in existing.done]
        logger.info(
            f"collect: {len(rows)} prompts, {len(rows) - len(pending)} already collected, {len(pending)} to go "
            f"({len(existing.removed_files)} partial files removed, {len(existing.rewritten_files)} rewritten"
            + (f", {len(existing.damaged_files)} damaged files dropped" if existing.damaged_files else "")
            + ")"
        )
        manifest = {
            "schema_version": activations.SCHEMA_VERSION,
            "identity": cfg.identity(),
            "d_in": channels,
            "rows_per_prompt": cfg.kept_steps(),
            "prompts_requested": len(rows),
            "files": existing.files,
            "complete": False,
        }
        if existing.damaged_files:
            manifest["damaged_files"] = existing.damaged_files
        activations.write_manifest(root, manifest)

        started = time.perf_counter()
        if pending:
            dataset = map_with_actor_pool(
                pending,
                ActivationCollector,
                dict(
                    model_path=str(model_path),
                    hookpoints=cfg.resolved_hookpoints,
                    num_inference_steps=cfg.sampling.num_inference_steps,
                    guidance_scale=cfg.sampling.guidance_scale,
                    capture_half=cfg.capture_half,
                    every_k_steps=cfg.every_k_steps,
                    patches_per_map=cfg.patches_per_map,
                    dtype=cfg.model.dtype,
                    sampler=cfg.model.sampler,
                    cpu_threads=cfg.resources.actor.cpus,
                ),
                cfg.batch_size,
                cfg.resources,
            )
            dataset.write_parquet(
                root.path, filesystem=root.fs, partition_cols=[activations.PARTITION], **activations.PARQUET_OPTIONS
            )
        seconds = time.perf_counter() - started

        lease.check()
        final = resume.reconcile(root, cfg.resolved_hookpoints, cfg.kept_steps(), existing.files, verify_committed=False)
        manifest.update(
            files=final.files,
            prompts_collected=len(final.done),
            rows={hp: activations.count_rows(final.files[hp]) for hp in cfg.resolved_hookpoints},
            complete={row.prompt_id for row in rows} <= final.done,
            bytes_per_value=2,
            nodes=activations.rows_per_node(root, final.files),
        )
        activations.write_manifest(root, manifest)
    logger.info(
        f"collect: {manifest['prompts_collected']} prompts, rows per hookpoint {manifest['rows']}, "
        f"{seconds:.1f}s this run -> {root.uri}"
    )
    if not manifest["complete"]:
        raise RuntimeError(
            f"collect: only {manifest['prompts_collected']} of {len(rows)} prompts have all their rows in {root.uri}; "
            f"the run ended without an error from Ray, so the missing prompts' rows were never written "
            f"(run again to collect them; the rows already written are kept)"
        )
    return manifest


def collect_tracked(cfg: CollectConfig) -> dict[str, Any]:
    """:func:`collect` inside an MLflow run that records the config, the counts and the manifest."""
    import mlflow

    from saeuron.cluster.tracking import tracked_run

    with tracked_run(cfg, cfg.tracking, run_name="collect", tags={"saeuron.stage": "collect"}):
        manifest = collect(cfg)
        metrics = {"prompts_collected": manifest["prompts_collected"], "prompts_requested": manifest["prompts_requested"]}
        metrics.update({f"rows.{hp}": n for hp, n in manifest["rows"].items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tag("saeuron.nodes", ",".join(sorted(manifest.get("nodes", {}))))
        mlflow.log_dict(manifest, "manifest.json")
    return manifest
