"""The detectors of the "image" and "nearest" gates: which images of a generation show a forgotten concept
(``saeuron.method.selection.Gate``).

The paper's gate passes a selected latent wherever it is active, on the kept concepts' patches too (README, "Every
concept", items 17-18); a stricter per-patch threshold spares them but also most of the concept's own patches. Over a
whole generation, though, the share of an image's patches past the strict threshold tells the concept's images from
every kept concept's on MiniCanvas (item 18). So the edit runs at the paper's threshold on the images that show the
concept, and not at all on the others: at each call of the hooked block, the share of each image's patches (its
conditional CFG row, the prompt's) where a selected latent fires above its detection threshold is added up; an image
shows the concept once the mean share over the generation's steps so far reaches the gate's ``share``, and keeps
showing it for the rest of the generation — the edit removes what the detector sees, so an image being edited would
otherwise stop being edited. A call whose timestep is above the previous one, or with another batch, starts a new
generation.

The "nearest" gate's detector reads the whole SAE code instead of the recipe's latents: an image's code averaged over
its patches is compared with every concept's mean at that timestep (the statistics' own means), the squared
distances summed over the generation's steps so far, and the image shows a forgotten concept once that concept's
mean is the nearest. The selected latents carry a style late: on MiniCanvas's Diagonal_Stripes, 18 of 40 images
reach share 0.1 only at steps 7-11 of 20, when steering can no longer redraw them; the nearest mean finds 97.8 % of
the ten styles' images by step 2, and a tenth as many of the kept concepts' (README, "Every concept", item 20). Its
first decisions, on the noisiest steps, take a few of the neighbours' images for the concept's, so it decides from
step ``wait`` on. The "cell" gate's is the same detector over finer means, one per concept and value of the prompts'
other label: a style's mean blurs its renderings of eight objects, and Neon_Glow's rings sit nearer Thick_Outline's
mean than their own for 15 of 20 steps, but nearest Neon_Glow's rings from step 2 (README, "Every concept", item 22).
"""

from __future__ import annotations

import torch
from torch import Tensor


class _GenerationDetector:
    """Per image of the current generation: the evidence added up over its steps so far, and whether it shows the
    concept (sticky: the edit removes what the detector sees, so an image being edited would otherwise stop being
    edited). A call whose timestep is above the previous one, or with another batch, starts a new generation."""

    def __init__(self) -> None:
        self._sum: Tensor | None = None
        self._steps = 0
        self._detected: Tensor | None = None
        self._last_timestep: int | None = None

    def evidence(self, acts: Tensor, indices: Tensor, rows: int, num_uncond: int, index: int) -> Tensor:
        """[images, ...] this call's evidence per image (its conditional row)."""
        raise NotImplementedError

    def decide(self, total: Tensor, steps: int) -> Tensor:
        """[images] bool: the images the evidence ``total`` over ``steps`` steps shows the concept in."""
        raise NotImplementedError

    def __call__(self, acts: Tensor, indices: Tensor, rows: int, num_uncond: int, timestep: int, index: int) -> Tensor:
        """[rows] bool: the rows (both CFG halves of an image alike) of images that show the concept, after this call.

        ``acts``, ``indices`` [rows·P, k]: the SAE code of the call's patches; ``index``: the recipe timestep
        ``timestep`` maps to."""
        evidence = self.evidence(acts.detach(), indices, rows, num_uncond, index)
        images = evidence.shape[0]
        new_generation = self._last_timestep is None or timestep > self._last_timestep
        if new_generation or self._sum is None or self._sum.shape != evidence.shape or self._sum.device != evidence.device:
            self._sum, self._steps = torch.zeros_like(evidence), 0
            self._detected = torch.zeros(images, dtype=torch.bool, device=evidence.device)
        assert self._detected is not None
        self._last_timestep = timestep
        self._sum += evidence
        self._steps += 1
        self._detected |= self.decide(self._sum, self._steps)
        if rows == images:
            return self._detected.clone()  # the state changes in place at the next call
        if rows != 2 * images:
            raise ValueError(
                f"the image gate reads a batch as its unconditional rows then as many conditional ones; got {rows} rows with {num_uncond} unconditional"
            )
        return self._detected.repeat(2)

    def found(self, timestep: int, images: int) -> Tensor | None:
        """[images] bool: what the detector has decided so far of the generation a call at ``timestep`` with
        ``images`` images belongs to (another block's call, before or after the detecting block's); None when that call
        starts a generation the detector has not seen yet, or has another batch."""
        if self._detected is None or self._last_timestep is None or timestep > self._last_timestep:
            return None
        return self._detected if self._detected.shape[0] == images else None

    @property
    def detected(self) -> Tensor | None:
        """[images] bool of the current generation (None before the first call)."""
        return self._detected


class ImageDetector(_GenerationDetector):
    """The "image" gate's: the mean share over the steps so far of an image's patches where a selected latent fires
    above its detection threshold reaches ``share``."""

    def __init__(self, detect: Tensor, share: float):
        super().__init__()
        self.detect = detect
        """[T, F] detection thresholds at the recipe's timesteps (+inf at latents it does not select)."""
        self.share = share
        self._tables: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def evidence(self, acts: Tensor, indices: Tensor, rows: int, num_uncond: int, index: int) -> Tensor:
        key = (index, acts.device, acts.dtype)
        if key not in self._tables:
            self._tables[key] = self.detect[index].to(acts.device, acts.dtype)
        passing = (acts > self._tables[key][indices]).any(-1).reshape(rows, -1).float().mean(1)  # [rows]
        return passing[num_uncond:]

    def decide(self, total: Tensor, steps: int) -> Tensor:
        return total / steps >= self.share


class NearestDetector(_GenerationDetector):
    """The "nearest" and "cell" gates': after ``wait`` steps, the concept mean nearest an image's patch-averaged code
    (squared distances summed over the steps so far) is one of the ``forgotten`` first ones of ``centroids``.

    Cell means, [C, K, T, ...], count as C·K means, the ``forgotten`` first concepts' cells forgotten; a cell no
    statistics prompt had (NaN) is left out."""

    def __init__(self, centroids: Tensor, forgotten: int, wait: int, latents: Tensor | None = None, num_latents: int = 0):
        super().__init__()
        if centroids.dim() == 4:
            cells = centroids.shape[1]
            present = ~centroids.flatten(2).isnan().all(-1).flatten()
            forgotten = int(present[: forgotten * cells].sum())
            centroids = centroids.flatten(0, 1)[present]
            latents = None if latents is None else latents.flatten(0, 1)[present]
        self.centroids = centroids
        """[C, T, F] every concept's mean patch-averaged code at the recipe's timesteps, the forgotten ones first; or,
        with ``latents``, [C, T, n] its n largest entries (the others count as 0), at ``latents`` [C, T, n] of the
        SAE's ``num_latents``."""
        if latents is not None and (
            latents.shape != centroids.shape or (latents.numel() > 0 and num_latents <= int(latents.max()))
        ):
            raise ValueError(
                f"compact concept means need their latents' indices, shaped as the means {tuple(centroids.shape)} and "
                f"below the SAE's number of latents; got {tuple(latents.shape)}, {num_latents} latents"
            )
        self.latents, self.num_latents = latents, num_latents
        self.forgotten = forgotten
        self.wait = wait
        self._tables: dict[tuple[int, torch.device], Tensor] = {}

    def _means(self, index: int, device: torch.device) -> Tensor:
        """[C, F] the concept means at recipe timestep ``index``. Compact means are made whole for the current step
        only: all steps at once are what ``keep`` avoids holding."""
        key = (index, device)
        if key not in self._tables:
            means = self.centroids[:, index].to(device, torch.float32)
            if self.latents is not None:
                self._tables.clear()
                whole = torch.zeros(means.shape[0], self.num_latents, device=device)
                means = whole.scatter_(1, self.latents[:, index].to(device), means)
            self._tables[key] = means
        return self._tables[key]

    def evidence(self, acts: Tensor, indices: Tensor, rows: int, num_uncond: int, index: int) -> Tensor:
        means = self._means(index, acts.device)
        patches = acts.shape[0] // rows
        cond = slice(num_uncond * patches, None)
        # The code's patch average, [images, F], by index_add: a dense [patches, F] copy would not fit at SD's sizes.
        image = torch.arange(rows - num_uncond, device=acts.device).repeat_interleave(patches)[:, None]
        flat = (image * means.shape[-1] + indices[cond]).reshape(-1)
        code = torch.zeros((rows - num_uncond) * means.shape[-1], device=acts.device)
        code = code.index_add_(0, flat, acts[cond].float().reshape(-1)).reshape(rows - num_uncond, -1) / patches
        return torch.cdist(code, means).square()  # [images, C]

    def decide(self, total: Tensor, steps: int) -> Tensor:
        if steps <= self.wait:
            return torch.zeros(total.shape[0], dtype=torch.bool, device=total.device)
        return total.argmin(-1) < self.forgotten
