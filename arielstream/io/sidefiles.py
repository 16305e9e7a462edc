"""The calibrated output's side files: the one module that names them.

An output ``OUT.h5`` is never one file alone. Beside it a run keeps::

    OUT.h5.partial         the output being built (renamed onto OUT.h5, or into a part, when published)
    OUT.h5.partial.new     a .partial while HDF5 lays it out (a run killed then leaves only this)
    OUT.h5.partial.force   the .partial belongs to a --force run (nothing older is kept)
    OUT.h5.next            a new index waiting to replace OUT.h5 (its presence is the publish journal)
    OUT.h5.next.new        OUT.h5.next while it is written
    OUT.h5.parts/          the part files of an output extended by later runs (NNNN.h5)
    OUT.h5.parts/.stale    written by earlier versions before a single file replaced an index
    OUT.h5.parts/.retired  parts the last publish stopped referring to: kept for readers that opened the
                           index before it, removed by the next publish
    OUT.h5.lock            the run lock (flock), left in place
    OUT.h5.log             the run's log (rotating: .log.1, .log.2, ...)

An index names its parts ``OUT.h5.parts/NNNN.h5`` (HDF5 virtual datasets need a path
relative to the index), but arielstream finds a part by its number in the parts folder
beside the output as it is named *now* (:meth:`OutputFiles.part`): an output renamed with
its parts folder, or reached through a symlink, is still read and extended; the next run
rewrites the index's names for other readers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .atomic import PARTIAL_SUFFIX
from .storage import local_output

PARTS_SUFFIX = ".parts"
SIDE_SUFFIXES = (PARTIAL_SUFFIX, PARTIAL_SUFFIX + ".new", PARTIAL_SUFFIX + ".force", ".next", ".next.new", ".lock",
                 ".log", *(f".log.{k}" for k in range(1, 4)))  # the files beside OUT.h5, as the properties name them


@dataclass(frozen=True)
class OutputFiles:
    """``OUT.h5`` and every side file of it (see the module doc), from the output's real path.

    Build it with :meth:`of`, which resolves symlinks: the side files sit beside the real file.
    """

    path: Path

    @classmethod
    def of(cls, output: str | Path) -> OutputFiles:
        """The files of ``output``, named from its real (symlink-resolved, absolute) path.

        An output is a local file: a URL is refused (:class:`OutputError`; a data folder may be one).
        """
        return cls(local_output(output).resolve())

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    @property
    def partial(self) -> Path:
        """``OUT.h5.partial``: where the output is built before it is published."""
        return self._beside(PARTIAL_SUFFIX)

    @property
    def partial_staging(self) -> Path:
        """``OUT.h5.partial.new``: a ``.partial`` while HDF5 lays it out."""
        return self._beside(PARTIAL_SUFFIX + ".new")

    @property
    def fresh(self) -> Path:
        """``OUT.h5.partial.force``: the ``.partial`` belongs to a ``--force`` run."""
        return self._beside(PARTIAL_SUFFIX + ".force")

    @property
    def journal(self) -> Path:
        """``OUT.h5.next``: an index waiting to replace ``OUT.h5``."""
        return self._beside(".next")

    @property
    def journal_staging(self) -> Path:
        """``OUT.h5.next.new``: ``OUT.h5.next`` while it is written."""
        return self._beside(".next.new")

    @property
    def parts(self) -> Path:
        """``OUT.h5.parts``: the folder of part files."""
        return self._beside(PARTS_SUFFIX)

    @property
    def stale(self) -> Path:
        """``OUT.h5.parts/.stale``: a single file is replacing the index."""
        return self.parts / ".stale"

    @property
    def retired(self) -> Path:
        """``OUT.h5.parts/.retired``: the parts publishes stopped referring to (:meth:`read_retired`)."""
        return self.parts / ".retired"

    @property
    def lock(self) -> Path:
        """``OUT.h5.lock``: the run lock."""
        return self._beside(".lock")

    @property
    def log(self) -> Path:
        """``OUT.h5.log``: the run's log file."""
        return self._beside(".log")

    def side_files(self) -> tuple[Path, ...]:
        """Every file and folder beside the output that a run writes (the log's rotations too)."""
        return (*(self._beside(suffix) for suffix in SIDE_SUFFIXES), self.parts)

    def part(self, name: str) -> Path:
        """The part file an index calls ``name`` (``OUT.h5.parts/NNNN.h5``): found by its number, here."""
        return self.parts / Path(name).name

    def part_name(self, part: Path) -> str:
        """How an index written now names ``part`` (relative to the output's folder)."""
        return f"{self.parts.name}/{part.name}"

    def owns(self, path: Path) -> bool:
        """True when ``path`` (resolved) is the output, a side file, or inside its parts folder."""
        path = path.resolve()
        return path == self.path or path in self.side_files() or inside(path, self.parts)

    # ------------------------------------------------------------ retired parts
    def read_retired(self) -> tuple[set[str], set[str]]:
        """The parts (``NNNN.h5``) retired: by the last finished publish, and by one under way (or killed).

        ``.retired`` is JSON ``{"earlier": [...], "now": [...]}``; empty sets when none or unreadable.
        """
        try:
            raw = json.loads(self.retired.read_text())
            return {str(n) for n in raw.get("earlier", [])}, {str(n) for n in raw.get("now", [])}
        except (OSError, ValueError, TypeError, AttributeError):
            return set(), set()

    def write_retired(self, earlier: Iterable[str], now: Iterable[str] = ()) -> None:
        """Record the retired parts, atomically (written beside, fsynced, renamed); nothing: the file goes."""
        earlier, now = sorted(set(earlier)), sorted(set(now))
        if not earlier and not now:
            self.retired.unlink(missing_ok=True)
            return
        staging = self.retired.with_name(self.retired.name + ".new")
        with open(staging, "w") as fh:
            fh.write(json.dumps({"earlier": earlier, "now": now}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(staging, self.retired)


def belongs_to(path: Path) -> Path | None:
    """The existing output ``path`` is a side file or a part of (``X.h5.lock``, ``X.h5.parts/0001.h5``), or None."""
    real = path.resolve()
    for suffix in SIDE_SUFFIXES:
        if real.name.endswith(suffix) and real.name != suffix:
            owner = real.with_name(real.name[: -len(suffix)])
            if owner.is_file():
                return owner
    for folder in (real, *real.parents):
        if folder.name.endswith(PARTS_SUFFIX) and folder.name != PARTS_SUFFIX:
            owner = folder.with_name(folder.name[: -len(PARTS_SUFFIX)])
            if owner.is_file() or folder.is_dir():
                return owner
    return None


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or below it."""
    return path == folder or folder in path.parents
