"""Small batched linear-algebra helpers shared by the operators and the CMI plug-in."""
from __future__ import annotations

from typing import Callable

import torch


def bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over all but the batch dimension: (B, ...) x (B, ...) -> (B,)."""
    return (a * b).flatten(1).sum(1)


def bview(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample scalar (B,) so that it broadcasts against ``like`` (B, ...)."""
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def batched_cg(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
               tol: float = 1e-8, maxiter: int = 100) -> torch.Tensor:
    """Conjugate gradients for ``matvec(x) = b``, solved independently for every batch element.

    ``matvec`` must be symmetric positive definite per sample. Stops when every sample's residual
    norm is below ``tol * ||b||`` or after ``maxiter`` iterations; samples that converged early are
    frozen (their step length is set to zero), so a batch gives the same answers as one at a time.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = bdot(r, r)
    stop = tol**2 * bdot(b, b).clamp_min(torch.finfo(b.dtype).tiny)
    for _ in range(maxiter):
        active = rs > stop
        if not bool(active.any()):
            break
        ap = matvec(p)
        pap = bdot(p, ap)
        alpha = torch.where(active & (pap > 0), rs / pap.where(pap > 0, torch.ones_like(pap)), torch.zeros_like(rs))
        x = x + bview(alpha, x) * p
        r = r - bview(alpha, r) * ap
        rs_new = bdot(r, r)
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny), torch.zeros_like(rs))
        p = r + bview(beta, p) * p
        rs = torch.where(active, rs_new, rs)
    return x
