"""The samplers as step rules of the one reverse loop (:func:`cmidps.sampling.sample`).

A rule maps the :class:`~cmidps.sampling.StepState` of a step (x_t with its graph, x0_hat, the
unconditional proposal x'_{t-1} with the CMI term already added) to x_{t-1}. Every rule therefore
works with and without CMI; ``cmi+X`` is rule X with the plug-in switched on in the loop.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from .sampling import StepState


def dps(s: StepState, zeta: float = 1.0) -> torch.Tensor:
    """DPS (Chung et al. 2023, Alg. 1): x_{t-1} = x'_{t-1} - zeta grad_{x_t} ||y - A x0_hat||."""
    return s.x_prop - zeta * s.grad_residual_norm()


def unconditional(s: StepState) -> torch.Tensor:
    """No guidance: the prior's own ancestral step."""
    return s.x_prop


RULES: dict[str, Callable] = {"dps": dps, "none": unconditional}


def make_rule(name: str, **params) -> Callable[[StepState], torch.Tensor]:
    if name not in RULES:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(RULES))}")
    return partial(RULES[name], **params)
