"""The output's life: one run at a time, built as ``.partial``, resumed, extended, verified, published.

What a run finds on disk, and what it does (under the run lock, ``OUT.h5.lock``):

* nothing → lay out a new ``OUT.h5.partial`` for every observation; when all have a
  final status it is renamed to ``OUT.h5``: one self-contained file;
* files made by the same numerical code, config, split and data folder
  (:mod:`arielstream.run.identity`): ``OUT.h5`` (or the parts it refers to), an
  unfinished ``OUT.h5.partial``, parts a killed run left → each observation wanted is
  **kept** from the newest file where it is done and was computed from the input
  files as they are now (their sizes and modification times, ``/inputs``); what is
  left is computed into a ``.partial`` holding only those:

  - an observation new in the data folder (**extend**), one whose inputs changed
    (**recompute**; ``frozen`` refuses instead), one failed or pending (**retry-failed**);
  - nothing left and ``OUT.h5`` unchanged: every done observation is checked
    against its checksum → **nothing to do** (``complete``), or the damaged ones are
    recomputed (**repair**);
  - an observation ``OUT.h5`` holds that is no longer in the data folder is kept,
    with a warning (``drop_missing`` leaves it out);
  - the ``.partial`` is **resumed** when it holds just what is left; otherwise what it
    finished becomes a part and the rest goes into a new ``.partial``;

* anything made differently → refused (:class:`ConfigMismatchError`, naming what
  differs and what to do); ``force`` → start afresh (the old ``OUT.h5`` stays until
  the new one is published).

**Publishing.** A ``.partial`` that holds every observation, in order, is checked
(h5py opens it) and renamed onto ``OUT.h5``. Otherwise the output becomes an **index**
(:func:`arielstream.io.store.create_index`): ``OUT.h5`` refers, through HDF5 virtual
datasets, to part files in ``OUT.h5.parts/`` (``0001.h5``, ...; a single-file ``OUT.h5``
becomes a part by a hard link, not a copy). Kept observations are never copied or
rewritten: their bytes stay where they were, so appending costs only the new
observations. The publish is journalled: the new index is written as ``OUT.h5.next``,
the ``.partial`` is renamed to its part, ``OUT.h5.next`` is renamed onto ``OUT.h5``
(readers see the old output or the new one, never a mixture), and parts nothing refers
to are removed; a run killed at any step is finished by the next (:func:`finish_publish`).
Kept observations of ``OUT.h5`` are not re-read (their checksums are checked by a
rerun with nothing to do, and by ``arielstream verify``); those kept from files a
killed run left are checked first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import ArielstreamError, OutputError
from ..io import atomic
from ..io.manifest import fingerprint_changes
from ..io.output import OutputFiles
from ..io.store import (
    ATTR_LAST_PART,
    INPUTS,
    PART,
    PART_INDEX,
    PLANET_ID,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_RUNNING,
    VISIT,
    ArrayDescriptor,
    ChecksumScope,
    IndexEntry,
    InstrumentLayout,
    checksum,
    checksum_scope,
    create_index,
    create_output,
    fail_observation,
    index_parts,
    is_output_file,
    misplaced,
    read_descriptors,
    read_field,
    write_field,
)
from ..layout import Observation
from .identity import identity_differences

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a worker that dies this many times on one observation fails it


class LockBusyError(ArielstreamError):
    """Another run holds the output's lock."""


class ConfigMismatchError(ArielstreamError):
    """An existing output was made with other numerical code, config, input or observation list."""


def _held_open(path: Path, exc: OSError) -> LockBusyError | None:
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


Key = tuple[int, int]  # (planet_id, visit): an observation, wherever its bytes are


def _key(obs: Observation) -> Key:
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

    @property
    def single(self) -> bool:
        """The output is the ``.partial`` alone, in its order: published by a rename, no index."""
        return not self.kept and self.keys == [_key(o) for o in self.observations]


def _identity_mismatch(path: Path, identity: dict[str, str], layouts: list[InstrumentLayout]) -> list[str]:
    """What differs between an existing file and this run, by category (empty: the same run may use it)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        busy = _held_open(path, exc)
        if busy is not None:
            raise busy from None
        return [f"not an HDF5 file arielstream can open ({exc})"]
    with f:
        if not is_output_file(f):  # e.g. a light-curve file: say what it is, not how its attributes differ
            return ["not an arielstream calibrated file (another HDF5 file, e.g. light curves or fits)"]
        problems = identity_differences(f.attrs, identity)
        if not problems and not ("planet_id" in f and "visit" in f):
            problems.append("observation list missing")
        if problems:  # the cubes' shapes follow from the config and the observations: not a cause of its own
            return problems
        for lay in layouts:
            name = f"{lay.name}/signal"
            if name not in f or f[name].shape[1:] != lay.signal_shape or \
                    not np.array_equal(f[f"{lay.name}/time"][()], lay.time):
                problems.append(f"{lay.name} cube or time axis differs (the data folder's axis files changed?)")
    return problems


def _refuse(path: Path, problems: list[str], hint: str = "") -> ConfigMismatchError:
    return ConfigMismatchError(f"{path}: made by a different run: {'; '.join(problems)}{hint}. Refusing to mix "
                               "results: use --force to recompute it, or write elsewhere with a different -o or --run")


def _part_number(path: Path) -> int:
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


def _sources(output: Path, identity: dict[str, str], layouts: list[InstrumentLayout]) -> OnDisk:
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
        problems = _identity_mismatch(output, identity, layouts)
        if problems:
            raise _refuse(output, problems)
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
        for path in sorted(files.parts.glob("*.h5"), key=_part_number, reverse=True):
            if path in referenced or path.name in retired:
                continue
            if _identity_mismatch(path, identity, layouts):
                log.debug("%s: a part made differently and referred to by nothing; ignored", path)
                continue
            try:
                found.newest.append(Source.read(path, False))
            except (OSError, ValueError, KeyError, ArielstreamError) as exc:
                log.warning("%s: an unfinished part that cannot be read (%s); ignored", path, exc)
    if files.partial.exists():
        problems = _identity_mismatch(files.partial, identity, layouts)
        if problems:
            raise _refuse(files.partial, problems)
        with atomic.output_errors(files.partial, "read the output file"):
            found.newest.insert(0, Source.read(files.partial, False))
    return found


def _checksum_ok(source: Source, index: int, scope: ChecksumScope | None = None, position: int | None = None,
                 ) -> bool:
    """True when observation ``index`` of ``source`` matches its stored checksum.

    Against the source's own keys and axes, or against ``scope`` (an index's), where
    the observation is at ``position``.
    """
    return source.checksums[index].decode() == checksum(source.descriptors, index,
                                                        source.scope if scope is None else scope, position)


def _choose(key: Key, fingerprint: str | None, newest: list[Source], published: dict[Key, tuple[Source, int]],
            ) -> tuple[tuple[Source, int] | None, list[str]]:
    """The newest copy of ``key`` that is done and computed from the inputs there now; else why none is."""
    candidates = [(s, s.position[key]) for s in newest if key in s.position]
    if key in published:
        candidates.append(published[key])
    changed: list[str] = []
    for source, index in candidates:
        if source.status[index] != STATUS_DONE:
            continue
        if fingerprint is not None:
            diff = fingerprint_changes(source.inputs[index], fingerprint)
            if diff:
                changed = changed or diff
                continue
        if not source.published and not _checksum_ok(source, index):  # written by a run that died
            log.warning("%s: observation %d/visit %d does not match its checksum; recomputed", source.path, *key)
            continue
        return (source, index), []
    return None, changed


def _sort_missing(output: Path, missing: list[Key], found: OnDisk, on_disk: set[Key] | None, drop: bool,
                  counts: dict[str, list[Key]]) -> None:
    """Observations of ``OUT.h5`` this run does not compute: kept, or dropped; logged either way.

    One the run's selection (``--planets``, ``--obs``) left out but still in the data folder is
    always kept as it is, whatever ``drop``: a subset run never takes anything out of an output.
    One whose inputs are gone from the data folder is kept when done (``drop`` leaves it out).
    One whose part is lost and whose inputs are gone cannot be kept.
    """
    selected_out: list[Key] = []
    gone_kept: list[Key] = []
    for key in missing:
        if key not in found.published:  # its part is lost, and it cannot be recomputed
            counts["dropped"].append(key)
            continue
        source, index = found.published[key]
        if on_disk is not None and key in on_disk:
            selected_out.append(key)
            counts["kept"].append(key)
        elif drop or source.status[index] != STATUS_DONE:
            counts["dropped"].append(key)
        else:
            gone_kept.append(key)
            counts["kept"].append(key)
    if selected_out:
        log.info("%s: %d observation(s) not selected by this run are kept as they are", output, len(selected_out))
    if gone_kept:
        log.warning("%s: %d observation(s) no longer in the data folder are kept (%s); --drop-missing leaves them "
                    "out", output, len(gone_kept), ", ".join(f"{p}/visit {v}" for p, v in gone_kept))
    if counts["dropped"]:
        log.warning("%s: %d observation(s) no longer in the data folder are left out (%s)", output,
                    len(counts["dropped"]), ", ".join(f"{p}/visit {v}" for p, v in counts["dropped"]))


def _report_changes(output: Path, changes: dict[Key, list[str]], frozen: bool) -> None:
    """Say which inputs changed (recomputed), or refuse with ``frozen``."""
    if not changes:
        return
    lines = [f"{p}/visit {v}: {'; '.join(c[:3])}" + (f" (+{len(c) - 3} more)" if len(c) > 3 else "")
             for (p, v), c in changes.items()]
    if frozen:
        raise ConfigMismatchError(f"{output}: the inputs of {len(changes)} observation(s) changed since they "
                                  f"were calibrated: {'; '.join(lines[:5])}. Refusing with --frozen: restore "
                                  "the files, or run without --frozen to recompute them")
    for line in lines:
        log.warning("%s: inputs changed since it was calibrated (%s); recomputed", output, line)


def _keep_or_compute(wanted: list[Key], fingerprints: dict[Key, str], found: OnDisk,
                     kept: dict[Key, tuple[Source, int]], counts: dict[str, list[Key]], output: Path,
                     frozen: bool) -> list[Key]:
    """Each wanted observation kept (into ``kept``) or to compute (returned), counted by why."""
    todo_keys: list[Key] = []
    changes: dict[Key, list[str]] = {}
    newest, published, lost = found.newest, found.published, set(found.lost)
    for key in wanted:
        chosen, changed = _choose(key, fingerprints.get(key), newest, published)
        if chosen is not None:
            kept[key] = chosen
            continue
        todo_keys.append(key)
        if changed:  # done somewhere, from other inputs
            counts["recomputed"].append(key)
            changes[key] = changed
        elif key in lost:  # its part is missing or damaged
            counts["repaired"].append(key)
        elif key in published:
            counts["retried"].append(key)
        elif not any(key in source.position for source in newest):  # a stopped run's pending ones are not new
            counts["added"].append(key)
    _report_changes(output, changes, frozen)
    return todo_keys


def prepare_output(output: Path, observations: list[Observation], layouts: list[InstrumentLayout],
                   attrs: dict[str, Any], identity: dict[str, str], force: bool = False, *,
                   fingerprints: dict[Key, str] | None = None, frozen: bool = False, drop_missing: bool = False,
                   extend: bool = True, on_disk: set[Key] | None = None) -> PreparedOutput:
    """Decide from what is on disk what to compute and what to keep (see the module doc).

    ``fingerprints``: each observation's inputs now (:func:`arielstream.io.manifest.fingerprint`);
    ``frozen``: refuse rather than recompute observations whose inputs changed;
    ``drop_missing``: leave out of the output what is no longer in the data folder;
    ``on_disk``: every observation in the data folder, selected or not (``None``: those of
    ``observations``): what the output holds of the others is kept, whatever ``drop_missing``;
    ``extend=False``: the observations depend on each other (a master over the whole
    dataset), so a changed observation list or input is refused instead.
    """
    output = Path(output)
    files = OutputFiles.of(output)
    partial = files.partial
    finish_publish(output)
    for leftover in (files.partial_staging, files.journal_staging):
        leftover.unlink(missing_ok=True)
    current = {_key(o): o for o in observations}
    wanted = sorted(current)
    if force:
        return _lay_out_fresh(output, observations, layouts, attrs)
    found = _sources(output, identity, layouts)
    if files.fresh.exists() and found.newest and found.newest[0].path == partial:  # a --force run stopped: it
        if found.newest[0].keys != wanted:  # goes on, alone
            log.warning("%s: the --force run that stopped was for other observations; starting it again", output)
            return _lay_out_fresh(output, observations, layouts, attrs)
        found = OnDisk(found.newest[:1], {})
    files.fresh.unlink(missing_ok=True)
    newest, published = found.newest, found.published
    if not newest and not published and not found.lost:
        return _lay_out(files, observations, layouts, attrs, "new", observations)
    counts: dict[str, list[Key]] = {name: [] for name in ("added", "recomputed", "retried", "repaired", "kept",
                                                          "dropped")}
    missing = sorted((set(published) | set(found.lost)) - set(current))
    _sort_missing(output, missing, found, on_disk, drop_missing, counts)
    kept: dict[Key, tuple[Source, int]] = {key: published[key] for key in counts["kept"]}
    todo_keys = _keep_or_compute(wanted, fingerprints or {}, found, kept, counts, output, frozen)
    if not extend and (counts["added"] or counts["recomputed"] or missing):
        problems = [f"observation list differs ({len(counts['added'])} new, {len(missing)} missing)"] \
            if counts["added"] or missing else [f"the inputs of {len(counts['recomputed'])} observation(s) changed"]
        raise _refuse(output if output.exists() else partial, problems,
                      " (with master_calibration = \"dataset\" every observation depends on all the others)")
    keys = sorted(set(wanted) | set(counts["kept"]))
    unchanged = bool(published) and keys == list(published) and not found.lost and not found.renamed and \
        all(kept.get(k) == published[k] for k in keys)
    if not todo_keys and unchanged:
        damaged = verify_published(output, published)
        if not damaged:
            if partial.exists():  # nothing of it is kept (what it finished is older than OUT.h5's copies)
                atomic.discard(partial)
            return PreparedOutput("complete", partial, keys=keys, counts=counts)
        log.warning("%s: %d done observation(s) no longer match their checksum (the file was damaged after it was "
                    "published): %s; they are recomputed", output, len(damaged),
                    ", ".join(f"{p}/visit {v}" for p, v in damaged))
        for key in damaged:
            kept.pop(key)
            counts["repaired" if key in current else "dropped"].append(key)
        if counts["dropped"]:  # damaged, and its inputs are gone from the data folder: it cannot be recomputed
            log.error("%s: %d damaged observation(s) cannot be recomputed (their inputs are no longer in the data "
                      "folder) and are left out: %s", output, len(counts["dropped"]),
                      ", ".join(f"{p}/visit {v}" for p, v in counts["dropped"]))
            keys = [k for k in keys if k not in counts["dropped"]]
        todo_keys = counts["repaired"]
    action = ("extend" if counts["added"] else "recompute" if counts["recomputed"] else
              "repair" if counts["repaired"] else "retry-failed" if counts["retried"] else "update")
    prepared = _partial_for(output, newest, kept, sorted(todo_keys), current, layouts, attrs, action)
    prepared.keys, prepared.counts = keys, counts
    prepared.kept = {k: (s.path, i) for k, (s, i) in kept.items() if s.path != partial}
    prepared.sizes = {s.path: len(s.keys) for s, _ in kept.values() if s.path != partial}
    return prepared


def _partial_for(output: Path, newest: list[Source], kept: dict[Key, tuple[Source, int]], todo_keys: list[Key],
                 current: dict[Key, Observation], layouts: list[InstrumentLayout], attrs: dict[str, Any],
                 action: str) -> PreparedOutput:
    """The ``.partial`` that computes ``todo_keys``: the one there, resumed, if it holds just those; else a new one.

    A ``.partial`` laid out for other observations becomes a part (the observations it
    finished are kept from there), or is removed when it holds nothing kept.
    """
    files = OutputFiles.of(output)
    partial = files.partial
    existing = newest[0] if newest and newest[0].path == partial else None
    if existing is not None:
        from_partial = {k for k, (s, _) in kept.items() if s is existing}
        if set(existing.keys) == set(todo_keys) | from_partial:
            todo = reconcile(existing.descriptors, existing.status, retry_failed=True)
            for key in todo_keys:  # done there but no longer kept: inputs changed, or its checksum failed
                index = existing.position[key]
                if index not in todo:
                    write_field(existing.descriptors, "status", index, STATUS_PENDING)
                    todo.append(index)
            return PreparedOutput("resume", partial, existing.descriptors, sorted(todo),
                                  [current[k] for k in existing.keys])
        if from_partial:
            existing.path = _new_part_path(output)
            existing.path.parent.mkdir(exist_ok=True)
            with atomic.output_errors(existing.path, "keep the finished observations of the unfinished run"):
                os.replace(partial, existing.path)
                existing.descriptors = read_descriptors(existing.path)
            log.info("%s: the unfinished run's %d done observation(s) are kept in %s", output, len(from_partial),
                     existing.path)
        else:
            atomic.discard(partial)
    if not todo_keys:
        return PreparedOutput(action, partial)
    observations = [current[k] for k in todo_keys]
    return _lay_out(files, observations, layouts, attrs, action, observations)


def _lay_out(files: OutputFiles, observations: list[Observation], layouts: list[InstrumentLayout],
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
                          [_key(o) for o in keys_from])


def _lay_out_fresh(output: Path, observations: list[Observation], layouts: list[InstrumentLayout],
                   attrs: dict[str, Any]) -> PreparedOutput:
    """A ``.partial`` for every observation, marked so that a rerun after a kill goes on with it alone."""
    files = OutputFiles.of(output)
    with atomic.output_errors(files.fresh, "mark the --force run"):
        files.fresh.touch()
    return _lay_out(files, observations, layouts, attrs, "new", observations)


def _new_part_path(output: Path) -> Path:
    """The next part's name: one above every part on disk and every part ``OUT.h5`` ever numbered.

    Numbers are never reused, so a reader holding an earlier index never finds other
    observations under a name it knew.
    """
    files = OutputFiles.of(output)
    folder = files.parts
    numbers = [_part_number(p) for p in folder.glob("*.h5")] if folder.is_dir() else []
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
                                                    not _checksum_ok(source, index, scope, position[key])):
            damaged.append(key)
    return damaged


def reconcile(descriptors: dict[str, ArrayDescriptor], status: np.ndarray | None = None,
              retry_failed: bool = False) -> list[int]:
    """Observations left to compute, after accounting for workers that died.

    ``running`` means a writer started and never finished while no coordinator
    dealt with it: its coordinator died. Only attempts made in the coordinator's own
    process (``--jobs 1``, where the observation may have killed it) are counted;
    after ``MAX_ATTEMPTS`` of those the observation fails, otherwise it goes back to
    pending. Deaths of worker processes are handled by the live coordinator. With
    ``retry_failed`` (a new run) ``failed`` ones are retried from scratch: their input
    may have been fixed. Done ones are checked by :func:`verify` at the end of the run.
    """
    status = read_field(descriptors, "status") if status is None else status
    attempts = read_field(descriptors, "attempts")
    todo = []
    for index in range(status.shape[0]):
        s = int(status[index])
        if s == STATUS_RUNNING:
            if attempts[index] >= MAX_ATTEMPTS:
                fail_observation(descriptors, index, f"the run died {int(attempts[index])} times while "
                                 "calibrating it in its own process (killed, or out of memory)")
                continue
            write_field(descriptors, "owner", index, 0)
            write_field(descriptors, "status", index, STATUS_PENDING)
            todo.append(index)
        elif s == STATUS_FAILED and retry_failed:
            write_field(descriptors, "attempts", index, 0)
            write_field(descriptors, "status", index, STATUS_PENDING)
            todo.append(index)
        elif s == STATUS_FAILED:
            continue
        elif s != STATUS_DONE:
            todo.append(index)
    return todo


def _read_located(descriptors: dict[str, ArrayDescriptor], key: str, skip: set[int]) -> np.ndarray:
    """A per-observation field, leaving out (zero) the observations in ``skip``, which an index cannot locate."""
    if not skip:
        return read_field(descriptors, key)
    d = descriptors[key]
    out = np.zeros(d.shape, dtype=d.dtype)
    for index in set(range(d.shape[0])) - skip:
        mm = d.open(index, mode="r")
        out[index] = mm
        del mm
    return out


def verify_report(descriptors: dict[str, ArrayDescriptor]) -> tuple[np.ndarray, list[int]]:
    """Each observation's status as stored, and the done ones whose bytes do not match their checksum.

    The checksum is recomputed against the file the descriptors name (an index's own keys,
    axes and attributes). An observation of an index that its part map does not lead to
    (:func:`arielstream.io.store.misplaced`) is damaged too, whatever its status (0 here).
    """
    scope = checksum_scope(descriptors)
    lost = set(misplaced(descriptors, scope))
    status = _read_located(descriptors, "status", lost)
    stored = _read_located(descriptors, "checksum", lost)
    damaged = [int(i) for i in np.flatnonzero(status == STATUS_DONE)
               if int(i) not in lost and stored[i].decode() != checksum(descriptors, int(i), scope)]
    return status, sorted(lost.union(damaged))


def verify(descriptors: dict[str, ArrayDescriptor]) -> list[int]:
    """Indices of done observations whose bytes do not match their checksum (:func:`verify_report`)."""
    return verify_report(descriptors)[1]


def _fault(step: str) -> None:
    """Test hook ``ARIELSTREAM_FAULT=kill-publish:STEP``: the run kills itself at that step of a publish."""
    if os.environ.get("ARIELSTREAM_FAULT") == f"kill-publish:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _check_opens(partial: Path) -> None:
    try:
        with h5py.File(partial, "r") as f:
            f["status"][()]
    except OSError as exc:
        busy = _held_open(partial, exc)
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
    computed = bool(prepared.observations)
    if computed:
        _check_opens(partial)
    if computed and prepared.single:
        try:
            if files.parts.is_dir():  # what they hold is replaced: retired, removed by the next publish
                _retire(files, [])
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
        number = _part_number(_new_part_path(output))  # the next free part number
        if output in sizes:  # the single-file output becomes a part, linked
            linked = folder / f"{number:04d}.h5"
            _link(output, linked)
            number += 1
            sizes[linked] = sizes.pop(output)
            kept = {k: (linked if path == output else path, i) for k, (path, i) in kept.items()}
        new_part = folder / f"{number:04d}.h5" if computed else None
        if new_part is not None:
            sizes[new_part] = len(prepared.observations)
        in_partial = {_key(o): i for i, o in enumerate(prepared.observations)}
        entries = []
        for key in prepared.keys:
            path, index = kept[key] if key in kept else (new_part, in_partial[key])
            assert path is not None
            entries.append(IndexEntry(key, files.part_name(path), index))
        staging = files.journal_staging
        last = max([_part_number(path) for path in sizes] + [number - 1])  # and every number used before
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


def _retire(files: OutputFiles, new_names: list[str]) -> None:
    """Before ``OUT.h5`` is replaced: the parts it refers to and the new output does not are retired ("now").

    What earlier publishes retired (and any publish killed before its rename) stays listed
    ("earlier") until :func:`_collect_parts` removes it after the replacement: a run killed in
    between leaves a superset listed, never a part a later run would take for unfinished work.
    """
    old = _index_names(files.path) or []
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
    used = set(_index_names(files.path) or [])
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
