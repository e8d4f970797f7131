"""attribution: the telescoping decomposition is exact (Fraction sums), its total and exact
loss agree with mpmath at 400 digits written here, local errors agree with an elementwise
mpmath oracle; hand-made cases whose dominant step is known; the fused torch kernel against
its composites."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest

from precision_lab.explain.attribution import (
    EPS_EXP_TERM,
    FusedComparison,
    RowAttribution,
    attribute,
    attribute_many,
    compare_fused,
    dyadic_str,
    parse_dyadic,
    summarize,
)
from precision_lab.implementations import REGISTRY
from precision_lab.numerics.formats import get_format, round_float64_array

STEPWISE = ["naive", "naive_softmax", "lse", "lse_log1p", "torch_logsoftmax_nll", "torch_manual"]
FORMATS = ["float16", "bfloat16", "float32", "float64"]
DPS = 400
LIBRARY_CORRECT = ("exp", "log", "log1p", "sub", "add", "div", "neg", "cast")


# --------------------------------------------------------------------------- oracles

def exact_loss(row: np.ndarray, t: int) -> mpmath.mpf:
    """log(sum_j exp(x_j)) - x_t at 400 digits, from the definition (-inf entries skipped)."""
    vals = [float(v) for v in np.asarray(row).astype(np.float64)]
    with mpmath.workdps(DPS):
        s = mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in vals if v != -math.inf)
        return mpmath.log(s) - mpmath.mpf(vals[t])


def to_mp(q: Fraction) -> mpmath.mpf:
    with mpmath.workdps(DPS):
        return mpmath.mpf(q.numerator) / q.denominator


def ulp_exp(v: mpmath.mpf, fmt: str) -> int:
    """Exponent of the spacing of fmt at the exact |v| (subnormal spacing below the normal
    range), from the format's IEEE parameters."""
    p, emin, emax = {"float16": (11, -14, 15), "bfloat16": (8, -126, 127),
                     "float32": (24, -126, 127), "float64": (53, -1022, 1023)}[fmt]
    if v == 0:
        return emin - p + 1
    with mpmath.workdps(DPS):
        e = int(mpmath.floor(mpmath.log(abs(v), 2)))
        if mpmath.ldexp(1, e) > abs(v):
            e -= 1
        if mpmath.ldexp(1, e + 1) <= abs(v):
            e += 1
    return min(max(e, emin), emax) - p + 1


def oracle_op(op: str, ins: list[float]) -> "mpmath.mpf | float":
    """The exact value of one element of a step (IEEE specials as floats)."""
    with mpmath.workdps(DPS):
        if not all(math.isfinite(v) for v in ins):
            with np.errstate(all="ignore"):
                a = np.float64(ins[0])
                return float({"exp": np.exp(a), "log": np.log(a), "log1p": np.log1p(a),
                              "neg": -a, "cast": a}.get(op, np.nan)) if len(ins) == 1 else \
                    float({"add": a + ins[1], "sub": a - ins[1], "div": a / ins[1]}[op])
        a = mpmath.mpf(ins[0])
        if op == "exp":
            return mpmath.exp(a)
        if op == "log":
            return mpmath.log(a) if a > 0 else (-math.inf if a == 0 else math.nan)
        if op == "log1p":
            return mpmath.log1p(a) if a > -1 else (-math.inf if a == -1 else math.nan)
        if op == "neg":
            return -a
        if op == "cast":
            return a
        b = mpmath.mpf(ins[1])
        if op == "add":
            return a + b
        if op == "sub":
            return a - b
        if op == "div":
            return a / b if b != 0 else (math.nan if a == 0 else math.copysign(math.inf, a))
    raise AssertionError(op)


def ulp_error(c: float, v: "mpmath.mpf | float", fmt: str) -> float:
    if isinstance(v, float):
        if (math.isnan(c) and math.isnan(v)) or c == v:
            return 0.0
        return math.nan if math.isnan(c) or math.isnan(v) else math.inf
    if math.isnan(c):
        return math.nan
    if math.isinf(c):
        return math.inf
    with mpmath.workdps(DPS):
        return float(abs(mpmath.mpf(c) - v) / mpmath.ldexp(1, ulp_exp(v, fmt)))


def oracle_local(step, b: int, fmt_out: str, x_row_lse=None) -> float:
    """Max ULP error of one row of a traced step, element by element in mpmath."""
    out = np.asarray(step.output).astype(np.float64)
    ins = [np.asarray(a) for a in step.inputs]
    if step.op == "sum":
        row = ins[0].astype(np.float64)[b]
        exact = sum((Fraction(float(v)) for v in row), Fraction(0))
        return ulp_error(float(out[b]), to_mp(exact), fmt_out)
    if step.op == "log_softmax":
        row = ins[0].astype(np.float64)[b]
        with mpmath.workdps(DPS):
            lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
            return max(ulp_error(float(out[b, j]), mpmath.mpf(float(row[j])) - lse, fmt_out)
                       for j in range(row.size))
    shape = out.shape
    bins = [np.broadcast_to(a.astype(np.float64), shape) for a in ins]
    errs = []
    for idx in np.ndindex(shape[1:] if len(shape) > 1 else ()):
        full = (b,) + idx
        v = oracle_op(step.op, [float(a[full]) for a in bins])
        errs.append(ulp_error(float(out[full]), v, fmt_out))
    return float(np.max(errs))


def random_rows(rng: np.random.Generator, fmt: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of assorted V and scale (including confident rows) in fmt, with their targets."""
    V = int(rng.integers(2, 40))
    scale = rng.choice([0.5, 2.0, 6.0, 20.0], size=(n, 1))
    x = round_float64_array(rng.normal(size=(n, V)) * scale, fmt)
    t = rng.integers(0, V, size=n)
    # make some rows confident: the target well above the rest
    conf = rng.random(n) < 0.3
    x64 = x.astype(np.float64)
    x64[conf, t[conf]] = np.abs(x64[conf]).max(axis=1) + rng.uniform(5, 30, size=conf.sum())
    return round_float64_array(x64, fmt), t


def check_exact_decomposition(r: RowAttribution, row: np.ndarray) -> None:
    assert r.separable
    total = sum((s.contribution for s in r.steps), Fraction(0))
    assert total == r.total                                   # exactly, as rationals
    assert r.total == Fraction(r.computed) - r.exact_loss     # R_N - R_0
    truth = exact_loss(row, r.target)
    with mpmath.workdps(DPS):
        tol = abs(truth) * mpmath.ldexp(1, -100)
        assert abs(to_mp(r.exact_loss) - truth) <= tol
        assert abs(to_mp(r.total) - (mpmath.mpf(r.computed) - truth)) <= tol
    assert not r.unresolved and r.exact_loss_error_ulp <= 2.0 ** -64
    for s in r.steps:
        if s.kind == "exact":
            assert s.local_ulp == 0 and s.local_exact
        if s.local_exact:
            assert s.contribution == 0
        assert s.contribution_error_ulp <= 2.0 ** -63


# --------------------------------------------------------------------------- the review case

def test_bfloat16_cancelling_contributions_add_up_exactly() -> None:
    # independent review: step contributions of +-1.7e27 ULP used to cancel to -143.82
    # against a total of -143.35; they must add up to the total exactly
    x = round_float64_array(np.array([[-4.40625, 59.25, -73.0]]), "bfloat16")
    assert x.astype(np.float64).tolist() == [[-4.40625, 59.25, -73.0]]
    (r,) = attribute("torch_manual", x, np.array([1]), "bfloat16")
    check_exact_decomposition(r, x[0])
    truth = exact_loss(x[0], 1)
    assert float(truth) == pytest.approx(2.2617358729490785e-28, rel=1e-15)
    assert r.computed == 0.0
    # total = (0 - L) / ulp(L) with ulp(L) = 2**(floor(log2 L) - 7) in bfloat16
    with mpmath.workdps(DPS):
        unit = mpmath.ldexp(1, ulp_exp(truth, "bfloat16"))
        assert r.total_ulp == pytest.approx(float(-truth / unit), rel=1e-15)
    et, e = r.step("e_t"), r.step("e")
    assert et.contribution_ulp > 1e26 and e.contribution_ulp < -1e26
    assert r.cancelling and r.cancellation_ratio > 1e25
    assert r.dominant == "e_t"
    # the float views are the exact rationals' float64 values
    pair = float((et.contribution + e.contribution) / Fraction(r.ulp))
    rest = sum(s.contribution_ulp for s in r.steps if s.name not in ("e_t", "e"))
    assert rest + pair == pytest.approx(r.total_ulp, rel=1e-12)
    assert all(s.contribution_error_ulp <= 2.0 ** -63 for s in r.steps)


# --------------------------------------------------------------------------- random rows

@pytest.mark.parametrize("fmt", FORMATS)
def test_random_rows_decompose_exactly_in_every_implementation(fmt: str) -> None:
    rng = np.random.default_rng(FORMATS.index(fmt) + 11)
    for _ in range(3):
        x, t = random_rows(rng, fmt, 6)
        res = attribute_many(STEPWISE, x, t, fmt)
        assert set(res) == set(STEPWISE)
        for key, rows in res.items():
            for b, r in enumerate(rows):
                if not r.separable:  # an overflow (naive forms in float16): checked elsewhere
                    assert key in ("naive", "naive_softmax", "torch_manual")
                    assert not math.isfinite(r.computed)
                    continue
                check_exact_decomposition(r, x[b])
                for s in r.steps:
                    if fmt in ("float16", "bfloat16") and s.op in LIBRARY_CORRECT \
                            and key in ("naive", "naive_softmax", "lse", "lse_log1p") \
                            and "overflow" not in s.flags:
                        assert s.local_ulp <= 0.5, (key, s.name, s.local_ulp)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("impl", STEPWISE)
def test_local_errors_match_an_elementwise_oracle(fmt: str, impl: str) -> None:
    rng = np.random.default_rng(10 * FORMATS.index(fmt) + STEPWISE.index(impl))
    V = 9
    x = round_float64_array(rng.normal(size=(4, V)) * 4, fmt)
    t = rng.integers(0, V, size=4)
    rows = attribute(impl, x, t, fmt)
    trace: list = []
    REGISTRY[impl](x, t, fmt, trace=trace)
    for b, r in enumerate(rows):
        for s, step in zip(r.steps, trace, strict=True):
            assert s.name == step.name
            if step.op in ("max", "argmax", "gather", "mask", "nll"):
                assert s.local_ulp == 0 and s.local_exact
                continue
            fo = get_format(np.asarray(step.output).dtype).name
            want = oracle_local(step, b, fo)
            assert s.local_ulp == pytest.approx(want, rel=1e-9, abs=1e-12), (s.name, want)
            assert s.correctly_rounded == (want <= 0.5) or want == 0.5


# --------------------------------------------------------------------------- hand-made cases

def test_naive_float16_overflows_at_the_exp_step() -> None:
    x = np.array([[12.0, 0.0, 1.0, 2.0]], dtype=np.float16)
    (row,) = attribute("naive", x, np.array([1]), "float16")
    assert math.isinf(row.computed)
    e = row.step("e")
    assert "overflow" in e.flags and e.contribution is None and math.isinf(e.contribution_ulp)
    assert not e.separable and not row.separable and row.total is None
    assert row.dominant == "e" and row.decisive == "e"
    # the exact loss is finite: log(e^12 + 1 + e + e^2) - 0
    assert row.exact_loss_float == pytest.approx(12.000068243514264, rel=1e-15)
    assert row.step("s").local_ulp == 0       # the sum of an inf is exact (inf)
    assert row.step("s").contribution is None  # inf - inf: not separable


def test_cancellation_float32_confident_row() -> None:
    x = np.array([[20.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    t = np.array([0])
    truth = exact_loss(x[0], 0)
    assert float(truth) == pytest.approx(2.2893929542622447e-08, rel=1e-15)
    (row,) = attribute("lse", x, t, "float32")
    check_exact_decomposition(row, x[0])
    assert row.computed == 0.0
    # relative error 1: the whole loss (about 1.29e7 ULPs of it) is lost ...
    assert row.total_ulp == pytest.approx(-float(truth) / 2.0 ** -49, rel=1e-12)
    assert row.total_rel == -1.0
    # ... in the sum: 1 + 2.29e-8 rounds to 1; the final subtraction 20 - 20 is exact and
    # only reveals it
    assert row.dominant == "s" and row.decisive == "s"
    loss = row.step("loss")
    assert loss.local_ulp == 0 and loss.local_exact and loss.contribution == 0
    assert "cancellation" in loss.flags and loss.cancellation_bits == -1  # 20 - 20 = 0
    lse_step = row.step("lse")
    assert lse_step.flags == [] and lse_step.cancellation_bits is None

    (keep,) = attribute("lse_log1p", x, t, "float32")
    check_exact_decomposition(keep, x[0])
    assert abs(keep.total_ulp) <= 0.5  # correctly rounded here
    (nll,) = attribute("torch_logsoftmax_nll", x, t, "float32")
    assert nll.computed == 0.0 and nll.dominant == "lp"


def test_cancelling_contributions_are_flagged() -> None:
    # torch_manual rounds exp(20) twice (e_t and e); their effects cancel, and the sum
    # absorbing 1 + e + e^2 into 4.85e8 is what decides the result
    x = np.array([[20.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    (row,) = attribute("torch_manual", x, np.array([0]), "float32")
    check_exact_decomposition(row, x[0])
    assert row.computed == 0.0
    assert row.cancelling and row.decisive == "s"


def test_cancellation_bits_of_a_partial_cancellation() -> None:
    # lse_log1p's a = m - x_t: 8.0 - 7.96875 loses floor(log2(8 / 0.03125)) = 8 bits
    x = np.array([[8.0, 7.96875, 0.0]], dtype=np.float32)
    (row,) = attribute("lse_log1p", x, np.array([1]), "float32")
    a = row.step("a")
    assert a.cancellation_bits == 8 and "cancellation" in a.flags
    assert a.local_exact and a.contribution == 0  # Sterbenz: exact


def test_masked_logits_and_special_rows() -> None:
    x = np.array([[1.0, -np.inf, 2.0, 0.5],      # a masked class
                  [1.0, -np.inf, 2.0, 0.5],      # the target masked: loss +inf
                  [1.0, np.nan, 2.0, 0.5],       # NaN: loss NaN
                  [3.0, -np.inf, -np.inf, -np.inf]],  # the lone finite logit: loss 0
                 dtype=np.float32)
    t = np.array([0, 1, 0, 0])
    for rows in attribute_many(STEPWISE, x, t, "float32").values():
        check_exact_decomposition(rows[0], x[0])
        assert rows[1].exact_loss is None and rows[1].exact_loss_float == math.inf
        assert not rows[1].separable and rows[1].dominant is None
        assert rows[2].exact_loss is None and math.isnan(rows[2].exact_loss_float)
        assert rows[3].exact_loss == 0 and rows[3].separable
        assert rows[3].total == Fraction(rows[3].computed)


def test_cast_step_is_attributed_with_the_exact_loss_of_the_given_values() -> None:
    # float64 logits computed in bfloat16: the cast rounds 1 + 2**-8 + 2**-40 up to 1 + 2**-7
    x = np.array([[1.0 + 2.0 ** -8 + 2.0 ** -40, 0.3, -2.0]])
    for (r,) in attribute_many(STEPWISE, x, np.array([0]), "bfloat16").values():
        assert r.steps[0].name == "x" and r.steps[0].op == "cast"
        assert r.steps[0].correctly_rounded and 0 < r.steps[0].local_ulp <= 0.5
        check_exact_decomposition(r, x[0])


def test_confident_float64_row_needs_and_gets_more_precision() -> None:
    # logits [700, 0, 0], target 0: L = log(1 + 2 e^-700) ~ 1.97e-304; lse = 700 + log(...)
    x = np.array([[700.0, 0.0, 0.0]])
    res = attribute_many(STEPWISE, x, np.array([0]), "float64")
    for (r,) in res.values():
        check_exact_decomposition(r, x[0])
    assert res["lse"][0].computed == 0.0
    assert res["lse"][0].precision_bits > 1000  # resolving 700 + 1e-304 to 2**-64 ULP
    assert abs(res["lse_log1p"][0].total_ulp) <= 0.5


def test_too_little_precision_is_flagged_but_still_adds_up() -> None:
    x = np.array([[700.0, 0.0, 0.0]])
    (r,) = attribute("lse", x, np.array([0]), "float64", max_precision=192)
    assert r.unresolved and r.separable and r.precision_bits == 192
    assert sum((s.contribution for s in r.steps), Fraction(0)) == r.total
    assert max(s.contribution_error_ulp for s in r.steps) > 2.0 ** -63


def test_exact_ties_are_rounded_to_even() -> None:
    # lse's d = x - m: -0.5 - 1024 = -1024.5 and -0.5 - 1025 = -1025.5 are float16 midpoints
    # (spacing 1 in [1024, 2048)); ties to even give -1024 and -1026
    x = np.array([[1024.0, -0.5], [1025.0, -0.5]], dtype=np.float16)
    rows = attribute("lse", x, np.array([0, 0]), "float16")
    trace: list = []
    REGISTRY["lse"](x, np.array([0, 0]), "float16", trace=trace)
    d_out = next(s for s in trace if s.name == "d").output
    assert d_out[:, 1].astype(np.float64).tolist() == [-1024.0, -1026.0]
    for r in rows:
        d = r.step("d")
        assert d.local_ulp == 0.5 and d.correctly_rounded and not d.local_exact


def test_exact_ops_and_rounded_but_exact_steps_contribute_zero() -> None:
    rng = np.random.default_rng(4)
    x = round_float64_array(rng.normal(size=(5, 12)), "float16")
    t = rng.integers(0, 12, size=5)
    for rows in attribute_many(STEPWISE, x, t, "float16").values():
        for r in rows:
            for s in r.steps:
                if s.local_exact:
                    assert s.contribution == 0 and s.contribution_error_ulp == 0


# --------------------------------------------------------------------------- scale

def test_batch_rows_are_independent() -> None:
    rng = np.random.default_rng(8)
    x = round_float64_array(rng.normal(size=(4, 300)) * 5, "bfloat16")
    t = rng.integers(0, 300, size=4)
    whole = attribute("lse", x, t, "bfloat16")
    for b in range(4):
        (one,) = attribute("lse", x[b:b + 1], t[b:b + 1], "bfloat16")
        assert one.total == whole[b].total and one.exact_loss == whole[b].exact_loss
        assert [s.contribution for s in one.steps] == [s.contribution for s in whole[b].steps]


def test_long_row_against_arb() -> None:
    flint = pytest.importorskip("flint")
    rng = np.random.default_rng(21)
    V = 1 << 17
    x = round_float64_array(rng.normal(size=(1, V)) * 3, "float32")
    t = np.array([int(np.argmax(x[0]))])
    res = attribute_many(["lse", "lse_log1p", "torch_manual"], x, t, "float32")
    flint.ctx.prec = 600
    vals = [flint.arb(float(v)) for v in x[0].astype(np.float64)]
    m = max(x[0].astype(np.float64))
    s = flint.arb(0)
    for v in vals:
        s += (v - m).exp()
    truth = flint.arb(m) + s.log() - vals[int(t[0])]
    assert truth.rad() < abs(truth.mid()) * flint.arb(2) ** -500
    with mpmath.workdps(DPS):
        mid = mpmath.mpf(truth.mid().str(170, radius=False))
    for (r,) in res.values():
        assert r.separable
        assert sum((st.contribution for st in r.steps), Fraction(0)) == r.total
        with mpmath.workdps(DPS):
            assert abs(to_mp(r.exact_loss) - mid) <= abs(mid) * mpmath.ldexp(1, -100)


def test_fixed_point_exp_kernel_meets_its_bound() -> None:
    from precision_lab.explain.attribution import _fx_exp

    rng = np.random.default_rng(2)
    z = np.concatenate([[0.0, -0.0, -1e-300, -5e-324, -760.0, 700.0, 4096.0, -4096.0,
                         math.log(2) / 65536, -math.log(2)],
                        rng.normal(size=400) * 10, -rng.random(400) * 760])
    M, k = _fx_exp(z)
    worst = mpmath.mpf(0)
    with mpmath.workprec(500):
        for i, v in enumerate(z.tolist()):
            man = 0
            for limb in M[:, i].tolist():
                man = (man << 30) + int(limb)
            got = mpmath.ldexp(man, int(k[i]) - 150)
            ex = mpmath.exp(mpmath.mpf(v))
            worst = max(worst, abs(got - ex) / ex)
    assert worst <= EPS_EXP_TERM
    assert worst > 0  # the measurement measures something (about 2**-146)


# --------------------------------------------------------------------------- results

def test_results_are_json_ready_and_exact() -> None:
    x = np.array([[3.0, 1.0, -2.0, 0.5]], dtype=np.float16)
    (r,) = attribute("lse", x, np.array([1]), "float16")
    d = r.to_dict()
    text = json.dumps(d)
    back = json.loads(text)
    assert parse_dyadic(back["total"]) == r.total
    assert [parse_dyadic(s["contribution"]) for s in back["steps"]] == \
        [s.contribution for s in r.steps]
    assert dyadic_str(Fraction(-3, 8)) == "-0x3p-3" and parse_dyadic("-0x3p-3") == Fraction(-3, 8)
    summ = summarize(attribute("lse", round_float64_array(
        np.random.default_rng(1).normal(size=(20, 6)) * 3, "bfloat16"),
        np.arange(20) % 6, "bfloat16"))
    assert summ.rows == 20 and sum(summ.dominates.values()) == 20
    assert sum(summ.decides.values()) == 20
    json.dumps(summ.to_dict())


def test_bad_input_is_refused_with_one_message() -> None:
    with pytest.raises(ValueError, match="not step-wise"):
        attribute("torch", np.zeros((1, 3), np.float32), np.array([0]), "float32")
    with pytest.raises(ValueError, match="targets must lie in"):
        attribute("lse", np.zeros((1, 3), np.float32), np.array([3]), "float32")
    with pytest.raises(ValueError, match="targets must have shape"):
        attribute("lse", np.zeros((2, 3), np.float32), np.array([0]), "float32")


# --------------------------------------------------------------------------- fused kernel

@pytest.mark.parametrize("V", [10, 1000])
@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_fused_torch_matches_the_cpu_lastdim_model(fmt: str, V: int) -> None:
    rng = np.random.default_rng(V)
    n = 300 if V == 10 else 100
    x = round_float64_array(rng.normal(size=(n, V)) * 4, fmt)
    t = rng.integers(0, V, size=n)
    res = compare_fused(x, t, fmt)
    assert isinstance(res, FusedComparison) and res.rows == n
    assert res.rate("cpu_lastdim_model") == 1.0
    if V == 10:
        assert res.rate("torch_logsoftmax_nll") == 1.0
        # rounding log_softmax only once (sum and logsum kept in float32) is NOT what torch does
        assert res.rate("logsumexp_f32_round_once") < 0.95
    assert json.dumps(res.to_dict())


def test_composites_are_implementations_but_not_registered() -> None:
    from precision_lab.implementations.composites import COMPOSITES, cpu_lastdim_model

    assert "cpu_lastdim_model" in COMPOSITES and "cpu_lastdim_model" not in REGISTRY
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float16)
    out = cpu_lastdim_model(x, np.array([2]), "float16")
    assert out.dtype == np.float16 and out.shape == (1,)
    with mpmath.workdps(50):
        assert float(out[0]) == pytest.approx(float(exact_loss(x[0], 2)), rel=2 ** -10)
