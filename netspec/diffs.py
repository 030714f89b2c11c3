"""Blob diffs that share memory by lifetime in the backward (as PyTorch frees a gradient once it is used).

Caffe keeps a diff array for every blob, alive for the whole run, so a training net holds its activations' size
twice over (ResNet-20 at batch 128: 142 MiB of data, 238 MiB of diffs with its Splits'). Within one backward a
blob's diff is written by the backward of the layer that reads the blob (one reader: Caffe's Splits make it so;
in place, each layer of a chain reads and writes it again) and read last by the backward of the layer that made
it; before and after, nothing reads it: every layer's backward overwrites its bottoms' diffs (=, never +=;
tests/test_gradients.py checks each type). Diffs whose spans in the backward do not meet can hold one array.

Left alone (their own arrays, as in Caffe): diffs that no layer writes (zeros read by a layer whose top nothing
uses), loss tops (seeded with their weights before the backward: shared from the start), the bottoms of losses
(small; the watch compares the gradient each loss sends after the pass) and of Python layers (user code may
leave them unwritten), and the nets where a diff is read after the backward (debug_info, force_backward, a
user's net.blobs[...].diff) or written outside it (sequences split along N copy their diffs out after their
slice's backward): `Net.share_diffs` is called by the trainer for its TRAIN net (and by the training benchmark,
which runs a net as the trainer does), where none of that holds.
"""
from __future__ import annotations

import numpy as np


def storages(layers, top_vecs, bottom_vecs) -> dict:
    """{id(blob): the blob whose diff array it uses}: in place the same blob, a Flatten's or Reshape's top a view
    of its bottom's (`shares_bottom`). From the graph, not from the arrays: a slice's diffs are views of the
    whole net's until it shares its own."""
    root: dict = {}
    for layer, bottoms, tops in zip(layers, bottom_vecs, top_vecs):
        for blob in bottoms + tops:
            root.setdefault(id(blob), blob)
        if getattr(layer, "shares_bottom", False) and bottoms:
            for t in tops:
                if t is not bottoms[0]:
                    root[id(t)] = root[id(bottoms[0])]
    return root


def plan(layers, top_vecs, bottom_vecs, need_backward, propagate, loss_blobs) -> list[list]:
    """[[[blobs of a storage], ...], ...]: each group the storages (a blob with its in-place and view twins) whose
    diffs may take one array, in the order of their spans in the backward. Groups of one are left out."""
    root = storages(layers, top_vecs, bottom_vecs)

    def storage(blob):
        return id(root.get(id(blob), blob))

    members: dict = {}   # storage -> {id(blob): blob}
    span: dict = {}      # storage -> [lo, hi], layer indices: live while the backward runs from hi down to lo
    private: set = set()
    count = len(layers)
    for blob, _ in loss_blobs:
        s = storage(blob)
        span[s] = [count, count]
    for k in range(count):
        for blob in top_vecs[k] + bottom_vecs[k]:
            members.setdefault(storage(blob), {})[id(blob)] = blob
        for blob, p in zip(bottom_vecs[k], propagate[k]) if need_backward[k] else ():  # written here
            if p:
                s = storage(blob)
                lo, hi = span.get(s, (k, k))
                span[s] = [min(lo, k), max(hi, k)]
    for k in range(count):
        for blob in top_vecs[k] if need_backward[k] else ():  # read here
            s = storage(blob)
            if s not in span:
                private.add(s)  # read, never written: zeros (a top that nothing uses)
                continue
            span[s][0] = min(span[s][0], k)
    for blob, _ in loss_blobs:
        private.add(storage(blob))
    for layer, bottoms in zip(layers, bottom_vecs):
        # what each loss sends back: read after the pass (Watch); a Python layer's: its backward may leave them
        # unwritten (`pass`, Caffe's zeros), which yaffe's own layers never do
        for blob in bottoms if layer.is_loss or layer.type == "Python" else ():
            private.add(storage(blob))
    live = sorted((s for s in span if s not in private), key=lambda s: -span[s][1])
    slots: list = []  # [[storages], size in values, lo of its last span (free once the backward passes it)]
    for s in live:
        lo, hi = span[s]
        need = max(b.diff.size for b in members[s].values())
        free = [slot for slot in slots if slot[2] > hi]  # its last span ended before this one begins
        fits = [slot for slot in free if slot[1] >= need]
        slot = min(fits, key=lambda x: x[1]) if fits else max(free, key=lambda x: x[1], default=None)
        if slot is None:
            slot = [[], 0, 0]
            slots.append(slot)
        slot[0].append(s)
        slot[1], slot[2] = max(slot[1], need), lo
    return [[list(members[s].values()) for s in slot[0]] for slot in slots if len(slot[0]) > 1]


# Each storage's diff is centred in its group's array (its start a multiple of ALIGN elements: a cache line of
# float32). The kernels cut a blob by its first axis, the images, half to each of two threads; blobs of different
# sizes laid from the array's start put those halves at different places, so the thread that wrote a part of the
# array for one blob wrote it again for the next from the other thread's half (LeNet: conv1's 2.9 MB diff over
# conv2's 0.8 MB), each cache line crossing between the cores: 0.25 ms more in pool1's backward where the VM puts
# its cores on two L3 caches (benchmarks/README.md). Centred, every blob's half-way cut falls at the array's.
ALIGN = 16


def share(groups: list[list], dtype) -> int:
    """Give the blobs of each group (a list of storages: lists of blobs) views of one array, each storage's
    centred in it (ALIGN); returns the bytes the diffs no longer hold."""
    saved, itemsize = 0, np.dtype(dtype).itemsize
    for group in groups:
        sizes = [max(b.diff.size for b in blobs) for blobs in group]
        buffer = np.zeros(max(sizes), dtype)
        for blobs, size in zip(group, sizes):
            start = (buffer.size - size) // 2 // ALIGN * ALIGN  # centred: see ALIGN
            for b in blobs:
                b.diff = buffer[start:start + b.diff.size].reshape(b.diff.shape)
        saved += (sum(sizes) - buffer.size) * itemsize
    return saved
