"""The atlas's one sampling pass: generate a prompt set, and record what the chosen latents do in it.

Per image: the image itself, each latent's maximum and mean over patches at every denoising step, and its patch
map at an early, a middle and a late step. Everything a latent's page shows about where and when it fires comes
from this pass (the effect pictures need their own generations: they change the image).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from saeuron.atomic_files import atomic_path
from saeuron.benchmarks.prompts import rows_from_batch
from saeuron.console import logger
from saeuron.sae import Sae

RECORDING = "recording.parquet"
HEAT_FRACTIONS = (0.1, 0.5, 0.9)
"""Where the patch maps are taken: early, middle and late in the step sequence."""


def heat_steps(num_steps: int) -> list[int]:
    return sorted({min(num_steps - 1, int(round(f * (num_steps - 1)))) for f in HEAT_FRACTIONS})


@torch.no_grad()
def latent_activations(sae: Sae, tokens: Tensor, latents: Tensor) -> Tensor:
    """``[..., d]`` block output → ``[..., L]`` the inference-mode activations of ``latents`` (0 where a latent is
    not in a vector's code), without densifying all F latents."""
    if tokens.dim() > 2:  # one leading slice at a time bounds the [..., k, L] match below (GBs at SD shape)
        return torch.stack([latent_activations(sae, part, latents) for part in tokens.unbind(0)])
    acts, indices = sae.encode(tokens)
    match = indices.unsqueeze(-1) == latents.to(indices.device)  # [N, k, L]
    return (match * acts.float().unsqueeze(-1)).sum(-2)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class AtlasRecorder:
    """A Ray Data actor: prompt rows → images and the latents' activations (one pipeline and SAE per actor)."""

    def __init__(
        self,
        model_path: str,
        sae_ref: str,
        hookpoint: str,
        latents: list[int],
        num_inference_steps: int,
        guidance_scale: float,
        dtype: str,
        sampler: str,
        sae_inference: str,
        tracking_uri: str,
        cpu_threads: int,
    ):
        from saeuron.cluster.actor_pool import load_hooked_sae_in_actor

        self.hooked, self.sae, device = load_hooked_sae_in_actor(
            model_path, dtype, cpu_threads, sampler, sae_ref, hookpoint, sae_inference, tracking_uri
        )
        self.hookpoint, self.latents = hookpoint, torch.tensor(latents, dtype=torch.long, device=device)
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from ray.data.extensions import ArrowTensorArray

        rows = rows_from_batch(batch)
        out = self.hooked.generate(
            [r["prompt"] for r in rows],
            [int(r["seed"]) for r in rows],
            capture=[self.hookpoint],
            output_type="np",
            capture_device=self.hooked.device,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
        )
        capture = out.captures[self.hookpoint]
        acts = latent_activations(self.sae, capture.stacked(), self.latents)  # [B, T, P, L]
        steps = heat_steps(acts.shape[1])
        return pa.table(
            {
                "prompt_id": [int(r["prompt_id"]) for r in rows],
                "prompt": [r["prompt"] for r in rows],
                "style": [r["style"] or "" for r in rows],
                "object": [r["object"] for r in rows],
                "seed": [int(r["seed"]) for r in rows],
                "image": [png_bytes(image) for image in out.images],
                "timesteps": [list(map(int, capture.timesteps))] * len(rows),
                "max_by_step": ArrowTensorArray.from_numpy(acts.amax(2).cpu().numpy()),
                "mean_by_step": ArrowTensorArray.from_numpy(acts.mean(2).cpu().numpy()),
                "heat": ArrowTensorArray.from_numpy(acts[:, steps].to(torch.float16).cpu().numpy()),  # [B, 3, P, L]
                "height": [capture_height(out, self.hookpoint)] * len(rows),
            }
        )


def capture_height(out, hookpoint: str) -> int:
    """The patch grid's side (square latents, as SD's)."""
    patches = out.captures[hookpoint].maps[0].shape[1]
    side = int(round(patches**0.5))
    return side


def collect_table(dataset) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


def record(cfg, setup: dict[str, Any], latents: list[int], sae_inference: str, sae_fingerprint: str, local: Path) -> pa.Table:
    """The recording pass of an :class:`~saeuron.atlas.job.AtlasConfig`, or the saved one when it holds these latents
    for these prompts and settings."""
    from saeuron.benchmarks import get_benchmark
    from saeuron.cluster.actor_pool import map_with_actor_pool

    benchmark = get_benchmark(cfg.model.benchmark)
    rows = [r.as_dict() for r in benchmark.evaluation_prompt_rows(cfg.grid.seeds or None)]
    rows = [r for r in rows if not cfg.grid.styles or r["style"] is None or r["style"] in cfg.grid.styles]
    # What the images and activations depend on: not where the SAE was named from (an alias may move), nor threads.
    settings = {k: v for k, v in setup.items() if k not in ("sae_ref", "tracking_uri", "cpu_threads")}
    key = json.dumps([settings, sae_fingerprint, sae_inference, [r["prompt"] for r in rows], [r["seed"] for r in rows], latents])
    saved = local / RECORDING
    if saved.is_file() and pq.read_schema(saved).metadata.get(b"saeuron.key", b"").decode() == key:
        logger.info(f"atlas: the recording of {len(rows)} images is there, reused")
        return pq.read_table(saved)
    started = time.perf_counter()
    kwargs = {
        k: setup[k] for k in ("model_path", "sae_ref", "hookpoint", "num_inference_steps", "guidance_scale", "dtype", "sampler")
    }
    dataset = map_with_actor_pool(
        rows,
        AtlasRecorder,
        dict(
            **kwargs,
            latents=latents,
            sae_inference=sae_inference,
            tracking_uri=setup["tracking_uri"],
            cpu_threads=setup["cpu_threads"],
        ),
        cfg.grid.batch_size,
        cfg.resources,
    )
    table = collect_table(dataset).replace_schema_metadata({"saeuron.key": key})
    with atomic_path(saved) as tmp:
        pq.write_table(table, tmp)
    logger.info(f"atlas: recorded {len(rows)} images × {len(latents)} latents in {time.perf_counter() - started:.1f}s")
    return table
