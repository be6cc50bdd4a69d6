"""``cmidps restore``: restore a measurement you have (``--measurement``), or measure a clean image and
restore that (``--image``); one file or a whole folder; a run record beside every output.

File conventions (docs/restore_your_own.md): images in [0, 1] (8-bit PNG/JPEG); a mask is white (255)
where a pixel was observed and black (0) where it is missing; a kernel is convolved (``--kernel-as-dps``
for one the DPS code correlates with); the ``sr4`` measurement is a quarter of the model's size on each
side; ``--sigma-y`` is the noise standard deviation in the model's [-1, 1] range (twice its value in
[0, 1] image units), or ``auto``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .options import (add_cmi_arguments, add_convert_arguments, add_device_argument, add_kernel_arguments,
                      add_measurement_arguments, check_sampling_options, cmi_config, convert_option,
                      positive_int, resolve_device, step_params)

RECORD_KIND = "cmidps restore record"
NONLINEAR = ("phase_retrieval", "hdr")
SIGMA_UNIT = "standard deviation in the model's [-1, 1] range (= 2 x the std in [0, 1] image units)"
_PARSER: argparse.ArgumentParser | None = None  # the restore subparser, for --config


class RestoreError(ValueError):
    """A restore request that cannot run as asked (one ``error:`` line, exit 2)."""


# ------------------------------------------------------------------------------------------- options
def sigma_y_value(text):
    """``--sigma-y``: ``auto``, or a finite number >= 0 in the model's [-1, 1] range (the shared
    ``nonneg_float`` of :mod:`cmidps.commands.options`)."""
    from .options import nonneg_float

    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        return nonneg_float(str(text))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'auto')") from None


def register(sub) -> None:
    """Add ``restore`` to the ``cmidps`` subparsers (``func=run``)."""
    global _PARSER
    base = sub._parser_class

    class _RecordingParser(base):
        """The restore parser, keeping the arguments it parsed (``args.restore_argv``): the run record's
        command line, and the base that ``--config`` re-parses over."""

        def parse_known_args(self, args=None, namespace=None):
            ns, extras = super().parse_known_args(args, namespace)
            ns.restore_argv = list(sys.argv[2:] if args is None else args)
            return ns, extras

    sub._parser_class = _RecordingParser
    try:
        p = _add_parser(sub)
    finally:
        sub._parser_class = base
    _PARSER = p


def _add_parser(sub):
    from ..operators import TASKS

    p = sub.add_parser(
        "restore", help="restore a measurement (or measure a clean image and restore it); one file or a folder",
        description="Restore Y (--measurement: a blurred, masked or low-resolution image you have) with TASK's "
                    "operator, or measure a clean IMAGE (--image, seeded) and restore that. Either may be a "
                    "folder (every image in it; resumable). A run record NAME.json is written beside each "
                    "output; --config NAME.json reruns it. Conventions: docs/restore_your_own.md.")
    src = p.add_argument_group("input (one of --measurement, --image, or --config)")
    src.add_argument("--measurement", default=None, metavar="Y.png|DIR",
                     help="the measurement y as an image in [0, 1]: inpainting: the image with holes (their values "
                          "are ignored), deblurring: the blurred image, sr4: the low-resolution image (a quarter "
                          "of the model's size on each side)")
    src.add_argument("--image", default=None, metavar="X.png|DIR",
                     help="a clean image to measure with --task (seeded) and restore (the benchmark case)")
    src.add_argument("--config", default=None, metavar="NAME.json|NAME.yaml",
                     help="rerun a run record (or a file of the same keys); options given here override it")
    p.add_argument("--task", default=None, choices=TASKS + NONLINEAR, help="the measurement's operator")
    p.add_argument("--mask", default=None, metavar="M.png|DIR",
                   help="inpainting: white (255) = observed, black (0) = missing, nothing else; the model's size. "
                        "A folder: one mask per image, by file name")
    p.add_argument("--truth", default=None, metavar="X.png|DIR",
                   help="the clean image(s): print PSNR/SSIM (LPIPS where its weights are present) of the "
                        "restoration and of A^+ y, and write them into the run record (--image is its own truth)")
    p.add_argument("--save-measurement", default=None, metavar="Y.png|DIR",
                   help="with --image: also write the simulated y (and Y_mask.png / Y_kernel.npy) so that "
                        "--measurement replays the run")
    p.add_argument("--method", default="dps", help="dps, pigdm, mcg, dsg, ddnm, ddnm_plus, ddnm_svd, ddrm, "
                                                   "diffpir, tmpd, daps, reddiff; cmi+X turns CMI on for any "
                                                   "of them but daps and reddiff (docs/solvers.md)")
    p.add_argument("--model", default="bundled:mnist32",
                   help="bundled:mnist32, an ADM .pt checkpoint (ffhq_10m.pt, 256x256_diffusion_uncond.pt), "
                        "or a diffusers UNet2DModel folder")
    p.add_argument("--model-config", default=None, metavar="ffhq|imagenet|FILE.json",
                   help="architecture of a .pt checkpoint or bare .safetensors file: a named ADM "
                        "configuration or a JSON of create_model kwargs (default: guessed from its keys)")
    p.add_argument("--steps", type=int, default=None,
                   help="respaced reverse steps (default: the preset's, 1000 for paper/dps, 100 for small)")
    p.add_argument("--seed", type=int, default=0)
    add_measurement_arguments(p)
    for action in p._actions:  # restore's --sigma-y also takes 'auto'; default: the preset's
        if action.dest == "sigma_y":
            action.type, action.default, action.metavar = sigma_y_value, None, "S|auto"
            action.help = (f"measurement noise: {SIGMA_UNIT}; default the preset's (0.05); 'auto': estimated "
                           "from each measurement (scikit-image's estimate_sigma), printed")
    add_kernel_arguments(p)
    for action in p._actions:
        if action.dest == "kernel":
            action.metavar = "K.npy|K.png|DIR"
            action.help = ("blur kernel (2-D, odd sides, >= 0; normalised to sum 1), convolved; deblur_gauss "
                           "without one uses the preset's Gaussian, deblur_motion needs one. A folder: one per "
                           "image, by file name")
    p.add_argument("--resize", action="store_true", help="resize an --image of the wrong size (never a measurement)")
    add_convert_arguments(p)
    add_device_argument(p)
    p.add_argument("--batch", type=positive_int, default=4, help="images per batch in a folder (default 4)")
    p.add_argument("--out", default=None, metavar="OUT.png|DIR",
                   help="the restoration (a folder when the input is a folder); OUT.json beside it is the run record")
    p.add_argument("--grid", default=None, help="one image only: also write truth | measurement | A^+ y | restoration")
    p.add_argument("--overwrite", action="store_true",
                   help="in a folder: redo images finished by a run with other settings (else an error)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cmi_arguments(p)
    p.set_defaults(func=run, interrupted="interrupted: restore writes each image and its record only when "
                                         "done, so nothing partial was written (a rerun of a folder resumes)")
    return p


# Option names that are not settings of a run (left out of the record's "options").
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


# --------------------------------------------------------------------------------------------- files
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


def list_images(folder: Path) -> list[Path]:
    from ..data.images import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith(".") and not p.stem.endswith(SIDE_SUFFIXES))


SIDE_SUFFIXES = ("_mask", "_kernel")  # NAME_mask.png, NAME_kernel.npy: side files, never measurements


def match_file(folder: Path, stem: str, suffixes, what: str) -> Path:
    """The file of ``stem`` in ``folder``: ``STEM_mask.*`` / ``STEM_kernel.*`` (as --save-measurement
    writes them) first, then ``STEM.*``; any of ``suffixes``. Else a ``RestoreError`` naming ``what``."""
    side = "_kernel" if what == "--kernel" else "_mask" if what == "--mask" else None
    names = ([stem + side] if side else []) + [stem]
    for name in names:
        for suffix in suffixes:
            for cand in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
                if cand.is_file():
                    return cand
    raise RestoreError(f"{what} folder {str(folder)!r} has no file for {stem!r} (looked for "
                       f"{', '.join(n + s for n in names for s in suffixes)})")


def read_mask(path, shape) -> "torch.Tensor":
    """A mask file -> ``(H, W)`` float64 of 0 (missing) / 1 (observed). White = observed, black =
    missing; any other value, or another size than the model's, is an error that says so."""
    import numpy as np
    import torch
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "1":
                arr = np.asarray(im, dtype=np.float64)
                top = 1.0
            elif mode in ("L", "LA", "RGB", "RGBA", "P", "I;16", "I"):
                if mode in ("LA", "RGBA") and np.asarray(im.getchannel("A")).min() < 255:
                    raise RestoreError(f"mask {path}: it has transparent pixels; save it opaque, white = observed, "
                                       "black = missing")
                if mode in ("RGB", "RGBA", "P"):
                    rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
                    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                        raise RestoreError(f"mask {path}: its colour channels differ; a mask is black and white")
                    arr, top = rgb[..., 0], 255.0
                elif mode in ("I;16", "I"):
                    arr = np.asarray(im, dtype=np.float64)
                    top = 65535.0 if mode == "I;16" or arr.max() > 255 else 255.0
                else:
                    arr, top = np.asarray(im.convert("L"), dtype=np.float64), 255.0
            else:
                raise RestoreError(f"mask {path}: unsupported image mode {mode!r}; save it as a greyscale PNG")
    except RestoreError:
        raise
    except Exception as exc:  # PIL's own errors for a broken file
        raise RestoreError(f"cannot read mask {path}: {exc}") from None
    h, w = shape[-2:]
    if arr.shape != (h, w):
        raise RestoreError(f"mask {path} is {arr.shape[1]}x{arr.shape[0]}; it must be the model's size, {w}x{h}")
    bad = (arr != 0) & (arr != top)
    if bad.any():
        values = np.unique(arr[bad])[:4]
        raise RestoreError(f"mask {path}: {int(bad.sum())} pixels are neither black (0 = missing) nor white "
                           f"({int(top)} = observed), e.g. {', '.join(f'{v:g}' for v in values)}; a mask holds "
                           "only those two values (save it as PNG, not JPEG)")
    return torch.from_numpy((arr == top).astype(np.float64))


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:
        raise RestoreError(f"cannot read {path} as an image: {exc}") from None


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class Item:
    """One image of a run: its files and where its results go."""

    name: str
    key: object  # the item name of the random streams (0 for one image; the file name in a folder)
    source: Path
    out: Path
    record: Path
    mask: Path | None = None
    kernel: Path | None = None
    truth: Path | None = None
    save_y: Path | None = None
    metrics: dict = field(default_factory=dict)


def record_path(out: Path) -> Path:
    return out.with_suffix(".json")


def _side_files(save_y: Path | None, task: str):
    """Where ``--save-measurement Y.png`` puts the mask / kernel it used: ``Y_mask.png`` / ``Y_kernel.npy``."""
    if save_y is None:
        return None, None
    mask = save_y.with_name(save_y.stem + "_mask.png") if task.startswith("inpaint") else None
    kernel = save_y.with_name(save_y.stem + "_kernel.npy") if task.startswith("deblur") else None
    return mask, kernel


def plan(args) -> tuple[list[Item], bool]:
    """The images of the run and their output paths; whether the input is a folder."""
    simulated = args.image is not None
    source = Path(args.image if simulated else args.measurement).expanduser()
    if not source.exists():
        opt = "--image" if simulated else "--measurement"
        raise FileNotFoundError(f"{opt[2:]} not found: {str(source)!r} ({opt}: no such file or folder)")
    folder = source.is_dir()
    out = Path(args.out).expanduser()
    if not folder:
        o = out
        if out.is_dir() or str(args.out).endswith(("/", os.sep)):
            raise RestoreError(f"--out {args.out!r} is a folder; for one image give a file name, e.g. "
                               f"{str(out / (source.stem + '.png'))!r}")
        item = Item(source.stem, 0, source, o, record_path(o))
        for opt in ("mask", "kernel", "truth"):
            v = getattr(args, opt)
            if v is not None:
                p = Path(v).expanduser()
                if p.is_dir():
                    p = match_file(p, source.stem, (".npy", ".png") if opt == "kernel" else
                                   (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp"), f"--{opt}")
                setattr(item, opt, p)
        if args.save_measurement:
            item.save_y = Path(args.save_measurement).expanduser()
        return [item], False
    files = list_images(source)
    if not files:
        raise RestoreError(f"{str(source)!r} holds no images (.png, .jpg, ...)")
    if out.exists() and not out.is_dir():
        raise RestoreError(f"--out {args.out!r} is a file; with a folder of inputs give an output folder")
    items = []
    for f in files:
        it = Item(f.stem, f.name, f, out / (f.stem + ".png"), out / (f.stem + ".json"))
        for opt in ("mask", "kernel", "truth"):
            v = getattr(args, opt)
            if v is None:
                continue
            p = Path(v).expanduser()
            if p.is_dir():
                p = match_file(p, f.stem, (".npy", ".png") if opt == "kernel" else
                               (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp"), f"--{opt}")
            elif opt == "truth":
                raise RestoreError("--truth must be a folder (truths by file name) when the input is a folder")
            setattr(it, opt, p)
        if args.save_measurement:
            it.save_y = Path(args.save_measurement).expanduser() / (f.stem + ".png")
        items.append(it)
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise RestoreError(f"two input files share a name before the extension ({', '.join(dup)}): their "
                           "outputs would collide")
    return items, True


def check_outputs(args, items: list[Item], folder: bool) -> None:
    """Every output path checked before the model loads: writable, an image extension, not an input,
    not another output (cmidps.commands.outputs)."""
    from .outputs import check_distinct, check_output_file, check_output_folder

    inputs = {"--measurement": args.measurement, "--image": args.image, "--mask": args.mask,
              "--kernel": args.kernel, "--truth": args.truth, "--config": args.config}
    files_in = {k: v for k, v in inputs.items() if v is not None and Path(v).expanduser().is_file()}
    folders_in = {k: v for k, v in inputs.items() if v is not None and Path(v).expanduser().is_dir()}
    if folder:
        if args.grid:
            raise RestoreError("--grid shows one image; leave it out for a folder (each output has its record)")
        check_output_folder(args.out, "--out")
        outs = {"--out": args.out}
        if args.save_measurement:
            check_output_folder(args.save_measurement, "--save-measurement")
            outs["--save-measurement"] = args.save_measurement
        check_distinct({}, files_in, folders=outs, input_folders=folders_in)
        if args.save_measurement:
            check_distinct({}, {}, folders={"--save-measurement": args.save_measurement},
                           input_folders={"--out": args.out})
            check_distinct({}, {}, folders={"--out": args.out},
                           input_folders={"--save-measurement": args.save_measurement})
        return
    it = items[0]
    check_output_file(args.out, "--out", image=True)
    check_output_file(args.grid, "--grid", image=True, modes=("RGB",))
    outs = {"--out": it.out, "--out's record": it.record, "--grid": args.grid}
    if it.save_y is not None:
        check_output_file(it.save_y, "--save-measurement", image=True)
        m, k = _side_files(it.save_y, args.task)
        outs.update({"--save-measurement": it.save_y, "--save-measurement's mask": m,
                     "--save-measurement's kernel": k})
    check_distinct(outs, dict(files_in, **{"--mask file": it.mask, "--kernel file": it.kernel,
                                            "--truth file": it.truth}), input_folders=folders_in)
    if it.record.exists():
        try:
            kind = json.loads(it.record.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != RECORD_KIND:
            raise RestoreError(f"{str(it.record)!r} exists and is not a cmidps run record; the run record of "
                               f"--out {args.out!r} would replace it: choose another --out name")


def check_request(args) -> None:
    """The request's own consistency, before anything is read."""
    if args.task is None:
        raise RestoreError("--task is required (inpaint_random, inpaint_box, deblur_gauss, deblur_motion, sr4)")
    if args.task in NONLINEAR:
        raise RestoreError(f"{args.task} is not restored from files: its measurement (|F x| for phase retrieval, "
                           "clipped values for hdr) has no image-file convention here; use the Python API "
                           "(cmidps.operators.nonlinear, docs/solvers.md)")
    if (args.image is None) == (args.measurement is None):
        raise RestoreError("give exactly one of --measurement Y (a measurement you have) and --image X "
                           "(a clean image to measure)")
    if args.out is None:
        raise RestoreError("--out is required (a file, or a folder when the input is a folder)")
    if args.mask is not None and not args.task.startswith("inpaint"):
        raise RestoreError(f"--mask applies to the inpainting tasks, not to {args.task}")
    if args.kernel is not None and not args.task.startswith("deblur"):
        raise RestoreError(f"--kernel applies to the blur tasks (deblur_gauss, deblur_motion), not to {args.task}")
    if args.kernel is None and getattr(args, "kernel_as_dps", False):
        raise RestoreError("--kernel-as-dps needs --kernel FILE")
    if args.measurement is not None:
        if args.task.startswith("inpaint") and args.mask is None:
            raise RestoreError(f"--measurement with {args.task} needs --mask M.png (white = observed, black = missing)")
        if args.task == "deblur_motion" and args.kernel is None:
            raise RestoreError("--measurement with deblur_motion needs --kernel K.npy|K.png: a motion kernel "
                               "belongs to its image and cannot be guessed")
        if args.save_measurement:
            raise RestoreError("--save-measurement saves a simulated measurement; it goes with --image")
        if args.resize:
            raise RestoreError("--resize applies to --image; a measurement must have its own size")
    if args.sigma_y == "auto" and args.image is not None:
        raise RestoreError("--sigma-y auto estimates the noise of a measurement you have; with --image give "
                           "the number to simulate (or leave it out: the preset's)")
    if args.sigma_y != "auto" and args.sigma_y is not None and not (math.isfinite(args.sigma_y) and args.sigma_y >= 0):
        raise RestoreError(f"--sigma-y must be a finite number >= 0 (the noise std in the [-1, 1] range) or "
                           f"'auto', got {args.sigma_y}")
    if args.batch < 1:
        raise RestoreError(f"--batch must be >= 1, got {args.batch}")
    check = argparse.Namespace(**vars(args))
    check.sigma_y = None
    check_sampling_options(check)


# --------------------------------------------------------------------------------------------- metrics
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


# ----------------------------------------------------------------------------------------------- run
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


def run(args) -> int:
    """Restore ``--measurement`` (or measure and restore ``--image``), one file or a folder; write
    ``--out``, a run record beside each output, and the summary of a folder."""
    if getattr(args, "config", None):
        args = apply_config(args)
    check_request(args)
    items, folder = plan(args)
    check_outputs(args, items, folder)
    todo, done = [], []
    for it in items:
        if folder and it.out.is_file() and it.record.is_file():
            previous = _read_record(it.record)
            same = previous is not None and _same_settings(previous, args, it)
            if same:
                done.append(it)
                it.metrics = previous.get("metrics") or {}
                continue
            if not args.overwrite:
                raise RestoreError(f"{str(it.out)!r} was written by a run with other settings "
                                   f"({_difference(previous, args, it)}); pass --overwrite to redo it, or "
                                   "choose another --out folder")
        todo.append(it)
    device = resolve_device(args.device)
    from ..restore import parse_method

    base, use_cmi = parse_method(args.method)
    method = f"cmi+{base}" if (use_cmi or args.cmi) else base

    from ..models.loading import load_prior

    prior = load_prior(args.model, device=device, model_config=args.model_config)
    if len(prior.shape) != 3:
        raise RestoreError(f"model {args.model!r} is not an image model")
    shape = tuple(prior.shape)
    _check_items(args, items, shape)  # every file read and checked before the first network call

    from ..presets import get_preset

    preset = get_preset(args.preset, shape)
    steps = args.steps if args.steps is not None else preset.steps
    if args.steps is not None and preset.steps_notice(args.steps):
        print(preset.steps_notice(args.steps), file=sys.stderr)
    model_path, model_sha = model_files(args.model)
    ctx = dict(args=args, prior=prior, shape=shape, preset=preset, steps=steps, method=method, base=base,
               use_cmi=(use_cmi or bool(args.cmi)), device=device, model=(model_path, model_sha),
               scorer=None, folder=folder)
    if any(it.truth is not None for it in items) or args.image is not None:
        ctx["scorer"] = Scorer(device)

    if folder:
        from .outputs import write_json

        Path(args.out).expanduser().mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out).expanduser() / "run.json",
                   {"kind": RECORD_KIND + " (folder)", "command": _command(args),
                    "options": _absolute_options(args, None), "images": [it.source.name for it in items]})
        if done:
            print(f"{len(done)} of {len(items)} images already restored in {args.out} (skipped)", file=sys.stderr)
    batches = _batches(args, todo)
    bar = None
    if folder and not args.quiet and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"restore {method}", unit="image", file=sys.stderr)
    try:
        for batch in batches:
            _restore_batch(ctx, batch)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if ctx["scorer"] is not None and ctx["scorer"].lpips_note and args.truth is not None and not args.quiet:
        print(ctx["scorer"].lpips_note, file=sys.stderr)  # asked for scores: say why one is missing
    if folder:
        _summary(args, items)
    return 0


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


def _check_items(args, items: list[Item], shape) -> None:
    """Read every input's header (sizes, channels) and every mask and kernel before any sampling."""
    from ..operators.motion import load_kernel

    c, h, w = shape
    factor = 4 if args.task == "sr4" else 1
    for it in items:
        size = _image_size(it.source)
        if args.measurement is not None and size != (w // factor, h // factor):
            what = (f"for sr4 the measurement is a quarter of the model's {w}x{h} on each side, "
                    f"{w // 4}x{h // 4}") if factor == 4 else f"the measurement of {args.task} has the model's size, {w}x{h}"
            raise RestoreError(f"{it.source} is {size[0]}x{size[1]}; {what}")
        if it.truth is not None:
            tsize = _image_size(it.truth)
            if tsize != (w, h):
                raise RestoreError(f"--truth {it.truth} is {tsize[0]}x{tsize[1]}; the model makes {w}x{h}")
        if it.mask is not None:
            read_mask(it.mask, shape)
        if it.kernel is not None:
            try:
                load_kernel(it.kernel, flip=args.kernel_as_dps)
            except ValueError as exc:
                raise RestoreError(f"--kernel: {exc}") from None


def _batches(args, items: list[Item]) -> list[list[Item]]:
    """Consecutive groups of at most ``--batch`` images that share one operator family (the same kernel
    file; masks may differ: a per-image mask operator) and, with ``--sigma-y auto``, run alone."""
    groups: dict = {}
    for it in items:
        key = (str(it.kernel), it.source.name if args.sigma_y == "auto" else None)
        groups.setdefault(key, []).append(it)
    out = []
    for group in groups.values():
        for i in range(0, len(group), args.batch):
            out.append(group[i:i + args.batch])
    return out


def _restore_batch(ctx: dict, batch: list[Item]) -> None:
    import numpy as np
    import torch

    from ..data.images import load_image, to_pil
    from ..operators import make_operator, preset_params
    from ..operators.motion import load_kernel
    from ..prior import from_model
    from ..restore import (PresetStepsWarning, bicubic_upsample, estimate_sigma_y, measure, measurement_from_image,
                           measurement_image, restore, simple_inverse)
    from .outputs import save_pil, write_json

    args, prior, shape, preset = ctx["args"], ctx["prior"], ctx["shape"], ctx["preset"]
    device, task = ctx["device"], args.task
    t0 = time.perf_counter()
    convert = convert_option(args, shape[0])
    keys = [it.key for it in batch]
    kernel = None
    if batch[0].kernel is not None:
        kernel = load_kernel(batch[0].kernel, flip=args.kernel_as_dps)
    masks = [read_mask(it.mask, shape) for it in batch] if batch[0].mask is not None else None
    mask = None
    if masks is not None:
        mask = masks[0] if len(masks) == 1 or all(torch.equal(m, masks[0]) for m in masks) else torch.stack(masks)
    sigma_source = "given" if args.sigma_y is not None else "preset"
    truth = None
    if args.image is not None:  # the benchmark case: measure the clean image, seeded
        x = torch.stack([load_image(it.source, shape, resize=args.resize, convert=convert) for it in batch]).to(device)
        sigma_y = preset.sigma_y if args.sigma_y is None else float(args.sigma_y)
        op, y = measure(x, task, seed=args.seed, sigma_y=sigma_y, preset=preset.name, items=keys, kernel=kernel,
                        mask=mask)
        truth = x
    else:
        extra = {}
        if kernel is not None:
            extra["kernel"] = kernel
        op = make_operator(task, shape, preset=preset.name, mask=mask, **extra).to(device)
        y01 = torch.stack([load_image(it.source, tuple(op.y_shape), convert=convert) for it in batch]).to(device)
        y = measurement_from_image(y01, op)
        if args.sigma_y == "auto":
            sigma_y = estimate_sigma_y(y01[0], None if masks is None else masks[0])
            sigma_source = "auto (skimage.restoration.estimate_sigma, x2 for the [-1, 1] range)"
            print(f"{batch[0].source.name}: estimated sigma_y = {sigma_y:.4g} in the model's [-1, 1] range "
                  f"({sigma_y / 2:.4g} in [0, 1] units, {sigma_y / 2 * 255:.3g} of 255 grey levels)", file=sys.stderr)
        else:
            sigma_y = preset.sigma_y if args.sigma_y is None else float(args.sigma_y)
    if any(it.truth is not None for it in batch):
        truth = torch.stack([load_image(it.truth, shape, convert=convert) for it in batch]).to(device)
    from . import options

    # the step sizes given on the command line: per method (--step METHOD=VALUE) where offered
    params = options.method_params(args, ctx["method"]) if hasattr(options, "method_params") else step_params(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PresetStepsWarning)
        out = restore(prior, op, y, ctx["method"], steps=ctx["steps"], seed=args.seed, sigma_y=sigma_y,
                      cmi=cmi_config(args), params=params, task=task, items=keys,
                      progress=not (args.quiet or ctx["folder"]))
    seconds = (time.perf_counter() - t0) / len(batch)
    pinv = simple_inverse(op, y)
    bicubic = bicubic_upsample(op, y) if task == "sr4" else None
    # settings resolved once for the records
    if mask is not None:
        op_settings = {"mask": "from file"}
    elif kernel is not None:
        op_settings = {k: v for k, v in preset_params(task, shape, preset.name).items()
                       if k not in ("kernel", "kernel_size", "std", "intensity")}
        op_settings.update(kernel="from file", kernel_shape=list(kernel.shape), kernel_as_dps=bool(args.kernel_as_dps))
    else:
        op_settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preset_params(task, shape, preset.name).items()}
    step_sizes = preset.params(ctx["base"], task)
    step_sizes.update(params)
    cmi = asdict(cmi_config(args)) if ctx["use_cmi"] else None
    for b, it in enumerate(batch):
        metrics = {}
        if truth is not None and ctx["scorer"] is not None:
            metrics["restoration"] = ctx["scorer"](out[b:b + 1], truth[b:b + 1])
            metrics["A_pinv_y"] = ctx["scorer"](pinv[b:b + 1], truth[b:b + 1])
            if bicubic is not None:
                metrics["bicubic"] = ctx["scorer"](bicubic[b:b + 1], truth[b:b + 1])
        it.metrics = metrics
        if it.save_y is not None:  # the simulated y (and its mask / kernel), replayable with --measurement
            save_pil(to_pil(from_model(y[b])), it.save_y)
            mpath, kpath = _side_files(it.save_y, task)
            if mpath is not None and isinstance(op, torch.nn.Module) and hasattr(op, "mask"):
                m = op.mask[b if op.per_sample else 0, 0] if op.mask.ndim == 4 else op.mask[0]
                from PIL import Image

                save_pil(Image.fromarray((m.cpu().numpy() * 255).astype(np.uint8), "L"), mpath)
            if kpath is not None:
                from .outputs import atomic_path

                k = getattr(op, "kernel", None)
                with atomic_path(kpath) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, k.detach().cpu().numpy().astype(np.float64))
        save_pil(to_pil(out[b]), it.out)
        files = {"source": str(it.source.absolute()), "source_sha256": _sha256(it.source),
                 "mask": None if it.mask is None else str(Path(it.mask).absolute()),
                 "kernel": None if it.kernel is None else str(Path(it.kernel).absolute()),
                 "kernel_sha256": None if it.kernel is None else _sha256(Path(it.kernel)),
                 "truth": None if it.truth is None else str(Path(it.truth).absolute())}
        record = {
            "kind": RECORD_KIND, "record_version": 1,
            "command": _command(args),
            "options": _absolute_options(args, it if ctx["folder"] else None),
            "resolved": {
                "case": "simulated (--image measured, seeded)" if args.image is not None else "measurement",
                "task": task, "preset": preset.name, "operator": _jsonable(op_settings),
                "noise_on": preset.noise_on, "method": ctx["method"], "cmi": cmi,
                "step_sizes": step_sizes, "steps": ctx["steps"], "seed": args.seed, "item": it.key,
                "sigma_y": sigma_y, "sigma_y_unit": SIGMA_UNIT, "sigma_y_source": sigma_source,
                "likelihood_clip": preset.likelihood_clip, "ddim_eta": None, "image_shape": list(shape),
                "measurement_shape": list(op.y_shape)},
            "files": files,
            "model": {"spec": args.model, "path": ctx["model"][0], "sha256": ctx["model"][1],
                      "model_config": args.model_config},
            "versions": _versions(), "device": str(device), "seconds": round(seconds, 3),
            "metrics": metrics,
            "metrics_skipped": (ctx["scorer"].lpips_note if metrics and ctx["scorer"] is not None else None),
        }
        write_json(it.record, _jsonable(record))
        if not ctx["folder"]:
            print(f"wrote {it.out} (run record {it.record})")
            if metrics:
                _print_metrics(metrics)
    if args.grid and not ctx["folder"]:
        from ..data.images import image_grid

        cols = ([truth[0]] if truth is not None else []) + [measurement_image(op, y, shape)[0], pinv[0], out[0]]
        labels = (["truth"] if truth is not None else []) + ["measurement", "A^+ y", ctx["method"]]
        grid = image_grid([cols], col_labels=labels, scale=max(1, 128 // shape[-1]))
        save_pil(grid, args.grid)
        print(f"wrote {args.grid}")


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
