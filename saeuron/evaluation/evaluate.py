"""Scoring unlearned models on the benchmark: generate the evaluation grid once per model, judge
it, compute UA / IRA / CRA and FID, log everything to MLflow and write a report.

Every model is a recipe (several concepts = multi-concept; with ``sequential`` the recipes are the
steps of one sequence, each adding concepts). The original model's grid is generated once too, as
the report's reference and FID's baseline. Everything is checked — recipes, classifiers, concept
names, FID inputs — before the first image is generated, and MLflow sees the scores only when all
of them are computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import torch

from saeuron.benchmarks.base import get_benchmark
from saeuron.evaluation.metrics import UNSTYLED_WEIGHTINGS, ForgettingScores, SequentialStep, average_scores, forgetting_scores, sequential_scores
from saeuron.method.recipe import Recipe
from saeuron.evaluation.report import ConceptSamples, write_report
from saeuron.method.sampling import INDEX, UnlearnConfig, check_recipe, unlearn

FID_MODES = ("auto", "domain", "inception", "none")
REAL_IMAGE_SEED = 20_251_129
"""Seed of MiniCanvas's "real" renders for FID; not one the classifier was trained on."""


@dataclass
class EvaluateConfig:
    recipes: list[str] = field(default_factory=list)
    """Recipes, one unlearned model each: folders, a folder of recipe folders, runs:/<search run id>/recipes or
    models:/NAME@alias of registered recipes."""
    sequential: bool = False
    """The recipes are the steps of one sequential unlearning run, each forgetting more concepts."""
    benchmark: str = "minicanvas"
    model_path: str = ""
    style_classifier: str = ""
    """UnlearnCanvas: style50.pth (ViT-L/16, 51-way); MiniCanvas uses its shipped classifier."""
    object_classifier: str = ""
    """UnlearnCanvas: style50_cls.pth (ViT-L/16, 20-way)."""
    classifier_arch: str = "vit_large_patch16_224"
    seeds: list[int] = field(default_factory=list)
    """Empty: the benchmark's evaluation seeds (188, 288, 588, 688, 888)."""
    styles: list[str] = field(default_factory=list)
    """Styles of the grid (empty: all); forgotten styles are always included."""
    num_inference_steps: int = 100
    guidance_scale: float = 9.0
    error_mode: str = "correct"
    image_format: str = "png"
    unstyled_weighting: str = "per_image"
    """Objects' accuracy: "per_image" (UnlearnCanvas after PR #6) or "paper" (unstyled images at half weight)."""
    fid: str = "auto"
    """"domain" (MiniCanvas classifier features), "inception" (pytorch-fid), "none"; auto: domain on MiniCanvas,
    inception on UnlearnCanvas when real_images_dir is given."""
    real_images_dir: str = ""
    """UnlearnCanvas real images, <dir>/<Style>/<Object>/<n>.jpg."""
    inception_weights: str = ""
    """pytorch-fid's pt_inception-2015-12-05-6726825d.pth; empty: the torch hub cache."""
    inception_dims: int = 2048
    real_images_per_cell: int = 5
    """MiniCanvas: real renders per (style, object) for domain FID."""
    study_dir: str = "runs/minicanvas"
    report_dir: str = ""
    """Empty: <study_dir>/reports/<run name>."""
    run_name: str = "evaluate"
    tracking_uri: str = ""
    experiment: str = "saeuron"
    parent_run_id: str = ""
    """Log as a child of this MLflow run (a study's or a search's)."""
    dtype: str = "auto"
    num_actors: int = 1
    batch_size: int = 16
    cpu_threads_per_actor: int = 1


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
    run_id: str


def concept_kind(benchmark: str, concept: str) -> str:
    spec = get_benchmark(benchmark)
    if concept in spec.styles:
        return "style"
    if concept in spec.objects:
        return "object"
    raise ValueError(f"{concept!r} is neither a style nor an object of {benchmark}; styles: {list(spec.styles)}, "
                     f"objects: {list(spec.objects)}")


def models_to_score(cfg: EvaluateConfig) -> list[ModelToScore]:
    from saeuron.cluster.registry import resolve_recipe_folders
    from saeuron.cluster.tracking import resolve_tracking_uri

    if not cfg.recipes:
        raise ValueError("no recipes to evaluate: pass --recipes FOLDER [FOLDER ...]")
    models = []
    for folder in resolve_recipe_folders(cfg.recipes, resolve_tracking_uri(cfg.tracking_uri, cfg.study_dir)):
        recipe = check_recipe(replace(generation_config(cfg), recipe=folder))
        kinds = {concept_kind(cfg.benchmark, c) for c in recipe.concepts}
        if len(kinds) != 1:
            raise ValueError(f"recipe {folder} forgets styles and objects together ({list(recipe.concepts)}); "
                             f"UnlearnCanvas scores one kind at a time")
        models.append(ModelToScore("+".join(recipe.concepts), recipe, folder, kinds.pop()))
    if len({m.name for m in models}) != len(models):
        raise ValueError(f"two recipes forget the same concepts: {[m.name for m in models]}")
    if cfg.sequential:
        for before, after in zip(models, models[1:]):
            if list(after.recipe.concepts)[:len(before.recipe.concepts)] != list(before.recipe.concepts) or after.kind != before.kind:
                raise ValueError(f"sequential recipes must each extend the previous one: {before.name} -> {after.name}")
    return models


def generation_config(cfg: EvaluateConfig, recipe: str = "", styles: list[str] | None = None) -> UnlearnConfig:
    return UnlearnConfig(
        recipe=recipe, benchmark=cfg.benchmark, model_path=cfg.model_path, seeds=list(cfg.seeds), styles=list(styles or []),
        num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale, error_mode=cfg.error_mode,
        image_format=cfg.image_format, study_dir=cfg.study_dir, dtype=cfg.dtype, num_actors=cfg.num_actors,
        batch_size=cfg.batch_size, cpu_threads_per_actor=cfg.cpu_threads_per_actor, tracking_uri=cfg.tracking_uri,
        experiment=cfg.experiment)


def grid_styles(cfg: EvaluateConfig, models: list[ModelToScore]) -> list[str]:
    if not cfg.styles:
        return []
    forgotten = [c for m in models if m.kind == "style" for c in m.recipe.concepts]
    return list(dict.fromkeys([*cfg.styles, *forgotten]))


def fid_mode(cfg: EvaluateConfig) -> str:
    if cfg.fid not in FID_MODES:
        raise ValueError(f"fid must be one of {FID_MODES}, got {cfg.fid!r}")
    if cfg.fid != "auto":
        return cfg.fid
    if cfg.benchmark == "minicanvas":
        return "domain"
    return "inception" if cfg.real_images_dir else "none"


def check_inputs(cfg: EvaluateConfig, judge) -> tuple[list[ModelToScore], str]:
    if cfg.unstyled_weighting not in UNSTYLED_WEIGHTINGS:
        raise ValueError(f"unstyled_weighting must be one of {UNSTYLED_WEIGHTINGS}, got {cfg.unstyled_weighting!r}")
    models = models_to_score(cfg)
    check_judge(cfg.benchmark, judge)
    mode = fid_mode(cfg)
    if mode == "domain" and cfg.benchmark != "minicanvas":
        raise ValueError("fid=domain uses MiniCanvas's classifier features; on UnlearnCanvas use fid=inception or none")
    if mode == "inception":
        from saeuron.evaluation.fid import inception_weights_path

        inception_weights_path(cfg.inception_weights)
        if not cfg.real_images_dir or not Path(cfg.real_images_dir).is_dir():
            raise ValueError(f"fid=inception needs real_images_dir (<dir>/<Style>/<Object>/*.jpg), got {cfg.real_images_dir!r}")
    return models, mode


def check_judge(benchmark: str, judge) -> None:
    """Every concept of the benchmark must be a class of the judge (else its accuracy is undefined)."""
    spec = get_benchmark(benchmark)
    for kind, names, known in (("style", spec.styles, judge.styles), ("object", spec.objects, judge.objects)):
        unknown = [c for c in names if c not in known]
        if unknown:
            raise ValueError(f"the {kind} classifier does not know {unknown}; its classes are {list(known)}")


def retained_cells(model: ModelToScore, rows: list[dict]) -> list[dict]:
    """The styled images FID is computed on: those of the concepts the model should keep."""
    key = "style" if model.kind == "style" else "object"
    return [r for r in rows if r["style"] is not None and r[key] not in model.recipe.concepts]


def minicanvas_real_images(cells: list[tuple[str, str]], per_cell: int) -> torch.Tensor:
    from saeuron.benchmarks.minicanvas.concepts import OBJECTS, STYLE_LABELS
    from saeuron.benchmarks.minicanvas.data import image_seed
    from saeuron.benchmarks.minicanvas.render import render

    images = [render(s, o, image_seed(REAL_IMAGE_SEED, STYLE_LABELS.index(s), OBJECTS.index(o), i))
              for s, o in sorted(set(cells)) for i in range(per_cell)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def compute_fid(cfg: EvaluateConfig, mode: str, judge, images_dir: Path, rows: list[dict]) -> float:
    from saeuron.evaluation.fid import domain_fid, inception_fid
    from saeuron.evaluation.judging import load_images

    cells = [(r["style"], r["object"]) for r in rows]
    fake = [images_dir / r["file"] for r in rows]
    if mode == "domain":
        return domain_fid(judge.features(), minicanvas_real_images(cells, cfg.real_images_per_cell), load_images(fake))
    real = [p for s, o in sorted(set(cells)) for p in sorted((Path(cfg.real_images_dir) / s / o).glob("*.jpg"))]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return inception_fid(real, fake, cfg.inception_weights, cfg.inception_dims, device)


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
    from saeuron.benchmarks.judges import load_judge
    from saeuron.evaluation.judging import judge_images

    device = "cuda" if torch.cuda.is_available() else "cpu"
    judge = load_judge(cfg.benchmark, cfg.style_classifier, cfg.object_classifier, cfg.classifier_arch, device)
    models, mode = check_inputs(cfg, judge)
    styles = grid_styles(cfg, models)
    judge_kwargs = dict(benchmark=cfg.benchmark, style_classifier=cfg.style_classifier, object_classifier=cfg.object_classifier,
                        arch=cfg.classifier_arch)

    def generate_and_judge(recipe: str) -> tuple[Path, list[dict]]:
        gen = generation_config(cfg, recipe, styles)
        unlearn(gen)
        index = pq.read_table(gen.images_dir / INDEX)
        return gen.images_dir, judge_images(gen.images_dir, index, judge.identity, judge_kwargs, 64, cfg.num_actors,
                                            cfg.cpu_threads_per_actor)

    original_dir, original_rows = generate_and_judge("")
    spec = get_benchmark(cfg.benchmark)
    scores, fid, samples, judged = [], {}, [], {}
    for model in models:
        images_dir, rows = generate_and_judge(model.recipe_dir)
        judged[model.name] = rows
        scores.append((model.name, forgetting_scores(rows, model.kind, list(model.recipe.concepts), cfg.unstyled_weighting)))
        if mode != "none":
            fid[model.name] = compute_fid(cfg, mode, judge, images_dir, retained_cells(model, rows))
        samples.append(ConceptSamples(model.name, original_dir, images_dir, sample_rows(model, rows, spec)))
    if mode != "none" and models:
        fid["original"] = compute_fid(cfg, mode, judge, original_dir, [r for r in original_rows if r["style"] is not None])
    averages = {kind: average_scores([s for _, s in scores if s.kind == kind]) for kind in ("style", "object")
                if any(s.kind == kind for _, s in scores)}
    sequential = sequential_scores([(list(m.recipe.concepts), judged[m.name]) for m in models], models[0].kind,
                                   cfg.unstyled_weighting) if cfg.sequential else []
    extractor = {"domain": "MiniCanvas classifier features (torchmetrics)",
                 "inception": f"pytorch-fid Inception, {cfg.inception_dims}-d", "none": "not computed"}[mode]
    return log_evaluation(cfg, scores, averages, fid, extractor, samples, sequential)


def metric_key(model_name: str) -> str:
    """MLflow metric names allow no "+": a multi-concept model "A+B" logs as "A-B"."""
    return model_name.replace("+", "-")


def log_evaluation(cfg: EvaluateConfig, scores, averages, fid, extractor, samples, sequential) -> Evaluation:
    import mlflow

    from saeuron.cluster.tracking import tracked_run

    with tracked_run(cfg, study_dir=cfg.study_dir, tracking_uri=cfg.tracking_uri, experiment=cfg.experiment,
                     run_name=cfg.run_name, tags={"saeuron.stage": "evaluate"}) as run:
        report_dir = Path(cfg.report_dir or Path(cfg.study_dir) / "reports" / f"{cfg.run_name}-{run.info.run_id[:8]}").expanduser().resolve()
        notes = [f"Benchmark {cfg.benchmark}; seeds {cfg.seeds or list(get_benchmark(cfg.benchmark).eval_seeds)}; "
                 f"DDIM {cfg.num_inference_steps} steps, guidance {cfg.guidance_scale}; error mode {cfg.error_mode}.",
                 "Style forgetting: CRA is the object accuracy on the unstyled images (as the reference); "
                 "'CRA (styled images)' is the object accuracy over all styled images.",
                 f"Object forgetting: unstyled images weighted {cfg.unstyled_weighting!r}."]
        report = write_report(report_dir, f"saeuron evaluation: {cfg.run_name}", scores, averages, fid, extractor, samples,
                              sequential, notes)
        metrics = {}
        for name, s in scores:
            key = metric_key(name)
            metrics.update({f"{key}.UA": s.ua, f"{key}.IRA": s.ira, f"{key}.CRA": s.cra})
            if s.cra_styled is not None:
                metrics[f"{key}.CRA_styled"] = s.cra_styled
        for kind, avg in averages.items():
            metrics.update({f"{kind}.{k}": v for k, v in avg.items()})
        metrics.update({f"{metric_key(name)}.FID": v for name, v in fid.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for step in sequential:  # one MLflow step per sequential step: the UI plots them as curves
            mlflow.log_metrics({"sequential.UA": step.ua, "sequential.IRA": step.ira, "sequential.CRA": step.cra}, step=step.step)
        mlflow.set_tag("saeuron.fid_extractor", extractor)
        mlflow.log_artifacts(str(report_dir), "report")
        print_table(scores, averages, fid, extractor)
        print(f"evaluate: report {report}; MLflow run {run.info.run_id}", flush=True)
        return Evaluation(scores, averages, fid, extractor, list(sequential), report, run.info.run_id)


def print_table(scores, averages, fid, extractor) -> None:
    print(f"{'model':<28} {'kind':<7} {'UA':>6} {'IRA':>6} {'CRA':>6} {'FID':>8}")
    for name, s in scores:
        value = f"{fid[name]:8.2f}" if name in fid else f"{'–':>8}"
        print(f"{name:<28} {s.kind:<7} {s.ua:6.3f} {s.ira:6.3f} {s.cra:6.3f} {value}")
    for kind, avg in averages.items():
        print(f"{'mean (' + kind + ')':<28} {'':<7} {avg['UA']:6.3f} {avg['IRA']:6.3f} {avg['CRA']:6.3f}")
    if fid:
        print(f"FID extractor: {extractor}" + (f"; original model {fid['original']:.2f}" if "original" in fid else ""))
