"""saeuron: concept unlearning in diffusion models with sparse autoencoders (SAeUron), as Ray jobs.

    from saeuron import Sae, load_sae, load_pipeline, Recipe, UnlearnedPipeline

    pipe = load_pipeline("path/to/sd-v1-5", device="cuda", dtype="float16")
    sae = load_sae("models:/saeuron-unlearncanvas-unet.up_blocks.1.attentions.2@current", device="cuda")
    unlearned = UnlearnedPipeline.from_recipe(pipe, sae, Recipe.load("runs/.../recipes/Van_Gogh"))

The names load lazily: ``import saeuron`` does not import diffusers, Ray or MLflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Sae": "saeuron.sae",
    "SaeConfig": "saeuron.sae",
    "load_sae": "saeuron.cluster.registry",
    "load_pipeline": "saeuron.diffusion.pipeline",
    "HookedPipeline": "saeuron.diffusion.hooks",
    "Recipe": "saeuron.method.recipe",
    "UnlearnedPipeline": "saeuron.method.unlearned_pipeline",
}

# Spelled out (not list(_EXPORTS)) so that linters and type checkers see the re-exports.
__all__ = ["HookedPipeline", "Recipe", "Sae", "SaeConfig", "UnlearnedPipeline", "load_pipeline", "load_sae"]

if TYPE_CHECKING:
    from saeuron.cluster.registry import load_sae
    from saeuron.diffusion.hooks import HookedPipeline
    from saeuron.diffusion.pipeline import load_pipeline
    from saeuron.method.recipe import Recipe
    from saeuron.method.unlearned_pipeline import UnlearnedPipeline
    from saeuron.sae import Sae, SaeConfig


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'saeuron' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
