"""The ``cmidps`` command line: restore, demo, train, bench.

The entry point only: it registers the commands and runs one; nothing imports it. The shared options
and the error handling are in :mod:`cmidps.commands.options`.
"""
from __future__ import annotations

import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import sys

from .commands.options import CLIParser, run_command

DESCRIPTION = """\
Restore images (inpainting, deblurring, super-resolution) with a diffusion model as the prior: DPS,
PiGDM, MCG, DSG and the field's solvers, each with or without CMI guidance (cmi+X).

examples:
  cmidps demo                                   the five tasks on held-out digits -> demo_out/
  cmidps restore --image IMG.png --task sr4 --method cmi+dps --out restored.png
  cmidps bench images --data heldout --tasks sr4 --methods dps,cmi+dps --out runs/heldout
  cmidps COMMAND --help                         every option of a command

A bad option or file is one 'error:' line and exit code 2, before any work (docs/safety.md)."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = CLIParser(prog="cmidps", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cmidps {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from .commands import demo, restore as restore_command
    from .training import train

    restore_command.register(sub)
    demo.register(sub)
    train.register(sub)
    _add_bench(sub)
    return parser


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: gmm (exact posterior), images, speed")
    bench = p.add_subparsers(dest="bench", required=True)
    from .bench.gmm import add_gmm_parser
    from .bench.images import add_images_parser
    from .bench.speed import add_speed_parser

    add_gmm_parser(bench)
    add_images_parser(bench)
    add_speed_parser(bench)


def main(argv=None) -> int:
    """``cmidps ...``: parse, run, and return the exit code (see :func:`cmidps.commands.options.run_command`; a bad option: 2)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:  # answered without importing torch (building the parser imports it)
        from . import __version__

        print(f"cmidps {__version__}")
        raise SystemExit(0)  # as argparse's version action does
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:  # a bad option (one 'error:' line, 2) or --help (0): the code, returned
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run_command(ns)


if __name__ == "__main__":
    sys.exit(main())
