"""Forward-only convolutions kept channels-last between them (layers/channels_last.py, netspec/channels_last.py)."""
import numpy as np
import pytest

import netspec.channels_last as cl
from layers import simd
from layers.channels_last import ConvPlan, Program, WinoPlan, tile_kind
from netspec.loader import loads
from netspec.net import Net


def _reference(x, w, b, stride, pad):
    """The convolution in float64 with NumPy: x (N, C, H, W), w (O, C, KH, KW) -> (N, O, OH, OW)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh, ow = (h + 2 * pad[0] - kh) // stride[0] + 1, (wd + 2 * pad[1] - kw) // stride[1] + 1
    y = np.zeros((n, o, oh, ow)) + b[None, :, None, None]
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return y


def _convolve(x, weights, bias, stride, pad, res=None, ca=1.0, cb=1.0, relu=False, slope=0.0, sub=2):
    """One convolution through a Program: x into a channels-last blob (a channel stride past its channels and a
    border wider than the padding), the convolution (the SUM's other bottom res converted too), the top back.
    Returns (the top, the channels-last top)."""
    n, c, h, w = x.shape
    o = weights.shape[0]
    oh, ow = (h + 2 * pad[0] - weights.shape[2]) // stride[0] + 1, (w + 2 * pad[1] - weights.shape[3]) // stride[1] + 1
    border, cs = max(pad) + 1, -(-o // 64) * 64
    program = Program(x.dtype, n, sub, border)
    xb, out = program.buffer(h, w, c + 3), program.buffer(oh, ow, cs)
    program.to_cl(x, xb)
    rb = None
    if res is not None:
        rb = program.buffer(oh, ow, cs)
        program.to_cl(res, rb)
    plan = ConvPlan((h, w, c, border, c + 3), (oh, ow, o, border, cs), weights, bias, stride, pad, x.dtype)
    program.conv(xb, out, plan, rb, ca, cb, relu, slope)
    y = np.full((n, o, oh, ow), np.nan, x.dtype)
    program.back(out, y)
    call = program.call()
    call()
    mem = call.__closure__[0].cell_contents[2]  # (run_program's arguments: ops, coeffs, mem, ...)
    per_image = (oh + 2 * border) * (ow + 2 * border) * cs
    top = mem[out[0]:out[0] + sub * per_image].reshape(sub, oh + 2 * border, ow + 2 * border, cs)
    return y, top, border


# (channels, height, width, filters, kernel, stride, pad): the 1-, 2- and 4-vector tiles, pixels not a multiple
# of a tile, filters not of a vector, 1x1 and 7x7 kernels, stride 2 on odd planes, a wider border than the padding
GEOMETRIES = [(3, 9, 11, 16, (3, 3), (1, 1), (1, 1)), (5, 8, 8, 20, (3, 3), (2, 2), (1, 1)),
              (16, 7, 7, 64, (3, 3), (1, 1), (1, 1)), (7, 10, 10, 33, (1, 1), (2, 2), (0, 0)),
              (4, 12, 12, 8, (5, 5), (1, 1), (2, 2)), (2, 13, 9, 48, (7, 3), (2, 1), (3, 1)),
              (6, 8, 8, 64, (3, 3), (1, 1), (1, 1))]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_each_tile_sums_the_kernel_rows_its_pixels_read_inside_the_bottom(geometry):
    """ConvPlan.taps: a tile's taps are the kernel rows some pixel of it reads inside the bottom (rows reading only
    the padding add zeros and are left out), brute force over its pixels (the last repeated to a whole tile)."""
    c, h, w, o, k, stride, pad = geometry
    oh, ow = (h + 2 * pad[0] - k[0]) // stride[0] + 1, (w + 2 * pad[1] - k[1]) // stride[1] + 1
    plan = ConvPlan((h, w, c, max(pad) + 1, c), (oh, ow, o, 1, -(-o // 64) * 64), np.zeros((o, c) + k, np.float32),
                    np.zeros(o, np.float32), stride, pad, np.float32)
    mr = simd.CL_TILES[plan.kind][0]
    pixels = list(range(oh * ow)) + [oh * ow - 1] * (-(oh * ow) % mr)
    for t in range(len(pixels) // mr):
        inside = [i for i in range(k[0]) if any(0 <= p // ow * stride[0] - pad[0] + i < h
                                                  for p in pixels[t * mr:(t + 1) * mr])]
        lo, hi = plan.taps[2 * t:2 * t + 2]
        assert (lo, hi) == ((inside[0] * k[1] * c, (inside[-1] + 1) * k[1] * c) if inside else (lo, lo))


# (channels, height, width, filters): even and odd planes (a block past the end), filters not whole vectors, a
# product on each tile
WINO = [(32, 8, 8, 32), (32, 7, 7, 64), (16, 9, 6, 20), (64, 5, 11, 33), (48, 14, 14, 16)]


@pytest.mark.parametrize("geometry", WINO)
def test_a_winograd_convolution_matches_numpy_with_its_sum_and_relu(geometry):
    """Program.wino (F(2x2, 3x3), stride 1, pad 1): the convolution to float32's rounding (its transforms add
    and subtract a few values), with the SUM (any and unit coefficients) and a leaky or plain ReLU; three images
    two at a time; the border and the channels past the filters stay zero."""
    c, h, w, o = geometry
    rng = np.random.default_rng(sum(geometry))
    x = rng.normal(size=(3, c, h, w)).astype(np.float32)
    weights, bias = rng.normal(0, 0.3, (o, c, 3, 3)).astype(np.float32), rng.normal(size=o).astype(np.float32)
    want = _reference(x, weights, bias, (1, 1), (1, 1))
    res = rng.normal(size=want.shape).astype(np.float32)
    border, cs = 2, -(-o // 64) * 64
    for added, relu, ca, cb, slope in ((False, False, 1.0, 1.0, 0.0), (True, True, 0.5, 2.0, 0.1),
                                       (True, True, 1.0, 1.0, 0.0), (False, True, 1.0, 1.0, 0.25)):
        program = Program(np.float32, 3, 2, border)
        xb, out, rb = program.buffer(h, w, c), program.buffer(h, w, cs), program.buffer(h, w, cs)
        program.to_cl(x, xb)
        program.to_cl(res, rb)
        plan = WinoPlan((h, w, c, border, c), (h, w, o, border, cs), weights, bias, np.float32)
        program.wino(xb, out, plan, rb if added else None, ca, cb, relu, slope)
        got = np.full(want.shape, np.nan, np.float32)
        program.back(out, got)
        call = program.call()
        call()
        expect = ca * want + cb * res if added else want
        expect = np.where(expect > 0, expect, slope * expect) if relu else expect
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
        mem = call.__closure__[0].cell_contents[2]
        top = mem[out[0]:out[0] + 2 * out[1]].reshape(2, h + 2 * border, w + 2 * border, cs)
        inner = np.zeros(top.shape, bool)
        inner[:, border:-border, border:-border, :o] = True
        assert not top[~inner].any()


def test_winograd_takes_the_3x3s_it_pays_for():
    """Stride 1, pad 1, float32, 32 channels or more in whole vectors (16 -> 16: 0.93-1.14x the direct tiles)."""
    names = ("c1", "c2", "c3", "proj", "c4")
    for text, dtype, want in ((NET, "float32", [False, False, True, False, True]),
                              (NET.replace("num_output: 32, kernel_size: 3, pad: 1,\n     stride: 2",
                                           "num_output: 16, kernel_size: 3, pad: 1,\n     stride: 2"), "float32",
                               [False, False, False, False, True]),
                              (NET, "float64", [False] * 5)):
        net = Net(loads(text, "w.yaml"), "TEST", "w.yaml", seed=0, dtype=dtype)
        index = {d.name: i for i, d in enumerate(net.defs)}
        run = cl._Run(net, {}, {}, {})
        assert [run._winograd(index[name]) for name in names] == want


def test_a_winograd_run_on_a_plane_odd_in_one_direction_only_gives_the_layers_results():
    """An 8x7 plane (even rows, odd columns): the blocks past its last column read two columns into the border, so
    the run's border is 2 (a border from the larger side alone was 1: the plan refused the blobs)."""
    text = NET.replace("dim: [2, 3, 14, 14]", "dim: [2, 3, 16, 14]")
    nets = [Net(loads(text, "odd.yaml"), "TEST", "odd.yaml", seed=0) for _ in range(2)]
    x = np.random.default_rng(6).normal(size=(2, 3, 16, 14))
    for n in nets:
        n.blobs["data"].data[...] = x
    nets[0].keep_for_backward, nets[0].constant_weights = False, True
    for n in nets:
        n.forward()
    assert nets[0].blobs["c3"].data.shape[2:] == (8, 7) and len(_runs(nets[0])) == 1
    want = nets[1].blobs["ip"].data
    np.testing.assert_allclose(nets[0].blobs["ip"].data, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_the_geometries_take_every_tile_and_the_tile_wastes_least():
    """tile_kind: the tile computing the fewest values (pixels and filters rounded up to whole tiles, weighed by
    CL_SPEED), of those the one of more vectors; the geometries above take each of CL_TILES in float32."""
    kinds = set()
    for c, h, w, o, k, stride, pad in GEOMETRIES:
        oh, ow = (h + 2 * pad[0] - k[0]) // stride[0] + 1, (w + 2 * pad[1] - k[1]) // stride[1] + 1
        kinds.add(tile_kind(o, np.float32, oh * ow))
    assert kinds == {0, 1, 2}
    lanes = simd.VECTOR_BYTES // 4
    for o, pixels in ((64, 49), (64, 64), (16, 784), (32, 196), (48, 63), (64, 17)):
        vectors = -(-o // lanes)
        work = [-(-pixels // mr) * mr * -(-vectors // nv) * nv / speed for (mr, nv), speed in zip(simd.CL_TILES,
                                                                                                 simd.CL_SPEED)]
        kind = tile_kind(o, np.float32, pixels)
        assert work[kind] == min(work) and all(simd.CL_TILES[kind][1] >= simd.CL_TILES[k][1]
                                               for k in range(3) if work[k] == min(work))
    if simd.VECTOR_BYTES == 64:  # ResNets' 7x7 planes of 64 filters: 7 pixels by 2 vectors; 8x8: 4 by 4
        assert simd.CL_TILES[tile_kind(64, np.float32, 49)] == (7, 2)
        assert simd.CL_TILES[tile_kind(64, np.float32, 64)] == (4, 4)
    else:  # one vector of filters only where more would be mostly padding (LeNet conv2's 2 images of Winograd blocks)
        assert simd.CL_TILES[tile_kind(50, np.float32, 32)] == (3, 4)
        assert simd.CL_TILES[tile_kind(8, np.float32, 64)] == (8, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_channels_last_convolution_matches_numpy_with_its_sum_and_leaky_relu(geometry, dtype):
    """A Program's convolution between channels-last blobs: the top is the convolution (+ ca * it + cb * the SUM's
    other bottom, then a leaky ReLU), the border and the channels past the filters stay zero; three images two at
    a time (the last part one)."""
    c, h, w, o, k, stride, pad = geometry
    rng = np.random.default_rng(sum(geometry[:4]))
    x = rng.normal(size=(3, c, h, w)).astype(dtype)
    weights, bias = rng.normal(0, 0.3, (o, c) + k).astype(dtype), rng.normal(size=o).astype(dtype)
    want = _reference(x, weights, bias, stride, pad)
    res = rng.normal(size=want.shape).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    # (a leaky ReLU alone, and a SUM of unit coefficients with a plain ReLU: the epilogue in the arrays' type)
    for added, relu, ca, cb, slope in ((False, False, 0.5, 2.0, 0.1), (True, True, 0.5, 2.0, 0.1),
                                       (False, True, 1.0, 1.0, 0.25), (True, True, 1.0, 1.0, 0.0)):
        got, top, border = _convolve(x, weights, bias, stride, pad, res if added else None, ca, cb, relu, slope)
        expect = ca * want + cb * res if added else want
        expect = np.where(expect > 0, expect, slope * expect) if relu else expect
        np.testing.assert_allclose(got, expect, rtol=tol, atol=tol * np.abs(expect).max())
        inner = np.zeros(top.shape, bool)
        inner[:, border:-border, border:-border, :o] = True
        assert not top[~inner].any()  # the border and the padded channels


def test_the_python_tile_matches_numpy():
    """simd._py_tile_cl (NUMBA_DISABLE_JIT's) computes what the compiled tile does."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 6)).astype(np.float32)
    weights, bias = rng.normal(size=(16, 4, 3, 3)).astype(np.float32), rng.normal(size=16).astype(np.float32)
    xb = np.zeros((8, 8, 4), np.float32)
    xb[1:7, 1:7] = x.transpose(1, 2, 0)
    plan = ConvPlan((6, 6, 4, 1, 4), (6, 6, 16, 1, 16), weights, bias, (1, 1), (1, 1), np.float32)
    out = np.zeros((8, 8, 16), np.float32)
    mr, nv = simd.CL_TILES[plan.kind]
    o16 = out.reshape(-1)
    for o0 in range(0, 16, nv * simd.lanes(np.float32)):
        for t in range(len(plan.qin) // mr):
            simd._py_tile_cl(mr, nv, xb.reshape(-1), 0, plan.qin, plan.qout, t * mr, plan.offs, plan.w.reshape(-1),
                             o0, plan.w.shape[1], plan.bias, o16, 0, o16[:0], False, 1.0, 1.0, True, 0.0)
    got = out[1:7, 1:7].transpose(2, 0, 1)
    np.testing.assert_allclose(got, np.maximum(_reference(x[None], weights, bias, (1, 1), (1, 1))[0], 0),
                               rtol=1e-5, atol=1e-4)


NET = """
layer:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [2, 3, 14, 14]}}}
  - {name: c1, type: Convolution, bottom: data, top: c1, convolution_param: {num_output: 8, kernel_size: 3, pad: 1,
     bias_term: false, weight_filler: {type: gaussian, std: 0.3}}}
  - {name: bn1, type: BatchNorm, bottom: c1, top: c1}
  - {name: sc1, type: Scale, bottom: c1, top: c1, scale_param: {bias_term: true}}
  - {name: r1, type: ReLU, bottom: c1, top: c1}
  - {name: c2, type: Convolution, bottom: c1, top: c2, convolution_param: {num_output: 32, kernel_size: 3, pad: 1,
     stride: 2, weight_filler: {type: gaussian, std: 0.3}, bias_filler: {type: gaussian, std: 0.3}}}
  - {name: r2, type: ReLU, bottom: c2, top: c2, relu_param: {negative_slope: 0.1}}
  - {name: c3, type: Convolution, bottom: c2, top: c3, convolution_param: {num_output: 32, kernel_size: 3, pad: 1,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: proj, type: Convolution, bottom: c1, top: proj, convolution_param: {num_output: 32, kernel_size: 1,
     stride: 2, weight_filler: {type: gaussian, std: 0.3}}}
  - {name: sum, type: Eltwise, bottom: [c3, proj], top: sum}
  - {name: r3, type: ReLU, bottom: sum, top: sum}
  - {name: c4, type: Convolution, bottom: sum, top: c4, convolution_param: {num_output: 24, kernel_size: 3, pad: 1,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: r4, type: ReLU, bottom: c4, top: c4}
  - {name: gap, type: Pooling, bottom: sum, top: gap, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: ip, type: InnerProduct, bottom: gap, top: ip, inner_product_param: {num_output: 5,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: side, type: Pooling, bottom: c1, top: side, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
"""


def _nets(keep=()):
    rng = np.random.default_rng(5)
    nets = [Net(loads(NET, "cl.yaml"), "TEST", "cl.yaml", seed=0) for _ in range(2)]
    for layer, twin in zip(*(n.layers for n in nets)):
        for i, (b, c) in enumerate(zip(layer.blobs, twin.blobs)):
            b.data[...] = c.data[...] = (rng.uniform(0.5, 2, b.shape) if layer.type == "BatchNorm" and i == 1 else
                                         np.full(b.shape, 1.5) if layer.type == "BatchNorm" and i == 2 else
                                         rng.normal(size=b.shape))
    x = rng.normal(size=(2, 3, 14, 14))
    for n in nets:
        n.blobs["data"].data[...] = x
    nets[0].keep_for_backward, nets[0].constant_weights = False, True
    nets[0].keep_blobs = keep
    return nets


def _runs(net):
    return [i for i, call in net._bound[4] if "Program.call" in call.__qualname__]


@pytest.mark.parametrize("sub_batch", [1 << 20, 1])
def test_a_forward_only_net_keeps_its_run_of_convolutions_channels_last_with_the_loops_results(sub_batch,
                                                                                             monkeypatch):
    """run.py predict and test (constant weights, no backward): the five convolutions (BatchNorm and Scale folded,
    ReLUs, a leaky one, a SUM written by the projection) and the global pooling after them run as one call, and
    give the tops of the layers run one by one: the results (ip; c4, rewritten in place by the last ReLU), the
    blob a layer after the run reads (c1, for side) and a blob named in keep_blobs (c2), written back in Caffe's
    layout; the others are left unwritten. Both images at once, and one at a time (SUB_BATCH_BYTES). The 3x3s
    reading 32 channels (c3 on 7x7 planes, with its 7x7 top in a border of 2; c4, its 24 filters not a whole
    vector) as Winograd's F(2x2, 3x3)."""
    monkeypatch.setattr(cl, "SUB_BATCH_BYTES", sub_batch)
    calls = []
    for kind in ("conv", "wino"):
        compiled = getattr(cl.Program, kind)
        monkeypatch.setattr(cl.Program, kind, lambda *a, kind=kind, compiled=compiled, **k: calls.append(
            (kind, a[2][4:])) or compiled(*a, **k))
    fast, loop = _nets(keep={"c2"})
    for net in (fast, loop):
        for name in net.blobs:
            if name != "data":
                net.blobs[name].data[...] = np.nan
    fast.forward()
    loop.forward()
    assert len(calls) == 5 and len(_runs(fast)) == 1
    assert [kind for kind, _ in calls] == ["conv", "conv", "wino", "conv", "wino"] and calls[2][1] == (7, 7)
    args = dict(fast._bound[4])[_runs(fast)[0]].__closure__[0].cell_contents  # (run_program's)
    assert args[7] == (2 if sub_batch > 1 else 1)  # images a part
    for name in ("ip", "c4", "side", "c1", "c2", "gap"):
        want = loop.blobs[name].data
        np.testing.assert_allclose(fast.blobs[name].data, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=name)
    assert np.isnan(fast.blobs["c3"].data).all() and np.isnan(fast.blobs["sum"].data).all()
    fast.forward()  # bound once: the same call again
    assert len(calls) == 5 and len(_runs(fast)) == 1


def test_a_net_that_keeps_most_blobs_runs_its_convolutions_on_their_own_kernels():
    """As pycaffe's forward-only nets keep every blob: converting them all back would cost what the run saves."""
    fast, loop = _nets(keep=set(NET_BLOBS))
    fast.forward()
    loop.forward()
    assert not _runs(fast)
    want = loop.blobs["c3"].data
    np.testing.assert_allclose(fast.blobs["c3"].data, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


NET_BLOBS = ("c1", "c2", "c3", "proj", "sum", "c4", "gap", "ip", "side")


def test_channels_last_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(cl, "ENABLED", False)
    fast, loop = _nets()
    fast.forward()
    assert not _runs(fast)


def test_convolutions_along_one_axis_run_on_their_own_kernels():
    """A run needs (N, C, H, W) blobs: two 1-D convolutions in a row (N, C, L) keep the layers' own kernels."""
    text = """
layer:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [2, 3, 20]}}}
  - {name: a, type: Convolution, bottom: data, top: a, convolution_param: {num_output: 8, kernel_size: 3, pad: 1,
     weight_filler: {type: gaussian, std: 0.3}}}
  - {name: b, type: Convolution, bottom: a, top: b, convolution_param: {num_output: 8, kernel_size: 3, pad: 1,
     weight_filler: {type: gaussian, std: 0.3}}}
"""
    nets = [Net(loads(text, "one.yaml"), "TEST", "one.yaml", seed=0) for _ in range(2)]
    x = np.random.default_rng(2).normal(size=(2, 3, 20))
    for n in nets:
        n.blobs["data"].data[...] = x
    nets[0].keep_for_backward, nets[0].constant_weights = False, True
    for n in nets:
        n.forward()
    assert not _runs(nets[0])
    np.testing.assert_allclose(nets[0].blobs["b"].data, nets[1].blobs["b"].data, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool,kernel,stride,pad,size", [("MAX", 3, 2, 0, 9), ("MAX", 3, 2, 1, 8), ("AVE", 3, 2, 1, 9),
                                                          ("AVE", 2, 2, 0, 7), ("MAX", 2, 1, 0, 5)])
def test_channels_last_pooling_and_relu_match_the_layers(pool, kernel, stride, pad, size):
    """A Program's MAX and AVE windows (Caffe's: the last window past the edge clipped, AVE divided by the window
    counted with its padding) and an in-place leaky ReLU after them give the Pooling and ReLU layers' tops."""
    text = f"""
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: [2, 20, {size}, {size}]}}}}}}
  - {{name: p, type: Pooling, bottom: data, top: p, pooling_param: {{pool: {pool}, kernel_size: {kernel},
     stride: {stride}, pad: {pad}}}}}
  - {{name: r, type: ReLU, bottom: p, top: p, relu_param: {{negative_slope: 0.25}}}}
"""
    net = Net(loads(text, "pool.yaml"), "TEST", "pool.yaml", seed=0)
    x = np.random.default_rng(size).normal(size=(2, 20, size, size)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    want = net.blobs["p"].data
    layer = net.layer_by_name("p")
    program = Program(np.float32, 2, 1, 2)
    xb, out = program.buffer(size, size, 32), program.buffer(*want.shape[2:], 32)
    program.to_cl(x, xb)
    program.window(xb, out, pool == "AVE", layer._geometry())
    program.relu(out, 0.25)
    got = np.full(want.shape, np.nan, np.float32)
    program.back(out, got)
    program.call()()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


CIFAR_LIKE = """
layer:
  - {name: d, type: Input, top: data, input_param: {shape: {dim: [BATCH, 3, 16, 16]}}}
  - {name: c1, type: Convolution, bottom: data, top: c1, convolution_param: {num_output: 16, kernel_size: 5, pad: 2,
     weight_filler: {type: gaussian, std: 0.2}, bias_filler: {type: gaussian, std: 0.2}}}
  - {name: p1, type: Pooling, bottom: c1, top: p1, pooling_param: {pool: MAX, kernel_size: 3, stride: 2}}
  - {name: r1, type: ReLU, bottom: p1, top: p1}
  - {name: c2, type: Convolution, bottom: p1, top: c2, convolution_param: {num_output: 20, kernel_size: 3, pad: 1,
     weight_filler: {type: gaussian, std: 0.2}}}
  - {name: r2, type: ReLU, bottom: c2, top: c2}
  - {name: p2, type: Pooling, bottom: c2, top: p2, pooling_param: {pool: AVE, kernel_size: 3, stride: 2}}
  - {name: ip, type: InnerProduct, bottom: p2, top: ip, inner_product_param: {num_output: 4,
     weight_filler: {type: gaussian, std: 0.2}}}
"""


@pytest.mark.parametrize("batch", [1, 2])
def test_pooling_between_convolutions_joins_the_run_at_a_batch_of_one(batch):
    """CIFAR-10 quick's pattern (convolution, MAX pooling, in-place ReLU, convolution, AVE pooling): at a batch of
    one (WINDOW_IMAGES) one run, the pools and the ReLU in it; at two the convolutions are runs of one (not taken)
    and run on their own kernels. The results are the layers' one by one."""
    nets = [Net(loads(CIFAR_LIKE.replace("BATCH", str(batch)), "c.yaml"), "TEST", "c.yaml", seed=0) for _ in range(2)]
    x = np.random.default_rng(3).normal(size=(batch, 3, 16, 16))
    for n in nets:
        n.blobs["data"].data[...] = x
    nets[0].keep_for_backward, nets[0].constant_weights = False, True
    for n in nets:
        n.forward()
    assert len(_runs(nets[0])) == (1 if batch == 1 else 0)
    for name in ("p2", "ip"):
        want = nets[1].blobs[name].data
        np.testing.assert_allclose(nets[0].blobs[name].data, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_under_numba_disable_jit_the_convolutions_run_on_their_own_kernels():
    """NUMBA_DISABLE_JIT (debugging in Python): run_program's atomics have no Python stand-in, so no run is taken and
    the net still gives its layers' results."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np, test_channels_last as t\n"
            "fast, loop = t._nets()\n"
            "fast.forward(); loop.forward()\n"
            "want = loop.blobs['ip'].data\n"
            "np.testing.assert_allclose(fast.blobs['ip'].data, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())\n"
            "print(len(t._runs(fast)))\n")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", YAFFE_DENORMALS="keep",
               PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"
