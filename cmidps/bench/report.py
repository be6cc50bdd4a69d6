"""Tables of a benchmark: mean ± 95% interval per (task, method), best marked, CMI+X − X differences.

The input is a list of flat records (dicts), one per unit of measurement: for per-image metrics one per
(image, seed) job, for set-level metrics (FID, KID, FDD) one per seed. Every record has ``task`` and
``method`` and the metric values it carries; the other keys (``image``, ``seed``) identify the unit and
pair a ``cmi+X`` record with its ``X`` record.

* ``mean_ci(values)`` -> ``(mean, half_width, n)`` with half width ``t_{0.975, n-1} sd / sqrt(n)`` (``sd``
  with ``n - 1``; ``nan`` for ``n < 2``): :func:`cmidps.bench.intervals.interval`, the one helper of every
  report; a difference over fewer than 5 units is reported as "too few to test";
* ``summarize(records, metrics)`` -> ``{(task, method): {metric: (mean, hw, n)}}``;
* ``cmi_differences(records, metrics, pair_keys)`` -> ``{(task, "cmi+X"): {metric: (mean, hw, n)}}``,
  the paired differences ``CMI+X − X`` over the units both methods have;
* ``write_tables(out_dir, ...)`` writes ``table.md`` and ``table.csv``;
* ``write_image_report(plan, ...)``: the whole report of ``bench images`` (tables, set-level metrics
  from the saved PNGs, ``grid.png``).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .intervals import MIN_N, TOO_FEW, Interval, interval
from .store import atomic_text

SET_METRICS_FILE = "set_metrics.json"

# metric -> (label, higher is better, format)
METRIC_INFO = {
    "psnr": ("PSNR (dB)", True, ".2f"),
    "ssim": ("SSIM", True, ".4f"),
    "lpips": ("LPIPS", False, ".4f"),
    "lpips_alex": ("LPIPS-alex", False, ".4f"),
    "lpips_vgg": ("LPIPS-vgg", False, ".4f"),
    "digit_correct": ("digit acc.", True, ".3f"),
    "digit_accuracy": ("digit acc. (set)", True, ".3f"),
    "fid": ("FID", False, ".2f"),
    "kid": ("KID", False, ".4f"),
    "fdd": ("FDD (digit feat.)", False, ".3f"),
}

def metric_label(name: str) -> str:
    label, higher, _ = METRIC_INFO.get(name, (name, True, ".4g"))
    return f"{label} {'↑' if higher else '↓'}"


def higher_is_better(name: str) -> bool:
    return METRIC_INFO.get(name, (name, True, ".4g"))[1]


def _fmt(name: str, v: float, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    spec = METRIC_INFO.get(name, (name, True, ".4g"))[2]
    return format(v, ("+" if sign else "") + spec)


def mean_ci(values) -> Interval:
    """Mean, 95% half width ``t_{0.975, n-1} sd / sqrt(n)`` (sample sd), and n, as an
    :class:`~cmidps.bench.intervals.Interval` (unpacks as ``(mean, half_width, n)``). ``nan`` half
    width for n < 2."""
    return interval(values)


def summarize(records, metrics) -> dict:
    """``{(task, method): {metric: (mean, hw, n)}}`` over the records carrying each metric."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    return {key: {m: mean_ci([r[m] for r in rs if r.get(m) is not None]) for m in metrics
                  if any(r.get(m) is not None for r in rs)}
            for key, rs in groups.items()}


def cmi_differences(records, metrics, pair_keys=("image", "seed")) -> dict:
    """Paired ``CMI+X − X`` per task: ``{(task, "cmi+X"): {metric: (mean, hw, n)}}``.

    A ``cmi+X`` record is paired with the ``X`` record of the same task and the same ``pair_keys``;
    units that only one of the two methods has are left out.
    """
    index = {}
    for r in records:
        index[(r["task"], r["method"], tuple(r.get(k) for k in pair_keys))] = r
    out: dict = {}
    for (task, method, unit), r in index.items():
        if not method.startswith("cmi+"):
            continue
        base = index.get((task, method[4:], unit))
        if base is None:
            continue
        for m in metrics:
            if r.get(m) is not None and base.get(m) is not None:
                out.setdefault((task, method), {}).setdefault(m, []).append(float(r[m]) - float(base[m]))
    return {key: {m: mean_ci(v) for m, v in d.items()} for key, d in out.items()}


def _order(keys, tasks, methods):
    t_rank = {t: i for i, t in enumerate(tasks or [])}
    m_rank = {m: i for i, m in enumerate(methods or [])}
    return sorted(keys, key=lambda k: (t_rank.get(k[0], len(t_rank)), k[0], m_rank.get(k[1], len(m_rank)), k[1]))


def best_per_task(summary: dict, metrics) -> set:
    """The (task, method, metric) cells holding the best mean of their task (ties all marked)."""
    best = set()
    tasks = {t for t, _ in summary}
    for m in metrics:
        for t in tasks:
            cells = [(meth, s[m][0]) for (tt, meth), s in summary.items()
                     if tt == t and m in s and not math.isnan(s[m][0])]
            if len(cells) < 2:
                continue
            target = (max if higher_is_better(m) else min)(v for _, v in cells)
            best.update((t, meth, m) for meth, v in cells if v == target)
    return best


def _cell(name, stat, bold=False, sign=False) -> str:
    stat = stat if isinstance(stat, Interval) else Interval(*stat)
    mean, hw, n = stat
    text = _fmt(name, mean, sign) + ("" if math.isnan(hw) else f" ± {_fmt(name, hw)}")
    if sign and stat.excludes_zero:
        text += " *"
    elif sign and n < MIN_N:
        text += f" ({TOO_FEW})"
    return f"**{text}**" if bold else text


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def failure_records(records) -> list[dict]:
    """The records of failed jobs (a sample that diverged: ``"diverged": reason``), in order."""
    return [r for r in records if r.get("diverged")]


def _failed_counts(failures) -> dict:
    counts: dict = {}
    for r in failures:
        counts[(r["task"], r["method"])] = counts.get((r["task"], r["method"]), 0) + 1
    return counts


MAX_FAILURE_LINES = 50  # table.md lists at most this many failures (results.jsonl has them all)


def _failure_lines(failures, tasks=None, methods=None) -> list[str]:
    """The ``## Failures`` section: one row per failed job (task, method, image, seed, step, reason)."""
    if not failures:
        return []
    t_rank = {t: i for i, t in enumerate(tasks or [])}
    m_rank = {m: i for i, m in enumerate(methods or [])}
    rows = sorted(failures, key=lambda r: (t_rank.get(r["task"], len(t_rank)), m_rank.get(r["method"], len(m_rank)),
                                           str(r.get("seed")), str(r.get("image"))))
    out = ["", "## Failures", "",
           f"{len(rows)} job(s) failed and are left out of the means and the paired differences (their "
           "metrics are empty in results.jsonl; no image was saved). Lower the step size of the method "
           "(--step METHOD=VALUE, --zeta, --eta) or use more steps.", ""]
    cells = [[r["task"], r["method"], str(r.get("image", "")), str(r.get("seed", "")),
              "" if r.get("failed_step") is None else str(r["failed_step"]),
              str(r.get("diverged")).replace("|", "/").replace("\n", " ")] for r in rows[:MAX_FAILURE_LINES]]
    out += _md_table(["task", "method", "image", "seed", "step", "reason"], cells)
    if len(rows) > MAX_FAILURE_LINES:
        out.append(f"\n… and {len(rows) - MAX_FAILURE_LINES} more (results.jsonl: records with \"diverged\")")
    return out


def markdown_tables(summary: dict, diffs: dict, metrics, tasks=None, methods=None, skipped=None,
                    title="Benchmark", notes=(), failures=()) -> str:
    """The markdown text of ``table.md``; ``failures`` (records of failed jobs) add a ``failed`` column
    and a ``## Failures`` section."""
    failed = _failed_counts(failures)
    metrics = [m for m in metrics if any(m in s for s in summary.values())]
    best = best_per_task(summary, metrics)
    lines = [f"# {title}", ""]
    lines += list(notes) + ([""] if notes else [])
    lines += ["Mean ± 95% interval (t_{0.975, n-1} sd / sqrt(n)); per-image metrics over images x seeds, set-level "
              "metrics (FID, KID, FDD) over seeds. **Bold**: best of its task.", ""]
    rows = []
    for key in _order(summary, tasks, methods):
        s = summary[key]
        n = max((s[m][2] for m in s), default=0)
        cells = [_cell(m, s[m], (key[0], key[1], m) in best) if m in s else "–" for m in metrics]
        rows.append([key[0], key[1], *cells, str(n)] + ([str(failed.get(key, 0))] if failed else []))
    lines += _md_table(["task", "method"] + [metric_label(m) for m in metrics] + ["n"] + (["failed"] if failed else []),
                       rows)
    if diffs:
        lines += ["", "## CMI+X − X (paired)", "",
                  "Mean paired difference ± 95% interval over the units both methods have (the same image, "
                  "seed, measurement and sampler noise). `*`: the interval excludes 0; with fewer than "
                  f"{MIN_N} pairs no verdict ({TOO_FEW}). For ↓ metrics a negative difference is an improvement.",
                  ""]
        rows = []
        for key in _order(diffs, tasks, methods):
            d = diffs[key]
            n = max((d[m][2] for m in d), default=0)
            cells = [_cell(m, d[m], sign=True) if m in d else "–" for m in metrics]
            rows.append([key[0], f"{key[1]} − {key[1][4:]}", *cells, str(n)])
        lines += _md_table(["task", "difference"] + [metric_label(m) for m in metrics] + ["n pairs"], rows)
    lines += _failure_lines(failures, tasks, methods)
    lines += ["", "## Skipped metrics", ""]
    if skipped:
        lines += [f"- **{name}**: {why}" for name, why in skipped.items()]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def csv_table(summary: dict, diffs: dict, metrics, tasks=None, methods=None, failures=()) -> str:
    """The text of ``table.csv``: one row per (task, method) (``row=method``) and per CMI difference
    (``row=cmi_difference``, method ``cmi+X - X``); per metric ``_mean``, ``_ci95`` (half width), ``_n``
    and, for method rows, ``_best`` (1 if best of its task); last ``failed``, the method row's number of
    failed jobs (``failures``: their records), left out of the means."""
    failed = _failed_counts(failures)
    metrics = [m for m in metrics if any(m in s for s in summary.values())]
    best = best_per_task(summary, metrics)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "task", "method"] + [f"{m}_{k}" for m in metrics for k in ("mean", "ci95", "n", "best")]
               + ["failed"])

    def num(v):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))

    for kind, table in (("method", summary), ("cmi_difference", diffs)):
        for key in _order(table, tasks, methods):
            s = table[key]
            row = [kind, key[0], key[1] if kind == "method" else f"{key[1]} - {key[1][4:]}"]
            for m in metrics:
                if m in s:
                    mean, hw, n = s[m]
                    flag = "" if kind != "method" else str(int((key[0], key[1], m) in best))
                    row += [num(mean), num(hw), str(n), flag]
                else:
                    row += ["", "", "0", ""]
            w.writerow(row + [str(failed.get(key, 0)) if kind == "method" else ""])
    return buf.getvalue()


def write_tables(out_dir, image_records, set_records=(), per_image_metrics=("psnr", "ssim"),
                 set_metrics=(), tasks=None, methods=None, skipped=None, title="Benchmark",
                 notes=()) -> dict:
    """Summarize per-image records (paired by image and seed) and set-level records (paired by seed),
    write ``table.md`` and ``table.csv`` into ``out_dir`` (atomically); the records of failed jobs
    (:func:`failure_records`) are counted and listed, not averaged. Returns
    ``{"summary": ..., "differences": ..., "markdown": text}``."""
    out_dir = Path(out_dir)
    summary = summarize(image_records, per_image_metrics)
    diffs = cmi_differences(image_records, per_image_metrics, ("image", "seed"))
    if set_records:
        for key, s in summarize(set_records, set_metrics).items():
            summary.setdefault(key, {}).update(s)
        for key, d in cmi_differences(set_records, set_metrics, ("seed",)).items():
            diffs.setdefault(key, {}).update(d)
    metrics = list(per_image_metrics) + [m for m in set_metrics if m not in per_image_metrics]
    failures = failure_records(image_records)
    md = markdown_tables(summary, diffs, metrics, tasks, methods, skipped, title, notes, failures)
    atomic_text(out_dir / "table.md", md)
    atomic_text(out_dir / "table.csv", csv_table(summary, diffs, metrics, tasks, methods, failures))
    return {"summary": summary, "differences": diffs, "markdown": md}


# --- the report of bench images -----------------------------------------------------------------------
def probe_reason(name, x, labels) -> str | None:
    """Why a per-image metric is unavailable here (None if it is available)."""
    from ..metrics import compute_metrics

    try:
        r = compute_metrics(x, x, [name], labels=labels)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    return r["skipped"].get(name)


def write_image_report(plan, results: dict, notes, measurement, device) -> str:
    """Write the report of an image benchmark into ``plan.out``: ``table.md`` and ``table.csv``, the
    set-level metrics (``set_metrics.json``, per (task, method, seed), from the saved PNGs) and
    ``grid.png``; returns the markdown. ``plan`` (:class:`cmidps.bench.images.Plan`) names the jobs
    and files; ``results`` is ``{job key: record}``; ``measurement(task, x, image, seed)``
    draws a measurement for the grid."""
    from ..metrics import dataset_metrics

    images, out = plan.images, plan.out
    jobs = plan.jobs()
    rows = [results[plan.key(j)] for j in jobs if plan.key(j) in results]
    n_missing = len(jobs) - len(rows)
    skipped = dict(plan.skipped)
    x0 = images.get([0])
    lab0 = None if images.labels is None else images.labels[:1]
    failures = failure_records(rows)
    n_ok = len(rows) - len(failures)
    for name in plan.per_names:
        have = sum(1 for r in rows if r.get(name) is not None)
        if have == 0 and name not in skipped and n_ok:
            skipped[name] = probe_reason(name, x0, lab0) or \
                "not in the results (unavailable when the jobs ran); rerun into a new --out to compute it"
        elif 0 < have < n_ok:
            skipped.setdefault(name, f"computed for {have} of {n_ok} jobs only")
    failed_groups = {(r["task"], r["method"], r["seed"]) for r in failures}

    set_rows = []
    if plan.set_names:
        for t in plan.tasks:
            for m in plan.methods:
                for s in plan.seeds:
                    if any((t, m, s, i) not in results for i in images.ids) or (t, m, s) in failed_groups:
                        continue  # incomplete, or a failed job's image is missing: no set-level value
                    res = dataset_metrics(_png_batches(plan, t, m, s, device), _truth_batches(images, device),
                                          names=plan.set_names, labels=images.labels)
                    for name, why in res["skipped"].items():
                        skipped.setdefault(name, why)
                    if res["values"]:
                        set_rows.append({"task": t, "method": m, "seed": s, **res["values"]})
                    elif all(nm in skipped for nm in plan.set_names):
                        break  # unavailable everywhere: do not retry for every group
        atomic_text(out / SET_METRICS_FILE, json.dumps({"per_seed": set_rows, "skipped": {
            k: v for k, v in skipped.items() if k in plan.set_names}}, indent=1) + "\n")
    for name in plan.set_names:
        if not any(name in r for r in set_rows):
            skipped.setdefault(name, "not computed (no complete (task, method, seed) group)")

    notes = list(notes)
    if n_missing:
        notes.append(f"**Incomplete: {n_missing} of {len(jobs)} jobs are not done yet.**")
    if failures:
        groups = sorted({(r["task"], r["method"]) for r in failures})
        notes.append(f"**{len(failures)} of {len(rows)} jobs failed** ({', '.join(f'{m} on {t}' for t, m in groups[:6])}"
                     f"{', …' if len(groups) > 6 else ''}): listed under Failures, left out of the means; set-level "
                     f"metrics skip their (task, method, seed) groups.")
    report = write_tables(out, rows, set_rows, per_image_metrics=plan.per_names, set_metrics=plan.set_names,
                          tasks=plan.tasks, methods=plan.methods, skipped=skipped, title="cmidps bench images",
                          notes=notes)
    write_grid(plan, plan.seeds[0], measurement)
    return report["markdown"]


def _png_batches(plan, task, method, seed, device, size: int = 50):
    import torch

    from ..data.images import load_image

    ids = plan.images.ids
    for start in range(0, len(ids), size):
        yield torch.stack([load_image(plan.image_path(task, method, seed, ids[i]), plan.images.shape)
                          for i in range(start, min(start + size, len(ids)))]).to(device)


def _truth_batches(images, device, size: int = 50):
    for start in range(0, len(images), size):
        yield images.get(range(start, min(start + size, len(images)))).to(device)


def write_grid(plan, seed, measurement) -> None:
    """``grid.png``: per task a row (truth, measurement, each method) for the first image and ``seed``;
    a job not done yet shows as grey."""
    import torch

    from ..data.images import image_grid, load_image

    images = plan.images
    x, image = images.get([0]), images.ids[0]
    rows = []
    for t in plan.tasks:
        row = [x[0], measurement(t, x, image, seed)]
        for m in plan.methods:
            p = plan.image_path(t, m, seed, image)
            row.append(load_image(p, images.shape) if p.is_file() else torch.full(images.shape, 0.5))
        rows.append(row)
    grid = image_grid(rows, row_labels=plan.tasks, col_labels=["truth", "measurement", *plan.methods],
                      scale=max(1, 96 // images.shape[-1]))
    from ..outputs import save_pil

    save_pil(grid, plan.out / "grid.png")  # atomic: a temporary file, then a rename
