"""The study's config: each shared section once, each stage section only what is that stage's own.

The dataclass defaults are the quick MiniCanvas study (``configs/minicanvas/study.yaml``);
``configs/minicanvas/study-full.yaml`` is the full one. :func:`stage_configs` hands the same
shared sections to every stage, so nothing a user sets is replaced: there is one place for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from saeuron.benchmarks import get_benchmark
from saeuron.collection.collect import CollectConfig, CollectOptions
from saeuron.evaluation.evaluate import EvaluateConfig, EvaluateOptions
from saeuron.method.gather import GatherConfig, GatherOptions
from saeuron.sae import SaeConfig
from saeuron.sae.trainer import SaeTrainConfig
from saeuron.sections import (
    ImageGridConfig,
    SamplingConfig,
    TrackingConfig,
    WithEdit,
    WithJudge,
    WithModel,
    WithResources,
    WithSampling,
    WithTracking,
)
from saeuron.training.ray_train import TrainConfig, TrainOptions
from saeuron.tuning.config import SearchConfig, SearchOptions, cell_kinds, check_anchors, for_kind


def _quick_steps() -> SamplingConfig:
    return SamplingConfig(num_inference_steps=10, guidance_scale=7.5)


def _quick_collect() -> CollectOptions:
    return CollectOptions(sampling=_quick_steps(), max_prompts=160, batch_size=16)


def _quick_train() -> TrainOptions:
    return TrainOptions(
        sae=SaeConfig(expansion_factor=16, k=8, batch_topk=True),
        optim=SaeTrainConfig(lr=2e-3, dead_feature_threshold=1_000_000),
        batch_size=2048,
        epochs=6,
        validation_fraction=0.1,
        checkpoint_every=100,
        log_every=20,
    )


def _quick_search() -> SearchOptions:
    return SearchOptions(
        concepts=["Neon_Glow", "Stars"],
        percentiles=[98.0, 99.0, 99.5],
        multipliers=[-1.0, -2.0, -5.0],
        max_prompts=44,
        chunk=11,
        grace_prompts=11,
        reduction_factor=3,
        register_as="saeuron-{benchmark}-recipes",
    )


def _quick_evaluate() -> EvaluateOptions:
    return EvaluateOptions(grid=ImageGridConfig(seeds=[188], batch_size=22), real_images_per_cell=2)


@dataclass
class StudyConfig(WithResources, WithJudge, WithEdit, WithSampling, WithModel, WithTracking):
    """The sampling section is that of statistics, search and evaluation (the same steps, since statistics
    are per timestep); collection has its own in its section."""

    sampling: SamplingConfig = field(default_factory=_quick_steps)
    name: str = "minicanvas-quick"
    """Names the study's MLflow run and its stage records (<study_dir>/stages/<name>)."""
    style_hookpoint: str = ""
    """Block whose SAE forgets styles; empty: the benchmark's (the paper's up_blocks.1.attentions.2)."""
    object_hookpoint: str = ""
    """Block whose SAE forgets objects; empty: the benchmark's (MiniCanvas: mid_block.attentions.0; otherwise the
    paper's up_blocks.1.attentions.1)."""
    style_candidate_hookpoints: list[str] = field(default_factory=list)
    """Further blocks every style is also searched at (collected, an SAE trained and style statistics gathered
    there); each style keeps the block whose search scores best (``search.candidate_statistics``)."""
    object_candidate_hookpoints: list[str] = field(default_factory=list)
    """The same for objects (MiniCanvas: Rings is forgotten at down_blocks.1.attentions.1, not at the mid block)."""
    collect: CollectOptions = field(default_factory=_quick_collect)
    train: TrainOptions = field(default_factory=_quick_train)
    gather: GatherOptions = field(default_factory=lambda: GatherOptions(batch_size=20))
    search: SearchOptions = field(default_factory=_quick_search)
    evaluate: EvaluateOptions = field(default_factory=_quick_evaluate)

    def __post_init__(self) -> None:
        benchmark = get_benchmark(self.model.benchmark)  # an unknown benchmark fails here, before any stage
        check_anchors(self.search, benchmark)
        cells = cell_kinds(self.search)
        if cells and not self.gather.cell_means:
            raise ValueError(
                f"the {cells[0]}s' gates {for_kind(self.search, cells[0]).gate} have the 'cell' gate, which detects by a "
                f"mean per concept and value of the other label: set gather.cell_means: true"
            )
        if self.search.map_strengths and not self.gather.map_anchor:
            raise ValueError(
                f"search.map_strengths {self.search.map_strengths} searches map edits, fitted when the style statistics "
                f"are gathered: set gather.map_anchor (e.g. none)"
            )
        for kind, block in self.candidate_hookpoints:
            if block == self.hookpoints[kind]:
                raise ValueError(f"{kind}_candidate_hookpoints lists {block}, the {kind} block itself: list only other blocks")

    @property
    def hookpoints(self) -> dict[str, str]:
        """{"style": block, "object": block}, empty fields resolved to the benchmark's."""
        benchmark = get_benchmark(self.model.benchmark)
        return {
            "style": self.style_hookpoint or benchmark.style_hookpoint,
            "object": self.object_hookpoint or benchmark.object_hookpoint,
        }

    @property
    def candidate_hookpoints(self) -> list[tuple[str, str]]:
        """(kind, block) of every candidate block, in the order given."""
        return [("style", b) for b in dict.fromkeys(self.style_candidate_hookpoints)] + [
            ("object", b) for b in dict.fromkeys(self.object_candidate_hookpoints)
        ]


def stage_configs(cfg: StudyConfig, parent_run_id: str) -> dict[str, Any]:
    """The configs of collect, train, search and evaluate: each stage's own section plus the study's
    shared sections; only what the study derives (hookpoints, its run as parent, folders) is added."""
    tracking = TrackingConfig(**{**asdict(cfg.tracking), "parent_run_id": parent_run_id})
    hookpoints = list(dict.fromkeys([*cfg.hookpoints.values(), *(block for _, block in cfg.candidate_hookpoints)]))
    # What search and evaluation share with the study: every section, the same objects.
    shared: dict[str, Any] = dict(
        tracking=tracking, model=cfg.model, sampling=cfg.sampling, edit=cfg.edit, judge=cfg.judge, resources=cfg.resources
    )
    return {
        "collect": CollectConfig(
            **_fields(cfg.collect), hookpoints=hookpoints, tracking=tracking, model=cfg.model, resources=cfg.resources
        ),
        "train": TrainConfig(**_fields(cfg.train), hookpoints=hookpoints, tracking=tracking, resources=cfg.resources),
        "search": SearchConfig(**_fields(cfg.search), **shared),
        "evaluate": EvaluateConfig(**_fields(cfg.evaluate), run_name=f"evaluate-{cfg.name}", **shared),
    }


def gather_config(cfg: StudyConfig, tracking: TrackingConfig, kind: str, hookpoint: str, sae: str) -> GatherConfig:
    """The statistics stage of one kind at one block, for the SAE that training produced (known only after it ran).
    The styles' options (``unstyled_reference``, the maps ``map_*``) change nothing in the object statistics, and their
    cell means serve only a cell gate: the object statistics are gathered, and recorded, without them, so that a study
    of styles and objects shares its objects' statistics with a study of objects alone."""
    options = _fields(cfg.gather)
    if kind == "object":
        style_only = ["unstyled_reference", *(name for name in options if name.startswith("map_"))]
        style_only += ["cell_means"] * ("object" not in cell_kinds(cfg.search))
        defaults = GatherOptions()
        options.update({name: getattr(defaults, name) for name in style_only})
    return GatherConfig(
        **options,
        sae=sae,
        kind=kind,
        hookpoint=hookpoint,
        tracking=tracking,
        model=cfg.model,
        sampling=cfg.sampling,
        resources=cfg.resources,
    )


def search_folder_key(search: SearchConfig, statistics: list[str]) -> str:
    """A search resumes its Tune experiments from its folder: another search config, or the same on statistics
    gathered again (``statistics``: their ``statistics_identity``; the folders keep their names), gets another folder."""
    from saeuron.study.records import _comparable

    return hashlib.sha1(json.dumps([_comparable(search), statistics], sort_keys=True).encode()).hexdigest()[:8]


def _fields(options: Any) -> dict[str, Any]:
    """A stage section's fields, nested sections kept as objects."""
    return {name: getattr(options, name) for name in options.__dataclass_fields__}
