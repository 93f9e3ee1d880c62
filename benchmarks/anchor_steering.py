"""Steering toward an anchor against the paper's edit, concept by concept, on the evaluation grid.

    python benchmarks/anchor_steering.py --saes STUDY/saes/<name> --statistics STATS \
        --points Checkerboard:97:-10 Neon_Glow:97:-0.5 [--anchor none] [--strengths 3 5 7] [--where fires all] \
        [--seeds 188 288] [--out FILE]

STATS: statistics gathered with ``unstyled_reference: true`` (so that they hold the anchor ``none``) by the SAE
under ``--saes``. For every ``CONCEPT:P:γ`` the paper's edit at (P, γ) (contrast max) and the steering toward the
anchor at each strength, on the patches where the same selection fires (``fires``) or on every patch (``all``),
generate the same evaluation grid, judged by the benchmark's classifiers: UA, IRA, CRA and, for a style, the object
accuracy on its own images (``own``), which the paper's edit loses on MiniCanvas. Each point is a recipe
(``saeuron.method.steering.Steer`` as the concept's edit), as a search would build it.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

from saeuron.diffusion.hooks import HookedPipeline
from saeuron.evaluation.in_process import add_grid_arguments, judge_grid, load_grid, short
from saeuron.evaluation.metrics import forgetting_scores, score_dict
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.statistics import ConceptStatistics
from saeuron.method.steering import WHERE, Steer
from saeuron.sae import Sae


def parse_point(text: str) -> tuple[str, float, float]:
    try:
        concept, percentile, multiplier = text.split(":")
        return concept, float(percentile), float(multiplier)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CONCEPT:P:γ (e.g. Checkerboard:97:-10), got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saes", required=True, help="the SAE folder the statistics were gathered with (<hookpoint>/ inside)")
    parser.add_argument("--statistics", required=True, help="statistics holding the concepts and the anchor")
    parser.add_argument("--points", nargs="+", type=parse_point, required=True, help="CONCEPT:P:γ, the paper's edit to compare")
    parser.add_argument("--anchor", default="none", help="the concept to steer toward (default: the unstyled rendering)")
    parser.add_argument("--strengths", nargs="+", type=float, default=[3.0, 5.0, 7.0], help="β > 0")
    parser.add_argument("--where", nargs="+", choices=WHERE, default=list(WHERE))
    add_grid_arguments(parser)
    parser.add_argument("--out", default="", help="write the scores as JSON here")
    args = parser.parse_args()
    stats = ConceptStatistics.load(args.statistics)
    unknown = [c for c in [args.anchor, *(p[0] for p in args.points)] if c not in stats.concepts]
    if unknown:
        parser.error(f"{unknown} not in the statistics ({stats.concepts}); the anchor 'none' needs unstyled_reference: true")
    if not all(b > 0 for b in args.strengths):
        parser.error(f"--strengths must be positive (toward the anchor), got {args.strengths}")
    grid = load_grid(args)
    sae = Sae.load_from_disk(Path(args.saes) / stats.hookpoint, args.device, grid.pipe.dtype, stats.sae_inference or None)
    if sae.fingerprint() != stats.sae_fingerprint:
        parser.error(f"{args.statistics} were gathered with another SAE than {args.saes}/{stats.hookpoint}")
    hooked = HookedPipeline(grid.pipe)
    started, results = time.perf_counter(), []

    def run(concept: str, label: str, percentile: float, edit: float | Steer) -> None:
        recipe = Recipe.from_statistics(stats, {concept: (percentile, edit)}, "", "max")
        generate = partial(hooked.generate, edits={stats.hookpoint: UnlearningEdit(sae, recipe)}, **grid.sampling)
        judged = judge_grid(generate, grid.rows, grid.judge, args.batch_size)
        scores = forgetting_scores(judged, grid.benchmark.concept_kind(concept), [concept])
        results.append({"concept": concept, "edit": label, **score_dict(scores)})
        print(f"  {label}: {short(scores)}", flush=True)

    for concept, percentile, multiplier in args.points:
        print(f"{concept} at {stats.hookpoint}, selection p {percentile:g} (contrast max), anchor {args.anchor}", flush=True)
        run(concept, f"paper's edit γ {multiplier:g}", percentile, multiplier)
        for where in args.where:
            for strength in args.strengths:
                run(concept, f"steer {where} β {strength:g}", percentile, Steer(args.anchor, strength, where))
    print(f"\n{len(grid.rows)} images a point, seeds {args.seeds}, {time.perf_counter() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
