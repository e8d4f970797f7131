"""Bad data refused early, damage detected, one run per folder, one honest line per problem.

Each case: the CLI's exit code, the one "error:" line and what it names, and that nothing is
lost or half-written."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from precision_lab.cli import app
from precision_lab.experiment import store
from precision_lab.experiment.config import load_config
from precision_lab.experiment.runner import run_experiment

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_error(r) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    assert "Traceback" not in r.output
    return lines[0]


FIXED = """
name = "fx"
question = "q"
formats = ["float32"]
implementations = ["lse", "naive", "torch"]
{extra}
[inputs]
generator = "fixed"
logits = [[1.0, 2.0, 3.0], [0.0, {bad}, 1.0]]
targets = [0, 0]
"""


def test_nan_in_fixed_logits_is_refused_before_anything_is_written(write_config, tmp_path):
    path = write_config(FIXED.format(extra="", bad="nan"))
    r = invoke("run", "--out", tmp_path / "o", path)
    assert r.exit_code == 2
    line = one_error(r)
    assert str(path) in line and "key 'inputs.logits'" in line
    assert "nan at row 1, column 1" in line and 'nonfinite = "allow"' in line
    assert not (tmp_path / "o").exists()


def test_inf_in_a_npy_file_names_file_row_and_column(write_config, tmp_path):
    x = np.zeros((4, 3))
    x[2, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0]))
    path = write_config('name = "f"\nquestion = "q"\n[inputs]\ngenerator = "file"\n'
                        'logits = "x.npy"\ntargets = "y.npy"\n')
    r = invoke("run", "--out", tmp_path / "o", path)
    assert r.exit_code == 2
    line = one_error(r)
    assert "x.npy" in line and "inf at row 2, column 1" in line


def test_empty_npy_gets_a_clear_message(write_config, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 10), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(0, np.int64))
    path = write_config('name = "f"\nquestion = "q"\n[inputs]\ngenerator = "file"\n'
                        'logits = "x.npy"\ntargets = "y.npy"\n')
    line = one_error(invoke("run", "--out", tmp_path / "o", path))
    assert "'x.npy' is empty (shape (0, 10))" in line


def test_nonfinite_allowed_runs_and_reports_the_input_as_the_cause(write_config, tmp_path):
    path = write_config(FIXED.format(extra='nonfinite = "allow"', bad="inf"))
    r = invoke("run", "--quiet", "--out", tmp_path / "o", path)
    assert r.exit_code == 0, r.output
    d = tmp_path / "o" / "fx"
    assert invoke("show", d).exit_code == 0
    res = store.open_results(d)
    t = res.samples()
    cats = t.column("category").to_pylist()
    rows = t.column("row").to_pylist()
    impls = t.column("implementation").to_pylist()
    # the row holding +inf away from the target: the truth is +inf (the reference's rule)
    assert {r for r, row in zip(t.column("reference").to_pylist(), rows) if row == 1} == \
        {float("inf")}
    nan_impls = sorted({i for i, c, row in zip(impls, cats, rows) if row == 1 and c == "nan"})
    assert {c for c, row in zip(cats, rows) if row == 1} <= {"inf_match", "nan"}
    md = (d / "report.md").read_text()
    pattern = (r"(return|returns) 1 NaN in float32 on samples whose truth is itself inf or "
               r"NaN \(0 of them equal to the truth\): caused by the input")
    for im in nan_impls:  # NaN where the truth is inf: named, with the input as the cause
        assert re.search(rf"\b{re.escape(im)}\b[^.]*{pattern}", md), im
    assert "single exp overflowing" not in md
    assert f"{nan_impls[0]} never return" not in md if nan_impls else True


def test_unwritable_out_is_found_before_computing(tiny_config, tmp_path):
    if os.geteuid() == 0:
        out = tmp_path / "file_not_dir"
        out.write_text("")  # root ignores permissions: use a path that cannot be a folder
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    r = invoke("run", "--out", out, tiny_config)
    assert r.exit_code == 2
    line = one_error(r)
    assert f"cannot write into {out}" in line and "--out" in line


def test_second_run_into_a_locked_folder_is_refused(tiny_config, tmp_path):
    held = store.FolderLock(tmp_path, "tiny").acquire()
    try:
        r = invoke("run", "--force", "--out", tmp_path, tiny_config)
    finally:
        held.release()
    assert r.exit_code == 2
    line = one_error(r)
    assert f"pid {os.getpid()}" in line and "another run is writing it" in line
    assert not (tmp_path / "tiny").exists()


def _report(res, progress):
    from precision_lab.report.report import write_report

    write_report(res, progress)


@pytest.fixture
def done(tiny_config, tmp_path):
    return run_experiment(load_config(tiny_config), tmp_path / "out", finalize=_report).path


@pytest.mark.parametrize("damage", ["truncate_parquet", "garbage_parquet", "corrupt_summary",
                                    "missing_summary", "edited_csv", "missing_plot"])
def test_show_names_the_damaged_file(done, damage):
    if damage == "truncate_parquet":
        p = done / "samples.parquet"
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "garbage_parquet":
        p = done / "rows.parquet"
        p.write_bytes(b"not parquet at all")
    elif damage == "corrupt_summary":
        p = done / "summary.json"
        p.write_text("{")
    elif damage == "missing_summary":
        p = done / "summary.json"
        p.unlink()
    elif damage == "edited_csv":
        p = done / "summary.csv"
        p.write_text(p.read_text().replace("float16", "float61"))
    else:
        p = next((done / "plots").glob("*.png"))
        p.unlink()
    r = invoke("show", done)
    assert r.exit_code == 2
    line = one_error(r)
    assert str(p) in line and "precision-lab run --force" in line


def test_show_open_without_a_browser_says_where_the_report_is(done, monkeypatch):
    monkeypatch.setattr("webbrowser.open", lambda url: False)
    r = invoke("show", "--open", done)
    assert r.exit_code == 0
    assert f"open {(done / 'report.html').resolve()} yourself" in r.output


def test_flags_are_plain_and_a_value_after_a_flag_is_explained(tiny_config, tmp_path):
    h = invoke("run", "--help").output
    line = next(ln for ln in h.splitlines() if "--force" in ln)
    assert "--no-force" in line and "<bool>" not in line
    line = one_error(invoke("run", "--force", "true", "--out", tmp_path, tiny_config))
    assert "take no value" in line


def test_no_traceback_from_the_console_entry(tmp_path):
    """The installed entry point turns any failure into one line (exit 2 for bad input)."""
    r = subprocess.run([sys.executable, "-m", "precision_lab", "show", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_resume_of_a_complete_folder_says_so(done, tiny_config):
    line = one_error(invoke("run", "--resume", "--out", done.parent, tiny_config))
    assert "already complete" in line and "--force" in line


def test_explain_reads_a_bfloat16_npy_and_int64_exactly(tmp_path):
    import ml_dtypes

    p = tmp_path / "bf.npy"
    np.save(p, np.array([[1.0, 2.0, 3.5]], dtype=ml_dtypes.bfloat16))
    r = invoke("explain", "--file", p, "--target", "0", "--format", "bfloat16", "--json",
               "--no-attribution")
    assert r.exit_code == 0, r.output
    q = tmp_path / "i.npy"
    np.save(q, np.array([2**54 + 2**30 + 1, 0], dtype=np.int64))
    r = invoke("explain", "--file", q, "--target", "1", "--format", "float32", "--json",
               "--no-attribution")
    assert r.exit_code == 0, r.output
    import json

    d = json.loads(r.output)
    assert d["logits"][0] == float(2**54 + 2**31)  # rounded once from the exact integer
    assert Path(q).exists()
