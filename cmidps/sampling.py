"""One reverse-diffusion loop, shared by every sampler, and the samplers' step rules.

Each step (numbers refer to Algorithm 1 of the CMI paper):

1. one network evaluation at x_t, with a graph (line 4),
2. Tweedie: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (line 5); with ``likelihood_clip``
   the likelihood terms (and the CMI term) see clamp(x0_hat, -1, 1), the gradient flowing through the
   clamp, as the DPS code does (its ``p_mean_variance(clip_denoised=True)``); without, x0_hat itself
   (Algorithm 1 literally),
3. the unconditional proposal x'_{t-1} = coef_xt x_t + coef_x0 x0_hat + sigma_t z (lines 6-7; DDPM
   ancestral step, or DDIM with ``ddim_eta``),
4. the CMI step x'_{t-1} += eta_t grad I(x0; y | x_t), if enabled (line 8),
5. the sampler's rule maps the :class:`StepState` to x_{t-1} (line 9 for DPS).

A rule is a function ``rule(state) -> x_{t-1}``; the samplers' rules live in :mod:`cmidps.samplers`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .cmi import CMIConfig, DifferenceCMI, cmi_objective, difference_cmi
from .diffusion import StepCoefficients, learned_log_variance, x0_from_eps
from .linalg import bview


class SamplingDiverged(RuntimeError):
    """The reverse diffusion produced non-finite values."""


@dataclass
class StepState:
    """What a rule sees at one step. ``x_t`` requires grad and ``x0_hat`` carries its graph.

    ``x0_lik`` is x0_hat as it enters the likelihood terms: ``clamp(x0_hat, -1, 1)`` (with its graph:
    zero gradient where clamped) under ``likelihood_clip``, else ``x0_hat``. Every residual, norm and
    vector-Jacobian product below uses it, so J means d x0_lik / d x_t.

    ``x_prop`` is x'_{t-1} with the CMI term added (Algorithm 1, line 8). The CMI gradient is taken
    lazily: a rule that only needs ``x_prop + w J^T v`` asks for :meth:`guided`, which gets the CMI
    double backward and the sampler's own backward in one pass.

    With ``cmi_fd`` (the difference gradients, ``CMIConfig.grad`` ``fd`` / ``central``) the CMI term is
    ``J^T v_x`` (fused into the backward at x) plus one forward and backward per shifted point
    (:class:`~cmidps.cmi.DifferenceCMI`); :meth:`guided` then frees this step's graph in its backward
    (one graph at a time: DPS's memory), so a rule must call it last.
    """

    c: StepCoefficients
    x_t: torch.Tensor
    x0_hat: torch.Tensor
    eps: torch.Tensor
    mean: torch.Tensor  # mu_t, the mean of the unconditional proposal (detached)
    std: torch.Tensor  # per-element std of the proposal noise (0 at the last step)
    noise: torch.Tensor  # z
    x_prop_base: torch.Tensor  # mean + std z, before the CMI term
    op: object
    y: torch.Tensor
    sigma_y: float
    cmi_objective: torch.Tensor | None = None  # eta_t * (scalar whose x-gradient is grad I)
    x0_lik: torch.Tensor | None = None  # x0_hat as the likelihood sees it (None: x0_hat)
    cmi_fd: DifferenceCMI | None = None  # eta_t * grad I by differences (CMIConfig.grad fd / central)
    _x_prop: torch.Tensor | None = None
    _released: bool = False

    def __post_init__(self):
        if self.x0_lik is None:
            self.x0_lik = self.x0_hat

    @property
    def x_prop(self) -> torch.Tensor:
        """x'_{t-1} = mean + std z + eta_t grad I (detached)."""
        if self._x_prop is None:
            self._x_prop = self.x_prop_base
            if self.cmi_objective is not None:
                (g,) = torch.autograd.grad(self.cmi_objective, self.x_t, retain_graph=True)
                self._x_prop = self.x_prop_base + g.detach()
            elif self.cmi_fd is not None:
                self._check_graph()
                g = self.cmi_fd.extra()
                if self.cmi_fd.at_x is not None:
                    (g_x,) = torch.autograd.grad(self.x0_hat, self.x_t, self.cmi_fd.at_x, retain_graph=True)
                    g = g + g_x
                self._x_prop = self.x_prop_base + g.detach()
        return self._x_prop

    def _check_graph(self):
        if self._released:
            raise RuntimeError("this step's graph was freed by guided() (the difference CMI gradient frees it to "
                               "keep one graph at a time): call vjp() / x_prop before guided()")

    def vjp(self, v: torch.Tensor) -> torch.Tensor:
        """J^T v with J = d x0_lik / d x_t (one backward through the network)."""
        self._check_graph()
        (g,) = torch.autograd.grad(self.x0_lik, self.x_t, v, retain_graph=True)
        return g

    def guided(self, v: torch.Tensor, weight: float) -> torch.Tensor:
        """x'_{t-1} + weight J^T v, with the CMI term, in a single backward pass through x_t's graph
        (plus, for the difference gradients, the passes at the shifted points, after x_t's graph is freed)."""
        if self._x_prop is None and self.cmi_objective is not None:
            total = self.cmi_objective + weight * (self.x0_lik * v.detach()).sum()
            (g,) = torch.autograd.grad(total, self.x_t, retain_graph=True)
            return self.x_prop_base + g
        if self._x_prop is None and self.cmi_fd is not None:
            self._check_graph()
            total = weight * (self.x0_lik * v.detach()).sum()
            if self.cmi_fd.at_x is not None:
                total = total + (self.x0_hat * self.cmi_fd.at_x).sum()
            (g,) = torch.autograd.grad(total, self.x_t)  # frees x_t's graph before the shifted passes
            self._released = True
            return self.x_prop_base + g + self.cmi_fd.extra()
        return self.x_prop + weight * self.vjp(v)

    def residual(self) -> torch.Tensor:
        """y - A x0_lik (detached)."""
        return (self.y - self.op.A(self.x0_lik)).detach()

    def residual_norm_grad_x0(self) -> torch.Tensor:
        """The gradient of ||y - A x0_lik|| with respect to x0_lik: -A^T r / ||r||, per sample."""
        r = self.residual()
        norm = r.flatten(1).norm(dim=1).clamp_min(1e-12)
        if getattr(self.op, "nonlinear", False):  # J_A(x0_lik)^T r for a nonlinear A (cmidps.nonlinear)
            return -self.op.vjp(self.x0_lik, r) / bview(norm, r)
        return -self.op.A_adjoint(r) / bview(norm, r)

    def grad_residual_norm(self) -> torch.Tensor:
        """grad_{x_t} ||y - A x0_lik||, the norm (not its square) per sample (DPS, Eq. 16 of DPS)."""
        return self.vjp(self.residual_norm_grad_x0())


def _proposal(x: torch.Tensor, x0_hat: torch.Tensor, eps: torch.Tensor, var_values, c: StepCoefficients,
              clip: bool, ddim_eta: float | None):
    """The unconditional step's mean and std (Algorithm 1 line 7; DDIM Eq. 12 with ``ddim_eta``)."""
    x = x.detach()
    x0 = x0_hat.detach()
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    if ddim_eta is None:
        mean = c.coef_xt * x + c.coef_x0 * x0
        if var_values is not None:
            std = torch.exp(0.5 * learned_log_variance(var_values.detach(), c))
        else:
            std = torch.full_like(x, math.exp(0.5 * c.posterior_log_var_clipped))
    else:
        eps_c = (x - c.abar**0.5 * x0) / c.sigma  # epsilon consistent with the (clipped) x0
        sig = ddim_eta * math.sqrt((1 - c.abar_prev) / (1 - c.abar) * (1 - c.abar / c.abar_prev))
        mean = c.abar_prev**0.5 * x0 + math.sqrt(max(1 - c.abar_prev - sig**2, 0.0)) * eps_c
        std = torch.full_like(x, sig)
    if c.i == 0:
        std = torch.zeros_like(x)
    return mean, std


def randn(shape, generator, dtype, device) -> torch.Tensor:
    """Standard normal draws from a generator, or from a list of per-sample generators (one row
    each), so that a sample's noise does not depend on the batch it runs in."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)


def sample(prior, op, y: torch.Tensor, rule: Callable[[StepState], torch.Tensor], steps: int,
           generator, sigma_y: float = 0.05, x_T: torch.Tensor | None = None,
           batch: int | None = None, cmi: CMIConfig | None = None, cmi_generator=None,
           ddim_eta: float | None = None, progress: bool = True, desc: str = "sampling",
           likelihood_clip: bool | None = None, amp: torch.dtype | None = None) -> torch.Tensor:
    """Run the reverse diffusion from x_T ~ N(0, I) and return x_0.

    ``amp``: run the network evaluation (step 1) under ``torch.autocast`` in this dtype (e.g.
    ``torch.bfloat16``); its output is cast back, so Tweedie, the rules, the CMI probes and the K^-1
    solves stay in the dtype of ``y``. The backward passes through the network (DPS, CMI) follow the
    autocast dtypes of the forward. See docs/performance.md for what it does to the CMI estimate.

    ``likelihood_clip``: how x0_hat enters every likelihood term and the CMI term (see
    :class:`StepState`): clamped to [-1, 1] (the DPS code) or not (Algorithm 1 literally). ``None``
    (default) clamps for priors whose data live in [-1, 1] (``prior.clip_x0``).

    ``y`` is (B, *y_shape) or (1, *y_shape) broadcast over the batch. Sampler noise comes only from
    ``generator`` and CMI probes only from ``cmi_generator``, so X and CMI+X share their noise; each
    may be a list of per-sample generators (then results do not depend on the batch size).
    Raises :class:`SamplingDiverged` naming the step and the option to lower if the sample stops being
    finite or blows up (:class:`DivergenceGuard`).
    """
    sched = prior.schedule.respace(steps)
    dtype = y.dtype
    if x_T is None:
        n = batch if batch is not None else y.shape[0]
        x_T = randn((n, *prior.shape), generator, dtype, y.device)
    x = x_T
    if not torch.isfinite(y).all():
        raise ValueError("the measurement y contains non-finite values")
    cmi_active = cmi is not None and cmi.eta != 0.0
    if cmi_active and cmi.grad == "fd" and amp is not None:
        raise ValueError("the difference CMI gradient (--cmi-grad fd) differences J^T a at x, whose network pass runs "
                         f"in {str(amp).replace('torch.', '')} under --amp: use --cmi-grad central (its two differenced "
                         "passes run in float32) or autodiff, or drop --amp")
    clip_lik = bool(getattr(prior, "clip_x0", False)) if likelihood_clip is None else bool(likelihood_clip)
    guard = DivergenceGuard(prior)
    bar = tqdm(list(sched.reverse()), desc=desc, disable=not progress, leave=False)
    for c in bar:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                eps, var_values = prior.eps(x, c.t)  # 1. the one network evaluation of this step
            if amp is not None:
                eps, var_values = eps.to(dtype), None if var_values is None else var_values.to(dtype)
            x0_hat = x0_from_eps(x, eps, c)  # 2. Tweedie
            x0_lik = x0_hat.clamp(-1.0, 1.0) if clip_lik else x0_hat  # what the likelihood terms see
            mean, std = _proposal(x, x0_hat, eps, var_values, c, prior.clip_x0, ddim_eta)
            z = randn(x.shape, generator, dtype, x.device)
            x_prop = mean + std * z  # 3. x'_{t-1}
            objective = fd = None
            if cmi_active and cmi.eta_at(c) != 0.0:  # 4. the CMI step (its gradient is taken lazily)
                op_c = op.linearized(x0_lik.detach()) if hasattr(op, "linearized") else op  # Gauss-Newton J_A
                if cmi.grad == "autodiff":
                    objective = cmi.eta_at(c) * cmi_objective(x, x0_hat, c, op_c, sigma_y, cmi, cmi_generator,
                                                              clip=clip_lik)
                else:  # differences of VJPs: the shifted passes run in the dtype of y (float32 under amp)
                    fd = difference_cmi(x, x0_hat, c, op_c, sigma_y, cmi, _tweedie_at(prior, c), cmi_generator,
                                        clip=clip_lik, weight=cmi.eta_at(c))
            state = StepState(c, x, x0_hat, eps, mean, std, z, x_prop.detach(), op, y, sigma_y, objective,
                              x0_lik, fd)
            x_new = rule(state).detach()  # 5. the sampler's rule
            del state, objective, fd, eps, x0_hat, x0_lik, var_values  # free this step's graphs before the next forward
        blown = guard.check(x_new, c)
        if blown is not None:
            where = f"at step {len(sched) - c.i} of {len(sched)} (t={c.t}) for batch element(s) {blown[1][:8]}"
            lower = "the CMI step size (--eta)" if cmi_active else "the step size (--zeta / --weight / --gamma)"
            raise SamplingDiverged(f"the sample {blown[0]} {where}: lower {lower} or use more steps")
        x = x_new
    return x.detach()


def _tweedie_at(prior, c: StepCoefficients):
    """z -> the unclamped Tweedie estimate x0_hat(z) at step c (one network evaluation, no autocast)."""
    def x0_fn(z: torch.Tensor) -> torch.Tensor:
        eps, _ = prior.eps(z, c.t)
        return x0_from_eps(z, eps.to(z.dtype), c)
    return x0_fn


def trajectory_ratio(x: torch.Tensor, c, radius: float) -> torch.Tensor:
    """Per-sample RMS of x_{t-1} over the RMS the schedule implies for data of RMS ``radius``:
    x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1}) noise has RMS sqrt(abar_{t-1} R^2 + 1 - abar_{t-1})."""
    expected = math.sqrt(c.abar_prev * radius**2 + (1.0 - c.abar_prev))
    return x.detach().flatten(1).pow(2).mean(1).sqrt() / expected


class DivergenceGuard:
    """Stops a run that left the range the schedule implies: non-finite values, or an RMS more than
    ``factor`` times the expected one (:func:`trajectory_ratio`) for ``patience`` consecutive steps or at
    the last step. Needs the data's RMS bound (``prior.data_radius``; 1 for priors whose data live in
    [-1, 1]); without one only non-finite values are caught. One host sync per step."""

    factor, patience = 10.0, 3

    def __init__(self, prior):
        radius = getattr(prior, "data_radius", None)
        self.radius = 1.0 if radius is None and getattr(prior, "clip_x0", False) else radius
        self.streak = None  # per sample: consecutive steps over the bound

    def check(self, x: torch.Tensor, c):
        """None, or (what happened, the batch elements it happened to)."""
        finite = torch.isfinite(x.flatten(1)).all(1)
        if self.radius is None:
            ratio = torch.zeros_like(finite, dtype=x.dtype)
        else:
            ratio = trajectory_ratio(torch.nan_to_num(x), c, self.radius)
        over = ((~finite) | (ratio > self.factor)).cpu()  # the one host sync of the step
        if self.streak is None:
            self.streak = torch.zeros(len(over), dtype=torch.long)
        self.streak = (self.streak + 1) * over
        if not bool(over.any()):
            return None
        if not bool(finite.all()):
            return "became non-finite", (~finite).nonzero().flatten().tolist()
        hit = (self.streak >= self.patience) | (over & (c.i == 0))
        if not bool(hit.any()):
            return None
        r = float(ratio.max())
        return f"blew up (its RMS reached {r:.0f}x what the schedule implies)", hit.nonzero().flatten().tolist()
