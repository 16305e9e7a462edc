"""A straightforward numpy re-implementation of the organisers' calibration notebook.

This is the yardstick, not the product: it loads a whole visit into float64
frames-first arrays and follows the notebook line by line —
``np.tile`` of calibration frames, numpy masked arrays whose mask is then lost by
storing into a plain array, the per-pixel ``np.poly1d`` loop for the
non-linearity, the transpose before binning. ``tests/test_notebook_profile.py``
holds arielstream's ``--profile notebook`` to it, and ``make bench`` times it.
Only the file reading differs (pyarrow instead of pandas, which arielstream does
not depend on). It needs several GB of RAM at full size, as the notebook does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from astropy.stats import sigma_clip


def _read_values(path: Path) -> np.ndarray:
    """``pd.read_parquet(path).values``: frames-first 2-D array."""
    table = pq.read_table(path)
    return np.column_stack([c.to_numpy() for c in table.columns])


def _axis(root: Path, name: str) -> np.ndarray:
    values = pq.read_table(root / "axis_info.parquet", columns=[name])[name].to_numpy()
    return values[~np.isnan(values)]


def ADC_convert(signal, gain=0.4369, offset=-1000):  # noqa: N802 - the notebook's name
    """Raw counts to electrons: ``signal / gain + offset`` in float64."""
    signal = signal.astype(np.float64)
    signal /= gain
    signal += offset
    return signal


def mask_hot_dead(signal, dead, dark):
    """Mask dead pixels and hot ones (5-sigma clip of the dark frame) in every frame."""
    hot = sigma_clip(dark, sigma=5, maxiters=5).mask
    hot = np.tile(hot, (signal.shape[0], 1, 1))
    dead = np.tile(dead, (signal.shape[0], 1, 1))
    signal = np.ma.masked_where(dead, signal)
    signal = np.ma.masked_where(hot, signal)
    return signal


def apply_linear_corr(linear_corr, clean_signal):
    """The non-linearity polynomial, one ``np.poly1d`` per pixel (the notebook's slow loop)."""
    linear_corr = np.flip(linear_corr, axis=0)
    for x, y in itertools.product(range(clean_signal.shape[1]), range(clean_signal.shape[2])):
        poli = np.poly1d(linear_corr[:, x, y])
        clean_signal[:, x, y] = poli(clean_signal[:, x, y])
    return clean_signal


def clean_dark(signal, dead, dark, dt):
    """Subtract the dark current times each frame's integration time ``dt``."""
    dark = np.ma.masked_where(dead, dark)
    dark = np.tile(dark, (signal.shape[0], 1, 1))
    signal -= dark * dt[:, np.newaxis, np.newaxis]
    return signal


def get_cds(signal):
    """Correlated double sampling: end read minus start read of each pair."""
    return signal[:, 1::2, :, :] - signal[:, ::2, :, :]


def bin_obs(cds_signal, binning):
    """Sum ``binning`` consecutive CDS frames, after swapping the spatial axes as the notebook does."""
    cds_transposed = cds_signal.transpose(0, 1, 3, 2)
    cds_binned = np.zeros((cds_transposed.shape[0], cds_transposed.shape[1] // binning,
                           cds_transposed.shape[2], cds_transposed.shape[3]))
    for i in range(cds_transposed.shape[1] // binning):
        cds_binned[:, i, :, :] = np.sum(cds_transposed[:, i * binning:(i + 1) * binning, :, :], axis=1)
    return cds_binned


def correct_flat_field(flat, dead, signal):
    """Divide by the flat field (transposed to the binned cube's axes), dead pixels masked."""
    flat = flat.transpose(1, 0)
    dead = dead.transpose(1, 0)
    flat = np.ma.masked_where(dead, flat)
    flat = np.tile(flat, (signal.shape[0], 1, 1))
    signal = signal / flat
    return signal


@dataclass
class NotebookResult:
    """One visit calibrated the notebook's way, with the pixels that the notebook's masks keep."""

    airs: np.ndarray  # (bins, 282, 32) float64, detector column order (long → short wavelength)
    fgs1: np.ndarray  # (bins, 32, 32) float64
    airs_good: np.ndarray  # (282, 32) True where neither hot nor dead
    fgs1_good: np.ndarray  # (32, 32)


def _calibration(folder: Path, rows: int, cols: int, name: str) -> np.ndarray:
    shape = (6, rows, cols) if name == "linear_corr" else (rows, cols)
    return _read_values(folder / f"{name}.parquet").astype(np.float64).reshape(shape)


def notebook_calibrate(root: str | Path, planet_dir: str | Path, visit: int = 0, *, do_mask: bool = True,
                       do_the_nl_corr: bool = False, do_dark: bool = True, do_flat: bool = True,
                       time_binning: bool = True) -> NotebookResult:
    """The notebook's loop body for one planet (CHUNKS_SIZE = 1), for any visit."""
    root, planet_dir = Path(root), Path(planet_dir)
    cut_inf, cut_sup = 39, 321

    # --- AIRS-CH0
    values = _read_values(planet_dir / f"AIRS-CH0_signal_{visit}.parquet")
    signal = values.astype(np.float64).reshape((values.shape[0], 32, 356))
    del values
    signal = ADC_convert(signal)
    dt_airs = _axis(root, "AIRS-CH0-integration_time").copy()
    dt_airs[1::2] += 0.1
    chopped_signal = signal[:, :, cut_inf:cut_sup]
    del signal
    folder = planet_dir / f"AIRS-CH0_calibration_{visit}"
    flat = _calibration(folder, 32, 356, "flat")[:, cut_inf:cut_sup]
    dark = _calibration(folder, 32, 356, "dark")[:, cut_inf:cut_sup]
    dead_airs = _calibration(folder, 32, 356, "dead")[:, cut_inf:cut_sup]
    linear_corr = _calibration(folder, 32, 356, "linear_corr")[:, :, cut_inf:cut_sup]
    airs_clean = np.zeros((1, chopped_signal.shape[0], 32, cut_sup - cut_inf))
    airs_clean[0] = mask_hot_dead(chopped_signal, dead_airs, dark) if do_mask else chopped_signal
    del chopped_signal
    if do_the_nl_corr:
        airs_clean[0] = apply_linear_corr(linear_corr, airs_clean[0])
    if do_dark:
        airs_clean[0] = clean_dark(airs_clean[0], dead_airs, dark, dt_airs)
    airs_good = ~(sigma_clip(dark, sigma=5, maxiters=5).mask | dead_airs.astype(bool))

    # --- FGS1
    values = _read_values(planet_dir / f"FGS1_signal_{visit}.parquet")
    fgs_signal = values.astype(np.float64).reshape((values.shape[0], 32, 32))
    del values
    fgs_signal = ADC_convert(fgs_signal)
    dt_fgs1 = np.ones(len(fgs_signal)) * 0.1
    dt_fgs1[1::2] += 0.1
    folder = planet_dir / f"FGS1_calibration_{visit}"
    flat_fgs = _calibration(folder, 32, 32, "flat")
    dark = _calibration(folder, 32, 32, "dark")
    dead_fgs1 = _calibration(folder, 32, 32, "dead")
    linear_corr = _calibration(folder, 32, 32, "linear_corr")
    fgs1_clean = np.zeros((1, fgs_signal.shape[0], 32, 32))
    fgs1_clean[0] = mask_hot_dead(fgs_signal, dead_fgs1, dark) if do_mask else fgs_signal
    del fgs_signal
    if do_the_nl_corr:
        fgs1_clean[0] = apply_linear_corr(linear_corr, fgs1_clean[0])
    if do_dark:
        fgs1_clean[0] = clean_dark(fgs1_clean[0], dead_fgs1, dark, dt_fgs1)
    fgs1_good = ~(sigma_clip(dark, sigma=5, maxiters=5).mask | dead_fgs1.astype(bool))

    airs_cds = get_cds(airs_clean)
    fgs1_cds = get_cds(fgs1_clean)
    del airs_clean, fgs1_clean
    if time_binning:
        airs_binned = bin_obs(airs_cds, binning=30)
        fgs1_binned = bin_obs(fgs1_cds, binning=30 * 12)
    else:
        airs_binned = airs_cds.transpose(0, 1, 3, 2)
        fgs1_binned = fgs1_cds.transpose(0, 1, 3, 2)
    del airs_cds, fgs1_cds
    if do_flat:
        airs_binned[0] = correct_flat_field(flat, dead_airs, airs_binned[0])
        fgs1_binned[0] = correct_flat_field(flat_fgs, dead_fgs1, fgs1_binned[0])
    return NotebookResult(airs_binned[0], fgs1_binned[0], airs_good.T, fgs1_good.T)
