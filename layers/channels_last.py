"""Forward-only convolutions on channels-last blobs, as ONNX Runtime runs a ResNet (its NCHWc layout).

A forward-only net (`run.py predict`, `run.py test`, the trainer's test nets) whose convolutions follow each other
(ResNet's blocks) keeps their tops channels-last between them: a blob is (N, H + 2B, W + 2B, Cs) with a border of
B zeros (the padding of the convolutions reading it, written once) and Cs channels (rounded up to whole vectors).
A convolution is then one kernel with no copy: MR output pixels by NV vectors of filters a tile (`simd.tile_cl`),
each tap one broadcast value of the bottom a pixel and NV vectors of the (folded) weights, every lane a filter (a
7x7 plane wastes none, where rows of 7 filled 7 of 16 lanes), at any stride, the SUM's other bottom and the ReLU
applied in registers. netspec/net.py builds the chain (`ChannelsLastChain`) and converts the blobs that layers
outside it read.

    to_channels_last(x (N, C, H, W), buf (N, H+2B, W+2B, Cs), border)
    conv_cl(...)                        one convolution between two such blobs
    global_ave_cl(buf, border, y (N, C, 1, 1)), from_channels_last(buf, border, y (N, C, H, W))
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .simd import CL_TILES, VECTOR_BYTES, tile_cl1, tile_cl2, tile_cl4


@njit(cache=True, nogil=True, parallel=True)
def to_channels_last(x, buf, border):
    """x (N, C, H, W) -> the interior of buf (N, H+2B, W+2B, Cs): buf[n, B+i, B+j, c] = x[n, c, i, j]."""
    n_img, chans, height, width = x.shape
    cs, row = buf.shape[3], buf.shape[2]
    for p in prange(n_img * height):
        n, i = p // height, p % height
        for c in range(chans):
            for j in range(width):
                buf[n, border + i, border + j, c] = x[n, c, i, j]


@njit(cache=True, nogil=True, parallel=True)
def from_channels_last(buf, border, y):
    """The interior of buf (N, H+2B, W+2B, Cs) -> y (N, C, H, W)."""
    n_img, chans, height, width = y.shape
    for p in prange(n_img * chans):
        n, c = p // chans, p % chans
        for i in range(height):
            for j in range(width):
                y[n, c, i, j] = buf[n, border + i, border + j, c]


@njit(cache=True, nogil=True)
def global_ave_cl(buf, border, y):
    """Global AVE pooling of the interior of buf (N, H+2B, W+2B, Cs) -> y (N, C, 1, 1), each plane summed in
    Caffe's order (rows, then columns) and divided by its size."""
    n_img, chans = y.shape[0], y.shape[1]
    height, width = buf.shape[1] - 2 * border, buf.shape[2] - 2 * border
    acc, div = np.zeros(buf.shape[3], buf.dtype), y.dtype.type(height * width)
    for n in range(n_img):
        acc[:] = 0
        for i in range(height):
            for j in range(width):
                acc += buf[n, border + i, border + j]
        for c in range(chans):
            y[n, c, 0, 0] = acc[c] / div


@njit(cache=True, nogil=True, parallel=True)
def conv_cl(x, qin, qout, offs, w, bias, out, res, added, ca, cb, relu, slope, kind):
    """One convolution between channels-last blobs (flat per image): x (N, Lx) the bottom, out (N, Lo) the top
    and res (N, Lo, or empty) the SUM's other bottom laid out as the top; qin, qout (P,) each output pixel's
    offset in the bottom (its window's first tap) and in the top, P a multiple of the tile's pixels (the last
    repeated); offs (K,) the taps' offsets; w (K, Opad), bias (Opad,): the (folded) weights, Opad filters rounded
    up to the tile's vectors. out[n, qout[p] + o] = epilogue(bias[o] + sum_k w[k, o] * x[n, qin[p] + offs[k]]).
    kind: the tile (0, 1, 2: simd.CL_TILES' 1, 2 or 4 vectors)."""
    n_img = x.shape[0]
    mr, nv = CL_TILES[0]
    if kind == 1:
        mr, nv = CL_TILES[1]
    elif kind == 2:
        mr, nv = CL_TILES[2]
    opad = w.shape[1]
    step = nv * (VECTOR_BYTES // x.itemsize)
    tiles, groups = qin.shape[0] // mr, opad // step
    xf, wf, of, rf = x.reshape(-1), w.reshape(-1), out.reshape(-1), res.reshape(-1)
    lx, lo = x.shape[1], out.shape[1]
    for task in prange(groups * n_img * tiles):  # (a thread's tasks share a group of filters: its weights)
        g, rest = task // (n_img * tiles), task % (n_img * tiles)
        n, t = rest // tiles, rest % tiles
        if kind == 0:
            tile_cl1(xf, n * lx, qin, qout, t * mr, offs, wf, g * step, opad, bias, of, n * lo, rf, added, ca, cb,
                     relu, slope)
        elif kind == 1:
            tile_cl2(xf, n * lx, qin, qout, t * mr, offs, wf, g * step, opad, bias, of, n * lo, rf, added, ca, cb,
                     relu, slope)
        else:
            tile_cl4(xf, n * lx, qin, qout, t * mr, offs, wf, g * step, opad, bias, of, n * lo, rf, added, ca, cb,
                     relu, slope)


def tile_kind(out_c, dtype) -> int:
    """The tile for out_c filters: 4 vectors where they fill them, else 2, else 1 (CL_TILES' index)."""
    vectors = -(-out_c // (VECTOR_BYTES // np.dtype(dtype).itemsize))
    return 2 if vectors % 4 == 0 else 1 if vectors % 2 == 0 else 0


class ConvPlan:
    """A convolution's constant part between channels-last blobs: the pixel and tap offsets and the packed
    weights. bottom (H, W, C, B, Cs): the bottom's plane, channels, border and channel stride; top likewise;
    weights (O, C, KH, KW), bias (O,); stride, pad (pairs)."""

    def __init__(self, bottom, top, weights, bias, stride, pad, dtype):
        h, w, c, bb, cs = bottom
        oh, ow, o, tb, ocs = top
        kh, kw = weights.shape[2:]
        self.kind = tile_kind(o, dtype)
        mr, nv = CL_TILES[self.kind]
        step = nv * (VECTOR_BYTES // np.dtype(dtype).itemsize)
        opad = -(-o // step) * step
        assert ocs >= opad and bb >= max(pad), "channels-last blob too small for the convolution"
        row_in, row_out = w + 2 * bb, ow + 2 * tb
        ys, xs = np.divmod(np.arange(oh * ow), ow)
        qin = ((ys * stride[0] - pad[0] + bb) * row_in + xs * stride[1] - pad[1] + bb) * cs
        qout = ((ys + tb) * row_out + xs + tb) * ocs
        extra = -len(qin) % mr  # (the last pixel again: a tile always whole)
        self.qin = np.concatenate([qin, np.full(extra, qin[-1])]).astype(np.int64)
        self.qout = np.concatenate([qout, np.full(extra, qout[-1])]).astype(np.int64)
        di, dj, ch = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(c), indexing="ij")
        self.offs = ((di * row_in + dj) * cs + ch).reshape(-1).astype(np.int64)  # taps (i, j, c), c fastest
        self.w = np.zeros((kh * kw * c, opad), dtype)
        self.w[:, :o] = weights.transpose(2, 3, 1, 0).reshape(kh * kw * c, o)
        self.bias = np.zeros(opad, dtype)
        self.bias[:o] = bias

    def run(self, x, out, res=None, ca=1.0, cb=1.0, relu=False, slope=0.0):
        """x, out, res: the blobs' buffers (N, ...) flat per image."""
        added = res is not None
        conv_cl(x, self.qin, self.qout, self.offs, self.w, self.bias, out, res if added else out[:0], added, ca, cb,
                relu, slope, self.kind)
