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

The names above are declared once here (:data:`PLANET_ID`, :data:`SIGNAL`, ...,
:func:`dataset`); the readers of :mod:`arielstream.products` use them.
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
from ..errors import InputError, OutputError
from ..layout import AIRS, INSTRUMENTS, Observation
from .atomic import partial_path
from .output import OutputFiles

log = logging.getLogger(__name__)

FORMAT_NAME = "arielstream"
FORMAT_VERSION = 3  # 2: /inputs, and outputs extended through an index over parts; 3: the checksum covers the
# observation's key, provenance and inputs and the file's axes and attributes (2 and older: its cubes and planes)

# ---------------------------------------------------------------- the schema
# per-observation datasets at the root
PLANET_ID, VISIT = "planet_id", "visit"
STATUS, ATTEMPTS, OWNER, CHECKSUM, ERROR, PROVENANCE = "status", "attempts", "owner", "checksum", "error", "provenance"
INPUTS = "inputs"
PART, PART_INDEX = "part", "part_index"  # an index file only: which part holds each observation, and where
# per-instrument datasets, under /<instrument>/
SIGNAL, DQ, READ_NOISE = "signal", "dq", "read_noise"
DQ_TIME, BACKGROUND, TRACE_ROW, CENTROID = "dq_time", "background", "trace_row", "centroid"  # optional steps
TIME, COLUMN, WAVELENGTH, WAVELENGTH_LABEL = "time", "column", "wavelength", "wavelength_label"  # axes
# file attributes written here (the run adds its own: config, profile, recipe, arielstream_version, split, ...)
ATTR_FORMAT, ATTR_FORMAT_VERSION, ATTR_STATUS_CODES = "format", "format_version", "status_codes"
ATTR_DQ_BITS, ATTR_DQ_TIME_BITS = "dq_bits", "dq_time_bits"
ATTR_LAYOUT, ATTR_PARTS, LAYOUT_INDEX = "layout", "parts", "index"  # an index file: layout = "index", parts = JSON
ATTR_LAST_PART = "last_part"  # an index file: the highest part number its output ever used (never reused)

STATUS_PENDING, STATUS_DONE, STATUS_FAILED, STATUS_RUNNING = 0, 1, 2, 3
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_DONE: "done", STATUS_FAILED: "failed", STATUS_RUNNING: "running"}
ERROR_BYTES = 512
PROVENANCE_BYTES = 4096
INPUTS_BYTES = 2048
CHECKSUM_BYTES = 16  # hex of an 8-byte BLAKE2b digest (:func:`checksum`)

# bookkeeping per observation, written through memmaps: name -> dtype, shape (obs,)
PER_OBSERVATION_DTYPES = {
    STATUS: "|i1",
    ATTEMPTS: "|i1",
    OWNER: "<i8",
    CHECKSUM: f"|S{CHECKSUM_BYTES}",
    ERROR: f"|S{ERROR_BYTES}",
    PROVENANCE: f"|S{PROVENANCE_BYTES}",
    INPUTS: f"|S{INPUTS_BYTES}",
}
PER_OBSERVATION = tuple(PER_OBSERVATION_DTYPES)
# per-instrument planes every file has: name -> (dtype, axes, units); shapes (obs, x, y) except the signal
PLANES = {
    SIGNAL: ("<f4", "obs,time,x,y", "electrons per time bin (flat-fielded)"),
    DQ: ("<u2", "obs,x,y", ""),
    READ_NOISE: ("<f4", "obs,x,y", "electrons per read (read.parquet; NaN if absent)"),
}
OPTIONAL_PLANES = (DQ_TIME, BACKGROUND, TRACE_ROW, CENTROID)  # added by InstrumentLayout.extras
# per-instrument, per-observation datasets, written through memmaps (suffixes of their keys)
PER_PIXEL = tuple(f"/{name}" for name in (*PLANES, *OPTIONAL_PLANES))


def dataset(instrument: str, name: str) -> str:
    """The key of an instrument's dataset, e.g. ``dataset("FGS1", SIGNAL)`` is ``"FGS1/signal"``."""
    return f"{instrument}/{name}"


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


def check_output(f: h5py.File, path: str | Path) -> None:
    """:class:`InputError` naming ``path`` unless ``f`` is an arielstream output file."""
    if not is_output_file(f):
        raise InputError(path, "not an arielstream output file")


def open_readable(path: str | Path) -> h5py.File:
    """An HDF5 file opened read-only; :class:`InputError` naming it when missing or unreadable.

    Every reader of arielstream files opens them here, so a missing input is the
    same error (and the same exit code, 66) for every command. The file is opened by its
    real path (a symlink is followed), so an index finds its parts beside the real file.
    An index whose part files are missing or damaged (``OUT.h5`` copied without
    ``OUT.h5.parts``, a part deleted or cut short) is refused too: HDF5 would read their
    observations as fill values. An index renamed with its parts folder (its parts then
    named by the old name) is read through an in-memory copy that names them as they are.
    """
    path = Path(path)
    if not path.exists():
        partial = partial_path(path)
        hint = f" (an unfinished run left {partial.name}: run the calibration again)" if partial.exists() else ""
        raise InputError(path, f"cannot read: no such file{hint}")
    real = path.resolve()
    try:
        f = h5py.File(real, "r")
    except OSError as exc:
        raise InputError(path, f"cannot read: not a readable HDF5 file: {exc}") from None
    names = index_parts(f)
    if not names:
        return f
    files = OutputFiles.of(real)
    damaged = [f"{name} ({problem})" for name in names if (problem := _part_problem(files.part(name)))]
    if damaged:  # HDF5 would read their observations as fill values
        f.close()
        raise InputError(path, f"an index over part files, but {len(damaged)} of them are missing or damaged "
                         f"({', '.join(damaged[:3])}): keep {files.parts.name} beside it, or run the calibration "
                         "again to recompute them")
    if any(name != files.part_name(files.part(name)) for name in names):
        try:
            return _relinked(f, files)
        finally:
            f.close()
    return f


def _part_problem(part: Path) -> str:
    """Why a part file cannot be read (empty when it can): missing, not HDF5, or cut short."""
    if not part.is_file():
        return "missing"
    try:
        with h5py.File(part, "r") as pf:
            descriptors = _single_descriptors(part, pf)
    except (OSError, OutputError) as exc:
        return "cut short" if "truncated file" in str(exc) else f"not readable: {exc}"
    size = part.stat().st_size
    end = max((d.offset + d.item_bytes * d.shape[0] for d in descriptors.values()), default=0)
    return f"cut short: {size} of {end} bytes" if size < end else ""


def _relinked(f: h5py.File, files: OutputFiles) -> h5py.File:
    """An in-memory copy of the index ``f`` whose virtual datasets name its parts where they are now."""
    mem = h5py.File(f"{files.path}.relinked-{os.getpid()}-{id(f)}", "w", driver="core", backing_store=False)
    references = ("DIMENSION_LIST", "REFERENCE_LIST")  # object references into the original: left out

    def copy_attrs(src: Any, dst: Any) -> None:
        for key, value in src.attrs.items():
            if key not in references:
                dst.attrs[key] = value

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group):
            copy_attrs(obj, mem.require_group(name))
            return
        if not obj.is_virtual:
            copy_attrs(obj, mem.create_dataset(name, data=obj[()]))
            return
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        if obj.fillvalue is not None:
            dcpl.set_fill_value(np.array(obj.fillvalue, dtype=obj.dtype))
        for source in obj.virtual_sources():
            dcpl.set_virtual(source.vspace, str(files.part(source.file_name)).encode(), source.dset_name.encode(),
                             source.src_space)
        parent = mem.require_group(name.rpartition("/")[0] or "/")
        h5py.h5d.create(parent.id, name.rpartition("/")[2].encode(), h5py.h5t.py_create(obj.dtype),
                        h5py.h5s.create_simple(obj.shape), dcpl=dcpl)
        copy_attrs(obj, mem[name])

    copy_attrs(f, mem)
    f.visititems(visit)
    return mem


def open_output(path: str | Path) -> h5py.File:
    """An arielstream output file opened read-only (:class:`InputError` if missing, unreadable or foreign)."""
    f = open_readable(path)
    try:
        check_output(f, path)
    except InputError:
        f.close()
        raise
    return f


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
    extras: tuple[tuple[str, tuple[int, ...], str, str], ...] = ()  # (name, shape after obs, dtype, axes)

    @property
    def n_bins(self) -> int:
        """Output time bins."""
        return int(self.time.shape[0])

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(x, y)`` of the output, after spatial binning."""
        return (int(self.columns.shape[0]) // self.spatial_bin, self.rows // self.spatial_bin)

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
OBS, ROW, XY = "obs", "row", "xy"  # dimension coordinates added beside the axes above
LONG_NAMES = {
    OBS: "observation index (one planet visit)", PLANET_ID: "planet id", VISIT: "visit of the planet",
    STATUS: "calibration status", ATTEMPTS: "unfinished attempts", OWNER: "token of the writing attempt",
    CHECKSUM: "BLAKE2b of the observation, its key and the file's axes", ERROR: "why the observation failed",
    PROVENANCE: "steps run or skipped (JSON)", INPUTS: "size and modification time of each input file (JSON)",
    PART: "part file holding the observation", PART_INDEX: "observation index in its part file",
    SIGNAL: "calibrated signal per time bin", DQ: "data-quality bits", READ_NOISE: "read noise per read",
    DQ_TIME: "data-quality bits per time bin", BACKGROUND: "background per time bin", TRACE_ROW: "trace row",
    CENTROID: "FGS1 centroid (x, y)", TIME: "mean time of the frames of each bin", COLUMN: "detector column",
    WAVELENGTH: "wavelength", WAVELENGTH_LABEL: "target label (wl_k)", ROW: "spatial row (after spatial binning)",
    XY: "centroid axis",
}
TIME_REFERENCE = "hours from the start of each observation (the time axis of axis_info.parquet, same for all)"


def _describe_dimensions(f: h5py.File, layouts: list[InstrumentLayout], axes: dict[str, str]) -> None:
    """Name every axis with an HDF5 dimension scale, and add CF attributes, so netCDF-4 tools read the file.

    ``xarray.open_dataset(path, engine="h5netcdf")`` (``group="AIRS-CH0"`` for a cube) and
    ``ncdump -h`` then show the dimensions ``obs`` (root), ``time``, ``wavelength``/``column``
    and ``row`` (per instrument) with their coordinate variables. Only attributes and a few
    small datasets are added: the data stay contiguous, at the offsets the memmaps use.
    """
    obs_scale = f.create_dataset(OBS, data=np.arange(f[PLANET_ID].shape[0], dtype=np.int32))
    obs_scale.make_scale(OBS)
    for name in (PLANET_ID, VISIT, *PER_OBSERVATION):
        f[name].dims[0].attach_scale(obs_scale)
        if name not in (PLANET_ID, VISIT):
            f[name].attrs["coordinates"] = f"{PLANET_ID} {VISIT}"
    for lay in layouts:
        g = f[lay.name]
        x_name = WAVELENGTH if lay.name == AIRS.name else COLUMN
        row = g.create_dataset(ROW, data=np.arange(lay.plane_shape[1], dtype=np.int16))
        for scale_name in (TIME, x_name, ROW):
            g[scale_name].make_scale(scale_name)
        for name in (COLUMN, WAVELENGTH, WAVELENGTH_LABEL):
            if name != x_name:
                g[name].dims[0].attach_scale(g[x_name])
        scales = {"obs": obs_scale, "time": g[TIME], "x": g[x_name], "y": row}
        for key, plane_axes in axes.items():
            if not key.startswith(f"{lay.name}/"):
                continue
            ds = f[key]
            for i, axis in enumerate(plane_axes.split(",", 3)):
                if axis == "(x":  # the centroid's (x, y) pair
                    if XY not in g:
                        g.create_dataset(XY, data=np.array([b"x", b"y"], dtype="S1")).make_scale(XY)
                    ds.dims[i].attach_scale(g[XY])
                    break
                ds.dims[i].attach_scale(scales[axis])
            aux = [n for n in (COLUMN, WAVELENGTH, WAVELENGTH_LABEL) if n != x_name and "x" in plane_axes.split(",")]
            if aux:
                ds.attrs["coordinates"] = " ".join(aux)
    _cf_attributes(f, layouts)


def _cf_attributes(f: h5py.File, layouts: list[InstrumentLayout]) -> None:
    """``long_name``, ``units`` and the DQ planes' ``flag_masks``/``flag_meanings`` (CF conventions)."""
    f.attrs["Conventions"] = "CF-1.10"
    for name in (OBS, PLANET_ID, VISIT, *PER_OBSERVATION):
        f[name].attrs["long_name"] = LONG_NAMES[name]
    f[STATUS].attrs["flag_values"] = np.array(list(STATUS_NAMES), dtype=np.int8)
    f[STATUS].attrs["flag_meanings"] = " ".join(STATUS_NAMES.values())
    for lay in layouts:
        g = f[lay.name]
        for name, obj in g.items():
            if name in LONG_NAMES:
                obj.attrs["long_name"] = LONG_NAMES[name]
        g[TIME].attrs["reference"] = TIME_REFERENCE
        g[WAVELENGTH].attrs["standard_name"] = "radiation_wavelength"
        for name, bits, dtype in ((DQ, dqbits.BITS, np.uint16), (DQ_TIME, dqbits.TIME_BITS, np.uint8)):
            if name in g:
                g[name].attrs["flag_masks"] = np.array(list(bits.values()), dtype=dtype)
                g[name].attrs["flag_meanings"] = " ".join(bits)


def _memmapped_datasets(n: int, layouts: list[InstrumentLayout],
                        ) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """Every dataset written through memmaps for ``n`` observations: key -> (shape, dtype), and key -> axes."""
    memmapped: dict[str, tuple[tuple[int, ...], str]] = {name: ((n,), dtype)
                                                         for name, dtype in PER_OBSERVATION_DTYPES.items()}
    axes: dict[str, str] = {}
    for lay in layouts:
        for name, (dtype, plane_axes, _) in PLANES.items():
            per_obs: tuple[int, ...] = lay.signal_shape if name == SIGNAL else lay.plane_shape
            memmapped[dataset(lay.name, name)] = ((n, *per_obs), dtype)
            axes[dataset(lay.name, name)] = plane_axes
        for name, shape, dtype, extra_axes in lay.extras:
            memmapped[dataset(lay.name, name)] = ((n, *shape), dtype)
            axes[dataset(lay.name, name)] = extra_axes
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
    f.create_dataset(PLANET_ID, data=np.array([planet for planet, _ in keys], dtype=np.int64))
    f.create_dataset(VISIT, data=np.array([visit for _, visit in keys], dtype=np.int16))
    for lay in layouts:
        g = f.create_group(lay.name)
        g.create_dataset(TIME, data=lay.time.astype(np.float64)).attrs["units"] = "hours"
        g.create_dataset(COLUMN, data=lay.binned_axis(lay.columns).astype(np.float32 if lay.spatial_bin > 1
                                                                          else np.int16))
        g.create_dataset(WAVELENGTH, data=lay.binned_axis(lay.wavelength)).attrs["units"] = "um"
        labels = lay.labels if lay.spatial_bin == 1 else [""] * lay.plane_shape[0]
        g.create_dataset(WAVELENGTH_LABEL, data=np.array(labels, dtype="S8"))


def _describe_data(f: h5py.File, layouts: list[InstrumentLayout], datasets: dict[str, h5py.Dataset],
                   axes: dict[str, str]) -> None:
    for key, plane_axes in axes.items():
        datasets[key].attrs["axes"] = plane_axes
    for lay in layouts:
        for name, (_, _, units) in PLANES.items():
            if units:
                datasets[dataset(lay.name, name)].attrs["units"] = units
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
        f.create_dataset(PART, data=np.array([parts.index(e.part) for e in entries], dtype=np.int16))
        f.create_dataset(PART_INDEX, data=np.array([e.index for e in entries], dtype=np.int32))
        datasets = {}
        for key, (shape, dtype) in memmapped.items():
            virtual = h5py.VirtualLayout(shape=shape, dtype=dtype)
            for first, stop, part, start in runs:
                source = h5py.VirtualSource(part, key, shape=(part_sizes[part], *shape[1:]), dtype=dtype)
                virtual[first:stop] = source[start: start + stop - first]
            # where a part is missing h5py reads the fill value: NaN cubes and status 0 (pending), never zeros
            fill = np.nan if np.dtype(dtype).kind == "f" else None
            datasets[key] = f.create_virtual_dataset(key, virtual, fillvalue=fill)
        _describe_data(f, layouts, datasets, axes)
        for name in (PART, PART_INDEX):
            f[name].dims[0].attach_scale(f[OBS])
            f[name].attrs["long_name"] = LONG_NAMES[name]
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
    return sorted(k for k in descriptors if k.endswith(PER_PIXEL))


CHECKSUM_SINCE = 3  # the first format_version whose checksum covers more than the cubes and DQ planes
# The axes of each instrument a product reads (ROW, XY: the dimension scales netCDF and xarray readers get).
CHECKSUM_AXES = (TIME, COLUMN, WAVELENGTH, WAVELENGTH_LABEL, ROW, XY)
# File attributes whose value changes what a product computes or how its numbers are read: the config (spatial
# and time binning: the noise per bin, the aperture), the AIRS x order, the split (which star info the spectrum
# fit reads), the DQ bit values. Identical in an index and in each of its parts (the run identity and the
# code), so the checksum a part's writer stored holds when the index is verified. Not ``source``: the data
# folder may move between the runs that wrote the parts and the index (run/identity.py), so it may differ.
CHECKSUM_ATTRS = ("config", "wavelength_order", "split", ATTR_DQ_BITS, ATTR_DQ_TIME_BITS)


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
        keys += [key for key in (PROVENANCE, INPUTS) if key in descriptors]
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


def write_field(descriptors: dict[str, ArrayDescriptor], key: str, index: int, value: Any) -> None:
    """Write ``value`` into observation ``index`` of the per-observation dataset ``key`` and flush it."""
    write_slice(descriptors[key], index, value)


def record_result(descriptors: dict[str, ArrayDescriptor], index: int, status: int, error: str = "",
                  provenance: dict[str, Any] | None = None, inputs: str = "",
                  scope: ChecksumScope | None = None) -> None:
    """Write an observation's error, provenance and inputs, then its checksum, then (last, so it is true) its status.

    ``owner`` goes back to 0, and a done observation's ``attempts`` too: they only
    matter while it is unfinished, so a file finished after a crash is
    byte-identical to one made in a single run; the log keeps the history. The
    checksum covers the provenance and inputs, so it is computed after they are
    written; ``scope``: the file's :func:`checksum_scope` (read from it when not given).
    """
    write_field(descriptors, OWNER, index, 0)
    if status == STATUS_DONE:
        write_field(descriptors, ATTEMPTS, index, 0)
    for key, value, size in ((ERROR, error, ERROR_BYTES),
                             (PROVENANCE, _json_attr(provenance or {}), PROVENANCE_BYTES),
                             (INPUTS, inputs, INPUTS_BYTES)):
        raw = value.encode("utf-8", "replace")
        if len(raw) > size:
            raw = raw[: size - 3] + b"..."
            if key != ERROR:
                log.warning("%s of observation %d truncated to %d bytes", key, index, size)
        write_field(descriptors, key, index, raw)
    write_field(descriptors, CHECKSUM, index, checksum(descriptors, index, scope).encode() if status == STATUS_DONE
                else b"")
    write_field(descriptors, STATUS, index, status)


def owner(descriptors: dict[str, ArrayDescriptor], index: int) -> int:
    """The owner token of observation ``index``: who may write it now (0: nobody).

    Read with one ``pread`` of its bytes, not a memory map: a worker asks after every chunk
    (~110 times per observation), and mapping cost ~0.25 ms a time. A read sees what other
    processes wrote through their maps (the same page cache).
    """
    d = descriptors[OWNER]
    where = d.item_offset(index)
    fd = os.open(d.path, os.O_RDONLY)
    try:
        raw = os.pread(fd, d.item_bytes, where)
    finally:
        os.close(fd)
    if len(raw) != d.item_bytes:
        raise OSError(f"{d.path}: owner field of observation {index} cut short")
    return int(np.frombuffer(raw, dtype=d.dtype)[0])


def fail_observation(descriptors: dict[str, ArrayDescriptor], index: int, message: str) -> None:
    """NaN every cube of an observation and record why, so nothing half-written looks valid.

    Called by the coordinator, it first revokes the observation's owner token, so a
    writer still running somewhere (a dask task, a worker being killed) stops before
    its next write instead of mixing its bytes with these.
    """
    write_field(descriptors, OWNER, index, 0)
    for key in cube_keys(descriptors):
        if key.endswith(f"/{SIGNAL}"):
            write_slice(descriptors[key], index, np.nan)
    record_result(descriptors, index, STATUS_FAILED, error=message)
