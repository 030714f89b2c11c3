"""The layer library: one module per family, registered by Caffe type name."""
import os

# Numba's parallel kernels run on OpenMP threads; by default they spin after each kernel and steal the cores
# from the BLAS threads of the next matrix product (3x slower LeNet). Passive waiting gives them back.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .base import REGISTRY, Blob, Field, Layer, layer_class, register, resolve  # noqa: F401
from . import common, conv, data, inner_product, loss, lrn, neuron, normalization, pooling, shape, softmax, split  # noqa: F401  (registers)
