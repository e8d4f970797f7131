"""Certified gradients (precision_lab.numerics.gradient) against an mpmath evaluation of the
definition at 420 digits (tests/semantics_oracles.py), against central finite differences of
the certified loss, against torch's autograd in float64, on exhaustive float16/bfloat16 grids
of underflowing probabilities, and the rules for special rows."""

from __future__ import annotations

import itertools
import zlib

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from semantics_oracles import coefficients, denominator, grad_row, random_case

from precision_lab.numerics import gradient as G
from precision_lab.numerics import semantics as S
from precision_lab.numerics.formats import FORMAT_NAMES, get_format, round_float64_array, round_to

U = 2.0 ** -53


def oracle_grad(x, t, fmt, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                reduction="none", z_loss=0.0, softcap=None, dps=420) -> np.ndarray:
    """Correctly rounded gradient from the 420-digit oracle (0 on ignored rows)."""
    prob = np.ndim(t) == 2
    B, V = x.shape
    D = 1
    with mpmath.workdps(dps):
        if reduction == "mean":
            D = denominator(t, V, w=weight, prob=prob, ignore_index=ignore_index)
        out = np.zeros((B, V), get_format(fmt).np_dtype)
        for i in range(B):
            if not prob and int(t[i]) == ignore_index:
                continue
            g = grad_row(x[i], t[i], w=weight, eps=label_smoothing, z=z_loss, cap=softcap,
                         prob=prob, dps=dps)
            out[i] = [round_to(v / D, fmt) for v in g]
    return out


def torch_grad(x, t, *, weight=None, ignore_index=-100, label_smoothing=0.0,
               reduction="none", z_loss=0.0, softcap=None) -> np.ndarray:
    X = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_(True)
    T = torch.from_numpy(np.asarray(t))
    W = None if weight is None else torch.from_numpy(np.asarray(weight, np.float64))
    Y = torch.tanh(X / softcap) * softcap if softcap is not None else X
    kw = {} if T.dim() == 2 else {"ignore_index": ignore_index}
    loss = F.cross_entropy(Y, T, weight=W, label_smoothing=label_smoothing,
                           reduction=reduction, **kw)
    if z_loss:
        valid = T != ignore_index if T.dim() == 1 else torch.ones(len(T), dtype=torch.bool)
        zz = (z_loss * torch.logsumexp(Y, -1) ** 2 * valid).sum()
        if reduction == "mean":
            zz = zz / ((valid.sum() if W is None else W[T.clamp(min=0)][valid].sum())
                       if T.dim() == 1 else len(T))
        loss = loss.sum() + zz  # the sum of the rows' z-terms (or its mean)
    loss.sum().backward()
    return X.grad.numpy()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


# -- against the 420-digit oracle ----------------------------------------------------------

CASES = [
    {}, {"label_smoothing": 0.2}, {"weight": "w"}, {"weight": "w", "label_smoothing": 0.3},
    {"z_loss": 1e-2}, {"softcap": 3.0}, {"softcap": 5.0, "z_loss": 1e-3, "label_smoothing": 0.1},
    {"prob": True}, {"prob": True, "weight": "w", "label_smoothing": 0.25},
    {"ignore_index": 1, "weight": "w", "reduction": "mean"}, {"reduction": "sum", "z_loss": 0.5},
    {"prob": True, "reduction": "mean", "softcap": 2.0}, {"reduction": "mean"},
]


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("kw", CASES)
def test_correctly_rounded_against_oracle(fmt, kw):
    B, V = 8, 5
    x, t, kw = random_case(23, fmt, B, V, 9.0, kw)
    res = G.cross_entropy_grad_detailed(x, t, fmt, **kw)
    want = oracle_grad(x, t, fmt, **kw)
    assert same_bits(res.values, want), np.argwhere(res.values != want)
    # the unrounded truth: |hi + lo - g| <= err
    prob = np.ndim(t) == 2
    with mpmath.workdps(420):
        D = 1 if kw.get("reduction") != "mean" else denominator(
            t, V, w=kw.get("weight"), prob=prob, ignore_index=kw.get("ignore_index", -100))
        for i in range(B):
            if not prob and int(t[i]) == kw.get("ignore_index", -100):
                continue
            g = grad_row(x[i], t[i], w=kw.get("weight"), eps=kw.get("label_smoothing", 0.0),
                         z=kw.get("z_loss", 0.0), cap=kw.get("softcap"), prob=prob)
            for j in range(V):
                hl = mpmath.mpf(float(res.hi[i, j])) + float(res.lo[i, j])
                assert abs(hl - g[j] / D) <= float(res.err[i, j]) + mpmath.mpf(2) ** -1074


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_confident_rows_keep_p_minus_one(fmt):
    """p_t - 1 near a confident prediction: -(sum of the other probabilities), to the last
    bit; the other probabilities underflow to the right subnormal or 0."""
    margins = [2.0, 10.0, 30.0, 60.0, 90.0, 104.0, 110.0, 700.0, 745.0]
    x = np.array([[m, 0.0, -1.0, -3.0] for m in margins])
    t = np.zeros(len(margins), np.int64)
    got = G.cross_entropy_grad(x, t, fmt)
    assert same_bits(got, oracle_grad(x, t, fmt, dps=800))
    assert np.all(got[:, 0].astype(np.float64) < 0) or fmt != "float64"


# -- against torch's autograd in float64 ---------------------------------------------------

COMBOS = list(itertools.product(["class", "class_ignore", "prob"], [False, True],
                                [0.0, 0.1, 1.0], [0.0, 1e-3], [None, 4.0],
                                ["none", "sum", "mean"]))


@pytest.mark.parametrize("kind,weighted,eps,z,cap,reduction", COMBOS)
def test_agrees_with_torch_autograd_float64(kind, weighted, eps, z, cap, reduction):
    rng = np.random.default_rng(zlib.crc32(repr((kind, weighted, eps, z, cap, reduction)).encode()))
    B, V = 6, 7
    x = rng.standard_normal((B, V)) * 2
    kw = dict(label_smoothing=eps, reduction=reduction, z_loss=z, softcap=cap)
    if weighted:
        kw["weight"] = rng.uniform(0.1, 2.0, V)
    if kind == "prob":
        t = rng.dirichlet(np.ones(V), B)
    else:
        t = rng.integers(0, V, B)
        if kind == "class_ignore":
            kw["ignore_index"] = int(t[0])
    ours = G.cross_entropy_grad(x, t, "float64", **kw)
    ref = torch_grad(x, t, **kw)
    w = np.ones(V) if not weighted else kw["weight"]
    scale = (np.abs(w).sum() + 2 * z * 10) * 64 * U
    if reduction == "mean":
        D = float(S.reduction_denominator(t, S.validate(x, t, **{k: v for k, v in kw.items()
                                                                 if k != "reduction"})[2]))
        scale = scale / D
    assert np.all(np.abs(ours - ref) <= scale), np.max(np.abs(ours - ref)) / scale
    if kind == "class_ignore":
        assert np.all(ours[t == kw["ignore_index"]] == 0)


# -- against central finite differences of the certified loss --------------------------------

@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.3, "weight": "w"}, {"z_loss": 0.05},
                                {"softcap": 2.5}, {"prob": True, "label_smoothing": 0.1},
                                {"reduction": "mean", "weight": "w", "ignore_index": 2}])
def test_matches_central_finite_differences_of_the_loss(kw):
    """(L(x + h e_ij) - L(x - h e_ij)) / (2h) from the loss's unrounded hi + lo (exact
    path, ~100 bits), h = 2**-34: truncation ~h**2 |L'''| ~ 2**-64, rounding ~2**-100 / h;
    both far below the float64 ULP of the gradient."""
    rng = np.random.default_rng(31)
    kw = dict(kw)
    B, V = 3, 4
    x = rng.standard_normal((B, V))
    t = rng.dirichlet(np.ones(V), B) if kw.pop("prob", False) else rng.integers(0, V, B)
    if kw.get("weight") == "w":
        kw["weight"] = rng.uniform(0.5, 2.0, V)
    red = kw.pop("reduction", "sum")
    if np.ndim(t) == 1 and "ignore_index" in kw:
        t[0] = kw["ignore_index"]
    g = G.cross_entropy_grad(x, t, "float64", reduction=red, **kw)
    h = 2.0 ** -34

    def L(z):
        r = S.cross_entropy_detailed(z, t, "float64", reduction=red, method="exact", **kw)
        return mpmath.mpf(float(r.hi)) + float(r.lo)

    with mpmath.workdps(60):
        for i in range(B):
            for j in range(V):
                xp, xm = x.copy(), x.copy()
                xp[i, j] += h  # exact: |x| < 8 keeps x + h on the float64 grid
                xm[i, j] -= h
                assert xp[i, j] - x[i, j] == h and x[i, j] - xm[i, j] == h
                fd = (L(xp) - L(xm)) / (2 * h)
                ulp = float(np.spacing(abs(g[i, j]))) if g[i, j] != 0 else 2.0 ** -1074
                assert abs(fd - float(g[i, j])) <= 0.5 * ulp + 2.0 ** -60, (i, j, fd, g[i, j])


# -- tiny probabilities: exhaustive grids ------------------------------------------------------

@pytest.mark.parametrize("fmt,lo,hi", [("float16", -30.0, 0.0), ("bfloat16", -110.0, 0.0)])
def test_underflowing_probabilities_exhaustive(fmt, lo, hi):
    """Every value a of the format in [lo, hi]: logits (0, a), target 0.  g_1 = sigmoid(a)
    and g_0 = -sigmoid(a), which underflow through the format's subnormals to 0."""
    f = get_format(fmt)
    bits = np.arange(0, 2 ** 16, dtype=np.uint32).astype(np.uint16)
    with np.errstate(invalid="ignore"):  # NaN patterns
        allv = bits.view(f.np_dtype).astype(np.float64)
    a = np.unique(allv[np.isfinite(allv) & (allv >= lo) & (allv <= hi)])
    x = np.stack([np.zeros_like(a), a], axis=1)
    t = np.zeros(len(a), np.int64)
    got = G.cross_entropy_grad(x, t, fmt)
    with mpmath.workdps(60):
        s = [mpmath.mpf(1) / (1 + mpmath.exp(-mpmath.mpf(v))) for v in a]
        want1 = np.array([round_to(v, fmt) for v in s], dtype=f.np_dtype)
        want0 = np.array([round_to(-v, fmt) for v in s], dtype=f.np_dtype)
    assert same_bits(got[:, 1].copy(), want1)
    assert same_bits(got[:, 0].copy(), want0)
    sub = (np.abs(want1.astype(np.float64)) < f.smallest_normal) & (want1 != 0)
    assert sub.sum() > 5 and (want1 == 0).sum() > 5  # the grid crosses the subnormals


def test_tiny_probability_with_smoothing_and_zloss_float16():
    """K p_j - c_j where K p_j is subnormal and c_j = eps/V w_j is not: the sum is rounded
    once (no flush of the small part)."""
    a = np.arange(-20.0, -8.0, 0.25)
    x = np.stack([np.zeros_like(a), a, np.full_like(a, -30.0)], axis=1)
    t = np.zeros(len(a), np.int64)
    kw = dict(label_smoothing=2.0 ** -12, z_loss=1e-3)
    assert same_bits(G.cross_entropy_grad(x, t, "float16", **kw),
                     oracle_grad(x, t, "float16", **kw))


# -- exact values and the rules ------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_uniform_logits_exact(fmt):
    """Equal logits: p_j = 1/V exactly, so g_j = C/V - c_j (rational, rounded once)."""
    V = 3
    x = np.full((2, V), 0.75)
    t = np.array([0, 2])
    w = np.array([1.0, 2.0, 4.0])
    eps = 0.5
    got = G.cross_entropy_grad(x, t, fmt, weight=w, label_smoothing=eps)
    from fractions import Fraction
    for i, ti in enumerate(t):
        c = [Fraction(w[j]) * (Fraction(eps) / V + (1 - Fraction(eps) if j == ti else 0))
             for j in range(V)]
        C = sum(c)
        for j in range(V):
            q = C / V - c[j]
            with mpmath.workprec(300):
                want = round_to(mpmath.mpf(q.numerator) / q.denominator, fmt)
            assert got[i, j] == want


def test_rules():
    x = np.array([[0.0, 1.0, 2.0],          # ignored
                  [0.0, np.nan, 2.0],        # NaN row
                  [np.inf, 1.0, 2.0],        # +inf: NaN row
                  [-np.inf, 1.0, 2.0],       # masked class 0, target 1: g_0 = -c_0 = 0
                  [-np.inf, 1.0, 2.0],       # masked target with weight: g_0 = -w_0 exactly
                  [-np.inf, -np.inf, -np.inf]])
    t = np.array([-100, 0, 0, 1, 0, 0])
    w = np.array([2.0, 1.0, 1.0])
    g = G.cross_entropy_grad(x, t, "float64", weight=w)
    assert np.all(g[0] == 0)
    assert np.all(np.isnan(g[1])) and np.all(np.isnan(g[2])) and np.all(np.isnan(g[5]))
    assert g[3, 0] == 0.0 and not np.signbit(g[3, 0])
    assert g[4, 0] == -2.0
    # softcap: infinite logits have sech^2 = 0, the element is exactly 0
    gc = G.cross_entropy_grad(np.array([[np.inf, 0.5, -np.inf]]), np.array([1]), "float32",
                              softcap=3.0)
    assert gc[0, 0] == 0 and gc[0, 2] == 0 and gc[0, 1] < 0
    # "mean" over all-ignored rows: 0 / 0 = NaN everywhere
    gm = G.cross_entropy_grad(x[:1], np.array([-100]), "float32", reduction="mean")
    assert np.all(np.isnan(gm))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_fast_path_equals_exact_path(fmt):
    rng = np.random.default_rng(41)
    V = 6
    rows = []
    for i in range(18):
        r = rng.standard_normal(V) * rng.choice([0.5, 5.0, 40.0])
        if i % 3 == 1:
            r[2] = r.max() + rng.choice([3.0, 15.0, 60.0, 200.0])
        if i % 3 == 2:
            r[:] = r[0] + rng.integers(-2, 3, V) * 2.0 ** -30
        rows.append(r)
    x = round_float64_array(np.array(rows), fmt).astype(np.float64)
    t = rng.integers(0, V, len(rows))
    t[1::3] = 2
    for kw in ({}, {"label_smoothing": 0.1, "weight": rng.uniform(0.5, 2, V)},
               {"z_loss": 1e-3, "reduction": "mean"},
               {"softcap": 10.0} if fmt != "float64" else {"reduction": "sum"}):
        fast = G.cross_entropy_grad_detailed(x, t, fmt, method="fast", **kw)
        exact = G.cross_entropy_grad_detailed(x, t, fmt, method="exact", **kw)
        assert same_bits(fast.values, exact.values), kw


def test_coefficients_oracle_self_check():
    """The oracle's coefficients sum as torch documents: C = (1 - eps) w_t + eps/V sum w."""
    with mpmath.workdps(50):
        c = coefficients(4, 1, [1.0, 2.0, 3.0, 4.0], 0.2)
        assert abs(mpmath.fsum(c) - ((1 - mpmath.mpf(0.2)) * 2 + mpmath.mpf(0.2) / 4 * 10)) < 1e-40


def test_double_double_softcap_and_sech2_bounds():
    """The fast path's y = c tanh(x / c) and sech(x / c)**2 against 200-digit values, across
    the branch points (2b = 1, b = 372) and from 1e-300 to 1e300 (c = 3)."""
    from precision_lab.numerics import _fastsem

    rng = np.random.default_rng(77)
    c = 3.0
    mags = np.concatenate([10.0 ** rng.uniform(-300, 300, 400), rng.uniform(0, 4, 400),
                           [1.5 * (1 - 2.0 ** -52), 1.5, 1.5 * (1 + 2.0 ** -52), 1116.0,
                            1117.0, 2.0 ** -40, 0.0]])
    x = (mags * rng.choice([-1.0, 1.0], mags.size))[None, :]
    yh, yl, eta, Eh, El = _fastsem._dd_softcap(x, c, True)
    s2h, s2l = _fastsem._dd_sech2(Eh, El)
    with mpmath.workdps(200):
        for j in range(x.shape[1]):
            a = mpmath.mpf(float(x[0, j])) / c
            y = c * mpmath.tanh(a)
            assert abs(mpmath.mpf(float(yh[0, j])) + float(yl[0, j]) - y) <= float(eta[0, j])
            s2 = mpmath.sech(a) ** 2
            got = mpmath.mpf(float(s2h[0, j])) + float(s2l[0, j])
            assert abs(got - s2) <= 2.0 ** -78 * s2 + mpmath.mpf(2) ** -1060
