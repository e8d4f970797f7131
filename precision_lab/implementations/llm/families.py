"""The families and registry entries: parameterized keys resolved to implementations."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from precision_lab.implementations.base import Capabilities, Implementation
from precision_lab.implementations.llm.kernels import (
    chunked,
    chunked_grad,
    fp32_accum,
    kahan,
    online_softmax,
)
from precision_lab.implementations.llm.keys import (
    ACC_CHOICES,
    Family,
    Param,
    _values,
    canonical_key,
    parse_key,
)
from precision_lab.implementations.llm.linear import (
    LinearImplementation,
    fused_linear,
    linear_torch,
)
from precision_lab.implementations.llm.megatron import vocab_parallel, vocab_parallel_grad

# ---------------------------------------------------------------------------------------
# families and registry entries

def resolve(text: str) -> "Implementation | None":
    """The implementation a parameterized key names, or None if ``text``'s name is not a
    family here (so a caller can go on to other lookups).

    Raises:
        ValueError: an unknown parameter or a bad value (the message names it and lists the
            allowed parameters or values).
    """
    if not isinstance(text, str):
        return None
    try:
        name, args = parse_key(text)
    except ValueError:
        if text.split("(")[0].strip() in FAMILIES:
            raise
        return None
    fam = FAMILIES.get(name)
    if fam is None:
        return None
    return _build(name, tuple(sorted(_values(fam, args).items())))


@functools.lru_cache(maxsize=None)
def _build(name: str, items: tuple) -> Implementation:
    """The implementation of family ``name`` with parameter values ``items``; its
    capabilities declare the loss keywords the family takes and, where the published kernel
    computes one, its gradient (bound to the same parameters)."""
    fam = FAMILIES[name]
    values = dict(items)
    impl = fam.build(canonical_key(fam, values), values)
    grad = GRADIENTS.get(name)
    caps = dataclasses.replace(impl.capabilities, keywords=LOSS_KEYWORDS[name],
                               gradient=grad is not None)
    return dataclasses.replace(impl, capabilities=caps,
                               grad_function=(functools.partial(grad, **values)
                                              if grad is not None else None))


_ACC = Param("acc", "format", str, ACC_CHOICES, doc="working format of every step")
_ACC32 = Param("acc", "float32", str, ACC_CHOICES, doc="working format of every step")


def _numpy_impl(fn, desc: str):
    def build(key: str, values: dict[str, Any]) -> Implementation:
        return Implementation(key, functools.partial(fn, **values), desc, Capabilities())
    return build


def _torch_impl(fn, desc: str):
    def build(key: str, values: dict[str, Any]) -> Implementation:
        return Implementation(key, functools.partial(fn, **values), desc,
                              Capabilities(devices=("cpu", "cuda")))
    return build


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("online_softmax", (
        Param("order", "sequential", str, ("sequential", "pairwise"),
              doc="Algorithm 3 left to right, or its (m, d) operator in a pairwise tree"),
        _ACC),
        _numpy_impl(online_softmax, "online softmax (Milakov & Gimelshein 2018): running max "
                    "and rescaled sum in one pass"),
        "online softmax"),
    Family("chunked", (
        Param("chunk_size", 32768, int, minimum=1, doc="vocabulary columns per block"),
        _ACC32,
        Param("exp", "exp2", str, ("exp2", "exp"), doc="exp2(y log2 e) as current Liger, or exp")),
        _numpy_impl(chunked, "Liger-Kernel: vocabulary blocks with a running max and sum"),
        "Liger chunks"),
    Family("kahan", (
        Param("block", 256, int, minimum=1, doc="vocabulary columns per block"),
        _ACC32,
        Param("compensate", "on", str, ("on", "off"), doc="TwoSum compensation across blocks")),
        _numpy_impl(kahan, "blockwise lse, block sums accumulated with TwoSum compensation "
                    "(Cut Cross-Entropy)"),
        "CCE Kahan"),
    Family("vocab_parallel", (
        Param("degree", 8, int, minimum=1, doc="simulated tensor-parallel degree"),
        _ACC32),
        _torch_impl(vocab_parallel, "Megatron vocab-parallel: all-reduce of max, target logit "
                    "and exp-sum over simulated shards"),
        "Megatron"),
    Family("fp32_accum", (
        Param("upcast", "all", str, ("all", "sum"),
              doc="every step in float32, or only the accumulator"),),
        _numpy_impl(fp32_accum, "max-shifted lse with float32 accumulation of 16-bit logits"),
        "fp32 accumulation"),
)}

#: Loss keywords each family takes (its ``Capabilities.keywords``).
LOSS_KEYWORDS: dict[str, frozenset[str]] = {
    name: frozenset({"ignore_index", "label_smoothing", "z_loss", "softcap"})
    for name in FAMILIES
}

#: Gradient functions ``(logits, targets, fmt, *, reduction, **params, **keywords)``.
GRADIENTS: dict[str, Callable[..., np.ndarray]] = {
    "chunked": chunked_grad,
    "vocab_parallel": vocab_parallel_grad,
}

#: The zoo's logits implementations at their defaults, under their bare keys.
LLM_IMPLEMENTATIONS: dict[str, Implementation] = {
    name: _build(name, tuple(sorted(fam.defaults().items()))) for name, fam in FAMILIES.items()
}


def _no_build(key: str, values: dict[str, Any]) -> Implementation:
    raise TypeError("fused_linear is a LinearImplementation: use resolve_linear")


_FUSED = Family("fused_linear", (
    Param("chunk", 32768, int, minimum=1, doc="vocabulary rows of the weight per block"),
    Param("logits", "format", str, ("format", "float32"),
          doc="block logits rounded to the format (Liger) or kept in float32 (CCE)"),
    _ACC32,
    Param("exp", "exp2", str, ("exp2", "exp"), doc="exp2(y log2 e) as current Liger, or exp"),
), _no_build, "fused linear cross-entropy")


def resolve_linear(text: str) -> LinearImplementation:
    """``"fused_linear(chunk=4096, logits=float32)"`` or ``"linear_torch"`` -> the
    implementation.  Raises ValueError naming a bad key or parameter."""
    name, args = parse_key(text)
    if name == "linear_torch":
        if args:
            raise ValueError("implementation 'linear_torch' takes no parameters")
        return LINEAR_IMPLEMENTATIONS["linear_torch"]
    if name != "fused_linear":
        raise ValueError(f"unknown linear implementation {text!r}; allowed: fused_linear"
                         "(chunk=..., logits=format|float32, acc=..., exp=exp2|exp), "
                         "linear_torch")
    values = _values(_FUSED, args)
    return LinearImplementation(canonical_key(_FUSED, values),
                                functools.partial(fused_linear, **values),
                                "fused linear cross-entropy: hidden @ W.T in vocabulary blocks, "
                                "running max and sum", Capabilities(devices=("cpu", "cuda")))


LINEAR_IMPLEMENTATIONS: dict[str, LinearImplementation] = {
    "linear_torch": LinearImplementation(
        "linear_torch", linear_torch, "unfused: torch matmul in the format, then "
        "F.cross_entropy", Capabilities(devices=("cpu", "cuda"))),
}
LINEAR_IMPLEMENTATIONS["fused_linear"] = resolve_linear("fused_linear")
