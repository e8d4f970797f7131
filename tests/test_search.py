"""Worst-case search: its findings re-measured from the definition in mpmath, its moves along
the format's floats against numpy's nextafter, its rounds reproducible, its budget honoured,
its folders continued, and the same bytes in this process, in local processes and on a real
Dask cluster."""

from __future__ import annotations

import json
import time

import mpmath
import numpy as np
import pytest
from oracles import exact_loss, ulp_in_binade
from typer.testing import CliRunner

from precision_lab.cli import app
from precision_lab.experiment.executor import open_executor
from precision_lab.implementations import get_implementation
from precision_lab.numerics.formats import get_format
from precision_lab.search.families import FAMILIES, draw
from precision_lab.search.floats import from_ordinal, max_ordinal, step, values_of_bits
from precision_lab.search.worst import SearchSpec, merge_rounds, run_search, search_round

runner = CliRunner()


def _ulp_error_from_definition(logits: list[float], target: int, computed: float, fmt: str
                               ) -> mpmath.mpf:
    f = get_format(fmt)
    L = exact_loss(np.array(logits), target)
    with mpmath.workdps(420):
        return abs(mpmath.mpf(computed) - L) / ulp_in_binade(L, f.precision, f.emin)


# --------------------------------------------------------------------------- floats

@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_steps_along_the_format_are_nextafter(fmt):
    f = get_format(fmt)
    v = values_of_bits(f)
    w = v.astype(np.float64)
    v = v[np.isfinite(w)]
    w = w[np.isfinite(w)]
    up = step(v, np.ones(v.size, np.int64), f).astype(np.float64)
    # the oracle: the next float of the format above w, from the format's own bit patterns
    grid = np.unique(w)
    nxt = grid[np.minimum(np.searchsorted(grid, w, side="right"), grid.size - 1)]
    nxt = np.where(w == 0, grid[np.searchsorted(grid, 0.0, side="right")], nxt)
    assert np.array_equal(up, nxt)
    top = max_ordinal(f)
    assert float(from_ordinal(np.array([top + 5]), f)[0]) == f.max_finite  # clamped, finite
    assert float(from_ordinal(np.array([-top - 5]), f)[0]) == -f.max_finite


def test_float16_steps_match_numpy_nextafter():
    x = values_of_bits("float16")
    x = x[np.isfinite(x.astype(np.float64)) & (np.abs(x) < np.float16(65504))]
    down = step(x, -np.ones(x.size, np.int64), "float16")
    want = np.nextafter(x, np.float16(-np.inf))
    want = np.where(want == 0, np.float16(0), want)  # -0 and +0 are one point
    assert np.array_equal(down.astype(np.float64), want.astype(np.float64))


@pytest.mark.parametrize("family", FAMILIES)
def test_families_are_finite_values_of_the_format_and_seeded(family):
    for fmt in ("float16", "bfloat16", "float64"):
        f = get_format(fmt)
        a = draw(family, np.random.default_rng(3), 64, 10, f)
        b = draw(family, np.random.default_rng(3), 64, 10, f)
        assert a[0].dtype == f.np_dtype and a[0].shape == (64, 10)
        assert np.isfinite(a[0].astype(np.float64)).all()
        assert ((a[1] >= 0) & (a[1] < 10)).all()
        assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1])


# --------------------------------------------------------------------------- rounds

def test_a_round_is_reproducible_and_its_cases_hold_up_in_mpmath():
    spec = SearchSpec("lse", "bfloat16", 6, restarts=40, steps=4, neighbours=8).resolved()
    a = search_round(spec.to_dict(), 5)
    b = search_round(spec.to_dict(), 5)
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                    default=str)
    assert a["evaluations"] == spec.evaluations_per_round
    impl = get_implementation("lse")
    errs = [c["ulp_error"] for c in a["cases"]]
    assert errs == sorted(errs, reverse=True) and len(errs) == spec.keep
    for c in a["cases"]:
        x = np.array([c["logits"]], dtype=np.float64).astype(get_format("bfloat16").np_dtype)
        assert float(impl(x, np.array([c["target"]]), "bfloat16")[0]) == c["computed"]
        e = _ulp_error_from_definition(c["logits"], c["target"], c["computed"], "bfloat16")
        assert float(e) == pytest.approx(c["ulp_error"], rel=1e-9)


def test_merge_takes_the_earlier_round_among_equals():
    spec = SearchSpec("torch", "float16", 4, restarts=24, steps=2, neighbours=4,
                      keep=3).resolved()
    docs = [search_round(spec.to_dict(), r) for r in range(3)]
    m1 = merge_rounds(spec, docs)
    m2 = merge_rounds(spec, docs[::-1])
    assert m1.to_json() == m2.to_json()
    assert m1.evaluations == 3 * spec.evaluations_per_round
    errs = [c.ulp_error for c in m1.cases]
    best = max(c["ulp_error"] for d in docs for c in d["cases"])
    assert errs[0] == best and errs == sorted(errs, reverse=True)


# --------------------------------------------------------------------------- whole searches

def test_torch_float16_search_finds_more_than_1000_ulp_and_mpmath_agrees(tmp_path):
    r = runner.invoke(app, ["search", "--impl", "torch", "--format", "float16", "--classes",
                            "10", "--rounds", "2", "--json", "--out", str(tmp_path)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    for key in ("max_ulp_error", "logits", "target", "computed", "reference"):
        assert key in doc
    assert doc["max_ulp_error"] > 1000 and doc["rounds"] == 2
    e = _ulp_error_from_definition(doc["logits"], doc["target"], doc["computed"], "float16")
    assert float(e) == pytest.approx(doc["max_ulp_error"], rel=1e-9)
    # the reported truth is the correctly rounded loss: within half an ulp of the exact one
    f = get_format("float16")
    L = exact_loss(np.array(doc["logits"]), doc["target"])
    with mpmath.workdps(420):
        assert abs(mpmath.mpf(doc["reference"]) - L) <= ulp_in_binade(L, 11, f.emin) / 2
    # the saved case replays: explain reads cases.npy and measures the same error
    folder = tmp_path / "search_torch_float16_v10_s0"
    cases = np.load(folder / "cases.npy")
    assert cases.shape == (8, 10) and cases[0].tolist() == doc["logits"]
    r = runner.invoke(app, ["explain", "--file", str(folder / "cases.npy"), "--row", "0",
                            "--target", str(doc["target"]), "--format", "float16", "--json",
                            "--no-attribution"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ex = json.loads(r.output)
    assert ex["implementations"]["torch"]["ulp_error"] == pytest.approx(doc["max_ulp_error"],
                                                                         rel=1e-12)
    r = runner.invoke(app, ["show", str(folder)], catch_exceptions=False)
    assert r.exit_code == 0 and "torch" in r.output


def test_the_budget_is_honoured_and_rounds_replay_it(tmp_path):
    spec = SearchSpec("lse_log1p", "float32", 10)
    t0 = time.perf_counter()
    a = run_search(spec, tmp_path / "a", budget=1.5)
    took = time.perf_counter() - t0
    assert a.rounds >= 1
    one_round = took / max(a.rounds, 1)
    assert took < 1.5 + 2 * one_round + 3.0  # no new round after the budget; startup aside
    b = run_search(spec, tmp_path / "b", budget=None, rounds=a.rounds)
    name = "search_lse_log1p_float32_v10_s0"
    assert (tmp_path / "a" / name / "search.json").read_bytes() == \
        (tmp_path / "b" / name / "search.json").read_bytes()
    assert (tmp_path / "a" / name / "cases.npy").read_bytes() == \
        (tmp_path / "b" / name / "cases.npy").read_bytes()
    assert b.computed_rounds == a.rounds


def test_a_search_continues_from_its_rounds(tmp_path):
    spec = SearchSpec("naive", "bfloat16", 5, restarts=30, steps=3, neighbours=6)
    first = run_search(spec, tmp_path, budget=None, rounds=2)
    assert first.computed_rounds == 2 and first.reused_rounds == 0
    more = run_search(spec, tmp_path, budget=None, rounds=4)
    assert more.computed_rounds == 2 and more.reused_rounds == 2 and more.rounds == 4
    run_search(spec, tmp_path / "fresh", budget=None, rounds=4)
    name = "search_naive_bfloat16_v5_s0"
    assert (tmp_path / name / "search.json").read_bytes() == \
        (tmp_path / "fresh" / name / "search.json").read_bytes()
    # naive overflows: the non-finite outcomes are counted apart, with an example
    nf = more.nonfinite
    assert nf and all(v["count"] > 0 and v["example"].ulp_error is None for v in nf.values())
    # another seed is another search: refused in the same folder without --force
    with pytest.raises(Exception, match="--force"):
        run_search(SearchSpec("naive", "bfloat16", 5, restarts=31, steps=3, neighbours=6),
                   tmp_path, budget=None, rounds=1, name=name)


def test_local_processes_give_the_same_bytes(tmp_path):
    spec = SearchSpec("torch", "bfloat16", 10, restarts=64, steps=4, neighbours=8)
    run_search(spec, tmp_path / "here", budget=None, rounds=3)
    with open_executor(workers=2) as ex:
        run_search(spec, tmp_path / "pool", budget=None, rounds=3, executor=ex, workers=2)
    name = "search_torch_bfloat16_v10_s0"
    for f in ("search.json", "cases.npy", "summary.json"):
        assert (tmp_path / "here" / name / f).read_bytes() == \
            (tmp_path / "pool" / name / f).read_bytes(), f


def test_a_real_dask_cluster_gives_the_same_search_and_slice(tmp_path):
    distributed = pytest.importorskip("distributed")
    args = ["--impl", "torch", "--format", "float16", "--classes", "6", "--rounds", "3"]
    r = runner.invoke(app, ["search", *args, "--out", str(tmp_path / "here")],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "slice.toml"
    cfg.write_text('[[slice]]\nname = "s"\nformat = "bfloat16"\nimplementations = ["lse", '
                   '"torch"]\nlogits = [{range = [-4.0, 4.0]}, {values = [0.0, 9.0, -3.5]}]\n'
                   'block = 600\n')
    r = runner.invoke(app, ["exhaustive", "--config", str(cfg), "--out", str(tmp_path / "xh")],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        r = runner.invoke(app, ["search", *args, "--out", str(tmp_path / "dask"),
                                "--scheduler", addr], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["exhaustive", "--config", str(cfg), "--out",
                                str(tmp_path / "xd"), "--scheduler", addr],
                          catch_exceptions=False)
        assert r.exit_code == 0, r.output
    name = "search_torch_float16_v6_s0"
    for f in ("search.json", "cases.npy"):
        assert (tmp_path / "here" / name / f).read_bytes() == \
            (tmp_path / "dask" / name / f).read_bytes(), f
    assert (tmp_path / "xh" / "s" / "slice.json").read_bytes() == \
        (tmp_path / "xd" / "s" / "slice.json").read_bytes()
    assert len(list((tmp_path / "xd" / "s" / "chunks").iterdir())) > 1


def test_bad_input_is_one_line_with_exit_code_2(tmp_path):
    r = runner.invoke(app, ["search", "--impl", "nope", "--format", "float16", "--out",
                            str(tmp_path)])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "lse_log1p" in r.output
    r = runner.invoke(app, ["search", "--impl", "lse", "--format", "float8", "--out",
                            str(tmp_path)])
    assert r.exit_code == 2 and "float8" in r.output
    r = runner.invoke(app, ["exhaustive", "--format", "float32", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "float16 and bfloat16 only" in r.output
    r = runner.invoke(app, ["exhaustive", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--format" in r.output and "--config" in r.output
