r"""Condition numbers of the cross-entropy loss and forward error bounds for its algorithms.

Notation: a row of logits :math:`x \in \mathbb{R}^n` (n = V classes), target t,
:math:`y = \mathrm{lse}(x) = \log\sum_i e^{x_i}`, softmax :math:`p_i = e^{x_i - y}`, and the
loss :math:`f(x) = y - x_t = -\log p_t \ge 0`.  u = 2**-p is the format's unit roundoff.
Everything here is vectorized over a batch (B, n) and evaluated in float64 from the logits
as given (exact: every format here widens exactly into float64).

Condition number (derived here; FIELD-NOTES 3 asked to check it)
-----------------------------------------------------------------
Perturb each logit relatively, :math:`\tilde x_i = x_i(1 + \delta_i)` with
:math:`|\delta_i| \le \epsilon`.  Since :math:`\partial y/\partial x_i = p_i`,

.. math:: \partial f/\partial x_i = p_i - [i = t],

so to first order :math:`f(\tilde x) - f(x) = \sum_i (p_i - [i=t])\, x_i \delta_i`, whose
largest magnitude over the allowed :math:`\delta` is :math:`\epsilon\sum_i |x_i|\,|p_i - [i=t]|`
(take :math:`\delta_i = \epsilon\,\mathrm{sign}(x_i(p_i - [i=t]))`).  Hence the componentwise
relative condition number is

.. math:: \kappa_f(x, t) = \frac{\sum_i |x_i|\,|p_i - [i = t]|}{|f(x)|}
          = \frac{|x_t|(1 - p_t) + \sum_{i \ne t} |x_i| p_i}{-\log p_t},

which is FIELD-NOTES' formula (confirmed; :func:`condition_number` is checked against a
high-precision finite difference in the tests), and likewise
:math:`\kappa_{lse}(x) = \sum_i |x_i| p_i / |y|`.  Note what it says about the confident
regime: when t is the argmax by a wide margin, :math:`1 - p_t \approx f` and
:math:`p_i \approx e^{x_i - x_t}`, so :math:`\kappa_f \approx |x_t| + \sum_{i\ne t}|x_i|p_i/f`,
a modest number (about 21.7 for x = [20, 0, 1, 2], t = 0).  A tiny loss is therefore NOT an
ill-conditioned problem: an algorithm that returns 0 there (relative error 1) is unstable,
and the cancellation in ``lse - x_t`` is the algorithm's doing, not the data's.
``1 - p_t`` is computed as :math:`\sum_{i\ne t} p_i` to avoid cancelling ourselves.

Bounds of Blanchard, Higham & Higham (IMA J. Numer. Anal. 41(4), 2021)
---------------------------------------------------------------------
Leading-order relative error bounds on the computed lse, in units of u (their Thm 3.2 and
Thm 4.2, as evaluated in their test script ``chop_test_softmax.m``):

* unshifted ``log(sum(exp(x)))``:        :math:`B^{lse}_{un} = 1 + (n + 1)/|y|`;
* shifted ``a + log1p(sum_{i!=k} exp(x_i - a))``: :math:`B^{lse}_{sh} = |y + n - \min x| / |y|`.

Extension to the loss (ours).  Both algorithms then compute :math:`\hat f = fl(\hat y - x_t)`;
``x_t`` is exact, so with :math:`|\hat y - y| \le B^{lse}|y|u` and one more rounding,

.. math:: |\hat f - f| \le B^{lse}|y|\,u + |f|\,u
          \quad\Rightarrow\quad
          B^{loss} = \frac{B^{lse}\,|y|}{|f|} + 1 \quad (\text{units of } u,\ \text{relative to } f),

i.e. the absolute error bound of the lse divided by |loss|, plus the final subtraction's
rounding.

A caveat found by measurement (``results/overflow_logit_scale``): BHH's shifted formula
:math:`|y + n - \min x|/|y|` can fall below 1, i.e. below the rounding of the final
``a + log1p(s)`` itself, when all logits are large and close together
(:math:`\min x > n`, e.g. logits around 700): then ``|y + n - min x| < |y|`` and the measured
error of the shifted lse exceeds it (by up to 32x there), in every format.  The leading-order
analysis behind it evidently assumes :math:`\min x \le n`, as in their MNIST data.  The
bounds derived below keep the :math:`u|y|` term and hold on every row measured.  With BHH's forms: unshifted :math:`(|y| + n + 1)/|f| + 1`, shifted
:math:`|y + n - \min x|/|f| + 1`.  Both explode as :math:`f \to 0`: that is the cancellation.

Bounds derived here for the registry's implementations (first order, no overflow)
------------------------------------------------------------------------------------
Each elementary operation is correctly rounded in the format (see
:mod:`precision_lab.implementations`); sums use a pairwise tree of depth
:math:`h = \lceil\log_2 n\rceil`, so a sum of positive terms has relative error
:math:`\le h u`.  With :math:`a = \max x` (index k), :math:`w_j = e^{x_j - a}`,
:math:`S' = \sum_j w_j`, :math:`p_j = w_j / S'`:

* ``lse`` (``fl(fl(a + fl(log s)) - x_t)``, s including the j = k term 1):
  ``fl(x_j - a)`` errs by at most :math:`u(a - x_j)`, which exp turns into a relative error
  :math:`u(a - x_j)` on :math:`w_j`, plus u for exp's own rounding (0 for j = k: exp(0) = 1);
  so :math:`\hat s = S'(1 + \eta)`,
  :math:`|\eta| \le u[h + \sum_{j\ne k} p_j(a - x_j + 1)]`; log adds :math:`u\log S'`
  (absolute), the add :math:`u|y|`, the final subtraction :math:`u|f|`:

  .. math:: |\hat f - f| \le u\Big[|f| + |y| + \log S' + h + \sum_{j\ne k} p_j (a - x_j + 1)\Big].

* ``lse_log1p`` (``fl(fl(a - x_t) + fl(log1p(s)))``, s without the k term):
  with :math:`S = S' - 1`, :math:`\hat s = S(1+\eta)`,
  :math:`|\eta| \le u[h + \sum_{j\ne k} (w_j/S)(a - x_j + 1)]`, and log1p maps it to
  :math:`S/(1+S)\,|\eta|` absolute; :math:`S/(1+S)\cdot w_j/S = p_j`:

  .. math:: |\hat f - f| \le u\Big[|f| + (a - x_t) + \log S' + (1 - p_k)h
            + \sum_{j\ne k} p_j (a - x_j + 1)\Big].

  When t = k the bracket is about :math:`2f + (1-p_k)(h + \ldots) \approx f(2 + h + \ldots)`,
  so the relative bound stays O(h) however small the loss: no cancellation.

* ``naive`` (``-log(exp(x_t) / sum(exp(x)))``, valid only while no exp overflows or
  underflows): :math:`e_t` and every :math:`e_j` carry u, the sum h u, the division u,
  and log turns a relative error r on p into an absolute error r, then adds :math:`u|f|`:

  .. math:: |\hat f - f| \le u\,[|f| + 2 + h + 1]  \;\;(\text{the } +1 \text{ from } e_t)\ .

  Same cancellation as lse: the absolute error stays O(u) while f -> 0.  With ``fmt`` given,
  the bound is inf (void) where max x exceeds log(max_finite) (an exp overflows), x_t lies
  below log(smallest normal) (e_t is subnormal), or the loss exceeds -log(smallest normal)
  (p = exp(-loss) is subnormal: 9.70 in float16) -- subnormals lose relative accuracy.

The derived bounds are first order; :func:`to_rigorous` applies the usual
:math:`B \mapsto B/(1 - Bu)` to cover the second-order terms for moderate B.  None of the
bounds holds where an intermediate overflows, or underflows below the normal range by more
than the term ``n * 2**(emin - p)`` added to the sum for ``lse``/``lse_log1p``.

Units: every bound function returns a float64 array of bounds on the RELATIVE error of the
loss in units of u.  :func:`to_ulps` converts such a bound to ULPs of the exact value (a
relative error of r*u at an exact value e is r*u*|e|/ulp(e) ULPs, between r/2 and r), so it
can be set beside the measured ULP errors; :func:`measured_in_u` converts a measured error
to the same units as the bounds.
"""

from __future__ import annotations

import math

import numpy as np

from precision_lab.numerics.formats import Format, get_format

__all__ = [
    "RowStats",
    "row_stats",
    "condition_number",
    "condition_number_lse",
    "bhh_lse_bound",
    "bhh_loss_bound",
    "derived_loss_bound",
    "DERIVED_ALGORITHMS",
    "to_rigorous",
    "to_ulps",
    "measured_in_u",
]


class RowStats:
    """float64 quantities of each row: a (max), k (argmax), w_j = exp(x_j - a), S' = sum w,
    p (softmax), y (lse), loss = (a - x_t) + log1p(S' - 1) (no cancellation), tail = 1 - p_t
    computed as sum_{j != t} p_j."""

    def __init__(self, logits: np.ndarray, targets: np.ndarray) -> None:
        x = np.asarray(logits).astype(np.float64)
        if x.ndim == 1:
            x = x[None, :]
        t = np.asarray(targets, dtype=np.int64).reshape(-1)
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"targets must have shape ({x.shape[0]},), got {np.shape(targets)}")
        self.x = x
        self.t = t
        self.n = x.shape[-1]
        rows = np.arange(x.shape[0])
        self.k = np.argmax(x, axis=-1)
        self.a = x[rows, self.k]
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            self.w = np.exp(x - self.a[:, None])
            rest = self.w.copy()
            rest[rows, self.k] = 0.0
            self.S_rest = rest.sum(axis=-1)  # sum_{j != k} w_j
            self.S = 1.0 + self.S_rest      # S' = sum_j w_j
            self.p = self.w / self.S[:, None]
            self.L = np.log1p(self.S_rest)   # log S'
            self.y = self.a + self.L
            self.xt = x[rows, t]
            self.loss = (self.a - self.xt) + self.L
            notp = self.p.copy()
            notp[rows, t] = 0.0
            self.tail = notp.sum(axis=-1)    # 1 - p_t, without cancellation


def row_stats(logits: np.ndarray, targets: np.ndarray) -> RowStats:
    return RowStats(logits, targets)


def condition_number(logits: np.ndarray, targets: np.ndarray, loss: "np.ndarray | None" = None
                     ) -> np.ndarray:
    """kappa_f(x, t) = sum_i |x_i| |p_i - [i = t]| / |loss| per row (see the module docstring).

    ``loss``: optionally the exact loss (e.g. the reference's ``hi``); by default it is
    computed in float64 as (max - x_t) + log1p(sum_{j != k} exp(x_j - max)), which does not
    cancel.  inf where the loss is 0."""
    r = RowStats(logits, targets)
    ax = np.abs(r.x)
    rows = np.arange(r.x.shape[0])
    others = ax * r.p
    others[rows, r.t] = 0.0  # sum over i != t directly: subtracting |x_t| p_t would cancel
    num = others.sum(axis=-1) + ax[rows, r.t] * r.tail
    f = r.loss if loss is None else np.asarray(loss, dtype=np.float64).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f != 0, num / np.abs(f), np.where(num == 0, 0.0, np.inf))


def condition_number_lse(logits: np.ndarray) -> np.ndarray:
    """kappa_lse(x) = sum_i |x_i| p_i / |lse(x)| per row; inf where lse(x) = 0."""
    x = np.asarray(logits).astype(np.float64)
    if x.ndim == 1:
        x = x[None, :]
    r = RowStats(x, np.zeros(x.shape[0], dtype=np.int64))
    num = (np.abs(r.x) * r.p).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r.y != 0, num / np.abs(r.y), np.inf)


def bhh_lse_bound(logits: np.ndarray, shifted: bool = True) -> np.ndarray:
    """BHH's leading-order relative error bound on the computed lse, units of u:
    shifted |y + n - min x| / |y|; unshifted 1 + (n + 1)/|y|."""
    x = np.asarray(logits).astype(np.float64)
    if x.ndim == 1:
        x = x[None, :]
    r = RowStats(x, np.zeros(x.shape[0], dtype=np.int64))
    y, n = r.y, r.n
    with np.errstate(divide="ignore", invalid="ignore"):
        if shifted:
            return np.abs(y + n - x.min(axis=-1)) / np.abs(y)
        return 1.0 + (n + 1) / np.abs(y)


def bhh_loss_bound(logits: np.ndarray, targets: np.ndarray, shifted: bool = True,
                   loss: "np.ndarray | None" = None) -> np.ndarray:
    """BHH's lse bound carried through the final subtraction: B_lse |y| / |f| + 1, relative
    to the loss f, units of u (module docstring)."""
    r = RowStats(logits, targets)
    f = r.loss if loss is None else np.asarray(loss, dtype=np.float64).reshape(-1)
    y = r.y
    with np.errstate(divide="ignore", invalid="ignore"):
        if shifted:
            abs_lse = np.abs(y + r.n - r.x.min(axis=-1))
        else:
            abs_lse = np.abs(y) + r.n + 1
        return abs_lse / np.abs(f) + 1.0


DERIVED_ALGORITHMS = ("lse", "lse_log1p", "naive")


def derived_loss_bound(logits: np.ndarray, targets: np.ndarray, algorithm: str,
                       fmt: "str | Format | None" = None, loss: "np.ndarray | None" = None
                       ) -> np.ndarray:
    """First-order bound on the relative error of the loss for the registry implementation
    ``algorithm`` ("lse", "lse_log1p", "naive"), units of u (derivations in the module
    docstring).  ``fmt`` adds the underflow allowance n * 2**(emin - p) / u to the sum's
    term for the shifted algorithms."""
    if algorithm not in DERIVED_ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; allowed: {', '.join(DERIVED_ALGORITHMS)}")
    r = RowStats(logits, targets)
    f = r.loss if loss is None else np.asarray(loss, dtype=np.float64).reshape(-1)
    h = math.ceil(math.log2(r.n)) if r.n > 1 else 0
    rows = np.arange(r.x.shape[0])
    under = 0.0
    if fmt is not None:
        F = get_format(fmt)
        under = r.n * math.ldexp(1.0, F.emin - F.precision) / F.unit_roundoff
    gap = r.a[:, None] - r.x
    pk = r.p[rows, r.k]
    terms = r.p * (gap + 1.0)
    terms[rows, r.k] = 0.0
    sub_exp = terms.sum(axis=-1)  # sum_{j != k} p_j (a - x_j + 1)
    if algorithm == "lse":
        abs_b = np.abs(f) + np.abs(r.y) + r.L + h + sub_exp + under
    elif algorithm == "lse_log1p":
        abs_b = np.abs(f) + (r.a - r.xt) + r.L + (1.0 - pk) * h + sub_exp + under
    else:
        abs_b = np.abs(f) + 3.0 + h
        if fmt is not None:
            # void (inf) where an exp overflows or exp(x_t) falls below the normal range
            F = get_format(fmt)
            with np.errstate(over="ignore"):
                void = ((r.a > math.log(F.max_finite)) | (r.xt < math.log(F.smallest_normal))
                        | (np.abs(f) > -math.log(F.smallest_normal)))
            abs_b = np.where(void, np.inf, abs_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f != 0, abs_b / np.abs(f), np.inf)


def to_rigorous(bound_u: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """B -> B / (1 - B u): covers the second-order terms of a first-order bound B (units of
    u) in the usual gamma-style way; inf where B u >= 1."""
    u = get_format(fmt).unit_roundoff
    b = np.asarray(bound_u, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b * u < 1, b / (1 - b * u), np.inf)


def _ulp_exp(exact: np.ndarray, f: Format) -> np.ndarray:
    _, e = np.frexp(np.abs(exact))
    q = np.minimum(np.maximum(e - 1, f.emin), f.emax) - (f.precision - 1)
    return np.where(exact == 0, f.emin - f.precision + 1, q)


def to_ulps(bound_u: np.ndarray, exact: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """A relative bound (units of u) at the exact value, as ULPs of the format there:
    r * u * |exact| / ulp(exact), which lies in [r/2, r) for normal values."""
    f = get_format(fmt)
    ex = np.asarray(exact, dtype=np.float64)
    b = np.asarray(bound_u, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return b * f.unit_roundoff * np.ldexp(np.abs(ex), -_ulp_exp(ex, f))


def measured_in_u(computed: np.ndarray, exact_hi: np.ndarray, fmt: "str | Format",
                  exact_lo: "np.ndarray | None" = None) -> np.ndarray:
    """|computed - exact| / |exact| / u, float64 (NaN unless both are finite; inf where the
    exact value is 0 and computed is not)."""
    from precision_lab.numerics.metrics import relative_error

    f = get_format(fmt)
    return relative_error(np.asarray(computed).astype(np.float64), exact_hi, exact_lo) / f.unit_roundoff
