"""``make bench-science``: how close each profile's light curves come to the simulator's truth.

Simulated planets with a known transit depth per wavelength are calibrated with
each profile (notebook, default, full; the default with the previous rules: the
notebook's hot-pixel clip, bad aperture pixels dropped, no cosmic-ray rejection; the
default without its cosmic-ray rejection; the full profile with the whole-series
rejection) and their light curves extracted
(:func:`arielstream.products.lightcurves.observation_light_curves`, plain sum,
background on). Each light curve is fitted by weighted least squares with the
*true* transit shape (the simulator's timing, binned like the data) and a linear
baseline: ``flux = a + b (t - tmean) - c shape``, depth ``c / a``. Reported per
set of planets and profile:

* the RMS error of the per-wavelength AIRS depths against the injected ones (ppm),
  beside the RMS that the propagated errors predict, and their mean (the bias);
* the AIRS white-light depth error against the flux-weighted mean of the injected
  depths, and the FGS1 depth error (RMS over observations, ppm);
* the out-of-transit scatter of the fits' residuals divided by the light curves'
  own errors (photon + read noise, :data:`~arielstream.products.lightcurves.VARIANCE_MODEL`):
  1 when the errors describe the noise.

Then the spectrum step (:func:`arielstream.products.spectrum.write_spectrum`:
timing fitted, star info used, profile-filled extraction for every profile)
runs on each calibrated file, in a fresh process that reads the calibrated file
only; its submission is scored against the simulator's ``train.csv``
(:func:`arielstream.products.score.score_files`, naive prediction = the truth's
mean and standard deviation, 0 by construction) beside the RMS error of its
AIRS depths and its FGS1 depth against the injected ones, the step's seconds
per planet and its peak RSS (VmHWM of that process, imports included).

Three sets of the same planets: ``quiet`` (no cosmic rays, no background,
pointing jitter zeroed), ``hits+sky`` (cosmic rays at 2e-4 per pixel per second,
a background on every planet, no jitter) and ``jitter`` (the simulator's pointing
jitter only). The simulator has no jitter switch: the sets without replace its
jitter draw by zeros (the random streams are drawn all the same). The sets are
simulated once into ``$ARIELSTREAM_BENCH_DIR`` (default ``~/.cache/arielstream-bench``).

    python -m benchmarks.science [--planets 3] [--scale 0.2] [--seed 7] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .bench import _write_block, describe_machine

BEGIN, END = "<!-- science:begin -->", "<!-- science:end -->"
# label -> (calibration options, bad aperture pixels filled from the spatial profile)
PROFILES: dict[str, tuple[dict[str, Any], bool]] = {
    "notebook": ({"profile": "notebook"}, True),
    "default, previous rules": ({"profile": "default", "hot_rule": "sigma", "cosmic_rays": False}, False),
    "default, cosmic rays off": ({"profile": "default", "cosmic_rays": False}, True),
    "default": ({"profile": "default"}, True),
    "full": ({"profile": "full"}, True),
    "full, cosmic rays over the whole series": ({"profile": "full", "cr_method": "series"}, True),
}
SETS: dict[str, dict[str, float]] = {  # simulate_dataset's cosmic_rate and background_fraction; jitter 0/1
    "quiet": {"cosmic_rate": 0.0, "background_fraction": 0.0, "jitter": 0},
    "hits+sky": {"cosmic_rate": 2e-4, "background_fraction": 1.0, "jitter": 0},
    "jitter": {"cosmic_rate": 0.0, "background_fraction": 0.0, "jitter": 1},
}


@contextlib.contextmanager
def jitter(on: bool) -> Iterator[None]:
    """The simulator's pointing jitter as drawn (``on``) or zeroed (same random draws)."""
    from arielstream.simulate import dataset as sim

    original = sim._draw_jitter
    if not on:
        def zeroed(t_h, rng):
            track, params = original(t_h, rng)
            return np.zeros_like(track), params

        sim._draw_jitter = zeroed
    try:
        yield
    finally:
        sim._draw_jitter = original


@contextlib.contextmanager
def patched(module: object, name: str, value: object) -> Iterator[None]:
    """``module.name = value`` for the duration of the block."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def simulated_set(name: str, planets: int, scale: float, seed: int) -> Path:
    """The folder of set ``name``, simulated on first use (kept in the bench cache)."""
    from arielstream.simulate.dataset import simulate_dataset

    cache = Path(os.environ.get("ARIELSTREAM_BENCH_DIR", Path.home() / ".cache" / "arielstream-bench"))
    root = cache / f"science-{name.replace('+', '-')}-p{planets}-s{scale:g}-seed{seed}"
    if not (root / "simulation_truth" / "manifest.json").exists():
        options = SETS[name]
        with jitter(bool(options["jitter"])):
            simulate_dataset(root, n_planets=planets, scale=scale, seed=seed, cosmic_rate=options["cosmic_rate"],
                             background_fraction=options["background_fraction"])
    return root


def binned(per_frame: np.ndarray, n_bins: int, frames_per_bin: int) -> np.ndarray:
    """Mean of a per-frame series over each time bin."""
    return per_frame[: n_bins * frames_per_bin].reshape(n_bins, frames_per_bin).mean(axis=1)


def fit_depth(time_h: np.ndarray, flux: np.ndarray, err: np.ndarray,
              shape: np.ndarray) -> tuple[float, float, float, int]:
    """Weighted fit of ``a + b (t - tmean) - c shape``: depth ``c/a``, its sigma, out-of-transit chi² and bins."""
    design = np.stack([np.ones_like(shape), time_h - time_h.mean(), -shape], axis=1)
    w = 1.0 / err**2
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    a, _, c = params = cov @ (design.T @ (w * flux))
    depth = c / a
    sigma = abs(depth) * np.sqrt(cov[0, 0] / a**2 + cov[2, 2] / c**2 - 2 * cov[0, 2] / (a * c))
    oot = shape <= 0
    resid = (flux - design @ params) / err
    dof = flux.size / (flux.size - design.shape[1])  # the fit used 3 parameters of these bins
    return float(depth), float(sigma), float(np.sum(resid[oot] ** 2) * dof), int(oot.sum())


def measure(data: Path, out: Path, fill: bool = True) -> dict[str, float]:
    """Depth errors and scatter ratios of every observation of a calibrated file against the truth."""
    from arielstream.products import lightcurves as lc

    spec_err, spec_sigma, white_err, fgs1_err = [], [], [], []
    chi2 = {"spectral": [0.0, 0], "white": [0.0, 0]}
    with h5py.File(out) as f:
        config = lc.file_config(f)
        for i in lc.done_observations(f):
            if fill:
                curves = lc.observation_light_curves(f, i)
            else:  # bad pixels dropped from the aperture sums, as before the profile fill
                with patched(lc, "MIN_KEPT", np.inf):
                    curves = lc.observation_light_curves(f, i)
            truth = np.load(data / "simulation_truth" / "train" / f"{curves.planet_id}_visit{curves.visit}.npz")
            t, flux, err = curves.airs_time, curves.airs_flux, curves.airs_flux_err
            white, white_sigma = curves.airs_white, curves.airs_white_err
            t1, flux1, err1 = curves.fgs1_time, curves.fgs1_flux, curves.fgs1_flux_err
            assert t is not None and flux is not None and err is not None and white is not None
            assert white_sigma is not None and t1 is not None and flux1 is not None and err1 is not None
            shape = binned(truth["airs_transit_shape"], t.size, lc.reads_per_bin(config, "AIRS-CH0"))
            true_depth = truth["depth_airs"][curves.column]
            for k in range(flux.shape[1]):
                if not np.isfinite(flux[:, k]).all():
                    continue
                d, s, c2, n = fit_depth(t, flux[:, k], err[:, k], shape)
                spec_err.append(d - true_depth[k])
                spec_sigma.append(s)
                chi2["spectral"][0] += c2
                chi2["spectral"][1] += n
            weights = truth["airs_column_flux"][curves.column]
            d, _, c2, n = fit_depth(t, white, white_sigma, shape)
            white_err.append(d - np.sum(weights * true_depth) / np.sum(weights))
            chi2["white"][0] += c2
            chi2["white"][1] += n
            shape1 = binned(truth["fgs1_transit_shape"], t1.size, lc.reads_per_bin(config, "FGS1"))
            fgs1_err.append(fit_depth(t1, flux1, err1, shape1)[0]
                            - float(truth["depth_fgs1"]))

    def rms(values: list[float]) -> float:
        return float(np.sqrt(np.mean(np.square(values)))) * 1e6

    return {"spectral_rms": rms(spec_err), "spectral_bias": float(np.mean(spec_err)) * 1e6,
            "spectral_expected": rms(spec_sigma), "white_rms": rms(white_err),
            "fgs1_rms": rms(fgs1_err), "spectral_scatter": float(np.sqrt(chi2["spectral"][0] / chi2["spectral"][1])),
            "white_scatter": float(np.sqrt(chi2["white"][0] / chi2["white"][1])), "observations": len(white_err)}


def spectrum_child(out: str, submission: str) -> dict[str, float]:
    """In a fresh process: the spectrum step on one calibrated file; its seconds, peak RSS and planets."""
    from arielstream.products.spectrum import write_spectrum
    from arielstream.run.budget import peak_rss

    t0 = time.perf_counter()
    _, _, spectra = write_spectrum(out, submission)
    return {"seconds": time.perf_counter() - t0, "peak_rss": peak_rss(), "planets": int(spectra.planet_id.size)}


def depth_errors(submission: Path, truth: Path) -> dict[str, float]:
    """RMS of the submitted depths minus the truth (ppm): AIRS (wl_2 …) and FGS1 (wl_1), planets matched by id."""
    from arielstream.products.score import read_table

    sub, true = read_table(submission), read_table(truth)
    rows = {int(pid): k for k, pid in enumerate(sub.planet_id)}
    depth = np.stack([sub.values[rows[int(pid)], : true.values.shape[1]] for pid in true.planet_id])
    err = depth - true.values
    return {"airs_rms": float(np.sqrt(np.mean(err[:, 1:] ** 2))) * 1e6,
            "fgs1_rms": float(np.sqrt(np.mean(err[:, 0] ** 2))) * 1e6}


def airs_score(submission: Path, truth: Path) -> float:
    """The competition's metric with FGS1 weighted 0: the AIRS spectra's part of the score (clipped like it)."""
    from arielstream.products import score as sc

    mean, sigma, values = sc.validate(sc.read_table(submission), sc.read_table(truth))
    return sc.gaussian_score(values, mean, sigma, *sc.naive_prediction(values), fgs1_weight=0.0)


def measure_spectrum(data: Path, out: Path) -> dict[str, float]:
    """Spectrum of a calibrated file (in a child process), its score and depth errors against the truth."""
    from arielstream.products.score import score_files

    submission = out.with_suffix(".submission.csv")
    code = ("import json, sys; from benchmarks.science import spectrum_child; "
            "print('@@' + json.dumps(spectrum_child(*sys.argv[1:])))")
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(submission)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    if proc.returncode:
        raise RuntimeError(f"spectrum of {out} failed:\n{proc.stderr[-3000:]}")
    child = json.loads(proc.stdout.split("@@")[-1])
    truth = data / "train.csv"
    return {"score": score_files(submission, truth).score, "airs_score": airs_score(submission, truth),
            **depth_errors(submission, truth),
            "seconds_per_planet": child["seconds"] / child["planets"], "peak_rss": child["peak_rss"]}


def naive(data: Path) -> dict[str, float]:
    """The naive prediction (every depth the truth's mean): score 0 by construction, and its depth errors."""
    from arielstream.products.score import read_table

    true = read_table(data / "train.csv").values
    err = true - true.mean()
    return {"score": 0.0, "airs_score": 0.0, "airs_rms": float(np.sqrt(np.mean(err[:, 1:] ** 2))) * 1e6,
            "fgs1_rms": float(np.sqrt(np.mean(err[:, 0] ** 2))) * 1e6}


def run(planets: int, scale: float, seed: int) -> tuple[dict[tuple[str, str], dict[str, float]], dict]:
    """Every set through every profile: ``{(set, profile): metrics}`` and the set-up (``scores`` among it)."""
    import arielstream

    results = {}
    setup: dict = {"seconds": {}, "scores": {}}
    with tempfile.TemporaryDirectory(prefix="arielstream-science-") as tmp:
        for name in SETS:
            t0 = time.perf_counter()
            data = simulated_set(name, planets, scale, seed)
            setup["seconds"][f"simulate {name}"] = time.perf_counter() - t0
            manifest = json.loads((data / "simulation_truth" / "manifest.json").read_text())
            setup.setdefault("bins", manifest.get("n_bins"))
            setup["scores"][name, "naive prediction"] = naive(data)
            for profile, (options, fill) in PROFILES.items():
                out = Path(tmp) / f"{name}-{profile}.h5"
                t0 = time.perf_counter()
                arielstream.calibrate(data, out, config=arielstream.build_config(**options), jobs=1,
                                      progress=False, log_file=False)
                results[name, profile] = measure(data, out, fill)
                setup["seconds"][f"{name} {profile}"] = time.perf_counter() - t0
                print(f"{name} / {profile}: {results[name, profile]}", flush=True)
                t0 = time.perf_counter()
                setup["scores"][name, profile] = measure_spectrum(data, out)
                setup["seconds"][f"{name} {profile} spectrum"] = time.perf_counter() - t0
                print(f"{name} / {profile} spectrum: {setup['scores'][name, profile]}", flush=True)
    return results, setup


def table(results: dict[tuple[str, str], dict[str, float]], setup: dict, planets: int, scale: float,
          seed: int) -> str:
    """The Markdown block written into BENCHMARKS.md."""
    n_obs = next(iter(results.values()))["observations"]
    lines = [
        f"Machine: {describe_machine()}. `python -m benchmarks.science --planets {planets} --scale {scale:g} "
        f"--seed {seed}` ({sum(setup['seconds'].values()):.0f} s, simulation included).",
        f"Data: {planets} simulated planets per set ({n_obs} observations, scale {scale:g}: "
        f"{setup.get('bins', '?')} time bins per visit, the whole transit). quiet: no cosmic rays, no background, "
        "no jitter; hits+sky: cosmic rays 2e-4 /px/s and a background on every planet; jitter: the simulator's "
        "pointing jitter only.",
        "'default, previous rules': the default profile before the physical hot-pixel rule, the profile fill and "
        "the per-bin cosmic-ray rejection (hot_rule = sigma, bad aperture pixels dropped from the sums, "
        "cosmic_rays = false). 'full, cosmic rays over the whole series': cr_method = series, the iterated "
        "median/MAD rejection over each pixel's whole series that the full profile used before. "
        "Depths fitted with the true transit shape and a linear baseline (plain-sum light curves, background on). "
        "Depth errors: RMS against the injected truth, ppm (expected: the RMS of the propagated sigmas; bias: "
        "the mean error over all wavelengths). "
        "Scatter: out-of-transit residuals over the light curves' photon + read-noise errors (1 = as expected).",
        "",
        "| set | profile | AIRS depth error RMS ppm (expected) | AIRS bias ppm | white depth error ppm "
        "| FGS1 depth error ppm | spectral scatter / expected | white scatter / expected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, profile), m in results.items():
        lines.append(f"| {name} | {profile} | {m['spectral_rms']:.0f} ({m['spectral_expected']:.0f}) "
                     f"| {m['spectral_bias']:+.0f} | {m['white_rms']:.0f} | {m['fgs1_rms']:.0f} "
                     f"| {m['spectral_scatter']:.2f} "
                     f"| {m['white_scatter']:.2f} |")
    lines += [
        "",
        "Spectra (`arielstream spectrum`: transit timing fitted, star info used, profile-filled extraction for "
        "every profile, the 'previous rules' row included) scored against the simulator's train.csv with the "
        "competition's metric (naive prediction: the truth's mean and standard deviation, 0 by construction; "
        "1 = the exact depths with the metric's ideal sigmas; clipped to [0, 1]; FGS1 weighs 57.846 against 1 "
        "per AIRS wavelength; 'AIRS only': the same metric with FGS1 weighted 0). Depth errors: RMS of the "
        "submitted depths against the injected ones, ppm. The spectrum step reads the calibrated file only; "
        "s per planet and peak RSS (VmHWM, imports included) of a fresh process running it on the whole set.",
        "",
        "| set | prediction | score | score, AIRS only | AIRS depth error RMS ppm | FGS1 depth error ppm "
        "| spectrum s per planet | spectrum peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, profile), m in setup["scores"].items():
        cost = (f"{m['seconds_per_planet']:.1f} | {m['peak_rss'] / 1e6:.0f}" if "peak_rss" in m else "— | —")
        lines.append(f"| {name} | {profile} | {m['score']:.3f} | {m['airs_score']:.3f} | {m['airs_rms']:.0f} "
                     f"| {m['fgs1_rms']:.0f} | {cost} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the science benchmark, print the table and (unless ``--no-write``) update ``BENCHMARKS.md``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.science", description=__doc__.splitlines()[0])
    parser.add_argument("--planets", type=int, default=3, help="planets per set (default 3)")
    parser.add_argument("--scale", type=float, default=0.2, help="visit length relative to the real one")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)
    results, setup = run(args.planets, args.scale, args.seed)
    _write_block(table(results, setup, args.planets, args.scale, args.seed), BEGIN, END,
                 "## Science: light curves against the simulator's truth (`make bench-science`)", args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
