"""Loss layers besides SoftmaxWithLoss (softmax.py). Each produces a scalar top; the net seeds its diff
with the loss weight (1 by default for a loss layer)."""
from __future__ import annotations

import os

import numpy as np

from netspec.errors import LayerError, UserError
from .base import Field, Layer, count, register
from .kernels import scale_into, sigmoid_xent, sub_into
from .softmax import FLT_MIN, LOSS_FIELDS, LabelError, _split, check_labels, softmax_forward


class Loss(Layer):
    """Two bottoms (predictions, targets) -> a scalar; no gradient into the targets."""

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
        return [()]

    def _labels(self, bottom):
        lab = bottom[1].data.ravel()
        idx = lab.astype(np.int64)
        bad = (idx < 0) | (idx >= self.c) | (idx != lab)
        if bad.any():
            raise LabelError(self, bottom[1], int(np.argmax(bad)), self.c)
        return idx

    def forward(self, bottom, top):
        p = bottom[0].data.reshape(self.n, self.c)
        self.idx = self._labels(bottom)
        top[0].data[...] = -np.log(np.maximum(p[np.arange(self.n), self.idx], 1e-20)).sum() / self.n

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            p = bottom[0].data.reshape(self.n, self.c)
            dx = bottom[0].diff.reshape(self.n, self.c)
            dx[...] = 0
            rows = np.arange(self.n)
            dx[rows, self.idx] = -float(top[0].diff) / self.n / np.maximum(p[rows, self.idx], 1e-20)


@register("HingeLoss")
class HingeLoss(MultinomialLogisticLoss):
    """Per example: flip the sign of the true class's score, then sum max(0, 1 + s) (L1) or its square (L2),
    divided by N. Bottoms scores (N, C), labels (N,)."""

    param_block = "hinge_loss_param"
    fields = (Field("norm", "enum", "L1", "L1 or squared (L2) hinge", choices=("L1", "L2")),)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.n, self.c).astype(np.float64)
        self.idx = self._labels(bottom)
        rows = np.arange(self.n)
        x[rows, self.idx] *= -1
        self.margin = np.maximum(0.0, 1.0 + x)
        m = self.margin
        top[0].data[...] = (m.sum() if self.p.norm == "L1" else (m * m).sum()) / self.n

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            g = float(top[0].diff) / self.n
            d = np.sign(self.margin) if self.p.norm == "L1" else 2 * self.margin
            d[np.arange(self.n), self.idx] *= -1
            bottom[0].diff.reshape(self.n, self.c)[...] = d * g


@register("InfogainLoss")
class InfogainLoss(Layer):
    """Softmax, then -sum_k H[label, k] log(p_k) / normalizer. Bottoms: scores (N, C, ...), labels
    [, H (C, C)]; without the third bottom H is read from infogain_loss_param.source (.npy, .npz with one
    array, or .csv), relative to the net file. H = identity gives SoftmaxWithLoss."""

    param_block = "infogain_loss_param"
    fields = (Field("source", "str", None, "the C x C matrix H (.npy, .npz or .csv)"),
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
        self.prob = np.zeros(self.view, self.dtype)
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
            else:
                h = np.load(path)
        except (OSError, ValueError, IndexError) as e:
            raise LayerError(f"cannot read H from '{self.p.source}' ({path}): {e}; give a .npy, .npz or .csv "
                             "C x C matrix", "infogain_loss_param.source") from None
        if h.shape != (c, c):
            raise LayerError(f"H in '{self.p.source}' has shape {list(h.shape)}; the scores have {c} classes, so "
                             f"it must be {c} x {c}", "infogain_loss_param.source")
        return h.astype(np.float64)

    def _normalizer(self, valid):
        outer, _, inner = self.view
        return max(1.0, float({"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[self.mode]))

    def forward(self, bottom, top):
        softmax_forward(bottom[0].data.reshape(self.view), self.prob)
        outer, c, inner = self.view
        H = self.H if self.H is not None else bottom[2].data.reshape(c, c).astype(np.float64)
        p = self.prob.transpose(0, 2, 1).reshape(-1, c).astype(np.float64)
        lab = bottom[1].data.ravel()
        keep = np.ones(lab.shape, bool) if self.ignore is None else lab != self.ignore
        idx = lab.astype(np.int64)
        bad = keep & ((idx < 0) | (idx >= c) | (idx != lab))
        if bad.any():
            raise LabelError(self, bottom[1], int(np.argmax(bad)), c)
        self.keep, self.idx, self.valid, self.Hm = keep, np.where(keep, idx, 0), int(keep.sum()), H
        rows = H[self.idx] * keep[:, None]
        top[0].data[...] = -(rows * np.log(np.maximum(p, FLT_MIN))).sum() / self._normalizer(self.valid)
        if len(top) == 2:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        outer, c, inner = self.view
        p = self.prob.transpose(0, 2, 1).reshape(-1, c).astype(np.float64)
        rows = self.Hm[self.idx] * self.keep[:, None]
        g = (p * rows.sum(axis=1, keepdims=True) - rows) * (float(top[0].diff) / self._normalizer(self.valid))
        bottom[0].diff.reshape(self.view)[...] = g.reshape(outer, inner, c).transpose(0, 2, 1)


@register("ContrastiveLoss")
class ContrastiveLoss(Layer):
    """Siamese loss. Bottoms a (N, D), b (N, D), sim (N,) -> sum over pairs of d^2 (similar) or
    max(margin - d, 0)^2 (dissimilar; legacy_version: max(margin - d^2, 0)), divided by 2N."""

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
        self.diff = (bottom[0].data - bottom[1].data).reshape(n, -1).astype(np.float64)
        self.d2 = (self.diff ** 2).sum(axis=1)
        self.sim = bottom[2].data.ravel() != 0
        m = self.p.margin
        if self.p.legacy_version:
            far = np.maximum(m - self.d2, 0.0)
        else:
            far = np.maximum(m - np.sqrt(self.d2), 0.0) ** 2
        top[0].data[...] = np.where(self.sim, self.d2, far).sum() / (2 * n)

    def backward(self, top, propagate_down, bottom):
        alpha = float(top[0].diff) / self.n
        m = self.p.margin
        if self.p.legacy_version:
            far = np.where(m - self.d2 > 0, -1.0, 0.0)
        else:
            d = np.sqrt(self.d2)
            far = np.where(m - d > 0, -(m - d) / (d + 1e-4), 0.0)
        coef = np.where(self.sim, 1.0, far)[:, None] * alpha
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                bottom[i].diff[...] = (sign * coef * self.diff).reshape(bottom[i].shape)
