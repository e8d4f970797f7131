"""How numbers, rates and lists of names are written in findings, tables and reports.

* :func:`fmt_num`: a number with a few significant digits, NaN/inf spelled out;
* :func:`fmt_pct` / :func:`fmt_rate`: a rate as a percentage that never rounds to 0% or 100%
  unless it is, and with its counts ("99.3% (993/1000)");
* :func:`join_names`: "a", "a and b", "a, b and c";
* :func:`round6`: a measured value rounded to 6 significant digits, as findings quote it (and
  group equal values by it).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt_num", "fmt_pct", "fmt_rate", "join_names", "round6"]


def fmt_num(x: Any, digits: int = 4) -> str:
    """A short, honest rendering of a number: ints as ints, floats with ``digits`` significant
    digits, NaN/inf spelled out, None as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def fmt_pct(rate: float) -> str:
    """A rate in [0, 1] as a percentage that never rounds a non-total rate to 100% or a
    non-zero rate to 0%."""
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "—"
    p = 100.0 * float(rate)
    if p == 100.0 or p == 0.0:
        return f"{p:.0f}%"
    for d in (1, 2, 3, 4, 6):
        s = f"{p:.{d}f}"
        if float(s) not in (0.0, 100.0):
            return s + "%"
    return f"{p:.3g}%"


def fmt_rate(k: int, n: int) -> str:
    """'99.3% (993/1000)'."""
    if not n:
        return "— (0/0)"
    return f"{fmt_pct(k / n)} ({k}/{n})"


def join_names(names: list[str]) -> str:
    """Names joined as "a", "a and b" or "a, b and c" (duplicates dropped, order kept)."""
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def round6(v: float) -> float:
    """v rounded to 6 significant digits (non-finite values unchanged)."""
    return float(f"{v:.6g}") if math.isfinite(v) else v
