"""What a finished search's trials hold beyond its choice, read from its ``search.json`` (no image is generated).

Two questions a search's log cannot answer: which (p, edit) it would choose at another floor on IRA and CRA (the
issue's bar is 0.95, the preset's floor 0.9), and whether the grid holds a trial that forgets a style *and* keeps its
objects on the style's own images — the choice cannot be cleaner than the best such trial. Both are read from the
tuning scores of the trials as the search judged them. The first is an estimate: ASHA's rungs applied the search's own
floor, so a search run with another one would carry other trials to the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from saeuron.storage import Location
from saeuron.tuning.choice import ConceptResult, choose, retains


@dataclass
class ReviewConfig:
    """``tune/review.py``: what to review and at which floor."""

    search: str = ""
    """A search's folder (local, shared or a bucket URI, as ``search.search_dir`` named it): its search.json is read."""
    min_retain: float = 0.95
    """The floor on IRA and CRA to choose at (the search's own is ``search.min_retain``)."""
    bar: float = 0.9
    """UA, IRA and CRA a style's trial needs to count as forgetting it cleanly (the most-objects-kept column)."""
    min_prompts: int = 24
    """Tuning prompts a trial must have scored before ASHA stopped it to count there (a few images say little)."""


class ConceptReview(NamedTuple):
    concept: str
    kind: str
    searched: str
    """The search's choice as its log names it ("p99.5 →Pastel_Blur β6")."""
    at_floor: dict[str, Any]
    """The trial chosen among those that scored every tuning prompt under the review's floor."""
    cleanest: dict[str, Any] | None
    """A style: the trial with the most objects kept on its own images among those with UA, IRA and CRA at the bar
    (and at least ``min_prompts`` prompts scored); None when no trial reaches the bar, or for an object."""
    trials: int
    finished: int
    """Trials that scored every tuning prompt (the only ones the choice may take)."""


def trial_label(trial: dict[str, Any]) -> str:
    return f"p{trial['percentile']:g} {trial['edit']}"


def review_concept(result: dict[str, Any], min_retain: float, bar: float = 0.9, min_prompts: int = 24) -> ConceptReview:
    """``result``: one concept of a search's ``search.json`` (a ``ConceptResult`` as a dict, its trials included)."""
    trials = result["trials"]
    if not trials:
        raise ValueError(f"{result['concept']}: the search recorded no trials")
    blocks: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:  # the kind's block first, as the search ran them
        blocks.setdefault(trial.get("hookpoint", ""), []).append(trial)
    # Each block's budget is its tuning prompt count; a trial that scored them all reached it.
    budgets = {h: max(t["prompts"] for t in ts) for h, ts in blocks.items()}
    per_block = [choose(ts, budgets[h], min_retain) for h, ts in blocks.items()]
    at_floor = max(per_block, key=lambda t: (retains(t, min_retain), t["objective"]))  # the kind's block wins ties
    cleanest = None
    if result["kind"] == "style":
        clean = [
            t
            for t in trials
            if t["prompts"] >= min(min_prompts, budgets[t.get("hookpoint", "")])
            and min(t["ua"], t["ira"], t["cra"]) >= bar
            and t.get("cra_own") is not None
        ]
        cleanest = max(clean, key=lambda t: (t["cra_own"], t["ua"], t["prompts"]), default=None)
    return ConceptReview(
        result["concept"],
        result["kind"],
        f"p{result['percentile']:g} {ConceptResult(**result).label}",
        at_floor,
        cleanest,
        len(trials),
        sum(t["prompts"] >= budgets[t.get("hookpoint", "")] for t in trials),
    )


def review_search(summary: dict[str, Any], min_retain: float, bar: float = 0.9, min_prompts: int = 24) -> list[ConceptReview]:
    """Every concept of a search's ``search.json``."""
    if not 0 <= min_retain <= 1 or not 0 <= bar <= 1:
        raise ValueError(f"min_retain and bar are accuracies in [0, 1], got {min_retain} and {bar}")
    return [review_concept(result, min_retain, bar, min_prompts) for result in summary.values()]


def load_summary(search: str) -> dict[str, Any]:
    """A search folder's ``search.json``, refused with the reason when it is not one."""
    if not search:
        raise ValueError("name the search folder to review: --search DIR (a search's search_dir, with its search.json)")
    path = Location.parse(search) / "search.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path.uri} does not exist: --search takes a finished search's folder (search.search_dir)")
    summary = json.loads(path.read_text())
    if not isinstance(summary, dict) or any("trials" not in r for r in summary.values()):
        raise ValueError(f"{path.uri} is not a search summary with its trials (one written before trials were kept?)")
    return summary


def scores(trial: dict[str, Any]) -> str:
    own = "" if trial.get("cra_own") is None else f" / {trial['cra_own']:.2f}"
    return f"{trial['ua']:.2f} / {trial['ira']:.2f} / {trial['cra']:.2f}{own}"


def review_table(reviews: list[ConceptReview], min_retain: float, bar: float) -> str:
    """The reviews as a plain-text table (tuning scores: UA / IRA / CRA / own-style CRA)."""
    rows = [
        (
            "concept",
            "search's choice",
            f"choice at floor {min_retain:g}",
            "its scores",
            f"most objects kept at UA/IRA/CRA ≥ {bar:g}",
        )
    ]
    for r in reviews:
        cleanest = "–" if r.kind != "style" else "none"
        if r.cleanest is not None:
            cleanest = f"{trial_label(r.cleanest)}: {scores(r.cleanest)} ({r.cleanest['prompts']} prompts)"
        changed = "" if trial_label(r.at_floor) == r.searched else " *"
        rows.append((r.concept, r.searched, trial_label(r.at_floor) + changed, scores(r.at_floor), cleanest))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
