"""``cmidps bench images``: the image benchmark (the paper's Table I) from one command, resumable and
sharded.

Jobs are (task, method, seed, image). Every finished job saves its restoration to
``OUT/images/{task}/{method}/{seed}/{image}.png`` and appends one JSON line to a results file
(:mod:`cmidps.bench.store`: a line is the unit of completion). A rerun skips the jobs already in any
``OUT/results*.jsonl``; a torn last line (a crash mid-write) is ignored and the job redone. At the end
the results are merged into ``OUT/results.jsonl`` (deduplicated, sorted by job key) and the report
(:func:`cmidps.bench.report.write_image_report`: ``table.md``, ``table.csv``, ``set_metrics.json``,
``grid.png``) is written.

Jobs of the same (task, method, seed) run in batches over images. The per-image random streams are
keyed by the image id (``items=`` of :func:`cmidps.restore.measure` / :func:`~cmidps.restore.restore`),
so a job's measurement, operator and sampler noise do not depend on the batch size, the sharding, the
world size, ``--limit`` or the other files in the data folder.

Scale-out (:mod:`cmidps.bench.runner`): under ``torchrun`` rank 0 checks the configuration and lists
the pending jobs, every rank takes every ``world``-th batch of them and writes
``results.rank{r}.jsonl``; after a barrier rank 0 merges and writes the report. Without torchrun,
``--shard i/n`` runs the jobs whose index in the full job list is ``i`` modulo ``n`` and writes
``results.shard{i}of{n}.jsonl``; the shard that finds every job done writes the report (or run
``--report-only``). The images come from :mod:`cmidps.image_sets`. See ``docs/benchmarking.md``.
"""
from __future__ import annotations

import cmidps  # noqa: F401  (OMP_WAIT_POLICY before torch)

import argparse
import contextlib
import datetime
import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..commands.options import (add_cmi_arguments, add_convert_arguments, add_device_argument, add_measurement_arguments,
                           check_sampling_options, cmi_config, convert_option, preset_steps, resolve_device,
                           run_command, step_params, method_params, check_step_overrides, nonneg_float,
                           param_value)
from ..errors import InputError
from ..data.image_sets import ImageSet, load_image_set
from ..data.images import save_image
from ..operators import TASKS
from ..restore import PresetStepsWarning, measure, measurement_image, parse_method, restore
from ..sampling import SamplingDiverged
from .report import SET_METRICS_FILE, write_image_report
from .runner import Dist, batches, my_jobs
from .store import (CONFIG, ResultWriter, check_config, lock_folder, merge_results, read_results, results_path,
                    stray_outputs)
from ..commands.outputs import check_distinct, check_output_folder

__all__ = ["add_images_parser", "run_images", "main", "BenchError", "ImageSet", "load_image_set", "job_key", "Plan"]

FORMAT = 1
METRIC_CHOICES = ("psnr", "ssim", "lpips", "fid", "kid", "digits")
OUTPUTS = ("images", "table.md", "table.csv", "grid.png", SET_METRICS_FILE)  # moved aside by --force

BenchError = InputError  # a benchmark that cannot run as asked (bad options, a changed configuration, wrong data)


def job_key(rec: dict) -> tuple:
    """(task, method, seed, image): what identifies a job."""
    return (str(rec["task"]), str(rec["method"]), int(rec["seed"]), str(rec["image"]))


@dataclass
class Plan:
    """What a run computes and where it goes: jobs ``(task, method, seed, image index)`` and files."""

    out: Path
    images: ImageSet
    tasks: list
    methods: list
    seeds: list
    per_names: list  # per-image metrics
    set_names: list  # set-level metrics (FID, KID, FDD)
    skipped: dict  # metric -> why it is not computed

    def jobs(self) -> list[tuple]:
        n = len(self.images)
        return [(t, m, s, i) for t in self.tasks for m in self.methods for s in self.seeds for i in range(n)]

    def key(self, job) -> tuple:
        return (job[0], job[1], job[2], self.images.ids[job[3]])

    def image_path(self, task, method, seed, image) -> Path:
        return self.out / "images" / task / method / str(seed) / f"{image}.png"


# --- options ------------------------------------------------------------------------------------------
def _split_list(text, what, valid=None) -> list[str]:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise BenchError(f"--{what}: empty list")
    if valid is not None:
        if items == ["all"]:
            return list(valid)
        bad = [s for s in items if s not in valid]
        if bad:
            raise BenchError(f"--{what}: unknown {', '.join(bad)}; valid: {', '.join(valid)}")
    if len(set(items)) != len(items):
        raise BenchError(f"--{what}: duplicates in {text!r}")
    return items


def _methods(text) -> list[str]:
    out = []
    for m in _split_list(text, "methods"):
        base, cmi = parse_method(m)
        out.append(f"cmi+{base}" if cmi else base)
    if len(set(out)) != len(out):
        raise BenchError(f"--methods: duplicates in {text!r}")
    return out


# --- configuration ------------------------------------------------------------------------------------
def _model_fingerprint(prior) -> str:
    h = hashlib.sha256()
    h.update(repr(tuple(prior.shape)).encode())
    if isinstance(prior, torch.nn.Module):
        for name, t in sorted(prior.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    else:
        h.update(repr(prior).encode())
    return h.hexdigest()[:16]


def _settings(args, prior, images: ImageSet) -> dict:
    """What the results depend on (besides the job itself); a rerun must match it."""
    cmi = cmi_config(args)
    return {
        "format": FORMAT,
        "model_sha256": _model_fingerprint(prior),
        "shape": list(prior.shape),
        "steps": args.steps,
        "sigma_y": args.sigma_y,
        "preset": args.preset,
        "params": step_params(args),
        **({"step": sorted(map(list, args.step))} if getattr(args, "step", None) else {}),
        **({"param_table": args.param_table} if getattr(args, "param_table", None) else {}),
        "cmi": {k: getattr(cmi, k) for k in ("eta", "estimator", "probes", "kinv", "cg_iters", "eta_schedule")
                + (("grad",) if any(m.startswith("cmi+") for m in _methods(args.methods)) else ())},
        "resize": bool(args.resize),
        "convert": convert_option(args, prior.shape[0]),
        "dtype": args.dtype,
        "data": "heldout" if images.source == "heldout" else "folder",
    }


# --- metrics ------------------------------------------------------------------------------------------
def _metric_plan(names, images: ImageSet):
    """(per-image metric names, set-level names, {name: reason skipped up front})."""
    per, sets, skipped = ["psnr", "ssim"], [], {}
    digit_ok = tuple(images.shape) == (1, 32, 32)
    for n in names:
        if n == "lpips":
            per.append("lpips")
        elif n in ("fid", "kid"):
            sets.append(n)
        elif n == "digits":
            if not digit_ok:
                skipped["digits"] = (f"the digit classifier reads 1x32x32 digits (the bundled MNIST model); "
                                     f"these images are {'x'.join(map(str, images.shape))}")
                continue
            if images.labels is None:
                skipped["digit_correct"] = ("digit accuracy needs labels: --data heldout, or a labels.json "
                                            "({\"images\": [{\"file\", \"label\"}]}) in the data folder")
            else:
                per.append("digit_correct")
            sets.append("fdd")
    return per, sets, skipped


def _image_metrics(out, x, names, labels, skipped) -> dict:
    """Per-image metrics of a batch; a metric that cannot be computed is recorded in ``skipped``."""
    from ..metrics import compute_metrics

    out32, x32 = out.detach().float(), x.float()
    vals = dict(compute_metrics(out32, x32, ["psnr", "ssim"], strict=True)["values"])
    for name in names:
        if name in vals or name in skipped:
            continue
        try:
            r = compute_metrics(out32, x32, [name], labels=labels)
        except Exception as exc:  # a failing optional metric must not stop a long benchmark
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            continue
        vals.update(r["values"])
        skipped.update(r["skipped"])
    return {k: v.double().cpu().tolist() for k, v in vals.items()}


# --- the command --------------------------------------------------------------------------------------
def add_images_parser(bench_subparsers) -> argparse.ArgumentParser:
    """Register ``images`` under ``cmidps bench``."""
    from ..commands.options import UniqueInts, as_text, method_list, name_list, positive_int

    p = bench_subparsers.add_parser(
        "images", help="the image benchmark (Table I): tasks x methods x metrics over a folder of images",
        description="Restore every image of --data with every task, method and seed; save the images, one "
                    "JSON line per job (resumable), and the tables (mean ± 95% interval, CMI+X − X). "
                    "Runs under torchrun (one rank per GPU) or with --shard i/n. See docs/benchmarking.md.")
    p.add_argument("--data", required=True,
                   help="a folder of PNG/JPEG images (sorted by name; id = file stem), or 'heldout' (the MNIST "
                        "held-out digits shipped with cmidps, with labels)")
    p.add_argument("--model", default="bundled:mnist32", help="bundled:mnist32, an ADM .pt checkpoint, a folder")
    p.add_argument("--model-config", default=None, metavar="ffhq|imagenet|FILE.json",
                   help="architecture of a .pt checkpoint or bare .safetensors file: a named ADM "
                        "configuration or a JSON of create_model kwargs (default: guessed from its keys)")
    p.add_argument("--tasks", type=as_text(name_list(TASKS, "task")),
                   default="inpaint_random,inpaint_box,deblur_gauss,deblur_motion,sr4",
                   help=f"comma-separated tasks or 'all' ({', '.join(TASKS)})")
    p.add_argument("--methods", type=as_text(method_list()), default="dps,cmi+dps",
                   help="comma-separated, case-insensitive: dps, pigdm, mcg, dsg, ddnm, ddnm_plus, ddnm_svd, ddrm, diffpir, "
                        "tmpd, daps, reddiff; cmi+X turns CMI on for any of them but daps and reddiff "
                        "(docs/solvers.md)")
    p.add_argument("--params", default=None, metavar="FILE.json",
                   help="step sizes per method and task, e.g. from scripts/tune_solvers.py: {METHOD: {TASK or '*': "
                        "{PARAM: VALUE}}} (a cmi+X entry's 'eta' sets CMI's eta for it); over the preset's and "
                        "--zeta/--weight/--gamma/--eta"),
    p.add_argument("--steps", type=positive_int, default=None,
                   help="respaced reverse steps (default: the preset's, 1000 for paper/dps, 100 for small)")
    p.add_argument("--seeds", type=int, nargs="+", action=UniqueInts, default=[0],
                   help="seeds, distinct (each one a full pass)")
    p.add_argument("--out", required=True, help="output folder (resumable: rerun the same command)")
    p.add_argument("--batch", type=positive_int, default=8, help="images per sampler call (does not change results)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first K images")
    p.add_argument("--resize", action="store_true", help="resize images of the wrong size (else an error)")
    p.add_argument("--metrics", type=as_text(name_list(METRIC_CHOICES, "metric", all_ok=False)), default=None,
                   help=f"comma-separated from {', '.join(METRIC_CHOICES)} (psnr and ssim are always "
                        f"computed; default psnr,ssim,lpips,fid,kid, plus digits for --data heldout)")
    add_measurement_arguments(p)
    add_convert_arguments(p)
    add_device_argument(p, " (under torchrun, cuda is cuda:LOCAL_RANK)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="compute precision (float64: results identical across batch sizes and shardings to ~1e-12, "
                        "slow; for checks)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (job index modulo N), for batch schedulers without torchrun")
    p.add_argument("--force", action="store_true",
                   help="if OUT holds a run with other settings, move it to OUT/superseded-<time>/ and start over")
    p.add_argument("--report-only", action="store_true",
                   help="run no jobs; merge the results files and write the tables from what is done")
    p.add_argument("--keep-going", action="store_true",
                   help="the default: a sample that blows up is recorded as a failure (metrics null, 'diverged': the "
                        "reason, 'failed_step'; listed under Failures in table.md; the other images of its batch "
                        "are rerun one by one) and the run goes on")
    p.add_argument("--stop-on-divergence", action="store_true",
                   help="stop the whole run at the first sample that blows up (an error naming method, task, seed "
                        "and images) instead of recording it and going on")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cmi_arguments(p)
    p.set_defaults(func=run_images, interrupted="interrupted (a bench run resumes where it stopped: rerun the same command)")
    return p


def run_images(args, on_job=None) -> int:
    """Run ``cmidps bench images``. ``on_job(record)`` (optional) is called after each job's line is
    written (used by the tests to interrupt a run).

    Every option is checked, the model and images loaded and every task's operator built before
    anything is written; then the output folder is locked for the whole run
    (:func:`cmidps.bench.store.lock_folder`: a second run on it refuses) and its ``config.json``
    checked."""
    tasks, methods, seeds, names = _check_options(args)
    _check_out(args)
    dist = Dist(args.shard, resolve_device(args.device))
    try:
        prior, plan, names = _prepare(args, dist, tasks, methods, seeds, names)
        with contextlib.ExitStack() as held:
            _claim(args, dist, prior, plan, names, held)
            return _run(args, dist, prior, plan, on_job)
    finally:
        dist.close()


def _check_out(args) -> None:
    """Before any work (docs/safety.md): ``--out`` is a folder that can be written, neither ``--data``
    nor inside it nor holding it, and not a folder that holds files of the names this bench writes
    without being a bench run (no ``config.json``) unless ``--force`` (which moves them aside)."""
    from ..data.mnist import HELDOUT_DIR
    from ..models.loading import ASSETS_DIR

    out = check_output_folder(args.out, "--out")
    spec = str(args.model)
    model = ASSETS_DIR / spec[len("bundled:"):] if spec.startswith("bundled:") else (
        args.model if Path(spec).expanduser().exists() else None)  # a local file or folder
    check_distinct({}, {"--model": model}, folders={"--out": out},
                   input_folders={"--data": HELDOUT_DIR if str(args.data) == "heldout" else args.data})
    if args.report_only and not any(out.glob("results*.jsonl")):
        raise BenchError(f"--report-only: no results in {str(args.out)!r} (nothing to report)")
    if not (out / CONFIG).is_file() and not args.force and not args.report_only:
        stray = stray_outputs(out, OUTPUTS)
        if stray:
            raise BenchError(f"--out {str(args.out)!r} is not a bench run (no {CONFIG}) but holds {', '.join(stray[:5])}, "
                             f"which this run would write; use another --out, or pass --force to move them to "
                             f"{args.out}/superseded-<time>/")


def _check_options(args):
    """(tasks, methods, seeds, metric names or None) of the options, each checked."""
    if args.steps is not None and args.steps < 1:
        raise BenchError("--steps must be >= 1")
    if args.batch < 1:
        raise BenchError("--batch must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise BenchError("--limit must be >= 1")
    check_sampling_options(args)
    tasks = _split_list(args.tasks, "tasks", TASKS)
    methods = _methods(args.methods)
    seeds = list(dict.fromkeys(int(s) for s in args.seeds))
    names = _split_list(args.metrics, "metrics", METRIC_CHOICES) if args.metrics else None
    args.param_table = _param_table(args.params)
    check_step_overrides(args, methods)
    return tasks, methods, seeds, names


def _param_table(path) -> dict | None:
    """The ``--params`` file as {method: {task or '*': {param: value}}} (``None`` without the option).
    A file with a top-level ``"params"`` key (what ``scripts/tune_solvers.py`` writes) gives that key."""
    if path is None:
        return None

    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"--params {path}: cannot read a JSON table ({exc})") from None
    table = table.get("params", table) if isinstance(table, dict) else table
    ok = isinstance(table, dict) and all(isinstance(v, dict) and all(isinstance(w, dict) for w in v.values())
                                         for v in table.values())
    if not ok:
        raise BenchError(f"--params {path}: expected {{METHOD: {{TASK or '*': {{PARAM: VALUE}}}}}}")
    for method, per_task in table.items():
        base, use_cmi = parse_method(method)  # an unknown method is an error naming it
        for task, params in per_task.items():
            if task != "*" and task not in TASKS:
                raise BenchError(f"--params {path}: {method}: unknown task {task!r}; valid tasks: *, {', '.join(TASKS)}")
            for name, value in params.items():  # every value checked before any work, as --step's are
                try:
                    params[name] = nonneg_float(json.dumps(value)) if use_cmi and name == "eta" \
                        else param_value(base, name, value)
                except argparse.ArgumentTypeError as exc:
                    raise BenchError(f"--params {path}: {method} ({task}): {exc}") from None
    return table


def _job_params(args, method: str, task: str, cmi):
    """(step-size params, CMIConfig) of one (method, task): the command line's, then ``--params``."""
    import dataclasses

    params = method_params(args, method)  # --zeta/--weight/--gamma where the method has them, then --step
    table = getattr(args, "param_table", None)
    if not table:
        return params, cmi
    base, use_cmi = parse_method(method)

    def entry(name):
        t = table.get(name, {})
        return dict(t.get(task, t.get("*", {})))

    params.update(entry(base))
    if use_cmi:
        extra = entry(method)
        params.update({k: v for k, v in extra.items() if k != "eta"})
        if "eta" in extra:
            cmi = dataclasses.replace(cmi, eta=float(extra["eta"]))
    return params, cmi


def _prepare(args, dist: Dist, tasks, methods, seeds, names):
    """The prior, the plan and the metric names; checks that the model's schedule has ``--steps``
    and that every task's operator can be built for these images (writes nothing)."""
    from ..models.loading import load_prior

    prior = load_prior(args.model, device=dist.device, model_config=args.model_config)
    if len(getattr(prior, "shape", ())) != 3:
        raise BenchError(f"model {args.model!r} is not an image model (sample shape {getattr(prior, 'shape', None)})")
    if args.dtype != "float32":
        prior = prior.to(getattr(torch, args.dtype))
    if dist.is_main or args.steps is None:
        args.steps = preset_steps(args, prior.shape)  # the preset's count, or a notice that it differs
    if not 1 <= args.steps <= prior.schedule.num_train_steps:
        raise BenchError(f"--steps {args.steps}: the model's schedule has {prior.schedule.num_train_steps} "
                         f"steps; choose 1..{prior.schedule.num_train_steps}")
    images = load_image_set(args.data, prior.shape, resize=args.resize, limit=args.limit,
                            convert=convert_option(args, prior.shape[0]))
    if names is None:
        names = ["psnr", "ssim", "lpips", "fid", "kid"] + (["digits"] if images.labels is not None
                                                           and tuple(prior.shape) == (1, 32, 32) else [])
    x0 = images.get([0]).to(dist.device, getattr(torch, args.dtype))
    for task in tasks:  # an operator that cannot be made for these images fails here, not after the writes
        try:
            measure(x0, task, seed=seeds[0], sigma_y=args.sigma_y, preset=args.preset, items=images.ids[:1])
        except ValueError as exc:
            raise BenchError(f"--tasks {task}: {exc}") from None
    plan = Plan(Path(args.out), images, tasks, methods, seeds, *_metric_plan(names, images))
    return prior, plan, names


def _claim(args, dist: Dist, prior, plan: Plan, names, held: contextlib.ExitStack) -> None:
    """Rank 0 (or each manual shard) creates and locks the output folder (the lock joins ``held``) and
    checks or writes ``config.json``; the other ranks learn the verdict."""
    err = None
    if dist.is_main:
        try:
            plan.out.mkdir(parents=True, exist_ok=True)
            held.enter_context(lock_folder(plan.out, shared=dist.sharded or args.report_only, tag=dist.tag))
            info = {"model": args.model, "data": plan.images.source, "updated": datetime.datetime.now().isoformat(
                timespec="seconds"), "tasks": plan.tasks, "methods": plan.methods, "seeds": plan.seeds,
                "limit": args.limit, "metrics": names}
            if not args.report_only:
                check_config(plan.out, _settings(args, prior, plan.images), plan.images.fingerprints(), info,
                             args.force, allow_force=not dist.sharded, outputs=OUTPUTS)
        except (BenchError, OSError) as exc:
            err = str(exc)
    err = dist.broadcast(err)
    if err is not None:
        raise BenchError(err)


def _run(args, dist: Dist, prior, plan: Plan, on_job) -> int:
    """Run this process's share of the pending jobs; then (rank 0, a single process, or the shard that
    finds every job done) merge the results and write the report."""
    out, images, tasks, methods, seeds = plan.out, plan.images, plan.tasks, plan.methods, plan.seeds
    # the jobs, and which are done (read by rank 0, before any rank writes)
    jobs = plan.jobs()
    done = set(read_results(out, job_key)) if dist.is_main or not dist.torchrun else None
    done = dist.broadcast(done)

    def is_done(job):
        return plan.key(job) in done

    mine = [] if args.report_only else my_jobs(dist, jobs, is_done, args.batch)
    total_pending = sum(1 for j in jobs if not is_done(j))
    dist.say(f"bench images: {len(images)} images x {len(tasks)} tasks x {len(methods)} methods x {len(seeds)} "
             f"seeds = {len(jobs)} jobs; {len(jobs) - total_pending} done, {total_pending} to run"
             + (f" over {dist.world} ranks" if dist.torchrun else "")
             + (f"; shard {dist.shard[0]}/{dist.shard[1]}: {len(mine)}" if dist.shard else ""))

    if mine:
        _run_jobs(args, dist, prior, plan, mine, cmi_config(args), on_job)
    dist.barrier()
    if not dist.is_main:
        return 0
    # the final merge and report: by rank 0, by a single process, or by the shard that finds all done
    all_done = read_results(out, job_key)
    missing = [j for j in jobs if plan.key(j) not in all_done]
    if missing and not args.report_only:
        if dist.sharded:
            print(f"shard {dist.shard[0]}/{dist.shard[1]} done; {len(missing)} jobs of the run are not done yet "
                  f"(other shards). The shard that finishes last writes the tables; or run again with "
                  f"--report-only.", file=sys.stderr)
            return 0
        raise BenchError(f"{len(missing)} jobs are not in the results after the run (e.g. {plan.key(missing[0])})")
    if args.report_only and len(missing) == len(jobs):
        raise BenchError(f"no results of these jobs in {out} (nothing to report)")
    results = merge_results(out, job_key, remove_parts=not dist.sharded and not args.report_only)
    notes = [f"Model `{args.model}`, data `{args.data}` ({len(images)} images), {args.steps} steps, seeds "
             f"{', '.join(map(str, seeds))}, sigma_y {args.sigma_y}."]
    print(write_image_report(plan, results, notes, _measurement(args, dist.device), dist.device))
    print(f"wrote {out / 'results.jsonl'}, {out / 'table.md'}, {out / 'table.csv'}, {out / 'grid.png'}",
          file=sys.stderr)
    return 0


def _run_jobs(args, dist: Dist, prior, plan: Plan, mine, cmi, on_job) -> None:
    from tqdm.auto import tqdm

    images, labels = plan.images, plan.images.labels
    skipped = plan.skipped
    show = not args.quiet and (dist.is_main or not dist.torchrun)
    desc = f"rank {dist.rank}/{dist.world}" if dist.torchrun else "bench images"
    with ResultWriter(results_path(plan.out, dist.tag)) as writer, \
            tqdm(total=len(mine), unit="job", desc=desc, disable=not show, dynamic_ncols=True) as bar:
        for task, method, seed, idx in batches(mine, args.batch):
            items = [images.ids[i] for i in idx]
            x = images.get(idx).to(dist.device, getattr(torch, args.dtype))
            op, y = measure(x, task, seed=seed, sigma_y=args.sigma_y, preset=args.preset, items=items)
            params, job_cmi = _job_params(args, method, task, cmi)

            def run(sel):  # restore the batch elements ``sel`` (results do not depend on the batching)
                sub = [items[k] for k in sel]
                o, yy = (op, y) if len(sel) == len(idx) else measure(
                    x[sel], task, seed=seed, sigma_y=args.sigma_y, preset=args.preset, items=sub)
                with warnings.catch_warnings():  # preset_steps printed the notice once
                    warnings.simplefilter("ignore", PresetStepsWarning)
                    return restore(prior, o, yy, method, steps=args.steps, seed=seed, sigma_y=args.sigma_y,
                                   cmi=job_cmi, params=params, task=task, items=sub, progress=False)

            t0 = time.perf_counter()
            diverged = {}
            try:
                xhat = run(list(range(len(idx))))
            except SamplingDiverged as exc:
                if getattr(args, "stop_on_divergence", False):
                    raise SamplingDiverged(f"{method} on {task}, seed {seed}, image(s) {', '.join(items[:4])}"
                                           f"{', …' if len(items) > 4 else ''}: {exc} (without --stop-on-divergence "
                                           f"the run records it and goes on)") from None
                xhat = torch.full_like(x, float("nan"))
                if len(idx) == 1:
                    diverged[0] = str(exc)
                else:
                    for k in range(len(idx)):  # find the elements that blow up on their own
                        try:
                            xhat[k:k + 1] = run([k])
                        except SamplingDiverged as one:
                            diverged[k] = str(one)
            if xhat.is_cuda:
                torch.cuda.synchronize(xhat.device)
            seconds = (time.perf_counter() - t0) / len(idx)
            ok = [k for k in range(len(idx)) if k not in diverged]
            lab = None if labels is None else labels[idx].to(xhat.device)
            vals = _image_metrics(xhat[ok], x[ok], plan.per_names, None if lab is None else lab[ok], skipped) \
                if ok else {}
            for k, image in enumerate(items):
                rec = {"image": image, "task": task, "method": method, "seed": seed, "steps": args.steps}
                if k in diverged:
                    rec.update({name: None for name in plan.per_names})
                    rec["diverged"] = diverged[k]
                    rec["failed_step"] = _failed_step(diverged[k])
                else:
                    save_image(xhat[k], plan.image_path(task, method, seed, image))
                    rec.update({name: v[ok.index(k)] for name, v in vals.items()})
                rec.update({"seconds": round(seconds, 4), "batch": len(idx), "rank": dist.rank,
                            "finished": datetime.datetime.now().isoformat(timespec="seconds")})
                writer.write(rec)
                bar.update(1)
                if on_job is not None:
                    on_job(rec)


def _failed_step(reason: str):
    """The step a divergence message names (``... at step 7 of 20 ...``), or ``None``."""
    import re

    m = re.search(r"at step (\d+)", reason)
    return int(m.group(1)) if m else None


def _measurement(args, device):
    """``(task, x, image, seed) -> (C, H, W)``: a picture of the measurement that the job of ``image``
    gets (for the grid)."""
    def draw(task, x, image, seed):
        op, y = measure(x.to(device, getattr(torch, args.dtype)), task, seed=seed, sigma_y=args.sigma_y,
                        preset=args.preset, items=[image])
        return measurement_image(op, y, tuple(x.shape[1:]))[0].float().cpu()

    return draw


def main(argv=None) -> int:
    """``python -m cmidps.bench.images ...`` (also under ``torchrun -m cmidps.bench.images``): the same
    as ``cmidps bench images ...``, with the same error handling."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "images":
        argv = argv[1:]
    from ..commands.options import CLIParser

    parser = CLIParser(prog="python -m cmidps.bench.images")
    add_images_parser(parser.add_subparsers(dest="bench", required=True))
    return run_command(parser.parse_args(["images", *argv]))


if __name__ == "__main__":
    sys.exit(main())
