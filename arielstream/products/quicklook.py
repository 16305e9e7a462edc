"""Quicklook images of a calibrated file and an ``index.html`` to browse them.

Per observation (``<planet_id>_visit<v>_<what>.png`` in ``out_dir``):

``frames``      the time-averaged frame of each instrument (AIRS x = wavelength in µm, from the file's
                ``AIRS-CH0/wavelength``; y = row), and below it the background per time bin where the
                file has one (``<inst>/background``, the ``background`` step)
``dq``          the data-quality map of each instrument (which bits are set), and below it the pixels
                flagged per time bin for each bit of the per-bin plane (``<inst>/dq_time``) where present
``lightcurves`` normalised white-light curves (AIRS, FGS1; the bins taken as in transit shaded) and a few
                AIRS spectral ones
``spectrum``    a transmission spectrum (transit depth against µm): the one ``arielstream spectrum`` wrote
                (``spectrum=`` a ``.fits.h5`` or submission ``.csv``; by default ``OUT.submission.fits.h5``,
                then ``OUT.submission.csv``, beside ``OUT.h5``) with its sigmas, else a *quick estimate*
                (:func:`quick_depths`): out-of-transit minus in-transit mean of each normalised light
                curve, error bars from their scatter. No fit: no limb darkening, ingress, trend or jitter.
``centroid``    the FGS1 flux-weighted centroid track (x, y) against time

Figures use matplotlib's constrained layout, so titles, colour-bar labels and
tick labels do not run into the next panel.

``index.html`` has one section per observation, linking (relative links) and
showing every PNG. Everything is read one observation at a time. matplotlib is an
optional dependency (``pip install matplotlib``; the ``plots`` extra): it is imported only here,
with the Agg backend, and its absence is a clear :class:`MissingDependencyError`.

Every file is staged beside its name (:func:`arielstream.io.atomic.staged`) and
renamed into place only once all of them are written, so a run that fails leaves
the previous page and images as they were (and a run stopped during the renames,
no index rather than one that mixes old and new images); never a truncated PNG.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import dq as dqbits
from ..errors import InputError, MissingDependencyError
from ..io import schema, store
from ..io.atomic import output_errors, staged
from ..io.output import check_product_target
from ..io.reader import open_output
from ..io.store import text
from ..layout import AIRS, FGS1, FGS1_WAVELENGTH_UM
from ..nan import quiet_nan
from . import lightcurves as lcmod
from . import spectrum as specmod
from .score import read_table

log = logging.getLogger(__name__)

PLOTS = ("frames", "dq", "lightcurves", "spectrum", "centroid")
CAPTIONS = {
    "frames": "Mean frame of each instrument (AIRS against wavelength); background per time bin where present.",
    "dq": "Data-quality map of each instrument; pixels flagged per time bin (dq_time) where present.",
    "lightcurves": "Normalised white-light and AIRS spectral light curves (shaded: bins taken as in transit).",
    "spectrum": "Transmission spectrum: from arielstream spectrum where found, else a quick estimate (no fit).",
    "centroid": "FGS1 flux-weighted centroid track.",
}
N_SPECTRAL = 5  # spectral light curves drawn
UM = "wavelength (µm)"


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError.of("quicklook", "matplotlib", extra="plots") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, partial: Path, path: Path) -> None:
    """Write ``fig`` as the PNG ``partial`` (staged: renamed to ``path`` with the others) and close it."""
    try:
        with output_errors(path, "write the quicklook image"):
            fig.savefig(partial, dpi=80, format="png")
    finally:
        plt.close(fig)


def _mean_frame(ds: h5py.Dataset, index: int) -> np.ndarray:
    mean, _ = lcmod.mean_and_finite(ds, index, lcmod.BLOCK_BYTES)
    return mean


def _panels(plt, instruments: list[str], rows: int = 1):
    """A figure (constrained layout) with one column of panels per instrument, AIRS (wide) first."""
    return plt.subplots(rows, len(instruments), figsize=(5.5 * len(instruments), 4.2 * rows), squeeze=False,
                        layout="constrained",
                        gridspec_kw={"width_ratios": [2.2 if i == AIRS.name else 1 for i in instruments]})


def wavelength_um(f: h5py.File, instrument: str) -> np.ndarray | None:
    """The instrument's x axis in µm, in file order (AIRS: ``AIRS-CH0/wavelength``), or None.

    None for FGS1 (one wavelength: its x is a detector column), and where the
    dataset is absent, not in µm, not finite or not monotonic (the index is drawn then).
    """
    name = schema.dataset(instrument, schema.WAVELENGTH)
    if instrument != AIRS.name or name not in f:
        return None
    units = text(f[name].attrs.get("units", "um"))
    wl = np.asarray(f[name][()], dtype=np.float64)
    step = np.diff(wl)
    if units not in ("um", "µm", "micron") or wl.size < 2 or not np.isfinite(wl).all() \
            or not (np.all(step > 0) or np.all(step < 0)):
        return None
    return wl


def edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around increasing or decreasing centres (midpoints; the ends mirrored); ±0.5 for one."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _image(ax, data_xy: np.ndarray, wl: np.ndarray | None, **kwargs):
    """``data_xy`` (x, y) drawn with x along the axis: against µm where ``wl`` is given, else the index."""
    if wl is None:
        return ax.imshow(data_xy.T, origin="lower", aspect="auto", interpolation="nearest", **kwargs)
    ax.set_xlabel(UM)
    return ax.pcolormesh(edges(wl), np.arange(data_xy.shape[1] + 1) - 0.5, data_xy.T, shading="flat", **kwargs)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_frames(plt, f: h5py.File, index: int, title: str, partial: Path, path: Path) -> None:
    instruments = store.instruments_in(f)
    backgrounds = [schema.dataset(i, schema.BACKGROUND) in f for i in instruments]
    fig, axes = _panels(plt, instruments, rows=2 if any(backgrounds) else 1)
    for col, inst in enumerate(instruments):
        ax = axes[0, col]
        wl = wavelength_um(f, inst)
        mean = _mean_frame(f[schema.dataset(inst, schema.SIGNAL)], index)  # (x, y)
        finite = mean[np.isfinite(mean)]
        vmin, vmax = (np.percentile(finite, [1, 99.9]) if finite.size else (0, 1))
        im = _image(ax, mean, wl, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(f"{inst}: mean frame")
        if wl is None:
            ax.set_xlabel("x (wavelength index, file order)" if inst == AIRS.name else "x (column)")
        ax.set_ylabel("y (row)")
        fig.colorbar(im, ax=ax, label="electrons per bin")
        if axes.shape[0] > 1:
            _plot_background(fig, axes[1, col], f, inst, index, wl)
    fig.suptitle(title)
    _save(plt, fig, partial, path)


def _plot_background(fig, ax, f: h5py.File, inst: str, index: int, wl: np.ndarray | None) -> None:
    """The background the calibration subtracted, per time bin: AIRS per column (an image), FGS1 a curve."""
    name = schema.dataset(inst, schema.BACKGROUND)
    if name not in f:
        _empty(ax, f"{inst}: no background plane")
        return
    bg = np.asarray(f[name][index], dtype=np.float64)
    time = np.asarray(f[schema.dataset(inst, schema.TIME)][()], dtype=np.float64)
    finite = bg[np.isfinite(bg)]
    if bg.ndim == 2:  # (t, x)
        vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0, 1))
        x = edges(wl) if wl is not None else np.arange(bg.shape[1] + 1) - 0.5
        im = ax.pcolormesh(x, edges(time), bg, shading="flat", cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_xlabel(UM if wl is not None else "x (wavelength index, file order)")
        ax.set_ylabel("time (h)")
        fig.colorbar(im, ax=ax, label="electrons per pixel and bin")
    else:  # (t,)
        ax.plot(time, bg, "o-", ms=3)
        ax.set_xlabel("time (h)")
        ax.set_ylabel("electrons per pixel and bin")
    ax.set_title(f"{inst}: background per time bin", fontsize=10)


# "good" first, then one colour per DQ bit (tests check there is one for every bit of dq.BITS)
DQ_COLOURS = ["#ffffff", "#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#2ca02c", "#e377c2", "#8c564b",
              "#17becf", "#bcbd22"]


def dq_codes(dq: np.ndarray) -> np.ndarray:
    """0 where no bit is set, else 1 + the index of the bit shown (for a categorical map).

    The lowest ``DO_NOT_USE`` bit set, else the lowest bit set: a pixel left out (``HOT | HOT_UNUSABLE``)
    is never drawn as one that is used (``HOT``).
    """
    dq = np.asarray(dq).astype(np.int64)
    codes = np.zeros(dq.shape, dtype=np.int64)
    # painted in turn, the last paint wins: informational bits, then do-not-use ones, each highest bit first
    order = sorted(enumerate(dqbits.BITS.values()), key=lambda kb: (bool(kb[1] & dqbits.DO_NOT_USE), -kb[0]))
    for k, bit in order:
        codes[(dq & bit) != 0] = k + 1
    return codes


def dq_time_counts(ds: h5py.Dataset, index: int) -> np.ndarray:
    """Pixels with each bit of :data:`arielstream.dq.TIME_BITS` set, per time bin: ``(t, bits)``.

    ``ds`` is a ``(obs, t, x, y)`` per-bin DQ plane, read a block of time bins at a time.
    """
    n_t, items = ds.shape[1], int(np.prod(ds.shape[2:]))
    bits = list(dqbits.TIME_BITS.values())
    counts = np.zeros((n_t, len(bits)), dtype=np.int64)
    for block in lcmod.time_blocks(n_t, items):
        flags = np.asarray(ds[index, block]).reshape(block.stop - block.start, -1)
        for k, bit in enumerate(bits):
            counts[block, k] = np.count_nonzero(flags & bit, axis=1)
    return counts


def _plot_dq(plt, f: h5py.File, index: int, title: str, partial: Path, path: Path) -> None:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    names = list(dqbits.BITS)
    cmap = ListedColormap(DQ_COLOURS[: len(names) + 1])
    norm = BoundaryNorm(np.arange(len(names) + 2) - 0.5, cmap.N)
    instruments = [i for i in store.instruments_in(f) if schema.dataset(i, schema.DQ) in f]
    per_bin = any(schema.dataset(i, schema.DQ_TIME) in f for i in instruments)
    fig, axes = _panels(plt, instruments, rows=2 if per_bin else 1)
    for col, inst in enumerate(instruments):
        ax = axes[0, col]
        wl = wavelength_um(f, inst)
        dq = f[schema.dataset(inst, schema.DQ)][index]
        counts = ", ".join(f"{name} {int(np.count_nonzero(dq & bit))}" for name, bit in dqbits.BITS.items()
                           if np.any(dq & bit))
        im = _image(ax, dq_codes(dq), wl, cmap=cmap, norm=norm)
        ax.set_title(f"{inst}: DQ ({counts or 'no bit set'})", fontsize=9, wrap=True)
        if wl is None:
            ax.set_xlabel("x")
        ax.set_ylabel("y (row)")
        bar = fig.colorbar(im, ax=ax, ticks=np.arange(len(names) + 1))
        bar.ax.set_yticklabels(["good", *names], fontsize=7)
        if per_bin:
            _plot_dq_time(axes[1, col], f, inst, index)
    fig.suptitle(title)
    _save(plt, fig, partial, path)


def _plot_dq_time(ax, f: h5py.File, inst: str, index: int) -> None:
    name = schema.dataset(inst, schema.DQ_TIME)
    if name not in f:
        _empty(ax, f"{inst}: no per-bin DQ plane (dq_time)")
        return
    ds = f[name]
    counts = dq_time_counts(ds, index)
    time = np.asarray(f[schema.dataset(inst, schema.TIME)][()], dtype=np.float64)
    pixels = int(np.prod(ds.shape[2:]))
    for k, bit_name in enumerate(dqbits.TIME_BITS):
        if counts[:, k].any():
            ax.plot(time, counts[:, k], "o-", ms=3, label=f"{bit_name} ({int(counts[:, k].sum())})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no pixel flagged in any bin", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{inst}: per-bin DQ (dq_time), pixels flagged of {pixels}", fontsize=9)
    ax.set_xlabel("time (h)")
    ax.set_ylabel("pixels flagged per bin")


# ---------------------------------------------------------------- the quick transmission spectrum
DETECTION_SIGMA = 3.0  # a white-light dip deeper than this many times its noise is taken as the transit
MIN_SCATTER_BINS = 3  # a group of fewer bins takes its error from the propagated errors, not its scatter
N_SPECTRUM_BINS = 25  # the AIRS quick estimate is also drawn averaged into about this many wavelength bins


def transit_bins(flux: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """In- and out-of-transit bins ``(t,)`` of a normalised light curve, or None where no dip stands out.

    Baseline: the median of the points above the median (of a running median,
    over about a fortieth of the bins, for long curves); dip: baseline minus the
    lowest point. The dip counts when it exceeds :data:`DETECTION_SIGMA` times the
    noise (the larger of the median error and the point-to-point scatter). In
    transit: below half the dip; out of transit: less than a quarter of it deep
    (ingress and egress are left out of both).
    """
    flux, err = np.asarray(flux, dtype=np.float64), np.asarray(err, dtype=np.float64)
    ok = np.isfinite(flux) & np.isfinite(err)
    if ok.sum() < 3:
        return None
    smooth = flux.copy()
    width = ok.sum() // 40
    if width >= 2:  # long curves: a running median, so that one low point is not the transit
        from numpy.lib.stride_tricks import sliding_window_view

        padded = np.pad(np.where(ok, flux, np.nan), (width // 2, width - 1 - width // 2), mode="edge")
        with quiet_nan():
            smooth = np.nanmedian(sliding_window_view(padded, width), axis=1)
    good = ok & np.isfinite(smooth)
    level = smooth[good]
    baseline = float(np.median(level[level >= np.median(level)]))
    dip = baseline - float(level.min())
    noise = float(np.median(err[good])) / math.sqrt(max(width, 1))
    if good.sum() >= 5:
        from astropy.stats import mad_std  # the point-to-point scatter, robust to the transit's two edges

        noise = max(noise, float(mad_std(np.diff(flux[ok]))) / math.sqrt(2 * max(width, 1)))
    if not dip > DETECTION_SIGMA * noise:
        return None
    inside = good & (smooth < baseline - dip / 2)
    outside = good & (smooth > baseline - dip / 4)
    if not inside.any() or not outside.any():
        return None
    return inside, outside


def _group_mean(flux: np.ndarray, err: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Mean of ``rows`` of ``(t, w)`` curves and its variance: from the scatter, or propagated for few rows."""
    x, e = flux[rows], err[rows]
    n = x.shape[0]
    with quiet_nan(), np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(x, axis=0)
        if n >= MIN_SCATTER_BINS:
            return mean, np.nanvar(x, axis=0, ddof=1) / np.sum(np.isfinite(x), axis=0), True
        return mean, np.nansum(e * e, axis=0) / np.square(np.sum(np.isfinite(x), axis=0)), False


def quick_depths(flux: np.ndarray, err: np.ndarray, inside: np.ndarray,
                 outside: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Transit depth ``1 - mean(in) / mean(out)`` of each ``(t, w)`` light curve, and its 1-sigma.

    Also returns whether both errors came from the scatter of the bins (else from
    the propagated errors). A quick estimate, not a fit: no transit shape (ingress,
    limb darkening), trend or decorrelation.
    """
    flux = np.asarray(flux, dtype=np.float64).reshape(len(inside), -1)
    err = np.asarray(err, dtype=np.float64).reshape(len(inside), -1)
    m_in, v_in, s_in = _group_mean(flux, err, inside)
    m_out, v_out, s_out = _group_mean(flux, err, outside)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = 1.0 - m_in / m_out
        sigma = np.sqrt(v_in / m_out**2 + m_in**2 * v_out / m_out**4)
    return depth, sigma, s_in and s_out


@dataclass
class Spectrum:
    """What the ``spectrum`` panel draws for one observation."""

    wavelength: np.ndarray  # µm
    depth: np.ndarray
    sigma: np.ndarray
    label: str  # legend
    title: str
    quick: bool  # a quick estimate (True) or a fitted spectrum read from a file
    note: str = ""  # written under the plot
    white: float = float("nan")  # the white-light depth, drawn as a line
    airs_in_transit: np.ndarray | None = None  # (t,) AIRS bins taken as in transit
    fgs1_in_transit: np.ndarray | None = None


def quick_spectrum(lc: lcmod.LightCurves) -> Spectrum | None:
    """The quick estimate of one observation's spectrum from its light curves, or None without a transit."""
    wl, depth, sigma = [], [], []
    out = Spectrum(np.array([]), np.array([]), np.array([]), "", "", quick=True)
    scatter = []
    if lc.airs_white is not None and lc.airs_white_err is not None and lc.airs_flux is not None \
            and lc.airs_flux_err is not None and lc.wavelength is not None:
        bins = transit_bins(*lcmod.normalise(lc.airs_white, lc.airs_white_err))
        if bins is not None:
            out.airs_in_transit = bins[0]
            d, s, sc = quick_depths(*lcmod.normalise(lc.airs_flux, lc.airs_flux_err), *bins)
            wl.append(lc.wavelength)
            depth.append(d)
            sigma.append(s)
            scatter.append(sc)
            out.white = float(quick_depths(*lcmod.normalise(lc.airs_white, lc.airs_white_err), *bins)[0][0])
    if lc.fgs1_flux is not None and lc.fgs1_flux_err is not None:
        flux, err = lcmod.normalise(lc.fgs1_flux, lc.fgs1_flux_err)
        bins = transit_bins(flux, err)
        if bins is not None:
            out.fgs1_in_transit = bins[0]
            d, s, sc = quick_depths(flux, err, *bins)
            wl.append(np.array([FGS1_WAVELENGTH_UM]))
            depth.append(d)
            sigma.append(s)
            scatter.append(sc)
    if not wl:
        return None
    out.wavelength, out.depth, out.sigma = np.concatenate(wl), np.concatenate(depth), np.concatenate(sigma)
    errors = "scatter of the bins" if all(scatter) else "propagated errors (too few bins for a scatter)"
    out.label = "quick estimate per wavelength"
    out.note = ("QUICK ESTIMATE, not for science: out-of-transit minus in-transit mean of the normalised "
                f"light curves; errors from the {errors}")
    out.title = "QUICK ESTIMATE of the transmission spectrum (no fit; run arielstream spectrum for one)"
    return out


class SpectrumFile:
    """Depths and sigmas (283 targets: FGS1, then AIRS ascending) read from ``arielstream spectrum``'s output.

    A ``.fits.h5`` (per visit) or a submission ``.csv`` (per planet, visits combined;
    negative depths written as 0, missing ones filled: as the file holds them).
    """

    def __init__(self, path: Path):
        self.path = path
        self.per_visit: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.per_planet: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        try:
            if h5py.is_hdf5(path):
                with h5py.File(path, "r") as f:
                    if text(f.attrs.get(schema.ATTR_FORMAT, "")) != specmod.FITS_FORMAT_NAME:
                        raise ValueError(f"not a {specmod.FITS_FORMAT_NAME} file")
                    for pid, visit, d, s in zip(f["planet_id"][()], f["visit"][()], f["depth"][()], f["sigma"][()],
                                                strict=True):
                        self.per_visit[(int(pid), int(visit))] = (np.asarray(d, float), np.asarray(s, float))
            else:  # read as score reads a submission (blank lines skipped, every row's fields counted)
                table = read_table(path, role="truth")
                if ["planet_id", *table.columns] != specmod.submission_header():
                    raise ValueError("not a submission file (planet_id, wl_1 … wl_283, sigma_1 … sigma_283)")
                n = specmod.N_TARGETS
                for pid, values in zip(table.planet_id, table.values, strict=True):
                    self.per_planet[int(pid)] = (values[:n], values[n:])
        except InputError as exc:
            raise InputError(path, f"cannot read the spectrum: {exc.problem}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(path, f"cannot read the spectrum: {exc}") from None

    def spectrum(self, lc: lcmod.LightCurves) -> Spectrum | None:
        """The observation's spectrum against µm (the targets the light curves' wavelengths name), or None."""
        if (lc.planet_id, lc.visit) in self.per_visit:
            (depth, sigma), what = self.per_visit[(lc.planet_id, lc.visit)], f"visit {lc.visit}"
        elif lc.planet_id in self.per_planet:
            (depth, sigma), what = self.per_planet[lc.planet_id], "visits combined"
        else:
            return None
        um = {1: FGS1_WAVELENGTH_UM}
        if lc.wavelength_label is not None and lc.wavelength is not None:
            for label, value in zip(lc.wavelength_label, lc.wavelength, strict=True):
                if label.startswith("wl_") and label[3:].isdigit():
                    um[int(label[3:])] = float(value)
        wl = np.array([um.get(k + 1, np.nan) for k in range(depth.size)])
        keep = np.isfinite(wl)
        return Spectrum(wl[keep], depth[keep], sigma[keep], quick=False,
                        label=f"arielstream spectrum ({what}), 1-sigma",
                        title=f"transmission spectrum: {self.path.name}")


def find_spectrum(source: Path, given: str | Path | None) -> SpectrumFile | None:
    """The spectrum file given, else ``OUT.submission.fits.h5`` or ``OUT.submission.csv`` beside ``source``.

    A given file that cannot be read is an :class:`InputError`; a found one is logged and skipped.
    """
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise InputError(given, "cannot read the spectrum: no such file")
        return SpectrumFile(given)
    submission = specmod.default_submission(source)
    for candidate in (specmod.fits_path(submission), submission):
        if candidate.is_file():
            try:
                found = SpectrumFile(candidate)
            except InputError as exc:
                log.warning("%s; the quicklook shows the quick estimate", exc)
                continue
            if candidate.stat().st_mtime < source.stat().st_mtime:
                log.warning("%s is older than %s: its spectrum may not match the file", candidate, source)
            log.info("quicklook spectrum from %s", candidate)
            return found
    return None


def _plot_spectrum(plt, spec: Spectrum | None, title: str, partial: Path, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
    if spec is None or not np.isfinite(spec.depth).any():
        _empty(ax, "no transit found in the white light: no quick spectrum\n"
                   "(the dip is not 3 sigma deep; run arielstream spectrum for a fit)")
        ax.set_title("transmission spectrum (quick estimate)")
    else:
        ppm = 1e6
        keep = np.isfinite(spec.depth)
        wl, depth, sigma = spec.wavelength[keep], spec.depth[keep] * ppm, spec.sigma[keep] * ppm
        airs = wl > FGS1_WAVELENGTH_UM + 1e-9
        colour = "#7f7f7f" if airs.sum() > 2 * N_SPECTRUM_BINS else "#1f77b4"
        ax.errorbar(wl[airs], depth[airs], yerr=sigma[airs], fmt="o", ms=2.5, lw=0.6, color=colour,
                    alpha=0.6 if colour == "#7f7f7f" else 1.0, label=f"{AIRS.name}: {spec.label}")
        if colour == "#7f7f7f":  # many noisy points: their inverse-variance means in wavelength bins
            bwl, bd, bs = _binned(wl[airs], depth[airs], sigma[airs], N_SPECTRUM_BINS)
            ax.errorbar(bwl, bd, yerr=bs, fmt="o", ms=5, color="#1f77b4",
                        label=f"{AIRS.name}: binned ×{N_SPECTRUM_BINS}")
        if (~airs).any():
            ax.errorbar(wl[~airs], depth[~airs], yerr=sigma[~airs], fmt="s", ms=6, color="#d62728",
                        label=f"{FGS1.name} ({FGS1_WAVELENGTH_UM} µm)")
        if math.isfinite(spec.white):
            ax.axhline(spec.white * ppm, color="k", ls="--", lw=0.8, label=f"{AIRS.name} white light")
        ax.set_title(spec.title, color="#b22222" if spec.quick else "black",
                     fontweight="bold" if spec.quick else "normal", fontsize=10)
        ax.legend(fontsize=7, loc="best")
        if spec.note:
            ax.text(0.01, 0.02, spec.note, transform=ax.transAxes, fontsize=7.5, color="#b22222", va="bottom")
    ax.set_xlabel(UM)
    ax.set_ylabel("transit depth (ppm)")
    fig.suptitle(title)
    _save(plt, fig, partial, path)


def _binned(wl: np.ndarray, depth: np.ndarray, sigma: np.ndarray, n: int):
    """Inverse-variance means of ``depth`` in ``n`` groups of consecutive wavelengths (sorted)."""
    order = np.argsort(wl)
    out = []
    for group in np.array_split(order, n):
        w = np.where(np.isfinite(sigma[group]) & (sigma[group] > 0), 1.0 / np.square(sigma[group]), 0.0)
        if w.sum() > 0:
            out.append((wl[group].mean(), float((w * depth[group]).sum() / w.sum()), 1.0 / math.sqrt(w.sum())))
    return tuple(np.array(v) for v in zip(*out, strict=True)) if out else (np.array([]),) * 3


def _shade(ax, time: np.ndarray | None, inside: np.ndarray | None, label: str | None) -> None:
    """Shade the bins of ``time`` taken as in transit."""
    if time is None or inside is None or not inside.any():
        return
    cells = edges(time)
    for k in np.flatnonzero(inside):
        ax.axvspan(cells[k], cells[k + 1], color="#bbbbbb", alpha=0.35, lw=0, label=label)
        label = None


def _plot_lightcurves(plt, lc: lcmod.LightCurves, spec: Spectrum | None, title: str, partial: Path,
                      path: Path) -> None:
    fig, (ax_w, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    if spec is not None and spec.quick:
        _shade(ax_w, lc.airs_time if spec.airs_in_transit is not None else lc.fgs1_time,
               spec.airs_in_transit if spec.airs_in_transit is not None else spec.fgs1_in_transit,
               "in transit (quick estimate)")
    if lc.airs_white is not None:
        assert lc.airs_white_err is not None  # light curves set it with airs_white
        flux, err = lcmod.normalise(lc.airs_white, lc.airs_white_err)
        ax_w.errorbar(lc.airs_time, flux, yerr=err, fmt="o-", ms=3, label=f"{AIRS.name} white")
    if lc.fgs1_flux is not None:
        assert lc.fgs1_flux_err is not None  # light curves set it with fgs1_flux
        flux, err = lcmod.normalise(lc.fgs1_flux, lc.fgs1_flux_err)
        ax_w.errorbar(lc.fgs1_time, flux, yerr=err, fmt="s-", ms=3, label=FGS1.name)
    ax_w.set_title("white light (normalised to the median)")
    ax_w.set_xlabel("time (h)")
    ax_w.set_ylabel("normalised flux")
    if ax_w.get_legend_handles_labels()[0]:
        ax_w.legend(fontsize=8)
    if lc.airs_flux is not None:
        # light curves set the AIRS fields together
        assert lc.airs_flux_err is not None and lc.wavelength_label is not None and lc.wavelength is not None
        finite = np.flatnonzero(np.isfinite(lc.airs_flux).all(axis=0))
        picks = finite[np.linspace(0, finite.size - 1, min(N_SPECTRAL, finite.size)).astype(int)] \
            if finite.size else []
        for k, j in enumerate(picks):
            flux, _ = lcmod.normalise(lc.airs_flux[:, j], lc.airs_flux_err[:, j])
            ax_s.plot(lc.airs_time, flux - 0.01 * k, ".-",
                      label=f"{lc.wavelength[j]:.2f} µm ({lc.wavelength_label[j]}) − {0.01 * k:.2f}")
        if len(picks):
            ax_s.legend(fontsize=7)
        else:
            ax_s.text(0.5, 0.5, "no AIRS column finite at every time", ha="center", va="center",
                      transform=ax_s.transAxes)
    ax_s.set_title(f"{AIRS.name} spectral (rows {lc.aperture_rows[0]}–{lc.aperture_rows[1]}), offset")
    ax_s.set_xlabel("time (h)")
    fig.suptitle(title)
    _save(plt, fig, partial, path)


def _plot_centroid(plt, lc: lcmod.LightCurves, title: str, partial: Path, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")  # as wide as the others: one scale on the page
    if lc.fgs1_centroid is not None:
        for axis, name in enumerate("xy"):
            track = lc.fgs1_centroid[:, axis]
            with quiet_nan():  # no finite centroid (no FGS1 data in any bin): a NaN median
                median = np.nanmedian(track)
            ax.plot(lc.fgs1_time, track - median, ".-", label=f"{name} (median {median:.2f} px)")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {FGS1.name} data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"{FGS1.name} flux-weighted centroid")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("offset from median (px)")
    fig.suptitle(title)
    _save(plt, fig, partial, path)


def _page(source: Path, entries: list[dict[str, Any]], attrs: dict[str, str], spectrum_note: str) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
        f"<title>arielstream quicklook: {esc(source.name)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}section{margin-bottom:2em}"
        "figure{display:inline-block;vertical-align:top;width:48%;margin:0 0.5% 1em 0}"
        "figure img{width:100%;height:auto;border:1px solid #ccc}"
        "figcaption{font-size:0.85em;color:#444}.quick{color:#b22222}</style></head><body>",
        f"<h1>Quicklook of {esc(str(source))}</h1>",
        f"<p>arielstream {esc(attrs.get('arielstream_version', '?'))}, profile {esc(attrs.get('profile', '?'))}, "
        f"{len(entries)} observation(s). {spectrum_note}</p><ul>",
    ]
    parts += [f"<li><a href='#{esc(e['anchor'])}'>{esc(e['title'])}</a></li>" for e in entries]
    parts.append("</ul>")
    for e in entries:
        parts.append(f"<section id='{esc(e['anchor'])}'><h2>{esc(e['title'])}</h2>")
        for name, caption in zip(e["files"], e["captions"], strict=True):
            parts.append(f"<figure><a href='{esc(name)}'><img src='{esc(name)}' alt='{esc(name)}'></a>"
                         f"<figcaption>{caption}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def quicklook(path: str | Path, out_dir: str | Path, obs: Sequence[int] | None = None, *,
              spectrum: str | Path | None = None, **extract_options: Any) -> Path:
    """Write the PNGs of each chosen (default: every done) observation and ``index.html``; returns the index.

    ``spectrum``: a file of ``arielstream spectrum`` (``.fits.h5`` or submission ``.csv``)
    to draw; by default ``OUT.submission.fits.h5`` or ``OUT.submission.csv`` beside
    ``path`` where there is one, else the quick estimate (:func:`quick_spectrum`).

    The source is checked (readable, an arielstream file, at least one done observation
    among those chosen, a given spectrum readable: :class:`InputError`) before ``out_dir``
    is created; a folder or file that cannot be written is an
    :class:`~arielstream.errors.OutputError` naming it.
    """
    path, out_dir = Path(path), Path(out_dir)
    check_product_target(out_dir, path)
    entries: list[dict[str, Any]] = []
    with open_output(path) as f, staged() as staging:
        attrs = {k: text(v) for k, v in f.attrs.items()}
        chosen = lcmod.require_done(f, path, obs, "show")
        spectra = find_spectrum(path, spectrum)
        plt = _pyplot()
        with output_errors(out_dir, "create the quicklook folder"):
            out_dir.mkdir(parents=True, exist_ok=True)
        for index in chosen:
            planet_id, visit = int(f[schema.PLANET_ID][index]), int(f[schema.VISIT][index])
            stem = f"{planet_id}_visit{visit}"
            title = f"planet {planet_id} visit {visit} (observation {index})"
            lc = lcmod.observation_light_curves(f, index, **extract_options)
            quick = quick_spectrum(lc)
            spec = (spectra.spectrum(lc) if spectra is not None else None) or quick
            files, captions = [], []
            for what in PLOTS:
                name = f"{stem}_{what}.png"
                target = out_dir / name
                partial = staging.path(target)
                if what == "frames":
                    _plot_frames(plt, f, index, title, partial, target)
                elif what == "dq":
                    _plot_dq(plt, f, index, title, partial, target)
                elif what == "lightcurves":
                    _plot_lightcurves(plt, lc, quick, title, partial, target)
                elif what == "spectrum":
                    _plot_spectrum(plt, spec, title, partial, target)
                else:
                    _plot_centroid(plt, lc, title, partial, target)
                files.append(name)
                caption = html.escape(CAPTIONS[what])
                if what == "spectrum":
                    caption = ("<span class='quick'>Quick estimate, not a fit</span> (out-of-transit minus "
                               "in-transit mean of the normalised light curves).") if spec is None or spec.quick \
                        else f"Transmission spectrum from {html.escape(str(spectra.path if spectra else ''))}."
                captions.append(caption)
            entries.append({"anchor": stem, "title": title, "files": files, "captions": captions})
            log.info("%s: quicklook images rendered (%d)", title, len(files))
        note = (f"Spectra from {html.escape(str(spectra.path))}." if spectra is not None else
                "<span class='quick'>Spectra: quick estimates from the light curves</span> "
                "(no spectrum file of <code>arielstream spectrum</code> beside the source).")
        index_path = out_dir / "index.html"
        page = _page(path, entries, attrs, note).encode("utf-8", errors="replace")  # the page says charset utf-8
        with output_errors(index_path, "write the quicklook file"):
            staging.path(index_path).write_bytes(page)  # staged last: renamed last
            index_path.unlink(missing_ok=True)  # stopped during the renames: no index rather than a mixed one
        staging.commit("write the quicklook file")
    log.info("%s: quicklook page written (%d observation(s))", index_path, len(entries))
    return index_path
