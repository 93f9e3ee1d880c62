"""Choosing (percentile, edit) per concept with Ray Tune, the classifier as the judge.

The edit is a multiplier γ (the paper's) or, with ``search.anchors``, steering toward an anchor by a strength β
(``saeuron.method.steering``): both are columns of one grid, so the search also chooses the edit mode. With
``search.cond_multipliers`` / ``cond_strengths`` the grid also has edits of the conditional CFG half only.

Per concept and block one Tune experiment over the grid (the block: the kind's, and every candidate block,
``saeuron.tuning.choice``). A trial builds the recipe of its (p, γ), generates the concept's tuning prompts
(``tuning_prompts``: never the evaluation prompts or seeds) chunk by chunk, judges them and reports UA, IRA, CRA, the
objective (``search.objective``; the reference's (UA + IRA) / 2 by default) and the kept images' drift from the
original model's (``saeuron.evaluation.drift``) after every chunk, with the images judged so far as its checkpoint.
``scheduler="asha"`` stops poor (p, γ) early (resource: tuning prompts scored). Trials are placed as
``resources.trial`` says (a GPU share, or CPU threads) and reuse their worker process, whose pipeline, SAE and judge
are loaded once.

ASHA ranks trials at its rungs by the graded objective (the judge's probabilities of the true classes instead of 0/1
hits): after a few images many (p, γ) tie on accuracy, and tied trials all survive a rung. The chosen (p, edit) of a
concept is the best (hard) objective among the trials that scored every tuning prompt (and keep IRA and CRA at
``search.min_retain`` and the kept images' drift at ``search.max_drift``, when any does); ties go to the graded
objective, then the higher percentile, then scaling before steering, then both CFG halves before the conditional one,
then the smaller edit (``saeuron.tuning.choice.choose``). With candidate blocks, the concept keeps the block whose
choice scores best (a candidate must beat the kind's block). An experiment another search beside this one finished
with the same settings on the same statistics is copied, not run again (``saeuron.tuning.reuse``); a style's grid,
gates and objective may differ from an object's (``search.style_*``, ``saeuron.tuning.config.for_kind``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from saeuron.atomic_files import write_text_atomic
from saeuron.cluster.placement import unit_resources
from saeuron.console import logger, tune_verbosity
from saeuron.diffusion.pipeline import check_sampler
from saeuron.method.recipe import Recipe, entry_label
from saeuron.method.selection import Gate
from saeuron.method.statistics import ConceptStatistics
from saeuron.storage import check_writable, holding_lease
from saeuron.storage.mirror import mirror_path, push
from saeuron.tuning.choice import ConceptResult, SearchTarget, choose, choose_block, retains, search_targets
from saeuron.tuning.config import SCHEDULERS, SearchConfig, edits_of, for_kind, grid_of
from saeuron.tuning.prompts import search_prompts
from saeuron.tuning.reuse import (
    SUMMARY,
    experiment_signature,
    mark_finished,
    signature_file,
    statistics_identity,
    take_over_finished_twin,
)
from saeuron.tuning.trial import trial_record, tuning_trial


class SearchResult(NamedTuple):
    concepts: list[ConceptResult]
    recipes_dir: Path
    run_id: str


def run_concept_search(
    cfg: SearchConfig, target: SearchTarget, scored_on: str, setup: dict[str, Any], parent_run_id: str, tracking_uri: str
) -> ConceptResult:
    """One concept at one block: a Tune experiment over the grid, and the (p, edit) chosen there. ``scored_on``: the
    ``statistics_identity`` of the block's statistics."""
    import mlflow
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    concept, kind, statistics = target.concept, target.kind, target.statistics
    percentiles, _ = grid_of(cfg, kind)
    edits = edits_of(cfg, kind, target.anchors, target.map_anchor)
    budget = len(setup["prompts"][concept])
    unit = unit_resources(cfg.resources, "trial")
    trainable = tune.with_resources(tune.with_parameters(tuning_trial, setup=setup), unit.tune_resources())
    scheduler = None
    if cfg.scheduler == "asha":
        # Ranked on the graded objective: on a few images many (p, γ) tie on accuracy, and ties all survive a rung
        # (less 1 under search.min_retain, so that the trials the choice may take are the ones that go on).
        scheduler = ASHAScheduler(
            time_attr="prompts",
            metric="rung_score",
            mode="max",
            max_t=budget,
            grace_period=min(cfg.grace_prompts, budget),
            reduction_factor=cfg.reduction_factor,
        )
    space = {
        "concept": concept,
        "kind": kind,
        "statistics": statistics,
        "percentile": tune.grid_search(percentiles),
        "edit": tune.grid_search(edits),
    }
    storage = cfg.search_dir / "tune"
    path = storage / target.experiment
    filesystem = None if storage.is_local else storage.fs
    signature = experiment_signature(for_kind(cfg, kind), space, setup["prompts"][concept])
    marker = signature_file(storage, target.experiment)
    if marker.is_file() and marker.read_text() != signature:
        raise ValueError(
            f"{path.uri} holds a search of {target.experiment} with other settings; resume it with the same config, "
            f"or pick another --name (or delete that folder) to start a new one"
        )
    restorable = tune.Tuner.can_restore(path.path, storage_filesystem=filesystem)
    twin = None if restorable else take_over_finished_twin(storage, target.experiment, signature, statistics, scored_on)
    if twin is not None:
        mlflow.set_tag(f"saeuron.taken_over.{target.experiment.replace('@', ' at ')}", twin.parent.uri)
    marker.write_text(signature)
    logger.info(
        f"search: {target.experiment} ({kind}): {len(percentiles) * len(edits)} (p, edit) trials, {cfg.scheduler}, "
        f"up to {budget} tuning prompts each"
    )
    verbosity = tune_verbosity()
    if restorable or twin is not None:
        logger.info(f"search: resuming {target.experiment} from {path.uri}")
        tuner = tune.Tuner.restore(
            path.path, trainable=trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=None if scheduler else "objective",
                mode=None if scheduler else "max",
                scheduler=scheduler,
                reuse_actors=True,
                max_concurrent_trials=cfg.max_concurrent_trials or None,
            ),
            run_config=tune.RunConfig(
                name=target.experiment,
                storage_path=storage.path,
                storage_filesystem=filesystem,
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                callbacks=[
                    MLflowLoggerCallback(
                        tracking_uri=tracking_uri,
                        experiment_name=cfg.tracking.experiment,
                        tags={
                            "mlflow.parentRunId": parent_run_id,
                            "saeuron.concept": concept,
                            "saeuron.hookpoint": target.hookpoint,
                            "saeuron.stage": "search-trial",
                        },
                    )
                ],
                verbose=verbosity,
            ),
        )  # TensorBoard event files (Tune's default TBX logger): <storage>/<concept>/<trial>/
    started = time.perf_counter()
    grid = tuner.fit()
    if grid.errors:  # a trial that failed more than max_failures times: its numbers are partial
        raise RuntimeError(f"{len(grid.errors)} trials of {target.experiment} failed for good (see {path.uri}): {grid.errors[0]}")
    trials = [
        trial_record(result.config, result.metrics, target.hookpoint)
        for result in grid
        if result.metrics is not None and "objective" in result.metrics
    ]
    errors = [str(e) for e in grid.errors]
    if len(trials) < len(percentiles) * len(edits):
        raise RuntimeError(
            f"{len(percentiles) * len(edits) - len(trials)} trials of {target.experiment} reported nothing; errors: {errors[:2]}"
        )
    mark_finished(storage, target.experiment, signature, scored_on)
    best = choose(trials, budget, cfg.min_retain, cfg.max_drift)
    full = sum(t["prompts"] >= budget for t in trials)
    ceiling = " and ".join(
        [f"IRA and CRA at {cfg.min_retain}"] * bool(cfg.min_retain) + [f"drift at {cfg.max_drift}"] * bool(cfg.max_drift)
    )
    logger.info(
        f"search: {target.experiment}: {len(trials)} trials in {time.perf_counter() - started:.0f}s, {full} scored every prompt, "
        f"{len(trials) - full} stopped early" + ("" if retains(best, cfg.min_retain, cfg.max_drift) else f"; none kept {ceiling}")
    )
    return ConceptResult(
        concept,
        kind,
        best["percentile"],
        best["multiplier"] or 0.0,
        best["objective"],
        best["ua"],
        best["ira"],
        best["cra"],
        sum(t["prompts"] for t in trials),
        trials,
        target.hookpoint,
        statistics,
        {target.hookpoint: best["objective"]},
        best["anchor"],
        best["strength"],
        best.get("cra_own"),
        best["halves"],
        best.get("drift"),
        best["gate"],
        best.get("by", "mean"),
    )


def search(cfg: SearchConfig) -> SearchResult:
    import mlflow

    from saeuron.cluster.actor_pool import ensure_ray
    from saeuron.cluster.registry import register_folder
    from saeuron.cluster.tracking import tracked_run, tracking_uri_of
    from saeuron.evaluation.evaluate import check_judge
    from saeuron.evaluation.report import objective_heatmap

    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
    if cfg.chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {cfg.chunk}")
    grid_of(cfg, "style"), grid_of(cfg, "object")  # a bad grid (or contrast) fails before Ray starts
    targets = search_targets(cfg, cfg.benchmark)
    for blocks in targets.values():
        for target in blocks:
            edits_of(cfg, target.kind, target.anchors, target.map_anchor)
    kinds = {c: blocks[0].kind for c, blocks in targets.items()}
    model_path = cfg.benchmark.resolve_model_path(cfg.model.model_path)
    check_sampler(model_path, cfg.model.sampler)
    check_judge(cfg.benchmark, cfg.benchmark.load_judge(cfg.judge))
    tracking_uri = tracking_uri_of(cfg.tracking)
    prompts = search_prompts(cfg, kinds)
    base_model = cfg.benchmark.model_identity(cfg.model.model_path)
    # Once per statistics folder, not per experiment: on an object store hashing reads the whole folder, so after
    # every check above.
    identities = {folder: statistics_identity(folder) for folder in {t.statistics for b in targets.values() for t in b}}
    setup: dict[str, Any] = dict(  # what every trial needs (saeuron.tuning.trial.tuning_trial reads it)
        model_path=str(model_path),
        dtype=cfg.model.dtype,
        sampler=cfg.model.sampler,
        cpu_threads=cfg.resources.trial.cpus,
        benchmark=cfg.model.benchmark,
        judge=asdict(cfg.judge),
        base_model=base_model,
        contrast=cfg.contrast,
        gate_sigmas=cfg.gate_sigmas,
        gate_share=cfg.gate_share,
        objectives={kind: for_kind(cfg, kind).objective for kind in ("style", "object")},
        min_retain=cfg.min_retain,
        max_drift=cfg.max_drift,
        error_mode=cfg.edit.error_mode,
        chunk=cfg.chunk,
        num_inference_steps=cfg.sampling.num_inference_steps,
        guidance_scale=cfg.sampling.guidance_scale,
        tracking_uri=tracking_uri,
        prompts=prompts,
    )
    check_writable(cfg.search_dir, "the search folder")
    ensure_ray()
    out = mirror_path(cfg.search_dir)  # recipes, heat maps and the summary, uploaded at the end
    out.mkdir(parents=True, exist_ok=True)  # a bucket's mirror starts empty and a heat map comes before any recipe
    # Two searches in one folder would restore and overwrite each other's Tune state.
    with (
        holding_lease(cfg.search_dir, "search", ttl_s=cfg.tracking.lease_seconds),
        tracked_run(cfg, cfg.tracking, run_name=cfg.name, tags={"saeuron.stage": "search"}) as run,
    ):
        results, heatmaps = [], []
        for concept, blocks in targets.items():
            per_block = [
                run_concept_search(cfg, target, identities[target.statistics], setup, run.info.run_id, tracking_uri)
                for target in blocks
            ]
            for target, at_block in zip(blocks, per_block):
                heatmaps.append(out / f"heatmap_{target.experiment}.png")
                edits = [entry_label(e) for e in edits_of(cfg, target.kind, target.anchors, target.map_anchor)]
                objective_heatmap(at_block, grid_of(cfg, target.kind)[0], edits, heatmaps[-1])
            result = choose_block(per_block, cfg.min_retain, cfg.max_drift)
            results.append(result)
            params = {concept: (result.percentile, result.edit)}
            gate = Gate.parse(result.gate, cfg.gate_sigmas, cfg.gate_share)
            stats = ConceptStatistics.load(result.statistics)
            Recipe.from_statistics(stats, params, base_model, cfg.contrast, result.halves, gate).save(out / "recipes" / concept)
            by_block = ", ".join(f"{h} {o:.3f}" for h, o in result.blocks.items())
            where = f" at {result.hookpoint} (objective by block: {by_block})"
            own = "" if result.cra_own is None else f", own {result.cra_own:.2f}"
            own += "" if result.drift is None else f", drift {result.drift:.3f}"
            logger.info(
                f"search: {concept} ({result.kind}) -> p={result.percentile} {result.label} objective {result.objective:.3f} "
                f"(UA {result.ua:.2f}, IRA {result.ira:.2f}, CRA {result.cra:.2f}{own}){where if len(blocks) > 1 else ''}; "
                f"{result.generations} generations"
            )
        mlflow.set_tracking_uri(tracking_uri)
        summary = {r.concept: r._asdict() for r in results}
        write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2))
        for r in results:
            chosen = ("percentile", "multiplier", "hookpoint", "halves", "gate") + (
                ("anchor", "strength", "by") if r.anchor else ()
            )
            mlflow.log_params({f"{r.concept}.{k}": getattr(r, k) for k in chosen})
            measured = ("objective", "ua", "ira", "cra", "generations") + (("drift",) if r.drift is not None else ())
            mlflow.log_metrics({f"{r.concept}.{k}": getattr(r, k) for k in measured})
        for heatmap in heatmaps:
            mlflow.log_artifact(str(heatmap), "heatmaps")
        mlflow.log_metric("generations", sum(r.generations for r in results))
        mlflow.log_artifact(str(out / SUMMARY))
        mlflow.log_artifacts(str(out / "recipes"), "recipes")
        mlflow.set_tag("saeuron.recipes", f"runs:/{run.info.run_id}/recipes")
        push(out, cfg.search_dir)  # Tune keeps its own state in the store
        if cfg.registered_name:
            version = register_folder(
                out / "recipes",
                name=cfg.registered_name,
                run_id=run.info.run_id,
                artifact_path="registered_recipes",
                alias="current",
                tags={"concepts": [r.concept for r in results]},
                description="SAeUron unlearning recipes chosen by a search (one folder per concept)",
            )
            logger.info(f"search: recipes registered as models:/{cfg.registered_name}@current (version {version})")
        logger.info(
            f"search: recipes in {cfg.search_dir / 'recipes'}; MLflow run {run.info.run_id}; "
            f"trials in TensorBoard: tensorboard --logdir {cfg.search_dir / 'tune'}"
        )
        return SearchResult(results, out / "recipes", run.info.run_id)
