"""The CMI step inside the loop (Algorithm 1, line 8), checked against an independent computation.

On a Gaussian-mixture prior (three components in d = 3: Sigma_post depends on x_t, so grad I is not
zero) every step of :func:`cmidps.sampling.sample` is checked from inside the loop: the sampler's
x_{t-1} with CMI on equals the same rule's x_{t-1} with the proposal moved by eta_t grad I(x0; y | x_t),
where grad I is computed here, by autograd, from a closed form of Cov[x0 | x_t] for a Gaussian
mixture written in this file (it does not call the prior's score, Tweedie or any cmidps CMI code),
and eta_t from the DDPM schedule written here too. That fixes the sign and the scale of the step,
both eta schedules, every sampler that takes CMI and every gradient path of ``CMIConfig``.
"""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)
import dataclasses
import math

import pytest
import torch

import cmidps.cmi
from cmidps.cmi import CMIConfig
from cmidps.methods.samplers import make_rule
from cmidps.operators import DenseOperator
from cmidps.prior import GaussianMixturePrior
from cmidps.sampling import sample

D = torch.float64
GRADS = tuple(getattr(cmidps.cmi, "GRADS", ("autodiff",)))
# The rules whose x_{t-1} is built on the loop's proposal x'_{t-1}: CMI+X must equal X run on the
# proposal moved by eta_t grad I (for DPS, PiGDM and TMPD that is X's x_{t-1} plus eta_t grad I; MCG
# then projects it; DSG renormalises it on its sphere).
ON_PROPOSAL = {"dps": dict(zeta=0.3), "pigdm": dict(weight=0.5), "mcg": dict(zeta=0.3), "dsg": dict(gamma=0.2),
               "tmpd": dict(weight=0.5)}
# The solvers that build x_{t-1} from their own x0 and add the CMI drift: CMI+X = X + eta_t grad I.
ADDED = {"ddnm": {}, "ddnm_plus": {}, "ddnm_svd": {}, "ddrm": {}, "diffpir": dict(lam=2.0)}
SIGMA_Y = 0.3


def _abar(t: int) -> float:
    """abar_t of the linear DDPM schedule (beta from 1e-4 to 0.02 over 1000 steps), written out."""
    betas = [1e-4 + (0.02 - 1e-4) * k / 999 for k in range(t + 1)]
    return math.prod(1.0 - b for b in betas)


def _mixture():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[1.5, 0.0, -1.0], [-1.5, 1.0, 0.5], [0.0, -1.5, 1.5]], dtype=D)
    covs = []
    for _ in range(3):
        q = torch.randn(3, 3, generator=g, dtype=D)
        covs.append(0.3 * q @ q.T / 3 + 0.2 * torch.eye(3, dtype=D))
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    return weights, means, torch.stack(covs)


def _post_cov(x: torch.Tensor, abar: float, weights, means, covs) -> torch.Tensor:
    """Cov[x0 | x_t = x] for the mixture sum_k w_k N(mu_k, S_k), x_t = sqrt(abar) x0 + sqrt(1 - abar) n:
    per component C_k = (S_k^-1 + abar / (1 - abar) I)^-1, m_k = C_k (S_k^-1 mu_k + sqrt(abar) x / (1 - abar)),
    responsibilities r_k ~ w_k N(x; sqrt(abar) mu_k, abar S_k + (1 - abar) I); the law of total
    covariance. x: (B, d) -> (B, d, d), differentiable in x."""
    d = x.shape[1]
    eye = torch.eye(d, dtype=D)
    s_inv = torch.linalg.inv(covs)
    C = torch.linalg.inv(s_inv + abar / (1 - abar) * eye)  # (K, d, d)
    rhs = (s_inv @ means[..., None])[None, ..., 0] + math.sqrt(abar) / (1 - abar) * x[:, None, :]  # (B, K, d)
    m = (C[None] @ rhs[..., None])[..., 0]  # (B, K, d)
    marg = abar * covs + (1 - abar) * eye
    diff = x[:, None, :] - math.sqrt(abar) * means[None]
    quad = (diff[..., None, :] @ torch.linalg.inv(marg)[None] @ diff[..., None])[..., 0, 0]
    logits = torch.log(weights)[None] - 0.5 * quad - 0.5 * torch.logdet(marg)[None]
    r = torch.softmax(logits, dim=1)  # (B, K)
    mbar = (r[..., None] * m).sum(1)
    second = (r[..., None, None] * (C[None] + m[..., :, None] * m[..., None, :])).sum(1)
    return second - mbar[:, :, None] * mbar[:, None, :]


def _grad_I(x: torch.Tensor, abar: float, A: torch.Tensor, kinv: str, mix) -> torch.Tensor:
    """grad_x of I(x0; y | x_t) = 1/2 log det(I + A Sigma_post A^T / sigma_y^2) (Theorem 1), per sample;
    for ``kinv="isotropic"`` the gradient the isotropic K^-1 estimates instead:
    grad_x 1/2 Tr(K_iso^-1 A Sigma_post(x) A^T), K_iso = sigma_y^2 I + (1 - abar) A A^T."""
    x = x.detach().clone().requires_grad_(True)
    S = _post_cov(x, abar, *mix)
    ASA = A[None] @ S @ A.T[None]
    m = A.shape[0]
    if kinv == "cg":
        value = 0.5 * torch.logdet(torch.eye(m, dtype=D)[None] + ASA / SIGMA_Y**2)
    else:
        K = SIGMA_Y**2 * torch.eye(m, dtype=D) + (1 - abar) * A @ A.T
        value = 0.5 * torch.diagonal(torch.linalg.solve(K[None], ASA), dim1=-2, dim2=-1).sum(-1)
    (g,) = torch.autograd.grad(value.sum(), x)
    return g


def _config(grad: str, schedule: str, kinv: str, eta: float) -> CMIConfig:
    has_grad = "grad" in {f.name for f in dataclasses.fields(CMIConfig)}
    extra = {"grad": grad} if has_grad else {}  # named even for autodiff: the default may be another path
    return CMIConfig(eta=eta, estimator="exact", kinv=kinv, cg_iters=20, eta_schedule=schedule, **extra)


def _tolerance(grad: str) -> float:
    """Relative tolerance: autodiff is exact up to rounding and CG; difference paths are not."""
    return 1e-7 if grad == "autodiff" else 2e-2


def _run_checked(name: str, params: dict, cfg: CMIConfig, steps: int = 6):
    """Sample with ``name`` and CMI on; at every step compare against the independent eta_t grad I.
    Returns a list of (step, |eta_t grad I|, relative error)."""
    weights, means, covs = mix = _mixture()
    prior = GaussianMixturePrior(weights, means, covs)
    g = torch.Generator().manual_seed(1)
    A = torch.randn(2, 3, generator=g, dtype=D) / math.sqrt(3)
    op = DenseOperator(A)
    y = torch.tensor([[0.4, -0.7]], dtype=D)
    rule = make_rule(name, **params)
    checked = []

    def checking(s):
        # CMI is on at every step here (autodiff: an objective; difference paths: their own object)
        assert s.cmi_objective is not None or getattr(s, "cmi_fd", None) is not None
        abar = _abar(s.c.t)
        assert s.c.abar == pytest.approx(abar, rel=1e-12)
        eta_t = cfg.eta if cfg.eta_schedule == "constant" else cfg.eta * (1.0 - abar)
        drift = eta_t * _grad_I(s.x_t, abar, A, cfg.kinv, mix)
        # the same step without CMI (first: the difference paths free the step's graph in the rule)
        off = {"cmi_objective": None, "_x_prop": None}
        off.update({f: None for f in ("cmi_fd",) if f in {x.name for x in dataclasses.fields(s)}})
        plain = dataclasses.replace(s, **off)
        if name in ON_PROPOSAL:
            expected = rule(dataclasses.replace(plain, x_prop_base=s.x_prop_base + drift))
        else:
            expected = rule(plain) + drift
        out = rule(s)
        scale = float(drift.abs().max())
        err = float((out - expected).abs().max())
        checked.append((s.c.i, scale, err / max(scale, 1e-300)))
        return out

    sample(prior, op, y, checking, steps, torch.Generator().manual_seed(2), sigma_y=SIGMA_Y, batch=3, cmi=cfg,
           progress=False)
    return checked


CASES = [(name, sched, grad) for name in [*ON_PROPOSAL, *ADDED] for sched in ("constant", "abar") for grad in GRADS]


@pytest.mark.parametrize("name,schedule,grad", CASES)
def test_cmi_step_in_the_loop_is_eta_t_times_grad_I(name, schedule, grad):
    params = {**ON_PROPOSAL, **ADDED}[name]
    checked = _run_checked(name, params, _config(grad, schedule, "cg", eta=0.05))
    assert len(checked) == 6
    assert max(sc for _, sc, _ in checked) > 1e-3  # the CMI step really moves the sample here
    tol = _tolerance(grad)
    for i, scale, rel in checked:
        if scale > 1e-6:
            assert rel < tol, (i, scale, rel)


@pytest.mark.parametrize("name", ["dps", "ddnm"])
def test_cmi_step_with_isotropic_K_inverse(name):
    """kinv="isotropic": the step is eta_t grad 1/2 Tr(K_iso^-1 A Sigma_post A^T) (the PiGDM-style K)."""
    checked = _run_checked(name, {**ON_PROPOSAL, **ADDED}[name], _config("autodiff", "constant", "isotropic", 0.05))
    assert max(sc for _, sc, _ in checked) > 1e-3
    assert all(rel < 1e-7 for _, sc, rel in checked if sc > 1e-6), checked


def test_the_check_catches_a_flipped_or_rescaled_step():
    """The comparison above fails for a CMI step of the wrong sign or twice the size."""
    weights, means, covs = mix = _mixture()
    x = torch.tensor([[0.3, -0.2, 0.5]], dtype=D)
    A = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=D) / math.sqrt(3)
    g = _grad_I(x, _abar(400), A, "cg", mix)
    assert g.abs().max() > 1e-2
    assert not torch.allclose(-g, g, rtol=1e-7) and not torch.allclose(2 * g, g, rtol=1e-7)


def test_closed_form_posterior_covariance_matches_the_prior_class_jacobian():
    """The closed form used above against second-order Tweedie on the class's exact score (two
    independent routes to Cov[x0 | x_t])."""
    from cmidps.cmi import sigma_post_dense
    from cmidps.diffusion import Schedule, x0_from_eps

    mix = _mixture()
    prior = GaussianMixturePrior(*mix)
    c = Schedule.linear().respace(20).at(8)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=D)
    tweedie = sigma_post_dense(x, lambda z: x0_from_eps(z, prior.eps(z, c.t)[0], c), c)
    torch.testing.assert_close(_post_cov(x, c.abar, *mix), tweedie, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("estimator", ["lowrank", "hutchinson"])
@pytest.mark.parametrize("grad", GRADS)
def test_r_probes_average_r_single_probe_estimates(estimator, grad):
    """probes = r is the mean of the r single-probe estimates drawn in turn from the same generator (the
    scale 1/r of the estimator, which the loop tests above, with one probe, do not see)."""
    from cmidps.cmi import cmi_gradient
    from cmidps.diffusion import Schedule, x0_from_eps

    prior = GaussianMixturePrior(*_mixture())
    c = Schedule.linear().respace(20).at(10)
    A = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=D) / math.sqrt(3)
    op = DenseOperator(A)
    x0_fn = lambda z: x0_from_eps(z, prior.eps(z, c.t)[0], c)  # noqa: E731
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=D).requires_grad_(True)
    has_grad = "grad" in {f.name for f in dataclasses.fields(CMIConfig)}

    def estimate(probes, gen):
        cfg = CMIConfig(estimator=estimator, probes=probes, **({"grad": grad} if has_grad else {}))
        kw = {"x0_fn": x0_fn} if has_grad else {}
        return cmi_gradient(x, x0_fn(x), c, op, SIGMA_Y, cfg, gen, **kw)

    together = estimate(4, torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    singles = torch.stack([estimate(1, gen) for _ in range(4)])
    assert (singles - singles.mean(0)).abs().max() > 1e-3 * singles.abs().max()  # the probes differ
    torch.testing.assert_close(together, singles.mean(0), rtol=1e-6 if grad == "autodiff" else 1e-3, atol=1e-12)
