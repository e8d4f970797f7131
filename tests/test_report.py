"""The report of real (small) runs: the answer first, numbers from the data, self-contained HTML."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from precision_lab.experiment.config import load_config
from precision_lab.experiment.runner import run_experiment
from precision_lab.experiment.store import open_results, read_manifest, verify
from precision_lab.report.report import write_report


def _report(res, progress):
    write_report(res, progress)


def _run(write_config, tmp_path: Path, text: str) -> Path:
    return run_experiment(load_config(write_config(text)), tmp_path / "out",
                          finalize=_report).path


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n## ", start + len(heading))
    return md[start:nxt if nxt >= 0 else None]


OVERFLOW = """
name = "ovf"
question = "Where does naive overflow in float16?"
description = "Logits mean + N(0, 1), mean swept."
classes = 10
batch_size = 10
samples = 4
seed = 3
formats = ["float16"]
implementations = ["naive", "lse_log1p", "torch"]
[inputs]
generator = "normal"
mean = [0.0, 5.0, 12.0]
"""


@pytest.fixture
def overflow_run(write_config, tmp_path):
    return _run(write_config, tmp_path, OVERFLOW)


def test_overflow_finding_matches_an_independent_count(overflow_run: Path) -> None:
    """naive in float16 overflows exactly where lse(x) > ln(65504): counted here from the
    stored inputs with plain numpy, then looked up in the report's key findings."""
    res = open_results(overflow_run)
    n_above = first = None
    counts = []
    for point, mean in enumerate((0.0, 5.0, 12.0)):
        x, _ = res.inputs(point, "float16")
        x64 = np.asarray(x, dtype=np.float64).reshape(-1, 10)
        lse = np.log(np.exp(x64).sum(axis=1))
        k = int((lse > math.log(65504.0)).sum())
        counts.append(k)
        if k and first is None:
            first = mean
    n_above = sum(counts)
    assert first == 12.0 and counts[0] == counts[1] == 0 and n_above > 0
    md = (overflow_run / "report.md").read_text()
    key = _section(md, "## Answer: key findings")
    assert (f"In float16, naive returns inf/NaN from mean = 12 (finite at mean = 5), on "
            f"{n_above} of 120 rows: exactly the {n_above} of 120 rows whose lse(x) exceeds "
            "ln(max finite) = 11.090") in key
    assert "lse_log1p and torch never return a spurious inf or NaN" in key
    # the same count stands in the samples table
    d = res.samples()
    cat = np.array(d.column("category").to_pylist())
    impl = np.array(d.column("implementation").to_pylist())
    assert int(((impl == "naive") & np.isin(cat, ["overflow", "nan"])).sum()) == n_above


def test_report_layout_and_self_contained_html(overflow_run: Path) -> None:
    md = (overflow_run / "report.md").read_text()
    assert md.index("## Question") < md.index("## Answer: key findings") < md.index("## Summary")
    assert md.index("## Answer: key findings") < md.index("## Appendix")
    bullets = [ln for ln in _section(md, "## Answer: key findings").splitlines()
               if ln.startswith("- ")]
    assert 3 <= len(bullets) <= 8 and all(re.search(r"\d", b) for b in bullets)
    assert "](plots/nonfinite_vs_overflow_margin.png)" in md
    h = (overflow_run / "report.html").read_text()
    imgs = re.findall(r"<img\b[^>]*>", h)
    plots = read_manifest(overflow_run).plots
    assert len(imgs) == len(plots) >= 3
    for tag in imgs:
        m = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        assert m and base64.b64decode(m.group(1), validate=True).startswith(b"\x89PNG")
    assert h.count("<details>") == h.count("</details>") >= 3
    assert h.index("Answer: key findings") < h.index("<details>")
    assert re.search(r"<details><summary>[A-Z]\. Provenance</summary>", h)
    assert "Where does naive overflow in float16?" in h
    assert read_manifest(overflow_run).config_sha256 in h


def test_analyses_json_holds_numbers_not_sentences(overflow_run: Path) -> None:
    an = open_results(overflow_run).analyses()
    assert set(an) >= {"nonfinite", "overflow", "attribution", "trend"}
    groups = an["overflow"]["groups"]
    naive = next(g for g in groups if g["implementations"] == ["naive"])
    assert naive["non_finite"] == naive["rows_lse_above_ln_max"] > 0
    assert naive["shifted_sum_overflow"] == 0 and naive["first"] == 12.0

    def no_sentences(obj):
        if isinstance(obj, dict):
            return all(no_sentences(v) for v in obj.values())
        if isinstance(obj, list):
            return all(no_sentences(v) for v in obj)
        return not (isinstance(obj, str) and len(obj.split()) > 6)

    assert no_sentences(an)


CANCEL = """
name = "cancel"
question = "Where is the tiny loss lost?"
classes = 10
batch_size = 10
samples = 2
seed = 5
formats = ["float32", "bfloat16"]
implementations = ["lse", "lse_log1p", "torch"]
[inputs]
generator = "confident"
margin = [0.0, 10.0, 20.0, 30.0]
"""


def test_cancellation_findings_and_the_keeper(write_config, tmp_path):
    d = _run(write_config, tmp_path, CANCEL)
    res = open_results(d)
    t = res.samples()
    comp = np.array(t.column("computed").to_pylist())
    ref = np.array(t.column("reference").to_pylist())
    impl = np.array(t.column("implementation").to_pylist())
    fmt = np.array(t.column("format").to_pylist())
    margin = np.array(t.column("margin").to_pylist())
    zero = (comp == 0) & (ref != 0)
    # lse in float32: the first margin where a row comes back 0, counted here
    sel = (impl == "lse") & (fmt == "float32")
    first = min(margin[sel & zero])
    md = (d / "report.md").read_text()
    key = _section(md, "## Answer: key findings")
    assert "In float32, the loss comes back as exactly 0 although the true loss is not 0" in key
    sentence = next(ln for ln in key.splitlines() if ln.startswith("- In float32, the loss"))
    assert re.search(rf"\blse(, [a-z_]+)*( and [a-z_]+)? from margin = {first:g}\b", sentence)
    assert not (zero & (impl == "lse_log1p")).any()
    assert "lse_log1p keeps the loss: it never returns 0 in bfloat16 and float32" in key
    assert "](plots/relative_error_vs_margin.png)" in md


def test_write_report_on_an_existing_folder_updates_the_manifest(overflow_run: Path) -> None:
    (overflow_run / "report.md").unlink()
    write_report(open_results(overflow_run, check=False))
    m = read_manifest(overflow_run)
    assert "report.md" in m.files and verify(overflow_run, m) == []


def test_committed_reports_have_no_failed_analyses() -> None:
    """Every bundled report under results/ was written without an analysis failing (their
    failures are printed into the report, not raised)."""
    reports = sorted((Path(__file__).resolve().parent.parent / "results").glob("*/report.md"))
    assert len(reports) >= 7
    for p in reports:
        assert "could not run" not in p.read_text(), p


def _f16_ulp_error(computed: float, hi: float, lo: float) -> float:
    """|computed - exact| / ulp(exact) in float16, from the definition in mpmath."""
    import mpmath

    with mpmath.workprec(200):
        e = mpmath.mpf(hi) + mpmath.mpf(lo)
        k = int(mpmath.floor(mpmath.log(abs(e), 2))) if e != 0 else -24
        ulp = mpmath.mpf(2) ** max(k - 10, -24)
        return float(abs(mpmath.mpf(computed) - e) / ulp)


def test_summary_ranks_the_implementations_by_worst_then_median_error(overflow_run: Path):
    """The ranking's order follows each implementation's largest ULP error recomputed here
    from the stored computed and exact values; an implementation with inf/NaN comes last;
    every row names the design choice."""
    import pyarrow.parquet as pq

    md = (overflow_run / "report.md").read_text()
    sec = _section(md, "## Summary")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in sec.splitlines()
            if line.startswith("| float16 |")]
    order = [r[2] for r in rows]
    assert [r[1] for r in rows] == ["1", "2", "3"]
    t = pq.read_table(overflow_run / "samples.parquet").to_pylist()
    worst: dict[str, float] = {}
    bad: dict[str, int] = {}
    for r in t:
        c = r["computed"]
        if c != c or abs(c) == float("inf"):
            bad[r["implementation"]] = bad.get(r["implementation"], 0) + 1
            continue
        u = _f16_ulp_error(c, r["exact_hi"], r["exact_lo"])
        worst[r["implementation"]] = max(worst.get(r["implementation"], 0.0), u)
    expected = sorted(worst, key=lambda k: (bad.get(k, 0) > 0, worst[k]))
    assert order == expected and order[-1] == "naive" and bad["naive"] == 40
    for r in rows:
        assert f"{worst[r[2]]:.4g}" == r[6]
        assert r[-1] and "max shift" in r[-1]  # each family's design phrase is shown


def test_float64_overflow_is_analysed(write_config, tmp_path: Path) -> None:
    """naive in float64 overflows where lse(x) > ln(max float64) = 709.78 (counted here in
    mpmath from the stored inputs); the overflow analysis handles float64's smallest
    subnormal (whose half is 0 in float64) and reports that count."""
    import mpmath

    from precision_lab.experiment.store import open_results

    run = _run(write_config, tmp_path, """
        name = "ovf64"
        question = "Where does naive overflow in float64?"
        classes = 4
        batch_size = 8
        samples = 2
        seed = 5
        formats = ["float64"]
        implementations = ["naive", "lse"]
        [inputs]
        generator = "normal"
        mean = 709.0
        scale = 1.0
        """)
    analyses = json.loads((run / "analyses.json").read_text())
    assert "failed" not in analyses.get("overflow", {}), analyses.get("overflow")
    res = open_results(run)
    x, _ = res.inputs(0, "float64")
    with mpmath.workdps(50):
        over = sum(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
                   > mpmath.log(mpmath.mpf(np.finfo(np.float64).max))
                   for row in np.asarray(x).reshape(-1, 4))
    assert 0 < over < 16
    md = (run / "report.md").read_text()
    assert f"exactly the {over} of 16 rows" in md


def test_a_failing_analysis_is_reported_not_raised(write_config, tmp_path: Path,
                                                   monkeypatch) -> None:
    """An analysis that raises is recorded as failed in analyses.json; its figure is left out
    and the rest of the report is written."""
    import precision_lab.explain.analyses as A

    def broken(ctx):
        raise ValueError("broken on purpose")

    monkeypatch.setattr(A, "ANALYSES", [(n, broken if n == "overflow" else f)
                                        for n, f in A.ANALYSES])
    run = _run(write_config, tmp_path, OVERFLOW)
    analyses = json.loads((run / "analyses.json").read_text())
    assert analyses["overflow"] == {"failed": "ValueError: broken on purpose"}
    assert not (run / "plots" / "nonfinite_vs_overflow_margin.png").exists()
    assert (run / "plots" / "ulp_hist.png").exists() and (run / "report.md").exists()


def test_bounds_and_attribution_use_the_plain_loss_points_only(write_config, tmp_path: Path):
    """The bounds and the step replay are about -log softmax(x)_t: with z_loss swept over
    [0, 1e-3] they use the 32 rows of the z_loss = 0 point only; with z-loss at every point
    neither analysis applies."""
    base = """
        name = "zl"
        question = "Bounds with z-loss?"
        classes = 8
        batch_size = 8
        samples = 4
        seed = 9
        formats = ["float32"]
        implementations = ["lse", "lse_log1p", "torch"]
        [inputs]
        generator = "normal"
        scale = 4.0
        [loss]
        """
    run = _run(write_config, tmp_path, base + "z_loss = [0.0, 1e-3]\n")
    an = json.loads((run / "analyses.json").read_text())
    assert an["bounds"]["checks"] and all(c["rows"] == 32 for c in an["bounds"]["checks"])
    run2 = run_experiment(load_config(write_config(base.replace('"zl"', '"zl2"')
                                                   + "z_loss = 1e-3\n", "b.toml")),
                          tmp_path / "out", finalize=_report).path
    an2 = json.loads((run2 / "analyses.json").read_text())
    assert "bounds" not in an2 and "attribution" not in an2


def test_a_tiny_run_explains_its_own_implementations_only(write_config, tmp_path: Path):
    run = _run(write_config, tmp_path, """
        name = "one"
        question = "One row."
        formats = ["float32"]
        implementations = ["lse", "torch"]
        [inputs]
        generator = "fixed"
        logits = [[0.0, 0.0, 0.0, 1.0]]
        targets = [3]
        """)
    an = json.loads((run / "analyses.json").read_text())
    (row,) = an["explained"]["rows"]
    assert set(row["implementations"]) == {"lse", "torch"}
