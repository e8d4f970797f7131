"""capability: the seed protocol in a subprocess under ATEN_CPU_CAPABILITY."""

from __future__ import annotations

import json

import pytest

from precision_lab.studies.capability import (
    run_capability,
    run_study,
    supported_capabilities,
    write_study,
)


def test_default_capability_subprocess_few_batches(tmp_path) -> None:
    r = run_capability("default", batches=4)
    assert r["env"] == "default" and r["capability"] == "DEFAULT"
    assert len(r["a_bits"]) == len(r["b_bits"]) == 4
    study = run_study(batches=4, capabilities=["default"])
    (row,) = study["rows"]
    assert row["batches"] == 4
    # the seed's 1e-15 check passes exactly where the two float32 results are bit-identical
    assert row["pass_equals_bit_identity"]
    assert row["passed_1e-15"] == row["bit_identical"]
    root = write_study(study, tmp_path)
    doc = json.loads((root / "capabilities.json").read_text())
    assert doc["findings"] and "1e-15" in doc["findings"][0]["text"]
    assert (root / "plots" / "capabilities.png").exists()
    assert "ATEN_CPU_CAPABILITY=default" in (root / "report.md").read_text()


def test_supported_includes_default() -> None:
    assert supported_capabilities()[0] == "default"


def test_loop_mean_counterfactual_matches_the_seed_code_in_this_process() -> None:
    """torch's per-sample losses averaged by the seed's loop, recomputed here from the seed's
    own code, under the kernel set this process runs (the study's subprocess uses the same)."""
    import torch
    import torch.nn.functional as F

    from precision_lab.implementations.seed import compute_crossentropyloss_manual

    here = torch.backends.cpu.get_cpu_capability().lower()
    if here not in supported_capabilities():
        pytest.skip(f"this process runs torch's {here!r} kernels, which the study cannot select")
    torch.manual_seed(0)
    expect = 0
    for _ in range(6):
        x, y = torch.rand(size=(10, 10)), torch.randint(0, 10, size=(10,))
        acc = 0.
        for v in F.cross_entropy(x, y, reduction="none"):
            acc = acc + v
        expect += bool(abs((acc / 10 - compute_crossentropyloss_manual(x, y)).item()) < 1e-15)
    (row,) = run_study(batches=6, capabilities=[here])["rows"]
    assert row["loop_mean_passed_1e-15"] == expect
    assert 0 <= row["loop_mean_equals_ce"] <= 6
