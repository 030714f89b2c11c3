"""yaffe against real BVLC Caffe (tests/fixtures/caffe_lenet, from ../shared/caffe_reference).

1. The iteration-200 caffemodel run on the first 64 test images reproduces Caffe's logits (1e-4).
2. Training from Caffe's initial weights on the same data in the same order reproduces Caffe's loss:
   1e-4 at iterations 0..19; over 20..199 max |diff| <= 0.01 and mean |diff| <= 0.002; test accuracy
   within 0.5 points.
"""
import json
import os
import shutil

import numpy as np
import pytest

from netspec.caffemodel import read_caffemodel
from netspec.loader import load
from netspec.net import Net
from solvers.trainer import Trainer

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "caffe_lenet")


@pytest.fixture
def workdir(tmp_path):
    for name in ("net.yaml", "solver.yaml"):
        shutil.copy(os.path.join(FIX, name), tmp_path)
    with np.load(os.path.join(FIX, "mnist_subset.npz")) as z:
        np.savez(tmp_path / "train.npz", data=z["train_images"][:, None], label=z["train_labels"])
        np.savez(tmp_path / "test.npz", data=z["test_images"][:, None], label=z["test_labels"])
    return tmp_path


def test_caffemodel_reader_gives_caffe_blob_shapes():
    w = read_caffemodel(os.path.join(FIX, "lenet_sgd_iter_200.caffemodel"))
    assert {k: v.shape for k, v in w.items()} == {
        "conv1/0": (20, 1, 5, 5), "conv1/1": (20,), "conv2/0": (50, 20, 5, 5), "conv2/1": (50,),
        "ip1/0": (500, 800), "ip1/1": (500,), "ip2/0": (10, 500), "ip2/1": (10,)}
    assert all(v.dtype == np.float32 for v in w.values())


def test_forward_matches_caffe_logits(workdir):
    net_path = str(workdir / "net.yaml")
    net = Net(load(net_path), "TEST", net_path, seed=0)
    net.load_weights(read_caffemodel(os.path.join(FIX, "lenet_sgd_iter_200.caffemodel")), "iter_200")
    net.forward()
    ref = np.load(os.path.join(FIX, "caffe_forward.npz"))
    np.testing.assert_array_equal(net.blobs["label"].data[:64], ref["label"])
    np.testing.assert_allclose(net.blobs["ip2"].data[:64], ref["logits"], atol=1e-4, rtol=0)


def test_training_matches_caffe_losses(workdir):
    trainer = Trainer(str(workdir / "solver.yaml"), out=lambda *a: None)
    trainer.net.load_weights(read_caffemodel(os.path.join(FIX, "lenet_sgd_init.caffemodel")), "init")
    final = trainer.train()
    ref = np.load(os.path.join(FIX, "caffe_losses.npz"))
    with open(trainer.metrics_path) as f:
        ours = {r["iter"]: r["loss"] for r in map(json.loads, f) if r["phase"] == "train"}
    ours = np.array([ours[i] for i in range(201)])
    diff = np.abs(ours - ref["loss"])
    assert diff[:20].max() <= 1e-4, diff[:20]
    assert diff[20:200].max() <= 0.01 and diff[20:200].mean() <= 0.002, (diff[20:200].max(), diff[20:200].mean())
    assert abs(final["accuracy"] - float(ref["test_accuracy"][0])) <= 0.005


def test_test_command_scores_a_caffemodel_like_caffe(workdir):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "run.py"), "test", str(workdir / "net.yaml"),
                        "--weights", os.path.join(FIX, "lenet_sgd_iter_200.caffemodel"), "--iterations", "10"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # Caffe's test pass after iteration 200: the same 1000 images, the same weights
    assert "accuracy = 0.934" in r.stdout
