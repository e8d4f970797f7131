"""The cross-entropy implementations under test, each computing in a format's own arithmetic.

* :mod:`.base`: the calling convention, :class:`Capabilities`, :class:`Implementation`, the
  step trace (:class:`Step`, :data:`OPS`) and the arithmetic model measured for numpy,
  ml_dtypes, torch and scipy;
* :mod:`.numpy_impls`, :mod:`.torch_impls`: the implementations;
* :mod:`.registry`: :data:`REGISTRY` and :func:`get_implementation`;
* :mod:`.seed`: the seed answer's manual loop, verbatim.
"""

from precision_lab.implementations.base import (
                                                OPS,
                                                Capabilities,
                                                Implementation,
                                                Step,
                                                from_torch,
                                                to_torch,
)
from precision_lab.implementations.numpy_impls import (
                                                lse,
                                                lse_log1p,
                                                naive,
                                                naive_softmax,
                                                scipy_lse,
)
from precision_lab.implementations.registry import REGISTRY, get_implementation
from precision_lab.implementations.torch_impls import (
                                                torch_autocast,
                                                torch_ce,
                                                torch_logsoftmax_nll,
                                                torch_manual,
                                                torch_upcast,
)
from precision_lab.numerics.sums import pairwise_sum

__all__ = ["OPS", "Capabilities", "Implementation", "Step", "REGISTRY", "get_implementation",
           "from_torch", "to_torch", "pairwise_sum", "naive", "naive_softmax", "lse",
           "lse_log1p", "scipy_lse", "torch_ce", "torch_logsoftmax_nll", "torch_manual",
           "torch_upcast", "torch_autocast"]
