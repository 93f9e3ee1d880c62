"""Does the pipeline's dtype move the scores? MiniCanvas unlearned with the same recipes in fp32 and in fp16.

    python benchmarks/edit_precision.py --saes runs/minicanvas/saes/<run> --recipes runs/minicanvas/search/<run>/recipes

Each recipe's SAE runs in the pipeline's dtype (what a pipeline does when it loads one). For every dtype the
original and each unlearned model sample MiniCanvas's evaluation prompts on the same seeds, the shipped
classifiers judge them, and the scores (UA, IRA, CRA) are printed side by side with how often the two dtypes'
images get the same labels and their mean absolute pixel difference. fp16 needs a GPU; on a CPU compare
fp32 with bf16 (``--dtypes float32 bfloat16``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a bare checkout (the GPU machine)

from saeuron.benchmarks import get_benchmark  # noqa: E402
from saeuron.benchmarks.judges import judge_batch  # noqa: E402
from saeuron.benchmarks.minicanvas import load_minicanvas  # noqa: E402
from saeuron.diffusion.hooks import HookedPipeline  # noqa: E402
from saeuron.diffusion.pipeline import resolve_dtype  # noqa: E402
from saeuron.evaluation.metrics import forgetting_scores  # noqa: E402
from saeuron.method.edit import UnlearningEdit  # noqa: E402
from saeuron.method.recipe import Recipe  # noqa: E402
from saeuron.sae import Sae  # noqa: E402
from saeuron.sections import JudgeConfig, SamplingConfig  # noqa: E402


def sample(hooked: HookedPipeline, rows, edits, sampling: SamplingConfig, batch: int) -> torch.Tensor:
    images = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        out = hooked.generate(
            [r.prompt for r in chunk],
            [r.seed for r in chunk],
            num_inference_steps=sampling.num_inference_steps,
            guidance_scale=sampling.guidance_scale,
            edits=edits,
            output_type="pt",
        )
        images.append(out.images.float().cpu())
    return torch.cat(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saes", type=Path, required=True, help="folder of <hookpoint>/ SAE folders")
    parser.add_argument("--recipes", type=Path, required=True, help="folder of <concept>/ recipe folders")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1001, 1002])
    parser.add_argument("--batch", type=int, default=88)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    bench = get_benchmark("minicanvas")
    rows = bench.evaluation_prompt_rows(args.seeds)
    sampling = SamplingConfig(num_inference_steps=10, guidance_scale=7.5)  # the MiniCanvas study's sampling
    judge = bench.load_judge(JudgeConfig(), args.device)
    recipes = {p.name: Recipe.load(p) for p in sorted(args.recipes.iterdir()) if (p / "recipe.json").is_file()}
    if not recipes:
        raise SystemExit(f"no <concept>/recipe.json under {args.recipes}")
    print(f"{len(rows)} images a model, seeds {args.seeds}, on {args.device}; recipes {list(recipes)}", flush=True)
    images: dict[str, dict[str, torch.Tensor]] = {}
    figures: dict[str, dict] = {}
    for dtype_name in args.dtypes:
        dtype = resolve_dtype(dtype_name, args.device)
        hooked = HookedPipeline(load_minicanvas().load_pipeline(args.device, dtype))
        images[dtype_name] = {"original": sample(hooked, rows, None, sampling, args.batch)}
        for concept, recipe in recipes.items():
            sae = Sae.load_from_disk(args.saes / recipe.hookpoint, device=args.device, dtype=dtype)
            edits = {recipe.hookpoint: UnlearningEdit(sae, recipe)}
            images[dtype_name][concept] = sample(hooked, rows, edits, sampling, args.batch)
        for model, pictures in images[dtype_name].items():
            judged = judge_batch(judge, pictures.to(args.device), [r.as_dict() for r in rows])
            labels = [(j["style_pred"], j["object_pred"]) for j in judged]
            figures.setdefault(model, {})[dtype_name] = {"labels": labels}
            if model != "original":
                s = forgetting_scores(judged, bench.concept_kind(model), [model])
                figures[model][dtype_name].update(ua=s.ua, ira=s.ira, cra=s.cra)
    reference = args.dtypes[0]
    for model, by_dtype in figures.items():
        reference_labels = by_dtype[reference]["labels"]
        for dtype_name, entry in by_dtype.items():
            same = sum(a == b for a, b in zip(entry.pop("labels"), reference_labels)) / len(rows)
            diff = float((images[dtype_name][model] - images[reference][model]).abs().mean())
            entry.update(same_labels_as_reference=same, mean_abs_pixel_diff=diff)
            scores = f"UA {entry['ua']:.3f} IRA {entry['ira']:.3f} CRA {entry['cra']:.3f}  " if "ua" in entry else ""
            print(
                f"  {model:>10} {dtype_name:>5}: {scores}labels as {reference} {same:.3f}, mean |Δpixel| {diff:.4f}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
