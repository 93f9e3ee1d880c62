"""What a search is configured with: the concepts, the (p, γ) grid, the scheduler and its budget."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from saeuron.benchmarks import Benchmark, get_benchmark
from saeuron.method.selection import DETECTING, PAPER_GATE, Gate, check_contrast
from saeuron.sections import WithEdit, WithJudge, WithModel, WithResources, WithSampling, WithTracking
from saeuron.storage import Location

SCHEDULERS = ("grid", "asha")
OBJECTIVES = ("ua_ira", "ua_ira_cra", "ua_ira_cra_own")
ALL_ANCHORS = "all"
"""``search.anchors: [all]``: steer toward every other concept a block's statistics know."""


def check_objective(name: str) -> str:
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")
    return name


def objective_of(name: str, ua: float, ira: float, cra: float, cra_own: float | None = None) -> float:
    """The search's objective ``name``: "ua_ira" = (UA + IRA) / 2, the reference's; "ua_ira_cra" = (UA + IRA + CRA) / 3,
    which also keeps what the other axis needs (a style's unstyled objects, an object's styles), so that a search
    cannot trade it away; "ua_ira_cra_own" = (UA + retention) / 2, retention the mean of IRA, CRA and, for a style,
    the object accuracy on its own images (is the object still drawn once its style is gone?). Forgetting keeps half
    the weight, as in the reference's: with four equal terms an edit that forgets nothing scores 0.75, as much as one
    that forgets the style with its objects, and a search chose it (Flat_Pop, README "Every concept", item 9)."""
    if check_objective(name) == "ua_ira":
        return (ua + ira) / 2
    if name == "ua_ira_cra":
        return (ua + ira + cra) / 3
    retention = [ira, cra] + ([] if cra_own is None else [cra_own])
    return (ua + sum(retention) / len(retention)) / 2


@dataclass
class SearchOptions:
    """What a study's search section holds."""

    concepts: list[str] = field(default_factory=list)
    """Concepts to tune, styles and objects mixed; each gets its own search."""
    percentiles: list[float] = field(default_factory=list)
    """Percentiles of the grid; empty: the benchmark's (UnlearnCanvas: the reference's 99.99, 99.995, 99.999)."""
    multipliers: list[float] = field(default_factory=list)
    """Multipliers (γ < 0) of the grid; empty: the benchmark's (UnlearnCanvas: the reference's −1, −5, …, −30)."""
    style_percentiles: list[float] = field(default_factory=list)
    """Percentiles for style concepts; empty: ``percentiles`` (the paper fixes styles at p = 99.999)."""
    style_multipliers: list[float] = field(default_factory=list)
    """Multipliers for style concepts; empty: ``multipliers`` (the paper fixes styles at γ = −1)."""
    style_gate: list[str] = field(default_factory=list)
    """The gates searched for style concepts; empty: ``gate``. MiniCanvas's styles are forgotten under the cell gate
    and its objects under the mean and nearest gates (README, "Every concept", items 21, 28): one study of all 18."""
    style_objective: str = ""
    """The objective style concepts are ranked by; empty: ``objective`` (a style's objects on its own images count
    only for a style: "ua_ira_cra_own")."""
    anchors: list[str] = field(default_factory=list)
    """Steering anchors (``saeuron.method.steering``): a concept whose statistics know an anchor is also searched with
    the steering edit toward it, at every percentile × strength; "none" is the unstyled rendering (statistics gathered
    with unstyled_reference). ``[all]``: every other concept the block's statistics know, "none" included — which
    anchor forgets a style cleanly differs from style to style and follows no distance between their statistics
    (README, "Every concept", item 12), so the search measures them all. Empty: the paper's scaling edit only."""
    steer_concepts: list[str] = field(default_factory=list)
    """The concepts searched with the steering edits of ``anchors``; the others get the scaling edits alone. Empty:
    every concept. Steering toward every other object is 376 trials a block where scaling is 40 (MiniCanvas, README
    "Every concept", item 22), and most objects are forgotten by scaling: this spends the grid where it is needed."""
    strengths: list[float] = field(default_factory=lambda: [3.0, 5.0, 7.0])
    """Steering strengths β of the grid, with anchors."""
    cond_multipliers: list[float] = field(default_factory=list)
    """Multipliers γ searched with the edit on the conditional CFG half only (``halves: cond``), beside the grid's
    edits of both halves: the guidance scale multiplies an edit there, so these are small (γ −0.1 … −1; README,
    "Every concept", item 13). Empty: every edit changes both halves, as the paper's."""
    cond_strengths: list[float] = field(default_factory=list)
    """Steering strengths β toward every anchor with the edit on the conditional CFG half only."""
    map_strengths: list[float] = field(default_factory=list)
    """A style's map edit (``saeuron.method.block_map``) at these β (1: the fitted map), toward the anchor its
    statistics' maps were gathered for (``gather.map_anchor``), on the conditional half of every patch of the images
    its gate finds: with a detecting gate ("image", "nearest", "cell"). Empty: no map edits."""
    contrast: str = "mean"
    """How latents are scored against the other concepts: "mean" of theirs (the paper) or "max" (a latent must fire
    more, for its share, for the concept than for every other one: MiniCanvas's styles need it, README)."""
    gate: list[str] = field(default_factory=lambda: [PAPER_GATE.kind])
    """The gates searched (``saeuron.method.selection.Gate``), each with every edit of the grid: a concept keeps the
    gate of the trial it chooses. "mean", the paper's (a latent's patch-averaged mean over all concepts: nearly
    wherever it is active, the kept concepts' patches included); "others" (above its mean + ``gate_sigmas`` standard
    deviations where it fires on the kept concepts' patches); "image" (the paper's, on the images that show the
    concept: ``saeuron.method.detection``), with ``gate_sigmas`` and ``gate_share`` or their own ("others:2",
    "image:1:0.05"); "nearest" (the same, the images found by the nearest concept mean of their SAE code, after
    2 steps or "nearest:WAIT"; "nearest:WAIT:KEEP" stores each concept's mean as its KEEP largest entries, for SAEs
    of SD's width); "cell" (the same with a mean per concept and value of the other label, "cell:WAIT:KEEP":
    statistics gathered with ``cell_means``). ``[mean, image]``: per concept, whichever serves it; ``[image:1:0.05, image:1:0.1]``:
    the image gate's detection chosen per concept (README, "Every concept", items 19-22)."""
    gate_sigmas: float = 1.0
    """z of the "others" gate and of the "image" gate's detection, where a ``gate`` entry gives none of its own."""
    gate_share: float = 0.1
    """The "image" gate's share of an image's patches, averaged over the steps so far, that makes it the concept's."""
    objective: str = "ua_ira"
    """What a trial is ranked by: "ua_ira" = (UA + IRA) / 2 (the reference), "ua_ira_cra" = (UA + IRA + CRA) / 3, or
    "ua_ira_cra_own" = (UA + mean(IRA, CRA, CRA-own)) / 2, which also scores a style's objects on its own images."""
    min_retain: float = 0.0
    """IRA and CRA a chosen (p, edit) keeps on the tuning prompts: a trial under it is chosen only when no trial
    reaches it, whatever its objective (an objective that averages can buy UA with IRA: README, item 11). ASHA's
    rungs before the last prompt demote a trial only when it is under the floor beyond sampling noise."""
    max_drift: float = 0.0
    """Ceiling on the kept images' drift: the mean absolute pixel change (images in [0, 1]) of the other concepts'
    tuning images from the original model's at the same prompt and seed (``saeuron.evaluation.drift``), which every
    trial measures. A trial over it is chosen only when no trial keeps it, as under ``min_retain``. On MiniCanvas 21 of
    the 22 evaluated style models whose kept images moved by at most 0.025 kept domain FID within 1.5× of the
    original's; a search with that ceiling chose one that did not (README, "Every concept", item 17). 0: none."""
    scheduler: str = "asha"
    """"grid" scores every (p, γ) on every prompt; "asha" stops poor ones early."""
    prompts_per_cell: int = 1
    """Tuning prompts per (style, object) cell; MiniCanvas: 88 per concept at 1."""
    forget_prompts_per_cell: int = 0
    """Per cell of the concept itself (UA and a style's own-style CRA are read there alone); 0: prompts_per_cell."""
    other_axis_prompts_per_cell: int = 0
    """Per unstyled cell of a style's search (its CRA is read there alone); 0: prompts_per_cell."""
    max_prompts: int = 0
    """Cap on tuning prompts per concept (every prefix is balanced); 0: all of them."""
    chunk: int = 8
    """Prompts generated between two reports (ASHA's unit of resource); at least as many as a trial needs to score
    UA, IRA and CRA (its first unstyled image comes 6th for a MiniCanvas style: checked before the search)."""
    grace_prompts: int = 8
    """ASHA: prompts every trial scores before it can be stopped (then rungs at grace × reduction_factor^k)."""
    reduction_factor: float = 4
    """ASHA: the fraction 1/reduction_factor of trials that go on at each rung."""
    tuning_seed: int = 0
    """Offset of the tuning prompts' seeds (from 10,000 up: never an evaluation seed)."""
    max_concurrent_trials: int = 0
    """0: as many as the cluster fits (each trial placed as resources.trial says)."""
    max_failures: int = 2
    """Retries of a trial whose worker died; it resumes from its last checkpoint."""
    name: str = "search"
    """Names the search's MLflow run and its folder <study_dir>/search/<name>."""
    register_as: str = ""
    """Register the chosen recipes under this MLflow model name (alias "current"); "{benchmark}" is replaced by
    the benchmark's name; empty: don't register."""


@dataclass
class SearchConfig(SearchOptions, WithResources, WithJudge, WithEdit, WithSampling, WithModel, WithTracking):
    style_statistics: str = ""
    """Statistics folder of the style hookpoint (jobs/gather.py --kind style)."""
    object_statistics: str = ""
    """Statistics folder of the object hookpoint (jobs/gather.py --kind object)."""
    candidate_statistics: list[str] = field(default_factory=list)
    """Statistics folders of further blocks (jobs/gather.py --kind K --hookpoint B): every concept of kind K is
    searched at B too, and keeps the block whose chosen (p, γ) scores best on the tuning prompts (a candidate
    must beat the kind's block). README, "Every concept": the block belongs to the concept, not its kind."""
    output_dir: str = ""
    """The search's folder or s3:// / gs:// prefix (Tune state, recipes, heat maps); empty: <study_dir>/search/<name>."""

    @property
    def benchmark(self) -> Benchmark:
        return get_benchmark(self.model.benchmark)

    @property
    def registered_name(self) -> str:
        return self.register_as.replace("{benchmark}", self.model.benchmark)

    @property
    def search_dir(self) -> Location:
        return Location.parse(self.output_dir) if self.output_dir else self.tracking.storage / "search" / self.name


Options = TypeVar("Options", bound=SearchOptions)


def for_kind(cfg: Options, kind: str) -> Options:
    """The search as it runs for concepts of ``kind``: a style's percentiles, multipliers, gates and objective where
    the ``style_*`` fields give them."""
    if kind != "style":
        return cfg
    return replace(
        cfg,
        percentiles=cfg.style_percentiles or cfg.percentiles,
        multipliers=cfg.style_multipliers or cfg.multipliers,
        gate=cfg.style_gate or cfg.gate,
        objective=cfg.style_objective or cfg.objective,
    )


def grid_of(cfg: SearchConfig, kind: str = "object") -> tuple[list[float], list[float]]:
    """The (percentiles, multipliers) searched for concepts of ``kind`` (and the search's contrast, objective, retain
    floor and error mode checked: the reference's error mode runs the paper's edit only)."""
    gates = gates_of(cfg, kind)
    cfg = for_kind(cfg, kind)
    check_contrast(cfg.contrast), check_objective(cfg.objective)
    one_half = cfg.cond_multipliers or cfg.cond_strengths or cfg.map_strengths
    if cfg.edit.error_mode == "reference" and (cfg.anchors or one_half):
        raise ValueError(
            "edit.error_mode 'reference' reproduces the paper's scaling edit of both CFG halves; search.anchors and "
            "search.cond_multipliers / cond_strengths / map_strengths search other edits: use error_mode 'correct' or "
            "drop them"
        )
    if cfg.map_strengths and not all(b > 0 for b in cfg.map_strengths):
        raise ValueError(f"search.map_strengths must be positive (1: the fitted map), got {cfg.map_strengths}")
    if cfg.map_strengths and not any(g.kind in DETECTING for g in gates):
        raise ValueError(
            f"search.map_strengths redraws whole images, which only a detecting gate confines to the concept's: add "
            f"one of {DETECTING} to search.gate (now {cfg.gate})"
        )
    if not 0.0 <= cfg.min_retain <= 1.0:
        raise ValueError(f"search.min_retain is an accuracy in [0, 1] (0: no floor), got {cfg.min_retain}")
    if not 0.0 <= cfg.max_drift < 1.0:
        raise ValueError(f"search.max_drift is a mean pixel change in [0, 1) (0: no ceiling), got {cfg.max_drift}")
    percentiles = cfg.percentiles or list(cfg.benchmark.search_percentiles)
    multipliers = cfg.multipliers or list(cfg.benchmark.search_multipliers)
    bad = [p for p in percentiles if not 0 < p < 100]
    if bad:
        raise ValueError(f"percentiles must be in (0, 100), got {bad}")
    if any(g >= 0 for g in multipliers):
        raise ValueError(f"multipliers must be negative (γ < 0 suppresses a concept), got {multipliers}")
    return [float(p) for p in percentiles], [float(g) for g in multipliers]


def check_anchors(cfg: SearchOptions, benchmark: Benchmark) -> None:
    """The steering anchors and the concepts they steer, checked where a study or a search starts. A concept of
    ``steer_concepts`` the search does not tune is left alone (a preset that steers three objects narrowed to one by
    ``--search.concepts``); one the benchmark does not have is a typo."""
    if ALL_ANCHORS in cfg.anchors and len(cfg.anchors) > 1:
        raise ValueError(
            f"search.anchors {cfg.anchors}: {ALL_ANCHORS!r} already steers toward every concept the statistics know; "
            f"give it alone or name the anchors"
        )
    if cfg.steer_concepts and not cfg.anchors:
        raise ValueError(
            f"search.steer_concepts {cfg.steer_concepts} names concepts to steer, and search.anchors is empty: add anchors"
        )
    unknown = sorted(set(cfg.steer_concepts) - {*benchmark.styles, *benchmark.objects})
    if unknown:
        raise ValueError(
            f"search.steer_concepts names {unknown}, which {benchmark.name} has no concept of: its styles are "
            f"{list(benchmark.styles)}, its objects {list(benchmark.objects)}"
        )


def gates_of(cfg: SearchOptions, kind: str = "object") -> list[Gate]:
    """The gates the search runs every edit of a ``kind`` concept under, checked: each named once, and
    ``gate_sigmas`` / ``gate_share`` refused where no gate searched, of either kind, uses them."""
    names, field_name = for_kind(cfg, kind).gate, "style_gate" if kind == "style" and cfg.style_gate else "gate"
    if not names or len(set(names)) < len(names):
        raise ValueError(f"search.{field_name} lists the gates searched, each once (e.g. [mean, image]), got {names}")
    gates = [Gate.parse(g, cfg.gate_sigmas, cfg.gate_share) for g in names]
    if len(set(gates)) < len(gates):
        raise ValueError(
            f"search.{field_name} {names} names one gate twice (with gate_sigmas {cfg.gate_sigmas:g}, gate_share "
            f"{cfg.gate_share:g})"
        )
    # A search-wide z or share that no gate takes (every gate the same without it) would be silently ignored.
    named = list(dict.fromkeys(cfg.gate + cfg.style_gate))
    every = [Gate.parse(g, cfg.gate_sigmas, cfg.gate_share) for g in named]
    if every == [Gate.parse(g, PAPER_GATE.sigmas, cfg.gate_share) for g in named] and cfg.gate_sigmas != PAPER_GATE.sigmas:
        raise ValueError(
            f"search.gate_sigmas {cfg.gate_sigmas:g} applies to the 'others' and 'image' gates named without a z, and "
            f"the search runs {named}: add one to search.gate, or drop gate_sigmas"
        )
    if every == [Gate.parse(g, cfg.gate_sigmas, PAPER_GATE.share) for g in named] and cfg.gate_share != PAPER_GATE.share:
        raise ValueError(
            f"search.gate_share {cfg.gate_share:g} applies to an 'image' gate named without a share, and the search "
            f"runs {named}: add image to search.gate, or drop gate_share"
        )
    return gates


def cell_kinds(cfg: SearchOptions) -> list[str]:
    """The kinds whose gates include the "cell" gate: their statistics must be gathered with ``cell_means``."""
    return [kind for kind in ("style", "object") if any(g.kind == "cell" for g in gates_of(cfg, kind))]


def edits_of(cfg: SearchConfig, kind: str, anchors: tuple[str, ...] = (), map_anchor: str = "") -> list[dict]:
    """The edits searched for a concept of ``kind`` whose statistics know ``anchors`` (itself excluded): every
    multiplier, then every (anchor, strength), then the same on the conditional CFG half only, then the map edit
    toward ``map_anchor`` at every map strength; under each gate of the kind (``gates_of``) in turn (an entry names its gate
    when it is not the paper's; map edits only under a detecting gate)."""
    _, multipliers = grid_of(cfg, kind)
    names, parsed = for_kind(cfg, kind).gate, gates_of(cfg, kind)  # checked by grid_of
    if any(g >= 0 for g in cfg.cond_multipliers):
        raise ValueError(f"cond_multipliers must be negative (γ < 0 suppresses a concept), got {cfg.cond_multipliers}")
    for name in ("strengths", "cond_strengths"):
        if anchors and not all(b > 0 for b in getattr(cfg, name)):
            raise ValueError(f"steering {name} must be positive (toward the anchor), got {getattr(cfg, name)}")
    cond = {"halves": "cond"}
    edits = (
        [{"multiplier": g} for g in multipliers]
        + [{"anchor": a, "strength": float(b)} for a in anchors for b in cfg.strengths]
        + [{"multiplier": float(g), **cond} for g in cfg.cond_multipliers]
        + [{"anchor": a, "strength": float(b), **cond} for a in anchors for b in cfg.cond_strengths]
    )
    maps = [{"anchor": map_anchor, "strength": float(b), "where": "all", "by": "map", **cond} for b in cfg.map_strengths]
    gates = [{} if name == PAPER_GATE.kind else {"gate": name} for name in names]
    detecting = [g for g, gate in zip(gates, parsed) if gate.kind in DETECTING]
    return [{**edit, **gate} for gate in gates for edit in edits] + [
        {**edit, **gate} for gate in detecting for edit in (maps if map_anchor else [])
    ]
