"""Scoring unlearned models on the benchmark: generate the evaluation grid once per model, judge
it, compute UA / IRA / CRA and FID, log everything to MLflow and write a report.

Every model is a recipe (several concepts = multi-concept; with ``sequential`` the recipes are the
steps of one sequence, each adding concepts). The original model's grid is generated once too, as
the report's reference and FID's baseline. Everything is checked — recipes, classifiers, concept
names, FID inputs — before the first image is generated, and MLflow sees the scores only when all
of them are computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch

from saeuron.benchmarks import Benchmark, get_benchmark
from saeuron.benchmarks.judges import Judge
from saeuron.console import logger
from saeuron.evaluation.drift import folder_drift, kept_rows
from saeuron.evaluation.fid import domain_fid, inception_weights_path, real_image_files
from saeuron.evaluation.fid_features import inception_fid_by_actors
from saeuron.evaluation.judging import judge_images, load_images
from saeuron.evaluation.metrics import (
    UNSTYLED_WEIGHTINGS,
    ForgettingScores,
    SequentialStep,
    average_scores,
    forgetting_scores,
    score_dict,
    sequential_scores,
)
from saeuron.evaluation.report import ConceptSamples, atlas_pages, log_table, write_report
from saeuron.method.recipe import Recipe, resolve_recipe_folders
from saeuron.method.sampling import UnlearnConfig, check_recipe, unlearn
from saeuron.sections import ImageGridConfig, WithEdit, WithJudge, WithModel, WithResources, WithSampling, WithTracking
from saeuron.storage import Location
from saeuron.storage.inputs import local_input
from saeuron.storage.mirror import mirror_path, pull, push


@dataclass
class EvaluateOptions:
    """What a study's evaluate section holds."""

    grid: ImageGridConfig = field(default_factory=ImageGridConfig)
    """The evaluation grid; forgotten styles are always included."""
    unstyled_weighting: str = "per_image"
    """Objects' accuracy: "per_image" (UnlearnCanvas after PR #6) or "paper" (unstyled images at half weight)."""
    fid: str = "auto"
    """"domain" (MiniCanvas classifier features), "inception" (pytorch-fid), "none"; auto: domain on MiniCanvas,
    inception on UnlearnCanvas when real_images_dir is given."""
    real_images_dir: str = ""
    """UnlearnCanvas real images, <dir>/<Style>/<Object>/<n>.jpg (a folder, or a URI fetched to the node's cache)."""
    inception_weights: str = ""
    """pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a file or a URI); empty: the torch hub cache."""
    inception_dims: int = 2048
    """Inception feature dimension of the FID (2048: the standard pool3 features)."""
    real_images_per_cell: int = 5
    """Real images per (style, object): MiniCanvas renders that many for domain FID; UnlearnCanvas takes the
    reference's fixed subset <Style>/<Object>/1.jpg … n.jpg (0: every JPG of the cell)."""


@dataclass
class EvaluateConfig(EvaluateOptions, WithResources, WithJudge, WithEdit, WithSampling, WithModel, WithTracking):
    recipes: list[str] = field(default_factory=list)
    """Recipes, one unlearned model each: folders, a folder of recipe folders, runs:/<search run id>/recipes or
    models:/NAME@alias of registered recipes."""
    sequential: bool = False
    """The recipes are the steps of one sequential unlearning run, each forgetting more concepts."""
    report_dir: str = ""
    """A folder or s3:// / gs:// prefix; empty: <study_dir>/reports/<run name>-<run id>."""
    run_name: str = "evaluate"
    """Name of the MLflow run (and of the report folder)."""

    @property
    def benchmark(self) -> Benchmark:
        return get_benchmark(self.model.benchmark)


class ModelToScore(NamedTuple):
    name: str
    recipe: Recipe
    recipe_dir: str
    kind: str


class Evaluation(NamedTuple):
    scores: list[tuple[str, ForgettingScores]]
    averages: dict[str, dict[str, float]]
    fid: dict[str, float]
    fid_extractor: str
    sequential: list[SequentialStep]
    report: Path
    """The report's index.html on this node."""
    run_id: str
    report_uri: str = ""
    """Where the report lives in the study's storage (the same file under a local root)."""
    drift: dict[str, float] = {}
    """Per forget model, the mean pixel change of its kept images from the original's (``saeuron.evaluation.drift``)."""


def models_to_score(cfg: EvaluateConfig) -> list[ModelToScore]:
    from saeuron.cluster.tracking import tracking_uri_of

    if not cfg.recipes:
        raise ValueError("no recipes to evaluate: pass --recipes FOLDER [FOLDER ...]")
    models = []
    for folder in resolve_recipe_folders(cfg.recipes, tracking_uri_of(cfg.tracking)):
        recipe = check_recipe(generation_config(cfg, folder))
        if recipe is None:  # check_recipe gives None only for an empty path, i.e. "no recipe"
            raise ValueError(f"an empty recipe path among {cfg.recipes}: every recipe to evaluate needs a folder")
        kinds = {cfg.benchmark.concept_kind(c) for c in recipe.concepts}
        if len(kinds) != 1:
            raise ValueError(
                f"recipe {folder} forgets styles and objects together ({list(recipe.concepts)}); "
                f"UnlearnCanvas scores one kind at a time"
            )
        models.append(ModelToScore("+".join(recipe.concepts), recipe, folder, kinds.pop()))
    if len({m.name for m in models}) != len(models):
        raise ValueError(f"two recipes forget the same concepts: {[m.name for m in models]}")
    if cfg.sequential:
        for before, after in zip(models, models[1:]):
            if (
                list(after.recipe.concepts)[: len(before.recipe.concepts)] != list(before.recipe.concepts)
                or after.kind != before.kind
            ):
                raise ValueError(f"sequential recipes must each extend the previous one: {before.name} -> {after.name}")
    return models


def generation_config(cfg: EvaluateConfig, recipe: str = "", styles: list[str] | None = None) -> UnlearnConfig:
    return UnlearnConfig(
        recipe=recipe,
        grid=replace(cfg.grid, styles=list(styles or [])),
        tracking=cfg.tracking,
        model=cfg.model,
        sampling=cfg.sampling,
        edit=cfg.edit,
        resources=cfg.resources,
    )


def grid_styles(cfg: EvaluateConfig, models: list[ModelToScore]) -> list[str]:
    if not cfg.grid.styles:
        return []
    forgotten = [c for m in models if m.kind == "style" for c in m.recipe.concepts]
    return list(dict.fromkeys([*cfg.grid.styles, *forgotten]))


def check_inputs(cfg: EvaluateConfig, judge: Judge) -> tuple[list[ModelToScore], str]:
    if cfg.unstyled_weighting not in UNSTYLED_WEIGHTINGS:
        raise ValueError(f"unstyled_weighting must be one of {UNSTYLED_WEIGHTINGS}, got {cfg.unstyled_weighting!r}")
    models = models_to_score(cfg)
    check_judge(cfg.benchmark, judge)
    mode = cfg.benchmark.fid_mode(cfg.fid, cfg.real_images_dir)
    if mode == "inception":
        inception_weights_path(str(local_input(cfg.inception_weights, "inception_weights")) if cfg.inception_weights else "")
        if not cfg.real_images_dir or not local_input(cfg.real_images_dir, "real_images_dir").is_dir():
            raise ValueError(f"fid=inception needs real_images_dir (<dir>/<Style>/<Object>/*.jpg), got {cfg.real_images_dir!r}")
    return models, mode


def check_judge(benchmark: Benchmark, judge: Judge) -> None:
    """Every concept of the benchmark must be a class of the judge (else its accuracy is undefined)."""
    for kind, names, known in (("style", benchmark.styles, judge.styles), ("object", benchmark.objects, judge.objects)):
        unknown = [c for c in names if c not in known]
        if unknown:
            raise ValueError(f"the {kind} classifier does not know {unknown}; its classes are {list(known)}")


def compute_fid(cfg: EvaluateConfig, mode: str, judge: Judge, images: Location, rows: list[dict]) -> float:
    """FID of the images ``rows`` name against the real images of their cells. Domain FID (MiniCanvas's small
    classifier on 32×32 images) runs here; Inception's features are computed by actors where the images are."""
    cells = [(r["style"], r["object"]) for r in rows]
    if mode == "domain":
        real_images = cfg.benchmark.domain_real_images(cells, cfg.real_images_per_cell)
        fake = load_images([pull(images) / r["file"] for r in rows])
        return domain_fid(judge.features(), real_images, fake)  # type: ignore[attr-defined]
    root = local_input(cfg.real_images_dir, "real_images_dir")
    real = real_image_files(root, sorted(set(cells)), cfg.real_images_per_cell)
    weights = str(local_input(cfg.inception_weights, "inception_weights")) if cfg.inception_weights else ""
    return inception_fid_by_actors(
        (Location.parse(cfg.real_images_dir).uri, root, real),
        (images.uri, [r["file"] for r in rows]),
        (cfg.inception_weights, weights),
        cfg.inception_dims,
        cfg.resources,
    )


def sample_rows(model: ModelToScore, rows: list[dict], spec, columns: int = 8) -> list[tuple[str, list[str]]]:
    """The forgotten concepts' first-seed images, and one retained concept's, for the report."""
    seed = min(r["seed"] for r in rows)
    pick = [r for r in rows if r["seed"] == seed and r["style"] is not None]
    out = []
    key = "style" if model.kind == "style" else "object"
    names = list(spec.styles if model.kind == "style" else spec.objects)
    retained = next(c for c in names if c not in model.recipe.concepts)
    for concept in [*model.recipe.concepts, retained]:
        files = [r["file"] for r in pick if r[key] == concept][:columns]
        label = concept if concept in model.recipe.concepts else f"{concept} (kept)"
        out.append((label, files))
    return out


def evaluate(cfg: EvaluateConfig) -> Evaluation:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    judge = cfg.benchmark.load_judge(cfg.judge, device)
    models, mode = check_inputs(cfg, judge)
    styles = grid_styles(cfg, models)
    judge_kwargs = dict(benchmark=cfg.model.benchmark, judge=asdict(cfg.judge))

    def generate_and_judge(recipe: str) -> tuple[Location, list[dict]]:
        gen = generation_config(cfg, recipe, styles)
        index = unlearn(gen)
        return gen.images_dir, judge_images(gen.images_dir, index, judge.identity, judge_kwargs, cfg.resources)

    original_dir, original_rows = generate_and_judge("")
    scores, fid, drift, samples, judged = [], {}, {}, [], {}
    for model in models:
        images_dir, rows = generate_and_judge(model.recipe_dir)
        judged[model.name] = rows
        scores.append((model.name, forgetting_scores(rows, model.kind, list(model.recipe.concepts), cfg.unstyled_weighting)))
        kept = kept_rows(rows, model.kind, list(model.recipe.concepts))  # what FID and drift are measured on
        if mode != "none":
            fid[model.name] = compute_fid(cfg, mode, judge, images_dir, kept)
        if kept:  # a grid of the forgotten concepts alone keeps nothing to measure
            drift[model.name] = folder_drift(pull(images_dir), pull(original_dir), kept, original_rows)
        # This node's copies, for the report's pictures.
        samples.append(ConceptSamples(model.name, pull(original_dir), pull(images_dir), sample_rows(model, rows, cfg.benchmark)))
    if mode != "none" and models:
        fid["original"] = compute_fid(cfg, mode, judge, original_dir, [r for r in original_rows if r["style"] is not None])
    averages = {
        kind: average_scores([s for _, s in scores if s.kind == kind])
        for kind in ("style", "object")
        if any(s.kind == kind for _, s in scores)
    }
    sequential = (
        sequential_scores([(list(m.recipe.concepts), judged[m.name]) for m in models], models[0].kind, cfg.unstyled_weighting)
        if cfg.sequential
        else []
    )
    extractor = {
        "domain": "MiniCanvas classifier features (torchmetrics)",
        "inception": f"pytorch-fid Inception, {cfg.inception_dims}-d",
        "none": "not computed",
    }[mode]
    return log_evaluation(cfg, scores, averages, fid, extractor, samples, sequential, drift)


def metric_key(model_name: str) -> str:
    """MLflow metric names allow no "+": a multi-concept model "A+B" logs as "A-B"."""
    return model_name.replace("+", "-")


def log_evaluation(cfg: EvaluateConfig, scores, averages, fid, extractor, samples, sequential, drift) -> Evaluation:
    import mlflow

    from saeuron.cluster.tracking import tracked_run

    with tracked_run(cfg, cfg.tracking, run_name=cfg.run_name, tags={"saeuron.stage": "evaluate"}) as run:
        report_location = (
            Location.parse(cfg.report_dir)
            if cfg.report_dir
            else cfg.tracking.storage / "reports" / f"{cfg.run_name}-{run.info.run_id[:8]}"
        )
        report_dir = mirror_path(report_location)
        notes = [
            f"Benchmark {cfg.model.benchmark}; seeds {cfg.grid.seeds or list(cfg.benchmark.eval_seeds)}; "
            f"{cfg.sampling.num_inference_steps} steps, guidance {cfg.sampling.guidance_scale}; error mode {cfg.edit.error_mode}.",
            "Style forgetting: CRA is the object accuracy on the unstyled images (as the reference); "
            "'CRA (styled images)' is the object accuracy over all styled images, 'CRA (forgotten style)' on the "
            "forgotten style's own images (is the object still drawn?). Drift: the mean absolute pixel change of the "
            "kept concepts' images (those FID is computed on) from the original model's at the same prompt and seed.",
            f"Object forgetting: unstyled images weighted {cfg.unstyled_weighting!r}.",
        ]
        atlases = atlas_pages(mirror_path(cfg.tracking.storage / "atlas"), [name for name, _ in scores])
        report = write_report(
            report_dir,
            f"saeuron evaluation: {cfg.run_name}",
            scores,
            averages,
            fid,
            extractor,
            samples,
            sequential,
            notes,
            atlases,
            drift,
        )
        metrics = {}
        for name, s in scores:
            metrics.update({f"{metric_key(name)}.{k}": v for k, v in score_dict(s).items()})
        for kind, avg in averages.items():
            metrics.update({f"{kind}.{k}": v for k, v in avg.items()})
        metrics.update({f"{metric_key(name)}.FID": v for name, v in fid.items()})
        metrics.update({f"{metric_key(name)}.drift": v for name, v in drift.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for step in sequential:  # one MLflow step per sequential step: the UI plots them as curves
            mlflow.log_metrics({"sequential.UA": step.ua, "sequential.IRA": step.ira, "sequential.CRA": step.cra}, step=step.step)
        mlflow.set_tag("saeuron.fid_extractor", extractor)
        mlflow.log_artifacts(str(report_dir), "report")
        push(report_dir, report_location)
        log_table(scores, averages, fid, extractor, drift)
        logger.info(f"evaluate: report {report}; MLflow run {run.info.run_id}")
        return Evaluation(
            scores,
            averages,
            fid,
            extractor,
            list(sequential),
            report,
            run.info.run_id,
            (report_location / report.name).uri,
            drift,
        )
