"""Split: one bottom consumed by several layers. Inserted by the net compiler, as in Caffe.

The tops share the bottom's data (no copy); backward sums the tops' diffs into the bottom.
"""
from __future__ import annotations

from .base import Layer, register
from .kernels import add_two


@register("Split")
class Split(Layer):
    """Bottom (any shape) -> k tops of the same shape, sharing its data."""
    backward_reads = ()

    tops = (1, None)

    def setup(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * self.n_tops

    def forward(self, bottom, top):
        for t in top:
            if t.data is not bottom[0].data:  # the net shares the arrays; a lone layer copies
                t.data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            if len(top) == 2 and dx.flags.c_contiguous:  # one pass, on the threads where the batch runs whole
                add_two(top[0].diff.reshape(-1), top[1].diff.reshape(-1), dx.reshape(-1))
                return
            dx[...] = top[0].diff
            for t in top[1:]:
                dx += t.diff
