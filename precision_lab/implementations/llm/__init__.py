"""The LLM-scale algorithms: kernels that never form the whole softmax, in numpy or torch.

Each one is written from its published form, with the arithmetic made explicit: every
operation is carried out in a *working format* W and rounded once to it (numpy's float16 and
ml_dtypes' bfloat16 ufuncs are correctly rounded per operation, see
:mod:`precision_lab.implementations.base`), sums inside a block use the fixed pairwise tree
of :func:`~precision_lab.numerics.sums.pairwise_sum` (a stand-in for a GPU's tree reduction
``tl.sum``), and the loss is rounded once from W to the format at the end.  The parameter
``acc`` chooses W: ``"format"`` (the logits' own format: every step in bfloat16 for bfloat16
logits), ``"float32"`` (float16/bfloat16 logits upcast exactly; float32 and float64 logits
stay in their format) or ``"float64"``.  Each default is the published kernel's: float32 for
Liger (it casts every block to float32), Cut Cross-Entropy (float32 accumulators) and
Megatron (``.float()``); the format for the online softmax, whose paper fixes none.  With
``acc=format`` the same steps run in the format, which isolates the algorithm's own error.

==================  =====================================================================
``online_softmax``  Milakov & Gimelshein (2018), Algorithm 3: one pass, m_j = max(m_{j-1},
                    x_j), d_j = d_{j-1} exp(m_{j-1} - m_j) + exp(x_j - m_j); loss
                    (m + log d) - x_t.  ``order``: "sequential" (the algorithm as printed,
                    left to right) or "pairwise" (the paper's parallel form: the same
                    (m, d) pairs merged by its associative operator in a pairwise tree).
``chunked``         Liger-Kernel's cross-entropy: the vocabulary in blocks of
                    ``chunk_size`` columns (Liger: min(32768, next_pow2(V))); per block
                    m_new = max(m, max(X)), d = d exp(m - m_new) + sum(exp(X - m_new)),
                    the block sum a tree; ``exp``: "exp2" (current Liger: exp2((X - m)
                    log2 e), one more rounding) or "exp".  Gradient in the same pass.
``kahan``           blockwise log-sum-exp with compensated accumulation (Cut Cross-Entropy's
                    blocks of ``block`` columns and its TwoSum update s, c = 2sum(s, c + v));
                    per block b: m_b, s_b = sum(exp(X - m_b)); the running (s, c) is rescaled
                    by exp(m - m_new) when the maximum rises and gains v = s_b exp(m_b -
                    m_new) through the TwoSum; lse = m + log(s + c).
``vocab_parallel``  Megatron-LM's vocab-parallel cross-entropy over a simulated tensor-
                    parallel ``degree`` (torch ops): the vocabulary split in ``degree`` equal
                    contiguous shards, logits upcast (``acc``), all-reduce MAX of the shard
                    maxima, each shard subtracts the max and exponentiates, all-reduce SUM of
                    the target logit and of the shards' exp-sums (in rank order), loss
                    log(sum) - (x_t - max).  Gradient (softmax minus one-hot) as Megatron's.
``fp32_accum``      max-shifted log-sum-exp with float32 accumulation of float16/bfloat16
                    logits: ``upcast`` "all" (x upcast, every step in float32, one rounding
                    at the end: Megatron's and Unsloth's practice) or "sum" (only the
                    accumulator: exp in the format, the pairwise sum of the upcast terms in
                    float32, rounded once to the format, then log, add, sub in the format).
==================  =====================================================================

Fused linear cross-entropy (:func:`fused_linear`, not a logits implementation: it takes
``hidden`` (B, K) and ``weight`` (V, K)) is listed in :data:`LINEAR_IMPLEMENTATIONS`.

Parameters are given in the registry key: ``"chunked(chunk_size=4096, acc=format)"``;
:func:`resolve` parses a key, checks every parameter (one message naming the bad one and the
allowed values) and returns an :class:`~precision_lab.implementations.base.Implementation`
whose key is the canonical form (parameters at their defaults left out, the others in
declaration order: ``"chunked(chunk_size=4096)"``); the bare key means every default.

Loss keywords (every kernel here; the definitions of
:mod:`precision_lab.numerics.semantics`, assembled the way Liger's kernel does):
``ignore_index`` (that row's loss 0), ``label_smoothing`` eps (Liger:
loss (1 - eps) + (sum_j (-eps/V) y_j + eps lse), the x-sum per block for ``chunked``, one
pairwise sum otherwise; ``vocab_parallel`` uses Megatron's form, see its docstring),
``z_loss`` z (loss + (z lse) lse, PaLM) and ``softcap`` c (y = c tanh(x / c) before
everything, Gemma 2).  Constants are rounded once into W.
"""

# resolve_linear, _from_tensor and _logits_targets are imported from here too (not in __all__)
from precision_lab.implementations.llm.common import _from_tensor as _from_tensor
from precision_lab.implementations.llm.common import _logits_targets as _logits_targets
from precision_lab.implementations.llm.common import as_tensor
from precision_lab.implementations.llm.families import (
    FAMILIES,
    GRADIENTS,
    LINEAR_IMPLEMENTATIONS,
    LLM_IMPLEMENTATIONS,
    LOSS_KEYWORDS,
    resolve,
)
from precision_lab.implementations.llm.families import resolve_linear as resolve_linear
from precision_lab.implementations.llm.kernels import (
    chunked,
    chunked_grad,
    fp32_accum,
    kahan,
    online_softmax,
)
from precision_lab.implementations.llm.keys import Family, Param, canonical_key, parse_key
from precision_lab.implementations.llm.linear import (
    LinearImplementation,
    fused_linear,
    linear_torch,
)
from precision_lab.implementations.llm.megatron import vocab_parallel, vocab_parallel_grad

__all__ = ["Param", "Family", "FAMILIES", "resolve", "canonical_key", "parse_key",
           "LLM_IMPLEMENTATIONS", "LINEAR_IMPLEMENTATIONS", "LinearImplementation",
           "LOSS_KEYWORDS", "GRADIENTS", "online_softmax", "chunked", "chunked_grad", "kahan",
           "vocab_parallel", "vocab_parallel_grad", "fp32_accum", "fused_linear",
           "linear_torch", "as_tensor"]
