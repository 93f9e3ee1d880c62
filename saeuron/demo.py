"""The demo: block activations of the embedded pipeline → a TopK SAE → its metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .hooks import HookedPipeline
from .minicanvas import load_minicanvas
from .templates import eval_prompt
from .sae import Sae, SaeConfig
from .sae.trainer import SaeTrainConfig, SaeTrainer

DEMO_PROMPTS = [eval_prompt(obj, style) for obj in ("Circles", "Stars", "Rings", "Hearts") for style in ("Polka_Dots", "Neon_Glow", "Mosaic_Tiles", None)]


@dataclass
class DemoConfig:
    hookpoint: str = "unet.up_blocks.1.attentions.1"
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    seeds_per_prompt: int = 2
    expansion_factor: int = 8
    k: int = 8
    train_steps: int = 300
    batch_size: int = 1024
    lr: float = 2e-3
    seed: int = 0


def run_demo(cfg: DemoConfig) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    hooked = HookedPipeline(load_minicanvas().load_pipeline())
    prompts = [p for p in DEMO_PROMPTS for _ in range(cfg.seeds_per_prompt)]
    seeds = [cfg.seed + i for i in range(len(prompts))]
    captured = hooked.generate(
        prompts, seeds, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
        capture=[cfg.hookpoint], output_type="latent",
    ).captures[cfg.hookpoint]
    vectors = captured.stacked().reshape(-1, captured.maps[0].shape[-1]).float()
    print(f"collected {vectors.shape[0]:,} vectors of dim {vectors.shape[1]} from {cfg.hookpoint} "
          f"({len(prompts)} images × {cfg.num_inference_steps} steps) in {time.perf_counter() - started:.1f}s")

    sae = Sae(vectors.shape[1], SaeConfig(expansion_factor=cfg.expansion_factor, k=cfg.k, batch_topk=True))
    trainer = SaeTrainer(sae, SaeTrainConfig(lr=cfg.lr, dead_feature_threshold=200_000), total_steps=cfg.train_steps)
    order = torch.randperm(vectors.shape[0])
    for step in range(cfg.train_steps):
        start = (step * cfg.batch_size) % vectors.shape[0]
        metrics = trainer.step(vectors[order[start:start + cfg.batch_size]])
        if step % 50 == 0 or step == cfg.train_steps - 1:
            print(f"step {step:4d}  fvu {metrics.fvu:.3f}  L0 {metrics.l0:.1f}  dead {metrics.dead_fraction:.1%}")
    with torch.no_grad():
        fvu = ((sae.reconstruct(vectors) - vectors).pow(2).sum() / (vectors - vectors.mean(0)).pow(2).sum()).item()
    print(f"SAE with {sae.num_latents} latents: FVU on all collected vectors {fvu:.3f} "
          f"(inference: {sae.inference_mode}), total {time.perf_counter() - started:.1f}s")
    return {"fvu": fvu}
