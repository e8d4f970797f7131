"""What the analyses share: the folder's samples, row facts, groups and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from precision_lab.experiment.records import SummaryRow
from precision_lab.experiment.store import Results
from precision_lab.explain.data import (
    RowFactsData,
    SampleData,
    aggregate,
    identical_groups,
    numeric_axis,
    row_facts_data,
    sample_data,
)
from precision_lab.numerics.stats import ErrorStats

__all__ = ["Context", "context", "transient", "first_and_clean", "sample_idx",
           "input_nonfinite", "plain_points"]


def transient() -> Any:
    return field(default=None, metadata={"transient": True}, compare=False, repr=False)


@dataclass
class Context:
    """What the analyses share: the folder, its samples and row facts, the groups of
    bit-identical implementations and the aggregate statistics (computed once), all of the
    loss (gradients have their own analysis)."""

    res: Results
    data: SampleData
    facts: "RowFactsData | None"
    groups: list[list[str]]
    stats: dict[tuple[str, str], ErrorStats]
    axis: "str | None"
    reduction: str
    summary: list[SummaryRow]

    @property
    def has_inputs(self) -> bool:
        return self.res.has_inputs()

    @cached_property
    def plain(self) -> np.ndarray:
        """Per sample: whether its sweep point measures the plain loss of the stored logits
        (see :func:`plain_points`), the loss the step replays and error bounds are about."""
        return np.isin(self.data.point, sorted(plain_points(self.res)))


def plain_points(res: Results) -> set[int]:
    """The sweep points whose kernels compute the plain cross-entropy -log softmax(x)_t of
    the stored logits: no z-loss, soft-cap, label smoothing, ignored rows, class weights
    other than 1 or probability targets, and any padding masked.  The error bounds and the
    per-step attribution are derived for that loss only; other points are left out of them."""
    loss = res.manifest.config.get("loss") or {}
    top = res.manifest.config
    out = set()
    for p in res.manifest.points:
        v = {"pad_vocab_to": top.get("pad_vocab_to"), "pad_value": top.get("pad_value"),
             **loss, **p.get("params", {})}
        spread = v.get("weight_spread")
        if (v.get("targets", "index") == "index" and v.get("weight") is None
                and (spread is None or spread == 1)
                and not v.get("z_loss") and v.get("softcap") is None
                and not v.get("label_smoothing") and not v.get("ignore_fraction")
                and (v.get("pad_vocab_to") is None or v.get("pad_value") == "masked")):
            out.add(int(p["point"]))
    return out


def context(res: Results) -> "Context | None":
    d = sample_data(res)
    if d is None:
        return None
    summary = [r for r in res.summary() if r.quantity == "loss"]
    if len(res.manifest.points) == 1:  # the summary rows already hold these statistics
        stats = {(r.implementation, r.format): r.stats for r in summary}
    else:
        stats = aggregate(d)
    agreement = [r for r in res.agreement() if r.quantity == "loss"]
    return Context(res, d, row_facts_data(res), identical_groups(agreement, d.implementations),
                   stats, numeric_axis(summary),
                   str(res.manifest.config.get("reduction", "none")), summary)


def first_and_clean(values: np.ndarray, bad: np.ndarray) -> tuple[Any, Any]:
    """The first axis value with a bad sample, and the last value below it with none."""
    vals = np.unique(values)
    badv = [v for v in vals if bad[values == v].any()]
    if not badv:
        return None, None
    below = [v for v in vals if v < badv[0]]
    return float(badv[0]), (float(below[-1]) if below else None)



def sample_idx(n: int, k: int) -> np.ndarray:
    """A sorted uniform sample of ``k`` of ``n`` indices (fixed seed), or all of them."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=k, replace=False))


def input_nonfinite(ctx: Context) -> np.ndarray:
    """Per sample: whether its logits hold inf or NaN (from the row facts; with a reduction,
    whether the truth itself is inf or NaN)."""
    d = ctx.data
    if ctx.facts is not None and ctx.reduction == "none":
        idx = np.arange(d.computed.size)
        mx, mn = ctx.facts.of(d, idx, "row_max"), ctx.facts.of(d, idx, "row_min")
        return ~np.isfinite(mx) | ~np.isfinite(mn)
    return ~np.isfinite(d.exact_hi)

