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
from precision_lab.implementations.compiled import COMPILED_IMPLEMENTATIONS
from precision_lab.implementations.jax_impls import JAX_IMPLEMENTATIONS
from precision_lab.implementations.llm import (
    LINEAR_IMPLEMENTATIONS,
    LLM_IMPLEMENTATIONS,
    resolve,
    resolve_linear,
)

__all__ = ["ZOO_IMPLEMENTATIONS", "resolve_zoo", "LINEAR_IMPLEMENTATIONS", "resolve_linear"]

ZOO_IMPLEMENTATIONS: dict[str, Implementation] = {
    **LLM_IMPLEMENTATIONS, **JAX_IMPLEMENTATIONS, **COMPILED_IMPLEMENTATIONS}


def resolve_zoo(key: str) -> "Implementation | None":
    """The zoo implementation ``key`` names (bare or parameterized), or None.

    Raises:
        ValueError: a zoo family with an unknown parameter or a bad value.
    """
    if key in ZOO_IMPLEMENTATIONS:
        return ZOO_IMPLEMENTATIONS[key]
    return resolve(key)
