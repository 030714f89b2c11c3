"""Caffe's own files, unchanged, run as Caffe's docs run them: the MNIST tutorial (examples/mnist, BSD-2 from
BVLC/caffe, in tests/fixtures/caffe_examples) from the Caffe root, with small LMDBs made by `run.py data
convert` in place of `create_mnist.sh`'s, and Caffe's command-line spellings."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from netspec.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def yaffe(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_mnist_tutorial_runs_command_for_command_from_the_caffe_root(tmp_path):
    shutil.copytree(os.path.join(FIX, "caffe_examples"), tmp_path / "examples")
    with np.load(os.path.join(FIX, "caffe_lenet", "mnist_subset.npz")) as z:
        for part, n in (("train", 640), ("test", 200)):
            np.savez(tmp_path / f"{part}.npz", data=z[f"{part}_images"][:n, None].astype(np.float32),
                     label=z[f"{part}_labels"][:n].astype(np.float32))
            r = yaffe("data", "convert", f"{part}.npz", f"examples/mnist/mnist_{part}_lmdb", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
    # caffe train --solver=examples/mnist/lenet_solver.prototxt (shortened: 30 iterations, a test every 15)
    r = yaffe("train", "--solver=examples/mnist/lenet_solver.prototxt", "--set", "max_iter=30", "--set",
              "test_interval=15", "--set", "test_iter=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "solver_mode is ignored" in r.stdout + r.stderr and "Test net output #0: accuracy" in r.stdout
    assert os.path.isfile(tmp_path / "examples" / "mnist" / "lenet_iter_30.caffemodel")  # Caffe's file, Caffe's place
    assert os.path.isfile(tmp_path / "examples" / "mnist" / "lenet_iter_30.solverstate")
    # caffe test -model examples/mnist/lenet_train_test.prototxt -weights examples/mnist/lenet_iter_30.caffemodel
    r = yaffe("test", "-model", "examples/mnist/lenet_train_test.prototxt", "-weights",
              "examples/mnist/lenet_iter_30.caffemodel", "-iterations", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    accuracy = float(r.stdout.split("accuracy = ")[-1].split()[0])
    assert accuracy > 0.5
    # and resume from Caffe's solver state: caffe train -solver ... -snapshot examples/mnist/lenet_iter_30.solverstate
    r = yaffe("train", "-solver", "examples/mnist/lenet_solver.prototxt", "-snapshot",
              "examples/mnist/lenet_iter_30.solverstate", "--set", "max_iter=35", "--set", "test_interval=0",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Resumed from iteration 30" in r.stdout
    # the solver with its nets inline (net_param, two test_state stages): sources relative to the Caffe root too
    r = yaffe("train", "-solver", "examples/mnist/lenet_consolidated_solver.prototxt", "--set", "max_iter=20",
              "--set", "test_interval=20", "--set", "test_iter=[2, 3]", "--set",
              "snapshot_prefix=examples/mnist/consolidated", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Test net output #0: accuracy" in r.stdout and "Testing net (#1)" in r.stdout
    assert os.path.isfile(tmp_path / "examples" / "mnist" / "consolidated_iter_20.caffemodel")


def test_the_cifar10_quick_tutorial_runs_on_a_small_cifar_shaped_lmdb(tmp_path):
    from netspec.caffemodel import blob_bytes
    shutil.copytree(os.path.join(FIX, "caffe_examples"), tmp_path / "examples")
    rng = np.random.default_rng(0)
    images = {}
    for part, n in (("train", 200), ("test", 100)):
        labels = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 3, 32, 32)) + (labels * 20)[:, None, None, None]  # learnable: brightness
        images[part] = x
        np.savez(tmp_path / f"{part}.npz", data=x.astype(np.float32), label=labels.astype(np.float32))
        r = yaffe("data", "convert", f"{part}.npz", f"examples/cifar10/cifar10_{part}_lmdb", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    mean = images["train"].mean(axis=0, keepdims=True).astype(np.float32)  # what compute_image_mean writes
    (tmp_path / "examples" / "cifar10" / "mean.binaryproto").write_bytes(blob_bytes(mean))
    r = yaffe("train", "-solver", "examples/cifar10/cifar10_quick_solver.prototxt", "--set", "max_iter=20", "--set",
              "test_interval=10", "--set", "test_iter=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "examples" / "cifar10" / "cifar10_quick_iter_20.caffemodel")
    r = yaffe("test", "-model", "examples/cifar10/cifar10_quick_train_test.prototxt", "-weights",
              "examples/cifar10/cifar10_quick_iter_20.caffemodel", "-iterations", "1", cwd=tmp_path)
    assert r.returncode == 0 and "accuracy = " in r.stdout, r.stderr


LEVELDB_NET = """
name: "LeNetLevelDB"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 }
  data_param { source: "mnist_leveldb" batch_size: 8 %s }
}
"""


def test_the_data_layer_reads_a_leveldb_made_by_caffes_convert_mnist_data(tmp_path, monkeypatch):
    """mnist_leveldb: Caffe 1.0's `convert_mnist_data --backend=leveldb` on the first 40 MNIST training images
    (mnist40.npz), read in key order as Caffe's cursor reads them; with backend: LEVELDB or found from the folder."""
    from netspec.loader import load
    from netspec.net import Net
    shutil.copytree(os.path.join(FIX, "caffe_examples", "mnist_leveldb"), tmp_path / "mnist_leveldb")
    monkeypatch.chdir(tmp_path)  # a prototxt's source is relative to the working directory, as in Caffe
    with np.load(os.path.join(FIX, "caffe_examples", "mnist40.npz")) as z:
        images, labels = z["data"].astype(np.float32) / 256, z["label"].astype(np.float32)
    for backend in ("backend: LEVELDB", ""):
        (tmp_path / "net.prototxt").write_text(LEVELDB_NET % backend)
        net = Net(load(str(tmp_path / "net.prototxt")), "TRAIN", str(tmp_path / "net.prototxt"))
        assert net.shapes["data"] == (8, 1, 28, 28)
        for b in range(6):  # 5 batches of 8, then the first again
            net.forward()
            rows = np.arange(b * 8, b * 8 + 8) % 40
            np.testing.assert_allclose(net.blobs["data"].data, images[rows] * 256 * 0.00390625, rtol=1e-6)
            np.testing.assert_array_equal(net.blobs["label"].data, labels[rows])
    # and converted, for users who leave LevelDB behind: run.py data convert mnist_leveldb mnist.npz
    r = yaffe("data", "convert", "mnist_leveldb", "mnist.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "mnist.npz") as z:
        np.testing.assert_array_equal(z["data"], images * 256)
        np.testing.assert_array_equal(z["label"], labels)


@pytest.mark.filterwarnings("ignore:invalid escape sequence")  # (Caffe's regexes in plain strings, Python 2 style)
def test_caffes_parse_log_reads_a_training_log_written_with_log_format_glog(tmp_path):
    """`run.py train --log-format glog 2>&1 | tee log` gives a log that Caffe's own tools/extra/parse_log.py turns
    into its train and test tables (the CSVs plot_training_log.py draws): each line prefixed as glog prefixes
    Caffe's, `Train net output` lines after each display, `Iteration N, Testing net (#0)` before each test."""
    sys.path.insert(0, os.path.join(FIX, "caffe_examples", "tools"))
    try:
        import parse_log
    finally:
        sys.path.pop(0)
    r = yaffe("train", os.path.join(ROOT, "models", "lenet_digits", "solver.yaml"), "--log-format", "glog",
              "--set", "max_iter=20", "--set", "display=5", "--set", "test_interval=10", "--set", "snapshot=0",
              "--set", f"snapshot_prefix={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = tmp_path / "train.log"
    log.write_text(r.stdout)
    assert all(re.match(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ solver\.cpp:0\] ", line) for line in r.stdout.splitlines())
    train, test = parse_log.parse_log(str(log))
    shown = [float(v) for v in re.findall(r"Iteration \d+ \(.*\), loss = (\S+)", r.stdout)]
    assert [row["NumIters"] for row in train] == [0, 5, 10, 15]  # (parse_log keeps a row once the next begins)
    assert [row["loss"] for row in train] == shown[:4]  # average_loss 1: this iteration's loss, as displayed
    rates = [float(v) for v in re.findall(r"Iteration \d+, lr = (\S+)", r.stdout)]
    # (parse_log gives a row the rate of the last `lr =` line before its outputs: the display before's, as on
    # Caffe's logs, whose `Iteration N, lr =` line also follows the outputs; the first row takes the second's)
    assert [row["LearningRate"] for row in train] == [rates[0]] + rates[:3]
    assert [row["NumIters"] for row in test] == [0, 10, 20]
    assert all(0 <= row["accuracy"] <= 1 and row["loss"] > 0 for row in test)
    assert min(row["Seconds"] for row in train) >= 0


def test_data_mean_writes_caffes_compute_image_mean_file_byte_for_byte(tmp_path):
    """`run.py data mean x_lmdb mean.binaryproto` against BVLC Caffe 1.0's `compute_image_mean -backend lmdb` on the
    same LMDB (50 images 3x8x6 from RandomState(11), written by `run.py data convert`): the same bytes
    (tests/fixtures/caffe_examples/mean_3x8x6.binaryproto, from the Debian chroot) and the same lines; an .npz
    source gives the same mean; vectors are refused with a clear error."""
    rng = np.random.RandomState(11)
    np.savez(tmp_path / "x.npz", data=rng.randint(0, 256, (50, 3, 8, 6)).astype(np.float32),
             label=rng.randint(0, 10, 50).astype(np.float32))
    assert yaffe("data", "convert", "x.npz", "x_lmdb", cwd=tmp_path).returncode == 0
    r = yaffe("data", "mean", "x_lmdb", "mean.binaryproto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(FIX, "caffe_examples", "mean_3x8x6.binaryproto"), "rb") as f:
        assert (tmp_path / "mean.binaryproto").read_bytes() == f.read()
    assert r.stdout.splitlines() == ["Processed 50 files.", "Write to mean.binaryproto", "Number of channels: 3",
                                     "mean_value channel [0]: 127.105", "mean_value channel [1]: 127.717",
                                     "mean_value channel [2]: 126.514"]
    r = yaffe("data", "mean", "x.npz", "npz.binaryproto", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "npz.binaryproto").read_bytes() == (tmp_path / "mean.binaryproto").read_bytes()
    np.savez(tmp_path / "v.npz", data=np.ones((4, 5), np.float32), label=np.zeros(4, np.float32))
    r = yaffe("data", "mean", "v.npz", "v.binaryproto", cwd=tmp_path)
    assert r.returncode == 2 and "not images" in r.stderr and "Traceback" not in r.stderr


def test_a_caffe_data_layer_on_an_lmdb_without_backend_gets_an_info_line(tmp_path):
    """Caffe's Data layer defaults to LEVELDB and fails on an LMDB; yaffe reads it, and says (info, at the source)
    that Caffe would need `backend: LMDB`; YAML nets, where yaffe detects the kind, and prototxt nets that set it
    get no line."""
    np.savez(tmp_path / "x.npz", data=np.zeros((4, 1, 3, 3), np.float32), label=np.zeros(4, np.float32))
    assert yaffe("data", "convert", "x.npz", "x_lmdb", cwd=tmp_path).returncode == 0
    layer = 'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "x_lmdb" batch_size: 2{} }} }}\n'
    (tmp_path / "a.prototxt").write_text(layer.format(""))
    (tmp_path / "b.prototxt").write_text(layer.format(" backend: LMDB"))
    (tmp_path / "c.yaml").write_text("layer:\n  - {name: d, type: Data, top: [data, label], "
                                     "data_param: {source: x_lmdb, batch_size: 2}}\n")
    r = yaffe("validate", "a.prototxt", cwd=tmp_path)
    assert r.returncode == 0 and "a.prototxt:1:" in r.stdout + r.stderr
    assert "info: layer 'd' (Data): the source is an LMDB and backend is not set" in r.stdout + r.stderr
    for name in ("b.prototxt", "c.yaml"):
        r = yaffe("validate", name, cwd=tmp_path)
        assert r.returncode == 0 and "backend is not set" not in r.stdout + r.stderr, name


def test_data_mean_names_a_missing_source_and_an_unwritable_output(tmp_path):
    np.savez(tmp_path / "x.npz", data=np.ones((2, 1, 2, 2), np.float32), label=np.zeros(2, np.float32))
    r = yaffe("data", "mean", "nothere_lmdb", "m.binaryproto", cwd=tmp_path)
    assert r.returncode == 2 and "nothere_lmdb: error: no such file or directory" in r.stderr
    r = yaffe("data", "mean", "x.npz", "no/such/dir/m.binaryproto", cwd=tmp_path)
    assert r.returncode == 2 and "no/such/dir/m.binaryproto: error: cannot write the mean file" in r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr


def test_caffe_pb2_reads_edits_and_writes_prototxt_with_protobuf_as_caffes_scripts_do(tmp_path, monkeypatch, capsys):
    """With protobuf installed, caffe_pb2 holds caffe.proto's own classes: text_format reads a Caffe prototxt into a
    NetParameter (defaults and enums as in Caffe), a script edits it and writes str(net), and yaffe runs the result;
    Caffe's tools/extra/summarize.py prints the same table as with Caffe's caffe_pb2."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import text_format
    import yaffe
    from yaffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    text_format.Merge(open(os.path.join(FIX, "caffe_examples", "mnist", "lenet_train_test.prototxt")).read(), net)
    assert [l.type for l in net.layer][:3] == ["Data", "Data", "Convolution"]
    assert net.layer[0].include[0].phase == caffe_pb2.TRAIN
    conv = net.layer[2].convolution_param
    assert conv.num_output == 20 and list(conv.stride) == [1] and conv.group == 1 and not conv.HasField("group")
    assert caffe_pb2.PoolingParameter.MAX == 0 and caffe_pb2.Phase.Name(caffe_pb2.TEST) == "TEST"
    conv.num_output = 12  # the edits, as a script makes them: a deploy net with an Input layer
    deploy = caffe_pb2.NetParameter(name="edited")
    deploy.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=[2, 1, 28, 28])
    deploy.layer.extend(layer for layer in net.layer if layer.type not in ("Data", "Accuracy", "SoftmaxWithLoss"))
    (tmp_path / "edited.prototxt").write_text(str(deploy))
    built = yaffe.Net(str(tmp_path / "edited.prototxt"), yaffe.TEST)
    assert built.blobs["conv1"].data.shape == (2, 12, 24, 24) and list(built.outputs) == ["ip2"]
    monkeypatch.setitem(sys.modules, "caffe", yaffe)  # (import caffe being yaffe)
    monkeypatch.setitem(sys.modules, "caffe.proto", yaffe.proto)
    monkeypatch.setitem(sys.modules, "caffe.proto.caffe_pb2", caffe_pb2)
    sys.path.insert(0, os.path.join(FIX, "caffe_examples", "tools"))
    try:
        import summarize
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(sys, "argv", ["summarize.py", os.path.join(FIX, "caffe_examples", "cifar10",
                                                                   "cifar10_quick_train_test.prototxt")])
    capsys.readouterr()
    summarize.main()
    expected = open(os.path.join(FIX, "caffe_examples", "tools", "summarize_cifar10_quick.txt")).read()
    assert capsys.readouterr().out == expected


def test_caffe_draw_makes_caffes_graph_of_a_prototxt_and_of_a_netspec():
    """caffe.draw (Caffe's draw.py on yaffe's caffe_pb2): the graph python/draw_net.py draws, as DOT text (the
    image itself is Graphviz's): a node per layer of the phase with Caffe's labels and colours, a node per blob,
    edges bottom -> layer -> top; from a prototxt read with text_format and from a NetSpec's to_proto()."""
    pytest.importorskip("pydot")
    from google.protobuf import text_format
    import yaffe as caffe
    import yaffe.draw
    from yaffe import layers as L, params as P
    net = caffe.proto.caffe_pb2.NetParameter()
    text_format.Merge(open(os.path.join(FIX, "caffe_examples", "mnist", "lenet_train_test.prototxt")).read(), net)
    dot = yaffe.draw.get_pydot_graph(net, "LR", phase=caffe.TEST, display_lrm=True).to_string()
    assert "rankdir=LR" in dot and "(Accuracy)" in dot  # the TEST phase's layers
    assert "(Accuracy)" not in yaffe.draw.get_pydot_graph(net, "LR", phase=caffe.TRAIN).to_string()
    assert '"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 1\\npad: 0\\nlr mult: 1.0, 2.0"' in dot
    assert '"relu1\\n(ReLU)" [shape=record, fillcolor="#90EE90"' in dot  # in place: a neuron layer's colour
    edges = re.findall(r'^(".*?"|\S+) -> (".*?"|\S+) ', dot, re.M)
    assert ("conv1", '"pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"') in edges
    assert ('"pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"', "pool1") in edges
    assert '"pool1 (Pooling MAX) kernel size: 2 stride: 2 pad: 0"' in yaffe.draw.get_pydot_graph(net, "TB").to_string()
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, pad=1)
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.AVE)
    dot = yaffe.draw.get_pydot_graph(n.to_proto(), "LR").to_string()
    assert '"conv\\n(Convolution)\\nkernel size: 3\\nstride: 1\\npad: 1"' in dot and "(Pooling AVE)" in dot


BREWING_LOGREG = '''
import os, sys
import numpy as np
import h5py
import caffe
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2
import caffe.draw

rng = np.random.default_rng(0)  # (the notebook's sklearn make_classification: 4 features, 2 classes)
X = rng.normal(size=(2000, 4)).astype(np.float32)
y = (X[:, 0] - 0.7 * X[:, 1] + 0.3 * rng.normal(size=2000) > 0).astype(np.float32)
X, Xt, y, yt = X[:1500], X[1500:], y[:1500], y[1500:]
dirname = os.path.abspath('./examples/hdf5_classification/data')
os.makedirs(dirname)
train_filename = os.path.join(dirname, 'train.h5')
test_filename = os.path.join(dirname, 'test.h5')
with h5py.File(train_filename, 'w') as f:
    f['data'] = X
    f['label'] = y.astype(np.float32)
with open(os.path.join(dirname, 'train.txt'), 'w') as f:
    f.write(train_filename + '\\n')
    f.write(train_filename + '\\n')
comp_kwargs = {'compression': 'gzip', 'compression_opts': 1}
with h5py.File(test_filename, 'w') as f:
    f.create_dataset('data', data=Xt, **comp_kwargs)
    f.create_dataset('label', data=yt.astype(np.float32), **comp_kwargs)
with open(os.path.join(dirname, 'test.txt'), 'w') as f:
    f.write(test_filename + '\\n')

def logreg(hdf5, batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.HDF5Data(batch_size=batch_size, source=hdf5, ntop=2)
    n.ip1 = L.InnerProduct(n.data, num_output=2, weight_filler=dict(type='xavier'))
    n.accuracy = L.Accuracy(n.ip1, n.label)
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    return n.to_proto()

train_net_path = 'examples/hdf5_classification/logreg_auto_train.prototxt'
with open(train_net_path, 'w') as f:
    f.write(str(logreg('examples/hdf5_classification/data/train.txt', 10)))
test_net_path = 'examples/hdf5_classification/logreg_auto_test.prototxt'
with open(test_net_path, 'w') as f:
    f.write(str(logreg('examples/hdf5_classification/data/test.txt', 10)))

def solver(train_net_path, test_net_path):
    s = caffe_pb2.SolverParameter()
    s.train_net = train_net_path
    s.test_net.append(test_net_path)
    s.test_interval = 500
    s.test_iter.append(50)
    s.max_iter = 1000
    s.base_lr = 0.01
    s.lr_policy = 'step'
    s.gamma = 0.1
    s.stepsize = 500
    s.momentum = 0.9
    s.weight_decay = 5e-4
    s.display = 500
    s.snapshot = 1000
    s.snapshot_prefix = 'examples/hdf5_classification/data/train'
    s.solver_mode = caffe_pb2.SolverParameter.CPU
    return s

solver_path = 'examples/hdf5_classification/logreg_solver.prototxt'
with open(solver_path, 'w') as f:
    f.write(str(solver(train_net_path, test_net_path)))

caffe.set_mode_cpu()
solver = caffe.get_solver(solver_path)
solver.solve()
accuracy = 0
batch_size = solver.test_nets[0].blobs['data'].num
test_iters = int(len(Xt) / batch_size)
for i in range(test_iters):
    solver.test_nets[0].forward()
    accuracy += solver.test_nets[0].blobs['accuracy'].data
accuracy /= test_iters
print("Accuracy: {:.3f}".format(accuracy))
net = caffe_pb2.NetParameter()
from google.protobuf import text_format
text_format.Merge(open(train_net_path).read(), net)
caffe.draw.draw_net_to_file(net, 'logreg.dot', 'LR')
import yaffe
print("modules", caffe is yaffe, caffe.io is yaffe.io, caffe_pb2 is yaffe.proto.caffe_pb2, caffe.draw is yaffe.draw)
'''


def test_caffes_scripts_and_notebooks_run_as_written_with_import_caffe_being_yaffe(tmp_path):
    """`python -m yaffe.as_caffe SCRIPT`: Caffe's examples/brewing-logreg notebook (its cells as one script, with
    `import caffe`, `from caffe import layers as L`, `from caffe.proto import caffe_pb2`, `import caffe.draw`
    unchanged; its data made with numpy, its 10,000 iterations cut to 1,000) trains its HDF5 logistic regression
    through caffe.get_solver, and tools/extra/summarize.py prints Caffe's table; caffe.draw without Graphviz's dot
    is a one-line error naming the file and the fix, and leaves no empty image behind."""
    pytest.importorskip("h5py")
    pytest.importorskip("google.protobuf")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def as_caffe(*args, **kw):
        return subprocess.run([sys.executable, "-m", "yaffe.as_caffe", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=dict(env, **kw))

    (tmp_path / "brewing_logreg.py").write_text(BREWING_LOGREG)
    r = as_caffe("brewing_logreg.py")
    assert r.returncode == 0, r.stderr
    accuracy = float(re.search(r"^Accuracy: ([0-9.]+)$", r.stdout, re.M).group(1))
    assert accuracy > 0.85, r.stdout  # (a linear boundary under 0.3 noise)
    assert "modules True True True True" in r.stdout
    assert (tmp_path / "examples" / "hdf5_classification" / "data" / "train_iter_1000.caffemodel").is_file()
    dot = (tmp_path / "logreg.dot").read_text()
    assert dot.startswith("digraph") and '"ip1\\n(InnerProduct)"' in dot
    r = as_caffe(os.path.join(FIX, "caffe_examples", "tools", "summarize.py"),
                 os.path.join(FIX, "caffe_examples", "cifar10", "cifar10_quick_train_test.prototxt"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == open(os.path.join(FIX, "caffe_examples", "tools", "summarize_cifar10_quick.txt")).read()
    (tmp_path / "draw.py").write_text("import caffe, caffe.draw\nfrom caffe.proto import caffe_pb2\n"
                                      "from google.protobuf import text_format\nnet = caffe_pb2.NetParameter()\n"
                                      "text_format.Merge(open('examples/hdf5_classification/logreg_auto_train"
                                      ".prototxt').read(), net)\ncaffe.draw.draw_net_to_file(net, 'net.png')\n")
    r = as_caffe("draw.py", PATH=str(tmp_path / "nothing"))  # no `dot` on PATH
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "net.png: error: drawing a .png image needs Graphviz's `dot`" in r.stderr and "apt-get install graphviz" \
        in r.stderr and not (tmp_path / "net.png").exists()
    r = as_caffe("no_such_script.py")
    assert r.returncode == 2 and "no_such_script.py: error: no such script" in r.stderr


def test_install_as_caffe_refuses_when_another_caffe_is_already_imported(monkeypatch):
    """Two caffes in one process would mix their classes: install_as_caffe after a real pycaffe is an error that
    says to call it first; after yaffe itself stands as caffe (a Python layer's import), it is a no-op."""
    import types
    import yaffe
    pycaffe = types.ModuleType("caffe")
    pycaffe.__file__ = "/usr/lib/python3/dist-packages/caffe/__init__.py"
    monkeypatch.setitem(sys.modules, "caffe", pycaffe)
    with pytest.raises(ImportError, match=r"already imported \(/usr/lib/python3/dist-packages/caffe/__init__.py\)"):
        yaffe.install_as_caffe()
    monkeypatch.setitem(sys.modules, "caffe", yaffe)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in ("caffe.io", "caffe.proto", "caffe.proto.caffe_pb2", "caffe.net_spec"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = set(sys.modules)
    try:
        yaffe.install_as_caffe()
        import caffe.io
        from caffe.proto import caffe_pb2
        assert caffe.io is yaffe.io and caffe_pb2 is yaffe.proto.caffe_pb2 and sys.modules["caffe"] is yaffe
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("caffe."):
                del sys.modules[name]


def test_the_siamese_tutorial_runs_from_the_caffe_root(tmp_path):
    """examples/siamese as its readme runs it, from the Caffe root: create_mnist_siamese.sh's LevelDBs of random
    pairs (`data convert --pairs --backend leveldb`, convert_mnist_siamese_data's records: 2 channels, the two
    images, label 1 for the same digit), `caffe train` on Caffe's solver (shortened), and the notebook's features
    of the test images from the deploy net and the snapshot (2 values each). An existing database is refused."""
    pytest.importorskip("plyvel")
    from layers.sources import read_any
    shutil.copytree(os.path.join(FIX, "caffe_examples", "siamese"), tmp_path / "examples" / "siamese")
    with np.load(os.path.join(FIX, "caffe_lenet", "mnist_subset.npz")) as z:
        images = {part: z[f"{part}_images"][:n] for part, n in (("train", 640), ("test", 200))}
        labels = {part: z[f"{part}_labels"][:len(images[part])] for part in images}
    for part in ("train", "test"):
        np.savez(tmp_path / f"{part}.npz", data=images[part][:, None].astype(np.float32),
                 label=labels[part].astype(np.float32))
        db = f"examples/siamese/mnist_siamese_{part}_leveldb"
        r = yaffe("data", "convert", f"{part}.npz", db, "--pairs", "--backend", "leveldb", cwd=tmp_path)
        assert r.returncode == 0 and f"Wrote {len(images[part])} pairs to {db} (LevelDB)" in r.stdout, r.stderr
    assert os.path.isfile(tmp_path / db / "CURRENT")  # a LevelDB
    pairs, same = read_any(str(tmp_path / "examples" / "siamese" / "mnist_siamese_train_leveldb"))
    assert pairs.shape == (640, 2, 28, 28)
    label_of = {image.tobytes(): label for image, label in zip(images["train"], labels["train"])}
    halves = [[label_of[pair[c].astype(np.uint8).tobytes()] for pair in pairs] for c in (0, 1)]
    np.testing.assert_array_equal(same, np.equal(*halves))  # each half an image of the set; 1 where digits match
    assert 0.03 < same.mean() < 0.2 and len({p.tobytes() for p in pairs}) > 600  # ~1 in 10, drawn at random
    r = yaffe("data", "convert", "test.npz", db, "--pairs", "--backend", "leveldb", cwd=tmp_path)
    assert r.returncode == 2 and f"{db}: error: exists already; remove it first (rm -r {db}" in r.stderr
    # ./examples/siamese/train_mnist_siamese.sh (50,000 iterations cut to 40)
    r = yaffe("train", "--solver=examples/siamese/mnist_siamese_solver.prototxt", "--set", "max_iter=40", "--set",
              "test_interval=20", "--set", "test_iter=2", "--set", "snapshot=40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tests = [float(v) for v in re.findall(r"Test net output #0: loss = ([0-9.e-]+)", r.stdout)]
    assert len(tests) == 3 and tests[-1] < tests[0], r.stdout
    import yaffe as caffe  # the notebook: features of the test images, scaled by hand
    net = caffe.Net(str(tmp_path / "examples" / "siamese" / "mnist_siamese.prototxt"),
                    str(tmp_path / "examples" / "siamese" / "mnist_siamese_iter_40.caffemodel"), caffe.TEST)
    feat = net.forward_all(data=images["test"].reshape(-1, 1, 28, 28) * 0.00390625)["feat"]
    assert feat.shape == (200, 2) and np.isfinite(feat).all() and feat.std(0).min() > 0


def test_cifar10s_binary_batches_convert_as_convert_cifar_data_and_feed_a_data_layer(tmp_path):
    """examples/cifar10/create_cifar10.sh with the tools' names changed: `data convert data_batch_1.bin ... OUT`
    (or convert_cifar_data's FOLDER OUT_FOLDER lmdb) writes convert_cifar_data's LMDB (keys 00000, 00001, ...
    across the files; each record a Datum of 3 x 32 x 32 with the file's 3,072 pixel bytes as they are, R, G, B
    planes, and its label): with the five real-sized batches the records and compute_image_mean's file were byte
    for byte Caffe's (checked by hand with Debian's convert_cifar_data, create_cifar10.sh run with the names
    changed). A Data layer reads a batch file directly too, in memory and streamed alike."""
    from layers.sources import db_values, datum_bytes
    from netspec.caffemodel import fields
    rng = np.random.default_rng(0)
    files = []
    os.makedirs(tmp_path / "data" / "cifar10")
    for name, n in (("data_batch_1.bin", 30), ("data_batch_2.bin", 20), ("test_batch.bin", 10)):
        records = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], 1).astype(np.uint8)
        records.tofile(tmp_path / "data" / "cifar10" / name)
        files.append(records)
    r = yaffe("data", "convert", "data/cifar10/data_batch_1.bin", "data/cifar10/data_batch_2.bin", "train_lmdb",
              cwd=tmp_path)
    assert r.returncode == 0 and "Wrote 50 examples to train_lmdb (LMDB)" in r.stdout, r.stderr
    import lmdb
    env = lmdb.open(str(tmp_path / "train_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    both = np.concatenate(files[:2])
    assert [k for k, _ in records] == [f"{i:05d}".encode() for i in range(50)]
    for (_, value), row in zip(records, both):
        assert value == datum_bytes(row[1:].reshape(3, 32, 32), int(row[0]))
        got = {num: v for num, _, v in fields(value)}
        assert (got[1], got[2], got[3], got[4], got.get(5, 0)) == (3, 32, 32, row[1:].tobytes(), row[0])
    assert len(list(db_values(str(tmp_path / "train_lmdb")))) == 50
    # compute_image_mean -backend=lmdb ... as create_cifar10.sh spells it
    r = yaffe("data", "mean", "-backend=lmdb", "train_lmdb", "mean.binaryproto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from netspec.caffemodel import read_blob
    mean = read_blob((tmp_path / "mean.binaryproto").read_bytes()).reshape(3, 32, 32)
    np.testing.assert_allclose(mean, both[:, 1:].reshape(-1, 3, 32, 32).mean(0), rtol=1e-5)
    # convert_cifar_data INPUT_FOLDER OUTPUT_FOLDER DB_TYPE, create_cifar10.sh's line with the name changed
    for i in (3, 4, 5):
        files[0][:4].tofile(tmp_path / "data" / "cifar10" / f"data_batch_{i}.bin")
    os.makedirs(tmp_path / "examples" / "cifar10")
    r = yaffe("data", "convert", "data/cifar10", "examples/cifar10", "lmdb", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list(db_values(str(tmp_path / "examples" / "cifar10" / "cifar10_train_lmdb")))) == 30 + 20 + 12
    assert list(db_values(str(tmp_path / "examples" / "cifar10" / "cifar10_test_lmdb"))) == [
        datum_bytes(row[1:].reshape(3, 32, 32), int(row[0])) for row in files[2]]
    r = yaffe("data", "convert", "data/cifar10", "examples/nothere", "lmdb", cwd=tmp_path)  # (was an internal error)
    assert r.returncode == 2 and "examples/nothere: error: no such folder" in r.stderr and "mkdir -p" in r.stderr
    r = yaffe("data", "convert", "data/cifar10/data_batch_1.bin", "data/cifar10/nothere.bin", "x_lmdb", cwd=tmp_path)
    assert r.returncode == 2 and "nothere.bin" in r.stderr and "Traceback" not in r.stderr
    batches = {}
    for mode in ("never", "always"):
        (tmp_path / f"{mode}.yaml").write_text(
            "layer:\n  - {name: d, type: Data, top: [data, label], data_param: {source: data/cifar10/test_batch.bin, "
            f"batch_size: 4, stream: {mode}}}}}\n  - {{name: s, type: Silence, bottom: [data, label]}}\n")
        from netspec.loader import load
        net = Net(load(str(tmp_path / f"{mode}.yaml")), "TRAIN", str(tmp_path / f"{mode}.yaml"), seed=1)
        out = []
        for _ in range(3):
            net.forward()
            out.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
        batches[mode] = out
        assert (net.layers[0].reader is not None) == (mode == "always")
        if mode == "always":
            net.layers[0]._stop_prefetch()
    for (d0, l0), (d1, l1) in zip(batches["never"], batches["always"]):
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(l0, l1)
    test = files[2]
    np.testing.assert_array_equal(batches["never"][0][0], test[:4, 1:].reshape(4, 3, 32, 32))
    np.testing.assert_array_equal(batches["never"][1][1], test[4:8, 0])


def test_data_convert_encoded_stores_the_image_files_as_convert_imageset_encoded_does(tmp_path):
    """`data convert LIST DB --encoded` (convert_imageset -encoded, its flags and ROOT LIST DB accepted too): each
    record the image's file as it is (data), its label and `encoded: true`, no shape (byte for byte Caffe's LMDB:
    checked by hand with Debian's convert_imageset on JPEGs and a PNG); resized, the image encoded again (Pillow's
    encoder; Caffe's OpenCV JPEGs decoded to the same pixels in that check). The Data layer reads either as the
    plain database."""
    pytest.importorskip("PIL")
    from PIL import Image
    from layers.sources import read_any
    from netspec.caffemodel import fields
    yy, xx = np.mgrid[0:40, 0:48]
    names = []
    for i in range(4):
        image = np.stack([(xx * (i + 1) + yy) % 256, (yy * 3 + i * 40) % 256, (xx + 2 * yy) % 256], -1)
        name = f"im{i}.png" if i == 3 else f"im{i}.jpg"
        Image.fromarray(image.astype(np.uint8)).save(tmp_path / name)
        names.append(name)
    (tmp_path / "list.txt").write_text("".join(f"{n} {i % 2}\n" for i, n in enumerate(names)))
    for args, db in (([], "plain_lmdb"), (["--encoded"], "enc_lmdb"), (["--resize", "20x24"], "small_lmdb"),
                     (["--resize", "20x24", "--encoded", "--encode-type", "png"], "small_enc_lmdb")):
        r = yaffe("data", "convert", "list.txt", db, *args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    import lmdb
    env = lmdb.open(str(tmp_path / "enc_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    assert [k for k, _ in records] == [f"{i:08d}_{n}".encode() for i, n in enumerate(names)]
    for i, ((_, value), name) in enumerate(zip(records, names)):
        got = [(num, v) for num, _, v in fields(value)]
        assert got == [(4, (tmp_path / name).read_bytes()), (5, i % 2), (7, 1)]
    for plain, enc in (("plain_lmdb", "enc_lmdb"), ("small_lmdb", "small_enc_lmdb")):
        (a, la), (b, lb) = read_any(str(tmp_path / plain)), read_any(str(tmp_path / enc))
        np.testing.assert_array_equal(a, b)  # (the same files decoded; resized: PNG, lossless)
        np.testing.assert_array_equal(la, lb)
    assert read_any(str(tmp_path / "small_enc_lmdb"))[0].shape == (4, 3, 20, 24)
    r = yaffe("data", "convert", "plain_lmdb", "x_lmdb", "--encoded", cwd=tmp_path)
    assert r.returncode == 2 and "--encoded stores image files as they are" in r.stderr
    # convert_imageset's own spelling (create_imagenet.sh's): flags, then ROOTFOLDER LISTFILE DB_NAME
    r = yaffe("data", "convert", "--resize_height=20", "--resize_width=24", "-shuffle=false", "-encoded",
              "-encode_type", "png", "--backend=lmdb", "./", "list.txt", "caffe_lmdb", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (a, _), (b, _) = read_any(str(tmp_path / "small_enc_lmdb")), read_any(str(tmp_path / "caffe_lmdb"))
    np.testing.assert_array_equal(a, b)


def test_extract_features_runs_as_caffes_tool_is_called(tmp_path):
    """examples/feature_extraction's command with the command name changed: `extract_features WEIGHTS NET BLOBS DBS
    NUM_BATCHES DB_TYPE [GPU]`: the TEST net's own data layer (an ImageData list, as imagenet_val.prototxt) for
    NUM_BATCHES batches, each blob to a new database of Datums keyed 0000000000, ... (CaffeNet on Caffe's example
    images: the same keys and records as Debian's extract_features, features within 1e-6 of their scale; checked
    by hand); here against pycaffe's forward of the same batches, to float32 rounding."""
    pytest.importorskip("PIL")
    pytest.importorskip("plyvel")
    from PIL import Image
    from layers.sources import db_values, parse_datum
    import yaffe as caffe
    for i in range(5):
        Image.fromarray(((np.arange(10 * 12 * 3) * (i + 1)) % 256).reshape(10, 12, 3).astype(np.uint8)).save(
            tmp_path / f"im{i}.png")
    (tmp_path / "file_list.txt").write_text("".join(f"im{i % 5}.png {i % 2}\n" for i in range(6)))
    (tmp_path / "val.prototxt").write_text(
        'name: "f"\nlayer { name: "data" type: "ImageData" top: "data" top: "label" transform_param { scale: 0.01 } '
        'image_data_param { source: "file_list.txt" batch_size: 2 } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 3 '
        'weight_filler { type: "gaussian" std: 0.1 } } }\nlayer { name: "relu" type: "ReLU" bottom: "fc" top: "r" }\n')
    net = caffe.Net(str(tmp_path / "val.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    want = {"fc": [], "r": []}
    for _ in range(3):
        net.forward()
        for b in want:
            want[b].append(net.blobs[b].data.copy())
    r = yaffe("extract_features", "w.caffemodel", "val.prototxt", "fc,r", "fc_db,r_db", "3", "leveldb", "GPU", "0",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Extracted features of 6 query images for feature blob fc" in r.stdout and "GPU ignored" in r.stderr
    for b in ("fc", "r"):
        got = np.stack([parse_datum(v)[0].reshape(-1) for v in db_values(str(tmp_path / f"{b}_db"), "leveldb")])
        want_b = np.concatenate(want[b])  # (pycaffe's forward-only pass sums the tiny product in its own order)
        np.testing.assert_allclose(got, want_b, rtol=1e-5, atol=1e-6 * np.abs(want_b).max())
    r = yaffe("extract-features", "w.caffemodel", "val.prototxt", "nothere", "x_db", "1", "lmdb", cwd=tmp_path)
    assert r.returncode == 2 and "the TEST net has no blob 'nothere'" in r.stderr and "Traceback" not in r.stderr
    r = yaffe("extract-features", "w.caffemodel", "val.prototxt", "fc", "fc_db", "1", "lmdb", cwd=tmp_path)
    assert r.returncode == 2 and "fc_db: error: it exists" in r.stderr


def test_convert_mnist_datas_line_with_the_name_changed(tmp_path):
    """create_mnist.sh's `convert_mnist_data IMAGES LABELS DB --backend=lmdb` as `data convert IMAGES LABELS DB
    --backend=lmdb`: the labels file named wherever it is (Debian's convert_mnist_data on MNIST's t10k files: the
    same LMDB byte for byte, checked by hand); records as convert_mnist_data writes them."""
    import struct
    from layers.sources import datum_bytes, db_values
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 6, 5)).astype(np.uint8), rng.integers(0, 10, 12).astype(np.uint8)
    (tmp_path / "imgs-idx3-ubyte").write_bytes(struct.pack(">iiii", 0x0803, 12, 6, 5) + images.tobytes())
    os.makedirs(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "lab-idx1-ubyte").write_bytes(struct.pack(">ii", 0x0801, 12) + labels.tobytes())
    r = yaffe("data", "convert", "imgs-idx3-ubyte", "elsewhere/lab-idx1-ubyte", "mnist_lmdb", "--backend=lmdb",
              cwd=tmp_path)
    assert r.returncode == 0 and "Wrote 12 examples" in r.stdout, r.stderr
    want = [datum_bytes(a[None], int(b)) for a, b in zip(images, labels)]
    assert list(db_values(str(tmp_path / "mnist_lmdb"))) == want
