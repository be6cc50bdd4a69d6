"""Solvers that are not one x_t -> x_{t-1} rule: DAPS and RED-diff, as the smallest drivers.

Both reuse the loop's primitives and nothing else: the network call ``prior.eps``, Tweedie
:func:`~cmidps.diffusion.x0_from_eps`, the respaced :class:`~cmidps.diffusion.Schedule`, the operator's
``A`` (any differentiable one: the data-fit gradients are taken by autograd, so nonlinear operators
work), and :func:`~cmidps.sampling.randn` for seeded, per-sample noise.

* :func:`daps`    DAPS (Zhang et al., CVPR 2025, Alg. 1): decoupled annealing; at every noise level the
  x0 estimate (Tweedie, or a short DDIM ODE) seeds Langevin dynamics on
  p(x0 | x_t, y) ~ N(x0; x0_hat, r_t^2 I) p(y | x0), and x0 is re-noised to the next level.
* :func:`reddiff` RED-diff (Mardani et al., ICLR 2024, Alg. 1): the variational mean mu, optimised
  by Adam on ||y - A mu||^2 plus the SNR-weighted denoising regulariser lam_t <sg(eps_theta(x_t) - eps), mu>.

CMI does not fit either: DAPS's x_{t'} is a fresh noising of a Langevin sample of x0 (there is no
proposal x'_{t-1} of x_t for the CMI step to move, and a drift evaluated at x_t would be added to a
point drawn independently of it); RED-diff has no trajectory at all (x_t is drawn anew from mu at
every step, and discarded). See docs/solvers.md.
"""
from __future__ import annotations

import math

import torch

from ..diffusion import Schedule, step_count, x0_from_eps
from ..linalg import bview
from ..sampling import SamplingDiverged, randn


def _data_fit(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ||y - A(x)||^2, differentiable in x: (B,)."""
    return (y - op.A(x)).flatten(1).pow(2).sum(1)


def _grad_data_fit(op, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x 1/2 ||y - A(x)||^2 per sample: A^T (A x - y) for a linear A, by autograd for a nonlinear one."""
    if not getattr(op, "nonlinear", False):
        return op.A_adjoint(op.A(x) - y)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(0.5 * _data_fit(op, x, y).sum(), x)
    return g


def _check_finite(x: torch.Tensor, where: str) -> None:
    if not torch.isfinite(x).all():
        raise SamplingDiverged(f"the sample became non-finite at {where}: lower the step size or use more steps")


# --- DAPS --------------------------------------------------------------------------------------------
def annealing_schedule(prior, steps: int, sigma_min: float = 0.1) -> Schedule:
    """``steps`` training steps evenly spaced from the last (noisiest) down to the first whose
    variance-exploding noise level sigma_t = sqrt((1 - abar_t) / abar_t) reaches ``sigma_min``
    (DAPS anneals sigma from 100 to 0.1)."""
    steps = step_count(steps, "daps")  # a respacing string ("ddim50") does not apply to DAPS's own levels
    abar = prior.schedule.abar
    ve = ((1.0 - abar) / abar).sqrt()
    t_min = int(torch.nonzero(ve >= sigma_min)[0]) if bool((ve >= sigma_min).any()) else len(abar) - 1
    t_max = len(abar) - 1
    n = min(steps, t_max - t_min + 1)
    kept = [t_max] if n == 1 else [round(t_min + k * (t_max - t_min) / (n - 1)) for k in range(n)]
    return Schedule(prior.schedule.train_betas, kept)


def ode_x0(prior, x: torch.Tensor, t: int, ode_steps: int = 1) -> torch.Tensor:
    """The x0 estimate of DAPS from x_t: Tweedie for ``ode_steps = 1``, else the deterministic DDIM
    ODE from t to 0 in ``ode_steps`` network evaluations (evenly spaced training steps), returning the
    last Tweedie estimate. No graph."""
    full = prior.schedule
    ts = [round(t - k * t / ode_steps) for k in range(ode_steps)] if ode_steps > 1 else [t]
    with torch.no_grad():
        for k, tk in enumerate(ts):
            c = full.at(tk)
            eps, _ = prior.eps(x, tk)
            x0 = x0_from_eps(x, eps, c)
            if k + 1 < len(ts):
                ab = float(full.abar[ts[k + 1]])
                x = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps
    return x0


def daps_langevin(op, y: torch.Tensor, x0_hat: torch.Tensor, r2: float, tau: float, lr: float, n_steps: int,
                  generator) -> torch.Tensor:
    """Langevin dynamics on log p(x0 | x_t, y) ~ -||x0 - x0_hat||^2 / (2 r_t^2) - ||y - A(x0)||^2 / (2 tau^2)
    (DAPS Eq. 9-10): x0 <- x0 - lr grad U(x0) + sqrt(2 lr) xi, starting at x0_hat."""
    x0 = x0_hat.clone()
    for _ in range(n_steps):
        grad = (x0 - x0_hat) / r2 + _grad_data_fit(op, x0, y) / tau**2
        xi = randn(x0.shape, generator, x0.dtype, x0.device)
        x0 = x0 - lr * grad + math.sqrt(2.0 * lr) * xi
    return x0


def daps(prior, op, y: torch.Tensor, sigma_y: float = 0.05, steps: int = 50, generator=None, x_T=None,
         batch: int | None = None, ode_steps: int = 1, langevin_steps: int = 20, lr: float = 1e-4,
         lr_min_ratio: float = 0.01, tau: float | None = None, sigma_min: float = 0.1,
         nfe: int | None = None, progress: bool = False) -> torch.Tensor:
    """DAPS (Zhang et al. 2025, Alg. 1). For each annealing level t (noisiest first):

        x0_hat = ODE / Tweedie estimate from x_t               (``ode_steps`` network evaluations)
        x0     ~ Langevin on p(x0 | x_t, y), r_t^2 = (1 - abar_t) / abar_t, ``langevin_steps`` steps
                 of size lr_k = lr (1 + k / N (lr_min_ratio - 1))
        x_{t'} = sqrt(abar_{t'}) x0 + sqrt(1 - abar_{t'}) z    (t' the next level)

    and returns the last x0. ``tau``: the likelihood's noise std (default ``sigma_y``; the DAPS code's
    ``tau`` is a tuned parameter). The network-evaluation budget is ``steps * ode_steps``; pass
    ``nfe`` to set it instead (then ``steps = nfe // ode_steps``). The Langevin chain needs no network
    evaluation: only A and its gradient.

    Departures: the variance-preserving chain of the model (levels evenly spaced training steps with
    sigma_VE >= ``sigma_min``, not EDM's polynomial schedule from sigma 100, here up to the chain's ~157);
    plain Langevin steps (the code's SGD step with added noise, the same update).
    """
    if nfe is not None:
        steps = max(1, nfe // ode_steps)
    tau = float(sigma_y) if tau is None else float(tau)
    sched = annealing_schedule(prior, steps, sigma_min)
    if x_T is None:
        n = batch if batch is not None else y.shape[0]
        x_T = randn((n, *prior.shape), generator, y.dtype, y.device)
    x = x_T
    n_levels = len(sched)
    for k, c in enumerate(sched.reverse()):
        x0_hat = ode_x0(prior, x, c.t, ode_steps)
        r2 = (1.0 - c.abar) / c.abar
        lr_k = lr * (1.0 + k / n_levels * (lr_min_ratio - 1.0))
        x0 = daps_langevin(op, y, x0_hat, r2, tau, lr_k, langevin_steps, generator)
        _check_finite(x0, f"DAPS level {k + 1} of {n_levels} (t={c.t})")
        if c.i == 0:
            return x0.detach()
        z = randn(x0.shape, generator, x0.dtype, x0.device)
        x = math.sqrt(c.abar_prev) * x0 + math.sqrt(1.0 - c.abar_prev) * z
    return x0.detach()


# --- RED-diff ----------------------------------------------------------------------------------------
def reddiff_weight(c, lam: float) -> float:
    """lam_t = lam * sigma_t / alpha_t = lam sqrt((1 - abar_t) / abar_t): the inverse-SNR weight (RED-diff Eq. 11)."""
    return lam * math.sqrt((1.0 - c.abar) / c.abar)


def reddiff(prior, op, y: torch.Tensor, sigma_y: float = 0.05, steps: int = 100, generator=None,
            batch: int | None = None, lr: float = 0.25, lam: float = 0.25, obs_weight: float = 1.0,
            init: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """RED-diff (Mardani et al. 2024, Alg. 1). mu starts at A^+ y (linear A) or 0 (``init`` overrides);
    for t on the respaced chain, noisiest first:

        eps ~ N(0, I),  x_t = sqrt(abar_t) mu + sqrt(1 - abar_t) eps,  e = eps_theta(x_t, t)  (no graph)
        loss(mu) = obs_weight ||y - A(mu)||^2 / (2 m) + lam_t <sg(e - eps), mu> / d
        mu <- Adam step on loss (betas 0.9, 0.99)

    with lam_t of :func:`reddiff_weight`. Returns mu. One network evaluation per step and no
    backward through the network. Per sample: the code's means over the batch become per-sample
    means (Adam is elementwise, so the samples stay independent). ``sigma_y`` is unused: RED-diff
    weighs the data term by ``obs_weight``, not by 1 / sigma_y^2.
    """
    sched = prior.schedule.respace(steps)
    n = batch if batch is not None else y.shape[0]
    if init is None:
        if getattr(op, "nonlinear", False):
            init = torch.zeros((n, *prior.shape), dtype=y.dtype, device=y.device)
        else:
            init = op.A_pinv(y).expand(n, *prior.shape)
    mu = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.99))
    m, d = math.prod(op.y_shape), math.prod(prior.shape)
    for c in sched.reverse():
        eps = randn(mu.shape, generator, mu.dtype, mu.device)
        with torch.no_grad():
            x_t = math.sqrt(c.abar) * mu + c.sigma * eps
            e, _ = prior.eps(x_t, c.t)
        with torch.enable_grad():
            opt.zero_grad()
            reg = ((e - eps).detach() * mu).flatten(1).sum(1) / d
            loss = obs_weight * _data_fit(op, mu, y) / (2 * m) + reddiff_weight(c, lam) * reg
            loss.sum().backward()
        opt.step()
        _check_finite(mu.detach(), f"RED-diff step t={c.t}")
    return mu.detach()


DRIVERS = {"daps": daps, "reddiff": reddiff}
DRIVER_STEP_PARAM = {"daps": "lr", "reddiff": "lr"}
