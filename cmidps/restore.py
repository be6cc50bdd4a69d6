"""The high-level API: build a measurement, restore it with any method, with or without CMI.

>>> prior = load_prior("bundled:mnist32")
>>> op, y = measure(x01, "deblur_gauss", seed=0)              # x01: (B, C, H, W) in [0, 1]
>>> x_hat = restore(prior, op, y, "cmi+dps", steps=100, seed=0)  # (B, C, H, W) in [0, 1]

A measurement you already have (a blurred photo and its kernel, an image with holes and its mask, a
low-resolution image): build the operator without measuring, then restore:

>>> op = make_operator("deblur_gauss", (1, 32, 32), kernel=load_kernel("k.npy"))  # or mask=..., or none (sr4)
>>> y = measurement_from_image(y01, op)                        # y01: (B, C, h, w) in [0, 1] -> [-1, 1]
>>> x_hat = restore(prior, op, y, "dps", task="deblur_gauss", sigma_y=0.05)  # sigma_y in [-1, 1] units

Every default (task settings, noise, steps, step sizes) comes from a preset (:mod:`cmidps.presets`,
docs/presets.md): ``measure(..., preset="dps")``; ``restore`` follows the operator's preset.

Seeds are split into independent streams (:func:`generator`): the operator (kernel; the mask of the
``small`` preset) depends on (task, seed) only; per-image masks (``paper``, ``dps``), the measurement
noise, the sampler noise and the CMI probes on (seed, item), with one generator per batch element, so a
result does not depend on batching or sharding.
"""
from __future__ import annotations

import hashlib
import warnings

import torch

from .cmi import CMIConfig
from .methods.drivers import DRIVERS
from .operators import MaskOperator, TASKS, make_operator
from .operators.motion import load_kernel  # noqa: F401  (the API of a user's own blur: make_operator(kernel=load_kernel(f)))
from .presets import get_preset
from .prior import from_model, to_model
from .methods.samplers import RULES, make_rule
from .sampling import randn, sample

BLUR_TASKS = ("deblur_gauss", "deblur_motion")  # the tasks whose kernel measure(kernel=) replaces
SIGMA_Y = 0.05  # measurement noise in the [-1, 1] model range, as in the DPS code (every preset's sigma_y)
MASK_TASKS = ("inpaint_random", "inpaint_box")

# Default step sizes live in the preset table (cmidps.presets.PRESETS, docs/presets.md).


class PresetStepsWarning(UserWarning):
    """A run uses a step count other than the one its preset's step sizes were tuned for."""


def generator(seed: int, *stream) -> torch.Generator:
    """A generator for one named stream of a seed, e.g. ``generator(0, "noise", 3)``."""
    key = ":".join(str(s) for s in (seed, *stream)).encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)


def parse_method(method: str) -> tuple[str, bool]:
    """``"cmi+dps"`` -> ``("dps", True)``; ``"dps"`` -> ``("dps", False)``."""
    name = method.strip().lower()
    use_cmi = name.startswith("cmi+")
    base = name[4:] if use_cmi else name
    if base in DRIVERS and use_cmi:
        raise ValueError(f"{method!r} is not offered: {base} has no x_t proposal for the CMI step to move "
                         "(docs/solvers.md)")
    if (base not in RULES and base not in DRIVERS) or base == "none":
        valid = [m for m in RULES if m != "none"] + list(DRIVERS)
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(valid)} (and cmi+X for each but daps, reddiff)")
    return base, use_cmi


def default_params(method: str, task: str | None, x_shape, preset=None) -> dict:
    """The step-size parameters of ``method`` for ``task`` under ``preset`` (``None``: by image size)."""
    base, _ = parse_method(method)
    return get_preset(preset, x_shape).params(base, task)


def measure(x01: torch.Tensor, task: str, seed: int = 0, sigma_y: float | None = None, preset: str | None = None,
            items: list | None = None, kernel: torch.Tensor | None = None, mask: torch.Tensor | None = None):
    """Build the task's operator and a noisy measurement of ``x01`` under ``preset`` (``None``: by
    image size, :func:`cmidps.presets.default_preset`).

    ``x01`` is (B, C, H, W) in [0, 1]; ``items`` names the batch elements (default 0..B-1) for the
    per-image streams. Returns ``(op, y)`` with ``y`` in the model range; ``op.preset`` names the preset,
    which :func:`restore` then follows. ``sigma_y`` (default: the preset's) is added to every entry of
    ``y`` (presets with ``noise_on="all"``, the DPS code: masked pixels too) or only to a mask's kept
    pixels (``"kept"``). The operator is seeded by (task, seed); under presets with per-image masks
    (``paper``, ``dps``: the DPS code draws a mask per image) a mask task draws each image's mask from
    (task, seed, item) instead, so a result still does not depend on batching or sharding.
    ``kernel``: a 2-D tensor that replaces a blur task's kernel (convolved, e.g. from
    :func:`cmidps.motion.load_kernel`), the preset's padding kept. ``mask``: a 0/1 tensor ``(H, W)``
    or ``(B, H, W)`` (1 = observed) that replaces an inpainting task's drawn mask.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if x01.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x01.shape)}")
    if not torch.isfinite(x01).all():
        raise ValueError("the image contains non-finite values")
    p = get_preset(preset, x01.shape[1:])
    sigma_y = p.sigma_y if sigma_y is None else sigma_y
    items = list(range(x01.shape[0])) if items is None else items
    if len(items) != x01.shape[0]:
        raise ValueError(f"{len(items)} item names for a batch of {x01.shape[0]}")
    per_image = p.per_image_masks and task in MASK_TASKS
    gen = [generator(seed, "operator", task, it) for it in items] if per_image else generator(seed, "operator", task)
    if kernel is not None and task not in BLUR_TASKS:
        raise ValueError(f"a kernel replaces the kernel of a blur task ({', '.join(BLUR_TASKS)}), not of {task}")
    extra = {} if kernel is None else {"kernel": torch.as_tensor(kernel, dtype=torch.float64)}
    if mask is not None:
        extra = {"mask": mask}
    op = make_operator(task, tuple(x01.shape[1:]), gen, p.name, **extra).to(x01.device)
    y = op.A(to_model(x01))
    noise = randn(y.shape, [generator(seed, "noise", task, it) for it in items], y.dtype, y.device)
    if p.noise_on == "kept" and isinstance(op, MaskOperator):
        noise = op.A(noise)  # the measurement space of a mask taken as its kept pixels
    return op, y + sigma_y * noise


def restore(prior, op, y: torch.Tensor, method: str = "dps", steps: int | None = None, seed: int = 0,
            sigma_y: float | None = None, cmi: CMIConfig | None = None, params: dict | None = None,
            task: str | None = None, items: list | None = None, progress: bool = True,
            ddim_eta: float | None = None, likelihood_clip: bool | None = None,
            preset: str | None = None) -> torch.Tensor:
    """Restore ``y`` with ``method`` (``dps``, ``cmi+dps``, ``pigdm``, ...). Returns [0, 1] images.

    ``preset`` (default: the one ``op`` was made with, else by image size) gives the defaults: the
    step count ``steps``, ``sigma_y``, ``likelihood_clip`` and the method's step sizes for ``task``.
    A ``steps`` other than the preset's warns (:class:`PresetStepsWarning`, once per call site): its
    step sizes were tuned for the preset's count. ``cmi`` configures the plug-in for ``cmi+X``
    methods (default :class:`CMIConfig`); it is ignored for plain X. ``task`` (default: the one ``op``
    records, as :func:`measure` and :func:`~cmidps.operators.make_operator` make it) picks the preset's
    step sizes; an operator without one needs ``task=`` where they differ by task (a ``ValueError``
    otherwise, never a silent default). ``params`` override the method's
    defaults (``zeta``, ``weight``, ``gamma``). ``likelihood_clip`` (see :func:`cmidps.sampling.sample`):
    clamp x0_hat to [-1, 1] where it enters the likelihood, as the DPS code does.
    """
    base, use_cmi = parse_method(method)
    if tuple(op.x_shape) != tuple(prior.shape):
        raise ValueError(f"the operator acts on {tuple(op.x_shape)} but the model makes {tuple(prior.shape)}")
    p = get_preset(preset or getattr(op, "preset", None), prior.shape)
    if steps is None:
        steps = p.steps
    elif p.steps_notice(steps):
        warnings.warn(p.steps_notice(steps), PresetStepsWarning, stacklevel=2)
    sigma_y = p.sigma_y if sigma_y is None else sigma_y
    likelihood_clip = p.likelihood_clip if likelihood_clip is None else likelihood_clip
    task = task if task is not None else getattr(op, "task", None)  # make_operator / measure record it
    if task is None and base in p.step_sizes and "*" not in p.step_sizes[base] \
            and not set(p.params(base, next(iter(p.step_sizes[base])))) <= set(params or {}):
        raise ValueError(f"restore(..., {method!r}): pass task= (one of {', '.join(p.step_sizes[base])}): under preset "
                         f"{p.name!r} {base}'s step size depends on the task, and this operator does not record one")
    kw = p.params(base, task)
    kw.update(params or {})
    items = list(range(y.shape[0])) if items is None else items
    gens = [generator(seed, "sampler", it) for it in items]
    cmi_gens = [generator(seed, "cmi", it) for it in items]
    if base in DRIVERS:  # DAPS, RED-diff: their own drivers (cmidps.drivers)
        x = DRIVERS[base](prior, op, y, sigma_y=sigma_y, steps=steps, generator=gens, **kw)
    else:
        x = sample(prior, op, y, make_rule(base, **kw), steps, gens, sigma_y=sigma_y,
                   cmi=(cmi or CMIConfig()) if use_cmi else None, cmi_generator=cmi_gens,
                   ddim_eta=ddim_eta, progress=progress, desc=method, likelihood_clip=likelihood_clip)
    return from_model(x) if getattr(prior, "clip_x0", False) else x


# ----------------------------------------------------------------------- measurements a user already has
def measurement_from_image(y01: torch.Tensor, op) -> torch.Tensor:
    """A measurement given as an image in [0, 1] (as read from a file) -> ``y`` in the model's [-1, 1]
    range, ready for :func:`restore`. For a mask the missing pixels are set to 0 (their values in the
    file are ignored): ``y = A x + n`` is 0 there by the operator's definition.

    ``y01``: ``(B, C, h, w)``, the operator's measurement shape (for ``sr4`` a quarter of the model's
    size on each side)."""
    if y01.ndim != 4:
        raise ValueError(f"expected measurements of shape (B, C, h, w), got {tuple(y01.shape)}")
    if tuple(y01.shape[1:]) != tuple(op.y_shape):
        raise ValueError(f"the measurement is {tuple(y01.shape[1:])} (C, h, w); this operator measures "
                         f"{tuple(op.y_shape)}")
    if not torch.isfinite(y01).all():
        raise ValueError("the measurement contains non-finite values")
    y = to_model(y01)
    return op.A(y) if isinstance(op, MaskOperator) else y


def simple_inverse(op, y: torch.Tensor) -> torch.Tensor:
    """The measurement's simplest inverse ``A^+ y`` as an image in [0, 1] (clamped): the floor any
    restoration should beat."""
    return from_model(op.A_pinv(y))


def bicubic_upsample(op, y: torch.Tensor) -> torch.Tensor:
    """Plain bicubic upsampling of a low-resolution ``y`` to the operator's image size, [0, 1] (the
    usual baseline of super-resolution)."""
    h, w = op.x_shape[-2:]
    return from_model(torch.nn.functional.interpolate(y, size=(h, w), mode="bicubic", align_corners=False))


def estimate_sigma_y(y01: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """The measurement noise's standard deviation in the model's [-1, 1] range, estimated from one
    measurement image ``(C, h, w)`` in [0, 1] with scikit-image's wavelet estimator
    (``skimage.restoration.estimate_sigma``, which returns it in the image's [0, 1] units; doubled here).

    With a ``mask`` ``(h, w)`` (1 = observed) the missing pixels are first filled by biharmonic
    inpainting (``skimage.restoration.inpaint_biharmonic``) so the holes' edges are not taken for noise;
    with many missing pixels the estimate is rough (docs/restore_your_own.md)."""
    import numpy as np
    from skimage.restoration import estimate_sigma, inpaint_biharmonic

    arr = y01.detach().double().cpu().numpy()
    img = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    channel_axis = None if arr.shape[0] == 1 else -1
    if mask is not None:
        missing = np.asarray(mask.detach().cpu().numpy() == 0)
        if missing.all():
            raise ValueError("the mask marks every pixel missing: nothing to estimate the noise from")
        if missing.any():
            img = inpaint_biharmonic(img, missing, channel_axis=channel_axis)
    sigma = estimate_sigma(img, channel_axis=channel_axis, average_sigmas=True)
    return 2.0 * float(sigma)


def measurement_image(op, y: torch.Tensor, x_shape) -> torch.Tensor:
    """A picture of the measurement in image space, for figures: A^T y for masks (the kept pixels),
    y itself for blurs, nearest-neighbour upsampling for super-resolution. [0, 1]."""
    if tuple(y.shape[1:]) == tuple(x_shape):
        return from_model(y)
    h, w = x_shape[-2:]
    return from_model(torch.nn.functional.interpolate(y, size=(h, w), mode="nearest"))
