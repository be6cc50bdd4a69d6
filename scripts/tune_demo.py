"""Tune the demo's step sizes on TRAINING-split digits (never on the held-out demo images).

For each task: DPS's zeta from a grid (best mean PSNR), then, with that zeta fixed, CMI's eta from a
grid on the same digits and seeds (same budget for DPS and CMI+DPS). Prints a table and writes JSON.

    .venv/bin/python scripts/tune_demo.py --model bundled:mnist32 --json docs/results/demo_tuning.json
"""
import cmidps  # noqa: F401

import argparse
import json
from pathlib import Path

import torch

from cmidps.cmi import CMIConfig
from cmidps.data import load_mnist
from cmidps.metrics import psnr
from cmidps.models.loading import load_prior
from cmidps.operators import TASKS
from cmidps.restore import measure, restore


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="bundled:mnist32")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--zetas", default="0.3,0.5,1,2")
    p.add_argument("--etas", default="0.001,0.01,0.1,1")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    prior = load_prior(a.model)
    x, _ = load_mnist("train")
    x = x[torch.linspace(0, len(x) - 1, a.images).long()]  # a spread over classes
    out = {"config": vars(a), "tasks": {}}
    for task in a.tasks.split(","):
        op, y = measure(x, task, seed=a.seed)
        res = {"dps": {}, "cmi+dps": {}}
        for z in map(float, a.zetas.split(",")):
            try:
                r = restore(prior, op, y, "dps", a.steps, a.seed, params={"zeta": z}, progress=False)
                res["dps"][z] = float(psnr(r, x).mean())
            except RuntimeError as exc:  # divergence
                res["dps"][z] = float("nan")
                print(task, "dps", z, exc)
        zeta = max(res["dps"], key=lambda k: -1e9 if res["dps"][k] != res["dps"][k] else res["dps"][k])
        for eta in map(float, a.etas.split(",")):
            try:
                r = restore(prior, op, y, "cmi+dps", a.steps, a.seed, params={"zeta": zeta},
                            cmi=CMIConfig(eta=eta), progress=False)
                res["cmi+dps"][eta] = float(psnr(r, x).mean())
            except RuntimeError as exc:
                res["cmi+dps"][eta] = float("nan")
                print(task, "cmi+dps", eta, exc)
        out["tasks"][task] = {"zeta": zeta, **res}
        print(task, "zeta", zeta, json.dumps(res))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
