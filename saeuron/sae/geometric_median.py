"""Geometric median by Weiszfeld's iteration, used to initialise the decoder bias."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-5, eps: float = 1e-8) -> Tensor:
    """The point minimising the sum of Euclidean distances to ``points`` [N, d].

    Starts from the mean, as the reference does (at most 100 iterations, tolerance 1e-5).
    ``eps`` keeps the weights finite when the estimate lands on a data point.
    """
    points = points.float()
    guess = points.mean(0)
    for _ in range(max_iter):
        previous = guess
        weights = 1.0 / torch.linalg.vector_norm(points - guess, dim=1).clamp_min(eps)
        guess = (weights[:, None] * points).sum(0) / weights.sum()
        if torch.linalg.vector_norm(guess - previous) < tol:
            break
    return guess
