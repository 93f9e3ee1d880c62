"""Train MiniCanvas from scratch: tokenizer, VAE, UNet + text encoder, classifier.

    python -m saeuron.benchmarks.minicanvas.train --stage all --out saeuron/benchmarks/minicanvas/weights

Stages (``--stage``): ``tokenizer`` (BPE merges), ``vae``, ``unet`` (needs the tokenizer and the
VAE; trains the text encoder too), ``classifier`` (independent: run it beside the VAE), ``all``.
Everything is seeded; one CPU thread per process is fastest on a 2-core machine.

The UNet is trained with **offset noise** (Guttenberg 2023): N(0, I) + 0.1·N(0, 1) per image and
latent channel. SD v1's schedule does not reach zero terminal SNR, and with 16×16 latents the
global colour leaks through the noise at t = T, so without it dark and pale palettes come out in
the wrong colours. Sampling is unchanged: the pipeline keeps SD v1's scheduler and ε-prediction.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from transformers import CLIPTokenizer

from saeuron.benchmarks.minicanvas.architecture import SD_V1_SCHEDULER, Architecture, build_text_encoder, build_unet, build_vae
from saeuron.benchmarks.minicanvas.classifier import MiniCanvasClassifier, augment
from saeuron.benchmarks.minicanvas.concepts import (
    CAPTION_TEMPLATES,
    OBJECTS,
    STYLE_LABELS,
    eval_prompt,
    training_prompt,
    vocabulary_corpus,
)
from saeuron.benchmarks.minicanvas.data import render_dataset
from saeuron.benchmarks.minicanvas.tokenizer import learn_merges, write_clip_tokenizer
from saeuron.config import parse_config
from saeuron.console import logger

STAGES = ("tokenizer", "vae", "unet", "classifier", "all")


@dataclass
class MiniCanvasTrainConfig:
    stage: str = "all"
    out: str = "saeuron/benchmarks/minicanvas/weights"
    seed: int = 0
    images_per_pair: int = 150
    """Training images per (style or none, object) pair: 11 × 8 × 150 = 13,200."""
    vae_steps: int = 2500
    vae_batch: int = 16
    vae_lr: float = 2e-3
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    offset_noise: float = 0.1
    empty_prompt_fraction: float = 0.1
    ema_decay: float = 0.999
    classifier_steps: int = 2500
    classifier_batch: int = 64
    classifier_lr: float = 2e-3
    log_every: int = 100
    unet_attention_levels: tuple[int, ...] = Architecture.unet_attention_levels
    """UNet levels with cross-attention: (1,) is the shipped model, (0, 1) SD v1.5's layout."""
    threads: int = 1
    """torch CPU threads; one per process is fastest on a 2-core machine with stages run side by side."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def _log(stage: str, step: int, total: int, started: float, **values: float) -> None:
    shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
    logger.info(f"[{stage}] step {step}/{total}  {shown}  ({time.perf_counter() - started:.0f}s)")


def train_tokenizer(cfg: MiniCanvasTrainConfig, arch: Architecture) -> Path:
    folder = write_clip_tokenizer(Path(cfg.out) / "pipeline" / "tokenizer", learn_merges(vocabulary_corpus()), arch.max_tokens)
    logger.info(f"[tokenizer] {len(CLIPTokenizer.from_pretrained(str(folder)))} tokens -> {folder}")
    return folder


def train_vae(cfg: MiniCanvasTrainConfig, arch: Architecture) -> AutoencoderKL:
    torch.manual_seed(cfg.seed)
    images, _, _ = render_dataset(cfg.images_per_pair, cfg.seed).tensors()
    images = images * 2 - 1
    vae = build_vae(arch)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    for step in range(cfg.vae_steps):
        batch = images[torch.randint(len(images), (cfg.vae_batch,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(recon, batch) + 0.5 * F.l1_loss(recon, batch) + 1e-4 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            _log("vae", step, cfg.vae_steps, started, loss=loss.item())
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(images[i : i + 512]).latent_dist.mean for i in range(0, len(images), 512)])
        recon = torch.cat([vae.decode(means[i : i + 512]).sample for i in range(0, len(means), 512)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    psnr = 10 * math.log10(4.0 / F.mse_loss(recon.clamp(-1, 1), images).item())
    logger.info(f"[vae] reconstruction PSNR {psnr:.1f} dB, scaling_factor {vae.config.scaling_factor:.4f}")
    vae.save_pretrained(Path(cfg.out) / "pipeline" / "vae")
    return vae


def _prompt_table(tokenizer: CLIPTokenizer) -> torch.Tensor:
    """Token ids [styles, objects, variants]: the evaluation prompt and the caption prompts."""
    rows = []
    for style in STYLE_LABELS:
        for obj in OBJECTS:
            prompts = [eval_prompt(obj, style)] + [training_prompt(t.format(object=obj), style) for t in CAPTION_TEMPLATES]
            rows.append(
                tokenizer(
                    prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
                ).input_ids
            )
    return torch.stack(rows).reshape(len(STYLE_LABELS), len(OBJECTS), len(CAPTION_TEMPLATES) + 1, -1)


def train_unet(cfg: MiniCanvasTrainConfig, arch: Architecture) -> None:
    pipeline_dir = Path(cfg.out) / "pipeline"
    tokenizer = CLIPTokenizer.from_pretrained(str(pipeline_dir / "tokenizer"))
    vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae").eval()
    torch.manual_seed(cfg.seed)
    data = render_dataset(cfg.images_per_pair, cfg.seed)
    images, styles, objects = data.tensors()
    with torch.no_grad():
        dists = [vae.encode(images[i : i + 512] * 2 - 1).latent_dist for i in range(0, len(images), 512)]
    latent_mean = torch.cat([d.mean for d in dists])
    latent_std = torch.cat([d.std for d in dists])
    scale = vae.config.scaling_factor
    table = _prompt_table(tokenizer)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids[0]

    text_encoder = build_text_encoder(
        arch, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    unet = build_unet(arch)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    warmup = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    ema_unet = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SD_V1_SCHEDULER.items() if k not in ("set_alpha_to_one", "steps_offset")})
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    started = time.perf_counter()
    for step in range(cfg.unet_steps):
        idx = torch.randint(len(images), (cfg.unet_batch,), generator=generator)
        latents = (latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)) * scale
        noise = torch.randn(latents.shape, generator=generator)
        noise = noise + cfg.offset_noise * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        variant = torch.randint(table.shape[2], (cfg.unet_batch,), generator=generator)
        ids = table[styles[idx], objects[idx], variant]
        drop = torch.rand(cfg.unet_batch, generator=generator) < cfg.empty_prompt_fraction
        ids[drop] = empty
        hidden = text_encoder(ids)[0]
        loss = F.mse_loss(unet(noisy, t, hidden).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        ema_unet.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        if step % cfg.log_every == 0 or step == cfg.unet_steps - 1:
            _log("unet", step, cfg.unet_steps, started, loss=loss.item())
    ema_unet.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD_V1_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(pipeline_dir)
    logger.info(f"[unet] saved pipeline -> {pipeline_dir}")


def train_classifier(cfg: MiniCanvasTrainConfig) -> MiniCanvasClassifier:
    torch.manual_seed(cfg.seed)
    images, styles, objects = render_dataset(cfg.images_per_pair, cfg.seed).tensors()
    test_images, test_styles, test_objects = render_dataset(10, cfg.seed + 1000).tensors()
    model = MiniCanvasClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.classifier_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.classifier_lr, total_steps=cfg.classifier_steps)
    generator = torch.Generator().manual_seed(cfg.seed + 2)
    started = time.perf_counter()
    for step in range(cfg.classifier_steps):
        idx = torch.randint(len(images), (cfg.classifier_batch,), generator=generator)
        out = model(augment(images[idx].clone(), generator))
        loss = F.cross_entropy(out.style_logits, styles[idx]) + F.cross_entropy(out.object_logits, objects[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % cfg.log_every == 0 or step == cfg.classifier_steps - 1:
            _log("classifier", step, cfg.classifier_steps, started, loss=loss.item())
    model.eval()
    with torch.no_grad():
        out = model(test_images)
    style_acc = (out.style_logits.argmax(1) == test_styles).float().mean().item()
    object_acc = (out.object_logits.argmax(1) == test_objects).float().mean().item()
    logger.info(f"[classifier] held-out procedural images: style {style_acc:.1%}, object {object_acc:.1%}")
    model.save_pretrained(Path(cfg.out) / "classifier")
    return model


def main(cfg: MiniCanvasTrainConfig) -> None:
    torch.set_num_threads(cfg.threads)
    arch = Architecture(unet_attention_levels=tuple(cfg.unet_attention_levels))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    logger.info(f"training MiniCanvas stage={cfg.stage}: {asdict(cfg)}")
    if cfg.stage in ("tokenizer", "all"):
        train_tokenizer(cfg, arch)
    if cfg.stage in ("vae", "all"):
        train_vae(cfg, arch)
    if cfg.stage in ("unet", "all"):
        train_unet(cfg, arch)
    if cfg.stage in ("classifier", "all"):
        train_classifier(cfg)


if __name__ == "__main__":
    main(parse_config(MiniCanvasTrainConfig, description=__doc__))
