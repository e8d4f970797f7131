"""The training-semantics reference loss (precision_lab.numerics.semantics) against torch in
float64, against mpmath oracles written from the definitions (tests/semantics_oracles.py),
against hand-derived exact values, and torch's argument errors."""

from __future__ import annotations

import itertools
import math
import zlib

import ml_dtypes
import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from semantics_oracles import denominator, loss_row, random_case

from precision_lab.numerics import semantics as S
from precision_lab.numerics.formats import FORMAT_NAMES, round_float64_array, round_to

U = 2.0 ** -53
DT = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32,
      "float64": np.float64}


def torch_loss(x, t, *, weight=None, ignore_index=-100, label_smoothing=0.0,
               reduction="none", z_loss=0.0, softcap=None) -> np.ndarray:
    """torch float64 with the LLM extensions written the way training code writes them."""
    X = torch.from_numpy(np.asarray(x, dtype=np.float64))
    T = torch.from_numpy(np.asarray(t))
    W = None if weight is None else torch.from_numpy(np.asarray(weight, np.float64))
    Y = torch.tanh(X / softcap) * softcap if softcap is not None else X
    kw = {} if T.dim() == 2 else {"ignore_index": ignore_index}
    loss = F.cross_entropy(Y, T, weight=W, label_smoothing=label_smoothing,
                           reduction=reduction, **kw)
    if z_loss:
        valid = T != ignore_index if T.dim() == 1 else torch.ones(len(T), dtype=torch.bool)
        zz = z_loss * torch.logsumexp(Y, -1) ** 2 * valid
        if reduction == "none":
            loss = loss + zz
        elif reduction == "sum":
            loss = loss + zz.sum()
        else:
            D = (valid.sum() if W is None else W[T.clamp(min=0)][valid].sum()) \
                if T.dim() == 1 else len(T)
            loss = loss + zz.sum() / D
    return loss.numpy()


def scale_of(x, t, *, weight=None, label_smoothing=0.0, z_loss=0.0, softcap=None,
             prob=False) -> np.ndarray:
    """Per row: sum_j |c_j| (|lse| + |y_j|) + z lse**2 -- what float64 rounding errors in
    -log p_j = y_j - lse are relative to (float64 estimate)."""
    x = np.asarray(x, np.float64)
    y = softcap * np.tanh(x / softcap) if softcap is not None else x
    m = y.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(y - m).sum(axis=1, keepdims=True)))[:, 0]
    V = x.shape[1]
    w = np.ones(V) if weight is None else np.asarray(weight, np.float64)
    eps = label_smoothing
    if prob:
        c = w * ((1 - eps) * np.asarray(t) + eps / V)
    else:
        c = np.broadcast_to(w * eps / V, x.shape).copy()
        tt = np.clip(t, 0, V - 1)
        c[np.arange(len(t)), tt] += (1 - eps) * w[tt]
    return (np.abs(c) * (np.abs(lse)[:, None] + np.abs(y))).sum(axis=1) + z_loss * lse ** 2


# -- against torch in float64 -----------------------------------------------------------

COMBOS = list(itertools.product(
    ["class", "class_ignore", "prob"], [False, True], [0.0, 0.1, 1.0], [0.0, 1e-3],
    [None, 4.0], ["none", "sum", "mean"]))


@pytest.mark.parametrize("kind,weighted,eps,z,cap,reduction", COMBOS)
def test_agrees_with_torch_float64(kind, weighted, eps, z, cap, reduction):
    rng = np.random.default_rng(zlib.crc32(repr((kind, weighted, eps, z, cap, reduction)).encode()))
    B, V = 16, 7
    x = rng.standard_normal((B, V)) * 3
    kw = dict(label_smoothing=eps, reduction=reduction, z_loss=z, softcap=cap)
    if weighted:
        kw["weight"] = rng.uniform(0.1, 2.0, V)
    if kind == "prob":
        t = rng.dirichlet(np.ones(V), B)
    else:
        t = rng.integers(0, V, B)
        if kind == "class_ignore":
            kw["ignore_index"] = 2  # an in-range class index, ignored
    ours = S.cross_entropy(x, t, "float64", **kw)
    ref = torch_loss(x, t, **kw)
    assert ours.shape == ref.shape and ours.dtype == np.float64
    scale = scale_of(x, t, weight=kw.get("weight"), label_smoothing=eps, z_loss=z,
                     softcap=cap, prob=kind == "prob")
    if kind == "class_ignore":
        scale = np.where(t == 2, 0.0, scale)
        assert np.all(ours[t == 2] == 0) if reduction == "none" else True
    tol = 64 * U * (scale if reduction == "none" else scale.sum())
    if reduction == "mean":
        D = S.reduction_denominator(t, S.validate(x, t, **{k: v for k, v in kw.items()
                                                           if k != "reduction"})[2])
        tol = tol / float(D)
    assert np.all(np.abs(ours - ref) <= tol + 1e-300), (np.abs(ours - ref), tol)


def test_label_smoothing_with_weights_matches_torch_on_many_random_cases():
    """The interaction of smoothing and weights (mean divides by the targets' weights)."""
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(200):
        B, V = int(rng.integers(1, 12)), int(rng.integers(2, 40))
        x = rng.standard_normal((B, V)) * rng.choice([0.3, 3.0])
        t = rng.integers(0, V, B)
        w = rng.uniform(0.0, 3.0, V)
        eps = float(rng.uniform(0, 1))
        red = str(rng.choice(["none", "sum", "mean"]))
        ii = int(rng.integers(0, V)) if rng.random() < 0.5 else -100
        if (t == ii).all():
            continue
        kw = dict(weight=w, label_smoothing=eps, reduction=red, ignore_index=ii)
        ours = np.atleast_1d(S.cross_entropy(x, t, "float64", **kw))
        ref = np.atleast_1d(torch_loss(x, t, **kw))
        worst = max(worst, float(np.max(np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-300))))
    assert worst < 1e-13, worst


# -- correctly rounded: against the mpmath oracle -----------------------------------------

def _oracle_values(x, t, fmt, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                   reduction="none", z_loss=0.0, softcap=None, dps=420):
    prob = np.ndim(t) == 2
    rows = []
    for i in range(x.shape[0]):
        if not prob and int(t[i]) == ignore_index:
            rows.append(mpmath.mpf(0))
        else:
            rows.append(loss_row(x[i], t[i], w=weight, eps=label_smoothing, z=z_loss,
                                 cap=softcap, prob=prob, dps=dps))
    if reduction == "none":
        return rows
    with mpmath.workdps(dps):
        s = mpmath.fsum(rows)
        if reduction == "mean":
            s = s / denominator(t, x.shape[1], w=weight, prob=prob, ignore_index=ignore_index)
        return [s]


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("kw", [
    {}, {"label_smoothing": 0.2}, {"weight": "w"}, {"weight": "w", "label_smoothing": 0.3},
    {"z_loss": 1e-2}, {"softcap": 3.0}, {"softcap": 5.0, "z_loss": 1e-3, "label_smoothing": 0.1},
    {"prob": True}, {"prob": True, "weight": "w", "label_smoothing": 0.25},
    {"ignore_index": 1, "weight": "w", "reduction": "mean"}, {"reduction": "sum", "z_loss": 0.5},
    {"prob": True, "reduction": "mean", "softcap": 2.0},
])
def test_correctly_rounded_against_oracle(fmt, kw):
    B, V = 12, 5
    x, t, kw = random_case(11, fmt, B, V, 6.0, kw)
    res = S.cross_entropy_detailed(x, t, fmt, **kw)
    truth = _oracle_values(x, t, fmt, **kw)
    vals = np.atleast_1d(res.values)
    for i, tv in enumerate(truth):
        want = round_to(tv, fmt)
        assert vals[i].tobytes() == want.tobytes(), (i, vals[i], want)
        with mpmath.workdps(60):
            hl = mpmath.mpf(float(np.atleast_1d(res.hi)[i])) + float(np.atleast_1d(res.lo)[i])
            assert abs(hl - tv) <= float(np.atleast_1d(res.err)[i]) + mpmath.mpf(2) ** -1074


# -- hand-derived exact values ------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_uniform_logits(fmt):
    """Equal logits: lse - y_j = log V for every j, so l = C log V (+ z (v + log V)**2)."""
    V, v = 10, 1.5
    x = np.full((3, V), v)
    t = np.array([0, 4, 9])
    w = np.arange(1, V + 1, dtype=np.float64)
    eps = 0.25
    got = S.cross_entropy(x, t, fmt, weight=w, label_smoothing=eps, z_loss=0.5)
    with mpmath.workdps(100):
        for i, ti in enumerate(t):
            C = (1 - mpmath.mpf(eps)) * w[ti] + mpmath.mpf(eps) / V * w.sum()
            want = C * mpmath.log(V) + mpmath.mpf(0.5) * (v + mpmath.log(V)) ** 2
            assert got[i] == round_to(want, fmt)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_two_classes_closed_form(fmt):
    """V = 2: l = softplus(x_1 - x_0) for target 0; with smoothing eps:
    (1 - eps/2) softplus(x_1 - x_0) + (eps/2) softplus(x_0 - x_1)."""
    rng = np.random.default_rng(5)
    x = round_float64_array(rng.standard_normal((20, 2)) * 4, fmt).astype(np.float64)
    t = np.zeros(20, dtype=np.int64)
    eps = 0.3
    got = S.cross_entropy(x, t, fmt, label_smoothing=eps)
    with mpmath.workdps(100):
        for i in range(20):
            d = mpmath.mpf(x[i, 1]) - mpmath.mpf(x[i, 0])
            sp = mpmath.log1p(mpmath.exp(d))
            sm = mpmath.log1p(mpmath.exp(-d))
            want = (1 - mpmath.mpf(eps) / 2) * sp + mpmath.mpf(eps) / 2 * sm
            assert got[i] == round_to(want, fmt)


def test_rational_results_are_exact():
    """A lone finite logit with z-loss: l = z m**2 exactly; a tie exactly at a float16
    midpoint must round to even."""
    # z m**2 = 0.5 * 3**2 = 4.5, exactly representable
    x = np.array([[3.0, -np.inf, -np.inf]])
    assert S.cross_entropy(x, np.array([0]), "float16", z_loss=0.5)[0] == 4.5
    # z m**2 = (1 + 2**-11) exactly: the float16 midpoint between 1 and 1 + 2**-10 -> 1
    z = 1 + 2.0 ** -11
    got = S.cross_entropy(np.array([[1.0]]), np.array([0]), "float16", z_loss=z)
    assert got[0] == np.float16(1.0)
    z = 1 + 3 * 2.0 ** -11  # midpoint between 1 + 2**-10 and 1 + 2**-9 -> 1 + 2**-9
    got = S.cross_entropy(np.array([[1.0]]), np.array([0]), "float16", z_loss=z)
    assert got[0] == np.float16(1 + 2.0 ** -9)
    # C = 0 and z = 0 (negative weight cancelling): l = sum_j c_j (m - y_j), rational
    w = np.array([1.0, -1.0])
    x = np.array([[0.0, 0.5]])
    # c = eps/2 * w + (1 - eps) w_0 [j=0], eps = 1: c = (0.5, -0.5), C = 0
    got = S.cross_entropy(x, np.array([0]), "float64", weight=w, label_smoothing=1.0)
    assert got[0] == 0.5 * (0.5 - 0.0) + -0.5 * (0.5 - 0.5)


def test_confident_row_keeps_its_tiny_loss_with_weights_and_zloss_free():
    """l = w_t log1p(exp(-700)) ~ 2 * 9.86e-305: no cancellation against lse."""
    x = np.array([[700.0, 0.0]])
    got = S.cross_entropy_detailed(x, np.array([0]), "float64", weight=np.array([2.0, 1.0]))
    with mpmath.workdps(50):
        want = 2 * mpmath.log1p(mpmath.exp(-700))
    assert got.values[0] == round_to(want, "float64")
    assert got.values[0] > 0


# -- the non-finite rules -----------------------------------------------------------------

NINF, PINF, NAN = -np.inf, np.inf, np.nan


@pytest.mark.parametrize("row,t,kw,want", [
    ([0.0, NAN, 1.0], 0, {}, NAN),                               # NaN -> NaN
    ([0.0, NAN, 1.0], 0, {"ignore_index": 0}, 0.0),              # ignored row -> 0
    ([1.0, NINF, 2.0], 1, {}, PINF),                             # masked target -> +inf
    ([1.0, NINF, 2.0], 1, {"weight": [1.0, 0.0, 1.0]}, 0.0),     # weight 0: 0 * inf := 0
    ([1.0, NINF, 2.0], 0, {"label_smoothing": 0.1}, PINF),       # smoothing counts the mask
    ([1.0, NINF, 2.0], 0, {"label_smoothing": 0.1, "weight": [1.0, -1.0, 1.0]}, NINF),
    ([1.0, NINF, 2.0], 0, {"label_smoothing": 0.1, "weight": [1.0, 0.0, 1.0]}, "general"),
    ([NINF, NINF, NINF], 0, {}, NAN),                            # lse = -inf
    ([PINF, 0.0, 1.0], 0, {}, 0.0),                              # the limit
    ([PINF, 0.0, 1.0], 1, {}, PINF),
    ([PINF, 0.0, 1.0], 0, {"z_loss": 1e-4}, PINF),
    ([PINF, 0.0, 1.0], 0, {"label_smoothing": 0.1}, PINF),
    ([PINF, PINF, 1.0], 0, {}, NAN),                             # inf - inf
    ([PINF, PINF, 1.0], 2, {}, PINF),                            # inf - 1: lse is inf
    ([PINF, PINF, 1.0], 2, {"label_smoothing": 0.1}, NAN),       # smoothing counts inf - inf
    ([PINF, 0.0, 1.0], 1, {"weight": [1.0, 0.0, 1.0]}, 0.0),     # every coefficient 0
    ([PINF, NINF, 1.0], 0, {"softcap": 2.0}, "general"),         # softcap: +-inf -> +-c
    ([5.0, NINF, NINF], 0, {}, 0.0),                             # lone finite target
    ([5.0, NINF, NINF], 0, {"z_loss": 0.25}, 6.25),              # z m**2
])
def test_rules(row, t, kw, want):
    kw = {k: (np.array(v) if isinstance(v, list) else v) for k, v in kw.items()}
    x = np.array([row])
    got = S.cross_entropy_detailed(x, np.array([t]), "float64", **kw)
    v = float(got.values[0])
    if want == "general":
        assert got.special_rows == 0 and math.isfinite(v)
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(v)
    else:
        assert v == want


def test_softcap_unmasks_and_caps_infinite_logits():
    c = 2.0
    x = np.array([[PINF, NINF, 0.0]])
    got = S.cross_entropy(x, np.array([1]), "float64", softcap=c)
    with mpmath.workdps(80):
        y = [mpmath.mpf(c), -mpmath.mpf(c), mpmath.mpf(0)]
        want = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in y)) - y[1]
    assert got[0] == round_to(want, "float64")


def test_reductions_exact_and_nan_denominators():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4))
    t = np.array([0, 1, -100, 3, 2, -100])
    w = np.array([0.5, 1.5, 2.0, 0.25])
    for red in ("sum", "mean"):
        got = S.cross_entropy(x, t, "float32", weight=w, label_smoothing=0.1, reduction=red)
        truth = _oracle_values(x, t, "float32", weight=w, label_smoothing=0.1, reduction=red)
        assert got.shape == () and got == round_to(truth[0], "float32")
    allign = np.full(6, -100)
    assert math.isnan(S.cross_entropy(x, allign, "float32", reduction="mean"))
    assert S.cross_entropy(x, allign, "float32", reduction="sum") == 0
    assert math.isnan(S.cross_entropy(x[:0], t[:0], "float32", reduction="mean"))
    # weights of the targets summing to exactly 0: sum / 0 -> +-inf
    w0 = np.array([1.0, -1.0, 1.0, 1.0])
    got = S.cross_entropy(x[:2], np.array([0, 1]), "float64", weight=w0, reduction="mean")
    sgn = np.sign(S.cross_entropy(x[:2], np.array([0, 1]), "float64", weight=w0,
                                  reduction="sum"))
    assert np.isinf(got) and np.sign(got) == sgn


# -- torch's argument errors --------------------------------------------------------------

def _x():
    return np.random.default_rng(0).standard_normal((4, 5))


ERRORS = [
    ("target out of range", dict(t=np.array([0, 1, 2, 5])), {}),
    ("negative target", dict(t=np.array([0, 1, 2, -1])), {}),
    ("-100 with another ignore_index", dict(t=np.array([0, 1, 2, -100])), {"ignore_index": 3}),
    ("weight length", dict(t=np.array([0, 1, 2, 3])), {"weight": np.ones(4)}),
    ("weight 2-D", dict(t=np.array([0, 1, 2, 3])), {"weight": np.ones((1, 5))}),
    ("label_smoothing > 1", dict(t=np.array([0, 1, 2, 3])), {"label_smoothing": 1.5}),
    ("prob with ignore_index >= 0", dict(t="prob"), {"ignore_index": 3}),
    ("prob weight length", dict(t="prob"), {"weight": np.ones(4)}),
    ("prob label_smoothing > 1", dict(t="prob"), {"label_smoothing": 1.01}),
    ("integer probabilities", dict(t=np.zeros((4, 5), dtype=np.int64)), {}),
    ("target batch size", dict(t=np.array([0, 1, 2])), {}),
    ("bad reduction", dict(t=np.array([0, 1, 2, 3])), {"reduction": "avg"}),
    ("float class indices", dict(t=np.array([0.0, 1.0, 2.0, 3.0])), {}),
]


@pytest.mark.parametrize("name,args,kw", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_match_torch(name, args, kw):
    x = _x()
    t = args["t"]
    if isinstance(t, str):
        t = np.full((4, 5), 0.2)
    tkw = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    with pytest.raises(Exception) as theirs:
        F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), **tkw)
    with pytest.raises(Exception) as ours:
        S.cross_entropy(x, t, "float64", **kw)
    assert isinstance(ours.value, type(theirs.value)), (type(ours.value), type(theirs.value))
    assert isinstance(ours.value, ValueError)  # every argument error is also a ValueError


def test_torch_silently_accepts_what_the_reference_refuses():
    """torch ignores label_smoothing < 0 and NaN (no smoothing at all); the reference refuses
    them, and refuses non-finite weights and probabilities, z_loss < 0, softcap <= 0."""
    x, t = _x(), np.array([0, 1, 2, 3])
    X, T = torch.from_numpy(x), torch.from_numpy(t)
    assert torch.equal(F.cross_entropy(X, T, label_smoothing=-0.1), F.cross_entropy(X, T))
    for bad in ({"label_smoothing": -0.1}, {"label_smoothing": float("nan")},
                {"weight": np.array([1, np.nan, 1, 1, 1.0])}, {"z_loss": -1.0},
                {"softcap": 0.0}, {"softcap": float("inf")}):
        with pytest.raises(ValueError):
            S.cross_entropy(x, t, "float64", **bad)
    with pytest.raises(ValueError, match="row 1"):
        q = np.full((4, 5), 0.2)
        q[1, 2] = np.inf
        S.cross_entropy(x, q, "float64")


def test_prob_targets_accept_negative_ignore_index_like_torch():
    x = _x()
    q = np.random.default_rng(1).dirichlet(np.ones(5), 4)
    got = S.cross_entropy(x, q, "float64", ignore_index=-5)
    ref = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(q), ignore_index=-5,
                          reduction="none").numpy()
    assert np.allclose(got, ref, rtol=1e-14, atol=0)


# -- fast path = exact path ----------------------------------------------------------------

def hard_batch(rng, V=9, B=40):
    rows = []
    for i in range(B):
        r = rng.standard_normal(V) * rng.choice([0.01, 1.0, 8.0, 60.0])
        k = i % 5
        if k == 1:
            r[3] = r.max() + rng.choice([5.0, 20.0, 80.0, 400.0, 700.0])  # confident
        elif k == 2:
            r[:] = r[0] + rng.integers(-2, 3, V) * 2.0 ** -20  # near ties
        elif k == 3:
            r *= 1e30  # huge magnitudes
        elif k == 4:
            r[[1, 5]] = -np.inf  # masked classes
        rows.append(r)
    return np.array(rows)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("kw", [
    {}, {"label_smoothing": 0.1, "weight": "w0"}, {"z_loss": 1e-4}, {"softcap": 30.0},
    {"prob": True}, {"weight": "wneg", "label_smoothing": 0.5}, {"reduction": "mean",
                                                                  "weight": "w0"},
])
def test_fast_path_equals_exact_path(fmt, kw):
    rng = np.random.default_rng(17)
    V = 9
    x = round_float64_array(hard_batch(rng, V), fmt).astype(np.float64)
    if fmt == "float64" and kw.get("softcap"):
        x = x[:8]
    B = x.shape[0]
    kw = dict(kw)
    t = rng.integers(0, V, B)
    t[2::5] = 3
    if kw.pop("prob", False):
        t = rng.dirichlet(np.ones(V), B)
        t[:, [1, 5]] = 0.0
    w = rng.uniform(0.5, 2.0, V)
    if kw.get("weight") == "w0":
        w[[1, 5]] = 0.0  # masked classes without weight keep smoothed rows finite
        kw["weight"] = w
    elif kw.get("weight") == "wneg":
        w[::3] *= -1
        kw["weight"] = w
    fast = S.cross_entropy_detailed(x, t, fmt, method="fast", **kw)
    exact = S.cross_entropy_detailed(x, t, fmt, method="exact", **kw)
    assert fast.values.tobytes() == exact.values.tobytes()
    with np.errstate(invalid="ignore"):
        fin = np.isfinite(exact.hi) & (exact.err > 0)
        gap = np.abs((fast.hi + fast.lo) - (exact.hi + exact.lo))[fin]
        assert np.all(gap <= fast.err[fin] + exact.err[fin] + 1e-300 * 0)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_without_keywords_it_is_the_plain_reference(fmt, reduction):
    """No keyword: bit-identical to precision_lab.numerics.reference on hard rows, non-finite
    rows included (the same rules)."""
    from precision_lab.numerics import reference as R

    rng = np.random.default_rng(29)
    V = 9
    x = round_float64_array(hard_batch(rng, V), fmt).astype(np.float64)
    t = rng.integers(0, V, x.shape[0])
    t[2::5] = 3
    if reduction == "none":
        x[0, 2], x[1, 4], x[6] = np.nan, np.inf, -np.inf  # NaN, +inf elsewhere, all masked
        x[11, t[11]] = np.inf  # the target the only +inf: 0
    ours = S.cross_entropy_detailed(x, t, fmt, reduction=reduction)
    ref = R.cross_entropy_detailed(x, t, fmt, reduction)
    assert ours.values.tobytes() == ref.values.tobytes()


def test_masked_vocabulary_many_infinite_logits():
    """Half the classes masked with -inf and weight 0 (so smoothing keeps the loss finite)."""
    rng = np.random.default_rng(13)
    B, V = 5, 40
    x = rng.standard_normal((B, V)) * 2
    x[:, V // 2:] = -np.inf
    w = np.r_[rng.uniform(0.5, 2, V // 2), np.zeros(V - V // 2)]
    t = rng.integers(0, V // 2, B)
    got = S.cross_entropy(x, t, "float32", weight=w, label_smoothing=0.1)
    for i in range(B):
        assert got[i] == round_to(loss_row(x[i], t[i], w=w, eps=0.1), "float32")
