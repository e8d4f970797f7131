"""precision_lab.report.text: how numbers, rates and names are written."""

from __future__ import annotations

import math

from precision_lab.report.text import fmt_num, fmt_pct, fmt_rate, join_names, round6


def test_percentages_never_round_to_the_ends() -> None:
    assert fmt_pct(0.9996) == "99.96%"
    assert fmt_pct(1.0) == "100%"
    assert fmt_pct(0.00004) == "0.004%"
    assert fmt_rate(993, 1000) == "99.3% (993/1000)"


def test_numbers_and_names() -> None:
    assert fmt_num(None) == "—" and fmt_num(3) == "3" and fmt_num(2.0) == "2"
    assert fmt_num(math.inf) == "inf" and fmt_num(math.nan) == "nan"
    assert fmt_num(0.000123456) == "1.235e-04" and fmt_num(1.23456) == "1.235"
    assert fmt_rate(0, 0) == "— (0/0)"
    assert join_names(["a"]) == "a" and join_names(["a", "b", "a", "c"]) == "a, b and c"
    assert round6(1.23456789) == 1.23457 and math.isinf(round6(math.inf))
