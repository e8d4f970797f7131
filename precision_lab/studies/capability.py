"""The seed's 81.4% check under each torch CPU kernel set (ATEN_CPU_CAPABILITY).

The seed answer compared ``nn.CrossEntropyLoss()(x, y)`` with a manual loop
(``loss = loss + torch.log(torch.exp(x1[c]) / torch.exp(x1).sum())``, then ``-loss / n``) on
1000 batches of ``torch.rand(10, 10)`` after ``torch.manual_seed(0)``, counting
``|a - b| < 1e-15`` as "correct to 15 decimal places", and found 81.4%.  For float32 results
near 2.35 one ULP is 2**-22 = 2.4e-7, so ``|a - b| < 1e-15`` holds exactly when a and b are
the same float32: the check measures bit-identity of two float32 computations.  Which
computations are bit-identical depends on torch's CPU kernels, and torch picks its vectorized
kernels at start-up from the CPU (or from the environment variable ``ATEN_CPU_CAPABILITY``:
``default``, ``avx2``, ``avx512``), so the share changes with the kernel set.

:func:`run_study` runs the protocol once per capability in a SUBPROCESS (the variable must be
set before torch is imported), each returning the float32 bit patterns of both results; the
parent then computes the pass share, the ULP distance between the two, and each one's ULP
error against the correctly rounded mean loss (:mod:`precision_lab.numerics.reference`).  The study
publishes a results folder like a run's (:mod:`precision_lab.studies.common`): one sweep
point per capability, the three results measured against the truth, the ``[compare]`` check
nn.CrossEntropyLoss vs the seed's loop at 1e-15, and the study's own findings and figure.

Command line::

    precision-lab study capability                      # every capability this CPU has
    precision-lab study capability --batches 50 --capabilities default --capabilities avx2
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from precision_lab.experiment.measure import Measurement
from precision_lab.experiment.progress import NO_PROGRESS, Progress
from precision_lab.experiment.store import Results
from precision_lab.experiment.tables import chunk_key
from precision_lab.implementations.seed import compute_crossentropyloss_manual
from precision_lab.numerics.formats import ulp_of
from precision_lab.numerics.metrics import ulp_distance
from precision_lab.report import plots as P
from precision_lab.report.document import Table
from precision_lab.report.findings import Finding
from precision_lab.report.report import Extra
from precision_lab.report.text import fmt_rate
from precision_lab.studies.common import Study, StudyChunk, publish_study

__all__ = ["CAPABILITIES", "STUDY_NAME", "CE", "LOOP", "PER_SAMPLE_LOOP", "CapabilityRow",
           "supported_capabilities", "run_protocol", "run_capability", "run_study"]

#: Capabilities torch knows on x86-64, lowest first.
CAPABILITIES = ("default", "avx2", "avx512")
STUDY_NAME = "seed_81_percent_capabilities"
#: The three results of each batch.
CE, LOOP, PER_SAMPLE_LOOP = "nn.CrossEntropyLoss", "seed_loop", "per_sample_then_loop"
TOL = 1e-15


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def supported_capabilities() -> list[str]:
    """The capabilities this CPU can run: default always; avx2 with the avx2 and fma flags;
    avx512 with avx512f, avx512bw, avx512vl and avx512dq (what torch checks)."""
    flags = _cpu_flags()
    out = ["default"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        if {"avx2", "fma"} <= flags:
            out.append("avx2")
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            out.append("avx512")
    return out


def run_protocol(batches: int = 1000, seed: int = 0, batch_size: int = 10, classes: int = 10
                 ) -> dict[str, Any]:
    """The seed's protocol in THIS process (torch as already loaded): per batch the float32
    bits of nn.CrossEntropyLoss (a), of the seed's manual loop (b), and of nn.CrossEntropyLoss's
    own per-sample losses averaged the seed's way, left to right from 0. (c: what a mean
    reduction that accumulates sequentially would give), plus the inputs' bits."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    crit = nn.CrossEntropyLoss()
    per_sample = nn.CrossEntropyLoss(reduction="none")
    a_bits, b_bits, c_bits, xs, ys = [], [], [], [], []
    for _ in range(batches):
        x = torch.rand(size=(batch_size, classes)).to(torch.float)
        y0 = torch.randint(0, classes, size=(batch_size,))
        a = crit(x, y0)
        b = compute_crossentropyloss_manual(x, y0)
        c: Any = 0.
        for v in per_sample(x, y0):
            c = c + v
        c = c / batch_size
        a_bits.append(int(np.float32(a.item()).view(np.uint32)))
        b_bits.append(int(np.float32(b.item()).view(np.uint32)))
        c_bits.append(int(np.float32(c.item()).view(np.uint32)))
        xs.append(x.numpy().view(np.uint32).ravel().tolist())
        ys.append(y0.numpy().tolist())
    return {"capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "env": os.environ.get("ATEN_CPU_CAPABILITY"), "a_bits": a_bits, "b_bits": b_bits,
            "c_bits": c_bits,
            "x_bits": xs, "y": ys, "batch_size": batch_size, "classes": classes}


def run_capability(capability: str, batches: int = 1000, seed: int = 0, timeout: float = 600
                   ) -> dict[str, Any]:
    """Run :func:`run_protocol` in a fresh Python with ATEN_CPU_CAPABILITY=capability."""
    env = dict(os.environ)
    env["ATEN_CPU_CAPABILITY"] = capability
    env.setdefault("OMP_NUM_THREADS", "1")
    code = ("import json, sys; from precision_lab.studies.capability import run_protocol; "
            f"json.dump(run_protocol({int(batches)}, {int(seed)}), sys.stdout)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))
    if proc.returncode != 0:
        raise RuntimeError(f"capability {capability!r}: the subprocess failed "
                           f"({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout)
    out["requested"] = capability
    return out


@dataclass(frozen=True)
class CapabilityRow:
    """The seed's check under one kernel set, as numbers (``analyses.json``).

    Attributes:
        capability: ATEN_CPU_CAPABILITY as requested; ``torch_capability`` what torch reports.
        batches: batches run; ``passed`` those with |CE - loop| < 1e-15;
        bit_identical: those where both are the same float32 (always the same set as passed,
            ``pass_is_bit_identity`` checks it);
        smallest_difference: the smallest non-zero |CE - loop| (None: none differ);
        ulp_at_median: one float32 ULP at the median exact mean loss;
        distance_counts: batches by ULP distance between the two ("3" counts 3 or more);
        per_sample_loop_passed: batches where the loop over nn.CrossEntropyLoss's OWN
            per-sample losses passes the check against the seed's loop;
        ce_equals_sequential_mean: batches where torch's mean equals that sequential mean.
    """

    capability: str
    torch_capability: str
    batches: int
    passed: int
    bit_identical: int
    pass_is_bit_identity: bool
    smallest_difference: "float | None"
    ulp_at_median: float
    distance_counts: dict[str, int]
    per_sample_loop_passed: int
    ce_equals_sequential_mean: int


def _rows(runs: list[dict[str, Any]], measured: dict[str, Measurement]) -> list[CapabilityRow]:
    rows = []
    for i, r in enumerate(runs):
        m = measured[chunk_key(i, "float32")]
        a, b = m.results[CE].computed, m.results[LOOP].computed
        c = m.results[PER_SAMPLE_LOOP].computed
        diff = np.abs((a - b).astype(np.float64))  # the seed subtracts float32 tensors
        passed = np.abs(a - b) < TOL
        d = ulp_distance(a, b, "float32").astype(np.int64)
        nz = diff[diff > 0]
        med = float(np.median(m.reference.hi))
        hist = {str(k): int(v) for k, v in zip(*np.unique(np.minimum(d, 3), return_counts=True))}
        rows.append(CapabilityRow(
            r["requested"], r["capability"], int(a.size), int(passed.sum()), int((d == 0).sum()),
            bool(np.array_equal(passed, d == 0)), float(nz.min()) if nz.size else None,
            float(ulp_of(med, "float32")), hist, int((np.abs(c - b) < TOL).sum()),
            int((c.view(np.uint32) == a.view(np.uint32)).sum())))
    return rows


def _findings(rows: list[CapabilityRow], runs: list[dict[str, Any]]) -> list[Finding]:
    out = [Finding(
        "Share of batches passing the seed's |a - b| < 1e-15 per CPU kernel set: "
        + "; ".join(f"{r.capability} (torch reports {r.torch_capability}) "
                    f"{fmt_rate(r.passed, r.batches)}" for r in rows)
        + (". On every set the batches that pass are exactly those where the two results are "
           "the same float32." if all(r.pass_is_bit_identity for r in rows) else "."),
        {r.capability: r.passed for r in rows}, kind="study")]
    out.append(Finding(
        "The mean's summation order decides the share: averaging nn.CrossEntropyLoss's own "
        "per-sample losses left to right, as the seed's loop does, passes the check on "
        + "; ".join(f"{fmt_rate(r.per_sample_loop_passed, r.batches)} ({r.capability})"
                    for r in rows)
        + "; torch's own mean equals that sequential mean on "
        + "; ".join(f"{fmt_rate(r.ce_equals_sequential_mean, r.batches)} ({r.capability})"
                    for r in rows) + ".",
        {r.capability: [r.per_sample_loop_passed, r.ce_equals_sequential_mean] for r in rows},
        kind="study"))
    pairs = []
    for i, p in enumerate(runs):
        for q in runs[i + 1:]:
            n = len(p["a_bits"])
            sa = int(np.sum(np.asarray(p["a_bits"]) == np.asarray(q["a_bits"])))
            sb = int(np.sum(np.asarray(p["b_bits"]) == np.asarray(q["b_bits"])))
            pairs.append({"a": p["requested"], "b": q["requested"], "ce_identical": sa,
                          "loop_identical": sb, "batches": n})
    if pairs:
        out.append(Finding(
            "Between kernel sets, nn.CrossEntropyLoss gives the same float32 on "
            + "; ".join(f"{fmt_rate(c['ce_identical'], c['batches'])} ({c['a']} vs {c['b']})"
                        for c in pairs)
            + "; the seed's loop on "
            + "; ".join(f"{fmt_rate(c['loop_identical'], c['batches'])} ({c['a']} vs {c['b']})"
                        for c in pairs) + ".", {"pairs": pairs}, kind="study"))
    return out


def _figure(rows: list[CapabilityRow], batches: int, torch_version: str) -> P.Figure:
    import matplotlib.pyplot as plt

    caps = [f"{r.capability}\n(torch: {r.torch_capability})" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = np.zeros(len(rows))
    colors = {"0": "#2a9d8f", "1": "#e9c46a", "2": "#f4a261", "3": "#e76f51"}
    labels = {"0": "0 ULP apart (bit-identical: passes |a-b| < 1e-15)", "1": "1 ULP apart",
              "2": "2 ULP apart", "3": "3 or more ULP apart"}
    for k in ("0", "1", "2", "3"):
        vals = np.array([r.distance_counts.get(k, 0) / r.batches for r in rows])
        ax.bar(caps, vals, bottom=bottom, color=colors[k], label=labels[k])
        for i, v in enumerate(vals):
            if v > 0.04:
                ax.text(i, bottom[i] + v / 2, f"{100 * v:.1f}%", ha="center", va="center",
                        fontsize=8)
        bottom += vals
    ax.set_ylabel("share of batches")
    ax.set_xlabel("ATEN_CPU_CAPABILITY (torch's CPU kernel set)")
    ax.set_ylim(0, 1.3)
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax.set_title(f"nn.CrossEntropyLoss vs the seed's loop, {batches} batches of "
                 f"torch.rand(10, 10), float32, torch {torch_version}", fontsize=9)
    return P.Figure("capabilities.png", fig,
                    "ULP distance between nn.CrossEntropyLoss and the seed's manual loop per "
                    "batch, one bar per CPU kernel set; the green part is the share that "
                    "passes the seed's |a - b| < 1e-15 check.")


def run_study(out_root: "str | Path" = "results", batches: int = 1000,
              capabilities: "list[str] | None" = None, seed: int = 0, *, force: bool = True,
              progress: Progress = NO_PROGRESS, command: "str | None" = None) -> Path:
    """Run the protocol under every capability (default: all this CPU supports), measure it
    and publish ``out_root/seed_81_percent_capabilities``.

    Raises:
        ValueError: an unknown capability, or batches < 1.
        RuntimeError: a subprocess failed, or the inputs differ between capabilities.
    """
    t0 = time.perf_counter()
    caps = capabilities or supported_capabilities()
    bad = [c for c in caps if c not in CAPABILITIES]
    if bad:
        raise ValueError(f"unknown capability {bad[0]!r}; allowed: {', '.join(CAPABILITIES)}")
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    runs = []
    with progress.stage("compute", total=len(caps)) as advance:
        for c in caps:
            runs.append(run_capability(c, batches, seed))
            advance(1)
    base = runs[0]
    for r in runs[1:]:
        if r["x_bits"] != base["x_bits"] or r["y"] != base["y"]:
            raise RuntimeError("the inputs differ between capabilities; torch.rand is not "
                               "reproducible across kernel sets here")
    B, V = base["batch_size"], base["classes"]
    x = np.asarray(base["x_bits"], dtype=np.uint32).view(np.float32).reshape(-1, B, V)
    y = np.asarray(base["y"], dtype=np.int64).reshape(-1, B)
    bits = lambda r, k: np.asarray(r[k], np.uint32).view(np.float32)  # noqa: E731
    chunks = [StudyChunk(i, {"capability": r["requested"]}, "float32", x, y,
                         {CE: bits(r, "a_bits"), LOOP: bits(r, "b_bits"),
                          PER_SAMPLE_LOOP: bits(r, "c_bits")}, (CE, LOOP, TOL))
              for i, r in enumerate(runs)]
    study = Study(
        STUDY_NAME,
        "Does the seed's 81.4% ('CrossEntropyLoss correct to 15 decimal places') depend on "
        "torch's CPU kernels? What share passes under each ATEN_CPU_CAPABILITY, and what does "
        "passing measure?",
        "The seed's protocol (torch.manual_seed(0); per batch x = torch.rand(10, 10), "
        "y = torch.randint(0, 10, (10,)); mean reduction) in a fresh process per value of "
        "ATEN_CPU_CAPABILITY, which selects torch's vectorized CPU kernels and must be set "
        "before torch is imported. Results: nn.CrossEntropyLoss (" + CE + "), the seed's manual "
        "loop (" + LOOP + ") and nn.CrossEntropyLoss(reduction='none') averaged by the seed's "
        "loop (" + PER_SAMPLE_LOOP + "), each against the correctly rounded mean loss.",
        {"protocol": "seed_81_percent", "batches": batches, "seed": seed, "batch_size": B,
         "classes": V, "capabilities": caps, "compare": {"a": CE, "b": LOOP, "abs_tol": TOL}},
        ["capability"], reduction="mean",
        environment={"capabilities_supported": supported_capabilities()})

    def extra(res: Results, measured: dict[str, Measurement]) -> Extra:
        rows = _rows(runs, measured)
        table = Table(["capability", "torch reports", "pass |a-b| < 1e-15", "bit-identical",
                       "per-sample then loop passes", "torch mean = sequential mean"],
                      [[r.capability, r.torch_capability, fmt_rate(r.passed, r.batches),
                        fmt_rate(r.bit_identical, r.batches),
                        fmt_rate(r.per_sample_loop_passed, r.batches),
                        fmt_rate(r.ce_equals_sequential_mean, r.batches)] for r in rows],
                      "The seed's check per CPU kernel set.")
        return Extra(findings=_findings(rows, runs), tables=[table],
                     figures=[_figure(rows, batches, base["torch"])],
                     records={"capabilities": [asdict(r) for r in rows]})

    return publish_study(study, chunks, out_root, extra=extra, force=force, progress=progress,
                         command=command, t_start=t0)
