"""The ``precision-lab`` command line: one typer app, a thin layer over the Python API.

Set PRECISION_LAB_TRACEBACK=1 to see the traceback of an unexpected error.

Exit codes: 0 success; 1 a failure while computing (finished chunks are kept: rerun with
--resume) or an unexpected error; 2 bad input (a config, an option, a data file, a results
folder that is damaged, locked or may not be written: nothing is written then); 130
interrupted (finished chunks are kept).  No traceback reaches the terminal: every error is one
line starting with "error:".
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the total a run reports is measured from here

import os  # noqa: E402
import sys  # noqa: E402
import webbrowser  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, List, NoReturn, Optional  # noqa: E402

import typer  # noqa: E402

from precision_lab import __version__  # noqa: E402
from precision_lab.experiment.errors import (  # noqa: E402
    ComputeError,
    ConfigError,
    DamagedResultsError,
    IncompleteResultsError,
    LockedError,
    RunError,
    out_option,
)

app = typer.Typer(
    name="precision-lab",
    help="Measure the floating-point error of cross-entropy implementations against a "
         "correctly rounded truth.\n\nExample: precision-lab run experiments/seed_question.toml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
study_app = typer.Typer(help="Studies beyond one config: torch's CPU kernel sets, torch on a GPU.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


def _err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


def _console() -> Any:
    """A rich console; wide when the output is not a terminal (pipes, files, tests)."""
    from rich.console import Console

    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def _fail(msg: str, code: int = 2) -> NoReturn:
    _err(msg)
    raise typer.Exit(code)


def _flag(default: bool, decls: str, *extra: str, help: str) -> Any:
    """A plain on/off flag (no value after it; typer would show '<bool>' without metavar)."""
    return typer.Option(default, decls, *extra, help=help, metavar="")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"precision-lab {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Measure the floating-point error of cross-entropy implementations against a correctly
    rounded truth."""


# --------------------------------------------------------------------------- run

def _report(res: Any, progress: Any) -> None:
    from precision_lab.report.report import write_report

    write_report(res, progress)


def _seconds(v: float) -> str:
    return f"{v:.1f} s" if v < 100 else f"{v:.0f} s"


@app.command("run")
def run_command(
    configs: List[Path] = typer.Argument(..., help="Experiment TOML file(s).", show_default=False),
    out: Path = typer.Option(Path("results"), "--out", "-o",
                             help="Folder that receives one results folder per experiment "
                                  "(<out>/<name>/)."),
    force: bool = _flag(False, "--force/--no-force",
                        help="Replace existing results folders."),
    resume: bool = _flag(False, "--resume/--no-resume",
                         help="Finish a partial (interrupted) run: compute only the "
                                     "missing chunks. Refused if the config changed."),
    quiet: bool = _flag(False, "--quiet", "-q", help="No progress bars or messages."),
    workers: int = typer.Option(1, "--workers", "-w", min=0,
                                help="Local processes that compute chunks (0: one per core; "
                                     "1: in this process)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler",
                                            help="Address of a Dask scheduler "
                                                 "(tcp://HOST:PORT) to compute the chunks on "
                                                 "(needs precision-lab\\[cluster]); the tables "
                                                 "are the same as a local run's."),
    connect_timeout: float = typer.Option(30.0, "--connect-timeout", min=0.1,
                                          help="Seconds to wait for the --scheduler before "
                                               "giving up."),
) -> None:
    """Run experiments and write <out>/<name>/ (tables, plots, manifest, report).

    Every config is validated, and every target folder checked, before anything is computed:
    a bad config, an existing or locked folder, or an unwritable --out stops the command with
    exit code 2 and nothing written. An interrupted run keeps its finished chunks: rerun with
    --resume. The last line gives each stage's wall time.

    Example: precision-lab run experiments/seed_question.toml experiments/seed_81_percent.toml
    """
    from precision_lab.experiment.config import load_config
    from precision_lab.experiment.executor import ClusterError, open_executor
    from precision_lab.experiment.progress import Progress
    from precision_lab.experiment.runner import preflight, replaces
    cfgs = []
    try:
        for path in configs:
            cfgs.append(load_config(path))
    except ConfigError as exc:
        hint = ""
        if not Path(exc.file).exists() and Path(exc.file).name.lower() in (
                "true", "false", "yes", "no", "1", "0"):
            hint = " (--force, --resume and --quiet take no value: write --force or --no-force)"
        _fail(str(exc) + hint)
    names = [c.name for c in cfgs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        _fail(f"two configs share the name {dup[0]!r} and would write the same folder "
              f"{out / dup[0]}")
    replacing = {}
    try:
        for cfg in cfgs:
            state, old = preflight(cfg, out, force=force, resume=resume)
            replacing[cfg.name] = replaces(cfg, state, old, resume)
    except RunError as exc:
        _fail(str(exc))
    import precision_lab.report.report  # noqa: F401 - loaded (matplotlib) before the stages are timed

    progress = Progress(quiet=quiet)
    stages = {"compute": 0.0, "report": 0.0}
    command = " ".join(["precision-lab", *sys.argv[1:]])
    try:
        with open_executor(workers, scheduler, timeout=connect_timeout) as executor:
            for cfg in cfgs:
                res = _run_one(cfg, out, force, resume, progress, command, executor, configs,
                               replacing[cfg.name])
                for k in stages:
                    stages[k] += res.stage_seconds.get(k, 0.0)
                if not quiet:
                    _say_done(cfg, res)
    except ClusterError as exc:
        _fail(str(exc))
    if not quiet:
        total = time.perf_counter() - _T0
        typer.echo(f"compute {_seconds(stages['compute'])}, report {_seconds(stages['report'])}, "
                   f"total {_seconds(total)}")


def _finished(folder: Path) -> str:
    """What an unfinished run left: "3 finished chunk(s) are kept in <folder>/partial"."""
    n = len(list((folder / "partial").glob("p*.json")))
    if not n:
        return f"no chunk had finished (nothing kept in {folder / 'partial'})"
    return f"{n} finished chunk(s) are kept in {folder / 'partial'}"


def _run_one(cfg: Any, out: Path, force: bool, resume: bool, progress: Any, command: str,
             executor: Any, configs: List[Path], replacing: bool = False) -> Any:
    from precision_lab.experiment.runner import run_experiment

    again = (f"precision-lab run --resume {' '.join(map(str, configs))}"
             + out_option(out / cfg.name))
    kept = (f"{out / cfg.name} is left as it was before this run (the new run's chunks are "
            "discarded)")
    try:
        return run_experiment(cfg, out, force=force, resume=resume, progress=progress,
                              finalize=_report, command=command, executor=executor)
    except RunError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        if replacing:
            _fail(f"interrupted; {kept}; rerun with --force to replace it", 130)
        _fail(f"interrupted; {_finished(out / cfg.name)}. Finish with: {again}", 130)
    except ComputeError as exc:
        if replacing:
            _fail(f"{exc}; {kept}; fix the cause and rerun with --force", 1)
        _fail(f"{exc}; {_finished(out / cfg.name)}: fix the cause, then {again}", 1)
    except Exception as exc:  # noqa: BLE001 - one line, finished chunks kept, exit 1
        if os.environ.get("PRECISION_LAB_TRACEBACK"):
            raise
        if replacing:
            _fail(f"{cfg.name}: {type(exc).__name__}: {exc}; {kept}", 1)
        _fail(f"{cfg.name}: {type(exc).__name__}: {exc}; {_finished(out / cfg.name)}: "
              f"{again}", 1)


def _mib(rss: dict[str, float]) -> str:
    """Peak RSS record -> "812 MiB (this process; workers not included)"."""
    return f"{rss.get('process', 0):,.0f} MiB (this process; workers not included)"


def _say_done(cfg: Any, res: Any) -> None:
    c = res.manifest.counts
    extra = f", {res.resumed_chunks} chunk(s) resumed" if res.resumed_chunks else ""
    typer.echo(f"{cfg.name}: {c.get('logit_rows', 0):,} logit rows, "
               f"{c.get('evaluations', 0):,} evaluations ({c.get('implementations')} "
               f"implementations x {c.get('formats')} formats){extra} -> {res.path}")
    rss = res.run_info.peak_rss_mib
    if rss:
        typer.echo(f"  peak memory {_mib(rss)}")
    if res.stale_lock:
        typer.echo(f"  note: a stale lock of a run that died (pid {res.stale_lock.get('pid')}, "
                   f"started {res.stale_lock.get('started_at')}) was found and replaced")


# --------------------------------------------------------------------------- list

@app.command("list")
def list_command() -> None:
    """List the bundled experiments (name and question), the implementations and the formats.

    Example: precision-lab list
    """
    from rich.table import Table

    from precision_lab.experiment.config import bundled_experiments_dir, load_config
    from precision_lab.implementations import REGISTRY
    from precision_lab.numerics.formats import FORMATS

    con = _console()
    exp_dir = bundled_experiments_dir()
    t = Table(title=f"Experiments ({exp_dir})" if exp_dir else "Experiments (none found)",
              title_justify="left")
    t.add_column("name")
    t.add_column("config")
    t.add_column("question", overflow="fold")
    for path in sorted(exp_dir.rglob("*.toml")) if exp_dir else []:
        rel = str(path.relative_to(exp_dir)) if exp_dir else path.name
        try:
            cfg = load_config(path)
            t.add_row(cfg.name, rel, " ".join(cfg.question.split()))
        except ConfigError as exc:
            t.add_row(path.stem, rel, f"(invalid: {exc})")
    con.print(t)
    t = Table(title="Implementations (config key `implementations`; or 'package.module:function')",
              title_justify="left")
    for col in ("key", "what it computes", "reduction", "trace", "devices"):
        t.add_column(col)
    for key, impl in REGISTRY.items():
        c = impl.capabilities
        t.add_row(key, impl.description, "own" if c.own_reduction else "seed's loop",
                  "yes" if c.trace else "no", ", ".join(c.devices))
    con.print(t)
    t = Table(title="Formats", title_justify="left")
    for col in ("name", "precision p", "max finite", "unit roundoff"):
        t.add_column(col, justify="right" if col != "name" else "left")
    for f in FORMATS.values():
        t.add_row(f.name, str(f.precision), f"{f.max_finite:.5g}", f"{f.unit_roundoff:.3g}")
    con.print(t)


# --------------------------------------------------------------------------- show

def _open_checked(results_dir: Path) -> Any:
    from precision_lab.experiment.store import open_results

    try:
        return open_results(results_dir)
    except IncompleteResultsError as exc:
        from precision_lab.experiment.store import FolderLock

        try:
            FolderLock(results_dir.parent, results_dir.name).probe()
        except LockedError as live:
            _fail(f"{results_dir} is being written by a run in progress ({live.who}; "
                  f"{exc.manifest.chunks_done} of {len(exc.manifest.chunks)} chunks done); "
                  "wait for it to finish")
        cfg_file = ""
        try:
            from precision_lab.experiment.store import Results

            info = Results(results_dir, exc.manifest).run_info()
            cfg_file = info.config_file if info else ""
        except Exception:  # noqa: BLE001 - the hint is optional
            pass
        _fail(f"{results_dir} is an unfinished run ({exc.manifest.chunks_done} of "
              f"{len(exc.manifest.chunks)} chunks done); finish it with precision-lab run "
              f"--resume {cfg_file or 'CONFIG'}{out_option(results_dir)}")
    except DamagedResultsError as exc:
        _fail(str(exc))
    except RunError as exc:
        _fail(str(exc))


@app.command("show")
def show_command(
    results_dir: Path = typer.Argument(..., help="A results folder, e.g. results/seed_question.",
                                       show_default=False),
    open_report: bool = _flag(False, "--open/--no-open",
                              help="Open report.html in a web browser."),
) -> None:
    """Print a results folder's summary, its compare check, and where its plots and report are.

    Every file the manifest lists is checked against its sha256 first: a damaged or missing
    file is named, with exit code 2.

    Example: precision-lab show results/seed_81_percent --open
    """
    from rich.table import Table

    from precision_lab.report.text import fmt_num, fmt_rate

    res = _open_checked(results_dir)
    con = _console()
    m = res.manifest
    con.print(f"[bold]{m.name}[/bold]: {' '.join(m.question.split())}")
    summary = res.summary()
    many = len(summary) > 48
    if many:
        from precision_lab.explain.data import aggregate, sample_data

        d = sample_data(res)
        rows = [(im, fm, None, s) for (im, fm), s in aggregate(d).items()] if d else []
        title = f"Summary: all {len(m.points)} sweep points combined ({len(summary)} rows in " \
                f"{results_dir / 'summary.csv'})"
    else:
        rows = [(r.implementation, r.format, r.params, r.stats) for r in summary]
        title = "Summary"
    wq = any(r.quantity != "loss" for r in summary)
    quantity = {id(r.stats): r.quantity for r in summary}
    t = Table(title=title, title_justify="left")
    axes = [] if many else res.axes
    for col in ["implementation", "format", *(["quantity"] if wq else []), *axes, "n",
                "correctly rounded", "ulp mean",
                "ulp median", "ulp p99", "ulp max", "inf/NaN"]:
        t.add_column(col, justify="left" if col in ("implementation", "format") else "right")
    for im, fm, params, s in rows:
        nf = sum(s.categories.get(c, 0) for c in ("overflow", "nan", "missed_inf"))
        t.add_row(im, fm, *([quantity.get(id(s), "loss")] if wq else []),
                  *[fmt_num((params or {}).get(a)) for a in axes], str(s.count),
                  fmt_rate(s.exact_matches, s.stat_count), fmt_num(s.ulp_error_mean, 3),
                  fmt_num(s.ulp_error_median, 3), fmt_num(s.ulp_error_p99, 3),
                  fmt_num(s.ulp_error_max, 4), str(nf))
    con.print(t)
    values = res.values()
    if values and len(values) <= 64:
        t = Table(title="Values (computed, correctly rounded truth, ULP error)",
                  title_justify="left")
        for col in ("implementation", "format", "sample", "computed", "reference", "ulp error"):
            t.add_column(col)
        for v in values:
            t.add_row(str(v["implementation"]), str(v["format"]), str(v["sample"]),
                      str(v["computed_repr"]), str(v["reference_repr"]),
                      fmt_num(v["ulp_error"]))
        con.print(t)
    for r in res.compare():
        con.print(f"\nCompare: {r.a} vs {r.b} in {r.format}: |a - b| < {r.abs_tol:g} on "
                  f"{fmt_rate(r.passed, r.count)}; bit-identical on {r.identical}; ULP distance "
                  f"counts {r.ulp_distance.get('counts')}")
    if m.plots:
        con.print("\nPlots:")
        for p in m.plots:
            con.print(f"  {results_dir / p}")
    info = res.run_info()
    if info is not None and info.stage_seconds:
        con.print(f"\nLast run: {info.finished_at}, compute "
                  f"{_seconds(info.stage_seconds.get('compute', 0.0))}, report "
                  f"{_seconds(info.stage_seconds.get('report', 0.0))}"
                  + (f", peak memory {_mib(info.peak_rss_mib)}" if info.peak_rss_mib else "")
                  + f" (from {results_dir / 'run.json'})")
    report = results_dir / "report.html"
    con.print(f"Report: {results_dir / 'report.md'}  {report}")
    if open_report:
        ok = False
        try:
            ok = webbrowser.open(report.resolve().as_uri())
        except webbrowser.Error:
            ok = False
        if not ok:
            typer.echo(f"no web browser could be opened here; open {report.resolve()} yourself "
                       "(it is self-contained)", err=True)


# --------------------------------------------------------------------------- diff

@app.command("diff")
def diff_command(
    a: Path = typer.Argument(..., help="A results folder.", show_default=False),
    b: Path = typer.Argument(..., help="Another results folder of the same experiment "
                             "(another torch, device or machine).", show_default=False),
    as_json: bool = _flag(False, "--json/--no-json", help="Print one JSON object."),
) -> None:
    """Compare two results folders: what changed (torch version, CPU kernels, device,
    packages, config) and, per implementation and format, how many values changed and how
    each one's error against the truth moved.

    Example: precision-lab diff results/seed_81_percent /tmp/other_machine/seed_81_percent
    """
    from rich.table import Table

    from precision_lab.experiment.store import dumps
    from precision_lab.explain.diff import diff_results
    from precision_lab.report.text import fmt_num, fmt_rate

    d = diff_results(_open_checked(a), _open_checked(b))
    if as_json:
        typer.echo(dumps(d).rstrip())
        return
    con = _console()
    if not d.same_config:
        con.print("The two folders come from different configs; only the environment is "
                  "compared. Config changes: " + "; ".join(
                      f"{k}: {x!r} -> {y!r}" for k, (x, y) in d.config_changes.items()))
    if d.environment_changes:
        con.print("What changed between A and B: " + "; ".join(
            f"{k}: {x} -> {y}" for k, (x, y) in d.environment_changes.items()))
    else:
        con.print("Same environment (torch, CPU kernels, device, package versions).")
    if d.reference_mismatches:
        con.print(f"[red]{d.reference_mismatches} reference values differ: the inputs are "
                  "not the same.[/red]")
    if d.implementations:
        t = Table(title=f"A = {a}, B = {b}", title_justify="left")
        for col in ("implementation", "format", "same value in A and B", "max ULP apart",
                    "ULP error mean A -> B", "ULP error max A -> B"):
            t.add_column(col, justify="left" if col in ("implementation", "format") else "right")
        for r in d.implementations:
            t.add_row(r.implementation, r.format, fmt_rate(r.identical, r.samples),
                      fmt_num(r.ulp_distance_max), f"{fmt_num(r.a_mean, 3)} -> "
                      f"{fmt_num(r.b_mean, 3)}", f"{fmt_num(r.a_max, 3)} -> {fmt_num(r.b_max, 3)}")
        con.print(t)


# --------------------------------------------------------------------------- explain

@app.command("explain")
def explain_command(
    logits: Optional[str] = typer.Option(None, "--logits",
                                         help="Comma-separated logits, e.g. \"20,0,1,2\"; "
                                              "each is rounded once from its exact decimal value."),
    target: Optional[int] = typer.Option(None, "--target", "-t", help="Index of the target class."),
    fmt: str = typer.Option("float32", "--format", "-f",
                            help="float16, bfloat16, float32 or float64."),
    file: Optional[Path] = typer.Option(None, "--file", help="Logits from a .npy or .pt file "
                                        "(shape (V,) or (N, V); choose the row with --row)."),
    row: Optional[int] = typer.Option(None, "--row", help="Row of --file to explain."),
    as_json: bool = _flag(False, "--json/--no-json",
                          help="Print one JSON object instead of text."),
    attribution: bool = _flag(True, "--attribution/--no-attribution",
                              help="Per-step attribution of the step-wise implementations."),
) -> None:
    """Explain one input: truth, each implementation's error, per-step attribution, verdict.

    Prints the correctly rounded truth, every implementation's value with its ULP error and
    ULP distance, the per-step attribution, the condition number and error bounds, and a
    verdict in words.

    Example: precision-lab explain --logits "20,0,1,2" --target 0 --format float32
    """
    from precision_lab.experiment.store import dumps, to_jsonable
    from precision_lab.explain.explain import ExplainInputError, explain, load_row, parse_logits
    from precision_lab.report.explain_text import render_text, verdict

    try:
        if (logits is None) == (file is None):
            raise ExplainInputError("--logits/--file", logits if logits is not None else str(file),
                                    "give exactly one of --logits \"20,0,1,2\" or --file X.npy")
        if target is None:
            raise ExplainInputError("--target", None, "give the target class index, e.g. "
                                    "--target 0")
        if row is not None and file is None:
            raise ExplainInputError("--row", row, "--row goes with --file")
        if logits is not None:
            vals: Any = parse_logits(logits)
        else:
            assert file is not None
            vals = load_row(file, row)
        e = explain(vals, target, fmt, attribution=attribution)
    except ExplainInputError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(dumps({**to_jsonable(e), "verdict": verdict(e)}).rstrip())
    else:
        typer.echo(render_text(e))


# --------------------------------------------------------------------------- studies

def _study_done(path: Path, quiet: bool) -> None:
    if not quiet:
        typer.echo(f"-> {path}  (precision-lab show {path})")
        typer.echo(f"total {_seconds(time.perf_counter() - _T0)}")


@study_app.command("capability")
def study_capability_command(
    batches: int = typer.Option(1000, "--batches", min=1,
                                help="Batches of torch.rand(10, 10) (the seed ran 1000)."),
    capabilities: Optional[List[str]] = typer.Option(
        None, "--capabilities", "-c",
        help="ATEN_CPU_CAPABILITY values to run (default, avx2, avx512), repeatable; "
             "default: every one this CPU supports."),
    out: Path = typer.Option(Path("results"), "--out", "-o",
                             help="Folder that receives seed_81_percent_capabilities/."),
    force: bool = _flag(True, "--force/--no-force",
                        help="Replace an existing study folder (default: yes)."),
    quiet: bool = _flag(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """The seed's 81.4% check under each of torch's CPU kernel sets.

    Runs the seed's protocol (torch.manual_seed(0), 1000 batches of torch.rand(10, 10),
    nn.CrossEntropyLoss against the manual loop at |a - b| < 1e-15) once per
    ATEN_CPU_CAPABILITY in its own process, measures all results against the correctly
    rounded mean loss and writes <out>/seed_81_percent_capabilities/ like a run's folder.

    Example: precision-lab study capability --batches 100 -c default -c avx2
    """
    from precision_lab.experiment.progress import Progress
    from precision_lab.studies.capability import CAPABILITIES, run_study

    bad = [c for c in capabilities or [] if c not in CAPABILITIES]
    if bad:
        _fail(f"--capabilities: unknown value {bad[0]!r}; allowed: {', '.join(CAPABILITIES)}")
    try:
        path = run_study(out, batches, capabilities or None, force=force,
                         progress=Progress(quiet=quiet),
                         command=" ".join(["precision-lab", *sys.argv[1:]]))
    except RunError as exc:
        _fail(str(exc))
    _study_done(path, quiet)


cuda_app = typer.Typer(help="torch on a CUDA GPU against torch on this CPU and the truth: "
                            "inputs (here), compute (on the GPU machine), analyze (here).",
                       no_args_is_help=True)
study_app.add_typer(cuda_app, name="cuda")


@cuda_app.command("inputs")
def cuda_inputs_command(
    path: Path = typer.Argument(..., help="The .npz file to write.", show_default=False),
) -> None:
    """Write the study's input sets (float64 logits, int64 targets) to PATH."""
    from precision_lab.studies.cuda import make_inputs

    make_inputs(path)
    typer.echo(f"-> {path}")


@cuda_app.command("compute")
def cuda_compute_command(
    inputs: Path = typer.Argument(..., help="The inputs file (study cuda inputs).",
                                  show_default=False),
    out: Path = typer.Argument(..., help="The .npz file of results to write.",
                               show_default=False),
    device: str = typer.Option("cuda", "--device", help="torch device to run on."),
) -> None:
    """Run torch's implementations on DEVICE over every input set and format (the GPU step)."""
    from precision_lab.studies.cuda import compute

    if not inputs.is_file():
        _fail(f"{inputs}: no such inputs file (write one with `precision-lab study cuda "
              "inputs`)")
    try:
        compute(inputs, out, device)
    except RunError as exc:
        _fail(str(exc))
    typer.echo(f"-> {out}")


@cuda_app.command("analyze")
def cuda_analyze_command(
    gpu: Path = typer.Argument(..., help="The GPU's results file (study cuda compute).",
                               show_default=False),
    inputs: Optional[Path] = typer.Option(None, "--inputs",
                                          help="The inputs the GPU ran on (default: "
                                               "regenerated here; they depend only on the "
                                               "seed)."),
    out: Path = typer.Option(Path("results"), "--out", "-o",
                             help="Folder that receives cuda_vs_cpu/."),
    force: bool = _flag(True, "--force/--no-force",
                        help="Replace an existing study folder (default: yes)."),
    quiet: bool = _flag(False, "--quiet", "-q", help="No progress bars or messages."),
) -> None:
    """Compare GPU results with torch on this CPU and the certified truth; write
    <out>/cuda_vs_cpu/ like a run's folder (the GPU file is stored in it).

    Example: precision-lab study cuda analyze results/cuda_vs_cpu/gpu_h100.npz
    """
    from precision_lab.experiment.progress import Progress
    from precision_lab.studies.cuda import analyze

    if inputs is not None and not inputs.is_file():
        _fail(f"--inputs: {inputs}: no such file")
    try:
        path = analyze(gpu, out, inputs=inputs, force=force, progress=Progress(quiet=quiet),
                       command=" ".join(["precision-lab", *sys.argv[1:]]))
    except RunError as exc:
        _fail(str(exc))
    _study_done(path, quiet)


# --------------------------------------------------------------------------- search, table

from precision_lab.search.commands import (  # noqa: E402
    exhaustive_command,
    search_command,
    table_command,
    tolerance_command,
)

app.command("search")(search_command)
app.command("exhaustive")(exhaustive_command)
app.command("table")(table_command)
app.command("tolerance")(tolerance_command)


def _kinds(exc: BaseException) -> set[str]:
    """Class names in the exception's hierarchy (click's, or the copy typer bundles)."""
    return {c.__name__ for c in type(exc).__mro__}


def main() -> None:  # pragma: no cover - console entry
    """Console entry: the app, with a usage error or any unexpected error as one line (exit
    codes 2 and 1)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="precision-lab", standalone_mode=False)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - no traceback reaches a user
        kinds = _kinds(exc)
        ctx = getattr(exc, "ctx", None)
        if "NoArgsIsHelpError" in kinds:  # a bare command group: its help
            typer.echo(ctx.get_help() if ctx is not None else "")
            sys.exit(2)
        if "UsageError" in kinds:
            where = ctx.command_path if ctx is not None else "precision-lab"
            _err(f"{exc.format_message()} (see {where} --help)")  # type: ignore[attr-defined]
            sys.exit(2)
        if "Abort" in kinds:
            _err("interrupted")
            sys.exit(130)
        if os.environ.get("PRECISION_LAB_TRACEBACK"):
            raise
        _err(f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
