"""``verify`` covers everything a product reads: one flipped bit in any dataset of an output is reported.

Issue 21 item 3: the checksum covered the cubes and quality planes only, so a flipped bit in
``AIRS-CH0/time``, ``planet_id``, ``wavelength``, ``provenance``, ... passed ``verify`` and moved
the spectrum. Here the committed sample data is calibrated once into a single file and once
extended into an index over parts; then, in copies, one bit of the stored bytes of each dataset
is flipped by editing the file's bytes (never through h5py), and ``verify`` must exit 65.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from arielstream.cli.app import EXIT_FAILURES, EXIT_OK, main
from arielstream.io import schema, store

from .conftest import DATA_SAMPLES

TWO_VISITS = "4225610805"  # the sample planet with two visits; the other one (73079497) extends the output
# Bookkeeping, written as a run goes and deliberately outside the checksum: status (a flipped done
# shows as pending or failed, as before: only done observations are verified), attempts and owner
# (only matter while an observation is unfinished), error (empty for a done observation; a failed
# one has no checksum), and the checksum itself (a flip there is a mismatch anyway, but not a case
# of "a covered byte changed").
BOOKKEEPING = {schema.STATUS, schema.ATTEMPTS, schema.OWNER, schema.CHECKSUM, schema.ERROR}


def calibrate(out: Path, *extra: str) -> int:
    return main(["-q", "calibrate", str(DATA_SAMPLES), "-o", str(out), "--no-progress", "--jobs", "1", *extra])


def single_and_index(folder: Path, *extra: str) -> dict[str, Path]:
    """A single-file output (one planet, two visits) and an index over it and a new part (a second planet)."""
    single, index = folder / "single" / "out.h5", folder / "index" / "out.h5"
    single.parent.mkdir()
    index.parent.mkdir()
    assert calibrate(single, "--planets", TWO_VISITS, *extra) == EXIT_OK
    shutil.copyfile(single, index)
    assert calibrate(index, *extra) == EXIT_OK  # extends it: the old file becomes a part, the new planet another
    with h5py.File(index, "r") as f:
        assert store.is_index(f) and len(store.index_parts(f)) == 2 and f[schema.PLANET_ID].shape == (3,)
    return {"single": single, "index": index}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    """A single-file output and an index over it and a new part (:func:`single_and_index`)."""
    return single_and_index(tmp_path_factory.mktemp("verify_all"))


def copy_output(path: Path, where: Path) -> Path:
    """A copy of an output (with its parts, copied, not linked: flips must not reach the original)."""
    where.mkdir()
    target = where / path.name
    shutil.copyfile(path, target)
    parts = path.with_name(path.name + ".parts")
    if parts.is_dir():
        shutil.copytree(parts, target.with_name(target.name + ".parts"))
    return target


def flip(path: Path, name: str, element: int = 0, bit: int = 0) -> None:
    """Flip one bit of element ``element``'s stored bytes of dataset ``name`` (middle byte), in the file itself.

    The damage is real: h5py reads other bytes afterwards.
    """
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_offset()
        assert offset is not None and ds.chunks is None and ds.compression is None, name  # contiguous
        item = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        before = ds[()].tobytes()
    where = offset + element * item + item // 2
    with open(path, "r+b") as fh:
        fh.seek(where)
        byte = fh.read(1)[0]
        fh.seek(where)
        fh.write(bytes([byte ^ (1 << bit)]))
    with h5py.File(path, "r") as f:
        assert f[name][()].tobytes() != before, name


def verify(path: Path, capsys) -> tuple[int, list[str]]:
    """``arielstream verify``'s exit code and the state it prints for each observation."""
    capsys.readouterr()
    code = main(["verify", str(path)])
    lines = capsys.readouterr().out.splitlines()
    return code, [line.split()[-1] for line in lines[1:-1]]


def datasets(path: Path) -> list[str]:
    """Every dataset of a file, by its path."""
    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def test_the_untouched_outputs_verify_ok(outputs, tmp_path, capsys):
    for kind, path in outputs.items():
        copy = copy_output(path, tmp_path / kind)
        assert verify(copy, capsys) == (EXIT_OK, ["ok"] * (2 if kind == "single" else 3)), kind


def test_one_flipped_bit_in_any_dataset_of_a_file_is_reported(outputs, tmp_path, capsys):
    path = outputs["single"]
    names = [name for name in datasets(path) if name not in BOOKKEEPING]
    # every dataset a product reads: the cubes and planes, the per-observation texts, the keys, each
    # instrument's axes and dimension scales (row: the netCDF/xarray coordinate), the obs scale
    for required in ("AIRS-CH0/signal", "AIRS-CH0/dq", "AIRS-CH0/time", "AIRS-CH0/column", "AIRS-CH0/wavelength",
                     "AIRS-CH0/wavelength_label", "AIRS-CH0/row", "FGS1/signal", "FGS1/time", schema.PLANET_ID,
                     schema.VISIT, schema.PROVENANCE, schema.INPUTS, schema.OBS):
        assert required in names
    missed = []
    for i, name in enumerate(names):
        copy = copy_output(path, tmp_path / f"{i}")
        flip(copy, name, element=1 if name in (schema.PLANET_ID, schema.VISIT, schema.OBS) else 0)
        code, states = verify(copy, capsys)
        if code != EXIT_FAILURES or "damaged" not in states:
            missed.append(f"{name}: exit {code}, {states}")
        shutil.rmtree(copy.parent)
    assert not missed, missed


def test_a_flipped_bit_in_a_numerical_attribute_is_reported(outputs, tmp_path, capsys):
    """The config's binning sets the noise per bin the light curves compute: its bytes are covered too."""
    copy = copy_output(outputs["single"], tmp_path / "c")
    raw = bytearray(copy.read_bytes())
    assert raw.count(b'"fgs1_bin": 360') == 1
    raw[raw.index(b'"fgs1_bin": 360') + len(b'"fgs1_bin": 3')] ^= 1  # 360 -> 370, in the attribute's heap
    copy.write_bytes(bytes(raw))
    with h5py.File(copy, "r") as f:
        assert '"fgs1_bin": 370' in f.attrs["config"]
    assert verify(copy, capsys) == (EXIT_FAILURES, ["damaged", "damaged"])


def test_a_format_2_file_is_checked_as_its_writer_defined_the_checksum(outputs, tmp_path, capsys):
    """Outputs written before format 3 stored a checksum of the cubes and planes alone: still verified so."""
    copy = copy_output(outputs["single"], tmp_path / "c")
    with h5py.File(copy, "r+") as f:  # what a format-2 writer left: only the attribute and the checksums differ
        f.attrs[schema.ATTR_FORMAT_VERSION] = 2
    descriptors = store.read_descriptors(copy)
    scope = store.checksum_scope(copy)
    for i in range(2):
        store.write_slice(descriptors[schema.CHECKSUM], i, store.checksum(descriptors, i, scope).encode())
    legacy = hashlib.blake2b(digest_size=schema.CHECKSUM_BYTES // 2)  # format 2's definition, spelt out
    for key in store.cube_keys(descriptors):
        legacy.update(np.ascontiguousarray(descriptors[key].open(0, mode="r")).tobytes())
    assert store.checksum(descriptors, 0, scope) == legacy.hexdigest()
    assert verify(copy, capsys) == (EXIT_OK, ["ok", "ok"])
    flip(copy, "AIRS-CH0/time")  # not covered in format 2: the reason for format 3
    assert verify(copy, capsys) == (EXIT_OK, ["ok", "ok"])
    flip(copy, "FGS1/signal")
    assert verify(copy, capsys) == (EXIT_FAILURES, ["damaged", "ok"])


def test_a_flipped_key_marks_that_observation_alone(outputs, tmp_path, capsys):
    copy = copy_output(outputs["single"], tmp_path / "c")
    flip(copy, schema.VISIT, element=1)
    assert verify(copy, capsys) == (EXIT_FAILURES, ["ok", "damaged"])


def test_a_flipped_bit_in_an_index_or_in_its_parts_is_reported(outputs, tmp_path, capsys):
    path = outputs["index"]
    parts = path.with_name(path.name + ".parts")
    # the index's own datasets, those not virtual: its keys (what readers of the index see), its axes
    # and scales, and part/part_index, which the memory-mapped readers (read_descriptors) follow
    with h5py.File(path, "r") as f:
        own = [name for name in datasets(path) if name not in BOOKKEEPING and not f[name].is_virtual]
    assert {schema.PLANET_ID, schema.VISIT, schema.PART, schema.PART_INDEX, "AIRS-CH0/wavelength"} <= set(own)
    targets: list[tuple[str | None, str]] = [(None, name) for name in own]
    # each part's per-observation bytes, which readers reach through the index's virtual datasets, and
    # its keys (each observation the index maps there must be found there). Not the parts' own axes
    # and dimension scales: no reader of the index reads them (it holds its own, checked above).
    for part in sorted(parts.iterdir()):
        descriptors = store.read_descriptors(part)
        targets += [(part.name, name) for name in [schema.PLANET_ID, schema.VISIT, *sorted(descriptors)]
                    if name not in BOOKKEEPING]
    assert len(targets) > 2 * len(store.cube_keys(store.read_descriptors(parts / "0001.h5")))
    missed = []
    for i, (part, name) in enumerate(targets):
        copy = copy_output(path, tmp_path / f"{i}")
        target = copy if part is None else copy.with_name(copy.name + ".parts") / part
        flip(target, name, element=1 if name in (schema.PLANET_ID, schema.VISIT, schema.OBS) and
             (part is None or part == "0001.h5") else 0)
        code, states = verify(copy, capsys)
        if code != EXIT_FAILURES or "damaged" not in states:
            missed.append(f"{part or 'index'}:{name}: exit {code}, {states}")
        shutil.rmtree(copy.parent)
    assert not missed, missed


@pytest.mark.parametrize("kind", ["single", "index"])
def test_a_rerun_finds_a_flipped_axis_and_recomputes(outputs, tmp_path, kind, caplog):
    """The rerun that would have said "nothing to do" checks the same bytes as ``verify``."""
    copy = copy_output(outputs[kind], tmp_path / "c")
    flip(copy, "AIRS-CH0/wavelength")
    with caplog.at_level(logging.WARNING, logger="arielstream"):
        assert calibrate(copy, *(["--planets", TWO_VISITS] if kind == "single" else [])) == EXIT_OK
    assert "no longer match their checksum" in caplog.text
    assert main(["verify", str(copy)]) == EXIT_OK
    with h5py.File(copy, "r") as a, h5py.File(outputs[kind], "r") as b:
        assert np.array_equal(a["AIRS-CH0/wavelength"][()], b["AIRS-CH0/wavelength"][()])
