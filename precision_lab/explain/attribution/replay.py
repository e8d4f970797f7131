"""The exact replay of a trace's steps: lazy exact (B, V) arrays that are never materialized,
the per-call context caching the V-length exact work, and the exact value of one step on the
exact or computed values of its sources."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Union

import numpy as np

from precision_lab.explain.attribution.balls import (
    _INF,
    _b_add,
    _b_div,
    _b_exp,
    _b_log,
    _b_mul,
    _b_neg,
    _Ball,
    _ball_of,
    _rnd,
    _up,
)
from precision_lab.explain.attribution.exact import (
    _content_key,
    _exact_sums,
    _exp_sums,
    _ExpSum,
    _ExpTable,
    _mpf_exact,
)
from precision_lab.implementations import Step

# =========================================================================== lazy arrays

class _Lazy:
    """An exact (B, V) array, never materialized.  kind / args:

    "shift" (F, c): F - c, F a float64 array, c a per-row scalar;
    "exp" (G,): exp(G), G a float64 array or a "shift";
    "mask" (A, k): A with A[b, k[b]] = 0;
    "div" (A, s): A / s, s a per-row scalar;
    "lsm" (F,): log_softmax of a float64 array;
    "ew" (op, operands): any other elementwise op (elements only, no reductions)."""

    __slots__ = ("kind", "args")

    def __init__(self, kind: str, *args: Any) -> None:
        self.kind = kind
        self.args = args


PerRow = Union[np.ndarray, list]  # (B,) float64/int64 array, or a list of B balls


class _Ctx:
    """One attribution call: the batch and the caches of its V-length exact work (which does
    not depend on the working precision)."""

    def __init__(self, x: np.ndarray, t: np.ndarray) -> None:
        self.x = x          # exact logits, float64 (B, V)
        self.t = t
        self.B, self.V = x.shape
        self._exp: dict = {}
        self._sums: dict = {}
        self._tables: dict = {}
        self._keys: dict[int, tuple] = {}

    def _key(self, a: "np.ndarray | None") -> tuple:
        """Content key of an array, hashed once per array object (kept alive here)."""
        if a is None:
            return ()
        hit = self._keys.get(id(a))
        if hit is None or hit[0] is not a:
            hit = (a, _content_key(a))
            self._keys[id(a)] = hit
        return hit[1]

    def table(self, y: np.ndarray) -> _ExpTable:
        key = self._key(y)
        if key not in self._tables:
            self._tables[key] = _ExpTable(y)
        return self._tables[key]

    def expsums(self, F: np.ndarray, k: "np.ndarray | None" = None) -> list[_ExpSum]:
        key = (self._key(F), self._key(k))
        if key in self._exp:
            return self._exp[key]
        if k is None:
            res = _exp_sums(F, table=self.table(F))
        else:
            base = self.expsums(F)
            res = []
            redo = []
            for b in range(self.B):
                es = base[b]
                kb = int(k[b])
                if es.special is None and F[b, kb] == es.top:
                    res.append(_ExpSum(None, es.top, es.ctop - 1, es.wsh, es.qman, es.qexp,
                                       es.qerr))
                else:
                    res.append(es)
                    redo.append(b)
            if redo:
                ex = np.zeros(F.shape, bool)
                ex[np.arange(self.B), np.asarray(k, dtype=np.int64)] = True
                again = _exp_sums(F[redo], ex[redo])  # rare: no table for the subset
                for b, es in zip(redo, again, strict=True):
                    res[b] = es
        self._exp[key] = res
        return res

    def exact_sums(self, F: np.ndarray, k: "np.ndarray | None" = None) -> list:
        key = (self._key(F), self._key(k))
        if key not in self._sums:
            ex = None
            if k is not None:
                ex = np.zeros(F.shape, bool)
                ex[np.arange(F.shape[0]), np.asarray(k, dtype=np.int64)] = True
            self._sums[key] = _exact_sums(F, ex)
        return self._sums[key]

def _is_vec(v: Any) -> bool:
    return isinstance(v, _Lazy) or (isinstance(v, np.ndarray) and v.ndim == 2)


def _rowball(v: PerRow, b: int) -> _Ball:
    if isinstance(v, list):
        return v[b]
    return _ball_of(v.reshape(v.shape[0], -1)[b, 0] if v.ndim > 1 else v[b])


def _balls(v: PerRow, B: int) -> list:
    return v if isinstance(v, list) else [_rowball(v, b) for b in range(B)]


def _expsum_ball(es: _ExpSum, shift: "_Ball | None" = None) -> _Ball:
    """sum_j exp(F_j - shift) as a ball."""
    if es.special is not None:
        if es.special == 0.0:
            return _Ball(0)
        base = _Ball(es.special)
        return _b_exp(_b_add(base, shift, sub=True)) if shift is not None else base
    top = _Ball(es.top)
    t1 = _b_exp(_b_add(top, shift, sub=True) if shift is not None else top)
    return _b_mul(t1, _inner_ball(es))


def _inner_ball(es: _ExpSum) -> _Ball:
    """ctop + exp(wsh - top) Q."""
    inner = _Ball(es.ctop)
    if es.qman:
        q = _mpf_exact(es.qman, es.qexp)
        qb = _Ball(q, _up(abs(q) * es.qerr + _rnd(q)))
        inner = _b_add(inner, _b_mul(_b_exp(_b_add(_Ball(es.wsh), _Ball(es.top), sub=True)), qb))
    return inner


def _lse_ball(es: _ExpSum) -> _Ball:
    """log sum_j exp(F_j) = top + log(ctop + exp(wsh - top) Q)."""
    if es.special is not None:
        return _Ball(-_INF) if es.special == 0.0 else _Ball(es.special)
    return _b_add(_Ball(es.top), _b_log(_inner_ball(es)))


def _elem(ctx: _Ctx, v: Any, b: int, j: int) -> _Ball:
    if isinstance(v, np.ndarray):
        return _ball_of(float(v[b, j]))
    kind, args = v.kind, v.args
    if kind == "shift":
        return _b_add(_elem(ctx, args[0], b, j), _rowball(args[1], b), sub=True)
    if kind == "exp":
        return _b_exp(_elem(ctx, args[0], b, j))
    if kind == "mask":
        return _Ball(0) if j == int(args[1][b]) else _elem(ctx, args[0], b, j)
    if kind == "div":
        return _b_div(_elem(ctx, args[0], b, j), _rowball(args[1], b))
    if kind == "lsm":
        F = args[0]
        return _b_add(_ball_of(float(F[b, j])), _lse_ball(ctx.expsums(F)[b]), sub=True)
    if kind == "ew":
        op, ops = args
        vals = [_elem(ctx, o, b, j) if _is_vec(o) else _rowball(o, b) for o in ops]
        return _scalar_op(op, vals)
    raise AssertionError(kind)


def _lazy_sum(ctx: _Ctx, v: Any) -> list:
    B = ctx.B
    if isinstance(v, np.ndarray):
        return [_ball_of(s) if isinstance(s, Fraction) else _Ball(s) for s in ctx.exact_sums(v)]
    kind, args = v.kind, v.args
    k = None
    if kind == "mask":
        k = np.asarray(args[1], dtype=np.int64)
        inner = args[0]
        if isinstance(inner, np.ndarray):
            return [_ball_of(s) if isinstance(s, Fraction) else _Ball(s)
                    for s in ctx.exact_sums(inner, k)]
        v = inner
        kind, args = v.kind, v.args
    if kind == "div" and k is None:
        return [_b_div(s, _rowball(args[1], b)) for b, s in enumerate(_lazy_sum(ctx, args[0]))]
    if kind == "exp":
        g = args[0]
        if isinstance(g, np.ndarray):
            es = ctx.expsums(g, k)
            return [_expsum_ball(es[b]) for b in range(B)]
        if isinstance(g, _Lazy) and g.kind == "shift" and isinstance(g.args[0], np.ndarray):
            es = ctx.expsums(g.args[0], k)
            return [_expsum_ball(es[b], _rowball(g.args[1], b)) for b in range(B)]
    raise NotImplementedError(f"no exact reduction for a sum of a '{kind}' array; supported: "
                              "sums of computed arrays, of exp(F) and exp(F - c), masked or "
                              "divided by a per-row scalar")


def _scalar_op(op: str, v: list) -> _Ball:
    if op == "add":
        return _b_add(v[0], v[1])
    if op == "sub":
        return _b_add(v[0], v[1], sub=True)
    if op == "div":
        return _b_div(v[0], v[1])
    if op == "neg":
        return _b_neg(v[0])
    if op == "exp":
        return _b_exp(v[0])
    if op == "log":
        return _b_log(v[0])
    if op == "log1p":
        return _b_log(v[0], one_plus=True)
    if op == "cast":
        return v[0]
    raise NotImplementedError(f"op {op!r} has no exact scalar evaluation")


def _exact_step(ctx: _Ctx, s: Step, vals: list) -> Any:
    """The exact value of step ``s`` on the (exact or computed) values ``vals`` of its sources:
    a float64/int64 array, a :class:`_Lazy` (B, V) array, or a list of per-row balls."""
    op, B = s.op, ctx.B
    a = vals[0]
    if op == "cast":
        return a
    if op in ("max", "argmax"):
        if not isinstance(a, np.ndarray):
            raise NotImplementedError(f"{op} of an exact non-float array is not supported")
        with np.errstate(invalid="ignore"):
            return np.max(a, axis=-1) if op == "max" else np.argmax(a, axis=-1)
    if op in ("gather", "nll"):
        idx = np.asarray(vals[1], dtype=np.int64).reshape(-1)
        if isinstance(a, np.ndarray):
            g = np.take_along_axis(a, idx[:, None], axis=-1)[:, 0]
            return -g if op == "nll" else g
        got = [_elem(ctx, a, b, int(idx[b])) for b in range(B)]
        return [_b_neg(x) for x in got] if op == "nll" else got
    if op == "mask":
        idx = np.asarray(vals[1], dtype=np.int64).reshape(-1)
        if isinstance(a, np.ndarray):
            masked = a.copy()
            np.put_along_axis(masked, idx[:, None], 0.0, axis=-1)
            return masked
        return _Lazy("mask", a, idx)
    if op == "sum":
        if not _is_vec(a):
            raise NotImplementedError("sum of a per-row scalar")
        return _lazy_sum(ctx, a)
    if op == "log_softmax":
        if not isinstance(a, np.ndarray):
            raise NotImplementedError("log_softmax of an exact non-float array is not supported")
        return _Lazy("lsm", a)
    if any(_is_vec(v) for v in vals):
        if op == "sub" and isinstance(a, np.ndarray) and not _is_vec(vals[1]):
            return _Lazy("shift", a, vals[1])
        if op == "exp" and (isinstance(a, np.ndarray)
                            or (isinstance(a, _Lazy) and a.kind == "shift")):
            return _Lazy("exp", a)
        if op == "div" and not _is_vec(vals[1]):
            return _Lazy("div", a, vals[1])
        if op == "neg" and isinstance(a, np.ndarray):
            return -a
        return _Lazy("ew", op, tuple(vals))
    if op == "neg" and isinstance(a, np.ndarray):
        return -a
    cols = [_balls(v, B) for v in vals]
    return [_scalar_op(op, [c[b] for c in cols]) for b in range(B)]


def _final_values(v: Any, B: int) -> list[_Ball]:
    if isinstance(v, list):
        return v
    v = np.asarray(v)
    return [_ball_of(float(v.reshape(B, -1)[b, 0])) for b in range(B)]
