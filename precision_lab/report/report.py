"""Write ``report.md`` and ``report.html`` for one results folder.

The report is generated from the data in the folder and from nothing else:

* the question comes from the manifest's resolved config (``question`` / ``description``);
* it leads with the answer: the key findings (:func:`precision_lab.report.findings.key_findings`),
  one key table and the 1-4 plots that show the leading mechanisms; then a compact summary
  per implementation x format;
* the appendix (collapsed in report.html, capped in report.md) holds every finding, the
  per-point summary and agreement tables, the extra JSON of the analyses and the capability
  study, the other plots, and the provenance (config hash, package versions, torch CPU
  capability, platform, git commit, times, status) copied from the manifest;
* every ``plots/*.png`` is shown -- in ``report.md`` as a relative image link, in
  ``report.html`` embedded so the file is self-contained.

:func:`write_report` first runs the analyses that apply (:func:`precision_lab.report.analysis.enrich`),
then loads the folder (:mod:`precision_lab.report.results`), builds one document
(:func:`build_document`) and renders it twice (:mod:`precision_lab.report.document`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from precision_lab.report.analysis import enrich
from precision_lab.report.document import (Block, Bullets, Code, Details, Heading, Image, Para, Table, render_html,
                       render_markdown)
from precision_lab.report.findings import collect_findings, key_findings
from precision_lab.numerics.formats import ordered_formats
from precision_lab.report.results import (Results, aggregate, as_float, as_rows, exact_count, group_name,
                      identical_groups, load_results, nanmax, numeric_param, pair_of, row_total,
                      stat_count, zero_mask)
from precision_lab.report.text import fmt_num, fmt_rate

__all__ = ["write_report", "build_document"]

MD_TABLE_ROWS = 8           # rows of a big table shown in report.md (all rows in report.html / CSV)
MD_FINDINGS = 12            # findings listed in report.md's appendix (all in report.html)
MD_EXTRA_ROWS = 5           # rows of an analysis table shown in report.md
HTML_TABLE_ROWS = 600       # rows of a big table shown in report.html


# --------------------------------------------------------------------------- plots

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
                f"against {m.group(1)}; finite results only (dotted: 0.5 ULP). Implementations whose "
                f"curves agree to 3 significant digits share a line.")
    if p.stem == "mean_ulp_by_format":
        return ("Mean ULP error of each implementation in each format, each measured in its own "
                "format's ULPs (finite results only; dotted: 0.5 ULP). Where some rows' loss is "
                "inf/NaN, their count is written above the bar.")
    return p.stem.replace("_", " ")


def _plot_order(p: Path) -> tuple:
    for i, prefix in enumerate(PLOT_CAPTIONS):
        if p.stem.startswith(prefix):
            return (i, p.name)
    return (len(PLOT_CAPTIONS), p.name)


def _key_plots(res: Results, mechs: list[str]) -> list[Path]:
    """The 1-4 plots that show the leading mechanisms."""
    plots = sorted(res.plots, key=_plot_order)
    axis = numeric_param(res)
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


# --------------------------------------------------------------------------- sections

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
                rows = as_rows(trows)
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

    S = res.sample_arrays()
    med: dict[tuple[str, str], float] = {}
    zero_n: dict[tuple[str, str], int] = {}
    if S is not None:
        stat = np.isin(S["category"], ["finite", "inf_match"])
        zero = zero_mask(S)
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
    groups = identical_groups(res)
    for fm in ordered_formats(a.format for a in aggs.values()):
        for names in groups:
            a = aggs.get((names[0], fm))
            if a is None:
                continue
            nf = a.cats.get("overflow", 0) + a.cats.get("nan", 0) + a.cats.get("missed_inf", 0)
            row = [fm, group_name(names), a.total, fmt_rate(a.exact, a.stat),
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
    srt = sorted(res.summary, key=lambda r: (ordered_formats([str(r.get("format"))]),
                                             str(r.get("implementation")), r.get("point", 0)))
    rows = [[r.get("point"), *[fmt_num(r.get(p)) for p in params], r.get("format"),
             r.get("implementation"), row_total(r), fmt_rate(exact_count(r), stat_count(r)),
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
        a, b = pair_of(r)
        if a is None or b is None:
            continue
        n = int(r.get("count") or r.get("n") or 0)
        v = acc.setdefault((str(r.get("format")), str(a), str(b)), [0, 0, math.nan])
        v[0] += int(round(as_float(r.get("identical_rate")) * n)) if not math.isnan(as_float(r.get("identical_rate"))) else 0
        v[1] += n
        v[2] = nanmax([v[2], r.get("ulp_distance_max")])
    rows = sorted(acc.items(), key=lambda kv: (kv[1][0] / kv[1][1] if kv[1][1] else 1.0,
                                               ordered_formats([kv[0][0]])))
    agg = Table(["format", "a", "b", "bit-identical", "max ULP apart"],
                [[fm, a, b, fmt_rate(k, n), fmt_num(d)] for (fm, a, b), (k, n, d) in rows],
                "All sweep points combined, least agreeing pairs first.", md_rows=MD_TABLE_ROWS,
                md_note=f"The {MD_TABLE_ROWS} least agreeing of {len(rows)} format x pair rows; "
                        f"all in report.html.")
    return [Para("identical_rate: share of samples where the two implementations return the same "
                 "bits; ulp_distance: representable steps between their results."), agg, full]


# --------------------------------------------------------------------------- the document

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


def write_report(results_dir: Path | str, analyses: bool = True) -> tuple[Path, Path]:
    """Read ``results_dir`` and write ``report.md`` and ``report.html`` into it.

    With ``analyses`` (the default) the explanatory analyses that apply to the data
    (:data:`precision_lab.report.analysis.ANALYSES`: overflow thresholds, cancellation, bounds vs
    measured errors, per-step attribution and the fused-kernel comparison) first write their
    JSON and plots into the folder; they need the experiment's config file (to regenerate the inputs) and
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
