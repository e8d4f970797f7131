"""Plots of a results table (matplotlib, Agg backend: no display needed).

* ``ulp_hist_<format>.png``: per format, a histogram of the ULP error of each implementation
  (log-scaled x; errors that are exactly 0 get their own bin at the left, marked "0");
  a dotted line marks 0.5 ULP, the bound a correctly rounded result meets.
* ``ulp_vs_<axis>_<format>.png``: per swept numeric axis and format, the mean (solid) and the
  largest (dashed) ULP error of each implementation against the axis.
* ``mean_ulp_by_format.png``: mean ULP error of each implementation in each format.

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

from .formats import ordered_formats  # noqa: E402

__all__ = ["make_plots", "save_figure", "ULP_LABEL"]

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
            fig, ax = plt.subplots(figsize=(8, 4.8))
            any_line = False
            for i in impls:
                rows = sorted((r for r in summary if r["implementation"] == i
                               and r["format"] == fm), key=lambda r: r[axis])
                xs = [r[axis] for r in rows if r.get("ulp_error_mean") is not None]
                if not xs:
                    continue
                mean = [r["ulp_error_mean"] for r in rows if r.get("ulp_error_mean") is not None]
                mx = [r["ulp_error_max"] for r in rows if r.get("ulp_error_mean") is not None]
                (ln,) = ax.plot(xs, mean, marker="o", label=f"{i} (mean)")
                ax.plot(xs, mx, linestyle="--", color=ln.get_color(), alpha=0.7,
                        label=f"{i} (max)")
                any_line = True
            xs_all = [v for v in vals if v is not None]
            if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 100:
                ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=0.1)
            ax.axhline(0.5, color="0.3", linestyle=":", linewidth=1)
            ax.set_xlabel(f"{axis} (swept parameter)")
            ax.set_ylabel(ULP_LABEL)
            ax.set_title(f"{title}: ULP error against {axis}, {fm}")
            if any_line:
                ax.legend(fontsize=7, ncol=2)
            else:
                ax.text(0.5, 0.5, "no finite results", ha="center", transform=ax.transAxes)
            paths.append(save_figure(fig, out_dir / f"ulp_vs_{axis}_{fm}.png"))

    # mean ULP error per implementation and format (all sweep points together)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(impls) + 3), 4.8))
    width = 0.8 / max(1, len(formats))
    for k, fm in enumerate(formats):
        means = []
        for i in impls:
            e = uerr[(impl == i) & (fmt == fm) & stat]
            means.append(float(e.mean()) if e.size else np.nan)
        ax.bar(np.arange(len(impls)) + (k - (len(formats) - 1) / 2) * width, means, width,
               label=fm)
    ax.set_xticks(np.arange(len(impls)))
    ax.set_xticklabels(impls, rotation=30, ha="right")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.axhline(0.5, color="0.3", linestyle=":", linewidth=1)
    ax.set_xlabel("implementation")
    ax.set_ylabel("mean " + ULP_LABEL)
    ax.set_title(f"{title}: mean ULP error by implementation and format")
    ax.legend(title="format", fontsize=8, title_fontsize=8)
    paths.append(save_figure(fig, out_dir / "mean_ulp_by_format.png"))
    return paths
