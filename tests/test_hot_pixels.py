"""The hot-pixel rules: the physical one (default profile) and the notebook's sigma clip (notebook profile).

Issue 23 item 1: a hot pixel is flagged, not discarded. ``HOT`` says its dark charge matters; its value is kept
(dark-subtracted) and the shot noise of that dark is in its variance (``dark_charge``). Only ``HOT_UNUSABLE``
(the dark's shot noise above a CDS's read noise, or any hot pixel under the notebook's rule) makes it NaN.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arielstream import calibrate
from arielstream.calibration import frame_steps, steps
from arielstream.config.options import build_config
from arielstream.dq import DO_NOT_USE, HOT, HOT_UNUSABLE
from arielstream.io.calibration import read_frame_table
from arielstream.io.dataset import read_dataset_info
from arielstream.layout import AIRS, AIRS_WAVELENGTH_AXIS, FGS1, Observation
from arielstream.products import lightcurves as lc
from arielstream.run.observation import instrument_layout, prepare_arrays
from arielstream.simulate import dataset as sim

from .conftest import REFERENCE, REFERENCE_PLANET, write_signal


def test_physical_rule_compares_the_dark_charge_of_an_exposure_with_the_read_noise():
    # k = 0.1, read noise 13 e, exposure 4.5 s: hot above 1.3 e, i.e. |dark| > 0.2889 e/s
    dark = np.array([0.28, 0.29, -0.29, 12.0, 12.0, np.nan])
    read = np.array([13.0, 13.0, 13.0, 13.0, np.nan, 13.0])
    assert steps.hot_pixels_physical(dark, read, 4.5).tolist() == [False, True, True, True, False, False]
    assert steps.hot_pixels_physical(dark, read, 4.5, k=1.0).tolist() == [False, False, False, True, False, False]
    with pytest.raises(ValueError, match="positive"):
        steps.hot_pixels_physical(dark, read, 0.0)


def test_unusable_only_where_the_dark_shot_noise_exceeds_the_read_noise_of_a_cds():
    # read noise 13 e: the two reads of a CDS hold 2 x 13^2 = 338 e^2 of read-noise variance; over a 4.5 s
    # exposure a dark charge of that many electrons (75.1 e/s) has as much shot-noise variance
    dark = np.array([75.0, 75.2, -200.0, 9.4, 0.2, 0.01, np.nan, 80.0])
    read = np.array([13.0, 13.0, 13.0, 13.0, 13.0, 13.0, 13.0, np.nan])
    assert steps.dark_noise_dominates(dark, read, 4.5).tolist() == [False, True, False, False, False, False,
                                                                     False, False]
    # a negative dark has no shot noise (below -1 e/s it is DARK_INVALID anyway); 0.2 e/s: 0.9 e < 1.3 e, not hot
    assert steps.physical_hot_bits(dark, read, 4.5).tolist() == [HOT, HOT | HOT_UNUSABLE, HOT, HOT, 0, 0, 0, 0]
    assert steps.dark_noise_dominates(dark, read, 4.5, limit=0.5)[0]  # half the CDS variance: 169 e
    assert not HOT & DO_NOT_USE and HOT_UNUSABLE & DO_NOT_USE
    with pytest.raises(ValueError, match="positive"):
        steps.dark_noise_dominates(dark, read, 4.5, limit=0.0)


def test_the_dark_charge_of_a_bin_is_what_the_dark_subtraction_takes_out():
    dt = np.tile([0.1, 4.6], 60)  # the AIRS-CH0 reads: 4.5 s between the two of a CDS
    np.testing.assert_allclose(steps.dark_charge_per_bin(np.array([2.0, -0.01]), dt, 60), [270.0, -1.35])
    np.testing.assert_allclose(steps.dark_charge_per_bin(np.array([2.0]), dt, 60, cds=False), [2.0 * 141.0])
    with pytest.raises(ValueError, match="whole bin"):
        steps.dark_charge_per_bin(np.array([2.0]), dt, 7)


def test_exposure_is_the_cds_interval_of_the_real_axes():
    info = read_dataset_info(REFERENCE)
    airs = steps.frame_dt(AIRS.name, info.n_frames(AIRS), info.airs_integration_time)
    assert steps.exposure_time(airs) == pytest.approx(4.5)  # 4.6 s end read - 0.1 s start read
    assert steps.exposure_time(steps.frame_dt(FGS1.name, info.n_frames(FGS1))) == pytest.approx(0.1)


def _quality(root, profile: str, inst) -> np.ndarray:
    """The quality plane that the pipeline makes for visit 0, ``(rows, columns)``."""
    info = read_dataset_info(root)
    planet = next(p for p in (root / "train").iterdir() if p.is_dir())
    obs = Observation(int(planet.name), 0, planet)
    config = build_config(profile=profile, wavelength_cut=False, instruments=(inst.name,))
    arrays = prepare_arrays(obs, inst, info, config, instrument_layout(inst, info, config))
    plane = np.zeros((inst.rows, inst.columns), dtype=np.uint16)
    plane[arrays.sel.pixels // inst.columns, arrays.sel.pixels % inst.columns] = arrays.dq
    return plane


def _hot_bits(root, profile: str, inst) -> np.ndarray:
    """The HOT bits that the pipeline puts in the quality plane of visit 0, ``(rows, columns)``."""
    return (_quality(root, profile, inst) & HOT) != 0


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


@pytest.mark.parametrize("inst", [AIRS, FGS1], ids=lambda i: i.name)
def test_real_calibration_no_hot_pixel_is_unusable_under_the_physical_rule(inst):
    physical, notebook = _quality(REFERENCE, "default", inst), _quality(REFERENCE, "notebook", inst)
    dark, read = _reference(inst, "dark"), _reference(inst, "read")
    exposure = 4.5 if inst is AIRS else 0.1
    assert ((physical & HOT) != 0).sum() == (14 if inst is AIRS else 0)
    assert not (physical & HOT_UNUSABLE).any()  # every hot pixel keeps its value
    # the hottest dark holds 0.14 (AIRS: 11.9 e/s, 53.6 e) or 4.2e-4 (FGS1) of a CDS's read-noise variance
    worst = float((dark * exposure / (2 * read**2)).max())
    assert worst == pytest.approx(0.1379 if inst is AIRS else 4.16e-4, rel=0.01)
    # the notebook's rule: every sigma-clipped pixel is hot and unusable (NaN unless bad_pixels = "keep")
    np.testing.assert_array_equal((notebook & HOT) != 0, (notebook & HOT_UNUSABLE) != 0)
    assert ((notebook & HOT_UNUSABLE) != 0).sum() == (82 if inst is AIRS else 11)


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


def test_without_read_noise_the_sigma_clip_stays_with_a_warning(tmp_path, caplog):
    root = tmp_path / "reference"
    shutil.copytree(REFERENCE, root)
    (root / "train" / REFERENCE_PLANET.name / f"{AIRS.name}_calibration_0" / "read.parquet").unlink()
    both = HOT | HOT_UNUSABLE
    without = _quality(root, "default", AIRS)
    assert "hot pixels by the sigma clip of the dark instead" in caplog.text
    notebook = _quality(REFERENCE, "notebook", AIRS)  # the sigma rule, as the notebook
    np.testing.assert_array_equal(without & both, notebook & both)
    assert ((without & HOT) != 0).sum() == 82 and ((without & both) == both).sum() == 82
    physical = _quality(REFERENCE, "default", AIRS)  # with the read noise: the physical rule, no sigma bits
    assert ((physical & HOT) != 0).sum() == 14 and not (physical & HOT_UNUSABLE).any()


def test_the_physical_rule_computes_no_sigma_clip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the sigma clip ran under the physical rule")

    monkeypatch.setattr(steps, "sigma_clip_mask", refuse)  # nor imports astropy.stats in a worker
    assert ((_quality(REFERENCE, "default", AIRS) & HOT) != 0).sum() == 14


# ----------------------------------------------------------------- the real calibration under a known light
# Planet 342072318's real AIRS calibration (data_samples/reference) with a synthetic signal: no real signal
# frames are committed, so the light is written by hand, through the real non-linearity, dark and flat, and
# the calibrated value of each pixel is known. (row, detector column) and real dark, e per 4.5 s exposure:
TRACE_CORE_HOT = ((13, 147), (14, 144), (15, 44), (16, 44))  # 0.79 (3.5), 0.64 (2.9), 9.4 (42), 1.8 e/s (8.1 e)
N_FRAMES = 120  # two default AIRS bins (30 CDS of 2 reads)


def light_per_exposure(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Electrons of light per CDS exposure after the flat: a trace centred on row 14.5, smooth along columns."""
    along = 4000.0 * (1.0 + 0.2 * np.sin(columns / 40.0))
    return along[None, :] * np.exp(-0.5 * ((rows[:, None] - 14.5) / 2.0) ** 2)


def build_real_calibration_visit(root: Path) -> Path:
    """A data folder: the real AIRS calibration of visit 0, the real axes cut to N_FRAMES, a noise-free signal."""
    planet = root / "train" / REFERENCE_PLANET.name
    planet.mkdir(parents=True)
    shutil.copytree(REFERENCE_PLANET / f"{AIRS.name}_calibration_0", planet / f"{AIRS.name}_calibration_0")
    for name in ("adc_info.csv", "wavelengths.csv"):
        shutil.copy(REFERENCE / name, root / name)
    axes = pq.read_table(REFERENCE / "axis_info.parquet")
    columns = {}
    for name in axes.column_names:
        values = axes[name].to_numpy()
        values = values[np.isfinite(values)]
        columns[name] = values if name == AIRS_WAVELENGTH_AXIS else values[:N_FRAMES]
    length = max(len(v) for v in columns.values())
    pq.write_table(pa.table({k: np.pad(v, (0, length - len(v)), constant_values=np.nan)
                             for k, v in columns.items()}), root / "axis_info.parquet")
    info = read_dataset_info(root)
    dt = steps.frame_dt(AIRS.name, N_FRAMES, info.airs_integration_time)
    cal = planet / f"{AIRS.name}_calibration_0"
    dark, flat = (read_frame_table(cal / f"{n}.parquet", AIRS.rows, AIRS.columns, "float") for n in ("dark", "flat"))
    coeffs = read_frame_table(cal / "linear_corr.parquet", 6 * AIRS.rows, AIRS.columns, "float")
    rate = light_per_exposure(np.arange(AIRS.rows), np.arange(AIRS.columns)) * flat / steps.exposure_time(dt) + dark
    linear = dt[:, None] * rate.reshape(1, -1)  # (frames, pixels): the charge each read holds
    measured = sim.invert_nonlinearity(linear, coeffs.reshape(6, -1))
    adc = info.adc[AIRS.name]
    raw = np.clip(np.rint((measured - adc.offset) * adc.gain), 0, 65535).astype(np.uint16)
    write_signal(planet / f"{AIRS.name}_signal_0.parquet", raw)
    return root


@pytest.fixture(scope="module")
def real_calibration_output(tmp_path_factory) -> Path:
    """The default calibration of :func:`build_real_calibration_visit`."""
    tmp = tmp_path_factory.mktemp("real_calibration")
    root = build_real_calibration_visit(tmp / "data")
    out = tmp / "default.h5"
    calibrate(root, out, config=build_config(instruments=(AIRS.name,)), jobs=1, progress=False, log_file=False)
    return out


def test_trace_core_hot_pixels_keep_their_light_in_the_default_output(real_calibration_output):
    dark = _reference(AIRS, "dark")
    with h5py.File(real_calibration_output) as f:
        signal, dq = f["AIRS-CH0/signal"][0], f["AIRS-CH0/dq"][0]
        column = list(f["AIRS-CH0/column"][()])
        charge = f["AIRS-CH0/dark_charge"][0]
    for row, col in TRACE_CORE_HOT:
        x, neighbours = column.index(col), [column.index(col - 1), column.index(col + 1)]
        assert dq[x, row] & HOT and not dq[x, row] & HOT_UNUSABLE, (row, col)
        value = signal[:, x, row].astype(np.float64)
        assert np.isfinite(value).all(), (row, col)  # NaN in every bin before (HOT was DO_NOT_USE)
        around = signal[:, neighbours, row].astype(np.float64).mean(axis=1)
        truth = 30 * light_per_exposure(np.array([row]), np.array([col]))[0, 0]
        # kept and dark-subtracted: 42 e per exposure of (row 15, column 44) left in would be 0.9% too much
        np.testing.assert_allclose(value, truth, rtol=1e-3, err_msg=f"{(row, col)}")
        np.testing.assert_allclose(value / around, 1.0, atol=2e-3, err_msg=f"{(row, col)}")
        # the dark charge each bin lost (30 CDS of 4.5 s), for the variance
        assert charge[x, row] == pytest.approx(dark[row, col] * 135.0, rel=1e-5)


def test_the_default_output_counts_usable_hot_pixels_apart_from_bad_ones(real_calibration_output):
    with h5py.File(real_calibration_output) as f:
        dq = f["AIRS-CH0/dq"][0]
        provenance = json.loads(f["provenance"][0].decode())["AIRS-CH0"]
        signal = f["AIRS-CH0/signal"][0]
    unusable = (dq & DO_NOT_USE) != 0
    assert provenance["bad_pixels"] == int(unusable.sum())
    assert provenance["hot_pixels"] == int(((dq & HOT) != 0).sum()) == 11  # of the detector's 14, in columns 39:321
    assert not (dq & HOT_UNUSABLE).any()
    np.testing.assert_array_equal(np.isnan(signal).all(axis=0), unusable)  # NaN: exactly the unusable pixels


def test_a_hot_pixel_s_variance_is_larger_by_its_dark_charge():
    frame = np.full((3, 8), 5000.0)  # (x, y): three columns of eight rows, 5000 e per bin
    usable = np.ones(frame.shape, bool)
    rn = np.full(frame.shape, 13.0)
    charge = np.zeros(frame.shape)
    charge[1, 4] = 9.369 * 135.0  # the real (row 15, column 44) over a default AIRS bin: 1265 e
    charge[2, 4] = -3.0  # a slightly negative dark has no shot noise
    np.testing.assert_allclose(frame_steps.pixel_variance(frame[None], rn, 60, charge)[0],
                               frame + np.clip(charge, 0, None) + 60 * 13.0**2)
    with_dark = lc.plan_airs(frame, usable, rn, 60, half_width=6, background=False, dark_charge=charge)
    without = lc.plan_airs(frame, usable, rn, 60, half_width=6, background=False)
    _, var = lc.apply_weights(frame[None], with_dark)
    _, var0 = lc.apply_weights(frame[None], without)
    np.testing.assert_allclose(var - var0, [[0.0, 9.369 * 135.0, 0.0]])  # a box sum: weight 1 per pixel
    # the optimal extraction weighs the hot pixel by its variance: less than its column's cold pixels
    weights = lc.plan_airs(frame, usable, rn, 60, half_width=6, background=False, weighted=True,
                           dark_charge=charge).weights
    assert weights[1, 4] < weights[1, 3] and weights[0, 4] == pytest.approx(weights[0, 3])


def test_light_curves_carry_the_dark_shot_noise_of_the_file_s_hot_pixels(real_calibration_output, monkeypatch):
    dark = _reference(AIRS, "dark")
    with h5py.File(real_calibration_output) as f:
        charge = lc.subtracted_dark(f, AIRS.name, 0)
        column = list(f["AIRS-CH0/column"][()])
        assert charge[column.index(44), 15] == pytest.approx(dark[15, 44] * 135.0, rel=1e-5)
        with_dark = lc.observation_light_curves(f, 0)
        monkeypatch.setattr(lc, "subtracted_dark", lambda *args: 0.0)  # as a file without the plane
        without = lc.observation_light_curves(f, 0)
    extra = with_dark.airs_flux_err**2 - without.airs_flux_err**2  # (t, w): sum_y W^2 K of each column
    hot = (dark[15, 44] + dark[16, 44]) * 135.0  # 1508 e^2: its two hot aperture pixels, weight 1 each
    x = list(with_dark.column).index(44)
    assert hot <= extra[0, x] <= 1.02 * hot  # plus the cold pixels' ~0.01 e/s
    assert np.median(extra[0]) < 0.02 * hot
    np.testing.assert_array_equal(with_dark.airs_flux, without.airs_flux)  # the weights of a box sum: unchanged


def test_a_file_written_before_hot_unusable_keeps_its_hot_pixels_out_of_the_light_curves(real_calibration_output,
                                                                                        tmp_path):
    from arielstream import dq as dqbits

    assert dqbits.do_not_use(None) == dqbits.do_not_use(dqbits.BITS) == DO_NOT_USE
    older = {name: bit for name, bit in dqbits.BITS.items() if name != "HOT_UNUSABLE"}
    assert dqbits.do_not_use(older) == DO_NOT_USE | HOT
    old = tmp_path / "old.h5"
    shutil.copy(real_calibration_output, old)
    with h5py.File(old, "r+") as f:  # as an older version wrote it: HOT meant do-not-use
        f.attrs["dq_bits"] = json.dumps(older)
    with h5py.File(real_calibration_output) as f, h5py.File(old) as g:
        assert lc.file_dq_bits(f) == dqbits.BITS and lc.file_dq_bits(g) == older
        hot = (f["AIRS-CH0/dq"][0] & HOT) != 0
        now, before = lc.observation_light_curves(f, 0), lc.observation_light_curves(g, 0)
    x = list(now.column).index(44)  # (rows 15, 16) of column 44: hot and kept now, out of an older file's sums
    assert hot.sum() == 11
    assert not np.array_equal(now.airs_flux[:, x], before.airs_flux[:, x])


def test_an_observation_given_twice_is_one_observation(real_calibration_output):
    with h5py.File(real_calibration_output) as f:
        assert lc.done_observations(f, [0, 0]) == [0]
