"""Building a recipe from gathered statistics and (percentile, multiplier) per concept."""

from __future__ import annotations

from dataclasses import dataclass, field

from saeuron.benchmarks import get_benchmark
from saeuron.console import logger
from saeuron.method.recipe import Recipe, check_halves
from saeuron.method.selection import PAPER_GATE, Gate, check_contrast
from saeuron.method.statistics import ConceptStatistics
from saeuron.method.steering import Steer
from saeuron.sections import WithModel
from saeuron.storage import Location
from saeuron.storage.mirror import mirror_path, push


@dataclass
class RecipeConfig(WithModel):
    statistics: str = ""
    """Folder written by jobs/gather.py."""
    concepts: list[str] = field(default_factory=list)
    """Concepts to forget, together (sequential / multi-concept unlearning = several)."""
    percentile: float = 99.0
    """Latents scoring above this percentile at a timestep are selected (in (0, 100))."""
    multiplier: float = -5.0
    """γ: a selected latent firing above its threshold becomes γ·μ (negative suppresses)."""
    anchor: str = ""
    """Steer instead of scaling (``saeuron.method.steering``): move the concepts toward this concept's rendering
    ("none": the unstyled one, statistics gathered with unstyled_reference); empty: scale by ``multiplier``."""
    strength: float = 5.0
    """β of the steering, with ``anchor``."""
    where: str = "fires"
    """Steering moves the patches where the concept's latents fire ("fires") or every patch ("all")."""
    by: str = "mean"
    """Steering by the "mean" difference of the two concepts' codes, or by the concept's fitted "map" of the block's
    output toward the anchor's (statistics gathered with map_anchor; with ``halves: cond``)."""
    contrast: str = "mean"
    """Latents scored against the other concepts' "mean" (the paper) or their "max" (specific to the concept)."""
    gate: str = "mean"
    """Where a selected latent counts as firing: "mean", the paper's (above its patch-averaged mean over all concepts,
    i.e. nearly wherever it is active), "others" (above its mean + ``gate_sigmas`` standard deviations where it
    fires on the concepts the recipe keeps; statistics gathered with firing moments), "image" (the paper's, on the
    images whose patches pass the "others" threshold often enough: ``gate_share``) or "nearest" (the paper's, on the
    images whose SAE code is nearest the concept's mean, after ``wait`` steps: "nearest:2") or "cell" (the same with
    a mean per concept and value of the other label: statistics gathered with ``cell_means``); a spec may give its
    own numbers ("image:1:0.05")."""
    gate_sigmas: float = 1.0
    """z of the "others" gate (and of the "image" gate's detection)."""
    gate_share: float = 0.1
    """The "image" gate's share of an image's patches past the detection threshold, averaged over the steps so far,
    that makes it the concept's ("image": edit at the paper's threshold on those images only)."""
    halves: str = "both"
    """The CFG half the edit changes: "both" (the paper) or "cond", the conditional half only, where the guidance
    scale multiplies the edit (so it takes a much smaller γ or β: README, "Every concept", item 13)."""
    output_dir: str = ""
    """Where the recipe goes (a folder or an s3:// / gs:// prefix); empty means <statistics>/../../recipes/<concepts>."""

    def recipe_dir(self) -> Location:
        if self.output_dir:
            return Location.parse(self.output_dir)
        return Location.parse(self.statistics).parent.parent / "recipes" / "+".join(self.concepts)


def check_one_edit(cfg: RecipeConfig) -> None:
    """A recipe concept is scaled or steered: the other edit's options, given, would go unused."""
    defaults = RecipeConfig()
    if cfg.anchor and cfg.multiplier != defaults.multiplier:
        raise ValueError(f"--anchor {cfg.anchor} steers and --multiplier {cfg.multiplier} scales: give one of them")
    unused = [f"--{k} {getattr(cfg, k)}" for k in ("strength", "where", "by") if getattr(cfg, k) != getattr(defaults, k)]
    if not cfg.anchor and unused:
        raise ValueError(f"{' '.join(unused)} only apply to steering: add --anchor CONCEPT (e.g. none), or drop them")


def make_recipe(cfg: RecipeConfig) -> Recipe:
    if not cfg.concepts:
        raise ValueError("no concepts to forget: pass --concepts NAME [NAME ...]")
    if not 0 < cfg.percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {cfg.percentile}")
    check_contrast(cfg.contrast)
    check_halves(cfg.halves)
    check_one_edit(cfg)
    gate = Gate.parse(cfg.gate, cfg.gate_sigmas, cfg.gate_share)
    # A z or share the gate does not take (or gives its own of) would be silently ignored.
    if cfg.gate_sigmas != PAPER_GATE.sigmas and gate.sigmas != cfg.gate_sigmas:
        raise ValueError(
            f"gate_sigmas {cfg.gate_sigmas:g} applies to the 'others' and 'image' gates named without a z, not {cfg.gate!r}: drop it"
        )
    if cfg.gate_share != PAPER_GATE.share and gate.share != cfg.gate_share:
        raise ValueError(
            f"gate_share {cfg.gate_share:g} applies to an 'image' gate named without a share, not {cfg.gate!r}: drop it"
        )
    stats = ConceptStatistics.load(cfg.statistics)
    recipe = Recipe.from_statistics(
        stats,
        {
            c: (cfg.percentile, Steer(cfg.anchor, cfg.strength, cfg.where, cfg.by) if cfg.anchor else cfg.multiplier)
            for c in cfg.concepts
        },
        get_benchmark(cfg.model.benchmark).model_identity(cfg.model.model_path),
        cfg.contrast,
        cfg.halves,
        gate,
    )
    local = mirror_path(cfg.recipe_dir())
    recipe.save(local)
    push(local, cfg.recipe_dir())
    logger.info(
        f"recipe: {len(recipe.rules) + len(recipe.steering)} rules for {cfg.concepts} over {len(recipe.timesteps)} timesteps -> {cfg.recipe_dir()}"
    )
    return recipe
