"""In place is exact: every chain of in-place layers gives the gradients of the same net with distinct tops.

A layer declares the data its backward reads (`backward_reads`); where a later layer overwrites it, the net
keeps a copy (netspec/inplace.py). Two checks: each declaration is true (scribbling over what a layer does not
declare must not change its backward), and every pair and triple of in-place-capable types, in place, equals
the same net with distinct tops in float64 (also run as slices of the batch, and with BatchNorm's global
statistics). A new in-place-capable type is covered by both automatically.
"""
import itertools

import numpy as np
import pytest

from layers.base import REGISTRY
from netspec.loader import loads
from netspec.net import Net
from solvers.replicas import Replicas
from tests.gradcheck import make_layer
from layers.gradcheck import blobs_of
from tests.test_gradients import CASES

IN_PLACE = sorted(t for t, cls in REGISTRY.items() if cls.in_place_ok and cls.differentiable)


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_backward_reads_no_data_it_does_not_declare(type_name):
    """Garbage written over the bottom data (top data) after forward must not change the backward of a layer
    that does not declare "bottom" ("top") in backward_reads: the net only keeps what is declared."""
    for case in CASES[type_name]:
        spec, arrays = case[0], [np.asarray(a, np.float64) for a in case[1]]
        check = case[2] if len(case) > 2 else list(range(len(arrays)))
        results = []
        for scribble in (False, True):
            layer, tops = make_layer(type_name, spec, [a.shape for a in arrays])
            bottom = blobs_of(arrays)
            layer.forward(bottom, tops)
            rng = np.random.default_rng(7)
            for t in tops:
                t.diff[...] = rng.normal(size=t.diff.shape)
            if scribble:
                reads = layer.backward_reads
                for blob in (bottom if "bottom" not in reads else []) + (tops if "top" not in reads else []):
                    blob.data[...] = rng.normal(size=blob.data.shape) * 7 + 3
            for p in layer.blobs:
                p.diff[...] = 0
            layer.backward(tops, [i in check for i in range(len(bottom))], bottom)
            results.append([bottom[i].diff.copy() for i in check] + [p.diff.copy() for p in layer.blobs])
        for clean, dirty in zip(*results):
            np.testing.assert_array_equal(dirty, clean, err_msg=f"{type_name} {spec}: its backward reads data "
                                          f"that backward_reads = {layer.backward_reads} does not declare")


def test_in_place_capable_types_declare_one_side():
    """In place, a bottom and its top are one blob: a backward reading both could not be given both values."""
    for name in IN_PLACE:
        layer, _ = make_layer(name, CASES[name][0][0], [np.shape(CASES[name][0][1][0])])
        assert len(layer.backward_reads) <= 1, name


PARAMS = {
    "ReLU": "relu_param: {negative_slope: 0.1}",
    "PReLU": "prelu_param: {filler: {type: uniform, min: 0.1, max: 0.5}}",
    "Scale": "scale_param: {bias_term: true, filler: {type: uniform, min: -1.5, max: 1.5}, "
             "bias_filler: {type: gaussian, std: 0.5}}",
    "Bias": "bias_param: {filler: {type: gaussian, std: 0.7}}",
    "Dropout": "dropout_param: {dropout_ratio: 0.3}",
    "ELU": "elu_param: {alpha: 0.8}",
    "Exp": "exp_param: {scale: 0.3}",
    "Swish": "swish_param: {beta: 1.3}",
    "Softmax": "",
}


def chain_net(types, in_place: bool, global_stats=False, shape=(4, 3, 2, 3), dtype=np.float64):
    """Input -> 1x1 Convolution -> the chain -> InnerProduct -> EuclideanLoss, with the chain's layers in place
    on the convolution's top or each with a top of its own."""
    lines = ["force_backward: true",
             "layer:",
             f"  - {{name: in, type: Input, top: [data, target], input_param: {{shape: [{{dim: {list(shape)}}}, "
             f"{{dim: [{shape[0]}, 2]}}]}}}}",
             "  - {name: conv, type: Convolution, bottom: data, top: c0, convolution_param: {num_output: 3, "
             "kernel_size: 1, weight_filler: {type: gaussian, std: 0.6}, bias_filler: {type: gaussian, std: 0.3}}}"]
    for i, t in enumerate(types, 1):
        params = PARAMS.get(t, "")
        if t == "BatchNorm" and global_stats:
            params = "batch_norm_param: {use_global_stats: true}"
        bottom, top = ("c0", "c0") if in_place else (f"c{i - 1}", f"c{i}")
        lines.append(f"  - {{name: l{i}, type: {t}, bottom: {bottom}, top: {top}" + (f", {params}}}" if params else "}"))
    last = "c0" if in_place else f"c{len(types)}"
    lines += [f"  - {{name: ip, type: InnerProduct, bottom: {last}, top: ip, inner_product_param: {{num_output: 2, "
              "weight_filler: {type: gaussian, std: 0.5}, bias_filler: {type: gaussian, std: 0.1}}}",
              "  - {name: loss, type: EuclideanLoss, bottom: [ip, target], top: loss}"]
    net = Net(loads("\n".join(lines)), "TRAIN", seed=3, dtype=dtype)
    rng = np.random.default_rng(11)
    net.blobs["data"].data[...] = rng.normal(size=shape)
    net.blobs["target"].data[...] = rng.normal(size=(shape[0], 2))
    for layer in net.layers:
        if layer.type == "BatchNorm":  # stored statistics to normalize with (global stats) and to update
            layer.blobs[0].data[...] = rng.normal(size=layer.blobs[0].data.shape)
            layer.blobs[1].data[...] = rng.uniform(0.5, 2, size=layer.blobs[1].data.shape)
            layer.blobs[2].data[...] = 1
    return net


def gradients(net, slices=1):
    if slices > 1:
        replicas = Replicas(net, slices)
        try:
            loss = replicas.forward_backward()
        finally:
            replicas.close()
    else:
        loss = net.forward_backward()
    return loss, [net.blobs["data"].diff.copy()] + [p.blob.diff.copy() for p in net.params]


def assert_same(types, **kw):
    slices = kw.pop("slices", 1)
    loss_a, a = gradients(chain_net(types, True, **kw), slices)
    loss_b, b = gradients(chain_net(types, False, **kw), slices)
    assert loss_a == pytest.approx(loss_b, rel=1e-12), types
    for i, (x, y) in enumerate(zip(a, b)):
        assert np.max(np.abs(x - y), initial=0) <= 1e-10 * max(1.0, np.max(np.abs(y), initial=0)), (
            f"in-place chain {' -> '.join(types)}: gradient {i} differs from distinct tops by "
            f"{np.max(np.abs(x - y)):.3g}")


@pytest.mark.parametrize("type_name", IN_PLACE)
def test_float32_in_place_equals_distinct_tops_and_float64(type_name):
    """float32 (training's dtype) runs other loops: one array where a kernel runs in place (layers/kernels.py
    `same`), and float32 approximations (sigmoid32, tanh32, exp32). In place equals distinct tops in float32, and
    both equal float64 to float32 rounding, on maps long enough for the vector loops and their remainders."""
    shape = (4, 3, 5, 7)
    runs = {(dtype, in_place): gradients(chain_net((type_name,), in_place, shape=shape, dtype=dtype))
            for dtype in (np.float32, np.float64) for in_place in (True, False)}
    for in_place in (True, False):
        loss, got = runs[np.float32, in_place]
        want_loss, want = runs[np.float64, False]
        assert loss == pytest.approx(want_loss, rel=1e-5), (type_name, in_place)
        for i, (x, y) in enumerate(zip(got, want)):
            scale = max(1.0, np.max(np.abs(y), initial=0))
            assert np.max(np.abs(x - y), initial=0) <= 2e-5 * scale, (type_name, in_place, i)
    for x, y in zip(runs[np.float32, True][1], runs[np.float32, False][1]):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7 * max(1.0, np.max(np.abs(y), initial=0)))


@pytest.mark.parametrize("first", IN_PLACE)
def test_every_in_place_pair_and_triple_equals_distinct_tops(first):
    for rest in itertools.chain(itertools.product(IN_PLACE, repeat=1), itertools.product(IN_PLACE, repeat=2)):
        assert_same((first,) + rest)


@pytest.mark.parametrize("first", IN_PLACE)
def test_every_in_place_pair_equals_distinct_tops_as_slices_and_with_global_stats(first):
    """The pairs again, each batch run as 2 slices on threads (BatchNorm summing its statistics over them), and
    with BatchNorm's stored statistics where a BatchNorm is in the pair."""
    for second in IN_PLACE:
        assert_same((first, second), slices=2)
        if "BatchNorm" in (first, second):
            assert_same((first, second), global_stats=True)


COMMON = [("BatchNorm", "Scale", "ReLU"), ("Convolution_bias", "BatchNorm", "Scale", "ReLU"),
          ("BatchNorm", "Scale", "PReLU"), ("Bias", "BatchNorm", "Scale", "ReLU"), ("Scale", "ReLU"),
          ("ELU", "BatchNorm"), ("TanH", "BatchNorm", "Scale"), ("BatchNorm", "Scale", "ReLU", "Dropout"),
          ("Sigmoid", "Scale", "Bias", "TanH"), ("PReLU", "Swish", "Dropout", "Exp")]


@pytest.mark.parametrize("types", COMMON, ids=["-".join(t) for t in COMMON])
def test_common_chains_equal_distinct_tops_also_as_slices_and_with_global_stats(types):
    types = tuple(t for t in types if t != "Convolution_bias")
    assert_same(types)
    assert_same(types, slices=2)
    if "BatchNorm" in types:
        assert_same(types, global_stats=True)


def test_batchnorm_in_place_gives_the_zero_bias_gradient_below_it():
    """The symptom of the bug: BatchNorm removes the mean, so the convolution's bias below it gets no gradient
    (Caffe: ~1e-8); reading BatchNorm's top after ReLU overwrote it gave about 0.16."""
    net = chain_net(("BatchNorm", "Scale", "ReLU"), True)
    net.forward_backward()
    assert np.abs(net.params[1].blob.diff).max() < 1e-12


def test_a_view_of_the_top_overwritten_in_place_is_kept():
    """BatchNorm -> Flatten -> ReLU in place on the Flatten's top: the ReLU writes BatchNorm's top through the view."""
    text = """
force_backward: true
layer:
  - {name: in, type: Input, top: [data, target], input_param: {shape: [{dim: [4, 3, 2, 2]}, {dim: [4, 2]}]}}
  - {name: bn, type: BatchNorm, bottom: data, top: bn}
  - {name: flat, type: Flatten, bottom: bn, top: flat}
  - {name: relu, type: ReLU, bottom: flat, top: %s}
  - {name: ip, type: InnerProduct, bottom: %s, top: ip, inner_product_param: {num_output: 2, weight_filler: {type: gaussian}}}
  - {name: loss, type: EuclideanLoss, bottom: [ip, target], top: loss}
"""
    diffs = []
    for top in ("flat", "r"):
        net = Net(loads(text % (top, top)), "TRAIN", seed=1, dtype=np.float64)
        rng = np.random.default_rng(0)
        net.blobs["data"].data[...] = rng.normal(size=(4, 3, 2, 2))
        net.blobs["target"].data[...] = rng.normal(size=(4, 2))
        net.forward_backward()
        diffs.append(net.blobs["data"].diff.copy())
    assert len(net.keep_plan.sizes) == 0  # distinct tops: nothing to keep
    np.testing.assert_allclose(diffs[0], diffs[1], rtol=0, atol=1e-12)


def test_one_copy_serves_batchnorm_and_the_scale_above_it():
    net = chain_net(("BatchNorm", "Scale", "ReLU"), True)
    assert [name for name, _ in net.keep_plan.sizes] == ["c0"]  # BatchNorm's top = Scale's bottom: one copy
    assert sorted(net.keep_plan.reads) == [2, 3]                # read by BatchNorm (2) and Scale (3)
    net = chain_net(("ReLU",), True)
    assert net.keep_plan.sizes == []                            # conv reads its bottom only: nothing kept


def test_summary_counts_the_kept_copies():
    from netspec.summary import summarize
    net = chain_net(("BatchNorm", "Scale", "ReLU"), True)
    rows = {r["name"]: r for r in summarize(net)}
    assert rows["l1"]["kept_bytes"] == 4 * 3 * 2 * 3 * 8  # one copy of BatchNorm's top (float64)
    assert sum(r["kept_bytes"] for r in rows.values()) == rows["l1"]["kept_bytes"]


def test_batchnorm_and_the_scale_above_it_run_fused_in_training_and_equal_them_apart(monkeypatch):
    """In training, BatchNorm (batch statistics) with the in-place per-channel Scale above it runs as one layer
    (Net._plan_fusion): one pass forward writing the kept normalized values and the scaled top, two backward.
    It gives what the two give run one by one (YAFFE_FUSE_BN=0): losses, every gradient, the running statistics;
    as slices too; and a forward with the stored statistics (phase TEST) runs them apart. The in-place ReLU above
    them runs in the same passes (its forward, and its gradient within BatchNorm's)."""
    types = ("BatchNorm", "Scale", "ReLU")
    fused = chain_net(types, True)
    assert list(fused._fused) == [2] and fused._fused[2][0] == 3  # BatchNorm l1 (index 2) with Scale l2
    assert fused._fused_relu == {2: (4, pytest.approx(0.1))}  # and the leaky ReLU l3 above them
    assert chain_net(types, False)._fused == {} and chain_net(types, True, global_stats=True)._fused == {}
    monkeypatch.setenv("YAFFE_FUSE_BN", "0")
    apart = chain_net(types, True)
    assert apart._fused == {}
    monkeypatch.delenv("YAFFE_FUSE_BN")
    for slices in (1, 2):
        a, b = chain_net(types, True), chain_net(types, True)
        monkeypatch.setenv("YAFFE_FUSE_BN", "0")
        b = chain_net(types, True)
        monkeypatch.delenv("YAFFE_FUSE_BN")
        for _ in range(2):  # the second pass normalizes with the batch again and updates the sums again
            for net in (a, b):
                for p in net.params:
                    p.blob.diff[...] = 0
            (la, ga), (lb, gb) = gradients(a, slices), gradients(b, slices)
            assert la == pytest.approx(lb, rel=1e-12)
            for x, y in zip(ga, gb):
                np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
            for x, y in zip(a.layers[2].blobs, b.layers[2].blobs):  # the running statistics
                np.testing.assert_allclose(x.data, y.data, rtol=1e-12)
    # the ReLU run alone (YAFFE_FUSE_BN_RELU=0) against run with them, float32: the same tops, and the gradients
    # but for the order of the float64 channel sums
    monkeypatch.setenv("YAFFE_FUSE_BN_RELU", "0")
    g = chain_net(types, True, dtype=np.float32)
    monkeypatch.delenv("YAFFE_FUSE_BN_RELU")
    h = chain_net(types, True, dtype=np.float32)
    assert g._fused_relu == {} and list(h._fused_relu) == [2]
    (lg, gg), (lh, gh) = gradients(g), gradients(h)
    np.testing.assert_array_equal(g.blobs["c0"].data, h.blobs["c0"].data)
    assert (h.blobs["c0"].data < 0).any() and lg == lh
    for x, y in zip(gg, gh):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # the per-layer passes (run.py time) after a fused forward read the same kept values
    c = chain_net(types, True)
    c.forward()
    for p in c.params:
        p.blob.diff[...] = 0
    for blob, w in c.loss_blobs:
        blob.diff[...] = w
    for k in reversed(range(len(c.layers))):
        if c.need_backward[k]:
            c.backward_layer(k)
    d = chain_net(types, True)
    d.forward_backward()
    for x, y in zip([c.blobs["data"].diff] + [p.blob.diff for p in c.params],
                    [d.blobs["data"].diff] + [p.blob.diff for p in d.params]):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    # the stored statistics (a TRAIN net switched to TEST): BatchNorm and Scale run one by one, Scale included
    e, f = chain_net(types, True), chain_net(types, False)
    e.phase = f.phase = "TEST"
    assert e.forward() == pytest.approx(f.forward(), rel=1e-12)
    np.testing.assert_allclose(e.blobs["c0"].data, f.blobs["c3"].data, rtol=1e-12)
