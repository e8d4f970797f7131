"""Running an experiment: computing, resuming, result tables, summary, agreement, manifest.

Python API (the CLI is a thin layer over it)::

    from precision_lab.experiment.config import load_config
    from precision_lab.experiment.runner import run_experiment
    res = run_experiment(load_config("experiments/seed_question.toml"), out_root="results")
    res.path        # results/seed_question/

What a run does, for each sweep point and format (one *chunk*):

1. generate the point's inputs (:mod:`precision_lab.experiment.inputs`) and round them once to the format;
2. run every implementation on every batch.  With ``reduction = "mean"/"sum"`` an
   implementation whose function accepts ``reduction=`` reduces its own way (torch's
   kernels); otherwise the per-sample losses are summed left to right from 0 in the format's
   own arithmetic (each partial sum rounded to the format: the seed's ``loss = loss + ...``
   loop) and, for the mean, divided by B with one correct rounding;
3. compute the correctly rounded reference from exactly the rounded inputs
   (``reference.cross_entropy_detailed``), and the metrics of :mod:`precision_lab.numerics.metrics`;
4. write the chunk atomically to ``<results>/partial/<chunk>.parquet``.

When every chunk is done the tables, plots, manifest and report are written into a temporary
folder beside the target, which then replaces the target in one rename.  An interrupted run
leaves the target with ``manifest.json`` status "partial" and its finished chunks; ``resume``
computes only the missing ones (and refuses when the config hash changed).  Tables hold no
wall-clock data, so the same config and seed give bit-identical tables; timings live in the
manifest only.
"""

from __future__ import annotations

import csv
import inspect
import io
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import mpmath
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precision_lab import __version__
from precision_lab.experiment.config import (ExperimentConfig, SweepPoint, compare_formats, config_hash, format_names,
                     implementation_keys, resolved_config, source_of, sweep_axes, sweep_points)
from precision_lab.numerics.formats import Format, get_format, round_to, ulp_of
from precision_lab.numerics.sums import reduce_in_format
from precision_lab.experiment.inputs import generate, to_format
from precision_lab.numerics.metrics import (CATEGORIES, NO_DISTANCE, bits_of_error, categorize, relative_error,
                      ulp_distance, ulp_error)

__all__ = [
    "RunError",
    "ResultsExistError",
    "RunResult",
    "run_experiment",
    "preflight",
    "results_state",
    "compute_chunk",
    "summarize",
    "agreement",
    "compare_table",
    "SUMMARY_STATS",
    "VALUES_LIMIT",
]

#: Summary statistic columns, in order (after point, swept params, implementation, format).
SUMMARY_STATS = ("count", "exact_matches", "exact_match_rate", "ulp_error_mean",
                 "ulp_error_median", "ulp_error_p90", "ulp_error_p99", "ulp_error_max",
                 "bits_mean") + tuple(f"n_{c}" for c in CATEGORIES)

#: summary.json carries every computed value ("values") when a sweep point has at most
#: VALUES_LIMIT samples per implementation and format and the table at most VALUES_MAX_ROWS rows.
VALUES_LIMIT = 16
VALUES_MAX_ROWS = 512

STAT_CATEGORIES = ("finite", "inf_match")


class RunError(Exception):
    """A run that cannot start (exit code 2 in the CLI): existing results, resume mismatch."""


class ResultsExistError(RunError):
    pass


@dataclass
class RunResult:
    path: Path
    manifest: dict
    computed_chunks: int = 0
    resumed_chunks: int = 0
    report: "tuple[Path, Path] | None" = None


# --------------------------------------------------------------------------- reductions

def _run_impl(impl, x: np.ndarray, y: np.ndarray, f: Format, reduction: str) -> np.ndarray:
    """One batch through one implementation: (B,) losses, or a (1,) reduced value."""
    if reduction == "none":
        return impl(x, y, f)
    if impl.capabilities.own_reduction:
        return impl(x, y, f, reduction=reduction).reshape(1)
    return np.asarray([reduce_in_format(impl(x, y, f), reduction, f)], dtype=f.np_dtype)


# --------------------------------------------------------------------------- one chunk

def chunk_key(point: SweepPoint, fmt: str) -> str:
    return f"p{point.index:05d}_{fmt}"


def _reference(x: np.ndarray, y: np.ndarray, f: Format, reduction: str):
    """(values in fmt, hi, lo) per sample: (S*B,) for "none", (S,) otherwise."""
    from precision_lab.numerics.reference import cross_entropy_detailed

    S, B, C = x.shape
    if reduction == "none":
        r = cross_entropy_detailed(x.reshape(S * B, C), y.reshape(S * B), f, reduction="none")
        return (np.asarray(r.values, dtype=f.np_dtype).reshape(-1),
                np.asarray(r.hi, np.float64).reshape(-1), np.asarray(r.lo, np.float64).reshape(-1),
                int(r.slow_rows))
    vals, his, los, slow = [], [], [], 0
    for s in range(S):
        r = cross_entropy_detailed(x[s], y[s], f, reduction=reduction)
        vals.append(np.asarray(r.values, dtype=f.np_dtype).reshape(-1)[0])
        his.append(float(np.asarray(r.hi).reshape(-1)[0]))
        los.append(float(np.asarray(r.lo).reshape(-1)[0]))
        slow += int(r.slow_rows)
    return np.asarray(vals, f.np_dtype), np.asarray(his), np.asarray(los), slow


def _schema_for(point_params: dict, axes: list[str]) -> list[tuple[str, pa.DataType]]:
    cols = [("point", pa.int64())]
    for a in axes:
        v = point_params[a]
        cols.append((a, pa.int64() if isinstance(v, int) and not isinstance(v, bool)
                     else pa.float64()))
    cols += [("sample", pa.int64()), ("batch", pa.int64()), ("row", pa.int64()),
             ("implementation", pa.string()), ("format", pa.string()),
             ("computed", pa.float64()), ("reference", pa.float64()),
             ("exact_hi", pa.float64()), ("exact_lo", pa.float64()),
             ("ulp_distance", pa.uint64()), ("ulp_error", pa.float64()),
             ("bits_of_error", pa.float64()), ("relative_error", pa.float64()),
             ("category", pa.string())]
    return cols


def compute_chunk(cfg: ExperimentConfig, point: SweepPoint, fmt: str, impls: list,
                  inputs=None) -> tuple[pa.Table, dict]:
    """All implementations on one sweep point in one format: (table, info for the manifest)."""
    f = get_format(fmt)
    batch = generate(cfg, point) if inputs is None else inputs
    x = to_format(batch.logits, f)
    y = batch.targets
    S, B, _ = x.shape
    red = cfg.reduction
    ref_v, hi, lo, slow = _reference(x, y, f, red)
    n = S * B if red == "none" else S
    if red == "none":
        sample = np.arange(n, dtype=np.int64)
        batch_i, row_i = sample // B, sample % B
    else:
        sample = batch_i = np.arange(n, dtype=np.int64)
        row_i = np.full(n, -1, dtype=np.int64)
    columns: dict[str, list] = {}
    ref64 = ref_v.astype(np.float64)
    for impl in impls:
        out = np.concatenate([_run_impl(impl, x[s], y[s], f, red) for s in range(S)])
        with np.errstate(all="ignore"):
            cat = categorize(out, ref_v)
            uerr = ulp_error(out, hi, f, exact_lo=lo)
            rel = relative_error(out.astype(np.float64), hi, exact_lo=lo)
            im = cat == "inf_match"
            uerr = np.where(im, 0.0, uerr)
            rel = np.where(im, 0.0, rel)
            part = {
                "point": np.full(n, point.index, dtype=np.int64),
                **{a: [point.params[a]] * n for a in point.swept},
                "sample": sample, "batch": batch_i, "row": row_i,
                "implementation": [impl.key] * n, "format": [f.name] * n,
                "computed": out.astype(np.float64), "reference": ref64,
                "exact_hi": hi, "exact_lo": lo,
                "ulp_distance": ulp_distance(out, ref_v, f),
                "ulp_error": uerr,
                "bits_of_error": bits_of_error(out, ref_v, f),
                "relative_error": rel,
                "category": cat.tolist(),
            }
        for k, v in part.items():
            columns.setdefault(k, []).append(v)
    schema = pa.schema(_schema_for(point.params, list(point.swept)))
    arrays = []
    for name in schema.names:
        parts = columns[name]
        if isinstance(parts[0], np.ndarray):
            data = np.concatenate(parts)
        else:
            data = list(itertools.chain.from_iterable(parts))
        arrays.append(pa.array(data, type=schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema), {"slow_rows": slow}


# --------------------------------------------------------------------------- tables

def _num(v: Any) -> Any:
    """JSON-safe number: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    return v


def _group_rows(table: pa.Table, keys: list[str]) -> dict[tuple, np.ndarray]:
    """Row indices of each distinct key tuple, in first-appearance order."""
    cols = [table.column(k).to_pylist() for k in keys]
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(*cols)):
        groups.setdefault(key, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def _stats(uerr: np.ndarray, dist: np.ndarray, bits: np.ndarray, cats: np.ndarray) -> dict:
    stat = np.isin(cats, STAT_CATEGORIES)
    e, b = uerr[stat], bits[stat]
    d = dist[stat]
    out: dict[str, Any] = {"count": int(len(cats)), "exact_matches": int((d == 0).sum())}
    if e.size:
        out.update(exact_match_rate=float((d == 0).mean()), ulp_error_mean=float(e.mean()),
                   ulp_error_median=float(np.median(e)),
                   ulp_error_p90=float(np.percentile(e, 90)),
                   ulp_error_p99=float(np.percentile(e, 99)), ulp_error_max=float(e.max()),
                   bits_mean=float(b.mean()))
    else:
        out.update({k: None for k in ("exact_match_rate", "ulp_error_mean", "ulp_error_median",
                                      "ulp_error_p90", "ulp_error_p99", "ulp_error_max",
                                      "bits_mean")})
    for c in CATEGORIES:
        out[f"n_{c}"] = int((cats == c).sum())
    return out


def summarize(table: pa.Table, axes: list[str]) -> list[dict]:
    """One row per sweep point x implementation x format (see docs/CONTRACTS.md)."""
    rows = []
    uerr = table.column("ulp_error").to_numpy()
    dist = table.column("ulp_distance").to_numpy()
    bits = table.column("bits_of_error").to_numpy()
    cats = np.asarray(table.column("category").to_pylist(), dtype=object)
    for key, idx in _group_rows(table, ["point", *axes, "implementation", "format"]).items():
        row = dict(zip(["point", *axes, "implementation", "format"], key))
        row.update(_stats(uerr[idx], dist[idx], bits[idx], cats[idx].astype(str)))
        rows.append({k: _num(v) for k, v in row.items()})
    return rows


def agreement(table: pa.Table, axes: list[str]) -> list[dict]:
    """Per sweep point, format and implementation pair: how often they give the same float."""
    rows = []
    impls = list(dict.fromkeys(table.column("implementation").to_pylist()))
    comp = table.column("computed").to_numpy()
    for key, idx in _group_rows(table, ["point", *axes, "format"]).items():
        fmt = key[-1]
        f = get_format(fmt)
        sub_impl = np.asarray(table.column("implementation").take(pa.array(idx)).to_pylist())
        vals = {i: comp[idx][sub_impl == i].astype(f.np_dtype) for i in impls}
        for a, b in itertools.combinations(impls, 2):
            d = ulp_distance(vals[a], vals[b], f)
            ok = d != NO_DISTANCE
            same = (d == 0) | (np.isnan(vals[a].astype(np.float64))
                               & np.isnan(vals[b].astype(np.float64)))
            row = dict(zip(["point", *axes, "format"], key))
            row.update(implementation_a=a, implementation_b=b, count=int(d.size),
                       identical_rate=float(same.mean()) if d.size else None,
                       ulp_distance_mean=float(d[ok].astype(np.float64).mean()) if ok.any() else None,
                       ulp_distance_max=int(d[ok].max()) if ok.any() else None)
            rows.append({k: _num(v) for k, v in row.items()})
    return rows


def _err_stats(e: np.ndarray, d: np.ndarray) -> dict:
    e = e[np.isfinite(e)]
    if not e.size:
        return {"count": 0}
    return {"count": int(e.size), "exact_match_rate": float((d == 0).mean()),
            "mean": float(e.mean()), "median": float(np.median(e)),
            "p99": float(np.percentile(e, 99)), "max": float(e.max())}


def compare_table(table: pa.Table, cfg: ExperimentConfig, axes: list[str],
                  environment: dict) -> dict | None:
    """The ``[compare]`` check: share of |a - b| < abs_tol (the difference taken in the format's
    arithmetic, as the seed's torch subtraction), the ULP distance between a and b, and each
    one's ULP error against the exact truth."""
    cmp = cfg.compare
    if cmp is None:
        return None
    results, findings = [], []
    impl_col = np.asarray(table.column("implementation").to_pylist())
    comp = table.column("computed").to_numpy()
    uerr = table.column("ulp_error").to_numpy()
    dist = table.column("ulp_distance").to_numpy()
    ref = table.column("reference").to_numpy()
    fmts = set(compare_formats(cfg))
    for key, idx in _group_rows(table, ["point", *axes, "format"]).items():
        fmt = key[-1]
        if fmt not in fmts:
            continue
        f = get_format(fmt)
        ia, ib = idx[impl_col[idx] == cmp.a], idx[impl_col[idx] == cmp.b]
        a, b = comp[ia].astype(f.np_dtype), comp[ib].astype(f.np_dtype)
        with np.errstate(all="ignore"):
            diff = np.abs((a - b).astype(np.float64))
        passed = diff < cmp.abs_tol
        d = ulp_distance(a, b, f)
        ok = d != NO_DISTANCE
        dd = d[ok]
        hist = {str(int(k)): int(v) for k, v in zip(*np.unique(dd, return_counts=True))}
        nonzero = diff[(diff > 0) & np.isfinite(diff)]
        med_ref = float(np.median(ref[ia])) if ia.size else math.nan
        ulp_med = float(ulp_of(med_ref, f)) if math.isfinite(med_ref) else None
        entry = dict(zip(["point", *axes, "format"], key))
        entry.update({
            "a": cmp.a, "b": cmp.b, "abs_tol": cmp.abs_tol, "count": int(a.size),
            "passed": int(passed.sum()), "pass_share": float(passed.mean()) if a.size else None,
            "identical": int((d == 0).sum()),
            "smallest_nonzero_difference": float(nonzero.min()) if nonzero.size else None,
            "median_reference": _num(med_ref), "ulp_at_median_reference": ulp_med,
            "ulp_distance": {
                "mean": float(dd.astype(np.float64).mean()) if dd.size else None,
                "median": float(np.median(dd.astype(np.float64))) if dd.size else None,
                "max": int(dd.max()) if dd.size else None, "counts": hist},
            "a_ulp_error": _err_stats(uerr[ia], dist[ia]),
            "b_ulp_error": _err_stats(uerr[ib], dist[ib]),
        })
        results.append({k: _num(v) if not isinstance(v, dict) else v for k, v in entry.items()})
        if a.size:
            where = ", ".join(f"{k} = {entry[k]}" for k in axes)
            ea, eb = entry["a_ulp_error"], entry["b_ulp_error"]
            text = (f"{cmp.a} and {cmp.b} agree to |a - b| < {cmp.abs_tol:g} in "
                    f"{entry['passed']} of {entry['count']} {fmt} samples "
                    f"({100 * entry['pass_share']:.1f}%)" + (f" at {where}" if where else "")
                    + f" on this machine (torch {environment.get('torch')}, CPU capability "
                    f"{environment.get('torch_cpu_capability')}).")
            if ulp_med is not None and cmp.abs_tol < ulp_med:
                text += (f" One ULP of {fmt} near the median loss {med_ref:.4g} is {ulp_med:.3g}, "
                         f"far above the tolerance, so the check passes only where the two "
                         f"results are bit-identical ({entry['identical']} of {entry['count']}).")
            if dd.size and entry["ulp_distance"]["max"]:
                parts = [f"{n} sample(s) {k} ULP apart" for k, n in hist.items() if k != "0"]
                text += " Where they differ: " + ", ".join(parts) + "."
            if ea.get("count") and eb.get("count"):
                text += (f" Against the exact truth, {cmp.a}'s error is {ea['mean']:.3g} ULP on "
                         f"average (max {ea['max']:.3g}) and {cmp.b}'s {eb['mean']:.3g} ULP "
                         f"(max {eb['max']:.3g}); a correctly rounded result is within 0.5 ULP.")
            findings.append({"text": text, "numbers": {
                "pass_share": entry["pass_share"], "passed": entry["passed"],
                "count": entry["count"], "ulp_distance_max": entry["ulp_distance"]["max"],
                "a_ulp_error_mean": ea.get("mean"), "b_ulp_error_mean": eb.get("mean")}})
    return {"a": cmp.a, "b": cmp.b, "abs_tol": cmp.abs_tol, "formats": sorted(fmts),
            "results": results, "findings": findings}


def _values_view(table: pa.Table, axes: list[str]) -> list[dict] | None:
    """Every computed value, for tiny experiments (at most VALUES_LIMIT samples per point)."""
    samples = table.column("sample").to_numpy()
    if (samples.size == 0 or int(samples.max()) + 1 > VALUES_LIMIT
            or table.num_rows > VALUES_MAX_ROWS):
        return None
    cols = ["point", *axes, "sample", "implementation", "format", "computed", "reference",
            "exact_hi", "exact_lo", "ulp_error", "category"]
    data = {c: table.column(c).to_pylist() for c in cols}
    out = []
    for i in range(table.num_rows):
        r = {c: data[c][i] for c in cols}
        f = get_format(r["format"])
        r["computed_repr"] = str(f.np_dtype.type(r["computed"]))
        r["reference_repr"] = str(f.np_dtype.type(r["reference"]))
        out.append({k: _num(v) for k, v in r.items()})
    return out


# --------------------------------------------------------------------------- writing

def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (repr(r[k]) if isinstance(r[k], float)
                                                        else r[k])) for k in keys})
    _atomic_write_bytes(path, buf.getvalue().encode())


def _write_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _versions() -> dict:
    out = {"python": platform.python_version(), "precision_lab": __version__}
    for mod in ("numpy", "torch", "mpmath", "scipy", "ml_dtypes", "pyarrow", "matplotlib",
                "pydantic", "typer"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            out[mod] = None
    return out


def _environment() -> dict:
    import torch

    env = {"torch": torch.__version__,
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
           "torch_num_threads": torch.get_num_threads()}
    return env


def _git_info() -> dict | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        scope = ["precision_lab", "experiments", "pyproject.toml"]  # code and configs, not results
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *scope], cwd=root, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()),
                "dirty_scope": scope}
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def results_state(path: Path) -> tuple[str, dict | None]:
    """("absent" | "complete" | "partial" | "foreign", manifest or None)."""
    if not path.exists():
        return "absent", None
    try:
        m = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return "foreign", None
    status = m.get("status") if isinstance(m, dict) else None
    if status in ("complete", "partial"):
        return status, m
    return "foreign", m


def _manifest_base(cfg: ExperimentConfig, points: list[SweepPoint], chunk_keys: list[str],
                   started: str) -> dict:
    return {
        "schema_version": 1,
        "name": cfg.name,
        "question": cfg.question,
        "description": cfg.description,
        "config_file": str(source_of(cfg)),
        "config": resolved_config(cfg),
        "config_sha256": config_hash(cfg),
        "seed": cfg.seed,
        "sweep_axes": sweep_axes(cfg),
        "points": [{"point": p.index, "params": p.params} for p in points],
        "chunks": chunk_keys,
        "versions": _versions(),
        **_environment(),
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine(), "processor": platform.processor(),
                     "platform": platform.platform(),
                     "python_implementation": platform.python_implementation()},
        "git": _git_info(),
        "started_at": started,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
    }


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    disable = quiet or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, unit="chunk", file=sys.stderr, disable=disable,
                leave=False)


def preflight(cfg: ExperimentConfig, out_root: "str | Path", *, force: bool = False,
              resume: bool = False) -> tuple[str, dict | None]:
    """Check that ``out_root/<name>`` may be written; return its state and old manifest.

    Raises :class:`ResultsExistError` / :class:`RunError` with the reason and the option that
    would allow it.  Writes nothing."""
    target = Path(out_root) / cfg.name
    state, old = results_state(target)
    if resume:
        if state == "complete" and not force:
            raise ResultsExistError(f"{target} is already complete; nothing to resume (use "
                                    "--force to recompute it, or --out DIR to write elsewhere)")
        if state == "foreign" and not force:
            raise ResultsExistError(f"{target} exists but is not a precision-lab results folder; "
                                    "nothing to resume (use --force to replace it)")
        if state == "partial" and old.get("config_sha256") != config_hash(cfg) and not force:
            raise RunError(f"refusing to resume {target}: it was started from a different config "
                           f"(stored hash {str(old.get('config_sha256'))[:12]}..., this config "
                           f"{config_hash(cfg)[:12]}...); use --force to start over")
    elif state != "absent" and not force:
        if state == "complete":
            raise ResultsExistError(f"{target} already exists and is complete; use --force to "
                                    "overwrite it, or --out DIR to write elsewhere")
        if state == "partial":
            done, total = old.get("chunks_done"), old.get("chunks_total")
            raise ResultsExistError(f"{target} holds a partial run ({done} of {total} chunks "
                                    "done); use --resume to finish it (or --force to start over)")
        raise ResultsExistError(f"{target} exists and is not a precision-lab results folder; "
                                "use --force to replace it, or --out DIR to write elsewhere")
    return state, old


def run_experiment(cfg: ExperimentConfig, out_root: "str | Path" = "results", *,
                   force: bool = False, resume: bool = False, quiet: bool = False,
                   log: Callable[[str], None] | None = None) -> RunResult:
    """Run ``cfg`` into ``out_root/<name>/``.

    Raises:
        ResultsExistError: the folder exists (complete: needs ``force``; partial: needs
            ``resume`` or ``force``; not a results folder: needs ``force``).
        RunError: ``resume`` of a folder made from a different config (hash mismatch).
        KeyboardInterrupt / any error while computing: finished chunks stay in
            ``<target>/partial/`` with the manifest status "partial".
    """
    out_root = Path(out_root)
    target = out_root / cfg.name
    say = log or (lambda s: None)
    state, old = preflight(cfg, out_root, force=force, resume=resume)
    resume = resume and state == "partial" and old.get("config_sha256") == config_hash(cfg)
    if state != "absent" and not resume:
        shutil.rmtree(target)  # only reachable with force (preflight refused otherwise)

    from precision_lab.implementations import get_implementation

    impls = [get_implementation(k) for k in implementation_keys(cfg)]
    fmts = format_names(cfg)
    points = sweep_points(cfg)
    axes = sweep_axes(cfg)
    keys = [(p, fm, chunk_key(p, fm)) for p in points for fm in fmts]
    partial = target / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    started = _now()
    t0 = time.perf_counter()
    manifest = _manifest_base(cfg, points, [k for _, _, k in keys], started)
    timings: dict[str, float] = {}
    info: dict[str, dict] = {}
    if resume and old:
        timings.update(old.get("timings") or {})
        info.update(old.get("chunk_info") or {})
        manifest["started_at"] = old.get("started_at", started)
        manifest["resumed_at"] = started

    def save_manifest(status: str, done: int) -> None:
        manifest.update(status=status, chunks_done=done, chunks_total=len(keys),
                        timings=timings, chunk_info=info)
        _write_json(target / "manifest.json", manifest)

    tables: list[pa.Table] = []
    done = resumed = computed = 0
    save_manifest("partial", 0)
    bar = _progress(len(keys), cfg.name, quiet)
    try:
        cached_point, cached_inputs = None, None
        for p, fm, key in keys:
            path = partial / f"{key}.parquet"
            if resume and path.exists():
                tables.append(pq.read_table(path))
                resumed += 1
            else:
                if cached_point != p.index:
                    cached_point, cached_inputs = p.index, generate(cfg, p)
                tc = time.perf_counter()
                tab, extra = compute_chunk(cfg, p, fm, impls, cached_inputs)
                _write_parquet(path, tab)
                timings[key] = round(time.perf_counter() - tc, 4)
                info[key] = extra
                tables.append(tab)
                computed += 1
            done += 1
            save_manifest("partial", done)
            bar.update(1)
    finally:
        bar.close()

    # ---- finalize into a temp folder beside the target, then swap it in
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    env = {"torch": manifest["torch"], "torch_cpu_capability": manifest["torch_cpu_capability"]}
    tmp = out_root / f".{cfg.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    report_paths = None
    try:
        _write_parquet(tmp / "samples.parquet", table)
        summary = summarize(table, axes)
        agree = agreement(table, axes)
        summary_doc: dict[str, Any] = {"experiment": cfg.name, "question": cfg.question,
                                       "reduction": cfg.reduction, "sweep_axes": axes,
                                       "rows": summary}
        values = _values_view(table, axes)
        if values is not None:
            summary_doc["values"] = values
        _write_json(tmp / "summary.json", summary_doc)
        _write_csv(tmp / "summary.csv", summary)
        _write_json(tmp / "agreement.json", {"experiment": cfg.name, "sweep_axes": axes,
                                             "rows": agree})
        _write_csv(tmp / "agreement.csv", agree)
        cmp = compare_table(table, cfg, axes, env)
        if cmp is not None:
            _write_json(tmp / "compare.json", cmp)
        from precision_lab.report.plots import make_plots

        plot_paths = make_plots(table, summary, axes, tmp / "plots", cfg.name)
        manifest.update(
            status="complete", chunks_done=len(keys), chunks_total=len(keys), timings=timings,
            chunk_info=info, finished_at=_now(),
            wall_seconds=round(time.perf_counter() - t0, 3),
            files=sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
            + ["manifest.json"],
            plots=[str(p.relative_to(tmp)) for p in plot_paths],
            rows=table.num_rows)
        _write_json(tmp / "manifest.json", manifest)
        from precision_lab.report.report import write_report

        report_paths = write_report(tmp)
        manifest["files"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")
                                   if p.is_file())
        manifest["plots"] = sorted(str(p.relative_to(tmp)) for p in (tmp / "plots").glob("*.png"))
        _write_json(tmp / "manifest.json", manifest)
        old_dir = out_root / f".{cfg.name}.old-{os.getpid()}"
        os.replace(target, old_dir)
        os.replace(tmp, target)
        shutil.rmtree(old_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"{cfg.name}: {computed} chunk(s) computed, {resumed} resumed -> {target}")
    if report_paths is not None:
        report_paths = tuple(target / Path(p).name for p in report_paths)
    return RunResult(target, manifest, computed, resumed, report_paths)
