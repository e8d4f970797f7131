"""explain: the JSON schema, the seed example, the cancellation case, files and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from precision_lab.cli import app
from precision_lab.explain.explain import ExplainInputError, explain
from precision_lab.implementations import REGISTRY
from precision_lab.report.explain_text import verdict

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["explain", *args])


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) or v in ("nan", "inf", "-inf")


def test_json_schema_and_cancellation_case() -> None:
    res = _run("--logits", "20,0,1,2", "--target", "0", "--format", "float32", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)  # one JSON object, no NaN literals
    assert isinstance(d["reference"], float)
    assert d["reference"] == pytest.approx(2.2893929542622447e-08, rel=1e-7)
    assert set(d["implementations"]) == set(REGISTRY)
    for key, r in d["implementations"].items():
        assert _is_num(r["value"]), key
        assert r["ulp_error"] is None or isinstance(r["ulp_error"], float)
        assert r["ulp_distance"] is None or isinstance(r["ulp_distance"], int)
    assert d["implementations"]["torch"]["value"] == 0.0
    assert d["implementations"]["lse_log1p"]["correctly_rounded"]
    assert d["attribution"]["lse"]["decisive"] == "s"
    assert 21 < d["condition_number"] < 22.5
    text = " ".join(d["verdict"])
    assert "lse - x_t cancels" in text and "torch" in text and "2.29e-08" in text
    assert "lse_log1p keeps it" in text


def test_seed_example_logits_not_probabilities() -> None:
    d = explain(["0", "0", "0", "1"], 3, "float32")
    assert d.reference == pytest.approx(0.7436683806286791, rel=1e-7)
    assert d.softmax_target == pytest.approx(0.4753668864186717, rel=1e-12)
    text = verdict(d)[0]
    assert "takes logits" in text and "e/(3 + e) = 0.4754" in text
    assert "-log 0.4754 = 0.7437" in text
    res = _run("--logits", "0,0,0,1", "--target", "3")
    assert res.exit_code == 0 and "e/(3 + e) = 0.4754" in res.output


def test_overflow_verdict_names_the_step() -> None:
    d = explain([12, 0, 1, 2], 1, "float16")
    assert d.implementations["naive"].category == "overflow"
    assert any("naive returns inf at step 'e'" in v and "11.09" in v for v in verdict(d))


def test_file_input(tmp_path) -> None:
    p = tmp_path / "x.npy"
    np.save(p, np.array([[1.0, 2.0, 3.0], [20.0, 0.0, 1.0]], dtype=np.float32))
    res = _run("--file", str(p), "--row", "1", "--target", "0", "--json", "--no-attribution")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["logits"] == [20.0, 0.0, 1.0]
    res = _run("--file", str(p), "--target", "0")
    assert res.exit_code == 2 and "--row" in res.output and "0..1" in res.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--logits", "20,abc,1", "--target", "0"], "--logits: 'abc'"),
        (["--logits", "20,0,1", "--target", "3"], "allowed: 0..2"),
        (["--logits", "20,0,1", "--target", "0", "--format", "float8"],
         "allowed: float16, bfloat16, float32, float64"),
        (["--target", "0"], "exactly one of --logits"),
        (["--logits", "1,2"], "--target"),
        (["--file", "nope.csv", "--target", "0"], "--file"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(args, needle) -> None:
    res = _run(*args)
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


def test_api_raises_input_error() -> None:
    with pytest.raises(ExplainInputError, match="--target"):
        explain([1.0, 2.0], 2, "float32")


def test_a_file_without_logits_is_named(tmp_path):
    from precision_lab.explain.explain import load_row

    for shape in ((0, 10), (0,), (3, 0)):
        p = tmp_path / f"empty_{len(shape)}_{shape[0]}.npy"
        np.save(p, np.zeros(shape, np.float32))
        with pytest.raises(ExplainInputError, match="holds no logits"):
            load_row(p, None)
