"""The oldest dependencies setup.cfg allows: ``constraints-floor.txt`` installs and runs the commands.

The constraints file pins exactly the lower bound of every ``install_requires`` entry (checked here
without network). The slow test installs those pins from PyPI into a fresh venv (binary wheels only),
installs the wheel ``make wheel`` builds with ``--no-deps`` (what a Kaggle kernel does), and runs
``calibrate --jobs 2`` (the joblib pool), ``extract`` and ``export --format csv`` there, without network.

The venv of pins is kept in ``~/.cache/arielstream-floor-venv-<hash>`` (``$XDG_CACHE_HOME`` if set),
keyed by the constraints file and the Python version: a change to either makes a new one. Only its
first build needs PyPI; where PyPI cannot be reached then, the test skips, saying so. The fallbacks
for pyarrow 14 are also tested here, fast, in this environment.
"""

from __future__ import annotations

import configparser
import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from arielstream._version import __version__
from arielstream.errors import MissingDependencyError
from arielstream.io import signal
from arielstream.layout import discover_observations
from arielstream.run.identity import source_digest
from arielstream.simulate import dataset

from .conftest import DATA_SAMPLES, REPO
from .test_kaggle_recipe import TIMEOUT, clean_env, offline

CONSTRAINTS = REPO / "constraints-floor.txt"
CONSTRAINTS_EXTRAS = REPO / "constraints-floor-extras.txt"  # the extras' floors, over CONSTRAINTS
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
PIP = ("-m", "pip", "--disable-pip-version-check", "--no-input")
COMPLETE = "arielstream-floor-complete"  # in the venv, written last: its pins are installed and checked


def install_requires(applicable: bool = True) -> list[Requirement]:
    """setup.cfg's ``install_requires`` entries (only those that apply to this Python if ``applicable``)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    lines = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
    return [r for r in (Requirement(line) for line in lines if line)
            if not applicable or r.marker is None or r.marker.evaluate()]


def extras_require() -> dict[str, list[Requirement]]:
    """setup.cfg's optional extras (not ``test``, the developers' tools): name -> requirements."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    return {name: [Requirement(line.strip()) for line in value.splitlines() if line.strip()]
            for name, value in cfg["options.extras_require"].items() if name != "test"}


def pins(applicable: bool = True, path: Path = CONSTRAINTS) -> dict[str, str]:
    """A constraints file: normalised name -> pinned version (only those for this Python if ``applicable``)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one "==" each
        assert spec.operator == "==", line
        if not applicable or req.marker is None or req.marker.evaluate():
            out[canonical(req.name)] = spec.version
    return out


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def assert_pinned_at_their_floors(requirements: list[Requirement], constraints: Path, where: str = "") -> dict:
    """Each requirement has one lower bound (>=), which ``constraints`` pins exactly; returns the pins."""
    pinned = pins(applicable=False, path=constraints)
    for req in requirements:
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{where}{req}: one lower bound (>=) expected, the floor the constraints pin"
        pin = pinned.get(canonical(req.name))
        assert pin is not None, f"{where}{req.name} is not pinned in {constraints.name}"
        assert Version(pin) == Version(lower[0]), f"{constraints.name}: {where}{req.name} {pin}, floor {lower[0]}"
    return pinned


def test_the_constraints_pin_exactly_the_lower_bound_of_every_requirement():
    assert_pinned_at_their_floors(install_requires(applicable=False), CONSTRAINTS)


def run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", clean_env())
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT, **kw)


def cache_folder(*constraints: Path, kind: str = "floor-venv") -> Path:
    """The cached venv of ``constraints`` (default constraints-floor.txt) for this Python: ``arielstream-<kind>-…``."""
    key = hashlib.sha256(b"".join(path.read_bytes() for path in (constraints or (CONSTRAINTS,))))
    key.update(f"{platform.python_implementation()} {PYTHON} {platform.machine()}".encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only or absent home: a cache for this machine's session only
        root = Path(tempfile.gettempdir())
    return root / f"arielstream-{kind}-{key.hexdigest()[:16]}"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another pytest run building or using the same cached venv waits (the venv is changed by each run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def installed_versions(python: Path) -> dict[str, str]:
    """What the venv's Python finds installed: normalised name -> version."""
    probe = run([python, "-c", "import json, importlib.metadata as m; "
                               "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"])
    assert probe.returncode == 0, probe.stderr
    return {canonical(name): version for name, version in json.loads(probe.stdout).items()}


def build_floor_venv(venv: Path, tmp_path: Path, constraints: Path = CONSTRAINTS,
                     requirements: list[Requirement] | None = None) -> None:
    """A fresh venv holding exactly the constraints' pins, from PyPI; skips where PyPI cannot be reached.

    ``requirements``: what to install under them (default setup.cfg's ``install_requires``).
    """
    shutil.rmtree(venv, ignore_errors=True)  # an unfinished one (no COMPLETE), or one whose Python moved
    made = run([sys.executable, "-m", "venv", venv])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # PyPI reachable? One small wheel of the pins, downloaded (pip's own index settings apply)
    probe = run([python, *PIP, "download", "--no-deps", "--only-binary=:all:", "--retries", "1", "--timeout", "30",
                 "-d", tmp_path / "probe", f"tqdm=={pins()['tqdm']}"])
    if probe.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        why = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
        pytest.skip(f"PyPI cannot be reached (pip download tqdm failed: {why}), so the floor venv cannot be built")
    # setup.cfg's requirements as they are, under the pins: a pin outside its requirement fails to resolve
    install = run([python, *PIP, "install", "--only-binary=:all:", "--progress-bar", "off", "-c", constraints,
                   *(str(r) for r in (requirements or install_requires()))])
    assert install.returncode == 0, (f"the floor pins do not install on Python {PYTHON}:\n"
                                     f"{install.stdout[-3000:]}\n{install.stderr[-3000:]}")
    (venv / COMPLETE).write_text(install.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """``make wheel`` with this environment as the venv (as in tests/test_wheel.py), and its sources' digest."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dist = tmp_path_factory.mktemp("dist")
    digest = source_digest(REPO / "arielstream")  # when built: the sources may be edited during the test
    built = run([make, "-C", REPO, "-o", Path(sys.prefix) / ".installed", "wheel", f"VENV={sys.prefix}",
                 f"DIST={dist}"])
    assert built.returncode == 0, f"make wheel failed:\n{built.stdout}\n{built.stderr}"
    (found,) = dist.glob(f"arielstream-{__version__}-*.whl")
    return found, digest


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info >= (3, 12), reason=f"the floor pins are for Python 3.10 and 3.11 (numpy 1.24 "
                    f"has no wheel for Python {PYTHON})")
def test_the_floor_versions_install_and_calibrate_extract_and_export(wheel, tmp_path):
    wheel_file, digest = wheel
    venv = cache_folder()
    python, exe = venv / "bin" / "python", venv / "bin" / "arielstream"
    with locked(venv.with_name(venv.name + ".lock")):
        usable = (venv / COMPLETE).is_file() and python.exists() and run([python, "-c", "pass"]).returncode == 0
        if not usable:
            build_floor_venv(venv, tmp_path)
        install = run([python, *PIP, "install", "--no-index", "--no-deps", "--force-reinstall", wheel_file])
        assert install.returncode == 0, install.stdout + install.stderr
        # exactly the pins (nothing upgraded since), and they satisfy the wheel's own requirements
        versions = installed_versions(python)
        assert {name: versions.get(name) for name in pins()} == pins()
        check = run([python, *PIP, "check"])
        assert check.returncode == 0, check.stdout + check.stderr

        out, lc, tables = tmp_path / "out.h5", tmp_path / "out.lightcurves.h5", tmp_path / "tables"
        work = tmp_path / "work"
        work.mkdir()
        calibrate = offline([str(exe), "calibrate", str(DATA_SAMPLES), "-o", str(out), "--jobs", "2",
                             "--no-progress"], cwd=work)
        assert calibrate.returncode == 0, calibrate.stderr
        info = offline([str(exe), "info", "--json", str(out)], cwd=work)
        assert info.returncode == 0, info.stderr
        verify = offline([str(exe), "verify", str(out)], cwd=work)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        extract = offline([str(exe), "extract", str(out), "-o", str(lc)], cwd=work)
        assert extract.returncode == 0, extract.stderr
        export = offline([str(exe), "export", str(lc), "--format", "csv", "-o", str(tables)], cwd=work)
        assert export.returncode == 0, export.stderr

    summary = json.loads(info.stdout)
    assert summary["arielstream_version"] == digest  # the wheel's code ran
    expected = {(o.planet_id, o.visit) for o in discover_observations(DATA_SAMPLES, "train")}
    assert {(o["planet_id"], o["visit"]) for o in summary["observations"]} == expected
    assert summary["status_counts"]["done"] == len(expected) and summary["status_counts"]["failed"] == 0

    with open(tables / "lightcurves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for planet, visit in expected:
        ours = [r for r in rows if (int(r["planet_id"]), int(r["visit"])) == (planet, visit)]
        assert {r["instrument"] for r in ours} == {"AIRS-CH0", "AIRS-CH0-white", "FGS1"}
        white = [float(r["normalised_flux"]) for r in ours if r["instrument"] != "AIRS-CH0"]
        assert all(math.isfinite(v) and 0.9 < v < 1.1 for v in white), (planet, visit, white)


def test_without_page_checksum_verification_parquet_files_open_unverified_and_a_debug_line_says_so_once(
        tmp_path, monkeypatch, caplog):
    """pyarrow 14 (the floor): ``page_checksum_verification`` is not passed, and the reader says so once."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(3, dtype=np.uint16)}), path)
    opened: list[dict] = []

    class Pyarrow14ParquetFile(pq.ParquetFile):
        def __init__(self, source, **options):
            opened.append(options)
            super().__init__(source, **options)

    monkeypatch.setattr(signal.pq, "ParquetFile", Pyarrow14ParquetFile)
    monkeypatch.setattr(signal, "PAGE_CHECKSUM_VERIFICATION", False)
    signal._unverified_once.cache_clear()
    with caplog.at_level(logging.DEBUG, logger="arielstream.io.signal"):
        for _ in range(2):
            assert signal.open_parquet(path, memory_map=False).read().column("a").to_pylist() == [0, 1, 2]
    assert opened == [{"memory_map": False}] * 2
    assert [r.getMessage() for r in caplog.records].count(
        f"pyarrow {pa.__version__} cannot verify Parquet page checksums (pyarrow >= 15 can): pages written with "
        "one are decoded unverified") == 1
    signal._unverified_once.cache_clear()


def test_simulate_page_checksums_without_pyarrow_15_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    def write_table_of_pyarrow_14(table, where, **options):  # no write_page_checksum parameter
        raise AssertionError("nothing may be written")

    monkeypatch.setattr(pq, "write_table", write_table_of_pyarrow_14)
    with pytest.raises(MissingDependencyError, match=r"pyarrow >= 15 .*pip install 'pyarrow>=15'"):
        dataset.simulate_dataset(tmp_path / "sim", n_planets=1, scale=0.02, page_checksums=True)
    assert not (tmp_path / "sim").exists()


def merged_constraints(target: Path) -> Path:
    """constraints-floor.txt with constraints-floor-extras.txt's pins over it, written to ``target``."""
    merged = {**pins(), **pins(path=CONSTRAINTS_EXTRAS)}
    target.write_text("".join(f"{name}=={version}\n" for name, version in merged.items()))
    return target


def test_the_extras_constraints_pin_exactly_the_lower_bound_of_every_extra():
    for extra, requirements in extras_require().items():
        pinned = assert_pinned_at_their_floors(requirements, CONSTRAINTS_EXTRAS, f"[{extra}] ")
        for req in requirements:
            if "distributed" in req.extras:  # dask[distributed] installs distributed of dask's version
                assert pinned.get("distributed") == pinned[canonical(req.name)]


EXTRAS_SCRIPT = """
import json, sys
import h5py, numpy as np, xarray, distributed
import arielstream
from arielstream.products.quicklook import quicklook

if __name__ == "__main__":
    data, work = sys.argv[1], sys.argv[2]
    assert arielstream.calibrate(data, work + "/loky.h5", jobs=2, progress=False, log_file=False).ok
    with h5py.File(work + "/loky.h5") as f:
        engines = {json.loads(p)["engine"] for p in f["provenance"][()]}
    with arielstream.open(work + "/loky.h5") as res:
        lazy = res.to_xarray()
        assert lazy.airs.dims == ("obs", "airs_time", "wavelength", "airs_y")
    with xarray.open_dataset(work + "/loky.h5", engine="h5netcdf", group="AIRS-CH0") as airs:
        assert airs.signal.dims == ("obs", "time", "wavelength", "row")
        assert np.array_equal(airs.signal.values, lazy.airs.values, equal_nan=True)
    page = quicklook(work + "/loky.h5", work + "/ql", obs=[0])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        assert arielstream.calibrate(data, work + "/dask.h5", backend="dask", scheduler=cluster.scheduler_address,
                                     progress=False, log_file=False, task_timeout=600).ok
    with h5py.File(work + "/loky.h5") as a, h5py.File(work + "/dask.h5") as b:
        same = all(np.array_equal(a[k][()], b[k][()], equal_nan=True) for k in ("AIRS-CH0/signal", "FGS1/signal"))
    print(json.dumps({"engines": sorted(engines), "page": str(page), "same": same}))
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info >= (3, 12), reason=f"the floor pins are for Python 3.10 and 3.11 (numpy 1.24 "
                    f"has no wheel for Python {PYTHON})")
def test_the_extras_at_their_floors_run_numba_quicklook_xarray_and_dask(wheel, tmp_path):
    wheel_file, digest = wheel
    venv = cache_folder(CONSTRAINTS, CONSTRAINTS_EXTRAS, kind="floor-extras-venv")
    python = venv / "bin" / "python"
    constraints = merged_constraints(tmp_path / "constraints.txt")
    with locked(venv.with_name(venv.name + ".lock")):
        usable = (venv / COMPLETE).is_file() and python.exists() and run([python, "-c", "pass"]).returncode == 0
        if not usable:
            extras = [r for requirements in extras_require().values() for r in requirements]
            build_floor_venv(venv, tmp_path, constraints, [*install_requires(), *extras])
        install = run([python, *PIP, "install", "--no-index", "--no-deps", "--force-reinstall", wheel_file])
        assert install.returncode == 0, install.stdout + install.stderr
        versions = installed_versions(python)
        expected = pins(path=constraints)
        assert {name: versions.get(name) for name in expected} == expected
        check = run([python, *PIP, "check"])
        assert check.returncode == 0, check.stdout + check.stderr
        script, work = tmp_path / "extras.py", tmp_path / "work"
        script.write_text(EXTRAS_SCRIPT)
        work.mkdir()
        # with the network (the dask cluster talks over loopback, which a fresh network namespace has down)
        ran = run([python, script, DATA_SAMPLES, work], cwd=work)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-5000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["engines"] == [f"numba {expected['numba']}"]  # the compiled kernels ran, at numba's floor
    assert result["same"], "the dask backend and the local pool gave different cubes"
    assert Path(result["page"]).is_file()
