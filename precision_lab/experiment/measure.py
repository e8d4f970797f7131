"""Measuring a batch: the one function the runner and ``explain`` share.

:func:`measure` takes logits already rounded to their format, shaped (S, B, V) (S batches of B
rows), integer targets (S, B), the result format and the implementations, and returns a
:class:`Measurement`: the certified reference (:class:`ReferenceValues`) and, per
implementation, what it computed with every metric of :mod:`precision_lab.numerics.metrics`
against that reference (:class:`Metrics`).  With ``reduction = "none"`` there is one value per
row (S * B); with "mean" or "sum" one per batch (S): an implementation that declares
``own_reduction`` reduces its own way, the others' per-sample losses are reduced with the seed's
loop (:func:`precision_lab.numerics.sums.reduce_in_format`).

:func:`row_facts` gives the facts of each logit row that the analyses need (largest and
smallest logit, the target's logit, lse), computed once while the rows are in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from precision_lab.implementations import Implementation
from precision_lab.numerics.formats import Format, get_format
from precision_lab.numerics.metrics import (
    bits_of_error,
    categorize,
    relative_error,
    ulp_distance,
    ulp_error,
)
from precision_lab.numerics.reference import cross_entropy_detailed
from precision_lab.numerics.sums import reduce_in_format

__all__ = ["ReferenceValues", "Metrics", "Measurement", "reference_values", "evaluate",
           "metrics_of", "measure", "row_facts"]


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


def reference_values(x: np.ndarray, t: np.ndarray, f: Format, reduction: str) -> ReferenceValues:
    """The certified reference of (S, B, V) logits: per row for "none", per batch otherwise."""
    S, B, V = x.shape
    if reduction == "none":
        r = cross_entropy_detailed(x.reshape(S * B, V), t.reshape(S * B), f, reduction="none")
        return ReferenceValues(np.asarray(r.values, dtype=f.np_dtype).reshape(-1),
                               np.asarray(r.hi, np.float64).reshape(-1),
                               np.asarray(r.lo, np.float64).reshape(-1),
                               np.asarray(r.err, np.float64).reshape(-1), int(r.slow_rows))
    vals, his, los, errs, slow = [], [], [], [], 0
    for s in range(S):
        r = cross_entropy_detailed(x[s], t[s], f, reduction="mean" if reduction == "mean"
                                   else "sum")
        vals.append(np.asarray(r.values, dtype=f.np_dtype).reshape(-1)[0])
        his.append(float(np.asarray(r.hi).reshape(-1)[0]))
        los.append(float(np.asarray(r.lo).reshape(-1)[0]))
        errs.append(float(np.asarray(r.err).reshape(-1)[0]))
        slow += int(r.slow_rows)
    return ReferenceValues(np.asarray(vals, f.np_dtype), np.asarray(his), np.asarray(los),
                           np.asarray(errs), slow)


def evaluate(impl: Implementation, x: np.ndarray, t: np.ndarray, f: Format, reduction: str,
             device: str = "cpu") -> np.ndarray:
    """The implementation on every batch of (S, B, V) logits: (S * B,) losses for "none",
    (S,) reduced values otherwise.  ``device`` applies to implementations that declare it;
    the others run where they always run (numpy code: the CPU)."""
    if device.split(":")[0] not in impl.capabilities.devices:
        device = "cpu"
    out = []
    for s in range(x.shape[0]):
        if reduction == "none":
            out.append(impl(x[s], t[s], f, device=device))
        elif impl.capabilities.own_reduction:
            out.append(impl(x[s], t[s], f, reduction=reduction, device=device).reshape(1))
        else:
            per = impl(x[s], t[s], f, device=device)
            out.append(np.asarray([reduce_in_format(per, reduction, f)], dtype=f.np_dtype))
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
            reduction: str = "none", device: str = "cpu",
            keep_going: bool = False) -> Measurement:
    """Measure every implementation on (S, B, V) logits (already in their format) and (S, B)
    targets against the certified reference in ``fmt``.

    With ``keep_going`` an implementation that raises is recorded in ``errors`` instead of
    stopping the measurement (``explain`` uses it; the runner lets the error propagate)."""
    f = get_format(fmt)
    x = np.asarray(x)
    t = np.asarray(t, dtype=np.int64)
    if x.ndim != 3 or t.shape != x.shape[:2]:
        raise ValueError(f"measure needs logits (S, B, V) and targets (S, B), got {x.shape} "
                         f"and {t.shape}")
    ref = reference_values(x, t, f, reduction)
    results: dict[str, Metrics] = {}
    errors: dict[str, str] = {}
    for impl in impls:
        try:
            out = evaluate(impl, x, t, f, reduction, device)
        except Exception as exc:  # noqa: BLE001 - recorded only when asked to keep going
            if not keep_going:
                raise
            errors[impl.key] = f"{type(exc).__name__}: {exc}"
            continue
        results[impl.key] = metrics_of(out, ref, f)
    return Measurement(ref, results, errors)


def row_facts(x: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Per logit row (rows of the last axis flattened): ``row_max``, ``row_min``,
    ``target_logit`` and ``lse`` = log sum_j exp(x_j), all float64 (lse computed with the max
    shift, accurate to a few float64 ulps; +inf/NaN where the row holds them)."""
    V = x.shape[-1]
    x2 = np.asarray(x).reshape(-1, V).astype(np.float64)
    t1 = np.asarray(t).reshape(-1)
    rows = np.arange(x2.shape[0])
    with np.errstate(all="ignore"):
        m = x2.max(axis=1)
        mm = np.where(np.isfinite(m), m, 0.0)
        lse = mm + np.log(np.exp(x2 - mm[:, None]).sum(axis=1))
        lse = np.where(np.isfinite(m), lse, m)
    return {"row_max": m, "row_min": x2.min(axis=1), "target_logit": x2[rows, t1], "lse": lse}
