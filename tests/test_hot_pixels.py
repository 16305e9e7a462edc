"""The hot-pixel rules: the physical one (default profile) and the notebook's sigma clip (notebook profile)."""

from __future__ import annotations

import numpy as np
import pytest

from arielstream.calibration import steps
from arielstream.config.options import build_config
from arielstream.dq import HOT
from arielstream.io.calibration import read_frame_table
from arielstream.io.dataset import read_dataset_info
from arielstream.layout import AIRS, FGS1, Observation
from arielstream.run.observation import instrument_layout, prepare_arrays
from arielstream.simulate import dataset as sim

from .conftest import REFERENCE, REFERENCE_PLANET


def test_physical_rule_compares_the_dark_charge_of_an_exposure_with_the_read_noise():
    # k = 0.1, read noise 13 e, exposure 4.5 s: hot above 1.3 e, i.e. |dark| > 0.2889 e/s
    dark = np.array([0.28, 0.29, -0.29, 12.0, 12.0, np.nan])
    read = np.array([13.0, 13.0, 13.0, 13.0, np.nan, 13.0])
    assert steps.hot_pixels_physical(dark, read, 4.5).tolist() == [False, True, True, True, False, False]
    assert steps.hot_pixels_physical(dark, read, 4.5, k=1.0).tolist() == [False, False, False, True, False, False]
    with pytest.raises(ValueError, match="positive"):
        steps.hot_pixels_physical(dark, read, 0.0)


def test_exposure_is_the_cds_interval_of_the_real_axes():
    info = read_dataset_info(REFERENCE)
    airs = steps.frame_dt(AIRS.name, info.n_frames(AIRS), info.airs_integration_time)
    assert steps.exposure_time(airs) == pytest.approx(4.5)  # 4.6 s end read - 0.1 s start read
    assert steps.exposure_time(steps.frame_dt(FGS1.name, info.n_frames(FGS1))) == pytest.approx(0.1)


def _hot_bits(root, profile: str, inst) -> np.ndarray:
    """The HOT bits that the pipeline puts in the quality plane of visit 0, ``(rows, columns)``."""
    info = read_dataset_info(root)
    planet = next(p for p in (root / "train").iterdir() if p.is_dir())
    obs = Observation(int(planet.name), 0, planet)
    config = build_config(profile=profile, wavelength_cut=False, instruments=(inst.name,))
    arrays = prepare_arrays(obs, inst, info, config, instrument_layout(inst, info, config))
    plane = np.zeros((inst.rows, inst.columns), dtype=np.uint16)
    plane[arrays.sel.pixels // inst.columns, arrays.sel.pixels % inst.columns] = arrays.dq
    return (plane & HOT) != 0


def _reference(inst, name: str) -> np.ndarray:
    return read_frame_table(REFERENCE_PLANET / f"{inst.name}_calibration_0" / f"{name}.parquet",
                            inst.rows, inst.columns, "bool" if name == "dead" else "float")


def test_real_airs_calibration_which_pixels_flip():
    sigma, physical = _hot_bits(REFERENCE, "notebook", AIRS), _hot_bits(REFERENCE, "default", AIRS)
    dark, read = _reference(AIRS, "dark"), _reference(AIRS, "read")
    np.testing.assert_array_equal(sigma, steps.sigma_clip_mask(dark) & np.isfinite(dark))  # the notebook's rule
    assert sigma.sum() == 82 and physical.sum() == 14
    assert not (physical & ~sigma).any()  # the physical rule only unflags
    # (row 28, col 166): 11.9 e/s x 4.5 s = 53.6 e, 3.9 x its 13.9 e read noise: hot under both rules
    assert dark[28, 166] == pytest.approx(11.917, abs=1e-3) and sigma[28, 166] and physical[28, 166]
    # (row 15, col 44) 9.4 e/s is hot; its neighbours (row 15, cols 43 and 45) at 0.07 e/s hold 0.3 e per
    # exposure against 13 e of read noise: flagged by the sigma clip, not by the physical rule
    assert physical[15, 44]
    for r, c in ((15, 43), (15, 45), (14, 44)):
        assert dark[r, c] * 4.5 < 0.1 * read[r, c] and sigma[r, c] and not physical[r, c]
    # every pixel the physical rule drops holds under 0.1 read noise of dark charge per exposure
    dropped = sigma & ~physical
    assert dropped.sum() == 68 and np.all(np.abs(dark[dropped]) * 4.5 <= 0.1 * read[dropped])


def test_real_fgs1_has_no_hot_pixel_at_its_exposure():
    # FGS1 exposes 0.1 s: its hottest pixel (1.35 e/s) holds 0.14 e per exposure against ~13 e of read noise
    sigma, physical = _hot_bits(REFERENCE, "notebook", FGS1), _hot_bits(REFERENCE, "default", FGS1)
    assert sigma.sum() == 11 and physical.sum() == 0
    assert _reference(FGS1, "dark").max() * 0.1 < 0.1 * _reference(FGS1, "read").min()


def test_simulated_hot_pixels_are_found_and_no_ordinary_pixel_is_flagged(small_dataset):
    physical, sigma = _hot_bits(small_dataset, "default", AIRS), _hot_bits(small_dataset, "notebook", AIRS)
    planet = next(p for p in (small_dataset / "train").iterdir() if p.is_dir())
    cal = planet / f"{AIRS.name}_calibration_0"
    dark = read_frame_table(cal / "dark.parquet", AIRS.rows, AIRS.columns, "float")
    read = read_frame_table(cal / "read.parquet", AIRS.rows, AIRS.columns, "float")
    # the simulator's dark: ordinary pixels log-normal around 0.0063 e/s (all far below 0.05), injected hot
    # pixels log-uniform over HOT_RANGE
    injected = dark >= sim.HOT_RANGE[0]
    assert injected.sum() > 20
    significant = injected & (dark * 4.5 > steps.HOT_DARK_FRACTION * read)
    np.testing.assert_array_equal(physical, significant)  # every significant injected pixel, nothing else
    assert significant.sum() >= 10
    # the trace (rows within 3 of its centre): no ordinary pixel is lost there, but the clip flags some
    columns = np.arange(AIRS.columns)
    trace = np.abs(np.arange(AIRS.rows)[:, None] - sim.trace_centre(columns)[None, :]) <= 3
    assert not (physical & trace & ~injected).any()
    assert (sigma & ~injected).sum() > 0


def test_without_read_noise_the_sigma_clip_stays_with_a_warning(caplog):
    from arielstream.run.observation import _physical_hot_pixels

    dq = np.array([HOT, 0, HOT | 1], dtype=np.uint16)
    _physical_hot_pixels(dq, np.array([0.01, 5.0, 0.01]), None, 4.5)
    assert dq.tolist() == [HOT, 0, HOT | 1] and "sigma clip" in caplog.text
    _physical_hot_pixels(dq, np.array([0.01, 5.0, 0.01]), np.full(3, 13.0), 4.5)
    assert dq.tolist() == [0, HOT, 1]  # the dead bit (1) is kept
