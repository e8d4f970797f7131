"""The two seed experiments, run for real (they are small), against the seed's own code."""

from __future__ import annotations

import json
from pathlib import Path

import mpmath
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn as nn

from precision_lab.experiment.config import load_config
from precision_lab.experiment.runner import run_experiment
from precision_lab.experiment.store import read_manifest
from precision_lab.implementations.registry import REGISTRY
from precision_lab.implementations.seed import compute_crossentropyloss_manual

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _report(res, progress):
    from precision_lab.report.report import write_report

    write_report(res, progress)


@pytest.fixture(scope="module")
def seed_question(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seedq")
    return run_experiment(load_config(EXPERIMENTS / "seed_question.toml"), out).path


@pytest.fixture(scope="module")
def seed_81(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed81")
    return run_experiment(load_config(EXPERIMENTS / "seed_81_percent.toml"), out,
                          finalize=_report).path


def test_seed_question_values(seed_question):
    doc = json.loads((seed_question / "summary.json").read_text())
    values = doc["values"]
    assert len(values) == len(REGISTRY) * 4  # every implementation in every format
    with mpmath.workprec(200):
        exact = mpmath.log(3 + mpmath.e) - 1  # -log(e / (3 + e))
    assert str(exact)[:9] == "0.7436683"
    by = {(v["implementation"], v["format"]): v for v in values}
    # nn.CrossEntropyLoss's value, as the seed printed it (0.7437), and the float32 digits
    torch_loss = nn.CrossEntropyLoss()(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), torch.tensor([3]))
    assert f"{torch_loss.item():.4f}" == "0.7437"
    assert by[("torch", "float32")]["computed"] == torch_loss.item()
    assert by[("torch", "float32")]["reference_repr"] == "0.7436684"
    for v in values:
        assert abs(v["exact_hi"] - float(exact)) < 1e-15  # one truth for every format
        if v["format"] in ("float32", "float64"):
            assert f"{v['computed']:.4f}" == "0.7437", v
            assert v["ulp_error"] < 1.5, v
        assert v["category"] == "finite"
    assert by[("torch", "float64")]["reference"] == float(exact)  # correctly rounded
    cfg = read_manifest(seed_question).config
    assert "e / (3 + e)" in cfg["description"] and "0.7437" in cfg["description"]


def seed_protocol():
    """The seed's CrossEntropyLoss check, transcribed: (share passing, module, manual)."""
    torch.manual_seed(0)
    precision = 15
    batch_size = 10
    C = 10
    N_iter = 1000
    n_correct_CE = 0
    criterion2 = nn.CrossEntropyLoss()
    modules, manuals = [], []
    for i in range(N_iter):
        x = torch.rand(size=(batch_size, C)).to(torch.float)
        y0 = torch.randint(0, C, size=(batch_size,))
        CEloss = criterion2(x, y0)
        manual_CEloss = compute_crossentropyloss_manual(x, y0)
        CE_loss_check = np.abs((CEloss - manual_CEloss).item()) < 10**-precision
        if CE_loss_check:
            n_correct_CE += 1
        modules.append(CEloss.item())
        manuals.append(manual_CEloss.item())
    return n_correct_CE / N_iter, np.array(modules, np.float32), np.array(manuals, np.float32)


def test_seed_81_pass_share_equals_the_seed_code(seed_81):
    share, modules, manuals = seed_protocol()
    cmp = json.loads((seed_81 / "compare.json").read_text())
    (res,) = cmp["results"]
    assert res["format"] == "float32" and res["count"] == 1000
    assert res["pass_share"] == share
    assert res["passed"] == res["identical"]  # 1e-15 < float32 ulp: passing means bit-identical
    assert res["ulp_at_median_reference"] == 2.0**-22  # losses near 2.35
    # both sides bit-identical to the seed's own computations, batch by batch
    t = pq.read_table(seed_81 / "samples.parquet")
    impl = np.array(t.column("implementation").to_pylist())
    comp = t.column("computed").to_numpy()
    assert np.array_equal(comp[impl == "torch"].astype(np.float32).view(np.uint32),
                          modules.view(np.uint32))
    assert np.array_equal(comp[impl == "torch_manual"].astype(np.float32).view(np.uint32),
                          manuals.view(np.uint32))
    for side in ("a_ulp_error", "b_ulp_error"):
        assert res[side]["count"] == 1000 and 0 < res[side]["mean"] < 1.5
    key = (seed_81 / "report.md").read_text().split("## Answer: key findings")[1][:3000]
    assert f"pass the check |a - b| < 1e-15 on {100 * share:.1f}% ({res['passed']}/1000)" in key
    assert "the samples that pass are exactly the bit-identical ones" in key
