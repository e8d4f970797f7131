"""cuda_check's analysis, with torch's CPU kernels standing in for the GPU side."""

import json

import numpy as np

from precision_lab.studies import cuda as cuda_check


def test_analyze_against_itself(tmp_path):
    inputs, fake_gpu = tmp_path / "in.npz", tmp_path / "gpu.npz"
    cuda_check.make_inputs(inputs)
    cuda_check.compute(inputs, fake_gpu, device="cpu")
    s = cuda_check.analyze(inputs, fake_gpu, tmp_path / "out")
    # the same kernels on the same values: every result bit-identical, distance 0
    assert all(r["identical_rate"] == 1.0 and r["ulp_distance_max"] == 0 for r in s["rows"])
    assert s["seed_protocol"]["gpu"] == s["seed_protocol"]["cpu"]
    # the seed protocol's share is a share of 1000 batches; at 1e-15 float32 means identity
    share = s["seed_protocol"]["cpu"]["pass_rate_1e-15"]
    assert share == s["seed_protocol"]["cpu"]["bit_identical_rate"]
    assert (share * 1000) == round(share * 1000)
    # errors are measured against the unrounded truth: float64 torch on random normal logits
    # at V = 1024 is within a couple of ulps, and somewhere not correctly rounded is possible
    row = next(r for r in s["rows"] if r["set"] == "normal3_V1024" and r["format"] == "float64"
               and r["implementation"] == "torch")
    assert 0.0 < row["cpu"]["ulp_error_max"] < 4.0
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["rows"] == s["rows"]
    assert "bit-identical" in (tmp_path / "out" / "report.md").read_text()


def test_inputs_are_deterministic(tmp_path):
    cuda_check.make_inputs(tmp_path / "a.npz")
    cuda_check.make_inputs(tmp_path / "b.npz")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
