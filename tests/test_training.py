"""Training end to end on the shipped digits: the loss falls, metrics are data, resume is exact."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from solvers.snapshot import load_npz
from solvers.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = os.path.join(ROOT, "models", "lenet_digits", "net.yaml")


def solver(tmp_path, name="solver.yaml", **overrides):
    cfg = {"net": NET, "base_lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "lr_policy": "inv",
           "gamma": 0.0001, "power": 0.75, "max_iter": 40, "display": 1, "test_iter": 1, "test_interval": 10,
           "snapshot_prefix": "snap/run", "random_seed": 7}
    cfg.update(overrides)
    path = tmp_path / name
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    return str(path)


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def quiet(*_):
    pass


def test_short_training_lowers_the_loss(tmp_path):
    t = Trainer(solver(tmp_path, max_iter=60), out=quiet)
    t.train()
    train = [r for r in records(t.metrics_path) if r["phase"] == "train"]
    first, last = np.mean([r["loss"] for r in train[:10]]), np.mean([r["loss"] for r in train[50:60]])
    assert first > 1.5 and last < 0.5 * first


def test_metrics_records_follow_caffe_numbering(tmp_path):
    t = Trainer(solver(tmp_path, max_iter=20, display=5, test_interval=10), out=quiet)
    t.train()
    recs = records(os.path.join(tmp_path, "snap", "run_metrics.jsonl"))
    train = [r for r in recs if r["phase"] == "train"]
    test = [r for r in recs if r["phase"] == "test"]
    assert [r["iter"] for r in train] == [0, 5, 10, 15, 20]          # 20: the forward-only pass at the end
    assert set(train[1]) >= {"phase", "iter", "loss", "lr", "elapsed_s", "images_per_s"}
    assert train[0]["lr"] == pytest.approx(0.05) and train[1]["lr"] == pytest.approx(0.05 * (1 + 0.0001 * 5) ** -0.75)
    assert [r["iter"] for r in test] == [0, 10, 20]
    assert 0 <= test[-1]["accuracy"] <= 1 and test[-1]["loss"] > 0
    assert 0 < train[0]["elapsed_s"] < train[1]["elapsed_s"] < train[3]["elapsed_s"]
    assert train[0]["images_per_s"] > 0


def test_resume_continues_at_snapshot_iteration_with_same_history(tmp_path):
    whole = Trainer(solver(tmp_path, "whole.yaml", snapshot_prefix="whole/run"), out=quiet)
    whole.train()
    half = Trainer(solver(tmp_path, "half.yaml", max_iter=20, snapshot_prefix="half/run"), out=quiet)
    half.train()
    state = os.path.join(tmp_path, "half", "run_iter_20.solverstate.npz")
    assert os.path.exists(state)
    resumed = Trainer(solver(tmp_path, "half.yaml", snapshot_prefix="half/run"), out=quiet)
    resumed.train(snapshot_path=state)
    assert resumed.iter == 40

    def losses(path):
        return {r["iter"]: r["loss"] for r in records(path) if r["phase"] == "train"}

    a, b = losses(whole.metrics_path), losses(resumed.metrics_path)
    for it in range(20, 41):
        assert b[it] == pytest.approx(a[it], rel=1e-5, abs=1e-6), it
    for key, w in whole.net.weights().items():
        np.testing.assert_allclose(resumed.net.weights()[key], w, rtol=1e-5, atol=1e-6)
    for h1, h2 in zip(whole.solver.history, resumed.solver.history):
        np.testing.assert_allclose(h2, h1, rtol=1e-5, atol=1e-6)


def test_snapshots_are_written_whole_and_named_after_the_iteration(tmp_path):
    t = Trainer(solver(tmp_path, max_iter=10, snapshot=5, test_interval=0, test_iter=[]), out=quiet)
    t.train()
    files = sorted(os.listdir(os.path.join(tmp_path, "snap")))
    assert files == ["run_iter_10.solverstate.npz", "run_iter_10.weights.npz", "run_iter_5.solverstate.npz",
                     "run_iter_5.weights.npz", "run_metrics.jsonl"]
    w = load_npz(os.path.join(tmp_path, "snap", "run_iter_10.weights.npz"), "weights")
    np.testing.assert_array_equal(w["conv1/0"], t.net.layer_by_name("conv1").blobs[0].data)


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_train_and_test_commands(tmp_path):
    s = solver(tmp_path, max_iter=30, display=10, test_interval=30)
    r = cli("train", s)
    assert r.returncode == 0, r.stderr
    assert "Iteration 10 (" in r.stdout and "iter/s" in r.stdout and "img/s), loss = " in r.stdout
    assert "Iteration 10, lr = " in r.stdout
    assert "Test net output #0: accuracy = " in r.stdout
    weights = os.path.join(tmp_path, "snap", "run_iter_30.weights.npz")
    r = cli("test", NET, "--weights", weights, "--iterations", "2")
    assert r.returncode == 0, r.stderr
    assert "accuracy = " in r.stdout and "Loss: " in r.stdout
    # a weights file where a solver state belongs: a clear error, not a traceback
    r = cli("train", s, "--snapshot", weights)
    assert r.returncode == 2 and "looks like a weights file: use --weights" in r.stderr
    assert "Traceback" not in r.stderr


def test_ctrl_c_snapshots_and_stops(tmp_path):
    s = solver(tmp_path, max_iter=100000, display=50, test_interval=0, test_iter=[])
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "train", s], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("Iteration 50 "):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    snaps = [f for f in os.listdir(os.path.join(tmp_path, "snap")) if f.endswith(".solverstate.npz")]
    assert len(snaps) == 1 and "Traceback" not in err
