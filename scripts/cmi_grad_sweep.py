"""The error-versus-step sweep of the difference CMI gradients (issue 17; docs/performance.md).

For each model and dtype: the relative error |g - g_autodiff| / |g_autodiff| (worst sample of the batch)
of the forward (fd) and central differences of J^T a along b, at step e = rel |x| / |b|, lowrank
probe, sr4, the prior's likelihood clamp, at positions of a 100-step schedule (0 = clean end, 1 = noisiest).

    nice -n 10 .venv/bin/python scripts/cmi_grad_sweep.py --models adm-random:32,bundled:mnist32 --out FILE
"""
import argparse
import json
import time
from pathlib import Path

import torch

from cmidps.bench.speed import gradient_errors, random_adm_prior
from cmidps.models.loading import load_prior
from cmidps.restore import measure

RELS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
RELS_LARGE = {"float32": (1e-2, 3e-3, 1e-3, 1e-4), "float64": (1e-3, 1e-4, 1e-5, 1e-6)}  # >= 128 px: fewer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="adm-random:32,bundled:mnist32")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--fractions", default="0.1,0.5,0.9")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rels", default="", help="comma-separated steps rel (default: RELS; RELS_LARGE at >= 128 px)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    for spec in args.models.split(","):
        for dt in args.dtypes.split(","):
            t0 = time.time()
            prior = random_adm_prior(int(spec.split(":")[1])) if spec.startswith("adm-random:") else load_prior(spec)
            x = torch.rand((args.batch, *prior.shape), generator=torch.Generator().manual_seed(0))
            op, y = measure(x, "sr4", seed=0)
            rels = (tuple(float(r) for r in args.rels.split(",")) if args.rels
                    else RELS_LARGE[dt] if prior.shape[-1] >= 128 else RELS)
            res = gradient_errors(prior, op, y, ("fd", "central"), rels=(None, *rels),
                                  fractions=tuple(float(f) for f in args.fractions.split(",")),
                                  dtype=getattr(torch, dt))
            out.setdefault(spec, {})[dt] = {"errors": res, "seconds": time.time() - t0, "batch": args.batch,
                                            "task": "sr4", "estimator": "lowrank", "probes": 1}
            Path(args.out).write_text(json.dumps(out, indent=2))
            print(spec, dt, f"{time.time() - t0:.0f}s",
                  {g: {r: max(v.values()) for r, v in d.items()} for g, d in res.items()}, flush=True)


if __name__ == "__main__":
    main()
