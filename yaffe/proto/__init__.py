"""`caffe.proto.caffe_pb2` for scripts that read Caffe's mean files and Datum records (see caffe_pb2)."""
from . import caffe_pb2  # noqa: F401
