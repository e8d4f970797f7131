"""A test oracle for cross-entropy kernels: assert the result against the truth, in ULPs.

Kernel test suites compare with a float32/float64 recomputation under hand-picked tolerances
(rtol 5e-2 in bfloat16, atol 3e-2 in float16, ...).  :func:`assert_cross_entropy_close`
compares with the correctly rounded, certified truth of the very logits the kernel saw and
states the bound in ULPs of the result's format, so a test fails exactly when the kernel
gets worse than the bound, and says where::

    import torch
    import torch.nn.functional as F
    from precision_lab.testing import assert_cross_entropy_close

    def test_cross_entropy_float16():
        torch.manual_seed(0)
        x = (3 * torch.randn(4096, 10)).to(torch.float16)
        t = torch.randint(0, 10, (4096,))
        loss = F.cross_entropy(x, t, reduction="none")      # the kernel under test
        assert_cross_entropy_close(loss, x, t, "float16", max_ulp=4)

On failure the AssertionError lists every failing row, as scipy's mpmath test harness lists
bad points, one line per row (wrapped here; torch 2.13 on CPU, the test above)::

    cross-entropy in float16: 50 of 4096 rows fail max_ulp=4 (worst: row 3688, 576.7 ULP)
      row 57: logits [-1.23242, -4.85547, 1.52344, ..., -3.77344, -3.25391] target 3
          => 0.007782 != 0.007713 (17.68 ULP, 18 apart)
      row 62: logits [6.64453, -0.410156, -3.05469, ..., -0.284912, 3.30273] target 0
          => 0.03925 != 0.03946 (6.636 ULP, 7 apart)
      ...

As a pytest plugin (``pytest -p precision_lab.testing``, or ``pytest_plugins =
["precision_lab.testing"]`` in a conftest.py) it adds the fixture ``cross_entropy_close``: the
same function, which also records the worst ULP error each test asserted, printed at the end
of the session.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np

from precision_lab.numerics.formats import as_array, get_format, to_format
from precision_lab.numerics.metrics import categorize, ulp_distance, ulp_error
from precision_lab.numerics.reference import cross_entropy_detailed

__all__ = ["assert_cross_entropy_close", "LOSS_DEFAULTS"]

#: Keywords of torch.nn.functional.cross_entropy and their defaults; a keyword at its default
#: is not passed to the reference (``reduction`` defaults to per-row losses here).
LOSS_DEFAULTS: dict[str, Any] = {"weight": None, "ignore_index": -100, "reduction": "none",
                                 "label_smoothing": 0.0}


def _is_default(name: str, value: Any) -> bool:
    d = LOSS_DEFAULTS[name]
    if d is None:
        return value is None
    try:
        return bool(value == d)
    except (TypeError, ValueError):
        return False


def _reference_keywords(loss_keywords: dict[str, Any]) -> dict[str, Any]:
    """The non-default loss keywords, checked against what the reference accepts."""
    unknown = sorted(k for k in loss_keywords if k not in LOSS_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown loss keyword {unknown[0]!r}; allowed: "
                        f"{', '.join(LOSS_DEFAULTS)} (torch.nn.functional.cross_entropy's)")
    chosen = {k: v for k, v in loss_keywords.items() if not _is_default(k, v)}
    params = inspect.signature(cross_entropy_detailed).parameters
    missing = sorted(k for k in chosen if k not in params)
    if missing:
        raise TypeError(f"the reference (precision_lab.numerics.reference."
                        f"cross_entropy_detailed) does not support {missing[0]}="
                        f"{chosen[missing[0]]!r} yet; it accepts "
                        f"{', '.join(p for p in params if p in LOSS_DEFAULTS)}")
    return {k: (as_array(v) if k == "weight" else v) for k, v in chosen.items()}


def _format(fmt: Any) -> Any:
    """The format of ``fmt``, a name, numpy dtype or torch dtype (torch.float16 -> float16)."""
    mod = type(fmt).__module__ or ""
    if mod == "torch" or mod.startswith("torch."):
        return get_format(str(fmt).rsplit(".", 1)[-1])
    return get_format(fmt)


def _short(row: np.ndarray) -> str:
    vals = [f"{v:.6g}" for v in row.astype(np.float64)]
    if len(vals) > 6:
        vals = vals[:3] + ["..."] + vals[-2:]
    return "[" + ", ".join(vals) + "]"


def assert_cross_entropy_close(values: Any, logits: Any, targets: Any, fmt: Any, *,
                               max_ulp: float, **loss_keywords: Any) -> float:
    """Assert that ``values`` are within ``max_ulp`` ULPs of the exact cross-entropy.

    Args:
        values: what the kernel returned: per-row losses, shape (B,) (or one value with
            ``reduction="mean"``/``"sum"``); numpy, ml_dtypes or torch.  Values of another
            dtype than ``fmt`` are rounded once to ``fmt`` first.
        logits: the (B, V) logits the kernel saw, any float dtype; their exact values are the
            input of the truth.
        targets: (B,) integer class indices.
        fmt: the format of the result: "float16", "bfloat16", "float32", "float64", or a
            numpy or torch dtype.
        max_ulp: the bound on |value - exact| / ulp(exact), in ULPs of ``fmt`` at the exact
            loss (0.5 means correctly rounded; ulp below the smallest normal is the subnormal
            spacing).
        **loss_keywords: torch.nn.functional.cross_entropy's keywords (``weight``,
            ``ignore_index``, ``reduction``, ``label_smoothing``); the ones at torch's default
            are ignored, the others passed to the reference.

    Returns:
        The largest ULP error (0 where both are the same infinity; NaN if no value is
        finite).

    Raises:
        AssertionError: a value exceeds ``max_ulp``, is inf/NaN where the truth is finite, or
            finite where the truth is not; lists every failing row (index, logits, target,
            computed, correctly rounded truth, ULP error).
        TypeError: an unknown loss keyword, or one the reference does not support yet.
        ValueError: ``max_ulp`` negative or NaN, or shapes that do not fit.
    """
    if not isinstance(max_ulp, (int, float)) or math.isnan(max_ulp) or max_ulp < 0:
        raise ValueError(f"max_ulp must be a number >= 0 (0.5: correctly rounded), got "
                         f"{max_ulp!r}")
    f = _format(fmt)
    kw = _reference_keywords(loss_keywords)
    x = as_array(logits)
    t = as_array(targets)
    ref = cross_entropy_detailed(x, t, f, **kw)
    truth = np.asarray(ref.values).reshape(-1)
    c = to_format(as_array(values), f)
    if c.size != truth.size:
        raise ValueError(f"values has {c.size} entries, the truth {truth.size} (logits "
                         f"{x.shape}, reduction {kw.get('reduction', 'none')!r})")
    c = c.reshape(-1)
    hi, lo = np.asarray(ref.hi).reshape(-1), np.asarray(ref.lo).reshape(-1)
    with np.errstate(invalid="ignore"):
        cat = categorize(c, truth)
        err = ulp_error(c, hi, f, exact_lo=lo)
    err = np.where(cat == "inf_match", 0.0, err)
    c_nan = np.isnan(c.astype(np.float64))
    bad = np.isin(cat, ("overflow", "nan", "missed_inf")) | ((cat == "undefined") & ~c_nan) \
        | (np.isin(cat, ("finite", "inf_match")) & ~(err <= max_ulp))
    finite_err = err[np.isfinite(err)]
    worst = float(finite_err.max()) if finite_err.size else float("nan")
    if not bad.any():
        return worst
    idx = np.flatnonzero(bad)
    dist = ulp_distance(c, truth, f)
    reduced = kw.get("reduction", "none") != "none"
    x2 = x.reshape(x.shape[0], -1) if x.ndim == 2 else x.reshape(1, -1)
    lines = []
    for i in idx.tolist():
        what = (f"{kw['reduction']} of {x.shape[0]} rows" if reduced
                else f"row {i}: logits {_short(x2[i])} target {int(t.reshape(-1)[i])}")
        e = (f"{err[i]:.4g} ULP, {int(dist[i])} apart" if np.isfinite(err[i])
             else str(cat[i]))
        # str() of the format's scalar: the shortest decimal that reads back as that value
        lines.append(f"  {what} => {str(c[i])} != {str(truth[i])} ({e})")
    n = truth.size
    unit = "values" if reduced else "rows"
    fin = idx[np.isfinite(err[idx])]
    if fin.size:
        w = int(fin[np.argmax(err[fin])])
        where = "" if reduced else f"row {w}, "
        head = (f"cross-entropy in {f.name}: {idx.size} of {n} {unit} fail max_ulp={max_ulp:g} "
                f"(worst: {where}{err[w]:.4g} ULP)")
    else:
        head = (f"cross-entropy in {f.name}: {idx.size} of {n} {unit} fail max_ulp={max_ulp:g} "
                f"(all of them inf/NaN where the truth is not, or the reverse)")
    raise AssertionError(head + "\n" + "\n".join(lines))


# --------------------------------------------------------------------------- pytest plugin

_RECORDED: list[tuple[str, str, float]] = []

try:  # the plugin part needs pytest; the function above does not
    import pytest
except ImportError:  # pragma: no cover - pytest is a test dependency
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def cross_entropy_close(request: Any) -> Callable[..., float]:
        """:func:`assert_cross_entropy_close`, recording the worst ULP error each test
        asserted (printed at the end of the session)."""

        def check(values: Any, logits: Any, targets: Any, fmt: Any, *, max_ulp: float,
                  **loss_keywords: Any) -> float:
            worst = assert_cross_entropy_close(values, logits, targets, fmt, max_ulp=max_ulp,
                                               **loss_keywords)
            _RECORDED.append((request.node.nodeid, _format(fmt).name, worst))
            return worst

        return check

    def pytest_terminal_summary(terminalreporter: Any) -> None:
        """One line per test that used the fixture: its format and worst ULP error."""
        if not _RECORDED:
            return
        worst: dict[tuple[str, str], float] = {}
        for node, fm, e in _RECORDED:
            k = (node, fm)
            if k not in worst or (not math.isnan(e) and not e <= worst[k]):
                worst[k] = e
        terminalreporter.section("cross-entropy ULP errors (precision_lab.testing)")
        for (node, fm), e in sorted(worst.items()):
            terminalreporter.write_line(f"{node}: {fm}, worst {e:.4g} ULP")
