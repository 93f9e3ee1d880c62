"""An unlearning recipe: which latents of which SAE to edit, how, at which timestep.

Saved as ``recipe.json`` (SAE reference and fingerprint, hookpoint, base model, concepts with their edit, timesteps)
and ``recipe.safetensors`` (the rules as parallel tensors). A concept's edit is the paper's, its latents scaled by a
multiplier γ (``{"percentile": p, "multiplier": γ}``), or steering toward an anchor concept
(``{"percentile": p, "anchor": a, "strength": β, "where": w}``, with ``"by": "map"`` by the concept's fitted map of
the block's output; :mod:`saeuron.method.steering`, whose tensors are stored as ``steer_*``). ``halves`` says which classifier-free-guidance half the edit changes: "both", as the reference
does, or "cond", the conditional half only; ``gate`` where a latent counts as firing (absent: the paper's).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from saeuron.atomic_files import save_tensors_and_json
from saeuron.method.selection import (
    DETECTING,
    NEAREST,
    PAPER_GATE,
    Gate,
    Rules,
    build_rules,
    detection_thresholds,
    kept_concepts,
    nearest_means,
)
from saeuron.method.statistics import ConceptStatistics
from saeuron.method.steering import Steer, Steering, build_steering

JSON = "recipe.json"
TENSORS = "recipe.safetensors"
HALVES = ("both", "cond")
"""Which CFG half a recipe edits. The reference edits both alike; then what the edit moves in both halves cancels in
the guidance term (cond − uncond), which the guidance scale multiplies, and the edit acts only on the unguided part.
On MiniCanvas a style's selected latents fire in the unconditional half too (the image being denoised is in the
style); on one half the same latents forget at about a tenth of the multiplier in a sweep, and the search forgets
Pastel_Blur and Thick_Outline with them, which no edit of both halves did cleanly (README, "Every concept", item
13)."""


def check_halves(halves: str) -> str:
    if halves not in HALVES:
        raise ValueError(f"halves must be one of {HALVES} (which CFG half the edit changes), got {halves!r}")
    return halves


@dataclass
class Recipe:
    hookpoint: str
    sae_ref: str
    sae_fingerprint: str
    base_model: str
    concepts: dict[str, dict]
    """{concept: {"percentile": p, "multiplier": γ} or {"percentile": p, "anchor": a, "strength": β, "where": w}} in the
    order given."""
    timesteps: list[int]
    rules: Rules
    sae_inference: str = ""
    """The SAE inference mode its statistics were gathered in; the edit runs the SAE in it ("" if not recorded)."""
    contrast: str = "mean"
    """How its latents were scored against the other concepts (``saeuron.method.selection``; older recipes: "mean")."""
    steering: Steering = field(default_factory=Steering.empty)
    """Where its steered concepts fire and their anchor differences (empty: every concept is scaled)."""
    halves: str = "both"
    """The CFG half its edits change (:data:`HALVES`; older recipes: "both")."""
    gate: Gate = PAPER_GATE
    """Where its latents count as firing (``saeuron.method.selection.Gate``; older recipes: the paper's)."""
    detect: torch.Tensor | None = None
    """What the edit tells an image that shows a forgotten concept by: with the "image" gate, [T, F] thresholds at its
    selected latents (+inf elsewhere); with "nearest", [C, T, F] every statistics concept's mean code, the recipe's
    concepts first, in its order ([C, T, keep] of its largest entries with the gate's ``keep``); with "cell", [C, K, T,
    F] the same per value of the other label (NaN for a pair no statistics prompt had); None with the other gates."""
    detect_index: torch.Tensor | None = None
    """With "nearest" or "cell" and ``keep``: the latents of ``detect``'s entries, shaped as it."""

    def __post_init__(self) -> None:
        check_halves(self.halves)
        if self.gate.check().kind in DETECTING and self.detect is None and len(self.selection()):
            raise ValueError(
                f"a recipe with the {self.gate.kind!r} gate needs what it detects images by: build it with Recipe.from_statistics"
            )
        if self.detect_index is not None and (self.detect is None or self.detect_index.shape != self.detect.shape):
            raise ValueError("a recipe's compact concept means need one latent index per entry: detect_index shaped as detect")
        mapped = [list(self.concepts)[i] for i, steer in self.steers() if steer.by == "map"]
        if mapped and self.halves != "cond":
            raise ValueError(
                f"{mapped}: a map edit was fitted on the conditional CFG half and edits that half only: halves 'cond'"
            )
        if mapped and self.steering.maps is None:
            raise ValueError(f"{mapped} steer by a map the recipe does not hold: build it with Recipe.from_statistics")
        if mapped and self.steering.companions and self.gate.kind not in DETECTING:
            raise ValueError(
                f"{mapped}: maps at the blocks {list(self.steering.companions)} move the images the gate finds; the "
                f"{self.gate.kind!r} gate finds none: use a detecting gate ('cell', 'nearest' or 'image')"
            )

    @classmethod
    def from_statistics(
        cls,
        stats: ConceptStatistics,
        params: dict[str, tuple[float, float | Steer]],
        base_model: str,
        contrast: str = "mean",
        halves: str = "both",
        gate: Gate = PAPER_GATE,
    ) -> Recipe:
        """``params``: {concept: (percentile, edit)}, the edit a multiplier γ or a :class:`Steer`."""
        rules, steering = build_rules(stats, params, contrast, gate), build_steering(stats, params, contrast, gate)
        detect = detect_index = None
        if gate.kind == "image":  # the detection reads the recipe's own latents only, scaled or steered
            strict = detection_thresholds(stats, kept_concepts(stats, params), gate)
            steps, latents = (
                torch.cat([rules.timestep_index, steering.timestep_index]),
                torch.cat([rules.latent, steering.latent]),
            )
            detect = torch.full_like(strict, float("inf"))
            detect[steps, latents] = strict[steps, latents]
        elif gate.kind in NEAREST:
            detect, detect_index = nearest_means(stats, params, gate.keep, cells=gate.kind == "cell")
        return cls(
            stats.hookpoint,
            stats.sae_ref,
            stats.sae_fingerprint,
            base_model,
            {c: edit_entry(p, e) for c, (p, e) in params.items()},
            list(stats.timesteps),
            rules,
            stats.sae_inference,
            contrast,
            steering,
            halves,
            gate,
            detect,
            detect_index,
        )

    def edit_of(self, concept: str) -> float | Steer:
        """The concept's edit: its multiplier γ, or its :class:`Steer`."""
        return edit_from_entry(self.concepts[concept])

    def steers(self) -> list[tuple[int, Steer]]:
        """(index among the recipe's concepts, Steer) of its steered concepts."""
        edits = [(i, self.edit_of(c)) for i, c in enumerate(self.concepts)]
        return [(i, e) for i, e in edits if isinstance(e, Steer)]

    def selection(self) -> Rules:
        """Every selected (timestep, latent) of every concept, scaled or steered (a steered one with scale 1: it
        scales nothing): what the recipe's latents are, for those who read them (the atlas)."""
        if not self.steers():
            return self.rules
        r, s = self.rules, self.steering
        return Rules(
            torch.cat([r.timestep_index, s.timestep_index]),
            torch.cat([r.latent, s.latent]),
            torch.cat([r.scale, torch.ones(len(s))]),
            torch.cat([r.threshold, s.threshold]),
            torch.cat([r.concept_index, s.concept_index]),
        )

    def timestep_index(self, timestep: int) -> int:
        """Rules are looked up by the actual scheduler timestep; a timestep the statistics do not
        cover maps to the nearest one they do (so any number of sampling steps works)."""
        return nearest_timestep(self.timesteps, timestep)

    def rules_at(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = self.rules.timestep_index == self.timestep_index(timestep)
        return self.rules.latent[mask], self.rules.scale[mask], self.rules.threshold[mask]

    def save(self, folder: str | os.PathLike[str]) -> Path:
        r = self.rules
        tensors = {
            "timestep_index": r.timestep_index,
            "latent": r.latent,
            "scale": r.scale,
            "threshold": r.threshold,
            "concept_index": r.concept_index,
        }
        if self.steers():
            tensors.update(self.steering.tensors())
        if self.detect is not None:
            tensors["detect_threshold"] = self.detect
        if self.detect_index is not None:
            tensors["detect_index"] = self.detect_index
        meta = {
            "hookpoint": self.hookpoint,
            "sae_ref": self.sae_ref,
            "sae_fingerprint": self.sae_fingerprint,
            "base_model": self.base_model,
            "concepts": self.concepts,
            "timesteps": self.timesteps,
            "num_rules": len(r),
            "sae_inference": self.sae_inference,
            "contrast": self.contrast,
            # Absent for both halves: a recipe of the paper's edit stays byte for byte what it was before the setting
            # (images and atlas pages are keyed on recipe.json, so a rebuilt recipe reuses them).
            **({"halves": self.halves} if self.halves != "both" else {}),
            **({"gate": self.gate.record()} if self.gate != PAPER_GATE else {}),
        }
        return save_tensors_and_json(folder, TENSORS, tensors, JSON, meta)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Recipe:
        if "://" in str(folder):  # in a bucket: read this node's mirror of it
            from saeuron.storage.inputs import local_input

            folder = local_input(folder, "the folder")
        folder = Path(str(folder))  # a path, or a local Location
        if not (folder / JSON).is_file():
            raise FileNotFoundError(f"{folder} holds no {JSON}: not an unlearning recipe")
        meta = json.loads((folder / JSON).read_text())
        t = load_file(str(folder / TENSORS))
        rules = Rules(t["timestep_index"], t["latent"], t["scale"], t["threshold"], t["concept_index"])
        return cls(
            meta["hookpoint"],
            meta["sae_ref"],
            meta["sae_fingerprint"],
            meta["base_model"],
            meta["concepts"],
            meta["timesteps"],
            rules,
            meta.get("sae_inference", ""),
            meta.get("contrast", "mean"),
            Steering.from_tensors(t),
            meta.get("halves", "both"),
            Gate(**meta.get("gate", {})),
            t.get("detect_threshold"),
            t.get("detect_index"),
        )


def nearest_timestep(timesteps: list[int], timestep: int) -> int:
    """The index of the timestep of ``timesteps`` nearest ``timestep`` (the first on ties)."""
    distances = [abs(t - timestep) for t in timesteps]
    return distances.index(min(distances))


def edit_entry(percentile: float, edit: float | Steer) -> dict:
    """A concept's entry in ``recipe.json``."""
    if isinstance(edit, Steer):
        by = {} if edit.by == "mean" else {"by": edit.by}  # absent: a steering recipe stays what it was
        return {
            "percentile": float(percentile),
            "anchor": edit.anchor,
            "strength": float(edit.strength),
            "where": edit.where,
            **by,
        }
    return {"percentile": float(percentile), "multiplier": float(edit)}


def edit_from_entry(entry: dict) -> float | Steer:
    """The edit an entry names (a recipe's concept entry, a search trial's edit): ``multiplier``, or ``anchor`` +
    ``strength`` (+ ``where``, ``by``)."""
    if "anchor" in entry:
        return Steer(entry["anchor"], float(entry["strength"]), entry.get("where", "fires"), entry.get("by", "mean"))
    return float(entry["multiplier"])


def halves_from_entry(entry: dict) -> str:
    """The CFG half a search trial's edit changes ("both" unless it says otherwise)."""
    return check_halves(entry.get("halves", "both"))


def gate_from_entry(entry: dict, sigmas: float = PAPER_GATE.sigmas, share: float = PAPER_GATE.share) -> Gate:
    """The gate a search trial's edit runs under: the paper's unless the entry names another ("image",
    "image:1:0.05": ``Gate.parse``), the search's z and share where the name gives none."""
    return Gate.parse(entry.get("gate", PAPER_GATE.kind), sigmas, share)


def entry_label(entry: dict) -> str:
    """A search trial's edit entry as :func:`edit_label` names it."""
    return edit_label(edit_from_entry(entry), halves_from_entry(entry), entry.get("gate", PAPER_GATE.kind))


def edit_label(edit: float | Steer, halves: str = "both", gate: str = PAPER_GATE.kind) -> str:
    """Short: "γ -2", "→none β5", on the conditional half only "γ -0.25 cond", and under a gate other than the
    paper's "γ -1 cond image" or "→none β6 image:1:0.05" (heat maps, logs, tables)."""
    if isinstance(edit, Steer):
        label = f"→{edit.anchor} β{edit.strength:g}" + ("" if edit.where == "fires" else f" {edit.where}")
        label += "" if edit.by == "mean" else f" {edit.by}"
    else:
        label = f"γ {edit:g}"
    return label + ("" if halves == "both" else f" {halves}") + ("" if gate == PAPER_GATE.kind else f" {gate}")


def resolve_recipe_folders(refs: list[str], tracking_uri: str | None = None) -> list[str]:
    """Recipe folders from references: a recipe folder, a folder of recipe folders (a search's
    ``recipes/``), ``runs:/<run id>/recipes`` or ``models:/NAME@alias`` (recipes a search registered)."""
    from saeuron.cluster.registry import download_artifacts, is_artifact_uri

    folders: list[str] = []
    for ref in refs:
        if is_artifact_uri(ref):
            local = download_artifacts(str(ref), tracking_uri, prefix="saeuron-recipes-")
        elif "://" in str(ref):  # recipes in a bucket: this node's mirror of them
            from saeuron.storage.inputs import local_input

            local = local_input(ref, "the recipes")
        else:
            local = Path(ref).expanduser()
        if (local / JSON).is_file():
            folders.append(str(local))
            continue
        inner = sorted(p.parent for p in local.glob(f"*/{JSON}"))
        if not inner:
            raise FileNotFoundError(f"{ref} holds no recipe ({JSON}) and no folders of recipes: not an unlearning recipe")
        folders.extend(str(p) for p in inner)
    return folders
