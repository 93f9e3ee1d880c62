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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from saeuron.atomic_files import atomic_path
from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.prompts import PromptRow, rows_from_batch
from saeuron.cluster.actor_pool import load_pipeline_in_actor, map_with_actor_pool
from saeuron.cluster.tracking import tracking_uri_of
from saeuron.console import logger
from saeuron.diffusion.pipeline import check_sampler
from saeuron.method.recipe import Recipe
from saeuron.sections import ImageGridConfig, WithEdit, WithModel, WithResources, WithSampling, WithTracking
from saeuron.storage import Location, check_writable
from saeuron.storage.mirror import mirror_path, push

INDEX = "images.parquet"
IMAGE_FORMATS = ("png", "jpg")


def image_name(row: dict, image_format: str) -> str:
    stem = f"{row['object']}_seed{row['seed']}" if row["style"] is None else f"{row['style']}_{row['object']}_seed{row['seed']}"
    return f"{stem}.{image_format}"


@dataclass
class UnlearnConfig(WithResources, WithEdit, WithSampling, WithModel, WithTracking):
    recipe: str = ""
    """Recipe folder (recipe.json + recipe.safetensors); empty samples the base model."""
    sae: str = ""
    """SAE of the recipe's hookpoint; empty means the SAE the recipe names."""
    output_dir: str = ""
    """Image folder or s3:// / gs:// prefix; empty: <study_dir>/images/<recipe name>-<key of the settings>."""
    grid: ImageGridConfig = field(default_factory=ImageGridConfig)

    @property
    def images_dir(self) -> Location:
        """Default: <study_dir>/images/<recipe name>-<key>, the key fingerprinting everything an image
        depends on besides its prompt and seed, so that resuming reuses only images of the same settings."""
        if self.output_dir:
            return Location.parse(self.output_dir)
        name = Location.parse(self.recipe).name if self.recipe else "original"
        return self.tracking.storage / "images" / f"{name}-{self.generation_key()}"

    def generation_key(self) -> str:
        recipe = (Location.parse(self.recipe) / "recipe.json").read_text() if self.recipe else ""
        rules = (Location.parse(self.recipe) / "recipe.safetensors").read_bytes() if self.recipe else b""
        settings = json.dumps(
            [
                get_benchmark(self.model.benchmark).model_identity(self.model.model_path),
                recipe,
                self.sae,
                self.sampling.num_inference_steps,
                self.sampling.guidance_scale,
                self.edit.error_mode,
                self.grid.image_format,
            ]
        )
        return hashlib.sha256(settings.encode() + rules).hexdigest()[:10]


class UnlearningSampler:
    def __init__(
        self,
        model_path: str,
        recipe: str,
        sae: str,
        base_model: str,
        error_mode: str,
        num_inference_steps: int,
        guidance_scale: float,
        dtype: str,
        sampler: str,
        image_format: str,
        out_dir: str,
        tracking_uri: str,
        cpu_threads: int,
    ):
        from saeuron.cluster.registry import load_sae
        from saeuron.diffusion.hooks import HookedPipeline
        from saeuron.method.unlearned_pipeline import UnlearnedPipeline

        pipe, device, torch_dtype = load_pipeline_in_actor(model_path, dtype, cpu_threads, sampler)
        if recipe:
            loaded = Recipe.load(recipe)
            sae_model = load_sae(
                sae or loaded.sae_ref,
                loaded.hookpoint,
                device=device,
                dtype=torch_dtype,
                inference=loaded.sae_inference or None,
                tracking_uri=tracking_uri or None,
            )
            self.generator: UnlearnedPipeline | HookedPipeline = UnlearnedPipeline.from_recipe(
                pipe, sae_model, loaded, base_model, error_mode
            )
        else:
            self.generator = HookedPipeline(pipe)
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.image_format, self.out = image_format, Location.parse(out_dir)
        self.out_dir = mirror_path(self.out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        rows = rows_from_batch(batch)
        images = self.generator.generate(
            [r["prompt"] for r in rows],
            [int(r["seed"]) for r in rows],
            output_type="np",
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
        ).images
        names = []
        for row, image in zip(rows, images):
            name = image_name(row, self.image_format)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.out_dir / name, suffix=f".{self.image_format}") as tmp:  # PIL picks the format from the suffix
                Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(tmp)
            push(self.out_dir, self.out, [self.out_dir / name])  # in the store as soon as it exists: a resume keeps it
            names.append(name)
        return {**batch, "file": np.array(names)}


def prompt_rows(cfg: UnlearnConfig) -> list[PromptRow]:
    spec = get_benchmark(cfg.model.benchmark)
    unknown = [s for s in cfg.grid.styles if s not in spec.styles]
    if unknown:
        raise ValueError(f"unknown styles {unknown}; {spec.name} has {list(spec.styles)}")
    rows = spec.evaluation_prompt_rows(cfg.grid.seeds or None)
    if cfg.grid.styles:
        rows = [r for r in rows if r.style is None or r.style in cfg.grid.styles]
    return rows


def check_recipe(cfg: UnlearnConfig) -> Recipe | None:
    """Fail before sampling when the recipe does not belong to this base model or block."""
    if not cfg.recipe:
        return None
    recipe = Recipe.load(cfg.recipe)
    benchmark = get_benchmark(cfg.model.benchmark)
    identity = benchmark.model_identity(cfg.model.model_path)
    if recipe.base_model != identity:
        raise ValueError(f"the recipe {cfg.recipe} was made for base model {recipe.base_model}, not {identity}")
    from saeuron.diffusion.pipeline import block_channels

    block_channels(benchmark.resolve_model_path(cfg.model.model_path), [recipe.hookpoint])
    return recipe


def unlearn(cfg: UnlearnConfig) -> pa.Table:
    """Generate the benchmark's evaluation prompts with the recipe; returns the image index."""
    if cfg.edit.error_mode not in ("correct", "reference"):
        raise ValueError(f"error_mode must be 'correct' or 'reference', got {cfg.edit.error_mode!r}")
    if cfg.grid.image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}")
    recipe = check_recipe(cfg)
    registry_uri = tracking_uri_of(cfg.tracking)  # where models:/ SAE references resolve
    if recipe is not None:
        from saeuron.cluster.registry import load_sae
        from saeuron.method.edit import UnlearningEdit

        sae = load_sae(
            cfg.sae or recipe.sae_ref, recipe.hookpoint, inference=recipe.sae_inference or None, tracking_uri=registry_uri
        )
        UnlearningEdit(sae, recipe, cfg.edit.error_mode)  # refuses here what the actors would refuse later
    benchmark = get_benchmark(cfg.model.benchmark)
    model_path = benchmark.resolve_model_path(cfg.model.model_path)
    check_sampler(model_path, cfg.model.sampler)
    rows = [r.as_dict() for r in prompt_rows(cfg)]
    out = cfg.images_dir
    check_writable(out, "the image folder")
    written = {f.name for f in out.files()}
    pending = [r for r in rows if image_name(r, cfg.grid.image_format) not in written]
    logger.info(f"unlearn: {len(rows)} images, {len(rows) - len(pending)} already there -> {out.uri}")
    started = time.perf_counter()
    if pending:
        map_with_actor_pool(
            pending,
            UnlearningSampler,
            dict(
                model_path=str(model_path),
                recipe=Location.parse(cfg.recipe).uri if cfg.recipe else "",
                sae=cfg.sae,
                base_model=benchmark.model_identity(cfg.model.model_path),
                error_mode=cfg.edit.error_mode,
                num_inference_steps=cfg.sampling.num_inference_steps,
                guidance_scale=cfg.sampling.guidance_scale,
                dtype=cfg.model.dtype,
                sampler=cfg.model.sampler,
                image_format=cfg.grid.image_format,
                out_dir=out.uri,
                tracking_uri=registry_uri,
                cpu_threads=cfg.resources.actor.cpus,
            ),
            cfg.grid.batch_size,
            cfg.resources,
        ).materialize()
    written = {f.name for f in out.files()}
    missing = [image_name(r, cfg.grid.image_format) for r in rows if image_name(r, cfg.grid.image_format) not in written]
    if missing:
        raise RuntimeError(
            f"unlearn: {len(missing)} of {len(rows)} images were not written to {out.uri} ({missing[:3]}…) although no actor "
            f"failed; run again to generate them (the images already written are kept)"
        )
    index = pa.Table.from_pylist(
        [
            {**r, "file": image_name(r, cfg.grid.image_format), "recipe": cfg.recipe, "error_mode": cfg.edit.error_mode}
            for r in rows
        ]
    )
    local = mirror_path(out)
    local.mkdir(parents=True, exist_ok=True)
    with atomic_path(local / INDEX) as tmp:
        pq.write_table(index, tmp)
    push(local, out, [local / INDEX])
    logger.info(f"unlearn: done in {time.perf_counter() - started:.1f}s")
    return index
