"""The presets: one table naming every setting of a run, for ``measure`` / ``restore`` and the CLI.

A preset fixes the measurement (each task's operator, the noise sigma_y and where it is added), how
x0_hat enters the likelihood (``likelihood_clip``), the number of steps its step sizes were tuned for,
and those step sizes. ``docs/presets.md`` sets every value beside the seed paper and the DPS code.

* ``paper``: the seed paper's text (Sec. IV: 90% random mask, 128x128 box, Gaussian 61x61 std 5.0,
  motion 61x61 intensity 0.5, bicubic x4, sigma 0.05, N = 1000). Where the text is silent it "adopts
  the settings" of DPS, so everything else is the DPS code's (box corner, kernel construction,
  reflection padding, noise on every entry of y, the clamp in the likelihood, zeta per task).
* ``dps``: the DPS code's configs (DPS2022/diffusion-posterior-sampling, ``configs/*.yaml`` and the
  code they call): the random mask's fraction drawn per image from U(0.3, 0.7), Gaussian std 3.0.
* ``small``: today's settings for the bundled 32x32 prior (and any image under 128 px), its DPS
  step sizes tuned at 100 steps on training digits (``scripts/tune_demo.py``); circular blurs with a
  sampled Gaussian, noise on the kept pixels only for masks.

Default (``default_preset``): ``small`` under 128 px; ``paper`` from 128 px on, because the project
reproduces the paper's Table I, and ``paper`` runs the DPS method exactly as the DPS code does (all
of its conventions) on the paper's tasks; ``dps`` is one flag away for comparisons with DPS's own
numbers.

Operator settings are constructor arguments of :mod:`cmidps.operators`, plus: ``box_fraction`` (box
side as a share of the shorter image side), ``kernel`` (``"gaussian_filter"``: the DPS code's
scipy-filtered delta; ``"sampled"``: a sampled Gaussian), ``padding`` (``"reflect"`` or
``"circular"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

NOISE_ON = ("all", "kept")


@dataclass(frozen=True)
class Preset:
    """One row of the table. ``operators``: task -> operator settings; ``step_sizes``: method -> (task
    or ``"*"``) -> the rule's parameters."""

    name: str
    summary: str
    steps: int  # the step count the step sizes were chosen for
    sigma_y: float  # measurement noise std in the [-1, 1] model range
    noise_on: str  # "all": every entry of y, masked pixels included (DPS code); "kept": a mask's kept pixels
    likelihood_clip: bool | None  # clamp x0_hat to [-1, 1] in the likelihood (None: if the prior clips)
    per_image_masks: bool  # a new mask (fraction, box) for every image, as the DPS code draws them
    operators: dict = field(default_factory=dict)
    step_sizes: dict = field(default_factory=dict)

    def operator_settings(self, task: str, x_shape) -> dict:
        """The task's settings for images of shape ``(C, H, W)``, with relative sizes resolved."""
        if task not in self.operators:
            raise ValueError(f"preset {self.name!r} has no task {task!r}; tasks: {', '.join(self.operators)}")
        settings = dict(self.operators[task])
        if "box_fraction" in settings:
            settings["box_size"] = int(min(x_shape[-2:]) * settings.pop("box_fraction"))
        return settings

    def params(self, method: str, task: str | None) -> dict:
        """The step-size parameters of ``method`` (a base rule name) for ``task`` (``{}`` if none)."""
        table = self.step_sizes.get(method, {})
        return dict(table.get(task, table.get("*", {})))

    def steps_notice(self, steps: int) -> str | None:
        """A one-line notice when ``steps`` differs from the steps this preset's step sizes were tuned for."""
        if steps == self.steps:
            return None
        return (f"note: preset {self.name!r} was tuned for {self.steps} steps; running {steps} "
                f"(its step sizes may not suit {steps})")


def _frozen(d: dict) -> MappingProxyType:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in d.items()})


# The DPS code's configs: conditioning.params.scale per task (inpainting 0.5; SR, Gaussian and motion
# blur 0.3). Its box inpainting is the inpainting config with mask_len_range (128, 129), same scale.
_DPS_ZETA = {"inpaint_random": {"zeta": 0.5}, "inpaint_box": {"zeta": 0.5}, "deblur_gauss": {"zeta": 0.3},
             "deblur_motion": {"zeta": 0.3}, "sr4": {"zeta": 0.3}}
_LARGE_STEP_SIZES = {
    "dps": _DPS_ZETA,
    "mcg": _DPS_ZETA,  # the DPS code's MCG reads the same config key (scale)
    "pigdm": {"*": {"weight": 1.0}},  # Alg. 1 of PiGDM (no official code)
    "dsg": {"*": {"gamma": 0.2, "interval": 1}},  # DSG's defaults
    # The field's solvers (docs/solvers.md): their papers' / codes' defaults.
    "diffpir": {"*": {"lam": 7.0, "zeta": 0.3}},
    # the TMPD code's image path: K by the row sums of A C A^T (its KGDMVPplus; docs/solvers.md)
    "tmpd": {"*": {"weight": 1.0, "cov": "rowsum"}},
    "daps": {"*": {"lr": 1e-4, "langevin_steps": 100, "tau": 0.01}},
    "reddiff": {"*": {"lr": 0.25, "lam": 0.25}},
}
_DPS_OPERATORS = {
    "inpaint_random": {"fraction_masked": (0.3, 0.7)},
    # mask_generator: randint(16, 256 - 16 - 128) (numpy, upper bound exclusive) -> corner in [16, 111]
    "inpaint_box": {"box_size": 128, "margin": 16, "far_margin": 17},
    "deblur_gauss": {"kernel_size": 61, "std": 3.0, "kernel": "gaussian_filter", "padding": "reflect"},
    "deblur_motion": {"kernel_size": 61, "intensity": 0.5, "padding": "reflect"},
    "sr4": {"factor": 4},
}

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        summary="the seed paper's text (90% mask, std 5.0, N = 1000); the DPS code's conventions elsewhere",
        steps=1000, sigma_y=0.05, noise_on="all", likelihood_clip=True, per_image_masks=True,
        operators=_frozen(dict(_DPS_OPERATORS,
                               inpaint_random={"fraction_masked": 0.9},
                               deblur_gauss={"kernel_size": 61, "std": 5.0, "kernel": "gaussian_filter",
                                             "padding": "reflect"})),
        step_sizes=MappingProxyType(_LARGE_STEP_SIZES),
    ),
    "dps": Preset(
        name="dps",
        summary="the DPS code's configs (mask fraction U(0.3, 0.7) per image, std 3.0, reflect padding, N = 1000)",
        steps=1000, sigma_y=0.05, noise_on="all", likelihood_clip=True, per_image_masks=True,
        operators=_frozen(_DPS_OPERATORS),
        step_sizes=MappingProxyType(_LARGE_STEP_SIZES),
    ),
    "small": Preset(
        name="small",
        summary="~32x32 images (the bundled prior): scaled tasks, circular blurs, step sizes tuned at 100 steps",
        steps=100, sigma_y=0.05, noise_on="kept", likelihood_clip=None, per_image_masks=False,
        operators=_frozen({
            "inpaint_random": {"fraction_masked": 0.9},  # the fraction is scale-free
            "inpaint_box": {"box_fraction": 0.5, "margin": 2},  # 128/256 of the side; 16/256 * 32 = 2 px
            # 9x9 covers ~1/4 of 32 px as 61x61 does of 256; std 1.5 px (5 * 32/256 = 0.6 would barely blur
            # 2-3 px strokes); the 9x9 window holds +-2.7 std (truncated tails < 1%)
            "deblur_gauss": {"kernel_size": 9, "std": 1.5, "kernel": "sampled", "padding": "circular"},
            "deblur_motion": {"kernel_size": 9, "intensity": 0.5, "padding": "circular"},
            "sr4": {"factor": 4},
        }),
        # DPS's zeta tuned for the bundled prior at 100 steps on training digits (never the held-out
        # ones; scripts/tune_demo.py, docs/demo.md); the others keep their papers' defaults.
        step_sizes=MappingProxyType({
            "dps": {"inpaint_random": {"zeta": 8.0}, "inpaint_box": {"zeta": 2.0}, "deblur_gauss": {"zeta": 4.0},
                    "deblur_motion": {"zeta": 4.0}, "sr4": {"zeta": 8.0}},
            "pigdm": {"*": {"weight": 1.0}},
            "mcg": {"*": {"zeta": 2.0}},
            "dsg": {"*": {"gamma": 0.2, "interval": 1}},
            # The field's solvers (docs/solvers.md): their papers' / codes' defaults, not tuned on this prior.
            "diffpir": {"*": {"lam": 7.0, "zeta": 0.3}},
            "tmpd": {"*": {"weight": 1.0, "cov": "rowsum"}},  # as in the TMPD code's image path
            "daps": {"*": {"lr": 1e-3, "langevin_steps": 20}},
            "reddiff": {"*": {"lr": 0.25, "lam": 0.25}},
        }),
    ),
}

PRESET_NAMES = tuple(PRESETS)


def default_preset(x_shape) -> str:
    """``"paper"`` for images of at least 128 px on the shorter side, else ``"small"``."""
    return "paper" if min(int(s) for s in tuple(x_shape)[-2:]) >= 128 else "small"


def get_preset(name: str | Preset | None, x_shape=None) -> Preset:
    """The preset called ``name`` (``None``: :func:`default_preset` of ``x_shape``)."""
    if isinstance(name, Preset):
        return name
    if name is None:
        if x_shape is None:
            raise ValueError("no preset given and no image shape to choose one by")
        name = default_preset(x_shape)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESET_NAMES)}")
    return PRESETS[name]
