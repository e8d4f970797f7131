"""Binary floating-point formats and correct rounding into them.

Each :class:`Format` carries the IEEE 754 facts of one binary format (precision, exponent
range, extreme values) and its numpy and torch dtypes.  :func:`round_to` rounds an exact
(mpmath or rational) value straight to a format -- round to nearest, ties to even, gradual
underflow, overflow to +-inf -- without passing through float64 first, so no double
rounding can occur.  :func:`round_float64_array` does the same, vectorized, for values that
are already float64.

Arrays from outside come in through ONE converter, :func:`as_array` (numpy and ml_dtypes
arrays, torch tensors including torch.bfloat16, sequences, scalars; non-native byte order
made native), and, where they must be values of a format, :func:`to_format` (each value
rounded once, straight to the format -- never float64 -> float32 -> bfloat16).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Union

import ml_dtypes
import mpmath
import numpy as np

__all__ = [
    "Format",
    "FORMATS",
    "FORMAT_NAMES",
    "get_format",
    "round_to",
    "round_float64_array",
    "as_array",
    "to_format",
    "ulp_exponent",
    "ulp_exponent_array",
    "ulp_of",
    "ordered_formats",
]

#: What :func:`round_to` and :func:`ulp_exponent` accept as an exact value: an mpmath number,
#: a Python int (any size), float, Fraction (any rational) or Decimal, a decimal string such
#: as "1.0000000596046448" or "-1e-100" (also "inf", "-inf", "nan"), or a numpy/ml_dtypes
#: scalar (float16, bfloat16, float32, float64, longdouble, integers).
Exact = Union[mpmath.mpf, int, float, Fraction, Decimal, str, np.generic]


@dataclass(frozen=True)
class Format:
    """One IEEE 754 binary format.

    Attributes:
        name: canonical name ("float16", "bfloat16", "float32", "float64").
        precision: significand bits p, including the hidden bit.
        emin: exponent of the smallest normal number (2**emin).
        emax: exponent of the largest binade (largest finite < 2**(emax+1)).
        bits: storage width in bits.
        np_dtype: numpy dtype (ml_dtypes.bfloat16 for bfloat16).
        uint_dtype: unsigned integer dtype of the same width, for bit patterns.
        torch_dtype_name: attribute name of the torch dtype (torch is imported lazily).
    """

    name: str
    precision: int
    emin: int
    emax: int
    bits: int
    np_dtype: np.dtype
    uint_dtype: np.dtype
    torch_dtype_name: str

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-p, the bound on the relative error of one correctly rounded operation."""
        return math.ldexp(1.0, -self.precision)

    @property
    def max_finite(self) -> float:
        """Largest finite value, (2 - 2**(1-p)) * 2**emax."""
        return math.ldexp(2.0 - math.ldexp(1.0, 1 - self.precision), self.emax)

    @property
    def smallest_normal(self) -> float:
        """2**emin."""
        return math.ldexp(1.0, self.emin)

    @property
    def smallest_subnormal(self) -> float:
        """2**(emin - p + 1), the spacing of the subnormal range."""
        return math.ldexp(1.0, self.emin - self.precision + 1)

    @property
    def torch_dtype(self):  # -> torch.dtype
        """The torch dtype (imports torch on first use)."""
        import torch

        return getattr(torch, self.torch_dtype_name)

    @property
    def overflow_threshold(self) -> mpmath.mpf:
        """Exact values with magnitude >= this round to inf: max_finite + half an ulp."""
        return mpmath.mpf(self.max_finite) + mpmath.ldexp(1, self.emax - self.precision)

    def __str__(self) -> str:
        return self.name


FORMATS: dict[str, Format] = {
    "float16": Format("float16", 11, -14, 15, 16, np.dtype(np.float16), np.dtype(np.uint16),
                      "float16"),
    "bfloat16": Format(
        "bfloat16", 8, -126, 127, 16, np.dtype(ml_dtypes.bfloat16), np.dtype(np.uint16), "bfloat16"
    ),
    "float32": Format("float32", 24, -126, 127, 32, np.dtype(np.float32), np.dtype(np.uint32),
                      "float32"),
    "float64": Format("float64", 53, -1022, 1023, 64, np.dtype(np.float64), np.dtype(np.uint64),
                      "float64"),
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def ordered_formats(names) -> list[str]:
    """Format names once each, in FORMAT_NAMES' order (float16, bfloat16, float32, float64);
    unknown names after them, alphabetically."""
    names = list(dict.fromkeys(names))
    last = len(FORMAT_NAMES)
    return sorted(names, key=lambda n: (FORMAT_NAMES.index(n) if n in FORMAT_NAMES else last, n))


_ALIASES = {"half": "float16", "fp16": "float16", "bf16": "bfloat16", "single": "float32",
            "fp32": "float32", "double": "float64", "fp64": "float64"}


def get_format(fmt: "str | Format | np.dtype | type") -> Format:
    """Look a format up by name ("float16", "bf16", ...), numpy dtype, or pass a Format through.

    Raises:
        ValueError: naming the unknown format and the allowed names.
    """
    if isinstance(fmt, Format):
        return fmt
    if isinstance(fmt, str):
        key = _ALIASES.get(fmt.lower(), fmt.lower())
        if key in FORMATS:
            return FORMATS[key]
    else:
        try:
            dt = np.dtype(fmt)
        except TypeError:
            dt = None
        for f in FORMATS.values():
            if dt == f.np_dtype:
                return f
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMAT_NAMES)}")


_DECIMAL = re.compile(r"\s*([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?\s*\Z")
_SPECIAL_WORDS = {"inf": "+inf", "+inf": "+inf", "infinity": "+inf", "+infinity": "+inf",
                  "-inf": "-inf", "-infinity": "-inf", "nan": "nan", "+nan": "nan",
                  "-nan": "nan"}

# Parts of an exact value: (sign, num, den, e2) with |x| = num * 2**e2 / den, num >= 1,
# den >= 1; or one of the words "nan", "+inf", "-inf", "0+", "0-".
_Parts = tuple[int, int, int, int] | str


def _parse_decimal(text: str) -> _Parts:
    """Exact parts of a decimal string; magnitudes far outside every format's range are
    decided from the exponent alone (so "1e-1000000000" does not build a 10**1e9)."""
    word = text.strip().lower()
    if word in _SPECIAL_WORDS:
        return _SPECIAL_WORDS[word]
    m = _DECIMAL.match(text)
    if m is None or not (m.group(2) or m.group(3)):
        raise ValueError(f"round_to: {text!r} is not a decimal number (allowed: digits with an "
                         "optional sign, point and exponent, e.g. '1.0000000596046448', "
                         "'-1e-100', or 'inf', '-inf', 'nan')")
    sign = 1 if m.group(1) == "-" else 0
    frac = m.group(3) or ""
    digits = (m.group(2) or "") + frac
    e10 = int(m.group(4) or 0) - len(frac)
    stripped = digits.lstrip("0")
    if not stripped:
        return "0-" if sign else "0+"
    mag = len(stripped) + e10  # 10**(mag - 1) <= |x| < 10**mag
    if mag > 400:  # > 1e399: beyond every format (float64 max ~1.8e308)
        return "-inf" if sign else "+inf"
    if mag < -400:  # < 1e-400: below half of every format's smallest subnormal
        return "0-" if sign else "0+"
    n = int(stripped)
    if e10 >= 0:
        return (sign, n * 10**e10, 1, 0)
    return (sign, n, 10**-e10, 0)


def _exact_parts(x: Any) -> _Parts:
    """The exact value of ``x`` as parts (see _Parts); raises TypeError for other types."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x[()]
    if isinstance(x, np.generic):
        if isinstance(x, np.bool_) or x.dtype.kind == "c":
            raise TypeError(f"round_to: a {x.dtype} scalar has no real value to round")
        if isinstance(x, np.integer):
            x = int(x)
        elif isinstance(x, np.floating) and np.finfo(x.dtype).nmant > 52 and np.isfinite(x):
            x = Fraction(*x.as_integer_ratio())  # longdouble: wider than float64, exact
        else:
            x = float(x)  # float16/32/64 and every ml_dtypes float widen exactly
    if isinstance(x, str):
        return _parse_decimal(x)
    if isinstance(x, Decimal):
        return _parse_decimal(str(x))  # not Fraction(x): Decimal("1e-999999999") is legal
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "+inf" if x > 0 else "-inf"
        if x == 0.0:
            return "0-" if math.copysign(1.0, x) < 0 else "0+"
        n, d = abs(x).as_integer_ratio()
        return (1 if x < 0 else 0, n, d, 0)
    if isinstance(x, (int, Fraction)) and not isinstance(x, bool):
        q = Fraction(x)
        if q == 0:
            return "0+"
        return (1 if q < 0 else 0, abs(q.numerator), q.denominator, 0)
    if isinstance(x, mpmath.mpf):  # never mpmath.mpf(x): that rounds to the working precision
        if mpmath.isnan(x):
            return "nan"
        if mpmath.isinf(x):
            return "+inf" if x > 0 else "-inf"
        if x == 0:
            return "0+"
        sign, man, exp, _ = x._mpf_
        return (sign, int(man), 1, int(exp))
    raise TypeError(f"round_to: cannot take the exact value of {type(x).__name__} {x!r}; "
                    "allowed: mpmath.mpf, int, float, Fraction, Decimal, a decimal string, "
                    "or a numpy/ml_dtypes scalar")


def _floor_log2(num: int, den: int, e2: int) -> int:
    """floor(log2(num * 2**e2 / den)) for num, den >= 1, exactly."""
    t = num.bit_length() - den.bit_length()
    if (num << -t if t < 0 else num) < (den << t if t > 0 else den):
        t -= 1
    return t + e2


def round_to(x: Exact, fmt: "str | Format") -> np.generic:
    """Round an exact value once, straight to the nearest value of ``fmt`` (ties to even).

    ``x`` may be anything :data:`Exact` names: an mpmath number (of any working precision),
    a Python int of any size, a Fraction (any rational, e.g. ``1 + Fraction(1, 2**24) +
    Fraction("1e-100")``, rounded as the exact rational, not through float64), a Decimal or
    a decimal string (its exact decimal value: "1.0000000596046448" is not first made a
    float64), a float (its exact binary value), or a numpy/ml_dtypes scalar of any float or
    integer type.  Magnitudes below the smallest normal round to the subnormal grid (gradual
    underflow) and may become +-0 with the sign of ``x``; magnitudes at or above
    max_finite + ulp/2 become +-inf, exactly as IEEE 754 round-to-nearest does.  NaN stays
    NaN, +-inf stays +-inf.  mpmath, int and Fraction have no negative zero, so their zero
    gives +0 ("-0" and -0.0 give -0).

    Returns:
        a numpy scalar of the format's dtype.

    Raises:
        TypeError: for a value of another type (bool, complex, ...); ValueError for a string
        that is not a decimal number.
    """
    f = get_format(fmt)
    parts = _exact_parts(x)
    dt = f.np_dtype
    if isinstance(parts, str):
        return {"nan": dt.type(np.nan), "+inf": dt.type(np.inf), "-inf": dt.type(-np.inf),
                "0+": dt.type(0.0), "0-": dt.type(-0.0)}[parts]
    sign, num, den, e2 = parts
    top = _floor_log2(num, den, e2)  # |x| in [2**top, 2**(top+1))
    if top > f.emax + 1:
        value = math.inf
    elif top < f.emin - f.precision - 1:  # |x| < 2**(emin - p): below half the spacing
        value = 0.0
    else:
        q = max(top, f.emin) - (f.precision - 1)  # exponent of the quantum (ulp) at x
        sh = e2 - q  # |x| / 2**q = num * 2**sh / den; |sh| is bounded by the input's size
        a, b = (num << sh, den) if sh >= 0 else (num, den << -sh)
        n, rem = divmod(a, b)
        if 2 * rem > b or (2 * rem == b and n & 1):
            n += 1
        if n and n.bit_length() - 1 + q > f.emax:
            value = math.inf
        else:
            value = math.ldexp(n, q) if n else 0.0  # exact: n < 2**(p+1) and q is in range
    return dt.type(-value if sign else value)


def round_float64_array(x: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """Round float64 values correctly (once, ties to even) to ``fmt``; vectorized.

    numpy's own casts are correctly rounded for float16 and float32, but a cast to bfloat16
    may pass through float32 (double rounding); this function scales each value so that its
    quantum becomes 1, rounds with rint (exact, ties to even), and scales back.  NaN, +-inf,
    and signed zeros are preserved; overflow gives +-inf.
    """
    f = get_format(fmt)
    x = np.asarray(x, dtype=np.float64)
    if f.name == "float64":
        return x.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        _, e = np.frexp(x)  # |x| in [2**(e-1), 2**e)
        q = np.maximum(e - 1, f.emin) - (f.precision - 1)
        q = np.where(np.isfinite(x) & (x != 0), q, 0)
        r = np.ldexp(np.rint(np.ldexp(x, -q)), q)
        r = np.where(np.abs(r) > f.max_finite, np.copysign(np.inf, x), r)
        r = np.where(x == 0, x, r)  # keeps -0
        r = np.copysign(r, x)  # rint of a small negative gives -0
    return r.astype(f.np_dtype)


def _is_torch_tensor(x: Any) -> bool:
    mod = type(x).__module__ or ""
    return (mod == "torch" or mod.startswith("torch.")) and hasattr(x, "detach")


def as_array(x: Any) -> np.ndarray:
    """A numpy array of ``x``'s values, unchanged: the one way into numerics for arrays.

    Accepts numpy arrays (any dtype, including ml_dtypes.bfloat16), torch tensors (any
    device, with or without grad; torch.bfloat16 becomes ml_dtypes.bfloat16 bit for bit;
    torch is never imported here), sequences and scalars.  A non-native byte order (e.g.
    '>f4') is converted to the native one, values unchanged.

    Raises:
        TypeError: a torch tensor of a dtype numpy has no counterpart for (e.g. float8).
    """
    if _is_torch_tensor(x):
        t = x.detach()
        if str(t.device) != "cpu":
            t = t.cpu()
        if str(t.dtype) == "torch.bfloat16":
            torch = sys.modules[type(x).__module__.split(".")[0]]
            bits = t.contiguous().view(torch.int16).numpy()
            return bits.view(np.uint16).view(FORMATS["bfloat16"].np_dtype)
        try:
            return t.numpy()
        except TypeError as exc:
            raise TypeError(f"cannot convert a torch tensor of dtype {t.dtype} to numpy: "
                            f"{exc}") from None
    a = np.asarray(x)
    if a.dtype.byteorder not in ("=", "|") and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def to_format(x: Any, fmt: "str | Format") -> np.ndarray:
    """``x`` (anything :func:`as_array` takes) as an array of ``fmt``'s dtype, every value
    rounded ONCE, straight to the format (ties to even).

    Values already of the format pass through unchanged (no copy).  Other binary floats
    (float16, bfloat16, float32, float64) are widened exactly to float64 and rounded once:
    float64 -> bfloat16 never passes through float32, where numpy/ml_dtypes' ``astype``
    rounds twice (1 + 2**-8 + 2**-40 would become 1.0, not 1 + 2**-7).  Integers beyond
    2**53, longdouble and object arrays (mpmath numbers, Fractions) are rounded element by
    element with :func:`round_to`.

    Raises:
        TypeError: booleans, complex numbers, strings and other non-numeric arrays.
    """
    f = get_format(fmt)
    a = as_array(x)
    if a.dtype == f.np_dtype:
        return a
    kind = a.dtype.kind
    if kind in "bcUSM" or (kind == "V" and a.dtype.names is not None):
        raise TypeError(f"cannot take {a.dtype} values as {f.name} numbers")
    if kind in "iu":
        exact64 = a.size == 0 or (int(a.min()) >= -2**53 and int(a.max()) <= 2**53)
    else:  # binary floats up to 64 bits; ml_dtypes floats have kind "V"
        exact64 = kind == "V" or (kind == "f" and np.finfo(a.dtype).nmant <= 52)
    if not exact64:  # wide ints, longdouble, objects: one exact rounding per element
        vals = a.ravel().tolist() if kind in "iuO" else list(a.ravel())
        return np.array([round_to(v, f) for v in vals], dtype=f.np_dtype).reshape(a.shape)
    w = a.astype(np.float64)  # exact: every such value is a float64
    if f.name == "bfloat16":
        return round_float64_array(w, f)
    with np.errstate(over="ignore"):  # overflow to +-inf is the correct rounding
        return w.astype(f.np_dtype)  # numpy's float64 -> float16/float32 casts round once


def ulp_exponent(x: Exact, fmt: "str | Format") -> int:
    """Exponent e with ulp(x) = 2**e: the spacing of ``fmt`` in the binade of the exact |x|.

    Below the smallest normal the subnormal spacing 2**(emin-p+1) is used; for x = 0 too.
    Values beyond the largest binade use the spacing of the top binade.  Raises on NaN/inf.
    """
    f = get_format(fmt)
    parts = _exact_parts(x)
    if isinstance(parts, str):
        if parts in ("0+", "0-"):
            return f.emin - f.precision + 1
        raise ValueError(f"ulp of {parts} is undefined")
    _, num, den, e2 = parts
    top = _floor_log2(num, den, e2)
    return min(max(top, f.emin), f.emax) - (f.precision - 1)


def ulp_exponent_array(hi: np.ndarray, fmt: "str | Format", lo: "np.ndarray | None" = None,
                       *, power_of_two: str = "above") -> np.ndarray:
    """Vectorized :func:`ulp_exponent` of values given as float64 ``hi`` (+ ``lo``).

    The value is the double-double hi + lo; its binade is hi's, except where hi is a power
    of two and lo is nonzero with the opposite sign: then the value lies just below hi, in
    the binade beneath.  Where hi is a power of two and ``lo`` is None (or 0), the value is
    taken as hi itself (``power_of_two="above"``) or, for a caller that only knows the
    value to within rounding and needs the SMALLER ulp to stay conservative (a bound
    converted to ULPs), as possibly below it (``power_of_two="below"``).  0 gets the
    subnormal spacing; NaN and inf get an undefined (but finite) exponent: mask them.
    Returns int64.
    """
    if power_of_two not in ("above", "below"):
        raise ValueError(f"power_of_two must be 'above' or 'below', not {power_of_two!r}")
    f = get_format(fmt)
    hi = np.asarray(hi, dtype=np.float64)
    lo = np.zeros_like(hi) if lo is None else np.asarray(lo, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        m, e = np.frexp(hi)
        pow2 = np.abs(m) == 0.5
        if power_of_two == "below":
            down = pow2 & ((lo == 0) | (np.signbit(lo) != np.signbit(hi)))
        else:
            down = pow2 & (lo != 0) & (np.signbit(lo) != np.signbit(hi))
        top = e.astype(np.int64) - 1 - down
        q = np.minimum(np.maximum(top, f.emin), f.emax) - (f.precision - 1)
        return np.where(hi == 0, f.emin - f.precision + 1, q).astype(np.int64)


def ulp_of(x: Exact, fmt: "str | Format") -> mpmath.mpf:
    """ulp(x) = 2**ulp_exponent(x, fmt), as an exact mpmath number."""
    return mpmath.ldexp(mpmath.mpf(1), ulp_exponent(x, fmt))
