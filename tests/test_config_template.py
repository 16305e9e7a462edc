"""``arielstream init-config``: every option, its default and a comment; the file parses back to the defaults."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields

import pytest

from arielstream.cli import app as cli_app
from arielstream.cli import calibrate as cli_calibrate
from arielstream.cli import products as cli_products
from arielstream.config import template as config_template
from arielstream.config.descriptions import DESCRIPTIONS
from arielstream.config.options import (
    PER_CALL_OPTIONS,
    CalibrationConfig,
    RunOptions,
    build_config,
    load_config,
    load_run_options,
)
from arielstream.errors import ConfigError, OutputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture()
def template(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(config_template.render_config_template())
    return path


def test_template_parses_back_to_the_defaults(template):
    data = tomllib.loads(template.read_text())
    assert set(data) == {"calibration", "run"}
    assert load_config(template) == CalibrationConfig()
    assert load_run_options(template) == RunOptions()


def test_every_option_is_written_with_a_comment(template):
    text = template.read_text()
    for table, cls in (("calibration", CalibrationConfig), ("run", RunOptions)):
        names = [f.name for f in fields(cls)]
        assert set(DESCRIPTIONS[table]) == set(names), f"[{table}]: comments and options differ"
        for name in names:
            if table == "run" and name in PER_CALL_OPTIONS:  # a switch of one run: named in a note, no line
                continue
            line = re.search(rf"^(# )?{name} = .*#\s*(\S.*)$", text, flags=re.M)
            assert line, f"[{table}] {name} missing from the template"
            assert DESCRIPTIONS[table][name] in line.group(2)


def _calibrate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli_app.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["calibrate"]


def test_every_calibrate_option_that_sets_a_config_option_has_its_help_from_the_table():
    tables = {"calibration": {f.name for f in fields(CalibrationConfig)},
              "run": {f.name for f in fields(RunOptions)}}
    mapped = []
    for action in _calibrate_parser()._actions:
        table = next((t for t, names in tables.items() if action.dest in names), None)
        if table is None or not action.option_strings:
            continue
        mapped.append(action.dest)
        assert action.help and DESCRIPTIONS[table][action.dest] in action.help, action.option_strings
    assert set(mapped) == set(cli_calibrate.CALIBRATION_FLAGS) | set(cli_calibrate.RUN_FLAGS)
    assert {"airs_bin", "memory", "profile", "log_file", "progress"} <= set(mapped)


def test_the_help_shows_the_default_of_the_dataclass_or_of_each_profile():
    assert config_template.option_help("calibration", "airs_bin").endswith(f"(default {CalibrationConfig.airs_bin})")
    assert config_template.option_help("run", "memory").endswith(f"(default {RunOptions.memory})")
    order = config_template.option_help("calibration", "wavelength_order")
    assert '(default by profile default: "target", notebook: "detector"' in order
    assert config_template.option_help("run", "jobs") == DESCRIPTIONS["run"]["jobs"]  # None: no default shown


def test_an_option_without_a_comment_fails_the_render(monkeypatch):
    descriptions = {k: dict(v) for k, v in DESCRIPTIONS.items()}
    del descriptions["calibration"]["hot_sigma"]
    monkeypatch.setattr(config_template, "DESCRIPTIONS", descriptions)
    with pytest.raises(KeyError, match=r"\[calibration\] hot_sigma"):
        config_template.render_config_template()


def test_switching_the_profile_in_the_template_takes_its_defaults(template):
    text = template.read_text().replace('profile = "default"', 'profile = "notebook"', 1)
    template.write_text(text)
    assert load_config(template) == build_config(profile="notebook")


def test_commented_options_are_valid_when_uncommented(template):
    """The None defaults and profile-dependent options are written commented out; their examples must work."""
    commented = re.findall(r"^# (\w+ = .*?)\s+#", template.read_text(), flags=re.M)
    names = {line.split(" = ")[0] for line in commented}
    assert {"jobs", "planets", "scheduler", "task_timeout", "progress"} <= names
    assert {"nonlinearity", "bad_pixels", "wavelength_order"} <= names
    uncommented = re.sub(r"^# (\w+ = )", r"\1", template.read_text(), flags=re.M)
    template.write_text(uncommented)
    run = load_run_options(template)
    assert run.jobs is None and run.task_timeout == 900 and run.planets == (1010375142, 1024292144)
    assert load_config(template) == CalibrationConfig()  # the default profile's own values


def parse(argv):
    parser = argparse.ArgumentParser(prog="arielstream")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_products.add_commands(sub, [])
    return parser.parse_args(argv)


def test_init_config_command(tmp_path, capsys):
    args = parse(["init-config"])
    assert args.handler(args) == 0
    assert capsys.readouterr().out == config_template.render_config_template()
    target = tmp_path / "run.toml"
    args = parse(["init-config", "-o", str(target)])
    assert args.handler(args) == 0
    assert load_config(target) == CalibrationConfig()
    with pytest.raises(OutputError, match="exists"):
        args.handler(args)
    args = parse(["init-config", "-o", str(target), "--force"])
    assert args.handler(args) == 0


def test_force_is_a_switch_of_one_run_not_a_line_of_the_template(template):
    text = template.read_text()
    assert not re.search(r"^(# )?force = ", text, flags=re.M)
    assert "# not set here, for one run only: --force (" in text


def test_a_config_file_may_say_force_false_but_not_force_true(tmp_path, capsys):
    from arielstream.cli.app import EXIT_CONFIG, main

    from .conftest import DATA_SAMPLES

    config = tmp_path / "run.toml"
    config.write_text("[run]\nforce = false\n")  # what init-config used to write: the default, accepted
    assert load_run_options(config) == RunOptions()
    config.write_text("[run]\nforce = true\n")  # every nightly run would recompute everything: refused
    with pytest.raises(ConfigError, match=r"run.toml: force = true in a config file .* pass --force \(or force=True"):
        load_run_options(config)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["calibrate", str(DATA_SAMPLES), "-o", str(out / "o.h5"), "--config", str(config)]) == EXIT_CONFIG
    assert "force = true in a config file" in capsys.readouterr().err and list(out.iterdir()) == []
