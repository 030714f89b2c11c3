"""Python layers as Caffe users bring them: Caffe's linreg example with its pyloss.py, unchanged; a PASCAL
multilabel data layer in the style of Caffe's (ported to Python 3) feeding a net; param_str checked by yaffe
Fields; run.py check-layer; slices."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYCAFFE = os.path.join(ROOT, "tests", "fixtures", "caffe_examples", "pycaffe")


def run(*args, cwd, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


SOLVER = """net: "linreg.prototxt"
base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 30 display: 1 random_seed: 7
snapshot_after_train: false
"""


def _losses(folder):
    with open(os.path.join(folder, "solver_metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["phase"] == "train" and r.get("images_per_s")]


def test_caffes_linreg_with_its_pyloss_trains_unchanged_as_the_euclidean_loss_does(tmp_path):
    """`PYTHONPATH=layers caffe train -solver solver.prototxt` with examples/pycaffe's files as they ship; the same
    net with Caffe's EuclideanLoss in place of the Python one gives the same loss at every iteration."""
    runs = {}
    for kind in ("python", "builtin"):
        folder = tmp_path / kind
        shutil.copytree(PYCAFFE, folder)
        (folder / "solver.prototxt").write_text(SOLVER)
        if kind == "builtin":
            text = (folder / "linreg.prototxt").read_text()
            start = text.index("layer {\n  type: 'Python'")
            (folder / "linreg.prototxt").write_text(text[:start] + "layer { type: 'EuclideanLoss' name: 'loss' "
                                                    "top: 'loss' bottom: 'ipx' bottom: 'ipy' }\n")
        r = run("train", "-solver", "solver.prototxt", cwd=folder, pythonpath="layers")
        assert r.returncode == 0, r.stderr
        runs[kind] = _losses(folder)
    assert len(runs["python"]) == 30
    np.testing.assert_allclose(runs["python"], runs["builtin"], rtol=1e-5)
    assert runs["python"][-1] < runs["python"][0]


def _voc(root, n=6):
    """A PASCAL VOC layout in miniature: JPEGImages, Annotations (objects by class name), ImageSets/Main."""
    from PIL import Image
    classes = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow"]
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub))
    truth = {}
    for i in range(n):
        index = f"2007_{i:06d}"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(
            os.path.join(root, "JPEGImages", index + ".jpg"))
        names = list(rng.choice(classes, size=1 + i % 3, replace=False))
        objects = "".join(f"<object><name>{c}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
                          f"<ymax>5</ymax></bndbox></object>" for c in names)
        with open(os.path.join(root, "Annotations", index + ".xml"), "w") as f:
            f.write(f"<annotation><filename>{index}.jpg</filename>{objects}</annotation>")
        truth[index] = {classes.index(c) for c in names}  # class k is label channel k (background dropped)
    with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "w") as f:
        f.write("".join(f"{k}\n" for k in truth))
    return truth


MULTILABEL_NET = """name: "multilabel"
layer {
  name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "pascal_multilabel_py3" layer: "PascalMultilabelDataLayerSync"
                 param_str: "{'pascal_root': '%s', 'im_shape': [16, 16], 'split': 'train', 'batch_size': 3}" }
}
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "score" type: "InnerProduct" bottom: "conv" top: "score"
        inner_product_param { num_output: 20 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def test_a_pascal_multilabel_python_data_layer_feeds_a_net_trained_from_python(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    import yaffe as caffe
    truth = _voc(str(tmp_path / "voc"))
    shutil.copytree(PYCAFFE, tmp_path / "work")
    work = tmp_path / "work"
    (work / "net.prototxt").write_text(MULTILABEL_NET % (tmp_path / "voc"))
    (work / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.05 lr_policy: "fixed" max_iter: 20 '
                                          'display: 5 snapshot_after_train: false random_seed: 3\n')
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))           # tools.py (SimpleTransformer), as Caffe's example expects
    monkeypatch.syspath_prepend(str(work / "layers"))
    solver = caffe.get_solver("solver.prototxt")
    net = solver.net
    assert net.blobs["data"].shape == (3, 3, 16, 16) and net.blobs["label"].shape == (3, 20)
    net.forward()
    order = net.layers[0]._layer.inst.batch_loader.indexlist  # the data layer's own list, in its order
    labels = net.blobs["label"].data
    for row, index in zip(labels, order[:3]):
        assert set(np.flatnonzero(row)) == truth[index]
    image = net.blobs["data"].data[0]
    assert abs(float(image.mean())) < 64 and image.std() > 10  # BGR minus 128, SimpleTransformer's preprocess
    first = float(net.forward()["loss"])
    solver.step(20)
    assert solver.iter == 20 and np.isfinite(float(net.blobs["loss"].data))
    assert net.params["score"][0].data.any() and first > 0


def test_python_layer_fields_check_its_param_str(tmp_path):
    from netspec.errors import SpecError
    from netspec.loader import loads
    from netspec.net import Net
    (tmp_path / "fielded.py").write_text('''import caffe
from layers.base import Field


class Scale(caffe.Layer):
    fields = (Field("factor", "float", 1.0, "multiplier", minimum=0), Field("mode", "enum", "fast", "how",
              choices=("fast", "exact")))

    def setup(self, bottom, top):
        self.factor = self.params.factor

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.factor * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.factor * top[0].diff
''')
    net_text = """
layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [2, 3]}}}
  - {name: s, type: Python, bottom: x, top: y, python_param: {module: fielded, layer: Scale, param_str: "%s"}}
"""
    good = Net(loads(net_text % "{factor: 2.5}", str(tmp_path / "n.yaml")), "TEST", str(tmp_path / "n.yaml"))
    good.blobs["x"].data[...] = 1
    good.forward()
    assert (good.blobs["y"].data == 2.5).all()
    for param_str, message in (("{factr: 2}", "unknown field 'factr'; did you mean 'factor'?"),
                               ("{factor: -1}", "factor: -1 is less than the minimum of 0"),
                               ("{mode: slow}", "mode: 'slow' is not one of ['fast', 'exact']"),
                               ("[1, 2]", "must be a mapping")):
        with pytest.raises(SpecError) as e:
            Net(loads(net_text % param_str, str(tmp_path / "n.yaml")), "TEST", str(tmp_path / "n.yaml"))
        assert message in str(e.value) and "n.yaml:4" in str(e.value) and "layer 's' (Python)" in str(e.value)


def test_check_layer_runs_the_gradient_checker_on_a_users_python_layer(tmp_path):
    (tmp_path / "mine.py").write_text('''import caffe


class Square(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data ** 2

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * bottom[0].data * top[0].diff


class Wrong(Square):
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2.1 * bottom[0].data * top[0].diff
''')
    ok = run("check-layer", "mine.Square", "--bottom", "2,3,4", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("PASS mine.Square"), ok.stderr
    bad = run("check-layer", "mine.Wrong", "--bottom", "2,3", cwd=tmp_path)
    assert bad.returncode == 1 and "FAIL mine.Wrong" in bad.stdout and "analytic" in bad.stdout
    missing = run("check-layer", "mine.Cube", "--bottom", "2,3", cwd=tmp_path)
    assert missing.returncode == 2 and "has no class 'Cube'" in missing.stderr and "Traceback" not in missing.stderr


def test_a_per_example_python_layer_runs_in_slices_with_the_whole_batchs_results():
    from netspec.loader import loads
    from netspec.net import Net
    from solvers.replicas import start
    text = """
layer:
  - {name: in, type: Input, top: [x, label], input_param: {shape: [{dim: [8, 3]}, {dim: [8]}]}}
  - {name: ip, type: InnerProduct, bottom: x, top: ip, inner_product_param: {num_output: 3,
     weight_filler: {type: gaussian}}}
  - {name: cube, type: Python, bottom: ip, top: c, python_param: {module: tests.pylayer_cases, layer: %s}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [c, label], top: loss}
"""
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    from netspec.errors import UserError
    with pytest.raises(UserError, match="per_example = True"):
        start(Net(loads(text % "Cube", "n.yaml"), "TRAIN", "n.yaml", seed=1), 2)
    results = []
    for threads in (None, 2):
        net = Net(loads(text % "PerExampleCube", "n.yaml"), "TRAIN", "n.yaml", seed=1)
        net.blobs["x"].data[...] = x
        net.blobs["label"].data[...] = [0, 1, 2, 0, 1, 2, 0, 1]
        runner = start(net, threads)[0] if threads else None
        net.clear_param_diffs()
        loss = runner.forward_backward() if runner else net.forward_backward()
        results.append((loss, net.params[0].blob.diff.copy()))
        if runner:
            assert len(runner.nets) == 2
            runner.close()
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_a_python_layer_bottom_too_big_to_make_is_a_clear_finding(tmp_path):
    """A Python layer's setup gets arrays of its bottoms' shapes; a shape beyond memory (a fuzzed dim of 10^12)
    is the layer's error with the shape and its size, not "a bug in yaffe"."""
    from netspec.spec import validate
    path = tmp_path / "net.yaml"
    path.write_text("layer:\n"
                    "  - {name: in, type: Input, top: x, input_param: {shape: {dim: [1000000000000]}}}\n"
                    "  - {name: py, type: Python, bottom: x, top: y, python_param: {module: tests.pylayer_cases, "
                    "layer: Cube}}\n")
    found = [f for f in validate([str(path)]) if f.severity == "error"]
    assert found and all("bug in yaffe" not in f.message for f in found)
    mine = [f for f in found if "layer 'py'" in f.message]
    assert mine and mine[0].line == 3 and "[1000000000000]" in mine[0].message and "GiB" in mine[0].message
