"""Caffe's message classes from caffe.proto (beside this file) through the protobuf package, when it is installed:
the same classes as pycaffe's generated caffe_pb2 (NetParameter, LayerParameter, SolverParameter, BlobProto,
Datum, ... with every field, default and enum), so that scripts which read and edit prototxt with
`google.protobuf.text_format` (Caffe's draw_net.py and summarize.py, net surgery on the text) run unchanged.

No protoc: a small reader of the proto2 that caffe.proto uses (messages, nested enums, optional/repeated fields,
`default` and `packed` options) builds a FileDescriptorProto, registered in a pool of its own.

    classes = build()          # {"NetParameter": class, ..., "Phase": enum wrapper, "TRAIN": 0, ...}
"""
from __future__ import annotations

import os
import re

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "caffe.proto")
_TOKEN = re.compile(r'\s+|//[^\n]*|/\*.*?\*/'                                 # space and comments
                    r'|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'                   # a string
                    r'|([A-Za-z_][\w.]*|[-+]?[\d.]+(?:[eE][-+]?\d+)?|\S)', re.S)  # a word, a number, a sign
_SCALARS = {"double": 1, "float": 2, "int64": 3, "uint64": 4, "int32": 5, "fixed64": 6, "fixed32": 7, "bool": 8,
            "string": 9, "bytes": 12, "uint32": 13, "sfixed32": 15, "sfixed64": 16, "sint32": 17, "sint64": 18}
_LABELS = {"optional": 1, "required": 2, "repeated": 3}


def _tokens(text):
    out = []
    for m in _TOKEN.finditer(text):
        if m.group(1) is not None:
            out.append(("str", m.group(1)[1:-1]))
        elif m.group(2) is not None:
            out.append(("tok", m.group(2)))
    return out


class _Reader:
    def __init__(self, text):
        self.toks, self.i = _tokens(text), 0

    def next(self):
        tok = self.toks[self.i]
        self.i += 1
        return tok[1]

    def peek(self):
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def expect(self, value):
        got = self.next()
        if got != value:
            raise ValueError(f"caffe.proto: expected {value!r}, read {got!r} (token {self.i})")


def _parse_enum(r, enum):
    enum.name = r.next()
    r.expect("{")
    while r.peek() != "}":
        if r.peek() == ";":
            r.next()
            continue
        value = enum.value.add(name=r.next())
        r.expect("=")
        value.number = int(r.next())
        while r.next() != ";":
            pass
    r.next()


def _parse_message(r, msg, fields):
    """Fields are left with their type as written; (field, scope) pairs go to `fields` for resolution."""
    msg.name = r.next()
    r.expect("{")
    while r.peek() != "}":
        word = r.next()
        if word == ";":
            continue
        if word == "message":
            _parse_message(r, msg.nested_type.add(), fields)
        elif word == "enum":
            _parse_enum(r, msg.enum_type.add())
        elif word in _LABELS:
            f = msg.field.add(label=_LABELS[word])
            kind, f.name = r.next(), r.next()
            r.expect("=")
            f.number = int(r.next())
            if r.peek() == "[":
                r.next()
                while True:
                    option = r.next()
                    r.expect("=")
                    value = r.next()
                    if option == "default":
                        f.default_value = value
                    elif option == "packed":
                        f.options.packed = value == "true"
                    elif option == "deprecated":
                        f.options.deprecated = value == "true"
                    if r.next() == "]":
                        break
            r.expect(";")
            fields.append((f, kind))
        else:
            raise ValueError(f"caffe.proto: unexpected {word!r} in message {msg.name}")
    r.next()


def file_descriptor_proto(text=None):
    """caffe.proto (or `text`) as a FileDescriptorProto."""
    from google.protobuf import descriptor_pb2
    if text is None:
        with open(PROTO) as f:
            text = f.read()
    r = _Reader(text)
    fdp = descriptor_pb2.FileDescriptorProto(name="yaffe/caffe.proto", syntax="proto2")
    pending = []  # (field, its type as written)
    while r.peek() is not None:
        word = r.next()
        if word == "syntax":
            r.expect("=")
            r.next()
            r.expect(";")
        elif word == "package":
            fdp.package = r.next()
            r.expect(";")
        elif word == "message":
            fields = []
            _parse_message(r, fdp.message_type.add(), fields)
            pending.extend(fields)
        elif word == "enum":
            _parse_enum(r, fdp.enum_type.add())
        elif word != ";":
            raise ValueError(f"caffe.proto: unexpected {word!r} at the top level")
    kinds, owner = {}, {}  # full name -> 11 (message) or 14 (enum); id(field) -> its message's full name

    def walk(prefix, messages, enums):
        for e in enums:
            kinds[f"{prefix}.{e.name}"] = 14
        for m in messages:
            name = f"{prefix}.{m.name}"
            kinds[name] = 11
            for f in m.field:
                owner[id(f)] = name
            walk(name, m.nested_type, m.enum_type)
    walk("." + fdp.package, fdp.message_type, fdp.enum_type)
    for f, kind in pending:
        if kind in _SCALARS:
            f.type = _SCALARS[kind]
            continue
        scope = owner[id(f)]
        while True:  # the innermost enclosing scope that defines the name
            candidate = f"{scope}.{kind}"
            if candidate in kinds or scope == "":
                break
            scope = scope.rsplit(".", 1)[0]
        if candidate not in kinds:
            raise ValueError(f"caffe.proto: field {f.name}: unknown type {kind}")
        f.type, f.type_name = kinds[candidate], candidate
    return fdp


def build():
    """{name: message class, top-level enum wrapper, or top-level enum value} of caffe.proto, or None when the
    protobuf package is not installed (or too old to build classes at run time)."""
    try:
        from google.protobuf import descriptor_pool, message_factory
        from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
    except ImportError:
        return None
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file_descriptor_proto().SerializeToString())
    fd = pool.FindFileByName("yaffe/caffe.proto")
    get = getattr(message_factory, "GetMessageClass", None)
    if get is None:  # protobuf < 4.21
        get = message_factory.MessageFactory(pool).GetPrototype
    out = {}
    for name, desc in fd.message_types_by_name.items():
        out[name] = get(desc)
    for name, desc in fd.enum_types_by_name.items():
        out[name] = EnumTypeWrapper(desc)
        for value in desc.values:
            out[value.name] = value.number
    return out
