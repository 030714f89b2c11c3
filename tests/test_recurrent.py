"""LSTM, RNN and LSTMUnit (layers/recurrent.py) against a plain reference of Caffe's equations, sequence resets
by cont, and the state carried across batches by expose_hidden. Caffe's own numbers: tests/test_caffe_parity.py
(lstm, lstm_static_exposed, rnn, rnn_static_exposed, lstm_unit)."""
import numpy as np
import pytest

from layers.base import Blob
from netspec.errors import SpecError
from netspec.loader import loads
from netspec.net import Net
from tests.gradcheck import run_layer


def sig(x):
    return 1 / (1 + np.exp(-x))


def reference_lstm(x, cont, w_xc, b_c, w_hc, h0=None, c0=None):
    """Caffe's unrolled LSTM, one example and one step at a time."""
    t_len, n = cont.shape
    h_dim = w_hc.shape[1]
    out = np.zeros((t_len, n, h_dim))
    for j in range(n):
        h = np.zeros(h_dim) if h0 is None else h0[0, j]
        c = np.zeros(h_dim) if c0 is None else c0[0, j]
        for t in range(t_len):
            a = w_xc @ x[t, j].ravel() + b_c + w_hc @ (cont[t, j] * h)
            i, f, o, g = sig(a[:h_dim]), sig(a[h_dim:2 * h_dim]), sig(a[2 * h_dim:3 * h_dim]), np.tanh(a[3 * h_dim:])
            f = 0 if cont[t, j] == 0 else cont[t, j] * f
            c = f * c + i * g
            h = o * np.tanh(c)
            out[t, j] = h
    return out


def _run(type_name, spec, arrays, n_tops=None):
    return run_layer(type_name, spec, arrays, n_tops)


def test_lstm_is_caffes_equations_and_a_reset_starts_a_new_sequence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 4))
    cont = np.array([[0, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1.0]])
    layer, tops = _run("LSTM", {"recurrent_param": {"num_output": 3}}, [x, cont])
    w_xc, b_c, w_hc = (b.data for b in layer.blobs)
    np.testing.assert_allclose(tops[0].data, reference_lstm(x, cont, w_xc, b_c, w_hc), rtol=1e-12, atol=1e-12)
    # example 0 restarts at t = 3: from there it is the sequence x[3:] alone
    alone = reference_lstm(x[3:, :1], np.array([[0], [1.0]]), w_xc, b_c, w_hc)
    np.testing.assert_allclose(tops[0].data[3:, :1], alone, rtol=1e-12)


def test_expose_hidden_carries_the_state_across_two_batches_as_one_long_one():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 2, 3))
    cont = np.ones((6, 2))
    cont[0] = 0
    whole, tops = _run("LSTM", {"recurrent_param": {"num_output": 2}}, [x, cont])
    spec = {"top": ["h", "h_T", "c_T"], "recurrent_param": {"num_output": 2, "expose_hidden": True}}
    zeros = np.zeros((1, 2, 2))
    first, t1 = _run("LSTM", spec, [x[:3], cont[:3], zeros, zeros])
    for mine, theirs in zip(first.blobs, whole.blobs):
        mine.data[...] = theirs.data
    first.forward([_blob(x[:3]), _blob(cont[:3]), _blob(zeros), _blob(zeros)], t1)
    second, t2 = _run("LSTM", spec, [x[3:], cont[3:], t1[1].data, t1[2].data])
    for mine, theirs in zip(second.blobs, whole.blobs):
        mine.data[...] = theirs.data
    second.forward([_blob(x[3:]), _blob(cont[3:]), _blob(t1[1].data), _blob(t1[2].data)], t2)
    np.testing.assert_allclose(np.concatenate([t1[0].data, t2[0].data]), tops[0].data, rtol=1e-12)
    np.testing.assert_allclose(t2[1].data[0], tops[0].data[-1], rtol=1e-12)


def _blob(a):
    b = Blob("b", a.shape, np.float64)
    b.data[...] = a
    return b


def test_rnn_is_caffes_equations():
    rng = np.random.default_rng(2)
    x, cont = rng.normal(size=(4, 2, 3)), np.array([[0, 0], [1, 0], [1, 1], [1, 1.0]])
    layer, tops = _run("RNN", {"recurrent_param": {"num_output": 2}}, [x, cont])
    w_xh, b_h, w_hh, w_ho, b_o = (b.data for b in layer.blobs)
    for j in range(2):
        h = np.zeros(2)
        for t in range(4):
            h = np.tanh(w_xh @ x[t, j] + b_h + w_hh @ (cont[t, j] * h))
            np.testing.assert_allclose(tops[0].data[t, j], np.tanh(w_ho @ h + b_o), rtol=1e-12)


def test_lstm_unit_is_one_step_of_the_lstm():
    rng = np.random.default_rng(3)
    c_prev, x, cont = rng.normal(size=(1, 3, 2)), rng.normal(size=(1, 3, 8)), np.array([[1, 0, 1.0]])
    _, (c, h) = _run("LSTMUnit", {"top": ["c", "h"]}, [c_prev, x, cont], n_tops=2)
    i, f, o, g = sig(x[0, :, :2]), sig(x[0, :, 2:4]) * cont[0][:, None], sig(x[0, :, 4:6]), np.tanh(x[0, :, 6:])
    np.testing.assert_allclose(c.data[0], f * c_prev[0] + i * g, rtol=1e-12)
    np.testing.assert_allclose(h.data[0], o * np.tanh(f * c_prev[0] + i * g), rtol=1e-12)


def test_time_and_batch_swapped_is_a_clear_error():
    with pytest.raises(SpecError) as e:
        Net(loads("""
layer:
  - {name: in, type: Input, top: [x, cont], input_param: {shape: [{dim: [4, 28, 28]}, {dim: [28, 4]}]}}
  - {name: lstm, type: LSTM, bottom: [x, cont], top: h, recurrent_param: {num_output: 8}}
""", "r.yaml"), "TEST", "r.yaml")
    text = str(e.value)
    assert "cont must be (T, N) = [4, 28]" in text and "time first" in text and "r.yaml:4" in text


def test_permute_puts_time_first_and_back():
    x = np.random.default_rng(4).normal(size=(2, 5, 3))
    (y,), _ = _forward("Permute", {"permute_param": {"order": [1, 0, 2]}}, x)
    np.testing.assert_array_equal(y, x.transpose(1, 0, 2))
    (z,), _ = _forward("Permute", {"permute_param": {"order": [2]}}, x)
    np.testing.assert_array_equal(z, x.transpose(2, 0, 1))


def _forward(type_name, spec, *arrays):
    layer, tops = run_layer(type_name, spec, arrays)
    return [t.data for t in tops], layer


def test_the_summary_says_what_a_recurrent_layers_axes_mean():
    from netspec.summary import format_summary, summarize
    net = Net(loads("""
layer:
  - {name: in, type: Input, top: [x, cont], input_param: {shape: [{dim: [28, 64, 28]}, {dim: [28, 64]}]}}
  - {name: lstm, type: LSTM, bottom: [x, cont], top: h, recurrent_param: {num_output: 128}}
""", "s.yaml"), "TEST", "s.yaml", allocate=False)
    text = format_summary(summarize(net), "s", "TEST")
    assert "(28 steps x 64 sequences (time first), 28 inputs -> 128 hidden)" in text


def test_labels_in_n_by_t_for_scores_in_t_by_n_are_caught():
    with pytest.raises(SpecError) as e:
        Net(loads("""
layer:
  - {name: in, type: Input, top: [x, cont, label], input_param: {shape: [{dim: [5, 3, 2]}, {dim: [5, 3]}, {dim: [3, 5]}]}}
  - {name: lstm, type: LSTM, bottom: [x, cont], top: h, recurrent_param: {num_output: 4}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [h, label], top: loss, softmax_param: {axis: 2}}
""", "l.yaml"), "TRAIN", "l.yaml")
    assert "the two axes are swapped" in str(e.value) and "[5, 3]" in str(e.value)


SEQ_NET = """
name: carried
layer:
  - name: data
    type: DummyData
    top: [x, cont, target, h0, c0]
    dummy_data_param:
      shape: [{dim: [5, 8, 3]}, {dim: [5, 8]}, {dim: [8, 4]}, {dim: [1, 8, 4]}, {dim: [1, 8, 4]}]
      data_filler: [{type: gaussian}, {type: constant, value: 1}, {type: gaussian}, {type: constant},
                    {type: constant}]
  - name: lstm
    type: LSTM
    bottom: [x, cont, h0, c0]
    top: [h, h0, c0]     # the final state named as the initial one: carried into the next batch
    recurrent_param: {num_output: 4, expose_hidden: true, weight_filler: {type: gaussian, std: 0.5}}
  - {name: last, type: Slice, bottom: h, top: [h_early, h_last], slice_param: {axis: 0, slice_point: 4}}
  - {name: quiet, type: Silence, bottom: h_early}
  - {name: flat, type: Reshape, bottom: h_last, top: features, reshape_param: {shape: {dim: [-1, 4]}}}
  - {name: ip, type: InnerProduct, bottom: features, top: ip, inner_product_param: {num_output: 4}}
  - {name: loss, type: EuclideanLoss, bottom: [ip, target], top: loss}
"""


def test_a_state_named_as_its_final_state_is_carried_across_batches():
    net = Net(loads(SEQ_NET), "TRAIN", seed=3)
    lstm = net.layer_by_name("lstm")
    assert net.blobs["h0"].data.any() == 0
    net.forward()
    assert set(net.carried_states()) == {"lstm/h0", "lstm/c0"}
    np.testing.assert_array_equal(net.blobs["h0"].data[0], net.blobs["h"].data[-1])  # h_T, into h0's blob
    h0, c0 = net.blobs["h0"].data.copy(), net.blobs["c0"].data.copy()
    net.forward()  # the second batch starts from the first's final state
    x, cont = net.blobs["x"].data.astype(np.float64), net.blobs["cont"].data.astype(np.float64)
    w_xc, b_c, w_hc = (b.data.astype(np.float64) for b in lstm.blobs)
    want = reference_lstm(x, cont, w_xc, b_c, w_hc, h0, c0)
    np.testing.assert_allclose(net.blobs["h"].data, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(want, reference_lstm(x, cont, w_xc, b_c, w_hc), atol=1e-3)


def test_a_sequence_net_runs_as_slices_split_along_n_with_the_same_losses_gradients_and_state():
    from solvers.replicas import Replicas
    one, two = Net(loads(SEQ_NET), "TRAIN", seed=4), Net(loads(SEQ_NET), "TRAIN", seed=4)
    replicas = Replicas(two, 2)
    try:
        assert [r.shapes["x"] for r in replicas.nets] == [(5, 4, 3)] * 2  # split along N, never T
        for _ in range(3):  # the carried state makes each pass depend on the last
            one.param_diff[...] = 0
            two.param_diff[...] = 0
            loss = one.forward_backward()
            np.testing.assert_allclose(replicas.forward_backward(), loss, rtol=1e-5)
            np.testing.assert_allclose(two.param_diff, one.param_diff, rtol=1e-4, atol=1e-6)
            for name in ("h", "h0", "c0", "features"):
                np.testing.assert_allclose(two.blobs[name].data, one.blobs[name].data, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(two.blobs["h"].diff, one.blobs["h"].diff, rtol=1e-4, atol=1e-7)
    finally:
        replicas.close()


def test_a_carried_state_is_saved_in_snapshots_and_restored_on_resume(tmp_path):
    from solvers.snapshot import read
    from solvers.trainer import Trainer
    (tmp_path / "net.yaml").write_text(SEQ_NET)
    (tmp_path / "solver.yaml").write_text("net: net.yaml\nbase_lr: 0.01\nmax_iter: 3\nsnapshot: 3\n"
                                          "snapshot_prefix: snap/seq\nrandom_seed: 1\ndisplay: 0\n")
    t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None)
    t.train()
    state = tmp_path / "snap" / "seq_iter_3.solverstate.npz"
    _, _, _, extra = read(str(state))
    np.testing.assert_array_equal(extra["state/lstm/h0"], t.net.blobs["h0"].data)
    assert extra["state/lstm/c0"].any()
    (tmp_path / "solver.yaml").write_text((tmp_path / "solver.yaml").read_text().replace("max_iter: 3",
                                                                                         "max_iter: 4"))
    lines = []
    again = Trainer(str(tmp_path / "solver.yaml"), out=lines.append)
    again.begin(snapshot_path=str(state))
    np.testing.assert_array_equal(again.net.blobs["c0"].data, extra["state/lstm/c0"])
    assert any("carried across batches restored" in str(line) for line in lines)


@pytest.mark.parametrize("path, n, h_dim", [("one call", 5, 16), ("one call", 9, 32), ("one call", 16, 32),
                                            ("chunks", 16, 32), ("chunks", 18, 32), ("per step", 5, 16),
                                            ("numpy", 5, 16)])
def test_the_float32_lstm_steps_equal_the_float64_layer(path, n, h_dim, monkeypatch):
    """float32 (training's dtype) runs each step in one kernel with float32 tanh and sigmoid (lstm_step32) and
    the backward with the recurrent product's diff fused in: its top, carried state and every diff equal the
    float64 layer's (NumPy's exact functions) to float32 rounding; resets by cont included. "one call": on one
    thread (a slice) all steps of a pass run in one kernel call (lstm_forward32, lstm_backward32); "per step": a
    kernel a step (more threads); "numpy": the NumPy path for float32 too; "chunks": on two threads the whole
    batch as two chunks of sequences side by side in one call (lstm_forward32_chunks, lstm_backward32_chunks; 9
    sequences a chunk: its last row tile overlaps). N = 9 or 16, H = 32: the step products in register tiles
    (step_product; at 9 the last row tile overlaps, 16 is two tiles of ROWS_MR on AVX-512), with the input product
    inside them (lstm_forward32_joined, both weight gradients in one product), else by OpenBLAS."""
    import numba
    import layers.recurrent as rec
    from layers.cpu import pooled
    monkeypatch.setattr(rec, "FAST_FLOAT32", path != "numpy")
    calls = []
    # (not, for "chunks", the kernels that the chunks' kernels call: compiled while a callee is patched, they
    # would not type)
    for name in ("lstm_forward32_chunks", "lstm_backward32_chunks") + (
            () if path == "chunks" else ("lstm_forward32", "lstm_forward32_joined", "lstm_backward32")):
        kernel = getattr(rec, name)
        monkeypatch.setattr(rec, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    threads = numba.get_num_threads()
    if path == "one call":
        if not pooled():
            pytest.skip("OpenBLAS's CBLAS is not callable from kernels here (the per-step path runs)")
        numba.set_num_threads(1)
    elif path == "chunks":
        if not pooled() or numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("one thread, or OpenBLAS's CBLAS not callable from kernels: no chunks")
        numba.set_num_threads(2)
    elif threads == 1:
        pytest.skip("one thread: the one-call path runs")
    try:
        results = _float32_and_float64_lstm(n, h_dim)
    finally:
        numba.set_num_threads(threads)
    joined = n >= rec.PIX_MR and 4 * h_dim % rec.TILE_COLS == 0  # the input product inside the steps'
    assert calls == ([("lstm_forward32_joined" if joined else "lstm_forward32"), "lstm_backward32"]
                     if path == "one call" else ["lstm_forward32_chunks", "lstm_backward32_chunks"]
                     if path == "chunks" else [])
    assert (n >= rec.PIX_MR and h_dim % rec.TILE_COLS == 0) == (h_dim == 32)  # which product ran
    assert np.abs(results[0][0]).max() > 0.3 and (results[0][0] < 0).any()
    for want, got in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * np.abs(want).max())


def _float32_and_float64_lstm(n, h_dim):
    """[tops, x's diff, the blobs' diffs] of one LSTM forward and backward in float64, then float32 with the
    same weights and inputs (resets by cont, an initial state)."""
    from layers.gradcheck import make_layer
    rng = np.random.default_rng(3)
    t_len, i_dim = 6, 7
    x = rng.normal(size=(t_len, n, i_dim)) * 2
    cont = (rng.uniform(size=(t_len, n)) > 0.25).astype(float)
    cont[0] = 0
    h0, c0 = rng.normal(size=(1, n, h_dim)), rng.normal(size=(1, n, h_dim))
    spec = {"top": ["h", "h_T", "c_T"], "recurrent_param": {"num_output": h_dim, "expose_hidden": True}}
    dtop = rng.normal(size=(t_len, n, h_dim))
    results = []
    for dtype in (np.float64, np.float32):
        layer, tops = make_layer("LSTM", spec, [x.shape, cont.shape, h0.shape, c0.shape], dtype=dtype, n_tops=3)
        for b in layer.blobs:
            b.data[...] = rng.normal(0, 0.5, b.shape)
        bottoms = [Blob(f"b{k}", a.shape, dtype) for k, a in enumerate((x, cont, h0, c0))]
        for b, a in zip(bottoms, (x, cont, h0, c0)):
            b.data[...] = a
        if dtype == np.float64:
            weights = [b.data.copy() for b in layer.blobs]
        else:
            for b, w in zip(layer.blobs, weights):
                b.data[...] = w
        layer.forward(bottoms, tops)
        tops[0].diff[...] = dtop
        layer.backward(tops, [True, False, False, False], bottoms)
        results.append([t.data.astype(np.float64) for t in tops] + [bottoms[0].diff.astype(np.float64)]
                       + [b.diff.astype(np.float64) for b in layer.blobs])
    return results


@pytest.mark.parametrize("slices", [1, 2])
def test_a_top_that_only_silence_reads_is_not_copied_and_changes_no_result(slices):
    """Net.skip_silenced (the trainer's TRAIN net): Caffe's LSTM idiom slices off the last step and silences the
    others; Slice then copies only the last step forward and writes zeros for the others' diff. Losses, every
    param diff and the sequence's diff equal the copying net's; the silenced top is left unwritten; whole and as
    slices along N. A top that another layer also reads (through a Split) is copied."""
    from solvers.replicas import Replicas
    plain, skipping = Net(loads(SEQ_NET), "TRAIN", seed=4), Net(loads(SEQ_NET), "TRAIN", seed=4)
    assert skipping.skip_silenced() == 1 and skipping.layer_by_name("last").silenced == (0,)
    assert skipping.layer_by_name("quiet").unread == (0,) and plain.layer_by_name("quiet").unread == ()
    assert plain.layer_by_name("last").silenced == ()
    runner = Replicas(skipping, 2) if slices == 2 else skipping
    try:
        if slices == 2:
            assert [r.layer_by_name("last").silenced for r in runner.nets] == [(0,), (0,)]
        for _ in range(2):
            plain.param_diff[...] = 0
            skipping.param_diff[...] = 0
            skipping.blobs["h"].diff[...] = np.nan  # every value of the sequence's diff must be written
            loss = plain.forward_backward()
            np.testing.assert_allclose(runner.forward_backward(), loss, rtol=1e-5)
            np.testing.assert_allclose(skipping.param_diff, plain.param_diff, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(skipping.blobs["h"].diff, plain.blobs["h"].diff, rtol=1e-4, atol=1e-7)
            assert not plain.blobs["h"].diff[:4].any()
        assert plain.blobs["h_early"].data.any() and not skipping.blobs["h_early"].data.any()
    finally:
        if slices == 2:
            runner.close()
    also = "  - {name: also, type: Power, bottom: h_early, top: p}\n"
    read = SEQ_NET.replace("  - {name: flat,", also + "  - {name: flat,")
    both = Net(loads(read), "TRAIN", seed=4)
    assert both.skip_silenced() == 0 and both.layer_by_name("last").silenced == ()


def test_lean_slices_copy_back_only_what_the_trainer_reads_and_carry_the_state():
    """lean_slices (the trainer's net): the slices of a sequence batch copy back their data tops (the carried
    state) and not the other blobs; losses, param diffs and the carried state equal the whole net's."""
    from solvers.replicas import Replicas
    one, two = Net(loads(SEQ_NET), "TRAIN", seed=4), Net(loads(SEQ_NET), "TRAIN", seed=4)
    two.lean_slices = True
    replicas = Replicas(two, 2)
    try:
        for _ in range(3):
            one.param_diff[...] = 0
            two.param_diff[...] = 0
            loss = one.forward_backward()
            np.testing.assert_allclose(replicas.forward_backward(), loss, rtol=1e-5)
            np.testing.assert_allclose(two.param_diff, one.param_diff, rtol=1e-4, atol=1e-6)
            for name in ("h0", "c0"):
                np.testing.assert_allclose(two.blobs[name].data, one.blobs[name].data, rtol=1e-5, atol=1e-6)
        assert one.blobs["h"].data.any() and not two.blobs["h"].data.any() and not two.blobs["h"].diff.any()
    finally:
        replicas.close()


@pytest.mark.parametrize("m", [5, 6, 7, 8, 9, 16, 30, 32])
def test_step_product_is_the_matrix_product_in_either_tile_and_as_python(m, monkeypatch):
    """step_product (an LSTM step's product on the calling thread) on b packed by pack_panels: tiles of ROWS_MR
    rows where they divide m, else of PIX_MR rows with the last overlapping, else (fewer rows than a tile: nothing
    packed) OpenBLAS; compiled and, where tiles run, with the tiles in Python (NUMBA_DISABLE_JIT's), both a @ b;
    the panels hold b's columns, TILE_COLS of them at a time, each panel contiguous."""
    import functools
    import layers.recurrent as rec
    from layers import simd
    from layers.cpu import pooled
    pooled()  # (registers OpenBLAS's sgemm for the kernels, which step_product's fallback names, as a net does)
    rng = np.random.default_rng(m)
    a, b = rng.normal(size=(m, 37)).astype(np.float32), rng.normal(size=(37, 2 * rec.TILE_COLS)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    c = np.full((m, b.shape[1]), np.nan, np.float32)
    bp = rec.pack_panels(b, m)
    rec.step_product(a, b, c, bp)
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)
    if m < rec.PIX_MR:
        assert bp.size == 0
        return  # (OpenBLAS, named from the kernel: not callable from Python)
    cols = rec.TILE_COLS
    np.testing.assert_array_equal(bp.reshape(-1, 37, cols), b.reshape(37, -1, cols).transpose(1, 0, 2))
    monkeypatch.setattr(rec, "tile_rows", functools.partial(simd._py_tile_pixels, simd.ROWS_MR, simd.PIX_NV, False))
    monkeypatch.setattr(rec, "tile_pixels", functools.partial(simd._py_tile_pixels, simd.PIX_MR, simd.PIX_NV, False))
    c = np.full((m, b.shape[1]), np.nan, np.float32)
    rec.step_product.py_func(a, b, c, bp)
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)
