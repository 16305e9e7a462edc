"""Command line for the science products: ``spectrum`` (a submission file) and ``score`` (the competition metric).

:func:`.app.build_parser` calls :func:`add_commands`. ``spectrum`` exits 65, writing
nothing, when it cannot measure every planet of the split (a planet without a
spectrum, an instrument without data, an aperture that holds no row of the trace)
unless ``--missing prior``. ``score`` exits 65 when the submission (or truth) is one
the competition would refuse (wrong shape, NaN, negative value, missing planet) and
66 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from ..io.storage import path_argument
from .args import number
from .exits import EXIT_FAILURES, EXIT_OK
from .products import _extraction_kwargs, _extraction_options, _selection_errors

_non_negative_int = number(int, strict=False)


@_selection_errors
def cmd_spectrum(args: argparse.Namespace) -> int:
    """``arielstream spectrum``: fit every done observation and write the submission and the per-visit fits."""
    from ..products.spectrum import SpectrumError, write_spectrum

    star_info: Path | str | bool | None = False if args.no_star_info else args.star_info
    try:
        out, fits, spectra = write_spectrum(args.path, args.output, fits=args.fits, degree=args.degree,
                                            decorrelate=args.decorrelate, star_info=star_info,
                                            observations=args.obs, missing=args.missing,
                                            **_extraction_kwargs(args))
    except SpectrumError as exc:
        print(f"arielstream spectrum: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    prior = f", {spectra.prior_planets.size} from the prior (--missing prior)" if spectra.prior_planets.size else ""
    print(f"{out}: {spectra.planet_id.size} planet(s) from {len(spectra.visits)} visit(s){prior}")
    print(f"{fits}: per-visit fits")
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    """``arielstream score``: the competition's Gaussian log-likelihood score of a submission."""
    from ..products.score import SubmissionError, score_files

    try:
        report = score_files(args.submission, args.truth, naive_mean=args.naive_mean, naive_sigma=args.naive_sigma)
    except SubmissionError as exc:
        print(f"arielstream score: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    print(f"score {report.score:.6f}  ({report.n_planets} planet(s); naive mean {report.naive_mean:.6g}, "
          f"sigma {report.naive_sigma:.6g})")
    return EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"spectrum": cmd_spectrum, "score": cmd_score}


def add_commands(subparsers, parents: list[argparse.ArgumentParser]) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``spectrum`` and ``score`` to ``subparsers``; returns :data:`HANDLERS`."""
    from ..products.defaults import DEFAULT_DEGREE, MISSING_POLICIES

    sp = subparsers.add_parser(
        "spectrum", help="transit depth per wavelength (a competition submission CSV) from a calibrated file",
        parents=parents,
        description="Find each observation's transit in its white light, fit the depth of every wavelength with a "
                    "polynomial baseline, combine a planet's visits and write planet_id, wl_1..wl_283, "
                    "sigma_1..sigma_283, plus an HDF5 file of the per-visit fits. One row per planet of the split, "
                    "or exit 65 with nothing written: a planet without a spectrum (not calibrated, failed, no "
                    "transit found), a file without FGS1 or AIRS-CH0 data, or an aperture that holds no row of "
                    "the trace is named as an error.")
    sp.add_argument("path", type=Path, metavar="OUT.h5")
    sp.add_argument("-o", "--output", type=Path, default=None, metavar="SUBMISSION.csv",
                    help="submission file (default OUT.submission.csv beside OUT.h5)")
    sp.add_argument("--fits", type=Path, default=None, metavar="FITS.h5",
                    help="per-visit fits (default SUBMISSION.fits.h5 beside the submission)")
    sp.add_argument("--degree", type=_non_negative_int, default=DEFAULT_DEGREE, metavar="N",
                    help=f"degree of the out-of-transit baseline polynomial in time (default {DEFAULT_DEGREE})")
    sp.add_argument("--no-decorrelate", dest="decorrelate", action="store_false",
                    help="do not regress against the FGS1 centroid track")
    stars = sp.add_mutually_exclusive_group()
    stars.add_argument("--star-info", type=path_argument, default=None, metavar="CSV",
                       help="<split>_star_info.csv for the expected durations (default: the one in the data folder "
                            "the file was calibrated from)")
    stars.add_argument("--no-star-info", action="store_true", help="fit the transit durations without star info")
    sp.add_argument("--obs", type=_non_negative_int, nargs="+", metavar="I",
                    help="observation indices (default: every done observation); the submission then holds the "
                         "planets of these observations only")
    sp.add_argument("--missing", choices=MISSING_POLICIES, default="error",
                    help="a planet without a spectrum: error (exit 65, nothing written; the default) or prior: "
                         "the mean spectrum of the data folder's train.csv, sigma its per-wavelength spread, with "
                         "a warning naming the planet")
    _extraction_options(sp)
    sp.set_defaults(handler=cmd_spectrum)

    sc = subparsers.add_parser(
        "score", help="the competition's score of a submission against the true spectra", parents=parents,
        description="Gaussian log-likelihood of the truth under the submission's (mean, sigma), normalised between "
                    "the naive prediction (0) and a perfect one (1). Exit 65 for a submission the competition would "
                    "refuse, 66 for a file that cannot be read and for a malformed truth file.")
    sc.add_argument("submission", type=Path, metavar="SUBMISSION.csv")
    sc.add_argument("truth", type=path_argument, metavar="TRUTH.csv",
                    help="planet_id, wl_1..wl_283 (e.g. train.csv; a local file or a URL, as a data folder may be)")
    sc.add_argument("--naive-mean", type=number(float, minimum=-math.inf, strict=False), default=None, metavar="X",
                    help="the naive prediction's mean (default: the mean of the truth's values)")
    sc.add_argument("--naive-sigma", type=number(float), default=None, metavar="X",
                    help="the naive prediction's sigma (default: the standard deviation of the truth's values)")
    sc.set_defaults(handler=cmd_score)
    return HANDLERS
