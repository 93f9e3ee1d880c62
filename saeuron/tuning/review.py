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

from saeuron.method.recipe import edit_label
from saeuron.storage import Location
from saeuron.tuning.choice import choose, retains, searched_steer


@dataclass
class ReviewConfig:
    """``tune/review.py``: what to review and at which floor."""

    search: str = ""
    """A search's folder (local, shared or a bucket URI, as ``search.search_dir`` named it): its search.json is read."""
    min_retain: float = 0.95
    """The floor on IRA and CRA to choose at (the search's own is ``search.min_retain``)."""
    max_drift: float = 0.0
    """The ceiling on the kept images' drift to choose at (``search.max_drift``); 0: none."""
    bar: float = 0.9
    """UA, IRA and CRA a style's trial needs to count as forgetting it cleanly (the most-objects-kept column)."""
    min_prompts: int = 24
    """Tuning prompts a trial must have scored before ASHA stopped it to count there (a few images say little)."""


class ConceptReview(NamedTuple):
    concept: str
    kind: str
    searched: dict[str, Any]
    """The search's choice: percentile, edit (its label) and hookpoint."""
    at_floor: dict[str, Any]
    """The trial chosen among those that scored every tuning prompt under the review's floor."""
    kept_floor: bool
    """Whether ``at_floor`` keeps IRA and CRA at the floor (when no trial does, the choice is still made)."""
    cleanest: dict[str, Any] | None
    """A style: the trial with the most objects kept on its own images among those with UA, IRA and CRA at the bar
    (and at least ``min_prompts`` prompts scored); None when no trial reaches the bar, or for an object."""
    own_scored: bool
    """Whether the trials carry the own-style CRA at all (a style searched before it was kept does not)."""
    trials: int
    finished: int
    """Trials that scored every tuning prompt (the only ones the choice may take)."""
    blocks: int
    """Blocks the concept was searched at (a label names its block when there are several)."""


def trial_label(trial: dict[str, Any], with_block: bool = False) -> str:
    block = f" @{trial.get('hookpoint', '')}" if with_block else ""
    return f"p{trial['percentile']:g} {trial['edit']}{block}"


def searched_choice(result: dict[str, Any]) -> dict[str, Any]:
    """The chosen (p, edit) of one concept of ``search.json``, labelled as its trials are."""
    edit = (
        searched_steer(result["anchor"], result["strength"], result.get("by", "mean"))
        if result.get("anchor")
        else result["multiplier"]
    )
    return {
        "percentile": result["percentile"],
        "edit": edit_label(edit, result.get("halves", "both"), result.get("gate", "mean")),
        "hookpoint": result.get("hookpoint", ""),
    }


def review_concept(
    result: dict[str, Any], min_retain: float, bar: float = 0.9, min_prompts: int = 24, max_drift: float = 0.0
) -> ConceptReview:
    """``result``: one concept of a search's ``search.json`` (a ``ConceptResult`` as a dict, its trials included)."""
    trials = result["trials"]
    if not trials:
        raise ValueError(f"{result['concept']}: the search recorded no trials")
    # One budget a concept: every block is searched on the concept's tuning prompts, and the search fails when no
    # trial scores them all, so the most any trial scored is that count.
    budget = max(t["prompts"] for t in trials)
    # Only the trials that scored every prompt are chosen from (an object's first chunk may hold no kept image).
    if max_drift and any(t.get("drift") is None for t in trials if t["prompts"] >= budget):
        raise ValueError("--max_drift needs the trials' drift, and this search did not measure it (run before drift was)")
    blocks: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:  # the kind's block first, as the search ran them
        blocks.setdefault(trial.get("hookpoint", ""), []).append(trial)
    # choose_block's rule on the blocks' choices: one that keeps the floor first, then the objective; the kind's
    # block wins ties (max keeps the first of equals).
    per_block = [choose(ts, budget, min_retain, max_drift) for ts in blocks.values() if any(t["prompts"] >= budget for t in ts)]
    at_floor = max(per_block, key=lambda t: (retains(t, min_retain, max_drift), t["objective"]))
    own_scored = any(t.get("cra_own") is not None for t in trials)
    cleanest = None
    if result["kind"] == "style" and own_scored:
        clean = [
            t
            for t in trials
            if t["prompts"] >= min(min_prompts, budget)
            and min(t["ua"], t["ira"], t["cra"]) >= bar
            and t.get("cra_own") is not None
        ]
        # Ties go to the review's choice, then to the trial that scored more prompts.
        cleanest = max(clean, key=lambda t: (t["cra_own"], t["ua"], t is at_floor, t["prompts"]), default=None)
    return ConceptReview(
        result["concept"],
        result["kind"],
        searched_choice(result),
        at_floor,
        retains(at_floor, min_retain, max_drift),
        cleanest,
        own_scored,
        len(trials),
        sum(t["prompts"] >= budget for t in trials),
        len(blocks),
    )


def review_search(
    summary: dict[str, Any], min_retain: float, bar: float = 0.9, min_prompts: int = 24, max_drift: float = 0.0
) -> list[ConceptReview]:
    """Every concept of a search's ``search.json``."""
    if not 0 <= min_retain <= 1 or not 0 <= bar <= 1:
        raise ValueError(f"min_retain and bar are accuracies in [0, 1], got {min_retain} and {bar}")
    if not 0 <= max_drift < 1:
        raise ValueError(f"max_drift is a mean pixel change in [0, 1) (0: no ceiling), got {max_drift}")
    return [review_concept(result, min_retain, bar, min_prompts, max_drift) for result in summary.values()]


def load_summary(search: str) -> dict[str, Any]:
    """A search folder's ``search.json``, refused with the reason when it is not one."""
    if not search:
        raise ValueError("name the search folder to review: --search DIR (a search's search_dir, with its search.json)")
    path = Location.parse(search) / "search.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path.uri} does not exist: --search takes a finished search's folder (search.search_dir)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path.uri} is not JSON ({error}): was it written by a search that was killed?") from None
    if not isinstance(summary, dict) or not summary or any("trials" not in r for r in summary.values()):
        raise ValueError(f"{path.uri} is not a search summary with its trials (one written before trials were kept?)")
    return summary


def scores(trial: dict[str, Any]) -> str:
    own = "" if trial.get("cra_own") is None else f" / {trial['cra_own']:.2f}"
    drift = "" if trial.get("drift") is None else f", drift {trial['drift']:.3f}"
    return f"{trial['ua']:.2f} / {trial['ira']:.2f} / {trial['cra']:.2f}{own}{drift}"


def review_table(reviews: list[ConceptReview], min_retain: float, bar: float, max_drift: float = 0.0) -> str:
    """The reviews as a plain-text table (tuning scores: UA / IRA / CRA / own-style CRA, then drift). A choice that
    differs from the search's is marked *, one under the floor (no trial kept it) says so."""
    ceiling = f", drift ≤ {max_drift:g}" if max_drift else ""
    header = ("concept", "search's choice", f"choice at floor {min_retain:g}{ceiling}", "its scores", "finished")
    rows = [(*header, f"most objects kept at UA/IRA/CRA ≥ {bar:g}")]
    for r in reviews:
        blocks = r.blocks > 1
        searched, chosen = trial_label(r.searched, blocks), trial_label(r.at_floor, blocks)
        chosen += ("" if chosen == searched else " *") + ("" if r.kept_floor else " (under floor)")
        if r.kind != "style":
            cleanest = "–"
        elif not r.own_scored:
            cleanest = "n/a (no own-style CRA in these trials)"
        elif r.cleanest is None:
            cleanest = "none"
        else:
            c = r.cleanest
            cleanest = f"{trial_label(c, blocks)}: {scores(c)} ({c['prompts']} prompts)"
        rows.append((r.concept, searched, chosen, scores(r.at_floor), f"{r.finished}/{r.trials}", cleanest))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
