"""torch's fused cross-entropy kernel beside the composites that model it: the share of rows
where the fused loss is bit-identical to each."""

from __future__ import annotations

import math

import numpy as np

from precision_lab.explain.attribution.results import CompositeMatch, FusedComparison
from precision_lab.implementations import get_implementation
from precision_lab.numerics.formats import Format, get_format, round_float64_array

# =========================================================================== fused kernels

def compare_fused(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
                  fused: str = "torch", reference: "np.ndarray | None" = None
                  ) -> FusedComparison:
    """Share of rows where the fused kernel's loss is bit-identical to each composite of
    :data:`~precision_lab.implementations.composites.COMPOSITES` (+0 and -0 count as the same,
    NaN as NaN); with ``reference`` (correctly rounded losses) also a "correctly rounded"
    entry.  Logits of another dtype are first rounded once to the format."""
    from precision_lab.implementations.composites import COMPOSITES
    from precision_lab.numerics.metrics import ulp_distance

    f = get_format(fmt)
    x = np.asarray(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must have shape (B, V), got shape {x.shape}")
    if x.dtype != f.np_dtype:
        x = round_float64_array(x.astype(np.float64), f)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    got = np.asarray(get_implementation(fused)(x, t, f)).astype(f.np_dtype)
    g64 = got.astype(np.float64)

    def match(val: np.ndarray, name: str, desc: str) -> CompositeMatch:
        val = np.asarray(val).astype(f.np_dtype)
        v64 = val.astype(np.float64)
        same = (got.view(f.uint_dtype) == val.view(f.uint_dtype)) | (np.isnan(g64) & np.isnan(v64))
        same |= (g64 == 0) & (v64 == 0)
        d = ulp_distance(got, val, f)
        dd = d[d != np.iinfo(np.uint64).max]
        return CompositeMatch(name, desc, int(same.sum()),
                              float(same.mean()) if same.size else math.nan,
                              int(dd.max()) if dd.size else 0)

    results = [match(fn(x, t, f), name, desc) for name, (desc, fn) in COMPOSITES.items()]
    if reference is not None:
        results.append(match(np.asarray(reference), "correctly rounded", "the reference"))
    results.sort(key=lambda r: -r.rate if math.isfinite(r.rate) else 0.0)
    return FusedComparison(fused, f.name, int(t.size), results,
                           results[0].name if results else None)
