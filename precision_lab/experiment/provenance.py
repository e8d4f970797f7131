"""What a measurement depends on besides its config: software, torch's kernels, the machine.

:func:`environment` is what decides the numbers (package versions, torch's CPU capability and
thread count) and goes into the committed manifest; :func:`platform_info` and :func:`git_info`
change from machine to machine and commit to commit and go into ``run.json``.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
from pathlib import Path
from typing import Any

from precision_lab import __version__

__all__ = ["environment", "platform_info", "git_info", "versions"]

_PACKAGES = ("numpy", "torch", "mpmath", "scipy", "ml_dtypes", "pyarrow", "matplotlib",
             "pydantic", "typer")


def versions() -> dict[str, "str | None"]:
    """Python's and every core package's version (None where a package is missing)."""
    out: dict[str, "str | None"] = {"python": platform.python_version(),
                                    "precision_lab": __version__}
    for mod in _PACKAGES:
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            out[mod] = None
    return out


def environment(device: str = "cpu") -> dict[str, Any]:
    """Versions, torch's CPU kernel set (``ATEN_CPU_CAPABILITY`` and what torch picked), its
    thread count, and the device the torch implementations run on."""
    import torch

    env: dict[str, Any] = {"versions": versions(), "torch": torch.__version__,
                           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
                           "torch_num_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["cuda_device_name"] = torch.cuda.get_device_name(device)
    return env


def reset_peak_rss() -> bool:
    """Reset this process's peak resident size to its current size (Linux: ``clear_refs``),
    so that :func:`peak_rss_mib` measures from here on, e.g. one experiment of several run by
    one command.  False where the system cannot (the peak then counts from process start)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process since start or the last :func:`reset_peak_rss`,
    in MiB (2**20 bytes), as ``{"process": ...}``.  Worker processes (``--workers``, a Dask
    cluster) are not included: they are alive when a run finishes, and the kernel accounts a
    child only once it has been waited for.  Linux reports ``ru_maxrss`` in KiB, macOS in
    bytes."""
    unit = 1.0 if platform.system() == "Darwin" else 2.0 ** 10
    return {"process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
                             / 2 ** 20, 1)}


def platform_info() -> dict[str, str]:
    return {"system": platform.system(), "release": platform.release(),
            "machine": platform.machine(), "processor": platform.processor(),
            "platform": platform.platform(),
            "python_implementation": platform.python_implementation(),
            "host": socket.gethostname()}


def git_info() -> "dict[str, Any] | None":
    """Commit of the package's checkout and whether its code or configs have uncommitted
    changes (results are not looked at); None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        scope = ["precision_lab", "experiments", "pyproject.toml"]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                *scope], cwd=root, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()),
                "dirty_scope": scope}
    except (OSError, subprocess.SubprocessError):
        return None
