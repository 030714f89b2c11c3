"""yaffe against real Caffe, layer by layer: the fixtures in tests/fixtures/caffe_parity/ were recorded with
BVLC Caffe 1.0 (Debian bullseye, pycaffe) by tests/caffe_parity/make_fixtures.py; see its README.

Each case is a Caffe prototxt of Input layers feeding one layer, with the bottoms, params, tops, the top diffs
and the bottom and param diffs Caffe computed. yaffe reads the same prototxt, takes the same bottoms and
params, and must give the same numbers to float32 rounding (Caffe's own tests use 1e-4 relative or so).
"""
import os
import sys

import numpy as np
import pytest

from netspec.caffemodel import blob_bytes
from netspec.net import Net
from netspec.prototxt import load as load_prototxt

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_parity")
LAYERS = np.load(os.path.join(FIX, "layers.npz"))
CASES = sorted({k.split("/")[0] for k in LAYERS.files})
VECTORS = np.load(os.path.join(FIX, "vectors.npz"))  # longer bottoms: the vectorized kernels (make_fixtures.py)


def _generator(name):
    """A fixture generator of tests/caffe_parity (its inputs and geometry are the tests')."""
    import importlib
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "caffe_parity"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def close(ours, caffe, what, rtol=2e-4, atol=2e-5):
    ours, caffe = np.asarray(ours, np.float64), np.asarray(caffe, np.float64)
    assert ours.shape == caffe.shape, f"{what}: shape {list(ours.shape)}, Caffe's {list(caffe.shape)}"
    scale = max(1.0, float(np.abs(caffe).max(initial=0)))
    np.testing.assert_allclose(ours, caffe, rtol=rtol, atol=atol * scale, err_msg=what)


def run_case(name, tmp_path, fixtures=LAYERS):
    get = {k.split("/", 1)[1]: fixtures[k] for k in fixtures.files if k.split("/")[0] == name}
    path = tmp_path / f"{name}.prototxt"
    path.write_text(str(get["prototxt"]))
    if "H" in get:
        (tmp_path / "H.binaryproto").write_bytes(blob_bytes(get["H"].reshape((1, 1) + get["H"].shape)))
    if "pymodule" in get:  # the Python layer's module, as Caffe imported it: beside the net
        (tmp_path / "pylayer_cases.py").write_text(str(get["pymodule"]))
        sys.modules.pop("pylayer_cases", None)
    doc, _ = load_prototxt(str(path))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a prototxt's paths (HDF5Output's file) are relative to the working directory
    try:
        net = Net(doc, str(get["phase"]), str(path), seed=0)
    finally:
        os.chdir(cwd)
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
    if "output_file" in get:  # HDF5Output: the file Caffe wrote, read with h5py, against ours
        h5py = pytest.importorskip("h5py")
        layer.file.close()
        (tmp_path / "caffe.h5").write_bytes(get["output_file"].tobytes())
        with h5py.File(tmp_path / "caffe.h5", "r") as theirs, h5py.File(layer.path, "r") as ours:
            assert sorted(ours) == sorted(theirs) == ["data", "label"]
            for key in theirs:
                close(ours[key][:], theirs[key][:], f"{name}: dataset {key}", 0, 0)
                assert ours[key].dtype == theirs[key].dtype
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


@pytest.mark.parametrize("name", [c for c in CASES if c.startswith("lstm") and "unit" not in c])
def test_lstm_on_one_thread_matches_caffe(name, tmp_path):
    """On one thread (a slice of the batch) the LSTM runs all its steps in one kernel call (lstm_forward32,
    lstm_backward32): Caffe's numbers too."""
    import numba
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        run_case(name, tmp_path)
    finally:
        numba.set_num_threads(threads)


def test_lstm_as_chunks_on_two_threads_matches_caffe(tmp_path, monkeypatch):
    """On two threads the LSTM runs its batch as chunks of sequences side by side in one kernel call, each chunk
    on a thread with its own weight gradient (lstm_forward32_chunks, lstm_backward32_chunks; 18 sequences: two
    chunks of 9, the last row tile of each overlapping): Caffe's numbers too."""
    import numba
    import layers.recurrent as rec
    from layers.cpu import pooled
    if numba.config.NUMBA_NUM_THREADS < 2 or not pooled():
        pytest.skip("one thread, or OpenBLAS's CBLAS not callable from kernels: no chunks")
    calls = []
    for name in ("lstm_forward32_chunks", "lstm_backward32_chunks"):
        kernel = getattr(rec, name)
        monkeypatch.setattr(rec, name, lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        run_case("lstm_chunks", tmp_path, VECTORS)
    finally:
        numba.set_num_threads(before)
    assert calls == ["lstm_forward32_chunks", "lstm_backward32_chunks"]


@pytest.mark.parametrize("threads", ["all", 1])
@pytest.mark.parametrize("name", sorted({k.split("/")[0] for k in VECTORS.files}))
def test_vectorized_kernels_match_caffe_on_longer_bottoms(name, threads, tmp_path):
    """Hundreds of values a bottom (vectors.npz): the vector loops and their remainders, the float32 exp, log,
    tanh and erfc approximations, Softmax along the planes, the LSTM's register tiles and its one-call steps (on
    one thread), against real Caffe."""
    import numba
    before = numba.get_num_threads()
    if threads == 1:
        numba.set_num_threads(1)
    try:
        run_case(name, tmp_path, VECTORS)
    finally:
        numba.set_num_threads(before)


def test_every_shared_layer_type_has_a_caffe_case():
    """A layer type yaffe shares with Caffe 1.0 without a case here is unchecked against Caffe."""
    from layers.base import REGISTRY
    covered = set()
    for name in CASES:
        text = str(LAYERS[f"{name}/prototxt"])
        covered.add(text.split('name: "under_test" type: "')[1].split('"')[0])
    not_in_caffe = {"Maxout", "Permute", "GELU", "Mish", "HardSwish", "SiLU", "LayerNorm", "GroupNorm", "SmoothL1Loss",
                    "DropPath"}  # yaffe's own (Permute is SSD-Caffe's, not in BVLC Caffe 1.0)
    # sources (compared in tests/test_data.py; WindowData samples at random) and layers with nothing to compare
    sources = {"Data", "HDF5Data", "ImageData", "MemoryData", "DummyData", "Input", "Parameter", "Silence", "WindowData"}
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


# ---- whole nets: each models/* net on a fixed batch, and LeNet under every solver type ----------------------

NETS = np.load(os.path.join(FIX, "nets.npz"))
NET_NAMES = sorted({k.split("/")[0] for k in NETS.files})


def _net_setup(name, tmp_path):
    from tests.caffe_parity.nets import export
    shapes = {k.rsplit("/", 1)[1]: tuple(int(v) for v in NETS[k]) for k in NETS.files
              if k.startswith(f"{name}/input_shape/")}
    e = export(name, shapes)  # no data files needed: the batch is drawn from RandomState
    (tmp_path / "net.prototxt").write_text(e["net"])
    (tmp_path / "solver.prototxt").write_text(e["solver"])
    got = np.array([float(np.sum(e["init"][k], dtype=np.float64)) for k in sorted(e["init"])])
    np.testing.assert_allclose(got, NETS[f"{name}/init_sum"], rtol=1e-6, err_msg="not Caffe's initial weights")
    return e


def _fill(net, e):
    net.load_weights(e["init"], "init")
    for key, value in e["inputs"].items():
        net.blobs[key].data[...] = value


def _sample_close(ours, caffe, what, rtol, atol, kinks=0.0):
    """ours sampled as Caffe's was (tests/caffe_parity/nets.sample) equals it to rtol/atol (atol relative to the
    largest magnitude). kinks: the fraction of entries allowed to be off by up to 100x the tolerance, for values a
    ReLU or a MAX pooling window decides where the two inputs are equal to float32 rounding."""
    from tests.caffe_parity.nets import sample
    s = sample(ours, n=len(caffe) - 3) if len(caffe) > 3 else sample(ours, 0)
    scale = float(np.abs(caffe[:-3]).max(initial=0)) or 1.0
    err = np.abs(s[:-3] - caffe[:-3]) / (atol * scale + rtol * np.abs(caffe[:-3]))
    assert err.size == 0 or ((err > 1).mean() <= kinks and err.max() <= (100 if kinks else 1)), (
        f"{what}: {(err > 1).sum()} of {err.size} entries off (worst {err.max():.3g} x the tolerance)")
    sums = np.abs(s[-3:] - caffe[-3:]) <= 10 * (atol * scale * np.sqrt(err.size + 1) + rtol * np.abs(caffe[-3:]))
    assert sums.all(), f"{what}: sums {s[-3:]} against Caffe's {caffe[-3:]}"


@pytest.mark.parametrize("name", NET_NAMES)
def test_net_forward_backward_matches_caffe(name, tmp_path):
    """One forward/backward from Caffe's starting point: every output, every param diff, every blob's sums."""
    e = _net_setup(name, tmp_path)
    doc, _ = load_prototxt(str(tmp_path / "net.prototxt"))
    net = Net(doc, "TRAIN", str(tmp_path / "net.prototxt"), seed=0)
    bn = any(l.type == "BatchNorm" for l in net.layers)
    _fill(net, e)
    net.forward_backward()
    if name == "resnet_fashion":  # its 3x3s on Winograd's: F(4x4, 3x3) gradients, F(2x2, 3x3) forwards from 32
        plans = [l._wino_plans for l in net.layers if getattr(l, "_wino_plans", None)]  # channels (layers/conv.py)
        assert len(plans) >= 4 and all(p[3].al == 6 for p in plans) and any(p[1] and p[1].al == 4 for p in plans)
    for key in NETS.files:
        part = key.split("/", 2)
        if part[0] != name:
            continue
        if part[1] == "out0":
            assert float(net.blobs[part[2]].data.sum()) == pytest.approx(float(NETS[key]), rel=2e-5), key
        elif part[1] == "diff":
            layer, i = part[2].rsplit("/", 1)
            # BatchNorm's backward subtracts two means of the diff and Scale's gradient sums dy * x over the batch:
            # Caffe sums in float32, so under nine BatchNorms (ResNet) its own gradients carry ~1e-3 of rounding
            tol = (1e-2, 2e-3) if bn else (1e-3, 1e-4)
            _sample_close(net.layer_by_name(layer).blobs[int(i)].diff, NETS[key], key, *tol, kinks=0.01)
        elif part[1] == "blob" and part[2] in net.blobs:
            _sample_close(net.blobs[part[2]].data, NETS[key], key, 1e-4, 1e-5)


@pytest.mark.parametrize("name", NET_NAMES)
def test_net_trains_like_caffe_for_20_iterations(name, tmp_path, monkeypatch):
    """20 iterations of the net's solver on one fixed batch: the loss at every iteration, the final weights.
    Both compute in float32 but sum in different orders; training amplifies the last bits (a ReLU or a MAX
    pooling window on a near-tie sends a gradient elsewhere; adaptive rules divide by small roots), so the
    losses agree to 1e-5 relative early and drift to about 1e-3 by iteration 20 (ResNet: 5e-4 measured)."""
    from solvers.trainer import Trainer
    monkeypatch.chdir(tmp_path)  # a prototxt solver's snapshots go to the working directory, as Caffe's
    e = _net_setup(name, tmp_path)
    t = Trainer(str(tmp_path / "solver.prototxt"), out=lambda *a: None, overrides={"display": 1})
    _fill(t.net, e)
    t.train()
    with open(t.metrics_path) as f:
        import json
        recs = [r for r in map(json.loads, f) if r["phase"] == "train" and r.get("images_per_s") is not None]
    ours = {r["iter"]: r["loss"] for r in recs}
    tol = (2e-2, 1e-2) if any(l.type == "BatchNorm" for l in t.net.layers) else (1e-2, 5e-3)
    outputs = [k.split("/", 2)[2] for k in NETS.files if k.startswith(f"{name}/steps/")]
    weights = {o: float(t.net.loss_blobs[[b.name for b, _ in t.net.loss_blobs].index(o)][1])
               for o in outputs if o in [b.name for b, _ in t.net.loss_blobs]}
    caffe = sum(NETS[f"{name}/steps/{o}"] * w for o, w in weights.items())
    got = np.array([ours[i] for i in range(len(caffe))])
    np.testing.assert_allclose(got[:5], caffe[:5], rtol=2e-5, atol=1e-6, err_msg=f"{name}: the loss, iterations 0-4")
    late = 2e-3 if tol[0] > 1e-2 else 2e-5  # BatchNorm nets drift (ResNet: 5e-4 by iteration 20); others 1e-5
    np.testing.assert_allclose(got, caffe, rtol=late, atol=1e-5, err_msg=f"{name}: the loss per iteration")
    for key in NETS.files:
        part = key.split("/", 2)
        if part[0] == name and part[1] == "final":
            layer, i = part[2].rsplit("/", 1)
            lay = t.net.layer_by_name(layer)  # running means of activations near 0: the rounding of their sums shows
            _sample_close(lay.blobs[int(i)].data, NETS[key], key, *(5 * v for v in tol) if lay.statistics else tol)


def test_convolutions_and_inner_products_in_the_lanes_match_caffe(tmp_path, monkeypatch):
    """A batch of 24 fills the lanes (one group of 32 at 0.75 on AVX-512, two of 16 at 32-byte vectors): LeNet's
    conv2 shape with its forward and data gradient in the lanes, a leaky ReLU, a stride-2 3x3 in the lanes both
    ways, an InnerProduct of 24 rows x 40 outputs on the transposed product. Tops, bottom diffs and param diffs
    against pycaffe's (tests/fixtures/caffe_parity/lanes_net.npz, recorded by BVLC Caffe 1.0 in the Debian chroot:
    the one-pass parity nets above run batches too small for the lanes)."""
    import yaffe as caffe
    r = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "caffe_parity", "lanes_net.npz"))
    path = tmp_path / "net.prototxt"
    path.write_text(str(r["prototxt"]))
    import layers.conv as conv
    calls, original = [], conv.lanes_conv_data
    monkeypatch.setattr(conv, "lanes_conv_data", lambda *a: calls.append(1) or original(*a))
    net = caffe.Net(str(path), caffe.TRAIN)
    for key in r.files:
        if key.startswith("param/"):
            _, layer, i = key.split("/")
            net.params[layer][int(i)].data[...] = r[key]
    net.blobs["data"].data[...] = r["x"]
    net.forward()
    net.blobs["ip2"].diff[...] = r["g"]
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0
    net.backward()
    paths = {l.name: l.path_taken for l in net._net.layers if l.type == "Convolution"}
    assert paths == {"c2": "direct (images in the lanes)", "down": "direct (images in the lanes)"}
    assert len(calls) == 4  # each convolution's forward and data gradient (10 and 6 filters: im2col's before)

    def close(ours, theirs, what):
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max(), what
    for key in r.files:
        kind, _, name = key.partition("/")
        if kind == "top":
            close(net.blobs[name].data, r[key], key)
        elif kind == "bottom_diff":
            close(net.blobs[name].diff, r[key], key)
        elif kind == "diff":
            layer, i = name.split("/")
            close(net.params[layer][int(i)].diff, r[key], key)


def test_ave_pooling_backward_is_caffes_to_the_bit():
    """AVE pooling's bottom diff as Caffe computes it, to the bit: each window's share in the bottom's dtype (its
    diff / its size, float32 / float32) added in Caffe's order, on the loops of windows inside the image (whose
    third tap column goes first: an even column gets window px - 1's share before px's) and the clipped and
    padded windows' loops alike."""
    from layers.pooling import ave_pool_backward
    for name, pad in (("pool_ave_ceil", 0), ("pool_ave_pad", 1)):
        dt, db = LAYERS[f"{name}/dt0"], LAYERS[f"{name}/db0"]
        dx = np.full_like(db, np.nan)
        ave_pool_backward(dt, 3, 3, 2, 2, pad, pad, dx)
        np.testing.assert_array_equal(dx, db, err_msg=name)


@pytest.mark.parametrize("batch,rows,channels_last", [(8, True, False), (8, False, False), (1, True, False),
                                                      (8, True, True), (1, True, True)])
def test_a_forward_only_resnet_deploy_net_matches_caffe(batch, rows, channels_last, tmp_path, monkeypatch):
    """A ResNet-style deploy net (BatchNorm with global statistics, Scale, ReLU and leaky ReLU in place, SUM
    shortcuts, 1x1 stride-2 projections, MAX and global AVE pooling) run as run.py predict runs it (forward only,
    constant weights: BatchNorm and Scale folded into the convolutions, the ReLUs and SUMs inside them), against
    Caffe's forward of the same prototxt, params and images (tests/fixtures/caffe_parity/deploy_resnet.npz,
    recorded by BVLC Caffe 1.0 in the Debian chroot with tests/caffe_parity/make_deploy_fixture.py). At a batch of
    8 on AVX-512 the unpadded kernel takes the rows of 32 and 16 at stride 1 and the stride-2 rows of 16, and the
    flat kernel the 8x8 planes (at batch 1 too); at batch 1 the bands and pixel tiles take the rest. With conv.ROWS_EPILOGUE (as shipped) the stride-1 convolutions on rows
    of 32 take the rows kernel instead, their ReLU and SUM applied to each plane after. channels_last: the
    convolutions run as one run kept channels-last between them (netspec/channels_last.py, as shipped), the
    compared blobs written back for keep_blobs (as run.py predict names them)."""
    fixture = _generator("make_deploy_fixture")
    import layers.conv as conv
    import netspec.channels_last as cl
    from layers import simd
    monkeypatch.setattr(cl, "ENABLED", channels_last)
    chained, wino, cl_calls = cl.Program.conv, cl.Program.wino, []
    monkeypatch.setattr(cl.Program, "conv", lambda *a: cl_calls.append("conv") or chained(*a))
    monkeypatch.setattr(cl.Program, "wino", lambda *a: cl_calls.append("winograd") or wino(*a))
    r = np.load(os.path.join(FIX, "deploy_resnet.npz"))
    path = tmp_path / "deploy.prototxt"
    path.write_text(fixture.PROTOTXT.replace("dim: 8 dim: 3", f"dim: {batch} dim: 3"))
    net = Net(load_prototxt(str(path))[0], "TEST", str(path), seed=0)
    net.keep_for_backward, net.constant_weights = False, True  # (as run.py predict runs it)
    shapes = [(layer.name, d.type, [b.data.shape for b in layer.blobs])
              for layer, d in zip(net.layers, net.defs) if layer.blobs]
    for (name, i), value in fixture.params(shapes).items():
        net.layer_by_name(name).blobs[i].data[...] = value
    net.blobs["data"].data[...] = fixture.batch()[:batch]
    monkeypatch.setattr(conv, "ROWS_EPILOGUE", rows)
    calls, kernel, row_calls, row_kernel = [], conv.direct_conv_unpadded, [], conv.direct_conv_rows
    monkeypatch.setattr(conv, "direct_conv_unpadded", lambda *a: calls.append((a[1], a[5], a[0].shape[3])) or kernel(*a))
    monkeypatch.setattr(conv, "direct_conv_rows", lambda *a: row_calls.append((a[4].shape[3], a[6].size > 0, a[9]))
                        or row_kernel(*a))
    net.keep_blobs = fixture.COMPARED
    for _ in range(2):  # the second pass on the folds made by the first
        net.forward()
        tag = f"b{batch}"
        for name in fixture.COMPARED:
            ours = net.blobs[name].data[fixture.SAMPLES.get((tag, name), np.s_[:])]
            close(ours, r[f"{tag}/{name}"], f"batch {batch}: {name}", rtol=1e-4, atol=1e-5)
    # (kernel rows, stride, bottom width): 3x3 on rows of 32 and at stride 2 from a batch of 8, the 1x1 projection
    # at any batch
    if channels_last:  # every convolution (bound once), those 3x3s of stride 1 reading 32 channels as Winograd's
        assert len(cl_calls) == sum(d.type == "Convolution" for d in net.defs) and not calls
        run = cl._Run(net, {}, {}, {})
        assert cl_calls.count("winograd") == sum(d.type == "Convolution" and run._winograd(i)
                                                 for i, d in enumerate(net.defs)) > 0
        return
    taken = set() if simd.VECTOR_BYTES != 64 else {(3, 1, 16), (1, 2, 32)} if batch == 1 else {(3, 1, 32),
                                                                                                (3, 2, 32), (1, 2, 32)}
    if rows and batch > 1:  # (top width, a SUM added, a ReLU): the 32-wide stride-1 ones on the rows kernel
        taken.discard((3, 1, 32))
        assert {(32, True, True), (32, False, True)} <= set(row_calls)
    assert taken <= set(calls)


def test_caffe_io_resizes_and_loads_images_as_pycaffe(tmp_path):
    """caffe.io.resize_image, Transformer.preprocess/deprocess and load_image against pycaffe's on the same arrays
    and PNGs (tests/fixtures/caffe_parity/io.npz, recorded with tests/caffe_parity/make_io_fixture.py: Caffe 1.0 with
    scikit-image 0.18 and scipy 1.6): bilinear and nearest, growing, shrinking (anti-aliased), both at once, edges
    against the image's minimum, a range other than [0, 1], a constant image, 2 and 4 channels (scipy's zoom);
    RGB and RGBA files in colour and in grey (scikit-image's weights, alpha onto white). Found running
    examples/net_surgery.ipynb: its 451 x 451 input differed from Caffe's at the borders (clamped edges) and a grey
    load of a colour file used other weights."""
    pytest.importorskip("PIL")
    fixture = _generator("make_io_fixture")
    import yaffe as caffe
    r = np.load(os.path.join(FIX, "io.npz"))
    ims = fixture.images()
    for name, _, dims, order, (lo, hi) in fixture.RESIZE:
        ours = caffe.io.resize_image(ims[name], dims, interp_order=order)
        assert ours.dtype == np.float32 and ours.shape == r[f"resize_{name}"].shape, name
        np.testing.assert_allclose(ours, r[f"resize_{name}"], rtol=0, atol=1e-6 * max(1, hi - lo), err_msg=name)
    t = fixture.transformer(caffe)
    pre = t.preprocess("data", ims["transformer"])
    np.testing.assert_allclose(pre, r["preprocess"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", pre), r["deprocess"], rtol=0, atol=1e-5)
    t.set_mean("data", ims["mean"])  # 3 x 10 x 12 for an 8 x 8 input: resized (it was an error)
    np.testing.assert_allclose(t.preprocess("data", ims["transformer"]), r["preprocess_pixel_mean"], rtol=0, atol=1e-4)
    for key in ("rgb_png", "rgba_png"):
        path = tmp_path / f"{key}.png"
        path.write_bytes(fixture.png_bytes(ims[key]))
        for color, tag in ((True, "color"), (False, "grey")):
            ours = caffe.io.load_image(str(path), color=color)
            assert ours.dtype == np.float32 and ours.shape == r[f"load_{key}_{tag}"].shape, (key, tag)
            np.testing.assert_allclose(ours, r[f"load_{key}_{tag}"], rtol=0, atol=1e-6, err_msg=f"{key} {tag}")


def test_images_are_read_as_caffes_opencv_reads_them(tmp_path):
    """Every path that reads image files against Caffe's ImageData tops on the same files (io.npz): BGR, OpenCV's
    bilinear resize to the pixel (shrinking, growing, both, exact halving, no resize), grey from colour as each of
    OpenCV's decoders makes it (PNG, JPEG, BMP), a grey file in colour, JPEGs turned by each EXIF orientation.
    Through layers.images.read_image, the ImageData layer, `run.py data convert --resize` to an LMDB read by a Data
    layer, an encoded Datum (convert_imageset --encoded) and run.py predict's reading. yaffe read RGB and resized
    with Pillow before (found fine-tuning CaffeNet as examples/02-fine-tuning does: its BGR mean and weights met RGB
    images)."""
    pytest.importorskip("PIL")
    fixture = _generator("make_io_fixture")
    from layers import images, sources
    from netspec.loader import loads
    from solvers.predict import _image
    r = np.load(os.path.join(FIX, "io.npz"))
    for name in fixture.image_files():
        (tmp_path / name).write_bytes(r[f"file_{name}"].tobytes())
    for k, (name, _, (h, w), color) in enumerate(fixture.IMAGE_DATA):
        caffe = r[f"imagedata_{k}"]
        np.testing.assert_array_equal(images.read_image(str(tmp_path / name), color, h, w), caffe, err_msg=f"case {k}")
        if h:
            np.testing.assert_array_equal(_image(str(tmp_path / name), 3 if color else 1, (h, w)), caffe)
    for o in fixture.EXIF:  # a JPEG turned by its EXIF orientation, as OpenCV's imread turns it
        (tmp_path / f"exif{o}.jpg").write_bytes(r[f"exif_file_{o}"].tobytes())
        for color, tag in ((True, "color"), (False, "grey")):
            np.testing.assert_array_equal(images.read_image(str(tmp_path / f"exif{o}.jpg"), color),
                                          r[f"exif_{o}_{tag}"], err_msg=f"EXIF orientation {o}, {tag}")
    # the ImageData layer, a batch of the three colour resizes of a.png (each its own net: one size a net)
    for k in (0, 2, 6):
        name, _, (h, w), color = fixture.IMAGE_DATA[k]
        (tmp_path / "list.txt").write_text(f"{name} 1\n")
        text = ("layer:\n  - {name: d, type: ImageData, top: [data, label], image_data_param: {source: list.txt, "
                f"batch_size: 2, new_height: {h}, new_width: {w}, is_color: {str(color).lower()}}}}}\n")
        path = str(tmp_path / "net.yaml")
        net = Net(loads(text, path), "TEST", path, seed=0)
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data[1], r[f"imagedata_{k}"], err_msg=f"ImageData case {k}")
    # run.py data convert (convert_imageset) with --resize, read back through a Data layer
    (tmp_path / "list.txt").write_text("a.png 0\nd.jpg 1\n")
    sources.write_dataset(str(tmp_path / "list.txt"), str(tmp_path / "db"), new_size=(24, 30))
    text = ("layer:\n  - {name: d, type: Data, top: [data, label], data_param: {source: db, batch_size: 2, "
            "backend: LMDB}}\n")
    net = Net(loads(text, str(tmp_path / "n2.yaml")), "TEST", str(tmp_path / "n2.yaml"), seed=0)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[0], r["imagedata_0"])
    # an encoded Datum (PNG bytes as convert_imageset --encoded stores them): BGR as stored
    from netspec.caffemodel import _field, _int_field
    datum = _int_field(1, 3) + _field(4, r["file_b.png"].tobytes()) + _int_field(5, 0) + _int_field(7, 1)
    np.testing.assert_array_equal(sources.parse_datum(datum)[0], r["imagedata_5"])


def test_window_data_crops_as_caffe(tmp_path):
    """R-CNN's WindowData against Caffe's tops on the same image and windows (io.npz): warp without context, warp
    with context padding past the image's edges (mean-filled), square; OpenCV's resize of each crop, BGR."""
    pytest.importorskip("PIL")
    fixture = _generator("make_io_fixture")
    from netspec.loader import load
    r = np.load(os.path.join(FIX, "io.npz"))
    fixture.window_files(str(tmp_path))
    for pad, mode in fixture.WINDOW_DATA:
        path = tmp_path / f"w_{pad}_{mode}.prototxt"
        path.write_text(fixture.window_net(str(tmp_path), pad, mode))
        net = Net(load(str(path)), "TRAIN", str(path), seed=0)
        net.forward()
        order = np.argsort(net.blobs["label"].data)  # (one background and one foreground window either way)
        caffe_order = np.argsort(r[f"window_{pad}_{mode}_label"])
        np.testing.assert_array_equal(net.blobs["label"].data[order], r[f"window_{pad}_{mode}_label"][caffe_order])
        np.testing.assert_array_equal(net.blobs["data"].data[order], r[f"window_{pad}_{mode}"][caffe_order],
                                      err_msg=f"context_pad {pad}, {mode}")


def test_data_convert_writes_convert_imagesets_records_byte_for_byte(tmp_path):
    """run.py data convert on an image list against Caffe's convert_imageset on the same files (io.npz): the same
    keys (index_path) and the same Datum bytes, as stored, resized and grey; the images one at a time."""
    pytest.importorskip("lmdb")
    import lmdb
    fixture = _generator("make_io_fixture")
    from layers import sources
    r = np.load(os.path.join(FIX, "io.npz"))
    for name in fixture.image_files():
        (tmp_path / name).write_bytes(r[f"file_{name}"].tobytes())
    (tmp_path / "list.txt").write_text(fixture.IMAGESET_LIST)
    options = {"plain": {}, "resized": {"new_size": (9, 11)}, "grey": {"gray": True}}
    for name, _ in fixture.IMAGESET:
        out = str(tmp_path / f"db_{name}")
        assert sources.write_dataset(str(tmp_path / "list.txt"), out, **options[name]) == 5
        env = lmdb.open(out, readonly=True, lock=False)
        with env.begin() as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        env.close()
        assert [k for k, _ in items] == bytes(r[f"imageset_{name}_keys"]).split(b"\n"), name
        values, ends = bytes(r[f"imageset_{name}_values"]), np.cumsum(r[f"imageset_{name}_sizes"])
        caffe = [values[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]
        assert [v for _, v in items] == caffe, name


def test_a_v1_caffemodel_loads_and_gives_caffes_outputs():
    """A model-zoo-era V1 .caffemodel (`layers` of V1LayerParameter, legacy 4-D blob shapes) into a new-style net:
    the same outputs as real Caffe's on the same file (tests/fixtures/caffe_v1)."""
    import yaffe
    d = os.path.join(os.path.dirname(__file__), "fixtures", "caffe_v1")
    net = yaffe.Net(os.path.join(d, "net.prototxt"), os.path.join(d, "v1.caffemodel"), yaffe.TEST)
    assert net.params["conv1"][0].data.shape == (2, 1, 3, 3) and net.params["ip1"][0].data.shape == (3, 72)
    out = net.forward(data=np.load(os.path.join(d, "x.npy")))["ip1"]
    np.testing.assert_allclose(out, np.load(os.path.join(d, "caffe_out.npy")), rtol=1e-5, atol=1e-5)
