"""Calibrate the Ariel Data Challenge 2025 data in an offline Kaggle kernel with arielstream.

Install (a competition kernel has no internet, and arielstream is not on PyPI)
------------------------------------------------------------------------------
1. On a machine with the repository: ``make wheel`` writes
   ``dist/arielstream-<version>-py3-none-any.whl``.
2. Upload that wheel and this script as a Kaggle dataset (say ``arielstream-wheel``) and add the
   dataset to the notebook (Add Input).
3. In a notebook cell::

       !pip install --no-index --no-deps /kaggle/input/arielstream-wheel/arielstream-*.whl

   ``--no-deps``: numpy, pyarrow, astropy, numexpr, joblib, h5py and tqdm are already in Kaggle's
   image (numba too, which arielstream uses when it is there); ``--no-index``: pip never tries the
   network. Nothing is built: a wheel installs from the read-only ``/kaggle/input``.

Run
---
::

    !python /kaggle/input/arielstream-wheel/kaggle_calibrate.py              # the test split
    !python /kaggle/input/arielstream-wheel/kaggle_calibrate.py --split train

(or paste this file into a cell and call ``main([])``, or ``main(["--split", "train"])``).

Where it writes
---------------
* The calibrated HDF5 file, ``<scratch>/arielstream/<split>.h5`` (and its log ``<split>.h5.log``),
  goes to the scratch folder ``/kaggle/tmp``: it is the large intermediate (float32, ~7.5 MB per
  observation at the default 187 time bins: ~8 GB for the ~1,100 train planets), which would take
  much of the 20 GB that ``/kaggle/working`` keeps, and only this session's next steps read it.
  Running the script again in the same session resumes it, or finds it complete at once.
* The organisers' baseline files, ``data_<split>.npy`` ``(obs, bins, 282, 32)``,
  ``data_<split>_FGS.npy`` ``(obs, bins, 32, 32)`` and ``data_<split>_index.csv`` (planet_id and
  visit of each row), go to ``/kaggle/working``, which Kaggle keeps with the notebook's output.
  Rows are in the notebook's detector wavelength order; bad pixels are 0 (``--fill-value nan``
  keeps them NaN). At float64 (15 MB per observation) the full train split is ~17 GB, most of
  the 20 GB limit: ``--dtype float32`` halves it, ``--work /kaggle/tmp/npy`` keeps it out.

* The competition's submission, ``/kaggle/working/submission.csv`` (``planet_id, wl_1 … wl_283,
  sigma_1 … sigma_283``, one row per planet: the file a competition kernel submits), comes from the
  spectrum step (:func:`arielstream.products.spectrum.write_spectrum`: transit timing from the white
  light, a depth and its sigma per wavelength, visits combined) run on the calibrated file; the
  per-visit fits behind it go beside the HDF5 file (``<split>.fits.h5`` in scratch). For the train
  split the submission is also scored against ``train.csv`` (the competition's metric; 0 is the
  naive prediction, 1 the exact depths).

Memory and cores: ``--memory 24GB`` is the budget of the whole process tree on a 4-vCPU, ~30 GB
kernel (the rest is the notebook's own); ``--jobs auto`` picks the worker count from it.

On failure it prints one line to stderr and exits non-zero (1; 130 when interrupted: what was
calibrated is kept, run it again to resume).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import h5py

import arielstream
from arielstream.errors import ArielstreamError, ConfigError, RunInterrupted
from arielstream.products.score import score_files
from arielstream.products.spectrum import write_spectrum

PROG = "kaggle_calibrate"
KAGGLE_INPUT = Path("/kaggle/input/ariel-data-challenge-2025")
KAGGLE_WORKING = Path("/kaggle/working")
KAGGLE_SCRATCH = Path("/kaggle/tmp")
SUBMISSION = "submission.csv"  # the name Kaggle submits from /kaggle/working
KERNEL_MEMORY = "24GB"  # a 4-vCPU, ~30 GB kernel, less what the notebook itself holds


def say(message: str, *, error: bool = False) -> None:
    """The script's own output: it is a command, what it prints is its interface (the library logs)."""
    print(message, file=sys.stderr if error else sys.stdout)


def _jobs(text: str) -> int | None:
    """``auto`` (None: the worker count follows from the memory budget) or a positive integer."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto: {text!r}")
    return value


def _fill(text: str) -> float | None:
    """The value written for bad pixels; ``nan`` keeps them NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or nan: {text!r}") from None
    return None if math.isnan(value) else value


def build_parser() -> argparse.ArgumentParser:
    """The script's options, with the Kaggle kernel's folders and memory as defaults."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Calibrate one split of the Ariel Data Challenge 2025 data with arielstream, then "
                               "export the organisers' data_<split>.npy files and write submission.csv (see the module "
                               "docstring).")
    parser.add_argument("--input", type=Path, default=KAGGLE_INPUT,
                        help=f"the competition data folder (default {KAGGLE_INPUT})")
    parser.add_argument("--split", default="test", help="the split to calibrate: test or train (default test)")
    parser.add_argument("--work", type=Path, default=KAGGLE_WORKING,
                        help=f"where the .npy files and {SUBMISSION} go: kept with the notebook, 20 GB "
                             f"(default {KAGGLE_WORKING})")
    parser.add_argument("--scratch", type=Path, default=KAGGLE_SCRATCH,
                        help=f"where the calibrated HDF5 file and its log go (default {KAGGLE_SCRATCH})")
    parser.add_argument("--memory", default=KERNEL_MEMORY,
                        help=f"RAM budget of the whole run (default {KERNEL_MEMORY})")
    parser.add_argument("--jobs", type=_jobs, default=None, metavar="N|auto",
                        help="worker processes (default auto: from --memory and the cores)")
    parser.add_argument("--planets", type=int, nargs="+", metavar="ID", help="only these planets (a quick try)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="dtype of the .npy files (default float64, as the organisers' notebook wrote)")
    parser.add_argument("--fill-value", type=_fill, default=0.0, metavar="X|nan",
                        help="value of bad pixels in the .npy files (default 0; nan keeps them NaN)")
    parser.add_argument("--force", action="store_true",
                        help="recalibrate from scratch when the HDF5 file was made with other options or code")
    parser.add_argument("--debug", action="store_true", help="a traceback instead of the one-line error message")
    return parser


def run(args: argparse.Namespace) -> int:
    """Calibrate ``args.input/args.split`` into scratch, export the npy files into work; the exit code."""
    out_dir = args.scratch.resolve() / "arielstream"
    out_dir.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{args.split}.h5"
    summary = arielstream.calibrate(args.input, output, split=args.split, planets=args.planets,
                                    memory=args.memory, jobs=args.jobs, force=args.force)
    total = len(summary.statuses)
    say(f"calibrated: {output} ({total - len(summary.failed)} of {total} observation(s) done; log {output}.log)")
    if not summary.ok:
        say(f"{PROG}: {len(summary.failed)} observation(s) failed (reasons in {output}.log and "
            f"`arielstream info {output}`); run again to retry them", error=True)
        return 1
    written = arielstream.export(output, args.work, "npy", dtype=args.dtype, fill_value=args.fill_value,
                                 wavelength_order="detector")
    for path in written:
        say(f"exported:   {path.resolve()}")
    return submit(args, output)


def submit(args: argparse.Namespace, output: Path) -> int:
    """The spectrum step: ``work/submission.csv`` from the calibrated file (scored when the truth is there)."""
    submission = args.work.resolve() / SUBMISSION
    observations = None
    if args.planets:  # a quick try: the planets asked for, not every planet of the split
        with h5py.File(output, "r") as f:
            observations = list(range(f["planet_id"].shape[0]))
    # a planet without a spectrum is an error naming it (exit 1 here): the competition refuses a submission
    # without every planet
    _, fits, spectra = write_spectrum(output, submission, fits=output.with_name(f"{args.split}.fits.h5"),
                                      observations=observations)
    say(f"submission: {submission} ({spectra.planet_id.size} planet(s); per-visit fits {fits})")
    truth = args.input / f"{args.split}.csv"
    if truth.is_file() and args.planets:
        say(f"score:      not computed: {truth} holds every planet of the split, the submission those of --planets")
    elif truth.is_file():
        say(f"score:      {score_files(submission, truth).score:.6f} against {truth}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the script on ``argv`` and return its exit code: 0, 1 with a one-line error, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return run(args)
    except (KeyboardInterrupt, RunInterrupted) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        say(f"{PROG}: {why}; what was calibrated is kept in {args.scratch}: run again to resume", error=True)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        known = isinstance(exc, (ArielstreamError, ConfigError, OSError))
        message = str(exc) if known else f"{type(exc).__name__}: {exc} (--debug for the traceback)"
        say(f"{PROG}: {' '.join(message.split())}", error=True)  # one line
        return 1


if __name__ == "__main__":
    sys.exit(main())
