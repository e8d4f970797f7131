"""The answer a report leads with: 3 to 8 findings chosen by the mechanisms the data shows
(a comparison, a row-by-row explanation, results of 0 for a non-zero loss, inf/NaN results, a
trend along the sweep axis, formats side by side), most telling first, and one key table; and
every finding for the appendix."""

from __future__ import annotations

from typing import Any

from precision_lab.explain.analyses import Context
from precision_lab.explain.data import NONFINITE_CATEGORIES
from precision_lab.report.document import Block
from precision_lab.report.findings import (
    Finding,
    accuracy,
    accuracy_short,
    agreement,
    attribution,
    bounds,
    by_format,
    cancellation,
    compare,
    explained,
    formats,
    gradients,
    nonfinite,
    overflow,
    trend,
)

__all__ = ["key_findings", "all_findings", "mechanisms", "MAX_KEY_FINDINGS", "SIZE_AXES"]

MAX_KEY_FINDINGS = 8
#: Sweep axes that change the problem's size rather than its logits' values: along them the
#: report leads with how the error changes (a trend).
SIZE_AXES = {"classes", "batch_size", "samples", "vocab", "vocab_size", "V"}


def mechanisms(ctx: Context, analyses: dict[str, Any]) -> list[str]:
    """Which mechanisms this experiment's data shows, most telling first."""
    out: list[str] = []
    if ctx.res.compare():
        out.append("compare")
    if "explained" in analyses:
        out.append("explain")
    d = ctx.data
    total = d.computed.size or 1
    nf = int(d.cat_mask(*NONFINITE_CATEGORIES).sum())
    zero = int(d.zero_for_nonzero().sum())
    for share, name in sorted([(zero / total, "cancellation"), (nf / total, "overflow")],
                              reverse=True):
        if share >= 0.01 or (share > 0 and name == "overflow" and not out):
            out.append(name)
    if "overflow" not in out and analyses.get("nonfinite") is not None and \
            getattr(analyses["nonfinite"], "from_input", None):
        out.append("overflow")  # inf/NaN truths: say they are the input's doing
    axis = ctx.axis
    if axis and zero / total < 0.01 and nf / total < 0.1:
        if axis in SIZE_AXES:
            out.insert(len([m for m in out if m in ("compare", "explain")]), "trend")
        else:
            out.append("trend")
    if not axis and len(d.formats) >= 2 and "explain" not in out and "compare" not in out:
        out.append("formats")
    if "gradients" in analyses:
        out.append("gradients")
    return out


def _key(mech: str, ctx: Context, an: dict[str, Any]) -> tuple[list[Finding], list[Block]]:
    if mech == "compare":
        return compare(ctx)
    if mech == "explain":
        return explained(an["explained"])
    if mech == "cancellation" and "cancellation" in an:
        return cancellation(an["cancellation"], ctx)
    if mech == "overflow":
        if "overflow" in an:
            return overflow(an["overflow"], an.get("nonfinite"))
        return (nonfinite(an["nonfinite"]) if "nonfinite" in an else []), []
    if mech == "gradients":  # the worst format and the flushed elements lead
        found = gradients(an["gradients"])
        per_fmt = [f for f in found if "format" in f.numbers]
        rest = [f for f in found if f not in per_fmt]
        return per_fmt[:2] + rest[:1], []
    if mech == "trend" and "trend" in an:
        return trend(an["trend"]), []
    if mech == "formats" and "formats" in an:
        return formats(an["formats"], an.get("bounds"))
    return [], []


def _ok(rec: Any) -> bool:
    return not (isinstance(rec, dict) and "failed" in rec)


def key_findings(ctx: Context, analyses: dict[str, Any]
                 ) -> tuple[list[Finding], list[Block], list[str]]:
    """The answer: 3 to 8 findings, one key table, and the mechanisms they come from."""
    an = {k: v for k, v in analyses.items() if _ok(v)}
    mechs = mechanisms(ctx, an)
    found: list[Finding] = []
    tables: list[Block] = []
    for m in mechs:
        fs, ts = _key(m, ctx, an)
        found.extend(fs)
        if not tables:
            tables.extend(ts[:1])
    if len(found) < MAX_KEY_FINDINGS - 1 and "explain" not in mechs:
        acc = accuracy_short(ctx)
        found.extend(acc[:1] if "compare" in mechs else acc)
    if len(found) < 3:
        have = {f.text for f in found}
        for f in all_findings(ctx, analyses):
            if len(found) >= 3:
                break
            if f.text not in have:
                found.append(f)
    return found[:MAX_KEY_FINDINGS], tables, mechs


def all_findings(ctx: Context, analyses: dict[str, Any]) -> list[Finding]:
    """Every finding the data supports, for the appendix."""
    an = {k: v for k, v in analyses.items() if _ok(v)}
    out = accuracy(ctx) + by_format(ctx)
    if "nonfinite" in an:
        out += nonfinite(an["nonfinite"])
    if "overflow" in an:
        out += overflow(an["overflow"], None)[0]
    if "cancellation" in an:
        out += cancellation(an["cancellation"], ctx)[0]
    if "bounds" in an:
        out += bounds(an["bounds"])
    if "attribution" in an:
        out += attribution(an["attribution"])
    if "trend" in an:
        out += trend(an["trend"])
    if "gradients" in an:
        out += gradients(an["gradients"])
    out += compare(ctx)[0] + agreement(ctx)
    return out
