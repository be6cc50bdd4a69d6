"""Markdown tables for docs/performance.md from the JSON files `cmidps bench speed` wrote.

    .venv/bin/python scripts/speed_tables.py docs/results/speed_mnist32.json docs/results/speed_adm_sizes.json
"""
import cmidps  # noqa: F401

import json
import sys

import torch


def method_table(res: dict) -> str:
    rows = [f"Bare forward+backward: {res['network_fwd_bwd_ms']:.1f} ms.", "",
            "| method | ms / step | x network fwd+bwd | x same method without CMI | network evals / step |",
            "|---|---|---|---|---|"]
    for key, e in res["methods"].items():
        base = f"{e['ratio_to_baseline']:.2f}" if "ratio_to_baseline" in e else "-"
        rows.append(f"| {key} | {e['ms_per_step']:.1f} | {e['ratio_to_network']:.2f} | {base} | "
                    f"{e['network_evals_per_step']:.0f} |")
    ips = res["images_per_second"]
    batches = list(ips.get("dps", {}))
    if batches:
        rows += ["", "| images / s (100 steps) | " + " | ".join(f"batch {b}" for b in batches) + " |",
                 "|---" * (len(batches) + 1) + "|"]
    for m, d in ips.items() if batches else ():
        rows.append(f"| {m} | " + " | ".join(f"{d[b]:.3f}" for b in batches) + " |")
    for m, d in res.get("seconds_per_restoration", {}).items():
        rows.append("")
        rows.append(f"Whole restorations, {m}: " + ", ".join(f"{v:.2f} s for {n} steps" for n, v in d.items()))
    return "\n".join(rows)


def _params(size: int) -> float:
    from cmidps.models.unet import FFHQ_256, create_model

    with torch.device("meta"):
        return sum(p.numel() for p in create_model(**dict(FFHQ_256, image_size=size, channel_mult="")).parameters())


def _mem(e):
    return "-" if e.get("peak_mem_mb") is None else f"{e['peak_mem_mb']:.0f}"


def sizes_table(by_model: dict) -> str:
    """One row per size: DPS against the network, CMI+X against X (wall, then CPU time), the cost of a
    second probe in DPS steps, and peak memory."""
    first = next(iter(by_model.values()))["methods"]
    bases = [m for m in first if not m.startswith("cmi+") and f"cmi+{m}" in first]
    head = ["size", "params", "network fwd+bwd (ms)", "DPS step (ms)", "DPS / network"]
    head += [f"CMI+{m.upper()} / {m.upper()} (wall; CPU)" for m in bases]
    probe2 = "cmi+dps[lowrank,r=2]" in first
    if probe2:
        head.append("2nd probe, in DPS steps (wall; CPU)")
    head += ["peak MB DPS, CMI+DPS (ratio)"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for spec, res in by_model.items():
        size = int(spec.split(":")[1])
        ms = res["methods"]
        d, c = ms["dps"], ms["cmi+dps"]
        row = [str(size), f"{_params(size) / 1e6:.1f}M", f"{res['network_fwd_bwd_ms']:.0f}", f"{d['ms_per_step']:.0f}",
               f"{d['ratio_to_network']:.2f}"]
        for m in bases:
            e = ms.get(f"cmi+{m}")
            row.append("-" if e is None else f"{e['ratio_to_baseline']:.2f}; {e.get('cpu_ratio_to_baseline', float('nan')):.2f}")
        if probe2:
            e2 = ms.get("cmi+dps[lowrank,r=2]")
            row.append("-" if e2 is None else
                       f"{(e2['ms_per_step'] - c['ms_per_step']) / d['ms_per_step']:.2f}; "
                       f"{(e2['cpu_ms_per_step'] - c['cpu_ms_per_step']) / d['cpu_ms_per_step']:.2f}")
        ratio = (f" ({c['peak_mem_mb'] / d['peak_mem_mb']:.2f}x)" if d.get("peak_mem_mb") and c.get("peak_mem_mb") else "")
        row.append(f"{_mem(d)}, {_mem(c)}{ratio}")
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def phases_table(by_model: dict) -> str:
    """The parts of one DPS and one CMI+DPS step (ms wall; CPU) where ``--phases`` timed them."""
    names = ["dps_forward", "dps_backward", "cmi_forward", "cmi_objective_vjp", "cmi_fused_backward"]
    rows = ["| size | " + " | ".join(n.replace("_", " ") for n in names) + " | CMI step / DPS step (CPU) |",
            "|---" * (len(names) + 2) + "|"]
    for spec, res in by_model.items():
        ph = res.get("phases")
        if not ph:
            continue
        dps = ph["dps_forward"]["cpu_ms"] + ph["dps_backward"]["cpu_ms"]
        cmi = sum(ph[n]["cpu_ms"] for n in names[2:])
        rows.append(f"| {spec.split(':')[1]} | " + " | ".join(f"{ph[n]['ms']:.0f}; {ph[n]['cpu_ms']:.0f}" for n in names)
                    + f" | {cmi / dps:.2f} |")
    return "\n".join(rows)


for path in sys.argv[1:]:
    res = json.load(open(path))
    print(f"<!-- {path} -->")
    if "by_model" not in res:
        res = {"by_model": {f"adm-random:{res['config']['shape'][-1]}": res}} if res["config"]["model"].startswith(
            "adm-random") else res
    print(sizes_table(res["by_model"]) + "\n\n" + phases_table(res["by_model"]) if "by_model" in res
          else method_table(res))
    print()
