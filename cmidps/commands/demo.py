"""``cmidps demo``: the five tasks on held-out digits with DPS and CMI+DPS, as in the paper's Figure 1.

Writes ``DIR/grid.png`` (rows: tasks; columns: truth, measurement, DPS, CMI+DPS) and
``DIR/metrics.json`` (``{"rows": [{"task", "method", "psnr", "ssim", ...}, ...]}``), and prints a table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .options import (add_cmi_arguments, add_device_argument, add_step_arguments,
                      check_sampling_options, check_step_overrides, cmi_config, method_params, positive_int,
                      resolve_device)
from .outputs import check_distinct, check_output_folder, save_pil, write_text
from ..operators import TASKS

DEMO_METHODS = ("dps", "cmi+dps")


def run_demo(out_dir="demo_out", model: str = "bundled:mnist32", n_images: int = 4, steps: int = 100,
             seed: int = 0, tasks=TASKS, methods=("dps", "cmi+dps"), cmi=None, progress: bool = True,
             device: str = "cpu", params: dict | None = None) -> dict:
    """Run the demo; ``params``: ``{method: {param: value}}`` step sizes over the preset's (e.g. ``{"dps":
    {"zeta": 4.0}}``; a ``cmi+X`` method takes X's entry)."""
    from ..data.mnist import load_heldout
    from ..data.images import image_grid
    from ..metrics import psnr, ssim
    from ..models.loading import load_prior
    from ..prior import from_model
    from ..restore import measure, measurement_image, restore

    out = Path(out_dir)
    prior = load_prior(model, device=device)
    if not 1 <= steps <= prior.schedule.num_train_steps:
        raise ValueError(f"--steps {steps}: the model's schedule has {prior.schedule.num_train_steps} steps; "
                         f"choose 1..{prior.schedule.num_train_steps}")
    images, labels = load_heldout()
    if not 1 <= n_images <= len(images):
        raise ValueError(f"--images {n_images}: {len(images)} held-out digits ship with cmidps; choose 1..{len(images)}")
    # A spread of digits: evenly spaced held-out images (they come two per class, in class order).
    pick = torch.arange(0, len(images), max(1, len(images) // n_images))[:n_images]
    x, labels = images[pick].to(device), labels[pick]
    rows, grid_rows = [], []
    bar = tqdm(total=len(tasks) * len(methods), desc="demo", disable=not progress)
    results = {}
    for task in tasks:
        op, y = measure(x, task, seed=seed)  # one measurement per task, shared by the methods
        x_pinv = from_model(op.A_pinv(y))  # the pseudo-inverse A^+ y: the floor any prior must beat
        rows.append({"task": task, "method": "pinv", "psnr": float(psnr(x_pinv, x).mean()),
                     "ssim": float(ssim(x_pinv, x).mean()), "seconds": 0.0, "images": len(x)})
        for method in methods:
            bar.set_postfix_str(f"{task} {method}")
            t0 = time.perf_counter()
            base = method[4:] if method.startswith("cmi+") else method
            x_hat = restore(prior, op, y, method, steps=steps, seed=seed, cmi=cmi, task=task, progress=False,
                            params=(params or {}).get(method, (params or {}).get(base)))
            seconds = time.perf_counter() - t0
            results[(task, method)] = (op, y, x_hat)
            p, s = psnr(x_hat, x), ssim(x_hat, x)
            rows.append({"task": task, "method": method, "psnr": float(p.mean()), "ssim": float(s.mean()),
                         "psnr_per_image": [round(float(v), 3) for v in p],
                         "ssim_per_image": [round(float(v), 4) for v in s],
                         "seconds": round(seconds, 2), "images": len(x), "steps": steps, "seed": seed})
            bar.update()
    bar.close()
    for k, task in enumerate(tasks):  # row k shows image k (mod n), so the figure shows several digits
        op, y, _ = results[(task, methods[0])]
        j = k % len(x)
        grid_rows.append([x[j], measurement_image(op, y, prior.shape)[j]] +
                         [results[(task, m)][2][j] for m in methods])
    grid = image_grid(grid_rows, row_labels=list(tasks), col_labels=["truth", "measurement", *methods], scale=4)
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no folder behind
    save_pil(grid, out / "grid.png")  # atomic: a failure leaves the previous file or none
    report = {"model": model, "images": [int(i) for i in pick], "labels": [int(v) for v in labels],
              "steps": steps, "seed": seed, "rows": rows}
    write_text(out / "metrics.json", json.dumps(report, indent=2))
    return report


OUTPUTS = ("grid.png", "metrics.json")


def check_demo_out(args) -> None:
    """Before any work: ``--out`` is a folder that can be written, empty unless ``--overwrite``, and
    neither output file is the ``--model`` file (docs/safety.md)."""
    from ..data.mnist import HELDOUT_DIR
    from ..models.loading import ASSETS_DIR

    out = check_output_folder(args.out, "--out", non_empty="allow" if args.overwrite else "refuse")
    spec = str(args.model)
    model = ASSETS_DIR / spec[len("bundled:"):] if spec.startswith("bundled:") else args.model
    check_distinct({f"--out {name}": out / name for name in OUTPUTS}, {"--model": model},
                   input_folders={"the held-out digits": HELDOUT_DIR})


def format_table(rows) -> str:
    lines = [f"{'task':<16}{'method':<10}{'PSNR':>8}{'SSIM':>8}{'seconds':>9}"]
    for r in rows:
        lines.append(f"{r['task']:<16}{r['method']:<10}{r['psnr']:>8.2f}{r['ssim']:>8.3f}{r['seconds']:>9.1f}")
    return "\n".join(lines)


def _run(args) -> int:
    from ..data.mnist import load_heldout

    n_heldout = len(load_heldout()[1])
    if args.images > n_heldout:  # an error, not a silent clamp: the table would not be the one asked for
        raise ValueError(f"--images {args.images}: {n_heldout} held-out digits ship with cmidps; choose 1..{n_heldout}")
    check_sampling_options(args)
    check_step_overrides(args, DEMO_METHODS)
    check_demo_out(args)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    report = run_demo(args.out, args.model, args.images, args.steps, args.seed, cmi=cmi_config(args),
                      progress=not args.quiet, device=device,
                      params={m: method_params(args, m) for m in DEMO_METHODS})
    print(format_table(report["rows"]))
    print(f"wrote {Path(args.out) / 'grid.png'} and {Path(args.out) / 'metrics.json'} "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the five tasks on held-out digits with DPS and CMI+DPS (the main job)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--model", default="bundled:mnist32")
    p.add_argument("--images", type=positive_int, default=4, help="held-out images per task (1..20)")
    p.add_argument("--steps", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out (its grid.png and metrics.json are replaced)")
    add_device_argument(p)
    add_step_arguments(p)
    add_cmi_arguments(p)
    p.set_defaults(func=_run)
