"""Command line for making data: ``calibrate``, ``simulate`` and ``info``.

:func:`add_commands` adds the sub-commands to the parser of :mod:`.app`; each
handler is stored as the parser default ``handler`` and returns an exit code
(:mod:`.exits`). The help of every option that sets a config or run option comes
from :data:`arielstream.config.descriptions.DESCRIPTIONS` (:func:`option_help`),
the table the TOML template's comments come from too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from ..config.options import (
    BACKENDS,
    BAD_PIXEL_MODES,
    MASTER_MODES,
    MISSING_CALIBRATION_MODES,
    PROFILES,
    WAVELENGTH_ORDERS,
    CalibrationConfig,
    RunOptions,
    load_config,
    load_run_options,
)
from ..config.recipe import RECIPE
from ..config.template import option_help
from ..errors import OutputError
from ..io.atomic import atomic_write
from ..io.manifest import MANIFEST_NAME
from ..io.storage import data_path, locator, path_argument
from ..layout import COMPRESSIONS, DEFAULT_LAYOUT, INSTRUMENTS, PARQUET_LAYOUTS
from .args import number
from .exits import EXIT_FAILURES, EXIT_OK, EXIT_OSERR, exit_code_of

if TYPE_CHECKING:
    from ..run.runner import RunSummary

log = logging.getLogger(__name__)

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


def _calibration(name: str, **kw) -> dict:
    """``add_argument`` keywords of an option that sets ``[calibration] name``: its dest and help."""
    return {"dest": name, "help": option_help("calibration", name), **kw}


def _run(name: str, **kw) -> dict:
    """``add_argument`` keywords of an option that sets ``[run] name``: its dest and help."""
    return {"dest": name, "help": option_help("run", name), **kw}


def _switch_off(table: str, name: str) -> dict:
    """``add_argument`` keywords of a ``--no-...`` flag that sets ``[table] name`` to false."""
    return {"dest": name, "action": "store_false", "default": None,
            "help": f"{name} = false ({option_help(table, name, default=False)})"}


def add_calibrate(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``calibrate`` (a data folder into one HDF5 file) to the sub-parsers ``sub``."""
    cal = sub.add_parser("calibrate", help="calibrate a data folder into one HDF5 file", parents=parents,
                         description="Calibrate every visit of the planets of DATA_DIR/SPLIT into OUT.h5. Every "
                                     "option below can also be set in a TOML file (--config; "
                                     "arielstream init-config writes one with every default).")
    cal.set_defaults(handler=cmd_calibrate)
    cal.add_argument("data_dir", type=data_path, metavar="DATA_DIR",
                     help="the data folder: a local path, or a URL every task reads through pyarrow "
                          "(s3://bucket/prefix, with ?endpoint_override=HOST:PORT&scheme=http for another S3 "
                          "server; gs://bucket/prefix; any filesystem pyarrow or fsspec knows)")
    target = cal.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", type=path_argument, metavar="OUT.h5",
                        help="the calibrated file to write (a local path)")
    target.add_argument("--run", metavar="NAME",
                        help="a named run: writes RUNS_DIR/NAME/<split>.h5 and RUNS_DIR/NAME/config.toml; "
                             "runs with other names are kept side by side, and NAME is never reused with other "
                             "calibration options (unless --force)")
    cal.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                     help="folder of the named runs (default ./runs)")
    cal.add_argument("--config", type=Path, metavar="FILE.toml",
                     help="options from a TOML file ([calibration] and [run] tables); the command line overrides it")

    run = cal.add_argument_group("run options", "how the run is executed ([run] of a config file)")
    run.add_argument("--split", **_run("split"))
    run.add_argument("--planets", type=int, nargs="+", metavar="ID", **_run("planets"))
    run.add_argument("--memory", metavar="SIZE", **_run("memory"))
    run.add_argument("--jobs", type=_jobs, metavar="N|auto", **_run("jobs"))
    run.add_argument("--backend", choices=BACKENDS, **_run("backend"))
    run.add_argument("--scheduler", metavar="ADDRESS", **_run("scheduler"))
    run.add_argument("--task-timeout", type=number(float), metavar="SECONDS", **_run("task_timeout"))
    run.add_argument("--parts", action=argparse.BooleanOptionalAction, default=None, **_run("parts"))
    run.add_argument("--force", action="store_true", default=None, dest="force",
                     help=option_help("run", "force", default=False))
    run.add_argument("--frozen", action="store_true", default=None, help=option_help("run", "frozen", default=False))
    run.add_argument("--drop-missing", action="store_true", default=None,
                     help=option_help("run", "drop_missing", default=False))
    run.add_argument("--no-progress", **_switch_off("run", "progress"))
    run.add_argument("--no-log-file", **_switch_off("run", "log_file"))
    run.add_argument("--dry-run", action="store_const", const="estimate", default=None,
                     help="print the observations, output size, free disk, worker plan and an estimated time, then "
                          "exit without writing anything")
    run.add_argument("--dry-run-measure", action="store_const", const="measure", dest="dry_run",
                     help="a dry run whose time estimate comes from calibrating one planet in a temporary folder")
    inputs = run.add_mutually_exclusive_group()
    inputs.add_argument("--verify-inputs", action="store_const", const="", dest="verify_inputs", default=None,
                     help=option_help("run", "verify_inputs") + "; this flag insists on DATA_DIR/" + MANIFEST_NAME +
                     " (--manifest FILE names another)")
    inputs.add_argument("--manifest", dest="verify_inputs", metavar="FILE", default=None,
                     help=option_help("run", "verify_inputs"))
    run.add_argument("--report", type=Path, metavar="FILE.json",
                     help="at the end of the run, write what it did as JSON (counts, failures and why, time, peak "
                          "memory, exit code), also when it fails; replaced atomically, for monitoring a cron job")

    science = cal.add_argument_group("calibration options", "what is computed ([calibration] of a config file)")
    science.add_argument("--profile", choices=PROFILES, **_calibration("profile"))
    science.add_argument("--skip", type=_steps, action="append", default=[], metavar="STEP[,STEP]",
                         help=f"switch steps off: {', '.join(STEP_NAMES)}")
    science.add_argument("--with", dest="enable", type=_steps, action="append", default=[], metavar="STEP[,STEP]",
                         help="switch steps on (e.g. --profile notebook --with nonlinearity)")
    science.add_argument("--airs-bin", type=number(int), metavar="N", **_calibration("airs_bin"))
    science.add_argument("--fgs1-bin", type=number(int), metavar="N", **_calibration("fgs1_bin"))
    science.add_argument("--wavelength-order", choices=WAVELENGTH_ORDERS, **_calibration("wavelength_order"))
    science.add_argument("--bad-pixels", choices=BAD_PIXEL_MODES, **_calibration("bad_pixels"))
    science.add_argument("--missing-calibration", choices=MISSING_CALIBRATION_MODES,
                         **_calibration("missing_calibration"))
    science.add_argument("--instruments", nargs="+", choices=list(INSTRUMENTS), **_calibration("instruments"))
    science.add_argument("--spatial-bin", type=number(int), metavar="N", **_calibration("spatial_bin"))
    science.add_argument("--saturation-level", type=number(int, strict=False, maximum=65535), metavar="COUNTS",
                         **_calibration("saturation_level"))
    science.add_argument("--master-calibration", choices=MASTER_MODES, **_calibration("master_calibration"))


# the step switches: set by --skip / --with, no flag of their own (spatial_bin is a step with a size: --spatial-bin)
STEP_SWITCHES = tuple(name for name in STEP_NAMES if get_type_hints(CalibrationConfig)[name] is bool)
# calibration options deliberately set in a config file only ([calibration]): the tuning of a step, which a
# command line rarely changes; a new option gets a flag unless it is added here (tests/test_run_options.py)
CONFIG_FILE_ONLY = ("hot_sigma", "hot_maxiters", "hot_rule", "cut_start", "cut_stop", "cr_method", "cr_bin_sigma",
                    "cr_sigmas", "cr_until_clean", "cr_clean_sigma", "cr_max_iters", "cr_replace", "spatial_kernel",
                    "spatial_sigma", "airs_background_rows", "fgs1_background_width", "background_sigma")
# command-line options that set a calibration option: each has the option's name as its dest
CALIBRATION_FLAGS = tuple(f.name for f in dataclasses.fields(CalibrationConfig)
                          if f.name not in STEP_SWITCHES and f.name not in CONFIG_FILE_ONLY)
# every run option has a flag whose dest is its name (none is config-file only)
RUN_FLAGS = tuple(f.name for f in dataclasses.fields(RunOptions))


def config_from_args(args: argparse.Namespace) -> CalibrationConfig:
    """The calibration config: defaults < ``--config`` file < the command line."""
    overrides = {name: getattr(args, name) for name in CALIBRATION_FLAGS}
    for names, value in ((args.skip, False), (args.enable, True)):
        for group in names:
            for name in group:
                overrides[name] = value
    return load_config(args.config, **overrides)


def run_report(summary: RunSummary | None, exit_code: int, seconds: float, output: Path | None = None,
               error: str | None = None) -> dict[str, Any]:
    """What ``--report`` writes: the run's counts, failures, time, memory and exit code (``None`` where unknown).

    ``summary`` is ``None`` when the run stopped with an error before it had one
    (``error`` then says why).
    """
    from ..run.identity import code_version

    if summary is None:
        return {"exit_code": exit_code, "error": error, "output": None if output is None else str(output),
                "arielstream_version": code_version(), "action": None, "nothing_to_do": False,
                "observations": None, "done": None, "computed": 0, "retried": 0, "added": 0, "recomputed": 0,
                "kept_missing": 0, "dropped": 0, "failed": [],
                "out_of_memory": 0, "seconds": round(seconds, 3), "peak_rss_bound": None,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    computed = sum(r.ok for r in summary.results)
    return {"exit_code": exit_code, "error": error, "output": str(summary.output),
            "arielstream_version": code_version(), "action": summary.action,
            "nothing_to_do": summary.action == "complete", "observations": len(summary.statuses),
            "done": len(summary.statuses) - len(summary.failed), "computed": computed,
            "retried": len(summary.counts.get("retried", [])) + len(summary.counts.get("repaired", [])),
            "added": len(summary.counts.get("added", [])), "recomputed": len(summary.counts.get("recomputed", [])),
            "kept_missing": len(summary.counts.get("kept", [])), "dropped": len(summary.counts.get("dropped", [])),
            "failed": [{"planet_id": p, "visit": v, "status": s, "error": e} for p, v, s, e in summary.failed],
            "out_of_memory": len(summary.out_of_memory), "seconds": round(summary.seconds, 3),
            "peak_rss_bound": summary.peak_rss_bound,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON to ``path``, atomically (a monitor never reads half a report)."""
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(report, indent=2) + "\n")


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``arielstream calibrate``: run it, then write ``--report`` and print the summary (``-q``: only on failure)."""
    report = getattr(args, "report", None)
    if report is not None and not args.dry_run and not report.resolve().parent.is_dir():
        raise OutputError(f"{report}: the folder of --report does not exist")
    _check_targets(args, report)  # before anything runs: a failure report must not land there either
    t_start = time.perf_counter()
    try:
        code, summary = _calibrate(args)
    except BaseException as exc:
        if report is not None and not args.dry_run:
            output = None if args.output is None else args.output.resolve()
            failure = run_report(None, exit_code_of(exc), time.perf_counter() - t_start, output,
                                 str(exc) or type(exc).__name__)
            try:
                write_report(report, failure)
            except OutputError as why:  # the run's own error matters more: say this in the log only
                log.error("%s", why)
        raise
    if summary is None:  # --dry-run: nothing was run
        return code
    if report is not None:
        write_report(report, run_report(summary, code, summary.seconds))
    if code != EXIT_OK or not getattr(args, "quiet", False):
        _print_summary(summary)
    return code


def _check_targets(args: argparse.Namespace, report: Path | None) -> None:
    """Refuse ``-o`` or ``--report`` landing where the command line says they must not, before anything runs.

    ``-o`` on the config file or the manifest (the run checks the rest of ``-o`` itself, from
    Python too); ``--report`` on an input, the output, a side file of it, or in a named run's folder.
    """
    from ..io.output import UnsafeTargetError, check_report_target, check_write_targets
    from ..io.sidefiles import OutputFiles, inside

    inputs = [Path(p) for p in (args.config, args.verify_inputs) if p]
    output = None if args.output is None else OutputFiles.of(args.output)
    if output is not None:
        check_write_targets(output, args.data_dir, inputs)
    if report is None:
        return
    check_report_target(report, args.data_dir, inputs, output)
    run_folder = (Path(args.runs_dir) / str(args.run)).resolve()
    if args.run is not None and inside(report.resolve(), run_folder):
        raise UnsafeTargetError(f"--report {report}: would be written inside the named run's folder {run_folder} "
                                "(its output, log and config.toml); write it elsewhere")


def _calibrate(args: argparse.Namespace) -> tuple[int, RunSummary | None]:
    """Run ``calibrate`` (or its dry run): the exit code and the run's summary (``None`` for a dry run)."""
    from ..run.runner import run_calibration

    config = config_from_args(args)
    if args.verify_inputs == "":  # --verify-inputs without a file: the data folder's own manifest
        args.verify_inputs = locator(args.data_dir / MANIFEST_NAME)
    run = load_run_options(args.config, **{name: getattr(args, name) for name in RUN_FLAGS})
    if args.dry_run:
        from ..run.dryrun import dry_run

        plan = dry_run(args.data_dir, config, run, output=args.output, run_name=args.run, runs_dir=args.runs_dir,
                       measure=args.dry_run == "measure")
        print("\n".join(plan.lines()))
        return EXIT_OK, None
    if getattr(args, "quiet", False):  # no progress bar either: a cron job's console stays empty
        run = dataclasses.replace(run, progress=False)
    summary = run_calibration(args.data_dir, config, run, output=args.output, run_name=args.run,
                              runs_dir=args.runs_dir)
    if summary.out_of_memory:  # not the input's fault: its own code, and the rerun retries them
        return EXIT_OSERR, summary
    return (EXIT_OK if summary.ok else EXIT_FAILURES), summary


def _print_summary(summary: RunSummary) -> None:
    """The run's summary line and the table of its failed observations."""
    total = len(summary.statuses)
    done = total - len(summary.failed)
    if summary.action == "complete":
        print(f"{summary.output}: already complete ({done} of {total} observation(s)); nothing to do")
        return
    rate = 60 * len(summary.results) / max(summary.seconds, 1e-9)
    print(f"{summary.output}: {done} of {total} observation(s) calibrated; this run computed "
          f"{len(summary.results)} in {summary.seconds:.1f} s ({rate:.1f} obs/min), "
          f"peak RSS of the process tree <= {summary.peak_rss_bound / 1e6:.0f} MB")
    if summary.failed:
        print(f"{'planet_id':>12}  visit  status  error")
        for planet, visit, status, error in summary.failed:
            print(f"{planet:>12}  {visit:>5}  {status:<6}  {error}")


def add_simulate(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``simulate`` (a simulated data folder with known truth) to the sub-parsers ``sub``."""
    sim = sub.add_parser("simulate", help="write a simulated ADC2025 data folder with known truth", parents=parents)
    sim.set_defaults(handler=cmd_simulate)
    sim.add_argument("out", type=Path, metavar="OUT")
    sim.add_argument("--planets", type=number(int), default=3, help="number of planets (default 3)")
    sim.add_argument("--scale", type=number(float), default=1.0,
                     help="fraction of the real frame counts (1 = full size; bins stay 30/360)")
    sim.add_argument("--seed", type=number(int, strict=False), default=0, help="a non-negative integer (default 0)")
    sim.add_argument("--split", choices=["train", "test"], default="train")
    sim.add_argument("--two-visit-fraction", type=number(float, strict=False, maximum=1), default=0.1)
    sim.add_argument("--row-group-frames", type=number(int), default=None,
                     help="frames per Parquet row group (default: one row group per file)")
    sim.add_argument("--cosmic-rate", type=number(float, strict=False), default=1.6e-5,
                     help="cosmic rays per pixel per second")
    sim.add_argument("--background-fraction", type=number(float, strict=False, maximum=1), default=0.3)
    sim.add_argument("--compression", choices=COMPRESSIONS, default="zstd")
    sim.add_argument("--page-checksums", action="store_true",
                     help="write a CRC32 in every Parquet page of the signal and calibration files (the readers "
                          "verify them; the competition's files have none)")
    sim.add_argument("--parquet-layout", choices=PARQUET_LAYOUTS, default=DEFAULT_LAYOUT,
                     help="how the signal and calibration files are written: pyarrow (pyarrow's defaults with "
                          "--compression; the default), polars (the competition's: zstd, PLAIN, one page per column "
                          "chunk, page index) or zstd-dictionary (the same with dictionary encoding)")


def cmd_simulate(args: argparse.Namespace) -> int:
    """``arielstream simulate``: write the simulated data folder and say what it holds."""
    from ..simulate.dataset import simulate_dataset

    if args.out.exists() and not args.out.is_dir():
        raise OutputError(f"{args.out}: is a file; simulate writes a data folder (name a new folder)")
    planets = simulate_dataset(args.out, n_planets=args.planets, scale=args.scale, seed=args.seed,
                               split=args.split, two_visit_fraction=args.two_visit_fraction,
                               row_group_frames=args.row_group_frames, cosmic_rate=args.cosmic_rate,
                               background_fraction=args.background_fraction, compression=args.compression,
                               page_checksums=args.page_checksums, parquet_layout=args.parquet_layout)
    visits = sum(v for _, v in planets)
    print(f"{args.out}: {len(planets)} planet(s), {visits} visit(s) simulated ({args.split}, scale {args.scale})")
    return EXIT_OK


def add_info(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``info`` (a summary of an output file) to the sub-parsers ``sub``."""
    inf = sub.add_parser("info", help="summarise an arielstream HDF5 file", parents=parents)
    inf.set_defaults(handler=cmd_info)
    inf.add_argument("path", type=Path, metavar="OUT.h5")
    inf.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_info(args: argparse.Namespace) -> int:
    """``arielstream info``: print the datasets and the status of every observation (or JSON)."""
    from ..products.summary import summarize

    info = summarize(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    if "status_counts" not in info:  # a product: light curves or per-visit fits
        print(f"{args.path}  {info['kind']}, format {info['format']} {info['format_version']} "
              f"(arielstream {info['arielstream_version']}), from {info['source']}")
        width = max((len(name) for name in info["datasets"]), default=0)  # one column, however long the names
        for name, d in info["datasets"].items():
            dims = f"({', '.join(d['dims'])})" if "dims" in d else str(tuple(d["shape"]))
            print(f"  {name:{width}s} {str(tuple(d['shape'])):16s} {d['dtype']:8s} {dims:28s} "
                  f"{d.get('long_name', '')}{' [' + d['units'] + ']' if d.get('units') else ''}")
        print(f"  observations: {len(info['observations'])}")
        for o in info["observations"]:
            print(f"    {o['planet_id']:>12d}  visit {o['visit']}")
        return EXIT_OK
    print(f"{args.path}  {info['kind']} (arielstream {info['arielstream_version']}, profile {info['profile']}, "
          f"split {info['split']})")
    if info["parts"]:
        names = info["parts"] if len(info["parts"]) <= 6 else [*info["parts"][:3], "...", *info["parts"][-2:]]
        print(f"  an index over {len(info['parts'])} part file(s): {', '.join(names)} (keep them beside it)")
    width = max((len(name) for name in info["datasets"]), default=0)
    for name, d in info["datasets"].items():
        print(f"  {name:{width}s} {str(tuple(d['shape'])):28s} {d['dtype']}")
    counts = info["status_counts"]
    print(f"  observations: {len(info['observations'])} — " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    for o in info["observations"]:
        line = f"    {o['planet_id']:>12d}  visit {o['visit']}  {o['status']}"
        if o["error"]:
            line += f"  {o['error']}"
        print(line)
    return EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "calibrate": cmd_calibrate,
    "simulate": cmd_simulate,
    "info": cmd_info,
}


def add_commands(sub, parents: list[argparse.ArgumentParser]) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``calibrate``, ``simulate`` and ``info`` to ``sub``; returns :data:`HANDLERS` (name -> handler)."""
    add_calibrate(sub, parents)
    add_simulate(sub, parents)
    add_info(sub, parents)
    return HANDLERS
