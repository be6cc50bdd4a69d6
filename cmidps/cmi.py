"""The CMI plug-in: conditional mutual information I(x0; y | x_t) and its gradient.

Paper: Hamidi & Yang, "Conditional Mutual Information Based Diffusion Posterior Sampling".
Maths as checked in ``docs/math.md``:

* Second-order Tweedie (paper Eq. 7a / 9)::

      Sigma_post = Cov[x0 | x_t] = (sigma_t^2 / abar_t) (I + sigma_t^2 H) = (sigma_t^2 / sqrt(abar_t)) J,

  with ``H`` the Hessian of log p_t and ``J = d x0_hat / d x_t``: Sigma_post times a vector is one
  Jacobian-vector product of the denoiser.
* Theorem 1 (Eq. 6), in the determinant-lemma form that needs no inverse of Sigma_post::

      I(x0; y | x_t) = 1/2 log det(I_m + Sigma_n^-1 A Sigma_post A^T).

* Theorem 2 (Eq. 13-14), rewritten: ``grad I = grad_x [1/2 c Tr(stopgrad(M) H(x))]`` with
  ``c = (1 - abar)^2 / abar``, ``M = A^T K^-1 A``, ``K = Sigma_n + A Sigma_post A^T``. Since
  ``c H = (sigma^2 / sqrt(abar)) J - (sigma^2 / abar) I`` and the identity has no gradient::

      grad I = grad_x [ 1/2 (sigma_t^2 / sqrt(abar_t)) Tr(stopgrad(M) J(x)) ].

  The trace is estimated with probe pairs ``(a, b)`` with ``E[a b^T] = M`` and
  ``Tr(M J) = E[a^T J b] = E[<J^T a, b>]``: one vector-Jacobian product with a graph, then one
  more backward (a double backward through the network). Estimators:

  - ``hutchinson`` (the paper's Eq. 21-22): ``v`` Rademacher in R^d, ``a = M v``, ``b = v``.
  - ``lowrank``: ``u`` Rademacher in R^m, ``a = A^T K^-1 u``, ``b = A^T u``. Unbiased too, and with far
    lower variance, because M has rank m.
  - ``exact``: ``u`` runs over the m basis vectors of measurement space (m small: vectors).

  ``K^-1`` is applied either with the isotropic approximation ``Sigma_post ~ r_t^2 I``, ``r_t^2 = 1 -
  abar_t`` as in PiGDM (closed form per operator), or exactly by conjugate gradients with
  denoiser JVPs (``kinv="cg"``).

The CMI term does not depend on y and is not a term of grad log p_t(x_t | y): it biases an exact
sampler. Measure it against eta = 0 on the same seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .diffusion import StepCoefficients
from .linalg import batched_cg

ESTIMATORS = ("hutchinson", "lowrank", "exact")
KINV = ("isotropic", "cg")
ETA_SCHEDULES = ("constant", "abar")


@dataclass
class CMIConfig:
    """Options of the CMI step ``x'_{t-1} += eta_t * grad I(x0; y | x_t)`` (Algorithm 1, line 8).

    ``eta_schedule``: ``constant`` (eta_t = eta) or ``abar`` (eta_t = eta * (1 - abar_t), decaying
    to zero as the sample gets clean).

    The default eta = 1e-3 was tuned for the bundled 32x32 prior (docs/demo.md): grad I grows with
    the number of measurements and with 1/sqrt(abar_t) (norms of ~1e3 at the noisiest steps there),
    so other image sizes and models need their own eta (the GMM benchmark tunes its own).
    """

    eta: float = 1e-3
    estimator: str = "lowrank"
    probes: int = 1
    kinv: str = "isotropic"
    cg_iters: int = 10
    eta_schedule: str = "constant"

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown CMI estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.kinv not in KINV:
            raise ValueError(f"unknown K^-1 method {self.kinv!r}; choose from {', '.join(KINV)}")
        if self.eta_schedule not in ETA_SCHEDULES:
            raise ValueError(f"unknown eta schedule {self.eta_schedule!r}; choose from {', '.join(ETA_SCHEDULES)}")
        if self.probes < 1:
            raise ValueError("probes must be >= 1")

    def eta_at(self, c: StepCoefficients) -> float:
        return self.eta if self.eta_schedule == "constant" else self.eta * (1.0 - c.abar)


def _rademacher(shape, like: torch.Tensor, generator) -> torch.Tensor:
    """Rademacher draws from a generator or a list of per-sample generators."""
    if isinstance(generator, (list, tuple)):
        r = torch.stack([torch.randint(0, 2, tuple(shape[1:]), generator=g) for g in generator])
    else:
        r = torch.randint(0, 2, tuple(shape), generator=generator)
    return 2.0 * r.to(like.device, like.dtype) - 1.0


def _jvp(x: torch.Tensor, x0_hat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J v with J = d x0_hat / d x, by the double-vjp trick (no forward-mode AD needed)."""
    u = torch.zeros_like(x0_hat, requires_grad=True)
    (jt_u,) = torch.autograd.grad(x0_hat, x, u, create_graph=True)
    (jv,) = torch.autograd.grad(jt_u, u, v, retain_graph=True)
    return jv


def make_kinv(op, c: StepCoefficients, sigma_y: float, x: torch.Tensor, x0_hat: torch.Tensor,
              kinv: str = "isotropic", cg_iters: int = 10):
    """Return ``w -> K^-1 w`` for ``K = sigma_y^2 I + A Sigma_post A^T``."""
    s2 = float(sigma_y) ** 2
    if kinv == "isotropic":
        r2 = 1.0 - c.abar
        return lambda w: op.solve_K(w, r2, s2)
    scale = c.sigma**2 / c.abar**0.5

    def k_matvec(w):
        return s2 * w + op.A(scale * _jvp(x, x0_hat, op.A_adjoint(w)))

    return lambda w: batched_cg(k_matvec, w, tol=1e-6, maxiter=cg_iters).detach()


def probe_pairs(cfg: CMIConfig, op, kinv_apply, batch: int, like: torch.Tensor, generator):
    """Probe pairs (a, b) with E[a b^T] = M = A^T K^-1 A (summed, not averaged, for ``exact``)."""
    pairs = []
    if cfg.estimator == "hutchinson":
        for _ in range(cfg.probes):
            v = _rademacher((batch, *op.x_shape), like, generator)
            pairs.append((op.A_adjoint(kinv_apply(op.A(v))), v))
    elif cfg.estimator == "lowrank":
        for _ in range(cfg.probes):
            u = _rademacher((batch, *op.y_shape), like, generator)
            pairs.append((op.A_adjoint(kinv_apply(u)), op.A_adjoint(u)))
    else:  # exact
        m = math.prod(op.y_shape)
        if m > 256:
            raise ValueError(f"the exact CMI estimator needs m HVPs; m = {m} is too large (use lowrank)")
        for k in range(m):
            u = torch.zeros(batch, m, dtype=like.dtype, device=like.device)
            u[:, k] = 1.0
            u = u.reshape(batch, *op.y_shape)
            pairs.append((op.A_adjoint(kinv_apply(u)), op.A_adjoint(u)))
    return pairs


class ClampLinearized:
    """``A D`` with ``D = diag(1{|x0_hat| <= 1})``: the operator seen by the CMI term when x0_hat is
    clamped to [-1, 1] before it enters the likelihood (``likelihood_clip``).

    For ``y = A clamp(x0) + n`` the Gauss-Newton linearisation at x0_hat replaces ``A`` by ``A D``
    (``D`` is the clamp's Jacobian), i.e. ``Sigma_post`` by ``D Sigma_post D`` in Theorem 1: saturated
    pixels carry no posterior covariance. ``solve_K`` keeps the unmasked closed form (an
    approximation used only with ``kinv="isotropic"``, which already approximates Sigma_post by
    ``r_t^2 I``); ``kinv="cg"`` solves with ``A D Sigma_post D A^T`` exactly.
    """

    def __init__(self, op, x0_hat: torch.Tensor):
        self.op = op
        self.d = (x0_hat.detach().abs() <= 1.0).to(x0_hat.dtype)
        self.x_shape, self.y_shape = op.x_shape, op.y_shape

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.A(self.d * x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.d * self.op.A_adjoint(y)

    def solve_K(self, v: torch.Tensor, r2, s2) -> torch.Tensor:
        return self.op.solve_K(v, r2, s2)


def cmi_objective(x: torch.Tensor, x0_hat: torch.Tensor, c: StepCoefficients, op, sigma_y: float,
                  cfg: CMIConfig, generator=None, clip: bool = False) -> torch.Tensor:
    """A scalar whose gradient with respect to ``x`` is the estimate of grad I(x0; y | x_t).

    ``1/2 (sigma_t^2 / sqrt(abar_t)) mean_probes <J^T a, b>`` with stop-gradient probes: one
    vector-Jacobian product with a graph per probe. Taking its gradient
    is the double backward; :class:`~cmidps.sampling.StepState` fuses that with the sampler's own
    backward where it can. ``x0_hat`` is the unclamped Tweedie estimate; ``clip=True`` takes the CMI
    of the clamped estimate, i.e. the operator :class:`ClampLinearized` in place of ``op``.
    """
    if clip:
        op = ClampLinearized(op, x0_hat)
    kinv_apply = make_kinv(op, c, sigma_y, x, x0_hat, cfg.kinv, cfg.cg_iters)
    pairs = probe_pairs(cfg, op, kinv_apply, x.shape[0], x0_hat, generator)
    total = 0.0
    for a, b in pairs:  # (a batched backward over probes, is_grads_batched, fails through UNets)
        (jt_a,) = torch.autograd.grad(x0_hat, x, a.detach(), create_graph=True)
        total = total + (jt_a * b.detach()).sum()
    n = 1 if cfg.estimator == "exact" else cfg.probes
    return 0.5 * c.sigma**2 / c.abar**0.5 / n * total


def cmi_gradient(x: torch.Tensor, x0_hat: torch.Tensor, c: StepCoefficients, op, sigma_y: float,
                 cfg: CMIConfig, generator=None, clip: bool = False) -> torch.Tensor:
    """grad_{x_t} I(x0; y | x_t) (Theorem 2), estimated as configured; per sample, batched.

    ``x0_hat`` must carry its autograd graph back to ``x``; the graph is kept for the caller.
    """
    (g,) = torch.autograd.grad(cmi_objective(x, x0_hat, c, op, sigma_y, cfg, generator, clip), x, retain_graph=True)
    return g


# --- Theorem 1, dense (vectors and tests) ------------------------------------------------------
def sigma_post_dense(x: torch.Tensor, x0_fn, c: StepCoefficients) -> torch.Tensor:
    """Sigma_post = (sigma_t^2 / sqrt(abar_t)) J for every sample of a (B, d) batch: (B, d, d)."""
    jac = torch.stack([torch.autograd.functional.jacobian(lambda z: x0_fn(z[None])[0], xi) for xi in x])
    return c.sigma**2 / c.abar**0.5 * jac


def mutual_information(sigma_post: torch.Tensor, A: torch.Tensor, sigma_n: torch.Tensor) -> torch.Tensor:
    """Theorem 1, determinant-lemma form: 1/2 log det(I_m + Sigma_n^-1 A Sigma_post A^T)."""
    m = A.shape[0]
    inner = torch.linalg.solve(sigma_n, A @ sigma_post @ A.T)
    return 0.5 * torch.logdet(torch.eye(m, dtype=A.dtype) + inner)


def mutual_information_paper(sigma_post: torch.Tensor, A: torch.Tensor, sigma_n: torch.Tensor) -> torch.Tensor:
    """Theorem 1 as printed (Eq. 6-7b): 1/2 log det(Sigma_post) / det(Sigma_post,y),
    Sigma_post,y = (Sigma_post^-1 + A^T Sigma_n^-1 A)^-1. Ill-conditioned as abar -> 1."""
    post_y = torch.linalg.inv(torch.linalg.inv(sigma_post) + A.T @ torch.linalg.solve(sigma_n, A))
    return 0.5 * (torch.logdet(sigma_post) - torch.logdet(post_y))
