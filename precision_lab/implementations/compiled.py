"""torch.compile (inductor) of F.cross_entropy: the reduction code inductor generates.

``torch_compile`` compiles ``F.cross_entropy(x, t, reduction=...)`` with
``torch.compile(backend="inductor", dynamic=False)``; inductor fuses the max, the exp-sum
and the gather into its own generated loops (C++/OpenMP on CPU, Triton on CUDA), so its
accumulation order and precision are its own, not ATen's kernel's.  One compiled function is
kept per (reduction, loss keywords) and torch's guards specialise it per dtype, shape,
strides and device: the first call of each costs a compilation (measured on this 2-core
machine, torch 2.13.0 CPU: about 40 s for the very first one in a process -- inductor's own
start-up -- and 2.5-3.5 s for each further dtype or shape; inductor's on-disk cache makes
later processes faster).  A logits layout (transposed or strided view) reaches the kernel as
it is.  ``torch_compile_grad`` compiles forward and backward (AOTAutograd) and returns the
gradient with respect to the logits.
"""

from __future__ import annotations

import functools

import numpy as np

from precision_lab.implementations.base import Capabilities, Implementation
from precision_lab.implementations.llm import _from_tensor, _logits_targets, as_tensor
from precision_lab.numerics.formats import Format

__all__ = ["torch_compile", "torch_compile_grad", "COMPILED_IMPLEMENTATIONS"]


@functools.lru_cache(maxsize=None)
def _compiled(reduction: str, ignore_index: int, label_smoothing: float, dtype: str,
              shape: tuple, strides: tuple, device: str, grad: bool, has_weight: bool):
    """One compiled function per key.  Dynamo caches compilations per code object and falls
    back to eager code, silently, after ``recompile_limit`` (8) of them; a fresh code
    object per key gives every key its own cache, so a measurement is never eager code."""
    import types

    import torch
    import torch.nn.functional as F

    def ce(x, t, weight):
        return F.cross_entropy(x, t, weight=weight, reduction=reduction,
                               ignore_index=ignore_index, label_smoothing=label_smoothing)

    n = _compiled.cache_info().currsize
    fresh = types.FunctionType(ce.__code__.replace(co_name=f"ce_{n}"), ce.__globals__,
                               f"ce_{n}", None, ce.__closure__)
    return torch.compile(fresh, backend="inductor", dynamic=False)


def _call(logits, targets, fmt, reduction, device, weight, ignore_index, label_smoothing,
          grad: bool):
    import torch

    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', not {reduction!r}")
    x, t, f = _logits_targets(logits, targets, fmt, ignore_index)
    X = as_tensor(x, device)
    T = torch.from_numpy(t).to(device)
    Wt = None
    if weight is not None:
        Wt = as_tensor(np.ascontiguousarray(_weight_in(weight, f, x.shape[1])), device)
    fn = _compiled(reduction, int(ignore_index), float(label_smoothing), str(X.dtype),
                   tuple(X.shape), tuple(X.stride()), str(X.device), grad, Wt is not None)
    if not grad:
        with torch.no_grad():
            return _from_tensor(fn(X, T, Wt), f)
    X = X.detach().requires_grad_(True)
    out = fn(X, T, Wt)
    (out.sum() if reduction == "none" else out).backward()
    return _from_tensor(X.grad, f)


def _weight_in(weight, f: Format, V: int) -> np.ndarray:
    from precision_lab.numerics.formats import to_format

    w = np.asarray(weight)
    if w.shape != (V,):
        raise ValueError(f"weight must have shape ({V},), got {w.shape}")
    return to_format(w, f)


def torch_compile(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                  reduction: str = "none", device: str = "cpu", weight=None,
                  ignore_index: int = -100, label_smoothing: float = 0.0) -> np.ndarray:
    """torch.compile(F.cross_entropy) on the logits' tensor (its layout kept): (B,) losses
    for reduction "none", a 0-d array for "mean"/"sum"; fmt's dtype."""
    return _call(logits, targets, fmt, reduction, device, weight, ignore_index,
                 label_smoothing, grad=False)


def torch_compile_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                       reduction: str = "none", device: str = "cpu", weight=None,
                       ignore_index: int = -100, label_smoothing: float = 0.0) -> np.ndarray:
    """The gradient of the compiled loss with respect to the logits (the compiled backward):
    "none" differentiates the sum of the per-row losses.  (B, V), fmt's dtype."""
    return _call(logits, targets, fmt, reduction, device, weight, ignore_index,
                 label_smoothing, grad=True)


COMPILED_IMPLEMENTATIONS: dict[str, Implementation] = {
    "torch_compile": Implementation(
        "torch_compile", torch_compile,
        "torch.compile (inductor) of F.cross_entropy; compiled once per dtype and shape",
        Capabilities(own_reduction=True, devices=("cpu", "cuda"), gradient=True,
                     keywords=frozenset({"weight", "ignore_index", "label_smoothing"})),
        torch_compile_grad),
}
