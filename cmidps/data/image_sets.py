"""Sets of image files: the ground truth of a benchmark, with ids, labels and content fingerprints.

:func:`load_image_set` reads ``--data``: a folder of images (sorted by file name; id = file stem) or
``heldout`` (the 20 held-out MNIST digits shipped with cmidps). Images load lazily with
:func:`cmidps.images.load_image`; a size or format problem is an :class:`~cmidps.images.ImageError`
naming the file, found up front (every file is decoded once before any work).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .images import IMAGE_SUFFIXES, ImageError, check_channels, check_image_file, load_image

__all__ = ["ImageSet", "load_image_set"]


class ImageSet:
    """The ground-truth images of a benchmark: ids (file stems), loaded lazily, optional labels."""

    def __init__(self, ids, shape, paths=None, tensors=None, labels=None, resize=False, source="", convert=False):
        self.ids = list(ids)
        self.shape = tuple(shape)
        self.paths = paths
        self.tensors = tensors
        self.labels = labels
        self.resize = resize
        self.convert = convert
        self.source = source

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, indices) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] for the images at ``indices``."""
        if self.tensors is not None:
            return self.tensors[list(indices)].clone()
        return torch.stack([load_image(self.paths[i], self.shape, resize=self.resize, convert=self.convert)
                            for i in indices])

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


def load_image_set(data, shape, resize: bool = False, limit: int | None = None, convert: bool = False) -> ImageSet:
    """The images of ``--data``: a folder of images (sorted by file name; id = file stem), or
    ``heldout`` (the 20 held-out MNIST digits shipped with cmidps, with labels; 1x32x32 models only).

    Sizes and channels are checked up front (every file decoded once): a mismatched size is an
    :class:`ImageError` naming the file unless ``resize``, mismatched channels unless ``convert``
    (``--to-gray`` / ``--to-rgb``).
    """
    shape = tuple(shape)
    if len(shape) != 3:
        raise ImageError(f"the model makes samples of shape {shape}, not images (C, H, W)")
    if str(data) == "heldout":
        from .mnist import HELDOUT_DIR, load_heldout

        if shape != (1, 32, 32):
            raise ImageError(f"--data heldout is the bundled MNIST held-out set (1x32x32 digits), but the model "
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
        raise ImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    seen: dict = {}
    for p in files:
        if p.stem in seen:
            raise ImageError(f"two images with the id {p.stem!r}: {seen[p.stem].name} and {p.name} (ids are file stems)")
        seen[p.stem] = p
    if limit is not None:
        files = files[:limit]
    c, h, w = shape
    for p in files:
        size, mode = check_image_file(p)  # decoded in full: a truncated file fails here, before any work
        check_channels(p, mode, c, convert)
        if size != (w, h) and not resize:
            raise ImageError(f"{p} is {size[0]}x{size[1]}, the model needs {w}x{h}; "
                             f"pass --resize to resize it (centre crop + bicubic)")
    labels = _folder_labels(folder)
    lab = None
    if labels is not None and all(p.stem in labels for p in files):
        lab = torch.tensor([labels[p.stem] for p in files], dtype=torch.int64)
    return ImageSet([p.stem for p in files], shape, paths=files, labels=lab, resize=resize,
                    source=str(folder.resolve()), convert=convert)
