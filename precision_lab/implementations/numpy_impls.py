"""The numpy implementations: every elementary operation rounded once to the format.

See :mod:`precision_lab.implementations.base` for the arithmetic model (what was measured about
numpy's, ml_dtypes' and scipy's float16/bfloat16 arithmetic) and the step ``OPS``.

Training semantics (``lse`` and ``lse_log1p``; the definitions are those of
:mod:`precision_lab.numerics.semantics`).  Constants first: a = 1 - eps and b = eps / V are
evaluated in float64 and rounded into the format; z, c, the weights w and probability targets
q are rounded once into the format.  Then every operation in the format's arithmetic, in
this order:

* softcap: u = x / c, t = tanh(u), y = c * t (else y = x);
* the algorithm's own log-sum-exp on y, giving per class r_j = -log p_j:
  ``lse``: lse = m + log(sum_j exp(y_j - m)), r_j = lse - y_j;
  ``lse_log1p``: l1 = log1p(sum_{j != k} exp(y_j - m)), r_j = (m - y_j) + l1, lse = m + l1;
* class index t: nll = w_t * r_t (r_t without weights); with eps > 0:
  smooth = pairwise_sum(w * r) (pairwise_sum(r) without weights), loss = a * nll + b * smooth;
* probabilities: q' = q * a + b (q without smoothing), loss = pairwise_sum((r * q') * w);
* z-loss: loss = loss + z * (lse * lse); ignored rows are set to 0.

Gradient (analytic: softmax minus the target distribution, in the format's arithmetic):
p_j = exp(y_j - lse) (``lse``) or exp((y_j - m) - l1) (``lse_log1p``); c = b * w, then
c_t = c_t + a * w_t (class index) or c = q' * w (probabilities); C = pairwise_sum(c);
K = C + (2 z) * lse (C without z-loss); g = K * p - c; softcap: g = g * (1 - t * t); ignored
rows 0; reduction "mean": g / D, with D = pairwise_sum of w_t over the non-ignored rows (their
count, rounded into the format, without weights; B for probabilities).
"""

from __future__ import annotations

import numpy as np

from precision_lab.implementations.base import LossInputs, Recorder, prepare, prepare_loss, take
from precision_lab.numerics.formats import Format, round_float64_array
from precision_lab.numerics.sums import pairwise_sum

__all__ = ["naive", "naive_softmax", "lse", "lse_log1p", "scipy_lse", "lse_grad",
           "lse_log1p_grad"]


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
        trace: "list | None" = None, **keywords) -> np.ndarray:
    """Max-shifted log-sum-exp minus the target logit: (m + log(sum_j exp(x_j - m))) - x_t.

    Steps: [cast] max m, sub d = x - m, exp e, sum s (pairwise), log l, add lse = m + l,
    gather x_t, sub loss = lse - x_t.  Loss keywords: see the module docstring (not traced).
    """
    if _keyword_path(targets, keywords):
        _no_trace(trace)
        return _semantic_loss("lse", logits, targets, fmt, keywords)
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
              trace: "list | None" = None, **keywords) -> np.ndarray:
    """Blanchard-Higham-Higham: (m - x_t) + log1p(sum_{j != k} exp(x_j - m)), k = argmax.

    k is the first maximal index; the term j = k (exp(0) = 1) is left out of the sum by
    zeroing it (exact), so the pairwise order is that of the full row with a 0 at k.
    Steps: [cast] argmax k, gather m = x_k, sub d = x - m, exp e, mask e_rest (e[k] = 0),
    sum s (pairwise), log1p l, gather x_t, sub a = m - x_t, add loss = a + l.  Loss
    keywords: see the module docstring (not traced).
    """
    if _keyword_path(targets, keywords):
        _no_trace(trace)
        return _semantic_loss("lse_log1p", logits, targets, fmt, keywords)
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



# ---------------------------------------------------------------------------------------
# training semantics and gradients (module docstring)

def _keyword_path(targets: np.ndarray, keywords: dict) -> bool:
    """Loss keywords given, probability targets, or an ignored (-100) target."""
    t = np.asarray(targets)
    return bool(keywords) or t.ndim == 2 or bool(np.issubdtype(t.dtype, np.integer)
                                                 and (t == -100).any())


def _no_trace(trace) -> None:
    if trace is not None:
        raise TypeError("trace records the plain loss only (no loss keywords, probability "
                        "targets or ignored rows)")


def _const(v: float, f: Format) -> np.ndarray:
    """The float64 value v rounded once into f, as a 0-d array of f's dtype."""
    return round_float64_array(np.asarray(v, dtype=np.float64), f)


def _rows(kind: str, P: LossInputs):
    """y (after softcap), t = tanh(x / c) or None, r = -log p (B, V), lse (B,), and the
    shifted exponent y - lse (``lse``) or (y - m) - l1 (``lse_log1p``) for the gradient."""
    f, x = P.f, P.x
    tt = None
    with np.errstate(all="ignore"):
        if P.spec.softcap is not None:
            c = _const(P.spec.softcap, f)
            tt = np.tanh(x / c)
            y = c * tt
        else:
            y = x
        if kind == "lse":
            m = np.max(y, axis=-1)
            s = pairwise_sum(np.exp(y - m[:, None]))
            lse_ = m + np.log(s)
            r = lse_[:, None] - y
            shifted = y - lse_[:, None]
        else:
            k = np.argmax(y, axis=-1)
            m = take(y, k)
            d = y - m[:, None]
            e = np.exp(d)
            np.put_along_axis(e, k[:, None], 0, axis=-1)
            l1 = np.log1p(pairwise_sum(e))
            r = (m[:, None] - y) + l1[:, None]
            lse_ = m + l1
            shifted = d - l1[:, None]
    return y, tt, r, lse_, shifted


def _semantic_loss(kind: str, logits, targets, fmt, keywords: dict) -> np.ndarray:
    P = prepare_loss(logits, targets, fmt, **keywords)
    f, spec = P.f, P.spec
    B, V = P.x.shape
    _, _, r, lse_, _ = _rows(kind, P)
    with np.errstate(all="ignore"):
        a = _const(1.0 - spec.label_smoothing, f)
        b = _const(spec.label_smoothing / V, f)
        if not spec.prob:
            ts = np.where(P.valid, P.t, 0)
            rt = take(r, ts)
            nll = rt if P.w is None else P.w[ts] * rt
            if spec.label_smoothing:
                sm = pairwise_sum(r if P.w is None else P.w[None, :] * r)
                loss = a * nll + b * sm
            else:
                loss = nll
        else:
            q = P.t * a + b if spec.label_smoothing else P.t
            prod = r * q
            if P.w is not None:
                prod = prod * P.w[None, :]
            loss = pairwise_sum(prod)
        if spec.z_loss:
            loss = loss + _const(spec.z_loss, f) * (lse_ * lse_)
        return np.where(P.valid, loss, f.np_dtype.type(0)).astype(f.np_dtype)


def _semantic_grad(kind: str, logits, targets, fmt, reduction: str, keywords: dict):
    P = prepare_loss(logits, targets, fmt, reduction=reduction, **keywords)
    f, spec = P.f, P.spec
    B, V = P.x.shape
    zero = f.np_dtype.type(0)
    _, tt, _, lse_, shifted = _rows(kind, P)
    with np.errstate(all="ignore"):
        p = np.exp(shifted)
        a = _const(1.0 - spec.label_smoothing, f)
        b = _const(spec.label_smoothing / V, f)
        w = P.w if P.w is not None else np.ones(V, f.np_dtype)
        if not spec.prob:
            ts = np.where(P.valid, P.t, 0)
            c = np.broadcast_to(b * w, (B, V)).copy() if spec.label_smoothing else \
                np.zeros((B, V), f.np_dtype)
            ct = take(c, ts) + (a * w[ts] if spec.label_smoothing else w[ts])
            np.put_along_axis(c, ts[:, None], ct[:, None], axis=-1)
        else:
            q = P.t * a + b if spec.label_smoothing else P.t
            c = q * P.w[None, :] if P.w is not None else q
        K = pairwise_sum(c)
        if spec.z_loss:
            K = K + _const(2 * spec.z_loss, f) * lse_
        g = K[:, None] * p - c
        if tt is not None:
            g = g * (f.np_dtype.type(1) - tt * tt)
        g = np.where(P.valid[:, None], g, zero)
        if reduction == "mean":
            if spec.prob:
                D = _const(float(B), f)
            elif P.w is None:
                D = _const(float(P.valid.sum()), f)
            else:
                D = pairwise_sum(P.w[P.t[P.valid]]) if P.valid.any() else zero
            g = g / D
        return g.astype(f.np_dtype)


def lse_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
             reduction: str = "none", **keywords) -> np.ndarray:
    """Analytic gradient of :func:`lse`'s loss, (B, V), in the format (module docstring)."""
    return _semantic_grad("lse", logits, targets, fmt, reduction, keywords)


def lse_log1p_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                   reduction: str = "none", **keywords) -> np.ndarray:
    """Analytic gradient of :func:`lse_log1p`'s loss, (B, V), in the format (module
    docstring)."""
    return _semantic_grad("lse_log1p", logits, targets, fmt, reduction, keywords)
