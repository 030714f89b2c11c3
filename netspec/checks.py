"""Checks of a built net beyond its schema and shapes: structure, and the data it will read.

Each returns findings (errors and warnings) positioned at the node to fix. They run in
`run.py validate` and once before `run.py train` starts.
"""
from __future__ import annotations

import os

import numpy as np

import layers
from .errors import Finding
from .graph import as_list
from .net import Net

METRIC_TYPES = ("Accuracy", "Silence")


def _finding(where, severity, message):
    return Finding(where[0], where[1], where[2], severity, message)


def _producer(net: Net, index: int, blob: str):
    """The (def, layer, top index) that last produced `blob` before layer `index`, looking through Splits
    and in-place layers back to the layer that created it."""
    for k in range(index - 1, -1, -1):
        d = net.defs[k]
        if blob in d.tops:
            j = d.tops.index(blob)
            if d.type == "Split" or d.in_place(j) is not None:
                return _producer(net, k, d.bottoms[0 if d.type == "Split" else d.in_place(j)])
            return d, net.layers[k], j
    return None, None, None


def _consumers(net: Net, blob: str) -> list:
    """Layer defs that read `blob` as it was first produced (looking through inserted Splits)."""
    out = []
    for d in net.defs:
        if blob in d.bottoms:
            if d.type == "Split":
                out.extend(c for t in d.tops for c in net.defs if t in c.bottoms)
            else:
                out.append(d)
    return out


def batchnorm_window_findings(net: Net, max_iter: int | None) -> list[Finding]:
    """BatchNorm's running averages over ~1/(1 - moving_average_fraction) iterations trail the weights in a
    short run, so the TEST net (which uses them) scores far below the TRAIN net."""
    out = []
    if not max_iter:
        return out
    for d, layer in zip(net.defs, net.layers):
        if d.type == "BatchNorm" and layer.p.use_global_stats is None:
            window = 1.0 / max(1e-12, 1.0 - layer.p.moving_average_fraction)
            if window * 5 > max_iter:
                out.append(_finding(d.where("batch_norm_param.moving_average_fraction"), "warning",
                                    f"layer '{d.name}' (BatchNorm): moving_average_fraction "
                                    f"{layer.p.moving_average_fraction} averages the statistics over about "
                                    f"{window:.0f} iterations, a large part of this {max_iter}-iteration run: the "
                                    "TEST net will use statistics of older weights and score low; use 0.99 or 0.9"))
    return out


def structure_findings(net: Net, doc, for_training: bool, fillers: bool = True) -> list[Finding]:
    """A TRAIN net without a loss; layers whose outputs nothing uses; hidden layers that start at zero (fillers:
    False where the weights come from a file: fine-tuning prototxts leave the fillers out)."""
    out = []
    deploy = not any(layer.is_data for layer in net.layers)  # Input layers and no loss: a net for inference
    if net.phase == "TRAIN" and not net.has_loss and (for_training or not deploy):
        w = doc.at("layer") if hasattr(doc, "at") and "layer" in doc else getattr(doc, "where", (net.path, 1, 1))
        out.append(_finding(w, "error" if for_training else "warning",
                            "the TRAIN net has no loss layer (and no top with a loss_weight), so there is "
                            "nothing to train; add e.g. a SoftmaxWithLoss layer"
                            + ("" if for_training else " (fine for a deploy net)")))
    for d, layer in zip(net.defs, net.layers):
        if d.type == "BatchNorm" and layer.p.use_global_stats is True and (for_training or net.has_loss):
            out.append(_finding(d.where("batch_norm_param.use_global_stats"), "error",
                                f"layer '{d.name}' (BatchNorm): use_global_stats: true in a net used for TRAIN: "
                                "the layer will never learn batch statistics and the net will not converge; "
                                "remove use_global_stats and let the phase decide"))
    if net.phase == "TRAIN" and net.has_loss:
        out += (_zero_filled_findings(net) if fillers else []) + _frozen_findings(net)
    if net.has_loss:
        consumed = {b for d in net.defs for b in d.bottoms}
        for d, layer in zip(net.defs, net.layers):
            if (d.node is None or layer.is_loss or layer.is_data or d.type in METRIC_TYPES or not d.tops
                    or any(d.loss_weights) or any(t in consumed for t in d.tops)):
                continue
            if any(d.in_place(j) is not None for j in range(len(d.tops))):
                continue  # in place: its output is the blob its consumers read
            out.append(_finding(d.where("top"), "warning",
                                f"layer '{d.name}' ({d.type}): nothing uses its output "
                                f"{', '.join(repr(t) for t in d.tops)} in the {net.phase} net; feed it to "
                                "another layer or a loss, or remove the layer"))
    return out


LEARNED = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
           "InnerProduct": "inner_product_param"}


def _lr_mult(d, i: int) -> float:
    """The lr_mult its `param` specs give blob i of layer def d (Caffe's default: 1)."""
    specs = as_list(d.node.get("param")) if d.node is not None else []
    return (specs[i] if i < len(specs) and isinstance(specs[i], dict) else {}).get("lr_mult", 1)


def _zero_filled_findings(net: Net) -> list[Finding]:
    """Hidden layers whose weights start at 0 (no weight_filler: Caffe's default is constant 0): their outputs
    start equal and their gradients are equal (behind a ReLU, 0), so they never become different."""
    hits = []
    for k, (d, layer) in enumerate(zip(net.defs, net.layers)):
        if d.type not in LEARNED or d.node is None or not (layer.blobs or getattr(layer, "blob_shapes", None)):
            continue
        if not _lr_mult(d, 0):
            continue  # frozen
        filler = layer.p.weight_filler
        if filler is not None and not (filler.get("type", "constant") == "constant" and not filler.get("value", 0)):
            continue
        reach, hidden = set(d.tops), None  # does its output feed another learned layer (not only a loss)?
        for later in net.defs[k + 1:]:
            if reach & set(later.bottoms):
                if later.type in LEARNED:
                    hidden = later
                    break
                reach |= set(later.tops)
        if hidden is None:
            continue  # the last learned layer: zeros are a fine start (a logistic regression's)
        hits.append((d, layer, filler, hidden))
    if len(hits) > 2:  # (a fine-tuning prototxt, whose weights come from a .caffemodel, leaves them all out)
        d = hits[0][0]
        names = ", ".join(f"'{h[0].name}'" for h in hits)
        return [_finding(d.where(LEARNED[d.type]), "warning",
                         f"{len(hits)} hidden layers ({names}) have no weight_filler (or one of constant 0): their "
                         "weights start at 0 (Caffe's default filler), so each one's outputs start equal, get equal "
                         "gradients and stay equal (behind a ReLU they get none and never train); give them "
                         "weight_filler: {type: xavier} (msra for ReLU nets), unless the weights come from a "
                         ".caffemodel (--weights)")]
    out = []
    for d, layer, filler, hidden in hits:
        block = LEARNED[d.type]
        out.append(_finding(d.where(f"{block}.weight_filler" if filler is not None else block), "warning",
                            f"layer '{d.name}' ({d.type}) has "
                            + ("no weight_filler" if filler is None else "a weight_filler of constant 0")
                            + f": its weights start at 0 (Caffe's default filler), so its {layer.p.num_output} "
                            f"outputs start equal, get equal gradients and stay equal (behind a ReLU they get none "
                            f"and never train; '{hidden.name}' above sees one feature); give it weight_filler: "
                            "{type: xavier} (msra for ReLU nets), unless its weights come from a .caffemodel"))
    return out


def _frozen_findings(net: Net) -> list[Finding]:
    """A TRAIN net whose every learnable blob has lr_mult 0: the solver changes nothing (Caffe runs it anyway)."""
    blobs = []
    for d, layer in zip(net.defs, net.layers):
        shapes = layer.blobs or getattr(layer, "blob_shapes", None) or []
        if d.node is None or d.type == "BatchNorm" or not shapes:
            continue  # (BatchNorm's blobs are running statistics, never learned)
        blobs += [(d, _lr_mult(d, i)) for i in range(len(shapes))]
    if not blobs or any(lr for _, lr in blobs):
        return []
    first = blobs[0][0]
    return [_finding(first.where("param"), "warning",
                     f"every learnable blob of the {net.phase} net has lr_mult 0 (the first: layer '{first.name}'), "
                     "so training changes no weight; give the layers to train lr_mult: 1 (fine-tuning freezes the "
                     "lower layers and trains the new ones)")]


def _label_findings(net: Net, k: int) -> list[Finding]:
    """Labels feeding loss/accuracy layer k: integers in [0, C)."""
    d, layer = net.defs[k], net.layers[k]
    if len(d.bottoms) < 2:
        return []
    src_def, src, top_index = _producer(net, k, d.bottoms[1])
    if src is None or not getattr(src, "loaded", False):
        return []
    rows = src.check_rows()
    if top_index >= len(rows):
        return []
    labels, ids = rows[top_index]
    score_def, _, _ = _producer(net, k, d.bottoms[0])
    axis = getattr(layer, "view", None)
    classes = layer.view[1] if axis else None
    if classes is None:
        return []
    feeder = f"num_output {classes} of layer '{score_def.name}'" if score_def else f"{classes} classes"
    lab = labels.reshape(len(labels), -1)
    row_of = (lambda r: r) if ids is None else (lambda r: int(ids[r]))  # a streamed source: a sample of its rows
    ignore = getattr(layer.p, "ignore_label", None)
    valid = lab if ignore is None else np.where(lab == ignore, 0, lab)
    where = src_def.where(f"{src.param_block}.source")
    head = f"layer '{src_def.name}' ({src_def.type}): source '{src.p.source}'"
    bad = ~np.isfinite(valid) | (valid != np.round(valid))
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        return [_finding(where, "error", f"{head}: label {lab[row][bad[row]][0]} at {src.describe_row(row_of(row))} is "
                                         f"not an integer; '{d.name}' ({d.type}) needs class numbers 0..{classes - 1}")]
    lo, hi = float(valid.min()), float(valid.max())
    if lo == 1 and hi == classes:
        return [_finding(where, "error", f"{head}: labels run from 1 to {classes} but '{d.name}' ({d.type}) "
                                         f"with {feeder} needs 0..{classes - 1}; labels must start at 0: subtract 1")]
    out = []
    if lo < 0:
        row = int(np.argmax((valid < 0).any(axis=1)))
        hint = (f"set loss_param.ignore_label: {int(lo)} if such rows should not count" if ignore is None
                else "fix the labels")
        out.append(_finding(where, "error", f"{head}: label {int(lo)} at {src.describe_row(row_of(row))} is negative; "
                                            f"labels must be in 0..{classes - 1}; {hint}"))
    if hi >= classes:
        row = int(np.argmax((valid >= classes).any(axis=1)))
        out.append(_finding(where, "error", f"{head}: label {int(hi)} at {src.describe_row(row_of(row))} is out of range "
                                            f"for '{d.name}' ({d.type}) with {feeder} (labels 0..{classes - 1}); "
                                            f"raise num_output to {int(hi) + 1} or fix the labels"))
    elif hi + 1 < classes and layer.is_loss:
        out.append(_finding(score_def.where("inner_product_param.num_output") if score_def else where, "warning",
                            f"layer '{score_def.name if score_def else d.name}': {feeder} but the labels in "
                            f"'{src.p.source}' only go up to {int(hi)}; harmless, but num_output "
                            f"{int(hi) + 1} is enough"))
    if net.phase == "TRAIN" and layer.is_loss and lab.shape[1] == 1 and not getattr(src.p, "shuffle", False) and (
            ids is None or np.array_equal(ids, np.arange(len(ids)))):
        out += _sorted_findings(src, src_def, where, head, lab[:, 0])
    if net.phase == "TRAIN" and d.type == "SoftmaxWithLoss" and lab.shape[1] == 1 and not layer.p.class_weight \
            and ignore is None and 0 <= lo and hi < classes:
        counts = np.bincount(lab[:, 0].astype(np.int64), minlength=classes)
        top = int(np.argmax(counts))
        share = counts[top] / max(1, counts.sum())
        if share >= 0.9 and classes > 1:
            weights = counts.sum() / (classes * np.maximum(counts, 1))
            out.append(_finding(where, "warning", f"{head}: {share:.1%} of the labels are class {top}: a net that "
                                f"answers {top} for every example scores {share:.3f} accuracy and learns little "
                                "else; judge it by the other classes' recall, and weight the classes "
                                f"(loss_param.class_weight: [{', '.join(f'{w:.3g}' for w in weights)}], the "
                                "inverse frequencies) or resample the source"))
    return out


def _sorted_findings(src, src_def, where, head, labels) -> list[Finding]:
    """A training source read in order whose batches hold one class each (rows sorted by label, as a list
    written class by class and converted without --shuffle gives): each update then pulls toward one class."""
    batch = int(getattr(src.p, "batch_size", 0) or 0)
    n = len(labels) // batch if batch > 1 else 0
    if n < 4 or len(np.unique(labels)) < 2:
        return []
    per = labels[:n * batch].reshape(n, batch)
    single = int((per == per[:, :1]).all(axis=1).sum())
    if single * 2 < n:
        return []
    runs = 1 + int(np.count_nonzero(labels[1:] != labels[:-1]))
    return [_finding(where, "warning",
                     f"{head}: the rows come sorted by label ({runs} runs of one class in {len(labels)} rows): "
                     f"{single} of its {n} batches of {batch} hold a single class. Read in order, each update pulls "
                     "the net toward one class and the loss swings instead of falling; shuffle the rows once (Caffe's "
                     f"convert_imageset --shuffle, or a shuffled list) or set {src.param_block}.shuffle: true")]


def _input_scale_findings(net: Net, d, layer, raw) -> list[Finding]:
    """Raw pixels (0..255) fed unscaled and uncentered to a first layer whose filler expects inputs near 1: its
    outputs start tens of times too large, the first losses are 87.3365 or NaN, and the advice then is the rate."""
    tf = getattr(layer, "transformer", None)
    if tf is None or tf.steps or tf.mean is not None or tf.p.scale != 1:
        return []
    x = raw[:2000].astype(np.float64)
    if not x.size or float(x.max()) < 100:
        return []
    consumers = _consumers(net, d.tops[0])
    if not consumers or any(c.type not in LEARNED for c in consumers):
        return []
    first = consumers[0]
    shape, filler = net.layer_by_name(first.name).blob_shapes[0]
    w = layers.fillers.weight_rms(shape, filler)
    if w is None:
        return []
    fan_in = float(np.prod(shape)) / shape[0] if first.type != "Deconvolution" else float(np.prod(shape)) / shape[1]
    rms = float(np.sqrt(np.mean(x * x)))
    start = w * np.sqrt(fan_in) * rms
    if start < 30:
        return []
    kind = (filler or {}).get("type", "constant")
    return [_finding(d.where(f"{layer.param_block}.source"), "warning",
                     f"layer '{d.name}' ({d.type}): the inputs of '{layer.p.source}' reach {float(x.max()):g} "
                     f"(root mean square {rms:.3g}) and no transform_param scales or centers them: layer "
                     f"'{first.name}' ({first.type}, {kind} weights) starts with outputs around {start:.0f}, far from "
                     "the ~1 a net trains from, so the first losses are huge (87.3365) or NaN whatever the "
                     "learning rate. Scale them as Caffe's examples do: transform_param {scale: 0.00390625} (1/256), "
                     "or subtract a mean (mean_value, mean_file) and scale")]


def data_findings(net: Net, test_iter: int | None = None, test_iter_where=None) -> list[Finding]:
    """Read every data source once: non-finite values, labels, and a test pass longer than the test set."""
    out = []
    from netspec.progress import Progress
    sources = [layer for layer in net.layers if hasattr(layer, "load") and getattr(layer.p, "source", None)]
    for d, layer in zip(net.defs, net.layers):
        if not hasattr(layer, "load") or not getattr(layer.p, "source", None):
            continue  # only layers that read a source (not MemoryData, DummyData, Input)
        Progress.update(sources.index(layer), len(sources), f"reading {layer.p.source}")
        try:
            if not layer.loaded:
                layer.load()
            rows = layer.check_rows()
        except Exception as e:  # a user file we cannot read: report it where the source is named
            out.append(_finding(d.where(f"{layer.param_block}.source"), "error", f"layer '{d.name}' ({d.type}): "
                                f"{str(e).split(': error: ', 1)[-1]}"))
            continue
        for name, (arr, ids) in zip(d.tops, rows):
            if arr.dtype == object:
                continue  # images of several sizes: decoded uint8, never NaN
            flat = arr.reshape(len(arr), -1)
            finite = np.isfinite(flat).all(axis=1)
            if not finite.all():
                row = int(np.argmin(finite))
                col = int(np.argmin(np.isfinite(flat[row])))
                out.append(_finding(d.where(f"{layer.param_block}.source"), "error",
                                    f"layer '{d.name}' ({d.type}): source '{layer.p.source}' holds "
                                    f"{flat[row, col]} in '{name}' at "
                                    f"{layer.describe_row(row if ids is None else int(ids[row]))}, value {col}; "
                                    "fix or drop that row (NaN or Inf input turns the loss into NaN)"))
        normalizers = [c for c in _consumers(net, d.tops[0]) if c.type == "BatchNorm"]
        if normalizers and rows[0][0].dtype != object:
            flat = rows[0][0].reshape(len(rows[0][0]), -1)
            constant = np.flatnonzero(flat.min(axis=0) == flat.max(axis=0))
            if constant.size:
                out.append(_finding(d.where(f"{layer.param_block}.source"), "warning",
                                    f"layer '{d.name}' ({d.type}): {constant.size} feature(s) of '{layer.p.source}' "
                                    f"never change (first: value {constant[0]}) but layer '{normalizers[0].name}' "
                                    "divides by their standard deviation, which is 0 (only eps keeps it finite); "
                                    "drop constant features or do not normalize them"))
        if net.phase == "TRAIN" and rows[0][0].dtype != object:
            out += _input_scale_findings(net, d, layer, rows[0][0])
        if test_iter and net.phase == "TEST" and test_iter * layer.p.batch_size > layer.rows:
            w = test_iter_where or d.where("data_param.batch_size")
            out.append(_finding(w, "warning", f"test_iter {test_iter} x batch_size {layer.p.batch_size} of layer "
                                f"'{d.name}' = {test_iter * layer.p.batch_size} examples, but '{layer.p.source}' "
                                f"has {layer.rows}: the test repeats examples; use test_iter "
                                f"{max(1, layer.rows // layer.p.batch_size)} or a batch_size that divides "
                                f"{layer.rows}"))
    if sources:
        Progress.close()
    for k, layer in enumerate(net.layers):
        if layer.is_loss or net.defs[k].type == "Accuracy":
            out.extend(_label_findings(net, k))
    return out


def _transform_summary(tf) -> dict:
    """What a data layer's transform does to the values (not where it crops or whether it mirrors)."""
    p = tf.p
    mean = (f"mean_file {p.mean_file}" if p.mean_file else f"mean_value {list(p.mean_value)}" if p.mean_value
            else "no mean")
    return {"scale": f"scale {p.scale:g}", "mean": mean, "normalize": f"normalize {tf.steps}" if tf.steps else ""}


def transform_findings(train: Net, test: Net) -> list[Finding]:
    """A TEST data layer whose transform_param changes the values unlike the TRAIN one feeding the same blob (a
    scale or mean copied into one phase only): the test net then sees inputs the net never trained on."""
    out = []
    feeding = {d.tops[0]: (d, layer) for d, layer in zip(train.defs, train.layers)
               if layer.is_data and d.tops and getattr(layer, "transformer", None) is not None}
    for d, layer in zip(test.defs, test.layers):
        tf = getattr(layer, "transformer", None)
        if not (layer.is_data and d.tops and tf is not None and d.tops[0] in feeding) or d.node is None:
            continue
        td, tl = feeding[d.tops[0]]
        if td.node is d.node:
            continue  # one layer in both phases
        mine, theirs = _transform_summary(tf), _transform_summary(tl.transformer)
        differ = [k for k in mine if mine[k] != theirs[k]]
        if not differ:
            continue
        what = "; ".join(f"{mine[k] or 'no ' + k} in TEST, {theirs[k] or 'no ' + k} in TRAIN" for k in differ)
        w = d.where("transform_param") if "transform_param" in d.node else d.where()
        out.append(_finding(w, "warning", f"layer '{d.name}' (TEST) transforms '{d.tops[0]}' unlike layer "
                            f"'{td.name}' (TRAIN): {what}. The test net then sees inputs of another range than "
                            "those the net trains on, and its scores are not the trained net's; give both the same "
                            "scale and mean (crop_size and mirror may differ: TEST crops the center and does not "
                            "mirror)"))
    return out


def machine_memory() -> int:
    """Physical memory in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_findings(net: Net, training: bool = True, history_slots: int = 1, machine: int | None = None) -> list:
    """An estimate of the memory a run needs: params (with their diffs and the solver's history in training),
    activations (and their diffs, after in-place sharing, and the copies kept for backward), and the im2col
    buffers of convolutions; an error above the machine's memory, a warning above half of it, naming the
    layers that need most."""
    from .summary import summarize
    machine = machine_memory() if machine is None else machine
    if not machine:
        return []
    size = net.dtype.itemsize
    need: dict = {}
    rows = summarize(net)
    for r in rows:
        copies = (2 + history_slots) if training else 1
        need[r["name"]] = (r["params"] * size * copies + r["memory_bytes"] * (2 if training else 1)
                           + (r.get("kept_bytes", 0) if training else 0))
    for d, layer in zip(net.defs, net.layers):
        if d.type in ("Convolution", "Deconvolution") and d.node is not None and getattr(layer, "blob_shapes", None):
            w = layer.blob_shapes[0][0]
            tops = [net.shapes[t] for t in d.tops if t in net.shapes]
            if tops and len(w) >= 2:
                taps = int(np.prod(w[1:], dtype=np.float64)) * getattr(layer.p, "group", 1)
                plane = float(np.prod(tops[0], dtype=np.float64)) / max(1, tops[0][1] if len(tops[0]) > 1 else 1)
                need[d.name] = need.get(d.name, 0) + int(taps * plane * size)
    total = sum(need.values())
    if total <= machine / 2:
        return []
    top = sorted(need.items(), key=lambda kv: -kv[1])[:3]
    where = next((d.where() for d in net.defs if d.name == top[0][0] and d.node is not None), (net.path, 1, 1))
    gib = 2 ** 30
    worst = ", ".join(f"'{n}' {b / gib:.3g} GiB" for n, b in top)
    over = total > machine
    return [Finding(where[0], where[1], where[2], "error" if over else "warning",
                    f"the net needs about {total / gib:.3g} GiB to {'train' if training else 'run'} (params, their "
                    f"diffs and solver history, activations and their diffs, convolution buffers) and this machine "
                    f"has {machine / gib:.3g} GiB{'' if over else ' (more than half of it)'}; most in {worst}: "
                    "lower batch_size or num_output" + ("" if over else ", or expect swapping"))]
