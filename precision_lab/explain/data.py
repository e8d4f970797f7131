"""A results folder's per-sample table as numpy arrays, and the facts every analysis asks.

:func:`sample_data` reads ``samples.parquet`` once into a :class:`SampleData` (string columns
as integer codes with their names, so selecting an implementation or a format is an integer
comparison); the helpers below compute, from those numbers only, the groups of bit-identical
implementations, the aggregate statistics per implementation and format, and the numeric sweep
axis.  No sentences here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from precision_lab.experiment.records import AgreementRow, SummaryRow
from precision_lab.experiment.store import Results
from precision_lab.numerics.formats import ordered_formats
from precision_lab.numerics.stats import ErrorStats, error_stats

__all__ = ["SampleData", "sample_data", "RowFactsData", "row_facts_data", "aggregate",
           "identical_groups", "numeric_axis", "group_label", "NONFINITE_CATEGORIES"]

#: Categories of a non-finite result where the truth is finite or the wrong infinity.
NONFINITE_CATEGORIES = ("overflow", "nan", "missed_inf")


def _codes(col: Any) -> tuple[np.ndarray, list[str]]:
    enc = col.dictionary_encode().combine_chunks() if hasattr(col, "dictionary_encode") else col
    return (np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64),
            [str(v) for v in enc.dictionary.to_pylist()])


@dataclass
class SampleData:
    """samples.parquet as arrays (one entry per sample row).

    ``impl_code`` / ``fmt_code`` / ``cat_code`` index ``impls`` / ``fmts`` / ``cats``;
    ``axes`` holds one array per swept parameter."""

    point: np.ndarray
    sample: np.ndarray
    impl_code: np.ndarray
    impls: list[str]
    fmt_code: np.ndarray
    fmts: list[str]
    cat_code: np.ndarray
    cats: list[str]
    computed: np.ndarray
    reference: np.ndarray
    exact_hi: np.ndarray
    exact_lo: np.ndarray
    ulp_distance: np.ndarray
    ulp_error: np.ndarray
    bits_of_error: np.ndarray
    relative_error: np.ndarray
    axes: dict[str, np.ndarray] = field(default_factory=dict)
    _groups: "dict[tuple[str, str], np.ndarray] | None" = field(default=None, repr=False)

    def impl_mask(self, name: str) -> np.ndarray:
        return self.impl_code == (self.impls.index(name) if name in self.impls else -1)

    def fmt_mask(self, name: str) -> np.ndarray:
        return self.fmt_code == (self.fmts.index(name) if name in self.fmts else -1)

    def cat_mask(self, *names: str) -> np.ndarray:
        codes = [self.cats.index(n) for n in names if n in self.cats]
        return np.isin(self.cat_code, codes)

    def category(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.cats, dtype=object)[self.cat_code[idx]].astype(str)

    @property
    def implementations(self) -> list[str]:
        """Implementation names in the order they appear in the table."""
        order = np.unique(self.impl_code, return_index=True)[1]
        return [self.impls[c] for c in self.impl_code[np.sort(order)]]

    @property
    def formats(self) -> list[str]:
        return ordered_formats(self.fmts[c] for c in np.unique(self.fmt_code))

    def groups(self) -> dict[tuple[str, str], np.ndarray]:
        """Sample indices of each (implementation, format), computed once (one sort)."""
        if self._groups is None:
            nf = len(self.fmts) + 1
            key = self.impl_code * nf + self.fmt_code
            order = np.argsort(key, kind="stable")
            uk, start = np.unique(key[order], return_index=True)
            bounds = list(start) + [key.size]
            self._groups = {(self.impls[int(k) // nf], self.fmts[int(k) % nf]):
                            order[bounds[i]:bounds[i + 1]] for i, k in enumerate(uk)}
        return self._groups

    def zero_for_nonzero(self) -> np.ndarray:
        """Samples whose result is exactly 0 although the correctly rounded truth is finite and
        not 0 (a loss lost to cancellation or underflow)."""
        return (self.computed == 0) & (self.reference != 0) & np.isfinite(self.reference)


def sample_data(res: Results) -> "SampleData | None":
    """The folder's samples as arrays (cached on the Results); None without samples."""
    if "sample_data" in res._cache:
        return res._cache["sample_data"]
    t = res.samples()
    if t is None:
        return None
    if "quantity" in t.column_names:  # the loss rows; gradients have their own analysis
        import pyarrow.compute as pc

        t = t.filter(pc.equal(t.column("quantity"), "loss"))
    num = {c: np.asarray(t.column(c).to_numpy(zero_copy_only=False))
           for c in ("point", "sample", "computed", "reference", "exact_hi", "exact_lo",
                     "ulp_distance", "ulp_error", "bits_of_error", "relative_error")}
    ic, impls = _codes(t.column("implementation"))
    fc, fmts = _codes(t.column("format"))
    cc, cats = _codes(t.column("category"))
    import pyarrow.types as pat

    axes = {a: np.asarray(t.column(a).to_numpy(zero_copy_only=False), dtype=np.float64)
            for a in res.axes
            if a in t.column_names and not pat.is_string(t.schema.field(a).type)}
    out = SampleData(num["point"], num["sample"], ic, impls, fc, fmts, cc, cats,
                     num["computed"], num["reference"], num["exact_hi"], num["exact_lo"],
                     num["ulp_distance"], num["ulp_error"], num["bits_of_error"],
                     num["relative_error"], axes)
    res._cache["sample_data"] = out
    return out


def aggregate(d: SampleData) -> dict[tuple[str, str], ErrorStats]:
    """Error statistics of each (implementation, format) over all sweep points, in format
    order then implementation order."""
    out = {}
    cats = np.asarray(d.cats, dtype=object)
    groups = d.groups()
    for fm in d.formats:
        for im in d.implementations:
            idx = groups.get((im, fm))
            if idx is not None and idx.size:
                out[(im, fm)] = error_stats(d.ulp_error[idx], d.ulp_distance[idx],
                                            d.bits_of_error[idx], cats[d.cat_code[idx]])
    return out


def identical_groups(agreement: list[AgreementRow], impls: list[str],
                     min_samples: int = 10) -> list[list[str]]:
    """Implementations bit-identical to each other on every sample of every format (at least
    ``min_samples`` samples per format), as groups in ``impls`` order."""
    fmts = {r.format for r in agreement}
    per_pair: dict[tuple[str, str], dict[str, list[int]]] = {}
    for r in agreement:
        d = per_pair.setdefault((r.implementation_a, r.implementation_b), {})
        ok = r.identical_rate == 1.0
        v = d.setdefault(r.format, [0, 1])
        v[0] += r.count
        v[1] = v[1] and int(ok)
    parent = {i: i for i in impls}

    def find(i: str) -> str:
        while parent[i] != i:
            i = parent[i]
        return i

    for (a, b), by_fmt in per_pair.items():
        if a not in parent or b not in parent or set(by_fmt) != fmts:
            continue
        if all(ok and n >= min_samples for n, ok in by_fmt.values()):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[rb] = ra
    groups: dict[str, list[str]] = {}
    for i in impls:
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def group_label(names: list[str]) -> str:
    """How a group of bit-identical implementations is named: "a = b"."""
    return " = ".join(names)


def numeric_axis(summary: list[SummaryRow]) -> "str | None":
    """The first swept parameter with at least two distinct numeric values (the x axis)."""
    if not summary:
        return None
    for a in summary[0].params:
        vals = {r.params.get(a) for r in summary}
        if len(vals) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 for v in vals):
            return a
    return None


@dataclass
class RowFactsData:
    """rows.parquet as arrays, with a lookup from sample rows to their logit row's facts."""

    facts: dict[str, np.ndarray]
    starts: dict[tuple[int, str], int]

    def of(self, d: SampleData, idx: np.ndarray, name: str) -> np.ndarray:
        """Fact ``name`` (row_max, row_min, target_logit, lse) of the logit row behind each
        sample ``idx`` (reduction "none": a sample is one logit row)."""
        idx = np.asarray(idx, dtype=np.int64)
        k = len(d.fmts) + 1
        key = d.point[idx] * k + d.fmt_code[idx]
        uk, inv = np.unique(key, return_inverse=True)
        st = np.array([self.starts[(int(u // k), d.fmts[int(u % k)])] for u in uk.tolist()],
                      dtype=np.int64)
        start = st[inv] if idx.size else np.zeros(0, np.int64)
        return self.facts[name][start + d.sample[idx]]


def row_facts_data(res: Results) -> "RowFactsData | None":
    """The folder's row facts (cached on the Results); None without rows.parquet."""
    if "row_facts_data" in res._cache:
        return res._cache["row_facts_data"]
    t = res.row_facts()
    if t is None or t.num_rows == 0:  # reduced batches have no per-row facts
        return None
    facts = {c: np.asarray(t.column(c).to_numpy(zero_copy_only=False))
             for c in t.column_names if c != "format"}
    fc, fmts = _codes(t.column("format"))
    key = facts["point"] * (len(fmts) + 1) + fc
    _, first = np.unique(key, return_index=True)
    starts = {(int(facts["point"][i]), fmts[int(fc[i])]): int(i) for i in first}
    out = RowFactsData(facts, starts)
    res._cache["row_facts_data"] = out
    return out
