"""Merge `cmidps bench gmm` JSON files of the same setting and parameters, run on different seeds, into one.

The first file gives the configuration (including its tuning record); a seed present in several files
is taken from the first file that has it (the runs are deterministic: a rerun of a seed reproduces it,
which the merge checks on every shared (method, seed) to 1e-6 relative). Wall times add up.

    .venv/bin/python scripts/gmm_merge.py OUT.json FIRST.json MORE.json ...
"""
import json
import sys
from pathlib import Path


def main(out_path, first, *more):
    base = json.loads(Path(first).read_text())
    cfg = base["config"]
    results = {(r["method"], r["seed"]): r for r in base["results"]}
    floor = {f["seed"]: f for f in base["floor"]}
    seconds = cfg.get("total_seconds", 0.0)
    sources = [first]
    for path in more:
        d = json.loads(Path(path).read_text())
        c = d["config"]
        for conf in (c, cfg):  # files written before --cmi-grad existed used the autodiff gradient
            if isinstance(conf.get("cmi"), dict):
                conf["cmi"].setdefault("grad", "autodiff")
        for k in ("dim", "meas", "steps", "samples", "ref_samples", "directions", "direction_seed", "cmi", "dtype"):
            if c[k] != cfg[k]:
                raise SystemExit(f"{path}: {k} = {c[k]!r}, but {first} has {cfg[k]!r}")
        for m in c["methods"]:
            for k in ("step", "eta"):
                b = m[4:] if m.startswith("cmi+") else m
                if k == "eta" and not m.startswith("cmi+"):
                    continue
                if b in c[k] and c[k][b] != cfg[k].get(b):
                    raise SystemExit(f"{path}: {k} of {b} = {c[k][b]}, but {first} has {cfg[k].get(b)}")
        for r in d["results"]:
            key = (r["method"], r["seed"])
            if key in results:
                a, b = results[key]["sw2"], r["sw2"]
                if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-6 * max(1.0, abs(a))):
                    raise SystemExit(f"{path}: {key} SW2 {b} differs from {a}: not the same run")
                continue
            results[key] = r
        for f in d["floor"]:
            floor.setdefault(f["seed"], f)
        seconds += c.get("total_seconds", 0.0)
        sources.append(path)
    seeds = sorted({s for _, s in results})
    cfg = dict(cfg, seeds=seeds, total_seconds=seconds, merged_from=sources)
    out = {"config": cfg, "results": sorted(results.values(), key=lambda r: (r["seed"], r["method"])),
           "floor": [floor[s] for s in sorted(floor)]}
    Path(out_path).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{out_path}: seeds {seeds}, {len(results)} results, {seconds:.0f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
