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
from precision_lab.experiment.errors import IncompleteResultsError, ResultsExistError
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


# ---------------------------------------------------------------- replacing and resuming folders

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_after(monkeypatch, n: int, exc: BaseException) -> None:
    from precision_lab.experiment import runner as exp

    real = exp.compute_chunk
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        if calls["n"] >= n:
            raise exc
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(exp, "compute_chunk", flaky)


def test_a_failed_force_rerun_leaves_the_previous_folder_intact(done, tiny_config, monkeypatch):
    before = _snapshot(done)
    out = done.parent
    with monkeypatch.context() as mp:
        _fail_after(mp, 2, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_config(tiny_config), out, force=True, finalize=_report)
    assert _snapshot(done) == before  # every table, plot and report byte-identical
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]  # nothing left beside it
    with monkeypatch.context() as mp:  # through the CLI: one line, exit 1, the truth told
        _fail_after(mp, 1, RuntimeError("kaboom"))
        r = invoke("run", "--quiet", "--force", "--out", out, tiny_config)
    assert r.exit_code == 1
    line = one_error(r)
    assert "kaboom" in line and f"{done} is left as it was" in line and "--force" in line
    assert _snapshot(done) == before
    store.open_results(done)  # still verifies
    assert "already complete" in one_error(invoke("run", "--resume", "--out", out, tiny_config))
    r = invoke("run", "--quiet", "--force", "--out", out, tiny_config)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]
    after = _snapshot(done)
    for name in ("samples.parquet", "summary.json", "agreement.json"):  # same config, same tables
        assert after[name] == before[name]


def test_an_interrupted_force_run_over_a_partial_folder_keeps_it_resumable(tiny_config, tmp_path,
                                                                          monkeypatch):
    cfg = load_config(tiny_config)
    with monkeypatch.context() as mp:
        _fail_after(mp, 1, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, tmp_path)
    before = _snapshot(tmp_path / "tiny")
    with monkeypatch.context() as mp:
        _fail_after(mp, 3, KeyboardInterrupt())
        r = invoke("run", "--quiet", "--force", "--out", tmp_path, tiny_config)
    assert r.exit_code == 130 and "left as it was" in one_error(r)
    assert _snapshot(tmp_path / "tiny") == before
    res = run_experiment(cfg, tmp_path, resume=True)
    assert (res.computed_chunks, res.resumed_chunks) == (3, 1)


@pytest.mark.parametrize("what", ["foreign folder", "file"])
def test_force_never_replaces_what_precision_lab_did_not_write(what, tiny_config, tmp_path):
    target = tmp_path / "tiny"
    if what == "file":
        target.write_text("x\n")
        mine = target
    else:
        target.mkdir()
        mine = target / "mydata.txt"
        mine.write_text("important\n")
    for flags in (["--force"], [], ["--resume"], ["--force", "--resume"]):
        r = invoke("run", "--quiet", *flags, "--out", tmp_path, tiny_config)
        assert r.exit_code == 2, (flags, r.output)
        line = one_error(r)
        assert str(target) in line and "never replaced" in line and "--out DIR" in line
        assert mine.read_text() in ("important\n", "x\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml", "tiny"]


@pytest.mark.parametrize("damage", ["truncated manifest", "old schema"])
def test_force_replaces_a_damaged_results_folder(damage, done, tiny_config):
    m = done / "manifest.json"
    if damage == "truncated manifest":
        m.write_bytes(m.read_bytes()[:120])
    else:
        m.write_text(m.read_text().replace('"schema_version": 2', '"schema_version": 1'))
    assert store.folder_state(done)[0] == "damaged"
    line = one_error(invoke("run", "--quiet", "--out", done.parent, tiny_config))
    assert str(done) in line and "--force" in line
    r = invoke("run", "--quiet", "--force", "--out", done.parent, tiny_config)
    assert r.exit_code == 0, r.output
    assert invoke("show", done).exit_code == 0


def test_a_live_run_is_named_before_the_folder_state(tiny_config, tmp_path, monkeypatch):
    with monkeypatch.context() as mp:
        _fail_after(mp, 1, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_config(tiny_config), tmp_path)
    held = store.FolderLock(tmp_path, "tiny").acquire()
    try:
        for flags in ([], ["--resume"], ["--force"]):
            r = invoke("run", "--quiet", *flags, "--out", tmp_path, tiny_config)
            assert r.exit_code == 2
            line = one_error(r)
            assert "another run is writing it" in line and f"pid {os.getpid()}" in line
            assert "started" in line and str(tmp_path / "tiny") in line
        line = one_error(invoke("show", tmp_path / "tiny"))
        assert "being written by a run in progress" in line and f"pid {os.getpid()}" in line
    finally:
        held.release()
    assert read_status(tmp_path / "tiny") == "partial"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml", "tiny"]  # no lock left
    assert "--resume" in one_error(invoke("show", tmp_path / "tiny"))  # nobody writes it now


def read_status(folder: Path) -> str:
    return store.read_manifest(folder).status


def test_the_folder_state_is_checked_again_under_the_lock(tiny_config, tmp_path, monkeypatch):
    """A run that finds no folder, then waits for the lock while another run completes it,
    does not replace that run's results."""
    cfg = load_config(tiny_config)
    real = store.FolderLock.acquire
    state = {"raced": False}

    def acquire(self):
        if not state["raced"]:
            state["raced"] = True
            run_experiment(cfg, tmp_path)  # the other run, finishing first
        return real(self)

    monkeypatch.setattr(store.FolderLock, "acquire", acquire)
    with pytest.raises(ResultsExistError, match="already exists and is complete"):
        run_experiment(cfg, tmp_path)
    assert state["raced"] and read_status(tmp_path / "tiny") == "complete"


def test_resume_advice_names_the_out_folder_and_resume_needs_a_partial_run(
        tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "o_int"
    with monkeypatch.context() as mp:
        _fail_after(mp, 1, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_config(tiny_config), out)
    for args in (["show", out / "tiny"], ["diff", out / "tiny", out / "tiny"]):
        line = one_error(invoke(*args))
        assert line.endswith(f"--resume {tiny_config} --out {out}"), line
    with pytest.raises(IncompleteResultsError, match=f"--resume CONFIG --out {out}"):
        store.open_results(out / "tiny")
    r = invoke("run", "--quiet", "--resume", "--out", tmp_path / "elsewhere", tiny_config)
    assert r.exit_code == 2
    line = one_error(r)
    assert str(tmp_path / "elsewhere" / "tiny") in line and "nothing to resume" in line
    assert not (tmp_path / "elsewhere").exists()  # a refused run leaves no folder behind


@pytest.mark.parametrize("hashes", [True, False])
def test_resume_over_a_damaged_chunk_names_it(hashes, tiny_config, tmp_path, monkeypatch):
    cfg = load_config(tiny_config)
    with monkeypatch.context() as mp:
        _fail_after(mp, 2, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, tmp_path)
    target = tmp_path / "tiny"
    m = store.read_manifest(target)
    assert "partial/p00000_float16.parquet" in m.files  # the partial manifest records hashes
    if not hashes:  # a partial folder written before hashes were recorded
        from dataclasses import replace

        store.Writer(target).json("manifest.json", replace(m, files={}))
    chunk = target / "partial" / "p00000_float16.parquet"
    chunk.write_bytes(chunk.read_bytes()[:200])
    r = invoke("run", "--quiet", "--resume", "--out", tmp_path, tiny_config)
    assert r.exit_code == 2
    line = one_error(r)
    assert str(chunk) in line and "chunk p00000_float16" in line and "--force" in line
    assert chunk.stat().st_size == 200  # nothing touched
    for p in (target / "partial").glob("p00000_float16.*"):  # the advice: recompute that one
        p.unlink()
    res = run_experiment(cfg, tmp_path, resume=True)
    assert (res.computed_chunks, res.resumed_chunks) == (3, 1)
    clean = run_experiment(cfg, tmp_path / "clean").path
    assert (target / "samples.parquet").read_bytes() == (clean / "samples.parquet").read_bytes()


def test_run_calls_a_damaged_folder_damaged_not_complete(done, tiny_config):
    (done / "summary.json").unlink()
    for flags in ([], ["--resume"]):
        r = invoke("run", "--quiet", *flags, "--out", done.parent, tiny_config)
        assert r.exit_code == 2
        line = one_error(r)
        assert str(done / "summary.json") in line and "is missing" in line
        assert "damaged, not complete" in line and "--force" in line
    assert invoke("run", "--quiet", "--force", "--out", done.parent, tiny_config).exit_code == 0
    assert invoke("show", done).exit_code == 0


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    w = store.Writer(tmp_path)
    w.json("a.json", {"x": 1})
    before = _snapshot(tmp_path)
    real = Path.write_bytes

    def disk_full(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        w.json("a.json", {"x": 2, "y": list(range(100))})
    with pytest.raises(OSError):
        w.parquet("b.parquet", __import__("pyarrow").table({"a": [1, 2]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert _snapshot(tmp_path) == before


def test_a_search_folder_never_replaces_a_foreign_folder_or_a_file(tmp_path):
    from precision_lab.experiment.errors import RunError
    from precision_lab.search.chunks import ChunkFolder

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mydata.txt").write_text("important\n")
    (tmp_path / "b").write_text("x\n")
    for name in ("a", "b"):
        folder = ChunkFolder(tmp_path, name, kind="search", spec={"k": 1}, question="q",
                             force=True)
        with pytest.raises(RunError, match=rf"{tmp_path / name} is a .*never replaced"):
            folder.check()
    assert (tmp_path / "a" / "mydata.txt").read_text() == "important\n"
    assert (tmp_path / "b").read_text() == "x\n"


@pytest.mark.parametrize("done", [0, 2])
def test_an_interrupted_run_says_how_many_chunks_it_kept(tiny_config, tmp_path, monkeypatch,
                                                         done):
    out = tmp_path / "o"
    _fail_after(monkeypatch, done, KeyboardInterrupt())
    r = runner.invoke(app, ["run", "--quiet", "--out", str(out), str(tiny_config)])
    assert r.exit_code == 130
    line = one_error(r)
    assert len(list((out / "tiny" / "partial").glob("p*.json"))) == done
    if done:
        assert f"{done} finished chunk(s) are kept in {out / 'tiny' / 'partial'}" in line
    else:
        assert "no chunk had finished" in line
    assert f"--resume {tiny_config} --out {out}" in line
