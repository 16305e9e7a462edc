"""The compute engine of this process: numba's compiled kernels, or numexpr.

Decided here and nowhere else, once per process on first use: numba when it is
importable and ``ARIELSTREAM_ENGINE`` is not ``numexpr``, numexpr otherwise. Every
kernel call of the process then agrees, and each observation's provenance names
the engine of the process that computed it (``engine`` in the provenance JSON):
a worker without numba, or with ``ARIELSTREAM_ENGINE=numexpr``, says numexpr even
when its coordinator has numba. The two engines agree to ~1e-12 relative
(``tests/test_chunking.py``), not bit for bit.

``ARIELSTREAM_ENGINE``: ``auto`` (the default) or ``numba`` use numba when it is
installed (``pip install numba``); ``numexpr`` never does.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "ARIELSTREAM_ENGINE"
CHOICES = ("auto", "numba", "numexpr")


@dataclass(frozen=True)
class Engine:
    """The compute engine of a process and its version (what provenance records)."""

    name: str  # "numba" or "numexpr"
    version: str

    @property
    def compiled(self) -> bool:
        """True when the numba kernels of :mod:`arielstream.calibration.compiled` are used."""
        return self.name == "numba"

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@functools.cache
def current() -> Engine:
    """The engine of this process, chosen on the first call and kept.

    Tests that switch ``ARIELSTREAM_ENGINE`` inside one process call
    ``current.cache_clear()`` before and after.
    """
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in CHOICES:
        log.warning("%s=%s is not one of %s; using auto", ENV, wanted, ", ".join(CHOICES))
        wanted = "auto"
    if wanted != "numexpr":
        try:
            import numba
        except ImportError:
            if wanted == "numba":
                log.warning("%s=numba but numba is not installed; using numexpr", ENV)
        else:
            return Engine("numba", numba.__version__)
    import numexpr

    return Engine("numexpr", numexpr.__version__)
