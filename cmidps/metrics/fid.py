"""Fréchet distance (FID) and kernel MMD (KID) between two sets of feature vectors.

* ``frechet_distance(f1, f2)``: fit a Gaussian to each (N, D) feature matrix (mean, covariance with the
  unbiased 1/(N-1) normalisation, as pytorch-fid / torch-fidelity / torchmetrics) and return
  ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``. The trace of the matrix square root is
  computed stably in float64 as ``sum_i sqrt(lambda_i)`` over the eigenvalues of the symmetric PSD matrix
  ``S1^{1/2} S2 S1^{1/2}`` (same spectrum as ``S1 S2``), with ``S1^{1/2}`` from a symmetric eigendecomposition
  and tiny negative round-off eigenvalues clipped to zero; no complex parts to discard. With fewer samples
  than dimensions the same trace is the nuclear norm of an N1 x N2 matrix (see ``frechet_distance``).
* ``kernel_inception_distance(f1, f2)``: the unbiased estimator of MMD^2 with the polynomial kernel
  ``k(x, y) = (x.y / D + 1)^3`` (Bińkowski et al. 2018), averaged over ``subsets`` random subsets of
  ``subset_size`` rows of each set (torch-fidelity / torchmetrics defaults: 100 subsets of 1000); returns
  ``(mean, std)``.

With Inception pool3 features these are FID and KID. With other features (e.g. the digit classifier's),
the same numbers are a domain feature distance and must be named as such.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._common import MetricUnavailable

__all__ = ["feature_stats", "frechet_distance", "frechet_distance_from_stats", "mmd2_unbiased",
           "kernel_inception_distance"]


def _np64(f) -> np.ndarray:
    if torch.is_tensor(f):
        f = f.detach().cpu().double().numpy()
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"expected an (N, D) feature matrix, got shape {f.shape}")
    return f


def feature_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of an (N, D) feature matrix, float64."""
    f = _np64(f)
    if f.shape[0] < 2:
        raise MetricUnavailable(f"a Fréchet distance needs at least 2 samples per set, got {f.shape[0]}")
    mu = f.mean(0)
    c = f - mu
    return mu, (c.T @ c) / (f.shape[0] - 1)


def _t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2: sum of sqrt of the eigenvalues of S1^{1/2} S2 S1^{1/2}."""
    a, b = _t64(s1), _t64(s2)
    w, v = torch.linalg.eigh((a + a.T) / 2)
    r = (v * w.clamp(min=0).sqrt()) @ v.T
    m = r @ b @ r
    ev = torch.linalg.eigvalsh((m + m.T) / 2)
    return float(ev.clamp(min=0).sqrt().sum())


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"inconsistent shapes: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    d = mu1 - mu2
    val = float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2))
    return max(val, 0.0)  # >= 0 in exact arithmetic; clip round-off


def frechet_distance(f1, f2) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature matrices.

    With few samples (N1 * N2 <= D^2) it uses the exact identity tr((S1 S2)^{1/2}) = ||A B^T||_* (nuclear
    norm), where S1 = A^T A and S2 = B^T B with A, B the centred features over sqrt(N - 1): an
    N1 x N2 SVD instead of D x D eigendecompositions (and exact for rank-deficient covariances)."""
    x, y = _np64(f1), _np64(f2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    n1, n2, dim = x.shape[0], y.shape[0], x.shape[1]
    if min(n1, n2) < 2:
        raise MetricUnavailable(f"a Fréchet distance needs at least 2 samples per set, got {n1} and {n2}")
    if n1 * n2 > dim * dim:
        mu1, s1 = feature_stats(x)
        mu2, s2 = feature_stats(y)
        return frechet_distance_from_stats(mu1, s1, mu2, s2)
    a, b = _t64(x), _t64(y)
    mu1, mu2 = a.mean(0), b.mean(0)
    a = (a - mu1) / math.sqrt(n1 - 1)
    b = (b - mu2) / math.sqrt(n2 - 1)
    tr_covmean = torch.linalg.svdvals(a @ b.T).sum()
    val = float((mu1 - mu2).square().sum() + a.square().sum() + b.square().sum() - 2.0 * tr_covmean)
    return max(val, 0.0)


def _poly_kernel(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (a @ b.T * gamma + coef0) ** degree


def mmd2_unbiased(f1, f2, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 estimate between two feature matrices (sizes m and n may differ) with the
    polynomial kernel ``(gamma x.y + coef0)^degree``, ``gamma = 1/D`` by default:
    ``sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 sum_{i,j} k(x_i,y_j)/(mn)``."""
    x, y = _np64(f1), _np64(f2)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise MetricUnavailable(f"KID needs at least 2 samples per set, got {m} and {n}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = _poly_kernel(x, x, degree, g, coef0)
    kyy = _poly_kernel(y, y, degree, g, coef0)
    kxy = _poly_kernel(x, y, degree, g, coef0)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.sum() / (m * n))


def kernel_inception_distance(f1, f2, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                              degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> tuple[float, float]:
    """KID: mean and standard deviation of ``mmd2_unbiased`` over ``subsets`` random subsets (drawn without
    replacement within a subset, with a seeded generator) of ``min(subset_size, N1, N2)`` rows of each set.
    When that size equals both set sizes one subset is used (every subset would be the whole set)."""
    x, y = _np64(f1), _np64(f2)
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise MetricUnavailable(f"KID needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    if size == x.shape[0] == y.shape[0]:
        v = mmd2_unbiased(x, y, degree, gamma, coef0)
        return v, 0.0
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(x[rng.choice(x.shape[0], size, replace=False)],
                          y[rng.choice(y.shape[0], size, replace=False)], degree, gamma, coef0)
            for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))
