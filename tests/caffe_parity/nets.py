"""The whole nets compared with Caffe (tests/test_caffe_parity.py), as Caffe sees them: each models/* net's
TRAIN phase with its data layers replaced by Input layers holding a fixed batch, its solver (20 iterations),
and LeNet-digits under every solver type. Used by export_nets.py (which writes them for the chroot) and by the test
(which rebuilds the same nets, batch and initial weights here, so the fixture holds only Caffe's results).

The batch and the initial weights are drawn with NumPy's legacy RandomState, whose streams never change.
"""
from __future__ import annotations

import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"}
SOLVER_FIELDS = ("type", "base_lr", "momentum", "momentum2", "delta", "rms_decay", "weight_decay",
                 "regularization_type", "lr_policy", "gamma", "power", "stepsize", "stepvalue", "iter_size",
                 "clip_gradients")
LENET_SOLVERS = {
    "Nesterov": {"type": "Nesterov", "base_lr": 0.002, "momentum": 0.95},
    "AdaGrad": {"type": "AdaGrad", "base_lr": 0.002, "momentum": 0.0, "delta": 1e-8},
    "RMSProp": {"type": "RMSProp", "base_lr": 0.0002, "momentum": 0.0, "rms_decay": 0.98, "delta": 1e-8},
    "AdaDelta": {"type": "AdaDelta", "base_lr": 1.0, "momentum": 0.95, "delta": 1e-6, "lr_policy": "fixed"},
    "Adam": {"type": "Adam", "base_lr": 0.0003, "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8,
             "lr_policy": "fixed"},
    "SGD_L1_clip": {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "regularization_type": "L1",
                    "weight_decay": 0.001, "clip_gradients": 0.5},
}
ITERATIONS = 20


def cases() -> dict:
    """{name: (model folder, solver overrides)}."""
    out = {m: (m, {}) for m in sorted(os.listdir(os.path.join(ROOT, "models")))
           if os.path.exists(os.path.join(ROOT, "models", m, "solver.yaml"))}
    # On LeNet-digits (8x8 images): lenet_mnist has ten times as many MAX pooling windows, and a run of 20
    # iterations of it meets about one window whose two largest values differ by ~1e-7, where float32 rounding
    # (Caffe's and yaffe's sum in different orders) decides where the gradient goes. SGD absorbs that; the
    # adaptive rules, which divide each step by the root of the squared gradients so far, turn it into a 1e-3 to
    # 1e-2 difference of the loss by iteration 20 (measured with AdaGrad over four batches).
    out.update({f"lenet_digits_{k}": ("lenet_digits", v) for k, v in LENET_SOLVERS.items()})
    return out


def _train_layers(doc):
    def included(layer):
        inc, exc = layer.get("include"), layer.get("exclude")
        phases = [r.get("phase") for r in (inc if isinstance(inc, list) else [inc]) if r]
        if phases and "TRAIN" not in phases:
            return False
        excluded = [r.get("phase") for r in (exc if isinstance(exc, list) else [exc]) if r]
        return "TRAIN" not in excluded
    return [dict(l) for l in doc["layer"] if included(l)]


def export(name: str, shapes: dict | None = None) -> dict:
    """{"net": prototxt text, "solver": prototxt text, "inputs": {blob: array}, "init": {"layer/i": array}}.
    shapes: {data top: shape} (from the fixture): the data sources are then not read, so the test needs no data
    files; without it the shapes come from the model's data layers."""
    from netspec.loader import load, to_plain
    from netspec.net import Net
    from netspec.prototxt import dumps, loads as prototxt_loads
    folder, overrides = cases()[name]
    overrides = dict(overrides)
    seed = overrides.pop("seed", 1701)
    solver = to_plain(load(os.path.join(ROOT, "models", folder, "solver.yaml")))
    net_path = os.path.join(ROOT, "models", folder, solver["net"])
    node = load(net_path)
    if shapes is None:
        shapes = Net(node, "TRAIN", net_path, seed=0, allocate=False).shapes
    doc = to_plain(node)
    layers, inputs, rng = [], {}, np.random.RandomState(seed)
    for layer in _train_layers(doc):
        layer.pop("include", None)
        layer.pop("exclude", None)
        if layer["type"] in DATA_TYPES:
            tops = layer["top"] if isinstance(layer["top"], list) else [layer["top"]]
            layers.append({"name": layer["name"], "type": "Input", "top": tops,
                           "input_param": {"shape": [{"dim": list(shapes[t])} for t in tops]}})
            for t in tops:
                inputs[t] = (rng.randint(0, 10, shapes[t]) if t == "label" else
                             rng.uniform(0, 1, shapes[t])).astype(np.float32)
            continue
        layers.append(layer)
    text = dumps({"name": doc.get("name", folder), "layer": layers})
    cfg = {k: solver[k] for k in SOLVER_FIELDS if k in solver}
    cfg.update(overrides)
    cfg.update({"net": "net.prototxt", "max_iter": ITERATIONS, "display": 0, "random_seed": 1701})
    net = Net(prototxt_loads(text)[0], "TRAIN", net_path, seed=0)
    init = {}
    for i, layer in enumerate(net.layers):
        for j, blob in enumerate(layer.blobs):
            shape = blob.data.shape
            r = np.random.RandomState(1000 + 10 * i + j)
            if layer.type == "BatchNorm":
                value = np.zeros(shape)  # no statistics yet: a TRAIN net uses the batch's
            elif layer.type == "Scale":
                value = 1 + 0.1 * r.normal(size=shape) if j == 0 else 0.1 * r.normal(size=shape)
            elif len(shape) == 1:
                value = 0.05 * r.normal(size=shape)  # biases
            else:
                value = r.normal(size=shape) * np.sqrt(1.0 / max(1, blob.data[0].size))
            init[f"{layer.name}/{j}"] = value.astype(np.float32)
    return {"net": text, "solver": dumps(cfg), "inputs": inputs, "init": init}


def sample(a: np.ndarray, n: int = 512) -> np.ndarray:
    """All of a small array, else n entries at fixed spacing, with its sum, sum of |x| and of squares."""
    flat = np.asarray(a, np.float64).ravel()
    picked = flat if flat.size <= n else flat[np.linspace(0, flat.size - 1, n).astype(np.int64)]
    return np.concatenate([picked, [flat.sum(), np.abs(flat).sum(), (flat ** 2).sum()]])
