"""capability: the seed protocol in a subprocess under ATEN_CPU_CAPABILITY."""

from __future__ import annotations

import json

from precision_lab.capability import run_capability, run_study, supported_capabilities, write_study


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
