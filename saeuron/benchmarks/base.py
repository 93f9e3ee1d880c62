"""What a benchmark is: its concepts and seeds, hookpoints, base model, captions, judges and defaults.

Everything that differs between benchmarks is a field or a method here, so that no code outside
``saeuron.benchmarks`` branches on a benchmark's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saeuron.benchmarks import prompts
from saeuron.storage.inputs import is_remote, local_input

if TYPE_CHECKING:
    from saeuron.benchmarks.judges import Judge
    from saeuron.sections import JudgeConfig

PAPER_STYLE_HOOKPOINT = "unet.up_blocks.1.attentions.2"
PAPER_OBJECT_HOOKPOINT = "unet.up_blocks.1.attentions.1"
KINDS = ("style", "object")
FID_MODES = ("auto", "domain", "inception", "none")


@dataclass(frozen=True)
class Benchmark:
    name: str
    styles: tuple[str, ...]
    objects: tuple[str, ...]
    themes: tuple[str, ...]
    """Styles used in the SAE-training prompts (UnlearnCanvas adds Seed_Images)."""
    eval_seeds: tuple[int, ...]
    search_percentiles: tuple[float, ...]
    """The (p, γ) grid a search takes when the config gives none."""
    search_multipliers: tuple[float, ...]
    style_hookpoint: str = PAPER_STYLE_HOOKPOINT
    object_hookpoint: str = PAPER_OBJECT_HOOKPOINT

    def hookpoint(self, kind: str) -> str:
        check_kind(kind)
        return self.style_hookpoint if kind == "style" else self.object_hookpoint

    @property
    def hookpoints(self) -> list[str]:
        return list(dict.fromkeys([self.object_hookpoint, self.style_hookpoint]))

    def concept_kind(self, concept: str) -> str:
        if concept in self.styles:
            return "style"
        if concept in self.objects:
            return "object"
        raise ValueError(
            f"{concept!r} is neither a style nor an object of {self.name}; styles: {list(self.styles)}, "
            f"objects: {list(self.objects)}"
        )

    # ------------------------------------------------------------------ what each benchmark supplies
    def resolve_model_path(self, model_path: str | None) -> Path:
        """The base model folder: the given one (a benchmark may ship its own)."""
        if model_path:
            return local_input(model_path, "model_path")
        raise ValueError(
            f"benchmark {self.name!r} needs model_path: a local diffusers folder of its Stable Diffusion "
            f"model (nothing is downloaded)"
        )

    def model_identity(self, model_path: str | None) -> str:
        """How a base model is named in manifests and recipes: by path, or an embedded model by name (its
        folder moves with the package and with every `ray job submit --working-dir` copy)."""
        if model_path and is_remote(model_path):
            return model_path  # the URI: every node's cache holds it elsewhere
        return str(Path(model_path).expanduser().resolve()) if model_path else f"embedded:{self.name}"

    def training_captions(self, anchor_prompts_dir: str | None) -> dict[str, list[str]]:
        raise NotImplementedError

    def load_judge(self, judge: JudgeConfig, device: str | torch.device = "cpu") -> Judge:
        raise NotImplementedError

    def fid_mode(self, requested: str, real_images_dir: str) -> str:
        """``auto`` resolved: Inception FID against real images when given, else none."""
        if requested not in FID_MODES:
            raise ValueError(f"fid must be one of {FID_MODES}, got {requested!r}")
        if requested == "domain":
            raise ValueError(f"fid=domain needs a domain feature extractor, which {self.name} lacks; use fid=inception or none")
        if requested == "auto":
            return "inception" if real_images_dir else "none"
        return requested

    def domain_real_images(self, cells: list[tuple[str, str]], per_cell: int) -> torch.Tensor:
        raise ValueError(f"{self.name} has no procedural real images for a domain FID")

    def attack_images(self, style: str, obj: str, images_dir: str) -> list[Path]:
        """The real images of ``obj`` in ``style`` an attack may target: UnlearnCanvas's dataset layout,
        ``<images_dir>/<Style>/<Object>/*.jpg`` (or .png), sorted by name so an index names one image everywhere."""
        if not images_dir:
            raise ValueError(f"{self.name} attacks real images of the concept: pass --target_images_dir (UnlearnCanvas's folder)")
        folder = local_input(f"{images_dir.rstrip('/')}/{style}/{obj}", "target_images_dir")  # that pair's folder only
        files = sorted(f for f in folder.glob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
        if not files:
            raise ValueError(
                f"{folder} holds no .jpg/.png images of {obj} in {style}: not UnlearnCanvas's <Style>/<Object>/ layout"
            )
        return files

    def attack_image(self, style: str, obj: str, index: int, images_dir: str, size: int) -> torch.Tensor:
        """Image ``index`` of :meth:`attack_images` as ``[3, size, size]`` in [0, 1] (resize 512 bicubic and center
        crop, as the reference; then to the pipeline's size)."""
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2.functional import center_crop, pil_to_tensor, resize

        files = self.attack_images(style, obj, images_dir)
        if not 0 <= index < len(files):
            raise ValueError(
                f"attack index {index} is out of range: {obj} in {style} has {len(files)} images (0..{len(files) - 1})"
            )
        image = pil_to_tensor(Image.open(files[index]).convert("RGB")).float() / 255
        bicubic = InterpolationMode.BICUBIC
        square = center_crop(resize(image, [512], interpolation=bicubic, antialias=True), [512, 512])
        return resize(square, [size, size], interpolation=bicubic, antialias=True).clamp(0, 1)

    # ------------------------------------------------------------------------------- prompt sets
    def training_prompt_rows(
        self, anchor_prompts_dir: str | None = None, seed: int = 42, seeds_per_prompt: int = 1, max_prompts: int | None = None
    ) -> list[prompts.PromptRow]:
        """Labelled SAE-training prompts: every caption in every theme, and unstyled."""
        return prompts.training_rows(self.training_captions(anchor_prompts_dir), self.themes, seed, seeds_per_prompt, max_prompts)

    def evaluation_prompt_rows(self, seeds: Sequence[int] | None = None) -> list[prompts.PromptRow]:
        """Labelled "An image of {Object} in {Style} style." / "An image of {Object}." prompts."""
        return prompts.evaluation_rows(self.objects, self.styles, seeds or self.eval_seeds)

    def statistics_prompt_rows(
        self,
        kind: str,
        anchor_prompts_dir: str | None = None,
        seed: int = 188,
        styled_objects: bool = False,
        unstyled_reference: bool = False,
    ) -> list[prompts.PromptRow]:
        """Prompts whose SAE activations define each concept, as in the reference: for a style, the
        first caption of every object in that style; for an object, all its captions unstyled (with
        ``styled_objects``, also each caption in one style, rotating through the styles, so that the
        object's latents are found across renderings). With ``unstyled_reference``, a style's rows
        end with every object's first caption unstyled, which the statistics count as the retained
        concept ``prompts.UNSTYLED``. Prompt i is sampled with seed ``seed + i``: fresh noise for
        every prompt, as the reference draws from one generator, but each image reproducible on its own."""
        check_kind(kind)
        captions = self.training_captions(anchor_prompts_dir)
        rows: list[prompts.PromptRow] = []
        if kind == "style":
            for style in self.styles:
                for obj in self.objects:
                    rows.append(
                        prompts.PromptRow(len(rows), prompts.train_prompt(captions[obj][0], style), obj, style, seed + len(rows))
                    )
            if unstyled_reference:
                for obj in self.objects:
                    rows.append(
                        prompts.PromptRow(len(rows), prompts.train_prompt(captions[obj][0], None), obj, None, seed + len(rows))
                    )
            return rows
        for obj in self.objects:
            for i, caption in enumerate(captions[obj]):
                rows.append(prompts.PromptRow(len(rows), prompts.train_prompt(caption, None), obj, None, seed + len(rows)))
                if styled_objects:
                    style = self.styles[i % len(self.styles)]
                    rows.append(prompts.PromptRow(len(rows), prompts.train_prompt(caption, style), obj, style, seed + len(rows)))
        return rows

    def map_prompt_pairs(
        self, rows: Sequence[prompts.PromptRow], anchor: str, anchor_prompts_dir: str | None = None, seeds: int = 10
    ) -> list[tuple[prompts.PromptRow, str]]:
        """The style statistics prompts ``rows`` (unstyled ones and ``anchor``'s own left out), each with ``seeds``
        fresh seeds, and beside each the same caption in ``anchor``'s style (``prompts.UNSTYLED``: unstyled): the pairs
        a map edit is fitted on. Seed j of a prompt is its statistics seed + (j + 1)·``MAP_SEED_OFFSET``, never a
        statistics, tuning or evaluation seed."""
        captions = self.training_captions(anchor_prompts_dir)
        other = None if anchor == prompts.UNSTYLED else anchor
        return [
            (
                prompts.PromptRow(row.prompt_id, row.prompt, row.object, row.style, row.seed + (j + 1) * MAP_SEED_OFFSET),
                prompts.train_prompt(captions[row.object][0], other),
            )
            for row in rows
            if row.style is not None and row.style != other
            for j in range(seeds)
        ]


MAP_SEED_OFFSET = 100_000


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'style' or 'object', got {kind!r}")
