"""The cuda study's analysis, with torch's CPU kernels standing in for the GPU side."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from typer.testing import CliRunner

from precision_lab.cli import app
from precision_lab.experiment.store import open_results, sha256_of
from precision_lab.studies import cuda


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cuda")
    inputs, fake_gpu = tmp / "in.npz", tmp / "gpu_fake.npz"
    cuda.make_inputs(inputs)
    cuda.compute(inputs, fake_gpu, device="cpu")
    folder = cuda.analyze(fake_gpu, tmp / "out", inputs=inputs)
    return folder, fake_gpu


def test_same_kernels_agree_bit_for_bit(analyzed) -> None:
    folder, gpu = analyzed
    res = open_results(folder)
    assert res.manifest.kind == "study"
    assert "could not run" not in (folder / "report.md").read_text()
    pairs = [r for r in res.agreement()
             if r.implementation_a.split("@")[0] == r.implementation_b.split("@")[0]]
    assert pairs and all(r.identical_rate == 1.0 for r in pairs)
    seed = res.analyses()["seed_protocol"]
    assert seed[0]["passed"] == seed[1]["passed"] and seed[0]["batches"] == 1000
    # the GPU file travels with the folder, listed with its checksum
    assert res.manifest.files[gpu.name] == sha256_of(gpu)


def test_float64_error_against_mpmath(analyzed) -> None:
    """A float64 per-sample loss's ULP error recomputed from mpmath at 80 digits."""
    folder, _ = analyzed
    res = open_results(folder)
    x, y = res.inputs(2, "float64")  # normal3_V1024
    t = {k: np.asarray(v) for k, v in res.samples().to_pydict().items()}
    for i in (0, 7, 199):
        (j,) = np.flatnonzero((t["point"] == 2) & (t["format"] == "float64")
                              & (t["implementation"] == "torch@cpu") & (t["sample"] == i))
        with mpmath.workdps(80):
            v = [mpmath.mpf(float(a)) for a in x[0, i]]
            exact = mpmath.log(mpmath.fsum(mpmath.exp(a) for a in v)) - v[int(y[0, i])]
            ulp = mpmath.mpf(2) ** (mpmath.floor(mpmath.log(abs(exact), 2)) - 52)
            want = float(abs(mpmath.mpf(float(t["computed"][j])) - exact) / ulp)
        assert t["ulp_error"][j] == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_compute_without_cuda_is_one_line_exit_2(tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cuda.make_inputs(tmp_path / "in.npz")
    r = CliRunner().invoke(app, ["study", "cuda", "compute", str(tmp_path / "in.npz"),
                                 str(tmp_path / "g.npz")])
    assert r.exit_code == 2 and "no CUDA device" in r.output
    assert not (tmp_path / "g.npz").exists()


def test_analyze_missing_file_exit_2(tmp_path) -> None:
    r = CliRunner().invoke(app, ["study", "cuda", "analyze", str(tmp_path / "nope.npz"),
                                 "--out", str(tmp_path)])
    assert r.exit_code == 2 and "nope.npz" in r.output


def test_inputs_are_deterministic(tmp_path) -> None:
    cuda.make_inputs(tmp_path / "a.npz")
    cuda.make_inputs(tmp_path / "b.npz")
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_compute_refuses_an_unknown_device(tmp_path) -> None:
    inputs = tmp_path / "in.npz"
    cuda.make_inputs(inputs)
    r = CliRunner().invoke(app, ["study", "cuda", "compute", str(inputs), str(tmp_path / "o.npz"),
                                 "--device", "tpu"])
    assert r.exit_code == 2 and "--device" in r.output and "cpu, cuda, cuda:N" in r.output
    assert r.output.count("\n") == 1
