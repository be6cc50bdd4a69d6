"""A diffusers ``UNet2DModel`` + DDPM-style scheduler config as a cmidps prior (offline).

The folder is what ``UNet2DModel.save_pretrained`` / ``DDPMPipeline.save_pretrained`` write: the
UNet's ``config.json`` and weights either at the top level or in ``unet/``, and the scheduler's
``scheduler_config.json`` either at the top level or in ``scheduler/``. Nothing is downloaded
(``local_files_only=True``).

* The beta schedule (``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` or ``trained_betas``) is
  recomputed in float64 and becomes the prior's :class:`~cmidps.diffusion.Schedule`.
* ``prediction_type``: ``epsilon`` as is; ``sample`` (x0) and ``v_prediction`` are converted to
  epsilon with the schedule's ``abar_t``.
* ``variance_type``: ``learned_range`` keeps the ``v`` channels (same convention as ADM); ``learned``
  (a raw log-variance) has its channels dropped, fixed variances need none.
* Attention runs through diffusers' plain ``AttnProcessor`` (matmul + softmax), so second derivatives
  exist on the CPU, and the call also forces the math SDPA backend for any other attention module.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from ..diffusion import Schedule
from ..prior import NetworkPrior

__all__ = ["load_diffusers_prior", "DiffusersEpsNet", "betas_from_scheduler_config"]


def betas_from_scheduler_config(cfg: dict) -> torch.Tensor:
    """The training betas of a diffusers DDPM/DDIM scheduler config, in float64."""
    n = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr schedules (abar_T = 0) are not supported: eps prediction "
                         "is undefined at the last step")
    if cfg.get("trained_betas") is not None:
        return torch.as_tensor(cfg["trained_betas"], dtype=torch.float64)
    kind = cfg.get("beta_schedule", "linear")
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":  # improved DDPM's cosine schedule, betas capped at 0.999
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise ValueError(f"unsupported beta_schedule {kind!r} (linear, scaled_linear, squaredcos_cap_v2 "
                     f"or trained_betas)")


class DiffusersEpsNet(nn.Module):
    """``forward(x, t) -> (B, C or 2C, H, W)``: a diffusers UNet's output converted to epsilon."""

    def __init__(self, unet: nn.Module, train_abar: torch.Tensor, prediction_type: str = "epsilon",
                 keep_channels: int | None = None):
        super().__init__()
        if prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r} (epsilon, sample, v_prediction)")
        self.unet = unet
        self.prediction_type = prediction_type
        self.keep_channels = keep_channels
        self.register_buffer("train_abar", train_abar.to(torch.float64), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            out = self.unet(x, t).sample
        if self.keep_channels is not None:
            out = out[:, : self.keep_channels]
        if self.prediction_type == "epsilon":
            return out
        c = x.shape[1]
        pred, rest = out[:, :c], out[:, c:]
        abar = self.train_abar[t.to(self.train_abar.device).long()].to(x.dtype)[:, None, None, None]
        a, s = abar.sqrt(), (1.0 - abar).sqrt()
        if self.prediction_type == "sample":  # x_t = a x0 + s eps
            eps = (x - a * pred) / s
        else:  # v = a eps - s x0  =>  eps = a v + s x_t
            eps = a * pred + s * x
        return torch.cat([eps, rest], dim=1)


def _find_config(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def load_diffusers_prior(folder, device="cpu") -> NetworkPrior:
    """Load a local diffusers ``UNet2DModel`` folder and its scheduler config as a :class:`NetworkPrior`."""
    from diffusers import UNet2DModel
    from diffusers.models.attention_processor import Attention, AttnProcessor

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"diffusers folder not found: {str(folder)!r}")
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    unet_cfg_path = unet_dir / "config.json"
    if not unet_cfg_path.is_file():
        raise FileNotFoundError(f"no UNet config.json in {str(folder)!r} or its unet/ subfolder")
    class_name = json.loads(unet_cfg_path.read_text()).get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise ValueError(f"{str(unet_cfg_path)!r} describes a {class_name}; only unconditional UNet2DModel "
                         f"networks are supported")
    sched_path = _find_config(folder, ["scheduler/scheduler_config.json", "scheduler_config.json",
                                       "unet/scheduler_config.json"])
    if sched_path is None:
        raise FileNotFoundError(f"no scheduler config in {str(folder)!r}: expected "
                                f"scheduler/scheduler_config.json or scheduler_config.json")
    sched = json.loads(sched_path.read_text())

    unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    for module in unet.modules():  # plain matmul + softmax attention: twice differentiable everywhere
        if isinstance(module, Attention):
            module.set_processor(AttnProcessor())
    unet = unet.eval().requires_grad_(False)

    schedule = Schedule(betas_from_scheduler_config(sched))
    c = int(unet.config.in_channels)
    out_c = int(unet.config.out_channels)
    variance_type = sched.get("variance_type", "fixed_small")
    learn_sigma, keep = False, None
    if variance_type == "learned_range":
        learn_sigma = True
        if out_c != 2 * c:
            raise ValueError(f"variance_type learned_range needs {2 * c} output channels, the UNet has {out_c}")
    elif out_c == 2 * c:
        if variance_type != "learned":
            warnings.warn(f"the UNet returns {out_c} channels but variance_type is {variance_type!r}; "
                          f"using the first {c} as the model output")
        keep = c
    elif out_c != c:
        raise ValueError(f"the UNet returns {out_c} channels for {c} input channels")

    net = DiffusersEpsNet(unet, torch.cumprod(1.0 - schedule.train_betas, 0),
                          sched.get("prediction_type", "epsilon"), keep_channels=keep)
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    prior = NetworkPrior(net, (c, h, w), learn_sigma=learn_sigma, schedule=schedule, clip_x0=True,
                         name=f"diffusers:{folder.name}")
    return prior.to(device)
