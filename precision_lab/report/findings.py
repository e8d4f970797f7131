"""Findings: sentences built from a results folder's data, each carrying the numbers it rests on.

* :func:`collect_findings`: every finding the finders (:data:`FINDERS`) see in the data --
  accuracy per format, by-format shares, inf/NaN with the swept value where they start,
  results of 0 for a non-zero loss, agreement between implementations, and the findings the
  analyses stored with their JSON.  Each finder returns nothing when its pattern is absent, so
  a report only states what its experiment shows.
* :func:`key_findings`: the answer to the experiment's question -- 3 to 8 findings chosen by
  the mechanisms the data shows (a comparison, a row-by-row explanation, results of 0 for a
  non-zero loss, inf/NaN results, a trend along the sweep axis, formats side by side), and
  one key table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from precision_lab.report.document import Block, Table
from precision_lab.numerics.formats import ordered_formats
from precision_lab.report.results import (EXTRA_NAMES, Results, aggregate, as_float, as_rows, exact_count, group_name,
                      identical_groups, nanmax, numeric_param, pair_of, stat_count, zero_mask)
from precision_lab.report.text import fmt_num, fmt_pct, fmt_rate, join_names, round6

__all__ = ["Finding", "FINDERS", "collect_findings", "key_findings", "MAX_KEY_FINDINGS"]


# --------------------------------------------------------------------------- findings

@dataclass
class Finding:
    """One claim with the numbers it rests on."""

    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    kind: str = "general"


def find_accuracy(res: Results) -> list[Finding]:
    """Per format: the most and least often correctly rounded implementation, and the
    largest ULP error."""
    aggs = aggregate(res.summary)
    out: list[Finding] = []
    for fmt in ordered_formats(a.format for a in aggs.values()):
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
    fmts = ordered_formats(a.format for a in aggs.values())
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
    param = numeric_param(res)
    aggs = aggregate(res.summary)
    groups: dict[tuple, list[str]] = {}
    for (impl, fmt), a in sorted(aggs.items()):
        for cat in ("overflow", "nan", "missed_inf"):
            k = a.cats.get(cat, 0)
            if not k:
                continue
            first = last_clean = None
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
            groups.items(), key=lambda kv: (ordered_formats([kv[0][0]]), kv[0][1])):
        text = f"{join_names(names)} {verbs[cat][len(names) > 1]} {k} of {total} {fmt} samples"
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
        a, b = pair_of(r)
        if (a is None or b is None) and isinstance(r.get("pair"), str):
            parts = re.split(r"\s*(?:vs|\||,)\s*", r["pair"])
            if len(parts) == 2:
                a, b = parts
        if a is None or b is None:
            continue
        by.setdefault((str(r.get("format")), str(a), str(b)), []).append(r)
    identical: dict[tuple[str, str], list[tuple[str, int]]] = {}
    least: list[Finding] = []
    for fmt in ordered_formats(k[0] for k in by):
        pairs = []
        for (f, a, b), rows in by.items():
            if f != fmt:
                continue
            n = sum(int(r.get("count") or r.get("n") or 0) for r in rows)
            if n:
                ident = sum(round(as_float(r.get("identical_rate")) * int(r.get("count") or r.get("n") or 0))
                            for r in rows if not math.isnan(as_float(r.get("identical_rate"))))
                rate = ident / n
            else:
                rates = [as_float(r.get("identical_rate")) for r in rows]
                rates = [x for x in rates if not math.isnan(x)]
                rate, ident = (sum(rates) / len(rates) if rates else math.nan), None
            dmax = nanmax(r.get("ulp_distance_max") for r in rows)
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
                           f"{join_names(fm)}" + (f" ({n}/{n})." if n else "."),
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
    for fmt in ordered_formats(set(fmts[mask])):
        groups: dict[tuple, list[str]] = {}
        for name in sorted(set(impl[mask & (fmts == fmt)])):
            sel = (impl == name) & (fmts == fmt)
            m = mask & sel
            groups.setdefault((int(m.sum()), int(sel.sum()), round6(float(ref[m].max()))), []).append(name)
        keep = [o for o in sorted(set(impl[fmts == fmt]))
                if not (mask & (impl == o) & (fmts == fmt)).any()]
        for (k, n, biggest), names in groups.items():
            text = (f"{join_names(names)} return{'s' if len(names) == 1 else ''} exactly 0 on {k} of {n} "
                    f"{fmt} samples whose correctly rounded loss is not 0 (the largest such loss "
                    f"is {fmt_num(biggest)})")
            if keep:
                text += f"; {join_names(keep)} never do"
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
        fmts = ordered_formats(n for _, n, _ in g)
        text = key.replace("{F}", join_names(fmts), 1).replace("{F}", "each of them")
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
    axis = numeric_param(res)
    aggs = aggregate(res.summary)
    total = sum(a.total for a in aggs.values()) or 1
    nf = sum(a.cats.get("overflow", 0) + a.cats.get("nan", 0) + a.cats.get("missed_inf", 0)
             for a in aggs.values())
    S = res.sample_arrays()
    zero = int(zero_mask(S).sum()) if S is not None else 0
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
                        f"{fmt_rate(int(round(as_float(e.get('exact_match_rate')) * cnt)), cnt)} "
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
        rows = as_rows((e.get("tables") or {}).get("implementations"))
        mt = re.search(r"correctly rounded loss (\S+) \(exact (\S+)\)", str(e.get("text", "")))
        if rows and stem.endswith("_row0"):
            per_fmt[fm] = (mt.group(1) if mt else "?", mt.group(2) if mt else "?", rows)
    fmts = ordered_formats(per_fmt)
    # float32 first: the format the question is usually asked in
    for fm in sorted(fmts, key=lambda f: (f != "float32", fmts.index(f))):
        cr, exact, rows = per_fmt[fm]
        by_val: dict[str, list[dict]] = {}
        for r in rows:
            by_val.setdefault(str(r.get("value")), []).append(r)
        parts = []
        for val, rs in sorted(by_val.items(), key=lambda kv: as_float(kv[1][0].get("ULP error"))):
            names = join_names([str(r.get("implementation")) for r in rs])
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

    from precision_lab.numerics.formats import get_format

    S = res.sample_arrays()
    if S is None:
        return [], []
    zero = zero_mask(S)
    axis = next((a for a in res.swept_params() if "axis:" + a in S), None)
    axv = S["axis:" + axis].astype(float) if axis else None
    bad = np.isin(S["category"], ["overflow", "nan", "missed_inf"])
    ref = S["reference"].astype(float)
    nonzero_truth = (ref != 0) & np.isfinite(ref)
    fmts = ordered_formats(set(S["format"].tolist()))
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
                s = f"{join_names(names)} from {axis} = {fmt_num(first)}"
                if all_from is not None:
                    s += f" (every row from {fmt_num(all_from)})"
                else:
                    s += f" ({k} of {n} rows" + (f"; {nfin} more are inf/NaN" if nfin else "") + ")"
            else:
                s = f"{join_names(names)} on {k} of {n} rows"
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
                text += f": it never returns 0 in {join_names(never)}"
            if where0:
                text += ("; " if never else ": ") + "; ".join(where0)
            if worst:
                text += ". Its largest relative error over the sweep, on rows whose correctly rounded " \
                        "loss is a normal number: " + ", ".join(worst) + " (u = the format's unit roundoff)"
            out.append(Finding(text + ".", {"implementation": keeper, "zero_rows": tot[keeper]},
                               "cancellation"))
    tables: list[Block] = []
    if axis and info:
        body = []
        for names in identical_groups(res):
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
            body.append([group_name(names), *cells])
        tables.append(Table(["implementation", *fmts], body,
                            f"First {axis} at which the loss comes back as 0 for a non-zero truth "
                            f"(and from which {axis} every row does)."))
    return out, tables


def _overflow_cause(res: Results, fm: str, im: str) -> str:
    obj = res.extras.get("overflow")
    if not isinstance(obj, dict):
        return ""
    for row in as_rows((obj.get("tables") or {}).get("overflow causes")):
        if row.get("format") != fm or im not in (row.get("implementations") or []):
            continue
        nbad, n = row.get("non_finite"), row.get("rows")
        lnM = as_float(row.get("ln_max_finite"))
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
    axis = numeric_param(res)
    aggs = aggregate(res.summary)
    fmts = ordered_formats(a.format for a in aggs.values())
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
            text = f"In {fm}, {join_names(names)} {'return' if len(names) > 1 else 'returns'} inf/NaN"
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
        out.append(Finding(f"{join_names(never)} never return inf or NaN: a finite loss on every row "
                           f"({'/'.join(str(n) for n in n_each)} per format) in {join_names(fmts)}.",
                           {"implementations": never}, "overflow"))
    if clean_fmts and len(clean_fmts) < len(fmts):
        out.append(Finding(f"In {join_names(clean_fmts)} every implementation returns a finite loss on "
                           f"every row.", {"formats": clean_fmts}, "overflow"))
    tables: list[Block] = []
    if axis:
        body = []
        for names in identical_groups(res):
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
            body.append([group_name(names), *cells])
        tables.append(Table(["implementation", *fmts], body,
                            f"First {axis} with an inf/NaN loss (the last {axis} below it where all "
                            f"rows were finite), and how many rows in all."))
    return out, tables


def _key_trend(res: Results) -> tuple[list[Finding], list[Block]]:
    axis = numeric_param(res)
    if not axis:
        return [], []
    fmts = ordered_formats(str(r.get("format")) for r in res.summary)
    parts, ratios = [], []
    for fm in fmts:
        by: dict[float, list[float]] = {}
        for r in res.summary:
            if r.get("format") != fm or axis not in r:
                continue
            s, m = stat_count(r), as_float(r.get("ulp_error_mean"))
            if s and not math.isnan(m):
                w = by.setdefault(float(r[axis]), [0.0, 0.0, 0.0, 0.0])
                w[0] += m * s
                w[1] += s
                w[2] += exact_count(r)
                w[3] = max(w[3], as_float(r.get("ulp_error_max")))
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
    gname = {im: group_name(g) for g in identical_groups(res) for im in g}
    for (im, fm), a in aggregate(res.summary).items():
        if gname.get(im, im).split(" = ")[0] != im:
            continue  # one line per group of bit-identical implementations
        pts = sorted((r for r in res.summary if r.get("implementation") == im and r.get("format") == fm
                      and axis in r and stat_count(r) and as_float(r.get("ulp_error_mean")) > 0),
                     key=lambda r: r[axis])
        if len(pts) >= 2:
            m0, m1 = as_float(pts[0].get("ulp_error_mean")), as_float(pts[-1].get("ulp_error_mean"))
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
    fmts = ordered_formats(a.format for a in aggs.values())
    out: list[Finding] = []
    groups = identical_groups(res)
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
            f"Largest difference between formats: {join_names(big[1])}, correctly rounded on "
            + ", ".join(f"{fmt_pct(v)} in {fm}" for fm, v in big[2].items())
            + f" ({100 * big[0]:.1f} percentage points apart); smallest: {join_names(small[1])}, "
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
        for row in as_rows((b.get("tables") or {}).get("bounds vs measured")):
            k = (str(row.get("implementation")), str(row.get("bound")))
            v = acc.setdefault(k, [0, 0, 0.0, set()])
            v[0] += int(row.get("within") or 0)
            v[1] += int(row.get("rows") or 0)
            v[2] = max(v[2], as_float(row.get("max_measured_over_bound")) if row.get("max_measured_over_bound") is not None else 0.0)
            v[3].add(row.get("format"))
        if acc:
            parts = [f"{im} within the {bd} bound on {fmt_rate(w, n)} of rows (largest measured/bound "
                     f"{fmt_num(mx, 3)})" for (im, bd), (w, n, mx, _) in acc.items()]
            allok = all(w == n for w, n, _, _ in acc.values())
            out.append(Finding(("The error bounds hold on every row: " if allok else "Error bounds: ")
                               + "; ".join(parts) + ", over " + join_names(ordered_formats(
                                   set().union(*(v[3] for v in acc.values())))) + ".",
                               {"all_within": allok}, "bounds"))
    body = []
    for names in groups:
        cells = []
        for fm in fmts:
            a = aggs.get((names[0], fm))
            cells.append("—" if a is None or not a.stat else
                         f"{fmt_pct(a.exact / a.stat)} ({fmt_num(a.ulp_mean, 2)})")
        body.append([group_name(names), *cells])
    table = Table(["implementation", *fmts], body,
                  "Correctly rounded share per format (mean ULP error in that format's ULPs).")
    return out, [table]


def _key_capabilities(res: Results) -> tuple[list[Finding], list[Block]]:
    """The CPU-kernel study (capabilities.json): pass share per kernel set, what passing
    measures, each one's accuracy, and how much the kernel sets agree with each other."""
    obj = res.extras.get("capabilities")
    tables = (obj or {}).get("tables") or {} if isinstance(obj, dict) else {}
    per = as_rows(tables.get("per capability"))
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
    if "loop_mean_passed_1e-15" in per[0]:
        out.append(Finding(
            "The reduction decides the share: nn.CrossEntropyLoss's own per-sample losses, averaged "
            "left to right as the seed's loop does, pass the check on " + "; ".join(
                f"{fmt_rate(int(r['loop_mean_passed_1e-15']), n(r))} ({r['requested']})" for r in per)
            + "; torch's mean reduction equals that sequential mean on only " + "; ".join(
                f"{fmt_rate(int(r['loop_mean_equals_ce']), n(r))} ({r['requested']})" for r in per)
            + ". (The seed answer, posted in December 2021, reported 81.4%.)",
            {"loop_mean_pass": {r["requested"]: r["loop_mean_passed_1e-15"] for r in per}},
            "capabilities"))
    if "ce_correctly_rounded" in per[0]:
        out.append(Finding(
            "Against the correctly rounded mean loss, nn.CrossEntropyLoss is correctly rounded on "
            + "; ".join(f"{fmt_rate(int(r['ce_correctly_rounded']), n(r))} ({r['requested']})" for r in per)
            + "; the seed's loop on "
            + "; ".join(f"{fmt_rate(int(r['manual_correctly_rounded']), n(r))} ({r['requested']})"
                        for r in per)
            + f". Largest errors: nn.CrossEntropyLoss "
              f"{fmt_num(max(as_float(r.get('ce_ulp_error_max')) for r in per), 3)} ULP, the seed's loop "
              f"{fmt_num(max(as_float(r.get('manual_ulp_error_max')) for r in per), 3)} ULP.",
            {}, "capabilities"))
    between = as_rows(tables.get("between capabilities"))
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
    fmts = ordered_formats(a.format for a in aggs.values())
    best, worst = [], []
    for fm in fmts:
        rows = [a for a in aggs.values() if a.format == fm and a.stat]
        if not rows:
            continue
        most = max(a.stat for a in rows)
        rows = [a for a in rows if a.stat >= 0.5 * most]
        b = max(rows, key=lambda a: (a.exact / a.stat, -len(a.implementation)))
        tied = [a.implementation for a in rows if a.exact / a.stat == b.exact / b.stat]
        best.append(f"{fm} {join_names(tied)} {fmt_rate(b.exact, b.stat)}")
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
