"""What an implementation is: its calling convention, its declared capabilities, its steps.

Every implementation is a callable ``(logits, targets, fmt) -> np.ndarray``: ``logits`` a
(B, V) numpy array (float16, ml_dtypes.bfloat16, float32 or float64), ``targets`` (B,)
integer class indices in [0, V), ``fmt`` a format name or :class:`~precision_lab.formats.Format`.
It returns the B per-sample losses as an array of ``fmt``'s numpy dtype.  Logits of another
dtype are first rounded once (correctly) into ``fmt`` -- a ``cast`` step.

Registry (:data:`REGISTRY`, key -> :class:`Implementation`):

=====================  ===================================================================
``naive``              the seed's formula -log(exp(x_t) / sum_j exp(x_j)), no shift (numpy)
``naive_softmax``      p = exp(x) / sum exp(x) for the whole row, then -log p[t] (numpy)
``lse``                max-shifted log-sum-exp: (m + log(sum exp(x - m))) - x_t (numpy)
``lse_log1p``          Blanchard-Higham-Higham: (m - x_t) + log1p(sum_{j != k} exp(x_j - m)),
                       k = argmax (first one), m = x_k (numpy)
``torch``              torch.nn.functional.cross_entropy(x, t, reduction="none")
``torch_logsoftmax_nll``  F.nll_loss(F.log_softmax(x, dim=-1), t, reduction="none")
``torch_manual``       the seed's torch ops per row:
                       -torch.log(torch.exp(x[t]) / torch.exp(x).sum())
``scipy``              scipy.special.logsumexp(x, axis=-1) - x_t
``torch_upcast``       F.cross_entropy(x.float(), t): bfloat16/float16 logits upcast to float32
``torch_autocast``     F.cross_entropy(x, t) inside torch.autocast (bfloat16/float16)
=====================  ===================================================================

Training semantics: implementations declare the loss keywords they take
(``Capabilities.keywords``: weight, ignore_index, label_smoothing, prob_targets, z_loss,
softcap; see :mod:`precision_lab.numerics.semantics` for the definitions) and whether they
have a gradient (``Capabilities.gradient``, :meth:`Implementation.grad`).  ``lse``,
``lse_log1p``, ``torch``, ``torch_logsoftmax_nll``, ``torch_upcast`` and ``torch_autocast``
take every keyword and have a gradient; ``torch_manual`` has a gradient (autograd) and no
keywords; ``naive``, ``naive_softmax`` and ``scipy`` have neither.  The formulas and orders
of operations are documented in :mod:`.numpy_impls` and :mod:`.torch_impls`.

Arithmetic model (measured with numpy 2.4.6, ml_dtypes 0.6.0, torch 2.13.0 CPU, AVX512):

* numpy's float16 ``+ - * /`` compute in float32 and round once to float16; ml_dtypes'
  bfloat16 ufuncs do the same via float32.  Because float32 has p' = 24 >= 2p + 2 bits for
  both (p = 11, 8), this double rounding is innocuous (Figueroa): each elementary operation
  is correctly rounded to the format.  Checked: 0 mismatches against the correctly rounded
  result on 2 x 4M random operand pairs per format; torch's CPU float16/bfloat16 ops agree.
* ``exp``, ``log``, ``log1p`` on float16/bfloat16 evaluate the float32 function and round:
  exhaustively over all float16 inputs numpy's exp is not correctly rounded at 4 points
  (torch's at 2), log at 1, log1p at 2; for bfloat16 both are correctly rounded everywhere.
* Sums: ``np.sum`` is NOT the format's arithmetic for float16 (it accumulates pairwise in
  float32 and rounds once at the end), while for bfloat16 it adds left to right, rounding
  each partial sum to bfloat16; torch's CPU sum of float16/bfloat16 accumulates in float32.
  So the numpy implementations here never call ``np.sum``: they use :func:`pairwise_sum`,
  a fixed pairwise tree in the format's own arithmetic (every addition rounded once to the
  format), the same order for every format: see its docstring.  The torch implementations
  use torch's own reductions, whatever they do (that is what is being measured).
* ``max``, ``argmax``, ``gather``, ``neg`` and the ``mask`` step are exact.
* Casts are not all correct: ml_dtypes' float64 -> bfloat16 ``astype`` and torch's float64 ->
  bfloat16 and float64 -> float16 ``.to`` round through float32 (1 + 2**-8 + 2**-40 becomes
  1.0 in bfloat16, 1 + 2**-11 + 2**-40 becomes 1.0 in float16; correct: 1 + 2**-7 and
  1 + 2**-10); numpy's float64 -> float16 cast is correct.  The ``cast`` step here therefore
  uses :func:`~precision_lab.formats.round_float64_array` (one correct rounding).
* torch: its elementwise ops give the same result on a vector as on each 0-d element
  (checked for exp, log, div in all four formats), and a row sum of a (B, V) tensor equals
  the sum of that row as a 1-D tensor (checked V <= 5000), so ``torch_manual`` vectorizes over
  rows without changing any per-row operation.  torch's CPU kernels depend on
  ``ATEN_CPU_CAPABILITY`` (default/avx2/avx512); results can differ between them.
* scipy 1.17 ``logsumexp`` computes in the input dtype for float16/float32/float64 (with
  numpy's float32-accumulated ``np.sum`` for float16), but it does not recognise
  ml_dtypes.bfloat16 as floating and promotes it to float64: the ``scipy`` entry then rounds
  that float64 result once to bfloat16 before the final bfloat16 subtraction.  It uses the
  BHH form internally: a_max + log(#maxima) + log1p(sum of the others / #maxima).

Devices: the three torch implementations take ``device=`` ("cpu" by default; "cuda" runs
torch's GPU kernels on the same values, see :mod:`precision_lab.studies.cuda`).

Tracing (per-step attribution).  The step-wise implementations (``Implementation.stepwise``)
take a keyword ``trace: list | None = None``.  When a list is given, one :class:`Step` per
operation is appended, in execution order; the last step's output is the returned array.
The same code computes with and without tracing (recording only stores references).  The
meaning of each ``op`` is in :data:`OPS`: a step's exact value is ``OPS[op]`` applied in exact
arithmetic to the step's ``inputs`` (the arrays actually consumed, already broadcast-shaped),
so another module can measure the error each step adds as the distance between ``output``
and the correctly rounded exact result of the op on those inputs.

Custom implementations: :func:`get_implementation` accepts a registry key or an import path
``"package.module:function"`` naming a callable with the same signature (optionally taking
``trace=``)::

    def my_ce(logits, targets, fmt):          # in mypkg/losses.py
        f = get_format(fmt)
        ...
        return losses.astype(f.np_dtype)      # shape (B,), fmt's dtype

    impl = get_implementation("mypkg.losses:my_ce")
    losses = impl(logits, targets, "bfloat16")

The returned :class:`Implementation` checks the result's shape and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from precision_lab.numerics.formats import Format, get_format, round_float64_array
from precision_lab.numerics.semantics import KEYWORDS, LossSpec, validate

__all__ = [
    "Step",
    "OPS",
    "Capabilities",
    "Implementation",
    "to_torch",
    "from_torch",
    "prepare",
    "prepare_loss",
    "LossInputs",
    "take",
    "Recorder",
]

#: Exact meaning of each step ``op`` on its ``inputs`` (in0, in1, ...); all index/axis
#: conventions are over the last axis, with numpy broadcasting between in0 and in1.
#: "rounded" ops are computed once per elementary operation in the format; "exact" ones
#: introduce no error; "composite" ones are a library kernel whose internals are unknown.
OPS: dict[str, str] = {
    "cast": "rounded: in0 (any float dtype) rounded once to the format",
    "max": "exact: out[i] = max_j in0[i, j]",
    "argmax": "exact: out[i] = first j with in0[i, j] maximal (integer output)",
    "gather": "exact: out[i] = in0[i, in1[i]] (in1 integer indices)",
    "mask": "exact: out = in0 with out[i, in1[i]] = 0 (in1 integer indices)",
    "sub": "rounded: out = in0 - in1",
    "add": "rounded: out = in0 + in1",
    "div": "rounded: out = in0 / in1",
    "neg": "exact: out = -in0",
    "exp": "rounded: out = exp(in0)",
    "log": "rounded: out = log(in0)",
    "log1p": "rounded: out = log(1 + in0)",
    "sum": "rounded (V - 1 additions): out[i] = sum_j in0[i, j]; numpy implementations use "
           "pairwise_sum's order, torch ones torch's own reduction",
    "log_softmax": "composite: out[i, j] = in0[i, j] - log(sum_k exp(in0[i, k]))",
    "nll": "exact: out[i] = -in0[i, in1[i]] (in1 integer indices)",
}


@dataclass(frozen=True)
class Step:
    """One recorded operation of a step-wise implementation.

    Attributes:
        name: unique name within the trace ("x", "m", "d", "e", "s", "loss", ...).
        op: the operation, a key of :data:`OPS` (its exact meaning is documented there).
        inputs: the arrays the operation consumed, exactly as consumed: arrays of the format
            (a (B,) reduction result appears as a (B, 1) view where it was broadcast) or
            integer index arrays (gather/mask/nll).  References, not copies.
        sources: for each input, the name of the step that produced it, or "logits" /
            "targets" for the caller's arrays.
        output: the computed array (format dtype; integer for argmax).
    """

    name: str
    op: str
    inputs: tuple[np.ndarray, ...]
    sources: tuple[str, ...]
    output: np.ndarray

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown step op {self.op!r}; allowed: {', '.join(OPS)}")
        if len(self.inputs) != len(self.sources):
            raise ValueError("Step needs one source name per input")


class Recorder:
    """Appends Steps to ``trace`` when it is a list; returns the output either way."""

    __slots__ = ("trace",)

    def __init__(self, trace: "list | None") -> None:
        if trace is not None and not isinstance(trace, list):
            raise TypeError(f"trace must be a list or None, not {type(trace).__name__}")
        self.trace = trace

    def __call__(self, name: str, op: str, inputs: tuple, sources: tuple, output: Any) -> Any:
        if self.trace is not None:
            out_np = from_torch(output) if _is_torch(output) else np.asarray(output)
            ins = tuple(from_torch(a) if _is_torch(a) else np.asarray(a) for a in inputs)
            self.trace.append(Step(name, op, ins, tuple(sources), out_np))
        return output


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


def to_torch(a: np.ndarray, device: str = "cpu"):  # -> torch.Tensor
    """A torch tensor on ``device`` sharing ``a``'s data where possible (ml_dtypes.bfloat16
    through an int16 view, giving torch.bfloat16), with ``a``'s strides (a transposed or
    strided view reaches torch as such); the values are not changed."""
    import torch

    a = np.asarray(a)
    if any(st < 0 or st % a.itemsize for st in a.strides):
        a = np.ascontiguousarray(a)  # torch takes non-negative element strides only
    if a.dtype == get_format("bfloat16").np_dtype:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t if device == "cpu" else t.to(device)


def from_torch(t) -> np.ndarray:
    """A numpy array of the tensor's values (ml_dtypes.bfloat16 for torch.bfloat16)."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(get_format("bfloat16").np_dtype)
    return t.numpy()


def prepare(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format",
             rec: Recorder) -> tuple[np.ndarray, np.ndarray, Format, str]:
    """Validate, and round logits once into fmt (a "cast" step) if they are of another dtype.

    Returns (x, targets as int64, format, name of x's source: "logits" or "x" after a cast).
    """
    f = get_format(fmt)
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (B, V), got shape {logits.shape}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {targets.shape}")
    if targets.size and not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
    targets = targets.astype(np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"targets must lie in [0, {logits.shape[1]})")
    if logits.dtype == f.np_dtype:
        return logits, targets, f, "logits"
    x = round_float64_array(logits.astype(np.float64), f)
    return rec("x", "cast", (logits,), ("logits",), x), targets, f, "x"


def take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, idx[:, None], axis=-1)[:, 0]


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports, declared in its registry entry (never probed).

    Attributes:
        own_reduction: reduces "mean"/"sum" its own way (the function takes ``reduction=``);
            otherwise the runner reduces the per-sample losses with the seed's loop
            (:func:`precision_lab.numerics.sums.reduce_in_format`).
        trace: records one :class:`Step` per operation when given ``trace=[]``.
        devices: devices the function can run on (``device=``): ("cpu",) for numpy code,
            ("cpu", "cuda") for torch code.
        extra: the optional dependency group it needs (``pip install precision-lab[extra]``),
            or None.
        gradient: has a ``grad_function`` (:meth:`Implementation.grad`): the gradient of the
            loss with respect to the logits, (B, V).
        keywords: the loss keywords it takes (a subset of
            :data:`~precision_lab.numerics.semantics.KEYWORDS`: "weight", "ignore_index",
            "label_smoothing", "prob_targets" (targets given as (B, V) probabilities),
            "z_loss", "softcap"); the others are refused.  ``trace`` records the plain loss
            only: an implementation refuses ``trace`` together with any loss keyword.
    """

    own_reduction: bool = False
    trace: bool = False
    devices: tuple[str, ...] = ("cpu",)
    extra: "str | None" = None
    gradient: bool = False
    keywords: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.keywords) - KEYWORDS
        if unknown:
            raise ValueError(f"unknown loss keywords {sorted(unknown)}; allowed: "
                             f"{', '.join(sorted(KEYWORDS))}")


@dataclass(frozen=True)
class Implementation:
    """A named cross-entropy implementation; call it as ``impl(logits, targets, fmt)``.

    Attributes:
        key: registry key, or the import path it was loaded from.
        function: ``(logits, targets, fmt, **keywords) -> np.ndarray``; the keywords it takes
            are exactly the ones its :class:`Capabilities` declare (``trace``, ``reduction``,
            ``device``, and the loss keywords); it is only given those that differ from their
            defaults.
        description: one line.
        capabilities: what it supports.
        grad_function: ``(logits, targets, fmt, *, reduction, **keywords) -> (B, V) array``
            (``device`` too where declared), or None; see :meth:`grad`.
        reduce_method: how the runner reduces this implementation's per-sample losses for a
            "mean" or "sum": "own" (its own reduction where it declares one, else the seed's
            sequential loop), or one of "sequential", "pairwise", "kahan", "float32" (see
            :func:`precision_lab.numerics.sums.reduce_in_format`); set by the key parameter
            ``reduce=``, e.g. ``"torch(reduce=kahan)"``.
    """

    key: str
    function: Callable[..., np.ndarray] = field(repr=False)
    description: str
    capabilities: Capabilities = Capabilities()
    grad_function: "Callable[..., np.ndarray] | None" = field(default=None, repr=False)
    reduce_method: str = "own"

    def __post_init__(self) -> None:
        if self.capabilities.gradient and self.grad_function is None:
            raise ValueError(f"implementation {self.key!r} declares gradient=True but has no "
                             "grad_function")
        if self.grad_function is not None and not self.capabilities.gradient:
            raise ValueError(f"implementation {self.key!r} has a grad_function but does not "
                             "declare gradient=True")

    @property
    def stepwise(self) -> bool:
        """Whether it records :class:`Step` s (``capabilities.trace``)."""
        return self.capabilities.trace

    def __call__(self, logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                 trace: "list | None" = None, reduction: str = "none",
                 device: str = "cpu", weight=None, ignore_index: int = -100,
                 label_smoothing: float = 0.0, z_loss: float = 0.0,
                 softcap: "float | None" = None) -> np.ndarray:
        """Per-sample losses, shape (B,), of fmt's dtype; with ``reduction`` "mean" or "sum"
        (only where ``capabilities.own_reduction``) one value, shape ().

        The loss keywords (``weight`` ... ``softcap``; targets of shape (B, V) for
        probability targets) have the meaning of
        :mod:`precision_lab.numerics.semantics`; only those that differ from their defaults
        are passed on, and each must be declared in ``capabilities.keywords``.

        Raises:
            TypeError: a keyword the implementation does not declare (``trace`` without
                ``capabilities.trace`` or together with a loss keyword, a reduction without
                ``own_reduction``, a device not in ``devices``, an undeclared loss keyword),
                or the function returned the wrong dtype or shape.
        """
        f = get_format(fmt)
        caps = self.capabilities
        kwargs = self._loss_keywords(targets, weight, ignore_index, label_smoothing, z_loss,
                                     softcap)
        if trace is not None:
            if not caps.trace:
                raise TypeError(f"implementation {self.key!r} is not step-wise; it takes no trace")
            if kwargs or np.ndim(targets) == 2:
                raise TypeError(f"implementation {self.key!r}: trace records the plain loss "
                                "only; call it without loss keywords to trace it")
            kwargs["trace"] = trace
        if reduction != "none":
            if not caps.own_reduction:
                raise TypeError(f"implementation {self.key!r} does not reduce its own way; "
                                "reduce its per-sample losses instead")
            kwargs["reduction"] = reduction
        self._device(device, kwargs)
        out = self.function(logits, targets, f, **kwargs)
        expected = (np.shape(logits)[0],) if reduction == "none" else ()
        self._check(out, f, expected)
        return out

    def grad(self, logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
             reduction: str = "none", device: str = "cpu", weight=None,
             ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
             softcap: "float | None" = None) -> np.ndarray:
        """The gradient of the loss with respect to the logits, shape (B, V), fmt's dtype.

        reduction "none" differentiates the sum of the per-sample losses (an upstream
        gradient of 1 per sample), "sum" the same, "mean" the implementation's mean.  Loss
        keywords as for :meth:`__call__`.

        Raises:
            TypeError: no declared gradient, an undeclared loss keyword or device, a bad
                reduction, or a result of the wrong dtype or shape.
        """
        f = get_format(fmt)
        if not self.capabilities.gradient or self.grad_function is None:
            raise TypeError(f"implementation {self.key!r} declares no gradient")
        if reduction not in ("none", "mean", "sum"):
            raise TypeError(f"reduction must be 'none', 'mean' or 'sum', not {reduction!r}")
        kwargs = self._loss_keywords(targets, weight, ignore_index, label_smoothing, z_loss,
                                     softcap)
        kwargs["reduction"] = reduction
        self._device(device, kwargs)
        out = self.grad_function(logits, targets, f, **kwargs)
        self._check(out, f, tuple(np.shape(logits)))
        return out

    # -- helpers -----------------------------------------------------------------------------

    def _loss_keywords(self, targets, weight, ignore_index, label_smoothing, z_loss,
                       softcap) -> dict[str, Any]:
        """The non-default loss keywords, each checked against ``capabilities.keywords``."""
        used: dict[str, Any] = {}
        if weight is not None:
            used["weight"] = weight
        if ignore_index != -100:
            used["ignore_index"] = ignore_index
        if label_smoothing != 0.0:
            used["label_smoothing"] = label_smoothing
        if z_loss != 0.0:
            used["z_loss"] = z_loss
        if softcap is not None:
            used["softcap"] = softcap
        needed = set(used) | ({"prob_targets"} if np.ndim(targets) == 2 else set())
        missing = needed - self.capabilities.keywords
        if missing:
            have = ", ".join(sorted(self.capabilities.keywords)) or "none"
            raise TypeError(f"implementation {self.key!r} does not support "
                            f"{', '.join(sorted(missing))} (its loss keywords: {have})")
        return used

    def _device(self, device: str, kwargs: dict) -> None:
        if device != "cpu":
            if device.split(":")[0] not in self.capabilities.devices:
                raise TypeError(f"implementation {self.key!r} runs on "
                                f"{', '.join(self.capabilities.devices)}, not {device!r}")
            kwargs["device"] = device

    def _check(self, out: Any, f: Format, expected: tuple) -> None:
        if not isinstance(out, np.ndarray) or out.dtype != f.np_dtype:
            got = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
            raise TypeError(f"implementation {self.key!r} returned {got}; expected a numpy "
                            f"array of {f.np_dtype} for format {f.name}")
        if out.shape != expected:
            raise TypeError(f"implementation {self.key!r} returned shape {out.shape}; "
                            f"expected {expected}")


@dataclass
class LossInputs:
    """Validated loss inputs, in the format's dtype (see :func:`prepare_loss`).

    Attributes:
        x: (B, V) logits, rounded once into the format (or as given with ``cast=False``).
        t: (B,) int64 class indices, or (B, V) probabilities rounded once into the format.
        f: the format.
        spec: the validated keywords (exact values: weight as given).
        t_exact: the targets as validated: int64 indices, or float64 probabilities (exact).
        w: (V,) weights rounded once into the format, or None.
        valid: (B,) bool, the rows that are not ignored.
        source: name of x's source for a trace: "logits", or "x" after a cast.
    """

    x: np.ndarray
    t: np.ndarray
    t_exact: np.ndarray
    f: Format
    spec: LossSpec
    w: "np.ndarray | None"
    valid: np.ndarray
    source: str


def prepare_loss(logits: np.ndarray, targets: np.ndarray, fmt: "str | Format", *,
                 rec: "Recorder | None" = None, cast: bool = True, reduction: str = "none",
                 weight=None, ignore_index: int = -100, label_smoothing: float = 0.0,
                 z_loss: float = 0.0, softcap: "float | None" = None) -> LossInputs:
    """Validate loss arguments with :func:`precision_lab.numerics.semantics.validate` (the
    reference's checks and error types, which follow torch's) and round the logits (unless
    ``cast`` is False), the weights and probability targets once into the format -- torch
    needs them in the logits' dtype, and so does every format-arithmetic implementation."""
    f = get_format(fmt)
    arr = np.asarray(logits)
    _, T, spec = validate(arr, targets, weight=weight, ignore_index=ignore_index,
                          label_smoothing=label_smoothing, reduction=reduction, z_loss=z_loss,
                          softcap=softcap)
    source = "logits"
    x = arr
    if cast and arr.dtype != f.np_dtype:
        x = round_float64_array(arr.astype(np.float64), f)
        source = "x"
        if rec is not None:
            rec("x", "cast", (arr,), ("logits",), x)
    w = None if spec.weight is None else round_float64_array(spec.weight, f)
    if spec.prob:
        t = round_float64_array(T, f)
        valid = np.ones(T.shape[0], bool)
    else:
        t = T
        valid = T != spec.ignore_index
    return LossInputs(x, t, T, f, spec, w, valid, source)
