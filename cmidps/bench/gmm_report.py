"""The summary of a ``cmidps bench gmm`` run: per-method means with Student-t intervals
(:mod:`cmidps.bench.intervals`), paired CMI+X - X differences and their verdicts, the ranking, and the
text table."""
from __future__ import annotations

from .gmm_setup import BASELINES, base_of, rule_params
from .intervals import interval

# --- summaries -------------------------------------------------------------------------------------
def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width t_{0.975, n-1} sd / sqrt(n) of its 95% interval (``nan`` for n < 2):
    :func:`cmidps.bench.intervals.interval`, the helper of every report."""
    iv = interval(values)
    return iv.mean, iv.half_width


def _verdict(values: list[float]) -> str:
    """'excludes 0', 'includes 0' or 'too few to test' (n < 5) for the paired differences ``values``."""
    return interval(values).verdict


def summarize(out: dict) -> dict:
    """Per-method mean +- 95% CI of SW2 and seconds, the floor, and paired CMI+X vs X statistics."""
    steps = out["config"]["steps"]
    by = {}
    for r in out["results"]:
        by.setdefault(r["method"], []).append(r)
    methods = [m for m in out["config"]["methods"] if m in by]
    per = {}
    for m in methods:
        ok = [r["sw2"] for r in by[m] if r["sw2"] is not None]
        secs = [r["seconds"] for r in by[m]]
        per[m] = {"sw2": mean_ci(ok), "seconds": mean_ci(secs), "n": len(ok), "diverged": len(by[m]) - len(ok),
                  "sec_per_step": sum(secs) / len(secs) / steps}
    paired = {}
    for x in BASELINES:
        cx = "cmi+" + x
        if x not in by or cx not in by:
            continue
        bx = {r["seed"]: r["sw2"] for r in by[x]}
        bc = {r["seed"]: r["sw2"] for r in by[cx]}
        common = [s for s in bx if s in bc and bx[s] is not None and bc[s] is not None]
        diffs = [bc[s] - bx[s] for s in common]
        paired[x] = {"wins": sum(d < 0 for d in diffs), "losses": sum(d > 0 for d in diffs),
                     "ties": sum(d == 0 for d in diffs), "n": len(common), "diff": mean_ci(diffs),
                     "verdict": _verdict(diffs),
                     "cost_ratio": per[cx]["sec_per_step"] / per[x]["sec_per_step"]}
    return {"methods": per, "floor": mean_ci([f["sw2"] for f in out["floor"]]), "paired": paired,
            "ranking": ranking(by, per)}


def ranking(by: dict, per: dict) -> list[dict]:
    """Methods by mean SW2 (those that diverged on some seed last), each with its paired difference to
    the first: mean of SW2(method) - SW2(best) over the seeds both finished, with its 95% interval."""
    order = sorted(per, key=lambda m: (per[m]["diverged"] > 0, per[m]["sw2"][0]))
    if not order:
        return []
    best = {r["seed"]: r["sw2"] for r in by[order[0]]}
    rows = []
    for m in order:
        mine = {r["seed"]: r["sw2"] for r in by[m]}
        diffs = [mine[k] - best[k] for k in mine if k in best and mine[k] is not None and best[k] is not None]
        rows.append({"method": m, "sw2": per[m]["sw2"], "diverged": per[m]["diverged"], "vs_best": mean_ci(diffs),
                     "n": len(diffs), "verdict": _verdict(diffs) if m != order[0] else ""})
    return rows


def format_table(out: dict) -> str:
    s = summarize(out)
    cfg = out["config"]
    lines = [f"GMM benchmark d={cfg['dim']} m={cfg['meas']}, {len(cfg['seeds'])} seeds, {cfg['steps']} steps, "
             f"{cfg['samples']} samples, CMI {cfg['cmi']['estimator']}/{cfg['cmi']['kinv']}",
             f"{'method':<12} {'SW2 mean +- 95%':>20} {'seconds':>16} {'ms/step':>8} {'params':<24}"]
    for m, v in s["methods"].items():
        mu, ci = v["sw2"]
        sm, sci = v["seconds"]
        kw = rule_params(m, cfg)
        if m.startswith("cmi+"):
            kw["eta"] = cfg["eta"][base_of(m)]
        div = f" ({v['diverged']} diverged)" if v["diverged"] else ""
        lines.append(f"{m:<12} {mu:>10.4f} +- {ci:<7.4f} {sm:>7.2f} +- {sci:<5.2f} {1000 * v['sec_per_step']:>8.2f} "
                     f"{', '.join(f'{k}={w:g}' for k, w in kw.items())}{div}")
    fm, fci = s["floor"]
    lines.append(f"{'floor':<12} {fm:>10.4f} +- {fci:<7.4f}")
    if s["paired"]:
        lines.append(f"{'paired':<12} {'CMI+X wins/n':>13} {'mean SW2(CMI+X) - SW2(X) +- 95%':>34} {'cost ratio':>11}")
        for x, p in s["paired"].items():
            dm, dci = p["diff"]
            lines.append(f"{'cmi+' + x + ' vs ' + x:<18} {p['wins']:>3}/{p['n']:<3} {dm:>+14.4f} +- {dci:<10.4f} "
                         f"{p['cost_ratio']:>9.2f}x  {p['verdict']}")
    lines.append(f"{'rank':<5} {'method':<16} {'SW2 - SW2(best) +- 95% (paired)':>32}")
    for k, r in enumerate(s["ranking"], 1):
        dm, dci = r["vs_best"]
        div = f" ({r['diverged']} diverged)" if r["diverged"] else ""
        lines.append(f"{k:<5} {r['method']:<16} {dm:>+14.4f} +- {dci:<10.4f}{div}  {r['verdict']}")
    return "\n".join(lines)
