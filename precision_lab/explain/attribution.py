"""Per-step error attribution for the step-wise implementations, and the fused torch kernel
set beside the composites that could explain it.

What is measured (for each row of a batch, each step of an implementation's ``trace``):

* **local error** of the step: the step's op (:data:`precision_lab.implementations.OPS`) is
  recomputed EXACTLY (mpmath) on the step's COMPUTED inputs -- the arrays the step actually
  consumed -- and the computed output is compared with that exact value, in ULPs of the
  output's format (max over the row's elements), with whether it equals the correctly
  rounded exact value.  Exact ops (max, gather, mask, neg, nll) must show 0.  Flags:
  ``overflow`` (a finite input gave +-inf), ``underflow`` (a non-zero exact value came out 0
  or subnormal), ``nan`` (NaN from non-NaN inputs), ``cancellation`` (an add/sub whose exact
  result is 2**-k of its largest operand, k >= 8: k bits cancel).
* **contribution** of the step to the final error, by telescoping.  Let R_i be the loss
  obtained when steps 0..i-1 keep their COMPUTED outputs and steps i..N-1 are re-run
  EXACTLY (each on the values the re-run produces).  R_0 is the exact loss of the inputs,
  R_N the computed loss.  The contribution of step i is R_{i+1} - R_i: the change in the
  final result caused by rounding step i, given what the steps before it actually computed,
  with everything after it exact.  The contributions add up EXACTLY (up to the mpmath
  working precision) to the total error R_N - R_0, so "which step dominates" -- the largest
  |contribution| -- is a statement about a true decomposition, not a heuristic.  They are
  reported in ULPs of the exact loss in the format (signed), and as relative errors.
  Where a step overflows, its contribution is infinite and later ones are NaN; the first
  non-finite contribution then dominates.

The working precision adapts: the exact loss R_0 is computed at P and 2P bits and P is
raised (up to 16384 bits) until they agree to 2**-100 relative, because a confident row
needs about log2(lse / loss) extra bits to resolve ``lse - x_t``.  Rows are handled in a
vectorized way, but every exact value is an mpmath number: keep batches small (hundreds of
rows of V <= a few thousand).

Fused kernels (``torch``) cannot be traced.  :func:`compare_fused` computes the fused result
and a set of composites (:data:`COMPOSITES`), and reports the share of rows where the fused
kernel is bit-identical to each.  FIELD-NOTES 4 describes torch's CPU path as log_softmax
computed as ``x - max - logsum``, stored in the input dtype, then nll.  Reading the kernel
(``serial_vec_log_softmax_lastdim_range``) shows one more rounding that matters: for float16
and bfloat16 the per-row sum of exp is accumulated in float32 but kept in a buffer of the
INPUT dtype, and so is its log; only then is ``(x - max) - logsum`` computed in float32 and
rounded once.  ``cpu_lastdim_model`` follows that and is bit-identical to torch on every row
we tried for V = 10 and 1000 (float16 and bfloat16; at V = 100 one row in 1000 differs by
1 ULP: for V >= 16 torch sums in SIMD lanes, which the model does not copy).  The composite
that keeps sum and log in float32 ("rounded once") matches only 83-95% of rows.  For float32
and float64 no numpy composite is bit-identical, because torch's kernel uses SLEEF's
vectorized exp/log, which numpy does not; the shares are reported as measured.  The
composites model the structure of torch's code; they are not torch's code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import mpmath
import numpy as np

from precision_lab.implementations import OPS, REGISTRY, Step, get_implementation, pairwise_sum
from precision_lab.numerics.formats import (
    Format,
    get_format,
    round_float64_array,
    round_to,
    ulp_exponent,
)

__all__ = [
    "StepAttribution",
    "RowAttribution",
    "attribute",
    "exact_op",
    "dominant_summary",
    "COMPOSITES",
    "compare_fused",
]

_MP = np.dtype(object)


# --------------------------------------------------------------------------- exact ops

def _to_mp(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return a
    flat = a.astype(np.float64).ravel()  # exact: every format widens exactly into float64
    out = np.empty(flat.shape, dtype=_MP)
    for i, v in enumerate(flat):
        out[i] = mpmath.mpf(float(v))
    return out.reshape(a.shape)


def _safe_log(v):
    if mpmath.isnan(v) or v < 0:
        return mpmath.nan
    return mpmath.log(v)  # log(0) = -inf, log(inf) = inf


def _safe_log1p(v):
    if mpmath.isnan(v) or v < -1:
        return mpmath.nan
    if v == -1:
        return mpmath.ninf
    return mpmath.log1p(v)


def _safe_exp(v):
    return mpmath.nan if mpmath.isnan(v) else mpmath.exp(v)


_vexp = np.frompyfunc(_safe_exp, 1, 1)
_vlog = np.frompyfunc(_safe_log, 1, 1)
_vlog1p = np.frompyfunc(_safe_log1p, 1, 1)


def _safe_div(a, b):
    if mpmath.isnan(a) or mpmath.isnan(b):
        return mpmath.nan
    if b == 0:  # IEEE: x/0 = +-inf, 0/0 = NaN (mpmath would raise)
        return mpmath.nan if a == 0 else (mpmath.inf if a > 0 else mpmath.ninf)
    return a / b


_vdiv = np.frompyfunc(_safe_div, 2, 1)


def _row_sum(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(-1, a.shape[-1])
    out = np.empty(flat.shape[0], dtype=_MP)
    for i, row in enumerate(flat):
        vals = list(row)
        if any(mpmath.isnan(v) for v in vals):
            out[i] = mpmath.nan
        elif any(mpmath.isinf(v) for v in vals):
            pos = any(v == mpmath.inf for v in vals)
            neg = any(v == mpmath.ninf for v in vals)
            out[i] = mpmath.nan if (pos and neg) else (mpmath.inf if pos else mpmath.ninf)
        else:
            out[i] = mpmath.fsum(vals)
    return out.reshape(a.shape[:-1])


def _row_max(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(-1, a.shape[-1])
    out = np.empty(flat.shape[0], dtype=_MP)
    for i, row in enumerate(flat):
        vals = [v for v in row if not mpmath.isnan(v)]
        out[i] = max(vals) if vals else mpmath.nan
    return out.reshape(a.shape[:-1])


def _row_argmax(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(-1, a.shape[-1])
    out = np.empty(flat.shape[0], dtype=np.int64)
    for i, row in enumerate(flat):
        best, bi = None, 0
        for j, v in enumerate(row):
            if mpmath.isnan(v):  # numpy's argmax returns the first NaN
                bi = j
                break
            if best is None or v > best:
                best, bi = v, j
        out[i] = bi
    return out.reshape(a.shape[:-1])


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx).reshape(-1)
    return np.take_along_axis(a, idx[:, None], axis=-1)[:, 0]


def exact_op(op: str, inputs: "tuple[np.ndarray, ...]") -> np.ndarray:
    """The exact value of ``op`` (a key of OPS) on exact ``inputs`` (object arrays of mpmath
    numbers, or integer arrays), under the current mpmath working precision.

    "cast" returns its input (the rounding is the step's error).  "log_softmax" is
    in0 - log(sum exp(in0)) per row, "sum" a correctly rounded fsum at the working precision.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; allowed: {', '.join(OPS)}")
    a = inputs[0]
    if op == "cast":
        return a
    if op == "max":
        return _row_max(a)
    if op == "argmax":
        return _row_argmax(a)
    if op == "gather":
        return _take(a, inputs[1])
    if op == "mask":
        out = a.copy()
        np.put_along_axis(out, np.asarray(inputs[1]).reshape(-1)[:, None], mpmath.mpf(0), axis=-1)
        return out
    if op == "sub":
        return a - inputs[1]
    if op == "add":
        return a + inputs[1]
    if op == "div":
        return _vdiv(a, inputs[1]).astype(_MP)
    if op == "neg":
        return -a
    if op == "exp":
        return _vexp(a).astype(_MP)
    if op == "log":
        return _vlog(a).astype(_MP)
    if op == "log1p":
        return _vlog1p(a).astype(_MP)
    if op == "sum":
        return _row_sum(a)
    if op == "log_softmax":
        lse = _vlog(_row_sum(_vexp(a).astype(_MP))).astype(_MP)
        return a - lse.reshape(lse.shape + (1,))
    if op == "nll":
        return -_take(a, inputs[1])
    raise AssertionError(op)


# --------------------------------------------------------------------------- helpers

def _is_num(v) -> bool:
    return not (mpmath.isnan(v) or mpmath.isinf(v))


def _ulps(diff_abs, exact, f: Format) -> float:
    if not _is_num(exact):
        return math.nan
    return float(diff_abs / mpmath.ldexp(1, ulp_exponent(exact, f)))


def _fmt_of(a: np.ndarray) -> "Format | None":
    try:
        return get_format(np.asarray(a).dtype)
    except ValueError:
        return None


def _mpf_to_float(v) -> float:
    if mpmath.isnan(v):
        return math.nan
    if mpmath.isinf(v):
        return math.inf if v > 0 else -math.inf
    return float(v)


def _mp_str(v, digits: int = 17) -> str:
    if mpmath.isnan(v):
        return "nan"
    if mpmath.isinf(v):
        return "inf" if v > 0 else "-inf"
    return mpmath.nstr(v, digits)


# --------------------------------------------------------------------------- results

@dataclass
class StepAttribution:
    """One step of one row.

    Attributes:
        name, op, kind: the step ("rounded", "exact" or "composite", from OPS).
        value: the computed output for this row (a float, or a list for a vector step).
        local_ulp: max over the row's elements of |computed - exact op on computed inputs|
            in ULPs of the output's format (0 for exact ops; NaN where undefined).
        correctly_rounded: whether every element equals the correctly rounded exact value.
        flags: "overflow", "underflow", "nan", "cancellation: k bits".
        contribution_ulp: R_{i+1} - R_i in ULPs of the exact loss (signed; inf/NaN possible).
        contribution_rel: the same relative to the exact loss.
    """

    name: str
    op: str
    kind: str
    value: Any
    local_ulp: float
    correctly_rounded: bool
    flags: list[str]
    contribution_ulp: float
    contribution_rel: float


@dataclass
class RowAttribution:
    implementation: str
    format: str
    row: int
    computed: float
    exact: str             # the exact loss R_0, as a decimal string
    exact_float: float
    total_error_ulp: float  # (R_N - R_0) / ulp(R_0), signed
    steps: list[StepAttribution]
    dominant: str          # name of the step with the largest |contribution|
    dominant_share: float  # |contribution| / sum |contributions| (NaN if not finite)
    decisive: str          # first step from which on the accumulated error stays within
                           # half of the total error (or becomes non-finite for good)
    cancelling: bool       # contributions cancel: sum |contributions| > 2 |total error|
    precision_bits: int
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- the engine

def _reshape_like(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    v = np.asarray(v)
    if v.shape == like.shape:
        return v
    if v.size == like.size:
        return v.reshape(like.shape)
    return np.broadcast_to(v, like.shape)


def _replay(trace: list[Step], env0: dict[str, np.ndarray], start: int,
            computed_mp: list[np.ndarray]) -> np.ndarray:
    """Steps < start keep their computed outputs; steps >= start are re-run exactly."""
    env = dict(env0)
    for j, s in enumerate(trace):
        if j < start:
            env[s.name] = computed_mp[j]
            continue
        ins = tuple(_reshape_like(env[src], rec) for src, rec in zip(s.sources, s.inputs))
        env[s.name] = exact_op(s.op, ins)
    return env[trace[-1].name]


def attribute(implementation: str, logits: np.ndarray, targets: np.ndarray,
              fmt: "str | Format", *, max_prec: int = 16384) -> list[RowAttribution]:
    """Per-step attribution of one step-wise implementation on a batch (one entry per row).

    ``logits``: (B, V) array, ideally already of the format's dtype (otherwise the
    implementation's "cast" step rounds it and is attributed like any other step).
    """
    impl = get_implementation(implementation)
    if not impl.stepwise:
        raise ValueError(f"implementation {impl.key!r} is not step-wise (no trace); step-wise "
                         f"ones: {', '.join(k for k, v in REGISTRY.items() if v.stepwise)}; "
                         f"use compare_fused for the fused torch kernel")
    f = get_format(fmt)
    logits = np.asarray(logits)
    if logits.ndim == 1:
        logits = logits[None, :]
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    trace: list[Step] = []
    computed = impl(logits, targets, f, trace=trace)
    B = logits.shape[0]

    prec = 256
    while True:
        with mpmath.workprec(prec):
            env0 = {"logits": _to_mp(logits), "targets": targets}
            comp_mp = [_to_mp(s.output) for s in trace]
            r0 = _replay(trace, env0, 0, comp_mp)
        with mpmath.workprec(2 * prec):
            env0b = {"logits": _to_mp(logits), "targets": targets}
            r0b = _replay(trace, env0b, 0, [_to_mp(s.output) for s in trace])
        with mpmath.workprec(2 * prec):
            ok = True
            for a, b in zip(r0, r0b):
                if _is_num(b) and b != 0 and abs(a - b) > abs(b) * mpmath.ldexp(1, -100):
                    ok = False
                    break
        if ok or prec >= max_prec:
            break
        prec *= 4
    note = "" if ok else f"exact loss not resolved at {prec} bits"

    with mpmath.workprec(prec):
        env0 = {"logits": _to_mp(logits), "targets": targets}
        comp_mp = [_to_mp(s.output) for s in trace]
        R = [_replay(trace, env0, i, comp_mp) for i in range(len(trace))]
        R.append(comp_mp[-1])
        # local errors
        local: list[tuple[np.ndarray, np.ndarray, list[list[str]]]] = []
        for s, cm in zip(trace, comp_mp):
            ins_mp = tuple(_to_mp(a) for a in s.inputs)
            ex = exact_op(s.op, ins_mp)
            local.append(_local(s, ins_mp, ex, cm, B))
        rows: list[RowAttribution] = []
        for b in range(B):
            exact = R[0][b]
            if _is_num(exact):
                ulp0 = mpmath.ldexp(1, ulp_exponent(exact, f))
            else:
                ulp0 = None
            steps = []
            contribs = []
            for i, s in enumerate(trace):
                c = R[i + 1][b] - R[i][b]
                if ulp0 is None:
                    cu, cr = math.nan, math.nan
                else:
                    cu = _mpf_to_float(c / ulp0)
                    cr = _mpf_to_float(c / abs(exact)) if exact != 0 else math.nan
                contribs.append(cu)
                lu, crd, flags = local[i][0][b], local[i][1][b], local[i][2][b]
                steps.append(StepAttribution(s.name, s.op, OPS[s.op].split(":")[0], _row_value(s.output, b),
                                             float(lu), bool(crd), flags, cu, cr))
            tot = (_mpf_to_float((R[-1][b] - exact) / ulp0) if ulp0 is not None else math.nan)
            dom, share = _dominant(steps, contribs)
            cum = [_mpf_to_float((R[i][b] - exact) / ulp0) if ulp0 is not None else math.nan
                   for i in range(1, len(R))]
            dec = _decisive(steps, cum, tot)
            fin = [abs(c) for c in contribs if math.isfinite(c)]
            canc = bool(math.isfinite(tot) and len(fin) == len(contribs) and sum(fin) > 2 * abs(tot)
                        and sum(fin) > 1)
            rows.append(RowAttribution(impl.key, f.name, b, float(np.asarray(computed[b], np.float64)),
                                       _mp_str(exact, 20), _mpf_to_float(exact), tot, steps, dom, share,
                                       dec, canc, prec, note))
    return rows


def _row_value(out: np.ndarray, b: int) -> Any:
    v = np.asarray(out)
    if v.ndim == 0:
        return _jsonable(v)
    r = v[b] if v.shape[0] > b else v[0]
    r = np.asarray(r)
    if r.ndim == 0 or r.size == 1:
        return _jsonable(r.reshape(()))
    vals = [_jsonable(x) for x in r.ravel()[:16]]
    if r.size > 16:
        vals.append(f"... ({r.size} values)")
    return vals


def _jsonable(x: Any) -> Any:
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        return int(x)
    v = float(x.astype(np.float64))
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _local(s: Step, ins_mp, ex: np.ndarray, cm: np.ndarray, B: int):
    """Per row: (max local ULP error, all correctly rounded, flags)."""
    out = np.asarray(s.output)
    f = _fmt_of(out)
    ex_r = np.asarray(ex)
    cm_r = np.asarray(cm)
    # make (B, k) views
    def rows_of(a):
        a = np.asarray(a)
        if a.ndim == 0:
            return np.broadcast_to(a, (B, 1))
        return a.reshape(a.shape[0], -1) if a.shape[0] == B else np.broadcast_to(a.reshape(1, -1), (B, a.size))
    E, C = rows_of(ex_r), rows_of(cm_r)
    in_rows = [rows_of(a) for a in ins_mp if np.asarray(a).dtype == _MP]
    lu = np.zeros(B)
    crd = np.ones(B, dtype=bool)
    flags: list[list[str]] = [[] for _ in range(B)]
    if f is None:  # integer output (argmax)
        for b in range(B):
            if not np.array_equal(np.asarray(E[b], dtype=np.int64), np.asarray(C[b], dtype=np.int64)):
                lu[b], crd[b] = math.nan, False
                flags[b].append("mismatch")
        return lu, crd, flags
    small = mpmath.mpf(f.smallest_normal)
    for b in range(B):
        worst = 0.0
        in_nan = any(any(mpmath.isnan(v) for v in r[b]) for r in in_rows)
        in_inf = any(any(mpmath.isinf(v) for v in r[b]) for r in in_rows)
        for e, c in zip(E[b], C[b]):
            if mpmath.isnan(c) and not in_nan:
                if "nan" not in flags[b]:
                    flags[b].append("nan")
            if mpmath.isinf(c) and not in_inf and _is_num(e) and "overflow" not in flags[b]:
                flags[b].append("overflow")  # a finite exact value came out infinite
            if _is_num(e) and e != 0 and abs(e) < small and "underflow" not in flags[b]:
                flags[b].append("underflow")
            if _is_num(e) and _is_num(c):
                worst = max(worst, _ulps(abs(c - e), e, f))
                if c != round_to(e, f).astype(np.float64):
                    crd[b] = False
            elif mpmath.isnan(e) and mpmath.isnan(c):
                pass
            elif mpmath.isinf(e) and c == e:
                pass
            else:
                worst = math.inf if not (mpmath.isnan(c) or mpmath.isnan(e)) else math.nan
                crd[b] = False
        lu[b] = worst
        if s.op in ("add", "sub") and E[b].size == 1:  # per-row scalar steps only
            e = E[b][0]
            mags = [abs(v) for r in in_rows for v in r[b] if _is_num(v)]
            big = max(mags) if mags else 0
            if _is_num(e) and big > 0:
                if e == 0:
                    flags[b].append("cancellation: operands equal, result 0")
                else:
                    k = int(mpmath.floor(mpmath.log(big / abs(e), 2)))
                    if k >= 8:
                        flags[b].append(f"cancellation: result is 2^-{k} of the operands")
    return lu, crd, flags


def _decisive(steps: list[StepAttribution], cum: list[float], total: float) -> str:
    """First step i such that the accumulated error after every step j >= i is within half
    of the total (same sign), or non-finite when the total is."""
    if not math.isfinite(total):
        for i, s in enumerate(steps):
            if all(not math.isfinite(c) for c in cum[i:]):
                return s.name
        return ""
    if total == 0:
        return ""
    for i, s in enumerate(steps):
        if all(math.isfinite(c) and abs(c - total) <= 0.5 * abs(total) for c in cum[i:]):
            return s.name
    return steps[-1].name


def _dominant(steps: list[StepAttribution], contribs: list[float]) -> tuple[str, float]:
    """The step with the largest |contribution|; the first non-finite one if any."""
    finite = [(abs(c), s.name) for s, c in zip(steps, contribs) if math.isfinite(c)]
    nonfin = [s.name for s, c in zip(steps, contribs) if not math.isfinite(c)]
    if nonfin:
        return nonfin[0], math.nan
    if not finite:
        return "", math.nan
    tot = sum(a for a, _ in finite)
    a, name = max(finite, key=lambda p: p[0])
    if tot == 0:
        return "", 0.0
    return name, a / tot


def dominant_summary(rows: list[RowAttribution]) -> dict:
    """Across rows: for each step, in how many rows it dominates, and the mean |contribution|
    (ULPs of the loss, finite rows only); rows with no error at all count under "none"."""
    out: dict[str, Any] = {"rows": len(rows), "dominates": {}, "mean_abs_contribution_ulp": {}}
    if not rows:
        return out
    names = [s.name for s in rows[0].steps]
    for n in names + ["none"]:
        out["dominates"][n] = 0
    for r in rows:
        out["dominates"][r.dominant or "none"] = out["dominates"].get(r.dominant or "none", 0) + 1
    for i, n in enumerate(names):
        vals = [abs(r.steps[i].contribution_ulp) for r in rows
                if math.isfinite(r.steps[i].contribution_ulp)]
        out["mean_abs_contribution_ulp"][n] = float(np.mean(vals)) if vals else math.nan
    return out


# --------------------------------------------------------------------------- fused kernels

def _internal_dtype(f: Format, internal: str) -> np.dtype:
    if internal == "format":
        return f.np_dtype
    # "float32": float32 unless the format is wider
    return np.dtype(np.float64) if f.name == "float64" else np.dtype(np.float32)


def _seq_sum(e: np.ndarray) -> np.ndarray:
    """Left-to-right sum over the last axis in e's dtype (np.add.accumulate is sequential)."""
    return np.add.accumulate(e, axis=-1)[..., -1]


def _composite(order: str, internal: str, summation: str = "sequential",
               store_logsum: bool = False) -> Callable:
    """log_softmax then nll, as numpy arithmetic in ``internal`` precision.

    order: "x-m-logsum" computes (x - max) - logsum, "x-(m+logsum)" computes x - (max + logsum).
    store_logsum: round the sum to the format, take log (in internal precision) and round
    the log to the format before the last subtraction -- what a kernel that keeps its
    per-row sum in a buffer of the input dtype does."""
    def run(x: np.ndarray, t: np.ndarray, fmt: "str | Format") -> np.ndarray:
        f = get_format(fmt)
        dt = _internal_dtype(f, internal)
        xi = np.asarray(x).astype(np.float64).astype(dt) if dt != f.np_dtype else np.asarray(x)

        def to_f(a):  # round once to the format, back in the internal dtype
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
        return -_take(lp, np.asarray(t))
    return run


#: Composites set beside a fused kernel: name -> (description, callable(x, t, fmt)).
COMPOSITES: dict[str, tuple[str, Callable]] = {
    "cpu_lastdim_model": (
        "torch's CPU last-dim log_softmax as its source reads (LogSoftmaxKernelImpl.h, "
        "serial_vec_log_softmax_lastdim_range): max; sum of exp(x - max) accumulated in float32 "
        "and STORED in the input dtype; log of it in float32, stored in the input dtype; then "
        "(x - max) - logsum in float32, rounded once to the input dtype; then nll. numpy's "
        "exp/log stand in for torch's SLEEF ones",
        _composite("x-m-logsum", "float32", "sequential", store_logsum=True)),
    "logsumexp_f32_round_once": (
        "(x - max) - log(sum exp(x - max)) all in float32, rounded once to the format, then nll",
        _composite("x-m-logsum", "float32", "sequential")),
    "x_minus_(max+logsum)_f32": (
        "the other order, x - (max + logsum), in float32, rounded once to the format",
        _composite("x-(m+logsum)", "float32", "sequential")),
    "logsumexp_format_arith": (
        "(x - max) - logsum with every operation rounded to the format (pairwise sum)",
        _composite("x-m-logsum", "format", "pairwise")),
    "torch_logsoftmax_nll": ("registry: F.nll_loss(F.log_softmax(x))",
                             lambda x, t, fmt: REGISTRY["torch_logsoftmax_nll"](x, t, fmt)),
    "lse": ("registry: (max + log(sum exp(x - max))) - x_t in the format",
            lambda x, t, fmt: REGISTRY["lse"](x, t, fmt)),
    "lse_log1p": ("registry: BHH (max - x_t) + log1p(...)",
                  lambda x, t, fmt: REGISTRY["lse_log1p"](x, t, fmt)),
}


def compare_fused(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
                  fused: str = "torch", reference: "np.ndarray | None" = None) -> dict:
    """Share of rows where the fused kernel's loss is bit-identical to each composite.

    Returns {"fused", "format", "rows", "composites": [{"name", "description",
    "identical", "rate", "max_ulp_distance"}...] (most identical first), "best"}; with
    ``reference`` (correctly rounded losses) also a "correctly rounded" entry."""
    from precision_lab.numerics.metrics import ulp_distance

    f = get_format(fmt)
    x = np.asarray(logits)
    if x.dtype != f.np_dtype:
        x = round_float64_array(x.astype(np.float64), f)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    got = get_implementation(fused)(x, t, f)
    cands = {k: v for k, v in COMPOSITES.items()}
    results = []
    gb = got.astype(f.np_dtype)
    for name, (desc, fn) in cands.items():
        val = np.asarray(fn(x, t, f)).astype(f.np_dtype)
        same = (gb.view(f.uint_dtype) == val.view(f.uint_dtype)) | (
            np.isnan(gb.astype(np.float64)) & np.isnan(val.astype(np.float64)))
        # +0 and -0 count as identical values here (nll of 0 gives -0)
        same |= (gb.astype(np.float64) == 0) & (val.astype(np.float64) == 0)
        d = ulp_distance(gb, val, f)
        dd = d[d != np.iinfo(np.uint64).max]
        results.append({"name": name, "description": desc, "identical": int(same.sum()),
                        "rate": float(same.mean()) if same.size else math.nan,
                        "max_ulp_distance": int(dd.max()) if dd.size else 0})
    if reference is not None:
        ref = np.asarray(reference).astype(f.np_dtype)
        same = (gb.astype(np.float64) == ref.astype(np.float64)) | (
            np.isnan(gb.astype(np.float64)) & np.isnan(ref.astype(np.float64)))
        d = ulp_distance(gb, ref, f)
        dd = d[d != np.iinfo(np.uint64).max]
        results.append({"name": "correctly rounded", "description": "the reference",
                        "identical": int(same.sum()), "rate": float(same.mean()),
                        "max_ulp_distance": int(dd.max()) if dd.size else 0})
    results.sort(key=lambda r: -r["rate"])
    return {"fused": fused, "format": f.name, "rows": int(t.size), "composites": results,
            "best": results[0]["name"] if results else None}
