"""pycaffe's caffe_pb2: Caffe's messages. With the protobuf package installed (it comes with the onnx extra), the
classes of caffe.proto itself, built at first use (descriptor.py): every message (NetParameter, LayerParameter,
SolverParameter, BlobProto, Datum, ...), its defaults and enums, and `google.protobuf.text_format` reads and writes
them, so scripts that edit prototxt as messages run as with Caffe. Without protobuf, the hand-written BlobShape,
BlobProto, BlobProtoVector, Datum, NetState and SolverParameter of plain.py (mean files, records, solvers).

    from google.protobuf import text_format
    net = caffe_pb2.NetParameter(); text_format.Merge(open("train_val.prototxt").read(), net)
    net.layer[0].transform_param.crop_size = 200; open("edited.prototxt", "w").write(str(net))
"""
from __future__ import annotations

_classes = None


def _load():
    global _classes
    if _classes is None:
        from . import descriptor, plain
        try:
            _classes = descriptor.build()
        except Exception as e:  # noqa: BLE001: a protobuf release that refuses the descriptor: the subset still works
            import warnings
            warnings.warn(f"caffe_pb2: this protobuf could not build caffe.proto's classes ({type(e).__name__}: {e}); "
                          "using yaffe's hand-written BlobProto, Datum and SolverParameter", stacklevel=2)
        _classes = _classes or plain.CLASSES
    return _classes


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return _load()[name]
    except KeyError:
        raise AttributeError(f"caffe_pb2 has no {name!r}" + ("" if len(_load()) > 10 else
                             ": without the protobuf package only BlobShape, BlobProto, BlobProtoVector, Datum, "
                             "NetState and SolverParameter; pip install protobuf for the rest")) from None


def __dir__():
    return sorted(_load())
