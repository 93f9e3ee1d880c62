"""MiniCanvas concepts and prompt templates, following UnlearnCanvas's conventions.

Styles are ``Snake_Case`` and written with spaces in prompts ("in Neon Glow style."); objects are
capitalised plurals like UnlearnCanvas's classes ("Cats", "Towers"). ``NO_STYLE`` is the label of
the unstyled neutral rendering, which unstyled prompts ("An image of Stars.") should produce.
"""

from __future__ import annotations

from saeuron.benchmarks import templates
from saeuron.benchmarks.prompts import UNSTYLED

STYLES = (
    "Diagonal_Stripes",
    "Polka_Dots",
    "Checkerboard",
    "Flat_Pop",
    "Thick_Outline",
    "Sunset_Gradient",
    "Noisy_Texture",
    "Neon_Glow",
    "Pastel_Blur",
    "Mosaic_Tiles",
)
OBJECTS = ("Circles", "Squares", "Triangles", "Stars", "Crosses", "Rings", "Hearts", "Diamonds")
NO_STYLE = UNSTYLED  # the classifier's label and the statistics' concept name agree
STYLE_LABELS = (*STYLES, NO_STYLE)
"""The style classifier's classes: the styles, then "none" for the unstyled rendering."""

# Free-form captions per object, UnlearnCanvas's anchor prompts in miniature; the SAE-training
# prompts are "{caption} in {Style} style." and "{caption}.".
CAPTION_TEMPLATES = (
    "An image of {object}",
    "A picture of {object}",
    "A drawing of {object}",
    "A painting of {object}",
    "A photo of {object}",
    "A sketch of {object}",
    "An illustration of {object}",
    "A poster of {object}",
)


def style_or_none(label: str | None) -> str | None:
    """A style label of the classifier ("none" included) as a prompt style (None = unstyled)."""
    return None if label in (None, NO_STYLE) else label


def eval_prompt(obj: str, style: str | None) -> str:
    return templates.eval_prompt(obj, style_or_none(style))


def training_prompt(caption: str, style: str | None) -> str:
    return templates.train_prompt(caption, style_or_none(style))


def captions(obj: str) -> list[str]:
    return [template.format(object=obj) for template in CAPTION_TEMPLATES]


def vocabulary_corpus() -> list[str]:
    """Every prompt the benchmark can produce, for learning the tokenizer's merges."""
    prompts = []
    for obj in OBJECTS:
        for style in (*STYLES, None):
            prompts.append(eval_prompt(obj, style))
            prompts += [training_prompt(caption, style) for caption in captions(obj)]
    return prompts
