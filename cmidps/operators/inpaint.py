"""Inpainting: a diagonal 0/1 mask (random pixels, or a box)."""
from __future__ import annotations

import torch

from .base import LinearOperator, Scalar, Tensor, _image_shape, _per_sample, _safe_reciprocal


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
