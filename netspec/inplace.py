"""Keep what each backward reads when a later layer overwrites it.

In place, a layer's top is its bottom's blob, and a Split's, Flatten's or Reshape's top shares its bottom's
data; so one storage holds a chain of values, each written over the last. A layer whose backward reads its
bottom or top data (`Layer.backward_reads`) gets, where a later layer (or itself, in place) writes that
storage, a copy of the value made right after it was complete, and its backward sees a stand-in blob: the
copy as data, the real diff. This is what Caffe's layers do by hand (BatchNorm's x_norm_, Scale's temp_,
PReLU's bottom_memory_), done once for every layer, so no chain gives a wrong gradient, including the two
Caffe gets wrong (ELU or TanH in place below BatchNorm). One value is copied once however many layers read
it: BatchNorm's normalized top is also the bottom of the in-place Scale above it.

The plan works on names and shapes only, so `run.py validate --summary` reports the memory it keeps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from layers.base import Blob


@dataclass
class Plan:
    """keeps[i]: blob names whose data is copied right after layer i's forward, into buffer keeps[i][j][1];
    reads[k]: {blob name: buffer} that layer k's backward reads instead of the blob's data;
    sizes[b]: (blob name, shape) of buffer b."""

    keeps: dict = field(default_factory=dict)
    reads: dict = field(default_factory=dict)
    sizes: list = field(default_factory=list)

    def bytes(self, itemsize: int) -> int:
        return sum(math.prod(s) for _, s in self.sizes) * itemsize


def plan(defs, layers, shapes, need_backward) -> Plan:
    """The copies a net needs: defs/layers in order, shapes {blob: shape}, need_backward[k] per layer."""
    storage, writers = {}, {}  # blob name -> storage id; storage id -> indices of the layers that write it
    for k, (d, layer) in enumerate(zip(defs, layers)):
        for j, t in enumerate(d.tops):
            if d.in_place(j) is not None:
                pass                                         # in place: writes its bottom's storage
            elif d.type == "Split" or getattr(layer, "shares_bottom", False):
                storage[t] = storage[d.bottoms[0]]           # the same values, nothing written
                continue
            else:
                storage[t] = len(writers)
                writers[storage[t]] = []
            writers[storage[t]].append(k)
    out = Plan()
    buffers = {}  # (storage, last writer) -> buffer index
    for k, (d, layer) in enumerate(zip(defs, layers)):
        if not need_backward[k]:
            continue
        reads = layer.backward_reads
        wanted = {}  # blob name -> (storage, the writer whose value the backward needs)
        for kind, names in (("bottom", d.bottoms), ("top", d.tops)):
            if kind not in reads:
                continue
            for name in names:
                s = storage[name]
                done = [m for m in writers[s] if (m < k if kind == "bottom" else m <= k)]
                later = [m for m in writers[s] if (m >= k if kind == "bottom" else m > k)]
                if not later or not done:
                    continue
                key = (s, done[-1])
                if wanted.get(name, key) != key:
                    raise RuntimeError(f"layer '{d.name}' ({d.type}) runs in place and its backward reads both its "
                                       "bottom and its top data: it cannot be in_place_ok")
                wanted[name] = key
        for name, key in wanted.items():
            if key not in buffers:
                buffers[key] = len(out.sizes)
                out.sizes.append((name, tuple(shapes[name])))
                out.keeps.setdefault(key[1], []).append((name, buffers[key]))
            out.reads.setdefault(k, {})[name] = buffers[key]
    return out


def allocate(p: Plan, blobs: dict, dtype, reuse: dict | None = None):
    """(keeps {i: [(source array, copy)]}, stand-ins {k: {blob name: Blob}}, the buffers) for a net's blobs.
    reuse: {(blob name, shape): [buffers]} of an earlier plan, kept where they fit (a reshape in the middle of a
    forward keeps the copies already made below it)."""
    reuse = {k: list(v) for k, v in (reuse or {}).items()}
    arrays = [reuse[(name, shape)].pop(0) if reuse.get((name, shape)) else np.empty(shape, dtype)
              for name, shape in p.sizes]
    keeps = {i: [(blobs[name].data, arrays[b].reshape(blobs[name].data.shape)) for name, b in entries]
             for i, entries in p.keeps.items()}
    stand_ins = {}
    for k, names in p.reads.items():
        stand_ins[k] = {}
        for name, b in names.items():
            real = blobs[name]
            blob = Blob(real.name, (), dtype)
            blob.data, blob.diff, blob.offset = arrays[b].reshape(real.data.shape), real.diff, real.offset
            stand_ins[k][name] = blob
    return keeps, stand_ins, arrays
