"""Files that appear whole or not at all: written beside their name, then renamed into place.

Every file arielstream writes for a user (exports, quicklook images, light-curve
files, a named run's ``config.toml``) is written as ``NAME.partial``, flushed to
disk, and renamed over ``NAME`` only once it is complete; a failure removes the
``.partial`` and leaves any earlier ``NAME`` as it was. A reader never sees a
half-written file under the real name.

:func:`atomic_write` does this for one file; :func:`staged` for several files that
must be replaced together (the ``.npy`` export's three files, a quicklook page and
its images): every one is written first, and the renames start only when all are.
An ``OSError`` (disk full, a folder in the way) becomes an
:class:`~arielstream.errors.OutputError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import OutputError

PARTIAL_SUFFIX = ".partial"


def partial_path(target: str | Path) -> Path:
    """Where ``target`` is written before it is renamed into place: ``NAME.partial`` beside it."""
    target = Path(target)
    return target.with_name(target.name + PARTIAL_SUFFIX)


def discard(*paths: Path) -> None:
    """Remove files quietly: called while another error is being raised, which matters more."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def output_errors(target: str | Path, what: str = "write") -> Iterator[None]:
    """An ``OSError`` in the block becomes an :class:`OutputError` ``"<target>: cannot <what>: <cause>"``."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{target}: cannot {what}: {exc}") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable; best effort (some filesystems cannot fsync a folder)."""
    with contextlib.suppress(OSError):
        _fsync(folder)


def commit(targets: Iterable[str | Path], what: str = "write") -> None:
    """Flush every ``target``'s ``.partial`` to disk, then rename each over its target, in order.

    The renames start only once every file is on disk, so a failure before them
    changes nothing; the last target is the last one replaced. A failure is an
    :class:`OutputError` ``"<target>: cannot <what>: <cause>"``.
    """
    paths = [Path(t) for t in targets]
    for target in paths:
        with output_errors(target, what):
            _fsync(partial_path(target))
    for target in paths:
        with output_errors(target, what):
            os.replace(partial_path(target), target)
    for folder in {t.parent for t in paths}:
        _fsync_folder(folder)


@contextlib.contextmanager
def atomic_write(target: str | Path, what: str = "write") -> Iterator[Path]:
    """Yield the temporary path of ``target``; when the block succeeds, flush it and rename it over ``target``.

    On any failure the temporary file is removed and ``target`` is left as it was;
    an ``OSError`` (in the block or while committing) is raised as an
    :class:`OutputError` naming ``target``.
    """
    target = Path(target)
    partial = partial_path(target)
    try:
        with output_errors(target, what):
            yield partial
        commit([target], what)
    except BaseException:
        discard(partial)
        raise


class Staging:
    """Files written as ``.partial`` now and renamed into place together by :meth:`commit`."""

    def __init__(self) -> None:
        self.targets: list[Path] = []

    def path(self, target: str | Path) -> Path:
        """Register ``target`` and return the temporary path to write it to."""
        target = Path(target)
        if target not in self.targets:
            self.targets.append(target)
        return partial_path(target)

    def commit(self, what: str = "write") -> list[Path]:
        """Rename every staged file into place, in the order they were staged; the targets."""
        commit(self.targets, what)
        return list(self.targets)


@contextlib.contextmanager
def staged() -> Iterator[Staging]:
    """Stage several files; whatever ``.partial`` is left when the block ends (a failure) is removed.

    The block writes each file to ``staging.path(target)`` and calls
    ``staging.commit()`` once all are written. Errors inside the block are the
    caller's to name (:func:`output_errors`): only it knows which file failed.
    """
    staging = Staging()
    try:
        yield staging
    finally:
        discard(*(partial_path(t) for t in staging.targets))
