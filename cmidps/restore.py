"""The high-level API: build a measurement, restore it with any method, with or without CMI.

>>> prior = load_prior("bundled:mnist32")
>>> op, y = measure(x01, "deblur_gauss", seed=0)              # x01: (B, C, H, W) in [0, 1]
>>> x_hat = restore(prior, op, y, "cmi+dps", steps=100, seed=0)  # (B, C, H, W) in [0, 1]

Seeds are split into independent streams (:func:`generator`): the operator (mask, kernel) depends
on (task, seed) only; the measurement noise, the sampler noise and the CMI probes on (seed, item),
with one generator per batch element, so a result does not depend on batching or sharding.
"""
from __future__ import annotations

import hashlib

import torch

from .cmi import CMIConfig
from .drivers import DRIVERS
from .operators import MaskOperator, TASKS, make_operator
from .prior import from_model, to_model
from .samplers import RULES, make_rule
from .sampling import randn, sample

SIGMA_Y = 0.05  # measurement noise in the [-1, 1] model range, as in the DPS code

# Default step sizes. "paper": the DPS code's zeta per task at 256x256 (field notes); the other
# methods' defaults follow their papers; none of these were tuned here (no 256 px checkpoint is on
# this machine). "small": DPS's zeta tuned for the bundled 32x32 MNIST prior on training-split digits,
# never on the held-out ones (scripts/tune_demo.py; docs/demo.md); PiGDM, MCG and DSG keep their
# papers' defaults there too.
DEFAULT_PARAMS = {
    "paper": {
        "dps": {"inpaint_random": {"zeta": 0.5}, "inpaint_box": {"zeta": 0.5}, "deblur_gauss": {"zeta": 0.3},
                "deblur_motion": {"zeta": 0.3}, "sr4": {"zeta": 0.3}},
        "pigdm": {"*": {"weight": 1.0}},
        "mcg": {"*": {"zeta": 0.5}},
        "dsg": {"*": {"gamma": 0.2, "interval": 1}},
        **{k: {"*": v} for k, v in (("diffpir", {"lam": 7.0, "zeta": 0.3}), ("tmpd", {"weight": 1.0}),
                                   ("daps", {"lr": 1e-4, "langevin_steps": 100, "tau": 0.01}),
                                   ("reddiff", {"lr": 0.25, "lam": 0.25}))},
    },
    "small": {
        "dps": {"inpaint_random": {"zeta": 8.0}, "inpaint_box": {"zeta": 2.0}, "deblur_gauss": {"zeta": 4.0},
                "deblur_motion": {"zeta": 4.0}, "sr4": {"zeta": 8.0}},
        "pigdm": {"*": {"weight": 1.0}},
        "mcg": {"*": {"zeta": 2.0}},
        "dsg": {"*": {"gamma": 0.2, "interval": 1}},
        # The field's solvers (docs/solvers.md): their papers' / codes' defaults, not tuned on this prior.
        **{k: {"*": v} for k, v in (("diffpir", {"lam": 7.0, "zeta": 0.3}), ("tmpd", {"weight": 1.0}),
                                   ("daps", {"lr": 1e-3, "langevin_steps": 20}),
                                   ("reddiff", {"lr": 0.25, "lam": 0.25}))},
    },
}


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


def default_params(method: str, task: str, x_shape) -> dict:
    base, _ = parse_method(method)
    preset = "paper" if min(x_shape[-2:]) >= 128 else "small"
    table = DEFAULT_PARAMS[preset].get(base, {})
    return dict(table.get(task, table.get("*", {})))


def measure(x01: torch.Tensor, task: str, seed: int = 0, sigma_y: float = SIGMA_Y, preset: str | None = None,
            items: list | None = None):
    """Build the task's operator (seeded by task and seed) and a noisy measurement of ``x01``.

    ``x01`` is (B, C, H, W) in [0, 1]; ``items`` names the batch elements (default 0..B-1) for the
    per-image noise streams. Returns ``(op, y)`` with ``y`` in the model range.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if x01.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x01.shape)}")
    if not torch.isfinite(x01).all():
        raise ValueError("the image contains non-finite values")
    items = list(range(x01.shape[0])) if items is None else items
    op = make_operator(task, tuple(x01.shape[1:]), generator(seed, "operator", task), preset).to(x01.device)
    y = op.A(to_model(x01))
    noise = randn(y.shape, [generator(seed, "noise", task, it) for it in items], y.dtype, y.device)
    if isinstance(op, MaskOperator):
        noise = op.A(noise)  # the measurement space of a mask is its kept pixels
    return op, y + sigma_y * noise


def restore(prior, op, y: torch.Tensor, method: str = "dps", steps: int = 100, seed: int = 0,
            sigma_y: float = SIGMA_Y, cmi: CMIConfig | None = None, params: dict | None = None,
            task: str | None = None, items: list | None = None, progress: bool = True,
            ddim_eta: float | None = None, likelihood_clip: bool | None = None) -> torch.Tensor:
    """Restore ``y`` with ``method`` (``dps``, ``cmi+dps``, ``pigdm``, ...). Returns [0, 1] images.

    ``cmi`` configures the plug-in for ``cmi+X`` methods (default :class:`CMIConfig`); it is
    ignored for plain X. ``params`` override the method's defaults (``zeta``, ``weight``, ``gamma``).
    ``likelihood_clip`` (see :func:`cmidps.sampling.sample`): clamp x0_hat to [-1, 1] where it enters
    the likelihood, as the DPS code does; default: for priors that clip.
    """
    base, use_cmi = parse_method(method)
    if tuple(op.x_shape) != tuple(prior.shape):
        raise ValueError(f"the operator acts on {tuple(op.x_shape)} but the model makes {tuple(prior.shape)}")
    kw = default_params(method, task or "*", prior.shape)
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


def measurement_image(op, y: torch.Tensor, x_shape) -> torch.Tensor:
    """A picture of the measurement in image space, for figures: A^T y for masks (the kept pixels),
    y itself for blurs, nearest-neighbour upsampling for super-resolution. [0, 1]."""
    if tuple(y.shape[1:]) == tuple(x_shape):
        return from_model(y)
    h, w = x_shape[-2:]
    return from_model(torch.nn.functional.interpolate(y, size=(h, w), mode="nearest"))
