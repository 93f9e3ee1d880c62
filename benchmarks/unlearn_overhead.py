"""Cost of the unlearning hook: sampling with a recipe (correct error mode) vs plain sampling.

    python benchmarks/unlearn_overhead.py [--steps 10] [--repeats 3]

Two settings, same prompts and seeds on both sides of each ratio:
- MiniCanvas: the shipped pipeline with an SAE of its style block (F = 1,024, k = 8) and a recipe of
  a few rules per timestep;
- an SD-shaped block: a randomly initialised UNet whose ``up_blocks.1.attentions.1`` has 1,280
  channels at 16×16 patches (SD v1's shape), with a random F = 20,480, k = 32 SAE and 3 rules per
  timestep, for a handful of steps.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from saeuron.benchmarks.minicanvas import load_minicanvas
from saeuron.diffusion.hooks import HookedPipeline
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.method.selection import Rules
from saeuron.method.statistics import sae_fingerprint
from saeuron.sae import Sae, SaeConfig

HOOK = "unet.up_blocks.1.attentions.1"


def random_recipe(sae: Sae, timesteps: list[int], per_step: int) -> Recipe:
    g = torch.Generator().manual_seed(0)
    n = len(timesteps) * per_step
    rules = Rules(
        torch.arange(len(timesteps)).repeat_interleave(per_step),
        torch.randint(sae.num_latents, (n,), generator=g),
        -torch.rand(n, generator=g),
        torch.zeros(n),
        torch.zeros(n, dtype=torch.long),
    )
    return Recipe(HOOK, "random", sae_fingerprint(sae), "benchmark", {}, timesteps, rules)


def sd_shaped_pipeline(minicanvas_pipe: StableDiffusionPipeline) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=minicanvas_pipe.text_encoder.config.hidden_size,
        attention_head_dim=8,
    )
    pipe = StableDiffusionPipeline(
        vae=minicanvas_pipe.vae,
        text_encoder=minicanvas_pipe.text_encoder,
        tokenizer=minicanvas_pipe.tokenizer,
        unet=unet,
        scheduler=minicanvas_pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(hooked: HookedPipeline, prompts, seeds, steps, edits, repeats) -> float:
    hooked.generate(prompts, seeds, num_inference_steps=2, output_type="latent", edits=edits)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        hooked.generate(prompts, seeds, num_inference_steps=steps, output_type="latent", edits=edits)
        best = min(best, time.perf_counter() - start)
    return best


def ratio(name: str, pipe, sae: Sae, prompts, seeds, steps, repeats, per_step) -> None:
    hooked = HookedPipeline(pipe)
    pipe.scheduler.set_timesteps(steps)
    recipe = random_recipe(sae, pipe.scheduler.timesteps.tolist(), per_step)
    plain = timed(hooked, prompts, seeds, steps, None, repeats)
    edited = timed(hooked, prompts, seeds, steps, {HOOK: UnlearningEdit(sae, recipe)}, repeats)
    print(f"{name}: plain {plain:.2f}s, with hook {edited:.2f}s, ratio {edited / plain:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sd_steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_minicanvas().load_pipeline()
    torch.manual_seed(0)
    prompts = [f"An image of {o} in Neon Glow style." for o in ("Stars", "Rings", "Hearts", "Circles")] * 4
    seeds = list(range(len(prompts)))
    ratio(
        "MiniCanvas (64 ch, 8x8, F=1,024, 10 rules/step)",
        pipe,
        Sae(64, SaeConfig(expansion_factor=16, k=8)),
        prompts,
        seeds,
        args.steps,
        args.repeats,
        per_step=10,
    )
    ratio(
        "SD-shaped block (1280 ch, 16x16, F=20,480, 3 rules/step)",
        sd_shaped_pipeline(pipe),
        Sae(1280, SaeConfig(expansion_factor=16, k=32)),
        prompts[:2],
        seeds[:2],
        args.sd_steps,
        args.repeats,
        per_step=3,
    )


if __name__ == "__main__":
    main()
