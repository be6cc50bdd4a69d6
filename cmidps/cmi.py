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
GRADS = ("autodiff", "fd", "central")
# The difference step e = rel * |x| / |b| per sample (docs/performance.md, the error-versus-e sweep).
FD_REL = {torch.float64: 1e-5, torch.float32: 5e-4, "central": {torch.float64: 1e-4, torch.float32: 3e-3}}
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

    ``grad``: how the gradient of the objective ``<J^T a, b>`` (stop-gradient probes) is taken.
    ``autodiff`` (the reference): a vector-Jacobian product with a graph and a double backward
    through the network. ``fd``: as a Hessian-vector product by a forward difference of
    vector-Jacobian products, ``[J(x + e b)^T a - J(x)^T a] / e``, the second term fused into the
    sampler's own backward at x (one more forward and ordinary backward per probe; no second
    derivatives, DPS's memory). ``central``: ``[J(x + e b)^T a - J(x - e b)^T a] / 2e`` (two more
    passes per probe, second-order accurate; its passes run in float32 even under ``amp``).
    ``fd_rel``: the step rule ``e = fd_rel * |x| / |b|`` per sample (None: :data:`FD_REL` by dtype).
    ``batch_probes``: run the shifted points of all probes through the network as one batch.
    """

    eta: float = 1e-3
    estimator: str = "lowrank"
    probes: int = 1
    kinv: str = "isotropic"
    cg_iters: int = 10
    eta_schedule: str = "constant"
    grad: str = "fd"
    fd_rel: float | None = None
    batch_probes: bool = False

    def __post_init__(self):
        if self.grad not in GRADS:
            raise ValueError(f"unknown CMI gradient {self.grad!r}; choose from {', '.join(GRADS)}")
        if self.fd_rel is not None and not (0.0 < self.fd_rel < 1.0):
            raise ValueError("fd_rel must be in (0, 1)")
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
    k_matvec = k_product(op, c, sigma_y, x, x0_hat)
    return lambda w: batched_cg(k_matvec, w, tol=1e-6, maxiter=cg_iters).detach()


def k_product(op, c: StepCoefficients, sigma_y: float, x: torch.Tensor, x0_hat: torch.Tensor):
    """``w -> K w`` for ``K = sigma_y^2 I + A Sigma_post A^T`` with ``Sigma_post = (sigma_t^2 / sqrt(abar_t)) J``,
    ``J = d x0_hat / d x`` (one JVP per product): the matrix that ``kinv="cg"`` solves with."""
    s2, scale = float(sigma_y) ** 2, c.sigma**2 / c.abar**0.5
    return lambda w: s2 * w + op.A(scale * _jvp(x, x0_hat, op.A_adjoint(w)))


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


def cmi_probes(x: torch.Tensor, x0_hat: torch.Tensor, c: StepCoefficients, op, sigma_y: float, cfg: CMIConfig,
               generator=None, clip: bool = False):
    """The stop-gradient probe pairs ``[(a, b), ...]`` of one step and the constant ``s`` with
    ``grad I ~ s * sum_k grad_x <J^T a_k, b_k>`` (``s = 1/2 sigma_t^2 / sqrt(abar_t) / n``)."""
    if clip:
        op = ClampLinearized(op, x0_hat)
    kinv_apply = make_kinv(op, c, sigma_y, x, x0_hat, cfg.kinv, cfg.cg_iters)
    pairs = [(a.detach(), b.detach()) for a, b in probe_pairs(cfg, op, kinv_apply, x.shape[0], x0_hat, generator)]
    n = 1 if cfg.estimator == "exact" else cfg.probes
    return pairs, 0.5 * c.sigma**2 / c.abar**0.5 / n


def cmi_objective(x: torch.Tensor, x0_hat: torch.Tensor, c: StepCoefficients, op, sigma_y: float,
                  cfg: CMIConfig, generator=None, clip: bool = False) -> torch.Tensor:
    """A scalar whose gradient with respect to ``x`` is the estimate of grad I(x0; y | x_t).

    ``1/2 (sigma_t^2 / sqrt(abar_t)) mean_probes <J^T a, b>`` with stop-gradient probes: one
    vector-Jacobian product with a graph per probe. Taking its gradient
    is the double backward; :class:`~cmidps.sampling.StepState` fuses that with the sampler's own
    backward where it can. ``x0_hat`` is the unclamped Tweedie estimate; ``clip=True`` takes the CMI
    of the clamped estimate, i.e. the operator :class:`ClampLinearized` in place of ``op``.
    """
    pairs, scale = cmi_probes(x, x0_hat, c, op, sigma_y, cfg, generator, clip)
    total = 0.0
    for a, b in pairs:  # (a batched backward over probes, is_grads_batched, fails through UNets)
        (jt_a,) = torch.autograd.grad(x0_hat, x, a, create_graph=True)
        total = total + (jt_a * b).sum()
    return scale * total


def fd_steps(x: torch.Tensor, b: torch.Tensor, rel: float) -> torch.Tensor:
    """The difference step per sample, ``e = rel * |x| / |b|`` (B,), so that ``|e b| = rel |x|``.

    ``|x|`` is floored at ``1e-3 sqrt(d)`` (a zero x) and ``|b|`` at the dtype's tiny (a zero probe,
    whose difference is zero at any e)."""
    d = x[0].numel()
    nx = x.detach().flatten(1).norm(dim=1).clamp_min(1e-3 * d**0.5)
    nb = b.flatten(1).norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    return rel * nx / nb


class DifferenceCMI:
    """The CMI gradient of one step as a Hessian-vector product by differences of vector-Jacobian
    products (``grad = "fd"`` or ``"central"``), without second derivatives.

    With stop-gradient probes, ``grad_x <J(x)^T a, b> = H b`` for the Hessian ``H`` of
    ``f(x) = <a, x0_hat(x)>``, i.e. the derivative of ``J(x)^T a = grad f`` along ``b``::

        fd:       H b ~ [J(x + e b)^T a - J(x)^T a] / e                 (error O(e))
        central:  H b ~ [J(x + e b)^T a - J(x - e b)^T a] / (2 e)       (error O(e^2))

    The estimate is ``J(x)^T v_x + extra()``: ``v_x = -weight s sum_k a_k / e_k`` (:attr:`at_x`,
    ``None`` for central) goes into the sampler's own backward at x; :meth:`extra` runs one forward
    and one ordinary backward (no graph kept) per shifted point. ``x0_fn(z)`` is the unclamped Tweedie
    estimate at a batch z of the same t (for the shifted points).
    """

    def __init__(self, x: torch.Tensor, pairs, scale: float, x0_fn, cfg: CMIConfig):
        self.x = x.detach()
        self.pairs = pairs
        self.scale = float(scale)
        self.x0_fn = x0_fn
        self.kind = cfg.grad
        self.batch_probes = cfg.batch_probes
        rel = cfg.fd_rel
        if rel is None:
            table = FD_REL["central"] if self.kind == "central" else FD_REL
            rel = table.get(self.x.dtype, table[torch.float32])
        self.steps = [fd_steps(self.x, b, rel) for _, b in pairs]
        if self.kind == "fd":
            self.at_x = -self.scale * sum(a / _bv(e, a) for (a, _), e in zip(pairs, self.steps))
        else:
            self.at_x = None

    def _points(self):
        """[(point, vector)]: the shifted points and the vectors whose VJPs there are summed."""
        out = []
        for (a, b), e in zip(self.pairs, self.steps):
            if self.kind == "fd":
                out.append((self.x + _bv(e, b) * b, self.scale * a / _bv(e, a)))
            else:
                w = 0.5 * self.scale * a / _bv(e, a)
                out += [(self.x + _bv(e, b) * b, w), (self.x - _bv(e, b) * b, -w)]
        return out

    def extra(self) -> torch.Tensor:
        """sum over the shifted points z of J(z)^T v: one forward and one backward per point, or one
        batched pair for all of them (``batch_probes``)."""
        points = self._points()
        groups = [points] if self.batch_probes else [[p] for p in points]
        B = self.x.shape[0]
        total = torch.zeros_like(self.x)
        for group in groups:
            with torch.enable_grad():
                z = torch.cat([p for p, _ in group]).requires_grad_(True)
                x0 = self.x0_fn(z)
                (g,) = torch.autograd.grad(x0, z, torch.cat([v for _, v in group]).to(x0.dtype))
            total = total + g.to(total.dtype).reshape(len(group), B, *self.x.shape[1:]).sum(0)
        return total


def _bv(e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return e.reshape(-1, *[1] * (like.ndim - 1))


def difference_cmi(x: torch.Tensor, x0_hat: torch.Tensor, c: StepCoefficients, op, sigma_y: float, cfg: CMIConfig,
                   x0_fn, generator=None, clip: bool = False, weight: float = 1.0) -> DifferenceCMI:
    """The :class:`DifferenceCMI` of ``weight * grad I`` at x (probes drawn as :func:`cmi_objective` draws them)."""
    pairs, scale = cmi_probes(x, x0_hat, c, op, sigma_y, cfg, generator, clip)
    return DifferenceCMI(x, pairs, weight * scale, x0_fn, cfg)


def cmi_gradient(x: torch.Tensor, x0_hat: torch.Tensor, c: StepCoefficients, op, sigma_y: float,
                 cfg: CMIConfig, generator=None, clip: bool = False, x0_fn=None) -> torch.Tensor:
    """grad_{x_t} I(x0; y | x_t) (Theorem 2), estimated as configured; per sample, batched.

    ``x0_hat`` must carry its autograd graph back to ``x``; the graph is kept for the caller.
    ``cfg.grad`` ``fd`` / ``central`` needs ``x0_fn(z)``, the unclamped Tweedie estimate at a batch z
    (the network at the same t), for the shifted points of :class:`DifferenceCMI`; without it the
    autodiff reference is taken.
    """
    if cfg.grad == "autodiff" or x0_fn is None:
        (g,) = torch.autograd.grad(cmi_objective(x, x0_hat, c, op, sigma_y, cfg, generator, clip), x,
                                   retain_graph=True)
        return g
    fd = difference_cmi(x, x0_hat, c, op, sigma_y, cfg, x0_fn, generator, clip)
    g = fd.extra()
    if fd.at_x is not None:
        (g_x,) = torch.autograd.grad(x0_hat, x, fd.at_x, retain_graph=True)
        g = g + g_x
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
