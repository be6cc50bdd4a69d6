"""cmidps: diffusion posterior sampling for imaging inverse problems, with CMI guidance.

The package sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (unless the user set it):
with the CPU torch builds used here, gradient steps were 2x-50x slower without it.
"""
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
