"""Binary floating-point formats and correct rounding into them.

Each :class:`Format` carries the IEEE 754 facts of one binary format (precision, exponent
range, extreme values) and its numpy and torch dtypes.  :func:`round_to` rounds an exact
(mpmath or rational) value straight to a format -- round to nearest, ties to even, gradual
underflow, overflow to +-inf -- without passing through float64 first, so no double
rounding can occur.  :func:`round_float64_array` does the same, vectorized, for values that
are already float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

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
    "ulp_exponent",
    "ulp_of",
    "ordered_formats",
]

Exact = Union[mpmath.mpf, int, float, Fraction, np.floating]


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
    "float16": Format("float16", 11, -14, 15, 16, np.dtype(np.float16), np.dtype(np.uint16), "float16"),
    "bfloat16": Format(
        "bfloat16", 8, -126, 127, 16, np.dtype(ml_dtypes.bfloat16), np.dtype(np.uint16), "bfloat16"
    ),
    "float32": Format("float32", 24, -126, 127, 32, np.dtype(np.float32), np.dtype(np.uint32), "float32"),
    "float64": Format("float64", 53, -1022, 1023, 64, np.dtype(np.float64), np.dtype(np.uint64), "float64"),
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def ordered_formats(names) -> list[str]:
    """Format names once each, in FORMAT_NAMES' order (float16, bfloat16, float32, float64);
    unknown names after them, alphabetically."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (FORMAT_NAMES.index(n) if n in FORMAT_NAMES else len(FORMAT_NAMES), n))


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


def _as_exact(x: Exact) -> "tuple[int, int, int] | str":
    """Return (sign, mantissa, exponent) with |x| = mantissa * 2**exponent, or 'nan'/'+inf'/'-inf'/'0+'/'0-'."""
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "+inf" if x > 0 else "-inf"
        if x == 0.0:
            return "0-" if math.copysign(1.0, x) < 0 else "0+"
        m, e = math.frexp(abs(x))
        return (1 if x < 0 else 0, int(m * 2**53), e - 53)
    if isinstance(x, (int, Fraction)) and not isinstance(x, bool):
        x = Fraction(x)
        if x == 0:
            return "0+"
        sign = 1 if x < 0 else 0
        x = abs(x)
        if x.denominator & (x.denominator - 1):
            raise ValueError("round_to needs a dyadic rational (denominator a power of two); "
                             "pass an mpmath value instead")
        return (sign, x.numerator, -(x.denominator.bit_length() - 1))
    if not isinstance(x, mpmath.mpf):
        x = mpmath.mpf(x)  # mpmath.mpf(an mpf) would round it to the working precision
    if mpmath.isnan(x):
        return "nan"
    if mpmath.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if x == 0:
        return "0+"
    sign, man, exp, _ = x._mpf_
    return (sign, int(man), int(exp))


def round_to(x: Exact, fmt: "str | Format") -> np.generic:
    """Round an exact value once, straight to the nearest value of ``fmt`` (ties to even).

    ``x`` may be an mpmath number (of any working precision), a Python int, a dyadic
    Fraction, or a float (taken as its exact binary value).  Magnitudes below the smallest
    normal round to the subnormal grid (gradual underflow) and may become +-0 with the sign
    of ``x``; magnitudes at or above max_finite + ulp/2 become +-inf, exactly as IEEE 754
    round-to-nearest does.  NaN stays NaN, +-inf stays +-inf.  mpmath has no negative zero,
    so an mpmath zero gives +0.

    Returns:
        a numpy scalar of the format's dtype.
    """
    f = get_format(fmt)
    parts = _as_exact(x)
    dt = f.np_dtype
    if isinstance(parts, str):
        return {"nan": dt.type(np.nan), "+inf": dt.type(np.inf), "-inf": dt.type(-np.inf),
                "0+": dt.type(0.0), "0-": dt.type(-0.0)}[parts]
    sign, man, exp = parts
    top = exp + man.bit_length() - 1  # |x| in [2**top, 2**(top+1))
    q = max(top, f.emin) - (f.precision - 1)  # exponent of the quantum (ulp) at x
    if exp >= q:
        n = man << (exp - q)
    elif q - exp > man.bit_length():  # |x| < quantum/2: rounds to zero; avoids 1 << huge
        n = 0
    else:
        shift = q - exp
        n = man >> shift
        rem = man & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and n & 1):
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


def ulp_exponent(x: Exact, fmt: "str | Format") -> int:
    """Exponent e with ulp(x) = 2**e: the spacing of ``fmt`` in the binade of the exact |x|.

    Below the smallest normal the subnormal spacing 2**(emin-p+1) is used; for x = 0 too.
    Values beyond the largest binade use the spacing of the top binade.  Raises on NaN/inf.
    """
    f = get_format(fmt)
    parts = _as_exact(x)
    if isinstance(parts, str):
        if parts in ("0+", "0-"):
            return f.emin - f.precision + 1
        raise ValueError(f"ulp of {parts} is undefined")
    _, man, exp = parts
    top = exp + man.bit_length() - 1
    return min(max(top, f.emin), f.emax) - (f.precision - 1)


def ulp_of(x: Exact, fmt: "str | Format") -> mpmath.mpf:
    """ulp(x) = 2**ulp_exponent(x, fmt), as an exact mpmath number."""
    return mpmath.ldexp(mpmath.mpf(1), ulp_exponent(x, fmt))
