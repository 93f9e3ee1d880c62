"""How selective the edit's gate is: the share of each concept's patches where a forgotten concept's selected latents fire
above their threshold, under the paper's gate and the "others" gate (``saeuron.method.selection.Gate``).

    python benchmarks/gate_selectivity.py --sae STUDY/saes/<run>/unet.up_blocks.1.attentions.2 \
        --statistics STUDY/statistics/style-unet.up_blocks.1.attentions.2 --concepts Diagonal_Stripes Thick_Outline \
        [--gates mean others:0 others:1 others:2] [--percentile 99] [--seeds 188] [--device cuda] [--out FILE.png] [--json FILE]

The patches are the block's conditional half on the evaluation prompts ("An image of {object} in {style} style." and
unstyled, at ``--seeds``: not the statistics' own prompts) at every sampling step. A gate that edits few of the kept
concepts' patches and many of the forgotten one's leaves the kept images alone (README, "Every concept", items 17–18).
Needs statistics gathered with firing moments (``jobs/gather.py`` since the gate existed). Prints, per forgotten
concept and gate, the share on its own patches and the mean and largest share on a kept concept's; draws a heat map.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.prompts import UNSTYLED
from saeuron.cluster.registry import load_sae
from saeuron.diffusion.hooks import HookedPipeline
from saeuron.diffusion.pipeline import load_pipeline
from saeuron.method.selection import Gate, gate_thresholds, importance_scores, selected_latents
from saeuron.method.statistics import ConceptStatistics


def parse_gate(text: str) -> Gate:
    """ "mean" or "others:Z"."""
    kind, _, sigmas = text.partition(":")
    return Gate(kind, float(sigmas) if sigmas else 1.0).check()


def gate_label(gate: Gate) -> str:
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


def gated_shares(stats, codes, concept: str, percentile: float, contrast: str, gate: Gate) -> dict[str, float]:
    """Per concept, the share of its patches (over prompts and steps) where a selected latent of ``concept`` passes."""
    means, target = stats.means(), stats.concepts.index(concept)
    thresholds = gate_thresholds(stats, [i for i in range(len(stats.concepts)) if i != target], gate)  # [T, F]
    table = torch.full_like(thresholds, float("inf"))
    for t in range(len(stats.timesteps)):
        chosen = selected_latents(importance_scores(means[:, t], target, contrast), percentile)
        table[t, chosen] = thresholds[t, chosen]
    shares = {}
    for other, (acts, indices) in codes.items():
        steps = torch.arange(acts.shape[1])[None, :, None, None]
        shares[other] = float((acts > table[steps, indices]).any(-1).float().mean())
    return shares


def heat_map(table: dict[str, dict[str, float]], concepts: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[table[row][c] for c in concepts] for row in table])
    fig, ax = plt.subplots(figsize=(0.8 * len(concepts) + 3.5, 0.4 * len(table) + 1.8), dpi=110)
    image = ax.imshow(values, cmap="magma_r", vmin=0, vmax=1, aspect="auto")
    for i in range(len(table)):
        for j in range(len(concepts)):
            ax.text(
                j,
                i,
                f"{values[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if values[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(concepts)), concepts, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(table)), list(table), fontsize=8)
    ax.set_xlabel("concept whose patches (evaluation prompts, every step) the edit would touch")
    ax.set_title("share of patches where the forgotten concept's selected latents pass the gate", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
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
    parser.add_argument("--benchmark", default="minicanvas")
    parser.add_argument("--model_path", default=None)
    parser.add_argument("--guidance_scale", type=float, default=7.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    gates = [parse_gate(g) for g in args.gates]  # a bad gate or concept fails before the pipeline loads
    stats = ConceptStatistics.load(args.statistics)
    unknown = [c for c in args.concepts if c not in stats.concepts]
    if unknown:
        raise SystemExit(f"{unknown}: the statistics know {stats.concepts}")
    if any(g.kind != "mean" for g in gates):
        stats.firing_moments()  # statistics without them are refused with the fix, before any sampling
    codes = concept_codes(args, stats)
    table = {}
    for concept in args.concepts:
        for gate in gates:
            shares = gated_shares(stats, codes, concept, args.percentile, args.contrast, gate)
            kept = {c: v for c, v in shares.items() if c != concept}
            nearest = max(kept, key=kept.__getitem__)
            print(
                f"{concept:18s} {gate_label(gate):15s} own {shares[concept]:.3f}   kept: mean {sum(kept.values()) / len(kept):.3f}, "
                f"largest {kept[nearest]:.3f} ({nearest})"
            )
            table[f"{concept}, {gate_label(gate)}"] = shares
    if args.json:
        args.json.write_text(json.dumps({"percentile": args.percentile, "contrast": args.contrast, "shares": table}, indent=1))
    if args.out:
        heat_map(table, stats.concepts, args.out)


if __name__ == "__main__":
    main()
