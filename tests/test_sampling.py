"""The shared reverse loop: exactness on Gaussian priors, DPS, the CMI plug-in switch, errors."""
import cmidps  # noqa: F401
import math

import pytest
import torch

from cmidps.cmi import CMIConfig
from cmidps.operators import DenseOperator
from cmidps.prior import GaussianMixturePrior
from cmidps.methods.samplers import make_rule
from cmidps.sampling import SamplingDiverged, sample

D = torch.float64


def _gaussian(d, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=g, dtype=D)
    cov = scale * (q @ q.T / d + 0.2 * torch.eye(d, dtype=D))
    mean = torch.randn(1, d, generator=g, dtype=D)
    return GaussianMixturePrior(torch.ones(1, dtype=D), mean, cov[None])


def test_unconditional_loop_samples_the_prior():
    """With the exact score the ancestral loop reproduces a Gaussian prior's mean and covariance."""
    prior = _gaussian(3)
    op = DenseOperator(torch.zeros(1, 3, dtype=D))
    x = sample(prior, op, torch.zeros(1, 1, dtype=D), make_rule("none"), steps=200,
               generator=torch.Generator().manual_seed(1), batch=4000, progress=False)
    torch.testing.assert_close(x.mean(0), prior.means[0], atol=0.08, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), prior.cov[0], atol=0.12, rtol=0)


def test_ddim_eta1_is_the_ddpm_step_and_eta0_samples_the_prior():
    prior = _gaussian(2, seed=4)
    op = DenseOperator(torch.zeros(1, 2, dtype=D))
    run = lambda eta, steps: sample(prior, op, torch.zeros(1, 1, dtype=D), make_rule("none"),  # noqa: E731
                                    steps=steps, ddim_eta=eta, generator=torch.Generator().manual_seed(2),
                                    batch=4000, progress=False)
    torch.testing.assert_close(run(1.0, 20), run(None, 20))
    x = run(0.0, 500)  # the deterministic DDIM flow; first-order, so it needs many steps
    torch.testing.assert_close(x.mean(0), prior.means[0], atol=0.08, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), prior.cov[0], atol=0.2, rtol=0)


def _posterior_problem(d=6, m=3, seed=0, sigma_y=0.1):
    prior = _gaussian(d, seed)
    g = torch.Generator().manual_seed(seed + 100)
    A = torch.randn(m, d, generator=g, dtype=D) / math.sqrt(d)
    x_star = prior.sample(1, g)
    y = x_star @ A.T + sigma_y * torch.randn(1, m, generator=g, dtype=D)
    post = prior.posterior(A, y[0], sigma_y)
    return prior, DenseOperator(A), y, sigma_y, post


def test_dps_lands_near_the_exact_posterior_mean():
    prior, op, y, sigma_y, post = _posterior_problem()
    x = sample(prior, op, y, make_rule("dps", zeta=0.5), steps=100, sigma_y=sigma_y,
               generator=torch.Generator().manual_seed(3), batch=500, progress=False)
    err = (x.mean(0) - post.means[0]).norm()
    prior_err = (prior.means[0] - post.means[0]).norm()
    assert prior_err > 0.5
    assert err < 0.25 * prior_err, (err, prior_err)
    # and the measurement is explained about as well as by the posterior itself
    res = (x @ op.matrix.T - y).norm(dim=1).mean()
    assert res < 3 * sigma_y * math.sqrt(op.matrix.shape[0])


def test_dps_with_wrong_sign_is_caught():
    """The same bound fails for a sampler that pushes away from y: the test can fail."""
    prior, op, y, sigma_y, post = _posterior_problem()
    x = sample(prior, op, y, make_rule("dps", zeta=-0.5), steps=100, sigma_y=sigma_y,
               generator=torch.Generator().manual_seed(3), batch=500, progress=False)
    err = (x.mean(0) - post.means[0]).norm()
    prior_err = (prior.means[0] - post.means[0]).norm()
    assert not err < 0.25 * prior_err


def test_cmi_with_eta_zero_is_exactly_the_baseline():
    prior = GaussianMixturePrior.mcgdiff(8, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    op = DenseOperator(torch.randn(2, 8, generator=g, dtype=D))
    y = torch.randn(1, 2, generator=g, dtype=D)
    kw = dict(steps=20, sigma_y=0.5, batch=16, progress=False)
    base = sample(prior, op, y, make_rule("dps", zeta=0.5), generator=torch.Generator().manual_seed(7), **kw)
    zero = sample(prior, op, y, make_rule("dps", zeta=0.5), generator=torch.Generator().manual_seed(7),
                  cmi=CMIConfig(eta=0.0), cmi_generator=torch.Generator().manual_seed(8), **kw)
    some = sample(prior, op, y, make_rule("dps", zeta=0.5), generator=torch.Generator().manual_seed(7),
                  cmi=CMIConfig(eta=0.1), cmi_generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(base, zero)
    assert not torch.allclose(base, some)


@pytest.mark.parametrize("cmi", [None, CMIConfig(eta=0.1, grad="autodiff"),
                                 CMIConfig(eta=0.1, kinv="cg", cg_iters=3, grad="autodiff")])
def test_one_network_evaluation_per_step(cmi):
    prior = GaussianMixturePrior.mcgdiff(4, torch.Generator().manual_seed(0))
    op = DenseOperator(torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=D))
    sample(prior, op, torch.zeros(1, 2, dtype=D), make_rule("dps", zeta=0.3), steps=7, batch=3, cmi=cmi,
           generator=torch.Generator().manual_seed(0), progress=False)
    assert prior.nfe == 7


def test_divergence_names_the_step():
    prior = _gaussian(2)
    op = DenseOperator(torch.eye(2, dtype=D))
    with pytest.raises(SamplingDiverged, match=r"step \d+ of 10"):
        sample(prior, op, torch.zeros(1, 2, dtype=D), lambda s: s.x_prop * float("nan"), steps=10,
               generator=torch.Generator().manual_seed(0), batch=2, progress=False)


def test_non_finite_measurement_is_rejected():
    prior = _gaussian(2)
    op = DenseOperator(torch.eye(2, dtype=D))
    with pytest.raises(ValueError, match="non-finite"):
        sample(prior, op, torch.tensor([[float("nan"), 0.0]], dtype=D), make_rule("dps"), steps=3,
               generator=torch.Generator().manual_seed(0), progress=False)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        make_rule("magic")


def test_fused_guided_step_equals_the_unfused_one():
    """DPS's single fused backward (CMI double backward + DPS vjp) gives the two-pass result."""
    prior = GaussianMixturePrior.mcgdiff(8, torch.Generator().manual_seed(0))
    op = DenseOperator(torch.randn(3, 8, generator=torch.Generator().manual_seed(1), dtype=D))
    y = torch.randn(1, 3, generator=torch.Generator().manual_seed(2), dtype=D)
    kw = dict(steps=15, sigma_y=0.5, batch=8, progress=False, cmi=CMIConfig(eta=0.2, probes=2, grad="autodiff"))
    two_pass = lambda s: s.x_prop - 0.4 * s.grad_residual_norm()  # noqa: E731
    a = sample(prior, op, y, make_rule("dps", zeta=0.4), generator=torch.Generator().manual_seed(3),
               cmi_generator=torch.Generator().manual_seed(4), **kw)
    b = sample(prior, op, y, two_pass, generator=torch.Generator().manual_seed(3),
               cmi_generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(a, b)
