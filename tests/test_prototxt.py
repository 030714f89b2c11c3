"""Caffe's text format: the parser, Caffe's upgrades, and real Caffe files run unchanged."""
import json
import os
import shutil

import numpy as np
import pytest

from netspec.caffemodel import read_caffemodel
from netspec.errors import SpecError
from netspec.prototxt import loads
from netspec.spec import validate
from solvers.trainer import Trainer

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "caffe_lenet")


def test_text_format_features():
    doc, notes = loads('''
name: "net"   # a comment
layer {
  name: "conv1"  type: "Convolution"
  bottom: "data" top: "conv1"
  param { lr_mult: 1 } param: { lr_mult: 2 }
  convolution_param < num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } engine: CAFFE >
  include { phase: TRAIN }
}
layer { name: 'x\\'y\\n' "z" type: "ReLU" bottom: ["a", "b"] top: "a" loss_weight: 1e-3 propagate_down: false }
''', "n.prototxt")
    first, second = doc["layer"]
    assert first["param"] == [{"lr_mult": 1}, {"lr_mult": 2}]
    assert first["convolution_param"] == {"num_output": 20, "kernel_size": 5, "weight_filler": {"type": "xavier"}}
    assert first["include"] == {"phase": "TRAIN"}
    assert second["name"] == "x'y\nz" and second["bottom"] == ["a", "b"] and second["loss_weight"] == 0.001
    assert second["propagate_down"] is False
    assert doc["layer"].at(1) == ("n.prototxt", 10, 7)
    assert first["convolution_param"].at("num_output") == ("n.prototxt", 7, 35)
    assert [str(n) for n in notes] == ["n.prototxt:7:86: info: engine is ignored: yaffe runs on the CPU"]


def test_v1_layers_are_upgraded_with_a_warning():
    doc, notes = loads('''
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
         weight_decay: 0 inner_product_param { num_output: 10 } }
layers { name: "d" type: DATA top: "data" data_param { source: "x" batch_size: 4 scale: 0.5 mirror: true } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" }
''', "old.prototxt")
    ip, data, loss = doc["layer"]
    assert ip["type"] == "InnerProduct" and ip["param"] == [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]
    assert data["transform_param"] == {"scale": 0.5, "mirror": True} and "scale" not in data["data_param"]
    assert loss["type"] == "SoftmaxWithLoss"
    assert "deprecated V1 'layers' format" in str(notes[0]) and notes[0].severity == "warning"


def test_solver_type_enum_is_upgraded():
    doc, notes = loads('net: "n.prototxt"\nsolver_type: ADAM\nbase_lr: 0.01\nsolver_mode: GPU\n', "s.prototxt")
    assert doc["type"] == "Adam" and "solver_mode" not in doc
    assert {n.severity for n in notes} == {"warning", "info"}


@pytest.mark.parametrize("text, where, what", [
    ('layer { name: "a"\n', "1:18", "missing '}' to close the message opened at line 1"),
    ('layer { name: "a" }}\n', "1:20", "expected a field name, found '}'"),
    ('name: @\n', "1:7", "unexpected character '@'"),
])
def test_syntax_errors_have_line_and_column(text, where, what):
    with pytest.raises(SpecError) as e:
        loads(text, "bad.prototxt")
    assert str(e.value) == f"bad.prototxt:{where}: error: malformed prototxt: {what}"


@pytest.fixture
def caffe_dir(tmp_path, monkeypatch):
    """Caffe's LeNet prototxts as shipped, with the HDF5 sources they name written from the MNIST subset; the
    working directory is theirs, as Caffe's paths (snapshot_prefix) start there."""
    monkeypatch.chdir(tmp_path)
    import h5py
    for name in ("lenet_sgd_solver.prototxt", "lenet_sgd_train_test.prototxt"):
        shutil.copy(os.path.join(FIX, name), tmp_path)
    with np.load(os.path.join(FIX, "mnist_subset.npz")) as z:
        for part in ("train", "test"):
            with h5py.File(tmp_path / f"{part}.h5", "w") as f:
                f["data"] = z[f"{part}_images"][:, None].astype(np.float32) / 256
                f["label"] = z[f"{part}_labels"].astype(np.float32)
            (tmp_path / f"{part}.h5.txt").write_text(f"{part}.h5\n")
    return tmp_path


def test_caffe_prototxt_validates(caffe_dir, monkeypatch):
    found = validate([str(caffe_dir / "lenet_sgd_solver.prototxt")])
    assert found == [], [str(f) for f in found]  # (its solver_mode: CPU is yaffe's own: no note)
    # run from elsewhere, Caffe's relative paths (the net, the HDF5 lists) are found beside the files, and said so
    monkeypatch.chdir(caffe_dir.parent)
    found = validate([str(caffe_dir / "lenet_sgd_solver.prototxt")])
    assert {f.severity for f in found} == {"info"}, [str(f) for f in found]
    assert sum("is not in the working directory" in f.message for f in found) == 3


def test_caffe_prototxt_trains_to_caffes_losses(caffe_dir):
    t = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None)
    final = t.train(weights_path=os.path.join(FIX, "lenet_sgd_init.caffemodel"))
    ref = np.load(os.path.join(FIX, "caffe_losses.npz"))
    with open(t.metrics_path) as f:
        ours = {r["iter"]: r["loss"] for r in map(json.loads, f) if r["phase"] == "train"}
    diff = np.abs(np.array([ours[i] for i in range(201)]) - ref["loss"])
    assert diff[:20].max() <= 1e-4 and diff[20:200].max() <= 0.01 and diff[20:200].mean() <= 0.002
    assert abs(final["accuracy"] - float(ref["test_accuracy"][0])) <= 0.005


def test_convert_writes_yaml_that_loads_as_the_same_net(caffe_dir):
    import subprocess
    import sys
    from netspec.loader import load
    from netspec.net import Net
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "run.py"), "convert",
                        str(caffe_dir / "lenet_sgd_solver.prototxt")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    solver_yaml = load(str(caffe_dir / "lenet_sgd_solver.yaml"))
    assert solver_yaml["yaffe"] == 1 and solver_yaml["net"] == "lenet_sgd_train_test.yaml"
    for phase in ("TRAIN", "TEST"):
        a = Net(load(str(caffe_dir / "lenet_sgd_train_test.prototxt")), phase, str(caffe_dir / "a.prototxt"), seed=1)
        b = Net(load(str(caffe_dir / "lenet_sgd_train_test.yaml")), phase, str(caffe_dir / "b.yaml"), seed=1)
        assert [(d.name, d.type, d.bottoms, d.tops, d.params, d.loss_weights) for d in a.defs] == \
               [(d.name, d.type, d.bottoms, d.tops, d.params, d.loss_weights) for d in b.defs]
        assert a.shapes == b.shapes
        for (k, x), (k2, y) in zip(a.weights().items(), b.weights().items()):
            assert k == k2 and np.array_equal(x, y)
    assert validate([str(caffe_dir / "lenet_sgd_solver.yaml")]) == []


def test_resume_from_caffes_solverstate_continues_with_its_momentum(caffe_dir):
    """Caffe's iteration-200 state, resumed for 5 iterations; the first update uses Caffe's history: a run
    that starts at 200 from the same weights without the history takes a different first step."""
    for name in ("lenet_sgd_iter_200.caffemodel", "lenet_sgd_iter_200.solverstate"):
        shutil.copy(os.path.join(FIX, name), caffe_dir)
    lines = []
    t = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lines.append, overrides={"max_iter": 202})
    t.train(snapshot_path=str(caffe_dir / "lenet_sgd_iter_200.solverstate"))
    assert t.iter == 202 and any("Resumed from iteration 200 of Caffe's" in l for l in lines)
    with open(t.metrics_path) as f:
        resumed = {r["iter"]: r["loss"] for r in map(json.loads, f) if r["phase"] == "train"}
    ref = np.load(os.path.join(FIX, "caffe_losses.npz"))
    assert resumed[200] == pytest.approx(float(ref["loss"][200]), abs=1e-4)   # Caffe's weights, images 0..63
    # the second step depends on Caffe's momentum: without it the loss at 201 differs
    fresh = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None, force=True,
                    overrides={"max_iter": 2, "snapshot_after_train": False, "test_iter": [1]})
    fresh.train(weights_path=str(caffe_dir / "lenet_sgd_iter_200.caffemodel"))
    with open(fresh.metrics_path) as f:
        plain = {r["iter"]: r["loss"] for r in map(json.loads, f) if r["phase"] == "train"}
    assert abs(plain[1] - resumed[201]) > 1e-4


def test_binaryproto_snapshots_are_caffe_files_yaffe_reads_back(caffe_dir):
    from netspec.caffemodel import read_caffemodel, read_solverstate
    t = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None,
                overrides={"max_iter": 3, "snapshot_format": "BINARYPROTO", "test_iter": [1]})
    t.train()
    model = read_caffemodel(str(caffe_dir / "lenet_sgd_iter_3.caffemodel"))
    for key, value in t.net.weights().items():
        np.testing.assert_array_equal(model[key], value)
    state = read_solverstate(str(caffe_dir / "lenet_sgd_iter_3.solverstate"))
    assert state["iter"] == 3 and state["learned_net"] == "lenet_sgd_iter_3.caffemodel"
    for mine, theirs in zip(t.solver.history, state["history"]):
        np.testing.assert_array_equal(mine, theirs)
    r = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None, overrides={"max_iter": 4})
    r.train(snapshot_path=str(caffe_dir / "lenet_sgd_iter_3.solverstate"))
    assert r.iter == 4


def test_caffemodel_round_trip_gives_byte_equal_blobs(tmp_path):
    from netspec.caffemodel import caffemodel_bytes, read_caffemodel
    src = read_caffemodel(os.path.join(FIX, "lenet_sgd_iter_200.caffemodel"))
    layers = {}
    for key, value in src.items():
        name, i = key.split("/")
        layers.setdefault(name, []).append(value)
    (tmp_path / "out.caffemodel").write_bytes(caffemodel_bytes("lenet", [(n, "X", b) for n, b in layers.items()]))
    back = read_caffemodel(str(tmp_path / "out.caffemodel"))
    assert back.keys() == src.keys()
    for key in src:
        assert back[key].shape == src[key].shape and back[key].tobytes() == src[key].tobytes()


def test_binaryproto_mean_file_is_accepted(tmp_path):
    from netspec.caffemodel import blob_bytes
    from netspec.loader import loads as yaml_loads
    from netspec.net import Net
    mean = np.arange(2 * 3 * 3, dtype=np.float32).reshape(1, 2, 3, 3)
    (tmp_path / "mean.binaryproto").write_bytes(blob_bytes(mean))
    x = np.ones((2, 2, 3, 3), np.float32) * 10
    np.savez(tmp_path / "d.npz", data=x, label=np.zeros(2))
    text = ("layer:\n  - {name: d, type: Data, top: [data, label], data_param: {source: d.npz, batch_size: 2}, "
            "transform_param: {mean_file: mean.binaryproto}}\n")
    net = Net(yaml_loads(text, str(tmp_path / "n.yaml")), "TEST", str(tmp_path / "n.yaml"), seed=0)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, x - mean)


def test_hdf5_snapshot_format_writes_caffes_layout(caffe_dir):
    import h5py
    t = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None,
                overrides={"max_iter": 2, "snapshot_format": "HDF5", "test_iter": [1]})
    t.train()
    with h5py.File(caffe_dir / "lenet_sgd_iter_2.caffemodel.h5", "r") as f:
        np.testing.assert_array_equal(f["data/conv1/0"][()], t.net.layer_by_name("conv1").blobs[0].data)
    with h5py.File(caffe_dir / "lenet_sgd_iter_2.solverstate.h5", "r") as f:
        assert f["iter"][()] == 2 and len(f["history"]) == 8
    # resumed from it, and from the same state in Caffe's own layout (iter and current_step of shape (1,), the
    # learned_net path as bytes): run.py train --snapshot took only the binary .solverstate and yaffe's .npz
    t2 = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None, overrides={"max_iter": 4,
                 "snapshot_format": "HDF5", "test_iter": [1], "snapshot_prefix": "again"})
    t2.restore_caffe(str(caffe_dir / "lenet_sgd_iter_2.solverstate.h5"))
    assert t2.iter == 2
    conv1 = t.net.layer_by_name("conv1").blobs[0].data
    np.testing.assert_array_equal(t2.net.layer_by_name("conv1").blobs[0].data, conv1)
    with h5py.File(caffe_dir / "lenet_sgd_iter_2.solverstate.h5", "r") as f, \
            h5py.File(caffe_dir / "caffe_layout.solverstate.h5", "w") as g:
        g["iter"], g["current_step"] = np.array([2], np.int32), np.array([0], np.int32)
        g["learned_net"] = np.bytes_(str(caffe_dir / "lenet_sgd_iter_2.caffemodel.h5"))
        for k in f["history"]:
            g[f"history/{k}"] = f[f"history/{k}"][()]
    t3 = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None, overrides={"max_iter": 4,
                 "snapshot_format": "HDF5", "test_iter": [1], "snapshot_prefix": "again3"})
    t3.restore_caffe(str(caffe_dir / "caffe_layout.solverstate.h5"))
    assert t3.iter == 2 and all(np.array_equal(a, b) for a, b in zip(t3.solver.history, t2.solver.history))


def test_caffe_solver_fields_train_net_test_net_weights_and_states(caffe_dir):
    """Caffe's train_net/test_net, weights and test_state work as in Caffe."""
    text = (caffe_dir / "lenet_sgd_solver.prototxt").read_text()
    text = text.replace('net: "lenet_sgd_train_test.prototxt"', 'train_net: "lenet_sgd_train_test.prototxt"\n'
                        'test_net: "lenet_sgd_train_test.prototxt"\nweights: "lenet_sgd_init.caffemodel"\n'
                        'test_state { stage: "x" }\ntrain_state { level: 0 }')
    text = text.replace("max_iter: 200", "max_iter: 2")
    (caffe_dir / "s2.prototxt").write_text(text)
    shutil.copy(os.path.join(FIX, "lenet_sgd_init.caffemodel"), caffe_dir)
    assert {f.severity for f in validate([str(caffe_dir / "s2.prototxt")])} <= {"info"}  # no error, no warning
    t = Trainer(str(caffe_dir / "s2.prototxt"), out=lambda *a: None)
    t.train()
    with open(t.metrics_path) as f:
        first = next(r for r in map(json.loads, f) if r["phase"] == "train")
    ref = np.load(os.path.join(FIX, "caffe_losses.npz"))
    assert first["loss"] == pytest.approx(float(ref["loss"][0]), abs=1e-4)   # started from the solver's weights


def test_net_given_inline_in_the_solver(caffe_dir):
    net = (caffe_dir / "lenet_sgd_train_test.prototxt").read_text()
    solver = (caffe_dir / "lenet_sgd_solver.prototxt").read_text().replace(
        'net: "lenet_sgd_train_test.prototxt"', "net_param {\n" + net + "\n}").replace("max_iter: 200", "max_iter: 2")
    (caffe_dir / "inline.prototxt").write_text(solver)
    assert {f.severity for f in validate([str(caffe_dir / "inline.prototxt")])} <= {"info"}  # no error, no warning
    t = Trainer(str(caffe_dir / "inline.prototxt"), out=lambda *a: None)
    t.train()
    assert t.iter == 2 and t.net.layer_by_name("conv1") is not None


def test_embedded_blobs_are_accepted_with_a_warning():
    doc, _ = loads('layer { name: "a" type: "ReLU" bottom: "x" top: "x" blobs { shape { dim: 1 } data: 0.5 } }\n'
                   'input: "x" input_dim: 1 input_dim: 2 input_dim: 1 input_dim: 1', "b.prototxt")
    from netspec.net import Net
    from netspec.schema import check, net_schema
    assert check(doc, net_schema(), "b.prototxt") == []
    net = Net(doc, "TEST", "b.prototxt", seed=0)
    assert any("weights embedded in the net (blobs) are ignored" in str(w) for w in net.warnings)


def test_a_prototxt_solver_writes_caffes_snapshot_files_by_default(caffe_dir):
    """Caffe's default snapshot_format is BINARYPROTO: its tutorial's next step tests the .caffemodel."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    solver = caffe_dir / "lenet_sgd_solver.prototxt"
    t = Trainer(str(solver), out=lambda *a: None, overrides={"max_iter": 4, "snapshot": 2, "test_iter": [1]})
    t.train()
    files = os.listdir(caffe_dir)
    assert {"lenet_sgd_iter_2.caffemodel", "lenet_sgd_iter_2.solverstate", "lenet_sgd_iter_4.caffemodel"} <= set(files)
    r = subprocess.run([sys.executable, os.path.join(root, "run.py"), "test", str(caffe_dir / "lenet_sgd_train_test.prototxt"),
                        "--weights", str(caffe_dir / "lenet_sgd_iter_4.caffemodel"), "--iterations", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "accuracy = " in r.stdout, r.stderr
    resumed = Trainer(str(solver), out=lambda *a: None, overrides={"max_iter": 6, "test_iter": [1]})
    resumed.train(snapshot_path=str(caffe_dir / "lenet_sgd_iter_4.solverstate"))
    assert resumed.iter == 6


def test_caffes_command_line_spellings_are_accepted():
    import run
    assert run.caffe_argv(["train", "-solver", "s.prototxt", "-weights", "w.caffemodel"]) == [
        "train", "s.prototxt", "--weights", "w.caffemodel"]
    assert run.caffe_argv(["train", "--solver=s.prototxt", "-snapshot", "x.solverstate", "-sigint_effect", "stop",
                           "-level", "2"]) == ["train", "s.prototxt", "--snapshot", "x.solverstate",
                                               "--sigint-effect", "stop", "--set", "train_state={level: 2}"]
    assert run.caffe_argv(["test", "-model", "m.prototxt", "-weights", "w", "-iterations", "100", "-stage", "a,b"]) \
        == ["test", "m.prototxt", "--weights", "w", "--iterations", "100", "--stage", "a,b"]
    assert run.caffe_argv(["time", "-model=m.prototxt", "-phase", "TEST", "-gpu", "0"]) == [
        "time", "m.prototxt", "--phase", "TEST"]
    assert run.caffe_argv(["train", "s.yaml", "--set", "base_lr=0.1", "--sigint-effect", "none"]) == [
        "train", "s.yaml", "--set", "base_lr=0.1", "--sigint-effect", "none"]  # yaffe's own spelling unchanged
    args = run.build_parser().parse_args(run.caffe_argv(["test", "-model", "m.prototxt", "-weights", "w"]))
    assert args.model == "m.prototxt" and args.weights == "w"


def test_v1_layers_inside_a_solvers_inline_net_are_upgraded(tmp_path):
    """Caffe's examples/mnist/lenet_consolidated_solver.prototxt keeps its net inline, in the V1 format."""
    from netspec.convert import convert
    (tmp_path / "s.prototxt").write_text('''base_lr: 0.01
max_iter: 2
net_param {
  name: "inline"
  layers { name: "d" type: DUMMY_DATA top: "data" top: "label"
           dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
  layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2
           inner_product_param { num_output: 2 } }
  layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }
}
''')
    found = validate([str(tmp_path / "s.prototxt")])
    assert not [f for f in found if f.severity == "error"], [str(f) for f in found]
    assert any("V1 'layers' format" in f.message for f in found)
    convert(str(tmp_path / "s.prototxt"), str(tmp_path / "s.yaml"))
    text = (tmp_path / "s.yaml").read_text()
    assert "layers:" not in text and "type: InnerProduct" in text and "lr_mult: 2" in text


UPGRADE = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_upgrade")


def _plain(doc):
    """A loaded net as plain data, numbers as floats (Caffe's expected text writes 0. where the input has 0)."""
    from netspec.loader import to_plain
    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v] if len(v) != 1 else norm(v[0])
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    return norm(to_plain(doc))


@pytest.mark.parametrize("name", ["simple", "imagenet"])
def test_v0_nets_upgrade_to_what_caffes_own_upgrade_test_expects(name):
    """Caffe's test_upgrade_proto.cpp: the V0 CaffeNet (padding layers folded into the convs) and its expected V2."""
    def read(suffix):
        with open(os.path.join(UPGRADE, f"{name}_{suffix}.prototxt")) as f:
            return loads(f.read(), f"{name}_{suffix}.prototxt")
    v0, notes = read("v0")
    v2, _ = read("v2")
    assert any("V0 format" in n.message for n in notes)
    assert _plain(v0) == _plain(v2)


def test_v0_all_params_upgrade_to_caffes_expected_v1_and_on_to_v2():
    with open(os.path.join(UPGRADE, "allparams_v0.prototxt")) as f:
        v0, _ = loads(f.read(), "allparams_v0.prototxt")
    with open(os.path.join(UPGRADE, "allparams_v1.prototxt")) as f:
        v1, _ = loads(f.read(), "allparams_v1.prototxt")  # Caffe's expected V1, upgraded by yaffe's V1 step
    assert _plain(v0) == _plain(v1)
    types = [l["type"] for l in v0["layer"]]
    assert "WindowData" in types and "HDF5Output" in types and "Convolution" in types


def test_v0_field_that_means_nothing_for_its_type_is_an_error_with_its_place():
    text = "layers { layer { name: 'r' type: 'relu' kernelsize: 3 } bottom: 'x' top: 'x' }"
    with pytest.raises(SpecError) as e:
        loads(text, "old.prototxt")
    assert "old.prototxt:1:" in str(e.value) and "'kernelsize' means nothing for a 'relu' layer" in str(e.value)


def test_convert_writes_a_v0_net_as_a_current_one(tmp_path):
    from netspec.convert import convert
    out = tmp_path / "imagenet.prototxt"
    convert(os.path.join(UPGRADE, "imagenet_v0.prototxt"), str(out), out=lambda *a: None)
    text = out.read_text()
    assert "layers" not in text.replace("layer {", "") and 'type: "Convolution"' in text and "kernelsize" not in text
    with open(os.path.join(UPGRADE, "imagenet_v2.prototxt")) as f:
        assert _plain(loads(text, "x.prototxt")[0]) == _plain(loads(f.read(), "v2.prototxt")[0])


def test_a_caffe_solverstate_names_its_caffemodel_as_caffe_does(caffe_dir):
    """Caffe writes the .solverstate's learned_net as snapshot_prefix + _iter_N.caffemodel, the path from the
    working directory (its examples: examples/mnist/lenet_iter_10000.caffemodel), and `caffe train --snapshot`
    opens it from there: a basename alone made Caffe fail ('File not found: lenet_iter_1000.caffemodel') on
    yaffe's snapshots of Caffe's own examples. yaffe resumes from it too (the model beside the state)."""
    from netspec.caffemodel import read_solverstate
    os.mkdir(caffe_dir / "snaps")
    over = {"max_iter": 3, "snapshot_format": "BINARYPROTO", "test_iter": [1], "snapshot_prefix": "snaps/lenet"}
    Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None, overrides=over).train()
    state = read_solverstate("snaps/lenet_iter_3.solverstate")
    assert state["learned_net"] == "snaps/lenet_iter_3.caffemodel" and os.path.isfile(state["learned_net"])
    r = Trainer(str(caffe_dir / "lenet_sgd_solver.prototxt"), out=lambda *a: None, overrides=dict(over, max_iter=4))
    r.train(snapshot_path="snaps/lenet_iter_3.solverstate")
    assert r.iter == 4


def test_solver_mode_cpu_is_taken_without_a_note_and_gpu_is_noted():
    """`solver_mode: CPU` is what yaffe does: dropped quietly; GPU (Caffe's examples) gets the info line."""
    doc, notes = loads('net: "n.prototxt"\nbase_lr: 0.01\nsolver_mode: CPU\n', "s.prototxt")
    assert "solver_mode" not in doc and notes == []
    doc, notes = loads('net: "n.prototxt"\nbase_lr: 0.01\nsolver_mode: GPU\ndevice_id: 1\n', "s.prototxt")
    assert [str(n) for n in notes] == ["s.prototxt:3:1: info: solver_mode is ignored: yaffe runs on the CPU",
                                       "s.prototxt:4:1: info: device_id is ignored: yaffe runs on the CPU"]
