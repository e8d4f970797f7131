"""precision_lab.report.analysis: the explanatory analyses, on a tiny experiment through the runner."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path


def test_analyses_on_a_real_run(tmp_path: Path) -> None:
    """A tiny experiment through the runner: the overflow analysis explains naive's inf by the
    sum of exponentials passing 65504, from regenerated inputs."""
    from precision_lab.experiment.config import load_config
    from precision_lab.experiment.runner import run_experiment

    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(
        'name = "tiny_overflow"\nquestion = "Where does naive overflow in float16?"\n'
        'classes = 10\nbatch_size = 10\nsamples = 2\nseed = 1\nformats = ["float16"]\n'
        'implementations = ["naive", "lse", "lse_log1p", "torch"]\n'
        '[inputs]\ngenerator = "normal"\nscale = 1.0\nmean = [0.0, 10.0, 12.0]\n')
    res = run_experiment(load_config(cfg_path), tmp_path / "out", quiet=True)
    h = (res.path / "report.html").read_text()
    assert "ln(65504) = 11.09" in h and "the unshifted sum exp(x_j) overflows" in h
    over = json.loads((res.path / "overflow.json").read_text())
    (row,) = over["tables"]["overflow causes"]
    assert row["implementations"] == ["naive"] and row["non_finite"] == row["rows_lse_above_ln_max"]
    assert (res.path / "plots" / "nonfinite_vs_overflow_margin.png").exists()
    for tag in re.findall(r"<img\b[^>]*>", h):
        m = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        assert m and base64.b64decode(m.group(1)).startswith(b"\x89PNG")
