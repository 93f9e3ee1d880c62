"""The prompts a search scores (p, γ) on: disjoint from the evaluation prompts and seeds.

The reference tunes on its SAE-training prompts with seed 42, so the tuned parameters have seen the
very images they are later scored on. Here the tuning set uses the benchmark's free-form captions
(never the evaluation template — a caption that would reproduce an evaluation prompt is skipped)
with seeds from their own range, and the search refuses any overlap.

For a concept it holds three groups — images of the concept (for UA), of the other concepts of its
kind (for IRA) and of the other kind's axis (unstyled images for a style's CRA) — merged so that
every prefix holds all three: a multi-fidelity search can stop a trial after any number of prompts
and still score UA, IRA and CRA.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from saeuron.benchmarks.base import Benchmark, check_kind
from saeuron.benchmarks.prompts import PromptRow
from saeuron.benchmarks.templates import train_prompt

TUNING_SEED_BASE = 10_000
"""Tuning seeds are TUNING_SEED_BASE + i; evaluation uses 188…888 and SAE training 42."""


def proportional_merge(groups: Sequence[Sequence], shares: Sequence[float] | None = None) -> list:
    """Interleave groups so that any prefix holds them in the proportions ``shares`` (default: their
    sizes), until a group runs out."""
    shares = shares or [len(g) for g in groups]
    taken = [0] * len(groups)
    out = []
    for _ in range(sum(len(g) for g in groups)):
        i = min((k for k in range(len(groups)) if taken[k] < len(groups[k])), key=lambda k: ((taken[k] + 0.5) / shares[k], k))
        out.append(groups[i][taken[i]])
        taken[i] += 1
    return out


_Cell = tuple[str | None, str, str]
"""One tuning prompt before it is numbered: (style or None, object, caption)."""

FORGET_SHARE, RETAIN_SHARE, OTHER_AXIS_SHARE = 0.4, 0.5, 0.1
"""Order of the tuning prompts: the concept's own images come early (40 % of each prefix until they
run out) so that UA, half of the objective, is measured on several images at the first rungs."""


def scorable_prefix(rows: Sequence[Mapping[str, Any]], concept: str, kind: str) -> int:
    """How many of the first tuning prompts a trial needs before it can report: one image of the concept (UA),
    one of another concept of its kind (IRA) and one of the other axis (CRA: an unstyled image for a style, a
    styled one for an object). ``len(rows) + 1`` when the rows never hold all three."""
    seen = set()
    for n, row in enumerate(rows, 1):
        label = row["style"] if kind == "style" else row["object"]
        if label == concept:
            seen.add("ua")
        elif label is not None:
            seen.add("ira")
        if (row["style"] is None) == (kind == "style"):
            seen.add("cra")
        if len(seen) == 3:
            return n
    return len(rows) + 1


def tuning_prompt_rows(
    spec: Benchmark,
    concept: str,
    kind: str,
    per_cell: int = 1,
    anchor_prompts_dir: str | None = None,
    seed: int = 0,
    forget_per_cell: int = 0,
    other_axis_per_cell: int = 0,
) -> list[PromptRow]:
    """For a style: every object in the concept's style and in every other style, plus every object
    unstyled; for an object: the concept and every other object, each in every style and unstyled.
    ``per_cell`` prompts per (style, object) cell, each with its own caption and seed; ``forget_per_cell`` and
    ``other_axis_per_cell`` (0: ``per_cell``) for the concept's own cells and the other axis's (a style's unstyled
    cells). Those groups are small (8 cells for a MiniCanvas style against 72 retained) while UA, CRA and the
    own-style CRA are read from them alone, so more prompts there is what makes the tuning objective predict the
    evaluation's (README, "Every concept", item 10)."""
    check_kind(kind)
    if per_cell < 1 or min(forget_per_cell, other_axis_per_cell) < 0:
        raise ValueError(
            f"tuning prompts per cell must be at least 1 (0 for the forgotten and other-axis cells: as the rest), got "
            f"{per_cell} (forgotten {forget_per_cell}, other axis {other_axis_per_cell})"
        )
    forget_per_cell, other_axis_per_cell = forget_per_cell or per_cell, other_axis_per_cell or per_cell
    names = spec.styles if kind == "style" else spec.objects
    if concept not in names:
        raise ValueError(f"unknown {kind} {concept!r}; {spec.name} has {list(names)}")
    evaluation = {r.prompt for r in spec.evaluation_prompt_rows()}
    captions = {
        o: [
            c
            for c in cs
            if train_prompt(c, None) not in evaluation and all(train_prompt(c, s) not in evaluation for s in spec.styles)
        ]
        for o, cs in spec.training_captions(anchor_prompts_dir).items()
    }
    empty = [o for o, cs in captions.items() if not cs]
    if empty:
        raise ValueError(f"no tuning captions for {empty} that differ from the evaluation prompts")
    rng = random.Random(f"{spec.name}/{concept}/{seed}")
    counter = iter(range(10**9))

    def cell(style: str | None, obj: str, n: int) -> list[_Cell]:
        picks = rng.sample(captions[obj], min(n, len(captions[obj])))
        picks += [rng.choice(captions[obj]) for _ in range(n - len(picks))]
        return [(style, obj, c) for c in picks]

    forget: list[_Cell] = []
    retain: list[_Cell] = []
    other_axis: list[_Cell] = []
    for obj in spec.objects:
        for style in spec.styles:
            if (style if kind == "style" else obj) == concept:
                forget.extend(cell(style, obj, forget_per_cell))
            else:
                retain.extend(cell(style, obj, per_cell))
        if kind == "style":
            other_axis.extend(cell(None, obj, other_axis_per_cell))
        else:
            (forget if obj == concept else retain).extend(cell(None, obj, forget_per_cell if obj == concept else per_cell))
    groups, shares = [], []
    for group, share in ((forget, FORGET_SHARE), (retain, RETAIN_SHARE), (other_axis, OTHER_AXIS_SHARE)):
        if group:
            rng.shuffle(group)
            groups.append(group)
            shares.append(share)
    rows = []
    for style, obj, caption in proportional_merge(groups, shares):
        i = next(counter)
        rows.append(PromptRow(i, train_prompt(caption, style), obj, style, TUNING_SEED_BASE + seed * 100_000 + i))
    overlap = {r.prompt for r in rows} & evaluation
    if overlap:  # the caption filter above should make this impossible
        raise AssertionError(f"tuning prompts overlap the evaluation prompts: {sorted(overlap)[:3]}")
    return rows
