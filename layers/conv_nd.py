"""Convolution geometry for any channel axis and any number of spatial axes (Caffe's N-D path), and the
im2col/col2im kernels for 3 or more spatial axes (video, volumes). One or two spatial axes run on the 2-D
kernels of layers/conv.py (one axis as a plane of height 1).

Shapes: bottom (outer..., C, S_1, ..., S_k) with the channel axis at `axis`; outer axes are images.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from netspec.errors import LayerError


def nd_param(p, block, name, default, k):
    """Caffe's kernel_size/pad/stride/dilation for k spatial axes: given once (all axes) or once per axis, or as
    name_h/name_w for 2 axes (pad_h or pad_w alone: the other is 0). Returns a tuple of k ints."""
    full = name + "_size" if name == "kernel" else name
    rep = getattr(p, full)
    rep = [] if rep is None else rep if isinstance(rep, list) else [rep]
    h, w = getattr(p, name + "_h", None), getattr(p, name + "_w", None)
    if h is not None or w is not None:
        if rep:
            raise LayerError(f"give either {full} or {name}_h/{name}_w, not both", f"{block}.{full}")
        if k != 2:
            raise LayerError(f"{name}_h/{name}_w are for 2 spatial axes; this bottom has {k}: give {full} once or "
                             f"once per spatial axis", f"{block}.{name}_{'h' if h is not None else 'w'}")
        if name == "pad":
            return int(h or 0), int(w or 0)
        if h is None or w is None:
            raise LayerError(f"{name}_h and {name}_w must be given together; received {name}_h={h}, {name}_w={w}",
                             f"{block}.{name}_{'h' if h is None else 'w'}")
        return int(h), int(w)
    if not rep:
        if default is None:
            raise LayerError(f"{full} is required" + (f" (or {name}_h and {name}_w)" if k == 2 else ""), block)
        return (default,) * k
    if len(rep) == 1:
        return (int(rep[0]),) * k
    if len(rep) == k:
        return tuple(int(v) for v in rep)
    raise LayerError(f"{full} must be given once or once per spatial axis ({k}); received {rep}", f"{block}.{full}")


def split_axes(shape, axis, block):
    """(outer images, channels, spatial shape, canonical axis) of a bottom around its channel axis."""
    nd = len(shape)
    if not -nd <= axis < nd:
        raise LayerError(f"axis {axis} is out of range for bottom {list(shape)}", f"{block}.axis")
    a = axis % nd
    return int(np.prod(shape[:a], dtype=np.int64)), int(shape[a]), tuple(int(s) for s in shape[a + 1:]), a


@njit(cache=True, nogil=True)
def _gather(x, ishape, oshape, kshape, pad, stride, dil, col, adjoint):
    """col[c*taps + t, n*plane + q] = x[n, c, the input under tap t of output q] (0 outside the input), or with
    adjoint x[...] += col[...] (x zeroed first): one index walk for im2col_nd and col2im_nd."""
    n_img, chans, _ = x.shape
    if adjoint:
        x[...] = 0.0
    k = len(kshape)
    taps, plane = col.shape[0] // chans, col.shape[1] // n_img
    kidx = np.empty(k, np.int64)
    oidx = np.empty(k, np.int64)
    for c in range(chans):
        for t in range(taps):
            r = t
            for a in range(k - 1, -1, -1):
                kidx[a] = r % kshape[a]
                r //= kshape[a]
            for q in range(plane):
                r = q
                for a in range(k - 1, -1, -1):
                    oidx[a] = r % oshape[a]
                    r //= oshape[a]
                src, inside = 0, True
                for a in range(k):
                    pos = oidx[a] * stride[a] - pad[a] + kidx[a] * dil[a]
                    if pos < 0 or pos >= ishape[a]:
                        inside = False
                        break
                    src = src * ishape[a] + pos
                for n in range(n_img):
                    if adjoint:
                        if inside:
                            x[n, c, src] += col[c * taps + t, n * plane + q]
                    else:
                        col[c * taps + t, n * plane + q] = x[n, c, src] if inside else 0.0


def im2col_nd(x, ishape, oshape, kshape, pad, stride, dil, col):
    """x (N, C, prod(ishape)) -> col (C*prod(kshape), N*prod(oshape)); taps outside read 0."""
    _gather(x, ishape, oshape, kshape, pad, stride, dil, col, False)


def col2im_nd(col, ishape, oshape, kshape, pad, stride, dil, x):
    """The adjoint of im2col_nd: x (N, C, prod(ishape)) = the sum of col's entries over the taps reading it."""
    _gather(x, ishape, oshape, kshape, pad, stride, dil, col, True)


class NdPath:
    """A convolution over k >= 3 spatial axes by im2col_nd and matrix products, from spatial shape `ishape` to
    `oshape`: x (N, C, prod(ishape)), y (N, O, prod(oshape)), weight (O, C/group, *kernel). Deconvolution
    uses it the other way round (its forward is `data`, its backward `forward` and `weights`)."""

    def __init__(self, ishape, oshape, kernel, pad, stride, dilation, group):
        self.geo = tuple(np.array(v, np.int64) for v in (ishape, oshape, kernel, pad, stride, dilation))
        self.group, self.taps = group, int(np.prod(kernel))

    def _columns(self, x):
        n, c, _ = x.shape
        col = np.empty((c * self.taps, n * int(np.prod(self.geo[1]))), x.dtype)
        im2col_nd(x, *self.geo, col)
        return col

    def forward(self, x, w, y):
        """y = w * x (no bias)."""
        n, out_c, g = x.shape[0], y.shape[1], self.group
        col = self._columns(x)
        kg, og = col.shape[0] // g, out_c // g
        out = np.empty((out_c, col.shape[1]), x.dtype)
        wm = w.reshape(out_c, kg)
        for i in range(g):
            np.matmul(wm[i * og:(i + 1) * og], col[i * kg:(i + 1) * kg], out=out[i * og:(i + 1) * og])
        y[...] = out.reshape(out_c, n, -1).transpose(1, 0, 2)

    def weights(self, x, dy, dw):
        """dw += the weight gradient for input x and top diff dy."""
        out_c, g = dy.shape[1], self.group
        col = self._columns(x)
        dt = np.ascontiguousarray(dy.transpose(1, 0, 2)).reshape(out_c, -1)
        kg, og = col.shape[0] // g, out_c // g
        dwm = dw.reshape(out_c, kg)
        for i in range(g):
            dwm[i * og:(i + 1) * og] += dt[i * og:(i + 1) * og] @ col[i * kg:(i + 1) * kg].T

    def data(self, w, dy, dx):
        """dx = the input gradient for top diff dy (the transposed convolution of dy)."""
        n, c = dx.shape[:2]
        out_c, g = dy.shape[1], self.group
        dt = np.ascontiguousarray(dy.transpose(1, 0, 2)).reshape(out_c, -1)
        col = np.empty((c * self.taps, dt.shape[1]), dx.dtype)
        kg, og = col.shape[0] // g, out_c // g
        wm = w.reshape(out_c, kg)
        for i in range(g):
            np.matmul(wm[i * og:(i + 1) * og].T, dt[i * og:(i + 1) * og], out=col[i * kg:(i + 1) * kg])
        col2im_nd(col, *self.geo, dx)
