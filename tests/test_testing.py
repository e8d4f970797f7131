"""The test oracle for kernels (precision_lab.testing) against losses computed from the
definition in mpmath, and its pytest plugin run by pytester."""

from __future__ import annotations

import re

import mpmath
import numpy as np
import pytest
import torch
from oracles import exact_loss, ulp_in_binade

from precision_lab.numerics.formats import get_format
from precision_lab.testing import assert_cross_entropy_close

pytest_plugins = ["pytester"]


def _rows(n: int = 64, V: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (3 * rng.standard_normal((n, V))).astype(np.float16), rng.integers(0, V, n)


def _correctly_rounded(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, list]:
    """float16 losses within half an ulp of the exact ones (checked), and the exact ones."""
    f = get_format("float16")
    exact = [exact_loss(r, int(k)) for r, k in zip(x.astype(np.float64), t)]
    vals = np.array([np.float16(float(L)) for L in exact])
    with mpmath.workdps(420):
        for v, L in zip(vals, exact):
            assert abs(mpmath.mpf(float(v)) - L) < ulp_in_binade(L, 11, f.emin) / 2
    return vals, exact


def test_correctly_rounded_values_pass_at_half_an_ulp():
    x, t = _rows()
    vals, _ = _correctly_rounded(x, t)
    worst = assert_cross_entropy_close(vals, x, t, "float16", max_ulp=0.5)
    assert worst < 0.5
    # torch tensors are accepted as they are
    assert_cross_entropy_close(torch.from_numpy(vals), torch.from_numpy(x), torch.from_numpy(t),
                               torch.float16, max_ulp=0.5)


def test_every_failing_row_is_listed_with_its_numbers():
    x, t = _rows()
    vals, exact = _correctly_rounded(x, t)
    bad = [3, 17, 40]
    vals = vals.copy()
    for i, k in zip(bad, (3, 1, 12)):
        for _ in range(k):
            vals[i] = np.nextafter(vals[i], np.float16(np.inf))
    with pytest.raises(AssertionError) as info:
        assert_cross_entropy_close(vals, x, t, "float16", max_ulp=0.75)
    msg = str(info.value)
    lines = msg.splitlines()
    assert lines[0].startswith("cross-entropy in float16: 3 of 64 rows fail max_ulp=0.75")
    assert [int(m) for m in re.findall(r"^  row (\d+):", msg, re.M)] == bad
    f = get_format("float16")
    for i, line in zip(bad, lines[1:]):
        with mpmath.workdps(420):
            e = abs(mpmath.mpf(float(vals[i])) - exact[i]) / ulp_in_binade(exact[i], 11, f.emin)
        got = float(re.search(r"\(([0-9.e+]+) ULP", line).group(1))
        assert got == pytest.approx(float(e), rel=1e-3)
        assert f"=> {str(vals[i])} != " in line and f"target {t[i]}" in line
    assert "worst: row 40, " in lines[0]


def test_non_finite_results_fail_and_matching_infinities_pass():
    x = np.array([[0.0, 1.0], [60000.0, -60000.0], [1.0, 2.0]], np.float16)
    t = np.array([0, 1, 1])
    # the truth of row 1 is 120000 -> inf in float16; row 0 is finite
    vals = np.array([np.nan, np.inf, 0.3133], np.float16)
    with pytest.raises(AssertionError, match=r"1 of 3 rows fail .*\n  row 0: .* => nan != "):
        assert_cross_entropy_close(vals, x, t, "float16", max_ulp=1)
    vals[0] = np.float16(1.313)
    assert_cross_entropy_close(vals, x, t, "float16", max_ulp=1)


def test_a_reduced_value_is_checked_against_the_rounded_mean():
    x, t = _rows(16)
    exact = [exact_loss(r, int(k)) for r, k in zip(x.astype(np.float64), t)]
    with mpmath.workdps(420):
        mean = mpmath.fsum(exact) / len(exact)
    v = np.float32(float(mean))  # within half an ulp (a float64 hop, 2**-29 ulp off at most)
    assert_cross_entropy_close(v, x, t, "float32", max_ulp=0.5, reduction="mean")
    with pytest.raises(AssertionError, match="1 of 1 values fail"):
        assert_cross_entropy_close(np.nextafter(np.nextafter(v, np.float32(9)), np.float32(9)),
                                   x, t, "float32", max_ulp=1, reduction="mean")


def test_loss_keywords_at_their_default_are_ignored_and_others_named():
    x, t = _rows(8)
    vals, _ = _correctly_rounded(x, t)
    assert_cross_entropy_close(vals, x, t, "float16", max_ulp=0.5, weight=None,
                               ignore_index=-100, label_smoothing=0.0, reduction="none")
    with pytest.raises(TypeError, match="unknown loss keyword 'smoothing'"):
        assert_cross_entropy_close(vals, x, t, "float16", max_ulp=0.5, smoothing=0.1)
    import inspect

    from precision_lab.numerics.reference import cross_entropy_detailed

    if "label_smoothing" not in inspect.signature(cross_entropy_detailed).parameters:
        with pytest.raises(TypeError, match="does not support label_smoothing=0.1 yet"):
            assert_cross_entropy_close(vals, x, t, "float16", max_ulp=0.5,
                                       label_smoothing=0.1)
    with pytest.raises(ValueError, match="max_ulp"):
        assert_cross_entropy_close(vals, x, t, "float16", max_ulp=-1)


def test_the_pytest_plugin_fixture_and_summary(pytester):
    pytester.makepyfile(test_kernel="""
        import numpy as np
        import torch
        import torch.nn.functional as F

        def test_torch_float32(cross_entropy_close):
            torch.manual_seed(0)
            x = torch.randn(256, 10)
            t = torch.randint(0, 10, (256,))
            cross_entropy_close(F.cross_entropy(x, t, reduction="none"), x, t, "float32",
                                max_ulp=4)

        def test_torch_float16_margin(cross_entropy_close):
            x = torch.tensor([[16.2, 4.19, 7.79, 5.23]], dtype=torch.float16)
            t = torch.tensor([0])
            cross_entropy_close(F.cross_entropy(x, t, reduction="none"), x, t, "float16",
                                max_ulp=4)
    """)
    res = pytester.runpytest_inprocess("-p", "precision_lab.testing", "-q")
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    assert "cross-entropy ULP errors (precision_lab.testing)" in out
    assert "test_kernel.py::test_torch_float32: float32, worst" in out
    assert "1 of 1 rows fail max_ulp=4" in out
