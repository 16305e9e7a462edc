"""The ledger: each observation's state in an output file, and the one code path that changes it.

Every observation of an output has, beside its cubes, a row of bookkeeping:
``status`` (pending, running, done, failed), ``attempts``, ``owner`` (the token of the
attempt allowed to write it), ``checksum``, ``error``, ``provenance`` and ``inputs``.
They are written through memory maps, by the coordinator and by workers on any
machine that sees the file. A :class:`Ledger` over the file's descriptors is the only
writer of those fields, through named transitions::

    pending --claim--> running --done--> done
                       running --fail--> failed          (its cubes NaN, its reason kept)
                       running --abandon--> pending      (the run stopped it: not counted)
    running (writer died) --reconcile--> pending, or failed after MAX_ATTEMPTS deaths in the coordinator
    failed  --reconcile(retry_failed)--> pending         (a new run retries it)
    done    --reset--> pending                           (its bytes no longer match its checksum)

:meth:`Ledger.verify` recomputes the checksums of the done ones. Each transition writes
the fields that must change together in an order that is safe to interrupt: a
done observation's checksum is written before its status, so a status that says
"done" is never ahead of its bytes.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from typing import Any

import numpy as np

from .schema import (
    ATTEMPTS,
    CHECKSUM,
    ERROR,
    ERROR_BYTES,
    INPUTS,
    INPUTS_BYTES,
    OWNER,
    PROVENANCE,
    PROVENANCE_BYTES,
    SIGNAL,
    STATUS,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_RUNNING,
)
from .store import (
    ArrayDescriptor,
    ChecksumScope,
    checksum,
    checksum_scope,
    cube_keys,
    misplaced,
    read_field,
    write_slice,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a coordinator that dies this many times while calibrating one observation itself fails it


class Ledger:
    """The bookkeeping of one output file (its descriptors): read it, and change it by named transitions."""

    def __init__(self, descriptors: dict[str, ArrayDescriptor]):
        self.descriptors = descriptors

    # ------------------------------------------------------------ reading
    def read(self, name: str) -> np.ndarray:
        """A copy of one bookkeeping field of every observation (``status``, ``attempts``, ...)."""
        return read_field(self.descriptors, name)

    def status(self) -> np.ndarray:
        """Every observation's status code."""
        return self.read(STATUS)

    def owner(self, index: int) -> int:
        """The owner token of observation ``index``: who may write it now (0: nobody).

        Read with one ``pread`` of its bytes, not a memory map: a worker asks after every chunk
        (~110 times per observation), and mapping cost ~0.25 ms a time. A read sees what other
        processes wrote through their maps (the same page cache).
        """
        d = self.descriptors[OWNER]
        where = d.item_offset(index)
        fd = os.open(d.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, d.item_bytes, where)
        finally:
            os.close(fd)
        if len(raw) != d.item_bytes:
            raise OSError(f"{d.path}: owner field of observation {index} cut short")
        return int(np.frombuffer(raw, dtype=d.dtype)[0])

    def _write(self, name: str, index: int, value: Any) -> None:
        write_slice(self.descriptors[name], index, value)

    # ------------------------------------------------------------ transitions
    def claim(self, index: int, count_attempt: bool = False) -> int:
        """pending -> running: a new owner token for this attempt, returned.

        ``count_attempt``: it runs in the coordinator's own process, so a death here counts against it.
        """
        token = secrets.randbits(62) + 1
        self._write(OWNER, index, token)
        if count_attempt:
            self._write(ATTEMPTS, index, int(self.read(ATTEMPTS)[index]) + 1)
        self._write(STATUS, index, STATUS_RUNNING)
        return token

    def done(self, index: int, provenance: dict[str, Any], inputs: str, scope: ChecksumScope | None = None) -> None:
        """running -> done: its provenance and inputs, then its checksum, then the status (see :meth:`_record`)."""
        self._record(index, STATUS_DONE, provenance=provenance, inputs=inputs, scope=scope)

    def fail(self, index: int, message: str) -> None:
        """-> failed: NaN every cube of the observation and record why, so nothing half-written looks valid.

        Its owner token is revoked first, so a writer still running somewhere (a dask task, a
        worker being killed) stops before its next write instead of mixing its bytes with these.
        """
        self._write(OWNER, index, 0)
        for key in cube_keys(self.descriptors):
            if key.endswith(f"/{SIGNAL}"):
                write_slice(self.descriptors[key], index, np.nan)
        self._record(index, STATUS_FAILED, error=message)

    def abandon(self) -> list[int]:
        """running -> pending for every observation in flight, without counting the attempt; returns them.

        When the run itself stopped them (an interruption), or a pool broke and took every
        running task down with it, so that none is blamed for another's death.
        """
        status, attempts = self.status(), self.read(ATTEMPTS)
        running = [i for i in range(status.shape[0]) if status[i] == STATUS_RUNNING]
        for index in running:
            self._write(OWNER, index, 0)  # a writer still running somewhere stops at its next write
            self._write(ATTEMPTS, index, max(0, int(attempts[index]) - 1))
            self._write(STATUS, index, STATUS_PENDING)
        return running

    def reset(self, index: int) -> None:
        """-> pending: a done observation to compute again (its bytes fail their checksum, or its inputs changed)."""
        self._write(STATUS, index, STATUS_PENDING)

    def reconcile(self, status: np.ndarray | None = None, retry_failed: bool = False) -> list[int]:
        """Observations left to compute, after accounting for workers that died.

        ``running`` means a writer started and never finished while no coordinator dealt
        with it: its coordinator died. Only attempts made in the coordinator's own process
        (``--jobs 1``, where the observation may have killed it) are counted; after
        :data:`MAX_ATTEMPTS` of those the observation fails, otherwise it goes back to
        pending. Deaths of worker processes are handled by the live coordinator. With
        ``retry_failed`` (a new run) ``failed`` ones are retried from scratch: their input may
        have been fixed. Done ones are checked by :meth:`verify` at the end of the run.
        """
        status = self.status() if status is None else status
        attempts = self.read(ATTEMPTS)
        todo = []
        for index in range(status.shape[0]):
            s = int(status[index])
            if s == STATUS_RUNNING:
                if attempts[index] >= MAX_ATTEMPTS:
                    self.fail(index, f"the run died {int(attempts[index])} times while calibrating it in its own "
                              "process (killed, or out of memory)")
                    continue
                self._write(OWNER, index, 0)
                self._write(STATUS, index, STATUS_PENDING)
                todo.append(index)
            elif s == STATUS_FAILED and retry_failed:
                self._write(ATTEMPTS, index, 0)
                self._write(STATUS, index, STATUS_PENDING)
                todo.append(index)
            elif s != STATUS_FAILED and s != STATUS_DONE:
                todo.append(index)
        return todo

    def verify(self) -> tuple[np.ndarray, list[int]]:
        """Each observation's status as stored, and the done ones whose bytes do not match their checksum.

        The checksum is recomputed against the file the descriptors name (an index's own keys,
        axes and attributes). An observation of an index that its part map does not lead to
        (:func:`arielstream.io.store.misplaced`) is damaged too, whatever its status (0 here).
        """
        scope = checksum_scope(self.descriptors)
        lost = set(misplaced(self.descriptors, scope))
        status = self._read_located(STATUS, lost)
        stored = self._read_located(CHECKSUM, lost)
        damaged = [int(i) for i in np.flatnonzero(status == STATUS_DONE)
                   if int(i) not in lost and stored[i].decode() != checksum(self.descriptors, int(i), scope)]
        return status, sorted(lost.union(damaged))

    # ------------------------------------------------------------ helpers
    def _read_located(self, name: str, skip: set[int]) -> np.ndarray:
        """A field of every observation, leaving out (zero) those in ``skip``, which an index cannot locate."""
        if not skip:
            return self.read(name)
        d = self.descriptors[name]
        out = np.zeros(d.shape, dtype=d.dtype)
        for index in set(range(d.shape[0])) - skip:
            mm = d.open(index, mode="r")
            out[index] = mm
            del mm
        return out

    def _record(self, index: int, status: int, error: str = "", provenance: dict[str, Any] | None = None,
                inputs: str = "", scope: ChecksumScope | None = None) -> None:
        """Its error, provenance and inputs, then its checksum, then (last, so it is true) its status.

        ``owner`` goes back to 0, and a done observation's ``attempts`` too: they only matter
        while it is unfinished, so a file finished after a crash is byte-identical to one made
        in a single run; the log keeps the history. The checksum covers the provenance and
        inputs, so it is computed after they are written; ``scope``: the file's
        :func:`~arielstream.io.store.checksum_scope` (read from it when not given).
        """
        self._write(OWNER, index, 0)
        if status == STATUS_DONE:
            self._write(ATTEMPTS, index, 0)
        for name, value, size in ((ERROR, error, ERROR_BYTES),
                                  (PROVENANCE, json.dumps(provenance or {}, sort_keys=True, default=str),
                                   PROVENANCE_BYTES),
                                  (INPUTS, inputs, INPUTS_BYTES)):
            raw = value.encode("utf-8", "replace")
            if len(raw) > size:
                raw = raw[: size - 3] + b"..."
                if name != ERROR:
                    log.warning("%s of observation %d truncated to %d bytes", name, index, size)
            self._write(name, index, raw)
        self._write(CHECKSUM, index, checksum(self.descriptors, index, scope).encode() if status == STATUS_DONE
                    else b"")
        self._write(STATUS, index, status)
