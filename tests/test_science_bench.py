"""The science benchmark's noise limit: its depth sigma and the extractions it compares (benchmarks/science.py)."""

from __future__ import annotations

import numpy as np

from benchmarks import science


def test_fit_depth_sigma_is_the_scatter_of_the_fitted_depths():
    """The limit's estimator: the weighted fit's delta-method sigma equals the spread of its depths over noise draws."""
    rng = np.random.default_rng(5)
    t = np.linspace(0.0, 7.5, 37)
    shape = np.clip((1.0 - np.abs(t - 3.6) / 1.2) / 0.25, 0.0, 1.0)  # a trapezoid
    depth, flux0 = 0.01, 1e6
    clean = flux0 * (1.0 + 0.002 * (t - t.mean()) - depth * shape)
    err = np.sqrt(clean + 2e4)  # photon + read noise, varying with the flux
    fitted, sigma = science.fit_depth(t, clean, err, shape)[:2]
    assert abs(fitted - depth) < 1e-12
    draws = np.array([science.fit_depth(t, clean + err * rng.standard_normal(t.size), err, shape)[0]
                      for _ in range(4000)])
    assert abs(draws.mean() - depth) < 4 * sigma / np.sqrt(draws.size)
    assert abs(draws.std(ddof=1) / sigma - 1.0) < 0.05  # 4000 draws: sampling error 1.1 %


def test_extraction_weights_on_a_frame_with_a_known_answer():
    """A Gaussian trace with photon noise only: the plain sum and the optimal weights agree; a flat sky cancels."""
    rows, cols = 32, 8
    y = np.arange(rows, dtype=np.float64)[:, None]
    star = np.broadcast_to(1e4 * np.exp(-0.5 * ((y - 15.5) / 1.5) ** 2), (3, rows, cols)).copy()
    variance = star + 1e-300  # photon noise only: V proportional to P
    live = np.ones((rows, cols), dtype=bool)
    w = science.extraction_weights(star, variance, live, np.arange(cols))
    aperture = (np.abs(y - 15.5) <= 6) & live  # DEFAULT_HALF_WIDTH rows around the flux-weighted row
    np.testing.assert_array_equal(w["limit"], aperture.astype(float))
    # Horne's weights (P / V) / sum(P² / V) are 1 wherever P > 0 when V is proportional to P
    np.testing.assert_allclose(w["optimal"][star[0] > 1e-3], 1.0, rtol=1e-9)
    # the estimated background (rows, column, column read): the aperture less its rows times the mean of the
    # rows 9 or more away of the columns in its window (centred: column 3 of 8 reads columns 0-6)
    background = w["background"]
    np.testing.assert_allclose(background.sum(axis=(0, 2)), 0.0, atol=1e-12)  # a flat sky cancels
    sky = (np.abs(y - 15.5) >= 9)[:, 0]
    np.testing.assert_allclose(background[sky, 3, :7], -aperture.sum(axis=0)[0] / sky.sum() / 7)
    assert not background[:, 3, 7].any()
    np.testing.assert_array_equal(background[~sky, 3, 3], aperture[~sky, 3])
    np.testing.assert_allclose(background[sky, 0, 0], -aperture.sum(axis=0)[0] / sky.sum())  # the edge: its own


def test_the_verdict_calls_the_default_worse_only_beyond_the_sampling_errors():
    from benchmarks import science

    def row(airs, white, fgs1):
        return {"airs": airs, "hot": airs, "white": white, "fgs1": fgs1, "n_airs": 1128, "n_hot": 6, "n_white": 4,
                "n_fgs1": 4, "hot_reference": airs, "hot_cost": 0.0}

    setup = {"limits": {"jitter": {"background": {"airs": 1.01}}},
             "scores": {("jitter", "default"): {"score": 0.247}, ("jitter", "notebook"): {"score": 0.0}}}
    # the jitter set's white light: 6.45 against 5.42 with N = 4 is within twice their errors (± 2.3, ± 1.9)
    line = science.verdict("jitter", {("jitter", "default"): row(1.16, 6.45, 18.6),
                                      ("jitter", "notebook"): row(1.37, 5.42, 28.1)}, setup)
    assert "never worse than the notebook" in line and "within twice their sampling errors: white 6.45" in line
    # per wavelength, N = 1128: 1.16 against 1.05 is worse (± 0.02 each)
    line = science.verdict("jitter", {("jitter", "default"): row(1.16, 6.45, 18.6),
                                      ("jitter", "notebook"): row(1.05, 5.42, 28.1)}, setup)
    assert "worse than the notebook on per wavelength 1.16 ± 0.02 vs 1.05 ± 0.02" in line
