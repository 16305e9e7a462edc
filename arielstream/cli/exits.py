"""Exit codes of the ``arielstream`` command (sysexits style, for cron jobs).

====  ==========================================================
0     everything asked for was done (or already done: nothing to do)
2     the command line is wrong (argparse), or ``--obs`` names an observation the file does not have
65    the run finished but some observations failed (bad input data, or a
      worker that died twice on them); the output holds them as failed, with
      the reason; running again retries only those
66    an input is missing or unreadable: a data folder or dataset-level file, or
      the file given to ``info``, ``extract``, ``quicklook`` or ``export`` (also
      when it is not an arielstream file, or has no done observation to show)
69    an optional package is needed (dask.distributed for --backend dask,
      matplotlib for quicklook), found before anything is written: the message
      names the package, the extra and the offline install (--no-index --find-links)
70    internal error (a bug: please report it with the log)
71    out of memory: the machine, the container (cgroup) or ``ulimit -v``
      could not hold the run; no input is blamed; observations it failed are
      retried by the next run (give it more memory, or fewer ``--jobs``)
73    the output cannot be created (folder missing, disk full, file too large)
75    another run is writing the same output (try again later)
78    the configuration is invalid, or an existing output was made with another
      config or numerical code, or inputs changed under --frozen (use --force)
129   the terminal closed (SIGHUP); 130 interrupted by Ctrl-C; 143 by SIGTERM
      (what is done is kept: run again to resume)
====  ==========================================================

:func:`exit_code_of` maps an exception to its code (:func:`.app.main` and ``calibrate --report`` use it).
"""

from __future__ import annotations

import functools
import signal

from ..errors import (
    ArielstreamError,
    ConfigError,
    ConfigMismatchError,
    InputError,
    LockBusyError,
    MemoryBudgetError,
    MissingDependencyError,
    OutOfMemoryError,
    OutputError,
    RunInterrupted,
)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILURES = 65
EXIT_NOINPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_OSERR = 71
EXIT_CANTCREAT = 73
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
EXIT_HANGUP = 129
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


@functools.cache
def exit_codes() -> tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str], ...]:
    """Errors a user can act on, their exit codes and message prefixes; the first match wins (subclasses first).

    Built when first asked for, not on import: it names :mod:`arielstream.run.budget`'s out-of-memory test
    (see :func:`exit_code_of`), and building the command's parser (``arielstream --help``) loads nothing heavy.
    """
    return (
        (LockBusyError, EXIT_TEMPFAIL, ""),
        (OutOfMemoryError, EXIT_OSERR, ""),
        ((ConfigError, ConfigMismatchError), EXIT_CONFIG, "configuration error: "),
        (InputError, EXIT_NOINPUT, ""),
        (MemoryBudgetError, EXIT_CONFIG, ""),
        (OutputError, EXIT_CANTCREAT, ""),
        (MissingDependencyError, EXIT_UNAVAILABLE, ""),
        (ArielstreamError, EXIT_CONFIG, ""),
    )


def exit_code_of(exc: BaseException) -> int:
    """The exit code :func:`.app.main` returns when a command raises ``exc`` (``calibrate --report`` records it)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, RunInterrupted):
        return EXIT_HANGUP if exc.signum == signal.SIGHUP else EXIT_TERMINATED
    from ..run.budget import out_of_memory_cause

    if out_of_memory_cause(exc) is not None:
        return EXIT_OSERR
    return next((code for kinds, code, _ in exit_codes() if isinstance(exc, kinds)), EXIT_SOFTWARE)
