"""Caffe's Python layer: `type: Python`, `python_param {module, layer, param_str}`, a class of the user's with
setup/reshape/forward/backward on pycaffe-style blobs (`.data`, `.diff`, `.shape`, `.count`, `.reshape(...)`).

The class subclasses `caffe.Layer`, as in Caffe: where pycaffe itself is not installed, `import caffe` gives a
small stand-in (Layer, TRAIN, TEST), so a Caffe user's module runs unchanged. The module is imported from the
Python path, the net file's folder or the working directory. Its top shapes are what its reshape() sets: asked
at setup on zero-filled stand-ins of the bottoms, and before every forward (a new shape reshapes the layers
above, as in Caffe). Learnable blobs come from `self.blobs.add_blob(*shape)` in setup. yaffe's additions: a class
may declare `fields` (yaffe Fields) to have its param_str read as YAML and checked (`self.params`), and
`per_example = True` to let a batch run as slices on several threads (its calls are serialized). Running user code is the point of this layer: a net only runs what it names.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import types

import numpy as np

import jsonschema
import yaml

from netspec.errors import LayerError, did_you_mean
from .base import Field, Layer, register, resolve

_LOCKS: dict = {}  # one lock per user class: its code runs one call at a time when a batch runs as slices

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
        try:
            import yaffe  # pycaffe's interface: caffe.Layer, caffe.TRAIN, caffe.io, ... (and caffe.io, caffe.proto
            yaffe.install_as_caffe()  # as modules: the same objects as yaffe's)
        except ImportError:  # the layers package used alone
            shim = types.ModuleType("caffe", "yaffe's stand-in for pycaffe inside Python layers")
            shim.Layer, shim.TRAIN, shim.TEST = PythonLayerBase, TRAIN, TEST
            sys.modules["caffe"] = shim


class PyBlob:
    """A pycaffe-style view of a blob: the net's arrays themselves (writes reach the net). A top's reshape() gives
    the blob new arrays and the net reshapes the layers above (Net.reshape); a bottom's is an error."""

    def __init__(self, blob, fixed: bool):
        self._blob, self._fixed = blob, fixed

    @property
    def data(self):
        return self._blob.data

    @data.setter
    def data(self, value):
        self._blob.data[...] = value

    @property
    def diff(self):
        return self._blob.diff

    @diff.setter
    def diff(self, value):
        self._blob.diff[...] = value

    @property
    def shape(self):
        return tuple(self._blob.data.shape)

    @property
    def count(self):
        return int(self._blob.data.size)

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
            raise LayerError(f"its code reshapes a bottom or a learnable blob to {list(shape)} (it is "
                             f"{list(self.shape)}); reshape only tops, and learnable blobs in setup", "python_param.layer")
        dtype = self._blob.data.dtype
        self._blob.data, self._blob.diff = np.zeros(shape, dtype), np.zeros(shape, dtype)


class _Arrays:
    """Stand-in storage of a blob before the net allocates it (setup's bottoms and tops, add_blob's blobs)."""

    def __init__(self, shape, dtype):
        self.data, self.diff = np.zeros(shape, dtype), np.zeros(shape, dtype)


class BlobVec:
    """pycaffe's `self.blobs` of a Python layer: add_blob(*shape) in setup gives a learnable blob (lr_mult and
    decay_mult from the layer's `param` entries, as any layer's); its values as setup leaves them are the
    initial weights, then the net's blob (snapshotted and updated by the solver) stands behind it."""

    def __init__(self, layer):
        self._layer, self._staged = layer, []

    def add_blob(self, *shape):
        shape = tuple(int(s) for s in (shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list))
                                       else shape))
        self._staged.append(_Arrays(shape, self._layer.dtype))

    def _blob(self, i):
        real = self._layer.blobs
        return PyBlob(real[i] if i < len(real) else self._staged[i], True)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._blob(k) for k in range(len(self))[i]]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"layer has {len(self)} blobs")
        return self._blob(i)

    def __len__(self):
        return len(self._staged)

    def __iter__(self):
        return (self._blob(i) for i in range(len(self)))


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
        if getattr(getattr(self, "inst", None), "per_example", False):
            return None  # the class says each example's output depends on that example alone
        return ("yaffe cannot tell whether a Python layer mixes the examples of a batch (a class whose outputs "
                "depend on each example alone can say so: per_example = True)")

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
        inst.blobs = BlobVec(self)
        if getattr(cls, "fields", None):
            inst.params = self._checked_params(cls.fields)
        self.lock = _LOCKS.setdefault(cls, threading.Lock())
        return inst

    def _checked_params(self, fields):
        """A class's yaffe Fields check its param_str, read as YAML ({lr: 0.1, mode: fast}): the values, with the
        declared defaults, as `self.params` (a namespace); a mistake is a LayerError with did-you-mean."""
        text = self.p.param_str or ""
        try:
            given = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as e:
            raise LayerError(f"param_str {text!r} is not YAML ({getattr(e, 'problem', e)}); write it as "
                             "{name: value, ...}", "python_param.param_str") from None
        if not isinstance(given, dict):
            raise LayerError(f"param_str {text!r} must be a mapping {{name: value, ...}} for the fields "
                             f"{', '.join(f.name for f in fields)}", "python_param.param_str")
        from netspec.schema import block_schema
        errors = sorted(jsonschema.Draft202012Validator(block_schema(fields)).iter_errors(given),
                        key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            e, names = errors[0], [f.name for f in fields]
            if e.validator == "additionalProperties":
                key = next(k for k in e.instance if k not in names)
                message = f"unknown field '{key}'{did_you_mean(key, names)} (fields: {', '.join(names)})"
            else:
                field = ".".join(map(str, e.absolute_path))
                message = f"{field + ': ' if field else ''}{e.message}"
            raise LayerError(f"param_str: {message}", "python_param.param_str")
        return resolve(fields, given)

    def _call(self, what, *args):
        try:
            return getattr(self.inst, what)(*args)
        except LayerError:
            raise
        except Exception as e:  # noqa: BLE001: the user's code; name the layer and the method
            error = LayerError(f"its {what}() raised {type(e).__name__}: {e}", "python_param.layer")
            error.original = e  # pycaffe's interface raises the user's exception itself (yaffe/pycaffe.py)
            raise error from None

    def _stand_ins(self, bottom_shapes):
        try:
            bottoms = [PyBlob(_Arrays(s, self.dtype), True) for s in bottom_shapes]
        except MemoryError:  # NOTE: zeros are mapped lazily, so only a shape beyond the address space gets here
            big = max(bottom_shapes, key=lambda s: float(np.prod(s, dtype=np.float64)))
            gib = float(np.prod(big, dtype=np.float64)) * np.dtype(self.dtype).itemsize / 2 ** 30
            raise LayerError(f"a bottom of shape {list(big)} ({gib:.3g} GiB) does not fit in memory, and a Python "
                             "layer's setup and reshape are given arrays of its bottoms' shapes; lower the shape "
                             "(batch size, dims) where the blob is made", "bottom") from None
        return bottoms, [PyBlob(_Arrays((), self.dtype), False) for _ in range(self.n_tops)]

    def setup(self, bottom_shapes):
        self.inst = self._instance()
        bottoms, tops = self._stand_ins(bottom_shapes)
        self._call("setup", bottoms, tops)
        self._call("reshape", bottoms, tops)
        # learnable blobs: their values after setup are the initial weights
        self.blob_shapes = [(b.data.shape, {"type": "constant", "array": b.data}) for b in self.inst.blobs._staged]
        return [t.shape for t in tops]

    def reshape_tops(self, bottom_shapes):
        bottoms, tops = self._stand_ins(bottom_shapes)
        self._call("reshape", bottoms, tops)
        return [t.shape for t in tops]

    reshapes = True  # its reshape() may give the tops another shape at any batch; the net follows

    def forward(self, bottom, top):
        b, t = [PyBlob(x, True) for x in bottom], [PyBlob(x, False) for x in top]
        with self.lock:  # the slices of a batch share the class: one call at a time
            self._call("reshape", b, t)  # as Caffe calls Reshape before every Forward
            self._call("forward", b, t)

    def backward(self, top, propagate_down, bottom):
        with self.lock:
            self._call("backward", [PyBlob(x, True) for x in top], list(propagate_down),
                       [PyBlob(x, True) for x in bottom])
