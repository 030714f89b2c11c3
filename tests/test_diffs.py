"""Blob diffs sharing arrays by lifetime in the backward (netspec/diffs.py, Net.share_diffs): the gradients are
bit for bit those of a net with a diff per blob, on one thread and as slices, and arrays really are shared."""
import numpy as np
import pytest

from netspec import diffs
from netspec.loader import loads
from netspec.net import Net
from solvers.replicas import Replicas
from solvers.trainer import Trainer

from test_replicas import BN_NET, NET
from test_training import quiet, solver

# a residual stage: Splits, BatchNorm + Scale + ReLU in place, Eltwise SUM, a projection shortcut, pooling, Flatten
RESIDUAL = """
layer:
  - {name: d, type: Input, top: [data, label], input_param: {shape: [{dim: [8, 3, 8, 8]}, {dim: [8]}]}}
  - {name: c1, type: Convolution, bottom: data, top: c1, convolution_param: {num_output: 8, kernel_size: 3, pad: 1,
     weight_filler: {type: msra}}}
  - {name: bn1, type: BatchNorm, bottom: c1, top: c1}
  - {name: s1, type: Scale, bottom: c1, top: c1, scale_param: {bias_term: true}}
  - {name: r1, type: ReLU, bottom: c1, top: c1}
  - {name: c2, type: Convolution, bottom: c1, top: c2, convolution_param: {num_output: 8, kernel_size: 3, pad: 1,
     weight_filler: {type: msra}}}
  - {name: bn2, type: BatchNorm, bottom: c2, top: c2}
  - {name: s2, type: Scale, bottom: c2, top: c2, scale_param: {bias_term: true}}
  - {name: r2, type: ReLU, bottom: c2, top: c2}
  - {name: c3, type: Convolution, bottom: c2, top: c3, convolution_param: {num_output: 8, kernel_size: 3, pad: 1,
     weight_filler: {type: msra}}}
  - {name: sum1, type: Eltwise, bottom: [c1, c3], top: sum1}
  - {name: r3, type: ReLU, bottom: sum1, top: sum1}
  - {name: c4, type: Convolution, bottom: sum1, top: c4, convolution_param: {num_output: 16, kernel_size: 3, pad: 1,
     stride: 2, weight_filler: {type: msra}}}
  - {name: proj, type: Convolution, bottom: sum1, top: proj, convolution_param: {num_output: 16, kernel_size: 1,
     stride: 2, weight_filler: {type: msra}}}
  - {name: sum2, type: Eltwise, bottom: [c4, proj], top: sum2, eltwise_param: {coeff: [1.0, 0.5]}}
  - {name: pool, type: Pooling, bottom: sum2, top: pool, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: flat, type: Flatten, bottom: pool, top: flat}
  - {name: ip, type: InnerProduct, bottom: flat, top: ip, inner_product_param: {num_output: 5,
     weight_filler: {type: gaussian, std: 0.1}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
  - {name: acc, type: Accuracy, bottom: [ip, label], top: acc}
"""


def filled(text, seed=0):
    net = Net(loads(text), "TRAIN", seed=1)
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.normal(size=net.blobs["data"].data.shape)
    net.blobs["label"].data[...] = rng.integers(0, 5, net.blobs["label"].data.shape)
    return net


def shared_pairs(net):
    names = [n for n, b in net.blobs.items() if b.diff.size]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if np.shares_memory(net.blobs[a].diff, net.blobs[b].diff)]


@pytest.mark.parametrize("text", [NET, BN_NET, RESIDUAL], ids=["concat", "batchnorm", "residual"])
@pytest.mark.parametrize("k", [1, 2])
def test_shared_diffs_give_the_gradients_of_a_diff_per_blob(text, k):
    plain, shared = filled(text), filled(text)
    saved = shared.share_diffs()
    assert saved > 0 and set(shared_pairs(shared)) > set(shared_pairs(plain))  # more than views (Flatten)
    runners = [Replicas(n, k) if k > 1 else n for n in (plain, shared)]
    try:
        for _ in range(3):  # the diffs of the last pass are garbage to the next one
            for n in (plain, shared):
                n.clear_param_diffs()
            losses = [r.forward_backward() for r in runners]
            assert losses[0] == losses[1]
            for p, q in zip(plain.params, shared.params):
                np.testing.assert_array_equal(q.blob.diff, p.blob.diff, err_msg=p.key)
            for name, blob in plain.blobs.items():
                np.testing.assert_array_equal(shared.blobs[name].data, blob.data, err_msg=name)
            for d, layer in zip(plain.defs, plain.layers):  # what each loss sends back: read after the pass
                for name in d.bottoms if layer.is_loss else ():
                    np.testing.assert_array_equal(shared.blobs[name].diff, plain.blobs[name].diff, err_msg=name)
    finally:
        for r in runners:
            if k > 1:
                r.close()


STOP = """
layer:
  - {name: d, type: Input, top: [data, label], input_param: {shape: [{dim: [8, 6]}, {dim: [8]}]}}
  - {name: ip1, type: InnerProduct, bottom: data, top: ip1, inner_product_param: {num_output: 12,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: stop, type: Python, bottom: ip1, top: stopped, python_param: {module: tests.pylayer_cases, layer: Stop}}
  - {name: ip2, type: InnerProduct, bottom: stopped, top: ip2, inner_product_param: {num_output: 12,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: ip2b, type: InnerProduct, bottom: ip2, top: ip2b, inner_product_param: {num_output: 12,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: ip3, type: InnerProduct, bottom: ip2b, top: ip3, inner_product_param: {num_output: 5,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip3, label], top: loss}
"""


def test_a_python_layer_that_writes_no_bottom_diff_passes_zeros_as_in_caffe():
    """A user layer whose backward is `pass`: the layer below gets zeros (its diff is its own), not what another
    blob's gradient left in a shared array."""
    plain, shared = filled(STOP), filled(STOP)
    assert shared.share_diffs() > 0
    for _ in range(3):
        for n in (plain, shared):
            n.clear_param_diffs()
            n.forward_backward()
    for p, q in zip(plain.params, shared.params):
        np.testing.assert_array_equal(q.blob.diff, p.blob.diff, err_msg=p.key)
    assert not plain.params[0].blob.diff.any() and plain.params[2].blob.diff.any()


def test_spans_that_share_an_array_do_not_meet():
    """Each array's blobs in the backward: one is written by the layer that reads it (or seeded) only after the
    last read of the one before."""
    net = filled(RESIDUAL)
    groups = diffs.plan(net.layers, net.top_vecs, net.bottom_vecs, net.need_backward, net.propagate, net.loss_blobs)
    assert groups
    for group in groups:
        spans = []  # of each storage (a blob and its views)
        for storage in group:
            uses = [k for k in range(len(net.layers)) for blob in storage if net.need_backward[k] and (
                any(t is blob for t in net.top_vecs[k])
                or any(b is blob and p for b, p in zip(net.bottom_vecs[k], net.propagate[k])))]
            spans.append((min(uses), max(uses)))
        for i, (lo, hi) in enumerate(spans):
            for lo2, hi2 in spans[i + 1:]:
                assert hi < lo2 or hi2 < lo, (spans, [s[0].name for s in group])
    loss = net.loss_blobs[0][0]
    assert not any(b is loss for g in groups for s in g for b in s)  # seeded before the backward: its own


def test_each_shared_diff_is_centred_in_its_array_so_that_the_threads_halves_meet():
    """Blobs of different sizes in one array: each one's half-way cut (where two threads split its images) falls
    within a cache line of the array's, so that a thread writes the part of the array it wrote for the blob
    before (diffs.ALIGN); the starts are whole cache lines (16 float32) from the array's."""
    net = filled(RESIDUAL)
    assert net.share_diffs() > 0
    bases = {}
    for name, blob in net.blobs.items():
        base = blob.diff.base
        while base is not None and base.base is not None:
            base = base.base
        if base is not None and blob.diff.size and any(
                other is not blob and np.shares_memory(other.diff, blob.diff) for other in net.blobs.values()):
            bases.setdefault(id(base), (base, []))[1].append(name)
    sizes_seen = 0
    for base, names in bases.values():
        sizes = {net.blobs[n].diff.size for n in names}
        sizes_seen = max(sizes_seen, len(sizes))
        for n in names:
            d = net.blobs[n].diff
            start = (d.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // d.itemsize
            assert start % 16 == 0, n  # 16 float32: a cache line
            assert abs(2 * start + d.size - base.size) <= 2 * 16, (n, start, d.size, base.size)
    assert sizes_seen > 1  # the net does share blobs of different sizes


def test_the_trainer_shares_them_except_where_diffs_are_read_after_the_pass(tmp_path):
    import yaffe.pycaffe as caffe
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert Trainer(solver(tmp_path / "a"), out=quiet).net.__dict__.get("shared_diffs", 0) > 0
    assert not Trainer(solver(tmp_path / "b", debug_info=True), out=quiet).net.__dict__.get("shared_diffs")
    s = caffe.SGDSolver(solver(tmp_path / "a", name="s2.yaml"), quiet=True)
    assert not s._t.net.__dict__.get("shared_diffs")
