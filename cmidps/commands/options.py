"""The command-line options shared by the commands that sample, and the one error handler of every
command.

The entry point (:mod:`cmidps.cli`), ``cmidps demo`` and every bench import this module; it imports
no command, so no module needs the entry point and there is no import circle.

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
import math
import sys


def add_cmi_arguments(p: argparse.ArgumentParser) -> None:
    """The CMI plug-in's options, shared by every command that samples."""
    from ..cmi import ESTIMATORS, ETA_SCHEDULES, KINV

    g = p.add_argument_group("CMI plug-in (Algorithm 1, line 8); on for cmi+X methods or with --cmi")
    g.add_argument("--cmi", choices=ESTIMATORS, default=None,
                   help="turn CMI on with this gradient estimator (default for cmi+X methods: lowrank)")
    g.add_argument("--eta", type=float, default=None,
                   help="CMI step size eta (default 1e-3, tuned for the bundled 32x32 prior)")
    g.add_argument("--probes", type=int, default=1, help="probes r per step")
    g.add_argument("--kinv", choices=KINV, default="isotropic",
                   help="K^-1: isotropic Sigma_post ~ r_t^2 I (closed form) or cg (exact, denoiser JVPs)")
    g.add_argument("--cg-iters", type=int, default=10)
    g.add_argument("--eta-schedule", choices=ETA_SCHEDULES, default="constant")


def cmi_config(args):
    """The :class:`~cmidps.cmi.CMIConfig` of the options of :func:`add_cmi_arguments`."""
    from ..cmi import CMIConfig

    return CMIConfig(eta=CMIConfig.eta if args.eta is None else args.eta, estimator=args.cmi or "lowrank",
                     probes=args.probes, kinv=args.kinv, cg_iters=args.cg_iters, eta_schedule=args.eta_schedule)


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """Noise, task preset and the samplers' step sizes, shared by restore and bench images."""
    from ..restore import SIGMA_Y

    p.add_argument("--sigma-y", type=float, default=SIGMA_Y, help="measurement noise std in [-1, 1]")
    from ..presets import PRESETS

    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="every setting of the run: task operators, noise, steps, step sizes (docs/presets.md); "
                        + "; ".join(f"{name}: {pr.summary}" for name, pr in PRESETS.items())
                        + ". Default: paper for >= 128 px images, small otherwise")
    p.add_argument("--zeta", type=float, default=None, help="DPS/MCG step size (default per task)")
    p.add_argument("--weight", type=float, default=None, help="PiGDM guidance weight")
    p.add_argument("--gamma", type=float, default=None, help="DSG guidance rate")


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


def _writable_folder(folder, option: str, shown) -> None:
    """Check that files can be created in ``folder`` or, if it does not exist yet, in its nearest
    existing ancestor (a real test: root ignores permission bits)."""
    import tempfile
    from pathlib import Path

    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{option} {shown}: {probe} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as exc:
        raise ValueError(f"{option} {shown}: cannot write in {probe} ({exc.strerror or exc})") from None


def check_output_file(path, option: str = "--out") -> None:
    """Before any work: ``path`` is not a folder, has an image extension PIL can write, and its
    folder is writable. A ``ValueError`` naming the option."""
    from pathlib import Path

    from PIL import Image

    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name, e.g. {str(p / 'restored.png')!r}")
    known = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if p.suffix.lower() not in known:
        raise ValueError(f"{option} {str(path)!r}: unknown image extension {p.suffix or '(none)'!r}; "
                         f"use .png (or .jpg, .bmp, .tif, .webp)")
    _writable_folder(p.parent, option, repr(str(path)))


def check_output_folder(path, option: str = "--out") -> None:
    """Before any work: ``path`` is a folder (or can be made) in which files can be written."""
    from pathlib import Path

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file; give a folder")
    _writable_folder(p, option, repr(str(path)))


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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0
