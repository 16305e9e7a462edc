"""Quicklook images of a calibrated file and an ``index.html`` to browse them.

Per observation (``<planet_id>_visit<v>_<what>.png`` in ``out_dir``):

``frames``      the time-averaged frame of each instrument (AIRS x = wavelength, y = row)
``dq``          the data-quality map of each instrument (which bits are set)
``lightcurves`` normalised white-light curves (AIRS, FGS1) and a few AIRS spectral ones
``centroid``    the FGS1 flux-weighted centroid track (x, y) against time

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import dq as dqbits
from ..errors import MissingDependencyError
from ..io import schema, store
from ..io.atomic import output_errors, staged
from ..io.output import check_product_target
from ..io.reader import open_output
from ..io.store import text
from ..layout import AIRS, FGS1
from ..nan import quiet_nan
from . import lightcurves as lcmod

log = logging.getLogger(__name__)

PLOTS = ("frames", "dq", "lightcurves", "centroid")
N_SPECTRAL = 5  # spectral light curves drawn


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


def _panels(plt, instruments: list[str]):
    """A figure with one panel per instrument, AIRS (wide) first."""
    return plt.subplots(1, len(instruments), figsize=(5.5 * len(instruments), 4.2), squeeze=False,
                        gridspec_kw={"width_ratios": [2.2 if i == AIRS.name else 1 for i in instruments]})


def _plot_frames(plt, f: h5py.File, index: int, title: str, partial: Path, path: Path) -> None:
    instruments = store.instruments_in(f)
    fig, axes = _panels(plt, instruments)
    for ax, inst in zip(axes[0], instruments, strict=True):
        mean = _mean_frame(f[schema.dataset(inst, schema.SIGNAL)], index)  # (x, y)
        finite = mean[np.isfinite(mean)]
        vmin, vmax = (np.percentile(finite, [1, 99.9]) if finite.size else (0, 1))
        im = ax.imshow(mean.T, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="viridis",
                       interpolation="nearest")
        ax.set_title(f"{inst}: mean frame")
        ax.set_xlabel("x (wavelength index, file order)" if inst == AIRS.name else "x (column)")
        ax.set_ylabel("y (row)")
        fig.colorbar(im, ax=ax, label="electrons per bin")
    fig.suptitle(title)
    _save(plt, fig, partial, path)


# "good" first, then one colour per DQ bit (tests check there is one for every bit of dq.BITS)
DQ_COLOURS = ["#ffffff", "#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#2ca02c", "#e377c2", "#8c564b",
              "#17becf", "#bcbd22"]


def dq_codes(dq: np.ndarray) -> np.ndarray:
    """0 where no bit is set, else 1 + the index of the lowest bit set (for a categorical map)."""
    dq = np.asarray(dq).astype(np.int64)
    codes = np.zeros(dq.shape, dtype=np.int64)
    for k, bit in reversed(list(enumerate(dqbits.BITS.values()))):
        codes[(dq & bit) != 0] = k + 1
    return codes


def _plot_dq(plt, f: h5py.File, index: int, title: str, partial: Path, path: Path) -> None:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    names = list(dqbits.BITS)
    cmap = ListedColormap(DQ_COLOURS[: len(names) + 1])
    norm = BoundaryNorm(np.arange(len(names) + 2) - 0.5, cmap.N)
    instruments = [i for i in store.instruments_in(f) if schema.dataset(i, schema.DQ) in f]
    fig, axes = _panels(plt, instruments)
    for ax, inst in zip(axes[0], instruments, strict=True):
        dq = f[schema.dataset(inst, schema.DQ)][index]
        counts = ", ".join(f"{name} {int(np.count_nonzero(dq & bit))}" for name, bit in dqbits.BITS.items()
                           if np.any(dq & bit))
        im = ax.imshow(dq_codes(dq).T, origin="lower", aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(f"{inst}: DQ ({counts or 'no bit set'})", fontsize=9)
        ax.set_xlabel("x")
        ax.set_ylabel("y (row)")
        bar = fig.colorbar(im, ax=ax, ticks=np.arange(len(names) + 1))
        bar.ax.set_yticklabels(["good", *names], fontsize=7)
    fig.suptitle(title)
    _save(plt, fig, partial, path)


def _plot_lightcurves(plt, lc: lcmod.LightCurves, title: str, partial: Path, path: Path) -> None:
    fig, (ax_w, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
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
                      label=f"{lc.wavelength_label[j]} ({lc.wavelength[j]:.2f} µm) − {0.01 * k:.2f}")
        if len(picks):
            ax_s.legend(fontsize=7)
        else:
            ax_s.text(0.5, 0.5, "no AIRS column finite at every time", ha="center", va="center",
                      transform=ax_s.transAxes)
    ax_s.set_title(f"{AIRS.name} spectral (rows {lc.aperture_rows[0]}–{lc.aperture_rows[1]}), offset")
    ax_s.set_xlabel("time (h)")
    fig.suptitle(title)
    fig.tight_layout()
    _save(plt, fig, partial, path)


def _plot_centroid(plt, lc: lcmod.LightCurves, title: str, partial: Path, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
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
    fig.tight_layout()
    _save(plt, fig, partial, path)


def _page(source: Path, entries: list[dict[str, Any]], attrs: dict[str, str]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
        f"<title>arielstream quicklook: {esc(source.name)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}img{max-width:48%;margin:2px;border:1px solid #ccc}"
        "section{margin-bottom:2em}</style></head><body>",
        f"<h1>Quicklook of {esc(str(source))}</h1>",
        f"<p>arielstream {esc(attrs.get('arielstream_version', '?'))}, profile {esc(attrs.get('profile', '?'))}, "
        f"{len(entries)} observation(s).</p><ul>",
    ]
    parts += [f"<li><a href='#{esc(e['anchor'])}'>{esc(e['title'])}</a></li>" for e in entries]
    parts.append("</ul>")
    for e in entries:
        parts.append(f"<section id='{esc(e['anchor'])}'><h2>{esc(e['title'])}</h2>")
        for name in e["files"]:
            parts.append(f"<a href='{esc(name)}'><img src='{esc(name)}' alt='{esc(name)}'></a>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def quicklook(path: str | Path, out_dir: str | Path, obs: Sequence[int] | None = None, **extract_options: Any) -> Path:
    """Write the PNGs of each chosen (default: every done) observation and ``index.html``; returns the index.

    The source is checked (readable, an arielstream file, at least one done observation
    among those chosen: :class:`InputError`) before ``out_dir`` is created; a folder or
    file that cannot be written is an :class:`~arielstream.errors.OutputError` naming it.
    """
    path, out_dir = Path(path), Path(out_dir)
    check_product_target(out_dir, path)
    entries: list[dict[str, Any]] = []
    with open_output(path) as f, staged() as staging:
        attrs = {k: text(v) for k, v in f.attrs.items()}
        chosen = lcmod.require_done(f, path, obs, "show")
        plt = _pyplot()
        with output_errors(out_dir, "create the quicklook folder"):
            out_dir.mkdir(parents=True, exist_ok=True)
        for index in chosen:
            planet_id, visit = int(f[schema.PLANET_ID][index]), int(f[schema.VISIT][index])
            stem = f"{planet_id}_visit{visit}"
            title = f"planet {planet_id} visit {visit} (observation {index})"
            lc = lcmod.observation_light_curves(f, index, **extract_options)
            files = []
            for what in PLOTS:
                name = f"{stem}_{what}.png"
                target = out_dir / name
                partial = staging.path(target)
                if what == "frames":
                    _plot_frames(plt, f, index, title, partial, target)
                elif what == "dq":
                    _plot_dq(plt, f, index, title, partial, target)
                elif what == "lightcurves":
                    _plot_lightcurves(plt, lc, title, partial, target)
                else:
                    _plot_centroid(plt, lc, title, partial, target)
                files.append(name)
            entries.append({"anchor": stem, "title": title, "files": files})
            log.info("%s: quicklook images rendered (%d)", title, len(files))
        index_path = out_dir / "index.html"
        page = _page(path, entries, attrs).encode("utf-8", errors="replace")  # the page says charset utf-8
        with output_errors(index_path, "write the quicklook file"):
            staging.path(index_path).write_bytes(page)  # staged last: renamed last
            index_path.unlink(missing_ok=True)  # stopped during the renames: no index rather than a mixed one
        staging.commit("write the quicklook file")
    log.info("%s: quicklook page written (%d observation(s))", index_path, len(entries))
    return index_path
