"""Depthwise convolution kernels: a Convolution with `group` equal to its input channels (MobileNet's 3x3 blocks,
Caffe's `group: C`, PyTorch's `groups=C`), each output channel one input channel's plane filtered by its own kernel.
Direct loops over each output row, vectorized along the row, one (image, channel) plane per thread: no im2col and
no matrix product per group (which, for one channel a group, is a 1 x k by k x plane product: all overhead).

Shapes: x (N, C, H, W), w (C*m, 1, KH, KW) with m output channels per input channel, y (N, C*m, OH, OW).
"""
from __future__ import annotations

from numba import njit, prange


@njit(cache=True, inline="always")
def _cols(j, sw, pw, dw, ow, width):
    """The output columns ox whose input column ox*sw - pw + j*dw lies inside [0, width), and that offset."""
    off = j * dw - pw
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = (width - 1 - off) // sw + 1 if width - 1 - off >= 0 else 0
    return lo, min(ow, hi), off


@njit(parallel=True, cache=True, nogil=True)
def depthwise_forward(x, w, bias, has_bias, sh, sw, ph, pw, dh, dw, y):
    n, c, h, width = x.shape
    o, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    m, kh, kw = o // c, w.shape[2], w.shape[3]
    for task in prange(n * o):
        img, oc = task // o, task % o
        ic = oc // m
        b = bias[oc] if has_bias else y.dtype.type(0)
        for oy in range(oh):
            row = y[img, oc, oy]
            row[:] = b
            for i in range(kh):
                iy = oy * sh - ph + i * dh
                if iy < 0 or iy >= h:
                    continue
                xr = x[img, ic, iy]
                for j in range(kw):
                    lo, hi, off = _cols(j, sw, pw, dw, ow, width)
                    wv = w[oc, 0, i, j]
                    for ox in range(lo, hi):
                        row[ox] += wv * xr[ox * sw + off]


@njit(parallel=True, cache=True, nogil=True)
def depthwise_backward_data(dy, w, sh, sw, ph, pw, dh, dw, dx):
    """dx (N, C, H, W) = the transpose of the forward applied to dy (overwritten)."""
    n, c, h, width = dx.shape
    o, oh, ow = dy.shape[1], dy.shape[2], dy.shape[3]
    m, kh, kw = o // c, w.shape[2], w.shape[3]
    for task in prange(n * c):
        img, ic = task // c, task % c
        dx[img, ic] = 0
        for oc in range(ic * m, (ic + 1) * m):
            for oy in range(oh):
                dr = dy[img, oc, oy]
                for i in range(kh):
                    iy = oy * sh - ph + i * dh
                    if iy < 0 or iy >= h:
                        continue
                    xr = dx[img, ic, iy]
                    for j in range(kw):
                        lo, hi, off = _cols(j, sw, pw, dw, ow, width)
                        wv = w[oc, 0, i, j]
                        for ox in range(lo, hi):
                            xr[ox * sw + off] += wv * dr[ox]


@njit(parallel=True, cache=True, nogil=True)
def depthwise_backward_weights(x, dy, sh, sw, ph, pw, dh, dw, dw_out, db, want_bias):
    """dw_out (C*m, 1, KH, KW) += the weights' gradient, db (C*m,) += the bias's (when want_bias)."""
    n, c, h, width = x.shape
    o, oh, ow = dy.shape[1], dy.shape[2], dy.shape[3]
    m, kh, kw = o // c, dw_out.shape[2], dw_out.shape[3]
    for oc in prange(o):
        ic = oc // m
        for i in range(kh):
            for j in range(kw):
                lo, hi, off = _cols(j, sw, pw, dw, ow, width)
                acc = 0.0
                for img in range(n):
                    for oy in range(oh):
                        iy = oy * sh - ph + i * dh
                        if iy < 0 or iy >= h:
                            continue
                        xr, dr = x[img, ic, iy], dy[img, oc, oy]
                        part = dy.dtype.type(0)
                        for ox in range(lo, hi):
                            part += dr[ox] * xr[ox * sw + off]
                        acc += part
                dw_out[oc, 0, i, j] += acc
        if want_bias:
            acc = 0.0
            for img in range(n):
                acc += dy[img, oc].sum()
            db[oc] += acc
