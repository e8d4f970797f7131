"""torch's CUDA kernels against its CPU kernels and the certified truth, on the same inputs.

The GPU only runs torch; everything that needs the reference runs here.  Three steps::

    python -m precision_lab.studies.cuda inputs  INPUTS.npz             # any machine
    python -m precision_lab.studies.cuda compute INPUTS.npz GPU.npz     # the CUDA machine
    python -m precision_lab.studies.cuda analyze INPUTS.npz GPU.npz OUT_DIR   # any machine

``compute`` needs only numpy, ml_dtypes, mpmath and torch (not pydantic or the runner).
``analyze`` recomputes the CPU side here, computes the correctly rounded reference and the
unrounded truth, and writes ``summary.json`` and ``report.md`` to OUT_DIR: per input set,
format and torch implementation, each device's ULP-error statistics against the truth, the
share of results bit-identical between the devices, and, for the seed's protocol, the share
of batches whose CUDA mean loss matches the seed's manual loop at |a - b| < 1e-15.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np

from precision_lab.implementations import torch_ce, torch_logsoftmax_nll, torch_manual
from precision_lab.numerics.formats import FORMAT_NAMES, get_format, round_float64_array

__all__ = ["make_inputs", "compute", "analyze"]

TORCH_IMPLS = {"torch": torch_ce, "torch_logsoftmax_nll": torch_logsoftmax_nll,
               "torch_manual": torch_manual}

#: Input sets: name -> (batch size, classes, logit scale or None for the seed's protocol).
SETS = {
    "seed_protocol": (10, 10, None),      # torch.manual_seed(0), 1000 x torch.rand(10, 10)
    "normal3_V10": (2000, 10, 3.0),
    "normal3_V1024": (200, 1024, 3.0),
    "normal3_V32768": (16, 32768, 3.0),
}


def make_inputs(path: Path, seed: int = 0) -> None:
    """Write the input sets (float64 logits, int64 targets) to ``path`` (.npz)."""
    import torch

    arrays: dict[str, np.ndarray] = {}
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


def compute(inputs: Path, out: Path, device: str = "cuda") -> None:
    """Run the torch implementations on ``device`` over every input set and format; save the
    per-sample losses (float64 images of the format values) and the torch/device facts."""
    import torch

    data = np.load(inputs)
    res: dict[str, np.ndarray] = {}
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
    info = {"device": device, "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "numpy": np.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    np.savez_compressed(out, info=np.array(json.dumps(info)), **res)


def _stats(err: np.ndarray) -> dict:
    fin = err[np.isfinite(err)]
    return {"count": int(err.size), "finite": int(fin.size),
            "correctly_rounded_rate": float(np.mean(fin <= 0.5)) if fin.size else None,
            "ulp_error_mean": float(fin.mean()) if fin.size else None,
            "ulp_error_max": float(fin.max()) if fin.size else None}


def analyze(inputs: Path, gpu: Path, out_dir: Path) -> dict:
    """Compare the GPU results in ``gpu`` with torch's CPU kernels here and the truth; write
    ``summary.json`` and ``report.md`` under ``out_dir`` and return the summary."""
    from precision_lab.numerics.metrics import ulp_distance, ulp_error
    from precision_lab.numerics.reference import cross_entropy_detailed
    from precision_lab.numerics.sums import (
        reduce_in_format,  # the seed's loop over per-sample losses
    )

    cpu_file = out_dir / "_cpu.npz"
    out_dir.mkdir(parents=True, exist_ok=True)
    compute(inputs, cpu_file, device="cpu")
    data, g, c = np.load(inputs), np.load(gpu), np.load(cpu_file)
    g_info, c_info = json.loads(str(g["info"])), json.loads(str(c["info"]))
    import torch

    c_info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    rows = []
    seed: dict = {}
    for name in SETS:
        x64, y = data[f"{name}/logits"], data[f"{name}/targets"]
        for fmt in _formats_for(name):
            f = get_format(fmt)
            x = round_float64_array(x64, fmt)
            ref = cross_entropy_detailed(x, y, fmt)
            for key in TORCH_IMPLS:
                gv = g[f"{name}/{fmt}/{key}"].astype(f.np_dtype)
                cv = c[f"{name}/{fmt}/{key}"].astype(f.np_dtype)
                d = ulp_distance(gv, cv, fmt)
                rows.append({
                    "set": name, "format": fmt, "implementation": key,
                    "gpu": _stats(ulp_error(gv, ref.hi, fmt, exact_lo=ref.lo)),
                    "cpu": _stats(ulp_error(cv, ref.hi, fmt, exact_lo=ref.lo)),
                    "identical_rate": float(np.mean(d == 0)),
                    "ulp_distance_max": int(d.max()),
                })
            if name == "seed_protocol":
                b = SETS[name][0]
                for side, arr in (("gpu", g), ("cpu", c)):
                    module = arr[f"{name}/{fmt}/torch_mean"]
                    per = arr[f"{name}/{fmt}/torch_manual"].astype(np.float32)
                    manual = np.array([float(reduce_in_format(per[i:i + b], "mean", fmt))
                                       for i in range(0, len(per), b)])
                    seed[side] = {
                        "pass_rate_1e-15": float(np.mean(np.abs(module - manual) < 1e-15)),
                        "bit_identical_rate": float(np.mean(module == manual)),
                    }
    summary = {"gpu_side": g_info, "cpu_side": c_info, "rows": rows, "seed_protocol": seed}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.md").write_text(_report(summary))
    cpu_file.unlink()
    return summary


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def _report(s: dict) -> str:
    gi, ci = s["gpu_side"], s["cpu_side"]
    lines = [
        "# torch on CUDA vs torch on the CPU, against the certified truth", "",
        f"GPU side: {gi.get('gpu', gi['device'])}, torch {gi['torch']} (CUDA {gi.get('cuda')}), "
        f"Python {gi['python']}.  CPU side: torch {ci['torch']}, CPU capability "
        f"{ci['cpu_capability']}, Python {ci['python']}.  Same inputs on both (SETS in "
        "precision_lab/cuda_check.py); ULP error is against the unrounded truth, so a "
        "correctly rounded result scores at most 0.5.  `make run` recomputes this report from "
        "the committed GPU results (gpu_h100.npz): `python -m precision_lab.studies.cuda inputs "
        "IN.npz && python -m precision_lab.studies.cuda analyze IN.npz "
        "results/cuda_vs_cpu/gpu_h100.npz results/cuda_vs_cpu`.", "",
    ]
    seed = s["seed_protocol"]
    if seed:
        lines += ["## The seed's protocol (1000 batches of torch.rand(10, 10), float32, mean)", "",
                  "| device | share passing abs(module - manual) < 1e-15 | share bit-identical |",
                  "|---|---|---|"]
        for side in ("cpu", "gpu"):
            lines.append(f"| {side} | {seed[side]['pass_rate_1e-15']:.1%} | "
                         f"{seed[side]['bit_identical_rate']:.1%} |")
        lines.append("")
    lines += ["## Per-sample losses", "",
              "| set | format | implementation | bit-identical CPU vs GPU | max ULP distance | "
              "CPU mean / max ULP error | GPU mean / max ULP error |", "|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(
            f"| {r['set']} | {r['format']} | {r['implementation']} | {r['identical_rate']:.1%} | "
            f"{r['ulp_distance_max']} | {_fmt(r['cpu']['ulp_error_mean'])} / "
            f"{_fmt(r['cpu']['ulp_error_max'])} | {_fmt(r['gpu']['ulp_error_mean'])} / "
            f"{_fmt(r['gpu']['ulp_error_max'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = ("usage: python -m precision_lab.studies.cuda inputs INPUTS.npz | compute INPUTS.npz "
             "GPU.npz [DEVICE] | analyze INPUTS.npz GPU.npz OUT_DIR")
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    cmd, args = argv[0], [Path(a) for a in argv[1:]]
    if cmd == "inputs" and len(args) == 1:
        make_inputs(args[0])
    elif cmd == "compute" and len(args) in (2, 3):
        compute(args[0], args[1], str(args[2]) if len(args) == 3 else "cuda")
    elif cmd == "analyze" and len(args) == 3:
        analyze(*args)
    else:
        print(usage, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
