"""Findings: the analyses' numbers turned into sentences, each carrying the numbers it rests on.

Every function here takes records (the summary, the analyses of
:mod:`precision_lab.explain.analyses`, the ``[compare]`` results) and returns
:class:`Finding` s; nothing reads text back.  :func:`key_findings` picks the answer to the
experiment's question -- 3 to 8 findings chosen by the mechanisms the data shows, most telling
first -- and a key table; :func:`all_findings` lists everything for the appendix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from precision_lab.explain.analyses import (
    AttributionAnalysis,
    BoundsAnalysis,
    CancellationAnalysis,
    Context,
    ExplainedRows,
    FormatsAnalysis,
    GradientAnalysis,
    NonfiniteAnalysis,
    OverflowAnalysis,
    OverflowGroup,
    TrendAnalysis,
)
from precision_lab.explain.data import group_label
from precision_lab.numerics.formats import get_format, ordered_formats
from precision_lab.report.document import Block, Table
from precision_lab.report.text import fmt_num, fmt_pct, fmt_rate, join_names

__all__ = ["Finding", "accuracy", "accuracy_short", "by_format", "agreement", "nonfinite",
           "overflow", "cancellation", "bounds", "bounds_summary", "attribution", "trend",
           "formats", "compare", "explained", "gradients"]



@dataclass
class Finding:
    """One claim with the numbers it rests on."""

    text: str
    numbers: dict[str, Any] = field(default_factory=dict)
    kind: str = "general"


# --------------------------------------------------------------------------- accuracy

def accuracy(ctx: Context) -> list[Finding]:
    """Per format: the most and least often correctly rounded implementation, and the largest
    and smallest worst-case error (implementations with finite results on at least half as many
    samples as the best one)."""
    out: list[Finding] = []
    for fm in ctx.data.formats:
        rows = [(im, s) for (im, f), s in ctx.stats.items() if f == fm and s.stat_count]
        if not rows:
            continue
        most = max(s.stat_count for _, s in rows)
        rows = [(im, s) for im, s in rows if s.stat_count >= 0.5 * most]
        rows.sort(key=lambda r: (-(r[1].exact_matches / r[1].stat_count), r[0]))
        (bi, bs), (wi, ws) = rows[0], rows[-1]
        text = (f"In {fm}, {bi} is correctly rounded on {fmt_rate(bs.exact_matches, bs.stat_count)}"
                " of the samples with a finite result")
        if wi != bi:
            text += f"; {wi} on {fmt_rate(ws.exact_matches, ws.stat_count)}"
        out.append(Finding(text + ".", {"format": fm, "best": bi, "worst": wi}, "accuracy"))
        big = max(rows, key=lambda r: r[1].ulp_error_max or 0.0)
        small = min(rows, key=lambda r: r[1].ulp_error_max or math.inf)
        out.append(Finding(
            f"In {fm}, the largest error is {fmt_num(big[1].ulp_error_max)} ULP ({big[0]}); the "
            f"smallest worst case is {fmt_num(small[1].ulp_error_max)} ULP ({small[0]}); a "
            "correctly rounded result is at most 0.5 ULP off the exact loss.",
            {"format": fm, "max_impl": big[0], "max_ulp": big[1].ulp_error_max}, "accuracy"))
    return out


def accuracy_short(ctx: Context) -> list[Finding]:
    """Two lines: the most often correctly rounded implementation per format, and the largest
    single error per format."""
    best, worst = [], []
    for fm in ctx.data.formats:
        rows = [(im, s) for (im, f), s in ctx.stats.items() if f == fm and s.stat_count]
        if not rows:
            continue
        most = max(s.stat_count for _, s in rows)
        rows = [(im, s) for im, s in rows if s.stat_count >= 0.5 * most]
        rate = max(s.exact_matches / s.stat_count for _, s in rows)
        tied = [im for im, s in rows if s.exact_matches / s.stat_count == rate]
        s0 = next(s for im, s in rows if im == tied[0])
        best.append(f"{fm} {join_names(tied)} {fmt_rate(s0.exact_matches, s0.stat_count)}")
        w = max(rows, key=lambda r: r[1].ulp_error_max or 0.0)
        worst.append(f"{fm} {fmt_num(w[1].ulp_error_max)} ULP ({w[0]})")
    out = []
    if best:
        out.append(Finding("Most often correctly rounded (finite results): " + "; ".join(best)
                           + ".", {}, "accuracy"))
    if worst:
        out.append(Finding("Largest single error: " + "; ".join(worst)
                           + "; a correctly rounded result is within 0.5 ULP.", {}, "accuracy"))
    return out


def by_format(ctx: Context) -> list[Finding]:
    """One line per implementation: its correctly rounded share and mean error per format."""
    fmts = ctx.data.formats
    if len(fmts) < 2:
        return []
    out = []
    for im in ctx.data.implementations:
        parts = []
        for fm in fmts:
            s = ctx.stats.get((im, fm))
            if s is not None and s.stat_count:
                parts.append(f"{fm} {fmt_pct(s.exact_matches / s.stat_count)} (mean "
                             f"{fmt_num(s.ulp_error_mean, 3)} ULP)")
        if len(parts) >= 2:
            out.append(Finding(f"{im}, correctly rounded share by format: " + "; ".join(parts)
                               + ".", {"implementation": im}, "by_format"))
    return out


def agreement(ctx: Context) -> list[Finding]:
    """Pairs bit-identical on every sample of a format (at least 10 samples), and the least
    agreeing pair per format."""
    rows = [r for r in ctx.res.agreement() if r.quantity == "loss"]
    by: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        v = by.setdefault((r.format, r.implementation_a, r.implementation_b), [0, 0, 0])
        v[0] += r.count
        v[1] += int(round((r.identical_rate or 0.0) * r.count))
        v[2] = max(v[2], r.ulp_distance_max or 0)
    out: list[Finding] = []
    identical: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for fm in ordered_formats({k[0] for k in by}):
        pairs: list[tuple[str, str, int, int, int]] = [
            (k[1], k[2], v[0], v[1], v[2]) for k, v in by.items() if k[0] == fm and v[0]]
        for a, b, n, same, _ in pairs:
            if same == n:
                identical.setdefault((a, b), []).append((fm, n))
        rest = [p for p in pairs if p[3] < p[2]]
        if rest:
            a, b, n, same, dmax = min(rest, key=lambda p: p[3] / p[2])
            out.append(Finding(f"In {fm}, the least agreeing pair is {a} vs {b}: bit-identical on "
                               f"{fmt_rate(same, n)}, up to {fmt_num(dmax)} ULP apart.",
                               {"format": fm, "a": a, "b": b}, "agreement"))
    for (a, b), where in identical.items():
        n = sum(w[1] for w in where)
        if n >= 10 * len(where):
            out.insert(0, Finding(f"{a} and {b} give bit-identical losses on every sample in "
                                  f"{join_names([w[0] for w in where])} ({n}/{n}).",
                                  {"a": a, "b": b}, "agreement"))
    return out


# --------------------------------------------------------------------------- non-finite

_VERBS = {"overflow": ("overflows to inf on", "overflow to inf on"),
          "nan": ("returns NaN on", "return NaN on"),
          "missed_inf": ("misses an infinite truth on", "miss an infinite truth on")}


def nonfinite(an: NonfiniteAnalysis) -> list[Finding]:
    out = []
    for c in sorted(an.counts, key=lambda c: (ordered_formats([c.format]), c.category)):
        text = (f"{join_names(c.implementations)} {_VERBS[c.category][len(c.implementations) > 1]}"
                f" {c.count} of {c.total} {c.format} samples")
        if c.first is not None and an.axis:
            text += f"; first at {an.axis} = {fmt_num(c.first)}"
            if c.last_clean is not None:
                text += f" (none at {an.axis} = {fmt_num(c.last_clean)})"
        out.append(Finding(text + ".", {"format": c.format, "category": c.category,
                                        "count": c.count, "total": c.total}, "nonfinite"))
    by_fmt: dict[tuple, list[str]] = {}  # (counts, implementations) -> formats
    per: dict[tuple, list[str]] = {}
    for r in an.from_input:
        per.setdefault((r["format"], r["inf"], r["nan"], r["matching_truth"]),
                       []).append(r["implementation"])
    for (fm, inf, nan, match), names in per.items():
        by_fmt.setdefault((inf, nan, match, tuple(names)), []).append(fm)
    for (inf, nan, match, names), fmts in by_fmt.items():
        parts = [f"{k} {w}" for k, w in ((inf, "inf"), (nan, "NaN")) if k]
        agree = ("all equal to the truth" if match == inf + nan else
                 f"{match} of them equal to the truth")
        out.append(Finding(f"{join_names(list(names))} "
                           f"{'return' if len(names) > 1 else 'returns'} "
                           f"{' and '.join(parts)} in "
                           f"{'each of ' if len(fmts) > 1 else ''}{join_names(fmts)} on samples "
                           f"whose truth is itself inf or NaN ({agree}): caused by the input "
                           "(logits that hold inf or NaN, or a mean over no kept row), not by "
                           "overflow.", {"formats": fmts, "implementations": list(names)},
                           "nonfinite"))
    return out


def _overflow_cause(g: OverflowGroup) -> str:
    if g.input_nonfinite == g.non_finite:
        return "every one of these rows already holds an inf or NaN logit (the input's doing)"
    if g.probability_underflow == g.non_finite:
        return (f"on every one of them the target's probability exp(x_t - lse) is below half "
                f"the smallest positive {g.format} value: it underflows to 0 and -log 0 = inf")
    if g.shifted_sum_overflow and g.shifted_sum_overflow == g.non_finite:
        return (f"the shifted sum exp(x_j - max) itself passes the largest finite {g.format} "
                f"value on all {g.non_finite} failing rows (smallest such sum "
                f"{fmt_num(g.smallest_shifted_sum_non_finite, 6)})")
    if not g.shifted_sum_overflow and not g.input_nonfinite \
            and g.non_finite == g.rows_lse_above_ln_max == g.non_finite_rows_lse_above:
        fin = g.largest_lse_finite
        return (f"exactly the {g.non_finite} of {g.rows} rows whose lse(x) exceeds ln(max finite) "
                f"= {g.ln_max_finite:.3f} (smallest such lse "
                f"{fmt_num(g.smallest_lse_non_finite, 6)}"
                + (f", largest lse of a finite row {fmt_num(fin, 6)}" if fin is not None else "")
                + f"): in {g.exp_overflow} of them a single exp already overflows, in "
                f"{g.unshifted_sum_overflow} only the sum")
    parts = [f"{n} {what}" for n, what in (
        (g.exp_overflow, "with a single exp overflowing"),
        (g.unshifted_sum_overflow, "with only the unshifted sum overflowing"),
        (g.shifted_sum_overflow, "with the shifted sum overflowing"),
        (g.probability_underflow, "where the target's probability underflows to 0 (and -log 0 "
                                  "= inf)"),
        (g.input_nonfinite, "whose input holds inf/NaN"), (g.other, "otherwise")) if n]
    return ", ".join(parts)


def overflow(an: OverflowAnalysis, nf: "NonfiniteAnalysis | None") -> tuple[list[Finding],
                                                                            list[Block]]:
    """Where each implementation's loss becomes inf/NaN and why; which never do."""
    out = []
    for g in sorted(an.groups, key=lambda g: (ordered_formats([g.format]), g.first or 0)):
        text = (f"In {g.format}, {join_names(g.implementations)} "
                f"{'return' if len(g.implementations) > 1 else 'returns'} inf/NaN")
        if g.first is not None and an.axis:
            text += f" from {an.axis} = {fmt_num(g.first)}"
            if g.last_clean is not None:
                text += f" (finite at {an.axis} = {fmt_num(g.last_clean)})"
        text += f", on {g.non_finite} of {g.rows} rows: {_overflow_cause(g)}."
        out.append(Finding(text, {"format": g.format, "implementations": g.implementations,
                                  "count": g.non_finite, "rows": g.rows}, "overflow"))
    if nf is not None:
        fmts = sorted(nf.rows_per_format, key=lambda f: ordered_formats([f]))
        if nf.never and len(nf.never) < len({i for c in nf.counts for i in c.implementations}
                                            | set(nf.never)):
            n_each = sorted(set(nf.rows_per_format.values()))
            rows = (f"{n_each[0]} per format" if len(n_each) == 1 else
                    ", ".join(f"{nf.rows_per_format[f]} in {f}" for f in fmts))
            out.append(Finding(f"{join_names(nf.never)} never return a spurious inf or NaN: a "
                               f"finite loss on every row with finite logits ({rows}) in "
                               f"{join_names(ordered_formats(fmts))}.",
                               {"implementations": nf.never}, "overflow"))
        if nf.clean_formats and len(nf.clean_formats) < len(fmts):
            out.append(Finding(f"In {join_names(nf.clean_formats)} every implementation returns a "
                               "finite loss on every row with finite logits.",
                               {"formats": nf.clean_formats}, "overflow"))
    return out, []


# --------------------------------------------------------------------------- cancellation

def cancellation(an: CancellationAnalysis, ctx: Context) -> tuple[list[Finding], list[Block]]:
    out: list[Finding] = []
    axis = an.axis
    for fm in ctx.data.formats:
        rows = [r for r in an.rows if r.format == fm]
        if not rows:
            continue
        groups: dict[tuple, list[str]] = {}
        for r in rows:
            groups.setdefault((r.first, r.all_from, r.zero, r.nonfinite_after, r.rows),
                              []).append(r.implementation)
        parts = []
        for (first, all_from, k, nfa, n), names in sorted(
                groups.items(), key=lambda kv: (kv[0][1] is None, kv[0][0] or 0, -kv[0][2])):
            if axis and first is not None:
                s = f"{join_names(names)} from {axis} = {fmt_num(first)}"
                if all_from is not None:
                    s += f" (every row from {fmt_num(all_from)})"
                else:
                    s += f" ({k} of {n} rows" + (f"; {nfa} more are inf/NaN" if nfa else "") + ")"
            else:
                s = f"{join_names(names)} on {k} of {n} rows"
            parts.append(s)
        text = ("In " + fm + ", the loss comes back as exactly 0 although the true loss is not 0: "
                + "; ".join(parts))
        if fm in an.truth_zero_from and axis:
            text += (f". From {axis} = {fmt_num(an.truth_zero_from[fm])} on, the correctly rounded "
                     f"loss itself is 0 in {fm} (a 0 there is right)")
        out.append(Finding(text + ".", {"format": fm}, "cancellation"))
    k = an.keeper
    if k is not None:
        text = f"{k.implementation} keeps the loss"
        if k.never_formats:
            text += f": it never returns 0 in {join_names(k.never_formats)}"
        if k.zero_in:
            text += ("; " if k.never_formats else ": ") + "; ".join(
                f"in {z.format} it returns 0 on {z.zero} of {z.rows} rows"
                + (f" from {axis} = {fmt_num(z.first)}" if z.first is not None and axis else "")
                + f", where the correctly rounded loss is at most {fmt_num(z.lost_max, 3)} (the "
                f"smallest positive {z.format} is "
                f"{fmt_num(get_format(z.format).smallest_subnormal, 3)})" for z in k.zero_in)
        if k.worst_relative_u:
            text += (". Its largest relative error over the sweep, on rows whose correctly "
                     "rounded loss is a normal number: " + ", ".join(
                         f"{fmt_num(v, 3)} u in {fm}" for fm, v in k.worst_relative_u.items())
                     + " (u = the format's unit roundoff)")
        out.append(Finding(text + ".", {"implementation": k.implementation,
                                        "zero_rows": k.zero_rows}, "cancellation"))
    tables: list[Block] = []
    if axis:
        info = {(r.format, r.implementation): r for r in an.rows}
        fmts = ctx.data.formats
        body = []
        for g in ctx.groups:
            cells = []
            for fm in fmts:
                zr = info.get((fm, g[0]))
                if (g[0], fm) not in ctx.stats:
                    cells.append("—")
                elif zr is None:
                    cells.append("never")
                elif zr.all_from is not None:
                    cells.append(f"{fmt_num(zr.first)} (all from {fmt_num(zr.all_from)})")
                else:
                    cells.append(f"{fmt_num(zr.first)} ({zr.zero}/{zr.rows} rows)")
            body.append([group_label(g), *cells])
        tables.append(Table(["implementation", *fmts], body,
                            f"First {axis} at which the loss comes back as 0 for a non-zero "
                            f"truth (and from which {axis} every row does)."))
    return out, tables


# --------------------------------------------------------------------------- bounds, attribution

_BOUND_NAMES = {"bhh": "BHH leading-order estimate (shifted lse, carried to the loss)",
                "derived": "rigorous bound (under the library error model LIBRARY_ULP)"}


def bounds(an: BoundsAnalysis) -> list[Finding]:
    out = []
    acc: dict[tuple[str, str], list[Any]] = {}
    for c in an.checks:
        v = acc.setdefault((c.implementation, c.bound), [0, 0, 0.0, []])
        v[0] += c.within
        v[1] += c.rows
        v[2] = max(v[2], c.max_measured_over_bound or 0.0)
        v[3].append(c.format)
        text = (f"In {c.format}, {c.implementation}'s measured error is within the "
                f"{_BOUND_NAMES[c.bound]} bound on {fmt_rate(c.within, c.rows)} of sampled rows "
                f"(largest measured/bound {fmt_num(c.max_measured_over_bound, 3)}; median bound "
                f"{fmt_num(c.median_bound_u, 3)} u, median measured "
                f"{fmt_num(c.median_measured_u, 3)} u)")
        if c.void_rows:
            text += f"; on {c.void_rows} more rows it does not apply"
        if c.violations:
            text += (f". It fails on {c.violations} rows; on {c.violations_below_final_rounding}"
                     " of them |y + n - min x| < |y|: the formula is smaller than the rounding of "
                     "lse itself (u|y|), which it leaves out when all logits are large")
        out.append(Finding(text + ".", {"format": c.format, "implementation": c.implementation,
                                        "bound": c.bound, "within": c.within, "rows": c.rows},
                           "bounds"))
    return out


def bounds_summary(an: BoundsAnalysis) -> Finding:
    acc: dict[tuple[str, str], list[Any]] = {}
    fmts: set[str] = set()
    for c in an.checks:
        v = acc.setdefault((c.implementation, c.bound), [0, 0, 0.0])
        v[0] += c.within
        v[1] += c.rows
        v[2] = max(v[2], c.max_measured_over_bound or 0.0)
        fmts.add(c.format)
    allok = all(w == n for w, n, _ in acc.values())
    parts = [f"{im} within the {_BOUND_NAMES[bd]} bound on {fmt_rate(w, n)} of rows (largest "
             f"measured/bound {fmt_num(mx, 3)})" for (im, bd), (w, n, mx) in acc.items()]
    return Finding(("The error bounds and estimates hold on every sampled row: " if allok
                    else "Error bounds and estimates: ")
                   + "; ".join(parts) + f", over {join_names(ordered_formats(fmts))} (up to "
                   f"{an.sample_rows} rows per format).", {"all_within": allok}, "bounds")


def attribution(an: AttributionAnalysis) -> list[Finding]:
    out = []
    for d in an.decisive:
        if not d.decided_at:
            continue
        top = max(d.decided_at, key=lambda k: d.decided_at[k])
        others = [f"{k} {v}" for k, v in d.decided_at.items() if k != top]
        out.append(Finding(f"In {d.format}, the {d.worst_rows} worst rows of {d.implementation} "
                           f"(ULP error > 0.5 or non-finite) are decided at step '{top}' in "
                           f"{d.decided_at[top]} of {d.worst_rows}"
                           + (f"; others: {', '.join(others)}" if others else "") + ".",
                           {"format": d.format, "implementation": d.implementation},
                           "attribution"))
    by_fmt: dict[str, list[Any]] = {}
    for m in an.fused:
        by_fmt.setdefault(m.format, []).append(m)
    for fm, ms in by_fmt.items():
        comp = [m for m in ms if m.composite != "torch_logsoftmax_nll"]
        if not comp:
            continue
        best = max(comp, key=lambda m: m.identical)
        nll = next((m for m in ms if m.composite == "torch_logsoftmax_nll"), None)
        out.append(Finding(f"In {fm}, torch's fused cross_entropy is bit-identical to the "
                           f"composite {best.composite} on {fmt_rate(best.identical, best.rows)} "
                           "of sampled rows"
                           + (f" (to torch_logsoftmax_nll on {fmt_rate(nll.identical, nll.rows)})"
                              if nll else "") + ".", {"format": fm, "best": best.composite},
                           "attribution"))
    return out


# --------------------------------------------------------------------------- trend, formats

def trend(an: TrendAnalysis) -> list[Finding]:
    parts = [f"{t.format} {fmt_num(t.mean_first, 3)} at {fmt_num(t.first)} → "
             f"{fmt_num(t.mean_last, 3)} at {fmt_num(t.last)} (largest single error "
             f"{fmt_num(t.largest, 3)})" for t in an.formats]
    verdict = (f"pooled, it does not grow with {an.axis} (largest ratio last/first "
               f"{an.max_ratio:.2f})" if an.max_ratio <= 1.5 else
               f"pooled, it grows with {an.axis}, by up to a factor of {an.max_ratio:.3g}")
    extra = ""
    if an.largest_growth is not None:
        lab, fm, x0, m0, x1, m1 = an.largest_growth
        extra = (f"; the largest growth of one implementation is {lab} in {fm}, "
                 f"{fmt_num(m0, 3)} → {fmt_num(m1, 3)} ULP from {an.axis} = {fmt_num(x0)} to "
                 f"{fmt_num(x1)} (x{m1 / m0:.2g})")
    return [Finding(f"Mean ULP error against {an.axis} (all implementations pooled, finite "
                    "results): " + "; ".join(parts) + f": {verdict}{extra}.",
                    {"axis": an.axis, "max_ratio": an.max_ratio}, "trend")]


def formats(an: FormatsAnalysis, bnd: "BoundsAnalysis | None") -> tuple[list[Finding],
                                                                         list[Block]]:
    out: list[Finding] = []
    groups: dict[str, dict[str, Any]] = {}
    for s in an.shares:
        groups.setdefault(group_label(s.group), {})[s.format] = s
    spreads = []
    for lab, by in groups.items():
        shares = {fm: s.exact / s.stat for fm, s in by.items() if s.stat}
        if len(shares) >= 2:
            spreads.append((max(shares.values()) - min(shares.values()), lab, shares))
    if spreads:
        spreads.sort(key=lambda s: -s[0])
        big, small = spreads[0], spreads[-1]
        out.append(Finding(
            f"Largest difference between formats: {big[1]}, correctly rounded on "
            + ", ".join(f"{fmt_pct(v)} in {fm}" for fm, v in big[2].items())
            + f" ({100 * big[0]:.1f} percentage points apart); smallest: {small[1]}, "
            + ", ".join(f"{fmt_pct(v)} in {fm}" for fm, v in small[2].items()) + ".",
            {"largest": big[1], "spread": big[0]}, "formats"))
    means = [(s.ulp_error_mean, group_label(s.group), s.format) for s in an.shares
             if s.ulp_error_mean is not None]
    if means:
        lo, hi = min(means), max(means)
        out.append(Finding(
            f"Measured in each format's own ULPs, every implementation's mean error lies between "
            f"{fmt_num(lo[0], 3)} ULP ({lo[1]}, {lo[2]}) and {fmt_num(hi[0], 3)} ULP ({hi[1]}, "
            f"{hi[2]}).", {"min": lo[0], "max": hi[0]}, "formats"))
    if bnd is not None:
        out.append(bounds_summary(bnd))
    body = []
    for lab, by in groups.items():
        cells = []
        for fm in an.formats:
            sh = by.get(fm)
            cells.append("—" if sh is None or not sh.stat else
                         f"{fmt_pct(sh.exact / sh.stat)} ({fmt_num(sh.ulp_error_mean, 2)})")
        body.append([lab, *cells])
    return out, [Table(["implementation", *an.formats], body,
                       "Correctly rounded share per format (mean ULP error in that format's "
                       "ULPs).")]


# --------------------------------------------------------------------------- compare, explained

def compare(ctx: Context) -> tuple[list[Finding], list[Block]]:
    out: list[Finding] = []
    tables: list[Block] = []
    env = ctx.res.manifest.environment
    where = ", ".join(x for x in (f"torch {env['torch']}" if env.get("torch") else "",
                                  f"CPU capability {env['torch_cpu_capability']}"
                                  if env.get("torch_cpu_capability") else "") if x)
    results = ctx.res.compare()
    for r in results[:2]:
        at = ("at " + ", ".join(f"{k} = {v}" for k, v in r.params.items())
              if len(results) > 1 and r.params else "")
        out.append(Finding(
            f"{r.a} and {r.b} pass the check |a - b| < {r.abs_tol:g} on "
            f"{fmt_rate(r.passed, r.count)} of the {r.format} samples "
            + (at if at else "on this machine" + (f" ({where})" if where else "")) + ".",
            {"passed": r.passed, "count": r.count, **r.params}, "compare"))
        if r.ulp_at_median_reference is not None:
            out.append(Finding(
                f"{r.abs_tol:g} is a bit-identity test in {r.format}: one ULP near the median "
                f"loss {fmt_num(r.median_reference)} is {fmt_num(r.ulp_at_median_reference, 3)}"
                + (f", the smallest non-zero difference between the two is "
                   f"{fmt_num(r.smallest_nonzero_difference, 3)}"
                   if r.smallest_nonzero_difference is not None else "")
                + (f", and the samples that pass are exactly the bit-identical ones "
                   f"({r.identical} of {r.count})" if r.identical == r.passed
                   else f"; bit-identical on {r.identical} of {r.count}") + ".",
                {"ulp": r.ulp_at_median_reference, "identical": r.identical}, "compare"))
        counts = r.ulp_distance.get("counts") or {}
        if counts:
            order = sorted(counts.items(), key=lambda kv: int(kv[0]))
            out.append(Finding(f"ULP distance between {r.a} and {r.b} over the {r.count} samples"
                               + (f" {at}" if at else "") + ": "
                               + ", ".join(f"{v} at {d} ULP" for d, v in order) + ".",
                               {"counts": counts}, "compare"))
            tables.append(Table(["ULP distance |a - b|", "samples", "share",
                                 f"passes {r.abs_tol:g}"],
                                [[d, v, fmt_rate(int(v), r.count), "yes" if int(d) == 0 else "no"]
                                 for d, v in order],
                                f"Distance between {r.a} and {r.b} in {r.format} ULPs"
                                + (f" {at}" if at else "") + "."))
        ea, eb = r.a_ulp_error, r.b_ulp_error
        if ea.count and eb.count:
            def one(name: str, e: Any) -> str:
                k = int(round((e.exact_match_rate or 0.0) * e.count))
                return (f"{name} is correctly rounded on {fmt_rate(k, e.count)} (mean error "
                        f"{fmt_num(e.mean, 3)} ULP, max {fmt_num(e.max, 3)})")
            out.append(Finding("Against the correctly rounded truth" + (f" {at}" if at else "")
                               + f", {one(r.a, ea)}; "
                               f"{one(r.b, eb)}. A correctly rounded result is within 0.5 ULP.",
                               {"a_mean": ea.mean, "b_mean": eb.mean}, "compare"))
    return out, tables


def explained(an: ExplainedRows) -> tuple[list[Finding], list[Block]]:
    """Per format, row 0 of a tiny experiment: every implementation's value and error."""
    from precision_lab.report.explain_text import verdict

    per_fmt: dict[str, Any] = {}
    for e in an.rows:
        per_fmt.setdefault(e.format, e)
    fmts = ordered_formats(per_fmt)
    out: list[Finding] = []
    first = per_fmt.get("float32") or per_fmt[fmts[0]]
    out.append(Finding(verdict(first)[0], {"format": first.format}, "explained"))
    for fm in sorted(fmts, key=lambda f: (f != "float32", fmts.index(f))):
        e = per_fmt[fm]
        by_val: dict[str, list[Any]] = {}
        for v in e.implementations.values():
            by_val.setdefault(v.repr, []).append(v)
        parts = []
        for val, vs in sorted(by_val.items(), key=lambda kv: kv[1][0].ulp_error
                              if kv[1][0].ulp_error is not None else math.inf):
            parts.append(f"{join_names([v.implementation for v in vs])} "
                         f"{'return' if len(vs) > 1 else 'returns'} {val} "
                         f"({fmt_num(vs[0].ulp_error)} ULP"
                         + (", correctly rounded" if vs[0].correctly_rounded else "") + ")")
        out.append(Finding(f"In {fm} the correctly rounded loss is {e.reference_repr} (exact "
                           f"{e.exact}): " + "; ".join(parts) + ".",
                           {"format": fm, "reference": e.reference}, "explained"))
    impls = list(dict.fromkeys(k for fm in fmts for k in per_fmt[fm].implementations))
    body = []
    for im in impls:
        cells = []
        for fm in fmts:
            v = per_fmt[fm].implementations.get(im)
            cells.append("—" if v is None else f"{v.repr} ({fmt_num(v.ulp_error, 3)} ULP"
                         + (", CR" if v.correctly_rounded else "") + ")")
        body.append([im, *cells])
    table = Table(["implementation", *fmts], body,
                  "Each implementation's value (its ULP error; CR = correctly rounded). "
                  "Correctly rounded loss: " + "; ".join(f"{f} {per_fmt[f].reference_repr}"
                                                        for f in fmts) + ".")
    return out, [table]


def gradients(an: GradientAnalysis) -> list[Finding]:
    """Per format: how often each implementation's gradient elements are correctly rounded and
    its largest error; then, over all formats, the elements flushed to 0 (or made inf/NaN)
    and those that underflow in the truth itself."""
    out = []
    fmts = ordered_formats({r.format for r in an.rows})
    for fm in fmts:
        rows = [r for r in an.rows if r.format == fm]
        parts = [f"{r.implementation} {fmt_rate(r.exact, r.stat)} (largest "
                 f"{fmt_num(r.ulp_error_max, 3)} ULP)" for r in rows]
        out.append(Finding(f"In {fm}, gradient elements correctly rounded: " + "; ".join(parts)
                           + ".", {"format": fm}, "gradients"))
    lost, bad, under = [], [], []
    for fm in fmts:
        rows = [r for r in an.rows if r.format == fm]
        z = [r for r in rows if r.zero_for_nonzero]
        if z:
            sub = all(r.subnormal_lost == r.zero_for_nonzero for r in z)
            lost.append(f"{fm}: " + ", ".join(f"{r.implementation} {r.zero_for_nonzero}"
                                              for r in z)
                        + f" of {z[0].elements}" + (" (all subnormal in the truth)" if sub
                                                    else ""))
        bad += [f"{r.implementation} in {fm} on {r.nonfinite}" for r in rows if r.nonfinite]
        u = max((r.truth_underflow for r in rows), default=0)
        if u:
            under.append(f"{u} in {fm}")
    if lost:
        out.append(Finding("Gradient elements returned as 0 although the correctly rounded "
                           "truth is not 0 -- " + "; ".join(lost) + ".", {}, "gradients"))
    if bad:
        out.append(Finding("Gradient elements that are inf/NaN where the truth is finite: "
                           + "; ".join(bad) + ".", {}, "gradients"))
    if under:
        out.append(Finding("Gradient elements whose exact value underflows the format "
                           "(correctly rounded to 0, so a 0 there is right): "
                           + ", ".join(under) + ".", {}, "gradients"))
    return out
