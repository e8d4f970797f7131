"""The torch implementations: torch's own kernels on tensors of the format's dtype.

They take ``device=`` ("cpu" by default; "cuda" runs torch's GPU kernels on the same values).

Training semantics.  ``weight`` and probability targets are rounded once into the format
(torch wants them in the logits' dtype); ``label_smoothing``, ``ignore_index`` are passed to
torch as they are.  The LLM extensions are applied around torch's loss the way training code
does, in the tensor's dtype:

* softcap c (Gemma 2): ``y = torch.tanh(x / c) * c`` -- three ops, each rounded to the dtype;
* z-loss z (PaLM): ``z * torch.logsumexp(y, dim=-1).pow(2)`` per row, zeroed on ignored rows;
  "sum" adds its sum, "mean" its sum divided by torch's own denominator (the sum of the
  targets' weights over non-ignored rows, their count, or B for probabilities), computed in
  the dtype.

Gradients come from autograd: ``loss.sum().backward()`` for reduction "none" (an upstream
gradient of 1 per sample), ``loss.backward()`` for "sum" and "mean"; the gradient is the one
autograd delivers to the logits tensor, in its dtype.

Mixed precision (``fmt`` is the loss format; logits whose format embeds in fmt -- bfloat16
or float16 logits with a float32 loss -- keep their own dtype, wider ones are first rounded
once into fmt):

* ``torch_upcast``: ``F.cross_entropy(x.float(), ...)``: bfloat16/float16 logits upcast
  (exactly) to float32, everything in float32 (float32/float64 logits: plain torch); the
  loss is rounded once into fmt (nothing changes for fmt = float32).  Its gradient is what
  autograd gives the low-precision logits: the float32 gradient rounded to their dtype by
  the cast's backward.
* ``torch_autocast``: ``F.cross_entropy`` inside ``torch.autocast(device, dtype=...)`` (the
  logits' dtype if it is float16/bfloat16, else bfloat16).  Measured with torch 2.13 on CPU:
  cross_entropy is on autocast's float32 list, so low-precision logits are upcast and the
  loss is float32 (bit-identical to ``torch_upcast``), and float32 logits are left alone
  (bit-identical to ``torch``); the gradient comes back in the logits' dtype.  (log_softmax
  is on no list: under autocast it stays in bfloat16.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from precision_lab.implementations.base import (
    LossInputs,
    Recorder,
    from_torch,
    prepare,
    prepare_loss,
    to_torch,
)
from precision_lab.numerics.formats import Format, get_format, round_float64_array

__all__ = ["torch_ce", "torch_logsoftmax_nll", "torch_manual", "torch_upcast", "torch_autocast",
           "torch_ce_grad", "torch_logsoftmax_nll_grad", "torch_manual_grad",
           "torch_upcast_grad", "torch_autocast_grad"]


def torch_ce(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
             reduction: str = "none", device: str = "cpu", **keywords) -> np.ndarray:
    """torch.nn.functional.cross_entropy(x, t, reduction=reduction, ...); not step-wise.

    With ``reduction="mean"`` or ``"sum"`` torch reduces its own way (nn.CrossEntropyLoss's
    default is "mean") and a 0-d array of fmt's dtype is returned.  Loss keywords: module
    docstring.
    """
    return _run("ce", logits, targets, fmt, reduction, device, keywords, grad=False)


def torch_ce_grad(logits, targets, fmt, *, reduction: str = "none", device: str = "cpu",
                  **keywords) -> np.ndarray:
    """Autograd gradient of :func:`torch_ce`'s loss with respect to the logits, (B, V)."""
    return _run("ce", logits, targets, fmt, reduction, device, keywords, grad=True)


def torch_logsoftmax_nll(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                         trace: "list | None" = None, reduction: str = "none",
                         device: str = "cpu", **keywords) -> np.ndarray:
    """F.nll_loss(F.log_softmax(x, dim=-1), t, reduction=reduction).

    Steps: [cast] log_softmax lp (torch's kernel, one composite step, stored in the
    format), nll loss = -lp[t].  With ``reduction="mean"``/``"sum"`` nll_loss reduces its
    own way (on CPU it accumulates in the input dtype) and a 0-d array is returned.

    Loss keywords (not traced): weight and ignore_index go to nll_loss; label smoothing is
    composed as torch's own C++ composes it, (1 - eps) * nll + smooth * (eps / V) with
    smooth = -(lp * w).sum(-1) zeroed on ignored rows and reduced like the nll term;
    probability targets: -(lp * q' * w).sum(-1), q' = q * (1 - eps) + eps / V.
    """
    if keywords or np.ndim(targets) == 2 or _has_ignored(targets):
        if trace is not None:
            raise TypeError("trace records the plain loss only (no loss keywords, probability "
                            "targets or ignored rows)")
        return _run("nll", logits, targets, fmt, reduction, device, keywords, grad=False)
    import torch.nn.functional as F

    rec = Recorder(trace)
    x, t, f, xs = prepare(logits, targets, fmt, rec)
    X, T = to_torch(x, device), to_torch(t, device)
    lp = rec("lp", "log_softmax", (X,), (xs,), F.log_softmax(X, dim=-1))
    return from_torch(rec("loss", "nll", (lp, T), ("lp", "targets"),
                          F.nll_loss(lp, T, reduction=reduction)))


def torch_logsoftmax_nll_grad(logits, targets, fmt, *, reduction: str = "none",
                              device: str = "cpu", **keywords) -> np.ndarray:
    """Autograd gradient of :func:`torch_logsoftmax_nll`'s loss, (B, V)."""
    return _run("nll", logits, targets, fmt, reduction, device, keywords, grad=True)


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


def torch_manual_grad(logits, targets, fmt, *, reduction: str = "none",
                      device: str = "cpu") -> np.ndarray:
    """Autograd gradient of :func:`torch_manual`'s loss (summed, or its mean over B)."""
    import torch

    x, t, f, _ = prepare(logits, targets, fmt, Recorder(None))
    X = to_torch(x, device).clone().requires_grad_(True)
    T = to_torch(t, device)
    loss = -torch.log(torch.exp(X.gather(1, T[:, None])[:, 0]) / torch.exp(X).sum(dim=-1))
    (loss.mean() if reduction == "mean" else loss.sum()).backward()
    return from_torch(X.grad)


def torch_upcast(logits, targets, fmt, *, reduction: str = "none", device: str = "cpu",
                 **keywords) -> np.ndarray:
    """F.cross_entropy(x.float(), ...) on the logits in their own dtype; the float32 loss
    rounded once into fmt (module docstring)."""
    return _run("upcast", logits, targets, fmt, reduction, device, keywords, grad=False)


def torch_upcast_grad(logits, targets, fmt, *, reduction: str = "none", device: str = "cpu",
                      **keywords) -> np.ndarray:
    """The gradient autograd delivers to the low-precision logits of :func:`torch_upcast`
    (their dtype), converted into fmt (exactly when fmt is at least as wide)."""
    return _run("upcast", logits, targets, fmt, reduction, device, keywords, grad=True)


def torch_autocast(logits, targets, fmt, *, reduction: str = "none", device: str = "cpu",
                   **keywords) -> np.ndarray:
    """F.cross_entropy under torch.autocast on the logits in their own dtype; the result
    rounded once into fmt (module docstring)."""
    return _run("autocast", logits, targets, fmt, reduction, device, keywords, grad=False)


def torch_autocast_grad(logits, targets, fmt, *, reduction: str = "none", device: str = "cpu",
                        **keywords) -> np.ndarray:
    """The gradient autograd delivers to the logits of :func:`torch_autocast`, into fmt."""
    return _run("autocast", logits, targets, fmt, reduction, device, keywords, grad=True)


# ---------------------------------------------------------------------------------------

def _has_ignored(targets) -> bool:
    t = np.asarray(targets)
    return bool(t.ndim == 1 and np.issubdtype(t.dtype, np.integer) and (t == -100).any())


def _to_fmt(out: np.ndarray, f: Format) -> np.ndarray:
    """A torch result converted into fmt: unchanged if it is fmt's dtype, else rounded once."""
    if out.dtype == f.np_dtype:
        return out
    return round_float64_array(out.astype(np.float64), f)


def _run(kind: str, logits, targets, fmt, reduction: str, device: str, keywords: dict,
         grad: bool) -> np.ndarray:
    import torch

    f = get_format(fmt)
    mixed = kind in ("upcast", "autocast")
    if mixed and not _embeds(get_format(np.asarray(logits).dtype), f):
        mixed = False  # logits wider than the loss format: rounded once into it first
    P = prepare_loss(logits, targets, f, cast=not mixed, reduction=reduction, **keywords)
    X = to_torch(np.ascontiguousarray(P.x), device)
    if grad:
        X = X.clone().requires_grad_(True)
    if kind == "upcast":
        if X.dtype in (torch.float16, torch.bfloat16):
            loss = _loss("ce", X.float(), P, torch.float32, reduction, device)
        else:
            loss = _loss("ce", X, P, X.dtype, reduction, device)
    elif kind == "autocast":
        low = X.dtype if X.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        # weights and probabilities in the dtype autocast computes cross_entropy in:
        # float32 for low-precision logits, the logits' own dtype otherwise
        cmp = torch.float32 if X.dtype in (torch.float16, torch.bfloat16) else X.dtype
        with torch.autocast(device.split(":")[0], dtype=low):
            loss = _loss("ce", X, P, cmp, reduction, device)
    else:
        loss = _loss(kind, X, P, X.dtype, reduction, device)
    if not grad:
        return _to_fmt(from_torch(loss), f)
    (loss.sum() if reduction == "none" else loss).backward()
    return _to_fmt(from_torch(X.grad), f)


def _loss(kind: str, X, P: LossInputs, dtype, reduction: str, device: str):
    """The loss tensor (reduced per ``reduction``) of F.cross_entropy ("ce") or of
    log_softmax + nll_loss ("nll"), with softcap and z-loss around it."""
    import torch
    import torch.nn.functional as F

    spec = P.spec
    f_cmp = _fmt_of(dtype)
    W = None if spec.weight is None else to_torch(_cast(spec.weight, f_cmp), device)
    T = to_torch(_cast(P.t_exact, f_cmp) if spec.prob else P.t, device)
    Y = X
    if spec.softcap is not None:
        Y = torch.tanh(X / spec.softcap) * spec.softcap
    kw: dict[str, Any] = {"weight": W}
    if not spec.prob:
        kw["ignore_index"] = spec.ignore_index
    if kind == "ce":
        loss = F.cross_entropy(Y, T, reduction=reduction, label_smoothing=spec.label_smoothing,
                               **kw)
    else:
        loss = _nll_composed(Y, T, W, spec, reduction)
    if spec.z_loss:
        lse = torch.logsumexp(Y, dim=-1)
        zz = spec.z_loss * lse.pow(2)
        valid = to_torch(P.valid, device)
        zz = torch.where(valid, zz, torch.zeros_like(zz))
        if reduction == "none":
            loss = loss + zz
        elif reduction == "sum":
            loss = loss + zz.sum()
        else:
            loss = loss + zz.sum() / _denominator(T, W, valid, spec, zz.dtype)
    return loss


def _nll_composed(Y, T, W, spec, reduction: str):
    """log_softmax + nll_loss, with label smoothing / probability targets composed the way
    torch's C++ composes them."""
    import torch.nn.functional as F

    lp = F.log_softmax(Y, dim=-1)
    eps, V = spec.label_smoothing, spec.V
    if spec.prob:
        q = T * (1 - eps) + eps / V if eps > 0 else T
        prod = lp * q if W is None else lp * q * W
        per = -prod.sum(dim=-1)
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.sum() / T.shape[0]
    nll = F.nll_loss(lp, T, weight=W, ignore_index=spec.ignore_index, reduction=reduction)
    if eps <= 0:
        return nll
    smooth = -(lp if W is None else lp * W).sum(dim=-1)
    ignored = T == spec.ignore_index
    smooth = smooth.masked_fill(ignored, 0.0)
    if reduction == "sum":
        smooth = smooth.sum()
    elif reduction == "mean":
        smooth = smooth.sum() / _denominator(T, W, ~ignored, spec, smooth.dtype)
    return (1 - eps) * nll + smooth * (eps / V)


def _denominator(T, W, valid, spec, dtype):
    """torch's mean denominator in the dtype: sum of w_t over valid rows, their count, or B."""
    import torch

    if spec.prob:
        return torch.tensor(float(T.shape[0]), dtype=dtype, device=T.device)
    if W is None:
        return valid.sum().to(dtype)
    return W[T.masked_fill(~valid, 0)].masked_fill(~valid, 0).sum()


def _embeds(a: Format, b: Format) -> bool:
    """Every value of format a is a value of format b (float16 and bfloat16 in float32,
    everything in float64)."""
    return (a.precision <= b.precision and a.emax <= b.emax
            and a.emin - a.precision >= b.emin - b.precision)


def _fmt_of(dtype) -> "Format | None":
    import torch

    names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
             torch.float64: "float64"}
    return get_format(names[dtype]) if dtype in names else None


def _cast(a: np.ndarray, f: "Format | None") -> np.ndarray:
    """Exact float64 values rounded once into f (the compute dtype)."""
    return a if f is None else round_float64_array(np.asarray(a, dtype=np.float64), f)
