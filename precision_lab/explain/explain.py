"""Explain one input, as numbers: the correctly rounded truth, every implementation's value and
error, where each step-wise implementation loses accuracy, the condition number and the bounds.

Python API::

    from precision_lab.explain.explain import explain
    e = explain(["20", "0", "1", "2"], 0, "float32")
    e.reference, e.implementations["torch"].ulp_error, e.condition_number

The report layer turns an :class:`Explanation` into a verdict in words
(:mod:`precision_lab.report.explain_text`); the CLI's ``precision-lab explain`` prints it.

Inputs are rounded ONCE, correctly, from their exact values to the format: a decimal string is
read as the exact rational it denotes, an integer as itself, a float as its binary value (the
explanation lists the logits that changed).  Everything is then computed from those format
values with the function the runner measures with
(:func:`precision_lab.experiment.measure.measure`), so the numbers are the ones a run records.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from precision_lab.experiment.measure import measure
from precision_lab.implementations import from_torch, get_implementation
from precision_lab.implementations.registry import default_keys
from precision_lab.numerics.conditioning import bhh_loss_bound, condition_number, derived_loss_bound
from precision_lab.numerics.formats import FORMAT_NAMES, Format, get_format, round_to
from precision_lab.numerics.metrics import NO_DISTANCE

__all__ = ["explain", "Explanation", "ImplValue", "ExplainInputError", "parse_logits",
           "load_row", "show"]


class ExplainInputError(ValueError):
    """Bad input: the message names the option, the value and what is allowed."""

    def __init__(self, option: str, value: Any, allowed: str):
        self.option, self.value, self.allowed = option, value, allowed
        super().__init__(f"{option}: {value!r} is not valid; {allowed}")


@dataclass(frozen=True)
class ImplValue:
    """One implementation's result on the row.

    ``ulp_error``: |computed - exact| / ulp(exact) (0 for the same infinity as the truth, None
    where it is undefined: NaN, or an infinity against a finite truth); ``ulp_distance``:
    floats between computed and the correctly rounded truth (None where a NaN is involved);
    ``correctly_rounded``: the same float as the truth (NaN only when the truth is NaN)."""

    implementation: str
    description: str
    value: float
    repr: str
    ulp_error: "float | None"
    ulp_distance: "int | None"
    correctly_rounded: bool
    category: str
    error: "str | None" = None


@dataclass(frozen=True)
class Explanation:
    """Everything known about one row of logits and one target in one format.

    Attributes:
        format: the format of the logits and of the loss.
        logits, logits_repr: the logits as stored in the format (floats; shortest decimals).
        rounded_inputs: {"index", "given", "stored"} for every logit that rounding changed.
        target: the target class.
        reference, reference_repr: the correctly rounded loss.
        exact: the unrounded loss as a decimal string, to the digits the reference guarantees
            (at most 20).
        exact_hi, exact_lo: float64 double-double of the unrounded loss.
        softmax_target: softmax(x)[t] = exp(-loss), float64.
        lse: log sum_j exp(x_j), float64 (x_t + loss).
        condition_number: componentwise relative condition number of the loss (None where the
            row is not finite).
        bounds: relative error of the loss (units of u = 2^-p): "derived_lse" and
            "derived_lse_log1p" are rigorous bounds under the library error model
            (:data:`precision_lab.numerics.conditioning.LIBRARY_ULP`); "bhh_shifted" and
            "bhh_unshifted" are Blanchard-Higham-Higham's leading-order estimates (None where
            they do not apply).
        implementations: {key: :class:`ImplValue`}, registry order.
        attribution: {key: the per-step attribution of a step-wise implementation (a dict of
            numbers), or {"error": message}}.
        fused: torch's fused kernel against composites ({"identical_to": [...], ...}) or None.
        unit_roundoff: u of the format.
    """

    format: str
    logits: list[float]
    logits_repr: list[str]
    rounded_inputs: list[dict[str, Any]]
    target: int
    reference: float
    reference_repr: str
    exact: str
    exact_hi: float
    exact_lo: float
    softmax_target: float
    lse: float
    condition_number: "float | None"
    bounds: dict[str, "float | None"]
    implementations: dict[str, ImplValue]
    attribution: dict[str, Any] = field(default_factory=dict)
    fused: "dict[str, Any] | None" = None
    unit_roundoff: float = 0.0

    @property
    def finite_input(self) -> bool:
        return all(math.isfinite(v) for v in self.logits)


def show(v: Any, f: Format) -> str:
    """A value of format ``f`` as its shortest decimal string (numpy's), e.g. 2.289393e-08."""
    return str(np.asarray(v).astype(f.np_dtype).reshape(())[()])


def parse_logits(text: str) -> list[str]:
    """Comma-separated logits as strings (kept exact: they are rounded once, later).

    Raises:
        ExplainInputError: empty, or an entry that is not a number (inf and -inf are allowed).
    """
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ExplainInputError("--logits", text, "give comma-separated numbers, e.g. '20,0,1,2'")
    for p in parts:
        if _exact_of(p) is None:
            raise ExplainInputError("--logits", p, "each logit must be a number (e.g. 20, -1.5, "
                                    "1e3, inf, -inf, nan); separate them with commas")
    return parts


def _exact_of(v: Any) -> "Fraction | float | int | None":
    """The exact value a user input denotes: Fraction of a decimal string, an int, a float's
    binary value; float inf/nan for those words; None if it is not a number."""
    if isinstance(v, str):
        s = v.strip().lower().replace("_", "")
        if s in ("inf", "+inf", "infinity", "+infinity"):
            return math.inf
        if s in ("-inf", "-infinity"):
            return -math.inf
        if s == "nan":
            return math.nan
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return None


def _round_inputs(values: Sequence[Any], f: Format) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Round each value once, correctly, from its exact value to ``f``; list the changed."""
    out = np.empty(len(values), dtype=f.np_dtype)
    changed = []
    for i, v in enumerate(values):
        exact = _exact_of(v)
        if exact is None:
            raise ExplainInputError("--logits", v, "each logit must be a number")
        r = round_to(exact, f)
        out[i] = r
        same = (isinstance(exact, float) and math.isnan(exact) and math.isnan(float(r))) or (
            not (isinstance(exact, float) and math.isnan(exact))
            and (float(r) == exact if isinstance(exact, float) or math.isinf(float(r))
                 else Fraction(float(r)) == exact))
        if not same:
            changed.append({"index": i, "given": str(v), "stored": show(r, f)})
    return out, changed


def load_row(path: Path, row: Optional[int]) -> list[Any]:
    """One row of logits from a ``.npy`` or ``.pt`` file: shape (V,) or (N, V).

    Floats keep their stored values (bfloat16 included: numpy stores it as 2-byte void, read
    back as bfloat16); integers stay exact Python ints (rounded once, later).

    Raises:
        ExplainInputError: missing or unreadable file, wrong shape, bad ``row``.
    """
    if not path.exists():
        raise ExplainInputError("--file", str(path), "no such file; give an existing .npy or "
                                ".pt file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise ExplainInputError("--file", str(path), f"cannot be read as .npy ({exc})") \
                from None
    elif path.suffix in (".pt", ".pth"):
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ExplainInputError("--file", str(path), f"cannot be read as .pt ({exc})") \
                from None
        if not isinstance(obj, torch.Tensor):
            raise ExplainInputError("--file", str(path), "the .pt file must hold one tensor")
        arr = from_torch(obj)
    else:
        raise ExplainInputError("--file", str(path), "allowed file types: .npy, .pt")
    if arr.dtype.kind == "V" and arr.dtype.itemsize == 2:
        arr = arr.view(get_format("bfloat16").np_dtype)  # how numpy stores ml_dtypes' bfloat16
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    is_float = arr.dtype.kind == "f" or arr.dtype == get_format("bfloat16").np_dtype
    if not is_float and arr.dtype.kind not in "iu":
        raise ExplainInputError("--file", str(path), f"holds {arr.dtype}; logits must be "
                                "floating-point or integer numbers")
    if arr.size == 0:
        raise ExplainInputError("--file", str(path), f"holds no logits (shape {arr.shape})")
    if arr.ndim == 2:
        n = arr.shape[0]
        if row is None:
            if n != 1:
                raise ExplainInputError("--row", None, f"the file holds {n} rows; choose one "
                                        f"with --row N (0..{n - 1})")
            row = 0
        if not 0 <= row < n:
            raise ExplainInputError("--row", row, f"allowed: 0..{n - 1} (the file holds {n} "
                                    "rows)")
        arr = arr[row]
    elif arr.ndim == 1:
        if row not in (None, 0):
            raise ExplainInputError("--row", row, "the file holds one row (1-D); use --row 0 "
                                    "or omit it")
    else:
        raise ExplainInputError("--file", str(path), f"has shape {arr.shape}; allowed: (V,) "
                                "or (N, V)")
    if arr.size == 0:
        raise ExplainInputError("--file", str(path), "holds no logits")
    if is_float:
        return [float(v) for v in arr.astype(np.float64)]  # exact widening
    return [int(v) for v in arr.tolist()]


def _num(v: float) -> "float | None":
    return None if math.isnan(v) else v


def explain(logits: Any, target: int, fmt: "str | Format" = "float32", *,
            attribution: bool = True, implementations: "Sequence[str] | None" = None
            ) -> Explanation:
    """Everything known about one row of logits and one target in format ``fmt``.

    ``logits``: numbers or decimal strings (rounded once, correctly, from their exact values),
    or an array of any float dtype (taken as its values).  ``implementations``: the keys to
    evaluate (default: every registered one whose optional extra is installed).

    Raises:
        ExplainInputError: bad format, target or logits (the message names what is allowed).
    """
    try:
        f = get_format(fmt)
    except ValueError:
        raise ExplainInputError("--format", fmt, f"allowed: {', '.join(FORMAT_NAMES)}") from None
    if isinstance(logits, np.ndarray):
        if logits.dtype.kind in "iu":
            vals: list[Any] = [int(v) for v in logits.ravel().tolist()]
        else:
            vals = [float(v) for v in np.asarray(logits).astype(np.float64).ravel()]
    else:
        vals = list(logits)
    if not vals:
        raise ExplainInputError("--logits", "", "give at least one logit")
    try:
        t = int(target)
    except (TypeError, ValueError):
        raise ExplainInputError("--target", target, f"allowed: an integer 0..{len(vals) - 1}") \
            from None
    if not 0 <= t < len(vals):
        raise ExplainInputError("--target", target, f"allowed: 0..{len(vals) - 1} (there are "
                                f"{len(vals)} logits)")
    x, changed = _round_inputs(vals, f)
    X, T = x[None, None, :], np.array([[t]])
    impls = [get_implementation(k) for k in (implementations or default_keys())]
    meas = measure(X, T, f, impls, keep_going=True)
    ref = meas.reference
    hi, lo, err = float(ref.hi[0]), float(ref.lo[0]), float(ref.err[0])
    exact = _exact_string(hi, lo, err)
    out: dict[str, ImplValue] = {}
    for impl in impls:
        m = meas.results.get(impl.key)
        if m is None:
            out[impl.key] = ImplValue(impl.key, impl.description, math.nan, "nan", None, None,
                                      False, "error", meas.errors.get(impl.key))
            continue
        d = int(m.ulp_distance[0])
        truth_nan = math.isnan(float(ref.values[0]))
        out[impl.key] = ImplValue(
            impl.key, impl.description, float(m.computed[0]), show(m.computed[0], f),
            _num(float(m.ulp_error[0])), None if d == int(NO_DISTANCE) else d,
            bool(d == 0) or (truth_nan and math.isnan(float(m.computed[0]))),
            str(m.category[0]))
    x64 = x.astype(np.float64)
    finite_in = bool(np.isfinite(x64).all())
    kappa: "float | None" = None
    bounds: dict[str, "float | None"] = {"bhh_shifted": None, "bhh_unshifted": None,
                                         "derived_lse": None, "derived_lse_log1p": None}
    X2, T1 = x[None, :], np.array([t])
    with np.errstate(all="ignore"):
        kappa = _num(float(condition_number(X2, T1)[0]))
    if finite_in and math.isfinite(hi):
        with np.errstate(all="ignore"):
            for key, val in (("bhh_shifted", bhh_loss_bound(X2, T1, True)),
                             ("bhh_unshifted", bhh_loss_bound(X2, T1, False)),
                             ("derived_lse", derived_loss_bound(X2, T1, "lse", f)),
                             ("derived_lse_log1p", derived_loss_bound(X2, T1, "lse_log1p", f))):
                v = float(np.asarray(val).reshape(-1)[0])
                bounds[key] = v if math.isfinite(v) else None
    attrib: dict[str, Any] = {}
    if attribution:
        attrib = _attribution(X2, T1, f, [i.key for i in impls])
    fused = None
    if finite_in and "torch" in meas.results:
        from precision_lab.explain.attribution import compare_fused

        try:
            fr = compare_fused(X2, T1, f, reference=ref.values)
            fused = {"identical_to": [c.name for c in fr.composites if c.identical],
                     "composites": [dataclasses.asdict(c) for c in fr.composites]}
        except Exception as exc:  # noqa: BLE001 - reported, never hides the rest
            fused = {"error": f"{type(exc).__name__}: {exc}"}
    with np.errstate(all="ignore"):
        p_t = math.exp(-hi) if not math.isnan(hi) else math.nan
    return Explanation(
        format=f.name, logits=[float(v) for v in x64], logits_repr=[show(v, f) for v in x],
        rounded_inputs=changed, target=t, reference=float(ref.values[0]),
        reference_repr=show(ref.values[0], f), exact=exact, exact_hi=hi, exact_lo=lo,
        softmax_target=p_t, lse=float(x64[t]) + hi if math.isfinite(hi) else math.nan,
        condition_number=kappa, bounds=bounds, implementations=out, attribution=attrib,
        fused=fused, unit_roundoff=f.unit_roundoff)


def _exact_string(hi: float, lo: float, err: float) -> str:
    """The unrounded loss to the digits its error bound guarantees (6 to 20)."""
    import mpmath

    if math.isnan(hi):
        return "nan"
    if math.isinf(hi):
        return "inf"
    digits = 20 if err == 0 or hi == 0 else max(6, min(20, int(-math.log10(err / abs(hi)))))
    with mpmath.workprec(200):
        return mpmath.nstr(mpmath.mpf(hi) + mpmath.mpf(lo), digits)


def _attribution(X: np.ndarray, T: np.ndarray, f: Format, keys: list[str]) -> dict[str, Any]:
    """Per-step attribution of the step-wise implementations among ``keys`` on the row (as
    numbers; the exact contributions as dyadic strings, see
    :func:`~.attribution.dyadic_str`)."""
    from precision_lab.explain.attribution import attribute_many

    keys = [k for k in keys if get_implementation(k).capabilities.trace]
    try:
        rows = attribute_many(keys, X, T, f)
    except Exception as exc:  # noqa: BLE001 - reported per implementation below
        return {k: {"error": f"{type(exc).__name__}: {exc}"} for k in keys}
    return {k: rows[k][0].to_dict() for k in keys if k in rows}
