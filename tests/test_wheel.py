"""``make wheel``: a wheel that installs with no network, no build and no dependencies fetched.

What a Kaggle kernel does (README, examples/kaggle_calibrate.py): the wheel lies in a read-only folder,
the environment already has numpy, pyarrow, astropy, numexpr, joblib, h5py and tqdm, and pip runs with
``--no-index --no-deps``. Here the fresh venv sees those packages through a ``.pth`` file naming this
environment's site-packages (a path line only: the editable install's own ``.pth`` there is not run,
so ``arielstream`` can only come from the wheel, which the test checks).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from arielstream._version import __version__
from arielstream.layout import discover_observations
from arielstream.run.identity import source_digest

from .conftest import DATA_SAMPLES, REPO
from .test_kaggle_recipe import TIMEOUT, clean_env, offline, read_only, tree_state

pytestmark = pytest.mark.slow

PACKAGE = REPO / "arielstream"
# what a build in the source folder would leave there (setuptools' build/ and *.egg-info, pip's dist/)
BUILD_LEFTOVERS = ("build", "dist", "*.egg-info")


@dataclass
class Built:
    wheel: Path
    digest: str  # source_digest of the sources when the wheel was built
    repo_before: dict[str, dict]
    repo_after: dict[str, dict]


def leftovers(root: Path) -> dict[str, dict]:
    """The build leftovers at the top of the repository, with the state of everything in them."""
    return {p.name: tree_state(p) for pattern in BUILD_LEFTOVERS for p in root.glob(pattern)}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """``make wheel`` with this environment as the venv (its stamp taken as up to date: no install)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    venv = Path(sys.prefix)
    dist = tmp_path_factory.mktemp("dist")
    before, digest = leftovers(REPO), source_digest(PACKAGE)
    result = subprocess.run([make, "-C", str(REPO), "-o", str(venv / ".installed"), "wheel", f"VENV={venv}",
                             f"DIST={dist}"], capture_output=True, text=True, timeout=TIMEOUT, env=clean_env())
    assert result.returncode == 0, (f"make wheel failed (the venv needs setuptools>=70.1, from the test extra: "
                                    f"make install):\n{result.stdout}\n{result.stderr}")
    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"arielstream-{__version__}-py3-none-any.whl"]
    return Built(wheels[0], digest, before, leftovers(REPO))


def test_make_wheel_leaves_no_build_files_in_the_repository(built):
    assert built.repo_after == built.repo_before


def test_wheel_holds_the_package_and_its_license_and_nothing_else(built):
    names = set(zipfile.ZipFile(built.wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert {n for n in names if n.endswith(".py")} == sources
    for sub in ("io", "run", "calibration", "products", "cli", "config", "simulate"):
        assert f"arielstream/{sub}/__init__.py" in names
    dist_info = f"arielstream-{__version__}.dist-info"
    packaged = {n for n in names if not n.startswith(f"{dist_info}/")}
    assert packaged == sources | {"arielstream/py.typed"}  # no benchmarks/, tests/, bytecode or data
    licenses = [n for n in names if n in (f"{dist_info}/LICENSE", f"{dist_info}/licenses/LICENSE")]
    assert licenses, sorted(names)
    with zipfile.ZipFile(built.wheel) as wheel:
        assert wheel.read(licenses[0]) == (REPO / "LICENSE").read_bytes()
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert "License: MIT" in metadata or "License-Expression: MIT" in metadata


def test_wheel_installs_offline_from_a_read_only_folder_and_calibrates(built, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT, env=clean_env())
    python = venv / "bin" / "python"
    wheelhouse = tmp_path / "kaggle-input" / "arielstream-wheel"
    wheelhouse.mkdir(parents=True)
    shutil.copy2(built.wheel, wheelhouse)
    with read_only(wheelhouse.parent):
        # before the .pth below: pip must not see this environment's (editable) arielstream as installed
        install = offline([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                           "--no-deps", str(wheelhouse / built.wheel.name)], cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr

    # the dependencies, as a Kaggle image has them: this environment's site-packages, after the venv's own
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True, env=clean_env()).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "zz_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    probe = offline([str(python), "-c", "import json, arielstream; print(json.dumps([arielstream.__file__, "
                                        "arielstream.__version__]))"], cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    module_file, version = json.loads(probe.stdout)
    assert Path(module_file).is_relative_to(site), f"arielstream imported from {module_file}, not the wheel"
    assert version == __version__

    exe = venv / "bin" / "arielstream"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    calibrate = offline([str(exe), "calibrate", str(DATA_SAMPLES), "--split", "train", "-o", str(tmp_path / "out.h5"),
                         "--memory", "2GB", "--no-progress"], cwd=run_dir)
    assert calibrate.returncode == 0, calibrate.stderr
    info = offline([str(exe), "info", "--json", str(tmp_path / "out.h5")], cwd=run_dir)
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    # the numerical code in the file is the wheel's, and it is that of the sources it was built from
    assert summary["arielstream_version"] == built.digest
    expected = {(o.planet_id, o.visit) for o in discover_observations(DATA_SAMPLES, "train")}
    assert {(o["planet_id"], o["visit"]) for o in summary["observations"]} == expected
    assert summary["status_counts"]["done"] == len(expected) and summary["status_counts"]["failed"] == 0
    assert list(run_dir.iterdir()) == []  # nothing written into the working directory
