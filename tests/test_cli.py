"""The precision-lab command line, through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from precision_lab.cli import app
from precision_lab.experiment import runner as exp
from precision_lab.experiment.store import read_manifest

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_run_show_and_refuse_overwrite(tiny_config, tmp_path):
    out = tmp_path / "results"
    r = invoke("run", "--quiet", "--out", out, tiny_config)
    assert r.exit_code == 0, r.output
    assert (out / "tiny" / "samples.parquet").exists()

    r = invoke("show", out / "tiny")
    assert r.exit_code == 0, r.output
    assert "implementation" in r.output and "ulp mean" in r.output and "torch" in r.output
    assert "plots/ulp_hist.png" in r.output and "report.html" in r.output

    before = (out / "tiny" / "manifest.json").read_bytes()
    r = invoke("run", "--quiet", "--out", out, tiny_config)
    assert r.exit_code == 2 and "--force" in r.output and "--out" in r.output
    assert (out / "tiny" / "manifest.json").read_bytes() == before
    r = invoke("run", "--quiet", "--force", "--out", out, tiny_config)
    assert r.exit_code == 0, r.output


BAD = {
    "unknown key": ("foo = 1\n", "foo", "question"),
    "wrong type": ("", "classes", "an integer"),
    "unknown implementation": ('implementations = ["nope"]\n', "implementations", "torch_manual"),
    "unknown format": ('formats = ["float8"]\n', "formats", "bfloat16"),
    "unreadable data file": (None, "inputs.logits", ".npy or .pt"),
    "toml syntax": ("name = \n", None, None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_config_errors_exit_2_and_write_nothing(case, write_config, tmp_path):
    extra, key, allowed = BAD[case]
    if case == "unreadable data file":
        text = ('name = "bad"\nquestion = "q"\n[inputs]\ngenerator = "file"\n'
                'logits = "missing.npy"\ntargets = "missing_t.npy"\n')
    else:
        classes = 'classes = "four"\n' if case == "wrong type" else "classes = 4\n"
        text = f'{extra}question = "q"\n{classes}[inputs]\ngenerator = "normal"\n'
        if case != "toml syntax":
            text = 'name = "bad"\n' + text
    path = write_config(text, "bad.toml")
    out = tmp_path / "results"
    r = invoke("run", "--out", out, path)
    assert r.exit_code == 2, r.output
    assert str(path) in r.output
    if key:
        assert f"key '{key}'" in r.output and allowed in r.output
    else:
        assert "TOML syntax error" in r.output
    assert not out.exists()  # nothing written
    assert sum(line.startswith("error:") for line in r.output.splitlines()) == 1  # one message


def test_one_bad_config_stops_all(tiny_config, write_config, tmp_path):
    bad = write_config('name = "b"\nquestion = "q"\nclasses = 0\n[inputs]\ngenerator = "normal"\n',
                       "bad.toml")
    r = invoke("run", "--out", tmp_path / "o", tiny_config, bad)
    assert r.exit_code == 2 and "key 'classes'" in r.output
    assert not (tmp_path / "o").exists()


def test_interrupt_then_resume(tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = exp.compute_chunk
    calls = {"n": 0}

    def flaky(*a, **k):
        if calls["n"] >= 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(exp, "compute_chunk", flaky)
        r = invoke("run", "--quiet", "--out", out, tiny_config)
    assert r.exit_code == 130 and "--resume" in r.output
    m = read_manifest(out / "tiny")
    assert m.status == "partial" and m.chunks_done == 2

    r = invoke("show", out / "tiny")
    assert r.exit_code == 2 and "unfinished run (2 of 4 chunks done)" in r.output
    assert f"--resume {tiny_config}" in r.output
    r = invoke("run", "--quiet", "--out", out, tiny_config)
    assert r.exit_code == 2 and "--resume" in r.output
    r = invoke("run", "--out", out, "--resume", tiny_config)
    assert r.exit_code == 0, r.output
    assert "2 chunk(s) resumed" in r.output
    clean = tmp_path / "clean"
    assert invoke("run", "--quiet", "--out", clean, tiny_config).exit_code == 0
    for name in ("samples.parquet", "summary.json", "agreement.json"):
        assert (out / "tiny" / name).read_bytes() == (clean / "tiny" / name).read_bytes()


def test_list_shows_experiments_implementations_formats():
    r = invoke("list")
    assert r.exit_code == 0, r.output
    assert "seed_question" in r.output and "seed_81_percent" in r.output
    assert "llm_vocab" in r.output and "llm_fused_linear" in r.output  # experiments/llm too
    assert "torch_manual" in r.output and "lse_log1p" in r.output
    assert "bfloat16" in r.output and "65504" in r.output


@pytest.mark.parametrize("cmd", ["run", "list", "show"])
def test_every_command_has_help_with_an_example(cmd):
    r = invoke(cmd, "--help")
    assert r.exit_code == 0 and "Example" in r.output


def test_show_open_uses_the_browser(tiny_config, tmp_path, monkeypatch):
    assert invoke("run", "--quiet", "--out", tmp_path, tiny_config).exit_code == 0
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    r = invoke("show", "--open", tmp_path / "tiny")
    assert r.exit_code == 0 and opened and opened[0].endswith("report.html")


def test_show_rejects_a_non_results_folder(tmp_path):
    r = invoke("show", tmp_path)
    assert r.exit_code == 2 and "not a precision-lab results folder" in r.output


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "precision_lab", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "run" in r.stdout and "list" in r.stdout


def test_diff_says_what_changed(tiny_config, tmp_path):
    """Two runs of one config, the second with its manifest's torch version edited (as another
    machine would record it): diff names the change and finds every value identical."""
    import dataclasses

    from precision_lab.experiment.store import Writer

    assert invoke("run", "--quiet", "--out", tmp_path / "a", tiny_config).exit_code == 0
    assert invoke("run", "--quiet", "--out", tmp_path / "b", tiny_config).exit_code == 0
    b = tmp_path / "b" / "tiny"
    m = read_manifest(b)
    env = dict(m.environment, torch="9.9.9")
    Writer(b).json("manifest.json", dataclasses.replace(m, environment=env))
    r = invoke("diff", tmp_path / "a" / "tiny", b)
    assert r.exit_code == 0, r.output
    assert f"torch: {m.environment['torch']} -> 9.9.9" in r.output
    assert "100% (12/12)" in r.output  # 2 points x 6 rows, identical values
    d = json.loads(invoke("diff", "--json", tmp_path / "a" / "tiny", b).output)
    assert d["environment_changes"] == {"torch": [m.environment["torch"], "9.9.9"]}
    assert d["reference_mismatches"] == 0 and len(d["implementations"]) == 6


@pytest.mark.parametrize("args", [["run", "--bogus", "x.toml"],
                                  ["run", "--workers", "-1", "x.toml"],
                                  ["study", "cuda", "compute"]])
def test_usage_errors_are_one_line_from_the_console_entry(args):
    """The installed command (precision_lab.cli:main) turns click's usage errors into one
    `error:` line naming the command's --help, exit code 2."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "precision_lab", *args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], lines
