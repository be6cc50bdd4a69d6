"""Image files in and out, and picture grids (PIL only; no torchvision). Sets of image files (the
ground truth of a benchmark) are in :mod:`cmidps.image_sets`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(InputError):
    """An input image (or image set) that does not fit the model."""


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def file_channels(mode: str) -> int:
    """1 for a greyscale PIL mode, 3 for the others (RGB, RGBA, palette, CMYK, ...)."""
    return 1 if mode in GRAY_MODES else 3


def check_channels(path, mode: str, c: int, convert: bool) -> None:
    """An :class:`ImageError` if a file of PIL ``mode`` does not have the model's ``c`` channels and
    ``convert`` (``--to-gray`` / ``--to-rgb``) was not asked for."""
    have = file_channels(mode)
    if have != c and not convert:
        flag, kind = ("--to-gray", "grayscale") if c == 1 else ("--to-rgb", "RGB")
        raise ImageError(f"{path} has {have} channels ({mode}), the model takes {c} ({kind}): "
                         f"pass {flag} to convert it")


def load_image(path, shape: tuple[int, int, int] | None = None, resize: bool = False,
               convert: bool = False) -> torch.Tensor:
    """Read an image as a (C, H, W) float tensor in [0, 1].

    With ``shape = (C, H, W)`` the channels must match (grayscale or RGB) unless ``convert``, and
    the size must match unless ``resize`` (bicubic, centre crop to the aspect).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # PIL raises many kinds
        raise ImageError(f"cannot read {path} as an image: {exc}") from exc
    if shape is not None:
        c, h, w = shape
        if c not in (1, 3):
            raise ImageError(f"models with {c} channels are not supported for image files")
        check_channels(path, img.mode, c, convert)
        img = img.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            if not resize:
                raise ImageError(f"{path} is {img.size[0]}x{img.size[1]}, the model needs {w}x{h}; "
                                 f"pass --resize to resize it (centre crop + bicubic)")
            img = _resize_crop(img, w, h)
    else:
        img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _resize_crop(img: Image.Image, w: int, h: int) -> Image.Image:
    sw, sh = img.size
    scale = max(w / sw, h / sh)
    img = img.resize((max(w, round(sw * scale)), max(h, round(sh * scale))), Image.BICUBIC)
    left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
    return img.crop((left, top, left + w, top + h))


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) in [0, 1] -> PIL image."""
    arr = (x.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")


def save_image(x: torch.Tensor, path) -> None:
    """Save a (C, H, W) image in [0, 1]; the folder is created, the file written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        to_pil(x).save(tmp, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # nothing left behind on a failure


def image_grid(rows: list[list[torch.Tensor]], row_labels: list[str] | None = None,
               col_labels: list[str] | None = None, scale: int = 1, pad: int = 2) -> Image.Image:
    """A labelled grid of (C, H, W) images in [0, 1] (all the same size); returns an RGB PIL image."""
    c, h, w = rows[0][0].shape
    h, w = h * scale, w * scale
    label_w = 8 + 7 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    label_h = 16 if col_labels else 0
    ncol = max(len(r) for r in rows)
    grid = Image.new("RGB", (label_w + ncol * (w + pad) + pad, label_h + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(col_labels or []):
        draw.text((label_w + pad + j * (w + pad), 2), name, fill="black")
    for i, row in enumerate(rows):
        top = label_h + pad + i * (h + pad)
        if row_labels:
            draw.text((4, top + h // 2 - 5), row_labels[i], fill="black")
        for j, img in enumerate(row):
            tile = to_pil(img).convert("RGB").resize((w, h), Image.NEAREST)
            grid.paste(tile, (label_w + pad + j * (w + pad), top))
    return grid
