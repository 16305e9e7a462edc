"""``arielstream init-config``: every option, its default and a comment; the file parses back to the defaults."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import fields

import pytest

from arielstream import cli_products, config_template
from arielstream.config import CalibrationConfig, RunOptions, build_config, load_config, load_run_options
from arielstream.errors import OutputError

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
        assert set(config_template.COMMENTS[table]) == set(names), f"[{table}]: comments and options differ"
        for name in names:
            line = re.search(rf"^(# )?{name} = .*#\s*(\S.*)$", text, flags=re.M)
            assert line, f"[{table}] {name} missing from the template"
            assert config_template.COMMENTS[table][name] in line.group(2)


def test_an_option_without_a_comment_fails_the_render(monkeypatch):
    comments = {k: dict(v) for k, v in config_template.COMMENTS.items()}
    del comments["calibration"]["hot_sigma"]
    monkeypatch.setattr(config_template, "COMMENTS", comments)
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
