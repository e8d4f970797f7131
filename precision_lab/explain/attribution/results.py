"""What attribution returns: the per-step and per-row records, their summary across rows, the
fused-kernel comparison records, and the JSON encoding of exact rationals as dyadic strings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Optional, Sequence, Union

import numpy as np

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
