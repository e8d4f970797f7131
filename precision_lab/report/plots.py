"""Figures of a results folder: each function returns a :class:`Figure` (a matplotlib figure, its
file name and its caption) or None when its data is absent.  The report writes them
(:meth:`precision_lab.experiment.store.Writer.figure`); nothing here touches the disk.

Errors are in ULPs of each sample's own format.  A y axis is logarithmic only where the values
spread over more than a factor of 50 (:func:`log_y_wanted`); implementations that return the
same bits on every sample share one line or bar ("a = b"), and curves that agree to 3
significant digits share a line ("a ≈ b", :func:`same_curves`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

from precision_lab.explain.analyses import (  # noqa: E402
    BoundsAnalysis,
    CancellationAnalysis,
    Context,
    OverflowAnalysis,
)
from precision_lab.explain.data import NONFINITE_CATEGORIES, group_label  # noqa: E402
from precision_lab.numerics.formats import get_format  # noqa: E402

__all__ = ["Figure", "log_y_wanted", "same_curves", "error_by_format", "error_vs_axis",
           "ulp_hist", "overflow_figure", "cancellation_figure", "bounds_figure",
           "compare_figure", "ULP_LABEL"]

ULP_LABEL = "ULP error (ulps of the sample's format)"
_MARKERS = "os^Dvx<>"


@dataclass(eq=False)
class Figure:
    """A figure to write as ``plots/<name>``, with the caption the report shows under it."""

    name: str
    fig: Any
    caption: str


def log_y_wanted(values: Iterable[Any], ratio: float = 50.0) -> bool:
    """Whether values spread over so many orders of magnitude (largest / smallest positive
    above ``ratio``) that a log axis reads better than a linear one from 0."""
    pos = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    return bool(pos) and max(pos) / min(pos) > ratio


def same_curves(curves: dict, digits: int = 3) -> dict[tuple, list]:
    """Group curves that agree to ``digits`` significant digits at every point.

    ``curves`` maps a name to ``(xs, ys)``; returns ``{(xs, rounded ys): [names]}`` in the order
    first seen (draw the rounded ys: they are the shared line)."""
    out: dict[tuple, list] = {}
    for name, (xs, ys) in curves.items():
        key = (tuple(xs), tuple(float(f"{y:.{digits}g}") for y in ys))
        out.setdefault(key, []).append(name)
    return out


def _plain(v: float, _pos: Any = None) -> str:
    return f"{v:g}"


def _log(ax: Any, which: str = "y") -> None:
    """A log axis with plain tick labels (1e-03, 0.5, 100) and no minor ticks: mathtext labels
    and minor ticks cost most of a figure's drawing time."""
    for name in which:
        axis = ax.xaxis if name == "x" else ax.yaxis
        (ax.set_xscale if name == "x" else ax.set_yscale)("log")
        axis.set_major_formatter(FuncFormatter(_plain))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())


def _plain_log_ticks(ax: Any) -> None:
    """On a log y axis spanning at most 4 decades, ticks at 1, 2 and 5 per decade as plain
    numbers (0.2, 0.5, 1, 2, ...)."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo <= 1e4:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _panels(n: int, w: float, h: float, legend_w: float = 0.0, sharex: bool = False
            ) -> tuple[Any, list[Any]]:
    ncol = 2 if n > 1 else 1
    nrow = (n + 1) // 2
    fig, axs = plt.subplots(nrow, ncol, figsize=(w * ncol + legend_w, h * nrow), squeeze=False,
                            sharex=sharex)
    flat = list(axs.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _layout(fig: Any, legend_w: float = 0.0) -> None:
    """Fixed margins (in inches) instead of tight_layout, which costs more than drawing."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.85 / w, right=1 - (legend_w + 0.25) / w, bottom=0.75 / h,
                        top=1 - 0.7 / h, wspace=0.3, hspace=0.5)


# --------------------------------------------------------------------------- accuracy

def error_by_format(ctx: Context) -> "Figure | None":
    """Without a numeric sweep axis: per group of bit-identical implementations and format, the
    correctly rounded share and the mean ULP error, as grouped bars; inf/NaN counts written
    in red above the bars."""
    if ctx.axis or not ctx.stats:
        return None
    d = ctx.data
    fmts = d.formats
    groups = [g for g in ctx.groups if any((g[0], fm) in ctx.stats for fm in fmts)]
    n_max = max((s.stat_count for s in ctx.stats.values()), default=0)
    one = n_max <= 1
    fig, axs = plt.subplots(1, 1 if one else 2, figsize=(8 if one else 13, 4.9), squeeze=False)
    ax_list = list(axs[0])
    x = np.arange(len(groups))
    w = 0.8 / len(fmts)
    means_all = []
    for i, fm in enumerate(fmts):
        stats = [ctx.stats.get((g[0], fm)) for g in groups]
        share = [100 * s.exact_matches / s.stat_count if s and s.stat_count else np.nan
                 for s in stats]
        mean = [s.ulp_error_mean if s and s.ulp_error_mean is not None else np.nan
                for s in stats]
        means_all += [m for m in mean if np.isfinite(m)]
        xs = x + (i - (len(fmts) - 1) / 2) * w
        if not one:
            ax_list[0].bar(xs, share, w, label=fm, color=f"C{i}")
        ax_list[-1].bar(xs, mean, w, label=fm, color=f"C{i}")
        for xi, s, m in zip(xs, stats, mean):
            bad = sum(s.categories.get(c, 0) for c in NONFINITE_CATEGORIES) if s else 0
            if bad:
                ax_list[-1].annotate(f"{bad}/{s.count} inf/NaN" if s else "",
                                     (xi, m if np.isfinite(m) else 0), xytext=(0, 2),
                                     textcoords="offset points", rotation=90, ha="center",
                                     va="bottom", fontsize=7, color="C3")
    labels = ["\n= ".join(g) for g in groups]
    for ax in ax_list:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8, rotation=20, ha="right")
        ax.grid(axis="y", alpha=0.3)
    if not one:
        ax_list[0].set_ylabel("correctly rounded (% of finite results)")
        ax_list[0].set_ylim(0, 105)
        ax_list[0].set_title(f"correctly rounded share ({n_max} samples per format)", fontsize=10)
    ax = ax_list[-1]
    top = max(means_all, default=0.5)
    if log_y_wanted(means_all):
        _log(ax)
        lo = min(min(means_all), 0.5) / 2
        ax.set_ylim(lo, top * (top / lo) ** 0.35)
        _plain_log_ticks(ax)
    else:
        ax.set_ylim(0, max(top, 0.5) * 1.35)
    ax.axhline(0.5, color="k", ls=":", lw=1)
    ax.set_ylabel(("ULP error" if one else "mean ULP error") + " (ulps of that format)")
    ax.set_title("ULP error of the one sample" if one else
                 "mean ULP error of finite results (dotted: 0.5 ULP)", fontsize=10)
    ax.legend(title="format", fontsize=8, title_fontsize=8, loc="upper left",
              ncol=len(fmts))
    fig.suptitle(f"{ctx.res.name}: each implementation in each format", fontsize=11)
    _layout(fig)
    cap = ("Per implementation and format: " + ("the ULP error of the single sample"
           if one else "the share of finite results that are correctly rounded (left) and the "
           "mean ULP error (right)") + ", each in its own format's ULPs; the dotted line is "
           "0.5 ULP, the most a correctly rounded result is off. Implementations that return the "
           "same bits on every sample share a bar; red numbers count inf/NaN results, which "
           "are not averaged in.")
    return Figure("error_by_format.png", fig, cap)


def error_vs_axis(ctx: Context) -> "Figure | None":
    """With a numeric sweep axis: one panel per format, each group's mean (solid) and largest
    (dashed) ULP error against the axis."""
    axis = ctx.axis
    if not axis:
        return None
    summary = ctx.summary
    fmts = ctx.data.formats
    lead = [g[0] for g in ctx.groups]
    label = {g[0]: group_label(g) for g in ctx.groups}
    vals = sorted({float(r.params[axis]) for r in summary})
    logx = vals[0] > 0 and vals[-1] / vals[0] >= 100
    ys_all = [r.stats.ulp_error_mean for r in summary] + [r.stats.ulp_error_max for r in summary]
    logy = log_y_wanted(ys_all)
    fig, axs = _panels(len(fmts), 5.4, 3.7, legend_w=2.8, sharex=True)
    handles: dict[str, Any] = {}
    for ax, fm in zip(axs, fmts):
        curves = {}
        for im in lead:
            pts = sorted((r for r in summary if r.implementation == im and r.format == fm
                          and r.stats.ulp_error_mean is not None), key=lambda r: r.params[axis])
            if pts:
                curves[im] = ([float(r.params[axis]) for r in pts],
                              [r.stats.ulp_error_mean for r in pts]
                              + [r.stats.ulp_error_max for r in pts])
        for (xs, ys), names in same_curves(curves).items():
            k = lead.index(names[0])
            n = len(xs)
            mean = np.maximum(ys[:n], 1e-3) if logy else np.array(ys[:n])
            mx = np.maximum(ys[n:], 1e-3) if logy else np.array(ys[n:])
            color = f"C{k % 10}"
            ax.plot(xs, mx, ls="--", lw=1.0, color=color, alpha=0.7)
            (ln,) = ax.plot(xs, mean, ls="-", lw=1.5, marker=_MARKERS[k % 8], ms=4, color=color)
            handles.setdefault(" ≈ ".join(label[m] for m in names), ln)
        ax.axhline(0.5, color="k", ls=":", lw=1)
        if logx:
            _log(ax, "x")
        if logy:
            _log(ax, "y")
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(fm, fontsize=10)
        ax.set_ylabel("ULP error" + (" (0 drawn at 1e-3)" if logy else ""))
        ax.set_xlabel(f"{axis} (swept)")
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=8,
               frameon=False, title="implementation\n(solid: mean, dashed: largest)",
               title_fontsize=8)
    fig.suptitle(f"{ctx.res.name}: ULP error against {axis} (finite results; dotted: 0.5 ULP)",
                 fontsize=11)
    _layout(fig, 2.8)
    cap = (f"Mean (solid) and largest (dashed) ULP error of each implementation against {axis}, "
           "one panel per format, each in its own format's ULPs (finite results only; dotted: "
           "0.5 ULP, the most a correctly rounded result is off). Implementations with the same "
           "curves share a line.")
    return Figure(f"error_vs_{axis}.png", fig, cap)


def ulp_hist(ctx: Context) -> "Figure | None":
    """One panel per format: how many samples have each ULP error, per group (log x; exact
    results in a '0' bin at the left)."""
    d = ctx.data
    stat = d.cat_mask("finite", "inf_match")
    fmts = d.formats
    if not stat.any():
        return None
    fig, axs = _panels(len(fmts), 5.6, 3.6, legend_w=2.6)
    handles: dict[str, Any] = {}
    for ax, fm in zip(axs, fmts):
        errs = {}
        for k, g in enumerate(ctx.groups):
            e = d.ulp_error[d.fmt_mask(fm) & d.impl_mask(g[0]) & stat]
            if e.size:
                errs[k] = e
        if not errs:
            ax.text(0.5, 0.5, "no finite results", ha="center", transform=ax.transAxes)
            ax.set_title(fm, fontsize=10)
            continue
        nonzero = np.concatenate([e[e > 0] for e in errs.values()])
        lo = np.floor(np.log10(nonzero.min())) if nonzero.size else -1.0
        hi = max(np.ceil(np.log10(nonzero.max())), lo + 1) if nonzero.size else 0.0
        edges = np.logspace(lo, hi, int(max(10, min(60, 8 * (hi - lo)))) + 1)
        z0, z1 = 10 ** (lo - 1.2), 10 ** (lo - 0.6)
        for k, e in errs.items():
            counts, _ = np.histogram(e[e > 0], bins=edges)
            line = ax.stairs(counts, edges, linewidth=1.3, color=f"C{k % 10}")
            zeros = int((e == 0).sum())
            if zeros:
                ax.stairs([zeros], [z0, z1], color=f"C{k % 10}", linewidth=1.3)
            handles.setdefault(group_label(ctx.groups[k]), line)
        _log(ax, "x")
        ax.axvline(0.5, color="0.3", ls=":", lw=1)
        ax.axvspan(z0 / 1.5, z1 * 1.5, color="0.92", zorder=0)
        ticks = [math.sqrt(z0 * z1)] + list(10.0 ** np.arange(lo, hi + 1))
        ax.set_xticks(ticks)
        ax.set_xticklabels(["0"] + [f"1e{int(np.log10(t))}" for t in ticks[1:]])
        ax.set_xlim(z0 / 1.5, edges[-1] * 1.2)
        ax.set_title(fm, fontsize=10)
        ax.set_xlabel(ULP_LABEL, fontsize=8)
        ax.set_ylabel("samples (count)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=8,
               frameon=False, title="implementation", title_fontsize=8)
    fig.suptitle(f"{ctx.res.name}: distribution of the ULP error (dotted: 0.5 ULP)", fontsize=11)
    _layout(fig, 2.6)
    cap = ("Samples per ULP error and implementation, one panel per format (log x; results "
           "equal to the correctly rounded truth in the grey '0' bin; dotted: 0.5 ULP, the most "
           "a correctly rounded result is off). Implementations that return the same bits on "
           "every sample share a line.")
    return Figure("ulp_hist.png", fig, cap)


# --------------------------------------------------------------------------- analyses

def overflow_figure(ctx: Context, an: OverflowAnalysis) -> "Figure | None":
    """Share of inf/NaN rows against ln(the sum of exponentials the implementation forms) minus
    ln(largest finite value): a step at 0 shows the overflow."""
    if not an.curves or not any(an.curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(9.5, 5))
    edges = np.arange(-4.0, 4.0001, 0.25)
    mids = (edges[:-1] + edges[1:]) / 2
    styles = {"float16": "-", "bfloat16": "--", "float32": "-.", "float64": ":"}
    marks = {"float16": "o", "bfloat16": "s", "float32": "^", "float64": "x"}
    for fm, lines in an.curves.items():
        M = get_format(fm).max_finite
        for names, xv, nf, what in lines:
            idx = np.digitize(xv, edges) - 1
            share = np.array([nf[idx == j].mean() if (idx == j).any() else np.nan
                              for j in range(len(mids))])
            ok = ~np.isnan(share)
            lab = "ln sum exp(x - max)" if what == "shifted" else "lse"
            ax.plot(mids[ok], share[ok], styles.get(fm, "-"), marker=marks.get(fm, "o"), ms=5,
                    mfc="none", lw=1.5,
                    label=f"{fm}: {', '.join(names)}  (x = {lab} - ln {M:.4g})")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlim(-4, 4)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("ln(the sum the implementation forms) - ln(largest finite value of the format)")
    ax.set_ylabel("share of rows with an inf/NaN loss")
    ax.set_title(f"{ctx.res.name}: the loss is inf/NaN exactly when the sum of exponentials "
                 "overflows (x > 0)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    _layout(fig)
    cap = ("Share of rows whose loss is inf/NaN against ln(the sum of exponentials the "
           "implementation forms) - ln(largest finite value of the format): sum exp(x_j) = "
           "exp(lse) for the unshifted formulas, sum exp(x_j - max) for the shifted ones. The "
           "step at 0 is the overflow. Implementations with identical results share a line.")
    return Figure("nonfinite_vs_overflow_margin.png", fig, cap)


def cancellation_figure(ctx: Context, an: CancellationAnalysis) -> "Figure | None":
    """Median relative error (units of u) against the sweep axis, one panel per format."""
    if not an.axis or not an.curves:
        return None
    fmts = [fm for fm in ctx.data.formats if an.curves.get(fm)]
    fig, axs = _panels(len(fmts), 6.0, 4.0, legend_w=2.6)
    handles: dict[str, Any] = {}
    lead = [g[0] for g in ctx.groups]
    for ax, fm in zip(axs, fmts):
        u = get_format(fm).unit_roundoff
        curves = {im: an.curves[fm][im] for im in lead if im in an.curves[fm]}
        for (xs, ys), names in same_curves(curves).items():
            k = lead.index(names[0])
            (ln,) = ax.plot(xs, np.maximum(ys, 1e-3), marker=_MARKERS[k % 8], ms=3, lw=1.4,
                            color=f"C{k % 10}")
            lab = " ≈ ".join(group_label(next(g for g in ctx.groups if g[0] == m))
                             for m in names)
            handles.setdefault(lab, ln)
        ax.axhline(1 / u, color="k", ls=":", lw=1)
        ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
        _log(ax, "y")
        ax.set_xlabel(f"{an.axis} (swept)")
        ax.set_ylabel("median relative error (units of u)")
        ax.set_title(f"{fm} (u = 2^-{get_format(fm).precision}; dotted: a result of 0)",
                     fontsize=10)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles.keys()), loc="center right", fontsize=8,
               frameon=False, title="implementation", title_fontsize=8)
    fig.suptitle(f"{ctx.res.name}: relative error against {an.axis}", fontsize=11)
    _layout(fig, 2.6)
    cap = (f"Median relative error of the loss against {an.axis}, in units of the format's unit "
           "roundoff u = 2^-p (0 drawn at 1e-3); the dotted line is a relative error of 1 (a "
           "result of 0), the dashed one 0.5 u. Implementations with identical curves share a "
           "line.")
    return Figure(f"relative_error_vs_{an.axis}.png", fig, cap)


def bounds_figure(ctx: Context, an: BoundsAnalysis) -> "Figure | None":
    """Measured relative error against the bound at the same row, one point per row."""
    panels = [fm for fm in ctx.data.formats if an.scatter and an.scatter.get(fm)]
    if not panels:
        return None
    fig, axs = _panels(len(panels), 5.6, 4.6)
    for ax, fm in zip(axs, panels):
        lo, hi = np.inf, 0.0
        for (label, (b, m)), mk in zip(an.scatter[fm].items(), (".", "s", "^")):
            mm = np.maximum(m, 1e-3)
            ax.plot(b, mm, mk, ms=3, alpha=0.45, label=label, ls="none")
            if b.size:
                lo, hi = min(lo, b.min() / 2), max(hi, b.max(), mm.max())
        if np.isfinite(lo) and hi > 0:
            ax.plot([lo, hi * 1.3], [lo, hi * 1.3], color="r", lw=1.2, label="measured = bound")
            ax.set_xlim(lo, hi * 1.3)
        _log(ax, "xy")
        ax.set_xlabel("error bound (units of u)")
        ax.set_ylabel("measured relative error (units of u)")
        ax.set_title(fm, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{ctx.res.name}: measured error against its bound (below the red line: "
                 "within)", fontsize=11)
    _layout(fig)
    cap = (f"Measured relative error of the loss against the error bound at the same row, both "
           f"in units of u, one point per row (up to {an.sample_rows} sampled rows per format; "
           "a measured 0 is drawn at 1e-3); points below the red line respect the bound.")
    return Figure("bound_vs_measured.png", fig, cap)


def compare_figure(ctx: Context) -> "Figure | None":
    """With a [compare] check: the ULP distance between the two implementations (the 0 bar is
    what passes the tolerance) and each one's ULP error against the truth."""
    results = ctx.res.compare()
    if not results or not results[0].ulp_distance.get("counts"):
        return None
    r = results[0]
    counts = r.ulp_distance["counts"]
    n = sum(int(v) for v in counts.values())
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.4))
    ds = sorted(counts, key=int)
    ax0.bar([str(x) for x in ds], [100 * int(counts[x]) / n for x in ds],
            color=["#2a9d8f" if int(x) == 0 else "#e9c46a" for x in ds])
    for x in ds:
        ax0.text(str(x), 100 * int(counts[x]) / n, f"{int(counts[x])}", ha="center",
                 va="bottom", fontsize=9)
    ax0.set_xlabel(f"ULP distance between {r.a} and {r.b} ({r.format})")
    ax0.set_ylabel(f"share of the {n} samples (%)")
    ax0.set_ylim(0, 105)
    ax0.set_title(f"only the 0-ULP bar passes |a - b| < {r.abs_tol:g}", fontsize=10)
    d = ctx.data
    edges = np.arange(0.0, 3.01, 0.1)
    for im, color in ((r.a, "C0"), (r.b, "C1")):
        e = d.ulp_error[d.impl_mask(im) & d.fmt_mask(r.format)]
        e = e[np.isfinite(e)]
        if e.size:
            ax1.hist(np.minimum(e, edges[-1] - 1e-9), bins=edges, histtype="step", lw=1.8,
                     color=color, label=f"{im} (mean {e.mean():.3g}, max {e.max():.3g})")
    ax1.axvline(0.5, color="k", ls=":", lw=1, label="0.5 ULP (correctly rounded: left of it)")
    ax1.set_xlabel(f"ULP error against the correctly rounded truth ({r.format} ULPs)")
    ax1.set_ylabel("samples (count)")
    ax1.set_title("each one's error against the exact loss", fontsize=10)
    ax1.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"{ctx.res.name}: {r.a} vs {r.b}", fontsize=11)
    _layout(fig)
    cap = ("Left: how far apart the two compared implementations are, in ULPs of the format; "
           "only the bit-identical (0 ULP) share passes the tolerance. Right: each one's ULP "
           "error against the correctly rounded truth (dotted: 0.5 ULP).")
    return Figure("compare.png", fig, cap)
