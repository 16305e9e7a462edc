"""Every product reads as netCDF-4/CF like the calibrated file (issue 22 item 4).

The light-curve file (``extract``) and the per-visit fits (``spectrum``) have named dimensions
(no ``phony_dim``) in xarray with either engine, every ``units`` attribute of the three files is a
UDUNITS-2 string (``cf_units``), their ``source`` is no absolute local path, ``info`` describes
them, and the FITS export's time axis says what it is relative to.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

import arielstream
from arielstream.cli import app as cli
from arielstream.products import exports

from .conftest import DATA_SAMPLES

ENGINES = {"h5netcdf": "h5netcdf", "netcdf4": "netCDF4"}  # xarray engine -> the package it needs


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> dict[str, Path]:
    """The samples (one planet) calibrated, then ``extract`` and ``spectrum`` on them."""
    folder = tmp_path_factory.mktemp("product_formats")
    out = folder / "samples.h5"
    summary = arielstream.calibrate(DATA_SAMPLES, out, planets=[73079497], jobs=1, progress=False, log_file=False)
    assert summary.ok
    lightcurves = folder / "samples.lightcurves.h5"
    assert cli.main(["-q", "extract", str(out), "-o", str(lightcurves)]) == cli.EXIT_OK
    submission = folder / "samples.submission.csv"
    # --obs 0: the file holds one planet of the two, and spectrum refuses a submission without every planet
    assert cli.main(["-q", "spectrum", str(out), "-o", str(submission), "--obs", "0"]) == cli.EXIT_OK
    return {"calibrated": out, "lightcurves": lightcurves, "fits": folder / "samples.submission.fits.h5"}


def _groups(path: Path) -> list[str | None]:
    with h5py.File(path, "r") as f:
        return [None, *(name for name, obj in f.items() if isinstance(obj, h5py.Group))]


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("product", ["lightcurves", "fits"])
def test_products_open_in_xarray_with_named_dimensions(products, product, engine):
    xr = pytest.importorskip("xarray")
    pytest.importorskip(ENGINES[engine], reason=f"xarray's {engine} engine needs {ENGINES[engine]}")
    path = products[product]
    for group in _groups(path):
        with xr.open_dataset(path, engine=engine, group=group) as ds:
            assert not [d for d in ds.sizes if "phony_dim" in str(d)], (group, dict(ds.sizes))
            for name, var in ds.variables.items():
                if var.ndim and name not in ds.dims:
                    assert var.attrs.get("long_name"), (group, name)


def test_light_curves_dimensions_and_coordinates(products):
    xr = pytest.importorskip("xarray")
    with xr.open_dataset(products["lightcurves"], engine="h5netcdf") as root:
        assert root.planet_id.dims == ("obs",) and root.sizes["obs"] == 1
    with xr.open_dataset(products["lightcurves"], engine="h5netcdf", group="AIRS-CH0") as airs:
        assert airs.flux.dims == ("obs", "time", "wavelength")
        assert {"time", "wavelength", "wavelength_label", "column"} <= set(airs.coords)
        assert airs.flux.attrs["units"] == "count" and "electrons" in airs.flux.attrs["long_name"]
        assert np.all(np.diff(airs.wavelength.values) > 0) and airs.wavelength.attrs["units"] == "um"
        assert airs.aperture_rows.dims == ("obs", "edge")
    with xr.open_dataset(products["lightcurves"], engine="h5netcdf", group="FGS1") as fgs1:
        assert fgs1.flux.dims == ("obs", "time") and fgs1.centroid.dims == ("obs", "time", "xy")
        assert "wavelength" not in fgs1.dims and fgs1.wavelength.ndim == 0  # a photometer: no wavelength axis
        assert np.isnan(fgs1.flux.encoding.get("_FillValue", np.nan))


def test_fits_dimensions(products):
    xr = pytest.importorskip("xarray")
    with xr.open_dataset(products["fits"], engine="h5netcdf") as ds:
        assert ds.depth.dims == ("fit", "target") and ds.sizes["target"] == 283
        assert ds.baseline.dims == ("fit", "target", "coefficient")
        assert "wavelength" not in ds.dims and ds.target.values[0] == 1
    with xr.open_dataset(products["fits"], engine="h5netcdf", group="timing") as timing:
        assert timing.t0.dims == ("fit",) and timing.t0.attrs["units"] == "hours"


def _units(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}

    def visit(name: str, obj) -> None:
        if "units" in obj.attrs:
            value = obj.attrs["units"]
            found[name] = value.decode() if isinstance(value, bytes) else str(value)

    with h5py.File(path, "r") as f:
        if "units" in f.attrs:
            found["/"] = str(f.attrs["units"])
        f.visititems(visit)
    return found


def test_every_units_attribute_is_udunits(products):
    cf_units = pytest.importorskip("cf_units")
    for product, path in products.items():
        units = _units(path)
        assert units, product
        for name, value in units.items():
            try:
                cf_units.Unit(value)
            except ValueError as exc:
                pytest.fail(f"{product} {name}: units {value!r} is not UDUNITS-2: {exc}")


def test_products_record_no_absolute_source(products):
    for product in ("lightcurves", "fits"):
        with h5py.File(products[product], "r") as f:
            source = str(f.attrs["source"])
        assert not Path(source).is_absolute() and (products[product].parent / source).resolve() == \
            products["calibrated"].resolve(), source


@pytest.mark.parametrize("product, kind", [("calibrated", "calibrated"), ("lightcurves", "light curves"),
                                           ("fits", "per-visit fits")])
def test_info_describes_every_product(products, product, kind, capsys):
    assert cli.main(["info", str(products[product])]) == cli.EXIT_OK
    text = capsys.readouterr().out
    assert kind in text
    assert cli.main(["info", "--json", str(products[product])]) == cli.EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert kind in info["kind"] and info["datasets"]


def test_fits_export_time_axis_converts_without_warnings(products, tmp_path):
    from astropy.io import fits
    from astropy.time import Time
    from astropy.wcs import WCS

    paths = exports.export_fits(products["calibrated"], tmp_path, observations=[0])
    with fits.open(paths[0]) as hdul, warnings.catch_warnings():
        warnings.simplefilter("error")
        header = hdul["AIRS-CH0"].header
        # seconds from the start of the observation: a LOCAL (relative) time scale, its reference MJDREF = 0
        assert header["TIMEUNIT"] == "s" and header["CUNIT3"] == "s"
        assert header["TIMESYS"] == "LOCAL" and header["MJDREFI"] == 0 and header["MJDREFF"] == 0.0
        wcs = WCS(header, fobj=hdul)
        assert wcs.wcs.timesys == "LOCAL" and list(wcs.wcs.mjdref) == [0.0, 0.0]
        world = wcs.pixel_to_world(0, 0, 1)  # the time axis converts to an astropy Time, without a warning
        times = [w for w in world if type(w).__name__ == "Time"]
        assert len(times) == 1 and times[0].scale == "local"
        _, _, seconds = wcs.pixel_to_world_values(0, 0, 1)
        start = Time(0.0, format="mjd", scale="local")  # MJDREF = 0: the observation's start
        with h5py.File(products["calibrated"], "r") as f:
            hours = f["AIRS-CH0/time"][1]
        np.testing.assert_allclose(seconds / 3600, hours, rtol=1e-9)
        np.testing.assert_allclose((times[0] - start).to_value("h"), hours, rtol=1e-6)  # the Time is right too
