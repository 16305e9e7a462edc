"""The ``arielstream`` command: :func:`main`, its entry point (:mod:`.app` does the work; exit codes in :mod:`.exits`).

The command's process is arielstream's own: before anything loads pyarrow, :func:`main` sets Arrow's
default allocator to the system one (``ARROW_DEFAULT_MEMORY_POOL=system``, unless the user set it), as
in the workers a run starts (:mod:`arielstream.run.runner`), and caps glibc's malloc arenas at one
(:func:`arielstream.run.budget.limit_malloc_arenas`). pyarrow fixes its C++ default pool when it loads;
a pool switched later leaves Arrow's own buffers in mimalloc, which holds ~45 MB more at the peak of a
full-size observation (``--jobs 1``) and reserves 1 GiB of address space (BENCHMARKS.md). Importing
this package changes nothing: only calling :func:`main` does.
"""

from __future__ import annotations

import os

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) in this process; return its exit code."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")  # before pyarrow loads (a command's handler)
    from ..run.budget import limit_malloc_arenas
    from .app import main as run

    limit_malloc_arenas()
    return run(argv)
