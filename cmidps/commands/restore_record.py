"""``cmidps restore``'s run records (``NAME.json`` beside each output: every resolved setting, the model's
SHA-256, versions, device, seconds, metrics), ``--config`` (a record or a JSON / YAML file of options,
rerun with the command line on top), resuming a folder (which finished images agree with this run), the
scores against a truth, and a folder's summary table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from .restore_inputs import RECORD_KIND, RestoreError

if TYPE_CHECKING:
    from .restore_inputs import Item

SIGMA_UNIT = "standard deviation in the model's [-1, 1] range (= 2 x the std in [0, 1] image units)"
_PARSER: argparse.ArgumentParser | None = None  # the restore subparser (set by restore.register), for --config


_NOT_SETTINGS = {"func", "interrupted", "config", "argv", "restore_argv", "command", "help", "quiet"}


def _option_names() -> list[str]:
    return [a.dest for a in _PARSER._actions if a.dest not in _NOT_SETTINGS and a.dest != argparse.SUPPRESS]


def load_config(path) -> dict:
    """The options of a run record (``NAME.json``) or of a JSON / YAML file holding the same keys
    (either the record itself, whose ``options`` are taken, or a plain mapping of option names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r}: no such file")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise RestoreError("--config: a YAML file needs PyYAML (pip install pyyaml); or give the JSON record") \
                from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RestoreError(f"--config {str(path)!r}: not valid YAML ({exc})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RestoreError(f"--config {str(path)!r}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RestoreError(f"--config {str(path)!r}: expected a mapping of options")
    options = data.get("options", data)
    known = set(_option_names())
    out = {}
    for key, value in options.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name in ("kind", "command", "resolved", "model_file", "versions", "device", "seconds", "metrics",
                    "record_version") and "options" not in data:
            continue
        if name not in known:
            raise RestoreError(f"--config {str(path)!r}: unknown option {key!r}")
        out[name] = value
    return out


def apply_config(args) -> argparse.Namespace:
    """``args`` with the options of ``--config`` as defaults, the command line's own options on top."""
    cfg = load_config(args.config)
    argv = getattr(args, "restore_argv", None)
    if argv is None:
        raise RestoreError("--config needs the command line (run it as 'cmidps restore --config FILE ...')")
    ns = argparse.Namespace(**cfg)
    new = _PARSER.parse_args(argv, namespace=ns)
    new.restore_argv = argv
    for action in _PARSER._actions:  # values from the file go through the same types and choices
        if action.dest in cfg and cfg[action.dest] is not None and action.type is not None \
                and isinstance(cfg[action.dest], str) and getattr(new, action.dest) is cfg[action.dest]:
            try:
                setattr(new, action.dest, action.type(cfg[action.dest]))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise RestoreError(f"--config: option {action.dest!r}: {exc}") from None
        if action.dest in cfg and action.choices and getattr(new, action.dest) not in action.choices \
                and getattr(new, action.dest) is not None:
            raise RestoreError(f"--config: {action.dest} {getattr(new, action.dest)!r} is not one of "
                               f"{', '.join(map(str, action.choices))}")
    return new


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_files(spec: str) -> tuple[str | None, str | None]:
    """The model's weight file (or folder) and its SHA-256 (a folder's: over its files' names and hashes)."""
    from ..models.loading import ASSETS_DIR

    if spec.startswith("bundled:"):
        path = ASSETS_DIR / spec[len("bundled:"):] / "model.safetensors"
    else:
        path = Path(spec).expanduser()
    if path.is_file():
        return str(path.resolve()), _sha256(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(path)}:{_sha256(f)}\n".encode())
        return str(path.resolve()), h.hexdigest()
    return None, None


class Scorer:
    """PSNR and SSIM (cmidps.metrics), and LPIPS when its weight files are found."""

    def __init__(self, device):
        self.device = device
        self.lpips = None
        self.lpips_note = None
        try:
            from ..metrics.lpips import get_lpips

            self.lpips = get_lpips("alex", device=device)
        except Exception as exc:  # MetricUnavailable (no weights) or a broken file: reported, not fatal
            self.lpips_note = (f"lpips skipped: {str(exc).split(':')[0]}: its weight files are not here "
                               "(docs/metrics.md says which files and where)")

    def __call__(self, x, truth) -> dict:
        from ..metrics.pixel import psnr, ssim

        x, truth = x.double().cpu(), truth.double().cpu()
        out = {"psnr": float(psnr(x, truth)[0])}
        if min(truth.shape[-2:]) >= 11:
            out["ssim"] = float(ssim(x, truth)[0])
        if self.lpips is not None:
            try:
                out["lpips"] = float(self.lpips(x.float().to(self.device), truth.float().to(self.device))[0])
            except Exception as exc:  # e.g. an image too small for the network
                self.lpips_note = f"lpips skipped: {str(exc).splitlines()[0]}"
        return out


def _versions() -> dict:
    import platform

    import numpy
    import torch

    from .. import __version__

    return {"cmidps": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
            "numpy": numpy.__version__, "python": platform.python_version()}


def _jsonable(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _absolute_options(args, item: Item | None) -> dict:
    """The run's options with paths made absolute (an item's own files for a per-image record)."""
    opts = {name: getattr(args, name, None) for name in _option_names()}
    for name in ("measurement", "image", "mask", "kernel", "truth", "save_measurement", "out", "grid"):
        if opts.get(name) is not None:
            opts[name] = str(Path(opts[name]).expanduser().absolute())
    if opts.get("model") and not str(opts["model"]).startswith("bundled:") and Path(opts["model"]).expanduser().exists():
        opts["model"] = str(Path(opts["model"]).expanduser().absolute())
    if item is not None:  # the record of one image of a folder reruns that image alone
        opts["image" if args.image is not None else "measurement"] = str(item.source.absolute())
        opts["out"] = str(item.out.absolute())
        for name in ("mask", "kernel", "truth"):
            v = getattr(item, name)
            opts[name] = None if v is None else str(Path(v).absolute())
        opts["save_measurement"] = None if item.save_y is None else str(item.save_y.absolute())
    return _jsonable(opts)


def _command(args) -> str:
    argv = getattr(args, "restore_argv", None)
    return "cmidps restore " + shlex.join(argv) if argv is not None else "cmidps restore (Python call)"


def _read_record(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == RECORD_KIND else None


# Options that do not change an image's restoration (where it goes, how it is batched or shown); every
# other option does, and a finished image of a folder is reused only if they all agree.


_NOT_RESULT = {"out", "batch", "overwrite", "device", "grid", "truth", "save_measurement", "image", "measurement"}


def _same_settings(previous: dict, args, item: Item) -> bool:
    return not _difference(previous, args, item)


def _difference(previous: dict | None, args, item: Item) -> str:
    if previous is None:
        return "its record is missing or unreadable"
    old = previous.get("options", {})
    new = _absolute_options(args, item)
    diff = [k for k in new if k not in _NOT_RESULT and old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])


def _print_metrics(metrics: dict) -> None:
    for name, m in metrics.items():
        shown = ", ".join(f"{k.upper()} {v:.4f}" if k != "psnr" else f"PSNR {v:.2f} dB" for k, v in m.items())
        print(f"  {name:12s} {shown}")


def _summary(args, items: list[Item]) -> None:
    """The per-image table (when truths were given) printed and written as OUT/summary.csv."""
    from .outputs import write_text

    rows = [(it.name, it.metrics) for it in items if it.metrics]
    print(f"restored {len(items)} images into {args.out}")
    if not rows:
        return
    cols = []
    for _, m in rows:
        for kind, vals in m.items():
            for metric in vals:
                if (kind, metric) not in cols:
                    cols.append((kind, metric))
    header = ["image"] + [f"{metric}_{kind}" for kind, metric in cols]
    lines = [",".join(header)]
    table = []
    for name, m in rows:
        vals = [m.get(kind, {}).get(metric) for kind, metric in cols]
        table.append(vals)
        lines.append(",".join([name] + ["" if v is None else f"{v:.6g}" for v in vals]))
    means = []
    for j in range(len(cols)):
        vs = [r[j] for r in table if r[j] is not None and math.isfinite(r[j])]
        means.append(sum(vs) / len(vs) if vs else None)
    lines.append(",".join(["mean"] + ["" if v is None else f"{v:.6g}" for v in means]))
    write_text(Path(args.out).expanduser() / "summary.csv", "\n".join(lines) + "\n")
    width = max(12, max(len(n) for n, _ in rows))
    print(f"{'image':{width}s} " + " ".join(f"{h:>18s}" for h in header[1:]))
    for (name, _), vals in zip(rows + [("mean", None)], table + [means]):
        print(f"{name:{width}s} " + " ".join(f"{'' if v is None else f'{v:.4f}':>18s}" for v in vals))
    print(f"wrote {Path(args.out) / 'summary.csv'}")
