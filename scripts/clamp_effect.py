"""The likelihood clamp's effect on DPS (docs/presets.md): the demo's setting (4 held-out digits 0, 5, 10,
15; seed 0; 100 steps; the bundled prior) with x0_hat clamped to [-1, 1] in the likelihood and without.

    .venv/bin/python scripts/clamp_effect.py --json docs/results/clamp_effect.json   # runs DPS (minutes on a CPU)
    .venv/bin/python scripts/clamp_effect.py --table docs/results/clamp_effect.json  # the table, from the file
"""
import argparse
import json
import time
from pathlib import Path


def run(path):
    import torch

    from cmidps.data.mnist import load_heldout
    from cmidps.metrics import psnr
    from cmidps.models.loading import load_prior
    from cmidps.operators import TASKS
    from cmidps.restore import measure, restore
    from cmidps.sampling import SamplingDiverged

    prior = load_prior("bundled:mnist32")
    images, _ = load_heldout()
    pick = [0, 5, 10, 15]  # the demo's four digits (cmidps demo --images 4)
    x = images[pick]
    out = {"config": {"model": "bundled:mnist32", "images": pick, "steps": 100, "seed": 0, "method": "dps"},
           "rows": []}
    for task in TASKS:
        op, y = measure(x, task, seed=0)
        for clip in (False, True):
            t0 = time.perf_counter()
            try:
                r = restore(prior, op, y, "dps", steps=100, seed=0, task=task, likelihood_clip=clip, progress=False)
            except SamplingDiverged as exc:  # the loop's guard stopped it
                out["rows"].append({"task": task, "likelihood_clip": clip, "psnr": None, "diverged": str(exc)})
                print(task, clip, "diverged", flush=True)
                continue
            v = psnr(r, x)
            out["rows"].append({"task": task, "likelihood_clip": clip, "psnr": float(v.mean()),
                                "psnr_per_image": [round(float(a), 3) for a in v],
                                "seconds": round(time.perf_counter() - t0, 2)})
            print(task, clip, float(v.mean()), flush=True)
    Path(path).write_text(json.dumps(out, indent=1) + "\n")


def table(path):
    d = json.loads(Path(path).read_text())
    by = {(r["task"], r["likelihood_clip"]): r for r in d["rows"]}
    print("| task | DPS PSNR, no clamp (dB) | DPS PSNR, clamp (dB) | clamp - no clamp (dB) |")
    print("|---|---|---|---|")
    for task in dict.fromkeys(r["task"] for r in d["rows"]):
        a, b = by[(task, False)]["psnr"], by[(task, True)]["psnr"]
        fa = "diverged" if a is None else f"{a:.2f}"
        fb = "diverged" if b is None else f"{b:.2f}"
        gain = "–" if a is None or b is None else f"{b - a:+.2f}"
        print(f"| {task} | {fa} | {fb} | {gain} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--json")
    g.add_argument("--table")
    a = p.parse_args()
    run(a.json) if a.json else table(a.table)
