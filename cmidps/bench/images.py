"""``cmidps bench images``: the image benchmark (the paper's Table I) from one command, resumable and
sharded.

Jobs are (image, task, method, seed). Every finished job saves its restoration to
``OUT/images/{task}/{method}/{seed}/{image}.png`` and appends one JSON line to a results file (append,
flush, fsync: a line is the unit of completion). A rerun skips the jobs already in any
``OUT/results*.jsonl``; a torn last line (a crash mid-write) is ignored and the job redone. At the end
the results are merged into ``OUT/results.jsonl`` (deduplicated, sorted by job key) and the tables
(``table.md``, ``table.csv``), the set-level metrics (``set_metrics.json``) and ``grid.png`` are written.

Jobs of the same (task, method, seed) run in batches over images. The per-image random streams are
keyed by the image id (``items=`` of :func:`cmidps.restore.measure` / :func:`~cmidps.restore.restore`),
so a job's measurement, operator and sampler noise do not depend on the batch size, the sharding, the
world size, ``--limit`` or the other files in the data folder.

Scale-out: under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set) the process group is
initialised (nccl on CUDA, gloo on CPU), rank 0 checks the configuration and lists the pending jobs,
every rank takes every ``world``-th batch of them and writes ``results.rank{r}.jsonl``; after a barrier
rank 0 merges and writes the tables. Without torchrun, ``--shard i/n`` runs the jobs whose index in the
full job list is ``i`` modulo ``n`` and writes ``results.shard{i}of{n}.jsonl``; the shard that finds
every job done writes the tables (or run ``--report-only``). See ``docs/benchmarking.md``.
"""
from __future__ import annotations

import cmidps  # noqa: F401  (OMP_WAIT_POLICY before torch)

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from ..cli_options import add_cmi_arguments, add_measurement_arguments, cmi_config, run_command, step_params
from ..images import IMAGE_SUFFIXES, ImageError, image_grid, load_image, save_image
from ..operators import TASKS
from ..restore import measure, measurement_image, parse_method, restore

__all__ = ["add_images_parser", "run_images", "main", "BenchError", "ImageSet", "load_image_set",
           "read_results", "merge_results", "job_key"]

RESULTS = "results.jsonl"
CONFIG = "config.json"
SET_METRICS_FILE = "set_metrics.json"
FORMAT = 1
METRIC_CHOICES = ("psnr", "ssim", "lpips", "fid", "kid", "digits")
DIST_TIMEOUT = datetime.timedelta(hours=48)  # a rank that finishes early waits this long at the barrier


class BenchError(ValueError):
    """A benchmark that cannot run as asked (bad options, a changed configuration, wrong data)."""


# --- the data -----------------------------------------------------------------------------------------
class ImageSet:
    """The ground-truth images of a benchmark: ids (file stems), loaded lazily, optional labels."""

    def __init__(self, ids, shape, paths=None, tensors=None, labels=None, resize=False, source=""):
        self.ids = list(ids)
        self.shape = tuple(shape)
        self.paths = paths
        self.tensors = tensors
        self.labels = labels
        self.resize = resize
        self.source = source

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, indices) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] for the images at ``indices``."""
        if self.tensors is not None:
            return self.tensors[list(indices)].clone()
        return torch.stack([load_image(self.paths[i], self.shape, resize=self.resize) for i in indices])

    def fingerprints(self) -> dict:
        """{id: 16 hex digits of sha256} of each file's bytes (of the tensor for in-memory sets)."""
        out = {}
        for i, name in enumerate(self.ids):
            h = hashlib.sha256()
            if self.paths is not None:
                h.update(Path(self.paths[i]).read_bytes())
            else:
                h.update(self.tensors[i].numpy().tobytes())
            out[name] = h.hexdigest()[:16]
        return out


def _folder_labels(folder: Path) -> dict | None:
    """Labels from ``folder/labels.json`` in the held-out format ({"images": [{"file", "label"}]})."""
    meta = folder / "labels.json"
    if not meta.is_file():
        return None
    try:
        items = json.loads(meta.read_text())["images"]
        return {Path(it["file"]).stem: int(it["label"]) for it in items}
    except (ValueError, KeyError, TypeError):
        return None


def load_image_set(data, shape, resize: bool = False, limit: int | None = None) -> ImageSet:
    """The images of ``--data``: a folder of images (sorted by file name; id = file stem), or
    ``heldout`` (the 20 held-out MNIST digits shipped with cmidps, with labels; 1x32x32 models only).

    Sizes are checked up front (file headers only): a mismatched size is an :class:`ImageError`
    naming the file unless ``resize``.
    """
    shape = tuple(shape)
    if len(shape) != 3:
        raise BenchError(f"the model makes samples of shape {shape}, not images (C, H, W)")
    if str(data) == "heldout":
        from ..data import HELDOUT_DIR, load_heldout

        if shape != (1, 32, 32):
            raise BenchError(f"--data heldout is the bundled MNIST held-out set (1x32x32 digits), but the model "
                             f"makes {shape[0]}x{shape[1]}x{shape[2]} images; pass --data FOLDER")
        x, labels = load_heldout()
        ids = [Path(it["file"]).stem for it in json.loads((HELDOUT_DIR / "labels.json").read_text())["images"]]
        if limit is not None:
            x, labels, ids = x[:limit], labels[:limit], ids[:limit]
        return ImageSet(ids, shape, tensors=x, labels=labels, source="heldout")
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {str(data)!r} is not a folder of images (or 'heldout')")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise BenchError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    seen: dict = {}
    for p in files:
        if p.stem in seen:
            raise BenchError(f"two images with the id {p.stem!r}: {seen[p.stem].name} and {p.name} (ids are file stems)")
        seen[p.stem] = p
    if limit is not None:
        files = files[:limit]
    from PIL import Image

    c, h, w = shape
    for p in files:
        try:
            with Image.open(p) as im:
                size = im.size
        except Exception as exc:  # PIL raises many kinds
            raise ImageError(f"cannot read {p} as an image: {exc}") from exc
        if size != (w, h) and not resize:
            raise ImageError(f"{p} is {size[0]}x{size[1]}, the model needs {w}x{h}; "
                             f"pass --resize to resize it (centre crop + bicubic)")
    labels = _folder_labels(folder)
    lab = None
    if labels is not None and all(p.stem in labels for p in files):
        lab = torch.tensor([labels[p.stem] for p in files], dtype=torch.int64)
    return ImageSet([p.stem for p in files], shape, paths=files, labels=lab, resize=resize, source=str(folder.resolve()))


# --- results files ------------------------------------------------------------------------------------
def job_key(rec: dict) -> tuple:
    """(task, method, seed, image): what identifies a job."""
    return (str(rec["task"]), str(rec["method"]), int(rec["seed"]), str(rec["image"]))


def _result_files(out: Path) -> list[Path]:
    files = sorted(p for p in out.glob("results*.jsonl") if p.is_file())
    return sorted(files, key=lambda p: (p.name != RESULTS, p.name))  # results.jsonl first


def _read_lines(path: Path):
    """Yield the valid records of a JSON-lines file; a torn or corrupt line is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            job_key(rec)
        except (ValueError, KeyError, TypeError):
            continue
        yield rec


def read_results(out) -> dict:
    """{job key: record} from every ``results*.jsonl`` in ``out`` (the first record of a key wins)."""
    done: dict = {}
    for path in _result_files(Path(out)):
        for rec in _read_lines(path):
            done.setdefault(job_key(rec), rec)
    return done


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no final newline) so the next append starts a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


class ResultWriter:
    """Appends one JSON line per finished job: write, flush, fsync."""

    def __init__(self, path: Path):
        self.path = Path(path)
        _repair_tail(self.path)
        self.f = open(self.path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def merge_results(out, remove_parts: bool = True) -> dict:
    """Merge every ``results*.jsonl`` into ``results.jsonl`` (deduplicated, sorted by job key; written
    atomically); then, with ``remove_parts``, delete the per-rank / per-shard files."""
    out = Path(out)
    parts = [p for p in _result_files(out) if p.name != RESULTS]
    done = read_results(out)
    text = "".join(json.dumps(done[k]) + "\n" for k in sorted(done))
    _atomic_text(out / RESULTS, text)
    if remove_parts:
        for p in parts:
            p.unlink(missing_ok=True)
    return done


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
        "cmi": {k: getattr(cmi, k) for k in ("eta", "estimator", "probes", "kinv", "cg_iters", "eta_schedule")},
        "resize": bool(args.resize),
        "dtype": args.dtype,
        "data": "heldout" if images.source == "heldout" else "folder",
    }


def _supersede(out: Path) -> Path:
    """Move a previous run's outputs into ``out/superseded-<time>/`` (nothing is deleted)."""
    dest = out / f"superseded-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir()
    for p in list(out.iterdir()):
        if p.name.startswith("superseded-"):
            continue
        if p.name in (CONFIG, "images", "table.md", "table.csv", "grid.png", SET_METRICS_FILE) \
                or (p.name.startswith("results") and p.suffix == ".jsonl"):
            shutil.move(str(p), str(dest / p.name))
    return dest


def check_config(out: Path, settings: dict, fingerprints: dict, info: dict, force: bool, allow_force: bool = True) -> None:
    """Write ``out/config.json``, or check that the previous run's settings match (else refuse, or
    with ``force`` move the previous outputs aside and start over)."""
    path = out / CONFIG
    images = dict(fingerprints)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            old_settings, old_images = old["settings"], old.get("images", {})
        except (ValueError, KeyError, TypeError):
            old_settings, old_images = None, {}
        settings_n = json.loads(json.dumps(settings))
        diffs = []
        if old_settings is None:
            diffs.append("config.json is unreadable")
        else:
            for k in sorted(set(old_settings) | set(settings_n)):
                if old_settings.get(k) != settings_n.get(k):
                    diffs.append(f"{k}: {old_settings.get(k)!r} before, {settings_n.get(k)!r} now")
        changed = [i for i in images if i in old_images and old_images[i] != images[i]]
        if changed:
            diffs.append(f"{len(changed)} image(s) changed content, e.g. {changed[0]!r}")
        if diffs:
            if not force:
                raise BenchError(
                    f"{out} holds results of a run with different settings ({'; '.join(diffs[:6])}). "
                    f"Use another --out, or pass --force to move the old outputs to {out}/superseded-<time>/ "
                    f"and start over.")
            if not allow_force:
                raise BenchError("--force cannot be combined with --shard (shards would move each other's "
                                 "results); clear the output folder or use a new --out")
            dest = _supersede(out)
            print(f"--force: moved the previous outputs to {dest}", file=sys.stderr)
            old_images = {}
        images = {**old_images, **images}
    config = {"settings": settings, "info": info, "images": images}
    _atomic_text(path, json.dumps(config, indent=1) + "\n")


# --- distribution -------------------------------------------------------------------------------------
class Dist:
    """torchrun ranks (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), a manual ``--shard i/n``, or one process."""

    def __init__(self, args):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.torchrun = self.world > 1
        self.initialized_here = False
        self.shard = _parse_shard(args.shard)
        if self.torchrun and self.shard is not None:
            raise BenchError("--shard cannot be combined with torchrun (the ranks already split the jobs)")
        self.device = args.device
        if self.torchrun:
            import torch.distributed as dist

            cuda = torch.device(args.device).type == "cuda"
            if cuda:
                self.device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo", timeout=DIST_TIMEOUT)
                self.initialized_here = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        if not self.torchrun:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.torchrun:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()

    def results_path(self, out: Path) -> Path:
        if self.torchrun:
            return out / f"results.rank{self.rank}.jsonl"
        if self.shard is not None and self.shard[1] > 1:
            return out / f"results.shard{self.shard[0]}of{self.shard[1]}.jsonl"
        return out / RESULTS


def _parse_shard(text):
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise BenchError(f"--shard must be i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise BenchError(f"--shard {text}: need 0 <= i < n")
    return i, n


# --- jobs ---------------------------------------------------------------------------------------------
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


def _batches(jobs, size: int):
    """Consecutive jobs of the same (task, method, seed), in chunks of at most ``size`` images."""
    out, cur = [], None
    for task, method, seed, i in jobs:
        if cur is not None and cur[:3] == (task, method, seed) and len(cur[3]) < size:
            cur[3].append(i)
        else:
            cur = (task, method, seed, [i])
            out.append(cur)
    return out


def _image_path(out: Path, task, method, seed, image) -> Path:
    return out / "images" / task / method / str(seed) / f"{image}.png"


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
    p = bench_subparsers.add_parser(
        "images", help="the image benchmark (Table I): tasks x methods x metrics over a folder of images",
        description="Restore every image of --data with every task, method and seed; save the images, one "
                    "JSON line per job (resumable), and the tables (mean ± 95% interval, CMI+X − X). "
                    "Runs under torchrun (one rank per GPU) or with --shard i/n. See docs/benchmarking.md.")
    p.add_argument("--data", required=True,
                   help="a folder of PNG/JPEG images (sorted by name; id = file stem), or 'heldout' (the MNIST "
                        "held-out digits shipped with cmidps, with labels)")
    p.add_argument("--model", default="bundled:mnist32", help="bundled:mnist32, an ADM .pt checkpoint, a folder")
    p.add_argument("--model-config", default=None, choices=["ffhq", "imagenet"],
                   help="ADM configuration of a .pt checkpoint (default: guessed from its keys)")
    p.add_argument("--tasks", default="inpaint_random,inpaint_box,deblur_gauss,deblur_motion,sr4",
                   help=f"comma-separated tasks or 'all' ({', '.join(TASKS)})")
    p.add_argument("--methods", default="dps,cmi+dps", help="comma-separated: dps, pigdm, mcg, dsg, cmi+X")
    p.add_argument("--steps", type=int, default=100, help="respaced reverse steps (the paper: 1000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (each one a full pass)")
    p.add_argument("--out", required=True, help="output folder (resumable: rerun the same command)")
    p.add_argument("--batch", type=int, default=8, help="images per sampler call (does not change results)")
    p.add_argument("--limit", type=int, default=None, help="only the first K images")
    p.add_argument("--resize", action="store_true", help="resize images of the wrong size (else an error)")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated from {', '.join(METRIC_CHOICES)} (psnr and ssim are always "
                        f"computed; default psnr,ssim,lpips,fid,kid, plus digits for --data heldout)")
    add_measurement_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: cuda:LOCAL_RANK), cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="compute precision (float64: results identical across batch sizes and shardings to ~1e-12, "
                        "slow; for checks)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N (job index modulo N), for batch schedulers without torchrun")
    p.add_argument("--force", action="store_true",
                   help="if OUT holds a run with other settings, move it to OUT/superseded-<time>/ and start over")
    p.add_argument("--report-only", action="store_true",
                   help="run no jobs; merge the results files and write the tables from what is done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cmi_arguments(p)
    p.set_defaults(func=run_images)
    return p


def run_images(args, on_job=None) -> int:
    """Run ``cmidps bench images``. ``on_job(record)`` (optional) is called after each job's line is
    written (used by the tests to interrupt a run)."""
    if args.steps < 1:
        raise BenchError("--steps must be >= 1")
    if args.batch < 1:
        raise BenchError("--batch must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise BenchError("--limit must be >= 1")
    tasks = _split_list(args.tasks, "tasks", TASKS)
    methods = _methods(args.methods)
    seeds = list(dict.fromkeys(int(s) for s in args.seeds))
    names = _split_list(args.metrics, "metrics", METRIC_CHOICES) if args.metrics else None
    dist = Dist(args)
    try:
        return _run(args, dist, tasks, methods, seeds, names, on_job)
    finally:
        dist.close()


def _say(dist: Dist, msg: str) -> None:
    if dist.is_main:
        print(msg, file=sys.stderr, flush=True)


def _run(args, dist: Dist, tasks, methods, seeds, names, on_job) -> int:
    from ..models.loading import load_prior

    device = dist.device
    prior = load_prior(args.model, device=device, model_config=args.model_config)
    if len(getattr(prior, "shape", ())) != 3:
        raise BenchError(f"model {args.model!r} is not an image model (sample shape {getattr(prior, 'shape', None)})")
    if args.dtype != "float32":
        prior = prior.to(getattr(torch, args.dtype))
    images = load_image_set(args.data, prior.shape, resize=args.resize, limit=args.limit)
    if names is None:
        names = ["psnr", "ssim", "lpips", "fid", "kid"] + (["digits"] if images.labels is not None
                                                           and tuple(prior.shape) == (1, 32, 32) else [])
    per_names, set_names, skipped = _metric_plan(names, images)
    out = Path(args.out)

    # configuration: rank 0 (or each manual shard) checks/writes it; the others learn the verdict
    err = None
    if dist.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            info = {"model": args.model, "data": images.source, "updated": datetime.datetime.now().isoformat(
                timespec="seconds"), "tasks": tasks, "methods": methods, "seeds": seeds, "limit": args.limit,
                "metrics": names}
            if not args.report_only:
                check_config(out, _settings(args, prior, images), images.fingerprints(), info, args.force,
                             allow_force=dist.shard is None or dist.shard[1] == 1)
        except (BenchError, OSError) as exc:
            err = str(exc)
    err = dist.broadcast(err)
    if err is not None:
        raise BenchError(err)

    # the jobs, and which are done (read by rank 0, before any rank writes)
    n = len(images)
    jobs = [(t, m, s, i) for t in tasks for m in methods for s in seeds for i in range(n)]

    def key(job):
        return (job[0], job[1], job[2], images.ids[job[3]])

    done = set(read_results(out)) if dist.is_main or not dist.torchrun else None
    done = dist.broadcast(done)
    if args.report_only:
        mine = []
    elif dist.torchrun:
        pending = [j for j in jobs if key(j) not in done]
        size = max(1, min(args.batch, len(pending) // dist.world))
        mine = [j for b in _batches(pending, size)[dist.rank::dist.world] for j in [(b[0], b[1], b[2], i) for i in b[3]]]
    elif dist.shard is not None:
        i, k = dist.shard
        mine = [j for j in jobs[i::k] if key(j) not in done]
    else:
        mine = [j for j in jobs if key(j) not in done]
    total_pending = sum(1 for j in jobs if key(j) not in done)
    _say(dist, f"bench images: {n} images x {len(tasks)} tasks x {len(methods)} methods x {len(seeds)} seeds = "
               f"{len(jobs)} jobs; {len(jobs) - total_pending} done, {total_pending} to run"
               + (f" over {dist.world} ranks" if dist.torchrun else "")
               + (f"; shard {dist.shard[0]}/{dist.shard[1]}: {len(mine)}" if dist.shard else ""))

    if mine:
        _run_jobs(args, dist, prior, images, mine, per_names, skipped, cmi_config(args), device, out, on_job)
    dist.barrier()
    if not dist.is_main:
        return 0
    # the final merge and report: by rank 0, by a single process, or by the shard that finds all done
    sharded = dist.shard is not None and dist.shard[1] > 1
    all_done = read_results(out)
    missing = [j for j in jobs if key(j) not in all_done]
    if missing and not args.report_only:
        if sharded:
            print(f"shard {dist.shard[0]}/{dist.shard[1]} done; {len(missing)} jobs of the run are not done yet "
                  f"(other shards). The shard that finishes last writes the tables; or run again with "
                  f"--report-only.", file=sys.stderr)
            return 0
        raise BenchError(f"{len(missing)} jobs are not in the results after the run (e.g. {key(missing[0])})")
    if args.report_only and len(missing) == len(jobs):
        raise BenchError(f"no results of these jobs in {out} (nothing to report)")
    merge_results(out, remove_parts=not sharded and not args.report_only)
    _report(args, prior, images, tasks, methods, seeds, jobs, key, per_names, set_names, skipped, device, out)
    return 0


def _run_jobs(args, dist, prior, images, mine, per_names, skipped, cmi, device, out, on_job) -> None:
    from tqdm.auto import tqdm

    params = step_params(args)
    labels = images.labels
    show = not args.quiet and (dist.is_main or not dist.torchrun)
    desc = f"rank {dist.rank}/{dist.world}" if dist.torchrun else "bench images"
    with ResultWriter(dist.results_path(out)) as writer, \
            tqdm(total=len(mine), unit="job", desc=desc, disable=not show, dynamic_ncols=True) as bar:
        for task, method, seed, idx in _batches(mine, args.batch):
            items = [images.ids[i] for i in idx]
            x = images.get(idx).to(device, getattr(torch, args.dtype))
            op, y = measure(x, task, seed=seed, sigma_y=args.sigma_y, preset=args.preset, items=items)
            t0 = time.perf_counter()
            xhat = restore(prior, op, y, method, steps=args.steps, seed=seed, sigma_y=args.sigma_y, cmi=cmi,
                           params=params, task=task, items=items, progress=False)
            if xhat.is_cuda:
                torch.cuda.synchronize(xhat.device)
            seconds = (time.perf_counter() - t0) / len(idx)
            lab = None if labels is None else labels[idx].to(xhat.device)
            vals = _image_metrics(xhat, x, per_names, lab, skipped)
            for k, image in enumerate(items):
                save_image(xhat[k], _image_path(out, task, method, seed, image))
                rec = {"image": image, "task": task, "method": method, "seed": seed, "steps": args.steps}
                rec.update({name: v[k] for name, v in vals.items()})
                rec.update({"seconds": round(seconds, 4), "batch": len(idx), "rank": dist.rank,
                            "finished": datetime.datetime.now().isoformat(timespec="seconds")})
                writer.write(rec)
                bar.update(1)
                if on_job is not None:
                    on_job(rec)


def _probe_reason(name, x, labels) -> str | None:
    """Why a per-image metric is unavailable here (None if it is available)."""
    from ..metrics import compute_metrics

    try:
        r = compute_metrics(x, x, [name], labels=labels)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    return r["skipped"].get(name)


def _report(args, prior, images, tasks, methods, seeds, jobs, key, per_names, set_names, skipped, device, out):
    from ..metrics import dataset_metrics
    from .report import write_tables

    results = read_results(out)
    rows = [results[key(j)] for j in jobs if key(j) in results]
    n_missing = len(jobs) - len(rows)
    skipped = dict(skipped)
    x0 = images.get([0])
    lab0 = None if images.labels is None else images.labels[:1]
    for name in per_names:
        have = sum(1 for r in rows if r.get(name) is not None)
        if have == 0 and name not in skipped:
            skipped[name] = _probe_reason(name, x0, lab0) or \
                "not in the results (unavailable when the jobs ran); rerun into a new --out to compute it"
        elif 0 < have < len(rows):
            skipped.setdefault(name, f"computed for {have} of {len(rows)} jobs only")

    # set-level metrics, per (task, method, seed), from the saved PNGs
    set_rows = []
    if set_names:
        n = len(images)
        done_keys = set(results)
        for t in tasks:
            for m in methods:
                for s in seeds:
                    if any((t, m, s, images.ids[i]) not in done_keys for i in range(n)):
                        continue
                    res = dataset_metrics(_png_batches(out, images, t, m, s, device), _truth_batches(images, device),
                                          names=set_names, labels=images.labels)
                    for name, why in res["skipped"].items():
                        skipped.setdefault(name, why)
                    if res["values"]:
                        set_rows.append({"task": t, "method": m, "seed": s, **res["values"]})
                    elif all(nm in skipped for nm in set_names):
                        break  # unavailable everywhere: do not retry for every group
        _atomic_text(out / SET_METRICS_FILE, json.dumps({"per_seed": set_rows, "skipped": {
            k: v for k, v in skipped.items() if k in set_names}}, indent=1) + "\n")
    for name in set_names:
        if not any(name in r for r in set_rows):
            skipped.setdefault(name, "not computed (no complete (task, method, seed) group)")

    notes = [f"Model `{args.model}`, data `{args.data}` ({len(images)} images), {args.steps} steps, seeds "
             f"{', '.join(map(str, seeds))}, sigma_y {args.sigma_y}."]
    if n_missing:
        notes.append(f"**Incomplete: {n_missing} of {len(jobs)} jobs are not done yet.**")
    report = write_tables(out, rows, set_rows, per_image_metrics=per_names, set_metrics=set_names, tasks=tasks,
                          methods=methods, skipped=skipped, title="cmidps bench images", notes=notes)
    _grid(out, prior, images, tasks, methods, seeds[0], args, device)
    print(report["markdown"])
    print(f"wrote {out / RESULTS}, {out / 'table.md'}, {out / 'table.csv'}, {out / 'grid.png'}", file=sys.stderr)


def _png_batches(out, images, task, method, seed, device, size: int = 50):
    for start in range(0, len(images), size):
        yield torch.stack([load_image(_image_path(out, task, method, seed, images.ids[i]), images.shape)
                           for i in range(start, min(start + size, len(images)))]).to(device)


def _truth_batches(images, device, size: int = 50):
    for start in range(0, len(images), size):
        yield images.get(range(start, min(start + size, len(images)))).to(device)


def _grid(out, prior, images, tasks, methods, seed, args, device) -> None:
    """``grid.png``: per task a row (truth, measurement, each method) for the first image and seed."""
    x = images.get([0])
    image = images.ids[0]
    rows = []
    for t in tasks:
        op, y = measure(x.to(device, getattr(torch, args.dtype)), t, seed=seed, sigma_y=args.sigma_y, preset=args.preset, items=[image])
        row = [x[0], measurement_image(op, y, images.shape)[0].float().cpu()]
        for m in methods:
            p = _image_path(out, t, m, seed, image)
            row.append(load_image(p, images.shape) if p.is_file() else torch.full(images.shape, 0.5))
        rows.append(row)
    grid = image_grid(rows, row_labels=tasks, col_labels=["truth", "measurement", *methods],
                      scale=max(1, 96 // images.shape[-1]))
    tmp = out / f"grid.png.{os.getpid()}.tmp"
    grid.save(tmp, format="PNG")
    tmp.replace(out / "grid.png")


def main(argv=None) -> int:
    """``python -m cmidps.bench.images ...`` (also under ``torchrun -m cmidps.bench.images``): the same
    as ``cmidps bench images ...``, with the same error handling."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "images":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="python -m cmidps.bench.images")
    add_images_parser(parser.add_subparsers(dest="bench", required=True))
    return run_command(parser.parse_args(["images", *argv]))


if __name__ == "__main__":
    sys.exit(main())
