"""``cmidps restore``'s inputs: the file conventions (masks, kernels, measurement sizes, side files of a
folder), the run's plan (one image or a folder: which files, where each result goes), and every check
made before the model loads. The command itself is :mod:`cmidps.commands.restore`; run records and
``--config`` are :mod:`cmidps.commands.restore_record`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .options import check_sampling_options

if TYPE_CHECKING:
    import torch

RECORD_KIND = "cmidps restore record"


NONLINEAR = ("phase_retrieval", "hdr")


class RestoreError(ValueError):
    """A restore request that cannot run as asked (one ``error:`` line, exit 2)."""


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
