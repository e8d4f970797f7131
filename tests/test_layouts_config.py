"""Layouts and padded vocabularies, and the linear generator, reached from experiment configs.

Oracles: a transposed layout must give bit-identical losses to the contiguous one (numpy
kernels compute on values, not strides); the loss of a padded row and the exact-product loss
are computed here with mpmath from their definitions (60+ digits, exact sums of products) and
rounded to the format by mpmath at the format's precision."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pyarrow.compute as pc
import pytest

from precision_lab.experiment.config import ConfigError, parse_config, sweep_points
from precision_lab.experiment.measure import Presentation, measure
from precision_lab.experiment.runner import run_experiment
from precision_lab.experiment.store import open_results
from precision_lab.implementations import get_implementation
from precision_lab.implementations.base import to_torch
from precision_lab.implementations.layouts import present
from precision_lab.numerics.formats import get_format, to_format

NUMPY_KEYS = ["lse", "lse_log1p", "chunked(chunk_size=16)", "kahan(block=8)", "online_softmax",
              "fp32_accum"]


def _cfg(**over):
    data = {"name": "t", "question": "q", "classes": 50, "batch_size": 4, "samples": 2,
            "formats": ["bfloat16"], "implementations": ["lse"],
            "inputs": {"generator": "normal", "scale": 3.0}}
    data.update(over)
    return data


def _linear(**over):
    data = _cfg(implementations=["linear_torch", "fused_linear(chunk=4)"],
                inputs={"generator": "linear", "hidden": 5})
    data.update(over)
    return data


# --------------------------------------------------------------------------- config messages

@pytest.mark.parametrize("over, key, words", [
    ({"layout": "diagonal"}, "layout", "unknown layout 'diagonal'"),
    ({"layout": ["contiguous", "rowmajor"]}, "layout", "unknown layout 'rowmajor'"),
    ({"pad_vocab_to": 64, "pad_value": "zero"}, "pad_value", "invalid value 'zero'"),
    ({"pad_vocab_to": 64, "pad_value": math.inf}, "pad_value", "not finite"),
    ({"pad_vocab_to": 0}, "pad_vocab_to", "positive integer"),
    ({"pad_value": 1.0}, "pad_value", "needs pad_vocab_to"),
    ({"pad_vocab_to": 64, "loss": {"weight_spread": 2.0}}, "loss.weight", "padded"),
    ({"implementations": ["fused_linear"]}, "implementations", 'generator = "linear"'),
])
def test_layout_config_errors_name_the_key(over, key, words):
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(**over))
    assert err.value.key == key
    assert words in err.value.problem


def test_bad_layout_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(layout="diagonal"))
    assert str(err.value).endswith("(allowed: contiguous, transposed, strided)")


@pytest.mark.parametrize("over, key, words", [
    ({"reduction": "mean"}, "reduction", "per row"),
    ({"implementations": ["lse"]}, "implementations", "'lse' takes logits"),
    ({"implementations": ["chunked(chunk_size=4096)"]}, "implementations", "takes logits"),
    ({"quantity": "grad"}, "quantity", "loss only"),
    ({"loss": {"z_loss": 1e-4}}, "loss", "exact product"),
    ({"layout": "transposed"}, "layout", "apply to logits"),
    ({"formats": ["float64"]}, "formats", "16- or 32-bit"),
    ({"implementations": ["fused_linear(chunk=0)"]}, "implementations", "chunk"),
])
def test_linear_config_errors_name_the_key(over, key, words):
    with pytest.raises(ConfigError) as err:
        parse_config(_linear(**over))
    assert err.value.key == key
    assert words in err.value.problem


def test_linear_keys_are_canonical_and_all_means_both():
    from precision_lab.experiment.config import implementation_keys

    cfg = parse_config(_linear(implementations=["fused_linear(logits=float32, chunk=32768)"]))
    assert implementation_keys(cfg) == ["fused_linear(logits=float32)"]
    assert implementation_keys(parse_config(_linear(implementations="all"))) == [
        "linear_torch", "fused_linear"]


def test_layout_keys_sweep_and_are_recorded():
    cfg = parse_config(_cfg(layout=["contiguous", "transposed"], pad_vocab_to=64,
                            pad_value=["-inf", 2]))
    pts = sweep_points(cfg)
    assert [(p.params["layout"], p.params["pad_value"]) for p in pts] == [
        ("contiguous", "-inf"), ("contiguous", "2.0"), ("transposed", "-inf"),
        ("transposed", "2.0")]
    assert pts[0].params["pad_vocab_to"] == 64 and "pad_vocab_to" not in pts[0].swept
    plain = sweep_points(parse_config(_cfg()))[0].params
    assert not {"layout", "pad_vocab_to", "pad_value"} & set(plain)


# --------------------------------------------------------------------------- layouts in runs

def _losses(path):
    t = open_results(path).samples()
    out = {}
    for key in sorted(set(t.column("implementation").to_pylist())):
        sel = t.filter(pc.equal(t.column("implementation"), key))
        out[key] = (sel.column("computed").to_numpy(), sel.column("reference").to_numpy())
    return out


def test_transposed_and_strided_runs_match_contiguous_bit_for_bit(tmp_path):
    base = dict(implementations=NUMPY_KEYS, formats=["bfloat16", "float32"], classes=37)
    a = _losses(run_experiment(parse_config(_cfg(name="a", **base)), tmp_path).path)
    for layout in ("transposed", "strided"):
        b = _losses(run_experiment(parse_config(_cfg(name=layout, layout=layout, **base)),
                                   tmp_path).path)
        assert set(a) == set(b) == {get_implementation(k).key for k in NUMPY_KEYS}
        for key in a:
            assert np.array_equal(a[key][0], b[key][0]), (layout, key)
            assert np.array_equal(a[key][1], b[key][1]), (layout, key)


def test_torch_receives_the_layouts_strides():
    x = to_format(np.random.default_rng(0).standard_normal((3, 10)), "bfloat16")
    assert to_torch(present(x, "transposed")).stride() == (1, 3)
    assert to_torch(present(x, "strided", 4)).stride() == (24, 2)
    seen = []

    def spy(logits, targets, fmt, **kw):
        seen.append(to_torch(logits).stride())
        return get_implementation("torch")(logits, targets, fmt)

    from precision_lab.implementations.base import Capabilities, Implementation

    impl = Implementation("spy", spy, "records strides", Capabilities())
    measure(x[None], np.zeros((1, 3), np.int64), "bfloat16", [impl],
            presentation=Presentation("transposed", 8, "-inf"))
    assert seen == [(1, 3)]


def _padded_loss(row: list[float], t: int, pad: float, n_pad: int) -> mpmath.mpf:
    """-log softmax of the row with n_pad extra entries of value pad, at its target t."""
    terms = [mpmath.exp(mpmath.mpf(v)) for v in row] + [mpmath.exp(mpmath.mpf(pad))] * n_pad
    return mpmath.log(mpmath.fsum(terms)) - mpmath.mpf(row[t])


def test_finite_pad_value_changes_the_loss_by_the_padded_rows_amount(tmp_path):
    logits = [[0.5, -1.25, 2.0, 3.5, -0.75], [10.0, 9.5, -3.0, 0.25, 1.0]]
    targets = [3, 1]
    data = {"name": "pad", "question": "q", "formats": ["float64"],
            "implementations": ["lse", "torch"], "pad_vocab_to": 8, "pad_value": [1.5, "-inf"],
            "inputs": {"generator": "fixed", "logits": logits, "targets": targets}}
    t = open_results(run_experiment(parse_config(data), tmp_path).path).samples()
    with mpmath.workdps(70):
        for i, (row, tt) in enumerate(zip(logits, targets)):
            true = _padded_loss(row, tt, 0.0, 0)
            padded = _padded_loss(row, tt, 1.5, 3)
            for pad, want in (("1.5", padded), ("-inf", true)):
                sel = t.filter(pc.and_(pc.equal(t.column("pad_value"), pad),
                                       pc.equal(t.column("row"), i)))
                ref = sel.column("reference").to_numpy()
                comp = sel.column("computed").to_numpy()
                # the reference is the real row's loss, correctly rounded
                assert np.all(ref == float(true)), pad
                # each kernel: the padded problem, within a few float64 ulps of its lse (the
                # subtraction of the target's logit keeps lse's absolute error)
                tol = 4 * math.ulp(float(want) + abs(row[tt]))
                for c in comp:
                    assert abs(mpmath.mpf(float(c)) - want) <= tol, pad
                if pad == "1.5":
                    shift = padded - true  # log(1 + 3 e^1.5 / sum_j e^x_j): 0.27 and 4e-4
                    assert shift > 1e-4
                    assert np.all(np.abs((comp - ref) - float(shift)) <= 2 * tol)


# --------------------------------------------------------------------------- linear generator

def _round_mp(v: mpmath.mpf, fmt: str) -> float:
    """v correctly rounded to a normal number of fmt (mpmath at the format's precision)."""
    with mpmath.workprec(get_format(fmt).precision):
        return float(+v)


def test_linear_reference_is_the_exact_products_loss(tmp_path):
    data = _linear(name="lin", classes=7, batch_size=3, samples=2,
                   formats=["bfloat16", "float32"], inputs={"generator": "linear", "hidden": 5,
                                                            "scale": 6.0})
    res = open_results(run_experiment(parse_config(data), tmp_path).path)
    assert not res.has_inputs()  # no logits stored: analyses that need them skip
    t = res.samples()
    for fmt in ("bfloat16", "float32"):
        h, w, y = res.linear_inputs(0, fmt)
        assert h.dtype == get_format(fmt).np_dtype and h.shape == (2, 3, 5)
        assert w.shape == (7, 5)
        sel = t.filter(pc.and_(pc.equal(t.column("format"), fmt),
                               pc.equal(t.column("implementation"), "linear_torch")))
        ref = sel.column("reference").to_numpy()
        hi = sel.column("exact_hi").to_numpy()
        H = h.astype(np.float64).reshape(-1, 5)
        Wd = w.astype(np.float64)
        with mpmath.workprec(3000):  # exact: every product and sum of these values fits
            z = [[mpmath.fsum(mpmath.mpf(a) * mpmath.mpf(b) for a, b in zip(hr, wr))
                  for wr in Wd] for hr in H]
        with mpmath.workdps(80):
            for i, tt in enumerate(np.asarray(y).reshape(-1).tolist()):
                loss = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in z[i])) - z[i][tt]
                assert ref[i] == _round_mp(loss, fmt), (fmt, i)
                assert abs(hi[i] - loss) <= 1e-14 * abs(loss)


def test_linear_generator_is_reproducible():
    cfg = parse_config(_linear(inputs={"generator": "linear", "hidden": [3, 5]}))
    from precision_lab.experiment.config import generate

    pts = sweep_points(cfg)
    a, b = generate(cfg, pts[1]), generate(cfg, pts[1])
    assert a.hidden.shape == (2, 4, 5) and a.classifier.shape == (50, 5)
    assert np.array_equal(a.hidden, b.hidden) and np.array_equal(a.classifier, b.classifier)
    assert np.array_equal(a.targets, b.targets)
