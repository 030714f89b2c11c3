"""Inference: yaffe's TEST net against ONNX Runtime running the same net exported by `run.py export`, on the same
threads: batch-1 latency (median) and batch-64 images/s, for LeNet (models/lenet_mnist), CIFAR-10 quick (Caffe's),
models/resnet_fashion and ResNet-20 on 3x32x32 (benchmarks/nets.py), random weights. yaffe's net runs forward
only (keep_for_backward False, as `run.py predict` and the test nets run): BatchNorm and Scale fold into the
convolutions, and a batch of 64 runs as slices on the threads (solvers/replicas.py), as predict and test run it.

    python benchmarks/onnx_inference.py [--repeats 7]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def deploy(path, shape):
    """The net's TEST layers with its data layers replaced by one Input of `shape` (the data top), losses and
    metrics left out."""
    from netspec.spec import load_net
    import layers
    doc = copy.deepcopy(dict(load_net(path)))
    kept, data_top = [], None
    for layer in doc["layer"]:
        cls = layers.REGISTRY.get(layer["type"])
        phase = (layer.get("include") or {}).get("phase") if isinstance(layer.get("include"), dict) else None
        if phase == "TRAIN":
            continue
        if (cls.is_data or layer["type"] == "Input") and (data_top is None or layer["type"] != "DummyData"):
            data_top = layer["top"][0] if isinstance(layer["top"], list) else layer["top"]
            continue  # (a later DummyData, an LSTM's cont say, stays)
        if cls.is_loss or layer["type"] in ("Accuracy", "Silence"):
            continue
        kept.append(layer)
    kept.insert(0, {"name": "data", "type": "Input", "top": [data_top], "input_param": {"shape": {"dim": list(shape)}}})
    doc["layer"] = kept
    return doc


TORCH = {"LeNet": "LeNet", "CIFAR-10 quick": "CIFAR", "ResNet-20 (3x32x32)": "ResNet"}  # train_throughput's


def torch_seconds(name, batch, n, repeats):
    """PyTorch's seconds per forward of the same net (its own init) under torch.inference_mode, in a fresh
    process with its default OpenMP settings and the same threads; None without torch or an equivalent."""
    if name not in TORCH:
        return None
    import subprocess
    code = f"""
import statistics, sys, time, torch
sys.path.insert(0, '.')
from benchmarks.train_throughput import torch_model_for
torch.set_num_threads({os.cpu_count()})
model, shape = torch_model_for({TORCH[name]!r})
model.eval()
x = torch.rand(({batch},) + tuple(shape[1:]))
times = []
with torch.inference_mode():
    for _ in range(3):
        model(x)
    for _ in range({repeats}):
        t0 = time.perf_counter()
        for _ in range({n}):
            model(x)
        times.append((time.perf_counter() - t0) / {n})
print(statistics.median(times))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    return float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else None


def bench(name, doc, shape, repeats, out):
    import onnxruntime as ort
    from netspec.net import Net
    from netspec.onnx_export import export
    net = Net(doc, "TEST", name, seed=0)
    net.keep_for_backward = False
    net.constant_weights = True  # as run.py predict and run.py test run it
    rng = np.random.default_rng(0)
    for layer in net.layers:
        for i, b in enumerate(layer.blobs):
            b.data[...] = ([rng.normal(size=b.shape), rng.uniform(0.5, 2, b.shape), np.full(b.shape, 1.0)][i]
                           if layer.type == "BatchNorm" else rng.normal(0, 0.1, b.shape))
    weights = {k: v.copy() for k, v in net.weights().items()}
    path = os.path.join(tempfile.mkdtemp(), "m.onnx")
    info = export(net, path, out=lambda *a: None)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count()
    sess = ort.InferenceSession(path, opts)
    inp = info["inputs"][0]
    rows = []
    from solvers.replicas import start
    for batch in (1, 64):
        x = rng.normal(size=(batch,) + tuple(shape[1:])).astype(np.float32)
        net.blobs[inp].reshape(x.shape)
        net.reshape()
        # as run.py predict and run.py test run it: the batch as slices on the threads where that pays (batch 64)
        runner = start(net, None)[0] or net
        net.blobs[inp].data[...] = x
        runner.forward()
        ref = net.blobs[info["outputs"][0]].data.copy()
        got = sess.run(info["outputs"][:1], {inp: x})[0]
        assert np.allclose(got, ref, rtol=1e-3, atol=1e-4 * max(1, np.abs(ref).max())), name
        n = 200 if batch == 1 else 50
        times = {"yaffe": [], "ort": []}
        for _ in range(repeats):
            for k in range(n + 5):  # (5 untimed: after the pause a forward took 2-3x its time for some ms, this
                if k == 5:          # VM's cores waking, which hit whichever side ran first after it)
                    t0 = time.perf_counter()
                net.blobs[inp].data[...] = x
                runner.forward()
            times["yaffe"].append((time.perf_counter() - t0) / n)
            time.sleep(0.3)  # each side's threads spin a while after a run: they slowed the other 1.5-2x
            for k in range(n + 5):
                if k == 5:
                    t0 = time.perf_counter()
                sess.run(None, {inp: x})
            times["ort"].append((time.perf_counter() - t0) / n)
            time.sleep(0.3)
        if runner is not net:
            runner.close()
            net = Net(doc, "TEST", name, seed=0)  # a split net cannot change its batch: a new one, same weights
            net.keep_for_backward, net.constant_weights = False, True
            net.load_weights(weights, name)
        rows.append((batch, statistics.median(times["yaffe"]), statistics.median(times["ort"]),
                     torch_seconds(name, batch, n, repeats)))
    for batch, ours, theirs, torch in rows:
        if batch == 1:
            pt = f"{torch * 1e3:.3f} ms | {torch / ours:.2f}" if torch else "- | -"
            out(f"| {name} | batch 1 latency | {ours * 1e3:.3f} ms | {theirs * 1e3:.3f} ms | {theirs / ours:.2f} | "
                f"{pt} |")
        else:
            pt = f"{batch / torch:,.0f} img/s | {torch / ours:.2f}" if torch else "- | -"
            out(f"| {name} | batch 64 | {batch / ours:,.0f} img/s | {batch / theirs:,.0f} img/s | {theirs / ours:.2f} | "
                f"{pt} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    print("| net | measure | yaffe | ONNX Runtime | yaffe speed / ORT's | PyTorch (inference_mode) | "
          "yaffe speed / PyTorch's |")
    print("|---|---|---|---|---|---|---|")
    nets = [("LeNet", os.path.join(ROOT, "models", "lenet_mnist", "deploy.yaml"), (1, 1, 28, 28)),
            ("CIFAR-10 quick", os.path.join(ROOT, "tests", "fixtures", "caffe_examples", "cifar10",
                                             "cifar10_quick_train_test.prototxt"), (1, 3, 32, 32)),
            ("ResNet (models/resnet_fashion)", os.path.join(ROOT, "models", "resnet_fashion", "net.yaml"), (1, 1, 28, 28))]
    from benchmarks.nets import resnet20
    resnet = os.path.join(tempfile.mkdtemp(), "resnet20.yaml")
    with open(resnet, "w") as f:
        f.write(resnet20())
    nets.append(("ResNet-20 (3x32x32)", resnet, (1, 3, 32, 32)))
    for name, path, shape in nets:
        bench(name, deploy(path, shape), shape, args.repeats, print)


if __name__ == "__main__":
    main()
