"""UnlearnCanvas's prompt templates, shared by every benchmark (MiniCanvas follows them)."""

from __future__ import annotations

EVAL_STYLED = "An image of {object} in {style} style."
EVAL_UNSTYLED = "An image of {object}."
TRAIN_STYLED = "{caption} in {style} style."
TRAIN_UNSTYLED = "{caption}."


def style_words(style: str) -> str:
    """Styles are written with spaces in prompts ("Van Gogh", "Seed Images")."""
    return style.replace("_", " ")


def eval_prompt(obj: str, style: str | None) -> str:
    return EVAL_UNSTYLED.format(object=obj) if style is None else EVAL_STYLED.format(object=obj, style=style_words(style))


def train_prompt(caption: str, style: str | None) -> str:
    return (
        TRAIN_UNSTYLED.format(caption=caption)
        if style is None
        else TRAIN_STYLED.format(caption=caption, style=style_words(style))
    )
