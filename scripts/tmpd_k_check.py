"""Is TMPD's K = sigma_y^2 I + A C A^T positive definite with the bundled network? (docs/solvers.md, TMPD)

C = (sigma_t^2 / sqrt(abar_t)) J with J = d x0_hat / d x_t. For an exact denoiser J is symmetric
positive semi-definite and K is SPD, so CG solves K v = r. A learned network's J need not be. Along
unguided 20-step runs (seed 100) from the measurements of the 4 training digits that tune the image
table, this records at every step the smallest Rayleigh quotient w.Kw / w.w over ``--probes``
Gaussian probes w per image (each K w costs one JVP), and the same for the row sums TMPD's image path
divides by (the smallest entry of sigma_y^2 + A C A^T 1). A negative value means K is indefinite there:
CG is then not a solve. Writes ``--json``.

    .venv/bin/python scripts/tmpd_k_check.py --json docs/results/tmpd_k_check.json
"""
import cmidps  # noqa: F401  (OMP_WAIT_POLICY before torch)

import argparse
import json
import math
import os
import warnings

import torch

from cmidps import cmi
from cmidps.data import load_mnist
from cmidps.methods import solvers
from cmidps.models.loading import load_prior
from cmidps.operators import TASKS
from cmidps.restore import measure
from cmidps.sampling import sample


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    warnings.filterwarnings("ignore", message=".*was tuned for")
    torch.manual_seed(0)
    prior = load_prior("bundled:mnist32")
    x, _ = load_mnist("train")
    x = x[torch.linspace(0, len(x) - 1, a.images).long()]
    out = {"config": vars(a) | {"digits": "train, spread over the classes (as scripts/tune_solvers.py)"}, "tasks": {}}
    g = torch.Generator().manual_seed(a.seed)
    for task in TASKS:
        rows = []

        def rule(s, rows=rows):
            k_product = cmi.k_product(s.op, s.c, s.sigma_y, s.x_t, s.x0_hat)
            qmin = math.inf
            for _ in range(a.probes):
                w = torch.randn(s.x_t.shape[0], *s.y.shape[1:], generator=g, dtype=s.x_t.dtype)
                q = (w * k_product(w)).flatten(1).sum(1) / (w * w).flatten(1).sum(1)
                qmin = min(qmin, float(q.min()))
            rows.append({"step": len(rows), "one_minus_abar": 1.0 - s.c.abar, "min_rayleigh_K": qmin,
                         "min_rowsum": float(solvers.tmpd_rowsums(s).min()), "sigma_y2": float(s.sigma_y) ** 2})
            return s.x_prop  # the unguided step: the check needs states x_t, not TMPD's trajectory

        op, y = measure(x, task, seed=a.seed)
        sample(prior, op, y, rule, a.steps, torch.Generator().manual_seed(a.seed), sigma_y=0.05, progress=False)
        out["tasks"][task] = rows
        neg = [r["step"] for r in rows if r["min_rayleigh_K"] < 0]
        print(f"{task:15s} K indefinite at steps {neg} of {len(rows)}; first step: min w.Kw/w.w "
              f"{rows[0]['min_rayleigh_K']:.3g}, min row sum {rows[0]['min_rowsum']:.3g}", flush=True)
    with open(a.json + ".tmp", "w") as f:
        f.write(json.dumps(out, indent=1) + "\n")
    os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
