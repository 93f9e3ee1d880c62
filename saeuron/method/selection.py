"""Feature selection: which SAE latents to scale down for a concept, at each timestep.

Per timestep t, with μ_c [F] the mean patch-averaged activation of concept c:

- importance: score_f = p_c,f − p_¬c,f, where p = μ / Σ_f μ is normalised to a distribution and
  p_¬c that of the mean of the other concepts' means (``contrast="mean"``, the paper and the reference);
  ``contrast="max"`` takes the largest of the other concepts' p_c',f instead, so a latent scores only
  as far as it fires (for its share) more for the concept than for **every** other one. With "mean", a
  latent common to all concepts but a little larger in one is selected: on MiniCanvas's styles those
  latents carry the image itself (the shape, the unstyled rendering), and scaling them down wrecked the
  retained styles and the unstyled images (README, "Every concept");
- selection: latents with score above the p-th percentile of the scores (``torch.quantile``, linear
  interpolation, strict ">", as the reference);
- rule for a selected latent: scale factor s_f = γ·μ_c,f and mask threshold m_f = mean over all
  concepts of μ_c',f (target included): the paper's gate, ``Gate("mean")``. μ is a patch average with the zeros of
  the patches where the latent is silent, so m_f is far below what the latent gives where it fires at all, and the
  edit acts on every patch where a selected latent is active — on the kept concepts' patches too, which is where
  MiniCanvas's FID excess comes from (README, "Every concept", item 17). ``Gate("others", z)`` raises m_f to the
  largest, over the concepts the recipe keeps, of the latent's mean + z standard deviations where it fires on their
  patches (never below the paper's m_f): the edit then acts where the latent fires more than it does on the kept
  concepts.

Several concepts at once: m_f does not depend on the concept (either gate: "others" reads the concepts the
recipe keeps, the same for all it forgets), so rules for one latent differ only in s_f. We keep **one rule
per (timestep, latent)**, the strongest (the most negative s_f, i.e. the largest suppression); ties go to the
concept listed first. The reference concatenates the rules and scatters with duplicate indices, which is
nondeterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from saeuron.method.statistics import ConceptStatistics

CONTRASTS = ("mean", "max")
GATES = ("mean", "others", "image", "nearest", "cell")
GATE_NUMBERS = {
    "mean": (),
    "others": ("sigmas",),
    "image": ("sigmas", "share"),
    "nearest": ("wait", "keep"),
    "cell": ("wait", "keep"),
}
"""The numbers each gate takes, in the order a spec gives them ("image:1:0.05", "nearest:2", "nearest:2:256")."""
WHOLE_NUMBERS = ("wait", "keep")
NEAREST = ("nearest", "cell")
"""The gates that find an image by the nearest mean code: a concept's, or a (concept, other label) cell's."""
DETECTING = ("image", *NEAREST)
"""The gates that edit only the images their detector finds showing the concept (``saeuron.method.detection``)."""


class Gate(NamedTuple):
    """Where a selected latent counts as firing for its concept (module docstring)."""

    kind: str = "mean"
    """"mean": the paper's, the latent's patch-averaged mean over all concepts; "others": above what it gives where it
    fires on the concepts the recipe keeps; "image": the paper's on the images that show the concept, none elsewhere
    (an image shows it once the share of its patches past the "others" threshold, averaged over the steps so far,
    reaches ``share``); "nearest": the same, an image showing it once its SAE code, summed over the steps so far, is
    nearer the concept's mean than every kept concept's (``saeuron.method.detection``); "cell": the same with the
    means per concept and value of the other label (a style's rendering of each object: statistics gathered with
    ``cell_means``), an image showing the concept once one of its cells is the nearest."""
    sigmas: float = 1.0
    """With "others" and "image": z, the threshold is the kept concepts' firing mean + z standard deviations."""
    share: float = 0.1
    """With "image": the share of an image's patches, averaged over the steps so far, that makes it the concept's."""
    wait: int = 2
    """With "nearest" and "cell": the steps that pass before the detector decides (on the first, from noise, it takes a
    neighbour's images for the concept's: README, "Every concept", item 20)."""
    keep: int = 0
    """With "nearest" and "cell": the entries of every concept's mean code (per step) the recipe keeps, the largest; the rest count
    as 0 (``saeuron.method.detection``). 0 keeps them all. The means are [concepts, steps, latents]: at SD v1.5's
    20,480 latents, 50 styles and 100 steps 0.4 GB, at 256 kept 10 MB (README, "Every concept", item 21)."""

    @classmethod
    def parse(cls, spec: str, sigmas: float = 1.0, share: float = 0.1) -> Gate:
        """A gate from "mean", "others[:Z]", "image[:Z[:SHARE]]" or "nearest[:WAIT[:KEEP]]", the numbers not given from
        ``sigmas`` and ``share`` (where the gate uses them), checked."""
        kind, *numbers = spec.split(":")
        names = GATE_NUMBERS.get(kind, ())
        if len(numbers) > len(names):
            raise ValueError(
                f"gate {spec!r}: 'mean', 'others:Z', 'image:Z:SHARE', 'nearest:WAIT:KEEP' or 'cell:WAIT:KEEP' (the numbers optional)"
            )
        try:
            given: dict[str, Any] = {n: int(v) if n in WHOLE_NUMBERS else float(v) for n, v in zip(names, numbers)}
        except ValueError:
            raise ValueError(
                f"gate {spec!r}: z and share are numbers, wait and keep whole numbers of steps and latents "
                f"('image:1:0.05', 'nearest:2:256')"
            ) from None
        numbers_of: dict[str, Any] = {"sigmas": sigmas, "share": share} | given
        return cls(kind, **{n: numbers_of[n] for n in names if n in numbers_of}).check()

    def record(self) -> dict:
        """The gate as a recipe records it: the numbers it takes (a recipe of another gate reads as it did before
        "nearest" existed, and one keeping every mean entry as before ``keep``, byte for byte, so the images keyed on
        it stay valid)."""
        unused = set() if self.kind in NEAREST else {"wait", "keep"}
        if not self.keep:
            unused.add("keep")
        return {k: v for k, v in self._asdict().items() if k not in unused}

    def check(self) -> Gate:
        if self.kind not in GATES:
            raise ValueError(
                f"gate must be one of {GATES} (the paper's all-concept mean, above the kept concepts' firing, or the "
                f"paper's on the images that show the concept, found by their firing, by the nearest concept mean or by "
                f"the nearest (concept, other label) mean), "
                f"got {self.kind!r}"
            )
        if not self.sigmas >= 0:
            raise ValueError(
                f"gate_sigmas is how many standard deviations above the kept concepts' firing mean (>= 0), got {self.sigmas}"
            )
        if self.kind in ("mean", *NEAREST) and self.sigmas != Gate().sigmas:
            raise ValueError(
                f"gate_sigmas {self.sigmas:g} applies to the 'others' and 'image' gates only: set the gate, or drop it"
            )
        if not 0 < self.share <= 1:
            raise ValueError(f"gate_share is a share of an image's patches in (0, 1], got {self.share}")
        if self.kind != "image" and self.share != Gate().share:
            raise ValueError(f"gate_share {self.share:g} applies to the 'image' gate only: add gate: image, or drop it")
        if not (isinstance(self.wait, int) and self.wait >= 0):
            raise ValueError(f"the {self.kind!r} gate's wait is a whole number of steps (>= 0), got {self.wait!r}")
        if self.kind not in NEAREST and self.wait != Gate().wait:
            raise ValueError(
                f"wait {self.wait} applies to the 'nearest' and 'cell' gates only: use gate 'nearest:{self.wait}', or drop it"
            )
        if not (isinstance(self.keep, int) and self.keep >= 0):
            raise ValueError(f"the {self.kind!r} gate's keep is a number of latents (>= 0; 0 keeps every one), got {self.keep!r}")
        if self.kind not in NEAREST and self.keep != Gate().keep:
            raise ValueError(
                f"keep {self.keep} applies to the 'nearest' and 'cell' gates only: use gate 'nearest:2:{self.keep}', or drop it"
            )
        return self


PAPER_GATE = Gate()
"""The paper's gate (a module-level value: a default argument must not be a call)."""


def gate_thresholds(stats: ConceptStatistics, kept: list[int], gate: Gate = PAPER_GATE) -> torch.Tensor:
    """[T, F] mask thresholds of a concept whose recipe keeps the concepts ``kept`` (statistics indices): the edit's
    (the "image" gate edits at the paper's, on the images :func:`detection_thresholds` finds)."""
    means = stats.means()
    paper = means.mean(0)  # [T, F]: over all concepts, target included
    if gate.check().kind != "others" or not kept:
        return paper
    firing_mean, spread = stats.firing_moments()
    bar = (firing_mean[kept] + gate.sigmas * spread[kept]).amax(0)
    return torch.maximum(paper, bar)


def detection_thresholds(stats: ConceptStatistics, kept: list[int], gate: Gate) -> torch.Tensor:
    """[T, F] thresholds by which the "image" gate tells an image that shows the concept: the "others" gate's."""
    return gate_thresholds(stats, kept, Gate("others", gate.sigmas))


def check_contrast(contrast: str) -> str:
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS} (the others' mean, as the paper, or their max), got {contrast!r}")
    return contrast


def importance_scores(means: torch.Tensor, target: int, contrast: str = "mean", eps: float = 1e-8) -> torch.Tensor:
    """[C, F] means at one timestep → [F] scores of concept ``target``."""
    if means.shape[0] == 1:
        return means[0]
    mine = means[target] / (means[target].sum() + eps)
    others = torch.cat([means[:target], means[target + 1 :]])
    if check_contrast(contrast) == "max":
        return mine - (others / (others.sum(1, keepdim=True) + eps)).max(0).values
    others = others.mean(0)
    return mine - others / (others.sum() + eps)


def selected_latents(scores: torch.Tensor, percentile: float) -> torch.Tensor:
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    threshold = torch.quantile(scores.double(), percentile / 100)
    return torch.nonzero(scores.double() > threshold).flatten()


@dataclass
class Rules:
    """Rules of one or more concepts: parallel [R] tensors, one entry per (timestep, latent)."""

    timestep_index: torch.Tensor
    latent: torch.Tensor
    scale: torch.Tensor
    threshold: torch.Tensor
    concept_index: torch.Tensor

    @classmethod
    def empty(cls) -> Rules:
        """No rules: an edit with them changes no latent."""

        def none(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(0, dtype=dtype)

        return cls(none(torch.long), none(torch.long), none(torch.float32), none(torch.float32), none(torch.long))

    def __len__(self) -> int:
        return len(self.latent)


def kept_concepts(stats: ConceptStatistics, params: dict) -> list[int]:
    """Statistics indices of the concepts a recipe forgetting ``params``' concepts keeps."""
    unknown = [c for c in params if c not in stats.concepts]
    if unknown:
        raise ValueError(f"unknown concepts {unknown}; the statistics know {stats.concepts}")
    return [i for i, c in enumerate(stats.concepts) if c not in params]


def nearest_means(
    stats: ConceptStatistics, params: dict, keep: int = 0, cells: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the "nearest" gate detects by: [C, T, F] every concept's mean code, ``params``' concepts first, in their
    order; with ``keep`` below F, [C, T, keep] of each one's largest entries and their latents. With ``cells`` (the
    "cell" gate), [C, K, T, F] (or [C, K, T, keep]) per value of the other label, NaN where no prompt had it."""
    order = [stats.concepts.index(c) for c in params] + kept_concepts(stats, params)
    means = (stats.cell_means() if cells else stats.means())[order].float()
    if 0 < keep < means.shape[-1]:
        values, latents = means.topk(keep, -1)
        return values, latents
    return means, None


def build_rules(
    stats: ConceptStatistics, params: dict[str, tuple[float, Any]], contrast: str = "mean", gate: Gate = PAPER_GATE
) -> Rules:
    """Rules for the concepts in ``params`` ({concept: (percentile, multiplier)}), deduplicated. A concept whose edit
    is not a multiplier (a steered one, :mod:`saeuron.method.steering`) gets no rule; ``concept_index`` still counts it,
    so it indexes ``params``."""
    check_contrast(contrast)
    thresholds = gate_thresholds(stats, kept_concepts(stats, params), gate)  # [T, F]
    means = stats.means()  # [C, T, F]
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for order, (concept, (percentile, multiplier)) in enumerate(params.items()):
        if not isinstance(multiplier, (int, float)):
            continue
        c = stats.concepts.index(concept)
        for t in range(len(stats.timesteps)):
            for f in selected_latents(importance_scores(means[:, t], c, contrast), percentile).tolist():
                scale = float(multiplier * means[c, t, f])
                key = (t, f)
                if key not in best or scale < best[key][0]:
                    best[key] = (scale, order)
    keys = sorted(best)
    return Rules(
        timestep_index=torch.tensor([t for t, _ in keys], dtype=torch.long),
        latent=torch.tensor([f for _, f in keys], dtype=torch.long),
        scale=torch.tensor([best[k][0] for k in keys], dtype=torch.float32),
        threshold=torch.tensor([float(thresholds[t, f]) for t, f in keys], dtype=torch.float32),
        concept_index=torch.tensor([best[k][1] for k in keys], dtype=torch.long),
    )
