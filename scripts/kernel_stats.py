"""Statistics of a family of motion-blur kernels: median [IQR] over seeded kernels (issue 9).

    .venv/bin/python scripts/kernel_stats.py                       # cmidps.operators.motion, seeds 0..299
    .venv/bin/python scripts/kernel_stats.py --module OLD.py       # motion_kernel() of another file
    .venv/bin/python scripts/kernel_stats.py --reference PATH/motionblur.py   # the original generator

The statistics (:func:`cmidps.operators.motion.kernel_statistics`), for ``--size`` 61 and ``--intensity`` 0.5:
elongation = sqrt(lambda_max / lambda_min) of the kernel's second central moment; extent =
max(height, width) of the bounding box of the pixels above 5% of the maximum; near-zero = share of the
256x256 DFT of the zero-padded kernel with |K^| < 1e-3 max |K^|.

``--module FILE`` loads ``motion_kernel(kernel_size, intensity, generator)`` from a Python file, e.g.
the generator before issue 9: ``git show 82f1983:cmidps/operators/motion.py > /tmp/motion_before.py``. Kernel
``s`` is drawn from ``torch.Generator().manual_seed(s)``.

``--reference FILE`` runs the ``Kernel`` class of LeviBorodenko/motionblur's ``motionblur.py`` (not part of
cmidps: it has no licence; give the path of your own copy; it needs numpy, scipy and pillow) with
``numpy.random.seed(s)`` before kernel ``s``, and takes its ``kernelMatrix``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cmidps.operators.motion import kernel_statistics  # noqa: E402

NAMES = {"elongation": "elongation", "extent": "extent (px)", "near_zero": "near-zero share (%)"}


def _load(path: str):
    spec = importlib.util.spec_from_file_location(f"kernel_source_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernels(args):
    """Yield the ``--count`` kernels of the chosen family as float64 tensors."""
    if args.reference:
        sys.path.insert(0, os.path.dirname(os.path.abspath(args.reference)))
        ref = _load(args.reference)
        for s in range(args.first_seed, args.first_seed + args.count):
            np.random.seed(s)
            yield torch.tensor(ref.Kernel(size=(args.size, args.size), intensity=args.intensity).kernelMatrix,
                               dtype=torch.float64)
        return
    make = _load(args.module).motion_kernel if args.module else None
    if make is None:
        from cmidps.operators.motion import motion_kernel as make
    for s in range(args.first_seed, args.first_seed + args.count):
        yield make(args.size, args.intensity, torch.Generator().manual_seed(s))


def summarise(stats: list[dict]) -> dict:
    """``{name: (q25, median, q75)}``; the near-zero share in percent."""
    out = {}
    for name in NAMES:
        v = np.array([s[name] for s in stats], dtype=float) * (100.0 if name == "near_zero" else 1.0)
        out[name] = tuple(float(q) for q in np.percentile(v, [25, 50, 75]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=61)
    p.add_argument("--intensity", type=float, default=0.5)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--first-seed", type=int, default=0)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--module", help="a Python file defining motion_kernel(kernel_size, intensity, generator)")
    src.add_argument("--reference", help="the path of LeviBorodenko/motionblur's motionblur.py")
    p.add_argument("--json", help="also write the quartiles here")
    args = p.parse_args(argv)
    summary = summarise([kernel_statistics(k) for k in kernels(args)])
    source = args.reference or args.module or "cmidps.operators.motion"
    print(f"{source}: {args.count} kernels {args.size}x{args.size}, intensity {args.intensity}, "
          f"seeds {args.first_seed}..{args.first_seed + args.count - 1}; median [IQR]")
    for name, (lo, med, hi) in summary.items():
        print(f"  {NAMES[name]:20s} {med:.3g} [{lo:.3g}, {hi:.3g}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "size": args.size, "intensity": args.intensity, "count": args.count,
                       "first_seed": args.first_seed, "quartiles": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
