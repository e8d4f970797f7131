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
terms exp(y_j - w) from a vectorized fixed-point kernel (:func:`~.exact._fx_exp`: 30-bit integer
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

Modules, each importing only the ones above it:

=============  ===========================================================================
``results``    :class:`RowAttribution`, :class:`StepAttribution`, :func:`summarize`,
               :class:`FusedComparison`; dyadic strings (:func:`dyadic_str`)
``exact``      the fixed-point exponential, error-free float transformations, exact sums
``balls``      ball arithmetic at mpmath's working precision
``replay``     lazy exact arrays and the exact value of one step
``local``      local errors of one step
``engine``     the telescoping decomposition: :func:`attribute`, :func:`attribute_many`
``fused``      :func:`compare_fused`
=============  ===========================================================================
"""

from __future__ import annotations

from precision_lab.explain.attribution.engine import attribute, attribute_many
from precision_lab.explain.attribution.exact import EPS_EXP_TERM
from precision_lab.explain.attribution.exact import _fx_exp as _fx_exp  # the tests measure it
from precision_lab.explain.attribution.fused import compare_fused
from precision_lab.explain.attribution.results import (
    AttributionSummary,
    CompositeMatch,
    FusedComparison,
    RowAttribution,
    StepAttribution,
    dyadic_str,
    parse_dyadic,
    summarize,
)

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
