"""`run.py import model.onnx -o net.yaml`: an ONNX graph that Caffe's layers can express, as a yaffe net (YAML)
and its weights (`.weights.npz` beside it), to run, fine-tune or export again.

Ops: Conv, ConvTranspose, Gemm, MatMul (+ Add of a constant), BatchNormalization (BatchNorm + Scale), Relu,
LeakyRelu, PRelu, Sigmoid, Tanh, Gelu, HardSwish, Mish, Elu, Softplus (BNLL), Abs, LayerNormalization, ReduceMean
over (H, W) (global AVE pooling), Softmax, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Add, Sum, Mul,
Max and Sub of tensors (Eltwise), Sub and Div by a constant, c - x (Power), a Mul by an (N, C, 1, 1) gate (a
two-bottom Scale), HardSigmoid (Power + Clip), Shape arithmetic folded into a Reshape's shape, Add and Mul of a
constant (Bias, Scale), Concat, Flatten, Reshape, Transpose (Permute), Split and a one-axis Slice (Slice), Squeeze
and Unsqueeze (Reshape), Gather of one index (Slice + Reshape), a forward LSTM from zeros (Caffe's LSTM with a cont
of ones), Clip, Dropout and Identity (passed through), and a constant-zero Pad folded into the Conv or pooling it
feeds. Anything else is an error listing the ops that cannot be expressed and where they are. Needs the `onnx`
package (extra `onnx`).
"""
from __future__ import annotations

import math
import os

import numpy as np

from .errors import UserError

SUPPORTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "BatchNormalization", "Relu", "LeakyRelu",
             "PRelu", "Sigmoid", "Tanh", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
             "Concat", "Flatten", "Reshape", "Clip", "Dropout", "Identity", "Pad", "Constant", "Sum", "Max",
             "Gelu", "HardSwish", "Mish", "Elu", "Softplus", "Abs", "LayerNormalization", "ReduceMean",
             "GroupNorm",  # (the fused node of _fuse_group_norm)
             "Sub", "HardSigmoid", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather", "LSTM"}
ELEMENTWISE = {"Gelu": "GELU", "HardSwish": "HardSwish", "Mish": "Mish", "Elu": "ELU", "Softplus": "BNLL",
               "Abs": "AbsVal", "Sigmoid": "Sigmoid", "Tanh": "TanH"}


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _spatial(prefix, values, layer, block):
    """kernel/stride/pad/dilation as Caffe fields: one value when square, _h/_w otherwise (2-D)."""
    values = list(values)
    if len(values) == 2 and values[0] != values[1]:
        layer[block][f"{prefix}_h"], layer[block][f"{prefix}_w"] = int(values[0]), int(values[1])
    elif len(values) == 2:
        layer[block][f"{prefix}_size" if prefix == "kernel" else prefix] = int(values[0])
    else:
        layer[block][f"{prefix}_size" if prefix == "kernel" else prefix] = [int(v) for v in values]


def _pads(pads, what):
    n = len(pads) // 2
    begin, end = list(pads[:n]), list(pads[n:])
    if begin != end:
        raise ValueError(f"{what} pads {list(pads)} differ at the start and the end; Caffe pads both sides alike")
    return begin


def _scalar(consts, name, value):
    c = consts.get(name)
    return c is not None and np.asarray(c).size == 1 and abs(float(np.asarray(c).ravel()[0]) - value) < 1e-4


def _links(nodes):
    """({tensor: indices of the nodes reading it}, {tensor: index of the node writing it})."""
    consumers, producer = {}, {}
    for k, n in enumerate(nodes):
        for t in n.input:
            consumers.setdefault(t, []).append(k)
        for t in n.output:
            producer[t] = k
    return consumers, producer


def _fuse_erf_gelu(nodes, consts):
    """GELU as exporters before opset 20 write it, x * (1 + erf(x / sqrt 2)) / 2 (PyTorch: Div, Erf, Add, Mul,
    Mul; yaffe's export: Mul, Erf, Add, Mul, Mul), as one Gelu node in place of the five."""
    from onnx import helper
    consumers, producer = _links(nodes)

    def only(tensor, op):
        ks = consumers.get(tensor, [])
        return ks[0] if len(ks) == 1 and nodes[ks[0]].op_type == op else None

    def other(node, tensor):
        rest = [t for t in node.input if t != tensor]
        return rest[0] if len(rest) == 1 else None

    drop, put = set(), {}
    for k, erf in enumerate(nodes):
        if erf.op_type != "Erf" or erf.input[0] not in producer:
            continue
        pk = producer[erf.input[0]]
        pre = nodes[pk]
        if pre.op_type not in ("Div", "Mul") or len(consumers.get(erf.input[0], [])) != 1:
            continue
        x = next((t for t in pre.input if t not in consts), None)
        if x is None or not _scalar(consts, other(pre, x) or "", math.sqrt(2) if pre.op_type == "Div" else
                                    1 / math.sqrt(2)):
            continue
        ak = only(erf.output[0], "Add")
        if ak is None or not _scalar(consts, other(nodes[ak], erf.output[0]) or "", 1.0):
            continue
        m1 = only(nodes[ak].output[0], "Mul")
        if m1 is None:
            continue
        m2 = only(nodes[m1].output[0], "Mul")
        if m2 is None:
            continue
        first, second = other(nodes[m1], nodes[ak].output[0]), other(nodes[m2], nodes[m1].output[0])
        if not ((first == x and _scalar(consts, second or "", 0.5)) or (second == x and _scalar(consts, first or "",
                                                                                                 0.5))):
            continue
        drop.update((pk, k, ak, m1))
        put[m2] = helper.make_node("Gelu", [x], [nodes[m2].output[0]], name=nodes[m2].name or erf.name)
    return [put.get(k, n) for k, n in enumerate(nodes) if k not in drop]


def _fuse_group_norm(nodes, consts):
    """GroupNorm as exporters before opset 21 write it: Reshape (N, G, -1), InstanceNormalization with unit scale and
    zero bias, Reshape back (to Shape(x) or a constant), as one node (num_groups, epsilon; the per-channel Mul and
    Add after it stay Scale and Bias layers)."""
    from onnx import helper
    consumers, producer = _links(nodes)
    drop, put = set(), {}
    for k, inorm in enumerate(nodes):
        if inorm.op_type != "InstanceNormalization" or inorm.input[0] not in producer:
            continue
        r1 = producer[inorm.input[0]]
        shape = consts.get(nodes[r1].input[1]) if nodes[r1].op_type == "Reshape" else None
        scale, bias = (consts.get(t) for t in inorm.input[1:3])
        if shape is None or len(shape) != 3 or shape[0] != 0 or shape[2] != -1 or scale is None or bias is None \
                or np.any(scale != 1) or np.any(bias != 0) or len(consumers.get(inorm.input[0], [])) != 1:
            continue
        after = consumers.get(inorm.output[0], [])
        if len(after) != 1 or nodes[after[0]].op_type != "Reshape":
            continue
        r2, x = after[0], nodes[r1].input[0]
        back = nodes[r2].input[1]
        via_shape = back in producer and nodes[producer[back]].op_type == "Shape" and \
            nodes[producer[back]].input[0] == x and len(consumers.get(back, [])) == 1
        if not via_shape and (back not in consts or consts[back].ravel()[0] != 0):
            continue
        eps = next((float(a.f) for a in inorm.attribute if a.name == "epsilon"), 1e-5)
        drop.update((r1, k) + ((producer[back],) if via_shape else ()))
        put[r2] = helper.make_node("GroupNorm", [x], [nodes[r2].output[0]], name=nodes[r2].name or inorm.name,
                                   num_groups=int(shape[1]), epsilon=eps)
    return [put.get(k, n) for k, n in enumerate(nodes) if k not in drop]


def _cuts(op, a, ins, consts, shape, outs):
    """(tops, slice points, axis) of a Caffe Slice for an ONNX Split (sizes from its input or attribute, or even)
    or a Slice of one axis with step 1 (the parts before and after it become tops named *__unused)."""
    if op == "Split":
        axis = int(a.get("axis", 0)) % len(shape)
        sizes = consts.get(ins[1]) if len(ins) > 1 else a.get("split")
        if sizes is None:
            if shape[axis] is None or shape[axis] % len(outs):
                raise ValueError("an even Split needs a known size divisible by its outputs")
            sizes = [shape[axis] // len(outs)] * len(outs)
        points = [int(v) for v in np.cumsum([int(v) for v in sizes])[:-1]]
        return outs, points, axis
    starts, ends = (consts.get(t) for t in ins[1:3])
    axes = consts.get(ins[3]) if len(ins) > 3 else np.arange(len(starts))
    steps = consts.get(ins[4]) if len(ins) > 4 else np.ones(len(starts), np.int64)
    if starts is None or ends is None or axes is None or steps is None or len(starts) != 1 or int(steps[0]) != 1:
        raise ValueError("only a Slice of one axis with constant starts and ends and step 1 has a Caffe layer")
    axis = int(axes[0]) % len(shape)
    size = shape[axis]
    if size is None:
        raise ValueError("the sliced axis must have a known size")
    lo, hi = (max(0, min(size, int(v) + size if int(v) < 0 else int(v))) for v in (starts[0], ends[0]))
    if hi <= lo:
        raise ValueError("an empty Slice")
    return _span(outs[0], lo, hi, size) + (axis,)


def _span(top, lo, hi, size):
    """(tops, slice points) of a Caffe Slice that keeps [lo, hi) of an axis of `size` as `top`; the parts before
    and after it are tops named *__unused (for a Silence)."""
    tops = ([f"{top}_before__unused"] if lo else []) + [top] + ([f"{top}_after__unused"] if hi < size else [])
    return tops, ([lo] if lo else []) + ([hi] if hi < size else [])


def _gate(known, ins):
    """(x, s) where a Mul multiplies x (N, C, H, W) by s (N, C, 1, 1) or (N, C) (a squeeze-and-excitation gate),
    else None."""
    a, b = (known.get(t) for t in ins)
    for x, s_, xs, ss in ((ins[0], ins[1], a, b), (ins[1], ins[0], b, a)):
        if xs and ss and len(xs) == 4 and len(ss) in (2, 4) and ss[1] == xs[1] and ss[2:] in ([], [1, 1]) \
                and xs[2:] != [1, 1]:
            return x, s_
    return None


def _fuse_softplus_threshold(nodes, consts):
    """PyTorch's softplus as its dynamo exporter writes it, Where(x > 20, x, Softplus(x)), as the one Softplus
    (BNLL is exact there too)."""
    from onnx import helper
    consumers, producer = _links(nodes)
    drop, put = set(), {}
    for k, n in enumerate(nodes):
        if n.op_type != "Where" or len(n.input) != 3:
            continue
        cond, x, soft = n.input
        gk, sk = producer.get(cond), producer.get(soft)
        if gk is None or sk is None or nodes[gk].op_type != "Greater" or nodes[sk].op_type != "Softplus":
            continue
        if nodes[gk].input[0] != x or nodes[sk].input[0] != x or nodes[gk].input[1] not in consts:
            continue
        if len(consumers.get(cond, [])) != 1 or len(consumers.get(soft, [])) != 1:
            continue
        drop.update((gk, sk))
        put[k] = helper.make_node("Softplus", [x], list(n.output), name=n.name)
    return [put.get(k, n) for k, n in enumerate(nodes) if k not in drop]


def _zero_initial_states(nodes, consts):
    """An LSTM's initial_h and initial_c that are zeros, constant (dynamo) or Expanded to (1, N, H) (TorchScript's
    export of nn.LSTM called without a state), as no initial state: Caffe's LSTM starts from zeros. The Expand and
    its shape arithmetic go."""
    from onnx import helper
    consumers, producer = _links(nodes)
    drop, put = set(), {}
    for k, n in enumerate(nodes):
        if n.op_type != "LSTM":
            continue
        inputs = list(n.input) + [""] * (7 - len(n.input))
        for j in (5, 6):
            if inputs[j] in consts and not np.any(consts[inputs[j]]):  # zeros given as they are (dynamo's)
                inputs[j] = ""
                continue
            e = producer.get(inputs[j])
            if e is None or nodes[e].op_type != "Expand" or len(consumers.get(inputs[j], [])) != 1:
                continue
            c = consts.get(nodes[e].input[0])
            if c is not None and not np.any(c):
                drop.add(e)
                inputs[j] = ""
        if inputs != list(n.input) + [""] * (7 - len(n.input)):
            put[k] = helper.make_node("LSTM", inputs, list(n.output), name=n.name, **_attrs(n))
    return [put.get(k, n) for k, n in enumerate(nodes) if k not in drop]


def _lstm(node, a, known, consts, batch, name, blob, layer_name, used):
    """Caffe's LSTM (its gates i, f, o, g) for ONNX's forward LSTM (gates i, o, f, c; two biases), fed a cont of
    ones (DummyData: no reset inside the sequence) and reshaped to ONNX's Y (T, 1, N, H): (layers, weights)."""
    x, w, r, b = (list(node.input) + [""] * 8)[:4]
    rest = (list(node.input) + [""] * 8)[4:7]
    if any(rest):
        raise ValueError("sequence_lens and initial states have no Caffe form (Caffe's LSTM starts from zeros)")
    if a.get("direction", b"forward") not in (b"forward", "forward") or a.get("layout", 0) or a.get("clip") \
            or a.get("input_forget", 0) or a.get("activations"):
        raise ValueError("only a forward LSTM with the default activations, no clip and layout 0")
    if any(t in used for t in node.output[1:]):
        raise ValueError("its final states Y_h and Y_c have no Caffe form here (use Y's last step)")
    shape = known.get(x)
    if not shape or len(shape) != 3 or shape[0] is None:
        raise ValueError("the input (T, N, I) needs a known length T")
    t_len, n = shape[0], shape[1] or batch
    h = int(a["hidden_size"])
    order = np.concatenate([np.arange(k * h, (k + 1) * h) for k in (0, 2, 1, 3)])  # i, o, f, c -> i, f, o, g
    wx, wh = consts[w][0][order], consts[r][0][order]
    bias = (consts[b][0][:4 * h] + consts[b][0][4 * h:])[order] if b else np.zeros(4 * h, np.float32)
    cont, y = f"{name}_cont", node.output[0]
    layers = [{"name": layer_name(node, cont), "type": "DummyData", "top": [cont], "dummy_data_param": {
                  "shape": {"dim": [t_len, n]}, "data_filler": {"type": "constant", "value": 1}}},
              {"name": name, "type": "LSTM", "bottom": [blob(x), cont], "top": [f"{y}__tnh"],
               "recurrent_param": {"num_output": h}},
              {"name": layer_name(node, f"{name}_y"), "type": "Reshape", "bottom": [f"{y}__tnh"], "top": [y],
               "reshape_param": {"shape": {"dim": [t_len, 1, n, h]}}}]
    return layers, {f"{name}/0": wx, f"{name}/1": bias, f"{name}/2": wh}


def _fold_shapes(nodes, consts, known):
    """Shape arithmetic as PyTorch's exporter writes `x.view(x.size(0), -1)` (Shape, Gather, Unsqueeze, Concat into
    a Reshape's shape) evaluated from the inferred shapes, the batch symbolic; a Reshape's shape that
    comes out with the batch first becomes a constant with 0 there (copy the dimension, in ONNX and in Caffe).
    The folded nodes are dropped where only shapes read them."""
    vals, folded = {}, set()

    def value(t):
        if t in vals:
            return vals[t]
        c = consts.get(t)
        return [int(v) for v in np.asarray(c).ravel()] if c is not None and np.asarray(c).dtype.kind in "iu" \
            else None

    for k, n in enumerate(nodes):
        op, a = n.op_type, _attrs(n)
        ins = [x for x in n.input if x]
        try:
            if op == "Shape":
                dims = known.get(ins[0])
                if dims is None:
                    continue
                out = ["N" if d is None else d for d in dims][a.get("start", 0):a.get("end", None)]
            elif op in ("Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Identity") and ins and \
                    any(x in vals for x in ins) and all(value(x) is not None for x in ins):
                v = [value(x) for x in ins]
                if op == "Gather":
                    if a.get("axis", 0) != 0:
                        continue
                    idx = np.asarray(consts.get(ins[1], v[1]))
                    out = [v[0][int(i)] for i in idx.ravel()] if idx.ndim else v[0][int(idx)]
                elif op == "Concat":
                    out = [d for part in v for d in (part if isinstance(part, list) else [part])]
                else:  # Unsqueeze, Squeeze, Cast, Identity: the same values
                    out = v[0] if isinstance(v[0], list) else [v[0]]
            else:
                continue
        except (IndexError, KeyError, TypeError):
            continue
        vals[n.output[0]] = out
        folded.add(k)
    consumers, _ = _links(nodes)
    for n in nodes:
        if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in vals:
            shape = vals[n.input[1]]
            if isinstance(shape, list) and "N" not in shape[1:]:
                consts[n.input[1]] = np.array([0 if d == "N" else d for d in shape], np.int64)
    # drop a folded node where every reader is folded too or reads it as a Reshape's (now constant) shape
    drop = set()
    for k in sorted(folded, reverse=True):
        readers = consumers.get(nodes[k].output[0], [])
        if all(r in drop or (nodes[r].op_type == "Reshape" and nodes[r].input[1] == nodes[k].output[0]
                             and nodes[k].output[0] in consts) for r in readers):
            drop.add(k)
    return [n for k, n in enumerate(nodes) if k not in drop]


def _constant_sides(nodes, consts):
    """x - c and x / c (a constant c) as x + (-c) and x * (1/c), which Bias and Scale express."""
    from onnx import helper
    out = []
    for n in nodes:
        if n.op_type in ("Sub", "Div") and len(n.input) == 2 and n.input[1] in consts and n.input[0] not in consts:
            c = np.asarray(consts[n.input[1]], np.float32)
            name = f"{n.input[1]}__{'negated' if n.op_type == 'Sub' else 'inverted'}"
            consts[name] = -c if n.op_type == "Sub" else 1.0 / c
            n = helper.make_node("Add" if n.op_type == "Sub" else "Mul", [n.input[0], name], list(n.output),
                                 name=n.name)
        out.append(n)
    return out


def import_onnx(path: str, batch: int = 1):
    """(net doc, weights {layer/i: array}) of an ONNX model."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise UserError("import needs the onnx package: pip install 'yaffe[onnx]' (or pip install onnx)") from None
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001: a file that is not an ONNX model
        raise UserError(f"{path}: error: not an ONNX model ({type(e).__name__}: {e})") from None
    try:  # the rank of every tensor, for the axis a broadcast constant applies from
        inferred = onnx.shape_inference.infer_shapes(model).graph
        infos = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in infos}
        known = {v.name: [d.dim_value if d.dim_value > 0 else None for d in v.type.tensor_type.shape.dim]
                for v in infos}
    except Exception:  # noqa: BLE001: shape inference is best effort
        ranks, known = {}, {}
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    nodes = _fold_shapes(_zero_initial_states(list(g.node), consts), consts, known)
    nodes = _fuse_softplus_threshold(nodes, consts)
    nodes = _constant_sides(_fuse_group_norm(_fuse_erf_gelu(nodes, consts), consts), consts)
    bad = [f"{n.op_type} ('{n.name or n.output[0]}', node {i})" for i, n in enumerate(nodes)
           if n.op_type not in SUPPORTED]
    if bad:
        raise UserError(f"{path}: error: {len(bad)} node(s) have no Caffe layer: {', '.join(bad[:8])}"
                        f"{' ...' if len(bad) > 8 else ''}; yaffe imports the graphs Caffe's layers can express")
    layers, weights, alias, pads = [], {}, {}, {}
    names = set()

    def blob(name):
        return alias.get(name, name)

    def layer_name(node, fallback):
        base = (node.name or fallback).replace("/", "_").replace(":", "_") or fallback
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.add(name)
        return name

    inputs = [i for i in g.input if i.name not in consts]
    for inp in inputs:
        dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
        layers.append({"name": inp.name, "type": "Input", "top": [inp.name], "input_param": {"shape": {"dim": dims}}})
        names.add(inp.name)
    used = {t for n in nodes for t in n.input} | {o.name for o in g.output}
    for i, node in enumerate(nodes):
        op, a = node.op_type, _attrs(node)
        ins = [x for x in node.input if x]
        out = node.output[0]
        if op == "Constant":
            continue
        try:
            if op in ("Dropout", "Identity"):
                alias[out] = blob(ins[0])
                continue
            if op == "Pad":
                mode = a.get("mode", b"constant")
                value = float(consts[ins[2]]) if len(ins) > 2 and ins[2] in consts else 0.0
                pad = consts[ins[1]] if len(ins) > 1 else a.get("pads")
                if (mode not in (b"constant", "constant")) or value != 0:
                    raise ValueError("only a constant-zero Pad before a Conv or pooling can be folded")
                pad = [int(v) for v in pad]
                n = len(pad) // 2
                if any(pad[:2]) or any(pad[n:n + 2]):
                    raise ValueError("a Pad of the batch or channel axes cannot be folded")
                pads[out] = (blob(ins[0]), pad[2:n] + pad[n + 2:])
                continue
            name = layer_name(node, f"{op.lower()}{i}")
            layer = {"name": name}
            bottom = ins[0]
            extra_pad = None
            if bottom in pads:
                bottom, extra_pad = pads[bottom]
            bottoms = [blob(bottom)]
            if op in ("Conv", "ConvTranspose"):
                if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                    raise ValueError("auto_pad is not supported; export with explicit pads")
                if op == "ConvTranspose" and any(a.get("output_padding", [])):
                    raise ValueError("output_padding has no Caffe field")
                w = consts[ins[1]]
                block = "convolution_param"
                num_output = w.shape[0] if op == "Conv" else w.shape[1] * a.get("group", 1)
                layer.update(type="Convolution" if op == "Conv" else "Deconvolution", bottom=bottoms, top=[out],
                             **{block: {"num_output": int(num_output), "bias_term": len(ins) > 2}})
                k = w.shape[2:]
                _spatial("kernel", k, layer, block)
                p = _pads(a.get("pads", [0] * 2 * len(k)), op)
                if extra_pad is not None:
                    p = [x + y for x, y in zip(p, _pads(extra_pad, "Pad"))]
                if any(p):
                    _spatial("pad", p, layer, block)
                if any(s != 1 for s in a.get("strides", [])):
                    _spatial("stride", a["strides"], layer, block)
                if any(d != 1 for d in a.get("dilations", [])):
                    layer[block]["dilation"] = [int(d) for d in a["dilations"]]
                if a.get("group", 1) != 1:
                    layer[block]["group"] = int(a["group"])
                weights[f"{name}/0"] = w
                if len(ins) > 2:
                    weights[f"{name}/1"] = consts[ins[2]]
            elif op in ("MaxPool", "AveragePool"):
                p = _pads(a.get("pads", [0] * 2 * len(a["kernel_shape"])), op)
                if extra_pad is not None:
                    p = [x + y for x, y in zip(p, _pads(extra_pad, "Pad"))]
                if op == "AveragePool" and any(p) and not a.get("count_include_pad", 0):
                    raise ValueError("an AveragePool with padding that excludes it from the divisor: Caffe counts "
                                     "the padding")
                layer.update(type="Pooling", bottom=bottoms, top=[out], pooling_param={
                    "pool": "MAX" if op == "MaxPool" else "AVE", "round_mode": "CEIL" if a.get("ceil_mode") else "FLOOR"})
                _spatial("kernel", a["kernel_shape"], layer, "pooling_param")
                if any(p):
                    _spatial("pad", p, layer, "pooling_param")
                _spatial("stride", a.get("strides", [1] * len(a["kernel_shape"])), layer, "pooling_param")
            elif op in ("GlobalAveragePool", "GlobalMaxPool"):
                layer.update(type="Pooling", bottom=bottoms, top=[out], pooling_param={
                    "pool": "AVE" if op == "GlobalAveragePool" else "MAX", "global_pooling": True})
            elif op in ("Gemm", "MatMul"):
                w = consts.get(ins[1])
                if w is None:
                    raise ValueError("the second operand must be a constant (weights)")
                if op == "Gemm" and (a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0)):
                    raise ValueError("alpha, beta and transA must be 1, 1 and 0")
                w = w if (op == "Gemm" and a.get("transB", 0)) else w.T
                bias = consts.get(ins[2]) if op == "Gemm" and len(ins) > 2 else None
                layer.update(type="InnerProduct", bottom=bottoms, top=[out], inner_product_param={
                    "num_output": int(w.shape[0]), "bias_term": bias is not None})
                weights[f"{name}/0"] = np.ascontiguousarray(w)
                if bias is not None:
                    weights[f"{name}/1"] = bias.reshape(-1)
            elif op in ("Add", "Mul") and any(x in consts for x in ins):
                const = consts[ins[1] if ins[1] in consts else ins[0]]
                tensor = blob(ins[0] if ins[1] in consts else ins[1])
                prev = next((l for l in reversed(layers) if out != l["top"][0] and l["top"][0] == tensor), None)
                if op == "Add" and prev is not None and prev["type"] == "InnerProduct" and \
                        not prev["inner_product_param"]["bias_term"] and const.size == prev["inner_product_param"]["num_output"]:
                    prev["inner_product_param"]["bias_term"] = True  # MatMul + Add: one InnerProduct
                    weights[f"{prev['name']}/1"] = const.reshape(-1)
                    alias[out] = tensor
                    names.discard(name)
                    continue
                c = np.asarray(const, np.float32)
                layer.update(type="Scale" if op == "Mul" else "Bias", bottom=[tensor], top=[out])
                block = "scale_param" if op == "Mul" else "bias_param"
                if c.size == 1:
                    layer[block] = {"axis": 0, "num_axes": 0}
                    weights[f"{name}/0"] = c.reshape(())
                else:  # ONNX aligns trailing axes: (C, 1, 1) against (N, C, H, W) applies from axis 1
                    rank = ranks.get(ins[0] if ins[1] in consts else ins[1])
                    if rank is None:
                        raise ValueError("the rank of the tensor is unknown (run onnx shape inference first)")
                    dims = list(c.shape)
                    lead = next(k for k, v in enumerate(dims) if v != 1)
                    core = dims[lead:]
                    while core and core[-1] == 1:
                        core.pop()
                    layer[block] = {"axis": rank - c.ndim + lead, "num_axes": len(core)}
                    weights[f"{name}/0"] = c.reshape(core)
            elif op == "Sub" and ins[0] in consts:  # c - x, c a scalar: Power (shift + scale x)^1
                c = np.asarray(consts[ins[0]])
                if c.size != 1:
                    raise ValueError("a constant minus a tensor needs a scalar constant")
                layer.update(type="Power", bottom=[blob(ins[1])], top=[out],
                             power_param={"power": 1.0, "scale": -1.0, "shift": float(c.ravel()[0])})
            elif op == "Sub":
                layer.update(type="Eltwise", bottom=[blob(x) for x in ins], top=[out],
                             eltwise_param={"operation": "SUM", "coeff": [1.0, -1.0]})
            elif op == "Mul" and len(ins) == 2 and _gate(known, ins) is not None:  # x * s, s (N, C[, 1, 1]): SE
                x_in, s_in = _gate(known, ins)
                gate = blob(s_in)
                if len(known[s_in]) > 2:  # (N, C, 1, 1) -> (N, C)
                    layers.append({"name": layer_name(node, f"{name}_gate"), "type": "Flatten", "bottom": [gate],
                                   "top": [f"{out}_gate"], "flatten_param": {"axis": 1}})
                    gate = f"{out}_gate"
                layer.update(type="Scale", bottom=[blob(x_in), gate], top=[out], scale_param={"axis": 0})
            elif op == "LSTM":
                more, w = _lstm(node, a, known, consts, batch, name, blob, layer_name, used)
                layers.extend(more[:-1])
                weights.update(w)
                layer = more[-1]
            elif op == "Gather":  # one index of a tensor along an axis: Slice it out, Reshape the axis away
                index = consts.get(ins[1])
                shape = known.get(ins[0])
                if index is None or np.asarray(index).ndim != 0 or not shape or not known.get(out) \
                        or None in known[out][1:]:
                    raise ValueError("only one constant index of a tensor of known shape has a Caffe form")
                axis = int(a.get("axis", 0)) % len(shape)
                i = int(index) % shape[axis]
                tops, points = _span(f"{out}__kept", i, i + 1, shape[axis])
                layers.append({"name": layer_name(node, f"{name}_slice"), "type": "Slice", "bottom": bottoms,
                               "top": tops, "slice_param": {"axis": axis, **({"slice_point": points} if points
                                                                             else {})}})
                unused = [t for t in tops if t.endswith("__unused")]
                if unused:
                    layers.append({"name": layer_name(node, f"{name}_unused"), "type": "Silence", "bottom": unused})
                layer.update(type="Reshape", bottom=[f"{out}__kept"], top=[out], reshape_param={
                    "shape": {"dim": [0 if d is None else int(d) for d in known[out]]}})
            elif op == "Transpose":
                perm = a.get("perm")
                if perm is None:  # ONNX's default: the axes reversed
                    if ranks.get(ins[0]) is None:
                        raise ValueError("a Transpose without perm needs the input's rank (run shape inference)")
                    perm = list(range(ranks[ins[0]]))[::-1]
                layer.update(type="Permute", bottom=bottoms, top=[out], permute_param={"order": [int(v) for v in perm]})
            elif op in ("Squeeze", "Unsqueeze"):  # of a tensor (a shape's are folded): Reshape to its inferred shape
                shape = known.get(out)
                if not shape or None in shape[1:]:
                    raise ValueError("the output shape is unknown (run onnx shape inference first)")
                layer.update(type="Reshape", bottom=bottoms, top=[out],
                             reshape_param={"shape": {"dim": [0 if d is None else int(d) for d in shape]}})
            elif op in ("Split", "Slice"):
                shape = known.get(ins[0])
                if not shape:
                    raise ValueError("the input shape is unknown (run onnx shape inference first)")
                tops, points, axis = _cuts(op, a, ins, consts, shape, list(node.output))
                layer.update(type="Slice", bottom=bottoms, top=tops, slice_param={"axis": axis})
                if points:
                    layer["slice_param"]["slice_point"] = points
                unused = [t for t in tops if t.endswith("__unused")]
                if unused:
                    layers.append(layer)
                    layer = {"name": layer_name(node, f"{name}_unused"), "type": "Silence", "bottom": unused}
            elif op == "HardSigmoid":  # max(0, min(1, alpha x + beta)): Power then Clip
                affine = {"power": 1.0, "scale": float(a.get("alpha", 0.2)), "shift": float(a.get("beta", 0.5))}
                layers.append({"name": layer_name(node, f"{name}_affine"), "type": "Power", "bottom": bottoms,
                               "top": [f"{out}_affine"], "power_param": affine})
                layer.update(type="Clip", bottom=[f"{out}_affine"], top=[out], clip_param={"min": 0.0, "max": 1.0})
            elif op in ("Add", "Mul", "Sum", "Max"):
                layer.update(type="Eltwise", bottom=[blob(x) for x in ins], top=[out],
                             eltwise_param={"operation": {"Add": "SUM", "Sum": "SUM", "Mul": "PROD"}.get(op, "MAX")})
            elif op == "BatchNormalization":
                gamma, beta, mean, var = (consts[x] for x in ins[1:5])
                layer.update(type="BatchNorm", bottom=bottoms, top=[out], batch_norm_param={
                    "use_global_stats": True, "eps": float(a.get("epsilon", 1e-5))})
                weights[f"{name}/0"], weights[f"{name}/1"], weights[f"{name}/2"] = mean, var, np.ones(1, np.float32)
                scale = layer_name(node, f"{name}_scale")
                layers.append(layer)
                layer = {"name": scale, "type": "Scale", "bottom": [out], "top": [out],
                         "scale_param": {"bias_term": True}}
                weights[f"{scale}/0"], weights[f"{scale}/1"] = gamma, beta
            elif op in ("Relu", "LeakyRelu"):
                layer.update(type="ReLU", bottom=bottoms, top=[out])
                if op == "LeakyRelu":
                    layer["relu_param"] = {"negative_slope": float(a.get("alpha", 0.01))}
            elif op == "PRelu":
                slope = consts[ins[1]].reshape(-1)
                layer.update(type="PReLU", bottom=bottoms, top=[out], prelu_param={"channel_shared": slope.size == 1})
                weights[f"{name}/0"] = slope
            elif op in ELEMENTWISE:
                if op == "Gelu" and a.get("approximate", b"none") not in (b"none", "none"):
                    raise ValueError("Gelu's tanh approximation has no layer (GELU is the erf form); export with "
                                     "approximate='none'")
                layer.update(type=ELEMENTWISE[op], bottom=bottoms, top=[out])
                if op == "Elu":
                    layer["elu_param"] = {"alpha": float(a.get("alpha", 1.0))}
            elif op == "GroupNorm":
                layer.update(type="GroupNorm", bottom=bottoms, top=[out], group_norm_param={
                    "num_groups": int(a["num_groups"]), "eps": float(a.get("epsilon", 1e-5)), "affine": False})
            elif op == "ReduceMean":  # over the spatial axes of (N, C, H, W): global AVE pooling
                axes = a.get("axes", consts[ins[1]] if len(ins) > 1 else None)
                rank = ranks.get(ins[0])
                if axes is None or rank != 4 or sorted(int(v) % 4 for v in axes) != [2, 3]:
                    raise ValueError("only a mean over the two spatial axes of an (N, C, H, W) tensor (global "
                                     "average pooling) has a Caffe layer")
                keep = a.get("keepdims", 1)
                layer.update(type="Pooling", bottom=bottoms, top=[out if keep else f"{out}_pooled"],
                             pooling_param={"pool": "AVE", "global_pooling": True})
                if not keep:
                    layers.append(layer)
                    layer = {"name": layer_name(node, f"{name}_flat"), "type": "Flatten", "bottom": [f"{out}_pooled"],
                             "top": [out], "flatten_param": {"axis": 1}}
            elif op == "LayerNormalization":
                shape = known.get(ins[0])
                if not shape:
                    raise ValueError("the shape of the input is unknown (run onnx shape inference first)")
                axis = int(a.get("axis", -1)) % len(shape)
                norm = shape[axis:]
                if None in norm:
                    raise ValueError("the normalized axes must have fixed sizes")
                if a.get("stash_type", 1) != 1:
                    raise ValueError("only float32 statistics (stash_type 1)")
                gamma = np.broadcast_to(consts[ins[1]], norm)
                beta = np.broadcast_to(consts[ins[2]], norm) if len(ins) > 2 else np.zeros(norm, np.float32)
                layer.update(type="LayerNorm", bottom=bottoms, top=[out],
                             layer_norm_param={"axis": axis, "eps": float(a.get("epsilon", 1e-5))})
                weights[f"{name}/0"], weights[f"{name}/1"] = np.ascontiguousarray(gamma), np.ascontiguousarray(beta)
            elif op == "Softmax":
                layer.update(type="Softmax", bottom=bottoms, top=[out], softmax_param={"axis": int(a.get("axis", -1))})
            elif op == "Concat":
                layer.update(type="Concat", bottom=[blob(x) for x in ins], top=[out],
                             concat_param={"axis": int(a["axis"])})
            elif op == "Flatten":
                layer.update(type="Flatten", bottom=bottoms, top=[out], flatten_param={"axis": int(a.get("axis", 1))})
            elif op == "Reshape":
                shape = consts.get(ins[1])
                if shape is None:
                    raise ValueError("the shape must be a constant")
                layer.update(type="Reshape", bottom=bottoms, top=[out],
                             reshape_param={"shape": {"dim": [int(v) for v in shape]}})
            elif op == "Clip":
                lo = float(consts[ins[1]]) if len(ins) > 1 else float(a.get("min", -3.4e38))
                hi = float(consts[ins[2]]) if len(ins) > 2 else float(a.get("max", 3.4e38))
                layer.update(type="Clip", bottom=bottoms, top=[out], clip_param={"min": lo, "max": hi})
        except (ValueError, KeyError) as e:
            raise UserError(f"{path}: error: node {i} ({op} '{node.name or out}'): {e}") from None
        layers.append(layer)
    # the graph's outputs keep their ONNX names: an Identity/Dropout that ended the graph becomes a real top
    doc = {"name": g.name or os.path.splitext(os.path.basename(path))[0], "layer": layers}
    for o in g.output:
        if blob(o.name) != o.name:
            for layer in layers:
                layer["top"] = [o.name if t == blob(o.name) else t for t in layer["top"]]
                layer["bottom"] = [o.name if b_ == blob(o.name) else b_ for b_ in layer.get("bottom", [])]
    return doc, {k: np.asarray(v, np.float32) for k, v in weights.items()}


def write(path: str, output: str, batch: int = 1, out=print) -> list[str]:
    """Write the net's YAML to `output` and its weights beside it (<output stem>.weights.npz)."""
    from .convert import to_yaml
    from solvers.snapshot import save_npz
    doc, weights = import_onnx(path, batch)
    with open(output, "w", encoding="utf-8") as f:
        f.write(to_yaml(doc, path).replace("by run.py convert", "by run.py import"))
    wpath = os.path.splitext(output)[0] + ".weights.npz"
    save_npz(wpath, weights)
    out(f"Wrote {output} ({len(doc['layer'])} layers) and {wpath} ({len(weights)} arrays)")
    return [output, wpath]
