"""Benchmarks by name: MiniCanvas (embedded) and UnlearnCanvas (from paths the user gives).

A study config says ``benchmark: minicanvas`` or ``benchmark: unlearncanvas`` plus paths; this
module turns that into the concept lists, the base model folder and the prompt rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from saeuron.benchmarks import prompts
from saeuron.benchmarks.minicanvas import concepts as mc

BENCHMARKS = ("minicanvas", "unlearncanvas")


PAPER_STYLE_HOOKPOINT = "unet.up_blocks.1.attentions.2"
PAPER_OBJECT_HOOKPOINT = "unet.up_blocks.1.attentions.1"


@dataclass(frozen=True)
class Benchmark:
    name: str
    styles: tuple[str, ...]
    objects: tuple[str, ...]
    themes: tuple[str, ...]
    """Styles used in the SAE-training prompts (UnlearnCanvas adds Seed_Images)."""
    eval_seeds: tuple[int, ...]
    style_hookpoint: str = PAPER_STYLE_HOOKPOINT
    object_hookpoint: str = PAPER_OBJECT_HOOKPOINT

    def hookpoint(self, kind: str) -> str:
        if kind not in ("style", "object"):
            raise ValueError(f"kind must be 'style' or 'object', got {kind!r}")
        return self.style_hookpoint if kind == "style" else self.object_hookpoint

    @property
    def hookpoints(self) -> list[str]:
        return list(dict.fromkeys([self.object_hookpoint, self.style_hookpoint]))


# MiniCanvas's objects are unlearned at its mid block, not at the paper's up.1.1. Its UNet has three
# levels, so up_blocks.1 already draws the shape: a linear probe tells the object from one patch of
# up.1.1 for 53-79 % of patches (by step), from one patch of mid_block.attentions.0 for 100 %; and
# the method's selected up.1.1 latents fire on 75-90 % of every object's patches. At the mid block
# forgetting Stars keeps every other object (README, "Objects").
MINICANVAS = Benchmark("minicanvas", mc.STYLES, mc.OBJECTS, mc.STYLES, (188, 288, 588, 688, 888),
                       object_hookpoint="unet.mid_block.attentions.0")
UNLEARNCANVAS = Benchmark(
    "unlearncanvas", prompts.UNLEARNCANVAS_STYLES, prompts.UNLEARNCANVAS_OBJECTS, prompts.UNLEARNCANVAS_THEMES,
    prompts.UNLEARNCANVAS_EVAL_SEEDS,
)


def get_benchmark(name: str) -> Benchmark:
    if name == "minicanvas":
        return MINICANVAS
    if name == "unlearncanvas":
        return UNLEARNCANVAS
    raise ValueError(f"unknown benchmark {name!r}; known: {list(BENCHMARKS)}")


def resolve_model_path(benchmark: str, model_path: str | None) -> Path:
    """The base model folder: the given one, or MiniCanvas's shipped pipeline."""
    if model_path:
        return Path(model_path).expanduser().resolve()
    if benchmark == "minicanvas":
        from saeuron.benchmarks.minicanvas import load_minicanvas

        return load_minicanvas().pipeline_path
    raise ValueError(
        f"benchmark {benchmark!r} needs model_path: a local diffusers folder of the UnlearnCanvas SD v1.5 "
        f"model (nothing is downloaded)"
    )


def model_identity(benchmark: str, model_path: str | None) -> str:
    """How a base model is named in manifests and recipes: the embedded model by name (its folder
    moves with the package and with every `ray job submit --working-dir` copy), others by path."""
    return str(Path(model_path).expanduser().resolve()) if model_path else f"embedded:{benchmark}"


def statistics_prompt_rows(benchmark: str, kind: str, anchor_prompts_dir: str | None = None, seed: int = 188,
                           styled_objects: bool = False) -> list[prompts.PromptRow]:
    """Prompts whose SAE activations define each concept, as in the reference: for a style, the
    first caption of every object in that style; for an object, all its captions unstyled (with
    ``styled_objects``, also each caption in one style, rotating through the styles, so that the
    object's latents are found across renderings). Every prompt uses ``seed``."""
    spec = get_benchmark(benchmark)
    captions = training_captions(benchmark, anchor_prompts_dir)
    rows: list[prompts.PromptRow] = []
    if kind == "style":
        for style in spec.styles:
            for obj in spec.objects:
                rows.append(prompts.PromptRow(len(rows), prompts.train_prompt(captions[obj][0], style), obj, style, seed))
    elif kind == "object":
        for obj in spec.objects:
            for i, caption in enumerate(captions[obj]):
                rows.append(prompts.PromptRow(len(rows), prompts.train_prompt(caption, None), obj, None, seed))
                if styled_objects:
                    style = spec.styles[i % len(spec.styles)]
                    rows.append(prompts.PromptRow(len(rows), prompts.train_prompt(caption, style), obj, style, seed))
    else:
        raise ValueError(f"kind must be 'style' or 'object', got {kind!r}")
    return rows


def training_captions(benchmark: str, anchor_prompts_dir: str | None) -> dict[str, list[str]]:
    if benchmark == "minicanvas":
        return prompts.minicanvas_captions()
    get_benchmark(benchmark)
    if not anchor_prompts_dir:
        raise ValueError("benchmark 'unlearncanvas' needs anchor_prompts_dir (UnlearnCanvas_resources/anchor_prompts/finetune_prompts)")
    return prompts.read_anchor_captions(anchor_prompts_dir)


def training_prompt_rows(
    benchmark: str, anchor_prompts_dir: str | None = None, seed: int = 42, seeds_per_prompt: int = 1,
    max_prompts: int | None = None,
) -> list[prompts.PromptRow]:
    spec = get_benchmark(benchmark)
    return prompts.training_rows(training_captions(benchmark, anchor_prompts_dir), spec.themes, seed, seeds_per_prompt, max_prompts)


def evaluation_prompt_rows(benchmark: str, seeds: Sequence[int] | None = None) -> list[prompts.PromptRow]:
    spec = get_benchmark(benchmark)
    return prompts.evaluation_rows(spec.objects, spec.styles, seeds or spec.eval_seeds)
