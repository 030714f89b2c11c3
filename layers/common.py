"""Common layers that combine or reshape blobs: Concat, Eltwise, Flatten, Reshape."""
from __future__ import annotations

import numpy as np

from netspec.errors import LayerError
from .base import Field, Layer, count, register


def _axis(axis, ndim, field):
    if not -ndim <= axis < ndim:
        raise LayerError(f"axis {axis} is out of range for a {ndim}-D bottom", field)
    return axis % ndim


@register("Concat")
class Concat(Layer):
    """Join bottoms along `axis`. Bottoms (..., C_i, ...) -> top (..., sum C_i, ...)."""

    param_block = "concat_param"
    fields = (Field("axis", "int", 1, "the axis to join along"),)
    bottoms = (1, None)

    def setup(self, bottom_shapes):
        first = bottom_shapes[0]
        axis = self.axis = _axis(self.p.axis, len(first), "concat_param.axis")
        for i, s in enumerate(bottom_shapes[1:], 1):
            if len(s) != len(first) or any(a != b for k, (a, b) in enumerate(zip(first, s)) if k != axis):
                raise LayerError(f"all bottoms must have the same shape except along axis {axis}; received "
                                 f"{', '.join(str(list(b)) for b in bottom_shapes)} (bottom {i} differs); "
                                 "fix the shapes or concatenate along another axis", "bottom")
        self.sizes = [s[axis] for s in bottom_shapes]
        return [first[:axis] + (sum(self.sizes),) + first[axis + 1:]]

    def forward(self, bottom, top):
        np.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        start = 0
        for b, size, prop in zip(bottom, self.sizes, propagate_down):
            if prop:
                b.diff[...] = np.take(top[0].diff, range(start, start + size), axis=self.axis)
            start += size


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
        y, op = top[0].data, self.p.operation
        if op == "SUM":
            y[...] = self.coeff[0] * bottom[0].data
            for c, b in zip(self.coeff[1:], bottom[1:]):
                y += c * b.data
        elif op == "PROD":
            y[...] = bottom[0].data
            for b in bottom[1:]:
                y *= b.data
        else:
            a, b = bottom[0].data, bottom[1].data
            self.mask = np.where(a > b, 0, 1).astype(np.int32)
            np.maximum(a, b, out=y)
            for k, blob in enumerate(bottom[2:], 2):
                win = blob.data > y
                self.mask[win] = k
                np.copyto(y, blob.data, where=win)

    def backward(self, top, propagate_down, bottom):
        dy, op = top[0].diff, self.p.operation
        for i, (b, prop) in enumerate(zip(bottom, propagate_down)):
            if not prop:
                continue
            if op == "SUM":
                np.multiply(dy, self.coeff[i], out=b.diff)
            elif op == "PROD":
                others = np.ones_like(dy)
                for j, o in enumerate(bottom):
                    if j != i:
                        others *= o.data
                np.multiply(dy, others, out=b.diff)
            else:
                np.multiply(dy, self.mask == i, out=b.diff)


@register("Flatten")
class Flatten(Layer):
    """Collapse axes [axis, end_axis] into one. (N, C, H, W) -> (N, C*H*W) by default."""

    param_block = "flatten_param"
    fields = (Field("axis", "int", 1, "first axis to flatten"),
              Field("end_axis", "int", -1, "last axis to flatten"))

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        a = _axis(self.p.axis, len(s), "flatten_param.axis")
        e = _axis(self.p.end_axis, len(s), "flatten_param.end_axis")
        if e < a:
            raise LayerError(f"end_axis {self.p.end_axis} comes before axis {self.p.axis}", "flatten_param.end_axis")
        return [s[:a] + (count(s, a, e + 1),) + s[e + 1:]]

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Reshape")
class Reshape(Flatten):
    """Change the shape, keeping the count. In shape.dim, 0 copies the bottom's dim and -1 is inferred
    (at most one); only axes [axis, axis + num_axes) are replaced."""

    param_block = "reshape_param"
    fields = (Field("shape", "shape", None, "the new dims, e.g. {dim: [0, -1]}", required=True),
              Field("axis", "int", 0, "first bottom axis to replace"),
              Field("num_axes", "int", -1, "how many bottom axes to replace (-1: all from axis)", minimum=-1))

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        dims = list(self.p.shape.get("dim", [])) if isinstance(self.p.shape, dict) else []
        dims = dims if isinstance(dims, list) else [dims]
        a = self.p.axis if self.p.axis >= 0 else len(s) + 1 + self.p.axis
        if not 0 <= a <= len(s):
            raise LayerError(f"axis {self.p.axis} is out of range for a {len(s)}-D bottom", "reshape_param.axis")
        end = len(s) if self.p.num_axes == -1 else a + self.p.num_axes
        if end > len(s):
            raise LayerError(f"axis {a} + num_axes {self.p.num_axes} runs past the {len(s)}-D bottom",
                             "reshape_param.num_axes")
        if sum(d == -1 for d in dims) > 1:
            raise LayerError(f"shape {dims} has more than one -1; only one dim can be inferred", "reshape_param.shape")
        new = [s[a + i] if d == 0 else d for i, d in enumerate(dims)]
        if any(d < -1 for d in new) or any(d == 0 and a + i >= len(s) for i, d in enumerate(dims)):
            raise LayerError(f"shape {dims} holds an invalid dim for bottom {list(s)}", "reshape_param.shape")
        out = list(s[:a]) + new + list(s[end:])
        total, known = count(s), int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if -1 in out:
            if known == 0 or total % known:
                raise LayerError(f"cannot infer the -1 in {dims}: the bottom {list(s)} holds {total} values, not "
                                 f"a multiple of {known}", "reshape_param.shape")
            out[out.index(-1)] = total // known
        if count(out) != total:
            raise LayerError(f"Reshape changes the count: bottom {list(s)} holds {total} values but shape {dims} "
                             f"gives {list(out)} = {count(out)}; use 0 to copy a dim or -1 to infer one",
                             "reshape_param.shape")
        return [tuple(out)]
