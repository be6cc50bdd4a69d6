"""The samplers' step rules (PiGDM, MCG, DSG, DPS) against exact Gaussian posteriors."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)
import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from cmidps.cmi import CMIConfig
from cmidps.diffusion import Schedule
from cmidps.operators import DenseOperator
from cmidps.prior import GaussianMixturePrior
from cmidps.methods.samplers import RULES, make_rule, mcg_project, pigdm, pigdm_guidance
from cmidps.sampling import SamplingDiverged, sample

D = torch.float64


def _gaussian(d, seed=0, identity=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=g, dtype=D)
    cov = torch.eye(d, dtype=D) if identity else q @ q.T / d + 0.2 * torch.eye(d, dtype=D)
    mean = 2.0 * torch.randn(1, d, generator=g, dtype=D)
    return GaussianMixturePrior(torch.ones(1, dtype=D), mean, cov[None])


def _problem(d=6, m=3, seed=0, sigma_y=0.1):
    prior = _gaussian(d, seed)
    g = torch.Generator().manual_seed(seed + 100)
    A = torch.randn(m, d, generator=g, dtype=D) / math.sqrt(d)
    y = prior.sample(1, g) @ A.T + sigma_y * torch.randn(1, m, generator=g, dtype=D)
    return prior, DenseOperator(A), y, sigma_y, prior.posterior(A, y[0], sigma_y)


# Each sampler with a step size that works, and the same sampler with the guidance's sign flipped.
GOOD = {"dps": dict(zeta=0.5), "pigdm": dict(weight=1.0), "mcg": dict(zeta=0.5), "dsg": dict(gamma=0.2)}
FLIPPED = {"dps": dict(zeta=-0.5), "pigdm": dict(weight=-0.3), "dsg": dict(gamma=-0.2)}


def _flip_measurement(rule):
    """MCG's projection uses y itself: a sign error there is modelled by the rule seeing -y."""
    return lambda s: rule(dataclasses.replace(s, y=-s.y))


def _posterior_mean_error(rule, steps=50, batch=400, seed=3, cmi=None):
    prior, op, y, sigma_y, post = _problem()
    x = sample(prior, op, y, rule, steps=steps, sigma_y=sigma_y, generator=torch.Generator().manual_seed(seed),
               batch=batch, progress=False, cmi=cmi, cmi_generator=torch.Generator().manual_seed(seed + 1))
    assert torch.isfinite(x).all()
    err = (x.mean(0) - post.means[0]).norm()
    prior_err = (prior.means[0] - post.means[0]).norm()
    assert prior_err > 1.0  # the measurement moves the posterior far from the prior
    return float(err / prior_err)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_sampler_mean_is_near_the_exact_posterior_mean(name):
    assert _posterior_mean_error(make_rule(name, **GOOD[name])) < 0.2


@pytest.mark.parametrize("name", ["dps", "mcg"])
@pytest.mark.parametrize("kinv", ["isotropic", "cg"])
def test_cmi_sampler_with_small_eta_is_as_near_the_exact_posterior(name, kinv):
    """CMI+DPS and CMI+MCG with a small eta on a Gaussian posterior meet the same bound as DPS and MCG
    (for one Gaussian, Sigma_post does not depend on x_t: grad I = 0, so CMI must not move them)."""
    cmi = CMIConfig(eta=0.05, estimator="lowrank", kinv=kinv, cg_iters=20)
    with_cmi = _posterior_mean_error(make_rule(name, **GOOD[name]), cmi=cmi)
    assert with_cmi < 0.2
    assert with_cmi == pytest.approx(_posterior_mean_error(make_rule(name, **GOOD[name])), abs=1e-6)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_the_bound_catches_a_sign_error(name):
    """The same bound fails when the guidance pushes away from y (so the test above can fail)."""
    rule = make_rule(name, **FLIPPED[name]) if name in FLIPPED else _flip_measurement(make_rule(name, **GOOD[name]))
    try:
        ratio = _posterior_mean_error(rule)
    except SamplingDiverged:  # diverging also counts as caught
        return
    assert not ratio < 0.2, ratio


def test_unguided_is_far_from_the_posterior():
    assert _posterior_mean_error(make_rule("none")) > 0.5


def test_pigdm_guidance_is_the_exact_likelihood_score_for_an_identity_prior():
    """For N(mu, I), p(x0 | x_t) = N(x0_hat, (1 - abar) I) exactly, so PiGDM's g = grad log p(y | x_t)."""
    d, m, sigma_y = 5, 2, 0.3
    prior = _gaussian(d, seed=1, identity=True)
    g = torch.Generator().manual_seed(2)
    A = torch.randn(m, d, generator=g, dtype=D)
    op = DenseOperator(A)
    y = torch.randn(1, m, generator=g, dtype=D)
    mu = prior.means[0]
    checked = []

    def exact_log_lik(x, abar):
        mean = mu + abar**0.5 * (x - abar**0.5 * mu)  # E[x0 | x_t]
        cov = (1 - abar) * A @ A.T + sigma_y**2 * torch.eye(m, dtype=D)
        r = y - mean @ A.T
        return -0.5 * (r @ torch.linalg.inv(cov) * r).sum(1)

    def rule(s):
        x = s.x_t.detach().requires_grad_(True)
        (exact,) = torch.autograd.grad(exact_log_lik(x, s.c.abar).sum(), x)
        torch.testing.assert_close(pigdm_guidance(s), exact, rtol=1e-9, atol=1e-12)
        checked.append(s.c.i)
        return pigdm(s)

    sample(prior, op, y, rule, steps=10, sigma_y=sigma_y, generator=torch.Generator().manual_seed(0), batch=7,
           progress=False)
    assert len(checked) == 10


@pytest.mark.parametrize("i", [0, 3])
def test_mcg_projection_keeps_the_null_space_and_sets_the_row_space(i):
    d, m = 7, 3
    g = torch.Generator().manual_seed(4)
    A = torch.randn(m, d, generator=g, dtype=D)
    op = DenseOperator(A)
    P = torch.linalg.pinv(A) @ A
    c = Schedule.linear().respace(10).at(i)
    x = torch.randn(5, d, generator=g, dtype=D)
    z = torch.randn(5, d, generator=g, dtype=D)
    y = torch.randn(1, m, generator=g, dtype=D)
    s = SimpleNamespace(op=op, y=y, c=c, noise=z)
    out = mcg_project(s, x)
    eye = torch.eye(d, dtype=D)
    torch.testing.assert_close(out @ (eye - P).T, x @ (eye - P).T)  # (I - P) x unchanged
    target = c.abar_prev**0.5 * y @ torch.linalg.pinv(A).T + (1 - c.abar_prev) ** 0.5 * z @ P.T
    torch.testing.assert_close(out @ P.T, target)  # P x = P(noised A^+ y)
    if i == 0:  # the last step: x - P x + A^+ y, consistent with y
        assert c.abar_prev == 1.0
        torch.testing.assert_close(out, x - x @ P.T + y @ torch.linalg.pinv(A).T)
        torch.testing.assert_close(out @ A.T, y.expand(5, -1))


def test_dsg_steps_lie_on_the_sphere_of_the_proposal_noise():
    """Off the last step, ||x_{t-1} - mu_t|| = r = sqrt(sum std^2) per sample."""
    prior, op, y, sigma_y, _ = _problem()
    seen = []

    def rule(s):
        out = RULES["dsg"](s, gamma=0.3)
        if s.c.i > 0:
            r = (s.std**2).sum(1).sqrt()
            torch.testing.assert_close((out - s.mean).norm(dim=1), r)
            seen.append(s.c.i)
        return out

    sample(prior, op, y, rule, steps=8, sigma_y=sigma_y, generator=torch.Generator().manual_seed(0), batch=4,
           progress=False)
    assert len(seen) == 7


def test_dsg_interval_skips_steps():
    prior, op, y, sigma_y, _ = _problem()

    def rule(s):
        out = RULES["dsg"](s, gamma=0.3, interval=3)
        assert torch.equal(out, s.x_prop) == (s.c.i % 3 != 0)
        return out

    sample(prior, op, y, rule, steps=7, sigma_y=sigma_y, generator=torch.Generator().manual_seed(0), batch=4,
           progress=False)


@pytest.mark.parametrize("name", ["dps", "pigdm", "mcg", "dsg"])
def test_cmi_with_eta_zero_is_exactly_the_baseline(name):
    prior = GaussianMixturePrior.mcgdiff(8, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    op = DenseOperator(torch.randn(2, 8, generator=g, dtype=D))
    y = torch.randn(1, 2, generator=g, dtype=D)
    kw = dict(steps=15, sigma_y=0.5, batch=16, progress=False)
    rule = make_rule(name, **GOOD[name])
    base = sample(prior, op, y, rule, generator=torch.Generator().manual_seed(7), **kw)
    zero = sample(prior, op, y, rule, generator=torch.Generator().manual_seed(7), cmi=CMIConfig(eta=0.0),
                  cmi_generator=torch.Generator().manual_seed(8), **kw)
    some = sample(prior, op, y, rule, generator=torch.Generator().manual_seed(7), cmi=CMIConfig(eta=0.1),
                  cmi_generator=torch.Generator().manual_seed(8), **kw)
    assert torch.isfinite(base).all() and torch.isfinite(some).all()
    assert torch.equal(base, zero)
    assert not torch.allclose(base, some)


def test_samples_are_finite_in_float32():
    prior = GaussianMixturePrior.mcgdiff(8, torch.Generator().manual_seed(0)).to(torch.float32)
    g = torch.Generator().manual_seed(1)
    op = DenseOperator(torch.randn(2, 8, generator=g, dtype=D))
    y = torch.randn(1, 2, generator=g, dtype=torch.float32)
    for name in GOOD:
        x = sample(prior, op, y, make_rule(name, **GOOD[name]), steps=10, sigma_y=0.5, batch=8,
                   generator=torch.Generator().manual_seed(0), cmi=CMIConfig(eta=0.1),
                   cmi_generator=torch.Generator().manual_seed(1), progress=False)
        assert x.dtype == torch.float32 and torch.isfinite(x).all(), name


# --- image operators of the presets in the loop ---------------------------------------------------
def _tiny_image_prior():
    """The shared tiny ADM UNet (tests/conftest.py) with its zero-initialised layers re-drawn: eps
    depends on x, so a rule that mixed the samples of a batch would show. Float64, so that a batch
    and a single image agree to rounding (float32 convolutions differ by ~1e-4 between batch sizes)."""
    from conftest import random_unet
    from cmidps.prior import NetworkPrior

    return NetworkPrior(random_unet(0).double().eval(), (1, 16, 16))


@pytest.mark.parametrize("name", ["dps", "pigdm", "mcg", "dsg"])
def test_per_image_masks_run_per_sample_in_the_loop(name):
    """Each rule, with CMI on, on a per-image mask operator (the dps preset's): a batch of two gives
    each image the result it gets alone with its own mask (same per-sample generators)."""
    from cmidps.operators import RandomInpainting

    prior = _tiny_image_prior()
    op = RandomInpainting((1, 16, 16), (0.3, 0.7), [torch.Generator().manual_seed(s) for s in (1, 2)])
    single = RandomInpainting((1, 16, 16), (0.3, 0.7), [torch.Generator().manual_seed(2)])
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 16, 16, generator=g, dtype=D) * 2 - 1
    y = op.A(x) + 0.05 * torch.randn(x.shape, generator=g, dtype=D)

    def run(o, yy, seeds, eta=0.01):
        return sample(prior, o, yy, make_rule(name, **GOOD[name]), 3, [torch.Generator().manual_seed(s) for s in seeds],
                      sigma_y=0.05, cmi=CMIConfig(eta=eta, probes=2),
                      cmi_generator=[torch.Generator().manual_seed(10 + s) for s in seeds], progress=False)

    both = run(op, y, (5, 6))
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[1:], run(single, y[1:], (6,)), atol=1e-9, rtol=1e-9)
    # CMI is really on (it moves the result), and so is the guidance (another y, another result)
    assert (both - run(op, y, (5, 6), eta=0.0)).abs().max() > 1e-4
    assert (both - run(op, -y, (5, 6))).abs().max() > 1e-3


def test_pigdm_on_a_reflect_blur_solves_K_by_cg_per_sample():
    from cmidps.operators import ReflectBlur, gaussian_filter_kernel

    prior = _tiny_image_prior()
    op = ReflectBlur((1, 16, 16), gaussian_filter_kernel(5, 1.0), cg_maxiter=500)
    g = torch.Generator().manual_seed(3)
    y = op.A(torch.rand(2, 1, 16, 16, generator=g, dtype=D) * 2 - 1) + 0.05 * torch.randn(2, 1, 16, 16, generator=g,
                                                                                          dtype=D)

    def run(yy, seeds):
        return sample(prior, op, yy, make_rule("pigdm"), 3, [torch.Generator().manual_seed(s) for s in seeds],
                      sigma_y=0.05, progress=False)

    both = run(y, (5, 6))
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[1:], run(y[1:], (6,)), atol=1e-7, rtol=1e-7)  # CG run to convergence
    assert (both - run(-y, (5, 6))).abs().max() > 1e-3  # the guidance acts
