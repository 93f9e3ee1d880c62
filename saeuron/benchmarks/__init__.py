"""The benchmarks by name: MiniCanvas (embedded) and UnlearnCanvas (from paths the user gives).

A config names its benchmark (``model.benchmark``); :func:`get_benchmark` turns the name into the
object that owns the benchmark's concepts, captions, base model, judges, FID and search defaults.
"""

from __future__ import annotations

from saeuron.benchmarks.base import PAPER_OBJECT_HOOKPOINT, PAPER_STYLE_HOOKPOINT, Benchmark
from saeuron.benchmarks.minicanvas.benchmark import MINICANVAS
from saeuron.benchmarks.unlearncanvas import UNLEARNCANVAS

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (MINICANVAS, UNLEARNCANVAS)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {list(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "PAPER_STYLE_HOOKPOINT", "PAPER_OBJECT_HOOKPOINT"]
