"""A first ranking of the zoo per format: worst and typical ULP error against the certified
truth, at LLM vocabulary sizes.

    python benchmarks/rank_zoo.py                      # V in {32000, 128256, 262144}
    python benchmarks/rank_zoo.py --V 32000 --rows 16 --formats bfloat16

Logits: ``--generator normal`` (scale x N(0, 1), scales from ``--scales``) or ``confident``
(the target ``--margin`` above the row's largest other logit); generated in float64 with
numpy's PCG64(seed), rounded once to each format.  Every implementation in ``--keys`` is
measured with :func:`precision_lab.experiment.measure.measure` (the runner's function) on
all rows; the table lists each one's largest and median ULP error over every V and scale,
sorted by the largest, and the share of rows correctly rounded.  Nothing is written.

``--linear K``: the fused linear entries instead -- hidden (rows, K) standard normal, weight
(V, K) N(0, (scale / sqrt K)^2) (so the logits have standard deviation about ``scale``),
rounded once to the format; truth the certified loss of the exact product
(:mod:`precision_lab.numerics.exact_logits`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precision_lab.experiment.measure import measure  # noqa: E402
from precision_lab.implementations.llm import resolve_linear  # noqa: E402
from precision_lab.implementations.registry import REGISTRY  # noqa: E402
from precision_lab.implementations.zoo import resolve_zoo  # noqa: E402
from precision_lab.numerics.exact_logits import (  # noqa: E402
    cross_entropy_exact_logits,
    exact_product,
)
from precision_lab.numerics.formats import to_format  # noqa: E402
from precision_lab.numerics.metrics import ulp_distance, ulp_error  # noqa: E402

LINEAR_KEYS = ["fused_linear", "fused_linear(chunk=4096)", "fused_linear(logits=float32)",
               "fused_linear(acc=format)", "linear_torch"]

KEYS = ["torch", "lse", "lse_log1p", "online_softmax", "online_softmax(order=pairwise)",
        "online_softmax(acc=float32)", "chunked", "chunked(acc=format)",
        "chunked(chunk_size=4096, acc=format)", "chunked(acc=format, exp=exp)", "kahan",
        "kahan(acc=format)", "kahan(acc=format, compensate=off)", "vocab_parallel",
        "vocab_parallel(acc=format)", "vocab_parallel(degree=1, acc=format)",
        "vocab_parallel(degree=64, acc=format)", "fp32_accum", "fp32_accum(upcast=sum)", "jax",
        "optax", "torch_compile"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=int, nargs="+", default=[32000, 128256, 262144])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--formats", nargs="+", default=["bfloat16", "float16"])
    ap.add_argument("--generator", choices=["normal", "confident"], default="normal")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--margin", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keys", nargs="+", default=None)
    ap.add_argument("--linear", type=int, default=0, metavar="K")
    a = ap.parse_args()
    if a.linear:
        return linear(a)
    a.keys = a.keys or KEYS
    impls = [resolve_zoo(k) or REGISTRY[k] for k in a.keys]
    t0 = time.perf_counter()
    for fmt in a.formats:
        errs: dict[str, list[np.ndarray]] = {i.key: [] for i in impls}
        cr: dict[str, list[np.ndarray]] = {i.key: [] for i in impls}
        slow = 0
        for V in a.V:
            for scale in a.scales:
                rng = np.random.default_rng(a.seed)
                x = scale * rng.standard_normal((1, a.rows, V))
                t = rng.integers(0, V, (1, a.rows))
                if a.generator == "confident":
                    others = x.copy()
                    np.put_along_axis(others, t[..., None], -np.inf, axis=-1)
                    np.put_along_axis(x, t[..., None], (others.max(-1) + a.margin)[..., None],
                                      axis=-1)
                m = measure(to_format(x, fmt), t, fmt, impls)
                slow += m.reference.slow_rows
                for k, r in m.results.items():
                    errs[k].append(r.ulp_error)
                    cr[k].append(r.ulp_distance == 0)
        print(f"\n{fmt}: {a.generator} logits, scales {a.scales}, V {a.V}, {a.rows} rows each "
              f"({slow} rows on the reference's exact path)")
        print(f"{'implementation':42s} {'max ULP':>9s} {'median':>8s} {'p90':>8s} "
              f"{'correctly rounded':>18s}")
        rows = []
        for k in errs:
            e = np.concatenate(errs[k])
            e = np.where(np.isnan(e), np.inf, e)
            rows.append((float(np.max(e)), float(np.median(e)), float(np.quantile(e, 0.9)),
                         float(np.mean(np.concatenate(cr[k]))), k))
        for mx, med, p90, c, k in sorted(rows):
            print(f"{k:42s} {mx:9.3g} {med:8.3g} {p90:8.3g} {100 * c:17.0f}%")
    print(f"\n{time.perf_counter() - t0:.0f} s")


def linear(a) -> None:
    impls = [resolve_linear(k) for k in (a.keys or LINEAR_KEYS)]
    t0 = time.perf_counter()
    K = a.linear
    for fmt in a.formats:
        errs: dict[str, list[np.ndarray]] = {i.key: [] for i in impls}
        cr: dict[str, list[np.ndarray]] = {i.key: [] for i in impls}
        for V in a.V:
            for scale in a.scales:
                rng = np.random.default_rng(a.seed)
                h = to_format(rng.standard_normal((a.rows, K)), fmt)
                w = to_format(rng.standard_normal((V, K)) * (scale / K ** 0.5), fmt)
                t = rng.integers(0, V, a.rows)
                ref = cross_entropy_exact_logits(exact_product(h, w), t, fmt)
                for i in impls:
                    out = i(h, w, t, fmt)
                    errs[i.key].append(ulp_error(out, ref.hi, fmt, exact_lo=ref.lo))
                    cr[i.key].append(ulp_distance(out, ref.values, fmt) == 0)
        print(f"\n{fmt}: hidden (rows, {K}) @ weight (V, {K}).T, logit scales {a.scales}, "
              f"V {a.V}, {a.rows} rows each")
        print(f"{'implementation':42s} {'max ULP':>9s} {'median':>8s} {'correctly rounded':>18s}")
        rows = []
        for k in errs:
            e = np.concatenate(errs[k])
            rows.append((float(np.max(e)), float(np.median(e)),
                         float(np.mean(np.concatenate(cr[k]))), k))
        for mx, med, c, k in sorted(rows):
            print(f"{k:42s} {mx:9.3g} {med:8.3g} {100 * c:17.0f}%")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
