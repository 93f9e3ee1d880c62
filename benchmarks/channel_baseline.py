"""The SAE method against the raw-channel baseline, concept by concept, at equal retain accuracy.

    python benchmarks/channel_baseline.py --recipes STUDY/search/<run>/recipes --saes STUDY/saes/<name> \
        --activations STUDY/activations [--channels 4 16 32] [--multipliers -1 -3] [--seeds 188] [--out FILE]

For every recipe (one forgotten concept each) the SAE edit and the baseline generate the same evaluation grid
(every style and unstyled, times every object, per seed), judged by the benchmark's classifier. The baseline
multiplies the N raw channels of the recipe's block most tied to the concept (``saeuron.method.baseline``, ranked
on the collected activations) by γ — 0 zeroes them, a negative γ pushes them as the SAE edit pushes its latents —
for every γ and growing N. Its answer at the SAE's retain accuracy is its best UA among the points (the unedited
model is N = 0) whose IRA and CRA both reach the SAE's, less ``--tolerance``; the SAE is ahead when its UA is
higher. For each γ, N stops growing once the baseline's IRA or CRA falls below that bar: more channels only lose
more.

A recipe under the "nearest" gate (README, "Every concept", item 20) edits only the images it finds showing the
concept, on the CFG halves it names. Its baseline does the same without the SAE: the images are found by the nearest
concept mean of the *raw* block output (``saeuron.method.baseline.RawGatedEdit``, means over the collection), and on
them it adds β·(μ_anchor − μ_concept) of the raw means to every patch (``--strengths``; toward the recipe's anchor for
a steered recipe, the unstyled "none" or the recipe's kept concepts otherwise) or scales the N channels by γ. Under
the "cell" gate the raw means are per (concept, other label) too. A recipe that moves its images by a map (README,
"Every concept", items 27-28) is compared with its own maps, at every block it holds them for, on the images the raw
gate finds: what the SAE adds to that edit is the gate. With ``--retain_own`` a style's objects on its own images
count as retained accuracy too.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from saeuron.diffusion.hooks import HookedPipeline
from saeuron.evaluation.in_process import Grid, add_grid_arguments, judge_grid, load_grid, short
from saeuron.evaluation.metrics import ForgettingScores, forgetting_scores
from saeuron.method.baseline import ChannelScaleEdit, RawGatedEdit, channel_rankings, raw_means
from saeuron.method.recipe import Recipe, edit_label, resolve_recipe_folders
from saeuron.method.selection import NEAREST
from saeuron.method.steering import Steer
from saeuron.method.unlearned_pipeline import UnlearnedPipeline
from saeuron.sae import Sae


class Point(NamedTuple):
    channels: int
    """Raw channels edited (0: the unedited model, or a steering point)."""
    multiplier: float
    """What they were multiplied by (0: zeroed)."""
    scores: ForgettingScores
    steer: str = ""
    """A gated recipe's steering point: "→anchor β" (raw means); empty for a channel point."""

    @property
    def label(self) -> str:
        return self.steer or f"{self.channels} × {self.multiplier:g}"


class Comparison(NamedTuple):
    concept: str
    sae: ForgettingScores
    points: list[Point]
    baseline: Point
    """The baseline's best UA among the points that retain as much as the SAE (within the tolerance)."""

    @property
    def sae_ahead(self) -> bool:
        return self.sae.ua > self.baseline.scores.ua


def retains(scores: ForgettingScores, bar: ForgettingScores, tolerance: float, own: bool = False) -> bool:
    """IRA and CRA at least the bar's less ``tolerance``; with ``own``, a style's objects on its own images too."""
    kept = scores.ira >= bar.ira - tolerance and scores.cra >= bar.cra - tolerance
    if own and scores.cra_forgotten is not None and bar.cra_forgotten is not None:
        kept = kept and scores.cra_forgotten >= bar.cra_forgotten - tolerance
    return kept


def baseline_at_retain(sae: ForgettingScores, points: list[Point], tolerance: float, own: bool = False) -> Point:
    """The point with the highest UA among those that retain as much as ``sae`` (the first such on ties:
    fewer channels). ``points`` must include one that qualifies: the unedited model's."""
    eligible = [p for p in points if retains(p.scores, sae, tolerance, own)]
    if not eligible:
        raise ValueError("no baseline point retains as much as the SAE: include the unedited model (N = 0)")
    return max(eligible, key=lambda p: (p.scores.ua, -p.channels))


def score(generate, rows: list[dict], judge, kind: str, concept: str, batch_size: int) -> ForgettingScores:
    return forgetting_scores(judge_grid(generate, rows, judge, batch_size), kind, [concept])


# What recipes of one hookpoint share — its SAE, its channel rankings — is loaded once.
@cache
def hookpoint_sae(saes: str, hookpoint: str, device: str, dtype: torch.dtype, inference: str) -> Sae:
    return Sae.load_from_disk(Path(saes) / hookpoint, device, dtype, inference or None)


@cache
def hookpoint_means(activations_dir: str, hookpoint: str, kind: str, cells: bool = False):
    return raw_means(activations_dir, hookpoint, kind, cells)


def baked_maps(recipe: Recipe, steer: Steer) -> tuple[Tensor, dict[str, Tensor]]:
    """A map recipe's (single concept) edit as RawGatedEdit takes it: β·(W_t − [I; 0]) at the hookpoint and at each
    companion block, [T, d+1, d]."""

    def baked(weights: Tensor) -> Tensor:
        return steer.strength * (weights.float() - torch.eye(weights.shape[-2], weights.shape[-1]))

    assert recipe.steering.maps is not None, "a recipe steering by a map holds it (Recipe checks)"
    return baked(recipe.steering.maps[0]), {b: baked(w[0]) for b, w in recipe.steering.companions.items()}


@cache
def hookpoint_rankings(activations_dir: str, hookpoint: str, kind: str, count: int) -> dict[str, list[int]]:
    return channel_rankings(activations_dir, hookpoint, kind, count)


def compare(recipe_dir: str, args, grid: Grid, original) -> Comparison:
    pipe, judge, benchmark, rows, sampling = grid.pipe, grid.judge, grid.benchmark, grid.rows, grid.sampling
    recipe = Recipe.load(recipe_dir)
    if len(recipe.concepts) != 1:
        raise ValueError(f"{recipe_dir} forgets {list(recipe.concepts)}: the comparison takes one concept per recipe")
    (concept,) = recipe.concepts
    kind = benchmark.concept_kind(concept)
    sae = hookpoint_sae(args.saes, recipe.hookpoint, args.device, pipe.dtype, recipe.sae_inference)
    if sae.fingerprint() != recipe.sae_fingerprint:
        raise ValueError(f"{recipe_dir} was built on another SAE than {args.saes}/{recipe.hookpoint} (fingerprints differ)")
    edited = UnlearnedPipeline.from_recipe(pipe, sae, recipe, recipe.base_model)
    sae_scores = score(partial(edited.generate, **sampling), rows, judge, kind, concept, args.batch_size)
    edit = edit_label(recipe.edit_of(concept), recipe.halves)
    print(
        f"{concept} ({kind}, {recipe.hookpoint}) SAE p {recipe.concepts[concept]['percentile']:g} {edit}: {short(sae_scores)}",
        flush=True,
    )
    rankings = hookpoint_rankings(args.activations, recipe.hookpoint, kind, max(args.channels))
    if concept not in rankings:
        raise ValueError(f"no vectors of {kind} {concept!r} in {args.activations}: rank the channels on its collection")
    ranked = rankings[concept]
    points = [Point(0, 1.0, forgetting_scores(original, kind, [concept]))]
    hooked = HookedPipeline(pipe)
    gated = recipe.gate.kind in NEAREST
    if gated:
        cells = recipe.gate.kind == "cell"
        concepts, timesteps, means = hookpoint_means(args.activations, recipe.hookpoint, kind, cells)
        if concept not in concepts:
            raise ValueError(f"no vectors of {kind} {concept!r} in {args.activations}: take the means on its collection")
        order = [concept] + [c for c in concepts if c != concept]
        means = means[[concepts.index(c) for c in order]]
        own_edit = recipe.edit_of(concept)
        anchor = own_edit.anchor if isinstance(own_edit, Steer) else ("none" if "none" in order else order[1])
        gate = partial(RawGatedEdit, means, timesteps, recipe.gate.wait, recipe.halves)
        mapped = isinstance(own_edit, Steer) and own_edit.by == "map"
        if mapped:  # the recipe's own maps, found by the raw gate: what the SAE adds to a map edit is its gate
            assert isinstance(own_edit, Steer)
            if list(recipe.timesteps) != list(timesteps):
                raise ValueError(f"{recipe_dir}: its maps are at {recipe.timesteps}, the collection's steps {timesteps}")
            maps, companions = baked_maps(recipe, own_edit)
            raw = gate(maps=maps, companions=companions)
            scores = score(
                partial(hooked.generate, edits=raw.hooks(recipe.hookpoint), **sampling),
                rows,
                judge,
                kind,
                concept,
                args.batch_size,
            )
            label = f"raw {recipe.gate.kind} gate, map β{own_edit.strength:g} at {1 + len(companions)} blocks"
            points.append(Point(0, 1.0, scores, label))
            print(f"  {label} ({recipe.halves}): {short(scores)}", flush=True)
        strengths = sorted(set(args.strengths) | ({own_edit.strength} if isinstance(own_edit, Steer) else set()))
        for beta in [] if mapped else strengths:
            edits: dict[str, Callable] = {recipe.hookpoint: gate(anchor=order.index(anchor), strength=beta)}
            scores = score(partial(hooked.generate, edits=edits, **sampling), rows, judge, kind, concept, args.batch_size)
            points.append(Point(0, 1.0, scores, f"raw →{anchor} β{beta:g}"))
            print(f"  raw →{anchor} β{beta:g} ({recipe.halves}, raw {recipe.gate.kind} gate): {short(scores)}", flush=True)
    for multiplier in args.multipliers:
        for n in sorted(args.channels):
            channel_edit: Callable = (
                gate(channels=ranked[:n], multiplier=multiplier) if gated else ChannelScaleEdit(ranked[:n], multiplier)
            )
            edits = {recipe.hookpoint: channel_edit}
            scores = score(partial(hooked.generate, edits=edits, **sampling), rows, judge, kind, concept, args.batch_size)
            points.append(Point(n, multiplier, scores))
            print(
                f"  {n:>3} channels × {multiplier:g}{f' (raw {recipe.gate.kind} gate)' if gated else ''}: {short(scores)}",
                flush=True,
            )
            if not retains(scores, sae_scores, args.tolerance, args.retain_own):
                break
    best = baseline_at_retain(sae_scores, points, args.tolerance, args.retain_own)
    result = Comparison(concept, sae_scores, points, best)
    verdict = "SAE ahead" if result.sae_ahead else "baseline not behind"
    print(f"  at the SAE's retain: {best.label}, UA {best.scores.ua:.3f} -> {verdict}")
    return result


def scores_cell(s: ForgettingScores) -> str:
    own = "" if s.cra_forgotten is None else f" / {s.cra_forgotten:.3f}"
    return f"{s.ua:.3f} / {s.ira:.3f} / {s.cra:.3f}{own}"


def as_json(c: Comparison) -> dict:
    return {
        "concept": c.concept,
        "kind": c.sae.kind,
        "sae": c.sae._asdict(),
        "points": [
            {"channels": p.channels, "multiplier": p.multiplier, "steer": p.steer, **p.scores._asdict()} for p in c.points
        ],
        "baseline_channels": c.baseline.channels,
        "baseline_steer": c.baseline.steer,
        "baseline_multiplier": c.baseline.multiplier,
        "baseline_ua": c.baseline.scores.ua,
        "sae_ahead": c.sae_ahead,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", required=True, help="recipe folders or folders of them (a search's recipes/)")
    parser.add_argument("--saes", required=True, help="the SAE folder the recipes were built on (<hookpoint>/ inside)")
    parser.add_argument("--activations", required=True, help="the activation dataset the channels are ranked on")
    parser.add_argument("--concepts", nargs="*", default=[], help="only these recipes' concepts (default: every recipe)")
    parser.add_argument("--channels", nargs="+", type=int, default=[4, 16, 32])
    parser.add_argument("--multipliers", nargs="+", type=float, default=[-1.0, -3.0], help="γ values; 0 zeroes the channels")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument(
        "--strengths",
        nargs="+",
        type=float,
        default=[1.0, 2.0, 3.0, 4.0, 6.0],
        help="β of the raw steering points, for recipes under the nearest gate (the recipe's own β is added)",
    )
    parser.add_argument("--retain_own", action="store_true", help="a style's objects on its own images count as retained too")
    add_grid_arguments(parser)
    parser.add_argument("--out", default="", help="write the comparisons as JSON here")
    args = parser.parse_args()
    if min(args.channels) < 1:
        parser.error("--channels: counts of channels to edit, each at least 1")
    if min(args.strengths) <= 0:
        parser.error("--strengths: β of the raw steering, each above 0 (toward the anchor)")
    if max(args.multipliers) >= 1:
        parser.error("--multipliers: what the channels are multiplied by, each below 1 (0 zeroes them)")
    folders = resolve_recipe_folders(args.recipes)
    if args.concepts:
        folders = [f for f in folders if set(Recipe.load(f).concepts) & set(args.concepts)]
        if not folders:
            parser.error(f"no recipe among {args.recipes} forgets any of {args.concepts}")
    grid = load_grid(args)
    started = time.perf_counter()
    original = judge_grid(partial(HookedPipeline(grid.pipe).generate, **grid.sampling), grid.rows, grid.judge, args.batch_size)
    results = [compare(folder, args, grid, original) for folder in folders]
    print(f"\n{len(grid.rows)} images a point, seeds {args.seeds}, {time.perf_counter() - started:.0f} s")
    print("| forget | kind | SAE: UA / IRA / CRA / own | baseline at the SAE's retain: point, UA / IRA / CRA / own | SAE ahead |")
    print("|---|---|---|---|---|")
    for c in results:
        print(
            f"| {c.concept} | {c.sae.kind} | {scores_cell(c.sae)} | {c.baseline.label}, {scores_cell(c.baseline.scores)} | "
            f"{'yes' if c.sae_ahead else '**no**'} |"
        )
    print(f"SAE ahead on {sum(c.sae_ahead for c in results)} of {len(results)} concepts")
    if args.out:
        Path(args.out).write_text(json.dumps([as_json(c) for c in results], indent=1))


if __name__ == "__main__":
    main()
