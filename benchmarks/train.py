"""SAE training throughput: the Ray Train job (one worker) vs a bare loop in one process.

    python benchmarks/train.py [--prompts 128] [--batch_size 4096] [--expansion 16] [--k 32]

Both train the same SAE with the same SaeTrainer step on the same MiniCanvas Parquet activations
(collected first, not timed). Throughput counts from the first finished step to the last, so the
cluster and worker start-up (reported separately) is excluded.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from saeuron.collection.collect import CollectConfig, collect
from saeuron.collection.dataset import count_vectors
from saeuron.config import build_config
from saeuron.sae import SaeConfig
from saeuron.sae.trainer import SaeTrainConfig
from saeuron.training.local import train_locally
from saeuron.training.ray_train import TrainConfig, train_hookpoint

HOOK = "unet.up_blocks.1.attentions.2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    print(f"ray cluster start-up: {time.perf_counter() - started:.1f}s (not counted)")
    sae_cfg = SaeConfig(expansion_factor=args.expansion, k=args.k, batch_topk=True)
    with tempfile.TemporaryDirectory() as tmp:
        collected = build_config(
            CollectConfig,
            study_dir=tmp,
            hookpoints=[HOOK],
            num_inference_steps=20,
            guidance_scale=7.5,
            max_prompts=args.prompts,
            batch_size=16,
        )
        collect(collected)
        vectors = count_vectors(collected.dataset_dir, HOOK)
        steps = vectors // args.batch_size
        cfg = build_config(
            TrainConfig,
            study_dir=tmp,
            activations_dir=str(collected.dataset_dir),
            hookpoints=[HOOK],
            sae=sae_cfg,
            batch_size=args.batch_size,
            validation_fraction=0.0,
            shuffle=False,
            checkpoint_every=10**9,
            log_every=10**9,
            register=False,
        )
        started = time.perf_counter()
        result = train_hookpoint(cfg, HOOK, None, None)
        job_wall = time.perf_counter() - started
        ray_speed = result.metrics["train_vectors_per_second"]
        _, bare_speed = train_locally(collected.dataset_dir, HOOK, sae_cfg, SaeTrainConfig(), args.batch_size, steps)
    print(f"{vectors:,} vectors, {steps} steps of {args.batch_size}; job wall time {job_wall:.1f}s including start-up")
    print(
        f"bare loop: {bare_speed:,.0f} vectors/s   ray train (1 worker): {ray_speed:,.0f} vectors/s   "
        f"ratio ray/bare: {ray_speed / bare_speed:.2f}"
    )


if __name__ == "__main__":
    main()
