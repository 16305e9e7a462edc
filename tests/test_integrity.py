"""Trusting inputs and outputs: Parquet page checksums, the input manifest, ``verify`` and the repair rerun."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arielstream.cli.app import EXIT_FAILURES, EXIT_NOINPUT, EXIT_OK, main
from arielstream.io.manifest import MANIFEST_NAME
from arielstream.io.store import read_descriptors
from arielstream.layout import FGS1, discover_observations


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Small planets with uncompressed pages: with page checksums (one visit), without (three visits)."""
    from arielstream.simulate.dataset import simulate_dataset

    out = {}
    for name, checksums, planets in (("crc", True, 1), ("plain", False, 2)):
        root = tmp_path_factory.mktemp(name)
        simulate_dataset(root, n_planets=planets, scale=0.01, seed=5, compression="none", page_checksums=checksums)
        out[name] = root
    return out


@pytest.fixture()
def data(datasets, request, tmp_path) -> Path:
    """A fresh copy of the dataset named by the test's parameter (it gets damaged)."""
    target = tmp_path / "data"
    shutil.copytree(datasets[request.param], target)
    return target


def fgs1_signal(root: Path) -> Path:
    obs = discover_observations(root, "train")[0]
    return obs.signal_path(FGS1)


def damage_data_page(path: Path, column: int = 7, zero: int = 0) -> np.ndarray:
    """Flip one bit (or zero ``zero`` bytes) inside the data page of ``column``; return the values it held."""
    before = pq.read_table(path, columns=[f"column_{column}"]).column(0).to_numpy()
    meta = pq.ParquetFile(path).metadata.row_group(0).column(column)
    start = meta.dictionary_page_offset or meta.data_page_offset
    end = start + meta.total_compressed_size
    pos = (meta.data_page_offset + end) // 2  # well inside the page's values, past its header
    raw = bytearray(path.read_bytes())
    if zero:
        raw[pos:pos + zero] = bytes(zero)
    else:
        raw[pos] ^= 0x10
    path.write_bytes(bytes(raw))
    # the damage is real: read without verification, the column decodes into other values, silently
    after = pq.read_table(path, columns=[f"column_{column}"], page_checksum_verification=False).column(0).to_numpy()
    assert not np.array_equal(before, after)
    return before


def calibrate(data: Path, out: Path, *extra: str) -> int:
    """The CLI in this process, FGS1 only (the files the tests damage; AIRS would only add time)."""
    return main(["-q", "calibrate", str(data), "-o", str(out), "--no-progress", "--jobs", "1",
                 "--instruments", "FGS1", *extra])


def errors(out: Path) -> list[str]:
    """The error of each observation; the first one's (whose files the tests damage) alone, the rest done."""
    with h5py.File(out, "r") as f:
        status = f["status"][()].tolist()
        found = [e.decode().rstrip("\x00") for e in f["error"][()]]
    assert status == [2] + [1] * (len(status) - 1) and not any(found[1:])
    return found[:1]


@pytest.mark.parametrize("data", ["crc"], indirect=True)
def test_a_flipped_bit_in_a_checksummed_page_fails_the_observation_naming_the_file(data, tmp_path):
    signal = fgs1_signal(data)
    damage_data_page(signal)
    assert calibrate(data, tmp_path / "out.h5") == EXIT_FAILURES
    [error] = errors(tmp_path / "out.h5")
    assert str(signal) in error and "checksum" in error


@pytest.mark.parametrize("data", ["plain"], indirect=True)
def test_a_zeroed_range_in_a_file_without_checksums_fails_against_the_manifest(data, tmp_path, capsys):
    assert main(["manifest", str(data)]) == EXIT_OK
    assert (data / MANIFEST_NAME).exists()
    signal = fgs1_signal(data)
    damage_data_page(signal, zero=64)
    # found automatically in DATA_DIR
    assert calibrate(data, tmp_path / "out.h5") == EXIT_FAILURES
    [error] = errors(tmp_path / "out.h5")
    assert error.startswith(f"{signal}: content differs from the input manifest")


@pytest.mark.parametrize("data", ["plain"], indirect=True)
def test_a_manifest_elsewhere_and_a_missing_file(data, tmp_path):
    manifest = tmp_path / "inputs.json"
    assert main(["manifest", str(data), "-o", str(manifest)]) == EXIT_OK
    assert not (data / MANIFEST_NAME).exists()
    signal = fgs1_signal(data)
    signal.unlink()
    assert calibrate(data, tmp_path / "out.h5", "--manifest", str(manifest)) == EXIT_FAILURES
    [error] = errors(tmp_path / "out.h5")
    assert error == f"{signal}: missing, but the input manifest {manifest} lists it"


@pytest.mark.parametrize("data", ["plain"], indirect=True)
def test_without_a_manifest_the_damage_is_not_seen(data, tmp_path):
    """The previous behaviour, for files without page checksums and no manifest: nothing to check against."""
    damage_data_page(fgs1_signal(data), zero=64)
    assert calibrate(data, tmp_path / "out.h5") == EXIT_OK
    assert calibrate(data, tmp_path / "missing.h5", "--verify-inputs") == EXIT_NOINPUT


def nothing_written(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize("data", ["plain"], indirect=True)
def test_a_manifest_that_does_not_list_an_input_file_is_refused_before_anything_is_written(data, tmp_path, capsys):
    assert main(["manifest", str(data)]) == EXIT_OK
    document = json.loads((data / MANIFEST_NAME).read_text())
    obs = discover_observations(data, "train")[0]
    key = obs.calibration_path(FGS1, "dark").relative_to(data).as_posix()
    del document["files"][key]
    (data / MANIFEST_NAME).write_text(json.dumps(document))
    capsys.readouterr()
    assert calibrate(data, tmp_path / "out.h5") == EXIT_NOINPUT
    assert nothing_written(tmp_path / "out.h5")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"arielstream: {data / MANIFEST_NAME}: does not list 1 of the ")
    assert f"({key}); write it again: arielstream manifest {data}" in line


@pytest.mark.parametrize("data", ["plain"], indirect=True)
def test_an_empty_manifest_is_refused(data, tmp_path, capsys):
    assert main(["manifest", str(data)]) == EXIT_OK
    document = json.loads((data / MANIFEST_NAME).read_text())
    n = 2 + sum("/FGS1_" in k for k in document["files"])  # adc_info.csv, axis_info.parquet and FGS1's files
    (data / MANIFEST_NAME).write_text(json.dumps({**document, "files": {}}))
    capsys.readouterr()
    assert calibrate(data, tmp_path / "out.h5", "--verify-inputs") == EXIT_NOINPUT
    assert nothing_written(tmp_path / "out.h5")
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"does not list {n} of the {n} input files this run reads (adc_info.csv, axis_info.parquet, " in line
    assert f" and {n - 3} more); " in line


@pytest.mark.parametrize("data", ["plain"], indirect=True)
def test_a_symlinked_planet_folder_is_recorded_and_verified(data, tmp_path):
    assert main(["manifest", str(data), "-o", str(tmp_path / "before.json")]) == EXIT_OK
    obs = discover_observations(data, "train")[0]
    elsewhere = tmp_path / "elsewhere" / obs.folder.name
    elsewhere.parent.mkdir()
    obs.folder.rename(elsewhere)
    obs.folder.symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(data, target_is_directory=True)  # a symlink loop: not followed
    assert main(["manifest", str(data)]) == EXIT_OK
    before = json.loads((tmp_path / "before.json").read_text())["files"]
    after = json.loads((data / MANIFEST_NAME).read_text())["files"]
    assert after == before and any(k.startswith(f"train/{obs.folder.name}/") for k in after)
    assert calibrate(data, tmp_path / "out.h5") == EXIT_OK
    signal = fgs1_signal(data)
    assert signal.parent == obs.folder  # through the link
    damage_data_page(signal, zero=64)
    assert calibrate(data, tmp_path / "damaged.h5") == EXIT_FAILURES
    [error] = errors(tmp_path / "damaged.h5")
    assert error.startswith(f"{signal}: content differs from the input manifest")


@pytest.fixture(scope="module")
def published(datasets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("published") / "out.h5"
    assert calibrate(datasets["plain"], out) == EXIT_OK
    return out


def damage_output(path: Path) -> None:
    """Edit bytes of observation 0's FGS1 cube in place, as a disk fault would (the checksum is not updated)."""
    d = read_descriptors(path)[f"{FGS1.name}/signal"]
    with open(path, "r+b") as fh:
        fh.seek(d.offset + 100)
        fh.write(b"\xff" * 8)


def test_verify_says_ok_for_a_good_file_and_damaged_for_edited_bytes(published, tmp_path, capsys):
    assert main(["verify", str(published)]) == EXIT_OK
    assert capsys.readouterr().out.rstrip().endswith(": 3 ok")
    copy = tmp_path / "copy.h5"
    shutil.copyfile(published, copy)
    damage_output(copy)
    assert main(["verify", str(copy)]) == EXIT_FAILURES
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines[1:4]] == ["damaged", "ok", "ok"]
    assert lines[-1].endswith(": 1 damaged, 2 ok; run the same calibrate command again to recompute the damaged ones")
    assert main(["verify", str(tmp_path / "nothing.h5")]) == EXIT_NOINPUT


def test_a_rerun_on_a_damaged_published_file_recomputes_it(datasets, published, tmp_path, caplog):
    copy = tmp_path / "copy.h5"
    shutil.copyfile(published, copy)
    damage_output(copy)
    with caplog.at_level(logging.WARNING, logger="arielstream"):
        assert calibrate(datasets["plain"], copy) == EXIT_OK
    assert "no longer match their checksum" in caplog.text
    with h5py.File(copy, "r") as a, h5py.File(published, "r") as b:
        assert np.array_equal(a[f"{FGS1.name}/signal"][()], b[f"{FGS1.name}/signal"][()], equal_nan=True)
    assert main(["verify", str(copy)]) == EXIT_OK


def test_the_calibration_reader_verifies_page_checksums(tmp_path):
    from arielstream.errors import InputError
    from arielstream.io.calibration import read_frame_table

    rng = np.random.default_rng(3)
    table = pa.table({f"column_{j}": rng.normal(size=1000) for j in range(4)})
    path = tmp_path / "dark.parquet"
    pq.write_table(table, path, compression="none", use_dictionary=False, write_page_checksum=True)
    assert np.array_equal(read_frame_table(path, 1000, 4, "float"), np.stack(table.columns, axis=1))
    damage_data_page(path, column=2)
    with pytest.raises(InputError, match="page checksum mismatch") as err:
        read_frame_table(path, 1000, 4, "float")
    assert err.value.path == path
