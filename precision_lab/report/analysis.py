"""Explanatory analyses of a results folder: each writes its JSON and plots into the folder.

Analyses need the experiment's inputs (regenerated from the config, deterministically) or the
per-sample table.  Each one (:data:`ANALYSES`) decides from the data whether it applies, writes
its JSON (``{"text", "findings", "tables"}``) and plots into the folder, and is then rendered
like any other extra JSON.  :func:`enrich` runs them; :func:`precision_lab.report.write_report`
calls it before the documents are built.

* ``overflow.json``, ``plots/nonfinite_vs_overflow_margin.png``: why a loss is inf/NaN (a
  single exp, the unshifted sum, or the shifted sum overflows);
* ``cancellation.json``, ``plots/relative_error_vs_<axis>.png``: results of 0 for a non-zero loss;
* ``bounds.json``, ``plots/bound_vs_measured.png``: measured errors against error bounds;
* ``attribution.json``: the step that decides the worst rows, and torch's fused kernel
  against composites;
* ``explained.json``, ``explain/<format>_row<i>.json``: tiny experiments, row by row;
* plots only: ``error_vs_<axis>.png``, ``by_format.png``, ``compare.png``.

Figures are written with :func:`precision_lab.report.plots.save_figure`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from precision_lab.numerics.formats import get_format, ordered_formats
from precision_lab.report.plots import log_y_wanted, same_curves, save_figure  # first: selects the Agg backend
from precision_lab.report.results import (Results, aggregate, as_float, axis_values, identical_groups, load_results,
                      numeric_param, stat_count, zero_mask)
from precision_lab.report.text import fmt_num, fmt_rate, join_names, round6

import matplotlib.pyplot as plt  # noqa: E402  (after .plots: the Agg backend is selected)

__all__ = ["ANALYSES", "enrich"]

_ANALYSIS_ROW_CAP = 20000      # rows per format read back for an analysis
_ATTRIB_ROWS = 8               # worst rows attributed per implementation x format
_ATTRIB_MAX_V = 2048           # attribution is mpmath per element: only for small V
_FUSED_MAX_V = 200_000


def _load_cfg(res: Results):
    """The experiment's config, if its file still has the recorded hash."""
    from precision_lab.experiment.config import config_hash, load_config

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
        from precision_lab.experiment.config import sweep_points

        self.cfg = _load_cfg(res)
        self.points = {p.index: p for p in sweep_points(self.cfg)} if self.cfg else {}
        self._raw: dict[int, Any] = {}

    @property
    def ok(self) -> bool:
        return self.cfg is not None and self.cfg.reduction == "none"

    def get(self, point: int, fmt: str):
        from precision_lab.experiment.inputs import generate, to_format

        if point not in self._raw:
            self._raw = {point: generate(self.cfg, self.points[point])}  # keep one point
        b = self._raw[point]
        S, B, C = b.logits.shape
        return to_format(b.logits, fmt).reshape(S * B, C), b.targets.reshape(S * B)


def _rows_per_format(S: dict) -> int:
    """Distinct (point, sample) rows of the most populated format."""
    best = 0
    for fm in set(S["format"].tolist()):
        sel = S["format"] == fm
        best = max(best, len(set(zip(S["point"][sel].tolist(), S["sample"][sel].tolist()))))
    return best


def analysis_overflow(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """Non-finite results explained: a single exp overflows (max x > ln M), the unshifted sum
    sum_j exp(x_j) = exp(lse) overflows (lse > ln M), or the shifted sum sum_j exp(x_j - max)
    overflows (>= M), M being the format's largest finite value."""
    bad = np.isin(S["category"], ["overflow", "nan"])
    if not bad.any() or not inp.ok:
        return None
    impls = [i for i in dict.fromkeys(S["implementation"][bad].tolist())]
    fmts = ordered_formats(set(S["format"][bad].tolist()))
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
        lnM = math.log(f.max_finite)
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
                   round6(float(lse[nf].min())), round6(float(lse[~nf].max())) if (~nf).any() else None,
                   round6(float(sp[c_sh].min())) if c_sh.any() else None,
                   round6(float(sp[~nf].max())) if (~nf).any() else None)
            groups.setdefault(key, []).append(im)
        for key, names in groups.items():
            nbad, n, ce, cu, cs, co, nab, nfab, lse_min_bad, lse_max_ok, sp_min_bad, sp_max_ok = key
            row = {"format": fm, "implementations": names, "rows": n, "non_finite": nbad,
                   "exp_overflow": ce, "unshifted_sum_overflow": cu, "shifted_sum_overflow": cs,
                   "other": co, "ln_max_finite": lnM, "rows_lse_above_ln_max": nab,
                   "smallest_lse_non_finite": lse_min_bad, "largest_lse_finite": lse_max_ok}
            rows_tbl.append(row)
            who = join_names(names)
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
    fig, ax = plt.subplots(figsize=(9, 5))
    edges = np.arange(-4.0, 4.0001, 0.25)
    mids = (edges[:-1] + edges[1:]) / 2
    styles = {"float16": "-", "bfloat16": "--", "float32": "-.", "float64": ":"}
    for fm, d in per_fmt.items():
        lnM = math.log(get_format(fm).max_finite)
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
                    label=f"{fm}: {join_names(names)}  (x = {what} - ln {get_format(fm).max_finite:.4g})")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlim(-4, 4)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("ln(the sum the implementation forms) - ln(largest finite value of the format)")
    ax.set_ylabel("share of rows with an inf/NaN loss")
    ax.set_title(f"{res.name}: the loss is inf/NaN exactly when the sum of exponentials "
                 f"overflows (x > 0)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    save_figure(fig, res.root / "plots" / "nonfinite_vs_overflow_margin.png")
    return {"text": "For every row (inputs regenerated from the config) in exact arithmetic: its "
                    "largest logit, lse(x) = log sum exp(x_j), and the shifted sum sum exp(x_j - "
                    "max); against whether the implementation's loss came out inf/NaN while the "
                    "truth is finite. An unshifted formula needs sum exp(x_j) = exp(lse) to be "
                    "representable, so it fails once lse exceeds ln(largest finite value) even "
                    "when every single exp fits; a shifted one fails only if sum exp(x_j - max) "
                    "itself exceeds the largest finite value.",
            "findings": findings, "tables": {"overflow causes": rows_tbl}}


def analysis_bounds(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """Measured errors of the shifted algorithms against their error bounds (BHH style)."""
    from precision_lab.numerics.conditioning import bhh_loss_bound, derived_loss_bound, to_rigorous
    impls = set(S["implementation"].tolist())
    if not inp.ok or "lse" not in impls:
        return None
    fmts = ordered_formats(set(S["format"].tolist()))
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
    save_figure(fig, res.root / "plots" / "bound_vs_measured.png")
    return {"text": "Each point is one row: x = the bound evaluated at that row's logits, y = the "
                    "measured relative error of the loss, both in units of u, as in Blanchard, "
                    "Higham & Higham's Figure (their bound for the shifted lse, carried through "
                    "the final subtraction, and the first-order bounds derived in "
                    "precision_lab.numerics.conditioning, with the B/(1 - Bu) second-order cover).",
            "findings": findings, "tables": {"bounds vs measured": rows_tbl}}


def analysis_cancellation(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """Relative error against the swept axis where implementations return 0 on a tiny loss."""
    zero = zero_mask(S)
    axes = [a for a in res.swept_params() if "axis:" + a in S]
    if not zero.any() or not axes:
        return None
    ax_name = axes[0]
    axv = S["axis:" + ax_name].astype(float)
    fmts = ordered_formats(set(S["format"].tolist()))
    impls = list(dict.fromkeys(S["implementation"].tolist()))
    rows_tbl, findings = [], []
    ncol = 2 if len(fmts) > 1 else 1
    nrow = (len(fmts) + 1) // 2
    fig, axs = plt.subplots(nrow, ncol, figsize=(7.6 * ncol, 4.4 * nrow), squeeze=False)
    for ax in axs.ravel()[len(fmts):]:
        ax.axis("off")
    colors = {im: f"C{i % 10}" for i, im in enumerate(impls)}
    for ax, fm in zip(axs.ravel(), fmts):
        u = get_format(fm).unit_roundoff
        curves: dict[str, tuple[list, list]] = {}
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
            curves[im] = (vals, med)
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
        # curves that agree to 3 significant digits at every point share a line
        for (vals, med), names in same_curves(curves).items():
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
    save_figure(fig, res.root / "plots" / f"relative_error_vs_{ax_name}.png")
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
    from precision_lab.explain.attribution import attribute, compare_fused
    from precision_lab.implementations import REGISTRY

    if not inp.ok or _rows_per_format(S) <= 4:  # tiny experiments are explained row by row
        return None
    fmts = ordered_formats(set(S["format"].tolist()))
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
                     "attribution (precision_lab.explain.attribution): the 'decisive' step is the first one "
                     "after which the accumulated error stays within half of its final value; "
                     "contributions are the telescoping differences of exact re-runs and add up "
                     "to the total error. The fused torch kernel cannot be traced; it is set beside "
                     "composites modelled on its source (precision_lab.explain.attribution.COMPOSITES)."),
            "findings": findings,
            "tables": {"decisive steps of the worst rows": rows_tbl,
                       "torch fused kernel vs composites": fused_tbl}}


def analysis_explain(res: Results, inp: _Inputs, S: dict) -> dict | None:
    """For tiny experiments (at most 4 rows per format): every row explained in words
    (precision_lab.explain.explain), one file per format and row under explain/."""
    from precision_lab.explain.explain import explain

    if not inp.ok:
        return None
    pts = sorted(set(S["point"].tolist()))
    fmts = ordered_formats(set(S["format"].tolist()))
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
    axis = numeric_param(res)
    if not axis:
        return None
    fmts = ordered_formats(str(r.get("format")) for r in res.summary)
    groups = identical_groups(res)
    impls = [g[0] for g in groups]
    colors = {im: f"C{i % 10}" for i, im in enumerate(impls)}
    vals = axis_values(res, axis)
    logx = vals[0] > 0 and vals[-1] / vals[0] > 100
    logy = log_y_wanted(as_float(r.get("ulp_error_mean")) for r in res.summary)
    ncol = 2 if len(fmts) > 1 else 1
    nrow = (len(fmts) + 1) // 2
    fig, axs = plt.subplots(nrow, ncol, figsize=(5.2 * ncol + 2.6, 3.6 * nrow), squeeze=False,
                            sharex=True)
    for ax in axs.ravel()[len(fmts):]:
        ax.axis("off")
    handles = {}
    for ax, fm in zip(axs.ravel(), fmts):
        # curves that agree to 3 significant digits at every point share a line ("a ≈ b")
        curves: dict[tuple, tuple[list, list]] = {}
        for names in groups:
            pts = sorted((r for r in res.summary if r.get("implementation") == names[0]
                          and r.get("format") == fm and axis in r), key=lambda r: r[axis])
            xy = [(float(r[axis]), as_float(r.get("ulp_error_mean"))) for r in pts if stat_count(r)]
            xy = [(x, y) for x, y in xy if math.isfinite(y)]
            if xy:
                curves[tuple(names)] = ([x for x, _ in xy], [y for _, y in xy])
        for (xs, ys), gs in same_curves(curves).items():
            k = impls.index(gs[0][0])  # dashes alternate, so coinciding lines stay visible
            ln, = ax.plot(list(xs), [max(y, 1e-3) if logy else y for y in ys],
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
    save_figure(fig, res.root / "plots" / f"error_vs_{axis}.png",
                rect=(0, 0, 1 - 2.4 / (5.2 * ncol + 2.6), 1))
    return None


def analysis_by_format(res: Results, inp: _Inputs, S: dict) -> None:
    """Experiments without a numeric sweep and with two formats or more: per implementation
    (bit-identical ones merged) and format, the correctly rounded share and the mean ULP error
    as grouped bars on linear axes.  Writes plots/by_format.png and no JSON."""
    aggs = aggregate(res.summary)
    fmts = ordered_formats(a.format for a in aggs.values())
    if numeric_param(res) or len(fmts) < 2:
        return None
    groups = [g for g in identical_groups(res) if any((g[0], fm) in aggs for fm in fmts)]
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
    save_figure(fig, res.root / "plots" / "by_format.png")
    return None


def analysis_compare_plot(res: Results, inp: _Inputs, S: dict) -> None:
    """With a [compare] section: the ULP distance between the two compared implementations
    (the 0 bar is what passes the tolerance) and each one's ULP error against the correctly
    rounded truth.  Writes plots/compare.png and no JSON."""
    if not isinstance(res.compare, dict) or not res.compare.get("results"):
        return None
    r = res.compare["results"][0]
    a, b, fm, tol = r.get("a"), r.get("b"), r.get("format"), r.get("abs_tol")
    counts = (r.get("ulp_distance") or {}).get("counts") or {}
    if not counts:
        return None
    n = sum(int(v) for v in counts.values())
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
    save_figure(fig, res.root / "plots" / "compare.png")
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
    S = res.sample_arrays()
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
        if isinstance(o, np.floating):
            return _clean(float(o))
        if isinstance(o, np.integer):
            return int(o)
    except ImportError:  # pragma: no cover
        pass
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        v = float(o)
        return v if math.isfinite(v) else None
    return str(o)
