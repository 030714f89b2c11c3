"""Caffe's Python layer: `type: Python`, `python_param {module, layer, param_str}`, a class of the user's with
setup/reshape/forward/backward on pycaffe-style blobs (`.data`, `.diff`, `.shape`, `.count`, `.reshape(...)`).

The class subclasses `caffe.Layer`, as in Caffe: where pycaffe itself is not installed, `import caffe` gives a
small stand-in (Layer, TRAIN, TEST), so a Caffe user's module runs unchanged. The module is imported from the
Python path, the net file's folder or the working directory. Its top shapes are what its reshape() sets, asked
once at setup on zero-filled stand-ins of the bottoms (shapes are fixed for the run: a reshape to another shape
at a later batch is an error). Running user code is the point of this layer: a net only runs what it names.
"""
from __future__ import annotations

import importlib
import os
import sys
import types

import numpy as np

from netspec.errors import LayerError
from .base import Field, Layer, register

TRAIN, TEST = 0, 1  # caffe.TRAIN, caffe.TEST


class PythonLayerBase:
    """caffe.Layer where pycaffe is not installed: what a Python layer's class derives from."""

    def __init__(self, *args, **kwargs):
        self.blobs = []


def _caffe_module():
    """Make `import caffe` work in user modules: pycaffe if it is installed, else the stand-in."""
    if "caffe" in sys.modules:
        return
    try:
        importlib.import_module("caffe")
    except ImportError:
        shim = types.ModuleType("caffe", "yaffe's stand-in for pycaffe inside Python layers")
        shim.Layer, shim.TRAIN, shim.TEST = PythonLayerBase, TRAIN, TEST
        sys.modules["caffe"] = shim


class PyBlob:
    """A pycaffe-style view of a blob: the arrays themselves (writes reach the net), or a stand-in at setup."""

    def __init__(self, data, diff, fixed: bool):
        self._data, self._diff, self._fixed = data, diff, fixed

    @property
    def data(self):
        return self._data

    @property
    def diff(self):
        return self._diff

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def count(self):
        return int(self._data.size)

    def _axis(self, i):
        return self.shape[i] if len(self.shape) > i else 1

    num = property(lambda self: self._axis(0))
    channels = property(lambda self: self._axis(1))
    height = property(lambda self: self._axis(2))
    width = property(lambda self: self._axis(3))

    def reshape(self, *shape):
        shape = tuple(int(s) for s in (shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list))
                                       else shape))
        if shape == self.shape:
            return
        if self._fixed:
            raise LayerError(f"its reshape() asks for {list(shape)} where the net holds {list(self.shape)}: shapes "
                             "are fixed for a run in yaffe (set them in setup/reshape from the bottoms' shapes)",
                             "python_param.layer")
        self._data, self._diff = np.zeros(shape, self._data.dtype), np.zeros(shape, self._data.dtype)


@register("Python")
class Python(Layer):
    """Bottoms and tops as the user's class wants them (any number)."""

    param_block = "python_param"
    fields = (
        Field("module", "str", None, "the Python module holding the layer's class", required=True),
        Field("layer", "str", None, "the class's name", required=True),
        Field("param_str", "str", "", "passed to the class as self.param_str"),
        Field("share_in_parallel", "bool", False, "Caffe's multi-GPU flag (no effect)"),
    )
    bottoms = (0, None)
    tops = (0, None)
    backward_reads = ("bottom", "top")
    base_dir = "."

    def batch_coupling(self):
        return "yaffe cannot tell whether a Python layer mixes the examples of a batch"

    def _instance(self):
        _caffe_module()
        p = self.p
        for folder in (os.getcwd(), self.base_dir, getattr(self, "net_dir", self.base_dir)):
            if folder not in sys.path:
                sys.path.append(folder)
        try:
            cls = getattr(importlib.import_module(p.module), p.layer)
        except ImportError as e:
            raise LayerError(f"cannot import module {p.module!r} ({e}); put it on PYTHONPATH or beside the net "
                             "file", "python_param.module") from None
        except AttributeError:
            raise LayerError(f"module {p.module!r} has no class {p.layer!r}", "python_param.layer") from None
        if not isinstance(cls, type):
            raise LayerError(f"{p.module}.{p.layer} is not a class; name a class with setup, reshape, forward and "
                             "backward (a caffe.Layer)", "python_param.layer")
        try:
            try:
                inst = cls(self.spec)
            except TypeError:
                inst = cls()
        except Exception as e:  # noqa: BLE001: the user's constructor
            raise LayerError(f"{p.module}.{p.layer}() raised {type(e).__name__}: {e}", "python_param.layer") from None
        inst.param_str, inst.phase = p.param_str or "", TRAIN if self.phase == "TRAIN" else TEST
        if not hasattr(inst, "blobs"):
            inst.blobs = []
        return inst

    def _call(self, what, *args):
        try:
            return getattr(self.inst, what)(*args)
        except LayerError:
            raise
        except Exception as e:  # noqa: BLE001: the user's code; name the layer and the method
            raise LayerError(f"its {what}() raised {type(e).__name__}: {e}", "python_param.layer") from None

    def setup(self, bottom_shapes):
        self.inst = self._instance()
        bottoms = [PyBlob(np.zeros(s, self.dtype), np.zeros(s, self.dtype), True) for s in bottom_shapes]
        tops = [PyBlob(np.zeros((), self.dtype), np.zeros((), self.dtype), False) for _ in range(self.n_tops)]
        self._call("setup", bottoms, tops)
        self._call("reshape", bottoms, tops)
        return [t.shape for t in tops]

    @staticmethod
    def _wrap(blobs):
        return [PyBlob(b.data, b.diff, True) for b in blobs]

    def forward(self, bottom, top):
        b, t = self._wrap(bottom), self._wrap(top)
        self._call("reshape", b, t)  # as Caffe calls Reshape before every Forward
        self._call("forward", b, t)

    def backward(self, top, propagate_down, bottom):
        self._call("backward", self._wrap(top), list(propagate_down), self._wrap(bottom))
