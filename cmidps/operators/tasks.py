"""The tasks (``make_operator``): each task's operator from the preset table, and measurement noise."""
from __future__ import annotations

import torch

from ..presets import PRESET_NAMES, get_preset
from .base import LinearOperator, Tensor, _image_shape
from .blur import blur_operator, gaussian_filter_kernel, gaussian_kernel
from .inpaint import BoxInpainting, MaskOperator, RandomInpainting
from .motion import motion_kernel
from .superres import SuperResolution


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
    *,
    mask=None,
    **overrides,
) -> LinearOperator:
    """The operator of ``task`` for images of shape ``x_shape = (C, H, W)``.

    ``preset``: a name in :data:`cmidps.presets.PRESETS` ("paper", "dps", "small") or ``None`` (by
    image size). ``overrides`` replace single settings, e.g. ``std=3.0``, ``padding="circular"``, or
    ``kernel=`` a 2-D tensor for the blurs (used as given, convolved). ``generator`` draws the mask /
    box / motion kernel; for the mask tasks it may be a list (one mask per image, a per-sample
    operator). The operator records its preset as ``op.preset`` and its task as ``op.task``. Raises ``ValueError`` on an unknown
    task or preset and on an ``x_shape`` the task does not fit.

    To restore a measurement you already have, build its operator without measuring: ``mask=`` a 0/1
    array of shape ``(H, W)`` (or ``(B, H, W)``, one per image; 1 = observed) for the inpainting tasks,
    ``kernel=`` a 2-D array for the blurs (convolved, normalised to sum 1 by the caller, e.g.
    :func:`cmidps.operators.motion.load_kernel`); ``sr4`` needs neither (its operator is fixed).
    ``deblur_gauss`` without a kernel is the preset's Gaussian; ``deblur_motion`` without one draws a
    random kernel from ``generator`` (only right for a measurement made with that draw).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    shape = _image_shape(x_shape)
    if mask is not None:
        if task not in _MASK_TASKS:
            raise ValueError(f"a mask belongs to an inpainting task ({', '.join(_MASK_TASKS)}), not to {task}")
        if overrides:
            raise ValueError(f"a given mask takes no other settings, got {', '.join(overrides)}")
        mask = torch.as_tensor(mask, dtype=torch.float64)
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError("a mask must hold only 0 (missing) and 1 (observed)")
        op = MaskOperator(shape, mask.cpu())
        op.preset = get_preset(preset, shape).name
        op.task = task
        return op
    if "kernel" in overrides and overrides["kernel"] is not None and not isinstance(overrides["kernel"], str) \
            and task not in ("deblur_gauss", "deblur_motion"):
        raise ValueError(f"a kernel belongs to a blur task (deblur_gauss, deblur_motion), not to {task}")
    params = dict(preset_params(task, x_shape, preset), **overrides)
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
    op.task = task  # restore() takes the task's step sizes from it when not given task=
    return op
