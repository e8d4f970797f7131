"""Exhaustive slices against brute force: every problem of a small slice recomputed from the
definition in mpmath (the two-class loss log(1 + e**d), its ULP error, its rounding)."""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
from oracles import ulp_in_binade

from precision_lab.experiment.errors import ComputeError
from precision_lab.implementations import get_implementation
from precision_lab.implementations.registry import default_keys
from precision_lab.numerics.formats import get_format
from precision_lab.numerics.metrics import categorize
from precision_lab.search import exhaustive as ex
from precision_lab.search.exhaustive import (
    SliceSpec,
    axis_values,
    merge_chunks,
    pair_truth,
    run_slice,
    slice_chunk,
)

PREC = 900  # bits; the exponentially small part of the loss is kept apart from the gap


def _oracle(x0: float, x1: float, c: float, fmt) -> tuple[str, "mpmath.mpf | None", int]:
    """(category, ULP error, histogram bin) of the computed value c for logits (x0, x1),
    target 0, from the definition: L = log(e**x0 + e**x1) - x0 = D + t with D = max(d, 0),
    t = log1p(exp(-|d|)) > 0, d = x1 - x0 (finite logits only).  The bin is decided by exact
    comparisons (|c - L| < E ulp iff delta - E ulp < t < delta + E ulp, delta = c - D), never
    by the rounded error: t may be far below the working precision (e**-8844)."""
    f = get_format(fmt)
    with mpmath.workprec(PREC):
        d = mpmath.mpf(x1) - mpmath.mpf(x0)
        D = max(d, mpmath.mpf(0))
        t = mpmath.log1p(mpmath.exp(-abs(d)))
        L = D + t
        thr = mpmath.mpf(f.max_finite) + mpmath.ldexp(1, f.emax - f.precision)
        if L >= thr:  # L > thr strictly (t > 0), and thr itself rounds to inf
            cat = "inf_match" if c == math.inf else ("nan" if math.isnan(c) else "missed_inf")
            return cat, (mpmath.mpf(0) if cat == "inf_match" else None), 0
        if not math.isfinite(c):
            return ("nan" if math.isnan(c) else "overflow"), None, -1
        u = ulp_in_binade(L, f.precision, f.emin)
        delta = mpmath.mpf(c) - D  # exact: c and D are binary numbers of bounded span
        err = abs(delta - t) / u
        edges = [mpmath.mpf(0.5)] + [mpmath.ldexp(1, k) for k in range(63)]
        b = next((j for j, e in enumerate(edges) if delta - e * u < t < delta + e * u),
                 len(edges))
        return "finite", err, b


def _values(fmt: str, n: int, seed: int) -> list[float]:
    f = get_format(fmt)
    rng = np.random.default_rng(seed)
    allv = axis_values("all", fmt).astype(np.float64)
    allv = allv[np.isfinite(allv)]
    picked = allv[rng.integers(0, allv.size, n)]
    # the corners: zeros, the largest values, a tie-producing pair, the gap of the cancellation
    corners = [0.0, -0.0, f.max_finite, -f.max_finite, -8.0, 8.0, 11.5, -11.5, 1024.0, -0.5]
    return [float(v) for v in np.concatenate([picked, corners])]


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_a_small_slice_equals_brute_force_from_the_definition(fmt):
    a0 = _values(fmt, 14, 1)[:18]
    a1 = _values(fmt, 24, 2)
    spec = SliceSpec("bf", fmt, tuple(default_keys()), ({"values": a0}, {"values": a1}), 0,
                     block=5).resolved()
    res = merge_chunks(spec, [slice_chunk(spec.to_dict(), i) for i in range(spec.chunks)])
    assert res.complete and res.rows_done == spec.rows
    x0, x1 = axis_values(spec.logits[0], fmt), axis_values(spec.logits[1], fmt)
    X = np.stack([np.repeat(x0, x1.size), np.tile(x1, x0.size)], axis=1)
    T = np.zeros(len(X), dtype=np.int64)
    for key in default_keys():
        c = get_implementation(key)(X, T, fmt).astype(np.float64)
        cats: dict[str, int] = {}
        hist = [0] * (len(ex.HIST_EDGES) + 1)
        best, cr = None, 0
        for (a, b), ci in zip(X.astype(np.float64), c):
            cat, err, k = _oracle(float(a), float(b), float(ci), fmt)
            cats[cat] = cats.get(cat, 0) + 1
            cr += k == 0
            if err is not None:
                hist[k] += 1
                if best is None or err > best:
                    best = err
        r = res.per_impl[key]
        assert r["count"] == spec.rows
        assert {k: v for k, v in r["categories"].items() if v} == cats, key
        assert r["correctly_rounded"] == cr, key
        assert r["hist"] == hist, key
        assert best is not None and r["max_ulp_error"] == pytest.approx(float(best), rel=1e-9)
        case = r["max_case"]
        cat, err, _ = _oracle(case["logits"][0], case["logits"][1], case["computed"], fmt)
        assert float(err) == pytest.approx(r["max_ulp_error"], rel=1e-9)


def test_a_structural_midpoint_is_decided_without_the_reference():
    # d = 1404 + 7440 = 8844 lies halfway between the float16 neighbours 8840 and 8848, and
    # L = d + e**-8844 rounds up: 8848 is correctly rounded (0.5 - 1e-3841 ULP), 8840 is not
    x = np.array([[-7440.0, 1404.0], [-7440.0, 1404.0]], dtype=np.float16)
    T = pair_truth(x, 0, "float16")
    assert T.tiny.all() and not T.unsure.any()
    err, bins, undecided = ex._pair_errors(np.array([8848.0, 8840.0]), T,
                                           ex.margin_ulps("float16"))
    assert not undecided.any()
    assert bins.tolist() == [0, 1]  # [0, 0.5) and [0.5, 1)
    for c, b in ((8848.0, 0), (8840.0, 1)):
        _, e, k = _oracle(-7440.0, 1404.0, c, "float16")
        assert k == b and float(e) == pytest.approx(0.5)


def test_rows_with_infinite_logits_follow_the_hand_derived_rules():
    inf = math.inf
    vals = [-inf, -1.0, 0.0, 2.0, inf]
    spec = SliceSpec("inf", "float16", ("lse", "lse_log1p", "torch"),
                     ({"values": vals}, {"values": vals}), 0).resolved()
    res = merge_chunks(spec, [slice_chunk(spec.to_dict(), i) for i in range(spec.chunks)])

    def truth(a: float, b: float) -> float:
        # target 0: a NaN-free row; +inf target alone -> 0; +inf elsewhere -> +inf;
        # target -inf -> +inf unless every logit is -inf (undefined); +inf twice -> undefined
        if a == inf:
            return math.nan if b == inf else 0.0
        if b == inf:
            return inf
        if a == -inf:
            return math.nan if b == -inf else inf
        return float(mpmath.log1p(mpmath.exp(mpmath.mpf(b) - a)))

    X = np.array([[a, b] for a in vals for b in vals], dtype=np.float16)
    tv = np.array([truth(float(a), float(b)) for a, b in X.astype(np.float64)])
    for key in spec.implementations:
        c = get_implementation(key)(X, np.zeros(len(X), np.int64), "float16")
        want = categorize(c, tv.astype(np.float16))
        got = res.per_impl[key]["categories"]
        assert {k: v for k, v in got.items() if v} == {k: int((want == k).sum())
                                                       for k in set(want.tolist())}, key


def test_value_sets():
    # non-NaN values of a 16-bit format: 2**16 minus the NaN patterns (2 signs x (2**m - 1))
    assert axis_values("all", "float16").size == 2 ** 16 - 2 * (2 ** 10 - 1)
    assert axis_values("all", "bfloat16").size == 2 ** 16 - 2 * (2 ** 7 - 1)
    r = axis_values({"range": [1.0, 2.0]}, "float16").astype(np.float64)
    assert r.size == 1025 and r[0] == 1.0 and r[-1] == 2.0
    assert np.all(np.diff(r) == 2.0 ** -10)
    r32 = axis_values({"range": [1.0, 1.0 + 2 ** -20]}, "float32").astype(np.float64)
    assert r32.size == 2 ** 3 + 1
    v = axis_values({"values": [0.1, 0.1, 3.0]}, "bfloat16")
    assert v.size == 2


def test_merge_is_independent_of_chunk_order():
    spec = SliceSpec("m", "float16", ("lse", "torch"),
                     ({"range": [-4.0, 4.0]}, {"values": [0.0, -3.0, 9.5]}), 0,
                     block=2000).resolved()
    docs = [slice_chunk(spec.to_dict(), i) for i in range(spec.chunks)]
    a = merge_chunks(spec, docs).to_json()
    b = merge_chunks(spec, docs[::-1]).to_json()
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                    default=str)


def test_an_interrupted_slice_continues_and_ends_with_the_same_result(tmp_path, monkeypatch):
    spec = SliceSpec("cont", "float16", ("lse",),
                     ({"range": [-2.0, 2.0]}, {"values": [0.0, 1.0, -7.0]}), 0, block=8000)
    fresh = run_slice(spec, tmp_path / "a")
    assert fresh.complete and fresh.chunks_done == spec.resolved().chunks >= 4
    real = ex.slice_chunk

    def failing(spec_dict, chunk):
        if chunk == 2:
            raise RuntimeError("power cut")
        return real(spec_dict, chunk)

    monkeypatch.setattr(ex, "slice_chunk", failing)
    with pytest.raises(ComputeError, match="chunk 2"):
        run_slice(spec, tmp_path / "b")
    kept = sorted(p.name for p in (tmp_path / "b" / "cont" / "chunks").iterdir())
    assert kept == ["000000.json", "000001.json"]
    monkeypatch.setattr(ex, "slice_chunk", real)
    again = run_slice(spec, tmp_path / "b")
    assert again.complete and again.computed_chunks == spec.resolved().chunks - 2
    assert (tmp_path / "a" / "cont" / "slice.json").read_bytes() == \
        (tmp_path / "b" / "cont" / "slice.json").read_bytes()
