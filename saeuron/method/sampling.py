"""Sampling with unlearning as a Ray Data job: prompt rows → actors (pipeline + SAE + recipe) →
image files and a Parquet index.

Files are named like UnlearnCanvas's, ``{Style}_{Object}_seed{seed}.png`` and
``{Object}_seed{seed}.png`` for unstyled prompts; every image depends only on (prompt, seed) and
the recipe. Images already in the output folder are not generated again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saeuron.benchmarks.base import evaluation_prompt_rows, get_benchmark, model_identity, resolve_model_path
from saeuron.cluster.actor_pool import load_pipeline_in_actor, map_with_actor_pool
from saeuron.cluster.tracking import resolve_tracking_uri
from saeuron.benchmarks.prompts import PromptRow, rows_from_batch
from saeuron.method.recipe import Recipe

INDEX = "images.parquet"
IMAGE_FORMATS = ("png", "jpg")


def image_name(row: dict, image_format: str) -> str:
    stem = f"{row['object']}_seed{row['seed']}" if row["style"] is None else f"{row['style']}_{row['object']}_seed{row['seed']}"
    return f"{stem}.{image_format}"


@dataclass
class UnlearnConfig:
    recipe: str = ""
    """Recipe folder (recipe.json + recipe.safetensors); empty samples the base model."""
    sae: str = ""
    """SAE of the recipe's hookpoint; empty means the SAE the recipe names."""
    benchmark: str = "minicanvas"
    model_path: str = ""
    seeds: list[int] = field(default_factory=list)
    """Seeds of every prompt; empty means the benchmark's evaluation seeds (188, 288, 588, 688, 888)."""
    styles: list[str] = field(default_factory=list)
    """Styles of the evaluation grid (empty: all), plus the unstyled prompts."""
    num_inference_steps: int = 100
    guidance_scale: float = 9.0
    error_mode: str = "correct"
    image_format: str = "png"
    study_dir: str = "runs/minicanvas"
    output_dir: str = ""
    dtype: str = "auto"
    num_actors: int = 1
    batch_size: int = 16
    cpu_threads_per_actor: int = 1
    tracking_uri: str = ""
    experiment: str = "saeuron"

    @property
    def images_dir(self) -> Path:
        """Default: <study_dir>/images/<recipe name>-<key>, the key fingerprinting everything an image
        depends on besides its prompt and seed, so that resuming reuses only images of the same settings."""
        if self.output_dir:
            return Path(self.output_dir).expanduser().resolve()
        name = Path(self.recipe).name if self.recipe else "original"
        return (Path(self.study_dir) / "images" / f"{name}-{self.generation_key()}").expanduser().resolve()

    def generation_key(self) -> str:
        recipe = (Path(self.recipe) / "recipe.json").read_text() if self.recipe else ""
        rules = (Path(self.recipe) / "recipe.safetensors").read_bytes() if self.recipe else b""
        settings = json.dumps([model_identity(self.benchmark, self.model_path), recipe, self.sae, self.num_inference_steps,
                               self.guidance_scale, self.error_mode, self.image_format])
        return hashlib.sha256(settings.encode() + rules).hexdigest()[:10]


class UnlearningSampler:
    def __init__(self, model_path: str, recipe: str, sae: str, base_model: str, error_mode: str, num_inference_steps: int,
                 guidance_scale: float, dtype: str, image_format: str, out_dir: str, tracking_uri: str, cpu_threads: int):
        from saeuron.diffusion.hooks import HookedPipeline
        from saeuron.cluster.registry import load_sae
        from saeuron.method.unlearned_pipeline import UnlearnedPipeline

        pipe, device, torch_dtype = load_pipeline_in_actor(model_path, dtype, cpu_threads)
        if recipe:
            loaded = Recipe.load(recipe)
            sae_model = load_sae(sae or loaded.sae_ref, loaded.hookpoint, device=device, dtype=torch_dtype, tracking_uri=tracking_uri or None)
            self.generator = UnlearnedPipeline(pipe, sae_model, loaded, base_model, error_mode)
        else:
            self.generator = HookedPipeline(pipe)
        self.settings = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        self.image_format, self.out_dir = image_format, Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        rows = rows_from_batch(batch)
        images = self.generator.generate([r["prompt"] for r in rows], [int(r["seed"]) for r in rows], output_type="np", **self.settings).images
        names = []
        for row, image in zip(rows, images):
            name = image_name(row, self.image_format)
            tmp = self.out_dir / f".{name}.tmp.{self.image_format}"
            Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(tmp)
            tmp.replace(self.out_dir / name)
            names.append(name)
        return {**batch, "file": np.array(names)}


def prompt_rows(cfg: UnlearnConfig) -> list[PromptRow]:
    spec = get_benchmark(cfg.benchmark)
    unknown = [s for s in cfg.styles if s not in spec.styles]
    if unknown:
        raise ValueError(f"unknown styles {unknown}; {cfg.benchmark} has {list(spec.styles)}")
    rows = evaluation_prompt_rows(cfg.benchmark, cfg.seeds or None)
    if cfg.styles:
        rows = [r for r in rows if r.style is None or r.style in cfg.styles]
    return rows


def check_recipe(cfg: UnlearnConfig) -> Recipe | None:
    """Fail before sampling when the recipe does not belong to this base model or block."""
    if not cfg.recipe:
        return None
    recipe = Recipe.load(cfg.recipe)
    identity = model_identity(cfg.benchmark, cfg.model_path)
    if recipe.base_model != identity:
        raise ValueError(f"the recipe {cfg.recipe} was made for base model {recipe.base_model}, not {identity}")
    from saeuron.diffusion.pipeline import block_channels

    block_channels(resolve_model_path(cfg.benchmark, cfg.model_path), [recipe.hookpoint])
    return recipe


def unlearn(cfg: UnlearnConfig) -> pa.Table:
    """Generate the benchmark's evaluation prompts with the recipe; returns the image index."""
    if cfg.error_mode not in ("correct", "reference"):
        raise ValueError(f"error_mode must be 'correct' or 'reference', got {cfg.error_mode!r}")
    if cfg.image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
    recipe = check_recipe(cfg)
    registry_uri = resolve_tracking_uri(cfg.tracking_uri, cfg.study_dir)  # where models:/ SAE references resolve
    if recipe is not None:
        from saeuron.cluster.registry import load_sae
        from saeuron.method.edit import UnlearningEdit

        UnlearningEdit(load_sae(cfg.sae or recipe.sae_ref, recipe.hookpoint, tracking_uri=registry_uri), recipe)
    model_path = resolve_model_path(cfg.benchmark, cfg.model_path)
    rows = [r.as_dict() for r in prompt_rows(cfg)]
    out = cfg.images_dir
    out.mkdir(parents=True, exist_ok=True)
    pending = [r for r in rows if not (out / image_name(r, cfg.image_format)).is_file()]
    print(f"unlearn: {len(rows)} images, {len(rows) - len(pending)} already there -> {out}", flush=True)
    started = time.perf_counter()
    if pending:
        map_with_actor_pool(
            pending, UnlearningSampler,
            dict(model_path=str(model_path), recipe=str(Path(cfg.recipe).resolve()) if cfg.recipe else "", sae=cfg.sae,
                 base_model=model_identity(cfg.benchmark, cfg.model_path), error_mode=cfg.error_mode,
                 num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale, dtype=cfg.dtype,
                 image_format=cfg.image_format, out_dir=str(out), tracking_uri=registry_uri, cpu_threads=cfg.cpu_threads_per_actor),
            cfg.batch_size, cfg.num_actors, cfg.cpu_threads_per_actor,
        ).materialize()
    index = pa.Table.from_pylist([{**r, "file": image_name(r, cfg.image_format), "recipe": cfg.recipe, "error_mode": cfg.error_mode}
                                  for r in rows])
    pq.write_table(index, out / INDEX)
    print(f"unlearn: done in {time.perf_counter() - started:.1f}s", flush=True)
    return index
