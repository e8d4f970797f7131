"""The results store: one JSON encoding, hashes of every file, damage detection, the lock."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from precision_lab.experiment import store
from precision_lab.experiment.config import load_config
from precision_lab.experiment.errors import (
    DamagedResultsError,
    IncompleteResultsError,
    LockedError,
    NotResultsError,
)
from precision_lab.experiment.runner import run_experiment


@dataclass(frozen=True)
class _Rec:
    a: float
    b: "float | None"
    c: list


def test_one_json_convention_round_trips_nonfinite():
    text = store.dumps({"x": [math.nan, math.inf, -math.inf, 1.5, None],
                        "r": _Rec(np.float32(0.25), None, [np.int64(3), np.float16(math.inf)])})
    data = json.loads(text)  # strict JSON: no bare NaN
    assert data["x"] == ["nan", "inf", "-inf", 1.5, None]
    assert data["r"] == {"a": 0.25, "b": None, "c": [3, "inf"]}
    assert [store.number(v) for v in data["x"][:4]][1:] == [math.inf, -math.inf, 1.5]
    assert math.isnan(store.number("nan")) and store.number(None) is None


def test_writer_records_sha256_and_verify_finds_damage(tmp_path):
    import hashlib

    w = store.Writer(tmp_path)
    w.json("a.json", {"k": 1})
    w.csv("t.csv", [{"x": 1.0, "y": None}])
    assert (tmp_path / "t.csv").read_text() == "x,y\n1.0,\n"
    for rel, sha in w.files.items():
        assert hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest() == sha
    m = store.Manifest(name="m", question="q", status="complete", files=dict(w.files))
    assert store.verify(tmp_path, m) == []
    (tmp_path / "a.json").write_text('{"k": 2}\n')
    (tmp_path / "t.csv").unlink()
    problems = dict(store.verify(tmp_path, m))
    assert "sha256" in problems["a.json"] and problems["t.csv"] == "is missing"


@pytest.fixture
def done(tiny_config, tmp_path):
    return run_experiment(load_config(tiny_config), tmp_path / "out").path


def test_open_results_names_each_damaged_file(done):
    store.open_results(done)  # intact
    # a truncated parquet, garbage JSON, a missing table: each one named
    data = (done / "samples.parquet").read_bytes()
    (done / "samples.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedResultsError, match="samples.parquet"):
        store.open_results(done)
    (done / "samples.parquet").write_bytes(data)
    (done / "summary.json").write_text("{not json")
    with pytest.raises(DamagedResultsError, match="summary.json"):
        store.open_results(done)
    (done / "summary.json").unlink()
    with pytest.raises(DamagedResultsError, match="summary.json is missing"):
        store.open_results(done)


def test_manifest_problems(done, tmp_path):
    (done / "manifest.json").write_text("[1, 2")
    with pytest.raises(DamagedResultsError, match="manifest.json"):
        store.read_manifest(done)
    (done / "manifest.json").write_text('{"hello": 1}')
    with pytest.raises(NotResultsError, match="not a precision-lab manifest"):
        store.read_manifest(done)
    with pytest.raises(NotResultsError, match="no manifest.json"):
        store.read_manifest(tmp_path)
    assert store.folder_state(tmp_path / "nothing") == ("absent", None)


def test_partial_folder_is_reported_as_incomplete(tiny_config, tmp_path, monkeypatch):
    from precision_lab.experiment import runner

    calls = {"n": 0}
    real = runner.compute_chunk

    def once(*a, **k):
        if calls["n"]:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(runner, "compute_chunk", once)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(tiny_config), tmp_path)
    with pytest.raises(IncompleteResultsError, match="1 of 4 chunks"):
        store.open_results(tmp_path / "tiny")


def test_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
    first = store.FolderLock(tmp_path, "exp").acquire()
    code = ("import sys; from pathlib import Path; from precision_lab.experiment import store\n"
            "try:\n    store.FolderLock(Path(sys.argv[1]), 'exp').acquire()\n"
            "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 3 and "LockedError" in p.stdout
    assert f"pid {os.getpid()}" in p.stdout and "another run is writing it" in p.stdout
    first.release()
    again = store.FolderLock(tmp_path, "exp").acquire()
    assert again.stale is None
    again.release()
    assert not any(tmp_path.iterdir())  # released locks leave nothing behind


def test_stale_lock_of_a_dead_process_is_detected(tmp_path):
    code = ("import os, sys; from pathlib import Path; from precision_lab.experiment import "
            "store\nstore.FolderLock(Path(sys.argv[1]), 'exp').acquire()\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    lock = store.FolderLock(tmp_path, "exp").acquire()  # the OS released the dead one's lock
    assert lock.stale is not None and lock.stale["pid"] != os.getpid()
    lock.release()


def test_locked_folder_refuses_run(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    held = store.FolderLock(tmp_path, cfg.name).acquire()
    try:
        with pytest.raises(LockedError, match="another run is writing it"):
            run_experiment(cfg, tmp_path)
    finally:
        held.release()
    assert not (tmp_path / "tiny").exists()  # nothing was written
