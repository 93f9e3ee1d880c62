"""Cost of the unlearning edit and of capturing a block, against plain sampling, side by side in one run.

    python benchmarks/unlearn_overhead.py --device cpu                          # MiniCanvas + an SD-shaped block
    python benchmarks/unlearn_overhead.py --device cuda --dtype float16 --setting sd15

Settings (same prompts and seeds for every variant of one setting):
- ``minicanvas``: the shipped pipeline, an SAE of its 64-channel style block (F = 1,024, k = 8), 10 rules a step;
- ``sd-block``: a small random UNet whose ``up_blocks.1.attentions.1`` has SD v1's 1,280 channels at 16×16;
- ``sd15``: a randomly initialised UNet of SD v1.5's architecture (860 M parameters) and a random CLIP text
  encoder of SD's shape, 8 images with classifier-free guidance, DDIM 50 (a GPU setting).

Variants: plain sampling; the edit at ``up_blocks.1.attentions.1`` (random F = 20,480, k = 32 SAE for the SD
settings) with the SAE in the pipeline's dtype (the default when a pipeline loads an SAE) and 3 or 200 rules a
step; the same with the SAE in fp32; capturing the block's conditional half to the host at every step. Variants
take turns in rounds and the median round counts. Latents only: the VAE is not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a bare checkout (the GPU machine)

from diffusers import StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402

from saeuron.benchmarks.minicanvas import load_minicanvas  # noqa: E402
from saeuron.diffusion.hooks import HookedPipeline  # noqa: E402
from saeuron.diffusion.pipeline import resolve_dtype  # noqa: E402
from saeuron.method.edit import UnlearningEdit  # noqa: E402
from saeuron.method.recipe import Recipe  # noqa: E402
from saeuron.method.selection import Rules  # noqa: E402
from saeuron.method.statistics import sae_fingerprint  # noqa: E402
from saeuron.sae import Sae, SaeConfig  # noqa: E402

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


def with_unet(minicanvas: StableDiffusionPipeline, unet: UNet2DConditionModel, text_encoder=None) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=minicanvas.vae,
        text_encoder=text_encoder or minicanvas.text_encoder,
        tokenizer=minicanvas.tokenizer,
        unet=unet,
        scheduler=minicanvas.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_block_unet(cross_attention_dim: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def sd15_pipeline(minicanvas: StableDiffusionPipeline) -> StableDiffusionPipeline:
    from transformers import CLIPTextConfig, CLIPTextModel

    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(minicanvas.tokenizer),
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=max(77, minicanvas.tokenizer.model_max_length),
            bos_token_id=minicanvas.tokenizer.bos_token_id,
            eos_token_id=minicanvas.tokenizer.eos_token_id,
            pad_token_id=minicanvas.tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD v1's UNet
    return with_unet(minicanvas, unet, text)


def run_once(hooked: HookedPipeline, prompts: list[str], steps: int, **hooks) -> float:
    start = time.perf_counter()
    hooked.generate(prompts, list(range(len(prompts))), num_inference_steps=steps, output_type="latent", **hooks)
    if hooked.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, pipe, sae: Sae, prompts: list[str], steps: int, rounds: int) -> dict[str, float]:
    hooked = HookedPipeline(pipe)
    pipe.scheduler.set_timesteps(steps)
    timesteps = pipe.scheduler.timesteps.tolist()
    in_pipe_dtype = sae.to(device=hooked.device, dtype=hooked.dtype)
    variants: dict[str, dict] = {
        "plain": {},
        "edit, 3 rules/step": {"edits": {HOOK: UnlearningEdit(in_pipe_dtype, random_recipe(sae, timesteps, 3))}},
        "edit, 200 rules/step": {"edits": {HOOK: UnlearningEdit(in_pipe_dtype, random_recipe(sae, timesteps, 200))}},
    }
    if hooked.dtype != torch.float32:
        fp32 = Sae(sae.d_in, sae.cfg, device=hooked.device)
        fp32.load_state_dict(in_pipe_dtype.state_dict())
        variants["edit, 3 rules/step, SAE fp32"] = {
            "edits": {HOOK: UnlearningEdit(fp32, random_recipe(fp32, timesteps, 3), check_fingerprint=False)}
        }
    variants["capture cond half to host"] = {"capture": [HOOK], "capture_device": "cpu"}
    for hooks in variants.values():
        run_once(hooked, prompts, 2, **hooks)  # warm-up
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant, hooks in variants.items():
            times[variant].append(run_once(hooked, prompts, steps, **hooks))
    median = {variant: statistics.median(values) for variant, values in times.items()}
    print(f"{name}: plain {median['plain']:.3f}s", flush=True)
    for variant, seconds in median.items():
        if variant != "plain":
            print(f"  {variant:>30}: {seconds:.3f}s  {seconds / median['plain']:.3f}x plain", flush=True)
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="the pipeline's dtype: float32, float16, bfloat16 or auto")
    parser.add_argument("--setting", choices=("minicanvas", "sd-block", "sd15"), action="append", default=None)
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50 for sd15, 10 otherwise)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    dtype = resolve_dtype(args.dtype, args.device)
    settings = args.setting or ["minicanvas", "sd-block"]
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu (1 thread)"
    print(f"unlearning edit and capture overhead on {device_name}, pipeline {args.dtype}, torch {torch.__version__}", flush=True)
    minicanvas = load_minicanvas().load_pipeline()
    figures: dict[str, object] = {"device": device_name, "dtype": args.dtype}
    torch.manual_seed(0)
    objects = ("Stars", "Rings", "Hearts", "Circles")
    for setting in settings:
        torch.manual_seed(0)
        if setting == "minicanvas":
            pipe, sae, count = minicanvas, Sae(64, SaeConfig(expansion_factor=16, k=8)), 16
        elif setting == "sd-block":
            pipe = with_unet(minicanvas, sd_block_unet(minicanvas.text_encoder.config.hidden_size))
            sae, count = Sae(1280, SaeConfig(expansion_factor=16, k=32)), 2
        else:
            pipe, sae, count = sd15_pipeline(minicanvas), Sae(1280, SaeConfig(expansion_factor=16, k=32)), 8
        pipe = pipe.to(args.device, dtype)
        prompts = [f"An image of {objects[i % 4]} in Neon Glow style." for i in range(count)]
        steps = args.steps or (50 if setting == "sd15" else 10)
        label = f"{setting} ({count} images, CFG, {steps} steps, SAE F={sae.num_latents} k={sae.cfg.k})"
        figures[setting] = measure(label, pipe, sae, prompts, steps, args.rounds)
        del pipe
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
