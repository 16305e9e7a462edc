"""Command line for what users take away: ``extract``, ``quicklook``, ``export``, ``init-config``.

:func:`.app.build_parser` calls :func:`add_commands`; each sub-command's handler is
stored as the parser default ``handler`` and returns an exit code (:mod:`.exits`).
Errors are raised as :class:`~arielstream.errors.ArielstreamError` subclasses
(``InputError`` for a missing or unreadable input, exit 66; ``OutputError`` for an
output that cannot be written, exit 73) for :func:`.app.main` to report.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

from .args import number
from .exits import EXIT_OK, EXIT_USAGE


def _selection_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An ``--obs`` index the file does not have is a usage error (exit 2), not a crash."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from ..products.lightcurves import SelectionError

        try:
            return handler(args)
        except SelectionError as exc:
            print(f"arielstream {args.command}: --obs: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


_non_negative_int = number(int, strict=False)
_positive_float = number(float)


def _extraction_options(p: argparse.ArgumentParser) -> None:
    from ..products.defaults import DEFAULT_FGS1_RADIUS, DEFAULT_HALF_WIDTH

    p.add_argument("--half-width", type=_non_negative_int, default=None, metavar="N",
                   help=f"AIRS aperture: rows within N of the trace centre (default {DEFAULT_HALF_WIDTH})")
    p.add_argument("--weighted", action="store_true",
                   help="variance-weighted (optimal) extraction instead of a plain sum over the aperture")
    p.add_argument("--fgs1-radius", type=_positive_float, default=None, metavar="PX",
                   help=f"FGS1 photometric aperture radius in pixels (default {DEFAULT_FGS1_RADIUS:g})")
    p.add_argument("--no-background", dest="background", action="store_false",
                   help="do not subtract the background measured outside the aperture")


def _extraction_kwargs(args: argparse.Namespace) -> dict:
    """The extraction options given on the command line (the others keep the library's defaults)."""
    kwargs: dict = {}
    if args.half_width is not None:
        kwargs["half_width"] = args.half_width
    if args.weighted:
        kwargs["weighted"] = True
    if args.fgs1_radius is not None:
        kwargs["fgs1_radius"] = args.fgs1_radius
    if not args.background:
        kwargs["background"] = False
    return kwargs


@_selection_errors
def cmd_extract(args: argparse.Namespace) -> int:
    """``arielstream extract``: write the light curves of the done observations."""
    from ..products.lightcurves import extract

    out = extract(args.path, args.output, observations=args.obs, **_extraction_kwargs(args))
    print(f"{out}: light curves written")
    return EXIT_OK


@_selection_errors
def cmd_quicklook(args: argparse.Namespace) -> int:
    """``arielstream quicklook``: write the HTML page of diagnostic plots."""
    from ..products.quicklook import quicklook

    index = quicklook(args.path, args.output, obs=args.obs, spectrum=args.spectrum)
    print(f"{index}: quicklook page written (open it in a browser)")
    return EXIT_OK


@_selection_errors
def cmd_export(args: argparse.Namespace) -> int:
    """``arielstream export``: write the chosen format and print each file written."""
    from ..products import exports

    options: dict = {}
    extraction = _extraction_kwargs(args)
    if args.format != "npy" and args.visits != "all":
        return _usage(args, f"--visits {args.visits} applies to --format npy only (the other formats keep every visit)")
    if extraction and args.format not in ("csv", "parquet"):
        return _usage(args, f"extraction options ({', '.join(sorted(extraction))}) apply to --format csv|parquet only")
    if args.format == "npy":
        options.update(dtype=args.dtype, wavelength_order=args.wavelength_order, fill_value=args.fill_value,
                       visits=args.visits)
    elif args.format in ("csv", "parquet"):
        if extraction and _is_lightcurve_file(args.path):
            return _usage(args, f"{args.path} holds light curves already: extraction options "
                                f"({', '.join(sorted(extraction))}) cannot change them (run extract again instead)")
        options.update(extraction)
    if args.obs is not None:
        options["observations"] = args.obs
    written = exports.export(args.path, args.output, args.format, **options)
    for path in written:
        print(path)
    return EXIT_OK


def _usage(args: argparse.Namespace, problem: str) -> int:
    """A command-line mistake found after parsing: one line on stderr, exit 2."""
    print(f"arielstream {args.command}: {problem}", file=sys.stderr)
    return EXIT_USAGE


def _is_lightcurve_file(path: Path) -> bool:
    """True when ``path`` is an arielstream light-curve file (False when it cannot be read: the export says why)."""
    import h5py

    from ..products.lightcurves import is_lightcurve_file

    try:
        with h5py.File(path, "r") as f:
            return bool(is_lightcurve_file(f))
    except OSError:
        return False


def cmd_init_config(args: argparse.Namespace) -> int:
    """``arielstream init-config``: the commented TOML template, to stdout or a file."""
    from ..config.template import render_config_template
    from ..errors import OutputError
    from ..io.atomic import atomic_write

    text = render_config_template()
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
        return EXIT_OK
    if args.output.exists() and not args.force:
        raise OutputError(f"{args.output}: exists (use --force to overwrite)")
    with atomic_write(args.output) as partial:
        partial.write_text(text)
    print(f"{args.output}: config template written")
    return EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "extract": cmd_extract,
    "quicklook": cmd_quicklook,
    "export": cmd_export,
    "init-config": cmd_init_config,
}


def add_commands(subparsers, parents: list[argparse.ArgumentParser]) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the product commands to ``subparsers``; returns :data:`HANDLERS` (name -> handler)."""
    from ..products.defaults import FORMATS, NPY_VISITS, WAVELENGTH_ORDERS

    ext = subparsers.add_parser(
        "extract", help="write light curves (AIRS spectral and white, FGS1) with uncertainties", parents=parents,
        description="Extract per-observation light curves from a calibrated file into a light-curve HDF5 file.")
    ext.add_argument("path", type=Path, metavar="OUT.h5")
    ext.add_argument("-o", "--output", type=Path, default=None, metavar="LC.h5",
                     help="light-curve file (default OUT.lightcurves.h5 beside OUT.h5)")
    ext.add_argument("--obs", type=_non_negative_int, nargs="+", metavar="I",
                     help="observation indices (default: every done observation)")
    _extraction_options(ext)
    ext.set_defaults(handler=cmd_extract)

    ql = subparsers.add_parser(
        "quicklook", help="PNG quicklooks and an index.html per observation", parents=parents,
        description="Mean frames, DQ maps, light curves and the FGS1 centroid track, browsable from index.html "
                    "(needs matplotlib: pip install matplotlib).")
    ql.add_argument("path", type=Path, metavar="OUT.h5")
    ql.add_argument("--obs", type=_non_negative_int, nargs="+", metavar="I",
                    help="observation indices (default: every done observation)")
    ql.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    ql.add_argument("--spectrum", type=Path, metavar="FILE",
                    help="the spectrum to draw: a file of arielstream spectrum (.fits.h5 or submission .csv); "
                         "default OUT.submission.fits.h5 or OUT.submission.csv beside OUT.h5, else a quick estimate")
    ql.set_defaults(handler=cmd_quicklook)

    exp = subparsers.add_parser(
        "export", help="notebook .npy, FITS cubes, or a CSV/Parquet light-curve table", parents=parents,
        description="Export a calibrated file (or, for csv/parquet, a light-curve file) into DIR.")
    exp.add_argument("path", type=Path, metavar="OUT.h5")
    exp.add_argument("--format", required=True, choices=FORMATS)
    exp.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    exp.add_argument("--obs", type=_non_negative_int, nargs="+", metavar="I",
                     help="observation indices (default: every done observation)")
    exp.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="npy: dtype (float64)")
    exp.add_argument("--wavelength-order", choices=WAVELENGTH_ORDERS, default=WAVELENGTH_ORDERS[0],
                     help="npy: AIRS x order (detector, the default: the notebook's; file: as stored)")
    exp.add_argument("--fill-value", type=float, default=None, metavar="X", help="npy: replace NaN with X")
    exp.add_argument("--visits", choices=NPY_VISITS, default="all",
                     help="npy: one row per observation (all, the default), or one per planet: its first done "
                          "visit (first, what the organisers' baseline expects) or the mean of its visits (mean); "
                          "the index CSV names each row's visit(s)")
    _extraction_options(exp)
    exp.set_defaults(handler=cmd_export)

    init = subparsers.add_parser(
        "init-config", help="write a commented TOML config with every option and its default", parents=parents,
        description="Write a commented TOML config template (stdout by default).")
    init.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="file to write (default stdout)")
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    init.set_defaults(handler=cmd_init_config)
    return HANDLERS
