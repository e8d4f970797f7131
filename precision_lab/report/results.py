"""A results folder, loaded: its manifest, tables, extra JSON and plots, and the helpers
that read its rows.

* :func:`load_results` reads ``results/<experiment>/`` into a :class:`Results` (manifest,
  summary and agreement rows, ``compare.json``, the extra JSON of the analyses and the
  capability study, the plots); ``samples.parquet`` is read on first use
  (:meth:`Results.samples`, :meth:`Results.sample_arrays`).
* Row helpers: how many samples a summary row covers (:func:`row_total`), how many carry
  statistics (:func:`stat_count`), how many are correctly rounded (:func:`exact_count`);
  :func:`aggregate` combines the sweep points of each implementation x format into an
  :class:`Agg`.
* Facts of the whole folder: the numeric sweep axis (:func:`numeric_param`) and its values,
  the groups of implementations that return the same bits on every sample
  (:func:`identical_groups`), the rows that come back 0 for a non-zero loss (:func:`zero_mask`).

Findings, analyses and the report all read a folder through this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from precision_lab.numerics.metrics import CATEGORIES

__all__ = [
    "EXTRA_NAMES", "Results", "load_results", "as_rows", "row_total", "stat_count", "exact_count",
    "as_float", "nanmax", "Agg", "aggregate", "pair_of", "numeric_param", "identical_groups", "group_name",
    "axis_values", "zero_mask",
]

#: Extra JSON files a results folder may hold (written by the analyses or the capability
#: study), rendered in this order.
EXTRA_NAMES = ("explained", "overflow", "cancellation", "bounds", "attribution", "capabilities", "conditioning")

# Columns of a summary row that are not swept parameters.
_SUMMARY_FIXED = {
    "point", "implementation", "format", "count", "exact_match_rate", "ulp_error_mean",
    "ulp_error_median", "ulp_error_p90", "ulp_error_p99", "ulp_error_max", "bits_mean",
    "n_samples", "n_total", "exact_matches", "n_exact",
} | {f"n_{c}" for c in CATEGORIES}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def as_rows(obj: Any) -> list[dict]:
    """Accept a list of row dicts, {"rows": [...]}, or a column dict {col: [values]}."""
    if obj is None:
        return []
    if isinstance(obj, list):
        return [dict(r) for r in obj if isinstance(r, dict)]
    if isinstance(obj, dict):
        for key in ("rows", "data", "records", "summary", "agreement"):
            if isinstance(obj.get(key), list):
                return as_rows(obj[key])
        cols = [v for v in obj.values() if isinstance(v, list)]
        if cols and all(len(c) == len(cols[0]) for c in cols) and len(cols) == len(obj):
            keys = list(obj)
            return [dict(zip(keys, vals)) for vals in zip(*obj.values())]
    return []


@dataclass
class Results:
    """Everything a report needs from a results folder, loaded once."""

    root: Path
    manifest: dict
    summary: list[dict]
    agreement: list[dict]
    compare: Any = None
    extras: dict[str, Any] = field(default_factory=dict)  # name -> parsed JSON
    plots: list[Path] = field(default_factory=list)
    _samples: Any = None
    _arrays: Any = None

    @property
    def config(self) -> dict:
        m = self.manifest or {}
        for key in ("config", "resolved_config", "experiment"):
            if isinstance(m.get(key), dict):
                return m[key]
        return {}

    @property
    def name(self) -> str:
        exp = self.manifest.get("experiment")
        for v in (self.config.get("name"), self.manifest.get("name"),
                  exp if isinstance(exp, str) else None):
            if v:
                return str(v)
        return self.root.name

    @property
    def question(self) -> str:
        c = self.config
        for key in ("question", "description"):
            v = c.get(key) or self.manifest.get(key)
            if v:
                return str(v).strip()
        return ""

    @property
    def description(self) -> str:
        c = self.config
        q = c.get("question") or self.manifest.get("question")
        d = c.get("description") or self.manifest.get("description")
        return str(d).strip() if (q and d) else ""

    def swept_params(self) -> list[str]:
        keys: list[str] = []
        for r in self.summary:
            for k in r:
                if k not in _SUMMARY_FIXED and k not in keys:
                    keys.append(k)
        return keys

    def samples(self):
        """samples.parquet as a pyarrow Table (None if absent or unreadable)."""
        if self._samples is None:
            p = self.root / "samples.parquet"
            if p.exists():
                try:
                    import pyarrow.parquet as pq

                    self._samples = pq.read_table(p)
                except Exception:  # a broken file should not stop the report
                    self._samples = False
            else:
                self._samples = False
        return self._samples or None

    def sample_arrays(self) -> dict[str, Any] | None:
        """samples.parquet as numpy arrays, one per column (strings as object arrays, each
        swept parameter under "axis:<name>"); None without a usable per-sample table.  Read
        once and kept."""
        if self._arrays is None:
            self._arrays = _sample_arrays(self) or False
        return self._arrays or None


def load_results(results_dir: Path | str) -> Results:
    root = Path(results_dir)
    manifest = _read_json(root / "manifest.json") or {}
    summary = as_rows(_read_json(root / "summary.json"))
    agreement = as_rows(_read_json(root / "agreement.json"))
    compare = _read_json(root / "compare.json")
    extras: dict[str, Any] = {}
    for name in EXTRA_NAMES:
        v = _read_json(root / f"{name}.json")
        if v is not None:
            extras[name] = v
    exp_dir = root / "explain"
    if exp_dir.is_dir():
        extras["explain"] = {p.stem: _read_json(p) for p in sorted(exp_dir.glob("*.json"))}
    plots = sorted((root / "plots").glob("*.png")) if (root / "plots").is_dir() else []
    return Results(root, manifest, summary, agreement, compare, extras, plots)



def _sample_arrays(res: Results) -> dict[str, Any] | None:
    """See :meth:`Results.sample_arrays`."""
    import numpy as np

    t = res.samples()
    if t is None:
        return None
    cols = {}
    for c in ("point", "sample", "implementation", "format", "computed", "reference",
              "exact_hi", "exact_lo", "ulp_error", "relative_error", "category"):
        if c not in t.column_names:
            return None
        col = t.column(c)
        if c in ("implementation", "format", "category"):
            cols[c] = np.asarray(col.to_pylist(), dtype=object)
        else:
            cols[c] = col.to_numpy(zero_copy_only=False)
    for a in res.swept_params():
        if a in t.column_names:
            cols["axis:" + a] = t.column(a).to_numpy(zero_copy_only=False)
    return cols


# --------------------------------------------------------------------------- rows

def row_total(r: dict) -> int:
    """Number of samples a summary row covers: the sum of its category counts if present."""
    cats = [r.get(f"n_{c}") for c in CATEGORIES]
    if any(c is not None for c in cats):
        return int(sum(int(c or 0) for c in cats))
    return int(r.get("count") or 0)


def stat_count(r: dict) -> int:
    """Rows that carry statistics ("finite" + "inf_match")."""
    if r.get("n_finite") is not None or r.get("n_inf_match") is not None:
        return int(r.get("n_finite") or 0) + int(r.get("n_inf_match") or 0)
    return int(r.get("count") or 0)


def exact_count(r: dict) -> int:
    """Samples whose computed value equals the correctly rounded truth.

    ``exact_match_rate`` is a share of the statistics rows ("finite" + "inf_match"), as the
    contract says statistics use those rows only."""
    if r.get("exact_matches") is not None:
        return int(r["exact_matches"])
    rate = r.get("exact_match_rate")
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return 0
    return int(round(float(rate) * stat_count(r)))


def as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def nanmax(vals: Iterable[float]) -> float:
    vs = [v for v in (as_float(x) for x in vals) if not math.isnan(v)]
    return max(vs) if vs else math.nan


@dataclass
class Agg:
    implementation: str
    format: str
    total: int = 0
    stat: int = 0
    exact: int = 0
    cats: dict[str, int] = field(default_factory=dict)
    ulp_max: float = math.nan
    ulp_mean_w: float = 0.0  # sum of mean * stat, for a weighted mean
    ulp_p99_max: float = math.nan
    bits_w: float = 0.0

    @property
    def ulp_mean(self) -> float:
        return self.ulp_mean_w / self.stat if self.stat else math.nan

    @property
    def bits_mean(self) -> float:
        return self.bits_w / self.stat if self.stat else math.nan


def aggregate(summary: list[dict]) -> dict[tuple[str, str], Agg]:
    """Combine the sweep points of each implementation x format."""
    out: dict[tuple[str, str], Agg] = {}
    for r in summary:
        key = (str(r.get("implementation")), str(r.get("format")))
        a = out.setdefault(key, Agg(*key))
        t, s = row_total(r), stat_count(r)
        a.total += t
        a.stat += s
        a.exact += exact_count(r)
        for c in CATEGORIES:
            a.cats[c] = a.cats.get(c, 0) + int(r.get(f"n_{c}") or 0)
        a.ulp_max = nanmax([a.ulp_max, r.get("ulp_error_max")])
        a.ulp_p99_max = nanmax([a.ulp_p99_max, r.get("ulp_error_p99")])
        m = as_float(r.get("ulp_error_mean"))
        if not math.isnan(m):
            a.ulp_mean_w += m * s
        b = as_float(r.get("bits_mean"))
        if not math.isnan(b):
            a.bits_w += b * s
    return out


def pair_of(r: dict) -> tuple[Any, Any]:
    """The two implementations an agreement row compares (None where the row does not say)."""
    return (r.get("a") or r.get("implementation_a") or r.get("impl_a"),
            r.get("b") or r.get("implementation_b") or r.get("impl_b"))


# --------------------------------------------------------------------------- the whole folder

def numeric_param(res: Results) -> str | None:
    """The first swept parameter whose values are all numbers (the x axis of the sweep)."""
    for p in res.swept_params():
        vals = [r.get(p) for r in res.summary if p in r]
        if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            if len(set(vals)) > 1:
                return p
    return None


def identical_groups(res: Results) -> list[list[str]]:
    """Implementations bit-identical to each other on every sample of every format (at least 10
    samples per format), as groups in registry order."""
    impls = list(dict.fromkeys(str(r.get("implementation")) for r in res.summary))
    fmts = set(str(r.get("format")) for r in res.summary)
    pairs: dict[tuple[str, str], list[tuple[str, float, int]]] = {}
    for r in res.agreement:
        a, b = pair_of(r)
        if a is None or b is None:
            continue
        n = int(r.get("count") or r.get("n") or 0)
        pairs.setdefault((str(a), str(b)), []).append((str(r.get("format")), as_float(r.get("identical_rate")), n))
    parent = {i: i for i in impls}

    def find(i: str) -> str:
        while parent[i] != i:
            i = parent[i]
        return i

    for (a, b), rows in pairs.items():
        if a not in parent or b not in parent:
            continue
        per_fmt: dict[str, int] = {}
        for fm, rate, n in rows:
            if rate != 1.0:
                break
            per_fmt[fm] = per_fmt.get(fm, 0) + n
        else:
            if set(per_fmt) == fmts and min(per_fmt.values(), default=0) >= 10:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[rb] = ra
    groups: dict[str, list[str]] = {}
    for i in impls:
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def group_name(names: list[str]) -> str:
    """How a group of bit-identical implementations is named: "a = b"."""
    return " = ".join(names)


def axis_values(res: Results, axis: str) -> list[float]:
    """The distinct numeric values of a swept parameter, ascending."""
    return sorted({float(r[axis]) for r in res.summary if isinstance(r.get(axis), (int, float))})


def zero_mask(S: dict):
    """Rows of :meth:`Results.sample_arrays` whose loss came back exactly 0 although the
    correctly rounded loss is finite and not 0."""
    import numpy as np

    comp, ref = S["computed"].astype(float), S["reference"].astype(float)
    return (comp == 0) & (ref != 0) & np.isfinite(ref)
