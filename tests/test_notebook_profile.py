"""``--profile notebook`` reproduces the organisers' notebook on good pixels."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from arielstream import build_config, calibrate
from arielstream.layout import discover_observations
from benchmarks.notebook_recipe import notebook_calibrate

RTOL = 1e-5


def _worst(ours: np.ndarray, theirs: np.ndarray, good: np.ndarray) -> float:
    """Largest relative difference over every time bin of the good pixels."""
    a, b = ours[:, good].astype(np.float64), theirs[:, good]
    assert (b != 0).all()
    return float((np.abs(a - b) / np.abs(b)).max())


@pytest.fixture(scope="module")
def notebook_run(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb") / "nb.h5"
    summary = calibrate(small_dataset, out, config=build_config(profile="notebook"), jobs=1, progress=False)
    assert summary.ok
    return out


def test_notebook_profile_matches_the_notebook_recipe_on_good_pixels(small_dataset, notebook_run):
    observations = discover_observations(small_dataset, "train")
    assert any(o.visit == 1 for o in observations)  # the second visit is compared too
    with h5py.File(notebook_run) as f:
        assert list(f["AIRS-CH0/column"][()]) == list(range(39, 321))  # the notebook's order
        for index, obs in enumerate(observations):
            ref = notebook_calibrate(small_dataset, obs.folder, obs.visit)
            airs, fgs1 = f["AIRS-CH0/signal"][index], f["FGS1/signal"][index]
            assert airs.shape == ref.airs.shape and fgs1.shape == ref.fgs1.shape
            assert ref.airs_good.sum() > 0.95 * ref.airs_good.size
            worst_airs = _worst(airs, ref.airs, ref.airs_good)
            worst_fgs1 = _worst(fgs1, ref.fgs1, ref.fgs1_good)
            assert worst_airs <= RTOL, f"{obs.label} AIRS worst relative difference {worst_airs:.2e}"
            assert worst_fgs1 <= RTOL, f"{obs.label} FGS1 worst relative difference {worst_fgs1:.2e}"
            # bad pixels keep values (as the notebook) but are flagged, not lost
            dq = f["AIRS-CH0/dq"][index]
            np.testing.assert_array_equal(dq != 0, ~ref.airs_good)
            assert np.isfinite(airs).all()


@pytest.mark.slow  # a calibration of its own and the notebook's per-pixel poly1d loop
def test_notebook_profile_with_nonlinearity_matches_the_notebook_loop(small_dataset, tmp_path):
    """The notebook's own (slow) poly1d loop, switched on, agrees with the vectorised Horner."""
    obs = discover_observations(small_dataset, "train")[0]
    out = tmp_path / "nb_nl.h5"
    calibrate(small_dataset, out, planets=[obs.planet_id], jobs=1, progress=False,
              config=build_config(profile="notebook", nonlinearity=True))
    ref = notebook_calibrate(small_dataset, obs.folder, obs.visit, do_the_nl_corr=True)
    with h5py.File(out) as f:
        airs, fgs1 = f["AIRS-CH0/signal"][0], f["FGS1/signal"][0]
    assert _worst(airs, ref.airs, ref.airs_good) <= RTOL
    assert _worst(fgs1, ref.fgs1, ref.fgs1_good) <= RTOL
