"""The ``precision-lab`` command line: a thin layer over config, experiment and report.

Exit codes: 0 success; 1 an unexpected error while computing; 2 a bad config or a results
folder that may not be written (nothing is written then); 130 interrupted (finished chunks
are kept: rerun with --resume).
"""

from __future__ import annotations

import json
import math
import sys
import webbrowser
from pathlib import Path
from typing import List, Optional

import typer

from precision_lab.experiment.config import ConfigError, bundled_experiments_dir, load_config

app = typer.Typer(
    name="precision-lab",
    help="Measure the floating-point error of cross-entropy implementations against a "
         "correctly rounded truth.\n\nExample: precision-lab run experiments/seed_question.toml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


@app.command("run")
def run_command(
    configs: List[Path] = typer.Argument(..., help="Experiment TOML file(s).", show_default=False),
    out: Path = typer.Option(Path("results"), "--out", "-o",
                             help="Folder that receives one results folder per experiment "
                                  "(<out>/<name>/)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing results folders."),
    resume: bool = typer.Option(False, "--resume",
                                help="Finish a partial (interrupted) run: compute only the "
                                     "missing chunks. Refused if the config changed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages."),
) -> None:
    """Run experiments and write results/<name>/ (tables, plots, manifest, report).

    Every config is validated, and every target folder checked, before anything is computed: a bad config or an existing folder stops the command with exit code 2 and nothing written. An interrupted run keeps its finished chunks: rerun with --resume.

    Example: precision-lab run experiments/seed_question.toml experiments/seed_81_percent.toml
    """
    from precision_lab.experiment.runner import RunError, preflight, run_experiment

    cfgs = []
    try:
        for path in configs:
            cfgs.append(load_config(path))
    except ConfigError as exc:
        _err(str(exc))
        raise typer.Exit(2)
    names = [c.name for c in cfgs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        _err(f"two configs share the name {dup[0]!r} and would write the same folder")
        raise typer.Exit(2)
    try:
        for cfg in cfgs:
            preflight(cfg, out, force=force, resume=resume)
    except RunError as exc:
        _err(str(exc))
        raise typer.Exit(2)
    for cfg in cfgs:
        try:
            res = run_experiment(cfg, out, force=force, resume=resume, quiet=quiet)
        except RunError as exc:
            _err(str(exc))
            raise typer.Exit(2)
        except KeyboardInterrupt:
            _err(f"interrupted; finished chunks are kept in {out / cfg.name / 'partial'}. "
                 f"Finish with: precision-lab run --resume {' '.join(map(str, configs))}"
                 + (f" --out {out}" if str(out) != "results" else ""))
            raise typer.Exit(130)
        except Exception as exc:  # noqa: BLE001 - report, keep the partial chunks, exit 1
            _err(f"{cfg.name}: {type(exc).__name__}: {exc}\nfinished chunks are kept in "
                 f"{out / cfg.name / 'partial'}; fix the cause and rerun with --resume")
            raise typer.Exit(1)
        if not quiet:
            extra = f" ({res.resumed_chunks} chunk(s) resumed)" if res.resumed_chunks else ""
            typer.echo(f"{cfg.name}: {res.manifest.get('rows')} rows in "
                       f"{res.manifest.get('wall_seconds')} s{extra} -> {res.path}")
            cmp_path = res.path / "compare.json"
            if cmp_path.exists():
                for f in json.loads(cmp_path.read_text()).get("findings", []):
                    typer.echo("  " + f["text"])


def _find_experiments_dir() -> Optional[Path]:
    return bundled_experiments_dir()


@app.command("list")
def list_command() -> None:
    """List the bundled experiments (name and question), the implementations and the formats.

    Example: precision-lab list
    """
    from precision_lab.numerics.formats import FORMATS
    from precision_lab.implementations import REGISTRY

    exp_dir = _find_experiments_dir()
    typer.echo("Experiments" + (f" ({exp_dir}):" if exp_dir else ": (no experiments/ folder found)"))
    for path in sorted(exp_dir.glob("*.toml")) if exp_dir else []:
        try:
            cfg = load_config(path)
            question = " ".join(cfg.question.split())
            if len(question) > 110:
                question = question[:107] + "..."
            typer.echo(f"  {cfg.name:<28} {question}")
            typer.echo(f"  {'':<28} [{path.name}]")
        except ConfigError as exc:
            typer.echo(f"  {path.name:<28} (invalid: {exc})")
    typer.echo("\nImplementations (use the key in a config's `implementations`):")
    for key, impl in REGISTRY.items():
        typer.echo(f"  {key:<22} {impl.description}")
    typer.echo("  or 'package.module:function' for your own (logits, targets, fmt) -> losses")
    typer.echo("\nFormats:")
    typer.echo(f"  {'name':<10} {'precision p':>11} {'max finite':>12} {'unit roundoff':>14}")
    for f in FORMATS.values():
        typer.echo(f"  {f.name:<10} {f.precision:>11} {f.max_finite:>12.5g} "
                   f"{f.unit_roundoff:>14.3g}")


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"
        if abs(v) < 1e-3 or abs(v) >= 1e5:
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = [h for _, h in cols]
    body = [[_cell(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(lines)


@app.command("show")
def show_command(
    results_dir: Path = typer.Argument(..., help="A results folder, e.g. results/seed_question.",
                                       show_default=False),
    open_report: bool = typer.Option(False, "--open", help="Open report.html in a web browser."),
) -> None:
    """Print a results folder's summary table, its compare check and the paths of its plots.

    Example: precision-lab show results/seed_81_percent --open
    """
    summary_path = results_dir / "summary.json"
    if not summary_path.exists():
        manifest = results_dir / "manifest.json"
        if manifest.exists():
            m = json.loads(manifest.read_text())
            _err(f"{results_dir} is a {m.get('status', 'unknown')} run without tables yet "
                 f"({m.get('chunks_done')} of {m.get('chunks_total')} chunks); finish it with "
                 f"precision-lab run --resume {m.get('config_file', 'CONFIG')}")
        else:
            _err(f"{results_dir} is not a results folder (no summary.json)")
        raise typer.Exit(2)
    doc = json.loads(summary_path.read_text())
    rows = doc["rows"] if isinstance(doc, dict) else doc
    axes = doc.get("sweep_axes", []) if isinstance(doc, dict) else []
    typer.echo(f"{doc.get('experiment', results_dir.name)}: {doc.get('question', '')}".strip())
    typer.echo("")
    cols = [("implementation", "implementation"), ("format", "format")]
    cols += [(a, a) for a in axes]
    cols += [("count", "n"), ("exact_match_rate", "exact share"), ("ulp_error_mean", "ulp mean"),
             ("ulp_error_median", "ulp median"), ("ulp_error_p99", "ulp p99"),
             ("ulp_error_max", "ulp max"), ("bits_mean", "bits"), ("n_overflow", "overflow"),
             ("n_nan", "nan")]
    typer.echo(_table(rows, cols))
    values = doc.get("values") if isinstance(doc, dict) else None
    if values and len(values) <= 64:
        typer.echo("\nValues (computed, correctly rounded reference, ULP error):")
        typer.echo(_table(values, [("implementation", "implementation"), ("format", "format"),
                                   ("sample", "sample"), ("computed_repr", "computed"),
                                   ("reference_repr", "reference"), ("ulp_error", "ulp error")]))
    cmp_path = results_dir / "compare.json"
    if cmp_path.exists():
        typer.echo("\nCompare:")
        for f in json.loads(cmp_path.read_text()).get("findings", []):
            typer.echo("  " + f["text"])
    plots = sorted((results_dir / "plots").glob("*.png"))
    if plots:
        typer.echo("\nPlots:")
        for p in plots:
            typer.echo(f"  {p}")
    report = results_dir / "report.html"
    for name in ("report.md", "report.html"):
        if (results_dir / name).exists():
            typer.echo(f"Report: {results_dir / name}")
    if open_report:
        if report.exists():
            webbrowser.open(report.resolve().as_uri())
        else:
            _err(f"no report.html in {results_dir}")
            raise typer.Exit(2)


from precision_lab.explain.explain import explain_command  # noqa: E402 -- explain.py keeps its imports light

app.command("explain")(explain_command)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="precision-lab")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
