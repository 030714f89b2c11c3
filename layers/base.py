"""The layer contract, parameter declarations and the registry by Caffe type name.

Contract (as in Caffe's layer.hpp, with brainstorm's pure shape setup):

* ``__init__`` only stores the resolved parameters; no work.
* ``setup(bottom_shapes) -> top_shapes`` is pure and cheap: it checks the parameters
  against the bottom shapes (raising `LayerError`), fills ``self.blob_shapes`` with the
  ``(shape, filler)`` of each learnable blob, and returns the top shapes. The net can
  therefore infer every shape of a spec before any data is read.
* ``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)`` work on `Blob`s.
  Parameter diffs *accumulate* (``+=``); bottom diffs are *overwritten* (``=``). The net
  zeroes parameter diffs once per iteration.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from netspec.errors import LayerError, UserError, did_you_mean
from .cpu import sync_total


class Blob:
    """A named pair of arrays: ``data`` (values) and ``diff`` (gradient of the loss)."""

    __slots__ = ("name", "data", "diff", "offset")

    def __init__(self, name, shape, dtype=np.float32):
        self.name = name
        self.data = np.zeros(shape, dtype)
        self.diff = np.zeros(shape, dtype)
        self.offset = 0  # where its first value sits in the whole batch's blob (a replica's slice: solvers/replicas.py)

    @property
    def shape(self):
        return self.data.shape

    @property
    def count(self):
        return self.data.size

    def reshape(self, *shape):
        """New zero-filled data and diff of this shape (Caffe's Blob::Reshape); `Net.reshape()` then follows."""
        shape = tuple(int(v) for v in (shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list))
                                       else shape))
        if shape != self.data.shape:
            self.data, self.diff = np.zeros(shape, self.data.dtype), np.zeros(shape, self.data.dtype)

    def __repr__(self):
        return f"Blob({self.name!r}, {self.shape})"


class SharedBlob(Blob):
    """A replica's handle on another net's learnable blob (solvers/replicas.py): the owner's data, and its own
    diff, or the owner's diff when own_diff is False."""

    __slots__ = ("owner", "own")

    def __init__(self, owner: Blob, own_diff: bool):
        self.owner, self.name = owner, owner.name
        self.own = np.zeros(owner.data.shape, owner.data.dtype) if own_diff else None

    @property
    def data(self):
        return self.owner.data

    @property
    def diff(self):
        return self.owner.diff if self.own is None else self.own

    @diff.setter
    def diff(self, value):  # `blob.diff += g` assigns the same array back
        if self.own is None:
            self.owner.diff = value
        else:
            self.own = value


class BatchSync:
    """Sums a layer's per-channel partial sums over the k slices of a batch (solvers/replicas.py), so that each
    slice sees the whole batch's: slice r puts its part in row r, all wait (spinning: layers/cpu.sync_total), each
    adds the rows in the same order (the same result in every slice). `which` picks one of three buffers (of
    `size` values; a part may be shorter): a buffer is written again only after a later wait, which every slice
    reaches after reading it. abort() breaks the wait of the others when a slice fails; reset() makes it usable
    again."""

    def __init__(self, k: int, size: int):
        self.k = k
        self.parts = np.zeros((3, k, size))
        self.flags = np.zeros(8 * (k + 1), np.int64)  # slice r's generation at [8 * r], the abort at [8 * k]
        self.generation = [0] * k

    def total(self, r: int, which: int, part: np.ndarray) -> np.ndarray:
        self.generation[r] += 1
        out = sync_total(self.parts, self.flags, r, self.generation[r], which, part)
        if out is None:
            raise threading.BrokenBarrierError
        return out

    def abort(self):
        self.flags[8 * self.k] = 1

    def reset(self):
        self.flags[...] = 0
        self.generation = [0] * self.k


@dataclass(frozen=True)
class Field:
    """One parameter of a layer's block (e.g. ``convolution_param.kernel_size``).

    kind: "int", "float", "bool", "str", "enum" (with choices), "filler", "shape" (BlobShape),
    "any". repeated: Caffe's repeated field; a scalar is accepted as a one-element list.
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    exclusive_maximum: float | None = None
    choices: tuple = ()
    repeated: bool = False
    required: bool = False


def resolve(fields, given: dict | None) -> SimpleNamespace:
    """Resolved parameters: declared defaults, overridden by `given`; repeated fields become lists."""
    given = given or {}
    out = {}
    for f in fields:
        value = given.get(f.name, f.default)
        if f.repeated:
            value = [] if value is None else list(value) if isinstance(value, list) else [value]
        out[f.name] = value
    return SimpleNamespace(**out)


class Layer:
    """Base class; see the module docstring for the contract."""

    type = "Layer"
    param_block: str | None = None  # e.g. "convolution_param"
    fields: tuple = ()              # Field declarations of param_block
    bottoms = (1, 1)                # min, max number of bottoms (None = any)
    tops = (1, 1)
    is_loss = False                 # a loss layer: its first top gets loss_weight 1 by default
    is_data = False                 # produces data from a source; has no bottoms
    differentiable = True           # False: backward is never needed (Accuracy, data layers)
    needs_rng = False               # gets its own seeded random generator (snapshotted)
    statistics = False              # blobs are statistics, not weights: lr_mult/decay_mult 0
    blocked_bottoms = ()            # bottoms that never receive a gradient (labels, indices)
    in_place_ok = False             # may run with top == bottom
    # The data its backward reads: "bottom" (the values its forward read), "top" (the values its forward wrote),
    # both or neither (saved state of its own, e.g. masks). Where a later layer (in place, or through a view)
    # overwrites what is read, the net keeps a copy for the backward (netspec/inplace.py), as Caffe's layers
    # keep x_norm_, temp_, bottom_memory_. Declare the least that is true: a wrong declaration gives wrong
    # gradients, which tests/test_in_place.py catches by scribbling over what is not declared.
    backward_reads: tuple = ("bottom", "top")
    other_blocks: dict = {}         # other parameter blocks it reads: {block name: fields}
    reshapes = False                # its forward may give its tops another shape (the net then reshapes above)

    def __init__(self, name: str, params: SimpleNamespace, phase: str = "TRAIN",
                 dtype=np.float32, layer_spec: dict | None = None):
        self.name = name
        self.p = params
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.spec = layer_spec or {}
        self.n_tops = len(self.spec.get("top", [])) or 1
        self.blob_shapes: list = []  # [(shape, filler dict)] filled by setup
        self.blobs: list[Blob] = []  # created by the net from blob_shapes
        self.rng: np.random.Generator | None = None  # set by the net for layers that need one
        self.warnings: list = []     # (message, field) that setup found suspicious but not wrong

    def setup(self, bottom_shapes):
        raise NotImplementedError

    def reshape_tops(self, bottom_shapes):
        """The top shapes for bottoms of new shapes (Caffe's Reshape), after setup; the parameters and learnable
        blob shapes stay as setup made them. Most layers simply run setup again."""
        return self.setup(bottom_shapes)

    def check(self):
        """The checks of the parameters that need no shapes (raising LayerError), also run where the graph cannot
        be built (an unknown type elsewhere), so that one error does not hide the others. setup calls it too."""

    def forward(self, bottom, top):
        raise NotImplementedError

    def bound_forward(self, bottom, top):
        """For a forward-only net whose weights and shapes stay (Net._bound_calls: run.py predict and test, a
        deploy net): a callable of no arguments that runs this layer's forward on these blobs as they are now,
        with what can be worked out once worked out (a convolution's kernels and their arrays), or None: the net
        then calls forward(). Only what `fold` and `relu` say now may be used: they are unset after this."""
        return None

    def backward(self, top, propagate_down, bottom):
        if self.differentiable:
            raise NotImplementedError
        raise LayerError(f"{self.type} layer '{self.name}' has no backward")

    @property
    def draws(self) -> bool:
        """Its passes draw from `rng` (the replicas give each slice a generator seeded from it every pass)."""
        return self.needs_rng

    @property
    def is_source(self) -> bool:
        """Fills batch-shaped tops from outside the net: a data layer, or Input (set from Python)."""
        return self.is_data or self.type == "Input"

    syncable = False  # its batch coupling can be undone by summing over the slices (BatchSync): BatchNorm

    def batch_coupling(self) -> str | None:
        """Why this layer cannot run a batch as slices on several threads (solvers/replicas.py), or None: its
        tops for the whole batch must be its tops for the slices side by side, and a loss the slices' mean."""
        if getattr(self, "axis", None) == 0:
            return "it works along axis 0, across the examples of the batch"
        mode, ignore = getattr(self, "mode", None), getattr(self, "ignore", getattr(self.p, "ignore_label", None))
        if mode == "NONE":
            return "its loss is the sum over the batch (normalization: NONE), not a mean"
        if ignore is not None and mode in ("VALID", None):
            return "with ignore_label it divides by the valid labels of the whole batch"
        return None

    def release_buffers(self) -> None:
        """Drop the scratch arrays this layer keeps between passes (remade by the next pass)."""

    # Layers with state beyond their blobs (data cursors) override these for snapshots.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self):
        return f"{self.type}({self.name!r})"


REGISTRY: dict[str, type] = {}


def register(type_name: str):
    """Class decorator: ``@register("InnerProduct")``. Registering a name twice is an error."""

    def deco(cls):
        if type_name in REGISTRY:
            raise RuntimeError(f"layer type '{type_name}' registered twice "
                               f"({REGISTRY[type_name].__module__} and {cls.__module__})")
        cls.type = type_name
        REGISTRY[type_name] = cls
        return cls

    return deco


def layer_class(type_name: str):
    try:
        return REGISTRY[type_name]
    except KeyError:
        raise UserError(f"unknown layer type '{type_name}'{did_you_mean(type_name, REGISTRY)} "
                        f"(known types: {', '.join(sorted(REGISTRY))})") from None


def count(shape, start=0, end=None) -> int:
    return int(np.prod(shape[start:end], dtype=np.int64))


def check_positive(value, field, what="must be > 0"):
    if value is None or value <= 0:
        raise LayerError(f"{field} {what}; received {field.split('.')[-1]}={value}", field)


def dims(shape) -> tuple:
    """The dims of a BlobShape ({dim: [...]}, or {dim: n} for one dim) as a tuple."""
    d = shape.get("dim", []) if isinstance(shape, dict) else []
    return tuple(d) if isinstance(d, list) else (d,)
