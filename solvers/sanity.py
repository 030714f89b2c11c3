"""`run.py sanity` and `run.py lr-find`: the classic checks before a long run (CS231n's recipe).

sanity: (1) the initial loss is close to ln(C) for a softmax loss over C classes, with regularization off;
(2) regularization raises the loss; (3) 20 examples are overfitted to near-zero loss and training accuracy
1.0 within a bounded number of iterations; (4) a numerical gradient check of the whole assembled net on a tiny
batch (float64). lr-find: the learning rate grows exponentially from a snapshot of the initial weights; the
loss curve gives the bounds and a suggested base_lr.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from netspec.errors import UserError
from netspec.net import Net
from netspec.progress import Progress
from .trainer import Trainer


def _softmax_losses(net):
    return [(d, layer) for d, layer in zip(net.defs, net.layers) if d.type == "SoftmaxWithLoss"]


def _with_batch(doc, batch):
    """A copy of a net spec whose data layers serve `batch` examples, and whose DummyData and Input blobs sized by
    the old batch (an LSTM's cont, (T, N)) follow: in each shape the first axis of the data layers' batch size."""
    doc = copy.deepcopy(doc)
    old = set()
    for layer in doc.get("layer", []):
        for block in ("data_param", "hdf5_data_param", "image_data_param", "memory_data_param"):
            if block in layer and "batch_size" in layer[block]:
                old.add(layer[block]["batch_size"])
                layer[block]["batch_size"] = batch
    for layer in doc.get("layer", []):
        block = {"DummyData": "dummy_data_param", "Input": "input_param"}.get(layer.get("type"))
        shapes = (layer.get(block) or {}).get("shape") if block else None
        for shape in (shapes if isinstance(shapes, list) else [shapes] if shapes else []):
            dims = shape.get("dim") if isinstance(shape, dict) else None
            k = next((k for k, v in enumerate(dims or []) if v in old), None)
            if k is not None:
                dims[k] = batch
    return doc


def check_initial_loss(t: Trainer):
    losses = _softmax_losses(t.net)
    if not losses:
        return None, "no SoftmaxWithLoss layer: the ln(C) check applies to softmax losses"
    t.net.phase = "TRAIN"
    t.net.forward()
    d, layer = losses[0]
    c = layer.view[1]
    got, want = float(t.net.blobs[d.tops[0]].data), math.log(c)
    ok = abs(got - want) < 0.25 * want
    return ok, (f"initial loss {got:.4f}, ln({c}) = {want:.4f}" +
                ("" if ok else "; far from ln(C): check the weight fillers (too large?) and the labels"))


def check_regularization(t: Trainer):
    cfg = t.cfg
    data_loss = t.net.forward()
    lam = cfg.weight_decay
    reg = 0.0
    for p in t.net.params:
        w = p.blob.data.astype(np.float64)
        reg += lam * p.decay_mult * (0.5 * float((w * w).sum()) if cfg.regularization_type == "L2"
                                     else float(np.abs(w).sum()))
    if lam == 0:
        return None, "weight_decay is 0: no regularization to check (set weight_decay to check that it raises the loss)"
    ok = data_loss + reg > data_loss
    return ok, f"loss {data_loss:.4f} without, {data_loss + reg:.4f} with weight_decay {lam:g}"


def loss_floor(layer) -> float:
    """The least loss a SoftmaxWithLoss can reach on examples it fits perfectly: 0, or with label smoothing e over C
    classes the entropy of the smoothed target (1 - e + e/C on the label, e/C elsewhere: 0.50 for e 0.1, C 10),
    times the largest class weight where they weigh the examples."""
    p, c = layer.p, layer.view[1]
    e = getattr(p, "label_smoothing", 0.0) or 0.0
    if not e or c < 2:
        return 0.0
    on, off = 1 - e + e / c, e / c
    return -(on * math.log(on) + (c - 1) * off * math.log(off)) * max(getattr(p, "class_weight", None) or [1.0])


def check_overfit(solver_path: str, n: int = 20, max_iters: int = 400):
    t = Trainer(solver_path, out=lambda *a: None, overrides={"weight_decay": 0.0})
    data = next((l for l in t.net.layers if hasattr(l, "arrays") and hasattr(l, "_set_arrays")), None)
    losses = _softmax_losses(t.net)
    if data is None or not losses:
        return None, "needs a data layer that reads a source and a SoftmaxWithLoss"
    if not data.loaded:
        data.load()
    if data.reader is not None:  # a streamed source: its first n rows, held in memory
        data._stop_prefetch()
        rows, data.reader = data.reader.read(np.arange(min(n, data.rows))), None
        data._set_arrays(rows)
    else:
        data._set_arrays([a[:n].copy() for a in data.arrays])
    d, layer = losses[0]
    score, label = t.net.blobs[d.bottoms[0]], t.net.blobs[d.bottoms[1]]
    floor = loss_floor(layer)
    rate = t.rate(0)
    loss, acc = float("inf"), 0.0
    for it in range(max_iters):
        t.net.clear_param_diffs()
        loss = t.net.forward_backward()
        pred = score.data.reshape(len(score.data), -1).argmax(axis=1)
        acc = float((pred == label.data.ravel()).mean())
        if acc == 1.0 and loss < floor + 0.05:
            return True, (f"{n} examples overfitted in {it} iterations: loss {loss:.4f}"
                          + (f" (label smoothing's floor {floor:.4f})" if floor else "") + ", training accuracy 1.0")
        if not math.isfinite(loss):
            return False, f"the loss became {loss} at iteration {it} on {n} examples: lower base_lr"
        t.solver.apply_update(rate, it)
    from .watch import constant_output
    why = constant_output(t.net)
    if why is not None:
        return False, (f"after {max_iters} iterations on {n} examples: loss {loss:.4f}, training accuracy {acc:.2f}; "
                       f"the net gives the same scores for every example, whatever its input: {why}")
    return False, (f"after {max_iters} iterations on {n} examples: loss {loss:.4f}, training accuracy {acc:.2f}; "
                   "the net cannot even memorize a few examples: check the labels match the inputs, the learning "
                   "rate, and that gradients reach the first layers")


def check_gradients(t: Trainer, batch: int = 2, samples: int = 12, seed: int = 0):
    try:
        net = Net(_with_batch(t.net_doc, batch), "TRAIN", t.net_path, seed=t.net.seed, dtype=np.float64)
    except UserError:  # a blob sized by the batch that _with_batch did not see: the net at its own batch
        net = Net(t.net_doc, "TRAIN", t.net_path, seed=t.net.seed, dtype=np.float64)
    for layer in net.layers:  # read in TRAIN, where a data layer fits its normalize statistics
        if layer.is_data and not getattr(layer, "loaded", True):
            layer.load()
    net.phase = "TEST"  # Dropout off and BatchNorm on stored statistics: a deterministic function
    for layer in net.layers:
        if layer.type == "BatchNorm":
            layer.blobs[2].data[...] = 1.0
            layer.blobs[1].data[...] = 1.0
    rng = np.random.default_rng(seed)
    for p in net.params:  # nudge every param: a bias of exactly 0 on an all-zero input sits on ReLU's kink
        if p.lr_mult:
            p.blob.data += rng.normal(0, 1e-2, p.blob.data.shape)
    net.forward()
    for layer in net.layers:  # keep the same batch for every evaluation
        if layer.is_data:
            layer.forward = (lambda bottom, top: None)
    net.clear_param_diffs()
    net.forward()
    net.backward()
    worst, eps, checked, kinks, bad = 0.0, 1e-6, 0, 0, 0
    base = net.forward()
    # what float64 rounding of the loss leaves in a difference quotient: a summed loss of ~1000 (the autoencoder's)
    # moves the slopes by ~1e-7, a relative 1e-4 of a gradient of 1e-3
    noise = 16 * max(1.0, abs(base)) * np.finfo(np.float64).eps / eps
    for p in net.params:
        if p.lr_mult == 0:
            continue
        flat, grad = p.blob.data.reshape(-1), p.blob.diff.reshape(-1).copy()
        for k in rng.choice(flat.size, min(samples, flat.size), replace=False):
            keep = flat[k]
            flat[k] = keep + eps
            up = net.forward()
            flat[k] = keep - eps
            down = net.forward()
            flat[k] = keep
            right, left = (up - base) / eps, (base - down) / eps
            if abs(right - left) > 1e-4 * max(1e-6, abs(right) + abs(left)) + noise:
                kinks += 1  # a ReLU or a max pooling switches within eps: the one-sided slopes differ (Caffe's kink)
                continue
            num = (up - down) / (2 * eps)
            size = max(1e-6, abs(num) + abs(grad[k]))
            worst = max(worst, abs(num - grad[k]) / size)
            bad += abs(num - grad[k]) > 1e-4 * size + noise
            checked += 1
    ok = not bad if checked else None
    skipped = (f"; {kinks} on a kink (a ReLU or max pooling switching within {eps:g}: left and right slopes differ) "
               "skipped" if kinks else "")
    return ok, (f"{checked} parameters checked by central differences (float64): largest relative error {worst:.2e} "
                f"({bad} beyond 1e-4 and the loss's float64 rounding, {noise:.1e} in a slope)" + skipped)


def sanity(solver_path: str, out=print) -> bool:
    """Run the four checks; prints PASS/FAIL with numbers; True when none failed."""
    results = []
    t = Trainer(solver_path, out=lambda *a: None, overrides={"weight_decay": 0.0})
    results.append(("initial loss is about ln(C)", *check_initial_loss(t)))
    t = Trainer(solver_path, out=lambda *a: None)
    results.append(("regularization raises the loss", *check_regularization(t)))
    results.append(("overfits 20 examples", *check_overfit(solver_path)))
    results.append(("numerical gradient of the whole net", *check_gradients(t)))
    for name, ok, detail in results:
        out(f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return all(ok is not False for _, ok, _ in results)


def _centered(values: np.ndarray, half: int) -> np.ndarray:
    """A moving average over 2*half+1 points centred on each (shorter at the ends): no lag, unlike an EMA, which
    would put the minimum of the curve up to a decade too far right on a 200-step sweep."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(0, idx - half), np.minimum(len(values), idx + half + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def analyse_lr_curve(rates, losses, stopped: bool) -> dict:
    """Bounds and suggestion from an lr sweep (rates rising, losses finite). The loss is smoothed over a window of
    about 5% of the sweep. too_small: from there on the loss stays 10% of its total drop below the plateau;
    diverges: past the minimum it has climbed back by a quarter of the drop (or the sweep stopped on a non-finite or
    exploding loss); the floor ends at the last rate past the minimum whose loss stays within 10% of it (of the
    minimum's size, at most 10% of the drop). suggested: a third of the floor's end (Smith's range test, 2017: the
    rate where the loss stops falling is the largest usable, and a third to a quarter of it the one to train at). A
    tenth of the rate at the minimum (fastai's lr_min / 10) is reported too: on a flat-bottomed curve (an
    autoencoder's, whose floor spans a decade) the minimum lies anywhere on the floor, and its tenth trains far too
    slowly."""
    rates, losses = np.asarray(rates, float), np.asarray(losses, float)
    sm = _centered(losses, max(2, len(losses) // 40))
    m = int(np.argmin(sm))
    drop = float(sm[0] - sm[m])
    if drop <= 0.02 * max(abs(float(sm[0])), 1e-12):
        return {"smoothed": sm, "minimum": float(rates[m]), "too_small": None, "diverges": None, "steepest": None,
                "floor_end": None, "tenth": None, "suggested": None, "rule": "the loss never fell"}
    # too small: from the last rate before the minimum whose loss is within 10% of the drop of the start's level
    # (the median of the first tenth of the sweep: one noisy first batch is not the plateau), where the loss
    # falls for good; the first dip below it was noise in a third of the noisy curves (the loss of a batch of 64)
    start = float(np.median(sm[:max(1, min(m + 1, len(sm) // 10))]))
    high = np.nonzero(sm[:m + 1] > start - 0.1 * max(start - float(sm[m]), drop))[0]
    k0 = min(int(high[-1]) + 1, m) if len(high) else 0
    after = np.nonzero(sm[m:] > sm[m] + 0.25 * drop)[0]
    diverges = float(rates[m + after[0]]) if len(after) else (float(rates[-1]) if stopped else None)
    band = min(0.1 * abs(float(sm[m])), 0.1 * drop) or 0.1 * drop
    above = np.nonzero(sm[m:] > sm[m] + band)[0]
    end = m + (above[0] - 1 if len(above) else len(sm) - 1 - m)
    slope = np.gradient(sm, np.log(rates))
    steepest = float(rates[k0 + int(np.argmin(slope[k0:m + 1]))])
    suggested, rule = float(rates[end]) / 3, "a third of the rate where the loss stops falling (Smith's range test)"
    if suggested < rates[k0]:
        suggested, rule = steepest, "the steepest descent (a third of the floor's end is in the flat start)"
    return {"smoothed": sm, "minimum": float(rates[m]), "too_small": float(rates[k0]), "diverges": diverges,
            "steepest": steepest, "floor_end": float(rates[end]), "tenth": float(rates[m]) / 10,
            "suggested": suggested, "rule": rule}


def lr_find(solver_path: str, start: float = 1e-7, end: float = 10.0, iters: int = 200, out=print) -> dict:
    """Raise the rate exponentially over `iters` iterations from the initial weights (the solver's own rule,
    momentum included); stop once the loss is non-finite or 4x its lowest. Returns the table, the bounds and the
    suggestion (analyse_lr_curve)."""
    t = Trainer(solver_path, out=lambda *a: None)
    rows, ema, best, stopped = [], None, float("inf"), False
    for it in range(iters):
        rate = start * (end / start) ** (it / max(1, iters - 1))
        Progress.update(it + 1, iters, "lr-find")
        t.net.clear_param_diffs()
        loss = t.net.forward_backward()
        if not math.isfinite(loss):
            stopped = True
            break
        rows.append((rate, loss))
        ema = loss if ema is None else 0.9 * ema + 0.1 * loss
        best = min(best, ema)
        if it > 10 and ema > 4 * best:
            stopped = True
            break
        t.solver.apply_update(rate, it)
    if len(rows) < 10:
        raise UserError(f"{solver_path}: error: the loss diverged almost at once (from {start:g}); lower the start "
                        "(--start)")
    Progress.close()
    found = analyse_lr_curve([r for r, _ in rows], [l for _, l in rows], stopped)
    sm = found["smoothed"]
    table = [(r, l, float(s)) for (r, l), s in zip(rows, sm)]
    out(f"{'lr':>12} {'loss':>10} {'smoothed':>10}")
    for r, l, s in table[::max(1, len(table) // 25)]:
        out(f"{r:12.3g} {l:10.4g} {s:10.4g}")
    if found["suggested"] is None:
        from .watch import constant_output
        why = constant_output(t.net)
        if why is not None:  # no rate can help: the net does not look at its input (a dead ReLU, zero weights)
            out(f"The loss never fell between {start:g} and {table[-1][0]:.3g} because the net gives the same scores "
                f"for every example, whatever its input: {why}. No learning rate will help")
        else:
            out(f"The loss never fell between {start:g} and {table[-1][0]:.3g}: raise --end, or check the net with "
                "run.py sanity")
    else:
        out(f"Too small below about {found['too_small']:.3g} (the loss barely moves); "
            + (f"diverges from about {found['diverges']:.3g}" if found["diverges"] else
               f"no divergence up to {table[-1][0]:.3g} (raise --end to see where it starts)")
            + f"; lowest loss at {found['minimum']:.3g}")
        out(f"Suggested base_lr: {found['suggested']:.3g} ({found['rule']}, {found['floor_end']:.3g}; a tenth of the "
            f"minimum's rate would be {found['tenth']:.3g}, the steepest descent is at {found['steepest']:.3g})")
    return {"rows": table, **{k: v for k, v in found.items() if k != "smoothed"}}
