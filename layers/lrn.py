"""Local response normalization (Caffe's LRN).

ACROSS_CHANNELS: scale = k + alpha/n * sum of x^2 over n neighbouring channels (zero padded);
WITHIN_CHANNEL: scale = 1 + alpha/n^2 * sum of x^2 over an n x n window (zero padded; k is ignored,
as in Caffe, whose AVE pooling divisor counts the padding). y = x * scale^-beta.
Backward: dx = dy * scale^-beta - 2*alpha*beta/size * x * sum over the same window of dy*y/scale.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from netspec.errors import LayerError
from .base import Field, Layer, register
from .kernels import fast_pow


@njit(cache=True, nogil=True)
def lrn_across_scale(x, size, alpha_over, k, scale):
    """scale (N, C, H, W) = k + alpha_over * sum of x^2 over channels c-pre..c+pre (pre = (size-1)/2): Caffe's
    running sum in x's dtype (channel 0's window added, then each next channel's entering square added and its
    leaving one subtracted), vectorized along the plane."""
    n_img, chans, height, width = x.shape
    plane, pre = height * width, (size - 1) // 2
    xf, sf = x.reshape(n_img, chans, plane), scale.reshape(n_img, chans, plane)
    a, kk = x.dtype.type(alpha_over), x.dtype.type(k)
    for n in range(n_img):
        first = sf[n, 0]
        for q in range(plane):
            first[q] = kk
        for c in range(min(size - pre, chans)):
            xc = xf[n, c]
            for q in range(plane):
                first[q] += a * (xc[q] * xc[q])
        for c in range(1, chans):
            cur, prev = sf[n, c], sf[n, c - 1]
            for q in range(plane):
                cur[q] = prev[q]
            if c + size - 1 - pre < chans:
                xa = xf[n, c + size - 1 - pre]
                for q in range(plane):
                    cur[q] += a * (xa[q] * xa[q])
            if c - 1 - pre >= 0:
                xs = xf[n, c - 1 - pre]
                for q in range(plane):
                    cur[q] -= a * (xs[q] * xs[q])


@njit(cache=True, nogil=True)
def lrn_within_scale(x, size, alpha_over, k, scale):
    n_img, chans, height, width = x.shape
    half = (size - 1) // 2
    for n in range(n_img):
        for c in range(chans):
            for i in range(height):
                for j in range(width):
                    acc = 0.0
                    for ii in range(max(i - half, 0), min(i + half + 1, height)):
                        for jj in range(max(j - half, 0), min(j + half + 1, width)):
                            acc += x[n, c, ii, jj] * x[n, c, ii, jj]
                    scale[n, c, i, j] = k + alpha_over * acc


@njit(cache=True, nogil=True, error_model="numpy")
def lrn_apply(x, scale, neg_beta, y):
    """y = x * scale^-beta in one pass (float32: exp32(-beta log32(scale)), vectorized; NumPy's power took 5.8 of
    CaffeNet norm1's 6 ms forward, with a temporary)."""
    for i in range(x.size):
        y[i] = x[i] * fast_pow(scale[i], neg_beta)


@njit(cache=True, nogil=True, error_model="numpy")
def lrn_across_backward(x, y, scale, dy, size, coeff, beta, dx):
    """dx = dy * scale^-beta - coeff * x * (sum over the window of dy * y / scale), the window's sum running over
    the channels as in Caffe (in x's dtype), vectorized along the plane."""
    n_img, chans, height, width = x.shape
    plane, pre = height * width, (size - 1) // 2
    xf, yf, sf = x.reshape(n_img, chans, plane), y.reshape(n_img, chans, plane), scale.reshape(n_img, chans, plane)
    dyf, dxf = dy.reshape(n_img, chans, plane), dx.reshape(n_img, chans, plane)
    ratio, accum = np.empty((chans, plane), x.dtype), np.empty(plane, x.dtype)
    nb, cf = x.dtype.type(-beta), x.dtype.type(-coeff)
    for n in range(n_img):
        for c in range(chans):
            d, g, yy, sc, r = dxf[n, c], dyf[n, c], yf[n, c], sf[n, c], ratio[c]
            for q in range(plane):
                d[q] = g[q] * fast_pow(sc[q], nb)
                r[q] = g[q] * yy[q] / sc[q]
        for q in range(plane):
            accum[q] = 0
        for c in range(min(size - 1 - pre, chans)):
            r = ratio[c]
            for q in range(plane):
                accum[q] += r[q]
        for c in range(chans):
            if c + size - 1 - pre < chans:
                r = ratio[c + size - 1 - pre]
                for q in range(plane):
                    accum[q] += r[q]
            d, xc = dxf[n, c], xf[n, c]
            for q in range(plane):
                d[q] += cf * (xc[q] * accum[q])
            if c - pre >= 0:
                r = ratio[c - pre]
                for q in range(plane):
                    accum[q] -= r[q]


@njit(cache=True, nogil=True, error_model="numpy")
def lrn_within_backward(x, y, scale, dy, size, coeff, beta, dx):
    n_img, chans, height, width = x.shape
    half = (size - 1) // 2
    nb = x.dtype.type(-beta)
    for n in range(n_img):
        for c in range(chans):
            for i in range(height):
                for j in range(width):
                    acc = 0.0
                    for ii in range(max(i - half, 0), min(i + half + 1, height)):
                        for jj in range(max(j - half, 0), min(j + half + 1, width)):
                            acc += dy[n, c, ii, jj] * y[n, c, ii, jj] / scale[n, c, ii, jj]
                    dx[n, c, i, j] = dy[n, c, i, j] * fast_pow(scale[n, c, i, j], nb) - coeff * x[n, c, i, j] * acc


@register("LRN")
class LRN(Layer):
    """Local response normalization. Bottom (N, C, H, W) -> same."""
    backward_reads = ("top",)

    param_block = "lrn_param"
    fields = (
        Field("local_size", "int", 5, "window size (odd)", minimum=1),
        Field("alpha", "float", 1.0, "scaling of the sum of squares"),
        Field("beta", "float", 0.75, "exponent"),
        Field("norm_region", "enum", "ACROSS_CHANNELS", "window over channels or within a channel",
              choices=("ACROSS_CHANNELS", "WITHIN_CHANNEL")),
        Field("k", "float", 1.0, "additive constant (ACROSS_CHANNELS only)"),
    )

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        if len(s) != 4:
            raise LayerError(f"the bottom must be 4-D (N, C, H, W); received {list(s)}", None)
        if self.p.local_size % 2 == 0:
            raise LayerError(f"local_size must be odd; received {self.p.local_size}; use "
                             f"{self.p.local_size + 1}", "lrn_param.local_size")
        self.across = self.p.norm_region == "ACROSS_CHANNELS"
        n = self.p.local_size
        self.size = n if self.across else n * n
        self.k = float(self.p.k) if self.across else 1.0
        self.scale = None
        return [s]

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.scale is None or self.scale.shape != x.shape or self.scale.dtype != x.dtype:
            self.scale = np.empty_like(x)
            self.x = np.empty_like(x)
        self.x[...] = x
        (lrn_across_scale if self.across else lrn_within_scale)(
            x, self.p.local_size, self.p.alpha / self.size, self.k, self.scale)
        lrn_apply(x.reshape(-1), self.scale.reshape(-1), x.dtype.type(-self.p.beta), top[0].data.reshape(-1))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            coeff = 2.0 * self.p.alpha * self.p.beta / self.size
            (lrn_across_backward if self.across else lrn_within_backward)(
                self.x, top[0].data, self.scale, top[0].diff, self.p.local_size, coeff, self.p.beta,
                bottom[0].diff)
