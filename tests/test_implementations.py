"""Tests of precision_lab.implementations against truths computed here with mpmath.

Seed example, float32 (logits [0, 0, 0, 1], target 3; exact loss log(3 + e) - 1 =
0.743668380628679...; correctly rounded float32 = 0.7436683773994446 = np.float32(0.7436684)):

    lse_log1p, torch_manual                  0.7436683773994446  correctly rounded
    torch, torch_logsoftmax_nll              0.7436684370040894  = np.float32(0.74366844), +1 ulp
    naive, naive_softmax, lse, scipy         0.7436683177947998  -1 ulp

So np.float32(0.74366844), the value torch prints, is itself 1 ulp above the correctly rounded
loss; every implementation is within 1 ulp of the correctly rounded value.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from precision_lab.implementations import (
    OPS,
    REGISTRY,
    Capabilities,
    Implementation,
    Step,
    get_implementation,
    pairwise_sum,
)
from precision_lab.implementations.registry import default_keys
from precision_lab.implementations.zoo import ZOO_IMPLEMENTATIONS
from precision_lab.numerics.formats import get_format, round_float64_array, round_to
from precision_lab.numerics.metrics import ulp_distance, ulp_error

FORMATS = ("float16", "bfloat16", "float32", "float64")
#: Keys runnable here (an implementation whose optional extra is missing is skipped).
KEYS = tuple(default_keys())
STEPWISE = tuple(k for k, v in REGISTRY.items() if v.stepwise)

#: The documented step order of each step-wise implementation (without a leading "x" cast).
STEP_ORDER = {
    "naive": ["e", "s", "e_t", "p", "l", "loss"],
    "naive_softmax": ["e", "s", "p", "p_t", "l", "loss"],
    "lse": ["m", "d", "e", "s", "l", "lse", "x_t", "loss"],
    "lse_log1p": ["k", "m", "d", "e", "e_rest", "s", "l", "x_t", "a", "loss"],
    "torch_logsoftmax_nll": ["lp", "loss"],
    "torch_manual": ["x_t", "e_t", "e", "s", "p", "l", "loss"],
}


def as_fmt(x, fmt: str) -> np.ndarray:
    """Round float64 values correctly into fmt (an independent path from the code under test)."""
    return round_float64_array(np.asarray(x, dtype=np.float64), fmt)


def exact_losses(x: np.ndarray, t: np.ndarray, prec: int = 200) -> np.ndarray:
    """Exact-ish cross-entropy per row (mpmath, prec bits) of the values actually in x."""
    out = []
    with mpmath.workprec(prec):
        for row, ti in zip(np.asarray(x).astype(np.float64), t):
            s = mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row)
            out.append(mpmath.log(s) - mpmath.mpf(float(row[ti])))
    return np.array(out, dtype=object)


def correctly_rounded(x: np.ndarray, t: np.ndarray, fmt: str) -> np.ndarray:
    with mpmath.workprec(200):
        return np.array([round_to(v, fmt) for v in exact_losses(x, t)],
                        dtype=get_format(fmt).np_dtype)


# -- seed example ------------------------------------------------------------------------


def test_registry_has_the_classic_and_zoo_keys():
    zoo = {"online_softmax", "chunked", "kahan", "vocab_parallel", "fp32_accum", "jax", "optax",
           "torch_compile"}
    assert set(REGISTRY) == {"naive", "naive_softmax", "lse", "lse_log1p", "torch",
                         "torch_logsoftmax_nll", "torch_manual", "scipy", "torch_upcast",
                         "torch_autocast"} | zoo
    assert set(STEPWISE) == set(STEP_ORDER)
    for k, impl in REGISTRY.items():
        assert impl.key == k and impl.description and "\n" not in impl.description


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_seed_example(key, fmt):
    x = as_fmt([[0, 0, 0, 1]], fmt)
    t = np.array([3])
    got = REGISTRY[key](x, t, fmt)
    assert got.dtype == get_format(fmt).np_dtype and got.shape == (1,)
    cr = correctly_rounded(x, t, fmt)
    # float16/bfloat16: lse in bfloat16 is 2 ulps off (0.734375 vs 0.7421875)
    tol = 1 if fmt in ("float32", "float64") else 2
    assert ulp_distance(got, cr, fmt)[0] <= tol
    if fmt in ("float32", "float64"):
        assert f"{float(got[0]):.4f}" == "0.7437"  # what the seed printed


def test_seed_example_float32_values():
    """The float32 values tabulated in this module's docstring."""
    x = np.array([[0, 0, 0, 1]], np.float32)
    t = np.array([3])
    cr = correctly_rounded(x, t, "float32")[0]
    assert cr == np.float32(0.7436684) and float(cr) == 0.7436683773994446
    assert ulp_distance(np.float32(0.74366844), cr, "float32") == 1
    for key in KEYS:
        got = REGISTRY[key](x, t, "float32")[0]
        assert ulp_distance(got, cr, "float32") <= 1, key
        assert ulp_distance(got, np.float32(0.74366844), "float32") <= 2, key
    assert REGISTRY["torch"](x, t, "float32")[0] == np.float32(0.74366844)
    assert REGISTRY["lse_log1p"](x, t, "float32")[0] == cr


# -- overflow in float16 -----------------------------------------------------------------

UNSHIFTED = ("naive", "naive_softmax", "torch_manual")
SHIFTED = ("lse", "lse_log1p", "torch", "torch_logsoftmax_nll", "scipy")


@pytest.mark.parametrize("big", [11.5, 12.0, 16.0, 100.0])
def test_float16_unshifted_overflows_shifted_stays_accurate(big):
    x = as_fmt([[big, 0, 0, 1], [0, big, 2, 2], [big, big - 1, 3, -2]], "float16")
    t = np.array([3, 2, 1])  # targets not the max: no cancellation (see the next test)
    cr = correctly_rounded(x, t, "float16")
    assert np.all(np.isfinite(cr.astype(np.float64)))
    for key in UNSHIFTED:
        got = REGISTRY[key](x, t, "float16")
        assert not np.any(np.isfinite(got.astype(np.float64))), (key, got)  # inf or nan
    for key in SHIFTED:
        got = REGISTRY[key](x, t, "float16")
        assert np.all(np.isfinite(got.astype(np.float64))), (key, got)
        assert np.all(ulp_distance(got, cr, "float16") <= 4), (key, got, cr)


@pytest.mark.parametrize("fmt", FORMATS)
def test_confident_target_only_lse_log1p_keeps_the_tiny_loss(fmt):
    """t = argmax by a margin of 12: loss ~ 2.9e-5.  lse - x_t cancels (measured: 486 ulps
    in float16, ~2e5 in float32), and so do torch's x - max - log(s) and scipy's logsumexp;
    (m - x_t) + log1p(...) is exact in its first term and keeps the loss to <= 1 ulp."""
    x = as_fmt([[12, 0, 0, 1]], fmt)
    t = np.array([0])
    cr = correctly_rounded(x, t, fmt)
    assert ulp_distance(REGISTRY["lse_log1p"](x, t, fmt), cr, fmt)[0] <= 1
    for key in ("lse", "torch", "scipy"):
        assert ulp_distance(REGISTRY[key](x, t, fmt), cr, fmt)[0] >= 100, key


def test_float16_naive_finite_below_the_exp_threshold():
    x = as_fmt([[11.0, 0, 0, 1]], "float16")  # exp(11) = 59874 < 65504
    got = REGISTRY["naive"](x, np.array([3]), "float16")
    assert np.isfinite(float(got[0]))


# -- random moderate inputs --------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("V,B", [(10, 60), (100, 12), (1000, 3)])
def test_random_moderate_inputs_within_a_few_ulps(fmt, V, B):
    """Logits uniform in [-2, 2]: losses near log V, no cancellation; measured max 3 ulps.
    (The LLM zoo is held to its derived bounds in test_zoo.py: a running sum in the format,
    as the sequential online softmax keeps, loses more.)"""
    rng = np.random.default_rng(1000 + V)
    x = as_fmt(rng.uniform(-2, 2, (B, V)), fmt)
    t = rng.integers(0, V, B)
    exact = exact_losses(x, t)
    for key, impl in REGISTRY.items():
        if key in ZOO_IMPLEMENTATIONS:
            continue
        err = ulp_error(impl(x, t, fmt), exact, fmt)
        assert np.all(err <= 4.0), (key, fmt, V, float(np.max(err)))


def test_logits_of_another_dtype_are_rounded_once_into_the_format():
    rng = np.random.default_rng(3)
    x64 = rng.uniform(-3, 3, (5, 7))
    t = rng.integers(0, 7, 5)
    for key in KEYS:
        impl = REGISTRY[key]
        for fmt in ("float16", "bfloat16"):
            a = impl(x64, t, fmt)
            b = impl(as_fmt(x64, fmt), t, fmt)
            assert a.dtype == get_format(fmt).np_dtype
            assert np.array_equal(a.view(np.uint16), b.view(np.uint16)), key


def test_input_validation():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="targets must lie"):
        REGISTRY["lse"](x, np.array([0, 3]), "float32")
    with pytest.raises(ValueError, match="2-D"):
        REGISTRY["lse"](np.zeros(3, np.float32), np.array([0]), "float32")
    with pytest.raises(ValueError, match="shape"):
        REGISTRY["lse"](x, np.array([0]), "float32")
    with pytest.raises(ValueError, match="unknown format"):
        REGISTRY["lse"](x, np.array([0, 1]), "float8")


# -- the arithmetic model the module docstring states ------------------------------------


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_numpy_low_precision_ops_are_correctly_rounded(fmt):
    """+ - * / on float16/bfloat16 arrays are rounded once to the format.  The oracle rounds
    the float64 result once more; float64 has 53 >= 2p + 2 bits, so that is exact rounding."""
    dt = get_format(fmt).np_dtype
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2**16, 300_000, dtype=np.uint16).view(dt)
    b = rng.integers(0, 2**16, 300_000, dtype=np.uint16).view(dt)
    with np.errstate(all="ignore"):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        ok = np.isfinite(a64) & np.isfinite(b64)
        for op in (np.add, np.subtract, np.multiply, np.divide):
            want = round_float64_array(op(a64[ok], b64[ok]), fmt)
            got = op(a[ok], b[ok])
            nan = np.isnan(want.astype(np.float64))
            assert np.array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16)), op


def test_pairwise_sum_order_and_format_arithmetic():
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]], np.float16)
    assert pairwise_sum(x)[0] == ((x[0, 0] + x[0, 1]) + (x[0, 2] + x[0, 3])) + x[0, 4]
    # 2048 + 1 is a tie in float16 (spacing 2) and rounds to 2048; np.sum accumulates in
    # float32 and gives 2050: the reason the numpy implementations do not use np.sum.
    y = np.array([[2048.0, 1.0, 1.0, 0.0]], np.float16)
    assert pairwise_sum(y)[0] == 2048.0
    assert np.sum(y, axis=-1)[0] == 2050.0
    assert pairwise_sum(np.zeros((2, 0), np.float32)).shape == (2,)
    z = np.arange(1, 8, dtype=np.float64)[None, :]
    assert pairwise_sum(z)[0] == 28.0


# -- import paths ------------------------------------------------------------------------


def custom_ce(logits, targets, fmt):
    """Custom test implementation: lse in float64, rounded to the format."""
    f = get_format(fmt)
    x = np.asarray(logits, np.float64)
    m = x.max(axis=-1)
    y = m + np.log(np.exp(x - m[:, None]).sum(axis=-1)) - x[np.arange(len(x)), targets]
    return round_float64_array(y, f)


def custom_traced(logits, targets, fmt, *, trace=None):
    return custom_ce(logits, targets, fmt)


custom_traced.capabilities = Capabilities(trace=True)  # type: ignore[attr-defined]


def custom_wrong_dtype(logits, targets, fmt):
    return np.zeros(len(logits), np.float64)


NOT_CALLABLE = 42


def test_get_implementation_keys_and_import_paths():
    assert get_implementation("lse") is REGISTRY["lse"]
    assert get_implementation(REGISTRY["torch"]) is REGISTRY["torch"]
    impl = get_implementation(f"{__name__}:custom_ce")
    assert isinstance(impl, Implementation)
    assert impl.key == f"{__name__}:custom_ce" and not impl.stepwise
    assert impl.description == "Custom test implementation: lse in float64, rounded to the format."
    x = np.array([[0, 0, 0, 1]], np.float32)
    assert impl(x, np.array([3]), "float32")[0] == np.float32(0.7436684)
    assert get_implementation(f"{__name__}:custom_traced").stepwise
    assert get_implementation("precision_lab.implementations:REGISTRY.get") is not None
    assert get_implementation("precision_lab.implementations:lse").stepwise


@pytest.mark.parametrize("bad,fragment", [
    ("lsee", "unknown implementation 'lsee'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("precision_lab.implementations:nope", "has no attribute 'nope'"),
    (f"{__name__}:NOT_CALLABLE", "non-callable int"),
    (":f", "malformed"),
])
def test_get_implementation_errors_are_clear(bad, fragment):
    with pytest.raises(ValueError) as info:
        get_implementation(bad)
    msg = str(info.value)
    assert fragment in msg
    assert "naive, naive_softmax, lse, lse_log1p" in msg and "package.module:function" in msg


def test_implementation_checks_result_and_trace_support():
    x = np.zeros((2, 3), np.float32)
    t = np.array([0, 1])
    with pytest.raises(TypeError, match="expected a numpy array of float32"):
        get_implementation(f"{__name__}:custom_wrong_dtype")(x, t, "float32")
    with pytest.raises(TypeError, match="not step-wise"):
        REGISTRY["torch"](x, t, "float32", trace=[])
    with pytest.raises(TypeError, match="trace must be a list"):
        REGISTRY["lse"](x, t, "float32", trace=())


# -- traces ------------------------------------------------------------------------------


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("key", STEPWISE)
@pytest.mark.parametrize("fmt", FORMATS)
def test_trace_reproduces_output_in_documented_order(key, fmt):
    rng = np.random.default_rng(11)
    x = as_fmt(rng.uniform(-4, 14, (6, 9)), fmt)  # float16: some rows overflow in naive
    t = rng.integers(0, 9, 6)
    trace: list = []
    out = REGISTRY[key](x, t, fmt, trace=trace)
    assert _same(out, REGISTRY[key](x, t, fmt))  # tracing does not change the result
    assert [s.name for s in trace] == STEP_ORDER[key]
    assert all(isinstance(s, Step) and s.op in OPS for s in trace)
    assert _same(trace[-1].output, out)
    seen = {"logits", "targets"}
    for s in trace:
        assert set(s.sources) <= seen, (s.name, s.sources)
        assert len(s.inputs) == len(s.sources)
        seen.add(s.name)


def test_trace_with_cast_starts_with_the_cast_step():
    x64 = np.array([[0.1, 0.2, 0.3]])
    trace: list = []
    out = REGISTRY["lse"](x64, np.array([1]), "bfloat16", trace=trace)
    assert trace[0].name == "x" and trace[0].op == "cast" and trace[0].sources == ("logits",)
    assert _same(trace[0].output, as_fmt(x64, "bfloat16"))
    assert [s.name for s in trace[1:]] == STEP_ORDER["lse"]
    assert trace[1].sources == ("x",)
    assert _same(trace[-1].output, out)


def _recompute_rounded(step: Step, fmt: str) -> np.ndarray:
    """Exact op on the recorded inputs, rounded once (float64 op: exact-then-round for the
    +, -, / of float32 and narrower formats, since 53 >= 2p + 2)."""
    a = [np.asarray(v, np.float64) for v in step.inputs]
    f = {"sub": np.subtract, "add": np.add, "div": np.divide}[step.op]
    return round_float64_array(f(*a), fmt)


@pytest.mark.parametrize("key", ["naive", "naive_softmax", "lse", "lse_log1p", "torch_manual"])
@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "float32"])
def test_trace_steps_can_be_recomputed_from_their_inputs(key, fmt):
    """The Step contract: each elementwise rounded step equals the correctly rounded op on its
    recorded inputs; exact steps reproduce exactly; sums stay within their error bound."""
    rng = np.random.default_rng(5)
    x = as_fmt(rng.uniform(-3, 3, (7, 11)), fmt)
    t = rng.integers(0, 11, 7)
    trace: list = []
    REGISTRY[key](x, t, fmt, trace=trace)
    u = get_format(fmt).unit_roundoff
    for s in trace:
        ins = s.inputs
        if s.op in ("sub", "add", "div"):
            assert _same(s.output, _recompute_rounded(s, fmt)), s.name
        elif s.op == "neg":
            assert _same(s.output, -ins[0])
        elif s.op == "gather":
            assert _same(s.output, np.take_along_axis(ins[0], ins[1][:, None], -1)[:, 0])
        elif s.op == "max":
            assert _same(s.output, ins[0].max(axis=-1))
        elif s.op == "mask":
            want = ins[0].copy()
            np.put_along_axis(want, ins[1][:, None], 0, axis=-1)
            assert _same(s.output, want)
        elif s.op == "sum":
            exact = ins[0].astype(np.float64).sum(axis=-1)  # exact enough: 11 terms in fp64
            bound = 11 * u * np.abs(ins[0].astype(np.float64)).sum(axis=-1)
            assert np.all(np.abs(s.output.astype(np.float64) - exact) <= bound), s.name
        elif s.op in ("exp", "log"):
            fn = {"exp": mpmath.exp, "log": mpmath.log}[s.op]
            with mpmath.workprec(100):
                want = np.array([round_to(fn(mpmath.mpf(float(v))), fmt)
                                 for v in ins[0].astype(np.float64).ravel()])
            d = ulp_distance(s.output.ravel(), want.astype(get_format(fmt).np_dtype), fmt)
            assert np.all(d <= 1), s.name


def test_every_registered_key_names_the_design_choice_behind_its_error():
    from precision_lab.implementations.registry import design_note

    for key in REGISTRY:
        assert design_note(key), key
    assert design_note("chunked(chunk_size=4096, reduce=kahan)") == design_note("chunked")
    assert design_note("mypkg.losses:my_ce") is None


def test_reduce_own_is_the_default_and_left_out_of_the_canonical_key():
    assert get_implementation("torch(reduce=own)").key == "torch"
    assert get_implementation("chunked(chunk_size=4096, reduce=own)").key == \
        "chunked(chunk_size=4096)"
    assert get_implementation("lse(reduce=kahan)").key == "lse(reduce=kahan)"
