"""report.write_report on a tiny synthetic results folder."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from precision_lab.report.report import write_report


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)


def _row(point, scale, impl, fmt, n_finite, exact, n_overflow=0, umax=0.5):
    return {"point": point, "scale": scale, "implementation": impl, "format": fmt,
            "count": n_finite + n_overflow, "exact_match_rate": exact / n_finite if n_finite else None,
            "ulp_error_mean": 0.3, "ulp_error_median": 0.25, "ulp_error_p90": 0.45,
            "ulp_error_p99": 0.5, "ulp_error_max": umax, "bits_mean": 0.1,
            "n_finite": n_finite, "n_inf_match": 0, "n_overflow": n_overflow, "n_nan": 0,
            "n_missed_inf": 0, "n_undefined": 0}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "scale_sweep"
    (d / "plots").mkdir(parents=True)
    _png(d / "plots" / "ulp_error_vs_scale.png")
    _png(d / "plots" / "overflow_rate.png")
    manifest = {
        "config": {"name": "scale_sweep", "question": "Where does naive overflow in float16?",
                   "description": "Logits scaled by s."},
        "config_sha256": "ab" * 32, "versions": {"torch": "2.13.0", "numpy": "2.0"},
        "cpu_capability": "AVX512", "platform": "Linux-x86_64", "seed": 0,
        "git_commit": "deadbeef", "status": "complete",
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    summary = [
        _row(0, 8.0, "naive", "float16", 500, 400),
        _row(1, 12.0, "naive", "float16", 453, 300, n_overflow=47, umax=7.25),
        _row(0, 8.0, "lse_log1p", "float16", 500, 497),
        _row(1, 12.0, "lse_log1p", "float16", 500, 496),
    ]
    (d / "summary.json").write_text(json.dumps(summary))
    agreement = [{"point": 0, "scale": 8.0, "format": "float16", "a": "naive", "b": "lse_log1p",
                  "identical_rate": 0.8, "ulp_distance_mean": 0.2, "ulp_distance_max": 3, "count": 500}]
    (d / "agreement.json").write_text(json.dumps(agreement))
    return d


def test_report_html_is_self_contained_and_findings_carry_numbers(folder: Path) -> None:
    md, ht = write_report(folder)
    assert md == folder / "report.md" and ht == folder / "report.html"
    h = ht.read_text()
    imgs = re.findall(r"<img\b[^>]*>", h)
    assert len(imgs) == 2
    for tag in imgs:
        m = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        assert m, tag[:80]
        raw = base64.b64decode(m.group(1), validate=True)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    # the question and provenance come from the manifest
    assert "Where does naive overflow in float16?" in h
    assert "ab" * 32 in h and "AVX512" in h and "deadbeef" in h
    # findings carry numbers from the data
    assert "lse_log1p is correctly rounded on 99.3% (993/1000)" in h
    assert "naive overflows to inf on 47 of 1000 float16 samples; first at scale = 12 (none at scale = 8)" in h
    assert "7.25 ULP (naive)" in h
    assert "bit-identical on 80.0% (400/500)" in h
    text = md.read_text()
    assert "](plots/ulp_error_vs_scale.png)" in text
    assert "99.3% (993/1000)" in text


def test_report_without_plots_or_summary(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"description": "d"}}))
    md, ht = write_report(tmp_path)
    assert "<img" not in ht.read_text()
    assert "d" in md.read_text()


# --------------------------------------------------------------------------- report layout

def _sweep_folder(root: Path, points: int = 40) -> Path:
    """A synthetic sweep the size of the bundled ones: 8 implementations x 4 formats x
    `points` sweep points, every pair in the agreement table, naive overflowing from
    scale = 20 in float16, four plots."""
    d = root / "big_sweep"
    (d / "plots").mkdir(parents=True)
    for name in ("ulp_hist_float16", "ulp_vs_scale_float32", "mean_ulp_by_format", "extra_plot"):
        _png(d / "plots" / f"{name}.png")
    impls = ["naive", "naive_softmax", "lse", "lse_log1p", "torch", "torch_logsoftmax_nll",
             "torch_manual", "scipy"]
    fmts = ["float16", "bfloat16", "float32", "float64"]
    manifest = {"config": {"name": "big_sweep", "question": "Where does naive overflow?",
                           "description": "Logits scaled by s, swept."},
                "config_sha256": "cd" * 32, "status": "complete",
                "timings": {f"p{i:05d}_{f}": 0.01 for i in range(points) for f in fmts}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    summary, agreement = [], []
    for p in range(points):
        scale = float(p)
        for fm in fmts:
            for k, im in enumerate(impls):
                over = 20 if (im == "naive" and fm == "float16" and p >= 20) else 0
                summary.append(_row(p, scale, im, fm, 20 - over, 15 - k % 3 if not over else 0,
                                    n_overflow=over, umax=0.5 + k))
            for i, a in enumerate(impls):
                for b in impls[i + 1:]:
                    agreement.append({"point": p, "scale": scale, "format": fm, "a": a, "b": b,
                                      "identical_rate": 1.0 if {a, b} == {"torch", "torch_logsoftmax_nll"}
                                      else 0.75, "ulp_distance_mean": 0.3,
                                      "ulp_distance_max": 2, "count": 20})
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "agreement.json").write_text(json.dumps(agreement))
    return d


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n## ", start + len(heading))
    return md[start:nxt if nxt >= 0 else None]


def test_key_findings_lead_the_report_and_carry_numbers(folder: Path) -> None:
    md, ht = write_report(folder)
    text = md.read_text()
    # title, question, then the answer: before any table, plot or the appendix
    assert text.index("## Question") < text.index("## Answer: key findings") < text.index("## Summary")
    assert text.index("## Answer: key findings") < text.index("## Appendix")
    assert text.index("## Answer: key findings") < 1500
    bullets = [ln for ln in _section(text, "## Answer: key findings").splitlines() if ln.startswith("- ")]
    assert 3 <= len(bullets) <= 8
    assert all(re.search(r"\d", b) for b in bullets)
    # the overflow threshold found along the sweep axis leads
    assert bullets[0].startswith("- In float16, naive returns inf/NaN from scale = 12 "
                                 "(finite at scale = 8), on 47 of 1000 rows")
    # the compact summary: one row per implementation x format
    summ = _section(text, "## Summary")
    assert summ.count("\n| float16 |") == 2


def test_sweep_report_md_stays_small_and_html_keeps_everything(tmp_path: Path) -> None:
    d = _sweep_folder(tmp_path)
    md, ht = write_report(d)
    text = md.read_text()
    assert len(text.encode()) < 20_000, len(text.encode())
    # the key findings name the overflow threshold and the implementations that never overflow
    key = _section(text, "## Answer: key findings")
    assert "naive returns inf/NaN from scale = 20 (finite at scale = 19)" in key
    assert "never return inf or NaN" in key
    # identical implementations share a row of the compact summary; 7 rows per format
    summ = _section(text, "## Summary")
    assert "torch = torch_logsoftmax_nll" in summ
    assert summ.count("\n| float32 |") == 7
    # the big tables are capped in report.md and point to the CSV files
    assert "(summary.csv)" in text and "(agreement.csv)" in text
    h = ht.read_text()
    # report.html: the appendix sections are collapsed, the answer is not
    assert h.count("<details>") == h.count("</details>") >= 4
    first = h.index("<details>")
    assert h.index("Answer: key findings") < first and h.index("All findings") > first
    assert re.search(r"<details><summary>[A-Z]\. Provenance</summary>", h)
    # ... and holds the full per-point table (up to its cap)
    assert h.count("<tr>") > 600


def test_every_img_has_png_data(tmp_path: Path) -> None:
    d = _sweep_folder(tmp_path, points=3)
    _, ht = write_report(d)
    h = ht.read_text()
    imgs = re.findall(r"<img\b[^>]*>", h)
    assert len(imgs) == 4
    for tag in imgs:
        m = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        assert m, tag[:80]
        assert base64.b64decode(m.group(1), validate=True).startswith(b"\x89PNG\r\n\x1a\n")


def test_capability_study_leads_with_the_pass_share_per_kernel_set(tmp_path: Path) -> None:
    """A folder without summary.json (the capability study): the answer comes from the tables
    of capabilities.json."""
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"question": "Does it depend?"}}))
    per = [{"requested": c, "batches": 1000, "passed_1e-15": p, "pass_equals_bit_identity": True,
            "median_loss": 2.335, "ulp_at_median_loss": 2.384e-07,
            "smallest_nonzero_difference": 2.384e-07, "ce_correctly_rounded": 580,
            "manual_correctly_rounded": 597, "ce_ulp_error_max": 2.05, "manual_ulp_error_max": 2.43}
           for c, p in (("default", 611), ("avx2", 607))]
    between = [{"a": "default", "b": "avx2", "ce_identical": 879, "manual_identical": 1000,
                "batches": 1000}]
    (tmp_path / "capabilities.json").write_text(json.dumps(
        {"text": "study", "findings": ["a stored finding"],
         "tables": {"per capability": per, "between capabilities": between}}))
    md, ht = write_report(tmp_path, analyses=False)
    key = _section(md.read_text(), "## Answer: key findings")
    assert "default 61.1% (611/1000); avx2 60.7% (607/1000)" in key
    assert "passing batches are exactly the bit-identical ones" in key
    assert "87.9% (879/1000) (default vs avx2)" in key
    assert "a stored finding" not in key and "a stored finding" in md.read_text()


def test_committed_reports_have_no_failed_analyses() -> None:
    """Every bundled report under results/ was written without a finder, key-finding
    selector or analysis failing (their failures are printed into the report, not raised)."""
    reports = sorted((Path(__file__).resolve().parent.parent / "results").glob("*/report.md"))
    assert len(reports) >= 7
    for p in reports:
        text = p.read_text()
        assert " failed: " not in text, p
