"""Implementations with training semantics: declared capabilities (loss keywords, gradient),
refusals, and their losses and gradients against the certified reference
(precision_lab.numerics.semantics / gradient), which shares no code with them."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from precision_lab.implementations import REGISTRY, Capabilities, Implementation
from precision_lab.implementations.registry import default_keys
from precision_lab.numerics import gradient as G
from precision_lab.numerics import semantics as S
from precision_lab.numerics.formats import get_format, round_float64_array
from precision_lab.numerics.metrics import ulp_distance

#: The declared table (key -> (gradient, keywords)); a change must be deliberate.
ALL = frozenset({"weight", "ignore_index", "label_smoothing", "prob_targets", "z_loss",
                 "softcap"})
DECLARED = {
    "naive": (False, frozenset()), "naive_softmax": (False, frozenset()),
    "lse": (True, ALL), "lse_log1p": (True, ALL), "torch": (True, ALL),
    "torch_logsoftmax_nll": (True, ALL), "torch_manual": (True, frozenset()),
    "scipy": (False, frozenset()), "torch_upcast": (True, ALL), "torch_autocast": (True, ALL),
}
LLM = frozenset({"ignore_index", "label_smoothing", "z_loss", "softcap"})
DECLARED.update({
    "online_softmax": (False, LLM), "chunked": (True, LLM), "kahan": (False, LLM),
    "vocab_parallel": (True, LLM), "fp32_accum": (False, LLM),
    "jax": (False, frozenset()), "optax": (False, frozenset()),
    "torch_compile": (True, frozenset({"weight", "ignore_index", "label_smoothing"})),
})


def test_capability_table():
    assert set(REGISTRY) == set(DECLARED)
    for key, impl in REGISTRY.items():
        caps = impl.capabilities
        assert (caps.gradient, caps.keywords) == DECLARED[key], key
        assert (impl.grad_function is not None) == caps.gradient


def test_capabilities_are_validated():
    with pytest.raises(ValueError, match="unknown loss keywords"):
        Capabilities(keywords=frozenset({"focal"}))
    with pytest.raises(ValueError, match="no grad_function"):
        Implementation("x", lambda *a: None, "d", Capabilities(gradient=True))
    with pytest.raises(ValueError, match="does not declare gradient"):
        Implementation("x", lambda *a: None, "d", Capabilities(), grad_function=lambda *a: None)


def test_undeclared_keywords_are_refused():
    x = np.zeros((2, 3), np.float32)
    t = np.array([0, 1])
    with pytest.raises(TypeError, match="does not support label_smoothing"):
        REGISTRY["naive"](x, t, "float32", label_smoothing=0.1)
    with pytest.raises(TypeError, match="prob_targets"):
        REGISTRY["scipy"](x, np.full((2, 3), 1 / 3), "float32")
    with pytest.raises(TypeError, match="declares no gradient"):
        REGISTRY["scipy"].grad(x, t, "float32")
    with pytest.raises(TypeError, match="trace records the plain loss only"):
        REGISTRY["lse"](x, t, "float32", trace=[], weight=np.ones(3))
    for key in ("lse", "lse_log1p", "torch_logsoftmax_nll"):  # ignored rows: not traced
        with pytest.raises(TypeError, match="plain loss only"):
            REGISTRY[key](x, np.array([0, -100]), "float32", trace=[])
    with pytest.raises(TypeError, match="reduction"):
        REGISTRY["lse"].grad(x, t, "float32", reduction="avg")
    # defaults are not "use": the plain call still works everywhere
    for key in default_keys():
        REGISTRY[key](x, t, "float32", ignore_index=-100, label_smoothing=0.0, z_loss=0.0)


def _max_ulps(got, ref, fmt):
    return int(np.max(ulp_distance(got, ref, fmt)))


SETS = [
    {}, {"weight": "w"}, {"ignore_index": 2}, {"label_smoothing": 0.1},
    {"weight": "w", "label_smoothing": 0.2, "ignore_index": 1}, {"prob": True},
    {"prob": True, "weight": "w", "label_smoothing": 0.1}, {"z_loss": 1e-3},
    {"softcap": 5.0}, {"softcap": 5.0, "z_loss": 1e-4, "label_smoothing": 0.1},
]


def _supported(what: str, grad: bool = False) -> list:
    """(key, keyword set) pairs of the keys that declare every keyword of the set."""
    out = []
    for k in [k for k, v in DECLARED.items() if v[1] and (v[0] or not grad)]:
        for kw in SETS:
            need = {"prob_targets" if n == "prob" else n for n in kw}
            # torch.compile compiles per shape and keyword set (seconds each): its combined set
            if need <= DECLARED[k][1] and (k != "torch_compile" or len(need) >= 3):
                out.append((k, kw))
    return out


def _inputs(kw, fmt, rng, B=24, V=11):
    kw = dict(kw)
    x = round_float64_array(rng.uniform(-3, 3, (B, V)), fmt)
    if kw.pop("prob", False):
        t = rng.dirichlet(np.ones(V), B)
        t = round_float64_array(t, fmt).astype(np.float64)  # what the implementations see
    else:
        t = rng.integers(0, V, B)
        if "ignore_index" in kw:
            t[::4] = kw["ignore_index"]
        else:
            t[::5] = -100
    if kw.get("weight") == "w":
        kw["weight"] = round_float64_array(rng.uniform(0.5, 2.0, V), fmt).astype(np.float64)
    return x, t, kw


@pytest.mark.parametrize("fmt", ["float32", "float64"])
@pytest.mark.parametrize("key,kw", _supported("loss"))
def test_loss_within_a_few_ulps_of_the_reference(key, kw, fmt):
    """Moderate logits (no cancellation): measured at most 6 ulps (float32, lse with label
    smoothing: the smoothed sum of V terms in float32)."""
    rng = np.random.default_rng(5)
    x, t, kw = _inputs(kw, fmt, rng)
    impl = REGISTRY[key]
    ref = S.cross_entropy(x.astype(np.float64), t, fmt, **kw)
    for red in ("none",) + (("sum", "mean") if impl.capabilities.own_reduction else ()):
        got = impl(x, t, fmt, reduction=red, **kw)
        ref = S.cross_entropy(x.astype(np.float64), t, fmt, reduction=red, **kw)
        assert _max_ulps(got, ref, fmt) <= 8, (red, _max_ulps(got, ref, fmt))


@pytest.mark.parametrize("fmt", ["float32", "float64"])
@pytest.mark.parametrize("key,kw", _supported("grad", grad=True))
def test_gradient_close_to_the_reference(key, kw, fmt):
    """Each element within 8 ulps of the row's largest gradient magnitude (elements near 0
    carry the absolute error of the larger ones)."""
    rng = np.random.default_rng(9)
    x, t, kw = _inputs(kw, fmt, rng)
    impl = REGISTRY[key]
    f = get_format(fmt)
    for red in ("none", "mean"):
        got = impl.grad(x, t, fmt, reduction=red, **kw)
        ref = G.cross_entropy_grad(x.astype(np.float64), t, fmt, reduction=red, **kw)
        assert got.shape == ref.shape and got.dtype == f.np_dtype
        big = np.abs(ref.astype(np.float64)).max(axis=1, keepdims=True)
        tol = 8 * np.spacing(big.astype(f.np_dtype)).astype(np.float64)
        err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        assert np.all(err <= tol), (red, float(np.max(err / np.maximum(tol, 1e-300))))


def test_torch_manual_gradient():
    rng = np.random.default_rng(2)
    x = rng.uniform(-3, 3, (7, 5)).astype(np.float32)
    t = rng.integers(0, 5, 7)
    got = REGISTRY["torch_manual"].grad(x, t, "float32")
    ref = G.cross_entropy_grad(x.astype(np.float64), t, "float32")
    assert np.max(np.abs(got - ref)) <= 4 * np.spacing(np.float32(1))


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_autocast_is_upcast_for_low_logits_and_torch_for_float32(low):
    """Measured with torch 2.13 on CPU: cross_entropy is on autocast's float32 list."""
    rng = np.random.default_rng(4)
    V = 50
    x = round_float64_array(rng.normal(0, 4, (40, V)), low)
    t = rng.integers(0, V, 40)
    kw = dict(weight=rng.uniform(0.5, 2, V), label_smoothing=0.1)
    up, ac = REGISTRY["torch_upcast"], REGISTRY["torch_autocast"]
    assert up(x, t, "float32", **kw).tobytes() == ac(x, t, "float32", **kw).tobytes()
    assert up.grad(x, t, "float32", **kw).tobytes() == ac.grad(x, t, "float32", **kw).tobytes()
    x32 = x.astype(np.float32)
    assert ac(x32, t, "float32", **kw).tobytes() == REGISTRY["torch"](x32, t, "float32",
                                                                        **kw).tobytes()


@pytest.mark.parametrize("key", ["torch_upcast", "torch", "lse", "lse_log1p"])
def test_exact_widening_stays_exact(key):
    """bfloat16 logits with a float32 loss: the widening is exact, so the result equals the
    implementation on the float32 copy (no rounding on the way)."""
    rng = np.random.default_rng(8)
    x = round_float64_array(rng.normal(0, 3, (16, 9)), "bfloat16")
    t = rng.integers(0, 9, 16)
    impl = REGISTRY[key]
    a = impl(x, t, "float32", label_smoothing=0.1)
    b = impl(x.astype(np.float32), t, "float32", label_smoothing=0.1)
    assert a.tobytes() == b.tobytes()


def test_upcast_gradient_arrives_in_the_logits_format():
    rng = np.random.default_rng(6)
    x = round_float64_array(rng.normal(0, 3, (8, 10)), "bfloat16")
    t = rng.integers(0, 10, 8)
    g = REGISTRY["torch_upcast"].grad(x, t, "float32")
    assert g.dtype == np.float32
    assert np.array_equal(g, g.astype(ml_dtypes.bfloat16).astype(np.float32))
    ref = G.cross_entropy_grad(x.astype(np.float64), t, "bfloat16")
    assert np.max(ulp_distance(g.astype(ml_dtypes.bfloat16), ref, "bfloat16")) <= 1


def test_numpy_keyword_path_ignores_default_ignore_index_rows():
    x = np.random.default_rng(1).uniform(-2, 2, (4, 6)).astype(np.float32)
    t = np.array([0, -100, 3, -100])
    for key in ("lse", "lse_log1p", "torch", "torch_logsoftmax_nll"):
        out = REGISTRY[key](x, t, "float32")
        assert out[1] == 0 and out[3] == 0 and out[0] > 0, key
        g = REGISTRY[key].grad(x, t, "float32")
        assert np.all(g[1] == 0) and np.all(g[3] == 0), key


def test_reference_dispatches_training_keywords_and_grad():
    """reference.cross_entropy takes the keywords of the issue's interface and gives the
    semantics module's values; a plain call is unchanged; the gradient is exposed too."""
    import torch

    from precision_lab.numerics import reference, semantics

    x = np.array([[0.5, -1.0, 2.0], [1.0, 1.0, 0.0]])
    t = np.array([2, -100])
    got = reference.cross_entropy(x, t, "float64", "mean", label_smoothing=0.1)
    assert got == semantics.cross_entropy(x, t, "float64", reduction="mean",
                                          label_smoothing=0.1)
    want = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t),
                                             label_smoothing=0.1)
    assert abs(float(got) - float(want)) < 1e-15
    g = reference.cross_entropy_grad(x, t, "float64", "mean", label_smoothing=0.1)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(xt, torch.tensor(t), label_smoothing=0.1).backward()
    assert np.allclose(g, xt.grad.numpy(), rtol=1e-14, atol=1e-300)
    plain = reference.cross_entropy(x, np.array([2, 0]), "float32")
    assert plain.dtype == np.float32 and plain.shape == (2,)
