"""One trial of a search: a (percentile, edit) for one concept, scored chunk by chunk.

A Ray Tune function trainable. It generates the concept's tuning prompts with the recipe of its
(p, edit) — the edit a multiplier γ or steering toward an anchor —, judges them with the benchmark's judge and reports UA, IRA, CRA, the objectives and the kept images' drift
from the original model's (``saeuron.evaluation.drift``) after every chunk, the images judged so far being its
checkpoint (a retried trial goes on from there).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from saeuron.benchmarks import get_benchmark
from saeuron.evaluation.drift import image_drift, kept_rows, mean_drift
from saeuron.evaluation.metrics import forgetting_scores, retain_image_counts
from saeuron.method.recipe import Recipe, edit_from_entry, entry_label, gate_from_entry, halves_from_entry
from saeuron.method.selection import PAPER_GATE
from saeuron.method.statistics import ConceptStatistics
from saeuron.sections import JudgeConfig
from saeuron.tuning.choice import may_retain, may_stay_within, retains
from saeuron.tuning.config import objective_of

_WORKER_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, build):
    """Per worker process: trials reuse their actor (reuse_actors), so models load once."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]


def tuning_trial(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """Ray Tune function trainable: one (percentile, edit) for one concept."""
    import ray.tune
    from ray.tune import Checkpoint

    from saeuron.benchmarks.judges import judge_batch
    from saeuron.cluster.actor_pool import load_pipeline_in_actor
    from saeuron.cluster.registry import load_sae
    from saeuron.diffusion.hooks import HookedPipeline
    from saeuron.method.unlearned_pipeline import UnlearnedPipeline

    pipe, device, dtype = _cached(
        ("pipeline", setup["model_path"], setup["dtype"], setup["sampler"]),
        lambda: load_pipeline_in_actor(setup["model_path"], setup["dtype"], setup["cpu_threads"], setup["sampler"]),
    )
    judge = _cached(
        ("judge", setup["benchmark"], json.dumps(setup["judge"])),
        lambda: get_benchmark(setup["benchmark"]).load_judge(JudgeConfig(**setup["judge"]), device),
    )
    concept, kind, folder = config["concept"], config["kind"], config["statistics"]
    stats = _cached(("statistics", folder), lambda: ConceptStatistics.load(folder))
    sae = _cached(
        ("sae", stats.sae_ref, stats.hookpoint),
        lambda: load_sae(
            stats.sae_ref,
            stats.hookpoint,
            device=device,
            dtype=dtype,
            inference=stats.sae_inference or None,
            tracking_uri=setup["tracking_uri"],
        ),
    )
    params = {concept: (config["percentile"], edit_from_entry(config["edit"]))}
    halves = halves_from_entry(config["edit"])
    gate = gate_from_entry(config["edit"], setup["gate_sigmas"], setup["gate_share"])
    recipe = Recipe.from_statistics(stats, params, setup["base_model"], setup["contrast"], halves, gate)
    generator = UnlearnedPipeline.from_recipe(pipe, sae, recipe, setup["base_model"], setup["error_mode"])
    rows = setup["prompts"][concept]
    sampling = dict(num_inference_steps=setup["num_inference_steps"], guidance_scale=setup["guidance_scale"])
    # The original model's images of the kept prompts, per worker: every trial compares its own with the same ones.
    originals = _cached(("originals", setup["model_path"], setup["dtype"], setup["sampler"], *sampling.values()), dict)
    plain = _cached(("plain", setup["model_path"], setup["dtype"], setup["sampler"]), lambda: HookedPipeline(pipe))

    judged: list[dict] = []
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:  # a retried or resumed trial continues where it stopped
        with checkpoint.as_directory() as folder_:
            judged = json.loads((Path(folder_) / "judged.json").read_text())
    for start in range(len(judged), len(rows), setup["chunk"]):
        chunk = rows[start : start + setup["chunk"]]
        images = generator.generate([r["prompt"] for r in chunk], [r["seed"] for r in chunk], output_type="pt", **sampling).images
        new = judge_batch(judge, images.float(), chunk)
        mark_drift(
            chunk, images, new, kind, concept, originals,
            lambda prompts, seeds: plain.generate(prompts, seeds, output_type="pt", **sampling).images,
        )  # fmt: skip
        judged += new
        scores = forgetting_scores(judged, kind, [concept])
        graded = forgetting_scores(judged, kind, [concept], soft=True)
        soft = objective_of(setup["objectives"][kind], graded.ua, graded.ira, graded.cra, graded.cra_forgotten)
        metrics = {
            "objective": objective_of(setup["objectives"][kind], scores.ua, scores.ira, scores.cra, scores.cra_forgotten),
            "objective_soft": soft,
            # What ASHA ranks at its rungs: the graded objective, a trial under the retain floor below every other
            # (before the last prompt: only when it is under the floor beyond the noise of the images so far).
            "rung_score": soft
            - float(not rung_within_floor(scores, judged, kind, concept, len(rows), setup["min_retain"], setup["max_drift"])),
            "ua": scores.ua,
            "ira": scores.ira,
            "cra": scores.cra,
            **({} if scores.cra_forgotten is None else {"cra_own": scores.cra_forgotten}),
            **({} if (drift := mean_drift(judged)) is None else {"drift": drift}),
            "prompts": len(judged),
            "rules": len(recipe.rules) + len(recipe.steering),
        }
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "judged.json").write_text(json.dumps(judged))
            ray.tune.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def trial_record(config: dict[str, Any], metrics: dict[str, Any], hookpoint: str) -> dict[str, Any]:
    """A finished trial as the search keeps it (``ConceptResult.trials``, ``search.json``): its (p, edit), by label
    and by part, and its last report."""
    edit = config["edit"]
    return {
        "percentile": config["percentile"],
        "edit": entry_label(edit),
        "multiplier": edit.get("multiplier"),
        "anchor": edit.get("anchor", ""),
        "strength": edit.get("strength", 0.0),
        "by": edit.get("by", "mean"),
        "halves": halves_from_entry(edit),
        "gate": edit.get("gate", PAPER_GATE.kind),
        **{k: float(metrics[k]) for k in ("objective", "objective_soft", "ua", "ira", "cra", "cra_own", "drift") if k in metrics},
        "prompts": int(metrics["prompts"]),
        "hookpoint": hookpoint,
    }


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def mark_drift(
    chunk: list[dict], images: torch.Tensor, judged: list[dict], kind: str, concept: str, originals: dict, generate
) -> None:
    """Adds to ``judged[i]`` the drift of each kept row of ``chunk`` (its image ``images[i]``) from the original
    model's image of the same prompt and seed. ``originals`` caches those by (prompt, seed) as uint8, as the
    evaluation's PNGs are (a quarter of fp32's memory: at 512 px a style's kept prompts are ~1,000 images);
    ``generate(prompts, seeds)`` makes them for the whole chunk, batched as the edited images were."""
    kept = [i for i, row in enumerate(chunk) if kept_rows([row], kind, [concept])]
    if not kept:
        return
    if any((chunk[i]["prompt"], chunk[i]["seed"]) not in originals for i in kept):
        made = generate([r["prompt"] for r in chunk], [r["seed"] for r in chunk])
        originals.update({(r["prompt"], r["seed"]): _uint8(image) for r, image in zip(chunk, made)})
    before = torch.stack([originals[(chunk[i]["prompt"], chunk[i]["seed"])] for i in kept]).float() / 255
    for i, value in zip(kept, image_drift(_uint8(images[kept]).float() / 255, before).tolist()):
        judged[i]["drift"] = value


def rung_within_floor(
    scores: Any, judged: list[dict], kind: str, concept: str, budget: int, min_retain: float, max_drift: float = 0.0
) -> bool:
    """The retain floor and drift ceiling as a rung applies them: strictly once every prompt is judged, within noise
    before."""
    drifts = [r["drift"] for r in judged if r.get("drift") is not None]
    if len(judged) >= budget:
        return retains({"ira": scores.ira, "cra": scores.cra, "drift": mean_drift(judged)}, min_retain, max_drift)
    ira_images, cra_images = retain_image_counts(judged, kind, [concept])
    return may_retain(scores.ira, ira_images, scores.cra, cra_images, min_retain) and may_stay_within(drifts, max_drift)
