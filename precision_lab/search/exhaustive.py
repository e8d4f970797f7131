"""Exhaustive slices: every input of a small space, so the maximum error found is proven.

A slice is a product of per-logit value sets in one format with one target class:
``"all"`` (every value of a 16-bit format except the NaNs: every finite value and +-inf),
``{range = [lo, hi]}`` (every float of the format in [lo, hi]) or ``{values = [...]}``
(each value rounded once to the format).  The two-class slices over whole formats are the
point: float16 has 63,490 non-NaN values, so all ordered pairs (x_0, x_1) with target 0 are
63,490**2 = 4,030,980,100 problems (bfloat16: 65,282**2 = 4,261,739,524).  The NaN patterns are
left out: a NaN logit makes the truth NaN whatever the implementation does.

Truth at the cost of a few float64 operations.  With two classes the loss is
softplus(d) = log(1 + e**d), d = x_other - x_target, so it depends only on the gap d.  For every
pair with finite logits :func:`pair_truth` evaluates L^ = max(d, 0) + log1p(exp(-|d|)) in
float64; its relative error is below 2**-40 (float16 gaps are exact in float64; a bfloat16 gap
is rounded once, which moves L by at most 2**-52 |d| relative for |d| <= 745 and by less than
2**-1074 absolute beyond; numpy's float64 exp and log1p are within 4 ulps, the reference's
assumption too).  So the approximate ULP error |c - L^| / ulp(L^) is within
``margin = 2**(p - 38)`` ULP of the true one (p the format's precision) wherever L^ lies in
L's binade.  Where the gap d > 0 is exact and t = log1p(exp(-d)) is below 2**-30 ulp, L = d + t
sits a hair above d, and d is often exactly a rounding midpoint (d = 8844 between the float16
neighbours 8840 and 8848; L = 8844 + e**-8844 rounds up): such rows are decided exactly, on
r = |c - d| - E ulp (exact) for the histogram edge E nearest the error and the sign of t.
Every other row where the float64 truth cannot decide -- L^ within a relative 2**-38 of a
power of two or of the overflow threshold, an approximate error within the margin of a
histogram edge (0.5, 1, 2, 4, ...) -- goes to the certified reference
(:func:`precision_lab.experiment.measure.measure`), as do the rows with an infinite logit and the
worst rows of each chunk.  Hence the correctly rounded counts are exact, the histogram is exact
up to rows the reference decided whose error lies within 2**-100 relative of an edge >= 1
(binned by the float64 error of its certified double-double), and the maximum is the
certified error of a row whose error is within ``2 * margin`` ULP of the slice's true maximum
(``max_ulp_error_certified_to``).  Slices of more than two classes use the certified
reference for every row.

Chunks are blocks of the first logit's values (every combination of the other logits each),
so a slice runs on an executor and continues after an interruption
(:func:`run_slice`); the chunks are merged in order, so the result does not depend on where
they ran.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from precision_lab.experiment.errors import ConfigError
from precision_lab.experiment.measure import measure
from precision_lab.implementations import REGISTRY, get_implementation
from precision_lab.numerics.formats import Format, get_format, to_format, ulp_exponent_array
from precision_lab.numerics.metrics import CATEGORIES
from precision_lab.search.chunks import ChunkFolder, drive, software
from precision_lab.search.floats import exact_list, values_of_bits
from precision_lab.search.summary import summary_row, write_summary

__all__ = ["SliceSpec", "axis_values", "pair_truth", "slice_chunk", "merge_chunks",
           "SliceResult", "run_slice", "HIST_EDGES", "parse_slice"]

#: Upper edges of the ULP-error histogram bins: [0, 0.5), [0.5, 1), [1, 2), ... [2**62, inf).
HIST_EDGES: tuple[float, ...] = (0.5,) + tuple(float(2 ** k) for k in range(0, 63))
_ROWS_PER_BATCH = 1 << 20
_MAX_CERTIFIED = 64


@dataclass(frozen=True)
class SliceSpec:
    """An exhaustive slice.

    Attributes:
        name: folder name.
        format: the format of the logits and the loss.
        implementations: registry keys or import paths.
        logits: per position, "all", {"range": [lo, hi]} or {"values": [...]}.
        target: the target class.
        block: values of the first logit per chunk (0: about 2**23 rows per chunk).
    """

    name: str
    format: str
    implementations: tuple[str, ...]
    logits: tuple[Any, ...] = ("all", "all")
    target: int = 0
    block: int = 0

    def resolved(self) -> "SliceSpec":
        f = get_format(self.format)
        V = len(self.logits)
        if V < 2:
            raise ValueError("a slice needs at least two logits")
        if not 0 <= self.target < V:
            raise ValueError(f"target {self.target} is out of range [0, {V})")
        if not self.implementations:
            raise ValueError("a slice needs at least one implementation")
        keys = tuple(get_implementation(k).key for k in self.implementations)
        sizes = [axis_values(a, f).size for a in self.logits]
        if min(sizes) == 0:
            raise ValueError(f"slice {self.name!r}: a logit has no values ({self.logits})")
        rest = math.prod(sizes[1:])
        block = self.block or max(1, (1 << 23) // rest)
        return SliceSpec(self.name, f.name, keys, tuple(_canon_axis(a) for a in self.logits),
                         self.target, min(block, sizes[0]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["implementations"] = list(self.implementations)
        d["logits"] = list(self.logits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SliceSpec":
        return cls(d["name"], d["format"], tuple(d["implementations"]), tuple(d["logits"]),
                   int(d["target"]), int(d["block"]))

    def sizes(self) -> list[int]:
        f = get_format(self.format)
        return [axis_values(a, f).size for a in self.logits]

    @property
    def rows(self) -> int:
        return math.prod(self.sizes())

    @property
    def chunks(self) -> int:
        return -(-self.sizes()[0] // self.block)

    def describe(self) -> str:
        """The slice in words: which problems it covers, exactly."""
        f = get_format(self.format)
        parts = []
        for i, a in enumerate(self.logits):
            n = axis_values(a, f).size
            if a == "all":
                parts.append(f"x_{i} = every non-NaN {f.name} value ({n:,})")
            elif "range" in a:
                lo, hi = a["range"]
                parts.append(f"x_{i} = every {f.name} value in [{lo:g}, {hi:g}] ({n:,})")
            else:
                parts.append(f"x_{i} in {len(a['values'])} listed values")
        return (f"{self.rows:,} problems: {'; '.join(parts)}; target {self.target}")


def _canon_axis(a: Any) -> Any:
    if a == "all":
        return "all"
    if isinstance(a, dict) and set(a) == {"range"} and len(a["range"]) == 2:
        return {"range": [float(a["range"][0]), float(a["range"][1])]}
    if isinstance(a, dict) and set(a) == {"values"} and len(a["values"]) >= 1:
        return {"values": [float(v) for v in a["values"]]}
    raise ValueError(f"a slice's logit must be \"all\", {{range = [lo, hi]}} or "
                     f"{{values = [...]}}, got {a!r}")


def axis_values(a: Any, fmt: "str | Format") -> np.ndarray:
    """The values one logit takes in a slice, in ``fmt``'s dtype (bit-pattern order for
    "all" and ranges; as listed, duplicates removed, for values)."""
    f = get_format(fmt)
    a = _canon_axis(a)
    if a == "all":
        return values_of_bits(f)
    if "range" in a:
        lo, hi = a["range"]
        if f.bits == 16:
            v = values_of_bits(f)
            w = v.astype(np.float64)
            return v[(w >= lo) & (w <= hi)]
        from precision_lab.numerics.metrics import ordinal
        from precision_lab.search.floats import from_ordinal

        olo, ohi = ordinal(to_format(np.array([lo]), f), f)[0], ordinal(
            to_format(np.array([hi]), f), f)[0]
        if ohi - olo > 1 << 26:
            raise ValueError(f"range [{lo}, {hi}] holds {ohi - olo + 1:,} {f.name} values; "
                             "at most 2**26 per logit")
        v = from_ordinal(np.arange(olo, ohi + 1), f)
        w = v.astype(np.float64)
        return v[(w >= lo) & (w <= hi)]
    vals = to_format(np.array(a["values"], dtype=np.float64), f)
    _, idx = np.unique(vals.view(f.uint_dtype), return_index=True)
    return vals[np.sort(idx)]


# --------------------------------------------------------------------------- the truth

def margin_ulps(fmt: "str | Format") -> float:
    """Bound on |approximate - true| ULP error of :func:`pair_truth` rows (see the module
    docstring)."""
    return math.ldexp(1.0, get_format(fmt).precision - 38)


@dataclass
class PairTruth:
    """The float64 truth of two-class rows with finite logits (see the module docstring).

    Attributes:
        L: approximation of the exact loss, relative error below 2**-40.
        q: exponent of ulp(exact loss) in the format.
        inf: the exact loss rounds to +inf.
        unsure: rows whose binade or overflow is not certain: for the reference.
        tiny: rows with d > 0 exact in float64 and t < 2**-30 ulp: there L = d + t with d the
            exact gap and t = log1p(exp(-d)) all but infinitesimal, so L sits just above d.
        d: the gap x_other - x_target (float64; exact where ``tiny``).
        t: log1p(exp(-|d|)) in float64 (relative error below 2**-48, or 0 below 2**-1074).
        base, t_tiny: derived: |c - L| = |(c - base) - t_tiny| (d and t where ``tiny``, L and
            0 elsewhere).
    """

    L: np.ndarray
    q: np.ndarray
    inf: np.ndarray
    unsure: np.ndarray
    tiny: np.ndarray
    d: np.ndarray
    t: np.ndarray
    base: np.ndarray = field(default_factory=lambda: np.zeros(0))
    t_tiny: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        # |c - L| = |(c - base) - t_tiny|: base = d, t_tiny = t where tiny; L and 0 elsewhere
        self.base = np.where(self.tiny, self.d, self.L)
        self.t_tiny = np.where(self.tiny, self.t, 0.0)


def _two_diff(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fl(a - b) and its exact rounding error (Knuth's TwoSum)."""
    s = a - b
    bb = s - a
    return s, (a - (s - bb)) + (-b - bb)


def pair_truth(x: np.ndarray, target: int, fmt: "str | Format") -> PairTruth:
    """The float64 truth of two-class rows (n, 2) of ``fmt`` with finite logits."""
    f = get_format(fmt)
    w = x.astype(np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        d, de = _two_diff(w[:, 1 - target], w[:, target])
        t = np.log1p(np.exp(-np.abs(d)))
        L = np.maximum(d, 0.0) + t
        qd = ulp_exponent_array(d, f)
        tiny = (d > 0) & (de == 0) & (t < np.ldexp(1.0, qd - 30))
        q = np.where(tiny, qd, ulp_exponent_array(L, f))
        m, _ = np.frexp(L)
        tight = 2.0 ** -38
        near_pow2 = (L >= f.smallest_normal * (1 - tight)) & (
            (np.abs(m - 0.5) <= tight) | (np.abs(m - 1.0) <= tight))
        thr = float(f.overflow_threshold)
        near_over = np.abs(L - thr) <= thr * tight
        inf = np.where(tiny, d >= thr, L > thr)
    return PairTruth(L, q, inf, ~tiny & (near_pow2 | near_over), tiny, d, t)


def _bins(err: np.ndarray) -> np.ndarray:
    """Histogram bin of each error: 0 for [0, 0.5), k for [2**(k-2), 2**(k-1)), the last for
    2**62 and beyond (errors must be finite and >= 0)."""
    _, e = np.frexp(err)  # err in [2**(e-1), 2**e); frexp(0) gives e = 0
    return np.where(err == 0, 0, np.clip(e + 1, 0, len(HIST_EDGES)))


class _Acc:
    """Running statistics of one implementation over a chunk."""

    def __init__(self) -> None:
        self.count = 0
        self.categories = {c: 0 for c in CATEGORIES}
        self.correct = 0
        self.hist = np.zeros(len(HIST_EDGES) + 1, dtype=np.int64)
        self.top: list[tuple[float, int, dict[str, Any]]] = []  # (certified error, order, case)
        self.order = 0
        self.examples: dict[str, dict[str, Any]] = {}

    def add_certified(self, x: np.ndarray, t: np.ndarray, m: Any, ref: Any, f: Format) -> None:
        """Rows measured by the certified reference (``m``: Metrics, ``ref``: ReferenceValues)."""
        cat = m.category
        stat = np.isin(cat, ("finite", "inf_match"))
        self.count += cat.size
        for c in CATEGORIES:
            self.categories[c] += int((cat == c).sum())
        cr = stat & (m.ulp_distance == 0)
        self.correct += int(cr.sum())
        err = np.where(stat, m.ulp_error, np.nan)
        # the [0, 0.5) bin is the correctly rounded one, decided on the bits (a float64 error
        # of a value a hair from a midpoint may read 0.5 exactly)
        bins = np.where(cr, 0, np.maximum(_bins(np.where(stat, err, 0.0)), 1))[stat]
        self.hist += np.bincount(bins, minlength=len(HIST_EDGES) + 1)
        for i in np.flatnonzero(~stat).tolist():
            c = str(cat[i])
            if c not in self.examples:
                self.examples[c] = _case(x, t, i, m, ref)
        if stat.any():
            idx = np.flatnonzero(stat)
            i = int(idx[np.argmax(err[idx])])
            self.offer(float(err[i]), _case(x, t, i, m, ref))

    def offer(self, err: float, case: dict[str, Any]) -> None:
        """A certified error and its case: kept if it is the largest so far (the first one
        among equals)."""
        self.top.append((err, self.order, case))
        self.order += 1
        self.top.sort(key=lambda r: (-r[0], r[1]))
        del self.top[1:]


def _case(x: np.ndarray, t: np.ndarray, i: int, m: Any, ref: Any) -> dict[str, Any]:
    stat = m.category[i] in ("finite", "inf_match")
    with np.errstate(invalid="ignore"):
        return {"logits": exact_list(x[i]), "target": int(t[i]),
                "computed": float(np.float64(m.computed[i])),
                "reference": float(np.float64(ref.values[i])),
                "reference_hi": float(ref.hi[i]), "reference_lo": float(ref.lo[i]),
                "ulp_error": float(m.ulp_error[i]) if stat else None,
                "ulp_distance": int(m.ulp_distance[i]) if stat else None,
                "relative_error": float(m.relative_error[i]) if stat else None,
                "category": str(m.category[i])}


def _certify(impl: Any, x: np.ndarray, t: np.ndarray, f: Format) -> tuple[Any, Any]:
    meas = measure(x[None], t[None], f, [impl])
    return meas.results[impl.key], meas.reference


def _pair_errors(c: np.ndarray, T: PairTruth, margin: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(approximate ULP error, histogram bin, rows the float64 truth cannot decide) of the
    computed values ``c`` (float64) of finite-truth rows.

    Rows within ``margin`` of a histogram edge are decided exactly where L = d + t with t
    infinitesimal (``T.tiny``): with delta = c - d exact and the edge E ulp a power of two,
    r = |delta| - E ulp is exact, and |c - L| = |delta| - sign(delta) t lies below the edge iff
    r < 0, or r = 0 and delta > 0 (t > 0); where |r| is not clearly above t, or delta is not
    exact, the row goes to the reference, as every other row near an edge does."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.ldexp(np.abs((c - T.base) - T.t_tiny), -T.q)
        m, e = np.frexp(err)  # err = m 2**e, m in [0.5, 1): between the edges 2**(e-1), 2**e
        bins = np.clip(e + 1, 0, len(HIST_EDGES))
        bins[err == 0] = 0
        scale = np.ldexp(1.0, e)
        near = np.isfinite(err) & (err > 0) & (
            (((m - 0.5) * scale <= margin) & (e >= 0))
            | (((1.0 - m) * scale <= margin) & (e >= -1)))
        idx = np.flatnonzero(near)
        undecided = near
        if idx.size:
            ci, di = c[idx], T.d[idx]
            delta, derr = _two_diff(ci, di)
            k = np.round(np.log2(err[idx])).astype(np.int64)
            r = np.abs(delta) - np.ldexp(1.0, k + T.q[idx])
            ti = T.t[idx]
            ok = T.tiny[idx] & (derr == 0) & ((r == 0) | (np.abs(r) > 2 * ti))
            below = np.where(r == 0, delta > 0, r < 0)
            edge_bin = np.clip(k + 2, 0, len(HIST_EDGES))  # the bin of 2**k itself
            bins[idx[ok]] = (edge_bin - below)[ok]
            undecided = near.copy()
            undecided[idx[ok]] = False
    return err, bins, undecided


def _pair_batch(impls: list[Any], accs: dict[str, _Acc], x: np.ndarray, t: np.ndarray,
                target: int, f: Format) -> int:
    """Two-class rows: the float64 truth for finite rows, the reference for the rest.
    Returns how many (row, implementation) pairs went to the certified reference."""
    certified = 0
    w = x.astype(np.float64)
    fin = np.isfinite(w).all(axis=1)
    special = np.flatnonzero(~fin)
    xf, tf = x[fin], t[fin]
    T = pair_truth(xf, target, f)
    margin = margin_ulps(f)
    for impl in impls:
        out = impl(x, t, f)
        acc = accs[impl.key]
        if special.size:
            m, ref = _certify(impl, x[special], t[special], f)
            acc.add_certified(x[special], t[special], m, ref, f)
            certified += special.size
        c = out[fin].astype(np.float64)
        cfin = np.isfinite(c)
        finite = cfin & ~T.inf
        err, bins, undecided = _pair_errors(c, T, margin)
        exact = T.unsure | (finite & undecided)
        ok = ~exact
        inf_match = T.inf & np.isposinf(c)
        cats = {"finite": finite & ok, "inf_match": inf_match & ok,
                "overflow": ~cfin & ~np.isnan(c) & ~T.inf & ok,
                "nan": np.isnan(c) & ok,
                "missed_inf": T.inf & ~inf_match & ~np.isnan(c) & ok}
        acc.count += int(ok.sum())
        for k, v in cats.items():
            acc.categories[k] += int(v.sum())
        b_ok = bins[cats["finite"]]
        acc.correct += int((b_ok == 0).sum()) + int(cats["inf_match"].sum())
        acc.hist += np.bincount(b_ok, minlength=len(HIST_EDGES) + 1)
        acc.hist[0] += int(cats["inf_match"].sum())
        for k in ("overflow", "nan", "missed_inf"):
            if k not in acc.examples and cats[k].any():
                i = np.flatnonzero(cats[k])[:1]
                m, ref = _certify(impl, xf[i], tf[i], f)
                acc.examples[k] = _case(xf[i], tf[i], 0, m, ref)
                certified += 1
        # rows the float64 truth cannot decide: every statistic from the reference
        ex = np.flatnonzero(exact)
        if ex.size:
            m, ref = _certify(impl, xf[ex], tf[ex], f)
            acc.add_certified(xf[ex], tf[ex], m, ref, f)
            certified += ex.size
        # the worst rows by the float64 truth: their certified errors give the maximum
        pick = np.flatnonzero(cats["finite"])
        if pick.size:
            top = float(err[pick].max())
            cand = pick[err[pick] >= top - 2 * margin]
            cand = cand[np.argsort(-err[cand], kind="stable")][:_MAX_CERTIFIED]
            m, ref = _certify(impl, xf[cand], tf[cand], f)
            stat = np.isin(m.category, ("finite", "inf_match"))
            e = np.where(stat, m.ulp_error, -np.inf)
            top_i = int(np.argmax(e))
            if stat[top_i]:
                acc.offer(float(e[top_i]), _case(xf[cand], tf[cand], top_i, m, ref))
            certified += cand.size
    return certified


def slice_chunk(spec_dict: dict[str, Any], chunk: int) -> dict[str, Any]:
    """Chunk ``chunk`` of the slice ``spec_dict`` (a resolved :class:`SliceSpec` as a dict):
    the job an executor runs.  Returns JSON data: rows, per implementation the counts, the
    histogram and the worst certified case, the rows sent to the reference, the software."""
    spec = SliceSpec.from_dict(spec_dict)
    f = get_format(spec.format)
    impls = [get_implementation(k) for k in spec.implementations]
    axes = [axis_values(a, f) for a in spec.logits]
    first = axes[0][chunk * spec.block:(chunk + 1) * spec.block]
    axes = [first] + axes[1:]
    shape = tuple(a.size for a in axes)
    total = math.prod(shape)
    V = len(axes)
    accs = {impl.key: _Acc() for impl in impls}
    certified = 0
    for start in range(0, total, _ROWS_PER_BATCH):
        idx = np.unravel_index(np.arange(start, min(total, start + _ROWS_PER_BATCH)), shape)
        x = np.stack([axes[k][idx[k]] for k in range(V)], axis=1)
        t = np.full(x.shape[0], spec.target, dtype=np.int64)
        if V == 2:
            certified += _pair_batch(impls, accs, x, t, spec.target, f)
        else:
            for impl in impls:
                m, ref = _certify(impl, x, t, f)
                accs[impl.key].add_certified(x, t, m, ref, f)
                certified += x.shape[0]
    out: dict[str, Any] = {}
    for k, a in accs.items():
        top = a.top[0] if a.top else None
        out[k] = {"count": a.count, "categories": a.categories, "correctly_rounded": a.correct,
                  "hist": a.hist.tolist(), "max_ulp_error": top[0] if top else None,
                  "max_case": top[2] if top else None,
                  "nonfinite_examples": dict(sorted(a.examples.items()))}
    return {"chunk": chunk, "rows": total, "certified_rows": certified, "implementations": out,
            "software": software()}


# --------------------------------------------------------------------------- merging

@dataclass
class SliceResult:
    """An exhaustive slice's statistics per implementation (``per_impl``: key -> dict with
    count, categories, correctly_rounded, hist, max_ulp_error, max_case, nonfinite_examples),
    over the chunks done (``complete`` when all)."""

    spec: SliceSpec
    chunks_done: int
    rows_done: int
    certified_rows: int
    per_impl: dict[str, dict[str, Any]]
    complete: bool
    margin: float
    seconds: float = 0.0
    computed_chunks: int = 0
    folder: "Path | None" = None

    def to_json(self) -> dict[str, Any]:
        return {"slice": self.spec.to_dict(), "covers": self.spec.describe(),
                "complete": self.complete, "chunks_done": self.chunks_done,
                "chunks": self.spec.chunks, "rows_done": self.rows_done,
                "rows": self.spec.rows, "certified_rows": self.certified_rows,
                "max_ulp_error_certified_to": 2 * self.margin,
                "hist_edges": list(HIST_EDGES), "implementations": self.per_impl,
                "bound": "upper (proven maximum)" if self.complete
                         else "partial: a lower bound until every chunk is done"}


def merge_chunks(spec: SliceSpec, docs: list[dict[str, Any]]) -> SliceResult:
    """Merge chunk results in chunk order; the maximum's case is that of the first chunk that
    reaches it."""
    docs = sorted(docs, key=lambda d: d["chunk"])
    per: dict[str, dict[str, Any]] = {}
    for k in spec.implementations:
        acc: dict[str, Any] = {"count": 0, "categories": {c: 0 for c in CATEGORIES},
                               "correctly_rounded": 0,
                               "hist": [0] * (len(HIST_EDGES) + 1), "max_ulp_error": None,
                               "max_case": None, "nonfinite_examples": {}}
        for d in docs:
            r = d["implementations"][k]
            acc["count"] += r["count"]
            for c in CATEGORIES:
                acc["categories"][c] += r["categories"][c]
            acc["correctly_rounded"] += r["correctly_rounded"]
            acc["hist"] = [a + b for a, b in zip(acc["hist"], r["hist"])]
            if r["max_ulp_error"] is not None and (acc["max_ulp_error"] is None
                                                   or r["max_ulp_error"] > acc["max_ulp_error"]):
                acc["max_ulp_error"] = r["max_ulp_error"]
                acc["max_case"] = r["max_case"]
            for c, ex in r["nonfinite_examples"].items():
                acc["nonfinite_examples"].setdefault(c, ex)
        acc["nonfinite_examples"] = dict(sorted(acc["nonfinite_examples"].items()))
        per[k] = acc
    rows = sum(int(d["rows"]) for d in docs)
    return SliceResult(spec, len(docs), rows, sum(int(d["certified_rows"]) for d in docs), per,
                       len(docs) == spec.chunks, margin_ulps(spec.format))


def run_slice(spec: SliceSpec, out_root: "str | Path", *, executor: Any = None,
              workers: int = 1, budget: "float | None" = None,
              force: bool = False) -> SliceResult:
    """Enumerate the slice into ``<out_root>/<spec.name>/`` (``slice.json``, the manifest,
    ``chunks/``).  Finished chunks in the folder are reused; with ``budget`` no new chunk
    starts after that many seconds (rerun to continue).  The folder is "complete" only when
    every chunk is done.

    Raises:
        ValueError: a bad spec.  RunError: the folder may not be used.  ComputeError: a chunk
        failed (finished chunks are kept).
    """
    spec = spec.resolved()
    names = ", ".join(spec.implementations)
    folder = ChunkFolder(out_root, spec.name, kind="exhaustive",
                         spec={"slice": spec.to_dict(), "software": software()},
                         question=f"What is the largest ULP error of {names} over every "
                                  f"input of the slice {spec.name}?",
                         description=spec.describe(), sub="chunks", force=force)
    t0 = time.perf_counter()
    with folder:
        done = folder.done()
        folder.check_versions(done)

        def got(i: int, doc: dict[str, Any], secs: float) -> None:
            folder.check_versions({i: doc})
            folder.save(i, doc, secs)
            done[i] = doc

        todo = [i for i in range(spec.chunks) if i not in done]
        deadline = None if budget is None else time.monotonic() + budget
        computed = drive(executor, slice_chunk, (spec.to_dict(),), todo, got,
                         deadline=deadline, in_flight=max(1, 2 * workers))
        result = merge_chunks(spec, list(done.values()))
        result.seconds = time.perf_counter() - t0
        result.computed_chunks = computed
        result.folder = folder.root
        def write(w: Any) -> None:
            w.json("slice.json", result.to_json())
            write_summary(w, folder.name, folder.question, ["classes"], [
                summary_row(0, {"classes": len(spec.logits)}, k, spec.format, v["count"],
                            v["categories"], v["correctly_rounded"], v["max_ulp_error"])
                for k, v in result.per_impl.items()])
            w.text("report.md", slice_markdown(result, folder.question))

        if result.complete:
            folder.publish(write,
                           counts={"rows": result.rows_done,
                                   "certified_rows": result.certified_rows},
                           chunks=[folder.key(i) for i in range(spec.chunks)],
                           seconds=result.seconds)
    return result


def slice_markdown(result: SliceResult, question: str) -> str:
    """report.md of a slice folder: per implementation the proven maximum and its input."""
    s = result.spec
    lines = [f"# Exhaustive slice {s.name}", "", question, "", f"Covers {s.describe()}; "
             f"{result.rows_done:,} inputs evaluated"
             + ("" if result.complete else f" ({result.chunks_done} of {s.chunks} chunks)")
             + f". The maximum is the certified error of an input within "
             f"{2 * result.margin:.2g} ULP of the true maximum; the counts are exact.", "",
             "| implementation | max ULP error | input (logits; target) | computed | "
             "correctly rounded truth | correctly rounded | inf/NaN |",
             "|---|---|---|---|---|---|---|"]
    for k, v in result.per_impl.items():
        c = v["max_case"]
        nf = sum(v["categories"][x] for x in ("overflow", "nan", "missed_inf"))
        stat = v["categories"]["finite"] + v["categories"]["inf_match"]
        share = f"{100 * v['correctly_rounded'] / stat:.4f}%" if stat else "—"
        lines.append(f"| `{k}` | {_fmt(v['max_ulp_error'])} | "
                     + (f"{' '.join(repr(x) for x in c['logits'])}; {c['target']} | "
                        f"{c['computed']!r} | {c['reference']!r}" if c else "— | — | —")
                     + f" | {share} | {nf:,} |")
    lines.append("")
    return "\n".join(lines)


def _fmt(v: "float | None") -> str:
    return "—" if v is None else f"{v:.6g}"


# --------------------------------------------------------------------------- config

def parse_slice(d: Any, file: str = "<config>", where: str = "slice") -> SliceSpec:
    """A :class:`SliceSpec` from a config table; ConfigError names the key and the problem."""
    if not isinstance(d, dict):
        raise ConfigError(file, where, "must be a table")
    allowed = ("name", "format", "implementations", "logits", "target", "block")
    for k in d:
        if k not in allowed:
            raise ConfigError(file, f"{where}.{k}", "unknown key", allowed)
    for k in ("name", "format", "logits"):
        if k not in d:
            raise ConfigError(file, f"{where}.{k}", "is required")
    name = d["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(file, f"{where}.name", f"{name!r} is not a folder name (letters, "
                          "digits, '_', '.', '-')")
    impls = d.get("implementations", "all")
    if impls == "all":
        impls = list(REGISTRY)
    if not isinstance(impls, list) or not impls:
        raise ConfigError(file, f"{where}.implementations", "must be \"all\" or a list of keys")
    try:
        return SliceSpec(name, str(d["format"]), tuple(impls), tuple(d["logits"]),
                         int(d.get("target", 0)), int(d.get("block", 0))).resolved()
    except ValueError as exc:
        raise ConfigError(file, where, str(exc)) from None
