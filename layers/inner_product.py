"""InnerProduct (fully connected).

Bottom (M, K...) flattened from `axis` on to (M, K) -> top (M, num_output).
weight (num_output, K), or (K, num_output) with transpose; bias (num_output,); y = x W^T + b.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .base import Field, Layer, count, register
from .cpu import SMALL_PRODUCT, add_column_sums, gemm, gemm_acc, gemm_k_parts, num_threads, pooled, spread


@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract"})
def row_times_rows(x, w, bias, has_bias, y):
    """y[j] = sum_i x[i] * w[j, i] (+ bias[j]): a row x (K,) times the transposed weights w (N, K), four outputs a
    step, the outputs split over the threads (each core reads its rows of w, which stay in its own cache from one
    call to the next: LeNet's ip1, 800 -> 500, at a batch of one 25 -> 13 us against NumPy's gemv)."""
    n, k = w.shape
    zero = y.dtype.type(0)
    for b in prange((n + 3) // 4):
        j0 = b * 4
        if j0 + 4 <= n:
            a0, a1, a2, a3 = zero, zero, zero, zero
            for i in range(k):
                xi = x[i]
                a0 += xi * w[j0, i]
                a1 += xi * w[j0 + 1, i]
                a2 += xi * w[j0 + 2, i]
                a3 += xi * w[j0 + 3, i]
            y[j0], y[j0 + 1], y[j0 + 2], y[j0 + 3] = a0, a1, a2, a3
        else:
            for j in range(j0, n):
                acc = zero
                for i in range(k):
                    acc += x[i] * w[j, i]
                y[j] = acc
        if has_bias:
            for j in range(j0, min(j0 + 4, n)):
                y[j] += bias[j]


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def rows_times_rows(x, w, bias, has_bias, y):
    """y (M, N) = x (M, K) times the transposed weights w (N, K) (+ bias (N,)): row_times_rows for a few rows, on
    the calling thread. For tiny products (under cpu.SMALL_PRODUCT multiply-adds) of a forward-only net: NumPy's
    matmul took 4 us for resnet_fashion's classifier at batch 32 alone but 25 in the net (OpenBLAS's buffers,
    left out of the caches by the convolutions before it); this takes ~2."""
    m, (n, k) = x.shape[0], w.shape
    zero = y.dtype.type(0)
    for r in range(m):
        for j0 in range(0, n - n % 4, 4):
            a0, a1, a2, a3 = zero, zero, zero, zero
            for i in range(k):
                xi = x[r, i]
                a0 += xi * w[j0, i]
                a1 += xi * w[j0 + 1, i]
                a2 += xi * w[j0 + 2, i]
                a3 += xi * w[j0 + 3, i]
            y[r, j0], y[r, j0 + 1], y[r, j0 + 2], y[r, j0 + 3] = a0, a1, a2, a3
        for j in range(n - n % 4, n):
            acc = zero
            for i in range(k):
                acc += x[r, i] * w[j, i]
            y[r, j] = acc
        if has_bias:
            for j in range(n):
                y[r, j] += bias[j]


def _transposed_add(yt, bias, has_bias, y):
    """y (M, N) = yt.T (+ bias (N,)) for yt (N, M): in blocks of 16 x 16 whose reads stay in L1 (NumPy's
    strided add of the transposed view took 60-120 us of the MLP's 128 x 512 layers, a fifth of their product)."""
    n, m = yt.shape
    for b in prange((m + 15) // 16):
        i0 = b * 16
        i1 = min(m, i0 + 16)
        for j0 in range(0, n, 16):
            j1 = min(n, j0 + 16)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    y[i, j] = yt[j, i] + bias[j] if has_bias else yt[j, i]


transposed_add = spread(_transposed_add, 1 << 14)


BOUND_COPY = 16 << 20  # the most weight bytes a forward-only InnerProduct copies to lay them out (bound_forward)
# A training batch of up to this many rows computes y^T = W x^T and adds the bias to its transpose: BLAS packs the
# weights (N, K) as they lie, not as the columns of W^T (one thread: LeNet's ip1 at 32 rows 558 -> 381 us, the
# MLP's 784 -> 512 at 64 rows 871 -> 681, 4096 -> 4096 at 32 rows 1.38x; even from 256 rows on)
TRANSPOSED_ROWS = 128
# weights from which the bottom diff runs on gemm_k_parts (InnerProduct._by_rows): below, too few cross between
# the cores to pay for compiling its two kernels in a cold start (lenet_digits' 256 x 200 ip1: 0.8 s more)
K_PARTS_MIN = 1 << 17


@register("InnerProduct")
class InnerProduct(Layer):
    """Fully connected layer. Bottom (d0..d_{axis-1}, K...) -> top (d0..d_{axis-1}, num_output)."""
    backward_reads = ("bottom",)
    k_parts = True  # the bottom diff with the weights' rows cut over the threads where it applies (_by_rows)

    param_block = "inner_product_param"
    fields = (
        Field("num_output", "int", None, "number of outputs", minimum=1, required=True),
        Field("bias_term", "bool", True, "learn a bias per output"),
        Field("weight_filler", "filler", None, "filler of the weights (Caffe's default: constant 0)"),
        Field("bias_filler", "filler", None, "filler of the bias (default constant 0)"),
        Field("axis", "int", 1, "the first axis to flatten into the inner product", minimum=1),
        Field("transpose", "bool", False, "store the weight as (K, num_output) and compute x W"),
    )

    def setup(self, bottom_shapes):
        shape, p = bottom_shapes[0], self.p
        axis = min(p.axis, len(shape))
        self.m, self.k = count(shape, 0, axis), count(shape, axis)
        self.blob_shapes = [((self.k, p.num_output) if p.transpose else (p.num_output, self.k), p.weight_filler)]
        if p.bias_term:
            self.blob_shapes.append(((p.num_output,), p.bias_filler))
        return [tuple(shape[:axis]) + (p.num_output,)]

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.m, self.k)
        y = top[0].data.reshape(self.m, -1)
        w = self.blobs[0].data
        bias = self.blobs[1].data if self.p.bias_term else None
        if (self.p.transpose or not 1 < self.m <= TRANSPOSED_ROWS or y.shape[1] < 32 or not w.flags.c_contiguous
                or x.dtype != w.dtype):
            gemm(x, w if self.p.transpose else w.T, y, bias=bias)
            return
        yt = getattr(self, "_yt", None)
        if yt is None or yt.shape != y.shape[::-1] or yt.dtype != y.dtype:
            yt = self._yt = np.empty(y.shape[::-1], y.dtype)
        gemm(w, x.T, yt)
        transposed_add(yt, w[0] if bias is None else bias, bias is not None, y)

    def bound_forward(self, bottom, top):
        """Layer.bound_forward: a batch of one on row_times_rows, a tiny product on rows_times_rows; a batch of
        more with the weights laid out (K, N) once, up to BOUND_COPY bytes of them (one thread, batch 32, LeNet's
        ip1: 514 -> 349 us, NumPy's product reading the transposed view's columns), or None."""
        w = self.blobs[0].data
        if self.p.transpose or w.dtype not in (np.float32, np.float64) or not w.flags.c_contiguous:
            return None
        if self.m != 1:
            if w.nbytes > BOUND_COPY:
                return None
            x, y = bottom[0].data.reshape(self.m, self.k), top[0].data.reshape(self.m, -1)
            if self.m * w.size < SMALL_PRODUCT and x.dtype == y.dtype == w.dtype and x.flags.c_contiguous \
                    and y.flags.c_contiguous:  # a tiny product (a classifier of few classes): on this thread
                bias, has_bias = (self.blobs[1].data, True) if self.p.bias_term else (w[0], False)
                return lambda: rows_times_rows(x, w, bias, has_bias, y)
            wt, bias = w.T.copy(), self.blobs[1].data if self.p.bias_term else None
            return lambda: gemm(x, wt, y, bias=bias)
        x, y = bottom[0].data.reshape(-1), top[0].data.reshape(-1)
        bias, has_bias = (self.blobs[1].data, True) if self.p.bias_term else (w[0], False)
        if not (x.dtype == y.dtype == bias.dtype == w.dtype and x.flags.c_contiguous and y.flags.c_contiguous):
            return None
        return lambda: row_times_rows(x, w, bias, has_bias, y)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.m, -1)
        x = bottom[0].data.reshape(self.m, self.k)
        w = self.blobs[0]
        if self.p.transpose:
            gemm_acc(x.T, dy, w.diff)
        else:
            gemm_acc(dy.T, x, w.diff)
        if self.p.bias_term:
            add_column_sums(dy, self.blobs[1].diff)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.m, self.k)
            if self._by_rows(dy, w.data, dx):
                return
            gemm(dy, w.data.T if self.p.transpose else w.data, dx)

    def _by_rows(self, dy, w, dx):
        """dx = dy w with w's rows cut over the threads (cpu.gemm_k_parts), as the forward and the weight
        gradient cut them and the update follows (cpu.owned_ranges), so that no thread reads rows of w that the
        other writes; False where it does not apply (one thread, float64, small). On the VM's far-apart cores
        (benchmarks/README.md) the MLP's step 3.85 -> 3.46 ms and LeNet's 7.72 -> 7.39, on one L3 ~1% faster."""
        threads = num_threads()
        if (not self.k_parts or self.p.transpose or threads < 2 or dx.dtype != np.float32 or not pooled()
                or not (dy.flags.c_contiguous and w.flags.c_contiguous and dx.flags.c_contiguous)
                or w.shape[0] < 32 * threads or w.size < K_PARTS_MIN or self.m < 16):
            return False
        scratch = getattr(self, "_scratch", None)
        if scratch is None or scratch.shape != (threads - 1,) + dx.shape:
            scratch = self._scratch = np.empty((threads - 1,) + dx.shape, np.float32)
        gemm_k_parts(self.m, self.k, w.shape[0], dy.ctypes.data, dy.shape[1], w.ctypes.data, w.shape[1], dx,
                     scratch, threads)
        return True
