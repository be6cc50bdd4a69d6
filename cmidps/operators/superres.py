"""Super-resolution: MATLAB-style antialiased bicubic downsampling as a separable operator."""
from __future__ import annotations

import math

import torch

from .base import LinearOperator, Scalar, Tensor, _image_shape, _per_sample, _safe_reciprocal


# ----------------------------------------------------------------------------------- super-resolution
def _cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = 1.5 * ax3 - 2.5 * ax2 + 1
    far = -0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2
    return torch.where(ax <= 1, near, torch.where(ax <= 2, far, torch.zeros_like(ax)))


def bicubic_matrix(in_size: int, factor: int) -> Tensor:
    """MATLAB ``imresize(..., 1/factor, 'bicubic')`` (antialiased) as an ``(in_size/factor, in_size)`` matrix.

    Output pixel ``i`` (0-based) is centred at input coordinate ``u = factor * i + (factor - 1) / 2``
    (pixel units, 0-based). Antialiasing widens the cubic kernel by ``factor``: the weight of input
    pixel ``j`` is ``cubic((u - j) / factor) / factor``, over the ``4 * factor + 2`` nearest pixels,
    normalised to sum 1 per output pixel. Indices outside ``[0, in_size)`` are mirrored
    (symmetric padding: ``-1 -> 0``, ``in_size -> in_size - 1``) and their weights folded in.
    """
    out_size = in_size // factor
    width = 4.0 * factor
    u = factor * torch.arange(out_size, dtype=torch.float64) + (factor - 1) / 2
    taps = int(math.ceil(width)) + 2
    left = torch.floor(u - width / 2)
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # (out, taps)
    w = _cubic((u[:, None] - idx) / factor) / factor
    w = w / w.sum(1, keepdim=True)
    period = torch.cat([torch.arange(in_size), torch.arange(in_size - 1, -1, -1)])
    mirrored = period[torch.remainder(idx.long(), 2 * in_size)]
    D = torch.zeros(out_size, in_size, dtype=torch.float64)
    D.scatter_add_(1, mirrored, w)
    return D


class SeparableOperator(LinearOperator):
    """``Y = D_h X D_w^T`` on every channel, with ``D_h: (h, H)`` and ``D_w: (w, W)``.

    As a matrix on ``vec(X)`` (row-major) ``A = D_h kron D_w``, so ``A^T Y = D_h^T Y D_w``,
    ``A^+ Y = D_h^+ Y (D_w^+)^T`` (the pseudo-inverse of a Kronecker product is the product of the
    pseudo-inverses) and, with the eigendecompositions ``D D^T = U diag(lam) U^T``,

        (s2 I + r2 A A^T)^{-1} V = U_h [ (U_h^T V U_w) / (s2 + r2 lam_h lam_w^T) ] U_w^T.
    """

    def __init__(self, x_shape, D_h: Tensor, D_w: Tensor):
        C, H, W = _image_shape(x_shape)
        D_h = torch.as_tensor(D_h, dtype=torch.float64)
        D_w = torch.as_tensor(D_w, dtype=torch.float64)
        if D_h.shape[1] != H or D_w.shape[1] != W:
            raise ValueError(f"D_h must be (h, {H}) and D_w (w, {W}); got {tuple(D_h.shape)}, {tuple(D_w.shape)}")
        super().__init__((C, H, W), (C, D_h.shape[0], D_w.shape[0]))
        for name, D in (("h", D_h), ("w", D_w)):
            lam, U = torch.linalg.eigh(D @ D.T)
            lam = torch.where(lam > lam.max() * D.shape[1] * 1e-15, lam, torch.zeros_like(lam))
            self.register_buffer(f"D_{name}", D.clone())
            self.register_buffer(f"pinv_{name}", torch.linalg.pinv(D))
            self.register_buffer(f"U_{name}", U)
            self.register_buffer(f"lam_{name}", lam)

    def A(self, x: Tensor) -> Tensor:
        return self._buf("D_h", x) @ x @ self._buf("D_w", x).T

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._buf("D_h", y).T @ y @ self._buf("D_w", y)

    def A_pinv(self, y: Tensor) -> Tensor:
        return self._buf("pinv_h", y) @ y @ self._buf("pinv_w", y).T

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        U_h, U_w = self._buf("U_h", v), self._buf("U_w", v)
        lam = self._buf("lam_h", v)[:, None] * self._buf("lam_w", v)[None, :]
        den = _per_sample(s2, v) + _per_sample(r2, v) * lam
        return U_h @ ((U_h.T @ v @ U_w) * _safe_reciprocal(den)) @ U_w.T


class SuperResolution(SeparableOperator):
    """``factor``-times bicubic downsampling, MATLAB ``imresize`` style with antialiasing.

    ``x_shape = (C, H, W)`` with ``H`` and ``W`` divisible by ``factor``; ``y_shape = (C, H/f, W/f)``.
    Downsampling a constant image gives the same constant (the rows of ``D`` sum to 1).
    """

    def __init__(self, x_shape, factor: int = 4):
        C, H, W = _image_shape(x_shape)
        if factor < 1 or H % factor or W % factor:
            raise ValueError(f"image size {H}x{W} must be divisible by the factor {factor}")
        super().__init__((C, H, W), bicubic_matrix(H, factor), bicubic_matrix(W, factor))
        self.factor = int(factor)
