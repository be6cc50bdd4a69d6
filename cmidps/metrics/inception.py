"""The InceptionV3 feature extractor of FID/KID, written in this project.

Same network, preprocessing and state-dict layout as torch-fidelity's ``FeatureExtractorInceptionV3``
(the extractor torchmetrics uses): the TensorFlow "2015-12-05" Inception graph converted to PyTorch, i.e.
torchvision's Inception3 layout (``Conv2d_1a_3x3.conv.weight``, ``Conv2d_1a_3x3.bn.running_mean``, ...,
``Mixed_7c.branch_pool.conv.weight``, ``fc.weight`` with 1008 classes) with the TF patches (average pools
that exclude padding, a max pool in the last block). Both public converted files use this layout:

* torch-fidelity: ``weights-inception-2015-12-05-6726825d.pth``
  (https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth)
* pytorch-fid: ``pt_inception-2015-12-05-6726825d.pth``
  (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)

Preprocessing (torch-fidelity's): images in [0, 1] are quantised to 8 bits (``round(255 x)``), resized to
299x299 with TensorFlow-1.x bilinear resampling (no half-pixel centres), mapped by ``(x - 128) / 128``.
Grayscale images are repeated to 3 channels. The FID/KID feature is the 2048-d pool3 output.

Weights are looked up at ``weights_path``, ``$CMIDPS_INCEPTION_WEIGHTS`` (file or folder), then torch's hub
cache ``$TORCH_HOME/hub/checkpoints/``. Nothing is downloaded; ``MetricUnavailable`` says what is missing.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import as_images, load_state_dict_file, load_strict, resolve_weights, to_rgb

__all__ = ["InceptionV3Features", "resize_bilinear_tf1", "resolve_inception", "INCEPTION_FILES"]

ENV_INCEPTION = "CMIDPS_INCEPTION_WEIGHTS"
INCEPTION_FILES = (
    ("weights-inception-2015-12-05-6726825d.pth",
     "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"),
    ("pt_inception-2015-12-05-6726825d.pth",
     "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"),
)


def resolve_inception(path=None):
    names = tuple(n for n, _ in INCEPTION_FILES)
    return resolve_weights(
        path, ENV_INCEPTION, names, "FID/KID InceptionV3",
        "It is the TF-2015-12-05 Inception converted to PyTorch: " +
        " or ".join(f"{n} from {u}" for n, u in INCEPTION_FILES) + ".")


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)``: source coordinate
    ``dst * in / out`` (no half-pixel offset), neighbours ``floor`` and ``min(floor + 1, in - 1)``."""
    def axis(n_in, n_out):
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo.to(x.device), hi.to(x.device), (src - lo).to(x.dtype).to(x.device)

    ylo, yhi, dy = axis(x.shape[-2], size[0])
    xlo, xhi, dx = axis(x.shape[-1], size[1])
    top = x[..., ylo, :]
    bot = x[..., yhi, :]
    rows = top + (bot - top) * dy.view(-1, 1)
    left = rows[..., xlo]
    right = rows[..., xhi]
    return left + (right - left) * dx


class BasicConv2d(nn.Module):
    def __init__(self, c_in, c_out, **kw):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kw)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # TF average pool: padding not counted
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, c_in, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, c_in, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """``pool="avg"``: Mixed_7b (TF average pool without padding); ``pool="max"``: Mixed_7c (TF graph
    uses a max pool there)."""

    def __init__(self, c_in, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        p = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(p)], 1)


class InceptionV3Features(nn.Module):
    """FID InceptionV3. ``forward(images in [0, 1], (B, 1 or 3, H, W)) -> (B, 2048)`` pool3 features
    (float32). Build with ``InceptionV3Features.from_file(path)`` (or ``weights_path=None`` lookup via
    ``from_file()``); the bare constructor gives random weights (tests)."""

    INPUT_SIZE = 299
    num_features = 2048  # read by torchmetrics when used as its ``feature=`` module

    def __init__(self, quantize: bool = True):
        super().__init__()
        self.quantize = quantize
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # unused for FID; part of the weight files
        self.weights_file = None
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_file(cls, weights_path=None, quantize: bool = True) -> "InceptionV3Features":
        path = resolve_inception(weights_path)
        m = cls(quantize=quantize)
        load_strict(m, load_state_dict_file(path), f"InceptionV3 weights {path}")
        m.weights_file = path
        return m

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = to_rgb(as_images(x, "images")).to(self.fc.weight.dtype)
        if self.quantize:
            x = torch.round(x.clamp(0, 1) * 255)
        else:
            x = x * 255
        x = resize_bilinear_tf1(x, (self.INPUT_SIZE, self.INPUT_SIZE))
        return (x - 128) / 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3)).float()


_CACHE: dict = {}


def get_inception(weights_path=None, device=None) -> InceptionV3Features:
    key = (str(resolve_inception(weights_path)), str(device))
    if key not in _CACHE:
        _CACHE[key] = InceptionV3Features.from_file(key[0]).to(device)
    return _CACHE[key]
