"""The adversarial prefix: a distribution over the vocabulary for each of k token slots right after SOT.

The prompt's ids are ``[SOT, adv₁…adv_k, prompt…, EOS, pad…]`` (UnlearnDiffAtk's ``prefix_k``). The slots hold a
row-stochastic ``u`` (``[k, V]``); each optimisation step draws one token per slot from ``u`` and feeds its one-hot
row through the text encoder's own embedding table, while the gradient reaches all of ``u`` straight through the
draw (clipped to [-1, 1], as the reference's ``hardtanh``). After each Adam step ``u`` is projected back onto the
simplex. Discretisation is the argmax per slot, and what is evaluated is exactly those ids — never their text
re-tokenised, unless the reference's round trip is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def project_to_simplex(u: Tensor) -> Tensor:
    """Each row's Euclidean projection onto the probability simplex (the exact sort-based solution; the reference
    bisects for the same threshold to 1e-5)."""
    sorted_u, _ = torch.sort(u, dim=-1, descending=True)
    cumulative = sorted_u.cumsum(-1) - 1
    ranks = torch.arange(1, u.shape[-1] + 1, device=u.device, dtype=u.dtype)
    support = (sorted_u - cumulative / ranks) > 0
    rho = support.to(u.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where the condition holds
    tau = cumulative.gather(-1, rho) / (rho + 1).to(u.dtype)
    return (u - tau).clamp_min(0)


class _SampleStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, generator: torch.Generator | None) -> Tensor:
        tokens = torch.multinomial(u.detach().float().cpu(), 1, generator=generator).squeeze(-1).to(u.device)
        return nn.functional.one_hot(tokens, u.shape[-1]).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return nn.functional.hardtanh(grad), None


def sample_one_hot(u: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row drawn from ``u`` as a one-hot ``[k, V]``; the backward pass hands ``u`` the one-hot's
    gradient, clipped to [-1, 1]. The draw uses ``generator`` on the CPU, so it is the same on every device."""
    return _SampleStraightThrough.apply(u, generator)


@dataclass(frozen=True)
class PrefixPrompt:
    """A prompt's token ids with k prefix slots after SOT, in the tokenizer's fixed length."""

    ids: Tensor
    """``[max_length]``: SOT, k placeholder slots, the prompt's tokens, EOS and pads."""
    k: int

    @property
    def slots(self) -> slice:
        return slice(1, 1 + self.k)

    def with_tokens(self, tokens: Tensor) -> Tensor:
        ids = self.ids.clone()
        ids[self.slots] = tokens.to(ids)
        return ids

    @classmethod
    def build(cls, tokenizer, prompt: str, k: int) -> PrefixPrompt:
        if k < 1:
            raise ValueError(f"the attack's prefix needs at least one token, got prefix_tokens={k}")
        length = tokenizer.model_max_length
        body = tokenizer(prompt, add_special_tokens=False).input_ids
        if 2 + k + len(body) > length:
            raise ValueError(
                f"{prompt!r} is {len(body)} tokens: with SOT, EOS and {k} prefix tokens it needs {2 + k + len(body)} "
                f"positions, but the tokenizer has {length}; use at most {length - 2 - len(body)} prefix tokens"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = [tokenizer.bos_token_id, *[pad] * k, *body, tokenizer.eos_token_id]
        return cls(torch.tensor(ids + [pad] * (length - len(ids))), k)


def round_trip(tokenizer, ids: Tensor) -> Tensor:
    """The reference's evaluation path: decode the ids to text and tokenise that again (BPE may merge, split or
    lower-case what the optimiser chose)."""
    text = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")[
        "input_ids"
    ][0]


@contextmanager
def relaxed_slots(text_encoder: nn.Module, slots: slice, rows: Tensor) -> Iterator[None]:
    """While active, the text encoder's token embeddings at ``slots`` are ``rows @ E`` (``rows``: ``[k, V]``,
    one-hot or relaxed) instead of the looked-up ids': the encoder's own table, position embeddings and layers."""
    table: nn.Embedding = text_encoder.get_input_embeddings()  # type: ignore[operator]

    def replace(_module, _inputs, output: Tensor) -> Tensor:
        output = output.clone()
        output[:, slots] = (rows.to(table.weight.dtype) @ table.weight).unsqueeze(0).expand(output.shape[0], -1, -1)
        return output

    handle = table.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
