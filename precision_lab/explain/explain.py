"""Explain one input: the correctly rounded truth, every implementation's value and error, where
each step-wise implementation loses accuracy, the condition number, and a verdict in words.

Python API::

    from precision_lab.explain.explain import explain
    d = explain([20, 0, 1, 2], 0, "float32")
    d["reference"], d["implementations"]["torch"], d["verdict"]

Command line (registered in :mod:`precision_lab.cli` as ``explain``)::

    precision-lab explain --logits "20,0,1,2" --target 0 --format float32
    precision-lab explain --file logits.npy --row 3 --target 1 --format bfloat16 --json

The logits are rounded ONCE, correctly, from their decimal (or stored) values to the format
(the explanation says when that changed a value); everything is then computed from those
format values, as the experiments do.  Verdict sentences are generated from the computed
numbers; which ones appear depends on what the data show (logits that look like
probabilities, overflow, a confident prediction whose loss cancels, disagreement between
implementations).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import typer

__all__ = ["explain", "explain_command", "ExplainInputError", "render_text"]


class ExplainInputError(ValueError):
    """Bad input: the message names the option, the value and what is allowed."""

    def __init__(self, option: str, value: Any, allowed: str):
        self.option, self.value, self.allowed = option, value, allowed
        super().__init__(f"{option}: {value!r} is not valid; {allowed}")


# --------------------------------------------------------------------------- helpers

def _num(v: Any) -> Any:
    """JSON-safe number: NaN/inf as the strings "nan", "inf", "-inf"."""
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    try:
        fv = float(v)
    except (TypeError, ValueError):
        return v
    if math.isnan(fv):
        return "nan"
    if math.isinf(fv):
        return "inf" if fv > 0 else "-inf"
    return fv


def _show(v: Any, f) -> str:
    """A format value as its shortest repr (numpy's), e.g. 2.289393e-08."""
    a = np.asarray(v).astype(f.np_dtype).reshape(())
    s = str(a[()])
    return s


def _closed_form(x: list[float], t: int) -> Optional[str]:
    """e.g. 'e/(3 + e)' for x = [0, 0, 0, 1], t = 3; None unless all logits are small integers."""
    if not all(float(v).is_integer() and abs(v) <= 4 for v in x):
        return None

    def term(v: int) -> str:
        return "1" if v == 0 else ("e" if v == 1 else f"e^{v}")

    counts: dict[int, int] = {}
    for v in x:
        counts[int(v)] = counts.get(int(v), 0) + 1
    parts = []
    for v in sorted(counts):
        c = counts[v]
        if v == 0:
            parts.append(str(c))
        else:
            parts.append(term(v) if c == 1 else f"{c}{term(v)}")
    return f"{term(int(x[t]))}/({' + '.join(parts)})"


def _parse_logits(text: str) -> list[str]:
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ExplainInputError("--logits", text, "give comma-separated numbers, e.g. '20,0,1,2'")
    import mpmath

    for p in parts:
        try:
            mpmath.mpf(p)
        except (ValueError, TypeError):
            raise ExplainInputError("--logits", p, "each logit must be a number (e.g. 20, -1.5, "
                                    "1e3, inf, -inf); separate them with commas") from None
    return parts


def _round_logits(values: Sequence[Any], f) -> tuple[np.ndarray, list[dict]]:
    """Round each value once, correctly, to f; report the ones that changed."""
    import mpmath

    from precision_lab.numerics.formats import round_to

    out = np.empty(len(values), dtype=f.np_dtype)
    changed = []
    with mpmath.workprec(300):
        for i, v in enumerate(values):
            exact = mpmath.mpf(v) if isinstance(v, str) else mpmath.mpf(float(v))
            r = round_to(exact, f)
            out[i] = r
            if not (mpmath.isnan(exact) and np.isnan(float(r))) and mpmath.mpf(float(r)) != exact:
                changed.append({"index": i, "given": str(v), "stored": _show(r, f)})
    return out, changed


def _load_file(path: Path, row: Optional[int]) -> np.ndarray:
    if not path.exists():
        raise ExplainInputError("--file", str(path), "no such file; give an existing .npy or .pt file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            raise ExplainInputError("--file", str(path), f"cannot be read as .npy ({exc})") from None
    elif path.suffix == ".pt":
        import torch

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ExplainInputError("--file", str(path), f"cannot be read as .pt ({exc})") from None
        if not isinstance(obj, torch.Tensor):
            raise ExplainInputError("--file", str(path), "the .pt file must hold one tensor")
        from precision_lab.implementations import from_torch

        arr = from_torch(obj)
    else:
        raise ExplainInputError("--file", str(path), "allowed file types: .npy, .pt")
    if arr.dtype.kind not in "fV" and arr.dtype.name != "bfloat16":
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.float64)
        else:
            raise ExplainInputError("--file", str(path), f"holds {arr.dtype}; logits must be floats")
    if arr.ndim == 1:
        if row not in (None, 0):
            raise ExplainInputError("--row", row, "the file holds one row (1-D); use --row 0 or omit it")
        return arr
    if arr.ndim == 2:
        n = arr.shape[0]
        if row is None:
            if n == 1:
                return arr[0]
            raise ExplainInputError("--row", None, f"the file holds {n} rows; choose one with --row N (0..{n - 1})")
        if not 0 <= row < n:
            raise ExplainInputError("--row", row, f"allowed: 0..{n - 1} (the file holds {n} rows)")
        return arr[row]
    raise ExplainInputError("--file", str(path), f"has shape {arr.shape}; allowed: (V,) or (N, V)")


# --------------------------------------------------------------------------- the analysis

def explain(logits: Sequence[Any], target: int, fmt: str = "float32", *,
            attribution: bool = True) -> dict:
    """Everything known about one row of logits and one target, as a JSON-ready dict.

    ``logits``: numbers or decimal strings (rounded once, correctly, to ``fmt``), or an array
    of any float dtype.  Keys: "format", "logits" (as stored), "rounded_inputs", "target",
    "softmax_target", "reference" (the correctly rounded loss, a number), "exact" (decimal
    string of the unrounded loss), "implementations" ({key: {"value", "ulp_error",
    "ulp_distance", "correctly_rounded", "category"}}), "attribution" ({key: {...}}),
    "fused" (torch vs composites), "condition_number", "bounds", "verdict" (sentences).

    Raises:
        ExplainInputError: bad format, target or logits (message names what is allowed).
    """
    import mpmath

    from precision_lab.numerics.conditioning import bhh_loss_bound, condition_number, derived_loss_bound
    from precision_lab.numerics.formats import FORMAT_NAMES, get_format
    from precision_lab.implementations import REGISTRY
    from precision_lab.numerics.metrics import categorize, ulp_distance, ulp_error
    from precision_lab.numerics.reference import cross_entropy_detailed

    try:
        f = get_format(fmt)
    except ValueError:
        raise ExplainInputError("--format", fmt, f"allowed: {', '.join(FORMAT_NAMES)}") from None
    if isinstance(logits, np.ndarray) and logits.dtype.kind == "f" or (
            isinstance(logits, np.ndarray) and logits.dtype.name == "bfloat16"):
        vals: list[Any] = [float(v) for v in np.asarray(logits).astype(np.float64).ravel()]
    else:
        vals = list(logits)
    if len(vals) == 0:
        raise ExplainInputError("--logits", "", "give at least one logit")
    try:
        t = int(target)
    except (TypeError, ValueError):
        raise ExplainInputError("--target", target, f"allowed: an integer 0..{len(vals) - 1}") from None
    if not 0 <= t < len(vals):
        raise ExplainInputError("--target", target, f"allowed: 0..{len(vals) - 1} (there are {len(vals)} logits)")
    x, changed = _round_logits(vals, f)
    X, T = x[None, :], np.array([t])

    ref = cross_entropy_detailed(X, T, f)
    cr = ref.values[0]
    hi, lo, err = float(ref.hi[0]), float(ref.lo[0]), float(ref.err[0])
    with mpmath.workprec(200):
        # as many digits as the reference's error bound guarantees (at most 20)
        digits = 20 if err == 0 or hi == 0 else max(6, min(20, int(-math.log10(err / abs(hi)))))
        exact_str = "nan" if math.isnan(hi) else ("inf" if math.isinf(hi) else
                                                   mpmath.nstr(mpmath.mpf(hi) + mpmath.mpf(lo), digits))
        xs = [mpmath.mpf(float(v)) for v in x.astype(np.float64)]
        finite_in = all(mpmath.isfinite(v) for v in xs)
        p_t = (mpmath.exp(xs[t] - max(xs)) / mpmath.fsum(mpmath.exp(v - max(xs)) for v in xs)
               if finite_in else mpmath.nan)

    impls: dict[str, dict] = {}
    values: dict[str, np.ndarray] = {}
    for key, impl in REGISTRY.items():
        try:
            v = impl(X, T, f)
        except Exception as exc:  # noqa: BLE001 - report, do not hide the others
            impls[key] = {"value": "nan", "ulp_error": None, "ulp_distance": None,
                          "correctly_rounded": False, "category": "error", "error": str(exc)}
            continue
        values[key] = v
        ue = float(ulp_error(v, np.array([hi]), f, np.array([lo]))[0])
        ud = ulp_distance(v, np.asarray([cr]), f)[0]
        cat = str(categorize(v, np.array([cr]))[0])
        same = bool((v[0] == cr) or (np.isnan(float(v[0])) and np.isnan(float(cr))))
        impls[key] = {"value": _num(v[0]), "repr": _show(v[0], f),
                      "ulp_error": None if math.isnan(ue) else ue,
                      "ulp_distance": None if int(ud) == int(np.iinfo(np.uint64).max) else int(ud),
                      "correctly_rounded": same, "category": cat,
                      "description": impl.description}

    attrib: dict[str, dict] = {}
    if attribution:
        from precision_lab.explain.attribution import attribute

        for key, impl in REGISTRY.items():
            if not impl.stepwise:
                continue
            try:
                (row,) = attribute(key, X, T, f)
            except Exception as exc:  # noqa: BLE001
                attrib[key] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            attrib[key] = {
                "total_error_ulp": _num(row.total_error_ulp), "dominant": row.dominant,
                "decisive": row.decisive, "cancelling": row.cancelling,
                "steps": [{"name": s.name, "op": s.op, "value": _jsonify(s.value),
                           "local_ulp": _num(s.local_ulp), "correctly_rounded": s.correctly_rounded,
                           "flags": s.flags, "contribution_ulp": _num(s.contribution_ulp)}
                          for s in row.steps]}

    fused = None
    if finite_in:
        from precision_lab.explain.attribution import compare_fused

        try:
            fr = compare_fused(X, T, f, reference=ref.values)
            fused = {"identical_to": [c["name"] for c in fr["composites"] if c["identical"]],
                     "composites": fr["composites"]}
        except Exception as exc:  # noqa: BLE001
            fused = {"error": str(exc)}

    kappa = bhh = bhh_un = d_lse = d_log1p = None
    if finite_in and math.isfinite(hi):
        kappa = float(condition_number(X, T, loss=np.array([hi]))[0])
        bhh = float(bhh_loss_bound(X, T, True, loss=np.array([hi]))[0])
        bhh_un = float(bhh_loss_bound(X, T, False, loss=np.array([hi]))[0])
        d_lse = float(derived_loss_bound(X, T, "lse", f, loss=np.array([hi]))[0])
        d_log1p = float(derived_loss_bound(X, T, "lse_log1p", f, loss=np.array([hi]))[0])

    out = {
        "format": f.name,
        "logits": [_num(v) for v in x.astype(np.float64)],
        "logits_repr": [_show(v, f) for v in x],
        "rounded_inputs": changed,
        "target": t,
        "softmax_target": _num(float(p_t)) if finite_in else "nan",
        "reference": _num(float(np.asarray(cr, np.float64))),
        "reference_repr": _show(cr, f),
        "exact": exact_str,
        "unit_roundoff": f.unit_roundoff,
        "implementations": impls,
        "attribution": attrib,
        "fused": fused,
        "condition_number": _num(kappa),
        "bounds": {"bhh_shifted_loss_u": _num(bhh), "bhh_unshifted_loss_u": _num(bhh_un),
                   "derived_lse_u": _num(d_lse), "derived_lse_log1p_u": _num(d_log1p),
                   "units": "relative error of the loss, in units of u = 2^-p"},
    }
    out["verdict"] = _verdict(out, x, t, f, hi, p_t, finite_in)
    return out


def _jsonify(v: Any) -> Any:
    if isinstance(v, list):
        return [_jsonify(a) for a in v]
    return _num(v) if isinstance(v, (int, float, np.floating, np.integer)) else v


def _verdict(d: dict, x: np.ndarray, t: int, f, hi: float, p_t, finite_in: bool) -> list[str]:
    import mpmath

    out: list[str] = []
    xv = x.astype(np.float64)
    impls = d["implementations"]
    ref_s = d["reference_repr"]
    # 1. logits, not probabilities
    if finite_in and xv.min() >= 0 and xv.max() <= 1:
        cf = _closed_form(list(xv), t)
        pt = float(p_t)
        form = f"{cf} = {pt:.4f}" if cf else f"{pt:.4f}"
        out.append(
            f"These look like probabilities or a one-hot vector, but cross-entropy (nn.CrossEntropyLoss) "
            f"takes logits (unnormalised scores) and applies softmax first: softmax(x)[{t}] = {form}, "
            f"so the loss is -log {pt:.4f} = {hi:.4f}, not -log 1 = 0. A loss near 0 needs the "
            f"target's logit to exceed the others by a wide margin (loss ~ sum_j exp(x_j - x_t)).")
    elif finite_in:
        out.append(f"softmax(x)[{t}] = {float(p_t):.10g}, so the loss -log softmax(x)[{t}] is "
                   f"{hi:.10g} (correctly rounded to {f.name}: {ref_s}).")
    # 2. overflow / NaN / a missed infinity
    for key, r in impls.items():
        if r["category"] not in ("overflow", "nan", "missed_inf"):
            continue
        a = d["attribution"].get(key, {})
        where = ""
        for s in a.get("steps", []):
            if "overflow" in s["flags"]:
                if s["op"] == "exp":
                    where = (f" at step '{s['name']}': exp of {xv.max():g} exceeds {f.name}'s largest "
                             f"finite value {f.max_finite:g} (exp overflows above "
                             f"{math.log(f.max_finite):.2f})")
                else:
                    where = f" at step '{s['name']}' ({s['op']} overflows)"
                break
            if "nan" in s["flags"]:
                where = f" at step '{s['name']}' ({s['op']} gives NaN" + (
                    ": inf - inf" if s["op"] in ("sub", "add", "log_softmax") else "") + ")"
                break
        out.append(f"{key} returns {r['value']}{where}; the truth is {ref_s}.")
    if math.isnan(hi):
        out.append("The truth is NaN: a NaN logit makes every softmax entry undefined.")
    # 3. cancellation: an implementation returns 0 (or loses most digits) on a tiny loss
    lost = [k for k, r in impls.items() if r["category"] == "finite" and hi != 0 and math.isfinite(hi)
            and isinstance(r["value"], float) and abs(r["value"] - hi) >= 0.5 * abs(hi)]
    if lost:
        keep = [k for k, r in impls.items() if r["ulp_error"] is not None and r["ulp_error"] <= 1.0]
        zeros = [k for k in lost if impls[k]["value"] == 0]
        lse_val = float(xv[t]) + hi
        with mpmath.workprec(64):
            from precision_lab.numerics.formats import ulp_of

            sp = float(ulp_of(lse_val, f)) if math.isfinite(lse_val) else math.nan
        who = ", ".join(zeros) if zeros else ", ".join(lost)
        what = "return 0" if zeros and len(zeros) > 1 else ("returns 0" if zeros else "lose it")
        s = (f"The loss is tiny ({hi:.3g}) and lse - x_t cancels: lse = x_t + loss = "
             f"{lse_val:.10g}, but {f.name}'s spacing at {abs(lse_val):.3g} is {sp:.2g}, so any "
             f"algorithm that forms lse (or log_softmax as x - max - logsum) rounds the loss away: "
             f"{who} {what} while the truth is {hi:.3g}.")
        if keep:
            s += (f" {', '.join(keep)} keep{'s' if len(keep) == 1 else ''} it (lse_log1p never forms "
                  f"lse: it adds (max - x_t) to log1p(sum_{{j != argmax}} exp(x_j - max)))."
                  if "lse_log1p" in keep else f" {', '.join(keep)} keep it.")
        kappa = d.get("condition_number")
        if isinstance(kappa, float):
            s += (f" The problem itself is well conditioned (condition number {kappa:.3g}): the "
                  f"error is the algorithm's, not the data's.")
        where = []
        for k in lost:
            a = d["attribution"].get(k, {})
            st = next((q for q in a.get("steps", []) if q["name"] == a.get("decisive")), None)
            if st:
                v = st["value"]
                shown = f" -> {_fmt(v)}" if not isinstance(v, list) else ""
                where.append(f"{k} at '{st['name']}' ({st['op']}{shown})")
        if where:
            s += " Where it is lost (step after which the error stays): " + "; ".join(where) + "."
        out.append(s)
    # 4. agreement summary
    fin = {k: r for k, r in impls.items() if r["ulp_error"] is not None}
    if fin:
        cr = [k for k, r in impls.items() if r["correctly_rounded"]]
        worst = max(fin, key=lambda k: fin[k]["ulp_error"])
        s = (f"Correctly rounded here ({ref_s}): {', '.join(cr) if cr else 'none'}. Largest error: "
             f"{worst} with {fin[worst]['ulp_error']:.3g} ULP (value {impls[worst]['repr']}).")
        a = d["attribution"].get(worst, {})
        if a.get("decisive") and fin[worst]["ulp_error"] > 0.5:
            s += f" Its error is decided at step '{a['decisive']}'."
        out.append(s)
    fz = d.get("fused") or {}
    if fz.get("identical_to"):
        out.append("torch's fused cross_entropy is bit-identical here to: "
                   + ", ".join(fz["identical_to"]) + ".")
    if d["rounded_inputs"]:
        ch = "; ".join(f"x[{c['index']}] = {c['given']} is stored as {c['stored']}"
                       for c in d["rounded_inputs"])
        out.append(f"Inputs rounded to {f.name} first: {ch}.")
    return out


# --------------------------------------------------------------------------- text output

def render_text(d: dict) -> str:
    lines = []
    lines.append(f"logits ({d['format']}): [{', '.join(d['logits_repr'])}]   target: {d['target']}")
    lines.append(f"correctly rounded truth: {d['reference_repr']}   (exact loss {d['exact']})")
    if d.get("condition_number") is not None:
        b = d["bounds"]
        lines.append(f"condition number: {_fmt(d['condition_number'])}   "
                     f"error bounds (relative, units of u): BHH shifted {_fmt(b['bhh_shifted_loss_u'])}, "
                     f"derived lse {_fmt(b['derived_lse_u'])}, lse_log1p {_fmt(b['derived_lse_log1p_u'])}")
    lines.append("")
    w = max(len(k) for k in d["implementations"])
    lines.append(f"{'implementation':<{w}}  {'value':>16}  {'ULP error':>10}  {'ULP distance':>12}  note")
    for k, r in d["implementations"].items():
        note = "correctly rounded" if r["correctly_rounded"] else (
            r["category"] if r["category"] != "finite" else "")
        lines.append(f"{k:<{w}}  {r.get('repr', r['value'])!s:>16}  {_fmt(r['ulp_error']):>10}  "
                     f"{_fmt(r['ulp_distance']):>12}  {note}")
    if d["attribution"]:
        lines.append("")
        lines.append("per-step attribution (local: ULPs of the step's output vs the exact op on its "
                     "computed inputs; contribution: ULPs of the loss, they add up to the total)")
        for k, a in d["attribution"].items():
            if "error" in a:
                lines.append(f"  {k}: {a['error']}")
                continue
            extra = " (contributions cancel)" if a.get("cancelling") else ""
            lines.append(f"  {k}: total {_fmt(a['total_error_ulp'])} ULP; dominant step "
                         f"'{a['dominant'] or '-'}', decided at '{a['decisive'] or '-'}'{extra}")
            for s in a["steps"]:
                val = s["value"]
                vs = (("[" + ", ".join(_fmt(v) for v in val[:6]) + (", ...]" if len(val) > 6 else "]"))
                      if isinstance(val, list) else _fmt(val))
                fl = ("  " + "; ".join(s["flags"])) if s["flags"] else ""
                lines.append(f"      {s['name']:<6} {s['op']:<11} {vs:<44} local {_fmt(s['local_ulp']):>8}"
                             f"  contribution {_fmt(s['contribution_ulp']):>10}{fl}")
    lines.append("")
    lines.append("verdict:")
    for v in d["verdict"]:
        lines.append(f"  - {v}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    fv = float(v)
    if fv == 0:
        return "0"
    if abs(fv) >= 1e5 or abs(fv) < 1e-3:
        return f"{fv:.3e}"
    return f"{fv:.4g}"


# --------------------------------------------------------------------------- CLI command

def explain_command(
    logits: Optional[str] = typer.Option(None, "--logits", help="Comma-separated logits, e.g. \"20,0,1,2\"."),
    target: Optional[int] = typer.Option(None, "--target", "-t", help="Index of the target class."),
    fmt: str = typer.Option("float32", "--format", "-f",
                            help="float16, bfloat16, float32 or float64."),
    file: Optional[Path] = typer.Option(None, "--file", help="Logits from a .npy or .pt file "
                                        "(shape (V,) or (N, V); choose the row with --row)."),
    row: Optional[int] = typer.Option(None, "--row", help="Row of --file to explain."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
    no_attribution: bool = typer.Option(False, "--no-attribution",
                                        help="Skip the per-step attribution (faster for large V)."),
) -> None:
    """Explain one input: truth, each implementation's error, per-step attribution, verdict.

    Prints the correctly rounded truth, every implementation's value with its ULP error and
    ULP distance, the per-step attribution, the condition number, and a verdict in words.

    Example: precision-lab explain --logits "20,0,1,2" --target 0 --format float32
    """
    def fail(msg: str) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2)

    try:
        if (logits is None) == (file is None):
            raise ExplainInputError("--logits/--file", logits if logits is not None else str(file),
                                    "give exactly one of --logits \"20,0,1,2\" or --file X.npy")
        if target is None:
            raise ExplainInputError("--target", None, "give the target class index, e.g. --target 0")
        if row is not None and file is None:
            raise ExplainInputError("--row", row, "--row goes with --file")
        vals: Any = _parse_logits(logits) if logits is not None else _load_file(file, row)
        d = explain(vals, target, fmt, attribution=not no_attribution)
    except ExplainInputError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(d, indent=1, allow_nan=False))
    else:
        typer.echo(render_text(d))
