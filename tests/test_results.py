"""precision_lab.report.results: loading a results folder and reading its rows."""

from __future__ import annotations

import json
from pathlib import Path

from precision_lab.numerics.formats import ordered_formats
from precision_lab.report.results import aggregate, identical_groups, load_results, numeric_param


def _row(point, scale, impl, fmt, n_finite, exact, n_overflow=0, mean=0.3, umax=0.5):
    return {"point": point, "scale": scale, "implementation": impl, "format": fmt,
            "count": n_finite + n_overflow, "exact_match_rate": exact / n_finite,
            "ulp_error_mean": mean, "ulp_error_max": umax, "bits_mean": 0.1,
            "n_finite": n_finite, "n_inf_match": 0, "n_overflow": n_overflow, "n_nan": 0,
            "n_missed_inf": 0, "n_undefined": 0}


def _folder(tmp_path: Path) -> Path:
    summary = [_row(0, 1.0, "a", "float32", 10, 9, mean=0.2),
               _row(1, 2.0, "a", "float32", 8, 4, n_overflow=2, mean=0.6, umax=3.0),
               _row(0, 1.0, "b", "float32", 10, 9), _row(1, 2.0, "b", "float32", 10, 9),
               _row(0, 1.0, "c", "float32", 10, 9), _row(1, 2.0, "c", "float32", 10, 9)]
    agreement = [{"point": p, "scale": float(p + 1), "format": "float32", "a": x, "b": y,
                  "identical_rate": 1.0 if {x, y} == {"b", "c"} else 0.5, "count": 10}
                 for p in (0, 1) for x, y in (("a", "b"), ("a", "c"), ("b", "c"))]
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"name": "tiny", "question": "q?"}}))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "agreement.json").write_text(json.dumps(agreement))
    (tmp_path / "bounds.json").write_text(json.dumps({"text": "t"}))
    return tmp_path


def test_load_and_aggregate(tmp_path: Path) -> None:
    res = load_results(_folder(tmp_path))
    assert res.name == "tiny" and res.question == "q?" and res.swept_params() == ["scale"]
    assert numeric_param(res) == "scale" and list(res.extras) == ["bounds"]
    assert res.samples() is None and res.sample_arrays() is None
    a = aggregate(res.summary)[("a", "float32")]
    assert (a.total, a.stat, a.exact, a.cats["overflow"]) == (20, 18, 13, 2)
    assert a.ulp_max == 3.0 and abs(a.ulp_mean - (0.2 * 10 + 0.6 * 8) / 18) < 1e-12


def test_identical_groups_need_every_sample_identical(tmp_path: Path) -> None:
    res = load_results(_folder(tmp_path))
    assert identical_groups(res) == [["a"], ["b", "c"]]


def test_format_order() -> None:
    assert ordered_formats(["float64", "x", "float16", "bfloat16", "float16"]) == \
        ["float16", "bfloat16", "float64", "x"]
