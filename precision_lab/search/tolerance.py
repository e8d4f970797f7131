"""From measured worst cases to the tolerances of ``torch.testing.assert_close``.

``assert_close(actual, expected, rtol=R, atol=A)`` passes where |actual - expected| <=
A + R |expected|.  If an implementation's ULP error against the exact loss L is at most E,
and ``expected`` is the correctly rounded truth r (|r - L| <= ulp(L) / 2), then

    |actual - r| <= (E + 1/2) ulp(L),

and ulp(L) <= 2**(1-p) |L| <= 2**(1-p) |r| / (1 - 2**-p) for L at or above the smallest normal
2**emin, while ulp(L) = 2**(emin-p+1) below it.  Hence

    rtol = (E + 1/2) 2**(1-p) / (1 - 2**-p),    atol = (E + 1/2) 2**(emin-p+1)

make ``assert_close`` pass wherever the ULP error is at most E (p the precision, 2**emin the
smallest normal of the format).  E comes from an exhaustive slice (then the tolerances hold on
every input of that slice) or from a search (a lower bound: they hold on every input found,
and a kernel may need more).  :func:`tolerance` also reports the worst case itself (absolute
and relative error) and whether torch's default tolerances for the dtype, and tolerances test
suites pick by hand (:data:`HAND_PICKED`), would pass it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from precision_lab.numerics.formats import get_format

__all__ = ["TORCH_DEFAULTS", "HAND_PICKED", "Tolerance", "tolerance", "tolerances_for_ulp"]

#: torch.testing.assert_close's default (rtol, atol) per dtype (torch 2.x documentation).
TORCH_DEFAULTS: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5), "bfloat16": (1.6e-2, 1e-5), "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7)}


#: Tolerances kernel test suites pick by hand, per format: (label, rtol, atol); where a suite
#: sets only one of the two, the other is torch's default for the dtype.
HAND_PICKED: dict[str, list[tuple[str, float, float]]] = {
    "float16": [("atol 3e-2 (torch's CrossEntropyLoss ModuleInfo, float16 on CPU)", 1e-3,
                 3e-2)],
    "bfloat16": [("rtol 5e-2 (Liger-Kernel's bfloat16 cross-entropy tests)", 5e-2, 1e-5)],
}


def _round_up(v: float, digits: int = 2) -> float:
    """``v`` rounded up to ``digits`` significant decimal digits."""
    if v <= 0 or not math.isfinite(v):
        return v
    e = math.floor(math.log10(v)) - digits + 1
    r = math.ceil(v / 10.0 ** e - 1e-9) * 10.0 ** e
    return float(f"{r:.{digits}g}")


def tolerances_for_ulp(max_ulp: float, fmt: str) -> tuple[float, float]:
    """(rtol, atol) for ``assert_close`` against the correctly rounded truth that hold wherever
    the ULP error is at most ``max_ulp`` (see the module docstring), rounded up to two
    significant digits."""
    f = get_format(fmt)
    k = max_ulp + 0.5
    rtol = k * math.ldexp(1.0, 1 - f.precision) / (1 - math.ldexp(1.0, -f.precision))
    atol = k * f.smallest_subnormal
    return _round_up(rtol), _round_up(atol)


@dataclass
class Tolerance:
    """Tolerances for one implementation and format, with the evidence.

    Attributes:
        max_ulp_error: E, the largest ULP error measured.
        bound: "upper" (exhaustive: proven over ``covers``) or "lower" (search).
        rtol, atol: see the module docstring.
        worst: the input that reaches E (logits, target, computed, reference, ...).
        abs_error, rel_error: of ``computed`` against the correctly rounded truth on it.
        checks: other tolerances tried on the worst case: {name, rtol, atol, passes}.
    """

    implementation: str
    format: str
    classes: int
    max_ulp_error: float
    bound: str
    covers: str
    source: str
    rtol: float
    atol: float
    worst: dict[str, Any]
    abs_error: float
    rel_error: "float | None"
    checks: list[dict[str, Any]] = field(default_factory=list)

    def assert_close_call(self) -> str:
        return (f"torch.testing.assert_close(actual, expected, rtol={self.rtol:g}, "
                f"atol={self.atol:g})")

    def text(self) -> str:
        kind = ("proven maximum over " if self.bound == "upper" else "worst found by ") + \
            self.covers
        w = self.worst
        lines = [
            f"{self.implementation} in {self.format}, V = {self.classes}: largest ULP error "
            f"{self.max_ulp_error:.6g} ({kind}; {self.source})",
            f"  input: logits {w['logits']} target {w['target']}",
            f"  computed {w['computed']!r}, correctly rounded truth {w['reference']!r}: "
            f"|difference| {self.abs_error:.3g}"
            + (f", relative {self.rel_error:.3g}" if self.rel_error is not None else ""),
            f"  tolerances that pass wherever the ULP error is at most {self.max_ulp_error:.6g}:"
            f" rtol = {self.rtol:g}, atol = {self.atol:g}",
            f"  {self.assert_close_call()}"
            + ("" if self.bound == "upper" else
               "   # from a search: a lower bound; a kernel may need more"),
        ]
        for c in self.checks:
            lines.append(f"  {c['name']} (rtol {c['rtol']:g}, atol {c['atol']:g}): "
                         + ("passes" if c["passes"] else "FAILS") + " on this input")
        return "\n".join(lines)


def tolerance(implementation: str, fmt: str, classes: int, max_ulp: float,
              worst: dict[str, Any], *, bound: str, covers: str, source: str,
              extra_checks: "list[tuple[str, float, float]] | None" = None) -> Tolerance:
    """A :class:`Tolerance` from a measured worst case ``worst`` (a case dict with logits,
    target, computed, reference) whose ULP error is ``max_ulp``."""
    f = get_format(fmt)
    rtol, atol = tolerances_for_ulp(max_ulp, f.name)
    c, r = float(worst["computed"]), float(worst["reference"])
    diff = abs(c - r)
    rel = diff / abs(r) if r != 0 else None
    checks = []
    d_rtol, d_atol = TORCH_DEFAULTS[f.name]
    for name, rt, at in [("torch.testing.assert_close defaults", d_rtol, d_atol),
                         ("these tolerances", rtol, atol), *HAND_PICKED.get(f.name, []),
                         *(extra_checks or [])]:
        checks.append({"name": name, "rtol": rt, "atol": at,
                       "passes": bool(diff <= at + rt * abs(r))})
    return Tolerance(implementation, f.name, classes, float(max_ulp), bound, covers, source,
                     rtol, atol, worst, diff, rel, checks)
