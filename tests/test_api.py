"""The Python API (`import yaffe as caffe`) as the README's example uses it, on models/lenet_digits: train from
Python with the arithmetic of `run.py train`, classify with the deploy net, extract features, reshape, NetSpec.
pycaffe's own tests run in tests/pycaffe."""
import gzip
import os
import shutil

import numpy as np
import pytest

import yaffe as caffe
from yaffe import layers as L
from yaffe import params as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """lenet_digits trained 150 iterations from Python, and the same by the Trainer behind `run.py train`."""
    from solvers.trainer import Trainer
    work = tmp_path_factory.mktemp("api")
    runs = {}
    for how in ("api", "cli"):
        shutil.copytree(os.path.join(ROOT, "models", "lenet_digits"), work / how,
                        ignore=shutil.ignore_patterns("snapshots"))  # a README run's in the checkout
        runs[how] = work / how / "solver.yaml"
    solver = caffe.SGDSolver(str(runs["api"]))
    assert solver.iter == 0 and len(solver.test_nets) == 1
    solver.step(100)
    solver.step(50)
    assert solver.iter == 150
    solver.snapshot()
    cli = Trainer(str(runs["cli"]), out=lambda *a: None, overrides={"max_iter": 150})
    cli.train()
    with gzip.open(work / "api" / "digits_test.csv.gz", "rt") as f:
        lines = f.read().splitlines()
    rows = np.loadtxt(lines[0 if lines[0][0].isdigit() else 1:], delimiter=",")
    images, labels = (rows[:, :64] / 16).reshape(-1, 1, 8, 8).astype(np.float32), rows[:, 64].astype(int)
    weights = str(work / "api" / "snapshots" / "lenet_digits_iter_150.weights.npz")
    return solver, cli, weights, images, labels, work


def test_solver_step_is_run_py_trains_arithmetic(trained):
    solver, cli, *_ = trained
    for name, params in solver.net.params.items():
        theirs = cli.net.layer_by_name(name).blobs
        for mine, other in zip(params, theirs):
            np.testing.assert_array_equal(mine.data, other.data, err_msg=name)
    accuracy = float(solver.test_nets[0].forward()["accuracy"])
    assert accuracy > 0.85


def test_deploy_net_classifies_and_extracts_features_like_the_test_net(trained):
    solver, _, weights, images, labels, _ = trained
    net = caffe.Net(os.path.join(ROOT, "models", "lenet_digits", "deploy.yaml"), weights, caffe.TEST)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    out = net.forward_all(data=images, blobs=["ip1"])  # 359 rows in batches of the net's 1
    assert out["prob"].shape == (len(images), 10) and out["ip1"].shape == (len(images), 256)
    np.testing.assert_allclose(out["prob"].sum(1), 1, rtol=1e-5)
    accuracy = float(np.mean(out["prob"].argmax(1) == labels))
    test_net = solver.test_nets[0]  # the same weights on the same 359 test digits
    assert accuracy == pytest.approx(float(test_net.forward()["accuracy"]), abs=1e-6)
    # reshape the input for a batch of 3: the same numbers as forward_all's rows
    net.blobs["data"].reshape(3, 1, 8, 8)
    net.reshape()
    probs = net.forward(data=images[:3])["prob"]
    np.testing.assert_allclose(probs, out["prob"][:3], rtol=1e-5, atol=1e-7)
    # no backward without a loss, as in Caffe: with force_backward (a saliency map), the gradient of the class
    with open(os.path.join(ROOT, "models", "lenet_digits", "deploy.yaml")) as f:
        text = f.read().replace("yaffe: 1\n", "yaffe: 1\nforce_backward: true\n")
    path = os.path.join(trained[5], "deploy_fb.yaml")
    with open(path, "w") as f:
        f.write(text)
    net = caffe.Net(path, weights, caffe.TEST)
    net.blobs["data"].reshape(3, 1, 8, 8)
    net.forward(data=images[:3])
    grads = net.backward(prob=np.eye(10, dtype=np.float32)[labels[:3]])
    assert grads["data"].shape == (3, 1, 8, 8) and np.abs(grads["data"]).sum() > 0
    x, eps, k = images[:3].astype(np.float64), 1e-2, (0, 0, 3, 4)  # one pixel, by central differences
    probe = []
    for sign in (1, -1):
        y = x.copy()
        y[k] += sign * eps
        probe.append(net.forward(data=y)["prob"][0, labels[0]])
    assert grads["data"][k] == pytest.approx((probe[0] - probe[1]) / (2 * eps), rel=0.05, abs=1e-4)


def test_fine_tuning_from_python_lowers_the_loss_and_save_copy_from_round_trip(trained, tmp_path):
    solver, _, weights, *_ = trained
    saved = tmp_path / "lenet.caffemodel"
    solver.net.save(str(saved))
    net = caffe.Net(os.path.join(ROOT, "models", "lenet_digits", "deploy.yaml"), caffe.TEST, weights=str(saved))
    for name in ("conv1", "ip2"):
        np.testing.assert_array_equal(net.params[name][0].data, solver.net.params[name][0].data)


def test_apply_update_steps_against_the_diff_and_moves_the_iteration_on(trained):
    solver = trained[0]
    w = solver.net.params["ip2"][1]  # the bias
    before = w.data.copy()
    solver.net.clear_param_diffs()
    w.diff[...] = 1000  # far larger than the momentum left from training: every bias must go down
    solver.apply_update()
    assert np.all(w.data < before) and solver.iter == 151
    assert not solver.net.params["ip2"][1].diff.any()  # cleared for the next backward


def test_netspec_builds_lenet_digits_that_loads_its_weights(trained, tmp_path):
    weights = trained[2]
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 8, 8]))
    n.conv1 = L.Convolution(n.data, kernel_size=3, pad=1, num_output=20, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, kernel_size=3, pad=1, num_output=50, weight_filler=dict(type="xavier"))
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.pool2 = L.Pooling(n.relu2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip1 = L.InnerProduct(n.pool2, num_output=256, param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.relu3 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu3, num_output=10)
    n.prob = L.Softmax(n.ip2)
    text = str(n.to_proto())
    assert 'type: "Convolution"' in text and "pool: MAX" in text and "lr_mult: 2" in text
    (tmp_path / "lenet.prototxt").write_text(text)
    (tmp_path / "lenet.yaml").write_text(n.to_yaml())
    for path in ("lenet.prototxt", "lenet.yaml"):
        net = caffe.Net(str(tmp_path / path), weights, caffe.TEST)
        assert list(net.params) == ["conv1", "conv2", "ip1", "ip2"]
        assert net.blobs["pool2"].shape == (2, 50, 2, 2) and net.outputs == ["prob"]


def test_transformer_and_blobproto_round_trips():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(8, 6, 3)).astype(np.float32)  # H x W x C in [0, 1], RGB
    t = caffe.io.Transformer({"data": (1, 3, 8, 6)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    x = t.preprocess("data", image)
    np.testing.assert_allclose(x[0], image[:, :, 2] * 255 - 104, rtol=1e-5)  # BGR, scaled, mean-subtracted
    np.testing.assert_allclose(t.deprocess("data", x), image, rtol=1e-5, atol=1e-6)
    mean = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(mean)
    back = caffe.proto.caffe_pb2.BlobProto()
    back.ParseFromString(blob.SerializeToString())
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(back), mean)
    from netspec.caffemodel import blob_bytes, read_blob  # yaffe's own reader and writer agree
    np.testing.assert_array_equal(read_blob(blob.SerializeToString()), mean)
    back.ParseFromString(blob_bytes(mean))
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(back), mean)
    datum = caffe.io.array_to_datum(np.arange(12, dtype=np.uint8).reshape(3, 2, 2), label=7)
    from layers.sources import parse_datum
    array, label = parse_datum(datum.SerializeToString())
    assert label == 7 and np.array_equal(array, np.arange(12).reshape(3, 2, 2))


def test_classifier_averages_ten_crops_and_matches_the_net_on_the_centre(trained):
    weights, images = trained[2], trained[3]
    clf = caffe.Classifier(os.path.join(ROOT, "models", "lenet_digits", "deploy.yaml"), weights, image_dims=(8, 8))
    pictures = [im.transpose(1, 2, 0) for im in images[:4]]  # H x W x 1, as caffe.io.load_image gives
    centre = clf.predict(pictures, oversample=False)
    net = caffe.Net(os.path.join(ROOT, "models", "lenet_digits", "deploy.yaml"), weights, caffe.TEST)
    direct = net.forward_all(data=images[:4])["prob"]
    np.testing.assert_allclose(centre, direct, rtol=1e-5, atol=1e-7)
    ten = clf.predict(pictures)  # 8x8 crops of 8x8 images: five the image, five its mirror
    mirrored = net.forward_all(data=images[:4, :, :, ::-1])["prob"]
    np.testing.assert_allclose(ten, (direct + mirrored) / 2, rtol=1e-5, atol=1e-7)


def test_detector_warps_each_window_to_the_input(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 6, 6]))
    n.score = L.InnerProduct(n.data, num_output=4, weight_filler=dict(type="gaussian", std=0.1))
    (tmp_path / "det.prototxt").write_text(str(n.to_proto()))
    net = caffe.Net(str(tmp_path / "det.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "det.caffemodel"))
    picture = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "im.png")
    windows = np.array([[0, 0, 6, 6], [4, 10, 16, 22]])
    det = caffe.Detector(str(tmp_path / "det.prototxt"), str(tmp_path / "det.caffemodel"))
    found = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [list(d["window"]) for d in found] == windows.tolist()
    image = picture.astype(np.float32) / 255
    for d, (y0, x0, y1, x1) in zip(found, windows):
        crop = caffe.io.resize_image(image[y0:y1, x0:x1], (6, 6)).transpose(2, 0, 1)[None]
        np.testing.assert_allclose(d["prediction"], net.forward_all(data=crop)["score"][0], rtol=1e-4, atol=1e-6)
    padded = caffe.Detector(str(tmp_path / "det.prototxt"), str(tmp_path / "det.caffemodel"), context_pad=1)
    crop = padded.crop(image, windows[0])  # at the corner: the context above and left is outside, mean-filled
    assert crop.shape == (6, 6, 3) and not crop[0].any() and crop[3:, 3:].any()


@pytest.mark.parametrize("module", ["caffe_pb2", "plain"])
def test_solver_parameter_is_written_as_caffes_examples_write_their_solvers(tmp_path, module):
    """caffe_pb2.SolverParameter filled as examples/01-learning-lenet fills it, str() written to a file: the text
    of protobuf's text format (fields in caffe.proto's number order, strings quoted, enums by name, repeated
    fields a line each, NetState messages in braces), which yaffe's solver loader reads back field for field. Both
    the classes built from caffe.proto with protobuf and the hand-written ones used without it."""
    import importlib
    from netspec.prototxt import loads
    caffe_pb2 = importlib.import_module(f"yaffe.proto.{module}")
    s = caffe_pb2.SolverParameter()
    s.random_seed = 0xCAFFE
    s.train_net = "mnist/custom_auto_train.prototxt"
    s.test_net.append("mnist/custom_auto_test.prototxt")
    s.test_interval = 500
    s.test_iter.append(100)
    s.max_iter = 10000
    s.type = "SGD"
    s.base_lr = 0.01
    s.momentum = 0.9
    s.weight_decay = 5e-4
    s.lr_policy = "inv"
    s.gamma = 0.0001
    s.power = 0.75
    s.stepvalue.extend([10, 20])
    s.snapshot_prefix = 'mnist/say "hi"'
    s.solver_mode = caffe_pb2.SolverParameter.GPU
    s.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
    s.test_state.add(stage=["test-on-train"])
    s.test_state.add().stage.append("test-on-test")
    s.train_state.level = 2
    s.debug_info = False
    text = str(s)
    assert text == ('train_net: "mnist/custom_auto_train.prototxt"\ntest_net: "mnist/custom_auto_test.prototxt"\n'
                    'test_iter: 100\ntest_interval: 500\nbase_lr: 0.01\nmax_iter: 10000\nlr_policy: "inv"\n'
                    'gamma: 0.0001\npower: 0.75\nmomentum: 0.9\nweight_decay: 0.0005\n'
                    'snapshot_prefix: "mnist/say \\"hi\\""\nsolver_mode: GPU\nrandom_seed: 831486\n'
                    'debug_info: false\ntrain_state {\n  level: 2\n}\ntest_state {\n  stage: "test-on-train"\n}\n'
                    'test_state {\n  stage: "test-on-test"\n}\nstepvalue: 10\nstepvalue: 20\n'
                    'snapshot_format: BINARYPROTO\ntype: "SGD"\n')
    doc, _ = loads(text, "solver.prototxt")
    assert doc["base_lr"] == 0.01 and doc["test_iter"] in (100, [100]) and doc["snapshot_prefix"] == 'mnist/say "hi"'
    assert doc["stepvalue"] == [10, 20] and doc["snapshot_format"] == "BINARYPROTO" and doc["random_seed"] == 831486
    assert [t["stage"] for t in doc["test_state"]] == ["test-on-train", "test-on-test"]
    with pytest.raises(AttributeError, match="base_rate"):
        s.base_rate = 0.1
    with pytest.raises(AttributeError, match="repeated field"):
        s.test_iter = 100
    with pytest.raises(TypeError):  # (protobuf at the assignment, plain at the writing)
        s.max_iter = 1.5
        str(s)


def test_caffe_pb2_without_protobuf_writes_the_bytes_of_caffe_proto_classes():
    """The hand-written messages (used where protobuf is missing) against the classes built from caffe.proto:
    BlobProto, BlobProtoVector and Datum serialize to the same bytes and parse each other's."""
    pytest.importorskip("google.protobuf")
    from yaffe.proto import caffe_pb2, plain
    for mod in (caffe_pb2, plain):
        blob = mod.BlobProto()
        blob.shape.dim.extend([1, 2, 3])
        blob.data.extend([0.5, -1.25, 3.0, 0.0, 7.5, 1e-3])
        datum = mod.Datum(channels=2, height=1, width=2, data=b"\x01\x02\x03\x04", label=7)
        vec = mod.BlobProtoVector()
        vec.blobs.add().CopyFrom(blob) if hasattr(vec.blobs, "add") else vec.blobs.append(blob)
        if mod is caffe_pb2:
            real = (blob.SerializeToString(), datum.SerializeToString(), vec.SerializeToString())
        else:
            assert (blob.SerializeToString(), datum.SerializeToString(), vec.SerializeToString()) == real
    back = plain.BlobProto()
    back.ParseFromString(real[0])
    assert list(back.shape.dim) == [1, 2, 3] and np.allclose(back.data, [0.5, -1.25, 3.0, 0.0, 7.5, 1e-3])
    d = plain.Datum()
    d.ParseFromString(real[1])
    assert (d.channels, d.height, d.width, d.data, d.label) == (2, 1, 2, b"\x01\x02\x03\x04", 7)


def test_pycaffe_hooks_callbacks_loss_weights_and_the_rest_of_pycaffes_names(tmp_path, monkeypatch):
    """The pycaffe names a Caffe script may call (each checked against BVLC Caffe 1.0's pycaffe by hand, the same
    values): net.blob_loss_weights; before/after_forward/backward(run) called with each layer's index in Caffe's
    order (every layer in backward); forward_backward_all (batched, padded, trimmed; pycaffe's own fails on Python
    3.7+: its generator raises StopIteration); solver.add_callback(on_start, on_gradients) around each iteration's
    gradients, solver.lr along a step policy, solver.share_weights(net); caffe.Timer, has_nccl, solver_count/rank."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "n.prototxt").write_text(
        'name: "n"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 4 } } }\n'
        'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 3 dim: 2 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 '
        'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }\n'
        'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: 0.5 }\n')
    net = caffe.Net("n.prototxt", caffe.TRAIN)
    assert net.blob_loss_weights == {"data": 0.0, "label": 0.0, "ip": 0.0, "loss": 0.5}
    calls = []
    for kind in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(net, kind)(lambda i, kind=kind: calls.append((kind, i)))
    rng = np.random.default_rng(0)
    x, lab = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 2)).astype(np.float32)
    net.forward(data=x[:3], label=lab[:3])
    net.backward()
    assert calls == ([(k, i) for i in range(5) for k in ("before_forward", "after_forward")] +
                     [(k, i) for i in reversed(range(5)) for k in ("before_backward", "after_backward")])
    outs, diffs = net.forward_backward_all(blobs=["ip"], diffs=["ip"], data=x, label=lab)
    padded = lambda a: np.concatenate([a, np.zeros((2,) + a.shape[1:], a.dtype)])
    for s in (0, 3, 6):
        net.forward(data=padded(x)[s:s + 3], label=padded(lab)[s:s + 3])
        back = net.backward(diffs=["ip"])
        n = min(3, 7 - s)
        np.testing.assert_allclose(outs["ip"][s:s + n], net.blobs["ip"].data[:n], rtol=1e-6)
        np.testing.assert_allclose(diffs["ip"][s:s + n], back["ip"][:n], rtol=1e-6)
    assert outs["ip"].shape == (7, 2) and diffs["data"].shape == (7, 4)
    (tmp_path / "s.prototxt").write_text('net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "step"\nstepsize: 2\n'
                                         'gamma: 0.5\nmax_iter: 5\nmomentum: 0.9\ndisplay: 0\nsnapshot_prefix: "s"\n'
                                         'random_seed: 3\n')  # (its fillers: unseeded, a draw whose ReLU
    # outputs all fell below zero within the 4 steps had all-zero gradients: 1 run in ~200 failed)
    s = caffe.SGDSolver("s.prototxt")
    s.net.blobs["data"].data[...], s.net.blobs["label"].data[...] = x[:3], lab[:3]
    events = []
    s.add_callback(lambda: events.append(("start", s.iter)),
                   lambda: events.append(("gradients", s.iter, s.net.params["ip"][0].diff.copy())))
    rates = []
    for _ in range(4):
        rates.append(s.lr)
        s.step(1)
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert [e[:2] for e in events] == [(k, i) for i in range(4) for k in ("start", "gradients")]
    assert all(np.abs(e[2]).sum() > 0 for e in events[1::2])  # the gradients, not yet the steps
    other = caffe.Net("n.prototxt", caffe.TEST)
    s.share_weights(other)
    s.net.params["ip"][0].data[0, 0] = 42
    assert other.params["ip"][0].data[0, 0] == 42
    t = caffe.Timer()
    t.start()
    t.stop()
    assert t.ms >= 0 and caffe.has_nccl() is False and (caffe.solver_count(), caffe.solver_rank()) == (1, 0)


def test_netspec_writes_numpy_numbers_as_numbers_and_fcn_crops_build(tmp_path):
    """NumPy scalars and arrays in a NetSpec's parameters are written as prototxt numbers (coord_map.crop gives
    np.int64 offsets; under NumPy 2 their repr, np.int64(89), made the file unreadable): an FCN-style net with a
    pad-100 convolution, a bilinear Deconvolution and crop() builds, and its crop lands where coord_map says."""
    from yaffe.coord_map import crop
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 20, 24]))
    n.conv = L.Convolution(n.data, kernel_size=3, pad=np.int64(100), num_output=np.int32(3))
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=3, kernel_size=4, stride=2, bias_term=False,
                                                         weight_filler=dict(type="bilinear")))
    n.score = crop(n.up, n.data)
    n.scaled = L.Power(n.score, power=np.float32(1.0), scale=np.array(2.0))
    text = str(n.to_proto())
    assert "np." not in text and "pad: 100" in text and "num_output: 3" in text and "scale: 2.0" in text
    (tmp_path / "fcn.prototxt").write_text(text)
    net = caffe.Net(str(tmp_path / "fcn.prototxt"), caffe.TEST)
    assert net.blobs["score"].data.shape == (1, 3, 20, 24)
    offset = int(text.split("offset: ")[1].split()[0])
    assert offset == 100  # coord_map's arithmetic, the same code as Caffe's
    net.forward(data=np.random.default_rng(0).normal(size=(1, 2, 20, 24)))
    np.testing.assert_array_equal(net.blobs["score"].data, net.blobs["up"].data[:, :, 100:120, 100:124])


def test_net_hooks_fire_inside_solver_step_and_a_one_device_nccl_runs_as_caffes_train_py(tmp_path, monkeypatch):
    """Caffe calls a Net's before/after hooks inside Step too (python/train.py's --timing times each layer that way):
    with hooks on solver.net, step() runs the passes layer by layer through them, to the same losses; caffe.NCCL of
    one solver is a no-op callback (bcast, add_callback(nccl), after_backward(nccl)); of two, a clear error."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(os.path.join(ROOT, "models", "lenet_digits"), tmp_path / "m",
                    ignore=shutil.ignore_patterns("snap*"))
    losses = []
    for hooked in (False, True):
        s = caffe.SGDSolver(str(tmp_path / "m" / "solver.yaml"), quiet=True)
        calls = []
        if hooked:
            s.net.before_forward(lambda i: calls.append(("f", i)))
            s.net.after_backward(lambda i: calls.append(("b", i)))
            nccl = caffe.NCCL(s, caffe.NCCL.new_uid())
            nccl.bcast()
            s.add_callback(nccl)
            s.net.after_backward(nccl)
        s.step(3)
        losses.append(float(s.net.blobs["loss"].data))
        n = len(s.net.layers)
        assert calls == ([(k, i) for _ in range(3) for k, r in (("f", range(n)), ("b", reversed(range(n)))) for i in r]
                         if hooked else [])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    caffe.set_solver_count(2)
    try:
        with pytest.raises(caffe.UserError, match="no NCCL"):
            caffe.NCCL(s, b"")
    finally:
        caffe.set_solver_count(1)


def test_caffe_pb2_falls_back_to_the_hand_written_messages_with_a_warning(monkeypatch):
    from yaffe.proto import caffe_pb2, descriptor, plain
    monkeypatch.setattr(caffe_pb2, "_classes", None)
    monkeypatch.setattr(descriptor, "build", lambda: (_ for _ in ()).throw(TypeError("an old protobuf")))
    with pytest.warns(UserWarning, match="could not build caffe.proto's classes"):
        assert caffe_pb2.BlobProto is plain.BlobProto
    with pytest.raises(AttributeError, match="pip install protobuf"):
        caffe_pb2.NetParameter
    monkeypatch.setattr(caffe_pb2, "_classes", None)  # (the real classes again for the tests after)


_RESNET_DEPLOY = """name: "tiny_res"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 14 dim: 14 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c1_bn" type: "BatchNorm" bottom: "c1" top: "c1" batch_norm_param { use_global_stats: true } }
layer { name: "c1_scale" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
layer { name: "c1_relu" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "c2" bottom: "c1" top: "sum" }
layer { name: "sum_relu" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def test_a_pycaffe_test_net_runs_forward_only_and_follows_weights_changed_in_place(tmp_path, monkeypatch):
    """A TEST net of Input layers runs pycaffe's forward() as run.py predict runs a net (forward only: BatchNorm
    folded, the layers bound once), every blob as the layers one by one write it (the convolution under the SUM
    too); weights changed in place from Python between passes, through net.params or an array held from before,
    change the outputs as Caffe's would (compared each pass, the folds made again); backward() after it runs the
    forward again keeping what the backward reads, and gives the diffs of the plain path."""
    import netspec.net as netmod
    path = tmp_path / "deploy.prototxt"
    path.write_text(_RESNET_DEPLOY)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 14, 14)).astype(np.float32)

    def make():
        net = caffe.Net(str(path), caffe.TEST)
        r = np.random.default_rng(1)
        for name, blobs in net.params.items():
            for i, b in enumerate(blobs):
                b.data[...] = r.uniform(0.5, 1.5, b.data.shape) if name == "c1_bn" else r.normal(0, 0.3, b.data.shape)
        net.params["c1_bn"][2].data[...] = 1.0
        return net
    fast, plain = make(), make()
    plain._fit = False  # the layers one by one, keeping what the backward reads
    binds = []
    original = netmod.Net._bound_calls
    monkeypatch.setattr(netmod.Net, "_bound_calls", lambda self, *a: binds.append(1) or original(self, *a))
    held = fast.params["fc"][0].data
    for step in range(4):
        if step == 2:
            fast.params["c1"][0].data[...] *= 1.5
            plain.params["c1"][0].data[...] *= 1.5
        if step == 3:
            held[...] *= -1  # an array taken before, changed in place
            plain.params["fc"][0].data[...] *= -1
        got, want = fast.forward(data=x), plain.forward(data=x)
        np.testing.assert_allclose(got["prob"], want["prob"], rtol=1e-5, atol=1e-6)
        for name in plain.blobs:
            np.testing.assert_allclose(fast.blobs[name].data, plain.blobs[name].data, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} at pass {step}")
    assert not fast._net.keep_for_backward and fast._net.constant_weights and plain._net.keep_for_backward
    assert binds  # (the bound path ran)
    for net in (fast, plain):
        net.blobs["prob"].diff[...] = np.random.default_rng(2).normal(size=(2, 5))
    diffs = [net.backward(diffs=["c1", "sum"]) for net in (fast, plain)]
    assert fast._net.keep_for_backward
    for name in ("data", "c1", "sum"):
        np.testing.assert_allclose(diffs[0][name], diffs[1][name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast.params["c1"][0].diff, plain.params["c1"][0].diff, rtol=1e-4, atol=1e-6)
    assert np.abs(fast.params["c1"][0].diff).max() > 0 and np.abs(diffs[0]["data"]).max() > 0
    import yaffe.pycaffe as pycaffe  # weights over FORWARD_ONLY_BYTES: layer by layer, no copy of them kept
    monkeypatch.setattr(pycaffe, "FORWARD_ONLY_BYTES", 1000)
    big = make()
    big.forward(data=x)
    assert big._net.keep_for_backward and "_weights_seen" not in big._net.__dict__


def test_a_pycaffe_test_net_with_a_data_layer_evaluates_forward_only_and_backward_keeps_its_batch(tmp_path):
    """A TEST net whose data layer comes first (an evaluation loop over its batches) runs forward() forward-only
    too, a new batch each pass and the loss of the layers one by one; a backward() after it runs the layers after
    the data layer again (the batch it has, not a new one) and gives the diffs of the plain path on that batch."""
    path = tmp_path / "test.prototxt"
    path.write_text("""name: "eval"
force_backward: true
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 3 dim: 2 dim: 9 dim: 9 } shape { dim: 3 }
                     data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c1_bn" type: "BatchNorm" bottom: "c1" top: "c1" batch_norm_param { use_global_stats: true } }
layer { name: "relu" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "fc" type: "InnerProduct" bottom: "c1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
""")
    net = caffe.Net(str(path), caffe.TEST)
    net.params["c1_bn"][1].data[...] = 1.0
    net.params["c1_bn"][2].data[...] = 1.0
    batches = []
    for _ in range(2):
        loss = float(net.forward()["loss"])
        batches.append(net.blobs["data"].data.copy())
        assert not net._net.keep_for_backward and np.isfinite(loss) and (net.blobs["c1"].data >= 0).all()
    assert not np.array_equal(batches[0], batches[1])  # a new batch each pass
    fast = net.backward(diffs=["data"])["data"].copy()
    np.testing.assert_array_equal(net.blobs["data"].data, batches[1])  # backward() kept the batch
    net._fit = False  # the plain path, from the layer above the data on the same batch
    assert float(net.forward(start="c1")["loss"]) == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(net.backward(diffs=["data"])["data"], fast, rtol=1e-5, atol=1e-7)
    assert np.abs(fast).max() > 0
