"""The output's life: one run at a time, built as ``.partial``, resumed, verified, published.

States of ``OUT.h5`` and ``OUT.h5.partial`` and what a run does with them:

* neither exists → lay out a new ``OUT.h5.partial``;
* ``OUT.h5.partial`` exists and was made by the same numerical code, config, split,
  data folder and observation list (:mod:`arielstream.run.identity`) → **resume**:
  only what is not done is computed;
* ``OUT.h5`` exists, the same, and every observation is done and still matches its
  checksum → **nothing to do**; the same but some observations failed, or some
  done ones no longer match their checksum (bytes damaged after publishing) → it
  goes back to ``.partial`` and only those are computed again (**retry-failed**,
  **repair**);
* anything made differently → refused (:class:`ConfigMismatchError`, naming what
  differs and what to do);
* ``force`` → always start afresh (the old ``OUT.h5`` stays until the new one is
  published).

When every observation has a final status the checksums are verified, the file
is opened with h5py as a last check and renamed to ``OUT.h5`` atomically.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import ArielstreamError, OutputError
from ..io import atomic
from ..io.store import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_RUNNING,
    ArrayDescriptor,
    InstrumentLayout,
    check_room,
    checksum,
    create_output,
    fail_observation,
    is_output_file,
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


def partial_path(output: Path) -> Path:
    """``OUT.h5.partial``: where ``OUT.h5`` is built before it is published."""
    return atomic.partial_path(output)


def lock_path(output: Path) -> Path:
    """``OUT.h5.lock``: the file a run holds locked while it writes ``OUT.h5``."""
    return output.with_name(output.name + ".lock")


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``OUT.h5.lock`` for the whole run.

    The kernel drops the lock when the holder dies, so a killed run never blocks
    the next one. The lock file itself is left in place: deleting it would let two
    runs lock two different files.
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        self.path = lock_path(self.output)
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


@dataclass
class PreparedOutput:
    """Where a run writes and what is left to do there."""

    action: str  # "new", "resume", "retry-failed", "repair" (damaged done observations), "complete"
    partial: Path
    descriptors: dict[str, ArrayDescriptor] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)


def _observation_differences(stored_planets: np.ndarray, stored_visits: np.ndarray,
                             observations: list[Observation]) -> list[str]:
    stored = list(zip(stored_planets.tolist(), stored_visits.tolist(), strict=False))
    current = [(o.planet_id, o.visit) for o in observations]
    if stored == current:
        return []
    new, missing = set(current) - set(stored), set(stored) - set(current)
    if not new and not missing:
        return ["observation list differs (the same observations in another order)"]
    return [f"observation list differs ({len(new)} new, {len(missing)} missing)"]


def _identity_mismatch(path: Path, identity: dict[str, str], observations: list[Observation],
                       layouts: list[InstrumentLayout]) -> list[str]:
    """What differs between an existing file and this run, by category (empty: it is the same run)."""
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
        if "planet_id" in f and "visit" in f:
            problems += _observation_differences(f["planet_id"][()], f["visit"][()], observations)
        elif not problems:
            problems.append("observation list missing")
        if problems:  # the cubes' shapes follow from the config and the observations: not a cause of its own
            return problems
        for lay in layouts:
            name = f"{lay.name}/signal"
            if name not in f or f[name].shape[1:] != lay.signal_shape or \
                    not np.array_equal(f[f"{lay.name}/time"][()], lay.time):
                problems.append(f"{lay.name} cube or time axis differs (the data folder's axis files changed?)")
    return problems


def prepare_output(output: Path, observations: list[Observation], layouts: list[InstrumentLayout],
                   attrs: dict[str, Any], identity: dict[str, str], force: bool = False) -> PreparedOutput:
    """Decide from what is on disk whether to create, resume, retry or do nothing (see module doc)."""
    output = Path(output)
    partial = partial_path(output)
    existing = [] if force else [(partial, False), (output, True)]
    for candidate, published in existing:
        if not candidate.exists():
            continue
        problems = _identity_mismatch(candidate, identity, observations, layouts)
        if problems:
            raise ConfigMismatchError(
                f"{candidate}: made by a different run: {'; '.join(problems)}. Refusing to mix results: "
                "use --force to recompute it, or write elsewhere with a different -o or --run")
        descriptors = read_descriptors(candidate)
        status = read_field(descriptors, "status")
        if published:
            failed = np.flatnonzero(status != STATUS_DONE)
            damaged = verify(descriptors)  # never call "complete" a file whose bytes changed since publishing
            if failed.size == 0 and not damaged:
                return PreparedOutput("complete", partial, descriptors, [])
            # a copy goes back under construction; OUT.h5 stays readable until the retry is published
            descriptors = _copy_for_retry(output, partial)
            action = "retry-failed"
            if damaged:
                log.warning("%s: %d done observation(s) no longer match their checksum (the file was damaged "
                            "after it was published): %s; they go back to pending and are recomputed",
                            output, len(damaged), ", ".join(observations[i].label for i in damaged))
                for index in damaged:
                    write_field(descriptors, "status", index, STATUS_PENDING)
                status = read_field(descriptors, "status")
                action = "repair"
        else:
            action = "resume"
        todo = reconcile(descriptors, status, retry_failed=True)
        return PreparedOutput(action, partial, descriptors, todo)
    # Laid out under a temporary name and renamed: a run killed while HDF5 builds the file leaves
    # only OUT.h5.partial.new, which the next run discards, never a .partial h5py cannot open.
    staging = partial.with_name(partial.name + ".new")
    staging.unlink(missing_ok=True)
    create_output(staging, observations, layouts, attrs)
    with atomic.output_errors(partial, "create the output file"):
        try:
            os.replace(staging, partial)
        except OSError:
            atomic.discard(staging)
            raise
        descriptors = read_descriptors(partial)
    return PreparedOutput("new", partial, descriptors, list(range(len(observations))))


def _copy_for_retry(output: Path, partial: Path) -> dict[str, ArrayDescriptor]:
    """Copy ``OUT.h5`` to ``OUT.h5.partial`` (through a staging name), with its space reserved first.

    A full disk or an I/O error is an :class:`OutputError` and leaves only ``OUT.h5``, untouched.
    """
    staging = partial.with_name(partial.name + ".new")
    size = output.stat().st_size
    check_room(staging, size)
    try:
        with open(staging, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)
        shutil.copyfile(output, staging)
        os.replace(staging, partial)
    except OSError as exc:
        atomic.discard(staging)
        raise OutputError(f"{partial}: cannot copy {output.name} back to retry its failed observations: {exc}") \
            from None
    with atomic.output_errors(partial, "read the output file"):
        return read_descriptors(partial)


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


def verify(descriptors: dict[str, ArrayDescriptor]) -> list[int]:
    """Indices of done observations whose bytes do not match their checksum."""
    status = read_field(descriptors, "status")
    stored = read_field(descriptors, "checksum")
    return [int(i) for i in np.flatnonzero(status == STATUS_DONE)
            if stored[i].decode() != checksum(descriptors, int(i))]


def publish(partial: Path, output: Path) -> None:
    """Last check that h5py can open the file, then the atomic rename."""
    try:
        with h5py.File(partial, "r") as f:
            f["status"][()]
    except OSError as exc:
        busy = _held_open(partial, exc)
        if busy is not None:
            raise busy from None
        raise OutputError(f"{partial}: does not open as HDF5 after writing ({exc}); not published") from None
    try:
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, output)
    except OSError as exc:  # the .partial stays, whole: the rerun publishes it
        raise OutputError(f"{output}: cannot publish {partial.name}: {exc}; run again to publish it") from None
    try:
        dir_fd = os.open(output.parent, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass
