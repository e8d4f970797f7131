"""Throughput of the training-semantics reference: loss (precision_lab.numerics.semantics)
and gradient (precision_lab.numerics.gradient), method="auto".

    python benchmarks/bench_semantics.py           # V = 1024 and 32768 (~3-5 minutes)
    python benchmarks/bench_semantics.py --quick   # V = 1024 only

For each vocabulary size, target format and keyword set, the same random float32 logits
(standard normal x 2; one row in ten ignored with -100) go through the loss and the gradient
reference; prints rows/s of each, and how many rows (loss) or elements (gradient) the fast
path left to the exact interval path.  The plain reference (precision_lab.numerics.reference,
no keywords) is timed on the same logits for scale.  Keyword sets: "plain" (none), "train"
(weight, ignore_index, label_smoothing=0.1), "llm" (z_loss=1e-4, softcap=30).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precision_lab.numerics import gradient as G  # noqa: E402
from precision_lab.numerics import reference as R  # noqa: E402
from precision_lab.numerics import semantics as S  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    sizes = (1024,) if args.quick else (1024, 32768)
    print(f"{'V':>6} {'format':9} {'keywords':6} {'loss rows/s':>12} {'slow':>5} "
          f"{'grad rows/s':>12} {'slow el':>8}")
    for V in sizes:
        B = max(16, 2 ** 21 // V)
        x = (rng.standard_normal((B, V)) * 2).astype(np.float32)
        t = rng.integers(0, V, B)
        t[::10] = -100
        w = rng.uniform(0.5, 2.0, V).astype(np.float32)
        sets = {"plain": {}, "train": {"weight": w, "label_smoothing": 0.1},
                "llm": {"z_loss": 1e-4, "softcap": 30.0}}
        for fmt in ("bfloat16", "float32", "float64"):
            for name, kw in sets.items():
                n = B
                t0 = time.perf_counter()
                r = S.cross_entropy_detailed(x[:n], t[:n], fmt, **kw)
                t1 = time.perf_counter()
                g = G.cross_entropy_grad_detailed(x[:n], t[:n], fmt, **kw)
                t2 = time.perf_counter()
                print(f"{V:6d} {fmt:9} {name:6} {n / (t1 - t0):12.1f} {r.slow_rows:5d} "
                      f"{n / (t2 - t1):12.1f} {g.slow_elements:8d}", flush=True)
            tt = np.where(t < 0, 0, t)
            t0 = time.perf_counter()
            R.cross_entropy_detailed(x, tt, fmt)
            t1 = time.perf_counter()
            print(f"{V:6d} {fmt:9} {'ref.py':6} {B / (t1 - t0):12.1f}   (plain reference)")


if __name__ == "__main__":
    main()
