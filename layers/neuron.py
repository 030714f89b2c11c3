"""Elementwise neuron layers: one bottom, one top of the same shape."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .base import Field, Layer, register
from .kernels import (erfc32, exp32, fast_exp, fast_log, fast_log1p, fast_sigmoid, fast_tanh, masked_scale, same,
                      sigmoid32)


class Neuron(Layer):
    """Base of elementwise layers: top shaped like the bottom."""

    def setup(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@njit(cache=True, nogil=True)
def relu_forward(x, slope, y):
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * slope


@njit(cache=True, nogil=True)
def relu_backward(y, dy, slope, dx):
    # NOTE: reads the top, which is the bottom's sign for slope >= 0, so in place is safe;
    # at exactly 0 the gradient is `slope`, as in Caffe.
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > 0 else dy[i] * slope


@njit(cache=True, nogil=True)
def relu_forward_in_place(x, slope):
    """relu_forward with the top on the bottom: one array, so LLVM vectorizes it without an overlap check (which
    an in-place call fails, falling back to scalar code: 4x slower)."""
    for i in range(x.size):
        v = x[i]
        x[i] = v if v > 0 else v * slope


@njit(cache=True, nogil=True)
def relu_backward_in_place(y, d, slope):
    """relu_backward with the bottom diff on the top diff d."""
    for i in range(d.size):
        d[i] = d[i] if y[i] > 0 else d[i] * slope


@register("ReLU")
class ReLU(Neuron):
    """y = max(x, 0) + negative_slope * min(x, 0). Shapes: any -> same."""
    backward_reads = ("top",)

    param_block = "relu_param"
    fields = (Field("negative_slope", "float", 0.0, "slope for x <= 0 (leaky ReLU)", minimum=0),)
    in_place_ok = True

    def forward(self, bottom, top):
        x, y = bottom[0].data.ravel(), top[0].data.ravel()
        slope = x.dtype.type(self.p.negative_slope)
        if bottom[0] is top[0]:
            relu_forward_in_place(y, slope)
        else:
            relu_forward(x, slope, y)

    def bound_forward(self, bottom, top):
        """Layer.bound_forward: the kernel and its flat arrays chosen once (LeNet's relu1 at batch 1: 2.2 us)."""
        x, y = bottom[0].data.ravel(), top[0].data.ravel()
        slope = x.dtype.type(self.p.negative_slope)
        if bottom[0] is top[0]:
            return lambda: relu_forward_in_place(y, slope)
        return lambda: relu_forward(x, slope, y)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y, dy, dx = top[0].data.ravel(), top[0].diff.ravel(), bottom[0].diff.ravel()
            slope = y.dtype.type(self.p.negative_slope)
            if bottom[0] is top[0]:
                relu_backward_in_place(y, dy, slope)
            else:
                relu_backward(y, dy, slope, dx)


@register("Dropout")
class Dropout(Neuron):
    """Inverted dropout. TRAIN: y = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio); TEST: y = x."""
    backward_reads = ()

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
        if getattr(self, "mask", None) is None or self.mask.shape != x.shape:
            self.mask, self.draw = np.empty(x.shape, bool), np.empty(x.shape, np.float32)
        self.rng.random(out=self.draw, dtype=np.float32)
        np.less(self.draw, keep, out=self.mask)
        masked_scale(x.ravel(), self.mask.ravel(), 1.0 / keep, y.ravel())

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase != "TRAIN":
            bottom[0].diff[...] = top[0].diff
        else:
            masked_scale(top[0].diff.ravel(), self.mask.ravel(), 1.0 / (1.0 - self.p.dropout_ratio),
                         bottom[0].diff.ravel())


class Elementwise(Neuron):
    """A neuron layer given by two Numba kernels on raveled arrays:
    ``fwd(x, a, b, c, y)`` and ``bwd(x, y, dy, a, b, c, dx)`` with three float constants."""
    backward_reads = ("bottom",)

    fwd = bwd = None
    fwd32 = bwd32 = None  # float32 kernels in float32 arithmetic, where the others compute in float64 (GELU, Mish)

    def consts(self):
        return 0.0, 0.0, 0.0

    def _consts(self, dtype):
        """consts() in the data's dtype, as Caffe's Dtype (float32 arithmetic for float32 blobs)."""
        return tuple(dtype.type(v) for v in self.consts())

    def forward(self, bottom, top):
        x = bottom[0].data.ravel()
        fwd = self.fwd32 if self.fwd32 is not None and x.dtype == np.float32 else self.fwd
        fwd(x, *self._consts(x.dtype), top[0].data.ravel())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            x = bottom[0].data.ravel()
            bwd = self.bwd32 if self.bwd32 is not None and x.dtype == np.float32 else self.bwd
            bwd(x, top[0].data.ravel(), top[0].diff.ravel(), *self._consts(x.dtype), bottom[0].diff.ravel())


@njit(cache=True, nogil=True, error_model="numpy")  # no zero-division check: scalar loops
def sigmoid_fwd(x, a, b, c, y):
    """float32: sigmoid32 (vectorized; libm's expf one value at a time took 6 ns a value)."""
    if same(x, y):
        for i in range(y.size):
            y[i] = fast_sigmoid(y[i])
        return
    for i in range(x.size):
        y[i] = fast_sigmoid(x[i])


@njit(cache=True, nogil=True)
def sigmoid_bwd(x, y, dy, a, b, c, dx):
    if same(dy, dx):
        for i in range(y.size):
            dx[i] *= y[i] * (1.0 - y[i])
        return
    for i in range(y.size):
        dx[i] = dy[i] * y[i] * (1.0 - y[i])


@njit(cache=True, nogil=True, error_model="numpy")  # no zero-division check: scalar loops
def tanh_fwd(x, a, b, c, y):
    """float32: tanh32 (vectorized; libm's tanhf took 24 ns a value)."""
    if same(x, y):
        for i in range(y.size):
            y[i] = fast_tanh(y[i])
        return
    for i in range(x.size):
        y[i] = fast_tanh(x[i])


@njit(cache=True, nogil=True)
def tanh_bwd(x, y, dy, a, b, c, dx):
    if same(dy, dx):
        for i in range(y.size):
            dx[i] *= 1.0 - y[i] * y[i]
        return
    for i in range(y.size):
        dx[i] = dy[i] * (1.0 - y[i] * y[i])


@njit(cache=True, nogil=True)
def abs_fwd(x, a, b, c, y):
    for i in range(x.size):
        y[i] = abs(x[i])


@njit(cache=True, nogil=True)
def abs_bwd(x, y, dy, a, b, c, dx):
    for i in range(x.size):
        dx[i] = dy[i] * (1.0 if x[i] > 0 else -1.0 if x[i] < 0 else 0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def bnll_fwd(x, a, b, c, y):
    """max(x, 0) + log(1 + exp(-|x|)) (Caffe's two branches in one); float32: exp32 and log1p through log32."""
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i]
        y[i] = max(v, zero) + fast_log1p(fast_exp(-abs(v)))


@njit(cache=True, nogil=True, error_model="numpy")
def bnll_bwd(x, y, dy, a, b, c, dx):
    cap, one = x.dtype.type(50.0), x.dtype.type(1.0)  # Caffe's kBNLL_THRESHOLD
    for i in range(x.size):
        e = fast_exp(min(x[i], cap))
        dx[i] = dy[i] * e / (e + one)


@njit(cache=True, nogil=True, error_model="numpy")
def elu_fwd(x, alpha, b, c, y):
    """float32: exp32 (vectorized; libm's expf took 8 ns a value)."""
    one = y.dtype.type(1)
    if same(x, y):
        for i in range(y.size):
            v = y[i]
            y[i] = v if v > 0 else alpha * (fast_exp(v) - one)
        return
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 else alpha * (fast_exp(v) - one)


@njit(cache=True, nogil=True)
def elu_bwd(x, y, dy, alpha, b, c, dx):
    # NOTE: reads the top only (y > 0 iff x > 0 for alpha > 0), so in place is safe
    if same(dy, dx):
        for i in range(y.size):
            dx[i] = dx[i] if y[i] > 0 else dx[i] * (y[i] + alpha)
        return
    for i in range(y.size):
        dx[i] = dy[i] if y[i] > 0 else dy[i] * (y[i] + alpha)


@njit(cache=True, nogil=True, error_model="numpy")
def power_fwd(x, power, scale, shift, y):
    """(shift + scale x) ^ power; the powers 1, 2 and 0.5 as products and a square root (vectorized: libm's pow
    runs one value at a time)."""
    if power == 1.0:
        for i in range(x.size):
            y[i] = shift + scale * x[i]
    elif power == 2.0:
        for i in range(x.size):
            v = shift + scale * x[i]
            y[i] = v * v
    elif power == 0.5:
        for i in range(x.size):
            y[i] = np.sqrt(shift + scale * x[i])
    else:
        for i in range(x.size):
            y[i] = (shift + scale * x[i]) ** power


@njit(cache=True, nogil=True, error_model="numpy")
def power_bwd(x, y, dy, power, scale, shift, dx):
    if power == 0.0:
        for i in range(x.size):
            dx[i] = 0.0
    elif power == 1.0:
        for i in range(x.size):
            dx[i] = dy[i] * scale
    elif power == 2.0:
        k = power * scale
        for i in range(x.size):
            dx[i] = dy[i] * k * (shift + scale * x[i])
    elif power == 0.5:
        k = power * scale
        for i in range(x.size):
            dx[i] = dy[i] * k / np.sqrt(shift + scale * x[i])
    else:
        for i in range(x.size):
            dx[i] = dy[i] * power * scale * (shift + scale * x[i]) ** (power - 1.0)


@njit(cache=True, nogil=True, error_model="numpy")
def exp_fwd(x, log_base, scale, shift, y):
    """float32 (with float32 constants): exp32."""
    if same(x, y):
        for i in range(y.size):
            y[i] = fast_exp(log_base * (shift + scale * y[i]))
        return
    for i in range(x.size):
        y[i] = fast_exp(log_base * (shift + scale * x[i]))


@njit(cache=True, nogil=True)
def exp_bwd(x, y, dy, log_base, scale, shift, dx):
    if same(dy, dx):
        for i in range(y.size):
            dx[i] *= y[i] * log_base * scale
        return
    for i in range(y.size):
        dx[i] = dy[i] * y[i] * log_base * scale


@njit(cache=True, nogil=True, error_model="numpy")
def log_fwd(x, inv_log_base, scale, shift, y):
    """float32: log32 (vectorized), with log(0) = -inf, log(inf) = inf and NaN below 0 as libm's."""
    for i in range(x.size):
        y[i] = fast_log(shift + scale * x[i]) * inv_log_base


@njit(cache=True, nogil=True)
def log_bwd(x, y, dy, inv_log_base, scale, shift, dx):
    for i in range(x.size):
        dx[i] = dy[i] * scale * inv_log_base / (shift + scale * x[i])


@njit(cache=True, nogil=True)
def clip_fwd(x, lo, hi, c, y):
    for i in range(x.size):
        y[i] = min(max(x[i], lo), hi)


@njit(cache=True, nogil=True)
def clip_bwd(x, y, dy, lo, hi, c, dx):
    for i in range(x.size):
        dx[i] = dy[i] if lo <= x[i] <= hi else 0.0


@njit(cache=True, nogil=True)
def threshold_fwd(x, t, b, c, y):
    if same(x, y):
        for i in range(y.size):
            y[i] = 1.0 if y[i] > t else 0.0
        return
    for i in range(x.size):
        y[i] = 1.0 if x[i] > t else 0.0


def _base_log(base):
    return 1.0 if base == -1 else float(np.log(base))


@register("DropPath")
class DropPath(Neuron):
    """Stochastic depth (Huang et al.; timm's DropPath) for a residual branch: TRAIN drops each example's whole
    branch with probability drop_prob and scales the kept ones by 1 / (1 - drop_prob); TEST: y = x. Put it on the
    branch, before the Eltwise SUM with the shortcut. Shapes: (N, ...) -> same."""
    backward_reads = ()

    param_block = "drop_path_param"
    fields = (Field("drop_prob", "float", 0.1, "probability of dropping an example's branch", minimum=0,
                    exclusive_maximum=1),)
    needs_rng = True

    def batch_coupling(self):
        return None  # one draw per example

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != "TRAIN":
            y[...] = x
            return
        keep = 1.0 - self.p.drop_prob
        self.scale = ((self.rng.random(x.shape[0]) < keep) / keep).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        np.multiply(x, self.scale, out=y)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff if self.phase != "TRAIN" else top[0].diff * self.scale


@register("Sigmoid")
class Sigmoid(Elementwise):
    """y = 1 / (1 + exp(-x)); backward reads the top only (in place is safe)."""
    backward_reads = ("top",)

    fwd, bwd = staticmethod(sigmoid_fwd), staticmethod(sigmoid_bwd)
    in_place_ok = True


@register("TanH")
class TanH(Elementwise):
    """y = tanh(x); backward reads the top only (in place is safe)."""
    backward_reads = ("top",)

    fwd, bwd = staticmethod(tanh_fwd), staticmethod(tanh_bwd)
    in_place_ok = True


@register("AbsVal")
class AbsVal(Elementwise):
    """y = |x| (never in place: backward needs the sign of x)."""

    fwd, bwd = staticmethod(abs_fwd), staticmethod(abs_bwd)


@register("BNLL")
class BNLL(Elementwise):
    """y = log(1 + exp(x)), computed stably (never in place: backward reads x)."""

    fwd, bwd = staticmethod(bnll_fwd), staticmethod(bnll_bwd)


@register("ELU")
class ELU(Elementwise):
    """y = x for x > 0, alpha * (exp(x) - 1) otherwise."""
    backward_reads = ("top",)

    param_block = "elu_param"
    fields = (Field("alpha", "float", 1.0, "saturation value for negative inputs (0: ReLU)", minimum=0),)
    fwd, bwd = staticmethod(elu_fwd), staticmethod(elu_bwd)
    in_place_ok = True

    def consts(self):
        return float(self.p.alpha), 0.0, 0.0


@register("Power")
class Power(Elementwise):
    """y = (shift + scale * x) ^ power (never in place: backward reads x)."""

    param_block = "power_param"
    fields = (Field("power", "float", 1.0, "exponent"), Field("scale", "float", 1.0, "multiplies x"),
              Field("shift", "float", 0.0, "added after scaling"))
    fwd, bwd = staticmethod(power_fwd), staticmethod(power_bwd)

    def consts(self):
        return float(self.p.power), float(self.p.scale), float(self.p.shift)


@register("Exp")
class Exp(Elementwise):
    """y = base ^ (shift + scale * x); base -1 means e. Backward reads the top (in place is safe)."""
    backward_reads = ("top",)

    param_block = "exp_param"
    fields = (Field("base", "float", -1.0, "the base (-1: e)"), Field("scale", "float", 1.0, "multiplies x"),
              Field("shift", "float", 0.0, "added after scaling"))
    fwd, bwd = staticmethod(exp_fwd), staticmethod(exp_bwd)
    in_place_ok = True

    def setup(self, bottom_shapes):
        self.check()
        return super().setup(bottom_shapes)

    def check(self):
        if self.p.base != -1 and self.p.base <= 0:
            from netspec.errors import LayerError
            raise LayerError(f"base must be -1 (for e) or > 0; received base={self.p.base}",
                             f"{self.param_block}.base")

    def consts(self):
        return _base_log(self.p.base), float(self.p.scale), float(self.p.shift)


@register("Log")
class Log(Exp):
    """y = log_base(shift + scale * x); base -1 means e (never in place: backward reads x)."""
    backward_reads = ("bottom",)

    param_block = "log_param"
    fwd, bwd = staticmethod(log_fwd), staticmethod(log_bwd)
    in_place_ok = False

    def consts(self):
        return 1.0 / _base_log(self.p.base), float(self.p.scale), float(self.p.shift)


@register("Clip")
class Clip(Elementwise):
    """y = min(max(x, min), max); the gradient passes where min <= x <= max."""

    param_block = "clip_param"
    fields = (Field("min", "float", None, "lower bound", required=True),
              Field("max", "float", None, "upper bound", required=True))
    fwd, bwd = staticmethod(clip_fwd), staticmethod(clip_bwd)

    def setup(self, bottom_shapes):
        self.check()
        return super().setup(bottom_shapes)

    def check(self):
        if self.p.min > self.p.max:
            from netspec.errors import LayerError
            raise LayerError(f"min {self.p.min} is larger than max {self.p.max}", "clip_param.min")

    def consts(self):
        return float(self.p.min), float(self.p.max), 0.0


@register("Threshold")
class Threshold(Elementwise):
    """y = 1 if x > threshold else 0. Not differentiable (Caffe's backward is NOT_IMPLEMENTED)."""

    param_block = "threshold_param"
    fields = (Field("threshold", "float", 0.0, "the threshold"),)
    fwd = staticmethod(threshold_fwd)
    differentiable = False
    in_place_ok = True

    def consts(self):
        return float(self.p.threshold), 0.0, 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def swish_fwd(x, beta, s, y):
    """s = sigmoid(beta x), y = x s; float32 (with a float32 beta): sigmoid32."""
    if same(x, y):
        for i in range(y.size):
            s[i] = fast_sigmoid(beta * y[i])
        for i in range(y.size):
            y[i] *= s[i]
        return
    for i in range(x.size):
        s[i] = fast_sigmoid(beta * x[i])
        y[i] = x[i] * s[i]


@njit(cache=True, nogil=True)
def swish_bwd(y, s, dy, beta, dx):
    for i in range(y.size):
        dx[i] = dy[i] * (beta * y[i] + s[i] * (1.0 - beta * y[i]))


@register("Swish")
class Swish(Neuron):
    """y = x * sigmoid(beta * x); keeps sigmoid(beta * x) for backward, so in place is safe."""
    backward_reads = ("top",)

    param_block = "swish_param"
    fields = (Field("beta", "float", 1.0, "slope inside the sigmoid"),)
    in_place_ok = True

    def forward(self, bottom, top):
        x = bottom[0].data
        if getattr(self, "s", None) is None or self.s.shape != x.shape or self.s.dtype != x.dtype:
            self.s = np.empty_like(x)
        swish_fwd(x.ravel(), x.dtype.type(self.p.beta), self.s.ravel(), top[0].data.ravel())

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            swish_bwd(top[0].data.ravel(), self.s.ravel(), top[0].diff.ravel(), float(self.p.beta),
                      bottom[0].diff.ravel())


@njit(cache=True, nogil=True)
def gelu_fwd(x, a, b, c, y):
    """x * Phi(x), Phi the standard normal CDF (erf form, as PyTorch's default)."""
    for i in range(x.size):  # erfc: no cancellation in 1 + erf for x far below 0
        y[i] = 0.5 * x[i] * math.erfc(x[i] * -0.7071067811865476)


@njit(cache=True, nogil=True)
def gelu_bwd(x, y, dy, a, b, c, dx):
    for i in range(x.size):
        v = x[i]
        dx[i] = dy[i] * (0.5 * math.erfc(v * -0.7071067811865476) + v * 0.3989422804014327 * math.exp(-0.5 * v * v))


@njit(cache=True, nogil=True)
def mish_fwd(x, a, b, c, y):
    """x * tanh(softplus(x)), softplus computed stably."""
    for i in range(x.size):
        v = x[i]
        sp = v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v))
        y[i] = v * math.tanh(sp)


@njit(cache=True, nogil=True)
def mish_bwd(x, y, dy, a, b, c, dx):
    for i in range(x.size):
        v = x[i]
        sp = v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v))
        t = math.tanh(sp)
        sig = 1.0 / (1.0 + math.exp(-v))
        dx[i] = dy[i] * (t + v * (1.0 - t * t) * sig)


@njit(cache=True, nogil=True, error_model="numpy")
def gelu_fwd32(x, a, b, c, y):
    """gelu_fwd in float32: x * erfc(-x / sqrt 2) / 2 through erfc32 (a few ulp; the tail for negative x too)."""
    for i in range(x.size):
        v = x[i]
        y[i] = np.float32(0.5) * v * erfc32(v * np.float32(-0.7071067811865476))


@njit(cache=True, nogil=True, error_model="numpy")
def gelu_bwd32(x, y, dy, a, b, c, dx):
    for i in range(x.size):
        v = x[i]
        cdf = np.float32(0.5) * erfc32(v * np.float32(-0.7071067811865476))
        dx[i] = dy[i] * (cdf + v * np.float32(0.3989422804014327) * exp32(np.float32(-0.5) * v * v))


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _mish_parts32(v):
    """(tanh(softplus(v)), 1 - that squared) from e = exp(v) alone: tanh(log(1 + e)) = n / (n + 2), n = e (e + 2);
    e is capped at exp(15), where the ratio is 1 in float32."""
    e = exp32(min(v, np.float32(15.0)))
    n = e * (e + np.float32(2.0))
    d = n + np.float32(2.0)
    return n / d, np.float32(4.0) * (n + np.float32(1.0)) / (d * d)


@njit(cache=True, nogil=True, error_model="numpy")
def mish_fwd32(x, a, b, c, y):
    """mish_fwd in float32 through exp32 alone."""
    for i in range(x.size):
        v = x[i]
        y[i] = v * _mish_parts32(v)[0]


@njit(cache=True, nogil=True, error_model="numpy")
def mish_bwd32(x, y, dy, a, b, c, dx):
    for i in range(x.size):
        v = x[i]
        t, sech2 = _mish_parts32(v)
        dx[i] = dy[i] * (t + v * sech2 * sigmoid32(v))


@njit(cache=True, nogil=True)
def hardswish_fwd(x, a, b, c, y):
    """x * relu6(x + 3) / 6 (MobileNet-v3's)."""
    for i in range(x.size):
        y[i] = x[i] * min(max(x[i] + 3.0, 0.0), 6.0) / 6.0


@njit(cache=True, nogil=True)
def hardswish_bwd(x, y, dy, a, b, c, dx):
    for i in range(x.size):
        v = x[i]
        dx[i] = 0.0 if v < -3.0 else dy[i] if v > 3.0 else dy[i] * (2.0 * v + 3.0) / 6.0


@register("GELU")
class GELU(Elementwise):
    """y = x * Phi(x) (the erf form); never in place: backward reads x."""

    fwd, bwd = staticmethod(gelu_fwd), staticmethod(gelu_bwd)
    fwd32, bwd32 = staticmethod(gelu_fwd32), staticmethod(gelu_bwd32)


@register("Mish")
class Mish(Elementwise):
    """y = x * tanh(log(1 + exp(x))); never in place: backward reads x."""

    fwd, bwd = staticmethod(mish_fwd), staticmethod(mish_bwd)
    fwd32, bwd32 = staticmethod(mish_fwd32), staticmethod(mish_bwd32)


@register("HardSwish")
class HardSwish(Elementwise):
    """y = x * min(max(x + 3, 0), 6) / 6; never in place: backward reads x."""

    fwd, bwd = staticmethod(hardswish_fwd), staticmethod(hardswish_bwd)


@register("SiLU")
class SiLU(Swish):
    """y = x * sigmoid(x): Swish with beta 1 (PyTorch's name); no parameter block."""

    param_block = None
    fields = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from types import SimpleNamespace
        self.p = SimpleNamespace(beta=1.0)


@njit(cache=True, nogil=True)
def prelu_fwd(x, a, y):
    """x, y: (N, C, inner); a: (C,)."""
    n_img, chans, inner = x.shape
    if same(x, y):
        for n in range(n_img):
            for c in range(chans):
                yr, s = y[n, c], a[c]
                for i in range(inner):
                    v = yr[i]
                    yr[i] = v if v > 0 else v * s
        return
    for n in range(n_img):
        for c in range(chans):
            for i in range(inner):
                v = x[n, c, i]
                y[n, c, i] = v if v > 0 else v * a[c]


@njit(cache=True, nogil=True, fastmath={"reassoc"})  # the float64 sums vectorize (partial sums per lane)
def prelu_bwd(x, a, dy, dx, da, want_dx):
    """da[c] += sum of dy * min(x, 0) over N and the plane (float64 sums); with want_dx, dx = dy where x > 0, dy a
    elsewhere (in place too: dx on dy)."""
    n_img, chans, inner = x.shape
    in_place = same(dy, dx)
    zero = x.dtype.type(0)
    for n in range(n_img):
        for c in range(chans):
            xr, gr, s = x[n, c], dy[n, c], a[c]
            acc = 0.0
            for i in range(inner):
                acc += gr[i] * min(xr[i], zero)
            da[c] += acc
            if not want_dx:
                continue
            dr = dx[n, c]
            if in_place:
                for i in range(inner):
                    dr[i] = dr[i] if xr[i] > 0 else dr[i] * s
            else:
                for i in range(inner):
                    dr[i] = gr[i] if xr[i] > 0 else gr[i] * s


@register("PReLU")
class PReLU(Neuron):
    """y = max(x, 0) + a_c * min(x, 0) with a learned slope per channel (or one, channel_shared).

    Bottom (N, C, ...) -> same. Blob: a (C,), or () with channel_shared, filled with 0.25 by default.
    Backward reads the bottom (in place, the net keeps a copy of it, as Caffe's bottom_memory_: netspec/inplace.py).
    """
    backward_reads = ("bottom",)

    param_block = "prelu_param"
    fields = (Field("filler", "filler", None, "filler of the slopes (default constant 0.25)"),
              Field("channel_shared", "bool", False, "one slope for all channels"))
    in_place_ok = True

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        if len(s) < 2:
            from netspec.errors import LayerError
            raise LayerError(f"the bottom needs at least 2 axes (N, C, ...); received {list(s)}", None)
        self.view = (s[0], s[1], int(np.prod(s[2:], dtype=np.int64)))
        self.blob_shapes = [(() if self.p.channel_shared else (s[1],),  # a scalar blob, as Caffe's
                             self.p.filler or {"type": "constant", "value": 0.25})]
        return [s]

    def _slopes(self, chans):
        a = self.blobs[0].data
        return np.full(chans, a.reshape(-1)[0], a.dtype) if self.p.channel_shared else a

    def forward(self, bottom, top):
        prelu_fwd(bottom[0].data.reshape(self.view), self._slopes(self.view[1]), top[0].data.reshape(self.view))

    def backward(self, top, propagate_down, bottom):
        chans = self.view[1]
        x = bottom[0].data.reshape(self.view)
        da = np.zeros(chans, x.dtype)
        dx = bottom[0].diff.reshape(self.view)
        prelu_bwd(x, self._slopes(chans), top[0].diff.reshape(self.view), dx, da, bool(propagate_down[0]))
        self.blobs[0].diff += da.sum() if self.p.channel_shared else da


@njit(cache=True, nogil=True)
def maxout_fwd(x, pieces, y, arg):
    """x: (N, C*k, inner) -> y: (N, C, inner), arg: the winning channel."""
    n_img, chans, inner = y.shape
    for n in range(n_img):
        for c in range(chans):
            for i in range(inner):
                best = x[n, c * pieces, i]
                win = c * pieces
                for k in range(1, pieces):
                    v = x[n, c * pieces + k, i]
                    if v > best:
                        best = v
                        win = c * pieces + k
                y[n, c, i] = best
                arg[n, c, i] = win


@njit(cache=True, nogil=True)
def maxout_bwd(dy, arg, dx):
    dx[:] = 0
    n_img, chans, inner = dy.shape
    for n in range(n_img):
        for c in range(chans):
            for i in range(inner):
                dx[n, arg[n, c, i], i] += dy[n, c, i]


@register("Maxout")
class Maxout(Layer):
    """Not in Caffe: max over groups of `num_pieces` consecutive channels.
    Bottom (N, C*k, ...) -> top (N, C, ...); the gradient goes to the winning channel (the first on ties)."""
    backward_reads = ()

    param_block = "maxout_param"
    fields = (Field("num_pieces", "int", None, "channels per group", minimum=1, required=True),)

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        k = self.p.num_pieces
        if len(s) < 2 or s[1] % k:
            from netspec.errors import LayerError
            raise LayerError(f"the channels ({s[1] if len(s) > 1 else 'none'}) of bottom {list(s)} must be a "
                             f"multiple of num_pieces {k}", "maxout_param.num_pieces")
        inner = int(np.prod(s[2:], dtype=np.int64))
        self.in_view, self.out_view = (s[0], s[1], inner), (s[0], s[1] // k, inner)
        return [(s[0], s[1] // k) + s[2:]]

    def forward(self, bottom, top):
        if getattr(self, "arg", None) is None:
            self.arg = np.empty(self.out_view, np.int64)
        maxout_fwd(bottom[0].data.reshape(self.in_view), self.p.num_pieces, top[0].data.reshape(self.out_view),
                   self.arg)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            maxout_bwd(top[0].diff.reshape(self.out_view), self.arg, bottom[0].diff.reshape(self.in_view))
