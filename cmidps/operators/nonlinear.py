"""Nonlinear measurement operators ``y = A(x) + n`` for any differentiable ``A``.

A :class:`NonlinearOperator` has ``x_shape``, ``y_shape``, a differentiable :meth:`~NonlinearOperator.A`
and, by autograd, the Jacobian products of ``J_A(x) = dA/dx``: :meth:`~NonlinearOperator.vjp`
(``J_A^T u``) and :meth:`~NonlinearOperator.jvp` (``J_A v``, by the double-vjp trick). It has no
``A_adjoint``, ``A_pinv`` or ``solve_K``: the solvers that need them (PiGDM, MCG, DDNM, DiffPIR,
TMPD) refuse it; DPS, DSG, DAPS and RED-diff need only gradients of ``||y - A(x)||`` and run on it.

:meth:`~NonlinearOperator.linearized` gives the Gauss-Newton linear operator ``J_A(x_bar)`` at a point
(a :class:`~cmidps.operators.LinearOperator`, whose ``A_pinv`` and ``solve_K`` fall back to conjugate
gradients). The CMI term uses it: under a nonlinear A, Theorem 1 is applied to the linearisation
at x0_hat, ``I ~ 1/2 log det(I + Sigma_n^-1 J_A Sigma_post J_A^T)``, with ``J_A`` held fixed
(stop-gradient) in Theorem 2's gradient, as ``M`` is.

Shipped operators:

* :class:`PhaseRetrieval`: Fourier magnitude ``|F pad(x)|`` with oversampling 2, as in the DPS code
  (``pad = oversample / 8 * H`` on every side, orthonormal 2-D DFT; the DPS code's centring shifts
  change only the phase). The DPS code applies it to x in the model range [-1, 1]; DAPS and
  InverseBench map x to [0, 1] first (``unit_range=True``).
* :class:`HighDynamicRange`: ``clip(scale x, -1, 1)`` with ``scale = 2``, the high-dynamic-range task
  of DAPS and InverseBench (differentiable almost everywhere; zero gradient where it saturates).
"""
from __future__ import annotations

import torch

from .base import LinearOperator

Tensor = torch.Tensor


class NonlinearOperator(torch.nn.Module):
    """A differentiable map ``A: R^{x_shape} -> R^{y_shape}``, batched; subclasses implement :meth:`A`."""

    nonlinear = True

    def __init__(self, x_shape, y_shape):
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.y_shape = tuple(int(s) for s in y_shape)

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def vjp(self, x: Tensor, u: Tensor) -> Tensor:
        """``J_A(x)^T u`` (one backward through A)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.A(x), x, u)
        return g

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """``J_A(x) v`` by the double-vjp trick."""
        return self.linearized(x).A(v)

    def _refuse(self, what: str):
        raise ValueError(f"{type(self).__name__} is a nonlinear operator: it has no {what}; methods that need it "
                         "(pigdm, mcg, ddnm, ddnm_plus, diffpir, tmpd) cannot use it: use dps, dsg, daps or reddiff")

    def A_adjoint(self, y: Tensor) -> Tensor:
        self._refuse("adjoint A^T (use vjp at a point)")

    def A_pinv(self, y: Tensor) -> Tensor:
        self._refuse("pseudo-inverse A^+")

    def solve_K(self, v: Tensor, r2, s2) -> Tensor:
        self._refuse("K-solve (s2 I + r2 A A^T)^-1")

    def linearized(self, x_bar: Tensor) -> "Linearized":
        """The Gauss-Newton linear operator ``J_A(x_bar)`` (per batch element of ``x_bar``)."""
        return Linearized(self, x_bar)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, y_shape={self.y_shape}"


class Linearized(LinearOperator):
    """``v -> J_A(x_bar) v`` with its true adjoint ``u -> J_A(x_bar)^T u``, from one forward of ``A`` at
    ``x_bar`` kept with its graph. ``A_pinv`` and ``solve_K`` are the base class's conjugate gradients.
    A batch of ``x_bar`` gives one Jacobian per batch element; inputs must have that batch size."""

    def __init__(self, op: NonlinearOperator, x_bar: Tensor):
        super().__init__(op.x_shape, op.y_shape)
        with torch.enable_grad():
            self._x = x_bar.detach().requires_grad_(True)
            self._y = op.A(self._x)
            self._u = torch.zeros_like(self._y, requires_grad=True)
            (self._jt_u,) = torch.autograd.grad(self._y, self._x, self._u, create_graph=True)

    def A(self, v: Tensor) -> Tensor:
        (jv,) = torch.autograd.grad(self._jt_u, self._u, v.expand_as(self._x), retain_graph=True)
        return jv

    def A_adjoint(self, u: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(self._y, self._x, u.expand_as(self._y), retain_graph=True)
        return g


class PhaseRetrieval(NonlinearOperator):
    """``A(x) = |F pad(x)|``: the magnitude of the orthonormal 2-D DFT of x zero-padded by
    ``int(oversample / 8 * H)`` pixels on every side (the DPS code's operator; oversample 2 pads 32 px
    images by 8, to 48 x 48). ``unit_range``: apply it to (x + 1) / 2 (DAPS / InverseBench)."""

    def __init__(self, x_shape, oversample: float = 2.0, unit_range: bool = False):
        C, H, W = (int(s) for s in x_shape)
        self.pad = int(oversample / 8.0 * H)
        super().__init__((C, H, W), (C, H + 2 * self.pad, W + 2 * self.pad))
        self.unit_range = bool(unit_range)

    def A(self, x: Tensor) -> Tensor:
        if self.unit_range:
            x = 0.5 * x + 0.5
        p = self.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        return torch.fft.fft2(padded, norm="ortho").abs()


class HighDynamicRange(NonlinearOperator):
    """``A(x) = clip(scale x, -1, 1)`` (DAPS / InverseBench's high-dynamic-range reconstruction, scale 2)."""

    def __init__(self, x_shape, scale: float = 2.0):
        super().__init__(x_shape, x_shape)
        self.scale = float(scale)

    def A(self, x: Tensor) -> Tensor:
        return (self.scale * x).clamp(-1.0, 1.0)


NONLINEAR_TASKS = {"phase_retrieval": PhaseRetrieval, "hdr": HighDynamicRange}


def make_nonlinear_operator(task: str, x_shape, **params) -> NonlinearOperator:
    if task not in NONLINEAR_TASKS:
        raise ValueError(f"unknown nonlinear task {task!r}; choose from {', '.join(NONLINEAR_TASKS)}")
    return NONLINEAR_TASKS[task](tuple(x_shape), **params)
