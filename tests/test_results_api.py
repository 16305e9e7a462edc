"""The Python API: ``arielstream.open(OUT.h5)`` reads lazily what the file holds, and nothing else."""

from __future__ import annotations

import shutil
import sys

import h5py
import numpy as np
import pytest

import arielstream
from arielstream.config.options import CalibrationConfig
from arielstream.errors import ArielstreamError, InputError
from arielstream.io.schema import STATUS_FAILED
from arielstream.products import lightcurves as lc
from arielstream.products import results

from .conftest import DATA_SAMPLES


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "samples.h5"
    arielstream.calibrate(DATA_SAMPLES, out, jobs=1, progress=False, log_file=False)
    return out


def test_open_is_exported_at_the_top_level():
    assert arielstream.open is results.open, "add `from .results import open` to arielstream/__init__.py"


def test_arrays_equal_the_file(calibrated):
    with results.open(calibrated) as res, h5py.File(calibrated) as f:
        obs = res.observations
        assert [(o.planet_id, o.visit) for o in obs] == \
            list(zip(f["planet_id"][()].tolist(), f["visit"][()].tolist(), strict=True))
        assert all(o.done for o in obs) and len(res) == len(obs) == 3
        np.testing.assert_array_equal(res.airs(1), f["AIRS-CH0/signal"][1])
        np.testing.assert_array_equal(res.fgs1(2, time=slice(1, 3)), f["FGS1/signal"][2, 1:3])
        np.testing.assert_array_equal(res.airs(-1), f["AIRS-CH0/signal"][2])
        np.testing.assert_array_equal(res.dq("AIRS-CH0", 0), f["AIRS-CH0/dq"][0])
        np.testing.assert_array_equal(res.dq("fgs1", 0), f["FGS1/dq"][0])
        np.testing.assert_array_equal(res.wavelength, f["AIRS-CH0/wavelength"][()])
        assert res.wavelength_label[0] == "wl_2" and (np.diff(res.wavelength) > 0).all()
        np.testing.assert_array_equal(res.time("FGS1"), f["FGS1/time"][()])
        assert res.config == CalibrationConfig()
        assert res.profile == "default" and res.version == f.attrs["arielstream_version"]
        assert res.provenance(0)["AIRS-CH0"]["steps"]["nonlinearity"] == "ran"
        assert res.index(obs[2].planet_id, obs[2].visit) == 2
        curves = res.light_curves(1, half_width=4)
        np.testing.assert_array_equal(curves.airs_flux, lc.observation_light_curves(f, 1, half_width=4).airs_flux)
        with pytest.raises(IndexError):
            res.airs(3)
        with pytest.raises(KeyError):
            res.index(obs[0].planet_id, 7)


def test_closed_results_refuse_to_read(calibrated):
    res = results.open(calibrated)
    with res:
        assert res.airs(0).shape[1:] == (282, 32)
    with pytest.raises(ValueError, match="closed"):
        res.airs(0)


def test_not_done_observations_and_foreign_files_are_refused(calibrated, tmp_path):
    copy = tmp_path / "failed.h5"
    shutil.copy(calibrated, copy)
    with h5py.File(copy, "r+") as f:
        f["status"][0] = STATUS_FAILED
    with results.open(copy) as res:
        assert res.observations[0].status == "failed"
        with pytest.raises(InputError, match="failed, not done"):
            res.airs(0)
        assert res.fgs1(1).shape[1:] == (32, 32)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(InputError, match="not an arielstream output"):
        results.open(other)
    with pytest.raises(InputError, match="no such file"):
        results.open(tmp_path / "missing.h5")


def test_to_xarray_is_lazy_and_labelled(calibrated):
    pytest.importorskip("xarray")
    pytest.importorskip("dask.array")
    with results.open(calibrated) as res, h5py.File(calibrated) as f:
        ds = res.to_xarray()
        assert type(ds.airs.data).__module__.startswith("dask")  # nothing read yet
        assert ds.airs.dims == ("obs", "airs_time", "wavelength", "airs_y")
        np.testing.assert_array_equal(ds.airs.isel(obs=1).values, f["AIRS-CH0/signal"][1])
        np.testing.assert_array_equal(ds.fgs1_dq.isel(obs=2).values, f["FGS1/dq"][2])
        assert list(ds.planet_id.values) == f["planet_id"][()].tolist()
        assert str(ds.wavelength_label.values[0]) == "wl_2"
        eager = res.to_xarray(lazy=False)
        np.testing.assert_array_equal(eager.fgs1.values, f["FGS1/signal"][()])


def test_to_xarray_without_xarray_says_what_to_install(calibrated, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray now raises ImportError
    with results.open(calibrated) as res:
        with pytest.raises(ArielstreamError, match="to_xarray needs xarray: pip install xarray"):
            res.to_xarray()


def test_to_xarray_without_dask_never_loads_the_whole_file_unasked(calibrated, monkeypatch):
    xr = pytest.importorskip("xarray")
    monkeypatch.setitem(sys.modules, "dask.array", None)
    monkeypatch.setitem(sys.modules, "dask", None)
    with results.open(calibrated) as res:
        with pytest.raises(ArielstreamError, match=r"lazy=False\) reads the whole file"):
            res.to_xarray()
        eager = res.to_xarray(lazy=False)  # asked for: read into memory
        assert isinstance(eager, xr.Dataset) and isinstance(eager.airs.data, np.ndarray)
