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
import math
import sys
import time
from pathlib import Path

import torch

from ..cmi import CMIConfig, ESTIMATORS, ETA_SCHEDULES, GRADS, KINV
from ..commands.outputs import check_output_file, is_json_with, write_json
from .gmm_setup import (BASELINES, CMI_BASELINES, DEFAULT_ETA_GRID, DEFAULT_GRID, DEFAULT_STEP, METHODS,  # noqa: F401
                        SOLVER_FIXED, TUNED_PARAM, Problem, base_of, draw_problem, random_directions, references,
                        rule_params, sliced_wasserstein, wasserstein2_1d)
from .gmm_report import format_table, mean_ci, ranking, summarize  # noqa: F401
from ..methods.drivers import DRIVERS
from ..methods.samplers import make_rule
from ..sampling import SamplingDiverged, sample

MAX_DIM = 100_000  # bounds of --dim/--meas and of the sample counts: larger would exhaust memory, not run
MAX_SAMPLES = 1_000_000

# Offsets that derive independent generator seeds from a problem seed.
_SAMPLER, _CMI = 1_000_003, 2_000_003  # (the reference's and the floor's: cmidps.bench.gmm_setup)


# --- running methods -------------------------------------------------------------------------------
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
