"""Data parallelism inside one process: every batch as k slices, one per thread (as MPI ranks, without MPI).

The kernels of one layer scale poorly over threads on a small CPU: im2col, col2im and pooling are memory-bound
and short, and each switch between Numba's threads and OpenBLAS's costs more than it gains (CIFAR-10 quick ran
as fast on one thread as on two). k replicas of the net (`Net.replicate`), each on one thread with one Numba
and one BLAS thread, run the slices side by side instead; the parent net's data layers fill the whole batch
first, the replicas' blobs are row slices of the parent's, their gradients are summed into the parent's diffs,
and the solver, snapshots and tests see the parent alone. Automatically, only nets whose results do not change
are split (no loss summed over the batch, ...): the losses and gradients are those of one pass, up to the order
of float sums. BatchNorm with batch statistics sums its per-channel sums over the slices at three points of a
pass (layers/base.BatchSync), so every slice normalizes with the whole batch's statistics. Dropout draws per
replica, seeded from the parent's stream.
"""
from __future__ import annotations

import queue
import threading

import numba
import numpy as np

from layers.cpu import blas_threads
from netspec.errors import UserError
from netspec.net import Net, NotSplittable, _flush_denormals_once

# Automatic splitting is for nets with large feature maps (convolution, pooling: the memory-bound kernels).
# Nets of matrix products alone run faster with each product cut over the threads (MLP 784-512-512-10: 0.85x
# split), and small maps leave Python's per-layer overhead, under one lock, as the cost (8x8 digits LeNet: 0.85x split).
_open: list = []     # [(OpenBLAS's and Numba's threads before), the open Replicas...]
MIN_SLICE = 8        # examples per replica
# feature-map values per replica: LeNet 28x28 at batch 32 has 590k and runs faster whole on two threads
# (32-byte vectors 9.7-9.9k against 8.7-9.1k img/s as slices, 64-byte 12.5-12.7k against 11.4-11.5k: the slices'
# Python takes turns under the GIL, ~10% of each slice, and their diffs are summed after); CIFAR-10 quick at
# 50 has 2.7M and runs faster as slices (3.5k against 3.25k)
MIN_MAPS = 1 << 20
# a forward-only net (predict, test) runs whole where it has the cores: with nothing to run backward its layers
# are short, and two slices' kernels wait for Python's lock at each return (a contended lock wakes its waiter
# in 10-80 us on a VM: resnet_fashion's slices of 32 ran 5.6-5.7 ms side by side in one process against 5.0 in
# two); whole, the banded kernels share each layer out: batch 64 resnet_fashion 5.23 against 6.12 ms as
# slices, ResNet-20 18.8 against 19.6; at 128-256 equal (LeNet and CIFAR-10 quick ran whole already). Beside a
# split train net (`held`: the trainer's test nets) it splits with FORWARD_FACTOR times the maps a train net needs.
FORWARD_WHOLE = True
FORWARD_FACTOR = 8
# multiply-adds of the convolutions and inner products per layer of a slice (all its layers counted: each costs a
# slice its Python, under the lock the slices share) below which a train net runs whole: MobileNet-v1 x0.5 at 64
# (1.1M a layer as two slices of 32: 111 layers, most of them depthwise, BatchNorm, Scale, ReLU) ran 28.3 ms a step
# whole against 35.4 as slices, once BatchNorm shared its work over the threads; ResNet-20 at 128 (25M) 222
# against 199, CIFAR-10 quick at 100 (51M) 26.4 against 25.4, models/resnet_fashion at 64 (7M) alike
MIN_LAYER_WORK = 4e6


def start(net: Net, requested: int | None, threads: int | None = None,
          held: bool = False) -> tuple["Replicas | None", str]:
    """The replicas to train `net` with (None: the plain net) and a line that says what was chosen and why.
    requested: None (automatic: one replica per thread when the batch divides into slices of MIN_SLICE or
    more and no result changes), 1 (off), or k (exactly k, or a UserError saying why not). held: the cores
    will be held by another net's slices when this one runs (a trainer's test nets beside its split train
    net: run whole, a forward-only net would then have the calling thread alone)."""
    threads = threads or (_open[0][1] if _open else numba.get_num_threads())  # open replicas hold the cores
    batch = net.source_batch_axes()[0] or next((net.shapes[d.tops[0]][0] for d, l in zip(net.defs, net.layers)
                                               if l.is_source and net.shapes.get(d.tops[0])), 0)  # (T, N): N
    if requested == 1:
        return None, "each layer runs the whole batch (--replicas 1)"
    if requested is None:
        if threads < 2 or blas_threads() is None:
            return None, ""
        maps = sum(int(np.prod(net.shapes[t])) for d, l in zip(net.defs, net.layers) if not l.is_source
                   for t in d.tops if len(net.shapes.get(t, ())) == 4 and np.prod(net.shapes[t][2:]) > 1)
        # a recurrent layer's steps are small products in a Python loop: slices run them side by side
        # (models/lstm_mnist: 1.2x on 2 cores), its sequences split along N; unless the layer shares its batch
        # out over the threads itself (a float32 LSTM: its chunks side by side in one kernel, the rest of the
        # net whole, without the slices' Python taking turns under the lock)
        sequences = any(getattr(l, "time_major_bottoms", None) and not l.chunks_on(threads) for l in net.layers)
        if FORWARD_WHOLE and not net.keep_for_backward and not held and not sequences:
            return None, ""  # forward-only, on the cores: whole (its bands share each layer out, see FORWARD_FACTOR)
        need = MIN_MAPS * (1 if net.keep_for_backward else FORWARD_FACTOR)
        if maps < need * 2 and not sequences:
            return None, ""  # matrix products (an MLP), or maps too small to pay for the threads
        k = next((k for k in range(threads, 1, -1) if batch % k == 0 and batch // k >= MIN_SLICE
                  and (sequences or maps // k >= need)), 1)
        if k == 1:
            return None, f"each layer runs the whole batch ({batch} does not split into slices of {MIN_SLICE} or more)"
        layers = sum(1 for l in net.layers if not l.is_source)
        if not sequences and net.keep_for_backward and _work(net, batch) * (batch // k) < MIN_LAYER_WORK * layers:
            return None, ("each layer runs the whole batch on the threads (its layers are many and light: as "
                          "slices, their Python would take turns)")
    else:
        k = requested
    try:
        replicas = Replicas(net, k)
    except NotSplittable as e:
        if requested is not None:
            raise UserError(f"--replicas {k}: error: this net cannot run its batch as {k} slices: {e}; use "
                            "--replicas 1, or leave --replicas out to let yaffe decide") from None
        return None, f"each layer runs the whole batch on {threads} threads ({e})"
    line = f"each batch of {batch} runs as {k} slices of {batch // k}, one thread each (--replicas 1: off)"
    if net.syncs:
        line += "; BatchNorm sums its statistics over the slices (the whole batch's)"
    return replicas, line


def _work(net: Net, batch: int) -> float:
    """Multiply-adds per example of the net's convolutions (and deconvolutions) and inner products."""
    total = 0.0
    for d, layer in zip(net.defs, net.layers):
        if d.type in ("Convolution", "Deconvolution", "InnerProduct") and layer.blobs:
            w = layer.blobs[0].data
            if d.type == "Convolution":  # each top value: a filter's taps (C/group x kh x kw)
                total += np.prod(net.shapes[d.tops[0]], dtype=np.float64) * w[0].size
            elif d.type == "Deconvolution":  # each bottom value: out/group x kh x kw
                total += np.prod(net.shapes[d.bottoms[0]], dtype=np.float64) * w[0].size
            else:  # each output: a weight row, for each of the bottom's rows
                total += np.prod(net.shapes[d.tops[0]], dtype=np.float64) * w.size / w.shape[0]
    return total / max(batch, 1)


class Replicas:
    """k replicas of `net` on k threads (the calling thread runs replica 0). forward_backward() and forward()
    are drop-ins for the net's: they leave the whole batch's blobs, the summed gradients and the loss in `net`."""

    def __init__(self, net: Net, k: int):
        self.net, self.k = net, k
        self.nets = net.replicate(k)
        net.release_buffers()  # the slices run the passes, with copies and scratch of their own
        self.data = [(l, b, t) for l, b, t in zip(net.layers, net.bottom_vecs, net.top_vecs) if l.is_source]
        self.random = [i for i, l in enumerate(net.layers) if l.rng is not None and not l.is_source]
        self.workers = []  # started by the first pass (a net that is built but never trained holds no threads)

    def _start(self):
        """Start the worker threads. While any replicas are open, OpenBLAS runs on its caller's thread and the
        calling thread's Numba kernels (data layers, the solver's update) on one thread too: with the cores
        given to the replicas, starting a parallel kernel there took about 100 us each (3 ms an iteration
        for LeNet's update), more than the kernels themselves."""
        if not _open:
            _open.append((blas_threads(1), numba.get_num_threads()))
            numba.set_num_threads(1)
        _open.append(self)
        self.workers = [_Worker(n) for n in self.nets[1:]]

    def forward_backward(self) -> float:
        return self._run(True)

    def forward(self, sources: bool = True) -> float:
        """The forward alone (inference, tests); sources=False: the data layers' tops were filled by the caller
        (run.py predict feeds its rows there)."""
        return self._run(False, sources)

    def _run(self, backward: bool, sources: bool = True) -> float:
        net = self.net
        if not getattr(net, "_released", False):  # a pass of the whole net's own (a check) made its buffers again
            net.release_buffers()
        if not self.workers:  # the first pass, or closed: start them
            self._start()
        for layer, bottom, top in self.data if sources else ():
            layer.forward(bottom, top)
        for i in self.random:  # the replicas' draws come from the parent's stream: snapshots resume them
            if not net.layers[i].draws:  # (MAX pooling: a new generator a slice costs ~35 us)
                continue
            for rep, seed in zip(self.nets, net.layers[i].rng.integers(2**63, size=self.k)):
                rep.layers[i].rng = np.random.default_rng(int(seed))
        for rep in self.nets:  # BatchNorm: every slice updates its own copy of the net's running sums
            for mine, theirs in rep.statistics:
                mine.data[...] = theirs.data
            # a forward-only net's slices fold and fuse as it would (Net._folds)
            rep.keep_for_backward, rep.constant_weights = net.keep_for_backward, net.constant_weights
            if rep.keep_blobs != net.keep_blobs:  # (a new set folds again)
                rep.keep_blobs = net.keep_blobs
        for w in self.workers:
            w.tasks.put(backward)
        errors = []
        try:
            losses = [self.nets[0].forward_backward() if backward else self.nets[0].forward()]
        except BaseException as e:
            errors.append(e)
            abort_syncs(net)  # the other slices may wait for this one's BatchNorm sums
        outcomes = [w.results.get() for w in self.workers]
        errors += [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            for sync in net.syncs.values():
                sync.reset()
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        losses += outcomes
        for rep in self.nets[1:] if backward else ():
            for b in rep.shared:
                b.owner.diff += b.own
        for mine, whole in self.nets[0].statistics:  # equal in every slice (whole-batch statistics)
            whole.data[...] = mine.data
        for j, (blob, whole) in enumerate(self.nets[0].averaged):
            total = blob.data.astype(np.float64)
            for rep in self.nets[1:]:
                total += rep.averaged[j][0].data
            whole.data[...] = total / self.k
        return float(sum(losses))

    def weights_changed(self):
        """Net.weights_changed for the net and its slices."""
        for n in [self.net] + self.nets:
            n.weights_changed()

    def close(self):
        """End the worker threads (a later pass starts new ones)."""
        for w in self.workers:
            w.tasks.put(None)
        if self.workers:
            _open.remove(self)
            if len(_open) == 1:
                blas, threads = _open.pop()
                blas_threads(blas)
                numba.set_num_threads(threads)
        self.workers = []


def abort_syncs(net: Net):
    """Break every BatchNorm wait of the replicas of `net`: a slice failed and will not come."""
    for sync in getattr(net, "syncs", {}).values():
        sync.abort()


class _Worker:
    """A thread that runs one replica's forward (and backward) each time it is asked."""

    def __init__(self, net: Net):
        self.net, self.tasks, self.results = net, queue.SimpleQueue(), queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"yaffe-replica-{net._replica[1]}", daemon=True).start()

    def _run(self):
        numba.set_num_threads(1)
        _flush_denormals_once()
        while (backward := self.tasks.get()) is not None:
            try:
                if not backward:
                    self.results.put(self.net.forward())
                    continue
                for b in self.net.shared:
                    b.own[...] = 0
                self.results.put(self.net.forward_backward())
            except BaseException as e:  # handed to the main thread, which raises it
                abort_syncs(self.net._replica[0])
                self.results.put(e)
