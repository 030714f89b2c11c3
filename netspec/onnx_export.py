"""`run.py export`: a trained net's TEST phase as an ONNX model (opset 17) for ONNX Runtime, TensorRT, OpenVINO.

The graph starts at the net's inputs: the tops of Input and data layers that exported layers read (the data layers
themselves and labels are left out, as are losses, Accuracy and Silence); Split tops are their bottom. Recurrent
layers are unrolled over their T steps (Caffe's cont resets a sequence mid-way, which ONNX's LSTM cannot), their
sequence inputs (T, N, ...) with the batch symbolic on the second axis. Each layer maps to
standard ONNX ops with its weights as initializers; a layer without a mapping is a clear error naming it.
The batch axis is symbolic ("N") unless a fixed batch is asked for. Needs the `onnx` package (extra `onnx`).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import UserError

OPSET = 17
SKIPPED = {"Accuracy", "Silence", "HDF5Output"}


class _Graph:
    """Nodes, initializers and the current ONNX name of each blob (in-place layers give a blob new versions)."""

    def __init__(self, onnx, helper, net):
        self.onnx, self.helper, self.net = onnx, helper, net
        self.nodes, self.inits, self.names, self.count = [], [], {}, 0

    def fresh(self, base):
        self.count += 1
        return f"{base}__{self.count}"

    def const(self, base, array, dtype=np.float32):
        name = self.fresh(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def node(self, op, inputs, base, **attrs):
        out = self.fresh(base)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], **attrs))
        return out


def _pads(values):
    return list(values) + list(values)


def _broadcast(g, array, ndim, axis, base):
    """A parameter array shaped to broadcast against a blob of ndim axes from `axis` on."""
    a = np.asarray(array, np.float32)
    return g.const(base, a.reshape(a.shape + (1,) * (ndim - axis - a.ndim)))


def _emit(g, d, layer, x, shapes):
    """ONNX names of layer d's tops, from the ONNX names x of its bottoms."""
    t, p, b = d.type, layer.p, [blob.data for blob in layer.blobs]
    name = d.name
    in_shape = shapes[d.bottoms[0]] if d.bottoms else ()
    if t in ("Convolution", "Deconvolution"):
        if len(x) != 1 or layer.axis != 1:
            raise ValueError("only one bottom with the channels on axis 1 maps to Conv")
        inputs = [x[0], g.const(f"{name}_w", b[0])] + ([g.const(f"{name}_b", b[1])] if p.bias_term else [])
        op = "Conv" if t == "Convolution" else "ConvTranspose"
        return [g.node(op, inputs, name, kernel_shape=list(layer.kernel_nd), pads=_pads(layer.pad_nd),
                       strides=list(layer.stride_nd), dilations=list(layer.dilation_nd), group=p.group)]
    if t == "Pooling":
        if p.global_pooling:
            return [g.node("GlobalMaxPool" if p.pool == "MAX" else "GlobalAveragePool", x[:1], name)]
        (kh, kw), (ph, pw), (sh, sw) = layer.kernel, layer.pad, layer.stride
        attrs = dict(kernel_shape=[kh, kw], pads=[ph, pw, ph, pw], strides=[sh, sw], ceil_mode=int(p.round_mode == "CEIL"))
        if p.pool == "MAX":
            return [g.node("MaxPool", x[:1], name, **attrs)]
        if p.pool == "AVE":  # ONNX Runtime clips a ceil-mode window at the padded edge for the divisor, as Caffe
            return [g.node("AveragePool", x[:1], name, count_include_pad=1, **attrs)]
        raise ValueError("STOCHASTIC pooling has no ONNX op")
    if t == "InnerProduct":
        axis = layer.axis if hasattr(layer, "axis") else 1
        w = b[0] if getattr(p, "transpose", False) else b[0].T
        if axis == 1:
            flat = g.node("Flatten", x, f"{name}_flat", axis=1)
            out = g.node("MatMul", [flat, g.const(f"{name}_w", w)], name)
        else:
            lead = [0] * axis + [-1]
            flat = g.node("Reshape", [x[0], g.const(f"{name}_shape", lead, np.int64)], f"{name}_flat")
            out = g.node("MatMul", [flat, g.const(f"{name}_w", w)], name)
        if p.bias_term:
            out = g.node("Add", [out, g.const(f"{name}_b", b[1])], name)
        return [out]
    if t == "ReLU":
        if p.negative_slope:
            return [g.node("LeakyRelu", x, name, alpha=float(p.negative_slope))]
        return [g.node("Relu", x, name)]
    if t == "PReLU":
        slope = b[0].reshape(-1, *([1] * (len(in_shape) - 2))) if b[0].size > 1 else b[0].reshape(1)
        return [g.node("PRelu", [x[0], g.const(f"{name}_slope", slope)], name)]
    if t == "ELU":
        return [g.node("Elu", x, name, alpha=float(p.alpha))]
    simple = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}
    if t in simple:
        return [g.node(simple[t], x, name)]
    if t == "Dropout":
        if getattr(p, "scale_train", True) is False:
            return [g.node("Mul", [x[0], g.const(f"{name}_keep", 1 - p.dropout_ratio)], name)]
        return [g.node("Identity", x, name)]
    if t in ("Power", "Exp", "Log"):
        y = x[0]
        if p.scale != 1:
            y = g.node("Mul", [y, g.const(f"{name}_scale", p.scale)], name)
        if p.shift != 0:
            y = g.node("Add", [y, g.const(f"{name}_shift", p.shift)], name)
        if t == "Power":
            return [g.node("Pow", [y, g.const(f"{name}_power", p.power)], name) if p.power != 1 else
                    g.node("Identity", [y], name)]
        ln_base = 1.0 if p.base == -1 else math.log(p.base)
        if t == "Exp":
            if ln_base != 1.0:
                y = g.node("Mul", [y, g.const(f"{name}_lnbase", ln_base)], name)
            return [g.node("Exp", [y], name)]
        y = g.node("Log", [y], name)
        return [g.node("Div", [y, g.const(f"{name}_lnbase", ln_base)], name) if ln_base != 1.0 else y]
    if t == "Threshold":
        gt = g.node("Greater", [x[0], g.const(f"{name}_t", p.threshold)], f"{name}_gt")
        return [g.node("Cast", [gt], name, to=g.onnx.TensorProto.FLOAT)]
    if t == "Clip":
        return [g.node("Clip", [x[0], g.const(f"{name}_min", p.min), g.const(f"{name}_max", p.max)], name)]
    if t in ("Swish", "SiLU"):
        beta = getattr(p, "beta", 1.0) if p is not None else 1.0
        z = g.node("Mul", [x[0], g.const(f"{name}_beta", beta)], name) if beta != 1 else x[0]
        return [g.node("Mul", [x[0], g.node("Sigmoid", [z], name)], name)]
    if t == "GELU":  # opset 17 has no Gelu: x * (1 + erf(x / sqrt 2)) / 2
        erf = g.node("Erf", [g.node("Mul", [x[0], g.const(f"{name}_rsqrt2", 1 / math.sqrt(2))], name)], name)
        half = g.node("Mul", [g.node("Add", [erf, g.const(f"{name}_one", 1.0)], name), g.const(f"{name}_half", 0.5)],
                      name)
        return [g.node("Mul", [x[0], half], name)]
    if t == "Mish":
        return [g.node("Mul", [x[0], g.node("Tanh", [g.node("Softplus", x[:1], name)], name)], name)]
    if t == "HardSwish":  # ONNX's: x * max(0, min(1, x / 6 + 1 / 2))
        return [g.node("HardSwish", x[:1], name)]
    if t == "DropPath":  # TEST: the branch as it is
        return [g.node("Identity", x[:1], name)]
    if t == "LayerNorm":
        norm_shape = tuple(in_shape[layer.p.axis % len(in_shape):])
        gamma, beta = (b[0], b[1]) if p.affine else (np.ones(norm_shape), np.zeros(norm_shape))
        return [g.node("LayerNormalization", [x[0], g.const(f"{name}_gamma", gamma), g.const(f"{name}_beta", beta)],
                       name, axis=int(p.axis % len(in_shape)), epsilon=float(p.eps))]
    if t == "GroupNorm":  # (N, G, C/G * inner) normalized per row by InstanceNormalization, then per channel
        groups, c = p.num_groups, in_shape[1]
        rows = g.node("Reshape", [x[0], g.const(f"{name}_groups", [0, groups, -1], np.int64)], name)
        rows = g.node("InstanceNormalization", [rows, g.const(f"{name}_ones", np.ones(groups)),
                                                g.const(f"{name}_zeros", np.zeros(groups))], name, epsilon=float(p.eps))
        y = g.node("Reshape", [rows, g.const(f"{name}_shape", [0] + list(in_shape[1:]), np.int64)], name)
        if p.affine:
            y = g.node("Mul", [y, _broadcast(g, b[0], len(in_shape), 1, f"{name}_gamma")], name)
            y = g.node("Add", [y, _broadcast(g, b[1], len(in_shape), 1, f"{name}_beta")], name)
        return [y]
    if t == "BatchNorm":
        factor = float(b[2].ravel()[0])
        factor = 0.0 if factor == 0 else 1.0 / factor
        c = b[0].size
        return [g.node("BatchNormalization", [x[0], g.const(f"{name}_gamma", np.ones(c)),
                                              g.const(f"{name}_beta", np.zeros(c)),
                                              g.const(f"{name}_mean", b[0] * factor),
                                              g.const(f"{name}_var", b[1] * factor)], name, epsilon=float(p.eps))]
    if t in ("Scale", "Bias"):
        if len(x) != 1:
            raise ValueError("the two-bottom form (the factor from a blob) is not mapped")
        axis = layer.p.axis % len(in_shape)
        y = x[0]
        if t == "Scale":
            y = g.node("Mul", [y, _broadcast(g, b[0], len(in_shape), axis, f"{name}_scale")], name)
            if p.bias_term:
                y = g.node("Add", [y, _broadcast(g, b[1], len(in_shape), axis, f"{name}_bias")], name)
        else:
            y = g.node("Add", [y, _broadcast(g, b[0], len(in_shape), axis, f"{name}_bias")], name)
        return [y]
    if t == "LRN":
        if p.norm_region != "ACROSS_CHANNELS":  # Caffe's own graph: x * (1 + alpha * AVE pool of x^2)^-beta
            n, pad = p.local_size, (p.local_size - 1) // 2
            mean = g.node("AveragePool", [g.node("Mul", [x[0], x[0]], name)], name, kernel_shape=[n, n],
                          pads=[pad] * 4, strides=[1, 1], count_include_pad=1)
            scale = g.node("Add", [g.node("Mul", [mean, g.const(f"{name}_alpha", p.alpha)], name),
                                   g.const(f"{name}_one", 1.0)], name)
            return [g.node("Mul", [x[0], g.node("Pow", [scale, g.const(f"{name}_beta", -p.beta)], name)], name)]
        return [g.node("LRN", x, name, size=p.local_size, alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k))]
    if t == "Softmax":
        return [g.node("Softmax", x, name, axis=layer.p.axis)]
    if t == "Concat":
        return [g.node("Concat", x, name, axis=layer.axis)]
    if t == "Slice":
        sizes = [shapes[top][layer.axis] for top in d.tops]
        outs = [g.fresh(f"{name}_{i}") for i in range(len(sizes))]
        g.nodes.append(g.helper.make_node("Split", [x[0], g.const(f"{name}_split", sizes, np.int64)], outs,
                                          axis=layer.axis))
        return outs
    if t == "Reshape" and g.dynamic and p.axis == 0 and p.num_axes == -1 and p.shape:
        dims = list((p.shape or {}).get("dim", []))  # Caffe's 0 (copy) and -1 (infer) are ONNX Reshape's
        if dims:
            return [g.node("Reshape", [x[0], g.const(f"{name}_shape", dims, np.int64)], name)]
    if t in ("Flatten", "Reshape"):
        target = list(shapes[d.tops[0]])
        if g.dynamic and target and in_shape and target[0] == in_shape[0]:
            target[0] = 0  # copy the (symbolic) batch
        return [g.node("Reshape", [x[0], g.const(f"{name}_shape", target, np.int64)], name)]
    if t == "Eltwise":
        if p.operation == "PROD":
            y = x[0]
            for other in x[1:]:
                y = g.node("Mul", [y, other], name)
            return [y]
        if p.operation == "MAX":
            return [g.node("Max", x, name)]
        coeffs = list(p.coeff) or [1.0] * len(x)
        terms = [xi if c == 1 else g.node("Mul", [xi, g.const(f"{name}_c", c)], name) for xi, c in zip(x, coeffs)]
        return [g.node("Sum", terms, name)]
    if t == "Tile":
        reps = [1] * len(in_shape)
        reps[layer.axis] = p.tiles
        return [g.node("Tile", [x[0], g.const(f"{name}_reps", reps, np.int64)], name)]
    if t == "Crop":
        a, out_shape = layer.axis, shapes[d.tops[0]]
        off = list(p.offset or [0])
        off = off * (len(in_shape) - a) if len(off) == 1 else off
        axes = list(range(a, len(in_shape)))
        ends = [o + out_shape[k] for o, k in zip(off, axes)]
        return [g.node("Slice", [x[0], g.const(f"{name}_starts", off, np.int64), g.const(f"{name}_ends", ends, np.int64),
                                 g.const(f"{name}_axes", axes, np.int64)], name)]
    if t == "Reduction":
        a = p.axis % len(in_shape) if in_shape else 0
        axes = g.const(f"{name}_axes", list(range(a, len(in_shape))), np.int64)
        op = {"SUM": "ReduceSum", "ASUM": "ReduceL1", "SUMSQ": "ReduceSumSquare", "MEAN": "ReduceMean"}[p.operation]
        if op == "ReduceSum":
            y = g.node(op, [x[0], axes], name, keepdims=0)
        else:  # opset 17: the axes of these are an attribute
            y = g.node(op, [x[0]], name, axes=list(range(a, len(in_shape))), keepdims=0)
        return [g.node("Mul", [y, g.const(f"{name}_coeff", p.coeff)], name) if p.coeff != 1 else y]
    if t == "MVN":
        axes = list(range(1 if p.across_channels else 2, len(in_shape)))
        mean = g.node("ReduceMean", x, f"{name}_mean", axes=axes, keepdims=1)
        y = g.node("Sub", [x[0], mean], name)
        if p.normalize_variance:
            var = g.node("ReduceMean", [g.node("Mul", [y, y], f"{name}_sq")], f"{name}_var", axes=axes, keepdims=1)
            std = g.node("Add", [g.node("Sqrt", [var], f"{name}_std"), g.const(f"{name}_eps", p.eps)], name)
            y = g.node("Div", [y, std], name)
        return [y]
    if t == "Embed":
        ids = g.node("Cast", x, f"{name}_ids", to=g.onnx.TensorProto.INT64)
        y = g.node("Gather", [g.const(f"{name}_w", b[0]), ids], name, axis=0)
        if p.bias_term:
            y = g.node("Add", [y, g.const(f"{name}_b", b[1])], name)
        return [y]
    if t == "ArgMax":
        if p.top_k != 1 or p.out_max_val or p.axis is None:
            raise ValueError("only top_k 1 along a given axis, without out_max_val, maps to ArgMax")
        y = g.node("ArgMax", x, f"{name}_i", axis=int(p.axis), keepdims=1)
        return [g.node("Cast", [y], name, to=g.onnx.TensorProto.FLOAT)]
    if t == "Permute":
        return [g.node("Transpose", x, name, perm=list(layer.axes))]
    if t == "Maxout":  # (N, C*k, ...) -> the max over each k consecutive channels
        c = in_shape[1] // p.num_pieces
        y = g.node("Reshape", [x[0], g.const(f"{name}_groups", [0, c, p.num_pieces, -1], np.int64)], name)
        y = g.node("ReduceMax", [y], name, axes=[2], keepdims=0)
        return [g.node("Reshape", [y, g.const(f"{name}_shape", [0, c] + list(in_shape[2:]), np.int64)], name)]
    if t in ("LSTM", "RNN"):
        return _recurrent(g, d, layer, x, in_shape)
    if t == "LSTMUnit":
        h_dim = layer.H
        zero = g.const(f"{name}_0", [0], np.int64)
        c_prev, gates, cont = (g.node("Squeeze", [v, zero], name) for v in x)
        c, h = _lstm_step(g, name, gates, g.node("Unsqueeze", [cont, g.const(f"{name}_1", [1], np.int64)], name),
                          c_prev, h_dim)
        return [g.node("Unsqueeze", [v, zero], name) for v in (c, h)]
    raise ValueError("no ONNX mapping")


def _lstm_step(g, name, a, keep, c_prev, h_dim):
    """One LSTM step from the pre-activations a (N, 4H) (gates i, f, o, g), keep = cont_t (N, 1) and c_prev (None:
    zeros) -> (c, h), each (N, H); Caffe's f = cont * sigmoid."""
    parts = [g.node("Slice", [a, g.const(f"{name}_s", [k * h_dim], np.int64), g.const(f"{name}_e", [(k + 1) * h_dim],
                                                                                        np.int64),
                              g.const(f"{name}_ax", [1], np.int64)], name) for k in range(4)]
    i, f, o = (g.node("Sigmoid", [v], name) for v in parts[:3])
    gg = g.node("Tanh", [parts[3]], name)
    c = g.node("Mul", [i, gg], name)
    if c_prev is not None:
        c = g.node("Add", [g.node("Mul", [g.node("Mul", [f, keep], name), c_prev], name), c], name)
    return c, g.node("Mul", [o, g.node("Tanh", [c], name)], name)


def _recurrent(g, d, layer, x, in_shape):
    """Caffe's LSTM and RNN unrolled over their T steps (ONNX's LSTM op has no reset in the middle of a sequence,
    which cont gives): the input products of all steps as one MatMul, then each step's few ops."""
    name, b = d.name, [blob.data for blob in layer.blobs]
    t_len, h_dim, lstm = layer.T, layer.H, d.type == "LSTM"
    i64 = lambda v: g.const(f"{name}_i", v, np.int64)  # noqa: E731
    xs = g.node("Reshape", [x[0], i64([0, 0, -1])], name)                       # (T, N, I)
    gx = g.node("Add", [g.node("MatMul", [xs, g.const(f"{name}_wx", b[0].T)], name), g.const(f"{name}_b", b[1])],
                name)                                                              # (T, N, gates*H)
    if layer.static:
        st = g.node("Reshape", [x[2], i64([0, -1])], name)
        gx = g.node("Add", [gx, g.node("MatMul", [st, g.const(f"{name}_ws", b[2].T)], name)], name)
    w_h = g.const(f"{name}_wh", layer.w_h.data.T)
    cont = g.node("Unsqueeze", [x[1], i64([2])], name)                             # (T, N, 1)
    states = [g.node("Squeeze", [v, i64([0])], name) for v in x[2 + layer.static:]]
    h = states[0] if states else None
    c = states[1] if len(states) > 1 else None
    hs = []
    for step in range(t_len):
        at = i64(step)
        a = g.node("Gather", [gx, at], name, axis=0)                              # (N, gates*H)
        keep = g.node("Gather", [cont, at], name, axis=0)                         # (N, 1)
        if h is not None:  # cont_t * h_{t-1}; with no initial state the first step's is zero
            a = g.node("Add", [a, g.node("MatMul", [g.node("Mul", [h, keep], name), w_h], name)], name)
        if lstm:
            c, h = _lstm_step(g, name, a, keep, c, h_dim)
        else:
            h = g.node("Tanh", [a], name)
        hs.append(g.node("Unsqueeze", [h, i64([0])], name))
    y = g.node("Concat", hs, name, axis=0)                                         # (T, N, H)
    if not lstm:  # o_t = tanh(W_ho h_t + b_o)
        y = g.node("Tanh", [g.node("Add", [g.node("MatMul", [y, g.const(f"{name}_wo", b[-2].T)], name),
                                           g.const(f"{name}_bo", b[-1])], name)], name)
    tops = [y]
    if len(d.tops) > 1:
        tops += [g.node("Unsqueeze", [v, i64([0])], name) for v in ([h, c] if lstm else [h])]
    return tops


def _batch_axis(net, top):
    """An output's batch axis: 1 where it is a recurrent layer's sequence (T, N, H) or its state (1, N, H)."""
    d = next(d for d in net.defs if top in d.tops)
    if getattr(net.layer_by_name(d.name), "time_major_bottoms", None):
        return 1
    batch, shape = net.source_batch_axes()[0], net.shapes[top]
    return 1 if len(shape) > 1 and shape[0] != batch and shape[1] == batch else 0


def export(net, path: str, batch=None, out=print) -> dict:
    """Write `net` (a TEST-phase Net) as ONNX to `path`; batch None: symbolic. Returns {"inputs", "outputs"}."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise UserError("export needs the onnx package: pip install 'yaffe[onnx]' (or pip install onnx)") from None
    g = _Graph(onnx, helper, net)
    g.dynamic = batch is None
    used = set()
    sources, produced, consumed, alias = [], set(), set(), {}
    _, axes = net.source_batch_axes()
    for d, layer in zip(net.defs, net.layers):
        if layer.is_source:  # its tops that exported layers read are the graph's inputs (labels are not)
            for top in d.tops:
                g.names[top] = top
                sources.append(top)
            continue
        if layer.is_loss or d.type in SKIPPED:
            if d.type == "Silence":  # what it silences is no output
                consumed.update(alias.get(b, b) for b in d.bottoms)
            continue
        if d.type == "Split":
            if d.bottoms[0] in g.names:  # not a label's
                for t in d.tops:
                    g.names[t] = g.names[d.bottoms[0]]
                    alias[t] = alias.get(d.bottoms[0], d.bottoms[0])
            continue
        missing = [b for b in d.bottoms if b not in g.names]
        if missing:  # fed by a skipped layer (a label): leave it out too
            continue
        try:
            tops = _emit(g, d, layer, [g.names[b] for b in d.bottoms], net.shapes)
        except (ValueError, AttributeError) as e:
            w = d.where()
            raise UserError(f"{w[0]}:{w[1]}:{w[2]}: error: layer '{d.name}' ({d.type}) cannot be exported to ONNX: "
                            f"{e}; leave it out of the deploy net or replace it") from None
        consumed.update(alias.get(b, b) for b in d.bottoms if not (b in d.tops))
        used.update(alias.get(b, b) for b in d.bottoms)
        for t, name in zip(d.tops, tops):
            g.names[t] = name
            produced.add(t)
    inputs = [t for t in sources if t in used] or sources[:1]
    outputs = [t for t in dict.fromkeys(t for d in net.defs for t in d.tops) if t in produced and t not in consumed]
    outputs = [t for t in outputs if g.names[t] not in {g.names[i] for i in inputs}]
    if not outputs:
        raise UserError("the net has no output to export (only data, loss and metric layers)")
    def dims(t, axis=0):  # the batch axis symbolic: a sequence's (T, N, ...) is its second
        shape = list(net.shapes[t])
        shape[axis] = batch or "N"
        return shape

    graph_inputs = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, dims(t, axes[t])) for t in inputs]
    graph_outputs = []
    for t in outputs:
        g.nodes.append(helper.make_node("Identity", [g.names[t]], [t]))
        graph_outputs.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, dims(t, _batch_axis(net, t))))
    model = helper.make_model(helper.make_graph(g.nodes, net.name or "yaffe", graph_inputs, graph_outputs, g.inits),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yaffe")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    out(f"Wrote {path}: inputs {', '.join(inputs)}; outputs {', '.join(outputs)}; {len(g.nodes)} nodes, opset {OPSET}")
    return {"inputs": inputs, "outputs": outputs}
