"""The command-line options shared by the commands that sample, and the one error handler of every
command.

The entry point (:mod:`cmidps.cli`), ``cmidps demo`` and every bench import this module; it imports
no command, so no module needs the entry point and there is no import circle.

* The one place that declares every option's type and range: argparse ``type=`` callables
  (:func:`positive_int`, :func:`nonneg_int`, :func:`bounded_int`, :func:`finite_float` and its
  :func:`nonneg_float` / :func:`positive_float` / :func:`unit_interval` / :func:`fraction`,
  :func:`float_list`, :func:`int_list_text`, :func:`name_list`, :func:`method_list`,
  :func:`step_override`), :class:`UniqueInts` for seed lists, and :class:`CLIParser`, whose errors are
  one ``error:`` line and exit code 2 (docs/safety.md, "Options");
* :func:`add_step_arguments` / :func:`method_params` / :func:`check_step_overrides`: per-method step
  sizes (``--step dps=0.5 --step mcg=10``) over the shared ``--zeta`` / ``--weight`` / ``--gamma``;
* :func:`add_cmi_arguments` / :func:`cmi_config`: the CMI plug-in's options and the
  :class:`~cmidps.cmi.CMIConfig` they make;
* :func:`add_measurement_arguments` / :func:`step_params`: noise, task preset and the samplers' step
  sizes (restore, bench images); :func:`check_sampling_options` checks the numbers of both groups;
* :func:`preset_steps`: ``--steps`` or the preset's count, with the one-line notice when they differ;
* :func:`add_kernel_arguments` / :func:`kernel_option`: a blur kernel from a file (restore);
* :func:`run_command`: runs a parsed command and turns its outcome into an exit code (0, the command's
  own code, 2 with one ``error:`` line for a known failure, 130 on Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import math
import sys


# --- typed option values: the one place that declares every option's type and range ----------------
# Each helper is an argparse ``type=`` callable (or makes one): a bad value raises
# ``argparse.ArgumentTypeError``, which the parser (:class:`CLIParser`) prints as one ``error:`` line
# with exit code 2, before any work. docs/safety.md ("Options") lists the rules.

MAX_PROBES = 1000  # CMI probes run one after another: more would only hang (docs/safety.md)


class CLIParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``error: argument --x: ... (see PROG --help)``,
    and exit code 2 (argparse prints the whole usage first). Subparsers inherit the class."""

    def error(self, message):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _bad(text, what: str):
    return argparse.ArgumentTypeError(f"must be {what}, got {text!r}")


def _int(text, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise _bad(text, what) from None


def bounded_int(lo: int | None = None, hi: int | None = None):
    """An integer in ``[lo, hi]`` (either bound may be ``None``)."""
    what = ("an integer" + (f" >= {lo}" if lo is not None else "") + (" and" if lo is not None and hi is not None
                                                                     else "") + (f" <= {hi}" if hi is not None else ""))

    def parse(text) -> int:
        v = _int(text, what)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _bad(text, what)
        return v

    parse.__name__ = "bounded_int"
    return parse


positive_int = bounded_int(1)
positive_int.__name__ = "positive_int"
nonneg_int = bounded_int(0)
nonneg_int.__name__ = "nonneg_int"
probes_int = bounded_int(1, MAX_PROBES)


def finite_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A finite number in the interval from ``lo`` to ``hi`` (open or closed at each end; ``None``: unbounded)."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    what = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(text) -> float:
        try:
            v = float(str(text).strip())
        except ValueError:
            raise _bad(text, what) from None
        if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) \
                or (hi is not None and (v >= hi if hi_open else v > hi)):
            raise _bad(text, what)
        return v

    parse.__name__ = "finite_float"
    return parse


nonneg_float = finite_float(0)  # step sizes, noise, eta
positive_float = finite_float(0, lo_open=True)  # learning rates, clips, time limits
unit_interval = finite_float(0, 1)  # a probability, [0, 1]
fraction = finite_float(0, 1, hi_open=True)  # [0, 1): EMA decay, dropout


def float_list(lo: float | None = 0.0, hi: float | None = None):
    """Comma-separated finite numbers (each in ``[lo, hi]``), at least one, no empty items."""
    one = finite_float(lo, hi)

    def parse(text) -> list[float]:
        items = [s.strip() for s in str(text).split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"needs at least one number, got {text!r}")
        if not all(items):
            raise argparse.ArgumentTypeError(f"has an empty item in {text!r}")
        out = []
        for s in items:
            try:
                out.append(one(s))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"item {s!r} {exc}") from None
        return out

    parse.__name__ = "float_list"
    return parse


def int_list_text(lo: int = 1, empty_ok: bool = False, hi: int | None = None, unique: bool = False):
    """Comma-separated integers in ``[lo, hi]`` (``''`` allowed when ``empty_ok``; no repeats when
    ``unique``), returned as the normalised text (``"1,2,2"``), for options parsed again downstream
    (a model constructor, a list of sizes)."""
    one = bounded_int(lo, hi)

    def parse(text) -> str:
        items = [s.strip() for s in str(text).split(",")]
        if items == [""]:
            if empty_ok:
                return ""
            raise argparse.ArgumentTypeError("needs at least one integer, got ''")
        if not all(items):
            raise argparse.ArgumentTypeError(f"has an empty item in {text!r}")
        try:
            vals = [one(s) for s in items]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"each item {exc}") from None
        if unique:
            _refuse_duplicates(vals)
        return ",".join(map(str, vals))

    parse.__name__ = "int_list_text"
    return parse


def positive_int_or_minus_one(text) -> int:
    """An integer >= 1, or -1 (guided-diffusion's "not set", e.g. ``num_head_channels``)."""
    v = _int(text, "an integer >= 1 or -1")
    if v != -1 and v < 1:
        raise _bad(text, "an integer >= 1 or -1")
    return v


def _items(text) -> list[str]:
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError("needs at least one name, got an empty list")
    if not all(items):
        raise argparse.ArgumentTypeError(f"has an empty item in {text!r}")
    return items


def name_list(valid, what: str = "name", all_ok: bool = True):
    """Comma-separated names from ``valid`` (case-insensitive; ``all``: every one when ``all_ok``), no
    empty items, no duplicates; returns the canonical names."""
    canon = {v.lower(): v for v in valid}

    def parse(text) -> list[str]:
        items = _items(text)
        if all_ok and [s.lower() for s in items] == ["all"]:
            return list(valid)
        bad = [s for s in items if s.lower() not in canon]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, bad))}; valid: "
                                             f"{', '.join(valid)}" + (", or all" if all_ok else ""))
        out = [canon[s.lower()] for s in items]
        _refuse_duplicates(out)
        return out

    parse.__name__ = "name_list"
    return parse


def method_list(valid=None, cmi: bool = True):
    """Comma-separated method names, case-insensitive (``DPS`` is ``dps``), no empty items, no duplicates.

    ``valid``: the accepted names (``None``: every method :func:`cmidps.restore.parse_method` accepts,
    ``X`` and ``cmi+X``); ``cmi=False`` for commands that take base methods only (``bench speed``
    times each with and without CMI itself). Returns canonical lower-case names."""

    def parse(text) -> list[str]:
        out = []
        for s in _items(text):
            name = s.lower()
            if not cmi and name.startswith("cmi+"):
                raise argparse.ArgumentTypeError(
                    f"takes base methods only (this command times each one with and without CMI): "
                    f"{name[4:]!r} instead of {s!r}")
            if valid is not None:
                if name not in valid:
                    raise argparse.ArgumentTypeError(f"unknown method {s!r}; valid (case-insensitive): "
                                                     f"{', '.join(valid)}")
            else:
                from ..restore import parse_method

                try:
                    base, use_cmi = parse_method(name)
                except ValueError as exc:
                    raise argparse.ArgumentTypeError(str(exc)) from None
                name = f"cmi+{base}" if use_cmi else base
            out.append(name)
        _refuse_duplicates(out, " (names are case-insensitive)")
        return out

    parse.__name__ = "method_list"
    return parse


def as_text(parse):
    """The list type ``parse`` with its result joined back into comma-separated text (checked and
    canonical), for options that the command splits itself."""

    def joined(text) -> str:
        return ",".join(map(str, parse(text)))

    joined.__name__ = getattr(parse, "__name__", "list")
    return joined


def _refuse_duplicates(values, note: str = "") -> None:
    """``ArgumentTypeError('lists A, B more than once')`` if any value repeats (the one duplicate check
    of every list option)."""
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"lists {', '.join(map(str, dup))} more than once{note}")


class UniqueInts(argparse.Action):
    """``nargs="+"`` integers (``type=int`` or a bounded one) without duplicates: a repeated value is an
    argparse error (``--seeds 0 0``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        try:
            _refuse_duplicates(values)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"argument {option_string}: {exc}")
        setattr(namespace, self.dest, values)


_NOT_STEP = {"s", "prior", "op", "y", "sigma_y", "steps", "generator", "x_T", "batch", "progress", "init"}


def step_parameters(method: str) -> dict:
    """The tunable parameters of a base method and their defaults, from its rule's (or driver's)
    signature: ``{"zeta": 1.0}`` for DPS, ``{"gamma": ..., "interval": ...}`` for DSG, ..."""
    import inspect

    from ..methods.drivers import DRIVERS
    from ..methods.samplers import RULES

    fn = RULES.get(method) or DRIVERS.get(method)
    if fn is None or method == "none":
        return {}
    return {k: v.default for k, v in inspect.signature(fn).parameters.items() if k not in _NOT_STEP}


def main_step_param(method: str) -> str | None:
    """The step parameter that ``--step METHOD=VALUE`` sets (zeta for DPS and MCG, weight for PiGDM, ...)."""
    from ..methods.drivers import DRIVER_STEP_PARAM
    from ..methods.samplers import STEP_PARAM

    return {**STEP_PARAM, **DRIVER_STEP_PARAM}.get(method)


def step_override(text) -> tuple[str, str, float]:
    """``METHOD=VALUE`` (the method's own step parameter: zeta for DPS and MCG, weight for PiGDM, gamma
    for DSG, ...) or ``METHOD.PARAM=VALUE`` (any parameter of its rule); a finite value >= 0 (an
    integer >= 1 for integer parameters). Method names are case-insensitive; ``cmi+X`` means X.
    Returns ``(method, param, value)``."""
    from ..methods.drivers import DRIVER_STEP_PARAM
    from ..methods.samplers import STEP_PARAM

    key, sep, value = str(text).partition("=")
    key = key.strip().lower()
    if key.startswith("cmi+"):
        key = key[4:]
    method, _, param = key.partition(".")
    if not sep or not method:
        raise argparse.ArgumentTypeError(f"must be METHOD=VALUE (e.g. dps=0.5, mcg=10) or METHOD.PARAM=VALUE, "
                                         f"got {text!r}")
    known = step_parameters(method)
    if not known:
        with_step = [m for m in (*STEP_PARAM, *DRIVER_STEP_PARAM) if step_parameters(m)]
        raise argparse.ArgumentTypeError(f"unknown method {method!r} in {text!r} (or it has no step size); "
                                         f"methods with one: {', '.join(with_step)}")
    param = param or main_step_param(method) or next(iter(known))
    if param not in known:
        raise argparse.ArgumentTypeError(f"{method} has no parameter {param!r} (in {text!r}); its parameters: "
                                         f"{', '.join(known)}")
    return method, param, param_value(method, param, value)


def param_value(method: str, param: str, value):
    """One parameter of a base method's rule or driver, checked (``value``: text, or a JSON value):
    one of its names where it takes a name (TMPD's ``cov``), an integer >= 1 where its default is an
    integer, else a finite number >= 0. Raises ``argparse.ArgumentTypeError``."""
    from ..methods.solvers import PARAM_CHOICES

    known = step_parameters(method)
    if param not in known:
        raise argparse.ArgumentTypeError(f"{method} has no parameter {param!r}; its parameters: {', '.join(known)}")
    choices = PARAM_CHOICES.get(method, {}).get(param)
    if choices is not None:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{method}.{param} must be one of {', '.join(choices)}, not {value!r}")
        return value
    try:
        text = value if isinstance(value, str) else json.dumps(value)
        return positive_int(text) if isinstance(known[param], int) and not isinstance(known[param], bool) \
            else nonneg_float(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{method}.{param} {exc}") from None


def add_step_arguments(p: argparse.ArgumentParser, methods=None) -> None:
    """``--step METHOD=VALUE`` (repeatable): one method's step size, over the shared ``--zeta`` /
    ``--weight`` / ``--gamma`` and the preset's value (``methods``: the bases this command runs, for
    the help)."""
    p.add_argument("--step", type=step_override, action="append", default=None, metavar="METHOD=VALUE",
                   help="one method's step size, repeatable: e.g. --step dps=0.5 --step mcg=10 (zeta of DPS "
                        "and MCG, weight of PiGDM, gamma of DSG, ...; METHOD.PARAM=VALUE for another "
                        "parameter); overrides --zeta/--weight/--gamma for that method; default: the "
                        "preset's value per task")


_SHARED = ("zeta", "weight", "gamma")  # the shared options, each for every method that has that parameter


def _base(method: str) -> str:
    m = method.strip().lower()
    return m[4:] if m.startswith("cmi+") else m


def method_params(args, method: str) -> dict:
    """The step-size overrides of ``method`` (``dps``, ``cmi+mcg``, ...) given on the command line:
    the shared ``--zeta`` / ``--weight`` / ``--gamma`` where the method has that parameter, then its
    own ``--step METHOD=VALUE`` on top. Unset ones are left out (the preset's values apply), so the
    result goes as ``params=`` to :func:`cmidps.restore.restore`."""
    base = _base(method)
    known = step_parameters(base)
    out = {name: getattr(args, name) for name in _SHARED if getattr(args, name, None) is not None and name in known}
    for m, param, v in getattr(args, "step", None) or ():
        if m == base:
            out[param] = v
    return out


def check_step_overrides(args, methods) -> None:
    """Before any work: every ``--step METHOD=...`` names a method of this run, and each shared
    ``--zeta`` / ``--weight`` / ``--gamma`` given applies to at least one of them (a ``ValueError``)."""
    bases = [_base(m) for m in methods]
    for m, param, _ in getattr(args, "step", None) or ():
        if m not in bases:
            raise ValueError(f"--step {m}={'...' if param == main_step_param(m) else param}: {m} is not a method "
                             f"of this run ({', '.join(methods)})")
    for name in _SHARED:
        if getattr(args, name, None) is not None and not any(name in step_parameters(b) for b in bases):
            owners = [b for b in bases if step_parameters(b)]
            hint = "; ".join(f"--step {b}=VALUE sets its {main_step_param(b)}" for b in owners[:2])
            raise ValueError(f"--{name} applies to none of the methods of this run ({', '.join(methods)})"
                             + (f": {hint}" if hint else ""))


def add_cmi_arguments(p: argparse.ArgumentParser) -> None:
    """The CMI plug-in's options, shared by every command that samples."""
    from ..cmi import ESTIMATORS, ETA_SCHEDULES, KINV

    g = p.add_argument_group("CMI plug-in (Algorithm 1, line 8); on for cmi+X methods or with --cmi")
    g.add_argument("--cmi", choices=ESTIMATORS, default=None,
                   help="turn CMI on with this gradient estimator (default for cmi+X methods: lowrank)")
    g.add_argument("--eta", type=nonneg_float, default=None,
                   help="CMI step size eta (default 1e-3, tuned for the bundled 32x32 prior)")
    g.add_argument("--probes", type=probes_int, default=1, help=f"probes r per step (1..{MAX_PROBES})")
    g.add_argument("--kinv", choices=KINV, default="isotropic",
                   help="K^-1: isotropic Sigma_post ~ r_t^2 I (closed form) or cg (exact, denoiser JVPs)")
    g.add_argument("--cg-iters", type=positive_int, default=10, help="CG iterations of --kinv cg")
    g.add_argument("--eta-schedule", choices=ETA_SCHEDULES, default="constant")
    from ..cmi import GRADS, CMIConfig

    g.add_argument("--cmi-grad", choices=GRADS, default=CMIConfig.grad,
                   help="how the CMI gradient is taken: fd (a difference of two vector-Jacobian products: ~2x a DPS "
                        "step, DPS's memory), central (second order, ~3x) or autodiff (double backward, the "
                        "reference); docs/performance.md")


def cmi_config(args):
    """The :class:`~cmidps.cmi.CMIConfig` of the options of :func:`add_cmi_arguments`."""
    from ..cmi import CMIConfig

    return CMIConfig(eta=CMIConfig.eta if args.eta is None else args.eta, estimator=args.cmi or "lowrank",
                     probes=args.probes, kinv=args.kinv, cg_iters=args.cg_iters, eta_schedule=args.eta_schedule,
                     grad=getattr(args, "cmi_grad", CMIConfig.grad))


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """Noise, task preset and the samplers' step sizes, shared by restore and bench images."""
    from ..restore import SIGMA_Y

    p.add_argument("--sigma-y", type=nonneg_float, default=SIGMA_Y, help="measurement noise: standard deviation in the model's [-1, 1] range "
                        "(= 2 x the std in [0, 1] image units); default 0.05")
    from ..presets import PRESETS

    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="every setting of the run: task operators, noise, steps, step sizes (docs/presets.md); "
                        + "; ".join(f"{name}: {pr.summary}" for name, pr in PRESETS.items()).replace("%", "%%")
                        + ". Default: paper for >= 128 px images, small otherwise")
    p.add_argument("--zeta", type=nonneg_float, default=None,
                   help="step size zeta of every method that has one (DPS, MCG, DiffPIR; default: the preset's per "
                        "task); --step METHOD=VALUE sets one method's")
    p.add_argument("--weight", type=nonneg_float, default=None, help="PiGDM (and TMPD) guidance weight")
    p.add_argument("--gamma", type=nonneg_float, default=None, help="DSG guidance rate")
    add_step_arguments(p)


def add_kernel_arguments(p: argparse.ArgumentParser) -> None:
    """``--kernel FILE`` (and ``--kernel-as-dps``): a blur kernel from a file for the blur tasks."""
    p.add_argument("--kernel", default=None, metavar="FILE.npy|FILE.png",
                   help="blur with this kernel (2-D, odd sides, >= 0; normalised to sum 1) instead of the "
                        "task's own; deblur_gauss and deblur_motion only")
    p.add_argument("--kernel-as-dps", action="store_true",
                   help="the --kernel file is as the DPS code applies it (nn.Conv2d, a correlation): rotate "
                        "it by 180 degrees, since cmidps convolves")


def kernel_option(args, task: str | None = None):
    """The kernel of ``--kernel`` (``None`` if not given), loaded and checked; ``task`` is checked to be a
    blur task. Raises ``ValueError`` / ``FileNotFoundError`` naming the option."""
    path = getattr(args, "kernel", None)
    if path is None:
        if getattr(args, "kernel_as_dps", False):
            raise ValueError("--kernel-as-dps needs --kernel FILE")
        return None
    from ..operators.motion import load_kernel
    from ..restore import BLUR_TASKS

    if task is not None and task not in BLUR_TASKS:
        raise ValueError(f"--kernel applies to the blur tasks ({', '.join(BLUR_TASKS)}), not to {task}")
    try:
        return load_kernel(path, flip=args.kernel_as_dps)
    except ValueError as exc:
        raise ValueError(f"--kernel: {exc}") from None


def preset_steps(args, x_shape) -> int:
    """The run's step count: ``--steps``, or the preset's (``--preset``, else by image size). When they
    differ, one notice line on stderr: the preset's step sizes were tuned for its own count."""
    from ..presets import get_preset

    preset = get_preset(getattr(args, "preset", None), x_shape)
    if args.steps is None:
        return preset.steps
    notice = preset.steps_notice(args.steps)
    if notice:
        print(notice, file=sys.stderr)
    return args.steps


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """``--to-gray`` / ``--to-rgb``: convert input images whose channels differ from the model's
    (off by default: such an image is an error)."""
    p.add_argument("--to-gray", action="store_true", help="convert RGB input images for a grayscale model")
    p.add_argument("--to-rgb", action="store_true", help="convert grayscale input images for an RGB model")


def convert_option(args, channels: int) -> bool:
    """Whether to convert input images for a model with ``channels`` channels (the flag that fits it)."""
    return bool(getattr(args, "to_gray", False)) if channels == 1 else bool(getattr(args, "to_rgb", False))


def add_device_argument(p: argparse.ArgumentParser, more: str = "") -> None:
    p.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:N" + more)


def resolve_device(name: str | None) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; a CUDA device that is not there
    is a ``ValueError`` saying so."""
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N): {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available on this machine; use --device cpu "
                             f"(or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def step_params(args) -> dict:
    """The step sizes given on the command line (``zeta``, ``weight``, ``gamma``; the unset ones left out)."""
    return {k: v for k, v in (("zeta", args.zeta), ("weight", args.weight), ("gamma", args.gamma)) if v is not None}


def check_sampling_options(args) -> None:
    """Check the numeric options of :func:`add_cmi_arguments` and :func:`add_measurement_arguments`
    that ``args`` has (a ``ValueError`` naming the option): step sizes, noise and eta finite and
    >= 0; probes and CG iterations >= 1."""
    for name in ("sigma_y", "zeta", "weight", "gamma", "eta"):
        v = getattr(args, name, None)
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    for name in ("probes", "cg_iters", "steps"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


INTERRUPTED = "interrupted"


def run_command(args) -> int:
    """Run ``args.func(args)`` and return the process exit code.

    A command returns its exit code (``None`` means 0); a command that returns a result object instead
    (``bench gmm``'s ``run_gmm`` returns its results dict, also for the Python API) succeeded: 0.
    Known failure modes (bad input, a missing file, a diverged sampler: ``ValueError``,
    ``FileNotFoundError``, ``RuntimeError``) print one ``error:`` line instead of a traceback: 2.
    """
    try:
        code = args.func(args)
    except KeyboardInterrupt:  # a command may say what an interruption leaves (set_defaults(interrupted=...))
        print(getattr(args, "interrupted", None) or INTERRUPTED, file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())  # always one line
        print(f"error: {text}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0
