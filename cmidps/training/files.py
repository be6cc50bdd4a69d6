"""The files of a training run (``cmidps train --out DIR``), written and read back.

``model.safetensors`` (EMA weights, fp32: :func:`save_weights`), ``config.json`` (written atomically:
:func:`atomic_write_text`), ``loss.csv`` (:data:`CSV_FIELDS`: :func:`write_loss_csv`,
:func:`read_loss_csv`); :func:`load_trained_prior` makes a :class:`~cmidps.prior.NetworkPrior` of such
a folder. The training loop is :mod:`cmidps.train`, the figures :mod:`cmidps.train_figures`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..commands.outputs import atomic_open, atomic_path, write_text

CSV_FIELDS = ["step", "train_loss", "lr", "heldout_loss", "train_eval_loss", "elapsed_s"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file and a rename (a reader never sees half a file; a failure
    leaves the previous file): :func:`cmidps.commands.outputs.write_text`."""
    write_text(path, text)


def save_weights(net: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def write_loss_csv(rows: list[dict], path: Path) -> None:
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def csv_value(v, nd=6):
    """A loss.csv cell: floats to ``nd`` significant digits, None empty."""
    return "" if v is None else (f"{v:.{nd}g}" if isinstance(v, float) else v)


def read_loss_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_trained_prior(model_dir):
    """A :class:`~cmidps.prior.NetworkPrior` from a training output folder (``model.safetensors`` +
    ``config.json``), strict key match."""
    from safetensors.torch import load_file

    from ..models.unet import create_model
    from ..prior import NetworkPrior

    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    net = create_model(**cfg["create_model"])
    net.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    net.eval().requires_grad_(False)
    shape = (cfg.get("channels", 1), cfg["image_size"], cfg["image_size"])
    return NetworkPrior(net, shape=shape, learn_sigma=cfg.get("learn_sigma", False), name=d.name)
