"""Random camera-shake (motion-blur) kernels.

Written for this project from the description used in the DPS experiments (the original
generator has no licence, so none of its code is used):

1. A camera-shake path is drawn on a canvas twice the kernel size. It is a random walk with
   inertia: the heading turns with an angular velocity that itself follows an AR(1) process
   (momentum), the speed fluctuates, and a little positional jitter is added. ``intensity`` in
   [0, 1] scales the turning, the speed fluctuation, the jitter and the path length: at 0 the
   path is a straight line (linear motion), at 1 it is long and erratic.
2. The path is rescaled so that its extent is a random fraction of the canvas (growing with the
   intensity), centred, and rasterised with bilinear splatting at equal time steps (the camera
   dwells longer where it moves slowly, so those pixels get more weight).
3. The canvas is blurred slightly (Gaussian, std 0.7 canvas px), downsized by 2 (2x2 average
   pooling) to ``kernel_size``, and normalised to sum 1.

Everything is drawn from the ``torch.Generator`` given, so a seed fixes the kernel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _randn(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(n, generator=generator, dtype=torch.float64)


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def shake_path(num_steps: int, intensity: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random-walk-with-inertia camera path: ``(num_steps + 1, 2)`` points, unnormalised scale.

    heading_{k+1} = heading_k + omega_k,   omega_{k+1} = 0.9 omega_k + 0.12 * intensity * n_k
    speed_k = exp(0.5 * intensity * m_k) with m_k smoothed noise,  p_{k+1} = p_k + speed_k (cos, sin)
    plus positional jitter of std 0.15 * intensity (in units of a step).
    """
    heading0 = 2 * math.pi * _rand(1, generator)
    turn_noise = _randn(num_steps, generator)
    speed_noise = _randn(num_steps, generator)
    jitter = _randn(2 * (num_steps + 1), generator).view(num_steps + 1, 2)

    omega = torch.zeros(num_steps, dtype=torch.float64)
    log_speed = torch.zeros(num_steps, dtype=torch.float64)
    w = 0.0
    s = 0.0
    for k in range(num_steps):  # AR(1) processes: inertia of the turning rate and of the speed
        w = 0.9 * w + 0.12 * intensity * float(turn_noise[k])
        s = 0.8 * s + 0.6 * intensity * float(speed_noise[k])
        omega[k] = w
        log_speed[k] = s
    heading = heading0 + torch.cumsum(omega, 0)
    speed = torch.exp(log_speed)
    steps = speed[:, None] * torch.stack([torch.cos(heading), torch.sin(heading)], dim=1)
    path = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.cumsum(steps, 0)])
    return path + 0.15 * intensity * jitter


def _splat(points: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear splatting of unit-weight points ``(n, 2)`` (row, col) onto a ``size x size`` canvas."""
    canvas = torch.zeros(size * size, dtype=torch.float64)
    base = torch.floor(points)
    frac = points - base
    base = base.long()
    for dr in (0, 1):
        for dc in (0, 1):
            wr = frac[:, 0] if dr else 1 - frac[:, 0]
            wc = frac[:, 1] if dc else 1 - frac[:, 1]
            r = base[:, 0] + dr
            c = base[:, 1] + dc
            inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
            canvas.index_add_(0, (r * size + c)[inside], (wr * wc)[inside])
    return canvas.view(size, size)


def _gaussian_blur(img: torch.Tensor, std: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * std)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / std) ** 2)
    g = g / g.sum()
    x = img[None, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0)), g.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius)), g.view(1, 1, -1, 1))
    return x[0, 0]


def motion_kernel(
    kernel_size: int,
    intensity: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random camera-shake blur kernel: ``(kernel_size, kernel_size)`` float64, >= 0, sums to 1.

    ``intensity`` in [0, 1] controls how erratic and how long the shake is (see the module doc).
    """
    if kernel_size < 3:
        raise ValueError(f"kernel_size must be >= 3, got {kernel_size}")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must lie in [0, 1], got {intensity}")
    canvas = 2 * kernel_size
    num_steps = 2 * canvas
    path = shake_path(num_steps, intensity, generator)

    # Extent of the blur: a random fraction of the usable canvas, longer for larger intensity.
    usable = canvas - 4.0
    fraction = (0.35 + 0.45 * intensity) * (0.6 + 0.4 * float(_rand(1, generator)))
    extent = (path.max(0).values - path.min(0).values).max().clamp_min(1e-12)
    path = path * (fraction * usable / extent)
    # Centre the bounding box on the kernel centre (canvas pixels 2c, 2c+1 pool onto pixel c).
    centre = 2 * (kernel_size // 2) + 0.5
    path = path - (path.max(0).values + path.min(0).values) / 2 + centre

    # Sample the path at equal times, densely enough (<= 0.25 px apart) for a continuous stroke.
    seg = path[1:] - path[:-1]
    sub = max(1, int(math.ceil(float(seg.norm(dim=1).max()) / 0.25)))
    t = torch.arange(sub, dtype=torch.float64) / sub
    points = (path[:-1, None, :] + t[None, :, None] * seg[:, None, :]).reshape(-1, 2)
    points = torch.cat([points, path[-1:]])

    img = _splat(points, canvas)
    img = _gaussian_blur(img, 0.7)
    k = F.avg_pool2d(img[None, None], 2)[0, 0]
    k = k.clamp_min(0.0)
    return k / k.sum()
