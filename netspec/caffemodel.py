"""Reading Caffe's binary .caffemodel files without compiled protos.

A minimal protobuf wire-format decoder plus the field numbers of the few Caffe messages
needed (facts of Caffe's caffe.proto):
NetParameter: name 1, layers 2 (V1LayerParameter), layer 100 (LayerParameter).
LayerParameter: name 1, type 2, blobs 7.  V1LayerParameter: name 4, blobs 6.
BlobProto: num 1, channels 2, height 3, width 4, data 5, diff 6, shape 7, double_data 8.
BlobShape: dim 1.
"""
from __future__ import annotations

import numpy as np

from .errors import UserError


def _varint(buf: bytes, pos: int):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes):
    """Yield (field number, wire type, value) of one message; value is int or bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated message")
        yield num, wire, value


def _packed(values, wire, dtype):
    """Concatenate a repeated numeric field given packed (wire 2) or one by one."""
    parts = [np.frombuffer(v, dtype) if isinstance(v, bytes) else np.array([v], dtype) for v in values]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def read_blob(buf: bytes) -> np.ndarray:
    legacy, shape, data, ddata = {}, None, [], []
    for num, wire, v in fields(buf):
        if num in (1, 2, 3, 4):
            legacy[num] = v
        elif num == 5:
            data.append(v)
        elif num == 8:
            ddata.append(v)
        elif num == 7:
            dims = []
            for n2, w2, v2 in fields(v):
                if n2 == 1:
                    dims.extend(_decode_varints(v2) if w2 == 2 else [v2])
            shape = tuple(dims)
    values = _packed(data, 2, "<f4") if data else _packed(ddata, 2, "<f8").astype(np.float32)
    if shape is None:
        shape = tuple(legacy.get(k, 1) for k in (1, 2, 3, 4)) if legacy else (values.size,)
    return values.reshape(shape)


def _decode_varints(buf: bytes) -> list:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


def read_caffemodel(path: str) -> dict:
    """{"layer/i": array} of a binary NetParameter (new `layer` and V1 `layers` fields)."""
    try:
        with open(path, "rb") as f:
            buf = f.read()
        out = {}
        for num, wire, v in fields(buf):
            if num not in (100, 2) or wire != 2:
                continue
            name_field, blob_field = (1, 7) if num == 100 else (4, 6)
            name, blobs = None, []
            for n2, w2, v2 in fields(v):
                if n2 == name_field and w2 == 2:
                    name = v2.decode()
                elif n2 == blob_field and w2 == 2:
                    blobs.append(read_blob(v2))
            for i, b in enumerate(blobs):
                out[f"{name}/{i}"] = b
        return out
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such file") from None
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: error: not a binary Caffe NetParameter ({e})") from None
