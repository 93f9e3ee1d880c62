"""Prompt sets of the benchmarks, as data: concept lists, templates and labelled prompt rows.

Every prompt row carries its ids and labels (prompt id, object, style or ``None``, seed), so later
stages select by label and never parse prompt strings.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from saeuron.benchmarks.templates import eval_prompt, train_prompt  # noqa: F401 (re-exported)
from saeuron.storage.inputs import local_input

# ---------------------------------------------------------------------------------- UnlearnCanvas
UNLEARNCANVAS_STYLES = (
    "Abstractionism",
    "Artist_Sketch",
    "Blossom_Season",
    "Bricks",
    "Byzantine",
    "Cartoon",
    "Cold_Warm",
    "Color_Fantasy",
    "Comic_Etch",
    "Crayon",
    "Cubism",
    "Dadaism",
    "Dapple",
    "Defoliation",
    "Early_Autumn",
    "Expressionism",
    "Fauvism",
    "French",
    "Glowing_Sunset",
    "Gorgeous_Love",
    "Greenfield",
    "Impressionism",
    "Ink_Art",
    "Joy",
    "Liquid_Dreams",
    "Magic_Cube",
    "Meta_Physics",
    "Meteor_Shower",
    "Monet",
    "Mosaic",
    "Neon_Lines",
    "On_Fire",
    "Pastel",
    "Pencil_Drawing",
    "Picasso",
    "Pop_Art",
    "Red_Blue_Ink",
    "Rust",
    "Sketch",
    "Sponge_Dabbed",
    "Structuralism",
    "Superstring",
    "Surrealism",
    "Ukiyoe",
    "Van_Gogh",
    "Vibrant_Flow",
    "Warm_Love",
    "Warm_Smear",
    "Watercolor",
    "Winter",
)
SEED_IMAGES = "Seed_Images"
UNLEARNCANVAS_THEMES = (*UNLEARNCANVAS_STYLES[:38], SEED_IMAGES, *UNLEARNCANVAS_STYLES[38:])
"""The 50 styles plus ``Seed_Images`` at index 38: the style classifier's 51 classes and the
themes of the SAE-training prompts."""
UNLEARNCANVAS_OBJECTS = (
    "Architectures",
    "Bears",
    "Birds",
    "Butterfly",
    "Cats",
    "Dogs",
    "Fishes",
    "Flame",
    "Flowers",
    "Frogs",
    "Horses",
    "Human",
    "Jellyfish",
    "Rabbits",
    "Sandwiches",
    "Sea",
    "Statues",
    "Towers",
    "Trees",
    "Waterfalls",
)
UNLEARNCANVAS_EVAL_SEEDS = (188, 288, 588, 688, 888)
ANCHOR_FILE = "sd_prompt_{object}.txt"


UNSTYLED = "none"
"""The concept name of unstyled prompts where statistics count them as a concept of their own."""


@dataclass(frozen=True)
class PromptRow:
    prompt_id: int
    prompt: str
    object: str
    style: str | None
    """``None`` for an unstyled prompt."""
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def read_anchor_captions(anchor_dir: str | Path, objects: Sequence[str] = UNLEARNCANVAS_OBJECTS) -> dict[str, list[str]]:
    """UnlearnCanvas's anchor prompts (``sd_prompt_<Object>.txt``, 80 lines each): stripped, one
    trailing "." dropped, as the reference does."""
    folder = local_input(anchor_dir, "anchor_prompts_dir")
    missing = [ANCHOR_FILE.format(object=o) for o in objects if not (folder / ANCHOR_FILE.format(object=o)).is_file()]
    if missing:
        raise FileNotFoundError(
            f"anchor prompt files missing in {folder}: {missing[:3]}{' …' if len(missing) > 3 else ''} "
            f"(point anchor_prompts_dir at UnlearnCanvas_resources/anchor_prompts/finetune_prompts)"
        )
    captions = {}
    for obj in objects:
        lines = [line.strip() for line in (folder / ANCHOR_FILE.format(object=obj)).read_text().splitlines()]
        captions[obj] = [line[:-1] if line.endswith(".") else line for line in lines if line]
    return captions


def training_rows(
    captions: dict[str, list[str]],
    themes: Sequence[str],
    seed: int = 42,
    seeds_per_prompt: int = 1,
    max_prompts: int | None = None,
) -> list[PromptRow]:
    """SAE-training prompts: every caption in every theme plus unstyled, ``seeds_per_prompt``
    times. Prompt ids number the full, unshuffled set, so they do not depend on ``max_prompts``;
    the kept subset is a seeded shuffle, as in the reference."""
    rows: list[PromptRow] = []
    for obj, lines in captions.items():
        for caption in lines:
            for style in (*themes, None):
                for _ in range(seeds_per_prompt):
                    prompt_id = len(rows)
                    rows.append(PromptRow(prompt_id, train_prompt(caption, style), obj, style, seed * 1_000_003 + prompt_id))
    random.Random(seed).shuffle(rows)
    if max_prompts is not None:
        rows = rows[:max_prompts]
    return sorted(rows, key=lambda row: row.prompt_id)


def evaluation_rows(
    objects: Sequence[str], styles: Sequence[str], seeds: Sequence[int], unstyled: bool = True
) -> list[PromptRow]:
    """ "An image of {Object} in {Style} style." for every style × object, plus "An image of
    {Object}." when ``unstyled``, each at every seed."""
    rows: list[PromptRow] = []
    for style in (*styles, *((None,) if unstyled else ())):
        for obj in objects:
            for seed in seeds:
                rows.append(PromptRow(len(rows), eval_prompt(obj, style), obj, style, int(seed)))
    return rows


def rows_from_batch(batch: dict) -> list[dict]:
    """Prompt rows back from a Ray Data numpy batch, where a batch of only unstyled prompts has
    its style column as float NaN."""
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    for row in rows:
        style = row.get("style")
        if style is None or (isinstance(style, (float, np.floating)) and np.isnan(style)) or style == "":
            row["style"] = None
    return rows
