"""A Stable Diffusion pipeline with concepts removed by an SAE recipe: a diffusers pipeline like any other.

    pipe = UnlearnedPipeline.from_recipe(base_pipe, sae, recipe)        # shares base_pipe's modules
    images = pipe("An image of Stars in Neon Glow style.").images
    pipe.save_pretrained("unlearned/")                                  # model_index.json + one folder per component
    pipe = UnlearnedPipeline.from_pretrained("unlearned/", torch_dtype=torch.float16).to("cuda")

Its components are Stable Diffusion's plus ``sae`` (:class:`~saeuron.method.components.DiffusersSae`)
and ``recipe`` (:class:`~saeuron.method.components.DiffusersRecipe`); ``error_mode`` and
``base_model`` (the reference of the model the recipe was made for) are in its config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from saeuron.diffusion.hooks import EditFn, GenerationOutput, HookedPipeline
from saeuron.method.components import DiffusersRecipe, DiffusersSae
from saeuron.method.edit import UnlearningEdit
from saeuron.method.recipe import Recipe
from saeuron.sae import Sae


class UnlearnedPipeline(StableDiffusionPipeline):
    # The SAE and recipe run inside the UNet's forward, so offloading keeps them on the execution device.
    _exclude_from_cpu_offload = [*StableDiffusionPipeline._exclude_from_cpu_offload, "sae", "recipe"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        sae: DiffusersSae,
        recipe: DiffusersRecipe,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        requires_safety_checker: bool = False,
        base_model: str = "",
        error_mode: str = "correct",
    ):
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            image_encoder,
            requires_safety_checker,
        )
        self.register_modules(sae=sae, recipe=recipe)
        self.register_to_config(base_model=base_model or recipe.config.base_model, error_mode=error_mode)
        self.hooked = HookedPipeline(self)
        self.hooked.validate_hookpoints([recipe.config.hookpoint, *recipe.recipe.steering.companions])
        self._edit_key: tuple[int, int, str, torch.device, torch.dtype] | None = None
        self._edit: UnlearningEdit | None = None
        self._edit_installed = False
        self._current_edit()  # fails here, not at the first image, on a bad error_mode or an SAE the recipe is not for

    @classmethod
    def from_recipe(
        cls, pipe: StableDiffusionPipeline, sae: Sae, recipe: Recipe, base_model: str | None = None, error_mode: str = "correct"
    ) -> UnlearnedPipeline:
        """An unlearned pipeline sharing ``pipe``'s modules and ``sae`` (nothing is copied)."""
        components = {name: module for name, module in pipe.components.items() if name in cls._get_signature_keys(cls)[0]}
        unlearned = cls(
            **components,
            sae=DiffusersSae.from_sae(sae),
            recipe=DiffusersRecipe(recipe),
            requires_safety_checker=bool(pipe.config.get("requires_safety_checker", False)),
            base_model=base_model or "",
            error_mode=error_mode,
        )
        unlearned.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        return unlearned

    @property
    def dtype(self) -> torch.dtype:
        # The recipe sorts first among the components and keeps fp32 rules; the pipeline computes in the UNet's dtype.
        return self.unet.dtype

    @property
    def edit(self) -> UnlearningEdit:
        return self._current_edit()

    def _current_edit(self) -> UnlearningEdit:
        # Rebuilt when the SAE moves or is cast (the edit's lookup tables live on its device, in its dtype).
        sae = self.sae.sae
        key = (id(sae), id(self.recipe), self.config.error_mode, sae.device, sae.dtype)
        edit = self._edit
        if edit is None or key != self._edit_key:
            edit = self._edit = UnlearningEdit(sae, self.recipe.recipe, self.config.error_mode)
            self._edit_key = key
        return edit

    def __call__(self, *args, **kwargs):
        """Generate exactly as ``StableDiffusionPipeline.__call__`` would, with the concepts removed."""
        if self._edit_installed:  # called from generate(), which installed it
            return super().__call__(*args, **kwargs)
        with self.hooked.hooks(edits=self._current_edit().hooks()):
            return super().__call__(*args, **kwargs)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], **kwargs) -> GenerationOutput:
        """One image per (prompt, seed), each image's noise depending only on its seed (``HookedPipeline.generate``)."""
        edits: dict[str, EditFn] = self._current_edit().hooks()
        self._edit_installed = True
        try:
            return self.hooked.generate(prompts, seeds, edits=edits, **kwargs)
        finally:
            self._edit_installed = False
