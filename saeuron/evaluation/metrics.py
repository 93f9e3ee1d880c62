"""UnlearnCanvas's scores from judged images: UA, IRA and CRA, single-concept and sequential.

Input rows are judged images: ``style`` (None for an unstyled prompt), ``object``, and the judge's
``style_pred`` / ``object_pred`` (class names). Definitions (method reference §6.3):

- forgetting styles S*: UA = mean over s in S* of 1 − acc(s), with acc(s) the style accuracy on the
  styled images of s; IRA = mean of acc(s) over the other styles; CRA = mean over objects of the
  object accuracy on the **unstyled** images (as the reference). ``cra_styled`` is the object
  accuracy over all styled images instead (mean over objects), ``cra_forgotten`` the object accuracy on
  the forgotten styles' own images (the object should survive its style), both reported beside it;
- forgetting objects O*: acc(o) is the object accuracy on o's styled **and** unstyled images;
  UA = mean over o in O* of 1 − acc(o); IRA = mean over the other objects; CRA = mean over styles of
  the style accuracy on styled images.

``soft=True`` replaces each hit (0 or 1) by the judge's probability of the true class
(``style_prob`` / ``object_prob``): the same criterion, graded, which a search uses to rank
candidates that tie on a few images.

Weighting of the unstyled images in an object's accuracy: ``"per_image"`` (default) counts each
image once (UnlearnCanvas after its PR #6: 250 styled + 5 unstyled per object); ``"paper"`` counts
each unstyled image once per style, giving them half the weight as in the paper-era numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

UNSTYLED_WEIGHTINGS = ("per_image", "paper")


class ForgettingScores(NamedTuple):
    kind: str
    forgotten: tuple[str, ...]
    ua: float
    ira: float
    cra: float
    cra_styled: float | None
    """Style forgetting only: object accuracy over all styled images (CRA is over unstyled ones)."""
    cra_forgotten: float | None
    """Style forgetting only: object accuracy on the forgotten styles' own images — is the object still drawn
    once its style is gone? (CRA over unstyled or all styled images hides a style that takes its objects along.)"""
    per_concept_accuracy: dict[str, float]
    """Accuracy of every concept of this kind (forgotten and retained)."""


def score_dict(s: ForgettingScores) -> dict[str, float]:
    """UA, IRA, CRA and whichever of CRA_styled / CRA_forgotten the kind has: what MLflow and the study record."""
    extra = {"CRA_styled": s.cra_styled, "CRA_forgotten": s.cra_forgotten}
    return {"UA": s.ua, "IRA": s.ira, "CRA": s.cra, **{k: v for k, v in extra.items() if v is not None}}


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise ValueError("no images to score")
    return float(np.mean(values))


def _hit(row: Mapping, axis: str, soft: bool) -> float:
    return float(row[f"{axis}_prob"]) if soft else float(row[f"{axis}_pred"] == row[axis])


def style_accuracy(rows: Sequence[Mapping], soft: bool = False) -> dict[str, float]:
    """Per style, the style accuracy on its styled images."""
    hits: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["style"] is not None:
            hits[r["style"]].append(_hit(r, "style", soft))
    return {s: float(np.mean(h)) for s, h in hits.items()}


def object_accuracy(
    rows: Sequence[Mapping], images: str = "all", unstyled_weighting: str = "per_image", soft: bool = False
) -> dict[str, float]:
    """Per object, the object accuracy on its ``images``: "all", "styled" or "unstyled"."""
    if unstyled_weighting not in UNSTYLED_WEIGHTINGS:
        raise ValueError(f"unstyled_weighting must be one of {UNSTYLED_WEIGHTINGS}, got {unstyled_weighting!r}")
    if images not in ("all", "styled", "unstyled"):
        raise ValueError(f"images must be 'all', 'styled' or 'unstyled', got {images!r}")
    num_styles = len({r["style"] for r in rows if r["style"] is not None})
    unstyled_weight = num_styles if unstyled_weighting == "paper" else 1
    hit: dict[str, float] = defaultdict(float)
    total: dict[str, float] = defaultdict(float)
    for r in rows:
        styled = r["style"] is not None
        if (images == "styled" and not styled) or (images == "unstyled" and styled):
            continue
        weight = 1 if styled else unstyled_weight
        hit[r["object"]] += weight * _hit(r, "object", soft)
        total[r["object"]] += weight
    return {o: hit[o] / total[o] for o in total}


def _split(accuracy: dict[str, float], forgotten: Sequence[str], kind: str) -> tuple[float, float]:
    missing = [c for c in forgotten if c not in accuracy]
    if missing:
        raise ValueError(f"no {kind} images of {missing} among the judged images (have {sorted(accuracy)})")
    retained = [a for c, a in accuracy.items() if c not in forgotten]
    return _mean(1 - accuracy[c] for c in forgotten), (_mean(retained) if retained else float("nan"))


def forgetting_scores(
    rows: Sequence[Mapping], kind: str, forgotten: Sequence[str], unstyled_weighting: str = "per_image", soft: bool = False
) -> ForgettingScores:
    """UA / IRA / CRA of the images of one model that forgot the ``kind`` concepts ``forgotten``."""
    if kind == "style":
        accuracy = style_accuracy(rows, soft)
        ua, ira = _split(accuracy, forgotten, kind)
        unstyled = object_accuracy(rows, "unstyled", soft=soft)
        if not unstyled:
            raise ValueError("style forgetting's CRA needs the unstyled images ('An image of {object}.')")
        cra = _mean(unstyled.values())
        cra_styled = _mean(object_accuracy(rows, "styled", soft=soft).values())
        own = [r for r in rows if r["style"] in forgotten]
        cra_forgotten = _mean(object_accuracy(own, "styled", soft=soft).values())
        return ForgettingScores(kind, tuple(forgotten), ua, ira, cra, cra_styled, cra_forgotten, accuracy)
    if kind == "object":
        accuracy = object_accuracy(rows, "all", unstyled_weighting, soft)
        ua, ira = _split(accuracy, forgotten, kind)
        cra = _mean(style_accuracy(rows, soft).values())
        return ForgettingScores(kind, tuple(forgotten), ua, ira, cra, None, None, accuracy)
    raise ValueError(f"kind must be 'style' or 'object', got {kind!r}")


def retain_image_counts(rows: Sequence[Mapping], kind: str, forgotten: Sequence[str]) -> tuple[int, int]:
    """How many of ``rows`` :func:`forgetting_scores` reads IRA and CRA on: a style's other-style and unstyled
    images, an object's other-object and styled ones (what a bound on their sampling noise needs)."""
    if kind == "style":
        return sum(r["style"] is not None and r["style"] not in forgotten for r in rows), sum(r["style"] is None for r in rows)
    if kind == "object":
        return sum(r["object"] not in forgotten for r in rows), sum(r["style"] is not None for r in rows)
    raise ValueError(f"kind must be 'style' or 'object', got {kind!r}")


def average_scores(scores: Sequence[ForgettingScores]) -> dict[str, float]:
    """Means over forget concepts (one model per concept), as the benchmark reports them."""
    out = {"UA": _mean(s.ua for s in scores), "IRA": _mean(s.ira for s in scores), "CRA": _mean(s.cra for s in scores)}
    for key, values in (("CRA_styled", [s.cra_styled for s in scores]), ("CRA_forgotten", [s.cra_forgotten for s in scores])):
        known = [v for v in values if v is not None]
        if known:
            out[key] = _mean(known)
    return out


class SequentialStep(NamedTuple):
    step: int
    forgotten: tuple[str, ...]
    ua_per_concept: dict[str, float]
    """1 − accuracy of every concept forgotten so far, under this step's model."""
    ua: float
    ira: float
    cra: float


def sequential_scores(
    steps: Sequence[tuple[Sequence[str], Sequence[Mapping]]], kind: str, unstyled_weighting: str = "per_image"
) -> list[SequentialStep]:
    """``steps``: per step, (concepts forgotten so far, that step's model's judged images). Every
    number of a step is measured on that step's images (the reference scored the last model for
    every step's retain accuracy)."""
    out = []
    for i, (forgotten, rows) in enumerate(steps):
        scores = forgetting_scores(rows, kind, forgotten, unstyled_weighting)
        ua_each = {c: 1 - scores.per_concept_accuracy[c] for c in forgotten}
        out.append(SequentialStep(i + 1, tuple(forgotten), ua_each, scores.ua, scores.ira, scores.cra))
    return out
