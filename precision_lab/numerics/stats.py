"""The one statistics helper: ULP-error statistics of a set of computed values.

:func:`error_stats` takes the per-sample metric arrays of :mod:`precision_lab.numerics.metrics`
and returns an :class:`ErrorStats`.  Every table, comparison and study uses it, so "correctly
rounded" and "mean ULP error" mean the same thing everywhere:

* statistics are taken over the samples whose category carries them ("finite" and
  "inf_match", :data:`STAT_CATEGORIES`); the others are counted per category and never
  averaged;
* a sample is correctly rounded when its ULP distance to the correctly rounded truth is 0
  (:func:`precision_lab.numerics.metrics.correctly_rounded`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from precision_lab.numerics.metrics import CATEGORIES

__all__ = ["STAT_CATEGORIES", "ErrorStats", "error_stats"]

#: Categories whose samples carry ULP statistics.
STAT_CATEGORIES: tuple[str, ...] = ("finite", "inf_match")


@dataclass(frozen=True)
class ErrorStats:
    """ULP-error statistics of a group of samples (ULPs of the samples' format).

    Attributes:
        count: samples in the group.
        stat_count: samples that carry statistics ("finite" + "inf_match").
        exact_matches: correctly rounded samples among those (ULP distance 0).
        exact_match_rate: exact_matches / stat_count, None without such samples.
        ulp_error_mean, ulp_error_median, ulp_error_p90, ulp_error_p99, ulp_error_max:
            of the ULP error against the unrounded truth (0.5 at most for a correctly
            rounded result); None without statistics samples.
        bits_mean: mean bits of error, log2(1 + ULP distance) (Herbie's measure).
        categories: number of samples per category, every category listed.
    """

    count: int
    stat_count: int
    exact_matches: int
    exact_match_rate: "float | None"
    ulp_error_mean: "float | None"
    ulp_error_median: "float | None"
    ulp_error_p90: "float | None"
    ulp_error_p99: "float | None"
    ulp_error_max: "float | None"
    bits_mean: "float | None"
    categories: dict[str, int] = field(default_factory=dict)


def error_stats(ulp_error: np.ndarray, ulp_distance: np.ndarray, bits_of_error: np.ndarray,
                categories: np.ndarray) -> ErrorStats:
    """Statistics of one group of samples; all four arrays have one entry per sample.

    Percentiles are numpy's linear interpolation ("p99" of 10 samples lies between the two
    largest).  An empty group gives counts of 0 and None statistics.
    """
    cats = np.asarray(categories).astype(str)
    stat = np.isin(cats, STAT_CATEGORIES)
    e = np.asarray(ulp_error, dtype=np.float64)[stat]
    d = np.asarray(ulp_distance)[stat]
    b = np.asarray(bits_of_error, dtype=np.float64)[stat]
    exact = int((d == 0).sum())
    per_cat = {c: int((cats == c).sum()) for c in CATEGORIES}
    if not e.size:
        return ErrorStats(int(cats.size), 0, 0, None, None, None, None, None, None, None, per_cat)
    return ErrorStats(
        count=int(cats.size), stat_count=int(e.size), exact_matches=exact,
        exact_match_rate=float(exact / e.size), ulp_error_mean=float(e.mean()),
        ulp_error_median=float(np.median(e)), ulp_error_p90=float(np.percentile(e, 90)),
        ulp_error_p99=float(np.percentile(e, 99)), ulp_error_max=float(e.max()),
        bits_mean=float(b.mean()), categories=per_cat)
