"""The SAE and the unlearning recipe as diffusers pipeline components.

A diffusers pipeline saves and loads only components whose class derives from one of its loadable
bases (``ModelMixin``, ``SchedulerMixin``, transformers' models and tokenizers …), so both are thin
``ModelMixin, ConfigMixin`` wrappers. ``model_index.json`` records them as
``["saeuron.method.components", "DiffusersSae"]``; diffusers resolves that module from
``sys.modules`` (it never imports a module a folder names), which importing
:mod:`saeuron.method.unlearned_pipeline` takes care of. :mod:`saeuron.sae` stays free of diffusers.
"""

from __future__ import annotations

import os
from functools import wraps
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin  # ModelMixin must be a name of this module: diffusers looks it up here when loading

from saeuron.method.recipe import Recipe
from saeuron.method.selection import Gate, Rules
from saeuron.method.steering import Steering
from saeuron.sae import Sae, SaeConfig

RULE_TENSORS = ("timestep_index", "latent", "scale", "threshold", "concept_index")


class DiffusersSae(ModelMixin, ConfigMixin):
    """Holds a plain :class:`~saeuron.sae.Sae` as ``.sae``; saved as ``config.json`` (the published
    ``cfg.json`` fields under ``cfg``) and ``diffusion_pytorch_model.safetensors``."""

    def __init__(self, cfg: dict[str, Any], inference: str | None = None):
        super().__init__()
        sae_cfg, d_in = SaeConfig.from_json_dict(cfg, source="DiffusersSae config")
        self.sae = Sae(d_in, sae_cfg)
        self.sae.inference = inference
        self.register_to_config(cfg=dict(cfg), inference=inference)

    @classmethod
    def from_sae(cls, sae: Sae) -> DiffusersSae:
        """Wraps ``sae`` itself (no copy of its weights)."""
        with torch.device("meta"):
            component = cls(sae.cfg.to_json_dict(sae.d_in), sae.inference)
        component.sae = sae
        return component

    @wraps(ModelMixin.save_pretrained)  # keeps its signature, which the pipeline inspects for safe_serialization …
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        # The Sae may have been switched to another inference mode since construction.
        self.register_to_config(cfg=self.sae.cfg.to_json_dict(self.sae.d_in), inference=self.sae.inference)
        super().save_pretrained(save_directory, *args, **kwargs)


class DiffusersRecipe(ModelMixin, ConfigMixin):
    """Holds an unlearning :class:`~saeuron.method.recipe.Recipe`: its metadata as the config, its rules
    as buffers. Saved with ``Recipe.save``, so the folder is a plain recipe folder (``recipe.json`` +
    ``recipe.safetensors``) that ``Recipe.load`` and ``saeuron unlearn`` read too."""

    def __init__(self, recipe: Recipe):
        super().__init__()
        self.register_to_config(
            hookpoint=recipe.hookpoint,
            sae_ref=recipe.sae_ref,
            sae_fingerprint=recipe.sae_fingerprint,
            base_model=recipe.base_model,
            concepts=recipe.concepts,
            timesteps=list(recipe.timesteps),
            sae_inference=recipe.sae_inference,
            contrast=recipe.contrast,
            halves=recipe.halves,
            gate=recipe.gate.record(),
        )
        for name in RULE_TENSORS:
            self.register_buffer(name, getattr(recipe.rules, name))
        for name, tensor in recipe.steering.tensors().items():
            self.register_buffer(name, tensor)
        if recipe.detect is not None:
            self.register_buffer("detect_threshold", recipe.detect)
        if recipe.detect_index is not None:
            self.register_buffer("detect_index", recipe.detect_index)

    @property
    def recipe(self) -> Recipe:
        c = self.config
        rules = Rules(*(getattr(self, name) for name in RULE_TENSORS))
        return Recipe(
            c.hookpoint,
            c.sae_ref,
            c.sae_fingerprint,
            c.base_model,
            dict(c.concepts),
            list(c.timesteps),
            rules,
            c.get("sae_inference", ""),
            c.get("contrast", "mean"),
            Steering.from_tensors(self._steering_buffers()),
            c.get("halves", "both"),
            Gate(**c.get("gate", {})),
            getattr(self, "detect_threshold", None),
            getattr(self, "detect_index", None),
        )

    def _steering_buffers(self) -> dict[str, torch.Tensor]:
        """The recipe's ``steer_*`` tensors (``steer_map`` only where a concept steers by a map)."""
        return {name: tensor for name, tensor in self.named_buffers() if name.startswith("steer_")}

    def to(self, *args, **kwargs) -> DiffusersRecipe:
        # Rules keep their dtype: the edit casts them to the SAE's, and a cast pipeline must save the same recipe.
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        return self if device is None else super().to(device, non_blocking=non_blocking)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        recipe = self.recipe
        recipe.rules = Rules(*(getattr(self, name).cpu() for name in RULE_TENSORS))
        recipe.steering = Steering.from_tensors({name: tensor.cpu() for name, tensor in self._steering_buffers().items()})
        recipe.detect = None if recipe.detect is None else recipe.detect.cpu()
        recipe.detect_index = None if recipe.detect_index is None else recipe.detect_index.cpu()
        recipe.save(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DiffusersRecipe:
        """``kwargs`` are diffusers' loading arguments (``torch_dtype``, ``device_map`` …), which a recipe ignores."""
        return cls(Recipe.load(pretrained_model_name_or_path))
