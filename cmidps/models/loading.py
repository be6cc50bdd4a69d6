"""Turning weights on disk into priors: ``load_prior(spec)``.

Accepted specs (see :func:`load_prior`):

* ``bundled:<name>``: a model shipped in ``cmidps/assets/<name>/`` (``model.safetensors`` and
  ``config.json``), e.g. ``bundled:mnist32``;
* a guided-diffusion / ADM checkpoint (``.pt`` / ``.pth``, a plain ``state_dict`` saved with
  ``torch.save``), e.g. DPS's ``ffhq_10m.pt`` or ADM's ``256x256_diffusion_uncond.pt``;
* a folder in the cmidps format (``config.json`` with a ``create_model`` entry + ``model.safetensors``,
  what :func:`save_network` writes);
* a diffusers folder (a ``UNet2DModel`` saved with ``save_pretrained`` and its scheduler config).

Nothing is downloaded: every loader takes a local path and raises a clear error if it is missing.
Loaded networks are put in eval mode with their parameters frozen (``requires_grad=False``): the
samplers differentiate with respect to the image only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..diffusion import Schedule
from ..prior import NetworkPrior
from .unet import FFHQ_256, IMAGENET_256_UNCOND, UNetModel, create_model, model_kwargs

__all__ = [
    "CheckpointError",
    "load_adm_checkpoint",
    "load_prior",
    "load_network_folder",
    "save_network",
    "guess_adm_config",
    "ASSETS_DIR",
]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

NAMED_CONFIGS = {"ffhq": FFHQ_256, "imagenet": IMAGENET_256_UNCOND}

# One line each: a loading error is one ``error:`` line on the command line.
DOWNLOAD_HINT = (
    "cmidps never downloads weights: get the checkpoint yourself and pass its local path (FFHQ 256, "
    "config 'ffhq': ffhq_10m.pt from github.com/DPS2022/diffusion-posterior-sampling; ImageNet 256 "
    "unconditional, config 'imagenet': 256x256_diffusion_uncond.pt from github.com/openai/guided-diffusion)"
)

SPEC_FORMS = (
    "accepted model specs: bundled:<name> (a model in cmidps/assets/, e.g. bundled:mnist32); an ADM "
    "state_dict file (.pt/.pth; --model-config ffhq|imagenet|FILE.json or guessed); a cmidps model folder "
    "(config.json with 'create_model' + model.safetensors); a diffusers UNet2DModel folder"
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not match the architecture it was loaded into."""


# --- reading state dicts ----------------------------------------------------------------------------
def _read_torch_state_dict(path: Path, device, safetensors_ok: bool = False) -> dict[str, torch.Tensor]:
    """``torch.load(..., weights_only=True)`` with clear errors for missing/corrupt files; a safetensors
    file is read too when ``safetensors_ok`` (its architecture was given)."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}. {DOWNLOAD_HINT}")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder, not a checkpoint file; {SPEC_FORMS}")
    kind = _sniff(path)
    if kind == "safetensors":
        if not safetensors_ok:
            raise CheckpointError(_safetensors_hint(path))
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap_state_dict(load_file(str(path), device=str(device)), path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"could not read {str(path)!r}: truncated or corrupt safetensors file ({err})") from err
    if kind is None:
        raise CheckpointError(
            f"{str(path)!r} is not a readable checkpoint: it is neither a PyTorch file (a zip archive or a "
            f"pickle, what torch.save writes) nor a safetensors file. Pass the checkpoint itself "
            f"(e.g. ffhq_10m.pt) or a model folder.")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # zip/pickle errors come in many types
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "unsupported global" in str(err).lower():
            raise CheckpointError(
                f"{str(path)!r} holds Python objects besides tensors and cannot be loaded safely "
                f"(weights_only=True). Save a plain state_dict: torch.save(model.state_dict(), path). "
                f"Original error: {msg}") from err
        size = path.stat().st_size
        raise CheckpointError(
            f"could not read checkpoint {str(path)!r} ({size:,} bytes): the file is truncated or corrupt "
            f"(an interrupted download?). Download it again. Original error: {type(err).__name__}: {msg}"
        ) from err
    return _unwrap_state_dict(obj, path)


def _sniff(path: Path) -> str | None:
    """What a weights file is by its first bytes: ``'torch'`` (zip archive or pickle), ``'safetensors'``
    (8-byte little-endian header length, then a JSON header) or ``None``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return None


def _safetensors_hint(path: Path) -> str:
    folder = path.parent
    if (folder / "config.json").is_file():
        return (f"{str(path)!r} is the weights file of a model folder: pass the folder instead "
                f"(--model {str(folder)!r}), which holds its config.json")
    return (f"{str(path)!r} is a safetensors file without a config.json beside it: pass its architecture "
            f"with --model-config ffhq|imagenet|FILE.json (a JSON of create_model kwargs), or put it in a "
            f"model folder (config.json + model.safetensors)")


def read_model_config(config):
    """``model_config`` as given: ``None``, a named configuration (``'ffhq'``, ``'imagenet'``, ``'auto'``),
    a dict of create_model kwargs, or the path of a JSON file holding such a dict (or a cmidps
    ``config.json``, whose ``create_model`` entry is used)."""
    if not isinstance(config, (str, os.PathLike)) or str(config).lower() in (*NAMED_CONFIGS, "auto"):
        return config
    path = Path(config).expanduser()
    if not path.is_file():
        raise ValueError(f"--model-config {str(config)!r} is neither {', '.join(NAMED_CONFIGS)} nor an existing "
                         f"JSON file of create_model kwargs")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"--model-config {str(path)!r} is not valid JSON: {err}") from err
    if isinstance(data, dict) and isinstance(data.get("create_model"), dict):
        data = data["create_model"]
    if not isinstance(data, dict):
        raise ValueError(f"--model-config {str(path)!r} must hold a JSON object of create_model kwargs")
    return data


def _unwrap_state_dict(obj, path) -> dict[str, torch.Tensor]:
    """Accept a plain state_dict, or one nested under a usual key; strip a DataParallel prefix."""
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a state_dict (a dict of tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    check_finite_weights(obj.items(), path)
    # fp16 checkpoints are widened: the model computes in float32 (or float64) on the CPU.
    return {k: (v.float() if v.is_floating_point() and v.dtype != torch.float64 else v) for k, v in obj.items()}


def check_finite_weights(named_tensors, source) -> None:
    """A ``CheckpointError`` if any floating-point weight holds NaN or inf (a damaged file or a diverged
    training run: every sample would be NaN, which a sampler would blame on its step size)."""
    bad = [name for name, v in named_tensors
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"the weights in {str(source)!r} hold NaN or infinite values in {len(bad)} tensor(s) "
                              f"(e.g. {', '.join(bad[:3])}): the file is damaged or its training diverged; "
                              f"use another checkpoint")


# --- matching a state dict against an architecture ------------------------------------------------------
def _create_model_keys() -> set[str]:
    import inspect

    return set(inspect.signature(create_model).parameters)


def check_model_kwargs(kwargs, source) -> dict:
    """``kwargs`` as create_model keyword arguments: a dict whose keys ``create_model`` takes (an unknown
    key is a ``CheckpointError`` naming it and ``source``), with an ``image_size`` >= 1."""
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: the model configuration must be a JSON object of create_model kwargs, "
                              f"got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - _create_model_keys())
    if unknown:
        raise CheckpointError(f"{source}: unknown create_model key(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(sorted(_create_model_keys()))}")
    size = kwargs.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise CheckpointError(f"{source}: image_size must be a positive integer, got {size!r}")
    return kwargs


def _meta_model(kwargs: dict) -> UNetModel:
    """The architecture without allocating weights (for key/shape checks); a configuration that cannot
    build a UNet is a one-line ``CheckpointError``."""
    try:
        with torch.device("meta"):
            return create_model(**{**kwargs, "use_fp16": False})
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, AssertionError, IndexError) as exc:
        raise CheckpointError(f"the model configuration cannot build a UNet ({type(exc).__name__}: {exc}); "
                              f"check its create_model kwargs") from None


def _mismatch(state: dict[str, torch.Tensor], kwargs: dict) -> tuple[list, list, list]:
    """(missing keys, unexpected keys, (key, checkpoint shape, model shape) mismatches)."""
    ref = {k: tuple(v.shape) for k, v in _meta_model(kwargs).state_dict().items()}
    missing = [k for k in ref if k not in state]
    unexpected = [k for k in state if k not in ref]
    shapes = [(k, tuple(state[k].shape), ref[k]) for k in ref if k in state and tuple(state[k].shape) != ref[k]]
    return missing, unexpected, shapes


def _describe(missing, unexpected, shapes, n: int = 4) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:n])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:n])})")
    if shapes:
        ex = "; ".join(f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in shapes[:n])
        parts.append(f"{len(shapes)} shape mismatches (e.g. {ex})")
    return ", ".join(parts)


def guess_adm_config(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the named configuration (``'ffhq'`` / ``'imagenet'``) whose keys and shapes the
    state dict matches exactly, or ``None``."""
    for name, kw in NAMED_CONFIGS.items():
        if not any(_mismatch(state, kw)):
            return name
    return None


def _build_from_state(state: dict[str, torch.Tensor], kwargs: dict, label: str, source) -> UNetModel:
    """Strictly load ``state`` into ``create_model(**kwargs)``, or raise a CheckpointError that names
    the offending keys, the configuration tried and a better-matching named one if any."""
    missing, unexpected, shapes = _mismatch(state, kwargs)
    if missing or unexpected or shapes:
        msg = f"checkpoint {str(source)!r} does not match the {label} configuration: " \
              f"{_describe(missing, unexpected, shapes)}."
        other = [n for n, kw in NAMED_CONFIGS.items() if kw != kwargs and not any(_mismatch(state, kw))]
        if other:
            msg += f" It matches the {other[0]!r} configuration exactly: pass config={other[0]!r}."
        else:
            msg += (" Pass the right architecture with --model-config FILE.json (a JSON object of create_model "
                    "kwargs; Python: model_config=dict).")
        raise CheckpointError(msg)
    net = _meta_model(kwargs)
    net.load_state_dict(state, strict=True, assign=True)
    if kwargs.get("use_fp16"):
        net.convert_to_fp16()
    return net.eval().requires_grad_(False)


def _config_label(config) -> tuple[dict, str]:
    kwargs = model_kwargs(config)
    if isinstance(config, str):
        return kwargs, f"{config!r}"
    return kwargs, f"given ({', '.join(f'{k}={v!r}' for k, v in list(kwargs.items())[:6])}, ...)"


# --- public loaders ---------------------------------------------------------------------------------
def load_adm_checkpoint(path, config="ffhq", device="cpu") -> NetworkPrior:
    """Load a guided-diffusion / ADM checkpoint (a plain fp32 ``state_dict``) as a :class:`NetworkPrior`.

    ``config``: ``'ffhq'`` (:data:`~cmidps.models.unet.FFHQ_256`, DPS ``ffhq_10m.pt``), ``'imagenet'``
    (:data:`~cmidps.models.unet.IMAGENET_256_UNCOND`, ADM ``256x256_diffusion_uncond.pt``), ``'auto'``
    (guess from the keys and shapes) or a dict of :func:`~cmidps.models.unet.create_model` kwargs.
    The prior uses the linear 1000-step schedule (1e-4 .. 0.02) the checkpoints were trained with.
    """
    path = Path(path).expanduser()
    config = read_model_config(config)
    named = isinstance(config, str)
    state = _read_torch_state_dict(path, device, safetensors_ok=not (named and config.lower() == "auto"))
    if isinstance(config, str) and config.lower() == "auto":
        config = guess_adm_config(state)
        if config is None:
            raise CheckpointError(
                f"checkpoint {str(path)!r} matches none of the named configurations "
                f"({', '.join(NAMED_CONFIGS)}); pass its architecture with --model-config FILE.json "
                f"(a JSON object of create_model kwargs; Python: model_config=dict)")
    kwargs, label = _config_label(config)
    check_model_kwargs(kwargs, f"--model-config {label}")
    net = _build_from_state(state, kwargs, label, path)
    channels = kwargs.get("in_channels", 3)
    size = kwargs["image_size"]
    prior = NetworkPrior(net, (channels, size, size), learn_sigma=bool(kwargs.get("learn_sigma", False)),
                         schedule=Schedule.linear(), clip_x0=True, name=f"adm:{path.name}")
    return prior.to(device)


def save_network(folder, net: torch.nn.Module, create_model_kwargs: dict, *, channels: int, image_size: int,
                 learn_sigma: bool, schedule: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``net`` in the cmidps folder format that :func:`load_prior` reads: ``model.safetensors``
    (the state dict) and ``config.json`` ({"create_model": kwargs, "image_size", "channels",
    "learn_sigma", "schedule": {"num_train_steps", "beta_start", "beta_end"}, **extra})."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    schedule = schedule or {"num_train_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    kw = dict(create_model_kwargs)
    for key in ("channel_mult", "attention_resolutions"):
        if isinstance(kw.get(key), tuple):
            kw[key] = list(kw[key])
    config = {"create_model": kw, "image_size": image_size, "channels": channels,
              "learn_sigma": learn_sigma, "schedule": schedule, **(extra or {})}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    from ..outputs import atomic_path, write_text  # each file via a temporary file and a rename

    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return folder


def load_network_folder(folder, device="cpu", name: str | None = None) -> NetworkPrior:
    """Load a cmidps-format folder (``config.json`` + ``model.safetensors``) as a :class:`NetworkPrior`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights_path = folder / "config.json", folder / "model.safetensors"
    missing = [p.name for p in (cfg_path, weights_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"model folder {str(folder)!r} lacks {', '.join(missing)}; a cmidps model folder holds "
            f"config.json and model.safetensors (written by cmidps.models.loading.save_network)")
    try:
        config = json.loads(cfg_path.read_text())
        kwargs = dict(config["create_model"])
        channels, size = int(config["channels"]), int(config["image_size"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(cfg_path)!r} is not a valid cmidps model config "
                              f"(needs 'create_model', 'channels', 'image_size'): {err!r}") from None
    check_model_kwargs(kwargs, repr(str(cfg_path)))
    learn_sigma = bool(config.get("learn_sigma", kwargs.get("learn_sigma", False)))
    if bool(kwargs.setdefault("learn_sigma", learn_sigma)) != learn_sigma:
        raise CheckpointError(f"{str(cfg_path)!r}: learn_sigma differs between the top level and create_model")
    if int(kwargs.setdefault("in_channels", channels)) != channels:
        raise CheckpointError(f"{str(cfg_path)!r}: channels {channels} but create_model in_channels "
                              f"{kwargs['in_channels']}")
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"could not read {str(weights_path)!r} ({weights_path.stat().st_size:,} bytes): "
                              f"truncated or corrupt safetensors file ({err})") from err
    state = _unwrap_state_dict(state, weights_path)
    net = _build_from_state(state, kwargs, f"{str(cfg_path)!r}", weights_path)
    sched_cfg = dict(config.get("schedule") or {})
    kind = sched_cfg.pop("type", "linear")
    if kind != "linear":
        raise CheckpointError(f"{str(cfg_path)!r}: unsupported schedule type {kind!r} (only 'linear')")
    unknown = set(sched_cfg) - {"num_train_steps", "beta_start", "beta_end"}
    if unknown:
        raise CheckpointError(f"{str(cfg_path)!r}: unknown schedule keys {sorted(unknown)} "
                              f"(num_train_steps, beta_start, beta_end, type)")
    schedule = _linear_schedule(sched_cfg, cfg_path)
    prior = NetworkPrior(net, (channels, size, size), learn_sigma=learn_sigma, schedule=schedule,
                         clip_x0=bool(config.get("clip_x0", True)), name=name or f"folder:{folder.name}")
    return prior.to(device)


def _linear_schedule(cfg: dict, source) -> Schedule:
    """``Schedule.linear(**cfg)`` with its values checked: an integer ``num_train_steps`` >= 1 and
    betas with ``0 < beta_start <= beta_end < 1`` (else a one-line ``CheckpointError``)."""
    n = cfg.get("num_train_steps", 1000)
    b0, b1 = cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise CheckpointError(f"{str(source)!r}: schedule num_train_steps must be an integer >= 1, got {n!r}")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in (b0, b1)) \
            or not 0 < b0 <= b1 < 1:
        raise CheckpointError(f"{str(source)!r}: schedule betas need 0 < beta_start <= beta_end < 1, got "
                              f"beta_start={b0!r}, beta_end={b1!r}")
    return Schedule.linear(**cfg)


def _is_diffusers_folder(folder: Path) -> bool:
    for cfg in (folder / "config.json", folder / "unet" / "config.json"):
        if cfg.is_file():
            try:
                if "_class_name" in json.loads(cfg.read_text()):
                    return True
            except ValueError:
                pass
    return (folder / "model_index.json").is_file()


def load_prior(spec: str, device="cpu", model_config=None):
    """Load a diffusion prior from a spec (see the module docstring and ``SPEC_FORMS``).

    ``model_config`` applies to ADM checkpoints (and bare ``.safetensors`` weight files) only:
    ``'ffhq'``, ``'imagenet'``, a dict of ``create_model`` kwargs or the path of a JSON file holding one;
    by default the configuration is guessed from the checkpoint's keys/shapes.
    """
    spec = os.fspath(spec)
    if spec.startswith("bundled:"):
        name = spec[len("bundled:"):]
        folder = ASSETS_DIR / name
        if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
            have = sorted(p.name for p in ASSETS_DIR.iterdir() if (p / "config.json").is_file()) \
                if ASSETS_DIR.is_dir() else []
            raise FileNotFoundError(
                f"bundled model {name!r} is not installed: expected {folder / 'model.safetensors'} and "
                f"{folder / 'config.json'} (the bundled weights are trained by the project and shipped in "
                f"cmidps/assets/). Bundled models present: {have or 'none'}")
        return load_network_folder(folder, device=device, name=spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin", ".safetensors") or path.is_file():
        return load_adm_checkpoint(path, config=model_config if model_config is not None else "auto",
                                   device=device)
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file() \
                and not _is_diffusers_folder(path):
            return load_network_folder(path, device=device)
        if _is_diffusers_folder(path):
            return _load_diffusers(path, device)
        for cfg in (path / "config.json", path / "unet" / "config.json"):
            if cfg.is_file():
                try:
                    json.loads(cfg.read_text())
                except ValueError as err:
                    raise CheckpointError(f"{str(cfg)!r} is not valid JSON ({err}); {SPEC_FORMS}") from None
        raise ValueError(f"folder {spec!r} is neither a cmidps model folder nor a diffusers folder; {SPEC_FORMS}")
    if not path.exists() and (os.sep in spec or path.suffix):
        raise FileNotFoundError(f"no such file or folder: {spec!r}; {SPEC_FORMS}")
    raise ValueError(f"unknown model spec {spec!r}; {SPEC_FORMS}")


def _load_diffusers(path: Path, device):
    """A diffusers folder as a prior; a config that diffusers cannot read, or NaN weights, is one
    ``CheckpointError`` line naming the folder."""
    import warnings

    from .diffusers_adapter import load_diffusers_prior

    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    weights = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    if not any((unet_dir / w).is_file() for w in weights):
        raise FileNotFoundError(f"diffusers folder {str(path)!r} has no weights: expected {' or '.join(weights)} in "
                                f"{str(unet_dir)!r}")
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # its advice and error lines would break our one line
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            prior = load_diffusers_prior(path, device=device)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"a config file of the diffusers folder {str(path)!r} is not valid JSON ({exc})") from None
    except (ValueError, FileNotFoundError, CheckpointError):
        raise
    except (KeyError, TypeError, AttributeError, OSError, RuntimeError, ZeroDivisionError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"diffusers folder {str(path)!r} could not be loaded ({type(exc).__name__}: {first}); "
                              f"check its config.json and scheduler config") from None
    finally:
        diffusers_logging.set_verbosity(level)
    check_finite_weights(prior.named_parameters() if hasattr(prior, "named_parameters") else (), path)
    return prior
