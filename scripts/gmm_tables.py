"""The tables of docs/gmm_benchmark.md from `cmidps bench gmm` JSON files, one column per file.

Intervals: t_{0.975, n-1} sd / sqrt(n) over the seeds (cmidps.bench.intervals), paired by seed for
CMI+X - X. ms/step: the mean over the seeds of a method's sampling seconds, divided by the steps.

    .venv/bin/python scripts/gmm_tables.py sw2 docs/results/gmm_d8_m2.json docs/results/gmm_d8_m4.json ...
    .venv/bin/python scripts/gmm_tables.py paired FILES...    # CMI+X vs X: wins, mean difference ± 95%
    .venv/bin/python scripts/gmm_tables.py cost FILES...      # ms/step of X and CMI+X, their ratio
    .venv/bin/python scripts/gmm_tables.py wall FILES...      # each file's total wall time
    .venv/bin/python scripts/gmm_tables.py methods FILE       # one file: per method SW2, ms/step, CMI+X vs X
    .venv/bin/python scripts/gmm_tables.py tuning FILES...    # the tuning record (config.tuning): every grid score
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmidps.bench.intervals import interval  # noqa: E402


def load(path):
    out = json.loads(Path(path).read_text())
    by = defaultdict(dict)
    for r in out["results"]:
        by[r["method"]][r["seed"]] = r
    return out, by


def col(out) -> str:
    c = out["config"]
    return f"d={c['dim']}, m={c['meas']}"


def param(out, method) -> str:
    c = out["config"]
    if method.startswith("cmi+"):
        return f"eta {c['eta'][method[4:]]:g}"
    if method in c.get("step", {}):
        extra = f", interval {c['dsg_interval']}" if method == "dsg" else ""
        return f"{c['step_param'][method]} {c['step'][method]:g}{extra}"
    return ""


def ci(values, digits=2, sign=False) -> str:
    iv = interval(values)
    return f"{iv.mean:+.{digits}f} ± {iv.half_width:.{digits}f}" if sign else f"{iv.mean:.{digits}f} ± {iv.half_width:.{digits}f}"


def sw2(values) -> list:
    return [r["sw2"] for r in values if r["sw2"] is not None]


def ms(out, by, method) -> float:
    secs = [r["seconds"] for r in by[method].values()]
    return 1000 * sum(secs) / len(secs) / out["config"]["steps"]


def paired(by, method):
    base = method[4:]
    seeds = sorted(s for s in by[method] if s in by[base] and by[method][s]["sw2"] is not None
                   and by[base][s]["sw2"] is not None)
    diffs = [by[method][s]["sw2"] - by[base][s]["sw2"] for s in seeds]
    return sum(d < 0 for d in diffs), len(seeds), diffs


def main(argv):
    mode, paths = argv[0], argv[1:]
    runs = [load(p) for p in paths]
    labels = [col(o) for o, _ in runs]
    if len(set(labels)) < len(labels):  # same setting twice: name the files
        labels = [f"{lab} ({Path(p).stem})" for lab, p in zip(labels, paths)]
    methods = list(dict.fromkeys(m for out, _ in runs for m in out["config"]["methods"]))
    cmi = [m for m in methods if m.startswith("cmi+")]
    if mode == "sw2":
        print("| method | " + " | ".join(labels) + " |")
        print("|---" * (len(runs) + 1) + "|")
        for m in methods:
            print(f"| {m} | " + " | ".join(f"{ci(sw2(by[m].values()))} ({param(o, m)})" if m in by else "–"
                                           for o, by in runs) + " |")
        print("| floor (exact vs exact) | " + " | ".join(ci([f["sw2"] for f in o["floor"]]) for o, _ in runs) + " |")
    elif mode == "paired":
        print("| CMI+X vs X | " + " | ".join(labels) + " |")
        print("|---" * (len(runs) + 1) + "|")
        for m in cmi:
            cells = []
            for o, by in runs:
                w, n, d = paired(by, m)
                cells.append(f"{w}/{n} wins, {ci(d, sign=True)}")
            print(f"| {m} vs {m[4:]} | " + " | ".join(cells) + " |")
    elif mode == "cost":
        print("| cost (ms/step: X, CMI+X, ratio) | " + " | ".join(labels) + " |")
        print("|---" * (len(runs) + 1) + "|")
        for m in cmi:
            cells = []
            for o, by in runs:
                a, b = ms(o, by, m[4:]), ms(o, by, m)
                cells.append(f"{a:.1f}, {b:.1f}, {b / a:.2f}x")
            print(f"| {m[4:]} | " + " | ".join(cells) + " |")
    elif mode == "wall":
        print("| results file | settings | seeds | wall time |")
        print("|---|---|---|---|")
        for p, (o, _) in zip(paths, runs):
            c = o["config"]
            print(f"| `{p}` | {col(o)} | {len(c['seeds'])} | {c.get('total_seconds', float('nan')):.0f} s |")
    elif mode == "methods":
        (o, by), = runs
        print("| method | SW2 | ms/step | CMI+X vs X: wins, mean diff ± 95% | cost ratio |")
        print("|---|---|---|---|---|")
        for m in methods:
            extra = " | "
            if m.startswith("cmi+"):
                w, n, d = paired(by, m)
                extra = f"{w}/{n}, {ci(d, sign=True)} | {ms(o, by, m) / ms(o, by, m[4:]):.2f}x"
            print(f"| {m} | {ci(sw2(by[m].values()))} | {ms(o, by, m):.1f} | {extra} |")
    elif mode == "tuning":
        print("| setting | method | step size: mean SW2 on the tuning seeds | cmi+X eta: mean SW2 |")
        print("|---|---|---|---|")
        for p, (o, _) in zip(paths, runs):
            t = o["config"]["tuning"]
            for m, scores in t["step_scores"].items():
                chosen = t["chosen_step"].get(m)
                cells = " ".join((f"**{float(v):g}: {sc:.3g}**" if float(v) == chosen else f"{float(v):g}: {sc:.3g}")
                                 for v, sc in scores.items())
                eta = t["eta_scores"].get(m, {})
                ce = t["chosen_eta"].get(m)
                ecells = " ".join((f"**{float(v):g}: {sc:.3g}**" if float(v) == ce else f"{float(v):g}: {sc:.3g}")
                                  for v, sc in eta.items())
                print(f"| {col(o)} | {m} {o['config']['step_param'][m]} | {cells} | {ecells} |")
        print()
        print("| setting | tuning seeds | tuning time | whole run |")
        print("|---|---|---|---|")
        for p, (o, _) in zip(paths, runs):
            t = o["config"]["tuning"]
            print(f"| {col(o)} | {', '.join(map(str, t['seeds']))} | {t['seconds']:.0f} s "
                  f"| {o['config'].get('total_seconds', float('nan')):.0f} s |")
    else:
        raise SystemExit(f"unknown mode {mode!r}: sw2, paired, cost, wall, methods, tuning")


if __name__ == "__main__":
    main(sys.argv[1:])
