"""Layer types Caffe users bring from older nets: STOCHASTIC pooling, SPP, Filter, HDF5Output. Each also has
its numerical gradient case (test_gradients.py); Caffe's numbers for SPP and Filter are in the pycaffe fixtures
(test_caffe_parity.py). Caffe's CPU build has no STOCHASTIC pooling (its GPU kernels are the definition)."""
import numpy as np
import pytest

from netspec.errors import SpecError
from netspec.loader import loads
from netspec.net import Net
from tests.gradcheck import make_layer
from layers.base import Blob


def _run(type_name, spec, x, phase="TRAIN", seed=0):
    layer, tops = make_layer(type_name, dict(spec, phase=phase), [x.shape], dtype=np.float32, seed=seed)
    b = Blob("x", x.shape, np.float32)
    b.data[...] = x
    layer.forward([b], tops)
    return layer, tops


def test_stochastic_pooling_draws_values_in_proportion_and_averages_by_probability_in_test():
    x = np.array([[[[1, 3], [0, 0]]]], np.float32)  # one 2x2 window: 3 with p 0.75, 1 with p 0.25, zeros never
    spec = {"pooling_param": {"pool": "STOCHASTIC", "kernel_size": 2, "stride": 2}}
    layer, tops = _run("Pooling", spec, x)
    picks = []
    for _ in range(4000):
        layer.forward([_blob(x)], tops)
        picks.append(float(tops[0].data[0, 0, 0, 0]))
    picks = np.array(picks)
    assert set(picks) == {1.0, 3.0}
    assert abs(np.mean(picks == 3.0) - 0.75) < 0.03
    _, tops = _run("Pooling", spec, x, phase="TEST")
    assert tops[0].data[0, 0, 0, 0] == pytest.approx((1 + 9) / 4)  # sum(x^2) / sum(x)
    _, tops = _run("Pooling", spec, np.zeros((1, 1, 2, 2), np.float32), phase="TEST")
    assert tops[0].data[0, 0, 0, 0] == 0  # a window of zeros: 0, not NaN (Caffe's FLT_MIN)


def _blob(x):
    b = Blob("x", x.shape, np.float32)
    b.data[...] = x
    return b


def test_spp_bins_cover_the_plane_at_every_level_and_follow_the_input_size():
    x = np.random.default_rng(0).uniform(size=(2, 3, 13, 10)).astype(np.float32)
    _, tops = _run("SPP", {"spp_param": {"pyramid_height": 3, "pool": "MAX"}}, x)
    y = tops[0].data
    assert y.shape == (2, 3 * (1 + 4 + 16))
    np.testing.assert_array_equal(y[:, :3], x.max(axis=(2, 3)))  # level 0: the whole plane
    # level 1 on 13 rows: kernel 7, pad 1 -> rows [-1, 6) and [6, 13); columns: kernel 5, pad 0
    level1 = y[:, 3:15].reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(level1[..., 0, 0], x[:, :, :6, :5].max(axis=(2, 3)))
    np.testing.assert_array_equal(level1[..., 1, 1], x[:, :, 6:, 5:].max(axis=(2, 3)))
    _, tops = _run("SPP", {"spp_param": {"pyramid_height": 1, "pool": "AVE"}}, x)
    assert tops[0].data.shape == (2, 3, 1, 1)  # Caffe: one level is a plain pooling, not flattened
    np.testing.assert_allclose(tops[0].data[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)


def test_spp_too_high_for_its_input_is_a_clear_error():
    with pytest.raises(SpecError) as e:
        Net(loads("""
layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [1, 2, 5, 5]}}}
  - {name: spp, type: SPP, bottom: data, top: spp, spp_param: {pyramid_height: 3}}
""", "n.yaml"), "TEST", "n.yaml")
    assert "pyramid_height 3 is too high for a 5x5 input" in str(e.value) and "n.yaml:4" in str(e.value)


FILTER_NET = """
layer:
  - {name: in, type: Input, top: [data, sel], input_param: {shape: [{dim: [6, 4]}, {dim: [6]}]}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 3,
     weight_filler: {type: gaussian}}}
  - {name: filter, type: Filter, bottom: [ip, sel], top: kept}
  - {name: out, type: InnerProduct, bottom: kept, top: out, inner_product_param: {num_output: 2,
     weight_filler: {type: gaussian}}}
  - {name: loss, type: Reduction, bottom: out, top: loss, loss_weight: 1, reduction_param: {operation: SUMSQ}}
"""


def test_filter_passes_the_selected_rows_and_the_net_follows_their_number_per_batch():
    net = Net(loads(FILTER_NET, "f.yaml"), "TRAIN", "f.yaml", seed=0)
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    net.blobs["data"].data[...] = x
    w1, b1 = (p.blob.data for p in net.params[:2])
    w2, b2 = (p.blob.data for p in net.params[2:])
    for sel in ([1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]):
        net.blobs["sel"].data[...] = sel
        net.clear_param_diffs()
        loss = net.forward()
        net.backward()
        rows = np.flatnonzero(sel)
        h = x @ w1.T + b1
        out = h[rows] @ w2.T + b2
        assert net.blobs["kept"].data.shape == (len(rows), 3)
        np.testing.assert_allclose(net.blobs["out"].data, out, rtol=1e-5)
        assert loss == pytest.approx(float(np.sum(out ** 2)), rel=1e-5)
        dh = np.zeros_like(h)
        dh[rows] = 2 * out @ w2
        np.testing.assert_allclose(net.blobs["ip"].diff, dh, rtol=1e-4, atol=1e-6)  # 0 for the rows left out
        np.testing.assert_allclose(net.params[0].blob.diff, dh.T @ x, rtol=1e-4, atol=1e-5)
        assert not net.blobs["sel"].diff.any()


def test_hdf5_output_appends_every_batch_and_hdf5_data_reads_it_back(tmp_path):
    h5py = pytest.importorskip("h5py")
    net_text = """
layer:
  - {name: data, type: Data, top: [data, label], data_param: {source: rows.npz, batch_size: 4}}
  - {name: out, type: HDF5Output, bottom: [data, label], hdf5_output_param: {file_name: out.h5}}
"""
    rng = np.random.default_rng(0)
    data, label = rng.normal(size=(10, 3)).astype(np.float32), np.arange(10, dtype=np.float32)
    np.savez(tmp_path / "rows.npz", data=data, label=label)
    (tmp_path / "net.yaml").write_text(net_text)
    from netspec.loader import load
    net = Net(load(str(tmp_path / "net.yaml")), "TEST", str(tmp_path / "net.yaml"))
    assert not (tmp_path / "out.h5").exists()  # building (validate) writes nothing
    for _ in range(3):
        net.forward()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        rows = np.r_[np.arange(10), np.arange(2)]
        assert f["data"].shape == (12, 3, 1, 1) and f["label"].shape == (12, 1, 1, 1)  # Caffe's 4 axes
        np.testing.assert_array_equal(f["data"][:].reshape(12, 3), data[rows])
        np.testing.assert_array_equal(f["label"][:].ravel(), label[rows])
    (tmp_path / "list.txt").write_text("out.h5\n")
    back = Net(loads("""
layer:
  - {name: d, type: HDF5Data, top: [data, label], hdf5_data_param: {source: list.txt, batch_size: 12}}
""", str(tmp_path / "b.yaml")), "TEST", str(tmp_path / "b.yaml"))
    back.forward()
    np.testing.assert_array_equal(back.blobs["data"].data.reshape(12, 3), data[rows])


def test_hdf5_output_into_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError) as e:
        Net(loads("""
layer:
  - {name: in, type: Input, top: [data, label], input_param: {shape: [{dim: [2, 3]}, {dim: [2]}]}}
  - {name: out, type: HDF5Output, bottom: [data, label], hdf5_output_param: {file_name: nowhere/out.h5}}
""", str(tmp_path / "n.yaml")), "TEST", str(tmp_path / "n.yaml"))
    assert "nowhere/out.h5" in str(e.value) and "does not exist" in str(e.value) and "n.yaml:4" in str(e.value)
