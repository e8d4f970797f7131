"""summary.json / summary.csv rows for search, slice and table folders.

The rows have the columns of :class:`~precision_lab.experiment.records.SummaryRow` (what
``precision-lab show`` prints): ``count`` inputs examined, ``exact_matches`` the correctly
rounded ones among the results that carry statistics, the per-category counts, and
``ulp_error_max``; the other statistics (mean, median, percentiles) are None, because the
inputs of a search are chosen to be bad and a slice's inputs are not a sample of anything.
"""

from __future__ import annotations

from typing import Any

from precision_lab.experiment.records import summary_columns
from precision_lab.experiment.store import Writer
from precision_lab.numerics.metrics import CATEGORIES

__all__ = ["summary_row", "write_summary"]


def summary_row(point: int, params: dict[str, Any], implementation: str, fmt: str, count: int,
                categories: dict[str, int], correctly_rounded: int,
                max_ulp_error: "float | None") -> dict[str, Any]:
    """One summary row (see the module docstring)."""
    cats = {c: int(categories.get(c, 0)) for c in CATEGORIES}
    stat = cats["finite"] + cats["inf_match"]
    row: dict[str, Any] = {"point": point, **params, "implementation": implementation,
                           "format": fmt, "count": int(count),
                           "exact_matches": int(correctly_rounded),
                           "exact_match_rate": correctly_rounded / stat if stat else None,
                           "ulp_error_mean": None, "ulp_error_median": None,
                           "ulp_error_p90": None, "ulp_error_p99": None,
                           "ulp_error_max": max_ulp_error, "bits_mean": None}
    row.update({f"n_{c}": cats[c] for c in CATEGORIES})
    return row


def write_summary(w: Writer, name: str, question: str, axes: list[str],
                  rows: list[dict[str, Any]]) -> None:
    """summary.json and summary.csv (columns in :func:`summary_columns` order)."""
    w.json("summary.json", {"experiment": name, "question": question, "reduction": "none",
                            "sweep_axes": axes, "rows": rows})
    w.csv("summary.csv", [{k: r.get(k) for k in summary_columns(axes)} for r in rows])
