"""`run.py export`: a trained net's TEST phase as an ONNX model (opset 17) for ONNX Runtime, TensorRT, OpenVINO.

The graph starts at the net's inputs: an Input layer's tops, or a data layer's first top (the data layer and its
labels are left out, as are losses, Accuracy and Silence); Split tops are their bottom. Each layer maps to
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
    if t == "Swish":
        z = g.node("Mul", [x[0], g.const(f"{name}_beta", p.beta)], name) if p.beta != 1 else x[0]
        return [g.node("Mul", [x[0], g.node("Sigmoid", [z], name)], name)]
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
        if p.norm_region != "ACROSS_CHANNELS":
            raise ValueError("norm_region WITHIN_CHANNEL has no ONNX op")
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
    raise ValueError("no ONNX mapping")


def export(net, path: str, batch=None, out=print) -> dict:
    """Write `net` (a TEST-phase Net) as ONNX to `path`; batch None: symbolic. Returns {"inputs", "outputs"}."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise UserError("export needs the onnx package: pip install 'yaffe[onnx]' (or pip install onnx)") from None
    g = _Graph(onnx, helper, net)
    g.dynamic = batch is None
    inputs, produced, consumed, alias = [], set(), set(), {}
    for d, layer in zip(net.defs, net.layers):
        if layer.is_source:
            top = d.tops[0]
            g.names[top] = top
            inputs.append(top)
            continue
        if layer.is_loss or d.type in SKIPPED:
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
        for t, name in zip(d.tops, tops):
            g.names[t] = name
            produced.add(t)
    outputs = [t for t in dict.fromkeys(t for d in net.defs for t in d.tops) if t in produced and t not in consumed]
    outputs = [t for t in outputs if g.names[t] not in {g.names[i] for i in inputs}]
    if not outputs:
        raise UserError("the net has no output to export (only data, loss and metric layers)")
    dims = lambda shape: [batch or "N"] + list(shape[1:])  # noqa: E731
    graph_inputs = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, dims(net.shapes[t])) for t in inputs]
    graph_outputs = []
    for t in outputs:
        g.nodes.append(helper.make_node("Identity", [g.names[t]], [t]))
        graph_outputs.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, dims(net.shapes[t])))
    model = helper.make_model(helper.make_graph(g.nodes, net.name or "yaffe", graph_inputs, graph_outputs, g.inits),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yaffe")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    out(f"Wrote {path}: inputs {', '.join(inputs)}; outputs {', '.join(outputs)}; {len(g.nodes)} nodes, opset {OPSET}")
    return {"inputs": inputs, "outputs": outputs}
