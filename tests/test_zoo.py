"""Tests of the LLM-scale zoo (implementations.llm, jax_impls, compiled, layouts).

Oracles: the exact loss from the definition in mpmath at 420 digits (tests/oracles.py), a
first-order error bound derived below for each algorithm from its steps, plain Python loops
of the published algorithms written here (Milakov & Gimelshein's Algorithm 3, Megatron's
serial form), and identities that must hold bit for bit.

Error bound (u the unit roundoff of the working format W, R = max_j x_j - min_j x_j the
row's range, gamma(k) = k u / (1 - k u), library exp/log within one ulp).  Every algorithm
sums terms exp(x_j - M) (M a running or final maximum), each term carrying the rounding of
its argument (|error| <= u |x_j - M| <= u R, relative error of the exp about u R), of the
exp (2u), and of the rescalings exp(m_old - m_new) it went through: their arguments add up
along one path to at most R (the maxima only rise: u R in all), each rescaling another
3u (exp, product).  With n_path the roundings of the sum along its longest path:

    rel(d) <= gamma(n_path) + 2 u R (+ 2 u R more for exp2, whose product (y - m) log2 e
              is rounded first) + 2u + 3u n_rescale,
    |L_computed - L| <= rel(d) / (1 - rel(d)) + 2u |log d| + u |lse| + u |L| + ulp_f(L)/2.

n_path, n_rescale: sequential online softmax V - 1, V; pairwise ceil(log2 V), ceil(log2 V);
Liger blocks of c columns ceil(log2 c) + nb, nb (nb blocks); compensated blocks
ceil(log2 b) + 4, nb (a compensated sum is within 2u + O(nb u^2)); float32 accumulation
ceil(log2 V), 0.
"""

from __future__ import annotations

import builtins
import math
import zlib

import mpmath
import numpy as np
import pytest

from precision_lab.implementations.compiled import torch_compile, torch_compile_grad
from precision_lab.implementations.jax_impls import MissingExtraError, require_jax
from precision_lab.implementations.layouts import present
from precision_lab.implementations.llm import (
    GRADIENTS,
    LINEAR_IMPLEMENTATIONS,
    LLM_IMPLEMENTATIONS,
    LOSS_KEYWORDS,
    as_tensor,
    chunked,
    chunked_grad,
    fused_linear,
    kahan,
    online_softmax,
    resolve,
    resolve_linear,
    vocab_parallel,
    vocab_parallel_grad,
)
from precision_lab.implementations.registry import REGISTRY
from precision_lab.implementations.zoo import ZOO_IMPLEMENTATIONS, resolve_zoo
from precision_lab.numerics.exact_logits import (
    PairLogits,
    cross_entropy_exact_logits,
    exact_product,
)
from precision_lab.numerics.formats import get_format, round_float64_array, round_to
from precision_lab.numerics.metrics import ulp_error
from precision_lab.numerics.reference import cross_entropy_detailed
from tests.oracles import exact_loss

F16, BF16, F32, F64 = "float16", "bfloat16", "float32", "float64"


def as_fmt(x, fmt: str) -> np.ndarray:
    return round_float64_array(np.asarray(x, dtype=np.float64), fmt)


def exact_losses(x: np.ndarray, t: np.ndarray) -> list:
    return [exact_loss(row, int(ti)) for row, ti in zip(x, t)]


def ulp_at(v, fmt: str) -> float:
    f = get_format(fmt)
    e = max(math.frexp(float(v))[1] - 1, f.emin)
    return math.ldexp(1.0, e - f.precision + 1)


def gamma(k: int, u: float) -> float:
    return k * u / (1 - k * u)


def bound_ulps(x: np.ndarray, t: np.ndarray, exact: list, fmt: str, work: str,
               n_path: int, n_rescale: "int | None", exp2: bool = False) -> np.ndarray:
    """The derived bound of the module docstring, in ULPs of fmt at the exact loss
    (n_rescale None: the number of times the row's running maximum rises)."""
    u = get_format(work).unit_roundoff
    out = []
    for row, ti, L in zip(np.asarray(x, np.float64), t, exact):
        if n_rescale is None:
            pm = np.maximum.accumulate(row)
            n_resc = 1 + int(np.sum(pm[1:] > pm[:-1]))
        else:
            n_resc = n_rescale
        L = float(L)
        R = float(row.max() - row.min())
        lse = L + float(row[ti])
        rel = gamma(n_path, u) + 2 * u * R + (2 * u * R if exp2 else 0) + 2 * u + 3 * u * n_resc
        logd = lse - float(row.max())
        if rel >= 0.5:  # first order no longer holds: no bound
            out.append(math.inf)
            continue
        E = rel / (1 - rel) + 2 * u * abs(logd) + u * abs(lse) + u * abs(L)
        out.append(E / ulp_at(L, fmt) + 0.5)
    return np.array(out) * 1.01


def lg(n: int) -> int:
    return max(n - 1, 0).bit_length()


# -- parameters in keys ---------------------------------------------------------------------

def test_keys_resolve_to_canonical_forms():
    assert resolve("chunked(chunk_size=4096)").key == "chunked(chunk_size=4096)"
    assert resolve(" chunked ( chunk_size = 4096 , acc = float32 ) ").key == \
        "chunked(chunk_size=4096)"
    assert resolve("chunked(exp=exp, acc=format)").key == "chunked(acc=format, exp=exp)"
    assert resolve("chunked(chunk_size=32768, acc=float32, exp=exp2)").key == "chunked"
    assert resolve("chunked") is LLM_IMPLEMENTATIONS["chunked"]
    assert resolve("vocab_parallel(acc=format, degree=2)").key == \
        "vocab_parallel(degree=2, acc=format)"
    assert resolve("kahan(block=4)") is resolve("kahan(block=4, compensate=on)")
    assert resolve("torch") is None and resolve("pkg.mod:fn") is None
    assert resolve_zoo("jax") is ZOO_IMPLEMENTATIONS["jax"]
    assert set(ZOO_IMPLEMENTATIONS) <= set(REGISTRY)


@pytest.mark.parametrize("key, fragment", [
    ("chunked(chunk=4)", "no parameter 'chunk'; its parameters: chunk_size, acc, exp"),
    ("chunked(chunk_size=0)", "must be >= 1"),
    ("chunked(chunk_size=x)", "is not an integer"),
    ("kahan(acc=float8)", "allowed format, float32, float64"),
    ("online_softmax(order)", "malformed parameter 'order'"),
    ("chunked(acc=format, acc=float32)", "given twice"),
])
def test_bad_keys_give_one_clear_message(key, fragment):
    with pytest.raises(ValueError, match=None) as exc:
        resolve(key)
    assert fragment in str(exc.value)


def test_keywords_and_gradients_declared():
    assert set(LOSS_KEYWORDS) == {"online_softmax", "chunked", "kahan", "vocab_parallel",
                                  "fp32_accum"}
    assert set(GRADIENTS) == {"chunked", "vocab_parallel"}
    assert resolve_linear("fused_linear(chunk=64)").key == "fused_linear(chunk=64)"
    assert set(LINEAR_IMPLEMENTATIONS) == {"fused_linear", "linear_torch"}
    with pytest.raises(ValueError, match="no parameter 'block'"):
        resolve_linear("fused_linear(block=3)")


# -- every member against the exact loss, within its derived bound ----------------------------

CASES = [
    # key, working format (None: the format), n_path(V), n_rescale(V), exp2
    ("online_softmax", None, lambda V: V - 1, lambda V: None, False),
    ("online_softmax(order=pairwise)", None, lg, lg, False),
    ("online_softmax(acc=float32)", F32, lambda V: V - 1, lambda V: None, False),
    ("chunked(chunk_size=16, acc=format)", None, lambda V: 4 + -(-V // 16),
     lambda V: -(-V // 16), True),
    ("chunked(chunk_size=16, acc=format, exp=exp)", None, lambda V: 4 + -(-V // 16),
     lambda V: -(-V // 16), False),
    ("chunked", F32, lg, lambda V: 1, True),
    ("kahan(block=8, acc=format)", None, lambda V: 3 + 4, lambda V: -(-V // 8), False),
    ("kahan(block=8, acc=format, compensate=off)", None, lambda V: 3 + -(-V // 8),
     lambda V: -(-V // 8), False),
    ("kahan", F32, lambda V: 8 + 4, lambda V: 1, False),
    ("vocab_parallel(degree=4)", F32, lambda V: V // 4 + 4, lambda V: 0, False),
    ("vocab_parallel(degree=4, acc=format)", None, lambda V: V // 4 + 4, lambda V: 0, False),
    ("fp32_accum", F32, lg, lambda V: 0, False),
]


@pytest.mark.parametrize("fmt", [F16, BF16, F32, F64])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_member_within_derived_bound(case, fmt):
    key, work, n_path, n_resc, exp2 = case
    rng = np.random.default_rng(zlib.crc32(f"{key} {fmt}".encode()))
    V, B = 48, 6
    x = as_fmt(rng.standard_normal((B, V)) * 2.0, fmt)
    x[1, 5] = np.max(x[1]) + 8  # a confident row, target 5
    t = rng.integers(0, V, B)
    t[1] = 5
    exact = exact_losses(x, t)
    w = fmt if work is None or get_format(work).precision < get_format(fmt).precision else work
    bound = bound_ulps(x, t, exact, fmt, w, n_path(V), n_resc(V), exp2)
    err = ulp_error(resolve(key)(x, t, fmt), np.array(exact, dtype=object), fmt)
    assert np.all(err <= bound), (key, fmt, err, bound)
    assert np.sum(bound < 64) >= 4  # the bound says something on most rows


def test_fp32_accum_sum_mode_within_bound():
    rng = np.random.default_rng(5)
    V, B = 200, 8
    x = as_fmt(rng.standard_normal((B, V)), BF16)
    t = rng.integers(0, V, B)
    exact = exact_losses(x, t)
    out = resolve("fp32_accum(upcast=sum)")(x, t, BF16)
    # terms in bfloat16 (u R + 2u each), the float32 sum (tiny), its rounding to bfloat16 (u)
    bound = bound_ulps(x, t, exact, BF16, BF16, 1, 0)
    assert np.all(ulp_error(out, np.array(exact, dtype=object), BF16) <= bound)


# -- identities --------------------------------------------------------------------------------

def algorithm3(row: np.ndarray, ti: int) -> np.generic:
    """Milakov & Gimelshein's Algorithm 3 as printed, one scalar at a time, in row's dtype;
    then (m + log d) - x_t."""
    dt = row.dtype.type
    m, d = dt(-np.inf), dt(0)
    with np.errstate(all="ignore"):
        for v in row:
            m_new = dt(max(m, v))
            d = dt(dt(d * dt(np.exp(dt(m - m_new)))) + dt(np.exp(dt(v - m_new))))
            m = m_new
        return dt(dt(m + dt(np.log(d))) - row[ti])


@pytest.mark.parametrize("fmt", [F16, BF16, F32])
def test_online_softmax_is_algorithm3_bit_for_bit(fmt):
    rng = np.random.default_rng(11)
    x = as_fmt(rng.standard_normal((5, 300)) * 3, fmt)
    x[2] = np.sort(x[2])  # the maximum changes at every step
    t = rng.integers(0, 300, 5)
    want = np.array([algorithm3(r, int(ti)) for r, ti in zip(x, t)])
    got = online_softmax(x, t, fmt)
    assert got.view(get_format(fmt).uint_dtype).tolist() == \
        want.view(get_format(fmt).uint_dtype).tolist()
    one = chunked(x, t, fmt, chunk_size=1, exp="exp", acc="format")  # blocks of one column
    assert one.tobytes() == got.tobytes()


@pytest.mark.parametrize("fmt", [F16, BF16, F32, F64])
def test_chunked_with_one_block_is_the_unchunked_lse_bit_for_bit(fmt):
    rng = np.random.default_rng(12)
    x = as_fmt(rng.standard_normal((7, 333)) * 4, fmt)
    t = rng.integers(0, 333, 7)
    want = REGISTRY["lse"](x, t, fmt)
    for c in (333, 512, 100000):
        assert chunked(x, t, fmt, chunk_size=c, exp="exp", acc="format").tobytes() == \
            want.tobytes()
    # float32 logits: the float32 accumulator is the format itself
    if fmt == F32:
        assert resolve("fp32_accum")(x, t, fmt).tobytes() == want.tobytes()


def test_fp32_accum_is_float32_lse_rounded_once():
    rng = np.random.default_rng(13)
    x = as_fmt(rng.standard_normal((6, 50)) * 3, BF16)
    t = rng.integers(0, 50, 6)
    l32 = REGISTRY["lse"](x.astype(np.float32), t, F32)
    want = round_float64_array(l32.astype(np.float64), BF16)
    assert resolve("fp32_accum")(x, t, BF16).tobytes() == want.tobytes()


def megatron_serial(x: np.ndarray, t: np.ndarray, degree: int) -> np.ndarray:
    """Megatron's forward written out in torch, shard by shard: float32 logits, the max over
    shards, each shard's exp-sum, the sums added in rank order, log(sum) - (x_t - max)."""
    import torch

    X = as_tensor(x).float()
    B, V = X.shape
    p = V // degree
    mx = torch.stack([X[:, r * p:(r + 1) * p].max(dim=-1)[0] for r in range(degree)]).amax(0)
    total = torch.zeros(B)
    for r in range(degree):
        total = total + torch.exp(X[:, r * p:(r + 1) * p] - mx[:, None]).sum(dim=-1)
    pred = X[torch.arange(B), torch.from_numpy(t)] - mx
    return (torch.log(total) - pred).double().numpy()


@pytest.mark.parametrize("degree", [1, 4])
def test_vocab_parallel_is_megatron_serial_form(degree):
    rng = np.random.default_rng(14 + degree)
    x = as_fmt(rng.standard_normal((6, 400)) * 3, BF16)
    t = rng.integers(0, 400, 6)
    want = round_float64_array(megatron_serial(x, t, degree), BF16)
    got = vocab_parallel(x, t, BF16, degree=degree)
    assert got.tobytes() == want.tobytes()
    if degree == 1:  # one shard: the max shift, one exp-sum, log(sum) - (x_t - max) in float32
        l32 = REGISTRY["torch_manual"]  # (a different formula; only checks they are close)
        assert np.all(ulp_error(got, l32(x.astype(np.float32), t, F32).astype(np.float64),
                                BF16) <= 1)


def test_vocab_parallel_uneven_shards_and_more_shards_than_classes():
    rng = np.random.default_rng(15)
    x = as_fmt(rng.standard_normal((4, 10)), F32)
    t = rng.integers(0, 10, 4)
    exact = np.array(exact_losses(x, t), dtype=object)
    for degree in (3, 16):
        err = ulp_error(vocab_parallel(x, t, F32, degree=degree), exact, F32)
        assert np.all(err <= 4)


def test_kahan_compensation_rescues_a_stagnating_running_sum():
    """4096 equal logits: the exact loss is log 4096; a bfloat16 running sum of ones stops at
    256 (256 + 1 rounds to 256), so the uncompensated blocks of one give log 256; the
    compensated ones keep the lost ones in c and reach 4096."""
    V = 4096
    x = np.zeros((1, V), dtype=get_format(BF16).np_dtype)
    t = np.array([7])
    exact = np.array([exact_loss(x[0], 7)], dtype=object)
    off = kahan(x, t, BF16, block=1, compensate="off", acc="format")
    on = kahan(x, t, BF16, block=1, acc="format")
    assert float(off[0]) == float(round_to(mpmath.log(256), BF16))
    assert ulp_error(on, exact, BF16)[0] <= 0.5
    assert ulp_error(off, exact, BF16)[0] > 40


def test_kahan_reduces_error_on_many_small_terms():
    """Rows of 20000 logits with one dominant one: many tiny terms each below half an ulp of
    the running sum in float16.  Compensation keeps them."""
    rng = np.random.default_rng(16)
    V, B = 20000, 4
    x = as_fmt(rng.uniform(-9, -7, (B, V)), F16)
    x[:, 0] = 0.0
    t = np.full(B, 3)
    exact = np.array(exact_losses(x, t), dtype=object)
    e_on = ulp_error(kahan(x, t, F16, block=1, acc="format"), exact, F16)
    e_off = ulp_error(kahan(x, t, F16, block=1, compensate="off", acc="format"), exact, F16)
    assert np.max(e_on) <= 1.0 and np.min(e_off) > 4 * np.max(e_on)


# -- loss keywords and gradients ------------------------------------------------------------------

def exact_keyword_loss(row, ti, eps=0.0, z=0.0, c=None):
    """The definitions of numerics.semantics from scratch at 100 digits."""
    with mpmath.workdps(100):
        y = [mpmath.mpf(float(v)) for v in row]
        if c is not None:
            y = [c * mpmath.tanh(v / c) for v in y]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in y))
        V = len(y)
        loss = (1 - mpmath.mpf(eps)) * (lse - y[ti]) + mpmath.mpf(eps) / V * \
            mpmath.fsum(lse - v for v in y)
        return loss + z * lse ** 2


@pytest.mark.parametrize("key", ["online_softmax(acc=float32)", "chunked", "kahan",
                                 "vocab_parallel(degree=2)", "fp32_accum",
                                 "online_softmax(order=pairwise)"])
def test_loss_keywords_against_their_definitions(key):
    rng = np.random.default_rng(17)
    V, B = 64, 5
    x = as_fmt(rng.standard_normal((B, V)) * 4, BF16)
    t = rng.integers(0, V, B)
    t[2] = -100
    impl = resolve(key)
    for kw in ({"label_smoothing": 0.1}, {"z_loss": 1e-4}, {"softcap": 3.0},
               {"label_smoothing": 0.2, "z_loss": 1e-3, "softcap": 5.0}):
        got = impl.function(x, t, BF16, **kw)
        assert float(got[2]) == 0.0  # ignored row
        for i in (0, 1, 3, 4):
            want = exact_keyword_loss(x[i], int(t[i]), kw.get("label_smoothing", 0.0),
                                      kw.get("z_loss", 0.0), kw.get("softcap"))
            e = ulp_error(got[i:i + 1], np.array([want], dtype=object), BF16)[0]
            limit = 1.0 if "pairwise" not in key else 3.0
            assert e <= limit, (key, kw, i, e)


def exact_grad(row, ti, eps=0.0, z=0.0, c=None, scale=1):
    with mpmath.workdps(60):
        xs = [mpmath.mpf(float(v)) for v in row]
        y = [c * mpmath.tanh(v / c) for v in xs] if c is not None else xs
        S = mpmath.fsum(mpmath.exp(v) for v in y)
        lse = mpmath.log(S)
        V = len(y)
        g = []
        for j, v in enumerate(y):
            p = mpmath.exp(v) / S
            gj = p * (1 + 2 * z * lse) - mpmath.mpf(eps) / V - (1 - mpmath.mpf(eps)) * (j == ti)
            if c is not None:
                gj *= 1 - mpmath.tanh(xs[j] / c) ** 2
            g.append(gj / scale)
        return g


@pytest.mark.parametrize("grad", [chunked_grad, vocab_parallel_grad])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradients_within_one_ulp_of_the_exact_gradient(grad, reduction):
    """float32 work rounded once to bfloat16: every entry within 1 ulp of the correctly
    rounded exact gradient (a float32 error of ~1e-6 relative straddles a bfloat16 rounding
    boundary only rarely, and then by one ulp)."""
    rng = np.random.default_rng(18)
    V, B = 40, 4
    x = as_fmt(rng.standard_normal((B, V)) * 3, BF16)
    t = rng.integers(0, V, B)
    t[3] = -100
    kws = ({}, {"label_smoothing": 0.1, "z_loss": 1e-3}, {"softcap": 4.0})
    for kw in kws:
        g = grad(x, t, BF16, reduction=reduction, **kw)
        assert g.shape == (B, V) and g.dtype == get_format(BF16).np_dtype
        assert not np.any(g[3].astype(np.float64))
        n = 3 if reduction == "mean" else 1
        for i in range(3):
            want = exact_grad(x[i], int(t[i]), kw.get("label_smoothing", 0.0),
                              kw.get("z_loss", 0.0), kw.get("softcap"), n)
            wr = np.array([round_to(v, BF16) for v in want])
            diff = np.abs(g[i].view(np.int16).astype(np.int64) -
                          wr.astype(get_format(BF16).np_dtype).view(np.int16).astype(np.int64))
            same_sign = np.sign(g[i].astype(np.float64)) == np.sign(wr.astype(np.float64))
            assert np.all((diff <= 1) & same_sign | (wr.astype(np.float64) == 0)), (kw, i)


# -- fused linear cross-entropy and its exact truth --------------------------------------------

def fraction_logits(h: np.ndarray, w: np.ndarray) -> list:
    """Exact dot products as mpmath numbers at enough precision to be exact (integers times a
    power of two: 2000 bits hold any sum of float32 products)."""
    with mpmath.workprec(2000):
        H = [[mpmath.mpf(float(v)) for v in r] for r in h.astype(np.float64)]
        W = [[mpmath.mpf(float(v)) for v in r] for r in w.astype(np.float64)]
        return [[mpmath.fsum(a * b for a, b in zip(hr, wr)) for wr in W] for hr in H]


@pytest.mark.parametrize("fmt", [F16, BF16, F32])
def test_exact_product_is_exact_and_its_loss_correctly_rounded(fmt):
    rng = np.random.default_rng(19)
    B, K, V = 3, 48, 30
    h = as_fmt(rng.standard_normal((B, K)) * np.exp(rng.uniform(-6, 3, (B, K))), fmt)
    w = as_fmt(rng.standard_normal((V, K)) * 0.2, fmt)
    t = rng.integers(0, V, B)
    ep = exact_product(h, w, block=7)  # several vocabulary blocks
    exact = fraction_logits(h, w)
    for i in range(B):
        with mpmath.workprec(2000):
            assert [mpmath.mp.make_mpf(v) for v in ep.row(i)] == exact[i]
    hi, lo, err = ep.hi_lo_err()
    with mpmath.workprec(2000):
        for i in range(B):
            for j in range(V):
                assert abs(mpmath.mpf(hi[i, j]) + mpmath.mpf(lo[i, j]) - exact[i][j]) <= \
                    mpmath.mpf(err[i, j])
    ref = cross_entropy_exact_logits(ep, t, fmt)
    with mpmath.workprec(2000):
        want = []
        for i in range(B):
            S = mpmath.fsum(mpmath.exp(v) for v in exact[i])
            want.append(round_to(mpmath.log(S) - exact[i][int(t[i])], fmt))
    assert ref.values.tolist() == np.array(want, dtype=get_format(fmt).np_dtype).tolist()
    assert cross_entropy_exact_logits(ep, t, fmt, method="exact").values.tobytes() == \
        ref.values.tobytes()


def test_pair_logits_with_a_low_part_beyond_float64():
    """Logits hi + lo with lo far below hi's ulp: the loss is that of the exact sums."""
    rng = np.random.default_rng(20)
    hi = rng.standard_normal((4, 20)) * 3
    lo = hi * 2.0 ** -60 * rng.uniform(-1, 1, hi.shape)
    t = rng.integers(0, 20, 4)
    for fmt in (BF16, F32, F64):
        got = cross_entropy_exact_logits(PairLogits(hi, lo), t, fmt).values
        with mpmath.workprec(400):
            want = []
            for i in range(4):
                xs = [mpmath.mpf(a) + mpmath.mpf(b) for a, b in zip(hi[i], lo[i])]
                S = mpmath.fsum(mpmath.exp(v) for v in xs)
                want.append(round_to(mpmath.log(S) - xs[int(t[i])], fmt))
        assert got.tolist() == np.array(want, dtype=get_format(fmt).np_dtype).tolist()
    # float64 logits with lo = 0: exactly the reference
    r = cross_entropy_exact_logits(PairLogits(hi, np.zeros_like(hi)), t, F32)
    assert r.values.tobytes() == cross_entropy_detailed(hi, t, F32).values.tobytes()


def test_exact_product_refuses_float64_and_mismatched_shapes():
    with pytest.raises(ValueError, match="must be float16, bfloat16 or float32"):
        exact_product(np.zeros((2, 3)), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="same K"):
        exact_product(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


def test_fused_linear_against_the_exact_product_truth():
    import torch

    rng = np.random.default_rng(21)
    B, K, V = 4, 64, 1000
    h = as_fmt(rng.standard_normal((B, K)), BF16)
    w = as_fmt(rng.standard_normal((V, K)) * (2.0 / math.sqrt(K)), BF16)
    t = rng.integers(0, V, B)
    truth = cross_entropy_exact_logits(exact_product(h, w), t, BF16)
    # float32 logits and accumulation: within 1 ulp of the truth
    e32 = ulp_error(fused_linear(h, w, t, BF16, chunk=300, logits="float32"), truth.hi, BF16,
                    exact_lo=truth.lo)
    assert np.all(e32 <= 1.0)
    # logits rounded to bfloat16 first (Liger): each logit moves by up to half an ulp of it,
    # the loss by up to twice the largest such move
    z = np.abs(fraction_as_float(h, w))
    move = np.array([2 * 0.5 * ulp_at(np.max(z[i]), BF16) for i in range(B)])
    lim = move / np.array([ulp_at(v, BF16) for v in truth.hi]) + 1.0
    e16 = ulp_error(fused_linear(h, w, t, BF16, chunk=300), truth.hi, BF16, exact_lo=truth.lo)
    assert np.all(e16 <= lim)
    # one block: the same matmul as the unfused logits, then Liger's chunked update
    Z = (as_tensor(h) @ as_tensor(w).T)
    zl = round_float64_array(Z.double().numpy(), BF16)
    one = fused_linear(h, w, t, BF16, chunk=V)
    assert one.tobytes() == chunked(zl, t, BF16, acc="float32").tobytes()
    base = LINEAR_IMPLEMENTATIONS["linear_torch"](h, w, t, BF16)
    assert base.dtype == get_format(BF16).np_dtype and torch.is_tensor(Z)


def fraction_as_float(h, w):
    return h.astype(np.float64) @ w.astype(np.float64).T


# -- layouts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("pad", [None, 64])
@pytest.mark.parametrize("pad_value", ["-inf", "masked", -30.0])
def test_present_keeps_values_and_sets_strides(layout, pad, pad_value):
    rng = np.random.default_rng(22)
    x = as_fmt(rng.standard_normal((3, 100)), BF16)
    v = present(x, layout, pad, pad_value)
    assert v[:, :100].tobytes() == np.ascontiguousarray(x).tobytes() or \
        np.array_equal(v[:, :100].astype(np.float64), x.astype(np.float64))
    width = 128 if pad and pad_value != "masked" else 100
    assert v.shape == (3, width)
    item = x.dtype.itemsize
    if layout == "transposed":
        assert v.strides[0] == item
    elif layout == "strided":
        assert v.strides[1] == 2 * item
    if pad and pad_value == "masked":
        assert v.strides[0] >= 128 * item or layout == "transposed"
    T = as_tensor(v)
    assert T.stride() == tuple(s // item for s in v.strides)
    assert T.is_contiguous() == (layout == "contiguous" and not (pad and pad_value == "masked"))


def test_minus_inf_padding_leaves_the_truth_and_the_kernels_unchanged():
    rng = np.random.default_rng(23)
    x = as_fmt(rng.standard_normal((5, 100)) * 3, BF16)
    t = rng.integers(0, 100, 5)
    padded = present(x, "contiguous", 128, "-inf")
    assert cross_entropy_detailed(padded, t, BF16).values.tobytes() == \
        cross_entropy_detailed(x, t, BF16).values.tobytes()
    for key in ("online_softmax", "chunked", "lse", "fp32_accum"):
        assert REGISTRY[key](padded, t, BF16).tobytes() == REGISTRY[key](x, t, BF16).tobytes()
    # a whole block of -inf pads: shifting by the block's own maximum gives NaN
    blocks = present(x, "contiguous", 512, "-inf")
    assert np.all(np.isnan(kahan(blocks, t, BF16).astype(np.float64)))
    assert chunked(blocks, t, BF16, chunk_size=256).tobytes() == chunked(x, t, BF16).tobytes()
    # a finite pad value is a different problem
    assert not np.array_equal(chunked(present(x, "contiguous", 128, 5.0), t, BF16),
                              chunked(x, t, BF16))
    # soft-capping turns -inf pads into -c: 156 pad columns at -1 take probability mass
    capped = chunked(present(x, "contiguous", 256, "-inf"), t, BF16, softcap=1.0)
    assert np.all(capped.astype(np.float64) > chunked(x, t, BF16, softcap=1.0).astype(float))


def test_numpy_kernels_give_the_same_values_on_every_layout():
    rng = np.random.default_rng(24)
    x = as_fmt(rng.standard_normal((4, 300)) * 2, F16)
    t = rng.integers(0, 300, 4)
    for key in ("online_softmax", "chunked(chunk_size=64)", "kahan", "fp32_accum"):
        want = resolve(key)(x, t, F16).tobytes()
        for layout in ("transposed", "strided"):
            for pad_value in ("-inf", "masked"):
                v = present(x, layout, None if pad_value == "-inf" else 512, pad_value)
                assert resolve(key)(v, t, F16).tobytes() == want, (key, layout, pad_value)


# -- JAX and torch.compile ----------------------------------------------------------------------

def test_missing_jax_extra_is_one_clear_message(monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "jax" or name.startswith("jax."):
            raise ImportError("No module named 'jax'", name="jax")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingExtraError) as exc:
        require_jax("optax")
    msg = str(exc.value)
    assert "'optax'" in msg and "pip install 'precision-lab[jax]'" in msg and "\n" not in msg


@pytest.mark.parametrize("fmt", [F16, BF16, F32, F64])
def test_jax_and_optax_within_the_max_shifted_bound(fmt):
    pytest.importorskip("jax")
    rng = np.random.default_rng(25)
    V, B = 200, 6
    x = as_fmt(rng.standard_normal((B, V)) * 3, fmt)
    t = rng.integers(0, V, B)
    exact = exact_losses(x, t)
    bound = bound_ulps(x, t, exact, fmt, fmt, V - 1, 0)
    for key in ("jax", "optax"):
        out = REGISTRY[key](x, t, fmt)
        assert out.dtype == get_format(fmt).np_dtype
        assert np.all(ulp_error(out, np.array(exact, dtype=object), fmt) <= bound), key


def test_torch_compile_one_real_compilation():
    """float32, V = 200: the compiled loss (per row and mean) within the bound of a
    max-shifted log-sum-exp with any summation order, on contiguous and transposed logits;
    its compiled backward within 1 ulp of the exact gradient rounded to float32 (relative
    to the largest entry)."""
    rng = np.random.default_rng(26)
    V, B = 200, 6
    x = as_fmt(rng.standard_normal((B, V)) * 3, F32)
    t = rng.integers(0, V, B)
    exact = exact_losses(x, t)
    bound = bound_ulps(x, t, exact, F32, F32, V - 1, 0)
    for v in (x, present(x, "transposed")):
        out = torch_compile(v, t, F32)
        assert np.all(ulp_error(out, np.array(exact, dtype=object), F32) <= bound)
    mean = REGISTRY["torch_compile"](x, t, F32, reduction="mean")  # checks dtype, shape ()
    with mpmath.workdps(50):
        want = mpmath.fsum(exact) / B
    assert abs(float(mean) - float(want)) <= float(want) * 1e-5
    g = torch_compile_grad(x, t, F32)
    for i in range(B):
        want_g = np.array([float(v) for v in exact_grad(x[i], int(t[i]))])
        assert np.max(np.abs(g[i] - want_g)) <= 4 * 2.0 ** -24


def test_zoo_rejects_bad_keywords_and_targets():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="label_smoothing"):
        chunked(x, np.array([0, 1]), F32, label_smoothing=2.0)
    with pytest.raises(ValueError, match="softcap"):
        online_softmax(x, np.array([0, 1]), F32, softcap=0.0)
    with pytest.raises(ValueError, match="row 1: target 4 is out of range"):
        kahan(x, np.array([0, 4]), F32)


def test_llm_configs_load_and_name_every_key_canonically():
    """experiments/llm/*.toml load as they are and spell every key in its canonical form
    (defaults left out), the form the results are filed under."""
    from pathlib import Path

    from precision_lab.experiment.config import load_config
    from precision_lab.implementations import get_implementation

    paths = sorted((Path(__file__).parent.parent / "experiments" / "llm").glob("*.toml"))
    assert len(paths) >= 5
    for path in paths:
        cfg = load_config(path)
        assert cfg.question.strip()
        linear = cfg.inputs.generator == "linear"
        for key in cfg.implementations:
            impl = resolve_linear(key) if linear else get_implementation(key)
            assert impl.key == key, (path.name, key)
