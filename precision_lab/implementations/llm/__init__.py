"""The LLM-scale algorithms (moving into this package; see :mod:`.kernels`)."""

from precision_lab.implementations.llm.kernels import *  # noqa: F403
from precision_lab.implementations.llm.kernels import __all__ as __all__
from precision_lab.implementations.llm.kernels import _from_tensor as _from_tensor
from precision_lab.implementations.llm.kernels import _logits_targets as _logits_targets
from precision_lab.implementations.llm.kernels import resolve_linear as resolve_linear
