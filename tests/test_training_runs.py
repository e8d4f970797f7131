"""Experiments with nn.CrossEntropyLoss's keywords, gradients and an input format: the runner's
tables against torch in float64 and against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from precision_lab.experiment.config import ConfigError, load_config
from precision_lab.experiment.runner import run_experiment
from precision_lab.experiment.store import open_results

TRAIN = """
name = "train"
question = "q"
classes = 7
batch_size = 5
samples = 3
seed = 4
formats = ["float64", "bfloat16"]
implementations = ["lse_log1p", "torch", "torch(reduce=kahan)"]
quantity = ["loss", "grad"]
reduction = "mean"
[inputs]
generator = "normal"
scale = 2.0
[loss]
weight_spread = 100.0
ignore_fraction = 0.3
label_smoothing = [0.0, 0.1]
"""


@pytest.fixture(scope="module")
def train_run(tmp_path_factory, finalize):
    d = tmp_path_factory.mktemp("train")
    (d / "c.toml").write_text(TRAIN)
    return run_experiment(load_config(d / "c.toml"), d / "out", finalize=finalize).path


def _torch_batch(x, t, w, eps):
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(xt, torch.tensor(np.asarray(t)),
                                             weight=torch.tensor(np.asarray(w, np.float64)),
                                             label_smoothing=eps)
    loss.backward()
    return float(loss.detach()), xt.grad.numpy()


def test_loss_and_gradient_truth_agree_with_torch_float64(train_run):
    """In float64 the certified mean loss and gradient are within a few float64 ulps (torch's
    own error: 16 allowed) of
    torch's float64 computation on the stored inputs (an independent evaluation)."""
    res = open_results(train_run)
    t = res.samples()
    cols = {c: t.column(c).to_pylist() for c in ("point", "sample", "implementation", "format",
                                                  "quantity", "element", "reference",
                                                  "label_smoothing", "row")}
    checked = 0
    for point, eps in ((0, 0.0), (1, 0.1)):
        x, y = res.inputs(point, "float64")
        w = np.load(res.root / "inputs" / f"p0000{point}_float64.weight.npy")
        assert (np.asarray(y) == -100).any()  # some rows ignored
        for s in range(3):
            want_loss, want_grad = _torch_batch(x[s], y[s], w, eps)
            for i in range(len(cols["point"])):
                if (cols["point"][i], cols["format"][i], cols["implementation"][i]) != \
                        (point, "float64", "torch"):
                    continue
                if cols["quantity"][i] == "loss" and cols["sample"][i] == s:
                    assert abs(cols["reference"][i] - want_loss) <= 8e-16 * abs(want_loss)
                    checked += 1
                elif cols["quantity"][i] == "grad" and cols["sample"][i] // 5 == s:
                    g = want_grad[cols["row"][i], cols["element"][i]]
                    assert abs(cols["reference"][i] - g) <= 16 * 2.0**-52 * abs(g) + 1e-300
                    checked += 1
    assert checked == 2 * 3 + 2 * 15


def test_summary_has_a_quantity_column_and_gradients_json(train_run):
    res = open_results(train_run)
    header = (train_run / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("point,label_smoothing,implementation,format,quantity,count")
    rows = res.summary()
    grad = [r for r in rows if r.quantity == "grad"]
    # every gradient element counted: 3 batches x 5 rows x 7 classes per point and format
    assert {r.stats.count for r in grad} == {105}
    assert {r.implementation for r in grad} == {"lse_log1p", "torch", "torch(reduce=kahan)"}
    facts = res.grad_facts()
    assert len(facts) == 2 * 2 * 3 and all(f.elements == 105 for f in facts)
    md = (train_run / "report.md").read_text()
    assert "gradient elements correctly rounded" in md


def test_reduce_parameter_changes_only_the_reduction(train_run):
    """torch(reduce=kahan) reduces torch's per-sample losses itself; its gradient is torch's."""
    res = open_results(train_run)
    t = res.samples()
    impl = np.array(t.column("implementation").to_pylist())
    q = np.array(t.column("quantity").to_pylist())
    comp = t.column("computed").to_numpy()
    g_torch = comp[(impl == "torch") & (q == "grad")]
    g_kahan = comp[(impl == "torch(reduce=kahan)") & (q == "grad")]
    assert np.array_equal(g_torch, g_kahan)


def test_config_refuses_what_an_implementation_cannot_do(write_config):
    base = TRAIN.replace('implementations = ["lse_log1p", "torch", "torch(reduce=kahan)"]',
                         'implementations = ["naive"]')
    with pytest.raises(ConfigError, match="'naive' does not support weight") as e:
        load_config(write_config(base))
    assert "lse_log1p" in str(e.value)  # the allowed ones are listed
    grad_only = base.replace("[loss]\nweight_spread = 100.0\nignore_fraction = 0.3\n"
                             "label_smoothing = [0.0, 0.1]\n", "")
    with pytest.raises(ConfigError, match="'naive' has no gradient"):
        load_config(write_config(grad_only))
    bad = TRAIN.replace("label_smoothing = [0.0, 0.1]", "label_smoothing = 1.5")
    with pytest.raises(ConfigError, match="loss.label_smoothing.*in \\[0, 1\\]"):
        load_config(write_config(bad))
    bad = TRAIN.replace('"torch(reduce=kahan)"', '"torch(reduce=magic)"')
    with pytest.raises(ConfigError, match="reduce='magic'"):
        load_config(write_config(bad))


def test_input_format_rounds_logits_once_and_the_loss_to_another(write_config, tmp_path):
    """bfloat16 logits, float32 loss: the stored logits are bfloat16, the reference is the
    exact loss of those values rounded to float32 (checked with torch float64 here, whose
    error at float64 is far below half a float32 ulp)."""
    cfg = load_config(write_config("""
        name = "upcast"
        question = "q"
        classes = 50
        batch_size = 8
        samples = 2
        input_format = "bfloat16"
        formats = ["float32"]
        implementations = ["torch_upcast", "torch"]
        [inputs]
        generator = "normal"
        scale = 3.0
    """))
    d = run_experiment(cfg, tmp_path).path
    res = open_results(d)
    x, y = res.inputs(0, "float32")
    assert str(x.dtype) == "bfloat16"
    want = torch.nn.functional.cross_entropy(
        torch.tensor(np.asarray(x).reshape(16, 50).astype(np.float64)),
        torch.tensor(np.asarray(y).reshape(16)), reduction="none").numpy().astype(np.float32)
    t = res.samples()
    impl = np.array(t.column("implementation").to_pylist())
    ref = t.column("reference").to_numpy()[impl == "torch_upcast"].astype(np.float32)
    assert np.array_equal(ref, want)


def test_generic_mean_of_padded_batches_divides_by_the_kept_rows(write_config, tmp_path):
    """A batch with one kept row: torch's mean and the generic mean are that row's loss
    (hand-derived: sum / 1), not sum / B."""
    cfg = load_config(write_config("""
        name = "pad"
        question = "q"
        classes = 6
        batch_size = 8
        samples = 20
        seed = 3
        formats = ["float32"]
        implementations = ["torch", "torch(reduce=sequential)"]
        reduction = "mean"
        [inputs]
        generator = "normal"
        [loss]
        ignore_fraction = 0.9
    """))
    d = run_experiment(cfg, tmp_path).path
    res = open_results(d)
    x, y = res.inputs(0, "float32")
    t = res.samples()
    impl = np.array(t.column("implementation").to_pylist())
    comp = t.column("computed").to_numpy()
    ref = t.column("reference").to_numpy()
    one = [s for s in range(20) if (np.asarray(y[s]) != -100).sum() == 1]
    assert one
    for s in one:
        r = int(np.flatnonzero(np.asarray(y[s]) != -100)[0])
        per = torch.nn.functional.cross_entropy(
            torch.tensor(np.asarray(x[s][r:r + 1], np.float64)),
            torch.tensor([int(y[s][r])]))
        assert abs(ref[(impl == "torch")][s] - float(per)) < 1e-6 * float(per)
        assert comp[impl == "torch(reduce=sequential)"][s] == np.float32(
            torch.nn.functional.cross_entropy(torch.tensor(np.asarray(x[s])),
                                              torch.tensor(np.asarray(y[s])),
                                              reduction="none").sum())
    none_kept = [s for s in range(20) if (np.asarray(y[s]) == -100).all()]
    for s in none_kept:  # all ignored: the mean is 0/0, NaN, as torch documents
        assert np.isnan(ref[impl == "torch"][s])
