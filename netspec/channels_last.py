"""Runs of convolutions kept channels-last in a forward-only net (layers/channels_last.py has the kernels).

`chain_runs(net, indices, made_folds, relus, adds)` finds, among Net._bound_calls' layers, each run of two or more
convolutions (with what Net._folds folded into them: BatchNorm, Scale, the ReLU, the SUM they write), the Splits
between them and, at a batch of WINDOW_IMAGES, MAX and AVE pooling and in-place ReLUs between them, to be replaced
by one call that converts its bottoms to channels-last blobs, runs its layers between such blobs, and writes back,
in Caffe's layout, the blobs that the layers after the run read, the pass's results and `keep_blobs` (a run most of
whose blobs are kept, as pycaffe's nets keep them all, is not taken: the conversions would cost what it saves). A
global AVE pooling ends a run: it reads the last blob channels-last and writes its (N, C, 1, 1) top directly.

YAFFE_CHANNELS_LAST=0 turns it off (the convolutions run on their own kernels, layers/conv.py).
"""
from __future__ import annotations

import os

import numpy as np
from numba import config

from layers.channels_last import ConvPlan, Program, WinoPlan, tile_kind
from layers.simd import CL_TILES, VECTOR_BYTES

# (not under NUMBA_DISABLE_JIT: run_program's atomics are LLVM's, with no Python stand-in)
ENABLED = os.environ.get("YAFFE_CHANNELS_LAST", "1") != "0" and not config.DISABLE_JIT
MAX_BORDER = 3  # the largest padding a run takes (a 7x7 kernel's); a border this wide around every blob
# a run's steps take as many images at a time as keep the largest blob of them within this (the blobs between
# its convolutions then stay in the core's cache: they are this many images, not the batch)
SUB_BATCH_BYTES = int(os.environ.get("YAFFE_CL_BYTES", 256 << 10))
# pooling between a run's convolutions keeps the run going at a batch up to this (LeNet and CIFAR-10 quick: 0.82 and
# 0.90x the time at batch 1; at 2 to 64 images 0.89-1.05x, their own kernels holding their own: the images in the
# lanes, MAX pooling's rows of windows); at larger batches it ends the run, which starts again after it
WINDOW_IMAGES = 1
# 3x3 convolutions of stride 1 and pad 1 with this many channels or more (whole vectors), in float32, run as
# Winograd's F(2x2, 3x3) (layers/channels_last._wino_in): one thread, 32 images, against the direct tiles: 32 -> 32
# channels on 14x14 and 16x16 planes 1.47x, 64 -> 64 on 7x7 1.35x, on 8x8 1.80x; 16 -> 16 0.93x on 28x28, 1.14x on
# 32x32 (too few channels for its products: ResNet-20 0.99x, resnet_fashion 1.03x the time). YAFFE_WINOGRAD=0 turns
# it off.
WINOGRAD = os.environ.get("YAFFE_WINOGRAD", "1") != "0"
WINO_CHANNELS = 32


def _channels(c, dtype, pixels):
    """A blob's channel stride where a tile writes or adds it: c rounded up to whole vectors of its tile."""
    step = CL_TILES[tile_kind(c, dtype, pixels)][1] * (VECTOR_BYTES // np.dtype(dtype).itemsize)
    return -(-c // step) * step


class _Run:
    """One run: its layer indices, and the plan of its call (built by `plan`)."""

    def __init__(self, net, made_folds, relus, adds):
        self.net, self.made_folds, self.relus, self.adds = net, made_folds, relus, adds
        self.items = []  # (layer index, kind): "conv", "split", "pool" (global AVE), "window" (pooling), "relu"
        self.start = self.end = 0  # (the calls it replaces: start..end-1)

    def convs(self):
        return sum(kind == "conv" for _, kind in self.items)

    def writes(self, i):
        """(the blob a convolution writes, (the SUM's other bottom, ca, cb) or None)."""
        net = self.net
        if i not in self.adds:
            return net.defs[i].tops[0], None
        j, side = self.adds[i]
        coeff = net.layers[j].coeff
        return net.defs[j].tops[0], (net.defs[j].bottoms[1 - side], float(coeff[side]), float(coeff[1 - side]))

    def _winograd(self, i):
        """Whether convolution i runs as Winograd's F(2x2, 3x3) (WINOGRAD, WINO_CHANNELS)."""
        layer, net = self.net.layers[i], self.net
        c = net.blobs[net.defs[i].bottoms[0]].data.shape[1]
        return (WINOGRAD and net.dtype == np.float32 and tuple(layer.kernel) == (3, 3) and tuple(layer.stride) == (1, 1)
                and tuple(layer.pad) == (1, 1) and c >= WINO_CHANNELS and c % (VECTOR_BYTES // 4) == 0)

    def plan(self, wanted):
        """The call of the run, or None where it should not be taken (more blobs to convert back than it has
        convolutions: pycaffe's nets, which keep every blob). wanted: the blobs read after the run, and the
        pass's results."""
        net = self.net
        dtype = net.dtype
        blobs = net.blobs
        convs = [i for i, kind in self.items if kind == "conv"]
        wino = {i for i in convs if self._winograd(i)}
        border = max([max(net.layers[i].pad) for i in convs]  # (a block past an odd plane's end reads 2 rows in)
                     + [1 + max(d % 2 for d in blobs[net.defs[i].tops[0]].data.shape[2:]) for i in wino])
        images = blobs[net.defs[convs[0]].bottoms[0]].data.shape[0]
        largest = max(blobs[b].data[0].nbytes for i in convs for b in (net.defs[i].bottoms[0], self.writes(i)[0]))
        sub = max(1, min(images, SUB_BATCH_BYTES // largest))  # images a pass of the steps
        program = Program(dtype, images, sub, border)
        live = {}  # blob name -> its channels-last buffer (Program.buffer), as the run has written it
        residual = {w[1][0] for i in convs for w in [self.writes(i)] if w[1]}
        made = []

        def buffer(name, cs):
            return program.buffer(*blobs[name].data.shape[2:], cs)

        def channels_last(name):
            if name not in live:
                c, h, w = blobs[name].data.shape[1:]
                live[name] = buffer(name, _channels(c, dtype, h * w) if name in residual else c)
                program.to_cl(blobs[name].data, live[name])
            return live[name]

        for i, kind in self.items:
            d, layer = net.defs[i], net.layers[i]
            if kind == "split":
                for t in d.tops:
                    live[t] = live[d.bottoms[0]]
                continue
            if kind == "pool":
                program.pool(live[d.bottoms[0]], blobs[d.tops[0]].data)
                continue
            if kind == "window":
                x = live[d.bottoms[0]]
                live[d.tops[0]] = out = program.buffer(*blobs[d.tops[0]].data.shape[2:], x[3])
                program.window(x, out, layer.p.pool == "AVE", layer._geometry())
                made.append(d.tops[0])
                continue
            if kind == "relu":
                program.relu(live[d.bottoms[0]], float(dtype.type(layer.p.negative_slope)))
                made.append(d.bottoms[0])
                continue
            x = channels_last(d.bottoms[0])
            top, res = self.writes(i)
            rbuf = channels_last(res[0]) if res else None
            o, oh, ow = blobs[top].data.shape[1:]
            out = buffer(top, _channels(o, dtype, oh * ow))
            if rbuf is not None and rbuf[1:] != out[1:]:
                return None
            weights, bias = self.made_folds[i]
            h, w = blobs[d.bottoms[0]].data.shape[2:]
            slope = self.relus.get(i)
            epilogue = (rbuf, *(res[1:] if res else (1.0, 1.0)), slope is not None, slope or 0.0)
            if i in wino:
                program.wino(x, out, WinoPlan((h, w, weights.shape[1], border, x[3]), (oh, ow, o, border, out[3]),
                                              weights, bias, dtype), *epilogue)
            else:
                program.conv(x, out, ConvPlan((h, w, weights.shape[1], border, x[3]), (oh, ow, o, border, out[3]),
                                              weights, bias, layer.stride, layer.pad, dtype), *epilogue)
            live[top] = out
            made.append(top)
        back = [name for name in dict.fromkeys(made + [t for i, kind in self.items if kind == "split"
                                                       for t in net.defs[i].tops])
                if name in wanted or name in net.keep_blobs or name in net.outputs]
        if len(back) > self.convs():
            return None
        for name in back:
            program.back(live[name], blobs[name].data)
        return program.call()


def _images(net, names):
    """Whether the blobs are (N, C, H, W) arrays, C-contiguous, of the net's type."""
    return all(net.blobs[b].data.ndim == 4 and net.blobs[b].data.flags.c_contiguous
               and net.blobs[b].data.dtype == net.dtype for b in names)


def _conv_ok(net, i, made_folds):
    layer, d = net.layers[i], net.defs[i]
    return (d.type == "Convolution" and i in made_folds and not layer.nd and layer.p.group == 1
            and tuple(layer.dilation) == (1, 1) and len(d.bottoms) == 1 and max(layer.pad) <= MAX_BORDER
            and net.dtype in (np.float32, np.float64) and layer.axis == 1 and _images(net, d.bottoms + d.tops))


def _pool_ok(net, i):
    layer, d = net.layers[i], net.defs[i]
    if d.type != "Pooling" or layer.p.pool != "AVE" or len(d.tops) != 1 or not _images(net, d.bottoms + d.tops):
        return False
    kh, kw, sh, sw, ph, pw = layer._geometry()
    x = net.blobs[d.bottoms[0]].data
    return kh == x.shape[2] and kw == x.shape[3] and ph == pw == 0


def _window_ok(net, i):
    """MAX or AVE pooling (not global AVE: _pool_ok) without a mask top, on (N, C, H, W) blobs of WINDOW_IMAGES
    images or fewer."""
    layer, d = net.layers[i], net.defs[i]
    return (d.type == "Pooling" and layer.p.pool in ("MAX", "AVE") and len(d.tops) == 1
            and _images(net, d.bottoms + d.tops) and net.blobs[d.bottoms[0]].data.shape[0] <= WINDOW_IMAGES)


def chain_runs(net, indices, made_folds, relus, adds):
    """[(k0, k1, call)]: the runs of channels-last convolutions among the layers `indices` (Net._bound_calls' in
    order), each to replace the calls k0..k1-1 by one."""
    if not ENABLED or not indices:
        return []
    runs, run, cl = [], None, set()  # cl: the blobs the current run holds channels-last
    for k, i in enumerate(indices):
        d = net.defs[i]
        if _conv_ok(net, i, made_folds):
            if run is None:
                run, cl = _Run(net, made_folds, relus, adds), set()
                run.start = k
            run.items.append((i, "conv"))
            cl.add(run.writes(i)[0])
            continue
        if run is not None and d.type == "Split" and d.bottoms[0] in cl:
            run.items.append((i, "split"))
            cl.update(d.tops)
            continue
        if run is not None and d.bottoms and d.bottoms[0] in cl and _pool_ok(net, i):
            run.items.append((i, "pool"))
            run.end = k + 1
            runs.append(run)
            run = None
            continue
        if run is not None and d.bottoms and d.bottoms[0] in cl and _window_ok(net, i):
            run.items.append((i, "window"))
            cl.add(d.tops[0])
            continue
        if run is not None and d.type == "ReLU" and d.bottoms == d.tops and d.bottoms[0] in cl:
            run.items.append((i, "relu"))
            continue
        if run is not None:
            run.end = k
            runs.append(run)
            run = None
    if run is not None:
        run.end = len(indices)
        runs.append(run)
    # the blobs a pass leaves for the caller: read by no layer but in place (yaffe's net.outputs leaves out a top
    # that an in-place ReLU rewrites)
    consumed = {b for d in net.defs for b in d.bottoms if b not in d.tops}
    final = {t for d in net.defs for t in d.tops if t not in consumed}
    out = []
    for run in runs:
        if run.convs() < 2:
            continue
        call = run.plan({b for i in indices[run.end:] for b in net.defs[i].bottoms} | final)
        if call is not None:
            out.append((run.start, run.end, call))
    return out
