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
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saeuron.collection.dataset import activation_dataset, count_vectors, dataset_info
from saeuron.console import is_verbose, logger, setup_console
from saeuron.sae import Sae, SaeConfig
from saeuron.sae.checkpoint import load_checkpoint, save_checkpoint
from saeuron.sae.trainer import SaeTrainConfig, SaeTrainer
from saeuron.sections import WithTracking

METRICS = ("fvu", "explained_variance", "l0", "dead_fraction", "auxk_loss")


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
    """Ray Train workers (one GPU each when the cluster has that many); more than one trains with DDP."""
    cpus_per_worker: int = 1
    """CPUs (and torch threads) of a worker without a GPU."""
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
class TrainConfig(TrainOptions, WithTracking):
    activations_dir: str = ""
    """Activation dataset (jobs/collect.py's output); empty means <study_dir>/activations."""
    hookpoints: list[str] = field(default_factory=list)
    """Hookpoints to train an SAE for; empty means every hookpoint in the dataset."""

    @property
    def dataset_dir(self) -> Path:
        return Path(self.activations_dir or Path(self.tracking.study_dir) / "activations").expanduser().resolve()

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        # What decides the trained SAE (not where it is logged or how many workers compute it).
        identity = {k: v for k, v in asdict(self).items() if k not in ("num_workers", "cpus_per_worker", "log_every", "max_failures",
                                                                      "register", "alias", "run_name", "tracking")}
        identity["study_dir"] = self.tracking.study_dir
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        kind = "batch_topk" if self.sae.batch_topk else "topk"
        return f"{kind}_x{self.sae.expansion_factor}_k{self.sae.k}_{digest}"


# ------------------------------------------------------------------------------------------- worker
def _validation_metrics(sae: Sae, batches, dead_fraction: float) -> dict[str, float]:
    sq_err = sq_sum = count = l0 = 0.0
    total = None
    with torch.no_grad():
        for batch in batches:
            x = batch["x"].to(sae.device, sae.dtype)
            acts, indices = sae.encode(x)
            recon = sae.decode(acts, indices)
            sq_err += float((recon - x).pow(2).sum())
            sq_sum += float(x.pow(2).sum())
            total = x.sum(0) if total is None else total + x.sum(0)
            count += x.shape[0]
            l0 += float((acts > 0).sum())
    if total is None or not count:  # no batches, or only empty ones
        return {}
    variance = sq_sum - float(total.pow(2).sum()) / count
    fvu = sq_err / variance
    return {"val_fvu": fvu, "val_explained_variance": 1 - fvu, "val_l0": l0 / count, "val_dead_fraction": dead_fraction}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.data
    import ray.train
    import ray.train.torch

    setup_console(config.get("verbose", False))  # this worker's lines: in its log file, on the driver's console when verbose
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config["cpus_per_worker"])
    torch.manual_seed(config["seed"])
    device = ray.train.torch.get_device()
    hookpoint = config["hookpoint"]
    sae = Sae(config["d_in"], SaeConfig(**config["sae"]), device=device)
    model = ray.train.torch.prepare_model(sae) if world > 1 else sae
    total_steps = config["steps_per_epoch"] * config["epochs"]
    trainer = SaeTrainer(sae, SaeTrainConfig(**config["optim"]), total_steps, forward_module=model)

    position = {"epoch": 0, "batches_done": 0}
    ray.data.DataContext.get_current().enable_progress_bars = False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            position = load_checkpoint(folder, trainer)
        if rank == 0:
            logger.info(f"[{hookpoint}] resumed at step {trainer.step_count}/{total_steps} (epoch {position['epoch']}, "
                        f"batch {position['batches_done']})")

    client = None
    if rank == 0 and config.get("mlflow_run_id"):
        import mlflow

        client = mlflow.MlflowClient(config["tracking_uri"])

    def report(metrics: dict[str, float], with_checkpoint: bool) -> None:
        if client is not None:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            client.log_batch(config["mlflow_run_id"], metrics=[Metric(f"{hookpoint}/{k}", v, stamp, trainer.step_count) for k, v in metrics.items()])
        if not with_checkpoint:
            return
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                save_checkpoint(folder, hookpoint, trainer, extra=position)
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({**metrics, "step": trainer.step_count}, checkpoint=saved)

    start_step = trainer.step_count
    shard = ray.train.get_dataset_shard("train")
    per_worker = config["batch_size"] // world
    started = time.perf_counter()
    for epoch in range(position["epoch"], config["epochs"]):
        skip = position["batches_done"] if epoch == position["epoch"] else 0
        batches_done = 0
        for batch in shard.iter_torch_batches(batch_size=per_worker, drop_last=True, dtypes=torch.float32, device=str(device)):
            if batches_done >= config["steps_per_epoch"]:
                break
            batches_done += 1
            if batches_done <= skip:
                continue  # consumed before the checkpoint this run resumed from
            metrics = trainer.step(batch["x"])._asdict()
            if trainer.step_count == start_step + 1:
                flowing = time.perf_counter()  # throughput is measured once data flows
            position = {"epoch": epoch, "batches_done": batches_done}
            step = trainer.step_count
            if step % config["log_every"] == 0 or step == total_steps:
                if rank == 0:
                    rate = step * config["batch_size"] / max(time.perf_counter() - started, 1e-9)
                    logger.info(f"[{hookpoint}] step {step}/{total_steps}  fvu {metrics['fvu']:.4f}  l0 {metrics['l0']:.1f}  "
                                f"dead {metrics['dead_fraction']:.2%}  auxk {metrics['auxk_loss']:.4f}  ({rate:,.0f} vectors/s)")
                report({f"train_{k}": metrics[k] for k in METRICS}, with_checkpoint=False)
            if step % config["checkpoint_every"] == 0 and step < total_steps:
                report({f"train_{k}": metrics[k] for k in METRICS}, with_checkpoint=True)
        position = {"epoch": epoch + 1, "batches_done": 0}

    final = {"steps": float(trainer.step_count), "resumed_from_step": float(start_step)}
    if trainer.step_count > start_step + 1:
        final["train_vectors_per_second"] = (trainer.step_count - start_step - 1) * config["batch_size"] / (time.perf_counter() - flowing)
    if rank == 0:
        validation = ray.train.get_dataset_shard("validation")
        final.update(_validation_metrics(sae, validation.iter_torch_batches(batch_size=config["batch_size"], dtypes=torch.float32),
                                         float(trainer.dead_mask.float().mean())))
        logger.info(f"[{hookpoint}] done: {trainer.step_count} steps, validation {json.dumps({k: round(v, 4) for k, v in final.items()})}")
    report(final, with_checkpoint=True)


# ------------------------------------------------------------------------------------------- driver
@dataclass
class TrainedSae:
    hookpoint: str
    folder: Path
    steps: int
    metrics: dict[str, float]
    model_version: str | None = None


def train_hookpoint(cfg: TrainConfig, hookpoint: str, mlflow_run_id: str | None, tracking_uri: str | None) -> TrainedSae:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    manifest = dataset_info(cfg.dataset_dir, hookpoint)
    d_in = manifest["d_in"][hookpoint]
    train_vectors = count_vectors(cfg.dataset_dir, hookpoint, "train", cfg.validation_fraction, cfg.seed)
    if cfg.max_vectors:
        train_vectors = min(train_vectors, cfg.max_vectors)
    steps_per_epoch = train_vectors // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{train_vectors} training vectors for {hookpoint} do not fill one batch of {cfg.batch_size}; "
                         f"collect more prompts or lower batch_size")
    train = activation_dataset(cfg.dataset_dir, hookpoint, "train", cfg.validation_fraction, cfg.seed, shuffle=cfg.shuffle)
    if cfg.max_vectors:
        train = train.limit(cfg.max_vectors)
    validation = activation_dataset(cfg.dataset_dir, hookpoint, "validation", cfg.validation_fraction, cfg.seed)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= cfg.num_workers
    run_name = cfg.resolved_run_name()
    storage = (cfg.tracking.root / "ray_train").as_posix()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(
            hookpoint=hookpoint, d_in=d_in, sae=asdict(cfg.sae), optim=asdict(cfg.optim), batch_size=cfg.batch_size,
            epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, checkpoint_every=cfg.checkpoint_every,
            log_every=cfg.log_every, seed=cfg.seed, cpus_per_worker=cfg.cpus_per_worker,
            mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri, verbose=is_verbose(),
        ),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": cfg.cpus_per_worker},
        ),
        datasets={"train": train, "validation": validation},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=f"{run_name}-{hookpoint}", storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    logger.info(f"train {hookpoint}: d_in {d_in}, F {cfg.sae.latents_for(d_in)}, {train_vectors:,} training vectors, "
                f"{steps_per_epoch} steps × {cfg.epochs} epochs, {cfg.num_workers} worker(s){' on GPU' if use_gpu else ''}")
    started = time.perf_counter()
    result = trainer.fit()
    folder = cfg.tracking.root / "saes" / run_name
    with result.checkpoint.as_directory() as checkpoint_dir:
        sae = Sae.load_from_disk(Path(checkpoint_dir) / hookpoint)
    sae.save_to_disk(folder / hookpoint)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logger.info(f"train {hookpoint}: {int(metrics.get('steps', 0))} steps in {time.perf_counter() - started:.0f}s, validation "
                + ", ".join(f"{k[4:]} {metrics[k]:.4g}" for k in ("val_fvu", "val_l0", "val_dead_fraction") if k in metrics))
    return TrainedSae(hookpoint, folder / hookpoint, int(metrics.get("steps", 0)), metrics)


def train(cfg: TrainConfig) -> list[TrainedSae]:
    """Train (or resume) one SAE per hookpoint inside one MLflow run; register each."""
    import mlflow

    from saeuron.cluster.actor_pool import ensure_ray
    from saeuron.cluster.registry import register_folder, registered_name
    from saeuron.cluster.tracking import tracked_run, tracking_uri_of

    hookpoints = cfg.hookpoints or _manifest_hookpoints(cfg)
    manifest = [dataset_info(cfg.dataset_dir, hookpoint) for hookpoint in hookpoints][0]
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
                trained.model_version = register_folder(
                    trained.folder, name=registered_name(benchmark, hookpoint), run_id=run.info.run_id,
                    artifact_path=f"sae/{hookpoint}", alias=cfg.alias,
                    tags={"hookpoint": hookpoint, "activations_manifest": json.dumps(manifest)[:5000], **{f"metric.{k}": f"{v:.6g}" for k, v in trained.metrics.items()}},
                )
                logger.info(f"train {hookpoint}: registered models:/{registered_name(benchmark, hookpoint)}/{trained.model_version}"
                            f"{f' (alias @{cfg.alias})' if cfg.alias else ''}")
            results.append(trained)
    return results


def _manifest_hookpoints(cfg: TrainConfig) -> list[str]:
    from saeuron.collection.activations import read_manifest

    manifest = read_manifest(cfg.dataset_dir)
    if manifest is None:
        raise FileNotFoundError(f"{cfg.dataset_dir} has no manifest.json: run jobs/collect.py first")
    return sorted(manifest["d_in"])

