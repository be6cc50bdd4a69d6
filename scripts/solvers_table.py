"""Tables of docs/solvers.md from the image benchmark's results (scripts/solvers_images.sh writes one
folder per method under docs/results/mnist_solvers/, each a `cmidps bench images` run).

    .venv/bin/python scripts/solvers_table.py psnr   [DIR]   # PSNR per method and task, cost per image
    .venv/bin/python scripts/solvers_table.py ssim   [DIR]
    .venv/bin/python scripts/solvers_table.py vs_dps [DIR]   # paired PSNR difference to DPS (same image, seed)
    .venv/bin/python scripts/solvers_table.py cmi    [DIR]   # paired PSNR difference CMI+X - X
    .venv/bin/python scripts/solvers_table.py cmi_grads DIR DIR_FD   # the same with the autodiff and fd gradients
    .venv/bin/python scripts/solvers_table.py params [DIR]   # the tuned step sizes (DIR/tuning.json)
    .venv/bin/python scripts/solvers_table.py status [DIR]   # which methods have run, and how far
    .venv/bin/python scripts/solvers_table.py speed docs/results/speed_solvers_mnist32.json
    .venv/bin/python scripts/solvers_table.py phase docs/results/phase_retrieval.json
    .venv/bin/python scripts/solvers_table.py grid [DIR] --runs runs/mnist_solvers --image digit7_970 --out docs/img/solvers_grid.png

Intervals: 95% Student-t over the (image, seed) pairs (cmidps.bench.intervals); a paired difference
whose interval excludes 0 is in bold. A sample that blew up (`--keep-going`) has no PSNR: "k div."
counts them, and pairs with one are left out. n < 40 in a cell means the run is not complete.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmidps.bench.intervals import interval  # noqa: E402

TASKS = ["inpaint_random", "inpaint_box", "deblur_gauss", "deblur_motion", "sr4"]
ORDER = ["dps", "pigdm", "mcg", "dsg", "ddnm", "ddnm_plus", "ddnm_svd", "ddrm", "diffpir", "tmpd", "daps", "reddiff"]
FULL = 40  # 20 digits x 2 seeds


def records(folder: Path):
    """The job records of one ``bench images`` run folder (its ``results*.jsonl`` lines)."""
    for f in sorted(folder.glob("results*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def load(folder: Path) -> dict:
    """{method: {(task, seed, image): record}} of every method folder that has results."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        recs = {(r["task"], r["seed"], r["image"]): r for r in records(sub)}
        if recs:
            out[sub.name] = recs
    return out


def methods(res) -> list:
    base = [m for m in ORDER if m in res]
    return [x for m in base for x in (m, f"cmi+{m}") if x in res] + sorted(set(res) - set(base) - {f"cmi+{m}" for m in base})


def cell(values, sign=False, bold_if_sig=False, digits=2) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    iv = interval(vals)
    fmt = f"{iv.mean:+.{digits}f}" if sign else f"{iv.mean:.{digits}f}"
    s = f"{fmt} ± {iv.half_width:.{digits}f}"
    if bold_if_sig and iv.excludes_zero:
        s = f"**{s}**"
    if len(vals) < FULL:
        s += f" (n={len(vals)})"
    return s


def metric_table(res, metric):
    digits = 2 if metric == "psnr" else 3
    head = "PSNR (dB)" if metric == "psnr" else "SSIM"
    print(f"| method ({head}) | " + " | ".join(TASKS) + " | s / image |")
    print("|---" * (len(TASKS) + 2) + "|")
    for m in methods(res):
        cells = []
        for t in TASKS:
            recs = [r for (task, _, _), r in res[m].items() if task == t]
            c = cell([r.get(metric) for r in recs], digits=digits)
            div = sum(1 for r in recs if r.get("diverged"))
            if div:
                c += f" ({div} div.)"
            cells.append(c)
        secs = [r["seconds"] for r in res[m].values() if r.get("seconds") is not None]
        cost = f"{sum(secs) / len(secs):.2f}" if secs else "–"
        print(f"| {m} | " + " | ".join(cells) + f" | {cost} |")


def paired_cells(res, a, b):
    cells = []
    for t in TASKS:
        keys = [k for k in res[a] if k[0] == t and k in res[b]]
        d = [res[a][k]["psnr"] - res[b][k]["psnr"] for k in keys
             if res[a][k].get("psnr") is not None and res[b][k].get("psnr") is not None]
        cells.append(cell(d, sign=True, bold_if_sig=True) if d else "–")
    return cells


def vs_dps(res):
    print("| method − dps (PSNR, dB) | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for m in methods(res):
        if m != "dps":
            print(f"| {m} | " + " | ".join(paired_cells(res, m, "dps")) + " |")


def cmi(res):
    print("| CMI+X − X (PSNR, dB) | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for m in methods(res):
        if m.startswith("cmi+") and m[4:] in res:
            print(f"| {m} − {m[4:]} | " + " | ".join(paired_cells(res, m, m[4:])) + " |")


def cmi_grads(res, res_fd):
    """CMI+X - X with the autodiff gradient (res) and with fd (res_fd, only cmi+X rows; X from res)."""
    print("| CMI+X − X (PSNR, dB) | gradient | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 2) + "|")
    for m in methods(res):
        if not (m.startswith("cmi+") and m[4:] in res and m in res_fd):
            continue
        print(f"| {m} − {m[4:]} | autodiff | " + " | ".join(paired_cells(res, m, m[4:])) + " |")
        both = {m[4:]: res[m[4:]], m: res_fd[m]}
        print("| | fd | " + " | ".join(paired_cells(both, m, m[4:])) + " |")


def params(folder):
    t = json.loads((folder / "tuning.json").read_text())
    c = t["config"]
    print(f"Tuned on {c['images']} training digits (indices {c['digits']['indices']}), seed {c['seed']}, "
          f"{c['steps']} steps, CMI gradient {c.get('cmi_grad', 'autodiff')}; best mean PSNR. An edge that wins is "
          f"extended (at most {c['extend_low']} steps down, DiffPIR's lam 4, and {c.get('extend', 3)} up); a low "
          "edge that still wins is scored against the end of the domain (eta = 0, which is X itself; DiffPIR's "
          "lam = 0), which replaces it only if better by more than 0.01 dB.\n")
    print("| method | parameter | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 2) + "|")
    for m, per in t["chosen"].items():
        if not (folder / m / "params.json").is_file():  # only the methods whose benchmark ran (tuning may go on)
            continue
        param = next(iter(per.values()))["param"]
        scores = t["scores"].get(f"{m}@eta" if m.startswith("cmi+") else m, {})
        cells = []
        for task in TASKS:
            ch = per.get(task)
            if ch is None:
                cells.append("–")
                continue
            s = f"{ch['value']:g}"
            at_zero = scores.get(task, {}).get("0")
            if ch["edge"] == "boundary":
                s += " (domain end)"
            elif ch["edge"] == "all diverged":
                s = "– (every value blew up)"
            elif ch["edge"]:
                s += f" ({ch['edge']} edge)"
            elif ch["value"] == min(ch["grid"][1:] if ch["grid"][0] == 0 else ch["grid"]) and at_zero is not None:
                s += f" ({param} = 0 {at_zero - ch['psnr']:+.3f} dB)"
            cells.append(s)
        print(f"| {m} | {param} | " + " | ".join(cells) + " |")


def grid(folder, runs: Path, image: str, out: Path, seed: int = 0):
    import torch

    from cmidps.data.image_sets import load_image_set
    from cmidps.data.images import image_grid, load_image
    from cmidps.restore import measure, measurement_image

    res = load(folder)
    ms = methods(res)
    images = load_image_set("heldout", (1, 32, 32))
    x = images.get([images.ids.index(image)])
    rows = []
    for t in TASKS:
        op, y = measure(x, t, seed=seed, items=[image])
        row = [x[0], measurement_image(op, y, (1, 32, 32))[0].float()]
        for m in ms:
            p = runs / m / "images" / t / m / str(seed) / f"{image}.png"
            row.append(load_image(p, (1, 32, 32)) if p.is_file() else torch.full((1, 32, 32), 0.5))
        rows.append(row)
    g = image_grid(rows, row_labels=TASKS, col_labels=["truth", "measured", *ms], scale=3)
    out.parent.mkdir(parents=True, exist_ok=True)
    g.save(out)
    print(f"wrote {out}: {image}, seed {seed}; grey = not run or blew up")


def status(res):
    """Which methods of the planned grid have run, and how far."""
    planned = [x for m in ORDER for x in (m, f"cmi+{m}") if not (x.startswith("cmi+") and m in ("daps", "reddiff"))]
    print("| method | jobs done (of 200) | blew up | state |")
    print("|---|---|---|---|")
    for m in planned:
        recs = res.get(m, {})
        div = sum(1 for r in recs.values() if r.get("diverged"))
        state = "complete" if len(recs) >= 200 else ("partial" if recs else "not run")
        print(f"| {m} | {len(recs)} | {div} | {state} |")


def speed(path):
    d = json.loads(Path(path).read_text())
    print(f"One network forward and backward: {d['network_fwd_bwd_ms']:.0f} ms.\n")
    print("| method | ms / step | CPU ms / step | ratio to the network's forward+backward | network evaluations / step |")
    print("|---|---|---|---|---|")
    for m, r in d["methods"].items():
        print(f"| {m} | {r['ms_per_step']:.0f} | {r['cpu_ms_per_step']:.0f} | {r['ratio_to_network']:.2f} "
              f"| {r['network_evals_per_step']:.2f} |")


def kcheck(path):
    d = json.loads(Path(path).read_text())
    print("| task | steps with K indefinite (of " + str(d["config"]["steps"]) + ") | min w.Kw / w.w, first step "
          "| smallest row sum, first step | steps with a negative row sum |")
    print("|---|---|---|---|---|")
    for task, rows in d["tasks"].items():
        neg = [r["step"] for r in rows if r["min_rayleigh_K"] < 0]
        negr = [r["step"] for r in rows if r["min_rowsum"] < 0]
        span = (f"{neg[0]}-{neg[-1]}" if neg == list(range(neg[0], neg[-1] + 1)) else ", ".join(map(str, neg))) if neg else ""
        steps = f"{len(neg)} (steps {span})" if neg else "0"
        print(f"| {task} | {steps} | {rows[0]['min_rayleigh_K']:.3g} | {rows[0]['min_rowsum']:.3g} | {len(negr)} |")


def phase(path):
    d = json.loads(Path(path).read_text())
    names = {"init": "initialisation x_T", "unguided": "unguided sample (zeta = 0), same x_T",
             "dps": f"**DPS** (zeta = {d['config']['zeta']:g}, {d['config']['steps']} steps)"}
    print("| result | aligned PSNR (mean) | per image | residual (mean) |")
    print("|---|---|---|---|")
    for k, name in names.items():
        per = ", ".join(f"{v:.1f}" for v in d["per_image"][k]["aligned_psnr"])
        print(f"| {name} | {d['mean'][k]['aligned_psnr']:.2f} dB | {per} | {d['mean'][k]['residual']:.3f} |")


def main(argv):
    mode = argv[0]
    if mode in ("speed", "phase", "kcheck"):
        {"speed": speed, "phase": phase, "kcheck": kcheck}[mode](ROOT / argv[1])
        return
    rest = [a for a in argv[1:] if not a.startswith("--")]
    folder = ROOT / (rest[0] if rest else "docs/results/mnist_solvers")
    if mode == "grid":
        opt = dict(zip(argv[1::1], argv[2::1]))
        grid(folder, ROOT / opt.get("--runs", "runs/mnist_solvers"), opt.get("--image", "digit7_970"),
             ROOT / opt.get("--out", "docs/img/solvers_grid.png"))
        return
    if mode == "params":
        params(folder)
        return
    if mode == "cmi_grads":  # cmi_grads DIR DIR_FD
        cmi_grads(load(folder), load(ROOT / rest[1]))
        return
    res = load(folder)
    {"psnr": lambda: metric_table(res, "psnr"), "ssim": lambda: metric_table(res, "ssim"), "status": lambda: status(res),
     "vs_dps": lambda: vs_dps(res), "cmi": lambda: cmi(res)}[mode]()


if __name__ == "__main__":
    main(sys.argv[1:])
