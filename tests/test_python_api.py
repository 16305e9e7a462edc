"""The Python API reads well: one-line reprs, keyword arguments named in errors, numpydoc docstrings."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import arielstream
from arielstream.errors import ConfigMismatchError, flag
from arielstream.products.lightcurves import LightCurves
from arielstream.products.spectrum import Spectra


def test_light_curves_repr_is_one_line_of_shapes():
    curves = LightCurves(index=3, planet_id=73079497, visit=1, airs_flux=np.zeros((187, 282)),
                         fgs1_flux=np.zeros(1500))
    assert repr(curves) == ("<LightCurves 73079497/visit 1 (index 3): AIRS flux (187, 282) (time, wavelength), "
                            "FGS1 flux (1500,) (time,)>")
    assert repr(LightCurves(index=0, planet_id=1, visit=0)) == "<LightCurves 1/visit 0 (index 0): empty>"


def test_spectra_repr_is_one_line_of_shapes_and_planets():
    planets = np.arange(7, dtype=np.int64)
    spectra = Spectra(planet_id=planets, depth=np.zeros((7, 283)), sigma=np.zeros((7, 283)), visits=[])
    text = repr(spectra)
    assert text == ("<Spectra 7 planet(s) [0, 1, 2, 3, 4, ...]: depth and sigma (7, 283) (planet, target), "
                    "0 visit fit(s)>")
    assert "\n" not in text


def test_flag_names_the_option_and_the_keyword_argument():
    assert flag("force") == "--force (force=True from Python)"
    assert flag("frozen", False) == "--frozen (frozen=False from Python)"
    assert flag("drop_missing") == "--drop-missing (drop_missing=True from Python)"
    assert flag("memory", "8GB") == "--memory 8GB (memory='8GB' from Python)"
    assert flag("jobs", ...) == "--jobs (jobs=... from Python)"
    assert flag("output", ..., option="-o") == "-o (output=... from Python)"


def test_errors_raised_through_python_name_the_keyword_argument(tmp_path):
    from arielstream.config.options import RunOptions
    from arielstream.io.output import refused
    from arielstream.run import runner

    assert "use --force (force=True from Python)" in str(refused(tmp_path / "o.h5", ["config differs"]))
    with pytest.raises(arielstream.errors.ConfigError, match=r"--scheduler tcp://HOST:8786 \(scheduler="):
        RunOptions(backend="dask")
    with pytest.raises(arielstream.errors.MemoryBudgetError, match=r"--memory 2 \(memory='2' from Python\)"):
        runner.check_options(RunOptions(memory="2"), 2)


def test_a_frozen_refusal_names_the_keyword_argument(tmp_path):
    from arielstream.run.lifecycle import _report_changes

    with pytest.raises(ConfigMismatchError) as refusal:
        _report_changes(tmp_path / "o.h5", {(1, 0): ["AIRS-CH0_signal_0.parquet changed"]}, frozen=True)
    assert "Refusing with --frozen (frozen=True from Python)" in str(refusal.value)
    assert "run without --frozen (frozen=False from Python)" in str(refusal.value)


def _public_functions() -> list:
    return [n for n in arielstream.__all__ if inspect.isfunction(getattr(arielstream, n))] + ["open"]


@pytest.mark.parametrize("name", _public_functions())
def test_public_functions_have_numpydoc_sections(name):
    doc = inspect.getdoc(getattr(arielstream, name)) or ""
    for section in ("Parameters", "Returns"):
        assert f"\n{section}\n{'-' * len(section)}\n" in doc, f"{name}: no {section} section"
    documented = {line.split(" :")[0].strip().lstrip("*") for line in doc.splitlines()
                  if line and not line.startswith(" ")}
    missing = set(inspect.signature(getattr(arielstream, name)).parameters) - documented
    assert not missing, f"{name}: parameters not documented: {sorted(missing)}"


def test_calibrate_options_are_keyword_only_after_the_data_folder_and_output():
    parameters = inspect.signature(arielstream.calibrate).parameters
    positional = [p.name for p in parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["data_dir", "output"]  # the README's calibrate("data_samples", "out.h5")
