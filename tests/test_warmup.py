"""The compile helper of a cold start (netspec/warmup.py): the net it builds, what it runs, its marker."""
import io
import json
import os
import sys

import numpy as np

from netspec import warmup
from netspec.loader import load
from netspec.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_helper_builds_the_train_net_at_a_batch_of_two_and_runs_every_backward(monkeypatch, tmp_path):
    path = os.path.join(ROOT, "models", "lenet_digits", "net.yaml")
    net = Net(load(path), "TRAIN", path, seed=1)
    doc = warmup.helper_doc(net)
    helper = Net(doc, "TRAIN", "<precompile>", seed=1)
    assert [d.type for d in helper.defs][1:] == [d.type for d in net.defs][1:]
    assert net.defs[0].type == "Data" and helper.defs[0].type == "Input"  # the data layer became an Input
    for t, shape in net.shapes.items():  # (the loss is a scalar)
        assert helper.shapes[t] == ((min(shape[0], 2),) + tuple(shape[1:]) if shape else ())
    called = []
    monkeypatch.setattr(Net, "backward_layer", lambda self, k: called.append(k))
    job = {"doc": doc, "dtype": "float32", "solver": os.path.join(ROOT, "models", "lenet_digits", "solver.yaml"),
           "overrides": {}}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(job)))
    warmup.main()
    assert called == [k for k in reversed(range(len(helper.layers))) if helper.need_backward[k]]


def test_a_marker_turns_the_helper_off_and_zero_does_too(monkeypatch, tmp_path):
    path = os.path.join(ROOT, "models", "lenet_digits", "net.yaml")
    net = Net(load(path), "TRAIN", path, seed=1)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("YAFFE_PRECOMPILE", "0")
    assert warmup.start(net, path) is None
    monkeypatch.setenv("YAFFE_PRECOMPILE", "1")
    proc = warmup.start(net, os.path.join(ROOT, "models", "lenet_digits", "solver.yaml"))
    assert proc is not None
    warmup.finish(proc, net)  # stops it, writes the marker
    assert os.path.exists(warmup._marker(net)) and os.path.dirname(warmup._marker(net)) == str(tmp_path)
    assert warmup.start(net, path) is None  # warm: nothing launched
    assert np.dtype(net.dtype) == np.float32
