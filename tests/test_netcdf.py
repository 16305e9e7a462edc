"""The output file reads as netCDF-4: named dimensions, coordinate variables and CF attributes.

xarray (``engine="h5netcdf"`` or ``"netcdf4"``) and ``ncdump`` see the dimension scales
``io/store.py`` attaches; the data stay contiguous, so the memmap readers still work.
"""

from __future__ import annotations

import shutil
import subprocess

import h5py
import numpy as np
import pytest

import arielstream
from arielstream import dq
from arielstream.io import schema, store

from .conftest import DATA_SAMPLES

ENGINES = {"h5netcdf": "h5netcdf", "netcdf4": "netCDF4"}  # xarray engine -> the package it needs


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("netcdf") / "samples.h5"
    summary = arielstream.calibrate(DATA_SAMPLES, out, planets=[73079497], jobs=1, progress=False,
                                    log_file=False)
    assert summary.ok
    return out


@pytest.mark.parametrize("engine", list(ENGINES))
def test_xarray_sees_named_dimensions_and_coordinates(calibrated, engine):
    xr = pytest.importorskip("xarray")
    pytest.importorskip(ENGINES[engine], reason=f"xarray's {engine} engine needs {ENGINES[engine]}")
    with xr.open_dataset(calibrated, engine=engine) as root:
        assert set(root.sizes) == {"obs"}
        assert {"obs", "planet_id", "visit"} <= set(root.coords)
        assert root.status.dims == ("obs",)
        assert root.status.attrs["flag_meanings"] == "pending done failed running"
    with xr.open_dataset(calibrated, engine=engine, group="AIRS-CH0") as airs, h5py.File(calibrated) as f:
        assert airs.signal.dims == ("obs", "time", "wavelength", "row")
        assert airs.dq.dims == ("obs", "wavelength", "row")
        assert airs.time.attrs["units"] == "hours" and "reference" in airs.time.attrs
        assert airs.wavelength.attrs["units"] == "um"
        assert {"column", "wavelength_label"} <= set(airs.coords)
        np.testing.assert_array_equal(airs.wavelength.values, f["AIRS-CH0/wavelength"][()])
        np.testing.assert_array_equal(airs.signal.isel(obs=0).values, f["AIRS-CH0/signal"][0])
    with xr.open_dataset(calibrated, engine=engine, group="FGS1") as fgs1:
        assert fgs1.signal.dims == ("obs", "time", "column", "row")
        # a photometer: no wavelength axis, no per-column labels; its band's wavelength is a scalar coordinate
        assert "wavelength" not in fgs1.sizes and "wavelength_label" not in fgs1.variables
        assert fgs1.wavelength.dims == () and float(fgs1.wavelength) == 0.7
        assert fgs1.wavelength.attrs["units"] == "um" and "wavelength" in fgs1.signal.coords


def test_dq_planes_carry_cf_flags(calibrated):
    with h5py.File(calibrated) as f:
        for inst in store.instruments_in(f):
            plane = f[schema.dataset(inst, schema.DQ)]
            assert plane.attrs["flag_masks"].tolist() == list(dq.BITS.values())
            assert plane.attrs["flag_meanings"].split() == list(dq.BITS)
            assert plane.attrs["long_name"]


def test_ncdump_lists_the_dimensions(calibrated):
    if shutil.which("ncdump") is None:
        pytest.skip("ncdump is not installed (Debian: apt-get install netcdf-bin)")
    header = subprocess.run(["ncdump", "-h", str(calibrated)], capture_output=True, text=True, check=True).stdout
    assert "obs = 1 ;" in header
    assert "float signal(obs, time, wavelength, row) ;" in header
    assert "float signal(obs, time, column, row) ;" in header
    assert 'wavelength:units = "um"' in header


def test_the_file_stays_contiguous_and_memory_mappable(calibrated):
    descriptors = store.read_descriptors(calibrated)
    with h5py.File(calibrated) as f:
        for key in descriptors:
            assert f[key].chunks is None and f[key].compression is None, key
        np.testing.assert_array_equal(descriptors["AIRS-CH0/signal"].open(0, mode="r"), f["AIRS-CH0/signal"][0])
        assert store.checksum(descriptors, 0) == f[schema.CHECKSUM][0].decode()


def test_to_xarray_keeps_working_after_the_results_are_closed(calibrated):
    pytest.importorskip("xarray")
    pytest.importorskip("dask.array")
    with arielstream.open(calibrated) as res:
        ds = res.to_xarray()
    with h5py.File(calibrated) as f:
        np.testing.assert_array_equal(ds.airs.isel(obs=0).values, f["AIRS-CH0/signal"][0])
        np.testing.assert_array_equal(ds.fgs1_dq.values, f["FGS1/dq"][()])
