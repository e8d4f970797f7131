"""The LLM-scale algorithms: kernels that never form the whole softmax, in numpy or torch.

Each one is written from its published form, with the arithmetic made explicit: every
operation is carried out in a *working format* W and rounded once to it (numpy's float16 and
ml_dtypes' bfloat16 ufuncs are correctly rounded per operation, see
:mod:`precision_lab.implementations.base`), sums inside a block use the fixed pairwise tree
of :func:`~precision_lab.numerics.sums.pairwise_sum` (a stand-in for a GPU's tree reduction
``tl.sum``), and the loss is rounded once from W to the format at the end.  The parameter
``acc`` chooses W: ``"format"`` (the logits' own format: every step in bfloat16 for bfloat16
logits), ``"float32"`` (float16/bfloat16 logits upcast exactly; float32 and float64 logits
stay in their format) or ``"float64"``.  Each default is the published kernel's: float32 for
Liger (it casts every block to float32), Cut Cross-Entropy (float32 accumulators) and
Megatron (``.float()``); the format for the online softmax, whose paper fixes none.  With
``acc=format`` the same steps run in the format, which isolates the algorithm's own error.

==================  =====================================================================
``online_softmax``  Milakov & Gimelshein (2018), Algorithm 3: one pass, m_j = max(m_{j-1},
                    x_j), d_j = d_{j-1} exp(m_{j-1} - m_j) + exp(x_j - m_j); loss
                    (m + log d) - x_t.  ``order``: "sequential" (the algorithm as printed,
                    left to right) or "pairwise" (the paper's parallel form: the same
                    (m, d) pairs merged by its associative operator in a pairwise tree).
``chunked``         Liger-Kernel's cross-entropy: the vocabulary in blocks of
                    ``chunk_size`` columns (Liger: min(32768, next_pow2(V))); per block
                    m_new = max(m, max(X)), d = d exp(m - m_new) + sum(exp(X - m_new)),
                    the block sum a tree; ``exp``: "exp2" (current Liger: exp2((X - m)
                    log2 e), one more rounding) or "exp".  Gradient in the same pass.
``kahan``           blockwise log-sum-exp with compensated accumulation (Cut Cross-Entropy's
                    blocks of ``block`` columns and its TwoSum update s, c = 2sum(s, c + v));
                    per block b: m_b, s_b = sum(exp(X - m_b)); the running (s, c) is rescaled
                    by exp(m - m_new) when the maximum rises and gains v = s_b exp(m_b -
                    m_new) through the TwoSum; lse = m + log(s + c).
``vocab_parallel``  Megatron-LM's vocab-parallel cross-entropy over a simulated tensor-
                    parallel ``degree`` (torch ops): the vocabulary split in ``degree`` equal
                    contiguous shards, logits upcast (``acc``), all-reduce MAX of the shard
                    maxima, each shard subtracts the max and exponentiates, all-reduce SUM of
                    the target logit and of the shards' exp-sums (in rank order), loss
                    log(sum) - (x_t - max).  Gradient (softmax minus one-hot) as Megatron's.
``fp32_accum``      max-shifted log-sum-exp with float32 accumulation of float16/bfloat16
                    logits: ``upcast`` "all" (x upcast, every step in float32, one rounding
                    at the end: Megatron's and Unsloth's practice) or "sum" (only the
                    accumulator: exp in the format, the pairwise sum of the upcast terms in
                    float32, rounded once to the format, then log, add, sub in the format).
==================  =====================================================================

Fused linear cross-entropy (:func:`fused_linear`, not a logits implementation: it takes
``hidden`` (B, K) and ``weight`` (V, K)) is listed in :data:`LINEAR_IMPLEMENTATIONS`.

Parameters are given in the registry key: ``"chunked(chunk_size=4096, acc=format)"``;
:func:`resolve` parses a key, checks every parameter (one message naming the bad one and the
allowed values) and returns an :class:`~precision_lab.implementations.base.Implementation`
whose key is the canonical form (parameters at their defaults left out, the others in
declaration order: ``"chunked(chunk_size=4096)"``); the bare key means every default.

Loss keywords (every kernel here; the definitions of
:mod:`precision_lab.numerics.semantics`, assembled the way Liger's kernel does):
``ignore_index`` (that row's loss 0), ``label_smoothing`` eps (Liger:
loss (1 - eps) + (sum_j (-eps/V) y_j + eps lse), the x-sum per block for ``chunked``, one
pairwise sum otherwise; ``vocab_parallel`` uses Megatron's form, see its docstring),
``z_loss`` z (loss + (z lse) lse, PaLM) and ``softcap`` c (y = c tanh(x / c) before
everything, Gemma 2).  Constants are rounded once into W.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from precision_lab.implementations.base import Capabilities, Implementation, Recorder, prepare
from precision_lab.numerics.formats import FORMATS, Format, get_format, round_float64_array
from precision_lab.numerics.sums import pairwise_sum

__all__ = ["Param", "Family", "FAMILIES", "resolve", "canonical_key", "parse_key",
           "LLM_IMPLEMENTATIONS", "LINEAR_IMPLEMENTATIONS", "LinearImplementation",
           "LOSS_KEYWORDS", "GRADIENTS", "online_softmax", "chunked", "chunked_grad", "kahan",
           "vocab_parallel", "vocab_parallel_grad", "fp32_accum", "fused_linear",
           "linear_torch", "as_tensor"]

ACC_CHOICES = ("format", "float32", "float64")
_LOG2_E = 1.4426950408889634  # the float64 constant Liger passes as a float32 constexpr


# ---------------------------------------------------------------------------------------
# parameters in registry keys

@dataclass(frozen=True)
class Param:
    """One parameter of a parameterized implementation.

    Attributes:
        name: the keyword in the key, ``chunked(chunk_size=...)``.
        default: the value of the bare key.
        kind: ``int`` or ``str``.
        choices: the allowed strings (``kind is str``), or None.
        minimum: the smallest allowed integer (``kind is int``), or None.
        doc: one line.
    """

    name: str
    default: Any
    kind: type = str
    choices: "tuple[str, ...] | None" = None
    minimum: "int | None" = None
    doc: str = ""

    def check(self, family: str, raw: str) -> Any:
        """The value of ``raw`` (text from a key), or ValueError naming it and what is allowed."""
        where = f"implementation {family!r}: parameter {self.name}={raw!r}"
        if self.kind is int:
            try:
                v = int(raw)
            except ValueError:
                raise ValueError(f"{where} is not an integer ({self.doc})") from None
            if self.minimum is not None and v < self.minimum:
                raise ValueError(f"{where}: must be >= {self.minimum} ({self.doc})")
            return v
        if self.choices is not None and raw not in self.choices:
            raise ValueError(f"{where}: allowed {', '.join(self.choices)}")
        return raw


@dataclass(frozen=True)
class Family:
    """A parameterized implementation: its parameters and how to build it."""

    name: str
    params: tuple[Param, ...]
    build: Callable[[str, dict[str, Any]], Implementation]
    description: str

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*\Z", re.S)
_ARG = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([A-Za-z0-9_.+\-]+)\s*\Z")


def parse_key(text: str) -> tuple[str, dict[str, str]]:
    """Split ``"name(a=1, b=x)"`` into ("name", {"a": "1", "b": "x"}); ``"name"`` -> no
    parameters.  Raises ValueError naming the malformed part."""
    m = _KEY.match(text)
    if m is None:
        raise ValueError(f"malformed implementation key {text!r}; expected name or "
                         "name(param=value, ...), e.g. 'chunked(chunk_size=4096)'")
    name, inner = m.group(1), m.group(2)
    args: dict[str, str] = {}
    if inner is not None and inner.strip():
        for part in inner.split(","):
            a = _ARG.match(part)
            if a is None:
                raise ValueError(f"implementation key {text!r}: malformed parameter "
                                 f"{part.strip()!r}; expected param=value")
            if a.group(1) in args:
                raise ValueError(f"implementation key {text!r}: parameter {a.group(1)!r} "
                                 "given twice")
            args[a.group(1)] = a.group(2)
    return name, args


def canonical_key(family: Family, values: dict[str, Any]) -> str:
    """``name`` when every parameter is at its default, else ``name(p=v, ...)`` listing the
    others in declaration order."""
    parts = [f"{p.name}={values[p.name]}" for p in family.params
             if values[p.name] != p.default]
    return family.name + (f"({', '.join(parts)})" if parts else "")


def resolve(text: str) -> "Implementation | None":
    """The implementation a parameterized key names, or None if ``text``'s name is not a
    family here (so a caller can go on to other lookups).

    Raises:
        ValueError: an unknown parameter or a bad value (the message names it and lists the
            allowed parameters or values).
    """
    if not isinstance(text, str):
        return None
    try:
        name, args = parse_key(text)
    except ValueError:
        if text.split("(")[0].strip() in FAMILIES:
            raise
        return None
    fam = FAMILIES.get(name)
    if fam is None:
        return None
    return _build(name, tuple(sorted(_values(fam, args).items())))


def _values(fam: Family, args: dict[str, str]) -> dict[str, Any]:
    """Every parameter's value: the defaults, overridden by the checked ``args``."""
    values = fam.defaults()
    by_name = {p.name: p for p in fam.params}
    for k, raw in args.items():
        if k not in by_name:
            allowed = ", ".join(p.name for p in fam.params) or "none"
            raise ValueError(f"implementation {fam.name!r} has no parameter {k!r}; its "
                             f"parameters: {allowed}")
        values[k] = by_name[k].check(fam.name, raw)
    return values


@functools.lru_cache(maxsize=None)
def _build(name: str, items: tuple) -> Implementation:
    """The implementation of family ``name`` with parameter values ``items``; its
    capabilities declare the loss keywords the family takes and, where the published kernel
    computes one, its gradient (bound to the same parameters)."""
    fam = FAMILIES[name]
    values = dict(items)
    impl = fam.build(canonical_key(fam, values), values)
    grad = GRADIENTS.get(name)
    caps = dataclasses.replace(impl.capabilities, keywords=LOSS_KEYWORDS[name],
                               gradient=grad is not None)
    return dataclasses.replace(impl, capabilities=caps,
                               grad_function=(functools.partial(grad, **values)
                                              if grad is not None else None))


# ---------------------------------------------------------------------------------------
# shared pieces: inputs, working format, the loss assembled from (m, d)

def _work(f: Format, acc: str) -> Format:
    """The working format: the format itself, or a wider one (never a narrower one)."""
    if acc == "format":
        return f
    w = FORMATS[acc]
    return w if w.precision > f.precision else f


def _const(v: float, w: Format) -> np.ndarray:
    """The real number v (given as float64) rounded once into w, as a 0-d array."""
    return round_float64_array(np.asarray(v, dtype=np.float64), w)


def _to_format(a: np.ndarray, f: Format) -> np.ndarray:
    """Round the working-format values once into f (exact widening first)."""
    a = np.asarray(a)
    if a.dtype == f.np_dtype:
        return a
    return round_float64_array(a.astype(np.float64), f)


@dataclass
class _Rows:
    """Validated inputs in the working format."""

    y: np.ndarray        # (B, V) logits in W after softcap (a view of the input when possible)
    tanh: "np.ndarray | None"  # tanh(x / c) where softcap is set (for gradients)
    t: np.ndarray        # (B,) targets, ignored rows mapped to 0
    valid: np.ndarray    # (B,) bool
    yt: np.ndarray       # (B,) y at the target
    f: Format
    w: Format
    V: int


def _validate_keywords(ignore_index: int, label_smoothing: float, z_loss: float,
                       softcap: "float | None") -> None:
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
    if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if not (isinstance(z_loss, (int, float)) and math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and
                                    math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")


def _inputs(logits, targets, fmt, acc: str, ignore_index: int = -100,
            softcap: "float | None" = None) -> _Rows:
    """Validate; round the logits once into the format (if of another dtype), widen them
    exactly into the working format, soft-cap them there."""
    x, t_raw, f = _logits_targets(logits, targets, fmt, ignore_index)
    w = _work(f, acc)
    valid = t_raw != ignore_index
    t = np.where(valid, t_raw, 0)
    y = x if x.dtype == w.np_dtype else x.astype(w.np_dtype)  # exact widening
    th = None
    if softcap is not None:
        c = _const(softcap, w)
        with np.errstate(all="ignore"):
            th = np.tanh(y / c)
            y = c * th
    yt = np.take_along_axis(y, t[:, None], axis=-1)[:, 0]
    return _Rows(y, th, t, valid, yt, f, w, x.shape[1])


def _logits_targets(logits, targets, fmt, ignore_index: int):
    """(x in the format, int64 targets, format); targets may equal ignore_index."""
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be 2-D (B, V) with V >= 1, got shape {logits.shape}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {targets.shape}")
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
    t = targets.astype(np.int64)
    V = logits.shape[1]
    bad = np.flatnonzero((t != ignore_index) & ((t < 0) | (t >= V)))
    if bad.size:
        raise ValueError(f"row {int(bad[0])}: target {int(t[bad[0]])} is out of range "
                         f"[0, {V}) and not ignore_index ({ignore_index})")
    safe = np.where(t == ignore_index, 0, t)
    x, _, f, _ = prepare(logits, safe, fmt, Recorder(None))
    return x, t, f


def _assemble(R: _Rows, lse: np.ndarray, label_smoothing: float, z_loss: float,
              xsum: "np.ndarray | None" = None) -> np.ndarray:
    """Liger's loss from lse (all in W), rounded once into the format; ignored rows 0.

    ``xsum``: sum_j (-eps/V) y_j already accumulated the algorithm's way (else one
    pairwise sum over the row)."""
    w = R.w
    with np.errstate(all="ignore"):
        loss = lse - R.yt
        if label_smoothing > 0:
            ls = _const(label_smoothing, w)
            if xsum is None:
                xsum = pairwise_sum(_const(-label_smoothing / R.V, w) * R.y)
            smooth = xsum + ls * lse
            loss = loss * (_const(1.0, w) - ls) + smooth
        if z_loss > 0:
            loss = loss + (_const(z_loss, w) * lse) * lse
        loss = np.where(R.valid, loss, w.np_dtype.type(0))
    return _to_format(loss, R.f)


def _exp(a: np.ndarray, kind: str, w: Format) -> np.ndarray:
    """exp(a) in w: "exp" one correctly rounded-ish exp; "exp2" exp2(a * log2 e), the
    product rounded first (Liger's hardware-exp2 form)."""
    if kind == "exp2":
        return np.exp2(a * _const(_LOG2_E, w))
    return np.exp(a)


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
    loss = (m + log d) - x_t; see the module docstring.  Returns (B,) losses, fmt's dtype."""
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
    max and sum; lse = m + log d; loss = lse - x_t (module docstring).  (B,) fmt's dtype."""
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
    """Blockwise lse with compensated accumulation across blocks (module docstring); with
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
    """Max-shifted lse with float32 accumulation (module docstring).  "all": every step in
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


# ---------------------------------------------------------------------------------------
# vocab_parallel (Megatron-LM), torch ops

def as_tensor(a: np.ndarray, device: str = "cpu"):  # -> torch.Tensor
    """A torch tensor with ``a``'s values AND strides (a transposed or strided view stays
    one; ml_dtypes.bfloat16 becomes torch.bfloat16).  On another device the same strides
    are allocated there (``torch.empty_strided``) and the values copied in."""
    import torch

    a = np.asarray(a)
    if a.dtype == get_format("bfloat16").np_dtype:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    if device == "cpu":
        return t
    out = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)
    out.copy_(t)
    return out


def _from_tensor(t, f: Format) -> np.ndarray:
    """Round a torch tensor's values once into f (exact widening to float64 first)."""
    a = t.detach().cpu().double().numpy()
    return np.asarray(round_float64_array(a, f))  # a 0-d result stays an array


def _shards(V: int, degree: int) -> list[tuple[int, int]]:
    """Contiguous column ranges of ``degree`` shards: V / degree each when it divides (as
    Megatron, which pads the vocabulary so that it does), else sizes differing by one (the
    first V mod degree shards one longer); empty shards (degree > V) are left out."""
    base, extra = divmod(V, degree)
    out, a = [], 0
    for r in range(degree):
        b = a + base + (1 if r < extra else 0)
        if b > a:
            out.append((a, b))
        a = b
    return out


def _vp_forward(logits, targets, fmt, degree, acc, device, ignore_index, softcap):
    import torch

    x, t_raw, f = _logits_targets(logits, targets, fmt, ignore_index)
    w = _work(f, acc)
    wdt = getattr(torch, w.torch_dtype_name)
    B, V = x.shape
    valid = t_raw != ignore_index
    X = as_tensor(x, device)
    T = torch.from_numpy(np.where(valid, t_raw, 0)).to(device)
    parts = []
    for a, b in _shards(V, degree):
        xr = X[:, a:b].to(wdt)  # Megatron: vocab_parallel_logits.float()
        if softcap is not None:
            c = float(_const(softcap, w))
            xr = c * torch.tanh(xr / c)
        parts.append(xr)
    logits_max = parts[0].max(dim=-1)[0]
    for xr in parts[1:]:  # all-reduce MAX: exact
        logits_max = torch.maximum(logits_max, xr.max(dim=-1)[0])
    predicted = torch.zeros(B, dtype=wdt, device=X.device)
    sum_exp = torch.zeros(B, dtype=wdt, device=X.device)
    exps = []
    rows = torch.arange(B, device=X.device)
    for r, (a, b) in enumerate(_shards(V, degree)):
        xr = parts[r] - logits_max[:, None]
        outside = (T < a) | (T >= b)
        mt = torch.where(outside, torch.zeros_like(T), T - a)
        pr = xr[rows, mt].clone()
        pr[outside] = 0.0
        er = torch.exp(xr)
        predicted = predicted + pr  # all-reduce SUM in rank order (one nonzero term: exact)
        sum_exp = sum_exp + er.sum(dim=-1)  # all-reduce SUM in rank order
        exps.append(er)
    return x, f, w, wdt, valid, T, parts, logits_max, predicted, sum_exp, exps


def vocab_parallel(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                   degree: int = 8, acc: str = "float32", device: str = "cpu",
                   ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                   softcap: "float | None" = None) -> np.ndarray:
    """Megatron-LM's vocab-parallel cross-entropy simulated over ``degree`` shards.

    loss = log(sum_exp) - (x_t - max), in W (float32 by default: Megatron upcasts), rounded
    once into the format.  Label smoothing eps in Megatron's published arithmetic: the
    normalised softmax exp / sum_exp per shard, log_probs = log(softmax) (an underflowed
    probability gives log 0 = -inf and an infinite loss, as in Megatron), their mean over
    the whole vocabulary (the shards' sums all-reduced, / V), loss = (1 - s) loss - s mean
    with s = eps: torch's definition (Megatron scales its argument by V / (V - 1) to mean
    the same s; and its published code averaged over the local shard only, a semantic bug
    not reproduced).  z_loss: + (z lse) lse with lse = max + log(sum_exp); softcap on the
    upcast logits; ignored rows 0.  (B,) fmt's dtype.
    """
    import torch

    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    with torch.no_grad():
        (x, f, w, wdt, valid, T, parts, mx, predicted, sum_exp,
         exps) = _vp_forward(logits, targets, fmt, degree, acc, device, ignore_index, softcap)
        loss = torch.log(sum_exp) - predicted
        if label_smoothing > 0:
            s = float(_const(label_smoothing, w))
            tot = torch.zeros_like(sum_exp)
            for er in exps:
                tot = tot + torch.log(er / sum_exp[:, None]).sum(dim=-1)
            mean_log_probs = tot / float(x.shape[1])
            loss = (1.0 - s) * loss - s * mean_log_probs
        if z_loss > 0:
            lse = mx + torch.log(sum_exp)
            loss = loss + (float(_const(z_loss, w)) * lse) * lse
        loss = torch.where(torch.from_numpy(valid).to(loss.device), loss,
                           torch.zeros_like(loss))
    return _from_tensor(loss, f)


def vocab_parallel_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                        reduction: str = "none", degree: int = 8, acc: str = "float32",
                        device: str = "cpu", ignore_index: int = -100,
                        label_smoothing: float = 0.0, z_loss: float = 0.0,
                        softcap: "float | None" = None) -> np.ndarray:
    """Megatron's backward: softmax = exp / sum_exp (stored by the forward), minus
    (1 - s) at the target, minus s / V everywhere with label smoothing, times
    (1 + (2 z) lse) with z-loss (before the subtractions), "mean" / N, softcap
    (1 - tanh^2); in W, rounded once into the format (autograd casts the float32 gradient
    to the logits' dtype).  (B, V) fmt's dtype."""
    import torch

    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")
    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    with torch.no_grad():
        (x, f, w, wdt, valid, T, parts, mx, predicted, sum_exp,
         exps) = _vp_forward(logits, targets, fmt, degree, acc, device, ignore_index, softcap)
        B, V = x.shape
        soft = torch.cat([er / sum_exp[:, None] for er in exps], dim=1)
        if z_loss > 0:
            lse = mx + torch.log(sum_exp)
            soft = soft + (float(_const(2 * z_loss, w)) * lse)[:, None] * soft
        s = float(_const(label_smoothing, w))
        rows = torch.arange(B, device=soft.device)
        soft[rows, T] -= float(_const(1.0 - label_smoothing, w))
        if label_smoothing > 0:
            soft -= float(_const(label_smoothing / V, w))
            del s
        if reduction == "mean":
            soft = soft / float(valid.sum())
        if softcap is not None:
            xw = as_tensor(x, device).to(wdt)
            th = torch.tanh(xw / float(_const(softcap, w)))
            soft = soft * (1.0 - th * th)
        soft[torch.from_numpy(~valid).to(soft.device)] = 0.0
    return _from_tensor(soft, f)


# ---------------------------------------------------------------------------------------
# fused linear cross-entropy

@dataclass(frozen=True)
class LinearImplementation:
    """A cross-entropy of hidden states and a classifier: ``impl(hidden, weight, targets,
    fmt)`` -> (B,) losses of fmt's dtype, the logits hidden @ weight.T never stored whole.

    Attributes:
        key: canonical key.
        function: ``(hidden (B, K), weight (V, K), targets (B,), fmt, **keywords)``.
        description: one line.
        capabilities: as for logits implementations (devices).
    """

    key: str
    function: Callable[..., np.ndarray]
    description: str
    capabilities: Capabilities = Capabilities()

    def __call__(self, hidden: np.ndarray, weight: np.ndarray, targets: np.ndarray,
                 fmt: "str | Format", *, device: str = "cpu", **keywords) -> np.ndarray:
        f = get_format(fmt)
        if device != "cpu":
            if device.split(":")[0] not in self.capabilities.devices:
                raise TypeError(f"implementation {self.key!r} runs on "
                                f"{', '.join(self.capabilities.devices)}, not {device!r}")
            keywords["device"] = device
        out = self.function(hidden, weight, targets, f, **keywords)
        if not isinstance(out, np.ndarray) or out.dtype != f.np_dtype or \
                out.shape != (np.shape(hidden)[0],):
            raise TypeError(f"implementation {self.key!r} returned a wrong array")
        return out


def _linear_inputs(hidden, weight, fmt):
    from precision_lab.numerics.formats import to_format

    f = get_format(fmt)
    h = np.asarray(hidden)
    wt = np.asarray(weight)
    if h.ndim != 2 or wt.ndim != 2 or h.shape[1] != wt.shape[1]:
        raise ValueError(f"hidden must be (B, K) and weight (V, K) with the same K, got "
                         f"{h.shape} and {wt.shape}")
    if h.dtype != f.np_dtype:
        h = to_format(h, f)
    if wt.dtype != f.np_dtype:
        wt = to_format(wt, f)
    return h, wt, f


def fused_linear(hidden: np.ndarray, weight: np.ndarray, targets: np.ndarray,
                 fmt: "str | Format", *, chunk: int = 32768, logits: str = "format",
                 acc: str = "float32", exp: str = "exp2", device: str = "cpu",
                 ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: "float | None" = None) -> np.ndarray:
    """Fused linear cross-entropy: for each block of ``chunk`` vocabulary rows of ``weight``
    the logits Z = hidden @ W_block.T by torch's matmul, then Liger's running max and sum
    over the blocks (``chunked``'s update, in ``acc``).

    ``logits``: "format" -- the matmul in the format (torch accumulates in float32 inside
    and rounds Z to the format, as Liger's ``_input_chunk @ weight.t()``); "float32" -- the
    float32 product of the upcast operands kept unrounded (Cut Cross-Entropy's float32
    accumulator).  The target logit is read from its block.  Defaults reproduce Liger's
    numerics (its token chunking does not change a row's arithmetic).  (B,) fmt's dtype.
    """
    import torch

    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    h, wt, f = _linear_inputs(hidden, weight, fmt)
    B, K = h.shape
    V = wt.shape[0]
    t_raw = np.asarray(targets).astype(np.int64)
    if t_raw.shape != (B,):
        raise ValueError(f"targets must have shape ({B},), got {t_raw.shape}")
    valid = t_raw != ignore_index
    if np.any(valid & ((t_raw < 0) | (t_raw >= V))):
        raise ValueError(f"targets must lie in [0, {V}) or equal ignore_index")
    t = np.where(valid, t_raw, 0)
    w = _work(f, acc)
    H = as_tensor(h, device)
    Wt = as_tensor(wt, device)
    if logits == "float32":
        H = H.float()
    m = np.full(B, -np.inf, dtype=w.np_dtype)
    d = np.zeros(B, dtype=w.np_dtype)
    yt = np.zeros(B, dtype=w.np_dtype)
    xsum = np.zeros(B, dtype=w.np_dtype) if label_smoothing > 0 else None
    eps_x = _const(-label_smoothing / V, w)
    c = _const(softcap, w) if softcap is not None else None
    with torch.no_grad(), np.errstate(all="ignore"):
        for a in range(0, V, chunk):
            Wb = Wt[a:a + chunk]
            Z = H @ (Wb.float() if logits == "float32" else Wb).T
            z = Z.cpu().numpy() if logits == "float32" else _from_tensor(Z, f)
            X = z.astype(w.np_dtype) if z.dtype != w.np_dtype else z
            if c is not None:
                X = c * np.tanh(X / c)
            inside = (t >= a) & (t < a + X.shape[1])
            if inside.any():
                rows = np.flatnonzero(inside)
                yt[rows] = X[rows, t[rows] - a]
            m_new = np.maximum(m, X.max(axis=1))
            if xsum is not None:
                xsum = xsum + pairwise_sum(eps_x * X)
            d = d * _exp(m - m_new, exp, w) + pairwise_sum(_exp(X - m_new[:, None], exp, w))
            m = m_new
        lse = m + np.log(d)
    R = _Rows(np.zeros((B, 0), w.np_dtype), None, t, valid, yt, f, w, V)
    return _assemble(R, lse, label_smoothing, z_loss, xsum)


def linear_torch(hidden: np.ndarray, weight: np.ndarray, targets: np.ndarray,
                 fmt: "str | Format", *, device: str = "cpu", ignore_index: int = -100,
                 label_smoothing: float = 0.0) -> np.ndarray:
    """The unfused baseline: logits = hidden @ weight.T by torch's matmul in the format
    (stored whole), then F.cross_entropy(reduction="none").  (B,) fmt's dtype."""
    import torch
    import torch.nn.functional as F

    h, wt, f = _linear_inputs(hidden, weight, fmt)
    T = torch.from_numpy(np.asarray(targets).astype(np.int64)).to(device)
    with torch.no_grad():
        Z = as_tensor(h, device) @ as_tensor(wt, device).T
        out = F.cross_entropy(Z, T, reduction="none", ignore_index=ignore_index,
                              label_smoothing=label_smoothing)
    return _from_tensor(out, f)


# ---------------------------------------------------------------------------------------
# families and registry entries

_ACC = Param("acc", "format", str, ACC_CHOICES, doc="working format of every step")
_ACC32 = Param("acc", "float32", str, ACC_CHOICES, doc="working format of every step")


def _numpy_impl(fn, desc: str):
    def build(key: str, values: dict[str, Any]) -> Implementation:
        return Implementation(key, functools.partial(fn, **values), desc, Capabilities())
    return build


def _torch_impl(fn, desc: str):
    def build(key: str, values: dict[str, Any]) -> Implementation:
        return Implementation(key, functools.partial(fn, **values), desc,
                              Capabilities(devices=("cpu", "cuda")))
    return build


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("online_softmax", (
        Param("order", "sequential", str, ("sequential", "pairwise"),
              doc="Algorithm 3 left to right, or its (m, d) operator in a pairwise tree"),
        _ACC),
        _numpy_impl(online_softmax, "online softmax (Milakov & Gimelshein 2018): running max "
                    "and rescaled sum in one pass"),
        "online softmax"),
    Family("chunked", (
        Param("chunk_size", 32768, int, minimum=1, doc="vocabulary columns per block"),
        _ACC32,
        Param("exp", "exp2", str, ("exp2", "exp"), doc="exp2(y log2 e) as current Liger, or exp")),
        _numpy_impl(chunked, "Liger-Kernel: vocabulary blocks with a running max and sum"),
        "Liger chunks"),
    Family("kahan", (
        Param("block", 256, int, minimum=1, doc="vocabulary columns per block"),
        _ACC32,
        Param("compensate", "on", str, ("on", "off"), doc="TwoSum compensation across blocks")),
        _numpy_impl(kahan, "blockwise lse, block sums accumulated with TwoSum compensation "
                    "(Cut Cross-Entropy)"),
        "CCE Kahan"),
    Family("vocab_parallel", (
        Param("degree", 8, int, minimum=1, doc="simulated tensor-parallel degree"),
        _ACC32),
        _torch_impl(vocab_parallel, "Megatron vocab-parallel: all-reduce of max, target logit "
                    "and exp-sum over simulated shards"),
        "Megatron"),
    Family("fp32_accum", (
        Param("upcast", "all", str, ("all", "sum"),
              doc="every step in float32, or only the accumulator"),),
        _numpy_impl(fp32_accum, "max-shifted lse with float32 accumulation of 16-bit logits"),
        "fp32 accumulation"),
)}

#: Loss keywords each family takes (its ``Capabilities.keywords``).
LOSS_KEYWORDS: dict[str, frozenset[str]] = {
    name: frozenset({"ignore_index", "label_smoothing", "z_loss", "softcap"})
    for name in FAMILIES
}

#: Gradient functions ``(logits, targets, fmt, *, reduction, **params, **keywords)``.
GRADIENTS: dict[str, Callable[..., np.ndarray]] = {
    "chunked": chunked_grad,
    "vocab_parallel": vocab_parallel_grad,
}

#: The zoo's logits implementations at their defaults, under their bare keys.
LLM_IMPLEMENTATIONS: dict[str, Implementation] = {
    name: _build(name, tuple(sorted(fam.defaults().items()))) for name, fam in FAMILIES.items()
}


def _no_build(key: str, values: dict[str, Any]) -> Implementation:
    raise TypeError("fused_linear is a LinearImplementation: use resolve_linear")


_FUSED = Family("fused_linear", (
    Param("chunk", 32768, int, minimum=1, doc="vocabulary rows of the weight per block"),
    Param("logits", "format", str, ("format", "float32"),
          doc="block logits rounded to the format (Liger) or kept in float32 (CCE)"),
    _ACC32,
    Param("exp", "exp2", str, ("exp2", "exp"), doc="exp2(y log2 e) as current Liger, or exp"),
), _no_build, "fused linear cross-entropy")


def resolve_linear(text: str) -> LinearImplementation:
    """``"fused_linear(chunk=4096, logits=float32)"`` or ``"linear_torch"`` -> the
    implementation.  Raises ValueError naming a bad key or parameter."""
    name, args = parse_key(text)
    if name == "linear_torch":
        if args:
            raise ValueError("implementation 'linear_torch' takes no parameters")
        return LINEAR_IMPLEMENTATIONS["linear_torch"]
    if name != "fused_linear":
        raise ValueError(f"unknown linear implementation {text!r}; allowed: fused_linear"
                         "(chunk=..., logits=format|float32, acc=..., exp=exp2|exp), "
                         "linear_torch")
    values = _values(_FUSED, args)
    return LinearImplementation(canonical_key(_FUSED, values),
                                functools.partial(fused_linear, **values),
                                "fused linear cross-entropy: hidden @ W.T in vocabulary blocks, "
                                "running max and sum", Capabilities(devices=("cpu", "cuda")))


LINEAR_IMPLEMENTATIONS: dict[str, LinearImplementation] = {
    "linear_torch": LinearImplementation(
        "linear_torch", linear_torch, "unfused: torch matmul in the format, then "
        "F.cross_entropy", Capabilities(devices=("cpu", "cuda"))),
}
LINEAR_IMPLEMENTATIONS["fused_linear"] = resolve_linear("fused_linear")
