"""Watching training: non-finite losses and gradients diagnosed to the first layer and blob that went bad,
the 87.34 softmax plateau, a loss that does not move, debug_info, per-layer monitoring, overfitting.

Everything it finds goes to the log and, as data, to the metrics file.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from netspec.errors import UserError

FLT_MIN_LOSS = -math.log(np.finfo(np.float32).tiny)  # 87.3365: -ln(FLT_MIN)


class Diverged(UserError):
    """Training produced NaN or Inf; the message is the diagnosis. Exit code 3."""

    exit_code = 3


def _finite(a) -> bool:
    return bool(np.isfinite(a).all())


def _maxabs(a) -> float:
    return float(np.abs(a).max()) if a.size else 0.0


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def sum_squares(x):
    """sum(x**2) in float64, one vectorized pass without temporaries (NaN and Inf propagate)."""
    acc = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        acc += v * v
    return acc


def grad_norm(params) -> float:
    return math.sqrt(sum(sum_squares(p.blob.diff.reshape(-1)) for p in params))


def diagnose(net, it: int) -> str:
    """Re-run the iteration's layers (the data tops still hold its batch), checking every blob, and say where
    it first went non-finite, what led there, and what to try."""
    for d, layer, bottom, top in zip(net.defs, net.layers, net.bottom_vecs, net.top_vecs):
        if layer.is_data:
            for name, blob in zip(d.tops, top):
                if not _finite(blob.data):
                    row = int(np.argmax(~np.isfinite(blob.data.reshape(len(blob.data), -1)).all(axis=1)))
                    where = ""
                    if getattr(layer, "last_indices", None) is not None and hasattr(layer, "describe_row"):
                        src = int(layer.last_indices[row])
                        where = f" ({layer.describe_row(src)} of '{getattr(layer.p, 'source', '')}')"
                    return (f"iteration {it}: the input blob '{name}' of data layer '{d.name}' holds NaN or Inf at "
                            f"example {row} of the batch{where}. Likely cause: a bad input row; fix or drop it "
                            "(run.py validate reads the whole source and names every such row)")
    for k, (d, layer, bottom, top) in enumerate(zip(net.defs, net.layers, net.bottom_vecs, net.top_vecs)):
        if layer.is_data:
            continue
        net.forward_layer(k)
        bad = [name for name, blob in zip(d.tops, top) if not _finite(blob.data)]
        if bad:
            inputs = max((_maxabs(b.data) for b in bottom), default=0.0)
            wnorm = math.sqrt(sum(float((b.data.astype(np.float64) ** 2).sum()) for b in layer.blobs))
            facts = f"largest input magnitude {inputs:.3g}" + (f", weight norm {wnorm:.3g}" if layer.blobs else "")
            if inputs > 1e6:
                cause = (f"the values reaching it exploded ({inputs:.3g}): the learning rate is probably too high; "
                         "lower base_lr tenfold, or set clip_gradients (e.g. 10)")
            elif layer.is_loss:
                cause = ("a loss layer fed unnormalized or out-of-range input (e.g. probabilities of exactly 0, or "
                         "targets outside the range the loss expects); check what feeds it, and lower base_lr tenfold")
            elif not all(_finite(b.data) for b in bottom):
                cause = "its input was already non-finite"
            else:
                cause = ("activations exploded: the learning rate is probably too high; lower base_lr tenfold, or "
                         "set clip_gradients (e.g. 10)")
            return (f"iteration {it}: forward of layer '{d.name}' ({d.type}) made data blob '{bad[0]}' non-finite "
                    f"({facts}). Likely cause: {cause}")
    for blob, w in net.loss_blobs:
        blob.diff[...] = w
    for k in reversed(range(len(net.layers))):
        if not net.need_backward[k]:
            continue
        d, layer = net.defs[k], net.layers[k]
        net.backward_layer(k)
        bad = [f"diff of bottom '{b}'" for b, blob, p in zip(d.bottoms, net.bottom_vecs[k], net.propagate[k])
               if p and not _finite(blob.diff)]
        bad += [f"diff of its param {i}" for i, b in enumerate(layer.blobs) if not _finite(b.diff)]
        if bad:
            top_grad = max((_maxabs(t.diff) for t in net.top_vecs[k]), default=0.0)
            return (f"iteration {it}: backward of layer '{d.name}' ({d.type}) made the {bad[0]} non-finite (largest "
                    f"incoming gradient {top_grad:.3g}). Likely cause: exploding gradients; set clip_gradients "
                    "(e.g. 10), lower base_lr tenfold, or lower that branch's loss_weight")
    return (f"iteration {it}: the loss or the gradient norm was non-finite but every blob is finite on the re-run "
            "(a random layer such as Dropout drew differently); lower base_lr tenfold")


def _same_for_every_example(a) -> bool:
    """Whether every example (row of axis 0) of a blob's data holds the same values, to float32 rounding."""
    x = a.reshape(len(a), -1) if a.ndim else a.reshape(1, -1)
    if len(x) < 2 or not x.size:
        return False
    return bool(np.all(np.abs(x - x[:1]) <= 1e-5 * float(np.abs(x).max()) + 1e-30))


def constant_output(net) -> str | None:
    """Where the batch's examples stopped making a difference: None if the scores reaching the net's weighted
    losses differ between its examples; else a sentence naming the first blob on their way that is the same for
    every example (the data, a dead ReLU, a layer with all-zero weights, ...) and what to change. Reads the blobs
    as the last forward left them (nothing re-runs: the running statistics stay as they are)."""
    losses = [k for k, layer in enumerate(net.layers) if layer.is_loss
              and any(b in net.top_vecs[k] for b, _ in net.loss_blobs) and net.bottom_vecs[k]]
    if not losses or not all(_same_for_every_example(net.bottom_vecs[k][0].data) for k in losses):
        return None
    k = losses[0]
    needed = {net.defs[k].bottoms[0]}
    for i in range(k - 1, -1, -1):  # the blobs the scores are computed from
        if needed & set(net.defs[i].tops):
            needed |= set(net.defs[i].bottoms)
    last = {}  # blob name -> the last layer before the loss writing it (in place: the last of the chain)
    for i in range(k):
        for t in net.defs[i].tops:
            last[t] = i
    for i in range(k):
        d, layer = net.defs[i], net.layers[i]
        tops = d.tops[:1] if layer.is_data else d.tops
        for name, blob in zip(tops, net.top_vecs[i]):
            if name not in needed or last.get(name) != i or not _same_for_every_example(blob.data):
                continue
            if layer.is_data or d.type == "Input":
                return (f"the input '{name}' of layer '{d.name}' is the same for every example of the batch: check "
                        "its source and its transform_param (a scale or mean that leaves nothing)")
            writers = [j for j in range(i + 1) if name in net.defs[j].tops]
            below = next((j for j in reversed(writers) if net.layers[j].blobs), None)
            if below is not None and not np.any(net.layers[below].blobs[0].data):
                i, d, layer = below, net.defs[below], net.layers[below]
            elif d.type == "ReLU" and not np.any(blob.data):
                said = (f"every unit of ReLU '{d.name}' is 0 for every example of the batch: it is dead, and no "
                        "gradient passes it")
                bias = net.layers[below].blobs[1].data if below is not None and len(
                    net.layers[below].blobs) > 1 else np.zeros(0)
                filler = getattr(getattr(net.layers[below], "p", None), "bias_filler", None) if below is not None \
                    else None
                start = filler.get("value", 0) if isinstance(filler, dict) and filler.get("type") == "constant" \
                    else None
                if bias.size and float(bias.max()) < 0:
                    said += (f"; the bias of '{net.defs[below].name}' below it is negative for every unit "
                             f"({float(bias.min()):.3g} .. {float(bias.max()):.3g})")
                    if start is not None and start < 0:
                        return said + (f", as its bias_filler (constant {start:g}) set it: give it a bias_filler of "
                                       "constant 0 (or 0.1 for a ReLU); negative_slope: 0.01 (a leaky ReLU) "
                                       "cannot die")
                    return said + (", pushed there by the updates: the learning rate is too high for this net "
                                   "(lower base_lr tenfold, or warm it up); negative_slope: 0.01 (a leaky ReLU) "
                                   "cannot die")
                return said + (". Likely causes: a learning rate high enough to push the units below zero (lower "
                               "base_lr tenfold), inputs far from 0..1 (transform_param scale); negative_slope: 0.01 "
                               "(a leaky ReLU) cannot die")
            if layer.blobs and not np.any(layer.blobs[0].data):
                return (f"layer '{d.name}' ({d.type}) has all-zero weights, so its output is its bias alone: give "
                        "it a weight_filler (Caffe's default filler is constant 0), e.g. {type: xavier} or {type: "
                        "msra}")
            return (f"from layer '{d.name}' ({d.type}) on, every example of the batch gives the same values: check "
                    "its parameters and what feeds it")
    return "every example of the batch gives the same scores"


START_ADVICE = ("It is so before any update, so the rate is not the cause: the logits start huge or the labels are "
                "wrong. Check the input scale (pixels 0..255 want transform_param scale: 0.00390625), the weight "
                "fillers (a smaller std, or xavier / msra), the weights loaded, and that the labels run from 0 to "
                "num_output - 1")


class Watch:
    """Checks run by the training loop; `out` prints a line, `metrics` takes records."""

    def __init__(self, cfg, net, out, metrics, monitor: bool = False):
        self.cfg, self.net, self.out, self.metrics = cfg, net, out, metrics
        self.monitor = monitor or bool(getattr(cfg, "monitor", False))
        self.first_losses: list = []
        self.warned = set()
        self.tests: list = []   # (iter, test loss, train loss)
        self.pinned = 0         # consecutive iterations with a softmax loss at 87.3365
        self.first_it = None    # the first iteration this run checked (before any update of its own)
        self.pinned_from = None  # the iteration the current run of pinned iterations began
        self.nets = [net]       # the nets that ran the batch (the slices' own, where it runs as slices)
        self.suspect = False    # the current state is not one to keep as the last good one
        self.started_pinned = None  # (iteration, loss) where a softmax loss sat at 87.3365 before any update
        self.recent_losses: list = []  # the losses since the last check for a net that stopped looking at its input

    def warn(self, key, message):
        if key not in self.warned:
            self.warned.add(key)
            self.out(f"Warning: {message}")
            self.metrics.write({"phase": "warning", "kind": key, "message": message})

    def after_backward(self, it: int, loss: float):
        """Cheap checks every iteration; raises Diverged with the diagnosis."""
        gn = grad_norm(self.net.params)
        grew = self.track_losses(it)
        if not (math.isfinite(loss) and math.isfinite(gn)):
            what = "the loss" if not math.isfinite(loss) else "the gradient norm"
            start = self.started_pinned
            why = START_ADVICE.split(": ", 1)[1]
            start = (f". But the loss was already {start[1]:.4g} at iteration {start[0]}, before any update: the "
                     f"start is the likely cause, not the rate: {why}." if start else "")
            raise Diverged(f"Training diverged: {what} is {loss if not math.isfinite(loss) else gn} at "
                           f"{diagnose(self.net, it)}{grew}{start}")
        self.check_plateaus(it, loss)
        return gn

    def track_losses(self, it: int) -> str:
        """With several losses: the norm of the gradient each sends into the net, every iteration. Returns, once
        one has grown 10x past its median (or gone non-finite), the sentence that names the first to grow and
        suggests its loss_weight, Caffe's way to tune a net with several losses."""
        losses = [(k, d) for k, d in enumerate(self.net.defs) if self.net.layers[k].is_loss
                  and self.net.need_backward[k] and any(p for p in self.net.propagate[k])]
        if len(losses) < 2:
            return ""
        history = self.__dict__.setdefault("loss_grads", {})
        first = None
        for k, d in losses:
            g = math.sqrt(sum(float(np.square(b.diff, dtype=np.float64).sum())
                              for b, p in zip(self.net.bottom_vecs[k], self.net.propagate[k]) if p))
            seen = history.setdefault(d.name, [])
            base = float(np.median(seen)) if len(seen) >= 3 else None
            if not math.isfinite(g) or (base is not None and base > 0 and g > 10 * base):
                grown = history.setdefault("_grew", {})
                grown.setdefault(d.name, (it, g, base))
            elif len(seen) < 50:
                seen.append(g)
        grown = {n: v for n, v in history.get("_grew", {}).items() if v[0] >= it - 100}  # this episode only
        if not grown:
            return ""
        name, (at, g, base) = min(grown.items(), key=lambda kv: kv[1][0])
        weight = next(w for b, w in self.net.loss_blobs for k, d in losses if d.name == name
                      and b in self.net.top_vecs[k])
        return (f". Of the net's {len(losses)} losses, '{name}' was the first whose gradient grew (at iteration {at}: "
                f"{g:.3g}, against {base if base is not None else float('nan'):.3g} before): lower its loss_weight "
                f"(now {weight:g}) rather than base_lr")

    PINNED_WINDOW = 20  # iterations at 87.3365 before training stops (divergence: stop)

    def _underflowed(self, k: int) -> float:
        """The fraction of the examples (positions) of SoftmaxWithLoss layer k whose true class's probability is 0
        in float32: each adds 87.3365 = -ln(FLT_MIN) to the loss, the mark of a net that diverged without a NaN."""
        zero, total = 0, 0
        for net in self.nets:
            layer, bottom = net.layers[k], net.bottom_vecs[k]
            prob = getattr(layer, "prob", None)
            if prob is None or len(bottom) < 2:
                continue
            outer, chans, inner = prob.shape
            label = bottom[1].data.reshape(outer, inner)
            valid = (label >= 0) & (label < chans) & (label == np.round(label))
            if getattr(layer, "ignore", None) is not None:
                valid &= label != layer.ignore
            idx = np.where(valid, label, 0).astype(np.int64)
            p = np.take_along_axis(prob, idx[:, None, :], axis=1)[:, 0, :]
            zero += int(((p <= np.finfo(np.float32).tiny) & valid).sum())
            total += int(valid.sum())
        return zero / total if total else 0.0

    def check_plateaus(self, it: int, loss: float):
        if self.first_it is None:
            self.first_it = it
        pinned = None
        for k, (d, layer) in enumerate(zip(self.net.defs, self.net.layers)):
            if d.type != "SoftmaxWithLoss" or not any(b in self.net.top_vecs[k] for b, _ in self.net.loss_blobs):
                continue
            value = float(self.net.top_vecs[k][0].data)
            share = self._underflowed(k)
            if abs(value - FLT_MIN_LOSS) < 0.5 or share >= 0.25:
                pinned = d
                said = (f"iteration {it}: loss '{d.name}' is {value:.4f}: the true class's probability underflowed to "
                        f"0 for {100 * share:.0f}% of the batch, each adding 87.3365 = -ln(FLT_MIN).")
                if it == self.first_it:  # before any update: no rate has done this yet
                    self.started_pinned = (it, value)
                    self.warn("softmax_87", f"{said} {START_ADVICE}")
                else:
                    self.warn("softmax_87", f"{said} The net diverged (lower base_lr tenfold) or the labels do not "
                              "match the outputs (check that they run from 0 to num_output - 1)")
        self.pinned = self.pinned + 1 if pinned is not None else 0
        self.pinned_from = (self.pinned_from if self.pinned > 1 else it) if pinned is not None else None
        self.suspect = pinned is not None
        if self.pinned >= self.PINNED_WINDOW and getattr(self.cfg, "divergence", "stop") == "stop":
            said = (f"for {self.pinned} iterations (to {it}) the true class's probability in loss '{pinned.name}' "
                    f"({pinned.type}) underflowed to 0 for a quarter of the batch or more (each example adds 87.3365 "
                    "= -ln(FLT_MIN))")
            if self.pinned_from == self.first_it:
                raise Diverged(f"Training is stuck from its first iteration: {said}, before any update did anything. "
                               f"{START_ADVICE} (divergence: warn in the solver only warns).")
            raise Diverged(f"Training diverged: {said}: the net has diverged without a NaN. Lower base_lr tenfold, or "
                           "check that the labels run from 0 to num_output - 1 (divergence: warn in the solver only "
                           "warns).")
        window = min(100, max(10, self.cfg.max_iter // 5))
        if len(self.first_losses) < window:
            self.first_losses.append(loss)
            if len(self.first_losses) == window:
                a, b = np.mean(self.first_losses[:5]), np.mean(self.first_losses[-5:])
                top = int(np.argmax(self.first_losses))
                if abs(b - a) < 0.01 * abs(a):
                    self.check_constant(it, loss, "the loss has not moved by 1% in the first "
                                        f"{window} iterations ({a:.4g} -> {b:.4g})")
                    if "constant_output" not in self.warned:
                        self.warn("lr_small", f"the loss has not moved by 1% in the first {window} iterations "
                                  f"({a:.4g} -> {b:.4g}): the learning rate is probably too small; try base_lr x10 "
                                  "(run.py lr-find finds a range)")
                elif b >= 0.9 * a and self.first_losses[top] > 3 * a > 0 and "softmax_87" not in self.warned:
                    self.warn("lr_high", f"the loss has not fallen in the first {window} iterations ({a:.4g} -> "
                              f"{b:.4g}) and jumped to {self.first_losses[top]:.4g} at iteration "
                              f"{it - window + 1 + top}: the learning rate is probably too high; try base_lr / 10 "
                              "(run.py lr-find finds a range)")
        else:  # later: a loss that stopped moving because the net stopped looking at its input (dead ReLUs)
            recent = self.recent_losses
            recent.append(loss)
            if len(recent) >= window:
                lo, hi = min(recent), max(recent)
                if hi - lo < 0.01 * abs(hi):
                    self.check_constant(it, loss, f"the loss has stayed at {loss:.5g} for {window} iterations")
                recent.clear()

    def check_constant(self, it: int, loss: float, said: str):
        """When the loss stopped moving: warn (once) if the net gives every example the same scores, and why."""
        net = self.nets[0]  # (the first slice, where the batch runs as slices: its blobs hold its examples)
        why = constant_output(net)
        if why is None:
            return
        chance = ""
        for k, layer in enumerate(net.layers):
            prob = getattr(layer, "prob", None) if net.defs[k].type == "SoftmaxWithLoss" else None
            if prob is not None and prob.ndim == 3 and prob.shape[1] > 1 and abs(loss - math.log(prob.shape[1])) < \
                    0.01 * math.log(prob.shape[1]):
                chance = (f" (about ln({prob.shape[1]}) = {math.log(prob.shape[1]):.4g}, the loss of the same "
                          f"probability for each of the {prob.shape[1]} classes)")
                break
        self.warn("constant_output", f"iteration {it}: {said}{chance} because the net gives the same scores for "
                  f"every example, whatever its input: {why}. A larger learning rate will not help")

    def check_update(self, it: int, finite: dict | None = None):
        """The steps (in the params' diffs) must be finite before they are applied. `finite`: {param key: bool}
        where the solver found out on the way (solvers/rules.Solver.fused_rule)."""
        finite = finite or {}
        for p in self.net.params:
            if not p.lr_mult:
                continue
            if not (finite[p.key] if p.key in finite else math.isfinite(sum_squares(p.blob.diff.reshape(-1)))):
                raise Diverged(f"Training diverged: the update of param {p.key} at iteration {it} is non-finite (the "
                               "solver's step overflowed); the learning rate is probably too high: lower base_lr "
                               "tenfold, or set clip_gradients")

    # ---- debug_info and monitoring, at display iterations -----------------------------------

    def debug(self, it: int, phase: str):
        rows = {}
        for d, layer, top in zip(self.net.defs, self.net.layers, self.net.top_vecs):
            if d.node is None:
                continue
            r = {f"top/{n}/data": float(np.abs(t.data).mean()) if t.data.size else 0.0 for n, t in zip(d.tops, top)}
            r.update({f"top/{n}/diff": float(np.abs(t.diff).mean()) if t.diff.size else 0.0
                      for n, t in zip(d.tops, top)})
            r.update({f"param/{i}/data": float(np.abs(b.data).mean()) for i, b in enumerate(layer.blobs)})
            r.update({f"param/{i}/diff": float(np.abs(b.diff).mean()) for i, b in enumerate(layer.blobs)})
            rows[d.name] = r
            self.out(f"    [{phase}] Layer {d.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()))
        self.metrics.write({"phase": "debug", "iter": it, "stage": phase, "layers": rows})

    def monitor_layers(self, it: int, steps: dict, grads: dict | None = None):
        """Dead ReLUs, saturated Sigmoid/TanH, gradient norms and update/weight ratios per layer. steps, grads:
        {layer name: L2 norm} of the update and of the gradient (grads measured before the solver turned the
        diffs into steps; without it, the diffs' norm)."""
        report, first_grad, last_grad = {}, None, None
        for d, layer, top in zip(self.net.defs, self.net.layers, self.net.top_vecs):
            if d.node is None:
                continue
            r = {}
            y = top[0].data if top else None
            if d.type == "ReLU" and y is not None and y.ndim >= 1 and len(y):
                dead = float((y.reshape(len(y), -1) <= 0).all(axis=0).mean())
                r["dead_fraction"] = dead
                if dead > 0.5:
                    self.warn(f"dead_{d.name}", f"iteration {it}: {dead:.0%} of the units of ReLU '{d.name}' are "
                              "zero for every example (dead); lower base_lr, use a smaller bias_filler, or try "
                              "negative_slope: 0.01 (leaky ReLU)")
            if d.type in ("Sigmoid", "TanH") and y is not None and y.size:
                sat = float((np.abs(y) > 0.99).mean() if d.type == "TanH" else ((y < 0.01) | (y > 0.99)).mean())
                r["saturated_fraction"] = sat
                if sat > 0.5:
                    self.warn(f"sat_{d.name}", f"iteration {it}: {sat:.0%} of the outputs of {d.type} '{d.name}' "
                              "are saturated, so little gradient flows back; use xavier fillers, normalize the "
                              "inputs, or lower base_lr")
            if layer.blobs:
                g = (grads or {}).get(d.name)
                if g is None:
                    g = math.sqrt(sum(float((b.diff.astype(np.float64) ** 2).sum()) for b in layer.blobs))
                w = math.sqrt(sum(float((b.data.astype(np.float64) ** 2).sum()) for b in layer.blobs))
                r["grad_norm"] = g
                step = steps.get(d.name)
                if step is not None and w > 0:
                    ratio = step / w
                    r["update_ratio"] = ratio
                    if ratio > 1e-2 or (0 < ratio < 1e-5):
                        what = "too high" if ratio > 1e-2 else "too low"
                        self.warn(f"ratio_{d.name}", f"iteration {it}: the update-to-weight ratio of layer "
                                  f"'{d.name}' is {ratio:.2g} (healthy around 1e-3): the learning rate is probably "
                                  f"{what} for it; adjust base_lr or that layer's lr_mult")
                first_grad = g if first_grad is None else first_grad
                last_grad = g
            if r:
                report[d.name] = r
        if first_grad is not None and last_grad and 0 < first_grad < last_grad / 1000:
            self.warn("vanishing", f"iteration {it}: the gradient norm of the first layer ({first_grad:.2g}) is "
                      f"over 1000x below the last layer's ({last_grad:.2g}): vanishing gradients; use ReLU instead "
                      "of Sigmoid/TanH, xavier or msra fillers, or BatchNorm")
        self.metrics.write({"phase": "monitor", "iter": it, "layers": report})

    def check_chance(self, it: int, max_iter: int, test_net, record: dict):
        """A test accuracy at chance (1/C) after a fifth of the run or more: the net has learned nothing; say so
        once, and where to look (the warnings above, run.py sanity)."""
        if it < max(1, max_iter // 5):
            return
        for d, layer in zip(test_net.defs, test_net.layers):
            value = record.get(d.tops[0]) if d.type == "Accuracy" and d.tops else None
            classes = getattr(layer, "view", (0, 0))[1]
            if isinstance(value, float) and layer.p.top_k == 1 and classes > 1 and value <= 1.2 / classes:
                self.warn("chance", f"iteration {it}: the test accuracy '{d.tops[0]}' is {value:.4g}, chance level "
                          f"for {classes} classes (1/{classes} = {1 / classes:.3g}): after {it} of {max_iter} "
                          "iterations the net has learned nothing the test can see; see the warnings above, and "
                          "run.py sanity (can it overfit 20 examples?) before a longer run")
                return

    def after_test(self, it: int, test_loss: float, train_loss: float, best_snapshot):
        """Overfitting: the test loss rose over the last 3 tests while the training loss fell."""
        self.tests.append((it, test_loss, train_loss))
        if len(self.tests) >= 4:
            last = self.tests[-4:]
            rising = all(b[1] > a[1] for a, b in zip(last, last[1:]))
            falling = last[-1][2] < last[0][2]
            if rising and falling:
                best = min(self.tests, key=lambda t: t[1])
                self.warn("overfitting", f"iteration {it}: the test loss has risen for 3 test intervals "
                          f"({last[0][1]:.4g} -> {last[-1][1]:.4g}) while the training loss fell: the net is "
                          f"overfitting. The best test loss was at iteration {best[0]}"
                          + (f" (snapshot {best_snapshot(best[0])})" if best_snapshot(best[0]) else "")
                          + "; add weight_decay or Dropout, get more data, or stop there")
