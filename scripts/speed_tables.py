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
    batches = list(ips["dps"])
    rows += ["", "| images / s (100 steps) | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---" * (len(batches) + 1) + "|"]
    for m, d in ips.items():
        rows.append(f"| {m} | " + " | ".join(f"{d[b]:.3f}" for b in batches) + " |")
    for m, d in res.get("seconds_per_restoration", {}).items():
        rows.append("")
        rows.append(f"Whole restorations, {m}: " + ", ".join(f"{v:.2f} s for {n} steps" for n, v in d.items()))
    return "\n".join(rows)


def sizes_table(by_model: dict) -> str:
    from cmidps.models.unet import FFHQ_256, create_model

    rows = ["| size | params | network fwd+bwd (ms) | DPS step (ms) | DPS / network | CMI+DPS step (ms) | "
            "CMI+DPS / DPS | peak MB (DPS, CMI+DPS) | images/s, 100 steps (DPS, CMI+DPS) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for spec, res in by_model.items():
        size = int(spec.split(":")[1])
        with torch.device("meta"):
            n = sum(p.numel() for p in create_model(**dict(FFHQ_256, image_size=size, channel_mult="")).parameters())
        d, c, ips = res["methods"]["dps"], res["methods"]["cmi+dps"], res["images_per_second"]
        mem = lambda e: "-" if e["peak_mem_mb"] is None else f"{e['peak_mem_mb']:.0f}"  # noqa: E731
        rows.append(f"| {size} | {n / 1e6:.1f}M | {res['network_fwd_bwd_ms']:.0f} | {d['ms_per_step']:.0f} | "
                    f"{d['ratio_to_network']:.2f} | {c['ms_per_step']:.0f} | {c['ratio_to_baseline']:.2f} | "
                    f"{mem(d)}, {mem(c)} | {ips['dps']['1']:.4f}, {ips['cmi+dps']['1']:.4f} |")
    return "\n".join(rows)


for path in sys.argv[1:]:
    res = json.load(open(path))
    print(f"<!-- {path} -->")
    print(sizes_table(res["by_model"]) if "by_model" in res else method_table(res))
    print()
