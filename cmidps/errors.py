"""The library's error for bad input."""
from __future__ import annotations


class InputError(ValueError):
    """A request that cannot run as asked: a bad option, an unusable file or data set, a changed
    configuration. The command line prints its message on one line and exits 2
    (:func:`cmidps.cli_options.run_command`). :class:`cmidps.images.ImageError` is one kind;
    ``cmidps.bench.images.BenchError`` is this class under the benchmark's name."""
