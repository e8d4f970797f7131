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
writes ``capabilities.json``, a plot, a manifest and a report into its results folder.

Command line::

    python -m precision_lab.studies.capability --out results            # all capabilities this CPU has
    python -m precision_lab.studies.capability --batches 50 --capabilities default avx2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from precision_lab.implementations.seed import compute_crossentropyloss_manual

__all__ = ["CAPABILITIES", "supported_capabilities", "run_protocol", "run_capability",
           "run_study", "write_study", "main"]

#: Capabilities torch knows on x86-64, lowest first.
CAPABILITIES = ("default", "avx2", "avx512")
STUDY_NAME = "seed_81_percent_capabilities"


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
        c = 0.
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
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        raise RuntimeError(f"capability {capability!r}: the subprocess failed "
                           f"({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout)
    out["requested"] = capability
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _analyse(runs: list[dict]) -> dict[str, Any]:
    from precision_lab.numerics.metrics import ulp_distance, ulp_error
    from precision_lab.numerics.reference import cross_entropy_detailed

    base = runs[0]
    # the truth: the correctly rounded mean loss of each batch (inputs are the same in every run)
    B, C = base["batch_size"], base["classes"]
    x = np.asarray(base["x_bits"], dtype=np.uint32).view(np.float32).reshape(-1, B, C)
    y = np.asarray(base["y"], dtype=np.int64).reshape(-1, B)
    for r in runs[1:]:
        if r["x_bits"] != base["x_bits"] or r["y"] != base["y"]:
            raise RuntimeError("the inputs differ between capabilities; torch.rand is not "
                               "reproducible across kernel sets here")
    ref_v, ref_hi, ref_lo = [], [], []
    for s in range(x.shape[0]):
        rr = cross_entropy_detailed(x[s], y[s], "float32", reduction="mean")
        ref_v.append(float(np.asarray(rr.values)))
        ref_hi.append(float(np.asarray(rr.hi)))
        ref_lo.append(float(np.asarray(rr.lo)))
    ref_v = np.asarray(ref_v, np.float32)
    ref_hi, ref_lo = np.asarray(ref_hi), np.asarray(ref_lo)
    from precision_lab.numerics.formats import ulp_of

    med = float(np.median(ref_hi))
    ulp_med = float(ulp_of(med, "float32"))
    rows, findings = [], []
    per: dict[str, dict] = {}
    for r in runs:
        a = np.asarray(r["a_bits"], np.uint32).view(np.float32)
        b = np.asarray(r["b_bits"], np.uint32).view(np.float32)
        diff = np.abs((a - b).astype(np.float64))  # the seed subtracts float32 tensors
        passed = np.abs(a - b) < 1e-15
        c = np.asarray(r["c_bits"], np.uint32).view(np.float32)
        passed_c = np.abs(c - b) < 1e-15
        d = ulp_distance(a, b, "float32").astype(np.int64)
        ea = ulp_error(a, ref_hi, "float32", ref_lo)
        eb = ulp_error(b, ref_hi, "float32", ref_lo)
        nz = diff[diff > 0]
        hist = {str(k): int(v) for k, v in zip(*np.unique(np.minimum(d, 3), return_counts=True))}
        row = {"requested": r["requested"], "torch_capability": r["capability"],
               "batches": int(a.size), "passed_1e-15": int(passed.sum()),
               "pass_share": float(passed.mean()), "bit_identical": int((d == 0).sum()),
               "pass_equals_bit_identity": bool(np.array_equal(passed, d == 0)),
               "smallest_nonzero_difference": float(nz.min()) if nz.size else None,
               "ulp_distance_counts": hist, "ulp_distance_max": int(d.max()),
               "loop_mean_passed_1e-15": int(passed_c.sum()),
               "loop_mean_equals_ce": int((c.view(np.uint32) == a.view(np.uint32)).sum()),
               "ce_correctly_rounded": int((a == ref_v).sum()),
               "manual_correctly_rounded": int((b == ref_v).sum()),
               "ce_ulp_error_mean": float(np.mean(ea)), "ce_ulp_error_max": float(np.max(ea)),
               "manual_ulp_error_mean": float(np.mean(eb)),
               "manual_ulp_error_max": float(np.max(eb)), "seconds": r.get("seconds")}
        rows.append(row)
        row["median_loss"] = med
        row["ulp_at_median_loss"] = ulp_med
        per[r["requested"]] = {"a": a, "b": b, "d": d, "ea": ea, "eb": eb}
    from precision_lab.report.text import fmt_rate

    for row in rows:
        findings.append({"text": (
            f"ATEN_CPU_CAPABILITY={row['requested']} (torch reports {row['torch_capability']}): "
            f"nn.CrossEntropyLoss and the seed's loop agree to |a - b| < 1e-15 on "
            f"{fmt_rate(row['passed_1e-15'], row['batches'])} of batches; they are bit-identical on "
            f"exactly the same batches ({row['bit_identical']}), and "
            + (f"the smallest non-zero difference is {row['smallest_nonzero_difference']:.3g}"
               if row["smallest_nonzero_difference"] is not None else "no difference is non-zero")
            + f" -- one float32 ULP at the median loss {med:.3g} is {ulp_med:.3g}, so the 1e-15 check "
            f"is a bit-identity check. Where they differ, they are 1 ULP apart on {row['ulp_distance_counts'].get('1', 0)} "
            f"batches, 2 on {row['ulp_distance_counts'].get('2', 0)}, 3 or more on "
            f"{row['ulp_distance_counts'].get('3', 0)}."), "numbers": row})
        findings.append({"text": (
            f"How the mean is reduced decides the share ({row['requested']}): averaging "
            f"nn.CrossEntropyLoss's own per-sample losses left to right, as the seed's loop does, "
            f"passes the check on {fmt_rate(row['loop_mean_passed_1e-15'], row['batches'])} of "
            f"batches; torch's own mean reduction equals that sequential mean on only "
            f"{fmt_rate(row['loop_mean_equals_ce'], row['batches'])}."), "numbers": row})
        findings.append({"text": (
            f"Against the correctly rounded mean loss ({row['requested']}): nn.CrossEntropyLoss is "
            f"correctly rounded on {fmt_rate(row['ce_correctly_rounded'], row['batches'])} "
            f"(mean error {row['ce_ulp_error_mean']:.3g} ULP, max {row['ce_ulp_error_max']:.3g}); "
            f"the seed's loop on {fmt_rate(row['manual_correctly_rounded'], row['batches'])} "
            f"(mean {row['manual_ulp_error_mean']:.3g}, max {row['manual_ulp_error_max']:.3g})."),
            "numbers": row})
    names = list(per)
    cross = []
    for i, p in enumerate(names):
        for q in names[i + 1:]:
            sa = int((per[p]["a"].view(np.uint32) == per[q]["a"].view(np.uint32)).sum())
            sb = int((per[p]["b"].view(np.uint32) == per[q]["b"].view(np.uint32)).sum())
            n = per[p]["a"].size
            cross.append({"a": p, "b": q, "ce_identical": sa, "manual_identical": sb, "batches": n})
            findings.append({"text": (
                f"Between {p} and {q}: nn.CrossEntropyLoss gives the same float32 on "
                f"{fmt_rate(sa, n)} of batches, the seed's loop on {fmt_rate(sb, n)}."),
                "numbers": cross[-1]})
    return {"rows": rows, "cross": cross, "findings": findings, "per": per}


def run_study(batches: int = 1000, capabilities: "list[str] | None" = None, seed: int = 0
              ) -> dict[str, Any]:
    """Run every capability (default: all this CPU supports) and analyse the results."""
    caps = capabilities or supported_capabilities()
    bad = [c for c in caps if c not in CAPABILITIES]
    if bad:
        raise ValueError(f"unknown capability {bad[0]!r}; allowed: {', '.join(CAPABILITIES)}")
    runs = [run_capability(c, batches, seed) for c in caps]
    out = _analyse(runs)
    out["capabilities"] = caps
    out["supported"] = supported_capabilities()
    out["batches"] = batches
    out["torch"] = runs[0]["torch"]
    return out


def _plot(study: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from precision_lab.report.plots import save_figure  # first: it selects matplotlib's Agg backend

    rows = study["rows"]
    caps = [f"{r['requested']}\n(torch: {r['torch_capability']})" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    bottom = np.zeros(len(rows))
    colors = {"0": "#2a9d8f", "1": "#e9c46a", "2": "#f4a261", "3": "#e76f51"}
    labels = {"0": "0 ULP apart (bit-identical: passes |a-b| < 1e-15)", "1": "1 ULP apart",
              "2": "2 ULP apart", "3": "3 or more ULP apart"}
    for k in ("0", "1", "2", "3"):
        vals = np.array([r["ulp_distance_counts"].get(k, 0) / r["batches"] for r in rows])
        ax1.bar(caps, vals, bottom=bottom, color=colors[k], label=labels[k])
        for i, v in enumerate(vals):
            if v > 0.04:
                ax1.text(i, bottom[i] + v / 2, f"{100 * v:.1f}%", ha="center", va="center", fontsize=8)
        bottom += vals
    ax1.set_ylabel("share of batches")
    ax1.set_title("nn.CrossEntropyLoss vs the seed's loop:\nULP distance between the two float32 results",
                  fontsize=10)
    ax1.set_ylim(0, 1.25)
    ax1.legend(fontsize=7, loc="upper center", ncol=2)
    w = 0.38
    xs = np.arange(len(rows))
    ax2.bar(xs - w / 2, [r["ce_ulp_error_mean"] for r in rows], w, label="nn.CrossEntropyLoss (mean)")
    ax2.bar(xs + w / 2, [r["manual_ulp_error_mean"] for r in rows], w, label="seed's loop (mean)")
    ax2.scatter(xs - w / 2, [r["ce_ulp_error_max"] for r in rows], marker="v", color="k",
                label="max", zorder=3)
    ax2.scatter(xs + w / 2, [r["manual_ulp_error_max"] for r in rows], marker="v", color="k", zorder=3)
    ax2.axhline(0.5, color="0.4", ls=":", lw=1)
    ax2.text(len(rows) - 0.5, 0.5, "0.5 ULP (correctly rounded)", fontsize=7, va="bottom", ha="right")
    ax2.set_xticks(xs)
    ax2.set_xticklabels(caps)
    ax2.set_ylabel("ULP error against the correctly rounded mean")
    ax2.set_title("error of each against the exact mean loss", fontsize=10)
    ax2.legend(fontsize=7)
    fig.suptitle(f"seed protocol, {study['batches']} batches of torch.rand(10, 10), float32, "
                 f"torch {study['torch']}", fontsize=10)
    return save_figure(fig, path)


def write_study(study: dict, out_root: "str | Path" = "results") -> Path:
    """Write the study's folder (capabilities.json, plots/, manifest.json, report.md/.html)."""
    from precision_lab.report.report import write_report

    root = Path(out_root) / STUDY_NAME
    root.mkdir(parents=True, exist_ok=True)
    _plot(study, root / "plots" / "capabilities.png")
    doc = {"text": (
        "The seed's protocol (torch.manual_seed(0); 1000 x (x = torch.rand(10, 10), "
        "y = torch.randint(0, 10, (10,))); mean reduction) run in a fresh process per value of "
        "ATEN_CPU_CAPABILITY, which selects torch's vectorized CPU kernels and must be set before "
        "torch is imported. 'pass' is the seed's check |a - b| < 1e-15 on the two float32 results."),
        "findings": study["findings"],
        "tables": {"per capability": [{k: v for k, v in r.items()} for r in study["rows"]],
                   "between capabilities": study["cross"]}}
    (root / "capabilities.json").write_text(json.dumps(doc, indent=1) + "\n")
    git = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=str(Path(__file__).resolve().parent.parent), timeout=10)
        git = {"commit": commit.stdout.strip()} if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    manifest = {
        "name": STUDY_NAME, "status": "complete",
        "question": ("Does the seed's 81.4% ('CrossEntropyLoss correct to 15 decimal places') "
                     "depend on torch's CPU kernels? What share passes under each "
                     "ATEN_CPU_CAPABILITY, and what does passing measure?"),
        "description": ("nn.CrossEntropyLoss against the seed's manual loop, 1000 random float32 "
                        "batches, once per CPU capability in its own process; the 1e-15 check, "
                        "the ULP distance between the two results, and each one's error against "
                        "the correctly rounded mean loss."),
        "config": {"protocol": "seed_81_percent", "batches": study["batches"], "seed": 0,
                   "batch_size": 10, "classes": 10, "capabilities": study["capabilities"],
                   "command": "python -m precision_lab.studies.capability --out results"},
        "capabilities_supported_by_this_cpu": study["supported"],
        "torch": study["torch"], "torch_cpu_capability_default": torch.backends.cpu.get_cpu_capability(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "torch": torch.__version__},
        "platform": platform.platform(), "processor": platform.processor(), "git": git,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_report(root, analyses=False)
    return root


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m precision_lab.studies.capability",
                                 description="The seed's 1e-15 check under each ATEN_CPU_CAPABILITY.")
    ap.add_argument("--out", default="results", help="results root (default: results)")
    ap.add_argument("--batches", type=int, default=1000, help="batches (default: 1000, as the seed)")
    ap.add_argument("--capabilities", nargs="+", choices=CAPABILITIES,
                    help="default: every capability this CPU supports")
    args = ap.parse_args(argv)
    if args.batches < 1:
        ap.error("--batches must be at least 1")
    study = run_study(args.batches, args.capabilities)
    root = write_study(study, args.out)
    for f in study["findings"]:
        print(f["text"])
    print(f"-> {root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
