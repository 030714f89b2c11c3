"""Softmax, and the loss and accuracy layers that read class scores.

Scores are viewed as (outer, C, inner) around `axis`; labels hold outer*inner integers.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from netspec.errors import LayerError, UserError
from .base import Field, Layer, count, register
from .kernels import fast_exp, same

FLT_MIN = np.float32(1.1754943508222875e-38)
IGNORED, BAD = -1, -2


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _softmax_planes(x, y, o, m, s):
    """softmax over C of x[o] (C, inner) into y[o], vectorized along inner (m, s: inner scratch)."""
    chans, inner = x.shape[1], x.shape[2]
    for i in range(inner):
        m[i] = x[o, 0, i]
    for c in range(1, chans):
        for i in range(inner):
            m[i] = max(m[i], x[o, c, i])
    for i in range(inner):
        s[i] = 0.0
    for c in range(chans):
        for i in range(inner):
            e = fast_exp(x[o, c, i] - m[i])
            y[o, c, i] = e
            s[i] += e
    for c in range(chans):
        for i in range(inner):
            y[o, c, i] /= s[i]


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _softmax_row(x, y, o):
    """softmax of x[o, :, 0] (C values) into y[o, :, 0]: the exponentials in one vectorized loop, then their sum."""
    chans = x.shape[1]
    m = x[o, 0, 0]
    for c in range(1, chans):
        m = max(m, x[o, c, 0])
    for c in range(chans):
        y[o, c, 0] = fast_exp(x[o, c, 0] - m)
    t = 0.0
    for c in range(chans):
        t += y[o, c, 0]
    for c in range(chans):
        y[o, c, 0] /= t


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_planes_kernel(x, y):
    m, s = np.empty(x.shape[2], x.dtype), np.empty(x.shape[2], np.float64)
    for o in range(x.shape[0]):
        _softmax_planes(x, y, o, m, s)


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_planes_in_place(y):
    m, s = np.empty(y.shape[2], y.dtype), np.empty(y.shape[2], np.float64)
    for o in range(y.shape[0]):
        _softmax_planes(y, y, o, m, s)


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_rows_kernel(x, y):
    for o in range(x.shape[0]):
        _softmax_row(x, y, o)


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_rows_in_place(y):
    for o in range(y.shape[0]):
        _softmax_row(y, y, o)


def softmax_forward(x, y):
    """x, y: (outer, C, inner); softmax over C after subtracting the max (as Caffe). float32: exp32. Vectorized
    along inner where inner > 1 (a segmentation net's planes), else along C; in place through a loop over the one
    array. Four small kernels, so that a net compiles only the one it runs (each took ~0.4 s to compile)."""
    kernel, args = softmax_kernel(x, y)
    kernel(*args)


def softmax_kernel(x, y):
    """(the kernel of softmax_forward on these arrays, its arguments)."""
    planes = x.shape[2] > 1
    if x is y or (x.ctypes.data == y.ctypes.data and x.strides == y.strides):
        return (_softmax_planes_in_place if planes else _softmax_rows_in_place), (y,)
    return (_softmax_planes_kernel if planes else _softmax_rows_kernel), (x, y)


@njit(cache=True, nogil=True, inline="always")
def _softmax_backward_planes(y, dy, dx, o, dot):
    chans, inner = y.shape[1], y.shape[2]
    for i in range(inner):
        dot[i] = 0.0
    for c in range(chans):
        for i in range(inner):
            dot[i] += dy[o, c, i] * y[o, c, i]
    for c in range(chans):
        for i in range(inner):
            dx[o, c, i] = y[o, c, i] * (dy[o, c, i] - dot[i])


@njit(cache=True, nogil=True)
def softmax_backward(y, dy, dx):
    """dx = y * (dy - sum_c dy*y): vectorized along inner where inner > 1 (in place too), else a row at a time."""
    outer, chans, inner = y.shape
    if inner > 1:
        dot = np.empty(inner, np.float64)
        for o in range(outer):
            if same(dy, dx):
                _softmax_backward_planes(y, dx, dx, o, dot)
            else:
                _softmax_backward_planes(y, dy, dx, o, dot)
        return
    for o in range(outer):
        d = 0.0
        for c in range(chans):
            d += dy[o, c, 0] * y[o, c, 0]
        for c in range(chans):
            dx[o, c, 0] = y[o, c, 0] * (dy[o, c, 0] - d)


@njit(cache=True, nogil=True)
def label_at(label, pos, chans, ignore, has_ignore):
    """The class at label[pos]: IGNORED for the ignore_label, BAD when not an integer in 0..chans-1."""
    v = label[pos]
    lab = int(v)
    if has_ignore and lab == ignore:
        return IGNORED
    if lab < 0 or lab >= chans or lab != v:
        return BAD
    return lab


@njit(cache=True, nogil=True)
def nll_forward(prob, label, ignore, has_ignore):
    """Returns (sum of -log(max(p[label], FLT_MIN)), valid count, first bad label index or -1)."""
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
            loss -= np.log(max(prob[o, lab, i], 1.1754943508222875e-38))
            valid += 1
    return loss, valid, -1


@njit(cache=True, nogil=True)
def nll_backward(prob, label, ignore, has_ignore, scale, dx):
    """dx = (p - onehot(label)) * scale, 0 at ignored positions."""
    outer, chans, inner = prob.shape
    for o in range(outer):
        for i in range(inner):
            lab = label_at(label, o * inner + i, chans, ignore, has_ignore)
            if lab == IGNORED:
                for c in range(chans):
                    dx[o, c, i] = 0
                continue
            for c in range(chans):
                dx[o, c, i] = prob[o, c, i] * scale
            dx[o, lab, i] -= scale


@njit(cache=True, nogil=True)
def accuracy_count(scores, label, top_k, ignore, has_ignore, hits, totals):
    """Top-k hits over scores (outer, C, inner): returns (right, counted, first bad label index or -1) and
    fills hits/totals per class. A class other than the true one scoring >= it counts against (Caffe)."""
    outer, chans, inner = scores.shape
    hits[:] = 0.0
    totals[:] = 0.0
    right = 0
    n = 0
    for o in range(outer):
        for i in range(inner):
            lab = label_at(label, o * inner + i, chans, ignore, has_ignore)
            if lab == IGNORED:
                continue
            if lab == BAD:
                return right, n, o * inner + i
            true = scores[o, lab, i]
            better = 0
            for c in range(chans):
                if c != lab and scores[o, c, i] >= true:
                    better += 1
            n += 1
            totals[lab] += 1.0
            if better < top_k:
                right += 1
                hits[lab] += 1.0
    return right, n, -1


@njit(cache=True, nogil=True)
def per_class(hits, totals, out):
    """out = hits / totals, 0 where a class has no examples."""
    for c in range(hits.size):
        out[c] = hits[c] / totals[c] if totals[c] > 0 else 0.0


def _split(shape, axis):
    axis = axis % len(shape)
    return count(shape, 0, axis), shape[axis], count(shape, axis + 1), axis


def check_labels(score_shape, label_shape, axis):
    a = axis % len(score_shape)
    positions = tuple(score_shape[:a]) + tuple(score_shape[a + 1:])
    label = tuple(label_shape)
    if len(label) == len(positions) == 2 and label == positions[::-1] and label != positions:
        raise LayerError(f"the labels are {list(label)} but the scores' positions are {list(positions)}: the two axes "
                         "are swapped (a recurrent net's outputs are time first, (T, N, ...)); give labels "
                         f"{list(positions)}, e.g. through a Permute with order [1, 0]", None)
    outer, _, inner, _ = _split(score_shape, axis)
    if count(label_shape) != outer * inner:
        raise LayerError(f"the label blob has {count(label_shape)} values (shape {list(label_shape)}) but the "
                         f"scores {list(score_shape)} need {outer * inner} (one per position, softmax axis "
                         f"{axis}); feed one integer label in {{0..C-1}} per example", None)


SOFTMAX_FIELDS = (Field("axis", "int", 1, "the class axis"),)


@register("Softmax")
class Softmax(Layer):
    """Softmax over `axis`. Shapes: any -> same."""
    backward_reads = ("top",)

    param_block = "softmax_param"
    fields = SOFTMAX_FIELDS
    in_place_ok = True

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if not -len(shape) <= self.p.axis < len(shape):
            raise LayerError(f"axis {self.p.axis} is out of range for a bottom of shape {list(shape)}",
                             "softmax_param.axis")
        self.view = _split(shape, self.p.axis)[:3]
        self.axis = self.p.axis % len(shape)
        return [tuple(shape)]

    def forward(self, bottom, top):
        softmax_forward(bottom[0].data.reshape(self.view), top[0].data.reshape(self.view))

    def bound_forward(self, bottom, top):
        """Layer.bound_forward: the kernel and its views chosen once (LeNet's prob at batch 1: 4.9 us)."""
        kernel, args = softmax_kernel(bottom[0].data.reshape(self.view), top[0].data.reshape(self.view))
        return lambda: kernel(*args)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            softmax_backward(top[0].data.reshape(self.view), top[0].diff.reshape(self.view),
                             bottom[0].diff.reshape(self.view))


LOSS_FIELDS = (
    Field("ignore_label", "int", None, "positions with this label add nothing to the loss"),
    Field("normalization", "enum", None, "what the summed loss is divided by (default VALID)",
          choices=("FULL", "VALID", "BATCH_SIZE", "NONE")),
    Field("normalize", "bool", None, "legacy: true means VALID, false BATCH_SIZE"),
)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """Softmax then multinomial logistic loss. Bottoms: scores (N, C, ...), labels (N, ...) -> loss (). Labels
    shaped as the scores are soft: a distribution per position (mixup, cutmix), the loss -sum p log q."""
    backward_reads = ("bottom",)

    param_block = "loss_param"
    fields = LOSS_FIELDS + (
        Field("label_smoothing", "float", 0.0, "SoftmaxWithLoss: the target puts 1 - e on the label and e / C on "
              "every class (Szegedy et al.; PyTorch's label_smoothing)", minimum=0, exclusive_maximum=1),
        Field("class_weight", "float", None, "SoftmaxWithLoss: a weight per class multiplying each example's "
              "loss; the normalizer is then the sum of the weights (PyTorch's weight)", repeated=True, minimum=0),
        Field("focal_gamma", "float", 0.0, "SoftmaxWithLoss: focal loss, -(1 - p)^gamma log p of the label's "
              "probability p (Lin et al.); 0: plain cross-entropy", minimum=0),
    )
    other_blocks = {"softmax_param": SOFTMAX_FIELDS}
    bottoms = (2, 2)
    tops = (1, 2)
    is_loss = True
    blocked_bottoms = (1,)

    @property
    def recipe(self):
        """Label smoothing or class weights: the loss over soft targets, per-position weights (NumPy)."""
        return bool(self.p.label_smoothing or self.p.class_weight or self.p.focal_gamma)

    def _targets(self, labels):
        """(targets (outer, C, inner), weights (outer, inner)) of integer labels, with smoothing and class weights."""
        outer, classes, inner = self.view
        lab = labels.reshape(outer, inner)
        ignore = self.p.ignore_label
        valid = np.ones((outer, inner), bool) if ignore is None else lab != ignore
        idx = np.where(valid, lab, 0).astype(np.int64)
        if idx.min() < 0 or idx.max() >= classes:
            bad = int(np.flatnonzero((idx < 0) | (idx >= classes))[0])
            raise LabelError(self, self._label_blob, bad, classes)
        e = self.p.label_smoothing
        target = np.full((outer, classes, inner), e / classes, self.dtype)
        np.put_along_axis(target, idx[:, None, :], 1 - e + e / classes, axis=1)
        weight = valid.astype(self.dtype)
        if self.p.class_weight:
            weight = weight * np.asarray(self.p.class_weight, self.dtype)[idx]
        return target, weight

    def setup(self, bottom_shapes):
        axis = self.spec.get("softmax_param", {}).get("axis", 1)
        score, label = bottom_shapes
        if not -len(score) <= axis < len(score):
            raise LayerError(f"axis {axis} is out of range for scores of shape {list(score)}", "softmax_param.axis")
        self.view = _split(score, axis)[:3]
        # soft labels: a distribution over the classes per position, shaped as the scores (mixup, cutmix)
        self.soft = tuple(label) == tuple(score) and self.view[1] > 1
        if self.soft and self.p.ignore_label is not None:
            raise LayerError("soft labels (shaped as the scores) leave no label to ignore; remove ignore_label",
                             "loss_param.ignore_label")
        if not self.soft:
            check_labels(score, label, axis)
        self.prob = None  # allocated by the first forward: setup computes shapes only
        if self.p.class_weight and len(self.p.class_weight) != self.view[1]:
            raise LayerError(f"class_weight has {len(self.p.class_weight)} values for {self.view[1]} classes; give one "
                             "per class", "loss_param.class_weight")
        if self.p.focal_gamma and self.p.label_smoothing:
            raise LayerError("focal_gamma weighs the label's own probability; it does not combine with "
                             "label_smoothing", "loss_param.focal_gamma")
        if self.recipe and self.soft:
            raise LayerError("label_smoothing and class_weight apply to integer labels; the labels here are soft "
                             "(shaped as the scores)", "loss_param.label_smoothing")
        mode = self.p.normalization
        if mode is None:
            mode = "BATCH_SIZE" if self.p.normalize is False else "VALID"
        self.mode = mode
        return [()] + ([tuple(score)] if self.n_tops == 2 else [])

    def _normalizer(self, valid):
        outer, _, inner = self.view
        n = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[self.mode]
        return max(1.0, float(n))

    def forward(self, bottom, top):
        if self.prob is None:
            self.prob = np.zeros(self.view, self.dtype)
        softmax_forward(bottom[0].data.reshape(self.view), self.prob)
        if self.recipe:  # label smoothing, class weights: -sum_c t_c log q_c per position, weighted
            self._label_blob = bottom[1]
            target, weight = self._targets(bottom[1].data)
            logq = np.log(np.maximum(self.prob, np.finfo(self.dtype).tiny))
            per = -(target * logq).sum(axis=1)
            if self.p.focal_gamma:  # target is one-hot here: per = -log p
                p_y = (target * self.prob).sum(axis=1)
                per = per * (1 - p_y) ** self.p.focal_gamma
            self._recipe = (target, weight)
            norm = float(weight.sum()) if self.p.class_weight else self._normalizer(int((weight > 0).sum()))
            self.valid = norm
            top[0].data[...] = float((per * weight).sum(dtype=np.float64)) / max(norm, 1e-12)
            if len(top) == 2:
                top[1].data[...] = self.prob.reshape(top[1].shape)
            return
        if self.soft:  # cross-entropy against the distributions: -sum p log q
            target = bottom[1].data.reshape(self.view)
            logq = np.log(np.maximum(self.prob, np.finfo(self.dtype).tiny))
            self.valid = self.view[0] * self.view[2]
            top[0].data[...] = -float(np.sum(target * logq, dtype=np.float64)) / self._normalizer(self.valid)
            if len(top) == 2:
                top[1].data[...] = self.prob.reshape(top[1].shape)
            return
        ignore = self.p.ignore_label
        loss, valid, bad = nll_forward(self.prob, bottom[1].data.ravel(), ignore or 0, ignore is not None)
        if bad >= 0:
            raise LabelError(self, bottom[1], bad, self.view[1])
        self.valid = valid
        top[0].data[...] = loss / self._normalizer(valid)
        if len(top) == 2:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and self.recipe:
            target, weight = self._recipe
            scale = float(top[0].diff) / max(self.valid, 1e-12)
            if self.p.focal_gamma:  # dL/dz_j = dL/dp * p * (onehot_j - q_j), L = -(1 - p)^g log p
                gm, tiny = self.p.focal_gamma, np.finfo(self.dtype).tiny
                p_y = np.maximum((target * self.prob).sum(axis=1), tiny)
                dldp = gm * (1 - p_y) ** (gm - 1) * np.log(p_y) - (1 - p_y) ** gm / p_y
                grad = (dldp * p_y * weight)[:, None, :] * (target - self.prob) * scale
            else:
                grad = (self.prob * target.sum(1, keepdims=True) - target) * weight[:, None, :] * scale
            bottom[0].diff.reshape(self.view)[...] = grad
            return
        if propagate_down[0] and self.soft:
            scale = float(top[0].diff) / self._normalizer(self.valid)
            target = bottom[1].data.reshape(self.view)
            # d/dz of -sum p log softmax(z) = softmax(z) sum(p) - p
            bottom[0].diff.reshape(self.view)[...] = (self.prob * target.sum(1, keepdims=True) - target) * scale
            return
        if propagate_down[0]:
            scale = float(top[0].diff) / self._normalizer(self.valid)
            ignore = self.p.ignore_label
            nll_backward(self.prob, bottom[1].data.ravel(), ignore or 0, ignore is not None, scale,
                         bottom[0].diff.reshape(self.view))


class LabelError(UserError):
    """A label outside {0..C-1} reached a loss or accuracy layer at run time."""

    def __init__(self, layer, blob, index, classes):
        value = blob.data.ravel()[index]
        if value != int(value):
            what, hint = "is not an integer", "class labels must be whole numbers"
        else:
            what = f"is outside {{0..{classes - 1}}} for {classes} classes"
            hint = ("labels look one-based: subtract 1" if value == classes else
                    f"labels must be integers in {{0..{classes - 1}}} (or the ignore_label), or raise num_output")
        index += getattr(blob, "offset", 0)  # in the whole batch, when a replica ran a slice of it
        super().__init__(f"layer '{layer.name}' ({layer.type}): label {value:g} at position {index} of blob "
                         f"'{blob.name}' {what}; {hint}")


@register("Accuracy")
class Accuracy(Layer):
    """Top-k accuracy. Bottoms: scores (N, C, ...), labels (N, ...) -> accuracy () [, per-class accuracy (C,)].

    A class whose score ties the true class's counts against the prediction (as in Caffe).
    """
    backward_reads = ()

    param_block = "accuracy_param"
    fields = (
        Field("top_k", "int", 1, "a prediction is right when the label is among the k best", minimum=1),
        Field("axis", "int", 1, "the class axis"),
        Field("ignore_label", "int", None, "positions with this label are not counted"),
    )
    bottoms = (2, 2)
    tops = (1, 2)
    differentiable = False

    def setup(self, bottom_shapes):
        score, label = bottom_shapes
        if not -len(score) <= self.p.axis < len(score):
            raise LayerError(f"axis {self.p.axis} is out of range for scores of shape {list(score)}",
                             "accuracy_param.axis")
        check_labels(score, label, self.p.axis)
        self.view = _split(score, self.p.axis)[:3]
        if self.p.top_k > self.view[1]:
            raise LayerError(f"top_k {self.p.top_k} is larger than the number of classes {self.view[1]}",
                             "accuracy_param.top_k")
        return [()] + ([(self.view[1],)] if self.n_tops == 2 else [])

    def forward(self, bottom, top):
        chans = self.view[1]
        if getattr(self, "hits", None) is None:
            self.hits, self.totals = np.zeros(chans), np.zeros(chans)
        ignore = self.p.ignore_label
        right, n, bad = accuracy_count(bottom[0].data.reshape(self.view), bottom[1].data.ravel(), self.p.top_k,
                                       ignore or 0, ignore is not None, self.hits, self.totals)
        if bad >= 0:
            raise LabelError(self, bottom[1], bad, chans)
        top[0].data[...] = right / n if n else 0.0
        if len(top) == 2:  # per-class accuracy: right_c / total_c (0 for a class with no examples)
            per_class(self.hits, self.totals, top[1].data)
