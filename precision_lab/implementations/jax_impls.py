"""JAX/XLA on CPU: ``jax.nn.log_softmax`` + gather, and optax's integer-label loss.

Both need the optional extra ``precision-lab[jax]`` (jax, jaxlib, optax); jax is imported on
first use only, and a missing extra raises :class:`MissingExtraError` with one line saying
what to install -- never an ImportError traceback from deep inside.

The logits go to XLA in their own dtype (bfloat16 through ml_dtypes, which jax shares);
XLA's CPU backend decides how it evaluates 16-bit arithmetic (it may widen to float32
internally and round the results: that is part of what is measured).  float64 runs inside
``jax.enable_x64(True)`` (jax otherwise silently computes float64 input in float32).  Each
function is ``jax.jit``-compiled once; jit caches one executable per dtype and shape.

Measured with jax 0.10.2, jaxlib 0.10.2, optax 0.2.8 (CPU).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from precision_lab.implementations.base import Capabilities, Implementation, Recorder, prepare
from precision_lab.numerics.formats import Format

__all__ = ["MissingExtraError", "jax_log_softmax", "optax_ce", "JAX_IMPLEMENTATIONS",
           "require_jax"]


class MissingExtraError(RuntimeError):
    """An implementation needs an optional dependency group that is not installed; the
    message names the implementation and the pip command."""


def require_jax(key: str) -> tuple[Any, Any]:
    """(jax, jax.numpy), or MissingExtraError naming ``key`` and the extra to install."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        raise MissingExtraError(
            f"implementation {key!r} needs the optional extra 'jax' (jax, optax), which is not "
            f"installed ({exc.name or exc}): pip install 'precision-lab[jax]'") from None
    return jax, jnp


@functools.lru_cache(maxsize=None)
def _jitted(kind: str):
    jax, jnp = require_jax(kind)
    if kind == "jax":
        def f(x, t):
            lp = jax.nn.log_softmax(x, axis=-1)
            return -jnp.take_along_axis(lp, t[:, None], axis=-1)[:, 0]
    else:
        try:
            import optax
        except ImportError:
            raise MissingExtraError(
                "implementation 'optax' needs the optional extra 'jax' (jax, optax); optax is "
                "not installed: pip install 'precision-lab[jax]'") from None

        def f(x, t):
            return optax.softmax_cross_entropy_with_integer_labels(x, t)
    return jax.jit(f)


def _run(kind: str, logits: np.ndarray, targets: np.ndarray, fmt: "str | Format") -> np.ndarray:
    jax, _ = require_jax(kind)
    x, t, f, _ = prepare(logits, targets, fmt, Recorder(None))
    fn = _jitted(kind)
    x = np.ascontiguousarray(x)
    if f.name == "float64":
        with jax.enable_x64(True):
            out = np.asarray(fn(x, t))
    else:
        out = np.asarray(fn(x, t.astype(np.int32)))
    if out.dtype != f.np_dtype:
        raise TypeError(f"{kind} returned {out.dtype} for {f.name} logits")
    return out


def jax_log_softmax(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """-jax.nn.log_softmax(x)[t] (jit, CPU).  (B,) fmt's dtype."""
    return _run("jax", logits, targets, fmt)


def optax_ce(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format") -> np.ndarray:
    """optax.softmax_cross_entropy_with_integer_labels(x, t) (jit, CPU).  (B,) fmt's dtype."""
    return _run("optax", logits, targets, fmt)


_CAPS = Capabilities(extra="jax")

JAX_IMPLEMENTATIONS: dict[str, Implementation] = {
    "jax": Implementation("jax", jax_log_softmax,
                          "JAX: -jax.nn.log_softmax(x)[t], jit on CPU (extra 'jax')", _CAPS),
    "optax": Implementation("optax", optax_ce,
                            "optax.softmax_cross_entropy_with_integer_labels, jit on CPU "
                            "(extra 'jax')", _CAPS),
}
