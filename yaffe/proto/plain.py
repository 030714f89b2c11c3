"""caffe_pb2 without protobuf: the caffe.proto messages scripts build by hand. BlobShape, BlobProto (mean files,
`caffe.io.array_to_blobproto`) and Datum (LMDB records), each with Caffe's field names, repeated fields as lists
(`blob.shape.dim.extend(...)`, `blob.data`), `HasField`, `SerializeToString` and `ParseFromString`, writing the same
bytes as Caffe's generated classes (packed repeated numbers); SolverParameter (with NetState), which scripts fill
and write as prototxt text with str(), as Caffe's examples write their solvers. caffe_pb2 gives these where the
protobuf package is missing; with it, the classes of caffe.proto itself (descriptor.py).

    blob = caffe_pb2.BlobProto(); blob.ParseFromString(open("mean.binaryproto", "rb").read())
    mean = caffe.io.blobproto_to_array(blob)
    s = caffe_pb2.SolverParameter(); s.train_net = "train.prototxt"; s.test_iter.append(100); s.base_lr = 0.01
    open("solver.prototxt", "w").write(str(s))
"""
from __future__ import annotations

import struct

import numpy as np

from netspec.caffemodel import _decode_varints, _enc_varint, _field, _int_field, fields

# kinds: int, float, bool, bytes, floats (packed repeated float), doubles, ints (packed repeated int64), message
_KINDS = {"int": 0, "bool": 0, "bytes": 2, "floats": 2, "doubles": 2, "ints": 2, "message": 2, "float": 5}


class _Message:
    _fields: dict = {}  # name: (number, kind, message class)

    def __init__(self, **values):
        self._set = set()
        for name, (_, kind, cls) in self._fields.items():
            object.__setattr__(self, name, [] if kind in ("floats", "doubles", "ints") else
                               cls() if kind == "message" else b"" if kind == "bytes" else
                               False if kind == "bool" else 0)
        for k, v in values.items():
            setattr(self, k, v)

    def __setattr__(self, name, value):
        if name != "_set" and name not in self._fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r} (fields: {', '.join(self._fields)})")
        if name != "_set":
            self._set.add(name)
            if self._fields[name][1] in ("floats", "doubles", "ints"):
                value = list(value)
        object.__setattr__(self, name, value)

    def HasField(self, name):  # noqa: N802: protobuf's name
        """Whether the field was set (a message: is not empty)."""
        value = getattr(self, name)
        kind = self._fields[name][1]
        return name in self._set or (kind == "message" and value.ByteSize() > 0)

    def ByteSize(self):  # noqa: N802
        """The serialized size in bytes."""
        return len(self.SerializeToString())

    def CopyFrom(self, other):  # noqa: N802
        """Become a copy of `other`."""
        self.ParseFromString(other.SerializeToString())

    def SerializeToString(self) -> bytes:  # noqa: N802
        """The protobuf wire bytes (fields in number order, repeated numbers packed), as Caffe writes them."""
        out = []
        for name, (num, kind, _) in sorted(self._fields.items(), key=lambda kv: kv[1][0]):
            v = getattr(self, name)
            if kind in ("int", "bool"):
                if name in self._set:
                    out.append(_int_field(num, int(v)))
            elif kind == "float":
                if name in self._set:
                    out.append(_enc_varint(num << 3 | 5) + struct.pack("<f", v))
            elif kind == "bytes":
                if v or name in self._set:
                    out.append(_field(num, bytes(v)))
            elif kind in ("floats", "doubles"):
                if len(v):
                    out.append(_field(num, np.asarray(v, "<f4" if kind == "floats" else "<f8").tobytes()))
            elif kind == "ints":
                if len(v):
                    out.append(_field(num, b"".join(_enc_varint(int(d)) for d in v)))
            elif kind == "message":
                body = v.SerializeToString()
                if body or name in self._set:
                    out.append(_field(num, body))
        return b"".join(out)

    def ParseFromString(self, buf: bytes):  # noqa: N802
        """Read the protobuf wire bytes (packed or not); unknown fields are skipped."""
        self.__init__()
        by_num = {num: (name, kind, cls) for name, (num, kind, cls) in self._fields.items()}
        for num, wire, v in fields(bytes(buf)):
            if num not in by_num:
                continue
            name, kind, cls = by_num[num]
            if kind in ("floats", "doubles"):
                dtype = "<f4" if kind == "floats" else "<f8"
                setattr(self, name, getattr(self, name) + np.frombuffer(v, dtype).tolist())  # packed or not
            elif kind == "ints":
                setattr(self, name, getattr(self, name) + (_decode_varints(v) if wire == 2 else [v]))
            elif kind == "message":
                m = cls()
                m.ParseFromString(v)
                setattr(self, name, m)
            elif kind == "float":
                setattr(self, name, struct.unpack("<f", v)[0] if isinstance(v, bytes) else float(v))
            elif kind == "bool":
                setattr(self, name, bool(v))
            else:
                setattr(self, name, v)
        return len(buf)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(sorted(self._set))})"


class BlobShape(_Message):
    """caffe.proto's BlobShape: dim (repeated int64)."""
    _fields = {"dim": (1, "ints", None)}


class BlobProto(_Message):
    """caffe.proto's BlobProto: shape, data, diff, double_data, double_diff, and the legacy num/channels/height/width."""
    _fields = {"num": (1, "int", None), "channels": (2, "int", None), "height": (3, "int", None),
               "width": (4, "int", None), "data": (5, "floats", None), "diff": (6, "floats", None),
               "shape": (7, "message", BlobShape), "double_data": (8, "doubles", None),
               "double_diff": (9, "doubles", None)}


class BlobProtoVector(_Message):
    """caffe.proto's BlobProtoVector: blobs (a list of BlobProto)."""
    _fields = {}

    def __init__(self, **values):
        object.__setattr__(self, "blobs", [])
        super().__init__(**values)

    def SerializeToString(self) -> bytes:  # noqa: N802
        return b"".join(_field(1, b.SerializeToString()) for b in self.blobs)

    def ParseFromString(self, buf: bytes):  # noqa: N802
        self.blobs.clear()
        for num, wire, v in fields(bytes(buf)):
            if num == 1:
                b = BlobProto()
                b.ParseFromString(v)
                self.blobs.append(b)
        return len(buf)


class Datum(_Message):
    """caffe.proto's Datum (an LMDB record): channels, height, width, data (bytes), label, float_data, encoded."""
    _fields = {"channels": (1, "int", None), "height": (2, "int", None), "width": (3, "int", None),
               "data": (4, "bytes", None), "label": (5, "int", None), "float_data": (6, "floats", None),
               "encoded": (7, "bool", None)}


# ---- messages scripts write as prototxt text (solvers) --------------------------------------------------------
TRAIN, TEST = 0, 1  # caffe.proto's Phase


class _Repeated(list):
    """A repeated field: append, extend, and add() for a repeated message (protobuf's RepeatedCompositeContainer)."""

    def __init__(self, cls=None):
        super().__init__()
        self._cls = cls

    def add(self, **values):
        item = self._cls(**values)
        self.append(item)
        return item


class _TextMessage:
    """A caffe.proto message filled from Python and written by str() in protobuf's text format (what
    `f.write(str(solver_param))` writes with Caffe's generated classes), fields in their numbers' order, only those
    set. _fields: {name: (number, kind, enum {name: value} or message class, repeated)}; kinds: string, int,
    float, bool, enum, message."""
    _fields: dict = {}

    def __init__(self, **values):
        object.__setattr__(self, "_set", set())
        for name, (_, kind, extra, repeated) in self._fields.items():
            object.__setattr__(self, name, _Repeated(extra if kind == "message" else None) if repeated else
                               extra() if kind == "message" else
                               {"string": "", "int": 0, "float": 0.0, "bool": False, "enum": 0}[kind])
        for k, v in values.items():  # (a repeated field from a list, as protobuf's constructors take it)
            if k in self._fields and self._fields[k][3]:
                getattr(self, k).extend(v)
            else:
                setattr(self, k, v)

    def __setattr__(self, name, value):
        if name not in self._fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r} (caffe.proto's fields: "
                                 f"{', '.join(self._fields)})")
        _, kind, extra, repeated = self._fields[name]
        if repeated:
            raise AttributeError(f"{type(self).__name__}.{name} is a repeated field: use "
                                 f"{name}.append(...) or {name}.extend([...]), as with protobuf")
        if kind == "message":
            raise AttributeError(f"{type(self).__name__}.{name} is a message: set its fields "
                                 f"({name}.field = ...), as with protobuf")
        self._set.add(name)
        object.__setattr__(self, name, value)

    def HasField(self, name):  # noqa: N802: protobuf's name
        if self._fields[name][1] == "message":
            return bool(str(getattr(self, name)))
        return name in self._set

    def ClearField(self, name):  # noqa: N802
        self._set.discard(name)
        _, kind, extra, repeated = self._fields[name]
        object.__setattr__(self, name, _Repeated(extra if kind == "message" else None) if repeated else
                           extra() if kind == "message" else
                           {"string": "", "int": 0, "float": 0.0, "bool": False, "enum": 0}[kind])

    @staticmethod
    def _value(kind, extra, v):
        if kind == "string":
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if kind == "bool":
            return "true" if v else "false"
        if kind == "int":
            if int(v) != v:
                raise TypeError(f"{v!r} is not an integer")
            return str(int(v))
        if kind == "float":
            return repr(float(v))
        if kind == "enum":
            names = {number: name for name, number in extra.items()}
            if isinstance(v, str) and v in extra:
                return v
            if v not in names:
                raise ValueError(f"{v!r} is not one of {', '.join(extra)}")
            return names[v]
        raise TypeError(kind)

    def __str__(self):
        lines = []
        for name, (_, kind, extra, repeated) in sorted(self._fields.items(), key=lambda kv: kv[1][0]):
            value = getattr(self, name)
            values = list(value) if repeated else [value] if kind == "message" or name in self._set else []
            for v in values:
                if kind == "message":
                    body = str(v)
                    if body or repeated:
                        inner = "".join(f"  {line}\n" for line in body.splitlines())
                        lines.append(f"{name} {{\n{inner}}}\n")
                else:
                    try:
                        lines.append(f"{name}: {self._value(kind, extra, v)}\n")
                    except (TypeError, ValueError) as e:
                        raise TypeError(f"{type(self).__name__}.{name}: {e}") from None
        return "".join(lines)

    def __repr__(self):
        return str(self)


class NetState(_TextMessage):
    """caffe.proto's NetState: phase (TRAIN/TEST), level, stage (repeated)."""
    _fields = {"phase": (1, "enum", {"TRAIN": 0, "TEST": 1}, False), "level": (2, "int", None, False),
               "stage": (3, "string", None, True)}


_SOLVER_MODE = {"CPU": 0, "GPU": 1}
_SNAPSHOT_FORMAT = {"HDF5": 0, "BINARYPROTO": 1}
_SOLVER_TYPE = {"SGD": 0, "NESTEROV": 1, "ADAGRAD": 2, "RMSPROP": 3, "ADADELTA": 4, "ADAM": 5}


class SolverParameter(_TextMessage):
    """caffe.proto's SolverParameter, as Caffe's examples build solvers in Python (examples/01-learning-lenet):
    fill it, `str(s)` is the prototxt to write (`caffe.get_solver(path)` reads it). Its enums as class attributes
    (SolverParameter.GPU, .BINARYPROTO, .ADAM). The inline nets (net_param, train_net_param, test_net_param) are not
    here: write the net to a file (NetSpec's to_proto) and name it in net / train_net / test_net."""
    _fields = {
        "train_net": (1, "string", None, False), "test_net": (2, "string", None, True),
        "test_iter": (3, "int", None, True), "test_interval": (4, "int", None, False),
        "base_lr": (5, "float", None, False), "display": (6, "int", None, False), "max_iter": (7, "int", None, False),
        "lr_policy": (8, "string", None, False), "gamma": (9, "float", None, False), "power": (10, "float", None, False),
        "momentum": (11, "float", None, False), "weight_decay": (12, "float", None, False),
        "stepsize": (13, "int", None, False), "snapshot": (14, "int", None, False),
        "snapshot_prefix": (15, "string", None, False), "snapshot_diff": (16, "bool", None, False),
        "solver_mode": (17, "enum", _SOLVER_MODE, False), "device_id": (18, "int", None, False),
        "test_compute_loss": (19, "bool", None, False), "random_seed": (20, "int", None, False),
        "debug_info": (23, "bool", None, False), "net": (24, "string", None, False),
        "train_state": (26, "message", NetState, False), "test_state": (27, "message", NetState, True),
        "snapshot_after_train": (28, "bool", None, False), "regularization_type": (29, "string", None, False),
        "solver_type": (30, "enum", _SOLVER_TYPE, False), "delta": (31, "float", None, False),
        "test_initialization": (32, "bool", None, False), "average_loss": (33, "int", None, False),
        "stepvalue": (34, "int", None, True), "clip_gradients": (35, "float", None, False),
        "iter_size": (36, "int", None, False), "snapshot_format": (37, "enum", _SNAPSHOT_FORMAT, False),
        "rms_decay": (38, "float", None, False), "momentum2": (39, "float", None, False),
        "type": (40, "string", None, False), "layer_wise_reduce": (41, "bool", None, False),
        "weights": (42, "string", None, True),
    }


for _enum in (_SOLVER_MODE, _SNAPSHOT_FORMAT, _SOLVER_TYPE):
    for _name, _number in _enum.items():
        setattr(SolverParameter, _name, _number)


TRAIN, TEST = 0, 1
CLASSES = {"BlobShape": BlobShape, "BlobProto": BlobProto, "BlobProtoVector": BlobProtoVector, "Datum": Datum,
           "NetState": NetState, "SolverParameter": SolverParameter, "TRAIN": TRAIN, "TEST": TEST}
