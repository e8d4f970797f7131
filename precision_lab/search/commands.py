"""The command-line functions of worst-case search, exhaustive slices, the accuracy table and
tolerances; ``precision_lab.cli`` registers them (``precision-lab search``, ``exhaustive``,
``table``, ``tolerance``).

Every command takes ``--workers N`` (local processes; 0: one per core) or ``--scheduler
tcp://HOST:PORT`` (a Dask cluster): the chunks are the same wherever they run, so the results
are byte-identical.  Finished chunks are kept: an interrupted command continues when rerun with
the same arguments.  Exit codes: 0 done, 1 a failure while computing (finished chunks kept),
2 bad input or a folder that may not be used, 130 interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, List, NoReturn, Optional

import typer

__all__ = ["search_command", "exhaustive_command", "table_command", "tolerance_command"]


def _fail(msg: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _flag(default: bool, decls: str, *extra: str, help: str) -> Any:
    return typer.Option(default, decls, *extra, help=help, metavar="")


_WORKERS = typer.Option(1, "--workers", "-w", min=0,
                        help="Local processes that compute chunks (0: one per core; 1: in "
                             "this process).")
_SCHEDULER = typer.Option(None, "--scheduler",
                          help="Address of a Dask scheduler (tcp://HOST:PORT) to compute the "
                               "chunks on; the results are the same as a local run's.")


class _Guard:
    """Maps the errors of a command to one line and its exit code."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> "_Guard":
        return self

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> None:
        if exc is None or isinstance(exc, typer.Exit):
            return
        import os

        from precision_lab.experiment.errors import ComputeError, ConfigError, RunError
        from precision_lab.experiment.executor import ClusterError

        if isinstance(exc, KeyboardInterrupt):
            _fail(f"interrupted; finished chunks are kept: rerun the same command to continue "
                  f"the {self.what}", 130)
        if isinstance(exc, (ValueError, ConfigError, RunError, ClusterError)):
            _fail(str(exc))
        if isinstance(exc, ComputeError):
            _fail(f"{self.what}: {exc}; finished chunks are kept: rerun to continue", 1)
        if os.environ.get("PRECISION_LAB_TRACEBACK"):
            return
        _fail(f"{self.what}: {type(exc).__name__}: {exc}", 1)


def _executor(workers: int, scheduler: "str | None") -> Any:
    from precision_lab.experiment.executor import default_workers, open_executor

    n = default_workers() if workers == 0 else workers
    return open_executor(workers, scheduler), (n if not scheduler else max(n, 4))


def _num(v: Any) -> str:
    return "—" if v is None else f"{float(v):.6g}"


# --------------------------------------------------------------------------- search

def search_command(
    impl: str = typer.Option(..., "--impl", "-i", help="Implementation: a registry key "
                             "(precision-lab list) or 'package.module:function'.",
                             show_default=False),
    fmt: str = typer.Option(..., "--format", "-f", help="float16, bfloat16, float32 or float64.",
                            show_default=False),
    classes: int = typer.Option(10, "--classes", "-V", min=2, help="Logits per row (V)."),
    budget: Optional[float] = typer.Option(None, "--budget", "-b",
                                           help="Seconds of searching (no new round starts "
                                                "after it); default 60 unless --rounds is "
                                                "given."),
    rounds: Optional[int] = typer.Option(None, "--rounds", "-r", min=1,
                                         help="Search rounds 0..N-1 exactly (replays a "
                                              "search: the same seed and rounds give the same "
                                              "result)."),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="Seed of the search."),
    out: Path = typer.Option(Path("results/search"), "--out", "-o",
                             help="Folder that receives the search's folder "
                                  "(<out>/search_<impl>_<format>_v<V>_s<seed>/)."),
    workers: int = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    force: bool = _flag(False, "--force/--no-force",
                        help="Start over instead of continuing a folder's rounds."),
    as_json: bool = _flag(False, "--json/--no-json", help="Print one JSON object."),
) -> None:
    """Search for the inputs that maximise an implementation's ULP error.

    Random restarts in structured families (margin, scale, offset, near-ties, tail mass), then
    local moves over the logits' float neighbours. Keeps the worst inputs as cases
    (<folder>/cases.npy, replayable with precision-lab explain). The errors found are lower
    bounds. A folder of the same search is continued: its rounds are reused.

    Example: precision-lab search --impl torch --format float16 --classes 10 --budget 60 --json
    """
    from precision_lab.search.worst import SearchSpec, run_search

    if budget is None and rounds is None:
        budget = 60.0
    with _Guard("search"):
        spec = SearchSpec(impl, fmt, classes, seed=seed).resolved()
        ctx, n = _executor(workers, scheduler)
        with ctx as ex:
            res = run_search(spec, out, budget=budget, rounds=rounds, executor=ex, workers=n,
                             force=force)
    doc = res.to_json(res.folder)
    if as_json:
        from precision_lab.experiment.store import dumps

        doc.update({"folder": str(res.folder), "seconds": round(res.seconds, 3),
                    "computed_rounds": res.computed_rounds, "reused_rounds": res.reused_rounds})
        typer.echo(dumps(doc).rstrip())
        return
    w = res.worst
    typer.echo(f"{spec.implementation} in {spec.format}, V = {spec.classes}: {res.rounds} rounds"
               f" ({res.computed_rounds} computed now, {res.reused_rounds} reused), "
               f"{res.evaluations:,} inputs, {res.seconds:.1f} s")
    if w is None:
        typer.echo("no input gave a finite result")
    else:
        typer.echo(f"largest ULP error found: {w.ulp_error:.6g} (a lower bound; family "
                   f"{w.family}, round {w.round})")
        typer.echo(f"  logits {w.logits}\n  target {w.target}")
        typer.echo(f"  computed {w.computed!r}, correctly rounded truth {w.reference!r} "
                   f"({w.ulp_distance} floats apart)")
    for cat, v in res.nonfinite.items():
        typer.echo(f"non-finite results: {cat} on {v['count']:,} inputs, e.g. logits "
                   f"{v['example'].logits} target {v['example'].target} -> "
                   f"{v['example'].computed!r} (truth {v['example'].reference!r})")
    assert res.folder is not None
    typer.echo(f"cases: {res.folder / 'cases.npy'} ({len(res.cases)} worst, worst first)")
    if doc["replay"]:
        typer.echo(f"replay: {doc['replay']}")
    typer.echo(f"reproduce: {doc['reproduce']}")


# --------------------------------------------------------------------------- exhaustive

def exhaustive_command(
    fmt: Optional[str] = typer.Option(None, "--format", "-f",
                                      help="float16 or bfloat16: every pair of non-NaN "
                                           "logits (two classes)."),
    impls: Optional[List[str]] = typer.Option(None, "--impl", "-i",
                                              help="Implementation (repeat for several; "
                                                   "default: every registered one)."),
    target: int = typer.Option(0, "--target", "-t", min=0, max=1, help="Target class, 0 or 1."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="A table config (TOML) whose slice tables name "
                                               "the slices to run (instead of --format)."),
    out: Path = typer.Option(Path("results/exhaustive"), "--out", "-o",
                             help="Folder that receives one folder per slice."),
    workers: int = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    budget: Optional[float] = typer.Option(None, "--budget", "-b",
                                           help="Seconds; no new chunk starts after them "
                                                "(rerun to continue)."),
    force: bool = _flag(False, "--force/--no-force", help="Start over instead of continuing."),
    as_json: bool = _flag(False, "--json/--no-json", help="Print one JSON object per slice."),
) -> None:
    """Evaluate every input of a slice: the largest ULP error is then proven (an upper bound).

    With --format: two-class problems over every pair of non-NaN float16 (or bfloat16)
    logits, about 4e9; the truth depends only on the gap, so it costs a few float64
    operations per pair, and every pair the float64 truth cannot decide goes to the
    certified reference. Finished chunks are kept; rerun to continue.

    Example: precision-lab exhaustive --format float16 --impl lse_log1p --workers 0
    """
    from precision_lab.implementations import REGISTRY
    from precision_lab.search.exhaustive import SliceSpec, run_slice

    with _Guard("slice"):
        if (fmt is None) == (config is None):
            raise ValueError("give --format float16|bfloat16 (every pair) or --config FILE "
                             "(the slices it names)")
        if config is not None:
            from precision_lab.search.table import load_table_config

            slices = list(load_table_config(config).slices)
            if not slices:
                raise ValueError(f"{config} names no [[slice]]")
        else:
            assert fmt is not None
            keys = tuple(impls) if impls else tuple(REGISTRY)
            from precision_lab.numerics.formats import get_format

            name = f"{get_format(fmt).name}_pairs_t{target}"
            slices = [SliceSpec(name, fmt, keys, target=target).resolved()]
        ctx, n = _executor(workers, scheduler)
        results = []
        with ctx as ex:
            for s in slices:
                results.append(run_slice(s, out, executor=ex, workers=n, budget=budget,
                                         force=force))
    for r in results:
        if as_json:
            from precision_lab.experiment.store import dumps

            typer.echo(dumps({**r.to_json(), "folder": str(r.folder),
                              "seconds": round(r.seconds, 3)}).rstrip())
            continue
        s = r.spec
        state = "complete" if r.complete else f"{r.chunks_done} of {s.chunks} chunks (rerun " \
            "to continue)"
        typer.echo(f"{s.name}: {s.describe()}; {state}; {r.seconds:.1f} s -> {r.folder}")
        for k, v in r.per_impl.items():
            nf = {c: n for c, n in v["categories"].items()
                  if c in ("overflow", "nan", "missed_inf") and n}
            mark = "max" if r.complete else "max so far"
            typer.echo(f"  {k}: {mark} {_num(v['max_ulp_error'])} ULP"
                       + (f" at logits {v['max_case']['logits']}" if v["max_case"] else "")
                       + f"; correctly rounded {v['correctly_rounded']:,} of {v['count']:,}"
                       + (f"; inf/NaN {nf}" if nf else ""))


# --------------------------------------------------------------------------- table

def table_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="Table config (TOML); default: the eight "
                                               "classic implementations x every format at "
                                               "V = 2, 10, 1024 and the float16/bfloat16 "
                                               "pair slices."),
    out: Path = typer.Option(Path("results"), "--out", "-o",
                             help="Folder that receives the table's folder (<out>/<name>/)."),
    work: Optional[Path] = typer.Option(None, "--work",
                                        help="Where the slices and searches keep their chunks "
                                             "(default: <out>/.work)."),
    workers: int = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    budget: Optional[float] = typer.Option(None, "--budget", "-b",
                                           help="Seconds for the slices; no new chunk starts "
                                                "after them (rerun to continue)."),
    quiet: bool = _flag(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Write the accuracy table: the largest known ULP error per implementation x format x V.

    Each cell is marked exhaustive (the proven maximum over every input of a slice: an upper
    bound there) or searched (the worst input found: a lower bound), with the input that
    reaches it. Writes <out>/<name>/ (accuracy_table.md, .csv, .json, summary, manifest;
    precision-lab show reads it). Slices and searches keep their chunks under --work, so an
    interrupted table continues when rerun; with --budget, slices still incomplete when it
    ends are searched instead (and continued by the next run).

    Example: precision-lab table --workers 0
    """
    from precision_lab.search.table import build_table, default_spec, load_table_config, write_table

    with _Guard("table"):
        spec = load_table_config(config) if config is not None else default_spec()
        ctx, n = _executor(workers, scheduler)
        with ctx as ex:
            res = build_table(spec, work or out / ".work", executor=ex, workers=n,
                              budget=budget,
                              progress=None if quiet else (lambda m: typer.echo(m, err=True)))
        path = write_table(res, out, finalize=_report_md)
    typer.echo(f"{len(res.cells)} cells -> {path}/accuracy_table.md")
    if res.missing:
        typer.echo(f"slices left incomplete (their cells were searched instead; rerun to "
                   f"continue them): {'; '.join(res.missing)}")


def _report_md(results: Any) -> None:
    """The table's report.md: its Markdown (``precision-lab show`` points at report.md)."""
    results.writer.text("report.md", (results.root / "accuracy_table.md").read_text())


# --------------------------------------------------------------------------- tolerance

def _cases_from(folder: Path, impl: str, fmt: str, classes: "int | None") -> Iterator[Any]:
    """(classes, max_ulp, case, bound, covers, source) candidates from a results folder."""
    if (folder / "accuracy_table.json").is_file():
        doc = json.loads((folder / "accuracy_table.json").read_text())
        for c in doc["cells"]:
            if c["implementation"] == impl and c["format"] == fmt and c["case"] and (
                    classes is None or c["classes"] == classes):
                yield (c["classes"], c["max_ulp_error"], c["case"], c["bound"], c["covers"],
                       f"{folder} ({c['source']})")
    elif (folder / "search.json").is_file():
        d = json.loads((folder / "search.json").read_text())
        if d["implementation"] == impl and d["format"] == fmt and d["cases"] and (
                classes is None or d["classes"] == classes):
            yield (d["classes"], d["max_ulp_error"], d["cases"][0], "lower",
                   f"search: {d['rounds']} rounds, {d['evaluations']:,} inputs", str(folder))
    elif (folder / "slice.json").is_file():
        d = json.loads((folder / "slice.json").read_text())
        r = d["implementations"].get(impl)
        V = len(d["slice"]["logits"])
        if r and r["max_case"] and d["slice"]["format"] == fmt and (classes in (None, V)):
            yield (V, r["max_ulp_error"], r["max_case"], "upper" if d["complete"] else "lower",
                   d["covers"], str(folder))
    else:
        raise ValueError(f"--from {folder}: not an accuracy table, search or exhaustive folder "
                         "(no accuracy_table.json, search.json or slice.json)")


def tolerance_command(
    impl: str = typer.Option(..., "--impl", "-i", help="Implementation key or import path.",
                             show_default=False),
    fmt: str = typer.Option(..., "--format", "-f", help="float16, bfloat16, float32 or float64.",
                            show_default=False),
    classes: Optional[int] = typer.Option(None, "--classes", "-V", min=2,
                                          help="V (default: the largest error over every V "
                                               "in --from; 10 for a new search)."),
    source: Optional[Path] = typer.Option(None, "--from",
                                          help="Measured worst cases: an accuracy table, a "
                                               "search or an exhaustive folder. Without it a "
                                               "search runs for --budget seconds."),
    budget: float = typer.Option(30.0, "--budget", "-b", help="Seconds of the search run when "
                                 "--from is not given."),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="Seed of that search."),
    out: Path = typer.Option(Path("results/search"), "--out", "-o",
                             help="Where that search keeps its folder."),
    workers: int = _WORKERS,
    scheduler: Optional[str] = _SCHEDULER,
    as_json: bool = _flag(False, "--json/--no-json", help="Print one JSON object."),
) -> None:
    """Turn measured worst cases into the rtol/atol to give torch.testing.assert_close.

    From the largest ULP error E measured (exhaustive: proven over its slice; search: a lower
    bound), rtol = (E + 1/2) 2^(1-p) / (1 - 2^-p) and atol = (E + 1/2) times the smallest
    subnormal make assert_close(actual, correctly_rounded_truth) pass wherever the error is at
    most E. Prints the worst input as evidence and whether torch's default tolerances pass it.

    Example: precision-lab tolerance --impl torch --format float16 --from results/accuracy_table
    """
    from precision_lab.implementations import get_implementation
    from precision_lab.numerics.formats import get_format
    from precision_lab.search.tolerance import tolerance

    with _Guard("tolerance"):
        key = get_implementation(impl).key
        fname = get_format(fmt).name
        if source is not None:
            cands = list(_cases_from(source, key, fname, classes))
            if not cands:
                raise ValueError(f"--from {source} holds no case of {key} in {fname}"
                                 + (f" at V = {classes}" if classes else ""))
            V, E, case, bound, covers, src = max(cands, key=lambda c: c[1])
        else:
            from precision_lab.search.worst import SearchSpec, run_search

            spec = SearchSpec(key, fname, classes or 10, seed=seed).resolved()
            ctx, n = _executor(workers, scheduler)
            with ctx as ex:
                r = run_search(spec, out, budget=budget, executor=ex, workers=n)
            if r.worst is None:
                raise ValueError("the search found no input with a finite result")
            from dataclasses import asdict

            V, E, case, bound = spec.classes, r.worst.ulp_error, asdict(r.worst), "lower"
            covers = f"search: {r.rounds} rounds, {r.evaluations:,} inputs, seed {seed}"
            src = str(r.folder)
        tol = tolerance(key, fname, V, float(E), case, bound=bound, covers=covers, source=src)
    if as_json:
        from dataclasses import asdict

        from precision_lab.experiment.store import dumps

        typer.echo(dumps({**asdict(tol), "assert_close": tol.assert_close_call()}).rstrip())
    else:
        typer.echo(tol.text())
