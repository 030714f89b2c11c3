"""Common layers that compute on blobs: Eltwise, Reduction, ArgMax, Embed, Parameter."""
from __future__ import annotations

import numpy as np

from numba import njit

from netspec.errors import LayerError, UserError
from .base import Field, Layer, count, dims, register
from .kernels import (add_scaled, max_step, mul_into, reduce_rows, reduce_rows_backward, scale_into, select_grad,
                      sum_two)
from .shape import _axis


@njit(cache=True, nogil=True)
def top_k_along(x, k, idx, val, write_idx, write_val):
    """The k largest of x (outer, n, inner) along n, largest first; among equal values the lower index
    first. Writes idx and/or val (outer, k, inner). NaNs are never picked."""
    outer, n, inner = x.shape
    for o in range(outer):
        for i in range(inner):
            pv, pj = np.inf, -1
            for t in range(k):
                best, bj = -np.inf, -1
                for j in range(n):
                    v = x[o, j, i]
                    if (v < pv or (v == pv and j > pj)) and (bj < 0 or v > best):
                        best, bj = v, j
                pv, pj = best, bj
                if write_idx:
                    idx[o, t, i] = bj
                if write_val:
                    val[o, t, i] = best


@njit(cache=True, nogil=True)
def embed_forward(x, table, bias, has_bias, idx, y):
    """y[i] = table[x[i]] (+ bias); idx keeps the rows for backward. Returns the first bad position or -1."""
    rows = table.shape[0]
    for i in range(x.size):
        k = int(x[i])
        if k < 0 or k >= rows or k != x[i]:
            return i
        idx[i] = k
    for i in range(x.size):
        for j in range(y.shape[1]):
            y[i, j] = table[idx[i], j] + (bias[j] if has_bias else 0.0)
    return -1


@njit(cache=True, nogil=True)
def embed_backward(idx, dy, dtable, dbias, has_bias):
    """dtable[idx[i]] += dy[i]; dbias += sum_i dy[i] (rows hit twice accumulate)."""
    for i in range(idx.size):
        for j in range(dy.shape[1]):
            dtable[idx[i], j] += dy[i, j]
            if has_bias:
                dbias[j] += dy[i, j]


@register("Eltwise")
class Eltwise(Layer):
    """Elementwise SUM (with coefficients), PROD or MAX of bottoms of one shape -> top of that shape.

    MAX: a tie between bottoms 0 and 1 goes to bottom 1; later bottoms win only when strictly larger
    (Caffe's order); the gradient goes to the winner only.
    """

    param_block = "eltwise_param"
    fields = (
        Field("operation", "enum", "SUM", "how to combine", choices=("PROD", "SUM", "MAX")),
        Field("coeff", "float", None, "SUM only: one coefficient per bottom", repeated=True),
        Field("stable_prod_grad", "bool", True, "PROD: gradient as the product of the others"),
    )
    bottoms = (2, None)
    relu = None  # for a pass: the negative slope of an in-place ReLU above, applied by SUM of two (Net._folds)

    @property
    def backward_reads(self):
        return ("bottom",) if self.p.operation == "PROD" else ()  # MAX keeps its mask

    def setup(self, bottom_shapes):
        p = self.p
        for i, s in enumerate(bottom_shapes[1:], 1):
            if tuple(s) != tuple(bottom_shapes[0]):
                raise LayerError(f"all bottoms must have the same shape; received "
                                 f"{', '.join(str(list(b)) for b in bottom_shapes)} (bottom {i} differs); "
                                 "Eltwise does not broadcast", "bottom")
        if p.coeff and p.operation != "SUM":
            raise LayerError(f"coeff applies to SUM only; received operation {p.operation}", "eltwise_param.coeff")
        if p.coeff and len(p.coeff) != len(bottom_shapes):
            raise LayerError(f"coeff needs one value per bottom ({len(bottom_shapes)}); received {p.coeff}",
                             "eltwise_param.coeff")
        self.coeff = p.coeff or [1.0] * len(bottom_shapes)
        return [tuple(bottom_shapes[0])]

    def forward(self, bottom, top):
        y, op = top[0].data.ravel(), self.p.operation
        if op == "SUM" and len(bottom) == 2 and bottom[0] is not top[0] and bottom[1] is not top[0]:
            relu = (True, self.relu) if self.relu is not None else (False, 0.0)
            return sum_two(bottom[0].data.ravel(), self.coeff[0], bottom[1].data.ravel(), self.coeff[1], y, *relu)
        if op == "SUM":
            scale_into(bottom[0].data.ravel(), self.coeff[0], y)
            for c, b in zip(self.coeff[1:], bottom[1:]):
                add_scaled(b.data.ravel(), c, y)
        elif op == "PROD":
            y[...] = bottom[0].data.ravel()
            for b in bottom[1:]:
                mul_into(b.data.ravel(), y)
        else:
            if getattr(self, "mask", None) is None or self.mask.size != y.size:
                self.mask = np.empty(y.size, np.int32)
            y[...] = bottom[0].data.ravel()
            for k, blob in enumerate(bottom[1:], 1):
                max_step(blob.data.ravel(), k, y, self.mask, k == 1)

    def backward(self, top, propagate_down, bottom):
        dy, op = top[0].diff.ravel(), self.p.operation
        for i, (b, prop) in enumerate(zip(bottom, propagate_down)):
            if not prop:
                continue
            dx = b.diff.ravel()
            if op == "SUM":
                scale_into(dy, self.coeff[i], dx)
            elif op == "PROD":  # the product of the other bottoms (Caffe's stable_prod_grad)
                dx[...] = dy
                for j, o in enumerate(bottom):
                    if j != i:
                        mul_into(o.data.ravel(), dx)
            else:
                select_grad(dy, self.mask, i, dx)


@register("Reduction")
class Reduction(Layer):
    """Reduce all axes from `axis` on: SUM, ASUM (sum of |x|), SUMSQ or MEAN, times coeff.
    Bottom (d0..dk) -> top (d0..d_{axis-1})."""
    backward_reads = ("bottom",)

    param_block = "reduction_param"
    fields = (Field("operation", "enum", "SUM", "the reduction", choices=("SUM", "ASUM", "SUMSQ", "MEAN")),
              Field("axis", "int", 0, "first axis to reduce"),
              Field("coeff", "float", 1.0, "multiplies the result"))

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        a = self.axis = _axis(self.p.axis, len(s), "reduction_param.axis") if s else 0
        if a == 0 and self.p.operation == "MEAN":
            self.axis = None  # the mean of equal slices' means is the batch's mean
        self.view = (count(s, 0, a), count(s, a))
        return [s[:a]]

    OPS = {"SUM": 0, "ASUM": 1, "SUMSQ": 2, "MEAN": 3}

    def forward(self, bottom, top):
        reduce_rows(bottom[0].data.reshape(self.view), self.OPS[self.p.operation], self.p.coeff,
                    top[0].data.reshape(-1))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            reduce_rows_backward(bottom[0].data.reshape(self.view), top[0].diff.reshape(-1),
                                 self.OPS[self.p.operation], self.p.coeff, bottom[0].diff.reshape(self.view))


@register("ArgMax")
class ArgMax(Layer):
    """Indices (and with out_max_val, values) of the top_k largest entries.

    Without axis: per example over the flattened dims -> top (N, 1 or 2, top_k, 1, ...) with as many axes as
    the bottom (at least 3, as Caffe's); with axis: along it, top_k (or the values) replacing that axis.
    Not differentiable."""
    backward_reads = ()

    param_block = "argmax_param"
    fields = (Field("out_max_val", "bool", False, "also output the values"),
              Field("top_k", "int", 1, "how many", minimum=1),
              Field("axis", "int", None, "the axis to search (default: all but the first)"))
    differentiable = False

    def setup(self, bottom_shapes):
        s, p = tuple(bottom_shapes[0]), self.p
        if p.axis is None:
            if p.top_k > count(s, 1):
                raise LayerError(f"top_k {p.top_k} is larger than the {count(s, 1)} values per example",
                                 "argmax_param.top_k")
            return [(s[0], 2 if p.out_max_val else 1, p.top_k) + (1,) * (len(s) - 3)]
        self.axis = _axis(p.axis, len(s), "argmax_param.axis")
        if p.top_k > s[self.axis]:
            raise LayerError(f"top_k {p.top_k} is larger than axis {self.axis} of size {s[self.axis]}",
                             "argmax_param.top_k")
        return [s[:self.axis] + (p.top_k,) + s[self.axis + 1:]]

    def forward(self, bottom, top):
        x, y, k = bottom[0].data, top[0].data, self.p.top_k
        if self.p.axis is None:  # top (N, 1 or 2, k, 1...): indices, then values
            y = y.reshape(y.shape[:3])
            top_k_along(x.reshape(x.shape[0], -1, 1), k, y[:, 0, :, None], y[:, -1, :, None], True,
                        self.p.out_max_val)
            return
        view = (count(x.shape, 0, self.axis), x.shape[self.axis], count(x.shape, self.axis + 1))
        out = y.reshape(view[0], k, view[2])
        top_k_along(x.reshape(view), k, out, out, not self.p.out_max_val, self.p.out_max_val)


@register("Embed")
class Embed(Layer):
    """Look up rows of a learned table: top = W[int(x)] (+ b). Bottom (any shape) of indices in
    [0, input_dim) -> top bottom.shape + (num_output,). Weight (input_dim, num_output). No gradient to the
    indices."""
    backward_reads = ()

    param_block = "embed_param"
    blocked_bottoms = (0,)
    fields = (Field("num_output", "int", None, "width of each row", minimum=1, required=True),
              Field("input_dim", "int", None, "number of rows (indices 0..input_dim-1)", minimum=1, required=True),
              Field("bias_term", "bool", True, "add a learned bias"),
              Field("weight_filler", "filler", None, "filler of the table (Caffe's default: constant 0)"),
              Field("bias_filler", "filler", None, "filler of the bias"))

    def setup(self, bottom_shapes):
        p = self.p
        self.blob_shapes = [((p.input_dim, p.num_output), p.weight_filler)]
        if p.bias_term:
            self.blob_shapes.append(((p.num_output,), p.bias_filler))
        return [tuple(bottom_shapes[0]) + (p.num_output,)]

    def forward(self, bottom, top):
        x = bottom[0].data.ravel()
        if getattr(self, "idx", None) is None or self.idx.size != x.size:
            self.idx = np.empty(x.size, np.int64)
        bias = self.blobs[1].data if self.p.bias_term else self.blobs[0].data[0]
        bad = embed_forward(x, self.blobs[0].data, bias, self.p.bias_term, self.idx,
                            top[0].data.reshape(-1, self.p.num_output))
        if bad >= 0:
            raise UserError(f"layer '{self.name}' (Embed): index {x[bad]:g} at position {bad} of blob "
                            f"'{bottom[0].name}' is not an integer in 0..{self.p.input_dim - 1}; raise input_dim "
                            "or fix the indices")

    def backward(self, top, propagate_down, bottom):
        bias = self.blobs[1].diff if self.p.bias_term else self.blobs[0].diff[0]
        embed_backward(self.idx, top[0].diff.reshape(-1, self.p.num_output), self.blobs[0].diff, bias,
                       self.p.bias_term)


@register("Parameter")
class Parameter(Layer):
    """A learnable blob exposed as a top. No bottoms; parameter_param.shape."""
    backward_reads = ()

    param_block = "parameter_param"
    fields = (Field("shape", "shape", None, "the blob's shape, e.g. {dim: [10, 3]}", required=True),)
    bottoms = (0, 0)

    def setup(self, bottom_shapes):
        shape = dims(self.p.shape)
        self.blob_shapes = [(shape, None)]
        return [shape]

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff += top[0].diff
