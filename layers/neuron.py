"""Elementwise neuron layers: one bottom, one top of the same shape."""
from __future__ import annotations

import numpy as np
from numba import njit

from .base import Field, Layer, register


class Neuron(Layer):
    """Base of elementwise layers: top shaped like the bottom."""

    def setup(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@njit(cache=True)
def relu_forward(x, slope, y):
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * slope


@njit(cache=True)
def relu_backward(y, dy, slope, dx):
    # NOTE: reads the top, which is the bottom's sign for slope >= 0, so in place is safe;
    # at exactly 0 the gradient is `slope`, as in Caffe.
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > 0 else dy[i] * slope


@register("ReLU")
class ReLU(Neuron):
    """y = max(x, 0) + negative_slope * min(x, 0). Shapes: any -> same."""

    param_block = "relu_param"
    fields = (Field("negative_slope", "float", 0.0, "slope for x <= 0 (leaky ReLU)", minimum=0),)
    in_place_ok = True

    def forward(self, bottom, top):
        relu_forward(bottom[0].data.ravel(), self.p.negative_slope, top[0].data.ravel())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            relu_backward(top[0].data.ravel(), top[0].diff.ravel(), self.p.negative_slope,
                          bottom[0].diff.ravel())


@register("Dropout")
class Dropout(Neuron):
    """Inverted dropout. TRAIN: y = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio); TEST: y = x."""

    param_block = "dropout_param"
    fields = (Field("dropout_ratio", "float", 0.5, "probability of dropping a unit", minimum=0,
                    exclusive_maximum=1),)
    in_place_ok = True
    needs_rng = True

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != "TRAIN":
            if y is not x:
                y[...] = x
            return
        keep = 1.0 - self.p.dropout_ratio
        self.mask = self.rng.random(x.shape, dtype=np.float32) < keep
        np.multiply(x, self.mask * x.dtype.type(1.0 / keep), out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase != "TRAIN":
            bottom[0].diff[...] = top[0].diff
        else:
            np.multiply(top[0].diff, self.mask * top[0].diff.dtype.type(1.0 / (1.0 - self.p.dropout_ratio)),
                        out=bottom[0].diff)
