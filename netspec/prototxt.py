"""Caffe's protobuf text format (.prototxt), read without a compiled caffe.proto, into the same
structure the YAML loader gives (`Node`/`NodeList` with the line and column of every value).

Handles comments, repeated fields (given several times, or as `[a, b]`), enums (`pool: MAX`), nested messages
with and without `:` (and `<...>`), adjacent string literals and escapes. Caffe's upgrades run on load, each
with a warning: V0 `layers { layer { type: "conv" kernelsize: 5 } }` (padding layers folded in), V1 `layers {
type: CONVOLUTION }` with `blobs_lr`/`weight_decay`, and `solver_type`. Fields that
mean nothing on a CPU (`solver_mode`, `device_id`, `engine`, ...) are dropped with an info line.
"""
from __future__ import annotations

import re

from .errors import Finding, SpecError, UserError
from .graph import as_list
from .loader import Node, NodeList, Where

# A field given once is a scalar, several times a list: yaffe's schema accepts both wherever caffe.proto has a
# repeated field. Only the layer lists must be lists whatever their length.
REPEATED = {"layer", "layers"}
CPU_ONLY_IGNORED = {"solver_mode", "device_id", "engine", "layer_wise_reduce", "prefetch", "force_nd_im2col"}

V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold"}
V0_TYPES = {  # Caffe's UpgradeV0LayerType: V0 names to V1's enum
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA"}
_DATA = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
         "window_data": "window_data_param"}
_WEIGHTS = {"conv": "convolution_param", "innerproduct": "inner_product_param"}
_WINDOW = {"window_data": "window_data_param"}
# Caffe's UpgradeV0LayerParameter: V0 field -> ({V0 type: V1 block}, field there); block "*" is transform_param
# for every type. A field given for a type not listed is an error, as Caffe's "Unknown parameter".
V0_FIELDS = {
    "num_output": (_WEIGHTS, "num_output"), "biasterm": (_WEIGHTS, "bias_term"),
    "weight_filler": (_WEIGHTS, "weight_filler"), "bias_filler": (_WEIGHTS, "bias_filler"),
    "pad": ({"conv": "convolution_param", "pool": "pooling_param"}, "pad"),
    "kernelsize": ({"conv": "convolution_param", "pool": "pooling_param"}, "kernel_size"),
    "stride": ({"conv": "convolution_param", "pool": "pooling_param"}, "stride"),
    "group": ({"conv": "convolution_param"}, "group"), "pool": ({"pool": "pooling_param"}, "pool"),
    "dropout_ratio": ({"dropout": "dropout_param"}, "dropout_ratio"),
    "local_size": ({"lrn": "lrn_param"}, "local_size"), "alpha": ({"lrn": "lrn_param"}, "alpha"),
    "beta": ({"lrn": "lrn_param"}, "beta"), "k": ({"lrn": "lrn_param"}, "k"),
    "source": (dict(_DATA, infogain_loss="infogain_loss_param"), "source"),
    "batchsize": (_DATA, "batch_size"),
    "rand_skip": ({"data": "data_param", "images": "image_data_param"}, "rand_skip"),
    "shuffle_images": ({"images": "image_data_param"}, "shuffle"),
    "new_height": ({"images": "image_data_param"}, "new_height"),
    "new_width": ({"images": "image_data_param"}, "new_width"),
    "concat_dim": ({"concat": "concat_param"}, "concat_dim"),
    "det_fg_threshold": (_WINDOW, "fg_threshold"), "det_bg_threshold": (_WINDOW, "bg_threshold"),
    "det_fg_fraction": (_WINDOW, "fg_fraction"), "det_context_pad": (_WINDOW, "context_pad"),
    "det_crop_mode": (_WINDOW, "crop_mode"),
    "scale": ("*", "scale"), "meanfile": ("*", "mean_file"), "cropsize": ("*", "crop_size"), "mirror": ("*", "mirror"),
}
SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                "ADADELTA": "AdaDelta", "ADAM": "Adam"}
TRANSFORM_KEYS = ("scale", "mean_file", "crop_size", "mirror")

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\f\v]+) | (?P<nl>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)[fF]?(?![A-Za-z_]))
  | (?P<ident>[-+]?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[:{}<>\[\],;])
""", re.X)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(chr(int(m.group(), 8)))
            i += 1 + len(m.group())
        elif nxt == "x":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if m is None:
                raise ValueError(f"\\x needs one or two hex digits; received {body[i:i + 4]!r}")
            out.append(chr(int(m.group(), 16)))
            i += 2 + len(m.group())
        else:
            out.append(nxt)
            i += 2
    return "".join(out)


class _Parser:
    def __init__(self, text: str, path: str):
        self.path, self.tokens = path, []
        line, col, pos = 1, 1, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                self._fail(line, col, f"unexpected character {text[pos]!r}")
            kind, value = m.lastgroup, m.group()
            if kind == "nl":
                line, col = line + 1, 1
            else:
                if kind not in ("ws", "comment"):
                    self.tokens.append((kind, value, line, col))
                col += len(value)
            pos = m.end()
        self.i = 0

    def _fail(self, line, col, message):
        raise SpecError([Finding(self.path, line, col, "error", f"malformed prototxt: {message}")])

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else ("eof", "", *self._end())

    def _end(self):
        return (self.tokens[-1][2], self.tokens[-1][3] + len(self.tokens[-1][1])) if self.tokens else (1, 1)

    def take(self, want=None):
        tok = self.peek()
        if want is not None and tok[1] != want:
            found = "the end of the file" if tok[0] == "eof" else repr(tok[1])
            self._fail(tok[2], tok[3], f"expected {want!r} but found {found}")
        self.i += 1
        return tok

    def message(self, close=None, where=None) -> Node:
        out = Node()
        out.where, out.key_where, out.value_where = where or Where(self.path, 1, 1), {}, {}
        while True:
            kind, value, line, col = self.peek()
            if kind == "eof":
                if close:
                    self._fail(line, col, f"missing {close!r} to close the message opened at line {out.where.line}")
                return out
            if value == close:
                self.take()
                return out
            if kind != "ident":
                self._fail(line, col, f"expected a field name, found {value!r}")
            self.take()
            key_where = Where(self.path, line, col)
            sep = self.peek()[1]
            if sep == ":":
                self.take()
                sep = self.peek()[1]
            if sep in ("{", "<"):
                _, _, vl, vc = self.take()
                item = self.message("}" if sep == "{" else ">", Where(self.path, vl, vc))
                items = [(item, Where(self.path, vl, vc))]
            elif sep == "[":
                self.take()
                items = []
                while self.peek()[1] != "]":
                    items.append(self.scalar())
                    if self.peek()[1] == ",":
                        self.take()
                self.take("]")
            else:
                items = [self.scalar()]
            for item, where in items:
                self._add(out, value, item, key_where, where)
            if self.peek()[1] in (",", ";"):
                self.take()

    def _add(self, out: Node, key, item, key_where, where):
        if key in out:
            current = out[key]
            if not getattr(current, "_repeated", False):
                lst = NodeList([current])
                lst.where, lst.item_where, lst._repeated = out.value_where[key], [out.value_where[key]], True
                out[key] = current = lst
            current.append(item)
            current.item_where.append(where)
            return
        out[key] = item
        out.key_where[key], out.value_where[key] = key_where, where

    def scalar(self):
        kind, value, line, col = self.take()
        where = Where(self.path, line, col)
        if kind == "string":
            try:
                parts = [_unescape(value[1:-1])]
                while self.peek()[0] == "string":  # adjacent literals concatenate
                    parts.append(_unescape(self.take()[1][1:-1]))
            except ValueError as e:
                self._fail(line, col, f"a bad escape in a string ({e})")
            return "".join(parts), where
        if kind == "number":
            text = value.rstrip("fF") if not value.lower().startswith(("0x", "-0x", "+0x")) else value
            if re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+)", text):
                return int(text, 16), where
            if re.fullmatch(r"[-+]?[0-9]+", text):
                return int(text), where
            return float(text), where
        if kind == "ident":
            low = value.lower()
            if low in ("true", "t"):
                return True, where
            if low in ("false", "f"):
                return False, where
            if low.lstrip("-+") in ("inf", "infinity", "nan"):
                return float(low), where
            return value, where  # an enum value such as MAX or TRAIN
        self._fail(line, col, f"expected a value, found {value!r}")


def _listify(doc):
    """A net's `layer` (or V1 `layers`) given once becomes a one-element list."""
    for key in REPEATED & set(doc):
        if not isinstance(doc[key], NodeList):
            lst = NodeList([doc[key]])
            lst.where, lst.item_where = doc.value_where[key], [doc.value_where[key]]
            doc[key] = lst


def _drop_cpu_fields(node, notes):
    if isinstance(node, Node):
        for key in list(node):
            if key in CPU_ONLY_IGNORED:
                if not (key == "solver_mode" and str(node[key]) == "CPU"):  # (CPU: what yaffe does anyway)
                    w = node.key_where[key]
                    notes.append(Finding(w[0], w[1], w[2], "info", f"{key} is ignored: yaffe runs on the CPU"))
                del node[key]
            else:
                _drop_cpu_fields(node[key], notes)
    elif isinstance(node, NodeList):
        for item in node:
            _drop_cpu_fields(item, notes)


def _node(where) -> Node:
    n = Node()
    n.where, n.key_where, n.value_where = where, {}, {}
    return n


def _put(node: Node, key, value, where):
    node[key] = value
    node.key_where[key] = node.value_where[key] = where


def _upgrade_v0(doc: Node, notes):
    """V0 `layers { layer { type: "conv" kernelsize: 5 ... } bottom: top: }` to V1 `layers { type: CONVOLUTION
    convolution_param {...} }`, as Caffe's UpgradeV0Net: `padding` layers fold into the conv or pool they feed."""
    items = doc.get("layers")
    if not isinstance(items, NodeList) or not any(isinstance(c, Node) and "layer" in c for c in items):
        return
    w = doc.key_where["layers"]
    notes.append(Finding(w[0], w[1], w[2], "warning", "this net uses Caffe's V0 format (layers { layer { type: "
                         "'conv' } }); it was upgraded on load (run.py convert writes the upgraded net)"))
    errors, made_by, kept = [], {}, NodeList()
    kept.where, kept.item_where = items.where, []
    for conn in items:
        v0 = conn.get("layer") if isinstance(conn, Node) else None
        if not isinstance(v0, Node):
            kept.append(conn)
            kept.item_where.append(getattr(conn, "where", items.where))
            continue
        kind = v0.get("type")
        bottoms, tops = as_list(conn.get("bottom")), as_list(conn.get("top"))
        pads = [made_by[b] for b in bottoms if b in made_by]
        if kind == "padding":
            for t in tops:
                made_by[t] = (bottoms[0] if bottoms else None, v0.get("pad", 0))
            continue
        if pads:
            if kind not in ("conv", "pool") or len(bottoms) != 1:
                errors.append(Finding(*v0.at("type"), "error", f"V0 layer '{v0.get('name')}': a padding layer feeds "
                                      f"a '{kind}' layer; Caffe folds padding only into conv and pool layers"))
                continue
            (source, pad), = pads
            conn["bottom"] = source
            if "pad" not in v0:
                _put(v0, "pad", pad, v0.where)
        layer = _node(conn.where)
        for key in ("bottom", "top"):
            if key in conn:
                _put(layer, key, conn[key], conn.at(key))
        for key, value in v0.items():
            where = v0.at(key)
            if key == "type":
                if value not in V0_TYPES:
                    errors.append(Finding(*where, "error", f"V0 layer type '{value}' is unknown (known: "
                                          f"{', '.join(sorted(V0_TYPES))}, padding)"))
                _put(layer, "type", V0_TYPES.get(value, value), where)
            elif key in ("name", "blobs", "blobs_lr", "weight_decay"):
                _put(layer, key, value, where)
            elif key == "hdf5_output_param" and kind == "hdf5_output":
                _put(layer, key, value, where)
            elif key in V0_FIELDS:
                blocks, field = V0_FIELDS[key]
                block = "transform_param" if blocks == "*" else blocks.get(kind)
                if block is None:
                    errors.append(Finding(*v0.key_where.get(key, where), "error", f"V0 layer '{v0.get('name')}': "
                                          f"'{key}' means nothing for a '{kind}' layer (Caffe's upgrade stops on "
                                          "it too); remove it"))
                    continue
                if block not in layer:
                    _put(layer, block, _node(where), where)
                _put(layer[block], field, value, where)
            else:
                errors.append(Finding(*v0.key_where.get(key, where), "error", f"V0 layer '{v0.get('name')}': unknown "
                                      f"field '{key}'"))
        kept.append(layer)
        kept.item_where.append(conn.where)
    if errors:
        raise SpecError(errors)
    doc["layers"] = kept


def _upgrade_v1(doc: Node, notes):
    """V1 `layers { type: CONVOLUTION blobs_lr: 1 weight_decay: 1 }` to V2 `layer { type: "Convolution" }`."""
    if "layers" not in doc:
        return
    w = doc.key_where["layers"]
    notes.append(Finding(w[0], w[1], w[2], "warning", "this net uses Caffe's deprecated V1 'layers' format; it was "
                         "upgraded on load (run.py convert writes the upgraded net)"))
    for layer in doc["layers"]:
        t = layer.get("type")
        if isinstance(t, str) and t in V1_TYPES:
            layer["type"] = V1_TYPES[t]
        lrs, decays = as_list(layer.pop("blobs_lr", None)), as_list(layer.pop("weight_decay", None))
        if lrs or decays:
            params = NodeList()
            params.where, params.item_where = layer.where, []
            for i in range(max(len(lrs), len(decays))):
                p = Node()
                p.where, p.key_where, p.value_where = layer.where, {}, {}
                if i < len(lrs):
                    p["lr_mult"] = lrs[i]
                if i < len(decays):
                    p["decay_mult"] = decays[i]
                params.append(p)
                params.item_where.append(layer.where)
            layer["param"] = params
            layer.key_where["param"] = layer.value_where["param"] = layer.where
        for block in [k for k in layer if k.endswith("data_param")]:
            moved = {k: layer[block].pop(k) for k in TRANSFORM_KEYS if k in layer[block]}
            if moved:
                tp = layer.setdefault("transform_param", Node())
                if not hasattr(tp, "where"):
                    tp.where, tp.key_where, tp.value_where = layer.where, {}, {}
                    layer.key_where["transform_param"] = layer.value_where["transform_param"] = layer.where
                for k, v in moved.items():
                    tp[k] = v
                    tp.key_where[k] = tp.value_where[k] = layer[block].where
    doc["layer"] = doc.pop("layers")
    doc.key_where["layer"] = doc.value_where["layer"] = w


def _upgrade_solver(doc: Node, notes):
    if "solver_type" in doc:
        w = doc.key_where["solver_type"]
        value = doc.pop("solver_type")
        if "type" in doc:
            raise SpecError([Finding(w[0], w[1], w[2], "error", "give either solver_type (deprecated) or type, "
                                     "not both; keep type")])
        doc["type"] = SOLVER_TYPES.get(value, value)
        doc.key_where["type"] = doc.value_where["type"] = w
        notes.append(Finding(w[0], w[1], w[2], "warning", f"solver_type: {value} is deprecated; read as "
                             f"type: {doc['type']}"))


def loads(text: str, path: str = "<prototxt>") -> tuple[Node, list[Finding]]:
    """(the parsed message, upgrade warnings and info notes)."""
    try:
        parser = _Parser(text, path)
        doc = parser.message()
    except RecursionError:
        raise SpecError([Finding(path, 1, 1, "error", "messages nested too deeply (thousands of levels of { ); a "
                                 "net is a few levels deep")]) from None
    notes: list[Finding] = []
    _listify(doc)
    _drop_cpu_fields(doc, notes)
    _upgrade_v0(doc, notes)
    _upgrade_v1(doc, notes)
    for key in ("net_param", "train_net_param", "test_net_param"):  # nets inside a solver: the same upgrades
        for net in as_list(doc.get(key)):
            if isinstance(net, Node):
                _upgrade_v0(net, notes)
                _upgrade_v1(net, notes)
    _upgrade_solver(doc, notes)
    return doc, notes


def load(path: str) -> tuple[Node, list[Finding]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such file; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: error: cannot read the file ({e})") from None
    return loads(text, path)


# string fields whose values look like enums (LRN, SGD, L1): always quoted
_STRING_KEYS = {"type", "name", "regularization_type", "lr_policy", "net", "bottom", "top", "source",
                "snapshot_prefix", "mean_file", "stage", "not_stage"}


def _prototxt_value(v, key=""):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):  # enums (MAX, AVE) bare, strings quoted
        if v.isupper() and v.isidentifier() and key not in _STRING_KEYS:
            return v
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def dumps(doc: dict, indent: str = "") -> str:
    """A net or solver spec (plain dicts and lists) as Caffe prototxt text: lists are repeated fields."""
    out = []
    for key, value in doc.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                out.append(f"{indent}{key} {{\n{dumps(item, indent + '  ')}{indent}}}\n")
            else:
                out.append(f"{indent}{key}: {_prototxt_value(item, key)}\n")
    return "".join(out)
