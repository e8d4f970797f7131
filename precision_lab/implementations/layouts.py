"""Memory layouts of the logits that break kernels: transposed and strided views, padded
vocabularies.

:func:`present` turns a (B, V) array of rounded logits into the array a kernel receives:

* ``layout`` "contiguous" (row-major, the default), "transposed" (the values stored
  column-major: a (V', B) row-major buffer seen through ``.T``, strides (1, B) elements) or
  "strided" (every other column of a (B, 2 V') buffer: strides (2 V', 2) elements);
* ``pad_vocab_to`` n: the vocabulary padded up to the next multiple of n (Megatron pads to
  a multiple of 128 times the tensor-parallel size), with ``pad_value`` "-inf" (the kernel
  sees V' columns, the extra ones at -inf: they add exp(-inf) = 0 to every sum, so the loss
  is unchanged -- unless a kernel soft-caps them to -c and gives them probability), a finite
  number (the kernel sees pad columns of that value: a loss of the padded problem, a wrong
  one for the real vocabulary) or "masked" (the kernel sees only the V real columns, a view
  into the padded buffer whose row stride is V'; the pad columns hold NaN, so a kernel that
  reads past its row shows it).

The values are never changed: ``present(x, ...)[:, :V]`` equals ``x`` element for element,
and the truth is always computed on ``x`` itself.  Numpy implementations compute the same
values on any layout; torch ones receive it through :func:`~.llm.as_tensor` or
``implementations.base.to_torch``, both of which keep the strides.  Experiment configs reach
this through their ``layout``, ``pad_vocab_to`` and ``pad_value`` keys
(:class:`precision_lab.experiment.measure.Presentation`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LAYOUTS", "present", "padded_width"]

LAYOUTS = ("contiguous", "transposed", "strided")


def padded_width(V: int, pad_vocab_to: "int | None") -> int:
    """V rounded up to a multiple of ``pad_vocab_to`` (V itself for None)."""
    if pad_vocab_to is None:
        return V
    if not isinstance(pad_vocab_to, int) or isinstance(pad_vocab_to, bool) or pad_vocab_to < 1:
        raise ValueError(f"pad_vocab_to must be a positive integer or None, got {pad_vocab_to!r}")
    return -(-V // pad_vocab_to) * pad_vocab_to


def present(x: np.ndarray, layout: str = "contiguous", pad_vocab_to: "int | None" = None,
            pad_value: "str | float" = "-inf") -> np.ndarray:
    """The logits as a kernel receives them (see the module docstring).

    Args:
        x: (B, V) logits of any float dtype (kept).
        layout: "contiguous", "transposed" or "strided".
        pad_vocab_to: pad the vocabulary to a multiple of this, or None.
        pad_value: "-inf", "masked", or a finite number.

    Returns:
        A numpy view of shape (B, V') (V for "masked" or no padding), x's dtype, with the
        layout's strides.

    Raises:
        ValueError: an unknown layout or pad value (naming what is allowed), x not 2-D.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"logits must be 2-D (B, V), got shape {x.shape}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    B, V = x.shape
    Vp = padded_width(V, pad_vocab_to)
    masked = pad_value == "masked"
    if isinstance(pad_value, str):
        if pad_value not in ("-inf", "masked"):
            raise ValueError(f"pad_value must be '-inf', 'masked' or a finite number, got "
                             f"{pad_value!r}")
        fill = math.nan if masked else -math.inf
    else:
        fill = float(pad_value)
        if not math.isfinite(fill):
            raise ValueError(f"pad_value must be '-inf', 'masked' or a finite number, got "
                             f"{pad_value!r}")
    if layout == "transposed":
        buf = np.empty((Vp, B), dtype=x.dtype)
        view = buf.T
    elif layout == "strided":
        buf = np.empty((B, 2 * Vp), dtype=x.dtype)
        buf[:, 1::2] = np.nan
        view = buf[:, ::2]
    else:
        buf = np.empty((B, Vp), dtype=x.dtype)
        view = buf
    view[:, :V] = x
    if Vp > V:
        view[:, V:] = fill
    return view[:, :V] if masked else view
