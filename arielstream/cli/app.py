"""Command line: the ``arielstream`` parser, :func:`main`, its exit codes and logging.

The sub-commands live in :mod:`.calibrate` (``calibrate``, ``simulate``, ``info``)
and :mod:`.products` (``extract``, ``quicklook``, ``export``, ``init-config``);
:mod:`.science` (``spectrum``, ``score``);
:func:`main` runs one and turns the errors a user can act on into a message and
an exit code (:mod:`.exits`, re-exported here), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .._version import __version__
from ..errors import OutOfMemoryError, RunInterrupted
from . import calibrate, integrity, products, science
from .exits import (
    EXIT_CANTCREAT,
    EXIT_CONFIG,
    EXIT_FAILURES,
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_NOINPUT,
    EXIT_OK,
    EXIT_OSERR,
    EXIT_SOFTWARE,
    EXIT_TEMPFAIL,
    EXIT_TERMINATED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_code_of,
    exit_codes,
)

__all__ = ["EXIT_CANTCREAT", "EXIT_CONFIG", "EXIT_FAILURES", "EXIT_HANGUP", "EXIT_INTERRUPTED", "EXIT_NOINPUT",
           "EXIT_OK", "EXIT_OSERR", "EXIT_SOFTWARE", "EXIT_TEMPFAIL", "EXIT_TERMINATED", "EXIT_UNAVAILABLE",
           "EXIT_USAGE", "build_parser", "exit_code_of", "main", "setup_logging"]

log = logging.getLogger("arielstream")


class _Version(argparse.Action):
    """``--version``: what an output file records as ``arielstream_version`` (computed only when asked)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from ..run.identity import code_version

        digest = code_version().partition("+")[2]
        print(f"arielstream {__version__} (numerical code {digest}; output files record "
              f"arielstream_version = {code_version()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``arielstream`` parser with every sub-command (each stores its ``handler``)."""
    parser = argparse.ArgumentParser(
        prog="arielstream",
        description="Calibrate Ariel Data Challenge 2025 detector data into binned HDF5 cubes, in bounded memory.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="the version and the numerical code's digest that output files record, then exit")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                           help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="only errors on the console (calibrate: nothing at all when it succeeds; "
                                "warnings still go to the run's log file)")
    for action in verbosity._actions:
        parser._add_action(action)
    sub = parser.add_subparsers(dest="command", required=True)
    calibrate.add_commands(sub, [verbosity])
    products.add_commands(sub, [verbosity])
    integrity.add_commands(sub, [verbosity])
    science.add_commands(sub, [verbosity])
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    """Console verbosity; the logger itself passes INFO on so that the run's log file gets it.

    Without ``-v`` the console leaves out the records flagged ``CONSOLE_OPTIONAL``: the line per
    observation (a bar shows the progress, an error line each failure) and a complete run's
    "nothing to do" (the printed summary says it); ``-v`` prints them, with or without a bar
    (each observation's time, worker and peak memory), ``-vv`` adds debug output. The bar's
    handler (:func:`..run.worker_logs.above_bar`) keeps this handler's level and filter.
    """
    from ..run.dispatch import CONSOLE_OPTIONAL

    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    if not verbose:
        handler.addFilter(lambda record: not getattr(record, CONSOLE_OPTIONAL, False))
    root = logging.getLogger("arielstream")
    root.handlers[:] = [handler]
    root.setLevel(min(level, logging.INFO))


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # what sorts a command's error, loaded before the command runs (it may run out of memory) but after
    # parsing (it loads pyarrow and h5py, which `arielstream --help` does not need)
    from ..run.budget import out_of_memory_cause

    codes = exit_codes()
    # a file-size limit (ulimit -f) then fails the write with EFBIG instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        # (in the try: it loads the numerical libraries, which a tight ulimit -v can make fail)
        setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
        return args.handler(args)
    except (KeyboardInterrupt, RunInterrupted) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        print(f"arielstream: {why}; what is done is kept, run the same command to resume", file=sys.stderr)
        return exit_code_of(exc)
    except BrokenPipeError:  # e.g. `arielstream info OUT.h5 | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        cause = out_of_memory_cause(exc)
        prefix = next((prefix for kinds, _, prefix in codes if isinstance(exc, kinds)), None)
        if cause is not None and not isinstance(exc, OutOfMemoryError):  # whatever it surfaced as, or inside
            print(f"arielstream: out of memory ({str(cause) or type(cause).__name__}); no input is blamed: give the "
                  "run more memory (or fewer --jobs) and run it again", file=sys.stderr)
        elif prefix is not None:
            print(f"arielstream: {prefix}{exc}", file=sys.stderr)
        else:
            log.exception("internal error")
        return exit_code_of(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
