"""The accuracy table: the largest known ULP error per implementation x format x V.

Every cell comes either from an exhaustive slice (:mod:`precision_lab.search.exhaustive`: the
proven maximum over every input of the slice, an *upper bound* there) or from a worst-case
search (:mod:`precision_lab.search.worst`: the worst input found, a *lower bound*), with the
input that reaches it, as Zimmermann et al.'s tables of libm accuracy and CORE-MATH's
exhaustive checks report.  :func:`build_table` runs (or continues) the slices and searches of a
:class:`TableSpec` in a work folder, reusing every finished chunk; :func:`write_table` writes
``<out>/<name>/`` through the store's :class:`~precision_lab.experiment.store.Writer`:
``accuracy_table.md``, ``accuracy_table.csv``, ``accuracy_table.json`` (cells with their inputs
and the non-finite outcomes), ``summary.json``/``.csv`` (the largest known error per
implementation x format, for ``precision-lab show``), the manifest.  Searches run a fixed
number of rounds, so the whole table is reproducible byte for byte (run.json aside).

A table config (TOML) may set every field of :class:`TableSpec`::

    name = "accuracy_table"
    implementations = "all"              # or a list of keys / import paths
    formats = "all"                      # or a list
    classes = [2, 10, 1024]              # V of the searched cells
    rounds = 32                          # rounds per search
    seed = 0

    [[slice]]                            # exhaustive slices (see precision_lab.search.exhaustive)
    name = "float16_pairs_t0"
    format = "float16"
    implementations = "all"
    logits = ["all", "all"]
    target = 0
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from precision_lab.experiment import store
from precision_lab.experiment.errors import ConfigError
from precision_lab.experiment.records import Manifest, RunInfo
from precision_lab.implementations import REGISTRY, get_implementation
from precision_lab.implementations.registry import default_keys
from precision_lab.numerics.formats import FORMATS, get_format, ordered_formats
from precision_lab.search.chunks import software, spec_hash
from precision_lab.search.exhaustive import SliceResult, SliceSpec, parse_slice, run_slice
from precision_lab.search.summary import summary_row, write_summary
from precision_lab.search.worst import SearchResult, SearchSpec, default_name, run_search

__all__ = ["TableSpec", "Cell", "TableResult", "SLICE_IMPLEMENTATIONS", "default_spec",
           "load_table_config",
           "build_table", "write_table", "markdown", "csv_rows", "summary_rows"]

_NONFINITE = ("overflow", "nan", "missed_inf")


@dataclass(frozen=True)
class TableSpec:
    """What the accuracy table covers (see the module docstring for the config keys)."""

    name: str = "accuracy_table"
    implementations: tuple[str, ...] = tuple(REGISTRY)
    formats: tuple[str, ...] = tuple(FORMATS)
    classes: tuple[int, ...] = (2, 10, 1024)
    rounds: int = 32
    seed: int = 0
    slices: tuple[SliceSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "implementations": list(self.implementations),
                "formats": list(self.formats), "classes": list(self.classes),
                "rounds": self.rounds, "seed": self.seed,
                "slices": [s.to_dict() for s in self.slices]}


#: The implementations the committed two-class slices enumerate together (one pass over the
#: pairs serves them all); an implementation registered later gets a slice of its own, so the
#: finished slices stay valid.
SLICE_IMPLEMENTATIONS: tuple[str, ...] = ("naive", "naive_softmax", "lse", "lse_log1p", "torch",
                                          "torch_logsoftmax_nll", "torch_manual", "scipy")


def default_spec() -> TableSpec:
    """The committed table: the eight classic implementations (:data:`SLICE_IMPLEMENTATIONS`)
    in every format at V = 2, 10 and 1024 (32 search rounds each, seed 0), and the two-class
    slices over every float16 and bfloat16 pair, target 0.  Other implementations (the LLM
    zoo, torch_upcast, ...) go in a table config's ``implementations``; each then gets
    searched cells and a slice of its own."""
    base = tuple(k for k in SLICE_IMPLEMENTATIONS if k in REGISTRY)
    slices = tuple(SliceSpec(f"{fm}_pairs_t0", fm, base).resolved()
                   for fm in ("float16", "bfloat16"))
    return TableSpec(implementations=base, slices=slices)


def load_table_config(path: "str | Path") -> TableSpec:
    """A :class:`TableSpec` from a TOML file; ConfigError names the file, the key, the problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, None, f"cannot be read as TOML ({exc})") from None
    allowed = ("name", "implementations", "formats", "classes", "rounds", "seed", "slice")
    for k in data:
        if k not in allowed:
            raise ConfigError(path, k, "unknown key", allowed)
    base = TableSpec()
    impls = data.get("implementations", "all")
    impls = default_keys() if impls == "all" else impls
    fmts = data.get("formats", "all")
    fmts = list(FORMATS) if fmts == "all" else fmts
    if not isinstance(impls, list) or not impls:
        raise ConfigError(path, "implementations", "must be \"all\" or a non-empty list")
    if not isinstance(fmts, list) or not fmts:
        raise ConfigError(path, "formats", "must be \"all\" or a non-empty list",
                          list(FORMATS))
    try:
        impls = [get_implementation(k).key for k in impls]
    except ValueError as exc:
        raise ConfigError(path, "implementations", str(exc)) from None
    try:
        fmts = ordered_formats([get_format(f).name for f in fmts])
    except ValueError as exc:
        raise ConfigError(path, "formats", str(exc), list(FORMATS)) from None
    classes = data.get("classes", list(base.classes))
    if not isinstance(classes, list) or not all(isinstance(v, int) and v >= 2 for v in classes):
        raise ConfigError(path, "classes", "must be a list of integers >= 2")
    for key in ("rounds", "seed"):
        v = data.get(key, getattr(base, key))
        if not isinstance(v, int) or v < (1 if key == "rounds" else 0):
            raise ConfigError(path, key, f"must be an integer >= {1 if key == 'rounds' else 0}")
    raw = data.get("slice", [])
    if not isinstance(raw, list):
        raise ConfigError(path, "slice", "must be an array of tables ([[slice]])")
    slices = tuple(parse_slice(s, str(path), f"slice[{i}]") for i, s in enumerate(raw))
    names = [s.name for s in slices]
    if len(set(names)) != len(names):
        raise ConfigError(path, "slice", "two slices share a name")
    name = data.get("name", base.name)
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(path, "name", f"{name!r} is not a folder name")
    return TableSpec(name, tuple(impls), tuple(fmts), tuple(classes), int(data.get(
        "rounds", base.rounds)), int(data.get("seed", base.seed)), slices)


@dataclass
class Cell:
    """One implementation x format x V: the largest known ULP error and where it comes from.

    Attributes:
        bound: "upper" (exhaustive: the proven maximum over ``covers``) or "lower" (search).
        covers: what was examined, in words.
        evaluations: inputs evaluated.
        max_ulp_error: None if no input gave a finite result.
        case: the input that reaches it (logits, target, computed, reference, ...).
        correctly_rounded: inputs with a correctly rounded result (of a search's inputs, which
            are chosen to be bad: not a rate of anything).
        nonfinite: count per non-finite category and its first example.
        source: the folder (under the work folder) the cell was read from.
        reproduce: the command that recomputes it.
        categories: inputs per result category (finite, inf_match, overflow, nan, ...).
    """

    implementation: str
    format: str
    classes: int
    bound: str
    covers: str
    evaluations: int
    max_ulp_error: "float | None"
    case: "dict[str, Any] | None"
    correctly_rounded: "int | None" = None
    nonfinite: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""
    reproduce: str = ""
    categories: dict[str, int] = field(default_factory=dict)


@dataclass
class TableResult:
    spec: TableSpec
    cells: list[Cell]
    missing: list[str] = field(default_factory=list)  # slices left incomplete (searched)
    seconds: float = 0.0


def _slice_cells(r: SliceResult) -> list[Cell]:
    s = r.spec
    out = []
    for k, v in r.per_impl.items():
        nonfinite = {c: {"count": v["categories"][c],
                         "example": v["nonfinite_examples"].get(c)}
                     for c in _NONFINITE if v["categories"][c]}
        out.append(Cell(k, s.format, len(s.logits), "upper", s.describe(), v["count"],
                        v["max_ulp_error"], v["max_case"], v["correctly_rounded"], nonfinite,
                        s.name, _slice_command(s, k), dict(v["categories"])))
    return out


def _slice_command(s: SliceSpec, impl: str) -> str:
    if tuple(s.logits) == ("all", "all"):
        return (f"precision-lab exhaustive --format {s.format} --target {s.target} "
                f"--impl {impl}")
    return f"precision-lab table --config CONFIG (slice {s.name})"


def _search_cell(r: SearchResult) -> Cell:
    s = r.spec
    w = r.worst
    return Cell(s.implementation, s.format, s.classes, "lower",
                f"search: {r.rounds} rounds, {r.evaluations:,} inputs, seed {s.seed}",
                r.evaluations, None if w is None else w.ulp_error,
                None if w is None else _case_dict(w), r.correctly_rounded,
                {k: {"count": v["count"], "example": _case_dict(v["example"])}
                 for k, v in r.nonfinite.items()},
                default_name(s), r.to_json()["reproduce"], dict(r.categories))


def _case_dict(c: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(c)


def build_table(spec: TableSpec, work: "str | Path", *, executor: Any = None,
                workers: int = 1, budget: "float | None" = None,
                progress: "Callable[[str], None] | None" = None) -> TableResult:
    """Run or continue every slice and search of ``spec`` under ``work`` and collect the cells.

    Slices come first.  With ``budget`` (seconds) the slices take no new chunk after it; a
    slice left incomplete is listed in ``missing`` (rerun to continue it) and its cells are
    searched instead.  A complete slice over every pair of a format (logits "all") stands for
    its V = 2 cells; a narrower slice adds its cells next to the searched ones."""
    import time

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    cells: list[Cell] = []
    missing: list[str] = []
    covered: set[tuple[str, str, int]] = set()
    deadline = None if budget is None else time.monotonic() + budget
    for s in spec.slices:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        r = run_slice(s, work, executor=executor, workers=workers, budget=left)
        say(f"slice {s.name}: {r.chunks_done}/{s.chunks} chunks"
            + ("" if r.complete else " (incomplete: its cells are searched; rerun to "
               "continue it)"))
        if not r.complete:
            missing.append(f"{s.name} ({r.chunks_done} of {s.chunks} chunks)")
            continue
        whole = all(a == "all" for a in s.logits)
        for c in _slice_cells(r):
            if c.implementation in spec.implementations and c.format in spec.formats:
                cells.append(c)
                if whole:
                    covered.add((c.implementation, c.format, c.classes))
    for fm in spec.formats:
        for impl in spec.implementations:
            for V in spec.classes:
                if (impl, fm, V) in covered:
                    continue
                ss = SearchSpec(impl, fm, V, seed=spec.seed)
                r2 = run_search(ss, work, budget=None, rounds=spec.rounds, executor=executor,
                                workers=workers)
                say(f"search {impl} {fm} V={V}: {r2.max_ulp_error}")
                cells.append(_search_cell(r2))
    return TableResult(spec, cells, missing, time.perf_counter() - t0)


# --------------------------------------------------------------------------- rendering

def _num(v: Any, digits: int = 4) -> str:
    from math import isfinite

    if v is None:
        return "—"
    v = float(v)
    if not isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e6 or abs(v) < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _input(c: Cell) -> str:
    if not c.case:
        return "—"
    logits = c.case["logits"]
    shown = ", ".join(repr(v) for v in logits[:4]) + (", …" if len(logits) > 4 else "")
    return f"[{shown}] t={c.case['target']}"


def _order(cells: list[Cell]) -> list[Cell]:
    fmts = ordered_formats({c.format for c in cells})
    impls = list(dict.fromkeys(c.implementation for c in cells))
    return sorted(cells, key=lambda c: (fmts.index(c.format), impls.index(c.implementation),
                                        c.classes))


def _largest(cells: list[Cell]) -> dict[tuple[str, str], Cell]:
    """Per implementation x format the cell with the largest error (an upper-bound cell among
    equals)."""
    best: dict[tuple[str, str], Cell] = {}
    for c in cells:
        k = (c.implementation, c.format)
        v = -1.0 if c.max_ulp_error is None else c.max_ulp_error
        b = best.get(k)
        bv = None if b is None else (-1.0 if b.max_ulp_error is None else b.max_ulp_error)
        if b is None or bv is None or v > bv:
            best[k] = c
    return best


def markdown(res: TableResult) -> str:
    """The table as Markdown: an overview (implementation x format) and every cell."""
    cells = _order(res.cells)
    fmts = ordered_formats({c.format for c in cells})
    impls = [i for i in res.spec.implementations if any(x.implementation == i for x in cells)]
    by = {(c.implementation, c.format, c.classes): c for c in cells}
    lines = ["# Accuracy table: largest known ULP error of cross-entropy", "",
             "ULP error = |computed − exact| / ulp(exact) against the unrounded truth (a "
             "correctly rounded result has at most 0.5). **≤ X (E)**: exhaustive, the proven "
             "maximum over every input of the slice (an upper bound there); **≥ X (S)**: the "
             "worst input a search found (a lower bound). Non-finite results on finite truths "
             "(inf, NaN) are counted apart, never in the error.", ""]
    head = ["implementation", *[f"{fm}, V={V}" for fm in fmts for V in sorted(
        {c.classes for c in cells if c.format == fm})]]
    cols = [(fm, V) for fm in fmts for V in sorted({c.classes for c in cells if c.format == fm})]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for im in impls:
        row = [f"`{im}`"]
        for fm, V in cols:
            c = by.get((im, fm, V))
            if c is None:
                row.append("")
                continue
            mark = "≤" if c.bound == "upper" else "≥"
            tag = "E" if c.bound == "upper" else "S"
            nf = sum(v["count"] for v in c.nonfinite.values())
            txt = f"{mark} {_num(c.max_ulp_error)} ({tag})"
            if nf:
                txt += f"; inf/NaN on {nf:,}"
            row.append(txt)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Every cell, with the input that reaches it", "",
              "| implementation | format | V | bound | max ULP error | input (logits, target) "
              "| computed | correctly rounded truth | examined |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        comp = _num(c.case["computed"], 6) if c.case else "—"
        ref = _num(c.case["reference"], 6) if c.case else "—"
        lines.append(f"| `{c.implementation}` | {c.format} | {c.classes} | "
                     f"{'upper (exhaustive)' if c.bound == 'upper' else 'lower (search)'} | "
                     f"{_num(c.max_ulp_error, 6)} | {_input(c)} | {comp} | {ref} | "
                     f"{c.covers} |")
    slices = [c for c in cells if c.bound == "upper"]
    if slices:
        lines += ["", "Exhaustive cells (E) cover exactly: " + "; ".join(
            f"{name}: {covers}" for name, covers in dict.fromkeys(
                (c.source, c.covers) for c in slices)) + ". Their maxima are certified "
            "errors of inputs within 2**(p-37) ULP of the true maximum (p the precision)."]
    if res.missing:
        lines += ["", "Slices left incomplete (their cells are searched here): "
                  + "; ".join(res.missing) + "."]
    lines += ["", "Exact inputs (every logit as a float64 that holds the format's value "
              "exactly) are in accuracy_table.csv and accuracy_table.json; "
              "`precision-lab explain --logits \"...\" --target T --format F` replays one.", ""]
    return "\n".join(lines)


def csv_rows(res: TableResult) -> list[dict[str, Any]]:
    """One row per cell, with the exact input."""
    out = []
    for c in _order(res.cells):
        case = c.case or {}
        row: dict[str, Any] = {
            "implementation": c.implementation, "format": c.format, "classes": c.classes,
            "bound": c.bound, "max_ulp_error": c.max_ulp_error,
            "logits": " ".join(repr(v) for v in case.get("logits", [])),
            "target": case.get("target"), "computed": case.get("computed"),
            "reference": case.get("reference"), "ulp_distance": case.get("ulp_distance"),
            "relative_error": case.get("relative_error"), "evaluations": c.evaluations,
            "correctly_rounded": c.correctly_rounded, "covers": c.covers, "source": c.source,
            "reproduce": c.reproduce}
        for cat in _NONFINITE:
            row[f"n_{cat}"] = c.nonfinite.get(cat, {}).get("count", 0)
        out.append(row)
    return out


def summary_rows(res: TableResult) -> list[dict[str, Any]]:
    """The largest known error per implementation x format as summary.json rows (what
    ``precision-lab show`` prints), with the V and bound of the cell that reaches it."""
    best = _largest(res.cells)
    return [summary_row(i, {"classes": c.classes, "bound": c.bound}, c.implementation,
                        c.format, c.evaluations, c.categories, c.correctly_rounded or 0,
                        c.max_ulp_error)
            for i, c in enumerate(_order(list(best.values())))]


def write_table(res: TableResult, out_root: "str | Path",
                finalize: "Callable[[store.Results], None] | None" = None) -> Path:
    """Write ``<out_root>/<spec.name>/`` atomically (a temporary folder renamed into place);
    ``finalize(results)`` may add files (the report) through ``results.writer``."""
    from precision_lab.experiment.provenance import environment, git_info, platform_info

    spec = res.spec
    out_root = Path(out_root)
    target = out_root / spec.name
    tmp = out_root / f".{spec.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config = {"table": spec.to_dict(), "software": software()}
    try:
        w = store.Writer(tmp)
        w.text("accuracy_table.md", markdown(res))
        rows = csv_rows(res)
        w.csv("accuracy_table.csv", rows)
        w.json("accuracy_table.json", {"name": spec.name, "cells": res.cells})
        summ = summary_rows(res)
        question = ("What is the largest known ULP error of each cross-entropy implementation in "
                    "each format, and is it proven (exhaustive) or found (search)?")
        write_summary(w, spec.name, question, ["classes", "bound"], summ)
        manifest = Manifest(
            name=spec.name, question=question, kind="table", status="complete",
            description=("Exhaustive slices (upper bounds over every input they cover) and "
                         "worst-case searches (lower bounds) per implementation x format x V; "
                         "see accuracy_table.md."),
            config=store.to_jsonable(config), config_sha256=spec_hash(config),
            sweep_axes=["classes", "bound"],
            points=[{"point": r["point"], "params": {"classes": r["classes"],
                                                     "bound": r["bound"]}} for r in summ],
            environment=environment(),
            counts={"cells": len(res.cells),
                    "evaluations": sum(c.evaluations for c in res.cells)},
            files=dict(w.files))
        if finalize is not None:
            draft = store.Results(tmp, manifest, writer=w)
            finalize(draft)
            manifest = draft.manifest
        manifest = replace(manifest, files=dict(sorted(w.files.items())))
        store.Writer(tmp).json(store.MANIFEST, manifest)
        store.Writer(tmp).json(store.RUN_INFO, RunInfo(
            finished_at=store.now_iso(), stage_seconds={"compute": round(res.seconds, 3)},
            platform=platform_info(), git=git_info()))
        old = out_root / f".{spec.name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
