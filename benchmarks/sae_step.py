"""SAE train-step throughput: saeuron vs EleutherAI sparsify, side by side in one process.

    python benchmarks/sae_step.py                 # paper shape: d=1280, F=20480, k=32, 4096 vectors
    python benchmarks/sae_step.py --quick         # d=320, F=5120, k=32, 1024 vectors

Both sides run the same step (forward, FVU loss, backward, clip, parallel-gradient removal,
Adam) on the same data; sparsify is its ``SparseCoder`` with the same d, F, k. Needs the
``bench`` extra (``pip install -e .[bench]``); on a machine without a GPU, sparsify needs
``SPARSIFY_DISABLE_TRITON=1`` (set here), since its CUDA triton build finds no driver.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch

from saeuron.sae import Sae, SaeConfig
from saeuron.sae.trainer import SaeTrainConfig, SaeTrainer


def sparsify_step_fn(d: int, f: int, k: int, device: str):
    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(d, SparseCoderConfig(num_latents=f, k=k), device=device)
    optimizer = torch.optim.Adam(coder.parameters(), lr=4e-4, eps=6.25e-10)

    def step(x: torch.Tensor) -> None:
        coder.set_decoder_norm_to_unit_norm()
        out = coder(x)
        out.fvu.backward()
        torch.nn.utils.clip_grad_norm_(coder.parameters(), 1.0)
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def saeuron_step_fn(d: int, f: int, k: int, device: str, batch_topk: bool):
    sae = Sae(d, SaeConfig(num_latents=f, k=k, batch_topk=batch_topk), device=device)
    trainer = SaeTrainer(sae, SaeTrainConfig(), total_steps=1_000_000)
    return lambda x: trainer.step(x)


def vectors_per_second(step, x: torch.Tensor, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shape for a fast check")
    parser.add_argument("--vectors", type=int, default=None, help="vectors per step (default 4096; 1024 with --quick)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    d, f, k = (320, 5120, 32) if args.quick else (1280, 20480, 32)
    n = args.vectors or (1024 if args.quick else 4096)
    torch.manual_seed(0)
    x = torch.randn(n, d, device=args.device)
    print(f"shape d={d} F={f} k={k}, {n} vectors/step, device={args.device}, threads={torch.get_num_threads()}")

    results = {}
    sides = {
        "sparsify TopK": lambda: sparsify_step_fn(d, f, k, args.device),
        "saeuron TopK": lambda: saeuron_step_fn(d, f, k, args.device, batch_topk=False),
        "saeuron BatchTopK": lambda: saeuron_step_fn(d, f, k, args.device, batch_topk=True),
    }
    for name, build in sides.items():
        results[name] = vectors_per_second(build(), x, warmup=1, repeats=args.repeats)
        print(f"{name:>18}: {results[name]:10.0f} vectors/s")
    for ours in ("saeuron TopK", "saeuron BatchTopK"):
        print(f"ratio {ours} / sparsify TopK: {results[ours] / results['sparsify TopK']:.2f}")


if __name__ == "__main__":
    main()
