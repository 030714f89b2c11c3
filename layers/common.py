"""Common layers that combine or reshape blobs: Concat, Eltwise, Flatten, Reshape."""
from __future__ import annotations

import numpy as np

from netspec.errors import LayerError
from .base import Field, Layer, count, dims, register
from .kernels import add_scaled, max_step, mul_into, reduce_rows, reduce_rows_backward, scale_into, select_grad


def _alias(p, old, block):
    """Caffe's deprecated concat_dim/slice_dim: used when given, and not together with a non-default axis."""
    value = getattr(p, old)
    if value is None:
        return p.axis
    if p.axis != 1:
        raise LayerError(f"give either axis or {old} (deprecated), not both", f"{block}.{old}")
    return value


def _axis(axis, ndim, field):
    if not -ndim <= axis < ndim:
        raise LayerError(f"axis {axis} is out of range for a {ndim}-D bottom", field)
    return axis % ndim


@register("Concat")
class Concat(Layer):
    """Join bottoms along `axis`. Bottoms (..., C_i, ...) -> top (..., sum C_i, ...)."""

    param_block = "concat_param"
    fields = (Field("axis", "int", 1, "the axis to join along"),
              Field("concat_dim", "int", None, "deprecated alias of axis (Caffe's)", minimum=0))
    bottoms = (1, None)

    def setup(self, bottom_shapes):
        first = bottom_shapes[0]
        axis = self.axis = _axis(_alias(self.p, "concat_dim", "concat_param"), len(first), "concat_param.axis")
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
        y, op = top[0].data.ravel(), self.p.operation
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
    fields = (Field("shape", "new_shape", None, "the new dims, e.g. {dim: [0, -1]}", required=True),
              Field("axis", "int", 0, "first bottom axis to replace"),
              Field("num_axes", "int", -1, "how many bottom axes to replace (-1: all from axis)", minimum=-1))

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        want = list(dims(self.p.shape))
        a = self.p.axis if self.p.axis >= 0 else len(s) + 1 + self.p.axis
        if not 0 <= a <= len(s):
            raise LayerError(f"axis {self.p.axis} is out of range for a {len(s)}-D bottom", "reshape_param.axis")
        end = len(s) if self.p.num_axes == -1 else a + self.p.num_axes
        if end > len(s):
            raise LayerError(f"axis {a} + num_axes {self.p.num_axes} runs past the {len(s)}-D bottom",
                             "reshape_param.num_axes")
        if sum(d == -1 for d in want) > 1:
            raise LayerError(f"shape {want} has more than one -1; only one dim can be inferred", "reshape_param.shape")
        if any(d < -1 for d in want) or any(d == 0 and a + i >= len(s) for i, d in enumerate(want)):
            raise LayerError(f"shape {want} holds an invalid dim for bottom {list(s)}", "reshape_param.shape")
        new = [s[a + i] if d == 0 else d for i, d in enumerate(want)]
        out = list(s[:a]) + new + list(s[end:])
        total, known = count(s), int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if -1 in out:
            if known == 0 or total % known:
                raise LayerError(f"cannot infer the -1 in {want}: the bottom {list(s)} holds {total} values, not "
                                 f"a multiple of {known}", "reshape_param.shape")
            out[out.index(-1)] = total // known
        if count(out) != total:
            raise LayerError(f"Reshape changes the count: bottom {list(s)} holds {total} values but shape {want} "
                             f"gives {list(out)} = {count(out)}; use 0 to copy a dim or -1 to infer one",
                             "reshape_param.shape")
        return [tuple(out)]


@register("Crop")
class Crop(Layer):
    """Crop bottom[0] to bottom[1]'s shape from `axis` on. Bottoms: x, reference -> top
    x.shape[:axis] + reference.shape[axis:]; offset: none (0), one for all cropped axes, or one each."""

    param_block = "crop_param"
    blocked_bottoms = (1,)
    fields = (Field("axis", "int", 2, "first axis to crop"),
              Field("offset", "int", None, "where the crop starts", minimum=0, repeated=True))
    bottoms = (2, 2)

    def setup(self, bottom_shapes):
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        axis = _axis(self.p.axis, len(a), "crop_param.axis")
        if len(a) != len(b):
            raise LayerError(f"bottoms {list(a)} and {list(b)} need the same number of axes", "bottom")
        n = len(a) - axis
        off = self.p.offset or [0]
        if len(off) not in (1, n):
            raise LayerError(f"offset needs 1 value or one per cropped axis ({n}); received {off}", "crop_param.offset")
        off = off * n if len(off) == 1 else off
        for i, o in enumerate(off):
            if o + b[axis + i] > a[axis + i]:
                raise LayerError(f"crop of axis {axis + i} at offset {o} with size {b[axis + i]} runs past the "
                                 f"bottom's size {a[axis + i]} (bottoms {list(a)}, {list(b)})", "crop_param.offset")
        self.index = tuple(slice(None) for _ in range(axis)) + tuple(
            slice(o, o + b[axis + i]) for i, o in enumerate(off))
        return [a[:axis] + b[axis:]]

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.index]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.index] = top[0].diff
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0  # the reference only gives a shape


@register("Slice")
class Slice(Layer):
    """Split a bottom along `axis` at slice_point (or evenly) into k tops."""

    param_block = "slice_param"
    fields = (Field("axis", "int", 1, "the axis to cut"),
              Field("slice_dim", "int", None, "deprecated alias of axis (Caffe's)", minimum=0),
              Field("slice_point", "int", None, "indices where a new top starts (k - 1 of them)", minimum=1,
                    repeated=True))
    tops = (1, None)

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        axis = self.axis = _axis(_alias(self.p, "slice_dim", "slice_param"), len(s), "slice_param.axis")
        k, size, points = self.n_tops, s[axis], self.p.slice_point
        if points:
            if len(points) != k - 1 or any(b <= a for a, b in zip(points, points[1:])) or points[-1] >= size:
                raise LayerError(f"slice_point needs {k - 1} increasing values inside 1..{size - 1} for {k} tops; "
                                 f"received {points}", "slice_param.slice_point")
            bounds = [0] + list(points) + [size]
        else:
            if size % k:
                raise LayerError(f"{k} tops do not evenly divide axis {axis} of size {size}; give slice_point",
                                 "slice_param.slice_point")
            bounds = [i * size // k for i in range(k + 1)]
        self.bounds = list(zip(bounds, bounds[1:]))
        return [s[:axis] + (b - a,) + s[axis + 1:] for a, b in self.bounds]

    def forward(self, bottom, top):
        for t, (a, b) in zip(top, self.bounds):
            t.data[...] = np.take(bottom[0].data, range(a, b), axis=self.axis)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.concatenate([t.diff for t in top], axis=self.axis, out=bottom[0].diff)


@register("Silence")
class Silence(Layer):
    """Consume blobs so they are not net outputs. No tops; backward writes zero diffs."""

    bottoms = (1, None)
    tops = (0, 0)

    def setup(self, bottom_shapes):
        return []

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, prop in zip(bottom, propagate_down):
            if prop:
                b.diff[...] = 0


@register("Tile")
class Tile(Layer):
    """Repeat the bottom `tiles` times along `axis`."""

    param_block = "tile_param"
    fields = (Field("axis", "int", 1, "the axis to repeat"),
              Field("tiles", "int", None, "how many copies", minimum=1, required=True))

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        self.axis = _axis(self.p.axis, len(s), "tile_param.axis")
        return [s[:self.axis] + (s[self.axis] * self.p.tiles,) + s[self.axis + 1:]]

    def forward(self, bottom, top):
        reps = [1] * bottom[0].data.ndim
        reps[self.axis] = self.p.tiles
        top[0].data[...] = np.tile(bottom[0].data, reps)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            s = bottom[0].shape
            dy = top[0].diff.reshape(s[:self.axis] + (self.p.tiles,) + s[self.axis:])
            bottom[0].diff[...] = dy.sum(axis=self.axis)


@register("Reduction")
class Reduction(Layer):
    """Reduce all axes from `axis` on: SUM, ASUM (sum of |x|), SUMSQ or MEAN, times coeff.
    Bottom (d0..dk) -> top (d0..d_{axis-1})."""

    param_block = "reduction_param"
    fields = (Field("operation", "enum", "SUM", "the reduction", choices=("SUM", "ASUM", "SUMSQ", "MEAN")),
              Field("axis", "int", 0, "first axis to reduce"),
              Field("coeff", "float", 1.0, "multiplies the result"))

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        a = _axis(self.p.axis, len(s), "reduction_param.axis") if s else 0
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

    Without axis: per example over the flattened dims -> top (N, 1 or 2, top_k); with axis: along it,
    top_k (or the values) replacing that axis. Not differentiable."""

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
            return [(s[0], 2 if p.out_max_val else 1, p.top_k)]
        self.axis = _axis(p.axis, len(s), "argmax_param.axis")
        if p.top_k > s[self.axis]:
            raise LayerError(f"top_k {p.top_k} is larger than axis {self.axis} of size {s[self.axis]}",
                             "argmax_param.top_k")
        return [s[:self.axis] + (p.top_k,) + s[self.axis + 1:]]

    def forward(self, bottom, top):
        x, p = bottom[0].data, self.p
        if p.axis is None:
            flat = x.reshape(x.shape[0], -1)
            idx = np.argsort(-flat, axis=1, kind="stable")[:, :p.top_k]
            top[0].data[:, 0] = idx
            if p.out_max_val:
                top[0].data[:, 1] = np.take_along_axis(flat, idx, axis=1)
            return
        idx = np.argsort(-x, axis=self.axis, kind="stable").take(range(p.top_k), axis=self.axis)
        top[0].data[...] = np.take_along_axis(x, idx, axis=self.axis) if p.out_max_val else idx


@register("Embed")
class Embed(Layer):
    """Look up rows of a learned table: top = W[int(x)] (+ b). Bottom (any shape) of indices in
    [0, input_dim) -> top bottom.shape + (num_output,). Weight (input_dim, num_output). No gradient to the
    indices."""

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
        idx = x.astype(np.int64)
        bad = (idx < 0) | (idx >= self.p.input_dim) | (idx != x)
        if bad.any():
            from netspec.errors import UserError
            i = int(np.argmax(bad))
            raise UserError(f"layer '{self.name}' (Embed): index {x[i]:g} at position {i} of blob "
                            f"'{bottom[0].name}' is not an integer in 0..{self.p.input_dim - 1}; raise input_dim "
                            "or fix the indices")
        self.idx = idx
        y = top[0].data.reshape(-1, self.p.num_output)
        np.take(self.blobs[0].data, idx, axis=0, out=y)
        if self.p.bias_term:
            y += self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(-1, self.p.num_output)
        np.add.at(self.blobs[0].diff, self.idx, dy)
        if self.p.bias_term:
            self.blobs[1].diff += dy.sum(axis=0)


@register("Parameter")
class Parameter(Layer):
    """A learnable blob exposed as a top. No bottoms; parameter_param.shape."""

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
