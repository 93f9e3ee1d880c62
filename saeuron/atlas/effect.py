"""What removing or amplifying one latent does: the same prompts and seeds sampled with the latent scaled, and its
"feature icon" (sdxl-unbox's: the block output replaced by the latent's decoder direction, on the empty prompt).

:class:`LatentScaleEdit` keeps the SAE's reconstruction error, out = x + (x̂' − x̂), so a factor of 1 leaves the block
output, and the image, exactly as they are.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import Tensor

from saeuron.atlas.analysis import Recording
from saeuron.atlas.record import png_bytes
from saeuron.benchmarks.prompts import rows_from_batch
from saeuron.diffusion.hooks import BlockCall
from saeuron.sae import Sae
from saeuron.sae.sparse import decode_fixed_width

ICON = -1
"""The image column's value for a feature-icon row (any factor may be asked for, negative ones too)."""


GROUP = -1
"""The latent column's value for a row that scales all of a concept's latents of the atlas together."""


class LatentScaleEdit:
    """One latent, or several together, scaled by ``factor`` wherever they fire."""

    def __init__(self, sae: Sae, latents: int | list[int], factor: float):
        self.sae, self.factor = sae, factor
        self.latents = torch.tensor([latents] if isinstance(latents, int) else latents, dtype=torch.long, device=sae.device)

    def __call__(self, tokens: Tensor, call: BlockCall) -> Tensor:
        sae = self.sae
        x = tokens.reshape(-1, tokens.shape[-1]).to(sae.dtype)
        acts, indices = sae.encode(x)
        change = torch.where(torch.isin(indices, self.latents), acts * (self.factor - 1), torch.zeros_like(acts))
        delta = decode_fixed_width(change, indices, sae.W_dec)
        if sae.cfg.input_unit_norm:
            delta = delta * (x.std(-1, keepdim=True) + 1e-5)
        return (x + delta).to(tokens.dtype).reshape(tokens.shape)


class FeatureIconEdit:
    """Every patch of the block output becomes ``strength`` times the latent's decoder direction (no decoder bias: the
    direction alone; for an ``input_unit_norm`` SAE in its standardised units, so there the icon's scale is nominal)."""

    def __init__(self, sae: Sae, latent: int, strength: float):
        self.direction = (sae.W_dec[latent] * strength).detach()

    def __call__(self, tokens: Tensor, call: BlockCall) -> Tensor:
        return self.direction.to(tokens).expand_as(tokens).contiguous()


class EffectSampler:
    """A Ray Data actor: rows (latent, factor, prompt, seed, concept) → the image and the judge's probability of the
    concept on it."""

    def __init__(self, model_path: str, sae_ref: str, hookpoint: str, kind: str, benchmark: str, judge: dict, setup: dict):
        from saeuron.benchmarks import get_benchmark
        from saeuron.cluster.actor_pool import load_hooked_sae_in_actor
        from saeuron.sections import JudgeConfig

        self.hooked, self.sae, device = load_hooked_sae_in_actor(
            model_path,
            setup["dtype"],
            setup["cpu_threads"],
            setup["sampler"],
            sae_ref,
            hookpoint,
            setup["sae_inference"],
            setup["tracking_uri"],
        )
        self.judge = get_benchmark(benchmark).load_judge(JudgeConfig(**judge), device)
        self.hookpoint, self.kind, self.setup = hookpoint, kind, setup

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from saeuron.benchmarks.judges import judge_batch

        images, probabilities, rows = [], [], rows_from_batch(batch)
        for row in rows:
            latent, factor = int(row["latent"]), float(row["factor"])
            edit = (
                FeatureIconEdit(self.sae, latent, float(row["strength"]))
                if int(row["image"]) == ICON
                else LatentScaleEdit(
                    self.sae, [int(f) for f in str(row["group"]).split(",")] if latent == GROUP else latent, factor
                )
            )
            image = self.hooked.generate(
                [row["prompt"]],
                [int(row["seed"])],
                edits={self.hookpoint: edit},
                num_inference_steps=self.setup["num_inference_steps"],
                guidance_scale=self.setup["guidance_scale"],
                output_type="pt",
            ).images.float()
            judged = judge_batch(self.judge, image, [{"style": row["style"], "object": row["object"]}])[0]
            probabilities.append(judged[f"{self.kind}_prob"])
            images.append(png_bytes(image[0].permute(1, 2, 0).cpu().numpy()))
        keys = {k: [int(r[k]) for r in rows] for k in ("latent", "image")} | {"group": [str(r["group"]) for r in rows]}
        return pa.table(
            {**keys, "factor": [float(r["factor"]) for r in rows], "effect_image": images, "probability": probabilities}
        )


def pixel_distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two PNGs in [0, 1]."""
    from PIL import Image

    first, second = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), dtype=np.float32) / 255 for x in (a, b))
    return float(np.abs(first - second).mean())


def effect_numbers(
    table: pa.Table, rec: Recording, latent: int, factors: list[float]
) -> tuple[dict[str, Any], list[list[bytes]]]:
    """The judge's mean probability per factor, the mean pixel change per factor, and the picture's rows."""
    mine = [r for r in table.to_pylist() if r["latent"] == latent]
    images = sorted({r["image"] for r in mine if r["image"] >= 0})
    by = {(r["image"], r["factor"]): r for r in mine}
    probability = {f"{f:g}": float(np.mean([by[(i, f)]["probability"] for i in images])) for f in [1.0, *factors]}
    change = {
        f"{f:g}": float(np.mean([pixel_distance(by[(i, f)]["effect_image"], by[(i, 1.0)]["effect_image"]) for i in images]))
        for f in factors
    }
    icon = [r["effect_image"] for r in mine if r["image"] == ICON]
    grid = [[by[(i, 1.0)]["effect_image"], *[by[(i, f)]["effect_image"] for f in factors]] for i in images]
    if grid and icon:
        grid[0].append(icon[0])
    numbers = {
        "effect_probability": probability,
        "effect_probability_drop": probability["1"] - probability.get("0", probability["1"]),
        "effect_pixel_change": change,
    }
    return numbers, grid


def effect_picture(grid: list[list[bytes]], factors: list[float], path: Path, cell: int = 96) -> None:
    from PIL import ImageDraw

    labels = ["as is", *[f"x{f:g}" for f in factors], "feature icon"]
    picture = Image.new("RGB", (len(labels) * (cell + 4) + 4, max(len(grid), 1) * (cell + 4) + 20), "white")
    draw = ImageDraw.Draw(picture)
    for c, label in enumerate(labels):
        draw.text((4 + c * (cell + 4), 4), label, fill="black")
    for r, row in enumerate(grid):
        for c, data in enumerate(row):
            image = Image.open(io.BytesIO(data)).convert("RGB").resize((cell, cell), Image.NEAREST)
            picture.paste(image, (4 + c * (cell + 4), 18 + r * (cell + 4)))
    picture.save(path)


def group_effects(table: pa.Table, chosen: dict[int, str]) -> dict[str, dict[str, Any]]:
    """Per concept: the judge's mean probability of it on its images with all of the atlas's latents of it scaled
    together by each factor (what one latent alone rarely shows: a concept is spread over several)."""
    rows = [r for r in table.to_pylist() if r["latent"] == GROUP]
    out: dict[str, dict[str, Any]] = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        latents = [int(f) for f in group.split(",")]
        factors = list(dict.fromkeys(r["factor"] for r in mine))
        out[chosen[latents[0]]] = {
            "latents": latents,
            "images": len(mine) // len(factors),
            "probability": {f"{f:g}": float(np.mean([r["probability"] for r in mine if r["factor"] == f])) for f in factors},
        }
    return out
