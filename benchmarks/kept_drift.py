"""Which kept concepts a forget model's edit moves: drift per kept concept, from an evaluation's image folders.

    python benchmarks/kept_drift.py --original STUDY/images/original-<key> \
        --models STUDY/images/Neon_Glow-<key> STUDY/images/Thick_Outline-<key> ... [--out FILE.png] [--json FILE]

Every folder is one written by the evaluation (``images.parquet`` beside the PNGs); a model's folder is named
``<forgotten concept>-<key>``. For each model and each concept of its kind that it should keep, the mean absolute
pixel change of that concept's styled images from the original model's at the same prompt and seed
(``saeuron.evaluation.drift``): where FID's excess comes from (README, "Every concept", item 17). Prints the table
and draws it as a heat map, one row per model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from saeuron.benchmarks import get_benchmark
from saeuron.evaluation.drift import folder_drift, kept_rows
from saeuron.evaluation.report import table_heatmap


def drift_by_kept_concept(model: Path, original: Path, benchmark: str) -> tuple[dict[str, float], float]:
    forgotten = model.name.rsplit("-", 1)[0].split("+")  # a multi-concept model's folder: "A+B-<key>"
    kind = get_benchmark(benchmark).concept_kind(forgotten[0])
    rows = kept_rows(pq.read_table(model / "images.parquet").to_pylist(), kind, forgotten)
    original_rows = pq.read_table(original / "images.parquet").to_pylist()
    groups = {c: [r for r in rows if r[kind] == c] for c in sorted({r[kind] for r in rows})}
    per = {c: folder_drift(model, original, group, original_rows) for c, group in groups.items()}
    # The model's drift is the mean over all its kept images: the groups' means weighted by their sizes, each image read once.
    return per, sum(per[c] * len(group) for c, group in groups.items()) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, required=True, help="the original model's evaluation image folder")
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="forget models' image folders")
    parser.add_argument("--benchmark", default="minicanvas")
    parser.add_argument("--labels", nargs="*", default=[], help="row labels (default: the folder names)")
    parser.add_argument("--out", type=Path, help="the heat map's PNG")
    parser.add_argument("--json", type=Path, help="the table as JSON")
    args = parser.parse_args()
    for folder in [args.original, *args.models]:
        if not (folder / "images.parquet").is_file():
            parser.error(f"{folder} has no images.parquet: pass folders written by the evaluation (STUDY/images/...)")
    if args.labels and len(args.labels) != len(args.models):
        parser.error(f"--labels names {len(args.labels)} rows for {len(args.models)} models")
    table, totals = {}, {}
    for i, model in enumerate(args.models):
        per, total = drift_by_kept_concept(model, args.original, args.benchmark)
        label = args.labels[i] if args.labels else model.name
        table[label], totals[label] = per, total
        top = sorted(per.items(), key=lambda kv: -kv[1])[:3]
        print(f"{label:<40} drift {total:.4f}; most moved: " + ", ".join(f"{c} {v:.3f}" for c, v in top), flush=True)
    if args.out:
        values = [v for per in table.values() for v in per.values()]
        table_heatmap(
            table,
            sorted({c for per in table.values() for c in per}),
            args.out,
            title="drift: mean absolute pixel change of the kept images, per forget model",
            xlabel="kept concept (its images, against the original model's at the same prompt and seed)",
            vmax=max(0.1, *values),
            digits=3,
        )
    if args.json:
        args.json.write_text(json.dumps({"drift": totals, "by_kept_concept": table}, indent=2))


if __name__ == "__main__":
    main()
