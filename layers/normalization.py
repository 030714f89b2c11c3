"""BatchNorm, as Caffe computes it (no learned scale or shift: follow it with Scale).

Bottom (N, C, ...) -> top of the same shape, normalized per channel over N and the spatial axes.
Blobs: [0] running mean sum (C,), [1] running variance sum (C,), [2] scale factor (1,); the
statistics are mean = blob0 / blob2 and var = blob1 / blob2 (0 when blob2 is 0). They are not
learned (lr_mult 0) but updated in TRAIN: s = maf*s + 1, mean_sum = mu + maf*mean_sum,
var_sum = m/(m-1)*var + maf*var_sum (the unbiased variance is stored; the biased one normalizes).
Run as one of k slices of a batch (solvers/replicas.py), the per-channel sums (of x, of (x - mean)^2, and
backward's of dy and dy*y) are summed over the slices (layers/base.BatchSync) and m counts the whole batch.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from netspec.errors import LayerError
from .base import Field, Layer, count, register
from .cpu import spread
from .kernels import broadcast_add, channel_sums, row_normalize, row_normalize_backward

BN_SPREAD = 1 << 15  # values in a bottom from which a whole batch's BatchNorm shares its channels over the threads


# The kernels below share their channels (the sums) or their images (the rest) over Numba's threads where a net
# runs its batch whole, and run on the calling thread in a slice of a batch (cpu.spread): each channel's sums are
# added in the same order either way, so both builds give the same bits. (Serial, a whole batch's BatchNorm was 43% of
# MobileNet's pass on two threads.)
def _bn_sums_and_squares(x, out):
    """out[c] = sum of x (N, C, inner) over N and inner, out[C + c] = sum of x^2, in float64: one pass (and, for
    the slices of a batch, one wait) where the centered squares took a second after the mean. The variance
    from them, sum x^2 / m - mean^2, loses about mean^2 / var x 1e-16 of itself (Caffe's float32: x 1e-7)."""
    n_img, chans, inner = x.shape
    for c in prange(chans):
        a = 0.0
        b = 0.0
        for n in range(n_img):
            for i in range(inner):
                v = np.float64(x[n, c, i])
                a += v
                b += v * v
        out[c] = a
        out[chans + c] = b


bn_sums_and_squares = spread(_bn_sums_and_squares, BN_SPREAD, fastmath={"reassoc"})  # (the float64 sums vectorize)


@njit(cache=True, nogil=True)
def bn_update_statistics(mu, sq, m, maf, correction, eps, mean, var, inv_std, mean_sum, var_sum, scale):
    """After the sums over the batch: mean = mu, var = sq / m (the biased variance), inv_std =
    1 / sqrt(var + eps), and Caffe's running sums: scale = scale * maf + 1, mean_sum = mean_sum * maf + mean,
    var_sum = var_sum * maf + correction * var. The constants in the blobs' dtype, each product and sum rounded
    to it, as the NumPy statements this replaces (a dozen calls, ~50 us a layer, with the GIL held)."""
    one = mean.dtype.type(1)
    scale[0] = scale[0] * maf + one
    for c in range(mean.shape[0]):
        mean[c] = mu[c]
        var[c] = sq[c] / m
        inv_std[c] = one / np.sqrt(var[c] + eps)
        mean_sum[c] = mean_sum[c] * maf + mean[c]
        var_sum[c] = var_sum[c] * maf + correction * var[c]


# In place (top on bottom), a kernel given the same array twice runs scalar: LLVM's vector loop is guarded by a
# check that the arrays do not overlap, and they do (3-4x slower on ResNet-20's BatchNorm + Scale). Each such
# kernel is therefore an inlined row body called by two kernels: one for distinct arrays, one that passes its one
# array twice, where LLVM sees a single pointer and vectorizes.
@njit(cache=True, nogil=True, inline="always")
def _bn_normalize_image(x, mean, inv_std, y, n):
    for c in range(x.shape[1]):
        mu, s = mean[c], inv_std[c]
        for i in range(x.shape[2]):
            y[n, c, i] = (x[n, c, i] - mu) * s


def _bn_normalize(x, mean, inv_std, y):
    """y = (x - mean) * inv_std per channel; x, y (N, C, inner)."""
    for n in prange(x.shape[0]):
        _bn_normalize_image(x, mean, inv_std, y, n)


def _bn_normalize_in_place(x, mean, inv_std):
    """_bn_normalize with y = x."""
    for n in prange(x.shape[0]):
        _bn_normalize_image(x, mean, inv_std, x, n)


@njit(cache=True, nogil=True, inline="always")
def _bn_scale_image(x, mean, inv_std, s, b, has_bias, xhat, y, relu, slope, n):
    for c in range(x.shape[1]):
        mu, k, sc = mean[c], inv_std[c], s[c]
        bc = b[c] if has_bias else 0.0
        if relu:
            for i in range(x.shape[2]):
                v = (x[n, c, i] - mu) * k
                xhat[n, c, i] = v
                y[n, c, i] = v * sc + bc
                w = y[n, c, i]  # (the Scale's top as stored, then the ReLU's own arithmetic)
                y[n, c, i] = w if w > 0 else w * slope
        else:
            for i in range(x.shape[2]):
                v = (x[n, c, i] - mu) * k
                xhat[n, c, i] = v
                y[n, c, i] = v * sc + bc


def _bn_scale_forward(x, mean, inv_std, s, b, has_bias, xhat, y, relu=False, slope=0.0):
    """BatchNorm and the per-channel Scale above it in one pass: xhat = (x - mean) * inv_std (kept for the
    backward), y = xhat * s (+ b); relu: then an in-place ReLU above them (negative slope `slope`, in x's type)."""
    for n in prange(x.shape[0]):
        _bn_scale_image(x, mean, inv_std, s, b, has_bias, xhat, y, relu, slope, n)


def _bn_scale_forward_in_place(x, mean, inv_std, s, b, has_bias, xhat, relu=False, slope=0.0):
    """bn_scale_forward with y = x."""
    for n in prange(x.shape[0]):
        _bn_scale_image(x, mean, inv_std, s, b, has_bias, xhat, x, relu, slope, n)


def _bn_backward_sums_relu(y, d, top, slope, s1, s2):
    """relu_backward_in_place (an in-place ReLU above: d = d where its top > 0, else d * slope) and
    bn_backward_sums of the result, in one pass."""
    n_img, chans, inner = y.shape
    for c in prange(chans):
        a = 0.0
        b = 0.0
        for n in range(n_img):
            for i in range(inner):
                v = d[n, c, i]
                g = v if top[n, c, i] > 0 else v * slope
                d[n, c, i] = g
                a += g
                b += g * y[n, c, i]
        s1[c] = a
        s2[c] = b


def _bn_backward_sums(y, dy, s1, s2):
    """s1[c] = sum(dy), s2[c] = sum(dy * y) per channel, in float64 (y is the normalized top)."""
    n_img, chans, inner = y.shape
    for c in prange(chans):
        a = 0.0
        b = 0.0
        for n in range(n_img):
            for i in range(inner):
                a += dy[n, c, i]
                b += dy[n, c, i] * y[n, c, i]
        s1[c] = a
        s2[c] = b


@njit(cache=True, nogil=True, inline="always")
def _bn_backward_image(y, dy, a, b, inv_std, dx, n):
    for c in range(y.shape[1]):
        ac, bc, s = a[c], b[c], inv_std[c]
        for i in range(y.shape[2]):
            dx[n, c, i] = (dy[n, c, i] - ac - bc * y[n, c, i]) * s


def _bn_backward_apply(y, dy, a, b, inv_std, dx):
    """dx = (dy - a - b * y) * inv_std per channel, a = mean(dy), b = mean(dy * y) (float64)."""
    for n in prange(y.shape[0]):
        _bn_backward_image(y, dy, a, b, inv_std, dx, n)


def _bn_backward_apply_in_place(y, d, a, b, inv_std):
    """bn_backward_apply with dx = dy = d."""
    for n in prange(y.shape[0]):
        _bn_backward_image(y, d, a, b, inv_std, d, n)


bn_normalize, bn_normalize_in_place = spread(_bn_normalize, BN_SPREAD), spread(_bn_normalize_in_place, BN_SPREAD)
bn_scale_forward = spread(_bn_scale_forward, BN_SPREAD)
bn_scale_forward_in_place = spread(_bn_scale_forward_in_place, BN_SPREAD)
bn_backward_sums_relu = spread(_bn_backward_sums_relu, BN_SPREAD, fastmath={"reassoc"})
bn_backward_sums = spread(_bn_backward_sums, BN_SPREAD, fastmath={"reassoc"})
bn_backward_apply = spread(_bn_backward_apply, BN_SPREAD)
bn_backward_apply_in_place = spread(_bn_backward_apply_in_place, BN_SPREAD)


@register("BatchNorm")
class BatchNorm(Layer):
    """Normalize each channel. Shapes: (N, C, ...) -> same."""

    param_block = "batch_norm_param"
    fields = (
        Field("use_global_stats", "bool", None, "normalize with the stored statistics (default: in TEST only)"),
        Field("moving_average_fraction", "float", 0.999, "decay of the running statistics", minimum=0, maximum=1),
        Field("eps", "float", 1e-5, "added to the variance", exclusive_minimum=0),
    )
    in_place_ok = True
    statistics = True  # its blobs are running statistics: lr_mult and decay_mult are 0 and must stay 0
    syncable = True    # as slices of a batch, each sums its statistics over all of them (BatchSync)
    sync = None        # (slice index, BatchSync) when it runs as one slice of a batch

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        self.channels = s[1] if len(s) > 1 else 1
        self.view = (s[0], self.channels, count(s, 2)) if len(s) > 1 else (s[0], 1, 1)
        self.m = count(s) // self.channels
        if self.p.use_global_stats is False and self.phase == "TEST":
            self.warnings.append(("use_global_stats: false in the TEST net normalizes each test batch with its "
                                  "own statistics (results depend on the batch) and updates the running averages; "
                                  "remove use_global_stats and let the phase decide", "batch_norm_param.use_global_stats"))
        const0 = {"type": "constant", "value": 0}
        self.blob_shapes = [((self.channels,), const0), ((self.channels,), const0), ((1,), const0)]
        return [s]

    @property
    def backward_reads(self):
        """The normalized top (Caffe keeps it as x_norm_), unless the stored statistics are always used."""
        return () if self.p.use_global_stats else ("top",)

    def batch_coupling(self):
        return None if self.global_stats else "it normalises with the mean and variance of the whole batch"

    @property
    def global_stats(self) -> bool:
        """Read at forward time: the phase decides unless use_global_stats is set."""
        return self.phase == "TEST" if self.p.use_global_stats is None else self.p.use_global_stats

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        self._statistics(x)
        if bottom[0] is top[0]:
            bn_normalize_in_place(x, self.mean, self.inv_std)
        else:
            bn_normalize(x, self.mean, self.inv_std, top[0].data.reshape(self.view))

    def forward_scaled(self, bottom, top, scale, xhat, relu=None):
        """This BatchNorm (batch statistics) and the in-place per-channel Scale above it in one pass, as the net
        runs them in training (Net._plan_fusion): xhat (N, C, ...) gets the normalized values, which both
        backwards read, and the top xhat * s + b; relu: the negative slope of an in-place ReLU above them, applied
        in the same pass. Results equal forward() then scale.forward() (then the ReLU's forward)."""
        x = bottom[0].data.reshape(self.view)
        self._statistics(x)
        s = scale.blobs[0].data.ravel()
        b = scale.blobs[1].data.ravel() if scale.p.bias_term else s
        r = (relu is not None, x.dtype.type(relu or 0.0))
        if bottom[0] is top[0]:
            bn_scale_forward_in_place(x, self.mean, self.inv_std, s, b, scale.p.bias_term, xhat.reshape(self.view),
                                      *r)
        else:
            bn_scale_forward(x, self.mean, self.inv_std, s, b, scale.p.bias_term, xhat.reshape(self.view),
                             top[0].data.reshape(self.view), *r)

    def backward_scaled(self, top, propagate_down, bottom, scale, xhat, relu=None):
        """scale.backward() then this backward in two passes over (dy, xhat): one for the channel sums of dy and
        dy * xhat (the Scale's gradients, and BatchNorm's from the same sums times s), one for dx. relu: (the
        in-place ReLU's top, its negative slope) when its backward runs here too: its gradient written over dy
        in the first pass (one pass less over the top diff than the ReLU on its own)."""
        dy = top[0].diff.reshape(self.view)
        y = xhat.reshape(self.view)
        c = self.channels
        sums = self._sums
        if relu is not None:
            bn_backward_sums_relu(y, dy, relu[0].reshape(self.view), dy.dtype.type(relu[1]), sums[:c], sums[c:])
        else:
            bn_backward_sums(y, dy, sums[:c], sums[c:])
        ds = scale.blobs[0].diff.reshape(-1)
        ds += sums[c:]  # this slice's own: the solver sums the slices' parameter gradients
        if scale.p.bias_term:
            db = scale.blobs[1].diff.reshape(-1)
            db += sums[:c]
        if not propagate_down[0]:
            return
        both, m = self._total(2, sums)
        k = (scale.blobs[0].data.ravel() * self.inv_std).astype(self.inv_std.dtype)
        dx = bottom[0].diff.reshape(self.view)
        if np.may_share_memory(dx, dy):  # in place (a stand-in holds the copy as data, the same diff)
            bn_backward_apply_in_place(y, dy, both[:c] / m, both[c:] / m, k)
        else:
            bn_backward_apply(y, dy, both[:c] / m, both[c:] / m, k, dx)

    def _statistics(self, x):
        """self.mean, self.var, self.inv_std for x (N, C, inner): the batch's (summed over the slices), the
        running sums updated; or the stored ones."""
        mean_sum, var_sum, scale = (b.data for b in self.blobs)
        self.used_global = self.global_stats
        if getattr(self, "mean", None) is None or self.mean.dtype != x.dtype:
            self.mean, self.var = np.empty(self.channels, x.dtype), np.empty(self.channels, x.dtype)
            self._sums = np.empty(2 * self.channels)  # float64 channel sums: [x | x^2], or the gradient's two
        mean, var = self.mean, self.var
        if self.used_global:
            f = 0.0 if scale[0] == 0 else 1.0 / scale[0]
            np.multiply(mean_sum, f, out=mean)
            np.multiply(var_sum, f, out=var)
            self.inv_std = (1.0 / np.sqrt(var + self.p.eps)).astype(x.dtype)
            return
        c = self.channels
        bn_sums_and_squares(x, self._sums)
        total, m = self._total(0, self._sums)  # one wait for both sums
        mu = total[:c] / m
        sq = np.maximum(total[c:] - mu * total[:c], 0.0)  # the sum of (x - mu)^2
        self.inv_std = np.empty(self.channels, x.dtype)  # NOTE: a new array: a folded copy may hold the last one
        t = x.dtype.type
        bn_update_statistics(mu, sq, float(m), t(self.p.moving_average_fraction),
                             t(m / (m - 1) if m > 1 else 1.0), t(self.p.eps), mean, var, self.inv_std, mean_sum,
                             var_sum, scale)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.view)
        dx = bottom[0].diff.reshape(self.view)
        inv = self.inv_std[None, :, None]
        if self.used_global:
            np.multiply(dy, inv, out=dx)
            return
        # NOTE: reads the normalized top; where a layer above overwrites it in place, the net keeps a copy
        y = top[0].data.reshape(self.view)
        c = self.channels
        bn_backward_sums(y, dy, self._sums[:c], self._sums[c:])
        both, m = self._total(2, self._sums)  # one wait for both sums
        if np.may_share_memory(dx, dy):
            bn_backward_apply_in_place(y, dy, both[:c] / m, both[c:] / m, self.inv_std)
        else:
            bn_backward_apply(y, dy, both[:c] / m, both[c:] / m, self.inv_std, dx)

    def _total(self, which, part):
        """(part summed over the slices of the batch, values per channel in the whole batch): part itself and
        the layer's count when it runs the whole batch; which: BatchSync's buffer."""
        if self.sync is None:
            return part, self.m
        r, sync = self.sync
        return sync.total(r, which, part), self.m * sync.k


def _broadcast_view(bottom_shape, axis, num_axes, other_shape=None, field="scale_param.axis"):
    """(outer, dim, inner) of a bottom around the axes [axis, axis+num_axes) a scale or bias covers."""
    nd = len(bottom_shape)
    if other_shape is not None:  # the two-bottom form: bottom[1] covers axes starting at `axis`
        if len(other_shape) == 0:
            return (1, 1, int(np.prod(bottom_shape, dtype=np.int64))), ()
        a = axis % nd if -nd <= axis < nd else None
        if a is None or tuple(bottom_shape[a:a + len(other_shape)]) != tuple(other_shape):
            raise LayerError(f"bottom[1] {list(other_shape)} must match bottom[0] {list(bottom_shape)} from axis "
                             f"{axis} on", field)
        shape = tuple(other_shape)
    else:
        if not -nd <= axis <= nd:
            raise LayerError(f"axis {axis} is out of range for bottom {list(bottom_shape)}", field)
        a = axis % nd if axis < nd else nd
        end = nd if num_axes == -1 else a + num_axes
        if num_axes < -1 or end > nd:
            raise LayerError(f"axis {axis} + num_axes {num_axes} runs past bottom {list(bottom_shape)}",
                             field.replace("axis", "num_axes"))
        shape = tuple(bottom_shape[a:end])
    outer = int(np.prod(bottom_shape[:a], dtype=np.int64))
    dim = int(np.prod(shape, dtype=np.int64))
    inner = int(np.prod(bottom_shape[a + len(shape):], dtype=np.int64))
    return (outer, dim, inner), shape


@njit(cache=True, nogil=True)
def scale_forward(x, s, b, has_bias, y):
    """y = x * s[c] (+ b[c]) over (outer, C, inner)."""
    _scale_forward(x, s, b, has_bias, y)


@njit(cache=True, nogil=True)
def scale_forward_in_place(x, s, b, has_bias):
    """scale_forward with y = x (see _bn_normalize)."""
    _scale_forward(x, s, b, has_bias, x)


@njit(cache=True, nogil=True, inline="always")
def _scale_forward(x, s, b, has_bias, y):
    outer, chans, inner = x.shape
    for o in range(outer):
        for c in range(chans):
            sc = s[c]
            bc = b[c] if has_bias else 0.0
            for i in range(inner):
                y[o, c, i] = x[o, c, i] * sc + bc


@njit(cache=True, nogil=True, fastmath={"reassoc"}, inline="always")  # the float64 sums vectorize
def _scale_backward(x, dy, s, ds, db, has_bias, want_dx, dx):
    outer, chans, inner = dy.shape
    for c in range(chans):
        a = 0.0
        bsum = 0.0
        sc = s[c]
        for o in range(outer):
            for i in range(inner):
                g = dy[o, c, i]
                a += g * x[o, c, i]
                bsum += g
            if want_dx:  # after the sums: dx may be dy
                for i in range(inner):
                    dx[o, c, i] = dy[o, c, i] * sc
        ds[c] += a
        if has_bias:
            db[c] += bsum


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def scale_backward(x, dy, s, ds, db, has_bias, want_dx, dx):
    """ds[c] += sum(dy * x), db[c] += sum(dy), dx = dy * s[c]."""
    _scale_backward(x, dy, s, ds, db, has_bias, want_dx, dx)


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def scale_backward_in_place(x, d, s, ds, db, has_bias):
    """scale_backward with dx = dy = d (see _bn_normalize: one array, so the dx loop vectorizes)."""
    _scale_backward(x, d, s, ds, db, has_bias, True, d)


@register("Scale")
class Scale(Layer):
    """y = x * s (+ b), with s (and b) covering bottom axes [axis, axis + num_axes), broadcast over the rest.

    Bottoms: x [, s] (the two-bottom form takes the scale from bottom[1]). Blobs: scale (filler
    constant 1) unless given as a bottom, then the bias with bias_term. Backward reads x (in place, the
    net keeps a copy of it: netspec/inplace.py).
    """
    backward_reads = ("bottom",)

    param_block = "scale_param"
    fields = (
        Field("axis", "int", 1, "first bottom axis the scale covers"),
        Field("num_axes", "int", 1, "how many axes it covers (-1: to the end, 0: a scalar)", minimum=-1),
        Field("filler", "filler", None, "filler of the scale (default constant 1)"),
        Field("bias_term", "bool", False, "also learn a bias"),
        Field("bias_filler", "filler", None, "filler of the bias (default constant 0)"),
    )
    bottoms = (1, 2)
    in_place_ok = True

    def setup(self, bottom_shapes):
        p = self.p
        two = len(bottom_shapes) == 2
        self.view, shape = _broadcast_view(bottom_shapes[0], p.axis, p.num_axes,
                                           bottom_shapes[1] if two else None, f"{self.param_block}.axis")
        self.blob_shapes = [] if two else [(shape, p.filler or {"type": "constant", "value": 1})]
        if p.bias_term:
            self.blob_shapes.append((shape, p.bias_filler))
        return [tuple(bottom_shapes[0])]

    def _scale(self, bottom):
        s = bottom[1].data if len(bottom) == 2 else self.blobs[0].data
        return s.reshape(1, -1, 1)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        bias = self.blobs[-1].data.ravel() if self.p.bias_term else self._scale(bottom).ravel()
        if bottom[0] is top[0]:
            scale_forward_in_place(x, self._scale(bottom).ravel(), bias, self.p.bias_term)
        else:
            scale_forward(x, self._scale(bottom).ravel(), bias, self.p.bias_term, top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        two = len(bottom) == 2
        ds = np.zeros(self.view[1], dy.dtype) if two else self.blobs[0].diff.reshape(-1)
        db = self.blobs[-1].diff.reshape(-1) if self.p.bias_term else ds
        dx = bottom[0].diff.reshape(self.view)
        if propagate_down[0] and np.may_share_memory(dx, dy):  # in place
            scale_backward_in_place(bottom[0].data.reshape(self.view), dy, self._scale(bottom).ravel(), ds, db,
                                    self.p.bias_term)
        else:
            scale_backward(bottom[0].data.reshape(self.view), dy, self._scale(bottom).ravel(), ds, db,
                           self.p.bias_term, bool(propagate_down[0]), dx)
        if two and propagate_down[1]:
            bottom[1].diff[...] = ds.reshape(bottom[1].shape)


@register("Bias")
class Bias(Layer):
    """y = x + b, with b covering bottom axes [axis, axis + num_axes) (or given as bottom[1])."""
    backward_reads = ()

    param_block = "bias_param"
    fields = (
        Field("axis", "int", 1, "first bottom axis the bias covers"),
        Field("num_axes", "int", 1, "how many axes it covers (-1: to the end, 0: a scalar)", minimum=-1),
        Field("filler", "filler", None, "filler of the bias (default constant 0)"),
    )
    bottoms = (1, 2)
    in_place_ok = True

    def setup(self, bottom_shapes):
        two = len(bottom_shapes) == 2
        self.view, shape = _broadcast_view(bottom_shapes[0], self.p.axis, self.p.num_axes,
                                           bottom_shapes[1] if two else None, "bias_param.axis")
        self.blob_shapes = [] if two else [(shape, self.p.filler)]
        return [tuple(bottom_shapes[0])]

    def forward(self, bottom, top):
        b = (bottom[1].data if len(bottom) == 2 else self.blobs[0].data).ravel()
        broadcast_add(bottom[0].data.reshape(self.view), b, top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        if len(bottom) == 2:
            if propagate_down[1]:
                bottom[1].diff[...] = 0
                channel_sums(dy, bottom[1].diff.reshape(-1))
        else:
            channel_sums(dy, self.blobs[0].diff.reshape(-1))
        if propagate_down[0] and bottom[0].diff is not top[0].diff:
            bottom[0].diff[...] = top[0].diff


@register("MVN")
class MVN(Layer):
    """Mean-variance normalization per example (and per channel unless across_channels).

    y = (x - mean) / (std + eps) with normalize_variance, else y = x - mean (eps is added to the
    standard deviation, as in Caffe). Shapes: (N, C, ...) -> the same, with 1s added up to 4 axes (Caffe's (num, channels, height, width)).
    """
    backward_reads = ("top",)

    param_block = "mvn_param"
    fields = (
        Field("normalize_variance", "bool", True, "divide by the standard deviation"),
        Field("across_channels", "bool", False, "one mean/std per example instead of per channel"),
        Field("eps", "float", 1e-9, "added to the standard deviation", minimum=0),
    )

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        groups = s[0] if self.p.across_channels or len(s) < 2 else s[0] * s[1]
        self.view = (groups, int(np.prod(s, dtype=np.int64)) // max(groups, 1))
        return [s + (1,) * (4 - len(s))]  # Caffe's top is (num, channels, height, width): 4 axes at least

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        if getattr(self, "std", None) is None or self.std.dtype != x.dtype:
            self.std = np.empty(self.view[0], x.dtype)
        row_normalize(x, self.p.eps, self.p.normalize_variance, top[0].data.reshape(self.view), self.std)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            row_normalize_backward(top[0].data.reshape(self.view), top[0].diff.reshape(self.view), self.std,
                                   self.p.normalize_variance, bottom[0].diff.reshape(self.view))


@njit(cache=True, nogil=True, fastmath={"reassoc"})  # the float64 sums vectorize (partial sums per lane)
def normalize_rows(x, eps, y, inv, gamma, beta, affine, top):
    """y = (x - mean) / sqrt(var + eps) per row of x (rows, n), inv[r] = 1 / sqrt(var + eps) (the mean and the
    biased variance in float64); top = y * gamma + beta with affine (gamma, beta (G, n): row r takes row r % G,
    GroupNorm's group; LayerNorm's G = 1), else top = y."""
    rows, n = x.shape
    groups = gamma.shape[0]
    for r in range(rows):
        xr, yr, tr = x[r], y[r], top[r]
        acc = 0.0
        for i in range(n):
            acc += xr[i]
        mu = acc / n
        acc = 0.0
        for i in range(n):
            d = xr[i] - mu
            acc += d * d
        k = 1.0 / np.sqrt(acc / n + eps)
        inv[r] = k
        m, kk = x.dtype.type(mu), x.dtype.type(k)
        for i in range(n):
            yr[i] = (xr[i] - m) * kk
        if affine:
            g, b = gamma[r % groups], beta[r % groups]
            for i in range(n):
                tr[i] = yr[i] * g[i] + b[i]
        else:
            for i in range(n):
                tr[i] = yr[i]


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def normalize_rows_backward(y, inv, dy, gamma, affine, dgamma, dbeta, want_dx, dx):
    """Through normalize_rows: with affine, dgamma[r % G] += dy * y and dbeta[r % G] += dy (float64, (G, n)) and
    dy times gamma goes on; dx = inv * (dy - mean(dy) - y * mean(dy * y)) per row (the means in float64)."""
    rows, n = y.shape
    groups = gamma.shape[0]
    for r in range(rows):
        yr, gr, dr = y[r], dy[r], dx[r]
        a = 0.0
        b = 0.0
        if affine:
            g, dg, db = gamma[r % groups], dgamma[r % groups], dbeta[r % groups]
            for i in range(n):
                dg[i] += gr[i] * yr[i]
                db[i] += gr[i]
            if not want_dx:
                continue
            for i in range(n):
                e = gr[i] * g[i]
                a += e
                b += e * yr[i]
            k = inv[r]
            am, bm = y.dtype.type(a / n), y.dtype.type(b / n)
            for i in range(n):
                dr[i] = k * (gr[i] * g[i] - am - yr[i] * bm)
        elif want_dx:
            for i in range(n):
                a += gr[i]
                b += gr[i] * yr[i]
            k = inv[r]
            am, bm = y.dtype.type(a / n), y.dtype.type(b / n)
            for i in range(n):
                dr[i] = k * (gr[i] - am - yr[i] * bm)


class _RowNorm(Layer):
    """LayerNorm and GroupNorm: rows of the bottom's view normalized (normalize_rows), then an affine map per row
    of gamma and beta laid out (G, n) (`_affine`); the layers say how their parameters lay out and sum back."""
    backward_reads = ()

    def batch_coupling(self):
        return None  # each example on its own

    def forward(self, bottom, top):
        x = np.ascontiguousarray(bottom[0].data.reshape(self.view))
        if getattr(self, "y", None) is None or self.y.shape != x.shape or self.y.dtype != x.dtype:
            self.y, self.inv = np.empty(x.shape, x.dtype), np.empty(x.shape[0], x.dtype)
        gamma, beta = self._affine() if self.p.affine else (self.y[:1], self.y[:1])
        normalize_rows(x, float(self.p.eps), self.y, self.inv, gamma, beta, self.p.affine,
                       top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        dy = np.ascontiguousarray(top[0].diff.reshape(self.view))
        gamma = self._affine()[0] if self.p.affine else self.y[:1]
        sums = np.zeros((2,) + gamma.shape) if self.p.affine else np.zeros((2, 1, 1))
        dx = bottom[0].diff.reshape(self.view)
        out = dx if dx.flags.c_contiguous else np.empty(dx.shape, dx.dtype)
        normalize_rows_backward(self.y, self.inv, dy, gamma, self.p.affine, sums[0], sums[1], bool(propagate_down[0]),
                                out)
        if out is not dx and propagate_down[0]:
            dx[...] = out
        if self.p.affine:
            self._sum_back(sums[0], self.blobs[0].diff)
            self._sum_back(sums[1], self.blobs[1].diff)


@register("LayerNorm")
class LayerNorm(_RowNorm):
    """Layer normalization (Ba et al.; PyTorch's nn.LayerNorm): each example normalized over the axes from
    layer_norm_param.axis to the end, then (affine) scaled and shifted elementwise by learnable gamma, beta of that
    shape (gamma filled with 1, beta with 0). Shapes: any -> same."""
    backward_reads = ()

    param_block = "layer_norm_param"
    fields = (
        Field("axis", "int", 1, "the first normalized axis (to the last)"),
        Field("eps", "float", 1e-5, "added to the variance", exclusive_minimum=0),
        Field("affine", "bool", True, "learnable elementwise gamma and beta"),
    )

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        a = self.p.axis % len(s) if s else 0
        if not s or not -len(s) <= self.p.axis < len(s):
            raise LayerError(f"axis {self.p.axis} is out of range for a bottom of shape {list(s)}", "layer_norm_param.axis")
        self.view = (count(s, 0, a), count(s, a))
        self.norm_shape = s[a:]
        if self.p.affine:
            self.blob_shapes = [(self.norm_shape, {"type": "constant", "value": 1}),
                                (self.norm_shape, {"type": "constant", "value": 0})]
        return [s]

    def _affine(self):
        return self.blobs[0].data.reshape(1, -1), self.blobs[1].data.reshape(1, -1)

    def _sum_back(self, part, diff):
        diff += part.reshape(diff.shape)


@register("GroupNorm")
class GroupNorm(_RowNorm):
    """Group normalization (Wu and He; PyTorch's nn.GroupNorm): the channels of each example in group_norm_param
    .num_groups groups, each group normalized over its channels and positions, then (affine) scaled and shifted per
    channel by learnable gamma (1) and beta (0). Bottom (N, C, ...) -> same; C a multiple of num_groups."""
    backward_reads = ()

    param_block = "group_norm_param"
    fields = (
        Field("num_groups", "int", 32, "groups of channels", minimum=1),
        Field("eps", "float", 1e-5, "added to the variance", exclusive_minimum=0),
        Field("affine", "bool", True, "learnable per-channel gamma and beta"),
    )

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        if len(s) < 2 or s[1] % self.p.num_groups:
            raise LayerError(f"the channels ({s[1] if len(s) > 1 else '?'}) must be a multiple of num_groups "
                             f"({self.p.num_groups}); received a bottom of shape {list(s)}", "group_norm_param.num_groups")
        self.view = (s[0] * self.p.num_groups, count(s, 1) // self.p.num_groups)
        self.channels, self.inner = s[1], count(s, 2)
        if self.p.affine:
            self.blob_shapes = [((s[1],), {"type": "constant", "value": 1}), ((s[1],), {"type": "constant", "value": 0})]
        return [s]

    def _affine(self):
        """gamma and beta (G, channels per group * inner): each channel's value repeated over its positions."""
        shape = (self.p.num_groups, -1)
        return (np.repeat(self.blobs[0].data, self.inner).reshape(shape),
                np.repeat(self.blobs[1].data, self.inner).reshape(shape))

    def _sum_back(self, part, diff):
        diff += part.reshape(self.channels, self.inner).sum(axis=1)
