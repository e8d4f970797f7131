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

#: Extra JSON files a results folder may hold (written by :func:`enrich` or the capability
#: study), rendered in this order.
EXTRA_NAMES = ("explained", "overflow", "cancellation", "bounds", "attribution", "capabilities", "conditioning")

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
    for name in EXTRA_NAMES:
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
        most = max(a.stat for a in rows)
        # rank the implementations that give a finite result on at least half as many samples
        # as the best one; the others are reported by the non-finite findings
        rows = [a for a in rows if a.stat >= 0.5 * most]
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


def find_by_format(res: Results) -> list[Finding]:
    """One line per implementation: its correctly rounded share and mean ULP error in each
    format, side by side (only when the experiment has two formats or more)."""
    aggs = aggregate(res.summary)
    fmts = _format_order(a.format for a in aggs.values())
    if len(fmts) < 2:
        return []
    out = []
    for impl in dict.fromkeys(a.implementation for a in aggs.values()):
        parts = []
        for fm in fmts:
            a = aggs.get((impl, fm))
            if a is None or not a.stat:
                continue
            parts.append(f"{fm} {fmt_pct(a.exact / a.stat)} (mean {fmt_num(a.ulp_mean, 3)} ULP)")
        if len(parts) >= 2:
            out.append(Finding(f"{impl}, correctly rounded share by format: " + "; ".join(parts) + ".",
                               {"implementation": impl}, "by_format"))
    return out


def find_nonfinite(res: Results) -> list[Finding]:
    """Spurious overflow / NaN per format, implementations with the same counts grouped, with
    the swept value where it starts when the experiment sweeps a numeric parameter."""
    out: list[Finding] = []
    param = _numeric_param(res)
    aggs = aggregate(res.summary)
    groups: dict[tuple, list[str]] = {}
    for (impl, fmt), a in sorted(aggs.items()):
        for cat in ("overflow", "nan", "missed_inf"):
            k = a.cats.get(cat, 0)
            if not k:
                continue
            first = last_clean = None
            every = False
            if param:
                pts = sorted((r for r in res.summary if r.get("implementation") == impl
                              and r.get("format") == fmt and param in r), key=lambda r: r[param])
                bad = [r[param] for r in pts if int(r.get(f"n_{cat}") or 0) > 0]
                if bad:
                    first = bad[0]
                    below = [r[param] for r in pts if int(r.get(f"n_{cat}") or 0) == 0
                             and r[param] < first]
                    last_clean = below[-1] if below else None
            groups.setdefault((fmt, cat, k, a.total, first, last_clean), []).append(impl)
    verbs = {"overflow": ("overflows to inf on", "overflow to inf on"),
             "nan": ("returns NaN on", "return NaN on"),
             "missed_inf": ("misses an infinite truth on", "miss an infinite truth on")}
    for (fmt, cat, k, total, first, last_clean), names in sorted(
            groups.items(), key=lambda kv: (_format_order([kv[0][0]]), kv[0][1])):
        text = f"{_join(names)} {verbs[cat][len(names) > 1]} {k} of {total} {fmt} samples"
        nums: dict[str, Any] = {"implementations": names, "format": fmt, "category": cat,
                                "count": k, "total": total}
        if first is not None:
            text += f"; first at {param} = {fmt_num(first)}"
            nums["first_" + param] = first
            if last_clean is not None:
                text += f" (none at {param} = {fmt_num(last_clean)})"
                nums["last_clean_" + param] = last_clean
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
    identical: dict[tuple[str, str], list[tuple[str, int]]] = {}
    least: list[Finding] = []
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
        for p in pairs:
            if p[0] == 1.0:
                identical.setdefault((p[1], p[2]), []).append((fmt, p[4]))
        rest = [p for p in pairs if p[0] != 1.0 and not math.isnan(p[0])]
        if rest:
            lo = min(rest, key=lambda p: p[0])
            rate_s = fmt_rate(lo[3], lo[4]) if lo[4] else fmt_pct(lo[0])
            least.append(Finding(
                f"In {fmt}, the least agreeing pair is {lo[1]} vs {lo[2]}: bit-identical on "
                f"{rate_s}, up to {fmt_num(lo[5])} ULP apart.",
                {"format": fmt, "a": lo[1], "b": lo[2], "identical_rate": lo[0],
                 "ulp_distance_max": lo[5]}, "agreement"))
    for (a, b), where in identical.items():
        fm = [w[0] for w in where]
        n = sum(w[1] or 0 for w in where)
        if n < 10 * len(fm):  # identical on a handful of samples says little
            continue
        out.append(Finding(f"{a} and {b} give bit-identical losses on every sample in "
                           f"{_join(fm)}" + (f" ({n}/{n})." if n else "."),
                           {"a": a, "b": b, "formats": fm, "identical_rate": 1.0}, "agreement"))
    return out + least


def find_zero_returns(res: Results) -> list[Finding]:
    """Implementations that return exactly 0 where the correctly rounded truth is not 0 (the
    cancellation of lse - x_t on confident predictions), from samples.parquet; grouped by
    format and identical counts.  Left to the cancellation analysis when that ran."""
    if "cancellation" in res.extras:
        return []
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
    out = []
    for fmt in _format_order(set(fmts[mask])):
        groups: dict[tuple, list[str]] = {}
        for name in sorted(set(impl[mask & (fmts == fmt)])):
            sel = (impl == name) & (fmts == fmt)
            m = mask & sel
            groups.setdefault((int(m.sum()), int(sel.sum()), _r(float(ref[m].max()))), []).append(name)
        keep = [o for o in sorted(set(impl[fmts == fmt]))
                if not (mask & (impl == o) & (fmts == fmt)).any()]
        for (k, n, biggest), names in groups.items():
            text = (f"{_join(names)} return{'s' if len(names) == 1 else ''} exactly 0 on {k} of {n} "
                    f"{fmt} samples whose correctly rounded loss is not 0 (the largest such loss "
                    f"is {fmt_num(biggest)})")
            if keep:
                text += f"; {_join(keep)} never do"
            out.append(Finding(text + ".", {"implementations": names, "format": fmt, "count": k,
                                            "total": n, "largest_lost_loss": biggest},
                               "cancellation"))
    return out


def find_extras(res: Results) -> list[Finding]:
    """Findings that explanatory modules stored with their JSON (``{"findings": [...]}``)."""
    out = []
    for name in EXTRA_NAMES:
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
    find_by_format,
    find_extras,
    find_nonfinite,
    find_zero_returns,
    find_agreement,
]


def _merge_formats(findings: list[Finding]) -> list[Finding]:
    """Merge findings whose text differs only in the one format name it mentions."""
    fmt_re = re.compile(r"\b(float16|bfloat16|float32|float64)\b")
    groups: dict[str, list[tuple[int, str, Finding]]] = {}
    order: list[str] = []
    for i, f in enumerate(findings):
        names = set(fmt_re.findall(f.text))
        if len(names) == 1:
            (name,) = names
            key = fmt_re.sub("{F}", f.text)
        else:
            name, key = "", f"\0{i}"
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append((i, name, f))
    out = []
    for key in order:
        g = groups[key]
        if len(g) == 1:
            out.append(g[0][2])
            continue
        fmts = _format_order(n for _, n, _ in g)
        text = key.replace("{F}", _join(fmts), 1).replace("{F}", "each of them")
        out.append(Finding(text, {"formats": fmts, **g[0][2].numbers}, g[0][2].kind))
    return out


def collect_findings(res: Results) -> list[Finding]:
    out: list[Finding] = []
    for finder in FINDERS:
        try:
            out.extend(finder(res))
        except Exception as exc:  # one broken finder must not hide the rest of the report
            out.append(Finding(f"(finder {finder.__name__} failed: {type(exc).__name__}: {exc})",
                               {}, "error"))
    return _merge_formats(out)


# --------------------------------------------------------------------------- the answer (key findings)
#
# A report leads with the answer to its experiment's question: 3 to 8 findings chosen by which
# mechanisms the data shows (a comparison, a row-by-row explanation, results of 0 for a non-zero
# loss, inf/NaN results, a trend along a numeric sweep axis, several formats side by side), in
# the order of how much of the data each mechanism covers, plus one compact key table.  The
# exhaustive material (all findings, per-point tables, every plot) goes to the appendix.

MAX_KEY_FINDINGS = 8
#: Sweep axes that change the problem's size rather than its logits' values: along them the
#: report leads with how the error changes (a trend), along the others with the mechanism
#: (overflow, cancellation) that the data shows.
SIZE_AXES = {"classes", "batch_size", "samples", "vocab", "vocab_size", "V"}
MD_TABLE_ROWS = 8           # rows of a big table shown in report.md (all rows in report.html / CSV)
MD_FINDINGS = 12            # findings listed in report.md's appendix (all in report.html)
MD_EXTRA_ROWS = 5           # rows of an analysis table shown in report.md
HTML_TABLE_ROWS = 600


def _arrays(res: Results) -> dict[str, Any] | None:
    """The per-sample table as numpy arrays (cached on the Results)."""
    if not hasattr(res, "_arrays_cache"):
        res._arrays_cache = _sample_arrays(res)  # type: ignore[attr-defined]
    return res._arrays_cache  # type: ignore[attr-defined]


def _identical_groups(res: Results) -> list[list[str]]:
    """Implementations bit-identical to each other on every sample of every format (at least 10
    samples per format), as groups in registry order."""
    impls = list(dict.fromkeys(str(r.get("implementation")) for r in res.summary))
    fmts = set(str(r.get("format")) for r in res.summary)
    pairs: dict[tuple[str, str], list[tuple[str, float, int]]] = {}
    for r in res.agreement:
        a = r.get("a") or r.get("implementation_a") or r.get("impl_a")
        b = r.get("b") or r.get("implementation_b") or r.get("impl_b")
        if a is None or b is None:
            continue
        n = int(r.get("count") or r.get("n") or 0)
        pairs.setdefault((str(a), str(b)), []).append((str(r.get("format")), _f(r.get("identical_rate")), n))
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


def _group_name(names: list[str]) -> str:
    return " = ".join(names)


def _axis_values(res: Results, axis: str) -> list[float]:
    return sorted({float(r[axis]) for r in res.summary if isinstance(r.get(axis), (int, float))})


def _zero_mask(S: dict):
    import numpy as np

    comp, ref = S["computed"].astype(float), S["reference"].astype(float)
    return (comp == 0) & (ref != 0) & np.isfinite(ref)


def _mechanisms(res: Results) -> list[str]:
    """Which mechanisms this experiment's data shows, most telling first."""
    out: list[str] = []
    if isinstance(res.compare, dict) and res.compare.get("results"):
        out.append("compare")
    if res.extras.get("explain"):
        out.append("explain")
    if not res.summary:
        if "capabilities" in res.extras:
            out.append("capabilities")
        if any(isinstance(v, dict) and v.get("findings") for v in res.extras.values()):
            out.append("extras")
        return out
    axis = _numeric_param(res)
    aggs = aggregate(res.summary)
    total = sum(a.total for a in aggs.values()) or 1
    nf = sum(a.cats.get("overflow", 0) + a.cats.get("nan", 0) + a.cats.get("missed_inf", 0)
             for a in aggs.values())
    S = _arrays(res)
    zero = int(_zero_mask(S).sum()) if S is not None else 0
    scored = [(zero / total, "cancellation"), (nf / total, "overflow")]
    for share, name in sorted(scored, reverse=True):
        if share >= 0.01 or (share > 0 and name == "overflow" and not out):
            out.append(name)
    if axis and zero / total < 0.01 and nf / total < 0.1:
        if axis in SIZE_AXES:
            # a problem-size axis: how the error changes along it comes first; inf/NaN (if
            # any) are a local effect at its end
            out.insert(len([m for m in out if m in ("compare", "explain", "extras")]), "trend")
        else:
            out.append("trend")
    fmts = {a.format for a in aggs.values()}
    if not axis and len(fmts) >= 2 and "explain" not in out and "compare" not in out:
        out.append("formats")
    return out


# ---- the mechanisms' key findings; each returns (findings, key tables)

def _key_compare(res: Results) -> tuple[list[Finding], list[Block]]:
    c = res.compare
    out: list[Finding] = []
    tables: list[Block] = []
    m = res.manifest or {}
    for r in c.get("results", [])[:2]:
        a, b, fm, tol = r.get("a"), r.get("b"), r.get("format"), r.get("abs_tol")
        n, k = int(r.get("count") or 0), int(r.get("passed") or 0)
        where = ", ".join(x for x in (f"torch {m['torch']}" if m.get("torch") else "",
                                      f"CPU capability {m['torch_cpu_capability']}"
                                      if m.get("torch_cpu_capability") else "") if x)
        out.append(Finding(
            f"{a} and {b} pass the check |a - b| < {tol:g} on {fmt_rate(k, n)} of the {fm} "
            f"samples on this machine" + (f" ({where})" if where else "") + ".",
            {"passed": k, "count": n}, "compare"))
        ulp, med = r.get("ulp_at_median_reference"), r.get("median_reference")
        smallest = r.get("smallest_nonzero_difference")
        ident = r.get("identical")
        if ulp is not None:
            out.append(Finding(
                f"{tol:g} is a bit-identity test in {fm}: one ULP near the median loss "
                f"{fmt_num(med)} is {fmt_num(ulp, 3)}"
                + (f", the smallest non-zero difference between the two is {fmt_num(smallest, 3)}"
                   if smallest is not None else "")
                + (f", and the samples that pass are exactly the bit-identical ones ({ident} of {n})"
                   if ident == k else f"; bit-identical on {ident} of {n}") + ".",
                {"ulp": ulp, "identical": ident}, "compare"))
        counts = (r.get("ulp_distance") or {}).get("counts") or {}
        if counts:
            parts = [f"{v} at {d} ULP" for d, v in sorted(counts.items(), key=lambda kv: int(kv[0]))]
            out.append(Finding(f"ULP distance between {a} and {b} over the {n} samples: "
                               + ", ".join(parts) + ".", {"counts": counts}, "compare"))
            tables.append(Table(["ULP distance |a - b|", "samples", "share", f"passes {tol:g}"],
                                [[d, v, fmt_rate(int(v), n), "yes" if int(d) == 0 else "no"]
                                 for d, v in sorted(counts.items(), key=lambda kv: int(kv[0]))],
                                f"Distance between {a} and {b} in {fm} ULPs."))
        ea, eb = r.get("a_ulp_error") or {}, r.get("b_ulp_error") or {}
        if ea and eb:
            def one(name, e):
                cnt = int(e.get("count") or 0)
                return (f"{name} is correctly rounded on "
                        f"{fmt_rate(int(round(_f(e.get('exact_match_rate')) * cnt)), cnt)} "
                        f"(mean error {fmt_num(e.get('mean'), 3)} ULP, max {fmt_num(e.get('max'), 3)})")
            out.append(Finding(f"Against the correctly rounded truth, {one(a, ea)}; {one(b, eb)}. "
                               f"A correctly rounded result is within 0.5 ULP.",
                               {"a_mean": ea.get("mean"), "b_mean": eb.get("mean")}, "compare"))
    return out, tables


def _key_explain(res: Results) -> tuple[list[Finding], list[Block]]:
    ex = res.extras.get("explain") or {}
    out: list[Finding] = []
    obj = res.extras.get("explained")
    if isinstance(obj, dict):
        for item in obj.get("findings", [])[:1]:
            if isinstance(item, dict) and item.get("text"):
                out.append(Finding(item["text"], item.get("numbers", {}), "explained"))
    per_fmt: dict[str, tuple[str, str, list[dict]]] = {}
    for stem, e in ex.items():
        if not isinstance(e, dict):
            continue
        fm = stem.split("_row")[0]
        rows = _rows((e.get("tables") or {}).get("implementations"))
        mt = re.search(r"correctly rounded loss (\S+) \(exact (\S+)\)", str(e.get("text", "")))
        if rows and stem.endswith("_row0"):
            per_fmt[fm] = (mt.group(1) if mt else "?", mt.group(2) if mt else "?", rows)
    fmts = _format_order(per_fmt)
    # float32 first: the format the question is usually asked in
    for fm in sorted(fmts, key=lambda f: (f != "float32", fmts.index(f))):
        cr, exact, rows = per_fmt[fm]
        by_val: dict[str, list[dict]] = {}
        for r in rows:
            by_val.setdefault(str(r.get("value")), []).append(r)
        parts = []
        for val, rs in sorted(by_val.items(), key=lambda kv: _f(kv[1][0].get("ULP error"))):
            names = _join([str(r.get("implementation")) for r in rs])
            parts.append(f"{names} {'return' if len(rs) > 1 else 'returns'} {val} "
                         f"({fmt_num(rs[0].get('ULP error'))} ULP"
                         + (", correctly rounded" if str(rs[0].get("correctly rounded")) == "True" else "")
                         + ")")
        out.append(Finding(f"In {fm} the correctly rounded loss is {cr} (exact {exact}): "
                           + "; ".join(parts) + ".", {"format": fm, "reference": cr}, "explained"))
    tables: list[Block] = []
    if per_fmt:
        impls = list(dict.fromkeys(str(r.get("implementation")) for f in fmts for r in per_fmt[f][2]))
        body = []
        for im in impls:
            cells = []
            for fm in fmts:
                r = next((x for x in per_fmt[fm][2] if str(x.get("implementation")) == im), None)
                cells.append("—" if r is None else
                             f"{r.get('value')} ({fmt_num(r.get('ULP error'), 3)} ULP"
                             + (", CR" if str(r.get("correctly rounded")) == "True" else "") + ")")
            body.append([im, *cells])
        tables.append(Table(["implementation", *fmts], body,
                            "Each implementation's value (its ULP error; CR = correctly rounded). "
                            "Correctly rounded loss: " + "; ".join(f"{f} {per_fmt[f][0]}" for f in fmts)
                            + "."))
    return out, tables


def _key_cancellation(res: Results) -> tuple[list[Finding], list[Block]]:
    import numpy as np

    from .formats import get_format

    S = _arrays(res)
    if S is None:
        return [], []
    zero = _zero_mask(S)
    axis = next((a for a in res.swept_params() if "axis:" + a in S), None)
    axv = S["axis:" + axis].astype(float) if axis else None
    bad = np.isin(S["category"], ["overflow", "nan", "missed_inf"])
    ref = S["reference"].astype(float)
    nonzero_truth = (ref != 0) & np.isfinite(ref)
    fmts = _format_order(set(S["format"].tolist()))
    impls = list(dict.fromkeys(S["implementation"].tolist()))
    out: list[Finding] = []
    info: dict[tuple[str, str], dict] = {}
    for fm in fmts:
        groups: dict[tuple, list[str]] = {}
        for im in impls:
            sel = (S["format"] == fm) & (S["implementation"] == im)
            if not sel.any():
                continue
            z = zero & sel
            d = {"rows": int(sel.sum()), "zero": int(z.sum()), "first": None, "all_from": None,
                 "nonfinite": 0, "lost_max": float(S["reference"][z].astype(float).max()) if z.any() else None}
            if z.any() and axis:
                vals = sorted(set(axv[sel].tolist()))
                # share of the rows with a non-zero truth that come back 0 (points where the
                # correctly rounded loss is 0 on every row say nothing and are skipped)
                share = {}
                for v in vals:
                    live = sel & (axv == v) & nonzero_truth
                    if live.any():
                        share[v] = float(zero[live].mean())
                d["first"] = min(v for v in share if share[v] > 0)
                tail = [v for v in share if v >= d["first"]
                        and all(share[w] == 1.0 for w in share if w >= v)]
                d["all_from"] = tail[0] if tail else None
                d["nonfinite"] = int((bad & sel & (axv >= d["first"])).sum())
            info[(fm, im)] = d
            if z.any():
                groups.setdefault((d["first"], d["all_from"], d["zero"], d["nonfinite"]), []).append(im)
        if not groups:
            continue
        parts = []
        for (first, all_from, k, nfin), names in sorted(
                groups.items(), key=lambda kv: (kv[0][1] is None, kv[0][0] or 0, -kv[0][2])):
            n = info[(fm, names[0])]["rows"]
            if axis and first is not None:
                s = f"{_join(names)} from {axis} = {fmt_num(first)}"
                if all_from is not None:
                    s += f" (every row from {fmt_num(all_from)})"
                else:
                    s += f" ({k} of {n} rows" + (f"; {nfin} more are inf/NaN" if nfin else "") + ")"
            else:
                s = f"{_join(names)} on {k} of {n} rows"
            parts.append(s)
        text = (f"In {fm}, the loss comes back as exactly 0 although the true loss is not 0: "
                + "; ".join(parts))
        if axis:
            selF = S["format"] == fm
            vals = sorted(set(axv[selF].tolist()))
            dead = [v for v in vals if all(not nonzero_truth[selF & (axv == w)].any()
                                           for w in vals if w >= v)]
            if dead:
                text += (f". From {axis} = {fmt_num(dead[0])} on, the correctly rounded loss itself "
                         f"is 0 in {fm} (a 0 there is right)")
        out.append(Finding(text + ".", {"format": fm}, "cancellation"))
    # the implementation that keeps the loss: the fewest results of 0, far fewer than the others
    tot = {im: sum(info[(fm, im)]["zero"] for fm in fmts if (fm, im) in info) for im in impls}
    if tot:
        keeper = min(impls, key=lambda im: (tot[im], impls.index(im)))
        others = [tot[im] for im in impls if im != keeper]
        if others and tot[keeper] * 2 < min(others):
            never, where0, worst = [], [], []
            for fm in fmts:
                d = info.get((fm, keeper))
                if d is None:
                    continue
                normal = np.abs(ref) >= get_format(fm).smallest_normal
                sel = (S["format"] == fm) & (S["implementation"] == keeper) & ~zero & normal
                r = S["relative_error"][sel].astype(float) / get_format(fm).unit_roundoff
                r = r[np.isfinite(r)]
                if r.size:
                    worst.append(f"{fmt_num(float(r.max()), 3)} u in {fm}")
                if d["zero"] == 0:
                    never.append(fm)
                else:
                    where0.append(f"in {fm} it returns 0 on {d['zero']} of {d['rows']} rows"
                                  + (f" from {axis} = {fmt_num(d['first'])}" if d["first"] is not None else "")
                                  + f", where the correctly rounded loss is at most {fmt_num(d['lost_max'], 3)}"
                                  f" (the smallest positive {fm} is "
                                  f"{fmt_num(get_format(fm).smallest_subnormal, 3)})")
            text = f"{keeper} keeps the loss"
            if never:
                text += f": it never returns 0 in {_join(never)}"
            if where0:
                text += ("; " if never else ": ") + "; ".join(where0)
            if worst:
                text += f". Its largest relative error over the sweep, on rows whose correctly rounded " \
                        f"loss is a normal number: " + ", ".join(worst) + " (u = the format's unit roundoff)"
            out.append(Finding(text + ".", {"implementation": keeper, "zero_rows": tot[keeper]},
                               "cancellation"))
    tables: list[Block] = []
    if axis and info:
        body = []
        for names in _identical_groups(res):
            if not any((fm, im) in info for fm in fmts for im in names):
                continue
            cells = []
            for fm in fmts:
                d = info.get((fm, names[0]))
                if d is None:
                    cells.append("—")
                elif not d["zero"]:
                    cells.append("never")
                elif d["all_from"] is not None:
                    cells.append(f"{fmt_num(d['first'])} (all from {fmt_num(d['all_from'])})")
                else:
                    cells.append(f"{fmt_num(d['first'])} ({d['zero']}/{d['rows']} rows)")
            body.append([_group_name(names), *cells])
        tables.append(Table(["implementation", *fmts], body,
                            f"First {axis} at which the loss comes back as 0 for a non-zero truth "
                            f"(and from which {axis} every row does)."))
    return out, tables


def _overflow_cause(res: Results, fm: str, im: str) -> str:
    obj = res.extras.get("overflow")
    if not isinstance(obj, dict):
        return ""
    for row in _rows((obj.get("tables") or {}).get("overflow causes")):
        if row.get("format") != fm or im not in (row.get("implementations") or []):
            continue
        nbad, n = row.get("non_finite"), row.get("rows")
        lnM = _f(row.get("ln_max_finite"))
        if row.get("shifted_sum_overflow") and row.get("shifted_sum_overflow") == nbad:
            return (f"the shifted sum exp(x_j - max) itself passes the largest finite {fm} value "
                    f"on all {nbad} failing rows")
        if not row.get("shifted_sum_overflow") and nbad == row.get("rows_lse_above_ln_max"):
            fin = row.get("largest_lse_finite")
            return (f"exactly the {nbad} of {n} rows whose lse(x) exceeds ln(max finite) = "
                    f"{lnM:.3f} (smallest such lse {fmt_num(row.get('smallest_lse_non_finite'), 6)}"
                    + (f", largest lse of a finite row {fmt_num(fin, 6)}" if fin is not None else "")
                    + ")")
        return (f"{row.get('exp_overflow')} with a single exp overflowing, "
                f"{row.get('unshifted_sum_overflow')} with only the unshifted sum overflowing, "
                f"{row.get('shifted_sum_overflow')} with the shifted sum overflowing")
    return ""


def _key_overflow(res: Results) -> tuple[list[Finding], list[Block]]:
    axis = _numeric_param(res)
    aggs = aggregate(res.summary)
    fmts = _format_order(a.format for a in aggs.values())
    impls = list(dict.fromkeys(a.implementation for a in aggs.values()))
    cats = ("overflow", "nan", "missed_inf")
    out: list[Finding] = []
    info: dict[tuple[str, str], dict] = {}
    clean_fmts = []
    for fm in fmts:
        groups: dict[tuple, list[str]] = {}
        for im in impls:
            a = aggs.get((im, fm))
            if a is None:
                continue
            k = sum(a.cats.get(c, 0) for c in cats)
            d = {"bad": k, "total": a.total, "first": None, "clean": None}
            if k and axis:
                pts = sorted((r for r in res.summary if r.get("implementation") == im
                              and r.get("format") == fm and axis in r), key=lambda r: r[axis])
                badv = [r[axis] for r in pts if sum(int(r.get(f"n_{c}") or 0) for c in cats)]
                if badv:
                    d["first"] = badv[0]
                    below = [r[axis] for r in pts if r[axis] < badv[0]]
                    d["clean"] = below[-1] if below else None
            info[(fm, im)] = d
            if k:
                groups.setdefault((d["first"], d["clean"], k, a.total), []).append(im)
        if not groups:
            clean_fmts.append(fm)
            continue
        for (first, clean, k, total), names in sorted(groups.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0)):
            text = f"In {fm}, {_join(names)} {'return' if len(names) > 1 else 'returns'} inf/NaN"
            if first is not None:
                text += f" from {axis} = {fmt_num(first)}"
                if clean is not None:
                    text += f" (finite at {axis} = {fmt_num(clean)})"
            text += f", on {k} of {total} rows"
            cause = _overflow_cause(res, fm, names[0])
            if cause:
                text += f": {cause}"
            out.append(Finding(text + ".", {"format": fm, "implementations": names, "count": k,
                                            "total": total, "first": first}, "overflow"))
    never = [im for im in impls if all(info.get((fm, im), {}).get("bad", 0) == 0 for fm in fmts)]
    if never and len(never) < len(impls):
        n_each = sorted({info[(fm, im)]["total"] for fm in fmts for im in never if (fm, im) in info})
        out.append(Finding(f"{_join(never)} never return inf or NaN: a finite loss on every row "
                           f"({'/'.join(str(n) for n in n_each)} per format) in {_join(fmts)}.",
                           {"implementations": never}, "overflow"))
    if clean_fmts and len(clean_fmts) < len(fmts):
        out.append(Finding(f"In {_join(clean_fmts)} every implementation returns a finite loss on "
                           f"every row.", {"formats": clean_fmts}, "overflow"))
    tables: list[Block] = []
    if axis:
        body = []
        for names in _identical_groups(res):
            cells = []
            for fm in fmts:
                d = info.get((fm, names[0]))
                if d is None:
                    cells.append("—")
                elif not d["bad"]:
                    cells.append("never")
                else:
                    cells.append(f"{fmt_num(d['first'])}" + (f" (finite at {fmt_num(d['clean'])})"
                                                            if d["clean"] is not None else "")
                                 + f", {d['bad']}/{d['total']} rows")
            body.append([_group_name(names), *cells])
        tables.append(Table(["implementation", *fmts], body,
                            f"First {axis} with an inf/NaN loss (the last {axis} below it where all "
                            f"rows were finite), and how many rows in all."))
    return out, tables


def _key_trend(res: Results) -> tuple[list[Finding], list[Block]]:
    axis = _numeric_param(res)
    if not axis:
        return [], []
    fmts = _format_order(str(r.get("format")) for r in res.summary)
    parts, ratios = [], []
    for fm in fmts:
        by: dict[float, list[float]] = {}
        for r in res.summary:
            if r.get("format") != fm or axis not in r:
                continue
            s, m = _stat_count(r), _f(r.get("ulp_error_mean"))
            if s and not math.isnan(m):
                w = by.setdefault(float(r[axis]), [0.0, 0.0, 0.0, 0.0])
                w[0] += m * s
                w[1] += s
                w[2] += _exact_count(r)
                w[3] = max(w[3], _f(r.get("ulp_error_max")))
        if len(by) < 2:
            continue
        xs = sorted(by)
        mean = {x: by[x][0] / by[x][1] for x in xs}
        lo, hi = xs[0], xs[-1]
        ratios.append(mean[hi] / mean[lo] if mean[lo] else math.inf)
        parts.append(f"{fm} {fmt_num(mean[lo], 3)} at {fmt_num(lo)} → {fmt_num(mean[hi], 3)} at "
                     f"{fmt_num(hi)} (largest single error {fmt_num(max(by[x][3] for x in xs), 3)})")
    if not parts:
        return [], []
    worst = max(ratios)
    verdict = (f"pooled, it does not grow with {axis} (largest ratio last/first {worst:.2f})"
               if worst <= 1.5 else f"pooled, it grows with {axis}, by up to a factor of {worst:.3g}")
    # the single implementation x format whose mean error grows most from first to last point
    one = []
    gname = {im: _group_name(g) for g in _identical_groups(res) for im in g}
    for (im, fm), a in aggregate(res.summary).items():
        if gname.get(im, im).split(" = ")[0] != im:
            continue  # one line per group of bit-identical implementations
        pts = sorted((r for r in res.summary if r.get("implementation") == im and r.get("format") == fm
                      and axis in r and _stat_count(r) and _f(r.get("ulp_error_mean")) > 0),
                     key=lambda r: r[axis])
        if len(pts) >= 2:
            m0, m1 = _f(pts[0].get("ulp_error_mean")), _f(pts[-1].get("ulp_error_mean"))
            one.append((m1 / m0, im, fm, pts[0][axis], m0, pts[-1][axis], m1))
    extra = ""
    if one and max(one)[0] > 1.5:
        r, im, fm, x0, m0, x1, m1 = max(one)
        extra = (f"; the largest growth of one implementation is {gname.get(im, im)} in {fm}, "
                 f"{fmt_num(m0, 3)} → {fmt_num(m1, 3)} ULP from {axis} = {fmt_num(x0)} to "
                 f"{fmt_num(x1)} (x{r:.2g})")
    return [Finding(f"Mean ULP error against {axis} (all implementations pooled, finite results): "
                    + "; ".join(parts) + f": {verdict}{extra}.", {"axis": axis, "max_ratio": worst},
                    "trend")], []


def _key_formats(res: Results) -> tuple[list[Finding], list[Block]]:
    aggs = aggregate(res.summary)
    fmts = _format_order(a.format for a in aggs.values())
    out: list[Finding] = []
    groups = _identical_groups(res)
    spreads = []
    for names in groups:
        shares = {fm: aggs[(names[0], fm)].exact / aggs[(names[0], fm)].stat
                  for fm in fmts if (names[0], fm) in aggs and aggs[(names[0], fm)].stat}
        if len(shares) >= 2:
            spreads.append((max(shares.values()) - min(shares.values()), names, shares))
    if spreads:
        spreads.sort(key=lambda s: -s[0])
        big, small = spreads[0], spreads[-1]
        out.append(Finding(
            f"Largest difference between formats: {_join(big[1])}, correctly rounded on "
            + ", ".join(f"{fmt_pct(v)} in {fm}" for fm, v in big[2].items())
            + f" ({100 * big[0]:.1f} percentage points apart); smallest: {_join(small[1])}, "
            + ", ".join(f"{fmt_pct(v)} in {fm}" for fm, v in small[2].items()) + ".",
            {"largest": big[1], "spread": big[0]}, "formats"))
    means = [(a.ulp_mean, a.implementation, a.format) for a in aggs.values() if a.stat]
    if means:
        lo, hi = min(means), max(means)
        out.append(Finding(
            f"Measured in each format's own ULPs, every implementation's mean error lies between "
            f"{fmt_num(lo[0], 3)} ULP ({lo[1]}, {lo[2]}) and {fmt_num(hi[0], 3)} ULP ({hi[1]}, {hi[2]}) "
            f"in every format.", {"min": lo[0], "max": hi[0]}, "formats"))
    b = res.extras.get("bounds")
    if isinstance(b, dict):
        acc: dict[tuple[str, str], list] = {}
        for row in _rows((b.get("tables") or {}).get("bounds vs measured")):
            k = (str(row.get("implementation")), str(row.get("bound")))
            v = acc.setdefault(k, [0, 0, 0.0, set()])
            v[0] += int(row.get("within") or 0)
            v[1] += int(row.get("rows") or 0)
            v[2] = max(v[2], _f(row.get("max_measured_over_bound")) if row.get("max_measured_over_bound") is not None else 0.0)
            v[3].add(row.get("format"))
        if acc:
            parts = [f"{im} within the {bd} bound on {fmt_rate(w, n)} of rows (largest measured/bound "
                     f"{fmt_num(mx, 3)})" for (im, bd), (w, n, mx, _) in acc.items()]
            allok = all(w == n for w, n, _, _ in acc.values())
            out.append(Finding(("The error bounds hold on every row: " if allok else "Error bounds: ")
                               + "; ".join(parts) + ", over " + _join(_format_order(
                                   set().union(*(v[3] for v in acc.values())))) + ".",
                               {"all_within": allok}, "bounds"))
    body = []
    for names in groups:
        cells = []
        for fm in fmts:
            a = aggs.get((names[0], fm))
            cells.append("—" if a is None or not a.stat else
                         f"{fmt_pct(a.exact / a.stat)} ({fmt_num(a.ulp_mean, 2)})")
        body.append([_group_name(names), *cells])
    table = Table(["implementation", *fmts], body,
                  "Correctly rounded share per format (mean ULP error in that format's ULPs).")
    return out, [table]


def _key_capabilities(res: Results) -> tuple[list[Finding], list[Block]]:
    """The CPU-kernel study (capabilities.json): pass share per kernel set, what passing
    measures, each one's accuracy, and how much the kernel sets agree with each other."""
    obj = res.extras.get("capabilities")
    tables = (obj or {}).get("tables") or {} if isinstance(obj, dict) else {}
    per = _rows(tables.get("per capability"))
    if not per or not {"requested", "passed_1e-15", "batches"} <= set(per[0]):
        return [], []
    out: list[Finding] = []
    n = lambda r: int(r.get("batches") or 0)  # noqa: E731
    out.append(Finding(
        "Share of batches passing the seed's |a - b| < 1e-15 check, per kernel set "
        "(ATEN_CPU_CAPABILITY): " + "; ".join(
            f"{r['requested']} {fmt_rate(int(r['passed_1e-15']), n(r))}" for r in per) + ".",
        {"pass": {r["requested"]: r["passed_1e-15"] for r in per}}, "capabilities"))
    if all(r.get("pass_equals_bit_identity") in (True, "True") for r in per):
        r0 = per[0]
        out.append(Finding(
            f"Passing means bit-identical: under every kernel set the passing batches are exactly "
            f"the bit-identical ones; one float32 ULP at the median loss {fmt_num(r0.get('median_loss'))} "
            f"is {fmt_num(r0.get('ulp_at_median_loss'), 3)}, and the smallest non-zero difference "
            f"is {fmt_num(r0.get('smallest_nonzero_difference'), 3)}.", {}, "capabilities"))
    if "ce_correctly_rounded" in per[0]:
        out.append(Finding(
            "Against the correctly rounded mean loss, nn.CrossEntropyLoss is correctly rounded on "
            + "; ".join(f"{fmt_rate(int(r['ce_correctly_rounded']), n(r))} ({r['requested']})" for r in per)
            + "; the seed's loop on "
            + "; ".join(f"{fmt_rate(int(r['manual_correctly_rounded']), n(r))} ({r['requested']})"
                        for r in per)
            + f". Largest errors: nn.CrossEntropyLoss "
              f"{fmt_num(max(_f(r.get('ce_ulp_error_max')) for r in per), 3)} ULP, the seed's loop "
              f"{fmt_num(max(_f(r.get('manual_ulp_error_max')) for r in per), 3)} ULP.",
            {}, "capabilities"))
    between = _rows(tables.get("between capabilities"))
    if between and {"ce_identical", "manual_identical", "batches"} <= set(between[0]):
        out.append(Finding(
            "Between kernel sets, nn.CrossEntropyLoss returns the same float32 on "
            + "; ".join(f"{fmt_rate(int(r['ce_identical']), int(r['batches']))} ({r['a']} vs {r['b']})"
                        for r in between)
            + "; the seed's loop on " + "; ".join(
                f"{fmt_rate(int(r['manual_identical']), int(r['batches']))}" for r in between) + ".",
            {}, "capabilities"))
    return out, []


def _key_accuracy(res: Results) -> list[Finding]:
    """Two summary lines: the most often correctly rounded implementation per format, and the
    largest single error per format."""
    aggs = aggregate(res.summary)
    fmts = _format_order(a.format for a in aggs.values())
    best, worst = [], []
    for fm in fmts:
        rows = [a for a in aggs.values() if a.format == fm and a.stat]
        if not rows:
            continue
        most = max(a.stat for a in rows)
        rows = [a for a in rows if a.stat >= 0.5 * most]
        b = max(rows, key=lambda a: (a.exact / a.stat, -len(a.implementation)))
        tied = [a.implementation for a in rows if a.exact / a.stat == b.exact / b.stat]
        best.append(f"{fm} {_join(tied)} {fmt_rate(b.exact, b.stat)}")
        w = max(rows, key=lambda a: -1 if math.isnan(a.ulp_max) else a.ulp_max)
        if not math.isnan(w.ulp_max):
            worst.append(f"{fm} {fmt_num(w.ulp_max)} ULP ({w.implementation})")
    out = []
    if best:
        out.append(Finding("Most often correctly rounded (finite results): " + "; ".join(best) + ".",
                           {}, "accuracy"))
    if worst:
        out.append(Finding("Largest single error: " + "; ".join(worst)
                           + "; a correctly rounded result is within 0.5 ULP.", {}, "accuracy"))
    return out


_KEY = {"capabilities": _key_capabilities, "compare": _key_compare, "explain": _key_explain, "cancellation": _key_cancellation,
        "overflow": _key_overflow, "trend": _key_trend, "formats": _key_formats}


def key_findings(res: Results) -> tuple[list[Finding], list[Block], list[str]]:
    """The answer: 3 to 8 findings, the key tables, and the mechanisms they come from."""
    mechs = _mechanisms(res)
    found: list[Finding] = []
    tables: list[Block] = []
    for m in mechs:
        if m == "extras":
            if not found:  # only when no mechanism above gave the answer
                found.extend(find_extras(res))
            continue
        try:
            f, t = _KEY[m](res)
        except Exception as exc:  # noqa: BLE001 - a broken selector must not hide the report
            f, t = [Finding(f"(key findings for {m} failed: {type(exc).__name__}: {exc})", {}, "error")], []
        found.extend(f)
        if not tables:
            tables.extend(t[:1])
    if res.summary and len(found) < MAX_KEY_FINDINGS - 1:
        acc = _key_accuracy(res)
        if "explain" in mechs:
            acc = []
        elif "compare" in mechs:
            acc = acc[:1]
        found.extend(acc)
    if len(found) < 3:
        have = {f.text for f in found}
        for f in collect_findings(res):
            if len(found) >= 3:
                break
            if f.text not in have:
                found.append(f)
    return found[:MAX_KEY_FINDINGS], tables, mechs


def _key_plots(res: Results, mechs: list[str]) -> list[Path]:
    """The 1-4 plots that show the leading mechanisms."""
    plots = sorted(res.plots, key=_plot_order)
    axis = _numeric_param(res)
    fmts = _format_order(str(r.get("format")) for r in res.summary)
    want: list[Path] = []

    def add(pred: Callable[[str], bool], limit: int = 4) -> None:
        for p in plots:
            if len(want) >= 4 or limit <= 0:
                return
            if pred(p.stem) and p not in want:
                want.append(p)
                limit -= 1

    for m in mechs:
        if m == "compare":
            fm = (res.compare.get("results") or [{}])[0].get("format", "")
            add(lambda s: s == "compare")
            if not any(p.stem == "compare" for p in want):
                add(lambda s: s == f"ulp_hist_{fm}")
        elif m == "explain":
            add(lambda s: s == "by_format")
        elif m == "cancellation":
            add(lambda s: s.startswith("relative_error_vs_"), 1)
        elif m == "overflow":
            add(lambda s: s.startswith("nonfinite_vs_overflow_margin"))
        elif m == "trend" and axis:
            add(lambda s: s == f"error_vs_{axis}")
            if not any(p.stem == f"error_vs_{axis}" for p in want):
                add(lambda s: s == f"ulp_vs_{axis}_float32", 1)
        elif m == "formats":
            add(lambda s: s == "by_format")
            add(lambda s: s.startswith("bound_vs_measured"))
        elif m in ("extras", "capabilities"):
            add(lambda s: s.startswith("capabilities"))
    if not want:
        add(lambda s: any(s.startswith(k) for k in PLOT_CAPTIONS), 2)
    if not want:
        add(lambda s: s == "mean_ulp_by_format" or (axis is not None and s.startswith(f"ulp_vs_{axis}_")), 1)
    if not want:
        add(lambda s: True, 1)
    return want


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
    md_rows: int | None = None   # report.md shows at most this many rows (None: all) ...
    md_note: str = ""            # ... and this note where it leaves rows out


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Code:
    text: str
    md_note: str | None = None   # report.md shows this note instead of the text when set


@dataclass
class Details:
    """An appendix section: collapsed (<details>) in report.html, a ### section in report.md."""

    title: str
    blocks: list


Block = Heading | Para | Bullets | Table | Image | Code | Details


#: Captions of the analyses' plots (by file-name prefix); they are shown first, in this order.
PLOT_CAPTIONS = {
    "nonfinite_vs_overflow_margin": "Share of rows whose loss is inf/NaN, against ln(the sum of "
        "exponentials the implementation forms) - ln(largest finite value of the format): the "
        "step at 0 is the overflow. Implementations with identical results share a line.",
    "relative_error_vs_": "Median relative error of the loss against the swept parameter, in "
        "units of the format's unit roundoff u = 2^-p; the dotted line is a relative error of 1 (a "
        "result of 0), the dashed one 0.5 u. Implementations with identical curves share a line.",
    "bound_vs_measured": "Measured relative error of the loss against the error bound at the same "
        "row (units of u), one point per row; points below the red line respect the bound.",
    "compare": "Left: how far apart the two compared implementations are, in ULPs of the "
        "format; only the bit-identical (0 ULP) share passes the tolerance. Right: each one's "
        "ULP error against the correctly rounded truth (dotted: 0.5 ULP).",
    "by_format": "Per implementation and format: the share of samples returned correctly rounded "
        "and the (mean) ULP error, in each format's own ULPs (dotted: 0.5 ULP; with one sample per "
        "format only the error is drawn). Implementations that return the same bits on every "
        "sample share a bar.",
    "error_vs_": "Mean ULP error of each implementation against the swept parameter, one panel "
        "per format, each in its own format's ULPs (finite results only; the dotted line is 0.5 ULP, "
        "the most a correctly rounded result is off). Implementations that return the same bits "
        "on every sample share a line.",
    "capabilities": "Left: how far apart nn.CrossEntropyLoss and the seed's loop are, per CPU "
        "kernel set; only the 0-ULP share passes |a - b| < 1e-15. Right: each one's error "
        "against the correctly rounded mean loss.",
}


def _plot_caption(p: Path) -> str:
    side = p.with_suffix(".txt")
    if side.exists():
        return side.read_text().strip()
    for prefix, cap in PLOT_CAPTIONS.items():
        if p.stem.startswith(prefix):
            return cap
    m = re.fullmatch(r"ulp_hist_(\w+)", p.stem)
    if m:
        return (f"{m.group(1)}: samples per ULP error and implementation (log x, exact results "
                f"in the '0' bin; dotted: 0.5 ULP, correct rounding).")
    m = re.fullmatch(r"ulp_vs_(\w+)_(float16|bfloat16|float32|float64)", p.stem)
    if m:
        return (f"{m.group(2)}: mean (solid) and largest (dashed) ULP error of each implementation "
                f"against {m.group(1)}; finite results only.")
    if p.stem == "mean_ulp_by_format":
        return ("Mean ULP error of each implementation in each format, each measured in its own "
                "format's ULPs (finite results only).")
    return p.stem.replace("_", " ")


def _plot_order(p: Path) -> tuple:
    for i, prefix in enumerate(PLOT_CAPTIONS):
        if p.stem.startswith(prefix):
            return (i, p.name)
    return (len(PLOT_CAPTIONS), p.name)


def _json_body(obj: Any) -> list[Block]:
    """Render an extra JSON: its 'text' as paragraphs, its 'findings' as a list, its 'tables'
    ({title: [rows]}) as tables (report.md shows the first rows of each), anything else as
    pretty JSON (trimmed)."""
    blocks: list[Block] = []
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
                    blocks.append(Table(keys, [[_cell(r.get(k)) for k in keys] for r in rows], tname,
                                        md_rows=MD_EXTRA_ROWS,
                                        md_note=f"First {MD_EXTRA_ROWS} of {len(rows)} rows; all in "
                                                f"report.html and the folder's JSON."))
        if obj.get("text") or isinstance(tables, dict):
            return blocks
    s = json.dumps(obj, indent=1, default=str)
    if len(s) > 6000:
        s = s[:6000] + "\n... (truncated; see the JSON file)"
    blocks.append(Code(s))
    return blocks


def _json_block(title: str, obj: Any) -> list[Block]:
    """:func:`_json_body` under a heading."""
    return [Heading(title, 2), *_json_body(obj)]


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
        if isinstance(v, dict):  # one row: "key value; key value"
            rows.append([k, "; ".join(f"{k2} {', '.join(map(str, v2)) if isinstance(v2, list) else v2}"
                                      for k2, v2 in v.items())])
        elif isinstance(v, list):
            rows.append([k, ", ".join(str(x) for x in v)])
        else:
            rows.append([k, v])

    bulky = ("timings", "chunk_info", "chunks", "points", "files", "plots")
    for k, v in m.items():
        if k in ("config", "resolved_config", "question", "description") or (
                k == "experiment" and isinstance(v, dict)):
            continue
        if k in bulky and isinstance(v, (list, dict)):
            rows.append([k, f"{len(v)} entries (see manifest.json)"])
            continue
        add(k, v)
    blocks: list[Block] = [Table(["field", "value"], rows, "From manifest.json.")]
    if res.config:
        blocks.append(Para("Resolved configuration:"))
        blocks.append(Code(json.dumps(res.config, indent=2, default=str),
                           md_note="(in manifest.json under \"config\", and in report.html)"))
    return blocks


MEASURES_TEXT = (
    "How to read the numbers. The truth is the exact cross-entropy computed in high precision "
    "and rounded once to the format (correctly rounded). 'Correctly rounded' counts samples whose "
    "computed value has the same bits as that truth. ULP error = |computed − exact| / ulp(exact), "
    "with ulp the format's spacing at the exact value: a correctly rounded result is within 0.5 "
    "ULP. Statistics use samples where both sides are finite (or the same infinity); overflow, "
    "NaN and missed-infinity samples are counted separately, never averaged in."
)


def _summary_compact(res: Results) -> list[Block]:
    """One row per implementation x format over the whole sweep; implementations that are
    bit-identical on every sample share a row."""
    aggs = aggregate(res.summary)
    if not aggs:
        return [Para("No summary.json in this folder.")]
    import numpy as np

    S = _arrays(res)
    med: dict[tuple[str, str], float] = {}
    zero_n: dict[tuple[str, str], int] = {}
    if S is not None:
        stat = np.isin(S["category"], ["finite", "inf_match"])
        zero = _zero_mask(S)
        for (im, fm) in aggs:
            sel = (S["implementation"] == im) & (S["format"] == fm)
            e = S["ulp_error"][sel & stat].astype(float)
            e = e[np.isfinite(e)]
            if e.size:
                med[(im, fm)] = float(np.median(e))
            zero_n[(im, fm)] = int((zero & sel).sum())
    show_zero = any(zero_n.values())
    heads = ["format", "implementation", "samples", "correctly rounded",
             "median ULP err" if med else "mean ULP err", "max ULP err", "inf/NaN"]
    if show_zero:
        heads.append("0 for a non-zero loss")
    rows = []
    groups = _identical_groups(res)
    for fm in _format_order(a.format for a in aggs.values()):
        for names in groups:
            a = aggs.get((names[0], fm))
            if a is None:
                continue
            nf = a.cats.get("overflow", 0) + a.cats.get("nan", 0) + a.cats.get("missed_inf", 0)
            row = [fm, _group_name(names), a.total, fmt_rate(a.exact, a.stat),
                   fmt_num(med.get((names[0], fm), a.ulp_mean if not med else None), 3),
                   fmt_num(a.ulp_max, 4), nf]
            if show_zero:
                row.append(zero_n.get((names[0], fm), 0))
            rows.append(row)
    params = res.swept_params()
    cap = ("All sweep points combined; " if params and len(res.summary) > len(aggs) else "") + \
          "'a = b' rows are implementations that return the same bits on every sample; statistics " \
          "over finite results (inf/NaN counted apart)."
    return [Table(heads, rows, cap)]


def _per_point_table(res: Results) -> Table | None:
    params = res.swept_params()
    if not params or len(res.summary) <= 1:
        return None
    heads = ["point", *params, "format", "implementation", "samples", "correctly rounded",
             "median ULP err", "max ULP err", "overflow", "nan"]
    srt = sorted(res.summary, key=lambda r: (_format_order([str(r.get("format"))]),
                                             str(r.get("implementation")), r.get("point", 0)))
    rows = [[r.get("point"), *[fmt_num(r.get(p)) for p in params], r.get("format"),
             r.get("implementation"), _total(r), fmt_rate(_exact_count(r), _stat_count(r)),
             fmt_num(r.get("ulp_error_median")), fmt_num(r.get("ulp_error_max")),
             int(r.get("n_overflow") or 0), int(r.get("n_nan") or 0)] for r in srt[:HTML_TABLE_ROWS]]
    return Table(heads, rows, f"One row per sweep point, implementation and format ({len(srt)} rows"
                 + (f"; the first {HTML_TABLE_ROWS} here" if len(srt) > HTML_TABLE_ROWS else "")
                 + "; all in summary.csv).", md_rows=MD_TABLE_ROWS,
                 md_note=f"First {MD_TABLE_ROWS} of {len(srt)} rows; all rows in "
                         f"[summary.csv](summary.csv) and in report.html.")


def _agreement_blocks(res: Results) -> list[Block]:
    if not res.agreement:
        return []
    keys = list(res.agreement[0].keys())
    full = Table(keys, [[fmt_num(r.get(k)) if isinstance(r.get(k), float) else r.get(k) for k in keys]
                        for r in res.agreement[:HTML_TABLE_ROWS]],
                 f"Every row of agreement.json ({len(res.agreement)} rows"
                 + (f"; the first {HTML_TABLE_ROWS} here" if len(res.agreement) > HTML_TABLE_ROWS else "")
                 + "; all in agreement.csv).", md_rows=0,
                 md_note=f"The per-point table ({len(res.agreement)} rows) is in "
                         f"[agreement.csv](agreement.csv) and in report.html.")
    # aggregated: one row per format and pair, least identical first
    acc: dict[tuple[str, str, str], list] = {}
    for r in res.agreement:
        a = r.get("a") or r.get("implementation_a") or r.get("impl_a")
        b = r.get("b") or r.get("implementation_b") or r.get("impl_b")
        if a is None or b is None:
            continue
        n = int(r.get("count") or r.get("n") or 0)
        v = acc.setdefault((str(r.get("format")), str(a), str(b)), [0, 0, math.nan])
        v[0] += int(round(_f(r.get("identical_rate")) * n)) if not math.isnan(_f(r.get("identical_rate"))) else 0
        v[1] += n
        v[2] = _nanmax([v[2], r.get("ulp_distance_max")])
    rows = sorted(acc.items(), key=lambda kv: (kv[1][0] / kv[1][1] if kv[1][1] else 1.0,
                                               _format_order([kv[0][0]])))
    agg = Table(["format", "a", "b", "bit-identical", "max ULP apart"],
                [[fm, a, b, fmt_rate(k, n), fmt_num(d)] for (fm, a, b), (k, n, d) in rows],
                "All sweep points combined, least agreeing pairs first.", md_rows=MD_TABLE_ROWS,
                md_note=f"The {MD_TABLE_ROWS} least agreeing of {len(rows)} format x pair rows; "
                        f"all in report.html.")
    return [Para("identical_rate: share of samples where the two implementations return the same "
                 "bits; ulp_distance: representable steps between their results."), agg, full]


def build_document(res: Results) -> tuple[str, list[Block]]:
    """The report as a title and a list of blocks: the question, the answer (key findings, key
    table, key plots), a compact summary, then the appendix (collapsed in report.html)."""
    title = f"precision-lab report: {res.name}"
    blocks: list[Block] = []
    blocks.append(Heading("Question", 2))
    blocks.append(Para(res.question or "(the config states no question)"))
    status = res.manifest.get("status")
    if status and status != "complete":
        blocks.append(Para(f"Status: {status} — this run did not finish; the numbers cover only "
                           "what it computed."))
    key, key_tables, mechs = key_findings(res)
    blocks.append(Heading("Answer: key findings", 2))
    if key:
        blocks.append(Bullets([f.text for f in key]))
    else:
        blocks.append(Para("No findings could be generated (no summary data)."))
    blocks.extend(key_tables)
    kplots = _key_plots(res, mechs)
    if kplots:
        blocks.append(Heading("Key plots", 2))
        for p in kplots:
            blocks.append(Image(p, _plot_caption(p)))
    if res.summary:
        blocks.append(Heading("Summary", 2))
        blocks.extend(_summary_compact(res))
    blocks.append(Para(MEASURES_TEXT))
    if res.description:
        blocks.append(Heading("Setup", 2))
        blocks.append(Para(res.description))

    # ---- appendix
    blocks.append(Heading("Appendix", 2))
    letter = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    findings = collect_findings(res)
    if findings:
        blocks.append(Details(f"{next(letter)}. All findings ({len(findings)})", [
            Table(["#", "finding"], [[i + 1, f.text] for i, f in enumerate(findings)],
                  "Every sentence is generated from this folder's data.", md_rows=MD_FINDINGS,
                  md_note=f"First {MD_FINDINGS} of {len(findings)} findings; all of them in "
                          f"report.html.")]))
    tail: list[Block] = []
    pp = _per_point_table(res)
    if pp is not None:
        tail.append(pp)
    if tail:
        blocks.append(Details(f"{next(letter)}. Summary per sweep point", tail))
    ag = _agreement_blocks(res)
    if ag:
        blocks.append(Details(f"{next(letter)}. Agreement between implementations", ag))
    titles = {"attribution": "Per-step error attribution and the fused torch kernel",
              "bounds": "Error bounds (Blanchard, Higham & Higham) against measured errors",
              "capabilities": "CPU kernel capability study (ATEN_CPU_CAPABILITY)",
              "conditioning": "Conditioning", "overflow": "Where each implementation overflows",
              "cancellation": "Cancellation: results of 0 for a non-zero loss",
              "explained": "Rows explained"}
    if res.compare is not None:
        blocks.append(Details(f"{next(letter)}. Comparison", _json_body(res.compare)))
    for name, obj in res.extras.items():
        if name == "explain":
            for stem, e in obj.items():
                blocks.append(Details(f"{next(letter)}. Explained sample: {stem}", _json_body(e)))
        else:
            blocks.append(Details(f"{next(letter)}. {titles.get(name, name)}", _json_body(obj)))
    rest = [p for p in sorted(res.plots, key=_plot_order) if p not in kplots]
    if rest:
        blocks.append(Details(f"{next(letter)}. Other plots ({len(rest)})",
                              [Image(p, _plot_caption(p)) for p in rest]))
    blocks.append(Details(f"{next(letter)}. Provenance", _provenance(res)))
    return title, blocks


# --------------------------------------------------------------------------- renderers

def _md_cell(v: Any) -> str:
    s = "—" if v is None else str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def _md_blocks(blocks: list[Block], root: Path, out: list[str]) -> None:
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
            rows = b.rows
            cut = b.md_rows is not None and len(rows) > b.md_rows
            if cut:
                rows = rows[:b.md_rows]
            if rows or not cut:
                out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
                out.append("|" + "|".join("---" for _ in b.headers) + "|")
                for r in rows:
                    out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
                out.append("")
            if cut and b.md_note:
                out += [b.md_note, ""]
        elif isinstance(b, Image):
            rel = b.path.relative_to(root).as_posix() if b.path.is_relative_to(root) else b.path.as_posix()
            out += [f"![{b.path.stem}]({rel})", "", f"*{b.caption}*", ""]
        elif isinstance(b, Code):
            out += [b.md_note, ""] if b.md_note else ["```", b.text, "```", ""]
        elif isinstance(b, Details):
            out += [f"### {b.title}", ""]
            _md_blocks(b.blocks, root, out)


def render_markdown(title: str, blocks: list[Block], root: Path) -> str:
    out = [f"# {title}", ""]
    _md_blocks(blocks, root, out)
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
details{margin:.5em 0;border:1px solid #ddd;border-radius:4px;padding:.3em .8em}
summary{cursor:pointer;font-weight:600;font-size:1.05em}
"""


def _html_blocks(blocks: list[Block], out: list[str]) -> None:
    e = html.escape
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
        elif isinstance(b, Details):
            out.append(f"<details><summary>{e(b.title)}</summary>")
            _html_blocks(b.blocks, out)
            out.append("</details>")


def render_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    _html_blocks(blocks, out)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(results_dir: Path | str, analyses: bool = True) -> tuple[Path, Path]:
    """Read ``results_dir`` and write ``report.md`` and ``report.html`` into it.

    With ``analyses`` (the default) the explanatory analyses that apply to the data
    (:data:`ANALYSES`: overflow thresholds, cancellation, bounds vs measured errors, per-step
    attribution and the fused-kernel comparison) first write their JSON and plots into the
    folder; they need the experiment's config file (to regenerate the inputs) and
    samples.parquet, and are skipped where those are missing.

    Returns:
        (path of report.md, path of report.html).
    """
    root = Path(results_dir)
    if analyses:
        enrich(root)
    res = load_results(root)
    title, blocks = build_document(res)
    md = root / "report.md"
    ht = root / "report.html"
    md.write_text(render_markdown(title, blocks, root))
    ht.write_text(render_html(title, blocks))
    return md, ht


# =========================================================================== explanatory analyses
#
# Analyses that need the experiment's inputs (regenerated from the config, deterministically)
# or the per-sample table.  Each one decides from the data whether it applies, writes its JSON
# ({"text", "findings", "tables"}) and plots into the folder, and is then rendered like any
# other extra.  They run inside write_report, before the documents are built.

_ANALYSIS_ROW_CAP = 20000      # rows per format read back for an analysis
_ATTRIB_ROWS = 8               # worst rows attributed per implementation x format
_ATTRIB_MAX_V = 2048           # attribution is mpmath per element: only for small V
_FUSED_MAX_V = 200_000


def _load_cfg(res: Results):
    """The experiment's config, if its file still has the recorded hash."""
    from .config import config_hash, load_config

    path = res.manifest.get("config_file")
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = Path.cwd() / p
    if not p.exists():
        return None
    try:
        cfg = load_config(p)
    except Exception:  # noqa: BLE001 - no config, no input-based analyses
        return None
    if res.manifest.get("config_sha256") and config_hash(cfg) != res.manifest["config_sha256"]:
        return None
    return cfg


class _Inputs:
    """Per (point, format): the logits (S*B, C) rounded to the format and targets (S*B,)."""

    def __init__(self, res: Results):
        from .config import sweep_points

        self.cfg = _load_cfg(res)
        self.points = {p.index: p for p in sweep_points(self.cfg)} if self.cfg else {}
        self._raw: dict[int, Any] = {}

    @property
    def ok(self) -> bool:
        return self.cfg is not None and self.cfg.reduction == "none"

    def get(self, point: int, fmt: str):
        from .inputs import generate, to_format

        if point not in self._raw:
            self._raw = {point: generate(self.cfg, self.points[point])}  # keep one point
        b = self._raw[point]
        S, B, C = b.logits.shape
        return to_format(b.logits, fmt).reshape(S * B, C), b.targets.reshape(S * B)


def _sample_arrays(res: Results) -> dict[str, Any] | None:
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


def _rows_per_format(S: dict) -> int:
    """Distinct (point, sample) rows of the most populated format."""
    import numpy as np

    best = 0
    for fm in set(S["format"].tolist()):
        sel = S["format"] == fm
        best = max(best, len(set(zip(S["point"][sel].tolist(), S["sample"][sel].tolist()))))
    return best


def _savefig(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _join(names: list[str]) -> str:
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def analysis_overflow(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """Non-finite results explained: a single exp overflows (max x > ln M), the unshifted sum
    sum_j exp(x_j) = exp(lse) overflows (lse > ln M), or the shifted sum sum_j exp(x_j - max)
    overflows (>= M), M being the format's largest finite value."""
    import math as _m

    import numpy as np

    from .formats import get_format

    bad = np.isin(S["category"], ["overflow", "nan"])
    if not bad.any() or not inp.ok:
        return None
    impls = [i for i in dict.fromkeys(S["implementation"][bad].tolist())]
    fmts = _format_order(set(S["format"][bad].tolist()))
    rows_tbl, findings = [], []
    per_fmt: dict[str, dict[str, tuple]] = {}
    n_sh = n_un = 0
    for fm in fmts:
        f = get_format(fm)
        sel_f = S["format"] == fm
        cache = {}
        for pt in sorted(set(S["point"][sel_f].tolist())):
            x64 = inp.get(pt, fm)[0].astype(np.float64)
            with np.errstate(all="ignore"):
                m = x64.max(axis=-1)
                sp = np.exp(x64 - m[:, None]).sum(axis=-1)
            cache[pt] = (m, sp, m + np.log(sp))
        per_fmt[fm] = {}
        lnM = _m.log(f.max_finite)
        groups: dict[tuple, list[str]] = {}
        for im in impls:
            sel = sel_f & (S["implementation"] == im)
            if not sel.any():
                continue
            pick = lambda k: np.array([cache[p][k][s] for p, s in zip(S["point"][sel], S["sample"][sel])])
            mx, sp, lse = pick(0), pick(1), pick(2)
            nf = bad[sel]
            per_fmt[fm][im] = (lse, sp, nf)
            if not nf.any():
                continue
            c_exp = nf & (mx > lnM)
            c_un = nf & ~(mx > lnM) & (lse > lnM) & ~(sp >= f.max_finite)
            c_sh = nf & (sp >= f.max_finite)
            c_other = nf & ~c_exp & ~c_un & ~c_sh
            n_sh += int(c_sh.sum())
            n_un += int((c_exp | c_un).sum())
            above = lse > lnM
            key = (int(nf.sum()), int(nf.size), int(c_exp.sum()), int(c_un.sum()), int(c_sh.sum()),
                   int(c_other.sum()), int(above.sum()), int((nf & above).sum()),
                   _r(float(lse[nf].min())), _r(float(lse[~nf].max())) if (~nf).any() else None,
                   _r(float(sp[c_sh].min())) if c_sh.any() else None,
                   _r(float(sp[~nf].max())) if (~nf).any() else None)
            groups.setdefault(key, []).append(im)
        for key, names in groups.items():
            nbad, n, ce, cu, cs, co, nab, nfab, lse_min_bad, lse_max_ok, sp_min_bad, sp_max_ok = key
            row = {"format": fm, "implementations": names, "rows": n, "non_finite": nbad,
                   "exp_overflow": ce, "unshifted_sum_overflow": cu, "shifted_sum_overflow": cs,
                   "other": co, "ln_max_finite": lnM, "rows_lse_above_ln_max": nab,
                   "smallest_lse_non_finite": lse_min_bad, "largest_lse_finite": lse_max_ok}
            rows_tbl.append(row)
            who = _join(names)
            if cs == 0 and nbad == nfab == nab:
                text = (f"{who} in {fm}: an inf/NaN loss on exactly the {nab} of {n} rows whose "
                        f"lse(x) = log sum exp(x_j) exceeds ln({f.max_finite:.6g}) = {lnM:.2f} "
                        f"(smallest lse among them {lse_min_bad:.5g}, largest lse of a finite row "
                        f"{lse_max_ok if lse_max_ok is not None else float('nan'):.5g}): the unshifted "
                        f"sum exp(x_j) overflows -- in {ce} rows a single exp already does, in {cu} "
                        f"only the sum.")
            elif cs and cs == nbad:
                text = (f"{who} in {fm}: an inf/NaN loss on {nbad} of {n} rows, all with no logit "
                        f"near overflow but a shifted sum exp(x_j - max) of at least "
                        f"{sp_min_bad:.5g} > {f.max_finite:.6g}: the SUM overflows in {fm}"
                        + (f" (largest sum of a finite row {sp_max_ok:.5g})" if sp_max_ok else "") + ".")
            else:
                text = (f"{who} in {fm}: an inf/NaN loss on {nbad} of {n} rows: {ce} with a single "
                        f"exp overflowing, {cu} with only the unshifted sum overflowing, {cs} with "
                        f"the shifted sum overflowing, {co} otherwise.")
            findings.append({"text": text, "numbers": row})
    # one panel: share of inf/NaN rows against ln(sum) - ln(largest finite), where the sum is
    # the one the implementation forms: sum exp(x_j) = exp(lse) for the unshifted formulas,
    # sum exp(x_j - max) for the shifted ones.  Implementations with identical results share
    # a line.
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    edges = np.arange(-4.0, 4.0001, 0.25)
    mids = (edges[:-1] + edges[1:]) / 2
    styles = {"float16": "-", "bfloat16": "--", "float32": "-.", "float64": ":"}
    for fm, d in per_fmt.items():
        lnM = _m.log(get_format(fm).max_finite)
        groups: dict[bytes, list[str]] = {}
        for im, (lse, sp, nf) in d.items():
            if nf.any():
                groups.setdefault(nf.tobytes(), []).append(im)
        for names in groups.values():
            lse, sp, nf = d[names[0]]
            shifted = (sp[nf] >= get_format(fm).max_finite).mean() > 0.5
            with np.errstate(divide="ignore", invalid="ignore"):
                xv = (np.log(sp) if shifted else lse) - lnM
            idx = np.digitize(xv, edges) - 1
            share = np.array([nf[idx == j].mean() if (idx == j).any() else np.nan
                              for j in range(len(mids))])
            okm = ~np.isnan(share)
            what = "ln sum exp(x-max)" if shifted else "lse"
            mk = {"float16": "o", "bfloat16": "s", "float32": "^", "float64": "x"}.get(fm, "o")
            ax.plot(mids[okm], share[okm], styles.get(fm, "-"), marker=mk, ms=7 if mk == "o" else 5,
                    mfc="none", lw=1.6,
                    label=f"{fm}: {_join(names)}  (x = {what} - ln {get_format(fm).max_finite:.4g})")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlim(-4, 4)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("ln(the sum the implementation forms) - ln(largest finite value of the format)")
    ax.set_ylabel("share of rows with an inf/NaN loss")
    ax.set_title(f"{res.name}: the loss is inf/NaN exactly when the sum of exponentials "
                 f"overflows (x > 0)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    _savefig(fig, res.root / "plots" / "nonfinite_vs_overflow_margin.png")
    return {"text": "For every row (inputs regenerated from the config) in exact arithmetic: its "
                    "largest logit, lse(x) = log sum exp(x_j), and the shifted sum sum exp(x_j - "
                    "max); against whether the implementation's loss came out inf/NaN while the "
                    "truth is finite. An unshifted formula needs sum exp(x_j) = exp(lse) to be "
                    "representable, so it fails once lse exceeds ln(largest finite value) even "
                    "when every single exp fits; a shifted one fails only if sum exp(x_j - max) "
                    "itself exceeds the largest finite value.",
            "findings": findings, "tables": {"overflow causes": rows_tbl}}


def _r(v: float) -> float:
    return float(f"{v:.6g}") if math.isfinite(v) else v


def analysis_bounds(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """Measured errors of the shifted algorithms against their error bounds (BHH style)."""
    import numpy as np

    from .conditioning import bhh_loss_bound, derived_loss_bound, to_rigorous
    from .formats import get_format

    impls = set(S["implementation"].tolist())
    if not inp.ok or "lse" not in impls:
        return None
    fmts = _format_order(set(S["format"].tolist()))
    if _rows_per_format(S) < 20:
        return None
    data: dict[str, dict[str, tuple]] = {}
    rows_tbl, findings = [], []
    for fm in fmts:
        f = get_format(fm)
        data[fm] = {}
        for im, kind in (("lse", "bhh"), ("lse", "derived"), ("lse_log1p", "derived")):
            sel = (S["format"] == fm) & (S["implementation"] == im) & (S["category"] == "finite")
            if not sel.any():
                continue
            idx = np.flatnonzero(sel)[:_ANALYSIS_ROW_CAP]
            bounds, meas = [], []
            for pt in sorted(set(S["point"][idx].tolist())):
                ii = idx[S["point"][idx] == pt]
                x, t = inp.get(pt, fm)
                if x.shape[1] > 200_000:
                    continue
                xs, ts = x[S["sample"][ii]], t[S["sample"][ii]]
                loss = S["exact_hi"][ii]
                with np.errstate(all="ignore"):
                    b = (bhh_loss_bound(xs, ts, True, loss=loss) if kind == "bhh"
                         else derived_loss_bound(xs, ts, im, fm, loss=loss))
                bounds.append(to_rigorous(b, fm))
                meas.append(S["relative_error"][ii] / f.unit_roundoff)
            if not bounds:
                continue
            b, m = np.concatenate(bounds), np.concatenate(meas)
            ok = np.isfinite(b) & np.isfinite(m)
            within = int((m[ok] <= b[ok]).sum())
            row = {"format": fm, "implementation": im, "bound": "BHH shifted (carried to the loss)" if kind == "bhh"
                   else "first-order (derived in conditioning.py)", "rows": int(ok.sum()), "within": within,
                   "void_rows": int((~np.isfinite(b)).sum()),
                   "median_bound_u": float(np.median(b[ok])) if ok.any() else None,
                   "median_measured_u": float(np.median(m[ok])) if ok.any() else None,
                   "max_measured_over_bound": float(np.max(m[ok] / b[ok])) if ok.any() else None}
            if kind == "bhh" and ok.any() and within < int(ok.sum()):
                # where BHH's formula fails: is it below the final rounding u|y| of lse itself?
                viol = np.flatnonzero(ok)[m[ok] > b[ok]]
                below = 0
                for pt in sorted(set(S["point"][idx].tolist())):
                    ii = idx[S["point"][idx] == pt]
                    x, t = inp.get(pt, fm)
                    xs = x[S["sample"][ii]].astype(np.float64)
                    with np.errstate(all="ignore"):
                        mm = xs.max(axis=-1)
                        y = mm + np.log(np.exp(xs - mm[:, None]).sum(axis=-1))
                    below_arr = np.abs(y + xs.shape[1] - xs.min(axis=-1)) < np.abs(y)
                    below_map = dict(zip(ii.tolist(), below_arr.tolist()))
                    below += sum(1 for v in idx[viol] if below_map.get(int(v), False))
                row["violations"] = int(viol.size)
                row["violations_with_formula_below_final_rounding"] = int(below)
            rows_tbl.append(row)
            data[fm][f"{im} vs {row['bound']}"] = (b[ok], m[ok])
            if ok.any():
                findings.append({"text": (
                    f"In {fm}, {im}'s measured error is within the {row['bound']} bound on "
                    f"{fmt_rate(within, int(ok.sum()))} of rows (largest measured/bound ratio "
                    f"{row['max_measured_over_bound']:.3g}; median bound {row['median_bound_u']:.3g} u, "
                    f"median measured {row['median_measured_u']:.3g} u)"
                    + (f"; on {row['void_rows']} more rows the bound exceeds a relative error of 1 "
                       f"(B u >= 1, counted as void)" if row["void_rows"] else "") + "."
                    + (f" It fails on {row['violations']} rows; on "
                       f"{row['violations_with_formula_below_final_rounding']} of them "
                       f"|y + n - min x| < |y|: the formula is smaller than the rounding of lse "
                       f"itself (u|y|), which it leaves out when all logits are large (min x > n)."
                       if row.get("violations") else "")), "numbers": row})
    if not rows_tbl:
        return None
    plt = _plt()
    panels = [fm for fm in data if data[fm]]
    n = len(panels)
    ncol = 2 if n > 1 else 1
    nrow = (n + 1) // 2
    fig, axs = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, 4.8 * nrow), squeeze=False)
    for ax in axs.ravel()[n:]:
        ax.axis("off")
    for ax, fm in zip(axs.ravel(), panels):
        lo, hi = np.inf, 0.0
        for (label, (b, m)), mk in zip(data[fm].items(), ("o", "s", "^")):
            mm = np.maximum(m, 1e-3)
            ax.scatter(b, mm, s=7, alpha=0.45, marker=mk, label=label)
            if b.size:
                lo, hi = min(lo, b.min() / 2), max(hi, b.max(), mm.max())
        if np.isfinite(lo) and hi > 0:
            # the x range is the bounds' range; the diagonal spans it
            ax.plot([lo, hi * 1.3], [lo, hi * 1.3], color="r", lw=1.2, label="measured = bound")
            ax.set_xlim(lo, hi * 1.3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("error bound (units of u)")
        ax.set_ylabel("measured relative error (units of u; 0 drawn at 1e-3)")
        ax.set_title(fm, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{res.name}: measured error vs bound (points below the red line respect it)",
                 fontsize=11)
    _savefig(fig, res.root / "plots" / "bound_vs_measured.png")
    return {"text": "Each point is one row: x = the bound evaluated at that row's logits, y = the "
                    "measured relative error of the loss, both in units of u, as in Blanchard, "
                    "Higham & Higham's Figure (their bound for the shifted lse, carried through "
                    "the final subtraction, and the first-order bounds derived in "
                    "precision_lab.conditioning, with the B/(1 - Bu) second-order cover).",
            "findings": findings, "tables": {"bounds vs measured": rows_tbl}}


def analysis_cancellation(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """Relative error against the swept axis where implementations return 0 on a tiny loss."""
    import numpy as np

    from .formats import get_format

    comp, ref = S["computed"].astype(float), S["reference"].astype(float)
    zero = (comp == 0) & (ref != 0) & np.isfinite(ref)
    axes = [a for a in res.swept_params() if "axis:" + a in S]
    if not zero.any() or not axes:
        return None
    ax_name = axes[0]
    axv = S["axis:" + ax_name].astype(float)
    fmts = _format_order(set(S["format"].tolist()))
    impls = list(dict.fromkeys(S["implementation"].tolist()))
    rows_tbl, findings = [], []
    plt = _plt()
    ncol = 2 if len(fmts) > 1 else 1
    nrow = (len(fmts) + 1) // 2
    fig, axs = plt.subplots(nrow, ncol, figsize=(7.6 * ncol, 4.4 * nrow), squeeze=False)
    for ax in axs.ravel()[len(fmts):]:
        ax.axis("off")
    colors = {im: f"C{i % 10}" for i, im in enumerate(impls)}
    for ax, fm in zip(axs.ravel(), fmts):
        u = get_format(fm).unit_roundoff
        curves: dict[tuple, list[str]] = {}
        for im in impls:
            sel = (S["format"] == fm) & (S["implementation"] == im)
            vals = sorted(set(axv[sel].tolist()))
            med, share0 = [], []
            for v in vals:
                s2 = sel & (axv == v) & np.isfinite(S["relative_error"])
                r = S["relative_error"][s2] / u
                med.append(float(np.median(r)) if r.size else np.nan)
                s3 = sel & (axv == v)
                share0.append(float(zero[s3].mean()) if s3.any() else np.nan)
            # curves that agree to 3 significant digits at every point share a line
            curves.setdefault((tuple(vals), tuple(float(f"{m:.3g}") for m in med)), []).append(im)
            z = [v for v, s in zip(vals, share0) if s > 0]
            allz = [v for v, s in zip(vals, share0) if s == 1.0]
            if z:
                row = {"format": fm, "implementation": im, "axis": ax_name,
                       "first_value_with_zero": z[0],
                       "first_value_all_zero": allz[0] if allz else None,
                       "rows_zero": int((zero & sel).sum()), "rows": int(sel.sum())}
                rows_tbl.append(row)
                text = (f"In {fm}, {im} first returns 0 (truth non-zero) at {ax_name} = {z[0]:g}"
                        + (f" and returns 0 on every row from {ax_name} = {allz[0]:g}" if allz else "")
                        + f" ({row['rows_zero']} of {row['rows']} rows in all).")
                findings.append({"text": text, "numbers": row})
        for (vals, med), names in curves.items():
            ax.plot(vals, np.maximum(med, 1e-3), marker="o", ms=3, lw=1.4, color=colors[names[0]],
                    label=" = ".join(names))
        ax.axhline(1 / u, color="k", ls=":", lw=1)
        ax.text(ax.get_xlim()[1], 1 / u, "relative error 1 (result 0) ", fontsize=7, va="top",
                ha="right")
        ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel(f"{ax_name} (swept)")
        ax.set_ylabel("median relative error (units of u)")
        ax.set_title(f"{fm} (u = 2^-{get_format(fm).precision})", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{res.name}: relative error against {ax_name}", fontsize=11)
    _savefig(fig, res.root / "plots" / f"relative_error_vs_{ax_name}.png")
    keep = []
    for fm in fmts:
        for im in impls:
            sel = (S["format"] == fm) & (S["implementation"] == im)
            if sel.any() and not (zero & sel).any():
                r = S["relative_error"][sel] / get_format(fm).unit_roundoff
                r = r[np.isfinite(r)]
                if r.size:
                    keep.append((fm, im, float(r.max())))
    for fm, im, mx in keep:
        if im in ("lse_log1p",):
            findings.append({"text": f"In {fm}, {im} never returns 0; its largest relative error "
                                     f"over the whole sweep is {mx:.3g} u.",
                             "numbers": {"format": fm, "implementation": im, "max_relative_error_u": mx}})
    return {"text": f"Median relative error of the loss (units of u) at each {ax_name}. A result "
                    f"of 0 for a non-zero truth is a relative error of 1 = 1/u units (dotted line).",
            "findings": findings, "tables": {"zero returns": rows_tbl}}


def analysis_attribution(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """Per-step attribution of the worst rows, and the fused torch kernel against composites."""
    import numpy as np

    from .attribution import attribute, compare_fused
    from .implementations import REGISTRY

    if not inp.ok or _rows_per_format(S) <= 4:  # tiny experiments are explained row by row
        return None
    fmts = _format_order(set(S["format"].tolist()))
    impls = list(dict.fromkeys(S["implementation"].tolist()))
    rows_tbl, fused_tbl, findings = [], [], []
    for fm in fmts:
        for im in impls:
            impl = REGISTRY.get(im)
            if impl is None or not impl.stepwise:
                continue
            sel = np.flatnonzero((S["format"] == fm) & (S["implementation"] == im))
            if not sel.size:
                continue
            cat = S["category"][sel]
            score = np.where(np.isin(cat, ["overflow", "nan", "missed_inf"]), np.inf,
                             np.nan_to_num(S["ulp_error"][sel], nan=-1.0))
            order = sel[np.argsort(-score, kind="stable")][:_ATTRIB_ROWS]
            order = order[(score[np.argsort(-score, kind="stable")][:_ATTRIB_ROWS]) > 0.5]
            if not order.size:
                continue
            decided: dict[str, int] = {}
            worst = None
            for i in order:
                x, t = inp.get(int(S["point"][i]), fm)
                if x.shape[1] > _ATTRIB_MAX_V:
                    break
                s = int(S["sample"][i])
                (r,) = attribute(im, x[s:s + 1], t[s:s + 1], fm)
                decided[r.decisive or "-"] = decided.get(r.decisive or "-", 0) + 1
                worst = worst or r
            if not decided:
                continue
            top = max(decided, key=decided.get)
            st = next((q for q in worst.steps if q.name == top), None) if worst else None
            fin_err = S["ulp_error"][order]
            fin_err = fin_err[np.isfinite(fin_err)]
            row = {"format": fm, "implementation": im, "worst_rows": int(sum(decided.values())),
                   "decided_at": decided,
                   "non_finite_rows": int(np.isin(S["category"][order], ["overflow", "nan", "missed_inf"]).sum()),
                   "largest_finite_ulp_error": float(fin_err.max()) if fin_err.size else None}
            rows_tbl.append(row)
            desc = f" ({st.op}{', ' + '; '.join(st.flags) if st and st.flags else ''})" if st else ""
            findings.append({"text": (
                f"In {fm}, the {row['worst_rows']} worst rows of {im} (ULP error > 0.5 or non-finite) "
                f"are decided at step '{top}'{desc} in {decided[top]} of {row['worst_rows']}"
                + (f"; others: {', '.join(f'{k} {v}' for k, v in decided.items() if k != top)}"
                   if len(decided) > 1 else "") + "."), "numbers": row})
        if "torch" in impls:
            idents: dict[str, list[int]] = {}
            n_rows = 0
            for pt in sorted(set(S["point"][S["format"] == fm].tolist())):
                x, t = inp.get(pt, fm)
                if x.shape[1] > _FUSED_MAX_V:
                    continue
                fr = compare_fused(x, t, fm)
                n_rows += fr["rows"]
                for c in fr["composites"]:
                    idents.setdefault(c["name"], []).append(c["identical"])
            if n_rows:
                tot = {k: int(sum(v)) for k, v in idents.items()}
                for k, v in sorted(tot.items(), key=lambda kv: -kv[1]):
                    fused_tbl.append({"format": fm, "composite": k, "identical": v, "rows": n_rows,
                                      "rate": v / n_rows})
                best = [k for k, v in tot.items() if k != "torch_logsoftmax_nll" and v == max(
                    vv for kk, vv in tot.items() if kk != "torch_logsoftmax_nll")]
                b0 = best[0]
                findings.append({"text": (
                    f"In {fm}, torch's fused cross_entropy is bit-identical to the composite "
                    f"{b0} on {fmt_rate(tot[b0], n_rows)} of rows (to the registry's "
                    f"torch_logsoftmax_nll on {fmt_rate(tot.get('torch_logsoftmax_nll', 0), n_rows)}; "
                    f"to 'rounded once in float32' on "
                    f"{fmt_rate(tot.get('logsumexp_f32_round_once', 0), n_rows)})."),
                    "numbers": {"format": fm, "best": b0, "identical": tot[b0], "rows": n_rows}})
    if not rows_tbl and not fused_tbl:
        return None
    return {"text": ("Worst rows of each step-wise implementation re-run with per-step "
                     "attribution (precision_lab.attribution): the 'decisive' step is the first one "
                     "after which the accumulated error stays within half of its final value; "
                     "contributions are the telescoping differences of exact re-runs and add up "
                     "to the total error. The fused torch kernel cannot be traced; it is set beside "
                     "composites modelled on its source (precision_lab.attribution.COMPOSITES)."),
            "findings": findings,
            "tables": {"decisive steps of the worst rows": rows_tbl,
                       "torch fused kernel vs composites": fused_tbl}}


def analysis_explain(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """For tiny experiments (at most 4 rows per format): every row explained in words
    (precision_lab.explain), one file per format and row under explain/."""
    import numpy as np

    from .explain import explain

    if not inp.ok:
        return None
    pts = sorted(set(S["point"].tolist()))
    fmts = _format_order(set(S["format"].tolist()))
    if len(pts) > 1:
        return None
    x0, _ = inp.get(pts[0], fmts[0])
    if x0.shape[0] > 4 or x0.shape[1] > 64:
        return None
    (res.root / "explain").mkdir(exist_ok=True)
    findings = []
    for fm in fmts:
        x, t = inp.get(pts[0], fm)
        for i in range(x.shape[0]):
            d = explain(x[i], int(t[i]), fm)
            table = [{"implementation": k, "value": r.get("repr", r["value"]),
                      "ULP error": r["ulp_error"], "ULP distance": r["ulp_distance"],
                      "correctly rounded": r["correctly_rounded"]}
                     for k, r in d["implementations"].items()]
            doc = {"text": (f"logits [{', '.join(d['logits_repr'])}] in {fm}, target {d['target']}: "
                            f"correctly rounded loss {d['reference_repr']} (exact {d['exact']}), "
                            f"condition number {fmt_num(d['condition_number'])}.\n\n"
                            + "\n\n".join(d["verdict"])),
                   "tables": {"implementations": table}}
            (res.root / "explain" / f"{fm}_row{i}.json").write_text(
                json.dumps(_clean(doc), indent=1, default=_json_default))
            if fm == fmts[-1] or fm == "float32":
                pass
            if i == 0 and fm in ("float32", fmts[0]) and not findings:
                findings.append({"text": d["verdict"][0], "numbers": {"format": fm, "row": i}})
    return {"text": "Each row of this experiment explained step by step: see the 'Explained "
                    "sample' sections (precision-lab explain gives the same on the command line).",
            "findings": findings}


def analysis_error_vs_axis(res: Results, inp: _Inputs, S: dict) -> None:
    """One figure, one panel per format: each implementation's mean ULP error against the
    numeric sweep axis (implementations bit-identical on every sample share a line; legend
    outside the panels).  Writes plots/error_vs_<axis>.png and no JSON."""
    axis = _numeric_param(res)
    if not axis:
        return None
    fmts = _format_order(str(r.get("format")) for r in res.summary)
    groups = _identical_groups(res)
    impls = [g[0] for g in groups]
    colors = {im: f"C{i % 10}" for i, im in enumerate(impls)}
    vals = _axis_values(res, axis)
    logx = vals[0] > 0 and vals[-1] / vals[0] > 100
    allm = [_f(r.get("ulp_error_mean")) for r in res.summary]
    allm = [m for m in allm if m > 0 and math.isfinite(m)]
    logy = bool(allm) and max(allm) / min(allm) > 50
    plt = _plt()
    ncol = 2 if len(fmts) > 1 else 1
    nrow = (len(fmts) + 1) // 2
    fig, axs = plt.subplots(nrow, ncol, figsize=(5.2 * ncol + 2.6, 3.6 * nrow), squeeze=False,
                            sharex=True)
    for ax in axs.ravel()[len(fmts):]:
        ax.axis("off")
    handles = {}
    for ax, fm in zip(axs.ravel(), fmts):
        # curves that agree to 3 significant digits at every point share a line ("a ≈ b")
        curves: dict[tuple, list[list[str]]] = {}
        for names in groups:
            pts = sorted((r for r in res.summary if r.get("implementation") == names[0]
                          and r.get("format") == fm and axis in r), key=lambda r: r[axis])
            xy = [(float(r[axis]), _f(r.get("ulp_error_mean"))) for r in pts if _stat_count(r)]
            xy = tuple((x, float(f"{y:.3g}")) for x, y in xy if math.isfinite(y))
            if xy:
                curves.setdefault(xy, []).append(names)
        for xy, gs in curves.items():
            k = impls.index(gs[0][0])  # dashes alternate, so coinciding lines stay visible
            ln, = ax.plot([x for x, _ in xy], [max(y, 1e-3) if logy else y for _, y in xy],
                          marker="os^Dvx"[k % 6], ms=4, lw=1.5, ls=("-", "--", "-.")[k % 3],
                          color=colors[gs[0][0]])
            handles.setdefault(" ≈ ".join(" = ".join(g) for g in gs), ln)
        ax.axhline(0.5, color="k", ls=":", lw=1)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(fm, fontsize=10)
        ax.set_ylabel("mean ULP error")
        ax.grid(alpha=0.3)
    for ax in axs[-1]:
        ax.set_xlabel(f"{axis} (swept)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=8,
               frameon=False, title="implementation", title_fontsize=8)
    fig.suptitle(f"{res.name}: mean ULP error against {axis} (finite results; dotted: 0.5 ULP)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (5.2 * ncol + 2.6), 1))
    path = res.root / "plots" / f"error_vs_{axis}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return None


def analysis_by_format(res: Results, inp: _Inputs, S: dict) -> None:
    """Experiments without a numeric sweep and with two formats or more: per implementation
    (bit-identical ones merged) and format, the correctly rounded share and the mean ULP error
    as grouped bars on linear axes.  Writes plots/by_format.png and no JSON."""
    import numpy as np

    aggs = aggregate(res.summary)
    fmts = _format_order(a.format for a in aggs.values())
    if _numeric_param(res) or len(fmts) < 2:
        return None
    groups = [g for g in _identical_groups(res) if any((g[0], fm) in aggs for fm in fmts)]
    plt = _plt()
    n_max = max((a.stat for a in aggs.values()), default=0)
    one = n_max <= 1  # a single sample per format: its ULP error says it all
    fig, axs = plt.subplots(1, 1 if one else 2, figsize=(8 if one else 13, 4.8), squeeze=False)
    axs = list(axs[0])
    x = np.arange(len(groups))
    w = 0.8 / len(fmts)
    top = 0.0
    for i, fm in enumerate(fmts):
        share = [100 * aggs[(g[0], fm)].exact / aggs[(g[0], fm)].stat
                 if (g[0], fm) in aggs and aggs[(g[0], fm)].stat else np.nan for g in groups]
        mean = [aggs[(g[0], fm)].ulp_mean if (g[0], fm) in aggs else np.nan for g in groups]
        top = max([top, *[m for m in mean if np.isfinite(m)]])
        if not one:
            axs[0].bar(x + (i - (len(fmts) - 1) / 2) * w, share, w, label=fm, color=f"C{i}")
        axs[-1].bar(x + (i - (len(fmts) - 1) / 2) * w, mean, w, label=fm, color=f"C{i}")
    labels = ["\n= ".join(g) for g in groups]
    for ax in axs:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8, rotation=20, ha="right")
        ax.grid(axis="y", alpha=0.3)
    if not one:
        axs[0].set_ylabel("correctly rounded (% of samples)")
        axs[0].set_ylim(0, 105)
        axs[0].set_title(f"correctly rounded share ({n_max} samples per format)", fontsize=10)
    axs[-1].axhline(0.5, color="k", ls=":", lw=1)
    axs[-1].set_ylim(0, max(top, 0.5) * 1.3)
    axs[-1].set_ylabel(("ULP error" if one else "mean ULP error") + " (in that format's ULPs)")
    axs[-1].set_title("ULP error of the one sample (below the dotted 0.5 ULP: correctly rounded)"
                      if one else "mean ULP error (dotted: 0.5 ULP)", fontsize=10)
    axs[-1].legend(title="format", fontsize=8, title_fontsize=8, loc="upper center",
                   ncol=len(fmts))
    fig.suptitle(f"{res.name}: each implementation in each format", fontsize=11)
    _savefig(fig, res.root / "plots" / "by_format.png")
    return None


def analysis_compare_plot(res: Results, inp: _Inputs, S: dict) -> None:
    """With a [compare] section: the ULP distance between the two compared implementations
    (the 0 bar is what passes the tolerance) and each one's ULP error against the correctly
    rounded truth.  Writes plots/compare.png and no JSON."""
    import numpy as np

    if not isinstance(res.compare, dict) or not res.compare.get("results"):
        return None
    r = res.compare["results"][0]
    a, b, fm, tol = r.get("a"), r.get("b"), r.get("format"), r.get("abs_tol")
    counts = (r.get("ulp_distance") or {}).get("counts") or {}
    if not counts:
        return None
    n = sum(int(v) for v in counts.values())
    plt = _plt()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.4))
    ds = sorted(counts, key=int)
    ax0.bar([str(d) for d in ds], [100 * int(counts[d]) / n for d in ds],
            color=["#2a9d8f" if int(d) == 0 else "#e9c46a" for d in ds])
    for d in ds:
        ax0.text(str(d), 100 * int(counts[d]) / n, f"{int(counts[d])}", ha="center", va="bottom",
                 fontsize=9)
    ax0.set_xlabel(f"ULP distance between {a} and {b} ({fm})")
    ax0.set_ylabel(f"share of the {n} samples (%)")
    ax0.set_ylim(0, 105)
    ax0.set_title(f"only the 0-ULP bar passes |a - b| < {tol:g}", fontsize=10)
    edges = np.arange(0.0, 3.01, 0.1)
    for im, color in ((a, "C0"), (b, "C1")):
        sel = (S["implementation"] == im) & (S["format"] == fm)
        e = S["ulp_error"][sel].astype(float)
        e = e[np.isfinite(e)]
        if e.size:
            ax1.hist(np.minimum(e, edges[-1] - 1e-9), bins=edges, histtype="step", lw=1.8,
                     color=color, label=f"{im} (mean {e.mean():.3g}, max {e.max():.3g})")
    ax1.axvline(0.5, color="k", ls=":", lw=1, label="0.5 ULP (correctly rounded: left of it)")
    ax1.set_xlabel(f"ULP error against the correctly rounded truth ({fm} ULPs)")
    ax1.set_ylabel("samples (count)")
    ax1.set_title("each one's error against the exact loss", fontsize=10)
    ax1.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"{res.name}: {a} vs {b}", fontsize=11)
    _savefig(fig, res.root / "plots" / "compare.png")
    return None


#: Analyses in the order they run: (name of the JSON written, function).
ANALYSES: list[tuple[str, Callable]] = [
    ("explained", analysis_explain),
    ("overflow", analysis_overflow),
    ("cancellation", analysis_cancellation),
    ("bounds", analysis_bounds),
    ("attribution", analysis_attribution),
    ("error_vs_axis", analysis_error_vs_axis),
    ("by_format", analysis_by_format),
    ("compare_plot", analysis_compare_plot),
]


def enrich(results_dir: Path | str) -> list[str]:
    """Run the explanatory analyses that apply to this folder; return the names written."""
    root = Path(results_dir)
    res = load_results(root)
    S = _sample_arrays(res)
    if S is None:
        return []
    inp = _Inputs(res)
    written = []
    for name, fn in ANALYSES:
        try:
            out = fn(res, inp, S)
        except Exception as exc:  # noqa: BLE001 - an analysis must not break the report
            out = {"text": f"analysis {name} failed: {type(exc).__name__}: {exc}", "findings": []}
        if out is not None:
            (root / f"{name}.json").write_text(json.dumps(_clean(out), indent=1,
                                                         default=_json_default, allow_nan=False))
            written.append(name)
    return written


def _clean(o: Any) -> Any:
    """NaN/inf floats -> None, recursively (JSON has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    try:
        import numpy as np

        if isinstance(o, np.floating):
            return _clean(float(o))
        if isinstance(o, np.integer):
            return int(o)
    except ImportError:  # pragma: no cover
        pass
    return o


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        v = float(o)
        return v if math.isfinite(v) else None
    return str(o)
