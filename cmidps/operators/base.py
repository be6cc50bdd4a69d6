"""The operator protocol: :class:`LinearOperator` (``A``, its true adjoint, ``A^+`` and the K-solve), and
the helpers every operator family shares."""
from __future__ import annotations

import torch

from ..linalg import batched_cg

Tensor = torch.Tensor
Scalar = float | Tensor


Tensor = torch.Tensor
Scalar = float | Tensor


# --------------------------------------------------------------------------------------------- helpers
def _per_sample(value: Scalar, like: Tensor) -> Tensor:
    """A float or a ``(B,)`` tensor as a tensor broadcastable against ``like`` (``(B, ...)``)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.numel() == 1 and t.ndim <= 1:
        return t.reshape(())
    if t.shape != (like.shape[0],):
        raise ValueError(f"per-sample values must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (like.ndim - 1)))


def _safe_reciprocal(den: Tensor) -> Tensor:
    """``1 / den`` where ``den != 0``, else 0 (the pseudo-inverse of a diagonal)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(den), 1.0 / torch.where(zero, torch.ones_like(den), den))


# ----------------------------------------------------------------------------------------- base class
class LinearOperator(torch.nn.Module):
    """A linear map ``A: R^{x_shape} -> R^{y_shape}`` applied to batches.

    Subclasses implement :meth:`A` and :meth:`A_adjoint` and, where they can, closed forms of
    :meth:`A_pinv` and :meth:`solve_K`. The base class falls back to conjugate gradients:
    ``A^+ y = A^T (A A^T)^+ y`` and ``solve_K`` by :meth:`cg_solve_K`.
    """

    def __init__(self, x_shape: tuple[int, ...], y_shape: tuple[int, ...]):
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.y_shape = tuple(int(s) for s in y_shape)

    def _buf(self, name: str, like: Tensor) -> Tensor:
        """Buffer ``name`` cast to the dtype and device of ``like``."""
        return getattr(self, name).to(dtype=like.dtype, device=like.device)

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def A_pinv(self, y: Tensor) -> Tensor:
        """Generic ``A^+ y = A^T (A A^T)^+ y`` (CG; exact for ``y`` in the range of ``A``)."""
        return self.A_adjoint(self.cg_solve_K(y, 1.0, 0.0))

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        """``(s2 I + r2 A A^T)^{-1} v``; generic fallback by conjugate gradients."""
        return self.cg_solve_K(v, r2, s2)

    def cg_solve_K(
        self, v: Tensor, r2: Scalar, s2: Scalar, tol: float | None = None, maxiter: int = 500
    ) -> Tensor:
        """Conjugate gradients on ``(s2 I + r2 A A^T) u = v``, independently per batch element.

        Stops when every residual satisfies ``||r_b|| <= tol * ||v_b||`` or after ``maxiter``
        iterations (``tol=None``: 1e-10 in float64, 1e-5 in lower precision). The system matrix is symmetric positive (semi-)definite; with ``s2 = 0`` and a
        singular ``A A^T`` it converges for ``v`` in the range of ``A`` (to the minimum-norm solution).
        """
        if tol is None:
            tol = 1e-10 if v.dtype == torch.float64 else 1e-5
        r2_ = _per_sample(r2, v)
        s2_ = _per_sample(s2, v)

        def K(u: Tensor) -> Tensor:
            return s2_ * u + r2_ * self.A(self.A_adjoint(u))

        return batched_cg(K, v, tol=tol, maxiter=maxiter)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, y_shape={self.y_shape}"


# ------------------------------------------------------------------------------------------ inpainting

def _image_shape(x_shape) -> tuple[int, int, int]:
    if len(x_shape) != 3:
        raise ValueError(f"image operators need x_shape = (C, H, W), got {tuple(x_shape)}")
    return tuple(int(s) for s in x_shape)
