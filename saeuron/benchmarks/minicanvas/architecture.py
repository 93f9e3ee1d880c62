"""MiniCanvas's tiny Stable-Diffusion-layout pipeline: same components and module paths as SD v1.

The UNet's first cross-attention up block holds three transformer blocks, so the paper's
hookpoints ``unet.up_blocks.1.attentions.1`` (objects) and ``.2`` (styles) exist here as in
SD v1.5, and one study config runs on both with only the model path and concepts changed. With
three levels instead of SD's four, the shape is already drawn by up_blocks.1, so MiniCanvas
unlearns objects at ``unet.mid_block.attentions.0`` (see ``saeuron.benchmarks.base``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# SD v1's noise schedule and DDIM settings (1000 steps, scaled_linear 0.00085–0.012, leading
# spacing with steps_offset=1), so timesteps are the same numbers as on SD v1.5.
SD_V1_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)


@dataclass
class Architecture:
    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32)
    latent_channels: int = 4
    vae_norm_groups: int = 8
    unet_channels: tuple[int, ...] = (32, 64, 64)
    # Per down block; the up blocks get one more, so up_blocks.1 has attentions .0, .1, .2.
    unet_layers_per_block: tuple[int, ...] = (1, 2, 1)
    unet_norm_groups: int = 16
    attention_head_dim: int = 4
    # Levels whose down and up blocks carry cross-attention. SD v1.5 has it at every level but the
    # lowest; (0, 1) is that layout here, with up_blocks.2.attentions.0/.1 at the 16×16 latent.
    unet_attention_levels: tuple[int, ...] = (1,)
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 32

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def build_vae(arch: Architecture) -> AutoencoderKL:
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.vae_norm_groups,
        sample_size=arch.image_size,
    )


def down_block_types(arch: Architecture) -> list[str]:
    levels = range(len(arch.unet_channels))
    unknown = sorted(set(arch.unet_attention_levels) - set(levels))
    if unknown:
        raise ValueError(f"unet_attention_levels {unknown} are not levels of a {len(levels)}-level UNet: use {list(levels)}")
    return ["CrossAttnDownBlock2D" if level in arch.unet_attention_levels else "DownBlock2D" for level in levels]


def build_unet(arch: Architecture) -> UNet2DConditionModel:
    down = down_block_types(arch)
    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=arch.unet_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(kind.replace("Down", "Up") for kind in reversed(down)),
        layers_per_block=arch.unet_layers_per_block,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=arch.attention_head_dim,
        norm_num_groups=arch.unet_norm_groups,
    )


def build_text_encoder(
    arch: Architecture, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int
) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_tokens,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    return CLIPTextModel(config)


def build_pipeline(arch: Architecture, tokenizer_dir: str | Path, seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised pipeline (deterministic in ``seed``) around a tokenizer folder."""
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(
        arch, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    pipe = StableDiffusionPipeline(
        vae=build_vae(arch),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=build_unet(arch),
        scheduler=DDIMScheduler(**SD_V1_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
