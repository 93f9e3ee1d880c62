"""Procedural MiniCanvas images: a shape (the object) drawn in a palette and rendering (the style).

Rendered at 128×128 with PIL and box-downsampled to 32×32 so edges are anti-aliased. Every image
is a pure function of (style, object, seed): position jitter ±8 %, radius 28–38 % of the canvas,
rotation ±15° and the texture phase all come from the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from saeuron.benchmarks.minicanvas.concepts import NO_STYLE, OBJECTS, STYLE_LABELS

CANVAS = 128
IMAGE_SIZE = 32


@dataclass(frozen=True)
class StyleSpec:
    background: tuple[int, int, int]
    colors: tuple[tuple[int, int, int], ...]
    rendering: str


STYLE_SPECS: dict[str, StyleSpec] = {
    "Diagonal_Stripes": StyleSpec((170, 210, 250), ((220, 30, 40), (250, 220, 40)), "stripes"),
    "Polka_Dots": StyleSpec((250, 240, 170), ((30, 60, 200), (250, 250, 250)), "dots"),
    "Checkerboard": StyleSpec((170, 230, 170), ((110, 30, 140), (245, 245, 245)), "checker"),
    "Flat_Pop": StyleSpec((40, 220, 230), ((230, 30, 170),), "flat"),
    "Thick_Outline": StyleSpec((20, 30, 80), ((255, 140, 0),), "outline"),
    "Sunset_Gradient": StyleSpec((60, 60, 60), ((255, 160, 40), (120, 30, 160)), "gradient"),
    "Noisy_Texture": StyleSpec((120, 80, 40), ((60, 190, 60),), "noise"),
    "Neon_Glow": StyleSpec((0, 0, 0), ((60, 255, 200),), "glow"),
    "Pastel_Blur": StyleSpec((255, 250, 205), ((250, 170, 200),), "blur"),
    "Mosaic_Tiles": StyleSpec((200, 200, 200), ((230, 40, 40), (40, 120, 230), (250, 200, 30), (40, 170, 80)), "tiles"),
    NO_STYLE: StyleSpec((255, 255, 255), ((128, 128, 128),), "flat"),
}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "Squares":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif kind == "Triangles":
        pts = [(0.0, -1.0), (0.95, 0.7), (-0.95, 0.7)]
    elif kind == "Stars":
        pts = [
            (
                (1.0 if i % 2 == 0 else 0.42) * math.sin(i * math.pi / 5),
                -(1.0 if i % 2 == 0 else 0.42) * math.cos(i * math.pi / 5),
            )
            for i in range(10)
        ]
    elif kind == "Crosses":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    elif kind == "Hearts":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = [
            (
                16 * math.sin(t) ** 3 / 17,
                -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17 - 0.1,
            )
            for t in ts
        ]
    elif kind == "Diamonds":
        pts = [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    else:
        raise ValueError(f"no polygon for {kind}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in pts]


def shape_mask(obj: str, rng: np.random.Generator) -> Image.Image:
    cx, cy = CANVAS * (0.5 + rng.uniform(-0.08, 0.08, size=2))
    r = CANVAS * rng.uniform(0.28, 0.38)
    angle = math.radians(rng.uniform(-15, 15))
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    if obj in ("Circles", "Rings"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if obj == "Rings":
            inner = 0.58 * r
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(obj, cx, cy, r, angle), fill=255)
    return mask


def _texture(spec: StyleSpec, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    colors = np.array(spec.colors, dtype=np.float32)
    phase = rng.uniform(0, 16)
    kind = spec.rendering
    if kind == "stripes":
        index = (((x + y + phase) // 8) % 2).astype(int)
        return colors[index]
    if kind == "dots":
        p = 14
        dx, dy = (x + phase) % p - p / 2, (y + phase) % p - p / 2
        return colors[(dx * dx + dy * dy < 16).astype(int)]
    if kind == "checker":
        return colors[((((x + phase) // 12) + ((y + phase) // 12)) % 2).astype(int)]
    if kind == "gradient":
        w = (y / (CANVAS - 1))[..., None]
        return colors[0] * (1 - w) + colors[1] * w
    if kind == "noise":
        coarse = rng.normal(0, 1, size=(9, 9)).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse, mode="F").resize((CANVAS, CANVAS), Image.BILINEAR))
        grain = rng.normal(0, 0.5, size=(CANVAS, CANVAS)).astype(np.float32)
        return colors[0] + (35 * (field + grain))[..., None]
    if kind == "tiles":
        cells = rng.integers(0, len(colors), size=(CANVAS // 16 + 1, CANVAS // 16 + 1))
        return colors[cells[(y // 16).astype(int), (x // 16).astype(int)]]
    return np.broadcast_to(colors[0], (CANVAS, CANVAS, 3)).copy()


def render(style: str, obj: str, seed: int) -> np.ndarray:
    """A 32×32×3 uint8 image of ``obj`` in ``style`` (``NO_STYLE`` for the neutral rendering)."""
    if style not in STYLE_SPECS:
        raise ValueError(f"unknown MiniCanvas style {style!r}; known: {list(STYLE_LABELS)}")
    if obj not in OBJECTS:
        raise ValueError(f"unknown MiniCanvas object {obj!r}; known: {list(OBJECTS)}")
    rng = np.random.default_rng(seed)
    spec = STYLE_SPECS[style]
    mask = shape_mask(obj, rng)
    if spec.rendering in ("outline", "glow"):
        thick = 9 if spec.rendering == "outline" else 5
        mask = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(thick)), mask.filter(ImageFilter.MinFilter(thick)))
    if spec.rendering == "glow":
        halo = np.asarray(mask.filter(ImageFilter.GaussianBlur(6)), dtype=np.float32) / 255
        core = np.asarray(mask, dtype=np.float32) / 255
        alpha = np.clip(core + 2.0 * halo, 0, 1)
    elif spec.rendering == "blur":
        alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(5)), dtype=np.float32) / 255
    else:
        alpha = np.asarray(mask, dtype=np.float32) / 255
    texture = _texture(spec, rng)
    background = np.array(spec.background, dtype=np.float32)
    canvas = background * (1 - alpha[..., None]) + texture * alpha[..., None]
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX))


def render_grid(cells: list[list[np.ndarray]], scale: int = 2, pad: int = 2) -> Image.Image:
    """Tile rows of H×W×3 images into one picture (rows = first index)."""
    rows, cols = len(cells), max(len(row) for row in cells)
    h, w = cells[0][0].shape[:2]
    grid = Image.new("RGB", (cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad), (255, 255, 255))
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            tile = Image.fromarray(cell).resize((w * scale, h * scale), Image.NEAREST)
            grid.paste(tile, (pad + j * (w * scale + pad), pad + i * (h * scale + pad)))
    return grid
