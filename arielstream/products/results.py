"""Reading a calibrated file from Python: ``arielstream.open(OUT.h5)``.

>>> import arielstream
>>> with arielstream.open("output/data_samples.h5") as res:          # doctest: +SKIP
...     obs = res.observations                 # planet_id, visit, status of each observation
...     cube = res.airs(0)                     # (time, wavelength, row) float32, NaN on bad pixels
...     lc = res.light_curves(0)               # spectral and white-light curves with uncertainties
...     ds = res.to_xarray()                   # lazy xarray.Dataset (needs xarray; dask keeps it lazy)

The object holds an h5py file open read-only and reads only what is asked for, one
observation at a time: nothing is loaded when it is opened. Axes and wavelength
order are those of the file (``res.wavelength`` matches ``res.airs(i)``'s x axis:
ascending in the default profile, detector order in the notebook profile);
:meth:`Results.light_curves` always returns the target (ascending) order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..config.options import CalibrationConfig, ConfigError, build_config
from ..errors import InputError, MissingDependencyError
from ..io import schema as _schema
from ..io import store as _s
from ..io.reader import open_output
from ..io.schema import STATUS_DONE, STATUS_NAMES
from ..io.store import text as _text
from ..layout import AIRS as _AIRS
from ..layout import FGS1 as _FGS1
from . import lightcurves as _lc

AIRS, FGS1 = _AIRS.name, _FGS1.name
_ALIASES = {"airs": AIRS, "airs-ch0": AIRS, "fgs1": FGS1, "fgs": FGS1}

__all__ = ["MissingDependencyError", "ObservationInfo", "Results", "open"]


@dataclass(frozen=True)
class ObservationInfo:
    """One planet visit of the file."""

    index: int
    planet_id: int
    visit: int
    status: str  # pending, done, failed, running

    @property
    def done(self) -> bool:
        """True when the observation was calibrated completely."""
        return self.status == STATUS_NAMES[STATUS_DONE]


class Results:
    """A read-only, lazy view of an arielstream output file (use :func:`open`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: h5py.File | None = open_output(self.path)

    # -- lifecycle
    def close(self) -> None:
        """Close the file (again: nothing); the view cannot be used after."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._file is None else f"{len(self)} observation(s)"
        return f"<arielstream.Results {self.path} ({state})>"

    def __len__(self) -> int:
        return int(self.file[_schema.PLANET_ID].shape[0])

    @property
    def file(self) -> h5py.File:
        """The underlying h5py file (read-only)."""
        if self._file is None:
            raise ValueError(f"{self.path}: the results are closed")
        return self._file

    # -- metadata
    @property
    def attrs(self) -> dict[str, str]:
        """The file's attributes (config, profile, recipe, version, ...) as text."""
        return {k: _text(v) for k, v in self.file.attrs.items()}

    @property
    def config(self) -> CalibrationConfig:
        """The calibration config the file was made with."""
        raw = json.loads(self.attrs.get("config", "{}"))
        try:
            return build_config(**raw)
        except ConfigError as exc:
            raise InputError(self.path, f"its config does not match this arielstream version: {exc}") from None

    @property
    def profile(self) -> str:
        """The name of the config profile the file was made with ("" if none is recorded)."""
        return self.attrs.get("profile", "")

    @property
    def version(self) -> str:
        """The arielstream version that made the file ("" if none is recorded)."""
        return self.attrs.get("arielstream_version", "")

    @property
    def observations(self) -> list[ObservationInfo]:
        """Every planet visit of the file, in file order, with its status."""
        f = self.file
        status = f[_schema.STATUS][()]
        return [ObservationInfo(i, int(p), int(v), STATUS_NAMES.get(int(s), f"unknown({int(s)})"))
                for i, (p, v, s) in enumerate(zip(f[_schema.PLANET_ID][()], f[_schema.VISIT][()], status, strict=True))]

    @property
    def instruments(self) -> list[str]:
        """The instruments the file holds cubes of (e.g. ``["AIRS-CH0", "FGS1"]``)."""
        return _s.instruments_in(self.file)

    def _inst(self, instrument: str) -> str:
        name = _ALIASES.get(instrument.lower(), instrument)
        if _schema.dataset(name, _schema.SIGNAL) not in self.file:
            raise KeyError(f"{self.path}: no {instrument} data (instruments: {', '.join(self.instruments)})")
        return name

    def _index(self, i: int) -> int:
        n = len(self)
        index = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= index < n:
            raise IndexError(f"observation {i} outside 0..{n - 1}")
        return index

    def index(self, planet_id: int, visit: int = 0) -> int:
        """The observation index of a planet visit."""
        f = self.file
        hits = np.flatnonzero((f[_schema.PLANET_ID][()] == planet_id) & (f[_schema.VISIT][()] == visit))
        if hits.size == 0:
            raise KeyError(f"{self.path}: no planet {planet_id} visit {visit}")
        return int(hits[0])

    # -- axes
    @property
    def wavelength(self) -> np.ndarray:
        """AIRS wavelength (µm) of each x of the cubes, in the file's order."""
        return self.file[_schema.dataset(AIRS, _schema.WAVELENGTH)][()]

    @property
    def wavelength_label(self) -> list[str]:
        """``wl_k`` target label of each AIRS x, in the file's order."""
        return [_text(s) for s in self.file[_schema.dataset(AIRS, _schema.WAVELENGTH_LABEL)][()]]

    @property
    def column(self) -> np.ndarray:
        """Detector column of each AIRS x."""
        return self.file[_schema.dataset(AIRS, _schema.COLUMN)][()]

    def time(self, instrument: str = AIRS) -> np.ndarray:
        """Mean time (hours) of each time bin of ``instrument``."""
        return self.file[_schema.dataset(self._inst(instrument), _schema.TIME)][()]

    # -- data, one observation at a time
    def signal(self, instrument: str, i: int, time: slice | int | None = None) -> np.ndarray:
        """Observation ``i``'s cube ``(time, x, y)`` float32 (electrons per bin); ``time`` selects bins."""
        ds = self.file[_schema.dataset(self._inst(instrument), _schema.SIGNAL)]
        index = self._index(i)
        status = int(self.file[_schema.STATUS][index])
        if status != STATUS_DONE:
            raise InputError(self.path, f"observation {index} is {STATUS_NAMES.get(status, status)}, not done")
        return ds[index] if time is None else ds[index, time]

    def airs(self, i: int, time: slice | int | None = None) -> np.ndarray:
        """AIRS-CH0 cube ``(time, wavelength, row)`` of observation ``i``."""
        return self.signal(AIRS, i, time)

    def fgs1(self, i: int, time: slice | int | None = None) -> np.ndarray:
        """FGS1 cube ``(time, column, row)`` of observation ``i``."""
        return self.signal(FGS1, i, time)

    def dq(self, instrument: str, i: int) -> np.ndarray:
        """Data-quality bits ``(x, y)`` uint16 of observation ``i`` (see :mod:`arielstream.dq`)."""
        return self.file[_schema.dataset(self._inst(instrument), _schema.DQ)][self._index(i)]

    def read_noise(self, instrument: str, i: int) -> np.ndarray:
        """Read noise ``(x, y)`` (electrons per read; NaN if the calibration had none)."""
        return self.file[_schema.dataset(self._inst(instrument), _schema.READ_NOISE)][self._index(i)]

    def provenance(self, i: int) -> dict[str, Any]:
        """Which steps ran (or were skipped, and why) for observation ``i``."""
        raw = _text(self.file[_schema.PROVENANCE][self._index(i)]).rstrip("\x00")
        return json.loads(raw) if raw else {}

    def light_curves(self, i: int, *, half_width: int = _lc.DEFAULT_HALF_WIDTH, weighted: bool = False,
                     fgs1_radius: float = _lc.DEFAULT_FGS1_RADIUS, background: bool = True) -> _lc.LightCurves:
        """Spectral and white-light curves of observation ``i`` (see :mod:`arielstream.products.lightcurves`)."""
        index = self._index(i)
        if int(self.file[_schema.STATUS][index]) != STATUS_DONE:
            raise InputError(self.path, f"observation {index} is not done")
        return _lc.observation_light_curves(self.file, index, half_width=half_width, weighted=weighted,
                                            fgs1_radius=fgs1_radius, background=background)

    # -- xarray
    def to_xarray(self, lazy: bool | None = None):
        """An ``xarray.Dataset`` of the whole file (needs ``xarray``).

        With dask installed (``lazy=None`` or ``True``) the cubes are dask arrays
        with one chunk per observation, read on demand while this object is open.
        ``lazy=False`` reads every cube into memory (the whole file: gigabytes for a
        full split), so it must be asked for: without dask, ``lazy=None`` is an error. Variables:
        ``airs``/``fgs1`` ``(obs, <inst>_time, ...)``, ``airs_dq``/``fgs1_dq``,
        ``status``; coordinates ``planet_id``, ``visit``, the times (hours),
        ``wavelength`` (µm), ``wavelength_label`` and ``column`` along AIRS x.

        The lazy cubes read the file through read-only memory maps of their own (the
        file's datasets are contiguous), so the dataset keeps working after this object
        is closed. The file itself also opens directly:
        ``xarray.open_dataset(path, engine="h5netcdf", group="AIRS-CH0")``.
        """
        try:
            import xarray as xr
        except ImportError:
            raise MissingDependencyError.of("to_xarray", "xarray", extra="xarray") from None
        if lazy is None or lazy:
            try:
                import dask.array as da
            except ImportError:
                raise MissingDependencyError(
                    f"{self.path}: a lazy to_xarray needs dask (pip install 'dask[array]'); "
                    "to_xarray(lazy=False) reads the whole file into memory instead") from None
            lazy = True

        maps = _s.read_descriptors(self.path) if lazy else {}

        def array(ds: h5py.Dataset):
            if lazy:  # memmaps, not the h5py dataset: they outlive this object's open file
                descriptor = maps[ds.name.lstrip("/")]  # one map per observation: an index's parts are files apart
                return da.stack([da.from_array(descriptor.open(i, mode="r"), chunks=ds.shape[1:])
                                 for i in range(ds.shape[0])])
            return ds[()]

        f = self.file
        n = len(self)
        coords: dict[str, Any] = {
            "obs": np.arange(n), "planet_id": ("obs", f[_schema.PLANET_ID][()]), "visit": ("obs", f[_schema.VISIT][()]),
        }
        data: dict[str, Any] = {"status": ("obs", f[_schema.STATUS][()])}
        for name in _s.instruments_in(f):
            short = {AIRS: "airs", FGS1: "fgs1"}[name]
            g = f[name]
            t, x, y = f"{short}_time", f"{short}_x", f"{short}_y"
            coords[t] = (t, g[_schema.TIME][()], {"units": "hours"})
            if name == AIRS:
                x = "wavelength"
                coords[x] = (x, g[_schema.WAVELENGTH][()], {"units": "um"})
                coords["wavelength_label"] = (x, np.array([_text(s) for s in g[_schema.WAVELENGTH_LABEL][()]]))
                coords["column"] = (x, g[_schema.COLUMN][()])
            else:
                coords[x] = (x, g[_schema.COLUMN][()])
            signal = g[_schema.SIGNAL]
            coords[y] = (y, np.arange(signal.shape[-1]))
            data[short] = (("obs", t, x, y), array(signal),
                           {"units": _text(signal.attrs.get("units", _schema.PLANES[_schema.SIGNAL].units)),
                            "instrument": name})
            data[f"{short}_dq"] = (("obs", x, y), array(g[_schema.DQ]),
                                   {"flags": self.attrs.get(_schema.ATTR_DQ_BITS, "")})
        attrs = {k: v for k, v in self.attrs.items() if k in ("config", "profile", "arielstream_version", "recipe",
                                                                 "wavelength_order", "split")}
        attrs["source_file"] = str(self.path)
        return xr.Dataset(data, coords=coords, attrs=attrs)


def open(path: str | Path) -> Results:  # shadows the builtin on purpose: arielstream.open(OUT.h5)
    """Open a calibrated file read-only; use as a context manager (``with arielstream.open(p) as res``).

    Parameters
    ----------
    path : str or Path
        The output of :func:`calibrate` (a single file, or an index with its parts folder).

    Returns
    -------
    Results
        The file's observations (``res.airs(i)``, ``res.fgs1(i)``, ``res.to_xarray()``, ...);
        ``close()`` it, or use it in a ``with`` block.

    Raises
    ------
    InputError
        ``path`` is missing, unreadable or not an arielstream output, or one of its parts
        is lost or damaged.
    """
    return Results(path)

