"""The Ariel Data Challenge 2025 score of a submission against the true spectra.

The competition's public metric: for every planet and target ``j`` (283: FGS1
as ``wl_1``, then AIRS), the Gaussian log-likelihood of the true depth ``x``
under the predicted mean ``μ`` and 1-sigma ``σ`` (``σ`` floored at 1e-15),

    ``L(x; μ, σ) = -½ log(2π) - log σ - ½ ((x - μ) / σ)²``,

normalised between a naive prediction (one mean and one standard deviation
for every value: those of the training spectra) and a perfect one (``μ = x``
with ``σ`` = 1e-6 for FGS1, 1e-5 for AIRS):

    ``s_ij = (L_pred - L_naive) / (L_perfect - L_naive)``.

The score is the weighted mean of ``s_ij`` (FGS1 weight 57.846, each AIRS
wavelength 1) over planets and targets, clipped to [0, 1]: 1 is perfect, 0
no better than the naive prediction.

Pure functions over arrays (:func:`gaussian_score`), then the CSV layer
(:func:`read_table`, :func:`score_files`); a malformed submission raises
:class:`SubmissionError` with a one-line reason, as the competition refuses it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArielstreamError, InputError
from ..io.storage import DataPath, data_path, read_bytes
from ..layout import SIGMA_PREFIX, TARGET_PREFIX

FGS1_SIGMA_TRUE = 1e-6
AIRS_SIGMA_TRUE = 1e-5
FGS1_WEIGHT = 57.846
SIGMA_FLOOR = 1e-15
ID_COLUMN = "planet_id"


class SubmissionError(ArielstreamError):
    """A submission (or truth table) the competition would refuse: wrong shape, NaN, negative value, missing planet."""


def log_likelihood(x: np.ndarray | float, mean: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
    """Gaussian log-density of ``x`` under ``N(mean, sigma²)``, element-wise."""
    x, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (x, mean, sigma))
    return -0.5 * math.log(2 * math.pi) - np.log(sigma) - 0.5 * np.square((x - mean) / sigma)


def gaussian_score(truth: np.ndarray, mean: np.ndarray, sigma: np.ndarray, naive_mean: float, naive_sigma: float, *,
                   fgs1_sigma_true: float = FGS1_SIGMA_TRUE, airs_sigma_true: float = AIRS_SIGMA_TRUE,
                   fgs1_weight: float = FGS1_WEIGHT) -> float:
    """The competition score of predictions ``(mean, sigma)`` ``(planets, targets)`` for ``truth`` (same shape).

    Target 0 is FGS1, the others AIRS. Clipped to [0, 1].
    """
    truth = np.atleast_2d(np.asarray(truth, dtype=np.float64))
    mean = np.atleast_2d(np.asarray(mean, dtype=np.float64))
    sigma = np.clip(np.atleast_2d(np.asarray(sigma, dtype=np.float64)), SIGMA_FLOOR, None)
    if not truth.shape == mean.shape == sigma.shape:
        raise SubmissionError(f"shapes differ: truth {truth.shape}, mean {mean.shape}, sigma {sigma.shape}")
    if not naive_sigma > 0:
        raise SubmissionError(f"the naive sigma must be positive; got {naive_sigma}")
    n = truth.shape[1]
    sigma_true = np.full(n, airs_sigma_true)
    sigma_true[0] = fgs1_sigma_true
    predicted = log_likelihood(truth, mean, sigma)
    perfect = log_likelihood(truth, truth, np.broadcast_to(sigma_true, truth.shape))
    naive = log_likelihood(truth, naive_mean, naive_sigma)
    each = (predicted - naive) / (perfect - naive)
    weights = np.ones(n)
    weights[0] = fgs1_weight
    total = float(np.average(each, weights=np.broadcast_to(weights, each.shape)))
    return float(np.clip(total, 0.0, 1.0))


def naive_prediction(truth: np.ndarray) -> tuple[float, float]:
    """The naive prediction of the metric: the mean and standard deviation of all training spectra's values."""
    values = np.asarray(truth, dtype=np.float64)
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------- the CSV files
@dataclass(frozen=True)
class Table:
    """A CSV of ``planet_id`` and numbers: its header (without the id), ids and values ``(rows, columns)``."""

    path: DataPath
    columns: list[str]
    planet_id: np.ndarray
    values: np.ndarray


def read_table(path: str | Path | DataPath, role: str = "submission") -> Table:
    """Read a ``planet_id, …`` CSV; InputError if unreadable.

    A malformed file is a :class:`SubmissionError` (exit 65: the competition would refuse it) when it is the
    submission, and an :class:`InputError` (exit 66) when it is the truth: the truth is an input, not a
    prediction to grade.
    """
    path = data_path(path)

    def malformed(problem: str) -> ArielstreamError:
        return SubmissionError(f"{path}: {problem}") if role == "submission" else InputError(path, problem)

    try:  # a local file, or one in the data folder's store (the prior's training labels)
        rows = list(csv.reader(io.StringIO(read_bytes(path).decode("utf-8"), newline="")))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not rows or not rows[0] or rows[0][0].strip() != ID_COLUMN:
        raise malformed(f"the first column must be '{ID_COLUMN}'")
    header = [c.strip() for c in rows[0][1:]]
    body = [r for r in rows[1:] if r]
    ids, values = [], []
    for n, row in enumerate(body, start=2):
        if len(row) != len(header) + 1:
            raise malformed(f"line {n} has {len(row)} fields, the header {len(header) + 1}")
        try:
            planet = float(row[0])
            values.append([float(v) for v in row[1:]])
        except ValueError:
            raise malformed(f"line {n}: a value is not a number") from None
        if not planet.is_integer():
            raise malformed(f"line {n}: planet_id {row[0].strip()!r} is not an integer")
        ids.append(int(planet))
    array = np.array(values, dtype=np.float64).reshape(len(body), len(header))
    return Table(path=path, columns=header, planet_id=np.array(ids, dtype=np.int64), values=array)


def validate(submission: Table, truth: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check a submission as the competition does and align it with the truth: mean, sigma, truth (rows of truth).

    The submission must have ``2 × targets`` value columns (the means, then the
    sigmas), no NaN, no negative value, and a row for every planet of the truth.
    """
    n = len(truth.columns)
    sub = submission.path
    if any(not c.startswith(TARGET_PREFIX) for c in truth.columns):
        odd = next(c for c in truth.columns if not c.startswith(TARGET_PREFIX))
        raise InputError(truth.path, f"column {odd!r} is not a target ({TARGET_PREFIX}N): is this a submission "
                                     "rather than the true spectra?")
    if not np.isfinite(truth.values).all():
        raise InputError(truth.path, "the truth holds NaN or infinite values")
    if len(submission.columns) != 2 * n:
        raise SubmissionError(f"{sub}: {len(submission.columns)} value columns; the truth's {n} targets need "
                              f"{2 * n} (wl_1..wl_{n}, sigma_1..sigma_{n})")
    expected = [*truth.columns, *(SIGMA_PREFIX + c[len(TARGET_PREFIX):] for c in truth.columns)]
    wrong = [(got, want) for got, want in zip(submission.columns, expected, strict=True) if got != want]
    if wrong:
        raise SubmissionError(f"{sub}: column {wrong[0][0]!r} where {wrong[0][1]!r} belongs "
                              f"({len(wrong)} column name(s) differ from wl_1..wl_{n}, sigma_1..sigma_{n})")
    bad = ~np.isfinite(submission.values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise SubmissionError(f"{sub}: {int(bad.sum())} NaN or infinite value(s), the first at planet "
                              f"{submission.planet_id[row]} column {submission.columns[col]}")
    if (submission.values < 0).any():
        row, col = np.argwhere(submission.values < 0)[0]
        raise SubmissionError(f"{sub}: negative values in the submission, the first at planet "
                              f"{submission.planet_id[row]} column {submission.columns[col]}")
    if len(np.unique(submission.planet_id)) != submission.planet_id.size:
        raise SubmissionError(f"{sub}: a planet_id appears more than once")
    where = {int(p): i for i, p in enumerate(submission.planet_id)}
    missing = [int(p) for p in truth.planet_id if int(p) not in where]
    if missing:
        raise SubmissionError(f"{sub}: {len(missing)} planet(s) of the truth missing, e.g. {missing[0]}")
    rows = np.array([where[int(p)] for p in truth.planet_id], dtype=np.int64)
    values = submission.values[rows]
    return values[:, :n], values[:, n:], truth.values


@dataclass(frozen=True)
class ScoreReport:
    """A score and what it was computed from."""

    score: float
    n_planets: int
    naive_mean: float
    naive_sigma: float


def score_files(submission: str | Path, truth: str | Path, *, naive_mean: float | None = None,
                naive_sigma: float | None = None) -> ScoreReport:
    """Score the submission CSV against the truth CSV (``planet_id, wl_1 …``).

    The naive prediction defaults to the truth table's own mean and standard
    deviation (the competition's, when the truth is the training set).
    """
    sub_table, truth_table = read_table(submission), read_table(truth, role="truth")
    if truth_table.values.size == 0:
        raise InputError(truth_table.path, "no planet")
    mean, sigma, values = validate(sub_table, truth_table)
    default_mean, default_sigma = naive_prediction(values)
    nm = default_mean if naive_mean is None else naive_mean
    ns = default_sigma if naive_sigma is None else naive_sigma
    return ScoreReport(score=gaussian_score(values, mean, sigma, nm, ns), n_planets=values.shape[0],
                       naive_mean=nm, naive_sigma=ns)
