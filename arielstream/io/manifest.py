"""Digests of a data folder's input files, and the check of each file against them before it is read.

The competition's Parquet files carry no page checksums, so a flipped bit or a
zeroed range in a data page decodes into wrong numbers without an error.
``arielstream manifest DATA_DIR`` records the size and a BLAKE2b digest of every
input file (``*.parquet`` and ``*.csv`` under ``DATA_DIR``) in
``DATA_DIR/arielstream-manifest.json`` (:data:`MANIFEST_NAME`; or another file
where ``DATA_DIR`` is read-only). A run given that manifest
(``--verify-inputs``, or automatically when ``DATA_DIR`` holds one) hashes each
file an observation reads in the worker just before reading it
(:func:`check_observation_inputs`): a file whose size or digest differs, or that
the manifest lists and is gone, fails that observation with a reason naming the
file. Before anything is written, a run refuses a manifest that does not list
every input file of its observations (:func:`check_manifest_covers`, exit 66);
a file that appears after that check is read with a warning.
Symlinked folders under ``DATA_DIR`` are followed.

Keys are paths relative to the data folder, with ``/`` separators, so a manifest
written elsewhere (``-o``) still applies to the folder it was made from, and to a
copy of it in an object store: a data folder given as a URL (:mod:`.storage`) is
checked the same way, each file streamed through its filesystem to be digested
(``arielstream manifest URL -o FILE`` writes one; nothing is written into the store).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError
from ..layout import INSTRUMENTS, Observation
from ..units import format_bytes
from . import atomic
from .storage import (
    DataPath,
    Listing,
    RemotePath,
    Stat,
    data_folder,
    data_path,
    describe,
    list_files,
    locator,
    read_blocks,
    read_bytes,
    relative,
    sort_paths,
    stamp,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "arielstream-manifest.json"
FORMAT = "arielstream-input-manifest"
VERSION = 1
ALGORITHM = "blake2b-128"
INPUT_SUFFIXES = (".parquet", ".csv")  # what a data folder's inputs are; anything else is not recorded
DATASET_FILES = ("adc_info.csv", "axis_info.parquet")  # read by every observation


def digest_file(path: str | DataPath) -> str:
    """Hex BLAKE2b (128-bit) digest of a file's bytes, read in 1 MiB blocks (hashlib releases the GIL)."""
    h = hashlib.blake2b(digest_size=16)
    for block in read_blocks(data_path(path)):
        h.update(block)
    return h.hexdigest()


def input_files(root: Path) -> list[Path]:
    """Every input file under ``root`` (sorted), leaving out hidden folders and files.

    Symlinked folders are followed (a planet folder linked in from elsewhere is read
    by a run like any other), and their files keep their paths under ``root`` as seen
    through the link. A link back to a folder it is inside of (a loop) is skipped.
    """
    found: list[Path] = []

    def walk(folder: Path, above: frozenset[str]) -> None:
        real = os.path.realpath(folder)
        if real in above:
            log.warning("%s: a symlink loop (back to %s); not followed", folder, real)
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:  # as os.walk: an unreadable folder is left out (a run then finds its files unlisted)
            log.warning("%s: cannot be listed, left out: %s", folder, exc)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows symlinks
                walk(folder / entry.name, above | {real})
            elif entry.name.endswith(INPUT_SUFFIXES):
                found.append(folder / entry.name)

    walk(Path(root), frozenset())
    return sorted(found)


def _key(path: DataPath, root: DataPath) -> str:
    return relative(path, root)


def write_manifest(data_dir: str | Path | RemotePath, output: str | Path | None = None,
                   threads: int | None = None) -> tuple[Path, int, int, float]:
    """Digest every input file of ``data_dir`` into ``output`` (default ``data_dir/MANIFEST_NAME``).

    Returns ``(manifest path, number of files, bytes digested, seconds)``. The
    manifest is written atomically; the files are digested on ``threads`` threads
    (default: one per CPU this process may use). A data folder under a URL is
    listed once and each file streamed through; its manifest goes to ``output``
    (required: nothing is written into the store).
    """
    root = data_folder(data_dir)
    if not root.is_dir():
        raise InputError(root, "data folder not found")
    if isinstance(root, RemotePath):
        if output is None:
            raise OutputError(f"{root}: a data folder under a URL is only read; give the manifest a local file "
                              "(-o FILE)")
        target = Path(output)
        files = sort_paths(p for p in list_files(root) if p.name.endswith(INPUT_SUFFIXES))
    else:
        target = Path(output) if output is not None else root / MANIFEST_NAME
        files = list[DataPath](input_files(root))
    if not files:
        raise InputError(root, f"no input files ({', '.join('*' + s for s in INPUT_SUFFIXES)}) to record")
    t0 = time.perf_counter()
    if not threads:
        from joblib import cpu_count  # the CPUs this process may use: affinity and container quota, as a run counts

        threads = cpu_count()

    def entry(path: DataPath) -> tuple[int, str]:
        try:
            return path.stat().st_size, digest_file(path)
        except OSError as exc:
            raise InputError(path, f"cannot be read: {exc}") from None

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="arielstream-digest") as pool:
        digests = list(pool.map(entry, files))
    seconds = time.perf_counter() - t0
    entries = {_key(p, root): {"size": size, "digest": digest}
               for p, (size, digest) in zip(files, digests, strict=True)}
    total = sum(size for size, _ in digests)
    document = {"format": FORMAT, "version": VERSION, "algorithm": ALGORITHM, "data_dir": describe(root),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": entries}
    with atomic.atomic_write(target, "write the input manifest") as tmp:
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    log.info("%s: %d input file(s), %s digested in %.1f s", target, len(entries), format_bytes(total), seconds)
    return target, len(entries), total, seconds


@dataclass(frozen=True)
class Manifest:
    """The recorded ``(size, digest)`` of each input file, by path relative to the data folder."""

    path: DataPath
    files: dict[str, tuple[int, str]]

    def check(self, path: DataPath, root: DataPath) -> bool:
        """Raise :class:`InputError` naming ``path`` if it differs from its record; False if it has none."""
        entry = self.files.get(_key(path, root))
        if entry is None:
            return False
        size, digest = entry
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise InputError(path, f"missing, but the input manifest {self.path} lists it") from None
        if actual != size:
            raise InputError(path, f"{actual} bytes, the input manifest {self.path} records {size} "
                                   "(changed or truncated since the manifest was written)")
        if digest_file(path) != digest:
            raise InputError(path, f"content differs from the input manifest {self.path} (BLAKE2b digest "
                                   "mismatch: damaged or changed since the manifest was written)")
        return True


def load_manifest(path: str | DataPath) -> Manifest:
    """Read and check a manifest written by :func:`write_manifest`; :class:`InputError` if it is not one."""
    path = data_path(path)
    try:
        document = json.loads(read_bytes(path))
    except FileNotFoundError:
        raise InputError(path, "input manifest not found (write one with: arielstream manifest DATA_DIR)") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable input manifest: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != VERSION \
            or document.get("algorithm") != ALGORITHM or not isinstance(document.get("files"), dict):
        raise InputError(path, f"not an arielstream input manifest ({FORMAT} version {VERSION}, {ALGORITHM})")
    try:
        files = {str(k): (int(v["size"]), str(v["digest"])) for k, v in document["files"].items()}
    except (TypeError, KeyError, ValueError):
        raise InputError(path, "malformed entry in the input manifest (each needs a size and a digest)") from None
    return Manifest(path, files)


def resolve_manifest(data_dir: str | Path | RemotePath, option: str | None) -> str | None:
    """The manifest a run checks its inputs against, checked readable now, or None.

    ``option`` is the ``verify_inputs`` run option: a manifest file (it must exist; a
    local path or a URL), or None for ``data_dir/MANIFEST_NAME`` when that exists and no
    check otherwise. Returns what :func:`.storage.data_path` reads back in the workers.
    """
    path = data_path(option) if option else data_path(data_dir) / MANIFEST_NAME
    if option is None and not path.exists():
        return None
    manifest = load_manifest(path)
    log.info("checking every input file against %s (%d file(s) recorded) before it is read",
             path, len(manifest.files))
    return locator(path.resolve())


@lru_cache(maxsize=2)
def _cached(path: str, stamped: tuple[int, int | None] | None) -> Manifest:
    return load_manifest(path)


_UNLISTED: set[DataPath] = set()  # files already warned about in this process


def observation_inputs(obs: Observation, root: DataPath, instruments: Iterable[str], all_visits: bool,
                       listing: Listing | None = None) -> list[DataPath]:
    """The files an observation reads: dataset-level files, its signal files and its calibration folders.

    ``all_visits``: the calibration folders of every visit of the planet (a master per planet).
    ``listing``: the data folder's files (under a URL), globbed instead of listing each folder.
    """
    def glob(folder: Any, pattern: str) -> list[DataPath]:
        if listing is not None and isinstance(folder, RemotePath):
            return list(listing.glob(folder, pattern))
        return sort_paths(folder.glob(pattern))

    paths = [root / name for name in DATASET_FILES]
    for name in instruments:
        inst = INSTRUMENTS[name]
        paths.append(obs.signal_path(inst))
        folders = glob(obs.folder, f"{inst.name}_calibration_*") if all_visits else \
            [obs.folder / inst.calibration_dir(obs.visit)]
        for folder in folders:
            paths += glob(folder, "*.parquet")
    return paths


def check_manifest_covers(manifest_path: str | None, observations: Iterable[Observation], root: DataPath,
                          instruments: Iterable[str], all_visits: bool = False, shown: int = 3) -> None:
    """Refuse a run whose manifest does not list every input file of its observations (before anything is written).

    ``manifest_path``: what :func:`resolve_manifest` returned (None: no manifest, nothing to check).
    Only files that exist count (a missing signal file fails its observation when it is processed).
    Raises :class:`InputError` naming the manifest, how many files it lacks and the first ``shown``.
    """
    if manifest_path is None:
        return
    manifest = load_manifest(manifest_path)
    instruments = tuple(instruments)
    reads = {p for obs in observations for p in observation_inputs(obs, root, instruments, all_visits)}
    needed = sort_paths(p for p in reads if p.exists())
    lacking = [_key(p, root) for p in needed if _key(p, root) not in manifest.files]
    if lacking:
        first = ", ".join(lacking[:shown]) + (f" and {len(lacking) - shown} more" if len(lacking) > shown else "")
        raise InputError(manifest.path, f"does not list {len(lacking)} of the {len(needed)} input files this run "
                                        f"reads ({first}); write it again: arielstream manifest {root}")


def check_observation_inputs(manifest_path: str, obs: Observation, root: DataPath, instruments: Iterable[str],
                             all_visits: bool = False) -> None:
    """Check each file ``obs`` reads against the manifest (in the worker, just before reading them).

    Files the manifest lists in the observation's calibration folders but that are
    gone count as missing. Raises :class:`InputError` naming the first bad file.
    """
    manifest = _cached(manifest_path, stamp(data_path(manifest_path)))
    paths = observation_inputs(obs, root, instruments, all_visits)
    folders = {_key(p.parent, root) + "/" for p in paths if p.parent not in (root, obs.folder)}
    listed = {root / k for k in manifest.files if k.rsplit("/", 1)[0] + "/" in folders}
    t0, checked = time.perf_counter(), 0
    for path in sort_paths(set(paths) | listed):
        if manifest.check(path, root):
            checked += 1
        elif path.exists() and path not in _UNLISTED:
            _UNLISTED.add(path)
            log.warning("%s: not in the input manifest %s; read without a check", path, manifest.path)
    log.debug("%s: %d input file(s) match the manifest (%.2f s)", obs.label, checked, time.perf_counter() - t0)


# ---------------------------------------------------------------- input fingerprints (what a rerun compares)
FINGERPRINT_BYTES = 2048  # the room the output gives it (io/store.py, INPUTS_BYTES)


def fingerprint(paths: Iterable[DataPath], root: DataPath, listing: Listing | None = None) -> str:
    """JSON of each input file's size and modification time (ns), keyed by its path relative to ``root``.

    What an observation was computed from, stored beside it (``/inputs``); a rerun
    compares it with the files now (:func:`fingerprint_changes`). Only ``stat`` is
    read: no file is opened (a Parquet footer digest was measured and left out, see
    README "Nightly jobs"). A missing file is recorded as ``null``. Longer than the
    room the output gives it (thousands of calibration files), only a digest of the
    whole is kept, so a change is still seen, without the name of the file.
    ``listing``: the sizes and times of a data folder under a URL, from one listing
    (:func:`input_fingerprints`); the store's modification times (S3: whole seconds)
    and sizes, as pyarrow's FileInfo gives them (it gives no ETag).
    """
    entries: dict[str, list[int | None] | None] = {}
    for path in sort_paths(set(paths)):
        st: Stat | os.stat_result | None
        try:
            st = listing.stat(path) if listing is not None and isinstance(path, RemotePath) else path.stat()
        except OSError:
            st = None
        entries[_key(path, root)] = None if st is None else [st.st_size, st.st_mtime_ns]
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > FINGERPRINT_BYTES:
        text = json.dumps({"digest": hashlib.blake2b(text.encode(), digest_size=16).hexdigest()})
    return text


def input_fingerprints(observations: Iterable[Observation], root: DataPath, instruments: Iterable[str],
                       all_visits: bool = False) -> dict[tuple[int, int], str]:
    """:func:`fingerprint` of each observation's inputs, by ``(planet, visit)``: what a run records and compares.

    A local folder is read file by file (``stat``); a data folder under a URL is listed
    once (its own files and each split folder's, recursively): a request per thousand
    objects on S3, where a request per file would take minutes for the full archive.
    """
    observations, instruments = list(observations), tuple(instruments)
    listing = None
    if isinstance(root, RemotePath):
        files = list_files(root, recursive=False)
        for split in {o.folder.parent for o in observations if isinstance(o.folder, RemotePath)}:
            files.update(list_files(split))
        listing = Listing(files)
    return {(o.planet_id, o.visit): fingerprint(observation_inputs(o, root, instruments, all_visits, listing), root,
                                                listing) for o in observations}


def fingerprint_changes(stored: str, current: str) -> list[str]:
    """What differs between two fingerprints, one phrase per file (empty: the same; unknown: never a change).

    An empty ``stored`` (an output written before fingerprints, or a failed
    observation) has nothing to compare and reports no change.
    """
    if not stored or stored == current:
        return []
    try:
        old, new = json.loads(stored), json.loads(current)
    except ValueError:
        return ["the recorded fingerprint cannot be read"]
    if "digest" in old or "digest" in new:
        return ["input files changed (too many to name)"]
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if a is None:
            changes.append(f"{key} is new")
        elif b is None:
            changes.append(f"{key} is gone")
        elif a[0] != b[0]:
            changes.append(f"{key} changed size ({a[0]} -> {b[0]} bytes)")
        else:
            changes.append(f"{key} was modified (same size, new modification time)")
    return changes
