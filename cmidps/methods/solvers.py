"""The field's stronger solvers as step rules of the one reverse loop (:func:`cmidps.sampling.sample`).

Each rule maps the loop's :class:`~cmidps.sampling.StepState` to x_{t-1}, using only the loop's
primitives: the step's one network evaluation (x0_hat by Tweedie, ``s.x0_hat``), the operator's
``A`` / ``A_adjoint`` / ``A_pinv`` / ``solve_K``, the step's noise ``s.noise`` (no rule draws random
numbers of its own) and, for TMPD, the denoiser's Jacobian products.

* ``ddnm``      DDNM (Wang et al., ICLR 2023, Alg. 1): range-null-space decomposition with A^+,
* ``ddnm_plus`` DDNM+ (same paper, Eq. 17-19): the noisy variant,
* ``diffpir``   DiffPIR (Zhu et al., CVPRW 2023, Alg. 1): half-quadratic splitting, the data step in
  closed form through ``solve_K``,
* ``tmpd``      TMPD (Boys et al., TMLR 2024): the likelihood p(y | x_t) ~ N(A x0_hat, sigma_y^2 I + A C A^T)
  with the Tweedie covariance C = (sigma_t^2 / sqrt(abar_t)) J, K^-1 by conjugate gradients with JVPs.

CMI (``cmi+X``): every rule here has an x_t -> x_{t-1} step, so the CMI step of Algorithm 1 (line 8)
moves it as it moves x'_{t-1} in DPS: the loop's CMI drift ``eta_t grad I`` (``s.x_prop - s.x_prop_base``)
is added to the rule's x_{t-1}. Rules that build their own x_{t-1} from x0 (DDNM, DiffPIR) add the
drift explicitly; TMPD adds its guidance to ``s.x_prop``, which already holds it.

x0_hat in every rule below is the loop's ``s.x0_lik``: clamped to [-1, 1] under ``likelihood_clip``
(the default for image priors, as the loop's own proposal clamps it), else the Tweedie estimate itself
(the Gaussian-mixture priors).

Every rule needs A^+ or K-solves, i.e. a linear operator: a nonlinear one
(:class:`cmidps.nonlinear.NonlinearOperator`) is refused with a clear error (:func:`require_linear`).

* ``ddrm``      DDRM (Kawar et al., NeurIPS 2022, Eq. 7-8): per singular value of A, in the SVD basis,
* ``ddnm_svd``  DDNM+ with its per-singular-value lam_t and gamma_t (the DDNM code's SVD variant).

DDRM and ``ddnm_svd`` need the SVD ``A = U S V^T`` applied to signals: :func:`svd_form` gives it for
the operators whose SVD is explicit (dense matrices, masks, circular blurs through the DFT,
separable super-resolution through the SVDs of its two factors) and refuses the others.
"""
from __future__ import annotations

import math
import weakref

import torch

from ..cmi import make_kinv
from ..operators import CircularBlur, DenseOperator, MaskOperator, SeparableOperator
from ..sampling import StepState


def require_linear(op, method: str) -> None:
    """Refuse an operator without A^+ and K-solves (a nonlinear one) with a one-line error."""
    if getattr(op, "nonlinear", False):
        raise ValueError(f"{method} needs a linear operator (A^+ / K-solves); {type(op).__name__} is nonlinear: "
                         "use dps, daps or reddiff")


def cmi_drift(s: StepState) -> torch.Tensor:
    """The CMI step eta_t grad I(x0; y | x_t) of this step (0 without CMI), to add to x_{t-1}."""
    if s.cmi_objective is None and s.cmi_fd is None:
        return torch.zeros_like(s.x_prop_base)
    return s.x_prop - s.x_prop_base


def _posterior_step(s: StepState, x0: torch.Tensor, std) -> torch.Tensor:
    """x_{t-1} = coef_xt x_t + coef_x0 x0 + std z (+ the CMI drift): the DDPM posterior q(x_{t-1} | x_t, x0)."""
    return s.c.coef_xt * s.x_t.detach() + s.c.coef_x0 * x0 + std * s.noise + cmi_drift(s)


# --- DDNM / DDNM+ -----------------------------------------------------------------------------------
def ddnm_x0(s: StepState, lam=1.0) -> torch.Tensor:
    """The range-null-space correction (DDNM Eq. 13 / DDNM+ Eq. 17):

        x0|t = x0_hat - lam A^+ (A x0_hat - y)     (= A^+ y + (I - A^+ A) x0_hat for lam = 1, A A^+ A = A)
    """
    require_linear(s.op, "DDNM")
    x0 = s.x0_lik.detach()
    return x0 - lam * s.op.A_pinv(s.op.A(x0) - s.y)


def ddnm(s: StepState) -> torch.Tensor:
    """DDNM (Wang et al. 2023, Alg. 1): x_{t-1} ~ q(x_{t-1} | x_t, x0|t) with the corrected x0|t of
    :func:`ddnm_x0` (noise-free measurements: the row space of x0 is set to A^+ y).

    Departures from the DDNM code: the DDPM posterior step (their Alg. 1) instead of the code's DDIM
    step with eta = 0.85, no time-travel (their Sec. 3.3); the step's std is the loop's (learned-range
    variance if the model has it).
    """
    return _posterior_step(s, ddnm_x0(s), s.std)


def ddnm_plus_scales(s: StepState):
    """DDNM+'s lam_t and gamma_t (Eq. 19) for unit singular values:

        sigma_t >= a_t sigma_y:  lam_t = 1,                         gamma_t = sigma_t^2 - (a_t sigma_y)^2
        otherwise:               lam_t = sigma_t / (a_t sigma_y),   gamma_t = 0

    with sigma_t the std of q(x_{t-1} | x_t, x0) (``s.std``) and a_t = coef_x0 its weight on x0: the
    correction's noise a_t lam_t A^+ n plus the fresh noise sqrt(gamma_t) z keeps the step's variance
    at sigma_t^2. Returns (lam_t, sqrt(gamma_t)), elementwise like ``s.std``.
    """
    a_sy = s.c.coef_x0 * float(s.sigma_y)
    sigma = s.std
    if a_sy == 0.0:
        return torch.ones_like(sigma), sigma
    lam = (sigma / a_sy).clamp(max=1.0)
    gamma = (sigma**2 - a_sy**2).clamp(min=0.0)
    return lam, gamma.sqrt()


def ddnm_plus(s: StepState) -> torch.Tensor:
    """DDNM+ (Wang et al. 2023, Eq. 17-19): x0|t = x0_hat - lam_t A^+ (A x0_hat - y), then
    x_{t-1} = coef_xt x_t + a_t x0|t + sqrt(gamma_t) z.

    Departures: lam_t and gamma_t use unit singular values (the DDNM code's ``simplified`` DDNM+,
    exact for masks; the SVD variant scales them per singular value s_i by sigma_y -> sigma_y / s_i);
    the DDPM posterior step instead of the code's DDIM step; no time-travel.
    """
    lam, std = ddnm_plus_scales(s)
    return _posterior_step(s, ddnm_x0(s, lam), std)


# --- DiffPIR -----------------------------------------------------------------------------------------
def diffpir_rho(s: StepState, lam: float) -> float:
    """rho_t = lam sigma_y^2 / sigmabar_t^2 with sigmabar_t^2 = (1 - abar_t) / abar_t (DiffPIR Eq. 13)."""
    return lam * float(s.sigma_y) ** 2 * s.c.abar / (1.0 - s.c.abar)


def diffpir_data_step(s: StepState, x0: torch.Tensor, rho: float) -> torch.Tensor:
    """The data subproblem (DiffPIR Eq. 14) in closed form:

        argmin_z ||y - A z||^2 + rho ||z - x0||^2 = x0 + A^T (rho I + A A^T)^{-1} (y - A x0),

    the K-solve ``solve_K(., r2=1, s2=rho)`` (closed form for masks, blurs, SR and dense A; CG
    otherwise).
    """
    require_linear(s.op, "DiffPIR")
    return x0 + s.op.A_adjoint(s.op.solve_K(s.y - s.op.A(x0), 1.0, rho))


def diffpir(s: StepState, lam: float = 7.0, zeta: float = 0.3) -> torch.Tensor:
    """DiffPIR (Zhu et al. 2023, Alg. 1), one step:

        x0_hat = Tweedie(x_t)                                   (the prior step, Eq. 11)
        x0'    = data step of x0_hat with rho_t                 (Eq. 14, :func:`diffpir_data_step`)
        eps'   = (x_t - sqrt(abar_t) x0') / sqrt(1 - abar_t)
        x_{t-1} = sqrt(abar_{t-1}) x0' + sqrt(1 - abar_{t-1}) (sqrt(1 - zeta) eps' + sqrt(zeta) z)   (Eq. 15)

    lam: the data-prior trade-off; zeta: the noise share of the step (zeta = 1: a fresh draw).
    The sub-sampled schedule of the paper is the loop's respacing (``steps``). Departures: sigma_y is
    the noise std in the model range [-1, 1] (the DiffPIR code's sigma is in [0, 1], so its lam = 7
    corresponds to lam = 7/4 here: the defaults are the paper's and the GMM benchmark tunes lam);
    uniform respacing only (the code's quadratic skip is not offered); the CMI drift is added to x_{t-1}.
    """
    c = s.c
    x_t = s.x_t.detach()
    x0 = diffpir_data_step(s, s.x0_lik.detach(), diffpir_rho(s, lam))
    eps = (x_t - math.sqrt(c.abar) * x0) / math.sqrt(1.0 - c.abar)
    noise = math.sqrt(1.0 - zeta) * eps + math.sqrt(zeta) * s.noise
    return math.sqrt(c.abar_prev) * x0 + math.sqrt(1.0 - c.abar_prev) * noise + cmi_drift(s)


# --- TMPD --------------------------------------------------------------------------------------------
TMPD_COVS = ("cg", "rowsum")
PARAM_CHOICES = {"tmpd": {"cov": TMPD_COVS}}  # the rules' parameters that take a name, not a number


def tmpd_rowsums(s: StepState) -> torch.Tensor:
    """k = sigma_y^2 + A C^T A^T 1, the row sums of K with C = (sigma_t^2 / sqrt(abar_t)) J (one VJP):
    what TMPD's image path (``cov="rowsum"``) divides the residual by."""
    ones = torch.ones_like(s.y).expand(s.x_t.shape[0], *s.y.shape[1:])
    (jt,) = torch.autograd.grad(s.x0_hat, s.x_t, s.op.A_adjoint(ones), retain_graph=True)
    return float(s.sigma_y) ** 2 + s.op.A(s.c.sigma**2 / math.sqrt(s.c.abar) * jt).detach()


def tmpd_direction(s: StepState, cg_iters: int = 20, cov: str = "cg") -> torch.Tensor:
    """v = A^T K^{-1} (y - A x0_hat), K = sigma_y^2 I + A C A^T, C = (sigma_t^2 / sqrt(abar_t)) J (TMPD Eq. 9).

    ``cov="cg"``: K^{-1} by conjugate gradients whose matrix products are denoiser JVPs (``cmi.make_kinv``,
    ``kinv="cg"``); the TMPD code's full-Jacobian path (its GMM and small problems).
    ``cov="rowsum"``: K replaced by the diagonal of its row sums, ``sigma_y^2 + A C^T A^T 1`` (one
    vector-Jacobian product), then ``v = A^T ((y - A x0_hat) / k)`` elementwise; the TMPD code's image
    path (its ``KGDMVPplus`` applies ``A`` to a ones image, ``A 1_x``, where this uses ``1_y``;
    ``A 1_x = 1_y`` for masks, blurs whose kernels sum to 1 and the bicubic sr4, so the two agree on
    every task here). A learned network's J need not be
    symmetric positive semi-definite, so K (and k) can be indefinite far from the data: the CG path
    is then not a solve (docs/solvers.md measures where this happens on the bundled prior).
    """
    require_linear(s.op, "TMPD")
    if cov == "rowsum":
        return s.op.A_adjoint(s.residual() / tmpd_rowsums(s)).detach()
    if cov != "cg":
        raise ValueError(f"TMPD cov must be one of {TMPD_COVS}, not {cov!r}")
    kinv = make_kinv(s.op, s.c, s.sigma_y, s.x_t, s.x0_hat, "cg", cg_iters)
    return s.op.A_adjoint(kinv(s.residual())).detach()


def tmpd(s: StepState, weight: float = 1.0, cg_iters: int = 20, cov: str = "cg") -> torch.Tensor:
    """TMPD (Boys et al. 2024): the DDPM step with the moment-projected conditional denoiser,

        E[x0 | x_t, y] ~ x0_hat + (sigma_t^2 / sqrt(abar_t)) J^T v,     v = :func:`tmpd_direction`,

    i.e. the Tweedie estimate plus the Gaussian likelihood score grad log N(y; A x0_hat, K) (K held
    fixed) scaled by sigma_t^2 / sqrt(abar_t); then x_{t-1} = x'_{t-1} + weight coef_x0 (sigma_t^2 / sqrt(abar_t)) J^T v.
    For a Gaussian prior C is the exact Cov[x0 | x_t], J is symmetric and this is the exact E[x0 | x_t, y].

    Cost per step: 1 network evaluation and one backward for J^T v (fused with the CMI backward), plus
    for ``cov="cg"`` ``cg_iters`` JVPs (each two backward passes, double-vjp) for K^{-1}, or for
    ``cov="rowsum"`` (the TMPD code's image path; the image presets' choice) one more backward.
    Departures: J^T v (the score form) where the Kalman form has C A^T K^{-1} r = J v (equal for a
    symmetric J); CG is stopped at ``cg_iters`` or a 1e-6 relative residual; the loop's DDPM ancestral
    noise.
    """
    v = tmpd_direction(s, cg_iters, cov)
    return s.guided(v, weight * s.c.coef_x0 * s.c.sigma**2 / math.sqrt(s.c.abar))


# --- the SVD of an operator, applied to signals ------------------------------------------------------
class SVDForm:
    """``A = U S V^T`` of a linear operator as two maps with a function ``h`` of the singular values:

        x(v, h) = V h(S) V^T v     (x space; s = 0 on the null space of A),
        y(w, h) = V h(S) U^T w     (measurement space to x space, over the nonzero s only).

    ``h`` maps a tensor of singular values to a tensor of the same shape (elementwise).
    """

    def __init__(self, x_fn, y_fn):
        self.x, self.y = x_fn, y_fn


def _nonzero(h, s):
    """h(s) where s > 0, else 0."""
    pos = s > 0
    return torch.where(pos, h(torch.where(pos, s, torch.ones_like(s))), torch.zeros_like(s))


_SVD_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached_svd(op, name: str, like: torch.Tensor):
    """(U, s, Vh, s padded with zeros to Vh's size) of the buffer ``name`` of ``op``, computed once per dtype/device."""
    per_op = _SVD_CACHE.setdefault(op, {})
    key = (name, like.dtype, like.device)
    if key not in per_op:
        U, s, Vh = torch.linalg.svd(op._buf(name, like), full_matrices=True)
        s_full = torch.zeros(Vh.shape[0], dtype=like.dtype, device=like.device)
        s_full[: s.numel()] = s
        per_op[key] = (U, s, Vh, s_full)
    return per_op[key]


def svd_form(op) -> SVDForm:
    """The :class:`SVDForm` of ``op`` for dense matrices, masks, circular blurs and separable operators."""
    if isinstance(op, DenseOperator):
        def parts(like):
            return _cached_svd(op, "matrix", like)

        def x_fn(v, h):
            _, _, Vh, s_d = parts(v)
            return ((v @ Vh.T) * h(s_d)) @ Vh

        def y_fn(w, h):
            U, s, Vh, _ = parts(w)
            r = s.numel()
            return ((w @ U[:, :r]) * _nonzero(h, s)) @ Vh[:r]

        return SVDForm(x_fn, y_fn)
    if isinstance(op, MaskOperator):  # U = V = I, s = mask (0 or 1) per pixel
        return SVDForm(lambda v, h: h(op._buf("mask", v)) * v,
                       lambda w, h: _nonzero(h, op._buf("mask", w)) * w)
    if isinstance(op, CircularBlur):  # A = F^-1 diag(K) F: V = F^-1, s = |K|, U = F^-1 diag(K / |K|)
        def x_fn(v, h):
            return op._apply_spectral(v, h(op._spectrum(v).abs()))

        def y_fn(w, h):
            K = op._spectrum(w)
            mag = K.abs()
            phase = torch.where(mag > 0, K.conj() / torch.where(mag > 0, mag, torch.ones_like(mag)), torch.zeros_like(K))
            return op._apply_spectral(w, _nonzero(h, mag) * phase)

        return SVDForm(x_fn, y_fn)
    if isinstance(op, SeparableOperator):  # A = D_h kron D_w: V = V_h kron V_w, s = s_h s_w^T
        def parts(like):
            return [_cached_svd(op, name, like) for name in ("D_h", "D_w")]

        def x_fn(v, h):
            (_, _, Vh_h, sh), (_, _, Vh_w, sw) = parts(v)
            return Vh_h.T @ ((Vh_h @ v @ Vh_w.T) * h(sh[:, None] * sw[None, :])) @ Vh_w

        def y_fn(w, h):
            (U_h, s_h, Vh_h, _), (U_w, s_w, Vh_w, _) = parts(w)
            rh, rw = s_h.numel(), s_w.numel()
            core = (U_h[:, :rh].T @ w @ U_w[:, :rw]) * _nonzero(h, s_h[:, None] * s_w[None, :])
            return Vh_h[:rh].T @ core @ Vh_w[:rw]

        return SVDForm(x_fn, y_fn)
    raise ValueError(f"this method needs the SVD of A applied to signals, which {type(op).__name__} does not expose "
                     "(dense, masks, circular blurs and super-resolution do): use ddnm_plus, diffpir or tmpd")


def _ve_levels(s: StepState):
    """The variance-exploding noise levels of x_t and x_{t-1}: sigma = sqrt((1 - abar) / abar)."""
    return math.sqrt((1.0 - s.c.abar) / s.c.abar), math.sqrt((1.0 - s.c.abar_prev) / s.c.abar_prev)


def ddrm(s: StepState, eta: float = 0.85, eta_b: float = 1.0) -> torch.Tensor:
    """DDRM (Kawar et al. 2022, Eq. 7-8), in the variance-exploding variable x = x_t / sqrt(abar_t) with
    sigma_t = sqrt((1 - abar_t) / abar_t), per coordinate of V^T (x0 = V^T x0_hat, ybar = S^+ U^T y,
    sigma' = sigma_{t-1}, z the step's noise):

        s_i = 0:                 x0 + sqrt(1 - eta^2) sigma' (x_t - x0) / sigma_t + eta sigma' z
        sigma' <  sigma_y / s_i: x0 + sqrt(1 - eta^2) sigma' (ybar - x0) s_i / sigma_y + eta sigma' z
        sigma' >= sigma_y / s_i: (1 - eta_b) x0 + eta_b ybar + sqrt(sigma'^2 - sigma_y^2 eta_b^2 / s_i^2) z

    then x_{t-1} = sqrt(abar_{t-1}) x (+ the CMI drift). Defaults eta = 0.85, eta_b = 1 (the paper's).
    One network evaluation per step, no backward. Departures: applied to every step of the loop's
    respaced chain (their code uses the same DDIM-style skip); x_T ~ N(0, I) as in the loop (their
    Eq. 7 also conditions x_T on ybar); z is the loop's noise (shared with CMI+X).
    """
    require_linear(s.op, "DDRM")
    svd = svd_form(s.op)
    sig, sig_p = _ve_levels(s)
    sy = float(s.sigma_y)
    x_t = s.x_t.detach() / math.sqrt(s.c.abar)
    x0 = s.x0_lik.detach()
    z = s.noise
    null = lambda v: v - svd.x(v, lambda sv: (sv > 0).to(sv.dtype))  # noqa: E731  (I - V V^T over s > 0)
    c = math.sqrt(1.0 - eta**2) * sig_p
    out = null(x0 + c * (x_t - x0) / sig + eta * sig_p * z)
    weak = lambda sv: sv * sig_p < sy  # noqa: E731  (sigma' < sigma_y / s)
    # coefficients of x0, ybar and z on the row space, per singular value
    w_x0 = lambda sv: torch.where(weak(sv), 1.0 - c * sv / sy, torch.full_like(sv, 1.0 - eta_b))  # noqa: E731
    w_y = lambda sv: torch.where(weak(sv), c * sv / sy, torch.full_like(sv, eta_b)) / sv  # noqa: E731  (ybar = y / s)
    w_z = lambda sv: torch.where(weak(sv), torch.full_like(sv, eta * sig_p),  # noqa: E731
                                 (sig_p**2 - (sy * eta_b / sv) ** 2).clamp(min=0.0).sqrt())
    row = lambda h: (lambda sv: torch.where(sv > 0, h(torch.where(sv > 0, sv, torch.ones_like(sv))),  # noqa: E731
                                            torch.zeros_like(sv)))
    out = out + svd.x(x0, row(w_x0)) + svd.y(s.y.expand(x0.shape[0], *s.y.shape[1:]), w_y) + svd.x(z, row(w_z))
    return math.sqrt(s.c.abar_prev) * out + cmi_drift(s)


def ddnm_svd(s: StepState) -> torch.Tensor:
    """DDNM+ with per-singular-value scales (Wang et al. 2023, Eq. 17-19, the SVD form):

        lam_i = min(1, sigma_t s_i / (a_t sigma_y)),  gamma_i = max(0, sigma_t^2 - (a_t sigma_y / s_i)^2),
        x0|t = x0_hat - V diag(lam_i) V^T x0_hat + V diag(lam_i / s_i) U^T y,
        x_{t-1} = coef_xt x_t + a_t x0|t + V Phi^(1/2) V^T z,   Phi_i = gamma_i (s_i > 0), sigma_t^2 (s_i = 0),

    with sigma_t the std of q(x_{t-1} | x_t, x0) (the loop's std; its first element where it is
    learned) and a_t = coef_x0. Same departures as :func:`ddnm_plus` otherwise.
    """
    require_linear(s.op, "DDNM+")
    svd = svd_form(s.op)
    sigma = float(s.std.flatten()[0])
    a_sy = max(s.c.coef_x0 * float(s.sigma_y), 1e-30)
    lam = lambda sv: torch.where(sv > 0, (sigma * sv / a_sy).clamp(max=1.0), torch.zeros_like(sv))  # noqa: E731
    x0 = s.x0_lik.detach()
    x0 = x0 - svd.x(x0, lam) + svd.y(s.y.expand(x0.shape[0], *s.y.shape[1:]), lambda sv: lam(sv) / sv)
    phi = lambda sv: torch.where(sv > 0, (sigma**2 - (a_sy / torch.where(sv > 0, sv, torch.ones_like(sv))) ** 2)  # noqa: E731
                                 .clamp(min=0.0).sqrt(), torch.full_like(sv, sigma))
    return _posterior_step(s, x0, 0.0) + svd.x(s.noise, phi)


SOLVER_RULES = {"ddnm": ddnm, "ddnm_plus": ddnm_plus, "ddnm_svd": ddnm_svd, "ddrm": ddrm, "diffpir": diffpir,
                "tmpd": tmpd}
SOLVER_STEP_PARAM = {"diffpir": "lam", "tmpd": "weight"}
