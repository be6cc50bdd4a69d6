"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
version 0.1, written in this project.

Pieces:

* backbones ``AlexNetFeatures`` / ``VGG16Features``: the ``features`` stacks of torchvision's
  ``alexnet`` / ``vgg16`` with the same module indices, so torchvision's ImageNet weight files
  (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) load by key (``features.0.weight`` ...; their
  ``classifier.*`` entries are not needed and are dropped). LPIPS taps the ReLU outputs
  relu1..relu5 (AlexNet) / relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (VGG16).
* ``ScalingLayer``: ``(x - shift) / scale`` with shift = (-0.030, -0.088, -0.188),
  scale = (0.458, 0.448, 0.450), applied to images in [-1, 1].
* ``LPIPSHeads``: the five linear 1x1 convolutions, keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``
  (``model.0`` is a parameter-free Dropout), exactly the layout of the official ``alex.pth`` / ``vgg.pth``
  (v0.1) files of richzhang/PerceptualSimilarity.
* distance: features unit-normalised over channels (``f / (||f||_2 + 1e-10)``), squared difference,
  linear head, spatial mean, sum over the five layers.

Inputs of ``LPIPS.forward`` are (B, C, H, W) images in [0, 1] (mapped to [-1, 1] inside);
1-channel images are repeated to 3 channels. Output: (B,) distances.

Weights (never downloaded by this code):

* backbone: ``backbone_path`` or ``$CMIDPS_LPIPS_BACKBONE`` (a file, or a folder holding the torchvision file
  name), else torch's hub cache ``$TORCH_HOME/hub/checkpoints/`` (where torchvision leaves it).
* linear heads: ``lpips_path`` or ``$CMIDPS_LPIPS_WEIGHTS`` (file or folder with ``alex.pth``/``vgg.pth``),
  else the copy of the official heads bundled inside an installed ``torchmetrics`` (if any), else the
  ``lpips`` pip package's ``weights/v0.1/`` folder (if installed).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn as nn

from ._common import MetricUnavailable, as_images, load_state_dict_file, load_strict, resolve_weights, to_rgb

__all__ = ["AlexNetFeatures", "VGG16Features", "ScalingLayer", "LPIPSHeads", "LPIPS", "lpips",
           "BACKBONE_FILES", "HEAD_FILES"]

BACKBONE_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}
HEAD_FILES = {
    "alex": ("alex.pth", "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"),
    "vgg": ("vgg.pth", "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"),
}
ENV_BACKBONE = "CMIDPS_LPIPS_BACKBONE"
ENV_HEADS = "CMIDPS_LPIPS_WEIGHTS"


class _TappedFeatures(nn.Module):
    """A torchvision-style ``features`` Sequential; ``forward`` returns the activations after the layers
    whose indices are in ``taps``."""

    taps: tuple[int, ...] = ()
    channels: tuple[int, ...] = ()
    min_size: int = 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        last = self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
            if i == last:
                break
        return outs


class AlexNetFeatures(_TappedFeatures):
    """torchvision ``alexnet().features`` (indices 0..12); taps ReLUs 1, 4, 7, 9, 11."""

    taps = (1, 4, 7, 9, 11)
    channels = (64, 192, 384, 256, 256)
    min_size = 31  # smallest H, W for which both max-pools before relu3 have input

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=False), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )


class VGG16Features(_TappedFeatures):
    """torchvision ``vgg16().features`` (indices 0..30); taps ReLUs 3, 8, 15, 22, 29."""

    taps = (3, 8, 15, 22, 29)
    channels = (64, 128, 256, 512, 512)
    min_size = 16

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)


class ScalingLayer(nn.Module):
    """LPIPS v0.1 input scaling for images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _NetLin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPSHeads(nn.Module):
    """The linear heads ``lin0`` .. ``lin4`` (state-dict keys ``lin{k}.model.1.weight``, shape (1, C_k, 1, 1))."""

    def __init__(self, channels):
        super().__init__()
        for k, c in enumerate(channels):
            setattr(self, f"lin{k}", _NetLin(c))
        self.n = len(channels)

    def conv(self, k: int) -> nn.Conv2d:
        return getattr(self, f"lin{k}").model[1]


def _normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.square().sum(dim=1, keepdim=True).sqrt() + eps)


def _head_search_dirs(net: str) -> list[Path]:
    dirs = []
    for pkg, sub in (("torchmetrics", ("functional", "image", "lpips_models")), ("lpips", ("weights", "v0.1"))):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                dirs.append(Path(loc, *sub))
    return dirs


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. ``LPIPS(net="alex"|"vgg", backbone_path=None, lpips_path=None)``.

    Raises ``MetricUnavailable`` if a weight file cannot be found (see the module docstring for the
    search order); ``pretrained=False`` builds the same modules with random weights (for tests).
    Call: ``lpips_module(x, ref) -> (B,)`` with images in [0, 1].
    """

    def __init__(self, net: str = "alex", backbone_path=None, lpips_path=None, pretrained: bool = True):
        super().__init__()
        if net in ("alexnet",):
            net = "alex"
        if net in ("vgg16",):
            net = "vgg"
        if net not in ("alex", "vgg"):
            raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
        self.net_name = net
        self.scaling_layer = ScalingLayer()
        self.net = AlexNetFeatures() if net == "alex" else VGG16Features()
        heads = LPIPSHeads(self.net.channels)
        for k in range(heads.n):  # flat lin0..lin4 attributes, as in the official module
            setattr(self, f"lin{k}", getattr(heads, f"lin{k}"))
        self.backbone_file = None
        self.heads_file = None
        if pretrained:
            self.backbone_file = resolve_backbone(net, backbone_path)
            self.heads_file = resolve_heads(net, lpips_path)
            load_backbone(self.net, self.backbone_file)
            load_heads(self, self.heads_file)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The linear heads in the official file layout (``lin{k}.model.1.weight``)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("lin")}

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        as_images(x, "x")
        as_images(ref, "ref")
        if x.shape != ref.shape:
            raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
        if min(x.shape[-2:]) < self.net.min_size:
            raise ValueError(f"LPIPS-{self.net_name} needs images of at least {self.net.min_size}x"
                             f"{self.net.min_size} pixels, got {tuple(x.shape[-2:])}")
        dtype = self.scaling_layer.shift.dtype
        b = x.shape[0]
        both = torch.cat([to_rgb(x), to_rgb(ref)], 0).to(dtype)
        feats = self.net(self.scaling_layer(2.0 * both - 1.0))
        total = torch.zeros(b, dtype=dtype, device=x.device)
        for k, f in enumerate(feats):
            f = _normalize(f)
            d = (f[:b] - f[b:]).square()
            conv = getattr(self, f"lin{k}").model[1]
            total = total + conv(d).mean(dim=(1, 2, 3))
        return total


def resolve_backbone(net: str, path=None) -> Path:
    name, url = BACKBONE_FILES[net]
    return resolve_weights(
        path, ENV_BACKBONE, (name,), f"LPIPS-{net} backbone",
        f"It is torchvision's ImageNet {'AlexNet' if net == 'alex' else 'VGG16'} file {name}, from {url} "
        f"(torchvision downloads it to $TORCH_HOME/hub/checkpoints/).")


def resolve_heads(net: str, path=None) -> Path:
    name, url = HEAD_FILES[net]
    return resolve_weights(
        path, ENV_HEADS, (name,), f"LPIPS-{net} linear heads",
        f"It is the official LPIPS v0.1 file {name}, from {url} (also shipped inside the pip packages "
        f"'lpips' and 'torchmetrics', where it is found automatically).",
        extra_dirs=_head_search_dirs(net))


def load_backbone(module: _TappedFeatures, path) -> None:
    """Load a torchvision ``alexnet``/``vgg16`` state-dict file (strict on ``features.*``; ``classifier.*``
    ignored)."""
    sd = load_state_dict_file(path)
    load_strict(module, sd, f"LPIPS backbone {path}", ignore_prefixes=("classifier.",))


def load_heads(module: nn.Module, path) -> None:
    """Load an official LPIPS head file (keys ``lin{k}.model.1.weight``) into ``module``'s lin layers."""
    sd = load_state_dict_file(path)
    target = nn.Module()
    for k in range(5):
        target.add_module(f"lin{k}", getattr(module, f"lin{k}"))
    load_strict(target, sd, f"LPIPS heads {path}")


_CACHE: dict = {}


def get_lpips(net: str = "alex", backbone_path=None, lpips_path=None, device=None) -> LPIPS:
    """A cached ``LPIPS`` module (one per net, weight files and device)."""
    key = (net, str(resolve_backbone(net, backbone_path)), str(resolve_heads(net, lpips_path)), str(device))
    if key not in _CACHE:
        _CACHE[key] = LPIPS(net, key[1], key[2]).to(device)
    return _CACHE[key]


def lpips(x: torch.Tensor, ref: torch.Tensor, net: str = "alex", backbone_path=None, lpips_path=None) -> torch.Tensor:
    """LPIPS distance of each image pair, (B,). Raises ``MetricUnavailable`` without weight files."""
    return get_lpips(net, backbone_path, lpips_path, x.device)(x, ref)
