"""A notebook in a real Jupyter kernel sees what the terminal sees: a failed observation, a one-line summary."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from .conftest import DATA_SAMPLES, REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

PLANET = 73079497  # one visit in the committed samples
KERNEL = "arielstream-test-python"


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec for this interpreter in a Jupyter path of the test's own (nothing read or written in ~)."""
    jupyter = tmp_path / "jupyter"
    spec = jupyter / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "arielstream tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    for name in ("ARROW_DEFAULT_MEMORY_POOL", "MALLOC_ARENA_MAX"):
        monkeypatch.delenv(name, raising=False)
    return KERNEL


def test_a_notebook_shows_the_failed_observation_and_a_one_line_summary(tmp_path, kernel):
    data = tmp_path / "data"
    shutil.copytree(DATA_SAMPLES, data, ignore=shutil.ignore_patterns("reference", "simulation_truth"))
    (data / "train" / str(PLANET) / "AIRS-CH0_signal_0.parquet").write_bytes(b"not a parquet file")
    out = tmp_path / "nb.h5"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import arielstream\nsummary = arielstream.calibrate({str(data)!r}, "
                                  f"{str(out)!r}, jobs=1)"),
        nbformat.v4.new_code_cell("summary"),
    ])
    client = nbclient.NotebookClient(notebook, kernel_name=kernel, timeout=600,
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()

    first, second = notebook.cells
    stderr = "".join(o.get("text", "") for o in first.outputs if o.output_type == "stream" and o.name == "stderr")
    assert f"ERROR arielstream.run.dispatch: {PLANET}/visit 0 failed: " in stderr, first.outputs
    assert "AIRS-CH0_signal_0.parquet" in stderr
    assert "INFO" not in stderr  # warnings and errors only: the per-observation lines are in the log file
    assert not [o for o in first.outputs if o.output_type == "error"]

    shown = [o for o in second.outputs if o.output_type == "execute_result"]
    assert len(shown) == 1, second.outputs
    text = shown[0]["data"]["text/plain"]
    assert text.startswith(f"<RunSummary {out}: new, ") and " 1 failed of " in text, text
    assert "\n" not in text
