"""Forward-only convolutions on channels-last blobs, as ONNX Runtime runs a ResNet (its NCHWc layout).

A forward-only net (`run.py predict`, `run.py test`, the trainer's test nets) whose convolutions follow each other
(ResNet's blocks) keeps their tops channels-last between them (netspec/channels_last.py finds such runs): a blob
is (H + 2B, W + 2B, Cs) an image, with a border of B zeros (the padding of the convolutions reading it, written
once) and Cs channels (rounded up to whole vectors of the tiles that write it). A convolution is then one kernel
and no copy: MR output pixels by NV vectors of filters a tile (`simd.tile_cl`), each tap one broadcast value of
the bottom a pixel and NV vectors of the (folded) weights, every lane a filter (a 7x7 plane wastes none, where rows
of 7 filled 7 of 16 lanes), at any stride, the SUM's other bottom and the ReLU applied in registers. A 3x3 of
stride 1 reading 32 channels or more runs as Winograd's F(2x2, 3x3) (16 multiplications for 36; netspec decides).

    ConvPlan(bottom, top, weights, bias, stride, pad, dtype)   a convolution's offsets and packed weights
    WinoPlan(bottom, top, weights, bias, dtype)                a 3x3's as Winograd's: transformed weights
    Program(dtype, images, sub, border)                        a run's steps (buffer, to_cl, conv, window, ...)
    run_program(...)                                           runs them, sub images at a time, in one call
"""
from __future__ import annotations

import numpy as np
from numba import carray, config, njit, prange

from .cpu import SPIN_ROUNDS, _fetch_add, _load_acquire, _pointer_to, _spin_pause, _yield_cpu, num_threads
from .simd import CL_SPEED, CL_TILES, VECTOR_BYTES, tile_cl1, tile_cl2, tile_cl4, wino_in, wino_out


TO_CL, CONV, POOL, BACK, WINDOW, RELU, WINO = 0, 1, 2, 3, 4, 5, 6  # run_program's steps
WIDTH = 24  # int64 a step


@njit(cache=True, nogil=True)
def _tile(kind):
    """(pixels, vectors) of CL_TILES[kind]."""
    mr, nv = CL_TILES[0]
    if kind == 1:
        mr, nv = CL_TILES[1]
    elif kind == 2:
        mr, nv = CL_TILES[2]
    return mr, nv


@njit(cache=True, nogil=True)
def _tasks(op, m, lanes):
    """How many tasks a step has on m images: a convolution's (filter group, image, tile), Winograd's (image, row of
    blocks), a conversion's (image, row), a pooling's images."""
    if op[0] == CONV:
        mr, nv = _tile(op[1])
        return (op[13] // (nv * lanes)) * m * (op[8] // mr)
    if op[0] == WINDOW:
        return m * op[15]
    if op[0] == WINO:
        return m * -(-op[16] // 2)
    return m if op[0] == POOL or op[0] == RELU else m * op[6]


@njit(cache=True, nogil=True)
def _run_tasks(op, cf, t0, t1, mem, ints, params, blobs, images, n0, m, border, lanes, w):
    """Tasks t0..t1-1 of the step op (run_program's row; cf: its coefficients) on the images n0..n0+m-1, by
    thread w."""
    if op[0] == CONV or op[0] == WINO:
        # (the tiles called in one place for both: each inlined and compiled once; Winograd's 16 products a row)
        wino = op[0] == WINO
        kind, taps, opad, count = op[1], op[11], op[13], op[8]
        qin, qout = ints[op[7]:op[7] + count], ints[op[9]:op[9] + count]
        offs, u, bias = ints[op[10]:op[10] + taps], params[op[12]:op[12] + 16 * taps * opad], params[op[14]:]
        vs = op[20] + w * op[21]  # (Winograd's scratch: V, then M)
        ms = vs + 16 * count * taps
        mr, nv = _tile(kind)
        dst = np.empty(4, np.int64)
        task, p = t0, -1
        for r in range((t1 - t0) * 16 if wino else 1):
            if wino:
                task, p = t0 + r // 16, r % 16
                if p == 0:
                    _wino_in(op, task, mem, border, vs)
                a0, a1, k, lx, lo = 0, (opad // (nv * lanes)) * (count // mr), 1, 0, 0
                x, w_, out, res = mem[vs + p * count * taps:], u[p * taps * opad:], mem[ms + p * count * opad:], mem[:0]
                b_ = bias[0 if p == 5 else opad:]  # (the bias with the middle position's product: all four outputs')
                added, ca, cb, relu, slope = False, 1.0, 1.0, False, 0.0
            else:
                a0, a1, k, lx, lo, x, w_, b_, out = t0, t1, m, op[3], op[5], mem[op[2]:], u[:taps * opad], bias, \
                    mem[op[4]:]
                res, added = mem[op[6]:] if op[6] >= 0 else mem[:0], op[6] >= 0
                ca, cb, relu, slope = cf[0], cf[1], op[15] != 0, cf[2]
            tiles = count // mr
            for task_ in range(a0, a1):  # (filter group, image, tile): consecutive ones share the group's weights
                g, rest = task_ // (k * tiles), task_ % (k * tiles)
                n, t = rest // tiles, rest % tiles
                ob, wb = offs, w_
                if not wino:  # (the tile's taps)
                    lo_, hi = ints[op[16] + 2 * t], ints[op[16] + 2 * t + 1]
                    if hi - lo_ < taps:
                        ob, wb = offs[lo_:hi], w_[lo_ * opad:]
                if kind == 0:
                    tile_cl1(x, n * lx, qin, qout, t * mr, ob, wb, g * nv * lanes, opad, b_, out, n * lo, res,
                             added, ca, cb, relu, slope)
                elif kind == 1:
                    tile_cl2(x, n * lx, qin, qout, t * mr, ob, wb, g * nv * lanes, opad, b_, out, n * lo, res,
                             added, ca, cb, relu, slope)
                else:
                    tile_cl4(x, n * lx, qin, qout, t * mr, ob, wb, g * nv * lanes, opad, b_, out, n * lo, res,
                             added, ca, cb, relu, slope)
            if p == 15:
                _wino_out(op, cf, task, mem, border, ms, dst)
        return
    if op[0] == WINDOW:
        _window_rows(op, t0, t1, mem, border)
        return
    if op[0] == RELU:
        slope = mem.dtype.type(cf[2])
        for n in range(t0, t1):
            x = mem[op[2] + n * op[3]:op[2] + (n + 1) * op[3]]
            for i in range(x.size):
                x[i] = x[i] if x[i] > 0 else x[i] * slope
        return
    off, size, row, cs, height, width, chans = op[2], op[3], op[4], op[5], op[6], op[7], op[8]
    one = op[0] == POOL  # (its top (N, C, 1, 1))
    y = carray(_pointer_to(blobs[op[1]], mem), (images, chans, 1 if one else height, 1 if one else width))
    if op[0] == POOL:
        div = y.dtype.type(height * width)
        acc = np.zeros(cs, mem.dtype)
        for n in range(t0, t1):
            acc[:] = 0
            for i in range(height):
                at = off + n * size + ((border + i) * row + border) * cs
                for j in range(width):
                    acc += mem[at + j * cs:at + (j + 1) * cs]
            for c in range(chans):
                y[n0 + n, c, 0, 0] = acc[c] / div
        return
    for p in range(t0, t1):
        n, i = p // height, p % height
        at = off + n * size + ((border + i) * row + border) * cs
        x = mem[at:at + width * cs]
        if op[0] == TO_CL:
            for j in range(width):  # (a pixel's channels written together)
                for c in range(chans):
                    x[j * cs + c] = y[n0 + n, c, i, j]
        else:
            for c in range(chans):  # (a row of a plane written together)
                for j in range(width):
                    y[n0 + n, c, i, j] = x[j * cs + c]


@njit(cache=True, nogil=True)
def _window_rows(op, t0, t1, mem, border):
    """MAX or AVE pooling's output rows t0..t1-1 (of the images of the part) between channels-last blobs, a
    pixel's channels together: Caffe's windows (MAX: clipped to the image, NaN never taken; AVE: the sum, row-major
    from zero, divided by the window's size counted with the padding)."""
    ave, xo, lx, oo, lo, cs = op[1] == 1, op[2], op[3], op[4], op[5], op[6]
    kh, kw, sh, sw, ph, pw, height, width, oh, ow = (op[7], op[8], op[9], op[10], op[11], op[12], op[13], op[14],
                                                     op[15], op[16])
    irow, orow = width + 2 * border, ow + 2 * border
    lowest, zero = mem.dtype.type(-3.4028234663852886e38), mem.dtype.type(0)
    acc = np.empty(cs, mem.dtype)
    for p in range(t0, t1):
        n, oy = p // oh, p % oh
        hs = oy * sh - ph
        he = min(hs + kh, height + ph)
        for ox in range(ow):
            ws = px0 = ox * sw - pw
            we = min(ws + kw, width + pw)
            size = mem.dtype.type((he - hs) * (we - ws))
            h0, h1, w0, w1 = max(hs, 0), min(he, height), max(px0, 0), min(we, width)
            if not ave:
                h1, w1 = min(hs + kh, height), min(ws + kw, width)
            for c in range(cs):
                acc[c] = zero if ave else lowest
            for i in range(h0, h1):
                for j in range(w0, w1):
                    src = xo + n * lx + ((border + i) * irow + border + j) * cs
                    x = mem[src:src + cs]  # (indexed from 0 on, the loops over the channels run in vectors)
                    if ave:
                        for c in range(cs):
                            acc[c] += x[c]
                    else:
                        for c in range(cs):
                            acc[c] = x[c] if x[c] > acc[c] else acc[c]
            dst = oo + n * lo + ((border + oy) * orow + border + ox) * cs
            y = mem[dst:dst + cs]
            for c in range(cs):
                y[c] = acc[c] / size if ave else acc[c]


@njit(cache=True, nogil=True)
def _wino_in(op, task, mem, border, vs):
    """Winograd's F(2x2, 3x3) (Lavin and Gray 2016) of a 3x3, stride 1, pad 1 convolution, a row of 2x2 blocks of
    the top a task (of the images of the part): each block from the 4x4 block of the bottom around it, its values
    transformed a channel at a time (V = B^T d B, in vectors over the channels) into scratch at mem[vs:] (V[p, t,
    c], 16 positions p); then (_run_tasks) 16 products of the row's blocks by the channels with the transformed
    weights (U = G g G^T, packed by WinoPlan) on the convolution tiles, and _wino_out: 16 multiplications where
    the direct convolution makes 36."""
    xo, lx, tpad, c, oh, ow, cs = op[2], op[3], op[8], op[11], op[16], op[17], op[18]
    th, row = -(-oh // 2), ow + 2 * border
    n, ty = task // th, task % th
    xb = xo + n * lx + ((border + 2 * ty - 1) * row + border - 1) * cs
    for tx in range(-(-ow // 2)):
        wino_in(mem, xb + 2 * tx * cs, row * cs, cs, mem, vs + tx * c, tpad * c, c)


@njit(cache=True, nogil=True)
def _wino_out(op, cf, task, mem, border, ms, dst):
    """_wino_in's row of blocks transformed back from the products M[p, t, o] at mem[ms:] (Y = A^T M A), the SUM and
    ReLU applied as the convolution tiles apply them, the outputs of each 2x2 block that are in the top stored."""
    oo, lo, ro, tpad, opad, oh, ow, ocs = op[4], op[5], op[6], op[8], op[13], op[16], op[17], op[19]
    th, orow = -(-oh // 2), ow + 2 * border
    n, ty = task // th, task % th
    for tx in range(-(-ow // 2)):
        mask = 0
        for i in range(2):
            for j in range(2):
                dst[2 * i + j] = oo + n * lo + ((border + 2 * ty + i) * orow + border + 2 * tx + j) * ocs
                if 2 * ty + i < oh and 2 * tx + j < ow:
                    mask |= 1 << (2 * i + j)
        wino_out(mem, ms + tx * opad, tpad * opad, opad, mem, dst, mask, mem, ro - oo, ro >= 0, cf[0], cf[1],
                 op[15] != 0, mem.dtype.type(cf[2]))


@njit(cache=True, nogil=True, parallel=True)
def run_program(ops, coeffs, mem, ints, params, blobs, images, sub, border, threads, counts):
    """A run's steps, sub images at a time, in one parallel region (a region a step cost ~1.25 us on two threads,
    and the threads' shares of a step could not even out): each thread takes chunks of its share of a step's tasks
    (a counter each, atomically), then of the others' shares left, then waits until all are done (a last counter)
    before the next step. Its own share first keeps the blobs it wrote in its core's cache; a thread that the OS
    runs late finds the steps done by the others (no barrier waits for it). mem holds the channels-last blobs (each
    sub images of L values: (H+2B) x (W+2B) x Cs, its border B zeros), blobs the addresses (int64; Program's call
    holds the arrays) of the run's blobs in Caffe's layout (N, C, H, W); counts: 8 (threads + 1) int64 a step and
    part of the images. A row of ops (int64) is a step:
      TO_CL, blob, off, L, row (W+2B), Cs, H, W, C: blobs[blob] into the interior of mem[off:]
      CONV, tile kind, x off, Lx, out off, Lo, res off (-1: none), at of qin, P, at of qout, at of offs, K, at of w,
            Opad, at of bias, relu, at of the tiles' tap ranges: out[n, qout[p] + o] = epilogue(bias[o] + sum_k
            w[k, o] * x[n, qin[p] + offs[k]]), k over the tile's kernel rows that read inside the bottom
            with qin, qout, offs in ints and w (K, Opad), bias in params (ConvPlan's), coeffs[step] = (ca, cb,
            slope): t = ca * conv + cb * res where res, then a leaky ReLU where relu
      POOL, blob, off, L, row, Cs, H, W, C: global AVE pooling (Caffe's order of sums) into blobs[blob] (N, C, 1, 1)
      BACK, blob, off, L, row, Cs, H, W, C: the interior of mem[off:] into blobs[blob]
      WINDOW, AVE (1) or MAX (0), x off, Lx, out off, Lo, Cs, KH, KW, SH, SW, PH, PW, H, W, OH, OW: pooling
            (_window_rows)
      RELU, 0, off, L: a leaky ReLU in place (coeffs[step][2] its slope)
      WINO, tile kind, x off, Lx, out off, Lo, res off, at of qin, Tpad, at of qout, at of offs, C, at of U, Opad,
            at of the bias (then Opad zeros), relu, OH, OW, x's Cs, out's Cs, scratch off, scratch a thread: a 3x3
            convolution as CONV's, as Winograd's F(2x2, 3x3) (WinoPlan; _wino_in, _wino_out), a task a row of
            2x2 blocks of an image."""
    lanes = VECTOR_BYTES // mem.itemsize
    steps = ops.shape[0]
    rounds = -(-images // sub) * steps
    line = 8 * (threads + 1)  # a round's counters: each thread's share's claimed tasks, then all tasks done
    counts[:line * rounds] = 0
    for w in prange(threads):
        for q in range(rounds):
            s, n0 = q % steps, (q // steps) * sub
            m = min(sub, images - n0)
            total = _tasks(ops[s], m, lanes)
            chunk = max(1, total // (4 * threads))
            for k in range(threads):  # its own share first (the blobs it wrote stay in its core's cache), then
                r = (w + k) % threads  # the others' left
                first, end = r * total // threads, (r + 1) * total // threads
                while True:
                    t0 = first + _fetch_add(counts, line * q + 8 * r, chunk)
                    if t0 >= end:
                        break
                    t1 = min(t0 + chunk, end)
                    _run_tasks(ops[s], coeffs[s], t0, t1, mem, ints, params, blobs, images, n0, m, border, lanes,
                               w)
                    _fetch_add(counts, line * q + 8 * threads, t1 - t0)
            spins = 0
            while _load_acquire(counts, line * q + 8 * threads) < total:
                spins += 1
                if spins < SPIN_ROUNDS:
                    _spin_pause()
                else:
                    _yield_cpu()


def tile_kind(out_c, dtype, pixels) -> int:
    """The tile (CL_TILES' index) for out_c filters on planes of `pixels`: the one computing the fewest values
    with the tiles whole (pixels rounded up to its rows, filters to its vectors; weighed by the tile's CL_SPEED), of
    those the one of more vectors
    (ResNets' 7x7 planes of 64 filters: 7 x 2 at 116 GFLOP/s a Zen 4 core against 4 x 4's 109 and 5 x 4's 109; 8x8:
    4 x 4 at 116)."""
    vectors = -(-out_c // (VECTOR_BYTES // np.dtype(dtype).itemsize))
    return min(range(len(CL_TILES)), key=lambda k: (tile_cost(k, pixels, vectors), -CL_TILES[k][1]))


def tile_cost(kind, pixels, vectors) -> float:
    """The values tile `kind` computes for `pixels` by `vectors` (rounded up to whole tiles), over its CL_SPEED."""
    mr, nv = CL_TILES[kind]
    return -(-pixels // mr) * mr * -(-vectors // nv) * nv / CL_SPEED[kind]


class ConvPlan:
    """A convolution's constant part between channels-last blobs: the pixel and tap offsets and the packed
    weights. bottom (H, W, C, B, Cs): the bottom's plane, channels, border and channel stride; top likewise;
    weights (O, C, KH, KW), bias (O,); stride, pad (pairs)."""

    def __init__(self, bottom, top, weights, bias, stride, pad, dtype):
        h, w, c, bb, cs = bottom
        oh, ow, o, tb, ocs = top
        kh, kw = weights.shape[2:]
        self.kind = tile_kind(o, dtype, oh * ow)
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
        # each tile's taps [lo, hi): the kernel rows that some pixel of it reads inside the bottom (those reading
        # only the padding add zeros: CIFAR-10 quick's 5x5 on 8x8 planes 15% of its taps)
        rows = np.concatenate([ys, np.full(extra, ys[-1])]).reshape(-1, mr) * stride[0] - pad[0]
        first = np.clip(-rows.max(axis=1), 0, kh)  # (the kernel rows of the tile's lowest pixel row start later)
        last = np.clip(h - rows.min(axis=1), 0, kh)
        self.taps = np.stack([first * kw * c, np.maximum(last, first) * kw * c], axis=1).reshape(-1).astype(np.int64)


class WinoPlan:
    """A 3x3, stride 1, pad 1 convolution as Winograd's F(2x2, 3x3) between channels-last blobs (_wino_in,
    _wino_out): the transformed weights U (16, C, Opad) = G g G^T, the bias then zeros (Opad each), the offsets of the
    product
    (a row's blocks by the channels). bottom (H, W, C, B, Cs), top likewise (the border B >= 2 on odd planes)."""
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])

    def __init__(self, bottom, top, weights, bias, dtype):
        h, w, c, bb, cs = bottom
        oh, ow, o, tb, ocs = top
        lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
        # the product's tile: the fewest values computed for a row's blocks (tw) by the filters, within the top's
        # channel stride
        tw, vectors = -(-ow // 2), -(-o // lanes)
        fits = [k for k, (mr, nv) in enumerate(CL_TILES) if -(-vectors // nv) * nv * lanes <= ocs]
        self.kind = min(fits, key=lambda k: (tile_cost(k, tw, vectors), -CL_TILES[k][1]))
        mr, nv = CL_TILES[self.kind]
        self.opad = -(-vectors // nv) * nv * lanes
        assert (h, w) == (oh, ow) and c % lanes == 0 and min(bb, tb) >= 1 + max(oh % 2, ow % 2), \
            "channels-last blobs not laid out for the Winograd convolution"
        self.tpad = -(-tw // mr) * mr  # a row's blocks, whole tiles
        self.qin = (np.arange(self.tpad) * c).astype(np.int64)
        self.qout = (np.arange(self.tpad) * self.opad).astype(np.int64)
        self.offs = np.arange(c, dtype=np.int64)
        u = np.einsum("ai,ocij,bj->abco", self.G, weights.astype(np.float64), self.G).reshape(16, c, o)
        self.u = np.zeros((16, c, self.opad), dtype)
        self.u[:, :, :o] = u
        self.bias = np.zeros(2 * self.opad, dtype)
        self.bias[:o] = bias
        self.scratch = 16 * self.tpad * (c + self.opad)  # values a thread: V then M


class Program:
    """A run's steps for run_program, built in order: buffer() a channels-last blob, to_cl(), conv(), window(),
    relu(), pool(), back(); then call() runs them all in one call (a Numba call costs ~2 us: ResNet-20 has 21
    convolutions)."""

    def __init__(self, dtype, images, sub, border):
        self.dtype, self.images, self.sub, self.border = np.dtype(dtype), images, sub, border
        self.size, self.ops, self.coeffs, self.ints, self.params, self.blobs = 0, [], [], [], [], []
        self.scratch = 0  # values a thread (the Winograd steps' V and M)
        self._ints_at = self._params_at = 0

    def buffer(self, height, width, chans):
        """A channels-last blob of sub images (H, W, Cs): (its offset in mem, L, row, Cs, H, W)."""
        row = width + 2 * self.border
        size = (height + 2 * self.border) * row * chans
        at, self.size = self.size, self.size + self.sub * size
        return at, size, row, chans, height, width

    def _blob(self, y):
        assert y.flags.c_contiguous and y.dtype == self.dtype and y.shape[0] == self.images, "a run's blob"
        self.blobs.append(y)
        return len(self.blobs) - 1

    def _step(self, row, coeffs=(1.0, 1.0, 0.0)):
        self.ops.append(list(row) + [0] * (WIDTH - len(row)))
        self.coeffs.append(coeffs)

    def _put(self, kind, values):
        store, at = (self.ints, "_ints_at") if kind == "ints" else (self.params, "_params_at")
        where = getattr(self, at)
        store.append(np.ascontiguousarray(values).reshape(-1))
        setattr(self, at, where + store[-1].size)
        return where

    def to_cl(self, y, buf):
        self._step((TO_CL, self._blob(y)) + buf + (y.shape[1],))

    def pool(self, buf, y):
        self._step((POOL, self._blob(y)) + buf + (y.shape[1],))

    def back(self, buf, y):
        self._step((BACK, self._blob(y)) + buf + (y.shape[1],))

    def window(self, x, out, ave, geometry):
        """MAX (ave False) or AVE pooling between buffers of one channel stride; geometry (kh, kw, sh, sw, ph, pw)."""
        self._step((WINDOW, int(ave), x[0], x[1], out[0], out[1], x[3]) + tuple(geometry) + (x[4], x[5], out[4],
                   out[5]))

    def relu(self, buf, slope=0.0):
        """A ReLU (leaky where slope) in place on a buffer."""
        self._step((RELU, 0, buf[0], buf[1]), (1.0, 1.0, slope))

    def conv(self, x, out, plan, res=None, ca=1.0, cb=1.0, relu=False, slope=0.0):
        """x, out, res: buffers (res laid out as out); plan: the ConvPlan between them."""
        assert res is None or res[1:] == out[1:], "the SUM's other bottom laid out as the top"
        self._step((CONV, plan.kind, x[0], x[1], out[0], out[1], -1 if res is None else res[0],
                    self._put("ints", plan.qin), len(plan.qin), self._put("ints", plan.qout),
                    self._put("ints", plan.offs), len(plan.offs), self._put("params", plan.w), plan.w.shape[1],
                    self._put("params", plan.bias), int(relu), self._put("ints", plan.taps)), (ca, cb, slope))

    def wino(self, x, out, plan, res=None, ca=1.0, cb=1.0, relu=False, slope=0.0):
        """A WinoPlan's convolution between buffers (as conv())."""
        assert res is None or res[1:] == out[1:], "the SUM's other bottom laid out as the top"
        self.scratch = max(self.scratch, plan.scratch)
        self._step((WINO, plan.kind, x[0], x[1], out[0], out[1], -1 if res is None else res[0],
                    self._put("ints", plan.qin), plan.tpad, self._put("ints", plan.qout), self._put("ints", plan.offs),
                    len(plan.offs), self._put("params", plan.u), plan.opad, self._put("params", plan.bias), int(relu),
                    out[4], out[5], x[3], out[3], 0, 0), (ca, cb, slope))

    def call(self):
        """The function that runs the steps (the buffers' borders zeroed once, here)."""
        ops = np.array(self.ops, np.int64)
        ops[ops[:, 0] == WINO, 20:22] = self.size, self.scratch  # (each thread's scratch after the blobs)
        threads_max = config.NUMBA_NUM_THREADS
        args = (ops, np.array(self.coeffs, np.float64), np.zeros(self.size + threads_max * self.scratch, self.dtype),
                np.concatenate([np.zeros(0, np.int64)] + self.ints).astype(np.int64),
                np.concatenate([np.zeros(0, self.dtype)] + self.params).astype(self.dtype),
                np.array([y.ctypes.data for y in self.blobs], np.int64), self.images, self.sub, self.border)
        blobs = self.blobs  # (held here: run_program reads and writes them by address)
        counts = {}

        def call():
            threads = num_threads()
            if threads not in counts:
                counts[threads] = np.zeros(8 * (threads + 1) * -(-self.images // self.sub) * len(self.ops), np.int64)
            run_program(*args, threads, counts[threads])
        call.blobs = blobs
        return call
