"""The calibrated output's schema, as data: every dataset and file attribute declared once.

Each dataset of an output is a :class:`Field`: its name, whether it lives at the root or
in each instrument's group, its dtype and axes, how it is written (:class:`Written`), how
the observation checksum covers it (:class:`Coverage`), and its descriptive CF attributes
(``long_name``, ``units``, ``standard_name``, flag values and meanings). Each file
attribute is an :class:`Attribute`. Nothing else in the package spells a dataset's dtype,
axes or long name:

* :mod:`arielstream.io.store` lays out files from these declarations (which datasets,
  with which dtypes and shapes, their attributes, the index's fill values), and its
  checksum takes what it covers from their :class:`Coverage`;
* :mod:`arielstream.run.observation` names the optional planes a recipe adds
  (:data:`OPTIONAL`, each with the steps that add it);
* :func:`arielstream.run.identity.source_digest` hashes :func:`numerical_declarations`:
  the names, dtypes, axes, fill values and checksum coverage, not the long names, units
  or other text, so that editing a description does not mark existing outputs as made
  by other numerical code.

Axes (:attr:`Field.axes`) are named as in each dataset's ``axes`` attribute: ``obs`` (one
planet visit), ``time`` (time bins), ``x`` (detector column / wavelength), ``y`` (spatial
row) and ``xy`` (the centroid's pair, written ``(x,y)``); each has a dimension scale
(:func:`scale_name`) for netCDF-4 readers. The order of the declarations is the order of
the datasets in a file and of what the checksum covers: reordering them changes every
checksum, and the numerical digest says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .. import dq as dqbits
from ..layout import AIRS, FGS1

FORMAT_NAME = "arielstream"
FORMAT_VERSION = 3  # 2: /inputs, and outputs extended through an index over parts; 3: the checksum covers the
# observation's key, provenance and inputs and the file's axes and attributes (2 and older: its cubes and planes)
CONVENTIONS = "CF-1.10"

# ---------------------------------------------------------------- names
# per-observation datasets at the root
OBS, PLANET_ID, VISIT = "obs", "planet_id", "visit"
STATUS, ATTEMPTS, OWNER, CHECKSUM, ERROR, PROVENANCE = "status", "attempts", "owner", "checksum", "error", "provenance"
INPUTS = "inputs"
PART, PART_INDEX = "part", "part_index"  # an index file only: which part holds each observation, and where
# per-instrument datasets, under /<instrument>/
SIGNAL, DQ, READ_NOISE = "signal", "dq", "read_noise"
DQ_TIME, BACKGROUND, TRACE_ROW, CENTROID = "dq_time", "background", "trace_row", "centroid"  # optional steps
DARK_CHARGE = "dark_charge"  # optional: the dark charge the dark step subtracted from each bin (its shot noise)
TIME, COLUMN, WAVELENGTH, WAVELENGTH_LABEL = "time", "column", "wavelength", "wavelength_label"  # axes
ROW, XY = "row", "xy"  # dimension scales added beside the axes above (netCDF-4 / xarray / ncdump)
# file attributes written by the store (the run adds its own: config, profile, recipe, arielstream_version, ...)
ATTR_FORMAT, ATTR_FORMAT_VERSION, ATTR_STATUS_CODES = "format", "format_version", "status_codes"
ATTR_DQ_BITS, ATTR_DQ_TIME_BITS = "dq_bits", "dq_time_bits"
ATTR_CONVENTIONS = "Conventions"
ATTR_LAYOUT, ATTR_PARTS, LAYOUT_INDEX = "layout", "parts", "index"  # an index file: layout = "index", parts = JSON
ATTR_LAST_PART = "last_part"  # an index file: the highest part number its output ever used (never reused)
# axes, as the datasets' ``axes`` attribute names them
OBS_AXIS, TIME_AXIS, X_AXIS, Y_AXIS, XY_AXIS = "obs", "time", "x", "y", "xy"
XY_VALUES = ("x", "y")  # the xy axis: a centroid's two coordinates

STATUS_PENDING, STATUS_DONE, STATUS_FAILED, STATUS_RUNNING = 0, 1, 2, 3
STATUS_NAMES = {STATUS_PENDING: "pending", STATUS_DONE: "done", STATUS_FAILED: "failed", STATUS_RUNNING: "running"}
ERROR_BYTES = 512
PROVENANCE_BYTES = 4096
INPUTS_BYTES = 2048
CHECKSUM_BYTES = 16  # hex of an 8-byte BLAKE2b digest (arielstream.io.store.checksum)

# units: UDUNITS-2 strings only (CF); UDUNITS has no "electron": counts of electrons are "count", said in long_name
COUNT = "count"
TIME_REFERENCE = "hours from the start of each observation (the time axis of axis_info.parquet, same for all)"


class Group(str, Enum):
    """Where a dataset lives."""

    ROOT = "root"  # /name
    INSTRUMENT = "instrument"  # /<instrument>/name, in each instrument's group


class Written(str, Enum):
    """How a dataset comes into a file."""

    HEADER = "header"  # with the file's header, through HDF5, before any observation (keys and axes)
    SCALE = "scale"  # a dimension coordinate added for netCDF-4 readers, through HDF5
    MEMMAP = "memmap"  # allocated early and contiguous, then written per observation through memmaps
    INDEX = "index"  # an index file only: where each observation is among its parts


class Coverage(str, Enum):
    """How the observation checksum (:func:`arielstream.io.store.checksum`) covers a dataset or attribute."""

    BOOKKEEPING = "bookkeeping"  # outside it: rewritten as a run goes (status, attempts, owner, error, itself)
    OBSERVATION = "observation"  # its bytes, per observation (the cubes and planes, provenance, inputs)
    KEY = "key"  # the observation's key and position, mixed into each observation's checksum
    FILE = "file"  # the digest of the file's axes and attributes, mixed into every observation's checksum
    INDEX = "index"  # an index's map to its parts, checked against the keys instead (store.misplaced)
    NONE = "none"  # not covered: descriptive, or read to decide how (format_version)


@dataclass(frozen=True)
class Flags:
    """A CF flag variable's values (``flag_values``) or bits (``flag_masks``) and their meanings."""

    attribute: str  # "flag_values" or "flag_masks"
    values: tuple[int, ...]
    meanings: tuple[str, ...]

    @classmethod
    def of(cls, attribute: str, names: Mapping[Any, Any], values_are_keys: bool = False) -> Flags:
        """From a name -> value mapping (``values_are_keys``: a value -> name mapping)."""
        if values_are_keys:
            return cls(attribute, tuple(int(v) for v in names), tuple(str(n) for n in names.values()))
        return cls(attribute, tuple(int(v) for v in names.values()), tuple(str(n) for n in names))


@dataclass(frozen=True)
class Field:
    """One dataset of an output: where it is, what it holds, how it is written, checksummed and described."""

    name: str
    dtype: str  # as stored (numpy's str form: "<f4", "|S16")
    axes: tuple[str, ...]  # axis names (OBS_AXIS first for a per-observation dataset)
    long_name: str
    group: Group = Group.INSTRUMENT
    written: Written = Written.MEMMAP
    checksum: Coverage = Coverage.OBSERVATION
    numerical: bool = True  # its declaration identifies the numbers (every dataset's: products read them)
    units: str = ""
    standard_name: str = ""
    notes: tuple[tuple[str, str], ...] = ()  # other descriptive attributes: (name, text)
    flags: Flags | None = None
    fill: float | None = None  # what an index reads where a part is missing (None: HDF5's default, zeros)
    binned_dtype: str = ""  # the dtype when the output is spatially binned (a mean), if another
    instruments: tuple[str, ...] = ()  # only in these instruments' groups (empty: every instrument's)
    axes_by_instrument: tuple[tuple[str, tuple[str, ...]], ...] = ()  # other axes in some instruments' groups
    added_by: tuple[str, ...] = ()  # an optional plane: the config options of the steps that add it

    def axes_for(self, instrument: str = "") -> tuple[str, ...]:
        """The axes in ``instrument``'s group."""
        return dict(self.axes_by_instrument).get(instrument, self.axes)

    def shape_for(self, instrument: str, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The shape of one observation's slice (of the whole dataset, without ``obs``): ``dims`` gives each axis."""
        return tuple(dims[axis] for axis in self.axes_for(instrument) if axis != OBS_AXIS)

    def dtype_for(self, spatial_bin: int = 1) -> str:
        """The dtype, in an output whose pixels sum ``spatial_bin`` x ``spatial_bin``."""
        return self.binned_dtype if spatial_bin > 1 and self.binned_dtype else self.dtype

    def in_instrument(self, instrument: str) -> bool:
        """True when ``instrument``'s group can hold it."""
        return not self.instruments or instrument in self.instruments

    def numerical_declaration(self) -> dict[str, Any]:
        """What of the declaration identifies the numbers: not its long name, units or other text."""
        return {"name": self.name, "group": self.group.value, "dtype": self.dtype, "binned_dtype": self.binned_dtype,
                "axes": list(self.axes), "axes_by_instrument": [[i, list(a)] for i, a in self.axes_by_instrument],
                "instruments": list(self.instruments), "written": self.written.value,
                "checksum": self.checksum.value, "fill": None if self.fill is None else repr(self.fill),
                "flag_values": None if self.flags is None else [self.flags.attribute, list(self.flags.values)]}


@dataclass(frozen=True)
class Attribute:
    """One attribute of an output file."""

    name: str
    description: str
    written_by: str  # "run" (arielstream.run passes it), "store" (io/store.py), "index" (an index file only)
    numerical: bool  # its value changes what a product computes or how the numbers are read
    checksum: Coverage = Coverage.NONE  # FILE: in the digest of the file mixed into every observation's checksum

    def numerical_declaration(self) -> dict[str, Any]:
        """What of the declaration identifies the numbers: its name, who writes it and its coverage."""
        return {"name": self.name, "written_by": self.written_by, "checksum": self.checksum.value}


_NAN = math.nan
_ROOT, _KEY, _BOOK = Group.ROOT, Coverage.KEY, Coverage.BOOKKEEPING
_PER_OBS = (OBS_AXIS,)
_CUBE = (OBS_AXIS, TIME_AXIS, X_AXIS, Y_AXIS)
_PLANE = (OBS_AXIS, X_AXIS, Y_AXIS)
_PER_BIN = (OBS_AXIS, TIME_AXIS)

# Every dataset of an output, in the order a file is laid out (see the module doc).
FIELDS: tuple[Field, ...] = (
    # the root: the observations (one planet visit each) and their bookkeeping
    Field(OBS, "<i4", _PER_OBS, "observation index (one planet visit)", _ROOT, Written.SCALE, _KEY),
    Field(PLANET_ID, "<i8", _PER_OBS, "planet id", _ROOT, Written.HEADER, _KEY),
    Field(VISIT, "<i2", _PER_OBS, "visit of the planet", _ROOT, Written.HEADER, _KEY),
    Field(STATUS, "|i1", _PER_OBS, "calibration status", _ROOT, checksum=_BOOK,
          flags=Flags.of("flag_values", STATUS_NAMES, values_are_keys=True)),
    Field(ATTEMPTS, "|i1", _PER_OBS, "unfinished attempts", _ROOT, checksum=_BOOK),
    Field(OWNER, "<i8", _PER_OBS, "token of the writing attempt", _ROOT, checksum=_BOOK),
    Field(CHECKSUM, f"|S{CHECKSUM_BYTES}", _PER_OBS, "BLAKE2b of the observation, its key and the file's axes",
          _ROOT, checksum=_BOOK),
    Field(ERROR, f"|S{ERROR_BYTES}", _PER_OBS, "why the observation failed", _ROOT, checksum=_BOOK),
    Field(PROVENANCE, f"|S{PROVENANCE_BYTES}", _PER_OBS, "steps run or skipped (JSON)", _ROOT),
    Field(INPUTS, f"|S{INPUTS_BYTES}", _PER_OBS, "size and modification time of each input file (JSON)", _ROOT),
    Field(PART, "<i2", _PER_OBS, "part file holding the observation", _ROOT, Written.INDEX, Coverage.INDEX),
    Field(PART_INDEX, "<i4", _PER_OBS, "observation index in its part file", _ROOT, Written.INDEX, Coverage.INDEX),
    # each instrument: the planes every file has
    Field(SIGNAL, "<f4", _CUBE, "calibrated signal per time bin (electrons, flat-fielded)", units=COUNT,
          notes=(("comment", "electrons per time bin (flat-fielded)"),), fill=_NAN),
    Field(DQ, "<u2", _PLANE, "data-quality bits", flags=Flags.of("flag_masks", dqbits.BITS)),
    Field(READ_NOISE, "<f4", _PLANE, "read noise per read (electrons)", units=COUNT,
          notes=(("comment", "electrons per read (read.parquet; NaN if absent)"),), fill=_NAN),
    # the optional planes, each added by the steps named
    Field(DQ_TIME, "|u1", _CUBE, "data-quality bits per time bin", flags=Flags.of("flag_masks", dqbits.TIME_BITS),
          added_by=("cosmic_rays", "interpolate_bad_pixels", "spatial_outliers")),
    Field(BACKGROUND, "<f4", (OBS_AXIS, TIME_AXIS, X_AXIS), "background per time bin (electrons)", units=COUNT,
          fill=_NAN,
          axes_by_instrument=((FGS1.name, _PER_BIN),), added_by=("background",)),
    Field(TRACE_ROW, "<f4", _PER_BIN, "trace row", fill=_NAN, instruments=(AIRS.name,), added_by=("tracking",)),
    Field(CENTROID, "<f4", (OBS_AXIS, TIME_AXIS, XY_AXIS), "FGS1 centroid (x, y)", fill=_NAN,
          instruments=(FGS1.name,), added_by=("tracking",)),
    Field(DARK_CHARGE, "<f4", _PLANE, "dark charge subtracted per time bin (electrons)", units=COUNT,
          notes=(("comment", "dark current x the exposure a time bin holds; its shot noise is part of the "
                             "pixel's variance"),), fill=_NAN, added_by=("dark",)),
    # each instrument: its axes (the order of the checksum's file digest)
    Field(TIME, "<f8", (TIME_AXIS,), "mean time of the frames of each bin", written=Written.HEADER,
          checksum=Coverage.FILE, units="hours", notes=(("reference", TIME_REFERENCE),)),
    Field(COLUMN, "<i2", (X_AXIS,), "detector column", written=Written.HEADER, checksum=Coverage.FILE,
          binned_dtype="<f4"),
    # FGS1, a photometer, has no wavelength axis (its x is a detector column): its band's nominal wavelength
    # (wl_1) is a scalar coordinate, and it has no per-column labels
    Field(WAVELENGTH, "<f8", (X_AXIS,), "wavelength", written=Written.HEADER, checksum=Coverage.FILE, units="um",
          standard_name="radiation_wavelength", axes_by_instrument=((FGS1.name, ()),)),
    Field(WAVELENGTH_LABEL, "|S8", (X_AXIS,), "target label (wl_k)", written=Written.HEADER, checksum=Coverage.FILE,
          instruments=(AIRS.name,)),
    Field(ROW, "<i2", (Y_AXIS,), "spatial row (after spatial binning)", written=Written.SCALE,
          checksum=Coverage.FILE),
    Field(XY, "|S1", (XY_AXIS,), "centroid axis", written=Written.SCALE, checksum=Coverage.FILE),
)

_RUN, _STORE, _INDEX = "run", "store", "index"
# Every attribute of an output file. Those covered (Coverage.FILE) change what a product computes or how its
# numbers are read, and are the same in an index and in each of its parts (the run identity and the code), so
# the checksum a part's writer stored holds when the index is verified; their order is the checksum's.
ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("arielstream_version", "the numerical code (arielstream.run.identity.code_version)", _RUN, True),
    Attribute("config", "the calibration config (JSON): spatial and time binning (the noise per bin, the aperture)",
              _RUN, True, Coverage.FILE),
    Attribute("wavelength_order", "the AIRS x order", _RUN, True, Coverage.FILE),
    Attribute("split", "the split (which star info the spectrum fit reads)", _RUN, True, Coverage.FILE),
    Attribute("source", "the data folder (not covered: it may move between the runs that wrote the parts and the "
              "index, arielstream.run.identity)", _RUN, False),
    Attribute("profile", "the config's profile", _RUN, False),
    Attribute("recipe", "the recipe's steps, described", _RUN, False),
    Attribute(ATTR_FORMAT, f'"{FORMAT_NAME}"', _STORE, True),
    Attribute(ATTR_FORMAT_VERSION, "the format version (what the checksum covers)", _STORE, True),
    Attribute(ATTR_STATUS_CODES, "status code -> name (JSON)", _STORE, True),
    Attribute(ATTR_DQ_BITS, "data-quality bit name -> value (JSON)", _STORE, True, Coverage.FILE),
    Attribute(ATTR_DQ_TIME_BITS, "per-bin data-quality bit name -> value (JSON)", _STORE, True, Coverage.FILE),
    Attribute(ATTR_CONVENTIONS, CONVENTIONS, _STORE, False),
    Attribute(ATTR_LAYOUT, f'"{LAYOUT_INDEX}" for an index over part files', _INDEX, True),
    Attribute(ATTR_PARTS, "the part files (JSON list, relative to the index)", _INDEX, True),
    Attribute(ATTR_LAST_PART, "the highest part number the output ever used (never reused)", _INDEX, False),
)


def _by_name(fields: Iterable[Field]) -> dict[str, Field]:
    return {f.name: f for f in fields}


ROOT = _by_name(f for f in FIELDS if f.group is Group.ROOT)
INSTRUMENT = _by_name(f for f in FIELDS if f.group is Group.INSTRUMENT)
PLANES = _by_name(f for f in INSTRUMENT.values() if f.written is Written.MEMMAP and not f.added_by)  # every file's
OPTIONAL = _by_name(f for f in INSTRUMENT.values() if f.added_by)  # InstrumentLayout.extras: added by a step
AXES = _by_name(f for f in INSTRUMENT.values() if f.written is not Written.MEMMAP)
ADDED_BY_STEP = {step: tuple(f.name for f in OPTIONAL.values() if step in f.added_by)
                 for step in dict.fromkeys(s for f in OPTIONAL.values() for s in f.added_by)}
LONG_NAMES = {f.name: f.long_name for f in FIELDS}

# per-observation bookkeeping at the root, written through memmaps, in layout order
PER_OBSERVATION = tuple(f.name for f in ROOT.values() if f.written is Written.MEMMAP)
# per-instrument, per-observation datasets, written through memmaps (suffixes of their keys)
PER_PIXEL = tuple(f"/{f.name}" for f in INSTRUMENT.values() if f.written is Written.MEMMAP)
# what the checksum covers: per observation, its planes (suffixes of their keys) and these root datasets, in order
CHECKSUM_PLANES = tuple(f"/{f.name}" for f in INSTRUMENT.values() if f.checksum is Coverage.OBSERVATION)
CHECKSUM_FIELDS = tuple(f.name for f in ROOT.values() if f.checksum is Coverage.OBSERVATION)
# in the digest of the file: each instrument's axes, and the file attributes, in order
CHECKSUM_AXES = tuple(f.name for f in INSTRUMENT.values() if f.checksum is Coverage.FILE)
CHECKSUM_ATTRS = tuple(a.name for a in ATTRIBUTES if a.checksum is Coverage.FILE)

# the dimension scale of each axis (the x axis: the instrument's, X_SCALE)
SCALES = {OBS_AXIS: OBS, TIME_AXIS: TIME, Y_AXIS: ROW, XY_AXIS: XY}
X_SCALE = {AIRS.name: WAVELENGTH, FGS1.name: COLUMN}


def scale_name(axis: str, instrument: str = "") -> str:
    """The dataset that is ``axis``'s dimension scale (in ``instrument``'s group for the x axis)."""
    return X_SCALE[instrument] if axis == X_AXIS else SCALES[axis]


def axes_text(axes: tuple[str, ...]) -> str:
    """The ``axes`` attribute of a dataset: ``"obs,time,x,y"``; the xy axis is written ``(x,y)``."""
    return ",".join(f"({','.join(XY_VALUES)})" if axis == XY_AXIS else axis for axis in axes)


def dataset(instrument: str, name: str) -> str:
    """The key of an instrument's dataset, e.g. ``dataset("FGS1", SIGNAL)`` is ``"FGS1/signal"``."""
    return f"{instrument}/{name}"


def field(key: str) -> Field:
    """The declaration of the dataset ``key`` (``"status"``, ``"FGS1/signal"``); KeyError if undeclared."""
    group, _, name = key.rpartition("/")
    return INSTRUMENT[name] if group else ROOT[name]


def numerical_declarations(fields: Iterable[Field] | None = None,
                           attributes: Iterable[Attribute] | None = None) -> dict[str, Any]:
    """The part of the schema that identifies an output's numbers, as JSON-ready data.

    The datasets' names, groups, dtypes, axes, fill values, flag values and checksum
    coverage; the numerical attributes' names and coverage; the format version and the
    status codes. Not the long names, units, flag meanings or other descriptions.
    Defaults: :data:`FIELDS` and :data:`ATTRIBUTES`, read when called.
    """
    fields = FIELDS if fields is None else fields
    attributes = ATTRIBUTES if attributes is None else attributes
    return {"format_version": FORMAT_VERSION, "status_codes": sorted(STATUS_NAMES),
            "xy": list(XY_VALUES),
            "datasets": [f.numerical_declaration() for f in fields if f.numerical],
            "attributes": [a.numerical_declaration() for a in attributes if a.numerical]}
