"""pycaffe's NetSpec: build a net in Python and write it as prototxt (or yaffe YAML).

    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=64, source="mnist_train_lmdb", backend=P.Data.LMDB, ntop=2,
                             transform_param=dict(scale=1. / 255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.conv1, n.label)
    open("net.prototxt", "w").write(str(n.to_proto()))

Keywords go to the layer's parameter block where the layer type declares them (`kernel_size` into
convolution_param), else onto the layer itself (`loss_weight`, `param`, `include`, any `*_param`). `ntop`
gives several tops, `in_place=True` writes the top over the bottom; tops are named after the NetSpec attributes
they are assigned to, layers after their first top (else Type1, Type2, ...). Enums: `P.Pooling.MAX`.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

import numpy as np

_PHASE = {0: "TRAIN", 1: "TEST"}


class Enum(str):
    """An enum value (written bare in prototxt): P.Pooling.MAX."""


class _EnumSpace:
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Enum(name)


class Parameters:
    """caffe.params: P.Pooling.MAX, P.Data.LMDB, P.Eltwise.SUM ... (any enum name)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _EnumSpace()


class Top:
    """One output of a layer function; assign it to a NetSpec attribute to name it."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def to_proto(self):
        """A net holding this top and every layer it depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def _update(self, params):
        self.fn.params.update(params)


class Message(OrderedDict):
    """A layer (or nested block) of a NetProto: fields by key or attribute (net_proto.layer[6].bottom)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Function:
    """A layer: its type, its bottoms (Tops), its keyword parameters."""

    def __init__(self, type_name, inputs, params):
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
        self.type_name, self.inputs, self.params = type_name, inputs, dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if self.in_place:
            self.ntop = len(inputs)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn]["top"][inp.n])
        layer = Message()
        layer["name"] = self.params.get("name") or self._name(names, autonames)
        layer["type"] = self.type_name
        layer["bottom"] = bottoms
        layer["top"] = list(bottoms) if self.in_place else [self._top_name(t, names, autonames) for t in self.tops]
        block, fields = _param_block(self.type_name)
        for k, v in self.params.items():
            if k == "name":
                continue
            v = _plain(v)
            if block and k in fields and not k.endswith("param"):
                layer.setdefault(block, Message())[k] = v
            else:
                layer[k] = v
        layers[self] = layer


def _param_block(type_name):
    """(the type's parameter block, its field names) from yaffe's layer registry; (None, ()) if unknown."""
    import layers
    cls = layers.REGISTRY.get(type_name)
    if cls is None or not cls.param_block:
        return None, ()
    return cls.param_block, {f.name for f in cls.fields}


def _plain(v, key=""):
    """Keyword values as prototxt data: phases by name, tuples and NumPy arrays as lists, NumPy numbers as
    Python's (coord_map's crop offsets are np.int64), nested dicts."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    elif isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, dict):
        return Message((k, _plain(x, k)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return [_plain(x, key) for x in v]
    if key == "phase" and v in _PHASE:
        return _PHASE[v]
    return v


class Layers:
    """caffe.layers: L.Convolution(bottom, ..., **params) makes a layer of that type."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        return layer_fn


class NetProto:
    """The net a NetSpec built: str() is its prototxt; `layer` the layers as dicts; to_yaml() yaffe's YAML."""

    def __init__(self, layers, name=None):
        self.layer = list(layers)
        self.name = name

    def _doc(self):
        doc = OrderedDict()
        if self.name:
            doc["name"] = self.name
        doc["layer"] = [OrderedDict((k, v) for k, v in l.items() if v != []) for l in self.layer]
        return doc

    def __str__(self):
        from netspec.prototxt import dumps
        return dumps(self._doc())

    def to_yaml(self):
        """The net as yaffe's YAML."""
        from netspec.convert import to_yaml
        return to_yaml(_to_dict(self._doc()), "a NetSpec").replace("# converted from a NetSpec by run.py convert",
                                                                    "# written by yaffe's NetSpec")


def _to_dict(v):
    if isinstance(v, dict):
        return {k: _to_dict(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_to_dict(x) for x in v]
    return str(v) if isinstance(v, Enum) else v


def to_proto(*tops, name=None):
    """The net of these tops and everything they depend on."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    return NetProto(layers.values(), name)


class NetSpec:
    """Tops assigned as attributes, in order; to_proto() names them after the attributes."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        """The top names, in the order assigned."""
        return list(self.tops.keys())

    def vals(self):
        """The tops, in the order assigned."""
        return list(self.tops.values())

    def to_proto(self, name=None):
        """The net of every top assigned (a NetProto: str() is prototxt)."""
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        return NetProto(layers.values(), name)

    def to_yaml(self, name=None):
        """yaffe's YAML of the net."""
        return self.to_proto(name).to_yaml()


layers = Layers()
params = Parameters()
