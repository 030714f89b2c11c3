"""Property: whatever a spec holds, `validate` ends in "valid" or in findings, never an exception."""
import copy
import os
import shutil
import tempfile

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from netspec.errors import Finding
from netspec.loader import load, to_plain as plain
from netspec.spec import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "lenet_digits")
WORK = tempfile.mkdtemp(prefix="yaffe-fuzz-")
for name in ("digits_train.csv.gz", "digits_test.csv.gz"):
    shutil.copy(os.path.join(MODEL, name), WORK)


def _data_files():
    """Small sources for the data-layer net: an .h5 list, two images and their list, a csv."""
    import h5py
    import numpy as np
    from PIL import Image
    with h5py.File(os.path.join(WORK, "part.h5"), "w") as f:
        f["x"], f["y"] = np.zeros((4, 3), np.float32), np.arange(4.0)
    with open(os.path.join(WORK, "h5.txt"), "w") as f:
        f.write("part.h5\n")
    for i in range(2):
        Image.fromarray(np.full((5, 5, 3), 50 * i, np.uint8)).save(os.path.join(WORK, f"im{i}.png"))
    with open(os.path.join(WORK, "images.txt"), "w") as f:
        f.write("im0.png 0\nim1.png 1\n")
    with open(os.path.join(WORK, "windows.txt"), "w") as f:
        f.write("# 0\nim0.png\n3\n5\n5\n2\n1 0.8 0 0 3 3\n0 0.1 1 1 4 4\n")


_data_files()
DATA_NET = {"layer": [
    {"name": "h5", "type": "HDF5Data", "top": ["x", "y"], "hdf5_data_param": {"source": "h5.txt", "batch_size": 2}},
    {"name": "img", "type": "ImageData", "top": ["im", "im_label"],
     "image_data_param": {"source": "images.txt", "batch_size": 2, "new_height": 4, "new_width": 4},
     "transform_param": {"crop_size": 3, "mirror": True, "normalize": [{"type": "zero_center"}, {"type": "clip", "min": -1, "max": 1}]}},
    {"name": "mem", "type": "MemoryData", "top": ["m", "m_label"],
     "memory_data_param": {"batch_size": 2, "channels": 1, "height": 2, "width": 2}},
    {"name": "dummy", "type": "DummyData", "top": "noise",
     "dummy_data_param": {"shape": {"dim": [2, 3]}, "data_filler": {"type": "gaussian"}}},
    {"name": "sum", "type": "Eltwise", "bottom": ["x", "noise"], "top": "s"},
    {"name": "loss", "type": "EuclideanLoss", "bottom": ["s", "x"], "top": "loss"},
    {"name": "win", "type": "WindowData", "top": ["w", "w_label"], "transform_param": {"crop_size": 3},
     "window_data_param": {"source": "windows.txt", "batch_size": 4, "context_pad": 1}},
    {"name": "h5out", "type": "HDF5Output", "bottom": ["x", "y"], "hdf5_output_param": {"file_name": "out.h5"}},
    {"name": "quiet", "type": "Silence", "bottom": ["y", "im", "im_label", "m", "m_label", "w", "w_label"]},
]}
NET = plain(load(os.path.join(MODEL, "net.yaml")))
ZOO = plain(load(os.path.join(ROOT, "tests", "fixtures", "zoo.yaml")))
SOLVER = plain(load(os.path.join(MODEL, "solver.yaml")))

ODD_VALUES = st.sampled_from([-1, 0, 1, 3, 10 ** 12, -10 ** 9, 2.5, -0.5, float("nan"), float("inf"), "abc", "",
                              "TRAIN", "MAX", "xavier", [], [1, "x"], [0, 0], None, {}, {"dim": [1, -2]},
                              True, False, "data", "label", "conv1"])
FIELD_NAMES = st.sampled_from(["kernel_size", "kernal_size", "stride", "pad", "bottom", "top", "type", "name",
                               "num_output", "phase", "include", "exclude", "loss_weight", "param", "lr_mult",
                               "source", "batch_size", "shuffle", "scale", "weight_filler", "pool", "axis",
                               "ignore_label", "normalization", "round_mode", "group", "dilation", "zzz",
                               "use_global_stats", "dropout_ratio", "operation", "coeff", "shape", "dim",
                               "end_axis", "num_axes", "global_pooling", "input_param", "lr_mult"])


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


@st.composite
def mutated(draw, base):
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        all_paths = [p for p in paths(doc) if p]
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        op = draw(st.sampled_from(["drop", "rename", "retype", "retype", "add"]))
        if op == "drop":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(FIELD_NAMES)] = parent.pop(key)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(FIELD_NAMES)] = copy.deepcopy(draw(ODD_VALUES))
        else:
            parent[key] = copy.deepcopy(draw(ODD_VALUES))  # never mutate the shared constants
    return doc


def check(doc, name):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    found = validate([path])
    assert isinstance(found, list) and all(isinstance(x, Finding) for x in found)
    for x in found:
        assert x.severity in ("error", "warning") and x.line >= 0 and "\n" not in x.message
        assert "this is a bug in yaffe" not in x.message, x


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(NET))
def test_validate_never_raises_on_a_mutated_net(doc):
    check(doc, "net.yaml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(ZOO))
def test_validate_never_raises_on_a_mutated_net_of_every_layer_type(doc):
    check(doc, "zoo.yaml")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(DATA_NET))
def test_validate_never_raises_on_a_mutated_net_of_data_layers(doc):
    check(doc, "data_net.yaml")


def test_the_data_net_is_valid():
    path = os.path.join(WORK, "data_net.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(DATA_NET, f)
    assert [f for f in validate([path]) if f.severity == "error"] == []


def test_the_fuzzed_nets_cover_every_layer_type():
    from layers import REGISTRY
    used = {layer["type"] for layer in NET["layer"] + ZOO["layer"] + DATA_NET["layer"]} | {"Split"}
    assert used == set(REGISTRY), f"add {sorted(set(REGISTRY) - used)} to tests/fixtures/zoo.yaml"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SOLVER))
def test_validate_never_raises_on_a_mutated_solver(doc):
    shutil.copy(os.path.join(MODEL, "net.yaml"), os.path.join(WORK, "net.yaml"))
    check(doc, "solver.yaml")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{},\t\n '\"#&*!|>%@`0123456789")), max_size=80))
def test_validate_never_raises_on_arbitrary_text(text):
    path = os.path.join(WORK, "text.yaml")
    with open(path, "w") as f:
        f.write(text)
    assert isinstance(validate([path]), list)
