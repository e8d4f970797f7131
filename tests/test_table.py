"""The accuracy table and the tolerances derived from it."""

from __future__ import annotations

import csv
import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from precision_lab.cli import app
from precision_lab.experiment.store import open_results
from precision_lab.numerics.formats import get_format
from precision_lab.search.exhaustive import axis_values
from precision_lab.search.tolerance import TORCH_DEFAULTS, tolerance, tolerances_for_ulp

runner = CliRunner()

TABLE = """
name = "tiny_table"
implementations = ["lse", "torch"]
formats = ["float16", "float32"]
classes = [2, 6]
rounds = 2

[[slice]]
name = "f16_small"
format = "float16"
implementations = ["lse", "torch"]
logits = [{range = [-1.0, 1.0]}, {values = [0.0, 3.0, -3.0, 11.0]}]
"""


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    cfg = root / "table.toml"
    cfg.write_text(TABLE)
    r = runner.invoke(app, ["table", "--config", str(cfg), "--out", str(root), "--quiet"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return root / "tiny_table"


def test_the_table_marks_each_cell_and_show_reads_it(table):
    res = open_results(table)  # every file's sha256 checked
    assert res.manifest.kind == "table" and res.manifest.status == "complete"
    rows = list(csv.DictReader((table / "accuracy_table.csv").open()))
    cells = {(r["implementation"], r["format"], int(r["classes"]), r["bound"]): r
             for r in rows}
    # every implementation x format x V is searched (a lower bound); the slice, which covers
    # only part of the float16 pairs, adds its upper bound over that part
    assert len(rows) == len(cells) == 2 * 2 * 2 + 2
    for im in ("lse", "torch"):
        assert (im, "float16", 2, "upper") in cells
        for fm in ("float16", "float32"):
            for V in (2, 6):
                assert (im, fm, V, "lower") in cells
    md = (table / "accuracy_table.md").read_text()
    assert "(E)" in md and "(S)" in md and "f16_small: 122,888 problems" in md
    # the slice's cell agrees with the slice folder it was read from
    sl = json.loads((table.parent / ".work" / "f16_small" / "slice.json").read_text())
    for im in ("lse", "torch"):
        assert float(cells[(im, "float16", 2, "upper")]["max_ulp_error"]) == \
            sl["implementations"][im]["max_ulp_error"]
    # every listed input reproduces its error through explain
    c = cells[("torch", "float16", 6, "lower")]
    r = runner.invoke(app, ["explain", "--logits", c["logits"].replace(" ", ","), "--target",
                            c["target"], "--format", "float16", "--json", "--no-attribution"],
                      catch_exceptions=False)
    got = json.loads(r.output)["implementations"]["torch"]["ulp_error"]
    assert got == pytest.approx(float(c["max_ulp_error"]), rel=1e-12)
    r = runner.invoke(app, ["show", str(table)], catch_exceptions=False)
    assert r.exit_code == 0 and "lse" in r.output and "lower" in r.output


def test_the_table_is_reproducible(table, tmp_path):
    cfg = tmp_path / "table.toml"
    cfg.write_text(TABLE)
    r = runner.invoke(app, ["table", "--config", str(cfg), "--out", str(tmp_path), "--quiet",
                            "--workers", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for f in ("accuracy_table.csv", "accuracy_table.md", "summary.json"):
        assert (tmp_path / "tiny_table" / f).read_bytes() == (table / f).read_bytes(), f


def test_a_slice_left_incomplete_by_the_budget_is_searched_and_named(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('name = "t"\nimplementations = ["lse"]\nformats = ["float16"]\n'
                   'classes = [2]\nrounds = 1\n[[slice]]\nname = "whole"\n'
                   'format = "float16"\nimplementations = ["lse"]\nlogits = ["all", "all"]\n')
    r = runner.invoke(app, ["table", "--config", str(cfg), "--out", str(tmp_path), "--quiet",
                            "--budget", "0.000001"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "slices left incomplete" in r.output and "whole (0 of 481 chunks)" in r.output
    rows = list(csv.DictReader((tmp_path / "t" / "accuracy_table.csv").open()))
    assert [(x["implementation"], x["classes"], x["bound"]) for x in rows] == \
        [("lse", "2", "lower")]
    assert "whole (0 of 481 chunks)" in (tmp_path / "t" / "accuracy_table.md").read_text()


def test_a_bad_table_config_is_one_line(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('formats = ["float8"]\n')
    r = runner.invoke(app, ["table", "--config", str(cfg), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "formats" in r.output and "float8" in r.output
    cfg.write_text('[[slice]]\nname = "x"\nformat = "float16"\nlogits = ["all"]\n')
    r = runner.invoke(app, ["table", "--config", str(cfg), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "at least two logits" in r.output


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize("E", [0.5, 3.0, 2047.99])
def test_the_tolerances_hold_wherever_the_ulp_error_is_at_most_E(fmt, E):
    """For every positive value r of the format (the correctly rounded truth) the largest
    |c - r| an error of E ULP allows, (E + 1/2) ulp(r), passes assert_close's test, in exact
    rational arithmetic."""
    f = get_format(fmt)
    rtol, atol = tolerances_for_ulp(E, fmt)
    R, A, k = Fraction(rtol), Fraction(atol), Fraction(E) + Fraction(1, 2)
    v = axis_values("all", fmt).astype(np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    for r in v.tolist():
        m, e = np.frexp(r)  # r = m 2**e, m in [0.5, 1): its binade is 2**(e-1)
        q = max(int(e) - 1, f.emin) - (f.precision - 1)
        assert k * Fraction(2) ** q <= A + R * Fraction(r), r


def test_tolerance_reports_the_evidence_and_torch_agrees(table):
    doc = json.loads((table / "accuracy_table.json").read_text())
    cell = next(c for c in doc["cells"] if c["implementation"] == "torch"
                and c["format"] == "float16" and c["classes"] == 6)
    tol = tolerance("torch", "float16", 6, cell["max_ulp_error"], cell["case"], bound="lower",
                    covers=cell["covers"], source="test")
    c, r = (torch.tensor([cell["case"][k]], dtype=torch.float16)
            for k in ("computed", "reference"))
    for check in tol.checks:
        try:
            torch.testing.assert_close(c, r, rtol=check["rtol"], atol=check["atol"])
            passed = True
        except AssertionError:
            passed = False
        assert passed == check["passes"], check
    from torch.testing._comparison import default_tolerances

    for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16),
                     ("float32", torch.float32), ("float64", torch.float64)):
        assert TORCH_DEFAULTS[name] == default_tolerances(dt)
    assert tol.checks[1]["passes"]  # the derived tolerances pass their own worst case
    res = runner.invoke(app, ["tolerance", "--impl", "torch", "--format", "float16", "--from",
                              str(table), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["max_ulp_error"] == max(c["max_ulp_error"] for c in doc["cells"]
                                       if c["implementation"] == "torch"
                                       and c["format"] == "float16")
    assert out["assert_close"].startswith("torch.testing.assert_close(actual, expected, rtol=")
    res = runner.invoke(app, ["tolerance", "--impl", "torch", "--format", "bfloat16", "--from",
                              str(table)])
    assert res.exit_code == 2 and "holds no case of torch in bfloat16" in res.output
