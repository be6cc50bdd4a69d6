"""Blurs: circular (FFT) and reflection-padded convolutions, Gaussian kernels.

Blurs *convolve* with their kernel; the DPS code's ``nn.Conv2d`` *correlates*, i.e. applies the kernel
rotated by 180 degrees. The two agree for symmetric kernels (every Gaussian); a non-symmetric kernel
taken from the DPS code must be flipped (``kernel.flip(0, 1)``) to give the same operator.
"""
from __future__ import annotations

import torch

from .base import LinearOperator, Scalar, Tensor, _image_shape, _per_sample, _safe_reciprocal
from .motion import motion_kernel


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

    Note: the DPS code blurs with reflection padding (:class:`ReflectBlur`, the ``paper`` and ``dps``
    presets); circular padding (the ``small`` preset) makes the pseudo-inverse and ``solve_K`` exact
    and cheap. The two differ only within half a kernel of the borders.
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


def gaussian_filter_kernel(kernel_size: int, std: float, truncate: float = 4.0) -> Tensor:
    """The DPS code's Gaussian kernel: ``scipy.ndimage.gaussian_filter`` (mode "reflect", ``truncate``
    4) applied to a ``kernel_size x kernel_size`` image that is 1 at its centre and 0 elsewhere.

    The filter is separable, so the kernel is ``g g^T`` with ``g`` the filtered 1-D delta: weights
    ``w_j ~ exp(-j^2 / (2 std^2))`` for ``|j| <= r = int(truncate std + 0.5)``, normalised to sum 1, and
    laid around the centre; taps that fall outside the window are folded back by the half-sample
    reflection of scipy's "reflect" mode (none do for 61 px and std <= 7). Compared with the sampled
    Gaussian of :func:`gaussian_kernel`, the tails beyond ``r`` are cut (for std 3: r = 12, weight 6e-5
    per axis moved into the window). The DPS code then casts it to float32; it is kept in float64 here.
    """
    if kernel_size < 1 or std <= 0:
        raise ValueError(f"need kernel_size >= 1 and std > 0, got {kernel_size}, {std}")
    r = int(truncate * std + 0.5)
    taps = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (taps / std) ** 2)
    w = w / w.sum()
    c = kernel_size // 2
    g = torch.zeros(kernel_size, dtype=torch.float64)
    for j, wj in zip(range(-r, r + 1), w):
        # output i = sum_j w_j * delta_ext[i + j]: it picks up w_j where i + j reflects onto the centre
        for i in range(kernel_size):
            if _half_sample_reflect(i + j, kernel_size) == c:
                g[i] += wj
    return g[:, None] * g[None, :]


def _half_sample_reflect(u: int, n: int) -> int:
    """Index ``u`` folded into ``[0, n)`` by the half-sample reflection ``d c b a | a b c d | d c b a``."""
    period = 2 * n
    u %= period
    return u if u < n else period - 1 - u


def reflect_index(n: int, pad: int) -> Tensor:
    """Source index of every entry of a length-``n`` signal reflect-padded by ``pad`` on both sides
    (``torch.nn.functional.pad(mode="reflect")``: ``c b | a b c d | c b``, the edge not repeated)."""
    if not 0 <= pad < n:
        raise ValueError(f"reflection padding by {pad} needs a side longer than {pad} px, got {n}")
    u = torch.arange(-pad, n + pad)
    u = u.abs()
    return torch.where(u > n - 1, 2 * (n - 1) - u, u)


class ReflectBlur(LinearOperator):
    """Depthwise convolution with a real ``kh x kw`` kernel (odd sizes) after reflection padding, as
    the DPS code blurs (``nn.ReflectionPad2d(k // 2)`` then ``nn.Conv2d``, for Gaussian and motion blur):

        A = C P,   P: reflect-pad by (kh // 2, kw // 2),   C: the "valid" convolution with k,

        (A x)[i, j] = sum_{a, b} k[a, b] (P x)[i + 2 c_h - a, j + 2 c_w - b],   c = (kh // 2, kw // 2),

    which equals :class:`CircularBlur`'s ``A`` away from the borders. Convolution, not correlation:
    ``nn.Conv2d`` correlates, i.e. the DPS code applies the kernel rotated by 180 degrees. A Gaussian
    (and any kernel with ``k = flip(k)``) is the same either way; to reproduce the DPS code with a
    non-symmetric kernel, pass ``kernel.flip(0, 1)``.

    The true adjoint is ``A^T = P^T C^T``: ``C^T`` is the "full" correlation with ``k`` (the adjoint of
    cropping a linear convolution), and ``P^T`` folds the padded border back, adding every padded entry
    to the pixel it was copied from. Both ``C`` and ``C^T`` are computed by FFT on the padded grid
    (exact: no wrap-around reaches the kept entries), which at 61x61 kernels is ~10x faster than
    ``conv2d`` on a CPU. ``A`` is not diagonalised by any fast transform, so :meth:`A_pinv` and
    :meth:`solve_K` are the base class's conjugate gradients (``cg_tol``, ``cg_maxiter``). The
    K-solve ``(s2 I + r2 A A^T)`` has condition number ``1 + r2 ||A||^2 / s2``, where ``||C|| <= 1`` for
    a non-negative kernel summing to 1 and ``P^T P`` counts the copies of a pixel (1, 2 or 4), so
    ``||A||^2 <= 4``; at 256 px with 61x61 kernels it is 1.006 (Gaussian std 3) and 1.10 (a motion
    kernel): about 400 with sigma_y = 0.05, 120 CG iterations at r2 = 1 (docs/presets.md). The
    pseudo-inverse ``(A A^T)^+`` is
    ill-conditioned (a blur's smallest singular values are ~0): CG stopped at ``pinv_tol`` relative
    residual (or ``pinv_maxiter``) is a regularised ``A^+``, the counterpart of :class:`CircularBlur`'s
    truncation.
    """

    def __init__(self, x_shape, kernel: Tensor, cg_tol: float | None = None, cg_maxiter: int = 200,
                 pinv_tol: float = 1e-3, pinv_maxiter: int = 100):
        C, H, W = _image_shape(x_shape)
        super().__init__((C, H, W), (C, H, W))
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"reflection-padded blurs need an odd-sized 2-D kernel, got shape {tuple(kernel.shape)}")
        kh, kw = kernel.shape
        if kh > H or kw > W:
            raise ValueError(f"a {kh}x{kw} kernel is larger than the {H}x{W} image")
        self.register_buffer("kernel", kernel.clone())
        self.register_buffer("index_h", reflect_index(H, kh // 2))
        self.register_buffer("index_w", reflect_index(W, kw // 2))
        self.pad = (kh // 2, kw // 2)
        self.cg_tol, self.cg_maxiter = cg_tol, int(cg_maxiter)
        self.pinv_tol, self.pinv_maxiter = float(pinv_tol), int(pinv_maxiter)

    def _padded_shape(self) -> tuple[int, int]:
        return self.x_shape[1] + 2 * self.pad[0], self.x_shape[2] + 2 * self.pad[1]

    def _spectrum(self, like: Tensor) -> Tensor:
        """The kernel's rFFT on the padded grid, computed once per dtype and device."""
        key = (like.dtype, like.device, self.kernel.data_ptr())
        cache = self.__dict__.setdefault("_spectra", {})
        if key not in cache:
            cache[key] = torch.fft.rfft2(self._buf("kernel", like), s=self._padded_shape())
        return cache[key]

    def pad_reflect(self, x: Tensor) -> Tensor:
        """P x (equals ``F.pad(x, mode="reflect")``)."""
        return x.index_select(-2, self.index_h.to(x.device)).index_select(-1, self.index_w.to(x.device))

    def pad_reflect_adjoint(self, z: Tensor) -> Tensor:
        """P^T z: every padded entry added back onto its source pixel."""
        C, H, W = self.x_shape
        ih, iw = self.index_h.to(z.device), self.index_w.to(z.device)
        rows = z.new_zeros((*z.shape[:-2], H, z.shape[-1])).index_add(-2, ih, z)
        return rows.new_zeros((*z.shape[:-2], H, W)).index_add(-1, iw, rows)

    def A(self, x: Tensor) -> Tensor:
        (ph, pw), (H, W) = self.pad, self.x_shape[1:]
        full = torch.fft.irfft2(torch.fft.rfft2(self.pad_reflect(x)) * self._spectrum(x), s=self._padded_shape())
        return full[..., 2 * ph : 2 * ph + H, 2 * pw : 2 * pw + W]

    def A_adjoint(self, y: Tensor) -> Tensor:
        (ph, pw), (H, W) = self.pad, self.x_shape[1:]
        Hp, Wp = self._padded_shape()
        embedded = torch.nn.functional.pad(y, (2 * pw, Wp - W - 2 * pw, 2 * ph, Hp - H - 2 * ph))
        full = torch.fft.irfft2(torch.fft.rfft2(embedded) * self._spectrum(y).conj(), s=(Hp, Wp))
        return self.pad_reflect_adjoint(full)

    def A_pinv(self, y: Tensor) -> Tensor:
        """A regularised ``A^+ y = A^T (A A^T)^+ y``: CG stopped at ``pinv_tol`` / ``pinv_maxiter``."""
        return self.A_adjoint(self.cg_solve_K(y, 1.0, 0.0, tol=self.pinv_tol, maxiter=self.pinv_maxiter))

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        return self.cg_solve_K(v, r2, s2, tol=self.cg_tol, maxiter=self.cg_maxiter)


PADDINGS = ("circular", "reflect")


def blur_operator(x_shape, kernel: Tensor, padding: str = "circular", **attributes) -> LinearOperator:
    """A blur with ``kernel`` and the given boundary rule (:data:`PADDINGS`); ``attributes`` (e.g. ``std``)
    are set on the operator for reference."""
    if padding == "circular":
        op = CircularBlur(x_shape, kernel)
    elif padding == "reflect":
        op = ReflectBlur(x_shape, kernel)
    else:
        raise ValueError(f"unknown padding {padding!r}; choose from {', '.join(PADDINGS)}")
    op.padding = padding
    for name, value in attributes.items():
        setattr(op, name, value)
    return op
