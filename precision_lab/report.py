"""Write ``report.md`` and ``report.html`` for one results folder.

The report is generated from the data in the folder and from nothing else:

* the question comes from the manifest's resolved config (``question`` / ``description``);
* every finding is a sentence built from the summary, agreement and per-sample tables, and
  carries the numbers it rests on (rates as "99.3% (993/1000)", thresholds as the swept value
  where a behaviour starts and the last value where it did not);
* the summary and agreement tables are rendered from ``summary.json`` / ``agreement.json``;
* every ``plots/*.png`` is shown -- in ``report.md`` as a relative image link, in
  ``report.html`` embedded as a base64 ``data:image/png`` URI so the file is self-contained;
* optional extra JSON written by the explanatory modules (``attribution.json``,
  ``bounds.json``, ``capabilities.json``, ``explain/*.json``, ``compare.json``) is rendered as
  its own section;
* provenance (config hash, package versions, torch CPU capability, platform, git commit,
  times, status) is copied from the manifest.

Both files are rendered from one neutral document (a list of blocks), so they say the same.
The finding generators are plain functions of the loaded tables (:data:`FINDERS`); each one
returns nothing when its pattern is absent from the data, so a report only states what its
experiment actually shows.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = [
    "write_report",
    "build_document",
    "load_results",
    "Results",
    "Finding",
    "FINDERS",
    "fmt_rate",
    "fmt_num",
]

CATEGORY_NAMES = ("finite", "inf_match", "overflow", "nan", "missed_inf", "undefined")

# Columns of a summary row that are not swept parameters.
_SUMMARY_FIXED = {
    "point", "implementation", "format", "count", "exact_match_rate", "ulp_error_mean",
    "ulp_error_median", "ulp_error_p90", "ulp_error_p99", "ulp_error_max", "bits_mean",
    "n_samples", "n_total", "exact_matches", "n_exact",
} | {f"n_{c}" for c in CATEGORY_NAMES}
_AGREEMENT_FIXED = {
    "point", "format", "a", "b", "implementation_a", "implementation_b", "impl_a", "impl_b",
    "pair", "identical_rate", "ulp_distance_mean", "ulp_distance_max", "count", "n", "n_identical",
}


# --------------------------------------------------------------------------- number formats

def fmt_num(x: Any, digits: int = 4) -> str:
    """A short, honest rendering of a number: ints as ints, floats with ``digits`` significant
    digits, NaN/inf spelled out, None as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def fmt_pct(rate: float) -> str:
    """A rate in [0, 1] as a percentage that never rounds a non-total rate to 100% or a
    non-zero rate to 0%."""
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "—"
    p = 100.0 * float(rate)
    if p == 100.0 or p == 0.0:
        return f"{p:.0f}%"
    for d in (1, 2, 3, 4, 6):
        s = f"{p:.{d}f}"
        if float(s) not in (0.0, 100.0):
            return s + "%"
    return f"{p:.3g}%"


def fmt_rate(k: int, n: int) -> str:
    """'99.3% (993/1000)'."""
    if not n:
        return "— (0/0)"
    return f"{fmt_pct(k / n)} ({k}/{n})"


# --------------------------------------------------------------------------- loading

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _rows(obj: Any) -> list[dict]:
    """Accept a list of row dicts, {"rows": [...]}, or a column dict {col: [values]}."""
    if obj is None:
        return []
    if isinstance(obj, list):
        return [dict(r) for r in obj if isinstance(r, dict)]
    if isinstance(obj, dict):
        for key in ("rows", "data", "records", "summary", "agreement"):
            if isinstance(obj.get(key), list):
                return _rows(obj[key])
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


def load_results(results_dir: Path | str) -> Results:
    root = Path(results_dir)
    manifest = _read_json(root / "manifest.json") or {}
    summary = _rows(_read_json(root / "summary.json"))
    agreement = _rows(_read_json(root / "agreement.json"))
    compare = _read_json(root / "compare.json")
    extras: dict[str, Any] = {}
    for name in ("attribution", "bounds", "capabilities", "conditioning"):
        v = _read_json(root / f"{name}.json")
        if v is not None:
            extras[name] = v
    exp_dir = root / "explain"
    if exp_dir.is_dir():
        extras["explain"] = {p.stem: _read_json(p) for p in sorted(exp_dir.glob("*.json"))}
    plots = sorted((root / "plots").glob("*.png")) if (root / "plots").is_dir() else []
    return Results(root, manifest, summary, agreement, compare, extras, plots)


# --------------------------------------------------------------------------- table helpers

def _total(r: dict) -> int:
    """Number of samples a summary row covers: the sum of its category counts if present."""
    cats = [r.get(f"n_{c}") for c in CATEGORY_NAMES]
    if any(c is not None for c in cats):
        return int(sum(int(c or 0) for c in cats))
    return int(r.get("count") or 0)


def _stat_count(r: dict) -> int:
    """Rows that carry statistics ("finite" + "inf_match")."""
    if r.get("n_finite") is not None or r.get("n_inf_match") is not None:
        return int(r.get("n_finite") or 0) + int(r.get("n_inf_match") or 0)
    return int(r.get("count") or 0)


def _exact_count(r: dict) -> int:
    """Samples whose computed value equals the correctly rounded truth.

    ``exact_match_rate`` is a share of the statistics rows ("finite" + "inf_match"), as the
    contract says statistics use those rows only."""
    if r.get("exact_matches") is not None:
        return int(r["exact_matches"])
    rate = r.get("exact_match_rate")
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return 0
    return int(round(float(rate) * _stat_count(r)))


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _nanmax(vals: Iterable[float]) -> float:
    vs = [v for v in (_f(x) for x in vals) if not math.isnan(v)]
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
        t, s = _total(r), _stat_count(r)
        a.total += t
        a.stat += s
        a.exact += _exact_count(r)
        for c in CATEGORY_NAMES:
            a.cats[c] = a.cats.get(c, 0) + int(r.get(f"n_{c}") or 0)
        a.ulp_max = _nanmax([a.ulp_max, r.get("ulp_error_max")])
        a.ulp_p99_max = _nanmax([a.ulp_p99_max, r.get("ulp_error_p99")])
        m = _f(r.get("ulp_error_mean"))
        if not math.isnan(m):
            a.ulp_mean_w += m * s
        b = _f(r.get("bits_mean"))
        if not math.isnan(b):
            a.bits_w += b * s
    return out


def _format_order(names: Iterable[str]) -> list[str]:
    order = ["float16", "bfloat16", "float32", "float64"]
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (order.index(n) if n in order else 99, n))


# --------------------------------------------------------------------------- findings

@dataclass
class Finding:
    """One claim with the numbers it rests on."""

    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    kind: str = "general"


def _numeric_param(res: Results) -> str | None:
    """The first swept parameter whose values are all numbers (the x axis of the sweep)."""
    for p in res.swept_params():
        vals = [r.get(p) for r in res.summary if p in r]
        if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            if len(set(vals)) > 1:
                return p
    return None


def find_accuracy(res: Results) -> list[Finding]:
    """Per format: the most and least often correctly rounded implementation, and the
    largest ULP error."""
    aggs = aggregate(res.summary)
    out: list[Finding] = []
    for fmt in _format_order(a.format for a in aggs.values()):
        rows = [a for a in aggs.values() if a.format == fmt and a.stat]
        if not rows:
            continue
        rows.sort(key=lambda a: (-(a.exact / a.stat), a.implementation))
        best, worst = rows[0], rows[-1]
        text = (f"In {fmt}, {best.implementation} is correctly rounded on "
                f"{fmt_rate(best.exact, best.stat)} of the samples with a finite result")
        if worst is not best:
            text += (f"; {worst.implementation} on {fmt_rate(worst.exact, worst.stat)}")
        text += "."
        out.append(Finding(text, {"format": fmt, "best": best.implementation,
                                  "best_rate": best.exact / best.stat,
                                  "worst": worst.implementation,
                                  "worst_rate": worst.exact / worst.stat}, "accuracy"))
        big = max(rows, key=lambda a: (-1 if math.isnan(a.ulp_max) else a.ulp_max))
        if not math.isnan(big.ulp_max):
            small = min(rows, key=lambda a: (math.inf if math.isnan(a.ulp_max) else a.ulp_max))
            out.append(Finding(
                f"In {fmt}, the largest error is {fmt_num(big.ulp_max)} ULP ({big.implementation}); "
                f"the smallest worst case is {fmt_num(small.ulp_max)} ULP ({small.implementation}); "
                f"a correctly rounded result is at most 0.5 ULP off the exact loss.",
                {"format": fmt, "max_impl": big.implementation, "max_ulp": big.ulp_max,
                 "min_impl": small.implementation, "min_ulp": small.ulp_max}, "accuracy"))
    return out


def find_nonfinite(res: Results) -> list[Finding]:
    """Spurious overflow / NaN per implementation x format, with the swept value where it
    starts when the experiment sweeps a numeric parameter."""
    out: list[Finding] = []
    param = _numeric_param(res)
    aggs = aggregate(res.summary)
    for (impl, fmt), a in sorted(aggs.items(), key=lambda kv: (_format_order([kv[0][1]]), kv[0])):
        for cat, verb in (("overflow", "overflows to inf"), ("nan", "returns NaN"),
                          ("missed_inf", "misses an infinite truth")):
            k = a.cats.get(cat, 0)
            if not k:
                continue
            text = f"{impl} {verb} on {k} of {a.total} {fmt} samples"
            nums: dict[str, Any] = {"implementation": impl, "format": fmt, "category": cat,
                                    "count": k, "total": a.total}
            if param:
                pts = sorted((r for r in res.summary if r.get("implementation") == impl
                              and r.get("format") == fmt and param in r),
                             key=lambda r: r[param])
                bad = [r[param] for r in pts if int(r.get(f"n_{cat}") or 0) > 0]
                good = [r[param] for r in pts if int(r.get(f"n_{cat}") or 0) == 0]
                if bad:
                    first = bad[0]
                    below = [g for g in good if g < first]
                    text += f"; first at {param} = {fmt_num(first)}"
                    nums["first_" + param] = first
                    if below:
                        text += f" (none at {param} = {fmt_num(below[-1])})"
                        nums["last_clean_" + param] = below[-1]
                    allbad = [r for r in pts if r[param] >= first]
                    if allbad and all(int(r.get(f"n_{cat}") or 0) == _total(r) for r in allbad):
                        text += f", and on every sample from there on"
            out.append(Finding(text + ".", nums, "nonfinite"))
    return out


def find_agreement(res: Results) -> list[Finding]:
    """Pairs of implementations that are bit-identical, or most different, per format."""
    out: list[Finding] = []
    by: dict[tuple[str, str, str], list[dict]] = {}
    for r in res.agreement:
        a = r.get("a") or r.get("implementation_a") or r.get("impl_a")
        b = r.get("b") or r.get("implementation_b") or r.get("impl_b")
        if (a is None or b is None) and isinstance(r.get("pair"), str):
            parts = re.split(r"\s*(?:vs|\||,)\s*", r["pair"])
            if len(parts) == 2:
                a, b = parts
        if a is None or b is None:
            continue
        by.setdefault((str(r.get("format")), str(a), str(b)), []).append(r)
    for fmt in _format_order(k[0] for k in by):
        pairs = []
        for (f, a, b), rows in by.items():
            if f != fmt:
                continue
            n = sum(int(r.get("count") or r.get("n") or 0) for r in rows)
            if n:
                ident = sum(round(_f(r.get("identical_rate")) * int(r.get("count") or r.get("n") or 0))
                            for r in rows if not math.isnan(_f(r.get("identical_rate"))))
                rate = ident / n
            else:
                rates = [_f(r.get("identical_rate")) for r in rows]
                rates = [x for x in rates if not math.isnan(x)]
                rate, ident = (sum(rates) / len(rates) if rates else math.nan), None
            dmax = _nanmax(r.get("ulp_distance_max") for r in rows)
            pairs.append((rate, a, b, ident, n, dmax))
        if not pairs:
            continue
        same = [p for p in pairs if p[0] == 1.0]
        for p in same:
            out.append(Finding(
                f"In {fmt}, {p[1]} and {p[2]} give bit-identical losses on every sample"
                + (f" ({p[4]}/{p[4]})." if p[4] else "."),
                {"format": fmt, "a": p[1], "b": p[2], "identical_rate": 1.0}, "agreement"))
        rest = [p for p in pairs if p[0] != 1.0 and not math.isnan(p[0])]
        if rest:
            lo = min(rest, key=lambda p: p[0])
            rate_s = fmt_rate(lo[3], lo[4]) if lo[4] else fmt_pct(lo[0])
            out.append(Finding(
                f"In {fmt}, the least agreeing pair is {lo[1]} vs {lo[2]}: bit-identical on "
                f"{rate_s}, up to {fmt_num(lo[5])} ULP apart.",
                {"format": fmt, "a": lo[1], "b": lo[2], "identical_rate": lo[0],
                 "ulp_distance_max": lo[5]}, "agreement"))
    return out


def find_zero_returns(res: Results) -> list[Finding]:
    """Implementations that return exactly 0 where the correctly rounded truth is not 0 (the
    cancellation of lse - x_t on confident predictions), from samples.parquet."""
    t = res.samples()
    if t is None or not {"computed", "reference", "implementation", "format"} <= set(t.column_names):
        return []
    import numpy as np

    comp = np.asarray(t.column("computed").to_numpy(zero_copy_only=False), dtype=np.float64)
    ref = np.asarray(t.column("reference").to_numpy(zero_copy_only=False), dtype=np.float64)
    impl = np.asarray(t.column("implementation").to_pylist(), dtype=object)
    fmts = np.asarray(t.column("format").to_pylist(), dtype=object)
    mask = (comp == 0) & (ref != 0) & np.isfinite(ref)
    if not mask.any():
        return []
    param = _numeric_param(res)
    pvals = (np.asarray(t.column(param).to_numpy(zero_copy_only=False), dtype=np.float64)
             if param and param in t.column_names else None)
    out = []
    for fmt in _format_order(set(fmts[mask])):
        for name in sorted(set(impl[mask & (fmts == fmt)])):
            sel = (impl == name) & (fmts == fmt)
            m = mask & sel
            k, n = int(m.sum()), int(sel.sum())
            biggest = float(ref[m].max())
            text = (f"{name} returns exactly 0 on {k} of {n} {fmt} samples whose correctly "
                    f"rounded loss is not 0 (the largest such loss is {fmt_num(biggest)})")
            nums = {"implementation": name, "format": fmt, "count": k, "total": n,
                    "largest_lost_loss": biggest}
            if pvals is not None:
                first = float(np.min(pvals[m]))
                text += f"; it starts at {param} = {fmt_num(first)}"
                nums["first_" + param] = first
            keep = [o for o in sorted(set(impl[fmts == fmt]))
                    if o != name and not (mask & (impl == o) & (fmts == fmt)).any()
                    and ((impl == o) & (fmts == fmt) & (ref != 0)).any()]
            if keep:
                text += f"; {', '.join(keep)} never lose{'s' if len(keep) == 1 else ''} it"
                nums["keeps"] = keep
            out.append(Finding(text + ".", nums, "cancellation"))
    return out


def find_bounds(res: Results) -> list[Finding]:
    """From bounds.json (written by :mod:`precision_lab.conditioning`): how often the measured
    error of an algorithm stays within its Blanchard-Higham-Higham bound."""
    b = res.extras.get("bounds")
    if not isinstance(b, dict):
        return []
    out = []
    for item in b.get("findings", []) or []:
        if isinstance(item, dict) and item.get("text"):
            out.append(Finding(item["text"], item.get("numbers", {}), "bounds"))
    return out


def find_extras(res: Results) -> list[Finding]:
    """Findings that explanatory modules stored with their JSON (``{"findings": [...]}``)."""
    out = []
    for name in ("attribution", "capabilities", "conditioning"):
        obj = res.extras.get(name)
        if isinstance(obj, dict):
            for item in obj.get("findings", []) or []:
                if isinstance(item, dict) and item.get("text"):
                    out.append(Finding(item["text"], item.get("numbers", {}), name))
                elif isinstance(item, str):
                    out.append(Finding(item, {}, name))
    if isinstance(res.compare, dict):
        for item in res.compare.get("findings", []) or []:
            if isinstance(item, dict) and item.get("text"):
                out.append(Finding(item["text"], item.get("numbers", {}), "compare"))
            elif isinstance(item, str):
                out.append(Finding(item, {}, "compare"))
    return out


#: The finding generators, in report order.  Each takes the loaded :class:`Results`.
FINDERS: list[Callable[[Results], list[Finding]]] = [
    find_accuracy,
    find_nonfinite,
    find_zero_returns,
    find_agreement,
    find_bounds,
    find_extras,
]


def collect_findings(res: Results) -> list[Finding]:
    out: list[Finding] = []
    for finder in FINDERS:
        try:
            out.extend(finder(res))
        except Exception as exc:  # one broken finder must not hide the rest of the report
            out.append(Finding(f"(finder {finder.__name__} failed: {type(exc).__name__}: {exc})",
                               {}, "error"))
    return out


# --------------------------------------------------------------------------- document model

@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    text: str


Block = Heading | Para | Bullets | Table | Image | Code


def _plot_caption(p: Path) -> str:
    side = p.with_suffix(".txt")
    if side.exists():
        return side.read_text().strip()
    return p.stem.replace("_", " ")


def _summary_tables(res: Results) -> list[Block]:
    blocks: list[Block] = []
    aggs = aggregate(res.summary)
    if not aggs:
        return [Para("No summary.json in this folder.")]
    params = res.swept_params()
    heads = ["format", "implementation", "samples", "correctly rounded", "mean ULP err",
             "max p99 ULP err", "max ULP err", "mean bits", "overflow", "nan", "missed inf"]
    rows = []
    for fmt in _format_order(a.format for a in aggs.values()):
        for a in sorted((a for a in aggs.values() if a.format == fmt), key=lambda a: a.implementation):
            rows.append([fmt, a.implementation, a.total, fmt_rate(a.exact, a.stat),
                         fmt_num(a.ulp_mean), fmt_num(a.ulp_p99_max), fmt_num(a.ulp_max),
                         fmt_num(a.bits_mean), a.cats.get("overflow", 0), a.cats.get("nan", 0),
                         a.cats.get("missed_inf", 0)])
    cap = "All sweep points combined." if params else ""
    blocks.append(Table(heads, rows, cap))
    if params and len(res.summary) > 1:
        heads2 = ["point", *params, "format", "implementation", "samples", "correctly rounded",
                  "median ULP err", "max ULP err", "overflow", "nan"]
        rows2 = []
        srt = sorted(res.summary, key=lambda r: (_format_order([str(r.get("format"))]),
                                                 str(r.get("implementation")), r.get("point", 0)))
        for r in srt[:600]:
            rows2.append([r.get("point"), *[fmt_num(r.get(p)) for p in params], r.get("format"),
                          r.get("implementation"), _total(r),
                          fmt_rate(_exact_count(r), _stat_count(r)),
                          fmt_num(r.get("ulp_error_median")), fmt_num(r.get("ulp_error_max")),
                          int(r.get("n_overflow") or 0), int(r.get("n_nan") or 0)])
        cap2 = "Per sweep point." + (" First 600 rows; all rows in summary.csv."
                                     if len(srt) > 600 else "")
        blocks.append(Table(heads2, rows2, cap2))
    return blocks


def _agreement_table(res: Results) -> list[Block]:
    if not res.agreement:
        return []
    keys = [k for k in res.agreement[0].keys()]
    rows = [[fmt_num(r.get(k)) if isinstance(r.get(k), float) else r.get(k) for k in keys]
            for r in res.agreement[:600]]
    return [Heading("Agreement between implementations", 2),
            Para("identical_rate: share of samples where the two implementations return the same "
                 "bits; ulp_distance: representable steps between their results."),
            Table(keys, rows, "" if len(res.agreement) <= 600 else "First 600 rows; all in agreement.csv.")]


def _json_block(title: str, obj: Any) -> list[Block]:
    """Render an extra JSON: its 'tables' ({title: [rows]}) as tables, 'text' as paragraphs,
    anything else as pretty JSON (trimmed)."""
    blocks: list[Block] = [Heading(title, 2)]
    if isinstance(obj, dict):
        if obj.get("text"):
            for para in str(obj["text"]).split("\n\n"):
                blocks.append(Para(para))
        tables = obj.get("tables")
        if isinstance(tables, dict):
            for tname, trows in tables.items():
                rows = _rows(trows)
                if rows:
                    keys = list(dict.fromkeys(k for r in rows for k in r))
                    blocks.append(Table(keys, [[_cell(r.get(k)) for k in keys] for r in rows], tname))
        if obj.get("text") or isinstance(tables, dict):
            return blocks
    s = json.dumps(obj, indent=1, default=str)
    if len(s) > 6000:
        s = s[:6000] + "\n... (truncated; see the JSON file)"
    blocks.append(Code(s))
    return blocks


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return fmt_num(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return v


def _provenance(res: Results) -> list[Block]:
    m = res.manifest or {}
    rows: list[list[Any]] = []

    def add(k: str, v: Any) -> None:
        if isinstance(v, dict):
            for k2, v2 in v.items():
                add(f"{k}.{k2}", v2)
        elif isinstance(v, list):
            rows.append([k, ", ".join(str(x) for x in v)])
        else:
            rows.append([k, v])

    for k, v in m.items():
        if k in ("config", "resolved_config") or (k == "experiment" and isinstance(v, dict)):
            continue
        add(k, v)
    blocks: list[Block] = [Heading("Provenance", 2), Table(["field", "value"], rows)]
    if res.config:
        blocks.append(Para("Resolved configuration:"))
        blocks.append(Code(json.dumps(res.config, indent=2, default=str)))
    return blocks


MEASURES_TEXT = (
    "How to read the numbers. The truth is the exact cross-entropy computed in high precision "
    "and rounded once to the format (correctly rounded). 'Correctly rounded' counts samples whose "
    "computed value has the same bits as that truth. ULP error = |computed − exact| / ulp(exact), "
    "with ulp the format's spacing at the exact value: a correctly rounded result is within 0.5 "
    "ULP. Statistics use samples where both sides are finite (or the same infinity); overflow, "
    "NaN and missed-infinity samples are counted separately, never averaged in."
)


def build_document(res: Results) -> tuple[str, list[Block]]:
    """The report as a title and a list of blocks."""
    title = f"precision-lab report: {res.name}"
    blocks: list[Block] = []
    blocks.append(Heading("Question", 2))
    blocks.append(Para(res.question or "(the config states no question)"))
    if res.description:
        blocks.append(Para(res.description))
    status = res.manifest.get("status")
    if status and status != "complete":
        blocks.append(Para(f"Status: {status} — this run did not finish; the numbers cover only "
                           "what it computed."))
    findings = collect_findings(res)
    blocks.append(Heading("Findings", 2))
    if findings:
        blocks.append(Table(["#", "finding"], [[i + 1, f.text] for i, f in enumerate(findings)],
                            "Every sentence is generated from this folder's data."))
    else:
        blocks.append(Para("No findings could be generated (no summary data)."))
    blocks.append(Para(MEASURES_TEXT))
    if res.plots:
        blocks.append(Heading("Plots", 2))
        for p in res.plots:
            blocks.append(Image(p, _plot_caption(p)))
    blocks.append(Heading("Summary", 2))
    blocks.extend(_summary_tables(res))
    blocks.extend(_agreement_table(res))
    if res.compare is not None:
        blocks.extend(_json_block("Comparison", res.compare))
    titles = {"attribution": "Per-step error attribution", "bounds": "Error bounds (Blanchard, Higham & Higham)",
              "capabilities": "CPU kernel capability study", "conditioning": "Conditioning"}
    for name, obj in res.extras.items():
        if name == "explain":
            for stem, e in obj.items():
                blocks.extend(_json_block(f"Explained sample: {stem}", e))
        else:
            blocks.extend(_json_block(titles.get(name, name), obj))
    blocks.extend(_provenance(res))
    return title, blocks


# --------------------------------------------------------------------------- renderers

def _md_cell(v: Any) -> str:
    s = "—" if v is None else str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list[Block], root: Path) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            for r in b.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
            out.append("")
        elif isinstance(b, Image):
            rel = b.path.relative_to(root).as_posix() if b.path.is_relative_to(root) else b.path.as_posix()
            out += [f"![{b.caption}]({rel})", "", f"*{b.caption}*", ""]
        elif isinstance(b, Code):
            out += ["```", b.text, "```", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1b1b1b;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0} img{max-width:100%;border:1px solid #ddd}
figcaption{font-style:italic;color:#444} pre{background:#f6f6f6;padding:.6em;overflow:auto;
font-size:.85em} caption{caption-side:top;text-align:left;font-style:italic;color:#444}
"""


def render_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            t = ["<table>"]
            if b.caption:
                t.append(f"<caption>{e(b.caption)}</caption>")
            t.append("<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b.headers) + "</tr>")
            for r in b.rows:
                t.append("<tr>" + "".join(f"<td>{e('—' if c is None else str(c))}</td>" for c in r)
                         + "</tr>")
            t.append("</table>")
            out.append("".join(t))
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{e(b.caption)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{e(b.caption)}</figcaption></figure>")
        elif isinstance(b, Code):
            out.append(f"<pre>{e(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(results_dir: Path | str) -> tuple[Path, Path]:
    """Read ``results_dir`` and write ``report.md`` and ``report.html`` into it.

    Returns:
        (path of report.md, path of report.html).
    """
    root = Path(results_dir)
    res = load_results(root)
    title, blocks = build_document(res)
    md = root / "report.md"
    ht = root / "report.html"
    md.write_text(render_markdown(title, blocks, root))
    ht.write_text(render_html(title, blocks))
    return md, ht
