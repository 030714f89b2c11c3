"""Each batch as slices on threads (solvers/replicas.py): the same losses, gradients and blobs as one pass,
and a clear refusal where slicing would change a result."""
import numpy as np
import pytest

from netspec.errors import UserError
from netspec.loader import loads
from netspec.net import Net, NotSplittable
from solvers.replicas import Replicas, start
from solvers.trainer import Trainer

from test_training import quiet, records, solver

NET = """
layer:
  - {name: d, type: Input, top: [data, label], input_param: {shape: [{dim: [8, 3, 10, 10]}, {dim: [8]}]}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 4, kernel_size: 3, pad: 1, weight_filler: {type: gaussian, std: 0.3},
                         bias_filler: {type: gaussian, std: 0.1}}}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}
  - {name: pool1, type: Pooling, bottom: conv1, top: pool1, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: left, type: Convolution, bottom: pool1, top: left,
     convolution_param: {num_output: 3, kernel_size: 1, weight_filler: {type: gaussian, std: 0.3}}}
  - {name: cat, type: Concat, bottom: [pool1, left], top: cat}
  - {name: flat, type: Flatten, bottom: cat, top: flat}
  - {name: ip, type: InnerProduct, bottom: flat, top: ip, param: [{name: shared_w}, {}],
     inner_product_param: {num_output: 5, weight_filler: {type: gaussian, std: 0.1}}}
  - {name: ip_twin, type: InnerProduct, bottom: flat, top: ip_twin, param: [{name: shared_w}, {}],
     inner_product_param: {num_output: 5, weight_filler: {type: gaussian, std: 0.1}}}
  - {name: sum, type: Eltwise, bottom: [ip, ip_twin], top: sum}
  - {name: loss, type: SoftmaxWithLoss, bottom: [sum, label], top: loss}
  - {name: l2, type: EuclideanLoss, bottom: [ip, ip_twin], top: l2, loss_weight: 0.5}
  - {name: acc, type: Accuracy, bottom: [sum, label], top: acc}
"""


def filled(text=NET, seed=0):
    net = Net(loads(text), "TRAIN", seed=1)
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.normal(size=net.blobs["data"].data.shape)
    net.blobs["label"].data[...] = rng.integers(0, 5, net.blobs["label"].data.shape)
    return net


@pytest.mark.parametrize("k", [2, 4])
def test_slices_give_the_gradients_and_blobs_of_one_pass(k):
    whole, split = filled(), filled()
    replicas = Replicas(split, k)
    try:
        loss = replicas.forward_backward()
    finally:
        replicas.close()
    assert loss == pytest.approx(whole.forward_backward(), rel=1e-5)
    for p, q in zip(whole.params, split.params):
        assert np.allclose(p.blob.diff, q.blob.diff, rtol=1e-4, atol=1e-6), p.key
    for name, blob in whole.blobs.items():  # the parent holds the whole batch's activations and metrics
        assert np.allclose(blob.data, split.blobs[name].data, rtol=1e-5, atol=1e-6), name
    assert not any(np.shares_memory(p.blob.diff, r.shared[0].own) for r in replicas.nets[1:] for p in split.params)


def test_the_whole_net_frees_what_its_slices_replace_and_makes_it_again_for_a_pass_of_its_own():
    text = NET.replace("relu1, type: ReLU, bottom: conv1, top: conv1}",
                       "relu1, type: ReLU, bottom: conv1, top: conv1}\n  - {name: bn, type: BatchNorm, "
                       "bottom: conv1, top: conv1}\n  - {name: sc, type: Scale, bottom: conv1, top: conv1}")
    whole, split = filled(text), filled(text)
    split.forward_backward()  # makes its copies for the in-place backward and its convolutions' scratch
    conv = split.layer_by_name("conv1")
    assert split._kept_arrays and conv._plan is not None
    replicas = Replicas(split, 2)
    try:
        assert not split._kept_arrays and conv._plan is None  # freed: the slices run the passes
        replicas.forward_backward()
        assert split._released
    finally:
        replicas.close()
    whole.clear_param_diffs()
    split.clear_param_diffs()
    whole.forward_backward()
    split.forward_backward()  # a pass of its own: the copies are made again, and the backward is exact
    assert split._kept_arrays
    for p, q in zip(whole.params, split.params):
        np.testing.assert_allclose(q.blob.diff, p.blob.diff, rtol=1e-5, atol=1e-7, err_msg=p.key)


def test_diffs_accumulate_like_caffe_over_iter_size():
    whole, split = filled(), filled()
    replicas = Replicas(split, 2)
    try:
        for _ in range(2):
            replicas.forward_backward()
            whole.forward_backward()
    finally:
        replicas.close()
    for p, q in zip(whole.params, split.params):
        assert np.allclose(p.blob.diff, q.blob.diff, rtol=1e-4, atol=1e-6), p.key


def test_a_replicas_error_reaches_the_caller():
    split = filled()
    split.blobs["label"].data[-1] = 7  # in the second slice, run by a worker thread
    replicas = Replicas(split, 2)
    try:
        with pytest.raises(UserError, match="label 7 at position 7 of blob"):
            replicas.forward_backward()
    finally:
        replicas.close()


@pytest.mark.parametrize("change, reason", [
    ("{name: flip, type: Concat, bottom: [conv1, conv1], top: twice, concat_param: {axis: 0}}", "axis 0"),
    ("{name: loss2, type: SoftmaxWithLoss, bottom: [sum, label], top: loss2, loss_param: {normalization: NONE}}",
     "sum over the batch"),
    ("{name: loss2, type: SoftmaxWithLoss, bottom: [sum, label], top: loss2, loss_param: {ignore_label: 0}}",
     "ignore_label"),
])
def test_nets_whose_results_would_change_are_not_split(change, reason):
    net = Net(loads(NET + f"  - {change}\n"), "TRAIN", seed=1)
    with pytest.raises(NotSplittable, match=reason):
        net.replicate(2)
    replicas, line = start(net, None, threads=2)
    assert replicas is None
    with pytest.raises(UserError, match=r"--replicas 2: error: .*" + reason):
        start(net, 2)


BN_NET = NET.replace("  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}",
                     "  - {name: bn, type: BatchNorm, bottom: conv1, top: conv1}\n"
                     "  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}")


@pytest.mark.parametrize("k", [2, 4])
def test_batchnorm_splits_with_the_whole_batchs_statistics(k, monkeypatch):
    """BatchNorm sums its statistics over the slices: blobs, gradients and running sums are those of one pass
    over the whole batch, over two iterations (the running sums go on from the first); chosen automatically."""
    import solvers.replicas as replicas_module
    monkeypatch.setattr(replicas_module, "MIN_MAPS", 0)  # let the automatic choice look at this small net
    monkeypatch.setattr(replicas_module, "MIN_SLICE", 1)
    monkeypatch.setattr(replicas_module, "MIN_LAYER_WORK", 0)
    whole, split = filled(BN_NET), filled(BN_NET)
    replicas, line = start(split, None, threads=k)
    assert replicas is not None and replicas.k == k and "BatchNorm sums its statistics over the slices" in line
    try:
        for it in range(2):
            for net in (whole, split):
                net.clear_param_diffs()
            loss = replicas.forward_backward()
            assert loss == pytest.approx(whole.forward_backward(), rel=1e-5)
            for p, q in zip(whole.params, split.params):
                np.testing.assert_allclose(q.blob.diff, p.blob.diff, rtol=1e-4, atol=1e-6, err_msg=p.key)
            for name, blob in whole.blobs.items():
                np.testing.assert_allclose(split.blobs[name].data, blob.data, rtol=1e-5, atol=1e-5, err_msg=name)
            for a, b in zip(whole.layer_by_name("bn").blobs, split.layer_by_name("bn").blobs):
                np.testing.assert_allclose(b.data, a.data, rtol=1e-6, atol=1e-7)
        assert split.layer_by_name("bn").blobs[2].data[0] == pytest.approx(1 + 0.999)
    finally:
        replicas.close()


def test_a_failing_slice_does_not_leave_the_others_waiting_in_batchnorm():
    """A bad label in the second slice (a worker): its error reaches the caller although the first slice waits
    for that slice's BatchNorm sums in backward; the net then runs again."""
    split = filled(BN_NET)
    split.blobs["label"].data[-1] = 7
    replicas = Replicas(split, 2)
    try:
        with pytest.raises(UserError, match="label 7 at position 7 of blob"):
            replicas.forward_backward()
        split.blobs["label"].data[-1] = 1
        assert np.isfinite(replicas.forward_backward())
    finally:
        replicas.close()


def test_a_batch_that_does_not_divide_is_not_split():
    net = Net(loads(NET.replace("[8, 3, 10, 10]}, {dim: [8]", "[9, 3, 10, 10]}, {dim: [9]")), "TRAIN", seed=1)
    with pytest.raises(NotSplittable, match="multiple of 2"):
        net.replicate(2)


def test_automatic_choice_wants_threads_and_large_maps(monkeypatch):
    import solvers.replicas as replicas_module
    small = Net(loads(NET), "TRAIN", seed=1)
    assert start(small, None, threads=2)[0] is None  # 8 examples of 10x10 maps: not worth the threads
    big = Net(loads(NET.replace("[8, 3, 10, 10]}, {dim: [8]", "[64, 3, 80, 80]}, {dim: [64]")), "TRAIN", seed=1)
    # its 4 and 3 filters do ~1.5M multiply-adds a layer in a slice of 32: light layers run the batch whole
    replicas, line = start(big, None, threads=2)
    assert replicas is None and "many and light" in line
    monkeypatch.setattr(replicas_module, "MIN_LAYER_WORK", 4e5)
    replicas, line = start(big, None, threads=2)
    assert replicas is not None and replicas.k == 2 and "2 slices of 32" in line
    replicas.close()
    assert start(big, None, threads=1)[0] is None
    assert start(big, 1, threads=2)[0] is None


def test_training_on_slices_follows_the_one_thread_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    runs = []
    for folder, k in (("a", 1), ("b", 2)):
        t = Trainer(solver(tmp_path / folder, max_iter=15, test_interval=0, test_iter=None), out=quiet, replicas=k)
        assert (t.replicas is None) == (k == 1)
        t.train()
        runs.append(([r["loss"] for r in records(t.metrics_path) if r["phase"] == "train"],
                     {p.key: p.blob.data.copy() for p in t.net.params}))
    (la, wa), (lb, wb) = runs
    assert np.allclose(la, lb, rtol=1e-3, atol=1e-4)
    for key in wa:
        assert np.allclose(wa[key], wb[key], rtol=1e-3, atol=1e-5), key


@pytest.mark.parametrize("group", [1, 2])
def test_blocked_convolution_on_one_thread_matches_the_whole_batch(monkeypatch, group):
    import numba
    import layers.conv as conv
    text = f"""
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: [6, 4, 9, 9]}}}}}}
  - {{name: c, type: Convolution, bottom: data, top: c, convolution_param: {{num_output: 6, kernel_size: 3, pad: 1,
      stride: 2, group: {group}, weight_filler: {{type: gaussian, std: 0.3}}, bias_filler: {{type: gaussian}}}}}}
  - {{name: loss, type: EuclideanLoss, bottom: [c, c], top: loss}}
"""
    monkeypatch.setattr(conv, "DIRECT", False)  # the im2col path's blocks (a stride now runs direct)
    results = []
    for blocked in (False, True):
        if blocked:
            monkeypatch.setattr(conv, "BLOCK_BYTES", 0)
            monkeypatch.setattr(conv, "BLOCK_TARGET", 4 * 36 * 25 * 8)  # 4 images' buffers: blocks of 3
        net = Net(loads(text), "TRAIN", seed=1, dtype=np.float64)
        net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=(6, 4, 9, 9))
        layer, before = net.layers[1], numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            layer.forward(net.bottom_vecs[1], net.top_vecs[1])
            net.top_vecs[1][0].diff[...] = np.random.default_rng(1).normal(size=net.top_vecs[1][0].diff.shape)
            layer.backward(net.top_vecs[1], [True], net.bottom_vecs[1])
        finally:
            numba.set_num_threads(before)
        assert layer._col.shape[1] == (3 if blocked else 6) * 25  # 6 images of 5x5 outputs
        results.append((net.blobs["c"].data.copy(), net.blobs["data"].diff.copy(), layer.blobs[0].diff.copy(),
                        layer.blobs[1].diff.copy()))
    for whole, blocked in zip(*results):
        assert np.allclose(whole, blocked, rtol=1e-12, atol=1e-12)


def test_test_nets_run_as_slices_too(tmp_path, monkeypatch):
    import os
    import solvers.replicas as replicas_module
    from test_training import NET as DIGITS
    monkeypatch.setattr(replicas_module, "MIN_MAPS", 0)  # the 8x8 digits are below the automatic threshold
    folder = os.path.dirname(DIGITS)
    text = open(DIGITS).read().replace("batch_size: 359", "batch_size: 358").replace(
        "source: digits_", f"source: {folder}/digits_")
    (tmp_path / "net.yaml").write_text(text)
    results = []
    for k in (1, 2):
        (tmp_path / str(k)).mkdir()
        t = Trainer(solver(tmp_path / str(k), net=str(tmp_path / "net.yaml"), max_iter=6, test_interval=3,
                           test_iter=1), out=quiet, replicas=k)
        assert isinstance(t.test_runners[0], Replicas) == (k == 2)
        t.train()
        results.append([r for r in records(t.metrics_path) if r["phase"] == "test"])
    whole, split = results
    assert [r["iter"] for r in whole] == [r["iter"] for r in split] == [0, 3, 6]
    for a, b in zip(whole, split):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3) and a["accuracy"] == pytest.approx(b["accuracy"], abs=0.01)


@pytest.mark.parametrize("extra", [
    "  - {name: drop, type: Dropout, bottom: ip1, top: ip1}",
    "  - {name: bn, type: BatchNorm, bottom: ip1, top: ip1, batch_norm_param: {moving_average_fraction: 0.9}}",
])
def test_resume_on_slices_is_bitwise(tmp_path, extra):
    """Dropout's draws per slice come from the net's own stream, which the snapshot keeps; BatchNorm's summed
    statistics and running sums (snapshotted with the weights) resume as well."""
    import os
    from test_training import NET as DIGITS
    folder = os.path.dirname(DIGITS)
    text = open(DIGITS).read().replace("source: digits_", f"source: {folder}/digits_").replace(
        "  - {name: relu3, type: ReLU, bottom: ip1, top: ip1}",
        "  - {name: relu3, type: ReLU, bottom: ip1, top: ip1}\n" + extra)
    assert extra in text
    (tmp_path / "net.yaml").write_text(text)
    net = str(tmp_path / "net.yaml")
    common = dict(net=net, test_interval=0, test_iter=None, display=1)
    whole = Trainer(solver(tmp_path, "whole.yaml", max_iter=12, snapshot_prefix="whole/run", **common), out=quiet,
                    replicas=2)
    whole.train()
    assert whole.replicas is not None and ("BatchNorm sums" in whole.replicas_line) == ("BatchNorm" in extra)
    assert "bn" not in extra or any(k.startswith("bn/") for k in whole.net.weights())  # statistics compared too
    half = Trainer(solver(tmp_path, "half.yaml", max_iter=6, snapshot_prefix="half/run", **common), out=quiet,
                   replicas=2)
    half.train()
    resumed = Trainer(solver(tmp_path, "half.yaml", max_iter=12, snapshot_prefix="half/run", **common), out=quiet,
                      replicas=2)
    resumed.train(snapshot_path=str(tmp_path / "half" / "run_iter_6.solverstate.npz"))
    for key, w in whole.net.weights().items():
        np.testing.assert_array_equal(resumed.net.weights()[key], w)
    again = Trainer(solver(tmp_path, "again.yaml", max_iter=12, snapshot_prefix="again/run", **common), out=quiet,
                    replicas=2)
    again.train()
    for key, w in whole.net.weights().items():  # and a run repeats itself exactly
        np.testing.assert_array_equal(again.net.weights()[key], w)


TEST_NET = """
layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [16, 3, 10, 10]}, {dim: [16]}],
     data_filler: [{type: gaussian, std: 1}, {type: constant, value: 2}]}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 8, kernel_size: 3, pad: 1, weight_filler: {type: gaussian, std: 0.3}}}
  - {name: bn1, type: BatchNorm, bottom: conv1, top: conv1}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}
  - {name: ip, type: InnerProduct, bottom: conv1, top: ip,
     inner_product_param: {num_output: 5, weight_filler: {type: gaussian, std: 0.1}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
  - {name: acc, type: Accuracy, bottom: [ip, label], top: acc}
"""


def test_run_py_test_and_predict_run_the_batch_as_slices_with_the_results_of_one_pass(tmp_path, monkeypatch):
    """Forward-only nets run whole on the cores (the automatic choice), as slices only beside a split train net
    (held) or when told; `run.py test` and `run.py predict` as slices (forced here on a small net) give the
    outputs of the whole batch at once, a last short batch of predict included."""
    import solvers.replicas as rep
    from solvers.predict import Predictor
    from solvers.trainer import test_model
    from solvers.snapshot import save_npz
    path = tmp_path / "net.yaml"
    path.write_text(TEST_NET)
    net = Net(loads(TEST_NET), "TEST", seed=0)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        for i, b in enumerate(layer.blobs):
            b.data[...] = rng.uniform(0.5, 2, b.shape) if layer.type == "BatchNorm" else rng.normal(0, 0.3, b.shape)
    weights = str(tmp_path / "w.weights.npz")
    save_npz(weights, {k: v.copy() for k, v in net.weights().items()})
    whole = test_model(str(path), weights, 3, out=lambda *a: None)
    rows = rng.normal(size=(37, 3, 10, 10)).astype(np.float32)
    scores = Predictor(str(path), weights).run(rows, ["ip"])["ip"]
    runs = []
    monkeypatch.setattr(rep, "MIN_MAPS", 1)
    test_net = Net(loads(TEST_NET), "TEST", seed=0)
    test_net.keep_for_backward = False
    assert rep.start(test_net, None)[0] is None  # forward-only, with the cores: whole, whatever its maps
    held = rep.start(test_net, None, held=True)[0]  # beside a split train net (the trainer's test nets): slices
    assert held is not None and held.k == 2
    monkeypatch.setattr(rep, "FORWARD_WHOLE", False)  # run.py test and predict as slices
    def forward(self, sources=True):  # and the slices fold BatchNorm into the convolution, as the whole net would
        loss = rep.Replicas._run(self, False, sources)
        runs.append((self.k, [(n.keep_for_backward, {n.defs[i].name for i in n._fold_state["made"]})
                              for n in self.nets]))
        return loss
    monkeypatch.setattr(rep.Replicas, "forward", forward)
    split = test_model(str(path), weights, 3, out=lambda *a: None)
    split_scores = Predictor(str(path), weights).run(rows, ["ip"])["ip"]
    assert runs and {k for k, _ in runs} == {2}
    assert all(nets == [(False, {"conv1"})] * 2 for _, nets in runs), runs  # in each slice
    assert split["acc"] == pytest.approx(whole["acc"]) and split["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert split_scores.shape == (37, 5)
    np.testing.assert_allclose(split_scores, scores, rtol=1e-5, atol=1e-5)


FOLDED_NET = """
layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [16, 3, 12, 12]}, {dim: [16]}],
     data_filler: [{type: constant, value: 0.5}, {type: constant, value: 1}]}}
  - {name: conv, type: Convolution, bottom: data, top: conv,
     convolution_param: {num_output: 8, kernel_size: 3, pad: 1, weight_filler: {type: gaussian, std: 0.3}}}
  - {name: bn, type: BatchNorm, bottom: conv, top: conv}
  - {name: scale, type: Scale, bottom: conv, top: conv, scale_param: {bias_term: true}}
  - {name: relu, type: ReLU, bottom: conv, top: conv}
  - {name: ip, type: InnerProduct, bottom: conv, top: ip, inner_product_param: {num_output: 3,
     weight_filler: {type: gaussian, std: 0.1}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def test_the_trainers_test_nets_fold_the_weights_trained_since_the_last_test(tmp_path):
    """Test nets fold BatchNorm once a test (constant_weights within the test), made again before each test, before
    a forward from pycaffe's solver.test_nets and from the Trainer's own test_nets (outside a test the folds are
    checked against the weights each pass): the outputs equal the unfolded net's after the weights changed in
    place."""
    from yaffe.pycaffe import get_solver
    net_path = tmp_path / "net.yaml"
    net_path.write_text(FOLDED_NET)
    solver_ = get_solver(solver(tmp_path, net=str(net_path), max_iter=10, test_interval=2))
    solver_.step(3)  # a test at iteration 2 made the folds
    t, test_net = solver_._t, solver_._t.test_nets[0]
    assert not test_net.constant_weights and not test_net.keep_for_backward
    seen = []
    forward = test_net.forward
    test_net.forward = lambda *a: (seen.append(test_net.constant_weights), forward(*a))[1]
    t.test()
    assert seen and all(seen) and test_net._fold_state["made"] and not test_net.constant_weights
    del test_net.forward
    for step in range(3):
        t.net.param_data *= 1.5  # weights changed in place after the folds were made
        if step == 0:
            t.test()
        elif step == 1:
            solver_.test_nets[0].forward()
        else:
            t.test_nets[0].forward()  # yaffe's own Net, between tests
        folded = test_net.blobs["ip"].data.copy()
        test_net.keep_for_backward = True  # no folds
        test_net.forward()
        test_net.keep_for_backward = False
        np.testing.assert_allclose(folded, test_net.blobs["ip"].data, rtol=1e-4, atol=1e-4 * np.abs(folded).max())


def _sequence_net(hidden):
    """A TRAIN net of (T, N, ...) = (5, 64, 3) sequences through an LSTM of `hidden` units, its last step
    classified."""
    return Net(loads(f"""
layer:
  - {{name: d, type: DummyData, top: [data, label, cont], dummy_data_param: {{shape: [{{dim: [5, 64, 3]}},
     {{dim: [64]}}, {{dim: [5, 64]}}], data_filler: [{{type: uniform}}, {{type: constant, value: 1}},
     {{type: constant, value: 1}}]}}}}
  - {{name: lstm, type: LSTM, bottom: [data, cont], top: h, recurrent_param: {{num_output: {hidden}}}}}
  - {{name: last, type: Slice, bottom: h, top: [h_early, h_last], slice_param: {{axis: 0, slice_point: 4}}}}
  - {{name: quiet, type: Silence, bottom: h_early}}
  - {{name: fc, type: InnerProduct, bottom: h_last, top: fc, inner_product_param: {{num_output: 3, axis: 2}}}}
  - {{name: flat, type: Reshape, bottom: fc, top: flat, reshape_param: {{shape: {{dim: [-1, 3]}}}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [flat, label], top: loss}}
"""), "TRAIN", seed=1)


def test_a_sequence_net_is_sliced_along_its_batch_axis_and_says_so():
    """(T, N, ...) data: the slices and their line count N (T = 5 does not divide by 2; N = 64 does)."""
    net = _sequence_net(4)
    replicas, line = start(net, None, threads=2)
    try:
        assert replicas is not None and line.startswith("each batch of 64 runs as 2 slices of 32"), line
    finally:
        if replicas is not None:
            replicas.close()


def test_a_sequence_net_whose_lstm_shares_its_batch_out_runs_whole():
    """A float32 LSTM that runs its batch as chunks of sequences on the threads itself (H a multiple of the tiles'
    columns, 32 sequences a thread) needs no slices: the net runs whole, and its LSTM says so (chunks_on); with H = 4
    (the test above) the net is sliced."""
    import layers.recurrent as rec
    from layers.cpu import pooled
    if not pooled():
        pytest.skip("OpenBLAS's CBLAS is not callable from kernels here: no chunks")
    net = _sequence_net(rec.TILE_COLS)
    assert net.layer_by_name("lstm").chunks_on(2) and not net.layer_by_name("lstm").chunks_on(1)
    replicas, line = start(net, None, threads=2)
    try:
        assert replicas is None, line
    finally:
        if replicas is not None:
            replicas.close()


def test_only_layers_that_draw_get_a_slices_generator_each_pass():
    """MAX pooling holds a generator (STOCHASTIC's) but draws nothing: its slices keep theirs (a new generator a
    slice and pass cost ~35 us of LeNet's 7 ms iteration); STOCHASTIC pooling in TRAIN gets fresh ones."""
    stochastic = NET.replace("pool: MAX", "pool: STOCHASTIC")
    for text, draws in ((NET, False), (stochastic, True)):
        net = filled(text)
        i = [l.name for l in net.layers].index("pool1")
        pool = net.layers[i]
        assert pool.draws is draws
        replicas = Replicas(net, 2)
        try:
            replicas.forward_backward()
            before = [rep.layers[i].rng for rep in replicas.nets]
            parent = pool.rng.bit_generator.state
            replicas.forward_backward()
            assert [rep.layers[i].rng is b for rep, b in zip(replicas.nets, before)] == [not draws] * 2
            assert (pool.rng.bit_generator.state == parent) is not draws  # the parent's stream moves only to draw
        finally:
            replicas.close()
    net = filled(stochastic)
    net.phase = "TEST"
    assert not net.layers[i].draws  # TEST's stochastic pooling weighs the windows: no draws
