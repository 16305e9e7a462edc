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
           "EXIT_USAGE", "build_parser", "cli_reference", "exit_code_of", "main", "setup_logging"]

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



# --- the command-line reference (docs/cli.md; `make docs`, tests/test_docs.py) -------------------------------
# Rendered from the parser itself, in a format of its own rather than argparse's help layout (which changes
# between Python versions), so that the file is the same on every supported Python.

def _metavar(action: argparse.Action) -> str:
    """How an option's value is written: ``SIZE``, ``{a,b}``, ``ID [ID ...]``; ``""`` for a switch."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        name = " ".join(action.metavar) if isinstance(action.metavar, tuple) else str(action.metavar)
    elif action.choices is not None:
        name = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        name = action.dest.upper() if action.option_strings else action.dest
    nargs = action.nargs
    if nargs == "?":
        return f"[{name}]"
    if nargs == "*":
        return f"[{name} ...]"
    if nargs == "+":
        return f"{name} [{name} ...]"
    if isinstance(nargs, int):
        return " ".join([name] * nargs)
    return name


def _usage_item(action: argparse.Action) -> str:
    value = _metavar(action)
    if not action.option_strings:
        return value
    return f"{action.option_strings[0]} {value}".rstrip()


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    """One usage line per sub-command, wrapped at 100 columns (mutually exclusive options as ``(a | b)``)."""
    grouped = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    items: list[str] = []
    seen: set[int] = set()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or id(action) in seen:
            continue
        group = grouped.get(id(action))
        if group is None:
            items.append(_usage_item(action) if action.required else f"[{_usage_item(action)}]")
            continue
        members = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        seen.update(id(a) for a in members)
        inner = " | ".join(_usage_item(a) for a in members)
        items.append(f"({inner})" if group.required else f"[{inner}]")
    items += [_usage_item(a) for a in parser._actions
              if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    lines = [prog]
    for item in items:  # wrapped between items, never inside one
        if len(lines[-1]) + 1 + len(item) > 100 and lines[-1].strip():
            lines.append(" " * len(prog))
        lines[-1] += " " + item
    return "\n".join(lines)


def _help(action: argparse.Action, prog: str) -> str:
    """An option's help with argparse's ``%(...)s`` expanded (as ``--help`` shows it)."""
    if not action.help:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return _markdown(action.help % params)


def _markdown(text: str) -> str:
    """Plain help text made safe for Markdown: no HTML tags, no emphasis from ``*``."""
    return text.replace("<", "&lt;").replace("*", "\\*")


def _options(actions: list[argparse.Action], prog: str, leave_out: tuple[str, ...] = ()) -> list[str]:
    lines = []
    for action in actions:
        if (action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction)
                or action.dest in leave_out):
            continue
        value = _metavar(action)
        names = ", ".join(action.option_strings) or value
        invocation = f"{names} {value}".rstrip() if action.option_strings else names
        text = _help(action, prog)
        lines.append(f"- `{invocation}`" + (f": {text}" if text else ""))
    return lines


def cli_reference() -> str:
    """docs/cli.md: every sub-command's help, usage and options, rendered from :func:`build_parser`.

    The options' help texts are those of ``--help`` (for config options, the descriptions table through
    ``option_help``), so the reference cannot drift from the command; ``make docs`` writes it and
    tests/test_docs.py checks that the committed file is what this returns.
    """
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    out = ["[← README](../README.md) · [all documentation](../README.md#documentation)", "",
           "# Command-line reference", "",
           "<!-- generated by `make docs` (arielstream.cli.app.cli_reference) from the parser: do not edit -->", "",
           f"{parser.description}", "",
           "Every sub-command below also takes `-h`/`--help`, `-v`/`--verbose` and `-q`/`--quiet`;",
           "`arielstream COMMAND --help` prints the same help texts. What the options mean in practice:",
           "[calibrate.md](calibrate.md); exit codes: [faults.md](faults.md#exit-codes).", "",
           "```", _usage("arielstream", parser) + " COMMAND ...", "```", "",
           *_options(parser._actions, "arielstream"), "",
           "Commands: " + ", ".join(f"[`{name}`](#arielstream-{name})" for name in sub.choices) + ".", ""]
    for name, command in sub.choices.items():
        prog = f"arielstream {name}"
        summary = (summaries.get(name) or "").strip()
        out += [f"## arielstream {name}", ""] + ([summary[:1].upper() + summary[1:] + ".", ""] if summary else [])
        if command.description:
            out += [_markdown(command.description), ""]
        out += ["```", _usage(prog, command), "```", ""]
        for group in command._action_groups:
            lines = _options(group._group_actions, prog, leave_out=("help", "verbose", "quiet"))
            if not lines:
                continue
            title = group.title or "options"
            title = "options" if title == "optional arguments" else title  # Python 3.10's name for it
            out += [f"**{title[0].upper() + title[1:]}**" + (f" ({group.description})" if group.description else "")
                    + ":", "", *lines, ""]
    return "\n".join(out).rstrip() + "\n"


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
