"""The output checks and atomic writers live in :mod:`cmidps.outputs` (the core floor: ``data/`` and
``models/`` write files through them too). This name stays for the commands that import it: it is the
same module object."""
import sys

from .. import outputs as _outputs

sys.modules[__name__] = _outputs
