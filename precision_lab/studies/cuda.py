"""torch's CUDA kernels against its CPU kernels and the certified truth, on the same inputs.

The GPU only runs torch; everything that needs the reference runs here.  Three steps::

    precision-lab study cuda inputs INPUTS.npz                 # any machine
    precision-lab study cuda compute INPUTS.npz GPU.npz        # the CUDA machine
    precision-lab study cuda analyze GPU.npz                   # any machine

``compute`` needs only numpy, ml_dtypes, mpmath and torch (not the runner).  ``analyze``
regenerates the inputs (they are a pure function of the seed), recomputes the CPU side here
and publishes ``results/cuda_vs_cpu`` like a run's folder (:mod:`precision_lab.studies.common`):
one sweep point per input set, results ``<implementation>@cpu`` and ``<implementation>@cuda``
measured against the correctly rounded truth (the agreement table gives the share of results
bit-identical between the devices), the GPU results file itself, and for the seed's protocol
the share of batches whose mean loss matches the seed's manual loop at |a - b| < 1e-15 on each
device.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from precision_lab.experiment.errors import RunError
from precision_lab.experiment.measure import Measurement
from precision_lab.experiment.progress import NO_PROGRESS, Progress
from precision_lab.experiment.store import Results
from precision_lab.experiment.tables import chunk_key
from precision_lab.implementations import torch_ce, torch_logsoftmax_nll, torch_manual
from precision_lab.numerics.formats import FORMAT_NAMES, round_float64_array
from precision_lab.numerics.metrics import NO_DISTANCE, ulp_distance
from precision_lab.numerics.stats import error_stats
from precision_lab.numerics.sums import reduce_in_format
from precision_lab.report.document import Table
from precision_lab.report.findings import Finding
from precision_lab.report.report import Extra
from precision_lab.report.text import fmt_num, fmt_pct
from precision_lab.studies.common import Study, StudyChunk, publish_study

__all__ = ["SETS", "STUDY_NAME", "SeedCheck", "make_inputs", "compute", "analyze"]

STUDY_NAME = "cuda_vs_cpu"

TORCH_IMPLS = {"torch": torch_ce, "torch_logsoftmax_nll": torch_logsoftmax_nll,
               "torch_manual": torch_manual}

#: Input sets: name -> (batch size, classes, logit scale or None for the seed's protocol).
SETS = {
    "seed_protocol": (10, 10, None),      # torch.manual_seed(0), 1000 x torch.rand(10, 10)
    "normal3_V10": (2000, 10, 3.0),
    "normal3_V1024": (200, 1024, 3.0),
    "normal3_V32768": (16, 32768, 3.0),
}


def make_inputs(path: "str | Path", seed: int = 0) -> None:
    """Write the input sets (float64 logits, int64 targets) to ``path`` (.npz)."""
    import torch

    arrays: dict[str, Any] = {}
    rng = np.random.Generator(np.random.PCG64(seed))
    for name, (b, c, scale) in SETS.items():
        if scale is None:
            g = torch.Generator().manual_seed(seed)
            xs, ys = [], []
            for _ in range(1000):  # the seed's loop: rand then randint, per batch
                xs.append(torch.rand(size=(b, c), generator=g))
                ys.append(torch.randint(0, c, size=(b,), generator=g))
            x = torch.cat(xs).numpy().astype(np.float64)
            y = torch.cat(ys).numpy().astype(np.int64)
        else:
            x = scale * rng.standard_normal((b, c))
            y = rng.integers(0, c, size=b)
        arrays[f"{name}/logits"], arrays[f"{name}/targets"] = x, y
    np.savez_compressed(path, **arrays)


def _formats_for(name: str) -> tuple[str, ...]:
    return ("float32",) if name == "seed_protocol" else FORMAT_NAMES


def compute(inputs: "str | Path", out: "str | Path", device: str = "cuda") -> None:
    """Run the torch implementations on ``device`` over every input set and format; save the
    per-sample losses (float64 images of the format values) and the torch/device facts.

    Raises:
        RunError: ``device`` is not "cpu", "cuda" or "cuda:N", or a CUDA device and torch here
            has no CUDA.
    """
    import re

    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise RunError(f"--device: unknown device {device!r}; allowed: cpu, cuda, cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {device!r}: torch {torch.__version__} here has no CUDA device; "
                       "run `compute` on the GPU machine and `analyze` here")

    data = np.load(inputs)
    res: dict[str, Any] = {}
    for name in SETS:
        x64, y = data[f"{name}/logits"], data[f"{name}/targets"]
        for fmt in _formats_for(name):
            x = round_float64_array(x64, fmt)
            for key, fn in TORCH_IMPLS.items():
                res[f"{name}/{fmt}/{key}"] = fn(x, y, fmt, device=device).astype(np.float64)
            if name == "seed_protocol":  # nn.CrossEntropyLoss() on each batch: torch's mean
                b = SETS[name][0]
                res[f"{name}/{fmt}/torch_mean"] = np.array([
                    float(torch_ce(x[i:i + b], y[i:i + b], fmt, reduction="mean", device=device))
                    for i in range(0, len(y), b)])
    info: dict[str, Any] = {"device": device, "torch": torch.__version__,
                            "python": sys.version.split()[0], "platform": platform.platform(),
                            "numpy": np.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    np.savez_compressed(out, info=np.array(json.dumps(info)), **res)


@dataclass(frozen=True)
class SeedCheck:
    """The seed's check on one device: of ``batches`` batches, how many pass
    |nn.CrossEntropyLoss - manual loop| < 1e-15 and how many are bit-identical."""

    device: str
    batches: int
    passed: int
    bit_identical: int


def _seed_checks(gpu: Any, cpu: Any) -> list[SeedCheck]:
    b = SETS["seed_protocol"][0]
    out = []
    for side, arr in (("cpu", cpu), ("cuda", gpu)):
        module = arr["seed_protocol/float32/torch_mean"]
        per = arr["seed_protocol/float32/torch_manual"].astype(np.float32)
        manual = np.array([float(reduce_in_format(per[i:i + b], "mean", "float32"))
                           for i in range(0, len(per), b)])
        out.append(SeedCheck(side, int(module.size), int(np.sum(np.abs(module - manual) < 1e-15)),
                             int(np.sum(module == manual))))
    return out


def analyze(gpu: "str | Path", out_root: "str | Path" = "results", *,
            inputs: "str | Path | None" = None, force: bool = True,
            progress: Progress = NO_PROGRESS, command: "str | None" = None) -> Path:
    """Compare the GPU results in ``gpu`` with torch's CPU kernels here and the truth, and
    publish ``out_root/cuda_vs_cpu`` (the GPU file is stored in the folder).  ``inputs``: the
    file ``compute`` ran on (default: regenerated here, identical for the same seed).

    Raises:
        RunError: ``gpu`` is missing or lacks a result this version computes.
    """
    t0 = time.perf_counter()
    gpu = Path(gpu)
    if not gpu.is_file():
        raise RunError(f"{gpu}: no such GPU results file (write one with `precision-lab study "
                       "cuda compute` on a CUDA machine)")
    gpu_bytes = gpu.read_bytes()  # publishing may replace the folder the file is in
    with tempfile.TemporaryDirectory() as tmp:
        if inputs is None:
            inputs = Path(tmp) / "inputs.npz"
            make_inputs(inputs)
        cpu_file = Path(tmp) / "cpu.npz"
        with progress.stage("compute", total=1) as advance:
            compute(inputs, cpu_file, device="cpu")
            advance(1)
        data = dict(np.load(inputs))
        g = dict(np.load(io.BytesIO(gpu_bytes)))
        c = dict(np.load(cpu_file))
    g_info, c_info = json.loads(str(g["info"])), json.loads(str(c["info"]))
    import torch

    c_info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    chunks = []
    for i, name in enumerate(SETS):
        b, v, _ = SETS[name]
        x64, y = data[f"{name}/logits"], data[f"{name}/targets"]
        S = len(y) // b
        for fmt in _formats_for(name):
            x = round_float64_array(x64, fmt).reshape(S, b, v)
            results = {}
            for key in TORCH_IMPLS:
                for side, arr in (("cpu", c), ("cuda", g)):
                    k = f"{name}/{fmt}/{key}"
                    if k not in arr:
                        raise RunError(f"{gpu}: no result {k!r}; recompute it with this "
                                       "version's `study cuda compute`")
                    results[f"{key}@{side}"] = arr[k]
            chunks.append(StudyChunk(i, {"set": name}, fmt, x, y.reshape(S, b), results))
    seed = _seed_checks(g, c)
    study = Study(
        STUDY_NAME,
        "Do torch's CUDA kernels compute the same cross-entropy as its CPU kernels, and which "
        "is closer to the truth?",
        "The same inputs (SETS in precision_lab/studies/cuda.py) through nn.CrossEntropyLoss "
        "(torch), log_softmax + nll_loss (torch_logsoftmax_nll) and the seed's manual formula "
        "(torch_manual) on a GPU (results <implementation>@cuda, computed there and stored in "
        f"{gpu.name}) and on this machine's CPU (<implementation>@cpu), per-sample losses "
        "against the correctly rounded truth.",
        {"study": "cuda_vs_cpu", "sets": {k: list(v) for k, v in SETS.items()}, "seed": 0,
         "gpu_file": gpu.name, "gpu": g_info},
        ["set"], reduction="none", environment={"gpu_side": g_info, "cpu_side": c_info})

    def extra(res: Results, measured: dict[str, Measurement]) -> Extra:
        assert res.writer is not None
        res.writer.bytes(gpu.name, gpu_bytes)
        findings = [Finding(
            f"The seed's check on {s.device}: nn.CrossEntropyLoss and the manual loop agree to "
            f"|a - b| < 1e-15 on {fmt_pct(s.passed / s.batches)} of {s.batches} batches and are "
            f"bit-identical on {fmt_pct(s.bit_identical / s.batches)}.", asdict(s),
            kind="study")
            for s in seed]
        table = Table(["device", "passes |a - b| < 1e-15", "bit-identical"],
                      [[s.device, fmt_pct(s.passed / s.batches),
                        fmt_pct(s.bit_identical / s.batches)] for s in seed],
                      "The seed's protocol (1000 batches of torch.rand(10, 10), float32, mean) "
                      f"on each device. GPU: {g_info.get('gpu', g_info['device'])}, torch "
                      f"{g_info['torch']}; CPU: torch {c_info['torch']}, "
                      f"{c_info['cpu_capability']}.")
        rows = []
        for c in chunks:
            m = measured[chunk_key(c.point, c.fmt)]
            for key in TORCH_IMPLS:
                a, b = m.results[f"{key}@cpu"], m.results[f"{key}@cuda"]
                d = ulp_distance(a.computed, b.computed, c.fmt)
                ok = d != NO_DISTANCE
                ea, eb = (error_stats(r.ulp_error, r.ulp_distance, r.bits_of_error, r.category)
                          for r in (a, b))
                rows.append([c.params["set"], c.fmt, key, fmt_pct(float(np.mean(d == 0))),
                             int(d[ok].max()) if ok.any() else "—",
                             f"{fmt_num(ea.ulp_error_mean, 3)} / {fmt_num(ea.ulp_error_max, 3)}",
                             f"{fmt_num(eb.ulp_error_mean, 3)} / {fmt_num(eb.ulp_error_max, 3)}"])
        devices = Table(["set", "format", "implementation", "bit-identical CPU vs GPU",
                         "max ULP distance", "CPU mean / max ULP error",
                         "GPU mean / max ULP error"], rows,
                        "Per-sample losses of the same inputs on both devices; ULP errors "
                        "against the truth (finite results).", md_rows=12,
                        md_note="all rows in report.html and agreement.csv")
        return Extra(findings=findings, tables=[table, devices],
                     records={"seed_protocol": [asdict(s) for s in seed]})

    return publish_study(study, chunks, out_root, extra=extra, force=force, progress=progress,
                         command=command, t_start=t0)
