"""Pooling (MAX, AVE, STOCHASTIC) and spatial pyramid pooling (SPP) with Caffe's output size, padding and
divisor rules.

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
from .cpu import spread
from .simd import VECTOR_BYTES, max_row2s2, max_row3s2


@njit(cache=True, nogil=True, inline="always")
def _max_window(xf, base, hs, he, ws, we, width, best, arg):
    """Caffe's loop over one window of the plane at xf[base:]: strict >, so the first maximum in row-major order
    wins. Flat unsigned indices (2-D signed ones made the clipped windows of CEIL's last row and column cost as
    much as all the others)."""
    for i in range(hs, he):
        for j in range(ws, we):
            v = xf[uintp(base + i * width + j)]
            better = v > best  # NOTE: selects, not branches: random data mispredicts a branch every few taps
            arg = i * width + j if better else arg
            best = v if better else best
    return best, arg


@njit(cache=True, nogil=True, inline="always")
def _max_windows(xf, base, r, q0, start, stop, kh, kw, sw, height, width, out, yf, mf, lowest):
    """Windows start..stop-1 of one row (top row r, first column q0 + px*sw) by the loops, clipped to the image."""
    for px in range(start, stop):
        q = q0 + px * sw
        best, arg = _max_window(xf, base, max(r, 0), min(r + kh, height), max(q, 0), min(q + kw, width), width,
                                lowest, -1)
        yf[uintp(out + px)] = best
        mf[uintp(out + px)] = arg


@njit(cache=True, nogil=True, inline="always")
def _ave_row_stride2(xf, k, r, width, out, n, yf, zero):
    """n AVE windows k x k (2 or 3) of stride 2 inside the image along one row, the first at xf[r]: each sum in
    Caffe's order (row-major, in x's dtype), vectorized along the row by LLVM; divided in x's dtype."""
    size = xf.dtype.type(k * k)
    if k == 2:
        for px in range(n):
            s = r + px * 2
            acc = zero + xf[uintp(s)]
            acc += xf[uintp(s + 1)]
            acc += xf[uintp(s + width)]
            acc += xf[uintp(s + width + 1)]
            yf[uintp(out + px)] = acc / size
        return
    for px in range(n):
        s = r + px * 2
        acc = zero + xf[uintp(s)]
        acc += xf[uintp(s + 1)]
        acc += xf[uintp(s + 2)]
        acc += xf[uintp(s + width)]
        acc += xf[uintp(s + width + 1)]
        acc += xf[uintp(s + width + 2)]
        acc += xf[uintp(s + 2 * width)]
        acc += xf[uintp(s + 2 * width + 1)]
        acc += xf[uintp(s + 2 * width + 2)]
        yf[uintp(out + px)] = acc / size


@njit(cache=True, nogil=True, parallel=True)
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, mask):
    """MAX pooling; mask gets the flat index of the first maximum (row-major) within the H x W plane,
    starting from Caffe's -FLT_MAX (so -inf and NaN never win). C-contiguous arrays, flat unsigned indices.
    Unpadded 2x2 and 3x3 windows of stride 2 have kernels of their own (max_pool_2x2s2, max_pool_3x3s2), so that
    a net compiles only the ones it uses (each vectorized body costs its kernel about a second of compiling)."""
    n_img, chans, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    lowest = x.dtype.type(-3.4028234663852886e38)
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    for plane in prange(n_img * chans):
        base, out = plane * height * width, plane * oh * ow
        for py in range(oh):
            _max_windows(xf, base, py * sh - ph, -pw, 0, ow, kh, kw, sw, height, width, out + py * ow, yf, mf,
                         lowest)


@njit(cache=True, nogil=True, parallel=True)
def max_pool_2x2s2(x, y, mask):
    """max_pool_forward for unpadded 2x2 windows of stride 2: those inside the image a vector's lanes at a time
    (simd.max_row2s2: the taps by shuffles of two loaded vectors a window row), CEIL's clipped last row and column
    by the loops."""
    n_img, chans, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    lowest = x.dtype.type(-3.4028234663852886e38)
    oh_in, ow_in = min(oh, height // 2), min(ow, width // 2)  # (size - 2) // 2 + 1
    group = VECTOR_BYTES // x.itemsize
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    for plane in prange(n_img * chans):
        base, out = plane * height * width, plane * oh * ow
        for py in range(oh):
            start = 0
            if py < oh_in:
                for k0 in range(0, ow_in, group):  # (simd.max_row2s2, a vector's lanes of windows a call)
                    r = base + 2 * py * width + 2 * k0
                    max_row2s2(xf, r, r - base, width, yf, out + py * ow + k0, mf, min(group, ow_in - k0), lowest)
                start = ow_in
            _max_windows(xf, base, 2 * py, 0, start, ow, 2, 2, 2, height, width, out + py * ow, yf, mf, lowest)


@njit(cache=True, nogil=True, parallel=True)
def max_pool_3x3s2(x, y, mask):
    """max_pool_2x2s2 for 3x3 windows (CIFAR-10 quick's, AlexNet's): the windows inside the image in groups of a
    vector's lanes less one (simd.max_row3s2: the taps by shuffles of two loaded vectors a window row; the loop over
    windows it replaced ran CIFAR-10 quick's pool1, 15 windows a row, at 1.30 ms a slice of 50)."""
    n_img, chans, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    lowest = x.dtype.type(-3.4028234663852886e38)
    oh_in, ow_in = min(oh, (height - 1) // 2), min(ow, (width - 1) // 2)  # (size - 3) // 2 + 1
    group = VECTOR_BYTES // x.itemsize - 1
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    for plane in prange(n_img * chans):
        base, out = plane * height * width, plane * oh * ow
        for py in range(oh):
            start = 0
            if py < oh_in:
                for k0 in range(0, ow_in, group):
                    r = base + 2 * py * width + 2 * k0
                    max_row3s2(xf, r, r - base, width, yf, out + py * ow + k0, mf, min(group, ow_in - k0), lowest)
                start = ow_in
            _max_windows(xf, base, 2 * py, 0, start, ow, 3, 3, 2, height, width, out + py * ow, yf, mf, lowest)


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
    fast = kh == kw and (kh == 2 or kh == 3) and sh == 2 and sw == 2 and ph == 0 and pw == 0
    oh_in = min(oh, (height - kh) // 2 + 1) if fast else 0  # rows and columns of windows inside the image
    ow_in = min(ow, (width - kw) // 2 + 1) if fast else 0
    for plane in prange(n_img * chans):
        base, out = plane * height * width, plane * oh * ow
        for py in range(oh):
            hs = py * sh - ph
            he = min(hs + kh, height + ph)
            start = 0
            if py < oh_in:
                start = ow_in
                _ave_row_stride2(xf, kh, base + hs * width, width, out + py * ow, ow_in, yf, zero)
            for px in range(start, ow):
                ws = px * sw - pw
                we = min(ws + kw, width + pw)
                size = x.dtype.type((he - hs) * (we - ws))  # NOTE: before clipping: padding counts (in x's dtype, as
                # Caffe divides: by an int, Numba divided in float64, exact too but half as many lanes)
                acc = zero
                for i in range(max(hs, 0), min(he, height)):
                    row = base + i * width
                    for j in range(max(ws, 0), min(we, width)):
                        acc += xf[uintp(row + j)]
                yf[uintp(out + py * ow + px)] = acc / size


def _ave_pool_global(x, y):
    """AVE pooling of a whole unpadded plane (global_pooling): each plane's sum in Caffe's order (row-major from
    zero, in x's dtype) divided by its size; eight planes summed side by side (one plane's chain of adds waits
    the add's latency each value: resnet_fashion's 64 planes of 7x7 at batch 32 took 72 us through
    ave_pool_forward, ~0.7 ns a value). x (N, C, H, W) -> y (N, C, 1, 1)."""
    planes, size = x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]
    xf, yf = x.reshape(planes, size), y.reshape(-1)
    zero, div = x.dtype.type(0), x.dtype.type(size)
    for g in prange((planes + 7) // 8):
        p0 = g * 8
        if p0 + 8 <= planes:
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
            for j in range(size):
                a0 += xf[p0, j]
                a1 += xf[p0 + 1, j]
                a2 += xf[p0 + 2, j]
                a3 += xf[p0 + 3, j]
                a4 += xf[p0 + 4, j]
                a5 += xf[p0 + 5, j]
                a6 += xf[p0 + 6, j]
                a7 += xf[p0 + 7, j]
            yf[p0], yf[p0 + 1], yf[p0 + 2], yf[p0 + 3] = a0 / div, a1 / div, a2 / div, a3 / div
            yf[p0 + 4], yf[p0 + 5], yf[p0 + 6], yf[p0 + 7] = a4 / div, a5 / div, a6 / div, a7 / div
        else:
            for p in range(p0, planes):
                acc = zero
                for j in range(size):
                    acc += xf[p, j]
                yf[p] = acc / div


ave_pool_global = spread(_ave_pool_global, 1 << 15)


def _ave_pool_global_backward(dy, dx):
    """ave_pool_global's gradient: every value of a plane gets its diff / the plane's size (Caffe's 0 + that).
    dy (N, C, 1, 1) -> dx (N, C, H, W)."""
    planes, size = dx.shape[0] * dx.shape[1], dx.shape[2] * dx.shape[3]
    dxf, dyf = dx.reshape(planes, size), dy.reshape(-1)
    div = dx.dtype.type(size)
    for p in prange(planes):
        g = dyf[p] / div
        for j in range(size):
            dxf[p, j] = g


ave_pool_global_backward = spread(_ave_pool_global_backward, 1 << 15)


def _whole_plane(x, kh, kw, ph, pw):
    """The window is the whole unpadded plane (global_pooling, or a kernel the plane's size): one output a plane."""
    return kh == x.shape[2] and kw == x.shape[3] and ph == 0 and pw == 0


@njit(cache=True, nogil=True, parallel=True)
def ave_pool_backward(dy, kh, kw, sh, sw, ph, pw, dx):
    """dx = 0, then each window's diff / its size (Caffe's, padding counted) added to its inputs. Unpadded 2x2 and
    3x3 windows of stride 2 inside the image: each row of windows as loops over its columns, one a tap column (the
    third column's, then the even and odd inputs together), which vectorize (the loops over each window's taps
    ran 3.5 cycles an add: CIFAR-10 quick's pool2 backward 2.5x its forward); the sums in Caffe's order."""
    n_img, chans, height, width = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    dyf, dxf = dy.reshape(-1), dx.reshape(-1)
    fast = kh == kw and (kh == 2 or kh == 3) and sh == 2 and sw == 2 and ph == 0 and pw == 0
    oh_in = min(oh, (height - kh) // 2 + 1) if fast else 0  # rows and columns of windows inside the image
    ow_in = min(ow, (width - kw) // 2 + 1) if fast else 0
    size = dy.dtype.type(kh * kw)
    for plane in prange(n_img * chans):
        base, out = plane * height * width, plane * oh * ow
        for q in range(height * width):
            dxf[uintp(base + q)] = 0
        for py in range(oh):
            hs = py * sh - ph
            he = min(hs + kh, height + ph)
            start = 0
            if py < oh_in:
                start, g0 = ow_in, out + py * ow
                for i in range(kh):
                    row = base + (hs + i) * width
                    if kh == 3:  # (first: an even column gets window px - 1's share before px's, as in Caffe)
                        for px in range(ow_in):
                            dxf[uintp(row + 2 * px + 2)] += dyf[uintp(g0 + px)] / size
                    for px in range(ow_in):
                        g = dyf[uintp(g0 + px)] / size
                        dxf[uintp(row + 2 * px)] += g
                        dxf[uintp(row + 2 * px + 1)] += g
            for px in range(start, ow):
                ws = px * sw - pw
                we = min(ws + kw, width + pw)
                g = dyf[uintp(out + py * ow + px)] / dy.dtype.type((he - hs) * (we - ws))  # (Caffe's, in x's dtype)
                for i in range(max(hs, 0), min(he, height)):
                    row = base + i * width
                    for j in range(max(ws, 0), min(we, width)):
                        dxf[uintp(row + j)] += g


@njit(cache=True, nogil=True, parallel=True)
def sto_pool_forward_train(x, kh, kw, sh, sw, u, y, mask):
    """STOCHASTIC pooling in TRAIN (Caffe's StoPoolForwardTrain): in each window (starting at py*sh, px*sw:
    Caffe ignores pad here) pick the first value where the running sum reaches u * the window's sum, so a value
    is picked with probability value / sum (inputs must be >= 0, e.g. after a ReLU); mask gets its flat index
    within the plane. u (N, C, PH, PW) uniform in [0, 1)."""
    n_img, chans, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(n_img * chans):
        n, c = plane // chans, plane % chans
        xp = x[n, c]
        for py in range(oh):
            hs, he = py * sh, min(py * sh + kh, height)
            for px in range(ow):
                ws, we = px * sw, min(px * sw + kw, width)
                total = 0.0
                for i in range(hs, he):
                    for j in range(ws, we):
                        total += xp[i, j]
                thres = u[n, c, py, px] * total
                y[n, c, py, px], mask[n, c, py, px] = 0.0, -1  # NOTE: no pick (negative inputs): 0, no gradient
                acc, found = 0.0, False
                for i in range(hs, he):
                    for j in range(ws, we):
                        acc += xp[i, j]
                        if acc >= thres and not found:
                            y[n, c, py, px], mask[n, c, py, px], found = xp[i, j], i * width + j, True


@njit(cache=True, nogil=True, inline="always")
def _weighted_sums(xp, hs, he, ws, we):
    """(FLT_MIN + sum(x), sum(x^2)) over one window, as Caffe's StoPoolForwardTest sums them."""
    total, squares = 1.1754943508222875e-38, 0.0
    for i in range(hs, he):
        for j in range(ws, we):
            total += xp[i, j]
            squares += xp[i, j] * xp[i, j]
    return total, squares


@njit(cache=True, nogil=True, parallel=True)
def sto_pool_forward_test(x, kh, kw, sh, sw, y):
    """STOCHASTIC pooling in TEST (Caffe's StoPoolForwardTest): the probability-weighted mean of the window,
    sum(x^2) / sum(x), the sum starting at FLT_MIN (a window of zeros gives 0)."""
    n_img, chans, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(n_img * chans):
        n, c = plane // chans, plane % chans
        xp = x[n, c]
        for py in range(oh):
            hs, he = py * sh, min(py * sh + kh, height)
            for px in range(ow):
                total, squares = _weighted_sums(xp, hs, he, px * sw, min(px * sw + kw, width))
                y[n, c, py, px] = squares / total if total > 0 else 0.0


@njit(cache=True, nogil=True, parallel=True)
def sto_pool_backward_test(x, dy, kh, kw, sh, sw, dx):
    """The gradient of TEST's sum(x^2) / sum(x): (2 x_i S - Q) / S^2 per window, summed (Caffe has none: its
    backward reuses TRAIN's picks; this is the true one, for force_backward in TEST)."""
    n_img, chans, height, width = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for plane in prange(n_img * chans):
        n, c = plane // chans, plane % chans
        xp, dp = x[n, c], dx[n, c]
        for i in range(height):
            for j in range(width):
                dp[i, j] = 0.0
        for py in range(oh):
            hs, he = py * sh, min(py * sh + kh, height)
            for px in range(ow):
                ws, we = px * sw, min(px * sw + kw, width)
                total, squares = _weighted_sums(xp, hs, he, ws, we)
                if total <= 0:
                    continue
                g = dy[n, c, py, px] / (total * total)
                for i in range(hs, he):
                    for j in range(ws, we):
                        dp[i, j] += g * (2 * xp[i, j] * total - squares)


def pooled_size(size, k, pad, stride, round_mode):
    """Caffe's pooled size along one axis (float division, then ceil or floor, then the pad clip)."""
    rounding = math.ceil if round_mode == "CEIL" else math.floor
    out = int(rounding((size + 2 * pad - k) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the image plus pad
    return out


@register("Pooling")
class Pooling(Layer):
    """MAX, AVE or STOCHASTIC pooling. Bottom (N, C, H, W) -> top (N, C, PH, PW) [, MAX's argmax mask, same
    shape]."""

    param_block = "pooling_param"
    tops = (1, 2)
    fields = (
        Field("pool", "enum", "MAX", "pooling method; STOCHASTIC: a value drawn with probability value / window sum "
              "in TRAIN, the probability-weighted mean in TEST (inputs >= 0)", choices=("MAX", "AVE", "STOCHASTIC")),
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
        self._mask = pool_forward(self.p.pool, self.phase, bottom[0].data, self._geometry(), top[0].data,
                                  self._mask, self.rng)
        if len(top) == 2:  # Caffe's mask top: the flat index of the maximum within the H x W plane
            top[1].data[...] = self._mask

    def bound_forward(self, bottom, top):
        """Layer.bound_forward: MAX and AVE on their kernels, chosen once."""
        x, y, (kh, kw, sh, sw, ph, pw) = bottom[0].data, top[0].data, self._geometry()
        if self.p.pool == "AVE":
            if _whole_plane(x, kh, kw, ph, pw):
                return lambda: ave_pool_global(x, y)
            return lambda: ave_pool_forward(x, kh, kw, sh, sw, ph, pw, y)
        if self.p.pool != "MAX" or len(top) != 1:
            return None
        if self._mask is None or self._mask.shape != y.shape:
            self._mask = np.empty(y.shape, np.int32)
        mask = self._mask
        if kh == kw and sh == sw == 2 and ph == pw == 0 and kh in (2, 3) and min(x.shape[2:]) >= kh:
            kernel = max_pool_2x2s2 if kh == 2 else max_pool_3x3s2
            return lambda: kernel(x, y, mask)
        return lambda: max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, mask)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            pool_backward(self.p.pool, self.phase, bottom[0].data, top[0].diff, self._geometry(), self._mask,
                          bottom[0].diff)

    needs_rng = True  # STOCHASTIC's draws

    @property
    def draws(self) -> bool:
        return self.p.pool == "STOCHASTIC" and self.phase == "TRAIN"

    @property
    def backward_reads(self):
        return ("bottom",) if self.p.pool == "STOCHASTIC" else ()  # TEST's gradient reads the windows


def pool_forward(pool, phase, x, geometry, y, mask, rng):
    """One pooling forward (MAX, AVE, STOCHASTIC); returns the mask (MAX's argmax, STOCHASTIC's picks in TRAIN)."""
    kh, kw, sh, sw, ph, pw = geometry
    if pool == "AVE":
        if _whole_plane(x, kh, kw, ph, pw):
            ave_pool_global(x, y)
        else:
            ave_pool_forward(x, kh, kw, sh, sw, ph, pw, y)
        return mask
    if pool == "STOCHASTIC" and phase == "TEST":
        sto_pool_forward_test(x, kh, kw, sh, sw, y)
        return mask
    if mask is None or mask.shape != y.shape:
        mask = np.empty(y.shape, np.int32)
    if pool == "MAX":
        if kh == kw and sh == sw == 2 and ph == pw == 0 and kh in (2, 3) and min(x.shape[2:]) >= kh:
            (max_pool_2x2s2 if kh == 2 else max_pool_3x3s2)(x, y, mask)
        else:
            max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, mask)
    else:
        sto_pool_forward_train(x, kh, kw, sh, sw, rng.random(y.shape, np.float32).astype(x.dtype), y, mask)
    return mask


def pool_backward(pool, phase, x, dy, geometry, mask, dx):
    kh, kw, sh, sw, ph, pw = geometry
    if pool == "AVE":
        if _whole_plane(dx, kh, kw, ph, pw):
            ave_pool_global_backward(dy, dx)
        else:
            ave_pool_backward(dy, kh, kw, sh, sw, ph, pw, dx)
    elif pool == "STOCHASTIC" and phase == "TEST":
        sto_pool_backward_test(x, dy, kh, kw, sh, sw, dx)
    else:  # MAX, and STOCHASTIC in TRAIN: the diff goes to the picked value
        max_pool_backward(dy, mask, dx)


def spp_levels(h, w, height):
    """Caffe's SPP geometry per level l: 2^l bins, kernel ceil(size / bins), stride the kernel, pad half the
    remainder (rounded up); (kh, kw, sh, sw, ph, pw) per level."""
    out = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = math.ceil(h / bins), math.ceil(w / bins)
        ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        out.append((kh, kw, kh, kw, ph, pw))
    return out


@register("SPP")
class SPP(Layer):
    """Spatial pyramid pooling (Caffe's SPP, He et al. 2014): level l pools the plane into about 2^l x 2^l bins
    (spp_levels), whatever the input size. Bottom (N, C, H, W) -> top (N, C * the levels' bins), the levels
    flattened and concatenated in order; pyramid_height 1: (N, C, 1, 1), as Caffe's."""

    param_block = "spp_param"
    fields = (
        Field("pyramid_height", "int", None, "levels: 2^l x 2^l bins at level l = 0 .. pyramid_height - 1",
              minimum=1, required=True),
        Field("pool", "enum", "MAX", "pooling method", choices=("MAX", "AVE", "STOCHASTIC")),
    )
    needs_rng = True

    @property
    def draws(self) -> bool:
        return self.p.pool == "STOCHASTIC" and self.phase == "TRAIN"

    @property
    def backward_reads(self):
        return ("bottom",) if self.p.pool == "STOCHASTIC" else ()

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise LayerError(f"the bottom must be 4-D (N, C, H, W); received shape {list(shape)}", None)
        n, c, h, w = shape
        self.levels = spp_levels(h, w, self.p.pyramid_height)
        self.out_hw = []
        for level, (kh, kw, sh, sw, ph, pw) in enumerate(self.levels):
            if ph >= kh or pw >= kw:  # Caffe's PoolingLayer stops on this too
                raise LayerError(f"pyramid_height {self.p.pyramid_height} is too high for a {h}x{w} input: level "
                                 f"{level} ({2 ** level}x{2 ** level} bins) would pad {ph}x{pw} around a {kh}x{kw} "
                                 "kernel; lower pyramid_height or pool a larger plane", f"{self.param_block}.pyramid_height")
            self.out_hw.append((pooled_size(h, kh, ph, sh, "CEIL"), pooled_size(w, kw, pw, sw, "CEIL")))
        self._masks = [None] * len(self.levels)
        if len(self.levels) == 1:
            return [(n, c) + self.out_hw[0]]
        return [(n, c * sum(a * b for a, b in self.out_hw))]

    def _parts(self, n, c):
        """(level, (N, C, PH, PW) shape, column range in the top) per level."""
        start = 0
        for level, (oh, ow) in enumerate(self.out_hw):
            yield level, (n, c, oh, ow), slice(start, start + c * oh * ow)
            start += c * oh * ow

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        n, c = x.shape[:2]
        if len(self.levels) == 1:
            self._masks[0] = pool_forward(self.p.pool, self.phase, x, self.levels[0], y, self._masks[0], self.rng)
            return
        for level, shape, cols in self._parts(n, c):
            out = np.empty(shape, y.dtype)
            self._masks[level] = pool_forward(self.p.pool, self.phase, x, self.levels[level], out,
                                              self._masks[level], self.rng)
            y[:, cols] = out.reshape(n, -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, dx, dy = bottom[0].data, bottom[0].diff, top[0].diff
        n, c = x.shape[:2]
        if len(self.levels) == 1:
            pool_backward(self.p.pool, self.phase, x, dy, self.levels[0], self._masks[0], dx)
            return
        part = np.empty_like(dx)
        for level, shape, cols in self._parts(n, c):
            g = np.ascontiguousarray(dy[:, cols]).reshape(shape)
            pool_backward(self.p.pool, self.phase, x, g, self.levels[level], self._masks[level],
                          dx if level == 0 else part)
            if level:
                dx += part
