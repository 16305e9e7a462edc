"""Parts mode: every observation written into a part file of its own, with ordinary writes, then published.

In the default mode every worker writes its observation into the one ``OUT.h5.partial``
through shared memory maps, which needs storage that keeps writes from several machines
into one file coherent. In parts mode (``--parts``; the default with ``--backend dask``)
no process ever maps a file that another process or machine writes:

1. the coordinator lays out a **template** once (:meth:`PartTemplate.lay_out`): an output
   file of the standard layout (:func:`arielstream.io.store.create_output`) for one
   observation, kept in memory as the bytes outside its per-observation data (HDF5's
   metadata and the header datasets, ~40 kB) plus the offsets of that data;
2. each task writes those bytes into a file in its own temporary folder (``TMPDIR``),
   patches its key (``planet_id``, ``visit``) in, and calibrates into that local copy
   through memory maps, as in the default mode (:meth:`PartTemplate.write`): no HDF5 in
   the workers;
3. the task copies the file into the output's parts folder under a temporary name
   (``OUT.h5.parts/.NNNN.h5.<random>.tmp``, which no reader takes for a part), fsyncs and
   closes it, then links it to the name the coordinator gave that attempt
   (``NNNN.h5``, a number never used before: :func:`arielstream.io.output.new_part_path`),
   which fails rather than replace a part already there, removes the temporary name and
   fsyncs the folder (:func:`publish_part`);
4. once the task has returned, the coordinator reads the part with ordinary reads and
   checks it (:func:`check_part`): its size and metadata are the template's, its key is the
   task's, its status the one reported and, done, its checksum matches its bytes; the
   bookkeeping that the default mode keeps in the ``.partial`` (status, the part of each
   observation) stays in the coordinator's memory for the run (:class:`PartsLedger`);
5. at the end the coordinator publishes an index over the parts, as incremental runs do
   (:func:`arielstream.io.output.publish`), which also removes temporary names left by
   killed writers.

The storage needs only close-to-open consistency (a file closed by one machine reads
whole when another opens it after) and an atomic link or rename within a folder: NFS
qualifies. A run killed at any point leaves whole parts, which the next run keeps like
any unreferenced part (:func:`arielstream.io.output.read_on_disk`), and temporary names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from ..errors import OutputError
from ..layout import Observation
from . import atomic
from .ledger import Ledger
from .schema import CHECKSUM, PLANET_ID, STATUS, STATUS_DONE, STATUS_FAILED, STATUS_PENDING, STATUS_RUNNING, VISIT
from .store import ArrayDescriptor, ChecksumScope, InstrumentLayout, checksum, checksum_scope, create_output, read_field

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"  # a part being copied into the parts folder: .NNNN.h5.<random>.tmp
LOCAL_PREFIX = "arielstream-part-"  # a part being calibrated, in the worker's temporary folder


def temp_name(name: str) -> str:
    """The temporary name of part ``name`` (``NNNN.h5``) while it is copied in: never matched by ``*.h5``."""
    return f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def temp_number(path: Path) -> int:
    """The part number a temporary name stands for (``.0007.h5.ab12.tmp`` -> 7), -1 for any other name."""
    parts = path.name.split(".")
    if len(parts) == 5 and parts[0] == "" and parts[1].isdigit() and parts[2] == "h5" and path.suffix == TEMP_SUFFIX:
        return int(parts[1])
    return -1


@dataclass(frozen=True)
class _InMemory(ArrayDescriptor):
    """A dataset of a part read into memory (:func:`check_part`): ``open`` views the bytes, read-only."""

    raw: bytes = b""

    def open(self, index: int | None = None, mode: Literal["r", "r+"] = "r") -> np.memmap:
        """A read-only view of the whole dataset, or of observation ``index``'s slice."""
        if mode != "r":
            raise ValueError(f"{self.path}: read into memory; open it with mode='r'")
        shape = self.shape if index is None else self.shape[1:]
        offset = self.offset if index is None else self.item_offset(index)
        count = int(np.prod(shape, dtype=np.int64))
        view = np.frombuffer(self.raw, dtype=self.dtype, count=count, offset=offset).reshape(shape)
        return view  # type: ignore[return-value]  # an ndarray where a memmap is declared: read the same way


@dataclass(frozen=True)
class PartTemplate:
    """A one-observation output file as bytes: what every part of a run starts from (see the module doc)."""

    size: int  # bytes of the file
    segments: tuple[tuple[int, bytes], ...]  # (offset, bytes): everything but the per-observation data
    arrays: dict[str, ArrayDescriptor]  # each per-observation dataset: offset, shape (1, ...), dtype (path "")
    key_at: tuple[tuple[str, int, str], ...]  # (planet_id | visit, offset, dtype) of the key's bytes
    scope: ChecksumScope  # what the checksum covers besides the data: the template's (its key replaced per part)

    @classmethod
    def lay_out(cls, observation: Observation, layouts: list[InstrumentLayout], attrs: dict[str, Any],
                ) -> PartTemplate:
        """Lay out a one-observation output (HDF5, in a forked child) in a temporary folder and read it in."""
        with tempfile.TemporaryDirectory(prefix=LOCAL_PREFIX) as folder:
            path = Path(folder) / "template.h5"
            descriptors = create_output(path, [observation], layouts, attrs)
            raw = path.read_bytes()
            with h5py.File(path, "r") as f:
                key_at = []
                for name in (PLANET_ID, VISIT):
                    offset = f[name].id.get_offset()
                    if offset is None or f[name].chunks is not None:
                        raise OutputError(f"{path}: dataset {name} is not contiguous and allocated")
                    key_at.append((name, int(offset), f[name].dtype.str))
            scope = checksum_scope(path)
        data = sorted((d.offset, d.offset + d.shape[0] * d.item_bytes) for d in descriptors.values())
        segments, at = [], 0
        for start, stop in [*data, (len(raw), len(raw))]:
            if start > at:
                segments.append((at, raw[at:start]))
            at = max(at, stop)
        for name, offset, dtype in key_at:  # HDF5 put the key among the header's bytes, never in the data
            stop = offset + np.dtype(dtype).itemsize
            if not any(start <= offset and stop <= start + len(b) for start, b in segments):
                raise OutputError(f"{path}: dataset {name} is not among the bytes a part copies from the template")
        arrays = {key: dataclasses.replace(d, path="") for key, d in descriptors.items()}
        return cls(len(raw), tuple(segments), arrays, tuple(key_at), scope)

    def header(self, key: tuple[int, int]) -> list[tuple[int, bytes]]:
        """The part of ``key`` outside its data: the template's segments with that key's bytes written in."""
        out = []
        for start, raw in self.segments:
            segment = bytearray(raw)
            for (_, offset, dtype), value in zip(self.key_at, key, strict=True):
                if start <= offset < start + len(raw):
                    value_bytes = np.array([value], dtype=dtype).tobytes()
                    segment[offset - start: offset - start + len(value_bytes)] = value_bytes
            out.append((start, bytes(segment)))
        return out

    def descriptors(self, path: str | Path) -> dict[str, ArrayDescriptor]:
        """The memmap descriptors of a part written from this template at ``path``."""
        return {key: dataclasses.replace(d, path=str(path)) for key, d in self.arrays.items()}

    def scope_for(self, key: tuple[int, int]) -> ChecksumScope:
        """The checksum scope of the part holding ``key``: the template's axes and attributes, that key."""
        planet, visit = (np.array([value], dtype=dtype) for (_, _, dtype), value in zip(self.key_at, key, strict=True))
        return dataclasses.replace(self.scope, planet_id=planet, visit=visit)

    def write(self, path: Path, key: tuple[int, int]) -> None:
        """A part for ``key`` at ``path``: its whole size reserved, the template's bytes, the key (no HDF5).

        The data stay zeros (as in a new output) until the observation is written into them.
        """
        with atomic.output_errors(path, "create a part file"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.posix_fallocate(fd, 0, self.size)  # a full disk fails here, not as a SIGBUS in a memmap
                for offset, raw in self.header(key):
                    os.pwrite(fd, raw, offset)
            finally:
                os.close(fd)


SWEEP_AGE_SECONDS = 60.0  # a local part younger than this is never swept (its writer may not hold its lock yet)


def sweep_local_parts(folder: str | Path | None = None, min_age: float = SWEEP_AGE_SECONDS) -> list[Path]:
    """Remove the local parts that killed workers left in ``folder`` (``TMPDIR``); those removed.

    A writer holds an exclusive ``flock`` on its local part from its creation until it is
    removed (:func:`local_part`); the lock goes with the writer's process. A part nobody holds
    locked, older than ``min_age`` seconds, is nobody's: its observation went to another
    attempt when its worker died. The lock, not a process id, decides, so workers in other PID
    namespaces (containers) or on other hosts sharing the folder never lose a part in use.
    """
    removed = []
    now = time.time()
    for path in Path(folder or tempfile.gettempdir()).glob(f"{LOCAL_PREFIX}*.h5"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to read
        try:
            if now - os.fstat(fd).st_mtime < min_age:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer holds it
            atomic.discard(path)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def local_part(template: PartTemplate, key: tuple[int, int]) -> Iterator[Path]:
    """A part for ``key`` in this process's temporary folder (``TMPDIR``), locked, removed when the block ends.

    What killed workers left there is removed first (:func:`sweep_local_parts`).
    """
    if removed := sweep_local_parts():
        log.info("removed %d local part(s) that killed workers left in %s", len(removed), removed[0].parent)
    fd, name = tempfile.mkstemp(prefix=f"{LOCAL_PREFIX}{os.getpid()}-", suffix=".h5")
    path = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the part is removed: no sweep takes it meanwhile
        template.write(path, key)
        yield path
    finally:
        atomic.discard(path)
        os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def publish_part(local: Path, folder: Path, name: str, before_link: Callable[[Path], None] = lambda _: None,
                 ) -> bool:
    """Copy ``local`` into ``folder`` as part ``name``: a temporary name, fsync, close, link, fsync the folder.

    False (nothing published) when a part ``name`` is already there: a part is never
    replaced. Where the filesystem refuses hard links, the temporary file is renamed
    instead (after checking the name is free). ``before_link`` (a test hook) is called with
    the temporary path once it is whole. An ``OSError`` is an :class:`OutputError`.
    """
    final, temp = folder / name, folder / temp_name(name)
    with atomic.output_errors(folder, "publish a part"):
        try:
            with open(local, "rb") as src, open(temp, "xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            before_link(temp)
            try:
                os.link(temp, final)
            except FileExistsError:
                # NFS: a retransmitted link that had succeeded answers EEXIST; then the name is this file
                return _same_file(temp, final)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                    raise
                if final.exists():
                    return False
                os.replace(temp, final)
        finally:
            atomic.discard(temp)
        atomic._fsync_folder(folder)
    return True


def check_part(path: Path, template: PartTemplate, key: tuple[int, int], status: int) -> str:
    """Why the part at ``path`` is not the whole part of ``key`` with ``status`` (empty: it is).

    Read with ordinary reads: its size and every byte outside its data must be the
    template's (so HDF5 reads it as the template), its key ``key``, its status ``status``
    and, done, its stored checksum that of its bytes.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(raw) != template.size:
        return f"holds {len(raw)} bytes, not {template.size}"
    for offset, expected in template.header(key):
        if raw[offset: offset + len(expected)] != expected:
            return f"its bytes at {offset} are not those of a part of {key[0]}/visit {key[1]}"
    descriptors: dict[str, ArrayDescriptor] = {
        name: _InMemory(str(path), d.offset, d.shape, d.dtype, raw) for name, d in template.arrays.items()}
    stored = int(read_field(descriptors, STATUS)[0])
    if stored != status:
        return f"its status is {stored}, not {status}"
    if status == STATUS_DONE:
        expected_sum = checksum(descriptors, 0, template.scope_for(key)).encode()
        if read_field(descriptors, CHECKSUM)[0] != expected_sum:
            return "its bytes do not match its checksum"
    return ""


@dataclass(frozen=True)
class PartTarget:
    """Where a task of a parts-mode run publishes its observation: the template, the parts folder, its part name."""

    template: PartTemplate
    folder: str
    name: str


class PartsLedger:
    """The coordinator's bookkeeping of a parts-mode run, in memory for the run.

    The same transitions as :class:`~arielstream.io.ledger.Ledger` (which keeps them in the
    ``.partial`` in the default mode) for the dispatch: each attempt gets a part name of its
    own (:meth:`attempt`: running), a part checked after its task returned makes the
    observation done or failed (:meth:`accept`), a failure decided here gets a failed part
    (:meth:`fail`), and what was running goes back to pending (:meth:`abandon`, :meth:`reconcile`).
    """

    def __init__(self, folder: Path, first_number: int, template: PartTemplate, keys: list[tuple[int, int]]):
        self.folder, self.template, self.keys = folder, template, keys
        self._next = first_number
        self._status = np.full(len(keys), STATUS_PENDING, dtype=np.int8)
        self.assigned: dict[int, str] = {}  # the part name of each observation's latest attempt
        self.parts: dict[int, Path] = {}  # the accepted part of each finished observation

    def status(self) -> np.ndarray:
        """Every observation's status code (a copy)."""
        return self._status.copy()

    def attempt(self, index: int) -> str:
        """pending -> running: the part name of a new attempt (a number never used before)."""
        name = f"{self._next:04d}.h5"
        self._next += 1
        self.assigned[index] = name
        self._status[index] = STATUS_RUNNING
        return name

    def accept(self, index: int, name: str, status: int) -> bool:
        """An attempt's task returned with part ``name``: checked (:func:`check_part`), done or failed; else pending."""
        if index in self.parts and self.parts[index].name == name:
            return True
        why = "not the name of its latest attempt" if name != self.assigned.get(index) else \
            check_part(self.folder / name, self.template, self.keys[index], status)
        if why:
            log.warning("%s: part %s of %d/visit %d %s; computed again", self.folder, name, *self.keys[index], why)
            self._status[index] = STATUS_PENDING
            return False
        self.parts[index] = self.folder / name
        self._status[index] = status
        return True

    def fail(self, index: int, message: str) -> None:
        """-> failed, with a part of its own written here (cubes NaN, the reason kept), as a worker would."""
        name = self.attempt(index)
        with local_part(self.template, self.keys[index]) as path:
            Ledger(self.template.descriptors(path)).fail(0, message)
            if not publish_part(path, self.folder, name):
                raise OutputError(f"{self.folder / name}: a part of that name appeared meanwhile; run again")
        self.parts[index] = self.folder / name
        self._status[index] = STATUS_FAILED

    def abandon(self) -> list[int]:
        """running -> pending for every attempt whose task has not returned; returns them."""
        running = [int(i) for i in np.flatnonzero(self._status == STATUS_RUNNING)]
        self._status[running] = STATUS_PENDING
        return running

    def reconcile(self) -> list[int]:
        """What is left to compute: attempts that never returned a part, and pending ones."""
        self.abandon()
        return [int(i) for i in np.flatnonzero(self._status == STATUS_PENDING)]

    def verify(self) -> tuple[np.ndarray, list[int]]:
        """Every status, and no mismatch: each part was checked when accepted and is never written again."""
        return self.status(), []

    def reset(self, index: int) -> None:
        """-> pending (unused in parts mode: a part is checked once, before it is accepted)."""
        self.parts.pop(index, None)
        self._status[index] = STATUS_PENDING
