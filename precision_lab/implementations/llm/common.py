"""Shared pieces of the LLM kernels: inputs, working format, the loss assembled from (m, d),
and the numpy <-> torch bridges."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from precision_lab.implementations.base import Recorder, prepare
from precision_lab.numerics.formats import FORMATS, Format, get_format, round_float64_array
from precision_lab.numerics.sums import pairwise_sum

_LOG2_E = 1.4426950408889634  # the float64 constant Liger passes as a float32 constexpr


# ---------------------------------------------------------------------------------------
# shared pieces: inputs, working format, the loss assembled from (m, d)

def _work(f: Format, acc: str) -> Format:
    """The working format: the format itself, or a wider one (never a narrower one)."""
    if acc == "format":
        return f
    w = FORMATS[acc]
    return w if w.precision > f.precision else f


def _const(v: float, w: Format) -> np.ndarray:
    """The real number v (given as float64) rounded once into w, as a 0-d array."""
    return round_float64_array(np.asarray(v, dtype=np.float64), w)


def _to_format(a: np.ndarray, f: Format) -> np.ndarray:
    """Round the working-format values once into f (exact widening first)."""
    a = np.asarray(a)
    if a.dtype == f.np_dtype:
        return a
    return round_float64_array(a.astype(np.float64), f)


@dataclass
class _Rows:
    """Validated inputs in the working format."""

    y: np.ndarray        # (B, V) logits in W after softcap (a view of the input when possible)
    tanh: "np.ndarray | None"  # tanh(x / c) where softcap is set (for gradients)
    t: np.ndarray        # (B,) targets, ignored rows mapped to 0
    valid: np.ndarray    # (B,) bool
    yt: np.ndarray       # (B,) y at the target
    f: Format
    w: Format
    V: int


def _validate_keywords(ignore_index: int, label_smoothing: float, z_loss: float,
                       softcap: "float | None") -> None:
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
    if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if not (isinstance(z_loss, (int, float)) and math.isfinite(z_loss) and z_loss >= 0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and
                                    math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")


def _inputs(logits, targets, fmt, acc: str, ignore_index: int = -100,
            softcap: "float | None" = None) -> _Rows:
    """Validate; round the logits once into the format (if of another dtype), widen them
    exactly into the working format, soft-cap them there."""
    x, t_raw, f = _logits_targets(logits, targets, fmt, ignore_index)
    w = _work(f, acc)
    valid = t_raw != ignore_index
    t = np.where(valid, t_raw, 0)
    y = x if x.dtype == w.np_dtype else x.astype(w.np_dtype)  # exact widening
    th = None
    if softcap is not None:
        c = _const(softcap, w)
        with np.errstate(all="ignore"):
            th = np.tanh(y / c)
            y = c * th
    yt = np.take_along_axis(y, t[:, None], axis=-1)[:, 0]
    return _Rows(y, th, t, valid, yt, f, w, x.shape[1])


def _logits_targets(logits, targets, fmt, ignore_index: int):
    """(x in the format, int64 targets, format); targets may equal ignore_index."""
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be 2-D (B, V) with V >= 1, got shape {logits.shape}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {targets.shape}")
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
    t = targets.astype(np.int64)
    V = logits.shape[1]
    bad = np.flatnonzero((t != ignore_index) & ((t < 0) | (t >= V)))
    if bad.size:
        raise ValueError(f"row {int(bad[0])}: target {int(t[bad[0]])} is out of range "
                         f"[0, {V}) and not ignore_index ({ignore_index})")
    safe = np.where(t == ignore_index, 0, t)
    x, _, f, _ = prepare(logits, safe, fmt, Recorder(None))
    return x, t, f


def _assemble(R: _Rows, lse: np.ndarray, label_smoothing: float, z_loss: float,
              xsum: "np.ndarray | None" = None) -> np.ndarray:
    """Liger's loss from lse (all in W), rounded once into the format; ignored rows 0.

    ``xsum``: sum_j (-eps/V) y_j already accumulated the algorithm's way (else one
    pairwise sum over the row)."""
    w = R.w
    with np.errstate(all="ignore"):
        loss = lse - R.yt
        if label_smoothing > 0:
            ls = _const(label_smoothing, w)
            if xsum is None:
                xsum = pairwise_sum(_const(-label_smoothing / R.V, w) * R.y)
            smooth = xsum + ls * lse
            loss = loss * (_const(1.0, w) - ls) + smooth
        if z_loss > 0:
            loss = loss + (_const(z_loss, w) * lse) * lse
        loss = np.where(R.valid, loss, w.np_dtype.type(0))
    return _to_format(loss, R.f)


def _exp(a: np.ndarray, kind: str, w: Format) -> np.ndarray:
    """exp(a) in w: "exp" one correctly rounded-ish exp; "exp2" exp2(a * log2 e), the
    product rounded first (Liger's hardware-exp2 form)."""
    if kind == "exp2":
        return np.exp2(a * _const(_LOG2_E, w))
    return np.exp(a)


# ---------------------------------------------------------------------------------------
# numpy <-> torch

def as_tensor(a: np.ndarray, device: str = "cpu"):  # -> torch.Tensor
    """A torch tensor with ``a``'s values AND strides (a transposed or strided view stays
    one; ml_dtypes.bfloat16 becomes torch.bfloat16).  On another device the same strides
    are allocated there (``torch.empty_strided``) and the values copied in."""
    import torch

    a = np.asarray(a)
    if a.dtype == get_format("bfloat16").np_dtype:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    if device == "cpu":
        return t
    out = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)
    out.copy_(t)
    return out


def _from_tensor(t, f: Format) -> np.ndarray:
    """Round a torch tensor's values once into f (exact widening to float64 first)."""
    a = t.detach().cpu().double().numpy()
    return np.asarray(round_float64_array(a, f))  # a 0-d result stays an array
