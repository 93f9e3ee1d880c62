"""One SAE training step and its bookkeeping, in plain torch.

This is the single implementation of the training step; the Ray Train job wraps it and the
benchmarks time it. Follows the reference loop: geometric-median ``b_dec`` on the first batch,
unit-norm decoder rows with the parallel gradient removed, AuxK over latents that have not
fired for ``dead_feature_threshold`` vectors, gradient clipping at 1.0, Adam with linear decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saeuron.sae.geometric_median import geometric_median
from saeuron.sae.model import Sae


@dataclass
class SaeTrainConfig:
    lr: float = 4e-4
    """Adam learning rate (the paper's value)."""
    lr_schedule: str = "linear"
    """"linear" (decay to 0 over the run, as in the paper) or "constant"."""
    lr_warmup_steps: int = 0
    """Steps of linear warm-up from 0 to lr."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss; 0 disables it."""
    dead_feature_threshold: int = 10_000_000
    """A latent is dead once it has not fired for this many vectors."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this (the reference: 1.0)."""
    adam_eps: float = 6.25e-10
    """Adam's epsilon (the reference's value)."""
    auxk_reference: bool = False
    """Reproduce the reference's AuxK (residual not detached, wrong sign, includes b_dec)."""
    learn_threshold: bool = True
    """For BatchTopK: learn the inference threshold (EMA of the smallest kept activation)."""
    threshold_beta: float = 0.99
    """EMA decay of the learned threshold."""
    b_dec_init: str = "geometric_median"
    """Decoder bias before the first step: "geometric_median" of the first batch (the reference) or "zero" (sparsify)."""
    mixed_precision: str = "auto"
    """Forward pass under autocast: "bf16", "none", or "auto" (bf16 on a GPU that has it, none elsewhere).
    Parameters, gradients and Adam's state stay in the SAE's dtype either way. (No fp16: without loss scaling
    its small gradients underflow, and bf16 needs none.)"""
    kernels: str = "auto"
    """"sparse" (gathers: fastest on a CPU), "dense" (bf16 matrix products: fastest on a GPU) or "auto"."""

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("linear", "constant"):
            raise ValueError(f"lr_schedule must be 'linear' or 'constant', got {self.lr_schedule!r}")
        choices = {"b_dec_init": B_DEC_INITS, "mixed_precision": (*AUTOCAST_DTYPES, "none", "auto"), "kernels": KERNELS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        if self.mixed_precision == "auto":
            gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if gpu_bf16 else None
        return AUTOCAST_DTYPES.get(self.mixed_precision)

    def dense_kernels(self, device: torch.device) -> bool:
        return self.kernels == "dense" or (self.kernels == "auto" and device.type != "cpu")


B_DEC_INITS = ("geometric_median", "zero")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}
KERNELS = ("sparse", "dense", "auto")


class StepMetrics(NamedTuple):
    loss: float
    fvu: float
    explained_variance: float
    auxk_loss: float
    multi_topk_fvu: float
    l0: float
    dead_fraction: float
    lr: float


class StepResult(NamedTuple):
    """One step's figures as tensors on the SAE's device: reading them waits for the device, so a
    training loop reads them (:meth:`metrics`) only when it logs."""

    loss: Tensor
    fvu: Tensor
    auxk_loss: Tensor
    multi_topk_fvu: Tensor
    l0: Tensor
    dead_fraction: Tensor
    lr: float

    def metrics(self) -> StepMetrics:
        fvu = self.fvu.item()
        return StepMetrics(
            loss=self.loss.item(),
            fvu=fvu,
            explained_variance=1.0 - fvu,
            auxk_loss=self.auxk_loss.item(),
            multi_topk_fvu=self.multi_topk_fvu.item(),
            l0=self.l0.item(),
            dead_fraction=self.dead_fraction.item(),
            lr=self.lr,
        )


def _lr_factor(cfg: SaeTrainConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.lr_warmup_steps:
            return (step + 1) / cfg.lr_warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        decay_steps = max(total_steps - cfg.lr_warmup_steps, 1)
        return max(0.0, 1.0 - (step - cfg.lr_warmup_steps) / decay_steps)

    return factor


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class SaeTrainer:
    """Trains ``sae``; with ``forward_module`` (a DDP wrapper of ``sae``) the forward pass goes
    through it so gradients are averaged across workers, and the few pieces of state that each
    worker computes from its own batch (initial ``b_dec``, fired latents, threshold) are
    reduced so that every worker holds the same SAE."""

    def __init__(self, sae: Sae, cfg: SaeTrainConfig, total_steps: int, forward_module: torch.nn.Module | None = None):
        self.sae = sae
        sae.loaded_fingerprint = None  # training changes the weights read from disk
        self.forward_module = forward_module or sae
        self.cfg = cfg
        self.total_steps = total_steps
        params = list(sae.parameters())
        try:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        except (RuntimeError, TypeError):  # fused Adam is not available for every device/dtype
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg, total_steps))
        self.step_count = 0
        self.autocast_dtype = cfg.autocast_dtype(sae.device)
        self.dense = cfg.dense_kernels(sae.device)
        self.vectors_since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=sae.device)

    @property
    def dead_mask(self) -> Tensor:
        return self.vectors_since_fired > self.cfg.dead_feature_threshold

    def step(self, x: Tensor) -> StepResult:
        sae, cfg = self.sae, self.cfg
        x = x.reshape(-1, sae.d_in).to(device=sae.device, dtype=sae.dtype)
        if self.step_count == 0:
            if cfg.b_dec_init == "geometric_median":
                sae.b_dec.data = geometric_median(x).to(sae.dtype)
            if _distributed():
                torch.distributed.broadcast(sae.b_dec.data, src=0)
            if sae.cfg.normalize_decoder:
                sae.set_decoder_norm_to_unit_norm()
        dead = self.dead_mask
        with torch.autocast(
            sae.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        ):
            out = self.forward_module(
                x, dead_mask=dead if cfg.auxk_alpha > 0 else None, auxk_reference=cfg.auxk_reference, dense=self.dense
            )
            loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()

        fired = out.code.fired(sae.num_latents)
        seen = x.shape[0]
        if _distributed():
            fired_any = fired.to(torch.int32)
            torch.distributed.all_reduce(fired_any, op=torch.distributed.ReduceOp.MAX)
            fired = fired_any.bool()
            seen *= torch.distributed.get_world_size()
        self.vectors_since_fired += seen
        self.vectors_since_fired.masked_fill_(fired, 0)

        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        if sae.cfg.normalize_decoder:
            sae.remove_gradient_parallel_to_decoder_directions()
        lr = float(self.scheduler.get_last_lr()[0])  # a float: the optimizer's lr is never a tensor here
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if sae.cfg.normalize_decoder:
            # Adam's update is not orthogonal to the rows even after the projection.
            sae.set_decoder_norm_to_unit_norm()

        if sae.cfg.batch_topk and cfg.learn_threshold:
            self._update_threshold(out.code.values.detach())
        self.step_count += 1
        return StepResult(
            loss=loss.detach(),
            fvu=out.fvu.detach(),
            auxk_loss=out.auxk_loss.detach(),
            multi_topk_fvu=out.multi_topk_fvu.detach(),
            l0=out.code.l0(),
            dead_fraction=dead.float().mean(),
            lr=lr,
        )

    def _update_threshold(self, kept: Tensor) -> None:
        smallest = torch.where(kept > 0, kept, float("inf")).min() if kept.numel() else kept.new_tensor(float("inf"))
        if _distributed():
            smallest = smallest.clone()
            torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
        if not torch.isfinite(smallest):
            return
        value = float(smallest)
        current = self.sae.cfg.threshold
        beta = self.cfg.threshold_beta
        self.sae.cfg.threshold = value if current is None else beta * current + (1 - beta) * value

    # ------------------------------------------------------------------ resumable state
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step_count": self.step_count,
            "vectors_since_fired": self.vectors_since_fired.clone(),
            "threshold": self.sae.cfg.threshold,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step_count"])
        self.vectors_since_fired = state["vectors_since_fired"].to(self.vectors_since_fired.device)
        self.sae.cfg.threshold = state["threshold"]
