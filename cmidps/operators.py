"""Linear measurement operators ``y = A x`` with true adjoints, pseudo-inverses and K-solves.

Every operator is a :class:`torch.nn.Module` whose masks / kernels / matrices are buffers (they move
with ``.to(device)``). Buffers are built and kept in float64; each method casts them to the dtype and
device of its input, so one operator serves float32 sampling and float64 tests alike.

Shapes: ``A`` maps ``(B, *x_shape) -> (B, *y_shape)``. For images ``x_shape = (C, H, W)``; for the
vector benchmark ``x_shape = (d,)``.

Besides ``A`` and ``A_adjoint`` (``<A x, y> = <x, A^T y>`` exactly, up to rounding) each operator has
``A_pinv`` (the Moore-Penrose pseudo-inverse ``A^+``; for circular blurs a truncated one, see
:class:`CircularBlur`) and ``solve_K(v, r2, s2) = (s2 I + r2 A A^T)^{-1} v`` for ``v`` in measurement
space, in closed form. ``r2`` and ``s2`` are Python floats or ``(B,)`` tensors (one per batch element).
Where ``s2 + r2 * lambda = 0`` (``s2 = 0`` on the null space of ``A A^T``) the closed forms put 0,
i.e. they return the pseudo-inverse solution in the range of ``A``; for ``v`` in the range of ``A``
that is the exact solution. :meth:`LinearOperator.cg_solve_K` solves the same system by conjugate
gradients (fallback, and the tests' cross-check).

Tasks (``make_operator``): random inpainting, box inpainting, Gaussian deblurring, motion deblurring,
4x bicubic super-resolution; plus :class:`DenseOperator` for the vector benchmark.
"""
from __future__ import annotations

import math

import torch

from .linalg import batched_cg

from .motion import motion_kernel

Tensor = torch.Tensor
Scalar = float | Tensor


# --------------------------------------------------------------------------------------------- helpers
def _per_sample(value: Scalar, like: Tensor) -> Tensor:
    """A float or a ``(B,)`` tensor as a tensor broadcastable against ``like`` (``(B, ...)``)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.numel() == 1 and t.ndim <= 1:
        return t.reshape(())
    if t.shape != (like.shape[0],):
        raise ValueError(f"per-sample values must have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (like.ndim - 1)))


def _safe_reciprocal(den: Tensor) -> Tensor:
    """``1 / den`` where ``den != 0``, else 0 (the pseudo-inverse of a diagonal)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(den), 1.0 / torch.where(zero, torch.ones_like(den), den))


# ----------------------------------------------------------------------------------------- base class
class LinearOperator(torch.nn.Module):
    """A linear map ``A: R^{x_shape} -> R^{y_shape}`` applied to batches.

    Subclasses implement :meth:`A` and :meth:`A_adjoint` and, where they can, closed forms of
    :meth:`A_pinv` and :meth:`solve_K`. The base class falls back to conjugate gradients:
    ``A^+ y = A^T (A A^T)^+ y`` and ``solve_K`` by :meth:`cg_solve_K`.
    """

    def __init__(self, x_shape: tuple[int, ...], y_shape: tuple[int, ...]):
        super().__init__()
        self.x_shape = tuple(int(s) for s in x_shape)
        self.y_shape = tuple(int(s) for s in y_shape)

    def _buf(self, name: str, like: Tensor) -> Tensor:
        """Buffer ``name`` cast to the dtype and device of ``like``."""
        return getattr(self, name).to(dtype=like.dtype, device=like.device)

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def A_pinv(self, y: Tensor) -> Tensor:
        """Generic ``A^+ y = A^T (A A^T)^+ y`` (CG; exact for ``y`` in the range of ``A``)."""
        return self.A_adjoint(self.cg_solve_K(y, 1.0, 0.0))

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        """``(s2 I + r2 A A^T)^{-1} v``; generic fallback by conjugate gradients."""
        return self.cg_solve_K(v, r2, s2)

    def cg_solve_K(
        self, v: Tensor, r2: Scalar, s2: Scalar, tol: float | None = None, maxiter: int = 500
    ) -> Tensor:
        """Conjugate gradients on ``(s2 I + r2 A A^T) u = v``, independently per batch element.

        Stops when every residual satisfies ``||r_b|| <= tol * ||v_b||`` or after ``maxiter``
        iterations (``tol=None``: 1e-10 in float64, 1e-5 in lower precision). The system matrix is symmetric positive (semi-)definite; with ``s2 = 0`` and a
        singular ``A A^T`` it converges for ``v`` in the range of ``A`` (to the minimum-norm solution).
        """
        if tol is None:
            tol = 1e-10 if v.dtype == torch.float64 else 1e-5
        r2_ = _per_sample(r2, v)
        s2_ = _per_sample(s2, v)

        def K(u: Tensor) -> Tensor:
            return s2_ * u + r2_ * self.A(self.A_adjoint(u))

        return batched_cg(K, v, tol=tol, maxiter=maxiter)

    def extra_repr(self) -> str:
        return f"x_shape={self.x_shape}, y_shape={self.y_shape}"


# ------------------------------------------------------------------------------------------ inpainting
class MaskOperator(LinearOperator):
    """``A = diag(mask)``: keep the pixels where ``mask = 1``, zero the others.

    Representation: ``y`` has the shape of ``x``, with zeros at the masked pixels (as in the DPS
    code, so that ``y`` is an image). ``mask`` has shape ``(1, H, W)`` and is shared by all channels.
    Then ``A^T = A = A^+ = diag(mask)`` (an orthogonal projection) and ``A A^T = diag(mask)``, so

        (s2 I + r2 A A^T)^{-1} v = v / (s2 + r2 mask).

    ``A A^T`` is singular: with ``s2 = 0`` the masked entries get 0, i.e. measurement space is
    treated as the range of ``A`` (the masked entries of any ``y = A x + A n`` are 0 anyway). With
    ``s2 > 0`` the masked entries of ``v`` are divided by ``s2``, the exact inverse on the full space.
    """

    def __init__(self, x_shape: tuple[int, ...], mask: Tensor):
        super().__init__(x_shape, x_shape)
        C, H, W = self.x_shape
        mask = torch.as_tensor(mask, dtype=torch.float64)
        if mask.shape != (H, W):
            raise ValueError(f"mask must have shape {(H, W)}, got {tuple(mask.shape)}")
        self.register_buffer("mask", mask[None].clone())

    def A(self, x: Tensor) -> Tensor:
        return x * self._buf("mask", x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y * self._buf("mask", y)

    def A_pinv(self, y: Tensor) -> Tensor:
        return y * self._buf("mask", y)

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        den = _per_sample(s2, v) + _per_sample(r2, v) * self._buf("mask", v)
        return v * _safe_reciprocal(den)

    @property
    def masked_fraction(self) -> float:
        return 1.0 - float(self.mask.mean())


def _image_shape(x_shape) -> tuple[int, int, int]:
    if len(x_shape) != 3:
        raise ValueError(f"image operators need x_shape = (C, H, W), got {tuple(x_shape)}")
    return tuple(int(s) for s in x_shape)


class RandomInpainting(MaskOperator):
    """Random inpainting: ``int(H * W * fraction_masked)`` pixel positions masked on every channel.

    The positions are the first entries of a random permutation drawn from ``generator``.
    """

    def __init__(self, x_shape, fraction_masked: float = 0.9, generator: torch.Generator | None = None):
        C, H, W = _image_shape(x_shape)
        if not 0.0 <= fraction_masked < 1.0:
            raise ValueError(f"fraction_masked must lie in [0, 1), got {fraction_masked}")
        n_masked = int(H * W * fraction_masked)
        mask = torch.ones(H * W, dtype=torch.float64)
        mask[torch.randperm(H * W, generator=generator)[:n_masked]] = 0.0
        super().__init__((C, H, W), mask.view(H, W))
        self.fraction_masked = fraction_masked


class BoxInpainting(MaskOperator):
    """Box inpainting: a ``box_size x box_size`` box masked (all channels).

    Its top-left corner is drawn uniformly so that the box is at least ``margin`` pixels from every
    border: ``top in [margin, H - margin - box_size]`` (inclusive), likewise ``left``.
    """

    def __init__(self, x_shape, box_size: int = 128, margin: int = 16, generator: torch.Generator | None = None):
        C, H, W = _image_shape(x_shape)
        if box_size < 1 or margin < 0 or box_size + 2 * margin > min(H, W):
            raise ValueError(
                f"a {box_size}x{box_size} box with margin {margin} does not fit in a {H}x{W} image "
                f"(need box_size + 2 * margin <= {min(H, W)})"
            )
        top = int(torch.randint(margin, H - margin - box_size + 1, (1,), generator=generator))
        left = int(torch.randint(margin, W - margin - box_size + 1, (1,), generator=generator))
        mask = torch.ones(H, W, dtype=torch.float64)
        mask[top : top + box_size, left : left + box_size] = 0.0
        super().__init__((C, H, W), mask)
        self.box = (top, left, box_size)


# -------------------------------------------------------------------------------------- circular blur
class CircularBlur(LinearOperator):
    """Depthwise circular (periodic) convolution with a real kernel ``k``, the same on every channel.

        (A x)[i, j] = sum_{a, b} k[a, b] x[(i + c_h - a) mod H, (j + c_w - b) mod W],

    with ``(c_h, c_w) = (kh // 2, kw // 2)`` the kernel centre. Periodic boundaries make the 2-D DFT
    diagonalise ``A``: ``A = F^{-1} diag(K_hat) F`` with ``K_hat`` the DFT of the centred, zero-padded
    kernel. Hence ``A^T = F^{-1} diag(conj K_hat) F`` (correlation with ``k``, i.e. convolution with
    the flipped kernel) and ``A A^T = F^{-1} diag(|K_hat|^2) F``, so

        solve_K:  (s2 I + r2 A A^T)^{-1} v = F^{-1} [ F v / (s2 + r2 |K_hat|^2) ],
        A_pinv:   A^+ y = F^{-1} [ F y / K_hat  where |K_hat| > pinv_rtol * max|K_hat|, else 0 ].

    The pseudo-inverse is *truncated*: a Gaussian blur's smallest Fourier coefficients are tiny
    (down to ~1e-100 for std 5 on 256 px), so the exact ``A^+`` would amplify noise and rounding
    without bound. With the default ``pinv_rtol = 1e-3`` the frequencies attenuated below 1e-3
    are dropped; ``A^+ A A^+ = A^+`` and the symmetry conditions hold exactly, ``A A^+ A = A`` up to
    the dropped components (exactly when no coefficient falls below the cutoff). ``pinv_rtol = 0``
    gives the exact pseudo-inverse (only exact zeros dropped).

    Note: the DPS code convolves with reflect padding; we use circular padding so that the adjoint,
    the inverse and ``solve_K`` are exact and cheap. The two differ only near the borders.
    """

    def __init__(self, x_shape, kernel: Tensor, pinv_rtol: float = 1e-3):
        C, H, W = _image_shape(x_shape)
        super().__init__((C, H, W), (C, H, W))
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        kh, kw = kernel.shape
        if kh > H or kw > W:
            raise ValueError(f"a {kh}x{kw} kernel is larger than the {H}x{W} image")
        padded = torch.zeros(H, W, dtype=torch.float64)
        padded[:kh, :kw] = kernel
        padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
        self.register_buffer("kernel", kernel.clone())
        self.register_buffer("kernel_padded", padded)  # centre of the kernel at (0, 0)
        self.pinv_rtol = float(pinv_rtol)

    def _spectrum(self, like: Tensor) -> Tensor:
        """``K_hat`` on the real-FFT grid ``(H, W // 2 + 1)``, complex of ``like``'s precision."""
        return torch.fft.rfft2(self._buf("kernel_padded", like))

    def _apply_spectral(self, x: Tensor, multiplier: Tensor) -> Tensor:
        H, W = self.x_shape[-2:]
        return torch.fft.irfft2(torch.fft.rfft2(x) * multiplier, s=(H, W))

    def A(self, x: Tensor) -> Tensor:
        return self._apply_spectral(x, self._spectrum(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._apply_spectral(y, self._spectrum(y).conj())

    def A_pinv(self, y: Tensor) -> Tensor:
        K = self._spectrum(y)
        mag = K.abs()
        keep = mag > self.pinv_rtol * mag.max()
        inv = torch.where(keep, 1.0 / torch.where(keep, K, torch.ones_like(K)), torch.zeros_like(K))
        return self._apply_spectral(y, inv)

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        power = self._spectrum(v).abs() ** 2  # (H, W//2+1), eigenvalues of A A^T
        den = _per_sample(s2, v) + _per_sample(r2, v) * power
        return self._apply_spectral(v, _safe_reciprocal(den))


def gaussian_kernel(kernel_size: int, std: float) -> Tensor:
    """A ``kernel_size x kernel_size`` sampled Gaussian, ``exp(-(a^2 + b^2) / (2 std^2))``, summing to 1."""
    t = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-0.5 * (t / std) ** 2)
    k = g[:, None] * g[None, :]
    return k / k.sum()


class GaussianBlur(CircularBlur):
    """Circular Gaussian blur with a ``kernel_size x kernel_size`` kernel of standard deviation ``std``."""

    def __init__(self, x_shape, kernel_size: int = 61, std: float = 5.0, pinv_rtol: float = 1e-3):
        if kernel_size < 1 or std <= 0:
            raise ValueError(f"need kernel_size >= 1 and std > 0, got {kernel_size}, {std}")
        super().__init__(x_shape, gaussian_kernel(kernel_size, std), pinv_rtol)
        self.std = float(std)


class MotionBlur(CircularBlur):
    """Circular motion blur with a random camera-shake kernel (:func:`cmidps.motion.motion_kernel`)."""

    def __init__(
        self,
        x_shape,
        kernel_size: int = 61,
        intensity: float = 0.5,
        generator: torch.Generator | None = None,
        pinv_rtol: float = 1e-3,
    ):
        super().__init__(x_shape, motion_kernel(kernel_size, intensity, generator), pinv_rtol)
        self.intensity = float(intensity)


# ----------------------------------------------------------------------------------- super-resolution
def _cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = 1.5 * ax3 - 2.5 * ax2 + 1
    far = -0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2
    return torch.where(ax <= 1, near, torch.where(ax <= 2, far, torch.zeros_like(ax)))


def bicubic_matrix(in_size: int, factor: int) -> Tensor:
    """MATLAB ``imresize(..., 1/factor, 'bicubic')`` (antialiased) as an ``(in_size/factor, in_size)`` matrix.

    Output pixel ``i`` (0-based) is centred at input coordinate ``u = factor * i + (factor - 1) / 2``
    (pixel units, 0-based). Antialiasing widens the cubic kernel by ``factor``: the weight of input
    pixel ``j`` is ``cubic((u - j) / factor) / factor``, over the ``4 * factor + 2`` nearest pixels,
    normalised to sum 1 per output pixel. Indices outside ``[0, in_size)`` are mirrored
    (symmetric padding: ``-1 -> 0``, ``in_size -> in_size - 1``) and their weights folded in.
    """
    out_size = in_size // factor
    width = 4.0 * factor
    u = factor * torch.arange(out_size, dtype=torch.float64) + (factor - 1) / 2
    taps = int(math.ceil(width)) + 2
    left = torch.floor(u - width / 2)
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # (out, taps)
    w = _cubic((u[:, None] - idx) / factor) / factor
    w = w / w.sum(1, keepdim=True)
    period = torch.cat([torch.arange(in_size), torch.arange(in_size - 1, -1, -1)])
    mirrored = period[torch.remainder(idx.long(), 2 * in_size)]
    D = torch.zeros(out_size, in_size, dtype=torch.float64)
    D.scatter_add_(1, mirrored, w)
    return D


class SeparableOperator(LinearOperator):
    """``Y = D_h X D_w^T`` on every channel, with ``D_h: (h, H)`` and ``D_w: (w, W)``.

    As a matrix on ``vec(X)`` (row-major) ``A = D_h kron D_w``, so ``A^T Y = D_h^T Y D_w``,
    ``A^+ Y = D_h^+ Y (D_w^+)^T`` (the pseudo-inverse of a Kronecker product is the product of the
    pseudo-inverses) and, with the eigendecompositions ``D D^T = U diag(lam) U^T``,

        (s2 I + r2 A A^T)^{-1} V = U_h [ (U_h^T V U_w) / (s2 + r2 lam_h lam_w^T) ] U_w^T.
    """

    def __init__(self, x_shape, D_h: Tensor, D_w: Tensor):
        C, H, W = _image_shape(x_shape)
        D_h = torch.as_tensor(D_h, dtype=torch.float64)
        D_w = torch.as_tensor(D_w, dtype=torch.float64)
        if D_h.shape[1] != H or D_w.shape[1] != W:
            raise ValueError(f"D_h must be (h, {H}) and D_w (w, {W}); got {tuple(D_h.shape)}, {tuple(D_w.shape)}")
        super().__init__((C, H, W), (C, D_h.shape[0], D_w.shape[0]))
        for name, D in (("h", D_h), ("w", D_w)):
            lam, U = torch.linalg.eigh(D @ D.T)
            lam = torch.where(lam > lam.max() * D.shape[1] * 1e-15, lam, torch.zeros_like(lam))
            self.register_buffer(f"D_{name}", D.clone())
            self.register_buffer(f"pinv_{name}", torch.linalg.pinv(D))
            self.register_buffer(f"U_{name}", U)
            self.register_buffer(f"lam_{name}", lam)

    def A(self, x: Tensor) -> Tensor:
        return self._buf("D_h", x) @ x @ self._buf("D_w", x).T

    def A_adjoint(self, y: Tensor) -> Tensor:
        return self._buf("D_h", y).T @ y @ self._buf("D_w", y)

    def A_pinv(self, y: Tensor) -> Tensor:
        return self._buf("pinv_h", y) @ y @ self._buf("pinv_w", y).T

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        U_h, U_w = self._buf("U_h", v), self._buf("U_w", v)
        lam = self._buf("lam_h", v)[:, None] * self._buf("lam_w", v)[None, :]
        den = _per_sample(s2, v) + _per_sample(r2, v) * lam
        return U_h @ ((U_h.T @ v @ U_w) * _safe_reciprocal(den)) @ U_w.T


class SuperResolution(SeparableOperator):
    """``factor``-times bicubic downsampling, MATLAB ``imresize`` style with antialiasing.

    ``x_shape = (C, H, W)`` with ``H`` and ``W`` divisible by ``factor``; ``y_shape = (C, H/f, W/f)``.
    Downsampling a constant image gives the same constant (the rows of ``D`` sum to 1).
    """

    def __init__(self, x_shape, factor: int = 4):
        C, H, W = _image_shape(x_shape)
        if factor < 1 or H % factor or W % factor:
            raise ValueError(f"image size {H}x{W} must be divisible by the factor {factor}")
        super().__init__((C, H, W), bicubic_matrix(H, factor), bicubic_matrix(W, factor))
        self.factor = int(factor)


# ----------------------------------------------------------------------------------------------- dense
class DenseOperator(LinearOperator):
    """An explicit ``m x d`` matrix acting on vectors: ``(B, d) -> (B, m)``.

    With the full SVD ``A = U diag(s) V^T`` (``U`` is ``m x m``; ``lam = s^2`` padded with zeros to
    ``m``): ``A^+ = V diag(1/s) U^T`` over the singular values above ``rtol * s_max`` and
    ``(s2 I + r2 A A^T)^{-1} = U diag(1 / (s2 + r2 lam)) U^T``.
    """

    def __init__(self, matrix: Tensor, rtol: float | None = None):
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {tuple(matrix.shape)}")
        m, d = matrix.shape
        super().__init__((d,), (m,))
        U, s, Vh = torch.linalg.svd(matrix, full_matrices=True)
        rtol = max(m, d) * torch.finfo(torch.float64).eps if rtol is None else rtol
        s = torch.where(s > rtol * s.max(), s, torch.zeros_like(s))
        lam = torch.zeros(m, dtype=torch.float64)
        lam[: s.numel()] = s**2
        r = s.numel()
        pinv = Vh[:r].T @ torch.diag(_safe_reciprocal(s)) @ U[:, :r].T
        self.register_buffer("matrix", matrix.clone())
        self.register_buffer("pinv", pinv)
        self.register_buffer("U", U)
        self.register_buffer("lam", lam)

    def A(self, x: Tensor) -> Tensor:
        return x @ self._buf("matrix", x).T

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y @ self._buf("matrix", y)

    def A_pinv(self, y: Tensor) -> Tensor:
        return y @ self._buf("pinv", y).T

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        U = self._buf("U", v)
        den = _per_sample(s2, v) + _per_sample(r2, v) * self._buf("lam", v)
        return ((v @ U) * _safe_reciprocal(den)) @ U.T


# ------------------------------------------------------------------------------------ noise and tasks
def add_noise(y: Tensor, sigma_y: float, generator: torch.Generator | None = None) -> Tensor:
    """``y + sigma_y * n`` with ``n ~ N(0, I)`` drawn from ``generator``.

    The noise is drawn on the generator's device (so a CPU generator gives the same noise for a
    CUDA ``y``) and moved to ``y``'s device.
    """
    device = generator.device if generator is not None else y.device
    n = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=device)
    return y + sigma_y * n.to(y.device)


TASKS = ("inpaint_random", "inpaint_box", "deblur_gauss", "deblur_motion", "sr4")

TASK_DESCRIPTIONS = {
    "inpaint_random": "random inpainting: a random set of pixels masked (90% for 'paper'), same on all channels",
    "inpaint_box": "box inpainting: one square box masked (128x128 at least 16 px from the border for 'paper')",
    "deblur_gauss": "Gaussian deblurring, circular convolution (61x61, std 5.0 for 'paper', 3.0 for 'dps')",
    "deblur_motion": "motion deblurring, circular convolution with a random camera-shake kernel (61x61, intensity 0.5)",
    "sr4": "4x super-resolution: MATLAB-style antialiased bicubic downsampling",
}

PRESETS = ("paper", "dps", "small")

# Preset parameters.
# "paper": the paper's settings for 256x256 images (Table I).
# "dps":   as "paper" but the Gaussian blur std of the DPS code and most follow-ups (3.0).
# "small": for ~32x32 images (the bundled MNIST demo). Scaled from the 256x256 settings:
#   - random mask: the masked *fraction* is scale-free, kept at 90%.
#   - box: half the image side (128/256), margin 2 px (16/256 * 32 = 2).
#   - Gaussian blur: the 61 px kernel covers ~1/4 of a 256 side; 9x9 covers ~1/4 of 32. A std of
#     5 * 32/256 = 0.6 px would barely blur, so the std is set to 1.5 px: MNIST strokes are ~2-3 px
#     wide and a 1.5 px blur merges them much like std 5 blurs facial detail at 256 px.
#     (The 9x9 window holds +-2.7 std; the truncated tails weigh < 1%.)
#   - motion blur: 9x9 kernel (same ~1/4 of the side), intensity 0.5 as in the paper.
#   - super-resolution: the task is x4 by name; 32 -> 8 px.
_PARAMS = {
    "paper": {
        "inpaint_random": lambda H, W: {"fraction_masked": 0.9},
        "inpaint_box": lambda H, W: {"box_size": 128, "margin": 16},
        "deblur_gauss": lambda H, W: {"kernel_size": 61, "std": 5.0},
        "deblur_motion": lambda H, W: {"kernel_size": 61, "intensity": 0.5},
        "sr4": lambda H, W: {"factor": 4},
    },
    "small": {
        "inpaint_random": lambda H, W: {"fraction_masked": 0.9},
        "inpaint_box": lambda H, W: {"box_size": min(H, W) // 2, "margin": 2},
        "deblur_gauss": lambda H, W: {"kernel_size": 9, "std": 1.5},
        "deblur_motion": lambda H, W: {"kernel_size": 9, "intensity": 0.5},
        "sr4": lambda H, W: {"factor": 4},
    },
}
_PARAMS["dps"] = dict(_PARAMS["paper"], deblur_gauss=lambda H, W: {"kernel_size": 61, "std": 3.0})

_CLASSES = {
    "inpaint_random": RandomInpainting,
    "inpaint_box": BoxInpainting,
    "deblur_gauss": GaussianBlur,
    "deblur_motion": MotionBlur,
    "sr4": SuperResolution,
}


def preset_params(task: str, x_shape, preset: str | None = None) -> dict:
    """The constructor arguments of ``task`` under ``preset`` (``None``: "paper" if the image is
    at least 128 px on its shorter side, else "small")."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    C, H, W = _image_shape(x_shape)
    if preset is None:
        preset = "paper" if min(H, W) >= 128 else "small"
    if preset not in _PARAMS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return _PARAMS[preset][task](H, W)


def make_operator(
    task: str,
    x_shape,
    generator: torch.Generator | None = None,
    preset: str | None = None,
    **overrides,
) -> LinearOperator:
    """The operator of ``task`` for images of shape ``x_shape = (C, H, W)``.

    ``preset``: "paper" (256x256 settings of the paper), "dps" (as "paper", Gaussian std 3.0),
    "small" (~32x32 images) or ``None`` (by image size). ``overrides`` replace single constructor
    arguments, e.g. ``make_operator("deblur_gauss", s, g, std=3.0)``. Raises ``ValueError`` on an
    unknown task or preset and on an ``x_shape`` the task does not fit.
    """
    params = dict(preset_params(task, x_shape, preset), **overrides)
    cls = _CLASSES[task]
    if cls in (RandomInpainting, BoxInpainting, MotionBlur):
        params["generator"] = generator
    return cls(tuple(x_shape), **params)
