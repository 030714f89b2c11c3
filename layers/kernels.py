"""Small elementwise Numba kernels shared by several layer families (on raveled, contiguous arrays).

They write into preallocated outputs, so the layers that use them allocate nothing per iteration.

In place (the output is the input): LLVM vectorizes a loop over two arrays only after a run-time check that they
do not overlap, and the same array twice fails it, so the loop runs scalar (3-25x slower). Kernels that may run in
place test `same(x, y)` and then run a loop over the one array.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types, uintp
from numba.extending import intrinsic, overload

from .cpu import spread


@njit(cache=True, nogil=True, inline="always")
def same(a, b):
    """Whether a and b start at the same address (a kernel called in place)."""
    return a.ctypes.data == b.ctypes.data


@njit(cache=True, nogil=True)
def refresh_copies(arrays, copy, starts):
    """Whether any of the flat integer arrays (float arrays' bit patterns) differs from its copy at
    copy[starts[k]:starts[k + 1]]; the copies of those that do are refreshed. Each compared without an early exit
    (the loop vectorizes; NaNs compare by their bits)."""
    changed = False
    for k in range(len(arrays)):
        a, at = arrays[k], starts[k]
        if a.size == 0:
            continue
        diff = a[0] ^ a[0]
        for i in range(a.size):
            diff |= a[uintp(i)] ^ copy[uintp(at + i)]
        if diff != 0:
            copy[at:at + a.size] = a
            changed = True
    return changed


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (a bit cast: no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _bits_of_float32(typingctx, value):
    """The IEEE bits of a float32, as an int32 (a bit cast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(value), codegen


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def log32(x):
    """log of a positive float32 in float32 arithmetic alone (Cephes' logf: x = m 2^e from its bits, m in
    [sqrt(1/2), sqrt(2)), a degree-9 polynomial in m - 1): vectorized. x <= 0 and denormals give the log of the
    smallest normal float (-87.3) instead of -inf or NaN; inf and NaN are not handled (the callers' values are
    finite and positive)."""
    x = max(x, np.float32(1.17549435e-38))
    bits = _bits_of_float32(x)
    e = np.float32((bits >> np.int32(23)) - np.int32(126))
    m = _float32_from_bits((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000))  # [0.5, 1)
    if m < np.float32(0.707106781186547524):
        e -= np.float32(1.0)
        m = m + m - np.float32(1.0)
    else:
        m = m - np.float32(1.0)
    z = m * m
    y = np.float32(7.0376836292e-2) * m + np.float32(-1.1514610310e-1)
    y = y * m + np.float32(1.1676998740e-1)
    y = y * m + np.float32(-1.2420140846e-1)
    y = y * m + np.float32(1.4249322787e-1)
    y = y * m + np.float32(-1.6668057665e-1)
    y = y * m + np.float32(2.0000714765e-1)
    y = y * m + np.float32(-2.4999993993e-1)
    y = y * m + np.float32(3.3333331174e-1)
    y = y * m * z
    y += e * np.float32(-2.12194440e-4)
    y -= np.float32(0.5) * z
    return m + y + e * np.float32(0.693359375)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def exp32(x):
    """exp in float32 arithmetic alone (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial in r,
    times 2^n from its bits): vectorized, where libm's expf runs one value at a time. inf above 88.72, 0 below
    -87.34 (no denormals); NaN stays NaN."""
    if x > np.float32(88.72283):
        return np.float32(np.inf)
    if x < np.float32(-87.33654):
        return np.float32(0.0)
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    k = np.int32(n)
    h = k >> np.int32(1)  # 2^n as 2^h 2^(n-h): both normal floats over the whole range
    scale = _float32_from_bits((h + np.int32(127)) << np.int32(23))
    return p * scale * _float32_from_bits((k - h + np.int32(127)) << np.int32(23)) if x == x else x


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def tanh32(x):
    """tanh in float32 arithmetic alone (Eigen's rational approximation, a few ulp): LLVM vectorizes it, where
    libm's tanhf runs one value at a time. NaN stays NaN."""
    lim = np.float32(7.90531110763549805)
    x = -lim if x < -lim else (lim if x > lim else x)
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = x2 * p + np.float32(-8.60467152213735e-11)
    p = x2 * p + np.float32(5.12229709037114e-08)
    p = x2 * p + np.float32(1.48572235717979e-05)
    p = x2 * p + np.float32(6.37261928875436e-04)
    p = x2 * p + np.float32(4.89352455891786e-03)
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = x2 * q + np.float32(2.26843463243900e-03)
    q = x2 * q + np.float32(4.89352518554385e-03)
    return x * p / q


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def sigmoid32(x):
    """1 / (1 + exp(-x)) in float32 arithmetic alone, through exp32: accurate relative to the value also where it
    is tiny (0.5 + 0.5 tanh(x / 2) loses it all below about -17)."""
    one = np.float32(1.0)
    return one / (one + exp32(-x))


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def erfc32(x):
    """erfc in float32 arithmetic through exp32 (Numerical Recipes' erfcc, a Chebyshev fit with a relative error
    below 1.2e-7 in exact arithmetic: accurate relative to the value also far in the tail, where 1 - erf is
    not); vectorized, where math.erfc runs one value at a time in float64."""
    z = abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * z)
    p = np.float32(0.17087277) * t + np.float32(-0.82215223)
    p = p * t + np.float32(1.48851587)
    p = p * t + np.float32(-1.13520398)
    p = p * t + np.float32(0.27886807)
    p = p * t + np.float32(-0.18628806)
    p = p * t + np.float32(0.09678418)
    p = p * t + np.float32(0.37409196)
    p = p * t + np.float32(1.00002368)
    p = p * t + np.float32(-1.26551223)
    zh = np.floor(z * np.float32(16.0)) * np.float32(0.0625)  # z^2 = zh^2 (exact) + (z - zh)(z + zh), as Cephes
    r = t * exp32(-zh * zh) * exp32(p - (z - zh) * (z + zh))  # does: z^2 rounded cost ~1e-5 in the far tail
    return r if x >= 0 else np.float32(2.0) - r


def fast_tanh(x):
    """tanh: tanh32 for float32 (vectorized), NumPy's exact tanh otherwise (float64: the gradient checks)."""
    return np.tanh(x)


@overload(fast_tanh)
def _fast_tanh(x):
    if x == types.float32:
        return lambda x: tanh32(x)
    return lambda x: np.tanh(x)


def fast_sigmoid(x):
    """1 / (1 + exp(-x)): sigmoid32 for float32 (vectorized), exact otherwise."""
    return 1.0 / (1.0 + np.exp(-x))


@overload(fast_sigmoid)
def _fast_sigmoid(x):
    if x == types.float32:
        return lambda x: sigmoid32(x)
    return lambda x: 1.0 / (1.0 + np.exp(-x))


def fast_pow(x, p):
    """x ** p for x > 0: exp32(p log32(x)) for float32 (vectorized; within a few ulp), x ** p otherwise."""
    return x ** p


@overload(fast_pow, inline="always")  # inlined by Numba: LLVM left this larger body a call, and the loop scalar
def _fast_pow(x, p):
    if x == types.float32 and p == types.float32:
        return lambda x, p: exp32(p * log32(x))
    return lambda x, p: x ** p


def fast_log(x):
    """log: log32 for float32 (vectorized) with libm's ends (log 0 = -inf, log inf = inf, NaN below 0), NumPy's
    log otherwise."""
    return np.log(x)


@overload(fast_log, inline="always")
def _fast_log(x):
    if x == types.float32:
        def impl(x):
            r = log32(x)
            r = np.float32(-np.inf) if x == np.float32(0.0) else r
            r = np.float32(np.inf) if x == np.float32(np.inf) else r
            return r if x > np.float32(0.0) or x == np.float32(0.0) else np.float32(np.nan)
        return impl
    return lambda x: np.log(x)


def fast_log1p(u):
    """log(1 + u): for float32 through log32 (log(w) u / (w - 1), w = 1 + u rounded: accurate for small u too),
    NumPy's log1p otherwise."""
    return np.log1p(u)


@overload(fast_log1p, inline="always")
def _fast_log1p(u):
    if u == types.float32:
        def impl(u):
            w = np.float32(1.0) + u
            return u if w == np.float32(1.0) else log32(w) * (u / (w - np.float32(1.0)))
        return impl
    return lambda u: np.log1p(u)


def fast_exp(x):
    """exp: exp32 for float32 (vectorized), NumPy's exact exp otherwise."""
    return np.exp(x)


@overload(fast_exp)
def _fast_exp(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: np.exp(x)


# Elementwise passes: on Numba's threads where a net runs its batch whole and the array is large, on the calling
# thread in a slice of a batch (cpu.spread; the same values either way). ResNet-20's Eltwise SUMs and Split
# backwards, serial, took twice a slice's time in a whole batch on two threads.
ELEMENTWISE_SPREAD = 1 << 17


def _scale_into(x, c, out):
    """out = c * x."""
    for i in prange(x.size):
        out[i] = c * x[i]


def _add_scaled(x, c, out):
    """out += c * x."""
    for i in prange(x.size):
        out[i] += c * x[i]


def _add_two(a, b, out):
    """out = a + b (a Split's backward: the diffs of its two tops)."""
    for i in prange(out.size):
        out[i] = a[i] + b[i]


def _sum_two(a, ca, b, cb, out, relu=False, slope=0.0):
    """out = ca * a + cb * b in one pass (Eltwise SUM of two bottoms); relu: then a ReLU of negative slope
    `slope` (an in-place ReLU above it, folded in inference)."""
    for i in prange(out.size):
        v = ca * a[i] + cb * b[i]
        out[i] = v if not relu or v > 0 else v * slope


def _sum_into(y, ca, b, cb, relu=False, slope=0.0):
    """sum_two(y, ca, b, cb, y, relu, slope) with y read and written as one array (sum_two called so fails
    LLVM's overlap check and runs scalar: 2-3x slower)."""
    for i in prange(y.size):
        v = ca * y[i] + cb * b[i]
        y[i] = v if not relu or v > 0 else v * slope


scale_into, add_scaled = spread(_scale_into, ELEMENTWISE_SPREAD), spread(_add_scaled, ELEMENTWISE_SPREAD)
add_two, sum_two = spread(_add_two, ELEMENTWISE_SPREAD), spread(_sum_two, ELEMENTWISE_SPREAD)
sum_into = spread(_sum_into, ELEMENTWISE_SPREAD)


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
    """Dropout: y = x * scale where keep, else 0 (in place too)."""
    if same(x, y):
        for i in range(y.size):
            y[i] = y[i] * scale if keep[i] else 0.0
        return
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


def _channel_sums(dy, out):
    """out[d] += sum over outer and inner of dy (outer, dim, inner)."""
    outer, dim, inner = dy.shape
    for d in prange(dim):
        acc = 0.0
        for o in range(outer):
            for i in range(inner):
                acc += dy[o, d, i]
        out[d] += acc


# the float64 sums vectorize; the channels shared out to the threads of a net running whole
channel_sums = spread(_channel_sums, 1 << 17, fastmath={"reassoc"})


@njit(cache=True, nogil=True)
def sub_into(a, b, out):
    """out = a - b; returns sum of squares (float64)."""
    acc = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        out[i] = d
        acc += d * d
    return acc


@njit(cache=True, nogil=True, fastmath={"reassoc"})  # the float64 sums vectorize (partial sums per lane)
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


@njit(cache=True, nogil=True, fastmath={"reassoc"})
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


@njit(cache=True, nogil=True, error_model="numpy")
def sigmoid_xent(x, t, ignore, has_ignore, grad):
    """Stable sigmoid cross-entropy: returns (loss sum, valid count); grad = sigmoid(x) - t (0 if ignored). Each
    value's loss max(x, 0) - x t + log(1 + exp(-|x|)) and gradient in one vectorized pass (float32: exp32, log1p
    through log32), then the sum in float64 over the values not ignored."""
    n = x.size
    terms = np.empty(n, x.dtype)
    zero, one = x.dtype.type(0), x.dtype.type(1)
    for i in range(n):
        v = x[i]
        e = fast_exp(-abs(v))  # (0, 1]: no overflow on either side
        terms[i] = max(v, zero) - v * t[i] + fast_log1p(e)
        grad[i] = (one if v >= 0 else e) / (one + e) - t[i]
    loss = 0.0
    valid = 0
    for i in range(n):
        if has_ignore and t[i] == ignore:
            grad[i] = 0.0
            continue
        loss += terms[i]
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

