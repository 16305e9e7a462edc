"""Command line: ``arielstream calibrate | simulate | info`` (and, from :mod:`.cli_products`,
``extract | quicklook | export | init-config``).

Exit codes (sysexits style, for cron jobs):

====  ==========================================================
0     everything asked for was done (or already done: nothing to do)
2     the command line is wrong (argparse)
65    the run finished but some observations failed (bad input data, or a
      worker that died twice on them); the output holds them as failed, with
      the reason; running again retries only those
66    an input folder or dataset-level file is missing or unreadable
69    an optional package is needed (e.g. matplotlib for quicklook: the
      message names the extra to install)
70    internal error (a bug: please report it with the log)
73    the output cannot be created (folder missing, disk full, file too large)
75    another run is writing the same output (try again later)
78    the configuration is invalid, or an existing output was made with another
      config, code version or observation list (use --force)
130   interrupted by Ctrl-C; 143 by SIGTERM (what is done is kept: run again to resume)
====  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from ._version import __version__
from .cli_args import number
from .cli_products import HANDLERS as PRODUCT_HANDLERS
from .cli_products import add_commands as add_products
from .config import PROFILES, ConfigError, load_config, load_run_options
from .errors import (
    ArielstreamError,
    InputError,
    MemoryBudgetError,
    MissingDependencyError,
    OutputError,
    RunInterrupted,
)
from .lifecycle import ConfigMismatchError, LockBusyError
from .recipe import RECIPE

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILURES = 65
EXIT_NOINPUT = 66
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CANTCREAT = 73
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

log = logging.getLogger("arielstream")

STEP_NAMES = [s.name for s in RECIPE]


def _steps(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in STEP_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(STEP_NAMES)}")
    return names


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arielstream",
        description="Calibrate Ariel Data Challenge 2025 detector data into binned HDF5 cubes, in bounded memory.")
    parser.add_argument("--version", action="version", version=f"arielstream {__version__}")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                           help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                           help="only warnings and errors on the console")
    for action in verbosity._actions:
        parser._add_action(action)
    sub = parser.add_subparsers(dest="command", required=True)

    cal = sub.add_parser("calibrate", help="calibrate a data folder into one HDF5 file", parents=[verbosity],
                         description="Calibrate every visit of the planets of DATA_DIR/SPLIT into OUT.h5.")
    cal.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    cal.add_argument("--split", help="sub-folder of planets: train or test (default train)")
    target = cal.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", type=Path, metavar="OUT.h5", help="the calibrated file to write")
    target.add_argument("--run", metavar="NAME",
                        help="a named run: writes RUNS_DIR/NAME/<split>.h5 and RUNS_DIR/NAME/config.toml; "
                             "runs with other names are kept side by side, and NAME is never reused with other "
                             "calibration options (unless --force)")
    cal.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                     help="folder of the named runs (default ./runs)")
    cal.add_argument("--planets", type=int, nargs="+", metavar="ID", help="only these planet ids")
    cal.add_argument("--jobs", type=_jobs, metavar="N|auto",
                     help="parallel workers (default auto: from --memory and the cores)")
    cal.add_argument("--backend", choices=["loky", "dask"], help="loky (this machine, default) or dask (a cluster)")
    cal.add_argument("--scheduler", metavar="ADDRESS", help="dask.distributed scheduler, e.g. tcp://10.0.0.5:8786")
    cal.add_argument("--task-timeout", type=number(float), metavar="SECONDS",
                     help="a task running longer counts as a dead worker (retried once, then failed)")
    cal.add_argument("--profile", choices=list(PROFILES),
                     help="default: the recipe, non-linearity on, NaN bad pixels; notebook: the organisers' "
                          "numbers; full: default plus cosmic rays, spatial outliers, interpolation, "
                          "background and tracking")
    cal.add_argument("--config", type=Path, metavar="FILE.toml",
                     help="options from a TOML file ([calibration] and [run] tables); the command line overrides it")
    cal.add_argument("--memory", default=None, metavar="SIZE",
                     help="RAM budget of the whole run on this machine, e.g. 4GB (default 2GB)")
    cal.add_argument("--skip", type=_steps, action="append", default=[], metavar="STEP[,STEP]",
                     help=f"switch steps off: {', '.join(STEP_NAMES)}")
    cal.add_argument("--with", dest="enable", type=_steps, action="append", default=[], metavar="STEP[,STEP]",
                     help="switch steps on (e.g. --profile notebook --with nonlinearity)")
    cal.add_argument("--airs-bin", type=number(int), help="CDS frames per AIRS time bin (default 30)")
    cal.add_argument("--fgs1-bin", type=number(int), help="CDS frames per FGS1 time bin (default 360)")
    cal.add_argument("--wavelength-order", choices=["target", "detector"],
                     help="target: ascending, wl_2..wl_283; detector: columns 39..320 (the notebook's)")
    cal.add_argument("--bad-pixels", choices=["nan", "keep"], help="NaN bad pixels or keep their values")
    cal.add_argument("--missing-calibration", choices=["error", "skip"],
                     help="a missing calibration file fails the observation (error) or skips its step")
    cal.add_argument("--instruments", nargs="+", choices=["AIRS-CH0", "FGS1"])
    cal.add_argument("--spatial-bin", type=number(int), metavar="N", help="sum N x N pixels of the output")
    cal.add_argument("--master-calibration", choices=["off", "planet", "dataset"],
                     help="dark and flat combined over the planet's visits or over the whole run")
    cal.add_argument("--force", action="store_true", default=None,
                     help="recompute everything even if OUT.h5 was made with another config or code version")
    cal.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                     help="log lines instead of a progress bar")
    cal.add_argument("--no-log-file", dest="log_file", action="store_false", default=None,
                     help="do not write OUT.h5.log")

    sim = sub.add_parser("simulate", help="write a simulated ADC2025 data folder with known truth",
                         parents=[verbosity])
    sim.add_argument("out", type=Path, metavar="OUT")
    sim.add_argument("--planets", type=number(int), default=3, help="number of planets (default 3)")
    sim.add_argument("--scale", type=number(float), default=1.0,
                     help="fraction of the real frame counts (1 = full size; bins stay 30/360)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--split", choices=["train", "test"], default="train")
    sim.add_argument("--two-visit-fraction", type=float, default=0.1)
    sim.add_argument("--row-group-frames", type=number(int), default=None,
                     help="frames per Parquet row group (default: one row group per file)")
    sim.add_argument("--cosmic-rate", type=float, default=1.6e-5, help="cosmic rays per pixel per second")
    sim.add_argument("--background-fraction", type=float, default=0.3)
    sim.add_argument("--compression", default="zstd")

    inf = sub.add_parser("info", help="summarise an arielstream HDF5 file", parents=[verbosity])
    inf.add_argument("path", type=Path, metavar="OUT.h5")
    inf.add_argument("--json", action="store_true", help="machine-readable output")

    add_products(sub, [verbosity])
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    """Console verbosity; the logger itself passes INFO on so that the run's log file gets it."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    root = logging.getLogger("arielstream")
    root.handlers[:] = [handler]
    root.setLevel(min(level, logging.INFO))


def _config_from_args(args: argparse.Namespace):
    overrides = {
        "profile": args.profile,
        "airs_bin": args.airs_bin,
        "fgs1_bin": args.fgs1_bin,
        "wavelength_order": args.wavelength_order,
        "bad_pixels": args.bad_pixels,
        "missing_calibration": args.missing_calibration,
        "instruments": args.instruments,
        "spatial_bin": args.spatial_bin,
        "master_calibration": args.master_calibration,
    }
    for names, value in ((args.skip, False), (args.enable, True)):
        for group in names:
            for name in group:
                overrides[name] = value
    return load_config(args.config, **overrides)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .runner import calibrate

    config = _config_from_args(args)
    run = load_run_options(args.config, split=args.split, planets=args.planets, memory=args.memory, jobs=args.jobs,
                           backend=args.backend, scheduler=args.scheduler, task_timeout=args.task_timeout,
                           force=args.force, progress=args.progress, log_file=args.log_file)
    summary = calibrate(args.data_dir, args.output, run=args.run, runs_dir=args.runs_dir,
                        split=run.split, planets=run.planets, config=config,
                        memory=run.memory, jobs=run.jobs, backend=run.backend, scheduler=run.scheduler,
                        task_timeout=run.task_timeout, force=run.force, progress=run.progress,
                        log_file=run.log_file)
    total = len(summary.statuses)
    done = total - len(summary.failed)
    if summary.action == "complete":
        print(f"{summary.output}: already complete ({done} of {total} observation(s)); nothing to do")
        return EXIT_OK
    rate = 60 * len(summary.results) / max(summary.seconds, 1e-9)
    print(f"{summary.output}: {done} of {total} observation(s) calibrated; this run computed "
          f"{len(summary.results)} in {summary.seconds:.1f} s ({rate:.1f} obs/min), "
          f"peak RSS of the process tree <= {summary.peak_rss_bound / 1e6:.0f} MB")
    if summary.failed:
        print(f"{'planet_id':>12}  visit  status  error")
        for planet, visit, status, error in summary.failed:
            print(f"{planet:>12}  {visit:>5}  {status:<6}  {error}")
    return EXIT_OK if summary.ok else EXIT_FAILURES


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate_dataset

    planets = simulate_dataset(args.out, n_planets=args.planets, scale=args.scale, seed=args.seed,
                               split=args.split, two_visit_fraction=args.two_visit_fraction,
                               row_group_frames=args.row_group_frames, cosmic_rate=args.cosmic_rate,
                               background_fraction=args.background_fraction, compression=args.compression)
    visits = sum(v for _, v in planets)
    print(f"{args.out}: {len(planets)} planet(s), {visits} visit(s) simulated ({args.split}, scale {args.scale})")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .inspect import summarize

    info = summarize(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    print(f"{args.path}  (arielstream {info['arielstream_version']}, profile {info['profile']}, "
          f"split {info['split']})")
    for name, d in info["datasets"].items():
        print(f"  {name:24s} {str(tuple(d['shape'])):28s} {d['dtype']}")
    counts = info["status_counts"]
    print(f"  observations: {len(info['observations'])} — " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for o in info["observations"]:
        line = f"    {o['planet_id']:>12d}  visit {o['visit']}  {o['status']}"
        if o["error"]:
            line += f"  {o['error']}"
        print(line)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    handlers = {"calibrate": cmd_calibrate, "simulate": cmd_simulate, "info": cmd_info}
    handlers.update(PRODUCT_HANDLERS)
    # a file-size limit (ulimit -f) then fails the write with EFBIG instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return handlers[args.command](args)
    except LockBusyError as exc:
        print(f"arielstream: {exc}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except (ConfigError, ConfigMismatchError) as exc:
        print(f"arielstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except InputError as exc:
        print(f"arielstream: {exc}", file=sys.stderr)
        return EXIT_NOINPUT
    except MemoryBudgetError as exc:
        print(f"arielstream: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OutputError as exc:
        print(f"arielstream: {exc}", file=sys.stderr)
        return EXIT_CANTCREAT
    except MissingDependencyError as exc:
        print(f"arielstream: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ArielstreamError as exc:
        print(f"arielstream: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (KeyboardInterrupt, RunInterrupted) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        print(f"arielstream: {why}; what is done is kept, run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_TERMINATED
    except BrokenPipeError:  # e.g. `arielstream info OUT.h5 | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception:
        log.exception("internal error")
        return EXIT_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
