"""The numpy kernels of the softmax family: online softmax (Milakov & Gimelshein), chunked
(Liger-Kernel) and its gradient, kahan (Cut Cross-Entropy) and fp32_accum."""

from __future__ import annotations

import numpy as np

from precision_lab.implementations.llm.common import (
    _assemble,
    _const,
    _exp,
    _inputs,
    _Rows,
    _to_format,
    _validate_keywords,
    _work,
)
from precision_lab.numerics.formats import Format
from precision_lab.numerics.sums import pairwise_sum

# ---------------------------------------------------------------------------------------
# online softmax (Milakov & Gimelshein 2018)

def _online_sequential(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) of Algorithm 3 as printed, left to right, every operation in y's format.

    Where the running maximum does not change, exp(m_{j-1} - m_j) = exp(0) = 1 and d * 1 = d
    exactly, so d_j = d_{j-1} + exp(x_j - m_j): runs between changes of the maximum are one
    ``np.add.accumulate`` (sequential, each partial sum rounded to the format: checked bit
    for bit against a Python loop for float16, bfloat16 and float32).  At a change (and at
    j = 0, where m_{-1} = -inf and d_{-1} = 0) the full update d = d exp(m_old - m_new) +
    exp(0) is taken, so leading -inf logits give NaN exactly as the algorithm does."""
    B, V = y.shape
    dt = y.dtype.type
    pm = np.maximum.accumulate(y, axis=1)
    with np.errstate(all="ignore"):
        e = np.exp(y - pm)
        m_out = pm[:, -1].copy()
        d_out = np.empty(B, dtype=y.dtype)
        prev = np.concatenate([np.full((B, 1), -np.inf, dtype=y.dtype), pm[:, :-1]], axis=1)
        changed = ~(pm == prev)  # NaN compares unequal: a NaN maximum restarts every step
        changed[:, 0] = True
        for i in range(B):
            starts = np.flatnonzero(changed[i])
            ends = np.append(starts[1:], V)
            d = dt(0)
            for a, b in zip(starts.tolist(), ends.tolist()):
                r = np.exp(dt(prev[i, a] - pm[i, a]))
                d = dt(dt(d * r) + e[i, a])
                if b - a > 1:
                    run = np.empty(b - a, dtype=y.dtype)
                    run[0] = d
                    run[1:] = e[i, a + 1:b]
                    d = np.add.accumulate(run)[-1]
            d_out[i] = d
    return m_out, d_out


def _online_pairwise(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) by the paper's operator [m1, d1] (+) [m2, d2] = [M, d1 e^(m1 - M) + d2 e^(m2 - M)],
    M = max(m1, m2), in a pairwise tree (the order of pairwise_sum) from the leaves
    [x_j, 1]."""
    m = y
    d = np.ones_like(y)
    with np.errstate(all="ignore"):
        while m.shape[1] > 1:
            n = m.shape[1]
            h = n // 2
            m1, m2 = m[:, 0:2 * h:2], m[:, 1:2 * h:2]
            d1, d2 = d[:, 0:2 * h:2], d[:, 1:2 * h:2]
            M = np.maximum(m1, m2)
            dn = d1 * np.exp(m1 - M) + d2 * np.exp(m2 - M)
            if n % 2:
                M = np.concatenate([M, m[:, n - 1:]], axis=1)
                dn = np.concatenate([dn, d[:, n - 1:]], axis=1)
            m, d = M, dn
    return m[:, 0], d[:, 0]


def online_softmax(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                   order: str = "sequential", acc: str = "format", ignore_index: int = -100,
                   label_smoothing: float = 0.0, z_loss: float = 0.0,
                   softcap: "float | None" = None) -> np.ndarray:
    """Online normalizer (Milakov & Gimelshein 2018, Algorithm 3), then
    loss = (m + log d) - x_t; see the package docstring.  Returns (B,) losses, fmt's dtype."""
    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    R = _inputs(logits, targets, fmt, acc, ignore_index, softcap)
    m, d = (_online_sequential if order == "sequential" else _online_pairwise)(R.y)
    with np.errstate(all="ignore"):
        lse = m + np.log(d)
    return _assemble(R, lse, label_smoothing, z_loss)


# ---------------------------------------------------------------------------------------
# chunked (Liger-Kernel) and its gradient

def _chunked_md(R: _Rows, chunk: int, exp: str, eps_x: "np.ndarray | None"):
    """Liger's first pass: (m, d, xsum) over blocks of ``chunk`` columns."""
    B, V = R.y.shape
    m = np.full(B, -np.inf, dtype=R.w.np_dtype)
    d = np.zeros(B, dtype=R.w.np_dtype)
    xsum = np.zeros(B, dtype=R.w.np_dtype) if eps_x is not None else None
    with np.errstate(all="ignore"):
        for a in range(0, V, chunk):
            X = R.y[:, a:a + chunk]
            m_new = np.maximum(m, X.max(axis=1))
            if xsum is not None:
                xsum = xsum + pairwise_sum(eps_x * X)
            d = d * _exp(m - m_new, exp, R.w) + pairwise_sum(_exp(X - m_new[:, None], exp,
                                                                   R.w))
            m = m_new
    return m, d, xsum


def chunked(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
            chunk_size: int = 32768, acc: str = "float32", exp: str = "exp2",
            ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
            softcap: "float | None" = None) -> np.ndarray:
    """Liger-Kernel's cross-entropy forward: blocks of ``chunk_size`` columns with a running
    max and sum; lse = m + log d; loss = lse - x_t (package docstring).  (B,) fmt's dtype."""
    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    R = _inputs(logits, targets, fmt, acc, ignore_index, softcap)
    eps_x = _const(-label_smoothing / R.V, R.w) if label_smoothing > 0 else None
    m, d, xsum = _chunked_md(R, chunk_size, exp, eps_x)
    with np.errstate(all="ignore"):
        lse = m + np.log(d)
    return _assemble(R, lse, label_smoothing, z_loss, xsum)


def chunked_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                 reduction: str = "none", chunk_size: int = 32768, acc: str = "float32",
                 exp: str = "exp2", ignore_index: int = -100, label_smoothing: float = 0.0,
                 z_loss: float = 0.0, softcap: "float | None" = None) -> np.ndarray:
    """The gradient Liger's kernel writes over its input in the same pass, (B, V) fmt's dtype.

    In W: p = exp(y - m) / d; p = p + ((2 z) lse) p; p = p + (-eps/V); "mean": p / N (N the
    non-ignored rows); softcap: p (1 - tanh^2); the target column recomputed once:
    p_t + ((2 z) lse) p_t + (-eps/V) + (-(1 - eps)), "mean" / N, softcap with
    t = y_t / c; ignored rows 0.  Rounded once into the format (Liger stores it in the
    logits' dtype).  reduction "none" and "sum" give the gradient of the sum of the rows.
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")
    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    R = _inputs(logits, targets, fmt, acc, ignore_index, softcap)
    w = R.w
    eps_x = _const(-label_smoothing / R.V, w) if label_smoothing > 0 else None
    m, d, _ = _chunked_md(R, chunk_size, exp, eps_x)
    n = _const(float(R.valid.sum()), w)
    with np.errstate(all="ignore"):
        lse = m + np.log(d)
        zz = (_const(2 * z_loss, w) * lse)[:, None] if z_loss > 0 else None

        def probs(y, mm, dd, extra):
            p = _exp(y - mm, exp, w) / dd
            if zz is not None:
                p = p + extra * p
            if label_smoothing > 0:
                p = p + _const(-label_smoothing / R.V, w)
            return p

        g = probs(R.y, m[:, None], d[:, None], zz)
        if reduction == "mean":
            g = g / n
        if R.tanh is not None:
            g = g * (_const(1.0, w) - R.tanh * R.tanh)
        gt = probs(R.yt[:, None], m[:, None], d[:, None], zz)[:, 0]
        gt = gt + _const(-(1.0 - label_smoothing), w)
        if reduction == "mean":
            gt = gt / n
        if R.tanh is not None:
            tt = R.yt / _const(softcap, w)  # type: ignore[arg-type]
            gt = gt * (_const(1.0, w) - tt * tt)
        np.put_along_axis(g, R.t[:, None], gt[:, None], axis=-1)
        g = np.where(R.valid[:, None], g, w.np_dtype.type(0))
    return _to_format(g, R.f)


# ---------------------------------------------------------------------------------------
# kahan: blockwise log-sum-exp with compensated accumulation

def _two_sum(a, b):
    """CCE's tl_2sum: s = a + b and the rounding error t (exact in any correctly rounded
    format, barring overflow)."""
    s = a + b
    a1 = s - b
    b1 = s - a1
    return s, (a - a1) + (b - b1)


def kahan(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *, block: int = 256,
          acc: str = "float32", compensate: str = "on", ignore_index: int = -100,
          label_smoothing: float = 0.0, z_loss: float = 0.0,
          softcap: "float | None" = None) -> np.ndarray:
    """Blockwise lse with compensated accumulation across blocks (package docstring); with
    ``compensate="off"`` the same blocks and rescaling without the compensation term.

    Each block is shifted by its own maximum, so a block whose logits are all -inf (a padded
    vocabulary with -inf pad columns filling a block) gives exp(-inf - -inf) = NaN and a NaN
    loss, as the blockwise published form would; Liger's update (shift by the running
    maximum) and the one-pass online softmax are unaffected."""
    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    R = _inputs(logits, targets, fmt, acc, ignore_index, softcap)
    B, V = R.y.shape
    m = np.full(B, -np.inf, dtype=R.w.np_dtype)
    s = np.zeros(B, dtype=R.w.np_dtype)
    c = np.zeros(B, dtype=R.w.np_dtype)
    with np.errstate(all="ignore"):
        for a in range(0, V, block):
            X = R.y[:, a:a + block]
            mb = X.max(axis=1)
            sb = pairwise_sum(np.exp(X - mb[:, None]))
            m_new = np.maximum(m, mb)
            r = np.exp(m - m_new)
            s = s * r
            c = c * r
            v = sb * np.exp(mb - m_new)
            if compensate == "on":
                s, c = _two_sum(s, c + v)
            else:
                s = s + v
            m = m_new
        lse = m + np.log(s + c)
    return _assemble(R, lse, label_smoothing, z_loss)


# ---------------------------------------------------------------------------------------
# fp32_accum

def fp32_accum(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
               upcast: str = "all", ignore_index: int = -100, label_smoothing: float = 0.0,
               z_loss: float = 0.0, softcap: "float | None" = None) -> np.ndarray:
    """Max-shifted lse with float32 accumulation (package docstring).  "all": every step in
    float32 (float64 for float64 logits), one rounding at the end; "sum": m, x - m and exp in
    the format, the pairwise sum of the exactly upcast terms in float32 rounded once into the
    format, then log, m + l and the loss in the format."""
    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    R = _inputs(logits, targets, fmt, "float32" if upcast == "all" else "format",
                ignore_index, softcap)
    with np.errstate(all="ignore"):
        m = R.y.max(axis=1)
        e = np.exp(R.y - m[:, None])
        if upcast == "all":
            s = pairwise_sum(e)
        else:
            w32 = _work(R.f, "float32")
            s = _to_format(pairwise_sum(e.astype(w32.np_dtype)), R.f)
        lse = m + np.log(s)
    return _assemble(R, lse, label_smoothing, z_loss)
