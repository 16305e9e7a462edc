"""The competition score: analytic cases of the metric, and the checks a submission must pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arielstream.cli import app as cli
from arielstream.products import score as sc

N = 283
AIRS = N - 1


def truth_table(n_planets=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.003, 0.02, (n_planets, N))


def write_csv(path, ids, values, header):
    lines = [",".join(["planet_id", *header])]
    lines += [",".join([str(i), *(repr(float(v)) for v in row)]) for i, row in zip(ids, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def wl_header():
    return [f"wl_{i}" for i in range(1, N + 1)]


def submission_header():
    return [*wl_header(), *(f"sigma_{i}" for i in range(1, N + 1))]


# ---------------------------------------------------------------- the metric, analytically
def test_a_perfect_prediction_scores_one():
    x = truth_table()
    sigma = np.full_like(x, sc.AIRS_SIGMA_TRUE)
    sigma[:, 0] = sc.FGS1_SIGMA_TRUE
    assert sc.gaussian_score(x, x, sigma, float(x.mean()), float(x.std())) == pytest.approx(1.0, abs=1e-12)


def test_the_naive_prediction_scores_zero():
    x = truth_table()
    m, s = sc.naive_prediction(x)
    assert (m, s) == (pytest.approx(x.mean()), pytest.approx(x.std()))
    score = sc.gaussian_score(x, np.full_like(x, m), np.full_like(x, s), m, s)
    assert score == pytest.approx(0.0, abs=1e-12)


def test_half_way_in_log_sigma_scores_one_half():
    """Exact mean, naive mean equal to the truth: s = log(σ_naive/σ) / log(σ_naive/σ_true); σ = √(σ_naive σ_true)."""
    x = np.full((2, N), 0.01)
    naive_sigma = 0.004
    sigma_true = np.full(N, sc.AIRS_SIGMA_TRUE)
    sigma_true[0] = sc.FGS1_SIGMA_TRUE
    sigma = np.broadcast_to(np.sqrt(naive_sigma * sigma_true), x.shape)
    assert sc.gaussian_score(x, x, sigma, 0.01, naive_sigma) == pytest.approx(0.5, rel=1e-12)


def test_fgs1_weighs_57_846_against_one_per_airs_wavelength():
    x = truth_table(n_planets=2, seed=1)
    m, s = sc.naive_prediction(x)
    mean, sigma = np.full_like(x, m), np.full_like(x, s)  # every AIRS target scores 0 ...
    mean[:, 0], sigma[:, 0] = x[:, 0], sc.FGS1_SIGMA_TRUE  # ... and FGS1 scores 1
    expected = 57.846 / (57.846 + AIRS)
    assert sc.gaussian_score(x, mean, sigma, m, s) == pytest.approx(expected, rel=1e-12)


def test_the_score_is_clipped_to_zero_and_one():
    x = truth_table()
    m, s = sc.naive_prediction(x)
    far = x + 0.05  # 50 sigma_pred off: much worse than naive
    assert sc.gaussian_score(x, far, np.full_like(x, 1e-3), m, s) == 0.0
    overconfident_but_exact = np.full_like(x, 1e-8)  # below the perfect sigma: each target scores > 1
    assert sc.gaussian_score(x, x, overconfident_but_exact, m, s) == 1.0


def test_log_likelihood_is_the_gaussian_log_density():
    value = sc.log_likelihood(np.array(1.5), np.array(1.0), np.array(0.5))
    assert value == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(0.5) - 0.5)


def test_a_zero_sigma_is_floored_not_a_division_by_zero():
    x = truth_table(n_planets=1)
    m, s = sc.naive_prediction(x)
    assert sc.gaussian_score(x, x, np.zeros_like(x), m, s) == 1.0  # exact mean: a huge likelihood, clipped


# ---------------------------------------------------------------- files and validation
@pytest.fixture
def files(tmp_path):
    x = truth_table()
    ids = [11, 22, 33]
    truth = tmp_path / "truth.csv"
    write_csv(truth, ids, x, wl_header())
    sigma = np.full_like(x, sc.AIRS_SIGMA_TRUE)
    sigma[:, 0] = sc.FGS1_SIGMA_TRUE
    return tmp_path, truth, ids, x, sigma


def test_score_files_aligns_planets_by_id(files):
    tmp, truth, ids, x, sigma = files
    sub = tmp / "sub.csv"
    order = [2, 0, 1]  # rows in another order than the truth's
    write_csv(sub, [ids[i] for i in order], np.hstack([x, sigma])[order], submission_header())
    report = sc.score_files(sub, truth)
    assert report.score == pytest.approx(1.0, abs=1e-12)
    assert report.n_planets == 3
    assert report.naive_mean == pytest.approx(x.mean())


@pytest.mark.parametrize("corrupt, message", [
    (lambda v, ids: (v[:, :-1], ids), "value columns"),
    (lambda v, ids: (np.where(np.arange(v.shape[1]) == 5, np.nan, v), ids), "NaN"),
    (lambda v, ids: (np.where(np.arange(v.shape[1]) == 300, -1e-4, v), ids), "negative values"),
    (lambda v, ids: (v[:2], ids[:2]), "missing"),
])
def test_a_submission_the_competition_would_refuse(files, corrupt, message, capsys):
    tmp, truth, ids, x, sigma = files
    values, kept = corrupt(np.hstack([x, sigma]), ids)
    sub = tmp / "bad.csv"
    header = submission_header()[: values.shape[1]]
    write_csv(sub, kept, values, header)
    with pytest.raises(sc.SubmissionError, match=message):
        sc.score_files(sub, truth)
    assert cli.main(["score", str(sub), str(truth)]) == cli.EXIT_FAILURES
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_cli_scores_and_reports_unreadable_files(files, capsys):
    tmp, truth, ids, x, sigma = files
    sub = tmp / "sub.csv"
    write_csv(sub, ids, np.hstack([x, sigma]), submission_header())
    assert cli.main(["score", str(sub), str(truth)]) == cli.EXIT_OK
    assert capsys.readouterr().out.startswith("score 1.000000")
    assert cli.main(["score", str(tmp / "absent.csv"), str(truth)]) == cli.EXIT_NOINPUT
    assert "absent.csv" in capsys.readouterr().err
    (tmp / "words.csv").write_text("planet_id,wl_1\n1,abc\n")  # a malformed truth is a bad input (66), not a
    assert cli.main(["score", str(sub), str(tmp / "words.csv")]) == cli.EXIT_NOINPUT  # refused submission (65)
    assert "not a number" in capsys.readouterr().err


def test_what_the_competition_would_refuse_or_the_truth_cannot_be(files, capsys):
    tmp, truth, ids, x, sigma = files
    sub = tmp / "sub.csv"
    write_csv(sub, ids, np.hstack([x, sigma]), submission_header())
    # a submission given as the truth: named, exit 66
    assert cli.main(["score", str(sub), str(sub)]) == cli.EXIT_NOINPUT
    assert "is this a submission rather than the true spectra?" in capsys.readouterr().err
    # right count, wrong names: the competition reads columns by name
    renamed = tmp / "renamed.csv"
    write_csv(renamed, ids, np.hstack([x, sigma]), [f"foo_{i}" for i in range(2 * x.shape[1])])
    assert cli.main(["score", str(renamed), str(truth)]) == cli.EXIT_FAILURES
    assert "column 'foo_0' where 'wl_1' belongs" in capsys.readouterr().err
    # a planet_id that is not an integer is not silently truncated
    text = sub.read_text().splitlines()
    first = text[1].split(",", 1)
    (tmp / "fraction.csv").write_text("\n".join([text[0], f"{first[0]}.4,{first[1]}", *text[2:]]) + "\n")
    assert cli.main(["score", str(tmp / "fraction.csv"), str(truth)]) == cli.EXIT_FAILURES
    assert "is not an integer" in capsys.readouterr().err
    # a non-finite naive prediction is a command-line mistake
    with pytest.raises(SystemExit) as stop:
        cli.main(["score", str(sub), str(truth), "--naive-mean", "nan"])
    assert stop.value.code == cli.EXIT_USAGE


def test_the_naive_prediction_can_be_given(files, capsys):
    tmp, truth, ids, x, sigma = files
    sub = tmp / "sub.csv"
    m, s = sc.naive_prediction(x)
    write_csv(sub, ids, np.hstack([np.full_like(x, m), np.full_like(x, s)]), submission_header())
    assert sc.score_files(sub, truth).score == pytest.approx(0.0, abs=1e-12)
    # against a wider naive prediction the same submission is better than naive
    assert sc.score_files(sub, truth, naive_mean=m, naive_sigma=10 * s).score > 0


def test_the_simulators_train_csv_is_a_truth_the_score_reads(tmp_path):
    """train.csv (planet_id, wl_1..wl_283) scores its own values, with the perfect sigmas, as 1."""
    from .conftest import DATA_SAMPLES

    truth = sc.read_table(DATA_SAMPLES / "train.csv")
    assert truth.columns == wl_header() and truth.values.shape == (2, N)
    sigma = np.full_like(truth.values, sc.AIRS_SIGMA_TRUE)
    sigma[:, 0] = sc.FGS1_SIGMA_TRUE
    sub = tmp_path / "sub.csv"
    write_csv(sub, truth.planet_id, np.hstack([truth.values, sigma]), submission_header())
    assert sc.score_files(sub, DATA_SAMPLES / "train.csv").score == pytest.approx(1.0, abs=1e-12)
