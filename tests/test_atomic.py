"""Files appear whole or not at all: ``arielstream.io.atomic`` (used by every export, quicklook, extract)."""

from __future__ import annotations

import errno
import os

import pytest

from arielstream.errors import OutputError
from arielstream.io import atomic


def test_a_complete_write_replaces_the_target_and_leaves_no_partial(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic.atomic_write(target) as partial:
        assert partial == tmp_path / "a.txt.partial"
        partial.write_text("new")
        assert target.read_text() == "old"  # nothing visible under the real name before the end
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), atomic.atomic_write(target) as partial:
        partial.write_text("half")
        raise RuntimeError("half way")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_an_os_error_becomes_an_output_error_naming_the_target(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(OutputError, match=rf"^{target}: cannot write the thing: .*No space left"), \
            atomic.atomic_write(target, "write the thing") as partial:
        partial.write_text("x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_a_target_that_cannot_be_replaced_is_an_output_error(tmp_path):
    target = tmp_path / "a.txt"
    (target / "inside").mkdir(parents=True)  # a non-empty folder in the way
    with pytest.raises(OutputError, match=rf"^{target}: cannot write: "), atomic.atomic_write(target) as partial:
        partial.write_text("x")
    assert not atomic.partial_path(target).exists() and target.is_dir()


def test_staged_files_are_all_on_disk_before_the_first_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: events.append(f"rename {os.path.basename(b)}")
                        or real_replace(a, b))
    targets = [tmp_path / "one", tmp_path / "two", tmp_path / "index"]
    with atomic.staged() as staging:
        for t in targets:
            staging.path(t).write_text(t.name)
        assert staging.commit() == targets
    renames = [e for e in events if e.startswith("rename")]
    assert renames == ["rename one", "rename two", "rename index"]  # in the order staged: the index last
    assert events.index(renames[0]) >= 3 and events[:3] == ["fsync"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "one", "two"]
    assert [t.read_text() for t in targets] == ["one", "two", "index"]


def test_a_failure_before_the_commit_changes_none_of_the_staged_targets(tmp_path):
    old = {name: f"old {name}" for name in ("one", "two")}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(OutputError, match=rf"^{tmp_path / 'two'}: cannot write"), atomic.staged() as staging:
        staging.path(tmp_path / "one").write_text("new one")
        with atomic.output_errors(tmp_path / "two"):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == old  # no partial left, nothing replaced
