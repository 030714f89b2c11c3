"""BatchNorm, as Caffe computes it (no learned scale or shift: follow it with Scale).

Bottom (N, C, ...) -> top of the same shape, normalized per channel over N and the spatial axes.
Blobs: [0] running mean sum (C,), [1] running variance sum (C,), [2] scale factor (1,); the
statistics are mean = blob0 / blob2 and var = blob1 / blob2 (0 when blob2 is 0). They are not
learned (lr_mult 0) but updated in TRAIN: s = maf*s + 1, mean_sum = mu + maf*mean_sum,
var_sum = m/(m-1)*var + maf*var_sum (the unbiased variance is stored; the biased one normalizes).
"""
from __future__ import annotations

import numpy as np

from netspec.errors import LayerError
from .base import Field, Layer, count, register


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
    def global_stats(self) -> bool:
        """Read at forward time: the phase decides unless use_global_stats is set."""
        return self.phase == "TEST" if self.p.use_global_stats is None else self.p.use_global_stats

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        y = top[0].data.reshape(self.view)
        mean_sum, var_sum, scale = (b.data for b in self.blobs)
        self.used_global = self.global_stats
        if self.global_stats:
            f = 0.0 if scale[0] == 0 else 1.0 / scale[0]
            mean, var = mean_sum * f, var_sum * f
        else:
            mean = x.mean(axis=(0, 2), dtype=np.float64).astype(x.dtype)
            var = ((x - mean[None, :, None]) ** 2).mean(axis=(0, 2), dtype=np.float64).astype(x.dtype)
            maf = self.p.moving_average_fraction
            scale *= maf
            scale += 1
            mean_sum *= maf
            mean_sum += mean
            var_sum *= maf
            var_sum += (self.m / (self.m - 1) if self.m > 1 else 1.0) * var
        self.inv_std = (1.0 / np.sqrt(var + self.p.eps)).astype(x.dtype)
        np.multiply(x - mean[None, :, None], self.inv_std[None, :, None], out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.view)
        dx = bottom[0].diff.reshape(self.view)
        inv = self.inv_std[None, :, None]
        if self.used_global:
            np.multiply(dy, inv, out=dx)
            return
        # NOTE: reads the normalized top, so in place is safe (Caffe caches x_norm for that)
        y = top[0].data.reshape(self.view)
        mean_dy = dy.mean(axis=(0, 2), keepdims=True)
        mean_dyy = (dy * y).mean(axis=(0, 2), keepdims=True)
        np.multiply(dy - mean_dy - mean_dyy * y, inv, out=dx)


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


@register("Scale")
class Scale(Layer):
    """y = x * s (+ b), with s (and b) covering bottom axes [axis, axis + num_axes), broadcast over the rest.

    Bottoms: x [, s] (the two-bottom form takes the scale from bottom[1]). Blobs: scale (filler
    constant 1) unless given as a bottom, then the bias with bias_term. Keeps a copy of x for backward,
    so in place is safe.
    """

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
        self.x = None
        return [tuple(bottom_shapes[0])]

    def _scale(self, bottom):
        s = bottom[1].data if len(bottom) == 2 else self.blobs[0].data
        return s.reshape(1, -1, 1)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        if self.x is None or self.x.dtype != x.dtype:
            self.x = np.empty_like(x)
        self.x[...] = x
        y = top[0].data.reshape(self.view)
        np.multiply(self.x, self._scale(bottom), out=y)
        if self.p.bias_term:
            y += self.blobs[-1].data.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        ds = (dy * self.x).sum(axis=(0, 2))
        if len(bottom) == 2:
            if propagate_down[1]:
                bottom[1].diff[...] = ds.reshape(bottom[1].shape)
        else:
            self.blobs[0].diff += ds.reshape(self.blobs[0].shape)
        if self.p.bias_term:
            self.blobs[-1].diff += dy.sum(axis=(0, 2)).reshape(self.blobs[-1].shape)
        if propagate_down[0]:
            np.multiply(dy, self._scale(bottom), out=bottom[0].diff.reshape(self.view))


@register("Bias")
class Bias(Layer):
    """y = x + b, with b covering bottom axes [axis, axis + num_axes) (or given as bottom[1])."""

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
        b = (bottom[1].data if len(bottom) == 2 else self.blobs[0].data).reshape(1, -1, 1)
        np.add(bottom[0].data.reshape(self.view), b, out=top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.view)
        db = dy.sum(axis=(0, 2))
        if len(bottom) == 2:
            if propagate_down[1]:
                bottom[1].diff[...] = db.reshape(bottom[1].shape)
        else:
            self.blobs[0].diff += db.reshape(self.blobs[0].shape)
        if propagate_down[0] and bottom[0].diff is not top[0].diff:
            bottom[0].diff[...] = top[0].diff


@register("MVN")
class MVN(Layer):
    """Mean-variance normalization per example (and per channel unless across_channels).

    y = (x - mean) / (std + eps) with normalize_variance, else y = x - mean (eps is added to the
    standard deviation, as in Caffe). Shapes: (N, C, ...) -> same.
    """

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
        return [s]

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        y = top[0].data.reshape(self.view)
        np.subtract(x, x.mean(axis=1, keepdims=True), out=y)
        if self.p.normalize_variance:
            self.std = np.sqrt((y * y).mean(axis=1, keepdims=True)) + self.p.eps
            y /= self.std

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.view)
        dx = bottom[0].diff.reshape(self.view)
        if self.p.normalize_variance:
            y = top[0].data.reshape(self.view)
            # Caffe's formula (exact for eps = 0): project out the mean and the direction of y
            dx[...] = (dy - dy.mean(axis=1, keepdims=True) - (dy * y).mean(axis=1, keepdims=True) * y) / self.std
        else:
            dx[...] = dy - dy.mean(axis=1, keepdims=True)
