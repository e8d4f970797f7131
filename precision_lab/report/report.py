"""Write the report of a results folder: analyses, plots, ``report.md`` and ``report.html``.

:func:`write_report` runs the analyses (:mod:`precision_lab.explain.analyses`: numbers), turns
them into findings (:mod:`precision_lab.report.findings`: sentences) and figures
(:mod:`precision_lab.report.plots`), stores the analyses' numbers in ``analyses.json`` and the
figures under ``plots/``, and renders one document twice (:mod:`precision_lab.report.document`).
It reads only the folder (its tables and the inputs the run stored), never the config.

The document leads with the answer: the question, 3-8 key findings chosen by the mechanisms
the data shows, one key table and the 1-4 plots that show them; then a compact summary per
implementation x format; then an appendix (collapsed in report.html, capped in report.md) with
every finding, the per-point tables, the analyses' tables, the other plots and the provenance
recorded in the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from precision_lab.experiment.progress import NO_PROGRESS, Progress
from precision_lab.experiment.store import MANIFEST, Results, Writer
from precision_lab.explain.analyses import Context, run_analyses
from precision_lab.explain.data import NONFINITE_CATEGORIES, group_label
from precision_lab.implementations.registry import design_note
from precision_lab.report import plots as P
from precision_lab.report.answer import MAX_KEY_FINDINGS, all_findings, key_findings
from precision_lab.report.document import (
    Block,
    Bullets,
    Code,
    Details,
    Heading,
    Image,
    Para,
    Table,
    render_html,
    render_markdown,
)
from precision_lab.report.findings import Finding
from precision_lab.report.text import fmt_num, fmt_rate

__all__ = ["write_report", "build_document", "MEASURES_TEXT", "Extra"]

MD_TABLE_ROWS = 8     # rows of a big table shown in report.md (all rows in report.html / CSV)
MD_FINDINGS = 12      # findings listed in report.md's appendix (all in report.html)
MD_EXTRA_ROWS = 5     # rows of an analysis table shown in report.md
HTML_TABLE_ROWS = 600  # rows of a big table shown in report.html

MEASURES_TEXT = (
    "How to read the numbers. The truth is the exact cross-entropy computed in high precision "
    "and rounded once to the format (correctly rounded). 'Correctly rounded' counts samples whose "
    "computed value has the same bits as that truth. ULP error = |computed − exact| / ulp(exact), "
    "with ulp the format's spacing at the exact value: a correctly rounded result is within 0.5 "
    "ULP. Statistics use samples where both sides are finite (or the same infinity); overflow, "
    "NaN and missed-infinity samples are counted separately, never averaged in."
)


@dataclasses.dataclass
class Extra:
    """What a study adds to the standard report: findings that lead the answer, tables, and
    figures (the first ones are the key plots), and its numbers for analyses.json."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    tables: list[Block] = dataclasses.field(default_factory=list)
    figures: list[P.Figure] = dataclasses.field(default_factory=list)
    records: dict[str, Any] = dataclasses.field(default_factory=dict)
    appendix: list[Block] = dataclasses.field(default_factory=list)


def _failed(record: Any) -> bool:
    """An analysis that raised is recorded as {"failed": message} (see run_analyses)."""
    return isinstance(record, dict) and "failed" in record


def _figures(ctx: Context, an: dict[str, Any]) -> list[Callable[[], "P.Figure | None"]]:
    """The figures that apply, in the order the report shows them (analyses first)."""
    out: list[Callable[[], "P.Figure | None"]] = []
    an = {k: v for k, v in an.items() if not _failed(v)}  # a failed analysis draws nothing
    if "overflow" in an:
        out.append(lambda: P.overflow_figure(ctx, an["overflow"]))
    if "cancellation" in an:
        out.append(lambda: P.cancellation_figure(ctx, an["cancellation"]))
    if "bounds" in an:
        out.append(lambda: P.bounds_figure(ctx, an["bounds"]))
    out += [lambda: P.compare_figure(ctx), lambda: P.error_vs_axis(ctx),
            lambda: P.error_by_format(ctx), lambda: P.ulp_hist(ctx)]
    return out


def _key_plots(figs: list[P.Figure], mechs: list[str], axis: "str | None") -> list[P.Figure]:
    """The 1-4 figures that show the leading mechanisms."""
    by = {f.name: f for f in figs}
    want: list[P.Figure] = []

    def add(name: "str | None") -> None:
        if name and name in by and by[name] not in want and len(want) < 4:
            want.append(by[name])

    for m in mechs:
        if m == "compare":
            add("compare.png")
        elif m in ("explain", "formats"):
            add("error_by_format.png")
            if m == "formats":
                add("bound_vs_measured.png")
        elif m == "cancellation":
            add(f"relative_error_vs_{axis}.png")
        elif m == "overflow":
            add("nonfinite_vs_overflow_margin.png")
        elif m == "trend":
            add(f"error_vs_{axis}.png")
    for name in (f"error_vs_{axis}.png", "error_by_format.png", "ulp_hist.png"):
        if not want:
            add(name)
    return want


def write_report(res: Results, progress: Progress = NO_PROGRESS,
                 extra: "Extra | None" = None) -> tuple[Path, Path]:
    """Analyse ``res``, draw its figures and write ``analyses.json``, ``plots/``, ``report.md``
    and ``report.html`` into its folder.

    During a run ``res.writer`` is the run's writer (the runner writes the manifest); on an
    existing folder the files are written in place and the manifest is updated.

    Returns:
        (path of report.md, path of report.html).
    """
    standalone = res.writer is None
    writer = res.writer if res.writer is not None else Writer(res.root)
    if standalone:
        writer.files.update(res.manifest.files)
    from precision_lab.explain.analyses import ANALYSES

    with progress.stage("analyses", total=len(ANALYSES)) as advance:
        ctx, analyses = run_analyses(res, advance)
    extra = extra or Extra()
    figs: list[P.Figure] = []
    makers = _figures(ctx, analyses) if ctx is not None else []
    captions: dict[str, str] = {}
    with progress.stage("plots", total=len(makers) + len(extra.figures)) as advance:
        for fig in extra.figures:
            figs.append(fig)
            advance(1)
        for make in makers:
            f = make()
            if f is not None:
                figs.append(f)
            advance(1)
        for f in figs:
            writer.figure(f"plots/{f.name}", f.fig)
            captions[f"plots/{f.name}"] = f.caption
    with progress.stage("report", total=2) as advance:
        records = {**analyses, **extra.records}
        writer.json("analyses.json", records)
        res.manifest = replace(res.manifest, plots=captions)
        title, blocks = build_document(res, ctx, analyses, figs, extra)
        md = writer.text("report.md", render_markdown(title, blocks, res.root))
        advance(1)
        ht = writer.text("report.html", render_html(title, blocks))
        advance(1)
    if standalone:
        res.manifest = replace(res.manifest, files=dict(sorted(writer.files.items())))
        Writer(res.root).json(MANIFEST, res.manifest)
    return md, ht


# --------------------------------------------------------------------------- sections

def _rank_key(s: Any) -> tuple[float, float, float]:
    """Sort key, best first: no inf/NaN before any, then the smallest maximum, then the
    smallest median ULP error (a NaN statistic counts as infinite)."""
    def num(v: Any) -> float:
        return math.inf if v is None or v != v else float(v)
    nf = sum(s.categories.get(c, 0) for c in NONFINITE_CATEGORIES)
    return (float(nf > 0), num(s.ulp_error_max), num(s.ulp_error_median))


def _summary_compact(ctx: Context) -> list[Block]:
    """The ranking: per format, one row per group of bit-identical implementations over the
    whole sweep, best first (no inf/NaN, then smallest max, then smallest median ULP error),
    with the design choice that decides each one's error."""
    d = ctx.data
    zero = d.zero_for_nonzero()
    show_zero = bool(zero.any())
    heads = ["format", "rank", "implementation", "samples", "correctly rounded",
             "median ULP err", "max ULP err", "inf/NaN"] + (
                 ["0 for a non-zero loss"] if show_zero else []) + ["what decides its error"]
    rows = []
    for fm in d.formats:
        fsel = d.fmt_mask(fm)
        ranked = sorted(((g, ctx.stats[(g[0], fm)]) for g in ctx.groups
                         if (g[0], fm) in ctx.stats), key=lambda gs: _rank_key(gs[1]))
        for rank, (g, s) in enumerate(ranked, 1):
            sel = fsel & d.impl_mask(g[0])
            nf = sum(s.categories.get(c, 0) for c in NONFINITE_CATEGORIES)
            row = [fm, rank, group_label(g), s.count, fmt_rate(s.exact_matches, s.stat_count),
                   fmt_num(s.ulp_error_median, 3), fmt_num(s.ulp_error_max, 4), nf]
            if show_zero:
                row.append(int((zero & sel).sum()))
            row.append(design_note(g[0]) or "")
            rows.append(row)
    many = len(ctx.res.manifest.points) > 1
    cap = (("All sweep points combined; " if many else "") + "ranked per format: no inf/NaN "
           "first, then the smallest maximum, then the smallest median ULP error. 'a = b' rows "
           "are implementations that return the same bits on every sample; statistics over "
           "finite results (inf/NaN counted apart).")
    return [Table(heads, rows, cap)]


def _per_point_table(res: Results) -> "Table | None":
    summary = res.summary()
    axes = res.axes
    if not axes or len(summary) <= 1:
        return None
    wq = any(r.quantity != "loss" for r in summary)
    heads = ["point", *axes, "format", "implementation", *(["quantity"] if wq else []),
             "samples", "correctly rounded",
             "median ULP err", "max ULP err", "overflow", "nan"]
    from precision_lab.numerics.formats import ordered_formats

    srt = sorted(summary, key=lambda r: (ordered_formats([r.format]), r.implementation,
                                         r.quantity, r.point))
    rows = [[r.point, *[fmt_num(r.params.get(p)) for p in axes], r.format, r.implementation,
             *([r.quantity] if wq else []), r.stats.count,
             fmt_rate(r.stats.exact_matches, r.stats.stat_count),
             fmt_num(r.stats.ulp_error_median), fmt_num(r.stats.ulp_error_max),
             r.stats.categories.get("overflow", 0), r.stats.categories.get("nan", 0)]
            for r in srt[:HTML_TABLE_ROWS]]
    return Table(heads, rows, f"One row per sweep point, implementation and format ({len(srt)} "
                 "rows" + (f"; the first {HTML_TABLE_ROWS} here" if len(srt) > HTML_TABLE_ROWS
                           else "") + "; all in summary.csv).", md_rows=MD_TABLE_ROWS,
                 md_note=f"First {MD_TABLE_ROWS} of {len(srt)} rows; all rows in "
                         "[summary.csv](summary.csv) and in report.html.")


def _agreement_blocks(res: Results) -> list[Block]:
    rows = [r for r in res.agreement() if r.quantity == "loss"]
    if not rows:
        return []
    from precision_lab.numerics.formats import ordered_formats

    acc: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        v = acc.setdefault((r.format, r.implementation_a, r.implementation_b), [0, 0, 0])
        v[0] += int(round((r.identical_rate or 0.0) * r.count))
        v[1] += r.count
        v[2] = max(v[2], r.ulp_distance_max or 0)
    order = sorted(acc.items(), key=lambda kv: (kv[1][0] / kv[1][1] if kv[1][1] else 1.0,
                                                ordered_formats([kv[0][0]])))
    agg = Table(["format", "a", "b", "bit-identical", "max ULP apart"],
                [[fm, a, b, fmt_rate(k, n), fmt_num(dm)] for (fm, a, b), (k, n, dm) in order],
                "All sweep points combined, least agreeing pairs first.", md_rows=MD_TABLE_ROWS,
                md_note=f"The {MD_TABLE_ROWS} least agreeing of {len(order)} format x pair "
                        "rows; all in report.html and agreement.csv.")
    return [Para("Bit-identical: share of samples where the two implementations return the same "
                 "bits; ULP apart: representable steps between their results."), agg]


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return fmt_num(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k} {x}" for k, x in v.items())
    return v


def _record_table(rows: list[Any], title: str) -> Block:
    """A table of dataclass records (non-transient fields), capped in report.md."""
    dicts = [{f.name: getattr(r, f.name) for f in dataclasses.fields(r)
              if not f.metadata.get("transient")} for r in rows]
    keys = list(dict.fromkeys(k for dd in dicts for k in dd))
    return Table(keys, [[_cell(dd.get(k)) for k in keys] for dd in dicts], title,
                 md_rows=MD_EXTRA_ROWS, md_note=f"First {MD_EXTRA_ROWS} of {len(dicts)} rows; "
                 "all in report.html and analyses.json.")


_SECTIONS: dict[str, tuple[str, Callable[[Any], Sequence[Block]]]] = {
    "gradients": ("Gradients", lambda a: [_record_table(a.rows, "gradient elements per "
                                                         "implementation and format")]),
    "nonfinite": ("Non-finite results", lambda a: [_record_table(a.counts, "spurious inf/NaN")]
                  if a.counts else []),
    "overflow": ("Where each implementation overflows",
                 lambda a: [Para("For every row, in exact arithmetic on its logits: its largest "
                                 "logit, lse(x) = log sum exp(x_j) and the shifted sum sum "
                                 "exp(x_j - max); against whether the implementation's loss came "
                                 "out inf/NaN while the truth is finite."),
                            _record_table(a.groups, "overflow causes")]),
    "cancellation": ("Cancellation: results of 0 for a non-zero loss",
                     lambda a: [_record_table(a.rows, "zero returns")] if a.rows else []),
    "bounds": ("Error bounds against measured errors",
               lambda a: [Para(f"Each check uses up to {a.sample_rows} sampled rows per format: "
                               "the bound evaluated at the row's logits against the measured "
                               "relative error of the loss, both in units of u."),
                          _record_table(a.checks, "bounds vs measured")]),
    "attribution": ("Per-step error attribution and the fused torch kernel",
                    lambda a: [Para(f"The {a.rows_per_implementation} worst rows of each "
                                    "step-wise implementation re-run with per-step attribution "
                                    "(precision_lab.explain.attribution); torch's fused kernel "
                                    f"against composites on up to {a.fused_sample_rows} sampled "
                                    "rows per format.")]
                    + ([_record_table(a.decisive, "decisive steps of the worst rows")]
                       if a.decisive else [])
                    + ([_record_table(a.fused, "torch fused kernel vs composites")]
                       if a.fused else [])),
}


def _provenance(res: Results) -> list[Block]:
    m = res.manifest
    env = dict(m.environment)
    versions = env.pop("versions", {}) or {}
    rows: list[list[Any]] = [["config sha256", m.config_sha256], ["status", m.status],
                             ["sweep axes", ", ".join(m.sweep_axes) or "none"],
                             ["points", len(m.points)], ["chunks", len(m.chunks)]]
    rows += [[k, v] for k, v in env.items()]
    rows.append(["versions", "; ".join(f"{k} {v}" for k, v in versions.items())])
    rows += [[k, v] for k, v in m.counts.items()]
    if any(m.slow_rows.values()):
        rows.append(["rows on the reference's exact path", sum(m.slow_rows.values())])
    return [Table(["field", "value"], rows, "From manifest.json (times, peak memory and host "
                  "are in run.json, which is not part of the committed results: `precision-lab "
                  "show` prints them)."),
            Para("Resolved configuration:"),
            Code(json.dumps(m.config, indent=2, default=str),
                 md_note="(in manifest.json under \"config\", and in report.html)")]


def build_document(res: Results, ctx: "Context | None", analyses: dict[str, Any],
                   figs: list[P.Figure], extra: "Extra | None" = None
                   ) -> tuple[str, list[Block]]:
    """The report as a title and a list of blocks."""
    extra = extra or Extra()
    m = res.manifest
    title = f"precision-lab report: {m.name}"
    blocks: list[Block] = [Heading("Question", 2), Para(m.question or "(no question stated)")]
    env = m.environment
    if env.get("torch"):
        blocks.append(Para(f"Measured with torch {env['torch']} on {env.get('device', 'cpu')}"
                           + (f" (CPU kernels {env['torch_cpu_capability']})"
                              if env.get("torch_cpu_capability") else "")
                           + f", numpy {(env.get('versions') or {}).get('numpy')}."))
    if ctx is not None:
        key, key_tables, mechs = key_findings(ctx, analyses)
    else:
        key, key_tables, mechs = [], [], []
    if extra.findings:  # a study's own findings lead; the standard ones fill up to the cap
        key = (extra.findings + key)[:max(MAX_KEY_FINDINGS, len(extra.findings))]
    blocks.append(Heading("Answer: key findings", 2))
    blocks.append(Bullets([f.text for f in key]) if key else Para("No findings (no samples)."))
    blocks.extend(extra.tables or key_tables[:1])
    kplots = extra.figures[:2] + _key_plots(figs, mechs, ctx.axis if ctx else None)
    kplots = list(dict.fromkeys(kplots))[:4] if kplots else []
    if kplots:
        blocks.append(Heading("Key plots", 2))
        blocks += [Image(res.root / "plots" / f.name, f.caption) for f in kplots]
    if ctx is not None:
        blocks.append(Heading("Summary: the implementations ranked per format", 2))
        blocks.extend(_summary_compact(ctx))
        blocks.append(Para(MEASURES_TEXT))
    if m.description:
        blocks.append(Heading("Setup", 2))
        blocks.append(Para(m.description))
    if m.notes:
        blocks.append(Para(m.notes))
    blocks.append(Heading("Appendix", 2))
    letter = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    findings = all_findings(ctx, analyses) if ctx is not None else []
    if findings:
        blocks.append(Details(f"{next(letter)}. All findings ({len(findings)})", [
            Table(["#", "finding"], [[i + 1, f.text] for i, f in enumerate(findings)],
                  "Every sentence is generated from this folder's numbers.", md_rows=MD_FINDINGS,
                  md_note=f"First {MD_FINDINGS} of {len(findings)} findings; all of them in "
                          "report.html.")]))
    pp = _per_point_table(res)
    if pp is not None:
        blocks.append(Details(f"{next(letter)}. Summary per sweep point", [pp]))
    ag = _agreement_blocks(res)
    if ag:
        blocks.append(Details(f"{next(letter)}. Agreement between implementations", ag))
    for name, (heading, body) in _SECTIONS.items():
        rec = analyses.get(name)
        if rec is None:
            continue
        if isinstance(rec, dict) and "failed" in rec:
            blocks.append(Details(f"{next(letter)}. {heading}",
                                  [Para(f"This analysis could not run: {rec['failed']}")]))
            continue
        content: list[Block] = list(body(rec))
        if content:
            blocks.append(Details(f"{next(letter)}. {heading}", content))
    if extra.appendix:
        blocks.append(Details(f"{next(letter)}. Study details", extra.appendix))
    rest = [f for f in figs if f not in kplots]
    if rest:
        blocks.append(Details(f"{next(letter)}. Other plots ({len(rest)})",
                              [Image(res.root / "plots" / f.name, f.caption) for f in rest]))
    blocks.append(Details(f"{next(letter)}. Provenance", _provenance(res)))
    return title, blocks
