"""Small elementwise Numba kernels shared by several layer families (on raveled, contiguous arrays).

They write into preallocated outputs, so the layers that use them allocate nothing per iteration.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def scale_into(x, c, out):
    """out = c * x."""
    for i in range(x.size):
        out[i] = c * x[i]


@njit(cache=True, nogil=True)
def add_scaled(x, c, out):
    """out += c * x."""
    for i in range(x.size):
        out[i] += c * x[i]


@njit(cache=True, nogil=True)
def sum_two(a, ca, b, cb, out, relu=False, slope=0.0):
    """out = ca * a + cb * b in one pass (Eltwise SUM of two bottoms); relu: then a ReLU of negative slope
    `slope` (an in-place ReLU above it, folded in inference)."""
    for i in range(out.size):
        v = ca * a[i] + cb * b[i]
        out[i] = v if not relu or v > 0 else v * slope


@njit(cache=True, nogil=True)
def mul_into(x, out):
    """out *= x."""
    for i in range(x.size):
        out[i] *= x[i]


@njit(cache=True, nogil=True)
def max_step(x, k, y, mask, first):
    """Eltwise MAX: with first, y = max(y, x) where ties go to x (bottom 1 beats bottom 0, as in Caffe);
    later bottoms win only when strictly larger. mask holds the winner's index."""
    for i in range(x.size):
        if first:
            if y[i] > x[i]:
                mask[i] = 0
            else:
                y[i] = x[i]
                mask[i] = k
        elif x[i] > y[i]:
            y[i] = x[i]
            mask[i] = k


@njit(cache=True, nogil=True)
def select_grad(dy, mask, k, out):
    """out = dy where mask == k, else 0."""
    for i in range(dy.size):
        out[i] = dy[i] if mask[i] == k else 0.0


@njit(cache=True, nogil=True)
def masked_scale(x, keep, scale, y):
    """Dropout: y = x * scale where keep, else 0."""
    for i in range(x.size):
        y[i] = x[i] * scale if keep[i] else 0.0


@njit(cache=True, nogil=True)
def broadcast_add(x, b, y):
    """x, y (outer, dim, inner); y = x + b[d]."""
    outer, dim, inner = x.shape
    for o in range(outer):
        for d in range(dim):
            bd = b[d]
            for i in range(inner):
                y[o, d, i] = x[o, d, i] + bd


@njit(cache=True, nogil=True, fastmath={"reassoc"})  # the float64 sums vectorize
def channel_sums(dy, out):
    """out[d] += sum over outer and inner of dy (outer, dim, inner)."""
    outer, dim, inner = dy.shape
    for d in range(dim):
        acc = 0.0
        for o in range(outer):
            for i in range(inner):
                acc += dy[o, d, i]
        out[d] += acc


@njit(cache=True, nogil=True)
def sub_into(a, b, out):
    """out = a - b; returns sum of squares (float64)."""
    acc = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        out[i] = d
        acc += d * d
    return acc


@njit(cache=True, nogil=True)
def row_normalize(x, eps, scale_var, y, std):
    """MVN per row of x (rows, n): y = x - mean, divided by (std + eps) when scale_var; std[r] = std + eps."""
    rows, n = x.shape
    for r in range(rows):
        mu = 0.0
        for i in range(n):
            mu += x[r, i]
        mu /= n
        var = 0.0
        for i in range(n):
            d = x[r, i] - mu
            y[r, i] = d
            var += d * d
        s = (var / n) ** 0.5 + eps
        std[r] = s
        if scale_var:
            for i in range(n):
                y[r, i] /= s


@njit(cache=True, nogil=True)
def row_normalize_backward(y, dy, std, scale_var, dx):
    """Caffe's MVN backward: dx = (dy - mean(dy) - mean(dy * y) * y) / (std + eps), or dy - mean(dy)."""
    rows, n = y.shape
    for r in range(rows):
        a = 0.0
        b = 0.0
        for i in range(n):
            a += dy[r, i]
            b += dy[r, i] * y[r, i]
        a /= n
        b /= n
        for i in range(n):
            if scale_var:
                dx[r, i] = (dy[r, i] - a - b * y[r, i]) / std[r]
            else:
                dx[r, i] = dy[r, i] - a


@njit(cache=True, nogil=True)
def sigmoid_xent(x, t, ignore, has_ignore, grad):
    """Stable sigmoid cross-entropy: returns (loss sum, valid count); grad = sigmoid(x) - t (0 if ignored)."""
    loss = 0.0
    valid = 0
    for i in range(x.size):
        if has_ignore and t[i] == ignore:
            grad[i] = 0.0
            continue
        v = x[i]
        pos = 1.0 if v >= 0 else 0.0
        loss -= v * (t[i] - pos) - np.log1p(np.exp(v - 2.0 * v * pos))
        grad[i] = 1.0 / (1.0 + np.exp(-v)) - t[i]
        valid += 1
    return loss, valid


@njit(cache=True, nogil=True)
def reduce_rows(x, op, coeff, out):
    """out[r] = coeff * (sum | sum |x| | sum x^2 | mean) of row r of x (rows, n); op 0..3."""
    rows, n = x.shape
    for r in range(rows):
        acc = 0.0
        for i in range(n):
            v = x[r, i]
            acc += v if op == 0 or op == 3 else abs(v) if op == 1 else v * v
        out[r] = coeff * (acc / n if op == 3 else acc)


@njit(cache=True, nogil=True)
def reduce_rows_backward(x, dy, op, coeff, dx):
    rows, n = x.shape
    for r in range(rows):
        g = dy[r] * coeff
        for i in range(n):
            v = x[r, i]
            if op == 0:
                dx[r, i] = g
            elif op == 1:
                dx[r, i] = g if v > 0 else -g if v < 0 else 0.0
            elif op == 2:
                dx[r, i] = 2.0 * g * v
            else:
                dx[r, i] = g / n

