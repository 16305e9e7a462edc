"""The HDF5 output: laid out once by the coordinator, then written as raw bytes.

The coordinating process creates every dataset **contiguous, unfiltered and
allocated early**, reads each one's byte offset, reserves the file's disk space and
closes the file. From then on, observations are written through ``numpy.memmap``
views opened from :class:`ArrayDescriptor` ``(path, offset, shape, dtype)``
records, never through HDF5, so a killed writer cannot leave an HDF5 file that
h5py cannot open (see RELIABILITY-NOTES.md). Readers can use plain h5py, or map
the same offsets themselves.

Layout (``obs`` = one planet visit, ``time`` = time bins, ``x`` = detector column /
wavelength, ``y`` = spatial row, the notebook's axis order)::

    /planet_id (obs,) int64      /visit (obs,) int16
    /status (obs,) int8          0 pending, 1 done, 2 failed, 3 running (being written, or its writer died)
    /attempts (obs,) int8        unfinished starts in the coordinator's own process (two fail it); 0 once done
    /owner (obs,) int64          token of the attempt allowed to write it (0: none); a revoked writer stops
    /checksum (obs,) S16         BLAKE2b of its cubes and DQ planes, checked before the file is published
    /error (obs,) S512           why an observation failed
    /provenance (obs,) S4096     JSON: the steps run or skipped per instrument, and with what
    /AIRS-CH0/signal (obs, time, x, y) float32    /FGS1/signal (obs, time, x, y) float32
    /<inst>/dq (obs, x, y) uint16                 data-quality bits (arielstream.dq)
    /<inst>/read_noise (obs, x, y) float32        read noise per read (e), from read.parquet
    /<inst>/time (time,) float64 hours            mean frame time of each bin
    /<inst>/column (x,) int16                     detector column of each x
    /<inst>/wavelength (x,) float64 µm            /<inst>/wavelength_label (x,) S8 (wl_k)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import InputError, OutputError
from .layout import Observation

log = logging.getLogger(__name__)

FORMAT_NAME = "arielstream"


def text(value: Any) -> str:
    """An HDF5 attribute or fixed-length string value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_output_file(f: h5py.File) -> bool:
    """True for an arielstream output file (its ``format`` attribute)."""
    return text(f.attrs.get("format", "")) == FORMAT_NAME


def open_readable(path: str | Path) -> h5py.File:
    """An HDF5 file opened read-only; :class:`InputError` naming it when missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "cannot read: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc}") from None


def open_output(path: str | Path) -> h5py.File:
    """An arielstream output file opened read-only (:class:`InputError` if missing, unreadable or foreign)."""
    f = open_readable(path)
    if not is_output_file(f):
        f.close()
        raise InputError(path, "not an arielstream output file")
    return f
FORMAT_VERSION = 1
STATUS_PENDING, STATUS_DONE, STATUS_FAILED, STATUS_RUNNING = 0, 1, 2, 3
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_DONE: "done", STATUS_FAILED: "failed", STATUS_RUNNING: "running"}
ERROR_BYTES = 512
PROVENANCE_BYTES = 4096
CHECKSUM_BYTES = 16  # hex of an 8-byte BLAKE2b digest of the observation's cubes
PER_OBSERVATION = ("status", "attempts", "owner", "checksum", "error", "provenance")  # written through memmaps
# per-instrument, per-observation datasets, written through memmaps
PER_PIXEL = ("/signal", "/dq", "/read_noise", "/dq_time", "/background", "/trace_row", "/centroid")


@dataclass(frozen=True)
class ArrayDescriptor:
    """Where a dataset's bytes are: enough to map it from any process or machine."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def item_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def open(self, index: int | None = None, mode: str = "r+") -> np.memmap:
        """Map the whole dataset, or only observation ``index`` (its first axis)."""
        if index is None:
            return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=self.offset, shape=self.shape)
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"observation {index} outside 0..{self.shape[0] - 1}")
        return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=self.offset + index * self.item_bytes,
                         shape=self.shape[1:])


@dataclass(frozen=True)
class InstrumentLayout:
    """The output axes of one instrument, decided before any data is read."""

    name: str
    time: np.ndarray  # (n_bins,) hours
    columns: np.ndarray  # (n_x,) detector column of each output x
    rows: int  # n_y
    wavelength: np.ndarray  # (n_x,) µm
    labels: list[str]  # (n_x,) target labels, "" where none
    spatial_bin: int = 1  # output pixels sum spatial_bin x spatial_bin of these
    extras: tuple[tuple[str, tuple[int, ...], str, str], ...] = ()  # (name, shape after obs, dtype, axes)

    @property
    def n_bins(self) -> int:
        return int(self.time.shape[0])

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(x, y)`` of the output, after spatial binning."""
        return (int(self.columns.shape[0]) // self.spatial_bin, self.rows // self.spatial_bin)

    @property
    def signal_shape(self) -> tuple[int, int, int]:
        return (self.n_bins, *self.plane_shape)

    def binned_axis(self, values: np.ndarray) -> np.ndarray:
        """An x axis (columns, wavelengths) averaged over the spatial bins."""
        f = self.spatial_bin
        n = values.shape[0] // f
        return values[: n * f].reshape(n, f).mean(axis=1)


def _create_early(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: str) -> h5py.Dataset:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def _json_attr(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _check_room(path: Path, data_bytes: int) -> None:
    """Refuse early, naming the cause, when the data alone cannot fit (file-size limit, free disk)."""
    need = data_bytes + 2**20  # plus HDF5 metadata
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and need > limit:
        raise OutputError(f"{path}: cannot create the output file: it needs {need} bytes but the file-size limit "
                          f"(ulimit -f) is {limit} bytes (File too large)")
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise OutputError(f"{path}: cannot create the output file: it needs {need} bytes but only {free} are "
                          "free on that disk (No space left on device)")


def create_output(path: str | Path, observations: list[Observation], layouts: list[InstrumentLayout],
                  attrs: dict[str, Any]) -> dict[str, ArrayDescriptor]:
    """Create the file with every dataset allocated; return the memmap descriptors.

    The file is closed before this returns, and its whole size is reserved on
    disk, so a full disk is an error here and not a SIGBUS in a writer later.
    """
    path = Path(path)
    n = len(observations)
    memmapped = {
        "status": ((n,), "|i1"),
        "attempts": ((n,), "|i1"),
        "owner": ((n,), "<i8"),
        "checksum": ((n,), f"|S{CHECKSUM_BYTES}"),
        "error": ((n,), f"|S{ERROR_BYTES}"),
        "provenance": ((n,), f"|S{PROVENANCE_BYTES}"),
    }
    for lay in layouts:
        memmapped[f"{lay.name}/signal"] = ((n, *lay.signal_shape), "<f4")
        memmapped[f"{lay.name}/dq"] = ((n, *lay.plane_shape), "<u2")
        memmapped[f"{lay.name}/read_noise"] = ((n, *lay.plane_shape), "<f4")
        for name, shape, dtype, _ in lay.extras:
            memmapped[f"{lay.name}/{name}"] = ((n, *shape), dtype)
    _check_room(path, sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in memmapped.values()))
    try:
        with h5py.File(path, "w", libver="earliest") as f:
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float, np.integer, np.floating)) \
                    else _json_attr(value)
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["status_codes"] = _json_attr(STATUS_NAMES)
            f.create_dataset("planet_id", data=np.array([o.planet_id for o in observations], dtype=np.int64))
            f.create_dataset("visit", data=np.array([o.visit for o in observations], dtype=np.int16))
            for lay in layouts:
                g = f.create_group(lay.name)
                g.create_dataset("time", data=lay.time.astype(np.float64)).attrs["units"] = "hours"
                g.create_dataset("column", data=lay.binned_axis(lay.columns).astype(np.float32 if lay.spatial_bin > 1
                                                                                    else np.int16))
                g.create_dataset("wavelength", data=lay.binned_axis(lay.wavelength)).attrs["units"] = "um"
                labels = lay.labels if lay.spatial_bin == 1 else [""] * lay.plane_shape[0]
                g.create_dataset("wavelength_label", data=np.array(labels, dtype="S8"))
            datasets = {key: _create_early(f, key, shape, dtype) for key, (shape, dtype) in memmapped.items()}
            for lay in layouts:
                sig = datasets[f"{lay.name}/signal"]
                sig.attrs["axes"] = "obs,time,x,y"
                sig.attrs["units"] = "electrons per time bin (flat-fielded)"
                datasets[f"{lay.name}/dq"].attrs["axes"] = "obs,x,y"
                datasets[f"{lay.name}/read_noise"].attrs["axes"] = "obs,x,y"
                datasets[f"{lay.name}/read_noise"].attrs["units"] = "electrons per read (read.parquet; NaN if absent)"
                for name, _, _, axes in lay.extras:
                    datasets[f"{lay.name}/{name}"].attrs["axes"] = axes
            f.flush()
            offsets = {key: ds.id.get_offset() for key, ds in datasets.items()}
    except (OSError, RuntimeError) as exc:  # h5py reports a failed flush (disk full, EFBIG) as RuntimeError
        path.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot create the output file: {exc}") from None
    if any(off is None for off in offsets.values()):
        raise OutputError(f"{path}: HDF5 did not allocate every dataset early")
    size = path.stat().st_size
    try:
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot reserve {size} bytes on disk: {exc}") from None
    return {key: ArrayDescriptor(str(path), int(offsets[key]), shape, np.dtype(dtype).str)
            for key, (shape, dtype) in memmapped.items()}


def read_descriptors(path: str | Path) -> dict[str, ArrayDescriptor]:
    """Descriptors of an existing arielstream file (for readers and for resuming)."""
    path = Path(path)
    out: dict[str, ArrayDescriptor] = {}
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT_NAME:
            raise OutputError(f"{path}: not an arielstream output file")

        def visit(name: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            if name in PER_OBSERVATION or name.endswith(PER_PIXEL):
                offset = obj.id.get_offset()
                if offset is None or obj.chunks is not None:
                    raise OutputError(f"{path}: dataset {name} is not contiguous and allocated")
                out[name] = ArrayDescriptor(str(path), int(offset), tuple(obj.shape), obj.dtype.str)

        f.visititems(visit)
    return out


def cube_keys(descriptors: dict[str, ArrayDescriptor]) -> list[str]:
    """The per-observation science datasets (cubes and DQ planes), in a fixed order."""
    return sorted(k for k in descriptors if k.endswith(PER_PIXEL))


def checksum(descriptors: dict[str, ArrayDescriptor], index: int) -> str:
    """BLAKE2b (8 bytes, hex) of observation ``index``'s cubes and DQ planes as stored."""
    digest = hashlib.blake2b(digest_size=CHECKSUM_BYTES // 2)
    for key in cube_keys(descriptors):
        mm = descriptors[key].open(index, mode="r")
        digest.update(memoryview(np.ascontiguousarray(mm)).cast("B"))
        del mm
    return digest.hexdigest()


def read_field(descriptors: dict[str, ArrayDescriptor], key: str) -> np.ndarray:
    """A copy of one per-observation bookkeeping dataset (status, attempts, ...)."""
    mm = descriptors[key].open(mode="r")
    out = np.array(mm)
    del mm
    return out


def write_field(descriptors: dict[str, ArrayDescriptor], key: str, index: int, value: Any) -> None:
    mm = descriptors[key].open(index)
    mm[()] = value
    mm.flush()
    del mm


def record_result(descriptors: dict[str, ArrayDescriptor], index: int, status: int, error: str = "",
                  provenance: dict[str, Any] | None = None) -> None:
    """Write an observation's provenance, error and checksum, then (last, so it is true) its status.

    ``owner`` goes back to 0, and a done observation's ``attempts`` too: they only
    matter while it is unfinished, so a file finished after a crash is
    byte-identical to one made in a single run; the log keeps the history.
    """
    write_field(descriptors, "owner", index, 0)
    if status == STATUS_DONE:
        write_field(descriptors, "attempts", index, 0)
    write_field(descriptors, "checksum", index, checksum(descriptors, index).encode() if status == STATUS_DONE
                else b"")
    for key, text, size in (("error", error, ERROR_BYTES),
                            ("provenance", _json_attr(provenance or {}), PROVENANCE_BYTES)):
        raw = text.encode("utf-8", "replace")
        if len(raw) > size:
            raw = raw[: size - 3] + b"..."
            if key == "provenance":
                log.warning("provenance of observation %d truncated to %d bytes", index, size)
        write_field(descriptors, key, index, raw)
    write_field(descriptors, "status", index, status)


def owner(descriptors: dict[str, ArrayDescriptor], index: int) -> int:
    mm = descriptors["owner"].open(index, mode="r")
    value = int(mm[()])
    del mm
    return value


def fail_observation(descriptors: dict[str, ArrayDescriptor], index: int, message: str) -> None:
    """NaN every cube of an observation and record why, so nothing half-written looks valid.

    Called by the coordinator, it first revokes the observation's owner token, so a
    writer still running somewhere (a dask task, a worker being killed) stops before
    its next write instead of mixing its bytes with these.
    """
    write_field(descriptors, "owner", index, 0)
    for key in cube_keys(descriptors):
        if key.endswith("/signal"):
            mm = descriptors[key].open(index)
            mm[...] = np.nan
            mm.flush()
            del mm
    record_result(descriptors, index, STATUS_FAILED, error=message)
