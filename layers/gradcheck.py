"""A numerical gradient checker for one layer (float64, central differences): the one generic test over the
registry (tests/test_gradients.py) and `run.py check-layer` for a user's Python layer.

The scalar checked is L = sum_k sum(top_k * R_k) for fixed random R_k, so every output
element contributes; backward gets top diffs R_k, and each bottom and parameter diff is
compared with (L(x + eps) - L(x - eps)) / (2 eps) element by element.
"""
from __future__ import annotations

import numpy as np

from layers.base import REGISTRY, Blob, resolve
from layers.fillers import fill


def make_layer(type_name, spec=None, bottom_shapes=(), phase="TRAIN", dtype=np.float64, n_tops=None, seed=0):
    cls = REGISTRY[type_name]
    spec = dict(spec or {})
    spec.setdefault("top", [f"t{i}" for i in range(n_tops or max(cls.tops[0], 1))])
    layer = cls("under_test", resolve(cls.fields, spec.get(cls.param_block)), spec.get("phase", phase), dtype, spec)
    layer.rng = np.random.default_rng(seed)
    top_shapes = layer.setup([tuple(s) for s in bottom_shapes])
    rng = np.random.default_rng(seed + 1)
    for i, (shape, filler) in enumerate(layer.blob_shapes):
        b = Blob(f"p{i}", shape, dtype)
        if layer.statistics:  # running statistics: positive values that make the stored mean/var non-trivial
            b.data[...] = rng.uniform(0.5, 1.5, shape)
        else:
            b.data[...] = rng.normal(0, 1, shape) if filler is None else fill(shape, filler, rng, dtype)
        layer.blobs.append(b)
    tops = [Blob(f"t{i}", s, dtype) for i, s in enumerate(top_shapes)]
    return layer, tops


def run_layer(type_name, spec, arrays, n_tops=None, params=None):
    """(layer, tops) after one float64 forward of a layer made by make_layer on the given bottoms (and params)."""
    layer, tops = make_layer(type_name, spec, [a.shape for a in arrays], n_tops=n_tops)
    for blob, value in zip(layer.blobs, params or []):
        blob.data[...] = value
    layer.forward(blobs_of(arrays), tops)
    return layer, tops


def blobs_of(arrays):
    """float64 Blobs b0, b1, ... holding the arrays."""
    out = []
    for i, a in enumerate(arrays):
        b = Blob(f"b{i}", np.shape(a), np.float64)
        b.data[...] = a
        out.append(b)
    return out


def check_gradients(type_name, spec, bottoms, check_bottoms=None, eps=1e-5, rtol=1e-5, atol=1e-6, seed=0,
                    detached_tops=()):
    """Compare analytic and numerical gradients; returns the largest absolute error seen."""
    shapes = [b.shape for b in bottoms]
    layer, tops = make_layer(type_name, spec, shapes, seed=seed)
    vary = np.random.default_rng(seed + 3)
    for b, (_, filler) in zip(layer.blobs if not layer.statistics else (), getattr(layer, "blob_shapes", ())):
        if isinstance(filler, dict) and filler.get("type", "constant") == "constant" and "array" not in filler:
            # a constant fill (Scale's gamma 1, Bias 0, LayerNorm's gamma and beta) would hide a parameter left out
            # of a bottom's gradient (gamma 1) or of the top (beta 0): values around the constant instead
            b.data[...] = b.data + vary.uniform(0.5, 1.5, b.shape) * vary.choice([-1, 1], b.shape) * 0.5
    bottom = [Blob(f"b{i}", a.shape, np.float64) for i, a in enumerate(bottoms)]
    for b, a in zip(bottom, bottoms):
        b.data[...] = a
    layer.forward(bottom, tops)  # the tops' shapes may depend on the data (Filter)
    rng = np.random.default_rng(seed + 2)
    proj = [rng.normal(0, 1, t.shape) for t in tops]
    for k in detached_tops:  # tops through which, by design, no gradient flows (a recurrent layer's carried state)
        proj[k] = np.zeros(tops[k].shape)
    check_bottoms = list(range(len(bottom))) if check_bottoms is None else check_bottoms

    stats = [p.data.copy() for p in layer.blobs] if layer.statistics else []

    def objective():
        layer.rng = np.random.default_rng(seed)  # stochastic layers (Dropout) draw the same mask each time
        for p, v in zip(layer.blobs, stats):  # BatchNorm updates its statistics in TRAIN: undo it
            p.data[...] = v
        layer.forward(bottom, tops)
        return sum(float(np.sum(t.data * r)) for t, r in zip(tops, proj))

    objective()
    for t, r in zip(tops, proj):
        t.diff[...] = r
    for p in layer.blobs:
        p.diff[...] = 0
    propagate = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(tops, propagate, bottom)
    learned = [] if layer.statistics else layer.blobs  # statistics are not learned: no gradient to check
    analytic = [bottom[i].diff.copy() for i in check_bottoms] + [p.diff.copy() for p in learned]
    targets = [bottom[i].data for i in check_bottoms] + [p.data for p in learned]
    worst = 0.0
    for arr, grad in zip(targets, analytic):
        flat, g = arr.reshape(-1), grad.reshape(-1)
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + eps
            up = objective()
            flat[k] = keep - eps
            down = objective()
            flat[k] = keep
            numeric = (up - down) / (2 * eps)
            err = abs(numeric - g[k])
            worst = max(worst, err)
            assert err <= atol + rtol * abs(numeric), (
                f"{type_name}: gradient element {k} of an array of shape {arr.shape}: analytic {g[k]:.8g}, "
                f"numerical {numeric:.8g}")
    return worst
