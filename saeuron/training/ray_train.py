"""Training SAEs with Ray Train: one ``TorchTrainer`` run per hookpoint over the Parquet activations.

Workers read their shard through ``ray.train.get_dataset_shard("train").iter_torch_batches``; the
model is wrapped for DDP by ``ray.train.torch.prepare_model`` when there is more than one worker;
each step is :class:`saeuron.sae.trainer.SaeTrainer` (the one implementation of the step).
Checkpoints hold the SAE in the published layout plus the trainer state and the data position, so
a run whose worker dies (``FailureConfig``) or whose driver is started again with the same config
resumes from the last checkpoint and ends with the same number of steps.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from saeuron.collection.dataset import activation_dataset, count_vectors, dataset_info
from saeuron.console import is_verbose, logger
from saeuron.sae import Sae, SaeConfig
from saeuron.sae.trainer import SaeTrainConfig
from saeuron.sections import WithResources, WithTracking
from saeuron.storage import Location, check_writable, holding_lease
from saeuron.storage.mirror import mirror_path, push
from saeuron.training.worker import train_loop_per_worker


def paper_sae() -> SaeConfig:
    return SaeConfig(expansion_factor=16, k=32, batch_topk=True)


@dataclass
class TrainOptions:
    """What a study's train section holds: the SAE and how it is trained."""

    sae: SaeConfig = field(default_factory=paper_sae)
    """The SAE (the paper's: BatchTopK, k = 32, expansion factor 16)."""
    optim: SaeTrainConfig = field(default_factory=SaeTrainConfig)
    """Optimizer, AuxK and dead-latent settings of the training step."""
    batch_size: int = 4096
    """Vectors per step over all workers (the reference: 16 maps × 256 patches)."""
    epochs: int = 1
    """Passes over the training vectors."""
    max_vectors: int = 0
    """Train on at most this many vectors an epoch (0 = all)."""
    validation_fraction: float = 0.05
    """Fraction of prompts held out (by prompt id) for validation metrics."""
    shuffle: bool = True
    """Shuffle the feature maps (rows) before training."""
    num_workers: int = 1
    """Ray Train workers, each placed as resources.trainer says; more than one trains with DDP."""
    checkpoint_every: int = 500
    """Steps between checkpoints (reported to Ray Train, resumed from after a failure)."""
    log_every: int = 50
    """Steps between metric reports to MLflow and the job log."""
    max_failures: int = 2
    """Worker failures a run survives, resuming from its last checkpoint."""
    seed: int = 0
    """Seed of the SAE's initialisation, the shuffle and the validation split."""
    run_name: str = ""
    """Name of the run; a fresh submission with the same name resumes it. Empty: derived from
    the config, so resubmitting the same config resumes."""
    register: bool = True
    """Register each SAE in the MLflow model registry as saeuron-<benchmark>-<hookpoint>."""
    alias: str = "current"
    """Registry alias moved to the new version ("" for none; MLflow reserves "latest")."""


@dataclass
class TrainConfig(TrainOptions, WithResources, WithTracking):
    activations_dir: str = ""
    """Activation dataset (jobs/collect.py's output; a folder or an s3:// / gs:// prefix); empty means
    <study_dir>/activations."""
    hookpoints: list[str] = field(default_factory=list)
    """Hookpoints to train an SAE for; empty means every hookpoint in the dataset."""

    @property
    def dataset_dir(self) -> Location:
        return Location.parse(self.activations_dir) if self.activations_dir else self.tracking.storage / "activations"

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        # What decides the trained SAE (not where it is logged or how many workers compute it).
        identity = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("num_workers", "resources", "log_every", "max_failures", "register", "alias", "run_name", "tracking")
        }
        identity["study_dir"] = self.tracking.study_dir
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        kind = "batch_topk" if self.sae.batch_topk else "topk"
        return f"{kind}_x{self.sae.expansion_factor}_k{self.sae.k}_{digest}"


# ------------------------------------------------------------------------------------------- worker
@dataclass
class TrainedSae:
    hookpoint: str
    folder: str
    """The SAE's folder (cfg.json + sae.safetensors): a path, or a URI under an object-store study_dir."""
    steps: int
    metrics: dict[str, float]
    model_version: str | None = None


def _ordered_ingest():
    """Blocks reach a worker in the dataset's (seeded) order, not in the order tasks happen to finish:
    without it, two runs of one config train on differently ordered batches and end with different SAEs."""
    import warnings

    import ray.train

    with warnings.catch_warnings():  # Ray's own defaults still set its deprecated exclude_resources
        warnings.filterwarnings("ignore", message=".*exclude_resources.*")
        options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def train_hookpoint(cfg: TrainConfig, hookpoint: str, mlflow_run_id: str | None, tracking_uri: str | None) -> TrainedSae:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from saeuron.cluster.placement import check_placement, unit_resources

    manifest = dataset_info(cfg.dataset_dir, hookpoint)
    d_in = manifest["d_in"][hookpoint]
    train_vectors = count_vectors(cfg.dataset_dir, hookpoint, "train", cfg.validation_fraction, cfg.seed)
    if cfg.max_vectors:
        train_vectors = min(train_vectors, cfg.max_vectors)
    steps_per_epoch = train_vectors // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"{train_vectors} training vectors for {hookpoint} do not fill one batch of {cfg.batch_size}; "
            f"collect more prompts or lower batch_size"
        )
    train = activation_dataset(cfg.dataset_dir, hookpoint, "train", cfg.validation_fraction, cfg.seed, shuffle=cfg.shuffle)
    if cfg.max_vectors:
        train = train.limit(cfg.max_vectors)
    validation = activation_dataset(cfg.dataset_dir, hookpoint, "validation", cfg.validation_fraction, cfg.seed)
    unit = unit_resources(cfg.resources, "trainer")
    check_placement(unit, "resources.trainer", count=cfg.num_workers)
    run_name = cfg.resolved_run_name()
    storage = cfg.tracking.storage / "ray_train"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(
            hookpoint=hookpoint,
            d_in=d_in,
            sae=asdict(cfg.sae),
            optim=asdict(cfg.optim),
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            steps_per_epoch=steps_per_epoch,
            checkpoint_every=cfg.checkpoint_every,
            log_every=cfg.log_every,
            seed=cfg.seed,
            cpus_per_worker=cfg.resources.trainer.cpus,
            mlflow_run_id=mlflow_run_id,
            tracking_uri=tracking_uri,
            verbose=is_verbose(),
        ),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=unit.on_gpu,
            resources_per_worker={"GPU": unit.gpus, "CPU": unit.cpus, **unit.custom},
        ),
        datasets={"train": train, "validation": validation},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=_ordered_ingest()),
        run_config=ray.train.RunConfig(
            name=f"{run_name}-{hookpoint}",
            storage_path=storage.path,
            storage_filesystem=None if storage.is_local else storage.fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    logger.info(
        f"train {hookpoint}: d_in {d_in}, F {cfg.sae.latents_for(d_in)}, {train_vectors:,} training vectors, "
        f"{steps_per_epoch} steps × {cfg.epochs} epochs, {cfg.num_workers} worker(s){' on GPU' if unit.on_gpu else ''}"
    )
    started = time.perf_counter()
    result = trainer.fit()
    folder = cfg.tracking.storage / "saes" / run_name / hookpoint
    with result.checkpoint.as_directory() as checkpoint_dir:
        sae = Sae.load_from_disk(Path(checkpoint_dir) / hookpoint)
    save_sae(sae, folder)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logger.info(
        f"train {hookpoint}: {int(metrics.get('steps', 0))} steps in {time.perf_counter() - started:.0f}s, validation "
        + ", ".join(f"{k[4:]} {metrics[k]:.4g}" for k in ("val_fvu", "val_l0", "val_dead_fraction") if k in metrics)
    )
    return TrainedSae(hookpoint, folder.uri, int(metrics.get("steps", 0)), metrics)


def save_sae(sae: Sae, folder: Location) -> None:
    """The published layout in ``folder`` (through this node's mirror under an object store), the JSON uploaded
    last: a reader that finds cfg.json finds the weights."""
    local = mirror_path(folder)
    sae.save_to_disk(local)
    push(local, folder, [local / "sae.safetensors", local / "cfg.json"])


def train(cfg: TrainConfig) -> list[TrainedSae]:
    """Train (or resume) one SAE per hookpoint inside one MLflow run; register each. The run holds the lease
    of its SAE folder: the same config trained twice at once would share (and corrupt) Ray Train's state."""
    from saeuron.cluster.placement import check_trainer_share
    from saeuron.cluster.tracking import tracking_uri_of

    hookpoints = cfg.hookpoints or _manifest_hookpoints(cfg)
    manifest = [dataset_info(cfg.dataset_dir, hookpoint) for hookpoint in hookpoints][0]
    run_folder = cfg.tracking.storage / "saes" / cfg.resolved_run_name()
    check_writable(run_folder, "the SAE folder")
    check_trainer_share(cfg.resources, cfg.num_workers)
    tracking_uri_of(cfg.tracking)  # a tracking store that cannot be used fails here, before any training
    with holding_lease(run_folder, "train", ttl_s=cfg.tracking.lease_seconds):
        return _train(cfg, hookpoints, manifest)


def _train(cfg: TrainConfig, hookpoints: list[str], manifest: dict) -> list[TrainedSae]:
    import mlflow

    from saeuron.cluster.actor_pool import ensure_ray
    from saeuron.cluster.registry import register_sae, registered_name
    from saeuron.cluster.tracking import tracked_run, tracking_uri_of

    ensure_ray()
    tracking_uri = tracking_uri_of(cfg.tracking)
    benchmark = manifest["identity"]["benchmark"]
    results = []
    with tracked_run(cfg, cfg.tracking, run_name=f"train {cfg.resolved_run_name()}", tags={"saeuron.stage": "train"}) as run:
        mlflow.log_dict(manifest, "activations_manifest.json")
        for hookpoint in hookpoints:
            trained = train_hookpoint(cfg, hookpoint, run.info.run_id, tracking_uri)
            mlflow.log_metrics({f"{hookpoint}/final_{k}": v for k, v in trained.metrics.items()})
            if cfg.register:
                trained.model_version = register_sae(
                    mirror_path(Location.parse(trained.folder)),
                    name=registered_name(benchmark, hookpoint),
                    run_id=run.info.run_id,
                    hookpoint=hookpoint,
                    alias=cfg.alias,
                    tags={
                        "hookpoint": hookpoint,
                        "activations_manifest": json.dumps(manifest)[:5000],
                        **{f"metric.{k}": f"{v:.6g}" for k, v in trained.metrics.items()},
                    },
                )
                logger.info(
                    f"train {hookpoint}: registered models:/{registered_name(benchmark, hookpoint)}/{trained.model_version}"
                    f"{f' (alias @{cfg.alias})' if cfg.alias else ''}"
                )
            results.append(trained)
    return results


def _manifest_hookpoints(cfg: TrainConfig) -> list[str]:
    from saeuron.collection.activations import read_manifest

    manifest = read_manifest(cfg.dataset_dir)
    if manifest is None:
        raise FileNotFoundError(f"{cfg.dataset_dir} has no manifest.json: run jobs/collect.py first")
    return sorted(manifest["d_in"])
