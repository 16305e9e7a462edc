"""Exports of a calibrated file for other tools, streamed one observation at a time.

``npy`` — the organisers' notebook's files
    ``data_<split>.npy`` ``(obs, bins, 282, 32)`` and ``data_<split>_FGS.npy``
    ``(obs, bins, 32, 32)`` (``data_train.npy`` / ``data_train_FGS.npy`` for the
    train split), float64 by default, written with
    :func:`numpy.lib.format.open_memmap` one observation at a time (memory: one
    observation) into files whose disk space is reserved first (a full disk is an
    ``OutputError``, not a SIGBUS). ``obs`` holds the *done* observations in the
    file's order (every visit, where the notebook kept visit 0 only);
    ``data_<split>_index.csv`` lists their ``planet_id`` and ``visit``, row by row.
    The three files are written as ``.partial`` and renamed together once all are
    complete: a failure leaves the previous export as it was; a file of an
    instrument the source lacks, left by an earlier export, is removed.
    ``wavelength_order``: ``"detector"`` (the default) gives the notebook's order
    (detector columns 39..320, long to short wavelength, what baseline models
    trained on the notebook's output read), ``"target"`` ascending
    ``wl_2 .. wl_283``, ``"file"`` (or ``None``) keeps the file's order. Bad pixels
    are NaN in the default profile (a warning counts them); ``fill_value``
    replaces NaN (e.g. 0, as the notebook's models expect).
``fits`` — one FITS file per observation, ``<planet_id>_visit<v>.fits``
    HDU 0 ``PRIMARY``: no data; provenance keywords ``ORIGIN``, ``ASVER``
    (arielstream version), ``PROFILE``, ``PLANETID``, ``VISIT``, ``SPLIT``,
    ``WLORDER``, ``SOURCE``, ``BUNIT``, and ``CONFIG`` (the calibration config as
    JSON; long values continue on ``CONTINUE`` cards, which astropy reassembles).
    HDU 1 ``CONFIG``: a one-row table with the full ``config``, ``recipe`` and
    ``provenance`` JSON strings. Then per instrument (``AIRS-CH0``, ``FGS1``):
    ``<INST>`` the cube float32 (numpy ``(time, x, y)``, i.e. FITS
    ``NAXIS1 = y``, ``NAXIS2 = x``, ``NAXIS3 = time``; ``BUNIT``), ``<INST>_DQ``
    the DQ bits ``(x, y)`` (uint16, stored by astropy as int16 with BZERO = 32768),
    ``<INST>_READNOISE`` ``(x, y)`` float32 electrons per read, ``<INST>_TIME`` a
    table ``TIME`` (hours) per bin and ``<INST>_AXIS`` a table of x: ``COLUMN``,
    ``WAVELENGTH`` (µm) and ``LABEL`` (``wl_k``). The x order is the file's.
``csv`` / ``parquet`` — the light curves as one long table, ``lightcurves.csv`` / ``lightcurves.parquet``
    one row per observation, instrument, wavelength and time bin: ``planet_id``,
    ``visit``, ``instrument`` (``AIRS-CH0``, ``AIRS-CH0-white``, ``FGS1``),
    ``wavelength_label`` (``wl_k``; ``white`` for the AIRS white light, ``wl_1``
    for FGS1), ``wavelength`` (µm; NaN for the white light), ``time`` (hours),
    ``flux``, ``flux_err`` (electrons per bin, 1 sigma), ``normalised_flux``,
    ``normalised_flux_err`` (divided by the median over time of that light curve).
    The source can be a calibrated file (light curves extracted on the fly with
    :mod:`arielstream.lightcurves` options) or a light-curve file from
    ``arielstream extract``; ``observations`` are indices in the calibrated file
    either way (a light-curve file maps them through its ``source_index``).
    Parquet gets one row group per observation.

Write failures (disk full, a folder in the way) are ``OutputError`` naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import lightcurves as lcmod
from .errors import OutputError
from .store import open_output, open_readable
from .store import text as _text

log = logging.getLogger(__name__)

FORMATS = ("npy", "fits", "csv", "parquet")
WAVELENGTH_ORDERS = ("detector", "target", "file")  # "file" (or None): as stored
AIRS, FGS1 = lcmod.AIRS_NAME, lcmod.FGS1_NAME
TABLE_COLUMNS = ("planet_id", "visit", "instrument", "wavelength_label", "wavelength", "time", "flux", "flux_err",
                 "normalised_flux", "normalised_flux_err")


def _make_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the export folder: {exc}") from None
    return out_dir


@contextlib.contextmanager
def _writing(target: Path, what: str = "write") -> Iterator[None]:
    """An OSError in the block (disk full, a folder in the way) becomes an OutputError naming ``target``."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{target}: cannot {what}: {exc}") from None


def _partial(target: Path) -> Path:
    return target.with_name(target.name + ".partial")  # renamed when whole: never a half file


def _discard(partial: Path) -> None:
    """Remove a partial file, quietly: the error being raised matters more."""
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)


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
    with _writing(target, "reserve its disk space"), open(partial, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)


def _write_npy(ds: h5py.Dataset, chosen: list[int], partial: Path, target: Path, *, dtype: np.dtype,
               order: np.ndarray | None, fill_value: float | None) -> int:
    """Write the ``chosen`` observations of ``ds`` to ``partial``; the number of NaN written."""
    with _writing(target, "create"):
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(len(chosen), *ds.shape[1:]))
    nans = 0
    try:
        _reserve(partial, target)
        for k, index in enumerate(chosen):
            cube = ds[index]
            if order is not None:
                cube = cube[:, order]
            if fill_value is not None:
                cube = np.where(np.isnan(cube), fill_value, cube)
            else:
                nans += int(np.count_nonzero(np.isnan(cube)))
            mm[k] = cube
        with _writing(target):
            mm.flush()
    finally:
        del mm
    return nans


def _write_index(f: h5py.File, chosen: list[int], partial: Path, target: Path) -> None:
    planet_id, visit = f["planet_id"][()], f["visit"][()]
    with _writing(target), partial.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "planet_id", "visit"])
        for k, index in enumerate(chosen):
            w.writerow([k, int(planet_id[index]), int(visit[index])])


def _commit(targets: dict[str, Path], done: Sequence[str], path: str | Path) -> dict[str, Path]:
    """Rename the complete partials of ``done`` over their targets; remove the targets the source has no data for."""
    written: dict[str, Path] = {}
    for key, target in targets.items():
        if key in done:
            with _writing(target, "rename its .partial"):
                _partial(target).replace(target)
            written[key] = target
        elif target.exists():
            with _writing(target, "remove it"):
                target.unlink()
            log.warning("%s: removed: left by an earlier export, and %s has no %s data", target, path, key)
    return written


def export_npy(path: str | Path, out_dir: str | Path, *, dtype: str | np.dtype = np.float64,
               wavelength_order: str | None = "detector", fill_value: float | None = None,
               observations: Sequence[int] | None = None) -> dict[str, Path]:
    """Write the notebook's ``data_<split>.npy`` and ``data_<split>_FGS.npy`` (see the module doc)."""
    out_dir = _make_dir(out_dir)
    with open_output(path) as f:
        split = _text(f.attrs.get("split", "train")) or "train"
        chosen = lcmod.done_observations(f, observations)
        targets = {AIRS: out_dir / f"data_{split}.npy", FGS1: out_dir / f"data_{split}_FGS.npy",
                   "index": out_dir / f"data_{split}_index.csv"}
        done = [inst for inst in (AIRS, FGS1) if f"{inst}/signal" in f]
        orders = {AIRS: x_order(f[f"{AIRS}/wavelength"][()], wavelength_order) if AIRS in done else None, FGS1: None}
        nans = 0
        try:
            for inst in done:
                nans += _write_npy(f[f"{inst}/signal"], chosen, _partial(targets[inst]), targets[inst],
                                   dtype=np.dtype(dtype), order=orders[inst], fill_value=fill_value)
            _write_index(f, chosen, _partial(targets["index"]), targets["index"])
            written = _commit(targets, [*done, "index"], path)
        except BaseException:
            for target in targets.values():
                _discard(_partial(target))
            raise
    log.info("%s: %d observation(s) exported to %s", path, len(chosen), ", ".join(str(p) for p in written.values()))
    if nans:
        log.warning("%s: %d NaN value(s) (bad pixels) written; --fill-value 0 (fill_value=0) replaces them",
                    out_dir, nans)
    return written


# ---------------------------------------------------------------- fits
def fits_header_cards(attrs: dict[str, str], planet_id: int, visit: int) -> list[tuple[str, Any, str]]:
    """The provenance keywords of the primary header."""
    return [
        ("ORIGIN", "arielstream", "calibrated Ariel Data Challenge 2025 data"),
        ("ASVER", attrs.get("arielstream_version", ""), "arielstream version (and source digest)"),
        ("PROFILE", attrs.get("profile", ""), "calibration profile"),
        ("PLANETID", int(planet_id), "planet_id"),
        ("VISIT", int(visit), "visit of the planet"),
        ("SPLIT", attrs.get("split", ""), "train or test"),
        ("WLORDER", attrs.get("wavelength_order", ""), "AIRS x order: target or detector"),
        ("SOURCE", attrs.get("source", ""), "raw data folder"),
        ("BUNIT", "electron", "per time bin, flat-fielded"),
        ("CONFIG", attrs.get("config", "{}"), "calibration config (JSON)"),
    ]


def _set(header: Any, key: str, value: Any, comment: str) -> None:
    """A header card; long strings continue on CONTINUE cards and carry no comment (it would be cut)."""
    long = isinstance(value, str) and len(value) + len(comment) > 60
    header[key] = value if long else (value, comment)


def export_fits(path: str | Path, out_dir: str | Path, *, observations: Sequence[int] | None = None,
                overwrite: bool = True) -> list[Path]:
    """One FITS file per done observation (layout in the module doc)."""
    from astropy.io import fits

    out_dir = _make_dir(out_dir)
    written: list[Path] = []
    with open_output(path) as f:
        attrs = {k: _text(v) for k, v in f.attrs.items()}
        instruments = [i for i in (AIRS, FGS1) if f"{i}/signal" in f]
        for index in lcmod.done_observations(f, observations):
            planet_id, visit = int(f["planet_id"][index]), int(f["visit"][index])
            primary = fits.PrimaryHDU()
            for key, value, comment in fits_header_cards(attrs, planet_id, visit):
                _set(primary.header, key, value, comment)
            provenance = _text(f["provenance"][index]).rstrip("\x00") if "provenance" in f else ""
            table = fits.BinTableHDU.from_columns([
                fits.Column(name=name, format=f"{max(1, len(value.encode()))}A", array=np.array([value.encode()]))
                for name, value in (("CONFIG", attrs.get("config", "{}")), ("RECIPE", attrs.get("recipe", "")),
                                    ("PROVENANCE", provenance))
            ], name="CONFIG")
            hdus: list[Any] = [primary, table]
            for inst in instruments:
                g = f[inst]
                image = fits.ImageHDU(g["signal"][index], name=inst)
                image.header["BUNIT"] = ("electron", "per time bin, flat-fielded")
                image.header["AXES"] = ("time,x,y", "numpy order: NAXIS1=y NAXIS2=x NAXIS3=time")
                image.header["PLANETID"], image.header["VISIT"] = planet_id, visit
                dq = fits.ImageHDU(g["dq"][index], name=f"{inst}_DQ")
                _set(dq.header, "BITS", attrs.get("dq_bits", ""), "data-quality bit values")
                hdus += [image, dq]
                if "read_noise" in g:
                    rn = fits.ImageHDU(g["read_noise"][index], name=f"{inst}_READNOISE")
                    rn.header["BUNIT"] = ("electron", "per read")
                    hdus.append(rn)
                hdus.append(fits.BinTableHDU.from_columns(
                    [fits.Column(name="TIME", format="D", unit="h", array=g["time"][()])], name=f"{inst}_TIME"))
                labels = np.array([_text(s).encode() or b"-" for s in g["wavelength_label"][()]])
                column = g["column"][()]  # float (a mean) when the output is spatially binned
                hdus.append(fits.BinTableHDU.from_columns([
                    fits.Column(name="COLUMN", format="I" if column.dtype.kind in "iu" else "E", array=column),
                    fits.Column(name="WAVELENGTH", format="D", unit="um", array=g["wavelength"][()]),
                    fits.Column(name="LABEL", format="8A", array=labels),
                ], name=f"{inst}_AXIS"))
            target = out_dir / f"{planet_id}_visit{visit}.fits"
            if target.exists() and not overwrite:
                raise OutputError(f"{target}: exists")
            _write_fits(fits.HDUList(hdus), target)
            written.append(target)
    log.info("%s: %d FITS file(s) written to %s", path, len(written), out_dir)
    return written


def _write_fits(hdul: Any, target: Path) -> None:
    partial = _partial(target)
    try:
        with _writing(target):
            hdul.writeto(partial, overwrite=True, output_verify="exception")
            partial.replace(target)
    except BaseException:
        _discard(partial)
        raise


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
        add(AIRS, lc.wavelength_label, lc.wavelength, lc.airs_time, lc.airs_flux, lc.airs_flux_err)
        add(f"{AIRS}-white", ["white"], np.array([np.nan]), lc.airs_time, lc.airs_white[:, None],
            lc.airs_white_err[:, None])
    if lc.fgs1_flux is not None:
        add(FGS1, ["wl_1"], np.array([lcmod.FGS1_WAVELENGTH_UM]), lc.fgs1_time, lc.fgs1_flux[:, None],
            lc.fgs1_flux_err[:, None])
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    n = len(out.get("time", ()))
    out["planet_id"] = np.full(n, lc.planet_id, dtype=np.int64)
    out["visit"] = np.full(n, lc.visit, dtype=np.int16)
    return {k: out[k] for k in TABLE_COLUMNS}


def _from_lightcurve_file(f: h5py.File, k: int) -> lcmod.LightCurves:
    lc = lcmod.LightCurves(index=int(f["source_index"][k]), planet_id=int(f["planet_id"][k]),
                           visit=int(f["visit"][k]))
    if AIRS in f:
        g = f[AIRS]
        lc.airs_time, lc.wavelength = g["time"][()], g["wavelength"][()]
        lc.wavelength_label = [_text(s) for s in g["wavelength_label"][()]]
        lc.airs_flux, lc.airs_flux_err = g["flux"][k], g["flux_err"][k]
        lc.airs_white, lc.airs_white_err = g["white_flux"][k], g["white_flux_err"][k]
    if FGS1 in f:
        g = f[FGS1]
        lc.fgs1_time, lc.fgs1_flux, lc.fgs1_flux_err = g["time"][()], g["flux"][k], g["flux_err"][k]
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
        if lcmod.is_lightcurve_file(f):
            if extract_options:
                log.warning("%s is a light-curve file: extraction options %s ignored", path, sorted(extract_options))
            for k in lightcurve_rows(f, path, observations):
                yield _from_lightcurve_file(f, k)
            return
        lcmod.check_source(f, path)
        for index in lcmod.done_observations(f, observations):
            yield lcmod.observation_light_curves(f, index, **extract_options)


def _table_writer(partial: Path, target: Path, fmt: str, schema: Any) -> Any:
    with _writing(target, "create"):
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

    out_dir = _make_dir(out_dir)
    target = out_dir / f"lightcurves.{fmt}"
    schema = pa.schema([("planet_id", pa.int64()), ("visit", pa.int16()), ("instrument", pa.string()),
                        ("wavelength_label", pa.string()), ("wavelength", pa.float64()), ("time", pa.float64()),
                        ("flux", pa.float64()), ("flux_err", pa.float64()), ("normalised_flux", pa.float64()),
                        ("normalised_flux_err", pa.float64())])
    partial = _partial(target)
    writer, n = _table_writer(partial, target, fmt, schema), 0
    try:
        for lc in iter_light_curves(path, observations=observations, **extract_options):
            columns = _rows_of(lc)
            table = pa.table({k: pa.array(v, type=schema.field(k).type) for k, v in columns.items()}, schema=schema)
            with _writing(target):
                writer.write_table(table)
            n += 1
        with _writing(target):
            writer.close()
            partial.replace(target)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()  # again is harmless
        _discard(partial)
        raise
    log.info("%s: light curves of %d observation(s) written to %s", path, n, target)
    return target


# ---------------------------------------------------------------- one entry point
def export(path: str | Path, out_dir: str | Path, fmt: str, **options: Any) -> list[Path]:
    """Export ``path`` as ``fmt`` (npy, fits, csv, parquet) into ``out_dir``; the files written."""
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
