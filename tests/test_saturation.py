"""Saturated reads (flagged, their bins out of the cube) and calibration values outside physical bounds."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arielstream import build_config, calibrate
from arielstream.calibration import compiled, engine, kernels, steps
from arielstream.config.options import CalibrationConfig
from arielstream.dq import (
    DARK_INVALID,
    DO_NOT_USE,
    FLAT_INVALID,
    NONLINEARITY_INVALID,
    READ_NOISE_INVALID,
    SATURATED,
    TIME_SATURATED,
)
from arielstream.errors import ConfigError
from arielstream.layout import AIRS
from tests.conftest import REFERENCE_PLANET

# ----------------------------------------------------------------- the kernels


def _block(rng, pixels=23, bins=7, fpb=8):
    raw = rng.integers(0, 60000, size=(pixels, bins * fpb)).astype(np.uint16)
    raw[3, 5] = raw[3, 6] = 65535  # two saturated reads in bin 0 of pixel 3
    raw[10, fpb * 4 + 1] = 65535  # one in bin 4 of pixel 10
    raw[-1, -1] = 65535  # the last read of the block
    return raw


def test_saturated_reads_are_counted_per_pixel_and_bin():
    raw = _block(np.random.default_rng(1))
    counts = steps.saturated_reads(raw, 65535, 8)
    assert counts.shape == (23, 7)
    expected = np.zeros((23, 7), np.int64)
    expected[3, 0], expected[10, 4], expected[22, 6] = 2, 1, 1
    np.testing.assert_array_equal(counts, expected)
    assert steps.saturated_reads(raw, 60000, 8).sum() == 4  # a lower level counts reads at or above it


@pytest.mark.parametrize("name", ["numexpr", "numba"])
def test_the_engines_count_saturation_as_the_reference(name, monkeypatch):
    if name == "numba" and compiled.numba is None:
        pytest.skip("numba not installed")
    monkeypatch.setenv(engine.ENV, name)
    engine.current.cache_clear()
    try:
        assert engine.current().name == name
        raw = _block(np.random.default_rng(2))
        for level, fpb in ((65535, 8), (50000, 8), (65535, 2), (40000, 1)):
            np.testing.assert_array_equal(kernels.saturation_counts(raw, level, fpb),
                                          steps.saturated_reads(raw, level, fpb), err_msg=f"{level} {fpb}")
        clean = np.minimum(raw, 65534)
        assert kernels.saturation_counts(clean, 65535, 8) is None  # the usual path: one max, nothing else
        assert kernels.saturation_counts(raw, 0, 8) is None  # level 0: no check
    finally:
        engine.current.cache_clear()


@pytest.mark.skipif(compiled.numba is None, reason="numba not installed")
def test_the_compiled_kernel_equals_the_reference():
    raw = _block(np.random.default_rng(3), pixels=31, bins=5, fpb=60)
    np.testing.assert_array_equal(compiled.saturated_bins(raw, 65535, 60), steps.saturated_reads(raw, 65535, 60))


@pytest.mark.parametrize("bad", [-1, 65536, 1.5, True, "65535"])
def test_saturation_level_is_a_raw_count(bad):
    with pytest.raises(ConfigError, match="saturation_level"):
        build_config(saturation_level=bad)
    assert CalibrationConfig().saturation_level == 65535
    assert build_config(profile="notebook").saturation_level == 65535


# ----------------------------------------------------------------- calibration bounds


def test_absurd_finite_calibrations_are_flagged_like_nan_ones():
    shape = (2, 6)
    dark, flat, read = np.full(shape, 0.01), np.ones(shape), np.full(shape, 13.0)
    coeffs = np.zeros((6, *shape))
    coeffs[1] = 1.0
    dark[0, 0], dark[0, 1], dark[0, 2] = np.nan, -5.0, 1e6  # NaN, negative, huge
    flat[1, 0], flat[1, 1], flat[1, 2] = np.nan, 1e-30, 1e30
    coeffs[2, 1, 3], coeffs[0, 1, 4] = 1e30, np.inf
    read[0, 5], read[1, 5] = -1.0, 0.0
    dq = steps.pixel_quality(dark, np.zeros(shape, bool), flat, coeffs, read=read)
    assert ((dq[0, :3] & DARK_INVALID) != 0).all() and not (dq[1] & DARK_INVALID).any()
    assert ((dq[1, :3] & FLAT_INVALID) != 0).all() and not (dq[0] & FLAT_INVALID).any()
    np.testing.assert_array_equal((dq & NONLINEARITY_INVALID) != 0, [[0] * 6, [0, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal((dq & READ_NOISE_INVALID) != 0, [[0] * 5 + [1], [0] * 5 + [1]])
    assert not (READ_NOISE_INVALID & DO_NOT_USE)  # the typical read noise replaces it; the signal is fine
    assert not (SATURATED & DO_NOT_USE)  # only the saturated bins leave the cube, not the pixel


@pytest.mark.parametrize("inst", ["AIRS-CH0", "FGS1"])
def test_the_bounds_flag_nothing_new_in_the_real_calibration_files(inst):
    folder = REFERENCE_PLANET / f"{inst}_calibration_0"

    def read(name):
        return pq.read_table(folder / f"{name}.parquet").to_pandas().to_numpy().astype(np.float64)

    flat, dark, noise = read("flat"), read("dark"), read("read")
    coeffs = read("linear_corr").reshape(6, *flat.shape)
    assert not steps.invalid_dark(dark).any()
    assert not steps.invalid_read_noise(noise).any()
    assert not steps.invalid_nonlinearity(coeffs).any()
    np.testing.assert_array_equal(steps.invalid_flat(flat), ~(flat > 0))  # only the non-positive, as before


def test_the_pipeline_flags_absurd_values_of_a_visits_files(tmp_path):
    from arielstream.io.dataset import read_dataset_info
    from arielstream.layout import Observation
    from arielstream.run.observation import instrument_layout, prepare_arrays
    from tests.conftest import REFERENCE

    root = tmp_path / "data"
    shutil.copytree(REFERENCE, root)
    folder = root / "train" / REFERENCE_PLANET.name / f"{AIRS.name}_calibration_0"
    changes = {"read": (5, 50, -13.0), "dark": (6, 60, 1e6), "flat": (7, 70, 1e-30)}  # row, column, value
    for name, (row, col, value) in changes.items():
        table = pq.read_table(folder / f"{name}.parquet")
        values = table.column(col).to_numpy().copy()
        values[row] = value
        pq.write_table(table.set_column(col, table.schema.field(col), pa.array(values, table.column(col).type)),
                       folder / f"{name}.parquet")
    info = read_dataset_info(root)
    config = build_config(wavelength_cut=False, wavelength_order="detector", instruments=(AIRS.name,))
    obs = Observation(int(REFERENCE_PLANET.name), 0, root / "train" / REFERENCE_PLANET.name)
    arrays = prepare_arrays(obs, AIRS, info, config, instrument_layout(AIRS, info, config))
    plane = arrays.dq_plane  # (x = detector column, y = row)
    assert plane[50, 5] & READ_NOISE_INVALID and not plane[50, 5] & DO_NOT_USE
    assert np.isnan(arrays.read_plane[50, 5]) and np.isfinite(arrays.read_plane[51, 5])  # typical value downstream
    assert plane[60, 6] & DARK_INVALID and plane[70, 7] & FLAT_INVALID
    assert ((plane & READ_NOISE_INVALID) != 0).sum() == 1
    assert ((plane & DARK_INVALID) != 0).sum() == 1


# ----------------------------------------------------------------- a calibrated visit


@pytest.fixture(scope="module")
def saturated_dataset(tmp_path_factory):
    """A small simulated planet, and a copy whose AIRS signal has saturated reads in a few known bins."""
    from arielstream.simulate.dataset import simulate_dataset

    clean = tmp_path_factory.mktemp("sat_clean")
    simulate_dataset(clean, n_planets=1, scale=0.05, seed=5)
    dirty = tmp_path_factory.mktemp("sat_dirty") / "data"
    shutil.copytree(clean, dirty)
    (signal,) = dirty.glob(f"train/*/{AIRS.name}_signal_0.parquet")
    table = pq.read_table(signal)
    fpb = 2 * build_config().airs_bin
    pixel = 16 * AIRS.columns + 100  # row 16, detector column 100 (output x 61 in detector order)
    values = table.column(pixel).to_numpy().copy()
    values[fpb * 2 + 7] = 65535  # one read of bin 2
    values[fpb * 3: fpb * 3 + 3] = 65535  # three reads of bin 3
    meta = pq.ParquetFile(signal).metadata
    row_group = meta.row_group(0).num_rows
    table = table.set_column(pixel, table.schema.field(pixel), pa.array(values, type=pa.uint16()))
    pq.write_table(table, signal, row_group_size=row_group)
    return clean, dirty, (100 - 39, 16), (2, 3)


def _calibrated(root, out, **options):
    calibrate(root, out, config=build_config(wavelength_order="detector", **options), jobs=1, progress=False,
              log_file=False)
    with h5py.File(out) as f:
        return (f["AIRS-CH0/signal"][0], f["AIRS-CH0/dq"][0],
                f["AIRS-CH0/dq_time"][0] if "AIRS-CH0/dq_time" in f else None,
                json.loads(f["provenance"][0].decode())["AIRS-CH0"])


@pytest.mark.slow
def test_saturated_bins_are_nan_and_flagged(saturated_dataset, tmp_path):
    clean, dirty, (x, y), sat_bins = saturated_dataset
    ref, ref_dq, _, ref_prov = _calibrated(clean, tmp_path / "clean.h5")
    out, dq, dq_time, prov = _calibrated(dirty, tmp_path / "dirty.h5", spatial_outliers=True)
    assert ref_prov["saturation"] == {"level": 65535, "reads": 0, "bins": 0, "pixels": 0}
    assert prov["saturation"] == {"level": 65535, "reads": 4, "bins": 2, "pixels": 1}
    assert np.isnan(out[list(sat_bins), x, y]).all()
    others = np.ones(out.shape[0], bool)
    others[list(sat_bins)] = False
    np.testing.assert_array_equal(out[others, x, y], ref[others, x, y])  # the pixel's other bins untouched
    assert dq[x, y] & SATURATED and not ref_dq[x, y] & SATURATED
    assert ((dq & SATURATED) != 0).sum() == 1
    assert ((dq_time & TIME_SATURATED) != 0).sum() == 2
    assert (dq_time[list(sat_bins), x, y] & TIME_SATURATED).all()
    # bad_pixels = "keep" (the notebook profile's): flagged, values kept
    kept, kept_dq, _, kept_prov = _calibrated(dirty, tmp_path / "keep.h5", bad_pixels="keep")
    assert np.isfinite(kept[list(sat_bins), x, y]).all() and kept_dq[x, y] & SATURATED
    assert kept_prov["saturation"]["bins"] == 2
    # saturation_level = 0: no check, no provenance entry
    off, off_dq, _, off_prov = _calibrated(dirty, tmp_path / "off.h5", saturation_level=0)
    assert np.isfinite(off[list(sat_bins), x, y]).all() and not (off_dq & SATURATED).any()
    assert "saturation" not in off_prov


def test_the_command_line_sets_the_saturation_level(capsys):
    import argparse

    from arielstream.cli.calibrate import add_calibrate, config_from_args

    parser = argparse.ArgumentParser()
    add_calibrate(parser.add_subparsers(), [])
    args = parser.parse_args(["calibrate", "data", "-o", "o.h5", "--saturation-level", "60000"])
    assert config_from_args(args).saturation_level == 60000
    assert config_from_args(parser.parse_args(["calibrate", "data", "-o", "o.h5"])).saturation_level == 65535
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", "data", "-o", "o.h5", "--saturation-level", "70000"])
    assert "--saturation-level" in capsys.readouterr().err
