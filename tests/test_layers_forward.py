"""Forward passes against NumPy references and Caffe's documented corner cases (float32)."""
import math

import numpy as np
import pytest

from layers.base import Blob
from layers.fillers import fill
from layers.pooling import pooled_size
from layers.softmax import LabelError
from tests.gradcheck import make_layer


def run(type_name, spec, *arrays, n_tops=None, dtype=np.float32, params=None):
    layer, tops = make_layer(type_name, spec, [a.shape for a in arrays], dtype=dtype, n_tops=n_tops)
    if params is not None:
        for blob, value in zip(layer.blobs, params):
            blob.data[...] = value
    bottom = []
    for i, a in enumerate(arrays):
        b = Blob(f"b{i}", a.shape, dtype)
        b.data[...] = a
        bottom.append(b)
    layer.forward(bottom, tops)
    return layer, bottom, tops


def naive_conv(x, w, b, stride, pad, dilation, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    y = np.zeros((n, o, oh, ow))
    og = o // group
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride[0]:i * stride[0] + dilation[0] * (kh - 1) + 1:dilation[0],
                           j * stride[1]:j * stride[1] + dilation[1] * (kw - 1) + 1:dilation[1]]
                y[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + (b[oc] if b is not None else 0)
    return y


@pytest.mark.parametrize("cp, shape", [
    ({"num_output": 4, "kernel_size": 3}, (2, 3, 7, 6)),
    ({"num_output": 6, "kernel_size": [3, 2], "stride": [2, 1], "pad": [1, 0], "group": 3}, (2, 3, 8, 7)),
    ({"num_output": 2, "kernel_size": 3, "dilation": 2, "pad": 2, "bias_term": False}, (1, 2, 7, 7)),
])
def test_convolution_matches_naive_loops(cp, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    layer, _, tops = run("Convolution", {"convolution_param": cp}, x)
    w = layer.blobs[0].data
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    ref = naive_conv(x.astype(np.float64), w, b, layer.stride, layer.pad, layer.dilation, cp.get("group", 1))
    assert tops[0].shape == ref.shape
    np.testing.assert_allclose(tops[0].data, ref, rtol=1e-5, atol=1e-5)


def test_convolution_output_size_truncates_but_pooling_rounds_up():
    """Caffe's classic mismatch: H=28, k=3, s=2, p=1 gives conv 14 and pool 15."""
    x = np.zeros((1, 1, 28, 28), np.float32)
    _, _, conv = run("Convolution", {"convolution_param": {"num_output": 1, "kernel_size": 3, "stride": 2, "pad": 1}}, x)
    _, _, pool = run("Pooling", {"pooling_param": {"kernel_size": 3, "stride": 2, "pad": 1}}, x)
    assert conv[0].shape[2:] == (14, 14)
    assert pool[0].shape[2:] == (15, 15)


def test_pooled_size_rules():
    assert pooled_size(5, 2, 0, 2, "CEIL") == 3          # ceil((5-2)/2)+1
    assert pooled_size(5, 2, 0, 2, "FLOOR") == 2
    assert pooled_size(5, 2, 1, 2, "CEIL") == 3          # 4, clipped: the last window would start in the pad
    assert pooled_size(6, 3, 1, 2, "CEIL") == 4


def test_max_pooling_picks_first_maximum_and_routes_gradient_there():
    x = np.array([[[[1, 3, 3], [0, 3, 2], [1, 1, 1]]]], np.float32)
    layer, bottom, tops = run("Pooling", {"pooling_param": {"pool": "MAX", "kernel_size": 2, "stride": 1}}, x)
    np.testing.assert_array_equal(tops[0].data[0, 0], [[3, 3], [3, 3]])
    tops[0].diff[...] = 1
    layer.backward(tops, [True], bottom)
    # windows (0,0) and (0,1) hold several 3s and pick (0,1), the first in row-major order;
    # windows (1,0) and (1,1) pick (1,1)
    expected = np.zeros((3, 3))
    expected[0, 1] = 2
    expected[1, 1] = 2
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expected)


def test_average_pooling_counts_padding_in_divisor():
    x = np.ones((1, 1, 3, 3), np.float32)
    _, _, tops = run("Pooling", {"pooling_param": {"pool": "AVE", "kernel_size": 3, "stride": 2, "pad": 1}}, x)
    # ceil((3+2-3)/2)+1 = 2 windows per axis; window (0,0) covers rows -1..1: 4 of its 9 cells are in the image
    assert tops[0].shape == (1, 1, 2, 2)
    np.testing.assert_allclose(tops[0].data[0, 0], [[4 / 9, 4 / 9], [4 / 9, 4 / 9]], rtol=1e-6)


def test_average_pooling_window_is_cut_at_height_plus_pad():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    _, _, tops = run("Pooling", {"pooling_param": {"pool": "AVE", "kernel_size": 3, "stride": 2, "pad": 1}}, x)
    # second window along each axis starts at 1 and ends at min(1+3, 4+1)=4: size 3, all inside the image
    assert tops[0].data[0, 0, 1, 1] == pytest.approx(x[0, 0, 1:4, 1:4].mean())
    # first window starts at -1: divisor 9, sum over rows/cols 0..1
    assert tops[0].data[0, 0, 0, 0] == pytest.approx(x[0, 0, 0:2, 0:2].sum() / 9)


def test_inner_product_is_x_times_w_transposed_plus_b():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 2, 3)).astype(np.float32)
    w, b = rng.normal(size=(5, 6)), rng.normal(size=5)
    _, _, tops = run("InnerProduct", {"inner_product_param": {"num_output": 5}}, x, params=[w, b])
    np.testing.assert_allclose(tops[0].data, x.reshape(4, 6) @ w.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows, bias", [(2, True), (40, False), (128, True), (129, True)])
def test_inner_product_of_a_training_batch_through_the_transposed_product(rows, bias, monkeypatch):
    """Up to TRANSPOSED_ROWS rows (and 32 outputs or more) the top is (W x^T)^T + b: the same numbers, the bias
    on every row (a bias added along the wrong axis of the transposed product fails), a buffer per shape."""
    import layers.inner_product as ip
    rng = np.random.default_rng(2)
    x = rng.normal(size=(rows, 3, 7)).astype(np.float32)
    w, b = rng.normal(size=(45, 21)), rng.normal(size=45)
    calls, original = [], ip.gemm
    monkeypatch.setattr(ip, "gemm", lambda a, *rest, **kw: calls.append(a.shape) or original(a, *rest, **kw))
    layer, _, tops = run("InnerProduct", {"inner_product_param": {"num_output": 45, "bias_term": bias}}, x,
                         params=[w, b] if bias else [w])
    want = x.reshape(rows, 21) @ w.T + (b if bias else 0)
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-5)
    assert calls == [(45, 21) if rows <= ip.TRANSPOSED_ROWS else (rows, 21)]
    assert (getattr(layer, "_yt", None) is not None) == (rows <= ip.TRANSPOSED_ROWS)


@pytest.mark.parametrize("build", ["serial", "parallel"])
def test_transposed_add_equals_numpys_transposed_add(build):
    """inner_product.transposed_add (the transposed product's way back to the top, in 16 x 16 blocks) gives
    NumPy's yt.T + bias bit for bit, with and without the bias, on shapes that leave partial blocks."""
    from layers.inner_product import transposed_add
    rng = np.random.default_rng(3)
    for n, m in ((45, 2), (512, 128), (33, 17), (16, 16), (1, 40)):
        yt, bias = rng.normal(size=(n, m)).astype(np.float32), rng.normal(size=n).astype(np.float32)
        for has_bias in (True, False):
            y = np.full((m, n), np.nan, np.float32)
            getattr(transposed_add, build)(yt, bias, has_bias, y)
            assert np.array_equal(y, yt.T + bias if has_bias else yt.T)


def test_relu_with_negative_slope():
    x = np.array([-2, -0.5, 0, 1.5], np.float32)
    _, _, tops = run("ReLU", {"relu_param": {"negative_slope": 0.1}}, x)
    np.testing.assert_allclose(tops[0].data, [-0.2, -0.05, 0, 1.5], rtol=1e-6)


def test_relu_in_place_computes_what_relu_into_a_new_blob_does():
    x = np.random.default_rng(0).normal(size=(3, 70)).astype(np.float32)
    dy = np.random.default_rng(1).normal(size=(3, 70)).astype(np.float32)
    layer, bottom, tops = run("ReLU", {"relu_param": {"negative_slope": 0.1}}, x)
    tops[0].diff[...] = dy
    layer.backward(tops, [True], bottom)
    blob = Blob("inplace", x.shape, np.float32)
    blob.data[...], blob.diff[...] = x, dy
    layer.forward([blob], [blob])
    layer.backward([blob], [True], [blob])
    np.testing.assert_array_equal(blob.data, tops[0].data)
    np.testing.assert_array_equal(blob.diff, bottom[0].diff)


def test_softmax_sums_to_one_and_survives_large_inputs():
    x = np.array([[1000, 1001, 999], [0, 0, 0]], np.float32)
    _, _, tops = run("Softmax", {}, x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(tops[0].data, e / e.sum(axis=1, keepdims=True), rtol=1e-6)


def test_softmax_loss_is_mean_negative_log_likelihood():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    lab = np.array([0, 3, 1, 2, 2, 0], np.float32)
    _, _, tops = run("SoftmaxWithLoss", {}, x, lab)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    assert float(tops[0].data) == pytest.approx(-np.log(p[np.arange(6), lab.astype(int)]).mean(), rel=1e-5)


@pytest.mark.parametrize("mode, divisor", [("VALID", 3), ("FULL", 6), ("BATCH_SIZE", 6), ("NONE", 1)])
def test_softmax_loss_normalization_with_ignore_label(mode, divisor):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    lab = np.array([0, 2, 2, 1, 2, 0], np.float32)
    spec = {"loss_param": {"ignore_label": 2, "normalization": mode}}
    _, _, tops = run("SoftmaxWithLoss", spec, x, lab)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    keep = lab != 2
    total = -np.log(p[np.arange(6)[keep], lab[keep].astype(int)]).sum()
    assert float(tops[0].data) == pytest.approx(total / divisor, rel=1e-5)


def test_softmax_loss_rejects_one_based_labels_with_a_hint():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(LabelError, match="one-based: subtract 1"):
        run("SoftmaxWithLoss", {}, x, np.array([1, 3], np.float32))


def test_accuracy_counts_ties_against_the_prediction():
    scores = np.array([[0.5, 0.5, 0.0], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4], [0.9, 0.0, 0.1]], np.float32)
    lab = np.array([0, 1, 2, 1], np.float32)
    _, _, tops = run("Accuracy", {}, scores, lab)
    assert float(tops[0].data) == pytest.approx(2 / 4)  # row 0 ties: wrong; rows 1, 2 right; row 3 wrong
    _, _, tops = run("Accuracy", {"accuracy_param": {"top_k": 2}}, scores, lab)
    assert float(tops[0].data) == pytest.approx(3 / 4)


def test_fillers():
    rng = np.random.default_rng(0)
    assert not fill((4, 5), None, rng).any()                       # Caffe's default: constant 0
    x = fill((200, 50, 3, 3), {"type": "xavier"}, rng)
    bound = math.sqrt(3 / (50 * 9))
    assert x.dtype == np.float32 and np.abs(x).max() <= bound and np.abs(x).max() > 0.95 * bound
    m = fill((300, 100), {"type": "msra"}, rng)
    assert m.std() == pytest.approx(math.sqrt(2 / 100), rel=0.03)
    g = fill((1000,), {"type": "gaussian", "mean": 1, "std": 0.5}, rng)
    assert g.mean() == pytest.approx(1, abs=0.05) and g.std() == pytest.approx(0.5, rel=0.1)
    u = fill((1000,), {"type": "uniform", "min": -2, "max": -1}, rng)
    assert u.min() >= -2 and u.max() <= -1
    assert (fill((3,), {"type": "constant", "value": 0.2}, rng) == np.float32(0.2)).all()


def test_eltwise_max_tie_goes_to_bottom_one_and_later_bottoms_need_strictly_more():
    a = np.array([1, 2, 3], np.float32)
    b = np.array([1, 1, 3], np.float32)
    c = np.array([1, 2, 4], np.float32)
    layer, bottom, tops = run("Eltwise", {"eltwise_param": {"operation": "MAX"}}, a, b, c)
    np.testing.assert_array_equal(tops[0].data, [1, 2, 4])
    tops[0].diff[...] = 1
    layer.backward(tops, [True, True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [0, 1, 0])   # (a=b=1: b wins; c=1 not strictly more)
    np.testing.assert_array_equal(bottom[1].diff, [1, 0, 0])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 1])


def test_eltwise_sum_with_coefficients_and_prod():
    a, b = np.array([1, 2], np.float32), np.array([3, -1], np.float32)
    _, _, tops = run("Eltwise", {"eltwise_param": {"coeff": [2, -1]}}, a, b)
    np.testing.assert_array_equal(tops[0].data, [-1, 5])
    _, _, tops = run("Eltwise", {"eltwise_param": {"operation": "PROD"}}, a, b)
    np.testing.assert_array_equal(tops[0].data, [3, -2])


def test_concat_and_reshape_shapes():
    x, y = np.ones((2, 3, 4), np.float32), np.zeros((2, 1, 4), np.float32)
    _, _, tops = run("Concat", {}, x, y)
    assert tops[0].shape == (2, 4, 4) and tops[0].data[:, 3].sum() == 0 and tops[0].data[:, :3].all()
    _, _, tops = run("Reshape", {"reshape_param": {"shape": {"dim": [0, -1]}}}, x)
    assert tops[0].shape == (2, 12)
    _, _, tops = run("Reshape", {"reshape_param": {"shape": {"dim": [2, 2]}, "axis": 1, "num_axes": 1}},
                     np.zeros((3, 4, 5), np.float32))
    assert tops[0].shape == (3, 2, 2, 5)
    _, _, tops = run("Flatten", {}, np.zeros((3, 4, 5, 2), np.float32))
    assert tops[0].shape == (3, 40)


def test_batchnorm_train_normalizes_and_updates_caffe_running_sums():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(8, 2, 3)).astype(np.float32)
    layer, _, tops = run("BatchNorm", {"batch_norm_param": {"moving_average_fraction": 0.9}}, x,
                         params=[np.zeros(2), np.zeros(2), np.zeros(1)])           # as the net's fillers leave them
    y = tops[0].data
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1, rtol=1e-3)
    mean_sum, var_sum, scale = (b.data for b in layer.blobs)
    m = 8 * 3
    assert scale[0] == pytest.approx(1.0)                                  # 0.9 * 0 + 1
    np.testing.assert_allclose(mean_sum, x.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(var_sum, x.var(axis=(0, 2)) * m / (m - 1), rtol=1e-4)   # unbiased stored


def test_batchnorm_test_phase_uses_stored_statistics():
    x = np.array([[1.0, 2.0], [3.0, 6.0]], np.float32)
    layer, bottom, tops = run("BatchNorm", {}, x, params=[np.zeros(2), np.zeros(2), np.zeros(1)])  # TRAIN fills stats
    from tests.gradcheck import make_layer
    test_layer, test_tops = make_layer("BatchNorm", {}, [x.shape], phase="TEST", dtype=np.float32)
    for t, s in zip(test_layer.blobs, layer.blobs):
        t.data[...] = s.data
    test_layer.forward(bottom, test_tops)
    mean = layer.blobs[0].data / layer.blobs[2].data
    var = layer.blobs[1].data / layer.blobs[2].data
    np.testing.assert_allclose(test_tops[0].data, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5)


def test_dropout_scales_kept_units_in_train_and_is_identity_in_test():
    x = np.ones((1000,), np.float32)
    _, _, tops = run("Dropout", {"dropout_param": {"dropout_ratio": 0.25}}, x)
    kept = tops[0].data != 0
    np.testing.assert_allclose(tops[0].data[kept], 1 / 0.75, rtol=1e-6)
    assert 0.68 < kept.mean() < 0.82
    from tests.gradcheck import make_layer
    layer, t = make_layer("Dropout", {}, [x.shape], phase="TEST", dtype=np.float32)
    b = Blob("x", x.shape)
    b.data[...] = x
    layer.forward([b], t)
    np.testing.assert_array_equal(t[0].data, x)


def test_sparse_gaussian_positive_unitball_and_bilinear_fillers():
    rng = np.random.default_rng(0)
    sparse = fill((10, 1000), {"type": "gaussian", "sparse": 2}, rng)
    assert (sparse != 0).mean() == pytest.approx(0.2, abs=0.02)       # keep probability sparse / num_output
    ball = fill((4, 3, 2), {"type": "positive_unitball"}, rng)
    assert (ball >= 0).all() and np.allclose(ball.reshape(4, -1).sum(axis=1), 1)
    bil = fill((2, 1, 4, 4), {"type": "bilinear"}, rng)
    ramp = np.array([0.25, 0.75, 0.75, 0.25])                          # Caffe's: f = 2, c = 3/4
    np.testing.assert_allclose(bil[1, 0], np.outer(ramp, ramp))


def test_variance_norm_average_and_fan_out():
    rng = np.random.default_rng(1)
    x = fill((100, 400), {"type": "msra", "variance_norm": "FAN_OUT"}, rng)
    assert x.std() == pytest.approx(np.sqrt(2 / 100), rel=0.05)
    x = fill((100, 400), {"type": "xavier", "variance_norm": "AVERAGE"}, rng)
    assert np.abs(x).max() <= np.sqrt(3 / 250) + 1e-7


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat_slice_tile_along_every_axis_match_numpy(axis):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5, 6, 7)).astype(np.float32)
    y = rng.normal(size=tuple(2 if k == axis % 4 else d for k, d in enumerate(x.shape))).astype(np.float32)
    _, _, tops = run("Concat", {"concat_param": {"axis": axis}}, x, y)
    np.testing.assert_array_equal(tops[0].data, np.concatenate([x, y], axis=axis))
    _, _, tops = run("Slice", {"slice_param": {"axis": axis, "slice_point": [1, 3]}}, x, n_tops=3)
    for t, want in zip(tops, np.split(x, [1, 3], axis=axis)):
        np.testing.assert_array_equal(t.data, want)
    _, _, tops = run("Tile", {"tile_param": {"axis": axis, "tiles": 3}}, x)
    reps = [1, 1, 1, 1]
    reps[axis % 4] = 3
    np.testing.assert_array_equal(tops[0].data, np.tile(x, reps))


@pytest.mark.parametrize("axis, offset", [(0, [1]), (0, [1, 2, 1, 3]), (1, [2, 1, 3]), (1, [1]), (3, [2])])
def test_crop_window_matches_numpy_slicing(axis, offset):
    x = np.arange(4 * 5 * 6 * 7, dtype=np.float32).reshape(4, 5, 6, 7)
    ref = np.zeros(x.shape[:axis] + (3, 3, 4, 4)[axis:], np.float32)
    layer, bottom, tops = run("Crop", {"crop_param": {"axis": axis, "offset": offset}}, x, ref)
    off = offset * (4 - axis) if len(offset) == 1 else offset
    index = (slice(None),) * axis + tuple(slice(o, o + n) for o, n in zip(off, ref.shape[axis:]))
    np.testing.assert_array_equal(tops[0].data, x[index])
    tops[0].diff[...] = 1.0
    bottom[0].diff[...] = 7.0  # stale values must be overwritten
    layer.backward(tops, [True, False], bottom)
    want = np.zeros_like(x)
    want[index] = 1.0
    np.testing.assert_array_equal(bottom[0].diff, want)


def test_argmax_top_k_along_an_axis_and_over_all_dims_with_ties_to_the_lower_index():
    x = np.array([[[3, 1], [5, 1], [5, 2], [0, 2]]], np.float32)          # (1, 4, 2)
    _, _, tops = run("ArgMax", {"argmax_param": {"axis": 1, "top_k": 2}}, x)
    np.testing.assert_array_equal(tops[0].data, [[[1, 2], [2, 3]]])     # ties: lower index first
    _, _, tops = run("ArgMax", {"argmax_param": {"axis": 1, "top_k": 3, "out_max_val": True}}, x)
    np.testing.assert_array_equal(tops[0].data, [[[5, 2], [5, 2], [3, 1]]])
    _, _, tops = run("ArgMax", {"argmax_param": {"top_k": 3, "out_max_val": True}}, x)
    np.testing.assert_array_equal(tops[0].data, [[[2, 4, 0], [5, 5, 3]]])  # flattened: indices, then values


def test_embed_rows_and_repeated_index_gradients_accumulate():
    layer, bottom, tops = run("Embed", {"embed_param": {"num_output": 2, "input_dim": 3}},
                              np.array([2, 0, 2], np.float32), params=[np.arange(6).reshape(3, 2), [10, 20]])
    np.testing.assert_array_equal(tops[0].data, [[14, 25], [10, 21], [14, 25]])
    tops[0].diff[...] = 1.0
    layer.backward(tops, [False], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, [[1, 1], [0, 0], [2, 2]])
    np.testing.assert_array_equal(layer.blobs[1].diff, [3, 3])


def naive_max_pool(x, k, s, p, oh, ow):
    """Caffe's MaxPoolingLayer::Forward_cpu, loop for loop: -FLT_MAX start, strict >, clipped windows."""
    n, c, h, w = x.shape
    y, mask = np.empty((n, c, oh, ow), x.dtype), np.empty((n, c, oh, ow), np.int32)
    for a in range(n):
        for b in range(c):
            for py in range(oh):
                for px in range(ow):
                    hs, ws = max(py * s - p, 0), max(px * s - p, 0)
                    he, we = min(py * s - p + k, h), min(px * s - p + k, w)
                    best, arg = np.float32(-3.4028234663852886e38), -1
                    for i in range(hs, he):
                        for j in range(ws, we):
                            if x[a, b, i, j] > best:
                                best, arg = x[a, b, i, j], i * w + j
                    y[a, b, py, px], mask[a, b, py, px] = best, arg
    return y, mask


@pytest.mark.parametrize("shape, k, s, p", [((2, 3, 8, 8), 2, 2, 0), ((1, 2, 7, 9), 2, 2, 0), ((2, 2, 9, 9), 3, 2, 0),
                                           ((1, 2, 8, 8), 3, 2, 1), ((1, 1, 6, 7), 3, 1, 0), ((1, 2, 10, 10), 4, 3, 1)])
def test_max_pooling_matches_caffe_loop_for_loop_with_ties_nan_and_infinities(shape, k, s, p):
    """Including the unrolled 2x2/3x3 path for windows inside the image and CEIL's clipped last windows."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, size=shape).astype(np.float32)  # many ties: the first maximum must win
    x[0, 0, 0, :3] = [np.nan, -np.inf, np.nan]
    x[0, -1, :2, :2] = -np.inf  # a window of -inf only: -FLT_MAX and mask -1, as in Caffe
    layer, _, tops = run("Pooling", {"pooling_param": {"kernel_size": k, "stride": s, "pad": p}}, x, n_tops=2)
    want_y, want_mask = naive_max_pool(x, k, s, p, *tops[0].shape[2:])
    np.testing.assert_array_equal(tops[0].data, want_y)
    np.testing.assert_array_equal(tops[1].data, want_mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("size", [(7, 9), (8, 8), (3, 4), (5, 40), (9, 33), (4, 64)])
def test_the_stride_2_max_pooling_kernels_equal_the_loops(k, size, dtype):
    """max_pool_2x2s2 / max_pool_3x3s2 (rows of windows vectorized; 3x3 in groups of a vector's lanes less one,
    simd.max_row3s2) give the generic kernel's tops and argmax, bit for bit: ties (the first maximum wins), -inf,
    NaN (never wins), CEIL's clipped last row and column, rows of more windows than a group (up to 31)."""
    from layers.pooling import max_pool_2x2s2, max_pool_3x3s2, max_pool_forward
    rng = np.random.default_rng(k)
    x = rng.integers(-3, 3, size=(2, 3) + size).astype(dtype)  # many ties
    x[0, 0, 0, :2] = -np.inf
    x[1, 2, 1, 1] = np.nan
    oh, ow = (-(-(s - k) // 2) + 1 for s in size)  # CEIL
    y, mask = np.empty((2, 3, oh, ow), dtype), np.empty((2, 3, oh, ow), np.int32)
    want_y, want_mask = y.copy(), mask.copy()
    max_pool_forward(x, k, k, 2, 2, 0, 0, want_y, want_mask)
    (max_pool_2x2s2 if k == 2 else max_pool_3x3s2)(x, y, mask)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(mask, want_mask)
    assert not np.isnan(y).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 4, 7, 7), (3, 3, 1, 5), (1, 17, 8, 8), (64, 16, 4, 4)])
def test_global_ave_pooling_sums_each_plane_in_caffes_order(shape, dtype):
    """ave_pool_global (eight planes' sums side by side) and its backward give the generic loops' values bit for
    bit: each plane summed row-major from zero in the bottom's dtype, then divided (Caffe's order; the generic
    kernel is compared with Caffe in test_caffe_parity); planes not a multiple of eight, and enough values to
    take the threads. The layer takes it for global_pooling and for a kernel the plane's size alike."""
    from layers.pooling import ave_pool_backward, ave_pool_forward, ave_pool_global, ave_pool_global_backward
    rng = np.random.default_rng(shape[1])
    x = (rng.normal(size=shape) * 10.0 ** rng.integers(-3, 4, size=shape)).astype(dtype)  # rounding matters
    h, w = shape[2:]
    want, got = np.empty(shape[:2] + (1, 1), dtype), np.full(shape[:2] + (1, 1), np.nan, dtype)
    ave_pool_forward(x, h, w, 1, 1, 0, 0, want)
    ave_pool_global(x, got)
    np.testing.assert_array_equal(got, want)
    dy = rng.normal(size=want.shape).astype(dtype)
    want_dx, got_dx = np.empty_like(x), np.full_like(x, np.nan)
    ave_pool_backward(dy, h, w, 1, 1, 0, 0, want_dx)
    ave_pool_global_backward(dy, got_dx)
    np.testing.assert_array_equal(got_dx, want_dx)
    for param in ({"pool": "AVE", "global_pooling": True}, {"pool": "AVE", "kernel_h": h, "kernel_w": w}):
        _, _, tops = run("Pooling", {"pooling_param": param}, x, dtype=dtype)
        np.testing.assert_array_equal(tops[0].data, want)


def test_float32_exp_tanh_sigmoid_approximations_are_within_a_few_ulp():
    """layers/kernels.py's exp32, tanh32, sigmoid32, erfc32, log32 and pow (the float32 Sigmoid, TanH, ELU, Exp,
    Swish, GELU, Mish, LRN and LSTM kernels) against float64 over their whole range, with inf, NaN and the ends of
    exp's range."""
    import math
    from numba import njit
    from layers.kernels import erfc32, exp32, fast_log1p, fast_pow, log32, sigmoid32, tanh32

    @njit(error_model="numpy")
    def apply(x, out):
        for i in range(x.size):
            out[0, i], out[1, i], out[2, i] = exp32(x[i]), tanh32(x[i]), sigmoid32(x[i])

    @njit(error_model="numpy")
    def erfc_of(x, out):
        for i in range(x.size):
            out[i] = erfc32(x[i])

    @njit(error_model="numpy")
    def log_and_pow(x, out):
        for i in range(x.size):
            out[0, i], out[1, i] = log32(x[i]), fast_pow(x[i], np.float32(-0.75))

    @njit(error_model="numpy")
    def log1p_of(u, out):
        for i in range(u.size):
            out[i] = fast_log1p(u[i])

    u = np.exp(np.linspace(-69, 0, 200001)).astype(np.float32)  # 1e-30 .. 1: sigmoid cross-entropy's exp(-|x|)
    got = np.empty_like(u)
    log1p_of(u, got)
    assert (np.abs(got - np.log1p(u.astype(np.float64))) / np.log1p(u.astype(np.float64))).max() <= 3e-7
    x = np.exp(np.linspace(-87, 88, 300001)).astype(np.float32)
    got = np.empty((2, x.size), np.float32)
    log_and_pow(x, got)
    x64 = x.astype(np.float64)
    assert (np.abs(got[0] - np.log(x64)) / np.maximum(np.abs(np.log(x64)), 1e-3)).max() <= 2e-7
    ok = np.abs(0.75 * np.log(x64)) < 87  # x^-0.75 a normal float32
    rel = np.abs(got[1] - x64 ** -0.75) / x64 ** -0.75
    assert rel[ok].max() <= 1e-5  # p log(x) rounded to float32: ~4e-6 absolute where |log x| ~ 60
    assert rel[(x64 >= 1) & (x64 <= 1e4)].max() <= 1e-6  # LRN's scale: k + alpha/n sum x^2 >= k = 1
    z = np.linspace(-10, 10, 200001).astype(np.float32)
    got = np.empty_like(z)
    erfc_of(z, got)
    want = np.array([math.erfc(v) for v in z.astype(np.float64)])
    normal = want > 1.2e-38  # erfc relative to its value: the tail counts
    assert (np.abs(got[normal] - want[normal]) / want[normal]).max() <= 2e-6

    x = np.concatenate([np.linspace(-100, 100, 400001), [88.72, -87.33, 0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    out = np.empty((3, x.size), np.float32)
    apply(x, out)
    x64 = x.astype(np.float64)
    for got, want, tol in ((out[0], np.exp(x64), 4e-7), (out[1], np.tanh(x64), 6e-7),
                           (out[2], 1 / (1 + np.exp(-x64)), 6e-7)):
        normal = (np.abs(want) > 1.2e-38) & (np.abs(want) < 3.4e38)
        rel = np.abs(got[normal] - want[normal]) / np.abs(want[normal])
        assert rel.max() <= tol, (rel.max(), x[normal][rel.argmax()])
    assert out[0, x > 88.73].tolist() == [np.inf] * int((x > 88.73).sum()) and (out[0, x < -87.34] == 0).all()
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    res = np.empty((3, 3), np.float32)
    apply(special, res)
    assert np.isnan(res[:, 0]).all() and res[0, 1:].tolist() == [np.inf, 0.0]
    assert res[1, 1:].tolist() == [1.0, -1.0] and res[2, 1:].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_statistics_kernel_equals_the_numpy_statements_bit_for_bit(dtype):
    """bn_update_statistics (one kernel call a layer) against the NumPy statements it replaced: the mean, the
    biased variance, 1/sqrt(var + eps) and Caffe's running sums, each rounded to the dtype as NumPy rounds them
    (a fused multiply-add, say, would differ in the last bit)."""
    from layers.normalization import bn_update_statistics
    rng = np.random.default_rng(0)
    c, m, maf, eps = 37, 100, 0.999, 1e-5
    mu, sq = rng.normal(size=c), rng.uniform(0.1, 5, c) * 100
    sums0 = rng.normal(size=c).astype(dtype), rng.uniform(size=c).astype(dtype), np.array([3.7], dtype)
    mean, var = np.empty(c, dtype), np.empty(c, dtype)
    mean_sum, var_sum, scale = (a.copy() for a in sums0)
    mean[...] = mu
    var[...] = sq / m
    scale *= maf
    scale += 1
    mean_sum *= maf
    mean_sum += mean
    var_sum *= maf
    var_sum += (m / (m - 1)) * var
    inv_std = (1.0 / np.sqrt(var + eps)).astype(dtype)
    got = [np.empty(c, dtype) for _ in range(3)] + [a.copy() for a in sums0]
    t = np.dtype(dtype).type
    bn_update_statistics(mu, sq, float(m), t(maf), t(m / (m - 1)), t(eps), *got)
    for want, have in zip((mean, var, inv_std, mean_sum, var_sum, scale), got):
        np.testing.assert_array_equal(have, want)


def _elementwise_types():
    from layers.base import REGISTRY
    from layers.neuron import Elementwise
    return sorted(t for t, cls in REGISTRY.items() if issubclass(cls, Elementwise) and cls.differentiable)


@pytest.mark.parametrize("type_name", _elementwise_types())
def test_float32_elementwise_layers_equal_float64_over_a_wide_range(type_name):
    """The float32 kernels (exp32, tanh32, erfc32 and the one-array loops: other code than float64's) against
    float64 on inputs from -30 to 30 (the gradient cases' specs; positive inputs where the domain needs them):
    tops and bottom diffs within float32 rounding of the largest value."""
    from tests.test_gradients import CASES
    spec, arrays = CASES[type_name][0][0], CASES[type_name][0][1]
    x = np.linspace(-30, 30, 2400)  # no point on a kink (Clip's bounds, HardSwish's +-3, 0)
    if (np.asarray(arrays[0]) > 0).all():  # Log, Power: a positive domain
        x = np.exp(np.linspace(-8, 3, 2400))
    x = x.reshape(1, 1, -1)
    dtop = np.cos(np.arange(x.size)).reshape(x.shape)
    results = []
    for dtype in (np.float64, np.float32):
        layer, tops = make_layer(type_name, spec, [x.shape], dtype=dtype)
        bottom = Blob("x", x.shape, dtype)
        bottom.data[...] = x
        layer.forward([bottom], tops)
        tops[0].diff[...] = dtop
        layer.backward(tops, [True], [bottom])
        results.append((tops[0].data.astype(np.float64), bottom.diff.astype(np.float64)))
    for want, got in zip(*results):
        finite = np.isfinite(want)
        assert (np.isfinite(got) == finite).all(), type_name
        scale = max(1.0, np.abs(want[finite]).max())
        assert np.abs(got[finite] - want[finite]).max() <= 4e-6 * scale, type_name


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5, 3.0, 0.0])
def test_power_layer_special_powers_equal_the_formula(power):
    """Power's kernels compute the powers 1, 2 and 0.5 as products and a square root (vectorized), others with
    pow: forward and backward against the formula in float64, in float32 and float64."""
    x = np.linspace(0.1, 4.0, 50).reshape(2, 25)
    spec = {"power_param": {"power": power, "scale": 1.5, "shift": 0.25}}
    base = 0.25 + 1.5 * x
    dtop = np.cos(np.arange(x.size)).reshape(x.shape)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        layer, tops = make_layer("Power", spec, [x.shape], dtype=dtype)
        bottom = Blob("x", x.shape, dtype)
        bottom.data[...] = x
        layer.forward([bottom], tops)
        tops[0].diff[...] = dtop
        layer.backward(tops, [True], [bottom])
        np.testing.assert_allclose(tops[0].data, base ** power, rtol=tol)
        want = dtop * power * 1.5 * base ** (power - 1) if power else np.zeros_like(x)
        np.testing.assert_allclose(bottom.diff, want, rtol=tol, atol=tol)


def test_float32_log_keeps_libms_ends():
    """Log's float32 kernel (log32) gives -inf at 0, inf at inf and NaN below 0, as np.log."""
    x = np.array([[0.0, -1.0, np.inf, 1.0, 1e-30, 3e38]], np.float32)
    (y,), _ = run_with_nan_ok("Log", {}, x)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(x.astype(np.float64))
    assert y[0, 0] == -np.inf and np.isnan(y[0, 1]) and y[0, 2] == np.inf
    np.testing.assert_allclose(y[0, 3:], want[0, 3:], rtol=2e-7, atol=1e-7)


def run_with_nan_ok(type_name, spec, x):
    layer, tops = make_layer(type_name, spec, [x.shape], dtype=np.float32)
    bottom = Blob("x", x.shape, np.float32)
    bottom.data[...] = x
    layer.forward([bottom], tops)
    return [t.data.copy() for t in tops], layer


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (300.0, 0.5), (-2.0, 1e-3)])
def test_batch_norm_statistics_from_one_pass_match_the_centered_two_pass_ones(mean, std):
    """BatchNorm in TRAIN sums x and x^2 in one pass (float64; one wait for the slices of a batch): its mean,
    variance, normalized top and running sums equal NumPy's centered float64 statistics, far from zero too."""
    x = np.random.default_rng(3).normal(mean, std, size=(6, 5, 7, 3)).astype(np.float32)
    layer, _, tops = run("BatchNorm", {"batch_norm_param": {"use_global_stats": False}}, x,
                         params=[np.zeros(5), np.zeros(5), np.zeros(1)])  # running sums from zero
    x64 = x.astype(np.float64)
    mu, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.mean, mu, rtol=1e-6, atol=1e-7 * std)
    np.testing.assert_allclose(layer.var, var, rtol=1e-5)
    want = (x64 - mu[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None]
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-4, atol=1e-4)
    m = x[:, 0].size
    np.testing.assert_allclose(layer.blobs[1].data, var * m / (m - 1), rtol=1e-5)  # Caffe's unbiased running sum


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_kernels_on_all_threads_equal_their_serial_builds_to_the_bit(dtype):
    """layers.normalization's kernels share a whole batch's channels (the sums) or images (the rest) over Numba's
    threads and run serially in a slice (cpu.spread): both builds, on shapes with few and many images, channels
    and positions, give the same bits (a channel's sums are added in the same order), in place and not."""
    import layers.normalization as bn
    rng = np.random.default_rng(7)
    for shape in ((3, 5, 7), (16, 32, 9), (2, 64, 1), (33, 3, 40)):
        c = shape[1]
        x = rng.normal(size=shape).astype(dtype)
        top, d = rng.normal(size=shape).astype(dtype), rng.normal(size=shape).astype(dtype)
        mean, inv, s, b = (rng.normal(size=c).astype(dtype) for _ in range(4))
        a1, a2 = rng.normal(size=c), rng.normal(size=c)
        runs = {}
        for build in ("serial", "parallel"):
            out, xs, ds = {}, x.copy(), d.copy()
            sums = np.zeros(2 * c)
            getattr(bn.bn_sums_and_squares, build)(x, sums)
            out["sums"] = [sums.copy()]
            for name, args in (("normalize", (x, mean, inv, np.empty_like(x))),
                               ("scale", (x, mean, inv, s, b, True, np.empty_like(x), np.empty_like(x), True,
                                          dtype(0.1))),
                               ("apply", (x, d, a1, a2, inv, np.empty_like(x)))):
                kernel = {"normalize": bn.bn_normalize, "scale": bn.bn_scale_forward, "apply": bn.bn_backward_apply}
                getattr(kernel[name], build)(*args)
                out[name] = [a.copy() for a in args if isinstance(a, np.ndarray) and a.shape == shape]
            getattr(bn.bn_scale_forward_in_place, build)(xs, mean, inv, s, b, False, np.empty_like(x), False,
                                                         dtype(0.0))
            getattr(bn.bn_backward_sums_relu, build)(x, ds, top, dtype(0.1), sums[:c], sums[c:])
            getattr(bn.bn_backward_apply_in_place, build)(x, ds, a1, a2, inv)
            out["in place"] = [xs, ds, sums.copy()]
            runs[build] = out
        for key, value in runs["serial"].items():
            for got, want in zip(runs["parallel"][key], value):
                np.testing.assert_array_equal(got, want, err_msg=f"{shape} {key}")


def test_elementwise_kernels_on_all_threads_equal_their_serial_builds():
    """The Eltwise and Split passes (layers.kernels: scale_into, add_scaled, add_two, sum_two, sum_into) built for
    Numba's threads give their serial builds' values, in place too, with a leaky ReLU."""
    from layers import kernels as k
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 300_001)).astype(np.float32)
    for build in ("serial", "parallel"):
        out = {}
        y = np.empty_like(a)
        getattr(k.scale_into, build)(a, 0.5, y)
        getattr(k.add_scaled, build)(b, -2.0, y)
        out["scaled"] = y.copy()
        getattr(k.add_two, build)(a, b, y)
        out["two"] = y.copy()
        getattr(k.sum_two, build)(a, 0.3, b, 1.0, y, True, 0.1)
        out["sum"] = y.copy()
        getattr(k.sum_into, build)(y, 2.0, a, -1.0, True, 0.0)
        out["into"] = y.copy()
        if build == "serial":
            want = out
    np.testing.assert_array_equal(want["two"], a + b)
    for key in want:
        np.testing.assert_array_equal(out[key], want[key], err_msg=key)
