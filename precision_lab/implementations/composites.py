"""Models of torch's fused cross-entropy kernel: composites of numpy operations.

torch's ``F.cross_entropy`` is one fused kernel and cannot be traced step by step.  The
composites here rebuild it from its structure, so that a comparison
(:func:`precision_lab.explain.attribution.compare_fused`) can say which model is bit-identical
to it.  They are implementations (``(x, t, fmt) -> losses``) but are not registered in
:data:`~precision_lab.implementations.registry.REGISTRY`: they model a kernel, they are not
kernels under test.

torch's CPU path is log_softmax computed as ``x - max - logsum``, stored in the input dtype,
then nll.  Reading the kernel (``serial_vec_log_softmax_lastdim_range``) shows one more
rounding that matters: for float16 and bfloat16 the per-row sum of exp is accumulated in
float32 but kept in a buffer of the INPUT dtype, and so is its log; only then is
``(x - max) - logsum`` computed in float32 and rounded once.  ``cpu_lastdim_model`` follows
that.  The composites model the structure of torch's code; they are not torch's code (numpy's
exp/log stand in for torch's SLEEF ones, and for V >= 16 torch sums in SIMD lanes, which the
sequential sum here does not copy).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from precision_lab.implementations.base import take
from precision_lab.implementations.registry import REGISTRY
from precision_lab.numerics.formats import Format, get_format, round_float64_array
from precision_lab.numerics.sums import pairwise_sum

__all__ = ["COMPOSITES", "composite", "cpu_lastdim_model"]

Composite = Callable[[np.ndarray, np.ndarray, "str | Format"], np.ndarray]


def _internal_dtype(f: Format, internal: str) -> np.dtype:
    if internal == "format":
        return f.np_dtype
    # "float32": float32 unless the format is wider
    return np.dtype(np.float64) if f.name == "float64" else np.dtype(np.float32)


def _seq_sum(e: np.ndarray) -> np.ndarray:
    """Left-to-right sum over the last axis in e's dtype (np.add.accumulate is sequential)."""
    return np.add.accumulate(e, axis=-1)[..., -1]


def composite(order: str, internal: str, summation: str = "sequential",
              store_logsum: bool = False) -> Composite:
    """log_softmax then nll, as numpy arithmetic in ``internal`` precision.

    Args:
        order: "x-m-logsum" computes (x - max) - logsum, "x-(m+logsum)" computes
            x - (max + logsum).
        internal: "float32" (float32 arithmetic, float64 for the float64 format) or "format"
            (every operation in the format).
        summation: "sequential" (left to right) or "pairwise"
            (:func:`~precision_lab.numerics.sums.pairwise_sum`).
        store_logsum: round the sum to the format, take log (in internal precision) and round
            the log to the format before the last subtraction -- what a kernel that keeps its
            per-row sum in a buffer of the input dtype does.

    Returns:
        ``run(x, t, fmt)``: the per-sample losses, of fmt's dtype.
    """
    if order not in ("x-m-logsum", "x-(m+logsum)"):
        raise ValueError(f"order must be 'x-m-logsum' or 'x-(m+logsum)', not {order!r}")
    if internal not in ("float32", "format"):
        raise ValueError(f"internal must be 'float32' or 'format', not {internal!r}")
    if summation not in ("sequential", "pairwise"):
        raise ValueError(f"summation must be 'sequential' or 'pairwise', not {summation!r}")

    def run(x: np.ndarray, t: np.ndarray, fmt: "str | Format") -> np.ndarray:
        f = get_format(fmt)
        dt = _internal_dtype(f, internal)
        xi = np.asarray(x).astype(np.float64).astype(dt) if dt != f.np_dtype else np.asarray(x)

        def to_f(a: np.ndarray) -> np.ndarray:  # round once to the format, back in dt
            if dt == f.np_dtype:
                return a
            return round_float64_array(a.astype(np.float64), f).astype(np.float64).astype(dt)

        with np.errstate(all="ignore"):
            m = np.max(xi, axis=-1, keepdims=True)
            d = xi - m
            e = np.exp(d)
            s = pairwise_sum(e) if summation == "pairwise" else _seq_sum(e)
            if store_logsum:
                s = to_f(s)
            lg = np.log(s)[:, None]
            if store_logsum:
                lg = to_f(lg)
            lp = d - lg if order == "x-m-logsum" else xi - (m + lg)
        lp = round_float64_array(lp.astype(np.float64), f) if lp.dtype != f.np_dtype else lp
        return -take(lp, np.asarray(t, dtype=np.int64))
    return run


#: torch's CPU last-dim log_softmax as its source reads, then nll.
cpu_lastdim_model: Composite = composite("x-m-logsum", "float32", "sequential",
                                         store_logsum=True)

#: Composites set beside the fused kernel: name -> (description, callable(x, t, fmt)).
COMPOSITES: dict[str, tuple[str, Composite]] = {
    "cpu_lastdim_model": (
        "torch's CPU last-dim log_softmax as its source reads (LogSoftmaxKernelImpl.h, "
        "serial_vec_log_softmax_lastdim_range): max; sum of exp(x - max) accumulated in float32 "
        "and STORED in the input dtype; log of it in float32, stored in the input dtype; then "
        "(x - max) - logsum in float32, rounded once to the input dtype; then nll. numpy's "
        "exp/log stand in for torch's SLEEF ones",
        cpu_lastdim_model),
    "logsumexp_f32_round_once": (
        "(x - max) - log(sum exp(x - max)) all in float32, rounded once to the format, then nll",
        composite("x-m-logsum", "float32", "sequential")),
    "x_minus_(max+logsum)_f32": (
        "the other order, x - (max + logsum), in float32, rounded once to the format",
        composite("x-(m+logsum)", "float32", "sequential")),
    "logsumexp_format_arith": (
        "(x - max) - logsum with every operation rounded to the format (pairwise sum)",
        composite("x-m-logsum", "format", "pairwise")),
    "torch_logsoftmax_nll": ("registry: F.nll_loss(F.log_softmax(x))",
                             lambda x, t, fmt: REGISTRY["torch_logsoftmax_nll"](x, t, fmt)),
    "lse": ("registry: (max + log(sum exp(x - max))) - x_t in the format",
            lambda x, t, fmt: REGISTRY["lse"](x, t, fmt)),
    "lse_log1p": ("registry: BHH (max - x_t) + log1p(...)",
                  lambda x, t, fmt: REGISTRY["lse_log1p"](x, t, fmt)),
}
