"""The "image" gate's detector: which images of a generation show a forgotten concept (``saeuron.method.selection.Gate``).

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
"""

from __future__ import annotations

import torch
from torch import Tensor


class ImageDetector:
    def __init__(self, detect: Tensor, share: float):
        self.detect = detect
        """[T, F] detection thresholds at the recipe's timesteps (+inf at latents it does not select)."""
        self.share = share
        self._tables: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
        self._sum: Tensor | None = None
        self._steps = 0
        self._detected: Tensor | None = None
        self._last_timestep: int | None = None

    def __call__(self, acts: Tensor, indices: Tensor, rows: int, num_uncond: int, timestep: int, index: int) -> Tensor:
        """[rows] bool: the rows (both CFG halves of an image alike) of images that show the concept, after this call.

        ``acts``, ``indices`` [rows·P, k]: the SAE code of the call's patches; ``index``: the recipe timestep
        ``timestep`` maps to."""
        key = (index, acts.device, acts.dtype)
        if key not in self._tables:
            self._tables[key] = self.detect[index].to(acts.device, acts.dtype)
        passing = (acts.detach() > self._tables[key][indices]).any(-1).reshape(rows, -1).float().mean(1)  # [rows]
        per_image = passing[num_uncond:]
        images = per_image.shape[0]
        new_generation = self._last_timestep is None or timestep > self._last_timestep
        if new_generation or self._sum is None or self._sum.shape[0] != images or self._sum.device != per_image.device:
            self._sum, self._steps = torch.zeros_like(per_image), 0
            self._detected = torch.zeros(images, dtype=torch.bool, device=per_image.device)
        assert self._detected is not None
        self._last_timestep = timestep
        self._sum += per_image
        self._steps += 1
        self._detected |= self._sum / self._steps >= self.share
        if rows == images:
            return self._detected.clone()  # the state changes in place at the next call
        if rows != 2 * images:
            raise ValueError(
                f"the image gate reads a batch as its unconditional rows then as many conditional ones; got {rows} rows with {num_uncond} unconditional"
            )
        return self._detected.repeat(2)

    @property
    def detected(self) -> Tensor | None:
        """[images] bool of the current generation (None before the first call)."""
        return self._detected
