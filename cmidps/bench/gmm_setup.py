"""What a ``cmidps bench gmm`` run is: the exact-posterior problem, its score, and the methods with their
step-size defaults and grids.

A problem (:func:`draw_problem`) is a deterministic function of ``(dim, meas, seed)``: the MCGdiff
prior (:meth:`GaussianMixturePrior.mcgdiff`), a random ``A`` with sorted U[0, 1] singular values, the
noise level, the measurement and its exact posterior (a Gaussian mixture). The score is the sliced
Wasserstein-2 distance (:func:`sliced_wasserstein`, exact 1-D W2 per direction) to exact posterior
draws (:func:`references`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.drivers import DRIVERS, DRIVER_STEP_PARAM
from ..methods.samplers import STEP_PARAM
from ..operators import DenseOperator
from ..prior import GaussianMixturePrior

DTYPE = torch.float64

# The paper's baselines, then the field's solvers (cmidps.solvers: rules; cmidps.drivers: DAPS, RED-diff).
BASELINES = ("dps", "pigdm", "mcg", "dsg", "ddnm", "ddnm_plus", "ddnm_svd", "ddrm", "diffpir", "tmpd", "daps",
             "reddiff")
CMI_BASELINES = tuple(b for b in BASELINES if b not in DRIVERS)  # CMI needs an x_t proposal (docs/solvers.md)
METHODS = tuple(m for x in BASELINES for m in ((x, "cmi+" + x) if x in CMI_BASELINES else (x,)))
TUNED_PARAM = {**STEP_PARAM, **DRIVER_STEP_PARAM}  # the tuned parameter of each method (DDNM, DDNM+: none)
DEFAULT_STEP = {"dps": 1.0, "pigdm": 1.0, "mcg": 1.0, "dsg": 0.2, "diffpir": 1.0, "tmpd": 1.0, "daps": 1e-3,
                "reddiff": 0.25}
DEFAULT_GRID = {"dps": [0.1, 0.3, 1.0, 3.0], "pigdm": [0.3, 1.0, 2.0, 4.0],
                "mcg": [0.1, 0.3, 1.0, 3.0], "dsg": [0.1, 0.2, 0.5, 1.0],
                "diffpir": [0.3, 1.0, 3.0, 10.0], "tmpd": [0.3, 0.5, 1.0, 1.5],
                "daps": [1e-4, 1e-3, 1e-2, 3e-2], "reddiff": [0.03, 0.1, 0.3, 1.0]}
# Fixed settings of the field's solvers here (not tuned): DiffPIR's noise share, TMPD's CG, DAPS's chain.
SOLVER_FIXED = {"diffpir": {"zeta": 0.3}, "tmpd": {"cg_iters": 20},
                "daps": {"langevin_steps": 20, "ode_steps": 1, "lr_min_ratio": 0.01},
                "reddiff": {"lam": 0.25}}
DEFAULT_ETA_GRID = [0.01, 0.03, 0.1, 0.3]

# Offsets that derive the reference and floor generator seeds from a problem seed (cmidps.bench.gmm has
# the sampler's and the CMI probes').
_REF, _FLOOR = 3_000_003, 4_000_003

# --- the problem ---------------------------------------------------------------------------------
@dataclass
class Problem:
    seed: int
    prior: GaussianMixturePrior
    op: DenseOperator
    A: torch.Tensor
    sigma_y: float
    x_star: torch.Tensor  # (1, d)
    y: torch.Tensor  # (1, m)
    posterior: GaussianMixturePrior


def draw_problem(dim: int, meas: int, seed: int) -> Problem:
    """One MCGdiff problem, a deterministic function of ``(dim, meas, seed)``."""
    g = torch.Generator().manual_seed(seed)
    prior = GaussianMixturePrior.mcgdiff(dim, g, DTYPE)
    a = torch.randn(meas, dim, generator=g, dtype=DTYPE)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    s = torch.rand(min(meas, dim), generator=g, dtype=DTYPE).sort(descending=True).values
    A = u @ torch.diag(s) @ vh
    sigma_y = float(torch.rand(1, generator=g, dtype=DTYPE)) * float(s.max())
    x_star = prior.sample(1, g)
    y = x_star @ A.T + sigma_y * torch.randn(1, meas, generator=g, dtype=DTYPE)
    post = prior.posterior(A, y[0], sigma_y)
    return Problem(seed, prior, DenseOperator(A), A, sigma_y, x_star, y, post)


# --- sliced Wasserstein-2 ------------------------------------------------------------------------
def random_directions(dim: int, n: int, seed: int = 0, dtype=DTYPE) -> torch.Tensor:
    """``n`` unit vectors uniform on the sphere of R^dim, from a fixed seed: ``(n, dim)``."""
    th = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return th / th.norm(dim=1, keepdim=True)


def wasserstein2_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between the empirical measures of the columns of ``a`` (n1, L) and ``b`` (n2, L).

    W2^2 = int_0^1 (F_a^-1(u) - F_b^-1(u))^2 du; both quantile functions are step functions, so the
    integral is a sum over the merged breakpoints {k / n1} u {k / n2}. Returns (L,).
    """
    n1, n2 = a.shape[0], b.shape[0]
    qa, qb = a.sort(0).values, b.sort(0).values
    if n1 == n2:
        return ((qa - qb) ** 2).mean(0)
    br = torch.cat([torch.arange(1, n1 + 1, dtype=a.dtype) / n1, torch.arange(1, n2 + 1, dtype=a.dtype) / n2]).sort().values
    lo = torch.cat([torch.zeros(1, dtype=a.dtype), br[:-1]])
    width, mid = br - lo, 0.5 * (br + lo)
    ia = (mid * n1).floor().long().clamp(0, n1 - 1)
    ib = (mid * n2).floor().long().clamp(0, n2 - 1)
    return (width[:, None] * (qa[ia] - qb[ib]) ** 2).sum(0)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, directions: int | torch.Tensor = 1000,
                       seed: int = 0) -> float:
    """Sliced Wasserstein-2: sqrt(mean over unit directions theta of W2^2(<theta, x>, <theta, y>)).

    ``directions`` is a count (drawn from ``seed``) or an ``(L, d)`` tensor of unit vectors.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two (n, d) sample sets, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.to(DTYPE), y.to(DTYPE)
    th = random_directions(x.shape[1], directions, seed) if isinstance(directions, int) else directions.to(DTYPE)
    return float(wasserstein2_1d(x @ th.T, y @ th.T).mean().sqrt())


def references(problem: Problem, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent exact posterior sample sets (reference and floor)."""
    ref = problem.posterior.sample(n, torch.Generator().manual_seed(problem.seed + _REF))
    other = problem.posterior.sample(n, torch.Generator().manual_seed(problem.seed + _FLOOR))
    return ref, other


# --- methods -------------------------------------------------------------------------------------
def base_of(method: str) -> str:
    return method[4:] if method.startswith("cmi+") else method


def rule_params(method: str, params: dict) -> dict:
    """The rule's keyword arguments for ``method`` from the settings dict (see :func:`settings_from_args`)."""
    base = base_of(method)
    kw = {TUNED_PARAM[base]: params["step"][base]} if base in TUNED_PARAM else {}
    if base == "dsg":
        kw["interval"] = params["dsg_interval"]
    kw.update(SOLVER_FIXED.get(base, {}))
    return kw
