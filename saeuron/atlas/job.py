"""The feature atlas as a job: one page per latent — what it draws, when it fires, what removing it does — and an
index sorted by how concept-specific each latent is.

Two Ray Data passes over actor pools: the recording (the prompt set generated once, the chosen latents' activations
kept per step; saved as ``recording.parquet`` and reused by a rerun) and the effect samples (each latent's top
prompts with it ablated and amplified, and its feature icon). A latent's page is done when its JSON exists: a rerun
writes only the missing pages.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from saeuron.atlas.analysis import Recording, summarise_latent
from saeuron.atlas.effect import GROUP, ICON, EffectSampler, effect_numbers, effect_picture, group_effects
from saeuron.atlas.pages import curves_picture, images_picture, page_name, write_index, write_latent_page
from saeuron.atlas.record import collect_table, heat_steps, record
from saeuron.atomic_files import write_text_atomic
from saeuron.benchmarks import get_benchmark
from saeuron.cluster.actor_pool import map_with_actor_pool
from saeuron.cluster.registry import load_sae
from saeuron.cluster.tracking import tracking_uri_of
from saeuron.console import logger
from saeuron.method.recipe import Recipe
from saeuron.method.selection import importance_scores
from saeuron.method.statistics import ConceptStatistics, sae_fingerprint
from saeuron.sections import ImageGridConfig, WithJudge, WithModel, WithResources, WithSampling, WithTracking
from saeuron.storage import Location
from saeuron.storage.mirror import mirror_path, push

GROUPS = "groups.json"


@dataclass
class AtlasConfig(WithResources, WithJudge, WithSampling, WithModel, WithTracking):
    sae: str = ""
    """The SAE: a folder or models:/NAME@alias; empty: the one the recipe names."""
    recipe: str = ""
    """A recipe folder: its latents get pages, drawn with its thresholds and the concept each serves."""
    latents: list[int] = field(default_factory=list)
    """Latents to add (or, without a recipe, the latents), read against ``concept``."""
    concept: str = ""
    """The concept the listed latents are read against; empty: the recipe's first."""
    hookpoint: str = ""
    """The SAE's block; empty: the recipe's."""
    statistics: str = ""
    """Statistics gathered with this SAE (jobs/gather.py): each page draws the latent's selection score per timestep."""
    top: int = 0
    """With statistics: also the N latents scoring highest for ``concept`` (mean selection score over timesteps)."""
    max_latents: int = 0
    """At most this many of the recipe's latents, the most often selected first (0: all)."""
    grid: ImageGridConfig = field(default_factory=ImageGridConfig)
    """The prompt set the latents are read on: the evaluation grid."""
    effect_images: int = 3
    """Top images of each latent sampled again with it scaled."""
    effect_factors: list[float] = field(default_factory=lambda: [0.0, 2.0, 5.0])
    """Scales of the latent in the effect samples (0 = ablated); the unscaled image is always there."""
    output_dir: str = ""
    """Atlas folder; empty: <study_dir>/atlas/<recipe or SAE name>."""

    def atlas_dir(self) -> Location:
        if self.output_dir:
            return Location.parse(self.output_dir)
        name = Location.parse(self.recipe).name if self.recipe else Location.parse(self.sae or "sae").name
        return self.tracking.storage / "atlas" / name


def selection_scores(stats: ConceptStatistics, concept: str) -> torch.Tensor:
    """[T, F] the method's importance score of every latent for ``concept`` at each statistics timestep."""
    if concept not in stats.concepts:
        raise ValueError(f"the statistics know {stats.concepts}, not {concept!r}")
    means, c = stats.means(), stats.concepts.index(concept)
    return torch.stack([importance_scores(means[:, t], c) for t in range(len(stats.timesteps))])


def choose_latents(cfg: AtlasConfig, num_latents: int, recipe: Recipe | None, stats: ConceptStatistics | None) -> dict[int, str]:
    """{latent: the concept it is read against}, checked against the SAE."""
    chosen: dict[int, str] = {}
    if recipe is not None:
        names = list(recipe.concepts)
        counts: dict[int, dict[int, int]] = {}
        selection = recipe.selection()
        for latent, concept in zip(selection.latent.tolist(), selection.concept_index.tolist()):
            counts.setdefault(latent, {}).setdefault(concept, 0)
            counts[latent][concept] += 1
        ranked = sorted(counts, key=lambda f: (-sum(counts[f].values()), f))
        for latent in ranked[: cfg.max_latents or None]:
            chosen[latent] = names[max(counts[latent], key=lambda c: counts[latent][c])]
    concept = cfg.concept or (next(iter(recipe.concepts)) if recipe is not None else "")
    if cfg.latents and not concept:
        raise ValueError("the listed latents need --concept: the concept their specificity and curves are read against")
    chosen.update({int(f): concept for f in cfg.latents})
    if cfg.top:
        if stats is None or not concept:
            raise ValueError("--top needs --statistics (the scores to rank by) and a concept (--concept or a recipe's)")
        best = selection_scores(stats, concept).mean(0).argsort(descending=True)[: cfg.top].tolist()
        chosen.update({int(f): concept for f in best if f not in chosen})
    bad = [f for f in chosen if not 0 <= f < num_latents]
    if bad:
        raise ValueError(f"latents {bad} are out of range: the SAE has {num_latents} latents (0..{num_latents - 1})")
    if not chosen:
        raise ValueError("no latents: pass --recipe (its latents) or --latents N [N ...] with --concept")
    return chosen


def _setup(cfg: AtlasConfig, sae_ref: str, hookpoint: str) -> dict[str, Any]:
    benchmark = get_benchmark(cfg.model.benchmark)
    return dict(
        model_path=str(benchmark.resolve_model_path(cfg.model.model_path)),
        sae_ref=sae_ref,
        hookpoint=hookpoint,
        num_inference_steps=cfg.sampling.num_inference_steps,
        guidance_scale=cfg.sampling.guidance_scale,
        dtype=cfg.model.dtype,
        sampler=cfg.model.sampler,
        tracking_uri=tracking_uri_of(cfg.tracking),
        cpu_threads=cfg.resources.actor.cpus,
    )


def effects(
    cfg: AtlasConfig,
    setup: dict[str, Any],
    rec: Recording,
    summaries: dict,
    everyone: dict,
    chosen: dict[int, str],
    kind: str,
    sae_inference: str,
) -> pa.Table:
    """Each pending latent's top images again with the latent at every factor (1 included), plus its feature icon; and
    per concept, its images with all of the atlas's latents of that concept ablated together."""

    def row(latent: int, image: int, factor: float, concept: str, strength: float = 0.0, group: str = "") -> dict[str, Any]:
        # Judged for the latent's concept on the atlas's axis, the image's own label on the other.
        other = (rec.objects if kind == "style" else rec.styles)[image] if image >= 0 else ""
        style, obj = (concept, other) if kind == "style" else (other or None, concept)
        prompt, seed = (rec.prompts[image], rec.seeds[image]) if image >= 0 else ("", 0)
        return dict(
            latent=latent,
            image=image,
            factor=factor,
            strength=strength,
            group=group,
            prompt=prompt,
            seed=seed,
            style=style,
            object=obj,
        )

    rows = []
    for summary in summaries.values():
        for image in summary.top[: cfg.effect_images]:
            rows += [row(summary.latent, image, factor, summary.concept) for factor in [1.0, *cfg.effect_factors]]
        rows.append(row(summary.latent, ICON, 1.0, summary.concept, strength=summary.peak))
    for concept in dict.fromkeys(s.concept for s in everyone.values()):  # every concept: groups.json is rewritten whole
        group = ",".join(str(f) for f, c in chosen.items() if c == concept)
        images = [i for s in everyone.values() for i in s.top if rec.labels[i] == concept]
        for image in list(dict.fromkeys(images))[: 2 * cfg.effect_images]:
            rows += [row(GROUP, image, factor, concept, group=group) for factor in [1.0, *cfg.effect_factors]]
    if not rows:
        return pa.table({"latent": pa.array([], pa.int64())})
    judge = {
        "style_classifier": cfg.judge.style_classifier,
        "object_classifier": cfg.judge.object_classifier,
        "classifier_arch": cfg.judge.classifier_arch,
    }
    dataset = map_with_actor_pool(
        rows,
        EffectSampler,
        dict(
            model_path=setup["model_path"],
            sae_ref=setup["sae_ref"],
            hookpoint=setup["hookpoint"],
            kind=kind,
            benchmark=cfg.model.benchmark,
            judge=judge,
            setup={**setup, "sae_inference": sae_inference},
        ),
        cfg.grid.batch_size,
        cfg.resources,
    )
    return collect_table(dataset)


def atlas(cfg: AtlasConfig) -> list[dict]:
    """Write the missing latent pages and the index; returns the index's records."""
    from saeuron.method.edit import UnlearningEdit

    recipe = Recipe.load(cfg.recipe) if cfg.recipe else None
    hookpoint = cfg.hookpoint or (recipe.hookpoint if recipe else "")
    if not hookpoint:
        raise ValueError("pass --recipe or --hookpoint: the block the SAE reads")
    sae_ref = cfg.sae or (recipe.sae_ref if recipe else "")
    if not sae_ref:
        raise ValueError("pass --sae (or a --recipe that names its SAE)")
    sae = load_sae(
        sae_ref,
        hookpoint,
        inference=(recipe.sae_inference or None) if recipe else None,
        tracking_uri=tracking_uri_of(cfg.tracking),
    )
    if recipe is not None:
        UnlearningEdit(sae, recipe)  # refuses an SAE the recipe was not built for
    stats = ConceptStatistics.load(cfg.statistics) if cfg.statistics else None
    if stats is not None and stats.sae_fingerprint != sae_fingerprint(sae):
        raise ValueError(
            f"the statistics {cfg.statistics} were gathered with another SAE ({stats.sae_ref}): gather them with this one"
        )
    chosen = choose_latents(cfg, sae.num_latents, recipe, stats)
    benchmark = get_benchmark(cfg.model.benchmark)
    kinds = {benchmark.concept_kind(c) for c in chosen.values()}
    if len(kinds) != 1:
        raise ValueError("the latents are read against styles and objects at once: make one atlas per kind")
    kind = kinds.pop()
    out = cfg.atlas_dir()
    local = mirror_path(out)
    local.mkdir(parents=True, exist_ok=True)
    latents = list(chosen)
    setup = _setup(cfg, sae_ref, hookpoint)
    table = record(cfg, setup, latents, sae.inference_mode, sae_fingerprint(sae), local)
    rec = Recording.from_table(table, kind)
    key = page_key(cfg, table, recipe)
    summaries = {c: summarise_latent(rec, c, f, chosen[f]) for c, f in enumerate(latents)}
    pending = {c: s for c, s in summaries.items() if not page_done(local / f"{page_name(s.latent)}.json", key)}
    logger.info(f"atlas: {len(latents)} latents, {len(latents) - len(pending)} pages already written -> {out.uri}")
    effect_table = effects(cfg, setup, rec, pending, summaries if pending else {}, chosen, kind, sae.inference_mode)
    if pending:
        write_text_atomic(local / GROUPS, json.dumps(group_effects(effect_table, chosen), indent=1))
    thresholds: dict[int, dict[int, float]] = {}
    if recipe is not None:
        selection = recipe.selection()
        for t, f, m in zip(selection.timestep_index.tolist(), selection.latent.tolist(), selection.threshold.tolist()):
            thresholds.setdefault(f, {})[recipe.timesteps[t]] = m
    heat_labels = [f"step {s + 1} (t={rec.timesteps[s]})" for s in heat_steps(len(rec.timesteps))]
    scores: dict[str, torch.Tensor] = {}
    for column, summary in pending.items():
        name = page_name(summary.latent)
        images_picture(rec, column, summary, heat_labels, local / f"{name}_images.png")
        score = {}
        if stats is not None and summary.concept in stats.concepts:
            if summary.concept not in scores:
                scores[summary.concept] = selection_scores(stats, summary.concept)
            score = dict(zip(stats.timesteps, scores[summary.concept][:, summary.latent].tolist()))
        curves_picture(rec, summary, thresholds.get(summary.latent, {}), score, local / f"{name}_curves.png")
        numbers, grid = effect_numbers(effect_table, rec, summary.latent, cfg.effect_factors) if summary.top else ({}, [])
        if grid:
            effect_picture(grid, cfg.effect_factors, local / f"{name}_effect.png")
        write_latent_page(local, summary, {**numbers, "key": key})
    records = write_index(local, f"Feature atlas: {hookpoint} ({len(latents)} latents)", latents)
    push(local, out)
    return records


def page_key(cfg: AtlasConfig, recording: pa.Table, recipe: Recipe | None) -> str:
    """What a page shows besides its latent: the recording, the effect settings, the recipe's rules and the statistics.
    A page written under another key is written again."""
    parts = [recording.schema.metadata[b"saeuron.key"].decode(), cfg.effect_images, cfg.effect_factors, cfg.statistics]
    rules = b""
    if recipe is not None:
        folder = Location.parse(cfg.recipe)
        rules = (folder / "recipe.json").read_bytes() + (folder / "recipe.safetensors").read_bytes()
    return hashlib.sha256(json.dumps(parts, default=str).encode() + rules).hexdigest()[:16]


def page_done(path: Path, key: str) -> bool:
    return path.is_file() and json.loads(path.read_text()).get("key") == key


def atlas_tracked(cfg: AtlasConfig) -> list[dict]:
    """:func:`atlas` in an MLflow run: the pages as artefacts (``atlas/index.html``), the averages as metrics."""
    import mlflow

    from saeuron.cluster.tracking import tracked_run

    with tracked_run(cfg, cfg.tracking, run_name=f"atlas-{cfg.atlas_dir().name}", tags={"saeuron.stage": "atlas"}):
        records = atlas(cfg)
        mlflow.log_artifacts(str(mirror_path(cfg.atlas_dir())), "atlas")
        specific = [r["specificity"] for r in records if r["specificity"] == r["specificity"]]
        drops = [r["effect_probability_drop"] for r in records if r.get("effect_probability_drop") is not None]
        mlflow.log_metrics(
            {
                "latents": float(len(records)),
                "mean_specificity": float(np.mean(specific)) if specific else float("nan"),
                "mean_top_concept_share": float(np.mean([r["top_concept_share"] for r in records])),
                "mean_ablation_probability_drop": float(np.mean(drops)) if drops else float("nan"),
            }
        )
    return records
