"""Depthwise convolution kernels: a Convolution with `group` equal to its input channels (MobileNet's 3x3 blocks,
Caffe's `group: C`, PyTorch's `groups=C`), each output channel one input channel's planes filtered by its own
kernel. No im2col and no matrix product per group (for one channel a group that is a 1 x k by k x plane product:
all overhead): each tap is one long vector multiply-add.

Layout. A stride s splits each zero-padded plane into s*s phase planes (rows and columns taken every s-th, from
offsets 0..s-1), each (HQ, WQ); a channel's phase planes of all N images lie end to end in one row of `phases`
(C, s*s, N*HQ*WQ + spare). Output (oy, ox) of image n is then, at q = n*HQ*WQ + oy*WQ + ox,
    out[o, q] = bias[o] + sum over taps (i, j) of w[o, i, j] * phases[c, phase(i, j), q + shift(i, j)]
with a = i*dh, b = j*dw, phase = (a % s)*s + b % s, shift = (a // s)*WQ + b // s: every tap is an axpy over the
whole row (N*HQ*WQ values, vectorized), whatever the plane's size or the stride. Positions q past an image's
outputs are computed and dropped (the price of long vectors: 1.6x the outputs on 8x8 planes, 6x on 2x2).
The backward uses the same rows: the weight gradient is a dot product of the top diff's row (zero where dropped)
with each tap's shifted row, the data gradient the axpys transposed, then the phases put back.

Shapes: x (N, C, H, W), w (C*m, 1, KH, KW) with m outputs per input channel, y (N, C*m, OH, OW).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uintp

CHUNK = 1024  # values of a row handled across all taps at a time (in the L1 cache)


class DepthwisePlan:
    """The geometry and buffers of one bottom shape: rows of phases (the input's), of outputs, and of diffs."""

    def __init__(self, shape, out_c, kernel, pad, stride, dilation, out_hw, dtype):
        n, c, h, w = self.bottom_shape = tuple(shape)
        (kh, kw), (ph, pw), (s, s2), (dh, dw) = kernel, pad, stride, dilation
        if s != s2:
            raise ValueError("one stride for both axes")
        self.geometry = (ph, pw, s)
        oh, ow = out_hw
        reach_h, reach_w = (kh - 1) * dh // s, (kw - 1) * dw // s
        self.hq, self.wq = max(-(-(h + 2 * ph) // s), oh + reach_h), max(-(-(w + 2 * pw) // s), ow + reach_w)
        plane = self.hq * self.wq
        self.length = n * plane                                       # the rows' useful part
        spare = reach_h * self.wq + reach_w
        taps = [((i * dh % s) * s + j * dw % s, (i * dh // s) * self.wq + j * dw // s)
                for i in range(kh) for j in range(kw)]
        self.phase = np.array([t[0] for t in taps], np.int64)
        self.shift = np.array([t[1] for t in taps], np.int64)
        self.phases = np.zeros((c, s * s, self.length + spare), dtype)
        self.out = np.empty((out_c, self.length), dtype)
        self.drows = self.dphases = None  # the top diff's rows and the data gradient's, made by the first backward
        self.out_hw = tuple(out_hw)


@njit(parallel=True, cache=True, nogil=True)
def to_phases(x, ph, pw, s, hq, wq, phases):
    """phases[c, p*s + r, n*hq*wq + u*wq + v] = x[n, c, u*s + p - ph, v*s + r - pw] (0 outside x)."""
    n, c, h, w = x.shape
    plane = hq * wq
    for ch in prange(c):  # the padding's places were zeroed when the buffer was made, and are never written
        for img in range(n):
            for iy in range(h):
                p, u = (iy + ph) % s, (iy + ph) // s
                base = img * plane + u * wq
                if s == 1:  # one phase: the row in one piece
                    dst, src = phases[ch, 0], x[img, ch, iy]
                    for ix in range(w):
                        dst[uintp(base + pw + ix)] = src[uintp(ix)]
                    continue
                src = x[img, ch, iy]
                for r in range(s):  # the columns of phase r: every s-th from ix0, to consecutive places
                    ix0 = (r - pw) % s
                    dst, v0 = phases[ch, p * s + r], base + (ix0 + pw) // s
                    for k in range((w - ix0 + s - 1) // s):
                        dst[uintp(v0 + k)] = src[uintp(ix0 + k * s)]


@njit(parallel=True, cache=True, nogil=True)
def from_phases(dphases, ph, pw, s, hq, wq, dx):
    """The inverse of to_phases on the positions of x: dx[n, c, iy, ix] = dphases[...] (overwritten)."""
    n, c, h, w = dx.shape
    plane = hq * wq
    for ch in prange(c):
        for img in range(n):
            for iy in range(h):
                p, u = (iy + ph) % s, (iy + ph) // s
                base = img * plane + u * wq
                if s == 1:
                    src, dst = dphases[ch, 0], dx[img, ch, iy]
                    for ix in range(w):
                        dst[uintp(ix)] = src[uintp(base + pw + ix)]
                    continue
                dst = dx[img, ch, iy]
                for r in range(s):
                    ix0 = (r - pw) % s
                    src, v0 = dphases[ch, p * s + r], base + (ix0 + pw) // s
                    for k in range((w - ix0 + s - 1) // s):
                        dst[uintp(ix0 + k * s)] = src[uintp(v0 + k)]


@njit(parallel=True, cache=True, nogil=True)
def depthwise_rows(phases, w, bias, has_bias, phase, shift, out):
    """out[o, q] = bias[o] + sum_t w[o, t] * phases[o // m, phase[t], q + shift[t]], in chunks of q that stay in
    the L1 cache across the taps."""
    o, length = out.shape
    m = o // phases.shape[0]
    taps = phase.shape[0]
    wf = w.reshape(o, taps)
    chunks = -(-length // CHUNK)
    for task in prange(o * chunks):
        oc, q0 = task // chunks, (task % chunks) * CHUNK
        row = out[oc, q0:min(q0 + CHUNK, length)]
        b = bias[oc] if has_bias else out.dtype.type(0)
        for q in range(row.shape[0]):
            row[uintp(q)] = b
        for t in range(taps):
            src, wv = phases[oc // m, phase[t], q0 + shift[t]:], wf[oc, t]
            for q in range(row.shape[0]):
                row[uintp(q)] += wv * src[uintp(q)]


@njit(parallel=True, cache=True, nogil=True)
def rows_to_top(out, n, hq, wq, y, relu=False, slope=0.0):
    """y[n, o, oy, ox] = out[o, n*hq*wq + oy*wq + ox]; relu: a ReLU of negative slope `slope` on the way."""
    o, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    plane = hq * wq
    for task in prange(n * o):
        img, oc = task // o, task % o
        src = out[oc]
        for oy in range(oh):
            base, dst = img * plane + oy * wq, y[img, oc, oy]
            for ox in range(ow):
                v = src[uintp(base + ox)]
                dst[uintp(ox)] = v if not relu or v > 0 else v * slope


@njit(parallel=True, cache=True, nogil=True)
def top_to_rows(dy, hq, wq, out):
    """out[o, n*hq*wq + oy*wq + ox] = dy[n, o, oy, ox]; the positions dropped stay 0 (as the buffer was made)."""
    n, o, oh, ow = dy.shape
    plane = hq * wq
    for oc in prange(o):
        dst = out[oc]
        for img in range(n):
            for oy in range(oh):
                base, src = img * plane + oy * wq, dy[img, oc, oy]
                for ox in range(ow):
                    dst[uintp(base + ox)] = src[uintp(ox)]


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def depthwise_rows_weights(phases, drows, phase, shift, dw_out):
    """dw_out[o, t] += sum_q drows[o, q] * phases[o // m, phase[t], q + shift[t]] (fastmath: the sums vectorize)."""
    o, length = drows.shape
    m = o // phases.shape[0]
    taps = phase.shape[0]
    dwf = dw_out.reshape(o, taps)
    for oc in prange(o):
        d = drows[oc]
        sums = np.zeros(taps, np.float64)
        for q0 in range(0, length, CHUNK):
            n = min(CHUNK, length - q0)
            for t in range(taps):
                src = phases[oc // m, phase[t], q0 + shift[t]:]
                acc = drows.dtype.type(0)
                for q in range(n):
                    acc += d[uintp(q0 + q)] * src[uintp(q)]
                sums[t] += acc
        for t in range(taps):
            dwf[oc, t] += sums[t]


@njit(parallel=True, cache=True, nogil=True)
def depthwise_rows_data(drows, w, phase, shift, dphases):
    """dphases[c, phase[t], q + shift[t]] = sum over c's outputs o and taps t of w[o, t] * drows[o, q], in chunks
    of q (the chunks of one channel in order: the taps' shifts overlap the next chunk)."""
    c = dphases.shape[0]
    o, length = drows.shape
    m = o // c
    taps = phase.shape[0]
    wf = w.reshape(o, taps)
    for ch in prange(c):
        dphases[ch] = 0
        for q0 in range(0, length, CHUNK):
            n = min(CHUNK, length - q0)
            for oc in range(ch * m, (ch + 1) * m):
                d = drows[oc, q0:]
                for t in range(taps):
                    dst, wv = dphases[ch, phase[t], q0 + shift[t]:], wf[oc, t]
                    for q in range(n):
                        dst[uintp(q)] += wv * d[uintp(q)]
