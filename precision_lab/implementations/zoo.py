"""The LLM-scale kernel zoo in one place: its registry entries and its key resolver.

* :data:`ZOO_IMPLEMENTATIONS`: the bare keys (every parameter at its default) of
  :mod:`.llm` (``online_softmax``, ``chunked``, ``kahan``, ``vocab_parallel``,
  ``fp32_accum``), :mod:`.jax_impls` (``jax``, ``optax``; extra "jax") and :mod:`.compiled`
  (``torch_compile``), merged into the registry;
* :func:`resolve_zoo`: a parameterized key such as ``"chunked(chunk_size=4096)"`` -> its
  :class:`~precision_lab.implementations.base.Implementation` (None for a name that is not
  a zoo family, so the registry can go on with its other lookups);
* :data:`LINEAR_IMPLEMENTATIONS` / :func:`resolve_linear`: the fused linear
  cross-entropy and its unfused baseline, which take hidden states and weights, not logits.
"""

from __future__ import annotations

from precision_lab.implementations.base import Implementation
from precision_lab.implementations.compiled import COMPILED_IMPLEMENTATIONS, torch_compile_grad
from precision_lab.implementations.jax_impls import JAX_IMPLEMENTATIONS
from precision_lab.implementations.llm import (
    FAMILIES,
    GRADIENTS,
    LINEAR_IMPLEMENTATIONS,
    LLM_IMPLEMENTATIONS,
    LOSS_KEYWORDS,
    resolve,
    resolve_linear,
)

__all__ = ["FAMILIES", "ZOO_IMPLEMENTATIONS", "resolve_zoo", "LINEAR_IMPLEMENTATIONS",
           "resolve_linear",
           "DESIGN", "ZOO_KEYWORDS", "ZOO_GRADIENTS"]

ZOO_IMPLEMENTATIONS: dict[str, Implementation] = {
    **LLM_IMPLEMENTATIONS, **JAX_IMPLEMENTATIONS, **COMPILED_IMPLEMENTATIONS}


#: The loss keywords each zoo family takes (names of numerics.semantics' KEYWORDS): its
#: ``Capabilities.keywords``.
ZOO_KEYWORDS: dict[str, frozenset[str]] = {
    **LOSS_KEYWORDS,
    "torch_compile": frozenset({"weight", "ignore_index", "label_smoothing"}),
    "jax": frozenset(), "optax": frozenset(),
}

#: Gradient functions ``(logits, targets, fmt, *, reduction, **params, **keywords)`` of the
#: families whose published form computes one (bind a key's parameters with
#: functools.partial, as the loss functions are bound).
ZOO_GRADIENTS = {**GRADIENTS, "torch_compile": torch_compile_grad}

#: The design choice that decides each family's error, one sentence per family (for reports).
DESIGN: dict[str, str] = {
    "online_softmax": "one running sum in the working format: V - 1 roundings in a row, and a "
                      "sum that stops growing once its ulp exceeds the terms (a bfloat16 sum of "
                      "ones stops at 256); the pairwise form has log2 V",
    "chunked": "the accumulator format (float32 in Liger) and the chunk boundary: a pairwise "
               "sum inside each chunk, chunks added one after another with a rescaling each "
               "time the maximum rises; exp2 adds a rounding of the argument",
    "kahan": "compensation across blocks: the block sums are added with TwoSum, so the "
             "across-block error stays about 2u however many blocks; rescalings are not "
             "compensated",
    "vocab_parallel": "the shard count and the accumulator format: each shard sums its exp "
                      "terms (torch's reduction), the shard sums are added in rank order",
    "fp32_accum": "the accumulator format alone: float32 for every step and one rounding at "
                  "the end, or only the sum in float32",
    "jax": "XLA's own fused reduction for log_softmax",
    "optax": "XLA's own fused reduction, optax's formula",
    "torch_compile": "inductor's generated reduction (its own order and accumulator); strides "
                     "change the generated loop",
    "fused_linear": "the logits' format (rounded to the format, as Liger, or kept in float32, "
                    "as Cut Cross-Entropy) before the chunked loss",
}


def resolve_zoo(key: str) -> "Implementation | None":
    """The zoo implementation ``key`` names (bare or parameterized), or None.

    Raises:
        ValueError: a zoo family with an unknown parameter or a bad value.
    """
    if key in ZOO_IMPLEMENTATIONS:
        return ZOO_IMPLEMENTATIONS[key]
    return resolve(key)
