"""How selective the edit's gate is: the share of each concept's patches where a forgotten concept's selected latents fire
above their threshold, under the paper's gate, the "others" gate and the detecting gates, "image", "nearest" and "cell"
(``saeuron.method.selection.Gate``), and when the detecting gates find each concept's images.

    python benchmarks/gate_selectivity.py --sae STUDY/saes/<run>/unet.up_blocks.1.attentions.2 \
        --statistics STUDY/statistics/style-unet.up_blocks.1.attentions.2 --concepts Diagonal_Stripes Thick_Outline \
        [--gates mean others:0 others:1 image:1:0.1 nearest:2] [--percentile 99] [--by_step 2] [--seeds 188] [--device cuda] [--out FILE.png] [--json FILE]

The patches are the block's conditional half on the evaluation prompts ("An image of {object} in {style} style." and
unstyled, at ``--seeds``: not the statistics' own prompts) at every sampling step. A gate that edits few of the kept
concepts' patches and many of the forgotten one's leaves the kept images alone (README, "Every concept", items 17–18).
Needs statistics gathered with firing moments (``jobs/gather.py`` since the gate existed). Prints, per forgotten
concept and gate, the share on its own patches and the mean and largest share on a kept concept's; with a detecting
gate, also the share of its own images found by step ``--by_step`` (steering redraws an image found early, not one found
late: README, "Every concept", items 19-20) and of a kept concept's images found at all; draws a heat map of the
shares and (``--timing_out``) the share of the images found by each step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

import torch

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.prompts import UNSTYLED
from saeuron.cluster.registry import load_sae
from saeuron.diffusion.hooks import HookedPipeline
from saeuron.diffusion.pipeline import load_pipeline
from saeuron.evaluation.report import table_heatmap
from saeuron.method.detection import ImageDetector, NearestDetector
from saeuron.method.selection import (
    DETECTING,
    NEAREST,
    Gate,
    detection_thresholds,
    gate_thresholds,
    importance_scores,
    nearest_means,
    selected_latents,
)
from saeuron.method.statistics import ConceptStatistics


def gate_label(gate: Gate) -> str:
    if gate.kind == "image":
        return f"image {gate.sigmas:g}σ {gate.share:g}"
    if gate.kind in NEAREST:
        return f"{gate.kind}, wait {gate.wait}" + (f", keep {gate.keep}" if gate.keep else "")
    return "paper's (mean)" if gate.kind == "mean" else f"others {gate.sigmas:g}σ"


@torch.no_grad()
def concept_codes(args, stats: ConceptStatistics) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{concept: (acts, indices) [B, T, P, k]} of the evaluation prompts of each of the statistics' concepts."""
    benchmark = get_benchmark(args.benchmark)
    pipe = HookedPipeline(load_pipeline(benchmark.resolve_model_path(args.model_path), args.device))
    sae = load_sae(args.sae, stats.hookpoint, device=args.device, inference=stats.sae_inference or None)
    kind = stats.kind
    rows = [r for r in benchmark.evaluation_prompt_rows(args.seeds) if (getattr(r, kind) or UNSTYLED) in stats.concepts]
    codes = {}
    for concept in stats.concepts:
        mine = [r for r in rows if (getattr(r, kind) or UNSTYLED) == concept]
        maps = (
            pipe.generate(
                [r.prompt for r in mine],
                [r.seed for r in mine],
                capture=[stats.hookpoint],
                output_type="latent",
                capture_device=args.device,
                num_inference_steps=len(stats.timesteps),
                guidance_scale=args.guidance_scale,
            )
            .captures[stats.hookpoint]
            .stacked()
        )  # [B, T, P, C]
        acts, indices = sae.encode(maps.reshape(-1, maps.shape[-1]).to(sae.dtype))
        codes[concept] = (acts.reshape(*maps.shape[:3], -1).float().cpu(), indices.reshape(*maps.shape[:3], -1).cpu())
    return codes


class Gated(NamedTuple):
    """Per concept: the share of its patches (over prompts and steps) where a selected latent passes; with a
    detecting gate, the first step each of its images is found on (-1: never)."""

    share: float
    found_at: list[int]


def gated_shares(stats, codes, concept: str, percentile: float, contrast: str, gate: Gate) -> dict[str, Gated]:
    """Per concept, what the gate lets ``concept``'s selected latents act on: with a detecting gate, on the images it
    finds, from the step it finds them on (the original model's activations: what the edit would act on before it
    changes them)."""
    kept = [i for i, c in enumerate(stats.concepts) if c != concept]

    def at_selected(thresholds: torch.Tensor) -> torch.Tensor:
        means, target = stats.means(), stats.concepts.index(concept)
        table = torch.full_like(thresholds, float("inf"))
        for t in range(len(stats.timesteps)):
            chosen = selected_latents(importance_scores(means[:, t], target, contrast), percentile)
            table[t, chosen] = thresholds[t, chosen]
        return table

    table = at_selected(gate_thresholds(stats, kept, gate))  # [T, F]
    shares = {}
    for other, (acts, indices) in codes.items():
        steps = torch.arange(acts.shape[1])[None, :, None, None]
        passing = (acts > table[steps, indices]).any(-1)  # [B, T, P]
        found_at: list[int] = []
        if gate.kind in DETECTING:  # the edit's own detector, fed the generation step by step
            detector: ImageDetector | NearestDetector
            if gate.kind == "image":
                detector = ImageDetector(at_selected(detection_thresholds(stats, kept, gate)), gate.share)
            else:
                means, latents = nearest_means(stats, {concept: None}, gate.keep, cells=gate.kind == "cell")
                detector = NearestDetector(means, 1, gate.wait, latents, stats.num_latents)
            count = acts.shape[1]
            shown = torch.stack(
                [
                    detector(acts[:, t].flatten(0, 1), indices[:, t].flatten(0, 1), len(acts), 0, timestep=count - t, index=t)
                    for t in range(count)
                ],
                1,
            )  # [B, T]
            passing = passing & shown[..., None]
            found_at = [int(row.float().argmax()) if row.any() else -1 for row in shown]
        shares[other] = Gated(float(passing.float().mean()), found_at)
    return shares


def found_by(found_at: list[int], step: int | None = None) -> float:
    """The share of images found by ``step`` (None: at all)."""
    return sum(0 <= f <= (len(found_at) if step is None else step) for f in found_at) / len(found_at) if found_at else 0.0


def draw_timing(found_at: dict[str, dict[str, dict[str, list[int]]]], steps: int, path: Path) -> None:
    """{concept: {gate: {concept whose images: first steps}}} as one panel per forgotten concept: the share of its own
    images (solid) and of the kept concepts' (dashed) found by each step, a colour per detecting gate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(5, len(found_at))
    rows = -(-len(found_at) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.3 * rows + 0.6), dpi=110, squeeze=False, sharey=True)
    for ax, (concept, gates) in zip(axes.flat, found_at.items()):
        for color, (gate, per_concept) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], gates.items()):
            kept = sum((at for c, at in per_concept.items() if c != concept), [])
            for images, style in ((per_concept[concept], "-"), (kept, "--")):
                ax.plot(
                    range(steps),
                    [found_by(images, t) for t in range(steps)],
                    style,
                    color=color,
                    label=gate if style == "-" else None,
                )
        ax.set_title(concept, fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(found_at) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="center right")
    fig.supxlabel("sampling step", fontsize=8)
    fig.supylabel("share of images found by then", fontsize=8)
    fig.suptitle("when the detecting gates find the images: the concept's own (solid), the kept concepts' (dashed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", required=True)
    parser.add_argument("--statistics", required=True)
    parser.add_argument("--concepts", nargs="+", required=True)
    parser.add_argument("--gates", nargs="+", default=["mean", "others:0", "others:1", "others:2"])
    parser.add_argument("--percentile", type=float, default=99.0)
    parser.add_argument("--contrast", default="max")
    parser.add_argument("--seeds", type=int, nargs="+", default=[188])
    parser.add_argument("--by_step", type=int, default=2)
    parser.add_argument("--benchmark", default="minicanvas")
    parser.add_argument("--model_path", default=None)
    parser.add_argument("--guidance_scale", type=float, default=7.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timing_out", type=Path)
    args = parser.parse_args()
    gates = [Gate.parse(g) for g in args.gates]  # a bad gate or concept fails before the pipeline loads
    stats = ConceptStatistics.load(args.statistics)
    unknown = [c for c in args.concepts if c not in stats.concepts]
    if unknown:
        raise SystemExit(f"{unknown}: the statistics know {stats.concepts}")
    if any(g.kind in ("others", "image") for g in gates):
        stats.firing_moments()  # statistics without them are refused with the fix, before any sampling
    if any(g.kind == "cell" for g in gates):
        stats.cell_means()  # as are statistics without cells
    codes = concept_codes(args, stats)
    table, found = {}, {}
    found_at: dict[str, dict[str, dict[str, list[int]]]] = {}
    for concept in args.concepts:
        for gate in gates:
            gated = gated_shares(stats, codes, concept, args.percentile, args.contrast, gate)
            shares = {c: g.share for c, g in gated.items()}
            kept = {c: v for c, v in shares.items() if c != concept}
            nearest = max(kept, key=kept.__getitem__)
            line = (
                f"{concept:18s} {gate_label(gate):15s} own {shares[concept]:.3f}   kept: mean {sum(kept.values()) / len(kept):.3f}, "
                f"largest {kept[nearest]:.3f} ({nearest})"
            )
            label = f"{concept}, {gate_label(gate)}"
            if gate.kind in DETECTING:
                found_at.setdefault(concept, {})[gate_label(gate)] = {c: g.found_at for c, g in gated.items()}
                found[label] = {
                    c: {"by_step": found_by(g.found_at, args.by_step), "ever": found_by(g.found_at)} for c, g in gated.items()
                }
                others = [g.found_at for c, g in gated.items() if c != concept]
                worst = max((c for c in gated if c != concept), key=lambda c: found_by(gated[c].found_at))
                line += (
                    f"   images found: own by step {args.by_step} {found_by(gated[concept].found_at, args.by_step):.2f} "
                    f"(at all {found_by(gated[concept].found_at):.2f}), kept {found_by(sum(others, [])):.3f} "
                    f"(most {worst} {found_by(gated[worst].found_at):.2f})"
                )
            print(line)
            table[label] = shares
    if args.json:
        record = {
            "percentile": args.percentile,
            "contrast": args.contrast,
            "shares": table,
            "found": found,
            "by_step": args.by_step,
        }
        args.json.write_text(json.dumps(record, indent=1))
    if args.timing_out and found_at:
        draw_timing(found_at, len(stats.timesteps), args.timing_out)
    if args.out:
        table_heatmap(
            table,
            stats.concepts,
            args.out,
            title="share of patches where the forgotten concept's selected latents pass the gate",
            xlabel="concept whose patches (evaluation prompts, every step) the edit would touch",
            vmax=1.0,
        )


if __name__ == "__main__":
    main()
