"""One trial of a search: a (percentile, edit) for one concept, scored chunk by chunk.

A Ray Tune function trainable. It generates the concept's tuning prompts with the recipe of its
(p, edit) — the edit a multiplier γ or steering toward an anchor —, judges them with the benchmark's judge and reports UA, IRA, CRA and the objectives after
every chunk, the images judged so far being its checkpoint (a retried trial goes on from there).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from saeuron.benchmarks import get_benchmark
from saeuron.evaluation.metrics import forgetting_scores, retain_image_counts
from saeuron.method.statistics import ConceptStatistics
from saeuron.sections import JudgeConfig
from saeuron.tuning.choice import may_retain, retains
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
    from saeuron.method.recipe import Recipe, edit_from_entry, halves_from_entry
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
    recipe = Recipe.from_statistics(stats, params, setup["base_model"], setup["contrast"], halves_from_entry(config["edit"]))
    generator = UnlearnedPipeline.from_recipe(pipe, sae, recipe, setup["base_model"], setup["error_mode"])
    rows = setup["prompts"][concept]

    judged: list[dict] = []
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:  # a retried or resumed trial continues where it stopped
        with checkpoint.as_directory() as folder_:
            judged = json.loads((Path(folder_) / "judged.json").read_text())
    for start in range(len(judged), len(rows), setup["chunk"]):
        chunk = rows[start : start + setup["chunk"]]
        images = generator.generate(
            [r["prompt"] for r in chunk],
            [r["seed"] for r in chunk],
            output_type="pt",
            num_inference_steps=setup["num_inference_steps"],
            guidance_scale=setup["guidance_scale"],
        ).images
        judged += judge_batch(judge, images.float(), chunk)
        scores = forgetting_scores(judged, kind, [concept])
        graded = forgetting_scores(judged, kind, [concept], soft=True)
        soft = objective_of(setup["objective"], graded.ua, graded.ira, graded.cra, graded.cra_forgotten)
        metrics = {
            "objective": objective_of(setup["objective"], scores.ua, scores.ira, scores.cra, scores.cra_forgotten),
            "objective_soft": soft,
            # What ASHA ranks at its rungs: the graded objective, a trial under the retain floor below every other
            # (before the last prompt: only when it is under the floor beyond the noise of the images so far).
            "rung_score": soft - float(not rung_within_floor(scores, judged, kind, concept, len(rows), setup["min_retain"])),
            "ua": scores.ua,
            "ira": scores.ira,
            "cra": scores.cra,
            **({} if scores.cra_forgotten is None else {"cra_own": scores.cra_forgotten}),
            "prompts": len(judged),
            "rules": len(recipe.rules) + len(recipe.steering),
        }
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "judged.json").write_text(json.dumps(judged))
            ray.tune.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def rung_within_floor(scores: Any, judged: list[dict], kind: str, concept: str, budget: int, min_retain: float) -> bool:
    """The retain floor as a rung applies it: strictly once every prompt is judged, within noise before."""
    if len(judged) >= budget:
        return retains(scores, min_retain)
    ira_images, cra_images = retain_image_counts(judged, kind, [concept])
    return may_retain(scores.ira, ira_images, scores.cra, cra_images, min_retain)
