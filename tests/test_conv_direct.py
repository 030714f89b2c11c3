"""The direct convolution (stride 1, one group: layers/conv.DirectPlan and the register tiles of layers/simd.py)
gives what the im2col path gives, forward and backward, and is chosen only where it applies."""
import numpy as np
import pytest
from numba import njit

import layers.conv as conv
from layers import simd
from layers.kernels import channel_sums, sum_two
from netspec.loader import loads
from netspec.net import Net

GEOMETRIES = [  # (bottom shape, num_output, kernel (h, w), pad (h, w), dilation)
    ((2, 3, 9, 9), 5, (3, 3), (1, 1), 1),
    ((3, 1, 7, 11), 20, (5, 5), (0, 0), 1),      # one channel, no pad, outputs not a multiple of the tile
    ((2, 4, 8, 8), 9, (3, 5), (2, 1), 1),        # rectangular kernel, pad up to the kernel's reach
    ((2, 4, 10, 10), 33, (3, 3), (2, 2), 2),     # dilation
    ((2, 5, 6, 6), 8, (1, 1), (0, 0), 1),        # 1x1
    ((4, 32, 16, 16), 32, (5, 5), (2, 2), 1),    # CIFAR-10 quick's conv2
    ((3, 3, 6, 32), 7, (3, 5), (1, 2), 1),       # a first layer: the weight gradient from the planar top diff
    ((2, 2, 5, 16), 6, (1, 3), (0, 1), 1),       # few taps and filters: its last blocks overlap the ones before
    ((2, 1, 12, 28), 7, (5, 5), (0, 0), 1),      # LeNet's conv1, rows of 24: half vectors on AVX-512
    ((2, 1, 6, 36), 16, (5, 5), (0, 0), 1),      # rows of whole vectors: the forward writes the top a row at a time
    ((2, 1, 6, 28), 16, (5, 5), (0, 0), 1),      # and rows of 24: half vectors on AVX-512
    ((2, 6, 14, 28), 16, (3, 3), (1, 1), 1),     # "same" on rows of 28: the forward on flat runs (AVX-512)
]


STRIDED = [  # (bottom shape, num_output, kernel (h, w), pad (h, w), dilation, stride): the forward and the weight
    ((2, 3, 9, 9), 5, (3, 3), (1, 1), 1, 2),     # gradient on the phases of the padded planes
    ((2, 4, 16, 16), 16, (3, 3), (1, 1), 1, 2),  # ResNet's down-sampling 3x3
    ((2, 4, 16, 16), 16, (1, 1), (0, 0), 1, 2),  # and its projection
    ((2, 3, 11, 10), 7, (3, 5), (1, 2), 2, 3),   # rectangular, dilated, stride 3, odd sizes
    ((3, 2, 12, 12), 9, (4, 4), (2, 2), 1, 2),   # an even kernel
]


def conv_pass(shape, out_c, kernel, pad, dilation, dtype, direct, monkeypatch, force=False, stride=1):
    """Top, bottom diff and param diffs of one forward and backward; direct=False: im2col only; force: the
    direct kernels for all three passes even where they would hand a pass to im2col as wasteful (few filters,
    narrow planes), so that those geometries test the direct kernels too."""
    monkeypatch.setattr(conv, "DIRECT", direct)
    monkeypatch.setattr(conv, "WINOGRAD", False)  # (tests/test_winograd.py: the 5x5s and 3x3s it takes)
    if force:
        monkeypatch.setattr(conv, "DIRECT_USEFUL", 0.0)
        monkeypatch.setattr(conv, "DIRECT_USEFUL_DATA", 0.0)
    text = f"""
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: {list(shape)}}}}}}}
  - {{name: c, type: Convolution, bottom: data, top: c, convolution_param: {{num_output: {out_c},
      kernel_h: {kernel[0]}, kernel_w: {kernel[1]}, pad_h: {pad[0]}, pad_w: {pad[1]}, dilation: {dilation},
      stride: {stride},
      weight_filler: {{type: gaussian, std: 0.3}}, bias_filler: {{type: gaussian}}}}}}
  - {{name: loss, type: EuclideanLoss, bottom: [c, c], top: loss}}
"""
    net = Net(loads(text), "TRAIN", seed=1, dtype=dtype)
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=shape)
    layer = net.layers[1]
    calls, original, original_pixels = [], conv.direct_conv, conv.direct_conv_pixels  # the direct kernels that ran
    original_dw, original_dw1, original_planar = conv.direct_conv_dw, conv.direct_conv_dw1, conv.direct_conv_dw_planar
    monkeypatch.setattr(conv, "direct_conv_dw_planar", lambda *a: calls.append("dw") or original_planar(*a))
    monkeypatch.setattr(conv, "direct_conv", lambda *a: calls.append("conv") or original(*a))
    monkeypatch.setattr(conv, "direct_conv_pixels", lambda *a: calls.append("conv") or original_pixels(*a))
    for name in ("direct_conv_bands", "direct_conv_pixels_bands", "direct_conv_rows", "direct_conv_flat"):  # (training)
        monkeypatch.setattr(conv, name, (lambda f: lambda *a: calls.append("conv") or f(*a))(getattr(conv, name)))
    monkeypatch.setattr(conv, "direct_conv_dw", lambda *a: calls.append("dw") or original_dw(*a))
    monkeypatch.setattr(conv, "direct_conv_dw1", lambda *a: calls.append("dw") or original_dw1(*a))
    layer.forward(net.bottom_vecs[1], net.top_vecs[1])
    lanes_forward = direct and getattr(layer, "_plan", None) is not None and layer._plan.lanes_forward
    assert calls == (["conv"] if direct and not lanes_forward else [])
    conv_pass.last_plan = getattr(layer, "_plan", None)
    net.top_vecs[1][0].diff[...] = np.random.default_rng(1).normal(size=net.top_vecs[1][0].diff.shape)
    for blob in layer.blobs:
        blob.diff[...] = 0.5  # parameter gradients accumulate
    layer.backward(net.top_vecs[1], [True], net.bottom_vecs[1])
    if force:  # forward, data gradient (im2col's for a stride), weight gradient
        assert sorted(calls) == (["conv", "conv", "dw"] if stride == 1 else ["conv", "dw"])
    conv_pass.calls = calls
    return [net.blobs["c"].data.copy(), net.blobs["data"].diff.copy()] + [b.diff.copy() for b in layer.blobs]


@pytest.mark.parametrize("pixels", [False, True])  # the forward and data gradient as rows, or as pixel tiles
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_direct_convolution_matches_im2col(geometry, dtype, monkeypatch, pixels):
    monkeypatch.setattr(conv, "PIXELS", pixels)
    im2col = conv_pass(*geometry, dtype, False, monkeypatch)
    direct = conv_pass(*geometry, dtype, True, monkeypatch, force=True)
    plan = conv_pass.last_plan
    assert plan.pixels == plan.pixels_q == pixels
    lanes, ow = simd.lanes(dtype), plan.out_hw[1]
    whole_rows = ow % lanes == 0 or lanes > 8 and ow % (lanes // 2) == 0  # (half vectors on AVX-512)
    assert plan.planar == (geometry[0][1] <= 4 and ow >= 16 and whole_rows and plan.k >= simd.PLANAR_KR
                           and geometry[1] >= simd.PLANAR_OR)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for name, a, b in zip(["top", "bottom diff", "weight diff", "bias diff"], im2col, direct):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= tol * np.abs(a).max(), name


@pytest.mark.parametrize("pixels", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_pointwise_convolution_reads_and_writes_the_blobs_themselves(monkeypatch, dtype, pixels):
    """A 1x1 kernel (no pad, stride 1) on planes of whole vectors, filters and channels in whole tiles: the kernels
    read the bottom and the top diff and write the top and the bottom diff in place of the padded buffers (as
    pixel tiles, they read in place and write through their buffers); the results are im2col's."""
    monkeypatch.setattr(conv, "PIXELS", pixels)
    geometry = ((2, 16, 8, 8), 24, (1, 1), (0, 0), 1)
    im2col = conv_pass(*geometry, dtype, False, monkeypatch)
    direct = conv_pass(*geometry, dtype, True, monkeypatch, force=True)
    plan = conv_pass.last_plan
    assert plan.x_direct and plan.dy_direct and plan.xpad is None and plan.dyp is None
    assert plan.y_direct == plan.dx_direct == (not pixels) and (plan.dxq is None) == (not pixels)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for name, a, b in zip(["top", "bottom diff", "weight diff", "bias diff"], im2col, direct):
        assert np.abs(a - b).max() <= tol * np.abs(a).max(), name
    assert not conv.DirectPlan((2, 16, 8, 8), 24, (1, 1), (0, 0), (1, 1), (8, 8), np.float32, 2).x_direct
    assert not conv.DirectPlan((2, 16, 8, 8), 24, (3, 3), (1, 1), (1, 1), (8, 8), np.float32).x_direct
    assert not conv.DirectPlan((2, 16, 3, 3), 24, (1, 1), (0, 0), (1, 1), (3, 3), np.float32).x_direct


@pytest.mark.parametrize("pixels", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("geometry", STRIDED)
def test_strided_direct_convolution_matches_im2col(geometry, dtype, monkeypatch, pixels):
    monkeypatch.setattr(conv, "PIXELS", pixels)
    *rest, stride = geometry
    im2col = conv_pass(*rest, dtype, False, monkeypatch, stride=stride)
    direct = conv_pass(*rest, dtype, True, monkeypatch, force=True, stride=stride)
    assert conv_pass.last_plan.stride == stride
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for name, a, b in zip(["top", "bottom diff", "weight diff", "bias diff"], im2col, direct):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= tol * np.abs(a).max(), name


@pytest.mark.parametrize("param, direct", [
    ({"pad": 1}, True),
    ({"stride": 2, "pad": 1}, True),
    ({"stride_h": 2, "stride_w": 1, "pad": 1}, False),  # two strides: im2col
    ({"group": 2, "pad": 1}, False),
    ({"pad": 3}, False),              # pad wider than the 3x3 kernel's reach: no flipped-kernel pass
    ({"pad": 1, "num_output": 2}, False),   # 2 of 8 filters of a tile: im2col computes less
])
def test_im2col_serves_what_the_direct_path_does_not(param, direct):
    from tests.gradcheck import make_layer
    shape = (2, 4, 9, 9)
    layer, _ = make_layer("Convolution", {"convolution_param": {"num_output": 16, "kernel_size": 3, **param}}, [shape])
    assert (layer._direct(np.zeros(shape, np.float32)) is not None) == direct
    assert layer._direct(np.zeros(shape, np.float16)) is None


def test_the_data_gradient_of_an_unpadded_convolution_goes_through_im2col(monkeypatch):
    """LeNet's conv2 (12x12 -> 8x8): the direct data gradient would visit 2.25x the pixels; im2col's result."""
    calls, original = [], conv.col2im
    monkeypatch.setattr(conv, "col2im", lambda *a: calls.append(1) or original(*a))
    shape = (2, 20, 12, 12)
    direct = conv_pass(shape, 50, (5, 5), (0, 0), 1, np.float64, True, monkeypatch)
    plan = conv_pass.last_plan
    assert calls and plan.data_useful < conv.DIRECT_USEFUL_DATA and plan.forward_useful >= conv.DIRECT_USEFUL
    im2col = conv_pass(shape, 50, (5, 5), (0, 0), 1, np.float64, False, monkeypatch)
    for a, b in zip(im2col, direct):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", ["one group", "two groups", "a wide tail"])  # lanes past the batch; a second group
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("geometry", [g + (1,) for g in GEOMETRIES] + STRIDED)
def test_the_data_gradient_with_the_images_in_the_lanes_matches_im2col(geometry, dtype, batch, monkeypatch):
    """lanes_conv_data (the images in the lanes, each input pixel summing the taps it receives) for every
    geometry and stride, a batch that does not fill the lanes and one over two groups of them: im2col's bottom
    diff (and the other results unchanged)."""
    shape, *rest, stride = geometry
    shape = (_lanes_batch(batch, dtype),) + shape[1:]
    if batch != "one group" and shape[1] * shape[2] * shape[3] > 1000:
        shape = shape[:2] + (6, 6)  # (CIFAR-10 quick's conv2 on a smaller plane: the test stays fast)
    monkeypatch.setattr(conv, "LANES_PLANE", 0)  # (the forward on the direct kernels: conv_pass counts them)
    monkeypatch.setattr(conv, "DIRECT_USEFUL_DATA", 2.0)  # every data gradient with the images in the lanes
    plan, calls = _lanes_against_im2col(shape, rest, stride, dtype, "lanes_conv_data", monkeypatch)
    assert calls == [1] and plan.lanes_data and plan.lane_groups == (1 if batch == "one group" else 2)


def _lanes_batch(batch, dtype):
    """A batch of 3 (one group of lanes, most of them past the batch: the one-vector tile), one over two groups
    (the second on the one-vector tile), or a second group that one vector does not hold (both on the full one)."""
    width, step = simd.LANES_NB * simd.lanes(dtype), simd.lanes(dtype)
    return {"one group": 3, "two groups": width + 3, "a wide tail": width + step + 3}[batch]


def _lanes_against_im2col(shape, rest, stride, dtype, kernel, monkeypatch):
    """(plan, calls of `kernel`): conv_pass through im2col, then through the lanes (any batch fills them), the
    top, bottom diff and param diffs of both equal."""
    monkeypatch.setattr(conv, "LANES_FILL", 0.0)
    monkeypatch.setattr(conv, "DIRECT_USEFUL", 0.0)
    im2col = conv_pass(shape, *rest, dtype, False, monkeypatch, stride=stride)
    calls, original = [], getattr(conv, kernel)
    monkeypatch.setattr(conv, kernel, lambda *a: calls.append(1) or original(*a))
    lanes = conv_pass(shape, *rest, dtype, True, monkeypatch, stride=stride)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for name, a, b in zip(["top", "bottom diff", "weight diff", "bias diff"], im2col, lanes):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= tol * np.abs(a).max(), name
    return conv_pass.last_plan, calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tail", ["one vector", "two vectors"])
def test_a_last_group_of_lanes_that_one_vector_holds_is_computed_on_one_vector(tail, dtype):
    """lanes_conv_data's last group: the lanes of its first vector only where the images fit there (tile_lanes1),
    the whole group where they do not; every other group whole."""
    step = simd.lanes(dtype)
    width = simd.LANES_NB * step
    last = 3 if tail == "one vector" else step + 3
    dyb = np.arange(2 * width, dtype=dtype).reshape(2, 1, 1, width) + 1
    cr = sum(simd.LANES_WIDTHS)  # a tile of each width
    blocks = np.array([[sum(simd.LANES_WIDTHS[:k]), w] for k, w in enumerate(simd.LANES_WIDTHS)], np.int64)
    wt = np.full((3, 1, 1, simd.LANES_ROW), 2, dtype)
    dxb = np.full((2, cr, 1, width), np.nan, dtype)
    starts, ent = np.array([0, 1], np.int64), np.zeros(1, np.int64)
    conv.lanes_conv_data(dyb, starts, ent, ent, wt, dxb, last, blocks)
    np.testing.assert_array_equal(dxb[0], np.broadcast_to(2 * dyb[0, 0, 0], (cr, width))[:, None])
    done = step if tail == "one vector" else width
    np.testing.assert_array_equal(dxb[1, :, 0, :done], np.broadcast_to(2 * dyb[1, 0, 0, :done], (cr, done)))
    assert np.isnan(dxb[1, :, 0, done:]).all()


@pytest.mark.parametrize("n", [1, 4, 5, 7, 16, 20, 24, 32, 50, 64, 100, 128, 500])
def test_lane_blocks_cover_the_channels_with_the_least_padding(n):
    """lane_blocks: consecutive tiles of LANES_WIDTHS from channel 0 covering n channels, padded by less than the
    narrowest width (no tile wholly past n); LeNet's 20 and 50 channels and the usual counts from 16 on without
    padding at either vector width."""
    blocks = conv.lane_blocks(n)
    starts, widths = blocks[:, 0], blocks[:, 1]
    assert set(widths.tolist()) <= set(simd.LANES_WIDTHS)
    assert starts[0] == 0 and (starts[1:] == np.cumsum(widths)[:-1]).all()
    assert n <= widths.sum() < n + min(simd.LANES_WIDTHS) and starts[-1] < n
    if n >= 16:
        assert widths.sum() == n


LANES_FORWARD = [  # (bottom shape, num_output, kernel, pad, dilation, stride)
    ((3, 8, 8), 5, (3, 3), (1, 1), 1, 1),
    ((20, 12, 12), 50, (5, 5), (0, 0), 1, 1),    # LeNet's conv2
    ((2, 12, 12), 9, (3, 5), (0, 2), 2, 1),      # rectangular, dilated
    ((4, 16, 16), 16, (3, 3), (1, 1), 1, 2),     # ResNet's down-sampling
    ((6, 8, 8), 7, (3, 3), (1, 1), 1, 1),        # channels and filters past a tile
    ((5, 7, 7), 6, (3, 3), (1, 1), 1, 1),        # a plane of 49: columns past the last whole vector
    ((12, 6, 6), 24, (3, 3), (1, 1), 1, 1),      # the widest tiles at 64-byte vectors (lane_blocks)
]


@pytest.mark.parametrize("batch", ["one group", "two groups", "a wide tail"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("geometry", LANES_FORWARD)
def test_the_forward_with_the_images_in_the_lanes_matches_im2col(geometry, dtype, batch, monkeypatch):
    """The forward on lanes_conv_data (its entries over the output pixels) and lanes_to_top (the bias by channel,
    the transposes in registers, the lanes past the batch dropped): im2col's top, and the backward after it (its
    padded input placed by the backward itself)."""
    shape, *rest, stride = geometry
    shape = (_lanes_batch(batch, dtype),) + shape
    monkeypatch.setattr(conv, "LANES_PLANE", 1 << 20)
    plan, calls = _lanes_against_im2col(shape, rest, stride, dtype, "lanes_to_top", monkeypatch)
    assert calls == [1] and plan.lanes_forward and plan.lane_groups == (1 if batch == "one group" else 2)


def test_the_lanes_serve_lenets_conv2_and_downsampling_at_training_batches():
    """The data gradient in the lanes where the direct kernels would waste most (LeNet's conv2, 0.28 kept) or a
    stride splits the top, when the batch fills the lanes; not for a batch of 2, nor where the direct kernels
    keep most of their products."""
    width = simd.LANES_NB * simd.lanes(np.float32)
    lenet = conv.DirectPlan((width, 20, 12, 12), 50, (5, 5), (0, 0), (1, 1), (8, 8), np.float32)
    assert lenet.lanes_data and lenet.data_useful < conv.DIRECT_USEFUL_DATA
    lenet.backward_buffers()  # (a weight gradient alone, as a first layer's: no lanes buffers nor entries)
    assert lenet.dyb is None and lenet.dxb is None and lenet.dyp is None and lenet.dxq is None
    lenet.lanes_data_buffers()
    assert lenet.dyb.shape == (1, 64, 50, width) and lenet.dxb.shape[2:] == (144, width)
    assert not conv.DirectPlan((2, 20, 12, 12), 50, (5, 5), (0, 0), (1, 1), (8, 8), np.float32).lanes_data
    assert conv.DirectPlan((width, 16, 16, 16), 32, (3, 3), (1, 1), (1, 1), (8, 8), np.float32, 2).lanes_data
    assert not conv.DirectPlan((width, 32, 16, 16), 32, (5, 5), (2, 2), (1, 1), (16, 16), np.float32).lanes_data
    # the forward: kernels over 1x1 on planes up to 14x14 (not 16x16; not a pointwise layer, whose copies are less)
    assert lenet.lanes_forward
    assert conv.DirectPlan((width, 64, 7, 7), 64, (3, 3), (1, 1), (1, 1), (7, 7), np.float32).lanes_forward
    assert not conv.DirectPlan((width, 32, 16, 16), 32, (5, 5), (2, 2), (1, 1), (16, 16), np.float32).lanes_forward
    assert not conv.DirectPlan((width, 128, 8, 8), 128, (1, 1), (0, 0), (1, 1), (8, 8), np.float32).lanes_forward
    starts, ent_d, ent_w = conv.lane_entries((12, 12), (8, 8), (5, 5), (0, 0), (1, 1), (1, 1), 50, width, 20)
    assert starts[-1] == len(ent_d) == len(ent_w) == 64 * 25  # each top pixel's 25 taps, once: nothing padded
    assert starts[1] == 1 and ent_d[0] == 0 and ent_w[0] == 0  # pixel (0, 0) receives tap (0, 0) of top (0, 0)


@pytest.mark.parametrize("last", [3, 2 * simd.lanes(np.float64)])  # the last group on one vector, on two
def test_python_lane_tiles_match_the_compiled_ones(last, monkeypatch):
    """tile_lanes and tile_lanes1 under NUMBA_DISABLE_JIT (their Python version) and compiled: the data gradient
    in the lanes."""
    import functools
    rng = np.random.default_rng(0)
    width, out_c = simd.LANES_NB * simd.lanes(np.float64), 5
    cpad = sum(simd.LANES_WIDTHS)  # a tile of each width
    blocks = np.array([[sum(simd.LANES_WIDTHS[:k]), w] for k, w in enumerate(simd.LANES_WIDTHS)], np.int64)
    entries = conv.lane_entries((7, 6), (4, 3), (3, 3), (1, 1), (1, 1), (2, 2), out_c, width, simd.LANES_ROW)
    dyb, wt = rng.normal(size=(2, 12, out_c, width)), rng.normal(size=(3, 9, out_c, simd.LANES_ROW))
    results = []
    for python in (False, True):
        if python:
            for k, w in zip("abc", simd.LANES_WIDTHS):
                for suffix, nb in (("", simd.LANES_NB), ("1", 1)):
                    monkeypatch.setattr(conv, f"tile_lanes_{k}{suffix}", functools.partial(simd._py_tile_lanes, w, nb))
        run = conv.lanes_conv_data.py_func if python else conv.lanes_conv_data
        dxb = np.zeros((2, cpad, 42, width))
        run(dyb, *entries, wt, dxb, last, blocks)
        results.append(dxb)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-12)
    past = results[0][1, ..., simd.lanes(np.float64):]  # the last group's second vector: written only for 2
    assert np.count_nonzero(results[0][0]) > 0 and (np.count_nonzero(past) == 0) == (last == 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chans, width", [(32, 32), (20, 24), (12, 16), (5, 7)])
def test_the_top_diff_goes_channels_last_as_numpy_puts_it(chans, width, dtype):
    """place_channels_last (the weight gradient's top diff, (N, Q, B) on padded rows): every value at its
    position and channel, the padding's places untouched (whole blocks transposed in registers, the channels and
    columns past them one by one)."""
    rng = np.random.default_rng(0)
    dy = rng.normal(size=(3, chans, 4, width)).astype(dtype)
    row, planes = width + 2, chans + 3
    buf = np.full((3, 4 * row, planes), 7.0, dtype)
    conv.place_channels_last(dy, buf, row)
    want = np.full_like(buf, 7.0)
    want.reshape(3, 4, row, planes)[:, :, :width, :chans] = dy.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(buf, want)


def test_python_depthwise_lane_tiles_match_the_compiled_ones(monkeypatch):
    """tile_dw and tile_dw_dot (and their one-channel versions) under NUMBA_DISABLE_JIT and compiled: the three
    passes of a depthwise convolution in the lanes, 11 channels (a tile and a tail), stride 2 on 7x6."""
    import functools
    import layers.depthwise as dw
    rng = np.random.default_rng(0)
    width, c = simd.LANES_NB * simd.lanes(np.float64), 11
    fwd, data, weights = dw.lane_taps((7, 6), (4, 3), (3, 3), (1, 1), (1, 1), 2, width)
    xb, dyb, w = rng.normal(size=(2, c * 42, width)), rng.normal(size=(2, c * 12, width)), rng.normal(size=(c, 1, 3, 3))
    results = []
    for python in (False, True):
        if python:
            for name, cr, dot in (("tile_dw", simd.LANES_CR, False), ("tile_dw1", 1, False),
                                  ("tile_dw_dot", simd.LANES_CR, True), ("tile_dw_dot1", 1, True)):
                monkeypatch.setattr(dw, name, functools.partial(simd._py_tile_dw, cr, simd.LANES_NB, dot))
        lanes_, weights_ = ((dw.depthwise_lanes.py_func, dw.depthwise_lanes_weights.py_func) if python else
                            (dw.depthwise_lanes, dw.depthwise_lanes_weights))
        yb, dxb, dwt = np.zeros_like(dyb), np.zeros_like(xb), np.zeros_like(w)
        lanes_(xb, w, 42, *fwd, yb)
        lanes_(dyb, w, 12, *data, dxb)
        weights_(xb, dyb, 42, *weights, dwt)
        results.append((yb, dxb, dwt))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        assert np.count_nonzero(a) > 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("groups", [2, 3])  # 3: a last group of zeros alone, after a partial vector
def test_the_transposes_to_and_from_the_lanes_match_numpy_compiled_and_as_python(dtype, groups, monkeypatch):
    """images_to_lanes, lanes_to_images and lanes_to_top (transpose_tile: whole blocks in registers; the batch's
    and the plane's last partial vectors one value at a time; with an Eltwise SUM above added exactly as sum_two
    adds it), compiled and under NUMBA_DISABLE_JIT's Python."""
    rng = np.random.default_rng(3)
    step = simd.lanes(dtype)
    width = simd.LANES_NB * step
    n, a, b = width + step + 3, 3, 2 * step + 5  # groups: one full, one with a whole and a partial vector
    x = rng.normal(size=(n, a, b)).astype(dtype)
    want = np.zeros((groups * width, a, b), dtype)
    want[:n] = x
    want = want.reshape(groups, width, a, b).transpose(0, 3, 2, 1)
    bias = rng.normal(size=a).astype(dtype)
    colbias = np.zeros(-(-a * b // step) * step, dtype)
    colbias[:a * b] = np.repeat(bias, b)
    buf = rng.normal(size=(groups, a, b, width)).astype(dtype)  # (G, Opad = a, P = b, L)
    top = buf.transpose(0, 3, 1, 2).reshape(groups * width, a, b)[:n] + bias[None, :, None]
    for python in (False, True):
        if python:
            monkeypatch.setattr(conv, "transpose_tile", simd._py_transpose_tile)
        run = (lambda f: f.py_func) if python else (lambda f: f)
        lanes = np.full((groups, b, a, width), np.nan, dtype)
        run(conv.images_to_lanes)(x, lanes)
        np.testing.assert_array_equal(lanes, want)
        back = np.full((n, a * b), np.nan, dtype)
        run(conv.lanes_to_images)(buf.reshape(groups, a * b, width), back)
        np.testing.assert_array_equal(back, buf.transpose(0, 3, 1, 2).reshape(groups * width, a * b)[:n])
        y = np.full((n, a, b), np.nan, dtype)
        run(conv.lanes_to_top)(buf, y, colbias, True, 0.25)
        np.testing.assert_allclose(y, np.where(top > 0, top, 0.25 * top), rtol=1e-6)
        res = rng.normal(size=y.size).astype(dtype)  # an Eltwise SUM above (its coefficients), then the ReLU
        plain = np.full((n, a, b), np.nan, dtype)
        run(conv.lanes_to_top)(buf, plain, colbias, False, 0.0)
        want_sum = plain.reshape(-1).copy()
        sum_two(want_sum.copy(), 0.5, res, -2.0, want_sum, True, 0.25)  # as the Eltwise would: bitwise
        y[...] = np.nan
        run(conv.lanes_to_top)(buf, y, colbias, True, 0.25, res, 0.5, -2.0)
        np.testing.assert_array_equal(y.reshape(-1), want_sum)


BANDS = [  # (N, C, H, W, O, kernel, pad, dilation, stride, parts): tails of 1 and 2 vectors, more parts than row
    # blocks or pixel tiles, strides 2 and 3 (phases; odd widths)
    (1, 3, 9, 7, 10, (3, 3), (1, 1), (1, 1), 1, 2), (1, 4, 16, 16, 8, (3, 3), (1, 1), (1, 1), 1, 3),
    (2, 5, 11, 13, 9, (3, 5), (1, 2), (2, 1), 1, 2), (3, 2, 6, 5, 4, (2, 2), (0, 1), (1, 1), 1, 1),
    (1, 2, 4, 4, 3, (3, 3), (1, 1), (1, 1), 1, 4), (1, 6, 16, 16, 20, (3, 3), (1, 1), (1, 1), 2, 2),
    (2, 3, 15, 9, 5, (3, 3), (1, 0), (1, 1), 2, 2), (1, 4, 8, 8, 33, (1, 1), (0, 0), (1, 1), 2, 2),
    (1, 3, 13, 11, 7, (5, 5), (2, 2), (1, 1), 3, 2)]


UNPADDED = [  # (N, C, H, W, O, kernel, pad, parts, stride): rows of one vector and of two (float32 on AVX-512: <= 16
    # and <= 32; float64 half), three, two and one rows a tile, filters past the last whole block, more parts than
    # rows; stride 2 (the top's rows of one vector): 3x3 and 1x1 (ResNet's projections), odd and even sizes
    (1, 3, 5, 12, 10, (3, 3), (1, 1), 1, 1), (2, 4, 7, 16, 8, (3, 3), (1, 1), 1, 1),
    (1, 5, 9, 13, 17, (5, 5), (2, 2), 2, 1), (3, 2, 3, 28, 9, (3, 3), (1, 1), 1, 1),
    (1, 16, 32, 32, 16, (3, 3), (1, 1), 2, 1), (2, 3, 4, 17, 7, (1, 1), (0, 0), 3, 1),
    (1, 6, 11, 14, 33, (3, 5), (1, 2), 2, 1), (1, 2, 1, 15, 3, (3, 3), (1, 1), 1, 1),
    (1, 3, 2, 12, 5, (3, 3), (1, 1), 4, 1), (2, 5, 28, 28, 12, (3, 3), (1, 1), 1, 2),
    (1, 4, 14, 14, 9, (3, 3), (1, 1), 2, 2), (2, 6, 32, 32, 16, (1, 1), (0, 0), 1, 2),
    (1, 3, 15, 13, 8, (3, 3), (1, 1), 3, 2), (1, 5, 28, 28, 16, (1, 1), (0, 0), 2, 2)]


def _unpadded_reference(x, weights, bias, pad, stride=1):
    """A convolution in float64 from NumPy's padded copy: y[n, o, i, j] = bias[o] + sum of weights[o, c, di, dj] *
    xpad[n, c, s*i + di, s*j + dj]."""
    (ph, pw), (kh, kw) = pad, weights.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    h, w = (x.shape[2] + 2 * ph - kh) // stride + 1, (x.shape[3] + 2 * pw - kw) // stride + 1
    cols = np.stack([xp[:, :, di:di + stride * (h - 1) + 1:stride, dj:dj + stride * (w - 1) + 1:stride]
                     for di in range(kh) for dj in range(kw)], axis=2)
    return np.einsum("nckhw,ock->nohw", cols, weights.reshape(*weights.shape[:2], -1).astype(np.float64)) \
        + bias[None, :, None, None]


def _laid(rng, c, o, kernel, dtype):
    """(weights (O, C, KH, KW), laid out (K, Opad) as DirectPlan lays them, bias, bias laid out (Opad,))."""
    weights = rng.normal(size=(o, c) + kernel).astype(dtype)
    bias = rng.normal(size=o)
    opad = -(-o // simd.BCAST_MR) * simd.BCAST_MR
    laid = np.zeros((c * kernel[0] * kernel[1], opad), dtype)
    laid[:, :o] = weights.reshape(o, -1).T
    bias_l = np.zeros(opad, dtype)
    bias_l[:o] = bias
    return weights, laid, bias.astype(dtype), bias_l


def _unpadded_fits(case, dtype):
    """Whether the kernel takes the case's rows: the top's to two vectors (one at stride 2) of dtype."""
    w, kernel, pad, stride = case[3], case[5], case[6], case[8]
    return (w + 2 * pad[1] - kernel[1]) // stride + 1 <= (2 if stride == 1 else 1) * simd.lanes(dtype)


@pytest.mark.parametrize("case, dtype", [(c, d) for d in (np.float32, np.float64) for c in UNPADDED
                                         if _unpadded_fits(c, d)])
def test_the_unpadded_forward_matches_numpy(case, dtype):
    """direct_conv_unpadded (forward-only "same" stride-1 and stride-2 convolutions read from the bottom itself,
    loads masked to the image) against NumPy's convolution of the padded bottom, plain and with an Eltwise SUM
    above (its coefficients) and a leaky ReLU; every value of the top written, nothing around it; in float32 and
    float64 (a vector holds half the values: rows of two vectors at widths where float32 has one)."""
    n, c, h, w, o, kernel, pad, parts, stride = case
    rng = np.random.default_rng(n * 100 + w)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    weights, laid, bias, bias_l = _laid(rng, c, o, kernel, dtype)
    want = _unpadded_reference(x, weights, bias, pad, stride)
    res = rng.normal(size=want.size).astype(dtype)
    for added, relu in ((False, False), (True, True), (False, True)):
        big = np.full(want.size + 40, np.nan, dtype)
        y = big[20:-20].reshape(want.shape)
        conv.direct_conv_unpadded(x, *kernel, *pad, stride, laid, bias_l, y, res if added else res[:0], 0.5, -2.0,
                                  relu, 0.1, parts)
        expect = 0.5 * want + -2.0 * res.reshape(want.shape) if added else want
        if relu:
            expect = np.where(expect > 0, expect, 0.1 * expect)
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(y, expect, rtol=tol, atol=tol * np.abs(expect).max())
        assert np.isnan(big[:20]).all() and np.isnan(big[-20:]).all()


def test_the_unpadded_tiles_in_python_match_the_compiled_ones(monkeypatch):
    """direct_conv_unpadded with its tiles and store_row as Python (NUMBA_DISABLE_JIT's stand-ins) gives the
    compiled kernel's top."""
    import functools
    for case in (UNPADDED[0], UNPADDED[2], UNPADDED[3], UNPADDED[10], UNPADDED[12]):
        n, c, h, w, o, kernel, pad, parts, stride = case
        rng = np.random.default_rng(w)
        x = rng.normal(size=(n, c, h, w)).astype(np.float32)
        opad = -(-o // simd.BCAST_MR) * simd.BCAST_MR
        laid = rng.normal(size=(c * kernel[0] * kernel[1], opad)).astype(np.float32)
        bias = rng.normal(size=opad).astype(np.float32)
        oh, ow = (h + 2 * pad[0] - kernel[0]) // stride + 1, (w + 2 * pad[1] - kernel[1]) // stride + 1
        res = rng.normal(size=n * o * oh * ow).astype(np.float32)
        got = np.zeros((n, o, oh, ow), np.float32)
        conv.direct_conv_unpadded(x, *kernel, *pad, stride, laid, bias, got, res, 1.0, 1.0, True, 0.0, parts)
        with monkeypatch.context() as patch:
            for nr, nv, s in simd._UNPADDED:
                patch.setattr(conv, f"tile_unpadded{nr}{nv}" + ("_s2" if s == 2 else ""),
                              functools.partial(simd._py_tile_unpadded, nr, nv, s))
            patch.setattr(conv, "store_row", simd._py_store_row)
            py = np.zeros_like(got)
            conv.direct_conv_unpadded.py_func(x, *kernel, *pad, stride, laid, bias, py, res, 1.0, 1.0, True, 0.0,
                                              parts)
        np.testing.assert_allclose(py, got, rtol=1e-5, atol=1e-5)


FLAT = [  # (N, C, H, W, O, kernel, pad, parts): "same" stride-1 convolutions; planes of whole vectors and not,
    # rows narrower than a vector (a vector across several rows), filters past the last whole block, 5x5 and 3x5,
    # more parts than vectors
    (1, 3, 28, 28, 16, (3, 3), (1, 1), 1), (2, 16, 14, 14, 12, (3, 3), (1, 1), 2), (1, 5, 7, 7, 9, (3, 3), (1, 1), 3),
    (1, 4, 9, 13, 17, (5, 5), (2, 2), 2), (2, 3, 5, 3, 8, (3, 5), (1, 2), 1), (1, 2, 28, 28, 3, (5, 5), (2, 2), 4),
    (1, 2, 2, 2, 5, (3, 3), (1, 1), 3)]


def _flat_tables(h, w, dtype):
    q = np.arange(-(-h * w // simd.lanes(dtype)) * simd.lanes(dtype))
    return np.where(q < h * w, q // w, 1 << 30).astype(np.int32), (q % w).astype(np.int32)


@pytest.mark.parametrize("case", FLAT)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_flat_forward_matches_numpy_and_the_unpadded_kernel(case, dtype):
    """direct_conv_flat (a forward-only "same" convolution on flat runs of its planes, loads masked by row and
    column) against NumPy's convolution of the padded bottom, plain, with an Eltwise SUM above and with a leaky
    ReLU; every value of the top written, nothing around it; the same bits as direct_conv_unpadded (the same sums
    in the same order) where that kernel takes the rows."""
    n, c, h, w, o, kernel, pad, parts = case
    rng = np.random.default_rng(n * 100 + w)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    weights, laid, bias, bias_l = _laid(rng, c, o, kernel, dtype)
    want = _unpadded_reference(x, weights, bias, pad)
    res = rng.normal(size=want.size).astype(dtype)
    rows_of, cols_of = _flat_tables(h, w, dtype)
    for added, relu in ((False, False), (True, True), (False, True)):
        big = np.full(want.size + 40, np.nan, dtype)
        y = big[20:-20].reshape(want.shape)
        args = (laid, bias_l, y, rows_of, cols_of, res if added else res[:0], 0.5, -2.0, relu, 0.1, parts)
        conv.direct_conv_flat(x, *kernel, *pad, *args)
        expect = 0.5 * want + -2.0 * res.reshape(want.shape) if added else want
        if relu:
            expect = np.where(expect > 0, expect, 0.1 * expect)
        tol = 1e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(y, expect, rtol=tol, atol=tol * np.abs(expect).max())
        assert np.isnan(big[:20]).all() and np.isnan(big[-20:]).all()
        if w <= 2 * simd.lanes(dtype):
            other = np.zeros_like(y)
            conv.direct_conv_unpadded(x, *kernel, *pad, 1, laid, bias_l, other, res if added else res[:0], 0.5, -2.0,
                                      relu, 0.1, parts)
            np.testing.assert_array_equal(y, other)


def test_the_flat_tiles_in_python_match_the_compiled_ones(monkeypatch):
    """direct_conv_flat with its tiles and store_row as Python (NUMBA_DISABLE_JIT's stand-ins) gives the compiled
    kernel's top."""
    import functools
    for case in (FLAT[0], FLAT[2], FLAT[4]):
        n, c, h, w, o, kernel, pad, parts = case
        rng = np.random.default_rng(w)
        x = rng.normal(size=(n, c, h, w)).astype(np.float32)
        _, laid, _, bias = _laid(rng, c, o, kernel, np.float32)
        res = rng.normal(size=n * o * h * w).astype(np.float32)
        rows_of, cols_of = _flat_tables(h, w, np.float32)
        got = np.zeros((n, o, h, w), np.float32)
        conv.direct_conv_flat(x, *kernel, *pad, laid, bias, got, rows_of, cols_of, res, 1.0, 1.0, True, 0.0, parts)
        with monkeypatch.context() as patch:
            for nv in (1, 2, 3):
                patch.setattr(conv, f"tile_flat{nv}", functools.partial(simd._py_tile_flat, nv))
            patch.setattr(conv, "store_row", simd._py_store_row)
            py = np.zeros_like(got)
            conv.direct_conv_flat.py_func(x, *kernel, *pad, laid, bias, py, rows_of, cols_of, res, 1.0, 1.0, True,
                                          0.0, parts)
        np.testing.assert_allclose(py, got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, switch, width", [("direct_conv_unpadded", "UNPADDED", 16),
                                                   ("direct_conv_flat", "FLAT", 28)])
def test_forward_only_nets_take_the_unpadded_or_flat_kernel_with_the_results_of_the_others(kernel, switch, width,
                                                                                           monkeypatch):
    """A forward-only net's 3x3 "same" convolutions (with the ReLU and the Eltwise SUM above folded in) run
    direct_conv_unpadded on 16-wide rows and direct_conv_flat on 28-wide ones (rows of 28 waste a vector's
    lanes) on AVX-512 and give the tops of the kernels they replace (YAFFE_CONV_UNPADDED=0, YAFFE_CONV_FLAT=0)
    to float32 rounding, at a batch of one (two parts on two threads) and of eight."""
    text = """
layer:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [BATCH, 5, WIDTH, WIDTH]}}}
  - {name: c1, type: Convolution, bottom: data, top: c1, convolution_param: {num_output: 12, kernel_size: 3, pad: 1,
     weight_filler: {type: gaussian, std: 0.2}, bias_filler: {type: gaussian, std: 0.2}}}
  - {name: r1, type: ReLU, bottom: c1, top: c1}
  - {name: c2, type: Convolution, bottom: c1, top: c2, convolution_param: {num_output: 5, kernel_size: 3, pad: 1,
     weight_filler: {type: gaussian, std: 0.2}}}
  - {name: sum, type: Eltwise, bottom: [c2, data], top: sum}
  - {name: r2, type: ReLU, bottom: sum, top: sum}
""".replace("WIDTH", str(width))
    import netspec.channels_last as cl
    monkeypatch.setattr(cl, "ENABLED", False)  # (the two convolutions on their own kernels)
    calls = []
    compiled = getattr(conv, kernel)
    monkeypatch.setattr(conv, kernel, lambda *a: calls.append(1) or compiled(*a))
    for batch in (1, 8):
        tops = []
        for on in (True, False):
            monkeypatch.setattr(conv, switch, on)
            net = Net(loads(text.replace("BATCH", str(batch))), "TEST", seed=3)
            net.keep_for_backward, net.constant_weights = False, True  # (as run.py predict and test run it)
            net.blobs["data"].data[...] = np.random.default_rng(batch).normal(size=net.blobs["data"].shape)
            net.forward()
            net.forward()
            tops.append(net.blobs["sum"].data.copy())
        np.testing.assert_allclose(tops[0], tops[1], rtol=1e-5, atol=1e-5)
        assert (tops[0] > 0).any() and (tops[0] == 0).any()
    assert bool(calls) == (simd.VECTOR_BYTES == 64)


@pytest.mark.parametrize("pixels", [False, True])
@pytest.mark.parametrize("case", BANDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_forward_in_bands_matches_the_three_kernels(case, dtype, pixels, monkeypatch):
    """direct_conv_bands and direct_conv_pixels_bands (a forward-only net's convolution: each task an image's
    band of rows or pixel tiles, placed, summed over every filter and copied to the top with a leaky ReLU)
    against place_planes or place_phases, direct_conv or direct_conv_pixels, and take_planes or pixels_to_top,
    exactly: the same sums in the same order; in the planes of the batch and in each band's own planes; and with
    an Eltwise SUM above added (its coefficients) before the ReLU, as sum_two adds it."""
    n, c, h, w, out_c, kernel, pad, dilation, stride, parts = case
    oh = (h + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) // stride + 1
    ow = (w + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // stride + 1
    rng = np.random.default_rng(1)
    monkeypatch.setattr(conv, "PIXELS", pixels)
    plan = conv.DirectPlan((n, c, h, w), out_c, kernel, pad, dilation, (oh, ow), dtype, stride)
    plan.w[:, :out_c] = rng.normal(size=(plan.k, out_c))
    plan.bias[:out_c] = rng.normal(size=out_c)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    want = np.full((n, out_c, oh, ow), np.nan, dtype)
    offs, length = plan.offs[:plan.k], plan.xpad.shape[2]
    if stride == 1:
        conv.place_planes(x, plan.xpad, plan.start, plan.wp)
    else:
        conv.place_phases(x, plan.xpad, *plan.pad, stride, plan.wp, plan.rows)
    if pixels:
        conv.direct_conv_pixels(plan.xpad.reshape(n, -1), offs, plan.w, plan.bias, plan.qs, plan.out)
        conv.pixels_to_top(plan.out, want.reshape(n, out_c, -1), True, 0.1)
    else:
        conv.direct_conv(plan.xpad.reshape(n, -1), offs, plan.w, plan.bias, plan.out)
        conv.take_planes(plan.out, plan.wp, want, True, 0.1)
    placed = plan.xpad.copy()
    geometry = (*plan.pad, stride, plan.wp, plan.rows, int((offs % length).max()), offs, plan.w, plan.bias)
    planes = [np.zeros_like(plan.xpad)] + ([np.zeros((n * parts,) + plan.xpad.shape[1:], dtype)] if parts > 1 else [])
    res = rng.normal(size=want.size).astype(dtype)  # an Eltwise SUM above, as sum_two adds it (then the ReLU)
    summed = np.full_like(want, np.nan)
    conv.take_planes(plan.out, plan.wp, summed, False, 0.0) if not pixels else conv.pixels_to_top(
        plan.out, summed.reshape(n, out_c, -1), False, 0.0)
    sum_two(summed.reshape(-1), 0.5, res, -2.0, summed.reshape(-1), True, 0.1)
    for own in planes:
        for added, expect in ((res[:0], want), (res, summed)):
            got, plan.out[...] = np.full((n, out_c, oh, ow), np.nan, dtype), np.nan
            if pixels:
                conv.direct_conv_pixels_bands(x, own, *geometry, plan.qs, plan.out, got, added, 0.5, -2.0, True, 0.1,
                                              parts)
            else:
                conv.direct_conv_bands(x, own, *geometry, plan.out, got, added, 0.5, -2.0, True, 0.1, parts)
            np.testing.assert_array_equal(got, expect)
        real = placed[:, :placed.shape[1] - plan.bias_tap]  # (not the ones of DirectPlan.bias_tap)
        if len(own) == n:  # every row a band reads placed where place_planes (place_phases) places it
            np.testing.assert_array_equal(own[:, :real.shape[1]][real != 0], real[real != 0])
        else:
            assert np.count_nonzero(own) <= np.count_nonzero(real) * parts
    vec = simd.lanes(dtype)
    assert pixels == plan.pixels and (pixels or plan.nq % (3 * vec) in (0, vec, 2 * vec))


@pytest.mark.parametrize("height, width", [(6, 7), (7, 7)])  # planes ending in a 1- and a 2-vector tile
@pytest.mark.parametrize("out_c", [10, 7, 3, 20, 40])  # weight-gradient tiles of two vectors of filters, and of one
# (7: two at 32-byte vectors, 10 there one); 20 (32-byte) and 40 (64): an odd number of vectors, the last on its own
def test_python_tiles_match_the_compiled_ones(monkeypatch, height, width, out_c):
    """What runs under NUMBA_DISABLE_JIT (layers/simd.py's Python versions) computes what the LLVM tiles compute."""
    import functools
    rng = np.random.default_rng(0)
    shape = (2, 3, height, width)
    monkeypatch.setattr(conv, "PIXELS", False)
    plan = conv.DirectPlan(shape, out_c, (3, 3), (1, 1), (1, 1), (height, width), np.float64)
    plan.backward_buffers()
    x, dy = rng.normal(size=shape), rng.normal(size=(2, out_c, height, width))
    plan.w[:, :out_c] = rng.normal(size=(plan.k, out_c))
    plan.bias[:out_c] = rng.normal(size=out_c)
    conv.place_planes(x, plan.xpad, plan.start, plan.wp)
    conv.place_channels_last(dy, plan.dyt, plan.wp)
    results = []
    for python in (False, True):
        if python:
            for nv in (1, 2, 3):
                monkeypatch.setattr(conv, f"tile_bcast{nv}", functools.partial(simd._py_tile_bcast, nv))
            monkeypatch.setattr(conv, "tile_taps", functools.partial(simd._py_tile_taps, simd.TAPS_KR, simd.TAPS_NV))
            monkeypatch.setattr(conv, "tile_taps1", functools.partial(simd._py_tile_taps, simd.TAPS_KR1, 1))
            monkeypatch.setattr(conv, "tile_taps_last", functools.partial(simd._py_tile_taps, simd.TAPS_KR, 1))
        run_conv = conv.direct_conv.py_func if python else conv.direct_conv
        run_dw = conv.direct_conv_dw1 if plan.taps_nv == 1 else conv.direct_conv_dw
        run_dw = run_dw.py_func if python else run_dw
        out, dwt = np.zeros_like(plan.out), np.zeros_like(plan.dwt)
        run_conv(plan.xpad.reshape(2, -1), plan.offs[:plan.k], plan.w, plan.bias, out)
        run_dw(plan.xpad.reshape(2, -1), plan.offs, plan.dyt, height, width, plan.wp, dwt)
        results.append((out, dwt))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert plan.nq % (3 * simd.lanes(np.float64)) in (simd.lanes(np.float64), 2 * simd.lanes(np.float64))
    lanes = simd.lanes(np.float64)
    vectors = -(-out_c // lanes)  # one vector of filters a tile where two would compute TAPS_ONE times as many
    assert plan.taps_nv == (1 if -(-vectors // simd.TAPS_NV) * simd.TAPS_NV > simd.TAPS_ONE * vectors else simd.TAPS_NV)


@pytest.mark.parametrize("n", [1, 2])
def test_python_pixel_tiles_match_the_compiled_ones(monkeypatch, n):
    """tile_pixels (and tile_pixels_acc, a block of taps after the first) under NUMBA_DISABLE_JIT and compiled:
    the forward as pixel tiles, its taps in blocks (720 taps: blocks of 256 compiled at 64-byte vectors, of 512
    at 32; 120 blocks of 6 in Python) and unblocked, a batch of one in parts over the threads."""
    import functools
    rng = np.random.default_rng(0)
    shape, out_c = (n, 80, 7, 6), 5
    monkeypatch.setattr(conv, "PIXELS", True)
    plan = conv.DirectPlan(shape, out_c, (3, 3), (1, 1), (1, 1), (7, 6), np.float64)
    plan.w[:, :out_c] = rng.normal(size=(plan.k, out_c))
    plan.bias[:out_c] = rng.normal(size=out_c)
    conv.place_planes(rng.normal(size=shape), plan.xpad, plan.start, plan.wp)
    assert plan.k > conv.PIX_KB_VALUES // plan.o_pad > 0  # (the compiled kernel sums two blocks)
    results = []
    for python, values in ((False, None), (True, 0), (True, 6 * plan.o_pad)):
        if python:
            for name, acc in (("tile_pixels", False), ("tile_pixels_acc", True)):
                monkeypatch.setattr(conv, name, functools.partial(simd._py_tile_pixels, simd.PIX_MR, simd.PIX_NV, acc))
            monkeypatch.setattr(conv, "PIX_KB_VALUES", values)
        run = conv.direct_conv_pixels.py_func if python else conv.direct_conv_pixels
        out = np.zeros_like(plan.out)
        run(plan.xpad.reshape(n, -1), plan.offs[:plan.k], plan.w, plan.bias, plan.qs, out, 2)
        results.append(out)
    for other in results[1:]:
        np.testing.assert_allclose(results[0], other, rtol=1e-12, atol=1e-12)
    assert len(plan.qs) % simd.PIX_MR == 0 and len(plan.qs) >= 42


def test_python_planar_tiles_match_the_compiled_ones(monkeypatch):
    """tile_planar (the weight gradient from the planar top diff) under NUMBA_DISABLE_JIT and compiled."""
    import functools
    rng = np.random.default_rng(0)
    shape, out_c = (2, 3, 5, 16), 7
    plan = conv.DirectPlan(shape, out_c, (3, 3), (1, 1), (1, 1), (5, 16), np.float64)
    assert plan.planar
    conv.place_planes(rng.normal(size=shape), plan.xpad, plan.start, plan.wp)
    dy = rng.normal(size=(2, out_c, 80))
    results = []
    for python in (False, True):
        if python:
            monkeypatch.setattr(conv, "tile_planar", functools.partial(simd._py_tile_planar, simd.PLANAR_KR,
                                                                       simd.PLANAR_OR))
        run = conv.direct_conv_dw_planar.py_func if python else conv.direct_conv_dw_planar
        dw = np.zeros((out_c, plan.k))
        run(plan.xpad.reshape(2, -1), plan.offs[:plan.k], dy, 5, 16, plan.wp, dw)
        results.append(dw)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_the_avx2_tiles_compute_the_same(tmp_path):
    """32-byte vectors and their smaller tiles (CPUs without AVX-512), forced on this CPU, in a fresh process."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = """
import numpy as np, pytest, layers.simd as simd, tests.test_conv_direct as t
assert simd.VECTOR_BYTES == 32 and simd.BCAST_MR == 4 and "yaffe-vector-32" in simd.config.CACHE_DIR
with pytest.MonkeyPatch.context() as patch:
    for pixels in (False, True):  # every pass (forward, data and weight gradients) of every geometry, both tiles
        for geometry in t.GEOMETRIES:
            t.test_direct_convolution_matches_im2col(geometry, np.float32, patch, pixels)
        for geometry in t.STRIDED:
            t.test_strided_direct_convolution_matches_im2col(geometry, np.float32, patch, pixels)
    for geometry in (t.GEOMETRIES[1] + (1,), t.GEOMETRIES[5] + (1,), t.STRIDED[1], t.STRIDED[3]):
        for batch in ("one group", "two groups", "a wide tail"):  # the data gradient in the lanes: 2 vectors of 8
            t.test_the_data_gradient_with_the_images_in_the_lanes_matches_im2col(geometry, np.float32, batch, patch)
    for geometry in t.LANES_FORWARD:  # the forward in the lanes: 6 channels a tile
        for batch in ("two groups", "a wide tail"):
            t.test_the_forward_with_the_images_in_the_lanes_matches_im2col(geometry, np.float32, batch, patch)
    for case in t.DEPTHWISE_LANES:  # depthwise in the lanes: 6 channels a tile, 2 groups of 16 images
        t.test_depthwise_kernels_match_the_grouped_im2col_path(*case, np.float32, patch)
    for case in t.BANDS:
        for pixels in (False, True):
            t.test_the_forward_in_bands_matches_the_three_kernels(case, np.float32, pixels, patch)
t.test_deinterleave2_splits_even_and_odd_columns_and_touches_nothing_else(np.float32)
t.test_store_row_equals_the_scalar_loop_to_the_bit(np.float32)
import tests.test_layers_forward as f  # MAX pooling's 3x3/2 rows in vectors of 8 (groups of 7 windows)
for size in ((5, 40), (9, 33)):
    f.test_the_stride_2_max_pooling_kernels_equal_the_loops(3, size, np.float32)
for case in t.UNPADDED:  # (called directly: nets take it on AVX-512 alone)
    if t._unpadded_fits(case, np.float32):
        t.test_the_unpadded_forward_matches_numpy(case, np.float32)
for width in (7, 14, 33):
    t.test_place_phases_of_stride_two_matches_numpy(width, 1)
for chans, width in ((32, 32), (20, 24), (12, 16)):  # the weight gradient's top diff: blocks of 8 channels
    for dtype in (np.float32, np.float64):
        t.test_the_top_diff_goes_channels_last_as_numpy_puts_it(chans, width, dtype)
for n in (16, 20, 50, 64, 7):  # the lanes tiles' widths: 6, 5 and 4 channels
    t.test_lane_blocks_cover_the_channels_with_the_least_padding(n)
for last in (3, 8):  # each tile in Python and compiled, the last group on one vector and on two
    with pytest.MonkeyPatch.context() as patch:
        t.test_python_lane_tiles_match_the_compiled_ones(last, patch)
for tail in ("one vector", "two vectors"):
    t.test_a_last_group_of_lanes_that_one_vector_holds_is_computed_on_one_vector(tail, np.float32)
for n in (1, 2):
    with pytest.MonkeyPatch.context() as patch:
        t.test_python_pixel_tiles_match_the_compiled_ones(patch, n)
for out_c in (10, 7, 3, 20, 40):
    with pytest.MonkeyPatch.context() as patch:
        t.test_python_tiles_match_the_compiled_ones(patch, 6, 7, out_c)
with pytest.MonkeyPatch.context() as patch:
    t.test_python_planar_tiles_match_the_compiled_ones(patch)
for width in (24, 32, 40):
    with pytest.MonkeyPatch.context() as patch:
        t.test_python_row_tiles_match_the_compiled_ones(width, np.float32, patch)
for groups in (2, 3):  # the transposes (lanes_to_top with an Eltwise SUM above too): 8 values a block
    with pytest.MonkeyPatch.context() as patch:  # (the kernels as they are, not wrapped by the tests above)
        t.test_the_transposes_to_and_from_the_lanes_match_numpy_compiled_and_as_python(np.float32, groups, patch)
import tests.test_channels_last as c  # the channels-last tiles (8x1, 6x2, 3x4), each chosen by some geometry
c.test_the_geometries_take_every_tile_and_the_tile_wastes_least()
for geometry in c.GEOMETRIES:
    c.test_a_channels_last_convolution_matches_numpy_with_its_sum_and_leaky_relu(geometry, np.float32)
for geometry in c.WINO:  # Winograd's transforms in vectors of 8
    c.test_a_winograd_convolution_matches_numpy_with_its_sum_and_relu(geometry)
import tests.test_winograd as w  # Winograd of the training convolutions: transforms in vectors of 8, tiles 3x4 ...
for case in w.CASES:
    w.test_the_winograd_passes_match_float64_sums(case, 1)
print("ok")
"""
    env = dict(os.environ, YAFFE_VECTOR_BYTES="32", NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_the_other_pixel_tile_height_computes_the_same(tmp_path):
    """The pixel tiles of the height this CPU does not get (6 or 8 pixels: layers/simd._pixel_rows chooses by the
    CPU), forced, in a fresh process: every pass of the pixel-tile geometries, the bands, the tiles against their
    Python, and the LSTM's step product."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other = "8" if simd.PIX_MR == 6 else "6"
    code = f"""
import numpy as np, pytest, layers.simd as simd, tests.test_conv_direct as t, tests.test_recurrent as r
assert simd.PIX_MR == {other} and "yaffe-pixel-rows-{other}" in simd.config.CACHE_DIR
with pytest.MonkeyPatch.context() as patch:
    for geometry in t.GEOMETRIES[:6]:
        t.test_direct_convolution_matches_im2col(geometry, np.float32, patch, True)
    for geometry in t.STRIDED[:2]:
        t.test_strided_direct_convolution_matches_im2col(geometry, np.float32, patch, True)
    for case in t.BANDS[:3]:
        t.test_the_forward_in_bands_matches_the_three_kernels(case, np.float32, True, patch)
for n in (1, 2):
    with pytest.MonkeyPatch.context() as patch:
        t.test_python_pixel_tiles_match_the_compiled_ones(patch, n)
for m in (5, {other}, 9, 30):
    with pytest.MonkeyPatch.context() as patch:
        r.test_step_product_is_the_matrix_product_in_either_tile_and_as_python(m, patch)
print("ok")"""
    env = dict(os.environ, YAFFE_PIXEL_ROWS=other, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]

@njit(cache=True)
def _deinterleave(x, at, count, dst, d0, d1):
    simd.deinterleave2(x, at, count, dst, d0, d1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deinterleave2_splits_even_and_odd_columns_and_touches_nothing_else(dtype):
    """simd.deinterleave2 (place_phases' and place_band's stride-2 rows): whole vectors, then a masked last part,
    at every count up to three vectors, against NumPy's slices and the Python stand-in, with the source ending
    where the range does (the masked loads read nothing past it); nothing written around the destinations."""
    n = simd.lanes(dtype)
    for count in range(0, 3 * n + 2):
        x = np.arange(1, 2 * count + 4, dtype=dtype)[:3 + 2 * count]  # ends at the range's end
        want = np.full(8 * n + 16, -1, dtype)
        want[5:5 + count], want[4 * n + 9:4 * n + 9 + count] = x[3::2][:count], x[4::2][:count]
        for f in (_deinterleave, simd._py_deinterleave2):
            got = np.full_like(want, -1)
            f(x, 3, count, got, 5, 4 * n + 9)
            np.testing.assert_array_equal(got, want, err_msg=f"count {count}")


@njit(cache=True)
def _store_row(src, s0, dst, d0, count, res, added, ca, cb, relu, slope):
    simd.store_row(src, s0, dst, d0, count, res, added, ca, cb, relu, slope)


@njit(cache=True)
def _store_row_scalar(src, s0, dst, d0, count, res, added, ca, cb, relu, slope):
    for j in range(count):  # direct_conv_bands' loop before store_row
        if added:
            t = ca * src[s0 + j] + cb * res[d0 + j]
            dst[d0 + j] = t if not relu or t > 0 else t * slope
        else:
            v = src[s0 + j]
            dst[d0 + j] = v if not relu or v > 0 else v * slope


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store_row_equals_the_scalar_loop_to_the_bit(dtype):
    """simd.store_row (a band's run of values to the top, with a SUM above and a leaky ReLU) against the scalar
    loop it replaced, compiled by Numba, bit for bit: every count to three vectors, zeros of both signs, float64
    and float32 coefficients (Numba's promotions: float64 arithmetic where any is float64; unit coefficients in
    the arrays' type), slopes of the arrays' type given as float64 or as it (the callers round them, as Caffe's
    Dtype negative_slope is), nothing written around the run; and the Python stand-in to within rounding."""
    rng = np.random.default_rng(3)
    n = simd.lanes(dtype)
    for count in range(0, 3 * n + 2):
        src = rng.normal(size=count + 10).astype(dtype)
        src[::7], src[1::11] = 0.0, -0.0
        res = rng.normal(size=count + 20).astype(dtype)
        for added in (False, True):
            for relu in (False, True):
                for ca, cb in ((1.0, 1.0), (0.3, 0.7), (np.float32(0.3), np.float32(-2.0))):
                    for slope in (0.0, float(dtype(0.1)), dtype(-0.3), np.float32(0.1)):
                        r = res if added else res[:0]
                        got, want, py = (np.full(count + 20, 7, dtype) for _ in range(3))
                        _store_row(src, 3, got, 5, count, r, added, ca, cb, relu, slope)
                        _store_row_scalar(src, 3, want, 5, count, r, added, ca, cb, relu, slope)
                        simd._py_store_row(src, 3, py, 5, count, r, added, ca, cb, relu, slope)
                        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
                        np.testing.assert_allclose(py, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [1, 2, 7, 14, 15, 28, 33])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_place_phases_of_stride_two_matches_numpy(width, pad):
    """place_phases at stride 2 (rows split by simd.deinterleave2) against the phases cut by NumPy from the
    zero-padded image, for odd and even widths and pads, and row phases left out where the taps read none."""
    rng = np.random.default_rng(width)
    x = rng.normal(size=(2, 3, 5, width)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    row = -(-(width + 2 * pad) // 2)
    rows_h = -(-(5 + 2 * pad) // 2)
    for rows in (np.array([True, True]), np.array([True, False])):
        buf = np.zeros((2, 3 * 4, rows_h * row + 3), np.float32)
        conv.place_phases(x, buf, pad, pad, 2, row, rows)
        want = np.zeros_like(buf)
        for a in range(2):
            for b in range(2):
                phase = padded[:, :, a::2, b::2] if rows[a] else np.zeros_like(padded[:, :, a::2, b::2])
                h, w = phase.shape[2:]
                view = want.reshape(2, 3, 4, -1)[:, :, a * 2 + b, :rows_h * row].reshape(2, 3, rows_h, row)
                view[:, :, :h, :w] = phase
        np.testing.assert_array_equal(buf, want)


def test_a_new_bottom_shape_gets_a_new_plan():
    from tests.gradcheck import make_layer
    from layers.base import Blob
    layer, _ = make_layer("Convolution", {"convolution_param": {"num_output": 16, "kernel_size": 3, "pad": 1}},
                          [(2, 4, 9, 9)])
    outputs = []
    for shape in ((2, 4, 9, 9), (2, 4, 12, 7), (2, 4, 9, 9)):
        top_shape = layer.setup([shape])[0]
        x, top = Blob("x", shape, np.float32), Blob("y", top_shape, np.float32)
        x.data[...] = np.random.default_rng(0).normal(size=shape)
        layer.forward([x], [top])
        assert layer._plan.bottom_shape == shape
        outputs.append(top.data.copy())
    np.testing.assert_array_equal(outputs[0], outputs[2])
    assert outputs[1].shape == (2, 16, 12, 7)


DEPTHWISE = [  # (bottom shape, num_output, kernel, pad, stride, dilation): group = the channels
    ((2, 8, 9, 9), 8, (3, 3), (1, 1), (1, 1), (1, 1)),      # MobileNet's 3x3, stride 1
    ((3, 6, 10, 7), 6, (3, 3), (1, 1), (2, 2), (1, 1)),     # stride 2, odd width
    ((2, 4, 9, 8), 8, (5, 3), (2, 0), (2, 2), (2, 1)),      # 2 filters a channel, dilation, rectangular
    ((2, 3, 11, 10), 3, (3, 3), (1, 1), (3, 3), (1, 1)),    # stride 3: 9 phases
    ((1, 5, 4, 4), 5, (3, 3), (3, 3), (1, 1), (1, 1)),      # a pad wider than the kernel's reach
    ((5, 5, 30, 30), 10, (3, 3), (1, 1), (1, 1), (1, 1)),   # blocks of 2 images, the last of 1; 2 channels a task
    ((3, 7, 40, 37), 7, (3, 3), (1, 1), (2, 2), (1, 1)),    # stride 2, an image a block; 3 channels a task, then 1
    ((57, 3, 4, 4), 3, (3, 3), (1, 1), (1, 1), (1, 1)),     # blocks of 56 and 1: the last's row (rounded up to
]                                                            # ROUND) reads the slot of the block before's image 1
DEPTHWISE_LANES = [  # a batch of 26 fills the lanes (2 vectors: 32 float32 on AVX-512, 16 float64 or AVX2)
    ((26, 10, 4, 4), 10, (3, 3), (1, 1), (1, 1), (1, 1)),   # MobileNet's 4x4 blocks; a tile of channels, then 2
    ((26, 9, 7, 6), 9, (3, 3), (1, 1), (2, 2), (1, 1)),     # stride 2, a rectangle, odd sides
    ((26, 3, 5, 5), 3, (5, 3), (2, 1), (1, 1), (1, 2)),     # dilation, a rectangular kernel; channels < a tile
]
DEPTHWISE_SPLIT = {(5, 5, 30, 30): (2, 2), (3, 7, 40, 37): (1, 3), (57, 3, 4, 4): (56, 1)}  # (images, channels) a task


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, out_c, kernel, pad, stride, dilation", DEPTHWISE + DEPTHWISE_LANES)
def test_depthwise_kernels_match_the_grouped_im2col_path(shape, out_c, kernel, pad, stride, dilation, dtype,
                                                           monkeypatch):
    """The depthwise kernels (rows of phases, and the images in the lanes for small planes and full batches) give
    the grouped im2col path's top, bottom diff and weight and bias diffs (accumulated on 0.5)."""
    import layers.depthwise as depthwise
    lanes = shape[0] == 26
    monkeypatch.setattr(depthwise, "LANES_PLANE", 10 ** 6 if lanes else 0)  # (57 images fill the lanes too)

    def run(direct):
        monkeypatch.setattr(conv, "DIRECT", direct)
        text = f"""
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: {list(shape)}}}}}}}
  - {{name: c, type: Convolution, bottom: data, top: c, convolution_param: {{num_output: {out_c}, group: {shape[1]},
      kernel_h: {kernel[0]}, kernel_w: {kernel[1]}, pad_h: {pad[0]}, pad_w: {pad[1]}, stride_h: {stride[0]},
      stride_w: {stride[1]}, dilation: {list(dilation)}, weight_filler: {{type: gaussian, std: 0.3}},
      bias_filler: {{type: gaussian}}}}}}
  - {{name: loss, type: EuclideanLoss, bottom: [c, c], top: loss}}
"""
        net = Net(loads(text), "TRAIN", seed=1, dtype=dtype)
        net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=shape)
        layer = net.layers[1]
        plan = layer._depthwise(net.blobs["data"].data)
        assert (plan is not None) == direct
        if plan is not None and shape in DEPTHWISE_SPLIT:
            assert (plan.block, plan.channels) == DEPTHWISE_SPLIT[shape]
        if plan is not None:
            assert plan.lanes == lanes
        layer.forward(net.bottom_vecs[1], net.top_vecs[1])
        assert ("in the lanes" in layer.path_taken) == (direct and lanes)
        net.top_vecs[1][0].diff[...] = np.random.default_rng(1).normal(size=net.top_vecs[1][0].diff.shape)
        for blob in layer.blobs:
            blob.diff[...] = 0.5  # parameter gradients accumulate
        layer.backward(net.top_vecs[1], [True], net.bottom_vecs[1])
        return [net.blobs["c"].data.copy(), net.blobs["data"].diff.copy()] + [b.diff.copy() for b in layer.blobs]

    tol = 1e-12 if dtype == np.float64 else 2e-5
    for a, b in zip(run(True), run(False)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 10)



@pytest.mark.parametrize("stride", [1, 2])
def test_convolutions_of_one_geometry_share_the_padded_input(stride, monkeypatch):
    """Layers of one geometry share one padded-input buffer (DirectPlan.xpad, scratch): a backward whose buffer
    holds another layer's input places its own again. A chain a -> b -> c of one geometry, and e reading a's
    bottom too (a Split): every gradient equals the im2col path's, and b and c hold one buffer."""
    out = 9 if stride == 1 else 5
    conv_ = ("type: Convolution, convolution_param: {{num_output: 4, kernel_size: 3, pad: 1, stride: {}, "
             "weight_filler: {{type: gaussian, std: 0.3}}}}")
    text = f"""
force_backward: true
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: [2, 4, 9, 9]}}}}}}
  - {{name: t, type: Input, top: target, input_param: {{shape: {{dim: [2, 4, {out}, {out}]}}}}}}
  - {{name: a, bottom: data, top: a, {conv_.format(stride)}}}
  - {{name: e, bottom: data, top: e, {conv_.format(stride)}}}
  - {{name: b, bottom: a, top: b, {conv_.format(1)}}}
  - {{name: c, bottom: b, top: c, {conv_.format(1)}}}
  - {{name: s, type: Eltwise, bottom: [c, e], top: s}}
  - {{name: loss, type: EuclideanLoss, bottom: [s, target], top: loss}}
"""
    results = []
    monkeypatch.setattr(conv, "DIRECT_USEFUL", 0.0)  # the direct kernels for these few filters too
    for direct in (True, False):
        monkeypatch.setattr(conv, "DIRECT", direct)
        net = Net(loads(text), "TRAIN", seed=1, dtype=np.float64)
        rng = np.random.default_rng(0)
        net.blobs["data"].data[...] = rng.normal(size=net.blobs["data"].data.shape)
        net.blobs["target"].data[...] = rng.normal(size=net.blobs["target"].data.shape)
        for _ in range(2):  # the second pass: the buffer holds the last forward's input
            net.clear_param_diffs()
            net.forward_backward()
        results.append([net.blobs["data"].diff.copy()] + [p.blob.diff.copy() for p in net.params])
        if direct:
            by_name = {d.name: layer for d, layer in zip(net.defs, net.layers)}
            assert by_name["b"]._plan.xpad is by_name["c"]._plan.xpad and by_name["b"]._plan is not by_name["c"]._plan
            assert by_name["a"]._plan.xpad is by_name["e"]._plan.xpad
            assert all(layer.path_taken == "direct" for layer in by_name.values() if layer.type == "Convolution")
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_the_bias_gradient_is_a_tap_of_the_weight_gradient_where_its_tiles_have_room(stride, monkeypatch):
    """DirectPlan.bias_tap: LeNet's conv2 (500 taps, padded to whole tiles) sums the bias gradient as one more tap
    over a plane of ones (no channel_sums pass), equal to the top diff's sums; its forward is not changed by the
    ones; a 3x3 layer of 16 channels (144 taps, whole tiles) keeps channel_sums."""
    from tests.gradcheck import make_layer
    from layers.base import Blob
    monkeypatch.setattr(conv, "WINOGRAD", False)  # (LeNet's conv2 takes Winograd's F(2x2, 5x5) in float32)
    rng = np.random.default_rng(0)
    for chans, kernel, want_tap in ((20, 5, True), (16, 3, False)):
        layer, _ = make_layer("Convolution", {"convolution_param": {
            "num_output": 50, "kernel_size": kernel, "stride": stride, "weight_filler": {"type": "gaussian"},
            "bias_filler": {"type": "gaussian"}}}, [(8, chans, 12, 12)])
        shape = (8, chans, 12, 12)
        top_shape = layer.setup([shape])[0]
        x, top = Blob("x", shape, np.float32), Blob("y", top_shape, np.float32)
        x.data[...] = rng.normal(size=shape)
        layer.forward([x], [top])
        want_top = np.einsum("ok,nkp->nop", layer.blobs[0].data.reshape(50, -1).astype(np.float64), np.stack(
            [_im2col(x.data[i].astype(np.float64), kernel, stride) for i in range(8)])) + layer.blobs[1].data[:, None]
        np.testing.assert_allclose(top.data.reshape(8, 50, -1), want_top, rtol=1e-4, atol=1e-4)
        top.diff[...] = rng.normal(size=top_shape)
        sums = []
        monkeypatch.setattr(conv, "channel_sums", lambda *a: sums.append(1) or channel_sums(*a))
        layer.blobs[1].diff[...] = 0
        layer.backward([top], [True], [x])
        assert layer._plan.bias_tap == want_tap and (not sums) == want_tap
        np.testing.assert_allclose(layer.blobs[1].diff, top.diff.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5,
                                   atol=1e-4)


def _im2col(image, kernel, stride):
    """(C*k*k, OH*OW) of one image, no pad: the reference the test above computes the top from."""
    c, h, w = image.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    cols = np.empty((c, kernel, kernel, oh, ow))
    for i in range(kernel):
        for j in range(kernel):
            cols[:, i, j] = image[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
    return cols.reshape(c * kernel * kernel, oh * ow)


def test_the_forward_writes_rows_of_whole_vectors_to_the_top_itself():
    """DirectPlan.rows_direct (direct_conv_rows): the rows path where each output row is whole vectors (a row of
    32 at either width; LeNet's 24, half vectors at 64 bytes), a last partial tile of filters too, not the pixel
    tiles, nor rows of 28."""
    plan = conv.DirectPlan((2, 1, 6, 36), 16, (5, 5), (0, 0), (1, 1), (2, 32), np.float32)
    assert plan.rows_direct and not plan.pixels
    assert conv.DirectPlan((64, 1, 28, 28), 20, (5, 5), (0, 0), (1, 1), (24, 24), np.float32).rows_direct
    assert not conv.DirectPlan((2, 1, 12, 32), 16, (5, 5), (0, 0), (1, 1), (8, 28), np.float32).rows_direct
    assert conv.DirectPlan((2, 1, 6, 36), 7, (5, 5), (0, 0), (1, 1), (2, 32), np.float32).rows_direct
    # and the data gradient (dx_rows): ResNet's first stage, 16 channels of 32x32
    stage = conv.DirectPlan((2, 16, 32, 32), 16, (3, 3), (1, 1), (1, 1), (32, 32), np.float32)
    assert stage.rows_direct and stage.dx_rows and not stage.pixels_q


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [24, 32, 40])
def test_python_row_tiles_match_the_compiled_ones(width, dtype, monkeypatch):
    """direct_conv_rows under NUMBA_DISABLE_JIT (tile_bcast* and the half-vector tile_bcast_h*) and compiled, and
    both equal to the products in NumPy: rows of 3, 4 and 5 vectors (or half vectors), tiles of three, two, one;
    plain, and with a forward-only net's SUM (ca, cb) and leaky ReLU applied to each plane of a block."""
    import functools
    rng = np.random.default_rng(0)
    n, c, out_c, wp = 2, 3, 2 * simd.BCAST_MR - 3, width + 4  # (a last tile of filters partly past O)
    offs = np.array([k * 5 * wp + i * wp + j for k in range(c) for i in range(3) for j in range(3)], np.int64)
    xp = rng.normal(size=(n, c * 5 * wp)).astype(dtype)
    w, bias = rng.normal(size=(len(offs), out_c + 3)).astype(dtype), rng.normal(size=out_c + 3).astype(dtype)
    at = offs[:, None] + (np.arange(3)[:, None] * wp + np.arange(width)).reshape(-1)[None]  # (K, 3 rows x width)
    plain = np.stack([np.einsum("ko,kq->oq", w[:, :out_c], xp[m][at]).reshape(out_c, 3, width)
                      for m in range(n)]) + bias[:out_c, None, None]
    res = rng.normal(size=plain.shape).astype(dtype)
    summed = 0.5 * plain + 2.0 * res
    cases = [((res.reshape(-1)[:0], 1.0, 0.0, False, 0.0), plain),
             ((res.reshape(-1), 0.5, 2.0, True, 0.1), np.where(summed > 0, summed, summed * 0.1))]
    for epilogue, want in cases:
        results = []
        for python in (False, True):
            if python:
                for nv in (1, 2, 3):
                    monkeypatch.setattr(conv, f"tile_bcast{nv}", functools.partial(simd._py_tile_bcast, nv))
                    monkeypatch.setattr(conv, f"tile_bcast_h{nv}", functools.partial(simd._py_tile_bcast, nv / 2))
                monkeypatch.setattr(conv, "store_row", simd._py_store_row)
            y = np.full((n, out_c, 3, width), np.nan, dtype)
            (conv.direct_conv_rows.py_func if python else conv.direct_conv_rows)(xp, offs, w, bias, y, wp, *epilogue)
            results.append(y)
        for y in results:
            np.testing.assert_allclose(y, want, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-4)
