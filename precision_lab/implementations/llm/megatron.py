"""Megatron-LM's vocab-parallel cross-entropy and its gradient, simulated with torch ops."""

from __future__ import annotations

import numpy as np

from precision_lab.implementations.llm.common import (
    _const,
    _from_tensor,
    _logits_targets,
    _validate_keywords,
    _work,
    as_tensor,
)
from precision_lab.numerics.formats import Format

# ---------------------------------------------------------------------------------------
# vocab_parallel (Megatron-LM), torch ops

def _shards(V: int, degree: int) -> list[tuple[int, int]]:
    """Contiguous column ranges of ``degree`` shards: V / degree each when it divides (as
    Megatron, which pads the vocabulary so that it does), else sizes differing by one (the
    first V mod degree shards one longer); empty shards (degree > V) are left out."""
    base, extra = divmod(V, degree)
    out, a = [], 0
    for r in range(degree):
        b = a + base + (1 if r < extra else 0)
        if b > a:
            out.append((a, b))
        a = b
    return out


def _vp_forward(logits, targets, fmt, degree, acc, device, ignore_index, softcap):
    import torch

    x, t_raw, f = _logits_targets(logits, targets, fmt, ignore_index)
    w = _work(f, acc)
    wdt = getattr(torch, w.torch_dtype_name)
    B, V = x.shape
    valid = t_raw != ignore_index
    X = as_tensor(x, device)
    T = torch.from_numpy(np.where(valid, t_raw, 0)).to(device)
    parts = []
    for a, b in _shards(V, degree):
        xr = X[:, a:b].to(wdt)  # Megatron: vocab_parallel_logits.float()
        if softcap is not None:
            c = float(_const(softcap, w))
            xr = c * torch.tanh(xr / c)
        parts.append(xr)
    logits_max = parts[0].max(dim=-1)[0]
    for xr in parts[1:]:  # all-reduce MAX: exact
        logits_max = torch.maximum(logits_max, xr.max(dim=-1)[0])
    predicted = torch.zeros(B, dtype=wdt, device=X.device)
    sum_exp = torch.zeros(B, dtype=wdt, device=X.device)
    exps = []
    rows = torch.arange(B, device=X.device)
    for r, (a, b) in enumerate(_shards(V, degree)):
        xr = parts[r] - logits_max[:, None]
        outside = (T < a) | (T >= b)
        mt = torch.where(outside, torch.zeros_like(T), T - a)
        pr = xr[rows, mt].clone()
        pr[outside] = 0.0
        er = torch.exp(xr)
        predicted = predicted + pr  # all-reduce SUM in rank order (one nonzero term: exact)
        sum_exp = sum_exp + er.sum(dim=-1)  # all-reduce SUM in rank order
        exps.append(er)
    return x, f, w, wdt, valid, T, parts, logits_max, predicted, sum_exp, exps


def vocab_parallel(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                   degree: int = 8, acc: str = "float32", device: str = "cpu",
                   ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                   softcap: "float | None" = None) -> np.ndarray:
    """Megatron-LM's vocab-parallel cross-entropy simulated over ``degree`` shards.

    loss = log(sum_exp) - (x_t - max), in W (float32 by default: Megatron upcasts), rounded
    once into the format.  Label smoothing eps in Megatron's published arithmetic: the
    normalised softmax exp / sum_exp per shard, log_probs = log(softmax) (an underflowed
    probability gives log 0 = -inf and an infinite loss, as in Megatron), their mean over
    the whole vocabulary (the shards' sums all-reduced, / V), loss = (1 - s) loss - s mean
    with s = eps: torch's definition (Megatron scales its argument by V / (V - 1) to mean
    the same s; and its published code averaged over the local shard only, a semantic bug
    not reproduced).  z_loss: + (z lse) lse with lse = max + log(sum_exp); softcap on the
    upcast logits; ignored rows 0.  (B,) fmt's dtype.
    """
    import torch

    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    with torch.no_grad():
        (x, f, w, wdt, valid, T, parts, mx, predicted, sum_exp,
         exps) = _vp_forward(logits, targets, fmt, degree, acc, device, ignore_index, softcap)
        loss = torch.log(sum_exp) - predicted
        if label_smoothing > 0:
            s = float(_const(label_smoothing, w))
            tot = torch.zeros_like(sum_exp)
            for er in exps:
                tot = tot + torch.log(er / sum_exp[:, None]).sum(dim=-1)
            mean_log_probs = tot / float(x.shape[1])
            loss = (1.0 - s) * loss - s * mean_log_probs
        if z_loss > 0:
            lse = mx + torch.log(sum_exp)
            loss = loss + (float(_const(z_loss, w)) * lse) * lse
        loss = torch.where(torch.from_numpy(valid).to(loss.device), loss,
                           torch.zeros_like(loss))
    return _from_tensor(loss, f)


def vocab_parallel_grad(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                        reduction: str = "none", degree: int = 8, acc: str = "float32",
                        device: str = "cpu", ignore_index: int = -100,
                        label_smoothing: float = 0.0, z_loss: float = 0.0,
                        softcap: "float | None" = None) -> np.ndarray:
    """Megatron's backward: softmax = exp / sum_exp (stored by the forward), minus
    (1 - s) at the target, minus s / V everywhere with label smoothing, times
    (1 + (2 z) lse) with z-loss (before the subtractions), "mean" / N, softcap
    (1 - tanh^2); in W, rounded once into the format (autograd casts the float32 gradient
    to the logits' dtype).  (B, V) fmt's dtype."""
    import torch

    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")
    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    with torch.no_grad():
        (x, f, w, wdt, valid, T, parts, mx, predicted, sum_exp,
         exps) = _vp_forward(logits, targets, fmt, degree, acc, device, ignore_index, softcap)
        B, V = x.shape
        soft = torch.cat([er / sum_exp[:, None] for er in exps], dim=1)
        if z_loss > 0:
            lse = mx + torch.log(sum_exp)
            soft = soft + (float(_const(2 * z_loss, w)) * lse)[:, None] * soft
        s = float(_const(label_smoothing, w))
        rows = torch.arange(B, device=soft.device)
        soft[rows, T] -= float(_const(1.0 - label_smoothing, w))
        if label_smoothing > 0:
            soft -= float(_const(label_smoothing / V, w))
            del s
        if reduction == "mean":
            soft = soft / float(valid.sum())
        if softcap is not None:
            xw = as_tensor(x, device).to(wdt)
            th = torch.tanh(xw / float(_const(softcap, w)))
            soft = soft * (1.0 - th * th)
        soft[torch.from_numpy(~valid).to(soft.device)] = 0.0
    return _from_tensor(soft, f)
