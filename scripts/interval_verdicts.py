"""Re-derive every paired interval and verdict of the committed results with the t helper, beside the
1.96 sd / sqrt(n) interval the docs used before, and list the verdicts that change.

    .venv/bin/python scripts/interval_verdicts.py [docs/results]            # the changes only
    .venv/bin/python scripts/interval_verdicts.py --all [docs/results]      # every comparison

Sources: every `cmidps bench gmm` JSON (CMI+X - X paired by seed, and each method - the best method),
every `cmidps bench images` folder with a results.jsonl (CMI+X - X per task and per-image metric,
paired by image and seed) and its table.csv for set-level metrics (FDD, FID, KID: one value per seed;
the per-seed values are not kept, so their sd is recovered from the CSV's half width: 1.96-based where
the folder's table.md says "1.96 sd / sqrt(n)" (reports written before the t helper), else t-based).
Intervals: cmidps.bench.intervals (t_{0.975, n-1}; below 5 units "too few to test").
"""
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmidps.bench.intervals import Interval, interval, t_quantile  # noqa: E402

Z = 1.96


def old_verdict(mean, hw_z, n) -> str:
    """The verdict of the former interval (1.96 sd / sqrt(n), any n >= 2)."""
    if n < 2 or not math.isfinite(hw_z):
        return "no interval"
    return "excludes 0" if abs(mean) > hw_z else "includes 0"


def row(source, what, values=None, mean=None, sd=None, n=None):
    if values is not None:
        iv = interval(values)
        n = iv.n
        sd = iv.half_width * math.sqrt(n) / t_quantile(n - 1) if n >= 2 else math.nan
    else:
        iv = Interval(mean, t_quantile(n - 1) * sd / math.sqrt(n) if n >= 2 else math.nan, n)
    hw_z = Z * sd / math.sqrt(n) if n >= 2 else math.nan
    return {"source": source, "what": what, "n": n, "mean": iv.mean, "hw_z": hw_z, "hw_t": iv.half_width,
            "old": old_verdict(iv.mean, hw_z, n), "new": iv.verdict}


def gmm_rows(path: Path):
    from cmidps.bench.gmm import BASELINES, summarize

    out = json.loads(path.read_text())
    by = defaultdict(dict)
    for r in out["results"]:
        by[r["method"]][r["seed"]] = r["sw2"]
    rows = []
    for x in BASELINES:
        if x in by and "cmi+" + x in by:
            a, b = by["cmi+" + x], by[x]
            diffs = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]
            rows.append(row(path.name, f"SW2 cmi+{x} - {x}", diffs))
    ranking = summarize(out)["ranking"]
    if ranking:
        best = ranking[0]["method"]
        for r in ranking[1:]:
            a, b = by[r["method"]], by[best]
            diffs = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]
            rows.append(row(path.name, f"SW2 {r['method']} - {best} (best)", diffs))
    return rows


def image_rows(folder: Path):
    recs = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    index = {(r["task"], r["method"], r.get("image"), r.get("seed")): r for r in recs}
    skip = {"image", "task", "method", "seed", "steps", "seconds", "batch", "rank", "finished", "error", "status"}
    metrics = sorted({k for r in recs for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
    rows, diffs = [], defaultdict(list)
    for (task, method, image, seed), r in index.items():
        if method.startswith("cmi+") and (task, method[4:], image, seed) in index:
            base = index[(task, method[4:], image, seed)]
            for m in metrics:
                if r.get(m) is not None and base.get(m) is not None:
                    diffs[(task, method, m)].append(float(r[m]) - float(base[m]))
    for (task, method, m), d in sorted(diffs.items()):
        rows.append(row(folder.name, f"{task} {m} {method} - {method[4:]}", d))
    csv_path = folder / "table.csv"
    if csv_path.is_file():
        import csv

        md = folder / "table.md"
        old_report = md.is_file() and "1.96 sd / sqrt(n)" in md.read_text()
        for r in csv.DictReader(csv_path.open()):
            if r["row"] != "cmi_difference":
                continue
            for m in ("fdd", "fid", "kid"):
                if r.get(f"{m}_mean") and r.get(f"{m}_n") and int(r[f"{m}_n"]) >= 2 and r.get(f"{m}_ci95"):
                    n = int(r[f"{m}_n"])
                    q = Z if old_report else t_quantile(n - 1)  # the quantile the CSV's half width was made with
                    sd = float(r[f"{m}_ci95"]) * math.sqrt(n) / q
                    rows.append(row(folder.name, f"{r['task']} {m} (set-level) {r['method']}", mean=float(r[f"{m}_mean"]),
                                    sd=sd, n=n))
    return rows


def collect(root: Path):
    rows = []
    for p in sorted(root.glob("*.json")):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "results" in data and "config" in data and "floor" in data:
            rows += gmm_rows(p)
    for folder in sorted({p.parent for p in root.rglob("results.jsonl")}):
        rows += image_rows(folder)
    return rows


def main(argv):
    show_all = "--all" in argv
    args = [a for a in argv if a != "--all"]
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "docs" / "results"
    rows = collect(root)
    print("| source | comparison | n | mean | ± 1.96 sd/sqrt(n) | ± t sd/sqrt(n) | verdict before | verdict now |")
    print("|---|---|---|---|---|---|---|---|")
    changed = 0
    for r in rows:
        flip = r["old"] != r["new"]
        changed += flip
        if show_all or flip:
            print(f"| {r['source']} | {r['what']} | {r['n']} | {r['mean']:+.4g} | {r['hw_z']:.3g} | {r['hw_t']:.3g} "
                  f"| {r['old']} | {r['new']}{' (changed)' if flip else ''} |")
    print(f"\n{changed} of {len(rows)} verdicts change.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
