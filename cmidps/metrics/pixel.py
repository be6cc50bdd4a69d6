"""PSNR and SSIM, per image, on (B, C, H, W) tensors.

Conventions (matched to scikit-image, tested against it):

* ``psnr(x, ref)`` = ``skimage.metrics.peak_signal_noise_ratio(ref, x, data_range=data_range)``: the
  mean squared error over all of C, H, W of one image; ``inf`` where the images are equal.
* ``ssim(x, ref)`` = ``skimage.metrics.structural_similarity(x, ref, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=data_range, channel_axis=0)``: an 11x11 Gaussian window
  (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population (biased) local variances, the
  SSIM map averaged over the interior where the window fits (scikit-image crops 5 px of each border,
  which is exactly where its reflect padding would enter) and then over channels.
  Images must be at least 11x11. Computed in float64, differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import as_images

__all__ = ["psnr", "ssim"]


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    as_images(x, "x")
    as_images(ref, "ref")
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image, shape (B,)."""
    _check_pair(x, ref)
    mse = (x.double() - ref.double()).square().flatten(1).mean(1)
    out = 10.0 * torch.log10(float(data_range) ** 2 / mse)
    return out.to(x.dtype)


def _gaussian_window(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each image (mean over channels), shape (B,). See the module docstring."""
    _check_pair(x, ref)
    B, C, H, W = x.shape
    w = _gaussian_window(sigma, 3.5, torch.float64, x.device)
    n = w.numel()
    if H < n or W < n:
        raise ValueError(f"ssim needs images of at least {n}x{n} pixels (the Gaussian window), got {H}x{W}")
    a = x.double().reshape(B * C, 1, H, W)
    b = ref.double().reshape(B * C, 1, H, W)
    wh = w.view(1, 1, n, 1)
    ww = w.view(1, 1, 1, n)

    def filt(z):  # separable 'valid' Gaussian filter
        return F.conv2d(F.conv2d(z, wh), ww)

    stack = filt(torch.cat([a, b, a * a, b * b, a * b], dim=1).reshape(-1, 1, H, W))
    stack = stack.reshape(B * C, 5, H - n + 1, W - n + 1)
    ux, uy, uxx, uyy, uxy = stack.unbind(1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(B, C, -1).mean(dim=(1, 2)).to(x.dtype)
