"""Plots of a results table (matplotlib, Agg backend: no display needed).

* ``ulp_hist_<format>.png``: per format, a histogram of the ULP error of each implementation
  (log-scaled x; errors that are exactly 0 get their own bin at the left, marked "0");
  a dotted line marks 0.5 ULP, the bound a correctly rounded result meets.
* ``ulp_vs_<axis>_<format>.png``: per swept numeric axis and format, the mean (solid) and the
  largest (dashed) ULP error of each implementation against the axis; implementations whose
  curves agree to 3 significant digits share a line ("a ≈ b"); the legend sits outside the axes.
* ``mean_ulp_by_format.png``: mean ULP error of each implementation in each format, with the
  number of rows whose loss is inf/NaN (not averaged in) written above the bar.

Errors are in ulps of the target format.  A y axis is logarithmic only where the values spread
over more than a factor of 50 (:func:`log_y_wanted`), with plain tick labels over a few decades;
otherwise it is linear from 0.  :func:`same_curves` and :func:`log_y_wanted` serve the
analyses' plots too; every figure is written by :func:`save_figure`.

Only the statistics rows ("finite" and "inf_match") are plotted; counts of the others are in
the summary.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from precision_lab.numerics.formats import ordered_formats  # noqa: E402

__all__ = ["make_plots", "save_figure", "log_y_wanted", "same_curves", "ULP_LABEL"]

ULP_LABEL = "ULP error (units of ulp in the target format)"


def save_figure(fig, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay ``fig`` out (tight, within ``rect`` of the figure if given), write it to ``path`` as a
    PNG at 110 dpi without a Software tag (so the bytes depend on the figure only), close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def _histogram(ax, errs: dict[str, np.ndarray]) -> None:
    nonzero = np.concatenate([e[e > 0] for e in errs.values()]) if errs else np.array([])
    if nonzero.size:
        lo = np.floor(np.log10(nonzero.min()))
        hi = max(np.ceil(np.log10(nonzero.max())), lo + 1)
    else:
        lo, hi = -1.0, 0.0
    edges = np.logspace(lo, hi, int(max(10, min(60, 8 * (hi - lo)))) + 1)
    z0, z1 = 10 ** (lo - 1.2), 10 ** (lo - 0.6)  # the bin for exact zeros, left of the rest
    for name, e in errs.items():
        counts, _ = np.histogram(e[e > 0], bins=edges)
        zeros = int((e == 0).sum())
        line = ax.stairs(counts, edges, label=f"{name} (n={e.size})", linewidth=1.4)
        if zeros:
            ax.stairs([zeros], [z0, z1], color=line.get_edgecolor(), linewidth=1.4)
    ax.set_xscale("log")
    ax.axvline(0.5, color="0.3", linestyle=":", linewidth=1)
    ax.text(0.5, 1.0, " 0.5 ulp", transform=ax.get_xaxis_transform(), va="top", ha="left",
            fontsize=8, color="0.3")
    ax.axvspan(z0 / 1.5, z1 * 1.5, color="0.92", zorder=0)
    ticks = [np.sqrt(z0 * z1)] + [t for t in 10.0 ** np.arange(lo, hi + 1)]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0\n(exact)"] + [f"$10^{{{int(np.log10(t))}}}$" for t in ticks[1:]])
    ax.set_xlim(z0 / 1.5, edges[-1] * 1.2)


def make_plots(table: pa.Table, summary: list[dict], axes: list[str], out_dir: Path,
               title: str) -> list[Path]:
    """Write all plots of one results table into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    impl = np.asarray(table.column("implementation").to_pylist())
    fmt = np.asarray(table.column("format").to_pylist())
    cat = np.asarray(table.column("category").to_pylist())
    uerr = table.column("ulp_error").to_numpy()
    stat = np.isin(cat, ("finite", "inf_match"))
    impls = list(dict.fromkeys(impl.tolist()))
    formats = ordered_formats(fmt.tolist())

    for fm in formats:
        errs = {i: uerr[(impl == i) & (fmt == fm) & stat] for i in impls}
        errs = {k: v for k, v in errs.items() if v.size}
        fig, ax = plt.subplots(figsize=(8, 4.8))
        if errs:
            _histogram(ax, errs)
            ax.legend(fontsize=8, title="implementation", title_fontsize=8, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no finite results in this format", ha="center",
                    transform=ax.transAxes)
        ax.set_xlabel(ULP_LABEL)
        ax.set_ylabel("samples (count)")
        ax.set_title(f"{title}: distribution of ULP error, {fm}")
        paths.append(save_figure(fig, out_dir / f"ulp_hist_{fm}.png"))

    for axis in axes:
        vals = [r.get(axis) for r in summary]
        if not all(isinstance(v, (int, float)) for v in vals):
            continue
        for fm in formats:
            paths.append(_ulp_vs_axis(summary, impls, axis, fm, vals, out_dir, title))

    nonfinite = np.isin(cat, ("overflow", "nan", "missed_inf"))
    means, bad, rows = {}, {}, {}
    for i in impls:
        for fm in formats:
            sel = (impl == i) & (fmt == fm)
            e = uerr[sel & stat]
            means[(i, fm)] = float(e.mean()) if e.size else np.nan
            bad[(i, fm)] = int((sel & nonfinite).sum())
            rows[(i, fm)] = int(sel.sum())
    paths.append(_mean_by_format(impls, formats, means, bad, rows, out_dir, title))
    return paths


def log_y_wanted(values, ratio: float = 50.0) -> bool:
    """Whether errors spread over so many orders of magnitude (largest / smallest positive
    value above ``ratio``) that a log axis reads better than a linear one from 0."""
    pos = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    return bool(pos) and max(pos) / min(pos) > ratio


def same_curves(curves: dict, digits: int = 3) -> dict[tuple, list]:
    """Group curves that agree to ``digits`` significant digits at every point, so coinciding
    lines are drawn once and labelled with all their names.

    ``curves`` maps a name to ``(xs, ys)``; returns ``{(xs, rounded ys): [names]}`` in the order
    first seen (draw the rounded ys: they are the shared line)."""
    out: dict[tuple, list] = {}
    for name, (xs, ys) in curves.items():
        key = (tuple(xs), tuple(float(f"{y:.{digits}g}") for y in ys))
        out.setdefault(key, []).append(name)
    return out


def _zero_floor(values) -> float:
    """Where a log axis draws a value of 0: a decade below the smallest positive value."""
    pos = [float(v) for v in values if np.isfinite(v) and v > 0]
    return 10.0 ** (np.floor(np.log10(min(pos))) - 1) if pos else 1e-3


def _plain_log_ticks(ax) -> None:
    """On a log y axis spanning at most 4 decades, ticks at 1, 2 and 5 per decade written as
    plain numbers (0.2, 0.5, 1, 2, ...) instead of powers of ten."""
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo <= 1e4:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _ulp_vs_axis(summary: list[dict], impls: list[str], axis: str, fm: str, vals: list,
                 out_dir: Path, title: str) -> Path:
    """Mean (solid) and largest (dashed) ULP error of each implementation against ``axis`` in
    format ``fm``; implementations whose two curves coincide share a line; the legend sits
    outside the axes."""
    curves = {}
    for i in impls:
        rows = sorted((r for r in summary if r["implementation"] == i and r["format"] == fm
                       and r.get("ulp_error_mean") is not None), key=lambda r: r[axis])
        if rows:
            curves[i] = ([r[axis] for r in rows],
                         [float(r["ulp_error_mean"]) for r in rows] + [float(r["ulp_error_max"]) for r in rows])
    groups = same_curves(curves)
    ys_all = [y for _, ys in groups for y in ys]
    logy = log_y_wanted(ys_all)
    floor = _zero_floor(ys_all)
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    handles = []
    for k, ((xs, ys), names) in enumerate(groups.items()):
        n = len(xs)
        mean, mx = np.array(ys[:n]), np.array(ys[n:])
        if logy:
            mean, mx = np.maximum(mean, floor), np.maximum(mx, floor)
        color = f"C{impls.index(names[0]) % 10}"
        ax.plot(xs, mx, ls="--", lw=1.2, color=color, alpha=0.8)
        (ln,) = ax.plot(xs, mean, ls="-", lw=1.6, marker="os^Dvx"[k % 6], ms=4, color=color)
        handles.append((ln, " ≈ ".join(names)))
    xs_all = [v for v in vals if v is not None]
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    else:
        ax.set_ylim(bottom=0)
    ax.axhline(0.5, color="0.3", linestyle=":", linewidth=1)
    ax.grid(alpha=0.3)
    ax.set_xlabel(f"{axis} (swept parameter)")
    ax.set_ylabel("ULP error (ulps of the target format)"
                  + (f"\n0 drawn at {floor:g}" if logy and min(ys_all, default=1) <= 0 else ""))
    ax.set_title(f"{title}: ULP error against {axis}, {fm}", fontsize=11)
    if handles:
        style = [(Line2D([], [], color="0.35", ls="-", lw=1.6), "mean (solid)"),
                 (Line2D([], [], color="0.35", ls="--", lw=1.2), "largest (dashed)"),
                 (Line2D([], [], color="0.3", ls=":", lw=1), "0.5 ULP (correctly rounded)")]
        hs, ls = zip(*(handles + style))
        ax.legend(hs, ls, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                  title="implementation (same curves share a line)", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finite results", ha="center", transform=ax.transAxes)
    return save_figure(fig, out_dir / f"ulp_vs_{axis}_{fm}.png")


def _mean_by_format(impls: list[str], formats: list[str], means: dict, bad: dict, rows: dict,
                    out_dir: Path, title: str) -> Path:
    """Grouped bars: the mean ULP error of each implementation in each format (finite results),
    with the number of rows whose loss is inf/NaN written above the bar where there are any."""
    vals = [v for v in means.values() if np.isfinite(v)]
    logy = log_y_wanted(vals)
    floor = _zero_floor(vals)
    fig, ax = plt.subplots(figsize=(max(7.5, 1.1 * len(impls) + 3.5), 5.2))
    width = 0.8 / max(1, len(formats))
    top = max(vals, default=0.5)
    for k, fm in enumerate(formats):
        xs = np.arange(len(impls)) + (k - (len(formats) - 1) / 2) * width
        hs = [means[(i, fm)] for i in impls]
        drawn = [max(h, floor) if logy else h for h in hs]
        ax.bar(xs, drawn, width, label=fm, color=f"C{k}")
        for x, h, i in zip(xs, drawn, impls):
            nb, n = bad[(i, fm)], rows[(i, fm)]
            if not np.isfinite(h):
                ax.text(x, floor if logy else 0, f"all {n} inf/NaN", rotation=90, ha="center",
                        va="bottom", fontsize=7, color="C3")
            elif nb:
                ax.annotate(f"{nb}/{n} inf/NaN", (x, h), xytext=(0, 2), textcoords="offset points",
                            rotation=90, ha="center", va="bottom", fontsize=7, color="C3")
    ax.set_xticks(np.arange(len(impls)))
    ax.set_xticklabels(impls, rotation=30, ha="right")
    if logy:
        lo = min(min(vals), 0.5) / 2
        ax.set_yscale("log")
        ax.set_ylim(lo, top * (top / lo) ** 0.35)
        _plain_log_ticks(ax)
    else:
        ax.set_ylim(0, max(top, 0.5) * 1.35)
    ax.axhline(0.5, color="0.3", linestyle=":", linewidth=1)
    ax.text(1.0, 0.5, " 0.5 ULP", transform=ax.get_yaxis_transform(), va="center", ha="left",
            fontsize=8, color="0.3")
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlabel("implementation")
    ax.set_ylabel("mean ULP error (ulps of the target format)")
    ax.set_title(f"{title}: mean ULP error by implementation and format\n(finite results only"
                 + ("; in red: rows whose loss is inf/NaN, not averaged in)" if any(bad.values())
                    else ")"), fontsize=10)
    ax.legend(title="format", fontsize=8, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.06, 1.0), frameon=False)
    return save_figure(fig, out_dir / "mean_ulp_by_format.png")
