"""CMI's K^-1 on images: isotropic closed form against conjugate gradients with denoiser JVPs.

Same training-split digits, seeds and step sizes as scripts/tune_demo.py; prints PSNR and seconds.

    .venv/bin/python scripts/compare_kinv.py --json docs/results/kinv_images.json
"""
import cmidps  # noqa: F401

import argparse
import json
import time
from pathlib import Path

import torch

from cmidps.cmi import CMIConfig
from cmidps.data import load_mnist
from cmidps.metrics import psnr
from cmidps.models.loading import load_prior
from cmidps.restore import measure, restore


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="bundled:mnist32")
    p.add_argument("--tasks", default="inpaint_random,deblur_gauss,sr4")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--cg-iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    prior = load_prior(a.model)
    x, _ = load_mnist("train")
    x = x[torch.linspace(0, len(x) - 1, a.images).long()]
    rows = []
    for task in a.tasks.split(","):
        op, y = measure(x, task, seed=a.seed)
        for name, cfg in (("dps", None), ("cmi+dps isotropic", CMIConfig()),
                          ("cmi+dps cg", CMIConfig(kinv="cg", cg_iters=a.cg_iters))):
            t0 = time.perf_counter()
            r = restore(prior, op, y, "dps" if cfg is None else "cmi+dps", a.steps, a.seed, cmi=cfg, task=task,
                        progress=False)
            rows.append({"task": task, "method": name, "psnr": float(psnr(r, x).mean()),
                         "psnr_per_image": [round(float(v), 2) for v in psnr(r, x)],
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"config": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
