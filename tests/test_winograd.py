"""Winograd's F(2x2, 5x5), F(4x4, 3x3) and F(2x2, 3x3) (layers/winograd.py): the training convolutions' forward,
data gradient and weight gradient against float64 NumPy sums and against the im2col path, and which convolutions
take it."""
import numpy as np
import pytest

import layers.conv as conv
from layers import winograd as wg
from netspec.loader import loads
from netspec.net import Net

# (images, channels, height, width, filters, pad, kernel): CIFAR-10 quick's conv2 and conv3, odd planes and filter
# counts, LeNet's unpadded 5x5, Caffe's largest pad for a 5x5 (4), and a batch of several blocks; ResNet-20's 3x3s
# (32x32, 16x16, 8x8 planes: whole 4x4 blocks), planes cut by the blocks, 3x3s of pad 0 and 2
CASES = [(3, 32, 16, 16, 32, 2, 5), (5, 32, 8, 8, 64, 2, 5), (2, 33, 7, 9, 40, 2, 5), (4, 20, 12, 12, 50, 0, 5),
         (3, 40, 8, 6, 20, 4, 5), (2, 7, 9, 9, 5, 1, 5), (40, 32, 8, 8, 48, 3, 5),
         (2, 16, 32, 32, 16, 1, 3), (3, 32, 16, 16, 32, 1, 3), (5, 64, 8, 8, 64, 1, 3), (2, 33, 7, 9, 40, 1, 3),
         (3, 20, 10, 10, 24, 0, 3), (2, 20, 9, 9, 24, 2, 3), (40, 32, 8, 8, 48, 1, 3)]


def reference(x, w, pad, dy):
    """(top without bias, bottom diff, weight diff) in float64."""
    n, c, h, width = x.shape
    k = w.shape[2]
    oh, ow = h + 2 * pad - k + 1, width + 2 * pad - k + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y, dxp, dw = np.zeros((n, w.shape[0], oh, ow)), np.zeros_like(xp), np.zeros(w.shape)
    for i in range(k):
        for j in range(k):
            y += np.einsum("nchw,oc->nohw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
            dw[:, :, i, j] = np.einsum("nchw,nohw->oc", xp[:, :, i:i + oh, j:j + ow], dy)
            dxp[:, :, i:i + oh, j:j + ow] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j].astype(np.float64))
    return y, dxp[:, :, pad:pad + h, pad:pad + width], dw


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_the_winograd_passes_match_float64_sums(case, threads):
    """F(2x2, 5x5) for a 5x5, F(2x2, 3x3) and F(4x4, 3x3) for a 3x3: every pass within 1e-5 of the float64 sums
    (relative to their largest), F(2x2, 3x3)'s within 1e-6 (its transforms of +-1: about the direct sums' 3e-7)."""
    for al in (6,) if case[-1] == 5 else (4, 6):
        winograd_passes(case, threads, al, 1e-6 if al == 4 else 1e-5)


def winograd_passes(case, threads, al, tol):
    n, c, h, width, o, pad, k = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, width)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    oh, ow = h + 2 * pad - k + 1, width + 2 * pad - k + 1
    dy = rng.standard_normal((n, o, oh, ow)).astype(np.float32)
    y_ref, dx_ref, dw_ref = reference(x, w, pad, dy)
    y = np.full((n, o, oh, ow), np.nan, np.float32)
    wg.wino_forward(x, w, b, pad, y, wg.WinoPlan(x.shape, o, pad, threads, k, al))
    assert np.abs(y - b[None, :, None, None] - y_ref).max() <= tol * np.abs(y_ref).max()
    relu = np.full_like(y, np.nan)  # with a leaky ReLU above folded in, and no bias
    wg.wino_forward(x, w, None, pad, relu, wg.WinoPlan(x.shape, o, pad, threads, k, al), True, 0.25)
    assert np.abs(relu - np.where(y_ref > 0, y_ref, 0.25 * y_ref)).max() <= tol * np.abs(y_ref).max()
    dx = np.full(x.shape, np.nan, np.float32)  # overwritten
    wg.wino_data(dy, w, pad, dx, wg.WinoPlan(dy.shape, c, k - 1 - pad, threads, k, al))
    assert np.abs(dx - dx_ref).max() <= tol * np.abs(dx_ref).max()
    dw = np.full(w.shape, 0.5, np.float32)  # accumulated
    plan = wg.WinoBack(x.shape, o, pad, threads, k, al)
    assert plan.parts == min(threads, -(-n // plan.block))
    wg.wino_weight_diff(x, dy, pad, dw, plan)
    assert np.abs(dw - 0.5 - dw_ref).max() <= tol * np.abs(dw_ref).max()


def layer_pass(shape, out_c, pad, dtype, winograd, monkeypatch, bias=True, k=5):
    """Top, bottom diff and param diffs of a Convolution's forward and backward, Winograd on or off."""
    monkeypatch.setattr(conv, "WINOGRAD", winograd)
    text = f"""
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: {list(shape)}}}}}}}
  - {{name: c, type: Convolution, bottom: data, top: c, convolution_param: {{num_output: {out_c}, kernel_size: {k},
      pad: {pad}, bias_term: {str(bias).lower()}, weight_filler: {{type: gaussian, std: 0.1}},
      bias_filler: {{type: gaussian}}}}}}
  - {{name: loss, type: EuclideanLoss, bottom: [c, c], top: loss}}
"""
    net = Net(loads(text), "TRAIN", seed=1, dtype=dtype)
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=shape)
    layer = net.layers[1]
    layer.forward(net.bottom_vecs[1], net.top_vecs[1])
    path = layer.path_taken
    net.top_vecs[1][0].diff[...] = np.random.default_rng(1).normal(size=net.top_vecs[1][0].diff.shape)
    for blob in layer.blobs:
        blob.diff[...] = 0.5  # parameter gradients accumulate
    net.blobs["data"].diff[...] = np.nan  # the bottom diff is overwritten
    layer.backward(net.top_vecs[1], [True], net.bottom_vecs[1])
    plans = getattr(layer, "_wino_plans", None) if winograd else None
    if plans:  # (forward, data gradient, weight gradient): the points of each, 0 where another kernel ran it
        path = (path, tuple(p.al if p else 0 for p in plans[1:]))
    return path, [net.blobs["c"].data.copy(), net.blobs["data"].diff.copy()] + [b.diff.copy() for b in layer.blobs]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape, out_c, pad, k", [((4, 32, 16, 16), 32, 2, 5), ((3, 32, 8, 8), 64, 2, 5),
                                                  ((2, 32, 9, 7), 33, 1, 5), ((2, 48, 12, 12), 32, 0, 5),
                                                  ((3, 20, 12, 12), 50, 0, 5),  # (LeNet's conv2: the direct data pass)
                                                  ((4, 16, 32, 32), 16, 1, 3), ((3, 64, 8, 8), 64, 1, 3),
                                                  ((2, 32, 14, 14), 40, 1, 3), ((2, 32, 9, 8), 16, 0, 3)])
def test_a_convolution_layer_on_winograd_gives_what_im2col_gives(shape, out_c, pad, k, bias, monkeypatch):
    monkeypatch.setattr(conv, "DIRECT", False)  # (the other side: im2col)
    path, im2col = layer_pass(shape, out_c, pad, np.float32, False, monkeypatch, bias, k)
    assert path == "im2col"
    monkeypatch.setattr(conv, "DIRECT", True)  # (a pad under WINO_DATA_PAD: the direct kernels' data gradient)
    path, wino = layer_pass(shape, out_c, pad, np.float32, True, monkeypatch, bias, k)
    data = 6 if pad >= conv.WINO_DATA_PAD[k] else 0
    if k == 5:
        assert path == ("Winograd F(2x2, 5x5)", (6, data, 6))
    elif min(shape[1], out_c) >= conv.WINO3_FORWARD:  # a 3x3: F(2x2, 3x3) forward where both sides have channels
        assert path == ("Winograd F(2x2, 3x3)", (4, data, 6))  # enough, F(4x4, 3x3) for the gradients
    else:
        assert path == ("direct", (0, data, 6))
    for name, a, b in zip(["top", "bottom diff", "weight diff", "bias diff"], im2col, wino):
        assert np.abs(a - b).max() <= 2e-5 * np.abs(a).max(), name


@pytest.mark.parametrize("shape, out_c, kernel, dtype, taken", [
    ((2, 32, 16, 16), 32, "kernel_size: 5, pad: 2", np.float32, True),
    ((2, 32, 16, 16), 32, "kernel_size: 5, pad: 2", np.float64, False),      # (float32 only)
    ((2, 20, 12, 12), 50, "kernel_size: 5", np.float32, True),               # LeNet's conv2
    ((2, 32, 16, 16), 16, "kernel_size: 5, pad: 2", np.float32, False),      # too few channels in all
    ((2, 12, 16, 16), 64, "kernel_size: 5, pad: 2", np.float32, False),      # too few on one side
    ((2, 32, 16, 16), 32, "kernel_size: 5, pad: 2, stride: 2", np.float32, False),
    ((2, 32, 16, 16), 32, "kernel_size: 3, pad: 1", np.float32, True),       # F(2x2, 3x3) / F(4x4, 3x3)
    ((2, 16, 32, 32), 16, "kernel_size: 3, pad: 1", np.float32, True),       # ResNet-20's first stage
    ((2, 3, 32, 32), 16, "kernel_size: 3, pad: 1", np.float32, False),       # an RGB bottom: too few channels
    ((2, 8, 32, 32), 24, "kernel_size: 3, pad: 1", np.float32, False),       # half a vector of channels
    ((2, 20, 4, 4), 50, "kernel_size: 3, pad: 1", np.float32, False),        # lenet_digits' conv2: a 4x4 plane
    ((2, 16, 32, 32), 32, "kernel_size: 3, pad: 1, stride: 2", np.float32, False),
    ((2, 16, 32, 32), 16, "kernel_size: 3, pad: 1", np.float64, False),
    ((2, 16, 32, 32), 16, "kernel_size: 3, pad: 1, group: 2", np.float32, False),
    ((2, 32, 16, 16), 32, "kernel_size: 5, pad: 2, group: 2", np.float32, False),
    ((2, 32, 16, 16), 32, "kernel_size: 5, pad: 4, dilation: 2", np.float32, False),
])
def test_winograd_serves_float32_5x5s_and_3x3s_of_stride_1_with_channels_enough(shape, out_c, kernel, dtype, taken):
    text = f"""
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: {list(shape)}}}}}}}
  - {{name: c, type: Convolution, bottom: data, top: c, convolution_param: {{num_output: {out_c}, {kernel}}}}}
"""
    net = Net(loads(text), "TRAIN", seed=1, dtype=dtype)
    net.forward()
    assert bool(getattr(net.layers[1], "_wino_plans", None)) == taken
    if "kernel_size: 3" in kernel:  # a TEST net's 3x3s stay on the direct kernels (forward-only: channels-last runs)
        net = Net(loads(text), "TEST", seed=1, dtype=dtype)
        net.forward()
        assert not net.layers[1].path_taken.startswith("Winograd") and not getattr(net.layers[1], "_wino_plans", None)


def test_under_numba_disable_jit_the_winograd_passes_run_as_python():
    """NUMBA_DISABLE_JIT (debugging in Python): the transforms' and tiles' Python versions (simd._py_linear,
    _py_tile_cl, _py_transpose_tile) give the same passes, in a fresh process."""
    import os
    import subprocess
    import sys
    code = ("import functools, layers.simd as simd, test_winograd as t\n"
            "assert isinstance(simd.wino5_in, functools.partial)\n"
            "for case in ((2, 7, 9, 9, 5, 1, 5), (1, 9, 6, 8, 10, 2, 5), (2, 20, 12, 12, 50, 0, 5),\n"
            "             (1, 9, 6, 7, 10, 1, 3), (2, 5, 5, 5, 3, 0, 3)):\n"
            "    t.test_the_winograd_passes_match_float64_sums(case, 1)\n"
            "print('ok')\n")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", YAFFE_DENORMALS="keep",
               PYTHONPATH=os.pathsep.join([here, os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
