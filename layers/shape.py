"""Layers that move values without arithmetic: Concat, Slice, Tile, Crop, Flatten, Reshape, Silence.

Blobs are viewed as (outer, axis * inner) rows so that every copy is a contiguous segment per row; the
kernels copy those segments in parallel over the rows. Flatten and Reshape share the bottom's memory
(Caffe's ShareData/ShareDiff): the net gives their top a view of the bottom, so they copy nothing.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from netspec.errors import LayerError
from .base import Field, Layer, count, dims, register


def copy_rows(src, src_start, dst, dst_start, width):
    """dst[r, dst_start:dst_start+width] = src[r, src_start:src_start+width] for every row r (2-D arrays).
    NumPy's strided copy: 4-9x the prange loop it replaces (an LSTM's last step sliced off 0.19 -> 0.02 ms)."""
    dst[:, dst_start:dst_start + width] = src[:, src_start:src_start + width]


@njit(cache=True, nogil=True, parallel=True)
def sum_tiles(dy, dx):
    """Tile backward: dx[r, j] = sum_t dy[r, t, j]. dy (outer, tiles, width), dx (outer, width)."""
    for r in prange(dy.shape[0]):
        for j in range(dy.shape[2]):
            dx[r, j] = dy[r, 0, j]
        for t in range(1, dy.shape[1]):
            for j in range(dy.shape[2]):
                dx[r, j] += dy[r, t, j]


@njit(cache=True, nogil=True, parallel=True)
def crop_copy(big, small, small_shape, big_strides, base, to_small):
    """Copy between a crop window of `big` and `small` (both raveled). small_shape: the window's dims;
    big_strides: big's strides in elements; base: the window's first element in big. Runs over the
    window's rows (all axes but the last), each a contiguous segment."""
    nd = small_shape.size
    width = small_shape[nd - 1]
    rows = small.size // width if width else 0
    for r in prange(rows):
        off = base
        rest = r + 0  # a copy: the loop index itself must not be written
        for a in range(nd - 2, -1, -1):
            off += (rest % small_shape[a]) * big_strides[a]
            rest = rest // small_shape[a]
        for j in range(width):
            if to_small:
                small[r * width + j] = big[off + j]
            else:
                big[off + j] = small[r * width + j]


@njit(cache=True, nogil=True, parallel=True)
def fill_zero(x):
    """x[:] = 0 (raveled)."""
    for i in prange(x.size):
        x[i] = 0.0


def _rows(a, axis):
    """View a as (outer, rest) with outer = prod(shape[:axis])."""
    return a.reshape(count(a.shape, 0, axis), -1)


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
    backward_reads = ()

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
        y, inner = _rows(top[0].data, self.axis), count(top[0].shape, self.axis + 1)
        start = 0
        for b, size in zip(bottom, self.sizes):
            copy_rows(_rows(b.data, self.axis), 0, y, start * inner, size * inner)
            start += size

    def backward(self, top, propagate_down, bottom):
        dy, inner = _rows(top[0].diff, self.axis), count(top[0].shape, self.axis + 1)
        start = 0
        for b, size, prop in zip(bottom, self.sizes, propagate_down):
            if prop:
                copy_rows(dy, start * inner, _rows(b.diff, self.axis), 0, size * inner)
            start += size


@register("Flatten")
class Flatten(Layer):
    """Collapse axes [axis, end_axis] into one. (N, C, H, W) -> (N, C*H*W) by default."""
    backward_reads = ()

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

    shares_bottom = True  # the net makes the top a view of the bottom: nothing to copy

    def forward(self, bottom, top):
        if not np.may_share_memory(top[0].data, bottom[0].data):
            copy_rows(bottom[0].data.reshape(1, -1), 0, top[0].data.reshape(1, -1), 0, bottom[0].count)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and not np.may_share_memory(top[0].diff, bottom[0].diff):
            copy_rows(top[0].diff.reshape(1, -1), 0, bottom[0].diff.reshape(1, -1), 0, bottom[0].count)


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
    backward_reads = ()

    param_block = "crop_param"
    blocked_bottoms = (1,)
    fields = (Field("axis", "int", 2, "first axis to crop"),
              Field("offset", "int", None, "where the crop starts", minimum=0, repeated=True))
    bottoms = (2, 2)

    def setup(self, bottom_shapes):
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        axis = self.axis = _axis(self.p.axis, len(a), "crop_param.axis")
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
        out = a[:axis] + b[axis:]
        start = [0] * axis + list(off)
        strides = [count(a, k + 1) for k in range(len(a))]
        self.window = (np.array(out, np.int64), np.array(strides, np.int64),
                       sum(o * st for o, st in zip(start, strides)))
        return [out]

    def forward(self, bottom, top):
        crop_copy(bottom[0].data.ravel(), top[0].data.ravel(), *self.window, True)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            fill_zero(bottom[0].diff.ravel())
            crop_copy(bottom[0].diff.ravel(), top[0].diff.ravel(), *self.window, False)
        if len(propagate_down) > 1 and propagate_down[1]:
            fill_zero(bottom[1].diff.ravel())  # the reference only gives a shape


@register("Slice")
class Slice(Layer):
    """Split a bottom along `axis` at slice_point (or evenly) into k tops. The tops in `silenced` (only Silence
    reads them: Net.skip_silenced) are not copied forward, and their part of the bottom diff is zero."""
    backward_reads = ()
    silenced = ()

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
        x, inner = _rows(bottom[0].data, self.axis), count(bottom[0].shape, self.axis + 1)
        for j, (t, (a, b)) in enumerate(zip(top, self.bounds)):
            if j not in self.silenced:
                copy_rows(x, a * inner, _rows(t.data, self.axis), 0, (b - a) * inner)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx, inner = _rows(bottom[0].diff, self.axis), count(bottom[0].shape, self.axis + 1)
            for j, (t, (a, b)) in enumerate(zip(top, self.bounds)):
                if j in self.silenced:
                    dx[:, a * inner:b * inner] = 0
                else:
                    copy_rows(_rows(t.diff, self.axis), 0, dx, a * inner, (b - a) * inner)


@register("Silence")
class Silence(Layer):
    """Consume blobs so they are not net outputs. No tops; backward writes zero diffs, but not to the bottoms in
    `unread` (their producer left them out and writes its bottom's zero diff itself: Net.skip_silenced)."""
    backward_reads = ()
    unread = ()

    bottoms = (1, None)
    tops = (0, 0)

    def setup(self, bottom_shapes):
        return []

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for i, (b, prop) in enumerate(zip(bottom, propagate_down)):
            if prop and i not in self.unread:
                fill_zero(b.diff.ravel())


@register("Tile")
class Tile(Layer):
    """Repeat the bottom `tiles` times along `axis`."""
    backward_reads = ()

    param_block = "tile_param"
    fields = (Field("axis", "int", 1, "the axis to repeat"),
              Field("tiles", "int", None, "how many copies", minimum=1, required=True))

    def setup(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        self.axis = _axis(self.p.axis, len(s), "tile_param.axis")
        return [s[:self.axis] + (s[self.axis] * self.p.tiles,) + s[self.axis + 1:]]

    def forward(self, bottom, top):
        x, y = _rows(bottom[0].data, self.axis), _rows(top[0].data, self.axis)
        for t in range(self.p.tiles):
            copy_rows(x, 0, y, t * x.shape[1], x.shape[1])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = _rows(bottom[0].diff, self.axis)
            sum_tiles(top[0].diff.reshape(dx.shape[0], self.p.tiles, dx.shape[1]), dx)




@register("BatchReindex")
class BatchReindex(Layer):
    """Rows of bottom[0] picked by bottom[1]: top[i] = x[permut[i]] (Caffe's BatchReindex). Bottoms: x (N, ...),
    permut (M,) of indices in 0..N-1 -> top (M, ...). The gradient sums into the rows picked (none to permut)."""
    backward_reads = ("bottom",)  # the indices
    bottoms = (2, 2)
    blocked_bottoms = (1,)
    axis = 0  # it mixes the examples of the batch: never run as slices

    def setup(self, bottom_shapes):
        x, permut = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(permut) != 1:
            raise LayerError(f"bottom[1] (the indices) must be 1-D; received {list(permut)}", "bottom")
        return [(permut[0],) + x[1:]]

    def _indices(self, bottom):
        idx = bottom[1].data.ravel()
        n = bottom[0].data.shape[0]
        bad = (idx < 0) | (idx >= n) | (idx != np.round(idx))
        if bad.any():
            i = int(np.argmax(bad))
            raise LayerError(f"index {idx[i]:g} at position {i} of bottom[1] is not a row of bottom[0] (0..{n - 1})",
                             "bottom")
        return idx.astype(np.int64)

    def forward(self, bottom, top):
        np.take(bottom[0].data, self._indices(bottom), axis=0, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = 0
            np.add.at(dx, self._indices(bottom), top[0].diff)


@register("Filter")
class Filter(Layer):
    """The rows whose selector is non-zero (Caffe's Filter). Bottoms: K blobs (N, ...) and the selector (N,) or
    (N, 1, ...) -> K tops (M, ...), M the number of non-zero selectors in this batch: the net reshapes the
    layers above at every batch (Net.reshape). The gradient goes back to the rows selected (0 elsewhere), never
    to the selector. At setup, before any data, M = N, as Caffe's first reshape."""
    backward_reads = ("bottom",)  # the selector
    bottoms = (2, None)
    tops = (1, None)
    blocked_bottoms = (-1,)
    axis = 0  # it mixes the examples of the batch: never run as slices
    reshapes = True

    def setup(self, bottom_shapes):
        *blobs, sel = [tuple(s) for s in bottom_shapes]
        if self.n_tops != len(blobs):
            raise LayerError(f"{len(blobs) + 1} bottoms (blobs and the selector last) need {len(blobs)} tops; "
                             f"received {self.n_tops}", "top")
        if not sel or any(d != 1 for d in sel[1:]):
            raise LayerError(f"the selector (the last bottom) must be (N,) or (N, 1, ...); received {list(sel)}",
                             "bottom")
        for i, s in enumerate(blobs):
            if not s or s[0] != sel[0]:
                raise LayerError(f"bottom {i} {list(s)} and the selector {list(sel)} must have the same first "
                                 "dimension (the batch)", "bottom")
        return [s for s in blobs]

    def forward(self, bottom, top):
        self.rows = np.flatnonzero(bottom[-1].data.reshape(-1))
        for b, t in zip(bottom, top):
            shape = (self.rows.size,) + b.data.shape[1:]
            if t.data.shape != shape:  # another number of rows than the last batch: the net follows
                t.data, t.diff = np.empty(shape, b.data.dtype), np.zeros(shape, b.data.dtype)
            np.take(b.data, self.rows, axis=0, out=t.data)

    def backward(self, top, propagate_down, bottom):
        for i, t in enumerate(top):
            if propagate_down[i]:
                dx = bottom[i].diff
                dx[...] = 0
                dx[self.rows] = t.diff


@register("Permute")
class Permute(Layer):
    """The axes in a new order (SSD's Caffe Permute; not in BVLC Caffe): permute_param.order lists the bottom's
    axes as they come out, the rest following in their order. E.g. (N, T, I) -> (T, N, I) with order [1, 0, 2]
    puts time first for a recurrent layer. Shapes: any -> the permuted shape."""
    backward_reads = ()
    param_block = "permute_param"
    fields = (Field("order", "int", None, "the bottom's axes in their new order", repeated=True, minimum=0),)

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        order = list(self.p.order)
        if len(set(order)) != len(order) or any(a >= len(shape) for a in order):
            raise LayerError(f"order {order} must name distinct axes of the bottom {list(shape)} (0..{len(shape) - 1})",
                             "permute_param.order")
        self.axes = tuple(order + [a for a in range(len(shape)) if a not in order])
        self.back = tuple(np.argsort(self.axes))
        return [tuple(shape[a] for a in self.axes)]

    def forward(self, bottom, top):
        np.copyto(top[0].data, bottom[0].data.transpose(self.axes))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            np.copyto(bottom[0].diff, top[0].diff.transpose(self.back))
