"""An explicit ``m x d`` matrix acting on vectors (the exact-posterior benchmark)."""
from __future__ import annotations

import torch

from .base import LinearOperator, Scalar, Tensor, _per_sample, _safe_reciprocal


# ----------------------------------------------------------------------------------------------- dense
class DenseOperator(LinearOperator):
    """An explicit ``m x d`` matrix acting on vectors: ``(B, d) -> (B, m)``.

    With the full SVD ``A = U diag(s) V^T`` (``U`` is ``m x m``; ``lam = s^2`` padded with zeros to
    ``m``): ``A^+ = V diag(1/s) U^T`` over the singular values above ``rtol * s_max`` and
    ``(s2 I + r2 A A^T)^{-1} = U diag(1 / (s2 + r2 lam)) U^T``.
    """

    def __init__(self, matrix: Tensor, rtol: float | None = None):
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {tuple(matrix.shape)}")
        m, d = matrix.shape
        super().__init__((d,), (m,))
        U, s, Vh = torch.linalg.svd(matrix, full_matrices=True)
        rtol = max(m, d) * torch.finfo(torch.float64).eps if rtol is None else rtol
        s = torch.where(s > rtol * s.max(), s, torch.zeros_like(s))
        lam = torch.zeros(m, dtype=torch.float64)
        lam[: s.numel()] = s**2
        r = s.numel()
        pinv = Vh[:r].T @ torch.diag(_safe_reciprocal(s)) @ U[:, :r].T
        self.register_buffer("matrix", matrix.clone())
        self.register_buffer("pinv", pinv)
        self.register_buffer("U", U)
        self.register_buffer("lam", lam)

    def A(self, x: Tensor) -> Tensor:
        return x @ self._buf("matrix", x).T

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y @ self._buf("matrix", y)

    def A_pinv(self, y: Tensor) -> Tensor:
        return y @ self._buf("pinv", y).T

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        U = self._buf("U", v)
        den = _per_sample(s2, v) + _per_sample(r2, v) * self._buf("lam", v)
        return ((v @ U) * _safe_reciprocal(den)) @ U.T
