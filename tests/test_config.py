"""The config: defaults in code, profiles, TOML < CLI precedence, validation before data flows."""

from __future__ import annotations

import pytest

from arielstream.config.options import CalibrationConfig, build_config, load_config
from arielstream.errors import ConfigError


def test_default_runs_every_step_with_nonlinearity():
    c = CalibrationConfig()
    assert c.profile == "default" and c.nonlinearity and c.adc and c.mask and c.dark and c.cds and c.flat
    assert (c.airs_bin, c.fgs1_bin) == (30, 360) and c.bad_pixels == "nan" and c.wavelength_order == "target"


def test_notebook_profile_switches_off_only_what_the_notebook_does():
    c = build_config(profile="notebook")
    assert not c.nonlinearity and c.bad_pixels == "keep" and c.wavelength_order == "detector"
    assert c.adc and c.mask and c.dark and c.cds and c.flat and c.time_binning
    assert build_config(profile="notebook", nonlinearity=True).nonlinearity


def test_unknown_and_invalid_options_are_refused():
    with pytest.raises(ConfigError, match="unknown option"):
        build_config(nonlinearty=False)
    with pytest.raises(ConfigError, match="airs_bin must be a positive integer"):
        build_config(airs_bin=0)
    with pytest.raises(ConfigError, match="bad_pixels must be one of"):
        build_config(bad_pixels="zero")
    with pytest.raises(ConfigError, match="flat must be true or false"):
        build_config(flat="yes")
    with pytest.raises(ConfigError, match="wavelength cut"):
        build_config(cut_start=300, cut_stop=100)


def test_toml_then_cli_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[calibration]\nprofile = "notebook"\nfgs1_bin = 720\nflat = false\n')
    c = load_config(path)
    assert c.profile == "notebook" and c.fgs1_bin == 720 and not c.flat and not c.nonlinearity
    c = load_config(path, flat=True, airs_bin=None)
    assert c.flat and c.airs_bin == 30
    c = load_config(path, profile="default")  # a profile on the command line wins over the file's
    assert c.profile == "default" and c.nonlinearity and c.fgs1_bin == 720


def test_bad_toml_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[calibration\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(path)
    path.write_text("[calibration]\nspeed = 3\n")
    with pytest.raises(ConfigError, match="bad.toml: unknown option"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        load_config(tmp_path / "missing.toml")


def test_config_is_frozen_and_round_trips_through_json():
    import json

    c = build_config(profile="notebook", airs_bin=15)
    with pytest.raises(AttributeError):
        c.airs_bin = 3
    assert build_config(**json.loads(c.to_json())) == c


def test_run_options_from_toml_and_the_command_line(tmp_path):
    from arielstream.config.options import RunOptions, load_run_options

    path = tmp_path / "run.toml"
    path.write_text('[run]\nmemory = "24GB"\njobs = "auto"\nsplit = "test"\nplanets = [1, 2]\ntask_timeout = 900\n')
    run = load_run_options(path)
    assert run == RunOptions(split="test", planets=(1, 2), memory="24GB", jobs=None, task_timeout=900)
    run = load_run_options(path, jobs=2, split=None)
    assert run.jobs == 2 and run.split == "test"
    path.write_text('[run]\njobs = 0\n')
    with pytest.raises(ConfigError, match="run.toml: jobs must be a positive integer"):
        load_run_options(path)
    path.write_text('[run]\nworkers = 3\n')
    with pytest.raises(ConfigError, match="unknown option"):
        load_run_options(path)
    with pytest.raises(ConfigError, match="needs a scheduler"):
        load_run_options(backend="dask")


def test_skipping_cds_switches_the_default_cosmic_ray_rejection_off_but_asking_for_both_is_refused():
    assert build_config().cosmic_rays and not build_config(cds=False).cosmic_rays
    assert not build_config(profile="full", cds=False).cosmic_rays
    with pytest.raises(ConfigError, match="cosmic_rays works on the CDS series"):
        build_config(cds=False, cosmic_rays=True)
