"""The shipped models: each validates clean and trains as shipped. Models whose data lives outside the
repository run here on small IDX slices of the MNIST fixture, written in the same format."""
import gzip
import json
import os
import struct

import numpy as np
import pytest
import yaml

from netspec.spec import validate
from solvers.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(m for m in os.listdir(os.path.join(ROOT, "models"))
                if os.path.exists(os.path.join(ROOT, "models", m, "solver.yaml")))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "caffe_lenet", "mnist_subset.npz")


def write_idx(path, array):
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def sliced(model, tmp_path, rows=256, **solver_overrides):
    """A copy of the model in tmp_path whose external IDX sources are slices of the MNIST fixture."""
    src = os.path.join(ROOT, "models", model)
    with open(os.path.join(src, "net.yaml")) as f:
        net = yaml.safe_load(f)
    with open(os.path.join(src, "solver.yaml")) as f:
        solver = yaml.safe_load(f)
    z = np.load(FIXTURE)
    for layer in net["layer"]:
        source = layer.get("data_param", {}).get("source", "")
        full = os.path.normpath(os.path.join(src, source))
        if "idx3-ubyte" in source:
            part = "test" if "t10k" in source else "train"
            name = os.path.basename(source)
            write_idx(tmp_path / name, z[f"{part}_images"][:rows])
            write_idx(tmp_path / name.replace("images-idx3", "labels-idx1"), z[f"{part}_labels"][:rows])
            layer["data_param"]["source"] = name
            # (a test batch larger than the slice would repeat examples, which validate rightly warns of)
            layer["data_param"]["batch_size"] = min(layer["data_param"].get("batch_size", rows), rows)
        elif source:
            layer["data_param"]["source"] = full
    solver.update(solver_overrides)
    solver["snapshot_prefix"] = "snap/run"
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(net))
    (tmp_path / "solver.yaml").write_text(yaml.safe_dump(solver))
    return str(tmp_path / "solver.yaml")


@pytest.mark.parametrize("model", MODELS)
def test_model_validates_clean(model, tmp_path):
    path = os.path.join(ROOT, "models", model, "solver.yaml")
    found = validate([path])
    missing = [f for f in found if "no such file" in f.message]
    if missing:  # its dataset is not on this machine: check the same specs on fixture slices
        found = validate([sliced(model, tmp_path, test_iter=[1])])
    assert found == [], [str(f) for f in found]


@pytest.mark.parametrize("model", MODELS)
def test_model_trains_on_a_slice(model, tmp_path):
    solver = sliced(model, tmp_path, max_iter=12, display=1, test_iter=[1], test_interval=12, snapshot=0,
                    stepvalue=[100, 200], stepsize=100)
    t = Trainer(solver, out=lambda *a: None)
    final = t.train()
    with open(t.metrics_path) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["phase"] == "train"]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    assert np.isfinite(final["loss"])
