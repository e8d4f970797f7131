"""The registry: every implementation under a key, with its capabilities declared.

:func:`get_implementation` resolves a registry key, or an import path
``"package.module:function"`` of a user's own function (the module must be importable: on
``PYTHONPATH`` or installed).  A plain function is taken with no capabilities (per-sample
losses only); declare more by giving the function a ``capabilities`` attribute
(:class:`~precision_lab.implementations.base.Capabilities`) or by exporting an
:class:`~precision_lab.implementations.base.Implementation`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from typing import Any, Callable

from precision_lab.implementations.base import Capabilities, Implementation
from precision_lab.implementations.numpy_impls import (
    lse,
    lse_grad,
    lse_log1p,
    lse_log1p_grad,
    naive,
    naive_softmax,
    scipy_lse,
)
from precision_lab.implementations.torch_impls import (
    torch_autocast,
    torch_autocast_grad,
    torch_ce,
    torch_ce_grad,
    torch_logsoftmax_nll,
    torch_logsoftmax_nll_grad,
    torch_manual,
    torch_manual_grad,
    torch_upcast,
    torch_upcast_grad,
)
from precision_lab.numerics.semantics import KEYWORDS

__all__ = ["REGISTRY", "PARAMETERS", "EXTRAS", "DESIGN", "default_keys", "design_note",
           "extra_installed", "get_implementation", "parse_key"]

_NUMPY = Capabilities(trace=True)
_NUMPY_SEM = Capabilities(trace=True, gradient=True, keywords=KEYWORDS)
_TORCH_DEVICES = ("cpu", "cuda")
_TORCH_SEM = Capabilities(own_reduction=True, devices=_TORCH_DEVICES, gradient=True,
                          keywords=KEYWORDS)

REGISTRY: dict[str, Implementation] = {
    impl.key: impl
    for impl in (
        Implementation("naive", naive, "seed formula -log(exp(x_t)/sum exp(x)), no shift", _NUMPY),
        Implementation("naive_softmax", naive_softmax,
                       "unshifted softmax p = exp(x)/sum exp(x), then -log p_t", _NUMPY),
        Implementation("lse", lse, "max-shifted log-sum-exp: m + log(sum exp(x - m)) - x_t",
                       _NUMPY_SEM, lse_grad),
        Implementation("lse_log1p", lse_log1p,
                       "Blanchard-Higham-Higham: (m - x_t) + log1p(sum_{j!=k} exp(x_j - m))",
                       _NUMPY_SEM, lse_log1p_grad),
        Implementation("torch", torch_ce, "torch.nn.functional.cross_entropy, reduction='none'",
                       _TORCH_SEM, torch_ce_grad),
        Implementation("torch_logsoftmax_nll", torch_logsoftmax_nll,
                       "F.nll_loss(F.log_softmax(x, dim=-1), t)",
                       Capabilities(own_reduction=True, trace=True, devices=_TORCH_DEVICES,
                                    gradient=True, keywords=KEYWORDS),
                       torch_logsoftmax_nll_grad),
        Implementation("torch_manual", torch_manual,
                       "seed torch ops: -torch.log(torch.exp(x[t]) / torch.exp(x).sum())",
                       Capabilities(trace=True, devices=_TORCH_DEVICES, gradient=True),
                       torch_manual_grad),
        Implementation("scipy", scipy_lse, "scipy.special.logsumexp(x) - x_t"),
        Implementation("torch_upcast", torch_upcast,
                       "F.cross_entropy(x.float(), t): low-precision logits upcast to float32",
                       _TORCH_SEM, torch_upcast_grad),
        Implementation("torch_autocast", torch_autocast,
                       "F.cross_entropy under torch.autocast (bfloat16/float16)",
                       _TORCH_SEM, torch_autocast_grad),
    )
}
_zoo = importlib.import_module("precision_lab.implementations.zoo")
REGISTRY.update(_zoo.ZOO_IMPLEMENTATIONS)


#: Parameters an implementation key may carry, ``"key(name=value, ...)"``: per base key, a
#: function (implementation, params) -> implementation that applies the ones it knows and
#: raises ValueError for the others; the implementation it returns carries the canonical key
#: of those parameters.  ``reduce=`` applies to every key (see
#: :attr:`Implementation.reduce_method`).
def _zoo_parameters(impl: Implementation, params: dict[str, str]) -> Implementation:
    """A zoo family's key with parameters (checked by the zoo, which names a bad one)."""
    text = impl.key + "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    out = _zoo.resolve_zoo(text)
    if out is None:  # pragma: no cover - every family resolves
        raise ValueError(f"implementation {text!r} cannot be resolved")
    return out


PARAMETERS: dict[str, Callable[[Implementation, dict[str, str]], Implementation]] = {
    family: _zoo_parameters for family in _zoo.FAMILIES}

#: The design choice that decides each implementation's error, one phrase per base key (the
#: zoo's families from :data:`~precision_lab.implementations.zoo.DESIGN`); reports print it
#: next to the ranking.
DESIGN: dict[str, str] = {
    "naive": "no max shift: exp overflows once a logit passes the format's log of its largest "
             "value (about 11 in float16), and the quotient and the log each round",
    "naive_softmax": "no max shift, and -log of a rounded probability: a p_t near 1 keeps "
                     "only its rounding error, a p_t that underflows gives inf",
    "lse": "max shift, then m + log(sum) - x_t: a small loss is the difference of two nearly "
           "equal rounded numbers",
    "lse_log1p": "log1p of the non-target mass after the max shift: no cancellation when the "
                 "target holds the maximum",
    "torch": "ATen's fused log_softmax kernel: max shift and its own vectorized sum order",
    "torch_logsoftmax_nll": "the same log_softmax kernel as F.cross_entropy, then nll_loss",
    "torch_manual": "the seed's torch ops: unshifted exp, a rounded quotient, then -log",
    "scipy": "scipy's logsumexp (max shift) minus the target logit: cancellation when the "
             "loss is small",
    "torch_upcast": "16-bit logits upcast to float32: the float32 computation, then one "
                    "rounding to the format",
    "torch_autocast": "autocast runs cross_entropy in float32, then one rounding to the format",
    **_zoo.DESIGN,
}


def design_note(key: str) -> "str | None":
    """The :data:`DESIGN` phrase of ``key``'s family (parameters and ``reduce=`` ignored);
    None for a custom implementation."""
    m = _KEY.match(key)
    return DESIGN.get(m.group(1) if m else key.strip())


#: The packages each optional extra provides (``pip install precision-lab[extra]``).
EXTRAS: dict[str, tuple[str, ...]] = {"jax": ("jax", "optax"), "cluster": ("distributed",)}


def extra_installed(extra: "str | None") -> bool:
    """Whether the optional dependency group ``extra`` is importable here (None: always)."""
    if extra is None:
        return True
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in EXTRAS.get(extra, (extra,)))


def default_keys() -> list[str]:
    """What ``implementations = "all"`` means: every registered key whose optional extra is
    installed here (the resolved config records the list)."""
    return [k for k, impl in REGISTRY.items() if extra_installed(impl.capabilities.extra)]

_KEY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$")


def parse_key(text: str) -> tuple[str, dict[str, str]]:
    """``"chunked(chunk_size=4096, reduce=kahan)"`` -> ("chunked", {"chunk_size": "4096",
    "reduce": "kahan"}); a bare key has no parameters.

    Raises:
        ValueError: a malformed parameter list."""
    m = _KEY.match(text)
    if m is None:
        return text.strip(), {}
    params: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in m.group(2).split(","))):
        name, eq, value = part.partition("=")
        if not eq or not name.strip().isidentifier() or not value.strip():
            raise ValueError(f"implementation {text!r}: parameter {part!r} is not name=value")
        params[name.strip()] = value.strip()
    return m.group(1), params


def _with_params(base: Implementation, text: str, params: dict[str, str]) -> Implementation:
    from precision_lab.numerics.sums import REDUCE_METHODS

    impl = base
    rest = dict(params)
    method = rest.pop("reduce", None)
    if rest:
        hook = PARAMETERS.get(base.key)
        if hook is None:
            raise ValueError(f"implementation {text!r}: {base.key!r} takes no parameters "
                             f"{sorted(rest)} (every key takes reduce=)")
        impl = hook(impl, rest)
    if method is not None:
        allowed = ("own", *REDUCE_METHODS)
        if method not in allowed:
            raise ValueError(f"implementation {text!r}: reduce={method!r}; allowed: "
                             f"{', '.join(allowed)}")
        impl = dataclasses.replace(impl, reduce_method=method)
    if method == "own":  # the default: left out of the canonical key
        method = None
    if method is None:
        return impl if rest else dataclasses.replace(impl, key=base.key)
    key = impl.key if rest else base.key
    key = (key[:-1] + f", reduce={method})" if key.endswith(")")
           else key + f"(reduce={method})")
    return dataclasses.replace(impl, key=key)


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
    name, params = parse_key(value)
    if params and name in REGISTRY:
        return _with_params(REGISTRY[name], value, params)
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
