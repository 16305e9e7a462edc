"""The calibrated output as one object: its run lock, what is on disk, how it is published, what it refuses.

The files themselves are named in :mod:`arielstream.io.sidefiles`; the bookkeeping of each
observation (its status and checksum) is changed only through :mod:`arielstream.io.ledger`.
Here:

* :class:`RunLock`: one run at a time on an output (``OUT.h5.lock``);
* :func:`read_on_disk`: every file holding observations a run may keep (``OUT.h5`` or the
  parts it refers to, an unfinished ``.partial``, parts a killed run left), with what is
  missing or damaged in them;
* :func:`lay_out`: a new ``.partial`` for the observations to compute;
* :func:`publish` and :func:`finish_publish`: ``OUT.h5`` replaced by an atomic rename, or by a
  journalled index over parts, with the parts it stops using retired, not removed, until the
  next publish (a reader that opened the output before keeps reading valid data);
* :func:`check_write_targets`, :func:`check_report_target`, :func:`check_product_target`: no
  write lands on an input, inside the data folder, on the output or on one of its side files
  (exit 78; ``--force`` never overrides that).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import ArielstreamError, ConfigError, ConfigMismatchError, LockBusyError, OutputError, flag
from ..layout import Observation
from . import atomic
from .parts import temp_number
from .schema import ATTR_LAST_PART, INPUTS, PART, PART_INDEX, PLANET_ID, STATUS_DONE, VISIT
from .sidefiles import OutputFiles, belongs_to, inside
from .storage import RemotePath
from .store import (
    ArrayDescriptor,
    ChecksumScope,
    IndexEntry,
    InstrumentLayout,
    checksum,
    checksum_scope,
    create_index,
    create_output,
    index_parts,
    read_descriptors,
    read_field,
)

log = logging.getLogger(__name__)

class UnsafeTargetError(ConfigError):
    """A file the run would write is, or resolves to, something that is not the run's to write (exit 78)."""


def _refuse_input(what: str, option: str, path: Path, data_dir: Path | RemotePath, inputs: Iterable[Path]) -> None:
    """:class:`UnsafeTargetError` when ``path`` is, or resolves to, a path in ``data_dir`` or one of ``inputs``."""
    real, folder = path.resolve(), data_dir.resolve()
    if isinstance(folder, Path) and inside(real, folder):  # (a data folder under a URL holds no local path)
        raise UnsafeTargetError(f"{option} {path}: {what} would be written inside the data folder {folder}; write "
                                "it elsewhere (the inputs are never written)")
    if real in {Path(p).resolve() for p in inputs}:
        raise UnsafeTargetError(f"{option} {path}: {what} would overwrite an input of the run ({real}); write it "
                                "elsewhere")


def _refuse_foreign(what: str, option: str, path: Path) -> None:
    """:class:`UnsafeTargetError` when ``path`` exists and is no regular file, or belongs to another output."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise UnsafeTargetError(f"{option} {path}: {what} would replace something that is not a regular file; "
                                "write it elsewhere")
    owner = belongs_to(path)
    if owner is not None:
        raise UnsafeTargetError(f"{option} {path}: {what} would be written over a side file or a part of the output "
                                f"{owner}; write it elsewhere")


def check_write_targets(output: OutputFiles, data_dir: Path | RemotePath, inputs: Iterable[Path] = (),
                        log_file: bool = True, option: str = "-o") -> None:
    """Refuse (:class:`UnsafeTargetError`, nothing written) an output that would land on what is not its own.

    The output and its side files (the log when ``log_file``) must not be, or resolve to,
    a path inside the data folder or one of ``inputs`` (a manifest, a config file), nor
    a side file or a part of another output, nor anything that is not a regular file.
    """
    inputs = list(inputs)
    _refuse_input("the calibrated output", option, output.path, data_dir, inputs)
    _refuse_foreign("the calibrated output", option, output.path)
    for side in (output.partial, output.parts, output.lock, *((output.log,) if log_file else ())):
        _refuse_input(f"its side file {side.name}", option, side, data_dir, inputs)


def check_report_target(report: Path, data_dir: Path | RemotePath, inputs: Iterable[Path] = (),
                        output: OutputFiles | None = None) -> None:
    """Refuse a ``--report`` that is an input, inside the data folder, or the output or one of its side files."""
    _refuse_input("the run report", "--report", report, data_dir, inputs)
    if output is not None and output.owns(report):
        raise UnsafeTargetError(f"--report {report}: would overwrite the calibrated output or one of its side files "
                                f"({report.resolve().name}); give the report another name")
    if report.is_dir():
        raise UnsafeTargetError(f"--report {report}: is a folder; name the JSON file to write")
    _refuse_foreign("the run report", "--report", report)


def check_product_target(target: str | Path, source: str | Path, option: str = "-o") -> None:
    """Refuse (:class:`UnsafeTargetError`) a product written over what it is made from.

    ``target`` (a file or a folder of files) must not be ``source``, one of its side
    files, or inside the data folder ``source`` was calibrated from (its ``source`` attribute).
    """
    target, files = Path(target), OutputFiles.of(source)
    if files.owns(target):
        raise UnsafeTargetError(f"{option} {target}: would overwrite {source} (the file it is made from) or one of "
                                "its side files; write it elsewhere")
    data_dir = _recorded_data_folder(files.path)
    if data_dir is not None and inside(target.resolve(), data_dir):
        raise UnsafeTargetError(f"{option} {target}: would be written inside the data folder {data_dir} that "
                                f"{Path(source).name} was calibrated from; write it elsewhere")


def _recorded_data_folder(path: Path, depth: int = 3) -> Path | None:
    """The data folder an arielstream file records (``source``), when it is a folder here.

    A product's ``source`` names the file it was made from (a light-curve file names its
    calibrated file): followed, a few steps at most, to the data folder.
    """
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("source")
    except OSError:
        return None
    if value is None:
        return None
    source = Path(value.decode() if isinstance(value, bytes) else str(value))
    if not source.is_absolute():  # a product names its source relative to itself
        source = path.parent / source
    if source.is_dir():
        return source.resolve()
    return _recorded_data_folder(source, depth - 1) if depth > 0 and source.is_file() else None


# ---------------------------------------------------------------- the run lock, what is on disk, publishing
Key = tuple[int, int]  # (planet_id, visit): an observation, wherever its bytes are


def held_open(path: Path, exc: OSError) -> LockBusyError | None:
    """The lock conflict hidden in h5py's open error, when another process holds ``path`` open for writing."""
    if isinstance(exc, BlockingIOError) or "unable to lock file" in str(exc):
        return LockBusyError(f"{path}: another process holds it open for writing (an h5py reader in 'r+' or 'a' "
                             "mode?); close it and run again")
    return None


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``OUT.h5.lock`` for the whole run.

    The kernel drops the lock when the holder dies, so a killed run never blocks
    the next one. The lock file itself is left in place: deleting it would let two
    runs lock two different files.
    """

    # Not filelock: the same flock, but without the holder's pid in the refusal, and a new dependency
    # that the offline Kaggle install (numpy, pyarrow, astropy, numexpr, joblib, h5py, tqdm) lacks.

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = OutputFiles.of(self.output).lock
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock and write this process's id in it, or raise :class:`LockBusyError` at once."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create the run lock: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockBusyError(f"{self.output}: another arielstream run is writing it "
                                    f"({holder or 'pid unknown'}); try again when it has finished") from None
            raise OutputError(f"{self.path}: cannot lock: {exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (the lock file stays)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def key_of(obs: Observation) -> Key:
    """An observation's key in an output: ``(planet_id, visit)``."""
    return (obs.planet_id, obs.visit)


@dataclass
class Source:
    """A file holding calibrated observations a run may keep: ``OUT.h5``, a part, or ``OUT.h5.partial``."""

    path: Path
    published: bool  # OUT.h5 refers to it: trusted as published (verified by `verify` and a complete rerun)
    keys: list[Key]
    descriptors: dict[str, ArrayDescriptor]
    status: np.ndarray
    inputs: list[str]
    checksums: np.ndarray  # as stored (S16), read once: every kept copy from an unpublished file is checked
    scope: ChecksumScope  # its keys, axes and attributes, which its checksums cover (store.checksum_scope)
    position: dict[Key, int] = field(init=False)  # where each observation is in the file

    def __post_init__(self) -> None:
        self.position = {key: i for i, key in enumerate(self.keys)}

    @classmethod
    def read(cls, path: Path, published: bool) -> Source:
        """What ``path`` holds: its observations, their status and the inputs each was computed from."""
        with h5py.File(path, "r") as f:
            keys = list(zip(f[PLANET_ID][()].tolist(), f[VISIT][()].tolist(), strict=True))
            scope = checksum_scope(f)
        descriptors = read_descriptors(path)
        inputs = [v.decode(errors="replace").rstrip("\x00") for v in read_field(descriptors, INPUTS)] \
            if INPUTS in descriptors else [""] * len(keys)
        return cls(path, published, keys, descriptors, read_field(descriptors, "status"), inputs,
                   read_field(descriptors, "checksum"), scope)


@dataclass
class PreparedOutput:
    """Where a run writes, what is left to do there, and what the output will hold once published."""

    action: str  # "new", "resume", "extend", "recompute", "retry-failed", "repair", "update", "complete"
    partial: Path
    descriptors: dict[str, ArrayDescriptor] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)  # indices into observations
    observations: list[Observation] = field(default_factory=list)  # what the .partial holds, in its order
    keys: list[Key] = field(default_factory=list)  # every observation of the published output, in order
    kept: dict[Key, tuple[Path, int]] = field(default_factory=dict)  # observations kept from earlier files
    sizes: dict[Path, int] = field(default_factory=dict)  # observations in each file ``kept`` refers to
    counts: dict[str, list[Key]] = field(default_factory=dict)  # added, recomputed, retried, repaired, kept, dropped
    parts: bool = False  # parts mode (io/parts.py): each observation to compute gets a part of its own, no .partial

    @property
    def single(self) -> bool:
        """The output is the ``.partial`` alone, in its order: published by a rename, no index."""
        return not self.parts and not self.kept and self.keys == [key_of(o) for o in self.observations]


def refused(path: Path, problems: list[str], hint: str = "") -> ConfigMismatchError:
    """The error refusing to mix a run's results with ``path``, made differently (``problems``)."""
    return ConfigMismatchError(f"{path}: made by a different run: {'; '.join(problems)}{hint}. Refusing to mix "
                               f"results: use {flag('force')} to recompute it, or write elsewhere with a different "
                               f"{flag('output', ..., option='-o')} or {flag('run', ...)}")


def part_number(path: Path) -> int:
    """A part's number (``0012.h5`` -> 12), -1 for another name."""
    return int(path.stem) if path.stem.isdigit() else -1


@dataclass
class OnDisk:
    """What a run finds of an output: the files it may keep observations from, and what the index lacks."""

    newest: list[Source]  # unpublished files (.partial, parts a killed run left), newest first
    published: dict[Key, tuple[Source, int]]  # where OUT.h5 puts each observation it holds, readable
    lost: list[Key] = field(default_factory=list)  # observations of OUT.h5 whose part is missing or damaged
    renamed: bool = False  # the index names its parts by another output name (renamed, or reached by a link)


def _published_parts(output: Path, files: OutputFiles, names: list[str], keys: list[Key],
                     where: list[tuple[int, int]], found: OnDisk) -> set[Path]:
    """Read each part of an index; a missing or damaged part's observations become ``lost`` (recomputed)."""
    parts: list[Source | None] = []
    for name in names:
        path = files.part(name)
        found.renamed |= name != files.part_name(path)
        try:
            parts.append(Source.read(path, True))
        except (OSError, ValueError, KeyError, ArielstreamError) as exc:
            log.warning("%s: its part %s is missing or cannot be read (%s); its observations are recomputed",
                        output, name, exc)
            parts.append(None)
    for key, (part, index) in zip(keys, where, strict=True):
        source = parts[part] if 0 <= part < len(parts) else None
        if source is None or not 0 <= index < len(source.keys) or source.keys[index] != key:
            found.lost.append(key)
        else:
            found.published[key] = (source, index)
    return {files.part(name) for name in names}


def read_on_disk(output: Path, mismatch: Callable[[Path], list[str]]) -> OnDisk:
    """Every file with observations this run may keep, newest first, and where ``OUT.h5`` puts each of its own.

    ``OUT.h5`` and ``OUT.h5.partial`` made differently are refused (the user decides);
    a part no index refers to and made differently (left by a run killed while it
    published, before a ``--force``) is ignored and removed by the next publish, and so
    is a part the last publish retired (kept only for readers of the index before it).
    """
    files = OutputFiles.of(output)
    found = OnDisk([], {})
    referenced: set[Path] = set()
    if output.exists():
        problems = mismatch(output)
        if problems:
            raise refused(output, problems)
        with atomic.output_errors(output, "read the output file"):
            with h5py.File(output, "r") as f:
                names = index_parts(f)
                keys = list(zip(f[PLANET_ID][()].tolist(), f[VISIT][()].tolist(), strict=True))
                where = list(zip(f[PART][()].tolist(), f[PART_INDEX][()].tolist(), strict=True)) if names else []
            if names:
                referenced = _published_parts(output, files, names, keys, where, found)
            else:
                single = Source.read(output, True)
                found.published = {key: (single, i) for i, key in enumerate(keys)}
    retired = set().union(*files.read_retired())
    if files.parts.is_dir():
        for path in sorted(files.parts.glob("*.h5"), key=part_number, reverse=True):
            if path in referenced or path.name in retired:
                continue
            if mismatch(path):
                log.debug("%s: a part made differently and referred to by nothing; ignored", path)
                continue
            try:
                found.newest.append(Source.read(path, False))
            except (OSError, ValueError, KeyError, ArielstreamError) as exc:
                log.warning("%s: an unfinished part that cannot be read (%s); ignored", path, exc)
    if files.partial.exists():
        problems = mismatch(files.partial)
        if problems:
            raise refused(files.partial, problems)
        with atomic.output_errors(files.partial, "read the output file"):
            found.newest.insert(0, Source.read(files.partial, False))
    return found


def intact(source: Source, index: int, scope: ChecksumScope | None = None, position: int | None = None,
                 ) -> bool:
    """True when observation ``index`` of ``source`` matches its stored checksum.

    Against the source's own keys and axes, or against ``scope`` (an index's), where
    the observation is at ``position``.
    """
    return source.checksums[index].decode() == checksum(source.descriptors, index,
                                                        source.scope if scope is None else scope, position)


def lay_out(files: OutputFiles, observations: list[Observation], layouts: list[InstrumentLayout],
             attrs: dict[str, Any], action: str, keys_from: list[Observation]) -> PreparedOutput:
    """A new ``.partial`` for ``observations``, laid out under a staging name and renamed.

    A run killed while HDF5 builds the file leaves only ``OUT.h5.partial.new``, which the
    next run discards, never a ``.partial`` h5py cannot open.
    """
    partial, staging = files.partial, files.partial_staging
    staging.unlink(missing_ok=True)
    create_output(staging, observations, layouts, attrs)
    with atomic.output_errors(partial, "create the output file"):
        try:
            os.replace(staging, partial)
        except OSError:
            atomic.discard(staging)
            raise
        descriptors = read_descriptors(partial)
    return PreparedOutput(action, partial, descriptors, list(range(len(observations))), observations,
                          [key_of(o) for o in keys_from])


def lay_out_fresh(output: Path, observations: list[Observation], layouts: list[InstrumentLayout],
                   attrs: dict[str, Any]) -> PreparedOutput:
    """A ``.partial`` for every observation, marked so that a rerun after a kill goes on with it alone."""
    files = OutputFiles.of(output)
    with atomic.output_errors(files.fresh, "mark the --force run"):
        files.fresh.write_text("")  # empty: not a parts-mode --force run's (run/lifecycle.py)
    return lay_out(files, observations, layouts, attrs, "new", observations)


def new_part_path(output: Path) -> Path:
    """The next part's name: one above every part on disk and every part ``OUT.h5`` ever numbered.

    Numbers are never reused, so a reader holding an earlier index never finds other
    observations under a name it knew; nor those of parts still being copied in (parts mode).
    """
    files = OutputFiles.of(output)
    folder = files.parts
    numbers = [part_number(p) for p in folder.glob("*.h5")] if folder.is_dir() else []
    numbers += [temp_number(p) for p in folder.glob(".*")] if folder.is_dir() else []
    for path in (output, files.journal):
        with contextlib.suppress(OSError, KeyError, ValueError):
            with h5py.File(path, "r") as f:
                numbers.append(int(f.attrs[ATTR_LAST_PART]))
    return folder / f"{max(numbers, default=0) + 1:04d}.h5"


def verify_published(output: Path, published: dict[Key, tuple[Source, int]]) -> list[Key]:
    """The done observations of ``OUT.h5`` whose bytes no longer match their checksum.

    Checked against what readers of ``OUT.h5`` see: its own keys, axes and attributes
    (an index's, not those of the parts its observations' bytes are in).
    """
    scope = checksum_scope(output)
    position = {(int(p), int(v)): i for i, (p, v) in enumerate(zip(scope.planet_id, scope.visit, strict=True))}
    damaged = []
    for key, (source, index) in published.items():
        if source.status[index] == STATUS_DONE and (key not in position or
                                                    not intact(source, index, scope, position[key])):
            damaged.append(key)
    return damaged


def _fault(step: str) -> None:
    """Test hook ``ARIELSTREAM_FAULT=kill-publish:STEP``: the run kills itself at that step of a publish."""
    if os.environ.get("ARIELSTREAM_FAULT") == f"kill-publish:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _check_opens(partial: Path) -> None:
    try:
        with h5py.File(partial, "r") as f:
            f["status"][()]
    except OSError as exc:
        busy = held_open(partial, exc)
        if busy is not None:
            raise busy from None
        raise OutputError(f"{partial}: does not open as HDF5 after writing ({exc}); not published") from None


def _fsync_dir(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def publish(prepared: PreparedOutput, output: Path, layouts: list[InstrumentLayout], attrs: dict[str, Any]) -> None:
    """Make ``OUT.h5`` what ``prepared`` says: rename the ``.partial``, or publish an index over parts.

    A single file: a last check that h5py opens it, then the atomic rename. An index
    (observations kept from earlier files): the index is written as ``OUT.h5.next``
    (the journal), the ``.partial`` becomes the next part, and ``OUT.h5.next`` is renamed
    onto ``OUT.h5``; a run killed anywhere in between is finished by the next run
    (:func:`finish_publish`) before it looks at anything else. Parts the new output no
    longer refers to are **retired** before the rename (``OUT.h5.parts/.retired``): a
    reader that opened the output before this publish still finds them; the next publish
    removes them.
    """
    files = OutputFiles.of(output)
    partial = prepared.partial
    computed = bool(prepared.observations) and not prepared.parts  # parts mode: in ``kept`` once computed
    if computed:
        _check_opens(partial)
    if computed and prepared.single:
        try:
            if files.parts.is_dir():  # every part there is replaced (a killed run's too): retired, removed next time
                _retire(files, [], every_part=True)
            _fsync(partial)
            os.replace(partial, output)
        except OSError as exc:  # the .partial stays, whole: the rerun publishes it
            raise OutputError(f"{output}: cannot publish {partial.name}: {exc}; run again to publish it") from None
        _fsync_dir(output.parent)
        _fault("single")
        files.fresh.unlink(missing_ok=True)
        _collect_parts(files)
        return
    folder = files.parts
    with atomic.output_errors(folder, "publish the extended output"):
        folder.mkdir(exist_ok=True)
        kept, sizes = dict(prepared.kept), dict(prepared.sizes)
        number = part_number(new_part_path(output))  # the next free part number
        if output in sizes:  # the single-file output becomes a part, linked
            linked = folder / f"{number:04d}.h5"
            _link(output, linked)
            number += 1
            sizes[linked] = sizes.pop(output)
            kept = {k: (linked if path == output else path, i) for k, (path, i) in kept.items()}
        new_part = folder / f"{number:04d}.h5" if computed else None
        if new_part is not None:
            sizes[new_part] = len(prepared.observations)
        in_partial = {key_of(o): i for i, o in enumerate(prepared.observations)}
        entries = []
        for key in prepared.keys:
            path, index = kept[key] if key in kept else (new_part, in_partial[key])
            assert path is not None
            entries.append(IndexEntry(key, files.part_name(path), index))
        staging = files.journal_staging
        last = max([part_number(path) for path in sizes] + [number - 1])  # and every number used before
        create_index(staging, entries, {files.part_name(path): n for path, n in sizes.items()}, layouts,
                     {**attrs, ATTR_LAST_PART: last})
        _fsync(staging)
        os.replace(staging, files.journal)
        _fsync_dir(output.parent)
    _fault("journal")
    if new_part is not None:
        with atomic.output_errors(new_part, "publish the extended output"):
            _fsync(partial)
            os.replace(partial, new_part)
            _fsync_dir(folder)
    _fault("part")
    finish_publish(output)


def _link(output: Path, part: Path) -> None:
    """``part`` names the same bytes as ``output`` (a hard link; a copy where links are refused)."""
    try:
        os.link(output, part)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
            raise
        log.info("%s: hard links refused (%s); copying %s instead", part, exc.strerror, output.name)
        staging = part.with_name(part.name + ".new")
        shutil.copyfile(output, staging)
        os.replace(staging, part)
    _fsync_dir(part.parent)


def _index_names(path: Path) -> list[str] | None:
    """The part names of the index at ``path`` ([] for a single file, None when there is none or it is unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            return [Path(name).name for name in index_parts(f)]
    except (OSError, KeyError, ValueError):
        return None


def _retire(files: OutputFiles, new_names: list[str], every_part: bool = False) -> None:
    """Before ``OUT.h5`` is replaced: the parts it refers to and the new output does not are retired ("now").

    What earlier publishes retired (and any publish killed before its rename) stays listed
    ("earlier") until :func:`_collect_parts` removes it after the replacement: a run killed in
    between leaves a superset listed, never a part a later run would take for unfinished work.
    """
    old = _index_names(files.path) or []
    if every_part:  # a single file replaces the output: no part on disk may be taken for unfinished work later
        old = sorted(set(old) | {p.name for p in files.parts.glob("*.h5")})
    earlier, now = files.read_retired()
    files.write_retired(earlier | now, set(old) - set(new_names))


def finish_publish(output: Path) -> None:
    """Finish a publish a killed run left half done (``OUT.h5.next`` there), then collect unused parts.

    A ``.stale`` marker (written by an earlier version before a single file replaced an
    index) retires the parts ``OUT.h5`` does not refer to.
    """
    files = OutputFiles.of(output)
    if files.stale.exists():
        names = _index_names(output) or []
        earlier, now = files.read_retired()
        files.write_retired(earlier | now | {p.name for p in files.parts.glob("*.h5") if p.name not in names})
        files.stale.unlink()
    journal = files.journal
    if not journal.exists():
        return
    try:
        with h5py.File(journal, "r") as f:
            names = index_parts(f)
    except OSError as exc:
        log.warning("%s: an unreadable publish journal (%s); removed", journal, exc)
        journal.unlink()
        return
    missing = [name for name in names if not files.part(name).exists()]
    partial = files.partial
    with atomic.output_errors(output, "publish the extended output"):
        if len(missing) == 1 and partial.exists():
            _fsync(partial)
            os.replace(partial, files.part(missing[0]))
            _fsync_dir(files.parts)
        elif missing:
            log.warning("%s: refers to missing parts (%s); removed", journal, ", ".join(missing))
            journal.unlink()
            return
        _retire(files, [Path(name).name for name in names])
        _fault("rename")
        os.replace(journal, output)
        _fsync_dir(output.parent)
        files.fresh.unlink(missing_ok=True)
    log.info("%s: published (an index over %d part(s) in %s)", output, len(names), files.parts.name)
    _collect_parts(files)


def _collect_parts(files: OutputFiles) -> None:
    """After a publish: remove every part ``OUT.h5`` does not refer to, but those this publish retired.

    Those are kept (a reader that opened the output before this publish still reads them)
    and listed as "earlier" in ``.retired``: the next publish removes them.
    """
    folder = files.parts
    if not folder.is_dir():
        return
    names = _index_names(files.path)
    if names is None:  # OUT.h5 cannot be read now: collect nothing rather than every part
        log.warning("%s: cannot read it to collect unused parts; they are left for the next run", files.path)
        return
    used = set(names)
    _, now = files.read_retired()
    keep = now - used
    for path in folder.iterdir():
        if path.name in used or path.name in keep or path in (files.retired, files.stale):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    files.write_retired(keep)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when nothing is left in it
