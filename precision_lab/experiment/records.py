"""Typed records of a results folder: what a run determines, as numbers.

The store (:mod:`precision_lab.experiment.store`) writes and reads them; the report turns them
into sentences and pictures at the very end.  Every record is a frozen dataclass whose fields
are plain JSON values (numbers, strings, lists, dicts); floats that are not finite are written
by the store's one encoding as the strings "nan", "inf" and "-inf", and None means "no value"
(a statistic of an empty group, say), never NaN.

* :class:`Manifest` -- what was run and what the folder holds (committed; nothing in it changes
  from one run of the same config to the next on the same software);
* :class:`RunInfo` -- when, where and how long (``run.json``, not committed);
* :class:`SummaryRow` -- ULP statistics per sweep point x implementation x format;
* :class:`AgreementRow` -- how often two implementations return the same float;
* :class:`CompareResult` -- the config's ``[compare]`` check per sweep point and format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from precision_lab.numerics.metrics import CATEGORIES
from precision_lab.numerics.stats import ErrorStats

__all__ = ["SCHEMA_VERSION", "Manifest", "RunInfo", "SummaryRow", "AgreementRow", "GradFacts",
           "PairErrorStats", "CompareResult", "SUMMARY_STATS", "summary_columns"]

#: Version of the folder layout written by this package.
SCHEMA_VERSION = 2

#: Statistic columns of a summary row, in order (after point, swept params, implementation,
#: format).
SUMMARY_STATS: tuple[str, ...] = (
    "count", "exact_matches", "exact_match_rate", "ulp_error_mean", "ulp_error_median",
    "ulp_error_p90", "ulp_error_p99", "ulp_error_max", "bits_mean",
) + tuple(f"n_{c}" for c in CATEGORIES)


def summary_columns(axes: list[str], with_quantity: bool = False) -> list[str]:
    """Column order of summary.csv / summary.json rows for the given swept parameters (with a
    ``quantity`` column in experiments that measure the gradient)."""
    return ["point", *axes, "implementation", "format",
            *(["quantity"] if with_quantity else []), *SUMMARY_STATS]


@dataclass(frozen=True)
class Manifest:
    """What a results folder is: its config, its sweep, its software, its files.

    Attributes:
        name, question, description, notes: from the config (or the study).
        kind: "experiment" (a config run), "study" (capability, cuda), "search",
            "exhaustive" or "table" (precision_lab.search).
        status: "partial" (chunks still missing) or "complete".
        config: the resolved config (defaults filled in, names canonical).
        config_sha256: sha256 of the canonical JSON of ``config``.
        sweep_axes: the swept parameters, in axis order.
        points: one {"point": index, "params": {name: value}} per sweep point.
        chunks: chunk keys ("p00000_float16"), one per sweep point x format.
        chunks_done: how many chunks are finished.
        environment: what decides the numbers besides the config: package versions, torch's
            CPU capability and thread count, the device.
        counts: logit rows, evaluations (implementation x format x sample) and table rows.
        slow_rows: per chunk, rows the reference evaluated on its exact path.
        files: relative path -> sha256 of every table, plot, analysis and report file.
        inputs: relative path -> sha256 of the stored inputs (may be absent from a copy).
        plots: relative path -> caption, for every plot.
        schema_version: layout version (:data:`SCHEMA_VERSION`).
    """

    name: str
    question: str
    kind: str = "experiment"
    status: str = "partial"
    description: str = ""
    notes: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    config_sha256: str = ""
    sweep_axes: list[str] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)
    chunks_done: int = 0
    environment: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    slow_rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True)
class RunInfo:
    """How one run went (``run.json``): times, host, command; changes from run to run.

    Attributes:
        started_at, finished_at: ISO 8601 UTC times ("" while unknown).
        resumed_at: ISO time of the last ``--resume``, "" if never resumed.
        command: the command line.
        config_file: the config file as given.
        stage_seconds: wall seconds per stage ("compute", "report", "total").
        chunk_seconds: wall seconds per computed chunk.
        platform: system, release, machine, processor, python implementation, host name.
        git: {"commit", "dirty"} of the package's checkout, when it is one.
        peak_rss_mib: peak resident memory in MiB when the run finished ("process": the
            process that ran the command; worker processes are not included).
    """

    started_at: str = ""
    finished_at: str = ""
    resumed_at: str = ""
    command: str = ""
    config_file: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    chunk_seconds: dict[str, float] = field(default_factory=dict)
    platform: dict[str, str] = field(default_factory=dict)
    git: "dict[str, Any] | None" = None
    peak_rss_mib: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SummaryRow:
    """ULP statistics of one implementation in one format at one sweep point.

    ``params`` holds the swept parameters' values (one column each in the tables)."""

    point: int
    params: dict[str, Any]
    implementation: str
    format: str
    stats: ErrorStats
    quantity: str = "loss"

    def to_row(self, with_quantity: bool = False) -> dict[str, Any]:
        """The flat row of summary.json / summary.csv, in :func:`summary_columns` order.

        For the gradient (``quantity`` "grad") ``count`` counts gradient elements."""
        s = self.stats
        row: dict[str, Any] = {"point": self.point, **self.params,
                               "implementation": self.implementation, "format": self.format,
                               **({"quantity": self.quantity} if with_quantity else {}),
                               "count": s.count, "exact_matches": s.exact_matches,
                               "exact_match_rate": s.exact_match_rate,
                               "ulp_error_mean": s.ulp_error_mean,
                               "ulp_error_median": s.ulp_error_median,
                               "ulp_error_p90": s.ulp_error_p90, "ulp_error_p99": s.ulp_error_p99,
                               "ulp_error_max": s.ulp_error_max, "bits_mean": s.bits_mean}
        row.update({f"n_{c}": s.categories.get(c, 0) for c in CATEGORIES})
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any], axes: list[str]) -> "SummaryRow":
        cats = {c: int(row.get(f"n_{c}") or 0) for c in CATEGORIES}
        stats = ErrorStats(
            count=int(row["count"]), stat_count=cats["finite"] + cats["inf_match"],
            exact_matches=int(row["exact_matches"]), exact_match_rate=row["exact_match_rate"],
            ulp_error_mean=row["ulp_error_mean"], ulp_error_median=row["ulp_error_median"],
            ulp_error_p90=row["ulp_error_p90"], ulp_error_p99=row["ulp_error_p99"],
            ulp_error_max=row["ulp_error_max"], bits_mean=row["bits_mean"], categories=cats)
        return cls(int(row["point"]), {a: row[a] for a in axes}, str(row["implementation"]),
                   str(row["format"]), stats, str(row.get("quantity", "loss")))


@dataclass(frozen=True)
class GradFacts:
    """Where an implementation's gradient loses elements, one sweep point and format.

    ``elements``: gradient elements measured; ``zero_for_nonzero``: computed 0 where the
    correctly rounded truth is not 0; ``truth_subnormal``: elements whose correctly rounded
    truth is subnormal; ``subnormal_lost``: of those, computed as 0; ``truth_underflow``:
    elements whose exact value is not 0 but rounds to 0 (the exact gradient underflows the
    format); ``nonfinite``: inf or NaN results where the truth is finite."""

    point: int
    params: dict[str, Any]
    format: str
    implementation: str
    elements: int
    zero_for_nonzero: int
    truth_subnormal: int
    subnormal_lost: int
    truth_underflow: int
    nonfinite: int

    def to_row(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("point", "format", "implementation", "elements",
                                           "zero_for_nonzero", "truth_subnormal",
                                           "subnormal_lost", "truth_underflow", "nonfinite")}
        return {"point": self.point, **self.params, **{k: v for k, v in d.items()
                                                        if k != "point"}}

    @classmethod
    def from_row(cls, row: dict[str, Any], axes: list[str]) -> "GradFacts":
        return cls(int(row["point"]), {a: row[a] for a in axes}, str(row["format"]),
                   str(row["implementation"]), *(int(row[k]) for k in (
                       "elements", "zero_for_nonzero", "truth_subnormal", "subnormal_lost",
                       "truth_underflow", "nonfinite")))


@dataclass(frozen=True)
class AgreementRow:
    """How often implementations ``a`` and ``b`` return the same float (one sweep point and
    format); distances in ULPs of the format, over the pairs where neither is NaN."""

    point: int
    params: dict[str, Any]
    format: str
    implementation_a: str
    implementation_b: str
    count: int
    identical_rate: "float | None"
    ulp_distance_mean: "float | None"
    ulp_distance_max: "int | None"
    quantity: str = "loss"

    def to_row(self, with_quantity: bool = False) -> dict[str, Any]:
        return {"point": self.point, **self.params, "format": self.format,
                **({"quantity": self.quantity} if with_quantity else {}),
                "implementation_a": self.implementation_a,
                "implementation_b": self.implementation_b, "count": self.count,
                "identical_rate": self.identical_rate,
                "ulp_distance_mean": self.ulp_distance_mean,
                "ulp_distance_max": self.ulp_distance_max}

    @classmethod
    def from_row(cls, row: dict[str, Any], axes: list[str]) -> "AgreementRow":
        return cls(int(row["point"]), {a: row[a] for a in axes}, str(row["format"]),
                   str(row["implementation_a"]), str(row["implementation_b"]), int(row["count"]),
                   row["identical_rate"], row["ulp_distance_mean"], row["ulp_distance_max"],
                   str(row.get("quantity", "loss")))


@dataclass(frozen=True)
class PairErrorStats:
    """One side of a comparison against the truth (ULPs of the format)."""

    count: int
    exact_match_rate: "float | None" = None
    mean: "float | None" = None
    median: "float | None" = None
    p99: "float | None" = None
    max: "float | None" = None


@dataclass(frozen=True)
class CompareResult:
    """The ``[compare]`` check of two implementations at one sweep point in one format.

    Attributes:
        passed: samples with |a - b| < abs_tol, the difference taken in the format.
        identical: samples where a and b are the same float (ULP distance 0).
        smallest_nonzero_difference: the smallest |a - b| > 0, None if there is none.
        median_reference: median correctly rounded value of a's samples.
        ulp_at_median_reference: one ULP of the format at that value.
        ulp_distance: {"mean", "median", "max", "counts": {distance: samples}}.
        a_ulp_error, b_ulp_error: each one's error against the truth.
    """

    point: int
    params: dict[str, Any]
    format: str
    a: str
    b: str
    abs_tol: float
    count: int
    passed: int
    pass_share: "float | None"
    identical: int
    smallest_nonzero_difference: "float | None"
    median_reference: "float | None"
    ulp_at_median_reference: "float | None"
    ulp_distance: dict[str, Any]
    a_ulp_error: PairErrorStats
    b_ulp_error: PairErrorStats

    def to_row(self) -> dict[str, Any]:
        d = {"point": self.point, **self.params, "format": self.format, "a": self.a, "b": self.b,
             "abs_tol": self.abs_tol, "count": self.count, "passed": self.passed,
             "pass_share": self.pass_share, "identical": self.identical,
             "smallest_nonzero_difference": self.smallest_nonzero_difference,
             "median_reference": self.median_reference,
             "ulp_at_median_reference": self.ulp_at_median_reference,
             "ulp_distance": self.ulp_distance}
        for side, st in (("a_ulp_error", self.a_ulp_error), ("b_ulp_error", self.b_ulp_error)):
            d[side] = {k: v for k, v in st.__dict__.items()
                       if v is not None or k == "count"} if st.count else {"count": 0}
        return d

    @classmethod
    def from_row(cls, row: dict[str, Any], axes: list[str]) -> "CompareResult":
        return cls(int(row["point"]), {a: row[a] for a in axes}, str(row["format"]), row["a"],
                   row["b"], float(row["abs_tol"]), int(row["count"]), int(row["passed"]),
                   row["pass_share"], int(row["identical"]), row["smallest_nonzero_difference"],
                   row["median_reference"], row["ulp_at_median_reference"], row["ulp_distance"],
                   PairErrorStats(**row["a_ulp_error"]), PairErrorStats(**row["b_ulp_error"]))
