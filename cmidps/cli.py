"""The ``cmidps`` command line: restore, demo, train, bench.

The entry point only: it registers the commands and runs one; nothing imports it. The shared options
and the error handling are in :mod:`cmidps.cli_options`.
"""
from __future__ import annotations

import cmidps  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)

import argparse
import sys

from .commands.options import run_command


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="cmidps", description=__doc__)
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
    """``cmidps ...``: parse, run, and return the exit code (see :func:`cmidps.cli_options.run_command`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:  # answered without importing torch (building the parser imports it)
        from . import __version__

        print(f"cmidps {__version__}")
        raise SystemExit(0)  # as argparse's version action does
    return run_command(build_parser().parse_args(args))


if __name__ == "__main__":
    sys.exit(main())
