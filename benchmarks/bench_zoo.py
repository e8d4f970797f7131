"""Speed and memory of every zoo member at LLM vocabulary sizes.

    python benchmarks/bench_zoo.py                       # V = 262144, B = 8, bfloat16
    python benchmarks/bench_zoo.py --V 32000 --B 16 --fmt float16
    python benchmarks/bench_zoo.py --keys chunked kahan  # a subset

Each implementation runs in a fresh Python process (so its peak memory is its own): the
logits (standard normal x 3, rounded once to the format) are generated there, the
implementation is called twice, and the process reports the first call's time (compilation
included, for jax/optax/torch_compile), the second call's time, and its peak resident memory
(ru_maxrss) minus the resident memory just before the first call.  The certified reference
(``reference``) and the fused linear entries (``fused_linear...``, hidden (B, 256) @ weight
(V, 256).T; their truth ``exact_product`` too) are timed the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, threading, time
import numpy as np
sys.path.insert(0, {root!r})
from precision_lab.numerics.formats import to_format
key, B, V, fmt = {key!r}, {B}, {V}, {fmt!r}
rng = np.random.default_rng(0)
t = rng.integers(0, V, B)
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20
peak = [0.0]
running = [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.0005)
if key.startswith("fused_linear") or key in ("linear_torch", "exact_product"):
    K = 256
    h = to_format(rng.standard_normal((B, K)), fmt)
    w = to_format(rng.standard_normal((V, K)) * (3 / K ** 0.5), fmt)
    if key == "exact_product":
        from precision_lab.numerics.exact_logits import exact_product, cross_entropy_exact_logits
        call = lambda: cross_entropy_exact_logits(exact_product(h, w), t, fmt)
    else:
        from precision_lab.implementations.llm import resolve_linear
        impl = resolve_linear(key)
        call = lambda: impl(h, w, t, fmt)
else:
    x = to_format(rng.standard_normal((B, V)) * 3, fmt)
    if key == "reference":
        from precision_lab.numerics.reference import cross_entropy_detailed
        call = lambda: cross_entropy_detailed(x, t, fmt)
    else:
        from precision_lab.implementations.zoo import resolve_zoo
        from precision_lab.implementations.registry import REGISTRY
        impl = resolve_zoo(key) or REGISTRY[key]
        call = lambda: impl(x, t, fmt)
base = rss()
th = threading.Thread(target=sample, daemon=True); th.start()
t0 = time.perf_counter(); call(); t1 = time.perf_counter(); call(); t2 = time.perf_counter()
running[0] = False; th.join()
print(json.dumps({{"key": key, "first_s": t1 - t0, "second_s": t2 - t1,
                   "peak_extra_mib": max(peak[0], rss()) - base}}))
"""

DEFAULT_KEYS = ["reference", "lse", "torch", "online_softmax", "online_softmax(order=pairwise)",
                "online_softmax(acc=float32)", "chunked", "chunked(acc=format)",
                "chunked(chunk_size=4096)", "kahan", "kahan(acc=format)", "vocab_parallel",
                "vocab_parallel(acc=format)", "fp32_accum", "fp32_accum(upcast=sum)", "jax",
                "optax", "torch_compile", "fused_linear", "fused_linear(logits=float32)",
                "linear_torch", "exact_product"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--V", type=int, default=262144)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--fmt", default="bfloat16")
    ap.add_argument("--keys", nargs="*", default=DEFAULT_KEYS)
    a = ap.parse_args()
    print(f"V = {a.V}, B = {a.B}, {a.fmt}; one fresh process per entry")
    print(f"{'key':40s} {'first call s':>12s} {'second s':>9s} {'peak extra MiB':>15s}")
    for key in a.keys:
        code = CHILD.format(root=str(ROOT), key=key, B=a.B, V=a.V, fmt=a.fmt)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if p.returncode:
            print(f"{key:40s} failed: {p.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"{key:40s} {r['first_s']:12.2f} {r['second_s']:9.2f} {r['peak_extra_mib']:15.0f}")


if __name__ == "__main__":
    main()
