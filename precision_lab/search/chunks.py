"""Chunked, resumable work on an executor: the machinery searches and exhaustive slices share.

A job (a search, a slice) is a list of numbered chunks, each a pure function of the job's
spec and the chunk number, so the same chunk gives the same bytes in this process, in a local
worker process or on a Dask worker.  :class:`ChunkFolder` keeps every finished chunk as one
JSON file (``<folder>/<sub>/<key>.json``, written atomically) and the folder's manifest
(status "partial" until the job's summary files are written, then "complete"); a rerun of the
same job (same spec hash) loads the finished chunks and computes only the others, so an
interrupted search or slice continues where it stopped.  :func:`drive` runs chunks on an
executor (or in this process) until they are done or a deadline passes.

Every chunk records the versions of the software that computed it (numpy, torch, torch's CPU
kernel set, ...); :meth:`ChunkFolder.check_versions` refuses to merge chunks computed by
different software, which would otherwise go unnoticed on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from precision_lab.experiment import store
from precision_lab.experiment.errors import ComputeError, ResultsExistError, RunError
from precision_lab.experiment.records import Manifest, RunInfo

__all__ = ["ChunkFolder", "drive", "software", "spec_hash"]


def software() -> dict[str, Any]:
    """What decides a chunk's numbers besides its spec: package versions and torch's CPU
    kernel set (thread counts and host names are left out: they change no value)."""
    from precision_lab.experiment.provenance import environment

    env = environment()
    return {"versions": env["versions"], "torch_cpu_capability": env["torch_cpu_capability"],
            "ATEN_CPU_CAPABILITY": env["ATEN_CPU_CAPABILITY"]}


def spec_hash(spec: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a job's spec."""
    text = json.dumps(store.to_jsonable(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ChunkFolder:
    """``<out_root>/<name>/``: a job's manifest, its finished chunks under ``<sub>/`` and, once
    complete, its summary files.

    Use as a context manager (it holds the folder's lock).  ``force`` starts over; otherwise a
    folder of the same spec is continued and one of another spec is refused."""

    def __init__(self, out_root: "str | Path", name: str, *, kind: str, spec: dict[str, Any],
                 question: str, description: str = "", sub: str = "chunks",
                 force: bool = False) -> None:
        self.out_root = Path(out_root)
        self.name = name
        self.root = self.out_root / name
        self.sub = sub
        self.spec = spec
        self.digest = spec_hash(spec)
        self.force = force
        self.kind = kind
        self.question = question
        self.description = description
        self.stale: "dict[str, Any] | None" = None
        self._lock: "store.FolderLock | None" = None
        self.run_info = RunInfo()

    # ---------------------------------------------------------------- opening
    def check(self) -> str:
        """Whether the folder may be used: "new", "continue"; raises RunError otherwise."""
        try:
            self.out_root.mkdir(parents=True, exist_ok=True)
            probe = self.out_root / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunError(f"cannot write into {self.out_root} ({exc.strerror or exc}); "
                           "choose another folder with --out DIR") from None
        state, old = store.folder_state(self.root)
        if state in ("file", "foreign"):
            what = "a file" if state == "file" else "a folder precision-lab did not write"
            raise RunError(f"{self.root} is {what}; it is never replaced (not even with "
                           "--force): move it away, or use --out DIR to write elsewhere")
        if state == "absent" or self.force:
            return "new"
        if state in ("foreign", "damaged"):
            raise ResultsExistError(f"{self.root} exists and is not a readable precision-lab "
                                    "results folder; use --force to replace it, or --out DIR")
        assert old is not None
        if old.kind != self.kind or old.config_sha256 != self.digest:
            raise ResultsExistError(
                f"{self.root} holds another {old.kind} (spec hash {old.config_sha256[:12]}..., "
                f"this one {self.digest[:12]}...: different parameters or software); use "
                "--force to start over, or --out DIR to write elsewhere")
        return "continue"

    def __enter__(self) -> "ChunkFolder":
        mode = self.check()
        self._lock = store.FolderLock(self.out_root, self.name).acquire()
        self.stale = self._lock.stale
        try:
            if mode == "new" and self.root.exists():
                shutil.rmtree(self.root)
            (self.root / self.sub).mkdir(parents=True, exist_ok=True)
            prev = None
            if mode == "continue":
                prev = store.Results(self.root, store.read_manifest(self.root)).run_info()
            from precision_lab.experiment.provenance import git_info, platform_info

            self.run_info = RunInfo(
                started_at=prev.started_at if prev else store.now_iso(),
                resumed_at=store.now_iso() if prev else "",
                command=" ".join(["precision-lab", *sys.argv[1:]]),
                chunk_seconds=dict(prev.chunk_seconds) if prev else {},
                platform=platform_info(), git=git_info())
            self._write_manifest(self._manifest("partial"))
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---------------------------------------------------------------- chunks
    def key(self, index: int) -> str:
        return f"{index:06d}"

    def done(self) -> dict[int, dict[str, Any]]:
        """Finished chunks by number (files that cannot be read are ignored: recomputed)."""
        out = {}
        for p in sorted((self.root / self.sub).glob("*.json")):
            try:
                out[int(p.stem)] = json.loads(p.read_text())
            except (ValueError, OSError):
                continue
        return out

    def save(self, index: int, doc: dict[str, Any], seconds: float) -> None:
        store.Writer(self.root / self.sub).json(f"{self.key(index)}.json", doc)
        self.run_info.chunk_seconds[self.key(index)] = round(seconds, 4)

    def check_versions(self, docs: dict[int, dict[str, Any]]) -> None:
        """Refuse chunks computed by other software than this process runs."""
        mine = store.to_jsonable(software())
        for i, d in sorted(docs.items()):
            if d.get("software") != mine:
                raise RunError(f"{self.root / self.sub / (self.key(i) + '.json')} was computed "
                               f"with other software ({d.get('software')}) than this process "
                               f"({mine}); use --force to recompute")

    # ---------------------------------------------------------------- manifest
    def _manifest(self, status: str, **kw: Any) -> Manifest:
        from precision_lab.experiment.provenance import environment

        return Manifest(name=self.name, question=self.question, description=self.description,
                        kind=self.kind, status=status, config=store.to_jsonable(self.spec),
                        config_sha256=self.digest, environment=environment(), **kw)

    def _write_manifest(self, m: Manifest) -> None:
        w = store.Writer(self.root)
        w.json(store.MANIFEST, m)
        w.json(store.RUN_INFO, self.run_info)

    def publish(self, write: Callable[[store.Writer], None], *, counts: dict[str, int],
                chunks: list[str], notes: str = "", seconds: float = 0.0) -> Manifest:
        """Write the summary files through ``write(writer)``, then the complete manifest."""
        w = store.Writer(self.root)
        write(w)
        m = self._manifest("complete", counts=counts, chunks=chunks, chunks_done=len(chunks),
                           files=dict(sorted(w.files.items())), notes=notes)
        self.run_info = replace(self.run_info, finished_at=store.now_iso(),
                                stage_seconds={"compute": round(seconds, 3)})
        self._write_manifest(m)
        return m


def drive(executor: "Executor | None", fn: Callable[..., dict[str, Any]], args: tuple,
          keys: Iterable[int], on_result: Callable[[int, dict[str, Any], float], None], *,
          deadline: "float | None" = None, in_flight: int = 4) -> int:
    """Run ``fn(*args, key)`` for each key, in this process (``executor`` None) or on the
    executor with at most ``in_flight`` chunks submitted at once, calling ``on_result(key,
    doc, seconds)`` in this process as each finishes.  No new chunk starts after ``deadline``
    (a ``time.monotonic()`` value); chunks already started are waited for, so the chunks
    computed are always the first ones of ``keys``.  Returns how many were computed.

    Raises:
        ComputeError: a chunk raised (the message names it); finished chunks were handed to
            ``on_result`` already.
    """
    it = iter(keys)
    n = 0

    def expired() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    if executor is None:
        for key in it:
            if expired():
                break
            t0 = time.perf_counter()
            try:
                doc = fn(*args, key)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:
                raise ComputeError(f"chunk {key}: {type(exc).__name__}: {exc}") from exc
            on_result(key, doc, time.perf_counter() - t0)
            n += 1
        return n
    pending: dict[Future, tuple[int, float]] = {}

    def submit_more() -> None:
        while len(pending) < in_flight and not expired():
            key = next(it, None)
            if key is None:
                return
            pending[executor.submit(_timed, fn, args, key)] = (key, time.perf_counter())

    try:
        submit_more()
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=lambda f: pending[f][0]):
                key, _t = pending.pop(fut)
                try:
                    doc, secs = fut.result()
                except Exception as exc:
                    raise ComputeError(f"chunk {key}: {type(exc).__name__}: {exc}") from exc
                on_result(key, doc, secs)
                n += 1
            submit_more()
    finally:
        for fut in pending:
            fut.cancel()
    return n


def _timed(fn: Callable[..., dict[str, Any]], args: tuple, key: int
           ) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    doc = fn(*args, key)
    return doc, time.perf_counter() - t0
