"""The output as one object: what a run may write, and an output that moves, loses a part or is read across a publish.

Each test is a slip a user makes, or a thing that happens to an archive over months:
a report or an output named onto an input or onto the output itself; a subset run with
``--drop-missing``; an output renamed with its parts folder, reached through a symlink, or
whose data folder moved; a part deleted or cut short; a reader that keeps the output open
while a later run publishes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from arielstream.cli.app import main
from arielstream.cli.exits import EXIT_CONFIG, EXIT_NOINPUT, EXIT_OK
from arielstream.io import reader, schema, store
from arielstream.io.sidefiles import OutputFiles

from .conftest import DATA_SAMPLES
from .test_batch import run_cli, same_bytes
from .test_incremental import grow, pool, run, three_planets  # noqa: F401 - pool is a fixture

pytestmark = pytest.mark.slow  # several small calibrations each


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """A copy of data_samples (its files are the inputs the slips below must not touch)."""
    data = tmp_path_factory.mktemp("samples") / "data"
    shutil.copytree(DATA_SAMPLES, data, ignore=shutil.ignore_patterns("simulation_truth", "reference"))
    return data


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_slip_of_the_finger_is_refused_and_nothing_is_written(samples, tmp_path):
    before = _snapshot(samples)
    out = tmp_path / "r.h5"
    out.write_bytes(b"a calibrated output the user keeps")
    signal = next((samples / "train").glob("*/AIRS-CH0_signal_0.parquet"))
    link = tmp_path / "link.h5"
    link.symlink_to(samples / "train.csv")
    other = tmp_path / "other.h5"  # another output, with a part and a lock
    (tmp_path / "other.h5.parts").mkdir()
    for name in ("other.h5", "other.h5.lock", "other.h5.parts/0001.h5"):
        (tmp_path / name).write_bytes(b"another output's")
    config = tmp_path / "run.toml"
    config.write_text("[run]\njobs = 1\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "r1" / "train.h5.parts").mkdir(parents=True)  # a named run's folder, extended once
    keep = {"link.h5", "r.h5", "other.h5", "other.h5.lock", "other.h5.parts", "run.toml", "fifo", "r1"}
    slips = {
        "--report is the output": ["-o", out, "--report", out],
        "--report is an input": ["-o", tmp_path / "o.h5", "--report", samples / "train.csv"],
        "--report is the output's log": ["-o", tmp_path / "o.h5", "--report", tmp_path / "o.h5.log"],
        "-o is a signal file, --force": ["-o", signal, "--force"],
        "-o is inside the data folder": ["-o", samples / "out.h5"],
        "-o is a link to an input": ["-o", link, "--force"],
        "-o is another output's part": ["-o", tmp_path / "other.h5.parts" / "0001.h5"],
        "-o is another output's lock": ["-o", tmp_path / "other.h5.lock", "--force"],
        "-o is the config file, --force": ["-o", config, "--config", config, "--force"],
        "--report is a fifo": ["-o", tmp_path / "o.h5", "--report", fifo],
        "--report is a folder": ["-o", tmp_path / "o.h5", "--report", tmp_path],
        "--run in the data folder": ["--run", "12345", "--runs-dir", samples / "train"],
        "--report in a named run's parts": ["--run", "r1", "--runs-dir", tmp_path,
                                            "--report", tmp_path / "r1" / "train.h5.parts" / ".retired"],
    }
    for slip, args in slips.items():
        code, _, stderr = run_cli("calibrate", samples, "--no-progress", *args)
        assert code == EXIT_CONFIG, (slip, stderr)
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, (slip, stderr)
        assert any(hint in stderr for hint in ("write it elsewhere", "another name", "name the JSON file")), slip
    assert _snapshot(samples) == before  # no input touched, nothing added to the data folder
    assert out.read_bytes() == b"a calibrated output the user keeps"
    assert {p.name for p in tmp_path.iterdir()} == keep  # no .partial, .lock, .log or run folder
    assert config.read_text() == "[run]\njobs = 1\n" and other.read_bytes() == b"another output's"


def test_a_product_is_never_written_over_its_source(samples, tmp_path):
    out = tmp_path / "out.h5"
    assert run(samples, out, planets=[int(next((samples / "train").iterdir()).name)]).ok
    before = out.read_bytes()
    slips = [["extract", out, "-o", out], ["export", out, "--format", "npy", "-o", OutputFiles.of(out).parts],
             ["spectrum", out, "-o", out], ["spectrum", out, "-o", samples / "submission.csv"],
             ["quicklook", out, "-o", samples / "ql"], ["spectrum", out, "-o", tmp_path / "s.csv", "--fits",
                                                        tmp_path / "s.csv"]]
    for args in slips:
        code, _, stderr = run_cli(*args)
        assert code == EXIT_CONFIG and "Traceback" not in stderr, (args, stderr)
    assert out.read_bytes() == before and not (samples / "submission.csv").exists() and not (samples / "ql").exists()
    assert not (tmp_path / "s.csv").exists()
    lc = tmp_path / "lc.h5"  # a light-curve file names the calibrated file it came from: followed to the data
    assert run_cli("extract", out, "-o", lc)[0] == EXIT_OK
    code, _, stderr = run_cli("export", lc, "--format", "csv", "-o", samples)
    assert code == EXIT_CONFIG and "inside the data folder" in stderr, stderr


def test_a_subset_run_never_drops_what_it_did_not_select(pool, tmp_path, caplog):  # noqa: F811
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run(data, out).ok
    with h5py.File(out, "r") as f:
        planets = sorted(set(f["planet_id"][()].tolist()))
    bytes_before = out.read_bytes()
    subset = run(data, out, planets=[planets[0]], drop_missing=True)
    assert subset.action == "complete" and subset.counts["dropped"] == []
    assert out.read_bytes() == bytes_before  # every observation still there, untouched
    grow(pool, data)  # an extension of one planet only, with --drop-missing: the others stay, done
    _, two, others = pool
    grown = run(data, out, planets=[others[2]], drop_missing=True)
    assert grown.action == "extend" and grown.counts["dropped"] == []
    with h5py.File(out, "r") as f:
        assert sorted(set(f["planet_id"][()].tolist())) == sorted([*planets, others[2]])
        assert (f["status"][()] == schema.STATUS_DONE).all()
    assert main(["verify", str(out)]) == EXIT_OK


def _index(pool, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    """An output extended once (an index over two parts), and its data folder."""
    data = three_planets(pool, tmp_path)
    _, two, others = pool
    planet = data / "train" / str(others[1])
    aside = tmp_path / "aside"
    shutil.move(planet, aside)
    out = tmp_path / "out.h5"
    assert run(data, out).action == "new"
    shutil.move(aside, planet)
    assert run(data, out).action == "extend"
    with h5py.File(out, "r") as f:
        assert store.is_index(f)
    return data, out


def test_a_renamed_or_linked_output_and_a_moved_data_folder_resume_and_extend(pool, tmp_path):  # noqa: F811
    data, out = _index(pool, tmp_path)
    renamed = tmp_path / "kept" / "archive.h5"
    renamed.parent.mkdir()
    os.rename(out, renamed)
    os.rename(OutputFiles.of(out).parts, OutputFiles.of(renamed).parts)
    for command in (["info", str(renamed)], ["verify", str(renamed)]):
        assert main(command) == EXIT_OK, command
    with reader.open_output(renamed) as f:  # the products' reader: every done observation reads as data
        assert not np.isnan(f["AIRS-CH0/signal"][()]).all(axis=(1, 2, 3)).any()
    link = tmp_path / "elsewhere" / "link.h5"
    link.parent.mkdir()
    link.symlink_to(renamed)
    assert main(["info", str(link)]) == EXIT_OK
    moved = tmp_path / "moved-data"
    os.rename(data, moved)  # the archive's data folder moves too
    relinked = run(moved, link)  # nothing to compute: the index is rewritten with its parts' names as they are now
    assert (relinked.action, relinked.results) == ("update", [])
    with h5py.File(renamed, "r") as f:  # plain h5py (xarray, netCDF tools) now finds the parts too
        assert [n.split("/")[0] for n in store.index_parts(f)] == ["archive.h5.parts"] * 2
        assert not np.isnan(f["AIRS-CH0/signal"][()]).all(axis=(1, 2, 3)).any()
    assert run(moved, link).action == "complete"
    grow(pool, moved)
    extended = run(moved, renamed)
    assert extended.action == "extend" and len(extended.results) == 2
    fresh = tmp_path / "fresh.h5"
    assert run(moved, fresh).ok
    assert same_bytes(renamed, fresh)
    assert main(["verify", str(link)]) == EXIT_OK


def test_a_deleted_or_truncated_part_is_a_clean_error_and_is_recomputed(pool, tmp_path, capsys):  # noqa: F811
    data, out = _index(pool, tmp_path)
    first = OutputFiles.of(out).parts / "0001.h5"
    with open(first, "r+b") as fh:
        fh.truncate(first.stat().st_size // 2)
    for command in (["info", str(out)], ["export", str(out), "--format", "csv", "-o", str(tmp_path / "t")],
                    ["spectrum", str(out), "-o", str(tmp_path / "s.csv")], ["verify", str(out)]):
        assert main(command) == EXIT_NOINPUT, command
        err = capsys.readouterr().err
        assert "0001.h5 (cut short" in err and "Traceback" not in err, err
    repaired = run(data, out)
    assert repaired.action == "repair" and len(repaired.results) == 2  # the two observations part 0001 held
    assert main(["verify", str(out)]) == EXIT_OK
    parts = OutputFiles.of(out).parts
    referenced = sorted(p.name for p in parts.glob("*.h5") if p.name not in OutputFiles.of(out).read_retired()[0])
    os.unlink(parts / referenced[-1])  # the newest part, deleted
    assert main(["info", str(out)]) == EXIT_NOINPUT
    assert "(missing)" in capsys.readouterr().err
    again = run(data, out)  # no --force needed
    assert again.action == "repair" and again.results
    assert main(["verify", str(out)]) == EXIT_OK


def test_a_reader_open_across_a_publish_keeps_reading_valid_data(pool, tmp_path):  # noqa: F811
    data, out = _index(pool, tmp_path)
    _, _, others = pool
    with h5py.File(out, "r") as f:
        planets = f["planet_id"][()].tolist()
    k = planets.index(others[1])  # the observation the extension computed: alone in part 0002
    held = reader.open_output(out)  # opened before the publish, read after it
    try:
        signal = data / "train" / str(others[1]) / "FGS1_signal_0.parquet"
        signal.write_bytes(signal.read_bytes())  # a new modification time: recomputed into a new part
        assert run(data, out).action == "recompute"
        retired = OutputFiles.of(out).parts / "0002.h5"
        assert retired.exists() and "0002.h5" in OutputFiles.of(out).read_retired()[0]
        old = held["AIRS-CH0/signal"][k]
        assert not np.isnan(old).all() and held["status"][k] == schema.STATUS_DONE
    finally:
        held.close()
    with reader.open_output(out) as f:
        np.testing.assert_array_equal(f["AIRS-CH0/signal"][k], old)  # the same numbers, from the new part
    signal.write_bytes(signal.read_bytes())
    assert run(data, out).action == "recompute"
    assert not retired.exists()  # the publish after next removes it
    assert main(["verify", str(out)]) == EXIT_OK


def test_a_subset_run_recomputes_an_unselected_observation_whose_part_is_lost(pool, tmp_path):  # noqa: F811
    data, out = _index(pool, tmp_path)
    _, _, others = pool
    os.unlink(OutputFiles.of(out).parts / "0002.h5")  # the part holding others[1], which the run does not select
    subset = run(data, out, planets=[others[0]], drop_missing=True)
    assert subset.counts["dropped"] == [] and [(r.planet_id, r.visit) for r in subset.results] == [(others[1], 0)]
    with h5py.File(out, "r") as f:
        assert len(f["planet_id"]) == 3 and (f["status"][()] == schema.STATUS_DONE).all()
    assert main(["verify", str(out)]) == EXIT_OK


def test_a_renamed_and_damaged_output_is_repaired_by_the_run_that_relinks_it(pool, tmp_path):  # noqa: F811
    data, out = _index(pool, tmp_path)
    renamed = tmp_path / "b.h5"
    os.rename(out, renamed)
    os.rename(OutputFiles.of(out).parts, OutputFiles.of(renamed).parts)
    part = OutputFiles.of(renamed).parts / "0002.h5"
    target = store.read_descriptors(part)["FGS1/signal"]
    with open(part, "r+b") as fh:
        fh.seek(target.offset + 64)
        fh.write(b"\x7f\x7f\x7f\x7f")
    fixed = run(data, renamed)
    assert (fixed.action, len(fixed.results)) == ("repair", 1)
    assert main(["verify", str(renamed)]) == EXIT_OK


def test_a_force_run_killed_after_its_rename_never_brings_back_older_results(pool, tmp_path):  # noqa: F811
    data = three_planets(pool, tmp_path)
    out = tmp_path / "out.h5"
    assert run(data, out).ok
    parts = OutputFiles.of(out).parts
    parts.mkdir()
    shutil.copyfile(out, parts / "0001.h5")  # what a killed run leaves: a part no index refers to, all done
    adc = data / "adc_info.csv"  # new numbers from a file whose size and modification time stay the same
    stat = adc.stat()
    text = adc.read_text()
    digit = next(i for i, c in enumerate(text) if c in "123456789" and i > text.index("\n"))
    adc.write_text(text[:digit] + str(int(text[digit]) % 9 + 1) + text[digit + 1:])
    os.utime(adc, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    env = {**os.environ, "ARIELSTREAM_FAULT": "kill-publish:single"}
    assert run_cli("calibrate", data, "-o", out, "--jobs", "1", "-q", "--force", env=env)[0] == -9
    assert run(data, out).action == "complete"  # the forced output, as published: the old part is not taken
    fresh = tmp_path / "fresh.h5"  # in a new process: this one read adc_info.csv before, under the same stat
    assert run_cli("calibrate", data, "-o", fresh, "--jobs", "1", "-q")[0] == EXIT_OK
    assert same_bytes(out, fresh)
    shutil.copyfile(parts / "0001.h5", out)  # check the check: the old part's numbers are not the forced ones
    assert not same_bytes(out, fresh)
