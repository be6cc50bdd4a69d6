"""Image files in and out, and picture grids (PIL only; no torchvision). Sets of image files (the
ground truth of a benchmark) are in :mod:`cmidps.image_sets`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

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


def open_image(path) -> Image.Image:
    """Open and fully decode an image file (a truncated or corrupt file is an :class:`ImageError` here,
    not later), turned as its EXIF orientation says; a multi-frame file or one with transparent pixels
    is refused (which frame, and what lies behind, is not known). Images of more than 8 bits per sample
    are returned as mode ``"F"`` with values in [0, 1]: 16-bit integers (PNG, TIFF) divided by 65535,
    float images (TIFF) kept as they are if every value lies in [0, 1]; other value ranges (32-bit
    integers, floats outside [0, 1]) are refused with an error naming the format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = Image.open(path)
        img.load()  # decodes every pixel: a truncated file fails now
    except Exception as exc:  # PIL raises many kinds
        raise ImageError(f"cannot read {path} as an image: {exc}") from None
    fmt = img.format or path.suffix.lstrip(".").upper()
    if getattr(img, "n_frames", 1) > 1:
        raise ImageError(f"{path}: a {fmt} file of {img.n_frames} frames (pages or animation); cmidps reads "
                         f"single images: save the frame you mean as its own file")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        alpha = np.asarray(img.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            raise ImageError(f"{path} has transparent pixels (alpha down to {int(alpha.min())}); what lies "
                             f"behind them is not in the file: flatten it onto a background first")
    try:
        img = ImageOps.exif_transpose(img)  # the orientation a viewer shows (phone photos)
    except Exception as exc:  # a broken EXIF block
        raise ImageError(f"cannot read {path} as an image: its EXIF orientation is unreadable ({exc})") from None
    if img.mode.startswith("I;16") or (img.mode == "I" and fmt == "PNG"):  # PNG holds at most 16 bits
        arr = np.asarray(img, dtype=np.float64) / 65535.0
        return Image.fromarray(arr.astype(np.float32), "F")
    if img.mode == "I":
        raise ImageError(f"{path}: 32-bit integer {fmt} images are not supported (no known value range); "
                         f"save it as an 8- or 16-bit PNG")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageError(f"{path}: a floating-point {fmt} image with non-finite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f"{path}: a floating-point {fmt} image must hold values in [0, 1] (this one spans "
                             f"{lo:.4g} .. {hi:.4g}); rescale it, or save it as an 8- or 16-bit PNG")
        return img
    return img


def check_image_file(path) -> tuple[tuple[int, int], str]:
    """Decode ``path`` fully and check its value range (:func:`open_image`); returns ``(size, mode)`` as
    :func:`open_image` returns the image (``"F"`` for more than 8 bits). For up-front checks: a bad file
    fails before any work."""
    img = open_image(path)
    return img.size, img.mode


def load_image(path, shape: tuple[int, int, int] | None = None, resize: bool = False,
               convert: bool = False) -> torch.Tensor:
    """Read an image as a (C, H, W) float tensor in [0, 1].

    With ``shape = (C, H, W)`` the channels must match (grayscale or RGB) unless ``convert``, and
    the size must match unless ``resize`` (bicubic, centre crop to the aspect). 16-bit and float
    images are scaled by their range (:func:`open_image`), not clipped to 8 bits.
    """
    path = Path(path)
    img = open_image(path)
    wide = img.mode == "F"  # a 16-bit or float greyscale image, already in [0, 1]
    if shape is not None:
        c, h, w = shape
        if c not in (1, 3):
            raise ImageError(f"models with {c} channels are not supported for image files")
        check_channels(path, img.mode, c, convert)
        if not wide:
            img = _convert(img, "L" if c == 1 else "RGB", path)
        if img.size != (w, h):
            if not resize:
                raise ImageError(f"{path} is {img.size[0]}x{img.size[1]}, the model needs {w}x{h}; "
                                 f"pass --resize to resize it (centre crop + bicubic)")
            img = _resize_crop(img, w, h)
    else:
        c = 1
        img = _convert(img, "RGB", path) if img.mode not in ("L", "RGB", "F") else img
    if wide:
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)  # bicubic may overshoot a little
        arr = np.repeat(arr[None], 3, 0) if c == 3 else arr
    else:
        arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    elif not wide:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _convert(img: Image.Image, mode: str, path) -> Image.Image:
    try:
        return img.convert(mode)
    except (ValueError, OSError) as exc:  # e.g. LAB or HSV TIFFs: PIL has no conversion
        raise ImageError(f"{path}: cannot convert its {img.mode} pixels to {mode} ({exc}); save it as RGB or "
                         f"greyscale") from None


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
    """Save a (C, H, W) image in [0, 1]; the folder is created, the file written atomically in the
    format PIL writes for the extension (:func:`cmidps.outputs.save_pil`)."""
    from ..outputs import save_pil

    save_pil(to_pil(x), path)


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
