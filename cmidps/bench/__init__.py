"""Benchmarks: ``cmidps bench gmm`` (exact-posterior Gaussian mixtures; :mod:`cmidps.bench.gmm`)."""
from __future__ import annotations


def register(subparsers):
    """Add the ``bench`` command group (with ``gmm``) to the CLI's top-level subparsers."""
    from .gmm import add_gmm_parser

    bench = subparsers.add_parser("bench", help="benchmarks")
    sub = bench.add_subparsers(dest="bench", required=True)
    add_gmm_parser(sub)
    return sub
