"""The net compiler and Net: phases, splits, in-place layers, loss weights, backward planning."""
import os

import numpy as np
import pytest

from netspec.errors import SpecError
from netspec.loader import loads
from netspec.net import Net

SHARED = """
name: shared
layer:
  - {name: in, type: Input, top: [data, label], input_param: {shape: [{dim: [4, 5]}, {dim: [4]}]}}
  - name: ip_a
    type: InnerProduct
    bottom: data
    top: a
    inner_product_param: {num_output: 6, weight_filler: {type: gaussian, std: 0.5}, bias_filler: {type: uniform}}
  - {name: relu, type: ReLU, bottom: a, top: a, relu_param: {negative_slope: 0.2}}
  - name: ip_b
    type: InnerProduct
    bottom: a
    top: b
    inner_product_param: {num_output: 3, weight_filler: {type: gaussian}}
  - name: ip_c
    type: InnerProduct
    bottom: a
    top: c
    inner_product_param: {num_output: 3, weight_filler: {type: gaussian}}
  - {name: loss_b, type: SoftmaxWithLoss, bottom: [b, label], top: loss_b}
  - {name: loss_c, type: SoftmaxWithLoss, bottom: [c, label], top: loss_c, loss_weight: 0.5}
  - {name: acc, type: Accuracy, bottom: [b, label], top: acc}
"""


def shared_net(dtype=np.float64):
    net = Net(loads(SHARED, "shared.yaml"), "TRAIN", "shared.yaml", seed=3, dtype=dtype)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(size=(4, 5))
    net.blobs["label"].data[...] = [0, 2, 1, 2]
    return net


def assert_param_gradients(net, stride, eps=1e-6):
    """Backward's param diffs against central differences of the net's loss (every `stride`-th element of
    each learned param); returns how many elements were checked."""
    net.forward()
    net.clear_param_diffs()
    net.backward()
    checked = 0
    for p in net.params:
        if p.lr_mult == 0:
            continue
        w, g = p.blob.data.reshape(-1), p.blob.diff.reshape(-1).copy()
        for k in range(0, w.size, stride):
            keep = w[k]
            w[k] = keep + eps
            up = net.forward()
            w[k] = keep - eps
            down = net.forward()
            w[k] = keep
            assert g[k] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8), (p.key, k)
            checked += 1
    return checked


def test_split_is_inserted_for_a_blob_read_by_several_layers():
    net = shared_net()
    types = [(d.name, d.type) for d in net.defs]
    assert ("a_relu_0_split", "Split") in types
    assert ("b_ip_b_0_split", "Split") in types
    assert net.outputs == ["loss_b", "loss_c", "acc"]
    # accuracy does not feed the loss: it never runs backward
    assert net.need_backward[[d.name for d in net.defs].index("acc")] is False


def test_net_gradient_sums_over_consumers_and_applies_loss_weights():
    """Numerical gradient of the whole net (float64) against backward: splits, in place, loss weights."""
    assert_param_gradients(shared_net(), stride=3)


def test_loss_is_weighted_sum_of_loss_tops():
    net = shared_net()
    total = net.forward()
    assert total == pytest.approx(float(net.blobs["loss_b"].data) + 0.5 * float(net.blobs["loss_c"].data))


def test_any_top_can_carry_a_loss_weight():
    spec = loads("""
layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [2, 3]}}}
  - {name: r, type: ReLU, bottom: x, top: y, loss_weight: 2}
""")
    net = Net(spec, "TRAIN", seed=0)
    net.blobs["x"].data[...] = [[1, -1, 2], [0.5, 3, -4]]
    assert net.forward() == pytest.approx(2 * (1 + 2 + 0.5 + 3))


def test_phase_filtering_keeps_include_and_drops_exclude():
    spec = loads("""
layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [2, 3]}}}
  - {name: r_train, type: ReLU, bottom: x, top: y, include: {phase: TRAIN}}
  - {name: r_test, type: ReLU, bottom: x, top: y, exclude: [{phase: TRAIN}]}
""")
    assert [d.name for d in Net(spec, "TRAIN", seed=0).defs] == ["in", "r_train"]
    assert [d.name for d in Net(spec, "TEST", seed=0).defs] == ["in", "r_test"]


def test_in_place_relu_shares_the_blob():
    net = shared_net()
    relu = [d.name for d in net.defs].index("relu")
    assert net.top_vecs[relu][0] is net.bottom_vecs[relu][0]


def errors_of(text, phase="TRAIN"):
    with pytest.raises(SpecError) as e:
        Net(loads(text, "net.yaml"), phase, "net.yaml", seed=0)
    return [str(f) for f in e.value.findings]


def test_unknown_bottom_names_line_and_the_fix():
    errs = errors_of("""layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 3]}}}
  - {name: ip, type: InnerProduct, bottom: dta, top: ip, inner_product_param: {num_output: 2}}
""")
    assert len(errs) == 1
    assert errs[0].startswith("net.yaml:3:")
    assert "layer 'ip' (InnerProduct): bottom 'dta' is not produced" in errs[0] and "did you mean 'data'" in errs[0]


def test_bottom_from_the_other_phase_is_explained():
    errs = errors_of("""layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 3]}}, include: {phase: TEST}}
  - {name: r, type: ReLU, bottom: data, top: data}
""")
    assert "not in the TRAIN net" in errs[0]


def test_in_place_after_another_reader_is_an_error_not_silently_wrong():
    errs = errors_of("""layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [2, 3]}}}
  - {name: ip, type: InnerProduct, bottom: x, top: y, inner_product_param: {num_output: 2}}
  - {name: r, type: ReLU, bottom: x, top: x}
""")
    assert "changes 'x' in place, but layer 'ip' listed before it also reads 'x'" in errs[0]
    assert errs[0].startswith("net.yaml:4:")


def test_layer_setup_errors_point_at_the_field():
    errs = errors_of("""layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [1, 1, 4, 4]}}}
  - name: conv
    type: Convolution
    bottom: x
    top: y
    convolution_param:
      num_output: 2
      kernel_size: 7
""")
    assert errs[0].startswith("net.yaml:9:20: error: layer 'conv' (Convolution): kernel 7x7")


def test_two_producers_of_one_top_is_an_error():
    errs = errors_of("""layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [2, 3]}}}
  - {name: a, type: InnerProduct, bottom: x, top: y, inner_product_param: {num_output: 2}}
  - {name: b, type: InnerProduct, bottom: x, top: y, inner_product_param: {num_output: 2}}
""")
    assert any("top 'y' is already produced by layer 'a'" in e for e in errs)


def test_test_net_shares_weights_with_train_net():
    train = shared_net(np.float32)
    test = Net(loads(SHARED, "shared.yaml"), "TEST", "shared.yaml", seed=99)
    test.share_weights_from(train)
    assert test.layer_by_name("ip_a").blobs[0] is train.layer_by_name("ip_a").blobs[0]


def test_zoo_net_of_every_layer_type_has_correct_param_gradients():
    """Whole-net central differences (float64, TEST phase so Dropout is the identity) through every layer
    type: in-place chains, both poolings, the automatic Splits, and eight weighted losses."""
    import os
    from netspec.loader import load
    path = os.path.join(os.path.dirname(__file__), "fixtures", "zoo.yaml")
    net = Net(load(path), "TEST", path, seed=4, dtype=np.float64)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.normal(size=net.blobs["data"].shape)
    net.blobs["label"].data[...] = [0, 4, 2, 1]
    net.blobs["ids"].data[...] = rng.integers(0, 6, (4, 3))
    net.blobs["target"].data[...] = rng.uniform(size=(4, 5))
    net.blobs["sim"].data[...] = [1, 0, 0, 1]
    net.layer_by_name("H").blobs[0].data[...] = rng.uniform(size=(5, 5))
    bn = net.layer_by_name("bn")
    bn.blobs[0].data[...], bn.blobs[1].data[...], bn.blobs[2].data[...] = 0.1, 2.0, 1.0
    assert assert_param_gradients(net, stride=7) > 50


def test_net_phase_switches_dropout_and_batchnorm_at_forward_time():
    spec = loads("""
layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [8, 3]}}}
  - {name: bn, type: BatchNorm, bottom: x, top: y}
  - {name: drop, type: Dropout, bottom: y, top: z}
""")
    net = Net(spec, "TRAIN", seed=0)
    net.blobs["x"].data[...] = np.random.default_rng(0).normal(3, 2, size=(8, 3))
    net.forward()
    assert abs(net.blobs["y"].data.mean()) < 1e-5            # batch statistics
    assert (net.blobs["z"].data == 0).any()                   # dropped units
    net.phase = "TEST"
    net.forward()
    np.testing.assert_array_equal(net.blobs["z"].data, net.blobs["y"].data)   # Dropout: identity
    bn = net.layer_by_name("bn")
    mean = bn.blobs[0].data / bn.blobs[2].data
    var = bn.blobs[1].data / bn.blobs[2].data
    np.testing.assert_allclose(net.blobs["y"].data, (net.blobs["x"].data - mean) / np.sqrt(var + 1e-5), rtol=1e-5)


def test_shared_param_by_name_sums_gradients_from_both_layers():
    spec = loads("""
layer:
  - {name: in, type: Input, top: [a, b, label], input_param: {shape: [{dim: [3, 4]}, {dim: [3, 4]}, {dim: [3]}]}}
  - {name: fa, type: InnerProduct, bottom: a, top: fa, param: [{name: w}, {name: bias}],
     inner_product_param: {num_output: 2, weight_filler: {type: gaussian}}}
  - {name: fb, type: InnerProduct, bottom: b, top: fb, param: [{name: w}, {name: bias}],
     inner_product_param: {num_output: 2}}
  - {name: s, type: Eltwise, bottom: [fa, fb], top: s}
  - {name: loss, type: SoftmaxWithLoss, bottom: [s, label], top: loss}
""")
    net = Net(spec, "TRAIN", seed=0, dtype=np.float64)
    rng = np.random.default_rng(2)
    net.blobs["a"].data[...] = rng.normal(size=(3, 4))
    net.blobs["b"].data[...] = rng.normal(size=(3, 4))
    net.blobs["label"].data[...] = [0, 1, 1]
    assert net.layer_by_name("fa").blobs[0] is net.layer_by_name("fb").blobs[0]
    assert len(net.params) == 2                                     # one owner per shared blob
    net.forward()
    net.clear_param_diffs()
    net.backward()
    w = net.params[0].blob
    k, eps = 5, 1e-6
    keep = w.data.flat[k]
    w.data.flat[k] = keep + eps
    up = net.forward()
    w.data.flat[k] = keep - eps
    down = net.forward()
    assert w.diff.flat[k] == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_propagate_down_false_stops_the_gradient_and_force_backward_starts_it():
    spec = loads("""
force_backward: true
layer:
  - {name: in, type: Input, top: [x, label], input_param: {shape: [{dim: [2, 3]}, {dim: [2]}]}}
  - {name: ip, type: InnerProduct, bottom: x, top: y, inner_product_param: {num_output: 3, weight_filler: {type: gaussian}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [y, label], top: loss}
""")
    net = Net(spec, "TRAIN", seed=0)
    net.blobs["x"].data[...] = 1
    net.forward()
    net.backward()
    assert np.abs(net.blobs["x"].diff).sum() > 0                   # force_backward reaches the input
    spec["layer"][2]["propagate_down"] = [False, False]
    net = Net(spec, "TRAIN", seed=0)
    net.forward()
    net.backward()
    assert not net.need_backward[1] or not np.abs(net.layer_by_name("ip").blobs[0].diff).any()


def test_flatten_and_reshape_tops_are_views_of_their_bottom():
    net = Net(loads("""
name: views
layer:
  - {name: in, type: Input, top: x, input_param: {shape: {dim: [2, 3, 4]}}}
  - {name: ip, type: InnerProduct, bottom: x, top: h, inner_product_param: {num_output: 6, weight_filler: {type: gaussian}}}
  - {name: flat, type: Flatten, bottom: h, top: f}
  - {name: re, type: Reshape, bottom: f, top: r, reshape_param: {shape: {dim: [0, 2, 3]}}}
  - {name: in2, type: DummyData, top: r2, dummy_data_param: {shape: {dim: [2, 2, 3]}}}
  - {name: loss, type: EuclideanLoss, bottom: [r, r2]}
""", "<t>"), "TRAIN", seed=0)
    h, r = net.blobs["h"], net.blobs["r"]
    assert np.shares_memory(r.data, h.data) and np.shares_memory(r.diff, h.diff)
    net.blobs["x"].data[...] = np.random.default_rng(0).normal(size=(2, 3, 4))
    net.forward_backward()
    np.testing.assert_array_equal(r.data.ravel(), h.data.ravel())
    assert np.abs(net.params[0].blob.diff).sum() > 0  # the gradient flowed through the views


def test_params_live_in_one_array_each_for_data_and_diff():
    """Every param's data and diff are views of net.param_data / param_diff, in the order of net.params (the
    solver updates them in one kernel); the filled weights survive the move; clear_param_diffs zeroes all."""
    spec = loads("""
layer:
  - {name: in, type: Input, top: [x, label], input_param: {shape: [{dim: [3, 4]}, {dim: [3]}]}}
  - {name: a, type: InnerProduct, bottom: x, top: a, inner_product_param: {num_output: 5, weight_filler: {type: gaussian}}}
  - {name: b, type: InnerProduct, bottom: a, top: b, param: [{lr_mult: 0}, {}],
     inner_product_param: {num_output: 3, weight_filler: {type: uniform, min: 2, max: 3}, bias_filler: {type: constant, value: 1}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [b, label], top: loss}
""")
    net = Net(spec, "TRAIN", seed=0)
    sizes = [p.blob.data.size for p in net.params]
    assert sizes == [20, 5, 15, 3] and net.param_data.size == net.param_diff.size == sum(sizes)
    start = 0
    for p, n in zip(net.params, sizes):
        assert p.blob.data.base is net.param_data and p.blob.diff.base is net.param_diff
        np.testing.assert_array_equal(net.param_data[start:start + n], p.blob.data.ravel())
        start += n
    assert (net.params[2].blob.data >= 2).all() and (net.params[3].blob.data == 1).all()
    assert np.abs(net.params[0].blob.data).sum() > 0
    net.blobs["x"].data[...] = np.random.default_rng(0).normal(size=(3, 4))
    net.forward_backward()
    assert all(np.abs(p.blob.diff).sum() > 0 for p in net.params if p.lr_mult)
    net.clear_param_diffs()
    assert not net.param_diff.any()


def test_building_a_net_flushes_float32_denormals_to_zero():
    """Denormals (a loss near 0, vanishing gradients) slow x86 10-100x; yaffe flushes them like Caffe's Intel
    builds. YAFFE_DENORMALS=keep keeps them."""
    import platform
    import subprocess
    import sys
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("MXCSR is x86's")
    code = ("import numpy as np; from netspec.loader import loads; from netspec.net import Net; "
            "from layers.kernels import scale_into\n"
            "np.ones((512, 512), np.float32) @ np.ones((512, 512), np.float32)\n"  # OpenBLAS's threads exist already
            "Net(loads('layer: [{name: i, type: Input, top: x, input_param: {shape: {dim: [1]}}}]', '<t>'), 'TEST')\n"
            # a denormal from its bits (5.9e-39): converting 1e-39 under FTZ would give 0 before any check
            "x = np.full(4, 0x00400000, np.uint32).view(np.float32); y = np.empty_like(x); scale_into(x, 1.0, y)\n"
            "a, b = np.full((512, 100), 0x00400000, np.uint32).view(np.float32), np.ones((100, 512), np.float32)\n"
            "from layers.cpu import gemm; c = np.empty((512, 512), np.float32); gemm(a, b, c)\n"  # Numba's threads
            "print(float(x[0] * np.float32(1)), float(y[0]), float(np.abs(a @ b).max()), float(np.abs(c).max()))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flushed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert flushed.stdout.split() == ["0.0", "0.0", "0.0", "0.0"], flushed.stderr
    env = dict(os.environ, YAFFE_DENORMALS="keep")
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env,
                          timeout=120)
    assert [0 < float(v) < 1.2e-38 for v in kept.stdout.split()[:2]] == [True, True], kept.stdout + kept.stderr
    assert float(kept.stdout.split()[2]) > 0 and float(kept.stdout.split()[3]) > 0  # 100 denormals: 5.9e-37


FOLD_NET = """
layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [3, 4, 7, 7]}}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 6, kernel_size: 3, pad: 1, bias_term: false}}
  - {name: bn1, type: BatchNorm, bottom: conv1, top: conv1}
  - {name: scale1, type: Scale, bottom: conv1, top: conv1, scale_param: {bias_term: true}}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}
  - {name: conv2, type: Convolution, bottom: conv1, top: conv2,
     convolution_param: {num_output: 6, kernel_size: 3, stride: 2, group: 6}}
  - {name: bn2, type: BatchNorm, bottom: conv2, top: conv2}
  - {name: conv3, type: Convolution, bottom: conv2, top: conv3, convolution_param: {num_output: 5, kernel_size: 1}}
  - {name: bn3, type: BatchNorm, bottom: conv3, top: bn3}
"""


@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_inference_folds_batch_norm_and_scale_into_the_convolution_with_the_same_outputs(phase):
    from netspec.loader import loads as load_yaml
    net = Net(load_yaml(FOLD_NET), phase, seed=0)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        for i, b in enumerate(layer.blobs):
            b.data[...] = (rng.uniform(0.5, 2, b.shape) if layer.type == "BatchNorm" and i == 1 else
                           np.full(b.shape, 1.5) if layer.type == "BatchNorm" and i == 2 else rng.normal(size=b.shape))
    net.blobs["data"].data[...] = rng.normal(size=(3, 4, 7, 7))
    net.forward()
    want = {k: net.blobs[k].data.copy() for k in ("conv1", "conv2", "conv3", "bn3")}
    net.keep_for_backward = False  # inference: the folds apply where BatchNorm uses its stored statistics
    folds, skipped = net._folds()
    # a convolution without a BatchNorm to fold (conv3, or all in TRAIN) has an empty chain: its weights are laid
    # out for the direct kernels once while they stay unchanged
    assert folds == ({1: (2, 3), 5: (6,), 7: ()} if phase == "TEST" else {1: (), 5: (), 7: ()})
    # bn3 writes a new top: not folded; relu1 (in place, right after the chain) is applied by conv1 as it writes
    # (in TRAIN bn1 runs on batch statistics between them)
    assert skipped == ({2, 3, 4, 6} if phase == "TEST" else set())
    assert net._fold_relus == ({1: 0.0} if phase == "TEST" else {})
    for name in want:
        net.blobs[name].data[...] = 0
    net.forward()
    for name, value in want.items():  # (float32 with sums of several signs: the tolerance scales with the blob's)
        np.testing.assert_allclose(net.blobs[name].data, value, rtol=2e-5, atol=2e-6 * np.abs(value).max(),
                                   err_msg=name)
    assert net.layers[1].fold is None  # only for the pass
    net.layer_by_name("bn1").blobs[1].data *= 2  # weights changed in place (training, Python): folded again
    net.layer_by_name("conv3").blobs[0].data[0, 0, 0, 0] += 1  # and laid out again
    net.layer_by_name("conv1").blobs[0].data[1, 0, 0, 0] -= 1
    assert net.layer_by_name("conv1").path_taken == "direct"  # whose weights are laid out for its own kernels
    net.forward()
    folded = net.blobs["conv3"].data.copy()
    net.keep_for_backward = True
    net.forward()
    np.testing.assert_allclose(folded, net.blobs["conv3"].data, rtol=2e-5, atol=2e-5)
    net.keep_for_backward = False
    for name in ("conv1", "conv3"):
        net.layer_by_name(name).blobs[0].data = net.layer_by_name(name).blobs[0].data * 0.5  # a new array
    net.forward()
    halved = net.blobs["conv3"].data.copy()
    net.keep_for_backward = True
    net.forward()
    np.testing.assert_allclose(halved, net.blobs["conv3"].data, rtol=2e-5, atol=2e-5)
    assert phase == "TRAIN" or not np.allclose(folded, want["conv3"], atol=1e-3)  # TRAIN: batch statistics


RELU_NET = """
layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [2, 8, 9, 9]}}}
  - {name: direct, type: Convolution, bottom: data, top: direct, convolution_param: {num_output: 8, kernel_size: 3, pad: 1}}
  - {name: leaky, type: ReLU, bottom: direct, top: direct, relu_param: {negative_slope: 0.1}}
  - {name: strided, type: Convolution, bottom: direct, top: strided,
     convolution_param: {num_output: 8, kernel_size: 3, stride_h: 2, stride_w: 1}}
  - {name: relu2, type: ReLU, bottom: strided, top: strided}
  - {name: dw, type: Convolution, bottom: strided, top: dw, convolution_param: {num_output: 8, kernel_size: 3, pad: 1, group: 8}}
  - {name: relu3, type: ReLU, bottom: dw, top: dw, relu_param: {negative_slope: 0.3}}
  - {name: apart, type: ReLU, bottom: dw, top: apart}
"""


def test_inference_applies_an_in_place_relu_in_the_convolution_on_every_path():
    """A forward-only net: each convolution writes its top through the in-place ReLU above it (leaky or not), on
    the direct, im2col and depthwise kernels; the tops equal those of the layers run one by one."""
    from netspec.loader import loads as load_yaml
    net = Net(load_yaml(RELU_NET), "TEST", seed=0)
    rng = np.random.default_rng(1)
    for layer in net.layers:
        for b in layer.blobs:
            b.data[...] = rng.normal(size=b.shape)
    net.blobs["data"].data[...] = rng.normal(size=(2, 8, 9, 9))
    net.forward()
    want = {k: net.blobs[k].data.copy() for k in ("direct", "strided", "dw", "apart")}
    net.keep_for_backward = False
    assert net._folds()[1] == {2, 4, 6} and net._fold_relus == {1: pytest.approx(0.1), 3: 0.0, 5: pytest.approx(0.3)}
    for name in want:
        net.blobs[name].data[...] = np.nan
    net.forward()
    assert [net.layer_by_name(n).path_taken for n in ("direct", "strided", "dw")] == ["direct", "im2col", "depthwise"]
    for name, value in want.items():
        assert (value < 0).any() == (name in ("direct", "dw"))  # the leaky ones
        np.testing.assert_allclose(net.blobs[name].data, value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_inference_applies_the_relu_above_an_eltwise_sum_of_two():
    """ResNet's block end: Eltwise SUM (with coefficients) then an in-place ReLU, one pass in a forward-only
    net; equal to the layers one by one. A SUM of three, or a ReLU that is not in place, runs as it is."""
    from netspec.loader import loads as load_yaml
    text = """
layer:
  - {name: data, type: Input, top: [a, b], input_param: {shape: [{dim: [2, 3, 4, 5]}, {dim: [2, 3, 4, 5]}]}}
  - {name: sum, type: Eltwise, bottom: [a, b], top: sum, eltwise_param: {coeff: [0.5, -2]}}
  - {name: relu, type: ReLU, bottom: sum, top: sum, relu_param: {negative_slope: 0.2}}
  - {name: three, type: Eltwise, bottom: [a, b, sum], top: three}
  - {name: relu3, type: ReLU, bottom: three, top: three}
  - {name: two, type: Eltwise, bottom: [a, sum], top: two}
  - {name: apart, type: ReLU, bottom: two, top: apart}
"""
    net = Net(load_yaml(text), "TEST", seed=0)
    rng = np.random.default_rng(2)
    net.blobs["a"].data[...] = rng.normal(size=(2, 3, 4, 5))
    net.blobs["b"].data[...] = rng.normal(size=(2, 3, 4, 5))
    net.forward()
    want = {k: net.blobs[k].data.copy() for k in ("sum", "three", "two", "apart")}
    net.keep_for_backward = False
    assert {net.defs[j].name for j in net._folds()[1]} == {"relu"}
    assert {net.defs[i].name: v for i, v in net._fold_relus.items()} == {"sum": pytest.approx(0.2)}
    for name in want:
        net.blobs[name].data[...] = np.nan
    net.forward()
    assert (want["sum"] < 0).any() and (want["two"] < 0).any()
    for name, value in want.items():
        np.testing.assert_allclose(net.blobs[name].data, value, rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(want["sum"], np.where(0.5 * net.blobs["a"].data - 2 * net.blobs["b"].data > 0, 1, 0.2)
                               * (0.5 * net.blobs["a"].data - 2 * net.blobs["b"].data), rtol=1e-5, atol=1e-6)


def test_a_forward_from_a_later_layer_runs_the_relu_its_convolution_would_have_applied():
    """Net.forward(start): layers folded into one before `start` (which does not run) run themselves."""
    from netspec.loader import loads as load_yaml
    net = Net(load_yaml(RELU_NET), "TEST", seed=0)
    rng = np.random.default_rng(4)
    for layer in net.layers:
        for b in layer.blobs:
            b.data[...] = rng.normal(size=b.shape)
    start = net.keys.index("leaky")
    a = rng.normal(size=net.blobs["direct"].data.shape)
    results = []
    for keep in (True, False):
        net.keep_for_backward = keep
        net.blobs["direct"].data[...] = a
        net.forward(start)
        results.append({k: net.blobs[k].data.copy() for k in ("direct", "strided", "dw")})
    np.testing.assert_allclose(results[0]["direct"], np.where(a > 0, a, 0.1 * a), rtol=1e-6)
    for name in results[0]:
        np.testing.assert_allclose(results[1][name], results[0][name], rtol=1e-5, atol=1e-6, err_msg=name)


BOUND_NET = """
layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 3, 16, 16]}}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 8, kernel_size: 3, pad: 1, bias_term: false}}
  - {name: bn1, type: BatchNorm, bottom: conv1, top: conv1}
  - {name: scale1, type: Scale, bottom: conv1, top: conv1, scale_param: {bias_term: true}}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1, relu_param: {negative_slope: 0.2}}
  - {name: conv2, type: Convolution, bottom: conv1, top: conv2, convolution_param: {num_output: 8, kernel_size: 3, pad: 1}}
  - {name: sum, type: Eltwise, bottom: [conv1, conv2], top: sum}
  - {name: relu2, type: ReLU, bottom: sum, top: sum}
  - {name: pw, type: Convolution, bottom: sum, top: pw, convolution_param: {num_output: 16, kernel_size: 1}}
  - {name: pw_relu, type: ReLU, bottom: pw, top: pw}
  - {name: pw2, type: Convolution, bottom: pw, top: pw2, convolution_param: {num_output: 8, kernel_size: 1}}
  - {name: down, type: Convolution, bottom: sum, top: down, convolution_param: {num_output: 32, kernel_size: 3, pad: 1, stride: 2}}
  - {name: proj, type: Convolution, bottom: sum, top: proj, convolution_param: {num_output: 32, kernel_size: 1, stride: 2}}
  - {name: sum2, type: Eltwise, bottom: [down, proj], top: sum2}
  - {name: pool, type: Pooling, bottom: sum2, top: pool, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: ave, type: Pooling, bottom: sum2, top: ave, pooling_param: {pool: AVE, kernel_size: 3, stride: 2, pad: 1}}
  - {name: max3, type: Pooling, bottom: sum2, top: max3, pooling_param: {pool: MAX, kernel_size: 3, stride: 1}}
  - {name: ip1, type: InnerProduct, bottom: pool, top: ip1, inner_product_param: {num_output: 37}}
  - {name: relu3, type: ReLU, bottom: ip1, top: ip1}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2, inner_product_param: {num_output: 10, bias_term: false}}
  - {name: prob, type: Softmax, bottom: ip2, top: prob}
"""


@pytest.mark.parametrize("pixels", [False, True, "lanes"])
def test_a_forward_only_net_with_constant_weights_runs_its_bound_calls_with_the_loops_results(pixels, monkeypatch):
    """run.py predict and test (constant_weights, no backward): each layer's forward bound once to its blobs
    (Net._bound_calls; a convolution's kernels, pooling's, a batch of one's InnerProduct on row_times_rows) gives
    the tops of the layers run one by one, and binds again after a blob reshaped from Python and after
    weights_changed()."""
    from netspec.loader import loads as load_yaml
    import layers.conv as conv
    import netspec.channels_last as cl
    monkeypatch.setattr(cl, "ENABLED", False)  # (each convolution on its own kernels: test_channels_last.py)
    if pixels == "lanes":  # the forward with the images in the lanes (a fold's bias, a leaky ReLU), any batch
        monkeypatch.setattr(conv, "LANES_FILL", 0.0)
        monkeypatch.setattr(conv, "LANES_PLANE", 1 << 20)
    else:
        monkeypatch.setattr(conv, "PIXELS", pixels)
    rng = np.random.default_rng(3)
    nets = [Net(load_yaml(BOUND_NET), "TEST", seed=0) for _ in range(2)]
    for layer, twin in zip(*(n.layers for n in nets)):
        for i, (b, c) in enumerate(zip(layer.blobs, twin.blobs)):
            b.data[...] = c.data[...] = (rng.uniform(0.5, 2, b.shape) if layer.type == "BatchNorm" and i == 1 else
                                         np.full(b.shape, 1.5) if layer.type == "BatchNorm" and i == 2 else
                                         rng.normal(size=b.shape))
    bound, loop = nets
    bound.keep_for_backward, bound.constant_weights = False, True
    tops = ("conv1", "conv2", "sum", "pw", "pw2", "down", "proj", "sum2", "pool", "ave", "max3", "ip1", "ip2", "prob")

    def check(batch, unwritten=("conv2", "proj")):
        x = rng.normal(size=(batch, 3, 16, 16))
        for n in nets:
            if n.blobs["data"].data.shape[0] != batch:
                n.blobs["data"].reshape(batch, 3, 16, 16)
            n.blobs["data"].data[...] = x
            for t in tops:
                n.blobs[t].data[...] = np.nan
            n.forward()
        for t in tops:
            want = loop.blobs[t].data  # (the folds round in another order: to the tops' scale)
            if t in unwritten:  # it wrote the SUM above it instead (Net._residual_adds): NaN (or zeros, reshaped)
                assert not np.isnan(want).any() and not np.allclose(bound.blobs[t].data, want, atol=1e-3), t
                continue
            np.testing.assert_allclose(bound.blobs[t].data, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=t)

    check(1)
    calls = dict(bound._bound[4])
    names = [bound.layers[i].name for i in calls]
    assert "bn1" not in names and "relu1" not in names and "relu2" not in names  # folded, applied on the way
    # the SUMs written by the later convolution of each (conv2, then proj: down is ready before it), with the ReLU
    adds = {bound.layers[i].name: (bound.layers[j].name, side) for i, (j, side) in bound._fold_adds.items()}
    assert "sum" not in names and "sum2" not in names and adds == {"conv2": ("sum", 1), "proj": ("sum2", 1)}
    assert bound._fold_relus[names.index("conv2") and next(i for i in calls if bound.layers[i].name == "conv2")] == 0
    for i, call in calls.items():  # the direct convolutions', the pooling's, ReLU's, Softmax's, InnerProducts' own
        layer = bound.layers[i]
        own = layer.type in ("InnerProduct", "Pooling", "ReLU", "Softmax") or layer.type == "Convolution" and \
            layer.path_taken.startswith("direct")
        assert ("bound_forward" in call.__qualname__) == own, layer.name
    paths = [getattr(bound.layers[i], "path_taken", "") for i in calls]
    assert sum(p.startswith("direct") for p in paths) >= 2
    assert (sum(p == "direct (images in the lanes)" for p in paths) >= 3) == (pixels == "lanes")
    check(1)
    assert dict(bound._bound[4]) == calls  # bound once
    check(3)  # reshaped from Python: bound again (the InnerProducts through gemm, on weights laid out (K, N))
    assert all("bound_forward" in c.__qualname__ for i, c in bound._bound[4]
               if bound.layers[i].type == "InnerProduct")
    for n in nets:  # new weights, in place: made again after weights_changed(), as the trainer's tests call it
        n.layer_by_name("conv2").blobs[0].data *= -1
        n.layer_by_name("bn1").blobs[0].data += 1
        n.layer_by_name("ip1").blobs[1].data += 1
        n.layer_by_name("ip2").blobs[0].data *= 0.5  # (its laid-out copy made again)
    bound.weights_changed()
    check(3)
    check(1)
    bound.keep_blobs = {"proj"}  # as predict asks for a blob: written (the other convolution of sum2 is not fused)
    check(1, unwritten=("conv2",))
    assert [bound.layers[i].name for i in bound._fold_adds] == ["conv2"]


@pytest.mark.parametrize("n", [1, 4, 37, 500])
def test_row_times_rows_is_a_row_times_the_transposed_weights(n):
    from layers.inner_product import row_times_rows
    rng = np.random.default_rng(n)
    w, x, bias = rng.normal(size=(n, 300)), rng.normal(size=300), rng.normal(size=n)
    for dtype in (np.float32, np.float64):
        y = np.full(n, np.nan, dtype)
        row_times_rows(x.astype(dtype), w.astype(dtype), bias.astype(dtype), True, y)
        np.testing.assert_allclose(y, w @ x + bias, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)
        row_times_rows(x.astype(dtype), w.astype(dtype), bias.astype(dtype), False, y)
        np.testing.assert_allclose(y, w @ x, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)


@pytest.mark.parametrize("m,n", [(2, 10), (32, 10), (5, 3), (7, 8)])
def test_rows_times_rows_is_rows_times_the_transposed_weights(m, n):
    """The tiny products of a forward-only InnerProduct (bound_forward: a classifier of few classes at a batch of
    a few; the bound net test above runs ip2 on it at batch 3): with and without the bias, outputs past a
    multiple of four."""
    from layers.inner_product import rows_times_rows
    rng = np.random.default_rng(m * n)
    w, x, bias = rng.normal(size=(n, 64)), rng.normal(size=(m, 64)), rng.normal(size=n)
    for dtype in (np.float32, np.float64):
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        y = np.full((m, n), np.nan, dtype)
        rows_times_rows(x.astype(dtype), w.astype(dtype), bias.astype(dtype), True, y)
        np.testing.assert_allclose(y, x @ w.T + bias, **tol)
        rows_times_rows(x.astype(dtype), w.astype(dtype), bias.astype(dtype), False, y)
        np.testing.assert_allclose(y, x @ w.T, **tol)


SUM_PATHS = """
layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [2, 8, 8, 8]}}}
  - {name: grouped, type: Convolution, bottom: data, top: grouped,
     convolution_param: {num_output: 8, kernel_size: 3, pad: 1, group: 2}}
  - {name: sum1, type: Eltwise, bottom: [data, grouped], top: sum1, eltwise_param: {coeff: [0.5, 2]}}
  - {name: relu1, type: ReLU, bottom: sum1, top: sum1, relu_param: {negative_slope: 0.1}}
  - {name: dw, type: Convolution, bottom: sum1, top: dw, convolution_param: {num_output: 8, kernel_size: 3, pad: 1,
     group: 8}}
  - {name: sum2, type: Eltwise, bottom: [dw, sum1], top: sum2}
  - {name: pw, type: Convolution, bottom: sum2, top: pw, convolution_param: {num_output: 8, kernel_size: 1}}
  - {name: sum3, type: Eltwise, bottom: [sum2, pw], top: sum3}
  - {name: relu3, type: ReLU, bottom: sum3, top: sum3}
"""


@pytest.mark.parametrize("constant", [False, True])
def test_a_sum_written_by_a_convolution_on_the_other_paths_equals_the_layers_one_by_one(constant):
    """The Eltwise SUM above a convolution that has no banded kernel (grouped: im2col; depthwise; a 1x1 read in
    place) is added after its forward, with the coefficients and the ReLU, as the Eltwise would; bound calls
    (constant weights) or the loop."""
    from netspec.loader import loads as load_yaml
    net = Net(load_yaml(SUM_PATHS), "TEST", seed=0)
    rng = np.random.default_rng(4)
    for layer in net.layers:
        for b in layer.blobs:
            b.data[...] = rng.normal(size=b.shape)
    net.blobs["data"].data[...] = rng.normal(size=(2, 8, 8, 8))
    net.forward()
    want = {k: net.blobs[k].data.copy() for k in ("sum1", "sum2", "sum3")}
    net.keep_for_backward, net.constant_weights = False, constant
    for k in want:
        net.blobs[k].data[...] = np.nan
    net.forward()
    adds = {net.layers[i].name: net.layers[j].name for i, (j, _) in net._fold_adds.items()}
    assert adds == {"grouped": "sum1", "dw": "sum2", "pw": "sum3"}
    assert [net.layers[i].path_taken.split(",")[0] for i in net._fold_adds] == ["im2col", "depthwise", "direct"]
    assert net.layers[list(net._fold_adds)[2]]._plan.x_direct  # the 1x1 reads its bottom in place
    for k, v in want.items():
        assert (v < 0).any() or k == "sum3"
        np.testing.assert_allclose(net.blobs[k].data, v, rtol=1e-5, atol=1e-5, err_msg=k)
