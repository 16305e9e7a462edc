"""The tutorial (docs/tutorial.md) runs as written: its ```bash and ```python blocks, in order, in a fresh folder.

Bash lines that start with ``arielstream`` run as ``python -m arielstream`` (this checkout), and
``make calibrate`` runs the ``calibrate`` recipe of the Makefile with the same substitution, so the
tutorial and the Makefile cannot drift apart unnoticed. Python blocks are exec'd in one namespace.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

import arielstream

from .conftest import DATA_SAMPLES, REPO

pytestmark = pytest.mark.slow  # runs the tutorial end to end

TUTORIAL = REPO / "docs" / "tutorial.md"

BEGIN, END = "<!-- tutorial:begin -->", "<!-- tutorial:end -->"


def tutorial_blocks(text: str) -> list[tuple[str, str]]:
    """The fenced bash and python blocks between the tutorial markers, in order."""
    if BEGIN not in text or END not in text:
        raise AssertionError(f"{TUTORIAL.name} has no tutorial section ({BEGIN} ... {END})")
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return re.findall(r"^```(bash|python)[ \t]*\n(.*?)^```[ \t]*$", section, flags=re.M | re.S)


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target, with its variables' defaults expanded."""
    text = (REPO / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[?:]?=\s*(.*?)\s*$", text, flags=re.M))
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert match, f"the Makefile has no {target} target"
    lines = []
    for line in match.group(1).splitlines():
        line = line.strip().replace("$(BIN)/arielstream", "arielstream")
        for _ in range(3):  # nested variables
            line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
        lines.append(line)
    return lines


def run_line(line: str, cwd, env) -> None:
    words = shlex.split(line)
    if words[0] == "arielstream":
        argv = [sys.executable, "-m", "arielstream", *words[1:]]
    elif words[0] == "mkdir":
        argv = words
    else:
        raise AssertionError(f"the tutorial test does not know how to run: {line}")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{line}\nexit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"


def test_the_makefile_recipe_is_what_the_tutorial_expects():
    lines = make_recipe("calibrate")
    assert any(line.startswith("arielstream calibrate data_samples") and "-o output/data_samples.h5" in line
               for line in lines), lines


def test_tutorial_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")  # the quicklook step
    blocks = tutorial_blocks(TUTORIAL.read_text())
    assert {lang for lang, _ in blocks} == {"bash", "python"}
    (tmp_path / "data_samples").symlink_to(DATA_SAMPLES, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__tutorial__"}
    for k, (lang, code) in enumerate(blocks):
        if lang == "python":
            exec(compile(code, f"docs/tutorial.md block {k}", "exec"), namespace)
            continue
        for line in code.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for command in make_recipe("calibrate") if line == "make calibrate" else [line]:
                run_line(command, tmp_path, env)
    # what the tutorial promises a new user
    assert (tmp_path / "output" / "quicklook" / "index.html").is_file()
    assert len(list((tmp_path / "output" / "quicklook").glob("*.png"))) >= 4
    assert (tmp_path / "output" / "tables" / "lightcurves.csv").stat().st_size > 10_000
    assert namespace["summary"].action == "complete"
    run = tmp_path / "runs" / "notebook"
    assert (run / "train.h5").is_file() and (run / "config.toml").is_file()
    assert arielstream.load_config(run / "config.toml").profile == "notebook"
