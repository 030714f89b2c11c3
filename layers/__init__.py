"""The layer library: one module per family, registered by Caffe type name."""
from . import jit  # noqa: F401  (first: Numba compiles the parallel kernels' wrappers once)
from .base import REGISTRY, Blob, Field, Layer, layer_class, register, resolve  # noqa: F401
from . import common, conv, data, inner_product, loss, lrn, neuron, normalization, pooling, python, recurrent, shape, softmax, split  # noqa: F401,E501  (registers)
