"""Depthwise convolution kernels: a Convolution with `group` equal to its input channels (MobileNet's 3x3 blocks,
Caffe's `group: C`, PyTorch's `groups=C`), each output channel one input channel's planes filtered by its own
kernel. No im2col and no matrix product per group (for one channel a group that is a 1 x k by k x plane product:
all overhead): each tap is one long vector multiply-add.

Layout. A stride s splits each zero-padded plane into s*s phase planes (rows and columns taken every s-th, from
offsets 0..s-1), each (HQ, WQ); the phase planes of a block of B images of one channel lie end to end in one row
of a task's own buffer `phases` (channels, s*s, B*HQ*WQ + spare), a row small enough to stay in the L1 cache
(BLOCK values). Output (oy, ox) of image n of the block is then, at q = n*HQ*WQ + oy*WQ + ox,
    out[o, q] = bias[o] + sum over taps (i, j) of w[o, i, j] * phases[phase(i, j), q + shift(i, j)]
with a = i*dh, b = j*dw, phase = (a % s)*s + b % s, shift = (a // s)*WQ + b // s: every tap is an axpy over the
whole row (B*HQ*WQ values, vectorized), whatever the plane's size or the stride. Positions q past an image's
outputs are computed and dropped (the price of long vectors: 1.6x the outputs on 8x8 planes, 6x on 2x2).
The backward uses the same rows: the weight gradient is a dot product of the top diff's row (zero where dropped)
with each tap's shifted row, the data gradient the axpys transposed, then the phases put back. Each task (a
block of CHANNELS channels) reads its bottom and top diff from the blobs and writes its top or bottom diff there,
an image's planes of its channels in one run: nothing of the layer's size is kept between the passes or copied
through memory (the rows over the whole batch before: 1.3x slower in MobileNet, 1.5x on 4x4 planes).

Shapes: x (N, C, H, W), w (C*m, 1, KH, KW) with m outputs per input channel, y (N, C*m, OH, OW).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uintp

from .simd import LANES_CR, LANES_NB, VECTOR_BYTES, tile_dw, tile_dw1, tile_dw_dot, tile_dw_dot1

BLOCK = 2048  # values of a task's rows (a block of images' phase planes): its buffers stay in the L1 cache
CHANNELS = 16  # channels a task: each image's planes of them read (and written) in one run, which the hardware
#              prefetches (a channel a task reads one small plane every C*H*W values: 0.4 values a ns on 4x4)
LANES_PLANE = 49  # bottom planes up to this many pixels run with the images in the lanes (when the batch fills
#                   them): 4x4 planes 2-3x the rows, 5x5 to 7x7 1.1-3x; 8x8 0.75-1x, 14x14 at stride 2 0.9x
ROUND = 64  # the rows' loops run to a multiple of this many values: LLVM's vector loops (4 vectors an iteration)
#             leave the rest to a scalar loop, as slow as the vector one on rows of a few hundred values


class DepthwisePlan:
    """The geometry of one bottom shape: the phase planes (HQ, WQ), the taps' phases and shifts, the images and
    channels a task holds; where the images go in the lanes (`lanes`), lane_taps' entries."""

    def __init__(self, shape, out_c, kernel, pad, stride, dilation, out_hw, dtype, lanes=False):
        n, c, h, w = self.bottom_shape = tuple(shape)
        (kh, kw), (ph, pw), (s, s2), (dh, dw) = kernel, pad, stride, dilation
        if s != s2:
            raise ValueError("one stride for both axes")
        self.geometry = (ph, pw, s)
        oh, ow = out_hw
        reach_h, reach_w = (kh - 1) * dh // s, (kw - 1) * dw // s
        self.hq, self.wq = max(-(-(h + 2 * ph) // s), oh + reach_h), max(-(-(w + 2 * pw) // s), ow + reach_w)
        self.block = max(1, min(n, BLOCK // (s * s * self.hq * self.wq)))
        self.row = -(-self.block * self.hq * self.wq // ROUND) * ROUND  # the rows' length in the kernels
        self.channels = max(1, min(CHANNELS, c // 2))  # a task's (2 tasks at least: one a thread)
        taps = [((i * dh % s) * s + j * dw % s, (i * dh // s) * self.wq + j * dw // s)
                for i in range(kh) for j in range(kw)]
        self.phase = np.array([t[0] for t in taps], np.int64)
        self.shift = np.array([t[1] for t in taps], np.int64)
        self.dtype = np.dtype(dtype)
        self.out_hw = tuple(out_hw)
        # the images in the lanes (lanes: the batch fills them; the caller's test) on planes up to LANES_PLANE
        self.lane_width = LANES_NB * (VECTOR_BYTES // self.dtype.itemsize)
        self.lane_groups = -(-n // self.lane_width)
        self.lanes = lanes and h * w <= LANES_PLANE and out_c == c
        self.hw = h * w
        self.entries = lane_taps((h, w), out_hw, kernel, pad, dilation, s, self.lane_width) if self.lanes else None

    def args(self):
        """The geometry as the kernels take it: (ph, pw, s, hq, wq, block, row, channels, phase, shift)."""
        return (*self.geometry, self.hq, self.wq, self.block, self.row, self.channels, self.phase, self.shift)


@njit(cache=True, nogil=True)
def _phase_row(i, s):
    """(i % s, i // s) without a division where s is 1 or 2 (two divisions by a runtime s a row cost more than a
    4x4 plane's row to copy)."""
    if s == 1:
        return 0, i
    if s == 2:
        return i & 1, i >> 1
    return i % s, i // s


@njit(cache=True, nogil=True)
def _place(x, n0, nb, c0, cb, ph, pw, s, hq, wq, phases):
    """phases[j, p*s + r, i*hq*wq + u*wq + v] = x[n0 + i, c0 + j, u*s + p - ph, v*s + r - pw] for the block's nb
    images and cb channels, each image's channels read in order; the padding's places are never written (zero
    since the buffer was made)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    xf, pf = x.reshape(-1), phases.reshape(-1)
    length, plane = phases.shape[2], hq * wq
    for img in range(nb):
        for j in range(cb):
            at, to = ((n0 + img) * c + c0 + j) * h * w, j * s * s * length + img * plane
            for iy in range(h):
                p, u = _phase_row(iy + ph, s)
                src, base = at + iy * w, to + p * s * length + u * wq
                if s == 1:  # one phase: the row in one piece
                    for ix in range(w):
                        pf[uintp(base + pw + ix)] = xf[uintp(src + ix)]
                elif s == 2:  # the columns in pairs, which LLVM vectorizes
                    d0, d1 = base + (pw % 2) * length + pw // 2, base + ((1 + pw) % 2) * length + (1 + pw) // 2
                    for k in range(w // 2):
                        pf[uintp(d0 + k)] = xf[uintp(src + 2 * k)]
                        pf[uintp(d1 + k)] = xf[uintp(src + 2 * k + 1)]
                    if w % 2:
                        pf[uintp(d0 + w // 2)] = xf[uintp(src + w - 1)]
                else:
                    for r in range(s):  # the columns of phase r: every s-th from ix0, to consecutive places
                        ix0 = (r - pw) % s
                        dst = base + r * length + (ix0 + pw) // s
                        for k in range((w - ix0 + s - 1) // s):
                            pf[uintp(dst + k)] = xf[uintp(src + ix0 + k * s)]


@njit(cache=True, nogil=True)
def _take(dphases, n0, nb, c0, cb, ph, pw, s, hq, wq, dx):
    """The inverse of _place on the positions of x: dx[n0 + i, c0 + j, iy, ix] = dphases[j, ...] (overwritten)."""
    c, h, w = dx.shape[1], dx.shape[2], dx.shape[3]
    xf, pf = dx.reshape(-1), dphases.reshape(-1)
    length, plane = dphases.shape[2], hq * wq
    for img in range(nb):
        for j in range(cb):
            at, to = ((n0 + img) * c + c0 + j) * h * w, j * s * s * length + img * plane
            for iy in range(h):
                p, u = _phase_row(iy + ph, s)
                dst, base = at + iy * w, to + p * s * length + u * wq
                if s == 1:
                    for ix in range(w):
                        xf[uintp(dst + ix)] = pf[uintp(base + pw + ix)]
                elif s == 2:
                    s0, s1 = base + (pw % 2) * length + pw // 2, base + ((1 + pw) % 2) * length + (1 + pw) // 2
                    for k in range(w // 2):
                        xf[uintp(dst + 2 * k)] = pf[uintp(s0 + k)]
                        xf[uintp(dst + 2 * k + 1)] = pf[uintp(s1 + k)]
                    if w % 2:
                        xf[uintp(dst + w - 1)] = pf[uintp(s0 + w // 2)]
                else:
                    for r in range(s):
                        ix0 = (r - pw) % s
                        src = base + r * length + (ix0 + pw) // s
                        for k in range((w - ix0 + s - 1) // s):
                            xf[uintp(dst + ix0 + k * s)] = pf[uintp(src + k)]


@njit(parallel=True, cache=True, nogil=True)
def depthwise_forward(x, w, bias, has_bias, ph, pw, s, hq, wq, block, row, cb, phase, shift, y, relu=False,
                      slope=0.0):
    """y[n, o, oy, ox] = bias[o] + sum_t w[o, t] * phases[c, phase[t], q + shift[t]] (q = n*hq*wq + oy*wq + ox,
    the images a block at a time, the channels cb a task); relu: a ReLU of negative slope `slope` on the way (a
    fold's, in inference)."""
    n, c = x.shape[0], x.shape[1]
    o, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    m, taps, plane, spare = o // c, phase.shape[0], hq * wq, shift.max()
    wf, yf = w.reshape(o, taps), y.reshape(-1)
    groups = -(-c // cb)
    for g in prange(groups):
        c0 = g * cb
        nc = min(cb, c - c0)
        phases = np.zeros((cb, s * s, row + spare), x.dtype)
        out = np.empty((cb * m, row), x.dtype)
        for n0 in range(0, n, block):
            nb = min(block, n - n0)
            _place(x, n0, nb, c0, nc, ph, pw, s, hq, wq, phases)
            length = min(row, -(-((nb - 1) * plane + (oh - 1) * wq + ow) // ROUND) * ROUND)  # past the last kept
            for k in range(nc * m):
                oc = c0 * m + k
                dst = out[k]
                b = bias[oc] if has_bias else x.dtype.type(0)
                for q in range(length):
                    dst[uintp(q)] = b
                for t in range(0, taps, 3):  # three taps a pass over the row (a 3x3 kernel's row of taps)
                    if t + 3 <= taps:
                        s0, s1, s2 = (phases[k // m, phase[t], shift[t]:], phases[k // m, phase[t + 1], shift[t + 1]:],
                                      phases[k // m, phase[t + 2], shift[t + 2]:])
                        w0, w1, w2 = wf[oc, t], wf[oc, t + 1], wf[oc, t + 2]
                        for q in range(length):
                            dst[uintp(q)] += w0 * s0[uintp(q)] + w1 * s1[uintp(q)] + w2 * s2[uintp(q)]
                        continue
                    for u in range(t, taps):
                        src, wv = phases[k // m, phase[u], shift[u]:], wf[oc, u]
                        for q in range(length):
                            dst[uintp(q)] += wv * src[uintp(q)]
            of = out.reshape(-1)
            for img in range(nb):  # each image's channels written in order
                for k in range(nc * m):
                    to = ((n0 + img) * o + c0 * m + k) * oh * ow
                    for oy in range(oh):
                        at, dst = k * row + img * plane + oy * wq, to + oy * ow
                        for ox in range(ow):
                            v = of[uintp(at + ox)]
                            yf[uintp(dst + ox)] = v if not relu or v > 0 else v * slope


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def depthwise_backward(x, dy, w, ph, pw, s, hq, wq, block, row, cb, phase, shift, dw, db, has_bias, dx, want_dx):
    """dw[o, t] += sum_q drow[o, q] * phases[c, phase[t], q + shift[t]] (drow: dy's planes at q = n*hq*wq +
    oy*wq + ox, zero where dropped), db[o] += sum of dy[:, o] (has_bias), and with want_dx dx[n, c] = the
    positions of x in dphases[c, phase[t], q + shift[t]] = sum over c's outputs o and taps t of w[o, t] *
    drow[o, q] (overwritten). fastmath: the dot products vectorize."""
    n, c = x.shape[0], x.shape[1]
    o, oh, ow = dy.shape[1], dy.shape[2], dy.shape[3]
    m, taps, plane, spare = o // c, phase.shape[0], hq * wq, shift.max()
    wf, dwf, dyf = w.reshape(o, taps), dw.reshape(o, taps), dy.reshape(-1)
    groups = -(-c // cb)
    for g in prange(groups):
        c0 = g * cb
        nc = min(cb, c - c0)
        phases = np.zeros((cb, s * s, row + spare), x.dtype)
        dphases = np.empty((cb, s * s, row + spare), x.dtype)
        drows = np.zeros((cb * m, row), x.dtype)
        sums = np.zeros((cb * m, taps + 1), np.float64)  # the taps' sums, then the bias's
        df = drows.reshape(-1)
        for n0 in range(0, n, block):
            nb = min(block, n - n0)
            _place(x, n0, nb, c0, nc, ph, pw, s, hq, wq, phases)
            length = min(row, -(-((nb - 1) * plane + (oh - 1) * wq + ow) // ROUND) * ROUND)
            if nb < block:  # the last block: the images past it leave the last block's top diff behind
                drows[:, nb * plane:] = 0
            for img in range(nb):  # the top diff into the rows, each image's channels read in order; the
                for k in range(nc * m):  # dropped places stay 0
                    at = ((n0 + img) * o + c0 * m + k) * oh * ow
                    acc = dy.dtype.type(0)
                    for oy in range(oh):
                        src, to = at + oy * ow, k * row + img * plane + oy * wq
                        for ox in range(ow):
                            v = dyf[uintp(src + ox)]
                            df[uintp(to + ox)] = v
                            acc += v
                    sums[k, taps] += acc
            if want_dx:
                dphases[:, :, :] = 0
            for k in range(nc * m):
                oc, d = c0 * m + k, drows[k]
                for t in range(taps):  # a tap's dot product and (want_dx) its axpy in one loop: d loaded once
                    src = phases[k // m, phase[t], shift[t]:]
                    acc = dy.dtype.type(0)
                    if want_dx:
                        dst, wv = dphases[k // m, phase[t], shift[t]:], wf[oc, t]
                        for q in range(length):
                            v = d[uintp(q)]
                            acc += v * src[uintp(q)]
                            dst[uintp(q)] += wv * v
                    else:
                        for q in range(length):
                            acc += d[uintp(q)] * src[uintp(q)]
                    sums[k, t] += acc
            if want_dx:
                _take(dphases, n0, nb, c0, nc, ph, pw, s, hq, wq, dx)
        for k in range(nc * m):
            for t in range(taps):
                dwf[c0 * m + k, t] += sums[k, t]
            if has_bias:
                db[c0 * m + k] += sums[k, taps]


# The images in the lanes (small planes, a batch that fills 2 vectors of images): the bottom transposed to
# (G, C*H*W, L), L = LANES_NB vectors of images, by the convolution's transposes (layers/conv.py), so that each
# tap is a multiply-add of whole vectors of images (layers/simd.tile_dw: LANES_CR channels x 2 vectors in
# registers): nothing padded, nothing computed and dropped (on a 4x4 plane the rows above compute 2.25x the
# outputs kept, each row a few vectors long). One filter a channel (m = 1).

def lane_taps(in_hw, out_hw, kernel, pad, dilation, stride, width):
    """The entries of the three passes, offsets in values (pixels times the lanes `width`):
    forward (starts, ent_x, ent_t): for every output pixel (oy, ox), in order, the taps (i, j) whose input pixel
    (y, x) = (oy*s - ph + i*dh, ox*s - pw + j*dw) is inside the bottom (ent_x its offset, ent_t = i*kw + j);
    data (starts, ent_p, ent_t): the same pairs by input pixel (ent_p the output pixel's offset);
    weights (starts, ent_p, ent_x): the same pairs by tap."""
    (h, w), (oh, ow), (kh, kw), (ph, pw), (dh, dw), s = in_hw, out_hw, kernel, pad, dilation, stride
    oy, ox, i, j = (a.reshape(-1) for a in np.meshgrid(np.arange(oh), np.arange(ow), np.arange(kh), np.arange(kw),
                                                        indexing="ij"))
    y, x = oy * s - ph + i * dh, ox * s - pw + j * dw
    keep = (y >= 0) & (x >= 0) & (y < h) & (x < w)
    p, q, t = (oy * ow + ox)[keep], (y * w + x)[keep], (i * kw + j)[keep]

    def by(key, count, a, b):
        order = np.argsort(key, kind="stable")
        starts = np.zeros(count + 1, np.int64)
        np.cumsum(np.bincount(key, minlength=count), out=starts[1:])
        return starts, a[order].astype(np.int64), b[order].astype(np.int64)
    return (by(p, oh * ow, q * width, t), by(q, h * w, p * width, t), by(t, kh * kw, p * width, q * width))


@njit(parallel=True, cache=True, nogil=True)
def depthwise_lanes(a, w, a_plane, starts, ent_a, ent_t, out):
    """The forward and the data gradient: a (G, C*A, L) with the images in the lanes (A = a_plane), w (C, 1, KH,
    KW), for each pixel q of out's planes its entries e in starts[q]:starts[q + 1] -> out (G, C*Q, L):
    out[g, c*Q + q] = sum_e w[c, ent_t[e]] * a[g, c*A + ent_a[e]] (overwritten; vectors of L images).
    Forward: a the bottom (A = H*W), q an output pixel (lane_taps' first entries); data gradient: a the top diff
    (A = OH*OW), q an input pixel (the second). The bias is added on the way out, by lanes_to_top."""
    groups, width = a.shape[0], a.shape[2]
    c, plane = w.shape[0], starts.shape[0] - 1
    taps = w.size // c
    blocks = -(-c // LANES_CR)
    wf, af, of = w.reshape(-1), a.reshape(-1), out.reshape(-1)
    for task in prange(groups * blocks):
        g, c0 = task // blocks, task % blocks * LANES_CR
        at, to = (g * c + c0) * a_plane * width, (g * c + c0) * plane * width
        for q in range(plane):
            if c0 + LANES_CR <= c:
                tile_dw(af, at, a_plane * width, ent_a, wf, c0 * taps, taps, ent_t, starts[q], starts[q + 1], of,
                        to + q * width, plane * width)
            else:
                for r in range(c - c0):
                    tile_dw1(af, at + r * a_plane * width, 0, ent_a, wf, (c0 + r) * taps, 0, ent_t, starts[q],
                             starts[q + 1], of, to + (r * plane + q) * width, 0)


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})  # (the lanes' float64 sums vectorize)
def depthwise_lanes_weights(xb, dyb, hw, starts, ent_p, ent_x, dw):
    """The weight gradient: dw (C, 1, KH, KW) += sum over images of dyb[g, c*P + ent_p[e]] * xb[g, c*HW +
    ent_x[e]] over tap t's pairs e in starts[t]:starts[t + 1] (vectors of lanes summed in float32 over a group's
    pixels, the lanes and the groups in float64)."""
    groups, width = xb.shape[0], xb.shape[2]
    c, taps = dw.shape[0], starts.shape[0] - 1
    plane = dyb.shape[1] // c
    blocks = -(-c // LANES_CR)
    xf, df, dwf = xb.reshape(-1), dyb.reshape(-1), dw.reshape(-1)
    for blk in prange(blocks):
        c0 = blk * LANES_CR
        part = np.empty(LANES_CR * width, xb.dtype)
        for t in range(taps):
            sums = np.zeros(LANES_CR, np.float64)
            for g in range(groups):
                ds, xs = (g * c + c0) * plane * width, (g * c + c0) * hw * width
                if c0 + LANES_CR <= c:
                    tile_dw_dot(df, ds, plane * width, ent_p, xf, xs, hw * width, ent_x, starts[t], starts[t + 1],
                                part, 0, width)
                else:
                    for r in range(c - c0):
                        tile_dw_dot1(df, ds + r * plane * width, 0, ent_p, xf, xs + r * hw * width, 0, ent_x,
                                     starts[t], starts[t + 1], part, r * width, 0)
                for r in range(min(LANES_CR, c - c0)):
                    for lane in range(width):
                        sums[r] += part[r * width + lane]
            for r in range(min(LANES_CR, c - c0)):
                dwf[(c0 + r) * taps + t] += sums[r]
