"""Per-concept, per-timestep mean SAE activations: the statistics feature selection reads.

For each concept (a style or an object) and each denoising timestep, the sum over prompts of the
patch-averaged SAE latents and the number of prompts. Stored as ``statistics.safetensors``
(``sums`` [C, T, F], ``counts`` [C, T], ``timesteps`` [T]) plus ``statistics.json`` (concept names,
hookpoint, SAE reference and fingerprint) — a few MB where the reference wrote 4–6.5 GB pickles.

Beside the means, how each latent fires on a concept's patches: ``fires`` (sum over prompts of the fraction of patches
where it is active) and ``squares`` (of the patch-averaged squared activation), from which its mean and spread *where it
fires* follow (:meth:`ConceptStatistics.firing_moments`). The paper's gate is a latent's patch-averaged mean, zeros
included — far below what it gives on a patch where it fires at all — so the edit acts wherever a selected latent is
active, other concepts' patches included; the firing moments let the gate sit above what the other concepts give
(``saeuron.method.selection.gate_thresholds``). Statistics gathered before they existed load without them.

With ``cells`` (gathered with ``cell_means``), the same sums per concept *and* value of the prompts' other label (a
style's object, an object's style): ``cell_sums`` [C, K, T, F], ``cell_counts`` [C, K, T]. A concept's mean code blurs
its renderings of different objects; the "cell" gate tells an image by the nearest of these finer means (README,
"Every concept", item 22).

With ``maps`` (gathered with ``map_anchor``), each concept's per-step affine map of the block's output toward the
anchor caption's (``map_weights`` [C, T, d+1, d], ``map_unexplained`` [C, T]): what a map edit applies; with
companion blocks, theirs as ``map_weights@<block>`` and ``map_unexplained@<block>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file

from saeuron.atomic_files import save_tensors_and_json
from saeuron.method.block_map import BlockMaps
from saeuron.sae import Sae

TENSORS = "statistics.safetensors"
INDEX = "statistics.json"


def sae_fingerprint(sae: Sae) -> str:
    """The SAE's :meth:`~saeuron.sae.Sae.fingerprint`: the same in every dtype it is loaded in."""
    return sae.fingerprint()


class PatchMoments(NamedTuple):
    """[B, F] per image, over its patches: the mean latent (zeros included, as the reference averages its densified
    codes), the fraction of patches where the latent is active, and the mean squared latent."""

    mean: torch.Tensor
    fires: torch.Tensor
    squares: torch.Tensor


@torch.no_grad()
def patch_moments(sae: Sae, tokens: torch.Tensor) -> PatchMoments:
    """[B, P, d] block output → the inference-mode SAE latents' :class:`PatchMoments` over the P patches."""
    batch, patches, _ = tokens.shape
    acts, indices = sae.encode(tokens.reshape(-1, tokens.shape[-1]))
    acts = acts.float()

    def patch_mean(values: torch.Tensor) -> torch.Tensor:
        dense = torch.zeros(batch * patches, sae.num_latents, dtype=torch.float32, device=acts.device)
        return dense.scatter_add_(1, indices, values).reshape(batch, patches, -1).mean(1)

    return PatchMoments(patch_mean(acts), patch_mean((acts > 0).float()), patch_mean(acts.square()))


def patch_mean_latents(sae: Sae, tokens: torch.Tensor) -> torch.Tensor:
    """[B, P, d] block output → [B, F] mean over patches of the inference-mode SAE latents, zeros included."""
    return patch_moments(sae, tokens).mean


@dataclass
class ConceptStatistics:
    hookpoint: str
    concepts: list[str]
    timesteps: list[int]
    """Scheduler timesteps, in sampling order (noisiest first)."""
    sums: torch.Tensor
    """[C, T, F] float64 sums over prompts of patch-mean latents."""
    counts: torch.Tensor
    """[C, T] prompts summed."""
    sae_ref: str
    sae_fingerprint: str
    kind: str = "concept"
    """"style" or "object": which label of the prompts the concepts are."""
    sae_inference: str = ""
    """The SAE's inference mode the latents were computed in ("topk" or "threshold"; "" if not recorded)."""
    prompt_seeds: list[int] = field(default_factory=list)
    """The seed of every prompt summed, in prompt order (empty if not recorded)."""
    fires: torch.Tensor | None = None
    """[C, T, F] sums over prompts of the fraction of patches where the latent is active (None: gathered before)."""
    squares: torch.Tensor | None = None
    """[C, T, F] sums over prompts of the patch-averaged squared latent (None: gathered before)."""
    cells: list[str] = field(default_factory=list)
    """The values of the prompts' other label ("none" for unstyled) whose sums are kept per concept; empty: not kept."""
    cell_sums: torch.Tensor | None = None
    """[C, K, T, F] the sums of ``sums`` per concept and value of ``cells``."""
    cell_counts: torch.Tensor | None = None
    """[C, K, T] the prompts summed per concept and value of ``cells`` (0: no prompt of that pair)."""
    maps: BlockMaps | None = None
    """Each concept's affine map of the block's output toward an anchor's (gathered with ``map_anchor``;
    :mod:`saeuron.method.block_map`); None: not gathered."""

    @classmethod
    def empty(
        cls,
        hookpoint: str,
        concepts: list[str],
        timesteps: list[int],
        num_latents: int,
        sae_ref: str,
        fingerprint: str,
        kind: str,
        sae_inference: str = "",
        prompt_seeds: list[int] | None = None,
        cells: list[str] | None = None,
    ):
        c, t, k = len(concepts), len(timesteps), len(cells or [])
        return cls(
            hookpoint,
            list(concepts),
            list(timesteps),
            torch.zeros(c, t, num_latents, dtype=torch.float64),
            torch.zeros(c, t, dtype=torch.long),
            sae_ref,
            fingerprint,
            kind,
            sae_inference,
            list(prompt_seeds or []),
            torch.zeros(c, t, num_latents, dtype=torch.float64),
            torch.zeros(c, t, num_latents, dtype=torch.float64),
            list(cells or []),
            torch.zeros(c, k, t, num_latents, dtype=torch.float64) if k else None,
            torch.zeros(c, k, t, dtype=torch.long) if k else None,
        )

    @property
    def num_latents(self) -> int:
        return self.sums.shape[-1]

    def means(self) -> torch.Tensor:
        """[C, T, F] mean patch-averaged activation per concept and timestep."""
        return (self.sums / self.counts.clamp_min(1)[..., None]).float()

    def cell_means(self) -> torch.Tensor:
        """[C, K, T, F] the mean patch-averaged activation per concept, value of the other label and timestep; NaN
        where no prompt had that pair."""
        if self.cell_sums is None or self.cell_counts is None:
            raise ValueError(
                "these statistics hold each concept's means only, not per value of the prompts' other label: gather "
                "them with cell_means: true (the 'cell' gate needs them)"
            )
        means = self.cell_sums / self.cell_counts.clamp_min(1)[..., None]
        return means.masked_fill((self.cell_counts == 0)[..., None], float("nan")).float()

    def firing_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[C, T, F] mean and standard deviation of each latent's activation over the patches where it fires (0 where
        it never fired), pooled over the concept's prompts."""
        if self.fires is None or self.squares is None:
            raise ValueError(
                "these statistics hold only the latents' means, not how they fire on patches (gathered before "
                "saeuron recorded it): run jobs/gather.py again, or use the paper's gate (gate: mean)"
            )
        fires = self.fires.clamp_min(1e-12)
        mean = self.sums / fires
        spread = (self.squares / fires - mean.square()).clamp_min(0).sqrt()
        return mean.float(), spread.float()

    def add(
        self,
        concept: str,
        timestep: int,
        latent_sum: torch.Tensor,
        count: int,
        fires: torch.Tensor | None = None,
        squares: torch.Tensor | None = None,
        cell: str | None = None,
    ) -> None:
        """Adds ``count`` prompts' sums; ``cell``, their other label, where the statistics keep ``cells``."""
        c, t = self.concepts.index(concept), self.timesteps.index(timestep)
        self.sums[c, t] += latent_sum.to(torch.float64).cpu()
        self.counts[c, t] += count
        if self.cell_sums is not None and self.cell_counts is not None:
            if cell not in self.cells:
                raise ValueError(f"statistics kept per {self.cells}: got prompts of {cell!r}")
            k = self.cells.index(cell)
            self.cell_sums[c, k, t] += latent_sum.to(torch.float64).cpu()
            self.cell_counts[c, k, t] += count
        for total, part in ((self.fires, fires), (self.squares, squares)):
            if total is not None and part is not None:
                total[c, t] += part.to(torch.float64).cpu()

    def save(self, folder: str | Path) -> Path:
        tensors = {"sums": self.sums, "counts": self.counts, "timesteps": torch.tensor(self.timesteps, dtype=torch.long)}
        if self.fires is not None and self.squares is not None:
            tensors.update(fires=self.fires, squares=self.squares)
        if self.cell_sums is not None and self.cell_counts is not None:
            tensors.update(cell_sums=self.cell_sums, cell_counts=self.cell_counts)
        if self.maps is not None:
            tensors.update(map_weights=self.maps.weights, map_unexplained=self.maps.unexplained)
            for block, (weights, unexplained) in self.maps.companions.items():
                tensors.update({f"map_weights@{block}": weights, f"map_unexplained@{block}": unexplained})
        index = {
            "hookpoint": self.hookpoint,
            "concepts": self.concepts,
            "kind": self.kind,
            "timesteps": self.timesteps,
            "num_latents": self.num_latents,
            "sae_ref": self.sae_ref,
            "sae_fingerprint": self.sae_fingerprint,
            "sae_inference": self.sae_inference,
            "prompt_seeds": self.prompt_seeds,
            "firing_moments": self.fires is not None and self.squares is not None,
            **({"cells": self.cells} if self.cells else {}),
            **(
                {"map": {"anchor": self.maps.anchor, **self.maps.record, **_companions(self.maps)}}
                if self.maps is not None
                else {}
            ),
        }
        return save_tensors_and_json(folder, TENSORS, tensors, INDEX, index)

    @classmethod
    def load(cls, folder: str | Path) -> ConceptStatistics:
        if "://" in str(folder):  # in a bucket: read this node's mirror of it
            from saeuron.storage.inputs import local_input

            folder = local_input(folder, "the folder")
        folder = Path(str(folder))  # a path, or a local Location
        if not (folder / INDEX).is_file():
            raise FileNotFoundError(f"{folder} holds no {INDEX}: run jobs/gather.py first")
        index = json.loads((folder / INDEX).read_text())
        tensors = load_file(str(folder / TENSORS))
        return cls(
            index["hookpoint"],
            index["concepts"],
            index["timesteps"],
            tensors["sums"],
            tensors["counts"],
            index["sae_ref"],
            index["sae_fingerprint"],
            index.get("kind", "concept"),
            index.get("sae_inference", ""),
            index.get("prompt_seeds", []),
            tensors.get("fires"),
            tensors.get("squares"),
            index.get("cells", []),
            tensors.get("cell_sums"),
            tensors.get("cell_counts"),
            _maps(index, tensors),
        )


def _maps(index: dict, tensors: dict[str, torch.Tensor]) -> BlockMaps | None:
    if "map" not in index:
        return None
    record = dict(index["map"])
    companions = {b: (tensors[f"map_weights@{b}"], tensors[f"map_unexplained@{b}"]) for b in record.pop("companions", [])}
    return BlockMaps(record.pop("anchor"), tensors["map_weights"], tensors["map_unexplained"], record, companions)


def _companions(maps: BlockMaps) -> dict:
    # Statistics of the block alone read as they did before companions existed.
    return {"companions": list(maps.companions)} if maps.companions else {}
