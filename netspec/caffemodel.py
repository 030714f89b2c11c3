"""Reading and writing Caffe's binary .caffemodel and .solverstate files without compiled protos.

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
    """A base-128 varint at pos: (value, next pos). Protobuf's are at most 10 bytes; a longer run of high bits is
    not a varint (unbounded, the shifted integer grew with every byte: 1 MB of 0xff took quadratic time)."""
    result = shift = 0
    start = pos
    while shift < 70:
        if pos >= len(buf):
            raise ValueError(f"a varint at byte {start} runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise ValueError(f"a varint longer than 10 bytes at byte {start}")


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
            if n > end - pos:
                raise ValueError(f"field {num} at byte {pos} claims {n} bytes; {end - pos} remain")
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
    parts = [np.frombuffer(v, dtype) if isinstance(v, (bytes, memoryview)) else np.array([v], dtype) for v in values]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def read_blob(buf: bytes) -> np.ndarray:
    """The array of a BlobProto; ValueError where the bytes are not one (wrong field types, a shape that does not
    hold the values, ...)."""
    try:
        return _read_blob(buf)
    except ValueError:
        raise
    except (TypeError, IndexError, OverflowError, MemoryError) as e:
        raise ValueError(f"not a BlobProto ({type(e).__name__}: {e})") from None


def _read_blob(buf: bytes) -> np.ndarray:
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
            buf = memoryview(f.read())  # (fields' slices are views: no copy of each layer's bytes)
        out = {}
        for num, wire, v in fields(buf):
            if num not in (100, 2) or wire != 2:
                continue
            name_field, blob_field = (1, 7) if num == 100 else (4, 6)
            name, blobs = None, []
            for n2, w2, v2 in fields(v):
                if n2 == name_field and w2 == 2:
                    name = bytes(v2).decode()
                elif n2 == blob_field and w2 == 2:
                    blobs.append(read_blob(v2))
            for i, b in enumerate(blobs):
                out[f"{name}/{i}"] = b
        return out
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such file") from None
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: error: not a binary Caffe NetParameter ({e})") from None


def read_solverstate(path: str) -> dict:
    """{"iter", "learned_net", "current_step", "history": [arrays]} of a binary Caffe SolverState
    (SolverState: iter 1, learned_net 2, history 3, current_step 4)."""
    try:
        with open(path, "rb") as f:
            buf = memoryview(f.read())
        out = {"iter": 0, "learned_net": "", "current_step": 0, "history": []}
        for num, wire, v in fields(buf):
            if num == 1 and wire == 0:
                out["iter"] = v
            elif num == 2 and wire == 2:
                out["learned_net"] = bytes(v).decode()
            elif num == 3 and wire == 2:
                out["history"].append(read_blob(v))
            elif num == 4 and wire == 0:
                out["current_step"] = v
        return out
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such file") from None
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: error: not a binary Caffe SolverState ({e})") from None


# ---- writing -------------------------------------------------------------------------------------

def _enc_varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _enc_varint(num << 3 | 2) + _enc_varint(len(payload)) + payload


def _int_field(num: int, value: int) -> bytes:
    return _enc_varint(num << 3) + _enc_varint(value)


def _blob_parts(array) -> list:
    """blob_bytes as pieces (the data a view of the array: nothing copied until the one join)."""
    a = np.ascontiguousarray(array, "<f4")
    shape = _field(1, b"".join(_enc_varint(int(d)) for d in a.shape)) if a.ndim else b""
    data = memoryview(a.reshape(-1)).cast("B")
    return [_field(7, shape), _enc_varint(5 << 3 | 2) + _enc_varint(data.nbytes), data]


def _field_parts(num: int, parts: list) -> list:
    """A length-delimited field around pieces, as pieces."""
    return [_enc_varint(num << 3 | 2) + _enc_varint(sum(len(p) if isinstance(p, bytes) else p.nbytes
                                                          for p in parts))] + parts


def blob_bytes(array) -> bytes:
    """BlobProto with shape (7: BlobShape, dim packed) and data (5: packed float)."""
    return b"".join(_blob_parts(array))


def caffemodel_bytes(name: str, layers) -> bytes:
    """NetParameter (name 1, layer 100 {name 1, type 2, blobs 7}) for [(layer name, type, [arrays])], joined once
    (CaffeNet's 244 MB were copied at each level of nesting)."""
    out = [_field(1, name.encode())]
    for lname, ltype, blobs in layers:
        body = [_field(1, lname.encode()), _field(2, ltype.encode())]
        for b in blobs:
            body += _field_parts(7, _blob_parts(b))
        out += _field_parts(100, body)
    return b"".join(out)


def solverstate_bytes(it: int, learned_net: str, history, current_step: int) -> bytes:
    return (_int_field(1, it) + _field(2, learned_net.encode()) + b"".join(_field(3, blob_bytes(h)) for h in history)
            + _int_field(4, current_step))
