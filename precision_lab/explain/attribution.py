"""Per-step error attribution of the step-wise implementations, exact by construction; and
the fused torch kernel set beside the composites that model it.

What is measured, for each row of a batch and each step of an implementation's ``trace``
(:class:`~precision_lab.implementations.base.Step`, ops in
:data:`~precision_lab.implementations.base.OPS`):

* **local error**: the step's op recomputed exactly on the step's COMPUTED inputs (the
  arrays it actually consumed), compared with its computed output: the largest error over
  the row's elements in ULPs of the output's format (ulp of the exact value, as
  :func:`~precision_lab.numerics.formats.ulp_exponent` defines it), whether every element is
  the correctly rounded exact value, and whether the output is exact.  Exact ops show 0.
* **contribution**, by telescoping.  R_i is the loss obtained when steps 0..i-1 keep their
  computed outputs and steps i..N-1 are re-run exactly (each on the values the re-run
  produces).  R_0 is the exact loss, R_N the computed one; contribution_i = R_{i+1} - R_i.

Exactness of the decomposition.  Each R_i is represented by ONE exact dyadic rational
(a :class:`~fractions.Fraction`): R_N is the computed float itself, R_0 and the others are the
midpoints of enclosures computed as below.  Contributions are exact differences of these
rationals, so ``sum(contributions) == R_N - R_0 == total`` holds exactly (as rationals), by
construction, whatever the magnitudes (a step can add +1e27 ULP and the next -1e27 ULP).
When a step's output is proven exact for a row (an exact op, or a rounded op whose result
needed no rounding), R_i and R_{i+1} are the same number and share one representative, so the
contribution is exactly 0.  Where some R_i is not finite (a step overflowed or produced NaN)
the contributions touching it are not separable: ``contribution`` is None and
``separable`` False; the float views then say +-inf for the step that turned a finite R into an
infinite one and NaN otherwise, and the row's ``separable`` is False.

Accuracy of each R_i (the "rigorous-enough" statement).  Everything exact is computed by ball
arithmetic in mpmath at P bits (midpoint and a radius that bounds the error, assuming, as the
reference does, that mpmath's +, -, *, / are correctly rounded and its exp/log/log1p are
within 8 ulps); P starts at 192 and doubles (up to ``max_precision``) until

* R_0 (the exact loss) has radius <= 2**-101 |R_0| and <= 2**-65 ulp(R_0) -- it is evaluated
  in the cancellation-free form (m - x_t) + log(c) + log1p(exp(w - m) Q / c), m the row
  maximum (c copies), Q = sum_{x_j < m} exp(x_j - w) for a shift w (0, or the largest logit
  below m when some term is outside the kernel's range |x| <= 4096); every term is >= 0;
* every other R_i has radius <= 2**-65 ulp(R_0) (ulp in the target format);

and rows that do not get there are flagged ``unresolved`` (their precision is reported).  The
midpoints are then rounded to dyadics: R_0 to 2**-130 relative (a loss below 2**-20000, far
below every format, becomes 0), the others to 2**-128 ULP; so every R_i is within 2**-64 ULP
of the true value.  The V-length parts never go through mpmath element by element: a
reduction sum_j exp(y_j) over a row is written exp(top) (c + exp(w - top) Q), Q a sum of
terms exp(y_j - w) from a vectorized fixed-point kernel (:func:`_fx_exp`: 30-bit integer
limbs, resolution 2**-150, tables of 2**(j/65536), degree-7 Taylor; each term has relative
error <= 2**-140 -- the tests measure about 2**-146; repeated values are computed once)
summed exactly (integer limb sums grouped by exponent); terms below exp(-760) times the
largest are dropped and bounded.  Exponents are kept apart, so nothing underflows.  Sums of
computed floats are exact (integer mantissas grouped by exponent).  A gathered element (x_t,
exp(x_t), p_t, a log_softmax entry) is a scalar and is computed in mpmath.  Each contribution
is therefore within ``contribution_error_ulp`` <= 2**-63 ULP of the true one (0 for an exact
step); its float views are the correctly rounded float64 values of the exact rationals
(Python's Fraction -> float), so a printed ULP figure is right to 2**-63 ULP absolute plus
float64's relative 2**-53: every digit a report prints is right.  ``total`` is within
2**-100 |R_0| (and 2**-64 ULP) of the true computed - exact.

Cost: one row of V = 262144 takes about 0.5-1 s per implementation (2 s for the six
step-wise ones through :func:`attribute_many`, which shares the exact loss and the kernel's
exponentials); a batch costs about the same per element.

Local errors use the same kernels elementwise: exact double-double results for cast, add,
sub (TwoSum), 2**-104-accurate ones for div and exp and 2**-100 for log_softmax elements; a
local ULP figure is thus right to 2**-(100 - p) ULP absolute (p the format's precision).  The
"correctly rounded" decisions are certain: an element whose approximation is too close to a
rounding boundary is recomputed in mpmath at 600 bits.  log/log1p elements go to mpmath
directly (they are per-row scalars in every registered implementation).

Everything returned is numbers: :class:`RowAttribution` (with its :class:`StepAttribution`
list), :func:`summarize` -> :class:`AttributionSummary`; ``to_dict()`` gives JSON-ready dicts
(exact rationals as dyadic strings "[-]0x<hex>p<exp>", see :func:`dyadic_str`).

Fused kernels.  :func:`compare_fused` computes torch's fused ``F.cross_entropy`` and the
composites of :data:`precision_lab.implementations.composites.COMPOSITES`, and reports the
share of rows where the fused result is bit-identical to each (:class:`FusedComparison`).
``cpu_lastdim_model`` (the sum of exp and its log stored in the input dtype, then one float32
subtraction rounded once) is bit-identical to torch on every row tried for V = 10 and 1000 in
float16 and bfloat16 (at V = 100 about one row in 1000 differs by 1 ULP: for V >= 16 torch sums
in SIMD lanes); the composite that keeps sum and log in float32 matches only 83-95% of rows.
For float32 and float64 no numpy composite is bit-identical (torch uses SLEEF's exp/log).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Optional, Sequence, Union

import mpmath
import numpy as np

from precision_lab.implementations import OPS, REGISTRY, Step, get_implementation
from precision_lab.numerics.formats import Format, get_format, round_float64_array, round_to

__all__ = [
    "StepAttribution",
    "RowAttribution",
    "AttributionSummary",
    "CompositeMatch",
    "FusedComparison",
    "attribute",
    "attribute_many",
    "summarize",
    "compare_fused",
    "dyadic_str",
    "parse_dyadic",
    "EPS_EXP_TERM",
]

#: Relative error bound of one term of the fixed-point exponential kernel.
EPS_EXP_TERM = 2.0 ** -140
_R0_BITS = 101        # R_0: radius <= 2**-101 |R_0|
_RI_BITS = 64         # other R_i: radius <= 2**-64 ulp(R_0)
_START_PREC = 192
_FALLBACK_PREC = 600  # mpmath precision for elements too close to a rounding boundary

Exact = Union[Fraction, None]


# =========================================================================== results

def dyadic_str(x: "Fraction | None") -> "str | None":
    """A dyadic rational as ``"[-]0x<hex mantissa>p<exponent>"`` (value mantissa * 2**exponent,
    the mantissa odd or 0); None stays None.  Raises ValueError for a non-dyadic Fraction."""
    if x is None:
        return None
    x = Fraction(x)
    if x == 0:
        return "0x0p0"
    den = x.denominator
    if den & (den - 1):
        raise ValueError(f"{x} is not dyadic")
    man, exp = abs(x.numerator), -(den.bit_length() - 1)
    tz = (man & -man).bit_length() - 1
    man >>= tz
    exp += tz
    return f"{'-' if x < 0 else ''}0x{man:x}p{exp}"


def parse_dyadic(s: "str | None") -> "Fraction | None":
    """Inverse of :func:`dyadic_str`."""
    if s is None:
        return None
    neg = s.startswith("-")
    body = s[1:] if neg else s
    if not body.startswith("0x") or "p" not in body:
        raise ValueError(f"not a dyadic string: {s!r}; expected '[-]0x<hex>p<exp>'")
    hx, ex = body[2:].split("p")
    v = Fraction(int(hx, 16)) * Fraction(2) ** int(ex)
    return -v if neg else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, Fraction):
        return dyadic_str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@dataclass
class StepAttribution:
    """One step of one row.

    Attributes:
        name, op: the step; kind: "rounded", "exact" or "composite" (from OPS).
        elements: number of output elements of this row (V for a vector step, 1 for a scalar).
        value: the computed output for this row when it is one number, else None.
        local_ulp: max over the row's elements of |computed - exact op on computed inputs|,
            in ULPs of the output's format at the exact value (0 for exact ops; inf where a
            finite exact value came out infinite; NaN where undefined).
        local_exact: the output is exactly the exact op's result for every element (proven).
        correctly_rounded: every element is the correctly rounded exact value.
        not_correctly_rounded: how many elements are not.
        flags: codes: "overflow" (finite exact value, infinite output, finite inputs),
            "underflow" (a non-zero exact value below the normal range), "nan" (NaN output from
            non-NaN inputs), "cancellation" (an add/sub of a row losing >= 8 bits, see
            cancellation_bits), "mismatch" (an exact op whose output differs from its exact
            value), "undecided" (an element whose rounding could not be decided).
        underflow_elements: number of elements with a non-zero exact value below the normal
            range.
        cancellation_bits: for per-row add/sub: floor(log2(max |operand| / |exact result|))
            when >= 8 (None otherwise, or -1 when the exact result is 0 from non-zero operands).
        contribution: R_{i+1} - R_i exactly (dyadic Fraction), None where not separable.
        contribution_ulp: the same in ULPs of the exact loss in the format (signed float64;
            +-inf / NaN where not separable).
        contribution_rel: the same relative to the exact loss (NaN where it is 0).
        contribution_error_ulp: bound on |contribution - true contribution| in ULPs.
        separable: R_i and R_{i+1} are both finite (and resolved).
    """

    name: str
    op: str
    kind: str
    elements: int
    value: Optional[float]
    local_ulp: float
    local_exact: bool
    correctly_rounded: bool
    not_correctly_rounded: int
    flags: list[str]
    underflow_elements: int
    cancellation_bits: Optional[int]
    contribution: Exact
    contribution_ulp: float
    contribution_rel: float
    contribution_error_ulp: float
    separable: bool

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


@dataclass
class RowAttribution:
    """The attribution of one row of one implementation.

    Attributes:
        implementation, format, row, target: what was attributed.
        computed: the computed loss (float64 view); computed_exact: the same as a Fraction
            (None when not finite).
        exact_loss: R_0 as a dyadic Fraction (None when the exact loss is inf/NaN): within
            2**-100 of the true loss, relatively (0 for a loss below 2**-20000);
            exact_loss_float: its float64 value (inf/NaN where the loss is);
            exact_loss_error_ulp: bound on |exact_loss - true loss| in ULPs.
        ulp: ulp of the exact loss in the format (2**e, float), the unit of every *_ulp field.
        total: R_N - R_0 exactly (== sum of the contributions), None when not separable.
        total_ulp, total_rel: float views (signed).
        partials: R_0 .. R_N as Fractions (None where not finite or unresolved).
        partial_floats: R_0 .. R_N as float64 (inf / NaN where they are, NaN if unresolved).
        separable: every R_i is finite (and enclosed): the contributions are numbers that add
            up to the total.
        unresolved: some R_i did not reach its accuracy target (radius <= 2**-64 ULP, 2**-101
            relative for R_0) at max_precision; the contributions still add up exactly, their
            error bounds (contribution_error_ulp) say how far each may be off.
        dominant: the step with the largest |contribution| (when not separable: the first step
            whose contribution is infinite or undefined); None when every contribution is 0.
        dominant_share: |dominant contribution| / sum |contributions| (NaN if not separable).
        decisive: the first step i such that for every j >= i the accumulated error
            R_{j+1} - R_0 lies within half of the total error of it (None if total is 0).
        cancelling: sum |contributions| > 2 |total| (contributions largely cancel).
        cancellation_ratio: sum |contributions| / |total| (inf if total is 0 and some is not).
        precision_bits: the working precision P that resolved the row.
    """

    implementation: str
    format: str
    row: int
    target: int
    computed: float
    computed_exact: Exact
    exact_loss: Exact
    exact_loss_float: float
    exact_loss_error_ulp: float
    ulp: float
    total: Exact
    total_ulp: float
    total_rel: float
    partials: list[Exact]
    partial_floats: list[float]
    steps: list[StepAttribution]
    separable: bool
    unresolved: bool
    dominant: Optional[str]
    dominant_share: float
    decisive: Optional[str]
    cancelling: bool
    cancellation_ratio: float
    precision_bits: int

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


    def step(self, name: str) -> StepAttribution:
        """The step called ``name`` (KeyError naming the steps otherwise)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step {name!r}; steps: {', '.join(s.name for s in self.steps)}")


@dataclass
class AttributionSummary:
    """Across rows of one implementation and format.

    Attributes:
        rows: number of rows; separable_rows: rows whose decomposition is finite.
        dominates: step name -> rows where it is the dominant step ("none": no error at all).
        decides: step name -> rows where it is the decisive step ("none": total error 0).
        mean_abs_contribution_ulp: step name -> mean |contribution| in ULPs over separable rows.
        max_abs_contribution_ulp: step name -> the largest |contribution| in ULPs.
        cancelling_rows: rows whose contributions largely cancel.
        max_local_ulp: step name -> the largest local error in ULPs (finite values only).
    """

    implementation: str
    format: str
    rows: int
    separable_rows: int
    dominates: dict[str, int] = field(default_factory=dict)
    decides: dict[str, int] = field(default_factory=dict)
    mean_abs_contribution_ulp: dict[str, float] = field(default_factory=dict)
    max_abs_contribution_ulp: dict[str, float] = field(default_factory=dict)
    cancelling_rows: int = 0
    max_local_ulp: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


@dataclass
class CompositeMatch:
    """One composite beside the fused kernel: rows bit-identical, their share, and the largest
    distance in ULPs (steps of the format) between the two results."""

    name: str
    description: str
    identical: int
    rate: float
    max_ulp_distance: int



@dataclass
class FusedComparison:
    """:func:`compare_fused`'s result: composites sorted by rate, most identical first."""

    fused: str
    format: str
    rows: int
    composites: list[CompositeMatch]
    best: Optional[str]


    def rate(self, name: str) -> float:
        """The share of rows bit-identical to composite ``name``."""
        for c in self.composites:
            if c.name == name:
                return c.rate
        raise KeyError(f"no composite {name!r}; composites: "
                       f"{', '.join(c.name for c in self.composites)}")

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


# =========================================================================== fixed-point exp
#
# A number is a (NF + 1, n) int64 array of limbs: L0 the integer part (signed), L1..L5 the
# fraction in base 2**30 (each in [0, 2**30)): value = sum_i L_i 2**(-30 i), resolution
# 2**-150.  Sums of limb products stay below 2**63 (at most 6 products of two 30-bit limbs,
# the integer limbs being small).  Every truncation is toward -inf and is bounded below.

_LB = 30
_MASK = (1 << _LB) - 1
_NF = 5
_TB = 8
_NT = 1 << (2 * _TB)       # exp(z) = 2**k * 2**(j/65536) * exp(r), |r| <= ln2/2**17
_KDEG = 7                  # Taylor degree: r**8/8! < 2**-155
_ZMAX = 4096.0             # |z| <= _ZMAX: n = rint(z 2**16/ln2) < 2**28.6, n * limb < 2**59
_CHUNK = 16384
# fraction limbs kept at Horner level i (multiplied by r**i later): 2**(-30 nf) r**i <= 2**-150
_LIMBS = [min(_NF, max(1, -(-int(150 - 17.5 * i) // 30))) for i in range(_KDEG + 1)]


def _limbs_of(x: "mpmath.mpf", nfrac: int) -> list[int]:
    v = int(mpmath.floor(x * mpmath.mpf(2) ** (_LB * nfrac)))
    out = []
    for _ in range(nfrac):
        out.append(v & _MASK)
        v >>= _LB
    out.append(v)
    return out[::-1]


@functools.cache
def _fx_tables() -> tuple:
    with mpmath.workprec(400):
        ln2 = mpmath.log(2)
        c = np.array(_limbs_of(ln2 / _NT, 7), dtype=np.int64)          # 210 fraction bits
        invf = [np.array(_limbs_of(1 / mpmath.factorial(i), _NF), dtype=np.int64)
                for i in range(_KDEG + 1)]
        thi = np.array([_limbs_of(mpmath.power(2, mpmath.mpf(j << _TB) / _NT), _NF)
                        for j in range(1 << _TB)], dtype=np.int64).T
        tlo = np.array([_limbs_of(mpmath.power(2, mpmath.mpf(j) / _NT), _NF)
                        for j in range(1 << _TB)], dtype=np.int64).T
        inv = float(_NT / ln2)
    return c, invf, thi, tlo, inv


def _fx_from_float(v: np.ndarray) -> np.ndarray:
    """Limbs of float64 values |v| < 2**62, truncated toward 0 (error < 2**-150)."""
    a = np.abs(v)
    t = np.floor(a)
    out = np.empty((_NF + 1,) + v.shape, dtype=np.int64)
    out[0] = t
    f = a - t                      # exact
    for i in range(1, _NF + 1):
        f = f * (1 << _LB)         # exact
        d = np.floor(f)
        out[i] = d
        f = f - d                  # exact
    np.negative(out, out=out, where=(v < 0)[None])
    return out


def _fx_norm(c: np.ndarray) -> np.ndarray:
    for i in range(c.shape[0] - 1, 0, -1):
        c[i - 1] += c[i] >> _LB
        c[i] &= _MASK
    return c


def _fx_mul(a: np.ndarray, b: np.ndarray, nf: int) -> np.ndarray:
    """a * b truncated to nf fraction limbs; the column below is carried, the rest dropped:
    error < (#dropped products + 1) 2**(-30 nf - 30) < 2**(-30 nf - 27)."""
    na, nb = min(a.shape[0], nf + 2), min(b.shape[0], nf + 2)
    cols = np.zeros((nf + 2,) + a.shape[1:], dtype=np.int64)
    for i in range(na):
        m = min(nb, nf + 2 - i)
        if m > 0:
            cols[i:i + m] += a[i] * b[:m]
    _fx_norm(cols)
    return cols[:nf + 1]


def _fx_exp_chunk(zh: np.ndarray, zl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, invf, thi, tlo, inv = _fx_tables()
    ni = np.rint(zh * inv).astype(np.int64)
    R = np.zeros((8,) + zh.shape, dtype=np.int64)
    R[:_NF + 1] = _fx_from_float(zh)
    R[:_NF + 1] += _fx_from_float(zl)
    R -= ni[None] * c[:, None]            # exact: |n| < 2**28.6, limbs < 2**30
    _fx_norm(R)
    r = R[:_NF + 1]                        # r = z - n ln2/2**16, truncated at 2**-150
    P = np.broadcast_to(invf[_KDEG][:_LIMBS[_KDEG] + 1, None],
                        (_LIMBS[_KDEG] + 1,) + zh.shape).copy()
    for i in range(_KDEG - 1, -1, -1):
        nf = _LIMBS[i]
        P = _fx_mul(P, r, nf)
        P += invf[i][:nf + 1, None]
        _fx_norm(P)
    j = ni & (_NT - 1)
    T = _fx_mul(thi[:, j >> _TB], tlo[:, j & ((1 << _TB) - 1)], _NF)
    return _fx_mul(T, P, _NF), ni >> (2 * _TB)


def _fx_exp(zh: np.ndarray, zl: "np.ndarray | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """exp(zh + zl) = M * 2**k for 1-D float64 arrays with |zh| <= 4096 (zl the low part of
    an exact double-double, or None): returns the limbs M (6, n), value in [0.99, 2.01), and
    k (n,) int64.  Relative error <= EPS_EXP_TERM = 2**-140.

    Budget (absolute, on values of order 1): the inputs and r truncated at 2**-150 (3 times),
    ln2/2**16 known to 2**-210 (times n < 2**29), each Horner level kept to
    2**-150 / |r|**i with products dropping < 2**-147, Taylor remainder 2**-155, the two
    tables truncated at 2**-150 and two more products: below 2**-142 in all."""
    zh = np.asarray(zh, dtype=np.float64)
    zl = np.zeros_like(zh) if zl is None else np.asarray(zl, dtype=np.float64)
    n = zh.size
    M = np.empty((_NF + 1, n), dtype=np.int64)
    k = np.empty(n, dtype=np.int64)
    for a in range(0, n, _CHUNK):
        sl = slice(a, min(n, a + _CHUNK))
        M[:, sl], k[sl] = _fx_exp_chunk(zh[sl], zl[sl])
    return M, k


def _fx_to_dd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A double-double (h, l) of the limbs' value (relative error < 2**-105 for values ~1)."""
    sc = [1.0, 2.0 ** -30, 2.0 ** -60, 2.0 ** -90, 2.0 ** -120, 2.0 ** -150]
    a = M[0] * sc[0] + M[1] * sc[1]                      # exact: <= 33 bits
    h, e = _two_sum(a, M[2] * sc[2])
    low = e + (M[3] * sc[3] + (M[4] * sc[4] + M[5] * sc[5]))
    return _fast_two_sum(h, low)


def _group_sum(M: np.ndarray, k: np.ndarray, rows: np.ndarray, B: int) -> list[tuple[int, int]]:
    """Exact sum_j M_j 2**k_j per row, as (integer mantissa, exponent) pairs."""
    out: list[tuple[int, int]] = [(0, 0)] * B
    if k.size == 0:
        return out
    kmin = int(k.min())
    nb = int(k.max()) - kmin + 1
    idx = rows * nb + (k - kmin)
    # float64 sums of limbs < 2**30 are exact below 2**53 terms per bin (V < 2**23)
    sums = np.stack([np.bincount(idx, weights=M[i].astype(np.float64), minlength=B * nb)
                     for i in range(_NF + 1)]).reshape(_NF + 1, B, nb)
    used = (sums != 0).any(axis=0)
    for b in range(B):
        bins = np.flatnonzero(used[b])
        tot = 0
        for kk in bins.tolist():
            v = 0
            for i in range(_NF + 1):
                v = (v << _LB) + int(sums[i, b, kk])
            tot += v << kk
        out[b] = (tot, kmin - _LB * _NF)
    return out


# =========================================================================== float helpers

def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _fast_two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    return s, b - (s - a)


_SPLIT = 134217729.0  # 2**27 + 1


def _two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = a * b
    c = _SPLIT * a
    ah = c - (c - a)
    al = a - ah
    c = _SPLIT * b
    bh = c - (c - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _f64(a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    return a.astype(np.float64)  # exact: every format widens exactly into float64


def _content_key(*arrays: Any) -> tuple:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return (h.digest(),)


def _mpf_frac(x: "mpmath.mpf") -> Fraction:
    sign, man, exp, _ = x._mpf_
    v = Fraction(int(man)) * (Fraction(2) ** int(exp))
    return -v if sign else v


def _quantize(x: "mpmath.mpf", grid: int) -> Fraction:
    """A finite mpf rounded to the nearest multiple of 2**grid (ties away), exactly."""
    sign, man, exp, bc = x._mpf_
    if not man:
        return Fraction(0)
    man, exp = int(man), int(exp)
    if exp + int(bc) < grid - 1:       # |x| < 2**(grid - 1)
        return Fraction(0)
    if exp >= grid:
        q = man << (exp - grid)
    else:
        sh = grid - exp
        q = (man + (1 << (sh - 1))) >> sh
    v = Fraction(q) * Fraction(2) ** grid if grid < 0 else Fraction(q << grid)
    return -v if sign else v


def _ratio_up(r: "mpmath.mpf", e: int) -> float:
    """r * 2**-e as a float64 not below the true value (r >= 0)."""
    if r == 0:
        return 0.0
    v = float(mpmath.ldexp(r, -e))
    return float(np.nextafter(v, np.inf)) if v < np.inf else v


def _mpf_exact(man: int, exp: int) -> "mpmath.mpf":
    """man * 2**exp rounded to the working precision."""
    return mpmath.ldexp(mpmath.mpf(man), exp)


def _frac_mpf(x: Fraction) -> "mpmath.mpf":
    """A dyadic Fraction rounded to the working precision (error <= 2**-prec relative)."""
    den = x.denominator
    if den & (den - 1):
        return mpmath.mpf(x.numerator) / den
    return mpmath.ldexp(mpmath.mpf(x.numerator), -(den.bit_length() - 1))


# =========================================================================== exact sums

def _exact_sums(a: np.ndarray,
                excluded: "np.ndarray | None" = None) -> list[Union[Fraction, float]]:
    """Exact sum over the last axis of float64 values, per row: a Fraction, or inf/-inf/nan by
    IEEE's rules for the non-finite values (NaN if any NaN or +inf and -inf both)."""
    a = np.asarray(a, dtype=np.float64)
    B = a.shape[0]
    if excluded is not None:
        a = np.where(excluded, 0.0, a)
    fin = np.isfinite(a)
    out: list[Union[Fraction, float]] = [Fraction(0)] * B
    odd = ~fin.all(axis=1)
    for b in np.flatnonzero(odd).tolist():
        r = a[b]
        pos, neg = bool((r == np.inf).any()), bool((r == -np.inf).any())
        bad = bool(np.isnan(r).any()) or (pos and neg)
        out[b] = math.nan if bad else (math.inf if pos else -math.inf)
    m, e = np.frexp(np.where(fin, a, 0.0))
    mi = (m * 2.0 ** 53).astype(np.int64)          # exact integer mantissas, |mi| < 2**53
    ex = e.astype(np.int64) - 53
    hi, lo = mi >> 26, mi & ((1 << 26) - 1)        # float64 bin sums stay exact (V < 2**26)
    emin = int(ex.min()) if ex.size else 0
    nb = int(ex.max()) - emin + 1 if ex.size else 1
    idx = (np.arange(B)[:, None] * nb + (ex - emin)).ravel()
    sh = np.bincount(idx, weights=hi.ravel().astype(np.float64), minlength=B * nb).reshape(B, nb)
    sl = np.bincount(idx, weights=lo.ravel().astype(np.float64), minlength=B * nb).reshape(B, nb)
    for b in range(B):
        if odd[b]:
            continue
        tot = 0
        for kk in np.flatnonzero((sh[b] != 0) | (sl[b] != 0)).tolist():
            tot += ((int(sh[b, kk]) << 26) + int(sl[b, kk])) << kk
        out[b] = Fraction(tot) * Fraction(2) ** emin if emin < 0 else Fraction(tot << emin)
    return out


class _ExpTable:
    """exp of every element of a float64 array with |y| <= 4096 by the fixed-point kernel,
    computed once and shared by the local errors of an exp step and by the reductions
    sum_j exp(y_j) of the same array."""

    def __init__(self, y: np.ndarray) -> None:
        flat = np.asarray(y, dtype=np.float64).ravel()
        with np.errstate(invalid="ignore"):
            self.sel = np.flatnonzero(np.isfinite(flat) & (np.abs(flat) <= _ZMAX))
        self.pos = np.full(flat.size, -1, np.int64)
        self.pos[self.sel] = np.arange(self.sel.size)
        # repeated values (most of a float16/bfloat16 row) are computed once
        vals, inv = np.unique(flat[self.sel], return_inverse=True)
        M, k = _fx_exp(vals)
        self.M, self.k = M[:, inv], k[inv]


@dataclass
class _ExpSum:
    """sum_j exp(F_j) over a row's non-excluded j = exp(top) (ctop + exp(wsh - top) Q), where
    Q = qman 2**qexp is within relative qerr of sum_{F_j < top} exp(F_j - wsh); or ``special``:
    nan (a NaN term), inf (a +inf term), 0.0 (no term)."""

    special: Optional[float]
    top: float = 0.0
    ctop: int = 0
    wsh: float = 0.0
    qman: int = 0
    qexp: int = 0
    qerr: float = 0.0


def _exp_sums(F: np.ndarray, excluded: "np.ndarray | None" = None,
              table: "_ExpTable | None" = None) -> list[_ExpSum]:
    """The :class:`_ExpSum` of every row of F (B, V) float64, optionally leaving out
    ``excluded`` (B, V) bool elements.  Terms exp(F_j) come from ``table`` (unshifted, wsh = 0)
    where every needed element is in its range, else from the kernel on F_j - x_s (exact
    double-doubles), x_s the largest element below the top (wsh = x_s).  Terms below
    exp(x_s - 760) are dropped and bounded."""
    B, V = F.shape
    if V >= 1 << 23:
        raise ValueError(f"rows of V = {V} classes are too long for the exact sums (< 2**23)")
    valid = np.ones(F.shape, bool) if excluded is None else ~excluded
    isn = np.isnan(F) & valid
    live = valid & ~np.isnan(F) & (F > -np.inf)
    with np.errstate(invalid="ignore"):
        top = np.where(live, F, -np.inf).max(axis=1)
        ctop = (live & (F == top[:, None])).sum(axis=1)
        rest = live & (F < top[:, None])
        piv = np.where(rest, F, -np.inf).max(axis=1)
    out: list[_ExpSum] = []
    for b in range(B):
        if isn[b].any():
            out.append(_ExpSum(math.nan))
        elif not live[b].any():
            out.append(_ExpSum(0.0))
        elif top[b] == np.inf:
            out.append(_ExpSum(math.inf))
        else:
            out.append(_ExpSum(None, float(top[b]), int(ctop[b])))
    ok = np.array([e.special is None for e in out]) & rest.any(axis=1)
    rest &= ok[:, None]
    rb, cb = np.nonzero(rest)
    if not rb.size:
        return out
    zh, zl = _two_sum(F[rb, cb], -piv[rb])       # exact: both finite, zh <= 0
    take = zh >= -760.0
    dropped = np.bincount(rb[~take], minlength=B)
    rb, cb, zh, zl = rb[take], cb[take], zh[take], zl[take]
    shifted = np.ones(B, bool)
    sums_t: list = []
    sums_s: list = []
    if table is not None:
        pos = table.pos[rb * V + cb]
        shifted = np.bincount(rb[pos < 0], minlength=B) > 0   # some term out of the table
        use = ~shifted[rb]
        sums_t = _group_sum(table.M[:, pos[use]], table.k[pos[use]], rb[use], B)
    sh = shifted[rb]
    if sh.any():
        M, k = _fx_exp(zh[sh], zl[sh])
        sums_s = _group_sum(M, k, rb[sh], B)
    for b in np.flatnonzero(ok).tolist():
        e = out[b]
        e.wsh = float(piv[b]) if shifted[b] else 0.0
        e.qman, e.qexp = sums_s[b] if shifted[b] else sums_t[b]
        # each dropped term < exp(-759.99) times the pivot's term, and Q >= the pivot's term
        e.qerr = EPS_EXP_TERM + float(dropped[b]) * 2.0 ** -1096
    return out


# =========================================================================== balls

class _Ball:
    """mid +- rad at the working precision; a special (nan/+-inf, rad 0); or unresolved
    (rad = inf: nothing is known)."""

    __slots__ = ("m", "r")

    def __init__(self, m: Any, r: Any = 0) -> None:
        self.m = mpmath.mpf(m) if not isinstance(m, mpmath.mpf) else m
        self.r = mpmath.mpf(r) if not isinstance(r, mpmath.mpf) else r

    @property
    def unresolved(self) -> bool:
        return self.r == mpmath.inf

    @property
    def finite(self) -> bool:
        return not self.unresolved and mpmath.isfinite(self.m)

    @property
    def point_zero(self) -> bool:
        return self.finite and self.m == 0 and self.r == 0


_INF = mpmath.inf
_NAN = mpmath.nan


def _unres() -> _Ball:
    return _Ball(_NAN, _INF)


def _up(x: "mpmath.mpf") -> "mpmath.mpf":
    """Inflate a radius computed with round-to-nearest so that it stays an upper bound."""
    return x * (1 + mpmath.ldexp(1, 8 - mpmath.mp.prec))


def _rnd(m: "mpmath.mpf", ulps: int = 1) -> "mpmath.mpf":
    return abs(m) * mpmath.ldexp(ulps, -mpmath.mp.prec)


def _ball_of(v: Any) -> _Ball:
    """An exact ball of a float / int / Fraction, or an mpf (rounded to the precision)."""
    if isinstance(v, _Ball):
        return v
    if isinstance(v, Fraction):
        m = _frac_mpf(v)
        return _Ball(m, _rnd(m) if _mpf_frac(m) != v else 0)
    if isinstance(v, (int, np.integer)):
        m = mpmath.mpf(int(v))
        return _Ball(m, 0 if int(m) == int(v) else _rnd(m))
    return _Ball(mpmath.mpf(float(v)))  # floats are exact at >= 53 bits


def _b_add(a: _Ball, b: _Ball, sub: bool = False) -> _Ball:
    if a.unresolved or b.unresolved:
        return _unres()
    bm = -b.m if sub else b.m
    if not (mpmath.isfinite(a.m) and mpmath.isfinite(bm)):
        return _Ball(a.m + bm)
    m = a.m + bm
    return _Ball(m, _up(a.r + b.r + _rnd(m)))


def _b_neg(a: _Ball) -> _Ball:
    return _Ball(-a.m, a.r)


def _b_mul(a: _Ball, b: _Ball) -> _Ball:
    if a.unresolved or b.unresolved:
        return _unres()
    if not (mpmath.isfinite(a.m) and mpmath.isfinite(b.m)):
        if (a.point_zero or b.point_zero) or mpmath.isnan(a.m) or mpmath.isnan(b.m):
            return _Ball(_NAN)
        if (mpmath.isfinite(a.m) and a.r >= abs(a.m)) or (mpmath.isfinite(b.m) and b.r >= abs(b.m)):
            return _unres()  # the sign of the finite factor is unknown
        return _Ball(a.m * b.m)
    m = a.m * b.m
    return _Ball(m, _up(abs(a.m) * b.r + abs(b.m) * a.r + a.r * b.r + _rnd(m)))


def _b_div(a: _Ball, b: _Ball) -> _Ball:
    if a.unresolved or b.unresolved:
        return _unres()
    if mpmath.isnan(a.m) or mpmath.isnan(b.m):
        return _Ball(_NAN)
    if b.point_zero:  # IEEE: x/0 = +-inf (no signed zeros here), 0/0 = NaN
        if a.point_zero or (mpmath.isfinite(a.m) and a.r >= abs(a.m)):
            return _Ball(_NAN) if a.point_zero else _unres()
        return _Ball(_INF if a.m > 0 else -_INF)
    if mpmath.isinf(a.m) and mpmath.isinf(b.m):
        return _Ball(_NAN)
    if mpmath.isinf(a.m):
        if b.r >= abs(b.m):
            return _unres()
        return _Ball(a.m if b.m > 0 else -a.m)
    if mpmath.isinf(b.m):
        return _Ball(0)
    if b.r >= abs(b.m):
        return _unres()
    m = a.m / b.m
    return _Ball(m, _up((a.r + abs(m) * b.r) / (abs(b.m) - b.r) + _rnd(m)))


def _b_exp(a: _Ball) -> _Ball:
    if a.unresolved:
        return _unres()
    if not mpmath.isfinite(a.m):
        return _Ball(_NAN if mpmath.isnan(a.m) else (_INF if a.m > 0 else 0))
    m = mpmath.exp(a.m)
    return _Ball(m, _up(m * mpmath.expm1(a.r) + _rnd(m, 16)))


def _b_log(a: _Ball, one_plus: bool = False) -> _Ball:
    """log(a), or log1p(a) with ``one_plus``."""
    if a.unresolved:
        return _unres()
    lo_lim = -1 if one_plus else 0
    if not mpmath.isfinite(a.m):
        return _Ball(_INF if a.m == _INF else _NAN)
    if a.r == 0 and a.m == lo_lim:
        return _Ball(-_INF)
    if a.m + a.r < lo_lim:
        return _Ball(_NAN)
    base = a.m - lo_lim  # distance to the pole
    if a.r >= base:
        return _unres()
    m = mpmath.log1p(a.m) if one_plus else mpmath.log(a.m)
    return _Ball(m, _up(-mpmath.log1p(-a.r / base) + _rnd(m, 16)))


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


# =========================================================================== local errors

@dataclass
class _Local:
    ulp: np.ndarray
    exact: np.ndarray
    cr: np.ndarray
    not_cr: np.ndarray
    overflow: np.ndarray
    underflow: np.ndarray
    nan: np.ndarray
    mismatch: np.ndarray
    undecided: np.ndarray
    cancel: list  # per row: None, -1 (exact 0), or bits


def _exp_elements(table: _ExpTable, y: np.ndarray):
    """exp of the float64 values y (the array ``table`` was built from), per element:
    (h, l, k, eps, kind, spec) -- value (h + l) 2**k within relative eps (kind 0); kind 3: the
    IEEE special spec (exp(-inf) = 0, exp(inf) = inf, NaN); kind 1 / 2: finite y beyond
    +-4096, an exact value far above / below every format's range."""
    y = np.asarray(y, dtype=np.float64).ravel()
    h = np.ones_like(y)
    l_ = np.zeros_like(y)
    k = np.zeros(y.shape, np.int64)
    eps = np.zeros_like(y)
    kind = np.zeros(y.shape, np.int8)
    spec = np.full(y.shape, np.nan)
    fin = np.isfinite(y)
    kind[~fin] = 3
    with np.errstate(over="ignore"):
        spec[~fin] = np.exp(y[~fin])
    kind[fin & (y > _ZMAX)] = 1
    kind[fin & (y < -_ZMAX)] = 2
    if table.sel.size:
        hh, ll = _fx_to_dd(table.M)
        h[table.sel], l_[table.sel], k[table.sel] = hh, ll, table.k
        eps[table.sel] = np.where(y[table.sel] == 0, 0.0, 2.0 ** -104)
    return h, l_, k, eps, kind, spec


def _grade(c: np.ndarray, h: np.ndarray, l_: np.ndarray, k: np.ndarray, eps: np.ndarray,
           f: Format) -> tuple[np.ndarray, ...]:
    """Per element, the exact value v = (h + l) 2**k (h finite, |l| <= ulp(h)/2, relative
    error <= eps; h = 0 means v = 0 exactly) against the computed c (float64 of format f).

    Returns (ulp error, correctly rounded, decided, underflow, rounded value)."""
    n = c.size
    if n <= _CHUNK * 2:
        return _grade_chunk(c, h, l_, k, eps, f)
    parts = [_grade_chunk(c[a:a + _CHUNK], h[a:a + _CHUNK], l_[a:a + _CHUNK], k[a:a + _CHUNK],
                          eps[a:a + _CHUNK], f) for a in range(0, n, _CHUNK)]
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _grade_chunk(c: np.ndarray, h: np.ndarray, l_: np.ndarray, k: np.ndarray,
                 eps: np.ndarray, f: Format) -> tuple[np.ndarray, ...]:
    p = f.precision
    zero = h == 0
    hs = np.where(zero, 1.0, h)
    hm, he = np.frexp(hs)
    e = he.astype(np.int64) - 1 + k
    e = e - ((np.abs(hm) == 0.5) & (l_ * hs < 0)).astype(np.int64)
    q = np.minimum(np.maximum(e, f.emin), f.emax) - (p - 1)
    q = np.where(zero, f.emin - p + 1, q)
    sc = np.clip(k - q, -2200, 2200).astype(np.int32)
    sg = np.sign(hs)
    with np.errstate(over="ignore", invalid="ignore"):
        w = np.where(zero, 0.0, np.ldexp(np.abs(hs), sc))
        wl = np.where(zero, 0.0, np.ldexp(l_ * sg, sc))
        fl = np.floor(w)
        base = w - fl
        below = (base == 0) & (wl < 0)
        d = base - 0.5
        odd = np.fmod(fl, 2) == 1
        up = (d > -wl) | ((d == -wl) & odd)
        n = np.where(below, np.where((wl > -0.5) | ~odd, fl, fl - 1), fl + up)
        phi = base + wl
        decided = (eps == 0) | (np.abs(phi - 0.5) > eps * w + 2.0 ** -50)
        qi = np.clip(q, -2200, 2200).astype(np.int32)
        rounded = sg * np.ldexp(n, qi)
        rounded = np.where(np.abs(rounded) > f.max_finite, sg * np.inf, rounded)
        cs = np.ldexp(c * sg, -qi)
        # w = inf: the exact value is beyond float64 at the format's top spacing (far above
        # its range): every finite or infinite computed value is an infinite number of ULPs off
        err = np.where(np.isinf(w) & ~np.isnan(c), np.inf, np.abs((cs - w) - wl))
        cr = (c == rounded) | (zero & (c == 0))
    underflow = ~zero & (e < f.emin)
    return err, cr, decided, underflow, rounded


def _grade_mp(c: float, v: Any, f: Format) -> tuple[float, bool, bool]:
    """(ulp error, correctly rounded, underflow) of a computed c against an exact non-zero
    value v: a dyadic Fraction, or an mpf (at _FALLBACK_PREC bits, far beyond any format)."""
    if math.isnan(c):
        return math.nan, False, False
    if isinstance(v, Fraction):
        if v == 0:
            return abs(c) / f.smallest_subnormal, c == 0, False
        top = _floor_log2(abs(v))
        q = min(max(top, f.emin), f.emax) - (f.precision - 1)
        r = float(round_to(v, f))
        err = math.inf if math.isinf(c) else float(abs(Fraction(c) - v) / Fraction(2) ** q)
        return err, c == r, top < f.emin
    with mpmath.workprec(_FALLBACK_PREC):
        if v == 0:
            return abs(c) / f.smallest_subnormal, c == 0, False
        top = int(v._mpf_[2]) + int(v._mpf_[3]) - 1
        q = min(max(top, f.emin), f.emax) - (f.precision - 1)
        r = float(round_to(v, f))
        err = math.inf if math.isinf(c) else float(abs(mpmath.mpf(c) - v) / mpmath.ldexp(1, q))
        return err, c == r, top < f.emin


def _mp_exact_elem(op: str, ins: list) -> Any:
    """The exact value of one element (inputs: floats) at _FALLBACK_PREC: an mpf, or a float
    for IEEE specials."""
    with mpmath.workprec(_FALLBACK_PREC):
        xs = [float(v) for v in ins]
        if not all(math.isfinite(v) for v in xs):
            with np.errstate(all="ignore"):
                return float(_np_op(op, [np.float64(v) for v in xs]))
        a = mpmath.mpf(xs[0])
        if op == "exp":
            return mpmath.exp(a)
        if op == "log":
            return math.nan if a < 0 else (-math.inf if a == 0 else mpmath.log(a))
        if op == "log1p":
            return math.nan if a < -1 else (-math.inf if a == -1 else mpmath.log1p(a))
        if op == "div":
            if xs[1] == 0:
                return math.nan if xs[0] == 0 else math.copysign(math.inf, xs[0])
            return a / mpmath.mpf(xs[1])
        raise AssertionError(op)


def _np_op(op: str, ins: list) -> Any:
    a = ins[0]
    if op == "cast":
        return a
    if op == "exp":
        return np.exp(a)
    if op == "log":
        return np.log(a)
    if op == "log1p":
        return np.log1p(a)
    if op == "add":
        return a + ins[1]
    if op == "sub":
        return a - ins[1]
    if op == "div":
        return a / ins[1]
    if op == "neg":
        return -a
    raise AssertionError(op)


def _rows_of(a: np.ndarray, B: int) -> np.ndarray:
    """Row index of every element of an array whose first axis is the batch."""
    a = np.asarray(a)
    if a.ndim == 0:
        return np.zeros(1, np.int64)
    return np.repeat(np.arange(a.shape[0]), int(np.prod(a.shape[1:], dtype=np.int64)))


def _row_reduce(vals: np.ndarray, rows: np.ndarray, B: int, how: str) -> np.ndarray:
    if how == "any":
        return np.bincount(rows, weights=vals.astype(np.float64), minlength=B) > 0
    if how == "all":
        return np.bincount(rows, weights=(~vals).astype(np.float64), minlength=B) == 0
    if how == "count":
        return np.bincount(rows, weights=vals.astype(np.float64), minlength=B).astype(np.int64)
    # max with NaN dominating
    out = np.full(B, -np.inf)
    np.maximum.at(out, rows, np.where(np.isnan(vals), -np.inf, vals))
    isn = np.bincount(rows, weights=np.isnan(vals).astype(np.float64), minlength=B) > 0
    out[isn] = np.nan
    return np.maximum(out, 0.0, where=~isn, out=out)


def _local(ctx: _Ctx, s: Step) -> _Local:
    """Local errors of step s for every row."""
    B = ctx.B
    ins = [_f64(a) for a in s.inputs]
    out = _f64(s.output)
    false = np.zeros(B, bool)
    res = _Local(np.zeros(B), np.ones(B, bool), np.ones(B, bool), np.zeros(B, np.int64),
                 false.copy(), np.zeros(B, np.int64), false.copy(), false.copy(), false.copy(),
                 [None] * B)
    if s.op in ("max", "argmax", "gather", "mask", "neg", "nll"):
        return _local_exact_op(ctx, s, ins, out, res)
    f = get_format(s.output.dtype)
    if s.op == "sum":
        return _local_sum(ctx, ins, out, f, res)
    return _local_elementwise(ctx, s, ins, out, f, res)


def _local_exact_op(ctx: _Ctx, s: Step, ins: list, out: np.ndarray, res: _Local) -> _Local:
    B = ctx.B
    with np.errstate(invalid="ignore"):
        exact = _exact_step(ctx, s, ins) if s.op != "neg" else -ins[0]
    exact = np.asarray(exact, dtype=out.dtype).reshape(out.shape)
    if out.dtype.kind == "f":
        same = (exact == out) | (np.isnan(exact) & np.isnan(out))
    else:
        same = exact == out
    rows = _rows_of(out, B)
    ok = _row_reduce(same.ravel(), rows, B, "all")
    res.exact[:] = ok
    res.cr[:] = ok
    res.mismatch[:] = ~ok
    res.ulp[~ok] = np.nan
    res.not_cr = _row_reduce(~same.ravel(), rows, B, "count")
    return res


def _local_sum(ctx: _Ctx, ins: list, out: np.ndarray, f: Format, res: _Local) -> _Local:
    S = ctx.exact_sums(ins[0])
    innan = np.isnan(ins[0]).any(axis=-1)
    for b in range(ctx.B):
        c = float(out.reshape(ctx.B)[b])
        v = S[b]
        if not isinstance(v, Fraction):
            same = (c == v) or (math.isnan(c) and math.isnan(v))
            res.ulp[b] = 0.0 if same else (
                math.nan if math.isnan(c) or math.isnan(v) else math.inf)
            res.exact[b] = res.cr[b] = same
            res.nan[b] = math.isnan(c) and not innan[b]
            continue
        err, cr, uf = _grade_mp(c, v, f)
        res.ulp[b], res.cr[b] = err, cr
        res.exact[b] = math.isfinite(c) and Fraction(c) == v
        res.overflow[b] = math.isinf(c)
        res.nan[b] = math.isnan(c)
        res.underflow[b] = int(uf and v != 0)
    res.not_cr = (~res.cr).astype(np.int64)
    return res


def _local_elementwise(ctx: _Ctx, s: Step, ins: list, out: np.ndarray, f: Format,
                       res: _Local) -> _Local:
    """Elementwise ops and log_softmax: each element of the output against the exact op on
    the (broadcast) inputs of the same position."""
    B, op = ctx.B, s.op
    shape = out.shape
    bins = [np.broadcast_to(a, shape) for a in ins]
    c = out.ravel()
    n = c.size
    rows = _rows_of(out, B)
    innan = np.zeros(n, bool)
    infin = np.ones(n, bool)
    for a in bins:
        innan |= np.isnan(a).ravel()
        infin &= np.isfinite(a).ravel()
    h = np.zeros(n)
    l_ = np.zeros(n)
    k = np.zeros(n, np.int64)
    eps = np.zeros(n)
    special = np.zeros(n, bool)   # the exact value is an IEEE special (or exact 0 by rule)
    spec = np.full(n, np.nan)
    huge = np.zeros(n, bool)      # exact value finite but far above every format's range
    tiny = np.zeros(n, bool)      # exact value non-zero, far below every format's range
    mp_elems = np.zeros(n, bool)  # evaluated in mpmath
    trivial = np.zeros(n, bool)   # the exact value is known exactly (no rounding needed)
    with np.errstate(all="ignore"):
        if op == "cast":
            u = bins[0].ravel()
            h[:] = np.where(np.isfinite(u), u, 0.0)
            special = ~np.isfinite(u)
            spec = u.copy()
            trivial[:] = True
        elif op in ("add", "sub"):
            u, v = bins[0].ravel(), bins[1].ravel()
            v2 = -v if op == "sub" else v
            hh, ll = _two_sum(u, v2)
            ovf = infin & ~np.isfinite(hh)
            if ovf.any():
                h2, l2 = _two_sum(u[ovf] * 0.5, v2[ovf] * 0.5)
                hh[ovf], ll[ovf] = h2, l2
                k[ovf] = 1
            special = ~infin
            spec = u + v2
            h[:] = np.where(special, 0.0, hh)
            l_[:] = np.where(special, 0.0, ll)
            trivial[:] = True
        elif op == "div":
            u, v = bins[0].ravel(), bins[1].ravel()
            special = ~infin | (u == 0) | (v == 0)
            spec = u / v
            g = ~special
            ma, ea = np.frexp(u[g])
            mb, eb = np.frexp(v[g])
            qh = ma / mb
            ph, pl = _two_prod(qh, mb)
            rem = (ma - ph) - pl
            ql = rem / mb
            hh, ll = _fast_two_sum(qh, ql)
            h[g], l_[g], k[g] = hh, ll, ea.astype(np.int64) - eb
            eps[g] = np.where(rem == 0, 0.0, 2.0 ** -104)
            trivial[g] = rem == 0
            trivial[special] = True
        elif op == "exp":
            y0 = bins[0]
            hh, ll, kk, ee, kind, sp = _exp_elements(ctx.table(y0), y0)
            h[:], l_[:], k[:], eps[:] = hh, ll, kk, ee
            special = kind == 3
            spec = sp
            huge = kind == 1
            tiny = kind == 2
            trivial[:] = (kind == 3) | (bins[0].ravel() == 0)
        elif op == "log_softmax":
            # exact element: (x_j - top) - L, L = log(ctop + exp(wsh - top) Q) >= 0; both
            # terms <= 0, so the double-double below has no cancellation
            F = bins[0]
            V = F.shape[-1]
            es = ctx.expsums(F)
            Lh, Ll = np.zeros(B), np.zeros(B)
            Lexact = np.zeros(B, bool)
            lse_f = np.zeros(B)          # the row's IEEE log-sum-exp where it is special
            rowspec = np.zeros(B, bool)
            with mpmath.workprec(256):
                for b in range(B):
                    if es[b].special is not None:
                        rowspec[b] = True
                        lse_f[b] = _lse_special(es[b])
                        continue
                    L = _b_log(_inner_ball(es[b]))
                    Lh[b] = float(L.m)
                    Ll[b] = float(L.m - mpmath.mpf(Lh[b]))
                    Lexact[b] = L.r == 0
            top = np.array([e.top if e.special is None else 0.0 for e in es])
            dh, dl = _two_sum(F, -top[:, None])
            s1, e1 = _two_sum(dh, -Lh[:, None])
            hh, ll = _fast_two_sum(s1, e1 + (dl - Ll[:, None]))
            xf = F.ravel()
            rs = np.repeat(rowspec, V)
            special = rs | ~np.isfinite(xf)
            spec = np.where(rs, xf - np.repeat(lse_f, V), xf)  # -inf stays -inf
            h[:] = np.where(special, 0.0, hh.ravel())
            l_[:] = np.where(special, 0.0, ll.ravel())
            ex_row = np.repeat(Lexact, V)
            eps[:] = np.where(ex_row, 0.0, 2.0 ** -100)
            trivial[:] = ex_row
            innan[:] = np.repeat(np.isnan(F).any(axis=1), V)
        else:  # log, log1p and anything else: mpmath per element
            mp_elems[:] = True

    err = np.zeros(n)
    cr = np.ones(n, bool)
    uf = np.zeros(n, bool)
    exact_el = np.zeros(n, bool)
    undec = np.zeros(n, bool)
    with np.errstate(invalid="ignore"):
        g = ~special & ~huge & ~tiny & ~mp_elems
        if g.any():
            e_, c_, d_, u_, _ = _grade(c[g], h[g], l_[g], k[g], eps[g], f)
            err[g], cr[g], uf[g] = e_, c_, u_
            exact_el[g] = (e_ == 0) & trivial[g]
            idx = np.flatnonzero(g)[~d_]
            undec[idx] = True
        # IEEE specials: the exact value is the float spec
        sp = np.flatnonzero(special)
        if sp.size:
            same = (c[sp] == spec[sp]) | (np.isnan(c[sp]) & np.isnan(spec[sp]))
            err[sp] = np.where(same, 0.0, np.where(np.isnan(c[sp]) | np.isnan(spec[sp]),
                                                   np.nan, np.inf))
            cr[sp] = same
            exact_el[sp] = same
        hu = np.flatnonzero(huge)
        if hu.size:
            err[hu] = np.inf
            cr[hu] = np.isinf(c[hu]) & (c[hu] > 0)
            err[hu[np.isnan(c[hu])]] = np.nan
        ti = np.flatnonzero(tiny)
        if ti.size:
            err[ti] = np.abs(c[ti]) / f.smallest_subnormal
            cr[ti] = c[ti] == 0
            uf[ti] = True
    # elements for mpmath: undecided roundings and ops without a vectorized kernel
    todo = np.flatnonzero(undec | mp_elems)
    flat_ins = [a.ravel() for a in bins]
    for i in todo.tolist():
        ci = float(c[i])
        still = False
        if op == "log_softmax":
            v, rad = _lsm_exact_elem(ctx, bins[0], int(rows[i]), i % bins[0].shape[-1])
            if not isinstance(v, float) and rad > 0:  # Q's 2**-140 limits this one
                with mpmath.workprec(_FALLBACK_PREC):
                    still = round_to(v - rad, f) != round_to(v + rad, f)
        else:
            v = _mp_exact_elem(op, [fi[i] for fi in flat_ins])
        if isinstance(v, float):
            same = (ci == v) or (math.isnan(ci) and math.isnan(v))
            err[i] = 0.0 if same else (math.nan if math.isnan(ci) or math.isnan(v) else math.inf)
            cr[i] = exact_el[i] = same
            undec[i] = False
            special[i] = True
            continue
        ei, cri, ui = _grade_mp(ci, v, f)
        err[i], cr[i], uf[i] = ei, cri, ui
        undec[i] = still
        ins_i = [float(fi[i]) for fi in flat_ins]
        exact_el[i] = ei == 0 and ((op == "log" and ins_i[0] == 1.0)
                                   or (op == "log1p" and ins_i[0] == 0.0)
                                   or (op == "exp" and ins_i[0] == 0.0))
    res.ulp = _row_reduce(err, rows, B, "max")
    res.exact = _row_reduce(exact_el, rows, B, "all")
    res.cr = _row_reduce(cr, rows, B, "all")
    res.not_cr = _row_reduce(~cr, rows, B, "count")
    res.overflow = _row_reduce(~special & np.isinf(c) & infin, rows, B, "any")
    res.underflow = _row_reduce(uf & ~special, rows, B, "count")
    res.nan = _row_reduce(np.isnan(c) & ~innan, rows, B, "any")
    res.undecided = _row_reduce(undec, rows, B, "any")
    if op in ("add", "sub") and out.size == B:
        ua, ub = ins[0].reshape(B), ins[1].reshape(B)
        for r in range(B):
            av, bv = float(ua[r]), float(ub[r])
            if not (math.isfinite(av) and math.isfinite(bv)):
                continue
            ex = Fraction(av) + (Fraction(bv) if op == "add" else -Fraction(bv))
            big = max(abs(Fraction(av)), abs(Fraction(bv)))
            if big == 0:
                continue
            if ex == 0:
                res.cancel[r] = -1
                continue
            kbits = _floor_log2(big / abs(ex))
            if kbits >= 8:
                res.cancel[r] = kbits
    return res


def _floor_log2(x: Fraction) -> int:
    k = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** k > x:
        k -= 1
    return k


def _lse_special(es: _ExpSum) -> float:
    """log of a special row sum: 0 -> -inf, inf -> inf, NaN -> NaN."""
    return -math.inf if es.special == 0.0 else float(es.special or 0.0)


def _lsm_exact_elem(ctx: _Ctx, F: np.ndarray, b: int, j: int) -> tuple[Any, Any]:
    """One log_softmax element x_j - lse(x) at _FALLBACK_PREC: (mpf, radius), or (float, 0)
    where it is an IEEE special."""
    with mpmath.workprec(_FALLBACK_PREC):
        v = _b_add(_ball_of(float(F[b, j])), _lse_ball(ctx.expsums(F)[b]), sub=True)
        return (v.m, v.r) if v.finite else (float(v.m), 0)


# =========================================================================== the engine

def _canonical_r0(ctx: _Ctx) -> list:
    """The exact loss of every row, as a ball (or a float for the non-finite rules)."""
    x, t, B = ctx.x, ctx.t, ctx.B
    es = ctx.expsums(x)
    out: list = []
    for b in range(B):
        row = x[b]
        xt = float(row[t[b]])
        sp = _special_loss(row, xt)
        if sp is not None:
            out.append(_Ball(sp))
            continue
        e = es[b]
        D = _b_add(_Ball(e.top), _Ball(xt), sub=True)
        L = _b_log(_Ball(e.ctop)) if e.ctop > 1 else _Ball(0)
        if e.qman:
            q = _mpf_exact(e.qman, e.qexp)
            qb = _Ball(q, _up(abs(q) * e.qerr + _rnd(q)))
            w = _b_div(_b_mul(_b_exp(_b_add(_Ball(e.wsh), _Ball(e.top), sub=True)), qb),
                       _Ball(e.ctop))
            L = _b_add(L, _b_log(w, one_plus=True))
        out.append(_b_add(D, L))
    return out


def _special_loss(row: np.ndarray, xt: float) -> "float | None":
    """The exact loss by the non-finite rules (as the reference defines them), or None for a
    general row (finite target, >= 2 finite logits, no NaN or +inf)."""
    if np.isnan(row).any():
        return math.nan
    npinf = int((row == np.inf).sum())
    if npinf:
        if xt == np.inf:
            return 0.0 if npinf == 1 else math.nan
        return math.inf
    nfin = int(np.isfinite(row).sum())
    if xt == -np.inf:
        return math.inf if nfin else math.nan
    if nfin == 1:
        return 0.0
    return None


def _replays(ctx: _Ctx, trace: list[Step], comp: list) -> list[list]:
    """R_1 .. R_{N-1} (balls per row) at the current working precision."""
    B = ctx.B
    env0: dict[str, Any] = {"logits": ctx.x, "targets": ctx.t}
    Rs = []
    for i in range(1, len(trace)):
        env = dict(env0)
        for j in range(i):
            env[trace[j].name] = comp[j]
        for s in trace[i:]:
            env[s.name] = _exact_step(ctx, s, [env[src] for src in s.sources])
        Rs.append(_final_values(env[trace[-1].name], B))
    return Rs


def _target_ok(r: _Ball, tol: "mpmath.mpf") -> bool:
    if r.unresolved:
        return False
    if not mpmath.isfinite(r.m):
        return True
    return r.r <= tol


def _ulp_exp2(v: Fraction, f: Format) -> int:
    if v == 0:
        return f.emin - f.precision + 1
    top = _floor_log2(abs(v))
    return min(max(top, f.emin), f.emax) - (f.precision - 1)


class _Shared:
    """Work shared by several implementations on the same batch: the exact logits, the
    V-length caches and the exact losses R_0."""

    def __init__(self, logits: np.ndarray, targets: np.ndarray) -> None:
        self.ctx = _Ctx(_f64(logits), targets)
        self._r0: dict[int, list] = {}

    def r0(self, prec: int) -> list:
        if prec not in self._r0:
            with mpmath.workprec(prec):
                self._r0[prec] = _canonical_r0(self.ctx)
        return self._r0[prec]


def _prepare(logits: np.ndarray, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(logits)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"logits must have shape (B, V) or (V,), got shape {x.shape}")
    if x.dtype.kind not in "fV" and x.dtype.name != "bfloat16":
        raise ValueError(f"logits must be a float array, got dtype {x.dtype}")
    t = np.asarray(targets)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.shape != (x.shape[0],):
        raise ValueError(f"targets must have shape ({x.shape[0]},), got shape {t.shape}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {t.dtype}")
    return x, t.astype(np.int64)


def attribute(implementation: str, logits: np.ndarray, targets: Any, fmt: "str | Format", *,
              max_precision: int = 16384) -> list[RowAttribution]:
    """Per-step attribution of one step-wise implementation on a batch: one
    :class:`RowAttribution` per row.

    Args:
        implementation: a registry key (or import path) of a step-wise implementation.
        logits: (B, V) or (V,) array, ideally of the format's dtype (otherwise the
            implementation's "cast" step rounds it and is attributed like any other step; the
            exact loss is that of the values given).
        targets: (B,) integer class indices (or one integer for one row).
        fmt: the format the implementation computes in.
        max_precision: largest mpmath working precision (bits) tried before a row is flagged
            ``unresolved``.

    Raises:
        ValueError: an implementation that is not step-wise, bad shapes or dtypes.
    """
    return attribute_many([implementation], logits, targets, fmt,
                          max_precision=max_precision)[_impl_key(implementation)]


def _impl_key(implementation: Any) -> str:
    return get_implementation(implementation).key


def attribute_many(implementations: Sequence[str], logits: np.ndarray, targets: Any,
                   fmt: "str | Format", *, max_precision: int = 16384
                   ) -> dict[str, list[RowAttribution]]:
    """:func:`attribute` for several implementations on the same batch, sharing the exact
    loss and the V-length exact sums: {implementation key: rows}."""
    f = get_format(fmt)
    x, t = _prepare(logits, targets)
    impls = [get_implementation(k) for k in implementations]
    for impl in impls:
        if not impl.stepwise:
            raise ValueError(
                f"implementation {impl.key!r} is not step-wise (no trace); step-wise ones: "
                f"{', '.join(k for k, v in REGISTRY.items() if v.stepwise)}; use compare_fused "
                "for the fused torch kernel")
    if t.size and (t.min() < 0 or t.max() >= x.shape[1]):
        raise ValueError(f"targets must lie in [0, {x.shape[1]})")
    shared = _Shared(x, t)
    return {impl.key: _attribute_one(impl, x, t, f, shared, max_precision) for impl in impls}


def _attribute_one(impl: Any, x: np.ndarray, t: np.ndarray, f: Format, shared: _Shared,
                   max_precision: int) -> list[RowAttribution]:
    ctx = shared.ctx
    B = ctx.B
    trace: list[Step] = []
    computed = impl(x, t, f, trace=trace)
    comp = [_f64(s.output) for s in trace]
    locs = [_local(ctx, s) for s in trace]
    comp_loss = _f64(computed).reshape(B)

    # the exact loss, its accuracy target, and the tolerance of the other R_i
    prec = _START_PREC
    r0 = shared.r0(prec)
    while prec < max_precision and not all(_r0_ok(r, f) for r in r0):
        prec *= 2
        r0 = shared.r0(prec)
    # R_0 as a dyadic: the ball's midpoint rounded to 2**-130 relative (to 0 below 2**-20000,
    # far below every format), and its error bound in ULPs of the format
    R0: list = []
    R0err: list[float] = []
    uexps: list[int] = []
    for r in r0:
        if not r.finite:
            R0.append(None)
            R0err.append(0.0)
            uexps.append(_ulp_exp2(Fraction(0), f))
            continue
        e0 = int(mpmath.floor(mpmath.log(abs(r.m), 2))) if r.m != 0 else 0
        grid = max(e0 - 130, -20000)
        v = _quantize(r.m, grid) if r.m != 0 else Fraction(0)
        ue = _ulp_exp2(v, f)
        R0.append(v)
        uexps.append(ue)
        q = mpmath.ldexp(1, grid - 1) if r.m != 0 else mpmath.mpf(0)
        R0err.append(_ratio_up(r.r + q, ue))

    # R_1 .. R_{N-1} per row, at the smallest precision meeting the tolerance
    best: list = [None] * B
    best_prec = [0] * B
    p = _START_PREC
    while True:
        with mpmath.workprec(p):
            Rs = _replays(ctx, trace, comp)
            for b in range(B):
                if best[b] is not None:
                    continue
                tol = mpmath.ldexp(1, uexps[b] - _RI_BITS - 1) if R0[b] is not None else _INF
                if all(_target_ok(R[b], tol) for R in Rs) or p >= max_precision:
                    best[b] = [R[b] for R in Rs]
                    best_prec[b] = p
        if all(v is not None for v in best):
            break
        p = min(2 * p, max_precision)

    return [_assemble(impl.key, f, b, int(t[b]), trace, locs, r0[b], R0[b], R0err[b], uexps[b],
                      best[b], float(comp_loss[b]), max(best_prec[b], prec)) for b in range(B)]


def _r0_ok(r: _Ball, f: Format) -> bool:
    """R_0's radius is within 2**-101 of it and within 2**-65 of its ulp in f."""
    if r.unresolved:
        return False
    if not mpmath.isfinite(r.m) or r.r == 0:
        return True
    if r.m == 0:
        return r.r <= mpmath.ldexp(1, f.emin - f.precision - _RI_BITS)
    top = int(r.m._mpf_[2]) + int(r.m._mpf_[3]) - 1
    ue = min(max(top, f.emin), f.emax) - (f.precision - 1)
    return r.r <= min(abs(r.m) * mpmath.ldexp(1, -_R0_BITS), mpmath.ldexp(1, ue - _RI_BITS - 1))


def _assemble(key: str, f: Format, b: int, tb: int, trace: list[Step], locs: list[_Local],
              r0: _Ball, R0: Exact, R0err: float, uexp: int, mids: list, computed: float,
              prec: int) -> RowAttribution:
    N = len(trace)
    unit = Fraction(2) ** uexp
    grid = uexp - 2 * _RI_BITS       # the other R_i are rounded to 2**-128 ULP
    # R_0 .. R_N: a Fraction (finite, resolved), a float (inf / NaN) or None (unresolved);
    # errs: bounds on |R_i - true R_i| in ULPs
    vals: list[Any] = [R0 if R0 is not None else (None if r0.unresolved else float(r0.m))]
    errs: list[float] = [R0err]
    unresolved = r0.unresolved
    for ball in mids:
        if ball.unresolved:
            vals.append(None)
            errs.append(0.0)
            unresolved = True
        elif ball.finite:
            vals.append(_quantize(ball.m, grid))
            errs.append(_ratio_up(ball.r, uexp) + 2.0 ** (-2 * _RI_BITS - 1))
            unresolved |= R0 is not None and errs[-1] > 2.0 ** -_RI_BITS
        else:
            vals.append(float(ball.m))
            errs.append(0.0)
    vals.append(Fraction(computed) if math.isfinite(computed) else computed)
    errs.append(0.0)
    # a proven-exact step makes R_i and R_{i+1} the same number: one representative per
    # class of equal R's -- the computed value if R_N is in it, else R_0, else its first member
    cls = list(range(N + 1))
    for i in range(N):
        if locs[i].exact[b]:
            cls[i + 1] = cls[i]
    members: dict[int, list[int]] = {}
    for i, c in enumerate(cls):
        members.setdefault(c, []).append(i)
    for mem in members.values():
        j = N if N in mem else mem[0]
        for i in mem:
            vals[i], errs[i] = vals[j], errs[j]
    exact_loss = vals[0] if isinstance(vals[0], Fraction) else R0

    fins = [isinstance(v, Fraction) for v in vals]
    steps: list[StepAttribution] = []
    contribs: list[Exact] = []
    for i, s in enumerate(trace):
        lo = locs[i]
        a, c = vals[i], vals[i + 1]
        sep = fins[i] and fins[i + 1]
        if sep:
            d = c - a
            cu = float(d / unit)
            crel = float(d / exact_loss) if exact_loss else math.nan
        else:
            d = None
            cu = crel = c if (fins[i] and isinstance(c, float) and math.isinf(c)) else math.nan
        contribs.append(d)
        flags = [name for name, on in (("overflow", lo.overflow[b]),
                                       ("underflow", lo.underflow[b] > 0), ("nan", lo.nan[b]),
                                       ("cancellation", lo.cancel[b] is not None),
                                       ("mismatch", lo.mismatch[b]),
                                       ("undecided", lo.undecided[b])) if on]
        out = np.asarray(s.output)
        per_row = out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1)
        value = None
        if per_row:
            v = out.reshape(out.shape[0], -1)[b, 0]
            value = int(v) if out.dtype.kind in "iu" else float(np.float64(v))
        steps.append(StepAttribution(
            name=s.name, op=s.op, kind=OPS[s.op].split(":")[0],
            elements=1 if per_row else int(np.prod(out.shape[1:])), value=value,
            local_ulp=float(lo.ulp[b]), local_exact=bool(lo.exact[b]),
            correctly_rounded=bool(lo.cr[b]), not_correctly_rounded=int(lo.not_cr[b]),
            flags=flags, underflow_elements=int(lo.underflow[b]), cancellation_bits=lo.cancel[b],
            contribution=d, contribution_ulp=cu, contribution_rel=crel,
            contribution_error_ulp=(0.0 if cls[i] == cls[i + 1] else errs[i] + errs[i + 1])
            if sep else math.nan,
            separable=sep))
    every = all(fins)
    total = vals[N] - vals[0] if (fins[0] and fins[N]) else None
    if every and sum((c for c in contribs if c is not None), Fraction(0)) != total:
        # cannot happen: the partials telescope
        raise AssertionError("contributions do not add up to the total")
    if total is not None:
        tu = float(total / unit)
        trel = float(total / exact_loss) if exact_loss else math.nan
    else:
        cv = vals[N]
        tu = trel = cv if (fins[0] and isinstance(cv, float) and math.isinf(cv)) else math.nan
    if fins[0]:
        dom, share = _dominant(trace, contribs, every)
        dec = _decisive(trace, vals, total) if every else _first_nonfinite(trace, fins)
    else:  # the exact loss itself is not finite: no step is to blame
        dom, share, dec = None, math.nan, None
    if every and total is not None:
        absum = sum((abs(c) for c in contribs if c is not None), Fraction(0))
        ratio = float(absum / abs(total)) if total != 0 else (math.inf if absum else 1.0)
        cancelling = bool(absum > 2 * abs(total) and absum > unit)
    else:
        ratio, cancelling = math.nan, False
    if isinstance(exact_loss, Fraction):
        r0f = float(exact_loss)
    else:
        r0f = math.nan if (r0.unresolved or vals[0] is None) else float(r0.m)
    return RowAttribution(
        implementation=key, format=f.name, row=b, target=tb, computed=computed,
        computed_exact=Fraction(computed) if math.isfinite(computed) else None,
        exact_loss=exact_loss, exact_loss_float=r0f,
        exact_loss_error_ulp=errs[0] if isinstance(exact_loss, Fraction) else 0.0,
        ulp=float(unit), total=total, total_ulp=tu, total_rel=trel,
        partials=[v if isinstance(v, Fraction) else None for v in vals],
        partial_floats=[float(v) if isinstance(v, (Fraction, float)) else math.nan
                        for v in vals], steps=steps,
        separable=every, unresolved=unresolved, dominant=dom,
        dominant_share=share, decisive=dec, cancelling=cancelling, cancellation_ratio=ratio,
        precision_bits=prec)


def _dominant(trace: list[Step], contribs: list[Exact],
              separable: bool) -> tuple[Optional[str], float]:
    if not separable:
        for s, c in zip(trace, contribs, strict=True):
            if c is None:
                return s.name, math.nan
        return None, math.nan
    tot = sum((abs(c) for c in contribs if c is not None), Fraction(0))
    if tot == 0:
        return None, 0.0
    i = max(range(len(contribs)), key=lambda j: abs(contribs[j]))  # type: ignore[arg-type]
    return trace[i].name, float(abs(contribs[i]) / tot)  # type: ignore[arg-type]


def _decisive(trace: list[Step], vals: list, total: Exact) -> Optional[str]:
    if total is None or total == 0:
        return None
    half = abs(total) / 2
    r0 = vals[0]
    N = len(trace)
    for i in range(N):
        if all(abs((vals[j + 1] - r0) - total) <= half for j in range(i, N)):
            return trace[i].name
    return trace[-1].name


def _first_nonfinite(trace: list[Step], fins: list[bool]) -> Optional[str]:
    """Without a finite decomposition: the first step after which every R stays non-finite."""
    N = len(trace)
    for i in range(N):
        if all(not fins[j + 1] for j in range(i, N)):
            return trace[i].name
    return None


def summarize(rows: Sequence[RowAttribution]) -> AttributionSummary:
    """Across the rows of one implementation and format (see :class:`AttributionSummary`)."""
    if not rows:
        return AttributionSummary("", "", 0, 0)
    names = [s.name for s in rows[0].steps]
    out = AttributionSummary(rows[0].implementation, rows[0].format, len(rows),
                             sum(r.separable for r in rows))
    out.dominates = {n: 0 for n in names + ["none"]}
    out.decides = {n: 0 for n in names + ["none"]}
    for r in rows:
        out.dominates[r.dominant or "none"] = out.dominates.get(r.dominant or "none", 0) + 1
        out.decides[r.decisive or "none"] = out.decides.get(r.decisive or "none", 0) + 1
        out.cancelling_rows += int(r.cancelling)
    for i, n in enumerate(names):
        vals = [abs(r.steps[i].contribution_ulp) for r in rows
                if r.separable and i < len(r.steps)]
        out.mean_abs_contribution_ulp[n] = float(np.mean(vals)) if vals else math.nan
        out.max_abs_contribution_ulp[n] = float(np.max(vals)) if vals else math.nan
        loc = [r.steps[i].local_ulp for r in rows
               if i < len(r.steps) and math.isfinite(r.steps[i].local_ulp)]
        out.max_local_ulp[n] = float(np.max(loc)) if loc else math.nan
    return out


# =========================================================================== fused kernels

def compare_fused(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
                  fused: str = "torch", reference: "np.ndarray | None" = None
                  ) -> FusedComparison:
    """Share of rows where the fused kernel's loss is bit-identical to each composite of
    :data:`~precision_lab.implementations.composites.COMPOSITES` (+0 and -0 count as the same,
    NaN as NaN); with ``reference`` (correctly rounded losses) also a "correctly rounded"
    entry.  Logits of another dtype are first rounded once to the format."""
    from precision_lab.implementations.composites import COMPOSITES
    from precision_lab.numerics.metrics import ulp_distance

    f = get_format(fmt)
    x = np.asarray(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got shape {x.shape}")
    if x.dtype != f.np_dtype:
        x = round_float64_array(x.astype(np.float64), f)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    got = np.asarray(get_implementation(fused)(x, t, f)).astype(f.np_dtype)
    g64 = got.astype(np.float64)

    def match(val: np.ndarray, name: str, desc: str) -> CompositeMatch:
        val = np.asarray(val).astype(f.np_dtype)
        v64 = val.astype(np.float64)
        same = (got.view(f.uint_dtype) == val.view(f.uint_dtype)) | (np.isnan(g64) & np.isnan(v64))
        same |= (g64 == 0) & (v64 == 0)
        d = ulp_distance(got, val, f)
        dd = d[d != np.iinfo(np.uint64).max]
        return CompositeMatch(name, desc, int(same.sum()),
                              float(same.mean()) if same.size else math.nan,
                              int(dd.max()) if dd.size else 0)

    results = [match(fn(x, t, f), name, desc) for name, (desc, fn) in COMPOSITES.items()]
    if reference is not None:
        results.append(match(np.asarray(reference), "correctly rounded", "the reference"))
    results.sort(key=lambda r: -r.rate if math.isfinite(r.rate) else 0.0)
    return FusedComparison(fused, f.name, int(t.size), results,
                           results[0].name if results else None)
