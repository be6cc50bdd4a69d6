"""Shared helpers of ``cmidps.metrics``: the ``MetricUnavailable`` error, weight-file lookup and
strict state-dict loading, image checks.

Nothing here downloads anything. Weight files are looked up, in order, at an explicit path argument,
at an environment variable (a file, or a folder holding the file under its usual name), and in a few
local places where other tools leave them (torch's hub cache ``$TORCH_HOME/hub/checkpoints``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

__all__ = ["MetricUnavailable", "resolve_weights", "load_state_dict_file", "load_strict", "as_images",
           "to_rgb"]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (most often: its weight file is not on this machine).

    The message says which file is needed, how to point the library at it and where to get it.
    ``compute_metrics`` / ``dataset_metrics`` catch it and report the metric under ``"skipped"``.
    """


def _hub_checkpoint_dir() -> Path | None:
    try:
        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # pragma: no cover - torch.hub always exists, but never fail a lookup on it
        return None


def resolve_weights(path, env_var: str, file_names: Sequence[str], what: str, source: str,
                    extra_dirs: Iterable[Path] = ()) -> Path:
    """Find a weight file on this machine, or raise ``MetricUnavailable`` with instructions.

    ``path``: explicit file (or folder) given by the caller; then ``$env_var`` (file or folder);
    then, if neither was given, the folders ``extra_dirs`` and torch's hub checkpoint folder are searched
    for ``file_names``. An explicit path or env var that does not exist is an error (never a silent
    fall-back to another file).
    """
    def in_dir(d: Path) -> Path | None:
        for n in file_names:
            if (d / n).is_file():
                return d / n
        return None

    for given, origin in ((path, "argument"), (os.environ.get(env_var) or None, f"${env_var}")):
        if given is None:
            continue
        p = Path(given).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            found = in_dir(p)
            if found is not None:
                return found
            raise MetricUnavailable(
                f"{what}: folder {p} (from {origin}) holds none of {list(file_names)}. {source}")
        raise MetricUnavailable(f"{what}: weights file not found: {p} (from {origin}). {source}")

    dirs = list(extra_dirs)
    hub = _hub_checkpoint_dir()
    if hub is not None:
        dirs.append(hub)
    for d in dirs:
        found = in_dir(Path(d))
        if found is not None:
            return found
    raise MetricUnavailable(
        f"{what}: weights file not found: set {env_var}=/path/to/{file_names[0]} (or pass the path; "
        f"looked in {[str(d) for d in dirs]}). {source}")


def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``.pth``/``.pt``, tensors only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return dict(load_file(str(path)))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(sd)}")
    return dict(sd)


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                ignore_prefixes: Sequence[str] = ()) -> None:
    """``load_state_dict`` with exact key matching (keys starting with ``ignore_prefixes`` are dropped
    first, e.g. the classifier of a torchvision backbone file). BatchNorm ``num_batches_tracked``
    may be absent. Raises ``ValueError`` naming the missing / unexpected keys."""
    sd = {k: v for k, v in state_dict.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    expected = set(module.state_dict().keys())
    missing = sorted(k for k in expected - set(sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(f"{what}: state dict does not match the expected layout; "
                         f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
                         f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    own = module.state_dict()
    bad = [k for k in sd if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{what}: shape mismatch for {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in bad[:5]]}")
    module.load_state_dict(sd, strict=False)


def as_images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check a (B, C, H, W) floating tensor."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"{name}: expected a (B, C, H, W) tensor, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating point images in [0, 1], got dtype {x.dtype}")
    return x


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Grayscale (C=1) images are repeated to 3 channels; RGB passes through; other C is an error."""
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 (grayscale) or 3 (RGB) channels, got {x.shape[1]}")
    return x
