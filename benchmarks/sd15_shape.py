"""The method's stages at SD v1.5's shape, with the library alone (no Ray, no MLflow): time and memory per stage.

    python benchmarks/sd15_shape.py --device cuda                 # random SD v1.5 UNet, fp16, 512 px, DDIM 50
    python benchmarks/sd15_shape.py --device cpu --shape tiny     # the shipped MiniCanvas pipeline, to check it

Stages, in the study's order: capture both paper hookpoints (``up_blocks.1.attentions.1`` and ``.2``, the
conditional half, every step) over the collection prompts; train an F = 20,480, k = 32 TopK SAE on the captured
vectors of ``.1`` for a few hundred steps; gather per-concept statistics (patch-mean latents per timestep) over a
few prompts per concept; build a recipe; sample with it. The weights are random, so the figures are about
speed and memory, not about forgetting. Images stay latents (512 px ⇒ 64×64): the VAE is not the method's cost.
On the GPU machine this needs diffusers (and its importlib-metadata) as wheels; see ``gpu_session.sh``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a bare checkout (the GPU machine)

from saeuron.benchmarks.minicanvas import load_minicanvas  # noqa: E402
from saeuron.diffusion.hooks import HookedPipeline  # noqa: E402
from saeuron.diffusion.pipeline import resolve_dtype  # noqa: E402
from saeuron.method.edit import UnlearningEdit  # noqa: E402
from saeuron.method.recipe import Recipe  # noqa: E402
from saeuron.method.statistics import ConceptStatistics, patch_mean_latents  # noqa: E402
from saeuron.sae import Sae, SaeConfig  # noqa: E402
from saeuron.sae.trainer import SaeTrainConfig, SaeTrainer  # noqa: E402

HOOKS = ("unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2")
CONCEPTS = ("Van_Gogh", "Monet", "Pop_Art", "Ukiyoe")
OBJECTS = ("Dogs", "Cats", "Trees", "Towers")


@contextmanager
def stage(name: str, figures: dict, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    record: dict = {}
    yield record
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        record["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    record["seconds"] = time.perf_counter() - started
    figures[name] = record
    extra = "  ".join(f"{k} {v:,.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
    print(f"  {name:>8}: {extra}", flush=True)


def pipeline_for(shape: str, device: str, dtype: torch.dtype):
    minicanvas = load_minicanvas().load_pipeline()
    if shape == "tiny":
        return minicanvas.to(device, dtype)
    from unlearn_overhead import sd15_pipeline  # the random SD v1.5 UNet and text encoder

    return sd15_pipeline(minicanvas).to(device, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--dtype", default="auto", help="the pipeline's dtype (auto: float16 on a GPU)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of every stage")
    parser.add_argument("--prompts", type=int, default=16, help="collection prompts")
    parser.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    dtype = resolve_dtype(args.dtype, "cuda" if args.device.startswith("cuda") else "cpu")
    torch.manual_seed(0)
    figures: dict = {"device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"}
    with stage("load", figures, args.device) as record:
        hooked = HookedPipeline(pipeline_for(args.shape, args.device, dtype))
        record["unet_parameters_m"] = sum(p.numel() for p in hooked.pipe.unet.parameters()) / 1e6
    print(f"{args.shape} on {figures['device']}, {dtype}, DDIM {args.steps}, {args.prompts} prompts", flush=True)

    def generate(prompts: list[str], seeds: list[int], **hooks) -> dict:
        captures: dict = {}
        for start in range(0, len(prompts), args.batch):
            out = hooked.generate(
                prompts[start : start + args.batch],
                seeds[start : start + args.batch],
                num_inference_steps=args.steps,
                guidance_scale=9.0,
                output_type="latent",
                **hooks,
            )
            for hookpoint, capture in out.captures.items():
                captures.setdefault(hookpoint, []).append(capture)
        return captures

    prompts = [f"An image of {OBJECTS[i % 4]} in {CONCEPTS[i // 4 % 4].replace('_', ' ')} style." for i in range(args.prompts)]
    with stage("capture", figures, args.device) as record:
        captured = generate(prompts, list(range(len(prompts))), capture=list(HOOKS))
        vectors = {
            h: torch.cat([c.stacked() for c in caps]).reshape(-1, caps[0].maps[0].shape[-1]) for h, caps in captured.items()
        }
        record["vectors_per_hookpoint"] = len(vectors[HOOKS[0]])
        record["host_gib"] = sum(v.numel() * v.element_size() for v in vectors.values()) / 2**30

    d = vectors[HOOKS[0]].shape[1]
    with stage("train", figures, args.device) as record:
        sae = Sae(d, SaeConfig(expansion_factor=16, k=32), device=args.device)
        trainer = SaeTrainer(sae, SaeTrainConfig(), total_steps=args.train_steps)
        data = vectors[HOOKS[0]]
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        for step in range(args.train_steps):
            batch = data[order[(step * 4096) % max(len(data) - 4096, 1) :][:4096]]
            result = trainer.step(batch.to(args.device, non_blocking=True).float())
        record["final_fvu"] = result.metrics().fvu
    figures["train"]["vectors_per_second"] = args.train_steps * min(4096, len(data)) / figures["train"]["seconds"]

    sae = sae.to(dtype=dtype)  # inference in the pipeline's dtype
    with stage("gather", figures, args.device) as record:
        timesteps = _timesteps(hooked, args.steps)
        stats = ConceptStatistics.empty(
            HOOKS[0], list(CONCEPTS), timesteps, sae.num_latents, "benchmark", sae.fingerprint(), "style", "topk"
        )
        for concept in CONCEPTS:
            concept_prompts = [f"An image of {o} in {concept.replace('_', ' ')} style." for o in OBJECTS]
            (capture,) = generate(concept_prompts, list(range(len(concept_prompts))), capture=[HOOKS[0]])[HOOKS[0]]
            for i, timestep in enumerate(capture.timesteps):
                latents = patch_mean_latents(sae, capture.maps[i].to(args.device))
                stats.add(concept, timestep, latents.sum(0), len(latents))
        record["prompts"] = len(CONCEPTS) * len(OBJECTS)

    with stage("recipe", figures, args.device) as record:
        recipe = Recipe.from_statistics(stats, {CONCEPTS[0]: (99.0, -1.0)}, "random-sd15")
        record["rules"] = len(recipe.rules)

    with stage("sample", figures, args.device) as record:
        edit = UnlearningEdit(sae, recipe)
        generate(prompts[: args.batch], list(range(args.batch)), edits={HOOKS[0]: edit})
        record["images"] = args.batch
    with stage("plain", figures, args.device) as record:
        generate(prompts[: args.batch], list(range(args.batch)))
        record["images"] = args.batch
    print(f"  sampling with the recipe: {figures['sample']['seconds'] / figures['plain']['seconds']:.3f}x plain", flush=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


def _timesteps(hooked: HookedPipeline, steps: int) -> list[int]:
    hooked.pipe.scheduler.set_timesteps(steps)
    return [int(t) for t in hooked.pipe.scheduler.timesteps]


if __name__ == "__main__":
    main()
