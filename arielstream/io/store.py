"""The HDF5 output: its schema, laid out once by the coordinator, then written as raw bytes.

The coordinating process creates every dataset **contiguous, unfiltered and
allocated early**, reads each one's byte offset, reserves the file's disk space and
closes the file. From then on, observations are written through ``numpy.memmap``
views opened from :class:`ArrayDescriptor` ``(path, offset, shape, dtype)``
records, never through HDF5: HDF5 keeps its metadata (superblock, object headers,
B-trees) in the file and updates it on writes, so a writer killed in the middle
of an HDF5 write can leave a file h5py cannot open, whereas a killed memmap write
leaves a valid file with wrong bytes in one observation, which its status and
checksum expose. Readers can use plain h5py, or map the same offsets themselves.

Layout (``obs`` = one planet visit, ``time`` = time bins, ``x`` = detector column /
wavelength, ``y`` = spatial row, the notebook's axis order)::

    /planet_id (obs,) int64      /visit (obs,) int16
    /status (obs,) int8          0 pending, 1 done, 2 failed, 3 running (being written, or its writer died)
    /attempts (obs,) int8        unfinished starts in the coordinator's own process (two fail it); 0 once done
    /owner (obs,) int64          token of the attempt allowed to write it (0: none); a revoked writer stops
    /checksum (obs,) S16         BLAKE2b of everything its numbers depend on (:func:`checksum`), checked before
                                 the file is published, by ``arielstream verify`` and by a rerun with nothing to do
    /error (obs,) S512           why an observation failed
    /provenance (obs,) S4096     JSON: the steps run or skipped per instrument, and with what
    /inputs (obs,) S2048         JSON: size and modification time of each input file it was computed from
    /AIRS-CH0/signal (obs, time, x, y) float32    /FGS1/signal (obs, time, x, y) float32
    /<inst>/dq (obs, x, y) uint16                 data-quality bits (arielstream.dq.BITS)
    /<inst>/read_noise (obs, x, y) float32        read noise per read (e), from read.parquet
    /<inst>/dq_time (obs, time, x, y) uint8       per-bin data-quality bits (arielstream.dq.TIME_BITS), optional
    /<inst>/background, trace_row, centroid       optional, per bin (the background and tracking steps)
    /<inst>/time (time,) float64 hours            mean frame time of each bin
    /<inst>/column (x,) int16                     detector column of each x
    /<inst>/wavelength (x,) float64 µm            /<inst>/wavelength_label (x,) S8 (wl_k)

An output that a later run extended (new observations, changed inputs, retries)
is an **index** instead: the same schema and attributes, plus ``layout = "index"``,
``parts`` (JSON list of part files, relative to the index) and ``/part`` and
``/part_index`` (obs,): every per-observation dataset is an HDF5 virtual dataset
over the part files (``OUT.h5.parts/NNNN.h5``, each an output of the layout above
for some observations), so h5py, xarray and netCDF readers still see one ``(obs, ...)``
array; :func:`read_descriptors` maps each observation to its part's bytes.

File attributes: ``format`` (``"arielstream"``), ``format_version``,
``status_codes``, ``dq_bits`` and ``dq_time_bits`` (JSON name -> value), and what
the run passes (config, profile, recipe, version, split, source, ...).

The names, dtypes, axes and descriptions above are declared once, as data, in
:mod:`arielstream.io.schema`: this module lays files out from those declarations.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from .. import dq as dqbits
from ..errors import OutputError
from ..layout import INSTRUMENTS, Observation
from . import cf
from .schema import (
    ATTR_CONVENTIONS,
    ATTR_DQ_BITS,
    ATTR_DQ_TIME_BITS,
    ATTR_FORMAT,
    ATTR_FORMAT_VERSION,
    ATTR_LAYOUT,
    ATTR_PARTS,
    ATTR_STATUS_CODES,
    AXES,
    CHECKSUM,
    CHECKSUM_ATTRS,
    CHECKSUM_AXES,
    CHECKSUM_BYTES,
    CHECKSUM_FIELDS,
    CHECKSUM_PLANES,
    COLUMN,
    CONVENTIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    INSTRUMENT,
    LAYOUT_INDEX,
    OBS,
    OBS_AXIS,
    PART,
    PART_INDEX,
    PER_OBSERVATION,
    PER_PIXEL,
    PLANES,
    PLANET_ID,
    ROOT,
    ROW,
    SIGNAL,
    STATUS_NAMES,
    TIME,
    TIME_AXIS,
    VISIT,
    WAVELENGTH,
    WAVELENGTH_LABEL,
    X_AXIS,
    XY,
    XY_AXIS,
    XY_VALUES,
    Y_AXIS,
    Field,
    Written,
    axes_text,
    dataset,
    field,
    scale_name,
)
from .sidefiles import OutputFiles

log = logging.getLogger(__name__)
# The schema's names imported above ``as`` themselves are re-exported, for the modules that still import them
# from here (arielstream.run, io/ledger.py, io/output.py); new code imports them from io/schema.py.


def instruments_in(f: h5py.File) -> list[str]:
    """The instruments an output file holds cubes of, in the layout's order."""
    return [name for name in INSTRUMENTS if dataset(name, SIGNAL) in f]


# ---------------------------------------------------------------- opening a file to read it
def text(value: Any) -> str:
    """An HDF5 attribute or fixed-length string value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_output_file(f: h5py.File) -> bool:
    """True for an arielstream output file (its ``format`` attribute)."""
    return text(f.attrs.get(ATTR_FORMAT, "")) == FORMAT_NAME


def is_index(f: h5py.File) -> bool:
    """True for an index over part files (an output extended by later runs)."""
    return text(f.attrs.get(ATTR_LAYOUT, "")) == LAYOUT_INDEX


def index_parts(f: h5py.File) -> list[str]:
    """The part files an index refers to, relative to its folder (empty for a single file)."""
    return list(json.loads(text(f.attrs[ATTR_PARTS]))) if is_index(f) else []


@dataclass(frozen=True)
class ArrayDescriptor:
    """Where a dataset's bytes are: enough to map it from any process or machine."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def item_bytes(self) -> int:
        """Bytes of one observation's slice (the first axis indexes observations)."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def item_offset(self, index: int) -> int:
        """Where observation ``index``'s slice starts in the file (bytes); IndexError outside the first axis."""
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"observation {index} outside 0..{self.shape[0] - 1}")
        return self.offset + index * self.item_bytes

    def open(self, index: int | None = None, mode: Literal["r", "r+"] = "r+") -> np.memmap:
        """Map the whole dataset, or only observation ``index`` (its first axis)."""
        if index is None:
            return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=self.offset, shape=self.shape)
        return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=self.item_offset(index), shape=self.shape[1:])


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
    extras: tuple[Field, ...] = ()  # the optional planes (arielstream.io.schema.OPTIONAL) the recipe adds

    @property
    def n_bins(self) -> int:
        """Output time bins."""
        return int(self.time.shape[0])

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(x, y)`` of the output, after spatial binning."""
        return (int(self.columns.shape[0]) // self.spatial_bin, self.rows // self.spatial_bin)

    @property
    def dims(self) -> dict[str, int]:
        """The length of each axis of an observation's datasets (the schema's axis names, ``obs`` aside)."""
        n_x, n_y = self.plane_shape
        return {TIME_AXIS: self.n_bins, X_AXIS: n_x, Y_AXIS: n_y, XY_AXIS: len(XY_VALUES)}

    @property
    def signal_shape(self) -> tuple[int, int, int]:
        """``(time, x, y)`` of one observation's cube."""
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


def check_room(path: Path, data_bytes: int) -> None:
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


# ---------------------------------------------------------------- named dimensions (netCDF-4 / xarray / ncdump)
def _describe_dimensions(f: h5py.File, layouts: list[InstrumentLayout], axes: dict[str, tuple[str, ...]]) -> None:
    """Name every axis with an HDF5 dimension scale, and add CF attributes, so netCDF-4 tools read the file.

    ``xarray.open_dataset(path, engine="h5netcdf")`` (``group="AIRS-CH0"`` for a cube) and
    ``ncdump -h`` then show the dimensions ``obs`` (root), ``time``, ``wavelength``/``column``
    and ``row`` (per instrument) with their coordinate variables. Only attributes and a few
    small datasets are added: the data stay contiguous, at the offsets the memmaps use.
    """
    obs_scale = cf.scale(f, OBS, np.arange(f[PLANET_ID].shape[0], dtype=ROOT[OBS].dtype))
    for spec in ROOT.values():
        if spec.written in (Written.HEADER, Written.MEMMAP):
            cf.attach(f[spec.name], obs_scale)
            if spec.written is Written.MEMMAP:
                f[spec.name].attrs["coordinates"] = f"{PLANET_ID} {VISIT}"
    x_coordinates = [spec.name for spec in AXES.values() if spec.axes == (X_AXIS,)]
    for lay in layouts:
        g = f[lay.name]
        x_name = scale_name(X_AXIS, lay.name)
        row = cf.scale(g, ROW, np.arange(lay.plane_shape[1], dtype=AXES[ROW].dtype))
        for scale in (TIME, x_name):
            cf.scale(g, scale, None)
        scalars = [spec.name for spec in AXES.values() if spec.name in g and not spec.axes_for(lay.name)]
        along_x = [n for n in x_coordinates if n in g and n not in scalars]
        for name in along_x:
            if name != x_name:
                g[name].dims[0].attach_scale(g[x_name])
        scales = {OBS_AXIS: obs_scale, TIME_AXIS: g[TIME], X_AXIS: g[x_name], Y_AXIS: row}
        for key, plane_axes in axes.items():
            if not key.startswith(f"{lay.name}/"):
                continue
            ds = f[key]
            if XY_AXIS in plane_axes:  # the centroid's (x, y) pair
                scales[XY_AXIS] = cf.scale(g, XY, np.array([v.encode() for v in XY_VALUES], dtype=AXES[XY].dtype))
            cf.attach(ds, *(scales[axis] for axis in plane_axes))
            aux = [n for n in along_x if n != x_name and X_AXIS in plane_axes] + scalars
            if aux:
                ds.attrs["coordinates"] = " ".join(aux)
    _cf_attributes(f, layouts)


def _flag_attributes(ds: h5py.Dataset, spec: Field) -> None:
    if spec.flags is not None:
        ds.attrs[spec.flags.attribute] = np.array(spec.flags.values, dtype=spec.dtype)
        ds.attrs["flag_meanings"] = " ".join(spec.flags.meanings)


def _cf_attributes(f: h5py.File, layouts: list[InstrumentLayout]) -> None:
    """The schema's ``long_name``, ``standard_name``, notes and flags (``flag_values``/``flag_masks``, CF)."""
    f.attrs[ATTR_CONVENTIONS] = CONVENTIONS
    described = [spec for spec in ROOT.values() if spec.written is not Written.INDEX]
    for spec in described:
        f[spec.name].attrs["long_name"] = spec.long_name
    for spec in described:
        _flag_attributes(f[spec.name], spec)
    for lay in layouts:
        g = f[lay.name]
        for name, obj in g.items():
            if name in INSTRUMENT:
                obj.attrs["long_name"] = INSTRUMENT[name].long_name
        for spec in INSTRUMENT.values():
            if spec.name in g:
                for key, value in spec.notes:
                    g[spec.name].attrs[key] = value
                if spec.standard_name:
                    g[spec.name].attrs["standard_name"] = spec.standard_name
        for spec in INSTRUMENT.values():
            if spec.name in g:
                _flag_attributes(g[spec.name], spec)


def _memmapped_datasets(n: int, layouts: list[InstrumentLayout],
                        ) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, tuple[str, ...]]]:
    """Every dataset written through memmaps for ``n`` observations: key -> (shape, dtype), and key -> axes.

    The root's per-observation bookkeeping, then each instrument's planes and the optional ones its
    layout adds, as the schema declares them (:mod:`arielstream.io.schema`); axes: the instruments' only.
    """
    memmapped: dict[str, tuple[tuple[int, ...], str]] = {
        name: ((n, *ROOT[name].shape_for("", {})), ROOT[name].dtype) for name in PER_OBSERVATION}
    axes: dict[str, tuple[str, ...]] = {}
    for lay in layouts:
        for spec in (*PLANES.values(), *lay.extras):
            if not spec.in_instrument(lay.name):
                raise ValueError(f"{lay.name}: the schema declares no {spec.name} for it")
            key = dataset(lay.name, spec.name)
            memmapped[key] = ((n, *spec.shape_for(lay.name, lay.dims)), spec.dtype)
            axes[key] = spec.axes_for(lay.name)
    return memmapped, axes


def output_bytes(n: int, layouts: list[InstrumentLayout]) -> int:
    """Bytes of the data of an output file of ``n`` observations (its size, less ~1 MB of HDF5 metadata)."""
    memmapped, _ = _memmapped_datasets(n, layouts)
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in memmapped.values())


def _write_header(f: h5py.File, keys: list[tuple[int, int]], layouts: list[InstrumentLayout],
                  attrs: dict[str, Any]) -> None:
    """The attributes, the observation list and the instruments' axes: what every file (and index) holds."""
    for key, value in attrs.items():
        f.attrs[key] = value if isinstance(value, (str, int, float, np.integer, np.floating)) else _json_attr(value)
    f.attrs[ATTR_FORMAT] = FORMAT_NAME
    f.attrs[ATTR_FORMAT_VERSION] = FORMAT_VERSION
    f.attrs[ATTR_STATUS_CODES] = _json_attr(STATUS_NAMES)
    f.attrs[ATTR_DQ_BITS] = _json_attr(dqbits.BITS)
    f.attrs[ATTR_DQ_TIME_BITS] = _json_attr(dqbits.TIME_BITS)
    f.create_dataset(PLANET_ID, data=np.array([planet for planet, _ in keys], dtype=ROOT[PLANET_ID].dtype))
    f.create_dataset(VISIT, data=np.array([visit for _, visit in keys], dtype=ROOT[VISIT].dtype))
    time, column, wavelength, label = AXES[TIME], AXES[COLUMN], AXES[WAVELENGTH], AXES[WAVELENGTH_LABEL]
    for lay in layouts:
        g = f.create_group(lay.name)
        g.create_dataset(TIME, data=lay.time.astype(time.dtype)).attrs["units"] = time.units
        g.create_dataset(COLUMN, data=lay.binned_axis(lay.columns).astype(column.dtype_for(lay.spatial_bin)))
        if wavelength.axes_for(lay.name):
            values = lay.binned_axis(lay.wavelength).astype(wavelength.dtype)
        else:  # a photometer's band (every column's wavelength is the band's)
            values = np.asarray(lay.wavelength, dtype=wavelength.dtype).flat[0]
        g.create_dataset(WAVELENGTH, data=values).attrs["units"] = wavelength.units
        if label.in_instrument(lay.name):
            labels = lay.labels if lay.spatial_bin == 1 else [""] * lay.plane_shape[0]
            g.create_dataset(WAVELENGTH_LABEL, data=np.array(labels, dtype=label.dtype))


def _describe_data(f: h5py.File, layouts: list[InstrumentLayout], datasets: dict[str, h5py.Dataset],
                   axes: dict[str, tuple[str, ...]]) -> None:
    for key, plane_axes in axes.items():
        datasets[key].attrs["axes"] = axes_text(plane_axes)
    for key in axes:
        if units := field(key).units:
            datasets[key].attrs["units"] = units
    _describe_dimensions(f, layouts, axes)


def _write_layout(path: Path, observations: list[Observation], layouts: list[InstrumentLayout],
                  attrs: dict[str, Any]) -> dict[str, int | None]:
    """Write the file through HDF5 and return each memmapped dataset's byte offset (None: not allocated)."""
    memmapped, axes = _memmapped_datasets(len(observations), layouts)
    with h5py.File(path, "w", libver="earliest") as f:
        _write_header(f, [(o.planet_id, o.visit) for o in observations], layouts, attrs)
        datasets = {key: _create_early(f, key, shape, dtype) for key, (shape, dtype) in memmapped.items()}
        _describe_data(f, layouts, datasets, axes)
        f.flush()
        return {key: ds.id.get_offset() for key, ds in datasets.items()}


@dataclass(frozen=True)
class IndexEntry:
    """Where one observation of an index is: a part file (relative to the index) and its index there."""

    key: tuple[int, int]  # (planet_id, visit)
    part: str
    index: int


def _write_index(path: Path, entries: list[IndexEntry], part_sizes: dict[str, int], layouts: list[InstrumentLayout],
                 attrs: dict[str, Any]) -> dict[str, int | None]:
    """Write an index over part files: every per-observation dataset virtual, mapped run by run.

    ``part_sizes``: the number of observations of each part file (the first axis of its datasets).
    """
    n = len(entries)
    memmapped, axes = _memmapped_datasets(n, layouts)
    parts = sorted({e.part for e in entries})
    runs: list[tuple[int, int, str, int]] = []  # (first, stop, part, first index in the part): consecutive runs
    for i, e in enumerate(entries):
        if runs and runs[-1][2] == e.part and runs[-1][3] + (i - runs[-1][0]) == e.index and runs[-1][1] == i:
            first, _, part, start = runs[-1]
            runs[-1] = (first, i + 1, part, start)
        else:
            runs.append((i, i + 1, e.part, e.index))
    with h5py.File(path, "w", libver="earliest") as f:
        _write_header(f, [e.key for e in entries], layouts, attrs)
        f.attrs[ATTR_LAYOUT] = LAYOUT_INDEX
        f.attrs[ATTR_PARTS] = _json_attr(parts)
        f.create_dataset(PART, data=np.array([parts.index(e.part) for e in entries], dtype=ROOT[PART].dtype))
        f.create_dataset(PART_INDEX, data=np.array([e.index for e in entries], dtype=ROOT[PART_INDEX].dtype))
        datasets = {}
        for key, (shape, dtype) in memmapped.items():
            virtual = h5py.VirtualLayout(shape=shape, dtype=dtype)
            for first, stop, part, start in runs:
                source = h5py.VirtualSource(part, key, shape=(part_sizes[part], *shape[1:]), dtype=dtype)
                virtual[first:stop] = source[start: start + stop - first]
            # where a part is missing h5py reads the fill value: NaN cubes and status 0 (pending), never zeros
            fill = field(key).fill
            datasets[key] = f.create_virtual_dataset(key, virtual, fillvalue=fill)
        _describe_data(f, layouts, datasets, axes)
        for name in (PART, PART_INDEX):
            cf.attach(f[name], f[OBS])
            f[name].attrs["long_name"] = ROOT[name].long_name
        f.flush()
    return {}


HDF5_CRASHED = "HDF5 crashed while laying out the file (disk full or I/O error?)"
_HDF5_ERRNO = re.compile(rb"errno = (\d+)")


def _layout_child(write: Callable[[], dict[str, int | None]], result_fd: int, stderr_fd: int) -> None:
    """In the forked child: write the layout, report offsets or the error on ``result_fd``, never return."""
    code = 1
    try:
        os.dup2(stderr_fd, 2)  # HDF5's own error stack and h5py's dealloc tracebacks go to the parent, not the user
        faulthandler.disable()  # a crash here is the parent's to report, in one line
        with contextlib.suppress(ImportError, AttributeError):  # the stack names the OS error (errno = 28)
            from h5py import _errors
            _errors.unsilence_errors()
        try:
            report: dict[str, Any] = {"offsets": write()}
            code = 0
        except (OSError, RuntimeError) as exc:  # h5py reports a failed flush (disk full, EFBIG) as RuntimeError
            report = {"error": str(exc), "errno": getattr(exc, "errno", None)}
        os.write(result_fd, json.dumps(report).encode())
    finally:
        os._exit(code)


def _read_all(fd: int, keep: int = 1 << 16) -> bytes:
    """Read a pipe to its end, keeping its last ``keep`` bytes."""
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data = (data + chunk)[-keep:]
    return data


def _layout_failure(raw: bytes, status: int, stderr: bytes) -> str:
    """Why the child did not lay the file out, in words: the OS error HDF5 met if it said, else what it raised."""
    found = _HDF5_ERRNO.findall(stderr)
    cause = os.strerror(int(found[-1])) if found and int(found[-1]) else ""
    if os.WIFSIGNALED(status) or not raw:
        return f"{cause} ({HDF5_CRASHED})" if cause else HDF5_CRASHED
    report = json.loads(raw)
    if report.get("errno"):
        cause = os.strerror(report["errno"])
    message = str(report.get("error", "")) or f"exit status {os.waitstatus_to_exitcode(status)}"
    return f"{cause} (HDF5: {message})" if cause and cause not in message else message


def _lay_out_isolated(path: Path, write: Callable[[], dict[str, int | None]]) -> dict[str, int | None]:
    """``write()`` (:func:`_write_layout`, :func:`_write_index`) in a forked child: an HDF5 crash is an OutputError.

    HDF5 can die with SIGSEGV when its first metadata writes fail (a full disk, a file-size
    limit, an I/O error): only a separate process turns that into an error the run reports.
    A fork costs milliseconds and copies nothing the child does not touch. Without ``fork``
    (Windows) the layout is written in this process.
    """
    if not hasattr(os, "fork"):
        return write()
    result_r, result_w = os.pipe()
    err_r, err_w = os.pipe()
    open_fds = [result_r, result_w, err_r, err_w]
    pid = -1
    try:
        with warnings.catch_warnings():  # Python >= 3.12 warns about forking a process with threads; the
            warnings.simplefilter("ignore", DeprecationWarning)  # child only runs HDF5 and exits
            pid = os.fork()
        if pid == 0:
            os.close(result_r)
            os.close(err_r)
            _layout_child(write, result_w, err_w)
        for fd in (result_w, err_w):  # the child's ends: reading to EOF needs them closed here
            open_fds.remove(fd)
            os.close(fd)
        stderr = _read_all(err_r)
        raw = _read_all(result_r)
        _, status = os.waitpid(pid, 0)
        pid = -1
    finally:
        if pid > 0:  # interrupted while waiting (Ctrl-C, SIGTERM): the child must not outlive the run
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in open_fds:
            os.close(fd)
    if status != 0:
        path.unlink(missing_ok=True)
        log.debug("%s: HDF5 said while laying it out: %s", path, stderr.decode(errors="replace")[-4000:])
        raise OutputError(f"{path}: cannot create the output file: {_layout_failure(raw, status, stderr)}")
    offsets: dict[str, int | None] = json.loads(raw)["offsets"]
    return offsets


def create_output(path: str | Path, observations: list[Observation], layouts: list[InstrumentLayout],
                  attrs: dict[str, Any]) -> dict[str, ArrayDescriptor]:
    """Create the file with every dataset allocated; return the memmap descriptors.

    The file is closed before this returns, and its whole size is reserved on
    disk, so a full disk is an error here and not a SIGBUS in a writer later.
    HDF5 writes it in a forked child (see :func:`_lay_out_isolated`), so a disk
    error, even one that crashes HDF5, is an :class:`OutputError` and leaves no file.
    """
    path = Path(path)
    memmapped, _ = _memmapped_datasets(len(observations), layouts)
    check_room(path, output_bytes(len(observations), layouts))
    laid_out = _lay_out_isolated(path, lambda: _write_layout(path, observations, layouts, attrs))
    offsets = {key: off for key, off in laid_out.items() if off is not None}
    if len(offsets) != len(laid_out):
        path.unlink(missing_ok=True)
        raise OutputError(f"{path}: HDF5 did not allocate every dataset early")
    size = path.stat().st_size
    try:
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot reserve {size} bytes on disk: {exc}") from None
    return {key: ArrayDescriptor(str(path), offsets[key], shape, np.dtype(dtype).str)
            for key, (shape, dtype) in memmapped.items()}


def create_index(path: str | Path, entries: list[IndexEntry], part_sizes: dict[str, int],
                 layouts: list[InstrumentLayout], attrs: dict[str, Any]) -> None:
    """Write an index file over parts (see the module doc), in a forked child like :func:`create_output`.

    Part paths in ``entries`` are relative to the index's folder (HDF5 looks for a
    virtual dataset's sources there), so the output and its parts move together.
    """
    path = Path(path)
    check_room(path, 0)
    _lay_out_isolated(path, lambda: _write_index(path, entries, part_sizes, layouts, attrs))


@dataclass(frozen=True)
class PartsDescriptor(ArrayDescriptor):
    """A dataset of an index: each observation's slice is in one of several part files.

    ``open(index)`` maps that observation's slice in its part, like :class:`ArrayDescriptor`;
    ``open()`` without an index returns an in-memory copy of the whole dataset (read-only):
    meant for the small per-observation fields, not for the cubes.
    """

    parts: tuple[ArrayDescriptor, ...] = ()
    part: tuple[int, ...] = ()
    local: tuple[int, ...] = ()

    def open(self, index: int | None = None, mode: Literal["r", "r+"] = "r+") -> np.memmap:
        """Map observation ``index``'s slice in its part, or gather the whole dataset (``mode="r"`` only)."""
        if index is not None:
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"observation {index} outside 0..{self.shape[0] - 1}")
            return self.parts[self.part[index]].open(self.local[index], mode)
        if mode != "r":
            raise ValueError(f"{self.path}: the whole of an index's dataset is a copy: open it with mode='r'")
        out = np.empty(self.shape, dtype=self.dtype)
        part, local = np.asarray(self.part, dtype=np.int64), np.asarray(self.local, dtype=np.int64)
        for k, descriptor in enumerate(self.parts):
            where = np.flatnonzero(part == k)
            if where.size:
                mm = descriptor.open(mode="r")
                out[where] = mm[local[where]]
                del mm
        return out  # type: ignore[return-value]  # an ndarray where a memmap is declared: read the same way


def _single_descriptors(path: Path, f: h5py.File) -> dict[str, ArrayDescriptor]:
    out: dict[str, ArrayDescriptor] = {}

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


def read_descriptors(path: str | Path) -> dict[str, ArrayDescriptor]:
    """Descriptors of an existing arielstream file (for readers and for resuming).

    For an index, each is a :class:`PartsDescriptor` over its part files.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        if not is_output_file(f):
            raise OutputError(f"{path}: not an arielstream output file")
        if not is_index(f):
            return _single_descriptors(path, f)
        parts, part, local = index_parts(f), f[PART][()], f[PART_INDEX][()]
    per_part = []
    files = OutputFiles.of(path)
    for name in parts:
        part_path = files.part(name)
        try:
            with h5py.File(part_path, "r") as pf:
                per_part.append(_single_descriptors(part_path, pf))
        except OSError as exc:
            raise OutputError(f"{path}: its part {name} cannot be read ({exc}); an output extended by later "
                              f"runs needs its {path.name}.parts folder beside it") from None
    out: dict[str, ArrayDescriptor] = {}
    for key, first in per_part[0].items():
        n = int(part.shape[0])
        out[key] = PartsDescriptor(str(path), -1, (n, *first.shape[1:]), first.dtype,
                                   tuple(p[key] for p in per_part), tuple(int(v) for v in part),
                                   tuple(int(v) for v in local))
    return out


def cube_keys(descriptors: dict[str, ArrayDescriptor]) -> list[str]:
    """The per-observation science datasets (cubes and DQ planes), in a fixed order."""
    return sorted(k for k in descriptors if k.endswith(CHECKSUM_PLANES))


CHECKSUM_SINCE = 3  # the first format_version whose checksum covers more than the cubes and DQ planes
# What the checksum covers is declared in the schema (arielstream.io.schema, each declaration's Coverage): per
# observation, CHECKSUM_PLANES (cube_keys) and CHECKSUM_FIELDS; per file, CHECKSUM_AXES (each instrument's axes a
# product reads, and the dimension scales netCDF and xarray readers get) and CHECKSUM_ATTRS (the attributes whose
# value changes what a product computes or how its numbers are read, the same in an index and in its parts).


def _framed(*chunks: bytes) -> bytes:
    """``chunks`` each preceded by its length: no two different sequences give the same bytes."""
    return b"".join(len(c).to_bytes(8, "little") + c for c in chunks)


def _little_endian(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))


@dataclass(frozen=True)
class ChecksumScope:
    """What an observation's checksum covers besides its own per-observation bytes, read once per file.

    From the file being written or verified (for an index, the index file itself, not
    its parts): the observations' keys, the ``obs`` scale, the format version and one
    digest of the instruments' axes and the attributes :data:`CHECKSUM_ATTRS`.
    """

    version: int  # the file's format_version: older ones are checked as their writer defined the checksum
    planet_id: np.ndarray  # (obs,) as stored, little-endian
    visit: np.ndarray
    obs: np.ndarray | None  # (obs,) the obs dimension scale (0, 1, ...), None where the file has none
    shared: bytes  # digest of the axes and attributes, the same for every observation of the file

    def observation(self, position: int) -> bytes:
        """The bytes mixed into the checksum of the observation at ``position`` of the file."""
        at = slice(position, position + 1)
        if not 0 <= position < self.planet_id.shape[0]:
            raise IndexError(f"observation {position} outside 0..{self.planet_id.shape[0] - 1}")
        in_place = self.obs is not None and position < self.obs.shape[0] and int(self.obs[position]) == position
        return _framed(self.shared, self.planet_id[at].tobytes(), self.visit[at].tobytes(), bytes([in_place]))


def _shared_digest(f: h5py.File) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for name in CHECKSUM_ATTRS:
        value = f.attrs.get(name)  # absent and empty differ
        raw = b"" if value is None else b"=" + text(value).encode("utf-8", "surrogateescape")
        digest.update(_framed(name.encode(), raw))
    for instrument in instruments_in(f):
        group = f[instrument]
        for name in CHECKSUM_AXES:
            if name in group:
                values = _little_endian(np.asarray(group[name][()]))
                digest.update(_framed(f"{instrument}/{name}".encode(), values.dtype.str.encode(),
                                      repr(values.shape).encode(), values.tobytes()))
    return digest.digest()


def checksum_scope(where: h5py.File | str | Path | dict[str, ArrayDescriptor]) -> ChecksumScope:
    """The :class:`ChecksumScope` of an output: an open file, its path, or its descriptors.

    Descriptors name their file: an index's (:class:`PartsDescriptor`) the index, whose
    keys and axes its readers see, not a part's.
    """
    if isinstance(where, dict):
        where = where[CHECKSUM].path
    if not isinstance(where, h5py.File):
        with h5py.File(where, "r") as f:
            return checksum_scope(f)
    f = where
    obs = _little_endian(np.asarray(f[OBS][()])) if OBS in f else None
    return ChecksumScope(int(f.attrs.get(ATTR_FORMAT_VERSION, 1)), _little_endian(np.asarray(f[PLANET_ID][()])),
                         _little_endian(np.asarray(f[VISIT][()])), obs, _shared_digest(f))


def checksum(descriptors: dict[str, ArrayDescriptor], index: int, scope: ChecksumScope | None = None,
             position: int | None = None) -> str:
    """BLAKE2b (8 bytes, hex) of everything observation ``index``'s numbers depend on, as stored.

    Its cubes and DQ planes, its provenance and inputs, its key (planet_id, visit), whether
    the ``obs`` scale names its position, and the file's axes and :data:`CHECKSUM_ATTRS`
    (``scope``, default: read from the descriptors' file). Not its status, attempts, owner
    or error (bookkeeping, rewritten as a run goes), nor the checksum itself. ``position``:
    where the observation is in ``scope``'s file when that is not the descriptors' (a part's
    observation checked against its index), default ``index``. Files of format 2 and older:
    the cubes and DQ planes only, as their writer defined it.
    """
    scope = checksum_scope(descriptors) if scope is None else scope
    digest = hashlib.blake2b(digest_size=CHECKSUM_BYTES // 2)
    keys = cube_keys(descriptors)
    if scope.version >= CHECKSUM_SINCE:
        digest.update(scope.observation(index if position is None else position))
        keys += [key for key in CHECKSUM_FIELDS if key in descriptors]
    for key in keys:
        mm = descriptors[key].open(index, mode="r")
        digest.update(np.ascontiguousarray(mm).data.cast("B"))
        del mm
    return digest.hexdigest()


def misplaced(descriptors: dict[str, ArrayDescriptor], scope: ChecksumScope | None = None) -> list[int]:
    """An index's observations that its ``/part`` and ``/part_index`` do not lead to (empty for a single file).

    The part named is not one of its parts, holds no observation at that index, or holds
    another (planet_id, visit) there: the memory-mapped readers (:func:`read_descriptors`)
    would read another observation's bytes, or none.
    """
    d = descriptors[CHECKSUM]
    if not isinstance(d, PartsDescriptor):
        return []
    scope = checksum_scope(descriptors) if scope is None else scope
    keys = []
    for part in d.parts:
        with h5py.File(part.path, "r") as f:
            keys.append(list(zip(f[PLANET_ID][()].tolist(), f[VISIT][()].tolist(), strict=True)))
    out = []
    for i, (part_number, local) in enumerate(zip(d.part, d.local, strict=True)):
        found = keys[part_number] if 0 <= part_number < len(keys) else []
        if not 0 <= local < len(found) or found[local] != (int(scope.planet_id[i]), int(scope.visit[i])):
            out.append(i)
    return out


def read_field(descriptors: dict[str, ArrayDescriptor], key: str) -> np.ndarray:
    """A copy of one per-observation bookkeeping dataset (status, attempts, ...)."""
    mm = descriptors[key].open(mode="r")
    out = np.array(mm)
    del mm
    return out


def write_slice(descriptor: ArrayDescriptor, index: int, value: Any) -> None:
    """Write ``value`` into observation ``index``'s slice of a dataset through a memmap, and flush it.

    An ``OSError`` (an I/O error, a full disk under a sparse file) becomes an
    :class:`OutputError` naming the file: the run stops, and no observation is blamed.
    """
    try:
        mm = descriptor.open(index)
        mm[...] = value
        mm.flush()
        del mm
    except OSError as exc:
        raise OutputError(f"{descriptor.path}: cannot write the output file: {exc}") from None
