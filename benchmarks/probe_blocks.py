"""Where a concept lives: per-patch linear probes for style and object, by block and denoising step.

    python benchmarks/probe_blocks.py --activations runs/probe [--hookpoints ...] [--device cpu|cuda] [--out probes.json]

Reads a collected activation dataset (``jobs/collect.py --hookpoints`` with the blocks to compare) and,
for every hookpoint and step, fits a softmax-regression probe from ONE patch (the SAE's unit) to the
prompt's style label (the styles and "none") and to its object, on the training prompts, scored on
the held-out prompts (the collection's prompt-level split). Also reports each style's recall (which
styles one patch can tell apart where) and how well the object can be read off the patches of each
style's own images. The probes are plain torch (full-batch L-BFGS on standardised features).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from saeuron.collection import activations
from saeuron.collection.dataset import dataset_info, in_validation

NONE = "none"


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-3, iterations: int = 60) -> torch.nn.Linear:
    """A softmax-regression probe on standardised ``x``; L-BFGS, deterministic."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes, dtype=torch.float64, device=x.device)
    torch.nn.init.zeros_(probe.weight), torch.nn.init.zeros_(probe.bias)
    optim = torch.optim.LBFGS(probe.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optim.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    optim.step(closure)
    return probe


def load_maps(root: str, hookpoint: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The hookpoint's maps ``[rows, patches, d]`` (float32) and their labels."""
    d_in = dataset_info(root, hookpoint)["d_in"][hookpoint]
    table = activations.read_hookpoint(root, hookpoint, ["prompt_id", "style", "object", "step_index", "activations"])
    vectors = activations.binary_to_vectors(table.column("activations"), d_in).astype(np.float32)
    maps = vectors.reshape(table.num_rows, -1, d_in)
    labels = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("prompt_id", "style", "object", "step_index")}
    labels["style"] = np.array([s if s else NONE for s in labels["style"]])
    return maps, labels


def probe_hookpoint(root: str, hookpoint: str, validation_fraction: float, device: str = "cpu") -> dict:
    maps, labels = load_maps(root, hookpoint)
    held_out = in_validation(labels["prompt_id"], validation_fraction)
    styles, objects = sorted(set(labels["style"])), sorted(set(labels["object"]))
    out: dict = {"steps": {}, "patches": maps.shape[1], "d_in": maps.shape[2]}
    for step in sorted(set(labels["step_index"].tolist())):
        at = labels["step_index"] == step
        step_out = {}
        for target, names in (("style", styles), ("object", objects)):
            y_rows = np.searchsorted(names, labels[target][at])
            x = torch.from_numpy(maps[at]).to(device, torch.float64)  # [rows, P, d]
            train, test = ~held_out[at], held_out[at]
            mean, std = x[train].mean((0, 1)), x[train].std((0, 1)) + 1e-6
            x = (x - mean) / std
            patches = x.shape[1]
            y = torch.from_numpy(y_rows).to(device).repeat_interleave(patches)
            flat = x.reshape(-1, x.shape[-1])
            train_p, test_p = np.repeat(train, patches), np.repeat(test, patches)
            probe = fit_probe(flat[train_p], y[train_p], len(names))
            with torch.no_grad():
                hit = (probe(flat[test_p]).argmax(1) == y[test_p]).double().reshape(-1, patches).mean(1).cpu().numpy()
            style_of_row = labels["style"][at][test]
            per_style = {s: float(hit[style_of_row == s].mean()) for s in styles if (style_of_row == s).any()}
            step_out[target] = {"accuracy": float(hit.mean()), "by_style": per_style}
        out["steps"][int(step)] = step_out
    return out


def summarise(results: dict[str, dict]) -> dict[str, dict]:
    """Per hookpoint: accuracies averaged over early / middle / late thirds of the steps and per style."""
    summary = {}
    for hookpoint, result in results.items():
        steps = sorted(result["steps"])
        thirds = np.array_split(np.array(steps), 3)
        row: dict = {}
        for target in ("style", "object"):
            row[target] = [float(np.mean([result["steps"][s][target]["accuracy"] for s in part])) for part in thirds]
            by_style = defaultdict(list)
            for s in steps:
                for style, value in result["steps"][s][target]["by_style"].items():
                    by_style[style].append(value)
            row[f"{target}_by_style"] = {style: float(np.mean(v)) for style, v in by_style.items()}
        summary[hookpoint] = row
    return summary


def print_summary(summary: dict[str, dict]) -> None:
    print("per-patch probe accuracy on held-out prompts (early / middle / late thirds of the steps)")
    print(f"{'hookpoint':34} {'style':>20} {'object':>20}")
    for hookpoint, row in summary.items():
        cells = ["/".join(f"{v:.2f}" for v in row[target]) for target in ("style", "object")]
        print(f"{hookpoint:34} {cells[0]:>20} {cells[1]:>20}")
    styles = sorted(next(iter(summary.values()))["style_by_style"])
    short = [h.replace("unet.", "").replace("attentions", "attn") for h in summary]
    print("\nper style, mean over steps: style recall | object accuracy on that style's own images")
    print(f"{'style':18} " + " ".join(f"{h:>22}" for h in short))
    for style in styles:
        cells = [f"{row['style_by_style'][style]:.2f} | {row['object_by_style'][style]:.2f}" for row in summary.values()]
        print(f"{style:18} " + " ".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activations", required=True, help="a collection folder (jobs/collect.py)")
    parser.add_argument("--hookpoints", nargs="*", default=None, help="default: every hookpoint collected")
    parser.add_argument("--validation_fraction", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the probes are fitted")
    parser.add_argument("--out", default="", help="write the per-step results and the summary as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    manifest = activations.read_manifest(args.activations)
    if manifest is None:
        parser.error(f"{args.activations} is not a collection (no manifest): run jobs/collect.py first")
    hookpoints = args.hookpoints or sorted(manifest["d_in"])
    missing = [h for h in hookpoints if h not in manifest["d_in"]]
    if missing:
        parser.error(f"{args.activations} has no activations for {missing}; it has {sorted(manifest['d_in'])}")
    results = {}
    for hookpoint in hookpoints:
        results[hookpoint] = probe_hookpoint(args.activations, hookpoint, args.validation_fraction, args.device)
        print(f"probed {hookpoint}", flush=True)
    summary = summarise(results)
    print_summary(summary)
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "steps": results}, indent=1))


if __name__ == "__main__":
    main()
