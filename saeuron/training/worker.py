"""What every Ray Train worker runs: read its shard, step the SAE, checkpoint and report.

Each step is :class:`saeuron.sae.trainer.SaeTrainer`; checkpoints hold the SAE in the published
layout plus the trainer state and the data position, so a replaced worker resumes where the last
checkpoint left off.
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Any

import torch

from saeuron.console import logger, setup_console
from saeuron.sae import Sae, SaeConfig
from saeuron.sae.checkpoint import load_checkpoint, save_checkpoint
from saeuron.sae.trainer import SaeTrainConfig, SaeTrainer

METRICS = ("fvu", "explained_variance", "l0", "dead_fraction", "auxk_loss")


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
            logger.info(
                f"[{hookpoint}] resumed at step {trainer.step_count}/{total_steps} (epoch {position['epoch']}, "
                f"batch {position['batches_done']})"
            )

    client = None
    if config.get("mlflow_run_id"):
        import mlflow

        # Where each worker ran (and, after a failure, where its replacement runs): the run shows it.
        mlflow.MlflowClient(config["tracking_uri"]).set_tag(
            config["mlflow_run_id"],
            f"nodes.{hookpoint}.rank{rank}.from_step{trainer.step_count}",
            ray.get_runtime_context().get_node_id(),
        )
        if rank == 0:
            client = mlflow.MlflowClient(config["tracking_uri"])

    def report(metrics: dict[str, float], with_checkpoint: bool) -> None:
        if client is not None:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            client.log_batch(
                config["mlflow_run_id"],
                metrics=[Metric(f"{hookpoint}/{k}", v, stamp, trainer.step_count) for k, v in metrics.items()],
            )
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
            result = trainer.step(batch["x"])
            if trainer.step_count == start_step + 1:
                flowing = time.perf_counter()  # throughput is measured once data flows
            position = {"epoch": epoch, "batches_done": batches_done}
            step = trainer.step_count
            checkpoint_now = step % config["checkpoint_every"] == 0 and step < total_steps
            if step % config["log_every"] == 0 or step == total_steps or checkpoint_now:
                metrics = result.metrics()._asdict()  # waits for the device: only when the figures are used
            if step % config["log_every"] == 0 or step == total_steps:
                if rank == 0:
                    rate = step * config["batch_size"] / max(time.perf_counter() - started, 1e-9)
                    logger.info(
                        f"[{hookpoint}] step {step}/{total_steps}  fvu {metrics['fvu']:.4f}  l0 {metrics['l0']:.1f}  "
                        f"dead {metrics['dead_fraction']:.2%}  auxk {metrics['auxk_loss']:.4f}  ({rate:,.0f} vectors/s)"
                    )
                report({f"train_{k}": metrics[k] for k in METRICS}, with_checkpoint=False)
            if checkpoint_now:
                report({f"train_{k}": metrics[k] for k in METRICS}, with_checkpoint=True)
        position = {"epoch": epoch + 1, "batches_done": 0}

    final = {"steps": float(trainer.step_count), "resumed_from_step": float(start_step)}
    if trainer.step_count > start_step + 1:
        final["train_vectors_per_second"] = (
            (trainer.step_count - start_step - 1) * config["batch_size"] / (time.perf_counter() - flowing)
        )
    if rank == 0:
        validation = ray.train.get_dataset_shard("validation")
        final.update(
            _validation_metrics(
                sae,
                validation.iter_torch_batches(batch_size=config["batch_size"], dtypes=torch.float32),
                float(trainer.dead_mask.float().mean()),
            )
        )
        logger.info(
            f"[{hookpoint}] done: {trainer.step_count} steps, validation {json.dumps({k: round(v, 4) for k, v in final.items()})}"
        )
    report(final, with_checkpoint=True)


# ------------------------------------------------------------------------------------------- driver
