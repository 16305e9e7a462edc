"""examples/kaggle_calibrate.py as a Kaggle kernel runs it: a read-only competition folder, no network.

Also the helpers ``tests/test_wheel.py`` shares: :func:`offline_prefix` (a command prefix that cuts the
network) and :func:`read_only` (a folder made read-only, and checked unchanged afterwards: root ignores
permission bits, so the bits alone prove nothing when the tests run as root).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from arielstream.products.score import score_files

from .conftest import DATA_SAMPLES, REPO

SCRIPT = REPO / "examples" / "kaggle_calibrate.py"
COMPETITION = "ariel-data-challenge-2025"
TIMEOUT = 900  # seconds: only against a hang; the runs take seconds


@functools.cache
def offline_prefix() -> tuple[str, ...] | None:
    """``unshare -n`` (or, unprivileged, ``unshare -r -n``): a command in a new, empty network namespace.

    None where neither is permitted (e.g. a container without user namespaces).
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ((unshare, "-n"), (unshare, "-r", "-n")):
        if subprocess.run([*prefix, "true"], capture_output=True, timeout=60).returncode == 0:
            return prefix
    return None


def clean_env() -> dict[str, str]:
    """The environment for a subprocess, without a PYTHONPATH that could bring in the source tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def offline(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run ``cmd`` without network where that can be arranged (:func:`offline_prefix`), else as it is."""
    prefix = offline_prefix() or ()
    kw.setdefault("env", clean_env())
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=TIMEOUT, **kw)


def tree_state(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` (itself included): is it a folder, its size, its mtime in ns."""
    state = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        state[path.relative_to(root).as_posix()] = (stat.S_ISDIR(st.st_mode), st.st_size, st.st_mtime_ns)
    return state


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[None]:
    """``chmod -R a-w root`` for the block; afterwards nothing in it may have been added, removed or changed."""
    before = tree_state(root)
    paths = [root, *root.rglob("*")]
    for path in paths:
        os.chmod(path, path.stat().st_mode & ~0o222)
    try:
        yield
    finally:
        for path in paths:
            os.chmod(path, path.stat().st_mode | stat.S_IWUSR)
    after = tree_state(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"written into the read-only {root}: {changed}"


@pytest.fixture(scope="module")
def kaggle_input(tmp_path_factory) -> Path:
    """The competition's layout from data_samples/: train/ and the same planets as test/, with their files."""
    root = tmp_path_factory.mktemp("kaggle") / "input" / COMPETITION
    root.mkdir(parents=True)
    for name in ("adc_info.csv", "axis_info.parquet", "wavelengths.csv", "train.csv", "train_star_info.csv"):
        shutil.copy2(DATA_SAMPLES / name, root / name)
    shutil.copy2(DATA_SAMPLES / "train_star_info.csv", root / "test_star_info.csv")
    for split in ("train", "test"):
        shutil.copytree(DATA_SAMPLES / "train", root / split)
    return root


def run_script(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return offline([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd)


def test_offline_prefix_leaves_only_loopback():
    """What the tests below call 'no network': a namespace whose only interface is lo (no route out)."""
    prefix = offline_prefix()
    if prefix is None:
        pytest.skip("unshare -n is not permitted here (no user/network namespaces): the runs keep the network")
    code = "import json, socket; print(json.dumps([name for _, name in socket.if_nameindex()]))"
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True, env=clean_env()).stdout
    assert json.loads(out) == ["lo"]


@pytest.mark.slow
def test_recipe_calibrates_the_test_split_from_a_read_only_input_offline(kaggle_input, tmp_path):
    work, scratch = tmp_path / "working", tmp_path / "tmp"
    with read_only(kaggle_input.parent):
        result = run_script("--input", kaggle_input, "--work", work, "--scratch", scratch, "--memory", "2GB",
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    h5_path = scratch / "arielstream" / "test.h5"
    npy = {name: work / f"data_test{name}" for name in (".npy", "_FGS.npy", "_index.csv")}
    submission = work / "submission.csv"
    # it says where everything is, and writes nothing else into the kept folder
    assert f"calibrated: {h5_path}" in result.stdout
    assert all(f"exported:   {path}" in result.stdout for path in npy.values())
    assert f"submission: {submission} (2 planet(s)" in result.stdout
    assert sorted(work.iterdir()) == sorted([*npy.values(), submission])
    assert (scratch / "arielstream" / "test.h5.log").is_file()
    assert (scratch / "arielstream" / "test.fits.h5").is_file()  # the per-visit fits stay in scratch

    # the submission: one row per planet, the competition's header, every value a non-negative number
    with open(submission, newline="") as fh:
        header, *sub_rows = list(csv.reader(fh))
    n = 283
    assert header == ["planet_id", *(f"wl_{i}" for i in range(1, n + 1)), *(f"sigma_{i}" for i in range(1, n + 1))]
    assert all(len(row) == 2 * n + 1 for row in sub_rows)
    assert sorted(int(row[0]) for row in sub_rows) == sorted(int(p.name) for p in (kaggle_input / "test").iterdir())
    values = np.array([row[1:] for row in sub_rows], dtype=float)
    assert np.isfinite(values).all() and (values >= 0).all() and (values[:, n:] > 0).all()
    # the test split here is the train samples: their truth scores it (the score validates the file; the
    # metric is clipped to [0, 1]: above 0 is better than the naive prediction)
    assert 0.0 < score_files(submission, DATA_SAMPLES / "train.csv").score <= 1.0

    with h5py.File(h5_path, "r") as f:
        assert f.attrs["split"] in ("test", b"test")
        planet_ids, visits = f["planet_id"][()], f["visit"][()]
        airs, fgs1 = f["AIRS-CH0/signal"][()], f["FGS1/signal"][()]
        detector_order = np.argsort(f["AIRS-CH0/column"][()])  # the notebook's order: detector columns 39..320
    assert sorted(zip(planet_ids.tolist(), visits.tolist(), strict=True)) == sorted(
        (int(p.name), int(s.stem.rsplit("_", 1)[1]))
        for p in (kaggle_input / "test").iterdir() for s in p.glob("AIRS-CH0_signal_*.parquet"))
    with open(npy["_index.csv"], newline="") as fh:
        rows = [(int(r["planet_id"]), int(r["visit"])) for r in csv.DictReader(fh)]
    assert rows == list(zip(planet_ids.tolist(), visits.tolist(), strict=True))
    data, data_fgs = np.load(npy[".npy"]), np.load(npy["_FGS.npy"])
    # float64 and bad pixels 0, as the organisers' baseline reads them
    assert data.dtype == data_fgs.dtype == np.float64
    assert np.isnan(airs).any(), "the samples have bad pixels: the fill value is what this checks"
    np.testing.assert_array_equal(data, np.nan_to_num(airs[:, :, detector_order, :], nan=0.0))
    np.testing.assert_array_equal(data_fgs, np.nan_to_num(fgs1, nan=0.0))


@pytest.mark.slow
def test_recipe_scores_the_train_split_against_its_truth(kaggle_input, tmp_path):
    work = tmp_path / "working"
    result = run_script("--input", kaggle_input, "--split", "train", "--work", work, "--scratch", tmp_path / "tmp",
                        "--memory", "2GB", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = score_files(work / "submission.csv", kaggle_input / "train.csv").score
    assert f"score:      {expected:.6f} against {kaggle_input / 'train.csv'}" in result.stdout


@pytest.mark.slow
def test_recipe_quick_try_of_one_planet_writes_its_submission(kaggle_input, tmp_path):
    work = tmp_path / "working"
    result = run_script("--input", kaggle_input, "--split", "train", "--work", work, "--scratch", tmp_path / "tmp",
                        "--memory", "2GB", "--planets", "73079497", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(work / "submission.csv", newline="") as fh:
        assert [int(row["planet_id"]) for row in csv.DictReader(fh)] == [73079497]
    assert "score:      not computed" in result.stdout  # the truth holds every planet of the split


@pytest.mark.parametrize("case", ["missing split", "scratch is a file"])
def test_recipe_failure_is_one_line_and_non_zero(kaggle_input, tmp_path, case):
    args: list[str | Path] = ["--input", kaggle_input, "--work", tmp_path / "working"]
    if case == "missing split":
        args += ["--split", "validation", "--scratch", tmp_path / "tmp"]
    else:
        (tmp_path / "tmp").write_text("not a folder")
        args += ["--scratch", tmp_path / "tmp"]
    result = run_script(*args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()  # log lines may come first; the message is the last line
    assert lines and lines[-1].startswith("kaggle_calibrate: "), result.stderr
    assert sum(line.startswith("kaggle_calibrate: ") for line in lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
