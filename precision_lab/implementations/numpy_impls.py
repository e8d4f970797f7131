"""The numpy implementations: every elementary operation rounded once to the format.

See :mod:`precision_lab.implementations.base` for the arithmetic model (what was measured about
numpy's, ml_dtypes' and scipy's float16/bfloat16 arithmetic) and the step ``OPS``.
"""

from __future__ import annotations

import numpy as np

from precision_lab.implementations.base import Recorder, prepare, take
from precision_lab.numerics.formats import Format, round_float64_array
from precision_lab.numerics.sums import pairwise_sum

__all__ = ["naive", "naive_softmax", "lse", "lse_log1p", "scipy_lse"]


def naive(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
          trace: "list | None" = None) -> np.ndarray:
    """The seed's -log(exp(x_t) / sum_j exp(x_j)), unshifted; exp overflows first.

    Steps: [cast] exp e, sum s (pairwise), gather e_t, div p = e_t / s, log l, neg loss.
    """
    rec = Recorder(trace)
    x, t, f, xs = prepare(logits, targets, fmt, rec)
    with np.errstate(all="ignore"):
        e = rec("e", "exp", (x,), (xs,), np.exp(x))
        s = rec("s", "sum", (e,), ("e",), pairwise_sum(e))
        et = rec("e_t", "gather", (e, t), ("e", "targets"), take(e, t))
        p = rec("p", "div", (et, s), ("e_t", "s"), et / s)
        lp = rec("l", "log", (p,), ("p",), np.log(p))
        return rec("loss", "neg", (lp,), ("l",), -lp)


def naive_softmax(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                  trace: "list | None" = None) -> np.ndarray:
    """Unshifted softmax of the whole row, then -log of the target's probability.

    Steps: [cast] exp e, sum s (pairwise), div p = e / s (B, V), gather p_t, log l, neg loss.
    """
    rec = Recorder(trace)
    x, t, f, xs = prepare(logits, targets, fmt, rec)
    with np.errstate(all="ignore"):
        e = rec("e", "exp", (x,), (xs,), np.exp(x))
        s = rec("s", "sum", (e,), ("e",), pairwise_sum(e))
        s_col = s[:, None]
        p = rec("p", "div", (e, s_col), ("e", "s"), e / s_col)
        pt = rec("p_t", "gather", (p, t), ("p", "targets"), take(p, t))
        lp = rec("l", "log", (pt,), ("p_t",), np.log(pt))
        return rec("loss", "neg", (lp,), ("l",), -lp)


def lse(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
        trace: "list | None" = None) -> np.ndarray:
    """Max-shifted log-sum-exp minus the target logit: (m + log(sum_j exp(x_j - m))) - x_t.

    Steps: [cast] max m, sub d = x - m, exp e, sum s (pairwise), log l, add lse = m + l,
    gather x_t, sub loss = lse - x_t.
    """
    rec = Recorder(trace)
    x, t, f, xs = prepare(logits, targets, fmt, rec)
    with np.errstate(all="ignore"):
        m = rec("m", "max", (x,), (xs,), np.max(x, axis=-1))
        m_col = m[:, None]
        d = rec("d", "sub", (x, m_col), (xs, "m"), x - m_col)
        e = rec("e", "exp", (d,), ("d",), np.exp(d))
        s = rec("s", "sum", (e,), ("e",), pairwise_sum(e))
        lg = rec("l", "log", (s,), ("s",), np.log(s))
        y = rec("lse", "add", (m, lg), ("m", "l"), m + lg)
        xt = rec("x_t", "gather", (x, t), (xs, "targets"), take(x, t))
        return rec("loss", "sub", (y, xt), ("lse", "x_t"), y - xt)


def lse_log1p(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
              trace: "list | None" = None) -> np.ndarray:
    """Blanchard-Higham-Higham: (m - x_t) + log1p(sum_{j != k} exp(x_j - m)), k = argmax.

    k is the first maximal index; the term j = k (exp(0) = 1) is left out of the sum by
    zeroing it (exact), so the pairwise order is that of the full row with a 0 at k.
    Steps: [cast] argmax k, gather m = x_k, sub d = x - m, exp e, mask e_rest (e[k] = 0),
    sum s (pairwise), log1p l, gather x_t, sub a = m - x_t, add loss = a + l.
    """
    rec = Recorder(trace)
    x, t, f, xs = prepare(logits, targets, fmt, rec)
    with np.errstate(all="ignore"):
        k = rec("k", "argmax", (x,), (xs,), np.argmax(x, axis=-1))
        m = rec("m", "gather", (x, k), (xs, "k"), take(x, k))
        m_col = m[:, None]
        d = rec("d", "sub", (x, m_col), (xs, "m"), x - m_col)
        e = rec("e", "exp", (d,), ("d",), np.exp(d))
        rest = e.copy()
        np.put_along_axis(rest, k[:, None], 0, axis=-1)
        rest = rec("e_rest", "mask", (e, k), ("e", "k"), rest)
        s = rec("s", "sum", (rest,), ("e_rest",), pairwise_sum(rest))
        lg = rec("l", "log1p", (s,), ("s",), np.log1p(s))
        xt = rec("x_t", "gather", (x, t), (xs, "targets"), take(x, t))
        a = rec("a", "sub", (m, xt), ("m", "x_t"), m - xt)
        return rec("loss", "add", (a, lg), ("a", "l"), a + lg)


def scipy_lse(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """scipy.special.logsumexp(x, axis=-1) - x_t, the subtraction in the format.

    scipy computes in the input dtype, except bfloat16, which it promotes to float64; that
    float64 log-sum-exp is then rounded once to bfloat16.  Not step-wise.
    """
    from scipy.special import logsumexp

    x, t, f, _ = prepare(logits, targets, fmt, Recorder(None))
    with np.errstate(all="ignore"):
        y = np.asarray(logsumexp(x, axis=-1))
        if y.dtype != f.np_dtype:
            y = round_float64_array(y.astype(np.float64), f)
        return y - take(x, t)

