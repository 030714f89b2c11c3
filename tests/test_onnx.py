"""ONNX export (netspec/onnx_export.py): the exported graph passes onnx.checker and runs in ONNX Runtime with
yaffe's TEST outputs, for the shipped nets and a net of every mapped layer type, random weights."""
import os

import numpy as np
import pytest

from netspec.errors import UserError
from netspec.loader import from_plain, load, loads
from netspec.net import Net

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EVERY = """
name: every
layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 4, 9, 9]}}}
  - {name: conv, type: Convolution, bottom: data, top: conv,
     convolution_param: {num_output: 6, kernel_size: 3, pad: 1, dilation: 2, group: 2}}
  - {name: bn, type: BatchNorm, bottom: conv, top: conv}
  - {name: sc, type: Scale, bottom: conv, top: conv, scale_param: {bias_term: true}}
  - {name: relu, type: ReLU, bottom: conv, top: conv, relu_param: {negative_slope: 0.1}}
  - {name: pmax, type: Pooling, bottom: conv, top: pmax, pooling_param: {pool: MAX, kernel_size: 3, stride: 2, pad: 1}}
  - {name: pave, type: Pooling, bottom: conv, top: pave, pooling_param: {pool: AVE, kernel_size: 3, stride: 2, pad: 1}}
  - {name: cat, type: Concat, bottom: [pmax, pave], top: cat}
  - {name: pover, type: Pooling, bottom: pmax, top: pover, pooling_param: {pool: AVE, kernel_size: 3, stride: 2}}
  - {name: lrn, type: LRN, bottom: cat, top: lrn, lrn_param: {local_size: 3, alpha: 0.5, beta: 0.75, k: 2}}
  - {name: lrnw, type: LRN, bottom: conv, top: lrnw,
     lrn_param: {local_size: 5, alpha: 0.3, beta: 0.75, norm_region: WITHIN_CHANNEL}}
  - {name: prelu, type: PReLU, bottom: lrn, top: prelu}
  - {name: deconv, type: Deconvolution, bottom: prelu, top: deconv,
     convolution_param: {num_output: 3, kernel_size: 2, stride: 2}}
  - {name: bias, type: Bias, bottom: deconv, top: deconv}
  - {name: elu, type: ELU, bottom: deconv, top: elu, elu_param: {alpha: 0.5}}
  - {name: gpool, type: Pooling, bottom: elu, top: gpool, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: flat, type: Flatten, bottom: gpool, top: flat}
  - {name: ip, type: InnerProduct, bottom: lrn, top: ip, inner_product_param: {num_output: 6}}
  - {name: sl, type: Slice, bottom: ip, top: [s1, s2], slice_param: {axis: 1, slice_point: 3}}
  - {name: sig, type: Sigmoid, bottom: s1, top: sig}
  - {name: tanh, type: TanH, bottom: s2, top: tanh}
  - {name: abs, type: AbsVal, bottom: tanh, top: abs}
  - {name: bnll, type: BNLL, bottom: abs, top: bnll}
  - {name: pow, type: Power, bottom: bnll, top: pow, power_param: {power: 2, scale: 0.5, shift: 1}}
  - {name: exp, type: Exp, bottom: pow, top: exp, exp_param: {base: 2, scale: 0.1}}
  - {name: log, type: Log, bottom: exp, top: log, log_param: {base: 10, shift: 1}}
  - {name: clip, type: Clip, bottom: log, top: clip, clip_param: {min: 0.1, max: 0.5}}
  - {name: swish, type: Swish, bottom: clip, top: swish}
  - {name: drop, type: Dropout, bottom: swish, top: swish}
  - {name: thr, type: Threshold, bottom: sig, top: thr, threshold_param: {threshold: 0.5}}
  - {name: tile, type: Tile, bottom: sig, top: tile, tile_param: {tiles: 2, axis: 1}}
  - {name: sum, type: Eltwise, bottom: [sig, flat], top: sum, eltwise_param: {operation: SUM, coeff: [0.5, -2]}}
  - {name: prod, type: Eltwise, bottom: [sum, flat], top: prod, eltwise_param: {operation: PROD}}
  - {name: max, type: Eltwise, bottom: [prod, swish], top: max, eltwise_param: {operation: MAX}}
  - {name: resh, type: Reshape, bottom: max, top: resh, reshape_param: {shape: {dim: [0, 3, 1]}}}
  - {name: soft, type: Softmax, bottom: resh, top: soft, softmax_param: {axis: 1}}
  - {name: crop, type: Crop, bottom: [conv, pmax], top: crop, crop_param: {axis: 2, offset: [1, 2]}}
  - {name: mvn, type: MVN, bottom: crop, top: mvn}
  - {name: red, type: Reduction, bottom: mvn, top: red, reduction_param: {operation: SUMSQ, axis: 1, coeff: 0.5}}
  - {name: red2, type: Reduction, bottom: pave, top: red2, reduction_param: {operation: SUM, axis: 2}}
  - {name: am, type: ArgMax, bottom: ip, top: am, argmax_param: {axis: 1}}
  - {name: ids, type: Input, top: ids, input_param: {shape: {dim: [2, 3]}}}
  - {name: emb, type: Embed, bottom: ids, top: emb, embed_param: {num_output: 4, input_dim: 5}}
"""


def _randomize(net, seed=0):
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for i, b in enumerate(layer.blobs):
            if layer.type == "BatchNorm":
                b.data[...] = [rng.normal(size=b.shape), rng.uniform(0.5, 2, b.shape), np.full(b.shape, 2.0)][i]
            else:
                b.data[...] = rng.normal(0, 0.5, b.shape)


def _compare(net, path, inputs, batch=None):
    from netspec.onnx_export import export
    info = export(net, path, batch=batch, out=lambda *a: None)
    for name, x in inputs.items():
        net.blobs[name].reshape(x.shape)
        net.blobs[name].data[...] = x
    if net.layers[0].is_data:  # a data layer's net: run the layers above it on the given input
        for i in range(1, len(net.layers)):
            net.forward_layer(i)
    else:
        net.forward()
    got = ort.InferenceSession(path).run(info["outputs"], inputs)
    for name, y in zip(info["outputs"], got):
        ref = net.blobs[name].data
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
    return info


def test_a_net_of_every_mapped_type_runs_in_onnx_runtime_as_in_yaffe(tmp_path):
    net = Net(loads(EVERY, "every.yaml"), "TEST", "every.yaml", seed=0)
    _randomize(net)
    x = np.random.default_rng(1).normal(size=(2, 4, 9, 9)).astype(np.float32)
    ids = np.array([[0, 4, 2], [1, 1, 3]], np.float32)
    info = _compare(net, str(tmp_path / "every.onnx"), {"data": x, "ids": ids})
    assert set(info["outputs"]) == {"soft", "thr", "tile", "red", "red2", "am", "emb", "pover", "lrnw"}
    assert info["inputs"] == ["data", "ids"]


MODERN = """
name: modern
layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 8, 5, 5]}}}
  - {name: conv, type: Convolution, bottom: data, top: conv, convolution_param: {num_output: 8, kernel_size: 3, pad: 1}}
  - {name: gn, type: GroupNorm, bottom: conv, top: gn, group_norm_param: {num_groups: 4, eps: 0.001}}
  - {name: gelu, type: GELU, bottom: gn, top: gelu}
  - {name: dw, type: Convolution, bottom: gelu, top: dw,
     convolution_param: {num_output: 8, kernel_size: 3, pad: 1, group: 8}}
  - {name: gn0, type: GroupNorm, bottom: dw, top: gn0, group_norm_param: {num_groups: 2, affine: false}}
  - {name: mish, type: Mish, bottom: gn0, top: mish}
  - {name: dp, type: DropPath, bottom: mish, top: dp}
  - {name: add, type: Eltwise, bottom: [dp, conv], top: add}
  - {name: hs, type: HardSwish, bottom: add, top: hs}
  - {name: ln, type: LayerNorm, bottom: hs, top: ln, layer_norm_param: {axis: 2}}
  - {name: silu, type: SiLU, bottom: ln, top: silu}
  - {name: ln0, type: LayerNorm, bottom: silu, top: ln0, layer_norm_param: {affine: false, eps: 0.01}}
  - {name: pool, type: Pooling, bottom: ln0, top: pool, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: ip, type: InnerProduct, bottom: pool, top: ip, inner_product_param: {num_output: 3}}
"""


def test_the_layers_of_current_nets_run_in_onnx_runtime_as_in_yaffe(tmp_path):
    """GELU, Mish, HardSwish, SiLU, LayerNorm and GroupNorm (affine or not), DropPath: a net trained with them
    deploys."""
    net = Net(loads(MODERN, "modern.yaml"), "TEST", "modern.yaml", seed=0)
    _randomize(net)
    for layer in net.layers:  # gamma near 1 keeps the values in the range where the nonlinearities bend
        if layer.type in ("LayerNorm", "GroupNorm") and layer.blobs:
            layer.blobs[0].data[...] = 1 + 0.3 * layer.blobs[0].data
    x = np.random.default_rng(2).normal(size=(2, 8, 5, 5)).astype(np.float32)
    info = _compare(net, str(tmp_path / "modern.onnx"), {"data": x})
    _compare(net, str(tmp_path / "modern3.onnx"), {"data": np.concatenate([x, x[:1]])})  # the batch symbolic
    assert info["outputs"] == ["ip"]


RECURRENT = """
layer:
  - {name: x, type: Input, top: [x, cont, xs, h0, c0],
     input_param: {shape: [{dim: [5, 3, 2, 2]}, {dim: [5, 3]}, {dim: [3, 4]}, {dim: [1, 3, 4]}, {dim: [1, 3, 4]}]}}
  - {name: lstm, type: LSTM, bottom: [x, cont, xs, h0, c0], top: [h, hT, cT],
     recurrent_param: {num_output: 4, expose_hidden: true}}
  - {name: rnn, type: RNN, bottom: [x, cont], top: o, recurrent_param: {num_output: 3}}
  - {name: unit_x, type: InnerProduct, bottom: xs, top: gates, inner_product_param: {num_output: 16}}
  - {name: gates3, type: Reshape, bottom: gates, top: gates3, reshape_param: {shape: {dim: [1, -1, 16]}}}
  - {name: cont1, type: Slice, bottom: cont, top: [cont_first, cont_rest], slice_param: {axis: 0, slice_point: 1}}
  - {name: quiet, type: Silence, bottom: cont_rest}
  - {name: unit, type: LSTMUnit, bottom: [c0, gates3, cont_first], top: [c1, h1]}
  - {name: maps, type: Input, top: maps, input_param: {shape: {dim: [3, 6, 2, 3]}}}
  - {name: maxout, type: Maxout, bottom: maps, top: maxout, maxout_param: {num_pieces: 3}}
"""


def _zoo_net(name):
    """A Caffe model-zoo deploy structure (tests/test_caffe_zoo.py) at batch 1, its final Softmax left off (the
    logits compare more sharply), with random weights scaled as He's (activations stay of order 1)."""
    from netspec.prototxt import loads as prototxt
    from tests import test_caffe_zoo as zoo
    text = {"caffenet": lambda: zoo.read("caffenet.prototxt"), "googlenet": zoo.googlenet_stem_and_inception3,
            "resnet50": zoo.resnet50_deploy}[name]()
    text = "\n".join(line for line in text.splitlines() if '"Softmax"' not in line)
    for n in ("10", "1"):  # batch 1
        text = text.replace(f"dim: {n} dim: 3 ", "dim: 1 dim: 3 ").replace(f"input_dim: {n} input_dim: 3",
                                                                            "input_dim: 1 input_dim: 3")
    net = Net(prototxt(text, name)[0], "TEST", name, seed=0)
    rng = np.random.default_rng(5)
    for layer in net.layers:
        for i, b in enumerate(layer.blobs):
            if layer.type == "BatchNorm":
                b.data[...] = [rng.normal(0, 0.1, b.shape), rng.uniform(0.5, 2, b.shape), np.ones(b.shape)][i]
            elif layer.type == "Scale":
                b.data[...] = rng.uniform(0.5, 1.0, b.shape) if i == 0 else rng.normal(0, 0.1, b.shape)
            elif b.data.ndim > 1:
                b.data[...] = rng.standard_normal(b.shape, np.float32)
                b.data *= 1.0 / np.sqrt(np.prod(b.shape[1:]))
            else:
                b.data[...] = rng.normal(0, 0.1, b.shape)
    return net


@pytest.mark.parametrize("name", ["caffenet", "googlenet", "resnet50"])
def test_caffe_zoo_deploy_structures_run_in_onnx_runtime_as_in_yaffe(name, tmp_path):
    net = _zoo_net(name)
    x = np.random.default_rng(6).normal(size=net.shapes["data"]).astype(np.float32)
    info = _compare(net, str(tmp_path / f"{name}.onnx"), {"data": x})
    assert info["outputs"] == [{"caffenet": "fc8", "googlenet": "pool3/3x3_s2", "resnet50": "fc1000"}[name]]


@pytest.mark.parametrize("name,runs", [("googlenet", 3), ("resnet50", 1)])
def test_caffe_zoo_structures_forward_only_with_channels_last_runs_match_onnx_runtime(name, runs, tmp_path):
    """As run.py predict runs them (forward only, constant weights): GoogLeNet's convolutions between its Concats
    and ResNet-50 from its 7x7 stem (padding 3) through its MAX pooling (a batch of one) and its bottleneck blocks
    run channels-last (netspec/channels_last.py), and give ONNX Runtime's outputs."""
    net = _zoo_net(name)
    net.keep_for_backward, net.constant_weights = False, True
    x = np.random.default_rng(6).normal(size=net.shapes["data"]).astype(np.float32)
    _compare(net, str(tmp_path / f"{name}.onnx"), {"data": x})
    assert sum("Program.call" in call.__qualname__ for _, call in net._bound[4]) == runs


def test_recurrent_layers_and_maxout_run_in_onnx_runtime_as_in_yaffe(tmp_path):
    net = Net(loads(RECURRENT, "rec.yaml"), "TEST", "rec.yaml", seed=0)
    _randomize(net)
    rng = np.random.default_rng(2)
    cont = np.ones((5, 3), np.float32)
    cont[0] = 0
    cont[2, 1] = 0  # a new sequence mid-way: ONNX's LSTM op has no such reset, so the export unrolls
    inputs = {"x": rng.normal(size=(5, 3, 2, 2)), "cont": cont, "xs": rng.normal(size=(3, 4)),
              "h0": rng.normal(size=(1, 3, 4)), "c0": rng.normal(size=(1, 3, 4)), "maps": rng.normal(size=(3, 6, 2, 3))}
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    info = _compare(net, str(tmp_path / "rec.onnx"), inputs)
    assert set(info["outputs"]) == {"h", "hT", "cT", "o", "c1", "h1", "maxout"}
    # the batch is symbolic on a sequence's second axis: 2 sequences run too
    got = ort.InferenceSession(str(tmp_path / "rec.onnx")).run(["h"], {k: (v[:, :2] if v.ndim > 1 and k != "maps"
                                                                          and v.shape[0] != 3 else v[:2])
                                                                      for k, v in inputs.items()})
    np.testing.assert_allclose(got[0], net.blobs["h"].data[:, :2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_forward_only_resnet_runs_as_onnx_runtime_does(channels_last, tmp_path, monkeypatch):
    """models/resnet_fashion's TEST layers at batch 8 as run.py predict runs them (forward only, constant weights:
    BatchNorm folded, the ReLUs and SUMs inside the convolutions), against ONNX Runtime on the exported graph: its
    convolutions kept channels-last between them (netspec/channels_last.py, as shipped: two as Winograd's), and on
    their own kernels
    (on AVX-512 the flat kernel for its 3x3 layers on 28- and 14-wide rows and the unpadded one for its stride-2
    layers)."""
    from benchmarks.onnx_inference import deploy
    import layers.conv as conv
    import netspec.channels_last as cl
    from layers import simd
    calls = []
    unpadded, flat, chained = conv.direct_conv_unpadded, conv.direct_conv_flat, cl.Program.conv
    monkeypatch.setattr(cl, "ENABLED", channels_last)
    monkeypatch.setattr(conv, "direct_conv_unpadded", lambda *a: calls.append(a[5]) or unpadded(*a))
    monkeypatch.setattr(conv, "direct_conv_flat", lambda *a: calls.append("flat") or flat(*a))
    monkeypatch.setattr(cl.Program, "conv", lambda *a: calls.append("channels-last") or chained(*a))
    wino = cl.Program.wino
    monkeypatch.setattr(cl.Program, "wino", lambda *a: calls.append("winograd") or wino(*a))
    path = os.path.join(ROOT, "models", "resnet_fashion", "net.yaml")
    net = Net(deploy(path, (8, 1, 28, 28)), "TEST", path, seed=0)
    _randomize(net)
    net.keep_for_backward, net.constant_weights = False, True
    x = np.random.default_rng(4).normal(size=(8, 1, 28, 28)).astype(np.float32)
    _compare(net, str(tmp_path / "r.onnx"), {"data": x})
    if channels_last:  # (all nine; the 3x3s reading 32 and 64 channels at stride 1 as Winograd's F(2x2, 3x3))
        assert calls == ["channels-last"] * 4 + ["winograd"] + ["channels-last"] * 2 + ["winograd", "channels-last"]
    elif simd.VECTOR_BYTES == 64:  # (both taken)
        assert set(calls) == {"flat", 2}


@pytest.mark.parametrize("model", ["lenet_digits/deploy.yaml", "lenet_mnist/deploy.yaml", "lenet_digits/net.yaml",
                                   "lstm_mnist/deploy.yaml"])
def test_the_shipped_nets_export(model, tmp_path):
    path = os.path.join(ROOT, "models", model)
    net = Net(load(path), "TEST", path, seed=0)
    _randomize(net)
    shape = net.shapes["data"]
    n = shape[0] if net.layers[0].is_data else 3  # a data layer's net keeps its batch (its labels' shape)
    x = np.random.default_rng(3).uniform(size=(n,) + shape[1:]).astype(np.float32)
    info = _compare(net, str(tmp_path / "m.onnx"), {"data": x})  # (the LSTM's cont is made from the input)
    assert info["outputs"] == (["ip2"] if model.endswith("net.yaml") else ["prob"])


@pytest.mark.parametrize("model", sorted(m for m in os.listdir(os.path.join(ROOT, "models"))
                                          if os.path.isfile(os.path.join(ROOT, "models", m, "net.yaml"))))
def test_every_shipped_model_exports_with_an_input_in_place_of_its_data(model, tmp_path):
    """Each models/*/net.yaml's TEST layers, its data layers replaced by an Input (no data needed: the benchmark's
    deploy()), random weights: ONNX Runtime gives yaffe's outputs."""
    from benchmarks.onnx_inference import deploy
    path = os.path.join(ROOT, "models", model, "net.yaml")
    shape = {"lenet_digits": (4, 1, 8, 8)}.get(model, (4, 1, 28, 28))
    doc = deploy(path, shape)
    if model == "lstm_mnist":  # its cont is a DummyData: an input of the exported graph, fed ones after t = 0
        for layer in doc["layer"]:
            if layer["name"] == "cont":
                layer.clear()
                layer.update({"name": "cont", "type": "Input", "top": ["cont"],
                              "input_param": {"shape": {"dim": [28, 4]}}})
    net = Net(doc, "TEST", path, seed=0)
    _randomize(net, seed=1)
    for layer in net.layers:  # BatchNorm's variance positive, and the LSTM's weights of a trained net's size
        if layer.type == "BatchNorm":
            layer.blobs[1].data[...] = np.abs(layer.blobs[1].data) + 0.5
        if layer.type == "LSTM":  # (N(0, 0.5) over 128 units saturates every gate: chaos over 28 steps)
            for b in layer.blobs:
                b.data *= 0.2
    inputs = {"data": np.random.default_rng(2).uniform(size=shape).astype(np.float32)}
    if "cont" in net.blobs:
        inputs["cont"] = np.ones((28, 4), np.float32)
        inputs["cont"][0] = 0
    _compare(net, str(tmp_path / f"{model}.onnx"), inputs)


def test_a_layer_without_a_mapping_is_a_clear_error(tmp_path):
    from netspec.onnx_export import export
    net = Net(loads("""
layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 3, 4, 4]}}}
  - {name: pool, type: Pooling, bottom: data, top: pool, pooling_param: {pool: STOCHASTIC, kernel_size: 2, stride: 2}}
""", "w.yaml"), "TEST", "w.yaml")
    with pytest.raises(UserError) as e:
        export(net, str(tmp_path / "w.onnx"), out=lambda *a: None)
    assert "w.yaml:4:" in str(e.value) and "layer 'pool' (Pooling) cannot be exported" in str(e.value)


def test_run_py_export_and_the_python_api_write_the_trained_net(tmp_path):
    import subprocess
    import sys
    from solvers.trainer import Trainer
    import shutil
    shutil.copytree(os.path.join(ROOT, "models", "lenet_digits"), tmp_path / "m",
                    ignore=shutil.ignore_patterns("snapshots"))
    Trainer(str(tmp_path / "m" / "solver.yaml"), out=lambda *a: None, overrides={"max_iter": 100}).train()
    weights = str(tmp_path / "m" / "snapshots" / "lenet_digits_iter_100.weights.npz")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "export", str(tmp_path / "m" / "deploy.yaml"),
                        "--weights", weights, "-o", str(tmp_path / "lenet.onnx")], capture_output=True, text=True)
    assert r.returncode == 0 and "outputs prob" in r.stdout, r.stderr
    import yaffe as caffe
    net = caffe.Net(str(tmp_path / "m" / "deploy.yaml"), weights, caffe.TEST)
    info = net.to_onnx(tmp_path / "api.onnx", batch=1)
    x = np.random.default_rng(0).uniform(size=(1, 1, 8, 8)).astype(np.float32)
    for path in ("lenet.onnx", "api.onnx"):
        y = ort.InferenceSession(str(tmp_path / path)).run(None, {"data": x})[0]
        np.testing.assert_allclose(y, net.forward(data=x)["prob"], rtol=1e-5, atol=1e-6)
    assert info["outputs"] == ["prob"]


FIXTURE = os.path.join(ROOT, "tests", "fixtures", "onnx", "small_resnet.onnx")  # torch.onnx.export, BN folded


def _imported(tmp_path, onnx_path, batch):
    from netspec.onnx_import import write
    from solvers.snapshot import load_weights_file
    net_path, weights = write(onnx_path, str(tmp_path / "imported.yaml"), batch=batch, out=lambda *a: None)
    net = Net(load(net_path), "TEST", net_path, seed=0)
    net.load_weights(load_weights_file(weights), weights)
    return net


def test_a_model_exported_from_pytorch_imports_and_runs_as_onnx_runtime_runs_it(tmp_path):
    net = _imported(tmp_path, FIXTURE, batch=3)
    assert [l.type for l in net.layers].count("Eltwise") == 2  # the residual Adds
    x = np.random.default_rng(5).normal(size=(3, 3, 16, 16)).astype(np.float32)
    want = ort.InferenceSession(FIXTURE).run(None, {"data": x})[0]
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["logits"].data, want, rtol=1e-4, atol=1e-5)


ROUND_TRIP = """
name: round_trip
layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 3, 12, 12]}}}
  - {name: conv, type: Convolution, bottom: data, top: conv, convolution_param: {num_output: 4, kernel_size: 3, pad: 1}}
  - {name: bn, type: BatchNorm, bottom: conv, top: conv}
  - {name: sc, type: Scale, bottom: conv, top: conv, scale_param: {bias_term: true}}
  - {name: prelu, type: PReLU, bottom: conv, top: conv}
  - {name: pool, type: Pooling, bottom: conv, top: pool, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: conv2, type: Convolution, bottom: pool, top: conv2, convolution_param: {num_output: 4, kernel_size: 1}}
  - {name: add, type: Eltwise, bottom: [pool, conv2], top: add}
  - {name: cat, type: Concat, bottom: [add, pool], top: cat}
  - {name: ap, type: Pooling, bottom: cat, top: ap, pooling_param: {pool: AVE, kernel_size: 2, stride: 2}}
  - {name: ip, type: InnerProduct, bottom: ap, top: ip, inner_product_param: {num_output: 5}}
  - {name: sig, type: Sigmoid, bottom: ip, top: sig}
  - {name: prob, type: Softmax, bottom: sig, top: prob}
"""


def test_export_then_import_gives_the_same_outputs(tmp_path):
    from netspec.onnx_export import export
    net = Net(loads(ROUND_TRIP, "rt.yaml"), "TEST", "rt.yaml", seed=0)
    _randomize(net)
    export(net, str(tmp_path / "rt.onnx"), out=lambda *a: None)
    back = _imported(tmp_path, str(tmp_path / "rt.onnx"), batch=2)
    x = np.random.default_rng(6).normal(size=(2, 3, 12, 12)).astype(np.float32)
    for n in (net, back):
        n.blobs["data"].data[...] = x
        n.forward()
    np.testing.assert_allclose(back.blobs["prob"].data, net.blobs["prob"].data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fixture,output,layers", [
    ("modern_block.onnx", "logits", ["GELU", "LayerNorm", "HardSwish", "BNLL", "TanH", "ELU", "AbsVal", "Pooling"]),
    ("group_norm_opset17.onnx", "y", ["GroupNorm", "Scale", "Bias", "GELU", "Sigmoid"]),
    ("pytorch_idioms_opset17.onnx", "y", ["Bias", "Scale", "Power", "Eltwise", "Reshape", "InnerProduct"]),
    ("squeeze_excite_opset17.onnx", "y", ["HardSwish", "Pooling", "Power", "Clip", "Flatten", "Scale"]),
    ("modern_block_dynamo.onnx", "y", ["GELU", "LayerNorm", "HardSwish", "Mish", "ELU", "BNLL", "AbsVal"]),
    ("slicing_opset17.onnx", "y", ["Slice", "Silence", "Permute", "Reshape"]),
    ("lstm_opset17.onnx", "y", ["Permute", "DummyData", "LSTM", "Slice", "Reshape"]),
    ("lstm_dynamo.onnx", "y", ["Permute", "DummyData", "LSTM", "Slice", "Reshape"])])
def test_pytorch_exports_of_current_layers_import_and_run_as_onnx_runtime_runs_them(fixture, output, layers,
                                                                                     tmp_path):
    """PyTorch's GELU, LayerNorm, Hardswish, Mish, ELU, Softplus, abs and a spatial mean at opset 20, and at opset
    17 its GroupNorm (Reshape, InstanceNormalization, Reshape to Shape(x)) and erf GELU (Div, Erf, Add, Mul, Mul),
    each as yaffe's own layer; and (x - m) / s, 1 - x, a difference of tensors and x.view(x.size(0), -1), whose
    Shape, Gather, Unsqueeze and Concat fold into the Reshape's shape; MobileNetV3's squeeze-and-excitation gate
    (hardsigmoid, a Mul broadcast over the plane: a two-bottom Scale); PyTorch's dynamo exporter's softplus,
    Where(x > 20, x, Softplus(x)); Split, Slice, Transpose, Squeeze and Unsqueeze of tensors; nn.LSTM (batch
    first, its last step: a Gather) as Caffe's LSTM with a cont of ones, from both exporters
    (tests/fixtures/onnx/make_modern.py wrote them)."""
    path = os.path.join(ROOT, "tests", "fixtures", "onnx", fixture)
    shape = (2, 4, 5) if fixture.startswith("lstm") else (3, 3, 6, 6)
    net = _imported(tmp_path, path, batch=shape[0])
    types = [l.type for l in net.layers]
    assert all(t in types for t in layers), types
    assert not {"Erf", "InstanceNormalization", "Shape", "Gather", "Where"} & set(types)
    x = np.random.default_rng(8).normal(size=shape).astype(np.float32)
    want = ort.InferenceSession(path).run(None, {"data": x})[0]
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs[output].data, want, rtol=1e-4, atol=1e-5)


def test_current_layers_export_then_import_as_themselves(tmp_path):
    """GELU written as erf at opset 17 and GroupNorm as InstanceNormalization come back as GELU and GroupNorm."""
    from netspec.onnx_export import export
    net = Net(loads(MODERN, "modern.yaml"), "TEST", "modern.yaml", seed=0)
    _randomize(net)
    export(net, str(tmp_path / "modern.onnx"), out=lambda *a: None)
    back = _imported(tmp_path, str(tmp_path / "modern.onnx"), batch=2)
    types = [l.type for l in back.layers]
    assert types.count("GroupNorm") == 2 and types.count("GELU") == 1 and types.count("LayerNorm") == 2, types
    x = np.random.default_rng(9).normal(size=(2, 8, 5, 5)).astype(np.float32)
    for n in (net, back):
        n.blobs["data"].data[...] = x
        n.forward()
    np.testing.assert_allclose(back.blobs["ip"].data, net.blobs["ip"].data, rtol=1e-5, atol=1e-5)


def test_an_onnx_graph_with_ops_caffe_cannot_express_is_a_clear_error(tmp_path):
    from netspec.onnx_export import export
    from netspec.onnx_import import import_onnx
    net = Net(loads(EVERY, "every.yaml"), "TEST", "every.yaml", seed=0)
    export(net, str(tmp_path / "every.onnx"), out=lambda *a: None)
    with pytest.raises(UserError) as e:
        import_onnx(str(tmp_path / "every.onnx"))
    text = str(e.value)
    assert "have no Caffe layer" in text and "LRN" in text and "Greater" in text


def test_an_imported_model_fine_tunes_with_run_py_train(tmp_path):
    """The imported ResNet (a deploy net) with a data layer and a loss in front and behind, trained from its
    imported weights (--weights): the loss goes down."""
    import json
    import yaml
    from netspec.onnx_import import write
    from solvers.trainer import Trainer
    write(FIXTURE, str(tmp_path / "resnet.yaml"), batch=8, out=lambda *a: None)
    doc = yaml.safe_load((tmp_path / "resnet.yaml").read_text())
    rng = np.random.default_rng(7)
    data = rng.normal(size=(64, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "rows.npz", data=data, label=(data.mean(axis=(1, 2, 3)) > 0).astype(np.float32))
    doc["layer"][0] = {"name": "rows", "type": "Data", "top": ["data", "label"],
                       "data_param": {"source": "rows.npz", "batch_size": 8, "shuffle": True}}
    doc["layer"].append({"name": "loss", "type": "SoftmaxWithLoss", "bottom": ["logits", "label"], "top": ["loss"]})
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "solver.yaml").write_text("net: train.yaml\nbase_lr: 0.01\nmomentum: 0.9\nmax_iter: 60\n"
                                          "display: 1\nsnapshot_prefix: ft\nrandom_seed: 1\n")
    t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None)
    t.train(weights_path=str(tmp_path / "resnet.weights.npz"))
    with open(t.metrics_path) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["phase"] == "train" and r.get("images_per_s")]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_a_transpose_without_perm_reverses_the_axes_as_onnx_does(tmp_path):
    from onnx import TensorProto, helper, save
    g = helper.make_graph([helper.make_node("Transpose", ["data"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
                          "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3, 2])])
    path = str(tmp_path / "t.onnx")
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    from netspec.onnx_import import import_onnx
    doc, weights = import_onnx(path)
    assert weights == {} and doc["layer"][1]["permute_param"] == {"order": [2, 1, 0]}
    net = Net(from_plain(doc), "TEST", "t.yaml", seed=0)
    x = np.random.default_rng(3).normal(size=(2, 3, 4)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, ort.InferenceSession(path).run(None, {"data": x})[0])
