"""The tuning prompts of a search, per concept, checked before Ray starts."""

from __future__ import annotations

from typing import Any

from saeuron.benchmarks.tuning_prompts import scorable_prefix, tuning_prompt_rows
from saeuron.tuning.config import SearchConfig


def search_prompts(cfg: SearchConfig, kinds: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Each concept's tuning prompts as rows a trial reads; refuses a cap or chunk under which a trial could
    never score UA, IRA and CRA."""
    prompts = {
        concept: [
            r.as_dict()
            for r in tuning_prompt_rows(
                cfg.benchmark,
                concept,
                kind,
                cfg.prompts_per_cell,
                cfg.model.anchor_prompts_dir or None,
                cfg.tuning_seed,
                cfg.forget_prompts_per_cell,
                cfg.other_axis_prompts_per_cell,
            )
        ][: cfg.max_prompts or None]
        for concept, kind in kinds.items()
    }
    for concept, kind in kinds.items():
        needed, rows = scorable_prefix(prompts[concept], concept, kind), prompts[concept]
        what = f"its own images, retained ones and {'unstyled' if kind == 'style' else 'styled'} ones"
        if needed > len(rows):
            raise ValueError(f"search.max_prompts keeps {len(rows)} tuning prompts of {concept}: too few to hold {what}")
        if cfg.chunk < needed:
            raise ValueError(
                f"search.chunk is {cfg.chunk}, but a trial of {concept} can first report after {needed} tuning prompts "
                f"({what}): raise --search.chunk to at least {needed}"
            )
    return prompts
