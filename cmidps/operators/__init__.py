"""Measurement operators ``y = A x`` with true adjoints, pseudo-inverses and K-solves.

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
# One family a file: base (the protocol), inpaint, blur, superres, dense, motion (kernels), nonlinear,
# and tasks (make_operator, the task table). Everything is re-exported here.
from .base import LinearOperator
from .blur import (PADDINGS, CircularBlur, GaussianBlur, MotionBlur, ReflectBlur, blur_operator, gaussian_filter_kernel,
                   gaussian_kernel, reflect_index)
from .dense import DenseOperator
from .inpaint import BoxInpainting, MaskOperator, RandomInpainting, box_corner, random_mask
from .superres import SeparableOperator, SuperResolution, bicubic_matrix
from .tasks import PRESETS, TASK_DESCRIPTIONS, TASKS, add_noise, make_operator, preset_params
