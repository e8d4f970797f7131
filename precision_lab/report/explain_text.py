"""An :class:`~precision_lab.explain.explain.Explanation` in words: the verdict and the text
that ``precision-lab explain`` prints.

Which sentences appear depends on the numbers: logits that look like probabilities, results
that are inf/NaN (told apart: the input's inf/NaN, or an overflow inside the algorithm), a tiny
loss lost to cancellation, disagreement between implementations, inputs that rounding changed.
A NaN is never called correctly rounded unless the truth is NaN.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from precision_lab.explain.explain import Explanation
from precision_lab.numerics.formats import get_format, ulp_of
from precision_lab.report.text import fmt_num, join_names

__all__ = ["verdict", "render_text", "closed_form"]


def closed_form(x: list[float], t: int) -> Optional[str]:
    """e.g. 'e/(3 + e)' for x = [0, 0, 0, 1], t = 3; None unless all logits are small
    integers."""
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


def _steps(a: dict[str, Any]) -> list[dict[str, Any]]:
    return list(a.get("steps") or [])


def verdict(e: Explanation) -> list[str]:
    """The explanation's verdict, sentence by sentence (most telling first)."""
    f = get_format(e.format)
    out: list[str] = []
    xv = e.logits
    t = e.target
    hi = e.exact_hi
    ref_s = e.reference_repr
    impls = e.implementations
    finite_in = e.finite_input
    # 1. logits, not probabilities
    if finite_in and min(xv) >= 0 and max(xv) <= 1 and math.isfinite(hi):
        cf = closed_form(xv, t)
        pt = e.softmax_target
        form = f"{cf} = {pt:.4f}" if cf else f"{pt:.4f}"
        out.append(
            "These look like probabilities or a one-hot vector, but cross-entropy "
            "(nn.CrossEntropyLoss) takes logits (unnormalised scores) and applies softmax first: "
            f"softmax(x)[{t}] = {form}, so the loss is -log {pt:.4f} = {hi:.4f}, not -log 1 = 0. "
            "A loss near 0 needs the target's logit to exceed the others by a wide margin "
            "(loss ~ sum_j exp(x_j - x_t)).")
    elif finite_in and math.isfinite(hi):
        out.append(f"softmax(x)[{t}] = {e.softmax_target:.10g}, so the loss -log "
                   f"softmax(x)[{t}] is {hi:.10g} (correctly rounded to {f.name}: {ref_s}).")
    # 2. non-finite inputs: the truth follows the input, not an overflow
    if not finite_in:
        bad = [f"x[{i}] = {v}" for i, v in enumerate(xv) if not math.isfinite(v)]
        if math.isnan(hi):
            why = ("a NaN logit makes every softmax entry undefined" if any(math.isnan(v)
                   for v in xv) else "inf - inf is undefined")
            out.append(f"The input holds {', '.join(bad)}: the truth is NaN ({why}); a NaN "
                       "result is what a correct implementation returns here.")
        else:
            out.append(f"The input holds {', '.join(bad)}: the truth is {ref_s} (the limit of the "
                       "loss as those logits go to their infinities).")
    # 3. spurious overflow / NaN / a missed infinity
    for key, r in impls.items():
        if r.category not in ("overflow", "nan", "missed_inf"):
            continue
        where: str = ""
        for step in _steps(e.attribution.get(key, {})):
            flags = step.get("flags") or []
            if "overflow" in flags:
                if step.get("op") == "exp":
                    where = (f" at step '{step['name']}': exp of {max(xv):g} exceeds {f.name}'s "
                             f"largest finite value {f.max_finite:g} (exp overflows above "
                             f"{math.log(f.max_finite):.2f})")
                else:
                    where = f" at step '{step['name']}' ({step.get('op')} overflows)"
                break
            if "nan" in flags:
                where = (f" at step '{step['name']}' ({step.get('op')} gives NaN"
                         + (": inf - inf" if step.get("op") in ("sub", "add", "log_softmax")
                            else "") + ")")
                break
        out.append(f"{key} returns {r.repr}{where}; the truth is {ref_s}.")
    # 4. cancellation: a tiny loss lost
    lost = [k for k, r in impls.items() if r.category == "finite" and hi != 0
            and math.isfinite(hi) and abs(r.value - hi) >= 0.5 * abs(hi)]
    if lost:
        keep = [k for k, r in impls.items() if r.ulp_error is not None and r.ulp_error <= 1.0
                and r.category == "finite"]
        zeros = [k for k in lost if impls[k].value == 0]
        lse_val = e.lse
        sp = float(ulp_of(lse_val, f)) if math.isfinite(lse_val) else math.nan
        who = join_names(zeros) if zeros else join_names(lost)
        what = ("return 0" if len(zeros) > 1 else "returns 0") if zeros else "lose it"
        s = (f"The loss is tiny ({hi:.3g}) and lse - x_t cancels: lse = x_t + loss = "
             f"{lse_val:.10g}, but {f.name}'s spacing at {abs(lse_val):.3g} is {sp:.2g}, so any "
             "algorithm that forms lse (or log_softmax as x - max - logsum) rounds the loss "
             f"away: {who} {what} while the truth is {hi:.3g}.")
        if keep:
            s += (f" {join_names(keep)} keep{'s' if len(keep) == 1 else ''} it"
                  + (" (lse_log1p never forms lse: it adds (max - x_t) to "
                     "log1p(sum_{j != argmax} exp(x_j - max)))." if "lse_log1p" in keep
                     else "."))
        if e.condition_number is not None:
            s += (f" The problem itself is well conditioned (condition number "
                  f"{fmt_num(e.condition_number, 3)}): the error is the algorithm's, not the "
                  "data's.")
        lost_at = []
        for k in lost:
            att = e.attribution.get(k, {})
            st = next((q for q in _steps(att) if q.get("name") == att.get("decisive")), None)
            if st:
                lost_at.append(f"{k} at '{st['name']}' ({st.get('op')})")
        if lost_at:
            s += " Where it is lost (the step after which the error stays): " + \
                 "; ".join(lost_at) + "."
        out.append(s)
    # 5. who is right, who is worst (finite errors only; NaN/inf results named apart)
    fin = {k: r for k, r in impls.items() if r.ulp_error is not None}
    if fin or impls:
        cr = [k for k, r in impls.items() if r.correctly_rounded]
        s = f"Correctly rounded here ({ref_s}): {join_names(cr) if cr else 'none'}."
        bad = [k for k, r in impls.items() if r.ulp_error is None and not r.correctly_rounded]
        if fin:
            worst = max(fin, key=lambda k: fin[k].ulp_error or 0.0)
            if (fin[worst].ulp_error or 0.0) > 0.5:
                s += (f" Largest finite error: {worst} with {fmt_num(fin[worst].ulp_error, 3)} "
                      f"ULP (value {impls[worst].repr}).")
                att = e.attribution.get(worst, {})
                if att.get("decisive"):
                    s += f" Its error is decided at step '{att['decisive']}'."
        if bad:
            s += (f" {join_names(bad)} {'return' if len(bad) > 1 else 'returns'} "
                  + join_names(sorted({impls[k].repr for k in bad}))
                  + (" (an error, not a number)" if all(impls[k].category == "error"
                                                       for k in bad) else "")
                  + f" where the truth is {ref_s}.")
        out.append(s)
    fz = e.fused or {}
    if fz.get("identical_to"):
        out.append("torch's fused cross_entropy is bit-identical here to: "
                   + ", ".join(fz["identical_to"]) + ".")
    if e.rounded_inputs:
        ch = "; ".join(f"x[{c['index']}] = {c['given']} is stored as {c['stored']}"
                       for c in e.rounded_inputs)
        out.append(f"Inputs rounded to {f.name} first: {ch}.")
    return out


def render_text(e: Explanation) -> str:
    """The terminal text of ``precision-lab explain``."""
    lines = []
    shown = e.logits_repr if len(e.logits_repr) <= 16 else \
        e.logits_repr[:8] + ["..."] + e.logits_repr[-4:]
    lines.append(f"logits ({e.format}, V = {len(e.logits)}): [{', '.join(shown)}]   "
                 f"target: {e.target}")
    lines.append(f"correctly rounded truth: {e.reference_repr}   (exact loss {e.exact})")
    if e.condition_number is not None:
        b = e.bounds
        lines.append(f"condition number: {fmt_num(e.condition_number)}   error bounds (relative, "
                     f"units of u): BHH shifted {fmt_num(b.get('bhh_shifted'))}, derived lse "
                     f"{fmt_num(b.get('derived_lse'))}, lse_log1p "
                     f"{fmt_num(b.get('derived_lse_log1p'))}")
    lines.append("")
    w = max(len(k) for k in e.implementations)
    lines.append(f"{'implementation':<{w}}  {'value':>16}  {'ULP error':>10}  {'ULP distance':>12}"
                 "  note")
    for k, r in e.implementations.items():
        note = "correctly rounded" if r.correctly_rounded else (
            r.category if r.category != "finite" else "")
        if r.error:
            note = f"error: {r.error}"
        lines.append(f"{k:<{w}}  {r.repr:>16}  {fmt_num(r.ulp_error):>10}  "
                     f"{fmt_num(r.ulp_distance):>12}  {note}")
    if e.attribution:
        lines.append("")
        lines.append("per-step attribution (local: ULPs of the step's output against the exact op "
                     "on its computed inputs; contribution: ULPs of the loss, they add up to the "
                     "total)")
        for k, a in e.attribution.items():
            if "error" in a:
                lines.append(f"  {k}: {a['error']}")
                continue
            lines.append(f"  {k}: total {fmt_num(a.get('total_ulp'))} ULP; dominant step "
                         f"'{a.get('dominant') or '-'}', decided at '{a.get('decisive') or '-'}'")
            if a.get("separable") is False:
                lines.append("      (an overflow or NaN makes some contributions infinite or "
                             "undefined: those steps are marked 'not separable')")
            for s in _steps(a):
                fl = ("  " + "; ".join(s.get("flags") or [])) if s.get("flags") else ""
                if s.get("separable") is False:
                    fl += "  not separable"
                lines.append(f"      {s.get('name', ''):<6} {s.get('op', ''):<11} local "
                             f"{fmt_num(s.get('local_ulp')):>9}  contribution "
                             f"{fmt_num(s.get('contribution_ulp')):>10}{fl}")
    lines.append("")
    lines.append("verdict:")
    for v in verdict(e):
        lines.append(f"  - {v}")
    return "\n".join(lines)
