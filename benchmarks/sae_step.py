"""SAE training against EleutherAI sparsify, side by side in one process: step speed and held-out quality.

    python benchmarks/sae_step.py --device cuda                  # paper shape: d=1280, F=20480, k=32, 4096 vectors
    python benchmarks/sae_step.py --device cpu --shape quick     # d=320, F=5120, k=32, 1024 vectors

**Speed**: every side runs the whole training step (forward, loss, backward, clipping, parallel-gradient
removal, Adam) on the same batch; sides take turns in rounds so drift on a shared machine hits all alike,
and the median round counts. sparsify is its ``SparseCoder`` as its users run it (on a GPU its triton decoder
and its bf16 autocast; on a CPU its eager decoder, since its triton kernels need a GPU), with plain Adam.
saeuron runs with its defaults (``kernels`` and ``mixed_precision`` "auto": dense bf16 products on a GPU,
the sparse fp32 kernels on a CPU) and, for reference, forced to the sparse fp32 path.

**Quality**: each side trains ``--quality_steps`` steps on the same stream of structured vectors (a mean
offset plus 32-sparse positive mixtures of 16,384 unit directions, plus noise), with the same learning
rate (constant 4e-4) and the same decoder-bias start, and is scored by FVU on held-out vectors; run once
with ``b_dec`` at zero (sparsify's start) and once at the geometric median of the first batch (ours).
``--activations DIR --hookpoint H`` runs the quality comparison on a collected activation dataset instead
(held out by prompt, as training does), at the data's own width with ``--expansion`` and ``--k``.

Needs the ``bench`` extra (``pip install -e .[bench]``). ``--out FILE`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a bare checkout (the GPU machine)

from saeuron.sae import Sae, SaeConfig, geometric_median  # noqa: E402
from saeuron.sae.trainer import SaeTrainConfig, SaeTrainer  # noqa: E402

SHAPES = {"paper": (1280, 20480, 32, 4096), "quick": (320, 5120, 32, 1024), "tiny": (64, 512, 8, 256)}
Step = Callable[[torch.Tensor], object]


def import_sparse_coder():
    """sparsify's ``SparseCoder`` and its config. Its package ``__init__`` also imports its language-model
    trainer (``datasets`` and more); where that fails, the coder's own modules are loaded without it."""
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError as error:
        spec = importlib.util.find_spec("sparsify")
        if spec is None or not spec.submodule_search_locations:
            raise
        package = types.ModuleType("sparsify")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["sparsify"] = package
        from sparsify.config import SparseCoderConfig
        from sparsify.sparse_coder import SparseCoder

        print(f"  (sparsify's package import failed: {error}; its sparse_coder module runs alone)", flush=True)
    return SparseCoder, SparseCoderConfig


def sparsify_side(d: int, f: int, k: int, device: str, zero_b_dec: bool = True, lr: float = 4e-4):
    SparseCoder, SparseCoderConfig = import_sparse_coder()

    torch.manual_seed(0)
    coder = SparseCoder(d, SparseCoderConfig(num_latents=f, k=k), device=device)
    optimizer = torch.optim.Adam(coder.parameters(), lr=lr, eps=6.25e-10)
    first = [not zero_b_dec]

    def step(x: torch.Tensor) -> None:
        if first[0]:
            coder.b_dec.data = geometric_median(x).to(coder.dtype)
            first[0] = False
        coder.set_decoder_norm_to_unit_norm()
        out = coder(x)
        out.fvu.backward()
        torch.nn.utils.clip_grad_norm_(coder.parameters(), 1.0)
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def held_out_fvu(batches: list[torch.Tensor]) -> float:
        return _pooled_fvu(batches, lambda x: coder(x).sae_out.float())

    return step, held_out_fvu


def saeuron_side(d: int, f: int, k: int, device: str, batch_topk: bool, **train: object):
    torch.manual_seed(0)
    sae = Sae(d, SaeConfig(num_latents=f, k=k, batch_topk=batch_topk), device=device)
    trainer = SaeTrainer(sae, SaeTrainConfig(**train), total_steps=1_000_000)  # type: ignore[arg-type]

    @torch.no_grad()
    def held_out_fvu(batches: list[torch.Tensor]) -> float:
        with torch.autocast(sae.device.type, dtype=torch.bfloat16, enabled=trainer.autocast_dtype is not None):
            return _pooled_fvu(batches, lambda x: sae(x, dense=trainer.dense).sae_out.float())

    return trainer.step, held_out_fvu


def _pooled_fvu(batches: list[torch.Tensor], reconstruct: Callable[[torch.Tensor], torch.Tensor]) -> float:
    error = variance = 0.0
    for x in batches:
        error += float((reconstruct(x) - x).pow(2).sum())
        variance += float((x - x.mean(0)).pow(2).sum())
    return error / variance


def structured_stream(d: int, n: int, count: int, device: str, seed: int, atoms: int = 16_384, active: int = 32):
    """``count`` batches of [n, d] vectors: an offset plus ``active``-sparse mixtures of unit atoms, plus noise.
    The dictionary and offset depend only on ``d`` (the same world for every seed)."""
    world = torch.Generator(device=device).manual_seed(1234)
    dictionary = F.normalize(torch.randn(atoms, d, generator=world, device=device), dim=1)
    offset = 3.0 * F.normalize(torch.randn(d, generator=world, device=device), dim=0)
    g = torch.Generator(device=device).manual_seed(seed)
    popularity = torch.rand(atoms, generator=world, device=device).pow(4) + 1e-3  # some atoms far more frequent
    batches = []
    for _ in range(count):
        gumbel = -torch.log(-torch.log(torch.rand(n, atoms, generator=g, device=device).clamp_min(1e-20)))
        idx = (popularity.log() + gumbel).topk(active, dim=1).indices  # `active` draws without replacement
        coef = torch.rand(n, active, generator=g, device=device).pow(2) * 2
        noise = 0.05 * torch.randn(n, d, generator=g, device=device)
        batches.append(offset + torch.zeros(n, atoms, device=device).scatter(1, idx, coef) @ dictionary + noise)
    return batches


def real_stream(root: Path, hookpoint: str, n: int, count: int, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``count`` training batches of [n, d] vectors (cycling, shuffled once) and the held-out batches, from a
    collected dataset; one prompt in ten is held out (the split ``jobs/train.py`` uses)."""
    import numpy as np

    from saeuron.collection import activations
    from saeuron.collection.dataset import in_validation

    d_in = activations.read_manifest(root)["d_in"][hookpoint]
    table = activations.read_hookpoint(root, hookpoint, ["prompt_id", "step_index", "activations"])
    vectors = torch.from_numpy(activations.binary_to_vectors(table.column("activations"), d_in).astype(np.float32))
    held = torch.from_numpy(in_validation(table.column("prompt_id").to_numpy(), 0.1)).repeat_interleave(
        len(vectors) // len(table)
    )
    train, test = vectors[~held], vectors[held]
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))].to(device)
    batches = [train[(i * n) % (len(train) - n) :][:n] for i in range(count)]
    test = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))]  # batches mixing prompts, as in training
    return batches, [chunk.to(device) for chunk in test.split(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def speed(sides: dict[str, Step], x: torch.Tensor, device: str, steps: int, rounds: int) -> dict[str, float]:
    for step in sides.values():
        for _ in range(3):  # warm-up: allocator, autotuning, triton compilation
            step(x)
    _sync(device)
    per_round: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, step in sides.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step(x)
            _sync(device)
            per_round[name].append(steps * x.shape[0] / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="paper")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per side and round (default 30 on a GPU, 3 on a CPU; 0 skips)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vectors", type=int, default=0, help="vectors a step (default: the shape's)")
    parser.add_argument("--quality_steps", type=int, default=1000, help="0 skips the quality comparison")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    parser.add_argument("--profile", action="store_true", help="print where five steps spend their time")
    parser.add_argument("--activations", type=Path, default=None, help="a collected dataset for the quality comparison")
    parser.add_argument("--hookpoint", default="unet.up_blocks.1.attentions.2")
    parser.add_argument("--expansion", type=int, default=16, help="latents per channel on real activations")
    parser.add_argument("--k", type=int, default=0, help="k on real activations (default: the shape's)")
    args = parser.parse_args()
    if not args.device.startswith("cuda"):
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its triton kernels need a GPU
    d, f, k, n = SHAPES[args.shape]
    n = args.vectors or n
    steps = (30 if args.device.startswith("cuda") else 3) if args.steps is None else args.steps
    name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"SAE training, d={d} F={f} k={k}, {n} vectors a step, on {name}, torch {torch.__version__}", flush=True)
    figures: dict[str, object] = {"device": name, "torch": torch.__version__, "shape": {"d": d, "F": f, "k": k, "n": n}}

    if steps:
        figures.update(speed_figures(d, f, k, n, args.device, steps, args.rounds, args.profile))
    if args.quality_steps and args.activations:
        data = real_stream(args.activations, args.hookpoint, n, args.quality_steps, args.device)
        d = data[0][0].shape[1]
        f = d * args.expansion
        k = args.k or k
        print(f"quality on {args.activations} {args.hookpoint}: d={d} F={f} k={k}, {len(data[1])} held-out batches", flush=True)
        figures["real_activations"] = {"root": str(args.activations), "hookpoint": args.hookpoint, "d": d, "F": f, "k": k}
        figures["held_out_fvu"] = quality(d, f, k, n, args.device, args.quality_steps, data)
    elif args.quality_steps:
        figures["held_out_fvu"] = quality(d, f, k, n, args.device, args.quality_steps)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def profile(side: str, step: Step, x: torch.Tensor) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(5):
            step(x)
        _sync(str(x.device))
    sort_by = "self_device_time_total" if x.is_cuda else "self_cpu_time_total"
    print(
        f"  profile of 5 steps, {side}:\n{prof.key_averages().table(sort_by=sort_by, row_limit=14, max_name_column_width=60)}",
        flush=True,
    )


def speed_figures(d: int, f: int, k: int, n: int, device: str, steps: int, rounds: int, with_profile: bool) -> dict:
    x = structured_stream(d, n, 1, device, seed=99)[0]
    sides = {
        "sparsify TopK": sparsify_side(d, f, k, device)[0],
        "saeuron TopK": saeuron_side(d, f, k, device, batch_topk=False)[0],
        "saeuron BatchTopK": saeuron_side(d, f, k, device, batch_topk=True)[0],
        "saeuron TopK, sparse fp32": saeuron_side(d, f, k, device, False, kernels="sparse", mixed_precision="none")[0],
    }
    rates = speed(sides, x, device, steps, rounds)
    peer = rates["sparsify TopK"]
    for side, rate in rates.items():
        print(f"  {side:>26}: {rate:>12,.0f} vectors/s   {rate / peer:.2f}x sparsify", flush=True)
    figures = {"vectors_per_second": rates, "ratio_to_sparsify": {side: rate / peer for side, rate in rates.items()}}
    if with_profile:
        for side in ("saeuron TopK", "sparsify TopK"):
            try:
                profile(side, sides[side], x)
            except Exception as error:  # a profiler that fails must not cost the figures
                print(f"  profile of {side} failed: {error!r}", flush=True)
    del sides
    return figures


def quality(d: int, f: int, k: int, n: int, device: str, train_steps: int, data: tuple | None = None) -> dict[str, float]:
    if data is None:
        stream, held_out = structured_stream(d, n, train_steps, device, seed=0), structured_stream(d, n, 4, device, seed=1)
    else:
        stream, held_out = data
    constant = {"lr_schedule": "constant"}
    results = {}
    for start in ("zero", "geometric_median"):
        sides = {
            "sparsify TopK": sparsify_side(d, f, k, device, zero_b_dec=start == "zero"),
            "saeuron TopK": saeuron_side(d, f, k, device, False, b_dec_init=start, **constant),
            "saeuron BatchTopK": saeuron_side(d, f, k, device, True, b_dec_init=start, **constant),
        }
        for side, (step, held_out_fvu) in sides.items():
            started = time.perf_counter()
            for x in stream:
                step(x)
            fvu = held_out_fvu(held_out)
            results[f"{side}, b_dec {start}"] = fvu
            print(
                f"  held-out FVU after {train_steps} steps, b_dec {start:>16}: {side:>18} {fvu:.5f}"
                f"  ({time.perf_counter() - started:.1f}s)",
                flush=True,
            )
    return results


if __name__ == "__main__":
    main()
