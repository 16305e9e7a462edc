"""What each option means, in one line: the one table read by ``--help`` and by ``init-config``.

Keys are the option names of :class:`~arielstream.config.options.CalibrationConfig`
(``calibration``) and :class:`~arielstream.config.options.RunOptions` (``run``), as
written in a TOML config file. The command line's help of an option that sets one
of them (``--airs-bin`` sets ``airs_bin``) and the comment of the TOML template
(:mod:`arielstream.config.template`) both come from here, with the default added
where they are shown; the template refuses to render an option missing here.
"""

from __future__ import annotations

DESCRIPTIONS: dict[str, dict[str, str]] = {
    "calibration": {
        "profile": "default: the recipe, non-linearity on, cosmic rays rejected per bin, NaN bad pixels | "
                   "notebook: the organisers' numbers | "
                   "full: default + spatial outliers, interpolation, background, tracking",
        "adc": "step adc: raw counts to electrons (gain and offset of adc_info.csv)",
        "mask": "step mask: flag dead and hot pixels in the data-quality plane (NaN the unusable ones)",
        "hot_sigma": "hot-pixel threshold: sigma-clipped dark outliers beyond this many sigma",
        "hot_maxiters": "iterations of the sigma clipping of the dark",
        "hot_rule": "hot pixels: physical (HOT, value kept, when the dark charge of one exposure > 0.1 x read "
                    "noise; HOT_UNUSABLE, NaN, when it exceeds 2 x read noise^2; needs read.parquet) | sigma (the "
                    "notebook: every hot_sigma outlier of the dark frame unusable)",
        "nonlinearity": "step nonlinearity: the per-pixel correction of linear_corr.parquet",
        "dark": "step dark: subtract dark current times the integration time",
        "cds": "step cds: correlated double sampling (end read minus start read)",
        "time_binning": "step time_binning: sum CDS frames into time bins",
        "airs_bin": "CDS frames per AIRS-CH0 time bin",
        "fgs1_bin": "CDS frames per FGS1 time bin",
        "flat": "step flat: divide by the flat field",
        "saturation_level": "raw counts at or above which a read is saturated: flagged (dq SATURATED), its time "
                            "bin NaN unless bad_pixels = keep; 0: no check",
        "wavelength_cut": "step wavelength_cut: keep AIRS detector columns cut_start:cut_stop",
        "cut_start": "first AIRS detector column kept (the notebook's 39)",
        "cut_stop": "AIRS detector column after the last one kept (the notebook's 321)",
        "cosmic_rays": "flag and replace temporal outliers (cosmic rays) in each pixel's CDS series",
        "cr_method": "cosmic rays: bin (each bin's largest CDS sample against the bin's others, in the streaming "
                     "pass) or series (each pixel's whole series, iterated: ~2.5 s more per observation)",
        "cr_bin_sigma": "cosmic rays, bin: clip level (sigma of the bin's other samples, at least the read noise)",
        "cr_sigmas": "cosmic rays, series: clip levels (sigma) of the fixed first iterations, one per iteration",
        "cr_until_clean": "cosmic rays, series: then iterate at cr_clean_sigma until nothing new is flagged",
        "cr_clean_sigma": "cosmic rays, series: clip level (sigma) of the iterations until clean",
        "cr_max_iters": "cosmic rays, series: most iterations until clean",
        "cr_replace": "cosmic rays, series: median (the median of the sample's bin) or mask (left out, bin rescaled)",
        "spatial_outliers": "AIRS: flag residuals from a median filter along the wavelength axis",
        "spatial_kernel": "spatial outliers: median-filter length in pixels (odd)",
        "spatial_sigma": "spatial outliers: threshold in sigma",
        "interpolate_bad_pixels": "fill isolated NaN pixels from their spatial neighbours",
        "master_calibration": "off | planet: dark and flat combined over the planet's visits | dataset: over the run",
        "background": "subtract the sky background (AIRS: rows airs_background_rows of the 15 columns around each "
                      "column; FGS1: frame edges)",
        "airs_background_rows": "AIRS rows that measure the background",
        "fgs1_background_width": "FGS1: background pixels are this close to the frame's edge",
        "background_sigma": "background: sigma clipping of the background pixels",
        "tracking": "record the FGS1 centroid and the AIRS trace row of each time bin",
        "spatial_bin": "sum spatial_bin x spatial_bin pixels of the output into one: 1 (no binning), 2, 4, 8, 16 or 32",
        "wavelength_order": "AIRS x axis: target (ascending, wl_2..wl_283) or detector (columns 39..320, the "
                            "notebook's)",
        "bad_pixels": "nan: bad pixels are NaN in the cube | keep: keep their computed values (DQ still flags them)",
        "missing_calibration": "a missing calibration file fails the observation (error) or skips its step (skip)",
        "instruments": "which instruments to calibrate",
    },
    "run": {
        "split": "sub-folder of planets: train or test",
        "planets": "only these planet ids; leave out for every planet of the split",
        "memory": "RAM budget of the whole run on this machine, e.g. 4GB; with dask, of one task",
        "jobs": "parallel workers; leave out (or \"auto\") to derive them from memory and cores",
        "backend": "loky (this machine) or dask (a dask.distributed cluster)",
        "scheduler": "dask.distributed scheduler address, e.g. tcp://10.0.0.5:8786; needed with backend dask only",
        "task_timeout": "seconds; a task running longer counts as a dead worker (retried once, then failed); "
                        "leave out for no limit",
        "force": "recompute everything even if an output made with another config or code version exists (a "
                 "switch of one run: a config file may not set it to true)",
        "progress": "true: a progress bar, false: none; leave out for a bar on a terminal only (-v adds a log line "
                    "per observation, with or without it)",
        "log_file": "write OUT.h5.log beside the output",
        "verify_inputs": "input manifest (arielstream manifest) that every input file is checked against before "
                         "it is read; leave out to use DATA_DIR/arielstream-manifest.json when it exists",
        "frozen": "refuse (exit 78) instead of recomputing observations whose input files changed (size or "
                  "modification time) since they were calibrated",
        "drop_missing": "leave out of the output the observations no longer in the data folder (by default they "
                        "are kept, with a warning)",
        "parts": "write each observation into a part file of its own (ordinary writes, published by a link; "
                 "storage needs only NFS semantics) and publish an index over them; leave out for on with backend "
                 "dask, off with loky",
    },
}
