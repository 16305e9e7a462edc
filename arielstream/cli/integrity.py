"""Command line for trusting inputs and outputs: ``manifest`` and ``verify``.

``manifest DATA_DIR`` records a digest of every input file
(:mod:`arielstream.io.manifest`), which ``calibrate`` then checks each file against
before reading it; ``verify OUT.h5`` recomputes the stored checksum of every done
observation of an output file (:meth:`arielstream.io.ledger.Ledger.verify`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..io.manifest import MANIFEST_NAME
from ..io.storage import data_path
from ..units import format_bytes
from .exits import EXIT_FAILURES, EXIT_OK


def add_manifest(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``manifest`` (digests of a data folder's input files) to the sub-parsers ``sub``."""
    man = sub.add_parser("manifest", help="record a digest of every input file of a data folder", parents=parents,
                         description="Record the size and BLAKE2b digest of every *.parquet and *.csv file under "
                                     f"DATA_DIR in DATA_DIR/{MANIFEST_NAME} (or -o FILE). calibrate then checks "
                                     "each file an observation reads against it and fails the observation when "
                                     "a file differs.")
    man.set_defaults(handler=cmd_manifest)
    man.add_argument("data_dir", type=data_path, metavar="DATA_DIR",
                     help="the data folder: a local path, or a URL (s3://bucket/prefix...; then -o FILE is needed)")
    man.add_argument("-o", "--output", type=Path, metavar="FILE",
                     help=f"where to write the manifest (default DATA_DIR/{MANIFEST_NAME}; use this when DATA_DIR "
                          "is read-only, and give the file to calibrate --manifest FILE)")


def cmd_manifest(args: argparse.Namespace) -> int:
    """``arielstream manifest``: digest the input files and write the manifest."""
    from ..io.manifest import write_manifest
    from ..run.budget import available_cores

    path, n, size, seconds = write_manifest(args.data_dir, args.output, threads=available_cores())
    print(f"{path}: {n} input file(s), {format_bytes(size)} digested in {seconds:.1f} s")
    return EXIT_OK


def add_verify(sub, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``verify`` (recompute the stored checksums of an output file) to the sub-parsers ``sub``."""
    ver = sub.add_parser("verify", help="check every done observation of an output file against its checksum",
                         parents=parents,
                         description="Recompute the checksum of every done observation and compare it with "
                                     "the one stored when it was written. It covers everything a product reads "
                                     "of the observation: its cubes and quality planes, its provenance and "
                                     "inputs, its planet_id and visit, and the file's axes (time, column, "
                                     "wavelength, wavelength_label) and numerical attributes (config, "
                                     "wavelength_order, split, DQ bits); for an index, its own keys "
                                     "and axes. Files of format 2 and older: the cubes and quality planes only. "
                                     "Prints each observation as ok, damaged, failed or pending; exit 0 when every "
                                     "done observation matches, 65 when one does not (calibrate run again on "
                                     "the same output recomputes the damaged ones).")
    ver.set_defaults(handler=cmd_verify)
    ver.add_argument("path", type=Path, metavar="OUT.h5")


def cmd_verify(args: argparse.Namespace) -> int:
    """``arielstream verify``: one line per observation, then the counts; 65 if any done one is damaged."""
    from ..io.ledger import Ledger
    from ..io.reader import open_output
    from ..io.schema import PLANET_ID, STATUS_DONE, STATUS_FAILED, VISIT
    from ..io.store import read_descriptors

    with open_output(args.path) as f:
        planets, visits = f[PLANET_ID][()], f[VISIT][()]
    descriptors = read_descriptors(args.path)
    status, found = Ledger(descriptors).verify()
    damaged = set(found)
    counts: dict[str, int] = {}
    print(f"{'planet_id':>12}  visit  check")
    for index, (planet, visit) in enumerate(zip(planets.tolist(), visits.tolist(), strict=True)):
        if index in damaged:
            state = "damaged"
        elif status[index] == STATUS_DONE:
            state = "ok"
        elif status[index] == STATUS_FAILED:
            state = "failed"
        else:
            state = "pending"
        counts[state] = counts.get(state, 0) + 1
        print(f"{planet:>12}  {visit:>5}  {state}")
    print(f"{args.path}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) +
          ("; run the same calibrate command again to recompute the damaged ones" if damaged else ""))
    return EXIT_FAILURES if damaged else EXIT_OK


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"manifest": cmd_manifest, "verify": cmd_verify}


def add_commands(sub, parents: list[argparse.ArgumentParser]) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``manifest`` and ``verify`` to ``sub``; returns :data:`HANDLERS` (name -> handler)."""
    add_manifest(sub, parents)
    add_verify(sub, parents)
    return HANDLERS
