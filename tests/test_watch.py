"""Training problems caught and explained: NaN, the 87.34 plateau, dead and saturated units, tiny rates,
overfitting, debug_info."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from solvers.trainer import Trainer
from solvers.watch import Diverged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "models", "lenet_digits", "digits_train.csv.gz")


def mlp(bias=0.0, act="ReLU", layers=1, width=32, regression=False):
    text = (f"layer:\n  - {{name: d, type: Data, top: [data, label], data_param: {{source: {DIGITS}, batch_size: 32, "
            f"sample_shape: [64]}}, transform_param: {{scale: 0.0625}}}}\n")
    bottom = "data"
    for i in range(layers):
        text += (f"  - {{name: ip{i}, type: InnerProduct, bottom: {bottom}, top: ip{i}, inner_product_param: "
                 f"{{num_output: {width}, weight_filler: {{type: xavier}}, bias_filler: {{type: constant, value: {bias}}}}}}}\n"
                 f"  - {{name: act{i}, type: {act}, bottom: ip{i}, top: ip{i}}}\n")
        bottom = f"ip{i}"
    text += (f"  - {{name: out, type: InnerProduct, bottom: {bottom}, top: out, inner_product_param: "
             f"{{num_output: {1 if regression else 10}, weight_filler: {{type: xavier}}}}}}\n")
    kind = "EuclideanLoss" if regression else "SoftmaxWithLoss"
    return text + f"  - {{name: loss, type: {kind}, bottom: [out, label], top: loss}}\n"


def trainer(tmp_path, net, **solver):
    (tmp_path / "net.yaml").write_text(net)
    cfg = {"net": "net.yaml", "base_lr": 0.1, "momentum": 0.9, "max_iter": 20, "display": 5, "random_seed": 2,
           "snapshot_prefix": "snap/run"}
    cfg.update(solver)
    (tmp_path / "solver.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    lines = []
    return Trainer(str(tmp_path / "solver.yaml"), out=lines.append), lines


def test_huge_learning_rate_is_diagnosed_and_the_last_good_state_kept(tmp_path):
    t, lines = trainer(tmp_path, mlp(regression=True), base_lr=1e4)
    with pytest.raises(Diverged) as e:
        t.train()
    msg = str(e.value)
    assert "Training diverged" in msg and "iteration" in msg
    assert "base_lr tenfold" in msg and ("layer '" in msg or "update of param" in msg)
    snaps = os.listdir(tmp_path / "snap")
    assert any(f.endswith("_lastgood.weights.npz") for f in snaps)
    good = [f for f in snaps if f.endswith("_lastgood.weights.npz")][0]
    with np.load(tmp_path / "snap" / good) as z:
        assert all(np.isfinite(z[k]).all() for k in z.files)
    assert ". The last good state, from iteration" in msg and good.replace(".weights.npz", "") in msg


def test_lastgood_weights_give_a_finite_loss_and_resume_with_a_lower_rate(tmp_path):
    """base_lr 1e3: the weights kept are ones that gave a finite loss (not those of the iteration that failed),
    run.py test scores them finitely, and resuming them with a sane rate trains on."""
    t, lines = trainer(tmp_path, mlp(regression=True), base_lr=1e3, max_iter=40)
    with pytest.raises(Diverged) as e:
        t.train()
    state = next(str(tmp_path / "snap" / f) for f in os.listdir(tmp_path / "snap") if f.endswith("_lastgood.solverstate.npz"))
    it = int(str(e.value).split("The last good state, from iteration ")[1].split(" ")[0])
    assert f"_iter_{it}_lastgood" in state
    weights = state.replace(".solverstate.npz", ".weights.npz")
    t2, _ = trainer(tmp_path, mlp(regression=True), base_lr=1e3, max_iter=40)
    t2.net.load_weights(dict(np.load(weights)), weights)
    assert math.isfinite(t2.net.forward())
    t3, lines3 = trainer(tmp_path, mlp(regression=True), base_lr=0.001, max_iter=it + 10)
    t3.train(snapshot_path=state)
    assert t3.iter == it + 10


def test_weights_with_nan_are_a_bad_weights_file_not_a_learning_rate_problem(tmp_path):
    from netspec.errors import SpecError
    t, _ = trainer(tmp_path, mlp())
    arrays = {k: v.copy() for k, v in t.net.weights().items()}
    key = next(iter(arrays))
    arrays[key].flat[3] = np.nan
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(SpecError, match=r"param 0 in \S+w.npz holds 1 NaN or Inf value\(s\)"):
        t.train(weights_path=str(tmp_path / "w.npz"))


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov"])  # the fused SGD kernel's check and the generic one
def test_an_overflowing_step_is_caught_before_it_is_applied(tmp_path, solver_type):
    t, _ = trainer(tmp_path, mlp(), base_lr=1e39, momentum=0.0, type=solver_type)  # float32 rate: Inf
    before = {p.key: p.blob.data.copy() for p in t.net.params}
    with pytest.raises(Diverged, match=r"the update of param \S+ at iteration 0 is non-finite"):
        t.train()
    for p in t.net.params:  # nothing applied
        np.testing.assert_array_equal(p.blob.data, before[p.key])


def test_cli_exit_code_3_on_divergence(tmp_path):
    trainer(tmp_path, mlp(regression=True), base_lr=1e4)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "train", str(tmp_path / "solver.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and "Training diverged" in r.stderr and "Traceback" not in r.stderr


def test_nan_input_row_is_named_by_file_and_line(tmp_path):
    t, _ = trainer(tmp_path, mlp(), base_lr=0.01)
    data = t.net.layers[0]
    data.arrays[0][7, 3] = np.nan        # slipped in after the up-front checks (they would refuse the file)
    with pytest.raises(Diverged, match=r"example 7 of the batch \(line 8 of '.*digits_train.csv.gz'\)"):
        t.train()


def test_dead_relus_are_reported(tmp_path):
    t, lines = trainer(tmp_path, mlp(bias=-100.0), base_lr=0.01, monitor=True)
    t.train()
    text = "\n".join(lines)
    assert "of the units of ReLU 'act0' are zero for every example (dead)" in text
    recs = [json.loads(l) for l in open(t.metrics_path)]
    mon = [r for r in recs if r["phase"] == "monitor"]
    assert mon and mon[0]["layers"]["act0"]["dead_fraction"] == 1.0
    assert "update_ratio" in mon[-1]["layers"]["out"] and mon[-1]["layers"]["out"]["grad_norm"] > 0


def test_saturated_sigmoid_stack_is_reported(tmp_path):
    net = mlp(bias=30.0, act="Sigmoid", layers=2)
    t, lines = trainer(tmp_path, net, base_lr=0.01, monitor=True)
    t.train()
    assert "outputs of Sigmoid 'act0' are saturated" in "\n".join(lines)


def test_tiny_learning_rate_is_reported(tmp_path):
    t, lines = trainer(tmp_path, mlp(), base_lr=1e-9, max_iter=60, momentum=0.0)
    t.train()
    assert "the learning rate is probably too small" in "\n".join(lines)


def _watch_at_87(tmp_path):
    """(a Watch of a net whose loss reads 87.3365, the lines it prints)."""
    from solvers.watch import Watch

    class Quiet:
        def write(self, r):
            self.r = r

    t, lines = trainer(tmp_path, mlp())
    w = Watch(t.cfg, t.net, lines.append, Quiet())
    t.net.forward()
    t.net.blobs["loss"].data[...] = 87.3365
    return w, lines


def test_softmax_loss_stuck_at_87_is_explained(tmp_path):
    w, lines = _watch_at_87(tmp_path)
    w.check_plateaus(3, 87.3365)
    assert "87.3365 = -ln(FLT_MIN)" in "\n".join(lines) and "labels" in "\n".join(lines)


def test_a_softmax_loss_pinned_at_87_stops_training_unless_told_to_warn(tmp_path):
    t, lines = trainer(tmp_path, mlp(), base_lr=1e3, max_iter=80)
    with pytest.raises(Diverged, match=r"for 20 iterations \(to \d+\) the true class's probability") as e:
        t.train()
    assert t.iter < 79 and "The last good state, from iteration" in str(e.value)
    t, lines = trainer(tmp_path, mlp(), base_lr=1e3, max_iter=80, divergence="warn", snapshot_prefix="snap/warn")
    t.train()
    assert t.iter == 80 and sum("87.3365" in l for l in lines) == 1


def test_a_healthy_net_run_as_slices_is_not_taken_for_pinned(tmp_path):
    """As slices, the batch's probabilities are in the slices' layers (the whole net's stay unset)."""
    trainer(tmp_path, mlp(), max_iter=30, base_lr=0.05)
    t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None, replicas=2)
    assert t.replicas is not None
    t.train()
    assert t.iter == 30 and not t.watch.pinned


def test_with_several_losses_the_one_whose_gradient_grew_first_is_named(tmp_path):
    net = mlp().replace("top: loss}", "top: loss}\n  - {name: aux, type: InnerProduct, bottom: data, top: aux, "
                        "inner_product_param: {num_output: 1, weight_filler: {type: xavier}}}\n"
                        "  - {name: aux_loss, type: EuclideanLoss, bottom: [aux, label], top: aux_loss, "
                        "loss_weight: 30}")
    t, lines = trainer(tmp_path, net, base_lr=0.05, max_iter=200)
    with pytest.raises(Diverged) as e:
        t.train()
    msg = str(e.value)
    assert "Of the net's 2 losses, 'aux_loss' was the first whose gradient grew" in msg
    assert "lower its loss_weight (now 30) rather than base_lr" in msg


def test_overfitting_is_reported_with_the_best_iteration():
    from solvers.watch import Watch
    lines, recs = [], []

    class M:
        def write(self, r):
            recs.append(r)

    w = Watch(type("C", (), {"max_iter": 100})(), None, lines.append, M())
    for it, test_loss, train_loss in ((100, 0.5, 0.6), (200, 0.4, 0.4), (300, 0.45, 0.3), (400, 0.5, 0.2),
                                      (500, 0.6, 0.1)):
        w.after_test(it, test_loss, train_loss, lambda i: f"run_iter_{i}.weights.npz")
    assert any("overfitting. The best test loss was at iteration 200 (snapshot run_iter_200.weights.npz)" in l
               for l in lines)


def test_debug_info_logs_per_layer_magnitudes(tmp_path):
    t, lines = trainer(tmp_path, mlp(), debug_info=True, max_iter=5)
    t.train()
    assert any(l.strip().startswith("[Forward/Backward] Layer ip0: top/ip0/data") for l in lines)
    assert any(l.strip().startswith("[Update] Layer ip0:") and "param/0/diff" in l for l in lines)
    recs = [json.loads(l) for l in open(t.metrics_path)]
    assert any(r["phase"] == "debug" and "ip0" in r["layers"] for r in recs)


def test_debug_info_update_shows_the_steps_not_the_old_weights(tmp_path):
    """SGD's one-pass update leaves the old weights in the diffs; at debug_info iterations the two-pass update
    runs, so [Update] reports the steps (for SGD the history), as Caffe's does."""
    t, _ = trainer(tmp_path, mlp(), debug_info=True, max_iter=1, display=1)
    t.train()
    recs = [json.loads(l) for l in open(t.metrics_path)]
    update = [r for r in recs if r["phase"] == "debug" and r["stage"] == "Update"][-1]["layers"]["ip0"]
    step = float(np.abs(t.solver.history_arrays()["ip0/0"]).mean())
    assert update["param/0/diff"] == pytest.approx(step, rel=1e-6)
    assert update["param/0/diff"] != pytest.approx(update["param/0/data"], rel=1e-2)


def test_monitor_reports_the_gradient_norm_not_the_step_norm(tmp_path):
    """Iteration 0 with weight_decay 0 and no history yet: step = base_lr * gradient, so the reported gradient
    norm is the step's norm / base_lr (it used to be the step's, read from the diffs after the solver)."""
    t, _ = trainer(tmp_path, mlp(), monitor=True, max_iter=1, display=1, weight_decay=0.0, base_lr=0.1)
    t.train()
    recs = [json.loads(l) for l in open(t.metrics_path)]
    ip0 = [r for r in recs if r["phase"] == "monitor"][0]["layers"]["ip0"]
    hist = t.solver.history_arrays()
    step = math.sqrt(sum(float((hist[k].astype(np.float64) ** 2).sum()) for k in ("ip0/0", "ip0/1")))
    assert ip0["grad_norm"] == pytest.approx(step / 0.1, rel=1e-5)
    assert ip0["update_ratio"] > 0


def test_sanity_passes_on_the_shipped_digits_model():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "sanity",
                        os.path.join(ROOT, "models", "lenet_digits", "solver.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASS") == 4 and "ln(10)" in r.stdout


def test_sanity_fails_on_a_net_that_cannot_learn(tmp_path):
    """Inputs scaled to 0: every example looks the same, so 20 differently-labelled examples cannot be
    overfitted; weight_decay 0: no regularization to check (SKIP, not a failure: lstm_mnist ships without it)."""
    from solvers.sanity import sanity
    net = mlp().replace("scale: 0.0625", "scale: 0.0")
    trainer(tmp_path, net, weight_decay=0.0)
    lines = []
    assert sanity(str(tmp_path / "solver.yaml"), out=lines.append) is False
    text = "\n".join(lines)
    assert "FAIL  overfits 20 examples" in text and "SKIP  regularization raises the loss: weight_decay is 0" in text
    assert "same scores for every example, whatever its input: the input 'data' of layer 'd' is the same" in text


def test_sanity_knows_label_smoothings_floor_and_fits_normalize_for_the_gradient_check(tmp_path):
    """models/fashion_record's recipe: label smoothing 0.1 keeps the loss of 20 memorized examples at ~0.5 (the
    overfit check said "cannot even memorize" at training accuracy 1.0), and the float64 net of the gradient check
    never fitted its normalize statistics (an error, not a result)."""
    from solvers.sanity import sanity
    net = mlp().replace("transform_param: {scale: 0.0625}", "transform_param: {normalize: [{type: z_score}]}")
    net = net.replace("top: loss}", "top: loss, loss_param: {label_smoothing: 0.1}}")
    assert "z_score" in net and "label_smoothing" in net
    trainer(tmp_path, net, weight_decay=0.0005)
    lines = []
    assert sanity(str(tmp_path / "solver.yaml"), out=lines.append) is True, lines
    text = "\n".join(lines)
    assert "PASS  overfits 20 examples" in text and "label smoothing's floor 0.5003" in text
    assert "PASS  numerical gradient of the whole net" in text


def test_sanity_small_batch_resizes_the_blobs_sized_by_the_batch():
    """models/lstm_mnist's cont (DummyData (T, N) = (28, 64)) follows the data layer's batch into the gradient
    check's batch of 2 (it stopped `run.py sanity` with "cont must be (T, N) = [28, 2]")."""
    from solvers.sanity import _with_batch
    doc = {"layer": [{"type": "Data", "data_param": {"batch_size": 64}},
                     {"type": "DummyData", "dummy_data_param": {"shape": {"dim": [28, 64]}}},
                     {"type": "Input", "input_param": {"shape": [{"dim": [64, 3]}, {"dim": [5, 7]}]}}]}
    small = _with_batch(doc, 2)
    assert small["layer"][0]["data_param"]["batch_size"] == 2
    assert small["layer"][1]["dummy_data_param"]["shape"]["dim"] == [28, 2]
    assert [s["dim"] for s in small["layer"][2]["input_param"]["shape"]] == [[2, 3], [5, 7]]
    assert doc["layer"][1]["dummy_data_param"]["shape"]["dim"] == [28, 64]  # a copy


def test_sanity_gradient_check_still_fails_on_a_wrong_gradient(tmp_path, monkeypatch):
    """The kinks skipped (one-sided slopes that differ) never hide a wrong backward: a weight gradient 1% off on
    a smooth net fails."""
    from layers.inner_product import InnerProduct
    from solvers.sanity import check_gradients
    backward = InnerProduct.backward

    def off(self, top, propagate_down, bottom):
        backward(self, top, propagate_down, bottom)
        self.blobs[0].diff[...] *= 1.01
    monkeypatch.setattr(InnerProduct, "backward", off)
    t, _ = trainer(tmp_path, mlp(act="TanH"))
    ok, detail = check_gradients(t)
    assert ok is False and "on a kink" not in detail, detail


def test_lr_find_on_a_dead_net_says_no_rate_will_help(tmp_path):
    """Every ReLU dead from its bias_filler: the loss never falls at any rate, and lr-find says why instead of
    asking for a wider sweep."""
    from solvers.sanity import lr_find
    trainer(tmp_path, mlp(bias=-100.0), momentum=0.9)
    lines = []
    result = lr_find(str(tmp_path / "solver.yaml"), iters=60, out=lines.append)
    assert result["suggested"] is None
    assert "every unit of ReLU 'act0' is 0 for every example" in lines[-1] and "No learning rate will help" in lines[-1]
    assert "raise --end" not in lines[-1]


def test_lr_find_suggests_a_rate_between_its_bounds(tmp_path):
    from solvers.sanity import lr_find
    trainer(tmp_path, mlp(), momentum=0.9)
    lines = []
    result = lr_find(str(tmp_path / "solver.yaml"), iters=120, out=lines.append)
    assert 1e-5 < result["suggested"] < 5 and result["too_small"] <= result["suggested"]
    assert any(l.startswith("Suggested base_lr:") for l in lines)


def test_lr_curve_bounds_and_suggestion_from_the_smoothed_curve():
    """The curve of the issue: flat to 3e-4, down to 1.08 near 0.1, then up to 2.45 (noisy): the bounds bracket the
    descent, the divergence is reported, the suggestion is a third of where the loss stops falling (not the
    cliff's edge); and a flat-bottomed curve (an autoencoder's) is not suggested a rate on its descent."""
    from solvers.sanity import analyse_lr_curve
    rates = np.logspace(-7, 1, 200)
    x = np.log10(rates)
    loss = np.where(x < -3.5, 2.3, np.where(x < -1, 2.3 - 1.22 * (x + 3.5) / 2.5, 1.08 + 0.7 * (x + 1)))
    loss = loss + np.random.default_rng(0).normal(0, 0.05, loss.shape)
    found = analyse_lr_curve(rates, loss, stopped=False)
    assert 1e-4 < found["too_small"] < 1e-3
    assert 0.1 < found["diverges"] < 1.0
    assert 0.05 < found["minimum"] < 0.2 and found["suggested"] == pytest.approx(found["floor_end"] / 3)
    assert found["too_small"] < found["suggested"] < found["minimum"] and "a third" in found["rule"]
    assert found["tenth"] == pytest.approx(found["minimum"] / 10)
    floor = np.where(x < -5, 965, np.where(x < -3, 965 - 757 * (x + 5) / 2, np.where(x < -1.5, 208, 208 + 40 * (x + 1.5))))
    found = analyse_lr_curve(rates, floor + np.random.default_rng(2).normal(0, 2, 200), stopped=False)
    assert 0.003 < found["suggested"] < 0.05  # the floor runs from 1e-3 to ~0.1; its minimum's tenth is ~1e-4
    flat = analyse_lr_curve(rates, 2.3 + np.random.default_rng(1).normal(0, 0.01, 200), stopped=False)
    assert flat["suggested"] is None and flat["rule"] == "the loss never fell"


def test_lr_curve_lower_bound_holds_on_a_noisy_curve():
    """The loss of one batch of 64 is noisy (models/fashion_record's sweep: +-0.1 on 2.5): a dip of the noise on the
    plateau is not where the loss starts to fall (it was reported at 2.8e-7 for a curve flat to 1e-3)."""
    from solvers.sanity import analyse_lr_curve
    rates = np.logspace(-7, 1, 200)
    x = np.log10(rates)
    loss = np.where(x < -3.5, 2.3, np.where(x < -1, 2.3 - 1.22 * (x + 3.5) / 2.5, 1.08 + 0.7 * (x + 1)))
    for seed in range(20):
        found = analyse_lr_curve(rates, loss + np.random.default_rng(seed).normal(0, 0.1, 200), stopped=False)
        assert 3e-4 < found["too_small"] < 1.5e-3, seed
        assert found["too_small"] < found["suggested"] < found["minimum"]


def test_plot_draws_curves(tmp_path):
    t, _ = trainer(tmp_path, mlp(), max_iter=10, display=1, test_iter=[1], test_interval=5)
    (tmp_path / "net.yaml").write_text(mlp() + "  - {name: acc, type: Accuracy, bottom: [out, label], top: acc}\n")
    t, _ = trainer(tmp_path, (tmp_path / "net.yaml").read_text(), max_iter=10, display=1, test_iter=[1], test_interval=5)
    t.train()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "plot", t.metrics_path, "-o",
                        str(tmp_path / "c.png")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_labels_runs_by_what_differs_and_the_rate_is_recorded_where_it_changes(tmp_path):
    from solvers.plots import run_labels
    runs = []
    for lr in (0.1, 0.01):
        t, _ = trainer(tmp_path, mlp(), max_iter=12, display=5, base_lr=lr, lr_policy="multistep", gamma=0.1,
                       stepvalue=[7], snapshot_prefix=f"snap/lr{lr}", test_iter=[], test_interval=0)
        t.train()
        runs.append(t.metrics_path)
    recs = [read for read in map(json.loads, open(runs[0]))]
    steps = sorted((r["iter"], r["lr"]) for r in recs if r["phase"] in ("train", "lr") and "lr" in r)
    assert (7, pytest.approx(0.01)) in steps and (0, pytest.approx(0.1)) in steps  # the change at 7, not only at 10
    labels = run_labels(runs, [list(map(json.loads, open(p))) for p in runs])
    assert labels == ["base_lr=0.1", "base_lr=0.01"]


def test_plateau_policy_drops_the_rate_from_the_best_weights(tmp_path):
    t, lines = trainer(tmp_path, mlp(), lr_policy="plateau", gamma=0.1, patience=2, min_lr=1e-4, base_lr=0.1)
    t.iter = 10
    t._after_test({"phase": "test", "iter": 10, "loss": 1.0})
    best = t.net.layer_by_name("ip0").blobs[0].data.copy()
    t.net.layer_by_name("ip0").blobs[0].data[...] += 1      # training moves on
    t._after_test({"phase": "test", "iter": 20, "loss": 1.1})
    assert t.rate(20) == pytest.approx(0.1)
    t._after_test({"phase": "test", "iter": 30, "loss": 1.2})
    assert t.rate(30) == pytest.approx(0.01)                  # dropped tenfold
    np.testing.assert_array_equal(t.net.layer_by_name("ip0").blobs[0].data, best)
    assert any(l.startswith("Plateau: the test loss has not improved for 2 tests") for l in lines)
    for i in range(10):
        t._after_test({"phase": "test", "iter": 40 + i, "loss": 2.0})
    assert t.rate(100) == pytest.approx(1e-4)                # never below min_lr


def test_early_stop_on_a_metric_that_stops_rising(tmp_path):
    net = mlp() + "  - {name: acc, type: Accuracy, bottom: [out, label], top: acc}\n"
    t, lines = trainer(tmp_path, net, max_iter=400, display=0, test_iter=[2], test_interval=20,
                       early_stop={"metric": "acc", "patience": 2, "min_delta": 0.5})
    t.train()
    assert t.iter < 400 and getattr(t, "early_stopped", False)
    assert any(l.startswith("Early stop: acc has not improved for 2 tests") for l in lines)


def search_setup(tmp_path, space: str):
    """An MLP with an accuracy output, its solver, and a search space file."""
    trainer(tmp_path, mlp() + "  - {name: acc, type: Accuracy, bottom: [out, label], top: acc}\n", test_iter=[2])
    (tmp_path / "space.yaml").write_text(space)


def test_random_search_coarse_to_fine(tmp_path):
    from solvers.search import search
    search_setup(tmp_path, "base_lr: {log_uniform: [1e-4, 1]}\nmomentum: {uniform: [0.5, 0.95]}\n"
                           "layer.ip0.inner_product_param.num_output: {choice: [8, 16]}\n")
    lines = []
    results = search(str(tmp_path / "solver.yaml"), str(tmp_path / "space.yaml"), trials=6, iters=15, jobs=2,
                     out_dir=str(tmp_path / "s"), out=lines.append)
    assert len(results) == 6 and [r["round"] for r in sorted(results, key=lambda r: r["trial"])] == [1] * 4 + [2] * 2
    assert results == sorted(results, key=lambda r: -r["score"])
    assert all(1e-4 <= r["base_lr"] <= 1 and r["layer.ip0.inner_product_param.num_output"] in (8, 16)
               for r in results)
    from netspec.spec import validate
    assert [f for f in validate([str(tmp_path / "s" / "best_solver.yaml")]) if f.severity == "error"] == []
    assert (tmp_path / "s" / "results.csv").read_text().startswith("trial,")


def test_optuna_search_samples_the_space_prunes_bad_trials_and_writes_the_best(tmp_path):
    from solvers.search import search_optuna
    search_setup(tmp_path, "base_lr: {log_uniform: [1e-5, 3]}\n"
                           "layer.ip0.inner_product_param.num_output: {choice: [8, 16]}\n")
    lines = []
    results = search_optuna(str(tmp_path / "solver.yaml"), str(tmp_path / "space.yaml"), trials=10, iters=40,
                            out_dir=str(tmp_path / "s"), out=lines.append)
    assert len(results) == 10 and results == sorted(results, key=lambda r: -r["score"])
    assert all(1e-5 <= r["base_lr"] <= 3 for r in results)
    assert any("pruned_at" in r for r in results)  # the tiny rates score at chance and are cut at a test
    assert all(r["pruned_at"] < 40 for r in results if "pruned_at" in r)
    assert results[0]["acc"] > 0.5 and "pruned_at" not in results[0]  # scored by -loss (no output named accuracy)
    from netspec.spec import validate
    assert [f for f in validate([str(tmp_path / "s" / "best_solver.yaml")]) if f.severity == "error"] == []


def test_progress_is_a_bar_with_rate_and_time_left_on_a_terminal_and_timed_lines_in_a_pipe(monkeypatch):
    import io
    from netspec.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", tty)
    import time
    for i in range(1, 4):
        time.sleep(0.25)  # tqdm redraws at most every 0.2 s
        Progress.update(i, 10, "search")
    Progress.clear()
    Progress.close()
    text = tty.getvalue()
    assert "search" in text and "3/10" in text and "it/s" in text and "<" in text  # tqdm: n/total [elapsed<left, rate]
    monkeypatch.setattr(sys, "stderr", pipe)
    clock = [100.0]
    monkeypatch.setattr("netspec.progress.time.monotonic", lambda: clock[0])
    Progress.update(1, 100, "training")
    clock[0] += 5
    Progress.update(10, 100, "training")
    assert pipe.getvalue() == ""                    # not before PIPE_EVERY seconds
    clock[0] += 30
    Progress.update(40, 100, "training")
    assert pipe.getvalue() == "training: 40/100 (40%, 1.11/s, about 53s left)\n"  # 39 steps in 35 s
    Progress.update(3, 10, "testing")  # a test, then training goes on from step 70: its rate counts from there
    clock[0] += 60
    Progress.update(70, 100, "training")
    clock[0] += 31
    Progress.update(95, 100, "training")
    assert pipe.getvalue().splitlines()[-1] == "training: 95/100 (95%, 0.806/s, about 6s left)"  # 25 steps in 31 s


def test_a_softmax_loss_at_87_before_any_update_blames_the_start_not_the_rate(tmp_path):
    """At the first iteration of a run nothing has been updated: the advice is about the inputs' scale, the
    fillers, the weights and the labels, not base_lr; stuck from there on, training stops saying so."""
    w, lines = _watch_at_87(tmp_path)
    w.check_plateaus(0, 87.3365)
    text = "\n".join(lines)
    assert "before any update, so the rate is not the cause" in text and "scale: 0.00390625" in text
    assert "lower base_lr" not in text
    with pytest.raises(Diverged, match=r"stuck from its first iteration.*before any update"):
        for it in range(1, w.PINNED_WINDOW):
            w.check_plateaus(it, 87.3365)


def _warnings(t):
    return {r["kind"]: r["message"] for r in map(json.loads, open(t.metrics_path)) if r["phase"] == "warning"}


def test_a_loss_stuck_at_ln_c_from_a_negative_bias_filler_blames_it_not_the_rate(tmp_path):
    """The classic loss of 2.30259 = ln(10): every ReLU dead from its start (bias_filler -100). The loss does not
    move, and a larger rate would not help: the warning names the dead ReLU and the filler, and the
    too-small-rate advice is not given."""
    t, lines = trainer(tmp_path, mlp(bias=-100.0), base_lr=0.01, max_iter=60)
    t.train()
    said = _warnings(t)
    assert "lr_small" not in said and "constant_output" in said, said
    msg = said["constant_output"]
    assert "about ln(10) = 2.303" in msg and "same scores for every example" in msg
    assert "every unit of ReLU 'act0' is 0 for every example" in msg
    assert "as its bias_filler (constant -100) set it" in msg and "A larger learning rate will not help" in msg


def test_a_loss_stuck_because_a_hidden_layer_has_no_weight_filler_names_the_layer(tmp_path):
    """Caffe's default weight filler is constant 0: a hidden layer without one gives every example the same
    output (its ReLU passes no gradient); the run says which layer, and validate warned before it."""
    net = mlp().replace("{num_output: 32, weight_filler: {type: xavier}, ", "{num_output: 32, ")
    t, lines = trainer(tmp_path, net, base_lr=0.01, max_iter=60)
    assert any("layer 'ip0' (InnerProduct) has no weight_filler" in line for line in lines)  # the preflight
    t.train()
    msg = _warnings(t)["constant_output"]
    assert "layer 'ip0' (InnerProduct) has all-zero weights" in msg and "weight_filler" in msg


def test_relus_killed_by_a_high_rate_blame_the_rate(tmp_path):
    """Units pushed below zero by the updates (the bias started at 0): the advice is a lower base_lr."""
    from netspec.loader import loads
    from netspec.net import Net
    from solvers.watch import constant_output
    net = Net(loads(mlp()), "TRAIN", seed=0)
    net.forward()
    assert constant_output(net) is None  # a live net: the examples' scores differ
    ip0 = net.layers[1]
    ip0.blobs[1].data[...] = -50.0  # as if training had driven them there (the filler says 0)
    net.forward()
    msg = constant_output(net)
    assert "every unit of ReLU 'act0' is 0" in msg and "pushed there by the updates" in msg
    assert "lower base_lr tenfold" in msg
    net.layers[1].blobs[1].data[...] = 0.0
    net.top_vecs[0][0].data[...] = 0.5  # every example's input the same
    for k in range(1, len(net.layers)):
        net.forward_layer(k)
    assert "the input 'data' of layer 'd' is the same for every example" in constant_output(net)


def test_a_loss_that_jumps_and_does_not_fall_is_blamed_on_a_high_rate():
    """No progress over the first window and a jump to several times the start: base_lr / 10 (not x10)."""
    from netspec.loader import loads
    from netspec.net import Net
    from solvers.watch import Watch
    from types import SimpleNamespace
    net = Net(loads(mlp(regression=True)), "TRAIN", seed=0)
    lines, recs = [], []
    w = Watch(SimpleNamespace(max_iter=100), net, lines.append, SimpleNamespace(write=recs.append))
    losses = [2.0] * 5 + [9.0, 30.0, 4.0] + [2.5] * 12
    for it, loss in enumerate(losses):
        w.check_plateaus(it, loss)
    assert [r["kind"] for r in recs] == ["lr_high"]
    assert "jumped to 30 at iteration 6" in recs[0]["message"] and "base_lr / 10" in recs[0]["message"]


def test_a_run_that_starts_at_87_and_then_diverges_blames_the_start(tmp_path):
    """Raw pixels into LeNet: the loss is ~74-87 at iteration 0 and NaN a few iterations later. The diagnosis of
    the NaN says 'lower base_lr', but the start was already bad: the message says so and names the input scale."""
    w, lines = _watch_at_87(tmp_path)
    w.check_plateaus(0, 87.3365)
    with pytest.raises(Diverged) as e:
        w.after_backward(4, float("nan"))
    msg = str(e.value)
    assert msg.startswith("Training diverged: the loss is nan at iteration 4")
    assert "But the loss was already 87.34 at iteration 0, before any update: the start is the likely cause" in msg
    assert "scale: 0.00390625" in msg


def test_a_test_accuracy_at_chance_after_a_fifth_of_the_run_is_a_warning():
    """Accuracy 1/C at a test after a fifth of max_iter: the net learned nothing the test can see; said once.
    Not before a fifth of the run, nor above 1.2/C."""
    from types import SimpleNamespace

    from netspec.loader import loads
    from netspec.net import Net
    from solvers.watch import Watch
    net = Net(loads(mlp() + "  - {name: acc, type: Accuracy, bottom: [out, label], top: acc}\n"), "TEST", seed=0)
    lines, recs = [], []
    w = Watch(SimpleNamespace(max_iter=100), net, lines.append, SimpleNamespace(write=recs.append))
    w.check_chance(10, 100, net, {"acc": 0.1})  # too early
    w.check_chance(40, 100, net, {"acc": 0.5})  # learning
    assert recs == []
    w.check_chance(40, 100, net, {"acc": 0.09})
    assert [r["kind"] for r in recs] == ["chance"]
    assert "the test accuracy 'acc' is 0.09, chance level for 10 classes (1/10 = 0.1)" in recs[0]["message"]
    assert "after 40 of 100 iterations" in recs[0]["message"] and "run.py sanity" in recs[0]["message"]
