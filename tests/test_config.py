"""Config model: TOML loading, validation messages, sweep expansion, hashing."""

from __future__ import annotations

import numpy as np
import pytest

from precision_lab.experiment.config import (
    ConfigError,
    config_hash,
    load_config,
    resolved_config,
    sweep_axes,
    sweep_points,
)

BASE = """
name = "t"
question = "q"
classes = 4
[inputs]
generator = "normal"
"""


def _err(write_config, text: str) -> ConfigError:
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg  # every message names the file
    return info.value


def test_minimal_config_defaults(write_config):
    cfg = load_config(write_config(BASE))
    r = resolved_config(cfg)
    assert r["formats"] == ["float16", "bfloat16", "float32", "float64"]
    assert "torch" in r["implementations"] and r["reduction"] == "none"
    assert [p.params for p in sweep_points(cfg)] == [{"classes": 4, "seed": 0, "mean": 0.0,
                                                      "scale": 1.0}]


def test_sweep_is_cartesian_first_axis_slowest(write_config):
    cfg = load_config(write_config("""
        name = "t"
        question = "q"
        classes = [3, 5]
        seed = 1
        [inputs]
        generator = "uniform"
        high = [1.0, 2.0, 4.0]
    """))
    assert sweep_axes(cfg) == ["classes", "high"]
    pts = sweep_points(cfg)
    assert [(p.swept["classes"], p.swept["high"]) for p in pts] == [
        (3, 1.0), (3, 2.0), (3, 4.0), (5, 1.0), (5, 2.0), (5, 4.0)]
    assert [p.index for p in pts] == list(range(6))
    assert pts[0].params == {"classes": 3, "seed": 1, "low": 0.0, "high": 1.0}


@pytest.mark.parametrize("text,key,allowed", [
    (BASE + "foo = 1\n", "inputs.foo", "generator, mean, scale"),
    (BASE.replace("classes = 4", "classes = 4\nbogus = 2"), "bogus", "question"),
    (BASE.replace('"normal"', '"gauss"'), "inputs.generator", "torch_rand_protocol"),
    (BASE.replace("classes = 4", 'classes = "4"'), "classes", "an integer or a list of integers"),
    (BASE.replace("classes = 4", "classes = 4\nformats = [\"float8\"]"), "formats", "bfloat16"),
    (BASE.replace("classes = 4", "classes = 4\nformats = \"float32\""), "formats", "float64"),
    (BASE.replace("classes = 4", "classes = 4\nimplementations = [\"nope\"]"),
     "implementations", "lse_log1p"),
    (BASE.replace("classes = 4", "classes = 4\nreduction = \"avg\""), "reduction", "'mean'"),
    (BASE + "scale = [1.0, \"x\"]\n", "inputs.scale", "a number or a list of numbers"),
    (BASE.replace("classes = 4", ""), "classes", None),
    (BASE.replace('question = "q"', ""), "question", None),
    (BASE + "[compare]\na = \"torch\"\nb = \"nope\"\n", "compare.b", "torch_manual"),
    (BASE + "[compare]\na = \"torch\"\nb = \"lse\"\ntol = 1\n", "compare.tol", "abs_tol"),
])
def test_bad_config_names_file_key_and_allowed(write_config, text, key, allowed):
    err = _err(write_config, text)
    assert err.key == key
    msg = str(err)
    assert f"key '{key}'" in msg
    if allowed:
        assert allowed in msg


def test_toml_syntax_error(write_config):
    err = _err(write_config, "name = \n[inputs\n")
    assert "TOML syntax error" in str(err) and "line" in str(err)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_file_generator_errors(write_config, tmp_path):
    text = """
        name = "f"
        question = "q"
        [inputs]
        generator = "file"
        logits = "x.npy"
        targets = "y.npy"
    """
    err = _err(write_config, text)
    assert err.key == "inputs.logits" and "x.npy" in str(err)
    np.save(tmp_path / "x.npy", np.zeros((4, 3)))
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 3]))  # 3 is out of range
    err = _err(write_config, text)
    assert err.key == "inputs.targets" and "[0, 3)" in str(err)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0]))
    cfg = load_config(write_config(text))
    digest = config_hash(cfg)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 1]))
    assert config_hash(load_config(write_config(text))) != digest  # data is part of the hash


def test_fixed_generator_checks_shapes(write_config):
    err = _err(write_config, """
        name = "f"
        question = "q"
        [inputs]
        generator = "fixed"
        logits = [[0.0, 1.0], [2.0, 3.0]]
        targets = [1]
    """)
    assert err.key == "inputs.logits" and "2 row(s)" in str(err)


def test_hash_is_stable_and_sensitive(write_config):
    a = config_hash(load_config(write_config(BASE)))
    assert a == config_hash(load_config(write_config(BASE)))
    assert a != config_hash(load_config(write_config(BASE.replace("classes = 4", "classes = 5"))))


def test_bundled_configs_are_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "experiments").glob("*.toml")):
        cfg = load_config(path)
        assert cfg.question.strip()


def test_device_key(write_config):
    import torch

    assert load_config(write_config(BASE)).device == "cpu"
    err = _err(write_config, BASE.replace("classes = 4", 'classes = 4\ndevice = "tpu"'))
    assert err.key == "device" and "cuda:N" in str(err)
    if not torch.cuda.is_available():
        err = _err(write_config, BASE.replace("classes = 4", 'classes = 4\ndevice = "cuda"'))
        assert err.key == "device" and "sees no CUDA device" in str(err)


def test_an_unimportable_implementation_path_says_why_once(write_config):
    e = _err(write_config, """
        name = "x"
        question = "q"
        classes = 5
        implementations = ["nopkg_xyz.mod:fn"]
        [inputs]
        generator = "normal"
        """)
    msg = str(e)
    assert "cannot import module 'nopkg_xyz.mod'" in msg and "PYTHONPATH?" in msg
    assert "allowed" not in msg and "\n" not in msg
