"""docs/demo.md's held-out table of the two CMI gradients: CMI+DPS with the autodiff gradient (the
committed run, docs/results/mnist_heldout/) and with fd (the rerun, docs/results/mnist_heldout_fd/),
each against DPS on the same (digit, seed, measurement, sampler noise); 95% Student-t intervals over
the pairs (cmidps.bench.intervals), bold where an interval excludes 0.

    .venv/bin/python scripts/heldout_table.py docs/results/mnist_heldout docs/results/mnist_heldout_fd
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from solvers_table import ROOT, TASKS, cell, records  # noqa: E402  (the cells of docs/solvers.md's tables)


def load(folder: Path) -> dict:
    return {(r["method"], r["task"], r["seed"], r["image"]): r for r in records(folder)}


def main(old_dir, new_dir):
    old, new = load(ROOT / old_dir), load(ROOT / new_dir)
    same = [k for k in old if k[0] == "dps" and k in new]
    drift = max((abs(old[k]["psnr"] - new[k]["psnr"]) for k in same), default=float("nan"))
    print(f"DPS rerun against the committed DPS: {len(same)} restorations, largest PSNR difference {drift:.2g} dB.\n")
    print("| task | DPS | CMI+DPS autodiff | CMI+DPS fd | fd − autodiff | CMI+DPS − DPS, autodiff | CMI+DPS − DPS, fd |")
    print("|---|---|---|---|---|---|---|")
    for t in TASKS:
        keys = sorted(k[2:] for k in new if k[0] == "cmi+dps" and k[1] == t and ("cmi+dps", t, *k[2:]) in old)
        dps = [new[("dps", t, *k)]["psnr"] for k in keys]
        dps_old = [old[("dps", t, *k)]["psnr"] for k in keys]
        ad = [old[("cmi+dps", t, *k)]["psnr"] for k in keys]
        fd = [new[("cmi+dps", t, *k)]["psnr"] for k in keys]
        paired = [[b - a for a, b in zip(ad, fd)], [a - d for a, d in zip(ad, dps_old)], [b - d for b, d in zip(fd, dps)]]
        print(f"| {t} | {cell(dps)} | {cell(ad)} | {cell(fd)} | "
              + " | ".join(cell(v, sign=True, bold_if_sig=True) for v in paired) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
