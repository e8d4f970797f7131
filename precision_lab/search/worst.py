"""Worst-case search: inputs that maximise an implementation's ULP error.

A black-box search in the spirit of Zimmermann's worst-case searches for libm functions and
of floating-point fuzzers.  It runs in *rounds*; round r is a pure function of the spec and r
(its generator is ``numpy.random.Generator(PCG64(SeedSequence([seed, r])))``), so rounds run
in any order, in this process, in local worker processes or on a Dask cluster, with the same
bytes.  One round:

1. draws ``restarts`` random rows from the structured families
   (:mod:`precision_lab.search.families`: margin, scale, offset, near-ties, tail mass), in
   turn;
2. takes the ``climbers`` worst of them and improves each by local moves for ``steps`` steps:
   every step proposes ``neighbours`` rows around the current one (one logit, the target's
   logit or every logit moved by +-2**k ULPs along the format's floats; the whole row shifted
   by a real amount, rounded once) and moves to the worst proposal if it beats the current row;
3. keeps the ``keep`` worst rows it evaluated, and per non-finite category (an inf or NaN
   where the truth is finite, ...) how often it occurred and its first example.

Every row is measured with :func:`precision_lab.experiment.measure.measure`: the certified,
correctly rounded reference and :func:`precision_lab.numerics.metrics.ulp_error` against its
unrounded value.  The objective is the ULP error of finite results; non-finite results are
counted apart, never ranked.

A search's result is the worst of rounds 0..R-1 (ties: the earlier round, then the order
within the round); R is what the time budget allowed (or ``rounds``), and ``--rounds R`` with
the same seed replays it exactly.  A search writes ``<out>/<name>/`` (:func:`run_search`):
``search.json`` (the result), ``cases.npy`` (the worst rows, float64 holding the format's values
exactly, one row per case: ``precision-lab explain --file cases.npy --row I --target T
--format F`` replays case I), the manifest, and ``rounds/`` (every finished round; a rerun with
the same parameters continues from them).
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from precision_lab.experiment.measure import measure
from precision_lab.implementations import get_implementation
from precision_lab.numerics.formats import Format, get_format, to_format
from precision_lab.numerics.metrics import CATEGORIES
from precision_lab.search.chunks import ChunkFolder, drive, software
from precision_lab.search.families import FAMILIES, draw
from precision_lab.search.floats import exact_list, step
from precision_lab.search.summary import summary_row, write_summary

__all__ = ["SearchSpec", "Case", "SearchResult", "search_round", "merge_rounds", "run_search",
           "default_name", "score_rows"]

#: Score of a row whose result is not finite (or whose truth is not): below every ULP error.
NONFINITE_SCORE = -1.0
_STAT = ("finite", "inf_match")


@dataclass(frozen=True)
class SearchSpec:
    """What a search looks for and how hard each round works.

    Attributes:
        implementation: registry key or import path (must be importable on every worker).
        format: the format of logits and loss.
        classes: V, logits per row (>= 2).
        seed: the search's seed.
        restarts: random rows drawn per round (0: by V, about 2**17 logits per round).
        climbers: rows refined by local moves per round.
        steps: local-move steps per climber.
        neighbours: proposals per climber and step (0: by V).
        keep: worst cases kept.
    """

    implementation: str
    format: str
    classes: int
    seed: int = 0
    restarts: int = 0
    climbers: int = 4
    steps: int = 24
    neighbours: int = 0
    keep: int = 8

    def resolved(self) -> "SearchSpec":
        """The spec with its defaults made explicit (what a folder records); validates."""
        f = get_format(self.format)
        if self.classes < 2:
            raise ValueError(f"classes must be at least 2, got {self.classes}")
        for name in ("climbers", "steps", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.restarts < 0 or self.neighbours < 0 or self.seed < 0:
            raise ValueError("restarts, neighbours and seed must be >= 0")
        impl = get_implementation(self.implementation)
        V = self.classes
        restarts = self.restarts or int(np.clip((1 << 17) // V, 16, 512))
        neighbours = self.neighbours or int(np.clip((1 << 13) // V, 4, 48))
        return SearchSpec(impl.key, f.name, V, self.seed, restarts, self.climbers, self.steps,
                          neighbours, self.keep)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def evaluations_per_round(self) -> int:
        return self.restarts + self.climbers * self.steps * self.neighbours


@dataclass(frozen=True)
class Case:
    """One evaluated input and what the implementation made of it.

    Attributes:
        logits: the row's values (exact: the format's values as Python floats).
        target: the target class.
        computed: the implementation's loss (a value of the format).
        reference: the correctly rounded truth in the format.
        reference_hi, reference_lo: the unrounded truth as a double-double (hi + lo).
        ulp_error: |computed - exact| / ulp(exact) (None unless both are finite).
        ulp_distance: floats between computed and the correctly rounded truth.
        relative_error: |computed - exact| / |exact|.
        category: "finite", "inf_match", "overflow", "nan", "missed_inf" or "undefined".
        family: the family the row descends from.
        round: the round that found it.
    """

    logits: list[float]
    target: int
    computed: float
    reference: float
    reference_hi: float
    reference_lo: float
    ulp_error: "float | None"
    ulp_distance: "int | None"
    relative_error: "float | None"
    category: str
    family: str
    round: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Case":
        def num(v: Any) -> Any:
            return float(v) if isinstance(v, str) else v
        return cls(logits=[float(v) for v in d["logits"]], target=int(d["target"]),
                   computed=float(d["computed"]), reference=float(d["reference"]),
                   reference_hi=float(d["reference_hi"]), reference_lo=float(d["reference_lo"]),
                   ulp_error=num(d["ulp_error"]), ulp_distance=d["ulp_distance"],
                   relative_error=num(d["relative_error"]), category=str(d["category"]),
                   family=str(d["family"]), round=int(d["round"]))


@dataclass
class SearchResult:
    """The worst of a search's rounds 0..rounds-1.

    Attributes:
        spec: the resolved spec.
        rounds: rounds merged; ``evaluations``: rows evaluated in them.
        cases: the worst cases, worst first (at most ``spec.keep``).
        nonfinite: per non-finite category, {"count": n, "example": Case}.
        categories: evaluations per category (finite, inf_match, overflow, nan, ...).
        correctly_rounded: evaluations whose result was correctly rounded (of inputs chosen
            to be bad: not a rate of anything).
        seconds: wall seconds of the computation in this call (not part of the result).
        computed_rounds, reused_rounds: rounds computed now / loaded from the folder.
        folder: where it was written (None if not written).
    """

    spec: SearchSpec
    rounds: int
    evaluations: int
    cases: list[Case]
    nonfinite: dict[str, dict[str, Any]] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    correctly_rounded: int = 0
    seconds: float = 0.0
    computed_rounds: int = 0
    reused_rounds: int = 0
    folder: "Path | None" = None

    @property
    def worst(self) -> "Case | None":
        return self.cases[0] if self.cases else None

    @property
    def max_ulp_error(self) -> "float | None":
        w = self.worst
        return None if w is None else w.ulp_error

    def to_json(self, folder: "Path | None" = None) -> dict[str, Any]:
        """The object ``precision-lab search --json`` prints (and ``search.json`` holds);
        ``replay`` names ``cases.npy`` inside ``folder`` (relative to the search's folder if
        None, so that the folder's files do not depend on where it was written)."""
        w = self.worst
        s = self.spec
        cases = "cases.npy" if folder is None else str(Path(folder) / "cases.npy")
        replay = None if w is None else (f"precision-lab explain --file {cases} --row 0 "
                                         f"--target {w.target} --format {s.format}")
        return {
            "implementation": s.implementation, "format": s.format, "classes": s.classes,
            "seed": s.seed, "rounds": self.rounds, "evaluations": self.evaluations,
            "max_ulp_error": None if w is None else w.ulp_error,
            "logits": None if w is None else w.logits,
            "target": None if w is None else w.target,
            "computed": None if w is None else w.computed,
            "reference": None if w is None else w.reference,
            "ulp_distance": None if w is None else w.ulp_distance,
            "relative_error": None if w is None else w.relative_error,
            "family": None if w is None else w.family,
            "bound": "lower",
            "reproduce": (f"precision-lab search --impl {s.implementation} --format {s.format} "
                          f"--classes {s.classes} --seed {s.seed} --rounds {self.rounds}"),
            "replay": replay,
            "cases": [asdict(c) for c in self.cases],
            "nonfinite": {k: {"count": v["count"], "example": asdict(v["example"])}
                          for k, v in self.nonfinite.items()},
            "categories": self.categories, "correctly_rounded": self.correctly_rounded,
            "spec": s.to_dict(),
        }


# --------------------------------------------------------------------------- scoring

def score_rows(impl: Any, x: np.ndarray, t: np.ndarray, f: Format) -> dict[str, np.ndarray]:
    """Measure rows (n, V) of ``f``: the implementation's values and their errors against the
    certified reference, plus ``score`` (the ULP error; :data:`NONFINITE_SCORE` where the
    result or the truth is not finite)."""
    meas = measure(x[None], t[None], f, [impl])
    m = meas.results[impl.key]
    stat = np.isin(m.category, _STAT)
    err = np.where(stat, m.ulp_error, np.nan)
    score = np.where(stat & np.isfinite(err), err, NONFINITE_SCORE)
    return {"computed": m.computed, "reference": meas.reference.values,
            "hi": meas.reference.hi, "lo": meas.reference.lo, "ulp_error": err,
            "ulp_distance": m.ulp_distance, "relative_error": m.relative_error,
            "category": m.category, "score": score}


def _case(x: np.ndarray, t: np.ndarray, s: dict[str, np.ndarray], i: int, family: str,
          r: int) -> Case:
    stat = s["category"][i] in _STAT
    with np.errstate(invalid="ignore"):
        return Case(exact_list(x[i]), int(t[i]), float(np.float64(s["computed"][i])),
                    float(np.float64(s["reference"][i])), float(s["hi"][i]), float(s["lo"][i]),
                    float(s["ulp_error"][i]) if stat else None,
                    int(s["ulp_distance"][i]) if stat else None,
                    float(s["relative_error"][i]) if stat else None,
                    str(s["category"][i]), family, r)


class _Keeper:
    """The worst rows seen so far (deduplicated) and the non-finite outcomes."""

    def __init__(self, keep: int, r: int) -> None:
        self.keep = keep
        self.r = r
        self.best: list[tuple[float, int, Case]] = []
        self.seen: set[tuple[bytes, int]] = set()
        self.order = 0
        self.nonfinite: dict[str, dict[str, Any]] = {}
        self.evaluations = 0
        self.categories = {c: 0 for c in CATEGORIES}
        self.correct = 0

    def add(self, x: np.ndarray, t: np.ndarray, s: dict[str, np.ndarray],
            families: "list[str] | str") -> None:
        n = x.shape[0]
        self.evaluations += n
        cats = s["category"]
        for c in CATEGORIES:
            self.categories[c] += int((cats == c).sum())
        self.correct += int((np.isin(cats, _STAT) & (s["ulp_distance"] == 0)).sum())
        fam = [families] * n if isinstance(families, str) else families
        for j in np.flatnonzero(s["score"] == NONFINITE_SCORE).tolist():
            cat = str(cats[j])
            if cat in _STAT:  # finite truth and result but no finite error: cannot happen
                continue
            d = self.nonfinite.setdefault(cat, {"count": 0, "example": None})
            d["count"] += 1
            if d["example"] is None:
                d["example"] = _case(x, t, s, j, fam[j], self.r)
        floor = self.best[-1][0] if len(self.best) >= self.keep else -np.inf
        cand = np.flatnonzero(s["score"] > max(floor, NONFINITE_SCORE))
        # stable: the worst first, the earlier row first among equals
        cand = cand[np.argsort(-s["score"][cand], kind="stable")][: 4 * self.keep]
        for i in cand.tolist():
            key = (x[i].tobytes(), int(t[i]))
            if key in self.seen:
                continue
            self.seen.add(key)
            self.best.append((float(s["score"][i]), self.order, _case(x, t, s, i, fam[i],
                                                                       self.r)))
            self.order += 1
        self.best.sort(key=lambda b: (-b[0], b[1]))
        del self.best[self.keep:]


# --------------------------------------------------------------------------- one round

def _propose(rng: np.random.Generator, x: np.ndarray, t: int, n: int, f: Format) -> np.ndarray:
    """``n`` neighbours of the row ``x`` (values of ``f``)."""
    V = x.shape[0]
    rows = np.broadcast_to(x, (n, V)).copy()
    kind = rng.random(n)
    mag = np.exp2(rng.integers(0, 13, n)).astype(np.int64) * np.where(rng.random(n) < 0.5, -1, 1)
    ks = np.zeros((n, V), dtype=np.int64)
    one = kind < 0.45
    j = rng.integers(0, V, n)
    ks[np.flatnonzero(one), j[one]] = mag[one]
    tgt = (kind >= 0.45) & (kind < 0.65)
    ks[np.flatnonzero(tgt), t] = mag[tgt]
    every = (kind >= 0.65) & (kind < 0.85)
    small = rng.integers(-4, 5, (n, V))
    ks[every] = small[every]
    moved = step(rows, ks, f)
    shift = kind >= 0.85
    if shift.any():
        delta = np.exp2(rng.uniform(-12, 4, int(shift.sum())))
        delta *= np.where(rng.random(delta.size) < 0.5, -1.0, 1.0)
        with np.errstate(invalid="ignore", over="ignore"):
            w = moved[shift].astype(np.float64) + delta[:, None]
        moved[shift] = to_format(np.clip(w, -f.max_finite, f.max_finite), f)
    return moved


def search_round(spec_dict: dict[str, Any], r: int) -> dict[str, Any]:
    """Round ``r`` of the search ``spec_dict`` (a resolved :class:`SearchSpec` as a dict): the
    job an executor runs.  Returns {"round", "evaluations", "cases", "nonfinite",
    "software"} (JSON data)."""
    spec = SearchSpec(**spec_dict)
    f = get_format(spec.format)
    impl = get_implementation(spec.implementation)
    V = spec.classes
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([spec.seed, r])))
    keeper = _Keeper(spec.keep, r)
    # 1. restarts, split evenly over the families
    per = -(-spec.restarts // len(FAMILIES))
    xs, ts, fams = [], [], []
    for fam in FAMILIES:
        x, t = draw(fam, rng, per, V, f)
        xs.append(x)
        ts.append(t)
        fams += [fam] * per
    x = np.concatenate(xs)[: spec.restarts]
    t = np.concatenate(ts)[: spec.restarts]
    fams = fams[: spec.restarts]
    s = score_rows(impl, x, t, f)
    keeper.add(x, t, s, fams)
    # 2. local moves from the worst restarts (distinct rows)
    order = np.argsort(-s["score"], kind="stable")
    starts: list[int] = []
    seen: set[tuple[bytes, int]] = set()
    for i in order.tolist():
        k = (x[i].tobytes(), int(t[i]))
        if k not in seen:
            seen.add(k)
            starts.append(i)
        if len(starts) == spec.climbers:
            break
    cur_x = x[starts].copy()
    cur_t = t[starts].copy()
    cur_s = s["score"][starts].copy()
    cur_f = [fams[i] for i in starts]
    nb = spec.neighbours
    for _ in range(spec.steps):
        props = np.concatenate([_propose(rng, cur_x[c], int(cur_t[c]), nb, f)
                                for c in range(len(starts))])
        pt = np.repeat(cur_t, nb)
        ps = score_rows(impl, props, pt, f)
        keeper.add(props, pt, ps, [fm for fm in cur_f for _ in range(nb)])
        sc = ps["score"].reshape(len(starts), nb)
        best = sc.argmax(axis=1)
        for c in range(len(starts)):
            if sc[c, best[c]] > cur_s[c]:
                cur_x[c] = props[c * nb + best[c]]
                cur_s[c] = sc[c, best[c]]
    return {"round": r, "evaluations": keeper.evaluations, "categories": keeper.categories,
            "correctly_rounded": keeper.correct,
            "cases": [asdict(c) for _, _, c in keeper.best],
            "nonfinite": {k: {"count": v["count"], "example": asdict(v["example"])}
                          for k, v in sorted(keeper.nonfinite.items())},
            "software": software()}


def merge_rounds(spec: SearchSpec, docs: list[dict[str, Any]]) -> SearchResult:
    """The worst of the given rounds (in round order): ties go to the earlier round."""
    docs = sorted(docs, key=lambda d: d["round"])
    ranked: list[tuple[float, int, int, Case]] = []
    nonfinite: dict[str, dict[str, Any]] = {}
    evaluations = correct = 0
    categories = {c: 0 for c in CATEGORIES}
    for d in docs:
        evaluations += int(d["evaluations"])
        correct += int(d["correctly_rounded"])
        for c in CATEGORIES:
            categories[c] += int(d["categories"][c])
        for k, c in enumerate(d["cases"]):
            case = Case.from_dict(c)
            ranked.append((-(case.ulp_error or 0.0), case.round, k, case))
        for cat, v in d["nonfinite"].items():
            acc = nonfinite.setdefault(cat, {"count": 0, "example": None})
            acc["count"] += int(v["count"])
            if acc["example"] is None:
                acc["example"] = Case.from_dict(v["example"])
    ranked.sort(key=lambda r: r[:3])
    cases: list[Case] = []
    seen: set[tuple[tuple[float, ...], int]] = set()
    for *_, case in ranked:
        key = (tuple(case.logits), case.target)
        if key not in seen:
            seen.add(key)
            cases.append(case)
        if len(cases) == spec.keep:
            break
    return SearchResult(spec, len(docs), evaluations, cases, dict(sorted(nonfinite.items())),
                        categories, correct)


# --------------------------------------------------------------------------- a whole search

def default_name(spec: SearchSpec) -> str:
    """``search_<impl>_<format>_v<V>_s<seed>`` (an import path made file-name safe)."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.implementation)
    return f"search_{key}_{spec.format}_v{spec.classes}_s{spec.seed}"


def _prefix(done: dict[int, Any]) -> int:
    r = 0
    while r in done:
        r += 1
    return r


def run_search(spec: SearchSpec, out_root: "str | Path", *, budget: "float | None" = 60.0,
               rounds: "int | None" = None, executor: Any = None, workers: int = 1,
               name: "str | None" = None, force: bool = False) -> SearchResult:
    """Search for the worst inputs of ``spec`` and write ``<out_root>/<name>/``.

    Rounds already in the folder (same spec and software) are reused; new rounds are computed
    until ``budget`` seconds have passed (no new round starts after it) or, with ``rounds``,
    until rounds 0..rounds-1 are done, whichever comes first; ``budget=None`` means no time
    limit (then ``rounds`` is required).  The result merges rounds 0..R-1 (R = ``rounds``
    if given and reached).  ``workers`` is how many rounds run at once on ``executor``.

    Raises:
        ValueError: a bad spec or neither budget nor rounds.
        RunError: the folder may not be used (another search's, locked, unwritable).
        ComputeError: a round failed (finished rounds are kept).
    """
    spec = spec.resolved()
    if budget is None and rounds is None:
        raise ValueError("give a time budget (--budget SECONDS) or a number of rounds "
                         "(--rounds N)")
    if budget is not None and budget <= 0:
        raise ValueError(f"--budget must be positive seconds, got {budget}")
    if rounds is not None and rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    name = name or default_name(spec)
    folder = ChunkFolder(out_root, name, kind="search", spec={"search": spec.to_dict(),
                                                              "software": software()},
                         question=f"Which inputs maximise the ULP error of {spec.implementation}"
                                  f" in {spec.format} at V = {spec.classes}?",
                         description="Black-box worst-case search (precision_lab.search.worst): "
                                     "structured random restarts, then local moves over the "
                                     "format's floats; the errors are lower bounds.",
                         sub="rounds", force=force)
    t0 = time.perf_counter()
    with folder:
        done = folder.done()
        folder.check_versions(done)
        reused = len(done)
        deadline = None if budget is None else time.monotonic() + budget
        limit = rounds if rounds is not None else 1 << 40

        def todo():
            r = 0
            while r < limit:
                if r not in done:
                    yield r
                r += 1

        def got(r: int, doc: dict[str, Any], secs: float) -> None:
            folder.check_versions({r: doc})
            folder.save(r, doc, secs)
            done[r] = doc

        computed = drive(executor, search_round, (spec.to_dict(),), todo(), got,
                         deadline=deadline, in_flight=max(1, 2 * workers))
        R = min(_prefix(done), limit)
        if R == 0:
            raise ValueError(f"the budget of {budget} s ended before the first round finished; "
                             "give a larger --budget")
        result = merge_rounds(spec, [done[r] for r in range(R)])
        result.seconds = time.perf_counter() - t0
        result.computed_rounds = computed
        result.reused_rounds = min(reused, R)
        result.folder = folder.root

        def write(w: Any) -> None:
            w.json("search.json", result.to_json())
            w.bytes("cases.npy", _npy(np.array([c.logits for c in result.cases],
                                               dtype=np.float64).reshape(-1, spec.classes)))
            write_summary(w, folder.name, folder.question, ["classes"], [summary_row(
                0, {"classes": spec.classes}, spec.implementation, spec.format,
                result.evaluations, result.categories, result.correctly_rounded,
                result.max_ulp_error)])
            w.text("report.md", search_markdown(result, folder.question))
        folder.publish(write, counts={"rounds": R, "evaluations": result.evaluations},
                       chunks=[folder.key(r) for r in range(R)], seconds=result.seconds)
    return result


def search_markdown(result: SearchResult, question: str) -> str:
    """report.md of a search folder: the worst cases and how to replay them."""
    s = result.spec
    doc = result.to_json()
    lines = [f"# Worst-case search: {s.implementation}, {s.format}, V = {s.classes}", "",
             question, "",
             f"{result.rounds} rounds (seed {s.seed}), {result.evaluations:,} inputs. The errors "
             "are lower bounds: the worst inputs found, not a proof.", "",
             "| # | ULP error | logits | target | computed | correctly rounded truth | family |",
             "|---|---|---|---|---|---|---|"]
    for i, c in enumerate(result.cases):
        lines.append(f"| {i} | {c.ulp_error:.6g} | {' '.join(repr(v) for v in c.logits)} | "
                     f"{c.target} | {c.computed!r} | {c.reference!r} | {c.family} |")
    for cat, v in result.nonfinite.items():
        ex = v["example"]
        lines += ["", f"Non-finite results ({cat}) on {v['count']:,} inputs, e.g. logits "
                      f"{ex.logits} target {ex.target}: {ex.computed!r} (truth "
                      f"{ex.reference!r})."]
    lines += ["", f"Replay case I: `precision-lab explain --file cases.npy --row I --target T "
                  f"--format {s.format}`.", f"Reproduce: `{doc['reproduce']}`.", ""]
    return "\n".join(lines)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()
