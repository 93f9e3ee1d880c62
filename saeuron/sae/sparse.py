"""Sparse codes and the kernels that use them without building dense [tokens, latents] matrices.

A :class:`SparseCode` lists the selected (row, latent, value) triples sorted by row. Per-vector
TopK gives exactly k per row; BatchTopK gives a variable number per row. Both decode through
``embedding_bag``, and both backpropagate into the encoder through :class:`_SelectedPreacts`,
whose backward touches only the selected entries: the dense pre-activations are needed for the
selection, but their gradient never is.

That is the fastest path on a CPU. On a GPU the gathers and scatters of the sparse kernels cost more
than dense bf16 matrix products of the same shapes (the tensor cores do the [N, F] × [F, d] product of
the paper's shape in about 0.3 ms on an H200), so :func:`decode_dense` and a dense encoder backward
(plain autograd) are the GPU path; ``benchmarks/sae_step.py`` measures both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCode(NamedTuple):
    rows: Tensor
    """[M] int64, sorted ascending: which input vector each entry belongs to."""
    latents: Tensor
    """[M] int64: latent index of each entry."""
    values: Tensor
    """[M]: activation of each entry (differentiable when produced by ``_code``)."""
    num_rows: int

    def row_offsets(self) -> Tensor:
        counts = torch.bincount(self.rows, minlength=self.num_rows)
        return torch.cumsum(counts, 0) - counts

    def l0(self) -> Tensor:
        """Mean number of active latents per row, as a 0-d tensor (reading it waits for the device)."""
        return (self.values > 0).sum() / max(self.num_rows, 1)

    def fired(self, num_latents: int) -> Tensor:
        """[F] bool: which latents were active in at least one row (no host sync, unlike a boolean index)."""
        active = (self.values > 0).to(torch.int32)
        return (
            torch.zeros(num_latents, dtype=torch.int32, device=active.device)
            .scatter_reduce(0, self.latents, active, "amax")
            .bool()
        )


def _offsets(sorted_keys: Tensor, num_bags: int) -> Tensor:
    counts = torch.bincount(sorted_keys, minlength=num_bags)
    return torch.cumsum(counts, 0) - counts


class _SelectedPreacts(torch.autograd.Function):
    """values = ReLU(xc @ W.T + b)[rows, latents], with a backward that is sparse in latents."""

    @staticmethod
    def forward(ctx, xc, weight, bias, preacts, rows, latents):
        values = preacts[rows, latents]
        ctx.save_for_backward(xc, weight, rows, latents, values)
        ctx.num_rows = xc.shape[0]
        ctx.num_latents = weight.shape[0]
        return values

    @staticmethod
    def backward(ctx, grad_values):
        xc, weight, rows, latents, values = ctx.saved_tensors
        grad = grad_values * (values > 0).to(grad_values.dtype)  # ReLU gate
        grad_xc = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_xc = F.embedding_bag(
                latents,
                weight,
                _offsets(rows, ctx.num_rows),
                mode="sum",
                per_sample_weights=grad.to(weight.dtype),
            ).to(xc.dtype)
        if ctx.needs_input_grad[1]:
            order = torch.argsort(latents, stable=True)
            sorted_latents = latents[order]
            grad_weight = F.embedding_bag(
                rows[order],
                xc,
                _offsets(sorted_latents, ctx.num_latents),
                mode="sum",
                per_sample_weights=grad[order].to(xc.dtype),
            ).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(ctx.num_latents, dtype=grad.dtype, device=grad.device)
            grad_bias.index_add_(0, latents, grad)
        return grad_xc, grad_weight, grad_bias, None, None, None


def _code(xc: Tensor, weight: Tensor, bias: Tensor, preacts: Tensor, rows: Tensor, latents: Tensor) -> SparseCode:
    values = _SelectedPreacts.apply(xc, weight, bias, preacts, rows, latents)
    return SparseCode(rows, latents, values, xc.shape[0])


def batch_topk_indices(preacts: Tensor, k: int, candidates_per_row: int | None = None) -> tuple[Tensor, Tensor]:
    """(rows, latents) of the k·N largest entries of ``preacts`` [N, F], sorted by row.

    A global top-(k·N) over N·F values is slow, so each row first proposes its top
    ``candidates_per_row`` entries. That is exact unless some row had every candidate
    selected (it might own more); then the full flat selection runs instead.
    """
    n, f = preacts.shape
    total = k * n
    cap = min(f, candidates_per_row or 4 * k)
    with torch.no_grad():
        cand_vals, cand_idx = preacts.topk(cap, dim=-1, sorted=True)
        flat = cand_vals.reshape(-1).topk(total, sorted=False).indices
        taken_per_row = torch.bincount(flat // cap, minlength=n)
        if cap < f and bool((taken_per_row >= cap).any()):
            flat_full = preacts.reshape(-1).topk(total, sorted=False).indices
            rows, latents = flat_full // f, flat_full % f
        else:
            rows, latents = flat // cap, cand_idx.reshape(-1)[flat]
        order = torch.argsort(rows, stable=True)
        return rows[order], latents[order]


def decode(code: SparseCode, w_dec: Tensor) -> Tensor:
    """Σ_j value_j · W_dec[latent_j] per row, without the decoder bias."""
    return F.embedding_bag(code.latents, w_dec, code.row_offsets(), mode="sum", per_sample_weights=code.values.to(w_dec.dtype))


def decode_dense(code: SparseCode, w_dec: Tensor) -> Tensor:
    """:func:`decode` as a dense [N, F] code times ``W_dec``; its backward is two dense products too.
    Under autocast both run in the autocast dtype."""
    dense = code.values.new_zeros(code.num_rows, w_dec.shape[0]).index_put((code.rows, code.latents), code.values)
    return dense @ w_dec


def decode_fixed_width(top_acts: Tensor, top_indices: Tensor, w_dec: Tensor) -> Tensor:
    """Decode [N, w] (acts, indices) — the reference's call shape — without the bias."""
    return F.embedding_bag(top_indices, w_dec, mode="sum", per_sample_weights=top_acts.to(w_dec.dtype))
