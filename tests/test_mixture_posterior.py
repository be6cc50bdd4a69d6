"""The exact posterior of the Gaussian-mixture prior (the ground truth of ``bench gmm``) against an
independent computation: the posterior density prior(x) N(y; A x, sigma_y^2 I) integrated numerically
on a grid (d <= 3), written here from the densities alone (no call into the class but the one tested).
The rectangle rule on a fine grid is exact to rounding for Gaussians well inside the grid."""
import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch)
import math

import pytest
import torch

from cmidps.prior import GaussianMixturePrior

D = torch.float64


def _log_normal(x, mean, cov):
    """log N(x; mean, cov) for x (N, d), written out (Cholesky-free: inverse and slogdet)."""
    d = x.shape[1]
    diff = x - mean
    quad = (diff @ torch.linalg.inv(cov) * diff).sum(1)
    return -0.5 * quad - 0.5 * torch.linalg.slogdet(cov)[1] - 0.5 * d * math.log(2 * math.pi)


def _grid_posterior(weights, means, covs, A, y, sigma_y, lo, hi, n):
    """Posterior weights of the components, mean and covariance by quadrature on a grid of n^d points."""
    d = means.shape[1]
    axes = [torch.linspace(lo[i], hi[i], n, dtype=D) for i in range(d)]
    x = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    log_lik = -0.5 * ((x @ A.T - y) ** 2).sum(1) / sigma_y**2
    comp = torch.stack([math.log(w) + _log_normal(x, mu, S) + log_lik
                        for w, mu, S in zip(weights.tolist(), means, covs)])  # (K, N)
    shift = comp.max()
    dens_k = torch.exp(comp - shift)  # unnormalised, per component
    mass_k = dens_k.sum(1)
    total = mass_k.sum()
    dens = dens_k.sum(0) / total
    mean = (dens[:, None] * x).sum(0)
    diff = x - mean
    cov = (dens[:, None, None] * diff[:, :, None] * diff[:, None, :]).sum(0)
    edge = max(float(dens.reshape([n] * d).select(i, j).max()) for i in range(d) for j in (0, n - 1))
    return mass_k / total, mean, cov, edge


def _spd(d, g, scale):
    q = torch.randn(d, d, generator=g, dtype=D)
    return scale * (q @ q.T / d + 0.3 * torch.eye(d, dtype=D))


CASES = {  # name: (d, m, components, sigma_y, grid points per axis)
    "d2_m1_k4": (2, 1, 4, 0.4, 601),
    "d3_m2_k3": (3, 2, 3, 0.5, 111),
    "d3_m1_k5": (3, 1, 5, 0.6, 111),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mixture_posterior_matches_numerical_integration(case):
    d, m, k, sigma_y, n = CASES[case]
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    weights = torch.rand(k, generator=g, dtype=D) + 0.3
    weights = weights / weights.sum()
    means = 1.5 * torch.randn(k, d, generator=g, dtype=D)
    covs = torch.stack([_spd(d, g, 0.5) for _ in range(k)])
    A = torch.randn(m, d, generator=g, dtype=D)
    y = means[0] @ A.T + 0.5 * torch.randn(m, generator=g, dtype=D)

    post = GaussianMixturePrior(weights, means, covs).posterior(A, y, sigma_y)
    # the class's mixture -> its overall mean and covariance (law of total covariance)
    w, mu, S = post.weights, post.means, post.cov
    mean = (w[:, None] * mu).sum(0)
    cov = (w[:, None, None] * (S + mu[:, :, None] * mu[:, None, :])).sum(0) - mean[:, None] * mean[None, :]

    lo = [float((means[:, i] - 9).min()) for i in range(d)]
    hi = [float((means[:, i] + 9).max()) for i in range(d)]
    w_ref, mean_ref, cov_ref, edge = _grid_posterior(weights, means, covs, A, y, sigma_y, lo, hi, n)
    assert edge < 1e-13  # the grid holds the whole posterior
    assert w_ref.max() < 0.99 and (w_ref > 1e-3).sum() >= 2  # a real mixture: several components matter
    torch.testing.assert_close(w, w_ref, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(cov, cov_ref, rtol=1e-6, atol=1e-8)
    # each component's own posterior: mean and covariance of its share of the density
    assert post.means.shape == (k, d) and post.cov.shape == (k, d, d)


def test_component_posteriors_match_the_grid():
    """Per component: the mean and covariance of w_k N(x; mu_k, S_k) N(y; A x, sigma_y^2) on the grid."""
    d, m, sigma_y = 2, 1, 0.3
    g = torch.Generator().manual_seed(7)
    weights = torch.tensor([0.6, 0.4], dtype=D)
    means = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=D)
    covs = torch.stack([_spd(d, g, 0.6) for _ in range(2)])
    A = torch.tensor([[1.0, 0.5]], dtype=D)
    y = torch.tensor([0.2], dtype=D)
    post = GaussianMixturePrior(weights, means, covs).posterior(A, y, sigma_y)
    for j in range(2):
        one = torch.zeros(2, dtype=D)
        one[j] = 1.0
        _, mean_ref, cov_ref, _ = _grid_posterior(one + 1e-300, means, covs, A, y, sigma_y, [-7, -7], [7, 8], 501)
        torch.testing.assert_close(post.means[j], mean_ref, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(post.cov[j], cov_ref, rtol=1e-6, atol=1e-8)


def test_mixture_sampler_matches_its_moments():
    """GaussianMixturePrior.sample (the reference and floor sets of bench gmm): component frequencies,
    mean and covariance of 40000 draws against the mixture's closed-form moments (non-diagonal S_k, so a
    transposed Cholesky factor would show)."""
    weights = torch.tensor([0.3, 0.7], dtype=D)
    means = torch.tensor([[2.0, -1.0], [-1.0, 1.0]], dtype=D)
    covs = torch.tensor([[[1.0, 0.8], [0.8, 1.0]], [[0.5, -0.3], [-0.3, 2.0]]], dtype=D)
    x = GaussianMixturePrior(weights, means, covs).sample(40000, torch.Generator().manual_seed(0))
    mean = (weights[:, None] * means).sum(0)
    cov = (weights[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0) - mean[:, None] * mean[None]
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.06, rtol=0)
    near_first = ((x - means[0]).norm(dim=1) < (x - means[1]).norm(dim=1)).double().mean()
    assert 0.2 < float(near_first) < 0.4
