"""Loss layers besides SoftmaxWithLoss (softmax.py). Each produces a scalar top; the net seeds its diff
with the loss weight (1 by default for a loss layer)."""
from __future__ import annotations

import os

import numpy as np
from numba import njit

from netspec.errors import LayerError
from .base import Field, Layer, count, register
from .kernels import scale_into, sigmoid_xent, sub_into
from .softmax import BAD, IGNORED, LOSS_FIELDS, LabelError, _split, check_labels, label_at, softmax_forward


@njit(cache=True, nogil=True)
def class_indices(label, chans, idx):
    """idx[i] = int(label[i]); returns the first position that is not an integer in 0..chans-1, or -1."""
    for i in range(label.size):
        k = int(label[i])
        if k < 0 or k >= chans or k != label[i]:
            return i
        idx[i] = k
    return -1


@njit(cache=True, nogil=True)
def multinomial_forward(p, idx):
    """sum_i -log(max(p[i, idx[i]], 1e-20)), p (N, C)."""
    loss = 0.0
    for i in range(idx.size):
        loss -= np.log(max(p[i, idx[i]], 1e-20))
    return loss


@njit(cache=True, nogil=True)
def multinomial_backward(p, idx, scale, dx):
    """dx = scale / max(p, 1e-20) at each label, 0 elsewhere."""
    for i in range(idx.size):
        for c in range(dx.shape[1]):
            dx[i, c] = 0.0
        dx[i, idx[i]] = scale / max(p[i, idx[i]], 1e-20)


@njit(cache=True, nogil=True)
def hinge_forward(x, idx, squared, grad):
    """sum over (i, c) of m = max(0, 1 + s) with s = -x at the label, x elsewhere (m^2 if squared);
    grad = d/dx per element (the L1 hinge has slope 0 at its kink, as np.sign)."""
    loss = 0.0
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            sign = -1.0 if c == idx[i] else 1.0
            m = max(0.0, 1.0 + sign * x[i, c])
            if squared:
                loss += m * m
                grad[i, c] = sign * 2.0 * m
            else:
                loss += m
                grad[i, c] = sign if m > 0 else 0.0
    return loss


@njit(cache=True, nogil=True)
def infogain_forward(prob, label, H, ignore, has_ignore):
    """-sum over positions of sum_k H[label, k] log(max(p_k, FLT_MIN)). prob (outer, C, inner).
    Returns (loss, valid count, first bad label position or -1)."""
    outer, chans, inner = prob.shape
    loss = 0.0
    valid = 0
    for o in range(outer):
        for i in range(inner):
            lab = label_at(label, o * inner + i, chans, ignore, has_ignore)
            if lab == IGNORED:
                continue
            if lab == BAD:
                return loss, valid, o * inner + i
            for k in range(chans):
                loss -= H[lab, k] * np.log(max(prob[o, k, i], 1.1754943508222875e-38))
            valid += 1
    return loss, valid, -1


@njit(cache=True, nogil=True)
def infogain_backward(prob, label, H, ignore, has_ignore, scale, dx):
    """dx_k = (p_k * sum_j H[label, j] - H[label, k]) * scale; 0 at ignored positions."""
    outer, chans, inner = prob.shape
    for o in range(outer):
        for i in range(inner):
            lab = label_at(label, o * inner + i, chans, ignore, has_ignore)
            if lab == IGNORED:
                for k in range(chans):
                    dx[o, k, i] = 0.0
                continue
            row = 0.0
            for k in range(chans):
                row += H[lab, k]
            for k in range(chans):
                dx[o, k, i] = (prob[o, k, i] * row - H[lab, k]) * scale


@njit(cache=True, nogil=True)
def contrastive_forward(a, b, sim, margin, legacy, d, dist2):
    """d = a - b (N, D), dist2 = |d|^2 per pair; returns sum of dist2 (similar) or the margin term."""
    loss = 0.0
    for i in range(a.shape[0]):
        s = 0.0
        for j in range(a.shape[1]):
            d[i, j] = a[i, j] - b[i, j]
            s += d[i, j] * d[i, j]
        dist2[i] = s
        if sim[i] != 0:
            loss += s
        elif legacy:
            loss += max(margin - s, 0.0)
        else:
            m = max(margin - np.sqrt(s), 0.0)
            loss += m * m
    return loss


@njit(cache=True, nogil=True)
def contrastive_backward(d, dist2, sim, margin, legacy, alpha, dx):
    """Caffe's gradient: alpha * d (similar); dissimilar: -alpha * d (legacy, inside the margin) or
    -alpha * (margin - dist) / (dist + 1e-4) * d (inside the margin), else 0."""
    for i in range(d.shape[0]):
        if sim[i] != 0:
            coef = alpha
        elif legacy:
            coef = -alpha if margin - dist2[i] > 0 else 0.0
        else:
            dist = np.sqrt(dist2[i])
            coef = -alpha * (margin - dist) / (dist + 1e-4) if margin - dist > 0 else 0.0
        for j in range(d.shape[1]):
            dx[i, j] = coef * d[i, j]


class Loss(Layer):
    """Two bottoms (predictions, targets) -> a scalar; no gradient into the targets."""
    backward_reads = ("bottom",)

    bottoms = (2, 2)
    is_loss = True
    blocked_bottoms = (1,)

    def _num(self, bottom_shapes):
        a, b = bottom_shapes[0], bottom_shapes[1]
        if a[:1] != b[:1]:
            raise LayerError(f"the bottoms must have the same first dimension; received {list(a)} and {list(b)}",
                             "bottom")
        return a[0] if a else 1


@register("EuclideanLoss")
class EuclideanLoss(Loss):
    """sum((a - b)^2) / (2N), N = shape[0]. Bottoms a, b of the same count; gradient into both."""

    blocked_bottoms = ()

    def setup(self, bottom_shapes):
        a, b = bottom_shapes
        if count(a, 1) != count(b, 1) or a[:1] != b[:1]:
            raise LayerError(f"the bottoms must have the same dimensions; received {list(a)} and {list(b)}", "bottom")
        self.n = a[0] if a else 1
        return [()]

    def forward(self, bottom, top):
        if getattr(self, "d", None) is None or self.d.shape != bottom[0].shape:
            self.d = np.empty_like(bottom[0].data)
        top[0].data[...] = sub_into(bottom[0].data.ravel(), bottom[1].data.ravel(), self.d.ravel()) / (2 * self.n)

    def backward(self, top, propagate_down, bottom):
        g = float(top[0].diff) / self.n
        if propagate_down[0]:
            scale_into(self.d.ravel(), g, bottom[0].diff.ravel())
        if propagate_down[1]:
            scale_into(self.d.ravel(), -g, bottom[1].diff.ravel())


@register("SmoothL1Loss")
class SmoothL1Loss(Loss):
    """Fast R-CNN's smooth L1 (its Caffe fork's SmoothL1Loss): x = w_in * (a - b), f(x) = 0.5 (sigma x)^2 where
    |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2; loss = sum(w_out * f(x)) / N, N = shape[0]. Bottoms a, b [, w_in,
    w_out] of one shape; gradients into a and b."""

    param_block = "smooth_l1_loss_param"
    fields = (Field("sigma", "float", 1.0, "where the quadratic part ends: |x| < 1 / sigma^2", exclusive_minimum=0),)
    bottoms = (2, 4)
    blocked_bottoms = (2, 3)

    def setup(self, bottom_shapes):
        shapes = [tuple(s) for s in bottom_shapes]
        if any(s != shapes[0] for s in shapes[1:]):
            raise LayerError(f"the bottoms must have one shape; received {[list(s) for s in shapes]}", "bottom")
        self.n = shapes[0][0] if shapes[0] else 1
        return [()]

    def forward(self, bottom, top):
        s2 = self.p.sigma ** 2
        x = bottom[0].data - bottom[1].data
        if len(bottom) > 2:
            x = x * bottom[2].data
        small = np.abs(x) < 1.0 / s2
        f = np.where(small, 0.5 * s2 * x * x, np.abs(x) - 0.5 / s2)
        if len(bottom) > 3:
            f = f * bottom[3].data
        self.x, self.small = x, small
        top[0].data[...] = float(f.sum(dtype=np.float64)) / self.n

    def backward(self, top, propagate_down, bottom):
        s2 = self.p.sigma ** 2
        g = np.where(self.small, s2 * self.x, np.sign(self.x)) * (float(top[0].diff) / self.n)
        if len(bottom) > 3:
            g = g * bottom[3].data
        if len(bottom) > 2:
            g = g * bottom[2].data
        if propagate_down[0]:
            bottom[0].diff[...] = g
        if propagate_down[1]:
            bottom[1].diff[...] = -g


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(Loss):
    """Cross entropy of sigmoid(x) against targets t in [0, 1], computed stably. Bottoms x, t of one count.
    normalization defaults to BATCH_SIZE (as in Caffe)."""

    param_block = "loss_param"
    fields = LOSS_FIELDS

    def setup(self, bottom_shapes):
        a, b = bottom_shapes
        if count(a) != count(b):
            raise LayerError(f"the bottoms must have the same count; received {list(a)} ({count(a)}) and "
                             f"{list(b)} ({count(b)})", "bottom")
        self.n, self.total = (a[0] if a else 1), count(a)
        mode = self.p.normalization
        self.mode = mode or ("VALID" if self.p.normalize else "BATCH_SIZE")
        return [()]

    def _normalizer(self, valid):
        return max(1.0, float({"FULL": self.total, "VALID": valid, "BATCH_SIZE": self.n, "NONE": 1}[self.mode]))

    def forward(self, bottom, top):
        x = bottom[0].data
        if getattr(self, "grad", None) is None or self.grad.shape != x.shape:
            self.grad = np.empty_like(x)
        ignore = self.p.ignore_label
        loss, self.valid = sigmoid_xent(x.ravel(), bottom[1].data.ravel(), ignore or 0, ignore is not None,
                                        self.grad.ravel())
        top[0].data[...] = loss / self._normalizer(self.valid)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:  # (sigmoid(x) - t) * weight / normalizer, kept from forward
            scale_into(self.grad.ravel(), float(top[0].diff) / self._normalizer(self.valid), bottom[0].diff.ravel())


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(Loss):
    """-sum log(max(p[label], 1e-20)) / N for probabilities p (N, C) (e.g. a Softmax's top) and labels (N,)."""

    def setup(self, bottom_shapes):
        check_labels(bottom_shapes[0], bottom_shapes[1], 1)
        self.n, self.c = bottom_shapes[0][0], count(bottom_shapes[0], 1)
        self.idx = None
        return [()]

    def _labels(self, bottom):
        if self.idx is None:
            self.idx = np.zeros(self.n, np.int64)
        bad = class_indices(bottom[1].data.ravel(), self.c, self.idx)
        if bad >= 0:
            raise LabelError(self, bottom[1], bad, self.c)

    def forward(self, bottom, top):
        self._labels(bottom)
        top[0].data[...] = multinomial_forward(bottom[0].data.reshape(self.n, self.c), self.idx) / self.n

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            multinomial_backward(bottom[0].data.reshape(self.n, self.c), self.idx, -float(top[0].diff) / self.n,
                                 bottom[0].diff.reshape(self.n, self.c))


@register("HingeLoss")
class HingeLoss(MultinomialLogisticLoss):
    """Per example: flip the sign of the true class's score, then sum max(0, 1 + s) (L1) or its square (L2),
    divided by N. Bottoms scores (N, C), labels (N,)."""

    param_block = "hinge_loss_param"
    fields = (Field("norm", "enum", "L1", "L1 or squared (L2) hinge", choices=("L1", "L2")),)

    def setup(self, bottom_shapes):
        return super().setup(bottom_shapes)

    def forward(self, bottom, top):
        if getattr(self, "grad", None) is None:
            self.grad = np.zeros((self.n, self.c), self.dtype)  # d loss / d score, kept from forward
        self._labels(bottom)
        loss = hinge_forward(bottom[0].data.reshape(self.n, self.c), self.idx, self.p.norm == "L2", self.grad)
        top[0].data[...] = loss / self.n

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            scale_into(self.grad.ravel(), float(top[0].diff) / self.n, bottom[0].diff.ravel())


@register("InfogainLoss")
class InfogainLoss(Layer):
    """Softmax, then -sum_k H[label, k] log(p_k) / normalizer. Bottoms: scores (N, C, ...), labels
    [, H (C, C)]; without the third bottom H is read from infogain_loss_param.source (.npy, .npz with one
    array, .csv, or Caffe's .binaryproto), relative to the net file. H = identity gives SoftmaxWithLoss."""
    backward_reads = ("bottom",)

    param_block = "infogain_loss_param"
    fields = (Field("source", "str", None, "the C x C matrix H (.npy, .npz, .csv or .binaryproto)"),
              Field("axis", "int", 1, "the class axis"))
    other_blocks = {"loss_param": LOSS_FIELDS}
    bottoms = (2, 3)
    tops = (1, 2)
    is_loss = True
    blocked_bottoms = (1, 2)
    base_dir = "."

    def setup(self, bottom_shapes):
        score, label = bottom_shapes[:2]
        axis = self.p.axis
        if not -len(score) <= axis < len(score):
            raise LayerError(f"axis {axis} is out of range for scores {list(score)}", "infogain_loss_param.axis")
        check_labels(score, label, axis)
        self.view = _split(score, axis)[:3]
        c = self.view[1]
        if len(bottom_shapes) == 3:
            if tuple(bottom_shapes[2])[-2:] != (c, c) or count(bottom_shapes[2]) != c * c:
                raise LayerError(f"bottom[2] (H) must be {c} x {c}; received {list(bottom_shapes[2])}", "bottom")
            self.H = None
        else:
            self.H = self._read_matrix(c)
        self.prob = None  # allocated by the first forward: setup computes shapes only
        lp = self.spec.get("loss_param", {}) or {}
        self.ignore = lp.get("ignore_label")
        self.mode = lp.get("normalization") or ("BATCH_SIZE" if lp.get("normalize") is False else "VALID")
        return [()] + ([tuple(score)] if self.n_tops == 2 else [])

    def _read_matrix(self, c):
        if not self.p.source:
            raise LayerError("needs the matrix H: give infogain_loss_param.source or a third bottom",
                             "infogain_loss_param")
        path = os.path.normpath(os.path.join(self.base_dir, self.p.source))
        try:
            if path.endswith(".npz"):
                with np.load(path) as z:
                    h = z[z.files[0]]
            elif path.endswith(".csv"):
                h = np.loadtxt(path, delimiter=",", ndmin=2)
            elif path.endswith(".binaryproto"):  # Caffe's BlobProto (1, 1, C, C)
                from netspec.caffemodel import read_blob
                with open(path, "rb") as f:
                    h = read_blob(f.read())
                h = h.reshape(h.shape[-2:]) if h.size == c * c and h.ndim >= 2 else h
            else:
                h = np.load(path)
        except (OSError, ValueError, IndexError) as e:
            raise LayerError(f"cannot read H from '{self.p.source}' ({path}): {e}; give a C x C matrix as "
                             ".npy, .npz, .csv or Caffe's .binaryproto", "infogain_loss_param.source") from None
        if h.shape != (c, c):
            raise LayerError(f"H in '{self.p.source}' has shape {list(h.shape)}; the scores have {c} classes, so "
                             f"it must be {c} x {c}", "infogain_loss_param.source")
        return h.astype(np.float64)

    def _normalizer(self, valid):
        outer, _, inner = self.view
        return max(1.0, float({"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[self.mode]))

    def forward(self, bottom, top):
        if self.prob is None:
            self.prob = np.zeros(self.view, self.dtype)
        softmax_forward(bottom[0].data.reshape(self.view), self.prob)
        c = self.view[1]
        self.Hm = self.H if self.H is not None else bottom[2].data.reshape(c, c)
        ignore = self.ignore
        loss, self.valid, bad = infogain_forward(self.prob, bottom[1].data.ravel(), self.Hm, ignore or 0,
                                                 ignore is not None)
        if bad >= 0:
            raise LabelError(self, bottom[1], bad, c)
        top[0].data[...] = loss / self._normalizer(self.valid)
        if len(top) == 2:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            ignore = self.ignore
            infogain_backward(self.prob, bottom[1].data.ravel(), self.Hm, ignore or 0, ignore is not None,
                              float(top[0].diff) / self._normalizer(self.valid), bottom[0].diff.reshape(self.view))


@register("ContrastiveLoss")
class ContrastiveLoss(Layer):
    """Siamese loss. Bottoms a (N, D), b (N, D), sim (N,) -> sum over pairs of d^2 (similar) or
    max(margin - d, 0)^2 (dissimilar; legacy_version: max(margin - d^2, 0)), divided by 2N."""
    backward_reads = ("bottom",)

    param_block = "contrastive_loss_param"
    fields = (Field("margin", "float", 1.0, "distance dissimilar pairs are pushed beyond"),
              Field("legacy_version", "bool", False, "Caffe's old form: max(margin - d^2, 0)"))
    bottoms = (3, 3)
    is_loss = True
    blocked_bottoms = (2,)

    def setup(self, bottom_shapes):
        a, b, s = bottom_shapes
        if tuple(a) != tuple(b) or count(s) != a[0]:
            raise LayerError(f"needs a and b of one shape (N, D) and sim with N values; received {list(a)}, "
                             f"{list(b)}, {list(s)}", "bottom")
        self.n = a[0]
        return [()]

    def forward(self, bottom, top):
        n = self.n
        if getattr(self, "d", None) is None:
            self.d, self.dist2 = np.zeros((n, count(bottom[0].shape, 1)), self.dtype), np.zeros(n)
        loss = contrastive_forward(bottom[0].data.reshape(n, -1), bottom[1].data.reshape(n, -1),
                                   bottom[2].data.ravel(), self.p.margin, self.p.legacy_version, self.d, self.dist2)
        top[0].data[...] = loss / (2 * n)

    def backward(self, top, propagate_down, bottom):
        alpha = float(top[0].diff) / self.n
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                contrastive_backward(self.d, self.dist2, bottom[2].data.ravel(), self.p.margin,
                                     self.p.legacy_version, sign * alpha, bottom[i].diff.reshape(self.n, -1))
