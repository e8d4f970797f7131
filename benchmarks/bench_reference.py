"""Throughput of the certified reference: fast path (method="auto") vs exact path.

    python benchmarks/bench_reference.py           # full run (~1-2 minutes)
    python benchmarks/bench_reference.py --quick   # short run (~15 s)

For each target format (the logits are in the same format) and vocabulary size, the same
random logits (standard normal x 3, one confident row in eight) go through both paths; the
exact path is timed on a prefix of the rows (its rate is per row, so that is fair) and
its values are checked bit for bit against the fast path's on that prefix.  Prints rows/s
and logits/s of each path, the share of rows the fast path sent to the exact path, and the
speed-up (fast rows/s over exact rows/s).  For scale it also times "plain mpmath" on one
row: log(fsum(exp(x_j))) - x_t element by element at 50 digits, the naive reference that
a first attempt writes (not correctly rounded, and 0 in the cancellation regime), and prints
the fast path's speed-up over it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import mpmath
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precision_lab.numerics.formats import FORMAT_NAMES, get_format  # noqa: E402
from precision_lab.numerics.reference import cross_entropy_detailed  # noqa: E402


def make_inputs(fmt: str, V: int, B: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, V)) * 3.0
    t = rng.integers(0, V, B)
    conf = np.arange(B) % 8 == 0
    x[conf, t[conf]] += 25.0  # confident rows: tiny losses, the cancellation regime
    return x.astype(get_format(fmt).np_dtype), t


def plain_mpmath(x: np.ndarray, t: np.ndarray) -> list:
    """The element-by-element mpmath evaluation at 50 digits (the baseline, not a reference)."""
    with mpmath.workdps(50):
        return [mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
                - mpmath.mpf(float(row[k])) for row, k in zip(x, t)]


def timed(fn, min_time: float) -> tuple[float, object]:
    """Seconds per call (best of repeated calls totalling >= min_time) and the result."""
    best, total, out = np.inf, 0.0, None
    while total < min_time or best == np.inf:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, total = min(best, dt), total + dt
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches, shorter timings")
    args = ap.parse_args(argv)
    vocab = (10, 1024, 32768)
    fast_elems = 1 << (19 if args.quick else 21)  # logits per fast-path batch
    exact_budget = 0.4 if args.quick else 2.0  # rough seconds of exact-path work per cell
    min_time = 0.2 if args.quick else 1.0

    print(f"# bench_reference {'--quick' if args.quick else ''}".rstrip())
    print(f"# python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} cpus")
    head = (f"{'target':<9}{'V':>7}{'fast rows/s':>13}{'fast logits/s':>15}"
            f"{'exact rows/s':>14}{'exact logits/s':>16}{'fallback':>10}{'speed-up':>10}"
            f"{'identical':>11}{'plain-mp logits/s':>19}{'vs plain':>10}")
    print(head)
    print("-" * len(head))
    bad = 0
    for fmt in FORMAT_NAMES:
        for V in vocab:
            B = max(8, fast_elems // V)
            x, t = make_inputs(fmt, V, B)
            tf, fast = timed(lambda: cross_entropy_detailed(x, t, fmt, method="auto"), min_time)
            # size the exact prefix from a one-row probe
            t1, _ = timed(lambda: cross_entropy_detailed(x[:1], t[:1], fmt, method="exact"), 0)
            n_ex = int(min(B, max(2, exact_budget / max(t1, 1e-6))))
            te, ex = timed(lambda: cross_entropy_detailed(x[:n_ex], t[:n_ex], fmt,
                                                          method="exact"), 0)
            same = fast.values[:n_ex].tobytes() == ex.values.tobytes()
            n_pl = max(1, min(B, 20000 // V))
            tp, _ = timed(lambda: plain_mpmath(x[:n_pl], t[:n_pl]), 0)
            pr = n_pl / tp
            bad += not same
            fr, er = B / tf, n_ex / te
            print(f"{fmt:<9}{V:>7}{fr:>13.4g}{fr * V:>15.4g}{er:>14.4g}{er * V:>16.4g}"
                  f"{fast.slow_rows / B:>9.3%} {fr / er:>9.0f}x{'yes' if same else 'NO':>11}"
                  f"{pr * V:>19.4g}{fr / pr:>9.0f}x")
    print("\nfast: method='auto' on B rows (B*V ~ %d logits); exact: method='exact' on a "
          "prefix of the same rows;\nfallback: share of rows the fast path sent to the exact "
          "path; identical: bit-identical values on the prefix;\nplain-mp: element-by-element "
          "mpmath at 50 digits on a few rows; vs plain: fast rows/s over plain-mp rows/s."
          % fast_elems)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
