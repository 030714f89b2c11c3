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
        self.global_stats = self.phase == "TEST" if self.p.use_global_stats is None else self.p.use_global_stats
        if self.p.use_global_stats is False and self.phase == "TEST":
            self.warnings.append(("use_global_stats: false in the TEST net normalizes each test batch with its "
                                  "own statistics (results depend on the batch) and updates the running averages; "
                                  "remove use_global_stats and let the phase decide", "batch_norm_param.use_global_stats"))
        const0 = {"type": "constant", "value": 0}
        self.blob_shapes = [((self.channels,), const0), ((self.channels,), const0), ((1,), const0)]
        return [s]

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.view)
        y = top[0].data.reshape(self.view)
        mean_sum, var_sum, scale = (b.data for b in self.blobs)
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
        if self.global_stats:
            np.multiply(dy, inv, out=dx)
            return
        # NOTE: reads the normalized top, so in place is safe (Caffe caches x_norm for that)
        y = top[0].data.reshape(self.view)
        mean_dy = dy.mean(axis=(0, 2), keepdims=True)
        mean_dyy = (dy * y).mean(axis=(0, 2), keepdims=True)
        np.multiply(dy - mean_dy - mean_dyy * y, inv, out=dx)
