"""Errors a user can act on: each names the file and what is wrong with it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .io.storage import RemotePath
    from .layout import Folder


def flag(name: str, value: Any = True, *, option: str | None = None) -> str:
    """An option as the command line and Python name it, for messages that reach both.

    ``flag("force")`` is ``--force (force=True from Python)``; ``flag("frozen", False)``
    ``--frozen (frozen=False from Python)`` (for "without ..."); ``flag("memory", "8GB")``
    ``--memory 8GB (memory='8GB' from Python)``; ``flag("jobs", ...)`` names the option
    alone: ``--jobs (jobs=... from Python)``. ``name`` is the keyword argument's name;
    ``option`` the command line's where it is not ``--name`` (``flag("output", ..., option="-o")``).
    """
    option = option or "--" + name.replace("_", "-")
    if value is True or value is False or value is Ellipsis:
        python = "..." if value is Ellipsis else repr(value)
    else:
        option, python = f"{option} {value}", repr(value)
    return f"{option} ({name}={python} from Python)"


class ConfigError(ValueError):
    """An option has a value the pipeline cannot run with (exit 78 from the CLI)."""


class ArielstreamError(Exception):
    """Base of the errors that the CLI reports without a traceback."""


class InputError(ArielstreamError):
    """An input file or folder is missing or does not match the ADC2025 format."""

    def __init__(self, path: str | os.PathLike[str] | RemotePath | Folder, problem: str):
        # a file under a URL stays itself (its str names it without credentials); a str or a Path is a local path
        self.path: Any = Path(path) if isinstance(path, (str, os.PathLike)) else path
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LockBusyError(ArielstreamError):
    """Another run holds the output's lock."""


class ConfigMismatchError(ArielstreamError):
    """An existing output was made with other numerical code, config, input or observation list."""


class MemoryBudgetError(ArielstreamError):
    """The memory budget cannot hold the smallest chunk the data allows."""


class OutOfMemoryError(ArielstreamError):
    """The machine, container or address-space limit cannot hold what the run needs (not an input's fault)."""


class OutputError(ArielstreamError):
    """The output file cannot be created or is not an arielstream file."""


class MissingDependencyError(ArielstreamError):
    """An optional package (named in the message, with the pip command that installs it) is needed for this feature."""

    @classmethod
    def of(cls, feature: str, package: str, requirement: str | None = None,
           extra: str | None = None) -> MissingDependencyError:
        """``feature`` needs ``package``, which does not import: how to install it, online and offline.

        ``requirement`` is what pip installs (default ``package``, e.g. ``dask[distributed]``
        for ``dask.distributed``); ``extra`` the arielstream extra that installs it too.
        """
        requirement = requirement or package
        quoted = f"'{requirement}'" if any(c in requirement for c in "[]<>=! ") else requirement  # for a shell
        also = f" (or the arielstream[{extra}] extra)" if extra else ""
        return cls(f"{feature} needs {package}: pip install {quoted}{also}; offline (e.g. a Kaggle kernel without "
                   f"internet) upload its wheels as a dataset and pip install --no-index --find-links WHEEL_DIR "
                   f"{quoted}")


class RunInterrupted(BaseException):  # like KeyboardInterrupt, not an Exception: `except Exception` lets it through
    """SIGTERM arrived: stop dispatching, keep what is done."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
