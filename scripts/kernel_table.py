"""The motion-kernel statistics table of docs/presets.md from the JSON files of scripts/kernel_stats.py.

    .venv/bin/python scripts/kernel_table.py docs/results/kernel_stats/*.json
"""
import json
import sys
from pathlib import Path

LABEL = {"cmidps.operators.motion": "cmidps now", "/tmp/motion_before.py": "cmidps before issue 9 (`82f1983`)"}


def fmt(q):
    lo, med, hi = q
    return f"{med:.3g} [{lo:.3g}, {hi:.3g}]"


def main(paths):
    rows = [json.loads(Path(p).read_text()) for p in paths]
    print("| generator | seeds | elongation | extent (px) | near-zero share (%) | results file |")
    print("|---|---|---|---|---|---|")
    for r, p in sorted(zip(rows, paths), key=lambda rp: (rp[0]["count"], rp[0]["source"] != "/tmp/motion_before.py")):
        q = r["quartiles"]
        seeds = f"{r['first_seed']}..{r['first_seed'] + r['count'] - 1}"
        print(f"| {LABEL.get(r['source'], r['source'])} | {seeds} | {fmt(q['elongation'])} | {fmt(q['extent'])} "
              f"| {fmt(q['near_zero'])} | `{p}` |")


if __name__ == "__main__":
    main(sys.argv[1:])
