"""Exports of a calibrated file for other tools, streamed one observation at a time.

``npy`` — the organisers' notebook's files
    ``data_<split>.npy`` ``(rows, bins, 282, 32)`` and ``data_<split>_FGS.npy``
    ``(rows, bins, 32, 32)`` (``data_train.npy`` / ``data_train_FGS.npy`` for the
    train split), float64 by default, written with
    :func:`numpy.lib.format.open_memmap` one observation at a time (memory: one
    observation) into files whose disk space is reserved first (a full disk is an
    ``OutputError``, not a SIGBUS). ``obs`` holds the *done* observations in the
    file's order (every visit, where the notebook kept visit 0 only), or with
    ``visits="first"`` one row per planet (its first done visit, what the baseline
    expects) or ``visits="mean"`` one row per planet (the NaN-ignoring mean of its done
    visits); ``data_<split>_index.csv`` lists each row's ``planet_id``, ``visit`` (its
    first) and ``visits`` (all it holds, ``;``-separated).
    The three files are staged (:func:`arielstream.io.atomic.staged`) and renamed
    together once all are complete: a failure leaves the previous export as it was; a file of an
    instrument the source lacks, left by an earlier export, is removed.
    ``wavelength_order``: ``"detector"`` (the default) gives the notebook's order
    (detector columns 39..320, long to short wavelength, what baseline models
    trained on the notebook's output read), ``"target"`` ascending
    ``wl_2 .. wl_283``, ``"file"`` (or ``None``) keeps the file's order. Bad pixels
    are NaN in the default profile (a warning counts them); ``fill_value``
    replaces NaN (e.g. 0, as the notebook's models expect).
``fits`` — one FITS file per observation, ``<planet_id>_visit<v>.fits``
    HDU 0 ``PRIMARY``: no data; ``TELESCOP`` (``Ariel``), ``INSTRUME``, ``OBJECT``
    (the planet id), ``DATE`` (when written); provenance keywords ``ORIGIN``, ``ASVER``
    (arielstream version), ``PROFILE``, ``PLANETID``, ``VISIT``, ``SPLIT``,
    ``WLORDER``, ``SOURCE`` (the data folder's name), ``BUNIT``, and ``CONFIG`` (the calibration config as
    JSON; long values continue on ``CONTINUE`` cards, which astropy reassembles).
    HDU 1 ``CONFIG``: a one-row table with the full ``config``, ``recipe`` and
    ``provenance`` JSON strings. Then per instrument (``AIRS-CH0``, ``FGS1``):
    ``<INST>`` the cube float32 (numpy ``(time, x, y)``, i.e. FITS
    ``NAXIS1 = y``, ``NAXIS2 = x``, ``NAXIS3 = time``; ``BUNIT``, ``INSTRUME``, ``OBJECT``
    and a WCS: time along axis 3 in seconds from the observation's start (``TIMESYS = LOCAL``,
    ``MJDREF = 0``: astropy converts it to a ``Time`` without a warning), linear when the bins
    are evenly spaced, and for AIRS the wavelength (µm) along axis 2 as ``WAVE-TAB``, looked up in the table
    ``<INST>_WCSTAB`` that follows the cube, so ``astropy.wcs.WCS(header, fobj=hdul)``
    gives the exact wavelengths; ``LONGSTRN`` where ``CONTINUE`` cards are used), ``<INST>_DQ``
    the DQ bits ``(x, y)`` (uint16, stored by astropy as int16 with BZERO = 32768),
    ``<INST>_READNOISE`` ``(x, y)`` float32 electrons per read, ``<INST>_TIME`` a
    table ``TIME`` (hours) per bin and ``<INST>_AXIS`` a table of x: ``COLUMN``, and for
    AIRS ``WAVELENGTH`` (µm) and ``LABEL`` (``wl_k``). The x order is the file's.
``csv`` / ``parquet`` — the light curves as one long table, ``lightcurves.csv`` / ``lightcurves.parquet``
    one row per observation, instrument, wavelength and time bin: ``planet_id``,
    ``visit``, ``instrument`` (``AIRS-CH0``, ``AIRS-CH0-white``, ``FGS1``),
    ``wavelength_label`` (``wl_k``; ``white`` for the AIRS white light, ``wl_1``
    for FGS1), ``wavelength`` (µm; NaN for the white light), ``time`` (hours),
    ``flux``, ``flux_err`` (electrons per bin, 1 sigma), ``normalised_flux``,
    ``normalised_flux_err`` (divided by the median over time of that light curve).
    The source can be a calibrated file (light curves extracted on the fly with
    :mod:`arielstream.products.lightcurves` options) or a light-curve file from
    ``arielstream extract``; ``observations`` are indices in the calibrated file
    either way (a light-curve file maps them through its ``source_index``).
    Parquet gets one row group per observation.

Every file is written as ``NAME.partial`` and renamed into place when complete
(:mod:`arielstream.io.atomic`); write failures (disk full, a folder in the way) are
``OutputError`` naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from ..errors import OutputError
from ..io import schema as _schema
from ..io import store
from ..io.atomic import Staging, atomic_write, output_errors, staged
from ..io.output import check_product_target
from ..io.reader import open_output, open_readable
from ..io.store import text as _text
from ..layout import AIRS as _AIRS
from ..layout import FGS1 as _FGS1
from ..layout import FGS1_WAVELENGTH_UM
from . import lightcurves as lcmod
from .defaults import FORMATS, NPY_VISITS, WAVELENGTH_ORDERS

log = logging.getLogger(__name__)

AIRS, FGS1 = _AIRS.name, _FGS1.name
TABLE_TYPES = {"planet_id": "int64", "visit": "int16", "instrument": "string", "wavelength_label": "string",
               "wavelength": "float64", "time": "float64", "flux": "float64", "flux_err": "float64",
               "normalised_flux": "float64", "normalised_flux_err": "float64"}  # pyarrow type names
TABLE_COLUMNS = tuple(TABLE_TYPES)


def _make_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    with output_errors(out_dir, "create the export folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def x_order(wavelength: np.ndarray, order: str | None) -> np.ndarray | None:
    """Indices putting the stored AIRS x axis in ``order`` (``"file"`` or ``None``: as stored, no reordering)."""
    if order not in (*WAVELENGTH_ORDERS, None):
        raise ValueError(f"wavelength_order must be one of {', '.join(WAVELENGTH_ORDERS)} or None; got {order!r}")
    if order in ("file", None):
        return None
    ascending = lcmod.target_order(wavelength)
    return ascending if order == "target" else ascending[::-1].copy()


# ---------------------------------------------------------------- npy
def _reserve(partial: Path, target: Path) -> None:
    """Allocate the whole file on disk now: a full disk is then an error here, not a SIGBUS in a memmap write."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the file stays sparse
        return
    with output_errors(target, "reserve its disk space"), open(partial, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)


def _row_cube(ds: h5py.Dataset, group: list[int]) -> np.ndarray:
    """One row of an ``.npy`` export: an observation's cube, or the NaN-ignoring mean of several (visits)."""
    if len(group) == 1:
        return ds[group[0]]
    total, count = np.zeros(ds.shape[1:], np.float64), np.zeros(ds.shape[1:], np.int64)
    for index in group:
        cube = ds[index]
        valid = ~np.isnan(cube)
        total += np.where(valid, cube, 0.0)
        count += valid
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def npy_rows(f: h5py.File, chosen: list[int], visits: str = "all") -> list[list[int]]:
    """The observations of each ``.npy`` row: each one (``all``), or per planet its first done visit or all of them.

    ``visits``: ``"all"`` one row per observation; ``"first"`` one row per planet, its
    done visit with the lowest number (the baseline's visit 0 where it is done);
    ``"mean"`` one row per planet, the mean of its done visits (bins aligned, NaN ignored).
    """
    if visits == "all":
        return [[index] for index in chosen]
    if visits not in NPY_VISITS:
        raise ValueError(f"visits must be one of {', '.join(NPY_VISITS)}: {visits!r}")
    planet_id, visit = f[_schema.PLANET_ID][()], f[_schema.VISIT][()]
    groups: dict[int, list[int]] = {}
    for index in chosen:
        groups.setdefault(int(planet_id[index]), []).append(index)
    rows = [sorted(group, key=lambda i: int(visit[i])) for group in groups.values()]
    return [row[:1] for row in rows] if visits == "first" else rows


def _write_npy(ds: h5py.Dataset, chosen: list[list[int]], staging: Staging, target: Path, *, dtype: np.dtype,
               order: np.ndarray | None, fill_value: float | None) -> int:
    """Stage the rows ``chosen`` (observations of each, :func:`npy_rows`) of ``ds`` as ``target``; NaN written."""
    partial = staging.path(target)
    with output_errors(target, "create"):
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(len(chosen), *ds.shape[1:]))
    nans = 0
    try:
        _reserve(partial, target)
        for k, group in enumerate(chosen):
            cube = _row_cube(ds, group)
            if order is not None:
                cube = cube[:, order]
            if fill_value is not None:
                cube = np.where(np.isnan(cube), fill_value, cube)
            else:
                nans += int(np.count_nonzero(np.isnan(cube)))
            mm[k] = cube
        with output_errors(target):
            mm.flush()
    finally:
        del mm
    return nans


def _write_index(f: h5py.File, chosen: list[list[int]], staging: Staging, target: Path) -> None:
    """Stage the CSV naming the planet and visit(s) of each row of the ``.npy`` files as ``target``.

    ``visit`` is the row's (first) visit; ``visits`` every visit the row holds, ``;``-separated.
    """
    planet_id, visit = f[_schema.PLANET_ID][()], f[_schema.VISIT][()]
    with output_errors(target), staging.path(target).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "planet_id", "visit", "visits"])
        for k, group in enumerate(chosen):
            w.writerow([k, int(planet_id[group[0]]), int(visit[group[0]]), ";".join(str(int(visit[i])) for i in group)])


def _remove_stale(targets: dict[str, Path], written: dict[str, Path], path: str | Path) -> None:
    """Remove the files of an earlier export that this source has no data for (an instrument it lacks)."""
    for key, target in targets.items():
        if key not in written and target.exists():
            with output_errors(target, "remove it"):
                target.unlink()
            log.warning("%s: removed: left by an earlier export, and %s has no %s data", target, path, key)


def export_npy(path: str | Path, out_dir: str | Path, *, dtype: npt.DTypeLike = np.float64,
               wavelength_order: str | None = "detector", fill_value: float | None = None,
               observations: Sequence[int] | None = None, visits: str = "all") -> dict[str, Path]:
    """Write the notebook's ``data_<split>.npy`` and ``data_<split>_FGS.npy`` (see the module doc)."""
    with open_output(path) as f:
        out_dir = _make_dir(out_dir)
        split = _text(f.attrs.get("split", "train")) or "train"
        chosen = npy_rows(f, lcmod.require_done(f, path, observations, "export"), visits)
        targets = {AIRS: out_dir / f"data_{split}.npy", FGS1: out_dir / f"data_{split}_FGS.npy",
                   "index": out_dir / f"data_{split}_index.csv"}
        held = store.instruments_in(f)
        orders = {AIRS: x_order(f[_schema.dataset(AIRS, _schema.WAVELENGTH)][()], wavelength_order) if AIRS in held
                  else None, FGS1: None}
        nans = 0
        with staged() as staging:
            written = {key: targets[key] for key in (*held, "index")}
            for inst in held:
                nans += _write_npy(f[_schema.dataset(inst, _schema.SIGNAL)], chosen, staging, targets[inst],
                                   dtype=np.dtype(dtype), order=orders[inst], fill_value=fill_value)
            _write_index(f, chosen, staging, targets["index"])
            staging.commit()
        _remove_stale(targets, written, path)
    log.info("%s: %d row(s) (visits: %s) exported to %s", path, len(chosen), visits,
             ", ".join(str(p) for p in written.values()))
    if nans:
        log.warning("%s: %d NaN value(s) (bad pixels) written; --fill-value 0 (fill_value=0) replaces them",
                    out_dir, nans)
    return written


# ---------------------------------------------------------------- fits
def fits_header_cards(attrs: dict[str, str], planet_id: int, visit: int,
                      instruments: Sequence[str] = ()) -> list[tuple[str, Any, str]]:
    """The provenance keywords of the primary header."""
    return [
        ("TELESCOP", "Ariel", "ESA Ariel (ADC2025 simulated data)"),
        ("INSTRUME", ",".join(instruments), "instruments of the image extensions"),
        ("OBJECT", str(int(planet_id)), "planet_id"),
        ("DATE", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
         "UTC date this file was written"),
        ("ORIGIN", "arielstream", "calibrated Ariel Data Challenge 2025 data"),
        ("ASVER", attrs.get("arielstream_version", ""), "arielstream version (and source digest)"),
        ("PROFILE", attrs.get("profile", ""), "calibration profile"),
        ("PLANETID", int(planet_id), "planet_id"),
        ("VISIT", int(visit), "visit of the planet"),
        ("SPLIT", attrs.get("split", ""), "train or test"),
        ("WLORDER", attrs.get("wavelength_order", ""), "AIRS x order: target or detector"),
        # the folder's name, not a local absolute path (a FITS file travels; the calibrated file keeps the path)
        ("SOURCE", PurePath(str(attrs.get("source", ""))).name, "raw data folder (its name)"),
        ("BUNIT", "electron", "per time bin, flat-fielded"),
        ("CONFIG", attrs.get("config", "{}"), "calibration config (JSON)"),
    ]


def _set(header: Any, key: str, value: Any, comment: str) -> None:
    """A header card; long strings continue on CONTINUE cards and carry no comment (it would be cut)."""
    long = isinstance(value, str) and len(value) + len(comment) > 60
    header[key] = value if long else (value, comment)
    if long and "LONGSTRN" not in header:  # fitsverify warns about CONTINUE cards without it
        header["LONGSTRN"] = ("OGIP 1.0", "CONTINUE long string convention")


def _uniform_step(values: np.ndarray) -> float | None:
    """The step of an evenly spaced axis (to 1e-6 of a step), or None."""
    if values.shape[0] < 2:
        return 1.0 if values.shape[0] == 1 else None
    steps = np.diff(values)
    step = float(steps.mean())
    return step if step != 0 and np.allclose(steps, step, rtol=1e-6, atol=0) else None


def _fits_wcs(fits: Any, header: Any, inst: str, time: np.ndarray, wavelength: np.ndarray | None) -> Any | None:
    """World coordinates of a cube (FITS axes 1 row, 2 x, 3 time); the ``-TAB`` table it needs, or None.

    The time axis (seconds from the observation's start) is linear when its bins are evenly spaced, else
    looked up in the table; AIRS's wavelength (quadratic in the detector column) is always looked up there
    (``WAVE-TAB``, FITS WCS Paper III), in the table ``<INST>_WCSTAB``.
    """
    header["WCSAXES"] = (3, "row, x, time")
    header["CNAME1"], header["CTYPE1"] = "spatial row", "LINEAR"
    header["CRPIX1"], header["CRVAL1"], header["CDELT1"] = 1.0, 0.0, 1.0
    columns: list[Any] = []
    spectral = False
    if inst == AIRS and wavelength is not None and wavelength.ndim == 1 and wavelength.size > 1:
        steps = np.diff(wavelength)
        spectral = bool(np.all(np.isfinite(wavelength))) and (bool(np.all(steps > 0)) or bool(np.all(steps < 0)))
    if spectral and wavelength is not None:
        header["CTYPE2"], header["CUNIT2"], header["CNAME2"] = "WAVE-TAB", "um", "wavelength"
        header["PS2_0"], header["PS2_1"] = (f"{inst}_WCSTAB", "table of the -TAB axes"), ("WAVELENGTH", "column")
        header["CRPIX2"], header["CRVAL2"], header["CDELT2"] = 1.0, 1.0, 1.0
        columns.append(fits.Column(name="WAVELENGTH", format=f"{wavelength.shape[0]}D", unit="um",
                                   dim=f"(1,{wavelength.shape[0]})", array=wavelength.reshape(1, 1, -1)))
    else:
        header["CNAME2"], header["CTYPE2"] = "detector column", "LINEAR"
        header["CRPIX2"], header["CRVAL2"], header["CDELT2"] = 1.0, 0.0, 1.0
    seconds = time * 3600.0  # in seconds: astropy turns a time axis into a Time as if in seconds, whatever CUNIT says
    step = _uniform_step(seconds)
    header["CTYPE3"], header["CUNIT3"] = ("TIME" if step is not None else "TIME-TAB"), "s"
    header["CNAME3"] = "time from the start of the observation"
    # FITS time (WCS Paper VII, FITS 4.0 sec. 9): no absolute epoch is known, so a LOCAL time scale (the standard's
    # scale for relative / simulated clocks) whose reference MJDREF = 0 is the start of the observation
    header["TIMESYS"] = ("LOCAL", "relative time, from the observation start")
    header["MJDREFI"], header["MJDREFF"] = (0, "reference: the observation start"), (0.0, "no absolute epoch")
    header["TIMEUNIT"] = ("s", "time unit: seconds")
    if step is not None:
        header["CRPIX3"], header["CRVAL3"], header["CDELT3"] = 1.0, float(seconds[0]), step
    else:
        header["PS3_0"], header["PS3_1"] = (f"{inst}_WCSTAB", "table of the -TAB axes"), ("TIME", "column")
        header["CRPIX3"], header["CRVAL3"], header["CDELT3"] = 1.0, 1.0, 1.0
        columns.append(fits.Column(name="TIME", format=f"{time.shape[0]}D", unit="s", dim=f"(1,{time.shape[0]})",
                                   array=seconds.reshape(1, 1, -1)))
    return fits.BinTableHDU.from_columns(columns, name=f"{inst}_WCSTAB") if columns else None


def export_fits(path: str | Path, out_dir: str | Path, *, observations: Sequence[int] | None = None,
                overwrite: bool = True) -> list[Path]:
    """One FITS file per done observation (layout in the module doc)."""
    from astropy.io import fits

    written: list[Path] = []
    with open_output(path) as f:
        out_dir = _make_dir(out_dir)
        attrs = {k: _text(v) for k, v in f.attrs.items()}
        instruments = store.instruments_in(f)
        for index in lcmod.require_done(f, path, observations, "export"):
            planet_id, visit = int(f[_schema.PLANET_ID][index]), int(f[_schema.VISIT][index])
            primary = fits.PrimaryHDU()
            for key, value, comment in fits_header_cards(attrs, planet_id, visit, instruments):
                _set(primary.header, key, value, comment)
            provenance = _text(f[_schema.PROVENANCE][index]).rstrip("\x00") if _schema.PROVENANCE in f else ""
            table = fits.BinTableHDU.from_columns([
                fits.Column(name=name, format=f"{max(1, len(value.encode()))}A", array=np.array([value.encode()]))
                for name, value in (("CONFIG", attrs.get("config", "{}")), ("RECIPE", attrs.get("recipe", "")),
                                    ("PROVENANCE", provenance))
            ], name="CONFIG")
            hdus: list[Any] = [primary, table]
            for inst in instruments:
                g = f[inst]
                image = fits.ImageHDU(g[_schema.SIGNAL][index], name=inst)
                image.header["BUNIT"] = ("electron", "per time bin, flat-fielded")
                image.header["AXES"] = ("time,x,y", "numpy order: NAXIS1=y NAXIS2=x NAXIS3=time")
                image.header["PLANETID"], image.header["VISIT"] = planet_id, visit
                image.header["INSTRUME"], image.header["OBJECT"] = inst, str(planet_id)
                along_x = _schema.WAVELENGTH_LABEL in g  # FGS1, a photometer: no wavelength axis
                wavelength = g[_schema.WAVELENGTH][()] if along_x else None
                wcs_table = _fits_wcs(fits, image.header, inst, g[_schema.TIME][()], wavelength)
                dq = fits.ImageHDU(g[_schema.DQ][index], name=f"{inst}_DQ")
                _set(dq.header, "BITS", attrs.get(_schema.ATTR_DQ_BITS, ""), "data-quality bit values")
                hdus += [image, dq] if wcs_table is None else [image, wcs_table, dq]
                if _schema.READ_NOISE in g:
                    rn = fits.ImageHDU(g[_schema.READ_NOISE][index], name=f"{inst}_READNOISE")
                    rn.header["BUNIT"] = ("electron", "per read")
                    hdus.append(rn)
                hdus.append(fits.BinTableHDU.from_columns(
                    [fits.Column(name="TIME", format="D", unit="h", array=g[_schema.TIME][()])], name=f"{inst}_TIME"))
                column = g[_schema.COLUMN][()]  # float (a mean) when the output is spatially binned
                axis = [fits.Column(name="COLUMN", format="I" if column.dtype.kind in "iu" else "E", array=column)]
                if wavelength is not None:
                    labels = np.array([_text(s).encode() or b"-" for s in g[_schema.WAVELENGTH_LABEL][()]])
                    axis += [fits.Column(name="WAVELENGTH", format="D", unit="um", array=wavelength),
                             fits.Column(name="LABEL", format="8A", array=labels)]
                hdus.append(fits.BinTableHDU.from_columns(axis, name=f"{inst}_AXIS"))
            target = out_dir / f"{planet_id}_visit{visit}.fits"
            if target.exists() and not overwrite:
                raise OutputError(f"{target}: exists")
            with atomic_write(target) as partial:
                fits.HDUList(hdus).writeto(partial, overwrite=True, output_verify="exception")
            written.append(target)
    log.info("%s: %d FITS file(s) written to %s", path, len(written), out_dir)
    return written


# ---------------------------------------------------------------- light-curve tables
def _rows_of(lc: lcmod.LightCurves) -> dict[str, np.ndarray]:
    """The long-format columns of one observation's light curves."""
    parts: list[dict[str, np.ndarray]] = []

    def add(instrument: str, labels: Sequence[str], wavelength: np.ndarray, time: np.ndarray, flux: np.ndarray,
            err: np.ndarray) -> None:
        # flux, err: (t, w) -> rows ordered by wavelength, then time
        nflux, nerr = lcmod.normalise(flux, err, axis=0)
        t, w = flux.shape
        parts.append({
            "instrument": np.full(t * w, instrument, dtype=object),
            "wavelength_label": np.repeat(np.asarray(labels, dtype=object), t),
            "wavelength": np.repeat(np.asarray(wavelength, dtype=np.float64), t),
            "time": np.tile(time, w),
            "flux": flux.T.ravel(), "flux_err": err.T.ravel(),
            "normalised_flux": nflux.T.ravel(), "normalised_flux_err": nerr.T.ravel(),
        })

    if lc.airs_flux is not None:
        # both sources of light curves (extraction, light-curve file) set these with airs_flux
        assert lc.wavelength_label is not None and lc.wavelength is not None and lc.airs_time is not None
        assert lc.airs_flux_err is not None and lc.airs_white is not None and lc.airs_white_err is not None
        add(AIRS, lc.wavelength_label, lc.wavelength, lc.airs_time, lc.airs_flux, lc.airs_flux_err)
        add(f"{AIRS}-white", ["white"], np.array([np.nan]), lc.airs_time, lc.airs_white[:, None],
            lc.airs_white_err[:, None])
    if lc.fgs1_flux is not None:
        assert lc.fgs1_time is not None and lc.fgs1_flux_err is not None  # set with fgs1_flux
        add(FGS1, ["wl_1"], np.array([FGS1_WAVELENGTH_UM]), lc.fgs1_time, lc.fgs1_flux[:, None],
            lc.fgs1_flux_err[:, None])
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    n = len(out.get("time", ()))
    out["planet_id"] = np.full(n, lc.planet_id, dtype=np.int64)
    out["visit"] = np.full(n, lc.visit, dtype=np.int16)
    return {k: out[k] for k in TABLE_COLUMNS}


def _from_lightcurve_file(f: h5py.File, k: int) -> lcmod.LightCurves:
    lc = lcmod.LightCurves(index=int(f["source_index"][k]), planet_id=int(f[_schema.PLANET_ID][k]),
                           visit=int(f[_schema.VISIT][k]))
    if AIRS in f:
        g = f[AIRS]
        lc.airs_time, lc.wavelength = g[_schema.TIME][()], g[_schema.WAVELENGTH][()]
        lc.wavelength_label = [_text(s) for s in g[_schema.WAVELENGTH_LABEL][()]]
        lc.airs_flux, lc.airs_flux_err = g["flux"][k], g["flux_err"][k]
        lc.airs_white, lc.airs_white_err = g["white_flux"][k], g["white_flux_err"][k]
    if FGS1 in f:
        g = f[FGS1]
        lc.fgs1_time, lc.fgs1_flux, lc.fgs1_flux_err = g[_schema.TIME][()], g["flux"][k], g["flux_err"][k]
    return lc


def lightcurve_rows(f: h5py.File, path: str | Path, observations: Sequence[int] | None) -> list[int]:
    """Rows of a light-curve file holding ``observations``, indices in its calibrated source (``source_index``)."""
    source = f["source_index"][()]
    if observations is None:
        return list(range(source.shape[0]))
    row = {int(s): k for k, s in enumerate(source)}
    for i in observations:
        if int(i) not in row:
            held = f"{source.min()}..{source.max()}" if source.size else "none"
            raise lcmod.SelectionError(f"observation {i} is not in the light-curve file {path} (it holds "
                                       f"{source.size} observation(s) of its source file, indices {held})")
    return [row[int(i)] for i in observations]


def iter_light_curves(path: str | Path, *, observations: Sequence[int] | None = None,
                      **extract_options: Any) -> Iterator[lcmod.LightCurves]:
    """Light curves one observation at a time, from a calibrated file or a light-curve file.

    ``observations`` are indices in the calibrated file in both cases.
    """
    with open_readable(path) as f:
        yield from _light_curves(f, path, observations, **extract_options)


def _light_curves(f: h5py.File, path: str | Path, observations: Sequence[int] | None,
                  **extract_options: Any) -> Iterator[lcmod.LightCurves]:
    if lcmod.is_lightcurve_file(f):
        if extract_options:
            log.warning("%s is a light-curve file: extraction options %s ignored", path, sorted(extract_options))
        for k in lightcurve_rows(f, path, observations):
            yield _from_lightcurve_file(f, k)
        return
    lcmod.check_source(f, path)
    for index in lcmod.require_done(f, path, observations, "export"):
        yield lcmod.observation_light_curves(f, index, **extract_options)


def _table_writer(partial: Path, target: Path, fmt: str, schema: Any) -> Any:
    with output_errors(target, "create"):
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetWriter(partial, schema, compression="zstd")
        import pyarrow.csv as pacsv

        return pacsv.CSVWriter(partial, schema)


def export_table(path: str | Path, out_dir: str | Path, fmt: str = "csv", *,
                 observations: Sequence[int] | None = None, **extract_options: Any) -> Path:
    """Write the long light-curve table ``lightcurves.csv`` or ``lightcurves.parquet`` (see the module doc)."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"table format must be csv or parquet; got {fmt!r}")
    import pyarrow as pa

    schema = pa.schema([(name, getattr(pa, TABLE_TYPES[name])()) for name in TABLE_COLUMNS])
    n = 0
    with open_readable(path) as source:  # checked before anything is created
        target = _make_dir(out_dir) / f"lightcurves.{fmt}"
        with atomic_write(target) as partial:
            writer = _table_writer(partial, target, fmt, schema)
            try:
                for lc in _light_curves(source, path, observations, **extract_options):
                    columns = _rows_of(lc)
                    writer.write_table(pa.table({k: pa.array(v, type=schema.field(k).type)
                                                 for k, v in columns.items()}, schema=schema))
                    n += 1
            except BaseException:
                with contextlib.suppress(Exception):
                    writer.close()  # let go of the file before it is removed
                raise
            writer.close()
    log.info("%s: light curves of %d observation(s) written to %s", path, n, target)
    return target


# ---------------------------------------------------------------- one entry point
def export(path: str | Path, out_dir: str | Path, fmt: str, **options: Any) -> list[Path]:
    """Export ``path`` as ``fmt`` (npy, fits, csv, parquet) into ``out_dir``; the files written.

    Parameters
    ----------
    path : str or Path
        A calibrated file (the output of :func:`arielstream.calibrate`).
    out_dir : str or Path
        The folder to write into (created if needed).
    fmt : str
        ``"npy"`` (the notebook's ``data_<split>.npy``), ``"fits"`` (one file per observation),
        ``"csv"`` or ``"parquet"`` (the long light-curve table).
    **options
        The format's options: ``dtype``, ``wavelength_order``, ``fill_value``, ``visits`` (npy);
        ``overwrite`` (fits); the extraction's (csv, parquet); ``observations`` (all).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ValueError
        An unknown ``fmt``.
    InputError
        ``path`` is not a calibrated file, or an observation asked for is not done.
    ConfigError
        ``out_dir`` is ``path``, one of its side files, or inside its data folder.
    """
    check_product_target(out_dir, path)
    if fmt == "npy":
        return list(export_npy(path, out_dir, **options).values())
    if fmt == "fits":
        return export_fits(path, out_dir, **options)
    if fmt in ("csv", "parquet"):
        return [export_table(path, out_dir, fmt, **options)]
    raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def config_from_fits(path: str | Path) -> dict[str, Any]:
    """The calibration config stored in a FITS export's primary header."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        return json.loads(hdul[0].header["CONFIG"])
