"""How well the shipped pipeline draws MiniCanvas's concepts, judged by the shipped classifier.

    python -m saeuron.benchmarks.minicanvas.quality [--seeds_per_prompt 4] [--grid grid.png]

Generates every "An image of {Object} in {Style} style." and "An image of {Object}." prompt with
the default sampler and reports per-style and per-object accuracy on the generated images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saeuron.benchmarks.judges import MiniCanvasJudge, judge_batch
from saeuron.benchmarks.minicanvas.classifier import MiniCanvasClassifier
from saeuron.benchmarks.minicanvas.concepts import NO_STYLE, OBJECTS, STYLES, eval_prompt
from saeuron.benchmarks.minicanvas.render import render_grid
from saeuron.diffusion.hooks import HookedPipeline

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
JUDGE_BATCH = 256


@dataclass
class GenerationQuality:
    style_accuracy: dict[str, float]
    """Per style: fraction of its styled images classified as that style."""
    object_accuracy: dict[str, float]
    """Per object: fraction of its images (styled and unstyled) classified as that object."""
    unstyled_none_rate: float
    """Fraction of unstyled images classified as "none"."""
    images: int
    grid: list[list[np.ndarray]] = field(repr=False, default_factory=list)

    @property
    def mean_style_accuracy(self) -> float:
        return float(np.mean(list(self.style_accuracy.values())))

    @property
    def mean_object_accuracy(self) -> float:
        return float(np.mean(list(self.object_accuracy.values())))

    def table(self) -> str:
        lines = ["| concept | accuracy |", "|---|---|"]
        lines += [f"| {name} (style) | {acc:.1%} |" for name, acc in self.style_accuracy.items()]
        lines += [f"| {name} (object) | {acc:.1%} |" for name, acc in self.object_accuracy.items()]
        lines.append(f"| unstyled → none | {self.unstyled_none_rate:.1%} |")
        lines.append(f"| **mean style / object** | **{self.mean_style_accuracy:.1%} / {self.mean_object_accuracy:.1%}** |")
        return "\n".join(lines)


@torch.no_grad()
def measure_generation_quality(
    pipe,
    classifier: MiniCanvasClassifier,
    seeds: list[int],
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 88,
    edits: dict | None = None,
) -> GenerationQuality:
    """``edits`` ({hookpoint: edit function}) are applied while sampling, e.g. an unlearning edit."""
    hooked = HookedPipeline(pipe)
    jobs = [(style, obj, seed) for style in (*STYLES, NO_STYLE) for obj in OBJECTS for seed in seeds]
    batches: list[torch.Tensor] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        out = hooked.generate(
            [eval_prompt(obj, style) for style, obj, _ in chunk],
            [seed for *_, seed in chunk],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            output_type="pt",
            edits=edits,
        )
        batches.append(out.images.float().cpu())
    images = torch.cat(batches)
    judge, rows = MiniCanvasJudge(classifier), [{"style": style, "object": obj, "seed": seed} for style, obj, seed in jobs]
    judged = [
        r
        for start in range(0, len(rows), JUDGE_BATCH)
        for r in judge_batch(judge, images[start : start + JUDGE_BATCH], rows[start : start + JUDGE_BATCH])
    ]

    def accuracy(which: list[int], key: str, label: str) -> float:
        return float(np.mean([judged[i][key] == label for i in which]))

    style_acc = {s: accuracy([i for i, j in enumerate(jobs) if j[0] == s], "style_pred", s) for s in STYLES}
    object_acc = {o: accuracy([i for i, j in enumerate(jobs) if j[1] == o], "object_pred", o) for o in OBJECTS}
    unstyled = [i for i, j in enumerate(jobs) if j[0] == NO_STYLE]
    pictures = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    first_seed = [i for i, j in enumerate(jobs) if j[2] == seeds[0]]
    grid = [[pictures[i] for i in first_seed[r * len(OBJECTS) : (r + 1) * len(OBJECTS)]] for r in range(len(STYLES) + 1)]
    return GenerationQuality(style_acc, object_acc, accuracy(unstyled, "style_pred", NO_STYLE), len(jobs), grid)


def main() -> None:
    import argparse

    from saeuron.benchmarks.minicanvas import load_minicanvas

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds_per_prompt", type=int, default=4)
    parser.add_argument("--first_seed", type=int, default=188)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--grid", default=None, help="write the styles × objects grid (first seed) to this PNG")
    parser.add_argument("--weights", default=None, help="a MiniCanvas weights folder (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    minicanvas = load_minicanvas(args.weights) if args.weights else load_minicanvas()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds_per_prompt))
    quality = measure_generation_quality(
        minicanvas.load_pipeline(), minicanvas.load_classifier(), seeds, args.steps, args.guidance
    )
    print(f"{quality.images} generated images, DDIM {args.steps} steps, CFG {args.guidance}, seeds {seeds}")
    print(quality.table())
    if args.grid:
        render_grid(quality.grid, scale=3).save(args.grid)
        print(f"grid -> {args.grid}")


if __name__ == "__main__":
    main()
