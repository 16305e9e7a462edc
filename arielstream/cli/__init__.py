"""The ``arielstream`` command: :func:`main` (:mod:`.app`) and its exit codes (:mod:`.exits`).

The command's process is arielstream's own: before anything loads pyarrow, Arrow's default
allocator is set to the system one (``ARROW_DEFAULT_MEMORY_POOL=system``, unless the user set
it), as in the workers a run starts (:mod:`arielstream.run.runner`). pyarrow fixes its C++
default pool when it loads; a pool switched later leaves Arrow's own buffers in mimalloc,
which holds ~45 MB more at the peak of a full-size observation (``--jobs 1``) and reserves
1 GiB of address space (BENCHMARKS.md). Its malloc arenas are capped as the workers' are
(:func:`arielstream.run.budget.limit_malloc_arenas`).
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from ..run.budget import limit_malloc_arenas  # (after the allocator is chosen)
from .app import main

limit_malloc_arenas()

__all__ = ["main"]
