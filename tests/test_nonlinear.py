"""Nonlinear operators: Jacobian products, phase retrieval, HDR, DPS / DAPS / RED-diff on them, and CMI
under a nonlinear A (Gauss-Newton linearisation)."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)
import math

import numpy as np
import pytest
import torch

from cmidps.methods import drivers, solvers
from cmidps.cmi import CMIConfig, cmi_gradient, mutual_information, sigma_post_dense
from cmidps.diffusion import Schedule, x0_from_eps
from cmidps.operators.nonlinear import HighDynamicRange, NonlinearOperator, PhaseRetrieval, make_nonlinear_operator
from cmidps.operators import DenseOperator
from cmidps.prior import GaussianMixturePrior, NetworkPrior
from cmidps.methods.samplers import dps, mcg, pigdm
from cmidps.sampling import sample

D = torch.float64


class MatrixAsNonlinear(NonlinearOperator):
    """A linear map seen only through the nonlinear protocol (no adjoint, no closed forms)."""

    def __init__(self, M):
        super().__init__((M.shape[1],), (M.shape[0],))
        self.M = M

    def A(self, x):
        return x @ self.M.T


class Warp(NonlinearOperator):
    """A small smooth nonlinear map R^d -> R^m: A(x) = M tanh(x) + 0.1 (M x)^2."""

    def __init__(self, M):
        super().__init__((M.shape[1],), (M.shape[0],))
        self.M = M

    def A(self, x):
        return torch.tanh(x) @ self.M.T + 0.1 * (x @ self.M.T) ** 2


def _matrix(m=3, d=5, seed=0):
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_linearized_products_and_solves_match_the_matrix():
    M = _matrix()
    lin = MatrixAsNonlinear(M).linearized(torch.randn(4, 5, dtype=D))
    dense = DenseOperator(M)
    v, u = torch.randn(4, 5, dtype=D), torch.randn(4, 3, dtype=D)
    torch.testing.assert_close(lin.A(v), v @ M.T)
    torch.testing.assert_close(lin.A_adjoint(u), u @ M)
    torch.testing.assert_close(lin.solve_K(u, 0.7, 0.2), dense.solve_K(u, 0.7, 0.2))


def test_jacobian_products_of_a_nonlinear_map_match_finite_differences():
    op = Warp(_matrix())
    g = torch.Generator().manual_seed(1)
    x, v, u = (torch.randn(2, k, generator=g, dtype=D) for k in (5, 5, 3))
    h = 1e-6
    fd = (op.A(x + h * v) - op.A(x - h * v)) / (2 * h)
    torch.testing.assert_close(op.jvp(x, v), fd, rtol=1e-6, atol=1e-8)
    lin = op.linearized(x)
    torch.testing.assert_close((lin.A_adjoint(u) * v).sum(1), (u * lin.A(v)).sum(1))  # <J^T u, v> = <u, J v>
    torch.testing.assert_close(op.vjp(x, u), lin.A_adjoint(u))


def test_phase_retrieval_is_the_fourier_magnitude_with_oversampling_2():
    op = PhaseRetrieval((1, 32, 32))
    assert op.pad == 8 and op.y_shape == (1, 48, 48)
    x = torch.rand(2, 1, 32, 32, dtype=D) * 2 - 1
    ref = np.abs(np.fft.fft2(np.pad(x.numpy(), ((0, 0), (0, 0), (8, 8), (8, 8))), norm="ortho"))
    np.testing.assert_allclose(op.A(x).numpy(), ref, rtol=1e-10, atol=1e-12)
    # invariances that make phase retrieval hard: sign flip and a shift inside the padding
    torch.testing.assert_close(op.A(-x), op.A(x))
    unit = PhaseRetrieval((1, 32, 32), unit_range=True)
    torch.testing.assert_close(unit.A(x), op.A(0.5 * x + 0.5))


def test_hdr_clips_the_scaled_signal():
    op = make_nonlinear_operator("hdr", (1, 4, 4))
    x = torch.linspace(-1, 1, 16, dtype=D).view(1, 1, 4, 4)
    torch.testing.assert_close(op.A(x), (2 * x).clamp(-1, 1))
    g = op.vjp(x, torch.ones_like(x))
    torch.testing.assert_close(g, torch.where((2 * x).abs() < 1, 2.0, 0.0).to(D))


def test_linear_only_methods_refuse_a_nonlinear_operator():
    op = PhaseRetrieval((1, 8, 8))
    with pytest.raises(ValueError, match="nonlinear"):
        op.A_pinv(torch.zeros(1, 1, 12, 12))
    with pytest.raises(ValueError, match="nonlinear"):
        solvers.require_linear(op, "DDNM")
    with pytest.raises(ValueError, match="unknown nonlinear task"):
        make_nonlinear_operator("magic", (1, 8, 8))


# --- CMI under a nonlinear A ---------------------------------------------------------------------
def _mixture(d=4, k=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=D)
    q = torch.randn(k, d, d, generator=g, dtype=D)
    cov = 0.5 * (q @ q.transpose(1, 2) / d + 0.3 * torch.eye(d, dtype=D))
    return GaussianMixturePrior(torch.rand(k, generator=g, dtype=D) + 0.2, means, cov)


def _x0_fn(prior, c):
    return lambda x: x0_from_eps(x, prior.eps(x, c.t)[0], c)


def test_nonlinear_cmi_equals_todays_cmi_when_A_is_linear():
    prior, c = _mixture(), Schedule.linear().respace(50).at(30)
    M = _matrix(2, 4, seed=3)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=D).requires_grad_(True)
    x0 = _x0_fn(prior, c)(x)
    cfg = CMIConfig(estimator="exact", kinv="cg", cg_iters=20)
    today = cmi_gradient(x, x0, c, DenseOperator(M), 0.3, cfg)
    gauss_newton = cmi_gradient(x, x0, c, MatrixAsNonlinear(M).linearized(x0.detach()), 0.3, cfg)
    torch.testing.assert_close(gauss_newton, today, rtol=1e-7, atol=1e-10)


def test_the_loop_linearises_a_nonlinear_operator_for_cmi_and_dps():
    """cmi+dps through the nonlinear protocol on a linear map is cmi+dps on the matrix (same noise)."""
    prior = GaussianMixturePrior.mcgdiff(4, torch.Generator().manual_seed(0))
    M = _matrix(2, 4, seed=5)
    y = torch.randn(1, 2, generator=torch.Generator().manual_seed(6), dtype=D)
    kw = dict(steps=8, sigma_y=0.5, batch=5, progress=False, cmi=CMIConfig(eta=0.1, kinv="cg"))
    runs = [sample(prior, op, y, lambda s: dps(s, zeta=0.3), generator=torch.Generator().manual_seed(7),
                   cmi_generator=torch.Generator().manual_seed(8), **kw)
            for op in (DenseOperator(M), MatrixAsNonlinear(M))]
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-6, atol=1e-8)


def test_gauss_newton_cmi_gradient_matches_finite_differences():
    """With J_A held at x_bar = x0_hat(x_t), grad I of 1/2 log det(I + J_A Sigma_post(x) J_A^T / sigma^2)."""
    prior, c, sigma_y = _mixture(), Schedule.linear().respace(50).at(30), 0.3
    op = Warp(_matrix(2, 4, seed=7))
    x = 1.5 * torch.randn(1, 4, generator=torch.Generator().manual_seed(8), dtype=D)
    xg = x.clone().requires_grad_(True)
    x0 = _x0_fn(prior, c)(xg)
    lin = op.linearized(x0.detach())
    grad = cmi_gradient(xg, x0, c, lin, sigma_y, CMIConfig(estimator="exact", kinv="cg", cg_iters=20))[0]
    J = torch.autograd.functional.jacobian(lambda z: op.A(z[None])[0], x0.detach()[0])  # (m, d) at x_bar

    def info(z):
        p = sigma_post_dense(z, _x0_fn(prior, c), c)[0]
        return mutual_information(p, J, sigma_y**2 * torch.eye(2, dtype=D))

    h = 1e-5
    fd = torch.stack([(info(x + h * e) - info(x - h * e)) / (2 * h) for e in torch.eye(4, dtype=D)[:, None]])
    assert fd.abs().max() > 1e-3
    torch.testing.assert_close(grad, fd, atol=1e-7, rtol=1e-5)


# --- methods on nonlinear operators ----------------------------------------------------------------
class Tiny(torch.nn.Module):
    """About the epsilon of an isotropic Gaussian prior N(0, 0.25 I) on images (a well-behaved network)."""

    def forward(self, x, t):
        abar = float(torch.cumprod(1 - Schedule.linear().train_betas, 0)[int(t[0])])
        return (1 - abar) ** 0.5 * (x / (0.25 * abar + 1 - abar) + 0.05 * torch.tanh(x))  # + a curvature


def _image_problem(op_cls):
    torch.manual_seed(0)
    prior = NetworkPrior(Tiny(), (1, 8, 8), schedule=Schedule.linear())
    op = op_cls((1, 8, 8))
    y = op.A(torch.rand(2, 1, 8, 8) * 2 - 1)
    return prior, op, y


@pytest.mark.parametrize("op_cls", [PhaseRetrieval, HighDynamicRange])
def test_dps_daps_reddiff_and_cmi_dps_run_on_nonlinear_operators(op_cls):
    prior, op, y = _image_problem(op_cls)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    outs = [sample(prior, op, y, lambda s: dps(s, zeta=1.0), steps=4, generator=g(), progress=False),
            sample(prior, op, y, lambda s: dps(s, zeta=1.0), steps=4, generator=g(), progress=False,
                   cmi=CMIConfig(eta=1e-3), cmi_generator=g()),
            drivers.daps(prior, op, y, steps=3, langevin_steps=2, generator=g()),
            drivers.reddiff(prior, op, y, steps=4, generator=g())]
    for x in outs:
        assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize("rule", [pigdm, mcg, solvers.ddnm, solvers.ddnm_plus, solvers.diffpir, solvers.tmpd])
def test_solvers_needing_pinv_or_k_solves_refuse_nonlinear_operators(rule):
    prior, op, y = _image_problem(PhaseRetrieval)
    with pytest.raises(ValueError, match="nonlinear"):
        sample(prior, op, y, rule, steps=2, generator=torch.Generator().manual_seed(0), progress=False)


def test_dps_fits_a_phase_retrieval_measurement_better_than_the_unguided_sample():
    """On the smooth 8x8 prior: ||y - A(x)|| after DPS is well below that of the same run without guidance."""
    prior, op, _ = _image_problem(PhaseRetrieval)
    truth = 0.5 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = op.A(truth)
    res = {}
    for zeta in (0.0, 2.0):
        x = sample(prior, op, y, lambda s: dps(s, zeta=zeta), steps=20, generator=torch.Generator().manual_seed(2),
                   progress=False, likelihood_clip=False)
        res[zeta] = (y - op.A(x)).flatten(1).norm(dim=1)
    assert (res[2.0] < 0.7 * res[0.0]).all(), res
