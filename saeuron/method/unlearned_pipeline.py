"""A Stable Diffusion pipeline with concepts removed by an SAE recipe, for users.

    pipe = UnlearnedPipeline.from_recipe(base_pipe, sae, recipe)
    images = pipe("An image of Stars in Neon Glow style.").images       # like a diffusers pipeline
    pipe.save_pretrained("unlearned/")                                  # recipe + SAE + base model reference
    pipe = UnlearnedPipeline.from_pretrained("unlearned/")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from diffusers import StableDiffusionPipeline

from saeuron.diffusion.hooks import GenerationOutput, HookedPipeline
from saeuron.method.recipe import Recipe
from saeuron.sae import Sae
from saeuron.method.edit import UnlearningEdit

CONFIG = "unlearned_pipeline.json"


class UnlearnedPipeline:
    def __init__(self, pipe: StableDiffusionPipeline, sae: Sae, recipe: Recipe, base_model: str, error_mode: str = "correct"):
        self.pipe = pipe
        self.hooked = HookedPipeline(pipe)
        self.hooked.validate_hookpoints([recipe.hookpoint])
        self.sae, self.recipe, self.base_model = sae, recipe, base_model
        self.edit = UnlearningEdit(sae, recipe, error_mode)

    @classmethod
    def from_recipe(cls, pipe: StableDiffusionPipeline, sae: Sae, recipe: Recipe, base_model: str | None = None,
                    error_mode: str = "correct") -> "UnlearnedPipeline":
        return cls(pipe, sae, recipe, base_model or recipe.base_model, error_mode)

    def __call__(self, prompt: str | list[str], **kwargs):
        """Generate exactly as ``StableDiffusionPipeline.__call__`` would, with the concepts removed."""
        with self.hooked.hooks(edits={self.recipe.hookpoint: self.edit}):
            return self.pipe(prompt, **kwargs)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> GenerationOutput:
        """One image per (prompt, seed), each image's noise depending only on its seed."""
        return self.hooked.generate(prompts, seeds, edits={self.recipe.hookpoint: self.edit}, **kwargs)

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.recipe.save(folder / "recipe")
        self.sae.save_to_disk(folder / "sae" / self.recipe.hookpoint)
        (folder / CONFIG).write_text(json.dumps({"base_model": self.base_model, "hookpoint": self.recipe.hookpoint,
                                                 "error_mode": self.edit.error_mode}, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, base_model: str | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "UnlearnedPipeline":
        """``base_model`` overrides the saved reference (e.g. the same model at another path)."""
        from saeuron.benchmarks.base import resolve_model_path

        folder = Path(folder)
        config = json.loads((folder / CONFIG).read_text())
        reference = base_model or config["base_model"]
        path = resolve_model_path(reference.split(":", 1)[1], None) if reference.startswith("embedded:") else Path(reference)
        pipe = StableDiffusionPipeline.from_pretrained(str(path), dtype=dtype, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False, local_files_only=True).to(device)
        pipe.set_progress_bar_config(disable=True)
        sae = Sae.load_from_disk(folder / "sae" / config["hookpoint"], device=device, dtype=dtype)
        return cls(pipe, sae, Recipe.load(folder / "recipe"), config["base_model"], config["error_mode"])
