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

Tasks (``make_operator``, settings from the preset table :mod:`cmidps.presets`): random inpainting,
box inpainting (one mask for a batch, or one per image), Gaussian deblurring, motion deblurring (with
reflection padding as in the DPS code, :class:`ReflectBlur`, or circular, :class:`CircularBlur`),
4x bicubic super-resolution; plus :class:`DenseOperator` for the vector benchmark.

Blurs *convolve* with their kernel; the DPS code's ``nn.Conv2d`` *correlates*, i.e. applies the kernel
rotated by 180 degrees. The two agree for symmetric kernels (every Gaussian); a non-symmetric kernel
taken from the DPS code must be flipped (``kernel.flip(0, 1)``) to give the same operator.
"""
from __future__ import annotations

import math

import torch

from .linalg import batched_cg

from .motion import motion_kernel
from .presets import PRESET_NAMES, get_preset

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
    code, so that ``y`` is an image). ``mask`` is shared by all channels: one ``(H, W)`` mask for the
    whole batch (buffer shape ``(1, H, W)``), or ``(B, H, W)``, one per batch element (buffer
    ``(B, 1, H, W)``; then every input must have batch size ``B``). Then ``A^T = A = A^+ = diag(mask)``
    (an orthogonal projection) and ``A A^T = diag(mask)``, so

        (s2 I + r2 A A^T)^{-1} v = v / (s2 + r2 mask).

    ``A A^T`` is singular: with ``s2 = 0`` the masked entries get 0, i.e. measurement space is
    treated as the range of ``A`` (the masked entries of any ``y = A x + A n`` are 0 anyway). With
    ``s2 > 0`` the masked entries of ``v`` are divided by ``s2``, the exact inverse on the full space
    (the case of the DPS code's measurement, whose noise covers the masked pixels too).
    """

    def __init__(self, x_shape: tuple[int, ...], mask: Tensor):
        super().__init__(x_shape, x_shape)
        C, H, W = self.x_shape
        mask = torch.as_tensor(mask, dtype=torch.float64)
        if mask.shape[-2:] != (H, W) or mask.ndim not in (2, 3):
            raise ValueError(f"mask must have shape {(H, W)} or (B, {H}, {W}), got {tuple(mask.shape)}")
        self.register_buffer("mask", mask[None].clone() if mask.ndim == 2 else mask[:, None].clone())

    @property
    def per_sample(self) -> bool:
        """Whether each batch element has its own mask."""
        return self.mask.ndim == 4

    def _m(self, like: Tensor) -> Tensor:
        if self.per_sample and like.shape[0] != self.mask.shape[0]:
            raise ValueError(f"this operator has {self.mask.shape[0]} per-image masks; got a batch of {like.shape[0]}")
        return self._buf("mask", like)

    def A(self, x: Tensor) -> Tensor:
        return x * self._m(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return y * self._m(y)

    def A_pinv(self, y: Tensor) -> Tensor:
        return y * self._m(y)

    def solve_K(self, v: Tensor, r2: Scalar, s2: Scalar) -> Tensor:
        den = _per_sample(s2, v) + _per_sample(r2, v) * self._m(v)
        return v * _safe_reciprocal(den)

    @property
    def masked_fraction(self) -> float:
        """The masked share of the pixels (averaged over the masks of a per-sample operator)."""
        return 1.0 - float(self.mask.mean())


def _image_shape(x_shape) -> tuple[int, int, int]:
    if len(x_shape) != 3:
        raise ValueError(f"image operators need x_shape = (C, H, W), got {tuple(x_shape)}")
    return tuple(int(s) for s in x_shape)


def random_mask(H: int, W: int, fraction_masked, generator: torch.Generator | None = None) -> Tensor:
    """A random inpainting mask: ``int(H * W * p)`` pixel positions set to 0 (the DPS code's
    ``mask_generator``, type ``random``), the first entries of a random permutation.

    ``fraction_masked``: the share ``p``, or a range ``(lo, hi)`` from which ``p ~ U(lo, hi)`` is drawn
    first (the DPS code draws ``p`` per image from ``U(0.3, 0.7)``).
    """
    if isinstance(fraction_masked, (tuple, list)):
        lo, hi = (float(v) for v in fraction_masked)
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"a masked-fraction range must satisfy 0 <= lo <= hi < 1, got {fraction_masked}")
        fraction_masked = lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))
    if not 0.0 <= fraction_masked < 1.0:
        raise ValueError(f"fraction_masked must lie in [0, 1), got {fraction_masked}")
    mask = torch.ones(H * W, dtype=torch.float64)
    mask[torch.randperm(H * W, generator=generator)[: int(H * W * fraction_masked)]] = 0.0
    return mask.view(H, W)


class RandomInpainting(MaskOperator):
    """Random inpainting: ``int(H * W * fraction_masked)`` pixel positions masked on every channel
    (:func:`random_mask`; ``fraction_masked`` may be a range ``(lo, hi)``, drawn once).

    With a list of generators, one mask per generator (a per-sample operator: image ``b`` of a batch
    gets the mask of ``generator[b]``, and with a range its own fraction).
    """

    def __init__(self, x_shape, fraction_masked=0.9, generator=None):
        C, H, W = _image_shape(x_shape)
        if isinstance(generator, (list, tuple)):
            mask = torch.stack([random_mask(H, W, fraction_masked, g) for g in generator])
        else:
            mask = random_mask(H, W, fraction_masked, generator)
        super().__init__((C, H, W), mask)
        self.fraction_masked = fraction_masked


def box_corner(size: int, box_size: int, margin: int, far_margin: int, generator) -> int:
    """A box's top (or left) coordinate, uniform on ``[margin, size - far_margin - box_size]`` (inclusive)."""
    return int(torch.randint(margin, size - far_margin - box_size + 1, (1,), generator=generator))


class BoxInpainting(MaskOperator):
    """Box inpainting: a ``box_size x box_size`` box masked (all channels).

    Its top-left corner is drawn uniformly with ``top in [margin, H - far_margin - box_size]``
    (inclusive), likewise ``left``; ``far_margin`` defaults to ``margin`` (the box at least ``margin``
    pixels from every border). The DPS code draws the corner with numpy's ``randint(margin, H - margin
    - box_size)``, whose upper bound is exclusive: that is ``far_margin = margin + 1`` (corners in
    [16, 111] for a 128 box in 256 px). With a list of generators, one box per generator (per sample).
    """

    def __init__(self, x_shape, box_size: int = 128, margin: int = 16, generator=None,
                 far_margin: int | None = None):
        C, H, W = _image_shape(x_shape)
        far_margin = margin if far_margin is None else far_margin
        if box_size < 1 or margin < 0 or far_margin < 0 or box_size + margin + far_margin > min(H, W):
            raise ValueError(
                f"a {box_size}x{box_size} box with margins {margin}/{far_margin} does not fit in a {H}x{W} image "
                f"(need box_size + both margins <= {min(H, W)})"
            )
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        boxes, masks = [], []
        for g in gens:
            top = box_corner(H, box_size, margin, far_margin, g)
            left = box_corner(W, box_size, margin, far_margin, g)
            mask = torch.ones(H, W, dtype=torch.float64)
            mask[top : top + box_size, left : left + box_size] = 0.0
            boxes.append((top, left, box_size))
            masks.append(mask)
        per_sample = isinstance(generator, (list, tuple))
        super().__init__((C, H, W), torch.stack(masks) if per_sample else masks[0])
        self.box = boxes if per_sample else boxes[0]
        self.margins = (int(margin), int(far_margin))


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
    "inpaint_random": "random inpainting: a random set of pixels masked (90% for 'paper', U(0.3, 0.7) per image for 'dps')",
    "inpaint_box": "box inpainting: one square box masked (128x128, corner in [16, 111] for 'paper' and 'dps')",
    "deblur_gauss": "Gaussian deblurring (61x61, std 5.0 for 'paper', 3.0 for 'dps'; reflection padding)",
    "deblur_motion": "motion deblurring with a random camera-shake kernel (61x61, intensity 0.5; reflection padding)",
    "sr4": "4x super-resolution: MATLAB-style antialiased bicubic downsampling",
}

PRESETS = PRESET_NAMES  # the preset table itself is cmidps.presets.PRESETS

_MASK_TASKS = ("inpaint_random", "inpaint_box")


def preset_params(task: str, x_shape, preset: str | None = None) -> dict:
    """The operator settings of ``task`` under ``preset`` (``None``: by image size, see
    :func:`cmidps.presets.default_preset`), as :func:`make_operator` uses them."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    shape = _image_shape(x_shape)
    return get_preset(preset, shape).operator_settings(task, shape)


def make_operator(
    task: str,
    x_shape,
    generator=None,
    preset: str | None = None,
    **overrides,
) -> LinearOperator:
    """The operator of ``task`` for images of shape ``x_shape = (C, H, W)``.

    ``preset``: a name in :data:`cmidps.presets.PRESETS` ("paper", "dps", "small") or ``None`` (by
    image size). ``overrides`` replace single settings, e.g. ``std=3.0``, ``padding="circular"``, or
    ``kernel=`` a 2-D tensor for the blurs (used as given, convolved). ``generator`` draws the mask /
    box / motion kernel; for the mask tasks it may be a list (one mask per image, a per-sample
    operator). The operator records its preset as ``op.preset``. Raises ``ValueError`` on an unknown
    task or preset and on an ``x_shape`` the task does not fit.
    """
    params = dict(preset_params(task, x_shape, preset), **overrides)
    shape = _image_shape(x_shape)
    if isinstance(generator, (list, tuple)) and task not in _MASK_TASKS:
        generator = generator[0]  # one kernel for the whole run, as the DPS code draws it
    if task == "inpaint_random":
        op = RandomInpainting(shape, generator=generator, **params)
    elif task == "inpaint_box":
        op = BoxInpainting(shape, generator=generator, **params)
    elif task == "sr4":
        op = SuperResolution(shape, **params)
    else:
        padding = params.pop("padding", "circular")
        kernel = params.pop("kernel", None)  # a tensor (used as given), or how to build the Gaussian
        size = params.pop("kernel_size")
        if task == "deblur_gauss" and (kernel is None or isinstance(kernel, str)):
            make = {"sampled": gaussian_kernel, "gaussian_filter": gaussian_filter_kernel}
            if (kernel or "sampled") not in make:
                raise ValueError(f"unknown Gaussian kernel {kernel!r}; choose from {', '.join(make)}")
            kernel = make[kernel or "sampled"](size, params["std"])
        elif kernel is None:
            kernel = motion_kernel(size, params["intensity"], generator)
        op = blur_operator(shape, kernel, padding, **params)
    op.preset = get_preset(preset, shape).name
    return op
