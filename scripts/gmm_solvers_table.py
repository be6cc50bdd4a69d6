"""Markdown tables of `cmidps bench gmm` JSON files: the ranking with paired 95% intervals to the best
method, and CMI+X against X, one column per setting. Intervals: t_{0.975, n-1} sd / sqrt(n)
(cmidps.bench.intervals); a verdict per paired difference ("too few to test" below 5 seeds).

    .venv/bin/python scripts/gmm_solvers_table.py docs/results/gmm_solvers_d80_m4.json docs/results/gmm_solvers_d8_m2.json
"""
import cmidps  # noqa: F401

import json
import sys

from cmidps.bench.gmm import rule_params, summarize


def _ci(mc) -> str:
    return f"{mc[0]:.2f} ± {mc[1]:.2f}"


def main(paths):
    outs = [json.load(open(p)) for p in paths]
    for out in outs:
        cfg = out["config"]
        s = summarize(out)
        print(f"\n### d={cfg['dim']}, m={cfg['meas']} ({len(cfg['seeds'])} seeds, {cfg['steps']} steps, "
              f"{cfg['samples']} samples)\n")
        print("| rank | method | SW2 | SW2 - SW2(best), paired | verdict | ms/step | parameters |")
        print("|---|---|---|---|---|---|---|")
        for k, r in enumerate(s["ranking"], 1):
            m = r["method"]
            kw = rule_params(m, cfg)
            if m.startswith("cmi+"):
                kw["eta"] = cfg["eta"][m[4:]]
            div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
            ms = 1000 * s["methods"][m]["sec_per_step"]
            params = ", ".join(f"{a} {b:g}" for a, b in kw.items())
            print(f"| {k} | {m}{div} | {_ci(r['sw2'])} | {'+' if r['vs_best'][0] >= 0 else ''}{_ci(r['vs_best'])} "
                  f"| {r['verdict']} | {ms:.1f} | {params} |")
        print(f"| | floor (exact vs exact) | {_ci(s['floor'])} | | | | |")
        print("\n| CMI+X vs X | wins / n | SW2(CMI+X) - SW2(X) | verdict | cost ratio |")
        print("|---|---|---|---|---|")
        for x, p in s["paired"].items():
            print(f"| cmi+{x} vs {x} | {p['wins']}/{p['n']} | {p['diff'][0]:+.2f} ± {p['diff'][1]:.2f} "
                  f"| {p['verdict']} | {p['cost_ratio']:.2f}x |")
        t = cfg.get("tuning")
        if t:
            print("\nTuned on seeds", t["seeds"], "- chosen:",
                  ", ".join(f"{b} {v:g}" for b, v in t["chosen_step"].items()), "; eta:",
                  ", ".join(f"{b} {v:g}" for b, v in t["chosen_eta"].items()))
        print(f"\nWall time {cfg.get('total_seconds', float('nan')):.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
