"""Analyses of a results folder: what explains the errors, as numbers.

Each analysis reads a :class:`~precision_lab.experiment.store.Results` (its tables, its row facts
and, where it needs logits, the inputs the run stored) and returns a frozen dataclass, or None
when its pattern is absent from the data.  Nothing here writes prose or draws: the report turns
these records into sentences and figures.  Fields marked ``transient`` carry per-row arrays for
the plots and are left out of ``analyses.json``.

============================  ======================================================================
:func:`nonfinite`             inf/NaN results per implementation and format: how many, from which
                              value of the sweep axis, and how many came from non-finite inputs
:func:`overflow`              why a loss is inf/NaN: a single exp, the unshifted sum or the shifted
                              sum overflows (or the input was already non-finite)
:func:`cancellation`          results of exactly 0 for a non-zero loss: from which axis value, and
                              the implementation that keeps the loss
:func:`bounds`                measured errors against error bounds (a stated sample of rows)
:func:`attribution`           the step that decides the worst rows; torch's fused kernel against
                              composites modelled on its source (stated samples of rows)
:func:`trend`                 mean ULP error along a numeric sweep axis
:func:`formats_side_by_side`  correctly rounded share and mean error per format
:func:`explained`             every row of a tiny experiment explained (:mod:`.explain`)
============================  ======================================================================
"""


from __future__ import annotations

from typing import Any, Callable

from precision_lab.experiment.store import Results
from precision_lab.explain.analyses.bounds import (
    ATTRIBUTION_ROWS,
    BOUNDS_SAMPLE_ROWS,
    FUSED_SAMPLE_ROWS,
    AttributionAnalysis,
    BoundCheck,
    BoundsAnalysis,
    DecisiveSteps,
    FusedMatch,
    attribution,
    bounds,
)
from precision_lab.explain.analyses.cancellation import (
    CancellationAnalysis,
    Keeper,
    ZeroReturn,
    cancellation,
)
from precision_lab.explain.analyses.context import Context, context, input_nonfinite
from precision_lab.explain.analyses.nonfinite import (
    NonfiniteAnalysis,
    NonfiniteCount,
    OverflowAnalysis,
    OverflowGroup,
    nonfinite,
    overflow,
)
from precision_lab.explain.analyses.summary import (
    ExplainedRows,
    FormatsAnalysis,
    FormatShare,
    GradientAnalysis,
    GradientRow,
    TrendAnalysis,
    TrendFormat,
    explained,
    formats_side_by_side,
    gradients,
    trend,
)

__all__ = ["ANALYSES", "run_analyses", "Context", "context", "input_nonfinite",
           "NonfiniteCount", "NonfiniteAnalysis", "OverflowGroup", "OverflowAnalysis",
           "ZeroReturn", "Keeper", "CancellationAnalysis", "BoundCheck", "BoundsAnalysis",
           "DecisiveSteps", "FusedMatch", "AttributionAnalysis", "TrendFormat", "TrendAnalysis",
           "FormatShare", "FormatsAnalysis", "ExplainedRows", "GradientRow", "GradientAnalysis",
           "gradients", "nonfinite", "overflow",
           "cancellation", "bounds", "attribution", "trend", "formats_side_by_side", "explained",
           "BOUNDS_SAMPLE_ROWS", "ATTRIBUTION_ROWS", "FUSED_SAMPLE_ROWS"]

#: The analyses in the order they run: (name in analyses.json, function).
ANALYSES: list[tuple[str, Callable[[Context], Any]]] = [
    ("explained", explained),
    ("nonfinite", nonfinite),
    ("overflow", overflow),
    ("cancellation", cancellation),
    ("bounds", bounds),
    ("attribution", attribution),
    ("trend", trend),
    ("formats", formats_side_by_side),
    ("gradients", gradients),
]


def _no_progress(n: int = 1) -> None:
    return None


def run_analyses(res: Results, advance: Callable[[int], None] = _no_progress
                 ) -> tuple["Context | None", dict[str, Any]]:
    """Every analysis that applies: (the shared context, {name: record}).  An analysis that
    fails is recorded as {"failed": message}, so one broken analysis never hides the rest."""
    ctx = context(res)
    out: dict[str, Any] = {}
    for name, fn in ANALYSES:
        if ctx is not None:
            try:
                rec = fn(ctx)
            except Exception as exc:  # noqa: BLE001 - reported in the report, not raised
                rec = {"failed": f"{type(exc).__name__}: {exc}"}
            if rec is not None:
                out[name] = rec
        advance(1)
    return ctx, out
