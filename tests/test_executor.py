"""Chunks computed by local processes or a real Dask cluster give the same tables as in-process."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from precision_lab.cli import app
from precision_lab.experiment.config import load_config
from precision_lab.experiment.executor import ClusterError, open_executor
from precision_lab.experiment.runner import run_experiment

TABLES = ("samples.parquet", "rows.parquet", "summary.json", "summary.csv", "agreement.json",
          "agreement.csv")


def _same_tables(a, b) -> None:
    for name in TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_local_processes_equal_in_process(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    here = run_experiment(cfg, tmp_path / "here").path
    with open_executor(workers=2) as ex:
        assert ex is not None
        there = run_experiment(cfg, tmp_path / "pool", executor=ex)
    assert there.computed_chunks == 4
    _same_tables(here, there.path)


def test_a_real_dask_cluster_equals_the_local_run(tiny_config, tmp_path):
    distributed = pytest.importorskip("distributed")
    cfg = load_config(tiny_config)
    here = run_experiment(cfg, tmp_path / "here").path
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        r = CliRunner().invoke(app, ["run", "--quiet", "--out", str(tmp_path / "dask"),
                                     "--scheduler", cluster.scheduler_address, str(tiny_config)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
    _same_tables(here, tmp_path / "dask" / "tiny")


def test_an_unreachable_scheduler_is_one_line(tiny_config, tmp_path):
    pytest.importorskip("distributed")
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        with open_executor(scheduler="tcp://127.0.0.1:9", timeout=2):
            pass
    r = CliRunner().invoke(app, ["run", "--out", str(tmp_path), "--scheduler",
                                 "tcp://127.0.0.1:9", "--connect-timeout", "2",
                                 str(tiny_config)])
    assert r.exit_code == 2 and "cannot reach the Dask scheduler" in r.output
