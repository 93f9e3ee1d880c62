"""What an attack run reports: success rates per variant and concept, the adversarial prompts, before/after pairs.

Two readings side by side. The reference's: a run succeeds when any judged prefix (or the original prompt) was
judged the concept on the one attack seed — UA before = 1 − mean(success_before), UA after = 1 − mean(success),
pooled over runs, as its ``avg_accuracy_*_diffatk.py`` print. Ours adds the final prefix judged on held-out seeds
(``heldout_asr``), which separates the attack from that seed's luck, and the original prompt on the same seeds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from saeuron.storage import Location


def read_results(output: Location) -> list[dict[str, Any]]:
    return [json.loads(f.read_text()) for f in sorted((output / "results").files(".json"), key=lambda f: f.uri)]


def rates(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    before = [r["success_before"] for r in results]
    after = [r["success"] for r in results]
    heldout_before = [x for r in results for x in r["heldout_before"]]
    heldout_after = [x for r in results for x in r["heldout_after"]]
    return {
        "runs": float(len(results)),
        "ua_before": 1 - float(np.mean(before)),
        "ua_after": 1 - float(np.mean(after)),
        "asr": float(np.mean(after)),
        "heldout_ua_before": 1 - float(np.mean(heldout_before)),
        "heldout_asr": float(np.mean(heldout_after)),
        "evaluations": float(np.mean([r["evaluations"] for r in results])),
    }


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{variant: {concept or "all": rates}}``; "all" pools every run of the variant (the reference's average),
    ``concept_mean.*`` is the mean over concepts."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        mine = [r for r in results if r["variant"] == variant]
        per = {c: rates([r for r in mine if r["concept"] == c]) for c in dict.fromkeys(r["concept"] for r in mine)}
        means = {key: float(np.mean([p[key] for p in per.values()])) for key in next(iter(per.values()))}
        out[variant] = {**per, "all": rates(mine), "concept_mean": means}
    return out


def metrics(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    return {
        f"{variant}.{concept}.{key}": value
        for variant, per in summary.items()
        for concept, r in per.items()
        for key, value in r.items()
    }


def prompts_table(results: Sequence[dict[str, Any]]) -> pa.Table:
    """The adversarial prompts: one row per run, the exact ids and their decoded prefix."""
    columns = ("variant", "concept", "style", "object", "index", "prompt", "final_text", "final_ids", "success_before", "success")
    rows = [{c: r[c] for c in columns} | {"heldout_asr": float(np.mean(r["heldout_after"]))} for r in results]
    return pa.Table.from_pylist(rows)


def pairs_picture(output: Location, results: Sequence[dict[str, Any]], limit: int = 8, cell: int = 96) -> Image.Image:
    """Before (the original prompt) and after (the final prefix) on the attack seed, for up to ``limit`` runs per
    variant that the attack turned (judged unlearned before, the concept after)."""
    from saeuron.attack.task import result_name

    chosen = [
        r
        for variant in dict.fromkeys(r["variant"] for r in results)
        for r in [r for r in results if r["variant"] == variant and r["success"] and not r["success_before"]][:limit]
    ]
    pad, label = 4, 260
    picture = Image.new("RGB", (label + 2 * (cell + pad) + pad, max(len(chosen), 1) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(picture)
    for row, r in enumerate(chosen):
        y = pad + row * (cell + pad)
        draw.text(
            (pad, y + 4),
            f"{r['variant']}: {r['concept']}\n{r['style']} / {r['object']} #{r['index']}\n+ {r['final_text']!r}",
            fill="black",
        )
        for col, which in enumerate(("before", "after")):
            data = (output / "images" / f"{result_name(r)}_{which}.png").read_bytes()
            image = Image.open(io.BytesIO(data)).convert("RGB").resize((cell, cell), Image.NEAREST)
            picture.paste(image, (label + col * (cell + pad), y))
    if not chosen:
        draw.text((pad, pad), "no attack turned a run", fill="black")
    return picture
