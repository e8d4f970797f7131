"""Publish a study's measurements as a results folder, the way the runner publishes a run.

A study computes its results outside the config runner (in subprocesses, on another machine),
then hands them here as :class:`StudyChunk` records: the inputs of one sweep point and format
and, per result name, the values computed there.  :func:`publish_study` measures every result
against the certified reference (:mod:`precision_lab.experiment.measure`), builds the same
tables as a run (:func:`precision_lab.experiment.tables.chunk_tables`), and publishes the
folder through :func:`precision_lab.experiment.runner.publish` under the folder's lock, with
the standard report plus the study's own findings, tables and figures
(:class:`precision_lab.report.report.Extra`).  ``show``, ``diff`` and ``explain`` read the
result like any run's folder.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from precision_lab.experiment import store
from precision_lab.experiment.errors import ResultsExistError
from precision_lab.experiment.measure import Measurement, metrics_of, reference_values
from precision_lab.experiment.progress import NO_PROGRESS, Progress
from precision_lab.experiment.provenance import environment, git_info, platform_info
from precision_lab.experiment.records import Manifest, RunInfo
from precision_lab.experiment.runner import publish
from precision_lab.experiment.tables import ChunkTables, chunk_key, chunk_tables
from precision_lab.numerics.formats import get_format
from precision_lab.report.report import Extra, write_report

__all__ = ["StudyChunk", "Study", "measure_chunk", "publish_study"]


@dataclass
class StudyChunk:
    """One sweep point x format of a study.

    Attributes:
        point: the sweep point's index; ``params`` its swept values.
        fmt: the format's name.
        x, t: (S, B, V) logits already in the format and (S, B) class indices.
        results: result name -> computed values in the format: (S * B,) per-sample losses
            when the study's reduction is "none", (S,) batch values otherwise.
        compare: (a, b, abs_tol): the two results the study checks against each other.
    """

    point: int
    params: dict[str, Any]
    fmt: str
    x: np.ndarray
    t: np.ndarray
    results: dict[str, np.ndarray]
    compare: "tuple[str, str, float] | None" = None


@dataclass
class Study:
    """What a study folder is: its name, question, description, the parameters that define
    it (the manifest's ``config``), its swept parameters and its reduction."""

    name: str
    question: str
    description: str
    config: dict[str, Any]
    sweep_axes: list[str]
    reduction: str = "none"
    notes: str = ""
    device: str = "cpu"
    environment: dict[str, Any] = field(default_factory=dict)


def measure_chunk(c: StudyChunk, reduction: str) -> Measurement:
    """Every result of ``c`` against the correctly rounded reference in its format."""
    f = get_format(c.fmt)
    ref = reference_values(c.x, c.t, f, reduction)
    return Measurement(ref, {k: metrics_of(np.asarray(v, dtype=f.np_dtype).reshape(-1), ref, f)
                             for k, v in c.results.items()})


def _digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(store.dumps(config).encode()).hexdigest()


def publish_study(study: Study, chunks: list[StudyChunk], out_root: "str | Path", *,
                  extra: "Callable[[store.Results, dict[str, Measurement]], Extra] | None"
                  = None, force: bool = True, progress: Progress = NO_PROGRESS,
                  command: "str | None" = None, t_start: "float | None" = None) -> Path:
    """Measure ``chunks`` and publish ``out_root/<study.name>/`` (tables, stored inputs,
    report with the findings ``extra(results, {chunk key: measurement})`` adds).

    Raises:
        ResultsExistError: the folder exists and ``force`` is False.
        LockedError: another process holds the folder's lock.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    out_root = Path(out_root)
    target = out_root / study.name
    if target.exists() and not force:
        raise ResultsExistError(f"{target} exists; pass --force to replace it")
    out_root.mkdir(parents=True, exist_ok=True)
    with store.FolderLock(out_root, study.name):
        tables: list[ChunkTables] = []
        measured: dict[str, Measurement] = {}
        keys: list[str] = []
        tmp = Path(tempfile.mkdtemp(prefix=f".{study.name}.inputs-", dir=out_root))
        try:
            with progress.stage("measure", total=len(chunks)) as advance:
                for c in chunks:
                    key = chunk_key(c.point, c.fmt)
                    meas = measure_chunk(c, study.reduction)
                    measured[key] = meas
                    tables.append(chunk_tables(c.point, c.params, c.fmt, {"loss": meas},
                                               c.x, c.t, study.reduction, c.compare))
                    keys += [key + s for s in ("", ".targets")]
                    store.save_inputs(tmp, key, c.x, c.t)
                    advance(1)
            points: dict[int, dict[str, Any]] = {c.point: dict(c.params) for c in chunks}
            config = {**study.config, "reduction": study.reduction}
            manifest = Manifest(
                name=study.name, question=study.question, kind="study",
                description=study.description, notes=study.notes, config=config,
                config_sha256=_digest(config), sweep_axes=list(study.sweep_axes),
                points=[{"point": p, "params": v} for p, v in sorted(points.items())],
                chunks=[chunk_key(c.point, c.fmt) for c in chunks], chunks_done=len(chunks),
                environment={**environment(study.device), **study.environment})
            run_info = RunInfo(started_at=store.now_iso(), command=command or " ".join(
                [Path(sys.argv[0]).name, *sys.argv[1:]]), platform=platform_info(),
                git=git_info())
            cmp = next(((c.compare[0], c.compare[1], c.compare[2],
                         sorted({d.fmt for d in chunks if d.compare}))
                        for c in chunks if c.compare), None)

            def finalize(res: store.Results, prog: Progress) -> None:
                write_report(res, prog, extra(res, measured) if extra else None)

            publish(out_root, manifest, run_info, tables, reduction=study.reduction,
                    compare=cmp, inputs_from=tmp, input_keys=keys, finalize=finalize,
                    progress=progress, t_start=t_start)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
