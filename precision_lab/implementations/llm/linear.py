"""Fused linear cross-entropy (hidden states and a classifier) and its unfused baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from precision_lab.implementations.base import Capabilities
from precision_lab.implementations.llm.common import (
    _assemble,
    _const,
    _exp,
    _from_tensor,
    _Rows,
    _validate_keywords,
    _work,
    as_tensor,
)
from precision_lab.numerics.formats import Format, get_format
from precision_lab.numerics.sums import pairwise_sum

# ---------------------------------------------------------------------------------------
# fused linear cross-entropy

@dataclass(frozen=True)
class LinearImplementation:
    """A cross-entropy of hidden states and a classifier: ``impl(hidden, weight, targets,
    fmt)`` -> (B,) losses of fmt's dtype, the logits hidden @ weight.T never stored whole.

    Attributes:
        key: canonical key.
        function: ``(hidden (B, K), weight (V, K), targets (B,), fmt, **keywords)``.
        description: one line.
        capabilities: as for logits implementations (devices).
    """

    key: str
    function: Callable[..., np.ndarray]
    description: str
    capabilities: Capabilities = Capabilities()

    def __call__(self, hidden: np.ndarray, weight: np.ndarray, targets: np.ndarray,
                 fmt: "str | Format", *, device: str = "cpu", **keywords) -> np.ndarray:
        f = get_format(fmt)
        if device != "cpu":
            if device.split(":")[0] not in self.capabilities.devices:
                raise TypeError(f"implementation {self.key!r} runs on "
                                f"{', '.join(self.capabilities.devices)}, not {device!r}")
            keywords["device"] = device
        out = self.function(hidden, weight, targets, f, **keywords)
        if not isinstance(out, np.ndarray) or out.dtype != f.np_dtype or \
                out.shape != (np.shape(hidden)[0],):
            raise TypeError(f"implementation {self.key!r} returned a wrong array")
        return out


def _linear_inputs(hidden, weight, fmt):
    from precision_lab.numerics.formats import to_format

    f = get_format(fmt)
    h = np.asarray(hidden)
    wt = np.asarray(weight)
    if h.ndim != 2 or wt.ndim != 2 or h.shape[1] != wt.shape[1]:
        raise ValueError(f"hidden must be (B, K) and weight (V, K) with the same K, got "
                         f"{h.shape} and {wt.shape}")
    if h.dtype != f.np_dtype:
        h = to_format(h, f)
    if wt.dtype != f.np_dtype:
        wt = to_format(wt, f)
    return h, wt, f


def fused_linear(hidden: np.ndarray, weight: np.ndarray, targets: np.ndarray,
                 fmt: "str | Format", *, chunk: int = 32768, logits: str = "format",
                 acc: str = "float32", exp: str = "exp2", device: str = "cpu",
                 ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: "float | None" = None) -> np.ndarray:
    """Fused linear cross-entropy: for each block of ``chunk`` vocabulary rows of ``weight``
    the logits Z = hidden @ W_block.T by torch's matmul, then Liger's running max and sum
    over the blocks (``chunked``'s update, in ``acc``).

    ``logits``: "format" -- the matmul in the format (torch accumulates in float32 inside
    and rounds Z to the format, as Liger's ``_input_chunk @ weight.t()``); "float32" -- the
    float32 product of the upcast operands kept unrounded (Cut Cross-Entropy's float32
    accumulator).  The target logit is read from its block.  Defaults reproduce Liger's
    numerics (its token chunking does not change a row's arithmetic).  (B,) fmt's dtype.
    """
    import torch

    _validate_keywords(ignore_index, label_smoothing, z_loss, softcap)
    h, wt, f = _linear_inputs(hidden, weight, fmt)
    B, K = h.shape
    V = wt.shape[0]
    t_raw = np.asarray(targets).astype(np.int64)
    if t_raw.shape != (B,):
        raise ValueError(f"targets must have shape ({B},), got {t_raw.shape}")
    valid = t_raw != ignore_index
    if np.any(valid & ((t_raw < 0) | (t_raw >= V))):
        raise ValueError(f"targets must lie in [0, {V}) or equal ignore_index")
    t = np.where(valid, t_raw, 0)
    w = _work(f, acc)
    H = as_tensor(h, device)
    Wt = as_tensor(wt, device)
    if logits == "float32":
        H = H.float()
    m = np.full(B, -np.inf, dtype=w.np_dtype)
    d = np.zeros(B, dtype=w.np_dtype)
    yt = np.zeros(B, dtype=w.np_dtype)
    xsum = np.zeros(B, dtype=w.np_dtype) if label_smoothing > 0 else None
    eps_x = _const(-label_smoothing / V, w)
    c = _const(softcap, w) if softcap is not None else None
    with torch.no_grad(), np.errstate(all="ignore"):
        for a in range(0, V, chunk):
            Wb = Wt[a:a + chunk]
            Z = H @ (Wb.float() if logits == "float32" else Wb).T
            z = Z.cpu().numpy() if logits == "float32" else _from_tensor(Z, f)
            X = z.astype(w.np_dtype) if z.dtype != w.np_dtype else z
            if c is not None:
                X = c * np.tanh(X / c)
            inside = (t >= a) & (t < a + X.shape[1])
            if inside.any():
                rows = np.flatnonzero(inside)
                yt[rows] = X[rows, t[rows] - a]
            m_new = np.maximum(m, X.max(axis=1))
            if xsum is not None:
                xsum = xsum + pairwise_sum(eps_x * X)
            d = d * _exp(m - m_new, exp, w) + pairwise_sum(_exp(X - m_new[:, None], exp, w))
            m = m_new
        lse = m + np.log(d)
    R = _Rows(np.zeros((B, 0), w.np_dtype), None, t, valid, yt, f, w, V)
    return _assemble(R, lse, label_smoothing, z_loss, xsum)


def linear_torch(hidden: np.ndarray, weight: np.ndarray, targets: np.ndarray,
                 fmt: "str | Format", *, device: str = "cpu", ignore_index: int = -100,
                 label_smoothing: float = 0.0) -> np.ndarray:
    """The unfused baseline: logits = hidden @ weight.T by torch's matmul in the format
    (stored whole), then F.cross_entropy(reduction="none").  (B,) fmt's dtype."""
    import torch
    import torch.nn.functional as F

    h, wt, f = _linear_inputs(hidden, weight, fmt)
    T = torch.from_numpy(np.asarray(targets).astype(np.int64)).to(device)
    with torch.no_grad():
        Z = as_tensor(h, device) @ as_tensor(wt, device).T
        out = F.cross_entropy(Z, T, reduction="none", ignore_index=ignore_index,
                              label_smoothing=label_smoothing)
    return _from_tensor(out, f)
