"""Elementwise neuron layers: one bottom, one top of the same shape."""
from __future__ import annotations

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
