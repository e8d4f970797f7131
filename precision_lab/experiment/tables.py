"""Result tables of one chunk (a sweep point in one format), built from a measurement.

A chunk is the runner's unit of work: everything here depends on that chunk only, so chunks
can be computed in any order, in other processes, and resumed.  :func:`chunk_tables` gives a
:class:`ChunkTables`: the per-sample Arrow table, the per-row facts table, and the records of
:mod:`precision_lab.experiment.records` (summary, agreement and the ``[compare]`` check).
:func:`values_view` lists every value of a tiny experiment.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from precision_lab.experiment.measure import Measurement
from precision_lab.experiment.records import (
    AgreementRow,
    CompareResult,
    GradFacts,
    PairErrorStats,
    SummaryRow,
)
from precision_lab.numerics.formats import Format, get_format, ulp_of
from precision_lab.numerics.metrics import NO_DISTANCE, ulp_distance
from precision_lab.numerics.stats import error_stats

__all__ = ["ChunkTables", "chunk_key", "chunk_tables", "compare_pair", "samples_schema",
           "values_view",
           "VALUES_LIMIT", "VALUES_MAX_ROWS"]

#: summary.json lists every computed value ("values") when a sweep point has at most
#: VALUES_LIMIT samples per implementation and format and the table at most VALUES_MAX_ROWS.
VALUES_LIMIT = 16
VALUES_MAX_ROWS = 512


def chunk_key(point: int, fmt: str) -> str:
    """The key of a chunk: "p00003_float16"."""
    return f"p{point:05d}_{fmt}"


@dataclass
class ChunkTables:
    """Everything one chunk contributes to a results folder."""

    key: str
    samples: pa.Table
    rows: pa.Table
    summary: list[SummaryRow]
    agreement: list[AgreementRow]
    compare: list[CompareResult] = field(default_factory=list)
    slow_rows: int = 0
    grad_facts: list[GradFacts] = field(default_factory=list)
    logit_rows: int = 0


def samples_schema(params: dict[str, Any], axes: list[str],
                   with_quantity: bool = False) -> pa.Schema:
    """Column types of samples.parquet (swept parameters typed by their values: a study may
    sweep names, such as a kernel set).  Experiments
    that measure the gradient have two more columns after ``format``: ``quantity`` ("loss"
    or "grad") and ``element`` (the class of the row's worst gradient element; -1 for a
    loss)."""
    cols = [("point", pa.int64())]
    for a in axes:
        v = params[a]
        cols.append((a, pa.string() if isinstance(v, str)
                     else pa.int64() if isinstance(v, int) and not isinstance(v, bool)
                     else pa.float64()))
    cols += [("sample", pa.int64()), ("batch", pa.int64()), ("row", pa.int64()),
             ("implementation", pa.string()), ("format", pa.string()),
             *([("quantity", pa.string()), ("element", pa.int64())] if with_quantity else []),
             ("computed", pa.float64()), ("reference", pa.float64()),
             ("exact_hi", pa.float64()), ("exact_lo", pa.float64()),
             ("ulp_distance", pa.uint64()), ("ulp_error", pa.float64()),
             ("bits_of_error", pa.float64()), ("relative_error", pa.float64()),
             ("category", pa.string())]
    return pa.schema(cols)


def _worst_elements(meas: Measurement, key: str, rows: int, V: int) -> np.ndarray:
    """Per logit row, the index of its worst gradient element: a spurious non-finite one
    first, else the largest ULP error (the first of equals)."""
    m = meas.results[key]
    score = np.where(np.isin(m.category, ("overflow", "nan", "missed_inf")), np.inf,
                     np.nan_to_num(m.ulp_error, nan=-1.0)).reshape(rows, V)
    return score.argmax(axis=1)


def _grad_samples(point: int, swept: dict[str, Any], f: Format, meas: Measurement, S: int,
                  B: int, V: int) -> pa.Table:
    """One row per logit row and implementation: the row's worst gradient element."""
    n = S * B
    sample = np.arange(n, dtype=np.int64)
    ref = meas.reference
    keys = list(meas.results)
    cols: dict[str, list[Any]] = {c: [] for c in (
        "computed", "reference", "exact_hi", "exact_lo", "ulp_distance", "ulp_error",
        "bits_of_error", "relative_error", "category", "element")}
    for key in keys:
        m = meas.results[key]
        j = _worst_elements(meas, key, n, V)
        idx = sample * V + j
        cols["element"].append(j)
        cols["computed"].append(m.computed[idx].astype(np.float64))
        cols["reference"].append(ref.values[idx].astype(np.float64))
        cols["exact_hi"].append(ref.hi[idx])
        cols["exact_lo"].append(ref.lo[idx])
        for name in ("ulp_distance", "ulp_error", "bits_of_error", "relative_error",
                     "category"):
            cols[name].append(getattr(m, name)[idx])
    k = len(keys)
    data: dict[str, Any] = {
        "point": np.full(n * k, point, dtype=np.int64),
        **{a: [v] * (n * k) for a, v in swept.items()},
        "sample": np.tile(sample, k), "batch": np.tile(sample // B, k),
        "row": np.tile(sample % B, k),
        "implementation": [key for key in keys for _ in range(n)],
        "format": [f.name] * (n * k), "quantity": ["grad"] * (n * k),
        **{c: np.concatenate(v) if k else np.zeros(0) for c, v in cols.items()}}
    data["category"] = [str(c) for c in data["category"]]
    schema = samples_schema({"point": point, **swept}, list(swept), True)
    return pa.Table.from_arrays([pa.array(data[nm], type=schema.field(nm).type)
                                 for nm in schema.names], schema=schema)


def _samples_table(point: int, swept: dict[str, Any], f: Format, meas: Measurement, S: int,
                   B: int, reduction: str, with_quantity: bool = False) -> pa.Table:
    n = S * B if reduction == "none" else S
    if reduction == "none":
        sample = np.arange(n, dtype=np.int64)
        batch_i, row_i = sample // B, sample % B
    else:
        sample = batch_i = np.arange(n, dtype=np.int64)
        row_i = np.full(n, -1, dtype=np.int64)
    ref = meas.reference
    keys = list(meas.results)
    k = len(keys)
    cols: dict[str, Any] = {
        "point": np.full(n * k, point, dtype=np.int64),
        **{a: [v] * (n * k) for a, v in swept.items()},
        "sample": np.tile(sample, k), "batch": np.tile(batch_i, k), "row": np.tile(row_i, k),
        "implementation": [key for key in keys for _ in range(n)],
        "format": [f.name] * (n * k),
        "computed": np.concatenate([meas.results[key].computed.astype(np.float64)
                                    for key in keys]) if k else np.zeros(0),
        "reference": np.tile(ref.values.astype(np.float64), k),
        "exact_hi": np.tile(ref.hi, k), "exact_lo": np.tile(ref.lo, k),
    }
    for name in ("ulp_distance", "ulp_error", "bits_of_error", "relative_error"):
        cols[name] = (np.concatenate([getattr(meas.results[key], name) for key in keys])
                      if k else np.zeros(0))
    cols["category"] = [c for key in keys for c in meas.results[key].category.tolist()]
    if with_quantity:
        cols["quantity"] = ["loss"] * (n * k)
        cols["element"] = np.full(n * k, -1, dtype=np.int64)
    schema = samples_schema({"point": point, **swept}, list(swept), with_quantity)
    return pa.Table.from_arrays([pa.array(cols[nm], type=schema.field(nm).type)
                                 for nm in schema.names], schema=schema)


def _agreement(point: int, swept: dict[str, Any], f: Format, meas: Measurement,
               quantity: str = "loss") -> list[AgreementRow]:
    out = []
    for a, b in itertools.combinations(list(meas.results), 2):
        va, vb = meas.results[a].computed, meas.results[b].computed
        d = ulp_distance(va, vb, f)
        ok = d != NO_DISTANCE
        same = (d == 0) | (np.isnan(va.astype(np.float64)) & np.isnan(vb.astype(np.float64)))
        out.append(AgreementRow(
            point, dict(swept), f.name, a, b, int(d.size),
            float(same.mean()) if d.size else None,
            float(d[ok].astype(np.float64).mean()) if ok.any() else None,
            int(d[ok].max()) if ok.any() else None, quantity))
    return out


def _grad_facts(point: int, swept: dict[str, Any], f: Format,
                meas: Measurement) -> list[GradFacts]:
    ref = meas.reference.values.astype(np.float64)
    sub = (ref != 0) & (np.abs(ref) < f.smallest_normal)
    out = []
    for key, m in meas.results.items():
        c = m.computed.astype(np.float64)
        out.append(GradFacts(point, dict(swept), f.name, key, int(c.size),
                             int(((c == 0) & (ref != 0) & np.isfinite(ref)).sum()),
                             int(sub.sum()), int((sub & (c == 0)).sum()),
                             int(((ref == 0) & (meas.reference.hi != 0)).sum()),
                             int((~np.isfinite(c) & np.isfinite(ref)).sum())))
    return out


def _pair_stats(m: Any) -> PairErrorStats:
    st = error_stats(m.ulp_error, m.ulp_distance, m.bits_of_error, m.category)
    if not st.stat_count:
        return PairErrorStats(0)
    return PairErrorStats(st.stat_count, st.exact_match_rate, st.ulp_error_mean,
                          st.ulp_error_median, st.ulp_error_p99, st.ulp_error_max)


def _finite_or_none(v: float) -> "float | None":
    return v if math.isfinite(v) else None


def compare_pair(point: int, swept: dict[str, Any], f: Format, meas: Measurement, a: str,
                 b: str, abs_tol: float) -> CompareResult:
    """Agreement of results ``a`` and ``b`` of one measurement: pass share of
    ``|a - b| < abs_tol``, bit identity and their ULP distance in ``f``."""
    ma, mb = meas.results[a], meas.results[b]
    va, vb = ma.computed, mb.computed
    with np.errstate(all="ignore"):
        diff = np.abs((va - vb).astype(np.float64))
    passed = diff < abs_tol
    d = ulp_distance(va, vb, f)
    dd = d[d != NO_DISTANCE]
    hist = {str(int(k)): int(v) for k, v in zip(*np.unique(dd, return_counts=True))}
    nonzero = diff[(diff > 0) & np.isfinite(diff)]
    ref = meas.reference.values.astype(np.float64)
    med_ref = float(np.median(ref)) if ref.size else math.nan
    ulp_med = float(ulp_of(med_ref, f)) if math.isfinite(med_ref) else None
    return CompareResult(
        point, dict(swept), f.name, a, b, abs_tol, int(va.size), int(passed.sum()),
        float(passed.mean()) if va.size else None, int((d == 0).sum()),
        float(nonzero.min()) if nonzero.size else None, _finite_or_none(med_ref), ulp_med,
        {"mean": float(dd.astype(np.float64).mean()) if dd.size else None,
         "median": float(np.median(dd.astype(np.float64))) if dd.size else None,
         "max": int(dd.max()) if dd.size else None, "counts": hist},
        _pair_stats(ma), _pair_stats(mb))


def chunk_tables(point: int, swept: dict[str, Any], fmt: "str | Format",
                 measurements: dict[str, Measurement], x: np.ndarray, t: np.ndarray,
                 reduction: str, compare: "tuple[str, str, float] | None" = None
                 ) -> ChunkTables:
    """The tables of one chunk from its measurements ({"loss": ..., "grad": ...}, either or
    both) and its (S, B, V) inputs.  A ``quantity`` column appears when "grad" is measured.

    ``compare``: (a, b, abs_tol) when the config's ``[compare]`` check applies (loss only).
    """
    from precision_lab.experiment.measure import row_facts

    f = get_format(fmt)
    S, B, V = x.shape
    with_q = "grad" in measurements
    parts, summary, agreement, cmp, facts_g = [], [], [], [], []
    slow = 0
    for quantity, meas in measurements.items():
        if quantity == "grad":
            parts.append(_grad_samples(point, swept, f, meas, S, B, V))
            facts_g = _grad_facts(point, swept, f, meas)
        else:
            parts.append(_samples_table(point, swept, f, meas, S, B, reduction, with_q))
            if compare:
                cmp = [compare_pair(point, swept, f, meas, *compare)]
        for key, m in meas.results.items():
            summary.append(SummaryRow(point, dict(swept), key, f.name,
                                      error_stats(m.ulp_error, m.ulp_distance, m.bits_of_error,
                                                  m.category), quantity))
        agreement += _agreement(point, swept, f, meas, quantity)
        slow += meas.reference.slow_rows
    if reduction == "none":
        facts = row_facts(x, t)
        n = S * B
    else:  # a reduced batch is one sample: per-row facts would only bloat the folder
        facts = {k: v[:0] for k, v in row_facts(x[:1, :1], t[:1, :1]).items()}
        n = 0
    rows = pa.table({"point": np.full(n, point, np.int64),
                     "format": pa.array([f.name] * n, pa.string()),
                     "batch": np.repeat(np.arange(S, dtype=np.int64), B)[:n],
                     "row": np.tile(np.arange(B, dtype=np.int64), S)[:n],
                     **{k: v for k, v in facts.items()}})
    samples = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    return ChunkTables(chunk_key(point, f.name), samples, rows, summary, agreement, cmp, slow,
                       facts_g, S * B)


def values_view(table: pa.Table, axes: list[str]) -> "list[dict[str, Any]] | None":
    """Every computed value, for tiny experiments (at most :data:`VALUES_LIMIT` samples per
    point and :data:`VALUES_MAX_ROWS` rows); None otherwise.  ``computed_repr`` and
    ``reference_repr`` are the shortest decimal strings of the format's values."""
    samples = table.column("sample").to_numpy()
    if (samples.size == 0 or int(samples.max()) + 1 > VALUES_LIMIT
            or table.num_rows > VALUES_MAX_ROWS):
        return None
    cols = ["point", *axes, "sample", "implementation", "format", "computed", "reference",
            "exact_hi", "exact_lo", "ulp_error", "category"]
    data = {c: table.column(c).to_pylist() for c in cols}
    out = []
    for i in range(table.num_rows):
        r: dict[str, Any] = {c: data[c][i] for c in cols}
        f = get_format(r["format"])
        r["computed_repr"] = str(f.np_dtype.type(r["computed"]))
        r["reference_repr"] = str(f.np_dtype.type(r["reference"]))
        out.append(r)
    return out
