"""What an edit of one block would have to do to redraw a style's images with their objects: the anchor prompt's output
of that block, on the same latents, in place of the style prompt's.

    python benchmarks/block_swap.py --styles Noisy_Texture Neon_Glow [--anchor none] \
        [--block unet.up_blocks.1.attentions.2] [--companions all] [--windows 0:20 2:20] [--fits mean linear] \
        [--seeds 188] [--out FILE]

Every image of a style's own prompts ("An image of {object} in {style} style.") is sampled beside the same prompt
with the style replaced by ``--anchor`` (``none``: the unstyled caption), both from the image's noise; after every
step the anchor row takes the style row's latents again, so both prompts see the same latents at every step. Within a
window of steps (``START:END``, 0 the noisiest) the style row's conditional output of ``--block`` is replaced by the
anchor row's — the *swap*. No edit of the block's output can redraw an image better than that: the swap is the
rendering the UNet itself gives those latents with the other prompt. The images are judged by the benchmark's
classifiers: UA (the style no longer read) and the object accuracy on those images (is the object still drawn?).

``--fits`` asks how much of the swap a map of the block's own output carries: from pairs (style output, anchor
output) recorded on the swapped trajectories of ``--fit_seeds``, per step, ``mean`` adds the mean difference,
``linear`` is the least-squares affine map of the output (ridge ``--ridge``). Each is scored on held-out pairs
(the evaluation images', the share of the swap's change it leaves unexplained) and as an edit of its own within the
first window, sampled without the anchor caption.

``--companions`` swaps and maps other cross-attention blocks as well (``all``: every one), from the step after the
window's first for a block that runs before ``--block`` in a UNet call (:class:`saeuron.method.block_map.CompanionSchedule`:
the gate decides at ``--block``). Only the style's own images are sampled: which images an edit
reaches is the gate's business (``gate_selectivity.py``), not this benchmark's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from saeuron.benchmarks import get_benchmark, prompts
from saeuron.benchmarks.judges import judge_batch
from saeuron.diffusion.hooks import BlockCall, EditFn, HookedPipeline, unet_cross_attention_blocks
from saeuron.evaluation.in_process import Grid, add_grid_arguments, load_grid
from saeuron.evaluation.metrics import object_accuracy, style_accuracy
from saeuron.method.block_map import AffineSums, CompanionSchedule, apply_map, paired_sampling, solve_affine

FITS = ("mean", "linear")
Pairs = dict[int, tuple[Tensor, Tensor]]
"""Step index → (style output, anchor output), ``[patches, channels]`` each, conditional half."""
BlockPairs = dict[str, Pairs]
StepMap = dict[int, Callable[[Tensor], Tensor]]


def parse_window(text: str) -> tuple[int, int]:
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a window is START:END in steps (e.g. 2:20), got {text!r}") from None
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"a window needs 0 <= START < END, got {text!r}")
    return start, end


def swapped_run(
    grid: Grid,
    hooked: HookedPipeline,
    block: str,
    rows: Sequence[dict],
    anchor: str | None,
    window: tuple[int, int],
    batch_size: int = 44,
    companions: Sequence[str] = (),
) -> tuple[Tensor, BlockPairs]:
    """Images of ``rows`` with the block (and ``companions``) swapped in ``window``, and the (style, anchor) output
    pairs of every block and step, ``batch_size`` rows (twice as many prompts) a batch."""
    sampling = {k: v for k, v in grid.sampling.items() if k != "output_type"}
    images: list[Tensor] = []
    pairs: dict[str, dict[int, list[tuple[Tensor, Tensor]]]] = {}

    def keep(path: str, step: int, own: Tensor, other: Tensor) -> None:
        pairs.setdefault(path, {}).setdefault(step, []).append((own.float().clone(), other.float().clone()))

    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        captions = [r["prompt"] for r in chunk]
        anchors = [prompts.eval_prompt(r["object"], anchor) for r in chunk]
        seeds = [r["seed"] for r in chunk]
        images.append(
            paired_sampling(hooked, block, captions, anchors, seeds, window, keep, companions, output_type="pt", **sampling)
        )
    joined = {
        path: {
            t: (torch.cat([s for s, _ in v]).flatten(0, 1), torch.cat([a for _, a in v]).flatten(0, 1)) for t, v in steps.items()
        }
        for path, steps in pairs.items()
    }
    return torch.cat(images), joined


def fit_map(kind: str, pairs: Pairs, ridge: float) -> StepMap:
    """Per step, the style output → anchor output map of ``kind`` fitted on ``pairs``."""
    fitted: StepMap = {}
    for step, (x, y) in pairs.items():
        if kind == "mean":
            shift = (y - x).mean(0)
            fitted[step] = lambda z, shift=shift: z + shift
        else:
            sums = AffineSums.zeros(1, x.shape[-1])
            sums.add(0, x, y)
            weights = solve_affine(sums, ridge)[0][0]
            fitted[step] = lambda z, w=weights: apply_map(w, z)
    return fitted


def mapped_edits(step_maps: dict[str, StepMap], block: str, window: tuple[int, int]) -> dict[str, EditFn]:
    """The fitted maps as edits of the blocks' conditional half, on the swap's schedule: the anchor caption is not
    sampled."""
    schedule = CompanionSchedule(block, [path for path in step_maps if path != block], window)

    def edit_of(path: str) -> EditFn:
        def edit(tokens: Tensor, call: BlockCall) -> Tensor:
            if not schedule.active(path, call.step_index):
                return tokens
            out = tokens.clone()
            out[call.cond_rows] = step_maps[path][call.step_index](tokens[call.cond_rows].float()).to(tokens.dtype)
            return out

        return edit

    return {path: edit_of(path) for path in step_maps}


def unexplained(step_map: StepMap, pairs: Pairs, window: tuple[int, int]) -> float:
    """Share of the swap's change (anchor − style output) the map leaves unexplained, over the window's steps."""
    steps = [t for t in pairs if window[0] <= t < window[1] and t in step_map]
    miss = sum(float((step_map[t](pairs[t][0]) - pairs[t][1]).square().sum()) for t in steps)
    change = sum(float((pairs[t][1] - pairs[t][0]).square().sum()) for t in steps)
    return miss / change


def judged_scores(grid: Grid, images: Tensor, rows: Sequence[dict], style: str) -> dict:
    """UA and the objects kept on a style's own images, as the evaluation reads them (its ``CRA_forgotten``)."""
    judged = judge_batch(grid.judge, images.float(), rows)
    lost = sorted(f"{j['object']}->{j['object_pred']}" for j in judged if j["object_pred"] != j["object"])
    objects = object_accuracy(judged, "styled")
    return {"UA": 1 - style_accuracy(judged)[style], "objects": sum(objects.values()) / len(objects), "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", required=True, help="the styles whose own images are redrawn")
    parser.add_argument("--anchor", default=prompts.UNSTYLED, help="the style whose prompt's block output is swapped in")
    parser.add_argument("--block", default="unet.up_blocks.1.attentions.2", help="the cross-attention block swapped")
    parser.add_argument(
        "--companions", nargs="*", default=[], help="other cross-attention blocks swapped and mapped too ('all': every one)"
    )
    parser.add_argument("--windows", nargs="+", type=parse_window, default=[], help="START:END steps (default: 0:STEPS 2:STEPS)")
    parser.add_argument("--fits", nargs="*", choices=FITS, default=list(FITS))
    parser.add_argument("--fit_seeds", nargs="+", type=int, default=list(range(11, 21)))
    parser.add_argument("--ridge", type=float, default=10.0)
    add_grid_arguments(parser)
    parser.add_argument("--out", default="", help="write the scores as JSON here")
    args = parser.parse_args()
    benchmark = get_benchmark(args.benchmark)
    unknown = [s for s in args.styles if s not in benchmark.styles]
    if unknown or (args.anchor != prompts.UNSTYLED and args.anchor not in benchmark.styles):
        parser.error(f"{unknown or [args.anchor]} not a style of {benchmark.name}: {list(benchmark.styles)} (anchor: or 'none')")
    if args.anchor in args.styles:
        parser.error(f"the anchor {args.anchor} is one of --styles; swap a style for another")
    args.windows = args.windows or [(0, args.steps), (2, args.steps)]
    if max(end for _, end in args.windows) > args.steps:
        parser.error(f"a window ends after the last of {args.steps} steps: {args.windows}")
    if set(args.fit_seeds) & set(args.seeds):
        parser.error(f"--fit_seeds {args.fit_seeds} overlap the evaluation --seeds {args.seeds}: the fit must be held out")
    grid = load_grid(args)
    hooked = HookedPipeline(grid.pipe)
    every_block = list(unet_cross_attention_blocks(grid.pipe.unet))
    if args.companions == ["all"]:
        args.companions = [b for b in every_block if b != args.block]
    hooked.validate_hookpoints([args.block, *args.companions])
    if args.block in args.companions:
        parser.error(f"--block {args.block} is also among --companions; they are the other blocks")
    blocks = " + " + str(len(args.companions)) + " blocks" if args.companions else ""
    anchor = None if args.anchor == prompts.UNSTYLED else args.anchor
    started, results = time.perf_counter(), []

    def generate(rows: list[dict], edits: dict | None) -> Tensor:
        batches = range(0, len(rows), args.batch_size)
        chunks = [rows[i : i + args.batch_size] for i in batches]
        return torch.cat(
            [
                hooked.generate([r["prompt"] for r in c], [r["seed"] for r in c], edits=edits, **grid.sampling).images
                for c in chunks
            ]
        )

    def report(style: str, edit: str, images: Tensor, rows: list[dict], **extra) -> None:
        scores = {"style": style, "anchor": args.anchor, "edit": edit, **extra, **judged_scores(grid, images, rows, style)}
        results.append(scores)
        more = "".join(f" {k} {v:.3f}" for k, v in extra.items())
        print(f"  {edit}: UA {scores['UA']:.3f} objects {scores['objects']:.3f}{more}  lost {scores['lost']}", flush=True)

    for style in args.styles:
        rows = [r for r in grid.rows if r["style"] == style]
        print(f"{style} ({len(rows)} images) at {args.block}, anchor {args.anchor}", flush=True)
        report(style, "unedited", generate(rows, None), rows)
        held: BlockPairs = {}
        for window in args.windows:
            images, pairs = swapped_run(grid, hooked, args.block, rows, anchor, window, args.batch_size, args.companions)
            held = held or pairs  # the first window's: the one the fits are scored on
            report(style, f"swap {window[0]}:{window[1]}{blocks}", images, rows)
        if not args.fits:
            continue
        fit_rows = [
            {"prompt": prompts.eval_prompt(o, style), "object": o, "seed": s} for o in benchmark.objects for s in args.fit_seeds
        ]
        first = args.windows[0]
        _, fit_pairs = swapped_run(grid, hooked, args.block, fit_rows, anchor, first, args.batch_size, args.companions)
        for kind in args.fits:
            step_maps = {path: fit_map(kind, pairs, args.ridge) for path, pairs in fit_pairs.items()}
            images = generate(rows, mapped_edits(step_maps, args.block, first))
            shares = {path: unexplained(step_maps[path], held[path], first) for path in step_maps}
            companions = {f"unexplained {path}": share for path, share in shares.items() if path != args.block}
            report(style, f"{kind} fit {first[0]}:{first[1]}{blocks}", images, rows, unexplained=shares[args.block], **companions)
    print(f"\nseeds {args.seeds}, {time.perf_counter() - started:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
