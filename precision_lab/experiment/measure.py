"""Measuring a batch: the one function the runner and ``explain`` share.

:func:`measure` takes logits already rounded to their format, shaped (S, B, V) (S batches of B
rows), integer targets (S, B), the result format and the implementations, and returns a
:class:`Measurement`: the certified reference (:class:`ReferenceValues`) and, per
implementation, what it computed with every metric of :mod:`precision_lab.numerics.metrics`
against that reference (:class:`Metrics`).  With ``reduction = "none"`` there is one value per
row (S * B); with "mean" or "sum" one per batch (S): an implementation that declares
``own_reduction`` reduces its own way, the others' per-sample losses are reduced with the seed's
loop (:func:`precision_lab.numerics.sums.reduce_in_format`).

:class:`Presentation` is how the implementations receive the logits (layout, padded
vocabulary: :mod:`precision_lab.implementations.layouts`); the reference always takes the real
(B, V) logits, and gradients are cut back to their first V columns.

:func:`measure_linear` measures the fused linear cross-entropy (hidden states and a classifier
weight) against the certified loss of the exact product logits.

:func:`row_facts` gives the facts of each logit row that the analyses need (largest and
smallest logit, the target's logit, lse), computed once while the rows are in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np

from precision_lab.implementations import Implementation
from precision_lab.implementations.layouts import present
from precision_lab.implementations.llm import LinearImplementation
from precision_lab.numerics.formats import Format, get_format, round_to
from precision_lab.numerics.gradient import cross_entropy_grad_detailed
from precision_lab.numerics.metrics import (
    bits_of_error,
    categorize,
    relative_error,
    ulp_distance,
    ulp_error,
)
from precision_lab.numerics.reference import cross_entropy_detailed, uses_training_semantics
from precision_lab.numerics.semantics import reduction_denominator, validate
from precision_lab.numerics.sums import reduce_in_format

__all__ = ["ReferenceValues", "Metrics", "Measurement", "Presentation", "reference_values",
           "evaluate", "metrics_of", "measure", "measure_linear", "row_facts"]


@dataclass(frozen=True)
class Presentation:
    """How an implementation receives each batch's (B, V) logits: ``layout``
    ("contiguous", "transposed", "strided"), ``pad_vocab_to`` (None: no padding) and
    ``pad_value`` ("-inf", "masked" or a finite number); see
    :func:`precision_lab.implementations.layouts.present`.  The default is the logits as
    they are."""

    layout: str = "contiguous"
    pad_vocab_to: "int | None" = None
    pad_value: "str | float" = "-inf"

    @property
    def identity(self) -> bool:
        return self.layout == "contiguous" and self.pad_vocab_to is None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, V) logits as the kernel receives them: (B, V') with V' >= V."""
        if self.identity:
            return x
        return present(x, self.layout, self.pad_vocab_to, self.pad_value)


PLAIN = Presentation()


@dataclass(frozen=True)
class ReferenceValues:
    """The certified truth of a batch (one entry per measured value).

    Attributes:
        values: the correctly rounded losses, the format's dtype.
        hi, lo: float64 double-double approximation of the unrounded loss.
        err: float64 bound on |hi + lo - exact|.
        slow_rows: rows the reference had to evaluate on its exact (mpmath) path.
    """

    values: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    err: np.ndarray
    slow_rows: int


@dataclass(frozen=True)
class Metrics:
    """One implementation's values and their errors against the reference (see
    :mod:`precision_lab.numerics.metrics` for each measure's definition)."""

    computed: np.ndarray
    category: np.ndarray
    ulp_distance: np.ndarray
    ulp_error: np.ndarray
    bits_of_error: np.ndarray
    relative_error: np.ndarray


@dataclass(frozen=True)
class Measurement:
    """The reference and every implementation's metrics for one set of batches.

    ``errors`` maps an implementation that raised to its message (only with
    ``keep_going=True``)."""

    reference: ReferenceValues
    results: dict[str, Metrics]
    errors: dict[str, str] = field(default_factory=dict)


def _rows(t: np.ndarray, S: int, B: int) -> np.ndarray:
    """Targets of S batches as one batch of S * B rows (class indices or probabilities)."""
    return t.reshape(S * B, *t.shape[2:])


def reference_values(x: np.ndarray, t: np.ndarray, f: Format, reduction: str,
                     keywords: "dict[str, Any] | None" = None) -> ReferenceValues:
    """The certified reference of (S, B, V) logits: per row for "none", per batch otherwise;
    ``keywords`` are the loss keywords (see :mod:`precision_lab.numerics.semantics`)."""
    kw = keywords or {}
    S, B, V = x.shape
    if reduction == "none":
        r = cross_entropy_detailed(x.reshape(S * B, V), _rows(t, S, B), f, reduction="none",
                                   **kw)
        return ReferenceValues(np.asarray(r.values, dtype=f.np_dtype).reshape(-1),
                               np.asarray(r.hi, np.float64).reshape(-1),
                               np.asarray(r.lo, np.float64).reshape(-1),
                               np.asarray(r.err, np.float64).reshape(-1), int(r.slow_rows))
    vals, his, los, errs, slow = [], [], [], [], 0
    for s in range(S):
        r = cross_entropy_detailed(x[s], t[s], f, reduction="mean" if reduction == "mean"
                                   else "sum", **kw)
        vals.append(np.asarray(r.values, dtype=f.np_dtype).reshape(-1)[0])
        his.append(float(np.asarray(r.hi).reshape(-1)[0]))
        los.append(float(np.asarray(r.lo).reshape(-1)[0]))
        errs.append(float(np.asarray(r.err).reshape(-1)[0]))
        slow += int(r.slow_rows)
    return ReferenceValues(np.asarray(vals, f.np_dtype), np.asarray(his), np.asarray(los),
                           np.asarray(errs), slow)


def generic_reduce(per: np.ndarray, t: np.ndarray, f: Format, reduction: str, method: str,
                   keywords: "dict[str, Any] | None" = None, logits: "np.ndarray | None" = None
                   ) -> np.generic:
    """Reduce an implementation's per-sample losses of one batch the runner's way: sum them in
    the format by ``method`` (:func:`precision_lab.numerics.sums.reduce_in_format`); for
    "mean" divide by torch's denominator -- B, or with loss keywords the sum of the
    non-ignored targets' weights -- with one correct rounding."""
    kw = keywords or {}
    if reduction == "sum" or not uses_training_semantics(t, kw):
        return reduce_in_format(per, reduction, f, method)
    total = reduce_in_format(per, "sum", f, method)
    _, T, spec = validate(np.asarray(logits), t, **kw)
    D = reduction_denominator(T, spec)
    v = float(total)
    if not math.isfinite(v) or D == 0:
        with np.errstate(all="ignore"):
            return f.np_dtype.type(np.float64(v) / np.float64(float(D)))
    return round_to(Fraction(v) / D, f)


def evaluate(impl: Implementation, x: np.ndarray, t: np.ndarray, f: Format, reduction: str,
             device: str = "cpu", keywords: "dict[str, Any] | None" = None,
             presentation: Presentation = PLAIN) -> np.ndarray:
    """The implementation on every batch of (S, B, V) logits: (S * B,) losses for "none",
    (S,) reduced values otherwise.  ``device`` applies to implementations that declare it;
    the others run where they always run (numpy code: the CPU).  An implementation without
    its own reduction is reduced by :func:`generic_reduce` with its ``reduce_method``.
    Each batch reaches the implementation through ``presentation``."""
    kw = keywords or {}
    if device.split(":")[0] not in impl.capabilities.devices:
        device = "cpu"
    out = []
    for s in range(x.shape[0]):
        xs = presentation(x[s])
        if reduction == "none":
            out.append(impl(xs, t[s], f, device=device, **kw))
        elif impl.capabilities.own_reduction and impl.reduce_method == "own":
            out.append(impl(xs, t[s], f, reduction=reduction, device=device, **kw)
                       .reshape(1))
        else:
            per = impl(xs, t[s], f, device=device, **kw)
            method = "sequential" if impl.reduce_method == "own" else impl.reduce_method
            out.append(np.asarray([generic_reduce(per, t[s], f, reduction, method, kw, x[s])],
                                  dtype=f.np_dtype))
    return np.concatenate(out) if out else np.zeros(0, f.np_dtype)


def reference_grad(x: np.ndarray, t: np.ndarray, f: Format, reduction: str,
                   keywords: "dict[str, Any] | None" = None) -> ReferenceValues:
    """The certified gradient of (S, B, V) logits, flattened to S * B * V elements (each
    batch's own reduction for "mean"/"sum")."""
    kw = keywords or {}
    S, B, V = x.shape
    if reduction == "none":
        parts = [cross_entropy_grad_detailed(x.reshape(S * B, V), _rows(t, S, B), f,
                                             reduction="none", **kw)]
    else:
        parts = [cross_entropy_grad_detailed(x[s], t[s], f, reduction=reduction, **kw)
                 for s in range(S)]
    cat = lambda name: np.concatenate([np.asarray(getattr(g, name)).reshape(-1)  # noqa: E731
                                       for g in parts])
    return ReferenceValues(cat("values").astype(f.np_dtype), cat("hi"), cat("lo"), cat("err"),
                           sum(int(g.slow_elements) for g in parts))


def evaluate_grad(impl: Implementation, x: np.ndarray, t: np.ndarray, f: Format,
                  reduction: str, device: str = "cpu",
                  keywords: "dict[str, Any] | None" = None,
                  presentation: Presentation = PLAIN) -> np.ndarray:
    """The implementation's gradient on every batch, flattened to S * B * V elements (each
    batch through ``presentation``; the gradient of padded columns is cut off)."""
    kw = keywords or {}
    if device.split(":")[0] not in impl.capabilities.devices:
        device = "cpu"
    V = x.shape[-1]
    out = [np.asarray(impl.grad(presentation(x[s]), t[s], f, reduction=reduction,
                                device=device, **kw))[:, :V].reshape(-1)
           for s in range(x.shape[0])]
    return np.concatenate(out) if out else np.zeros(0, f.np_dtype)


def metrics_of(computed: np.ndarray, ref: ReferenceValues, f: Format) -> Metrics:
    """Every metric of ``computed`` against the reference."""
    with np.errstate(all="ignore"):
        cat = categorize(computed, ref.values)
        uerr = ulp_error(computed, ref.hi, f, exact_lo=ref.lo)
        rel = relative_error(computed.astype(np.float64), ref.hi, exact_lo=ref.lo)
        im = cat == "inf_match"
        return Metrics(computed, cat, ulp_distance(computed, ref.values, f),
                       np.where(im, 0.0, uerr), bits_of_error(computed, ref.values, f),
                       np.where(im, 0.0, rel))


def measure(x: np.ndarray, t: np.ndarray, fmt: "str | Format", impls: list[Implementation], *,
            reduction: str = "none", device: str = "cpu", keep_going: bool = False,
            keywords: "dict[str, Any] | None" = None, quantity: str = "loss",
            presentation: Presentation = PLAIN) -> Measurement:
    """Measure every implementation on (S, B, V) logits (already in their format) and (S, B)
    targets (or (S, B, V) probabilities) against the certified reference in ``fmt``:
    ``quantity`` "loss" (one value per row, or per batch with a reduction) or "grad" (every
    element of the gradient, flattened to S * B * V).  ``keywords``: the loss keywords.
    ``presentation``: how the implementations receive the logits (the reference takes them
    as they are).

    With ``keep_going`` an implementation that raises is recorded in ``errors`` instead of
    stopping the measurement (``explain`` uses it; the runner lets the error propagate)."""
    f = get_format(fmt)
    x = np.asarray(x)
    t = np.asarray(t)
    if t.ndim == 2:
        t = t.astype(np.int64)
    if x.ndim != 3 or t.shape[:2] != x.shape[:2] or t.ndim not in (2, 3):
        raise ValueError(f"measure needs logits (S, B, V) and targets (S, B) or (S, B, V), "
                         f"got {x.shape} and {t.shape}")
    grad = quantity == "grad"
    ref = (reference_grad if grad else reference_values)(x, t, f, reduction, keywords)
    run = evaluate_grad if grad else evaluate
    return _measure_each(impls, lambda impl: run(impl, x, t, f, reduction, device, keywords,
                                                 presentation), ref, f, keep_going)


def _measure_each(impls: Sequence[Any], compute: Callable[[Any], np.ndarray],
                  ref: ReferenceValues, f: Format, keep_going: bool) -> Measurement:
    """Every implementation's values (``compute(impl)``; an Implementation or a
    LinearImplementation, both with ``key``) against ``ref``; with
    ``keep_going`` an implementation that raises is recorded in ``errors``, not raised."""
    results: dict[str, Metrics] = {}
    errors: dict[str, str] = {}
    for impl in impls:
        try:
            out = compute(impl)
        except Exception as exc:  # noqa: BLE001 - recorded only when asked to keep going
            if not keep_going:
                raise
            errors[impl.key] = f"{type(exc).__name__}: {exc}"
            continue
        results[impl.key] = metrics_of(out, ref, f)
    return Measurement(ref, results, errors)


def measure_linear(hidden: np.ndarray, weight: np.ndarray, t: np.ndarray, fmt: "str | Format",
                   impls: "list[LinearImplementation]", *, device: str = "cpu",
                   keep_going: bool = False) -> tuple[Measurement, np.ndarray]:
    """Measure fused linear cross-entropy implementations on (S, B, K) hidden states and a
    (V, K) classifier weight (both already in a 16- or 32-bit format) with (S, B) targets:
    per row, against the correctly rounded loss in ``fmt`` of the exact logits
    hidden @ weight.T (:func:`precision_lab.numerics.exact_logits.exact_product`).

    Returns the measurement and the exact logits' float64 approximations hi (S, B, V),
    |hi - exact| <= a few float64 ulps (for the row facts)."""
    from precision_lab.numerics.exact_logits import cross_entropy_exact_logits, exact_product

    f = get_format(fmt)
    h = np.asarray(hidden)
    t = np.asarray(t).astype(np.int64)
    if h.ndim != 3 or t.shape != h.shape[:2] or np.ndim(weight) != 2:
        raise ValueError(f"measure_linear needs hidden (S, B, K), weight (V, K) and targets "
                         f"(S, B), got {h.shape}, {np.shape(weight)} and {t.shape}")
    S, B, _ = h.shape
    V = int(np.shape(weight)[0])
    logits = np.empty((S, B, V))
    vals, his, los, errs, slow = [], [], [], [], 0
    for s in range(S):
        exact = exact_product(h[s], weight)
        logits[s] = exact.hi_lo_err()[0]
        r = cross_entropy_exact_logits(exact, t[s], f)
        vals.append(np.asarray(r.values, f.np_dtype))
        his.append(np.asarray(r.hi, np.float64))
        los.append(np.asarray(r.lo, np.float64))
        errs.append(np.asarray(r.err, np.float64))
        slow += int(r.slow_rows)
        del exact
    ref = ReferenceValues(np.concatenate(vals), np.concatenate(his), np.concatenate(los),
                          np.concatenate(errs), slow)
    def compute(impl: Any) -> np.ndarray:
        dev = device if device.split(":")[0] in impl.capabilities.devices else "cpu"
        return np.concatenate([impl(h[s], weight, t[s], f, device=dev) for s in range(S)])

    return _measure_each(impls, compute, ref, f, keep_going), logits


def row_facts(x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per logit row (rows of the last axis flattened): ``target`` (the class index; for
    probability targets the most probable class), ``row_max``, ``row_min``, ``target_logit``
    (NaN for an ignored row) and ``lse`` = log sum_j exp(x_j), float64 (lse computed with the
    max shift, accurate to a few float64 ulps; +inf/NaN where the row holds them)."""
    V = x.shape[-1]
    x2 = np.asarray(x).reshape(-1, V).astype(np.float64)
    ta = np.asarray(t)
    target = (ta.reshape(-1, V).argmax(axis=1) if ta.ndim == x.ndim  # probabilities: the mode
              else ta.reshape(-1)).astype(np.int64)
    t1 = np.where((target >= 0) & (target < V), target, 0)  # ignored rows have no target
    rows = np.arange(x2.shape[0])
    with np.errstate(all="ignore"):
        m = x2.max(axis=1)
        mm = np.where(np.isfinite(m), m, 0.0)
        lse = mm + np.log(np.exp(x2 - mm[:, None]).sum(axis=1))
        lse = np.where(np.isfinite(m), lse, m)
    return {"target": target, "row_max": m, "row_min": x2.min(axis=1),
            "target_logit": np.where(t1 == target, x2[rows, t1], np.nan), "lse": lse}
