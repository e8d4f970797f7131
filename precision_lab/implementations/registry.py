"""The registry: every implementation under a key, with its capabilities declared.

:func:`get_implementation` resolves a registry key, or an import path
``"package.module:function"`` of a user's own function (the module must be importable: on
``PYTHONPATH`` or installed).  A plain function is taken with no capabilities (per-sample
losses only); declare more by giving the function a ``capabilities`` attribute
(:class:`~precision_lab.implementations.base.Capabilities`) or by exporting an
:class:`~precision_lab.implementations.base.Implementation`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from precision_lab.implementations.base import Capabilities, Implementation
from precision_lab.implementations.numpy_impls import (
    lse,
    lse_log1p,
    naive,
    naive_softmax,
    scipy_lse,
)
from precision_lab.implementations.torch_impls import torch_ce, torch_logsoftmax_nll, torch_manual

__all__ = ["REGISTRY", "get_implementation"]

_NUMPY = Capabilities(trace=True)
_TORCH_DEVICES = ("cpu", "cuda")

REGISTRY: dict[str, Implementation] = {
    impl.key: impl
    for impl in (
        Implementation("naive", naive, "seed formula -log(exp(x_t)/sum exp(x)), no shift", _NUMPY),
        Implementation("naive_softmax", naive_softmax,
                       "unshifted softmax p = exp(x)/sum exp(x), then -log p_t", _NUMPY),
        Implementation("lse", lse, "max-shifted log-sum-exp: m + log(sum exp(x - m)) - x_t",
                       _NUMPY),
        Implementation("lse_log1p", lse_log1p,
                       "Blanchard-Higham-Higham: (m - x_t) + log1p(sum_{j!=k} exp(x_j - m))",
                       _NUMPY),
        Implementation("torch", torch_ce, "torch.nn.functional.cross_entropy, reduction='none'",
                       Capabilities(own_reduction=True, devices=_TORCH_DEVICES)),
        Implementation("torch_logsoftmax_nll", torch_logsoftmax_nll,
                       "F.nll_loss(F.log_softmax(x, dim=-1), t)",
                       Capabilities(own_reduction=True, trace=True, devices=_TORCH_DEVICES)),
        Implementation("torch_manual", torch_manual,
                       "seed torch ops: -torch.log(torch.exp(x[t]) / torch.exp(x).sum())",
                       Capabilities(trace=True, devices=_TORCH_DEVICES)),
        Implementation("scipy", scipy_lse, "scipy.special.logsumexp(x) - x_t"),
    )
}
REGISTRY.update(importlib.import_module("precision_lab.implementations.zoo").ZOO_IMPLEMENTATIONS)


def _allowed() -> str:
    return (f"allowed: one of {', '.join(REGISTRY)}, or an import path "
            f"'package.module:function'")


def get_implementation(key_or_path: "str | Implementation") -> Implementation:
    """Resolve a registry key or an import path ``"package.module:function"``.

    The import path may name a nested attribute (``"pkg.mod:Class.method"``).  The object must
    be an :class:`Implementation` or a callable ``(logits, targets, fmt) -> losses``; a callable
    is wrapped with the capabilities its ``capabilities`` attribute declares (none if absent)
    and the first docstring line as description.

    Raises:
        ValueError: naming the bad value and the allowed keys (unknown key, module that
            cannot be imported, missing attribute, non-callable object).
    """
    if isinstance(key_or_path, Implementation):
        return key_or_path
    value = key_or_path
    if not isinstance(value, str):
        raise ValueError(f"implementation must be a string, got {value!r}; {_allowed()}")
    if value in REGISTRY:
        return REGISTRY[value]
    if ":" not in value:
        raise ValueError(f"unknown implementation {value!r}; {_allowed()}")
    module_name, _, attr_path = value.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"malformed implementation path {value!r}; {_allowed()}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"implementation path {value!r}: cannot import module "
                         f"{module_name!r} ({exc}); is it on PYTHONPATH? {_allowed()}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"implementation path {value!r}: {module_name!r} has no "
                             f"attribute {attr_path!r}; {_allowed()}") from None
    if isinstance(obj, Implementation):
        return obj
    for impl in REGISTRY.values():  # a registered function keeps its declared capabilities
        if impl.function is obj:
            return impl
    if not callable(obj):
        raise ValueError(f"implementation path {value!r} names a non-callable "
                         f"{type(obj).__name__}; {_allowed()}")
    caps = getattr(obj, "capabilities", Capabilities())
    if not isinstance(caps, Capabilities):
        raise ValueError(f"implementation path {value!r}: its 'capabilities' attribute is a "
                         f"{type(caps).__name__}, not precision_lab.implementations.Capabilities")
    doc = (inspect.getdoc(obj) or "").strip().splitlines()
    description = doc[0] if doc else f"custom implementation {value}"
    return Implementation(value, obj, description, caps)
