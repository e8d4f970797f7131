"""precision_lab.report.plots: the shared helpers the plots and the analyses' plots use."""

from __future__ import annotations

import math

from precision_lab.report.plots import log_y_wanted, same_curves


def test_same_curves_merge_lines_that_agree_to_three_digits() -> None:
    groups = same_curves({"a": ([1, 2], [0.31234, 5.0]), "b": ([1, 2], [0.31229, 5.0001]),
                          "c": ([1, 2], [0.3, 5.0]), "d": ([1, 3], [0.31234, 5.0])})
    assert list(groups.values()) == [["a", "b"], ["c"], ["d"]]
    assert next(iter(groups)) == ((1, 2), (0.312, 5.0))


def test_log_axis_only_for_a_wide_spread() -> None:
    assert not log_y_wanted([0.2, 0.5, 0, math.nan, None, 9.9])
    assert log_y_wanted([0.2, 11.0]) and not log_y_wanted([])
