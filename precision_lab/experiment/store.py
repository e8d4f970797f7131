"""The one module that writes and reads a results folder.

Layout of ``<out>/<name>/`` (schema :data:`~precision_lab.experiment.records.SCHEMA_VERSION`):

=========================  ==========================================================
``manifest.json``          :class:`~.records.Manifest`: config, sweep, software, and the
                           sha256 of every file below (committed)
``run.json``               :class:`~.records.RunInfo`: times, host, command (not committed)
``samples.parquet``        one row per sweep point x sample x implementation x format
``rows.parquet``           one row per logit row and format: facts of the input (row max,
                           lse, shifted sum, condition number)
``summary.json`` / ``.csv`` :class:`~.records.SummaryRow` s
``agreement.json`` / ``.csv``  :class:`~.records.AgreementRow` s
``compare.json``           :class:`~.records.CompareResult` s (with a ``[compare]`` section)
``analyses.json``          the analyses' records (numbers), by name
``plots/*.png``            figures; captions in the manifest
``report.md``, ``report.html``  the report
``inputs/``                the rounded inputs of every chunk (``pNNNNN_<format>.npy``, its
                           ``.targets.npy`` and ``.weight.npy``; bfloat16 stored as its
                           uint16 bit patterns); large, so a copy may leave them out
``partial/``               finished chunks of an unfinished run (see the runner)
=========================  ==========================================================

JSON: one encoding (:func:`dumps`): dataclasses become objects, numpy scalars Python numbers,
non-finite floats the strings "nan", "inf", "-inf" (:func:`number` reads them back), and
``None`` stands for "no value".  Every writer writes atomically (a temporary file renamed into
place) and records the file's sha256; :func:`verify` checks them.  A folder's lock
(:class:`FolderLock`) keeps two runs out of one folder.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

from precision_lab.experiment.errors import DamagedResultsError, LockedError, NotResultsError
from precision_lab.experiment.records import (
    AgreementRow,
    CompareResult,
    GradFacts,
    Manifest,
    RunInfo,
    SummaryRow,
)
from precision_lab.numerics.formats import get_format

__all__ = ["to_jsonable", "dumps", "number", "sha256_of", "Writer", "Results", "open_results",
           "read_manifest", "folder_state", "is_results_folder", "verify", "FolderLock",
           "now_iso", "INPUTS_DIR", "save_inputs", "load_inputs", "load_array_bits"]

MANIFEST = "manifest.json"
RUN_INFO = "run.json"
INPUTS_DIR = "inputs"


# --------------------------------------------------------------------------- JSON encoding

def to_jsonable(obj: Any) -> Any:
    """Plain JSON data of ``obj`` under the one convention (see the module docstring)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("transient")}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def dumps(obj: Any) -> str:
    """The one JSON encoding of a results folder (indent 2, a final newline)."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"


def number(v: Any) -> "float | None":
    """A float field read back: "nan"/"inf"/"-inf" -> float, None stays None."""
    if v is None:
        return None
    if isinstance(v, str):
        return float(v)
    return float(v)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- writing

def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        # a full disk or an interrupt: leave no half-written temporary file behind
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float)
                                                        else r[k])) for k in keys})
    return buf.getvalue()


class Writer:
    """Writes files into one folder atomically and remembers each file's sha256.

    ``files`` (relative path -> sha256) is what the manifest lists."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files: dict[str, str] = {}

    def _done(self, rel: str, data: bytes) -> Path:
        path = self.root / rel
        _atomic_bytes(path, data)
        self.files[rel] = hashlib.sha256(data).hexdigest()
        return path

    def json(self, rel: str, obj: Any) -> Path:
        return self._done(rel, dumps(obj).encode())

    def csv(self, rel: str, rows: list[dict[str, Any]]) -> Path:
        return self._done(rel, _csv_text(rows).encode())

    def text(self, rel: str, text: str) -> Path:
        return self._done(rel, text.encode())

    def bytes(self, rel: str, data: bytes) -> Path:
        return self._done(rel, data)

    def parquet(self, rel: str, table: Any) -> Path:
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink)
        return self._done(rel, sink.getvalue())

    def figure(self, rel: str, fig: Any) -> Path:
        """Save a matplotlib figure as PNG (deterministic metadata) and close it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
        plt.close(fig)
        return self._done(rel, buf.getvalue())

    def adopt(self, rel: str) -> None:
        """Record the hash of a file already in the folder (moved in by the caller)."""
        self.files[rel] = sha256_of(self.root / rel)


def _npy(a: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(a)
    if arr.dtype == get_format("bfloat16").np_dtype:
        arr = arr.view(np.uint16)  # numpy has no bfloat16: store the bits
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def save_inputs(folder: Path, chunk: str, logits: "np.ndarray | None", targets: np.ndarray,
                weight: "np.ndarray | None" = None,
                extra: "dict[str, np.ndarray] | None" = None) -> list[str]:
    """Store a chunk's rounded inputs under ``folder``: ``<chunk>.npy`` (the logits; None: not
    stored), ``<chunk>.targets.npy`` (class indices, or probabilities in the logits' format),
    with class weights ``<chunk>.weight.npy``, and each ``extra`` array under
    ``<chunk><suffix>.npy`` (suffix such as ".hidden"); bfloat16 arrays as their uint16
    bits.  Returns the file names written."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, a in ((f"{chunk}.npy", logits), (f"{chunk}.targets.npy", targets),
                    (f"{chunk}.weight.npy", weight),
                    *((f"{chunk}{sfx}.npy", arr) for sfx, arr in (extra or {}).items())):
        if a is not None:
            _atomic_bytes(folder / name, _npy(np.asarray(a)))
            out.append(name)
    return out


def load_array_bits(folder: Path, name: str, fmt: str, mmap: bool = True) -> np.ndarray:
    """One stored input array (``name`` with its ``.npy``) in ``fmt``'s dtype (bfloat16
    restored from its uint16 bits)."""
    f = get_format(fmt)
    a = np.load(folder / name, mmap_mode="r" if mmap else None, allow_pickle=False)
    return a.view(f.np_dtype) if f.name == "bfloat16" and a.dtype == np.uint16 else a


def load_inputs(folder: Path, chunk: str, fmt: "str | None" = None, mmap: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's stored logits and targets (memory-mapped), in ``fmt``'s dtype (the format
    the logits were stored in: the config's input_format, or the chunk's format)."""
    f = get_format(fmt or chunk.split("_", 1)[1])
    mode: 'Literal["r"] | None' = "r" if mmap else None
    x = np.load(folder / f"{chunk}.npy", mmap_mode=mode, allow_pickle=False)
    t = np.load(folder / f"{chunk}.targets.npy", mmap_mode=mode, allow_pickle=False)
    if f.name == "bfloat16":
        x = x.view(f.np_dtype)
        if t.dtype == np.uint16:
            t = t.view(f.np_dtype)
    return x, t


# --------------------------------------------------------------------------- reading

def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedResultsError(path, f"cannot be read as JSON ({exc})") from None


def read_manifest(folder: Path) -> Manifest:
    """The manifest of ``folder``.

    Raises:
        NotResultsError: no manifest.json, or one that is not a precision-lab manifest.
        DamagedResultsError: a manifest that cannot be parsed.
    """
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise NotResultsError(folder, "no manifest.json")
    data = _load_json(path)
    if not isinstance(data, dict) or "name" not in data or "status" not in data:
        raise NotResultsError(folder, "manifest.json is not a precision-lab manifest")
    if data.get("schema_version") != Manifest.__dataclass_fields__["schema_version"].default:
        raise NotResultsError(folder, f"manifest schema version {data.get('schema_version')!r} "
                              "is not the one this version of precision-lab writes")
    known = {f.name for f in dataclasses.fields(Manifest)}
    try:
        return Manifest(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise DamagedResultsError(path, f"has unexpected content ({exc})") from None


def is_results_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by precision-lab, damaged or not: its manifest.json is
    a precision-lab manifest (any schema version), or cannot be parsed but holds a
    precision-lab manifest's keys (a truncated one), or it has a ``partial/`` folder with
    finished chunks.  Only such a folder may be replaced (``--force``); anything else may hold
    someone's data."""
    folder = Path(folder)
    path = folder / MANIFEST
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        try:
            data = json.loads(text)
        except ValueError:
            if any(f'"{k}"' in text for k in ("question", "config_sha256", "schema_version")):
                return True
        else:
            if isinstance(data, dict) and "name" in data and "question" in data:
                return True
    partial = folder / "partial"
    return partial.is_dir() and (
        (partial / MANIFEST).is_file()
        or any(partial.glob("p[0-9][0-9][0-9][0-9][0-9]_*.parquet")))


def folder_state(folder: Path) -> tuple[str, "Manifest | None"]:
    """The state of a results folder, and its manifest where it can be read.

    "absent" (nothing there), "file" (a file, not a folder), "foreign" (a folder precision-lab
    did not write: :func:`is_results_folder`), "damaged" (a precision-lab folder whose
    manifest cannot be read, or of another schema version), "complete" or "partial" (files
    not verified: :func:`verify`)."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return "absent", None
    if not folder.is_dir():
        return "file", None
    try:
        m = read_manifest(folder)
    except (NotResultsError, DamagedResultsError):
        return ("damaged" if is_results_folder(folder) else "foreign"), None
    return (m.status if m.status in ("complete", "partial") else "damaged"), m


def verify(folder: Path, manifest: Manifest, *, inputs: bool = False) -> list[tuple[str, str]]:
    """(relative path, problem) for every listed file that is missing or whose sha256 differs.

    Stored inputs are checked only with ``inputs=True`` and only where present (a copy of a
    results folder may leave them out)."""
    problems = []
    for rel, sha in manifest.files.items():
        p = Path(folder) / rel
        if not p.is_file():
            problems.append((rel, "is missing"))
        elif sha256_of(p) != sha:
            problems.append((rel, "does not match the sha256 the manifest records (damaged or "
                                  "edited)"))
    if inputs:
        for rel, sha in manifest.inputs.items():
            p = Path(folder) / rel
            if p.is_file() and sha256_of(p) != sha:
                problems.append((rel, "does not match the sha256 the manifest records"))
    return problems


class Results:
    """A complete results folder, opened for reading (see :func:`open_results`).

    While a run writes the folder, the runner hands the report a Results with ``writer`` (the
    :class:`Writer` of the folder, through which every further file is written) and
    ``tables`` (the tables it just wrote, so they are not read back); ``manifest`` may then be
    replaced (plot captions)."""

    def __init__(self, root: Path, manifest: Manifest, *, writer: "Writer | None" = None,
                 tables: "dict[str, Any] | None" = None) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.writer = writer
        self._cache: dict[str, Any] = dict(tables or {})

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def axes(self) -> list[str]:
        return list(self.manifest.sweep_axes)

    def _json(self, rel: str) -> Any:
        if rel not in self._cache:
            p = self.root / rel
            self._cache[rel] = _load_json(p) if p.exists() else None
        return self._cache[rel]

    def summary(self) -> list[SummaryRow]:
        doc = self._json("summary.json")
        return [] if doc is None else [SummaryRow.from_row(r, self.axes) for r in doc["rows"]]

    def grad_facts(self) -> list[GradFacts]:
        """Where each implementation's gradient loses elements (experiments that measure it)."""
        doc = self._json("gradients.json")
        return [] if doc is None else [GradFacts.from_row(r, self.axes) for r in doc["rows"]]

    def values(self) -> "list[dict[str, Any]] | None":
        """Every computed value with its truth, for tiny experiments (None otherwise)."""
        doc = self._json("summary.json")
        return None if doc is None else doc.get("values")

    def agreement(self) -> list[AgreementRow]:
        doc = self._json("agreement.json")
        return [] if doc is None else [AgreementRow.from_row(r, self.axes) for r in doc["rows"]]

    def compare(self) -> list[CompareResult]:
        doc = self._json("compare.json")
        return [] if doc is None else [CompareResult.from_row(r, self.axes)
                                       for r in doc["results"]]

    def analyses(self) -> dict[str, Any]:
        return self._json("analyses.json") or {}

    def run_info(self) -> "RunInfo | None":
        doc = self._json(RUN_INFO)
        if not isinstance(doc, dict):
            return None
        known = {f.name for f in dataclasses.fields(RunInfo)}
        return RunInfo(**{k: v for k, v in doc.items() if k in known})

    def samples(self) -> Any:
        """samples.parquet as a pyarrow Table (None where the folder has none)."""
        if "samples" not in self._cache:
            p = self.root / "samples.parquet"
            self._cache["samples"] = _read_parquet(p) if p.exists() else None
        return self._cache["samples"]

    def row_facts(self) -> Any:
        """rows.parquet as a pyarrow Table (None where the folder has none)."""
        if "rows" not in self._cache:
            p = self.root / "rows.parquet"
            self._cache["rows"] = _read_parquet(p) if p.exists() else None
        return self._cache["rows"]

    def has_inputs(self) -> bool:
        """Whether every chunk's logits are stored (not so for the linear generator, whose
        chunks store hidden states and a weight: :meth:`linear_inputs`)."""
        return (bool(self.manifest.inputs)
                and all((self.root / r).is_file() for r in self.manifest.inputs)
                and all(f"{INPUTS_DIR}/{c}.npy" in self.manifest.inputs
                        for c in self.manifest.chunks))

    def linear_inputs(self, point: int, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The linear generator's rounded hidden states (S, B, K), classifier weight (V, K)
        and targets (S, B) of a chunk (memory-mapped)."""
        chunk = f"p{point:05d}_{fmt}"
        in_fmt = self.manifest.config.get("input_format") or fmt
        folder = self.root / INPUTS_DIR
        return (load_array_bits(folder, f"{chunk}.hidden.npy", in_fmt),
                load_array_bits(folder, f"{chunk}.classifier.npy", in_fmt),
                np.load(folder / f"{chunk}.targets.npy", mmap_mode="r", allow_pickle=False))

    def inputs(self, point: int, fmt: str) -> tuple[np.ndarray, np.ndarray]:
        """The rounded logits (S, B, V) and targets (S, B) the chunk measured (memory-mapped;
        probability targets (S, B, V))."""
        return load_inputs(self.root / INPUTS_DIR, f"p{point:05d}_{fmt}",
                           self.manifest.config.get("input_format") or fmt)


def _read_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged file
        raise DamagedResultsError(path, f"cannot be read as Parquet ({type(exc).__name__})") \
            from None


def open_results(folder: "str | Path", *, check: bool = True) -> Results:
    """Open a complete results folder; with ``check`` every listed file's sha256 is verified.

    Raises:
        NotResultsError: not a results folder.
        DamagedResultsError: a listed file is missing or damaged (names the first one).
        IncompleteResultsError: a partial run (the manifest says how far it got).
    """
    from precision_lab.experiment.errors import IncompleteResultsError

    folder = Path(folder)
    if not folder.is_dir():
        raise NotResultsError(folder, "no such folder")
    m = read_manifest(folder)
    if m.status != "complete":
        raise IncompleteResultsError(folder, m)
    if check:
        problems = verify(folder, m)
        if problems:
            rel, why = problems[0]
            more = f" ({len(problems)} files in all)" if len(problems) > 1 else ""
            raise DamagedResultsError(folder / rel, why + more)
    return Results(folder, m)


# --------------------------------------------------------------------------- locking

class FolderLock:
    """An exclusive lock on one results folder, held while a run writes it.

    The lock is ``<out>/.<name>.lock`` (an OS file lock through ``filelock``, released by the
    operating system if the process dies) with ``<out>/.<name>.lock.json`` beside it naming the
    holder.  Acquiring a lock held by a live process raises :class:`LockedError` naming that
    process; a leftover holder file whose process is gone is a stale lock, reported through
    ``stale`` and replaced."""

    def __init__(self, out_root: Path, name: str) -> None:
        self.path = Path(out_root) / f".{name}.lock"
        self.info_path = Path(out_root) / f".{name}.lock.json"
        self.stale: "dict[str, Any] | None" = None
        self._lock: Any = None

    def acquire(self) -> "FolderLock":
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._locked() from None
        holder = self._holder()
        if holder and holder.get("pid") != os.getpid():
            self.stale = holder
        self._lock = lock
        _atomic_bytes(self.info_path, dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "started_at": now_iso(),
                                             "time": time.time()}).encode())
        return self

    def probe(self) -> None:
        """Raise :class:`LockedError` naming the holder if a live run holds the lock; take
        nothing (a folder's state is read only after this, so a run in progress is named as
        such rather than as a partial folder)."""
        from filelock import FileLock, Timeout

        if not self.path.exists():
            return  # a holder creates the file before it locks it; nothing is written here
        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._locked() from None
        except OSError:
            return  # cannot be opened for locking (a read-only folder): no live writer here
        lock.release()

    def _locked(self) -> LockedError:
        holder = self._holder()
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started "
               f"{holder.get('started_at')}" if holder else "another process")
        return LockedError(self.path.parent / self.path.name[1:-5],
                           f"another run is writing it ({who})", who)

    def _holder(self) -> "dict[str, Any] | None":
        try:
            data = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def release(self) -> None:
        if self._lock is not None:
            try:
                self.info_path.unlink()
            except OSError:
                pass
            self._lock.release()
            try:
                self.path.unlink()
            except OSError:
                pass
            self._lock = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def files_under(root: Path, rels: Iterable[str]) -> list[str]:
    """The relative paths in ``rels`` that exist under ``root``, sorted."""
    return sorted(r for r in rels if (Path(root) / r).is_file())
