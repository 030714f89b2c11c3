"""Forward passes of the layer library against closed-form NumPy references (float64)."""
import numpy as np
import pytest

from layers.base import REGISTRY
from tests.gradcheck import run_layer

R = np.random.default_rng(0)
X = R.normal(size=(2, 6, 3, 3))
POS = R.uniform(0.5, 2.0, size=(3, 4))
SIG = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731


def forward(type_name, spec, *arrays, n_tops=None, params=None):
    layer, tops = run_layer(type_name, spec, arrays, n_tops, params)
    return [t.data for t in tops], layer


def lrn_across(x, n, alpha, beta, k):
    sq = np.pad(x ** 2, ((0, 0), (n // 2, n // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + x.shape[1]] for i in range(n))
    return x * (k + alpha / n * window) ** -beta


def lrn_within(x, n, alpha, beta):
    sq = np.pad(x ** 2, ((0, 0), (0, 0), (n // 2, n // 2), (n // 2, n // 2)))
    h, w = x.shape[2:]
    window = sum(sq[:, :, i:i + h, j:j + w] for i in range(n) for j in range(n))
    return x * (1 + alpha / n ** 2 * window) ** -beta


def im2col_ref(x, k):
    """(N, C*k*k, OH, OW): channel c*k*k + i*k + j holds x[:, c, y + i, x + j] (stride 1, no pad)."""
    n, c, h, w = x.shape
    out = np.empty((n, c, k, k, h - k + 1, w - k + 1))
    for i in range(k):
        for j in range(k):
            out[:, :, i, j] = x[:, :, i:i + h - k + 1, j:j + w - k + 1]
    return out.reshape(n, c * k * k, h - k + 1, w - k + 1)


CASES = {
    "BatchReindex": ({}, [X, np.array([1, 0, 1.0])], lambda x, i: [x[i.astype(int)]]),
    "Python": ({"python_param": {"module": "tests.pylayer_cases", "layer": "Cube", "param_str": "2"}}, [X],
               lambda x: [2 * x ** 3]),
    "Im2col": ({"convolution_param": {"kernel_size": 2}}, [X], lambda x: [im2col_ref(x, 2)]),
    "Sigmoid": ({}, [X], lambda x: [SIG(x)]),
    "TanH": ({}, [X], lambda x: [np.tanh(x)]),
    "AbsVal": ({}, [X], lambda x: [np.abs(x)]),
    "BNLL": ({}, [X * 30], lambda x: [np.logaddexp(0, x)]),
    "ELU": ({"elu_param": {"alpha": 0.5}}, [X], lambda x: [np.where(x > 0, x, 0.5 * (np.exp(x) - 1))]),
    "Power": ({"power_param": {"power": 1.5, "scale": 2, "shift": 0.5}}, [POS], lambda x: [(0.5 + 2 * x) ** 1.5]),
    "Exp": ({"exp_param": {"base": 3, "scale": 0.5, "shift": 1}}, [X], lambda x: [3.0 ** (1 + 0.5 * x)]),
    "Log": ({"log_param": {"base": 2, "scale": 3, "shift": 1}}, [POS], lambda x: [np.log2(1 + 3 * x)]),
    "Clip": ({"clip_param": {"min": -0.3, "max": 0.4}}, [X], lambda x: [np.clip(x, -0.3, 0.4)]),
    "Threshold": ({"threshold_param": {"threshold": 0.2}}, [X], lambda x: [(x > 0.2).astype(float)]),
    "Swish": ({"swish_param": {"beta": 2}}, [X], lambda x: [x * SIG(2 * x)]),
    "PReLU": ({}, [X], lambda x: [np.where(x > 0, x, 0.25 * x)]),
    "Maxout": ({"maxout_param": {"num_pieces": 2}}, [X], lambda x: [x.reshape(2, 3, 2, 3, 3).max(axis=2)]),
    "MVN": ({}, [X], lambda x: [(x - x.mean(axis=(2, 3), keepdims=True)) /
                                (x.std(axis=(2, 3), keepdims=True) + 1e-9)]),
    "LRN": ({"lrn_param": {"local_size": 3, "alpha": 0.4, "beta": 0.6, "k": 1.5}}, [X],
            lambda x: [lrn_across(x, 3, 0.4, 0.6, 1.5)]),
    "Crop": ({"crop_param": {"axis": 2, "offset": [1, 0]}}, [X, np.zeros((2, 6, 2, 2))], lambda x, r: [x[:, :, 1:3, 0:2]]),
    "Slice": ({"slice_param": {"slice_point": [2, 5]}}, [X], lambda x: [x[:, :2], x[:, 2:5], x[:, 5:]]),
    "Tile": ({"tile_param": {"tiles": 2, "axis": 2}}, [X], lambda x: [np.concatenate([x, x], axis=2)]),
    "Reduction": ({"reduction_param": {"operation": "SUMSQ", "axis": 1, "coeff": 2}}, [X],
                  lambda x: [2 * (x ** 2).reshape(2, -1).sum(1)]),
    "ArgMax": ({"argmax_param": {"top_k": 2, "out_max_val": True}}, [X[:, :, 0, 0]],
               lambda x: [np.stack([np.argsort(-x, 1)[:, :2], -np.sort(-x, 1)[:, :2]], axis=1)]),
    "EuclideanLoss": ({}, [POS, POS[::-1]], lambda a, b: [((a - b) ** 2).sum() / (2 * 3)]),
    "SigmoidCrossEntropyLoss": ({}, [X[:, 0], (X[:, 1] > 0).astype(float)],
                                lambda x, t: [-(t * np.log(SIG(x)) + (1 - t) * np.log(1 - SIG(x))).sum() / 2]),
    "MultinomialLogisticLoss": ({}, [POS / POS.sum(1, keepdims=True), np.array([0, 3, 1.0])],
                                lambda p, l: [-np.log(p[np.arange(3), l.astype(int)]).mean()]),
    "HingeLoss": ({}, [X[:, :4, 0, 0], np.array([1, 3.0])],
                  lambda x, l: [sum(np.maximum(0, 1 + np.where(np.arange(4) == int(li), -xi, xi)).sum()
                                    for xi, li in zip(x, l)) / 2]),
    "ContrastiveLoss": ({"contrastive_loss_param": {"margin": 3}}, [X[:, :3, 0, 0], X[:, 3:, 0, 0], np.array([1, 0.0])],
                        lambda a, b, s: [(np.where(s > 0, ((a - b) ** 2).sum(1),
                                                   np.maximum(3 - np.sqrt(((a - b) ** 2).sum(1)), 0) ** 2)).sum() / 4]),
}


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_forward_matches_numpy_reference(type_name):
    spec, arrays, ref = CASES[type_name]
    n_tops = 3 if type_name == "Slice" else None
    out, _ = forward(type_name, spec, *arrays, n_tops=n_tops)
    for got, want in zip(out, ref(*arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_lrn_within_channel_ignores_k_and_counts_padding():
    out, _ = forward("LRN", {"lrn_param": {"local_size": 3, "alpha": 0.4, "beta": 0.6, "k": 9,
                                           "norm_region": "WITHIN_CHANNEL"}}, X)
    np.testing.assert_allclose(out[0], lrn_within(X, 3, 0.4, 0.6), rtol=1e-10)


def test_scale_and_bias_broadcast_over_the_other_axes():
    s, b = R.normal(size=6), R.normal(size=6)
    out, _ = forward("Scale", {"scale_param": {"bias_term": True}}, X, params=[s, b])
    np.testing.assert_allclose(out[0], X * s[None, :, None, None] + b[None, :, None, None])
    s2 = R.normal(size=(2, 6))
    out, _ = forward("Scale", {"scale_param": {"axis": 0}}, X, s2)                      # two-bottom form
    np.testing.assert_allclose(out[0], X * s2[:, :, None, None])
    out, _ = forward("Bias", {"bias_param": {"axis": 2, "num_axes": -1}}, X, params=[R.normal(size=(3, 3))])
    out2, layer = forward("Bias", {"bias_param": {"axis": 2, "num_axes": -1}}, X)
    np.testing.assert_allclose(out2[0], X + layer.blobs[0].data[None, None])


def test_silence_and_split():
    out, _ = forward("Split", {}, X, n_tops=2)
    assert all(np.array_equal(o, X) for o in out)
    out, _ = forward("Silence", {"top": []}, X)
    assert out == []


def test_deconvolution_is_the_transpose_of_convolution():
    """<conv(x), y> == <x, deconv(y)> for the same weights (no bias)."""
    x, w = R.normal(size=(2, 3, 7, 7)), R.normal(size=(4, 3, 3, 3))
    cp = {"num_output": 4, "kernel_size": 3, "stride": 2, "pad": 1, "bias_term": False}
    (cx,), _ = forward("Convolution", {"convolution_param": cp}, x, params=[w])
    y = R.normal(size=cx.shape)
    (dy,), _ = forward("Deconvolution", {"convolution_param": dict(cp, num_output=3)}, y, params=[w])
    assert dy.shape == x.shape                                     # 2 * (4 - 1) + 3 - 2 = 7
    assert float((cx * y).sum()) == pytest.approx(float((x * dy).sum()), rel=1e-10)


def test_embed_looks_up_rows_and_rejects_bad_indices():
    w = R.normal(size=(5, 3))
    out, _ = forward("Embed", {"embed_param": {"num_output": 3, "input_dim": 5, "bias_term": False}},
                     np.array([[4, 0], [2, 2.0]]), params=[w])
    np.testing.assert_array_equal(out[0], w[[[4, 0], [2, 2]]])
    from netspec.errors import UserError
    with pytest.raises(UserError, match="index 7 at position 1 .* not an integer in 0..4"):
        forward("Embed", {"embed_param": {"num_output": 3, "input_dim": 5}}, np.array([1, 7.0]))


def test_parameter_exposes_its_blob():
    out, layer = forward("Parameter", {"parameter_param": {"shape": {"dim": [2, 2]}}}, params=[np.eye(2)])
    np.testing.assert_array_equal(out[0], np.eye(2))


def test_infogain_with_identity_matrix_equals_softmax_loss():
    x, lab = R.normal(size=(5, 4)), np.array([0, 3, 1, 1, 2.0])
    out, _ = forward("InfogainLoss", {}, x, lab, np.eye(4))
    ref, _ = forward("SoftmaxWithLoss", {}, x, lab)
    assert float(out[0]) == pytest.approx(float(ref[0]), rel=1e-12)


def test_accuracy_per_class_top():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    out, _ = forward("Accuracy", {}, scores, np.array([0, 1, 1, 1.0]), n_tops=2)
    assert float(out[0]) == pytest.approx(0.75)
    np.testing.assert_allclose(out[1], [1.0, 2 / 3])


def test_pooling_mask_top_holds_the_flat_argmax():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out, _ = forward("Pooling", {"pooling_param": {"kernel_size": 2, "stride": 2}}, x, n_tops=2)
    np.testing.assert_array_equal(out[1][0, 0], [[5, 7], [13, 15]])


def test_every_type_has_a_forward_reference_somewhere():
    import inspect
    import tests.test_caffe_layers as caffe_layer_tests
    import tests.test_recurrent as recurrent_tests
    import tests.test_data as data_tests
    import tests.test_layers_forward as other
    import tests.test_net as net_tests
    text = "".join(inspect.getsource(m) for m in (other, data_tests, net_tests, caffe_layer_tests, recurrent_tests))
    text += inspect.getsource(inspect.getmodule(test_every_type_has_a_forward_reference_somewhere))
    missing = [t for t in REGISTRY if f'"{t}"' not in text and f"type: {t}" not in text]
    assert not missing, f"no forward reference test mentions {missing}"


def test_modern_activations_against_their_formulas():
    import math
    x = R.normal(size=(3, 5)) * 3
    erf, erfc = np.vectorize(math.erf), np.vectorize(math.erfc)
    (y,), _ = forward("GELU", {}, x)
    np.testing.assert_allclose(y, 0.5 * x * (1 + erf(x / np.sqrt(2))), rtol=1e-9)  # 1 + erf cancels for x << 0
    np.testing.assert_allclose(y, 0.5 * x * erfc(-x / np.sqrt(2)), rtol=1e-12)
    (y,), _ = forward("Mish", {}, x)
    np.testing.assert_allclose(y, x * np.tanh(np.log1p(np.exp(x))), rtol=1e-12)
    (y,), _ = forward("HardSwish", {}, x)
    np.testing.assert_allclose(y, x * np.clip(x + 3, 0, 6) / 6, rtol=1e-12)
    (y,), _ = forward("SiLU", {}, x)
    np.testing.assert_allclose(y, x * SIG(x), rtol=1e-12)


def test_label_smoothing_and_class_weights_are_pytorchs_cross_entropy():
    """PyTorch's F.cross_entropy(x, y, weight=w, label_smoothing=e): each example's -sum_c t_c log softmax_c with
    t = (1 - e) onehot + e / C, times w[y], divided by the sum of w[y]."""
    x = R.normal(size=(6, 4))
    y = np.array([0, 3, 1, 1, 2, 3.0])
    w, e = np.array([1.0, 0.5, 2.0, 1.5]), 0.15
    (loss,), _ = forward("SoftmaxWithLoss", {"loss_param": {"label_smoothing": e, "class_weight": list(w)}}, x, y)
    logq = x - np.log(np.exp(x).sum(1, keepdims=True))
    t = np.full((6, 4), e / 4)
    t[np.arange(6), y.astype(int)] += 1 - e
    per = -(t * logq).sum(1)
    ww = w[y.astype(int)]
    assert float(loss) == pytest.approx(float((per * ww).sum() / ww.sum()), rel=1e-12)
    (plain,), _ = forward("SoftmaxWithLoss", {"loss_param": {"label_smoothing": e}}, x, y)
    assert float(plain) == pytest.approx(float(per.mean()), rel=1e-12)


def test_layer_norm_and_group_norm_are_pytorchs():
    x = R.normal(size=(2, 4, 3, 3))
    g, b = R.normal(size=(4, 3, 3)), R.normal(size=(4, 3, 3))
    (y,), _ = forward("LayerNorm", {"layer_norm_param": {"eps": 1e-5}}, x, params=[g, b])
    flat = x.reshape(2, -1)
    ref = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref.reshape(x.shape) * g + b, rtol=1e-10)
    gc, bc = R.normal(size=4), R.normal(size=4)
    (y,), _ = forward("GroupNorm", {"group_norm_param": {"num_groups": 2}}, x, params=[gc, bc])
    grp = x.reshape(2, 2, -1)
    ref = ((grp - grp.mean(2, keepdims=True)) / np.sqrt(grp.var(2, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(y, ref * gc[None, :, None, None] + bc[None, :, None, None], rtol=1e-10)


def test_smooth_l1_is_fast_rcnns():
    a, b = R.normal(size=(4, 3)) * 2, R.normal(size=(4, 3))
    w_in, w_out = R.uniform(0.5, 1.5, (4, 3)), R.uniform(0.5, 1.5, (4, 3))
    (loss,), _ = forward("SmoothL1Loss", {"smooth_l1_loss_param": {"sigma": 2}}, a, b, w_in, w_out)
    x = w_in * (a - b)
    f = np.where(np.abs(x) < 0.25, 0.5 * 4 * x * x, np.abs(x) - 0.125)
    assert float(loss) == pytest.approx(float((w_out * f).sum() / 4), rel=1e-12)


def test_focal_loss_is_lin_et_als():
    x, y = R.normal(size=(5, 3)), np.array([0, 2, 1, 1, 0.0])
    (loss,), _ = forward("SoftmaxWithLoss", {"loss_param": {"focal_gamma": 2}}, x, y)
    q = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    p = q[np.arange(5), y.astype(int)]
    assert float(loss) == pytest.approx(float(np.mean(-(1 - p) ** 2 * np.log(p))), rel=1e-12)


def test_drop_path_drops_whole_examples_and_keeps_the_mean():
    x = np.ones((4000, 3, 2))
    (y,), _ = forward("DropPath", {"drop_path_param": {"drop_prob": 0.25}}, x)
    per_example = y.reshape(4000, -1)
    assert set(np.unique(per_example)) <= {0.0, 1 / 0.75}
    assert (per_example == per_example[:, :1]).all()  # a whole example, never parts of one
    assert abs(per_example[:, 0].mean() - 1) < 0.05
    (t,), _ = forward("DropPath", {"phase": "TEST", "drop_path_param": {"drop_prob": 0.25}}, x)
    np.testing.assert_array_equal(t, x)


@pytest.mark.parametrize("chans, size", [(1, 5), (3, 5), (4, 3), (7, 1), (9, 5), (6, 7)])
def test_lrn_across_channels_running_sums_equal_the_window_formula(chans, size):
    """The running sums over channels (Caffe's order) against the window sums written out, forward and backward,
    including windows wider than the channels."""
    from layers.lrn import lrn_across_backward, lrn_across_scale
    rng = np.random.default_rng(chans * 10 + size)
    x, dy = rng.normal(size=(2, chans, 3, 4)), rng.normal(size=(2, chans, 3, 4))
    alpha, beta, k, pre = 0.7, 0.6, 1.3, (size - 1) // 2
    window = [slice(max(c - pre, 0), min(c + pre + 1, chans)) for c in range(chans)]
    expect = np.stack([k + alpha / size * (x[:, w] ** 2).sum(axis=1) for w in window], axis=1)
    scale = np.empty_like(x)
    lrn_across_scale(x, size, alpha / size, k, scale)
    np.testing.assert_allclose(scale, expect, rtol=1e-12)
    y = x * scale ** -beta
    ratio = dy * y / scale
    coeff = 2 * alpha * beta / size
    expect_dx = dy * scale ** -beta - coeff * x * np.stack([ratio[:, w].sum(axis=1) for w in window], axis=1)
    dx = np.empty_like(x)
    lrn_across_backward(x, y, scale, dy, size, coeff, beta, dx)
    np.testing.assert_allclose(dx, expect_dx, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("type_name, spec, shape", [
    ("LayerNorm", {}, (3, 4, 5)), ("LayerNorm", {"layer_norm_param": {"axis": 2}}, (2, 3, 6)),
    ("GroupNorm", {"group_norm_param": {"num_groups": 2}}, (2, 4, 3, 5)),
    ("GroupNorm", {"group_norm_param": {"num_groups": 4}}, (3, 4, 7))])
def test_layernorm_and_groupnorm_with_learned_gamma_and_beta_against_numpy(type_name, spec, shape):
    """Forward, bottom diff and gamma/beta gradients with random gamma and beta (their fillers make them 1 and 0,
    under which the gradient checks cannot see gamma in the bottom diff), against a NumPy formula, float64."""
    from layers.base import Blob
    from tests.gradcheck import make_layer
    rng = np.random.default_rng(7)
    x, dtop = rng.normal(size=shape) * 2 + 1, rng.normal(size=shape)
    layer, tops = make_layer(type_name, spec, [shape])
    gamma, beta = (rng.normal(size=b.shape) for b in layer.blobs)
    layer.blobs[0].data[...], layer.blobs[1].data[...] = gamma, beta
    bottom = Blob("x", shape, np.float64)
    bottom.data[...] = x
    layer.forward([bottom], tops)
    tops[0].diff[...] = dtop
    layer.backward(tops, [True], [bottom])
    if type_name == "LayerNorm":
        a = spec.get("layer_norm_param", {}).get("axis", 1)
        rows, g_full, b_full = x.reshape(int(np.prod(shape[:a])), -1), gamma.reshape(1, -1), beta.reshape(1, -1)
        per_row = lambda v: v.reshape(rows.shape)  # noqa: E731
    else:
        groups = spec["group_norm_param"]["num_groups"]
        rows = x.reshape(shape[0] * groups, -1)
        inner = int(np.prod(shape[2:]))
        g_full = np.tile(np.repeat(gamma, inner).reshape(groups, -1), (shape[0], 1))
        b_full = np.tile(np.repeat(beta, inner).reshape(groups, -1), (shape[0], 1))
        per_row = lambda v: v.reshape(rows.shape)  # noqa: E731
    mu, var = rows.mean(1, keepdims=True), rows.var(1, keepdims=True)
    inv = 1 / np.sqrt(var + 1e-5)
    y = (rows - mu) * inv
    np.testing.assert_allclose(tops[0].data.reshape(rows.shape), y * g_full + b_full, rtol=1e-10, atol=1e-12)
    d = per_row(dtop) * g_full
    dx = inv * (d - d.mean(1, keepdims=True) - y * (d * y).mean(1, keepdims=True))
    np.testing.assert_allclose(bottom.diff.reshape(rows.shape), dx, rtol=1e-9, atol=1e-12)
    dg, db = per_row(dtop) * y, per_row(dtop)
    if type_name == "LayerNorm":
        dg, db = dg.sum(0), db.sum(0)
    else:
        dg = dg.reshape(shape[0], shape[1], -1).sum(axis=(0, 2))
        db = db.reshape(shape[0], shape[1], -1).sum(axis=(0, 2))
    np.testing.assert_allclose(layer.blobs[0].diff.ravel(), dg.ravel(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].diff.ravel(), db.ravel(), rtol=1e-10, atol=1e-12)
