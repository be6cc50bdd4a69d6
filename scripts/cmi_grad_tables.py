"""Markdown tables of the difference CMI gradient's measurements (issue 17, docs/performance.md).

    .venv/bin/python scripts/cmi_grad_tables.py sweep docs/results/cmi_grad_sweep.json
    .venv/bin/python scripts/cmi_grad_tables.py speed docs/results/speed_cmi_fd_run1.json [more runs]
    .venv/bin/python scripts/cmi_grad_tables.py targets RUN1 RUN2 RUN3 [more runs]
"""
import json
import sys
from pathlib import Path


def sweep(path):
    res = json.loads(Path(path).read_text())
    cols = [(m, dt) for m, by in res.items() for dt in by]
    rels = []
    for m, dt in cols:
        for r in res[m][dt]["errors"]["fd"]:
            if r != "default" and r not in rels:
                rels.append(r)
    rels.sort(key=float, reverse=True)
    head = "| rel | " + " | ".join(f"{m} {dt} fd / central" for m, dt in cols) + " |"
    print(head)
    print("|---" * (len(cols) + 1) + "|")
    for r in ["default"] + rels:
        cells = []
        for m, dt in cols:
            e = res[m][dt]["errors"]
            if r not in e["fd"]:
                cells.append("-")
                continue
            cells.append(f"{100 * max(e['fd'][r].values()):.3g}% / {100 * max(e['central'][r].values()):.3g}%")
        print(f"| {r} | " + " | ".join(cells) + " |")


def speed(paths):
    print("| run | size | DPS step CPU s | CMI+DPS / DPS | CMI+PIGDM / PIGDM | CMI+MCG / MCG | CMI+DSG / DSG "
          "| evals/step CMI+DPS | peak MB DPS, CMI+DPS | fd vs autodiff (check) |")
    print("|---" * 10 + "|")
    for k, path in enumerate(paths, 1):
        res = json.loads(Path(path).read_text())
        by = res["by_model"] if "by_model" in res else {res["config"]["model"]: res}
        for spec, r in by.items():
            m = r["methods"]
            ratio = lambda key: f"{m[key]['cpu_ratio_to_baseline']:.2f}" if key in m else "-"  # noqa: E731
            mem = (f"{m['dps']['peak_mem_mb']:.0f}, {m['cmi+dps']['peak_mem_mb']:.0f}"
                   if m.get("dps", {}).get("peak_mem_mb") and m.get("cmi+dps", {}).get("peak_mem_mb") else "-")
            chk = (f"{100 * r['grad_check']['fd']['default']['0.5']:.2f}%" if "grad_check" in r else "-")
            print(f"| {Path(path).stem} | {r['config']['shape'][-1]} | {m['dps']['cpu_ms_per_step'] / 1e3:.2f} | "
                  f"{ratio('cmi+dps')} | {ratio('cmi+pigdm')} | {ratio('cmi+mcg')} | {ratio('cmi+dsg')} | "
                  f"{m['cmi+dps']['network_evals_per_step']:.0f} | {mem} | {chk} |")


def _by_size(paths):
    """{size: [entry per run that has it]} (entries are a run's per-model result)."""
    out = {}
    for path in paths:
        res = json.loads(Path(path).read_text())
        for spec, r in res.get("by_model", {"one": res}).items():
            size = r["config"]["shape"][-1] if "config" in r else int(spec.split(":")[1])
            out.setdefault(size, []).append(r["methods"])
    return dict(sorted(out.items()))


def targets(paths):
    sizes = _by_size(paths)
    print("| ratio (CPU time, one run each) | " + " | ".join(f"{s} px" for s in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    for key, label in (("cmi+dps", "CMI+DPS / DPS (target <= 2.1)"), ("cmi+pigdm", "CMI+PiGDM / PiGDM (<= 2.1)"),
                       ("cmi+mcg", "CMI+MCG / MCG (<= 2.1)"), ("cmi+dsg", "CMI+DSG / DSG (<= 2.6)")):
        cells = [" / ".join(f"{m[key]['cpu_ratio_to_baseline']:.2f}" for m in runs
                            if "cpu_ratio_to_baseline" in m.get(key, {})) or "-"
                 for runs in sizes.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    cells = [" / ".join(f"{m['cmi+dps']['network_evals_per_step']:.0f}" for m in runs if "cmi+dps" in m)
             for runs in sizes.values()]
    print("| network evaluations per CMI+X step | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1] == "sweep":
        sweep(sys.argv[2])
    elif sys.argv[1] == "targets":
        targets(sys.argv[2:])
    else:
        speed(sys.argv[2:])
