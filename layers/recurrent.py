"""Recurrent layers with Caffe's semantics (recurrent_layer.cpp, lstm_layer.cpp, rnn_layer.cpp,
lstm_unit_layer.cpp): the arithmetic of Caffe's unrolled nets, computed directly.

Bottoms: x (T, N, ...), cont (T, N) (0 starts a new sequence: the state is reset there), optional x_static
(N, ...), and with recurrent_param.expose_hidden the initial state (LSTM: h_0, c_0; RNN: h_0, each (1, N, H)),
which then also comes out as extra tops (h_T, c_T). As in Caffe, the state carried across batches is a constant
there: no gradient flows back from h_T, c_T, nor into h_0, c_0 (truncated backpropagation through time).
Blobs in Caffe's order, so a Caffe .caffemodel loads:
LSTM W_xc (4H, I), b_c (4H), [W_xc_static (4H, I_s)], W_hc (4H, H) with gates i, f, o, g;
RNN W_xh (H, I), b_h (H), [W_xh_static (H, I_s)], W_hh (H, H), W_ho (H, H), b_o (H).
The input products of all T steps are one matrix product; the recurrence is a loop over T of (N x H) work.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from netspec.errors import LayerError
from .base import Field, Layer, count, register
from .cpu import _cut, _sgemm, add_column_sums, blas_threads, gemm, gemm_acc, num_threads, pooled
from .kernels import sigmoid32, tanh32
from .simd import PIX_MR, PIX_NV, ROWS_MR, VECTOR_BYTES, tile_pixels, tile_rows

FAST_FLOAT32 = True  # LSTM steps in one float32 kernel (lstm_step32); False: NumPy's ufuncs, as for float64
JOINED = True  # the input product inside each step's where the steps run in one call (lstm_forward32_joined)

RECURRENT_FIELDS = (
    Field("num_output", "int", None, "hidden units (H)", minimum=1, required=True),
    Field("weight_filler", "filler", None, "filler of the weight matrices"),
    Field("bias_filler", "filler", None, "filler of the biases"),
    Field("debug_info", "bool", False, "Caffe's unrolled-net debug output (no effect)"),
    Field("expose_hidden", "bool", False, "take the initial state as extra bottoms and give the final state as "
          "extra tops (carry it across batches: truncated backpropagation through time)"),
)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_gates(gate, h_dim):
    """In place on gate (N, 4H) pre-activations: sigmoid on i, f, o, tanh on g (NumPy's vectorized ufuncs: the
    transcendentals are most of a step's work)."""
    s = gate[:, :3 * h_dim]
    np.negative(s, out=s)
    np.exp(s, out=s)
    s += 1
    np.reciprocal(s, out=s)
    np.tanh(gate[:, 3 * h_dim:], out=gate[:, 3 * h_dim:])


@njit(cache=True, nogil=True)
def lstm_cell(gate, keep, c_prev, c):
    """c = f * c_prev + i * g with Caffe's f = cont * sigmoid (0 where cont is 0), f stored back into gate."""
    n, hd = c.shape
    for j in range(n):
        for d in range(hd):
            f = gate[j, hd + d] * keep[j] if keep[j] != 0 else 0
            gate[j, hd + d] = f
            c[j, d] = f * c_prev[j, d] + gate[j, d] * gate[j, 3 * hd + d]


@njit(cache=True, nogil=True, error_model="numpy")
def lstm_step_backward(gate, tc, c_prev, dout, rec, keep, dc, dg):
    """The step's backward: gate (after the nonlinearities, f scaled by cont), tanh(c), c_prev, and the diffs
    reaching h, dh = dout + rec * keep (the top's, and the next step's recurrent product times its cont; an
    empty keep: the last step, dout alone), and c, dc (N, H) -> dg (N, 4H) of the pre-activations; dc becomes
    the diff of c_prev (in place). A row's loops each over few arrays: one loop over all of them stayed scalar
    (a step of 32 x 128: 11.6 -> 4.2 us, the same values)."""
    n, hd = tc.shape
    one = tc.dtype.type(1)
    dh, term = np.empty(hd, tc.dtype), np.empty(hd, tc.dtype)
    for j in range(n):
        gr, tr, pr, dr, dcr, dgr = gate[j], tc[j], c_prev[j], dout[j], dc[j], dg[j]
        if keep.shape[0]:
            k, rr = keep[j], rec[j]
            for d in range(hd):
                dh[d] = dr[d] + rr[d] * k
        else:
            for d in range(hd):
                dh[d] = dr[d]
        for d in range(hd):
            t = tr[d]
            term[d] = dcr[d] + dh[d] * gr[2 * hd + d] * (one - t * t)
        for d in range(hd):
            i = gr[d]
            dgr[d] = term[d] * gr[3 * hd + d] * i * (one - i)
        for d in range(hd):
            f = gr[hd + d]
            dgr[hd + d] = term[d] * pr[d] * f * (one - f)
        for d in range(hd):
            o = gr[2 * hd + d]
            dgr[2 * hd + d] = dh[d] * tr[d] * o * (one - o)
        for d in range(hd):
            g = gr[3 * hd + d]
            dgr[3 * hd + d] = term[d] * gr[d] * (one - g * g)
        for d in range(hd):
            dcr[d] = term[d] * gr[hd + d]


@njit(cache=True, nogil=True, error_model="numpy")  # no zero-division check: it kept the loops scalar (12x)
def lstm_step32(gate, gx, keep, c_prev, c, tc, h, keep_next, hc_next):
    """One float32 step after the recurrent product: gate (N, 4H) += gx; sigmoid on i, f, o and tanh on g in
    place (f times Caffe's cont, 0 where cont is 0); c = f*c_prev + i*g, tc = tanh(c), h = o*tc; and the next
    step's cont*h into hc_next (keep_next: the next step's cont; an empty hc_next after the last step). One pass
    of vectorized float32 arithmetic where NumPy took ten calls."""
    n, hd = c.shape
    zero = np.float32(0)
    for j in range(n):
        k = keep[j]
        gr, xr = gate[j], gx[j]
        for d in range(3 * hd):
            gr[d] = sigmoid32(gr[d] + xr[d])
        g0 = 3 * hd
        for d in range(hd):  # NOTE: range(3 * hd, 4 * hd) stayed scalar (5x)
            gr[g0 + d] = tanh32(gr[g0 + d] + xr[g0 + d])
        cr, tr, hr, pr = c[j], tc[j], h[j], c_prev[j]
        for d in range(hd):  # NOTE: short loops over few arrays each: one over all of them stayed scalar
            gr[hd + d] = gr[hd + d] * k if k != 0 else zero
        for d in range(hd):
            cr[d] = gr[hd + d] * pr[d] + gr[d] * gr[3 * hd + d]
        for d in range(hd):
            tr[d] = tanh32(cr[d])
        for d in range(hd):
            hr[d] = gr[2 * hd + d] * tr[d]
        if hc_next.shape[0]:
            kn = keep_next[j]
            for d in range(hd):
                hc_next[j, d] = kn * h[j, d]


TILE_COLS = PIX_NV * VECTOR_BYTES // 4  # float32 columns of one register tile (32 on AVX-512, 16 on AVX2)


@njit(cache=True, nogil=True)
def pack_panels(b, m):
    """b (k, n) float32 as step_product's tiles read it: n / TILE_COLS panels of (k, TILE_COLS), each contiguous
    (flat), or an empty array where m rows and n columns take no tiles (m < PIX_MR, n not a multiple of TILE_COLS).
    A sequence's weights are packed once for its T steps: the tiles then stream a panel instead of reading a short
    piece of each of b's rows (an LSTM step's 32 x 156 x 512, one Zen 4 core: 83 -> 114 GFLOP/s)."""
    k, n = b.shape
    if m < PIX_MR or n % TILE_COLS:
        return np.empty(0, np.float32)
    bp = np.empty(k * n, np.float32)
    for p in range(n // TILE_COLS):
        for i in range(k):
            for j in range(TILE_COLS):
                bp[(p * k + i) * TILE_COLS + j] = b[i, p * TILE_COLS + j]
    return bp


@njit(cache=True, nogil=True)
def step_product(a, b, c, bp):
    """c (m, n) = a (m, k) @ b (k, n), all C-contiguous float32, on the calling thread: with bp = pack_panels(b, m)
    not empty (b itself then unread), register tiles of ROWS_MR rows where they divide m, else of PIX_MR rows with
    the last overlapping the one before, by TILE_COLS columns (layers/simd.py's tile_rows, tile_pixels); else
    OpenBLAS."""
    m, k = a.shape
    n = c.shape[1]
    if bp.size:
        rows = ROWS_MR if m % ROWS_MR == 0 else PIX_MR  # (tiles of ROWS_MR rows: 1.2x on an LSTM step's 32)
        qs, offs, zeros = np.arange(rows) * k, np.arange(k), np.zeros(n, np.float32)
        af, cf = a.ravel(), c.ravel()
        for p in range(n // TILE_COLS):
            wp = bp[p * (k - 1) * TILE_COLS:]  # (its row i * TILE_COLS + p * TILE_COLS: panel p's row i)
            for r0 in range(0, m, rows):
                r = min(r0, m - rows)
                if rows == ROWS_MR:
                    tile_rows(af, r * k, qs, 0, offs, wp, p * TILE_COLS, TILE_COLS, zeros, cf, r * n, n)
                else:
                    tile_pixels(af, r * k, qs, 0, offs, wp, p * TILE_COLS, TILE_COLS, zeros, cf, r * n, n)
        return
    _sgemm(np.int32(101), np.int32(111), np.int32(111), np.int64(m), np.int64(n), np.int64(k), np.float32(1.0),
           np.int64(a.ctypes.data), np.int64(k), np.int64(b.ctypes.data), np.int64(n), np.float32(0.0),
           np.int64(c.ctypes.data), np.int64(n))


@njit(cache=True, nogil=True)
def lstm_forward32(gx, keep, w_t, c0, gate, c, tc, hc, out):
    """All T float32 steps in one call (no Python between them, no GIL: the slices run side by side): per step
    gate[t] = hc[t] (N, H) @ w_t (H, 4H), then lstm_step32. hc[0] holds cont_0 * h_0 on entry; c0 (N, H)."""
    t_len, n, hd = c.shape
    last = np.empty((0, hd), np.float32)
    bp = pack_panels(w_t, n)
    for t in range(t_len):
        step_product(hc[t], w_t, gate[t], bp)
        c_prev = c[t - 1] if t else c0
        if t + 1 < t_len:
            lstm_step32(gate[t], gx[t], keep[t], c_prev, c[t], tc[t], out[t], keep[t + 1], hc[t + 1])
        else:
            lstm_step32(gate[t], gx[t], keep[t], c_prev, c[t], tc[t], out[t], keep[t], last)


@njit(cache=True, nogil=True)
def lstm_forward32_joined(xh, i_dim, bias, keep, w_t, c0, gate, c, tc, out):
    """lstm_forward32 with the input product inside each step's: gate[t] = xh[t] (N, K) @ w_t (K, 4H), where
    xh[t] holds x_t then cont_t * h_{t-1} (this call writes it for t > 0; xh[0]'s on entry) in its columns
    [i_dim, i_dim + H), and bias (N, 4H) the bias in every row. One product of K >= I+H a step instead of one
    of all steps' inputs (K = I: few columns, slow) whose (T, N, 4H) result each step then read."""
    _joined_steps(xh, i_dim, bias, keep, w_t, pack_panels(w_t, c.shape[1]), c0, gate, c, tc, out)


@njit(cache=True, nogil=True)
def _joined_steps(xh, i_dim, bias, keep, w_t, bp, c0, gate, c, tc, out):
    t_len, n, hd = c.shape
    last = np.empty((0, hd), np.float32)
    for t in range(t_len):
        step_product(xh[t], w_t, gate[t], bp)
        c_prev = c[t - 1] if t else c0
        if t + 1 < t_len:
            lstm_step32(gate[t], bias, keep[t], c_prev, c[t], tc[t], out[t], keep[t + 1],
                        xh[t + 1, :, i_dim:i_dim + hd])
        else:
            lstm_step32(gate[t], bias, keep[t], c_prev, c[t], tc[t], out[t], keep[t], last)


@njit(cache=True, nogil=True)
def pack_joined(w_x, w_hc):
    """[W_x | W_hc | 0]^T (I + H + 1, 4H), the joined steps' weights, as pack_panels' panels, read straight from
    the blobs' W_x (4H, I) and W_hc (4H, H): no transposed copy first (4H a multiple of TILE_COLS)."""
    g, i_dim = w_x.shape
    h = w_hc.shape[1]
    k = i_dim + h + 1
    bp = np.empty(k * g, np.float32)
    for p in range(g // TILE_COLS):
        base = p * k * TILE_COLS
        for j in range(TILE_COLS):
            r = p * TILE_COLS + j
            for i in range(i_dim):
                bp[base + i * TILE_COLS + j] = w_x[r, i]
            for i in range(h):
                bp[base + (i_dim + i) * TILE_COLS + j] = w_hc[r, i]
            bp[base + (k - 1) * TILE_COLS + j] = 0
    return bp


@njit(cache=True, nogil=True)
def lstm_backward32(gate, tc, c, c0, dout, keep, w_hc, dc, rec, dg):
    """All T float32 steps of the backward in one call: rec = dg[t+1] (N, 4H) @ w_hc (4H, H), then
    lstm_step_backward into dg[t]; dc (N, H) zeros on entry (the diff of c_T is not used, as in Caffe)."""
    t_len = c.shape[0]
    bp = pack_panels(w_hc, c.shape[1])
    for t in range(t_len - 1, -1, -1):
        c_prev = c[t - 1] if t else c0
        if t + 1 < t_len:
            step_product(dg[t + 1], w_hc, rec, bp)
            lstm_step_backward(gate[t], tc[t], c_prev, dout[t], rec, keep[t + 1], dc, dg[t])
        else:
            lstm_step_backward(gate[t], tc[t], c_prev, dout[t], rec, keep[t, :0], dc, dg[t])


@njit(cache=True, nogil=True, parallel=True)
def lstm_forward32_chunks(x, h0, keep, w_x, w_hc, bias, c0, xh, gate, c, tc, hb, out):
    """lstm_forward32_joined on S chunks of the N sequences side by side, a thread each (prange): the whole batch in
    one call, without the slices' Python. x (T, N, I) and out (T, N, H) whole; h0 and c0 (S, nc, H) the initial
    state; keep (S, T, nc) cont; W_x (4H, I) and W_hc (4H, H) the blobs'; bias (>= nc, 4H); xh (S, T, nc, I+H+1)
    (its last column ones), gate (S, T, nc, 4H), c, tc, hb (S, T, nc, H): each chunk's buffers. All C-contiguous.
    (Its first compile takes ~9 s with lstm_backward32_chunks, the parallel loop compiling the chunk's kernels
    again inside it; calling them by address from cfuncs instead took longer: the kernels themselves are the
    cost.)"""
    for s in prange(xh.shape[0]):
        _forward_chunk(s, x, h0[s], keep[s], w_x, w_hc, bias, c0[s], xh[s], gate[s], c[s], tc[s], hb[s], out)


@njit(cache=True, nogil=True)
def _forward_chunk(s, x, h0, keep, w_x, w_hc, bias, c0, xh, gate, c, tc, hb, out):
    """Chunk s of lstm_forward32_chunks: its rows of x into xh, its steps, its rows of h into out."""
    t_len, nc, k = xh.shape
    i_dim, hd, n0 = x.shape[2], c.shape[2], s * nc
    _copy_rows(x, n0, xh, 0, nc)
    for j in range(nc):
        for d in range(hd):
            xh[0, j, i_dim + d] = keep[0, j] * h0[j, d]
    bp = pack_joined(w_x, w_hc)  # (each chunk its own: no wait for another thread's)
    _joined_steps(xh, i_dim, bias, keep, w_x, bp, c0, gate, c, tc, hb)  # (w_x: step_product's b, unread)
    _copy_rows(hb, 0, out, n0, nc)


@njit(cache=True, nogil=True)
def _copy_rows(src, s0, dst, d0, rows):
    """dst[t, d0 + j, :w] = src[t, s0 + j, :w] for every t and j < rows (w: the narrower last axis): a chunk's
    rows of a whole-batch (T, N, k) array, or back."""
    w = min(src.shape[2], dst.shape[2])
    for t in range(src.shape[0]):
        for j in range(rows):
            for i in range(w):
                dst[t, d0 + j, i] = src[t, s0 + j, i]


@njit(cache=True, nogil=True, parallel=True)
def lstm_backward32_chunks(gate, tc, c, c0, dout, keep, w_hc, db, dc, rec, dg, xh, dw):
    """lstm_backward32 on the chunks of lstm_forward32_chunks side by side: dout (T, N, H) whole, copied into db
    (S, T, nc, H); dc and rec (S, nc, H) scratch; dg (S, T, nc, 4H); then each chunk's weight gradient
    dw[s] (4H, K) = dg[s]^T xh[s] by OpenBLAS on its thread (one thread of OpenBLAS's own: the caller's to set)."""
    for s in prange(c.shape[0]):
        _backward_chunk(s, gate[s], tc[s], c[s], c0[s], dout, keep[s], w_hc, db[s], dc[s], rec[s], dg[s], xh[s],
                        dw[s])


@njit(cache=True, nogil=True)
def _backward_chunk(s, gate, tc, c, c0, dout, keep, w_hc, db, dc, rec, dg, xh, dw):
    """Chunk s of lstm_backward32_chunks."""
    t_len, nc, hd = c.shape
    g, k = dw.shape[0], dw.shape[1]
    _copy_rows(dout, s * nc, db, 0, nc)
    dc[...] = 0
    lstm_backward32(gate, tc, c, c0, db, keep, w_hc, dc, rec, dg)
    _sgemm(np.int32(101), np.int32(112), np.int32(111), np.int64(g), np.int64(k), np.int64(t_len * nc),
           np.float32(1.0), np.int64(dg.ctypes.data), np.int64(g), np.int64(xh.ctypes.data), np.int64(k),
           np.float32(0.0), np.int64(dw.ctypes.data), np.int64(k))


def _chunks(n, h_dim, threads=None):
    """How many chunks of N sequences the LSTM runs side by side on Numba's threads (lstm_forward32_chunks), or
    0: more than one thread, N divides into one chunk a thread of PIX_MR sequences or more, and every step's
    product takes register tiles (H a multiple of TILE_COLS), and OpenBLAS's CBLAS is callable from the kernels
    (each chunk's weight gradient)."""
    from numba import config, get_num_threads
    k = threads or get_num_threads()
    return k if (k > 1 and not config.DISABLE_JIT and FAST_FLOAT32 and JOINED and n % k == 0 and n // k >= PIX_MR
                 and h_dim % TILE_COLS == 0 and pooled()) else 0


def _one_call(n, h_dim, *arrays):
    """Whether a whole sequence runs as one kernel call: float32 C-contiguous arrays, one thread for this net (the
    slices; with more, each step's product is split over the threads by gemm), and products that step_product
    computes itself (N >= PIX_MR, 4H and H multiples of TILE_COLS) or OpenBLAS's CBLAS callable from kernels."""
    from numba import get_num_threads
    tiles = n >= PIX_MR and h_dim % TILE_COLS == 0
    return (FAST_FLOAT32 and get_num_threads() == 1 and (tiles or pooled())
            and all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays))


def _sum_rows(a):
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


class Recurrent(Layer):
    """The shared part: shapes, blobs, the bottoms' roles."""

    param_block = "recurrent_param"
    fields = RECURRENT_FIELDS
    bottoms = (2, 5)
    tops = (1, 3)
    blocked_bottoms = (1,)  # cont: never a gradient (Caffe refuses one)
    backward_reads = ("bottom",)
    gates = 1       # rows of the hidden transforms per hidden unit (LSTM: 4)
    n_state = 1     # recurrent state blobs (LSTM: h and c)

    time_major_bottoms = (0, 1)  # run as slices, split along N (netspec/net.py Net.replicate)
    carries_state = True  # with expose_hidden, the final state may be named as the initial one: carried over

    def setup(self, bottom_shapes):
        p = self.p
        x, cont = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        exposed = self.n_state if p.expose_hidden else 0
        n_extra = len(bottom_shapes) - 2 - exposed
        if n_extra not in (0, 1):
            raise LayerError(f"takes x, cont, [x_static]{', the initial state' if exposed else ''}: "
                             f"{2 + exposed} or {3 + exposed} bottoms; received {len(bottom_shapes)}", "bottom")
        if len(x) < 2:
            raise LayerError(f"x must be (T, N, ...); received {list(x)}", "bottom")
        t, n = x[:2]
        if cont != (t, n):
            hint = (" (x looks (N, T): Caffe's recurrent layers take time first, (T, N, ...))"
                    if cont == (n, t) else "")
            raise LayerError(f"cont must be (T, N) = {[t, n]} as x's first two axes; received {list(cont)}{hint}",
                             "bottom")
        self.T, self.N, self.I = t, n, count(x, 2)
        self.static = n_extra == 1
        self.Is = count(bottom_shapes[2], 1) if self.static else 0
        if self.static and tuple(bottom_shapes[2])[:1] != (n,):
            raise LayerError(f"x_static must be (N, ...) with N = {n}; received {list(bottom_shapes[2])}", "bottom")
        h = self.H = p.num_output
        # cont and the carried state never get a gradient (Caffe's unrolled net shares their data only)
        self.blocked_bottoms = (1,) + tuple(range(2 + self.static, len(bottom_shapes)))
        for i, s in enumerate(bottom_shapes[2 + self.static:]):
            if tuple(s) != (1, n, h):
                raise LayerError(f"the initial state bottom {i} must be (1, N, num_output) = {[1, n, h]}; received "
                                 f"{list(s)}", "bottom")
        if self.n_tops != 1 + exposed:
            raise LayerError(f"gives {1 + exposed} top(s) (the output{' and the final state' if exposed else ''}); "
                             f"received {self.n_tops}", "top")
        wf, bf = p.weight_filler, p.bias_filler
        g = self.gates * h
        self.blob_shapes = [((g, self.I), wf), ((g,), bf)]
        if self.static:
            self.blob_shapes.append(((g, self.Is), wf))
        self.blob_shapes.append(((g, h), wf))
        self.blob_shapes += self._extra_blobs()
        return [(t, n, h)] + [(1, n, h)] * exposed

    def _extra_blobs(self):
        return []

    def _inputs(self, bottom):
        """(x (T, N, I), cont (T, N), x_static (N, I_s) or None, initial states [(N, H)])."""
        x = bottom[0].data.reshape(self.T, self.N, self.I)
        cont = bottom[1].data.reshape(self.T, self.N)
        xs = bottom[2].data.reshape(self.N, self.Is) if self.static else None
        states = [b.data.reshape(self.N, self.H) for b in bottom[2 + self.static:]]
        return x, cont, xs, states

    def _input_products(self, x, xs):
        """gx (T, N, gates*H) = x W_x^T + b [+ x_static W_static^T], into a buffer kept across passes."""
        w, b = self.blobs[0].data, self.blobs[1].data
        gx, = self._buffers(("gx", self.gates))
        self.gx = gx
        gemm(x.reshape(-1, self.I), w.T, gx.reshape(-1, gx.shape[-1]), bias=b)
        if self.static:
            gx += (xs @ self.blobs[2].data.T)[None]
        return gx

    def _input_backward(self, dg, x, xs, propagate_down, bottom):
        """dg (T, N, gates*H): the gradients of the input products into W_x, b, W_static, x, x_static."""
        flat = dg.reshape(-1, dg.shape[-1])
        gemm_acc(flat.T, x.reshape(-1, self.I), self.blobs[0].diff)
        add_column_sums(flat, self.blobs[1].diff)
        if propagate_down[0]:
            gemm(flat, self.blobs[0].data, bottom[0].diff.reshape(-1, self.I))
        if self.static:
            ds = dg.sum(axis=0)
            self.blobs[2].diff += ds.T @ xs
            if propagate_down[2]:
                bottom[2].diff[...] = (ds @ self.blobs[2].data).reshape(bottom[2].diff.shape)

    def _buffers(self, *specs):
        """The per-pass arrays (T, N, k*H) named in specs [(name, k)], allocated once per shape."""
        shape = (self.T, self.N, self.H)
        out = []
        for name, k in specs:
            a = getattr(self, name, None)
            if a is None or a.shape != shape[:2] + (k * self.H,) or a.dtype != self.dtype:
                a = np.empty(shape[:2] + (k * self.H,), self.dtype)
            out.append(a)
        return out

    @property
    def w_h(self):
        return self.blobs[3 if self.static else 2]

    def chunks_on(self, threads: int) -> bool:
        """Whether this layer shares its batch out over `threads` threads itself (else a net of it trains as
        slices: solvers/replicas.py)."""
        return False


@njit(cache=True, nogil=True, parallel=True)
def add_chunk_sums(dw_chunks, i_dim, h_dim, dwx, dwh, db, parts):
    """dwx (4H, I) += the chunks' dw_chunks (S, 4H, I + H + 1) summed over S (in order, as np.sum), dwh (4H, H)
    += its next H columns, db (4H,) += its last, in `parts` (the threads; numba.get_num_threads() in a kernel
    keeps it out of Numba's cache): each thread the rows of the weights it owns (cpu.owned_ranges,
    which the update follows), where NumPy's sum and adds ran on the calling thread (45 us of a 5.7 ms step, and
    the rows then crossed to the other core for the update): the benchmark's LSTM step 5.95 -> 5.86 ms on one L3,
    6.11 -> 5.90 with the cores apart (alternating in one process)."""
    s_n, rows, k = dw_chunks.shape
    for p in prange(parts):
        acc = np.empty(k, dw_chunks.dtype)
        for r in range(_cut(rows, parts, p), _cut(rows, parts, p + 1)):
            acc[:] = dw_chunks[0, r]
            for s in range(1, s_n):
                other = dw_chunks[s, r]
                for j in range(k):
                    acc[j] += other[j]
            for j in range(i_dim):
                dwx[r, j] += acc[j]
            for j in range(h_dim):
                dwh[r, j] += acc[i_dim + j]
            db[r] += acc[i_dim + h_dim]


@register("LSTM")
class LSTM(Recurrent):
    """Long short-term memory (Caffe's LSTM). Bottoms x (T, N, ...), cont (T, N), [x_static (N, ...)],
    [h_0, c_0 (1, N, H)] -> h (T, N, H) [, h_T, c_T (1, N, H)]."""

    gates, n_state = 4, 2

    def chunks_on(self, threads):
        return self.dtype == np.float32 and not self.static and _chunks(self.N, self.H, threads) > 0

    def forward(self, bottom, top):
        x, cont, xs, states = self._inputs(bottom)
        t_len, n, h_dim = self.T, self.N, self.H
        w_hc = self.w_h.data
        h_prev = states[0] if states else np.zeros((n, h_dim), self.dtype)
        c_prev = states[1] if states else np.zeros((n, h_dim), self.dtype)
        self.c0 = c_prev.copy()
        out = top[0].data.reshape(t_len, n, h_dim)
        float32 = self.dtype == np.float32 and not self.static
        self.chunks = _chunks(n, h_dim) if float32 and x.flags.c_contiguous and out.flags.c_contiguous else 0
        self.joined = (JOINED and float32 and not self.chunks and _one_call(n, h_dim, x, out)
                       and n >= PIX_MR and (4 * h_dim) % TILE_COLS == 0)
        if self.joined or self.chunks:  # the input product inside each step's (lstm_forward32_joined)
            self.gate, self.c, self.tc = self._buffers(("gate", 4), ("c", 1), ("tc", 1))
            i_dim = self.I
            if getattr(self, "xh", None) is None or self.xh.shape != (t_len, n, i_dim + h_dim + 1):
                # [x_t | cont_t h_{t-1} | 1]: the ones' column (its weights zero) gives the bias gradient
                self.xh = np.ones((t_len, n, i_dim + h_dim + 1), np.float32)
                self.w_cat = np.zeros((i_dim + h_dim + 1, 4 * h_dim), np.float32)
                self.bias_rows = np.empty((n, 4 * h_dim), np.float32)
            xh, w_cat = self.xh, self.w_cat
            self.bias_rows[...] = self.blobs[1].data
            if self.chunks:  # S chunks of N/S sequences side by side, a thread each; chunk-major buffers
                ch, nc = self.chunks, n // self.chunks
                self.hb, = self._buffers(("hb", 1))
                keep = cont.reshape(t_len, ch, nc).transpose(1, 0, 2)
                self.keep_chunks = np.ascontiguousarray(keep, dtype=np.float32)
                h0 = np.ascontiguousarray(h_prev, dtype=np.float32).reshape(ch, nc, h_dim)
                lstm_forward32_chunks(x, h0, self.keep_chunks, self.blobs[0].data, w_hc, self.bias_rows,
                                      self.c0.reshape(ch, nc, h_dim),
                                      *(self._chunked(a) for a in (xh, self.gate, self.c, self.tc, self.hb)), out)
                c_last = self._chunked(self.c)[:, t_len - 1]
            else:
                w_cat[:i_dim] = self.blobs[0].data.T
                w_cat[i_dim:i_dim + h_dim] = w_hc.T
                xh[:, :, :i_dim] = x
                keep = np.ascontiguousarray(cont, dtype=np.float32)
                np.multiply(keep[0][:, None], h_prev, out=xh[0, :, i_dim:i_dim + h_dim])
                lstm_forward32_joined(xh, i_dim, self.bias_rows, keep, w_cat, self.c0, self.gate, self.c, self.tc,
                                      out)
                c_last = self.c[t_len - 1]
            if len(top) == 3:
                top[1].data[...] = out[t_len - 1].reshape(top[1].data.shape)
                top[2].data[...] = c_last.reshape(top[2].data.shape)
            return
        gx = self._input_products(x, xs)
        # i, f, o, g after their nonlinearities; c; cont_t * h_{t-1}; tanh(c) (for the backward); kept across passes
        self.gate, self.c, self.hc, self.tc = self._buffers(("gate", 4), ("c", 1), ("hc", 1), ("tc", 1))
        w_t = np.ascontiguousarray(w_hc.T)
        if self.dtype == np.float32 and FAST_FLOAT32:  # one kernel a step (float64, the gradient checks: NumPy's)
            keep = np.ascontiguousarray(cont, dtype=np.float32)
            np.multiply(keep[0][:, None], h_prev, out=self.hc[0])
            if _one_call(n, h_dim, gx, w_t, out):  # all steps in one kernel call
                lstm_forward32(gx, keep, w_t, self.c0, self.gate, self.c, self.tc, self.hc, out)
                c_prev = self.c[t_len - 1]
            else:  # a kernel a step, each step's product split over the threads
                last = np.empty((0, h_dim), np.float32)
                for t in range(t_len):
                    gate = self.gate[t]
                    gemm(self.hc[t], w_t, gate)
                    nxt = t + 1 < t_len
                    lstm_step32(gate, gx[t], keep[t], c_prev, self.c[t], self.tc[t], out[t],
                                keep[t + 1 if nxt else t], self.hc[t + 1] if nxt else last)
                    c_prev = self.c[t]
            h_prev = out[t_len - 1]
        else:
            for t in range(t_len):
                np.multiply(cont[t][:, None], h_prev, out=self.hc[t])
                gate = self.gate[t]
                gemm(self.hc[t], w_t, gate)
                gate += gx[t]
                lstm_gates(gate, h_dim)
                lstm_cell(gate, np.ascontiguousarray(cont[t]), c_prev, self.c[t])
                np.tanh(self.c[t], out=self.tc[t])
                np.multiply(gate[:, 2 * h_dim:3 * h_dim], self.tc[t], out=out[t])
                h_prev, c_prev = out[t], self.c[t]
        if len(top) == 3:
            top[1].data[...] = h_prev.reshape(top[1].data.shape)
            top[2].data[...] = c_prev.reshape(top[2].data.shape)

    def _chunked(self, a):
        """A (T, N, k) buffer seen as the chunks' (S, T, N/S, k) (its values reinterpreted, not moved)."""
        return a.reshape(self.chunks, self.T, self.N // self.chunks, a.shape[-1])

    def backward(self, top, propagate_down, bottom):
        x, cont, xs, states = self._inputs(bottom)
        t_len, n, h_dim = self.T, self.N, self.H
        w_hc = self.w_h.data
        dout = top[0].diff.reshape(t_len, n, h_dim)
        dc_next = np.zeros((n, h_dim), self.dtype)  # NOTE: h_T's and c_T's diffs are not used (Caffe's)
        dg, = self._buffers(("dg", 4))
        self.dg = dg
        rec, keep = np.empty((n, h_dim), self.dtype), np.ascontiguousarray(cont, dtype=self.dtype)
        chunks = getattr(self, "chunks", 0)
        if chunks:  # dg in the chunks' order (S, T, N/S), as xh
            self.db, = self._buffers(("db", 1))
            ch = self._chunked
            k = self.xh.shape[2]
            if getattr(self, "dw_chunks", None) is None or self.dw_chunks.shape != (chunks, 4 * h_dim, k):
                self.dw_chunks = np.empty((chunks, 4 * h_dim, k), np.float32)
            before = blas_threads(1)
            try:
                lstm_backward32_chunks(ch(self.gate), ch(self.tc), ch(self.c),
                                       self.c0.reshape(chunks, -1, h_dim), dout, self.keep_chunks, w_hc, ch(self.db),
                                       dc_next.reshape(chunks, -1, h_dim), rec.reshape(chunks, -1, h_dim), ch(dg),
                                       ch(self.xh), self.dw_chunks)
            finally:
                blas_threads(before)
        elif _one_call(n, h_dim, dout, w_hc, self.gate):  # all steps in one kernel call
            lstm_backward32(self.gate, self.tc, self.c, self.c0, dout, keep, w_hc, dc_next, rec, dg)
        else:
            for t in reversed(range(t_len)):
                c_prev = self.c[t - 1] if t else self.c0
                if t + 1 < t_len:  # the diff reaching h_t through step t+1: (dg_{t+1} W_hc) * cont_{t+1}
                    gemm(dg[t + 1], w_hc, rec)
                lstm_step_backward(self.gate[t], self.tc[t], c_prev, dout[t], rec, keep[t + 1] if t + 1 < t_len
                                   else keep[t, :0], dc_next, dg[t])  # dc_next: in place
        if getattr(self, "joined", False) or chunks:  # the weights' and bias' gradients: dg^T [x | cont h | 1]
            i_dim, flat, k = self.I, dg.reshape(-1, 4 * h_dim), self.xh.shape[2]
            if chunks:
                add_chunk_sums(self.dw_chunks, i_dim, h_dim, self.blobs[0].diff, self.w_h.diff, self.blobs[1].diff,
                               num_threads())
            else:
                if getattr(self, "dw_cat", None) is None or self.dw_cat.shape != (4 * h_dim, k):
                    self.dw_cat = np.empty((4 * h_dim, k), np.float32)
                self.dw_cat[...] = 0
                gemm_acc(flat.T, self.xh.reshape(-1, k), self.dw_cat)
                self.blobs[0].diff += self.dw_cat[:, :i_dim]
                self.w_h.diff += self.dw_cat[:, i_dim:i_dim + h_dim]
                self.blobs[1].diff += self.dw_cat[:, i_dim + h_dim]
            if propagate_down[0]:
                dx = bottom[0].diff.reshape(-1, self.I)
                if chunks:  # rows in the chunks' order, put back after
                    dx = np.empty_like(dx)
                gemm(flat, self.blobs[0].data, dx)
                if chunks:
                    bottom[0].diff.reshape(t_len, chunks, -1, self.I)[...] = \
                        dx.reshape(chunks, t_len, -1, self.I).transpose(1, 0, 2, 3)
            return
        gemm_acc(dg.reshape(-1, 4 * h_dim).T, self.hc.reshape(-1, h_dim), self.w_h.diff)  # one product, all steps
        self._input_backward(dg, x, xs, propagate_down, bottom)


@register("RNN")
class RNN(Recurrent):
    """Caffe's simple recurrent net: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o). Bottoms x (T, N, ...), cont (T, N), [x_static (N, ...)], [h_0 (1, N, H)] ->
    o (T, N, H) [, h_T (1, N, H)]."""

    gates, n_state = 1, 1

    def _extra_blobs(self):
        return [((self.H, self.H), self.p.weight_filler), ((self.H,), self.p.bias_filler)]

    def forward(self, bottom, top):
        x, cont, xs, states = self._inputs(bottom)
        t_len, n, h_dim = self.T, self.N, self.H
        gx = self._input_products(x, xs)
        w_hh, w_ho, b_o = self.w_h.data, self.blobs[-2].data, self.blobs[-1].data
        h_prev = states[0] if states else np.zeros((n, h_dim), self.dtype)
        self.h, self.hc = self._buffers(("h", 1), ("hc", 1))
        out = top[0].data.reshape(t_len, n, h_dim)
        for t in range(t_len):
            self.hc[t] = cont[t][:, None] * h_prev
            self.h[t] = np.tanh(gx[t] + self.hc[t] @ w_hh.T)
            h_prev = self.h[t]
        out[...] = np.tanh(self.h.reshape(-1, h_dim) @ w_ho.T + b_o).reshape(t_len, n, h_dim)
        self.o = out.copy()
        if len(top) == 2:
            top[1].data[...] = h_prev.reshape(top[1].data.shape)

    def backward(self, top, propagate_down, bottom):
        x, cont, xs, states = self._inputs(bottom)
        t_len, n, h_dim = self.T, self.N, self.H
        w_hh, w_ho = self.w_h.data, self.blobs[-2].data
        do = top[0].diff.reshape(t_len, n, h_dim) * (1 - self.o * self.o)
        self.blobs[-2].diff += do.reshape(-1, h_dim).T @ self.h.reshape(-1, h_dim)
        self.blobs[-1].diff += _sum_rows(do)
        dh_out = (do.reshape(-1, h_dim) @ w_ho).reshape(t_len, n, h_dim)
        dh_next = np.zeros((n, h_dim), self.dtype)  # NOTE: h_T's diff is not used (Caffe's)
        da, = self._buffers(("da", 1))
        for t in reversed(range(t_len)):
            da[t] = (dh_out[t] + dh_next) * (1 - self.h[t] * self.h[t])
            self.w_h.diff += da[t].T @ self.hc[t]
            dh_next = (da[t] @ w_hh) * cont[t][:, None]
        self._input_backward(da, x, xs, propagate_down, bottom)


@register("LSTMUnit")
class LSTMUnit(Layer):
    """One LSTM step (Caffe's LSTMUnit). Bottoms c_prev (1, N, H), gates x (1, N, 4H) (i, f, o, g before their
    nonlinearities), cont (1, N) -> c (1, N, H), h (1, N, H). f = cont * sigmoid(x_f), 0 where cont is 0."""

    bottoms = (3, 3)
    tops = (2, 2)
    blocked_bottoms = (2,)
    backward_reads = ("bottom", "top")

    time_major_bottoms = (0, 1, 2)

    def setup(self, bottom_shapes):
        c, x, cont = (tuple(s) for s in bottom_shapes)
        if len(c) != 3 or c[0] != 1:
            raise LayerError(f"c_prev must be (1, N, H); received {list(c)}", "bottom")
        n, h = c[1], c[2]
        if x != (1, n, 4 * h):
            raise LayerError(f"the gate inputs must be (1, N, 4H) = {[1, n, 4 * h]}; received {list(x)}", "bottom")
        if cont != (1, n):
            raise LayerError(f"cont must be (1, N) = {[1, n]}; received {list(cont)}", "bottom")
        self.H = h
        return [c, c]

    def _gates(self, bottom):
        h_dim = self.H
        x = bottom[1].data[0]
        keep = bottom[2].data[0][:, None]
        i, o, g = _sigmoid(x[:, :h_dim]), _sigmoid(x[:, 2 * h_dim:3 * h_dim]), np.tanh(x[:, 3 * h_dim:])
        f = np.where(keep == 0, 0, keep * _sigmoid(x[:, h_dim:2 * h_dim]))
        return i, f, o, g

    def forward(self, bottom, top):
        i, f, o, g = self._gates(bottom)
        c = f * bottom[0].data[0] + i * g
        top[0].data[0] = c
        top[1].data[0] = o * np.tanh(c)

    def backward(self, top, propagate_down, bottom):
        if not (propagate_down[0] or propagate_down[1]):
            return
        h_dim = self.H
        i, f, o, g = self._gates(bottom)
        tanh_c = np.tanh(top[0].data[0])
        dc, dh = top[0].diff[0], top[1].diff[0]
        c_term = dc + dh * o * (1 - tanh_c * tanh_c)
        if propagate_down[0]:
            bottom[0].diff[0] = c_term * f
        if propagate_down[1]:
            dx = bottom[1].diff[0]
            dx[:, :h_dim] = c_term * g * i * (1 - i)
            dx[:, h_dim:2 * h_dim] = c_term * bottom[0].data[0] * f * (1 - f)
            dx[:, 2 * h_dim:3 * h_dim] = dh * tanh_c * o * (1 - o)
            dx[:, 3 * h_dim:] = c_term * i * (1 - g * g)
