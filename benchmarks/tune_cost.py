"""What early stopping saves: the full (p, γ) grid vs ASHA, side by side, on MiniCanvas.

    python benchmarks/tune_cost.py --style_statistics runs/minicanvas/statistics/style-unet.up_blocks.1.attentions.2 \
        --object_statistics runs/minicanvas/statistics/object-unet.mid_block.attentions.0 \
        --concepts Neon_Glow Stars --study_dir runs/minicanvas

Both searches score the same tuning prompts with the same grid; printed per concept: images generated,
the chosen (p, γ) and its objective (UA + IRA) / 2 on the full tuning set. Target: the same objective
within the tolerance with at least 4× fewer generations.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from saeuron.config import build_config
from saeuron.tuning.search import SearchConfig, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", nargs="+", default=["Neon_Glow", "Stars"])
    parser.add_argument("--style_statistics", default="")
    parser.add_argument("--object_statistics", default="")
    parser.add_argument("--study_dir", default="runs/minicanvas")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--tolerance", type=float, default=0.02, help="allowed objective gap of ASHA's choice")
    parser.add_argument("--chunk", type=int, default=8, help="ASHA: prompts between reports (its rung unit)")
    parser.add_argument("--reduction_factor", type=float, default=4)
    args = parser.parse_args()
    base = build_config(
        SearchConfig,
        concepts=args.concepts,
        style_statistics=args.style_statistics,
        object_statistics=args.object_statistics,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        study_dir=args.study_dir,
    )
    rows = {}
    # The grid reports every 11 prompts (its chunk does not change what it generates); ASHA decides at rungs
    # of --chunk prompts × reduction_factor^k.
    runs = {
        "grid": replace(base, scheduler="grid", name="tune-cost-grid"),
        "asha": replace(
            base,
            scheduler="asha",
            chunk=args.chunk,
            grace_prompts=args.chunk,
            reduction_factor=args.reduction_factor,
            name=f"tune-cost-asha-c{args.chunk}-rf{args.reduction_factor:g}",
        ),
    }
    for scheduler, cfg in runs.items():
        started = time.perf_counter()
        result = search(cfg)
        rows[scheduler] = ({r.concept: r for r in result.concepts}, time.perf_counter() - started)
    grid, grid_time = rows["grid"]
    asha, asha_time = rows["asha"]
    print(
        f"\n{'concept':<12} {'grid gens':>9} {'asha gens':>9} {'saving':>7}  {'grid (p, γ) obj':<24} {'asha (p, γ) obj':<24} "
        f"{'asha choice on grid':>19}"
    )
    report = {}
    for concept in args.concepts:
        g, a = grid[concept], asha[concept]
        # ASHA's choice scored by the full grid run (same prompts, seeds, model): the fair comparison.
        on_grid = next(t["objective"] for t in g.trials if (t["percentile"], t["multiplier"]) == (a.percentile, a.multiplier))
        saving = g.generations / a.generations
        print(
            f"{concept:<12} {g.generations:>9} {a.generations:>9} {saving:>6.1f}×  "
            f"{f'({g.percentile:g}, {g.multiplier:g}) {g.objective:.3f}':<24} {f'({a.percentile:g}, {a.multiplier:g}) {a.objective:.3f}':<24} "
            f"{on_grid:>19.3f}"
        )
        report[concept] = dict(
            grid_generations=g.generations,
            asha_generations=a.generations,
            saving=saving,
            grid_choice=[g.percentile, g.multiplier, g.objective],
            asha_choice=[a.percentile, a.multiplier, a.objective],
            asha_choice_objective_on_grid=on_grid,
            within_tolerance=g.objective - on_grid <= args.tolerance,
        )
    total = sum(r.generations for r in grid.values()) / sum(r.generations for r in asha.values())
    print(
        f"all concepts: {total:.1f}× fewer generations with ASHA (grid {grid_time:.0f} s, ASHA {asha_time:.0f} s wall); "
        f"same objective within {args.tolerance}: {all(r['within_tolerance'] for r in report.values())}"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
