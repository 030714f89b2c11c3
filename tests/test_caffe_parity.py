"""yaffe against real Caffe, layer by layer: the fixtures in tests/fixtures/caffe_parity/ were recorded with
BVLC Caffe 1.0 (Debian bullseye, pycaffe) by tests/caffe_parity/make_fixtures.py; see its README.

Each case is a Caffe prototxt of Input layers feeding one layer, with the bottoms, params, tops, the top diffs
and the bottom and param diffs Caffe computed. yaffe reads the same prototxt, takes the same bottoms and
params, and must give the same numbers to float32 rounding (Caffe's own tests use 1e-4 relative or so).
"""
import os

import numpy as np
import pytest

from netspec.caffemodel import blob_bytes
from netspec.net import Net
from netspec.prototxt import load as load_prototxt

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_parity")
LAYERS = np.load(os.path.join(FIX, "layers.npz"))
CASES = sorted({k.split("/")[0] for k in LAYERS.files})


def close(ours, caffe, what, rtol=2e-4, atol=2e-5):
    ours, caffe = np.asarray(ours, np.float64), np.asarray(caffe, np.float64)
    assert ours.shape == caffe.shape, f"{what}: shape {list(ours.shape)}, Caffe's {list(caffe.shape)}"
    scale = max(1.0, float(np.abs(caffe).max(initial=0)))
    np.testing.assert_allclose(ours, caffe, rtol=rtol, atol=atol * scale, err_msg=what)


def run_case(name, tmp_path):
    get = {k.split("/", 1)[1]: LAYERS[k] for k in LAYERS.files if k.split("/")[0] == name}
    path = tmp_path / f"{name}.prototxt"
    path.write_text(str(get["prototxt"]))
    if "H" in get:
        (tmp_path / "H.binaryproto").write_bytes(blob_bytes(get["H"].reshape((1, 1) + get["H"].shape)))
    doc, _ = load_prototxt(str(path))
    net = Net(doc, str(get["phase"]), str(path), seed=0)
    k = next(i for i, d in enumerate(net.defs) if d.name == "under_test")
    layer, d = net.layers[k], net.defs[k]
    i = 0
    while f"b{i}" in get:
        net.blobs[f"b{i}"].data[...] = get[f"b{i}"]
        i += 1
    for j, blob in enumerate(layer.blobs):
        blob.data[...] = get[f"p{j}"].reshape(blob.data.shape)
    net.forward()
    for j, t in enumerate(d.tops):
        close(net.blobs[t].data, get[f"t{j}"], f"{name}: top {j}")
    for j, blob in enumerate(layer.blobs):
        if f"pa{j}" in get:
            close(blob.data, get[f"pa{j}"], f"{name}: param {j} after forward")
    if "dt0" not in get:
        return
    for j, t in enumerate(d.tops):
        if f"dt{j}" in get:
            net.blobs[t].diff[...] = get[f"dt{j}"]
    for blob in layer.blobs:
        blob.diff[...] = 0
    net.propagate[k] = [f"db{j}" in get for j in range(len(d.bottoms))]
    net.backward_layer(k)
    for j in range(len(d.bottoms)):
        if f"db{j}" in get:
            close(net.blobs[d.bottoms[j]].diff, get[f"db{j}"], f"{name}: bottom diff {j}")
    for j, blob in enumerate(layer.blobs):
        if f"dp{j}" in get:
            close(blob.diff, get[f"dp{j}"], f"{name}: param diff {j}")


@pytest.mark.parametrize("name", CASES)
def test_layer_matches_caffe(name, tmp_path):
    run_case(name, tmp_path)


def test_every_shared_layer_type_has_a_caffe_case():
    """A layer type yaffe shares with Caffe 1.0 without a case here is unchecked against Caffe."""
    from layers.base import REGISTRY
    covered = set()
    for name in CASES:
        text = str(LAYERS[f"{name}/prototxt"])
        covered.add(text.split('name: "under_test" type: "')[1].split('"')[0])
    not_in_caffe = {"Maxout"}  # yaffe's own
    sources = {"Data", "HDF5Data", "ImageData", "MemoryData", "DummyData", "Input", "Parameter", "Silence"}
    missing = set(REGISTRY) - covered - not_in_caffe - sources
    assert not missing, f"no Caffe parity case for {sorted(missing)}: add one to tests/caffe_parity/make_fixtures.py"


# ---- smaller differences from Caffe, each as Caffe has it ----------------------------------------------------

def test_dummydata_legacy_num_channels_height_width(tmp_path):
    path = tmp_path / "dummy.prototxt"
    path.write_text('layer { name: "d" type: "DummyData" top: "data" top: "label" dummy_data_param { '
                    'num: 5 channels: 3 height: 4 width: 2 num: 5 channels: 1 height: 1 width: 1 } }\n'
                    'layer { name: "e" type: "DummyData" top: "x" dummy_data_param { num: 2 channels: 1 '
                    'height: 3 width: 3 data_filler { type: "constant" value: 7 } } }\n')
    doc, _ = load_prototxt(str(path))
    net = Net(doc, "TRAIN", str(path), seed=0)
    assert net.blobs["data"].shape == (5, 3, 4, 2) and net.blobs["label"].shape == (5, 1, 1, 1)
    net.forward()
    assert net.blobs["x"].shape == (2, 1, 3, 3) and (net.blobs["x"].data == 7).all()


def test_dummydata_legacy_fields_and_shape_together_are_refused(tmp_path):
    from netspec.errors import SpecError
    path = tmp_path / "dummy.prototxt"
    path.write_text('layer { name: "d" type: "DummyData" top: "data" dummy_data_param { num: 5 channels: 3 '
                    'height: 4 width: 2 shape { dim: 5 } } }\n')
    doc, _ = load_prototxt(str(path))
    with pytest.raises(SpecError, match="either shape or the legacy"):
        Net(doc, "TRAIN", str(path), seed=0)


def test_elu_alpha_zero_is_accepted_and_is_relu():
    from netspec.loader import loads
    net = Net(loads("layer:\n  - {name: in, type: Input, top: x, input_param: {shape: {dim: [4]}}}\n"
                    "  - {name: elu, type: ELU, bottom: x, top: y, elu_param: {alpha: 0}}\n"), "TEST", seed=0)
    net.blobs["x"].data[...] = [-2, -0.5, 0.5, 3]
    net.forward()
    assert net.blobs["y"].data.tolist() == [0, 0, 0.5, 3]
