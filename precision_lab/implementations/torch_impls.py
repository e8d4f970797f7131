"""The torch implementations: torch's own kernels on tensors of the format's dtype.

They take ``device=`` ("cpu" by default; "cuda" runs torch's GPU kernels on the same values).
"""

from __future__ import annotations

import numpy as np

from precision_lab.implementations.base import Recorder, from_torch, prepare, to_torch
from precision_lab.numerics.formats import Format

__all__ = ["torch_ce", "torch_logsoftmax_nll", "torch_manual"]


def torch_ce(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
             reduction: str = "none", device: str = "cpu") -> np.ndarray:
    """torch.nn.functional.cross_entropy(x, t, reduction=reduction); not step-wise.

    With ``reduction="mean"`` or ``"sum"`` torch reduces its own way (nn.CrossEntropyLoss's
    default is "mean") and a 0-d array of fmt's dtype is returned.
    """
    import torch.nn.functional as F

    x, t, f, _ = prepare(logits, targets, fmt, Recorder(None))
    out = F.cross_entropy(to_torch(x, device), to_torch(t, device), reduction=reduction)
    return from_torch(out)


def torch_logsoftmax_nll(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                         trace: "list | None" = None, reduction: str = "none",
                         device: str = "cpu") -> np.ndarray:
    """F.nll_loss(F.log_softmax(x, dim=-1), t, reduction=reduction).

    Steps: [cast] log_softmax lp (torch's kernel, one composite step, stored in the
    format), nll loss = -lp[t].  With ``reduction="mean"``/``"sum"`` nll_loss reduces its
    own way (on CPU it accumulates in the input dtype) and a 0-d array is returned.
    """
    import torch.nn.functional as F

    rec = Recorder(trace)
    x, t, f, xs = prepare(logits, targets, fmt, rec)
    X, T = to_torch(x, device), to_torch(t, device)
    lp = rec("lp", "log_softmax", (X,), (xs,), F.log_softmax(X, dim=-1))
    return from_torch(rec("loss", "nll", (lp, T), ("lp", "targets"),
                          F.nll_loss(lp, T, reduction=reduction)))


def torch_manual(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                 trace: "list | None" = None, device: str = "cpu") -> np.ndarray:
    """The seed's -torch.log(torch.exp(x[t]) / torch.exp(x).sum()), vectorized over rows.

    Steps: [cast] gather x_t, exp e_t, exp e (row), sum s (torch's own reduction: float32
    accumulation for float16/bfloat16), div p = e_t / s, log l, neg loss.
    """
    import torch

    rec = Recorder(trace)
    x, t, f, xs = prepare(logits, targets, fmt, rec)
    X, T = to_torch(x, device), to_torch(t, device)
    xt = rec("x_t", "gather", (X, T), (xs, "targets"), X.gather(1, T[:, None])[:, 0])
    et = rec("e_t", "exp", (xt,), ("x_t",), torch.exp(xt))
    e = rec("e", "exp", (X,), (xs,), torch.exp(X))
    s = rec("s", "sum", (e,), ("e",), e.sum(dim=-1))
    p = rec("p", "div", (et, s), ("e_t", "s"), et / s)
    lg = rec("l", "log", (p,), ("p",), torch.log(p))
    return from_torch(rec("loss", "neg", (lg,), ("l",), -lg))

