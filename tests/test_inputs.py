"""Input generators: determinism, shapes, the torch protocol, rounding into formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precision_lab.experiment.config import generate, load_config, sweep_points
from precision_lab.numerics.formats import get_format, to_format


def _cfg(write_config, inputs: str, top: str = "classes = 6\nbatch_size = 4\nsamples = 3\n"):
    return load_config(write_config(f'name = "g"\nquestion = "q"\nseed = 11\n{top}'
                                    f'[inputs]\n{inputs}\n'))


@pytest.mark.parametrize("inputs", [
    'generator = "uniform"\nlow = -2.0\nhigh = 3.0',
    'generator = "normal"\nscale = 5.0',
    'generator = "confident"\nmargin = 20.0',
    'generator = "large"\nformat = "float16"\nfraction = 0.9',
])
def test_generators_are_deterministic_and_shaped(write_config, inputs):
    cfg = _cfg(write_config, inputs)
    p = sweep_points(cfg)[0]
    a, b = generate(cfg, p), generate(cfg, p)
    assert a.logits.shape == (3, 4, 6) and a.logits.dtype == np.float64
    assert a.targets.shape == (3, 4) and a.targets.dtype == np.int64
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.targets, b.targets)
    assert ((a.targets >= 0) & (a.targets < 6)).all()


def test_uniform_range_and_large_magnitudes(write_config):
    u = generate(*(lambda c: (c, sweep_points(c)[0]))(
        _cfg(write_config, 'generator = "uniform"\nlow = -2.0\nhigh = 3.0')))
    assert u.logits.min() >= -2.0 and u.logits.max() < 3.0
    cfg = _cfg(write_config, 'generator = "large"\nformat = "float16"\nfraction = 0.9')
    x = generate(cfg, sweep_points(cfg)[0]).logits
    assert np.abs(x).max() <= 0.9 * 65504 and np.abs(x).max() > 1000


def test_confident_target_is_max_plus_margin(write_config):
    cfg = _cfg(write_config, 'generator = "confident"\nmargin = 7.5\nscale = 2.0')
    b = generate(cfg, sweep_points(cfg)[0])
    x, t = b.logits, b.targets
    xt = np.take_along_axis(x, t[..., None], -1)[..., 0]
    others = x.copy()
    np.put_along_axis(others, t[..., None], -np.inf, -1)
    assert np.array_equal(xt, others.max(-1) + 7.5)


def test_seed_changes_inputs_and_sweep_shares_randomness(write_config):
    cfg = _cfg(write_config, 'generator = "normal"\nscale = [1.0, 2.0]')
    p0, p1 = sweep_points(cfg)
    a, b = generate(cfg, p0), generate(cfg, p1)
    assert np.array_equal(2 * a.logits, b.logits)  # common random numbers across a sweep
    cfg2 = load_config(write_config('name = "g"\nquestion = "q"\nseed = 12\nclasses = 6\n'
                                    'batch_size = 4\nsamples = 3\n[inputs]\ngenerator = "normal"\n',
                                    "other.toml"))
    assert not np.array_equal(generate(cfg2, sweep_points(cfg2)[0]).logits, a.logits)


def test_torch_protocol_matches_the_seed_calls(write_config):
    cfg = _cfg(write_config, 'generator = "torch_rand_protocol"',
               top="classes = 10\nbatch_size = 10\nsamples = 5\n")
    b = generate(cfg, sweep_points(cfg)[0])
    torch.manual_seed(11)
    for s in range(5):
        x = torch.rand(size=(10, 10)).to(torch.float)
        y = torch.randint(0, 10, size=(10,))
        assert np.array_equal(b.logits[s], x.numpy()) and b.logits.dtype == np.float32
        assert np.array_equal(b.targets[s], y.numpy())


def test_fixed_and_file_inputs(write_config, tmp_path):
    cfg = load_config(write_config('name = "f"\nquestion = "q"\n[inputs]\ngenerator = "fixed"\n'
                                   'logits = [0.0, 0.0, 0.0, 1.0]\ntargets = 3\n'))
    b = generate(cfg, sweep_points(cfg)[0])
    assert b.logits.tolist() == [[[0.0, 0.0, 0.0, 1.0]]] and b.targets.tolist() == [[3]]
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 3, 0, 1]))
    cfg = load_config(write_config('name = "f"\nquestion = "q"\nbatch_size = 2\n[inputs]\n'
                                   'generator = "file"\nlogits = "x.pt"\ntargets = "y.npy"\n'))
    b = generate(cfg, sweep_points(cfg)[0])
    assert b.logits.shape == (3, 2, 4) and np.array_equal(b.logits.reshape(6, 4), x)


def test_to_format_rounds_once_correctly():
    x = np.array([[[1 + 2.0**-11 + 2.0**-40, 0.1, -3e38, 70000.0]]])
    h = to_format(x, "float16")
    assert h.dtype == np.float16
    assert h[0, 0, 0] == np.float16(1.0009765625)  # no double rounding through float32
    assert np.isinf(h[0, 0, 2]) and np.isinf(h[0, 0, 3])
    assert to_format(x, "bfloat16").dtype == get_format("bfloat16").np_dtype
    assert np.array_equal(to_format(x, "float64"), x)
