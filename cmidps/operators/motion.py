"""Random camera-shake (motion-blur) kernels of the reference family; kernel statistics; kernels from files.

The seed paper and the DPS code blur with the camera-shake kernels of LeviBorodenko/motionblur
(61x61, intensity ``I = 0.5``). That generator has no licence, so this module is written from its
*description* only (no code of it is used). The model, with ``n`` the kernel size and
``D = n sqrt(2)`` its diagonal (all lengths in kernel pixels):

1. Path length ``L = 0.75 D (U(0, 1) + U(0, I^2))`` (at least 3 px: a departure, below).
2. Step lengths ``ell_k = (1 - I + 0.1) D Beta(1, 30)`` drawn until their sum reaches ``L`` (a
   step of ``L`` or more is discarded).
3. Headings (absolute directions, not turns): a cone half-angle ``A ~ U(0, I pi)`` and a
   sign-flip probability ``p ~ Beta(2, 20)``; ``theta_1 ~ U(-A, A)``, then
   ``|theta_k| ~ Triangular(0, I A, A + 0.1)`` with the sign of ``theta_{k-1}``, flipped with
   probability ``p``. So the path zig-zags inside a cone: near-straight strokes with kinks. At
   ``I = 0`` every heading is 0 (linear motion).
4. The polyline through the vertices ``v_k = sum_{j <= k} ell_j e^{i theta_j}``, ``k = 1 .. M``
   (the origin is not a vertex, so the first step is not drawn); the mean of the vertices is put on
   the kernel centre and the path is rotated by ``U(0, pi)``.
5. Rendered as an 8-bit grey image: painted with value 255 as a line ``max(1, floor(2 D / 150)) / 2``
   px wide (0.5 px up to ``n = 106``) at twice the resolution (a pixel is painted if its centre lies
   on the stroke; overlaps do not add up), a Gaussian blur of std ``floor(0.02 D) / 2`` px (0.5 px at
   ``n = 61``, none below ``n = 36``) rounded to integers, a Lanczos-3 downsizing to ``n x n``
   rounded to integers in [0, 255]; normalised to sum 1.

Departures from the original, none of which changes the statistics (docs/presets.md) beyond sampling
noise: a pixel is painted by the distance of its centre to the path rather than by a line-drawing
routine, and the blur is an exact Gaussian; every draw comes from the given ``torch.Generator``; a
one-step path is painted as a dot; the path and its drawn part (without the first step) are at least
3 kernel px long (``MIN_PATH_LENGTH``: steps are drawn until both sums reach it). The original has
no floor, so about 1% of its 61x61 paths but a fifth of its 9x9 ones are shorter, which makes those
kernels nearly a delta (an almost trivial deblurring task); at 61x61 the floor moves no statistic.
The resolution is 2x the kernel (as the original) for ``n >= 32`` and ``ceil(64 / n)`` x below, so
that small kernels (the 9x9 of the ``small`` preset, painted at 72x72, a 4 px wide line, no blur)
are smooth strokes rather than a few aliased pixels; the model is the same in kernel pixels at every
size. A kernel is drawn again (from the same generator) in the rare case that nothing of its path
falls on the canvas.

cmidps *convolves* with a kernel while the DPS code *correlates* with it (``nn.Conv2d``), which
rotates the kernel by 180 degrees. That leaves the family as it is, up to the path's end steps: the
180-degree rotation of a path is the same set of points as the path with its steps in reverse order,
which the model draws as likely but for its first step (undrawn, its heading uniform in the cone).
So no flip is applied here. A kernel taken from a file "as the DPS code uses it" must be flipped:
:func:`load_kernel` with ``flip=True``.

:func:`kernel_statistics` gives the three figures by which the families are compared (docs/presets.md,
``scripts/kernel_stats.py``).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

DT = torch.float64
_ANGLE_EPS = 0.1  # rad, widens the support of the heading law (the description's "eps")
MIN_PATH_LENGTH = 3.0  # kernel px; the original has none (see the module doc)


# -------------------------------------------------------------------------------- random draws
def _rand(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=DT)


def _beta_1b(u: torch.Tensor, b: float) -> torch.Tensor:
    """Beta(1, b) by its inverse CDF ``1 - (1 - u)^(1/b)``."""
    return 1.0 - (1.0 - u) ** (1.0 / b)


def _beta_int(a: int, b: int, generator: torch.Generator | None) -> float:
    """Beta(a, b) for integer a, b: ``G_a / (G_a + G_b)`` with ``G_k = -sum_k log U`` ~ Gamma(k)."""
    e = -torch.log1p(-_rand(generator, a + b))
    return float(e[:a].sum() / e.sum())


def _triangular(u: torch.Tensor, mode: float, right: float) -> torch.Tensor:
    """Triangular(0, mode, right) by its inverse CDF."""
    c = mode / right
    return torch.where(u < c, torch.sqrt(u * right * mode), right - torch.sqrt((1 - u) * right * (right - mode)))


def step_lengths(length: float, scale: float, generator: torch.Generator | None, min_drawn: float = 0.0) -> torch.Tensor:
    """Steps ``scale * Beta(1, 30)`` (those ``>= length`` discarded) until their sum reaches ``length``
    and the sum of all but the first (the drawn part of the path) reaches ``min_drawn``."""
    chunk = int(min(4096, 16 + 1.5 * length * 31 / scale))
    steps = torch.zeros(0, dtype=DT)
    while True:
        new = scale * _beta_1b(_rand(generator, chunk), 30.0)
        steps = torch.cat([steps, new[new < length]])
        if len(steps):
            total = torch.cumsum(steps, 0)
            done = torch.nonzero((total >= length) & (total - steps[0] >= min_drawn)).flatten()
            if len(done):
                return steps[: int(done[0]) + 1]


def headings(num: int, intensity: float, generator: torch.Generator | None) -> torch.Tensor:
    """Step 3 of the module doc: ``num`` absolute headings zig-zagging inside a random cone."""
    half_angle = math.pi * intensity * float(_rand(generator))
    flip_prob = _beta_int(2, 20, generator)
    first = half_angle * (2 * _rand(generator, 1) - 1)
    size = _triangular(_rand(generator, num - 1), intensity * half_angle, half_angle + _ANGLE_EPS)
    flips = (_rand(generator, num - 1) < flip_prob).to(DT)
    sign = torch.sign(first) * (-1.0) ** torch.cumsum(flips, 0)
    return torch.cat([first, sign * size])


def shake_path(kernel_size: int, intensity: float, generator: torch.Generator | None) -> torch.Tensor:
    """Steps 1-4 of the module doc: the vertices ``(M, 2)`` (row, column) of a camera-shake path in
    kernel pixels, continuous coordinates (pixel ``i`` covers ``[i, i + 1)``), centred on the kernel."""
    diag = kernel_size * math.sqrt(2.0)
    u = _rand(generator, 2)
    length = 0.75 * diag * float(u[0] + intensity**2 * u[1])
    length = max(length, MIN_PATH_LENGTH)
    steps = step_lengths(length, (1.0 - intensity + _ANGLE_EPS) * diag, generator, MIN_PATH_LENGTH)
    theta = headings(len(steps), intensity, generator)
    z = torch.cumsum(steps * torch.exp(1j * theta), 0)  # the vertices v_1 .. v_M (v_0 = 0 is not one)
    z = (z - z.mean()) * torch.exp(torch.tensor(1j * math.pi * float(_rand(generator)), dtype=torch.complex128))
    return torch.stack([z.imag, z.real], dim=1) + kernel_size / 2


# -------------------------------------------------------------------------------------- rendering
def paint_stroke(vertices: torch.Tensor, size: int, width: float) -> torch.Tensor:
    """A polyline painted ``width`` px wide on a ``size x size`` canvas: 1 at the pixels whose centre
    lies within ``width / 2`` of the polyline, else 0 (a painted line: no antialiasing, overlapping
    parts of the stroke do not add up)."""
    reach = width / 2
    lo = (vertices.min(0).values - reach).floor().clamp(0, size).long().tolist()
    hi = (vertices.max(0).values + reach).ceil().clamp(0, size).long().tolist()
    out = torch.zeros(size, size, dtype=DT)
    if hi[0] <= lo[0] or hi[1] <= lo[1]:
        return out
    rows = torch.arange(lo[0], hi[0], dtype=DT) + 0.5
    cols = torch.arange(lo[1], hi[1], dtype=DT) + 0.5
    pr = rows[:, None].expand(len(rows), len(cols)).reshape(-1, 1)
    pc = cols[None, :].expand(len(rows), len(cols)).reshape(-1, 1)
    if len(vertices) == 1:
        vertices = torch.cat([vertices, vertices])
    dist2 = torch.full((len(pr),), math.inf, dtype=DT)
    chunk = max(8, 2**21 // len(pr))  # segments per pass: at most ~2M (pixel, segment) pairs
    for s in range(0, len(vertices) - 1, chunk):  # segments a -> b
        a, b = vertices[s : s + chunk], vertices[s + 1 : s + chunk + 1]
        a = a[: len(b)]
        ar, ac = a[:, 0], a[:, 1]
        br, bc = b[:, 0] - ar, b[:, 1] - ac
        t = ((pr - ar) * br + (pc - ac) * bc) / (br * br + bc * bc).clamp_min(1e-24)
        t = t.clamp(0, 1)
        d2 = (pr - ar - t * br) ** 2 + (pc - ac - t * bc) ** 2
        dist2 = torch.minimum(dist2, d2.min(1).values)
    out[lo[0] : hi[0], lo[1] : hi[1]] = (dist2 <= reach * reach).to(DT).view(len(rows), len(cols))
    return out


def _lanczos3(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() < 3, torch.sinc(x) * torch.sinc(x / 3), torch.zeros_like(x))


@functools.lru_cache(maxsize=8)
def render_matrices(n: int, factor: int, blur_std: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(G, W)``: the ``(factor n)^2`` Gaussian blur of std ``blur_std`` fine px (zero outside the
    canvas; ``None`` for no blur) and the ``(n, factor n)`` Lanczos-3 downsizing by ``factor`` (rows
    normalised, as an image resize does); an image ``C`` becomes ``G C G^T``, then ``W C W^T``.
    Cached: do not modify the results."""
    fine = torch.arange(factor * n, dtype=DT) + 0.5
    coarse = (torch.arange(n, dtype=DT) + 0.5) * factor
    down = _lanczos3((fine[None, :] - coarse[:, None]) / factor)
    down = down / down.sum(1, keepdim=True)
    if blur_std <= 0:
        return None, down
    blur = torch.exp(-0.5 * ((fine[:, None] - fine[None, :]) / blur_std) ** 2)
    return blur / blur.sum(1, keepdim=True).max(), down


def render_kernel(vertices: torch.Tensor, n: int, factor: int, width: float, blur_std: float) -> torch.Tensor:
    """Step 5 of the module doc: the path (kernel px) painted at ``factor`` x resolution with value 255,
    blurred and rounded to integers, downsized to ``n x n`` and rounded to integers in [0, 255]
    (the original's kernels are 8-bit grey images). Not normalised."""
    blur, down = render_matrices(n, factor, float(blur_std))
    canvas = 255.0 * paint_stroke(vertices * factor, factor * n, width)
    if blur is not None:
        canvas = (blur @ canvas @ blur.T).round()
    return (down @ canvas @ down.T).round().clamp(0.0, 255.0) + 0.0  # + 0.0: no -0.0 entries


def motion_kernel(
    kernel_size: int,
    intensity: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random camera-shake blur kernel of the reference family (module doc):
    ``(kernel_size, kernel_size)`` float64, >= 0, summing to 1. ``intensity`` in [0, 1]: 0 is a
    straight stroke, 1 a long, erratic one."""
    if kernel_size < 3:
        raise ValueError(f"kernel_size must be >= 3, got {kernel_size}")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must lie in [0, 1], got {intensity}")
    n = int(kernel_size)
    factor = 2 if n >= 32 else math.ceil(64 / n)
    diag2 = 2 * n * math.sqrt(2.0)  # the diagonal of the original's 2x canvas, in its pixels
    width = max(1, math.floor(diag2 / 150)) * factor / 2
    blur_std = math.floor(0.01 * diag2) * factor / 2
    while True:
        k = render_kernel(shake_path(n, intensity, generator), n, factor, width, blur_std)
        total = float(k.sum())
        if total > 0:
            return k / total


# --------------------------------------------------------------------------------------- statistics
def kernel_statistics(kernel, fft_size: int = 256, extent_rel: float = 0.05, zero_rtol: float = 1e-3) -> dict:
    """The figures by which motion-kernel families are compared (issue 9, docs/presets.md):

    * ``elongation``: ``sqrt(lambda_max / lambda_min)`` of the kernel's second central moment (the
      covariance of ``k`` as a distribution over pixel positions), the ratio of its principal axes;
    * ``extent``: ``max(height, width)`` in px of the bounding box of the pixels above
      ``extent_rel`` (5%) of the kernel's maximum;
    * ``near_zero``: the share of the ``fft_size x fft_size`` DFT coefficients of the zero-padded
      kernel (256: the paper's image size) with ``|K^| < zero_rtol max |K^|``, as a fraction.
    """
    k = torch.as_tensor(kernel, dtype=DT)
    k = k / k.sum()
    h, w = k.shape
    r = torch.arange(h, dtype=DT)[:, None].expand(h, w)
    c = torch.arange(w, dtype=DT)[None, :].expand(h, w)
    mr, mc = (k * r).sum(), (k * c).sum()
    cov = torch.stack([
        torch.stack([(k * (r - mr) ** 2).sum(), (k * (r - mr) * (c - mc)).sum()]),
        torch.stack([(k * (r - mr) * (c - mc)).sum(), (k * (c - mc) ** 2).sum()]),
    ])
    lo, hi = torch.linalg.eigvalsh(cov)
    elongation = math.sqrt(float(hi) / float(lo)) if float(lo) > 0 else math.inf
    above = k > extent_rel * k.max()
    rows = torch.nonzero(above.any(1)).flatten()
    cols = torch.nonzero(above.any(0)).flatten()
    extent = max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    spectrum = torch.fft.fft2(k, s=(max(fft_size, h), max(fft_size, w))).abs()
    near_zero = float((spectrum < zero_rtol * spectrum.max()).to(DT).mean())
    return {"elongation": elongation, "extent": extent, "near_zero": near_zero}


# ---------------------------------------------------------------------------------- kernels from files
def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("L", "I", "I;16", "F"):
            return np.asarray(im, dtype=np.float64)
        if im.mode in ("RGB", "RGBA", "LA", "P"):
            rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
            if im.mode in ("RGBA", "LA") and np.asarray(im.getchannel("A")).min() < 255:
                raise ValueError(f"{path}: a kernel image must be opaque (its alpha channel is not)")
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise ValueError(f"{path}: a kernel image must be greyscale (its colour channels differ)")
            return rgb[..., 0]
        raise ValueError(f"{path}: unsupported PNG mode {im.mode!r} for a kernel")


def load_kernel(path, flip: bool = False) -> torch.Tensor:
    """A blur kernel from a ``.npy`` array or a greyscale ``.png``: float64, normalised to sum 1.

    The kernel must be 2-D (leading axes of size 1 are dropped, e.g. ``(1, 1, h, w)``) with odd
    height and width (its centre pixel is the origin of the convolution), finite, non-negative,
    not all zero and of a size whose sum float64 holds (1e308s would overflow to a kernel of zeros);
    any other input raises ``ValueError`` saying what is wrong. ``flip=True`` rotates it by 180
    degrees: cmidps convolves, the DPS code correlates (``nn.Conv2d``), so a kernel given as the DPS
    code uses it becomes the same blur in cmidps with ``flip=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"kernel file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from None
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise ValueError(f"{path}: a kernel must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    elif suffix == ".png":
        try:
            arr = _read_png(path)
        except ValueError:
            raise
        except Exception as exc:  # PIL raises its own error types for a broken file
            raise ValueError(f"{path}: not a readable PNG image ({exc})") from None
    else:
        raise ValueError(f"{path}: a kernel file must be .npy or .png, got {suffix or 'no extension'!r}")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{path}: a kernel must be 2-D, got shape {tuple(arr.shape)}")
    h, w = arr.shape
    if h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"{path}: a kernel needs odd height and width (a centre pixel), got {h}x{w}; "
                         "pad it with a row/column of zeros on the side that centres it")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: the kernel has non-finite values")
    if arr.min() < 0:
        raise ValueError(f"{path}: the kernel has negative values (min {arr.min():.3g})")
    with np.errstate(over="ignore", under="ignore"):
        total = arr.sum()
    if total <= 0:
        raise ValueError(f"{path}: the kernel sums to zero")
    if not np.isfinite(total):  # e.g. values of 1e308: the sum overflows and arr / inf would be all zeros
        raise ValueError(f"{path}: the kernel's values are too large to add up in float64 (max {arr.max():.3g}); "
                         f"scale it down (it is normalised to sum 1 anyway)")
    k_arr = arr / total
    if not (np.isfinite(k_arr).all() and abs(k_arr.sum() - 1.0) < 1e-6):  # a sum of denormals: arr / total overflows
        raise ValueError(f"{path}: the kernel's values are too small to normalise in float64 (sum {total:.3g}); "
                         f"scale it up")
    k = torch.from_numpy(k_arr)
    return torch.flip(k, (0, 1)) if flip else k
