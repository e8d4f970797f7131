"""Running an experiment: chunks, resuming, the tables, the folder.

Python API (the CLI is a thin layer over it)::

    from precision_lab.experiment.config import load_config
    from precision_lab.experiment.runner import run_experiment
    res = run_experiment(load_config("experiments/seed_question.toml"), out_root="results")
    res.path        # results/seed_question/

A run is a list of *chunks*, one per sweep point and format.  A chunk generates the point's
inputs, rounds them once to the format, measures every implementation against the certified
reference (:func:`precision_lab.experiment.measure.measure`) and builds its tables
(:func:`precision_lab.experiment.tables.chunk_tables`); it is written atomically to
``<folder>/partial/`` together with its rounded inputs.  When every chunk is done the tables are
assembled into a temporary folder beside the target; ``finalize`` (the report, passed in by the
caller so that this layer never imports the report) writes into the same folder; the folder
then replaces the target in one rename.  An interrupted run leaves the target with status
"partial" and its finished chunks; ``resume`` computes only the missing ones (refused when the
config changed).  Tables hold no wall-clock data, so the same config and seed give
byte-identical tables; times live in ``run.json``.

Before anything is computed the folder is locked (:class:`~precision_lab.experiment.store.
FolderLock`: a second run into the same folder is refused while the first one lives) and then
checked (:func:`preflight`: exists? complete and intact? partial? a folder precision-lab did
not write, which is never replaced? writable?).  A ``force`` run keeps the folder it replaces
until the new one is published, and puts it back if it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precision_lab.experiment import store
from precision_lab.experiment.config import (
    ExperimentConfig,
    SweepPoint,
    compare_formats,
    compare_keys,
    config_hash,
    format_names,
    generate,
    implementation_keys,
    pad_fill,
    parse_config,
    quantities,
    raw_data,
    resolved_config,
    source_of,
    sweep_axes,
    sweep_points,
)
from precision_lab.experiment.errors import ComputeError, ResultsExistError, RunError
from precision_lab.experiment.inputs import Batch, InputBatch, LinearBatch
from precision_lab.experiment.measure import Presentation, measure, measure_linear
from precision_lab.experiment.progress import NO_PROGRESS, Progress
from precision_lab.experiment.provenance import (
    environment,
    git_info,
    peak_rss_mib,
    platform_info,
    reset_peak_rss,
)
from precision_lab.experiment.records import (
    AgreementRow,
    CompareResult,
    GradFacts,
    Manifest,
    RunInfo,
    SummaryRow,
    summary_columns,
)
from precision_lab.experiment.tables import ChunkTables, chunk_key, chunk_tables, values_view
from precision_lab.implementations import get_implementation
from precision_lab.implementations.zoo import resolve_linear
from precision_lab.numerics.formats import get_format, to_format

__all__ = ["RunResult", "Finalize", "run_experiment", "preflight", "replaces", "compute_chunk",
           "assemble_tables", "publish", "RunError", "ResultsExistError"]

#: ``finalize(folder)`` writes more files (the report) into the temporary folder of a run
#: through ``folder.writer`` before it replaces the target; ``folder`` is a
#: :class:`~precision_lab.experiment.store.Results` whose tables are already in memory.
Finalize = Callable[[Any, Progress], None]


@dataclass
class RunResult:
    """A finished run: where it is, its manifest and run info, how much was computed."""

    path: Path
    manifest: Manifest
    run_info: RunInfo
    computed_chunks: int = 0
    resumed_chunks: int = 0
    stale_lock: "dict[str, Any] | None" = None

    @property
    def stage_seconds(self) -> dict[str, float]:
        return self.run_info.stage_seconds


# --------------------------------------------------------------------------- preflight

def preflight(cfg: ExperimentConfig, out_root: "str | Path", *, force: bool = False,
              resume: bool = False) -> tuple[str, "Manifest | None"]:
    """Check that ``out_root/<name>`` may be written; return its state and manifest.

    Raises :class:`LockedError` when a live run holds the folder (checked first, so a run in
    progress is named as such), and :class:`ResultsExistError` / :class:`RunError` with the
    reason and the option that would allow it: a complete folder needs ``force`` (a damaged
    one is named as damaged); a partial one ``resume`` (refused for another config or a
    damaged chunk) or ``force``; ``resume`` needs a partial folder.  A file, or a folder that
    precision-lab did not write, is never replaced, whatever the options; an unwritable
    ``out_root`` needs another ``--out``.  Writes nothing but a probe file, removed at once.
    :func:`run_experiment` checks the state again once it holds the lock."""
    out_root = Path(out_root)
    _check_writable(out_root, keep=False)
    store.FolderLock(out_root, cfg.name).probe()
    return _classify(cfg, out_root / cfg.name, force=force, resume=resume)


def _resumes(cfg: ExperimentConfig, state: str, old: "Manifest | None", resume: bool) -> bool:
    """Whether a run with these options continues the partial run in its folder."""
    return bool(resume and state == "partial" and old is not None
                and old.config_sha256 == config_hash(cfg))


def replaces(cfg: ExperimentConfig, state: str, old: "Manifest | None", resume: bool) -> bool:
    """Whether a run (allowed by :func:`preflight`) replaces an existing folder: that folder
    is kept, untouched, until the new one is published, and restored if the run fails."""
    return state != "absent" and not _resumes(cfg, state, old, resume)


def _classify(cfg: ExperimentConfig, target: Path, *, force: bool, resume: bool
              ) -> tuple[str, "Manifest | None"]:
    state, old = store.folder_state(target)
    if state == "file":
        raise RunError(f"{target} is a file, not a results folder; it is never replaced (not "
                       "even with --force): move it away, or use --out DIR to write elsewhere")
    if state == "foreign":
        raise RunError(f"{target} exists and is not a precision-lab results folder (no "
                       "precision-lab manifest.json); it is never replaced (not even with "
                       "--force): move it away, or use --out DIR to write elsewhere")
    if resume and not force:
        if state == "absent":
            raise ResultsExistError(f"{target} does not exist; nothing to resume (run without "
                                    "--resume to compute it, or give the --out DIR the "
                                    "interrupted run wrote to)")
        if state == "complete" and old is not None:
            _refuse_damaged(target, old)
            raise ResultsExistError(f"{target} is already complete; nothing to resume (use "
                                    "--force to recompute it, or --out DIR to write elsewhere)")
        if state == "damaged":
            raise ResultsExistError(f"{target} is a precision-lab results folder whose "
                                    "manifest.json cannot be read; nothing to resume (use "
                                    "--force to replace it)")
        if state == "partial" and old is not None and old.config_sha256 != config_hash(cfg):
            raise RunError(f"refusing to resume {target}: it was started from a different "
                           f"config (stored hash {old.config_sha256[:12]}..., this config "
                           f"{config_hash(cfg)[:12]}...); use --force to start over")
    elif state != "absent" and not force:
        if state == "complete" and old is not None:
            _refuse_damaged(target, old)
            raise ResultsExistError(f"{target} already exists and is complete; use --force to "
                                    "overwrite it, or --out DIR to write elsewhere")
        if state == "partial" and old is not None:
            raise ResultsExistError(f"{target} holds a partial run ({old.chunks_done} of "
                                    f"{len(old.chunks)} chunks done); use --resume to finish "
                                    "it (or --force to start over)")
        raise ResultsExistError(f"{target} is a precision-lab results folder whose "
                                "manifest.json cannot be read; use --force to replace it, or "
                                "--out DIR to write elsewhere")
    if _resumes(cfg, state, old, resume) and old is not None:
        _check_chunks(target, old)
    return state, old


def _refuse_damaged(target: Path, old: Manifest) -> None:
    """A "complete" folder whose listed files are missing or damaged is named as damaged."""
    problems = store.verify(target, old)
    if problems:
        rel, why = problems[0]
        more = f" ({len(problems)} files in all)" if len(problems) > 1 else ""
        raise ResultsExistError(f"{target / rel} {why}{more}, so {target} is damaged, not "
                                "complete; use --force to recompute it, or --out DIR to write "
                                "elsewhere")


#: The files of a finished chunk in ``partial/`` (its samples table last: it marks it done).
CHUNK_SUFFIXES = (".rows.parquet", ".json", ".parquet")


def _damaged_chunk(target: Path, key: str, rel: str, why: str) -> RunError:
    return RunError(f"{target / rel} {why}, so chunk {key} cannot be resumed; use --force to "
                    f"start over (or delete {target / 'partial' / key}.* to recompute only "
                    "that chunk with --resume)")


def _check_chunks(target: Path, old: Manifest) -> None:
    """Check the finished chunks a resume would use against the sha256 the partial manifest
    records (a partial folder from before hashes were recorded is checked when read)."""
    partial = target / "partial"
    for key in old.chunks:
        if not _chunk_done(partial, key):
            continue
        for suffix in CHUNK_SUFFIXES:
            rel = f"partial/{key}{suffix}"
            sha = old.files.get(rel)
            if sha is not None and store.sha256_of(target / rel) != sha:
                raise _damaged_chunk(target, key, rel, "does not match the sha256 the partial "
                                     "manifest records (damaged or edited)")


def _check_writable(out_root: Path, keep: bool = True) -> None:
    """Create ``out_root`` if needed and write a probe file into it; ``keep=False`` removes a
    folder created here again (a check that is followed by a refusal leaves nothing)."""
    created = not out_root.exists()
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        probe = out_root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        if created and not keep:
            out_root.rmdir()
    except OSError as exc:
        raise RunError(f"cannot write into {out_root} ({exc.strerror or exc}); choose another "
                       "folder with --out DIR") from None


# --------------------------------------------------------------------------- one chunk

#: The stored inputs of a chunk besides its logits (``<chunk><suffix>.npy``): targets, class
#: weights, and the ``linear`` generator's hidden states and classifier weight.
INPUT_SUFFIXES = ("", ".targets", ".weight", ".hidden", ".classifier")


def presentation(point: SweepPoint) -> Presentation:
    """How the point's implementations receive the logits (its layout keys; defaults when
    absent)."""
    p = point.params
    pad = p.get("pad_vocab_to")
    return Presentation(str(p.get("layout", "contiguous")),
                        int(pad) if pad is not None else None,
                        pad_fill(str(p.get("pad_value", "-inf"))))


def compute_chunk(cfg: ExperimentConfig, point: SweepPoint, fmt: str,
                  inputs: "Batch | None" = None
                  ) -> tuple[ChunkTables, np.ndarray, np.ndarray, "dict[str, np.ndarray]"]:
    """One sweep point in one format: (its tables, the rounded logits, the targets, the
    other stored inputs by suffix: ".weight" the rounded class weights, or ".hidden" and
    ".classifier" for the linear generator).

    The logits (and probability targets and class weights) are rounded once to the
    config's ``input_format``, or to ``fmt`` without one; the reference is the exact loss of
    those values rounded to ``fmt``.  The linear generator's hidden states and weight are
    rounded the same way; its reference is the loss of their exact product, and the logits
    returned (for the row facts, not stored) are that product's float64 approximation."""
    batch = generate(cfg, point) if inputs is None else inputs
    in_fmt = cfg.input_format or fmt
    cmp = None
    if cfg.compare is not None and get_format(fmt).name in compare_formats(cfg):
        cmp = compare_keys(cfg)
    if isinstance(batch, LinearBatch):
        h = to_format(batch.hidden, in_fmt)
        w = to_format(batch.classifier, in_fmt)
        lin = [resolve_linear(k) for k in implementation_keys(cfg)]
        meas, x = measure_linear(h, w, batch.targets, fmt, lin, device=cfg.device)
        tables = chunk_tables(point.index, dict(point.swept), fmt, {"loss": meas}, x,
                              batch.targets, cfg.reduction, cmp)
        return tables, x, batch.targets, {".hidden": h, ".classifier": w}
    x = to_format(batch.logits, in_fmt)
    t = batch.targets if batch.targets.ndim == 2 else to_format(batch.targets, in_fmt)
    keywords = loss_keywords(cfg, point, batch, in_fmt)
    impls = [get_implementation(k) for k in implementation_keys(cfg)]
    shown = presentation(point)
    measurements = {q: measure(x, t, fmt, impls, reduction=cfg.reduction, device=cfg.device,
                               keywords=keywords, quantity=q, presentation=shown)
                    for q in quantities(cfg)}
    tables = chunk_tables(point.index, dict(point.swept), fmt, measurements, x, t,
                          cfg.reduction, cmp)
    extra = {".weight": keywords["weight"]} if "weight" in keywords else {}
    return tables, x, t, extra


def loss_keywords(cfg: ExperimentConfig, point: SweepPoint, batch: InputBatch,
                  in_fmt: str) -> dict[str, Any]:
    """The loss keywords of a chunk, only those away from their defaults: the point's
    label_smoothing, z_loss and softcap, the class weights rounded once to the logits'
    format, and ignore_index."""
    if cfg.loss is None:
        return {}
    p = point.params
    kw: dict[str, Any] = {}
    if batch.weight is not None:
        kw["weight"] = to_format(batch.weight, in_fmt)
    if cfg.loss.ignore_index != -100:
        kw["ignore_index"] = cfg.loss.ignore_index
    for key in ("label_smoothing", "z_loss"):
        if float(p.get(key, 0.0)) != 0.0:
            kw[key] = float(p[key])
    if p.get("softcap") is not None:
        kw["softcap"] = float(p["softcap"])
    return kw


_CACHED: dict[tuple[str, int], Batch] = {}


def chunk_job(data: dict[str, Any], source: str, point_index: int, fmt: str
              ) -> tuple[ChunkTables, np.ndarray, np.ndarray, "dict[str, np.ndarray]", float]:
    """One chunk from a config's raw data: what an executor runs in another process (or on a
    cluster).  Returns the chunk's tables, its rounded inputs and targets, and its seconds.
    The point's generated inputs are kept for the next chunk of the same point."""
    t0 = time.perf_counter()
    cfg = parse_config(data, source)
    point = sweep_points(cfg)[point_index]
    key = (config_hash(cfg), point_index)
    if key not in _CACHED:
        _CACHED.clear()
        _CACHED[key] = generate(cfg, point)
    tables, x, y, w = compute_chunk(cfg, point, fmt, _CACHED[key])
    return tables, x, y, w, time.perf_counter() - t0


def _save_chunk(partial: Path, t: ChunkTables, x: np.ndarray, y: np.ndarray,
                extra: "dict[str, np.ndarray] | None" = None) -> dict[str, str]:
    """Write a finished chunk; its inputs: the logits, unless the chunk has hidden states
    (then the logits are derived, and the hidden states and weight are stored instead).
    Returns the sha256 of its table files by path relative to the results folder."""
    w = store.Writer(partial)
    extra = extra or {}
    store.save_inputs(partial / store.INPUTS_DIR, t.key, None if ".hidden" in extra else x, y,
                      extra=extra)
    w.parquet(f"{t.key}.rows.parquet", t.rows)
    w.json(f"{t.key}.json", {"summary": [r.to_row(True) for r in t.summary],
                             "agreement": [r.to_row(True) for r in t.agreement],
                             "compare": [r.to_row() for r in t.compare],
                             "grad_facts": [r.to_row() for r in t.grad_facts],
                             "slow_rows": t.slow_rows, "logit_rows": t.logit_rows})
    w.parquet(f"{t.key}.parquet", t.samples)  # last: its presence marks the chunk done
    return {f"{partial.name}/{rel}": sha for rel, sha in w.files.items()}


def _load_chunk(partial: Path, key: str, axes: list[str]) -> ChunkTables:
    """A finished chunk read back (:func:`_damaged_chunk` names a file that cannot be read)."""
    rel = f"{partial.name}/{key}.json"
    try:
        meta = json.loads((partial / f"{key}.json").read_text())
        rel = f"{partial.name}/{key}.parquet"
        samples = pq.read_table(partial / f"{key}.parquet")
        rel = f"{partial.name}/{key}.rows.parquet"
        rows = pq.read_table(partial / f"{key}.rows.parquet")
        return ChunkTables(key, samples, rows,
                           [SummaryRow.from_row(r, axes) for r in meta["summary"]],
                           [AgreementRow.from_row(r, axes) for r in meta["agreement"]],
                           [CompareResult.from_row(r, axes) for r in meta["compare"]],
                           int(meta["slow_rows"]),
                           [GradFacts.from_row(r, axes) for r in meta.get("grad_facts", [])],
                           int(meta["logit_rows"]))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged chunk
        raise _damaged_chunk(partial.parent, key, rel,
                             f"cannot be read ({type(exc).__name__})") from None


def _chunk_done(partial: Path, key: str) -> bool:
    return all((partial / f"{key}{s}").is_file() for s in (".parquet", ".rows.parquet", ".json"))


# --------------------------------------------------------------------------- the tables

def assemble_tables(manifest: Manifest, reduction: str, chunks: list[ChunkTables],
                    writer: store.Writer, compare: "tuple[str, str, float, list[str]] | None" = None
                    ) -> dict[str, Any]:
    """Write samples, rows, summary, agreement, (with ``compare`` = (a, b, abs_tol,
    formats)) compare, and (when gradients were measured) gradients tables of all chunks;
    return the in-memory tables for the report."""
    axes = list(manifest.sweep_axes)
    wq = any(r.quantity != "loss" for c in chunks for r in c.summary)
    samples = pa.concat_tables([c.samples for c in chunks])
    rows = pa.concat_tables([c.rows for c in chunks])
    writer.parquet("samples.parquet", samples)
    writer.parquet("rows.parquet", rows)
    summary_rows = [r.to_row(wq) for c in chunks for r in c.summary]
    summary_doc: dict[str, Any] = {"experiment": manifest.name, "question": manifest.question,
                                   "reduction": reduction, "sweep_axes": axes,
                                   "rows": summary_rows}
    values = values_view(samples, axes)
    if values is not None:
        summary_doc["values"] = values
    writer.json("summary.json", summary_doc)
    writer.csv("summary.csv", [{k: r[k] for k in summary_columns(axes, wq)}
                               for r in summary_rows])
    agreement_rows = [r.to_row(wq) for c in chunks for r in c.agreement]
    agreement_doc = {"experiment": manifest.name, "sweep_axes": axes, "rows": agreement_rows}
    writer.json("agreement.json", agreement_doc)
    writer.csv("agreement.csv", agreement_rows)
    out = {"samples": samples, "rows": rows, "summary.json": summary_doc,
           "agreement.json": agreement_doc}
    if wq:
        grad_doc = {"experiment": manifest.name, "sweep_axes": axes,
                    "rows": [r.to_row() for c in chunks for r in c.grad_facts]}
        writer.json("gradients.json", grad_doc)
        out["gradients.json"] = grad_doc
    if compare is not None:
        a, b, tol, fmts = compare
        compare_doc = {"a": a, "b": b, "abs_tol": tol, "formats": sorted(fmts),
                       "results": [r.to_row() for c in chunks for r in c.compare]}
        writer.json("compare.json", compare_doc)
        out["compare.json"] = compare_doc
    return out


def publish(out_root: Path, manifest: Manifest, run_info: RunInfo, chunks: list[ChunkTables], *,
            reduction: str, compare: "tuple[str, str, float, list[str]] | None" = None,
            inputs_from: "Path | None" = None, input_keys: "list[str] | None" = None,
            finalize: "Finalize | None" = None, progress: Progress = NO_PROGRESS,
            t_start: "float | None" = None) -> tuple[Manifest, RunInfo]:
    """Write a complete results folder ``out_root/<manifest.name>`` from finished chunks.

    Everything goes into a temporary folder beside the target (tables, the stored inputs moved
    from ``inputs_from``, then whatever ``finalize`` writes: the report), which then replaces
    the target in one rename; nothing half-written is ever left in the target.  The caller
    holds the folder's lock.  Returns the final manifest and run info."""
    t_start = time.perf_counter() if t_start is None else t_start
    target = out_root / manifest.name
    evaluations = sum(c.samples.num_rows for c in chunks)
    fmts = list(dict.fromkeys(c.key.split("_", 1)[1] for c in chunks))
    logit_rows = sum(c.logit_rows for c in chunks if c.key.endswith("_" + fmts[0]))
    impls = {r.implementation for c in chunks for r in c.summary}
    manifest = replace(manifest, counts={"logit_rows": logit_rows, "evaluations": evaluations,
                                         "implementations": len(impls), "formats": len(fmts)},
                       slow_rows={c.key: c.slow_rows for c in chunks})
    tmp = out_root / f".{manifest.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        writer = store.Writer(tmp)
        tables = assemble_tables(manifest, reduction, chunks, writer, compare)
        inputs = (_adopt_inputs(inputs_from, tmp, input_keys or []) if inputs_from is not None
                  else {})
        t_compute = time.perf_counter() - t_start
        manifest = replace(manifest, status="complete", inputs=inputs, files=dict(writer.files))
        t_report0 = time.perf_counter()
        if finalize is not None:
            draft = store.Results(tmp, manifest, writer=writer, tables=tables)
            finalize(draft, progress)
            manifest = draft.manifest
        t_report = time.perf_counter() - t_report0
        manifest = replace(manifest, files=dict(sorted(writer.files.items())))
        run_info = replace(run_info, finished_at=store.now_iso(), stage_seconds={
            "compute": round(t_compute, 3), "report": round(t_report, 3),
            "total": round(time.perf_counter() - t_start, 3)}, peak_rss_mib=peak_rss_mib())
        store.Writer(tmp).json(store.MANIFEST, manifest)
        store.Writer(tmp).json(store.RUN_INFO, run_info)
        old_dir = out_root / f".{manifest.name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old_dir)
        os.replace(tmp, target)
        shutil.rmtree(old_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, run_info


# --------------------------------------------------------------------------- the run

def run_experiment(cfg: ExperimentConfig, out_root: "str | Path" = "results", *,
                   force: bool = False, resume: bool = False,
                   progress: Progress = NO_PROGRESS, finalize: "Finalize | None" = None,
                   command: "str | None" = None, executor: "Executor | None" = None
                   ) -> RunResult:
    """Run ``cfg`` into ``out_root/<name>/``.

    Raises:
        ResultsExistError, RunError, LockedError: the folder may not be written (nothing is),
            or a chunk to resume is damaged (named).
        ComputeError: an implementation or the reference failed while computing; finished
            chunks stay in ``<target>/partial/`` with the manifest status "partial".
        KeyboardInterrupt: likewise, the finished chunks are kept.

    A run that replaces a folder (``force``; :func:`replaces`) moves it aside to
    ``out_root/.<name>.replaced-<pid>`` and removes it only once the new folder is published;
    if the run fails or is interrupted the new chunks are discarded and the old folder is put
    back as it was.
    """
    t_start = time.perf_counter()
    reset_peak_rss()  # run.json's peak memory is this experiment's, not the command's
    out_root = Path(out_root)
    target = out_root / cfg.name
    _check_writable(out_root)
    lock = store.FolderLock(out_root, cfg.name).acquire()
    try:
        # the state is read under the lock: another run may have written the folder since
        state, old = _classify(cfg, target, force=force, resume=resume)
        resume = _resumes(cfg, state, old, resume)
        if not replaces(cfg, state, old, resume):
            return _run_locked(cfg, out_root, target, old, resume, progress, finalize,
                               command, t_start, lock.stale, executor)
        # the folder being replaced waits beside the target until the new one is published
        aside = out_root / f".{cfg.name}.replaced-{os.getpid()}"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(target, aside)
        try:
            res = _run_locked(cfg, out_root, target, old, False, progress, finalize,
                              command, t_start, lock.stale, executor)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return res
    finally:
        lock.release()


def _run_locked(cfg: ExperimentConfig, out_root: Path, target: Path,
                old: "Manifest | None", resume: bool, progress: Progress,
                finalize: "Finalize | None", command: "str | None", t_start: float,
                stale: "dict[str, Any] | None", executor: "Executor | None") -> RunResult:
    digest = config_hash(cfg)
    fmts = format_names(cfg)
    points = sweep_points(cfg)
    axes = sweep_axes(cfg)
    keys = [(p, fm, chunk_key(p.index, fm)) for p in points for fm in fmts]
    partial = target / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    run_info = RunInfo(started_at=store.now_iso(), command=command or " ".join(
        [Path(sys.argv[0]).name, *sys.argv[1:]]), config_file=str(source_of(cfg)),
        platform=platform_info(), git=git_info())
    if resume:
        prev = store.Results(target, old).run_info() if old is not None else None
        if prev is not None:
            run_info = replace(run_info, started_at=prev.started_at,
                               chunk_seconds=dict(prev.chunk_seconds),
                               resumed_at=store.now_iso())
    manifest = Manifest(
        name=cfg.name, question=cfg.question, description=cfg.description, notes=cfg.notes,
        config=resolved_config(cfg), config_sha256=digest, sweep_axes=axes,
        points=[{"point": p.index, "params": p.params} for p in points],
        chunks=[k for _, _, k in keys], environment=environment(cfg.device),
        counts={}, files={k: v for k, v in (old.files if resume and old else {}).items()
                          if k.startswith(f"{partial.name}/")})

    def save_manifest(m: Manifest) -> None:
        w = store.Writer(target)
        w.json(store.MANIFEST, m)
        w.json(store.RUN_INFO, run_info)

    save_manifest(manifest)
    done: dict[str, ChunkTables] = {}
    computed = resumed = 0

    def finished(key: str, t: ChunkTables, files: "dict[str, str] | None" = None) -> None:
        nonlocal manifest
        done[key] = t
        manifest = replace(manifest, chunks_done=len(done),
                           slow_rows={k: c.slow_rows for k, c in done.items()},
                           files={**manifest.files, **(files or {})})
        save_manifest(manifest)

    cached: "tuple[int, Batch] | None" = None
    try:
        with progress.stage("compute", total=len(keys)) as advance:
            todo = []
            for p, fm, key in keys:
                if resume and _chunk_done(partial, key):
                    finished(key, _load_chunk(partial, key, axes))
                    resumed += 1
                    advance(1)
                else:
                    todo.append((p, fm, key))
            if executor is None:
                for p, fm, key in todo:
                    if cached is None or cached[0] != p.index:
                        cached = (p.index, generate(cfg, p))
                    tc = time.perf_counter()
                    try:
                        t, x, y, wt = compute_chunk(cfg, p, fm, cached[1])
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except Exception as exc:
                        raise ComputeError(f"{cfg.name}: chunk {key}: {type(exc).__name__}: "
                                           f"{exc}") from exc
                    files = _save_chunk(partial, t, x, y, wt)
                    run_info.chunk_seconds[key] = round(time.perf_counter() - tc, 4)
                    computed += 1
                    finished(key, t, files)
                    advance(1)
            else:
                data, source = raw_data(cfg), str(source_of(cfg))
                futures = {executor.submit(chunk_job, data, source, p.index, fm): key
                           for p, fm, key in todo}
                try:
                    for fut in as_completed(futures):
                        key = futures[fut]
                        try:
                            t, x, y, wt, secs = fut.result()
                        except Exception as exc:
                            raise ComputeError(f"{cfg.name}: chunk {key}: "
                                               f"{type(exc).__name__}: {exc}") from exc
                        files = _save_chunk(partial, t, x, y, wt)
                        run_info.chunk_seconds[key] = round(secs, 4)
                        computed += 1
                        finished(key, t, files)
                        advance(1)
                finally:
                    for fut in futures:
                        fut.cancel()
        chunks = [done[k] for _, _, k in keys]
        del cached
        cmp = None
        if cfg.compare is not None:
            a, b, tol = compare_keys(cfg) or ("", "", 0.0)
            cmp = (a, b, tol, compare_formats(cfg))
        inputs_keys = [k + suffix for _, _, k in keys for suffix in INPUT_SUFFIXES]
        manifest, run_info = publish(out_root, manifest, run_info, chunks,
                                     reduction=cfg.reduction, compare=cmp,
                                     inputs_from=partial / store.INPUTS_DIR,
                                     input_keys=inputs_keys, finalize=finalize,
                                     progress=progress, t_start=t_start)
    except BaseException:
        save_manifest(replace(manifest, status="partial"))
        raise
    return RunResult(target, manifest, run_info, computed, resumed, stale)


def _adopt_inputs(src: Path, tmp: Path, keys: list[str]) -> dict[str, str]:
    """Move stored inputs (``<key>.npy``) into the new folder; their sha256 by relative path."""
    dst = tmp / store.INPUTS_DIR
    dst.mkdir(parents=True, exist_ok=True)
    out = {}
    for key in keys:
        name = f"{key}.npy"
        if (src / name).is_file():
            os.replace(src / name, dst / name)
            rel = f"{store.INPUTS_DIR}/{name}"
            out[rel] = store.sha256_of(dst / name)
    return out
