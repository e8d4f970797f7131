"""Two results folders of the same experiment side by side: what changed in the environment
(torch version, CPU kernel set, device, package versions) and, per implementation and format,
how many values changed and how each one's error against the truth moved.

:func:`diff_results` returns a :class:`ResultsDiff` (numbers); ``precision-lab diff A B``
prints it.  The truth is certified, so both folders must agree on every reference value
(:attr:`ResultsDiff.reference_mismatches` counts where they do not, which can only mean that
the inputs differ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from precision_lab.experiment.store import Results
from precision_lab.explain.data import sample_data
from precision_lab.numerics.formats import get_format
from precision_lab.numerics.metrics import NO_DISTANCE, ulp_distance

__all__ = ["ImplDiff", "ResultsDiff", "diff_results"]


@dataclass(frozen=True)
class ImplDiff:
    """One implementation in one format, matched sample by sample.

    ``identical``: samples with the same float in A and B; ``ulp_distance_max``: the largest
    distance between A's and B's value (ULPs of the format); ``a_mean`` / ``b_mean`` and
    ``a_max`` / ``b_max``: ULP error against the truth (finite results)."""

    implementation: str
    format: str
    samples: int
    identical: int
    ulp_distance_max: "int | None"
    a_mean: "float | None"
    b_mean: "float | None"
    a_max: "float | None"
    b_max: "float | None"


@dataclass(frozen=True)
class ResultsDiff:
    """What differs between folder A and folder B."""

    a: str
    b: str
    same_config: bool
    config_changes: dict[str, tuple[Any, Any]]
    environment_changes: dict[str, tuple[Any, Any]]
    reference_mismatches: int
    implementations: list[ImplDiff] = field(default_factory=list)

    @property
    def changed(self) -> list[str]:
        """The environment entries that differ (torch, device, torch_cpu_capability, ...)."""
        return list(self.environment_changes)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _stats(e: np.ndarray) -> tuple["float | None", "float | None"]:
    e = e[np.isfinite(e)]
    return (float(e.mean()), float(e.max())) if e.size else (None, None)


def diff_results(a: Results, b: Results) -> ResultsDiff:
    """Compare two complete results folders (see the module docstring)."""
    ca, cb = _flat(a.manifest.config), _flat(b.manifest.config)
    config_changes = {k: (ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb))
                      if ca.get(k) != cb.get(k)}
    ea, eb = _flat(a.manifest.environment), _flat(b.manifest.environment)
    env_changes = {k: (ea.get(k), eb.get(k)) for k in sorted(set(ea) | set(eb))
                   if ea.get(k) != eb.get(k)}
    da, db = sample_data(a), sample_data(b)
    impls: list[ImplDiff] = []
    mismatches = 0
    if da is not None and db is not None and a.manifest.config_sha256 == \
            b.manifest.config_sha256:
        ga, gb = da.groups(), db.groups()
        for key in ga:
            if key not in gb:
                continue
            ia, ib = ga[key], gb[key]
            order_a = np.lexsort((da.sample[ia], da.point[ia]))
            order_b = np.lexsort((db.sample[ib], db.point[ib]))
            ia, ib = ia[order_a], ib[order_b]
            if ia.size != ib.size:
                continue
            f = get_format(key[1])
            va = da.computed[ia].astype(f.np_dtype)
            vb = db.computed[ib].astype(f.np_dtype)
            d = ulp_distance(va, vb, f)
            same = (d == 0) | (np.isnan(va.astype(np.float64)) & np.isnan(vb.astype(np.float64)))
            ok = d[d != NO_DISTANCE]
            ref_a, ref_b = da.reference[ia], db.reference[ib]
            mismatches += int(((ref_a != ref_b) & ~(np.isnan(ref_a) & np.isnan(ref_b))).sum())
            am, ax = _stats(da.ulp_error[ia])
            bm, bx = _stats(db.ulp_error[ib])
            impls.append(ImplDiff(key[0], key[1], int(ia.size), int(same.sum()),
                                  int(ok.max()) if ok.size else None, am, bm, ax, bx))
    return ResultsDiff(str(a.root), str(b.root),
                       a.manifest.config_sha256 == b.manifest.config_sha256, config_changes,
                       env_changes, mismatches, impls)
