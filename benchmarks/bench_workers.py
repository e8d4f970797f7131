"""Evaluations per second of worst-case search and of an exhaustive sweep on 1, 2 and all
workers, measured in one run on the same work.

    python benchmarks/bench_workers.py [--quick] [--scheduler tcp://HOST:PORT]

* search: ``rounds`` rounds of ``precision-lab search --impl torch --format float16 --classes
  10`` (each round evaluates restarts + climbers x steps x neighbours rows);
* sweep: an exhaustive two-class float16 slice of about 10**7 problems (the first logit over
  the first values of the format, the second over all 63,490 non-NaN values), every registered
  implementation on every problem.

The pools are started and warmed (torch imported in every worker) before the clock starts, so
the figures are the steady state; each configuration's results are checked to be identical.
Prints evaluations per second, the speed-up over one worker, and how long the 10**7-problem
sweep took with each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from precision_lab.experiment.executor import default_workers, open_executor
from precision_lab.experiment.store import dumps
from precision_lab.search.exhaustive import SliceSpec, axis_values, run_slice
from precision_lab.search.table import SLICE_IMPLEMENTATIONS as SWEPT
from precision_lab.search.worst import SearchSpec, run_search


def _warm(i: int) -> int:
    """Two rounds of the measured search, numbered beyond the measured ones (imports, first
    calls of every kernel and of the reference's exact path)."""
    from precision_lab.search.worst import SearchSpec, search_round

    spec = SearchSpec("torch", "float16", 10).resolved().to_dict()
    search_round(spec, 100_000 + 2 * i)
    search_round(spec, 100_001 + 2 * i)
    return i


def _configs(scheduler: "str | None") -> list[tuple[str, int, "str | None"]]:
    n = default_workers()
    out = [("1 worker (in process)", 1, None), ("2 workers", 2, None)]
    if n > 2:
        out.append((f"all {n} workers", n, None))
    else:
        out.append((f"all {n} workers (= 2 here)", n, None))
    if scheduler:
        out.append((f"Dask {scheduler}", 4, scheduler))
    return out


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small work (a smoke test)")
    ap.add_argument("--scheduler", help="also measure this Dask scheduler")
    args = ap.parse_args(argv)
    rounds = 4 if args.quick else 48
    rows_goal = 10 ** 6 if args.quick else 10 ** 7
    f16 = axis_values("all", "float16")
    first = f16[: -(-rows_goal // f16.size)]
    sweep = SliceSpec("bench_sweep", "float16", SWEPT,
                      ({"values": [float(v) for v in first]}, "all"), 0, block=16)
    spec = SearchSpec("torch", "float16", 10).resolved()
    print(f"search: {rounds} rounds x {spec.evaluations_per_round:,} evaluations of torch "
          f"float16 V=10; sweep: {sweep.resolved().rows:,} two-class float16 problems x "
          f"{len(SWEPT)} implementations; {default_workers()} cores here")
    results: list[tuple[str, float, float, float, Any, Any]] = []
    for label, n, sched in _configs(args.scheduler):
        with tempfile.TemporaryDirectory() as tmp, open_executor(n, sched) as ex:
            if ex is None:
                _warm(0)
            else:
                list(ex.map(_warm, range(max(n, 2) * 2)))
            t0 = time.perf_counter()
            sr = run_search(spec, Path(tmp) / "s", budget=None, rounds=rounds, executor=ex,
                            workers=n)
            t_search = time.perf_counter() - t0
            t0 = time.perf_counter()
            xr = run_slice(sweep, Path(tmp) / "x", executor=ex, workers=n)
            t_sweep = time.perf_counter() - t0
        evals = sr.evaluations / t_search
        sweep_rate = xr.rows_done * len(SWEPT) / t_sweep
        results.append((label, evals, sweep_rate, t_sweep, dumps(sr.to_json()["cases"]),
                        dumps(xr.per_impl)))
        print(f"{label:28s} search {evals:12,.0f} evaluations/s   sweep {sweep_rate:12,.0f} "
              f"evaluations/s ({xr.rows_done / t_sweep:10,.0f} problems/s; "
              f"{xr.rows_done:,} problems in {t_sweep:.1f} s)", flush=True)
    base = results[0]
    for label, ev, sw, t_sw, cases, per in results[1:]:
        same = cases == base[4] and per == base[5]
        print(f"{label:28s} speed-up over 1 worker: search {ev / base[1]:.2f}x, sweep "
              f"{sw / base[2]:.2f}x; results identical: {same}")
    best = max(results, key=lambda r: r[2])
    per_row = best[3] / sweep.resolved().rows
    print(f"a sweep of 10**7 two-class problems x {len(SWEPT)} implementations takes "
          f"{per_row * 1e7:.0f} s here ({best[0]}); the full float16 pair slice "
          f"({axis_values('all', 'float16').size ** 2:,} problems) about "
          f"{per_row * axis_values('all', 'float16').size ** 2 / 3600:.1f} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
