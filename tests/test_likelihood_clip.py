"""``likelihood_clip``: x0_hat clamped to [-1, 1] where it enters the likelihood and the CMI term."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)

import pytest
import torch

from cmidps.cmi import CMIConfig, cmi_gradient, mutual_information, sigma_post_dense
from cmidps.diffusion import Schedule, x0_from_eps
from cmidps.operators import DenseOperator
from cmidps.prior import GaussianMixturePrior
from cmidps.methods.samplers import dps, mcg
from cmidps.sampling import sample

D = torch.float64


def _prior(d=4, k=3, seed=2, clip=True):
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(k, d, generator=g, dtype=D)
    prior = GaussianMixturePrior(torch.rand(k, generator=g, dtype=D) + 0.2, means)
    prior.clip_x0 = clip  # pretend the data live in [-1, 1], so clamping is active
    return prior


def _x0_fn(prior, c):
    return lambda x: x0_from_eps(x, prior.eps(x, c.t)[0], c)


def test_clipped_cmi_gradient_is_the_cmi_of_A_D_against_finite_differences():
    """With the clamp, Theorem 1 holds for A D (D = 1{|x0_hat| <= 1}): check the exact estimator's
    gradient against central differences of 1/2 log det(I + A D Sigma_post D A^T / s2), D held fixed."""
    c = Schedule.linear().respace(50).at(30)
    prior = _prior()
    g = torch.Generator().manual_seed(3)
    A = torch.randn(2, 4, generator=g, dtype=D)
    op, sigma_y = DenseOperator(A), 0.3
    x = 1.5 * torch.randn(1, 4, generator=g, dtype=D)
    x0 = _x0_fn(prior, c)(x)
    d = (x0.abs() <= 1).to(D)[0]
    assert 0 < d.sum() < 4, x0  # some components clamped, some not
    assert ((x0.abs() - 1).abs() > 1e-3).all()  # D is constant around x

    def value(z):
        p = sigma_post_dense(z, _x0_fn(prior, c), c)[0]
        return mutual_information(torch.diag(d) @ p @ torch.diag(d), A, sigma_y**2 * torch.eye(2, dtype=D))

    xg = x.clone().requires_grad_(True)
    cfg = CMIConfig(estimator="exact", kinv="cg", cg_iters=30)
    grad = cmi_gradient(xg, _x0_fn(prior, c)(xg), c, op, sigma_y, cfg, clip=True)[0]
    h = 1e-5
    fd = torch.stack([(value(x + h * e) - value(x - h * e)) / (2 * h) for e in torch.eye(4, dtype=D)[:, None]])
    assert fd.abs().max() > 1e-4
    torch.testing.assert_close(grad, fd, atol=1e-7, rtol=1e-5)
    # and it differs from the unclamped CMI gradient
    xg = x.clone().requires_grad_(True)
    plain = cmi_gradient(xg, _x0_fn(prior, c)(xg), c, op, sigma_y, cfg, clip=False)[0]
    assert not torch.allclose(plain, grad, rtol=1e-3)


def _check_rule(rule, likelihood_clip, prior, clamp_expected):
    """Run 4 steps; at each, recompute the rule's guidance independently from x_t."""
    g = torch.Generator().manual_seed(4)
    A = torch.randn(2, 4, generator=g, dtype=D)
    op = DenseOperator(A)
    y = torch.tensor([[2.5, -1.0]], dtype=D)
    seen = []

    def checked(s):
        out = rule(s)
        x = s.x_t.detach().clone().requires_grad_(True)
        x0 = _x0_fn(prior, s.c)(x)
        if clamp_expected:
            x0 = x0.clamp(-1, 1)
        norm = (y - op.A(x0)).norm(dim=1).sum()
        (grad,) = torch.autograd.grad(norm, x)
        seen.append((out.detach(), (s.x_prop - 0.7 * grad).detach(), bool((x0.abs() >= 1).any())))
        return out

    sample(prior, op, y, checked, 4, torch.Generator().manual_seed(5), sigma_y=0.1, batch=3, progress=False,
           likelihood_clip=likelihood_clip)
    return seen


@pytest.mark.parametrize("likelihood_clip,prior_clips,clamped", [
    (None, True, True), (None, False, False), (True, False, True), (False, True, False)])
def test_dps_step_uses_the_clamped_x0_hat_when_asked(likelihood_clip, prior_clips, clamped):
    from functools import partial

    prior = _prior(clip=prior_clips)
    seen = _check_rule(partial(dps, zeta=0.7), likelihood_clip, prior, clamped)
    for out, expected, _ in seen:
        torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    assert any(active for *_, active in seen)  # the clamp was active on some step


def test_the_clamp_changes_the_dps_step():
    from functools import partial

    prior = _prior(clip=True)
    seen = _check_rule(partial(dps, zeta=0.7), True, prior, clamp_expected=False)  # compare against unclamped
    assert any(not torch.allclose(out, expected) for out, expected, _ in seen)


def test_mcg_gradient_step_sees_the_clamp():
    """MCG projects the DPS step, so the clamp reaches it too: clamped and unclamped runs differ."""
    prior = _prior(clip=True)
    g = torch.Generator().manual_seed(4)
    op = DenseOperator(torch.randn(2, 4, generator=g, dtype=D))
    y = torch.tensor([[2.5, -1.0]], dtype=D)
    from functools import partial

    outs = [sample(prior, op, y, partial(mcg, zeta=0.7), 4, torch.Generator().manual_seed(5), sigma_y=0.1, batch=3,
                   progress=False, likelihood_clip=flag) for flag in (True, False)]
    assert not torch.allclose(outs[0], outs[1])
