"""Winograd's F(2x2, 5x5), F(4x4, 3x3) and F(2x2, 3x3) for the training convolutions: 5x5 and 3x3 kernels of
stride 1 (any pad up to k - 1), float32.

An m x m block of the top from the alpha x alpha block of the bottom around it (Lavin and Gray 2016; alpha = m + k -
1): Y = A^T [(G g G^T) * (B^T d B)] A, alpha^2 multiplications where the direct convolution makes m^2 k^2. F(2x2,
5x5) and F(4x4, 3x3) share alpha = 6 and the points 0, 1, -1, 2, -2, infinity (so B^T too): 36 products for 100 and
144; F(2x2, 3x3) on 0, 1, -1, infinity: 16 for 36, its transforms of +-1 alone. Each pass runs a block of images at
a time (its transformed values stay in L2): the bottom channels-last, its blocks transformed in vectors over the
channels into V (alpha^2, T, Cs) (T blocks of the top, Cs channels), alpha^2 products V[e] (T x C) U[e] (C x Opad)
on the channels-last tiles (`simd.tile_cl`), transformed back and written to the top in Caffe's layout.

    WinoPlan(x shape, O, pad, threads, k, alpha)    a pass's buffers (the data gradient's: dy's shape, C, k - 1 - pad)
    WinoBack(x shape, O, pad, threads, k, alpha)    the weight gradient's
    wino_forward(x, w, bias, pad, y, plan)      y = conv(x, w) + bias: x (N, C, H, W), w (O, C, k, k), y (N, O, OH, OW)
    wino_data(dy, w, pad, dx, plan)             dx = the data gradient: conv(dy, w rotated, pad k - 1 - pad)
    wino_weight_diff(x, dy, pad, dw, plan)      dw += the weight gradient: G^T (sum of (B^T d B) * (A dy A^T)) G

The data gradient is the forward on dy with the weights turned 180 degrees and their channels swapped; the weight
gradient sums, over the blocks, the transformed bottom times the top diff transformed by A (alpha^2 products of the
channels by the blocks, K the blocks), then G^T S G. Relative to their scale, within ~1e-6 of the float64 sums
(F(2x2, 5x5)), ~5e-6 (F(4x4, 3x3): the products' float32 sums of large transformed values that A^T's 4s and 8s
cancel) and ~3e-7 (F(2x2, 3x3), as exact as the direct sums); layers/conv.py says which pass takes which.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .channels_last import _tile, tile_kind
from .cpu import spread
from .simd import (CL_TILES, VECTOR_BYTES, tile_cl1, tile_cl2, tile_cl4, transpose_part, transpose_tile, wino2_in,
                   wino2_out, wino2_up, wino3_out, wino3_up, wino5_in, wino5_out, wino5_up)

# G of Y = A^T [(G g G^T) * (B^T d B)] A by (alpha, k): F(2, 5) and F(4, 3) on the points 0, 1, -1, 2, -2, infinity
# (B^T and A^T: simd.WINO5_BT, WINO5_AT and WINO3_AT, applied in vectors), F(2, 3) on 0, 1, -1, infinity (WINO2_*)
G = {(6, 5): np.array([[1 / 4, 0, 0, 0, 0], [-1 / 6, -1 / 6, -1 / 6, -1 / 6, -1 / 6],
                       [-1 / 6, 1 / 6, -1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3],
                       [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3], [0, 0, 0, 0, 1]]),
     (6, 3): np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                       [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
     (4, 3): np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]])}
NAMES = {(6, 5): "F(2x2, 5x5)", (6, 3): "F(4x4, 3x3)", (4, 3): "F(2x2, 3x3)"}
LANES = VECTOR_BYTES // 4
BLOCK_VALUES = 1 << 16  # a block's images: V and M of about this many values each (~256 KB float32: L2)


@njit(cache=True, nogil=True)
def _round_up(value, step):
    return -(-value // step) * step


@njit(cache=True, nogil=True)
def _rows(y, x, a, add):
    """y[:n] (+)= a x for the n values of x: a loop the compiler vectorizes."""
    if add:
        for q in range(x.size):
            y[q] += a * x[q]
    else:
        for q in range(x.size):
            y[q] = a * x[q]


@njit(cache=True, nogil=True)
def _combine(y, x, coefs, first, step, n):
    """y[:n] = sum over a of coefs[a] x[first + a * step, :n], the zero coefficients left out (in a's order)."""
    started = False
    for a in range(coefs.size):
        if coefs[a] != 0:
            _rows(y[:n], x[first + a * step, :n], coefs[a], started)
            started = True


BACK_VALUES = 256  # the values (filters by channels) a pass of wino_weights and _weights_back: their rows of float64
# stay in L2 (CIFAR-10 quick's conv3: 0.25 and 0.66 ms as scalar loops over each filter and channel, 0.16 and 0.13 so)


@njit(cache=True, nogil=True)
def wino_weights(w, u, flip, g):
    """w (O, C, k, k) -> u (alpha^2, C, Opad): u[e, c, o] = (G w[o, c] G^T)[e] (g: G[alpha, k]), in float64 then
    rounded; flip: the data gradient's u (alpha^2, O, Cpad) of w turned 180 degrees,
    u[e, o, c] = (G w[o, c, ::-1, ::-1] G^T)[e]. In
    vectors over u's rows (whole rows of about BACK_VALUES values at a time); the lanes past the last filter are
    zeros."""
    out_c, chans, kk = w.shape[0], w.shape[1], w.shape[2]
    al = g.shape[0]
    width = u.shape[2]
    used = chans if flip else out_c
    k, step = u.shape[1] * width, max(1, BACK_VALUES // width) * width
    uf = u.reshape(al * al, -1)
    d, t, m = np.zeros((kk * kk, step)), np.empty((al * kk, step)), np.empty(step)
    for q0 in range(0, k, step):
        n = min(step, k - q0)
        for row in range(n // width):
            for col in range(used):
                o, c = (q0 // width + row, col) if flip else (col, q0 // width + row)
                for i in range(kk):
                    for j in range(kk):
                        d[i * kk + j, row * width + col] = w[o, c, kk - 1 - i, kk - 1 - j] if flip else w[o, c, i, j]
        for a in range(al):
            for j in range(kk):
                _combine(t[a * kk + j], d, g[a], j, kk, n)  # G g: down the kernel's rows
        for a in range(al):
            for b in range(al):
                _combine(m, t, g[b], a * kk, 1, n)  # (G g) G^T: along them
                ue = uf[a * al + b, q0:q0 + n]
                for q in range(n):
                    ue[q] = m[q]


def _geometry(h, w, pad, k, al):
    """(OH, OW, TH, TW, Hp, Wp): the top's plane, its m x m blocks (m = alpha + 1 - k), and the bottom's padded
    plane (channels-last, its origin at (-pad, -pad), wide enough for every block's alpha x alpha)."""
    m = al + 1 - k
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    th, tw = -(-oh // m), -(-ow // m)
    return oh, ow, th, tw, m * th + k - 1, m * tw + k - 1


@njit(cache=True, nogil=True)
def _place(x, n, xp, wp, pad, cs, zeros):
    """x[n] (C, H, W) into the interior of xp ((Hp, Wp, Cs) flat, channels-last; its border stays zero): blocks of a
    vector's channels by as many columns transposed in registers (cut short at the plane's edge or the last
    channel), where both fall short one by one."""
    chans, height, width = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    for i in range(height):
        base = ((i + pad) * wp + pad) * cs
        for c0 in range(0, chans, LANES):
            src = ((n * chans + c0) * height + i) * width
            cn = min(LANES, chans - c0)
            for j0 in range(0, width, LANES):
                jn = min(LANES, width - j0)
                if cn == LANES and jn == LANES:
                    transpose_tile(xf, src + j0, height * width, xp, base + j0 * cs + c0, cs, zeros, 0, False, 0.0)
                elif cn == LANES or jn == LANES:
                    transpose_part(xf, src + j0, height * width, xp, base + j0 * cs + c0, cs, min(cn, jn),
                                   cn == LANES, False, 0.0)
                else:
                    for c in range(c0, c0 + cn):
                        for j in range(j0, j0 + jn):
                            xp[base + j * cs + c] = x[n, c, i, j]


@njit(cache=True, nogil=True)
def _skew(values):
    """The stride of the alpha^2 rows of V and M: their values and a cache line (rows 4 KB apart, as 64 blocks of 32
    channels, would share L1's sets: CIFAR-10 quick's conv2 transformed its bottom in 2.1x the time)."""
    return values + 16


@njit(cache=True, nogil=True)
def _transform_in(xp, wp, cs, th, tw, t0, sv, r, v, al, mb):
    """V[e, t0 + ty*TW + tx, :] (row e at e*sv) = (B^T d B)[e] of every alpha x alpha block d of xp (rows mb*ty..,
    columns mb*tx..), in vectors over the channels: the columns of a row of blocks first (r: alpha x Wp x Cs), then
    its blocks' rows."""
    row = wp * cs
    for ty in range(th):
        _in(al, xp, mb * ty * row, row, r, 0, row, row)
        for tx in range(tw):
            t = t0 + ty * tw + tx
            for er in range(al):
                _in(al, r, er * row + mb * tx * cs, cs, v, er * al * sv + t * cs, sv, cs)


@njit(cache=True, nogil=True)
def _gemm(kind, x, qin, count, offs, w, opad, out, qout, zeros, res, added):
    """out[qout[p] + o] = sum_k x[qin[p] + offs[k]] w[k*Opad + o] (+ out's old value where added), p < count (a
    multiple of the tile's pixels), o < Opad, on the channels-last tiles."""
    mr, nv = _tile(kind)
    step = nv * LANES
    for o0 in range(0, opad, step):
        for t in range(count // mr):
            if kind == 0:
                tile_cl1(x, 0, qin, qout, t * mr, offs, w, o0, opad, zeros, out, 0, res, added, 1.0, 1.0, False, 0.0)
            elif kind == 1:
                tile_cl2(x, 0, qin, qout, t * mr, offs, w, o0, opad, zeros, out, 0, res, added, 1.0, 1.0, False, 0.0)
            else:
                tile_cl4(x, 0, qin, qout, t * mr, offs, w, o0, opad, zeros, out, 0, res, added, 1.0, 1.0, False, 0.0)


@njit(cache=True, nogil=True)
def _in(al, x, src, ss, y, dst, ds, count):
    """B^T of alpha points applied in vectors (simd._make_linear's arguments)."""
    if al == 6:
        wino5_in(x, src, ss, y, dst, ds, count)
    else:
        wino2_in(x, src, ss, y, dst, ds, count)


@njit(cache=True, nogil=True)
def _out(al, mb, x, src, ss, y, dst, ds, count):
    """A^T of F(mb, .) on alpha points applied in vectors: alpha rows down to mb."""
    if al == 4:
        wino2_out(x, src, ss, y, dst, ds, count)
    elif mb == 2:
        wino5_out(x, src, ss, y, dst, ds, count)
    else:
        wino3_out(x, src, ss, y, dst, ds, count)


@njit(cache=True, nogil=True)
def _up(al, mb, x, src, ss, y, dst, ds, count):
    """A of F(mb, .) on alpha points applied in vectors: mb rows up to alpha."""
    if al == 4:
        wino2_up(x, src, ss, y, dst, ds, count)
    elif mb == 2:
        wino5_up(x, src, ss, y, dst, ds, count)
    else:
        wino3_up(x, src, ss, y, dst, ds, count)


@njit(cache=True, nogil=True)
def _transform_out(m, tb, opad, sm, p, al, mb):
    """p (mb, alpha, Tb, Opad; rows sm apart) = A^T applied to the products m (alpha^2, Tb, Opad; rows sm apart)
    down their first index's rows."""
    for ec in range(al):
        _out(al, mb, m, ec * sm, al * sm, p, ec * sm, al * sm, tb * opad)


@njit(cache=True, nogil=True)
def _transform_rows(p, sm, opad, t0, th, tw, yc, al, mb):
    """yc (mb TH, mb TW, Opad): A^T applied along the rows of p (_transform_out's) of the blocks t0 + ty*TW + tx."""
    row = mb * tw * opad
    for ty in range(th):
        for tx in range(tw):
            t = t0 + ty * tw + tx
            for a in range(mb):
                _out(al, mb, p, a * al * sm + t * opad, sm, yc, (mb * ty + a) * row + mb * tx * opad, opad, opad)


@njit(cache=True, nogil=True)
def _take(yc, tw, opad, y, n, relu, slope, zeros, mb):
    """y[n] (O, OH, OW) from yc ((mb TH, mb TW, Opad) flat), a (leaky) ReLU applied where relu: blocks transposed in
    registers (the plane as one row where its rows are whole in yc), the rest one by one."""
    chans, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    yf = y.reshape(-1)
    plane = oh * ow
    rows, width, stride = (1, plane, 0) if ow == mb * tw else (oh, ow, mb * tw)
    s = np.float32(slope)
    for i in range(rows):
        src, dst = i * stride * opad, n * chans * plane + i * ow
        for o0 in range(0, chans, LANES):
            on = min(LANES, chans - o0)
            for j0 in range(0, width, LANES):
                jn = min(LANES, width - j0)
                if on == LANES and jn == LANES:
                    transpose_tile(yc, src + j0 * opad + o0, opad, yf, dst + o0 * plane + j0, plane, zeros, 0, relu,
                                   s)
                elif on == LANES or jn == LANES:
                    transpose_part(yc, src + j0 * opad + o0, opad, yf, dst + o0 * plane + j0, plane, min(on, jn),
                                   jn == LANES, relu, s)
                else:
                    for o in range(o0, o0 + on):
                        for j in range(j0, j0 + jn):
                            v = yc[src + j * opad + o]
                            yf[dst + o * plane + j] = v if not relu or v > 0 else v * s


@njit(cache=True, nogil=True)
def _place_top(dy, n, yc, tw, opad, zeros, mb):
    """dy[n] (O, OH, OW) into yc ((mb TH, mb TW, Opad) flat, channels-last; what lies past OH, OW stays zero), as
    _take the other way."""
    chans, oh, ow = dy.shape[1], dy.shape[2], dy.shape[3]
    df = dy.reshape(-1)
    plane = oh * ow
    rows, width, stride = (1, plane, 0) if ow == mb * tw else (oh, ow, mb * tw)
    for i in range(rows):
        dst, src = i * stride * opad, n * chans * plane + i * ow
        for o0 in range(0, chans, LANES):
            on = min(LANES, chans - o0)
            for j0 in range(0, width, LANES):
                jn = min(LANES, width - j0)
                if on == LANES and jn == LANES:
                    transpose_tile(df, src + o0 * plane + j0, plane, yc, dst + j0 * opad + o0, opad, zeros, 0, False,
                                   np.float32(0))
                elif on == LANES or jn == LANES:
                    transpose_part(df, src + o0 * plane + j0, plane, yc, dst + j0 * opad + o0, opad, min(on, jn),
                                   on == LANES, False, np.float32(0))
                else:
                    for o in range(o0, o0 + on):
                        for j in range(j0, j0 + jn):
                            yc[dst + j * opad + o] = df[src + o * plane + j]


@njit(cache=True, nogil=True)
def _views(sc, hp, wp, cs, tb, opad, per, extra, al, mb):
    """A part's scratch sc cut into (xp: the bottom padded, channels-last; r: a row of blocks' columns transformed;
    v: the transformed blocks (alpha^2, Tb, Cs); m: the products or transformed top diff (alpha^2, Tb, Opad); yc: a
    top channels-last; the last `extra` values), V's and M's rows _skew'ed. scratch_size gives its length."""
    a = hp * wp * cs
    b = a + al * wp * cs
    c = b + al * al * _skew(tb * cs)
    d = c + al * al * _skew(tb * opad)
    e = d + mb * mb * per * opad
    return sc[:a], sc[a:b], sc[b:c], sc[c:d], sc[d:e], sc[e:e + extra]


def scratch_size(hp, wp, cs, tb, opad, per, extra, al, mb):
    """The values of _views' scratch."""
    return (hp * wp * cs + al * wp * cs + al * al * (_skew(tb * cs) + _skew(tb * opad)) + mb * mb * per * opad
            + extra)


def _forward(x, w, flip, g, us, bias, pad, y, relu, slope, kind, cs, block, parts, scratch):
    """wino_forward's passes: blocks of `block` images, `parts` of them in parallel, each part its scratch row and
    its own copy us[part] of the transformed weights (wino_weights(w, us[part], flip, g)): one copy made on one
    thread and read by both crossed between the cores every pass (LeNet's conv2 with the VM's cores on two L3
    caches: 295 KB each way a pass). bias (Opad,) added to the products M[alpha + 1] (A^T's second column is all
    ones: each output gets it once)."""
    n_img, chans, h, w_ = x.shape
    opad = us.shape[3]
    oh, ow = y.shape[2], y.shape[3]
    al = g.shape[0]  # (the points)
    mb = al - (h + 2 * pad - oh)  # (alpha + 1 - k: the top's blocks)
    th, tw = -(-oh // mb), -(-ow // mb)
    hp, wp = mb * th + al - mb, mb * tw + al - mb
    mr = _tile(kind)[0]
    per = th * tw
    tb = _round_up(block * per, mr)
    blocks = -(-n_img // block)
    offs = np.arange(chans)
    qin, qout = np.arange(tb) * cs, np.arange(tb) * opad
    zeros = np.zeros(opad, np.float32)
    sv, sm = _skew(tb * cs), _skew(tb * opad)
    for part in prange(parts):
        u = us[part]
        wino_weights(w, u, flip, g)
        xp, r, v, m, yc, p = _views(scratch[part], hp, wp, cs, tb, opad, per, al * mb * sm, al, mb)
        xp[:] = 0
        v[:] = 0
        for blk in range(part * blocks // parts, (part + 1) * blocks // parts):
            n0 = blk * block
            nb = min(block, n_img - n0)
            for b in range(nb):
                _place(x, n0 + b, xp, wp, pad, cs, zeros)
                _transform_in(xp, wp, cs, th, tw, b * per, sv, r, v, al, mb)
            for e in range(al * al):
                _gemm(kind, v[e * sv:], qin, tb, offs, u[e].reshape(-1), opad, m[e * sm:], qout,
                      bias if e == al + 1 else zeros, zeros[:0], False)
            _transform_out(m, tb, opad, sm, p, al, mb)
            for b in range(nb):
                _transform_rows(p, sm, opad, b * per, th, tw, yc, al, mb)
                _take(yc, tw, opad, y, n0 + b, relu, slope, zeros, mb)


_forward = spread(_forward, 0)  # (the serial build on a slice's thread: compiled only where used)


def _weight_diff(x, dy, pad, kind, cs, opad, block, parts, scratch, s):
    """s[part] (alpha^2, Cr, Opad) = sum over its blocks of V[e]^T dM[e]: V the bottom's transformed blocks (as the
    forward's), dM = A dy A^T the top diff's m x m blocks transformed up to alpha x alpha; K the blocks."""
    n_img, chans, h, w = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    al = 6 if s.shape[1] == 36 else 4  # (the points)
    mb = al - (h + 2 * pad - oh)  # (alpha + 1 - k: the top's blocks)
    th, tw = -(-oh // mb), -(-ow // mb)
    hp, wp = mb * th + al - mb, mb * tw + al - mb
    cr = s.shape[2]
    per = th * tw
    tb = block * per
    blocks = -(-n_img // block)
    row2 = mb * tw * opad
    offs = np.arange(tb) * cs
    qin = np.minimum(np.arange(cr), cs - 1)
    qout = np.arange(cr) * opad
    zeros = np.zeros(opad, np.float32)
    sv, sm = _skew(tb * cs), _skew(tb * opad)
    for part in prange(parts):
        xp, r, v, dm, yc, q = _views(scratch[part], hp, wp, cs, tb, opad, per, al * row2, al, mb)
        xp[:] = 0
        yc[:] = 0
        sp = s[part].reshape(-1)
        sp[:] = 0
        for blk in range(part * blocks // parts, (part + 1) * blocks // parts):
            n0 = blk * block
            nb = min(block, n_img - n0)
            for b in range(nb):
                _place(x, n0 + b, xp, wp, pad, cs, zeros)
                _transform_in(xp, wp, cs, th, tw, b * per, sv, r, v, al, mb)
                _place_top(dy, n0 + b, yc, tw, opad, zeros, mb)
                for ty in range(th):
                    _up(al, mb, yc, mb * ty * row2, row2, q, 0, row2, row2)
                    for tx in range(tw):
                        t = b * per + ty * tw + tx
                        for ek in range(al):
                            _up(al, mb, q, ek * row2 + mb * tx * opad, opad, dm, ek * al * sm + t * opad, sm, opad)
            for e in range(al * al):  # (the blocks past the last image's: zero top diff)
                dm[e * sm + nb * per * opad:e * sm + tb * opad] = 0
                _gemm(kind, v[e * sv:], qin, cr, offs, dm[e * sm:], opad, sp[e * cr * opad:], qout, zeros,
                      sp[e * cr * opad:], True)


_weight_diff = spread(_weight_diff, 0)


def _weights_back(s, dw, g):
    """dw (O, C, k, k) += G^T S G of the parts' sums s (parts, alpha^2, Cr, Opad) (g: G[alpha, k]), in float64, in
    vectors over the filters and channels: whole channels of about BACK_VALUES values at a time (S: m, G^T S: t,
    G^T S G: r), the passes shared out over the threads (on one, LeNet's conv2 took 0.18 ms of its 1.1 ms weight
    gradient)."""
    parts, opad = s.shape[0], s.shape[3]
    out_c, chans, kk = dw.shape[0], dw.shape[1], dw.shape[2]
    al = g.shape[0]
    k, step = chans * opad, max(1, BACK_VALUES // opad) * opad  # (whole channels a pass)
    sf = s.reshape(parts, al * al, -1)
    for pas in prange(-(-k // step)):
        q0 = pas * step
        m, t, r = np.empty((al * al, step)), np.empty((al * kk, step)), np.empty((kk * kk, step))
        n = min(step, k - q0)
        for e in range(al * al):
            _rows(m[e], sf[0, e, q0:q0 + n], 1.0, False)
            for part in range(1, parts):
                _rows(m[e], sf[part, e, q0:q0 + n], 1.0, True)
        for i in range(kk):
            for b in range(al):
                _combine(t[i * al + b], m, g[:, i], b, al, n)  # G^T S
        for i in range(kk):
            for j in range(kk):
                _combine(r[i * kk + j], t, g[:, j], i * al, 1, n)  # (G^T S) G
        for c in range(q0 // opad, (q0 + n) // opad):
            for o in range(out_c):
                for i in range(kk):
                    for j in range(kk):
                        dw[o, c, i, j] += r[i * kk + j, c * opad - q0 + o]


_weights_back = spread(_weights_back, 0)


class WinoPlan:
    """A kxk (5 or 3) stride-1 convolution's Winograd buffers for a bottom (N, C, H, W) and pad on alpha points (6, or
    4 for F(2x2, 3x3)): the tile kind, the channel stride, the images a block, and each part's scratch."""

    def __init__(self, shape, out_c, pad, threads, k=5, al=6):
        n, c, h, w = shape
        self.k, self.al, mb = k, al, al + 1 - k
        self.oh, self.ow, self.th, self.tw, self.hp, self.wp = _geometry(h, w, pad, k, al)
        per = self.th * self.tw
        self.cs = _round_up(c, LANES)
        # the images a block (as for the filters in whole vectors), and the products' rows: their blocks of the top
        self.block = max(1, min(n, BLOCK_VALUES // (al * al * per * max(self.cs, _round_up(out_c, LANES)))))
        self.kind = tile_kind(out_c, np.float32, self.block * per)
        self.mr = CL_TILES[self.kind][0]
        self.opad = _round_up(out_c, CL_TILES[self.kind][1] * LANES)
        self.parts = max(1, min(threads, -(-n // self.block)))
        tb = _round_up(self.block * per, self.mr)
        size = scratch_size(self.hp, self.wp, self.cs, tb, self.opad, per, al * mb * _skew(tb * self.opad), al, mb)
        self.scratch = np.zeros((self.parts, size), np.float32)
        self.u = np.zeros((self.parts, al * al, c, self.opad), np.float32)  # each part's copy (_forward)
        self.bias = np.zeros(self.opad, np.float32)


def wino_forward(x, w, bias, pad, y, plan, relu=False, slope=0.0):
    """y (N, O, OH, OW) = conv(x (N, C, H, W), w (O, C, k, k), pad) + bias (None: no bias)."""
    plan.bias[:] = 0
    if bias is not None:
        plan.bias[:bias.size] = bias
    _forward(x, w, False, G[plan.al, plan.k], plan.u, plan.bias, pad, y, relu, slope, plan.kind, plan.cs, plan.block,
             plan.parts, plan.scratch)


class WinoBack:
    """The weight gradient's buffers for a bottom (N, C, H, W), pad and out_c filters of kxk (as WinoPlan's)."""

    def __init__(self, shape, out_c, pad, threads, k=5, al=6):
        n, c, h, w = shape
        self.k, self.al, mb = k, al, al + 1 - k
        self.oh, self.ow, self.th, self.tw, self.hp, self.wp = _geometry(h, w, pad, k, al)
        per = self.th * self.tw
        self.cs = _round_up(c, LANES)
        self.kind = tile_kind(out_c, np.float32, c)
        mr, nv = CL_TILES[self.kind]
        self.opad = _round_up(out_c, nv * LANES)
        self.cr = _round_up(c, mr)
        self.block = max(1, min(n, BLOCK_VALUES // (al * al * per * max(self.cs, self.opad))))
        self.parts = max(1, min(threads, -(-n // self.block)))
        size = scratch_size(self.hp, self.wp, self.cs, self.block * per, self.opad, per, al * mb * self.tw * self.opad,
                            al, mb)
        self.scratch = np.zeros((self.parts, size), np.float32)
        self.s = np.zeros((self.parts, al * al, self.cr, self.opad), np.float32)


def wino_weight_diff(x, dy, pad, dw, plan):
    """dw (O, C, k, k) += the weight gradient of y = conv(x, w, pad) for the top diff dy."""
    _weight_diff(x, dy, pad, plan.kind, plan.cs, plan.opad, plan.block, plan.parts, plan.scratch, plan.s)
    _weights_back(plan.s, dw, G[plan.al, plan.k])


def wino_data(dy, w, pad, dx, plan):
    """dx (N, C, H, W) = the data gradient of y = conv(x, w, pad) for the top diff dy (N, O, OH, OW); plan:
    WinoPlan(dy.shape, C, k - 1 - pad, threads, k, alpha)."""
    plan.bias[:] = 0
    _forward(dy, w, True, G[plan.al, plan.k], plan.u, plan.bias, plan.k - 1 - pad, dx, False, 0.0, plan.kind, plan.cs,
             plan.block, plan.parts, plan.scratch)
