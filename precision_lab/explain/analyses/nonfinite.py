"""Non-finite results: how many, where, and why (overflow of which sum, or the input)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from precision_lab.explain.analyses.context import (
    Context,
    first_and_clean,
    input_nonfinite,
    transient,
)
from precision_lab.explain.data import NONFINITE_CATEGORIES
from precision_lab.numerics.formats import get_format

# --------------------------------------------------------------------------- non-finite

@dataclass(frozen=True)
class NonfiniteCount:
    """Non-finite results of a group of implementations with identical counts in one format.

    ``category``: "overflow" (inf, truth finite), "nan" (NaN, truth not NaN), "missed_inf"
    (finite, truth infinite); ``first`` / ``last_clean``: first axis value with one and the
    last below it with none (None without a numeric axis)."""

    format: str
    category: str
    implementations: list[str]
    count: int
    total: int
    first: "float | None" = None
    last_clean: "float | None" = None


@dataclass(frozen=True)
class NonfiniteAnalysis:
    """Non-finite results: the spurious ones (by category) and those on rows whose logits
    already hold inf or NaN.

    ``counts``: spurious inf/NaN on rows with finite logits; ``from_input``: per format and
    implementation, inf and NaN results on rows whose logits hold inf/NaN, and how many of
    them equal the truth (which follows the reference's rules for such rows: inf, NaN, or 0 for
    a lone +inf target); ``never``: implementations with no spurious inf/NaN anywhere."""

    axis: "str | None"
    counts: list[NonfiniteCount]
    from_input: list[dict[str, Any]]
    never: list[str]
    clean_formats: list[str]
    rows_per_format: dict[str, int]



def nonfinite(ctx: Context) -> "NonfiniteAnalysis | None":
    d = ctx.data
    from_logits = input_nonfinite(ctx)
    spurious = d.cat_mask(*NONFINITE_CATEGORIES) & ~from_logits
    by_input = from_logits & ~np.isfinite(d.computed)
    if not spurious.any() and not by_input.any():
        return None
    counts: list[NonfiniteCount] = []
    groups: dict[tuple, list[str]] = {}
    axis_v = d.axes.get(ctx.axis) if ctx.axis else None
    by = d.groups()
    for fm in d.formats:
        for im in d.implementations:
            idx = by.get((im, fm))
            if idx is None or not spurious[idx].any():
                continue
            for cat in NONFINITE_CATEGORIES:
                bad = d.cat_mask(cat)[idx] & ~from_logits[idx]
                k = int(bad.sum())
                if not k:
                    continue
                first = clean = None
                if axis_v is not None:
                    first, clean = first_and_clean(axis_v[idx], bad)
                groups.setdefault((fm, cat, k, int(idx.size), first, clean), []).append(im)
    for (fm, cat, k, n, first, clean), names in groups.items():
        counts.append(NonfiniteCount(fm, cat, names, k, n, first, clean))
    from_input = []
    for fm in d.formats:
        for im in d.implementations:
            idx = by.get((im, fm))
            if idx is None:
                continue
            sel = idx[by_input[idx]]
            if sel.size:
                from_input.append({"format": fm, "implementation": im,
                                   "inf": int(np.isinf(d.computed[sel]).sum()),
                                   "nan": int(np.isnan(d.computed[sel]).sum()),
                                   "matching_truth": int(d.cat_mask("inf_match", "undefined")
                                                         [sel].sum())})
    bad_impl = {d.impls[c] for c in np.unique(d.impl_code[spurious])}
    bad_fmt = {d.fmts[c] for c in np.unique(d.fmt_code[spurious])}
    never = [im for im in d.implementations if im not in bad_impl]
    clean = [fm for fm in d.formats if fm not in bad_fmt]
    first_impl = d.implementations[0]
    per_fmt = {fm: int(by[(first_impl, fm)].size) for fm in d.formats
               if (first_impl, fm) in by}
    return NonfiniteAnalysis(ctx.axis, counts, from_input, never, clean, per_fmt)


# --------------------------------------------------------------------------- overflow

@dataclass(frozen=True)
class OverflowGroup:
    """Why the loss of some implementations is inf/NaN in one format (identical counts).

    Causes, in exact arithmetic on the row's logits, with M the format's largest finite value:
    ``exp_overflow`` a single exp overflows (max x > ln M); ``unshifted_sum_overflow`` only the
    sum exp(x_j) = exp(lse) does (lse > ln M); ``shifted_sum_overflow`` even sum exp(x_j - max)
    reaches M; ``probability_underflow`` the target's probability exp(x_t - lse) is below half
    the smallest subnormal, so a formula that forms it gets 0 and -log 0 = inf;
    ``input_nonfinite`` the logits hold inf/NaN; ``other`` none of these.
    lse values are natural logs; the shifted sums are plain sums."""

    format: str
    implementations: list[str]
    rows: int
    non_finite: int
    exp_overflow: int
    unshifted_sum_overflow: int
    shifted_sum_overflow: int
    input_nonfinite: int
    other: int
    ln_max_finite: float
    probability_underflow: int
    rows_lse_above_ln_max: int
    non_finite_rows_lse_above: int
    smallest_lse_non_finite: "float | None"
    largest_lse_finite: "float | None"
    smallest_shifted_sum_non_finite: "float | None"
    largest_shifted_sum_finite: "float | None"
    first: "float | None" = None
    last_clean: "float | None" = None


@dataclass(frozen=True)
class OverflowAnalysis:
    axis: "str | None"
    groups: list[OverflowGroup]
    #: per format: [(implementations, x values, non-finite flags, "lse" | "shifted")]
    curves: Any = transient()


def overflow(ctx: Context) -> "OverflowAnalysis | None":
    d, facts = ctx.data, ctx.facts
    bad_all = d.cat_mask("overflow", "nan")
    if not bad_all.any() or facts is None or ctx.reduction != "none":
        return None
    axis_v = d.axes.get(ctx.axis) if ctx.axis else None
    out: list[OverflowGroup] = []
    curves: dict[str, list] = {}
    for fm in d.formats:
        f = get_format(fm)
        lnM = math.log(f.max_finite)
        fsel = d.fmt_mask(fm)
        groups: dict[tuple, list[str]] = {}
        per_impl: dict[str, tuple] = {}
        for im in d.implementations:
            idx = np.flatnonzero(fsel & d.impl_mask(im))
            if not idx.size:
                continue
            mx, lse = facts.of(d, idx, "row_max"), facts.of(d, idx, "lse")
            mn = facts.of(d, idx, "row_min")
            xt = facts.of(d, idx, "target_logit")
            with np.errstate(all="ignore"):
                sp = np.exp(lse - mx)  # sum_j exp(x_j - max)
            nf = bad_all[idx]
            inp = ~np.isfinite(mx) | ~np.isfinite(mn)
            per_impl[im] = (lse, sp, nf, inp)
            if not nf.any():
                continue
            c_in = nf & inp
            c_exp = nf & ~inp & (mx > lnM)
            c_sh = nf & ~inp & ~c_exp & (sp >= f.max_finite)
            c_un = nf & ~inp & ~c_exp & ~c_sh & (lse > lnM)
            with np.errstate(invalid="ignore"):
                tiny = (xt - lse) < math.log(f.smallest_subnormal) - math.log(2.0)
            c_pu = nf & ~inp & ~c_exp & ~c_sh & ~c_un & tiny
            c_other = nf & ~c_in & ~c_exp & ~c_sh & ~c_un & ~c_pu
            above = ~inp & (lse > lnM)
            fin = ~nf & ~inp
            first = clean = None
            if axis_v is not None:
                first, clean = first_and_clean(axis_v[idx], nf)

            def r6(a: np.ndarray, pick: Callable) -> "float | None":
                return float(f"{float(pick(a)):.6g}") if a.size else None

            key = (int(idx.size), int(nf.sum()), int(c_exp.sum()), int(c_un.sum()),
                   int(c_sh.sum()), int(c_in.sum()), int(c_other.sum()), int(above.sum()),
                   int((nf & above).sum()), r6(lse[nf & ~inp], np.min), r6(lse[fin], np.max),
                   r6(sp[c_sh], np.min), r6(sp[fin], np.max), first, clean, int(c_pu.sum()))
            groups.setdefault(key, []).append(im)
        for key, names in groups.items():
            out.append(OverflowGroup(fm, names, key[0], key[1], key[2], key[3], key[4], key[5],
                                     key[6], lnM, key[15], key[7], key[8], key[9], key[10],
                                     key[11], key[12], key[13], key[14]))
        # the plot: share of inf/NaN rows against ln(the sum the implementation forms) - ln M
        lines: dict[bytes, list[str]] = {}
        for im, (lse, sp, nf, inp) in per_impl.items():
            if nf.any():
                lines.setdefault(nf.tobytes(), []).append(im)
        curves[fm] = []
        for names in lines.values():
            lse, sp, nf, inp = per_impl[names[0]]
            shifted = bool((sp[nf & ~inp] >= f.max_finite).mean() > 0.5) if (nf & ~inp).any() \
                else False
            with np.errstate(all="ignore"):
                xv = (np.log(sp) if shifted else lse) - lnM
            ok = np.isfinite(xv)
            curves[fm].append((names, xv[ok], nf[ok], "shifted" if shifted else "lse"))
    return OverflowAnalysis(ctx.axis, out, curves) if out else None

