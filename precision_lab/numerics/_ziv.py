"""The Ziv machinery the certified references share: precisions, the result record, the
error raised when a value stays undecided, and the enclosure helpers (rounding both ends,
staying in one binade, double-double midpoints).

Private to :mod:`precision_lab.numerics`: :mod:`.reference` (the plain loss),
:mod:`.semantics` (training semantics) and :mod:`.gradient` build on it, so that the
reference can dispatch to the others without an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np
from mpmath import libmp

from precision_lab.numerics.formats import Format, round_to

__all__ = ["START_PRECISION", "MAX_PRECISION", "ReferenceError", "ReferenceResult",
           "next_precision"]

#: Working precision (bits) of the first exact attempt; it doubles on every retry.
START_PRECISION = 128
#: The last precision tried (the doubling is capped here); a row still ambiguous at it
#: raises :class:`ReferenceError`.
MAX_PRECISION = 10240
#: The exact path also refines until the enclosure is this narrow (relative), so that
#: ``hi + lo`` carries ~100 correct bits.
_HILO_BITS = 102

def next_precision(W: int) -> "int | None":
    """The precision of Ziv's next attempt after one at ``W`` bits: double it, capped at
    :data:`MAX_PRECISION` (the cap itself is tried); None once the cap has been tried."""
    return None if W >= MAX_PRECISION else min(2 * W, MAX_PRECISION)


_FLOOR, _CEIL, _NEAR = libmp.round_floor, libmp.round_ceiling, libmp.round_nearest
_ONE = libmp.fone

class ReferenceError(ArithmeticError):  # noqa: A001 -- the name the contract asks for
    """A row (or a reduction) whose enclosure still straddles a rounding boundary of the
    target format, or a power of two, at :data:`MAX_PRECISION` bits.  The message names the
    row index."""


@dataclass
class ReferenceResult:
    """The reference loss of a batch, with the unrounded truth next to it.

    Attributes:
        values: the correctly rounded losses, fmt's dtype; shape (B,) for reduction "none",
            shape () (a 0-d array) for "mean" and "sum".
        hi, lo: float64 arrays (same shape as ``values``), a double-double approximation of
            the exact unrounded loss: |hi + lo - L| <= err.  Exact path: relative error
            <= 2**-100 (absolute <= 2**-1074 where L is below the float64 normal range).
            Fast path: relative error bound about (V + 750) * 2**-53 for float16/bfloat16/
            float32 targets (lo = 0; 2**-37, i.e. 2**-14 ULP of float32, at V = 32768)
            and about 2**-80 for float64 targets; the enclosure [hi+lo-err, hi+lo+err]
            never contains a rounding midpoint of the target format, nor a power of two
            (so hi + lo is in L's binade: see the module docstring).  inf/NaN where the
            loss is (hi = inf, err = inf where L exceeds the float64 range).
        err: float64, a rigorous bound on |hi + lo - L| (0 where L is known exactly).
        slow_rows: rows evaluated by the exact (mpmath, Ziv) path, including, for a
            reduction, rows re-evaluated there to decide the rounding of the sum/mean;
            special rows are not counted.
        special_rows: rows decided exactly by the non-finite rules (NaN, +-inf, zero loss).
        rows: B, the number of samples.
        method: the method used ("exact" or "fast").
    """

    values: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray
    slow_rows: int
    special_rows: int
    rows: int
    method: str


def _mpf(raw: tuple) -> mpmath.mpf:
    return mpmath.mp.make_mpf(raw)


_TWO_M1022 = libmp.from_man_exp(1, -1022)


def _one_binade(enc: tuple[tuple, tuple]) -> bool:
    """Whether every value strictly inside the enclosure (lo, hi) -- L is irrational, so
    never an end -- has the same binade [2**k, 2**(k+1)), or all lie below 2**-1022."""
    lo, hi = enc
    if libmp.mpf_le(hi, _TWO_M1022):
        return True
    if lo[1] == 0 or lo[0]:  # zero or negative: no binade below
        return False
    # lo = man * 2**exp with bc bits: 2**(exp + bc - 1) <= lo < 2**(exp + bc)
    return libmp.mpf_le(hi, libmp.from_man_exp(1, lo[2] + lo[3]))


def _round_open(enc: tuple[tuple, tuple], f: Format):
    """Rounded ends of an enclosure lo < L < hi known to be strict (L is irrational).

    A bound can sit exactly on a rounding midpoint while L is beyond it: L = d + 1e-1e9
    with d = m - x_t a midpoint of the format, where D + tiny rounded to W bits is D and
    ties-to-even would round the wrong way.  Rounding lo + eps and hi - eps instead
    changes nothing unless a bound is a midpoint, and then gives L's rounding: a bound
    x = man * 2**e that is not a midpoint (k + 1/2) 2**q is at least 2**min(e, q - 1) away
    from every midpoint, and q - 1 >= mag(x) - 54 for every format here."""
    out = []
    for x, neg in ((enc[0], 0), (enc[1], 1)):
        if x[1]:  # nonzero
            x = libmp.mpf_add(x, (neg, 1, min(x[2], x[2] + x[3] - 64) - 1, 1), 0)
        out.append(round_to(_mpf(x), f))
    return out[0], out[1]


def _hilo(enc: tuple[tuple, tuple]) -> tuple[float, float, float]:
    """(hi, lo, err) of an enclosure: hi + lo the midpoint to ~106 bits, err a bound.

    For an enclosure within one binade (see _one_binade), hi + lo stays in that binade: if
    the midpoint rounds up to the power of two above it and the remainder underflows to a
    zero lo (which carries no sign to tell ulp_error), hi is taken one float64 lower."""
    mid = libmp.mpf_shift(libmp.mpf_add(enc[0], enc[1], 0), -1)
    half = libmp.mpf_shift(libmp.mpf_sub(enc[1], enc[0], 0), -1)
    hi = float(round_to(_mpf(mid), "float64"))
    if not math.isfinite(hi):
        return hi, 0.0, math.inf
    rest = libmp.mpf_sub(mid, libmp.from_float(hi), 0)
    lo = float(round_to(_mpf(rest), "float64"))
    if lo == 0.0 and rest[0] and math.frexp(hi)[0] == 0.5:
        hi = float(np.nextafter(hi, 0.0))
        rest = libmp.mpf_sub(mid, libmp.from_float(hi), 0)
        lo = float(round_to(_mpf(rest), "float64"))
    resid = libmp.mpf_abs(libmp.mpf_sub(rest, libmp.from_float(lo), 0))
    bound = libmp.mpf_add(half, resid, 60, _CEIL)
    if bound == libmp.fzero:
        return hi, lo, 0.0
    # to_float flushes values below the float64 range to 0: keep it an upper bound
    return hi, lo, float(np.nextafter(libmp.to_float(bound, rnd=_CEIL), np.inf))


def _float_enclosure(hi: float, lo: float, err: float) -> tuple[tuple, tuple]:
    """Exact raw-mpf enclosure [hi + lo - err, hi + lo + err] (never below 0)."""
    c = libmp.mpf_add(libmp.from_float(hi), libmp.from_float(lo), 0)
    e = libmp.from_float(err)
    low = libmp.mpf_sub(c, e, 0)
    if libmp.mpf_lt(low, libmp.fzero):
        low = libmp.fzero
    return low, libmp.mpf_add(c, e, 0)


