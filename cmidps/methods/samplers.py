"""The samplers as step rules of the one reverse loop (:func:`cmidps.sampling.sample`).

A rule maps the :class:`~cmidps.sampling.StepState` of a step (x_t with its graph, x0_hat, the
unconditional proposal x'_{t-1} with the CMI term already added) to x_{t-1}. Every rule therefore
works with and without CMI; ``cmi+X`` is rule X with the plug-in switched on in the loop.

Rules:

* ``dps``   DPS (Chung et al., ICLR 2023, Alg. 1),
* ``pigdm`` noisy PiGDM (Song et al., ICLR 2023, Alg. 1),
* ``mcg``   MCG (Chung et al., NeurIPS 2022, Eq. 14-15), with a correct projection,
* ``dsg``   DSG (Yang et al., ICML 2024, Alg. 1-2),
* ``none``  no guidance.

The field's stronger solvers (``ddnm``, ``ddnm_plus``, ``diffpir``, ``tmpd``) are rules too, in
:mod:`cmidps.solvers`, registered here; DAPS and RED-diff are drivers (:mod:`cmidps.drivers`).

All norms are per sample (never one norm over the batch), and no rule draws random numbers of its
own, so X and CMI+X with the same sampler generator share all their noise.

x0_hat in every likelihood term below is the state's ``x0_lik``: clamped to [-1, 1] under the loop's
``likelihood_clip`` (the default for image priors), so the gradient is zero at saturated pixels, as
in the DPS code, whose DPS and MCG take ``pred_xstart`` from ``p_mean_variance(clip_denoised=True)``;
``likelihood_clip=False`` gives the paper's Algorithm 1 literally.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch

from ..linalg import bdot, bview
from ..sampling import StepState
from .solvers import SOLVER_RULES, SOLVER_STEP_PARAM  # ddnm, ddnm_plus, diffpir, tmpd (cmidps.solvers)


def dps(s: StepState, zeta: float = 1.0) -> torch.Tensor:
    """DPS (Chung et al. 2023, Alg. 1): x_{t-1} = x'_{t-1} - zeta grad_{x_t} ||y - A x0_hat||.

    The DPS code (``PosteriorSampling``) takes this norm on the clamped x0_hat (``likelihood_clip``)
    and over the whole batch; here it is per sample. With the clamp, this rule on the loop's ancestral
    step equals the DPS code's step to 1e-9 or better over 20 steps (tests/test_parity.py).
    """
    return s.guided(s.residual_norm_grad_x0(), -zeta)


def unconditional(s: StepState) -> torch.Tensor:
    """No guidance: the prior's own ancestral step."""
    return s.x_prop


# --- PiGDM ----------------------------------------------------------------------------------------
def pigdm_guidance(s: StepState) -> torch.Tensor:
    """The PiGDM likelihood score g = J^T v (Song et al. 2023, Eq. 7-8), per sample.

    p(x0 | x_t) ~ N(x0_hat, r_t^2 I) with r_t^2 = 1 - abar_t (the VP form of their
    r_t^2 = sigma_t^2 / (1 + sigma_t^2)), so p(y | x_t) ~ N(A x0_hat, r_t^2 A A^T + sigma_y^2 I) and

        grad_{x_t} log p(y | x_t) ~ J^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)    (Eq. 8)

    with v = A^T (...)^{-1} (y - A x0_hat) held constant (stop-gradient) and J = d x0_hat / d x_t.
    For a prior N(mu, I) the Gaussian approximation is exact and so is g.
    """
    return s.vjp(pigdm_direction(s))


def pigdm_direction(s: StepState) -> torch.Tensor:
    """v = A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat), held constant."""
    r2 = 1.0 - s.c.abar
    return s.op.A_adjoint(s.op.solve_K(s.residual(), r2, float(s.sigma_y) ** 2)).detach()


def pigdm(s: StepState, weight: float = 1.0) -> torch.Tensor:
    """Noisy PiGDM (Song et al. 2023, Alg. 1): x_{t-1} = x'_{t-1} + weight sqrt(abar_t) r_t^2 g.

    Their Alg. 1 adds sqrt(abar_t) g_pinv (their alpha_t is our abar_t), with the noiseless guidance
    g_pinv = J^T A^+ (y - A x0_hat). The noisy score g of :func:`pigdm_guidance` tends to g_pinv / r_t^2
    as sigma_y -> 0 ((r^2 A A^T)^{-1} A = (A^+)^T / r^2 for full row rank A), so the step consistent with
    Alg. 1 is sqrt(abar_t) r_t^2 g (the 'adaptive weight r_t^2' of their Sec. 3; InverseBench's noisy
    PiGDM has the same factor). Without r_t^2 the step's gain on the residual is about
    s_max^2 / sigma_y^2 at small t and the sampler diverges whenever s_max > sqrt(2) sigma_y.

    Departures from the original: g is added to the loop's proposal x'_{t-1} (DDPM ancestral by
    default, DDIM with ``ddim_eta``) instead of their DDIM step; ``weight`` scales it (1 = Alg. 1).
    PiGDM has no official code and its paper's Eq. 8 uses the unclamped x0_hat: pass
    ``likelihood_clip=False`` for that form.
    """
    r2 = 1.0 - s.c.abar
    return s.guided(pigdm_direction(s), weight * math.sqrt(s.c.abar) * r2)  # x'_{t-1} + w sqrt(abar) r^2 g


# --- MCG ------------------------------------------------------------------------------------------
def mcg_project(s: StepState, x: torch.Tensor) -> torch.Tensor:
    """The MCG projection onto the measurement-consistent set (Chung et al. 2022, Eq. 15, general A):

        x <- (I - P) x + P(sqrt(abar_{t-1}) A^+ y + sqrt(1 - abar_{t-1}) z),   P = A^+ A,

    i.e. the row-space component of x is replaced by that of y noised to level t-1 (P A^+ = A^+), and
    the null-space component is kept. z is the step's noise ``s.noise``: P z and (I - P) z are
    independent, so reusing it draws no extra random numbers (X and CMI+X share noise). At the last
    step (abar_{t-1} = 1) this is x - P x + A^+ y.
    """
    op = s.op
    ab = s.c.abar_prev
    px = op.A_pinv(op.A(x))
    target = math.sqrt(ab) * op.A_pinv(s.y).expand_as(x) + math.sqrt(max(1.0 - ab, 0.0)) * op.A_pinv(op.A(s.noise))
    return x - px + target


def mcg(s: StepState, zeta: float = 1.0) -> torch.Tensor:
    """MCG (Chung et al. 2022, Alg. 1): the DPS gradient step, then :func:`mcg_project`.

    Departures from the original code: the manifold-constrained gradient is the DPS one,
    grad_{x_t} ||y - A x0_hat|| (the norm, per sample), as in the DPS code's MCG; the projection is the
    general (I - P) x + P(noised A^+ y) with the true pseudo-inverse (the DPS code's version, which uses
    its non-adjoint 'transpose', is wrong for inpainting and blur). The DPS code's MCG, like its
    DPS, uses the clamped x0_hat (``likelihood_clip``).

    For a mask m the projection is MCG's inpainting step, x <- (1 - m) x + m (sqrt(abar_{t-1}) y +
    sqrt(1 - abar_{t-1}) z). The DPS code's ``project`` for inpainting instead evaluates
    ``ortho_project(y_t) - forward(x) = (1 - m) y_t - m x`` (masks swapped, x negated), with y noised
    to the level of x_t (``q_sample(y, t)``) by fresh noise; none of this is followed. With the
    inpainting formula, this rule equals the DPS code's MCG step to 4e-13 over 20 steps
    (tests/test_parity.py).
    """
    return mcg_project(s, s.guided(s.residual_norm_grad_x0(), -zeta))


# --- DSG ------------------------------------------------------------------------------------------
def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.flatten(1).norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return v / bview(n, v)


def dsg(s: StepState, gamma: float = 0.2, interval: int = 1) -> torch.Tensor:
    """DSG (Yang et al. 2024, Alg. 1-2): a step on the sphere of the proposal's typical radius.

    On guided steps (chain index i with i % interval == 0, so the last step always is)::

        g   = grad_{x_t} ||y - A x0_hat||                (per sample)
        r   = sqrt(sum std^2) = sqrt(d) sigma_t          (radius of the step noise; Eq. 10)
        d*  = -r g / ||g||                               (steepest descent on the sphere; Eq. 11)
        d_s = x'_{t-1} - mu_t                            (the sampled direction)
        x_{t-1} = mu_t + r * normalize(d_s + gamma (d* - d_s))        (Eq. 12-13)

    other steps return x'_{t-1}. d_s includes the CMI term when it is on.

    The last step has no noise (std 0, so r = 0 and the rule would do nothing). As the DSG code does
    (its last step masks the noise but keeps the clipped log-variance), we then take
    r = sqrt(d) exp(posterior_log_var_clipped / 2) and d_s = x'_0 - mu_0 (0 without CMI): the last step
    is a gradient step of length r. Departure: interval counts positions on the respaced chain.
    The DSG code is built on the DPS code, whose x0_hat is the clamped one (``likelihood_clip``).
    """
    if s.c.i % interval != 0:
        return s.x_prop
    g = s.grad_residual_norm()
    if s.c.i == 0:
        d = s.x_prop[0].numel()
        r = torch.full((s.x_prop.shape[0],), math.sqrt(d) * math.exp(0.5 * s.c.posterior_log_var_clipped),
                       dtype=s.x_prop.dtype, device=s.x_prop.device)
    else:
        r = bdot(s.std, s.std).sqrt()
    r = bview(r, g)
    d_star = -r * _unit(g)
    d_s = s.x_prop - s.mean
    return s.mean + r * _unit(d_s + gamma * (d_star - d_s))


RULES: dict[str, Callable] = {"dps": dps, "pigdm": pigdm, "mcg": mcg, "dsg": dsg, **SOLVER_RULES,
                              "none": unconditional}

# The step-size parameter of each rule (what the benchmark tunes; DDNM and DDNM+ have none).
STEP_PARAM: dict[str, str] = {"dps": "zeta", "pigdm": "weight", "mcg": "zeta", "dsg": "gamma", **SOLVER_STEP_PARAM}


def make_rule(name: str, **params) -> Callable[[StepState], torch.Tensor]:
    if name not in RULES:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(RULES))}")
    return partial(RULES[name], **params)
