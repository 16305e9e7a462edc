"""A growing data folder: reruns compute only what is new or changed, keep the rest byte for byte, survive kills.

The nightly job's story: three planets calibrated; a fourth planet and a second visit of
the first arrive; a rerun computes exactly those two, publishes an index over the old
file (linked, not copied) and a new part; an input rewritten in place is noticed and its
observation alone recomputed (``--frozen`` refuses instead); the coordinator killed at
any step of the append leaves the old output readable, and the rerun ends with the same
output as an append that was never interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import arielstream
from arielstream.cli.exits import EXIT_CONFIG, EXIT_FAILURES, EXIT_NOINPUT, EXIT_OK
from arielstream.errors import ConfigMismatchError
from arielstream.io import store
from arielstream.io.sidefiles import OutputFiles
from arielstream.run import identity
from arielstream.simulate.dataset import simulate_dataset

from .test_batch import run_cli, same_bytes

DATASET_FILES = ("adc_info.csv", "axis_info.parquet", "train.csv", "train_star_info.csv", "wavelengths.csv")
KILLED = -9  # a subprocess killed by SIGKILL


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, int, list[int]]:
    """Four simulated planets; (folder, the planet with two visits, the other three)."""
    root = tmp_path_factory.mktemp("pool")
    planets = simulate_dataset(root, n_planets=4, scale=0.02, seed=5)
    two = next(p for p, visits in planets if visits == 2)
    return root, two, sorted(p for p, _ in planets if p != two)


def visit_files(planet_dir: Path, visit: int) -> list[Path]:
    return sorted(p for p in planet_dir.iterdir() if p.stem.endswith(f"_{visit}"))


def copy_planet(pool_dir: Path, data: Path, planet: int, visits: tuple[int, ...]) -> None:
    source, target = pool_dir / "train" / str(planet), data / "train" / str(planet)
    target.mkdir(parents=True, exist_ok=True)
    for visit in visits:
        for path in visit_files(source, visit):
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, target / path.name)


def three_planets(pool, where: Path) -> Path:
    """The data folder before it grows: the two-visit planet with its first visit only, and two others."""
    root, two, others = pool
    data = where / "data"
    (data / "train").mkdir(parents=True)
    for name in DATASET_FILES:
        shutil.copy2(root / name, data / name)
    copy_planet(root, data, two, (0,))
    for planet in others[:2]:
        copy_planet(root, data, planet, (0,))
    return data


def grow(pool, data: Path) -> None:
    """A fourth planet folder and the second visit of the first arrive."""
    root, two, others = pool
    copy_planet(root, data, others[2], (0,))
    copy_planet(root, data, two, (1,))


def observation_bytes(path: Path, inputs: bool = True) -> dict[tuple[int, int], bytes]:
    """Each observation's stored bytes: its cubes and DQ planes, its provenance, then its inputs and checksum.

    ``inputs=False`` leaves out the inputs and the checksum, which covers them (store.checksum).
    """
    descriptors = store.read_descriptors(path)
    with h5py.File(path, "r") as f:
        keys = list(zip(f["planet_id"][()].tolist(), f["visit"][()].tolist(), strict=True))
    out = {}
    for i, key in enumerate(keys):
        chunks = [np.ascontiguousarray(descriptors[k].open(i, mode="r")).tobytes()
                  for k in store.cube_keys(descriptors)]
        chunks += [np.asarray(descriptors[k].open(i, mode="r")).tobytes()
                   for k in ("provenance", "inputs", "checksum")[: 3 if inputs else 1]]
        out[key] = b"".join(chunks)
    return out


def on_disk(out: Path) -> list[str]:
    """The part files in ``OUT.h5.parts``."""
    folder = OutputFiles.of(out).parts
    return sorted(p.name for p in folder.glob("*.h5")) if folder.is_dir() else []


def referenced(out: Path) -> list[str]:
    """The part files ``OUT.h5`` refers to (none for a single file)."""
    with h5py.File(out, "r") as f:
        return sorted(Path(name).name for name in store.index_parts(f))


def retired(out: Path) -> set[str]:
    """The parts kept only for readers of an earlier index (removed by the next publish)."""
    return set().union(*OutputFiles.of(out).read_retired())


def report(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_a_growing_folder_is_extended_and_a_rewritten_input_recomputed(pool, tmp_path):
    data = three_planets(pool, tmp_path)
    out, rep = tmp_path / "out.h5", tmp_path / "report.json"
    code, _, stderr = run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--report", rep)
    assert code == EXIT_OK, stderr
    before = observation_bytes(out)
    inode = out.stat().st_ino
    assert len(before) == 3 and not OutputFiles.of(out).parts.exists()

    grow(pool, data)
    code, _, stderr = run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--report", rep)
    assert code == EXIT_OK, stderr
    grown = report(rep)
    assert (grown["action"], grown["computed"], grown["added"], grown["observations"]) == ("extend", 2, 2, 5)
    after = observation_bytes(out)
    assert len(after) == 5 and all(after[key] == value for key, value in before.items())  # bit-identical
    parts = sorted(OutputFiles.of(out).parts.iterdir())
    assert [p.name for p in parts] == ["0001.h5", "0002.h5"]
    assert parts[0].stat().st_ino == inode  # the first output became a part by a link: nothing was copied
    fresh = tmp_path / "fresh.h5"
    assert run_cli("calibrate", data, "-o", fresh, "--jobs", "1", "-q")[0] == EXIT_OK
    assert same_bytes(out, fresh)  # the same datasets and bytes as calibrating the grown folder at once

    _, two, others = pool
    rewritten = data / "train" / str(others[0]) / "FGS1_signal_0.parquet"
    rewritten.write_bytes(rewritten.read_bytes())  # the same bytes, written again: a new modification time
    code, _, stderr = run_cli("calibrate", data, "-o", out, "--jobs", "1", "--no-progress", "--report", rep)
    assert code == EXIT_OK, stderr
    again = report(rep)
    assert (again["action"], again["computed"], again["recomputed"], again["added"]) == ("recompute", 1, 1, 0)
    assert f"{others[0]}/visit 0: train/{others[0]}/FGS1_signal_0.parquet was modified" in stderr
    # the same bytes read again: the same result; only its recorded modification time is new
    assert observation_bytes(out, inputs=False) == observation_bytes(fresh, inputs=False)

    os.utime(rewritten, ns=(rewritten.stat().st_atime_ns, rewritten.stat().st_mtime_ns + 10**9))
    published = observation_bytes(out)
    code, _, stderr = run_cli("calibrate", data, "-o", out, "--frozen", "-q", "--report", rep)
    assert code == EXIT_CONFIG
    assert f"train/{others[0]}/FGS1_signal_0.parquet was modified" in stderr and "--frozen" in stderr
    assert "Traceback" not in stderr and observation_bytes(out) == published

    code, _, _ = run_cli("calibrate", data, "-o", out, "-q", "--report", rep)  # recompute it, then nothing to do
    assert code == EXIT_OK and report(rep)["recomputed"] == 1
    code, _, _ = run_cli("calibrate", data, "-o", out, "-q", "--report", rep)
    assert (code, report(rep)["action"], report(rep)["computed"]) == (EXIT_OK, "complete", 0)


@pytest.fixture(scope="module")
def clean_append(pool, tmp_path_factory) -> tuple[Path, Path]:
    """The grown folder appended without interruption: (data folder, output)."""
    where = tmp_path_factory.mktemp("clean")
    data = three_planets(pool, where)
    out = where / "out.h5"
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")[0] == EXIT_OK
    grow(pool, data)
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")[0] == EXIT_OK
    return data, out


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill-coordinator:1", "kill-publish:journal", "kill-publish:part",
                                   "kill-publish:rename"])
def test_a_coordinator_killed_during_the_append_leaves_the_old_output_and_the_rerun_finishes_it(
        pool, clean_append, tmp_path, monkeypatch, fault):
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")[0] == EXIT_OK
    before = observation_bytes(out)
    grow(pool, data)
    monkeypatch.setenv("ARIELSTREAM_FAULT", fault)
    code, _, _ = run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")
    assert code == KILLED
    assert observation_bytes(out) == before  # a reader still sees the old output, whole
    left = {"kill-coordinator:1": OutputFiles.of(out).partial, "kill-publish:journal": OutputFiles.of(out).journal,
            "kill-publish:part": OutputFiles.of(out).journal, "kill-publish:rename": OutputFiles.of(out).journal}[fault]
    assert left.exists()
    monkeypatch.delenv("ARIELSTREAM_FAULT")
    code, _, stderr = run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")
    assert code == EXIT_OK, stderr
    assert same_bytes(out, clean_append[1])
    assert observation_bytes(out) == observation_bytes(clean_append[1])
    assert not OutputFiles.of(out).partial.exists() and not OutputFiles.of(out).journal.exists()
    assert sorted(p.name for p in OutputFiles.of(out).parts.iterdir()) == ["0001.h5", "0002.h5"]  # nothing left over


def run(data: Path, out: Path, **options):
    return arielstream.calibrate(data, out, jobs=1, progress=False, log_file=False, **options)


def test_a_planet_removed_from_the_folder_is_kept_or_dropped_on_request(pool, tmp_path, caplog):
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run(data, out).ok
    _, two, others = pool
    shutil.rmtree(data / "train" / str(others[1]))
    kept = run(data, out)
    assert (kept.action, kept.results, len(kept.statuses)) == ("complete", [], 3)
    assert f"1 observation(s) no longer in the data folder are kept ({others[1]}/visit 0)" in caplog.text
    dropped = run(data, out, drop_missing=True)
    assert (dropped.action, dropped.results, dropped.counts["dropped"]) == ("update", [], [(others[1], 0)])
    with h5py.File(out, "r") as f:
        assert sorted(f["planet_id"][()].tolist()) == sorted([two, others[0]])
    assert run(data, out).action == "complete"


def test_an_index_reads_like_one_file_and_a_damaged_part_is_found_and_repaired(pool, tmp_path, capsys):
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run(data, out).ok
    grow(pool, data)
    assert run(data, out).action == "extend"
    descriptors = store.read_descriptors(out)
    signal = descriptors["AIRS-CH0/signal"]
    assert isinstance(signal, store.PartsDescriptor) and signal.shape[0] == 5
    with h5py.File(out, "r") as f:
        assert store.is_index(f) and f["AIRS-CH0/signal"].is_virtual
        for i in range(5):  # every observation's memmap is the bytes h5py reads through the index
            np.testing.assert_array_equal(np.asarray(signal.open(i, mode="r")), f["AIRS-CH0/signal"][i])
        np.testing.assert_array_equal(store.read_field(descriptors, "status"), f["status"][()])
    assert arielstream.cli.app.main(["verify", str(out)]) == EXIT_OK
    from arielstream.products.summary import summarize

    assert summarize(out)["parts"] == ["out.h5.parts/0001.h5", "out.h5.parts/0002.h5"]  # `info` names them
    alone = tmp_path / "alone" / "out.h5"  # the index copied without its parts: refused, not read as fill values
    alone.parent.mkdir()
    shutil.copy(out, alone)
    assert arielstream.cli.app.main(["info", str(alone)]) == EXIT_NOINPUT
    export = ["export", str(alone), "--format", "csv", "-o", str(tmp_path / "x")]
    assert arielstream.cli.app.main(export) == EXIT_NOINPUT
    assert "2 of them are missing or damaged (out.h5.parts/0001.h5 (missing)" in capsys.readouterr().err
    with h5py.File(alone, "r") as f:  # plain h5py reads NaN and "pending" there, never zeros that look valid
        assert np.isnan(f["AIRS-CH0/signal"][0]).all() and f["status"][0] == 0
    first = OutputFiles.of(out).parts / "0001.h5"
    target = store.read_descriptors(first)["FGS1/signal"]
    with open(first, "r+b") as fh:  # flip bytes of the first observation's FGS1 cube in the old part
        fh.seek(target.offset + 64)
        fh.write(b"\x7f\x7f\x7f\x7f")
    assert arielstream.cli.app.main(["verify", str(out)]) == EXIT_FAILURES
    assert "1 damaged" in capsys.readouterr().out
    repaired = run(data, out)
    assert (repaired.action, len(repaired.results)) == ("repair", 1)
    assert arielstream.cli.app.main(["verify", str(out)]) == EXIT_OK


def test_numerical_code_that_changed_refuses_to_extend_and_force_starts_afresh(pool, tmp_path, monkeypatch):
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run(data, out).ok
    grow(pool, data)
    assert run(data, out).action == "extend"  # the same numerical code extends (any other edit is not in it)
    (data / "train" / str(pool[2][0]) / "AIRS-CH0_signal_0.parquet").touch()
    monkeypatch.setattr(identity, "code_version", lambda: "9.9.9+000000000000")
    with pytest.raises(ConfigMismatchError, match="numerical code differs"):
        run(data, out)
    forced = run(data, out, force=True)
    assert (forced.action, len(forced.results)) == ("new", 5)
    with h5py.File(out, "r") as f:
        assert not store.is_index(f)  # one file again: the old parts are retired (removed by the next publish)
    assert referenced(out) == [] and set(on_disk(out)) == retired(out) == {"0001.h5", "0002.h5"}


def test_part_numbers_are_never_reused(pool, tmp_path):
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run(data, out).ok
    planet = data / "train" / str(pool[2][1])
    aside = tmp_path / "aside"
    shutil.move(planet, aside)
    assert run(data, out, drop_missing=True).action == "update"  # an index over the old file, linked as 0001
    shutil.move(aside, planet)
    assert run(data, out).action == "extend"  # the planet again, computed into 0002
    shutil.move(planet, aside)
    assert run(data, out, drop_missing=True).action == "update"  # 0002 referred to by nothing: retired
    assert (referenced(out), retired(out)) == (["0001.h5"], {"0002.h5"})
    shutil.move(aside, planet)
    assert run(data, out).action == "extend"  # this publish removes 0002
    assert referenced(out) == on_disk(out) == ["0001.h5", "0003.h5"]  # not 0002 again


@pytest.mark.slow
def test_a_stopped_dataset_master_run_resumes_and_frozen_sees_a_stopped_runs_inputs(tmp_path, monkeypatch):
    from .conftest import DATA_SAMPLES

    data = tmp_path / "data"
    shutil.copytree(DATA_SAMPLES, data, ignore=shutil.ignore_patterns("simulation_truth"))
    out = tmp_path / "out.h5"
    args = ("calibrate", data, "-o", out, "--jobs", "1", "-q", "--master-calibration", "dataset")
    monkeypatch.setenv("ARIELSTREAM_FAULT", "kill-coordinator:2")
    assert run_cli(*args)[0] == KILLED
    monkeypatch.delenv("ARIELSTREAM_FAULT")
    code, _, stderr = run_cli(*args)  # the stopped run resumes: its unfinished observations are not "new"
    assert code == EXIT_OK, stderr

    again = tmp_path / "again.h5"
    monkeypatch.setenv("ARIELSTREAM_FAULT", "kill-coordinator:2")
    assert run_cli(*args[:3], again, *args[4:])[0] == KILLED
    monkeypatch.delenv("ARIELSTREAM_FAULT")
    sorted((data / "train").iterdir())[0].joinpath("AIRS-CH0_signal_0.parquet").touch()  # a finished one's input
    code, _, stderr = run_cli(*args[:3], again, *args[4:], "--frozen")
    assert code == EXIT_CONFIG and "changed since they were calibrated" in stderr  # seen in the stopped run too
    code, _, stderr = run_cli(*args[:3], again, *args[4:])
    assert code == EXIT_CONFIG and "every observation depends on all the others" in stderr


@pytest.mark.slow
def test_a_force_run_killed_goes_on_alone_and_a_kill_before_removing_old_parts_is_finished(
        pool, clean_append, tmp_path, monkeypatch):
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")[0] == EXIT_OK
    grow(pool, data)
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")[0] == EXIT_OK  # an index over two parts
    monkeypatch.setenv("ARIELSTREAM_FAULT", "kill-coordinator:2")
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--force")[0] == KILLED
    monkeypatch.delenv("ARIELSTREAM_FAULT")
    code, _, stderr = run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--report", tmp_path / "r.json")
    assert code == EXIT_OK, stderr
    assert (report(tmp_path / "r.json")["action"], report(tmp_path / "r.json")["computed"]) == ("resume", 3)
    with h5py.File(out, "r") as f:
        assert not store.is_index(f)  # the force run finished alone: nothing kept from the old parts
    assert referenced(out) == [] and set(on_disk(out)) == retired(out)  # kept for old readers only
    assert same_bytes(out, clean_append[1])

    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--skip", "flat")[0] == EXIT_CONFIG
    (data / "train" / str(pool[2][0]) / "FGS1_signal_0.parquet").touch()
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q")[0] == EXIT_OK  # an index again
    monkeypatch.setenv("ARIELSTREAM_FAULT", "kill-publish:single")  # killed after the rename, before the cleanup
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--force")[0] == KILLED
    monkeypatch.delenv("ARIELSTREAM_FAULT")
    assert OutputFiles.of(out).parts.exists()
    code, _, stderr = run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--report", tmp_path / "r.json")
    assert (code, report(tmp_path / "r.json")["action"]) == (EXIT_OK, "complete"), stderr
    assert on_disk(out) and set(on_disk(out)) == retired(out)  # the old parts are not taken for newer observations
