"""The sparse autoencoder: ReLU encoder with TopK / BatchTopK sparsity and a linear decoder.

Call shapes follow the published SAeUron / EleutherAI SAE so that code written against the
published checkpoints runs unchanged: ``encode(x)`` returns ``(top_acts, top_indices)`` and
``decode(top_acts, top_indices)`` the reconstruction.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from saeuron.atomic_files import save_tensors_and_json
from saeuron.sae.config import SaeConfig
from saeuron.sae.sparse import SparseCode, _code, batch_topk_indices, decode, decode_dense, decode_fixed_width

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


class EncoderOutput(NamedTuple):
    top_acts: Tensor
    """[..., w] activations of the kept latents (zeros pad threshold-mode rows)."""
    top_indices: Tensor
    """[..., w] their latent indices."""


class ForwardOutput(NamedTuple):
    sae_out: Tensor
    """[N, d] reconstruction."""
    code: SparseCode
    """The selected latents (training selection: TopK or BatchTopK)."""
    fvu: Tensor
    """Fraction of variance unexplained: Σ‖x̂ − x‖² / Σ‖x − mean(x)‖²."""
    auxk_loss: Tensor
    """Dead latents' reconstruction of the residual, normalised like the FVU (0 if none dead)."""
    multi_topk_fvu: Tensor
    """FVU of the 4k reconstruction (0 unless ``multi_topk``)."""


class _Standardisation(NamedTuple):
    mean: Tensor
    std: Tensor


class Sae(nn.Module):
    def __init__(self, d_in: int, cfg: SaeConfig, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.cfg = cfg
        self.d_in = d_in
        num_latents = cfg.latents_for(d_in)
        self.encoder = nn.Linear(d_in, num_latents, device=device, dtype=dtype)
        self.encoder.bias.data.zero_()
        # Tied-transpose initialisation, as in the reference.
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device, dtype=dtype))
        if cfg.normalize_decoder:
            self.set_decoder_norm_to_unit_norm()
        # With a learned threshold a vector may keep more than k latents; cap the width of
        # ``encode``'s fixed-size output at this many.
        self.threshold_max_active = 4 * cfg.k
        # None: use the learned threshold when there is one, else per-vector TopK.
        self.inference: str | None = None
        # Fingerprint of the weights as read from disk, before any cast (see fingerprint()).
        self.loaded_fingerprint: str | None = None

    def fingerprint(self) -> str:
        """A short hash of the weights and shapes that ties statistics and recipes to this SAE.

        The weights are hashed in fp16, and an SAE read from disk keeps the hash of its stored weights, so
        the same SAE loaded in fp32, fp16 or bf16 has one fingerprint (bf16 rounds differently from fp16).
        """
        return self.loaded_fingerprint or weights_fingerprint(self.state_dict())

    # ------------------------------------------------------------------ properties
    @property
    def num_latents(self) -> int:
        return self.encoder.out_features

    @property
    def device(self) -> torch.device:
        return self.encoder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.weight.dtype

    @property
    def inference_mode(self) -> str:
        if self.inference is not None:
            return self.inference
        return "threshold" if self.cfg.threshold is not None else "topk"

    # ------------------------------------------------------------------ maths
    def _standardise(self, x: Tensor) -> tuple[Tensor, _Standardisation | None]:
        if not self.cfg.input_unit_norm:
            return x, None
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True) + 1e-5
        return (x - mean) / std, _Standardisation(mean, std)

    @staticmethod
    def _destandardise(x: Tensor, stats: _Standardisation | None) -> Tensor:
        return x if stats is None else x * stats.std + stats.mean

    def pre_acts(self, x: Tensor) -> Tensor:
        """ReLU(W_enc (x − b_dec) + b_enc), dense [N, F]; ``x`` is already standardised."""
        return F.relu(self.encoder(x.to(self.dtype) - self.b_dec))

    def encode(self, x: Tensor) -> EncoderOutput:
        """Inference-mode sparse code of [..., d] vectors.

        ``inference == "topk"``: the top k latents per vector (how the published SAEs are used).
        ``inference == "threshold"``: latents above the learned BatchTopK threshold, which is
        what the SAE saw in BatchTopK training; at most ``threshold_max_active`` per vector.
        """
        lead = x.shape[:-1]
        flat, _ = self._standardise(x.reshape(-1, self.d_in).to(self.dtype))
        pre = self.pre_acts(flat)
        if self.inference_mode == "threshold":
            if self.cfg.threshold is None:
                raise ValueError("inference='threshold' needs an SAE trained with a learned threshold")
            acts, indices = pre.topk(min(self.threshold_max_active, self.num_latents), dim=-1, sorted=False)
            acts = acts * (acts > self.cfg.threshold).to(acts.dtype)
        else:
            acts, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return EncoderOutput(acts.reshape(*lead, -1), indices.reshape(*lead, -1))

    def decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """Σ_j a_j W_dec[i_j] + b_dec for [..., w] codes (in standardised space when
        ``input_unit_norm``; :meth:`reconstruct` undoes that)."""
        lead = top_acts.shape[:-1]
        width = top_acts.shape[-1]
        out = decode_fixed_width(top_acts.reshape(-1, width), top_indices.reshape(-1, width), self.W_dec)
        return (out + self.b_dec).reshape(*lead, self.d_in)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Inference reconstruction of [..., d] vectors in the input's space."""
        flat = x.reshape(-1, self.d_in).to(self.dtype)
        _, stats = self._standardise(flat)
        code = self.encode(flat)
        return self._destandardise(self.decode(*code), stats).reshape(x.shape)

    def forward(
        self, x: Tensor, dead_mask: Tensor | None = None, *, auxk_reference: bool = False, dense: bool = False
    ) -> ForwardOutput:
        """Training forward of [N, d] (or [..., d]) vectors with the training selection.

        ``dead_mask`` [F] marks latents that have not fired for a while; AuxK makes the top
        ``d/2`` of them reconstruct the residual. ``auxk_reference=True`` reproduces the
        reference instead: the residual is not detached, the dead latents fit x̂ − x (not
        x − x̂) and their reconstruction includes ``b_dec``. ``dense=True`` computes the same
        loss with dense products instead of the sparse kernels (faster on a GPU, see
        :mod:`saeuron.sae.sparse`).
        """
        target = x.reshape(-1, self.d_in).to(self.dtype)
        normed, stats = self._standardise(target)
        xc = normed - self.b_dec
        select = batch_topk_indices if self.cfg.batch_topk else _topk_indices
        if dense:
            pre = F.relu(F.linear(xc, self.encoder.weight, self.encoder.bias))
            selected = pre.detach()

            def code_of(indices: tuple[Tensor, Tensor]) -> SparseCode:
                return SparseCode(*indices, pre[indices], xc.shape[0])

            decoded = decode_dense
        else:
            with torch.no_grad():
                pre = selected = F.relu(F.linear(xc, self.encoder.weight, self.encoder.bias))

            def code_of(indices: tuple[Tensor, Tensor]) -> SparseCode:
                return _code(xc, self.encoder.weight, self.encoder.bias, pre, *indices)

            decoded = decode
        code = code_of(select(selected, self.cfg.k))
        recon = decoded(code, self.W_dec) + self.b_dec
        sae_out = self._destandardise(recon, stats)

        total_variance = (target - target.mean(0)).pow(2).sum()
        error = sae_out - target
        fvu = error.pow(2).sum() / total_variance

        auxk_loss = fvu.new_zeros(())
        if dead_mask is not None and (num_dead := int(dead_mask.sum())) > 0:
            # The top d/2 dead latents, the loss scaled down while fewer than d/2 are dead (OpenAI's AuxK).
            half = max(self.d_in // 2, 1)
            k_aux, scale = min(half, num_dead), min(num_dead / half, 1.0)
            with torch.no_grad():
                aux_indices = select(selected.masked_fill(~dead_mask, float("-inf")), k_aux)
            aux_recon = decoded(code_of(aux_indices), self.W_dec)
            if auxk_reference:
                aux_target = recon - normed
                aux_recon = aux_recon + self.b_dec
            else:
                aux_target = (normed - recon).detach()
            auxk_loss = scale * (aux_recon - aux_target).pow(2).sum() / total_variance

        multi_topk_fvu = fvu.new_zeros(())
        if self.cfg.multi_topk:
            wide = code_of(_topk_indices(selected, 4 * self.cfg.k))
            wide_out = self._destandardise(decoded(wide, self.W_dec) + self.b_dec, stats)
            multi_topk_fvu = (wide_out - target).pow(2).sum() / total_variance

        return ForwardOutput(sae_out, code, fvu, auxk_loss, multi_topk_fvu)

    # ------------------------------------------------------------------ decoder geometry
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        norm = torch.linalg.vector_norm(self.W_dec.data, dim=1, keepdim=True)
        self.W_dec.data /= norm + torch.finfo(self.W_dec.dtype).eps

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Per decoder row r: g_r ← g_r − (g_r·w_r) w_r, so a step cannot change row norms
        to first order."""
        if self.W_dec.grad is None:
            return
        parallel = torch.einsum("fd,fd->f", self.W_dec.grad, self.W_dec.data)
        self.W_dec.grad -= parallel[:, None] * self.W_dec.data

    # ------------------------------------------------------------------ checkpoint format
    def save_to_disk(self, path: str | os.PathLike) -> None:
        """Write ``cfg.json`` + ``sae.safetensors`` (the published layout); each file is
        written to a temporary name first so an interrupted save never leaves half a file."""
        save_tensors_and_json(path, WEIGHTS_FILE, self.state_dict(), CONFIG_FILE, self.cfg.to_json_dict(self.d_in))

    @classmethod
    def load_from_disk(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        inference: str | None = None,
    ) -> Sae:
        """Load one hookpoint folder. ``inference`` is "topk" or "threshold"; by default the
        learned threshold is used when the checkpoint has one."""
        folder = Path(path)
        cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for required in (cfg_path, weights_path):
            if not required.is_file():
                raise FileNotFoundError(
                    f"{required} is missing: an SAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                    f"(for a folder of several hookpoints use load_many)"
                )
        cfg, d_in = SaeConfig.from_json_dict(json.loads(cfg_path.read_text()), source=str(cfg_path))
        tensors = load_file(str(weights_path), device=str(device))
        num_latents = cfg.latents_for(d_in)
        expected = {
            "encoder.weight": (num_latents, d_in),
            "encoder.bias": (num_latents,),
            "W_dec": (num_latents, d_in),
            "b_dec": (d_in,),
        }
        for name, shape in expected.items():
            if name not in tensors:
                raise ValueError(f"{weights_path} lacks tensor '{name}' (has {sorted(tensors)})")
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"{weights_path}: '{name}' has shape {tuple(tensors[name].shape)}, cfg.json implies {shape}")
        with torch.device("meta"):
            sae = cls(d_in, cfg)
        sae.load_state_dict({name: tensors[name] for name in expected}, strict=True, assign=True)
        sae.loaded_fingerprint = weights_fingerprint({name: tensors[name] for name in expected})
        if dtype is not None:
            sae = sae.to(dtype)
        if inference is not None:
            if inference not in ("topk", "threshold"):
                raise ValueError(f"inference must be 'topk' or 'threshold', got {inference!r}")
            if inference == "threshold" and cfg.threshold is None:
                raise ValueError(f"{cfg_path} has no learned threshold; use inference='topk'")
            sae.inference = inference
        return sae

    @classmethod
    def load_many(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        hookpoints: list[str] | None = None,
        inference: str | None = None,
    ) -> dict[str, Sae]:
        """Load every ``<hookpoint>/`` SAE folder under ``path`` (or only ``hookpoints``)."""
        root = Path(path)
        available = sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()) if root.is_dir() else []
        if not available:
            hint = " (it is itself one SAE folder: use Sae.load_from_disk)" if (root / CONFIG_FILE).is_file() else ""
            raise FileNotFoundError(f"no <hookpoint>/{CONFIG_FILE} folders under {root}{hint}")
        wanted = hookpoints if hookpoints is not None else available
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise FileNotFoundError(f"no SAE for hookpoints {missing} under {root}; available: {available}")
        return {name: cls.load_from_disk(root / name, device, dtype, inference) for name in wanted}


def weights_fingerprint(state: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _topk_indices(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        latents = pre.topk(k, dim=-1, sorted=False).indices.reshape(-1)
        rows = torch.arange(pre.shape[0], device=pre.device).repeat_interleave(k)
    return rows, latents
