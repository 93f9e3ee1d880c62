"""Choosing (percentile, multiplier) per concept with Ray Tune, the classifier as the judge.

Per concept one Tune experiment over the grid. A trial builds the recipe of its (p, γ), generates the
concept's tuning prompts (``tuning_prompts``: never the evaluation prompts or seeds) chunk by chunk,
judges them and reports UA, IRA, CRA and the reference's objective (UA + IRA) / 2 after every chunk,
with the images judged so far as its checkpoint. ``scheduler="asha"`` stops poor (p, γ) early: the
resource is the number of tuning prompts scored. Trials take one GPU each when the cluster has GPUs
and reuse their worker process, whose pipeline, SAE and judge are loaded once.

ASHA ranks trials at its rungs by the graded objective (the judge's probabilities of the true
classes instead of 0/1 hits): after a few images many (p, γ) tie on accuracy, and tied trials all
survive a rung. The chosen (p, γ) of a concept is the best (hard) objective among the trials that
scored every tuning prompt; ties go to the graded objective, then the higher percentile, then the
multiplier closer to zero (the smaller edit).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from saeuron.atomic_files import write_text_atomic
from saeuron.benchmarks import Benchmark, get_benchmark
from saeuron.console import logger, tune_verbosity
from saeuron.method.statistics import ConceptStatistics
from saeuron.benchmarks.tuning_prompts import tuning_prompt_rows
from saeuron.sections import EditConfig, JudgeConfig, ModelConfig, SamplingConfig, TrackingConfig
from saeuron.tuning.trial import tuning_trial

SCHEDULERS = ("grid", "asha")
@dataclass
class SearchOptions:
    """What a study's search section holds."""

    concepts: list[str] = field(default_factory=list)
    """Concepts to tune, styles and objects mixed; each gets its own search."""
    percentiles: list[float] = field(default_factory=list)
    """Percentiles of the grid; empty: the benchmark's (UnlearnCanvas: the reference's 99.99, 99.995, 99.999)."""
    multipliers: list[float] = field(default_factory=list)
    """Multipliers (γ < 0) of the grid; empty: the benchmark's (UnlearnCanvas: the reference's −1, −5, …, −30)."""
    scheduler: str = "asha"
    """"grid" scores every (p, γ) on every prompt; "asha" stops poor ones early."""
    prompts_per_cell: int = 1
    """Tuning prompts per (style, object) cell; MiniCanvas: 88 per concept at 1."""
    max_prompts: int = 0
    """Cap on tuning prompts per concept (every prefix is balanced); 0: all of them."""
    chunk: int = 8
    """Prompts generated between two reports (ASHA's unit of resource)."""
    grace_prompts: int = 8
    """ASHA: prompts every trial scores before it can be stopped (then rungs at grace × reduction_factor^k)."""
    reduction_factor: float = 4
    """ASHA: the fraction 1/reduction_factor of trials that go on at each rung."""
    tuning_seed: int = 0
    """Offset of the tuning prompts' seeds (from 10,000 up: never an evaluation seed)."""
    max_concurrent_trials: int = 0
    """0: as many as the cluster fits (one GPU each, or cpu_threads_per_trial CPUs each)."""
    cpu_threads_per_trial: int = 1
    """torch threads (and reserved CPUs) of a trial without a GPU."""
    max_failures: int = 2
    """Retries of a trial whose worker died; it resumes from its last checkpoint."""
    name: str = "search"
    """Names the search's MLflow run and its folder <study_dir>/search/<name>."""
    register_as: str = ""
    """Register the chosen recipes under this MLflow model name (alias "current"); "{benchmark}" is replaced by
    the benchmark's name; empty: don't register."""


@dataclass
class SearchConfig(SearchOptions):
    style_statistics: str = ""
    """Statistics folder of the style hookpoint (jobs/gather.py --kind style)."""
    object_statistics: str = ""
    """Statistics folder of the object hookpoint (jobs/gather.py --kind object)."""
    output_dir: str = ""
    """The search's folder (Tune state, recipes, heat maps); empty: <study_dir>/search/<name>."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    @property
    def benchmark(self) -> Benchmark:
        return get_benchmark(self.model.benchmark)

    @property
    def registered_name(self) -> str:
        return self.register_as.replace("{benchmark}", self.model.benchmark)

    @property
    def search_dir(self) -> Path:
        return Path(self.output_dir or Path(self.tracking.study_dir) / "search" / self.name).expanduser().resolve()


class ConceptResult(NamedTuple):
    concept: str
    kind: str
    percentile: float
    multiplier: float
    objective: float
    ua: float
    ira: float
    cra: float
    generations: int
    """Images generated by this concept's search, all trials together."""
    trials: list[dict[str, Any]]
    """Per trial: percentile, multiplier, objective, ua, ira, cra, prompts (scored before it ended)."""


class SearchResult(NamedTuple):
    concepts: list[ConceptResult]
    recipes_dir: Path
    run_id: str


def grid_of(cfg: SearchConfig) -> tuple[list[float], list[float]]:
    percentiles = cfg.percentiles or list(cfg.benchmark.search_percentiles)
    multipliers = cfg.multipliers or list(cfg.benchmark.search_multipliers)
    bad = [p for p in percentiles if not 0 < p < 100]
    if bad:
        raise ValueError(f"percentiles must be in (0, 100), got {bad}")
    if any(g >= 0 for g in multipliers):
        raise ValueError(f"multipliers must be negative (γ < 0 suppresses a concept), got {multipliers}")
    return [float(p) for p in percentiles], [float(g) for g in multipliers]


def concept_statistics(cfg: SearchConfig) -> dict[str, tuple[str, str]]:
    """{concept: (kind, statistics folder)}, checked against the statistics' concept lists."""
    if not cfg.concepts:
        raise ValueError("no concepts to tune: pass --concepts NAME [NAME ...]")
    out = {}
    for concept in cfg.concepts:
        kind = cfg.benchmark.concept_kind(concept)
        folder = cfg.style_statistics if kind == "style" else cfg.object_statistics
        if not folder:
            raise ValueError(f"{concept} is a{'n' if kind == 'object' else ''} {kind}: pass --{kind}_statistics "
                             f"(a folder written by jobs/gather.py --kind {kind})")
        stats = ConceptStatistics.load(folder)
        if concept not in stats.concepts:
            raise ValueError(f"the statistics in {folder} do not cover {concept}; they have {stats.concepts}")
        out[concept] = (kind, str(Path(folder).expanduser().resolve()))
    return out


def choose(trials: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    full = [t for t in trials if t["prompts"] >= budget]
    if not full:
        raise RuntimeError("no trial scored every tuning prompt; see the Tune experiment's errors")
    return min(full, key=lambda t: (-t["objective"], -t.get("objective_soft", 0.0), -t["percentile"], -t["multiplier"]))


def run_concept_search(cfg: SearchConfig, concept: str, kind: str, statistics: str, setup: dict[str, Any],
                       parent_run_id: str, tracking_uri: str) -> ConceptResult:
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    percentiles, multipliers = grid_of(cfg)
    budget = len(setup["prompts"][concept])
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    trainable = tune.with_resources(tune.with_parameters(tuning_trial, setup=setup),
                                    {"cpu": 0 if gpus else cfg.cpu_threads_per_trial, "gpu": gpus})
    scheduler = None
    if cfg.scheduler == "asha":
        # Ranked on the graded objective: on a few images many (p, γ) tie on accuracy, and ties all survive a rung.
        scheduler = ASHAScheduler(time_attr="prompts", metric="objective_soft", mode="max", max_t=budget,
                                  grace_period=min(cfg.grace_prompts, budget), reduction_factor=cfg.reduction_factor)
    space = {"concept": concept, "kind": kind, "statistics": statistics,
             "percentile": tune.grid_search(percentiles), "multiplier": tune.grid_search(multipliers)}
    storage = cfg.search_dir / "tune"
    path = storage / concept
    signature = json.dumps({"space": {k: v for k, v in space.items()}, "scheduler": cfg.scheduler, "prompts": setup["prompts"][concept],
                            "chunk": cfg.chunk, "grace": cfg.grace_prompts, "reduction_factor": cfg.reduction_factor,
                            "sampling": [cfg.sampling.num_inference_steps, cfg.sampling.guidance_scale, cfg.edit.error_mode]}, sort_keys=True, default=str)
    marker = storage / f"{concept}.search.json"
    if marker.is_file() and marker.read_text() != signature:
        raise ValueError(f"{path} holds a search of {concept} with other settings; resume it with the same config, "
                         f"or pick another --name (or delete that folder) to start a new one")
    storage.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, signature)
    logger.info(f"search: {concept} ({kind}): {len(percentiles) * len(multipliers)} (p, γ) trials, {cfg.scheduler}, "
                f"up to {budget} tuning prompts each")
    verbosity = tune_verbosity()
    if tune.Tuner.can_restore(str(path)):
        logger.info(f"search: resuming {concept} from {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=None if scheduler else "objective", mode=None if scheduler else "max",
                                        scheduler=scheduler, reuse_actors=True,
                                        max_concurrent_trials=cfg.max_concurrent_trials or None),
            run_config=tune.RunConfig(
                name=concept, storage_path=str(storage), failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                callbacks=[MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name=cfg.tracking.experiment,
                                                tags={"mlflow.parentRunId": parent_run_id, "saeuron.concept": concept,
                                                      "saeuron.stage": "search-trial"})],
                verbose=verbosity))  # TensorBoard event files (Tune's default TBX logger): <storage>/<concept>/<trial>/
    started = time.perf_counter()
    grid = tuner.fit()
    if grid.errors:  # a trial that failed more than max_failures times: its numbers are partial
        raise RuntimeError(f"{len(grid.errors)} trials of {concept} failed for good (see {path}): {grid.errors[0]}")
    trials = []
    for result in grid:
        if result.metrics is None or "objective" not in result.metrics:
            continue
        m = result.metrics
        trials.append({"percentile": result.config["percentile"], "multiplier": result.config["multiplier"],
                       **{k: float(m[k]) for k in ("objective", "objective_soft", "ua", "ira", "cra")}, "prompts": int(m["prompts"])})
    errors = [str(e) for e in grid.errors]
    if len(trials) < len(percentiles) * len(multipliers):
        raise RuntimeError(f"{len(percentiles) * len(multipliers) - len(trials)} trials of {concept} reported nothing; "
                           f"errors: {errors[:2]}")
    best = choose(trials, budget)
    full = sum(t["prompts"] >= budget for t in trials)
    logger.info(f"search: {concept}: {len(trials)} trials in {time.perf_counter() - started:.0f}s, {full} scored every prompt, "
                f"{len(trials) - full} stopped early")
    return ConceptResult(concept, kind, best["percentile"], best["multiplier"], best["objective"], best["ua"], best["ira"],
                         best["cra"], sum(t["prompts"] for t in trials), trials)


def search(cfg: SearchConfig) -> SearchResult:
    import mlflow

    from saeuron.cluster.actor_pool import ensure_ray
    from saeuron.evaluation.evaluate import check_judge
    from saeuron.method.recipe import Recipe
    from saeuron.evaluation.report import objective_heatmap
    from saeuron.cluster.tracking import tracked_run, tracking_uri_of

    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {cfg.scheduler!r}")
    if cfg.chunk < 3:
        raise ValueError("chunk must be at least 3 so that every report scores the forgotten, retained and other-axis images")
    grid_of(cfg)
    kinds = concept_statistics(cfg)
    model_path = cfg.benchmark.resolve_model_path(cfg.model.model_path)
    check_judge(cfg.benchmark, cfg.benchmark.load_judge(cfg.judge))
    tracking_uri = tracking_uri_of(cfg.tracking)
    prompts = {c: [r.as_dict() for r in tuning_prompt_rows(cfg.benchmark, c, kind, cfg.prompts_per_cell,
                                                           cfg.model.anchor_prompts_dir or None, cfg.tuning_seed)][:cfg.max_prompts or None]
               for c, (kind, _) in kinds.items()}
    setup = dict(model_path=str(model_path), dtype=cfg.model.dtype, cpu_threads=cfg.cpu_threads_per_trial, benchmark=cfg.model.benchmark,
                 judge=asdict(cfg.judge), base_model=cfg.benchmark.model_identity(cfg.model.model_path), error_mode=cfg.edit.error_mode,
                 chunk=cfg.chunk, num_inference_steps=cfg.sampling.num_inference_steps, guidance_scale=cfg.sampling.guidance_scale,
                 tracking_uri=tracking_uri,
                 prompts=prompts)
    ensure_ray()
    out = cfg.search_dir
    with tracked_run(cfg, cfg.tracking, run_name=cfg.name, tags={"saeuron.stage": "search"}) as run:
        results = []
        for concept, (kind, folder) in kinds.items():
            result = run_concept_search(cfg, concept, kind, folder, setup, run.info.run_id, tracking_uri)
            results.append(result)
            recipe = Recipe.from_statistics(ConceptStatistics.load(folder), {concept: (result.percentile, result.multiplier)},
                                            setup["base_model"])
            recipe.save(out / "recipes" / concept)
            objective_heatmap(result, *grid_of(cfg), out / f"heatmap_{concept}.png")
            logger.info(f"search: {concept} ({kind}) -> p={result.percentile} γ={result.multiplier} objective {result.objective:.3f} "
                        f"(UA {result.ua:.2f}, IRA {result.ira:.2f}, CRA {result.cra:.2f}); {result.generations} generations")
        mlflow.set_tracking_uri(tracking_uri)
        summary = {r.concept: r._asdict() for r in results}
        write_text_atomic(out / "search.json", json.dumps(summary, indent=2))
        for r in results:
            mlflow.log_params({f"{r.concept}.percentile": r.percentile, f"{r.concept}.multiplier": r.multiplier})
            mlflow.log_metrics({f"{r.concept}.{k}": getattr(r, k) for k in ("objective", "ua", "ira", "cra", "generations")})
            mlflow.log_artifact(str(out / f"heatmap_{r.concept}.png"), "heatmaps")
        mlflow.log_metric("generations", sum(r.generations for r in results))
        mlflow.log_artifact(str(out / "search.json"))
        mlflow.log_artifacts(str(out / "recipes"), "recipes")
        mlflow.set_tag("saeuron.recipes", f"runs:/{run.info.run_id}/recipes")
        if cfg.registered_name:
            from saeuron.cluster.registry import register_folder

            version = register_folder(out / "recipes", name=cfg.registered_name, run_id=run.info.run_id, artifact_path="registered_recipes",
                                   alias="current", tags={"concepts": [r.concept for r in results]},
                                   description="SAeUron unlearning recipes chosen by a search (one folder per concept)")
            logger.info(f"search: recipes registered as models:/{cfg.registered_name}@current (version {version})")
        logger.info(f"search: recipes in {out / 'recipes'}; MLflow run {run.info.run_id}; "
                    f"trials in TensorBoard: tensorboard --logdir {out / 'tune'}")
        return SearchResult(results, out / "recipes", run.info.run_id)

