"""Pooling (MAX, AVE) with Caffe's output size, padding and divisor rules.

Bottom (N, C, H, W) -> top (N, C, PH, PW) with PH = ROUND((H + 2*pad - k) / stride) + 1,
ROUND = ceil (Caffe's default round_mode) or floor; with pad > 0 the last window must
start inside the image plus pad, else PH -= 1. MAX: the first maximum in row-major order
wins. AVE: the divisor counts padded cells, up to H + pad.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, uintp

from netspec.errors import LayerError
from .base import Field, Layer, register
from .conv import spatial_param


@njit(cache=True, nogil=True, inline="always")
def _max_window(xp, hs, he, ws, we, width, best, arg):
    """Caffe's loop over one window: strict >, so the first maximum in row-major order wins."""
    for i in range(hs, he):
        for j in range(ws, we):
            v = xp[i, j]
            better = v > best  # NOTE: selects, not branches: random data mispredicts a branch every few taps
            arg = i * width + j if better else arg
            best = v if better else best
    return best, arg


@njit(cache=True, nogil=True, inline="always")
def _max_2x2(xf, base, s, width, best, arg):
    """The 2x2 window whose top-left is s (within the plane at xf[base:]); flat unsigned indices."""
    for t in (s, s + 1, s + width, s + width + 1):
        v = xf[uintp(base + t)]
        better = v > best
        arg = t if better else arg
        best = v if better else best
    return best, arg


@njit(cache=True, nogil=True, inline="always")
def _max_3x3(xf, base, s, width, best, arg):
    for row in (s, s + width, s + 2 * width):
        for t in (row, row + 1, row + 2):
            v = xf[uintp(base + t)]
            better = v > best
            arg = t if better else arg
            best = v if better else best
    return best, arg


@njit(cache=True, nogil=True, parallel=True)
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, mask):
    """MAX pooling; mask gets the flat index of the first maximum (row-major) within the H x W plane,
    starting from Caffe's -FLT_MAX (so -inf and NaN never win). Unpadded 2x2 and 3x3 windows that lie inside
    the image run unrolled on flat unsigned indices (4x faster); the clipped ones (CEIL's last row and column)
    run the loops. C-contiguous arrays."""
    n_img, chans, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    lowest = x.dtype.type(-3.4028234663852886e38)
    fast = kh == kw and (kh == 2 or kh == 3) and ph == 0 and pw == 0
    oh_in = min(oh, (height - kh) // sh + 1) if fast else 0  # rows and columns of windows inside the image
    ow_in = min(ow, (width - kw) // sw + 1) if fast else 0
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    for plane in prange(n_img * chans):
        n, c = plane // chans, plane % chans
        xp = x[n, c]
        base, out = plane * height * width, plane * oh * ow
        for py in range(oh):
            r = py * sh - ph
            start = 0
            if py < oh_in:
                start = ow_in
                for px in range(ow_in):
                    if kh == 2:
                        best, arg = _max_2x2(xf, base, r * width + px * sw, width, lowest, -1)
                    else:
                        best, arg = _max_3x3(xf, base, r * width + px * sw, width, lowest, -1)
                    yf[uintp(out + py * ow + px)] = best
                    mf[uintp(out + py * ow + px)] = arg
            for px in range(start, ow):
                q = px * sw - pw
                best, arg = _max_window(xp, max(r, 0), min(r + kh, height), max(q, 0), min(q + kw, width), width,
                                        lowest, -1)
                yf[uintp(out + py * ow + px)] = best
                mf[uintp(out + py * ow + px)] = arg


@njit(cache=True, nogil=True, parallel=True)
def max_pool_backward(dy, mask, dx):
    """dx = 0, then each output's diff added at its argmax (flat index within the plane; collisions sum)."""
    n_img, chans, oh, ow = dy.shape
    planes, size = n_img * chans, dx.shape[2] * dx.shape[3]
    dxf, dyf, mf = dx.reshape(planes, size), dy.reshape(planes, oh * ow), mask.reshape(planes, oh * ow)
    for plane in prange(planes):
        d, g, m = dxf[plane], dyf[plane], mf[plane]
        for i in range(size):
            d[i] = 0.0
        for o in range(oh * ow):
            if m[o] >= 0:
                d[m[o]] += g[o]


@njit(cache=True, nogil=True, parallel=True)
def ave_pool_forward(x, kh, kw, sh, sw, ph, pw, y):
    """AVE pooling as Caffe: the window's sum in x's dtype, row-major, divided by the window size counted before
    clipping (padding counts). C-contiguous arrays, flat unsigned indices."""
    n_img, chans, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    xf, yf = x.reshape(-1), y.reshape(-1)
    zero = x.dtype.type(0)
    for plane in prange(n_img * chans):
        base, out = plane * height * width, plane * oh * ow
        for py in range(oh):
            hs = py * sh - ph
            he = min(hs + kh, height + ph)
            for px in range(ow):
                ws = px * sw - pw
                we = min(ws + kw, width + pw)
                size = (he - hs) * (we - ws)  # NOTE: before clipping: padding counts
                acc = zero
                for i in range(max(hs, 0), min(he, height)):
                    row = base + i * width
                    for j in range(max(ws, 0), min(we, width)):
                        acc += xf[uintp(row + j)]
                yf[uintp(out + py * ow + px)] = acc / size


@njit(cache=True, nogil=True, parallel=True)
def ave_pool_backward(dy, kh, kw, sh, sw, ph, pw, dx):
    n_img, chans, height, width = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    for plane in prange(n_img * chans):
        base, out = plane * height * width, plane * oh * ow
        for q in range(height * width):
            dxf[uintp(base + q)] = 0
        for py in range(oh):
            hs = py * sh - ph
            he = min(hs + kh, height + ph)
            for px in range(ow):
                ws = px * sw - pw
                we = min(ws + kw, width + pw)
                g = dyf[uintp(out + py * ow + px)] / ((he - hs) * (we - ws))
                for i in range(max(hs, 0), min(he, height)):
                    row = base + i * width
                    for j in range(max(ws, 0), min(we, width)):
                        dxf[uintp(row + j)] += g


def pooled_size(size, k, pad, stride, round_mode):
    """Caffe's pooled size along one axis (float division, then ceil or floor, then the pad clip)."""
    rounding = math.ceil if round_mode == "CEIL" else math.floor
    out = int(rounding((size + 2 * pad - k) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the image plus pad
    return out


@register("Pooling")
class Pooling(Layer):
    """MAX or AVE pooling. Bottom (N, C, H, W) -> top (N, C, PH, PW) [, MAX's argmax mask, same shape]."""
    backward_reads = ()

    param_block = "pooling_param"
    tops = (1, 2)
    fields = (
        Field("pool", "enum", "MAX", "pooling method", choices=("MAX", "AVE")),
        Field("kernel_size", "int", None, "window size", minimum=1),
        Field("kernel_h", "int", None, "window height", minimum=1),
        Field("kernel_w", "int", None, "window width", minimum=1),
        Field("stride", "int", None, "step between windows (default 1)", minimum=1),
        Field("stride_h", "int", None, "vertical step", minimum=1),
        Field("stride_w", "int", None, "horizontal step", minimum=1),
        Field("pad", "int", None, "implicit padding on each side (default 0)", minimum=0),
        Field("pad_h", "int", None, "vertical padding", minimum=0),
        Field("pad_w", "int", None, "horizontal padding", minimum=0),
        Field("global_pooling", "bool", False, "pool over the whole H x W plane"),
        Field("round_mode", "enum", "CEIL", "rounding of the output size", choices=("CEIL", "FLOOR")),
    )

    def setup(self, bottom_shapes):
        p, blk = self.p, self.param_block
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise LayerError(f"the bottom must be 4-D (N, C, H, W); received shape {list(shape)}", None)
        n, c, h, w = shape
        self.check(plane=(h, w))
        (kh, kw), (ph, pw), (sh, sw) = self.kernel, self.pad, self.stride
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise LayerError(f"kernel {kh}x{kw} is larger than the padded input {h + 2 * ph}x{w + 2 * pw}; "
                             "use a smaller kernel_size", f"{blk}.kernel_size")
        self.out_hw = (pooled_size(h, kh, ph, sh, p.round_mode), pooled_size(w, kw, pw, sw, p.round_mode))
        self._mask = None
        return [(n, c) + self.out_hw] * self.n_tops

    def check(self, plane=None):
        """Kernel, pad and stride, and the mask top, which need no shapes (global pooling's kernel is the plane)."""
        p, blk = self.p, self.param_block
        if p.global_pooling:
            if p.kernel_size is not None or p.kernel_h is not None:
                raise LayerError("global_pooling takes the whole plane as the window; remove kernel_size",
                                 f"{blk}.kernel_size")
            if plane is None:
                return
            self.kernel = tuple(plane)
        else:
            self.kernel = spatial_param(p, blk, "kernel", None)
        self.pad = spatial_param(p, blk, "pad", 0)
        self.stride = spatial_param(p, blk, "stride", 1)
        (kh, kw), (ph, pw), (sh, sw) = self.kernel, self.pad, self.stride
        if sh > kh or sw > kw:
            raise LayerError(f"stride {sh}x{sw} is larger than the kernel {kh}x{kw}, so some inputs are never "
                             "pooled (and AVE windows can lie wholly in the padding); use stride <= kernel_size",
                             f"{blk}.stride" if p.stride is not None else f"{blk}.stride_h")
        if ph >= kh or pw >= kw:
            raise LayerError(f"pad {ph}x{pw} must be smaller than the kernel {kh}x{kw}; lower pad",
                             f"{blk}.pad")
        if self.n_tops == 2 and p.pool != "MAX":
            raise LayerError(f"a second top (the argmax mask) needs pool: MAX; received pool: {p.pool}",
                             f"{blk}.pool")

    def _geometry(self):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        return kh, kw, sh, sw, ph, pw

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.p.pool == "MAX":
            if self._mask is None or self._mask.shape != y.shape:
                self._mask = np.empty(y.shape, np.int32)
            max_pool_forward(x, *self._geometry(), y, self._mask)
            if len(top) == 2:  # Caffe's mask top: the flat index of the maximum within the H x W plane
                top[1].data[...] = self._mask
        else:
            ave_pool_forward(x, *self._geometry(), y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.p.pool == "MAX":
            max_pool_backward(top[0].diff, self._mask, bottom[0].diff)
        else:
            ave_pool_backward(top[0].diff, *self._geometry(), bottom[0].diff)
