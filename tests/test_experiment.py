"""Running experiments: the results-folder schema, determinism, reductions, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from precision_lab.experiment import runner as exp
from precision_lab.experiment.config import load_config
from precision_lab.experiment.records import SUMMARY_STATS
from precision_lab.experiment.runner import ResultsExistError, RunError, run_experiment
from precision_lab.experiment.store import open_results, read_manifest
from precision_lab.implementations import Capabilities
from precision_lab.implementations.seed import compute_crossentropyloss_manual
from precision_lab.numerics.metrics import CATEGORIES
from precision_lab.numerics.sums import reduce_in_format

SAMPLE_COLUMNS = ["point", "scale", "sample", "batch", "row", "implementation", "format",
                  "computed", "reference", "exact_hi", "exact_lo", "ulp_distance", "ulp_error",
                  "bits_of_error", "relative_error", "category"]


def _report(res, progress):
    from precision_lab.report.report import write_report

    write_report(res, progress)


def test_results_folder_schema(tiny_config, tmp_path):
    res = run_experiment(load_config(tiny_config), tmp_path / "out", finalize=_report)
    d = res.path
    assert d == tmp_path / "out" / "tiny"
    for name in ("samples.parquet", "rows.parquet", "summary.json", "summary.csv",
                 "agreement.json", "agreement.csv", "analyses.json", "manifest.json", "run.json",
                 "report.md", "report.html"):
        assert (d / name).is_file(), name
    assert not (d / "partial").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny"]  # no temp dirs

    t = pq.read_table(d / "samples.parquet")
    assert t.column_names == SAMPLE_COLUMNS
    # 2 points x 2 formats x 3 implementations x (2 batches x 3 rows)
    assert t.num_rows == 72
    assert str(t.schema.field("ulp_distance").type) == "uint64"
    assert set(t.column("category").to_pylist()) <= set(CATEGORIES)
    fin = np.array(t.column("category").to_pylist()) == "finite"
    ref = t.column("reference").to_numpy()
    hi, lo = t.column("exact_hi").to_numpy(), t.column("exact_lo").to_numpy()
    fmt = np.array(t.column("format").to_pylist())
    # the reference is the exact value rounded to the format: within half an ulp of hi + lo
    f32 = fin & (fmt == "float32")
    assert np.all(np.abs(ref[f32] - hi[f32] - lo[f32]) <= 2.0**-24 * np.abs(hi[f32]))

    summary = json.loads((d / "summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 2 * 3 * 2 and summary["sweep_axes"] == ["scale"]
    r0 = rows[0]
    assert list(r0)[:4] == ["point", "scale", "implementation", "format"]
    assert list(r0)[4:] == list(SUMMARY_STATS)
    assert r0["count"] == 6 and sum(r0[f"n_{c}"] for c in CATEGORIES) == 6
    assert (d / "summary.csv").read_text().splitlines()[0].startswith(
        "point,scale,implementation,format,count")

    agree = json.loads((d / "agreement.json").read_text())["rows"]
    assert len(agree) == 2 * 2 * 3  # points x formats x pairs
    assert {"implementation_a", "implementation_b", "identical_rate", "ulp_distance_mean",
            "ulp_distance_max"} <= set(agree[0])

    m = read_manifest(d)
    assert m.status == "complete" and len(m.config_sha256) == 64
    assert m.config["formats"] == ["float16", "float32"]
    assert m.environment["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert m.environment["versions"]["torch"] == torch.__version__ and m.config["seed"] == 7
    assert [p["params"]["scale"] for p in m.points] == [1.0, 30.0]
    assert m.counts == {"logit_rows": 12, "evaluations": 72, "implementations": 3,
                        "formats": 2}
    # the manifest lists every file with its sha256 (run.json and itself excepted)
    listed = set(m.files)
    on_disk = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()
               and not str(p.relative_to(d)).startswith("inputs/")}
    assert on_disk - listed == {"manifest.json", "run.json"}
    assert set(m.inputs) == {f"inputs/p0000{i}_{f}{s}.npy" for i in (0, 1)
                             for f in ("float16", "float32") for s in ("", ".targets")}
    assert set(m.plots) <= listed and all(m.plots.values())  # every plot has a caption
    assert open_results(d).summary()[0].implementation == "naive"
    # nothing that changes from run to run in the committed part
    text = (d / "manifest.json").read_text()
    for word in ("started_at", "finished_at", "host", "commit"):
        assert word not in text
    info = json.loads((d / "run.json").read_text())
    assert info["started_at"] and set(info["stage_seconds"]) == {"compute", "report", "total"}


def test_stored_inputs_are_what_was_measured(tiny_config, tmp_path):
    """The rounded inputs the run stores reproduce every reference value."""
    from precision_lab.numerics.reference import cross_entropy

    d = run_experiment(load_config(tiny_config), tmp_path).path
    res = open_results(d)
    t = res.samples()
    for point in (0, 1):
        for fmt in ("float16", "float32"):
            x, y = res.inputs(point, fmt)
            assert x.shape == (2, 3, 5) and str(x.dtype) == fmt
            ref = cross_entropy(np.asarray(x).reshape(6, 5), np.asarray(y).reshape(6), fmt)
            sel = [i for i in range(t.num_rows) if t.column("point")[i].as_py() == point
                   and t.column("format")[i].as_py() == fmt
                   and t.column("implementation")[i].as_py() == "lse"]
            got = np.array([t.column("reference")[i].as_py() for i in sel])
            assert np.array_equal(got, ref.astype(np.float64))


def test_same_config_gives_identical_tables(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    a = run_experiment(cfg, tmp_path / "a").path
    b = run_experiment(cfg, tmp_path / "b").path
    for name in ("samples.parquet", "summary.json", "summary.csv", "agreement.json",
                 "agreement.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_existing_results_are_never_overwritten_silently(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    run_experiment(cfg, tmp_path)
    before = (tmp_path / "tiny" / "manifest.json").read_bytes()
    with pytest.raises(ResultsExistError, match="--force"):
        run_experiment(cfg, tmp_path)
    assert (tmp_path / "tiny" / "manifest.json").read_bytes() == before
    with pytest.raises(ResultsExistError, match="nothing to resume"):
        run_experiment(cfg, tmp_path, resume=True)
    res = run_experiment(cfg, tmp_path, force=True)
    assert res.computed_chunks == 4


def _interrupt_after(monkeypatch, n: int):
    real = exp.compute_chunk
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        if calls["n"] >= n:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(exp, "compute_chunk", flaky)


def test_interrupt_then_resume_equals_uninterrupted(tiny_config, tmp_path, monkeypatch):
    cfg = load_config(tiny_config)
    clean = run_experiment(cfg, tmp_path / "clean").path
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, out)
    target = out / "tiny"
    m = read_manifest(target)
    assert m.status == "partial" and m.chunks_done == 1 and len(m.chunks) == 4
    assert sorted(p.name for p in (target / "partial").glob("*.parquet")) == [
        "p00000_float16.parquet", "p00000_float16.rows.parquet"]
    assert not (target / "samples.parquet").exists()
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]  # no half-written folder
    with pytest.raises(ResultsExistError, match="--resume"):
        run_experiment(cfg, out)
    res = run_experiment(cfg, out, resume=True)
    assert (res.computed_chunks, res.resumed_chunks) == (3, 1)
    for name in ("samples.parquet", "summary.json", "agreement.json"):
        assert (target / name).read_bytes() == (clean / name).read_bytes(), name
    assert read_manifest(target).status == "complete"


def test_resume_refuses_a_changed_config(tiny_config, tmp_path, monkeypatch, write_config):
    with monkeypatch.context() as mp:
        _interrupt_after(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(load_config(tiny_config), tmp_path)
    changed = write_config(tiny_config.read_text().replace("seed = 7", "seed = 8"), "b.toml")
    with pytest.raises(RunError, match="different config"):
        run_experiment(load_config(changed), tmp_path, resume=True)
    assert (tmp_path / "tiny" / "partial" / "p00000_float16.parquet").exists()
    res = run_experiment(load_config(changed), tmp_path, resume=True, force=True)
    assert (res.computed_chunks, res.resumed_chunks) == (4, 0)  # --force starts over


def test_failure_while_finishing_keeps_chunks(tiny_config, tmp_path):
    def boom(res, progress):
        raise RuntimeError("plotting failed")

    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        run_experiment(load_config(tiny_config), out, finalize=boom)
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]  # the temp folder is gone
    assert len(list((out / "tiny" / "partial").glob("p*_*[0-9].parquet"))) == 4
    assert read_manifest(out / "tiny").status == "partial"
    res = run_experiment(load_config(tiny_config), out, resume=True)
    assert res.computed_chunks == 0 and res.resumed_chunks == 4


# ---------------------------------------------------------------- reductions

def test_generic_mean_reproduces_the_seed_loop_bit_for_bit():
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        B = int(torch.randint(1, 13, (1,), generator=g))
        x = torch.randn(B, 7, generator=g) * 4
        y = torch.randint(0, 7, (B,), generator=g)
        per = torch.stack([-torch.log(torch.exp(r[c]) / torch.exp(r).sum()) for r, c in zip(x, y)])
        ours = reduce_in_format(per.numpy(), "mean", "float32")
        assert ours.dtype == np.float32
        assert ours.view(np.uint32) == compute_crossentropyloss_manual(x, y).numpy().view(np.uint32)


def test_reduce_in_format_sums_in_the_format():
    v = np.array([1.0, 2.0**-11, 2.0**-11], dtype=np.float16)
    # left to right in float16: 1 + 2^-11 ties to 1, twice; the exact sum would be 1 + 2^-10
    assert reduce_in_format(v, "sum", "float16") == np.float16(1.0)
    assert reduce_in_format(np.array([1.0, 2.0, 4.0]), "mean", "float64") == 7.0 / 3


def reducing_impl(logits, targets, fmt, reduction="none"):
    """A custom implementation that reduces itself (declares own_reduction)."""
    from precision_lab.numerics.formats import get_format

    f = get_format(fmt)
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    out = torch.nn.functional.cross_entropy(x, torch.from_numpy(np.asarray(targets)),
                                            reduction=reduction).numpy()
    return np.asarray(out, dtype=f.np_dtype) if reduction != "none" else out.astype(f.np_dtype)


reducing_impl.capabilities = Capabilities(own_reduction=True)  # type: ignore[attr-defined]


def test_implementation_with_its_own_reduction_is_asked(write_config, tmp_path, monkeypatch):
    import precision_lab.experiment.measure as measure

    seen = []
    real = measure.reduce_in_format
    monkeypatch.setattr(measure, "reduce_in_format",
                        lambda *a: seen.append(1) or real(*a))
    cfg = load_config(write_config("""
        name = "red"
        question = "q"
        classes = 4
        batch_size = 5
        samples = 3
        formats = ["float64"]
        implementations = ["test_experiment:reducing_impl", "lse"]
        reduction = "mean"
        [inputs]
        generator = "uniform"
    """))
    d = run_experiment(cfg, tmp_path).path
    t = pq.read_table(d / "samples.parquet")
    assert t.num_rows == 2 * 3 and set(t.column("row").to_pylist()) == {-1}
    assert len(seen) == 3  # only lse went through the generic reduction, once per batch
    s = json.loads((d / "summary.json").read_text())
    assert {r["implementation"] for r in s["rows"]} == {"test_experiment:reducing_impl", "lse"}
    assert len(s["values"]) == 6  # tiny experiments carry every value


def test_every_metric_column_against_an_independent_oracle(tiny_config, tmp_path):
    """Regenerate each row's input, compute its loss at 200 digits from the definition, and
    check the runner's reference, ULP distance, ULP error, bits of error, relative error and
    category against values derived here, not by the package's metrics."""
    import math

    import mpmath
    from oracles import exact_loss

    from precision_lab.experiment.config import generate, sweep_points
    from precision_lab.numerics.formats import get_format, round_to, to_format

    cfg = load_config(tiny_config)
    t = pq.read_table(run_experiment(cfg, tmp_path / "out").path / "samples.parquet")
    cols = {c: t.column(c).to_pylist() for c in t.column_names}
    batches = {p.index: generate(cfg, p) for p in sweep_points(cfg)}
    checked = 0
    for i in range(t.num_rows):
        f = get_format(cols["format"][i])
        inp = batches[cols["point"][i]]
        x = to_format(inp.logits[cols["batch"][i]], f)[cols["row"][i]]
        exact = exact_loss(x, int(inp.targets[cols["batch"][i], cols["row"][i]]), dps=200)
        ref = round_to(exact, f)
        assert cols["reference"][i] == float(ref)
        comp = cols["computed"][i]
        if not math.isfinite(comp):
            assert cols["category"][i] in ("overflow", "nan")
            continue
        assert cols["category"][i] == "finite"
        # ULP distance: Python-int ordinals from the bit patterns (hypothesis' model), checked
        # by nextafter stepping where the distance is small
        def ordinal(v) -> int:
            bits = int(np.asarray(v, f.np_dtype).view(f.uint_dtype))
            sign = 1 << (f.bits - 1)
            return -(bits & (sign - 1)) if bits & sign else bits

        steps = abs(ordinal(comp) - ordinal(ref))
        if steps < 64:
            a, b = sorted([f.np_dtype.type(comp), ref], key=float)
            for _ in range(steps):
                a = np.nextafter(a, f.np_dtype.type(np.inf))
            assert a == b
        assert cols["ulp_distance"][i] == steps
        assert cols["bits_of_error"][i] == pytest.approx(math.log2(1 + steps))
        with mpmath.workdps(60):
            e = mpmath.floor(mpmath.log(abs(exact), 2))
            ulp = mpmath.mpf(2) ** (max(int(e), f.emin) - f.precision + 1)
            want = float(abs(mpmath.mpf(comp) - exact) / ulp)
            rel = float(abs(mpmath.mpf(comp) - exact) / abs(exact))
            # the runner measures against the reference's hi + lo, which the fast path gives
            # to (V + 750) * 2**-53 relative (reference docstring); allow twice that
            slack = float(2 * (x.size + 750) * mpmath.mpf(2) ** -53 * abs(exact))
        assert abs(cols["ulp_error"][i] - want) <= slack / float(ulp) + 1e-12
        assert abs(cols["relative_error"][i] - rel) <= slack / float(abs(exact)) + 1e-300
        checked += 1
    assert checked >= 60  # 72 rows; scale 30 may overflow naive in float16


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_run_json_records_the_peak_memory(tiny_config, tmp_path):
    """The recorded peak lies between the kernel's resident size before the run and its
    high-water mark after it (VmRSS / VmHWM from /proc, an independent account)."""
    before = _proc_status_kib("VmRSS") / 1024
    res = run_experiment(load_config(tiny_config), tmp_path / "out", finalize=_report)
    after = _proc_status_kib("VmHWM") / 1024
    peak = res.run_info.peak_rss_mib
    assert set(peak) == {"process"}
    assert before - 1 <= peak["process"] <= after + 1
    assert "peak_rss_mib" in (res.path / "run.json").read_text()
    assert "peak" not in (res.path / "manifest.json").read_text()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_is_the_experiments_own(tiny_config, tmp_path):
    """A large array freed before the run does not count: the peak starts at the run."""
    big = np.ones(2 ** 26)  # 512 MiB
    big[::512] = 2.0
    del big
    res = run_experiment(load_config(tiny_config), tmp_path / "out")
    assert res.run_info.peak_rss_mib["process"] < _proc_status_kib("VmRSS") / 1024 + 400
