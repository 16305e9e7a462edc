"""What identifies an output: only what changes its numbers; a refusal says what changed and what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest

import arielstream
from arielstream.calibration import engine
from arielstream.cli import app as cli
from arielstream.errors import ConfigMismatchError
from arielstream.io.sidefiles import OutputFiles
from arielstream.run import identity
from arielstream.run.runner import RunSummary

from .conftest import DATA_SAMPLES


def package_copy(tmp_path: Path) -> Path:
    """The package's sources, copied: editing them leaves the installed code alone."""
    root = tmp_path / "arielstream"
    shutil.copytree(identity.PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def edit_a_comment(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edited comment\n")


def half_finished(out: Path) -> Path:
    """``out`` (complete) turned into the ``.partial`` of a run that stopped before its last observation."""
    partial = OutputFiles.of(out).partial
    out.replace(partial)
    with h5py.File(partial, "r+") as f:
        f["status"][-1] = 0  # pending
    return partial


def run(out: Path, **options) -> RunSummary:
    return arielstream.calibrate(DATA_SAMPLES, out, jobs=1, progress=False, log_file=False, **options)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The samples calibrated with the default config by this code."""
    out = tmp_path_factory.mktemp("made") / "o.h5"
    assert run(out).ok
    return out


@pytest.fixture
def output(made, tmp_path) -> Path:
    out = tmp_path / "o.h5"
    shutil.copy(made, out)
    return out


def test_the_digest_covers_the_numerical_modules_and_nothing_else(tmp_path):
    root = package_copy(tmp_path)
    before = identity.source_digest(root)
    assert before == identity.code_version()  # the copy is the installed code
    for other in ("products/quicklook.py", "cli/app.py", "run/runner.py", "run/budget.py", "simulate/dataset.py"):
        edit_a_comment(root / other)
    assert identity.source_digest(root) == before
    for numerical in ("calibration/steps.py", "io/signal.py", "run/observation.py", "config/options.py"):
        copy = package_copy(tmp_path / numerical.replace("/", "_"))
        edit_a_comment(copy / numerical)
        assert identity.source_digest(copy) != before, numerical
    (root / "calibration" / "extra.py").write_text("SCALE = 2\n")  # a new module of the maths counts too
    assert identity.source_digest(root) != before


def test_a_numerical_module_that_moved_is_an_error_not_a_silent_gap(tmp_path):
    root = package_copy(tmp_path)
    (root / "io" / "dataset.py").rename(root / "dataset.py")
    with pytest.raises(FileNotFoundError, match="io/dataset.py"):
        identity.source_digest(root)


def test_an_edit_off_the_numerical_path_keeps_outputs_complete_and_partials_resumable(tmp_path, monkeypatch,
                                                                                     capsys):
    root = package_copy(tmp_path)
    monkeypatch.setattr(identity, "code_version", lambda: identity.source_digest(root))
    out = tmp_path / "o.h5"
    assert run(out).action == "new"
    edit_a_comment(root / "products" / "quicklook.py")
    assert cli.main(["calibrate", str(DATA_SAMPLES), "-o", str(out), "--jobs", "1", "--no-progress",
                     "--no-log-file"]) == cli.EXIT_OK
    assert "nothing to do" in capsys.readouterr().out
    half_finished(out)
    edit_a_comment(root / "products" / "quicklook.py")
    summary = run(out)
    assert summary.action == "resume" and summary.ok and len(summary.results) == 1
    # the same steps with an edit on the numerical path: refused, so the checks above could fail
    half_finished(out)
    edit_a_comment(root / "calibration" / "steps.py")
    with pytest.raises(ConfigMismatchError, match="numerical code differs"):
        run(out)


@pytest.fixture
def fresh_engine():
    """The process's engine is chosen once: choose it again for this test, and again after it."""
    engine.current.cache_clear()
    yield
    engine.current.cache_clear()


def test_the_engine_in_use_does_not_refuse_a_resume(output, monkeypatch, fresh_engine):
    if engine.current().name != "numba":
        pytest.skip("one engine only: numba not installed or disabled")
    half_finished(output)
    monkeypatch.setenv("ARIELSTREAM_ENGINE", "numexpr")
    engine.current.cache_clear()
    summary = run(output)
    assert summary.action == "resume" and summary.ok and len(summary.results) == 1
    with h5py.File(output) as f:  # each observation names the engine that computed it
        engines = [json.loads(p.decode())["engine"].split()[0] for p in f["provenance"][()]]
    assert engines == ["numba", "numba", "numexpr"]


def refusal(out: Path, **options) -> str:
    with pytest.raises(ConfigMismatchError) as exc:
        run(out, **options)
    message = str(exc.value)
    assert "made by a different run" in message
    assert "use --force (force=True from Python) to recompute" in message  # what to do, in both languages
    assert "different -o (output=... from Python) or --run (run=... from Python)" in message
    return message


def test_a_config_change_is_named(output):
    message = refusal(output, config=arielstream.build_config(flat=False, airs_bin=15))
    assert "calibration config differs in airs_bin, flat" in message
    assert "numerical code" not in message and "observation list" not in message


def test_a_code_change_names_both_versions(output):
    with h5py.File(output, "r+") as f:
        f.attrs["arielstream_version"] = "0.0.1+000000000000"
    message = refusal(output)
    assert (f"numerical code differs (output made by arielstream 0.0.1+000000000000, "
            f"this is {identity.code_version()})") in message
    assert "config differs" not in message


def test_a_smaller_observation_list_keeps_the_others_and_a_larger_one_extends(output, tmp_path, caplog):
    summary = run(output, planets=[73079497])  # the other planet's two visits are no longer asked for
    assert (summary.action, summary.results, len(summary.statuses)) == ("complete", [], 3)
    assert summary.counts["kept"] == [(4225610805, 0), (4225610805, 1)]
    assert "2 observation(s) not selected by this run are kept as they are" in caplog.text
    assert "no longer in the data folder" not in caplog.text  # they are: only the selection left them out
    one = tmp_path / "one.h5"
    assert run(one, planets=[4225610805]).ok
    grown = run(one)
    assert (grown.action, len(grown.results), len(grown.statuses)) == ("extend", 1, 3)
    assert grown.counts["added"] == [(73079497, 0)]


def test_a_dataset_master_refuses_a_changed_observation_list(tmp_path):
    config = arielstream.build_config(master_calibration="dataset")
    one = tmp_path / "one.h5"
    assert run(one, planets=[4225610805], config=config).ok
    with pytest.raises(ConfigMismatchError) as exc:
        run(one, config=config)
    assert "observation list differs (1 new, 0 missing)" in str(exc.value)
    assert "every observation depends on all the others" in str(exc.value)


def test_split_data_folder_and_foreign_files_are_named():
    current = identity.run_identity(arielstream.build_config(), "train")
    assert "engine" not in current  # recorded per observation by the process that computed it
    assert "source" not in current  # where the data folder is: a moved folder still matches (issue 21)
    stored = {**current, "split": "test", "source": "/elsewhere"}
    assert identity.identity_differences(stored, current) == [
        "split differs (output holds 'test', this run 'train')"]
    assert identity.identity_differences({"title": "something else"}, current) == [
        "not an arielstream output (its attributes hold no run identity)"]
    assert identity.identity_differences(current, current) == []
