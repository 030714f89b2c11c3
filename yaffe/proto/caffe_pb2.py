"""The few caffe.proto messages scripts build by hand, without protobuf: BlobShape, BlobProto (mean files,
`caffe.io.array_to_blobproto`) and Datum (LMDB records). Each has Caffe's field names, repeated fields as
lists (`blob.shape.dim.extend(...)`, `blob.data`), `HasField`, `SerializeToString` and `ParseFromString`, and
writes the same bytes as Caffe's generated classes (packed repeated numbers).

    blob = caffe_pb2.BlobProto(); blob.ParseFromString(open("mean.binaryproto", "rb").read())
    mean = caffe.io.blobproto_to_array(blob)
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
