"""``cmidps bench gmm``: the exact-posterior Gaussian-mixture benchmark of MCGdiff (Cardoso et al., ICLR 2024).

Per problem seed (``docs/math.md``, "Exact-posterior benchmark"):

* prior: :meth:`GaussianMixturePrior.mcgdiff` (25 components, identity covariances, means on a grid of
  spacing 8, weights ``randn(25)^2``), whose diffused scores are closed form;
* ``A``: ``randn(m, d)``, its singular values replaced by sorted U[0, 1] draws;
* ``sigma_y = U[0, 1] * s_max`` and ``y = A x* + sigma_y eps`` with ``x*`` drawn from the prior;
* the exact posterior (a Gaussian mixture, :meth:`GaussianMixturePrior.posterior`).

Every method runs :func:`cmidps.sampling.sample` on one batch of ``--samples`` draws; X and CMI+X use the
same sampler generator seed (CMI probes come from their own generator), so their difference is the CMI
term alone. The score is the sliced Wasserstein-2 distance to ``--ref-samples`` exact posterior draws,
over ``--directions`` random directions drawn once from ``--direction-seed``; the ``floor`` is the same
distance between two independent exact posterior sample sets of those sizes.

With ``--tune-seeds`` the step size of each baseline is first picked from its grid on those seeds (lowest
mean SW2), then each CMI+X's eta from ``--eta-grid`` with X's step size fixed; the choices and all tuning
scores go into the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cmi import CMIConfig, ESTIMATORS, ETA_SCHEDULES, GRADS, KINV
from ..commands.outputs import check_output_file, is_json_with, write_json
from ..operators import DenseOperator
from .intervals import interval
from ..prior import GaussianMixturePrior
from ..methods.drivers import DRIVERS, DRIVER_STEP_PARAM
from ..methods.samplers import STEP_PARAM, make_rule
from ..sampling import SamplingDiverged, sample

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
MAX_DIM = 100_000  # bounds of --dim/--meas and of the sample counts: larger would exhaust memory, not run
MAX_SAMPLES = 1_000_000

# Offsets that derive independent generator seeds from a problem seed.
_SAMPLER, _CMI, _REF, _FLOOR = 1_000_003, 2_000_003, 3_000_003, 4_000_003


# --- the prior with a fast exact score --------------------------------------------------------------
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


# --- running methods -------------------------------------------------------------------------------
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


def run_method(problem: Problem, method: str, params: dict, steps: int, samples: int,
               cmi: CMIConfig | None = None) -> torch.Tensor:
    """Samples of ``method`` on ``problem`` (raises SamplingDiverged)."""
    base = base_of(method)
    if base not in BASELINES:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    use_cmi = method.startswith("cmi+")
    if use_cmi and cmi is None:
        raise ValueError(f"{method} needs a CMI configuration")
    if base in DRIVERS:
        return DRIVERS[base](problem.prior, problem.op, problem.y, problem.sigma_y, steps=steps,
                             generator=torch.Generator().manual_seed(problem.seed + _SAMPLER), batch=samples,
                             **rule_params(method, params))
    return sample(problem.prior, problem.op, problem.y, make_rule(base, **rule_params(method, params)), steps=steps,
                  generator=torch.Generator().manual_seed(problem.seed + _SAMPLER), sigma_y=problem.sigma_y,
                  batch=samples, cmi=cmi if use_cmi else None,
                  cmi_generator=torch.Generator().manual_seed(problem.seed + _CMI), progress=False)


def cmi_config(params: dict, method: str) -> CMIConfig:
    c = params["cmi"]
    return CMIConfig(eta=params["eta"][base_of(method)], estimator=c["estimator"], probes=c["probes"],
                     kinv=c["kinv"], cg_iters=c["cg_iters"], eta_schedule=c["eta_schedule"],
                     grad=c.get("grad", "autodiff"))  # results written before --cmi-grad used autodiff


def evaluate(problem: Problem, method: str, params: dict, ref: torch.Tensor, theta: torch.Tensor) -> dict:
    """Run one method and score it: ``{"method", "seed", "sw2" (None if diverged), "seconds" (sampling
    wall time), "diverged" (only if it did)}``."""
    cfg = cmi_config(params, method) if method.startswith("cmi+") else None
    t0 = time.perf_counter()
    try:
        x = run_method(problem, method, params, params["steps"], params["samples"], cfg)
        seconds = time.perf_counter() - t0  # sampling only
        sw2, diverged = sliced_wasserstein(x, ref, theta), False
    except SamplingDiverged:
        seconds, sw2, diverged = time.perf_counter() - t0, None, True
    out = {"method": method, "seed": problem.seed, "sw2": sw2, "seconds": seconds}
    if diverged:
        out["diverged"] = True
    return out


def references(problem: Problem, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent exact posterior sample sets (reference and floor)."""
    ref = problem.posterior.sample(n, torch.Generator().manual_seed(problem.seed + _REF))
    other = problem.posterior.sample(n, torch.Generator().manual_seed(problem.seed + _FLOOR))
    return ref, other


# --- tuning ----------------------------------------------------------------------------------------
def _score(rows: list[dict]) -> float:
    vals = [r["sw2"] for r in rows]
    return math.inf if any(v is None for v in vals) else sum(vals) / len(vals)


def tune(params: dict, methods: list[str], seeds: list[int], grids: dict, eta_grid: list[float],
         progress: bool = True) -> dict:
    """Pick each baseline's step size on ``seeds`` (lowest mean SW2; divergence counts as infinite), then
    each CMI+X's eta with X's step fixed. Updates ``params`` in place; returns the tuning record."""
    from tqdm.auto import tqdm

    dim, meas = params["dim"], params["meas"]
    bases = sorted({base_of(m) for m in methods}, key=BASELINES.index)
    cmi_bases = [b for b in bases if "cmi+" + b in methods]
    problems = [draw_problem(dim, meas, s) for s in seeds]
    refs = [references(p, params["ref_samples"])[0] for p in problems]
    theta = random_directions(dim, params["directions"], params["direction_seed"])
    n_runs = len(seeds) * (sum(len(grids[b]) for b in bases if b in TUNED_PARAM) + len(cmi_bases) * len(eta_grid))
    bar = tqdm(total=n_runs, desc=f"tuning d={dim} m={meas}", disable=not progress)
    record = {"seeds": list(seeds), "grids": {b: list(grids[b]) for b in bases if b in TUNED_PARAM}, "eta_grid": list(eta_grid),
              "step_scores": {}, "eta_scores": {}, "chosen_step": {}, "chosen_eta": {}}
    for b in [b for b in bases if b in TUNED_PARAM]:
        scores = {}
        for v in grids[b]:
            trial = {**params, "step": {**params["step"], b: v}}
            rows = []
            for p, ref in zip(problems, refs):
                rows.append(evaluate(p, b, trial, ref, theta))
                bar.update()
            scores[v] = _score(rows)
        best = min(grids[b], key=lambda v: scores[v])
        params["step"][b] = best
        record["step_scores"][b] = {str(k): v for k, v in scores.items()}
        record["chosen_step"][b] = best
    for b in cmi_bases:
        scores = {}
        for e in eta_grid:
            trial = {**params, "eta": {**params["eta"], b: e}}
            rows = []
            for p, ref in zip(problems, refs):
                rows.append(evaluate(p, "cmi+" + b, trial, ref, theta))
                bar.update()
            scores[e] = _score(rows)
        best = min(eta_grid, key=lambda e: scores[e])
        params["eta"][b] = best
        record["eta_scores"][b] = {str(k): v for k, v in scores.items()}
        record["chosen_eta"][b] = best
    bar.close()
    return record


# --- the benchmark -------------------------------------------------------------------------------
def warm_up(params: dict, methods: list[str]) -> None:
    """Run every method once on a tiny problem (untimed), so the first timed run pays no start-up cost."""
    problem = draw_problem(params["dim"], params["meas"], 0)
    for method in methods:
        cfg = cmi_config(params, method) if method.startswith("cmi+") else None
        try:
            run_method(problem, method, params, 2, 8, cfg)
        except SamplingDiverged:
            pass


def run_benchmark(params: dict, methods: list[str], seeds: list[int], progress: bool = True, on_row=None) -> dict:
    """Run every method on every seed; returns ``{"config", "results", "floor"}``. ``on_row(partial)``
    (optional) is called after every finished row with the results so far in the same form."""
    from tqdm.auto import tqdm

    theta = random_directions(params["dim"], params["directions"], params["direction_seed"])
    warm_up(params, methods)
    results, floor = [], []
    bar = tqdm(total=len(seeds) * len(methods), desc=f"gmm d={params['dim']} m={params['meas']}",
               disable=not progress)
    for seed in seeds:
        problem = draw_problem(params["dim"], params["meas"], seed)
        ref, other = references(problem, params["ref_samples"])
        floor.append({"seed": seed, "sw2": sliced_wasserstein(other, ref, theta)})
        for method in methods:
            row = evaluate(problem, method, params, ref, theta)
            results.append(row)
            if on_row is not None:
                on_row({"config": {**params, "methods": list(methods), "seeds": list(seeds)}, "results": results,
                        "floor": floor})
            bar.set_postfix(method=method, seed=seed, sw2="diverged" if row["sw2"] is None else f"{row['sw2']:.3f}")
            bar.update()
    bar.close()
    return {"config": {**params, "methods": list(methods), "seeds": list(seeds)}, "results": results, "floor": floor}


# --- summaries -------------------------------------------------------------------------------------
def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width t_{0.975, n-1} sd / sqrt(n) of its 95% interval (``nan`` for n < 2):
    :func:`cmidps.bench.intervals.interval`, the helper of every report."""
    iv = interval(values)
    return iv.mean, iv.half_width


def _verdict(values: list[float]) -> str:
    """'excludes 0', 'includes 0' or 'too few to test' (n < 5) for the paired differences ``values``."""
    return interval(values).verdict


def summarize(out: dict) -> dict:
    """Per-method mean +- 95% CI of SW2 and seconds, the floor, and paired CMI+X vs X statistics."""
    steps = out["config"]["steps"]
    by = {}
    for r in out["results"]:
        by.setdefault(r["method"], []).append(r)
    methods = [m for m in out["config"]["methods"] if m in by]
    per = {}
    for m in methods:
        ok = [r["sw2"] for r in by[m] if r["sw2"] is not None]
        secs = [r["seconds"] for r in by[m]]
        per[m] = {"sw2": mean_ci(ok), "seconds": mean_ci(secs), "n": len(ok), "diverged": len(by[m]) - len(ok),
                  "sec_per_step": sum(secs) / len(secs) / steps}
    paired = {}
    for x in BASELINES:
        cx = "cmi+" + x
        if x not in by or cx not in by:
            continue
        bx = {r["seed"]: r["sw2"] for r in by[x]}
        bc = {r["seed"]: r["sw2"] for r in by[cx]}
        common = [s for s in bx if s in bc and bx[s] is not None and bc[s] is not None]
        diffs = [bc[s] - bx[s] for s in common]
        paired[x] = {"wins": sum(d < 0 for d in diffs), "losses": sum(d > 0 for d in diffs),
                     "ties": sum(d == 0 for d in diffs), "n": len(common), "diff": mean_ci(diffs),
                     "verdict": _verdict(diffs),
                     "cost_ratio": per[cx]["sec_per_step"] / per[x]["sec_per_step"]}
    return {"methods": per, "floor": mean_ci([f["sw2"] for f in out["floor"]]), "paired": paired,
            "ranking": ranking(by, per)}


def ranking(by: dict, per: dict) -> list[dict]:
    """Methods by mean SW2 (those that diverged on some seed last), each with its paired difference to
    the first: mean of SW2(method) - SW2(best) over the seeds both finished, with its 95% interval."""
    order = sorted(per, key=lambda m: (per[m]["diverged"] > 0, per[m]["sw2"][0]))
    if not order:
        return []
    best = {r["seed"]: r["sw2"] for r in by[order[0]]}
    rows = []
    for m in order:
        mine = {r["seed"]: r["sw2"] for r in by[m]}
        diffs = [mine[k] - best[k] for k in mine if k in best and mine[k] is not None and best[k] is not None]
        rows.append({"method": m, "sw2": per[m]["sw2"], "diverged": per[m]["diverged"], "vs_best": mean_ci(diffs),
                     "n": len(diffs), "verdict": _verdict(diffs) if m != order[0] else ""})
    return rows


def format_table(out: dict) -> str:
    s = summarize(out)
    cfg = out["config"]
    lines = [f"GMM benchmark d={cfg['dim']} m={cfg['meas']}, {len(cfg['seeds'])} seeds, {cfg['steps']} steps, "
             f"{cfg['samples']} samples, CMI {cfg['cmi']['estimator']}/{cfg['cmi']['kinv']}",
             f"{'method':<12} {'SW2 mean +- 95%':>20} {'seconds':>16} {'ms/step':>8} {'params':<24}"]
    for m, v in s["methods"].items():
        mu, ci = v["sw2"]
        sm, sci = v["seconds"]
        kw = rule_params(m, cfg)
        if m.startswith("cmi+"):
            kw["eta"] = cfg["eta"][base_of(m)]
        div = f" ({v['diverged']} diverged)" if v["diverged"] else ""
        lines.append(f"{m:<12} {mu:>10.4f} +- {ci:<7.4f} {sm:>7.2f} +- {sci:<5.2f} {1000 * v['sec_per_step']:>8.2f} "
                     f"{', '.join(f'{k}={w:g}' for k, w in kw.items())}{div}")
    fm, fci = s["floor"]
    lines.append(f"{'floor':<12} {fm:>10.4f} +- {fci:<7.4f}")
    if s["paired"]:
        lines.append(f"{'paired':<12} {'CMI+X wins/n':>13} {'mean SW2(CMI+X) - SW2(X) +- 95%':>34} {'cost ratio':>11}")
        for x, p in s["paired"].items():
            dm, dci = p["diff"]
            lines.append(f"{'cmi+' + x + ' vs ' + x:<18} {p['wins']:>3}/{p['n']:<3} {dm:>+14.4f} +- {dci:<10.4f} "
                         f"{p['cost_ratio']:>9.2f}x  {p['verdict']}")
    lines.append(f"{'rank':<5} {'method':<16} {'SW2 - SW2(best) +- 95% (paired)':>32}")
    for k, r in enumerate(s["ranking"], 1):
        dm, dci = r["vs_best"]
        div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
        lines.append(f"{k:<5} {r['method']:<16} {dm:>+14.4f} +- {dci:<10.4f}{div}  {r['verdict']}")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------
def add_gmm_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Add ``gmm`` to the subparsers of the ``bench`` command group (``set_defaults(func=run_gmm)``)."""
    from ..commands.options import UniqueInts, bounded_int, float_list, method_list, nonneg_float, positive_int, probes_int

    p = bench_subparsers.add_parser(
        "gmm", help="exact-posterior Gaussian-mixture benchmark (MCGdiff): sliced Wasserstein-2 to the posterior",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=bounded_int(1, MAX_DIM), default=8, help=f"d, the signal dimension (1..{MAX_DIM})")
    p.add_argument("--meas", type=bounded_int(1, MAX_DIM), default=2, help="m, the number of measurements (1..d)")
    p.add_argument("--seeds", type=int, nargs="+", action=UniqueInts, default=list(range(10)), help="problem seeds (distinct)")
    p.add_argument("--methods", type=method_list(METHODS), default=",".join(METHODS),
                   help=f"comma-separated, case-insensitive, from {','.join(METHODS)}")
    p.add_argument("--steps", type=bounded_int(1, 1000), default=100, help="reverse steps (respaced DDPM, 1..1000)")
    p.add_argument("--samples", type=bounded_int(1, MAX_SAMPLES), default=1000, help="samples per method (one batch)")
    p.add_argument("--ref-samples", type=bounded_int(2, MAX_SAMPLES), default=1000, help="exact posterior samples (reference and floor)")
    p.add_argument("--directions", type=bounded_int(1, MAX_SAMPLES), default=1000, help="random directions of the sliced Wasserstein")
    p.add_argument("--direction-seed", type=int, default=0)
    p.add_argument("--zeta-dps", type=nonneg_float, default=DEFAULT_STEP["dps"], help="DPS step size")
    p.add_argument("--weight-pigdm", type=nonneg_float, default=DEFAULT_STEP["pigdm"], help="PiGDM guidance weight")
    p.add_argument("--zeta-mcg", type=nonneg_float, default=DEFAULT_STEP["mcg"], help="MCG gradient step size")
    p.add_argument("--gamma-dsg", type=nonneg_float, default=DEFAULT_STEP["dsg"], help="DSG guidance rate")
    p.add_argument("--interval-dsg", type=positive_int, default=1, help="DSG guidance interval")
    for b in ("diffpir", "tmpd", "daps", "reddiff"):
        p.add_argument(f"--{TUNED_PARAM[b]}-{b}", type=nonneg_float, default=DEFAULT_STEP[b], help=f"{b}'s {TUNED_PARAM[b]}")
    p.add_argument("--eta", type=nonneg_float, default=0.1, help="CMI step size for every CMI+X")
    for b in CMI_BASELINES:
        p.add_argument(f"--eta-{b}", type=nonneg_float, default=None, help=f"CMI step size for cmi+{b} (overrides --eta)")
    p.add_argument("--cmi", default="lowrank", choices=ESTIMATORS, help="CMI gradient estimator")
    p.add_argument("--kinv", default="isotropic", choices=KINV, help="how K^-1 is applied")
    p.add_argument("--cmi-grad", default=CMIConfig.grad, choices=GRADS,
                   help="how the CMI gradient is taken: fd, central (differences of VJPs) or autodiff (double backward)")
    p.add_argument("--cg-iters", type=positive_int, default=10)
    p.add_argument("--probes", type=probes_int, default=1)
    p.add_argument("--eta-schedule", default="constant", choices=ETA_SCHEDULES)
    p.add_argument("--tune-seeds", type=int, nargs="*", action=UniqueInts, default=None,
                   help="tune step sizes, then etas, on these seeds first (keep them apart from --seeds)")
    for b in DEFAULT_GRID:
        p.add_argument(f"--grid-{b}", type=float_list(0), default=DEFAULT_GRID[b],
                       help=f"{TUNED_PARAM[b]} grid for {b} (comma-separated; default {DEFAULT_GRID[b]})")
    p.add_argument("--eta-grid", type=float_list(0), default=DEFAULT_ETA_GRID, help="eta grid for the CMI+X")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_gmm)
    return p


def settings_from_args(args) -> dict:
    eta = {b: (getattr(args, f"eta_{b}") if getattr(args, f"eta_{b}") is not None else args.eta) for b in CMI_BASELINES}
    solver_steps = {b: getattr(args, f"{TUNED_PARAM[b]}_{b}") for b in ("diffpir", "tmpd", "daps", "reddiff")}
    return {"dim": args.dim, "meas": args.meas, "steps": args.steps, "samples": args.samples,
            "ref_samples": args.ref_samples, "directions": args.directions, "direction_seed": args.direction_seed,
            "step": {"dps": args.zeta_dps, "pigdm": args.weight_pigdm, "mcg": args.zeta_mcg, "dsg": args.gamma_dsg,
                     **solver_steps},
            "step_param": dict(TUNED_PARAM), "solver_fixed": SOLVER_FIXED, "dsg_interval": args.interval_dsg, "eta": eta,
            "cmi": {"estimator": args.cmi, "kinv": args.kinv, "cg_iters": args.cg_iters, "probes": args.probes,
                    "eta_schedule": args.eta_schedule, "grad": args.cmi_grad},
            "dtype": "float64", "sampler": "DDPM ancestral (respaced)", "torch": torch.__version__}


def run_gmm(args) -> dict:
    from ..commands.options import method_list

    methods = args.methods if isinstance(args.methods, list) else method_list(METHODS)(args.methods)
    if args.meas > args.dim:
        raise ValueError(f"--meas {args.meas} > --dim {args.dim}: m measurements of a d-dimensional signal need m <= d")
    if args.tune_seeds and set(args.tune_seeds) & set(args.seeds):
        raise ValueError(f"--tune-seeds must be disjoint from --seeds (both have "
                         f"{', '.join(map(str, sorted(set(args.tune_seeds) & set(args.seeds))))})")
    check_output_file(args.json, "--json", own=is_json_with("results"))  # before any work; never a user's other file
    params = settings_from_args(args)
    tuning = None
    t0 = time.perf_counter()

    def save_partial(partial: dict) -> None:  # the results so far, rewritten atomically after every row
        if args.json:
            if tuning is not None:
                partial["config"] = {**partial["config"], "tuning": tuning}
            write_json(args.json, {**partial, "partial": True})

    try:
        if args.tune_seeds:
            grids = {b: getattr(args, f"grid_{b}") for b in DEFAULT_GRID}
            tuning = tune(params, methods, args.tune_seeds, grids, args.eta_grid, progress=not args.no_progress)
            tuning["seconds"] = time.perf_counter() - t0
            save_partial({"config": {**params, "methods": list(methods), "seeds": list(args.seeds)}, "results": [],
                          "floor": []})
        out = run_benchmark(params, methods, args.seeds, progress=not args.no_progress, on_row=save_partial)
    except BaseException:
        if args.json and Path(args.json).is_file():
            print(f"the results measured so far are in {args.json} (marked \"partial\": true)", file=sys.stderr)
        raise
    if tuning is not None:
        out["config"]["tuning"] = tuning
    out["config"]["total_seconds"] = time.perf_counter() - t0
    print(format_table(out))
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return out


def main(argv=None):
    from ..commands.options import CLIParser

    parser = CLIParser(prog="cmidps bench")
    add_gmm_parser(parser.add_subparsers(dest="bench", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
