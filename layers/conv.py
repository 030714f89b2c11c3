"""Convolution: direct (register tiles over zero-padded planes) for one group and one stride, else im2col plus BLAS.

Input (N, C, H, W); weight (O, C/group, kh, kw); bias (O,); output (N, O, OH, OW) with
OH = (H + 2*pad_h - (dilation_h*(kh-1)+1)) // stride_h + 1 (Caffe truncates, unlike Pooling).

Direct (one group; `DirectPlan`): each input plane is copied once into a zero-padded plane of row
length Wp = W + 2*pad_w, flattened. Output pixel q = y*Wp + x then reads tap (i, j) at q + i*dh*Wp + j*dw for
every pixel alike, so the convolution is a matrix product whose right-hand rows are shifted views of the padded
planes: `layers/simd.tile_bcast{1,2,3}` compute it in registers without writing im2col columns (the columns
x >= OW of each row are computed and dropped). The backward data pass is the same product on the padded top diff
with the kernel flipped, and the weight gradient (`tile_taps`) sums top diff times shifted input planes.
A stride s > 1 splits each padded plane into s*s phase planes (`place_phases`), so that every tap again reads
the same shifted row for all outputs (ResNet's down-sampling 3x3: 4.2x im2col's forward).
With the images in the lanes (`lanes_conv_data`, `layers/simd.tile_lanes_*`): a batch transposed to (pixel,
channel, image) with a vector's images per lane, each output pixel sums over a list of the taps that reach it,
so nothing is padded and a stride is only another list: the data gradient where the direct kernels would
waste most (LeNet's conv2, 0.28 of its products kept) or a stride splits the top (was im2col's), and the
forward of kernels larger than 1x1 on output planes of up to 14x14, when the batch fills the lanes.
Otherwise the whole batch goes through one im2col buffer of shape (C*kh*kw, N*OH*OW), so each
group is a single large matrix product.
"""
from __future__ import annotations

import functools
import math
import os
import threading

import numpy as np
import numba
from numba import njit, prange, uintp

from netspec.errors import LayerError
from .base import Field, Layer, count, register
from .conv_nd import NdPath, nd_param, split_axes
from .cpu import gemm, gemm_acc, num_threads, spread
from .depthwise import DepthwisePlan, depthwise_backward, depthwise_forward, depthwise_lanes, depthwise_lanes_weights
from .kernels import channel_sums, sum_into
from .winograd import NAMES as WINO_NAMES, WinoBack, WinoPlan, wino_data, wino_forward, wino_weight_diff
from .simd import (BCAST_MR, LANES_COST, LANES_NB, LANES_ROW, LANES_WIDTHS, PIX_MR, PIX_NV, PLANAR_KR, PLANAR_OR,
                   TAPS_KR, TAPS_KR1, TAPS_NV, TAPS_ONE, VECTOR_BYTES, deinterleave2, lanes, store_row, tile_bcast1,
                   tile_bcast2, tile_bcast3, tile_bcast_h1, tile_bcast_h2, tile_bcast_h3, tile_flat1, tile_flat2,
                   tile_flat3, tile_lanes_a, tile_lanes_a1, tile_lanes_b, tile_lanes_b1, tile_lanes_c, tile_lanes_c1,
                   tile_pixels, tile_pixels_acc, tile_planar, tile_planar_half, tile_taps, tile_taps1, tile_taps_last,
                   tile_unpadded11, tile_unpadded12, tile_unpadded21, tile_unpadded31, tile_unpadded11_s2,
                   tile_unpadded21_s2, tile_unpadded31_s2, transpose_tile)


DIRECT = os.environ.get("YAFFE_CONV", "").lower() != "im2col"  # stride-1 convolutions without im2col (DirectPlan)
# The direct path computes whole vectors of outputs, the columns of each padded row past the output's width and
# up to 8 filters at a time, and its data gradient sums over every input pixel (im2col's over the output pixels
# only): where the fraction it keeps is below these, im2col's matrix products are faster (measured in the
# benchmarks' README: LeNet's conv2 keeps 0.28 of its data-gradient products, CIFAR-10 quick's conv3 0.67). The
# data gradient's, over layer shapes of 4x4 to 16x16 planes (64 images) keeping 0.4 to 0.6: with 64-byte vectors
# direct took 4% less time than im2col in all on one thread and 28% less on two (1.2-2.3x on small planes, 0.8-0.9
# on some 14x14 and 16x16 ones), and under 0.4 im2col won; with 32-byte vectors direct took 39% more in all (0.56x
# on 64 channels of 14x14), so that band stays im2col's there.
DIRECT_USEFUL, DIRECT_USEFUL_DATA = 0.5, (0.4 if VECTOR_BYTES == 64 else 0.6)
# The forward and data gradient as pixel tiles where they waste this much less than rows (DirectPlan);
# YAFFE_CONV_PIXELS=1 or 0 forces one way (tests run both)
PIXELS = {"1": True, "0": False}.get(os.environ.get("YAFFE_CONV_PIXELS", ""))
PIXELS_MARGIN = 1.2
# forward-only nets: a convolution as one kernel a band of output rows or pixels (direct_conv_bands, _pixels_bands)
BANDS = os.environ.get("YAFFE_CONV_BANDS", "1") != "0"
# and the training forward of those not written row by row (rows_direct), an image a task, its padded planes then
# kept for the backward (YAFFE_TRAIN_BANDS=0: placing, product and copy as three kernels)
TRAIN_BANDS = os.environ.get("YAFFE_TRAIN_BANDS", "1") != "0"
# forward-only "same" stride-1 convolutions on AVX-512, on rows of UNPADDED_MIN_WIDTH to one vector (and to two at
# a batch of UNPADDED_TWO_BATCH or more) read their bottom itself (direct_conv_unpadded; YAFFE_CONV_UNPADDED=0 off)
UNPADDED = os.environ.get("YAFFE_CONV_UNPADDED", "1") != "0"
# a forward-only net's stride-1 convolution with the ReLU or SUM above it folded in takes the rows path where its
# rows are whole (half) vectors, the two applied to each plane after (direct_conv_rows; ResNet-20's 16 x 32x32 3x3
# at batch 32, one thread, in the net: 1.40 ms with the ReLU, 1.51 with the SUM, 1.34-1.37 bare, against the
# unpadded kernel's 1.61-1.88; the whole net 27.6-28.5 -> 26.6-27.2 ms, at batch 64 on two threads 28.7-29.2 ->
# 28.0-28.3); the stride-2 ones stay on the unpadded kernel
ROWS_EPILOGUE = True
UNPADDED_MIN_WIDTH = 12  # (narrower rows leave most of a vector's lanes idle: 8x8 planes 0.62x the pixel tiles)
# forward-only "same" stride-1 convolutions whose planes, taken flat, fill this much more of the vectors' lanes than
# their rows (28x28: 1 against 0.875) run on flat runs of the plane (direct_conv_flat; YAFFE_CONV_FLAT=0 off)
FLAT = os.environ.get("YAFFE_CONV_FLAT", "1") != "0"
FLAT_MARGIN = 1.05
UNPADDED_TWO_BATCH = 8  # (ResNet-20's 32-wide rows: 0.88x at a batch of one, even at 64; measured on AVX-512 alone)
# the pixel tiles sum the taps in blocks whose weights hold about this many values (16 KiB float32: in L1 with
# the input rows and the sums); 0: all taps a tile
PIX_KB_VALUES = 4096
# the data gradient with the images in the lanes (DirectPlan.lanes_data) where the batch fills this much of them;
# YAFFE_CONV_LANES=0 turns it off (and the forward below)
LANES_DATA = os.environ.get("YAFFE_CONV_LANES", "1") != "0"
LANES_FILL = 0.75
# and the forward, of kernels larger than 1x1 on output planes of up to this many pixels (one thread, against the
# direct kernels: 7x7 planes 1.6x, 8x8 1.1-1.2x (LeNet's conv2, CIFAR-10 quick's conv3), 12x12 and 14x14 1.2x,
# stride-2 3x3 1.3-1.5x; 16x16 0.84-0.96x and 28x28 0.92x; 1x1 kernels 0.67-0.87x: the direct ones copy less)
LANES_PLANE = 196
PLANAR = os.environ.get("YAFFE_CONV_PLANAR", "1") != "0"  # the weight gradient from the planar top diff (DirectPlan)
DW_IMAGES = 1 << 18  # the planar weight gradient's images a pass: this many values (~1 MiB float32), read back by its tiles
# values: copies at least this large are shared out to the threads of a net running whole (at 1 << 16 the quick
# start's 8x8 digits compiled the parallel builds too: 5.1 s to its first iteration from an empty cache, not 4.1)
SPREAD = 1 << 17
DW_BLOCK_BYTES = 96 << 10  # the tap tiles' weight gradient: images of about this many bytes (planes, top diff) at once
# Winograd's F(2x2, 5x5) (layers/winograd.py) for float32 5x5s of stride 1 with channels enough (each side at least
# WINO_CHANNELS[5][0], both together [1]). One thread, against the direct kernels (ms forward / backward):
# CIFAR-10 quick's conv2 (50 images) 6.4 / 13.1 -> 4.0 / 8.5, conv3 3.0 / 6.5 -> 2.0 / 4.6, LeNet's conv2 (32) 1.05 /
# 2.26 -> 0.94 / 2.24, 16 -> 32 on 16x16 3.2 / 6.7 -> 2.3 / 5.4; but 16 -> 16 3.1 -> 3.4 backward, 20 -> 20 on 8x8
# 0.36 -> 0.52 forward. The data gradient where the pad is 2 or more (its own pad is 4 - pad; LeNet's unpadded
# conv2's ran slower than the direct kernels'). The 3x3s of training nets (TRAIN phase, planes of 6x6 or more:
# models/lenet_digits' 4x4 conv2 compiles nothing new) take F(4x4, 3x3) for the weight and data gradients and, with
# 32 channels or more on both sides, F(2x2, 3x3) for the forward (ms forward / backward, 64 images, one thread):
# 16 -> 16 on 32x32 3.4 / 7.0 -> 3.4 / 4.3, 32 -> 32 on 16x16 3.7 / 7.2 -> 2.9 / 4.7, on 14x14 3.1 / 6.6 -> 2.3 /
# 4.5, 64 -> 64 on 8x8 3.4 / 7.8 -> 2.4 / 3.7 (F(4x4, 3x3)'s forward was faster still, 1.5-2.5 ms, but its sums
# are ~10x less exact, ~5e-6 of their scale, and the ReLUs above took other sides of near-ties than Caffe's:
# resnet_fashion's gradients moved to 2.8x tests/test_caffe_parity.py's tolerance, where the direct forward stays
# within 0.5x; its errors in the gradients change no ReLU). YAFFE_WINOGRAD=0 turns all of it off (and the
# forward-only 3x3s').
WINOGRAD = os.environ.get("YAFFE_WINOGRAD", "1") != "0"
WINO_CHANNELS = {5: (16, 64), 3: (16, 32)}  # (the fewest channels on either side, on both together)
WINO_DATA_PAD = {5: 2, 3: 1}  # the least pad whose data gradient takes Winograd's (its own pad k - 1 - pad)
WINO3_ALPHA = 6      # the gradients of a 3x3: F(4x4, 3x3), on 6 points
WINO3_FORWARD = 32   # the forward of a 3x3: F(2x2, 3x3) from this many channels on each side
WINO3_PLANE = 6      # the least side of a 3x3's top for Winograd
BLOCK_BYTES = 16 << 20   # im2col buffers larger than this are split into blocks on one thread (Convolution._block)
BLOCK_TARGET = 4 << 20   # of about this size


@njit(cache=True, nogil=True, inline="always")
def tap_columns(j, sw, pw, dw, ow, width):
    """Kernel column j reads input column xo * sw + off; returns (off, lo, hi) with lo <= xo < hi the output
    columns whose tap lands inside the image (the others read the zero padding)."""
    off = j * dw - pw
    lo = min(max(0, (-off + sw - 1) // sw), ow)
    hi = min(ow, max(0, (width - 1 - off) // sw + 1)) if width - 1 - off >= 0 else 0
    return off, lo, hi


@njit(cache=True, nogil=True, parallel=True)
def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, col):
    """x (N, C, H, W) -> col (C*kh*kw, N*oh*ow); taps outside the image read 0. One row per thread.
    x and col are C-contiguous; flat unsigned indices (no negative-index checks) let LLVM vectorize the copies."""
    n_img, chans, height, width = x.shape
    plane = oh * ow
    xf = x.reshape(-1)
    for row in prange(chans * kh * kw):
        c, rest = row // (kh * kw), row % (kh * kw)
        i, j = rest // kw, rest % kw
        off, lo, hi = tap_columns(j, sw, pw, dw, ow, width)
        crow = col[row]
        for n in range(n_img):
            for y in range(oh):
                iy = y * sh - ph + i * dh
                out = n * plane + y * ow
                if iy < 0 or iy >= height:
                    for xo in range(ow):
                        crow[uintp(out + xo)] = 0
                    continue
                src = ((n * chans + c) * height + iy) * width + off
                for xo in range(lo):
                    crow[uintp(out + xo)] = 0
                if sw == 1:
                    for xo in range(lo, hi):
                        crow[uintp(out + xo)] = xf[uintp(src + xo)]
                else:
                    for xo in range(lo, hi):
                        crow[uintp(out + xo)] = xf[uintp(src + xo * sw)]
                for xo in range(max(hi, lo), ow):
                    crow[uintp(out + xo)] = 0


@njit(cache=True, nogil=True, parallel=True)
def col2im(col, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx):
    """The adjoint of im2col: dx (N, C, H, W) = sum of col entries over the taps that read each pixel.
    One channel per thread (no two threads write the same pixel); C-contiguous arrays, flat unsigned indices."""
    n_img, chans, height, width = dx.shape
    plane, area = oh * ow, height * width
    dxf = dx.reshape(-1)
    for c in prange(chans):
        for n in range(n_img):
            start = (n * chans + c) * area
            for q in range(area):
                dxf[uintp(start + q)] = 0
        for i in range(kh):
            for j in range(kw):
                crow = col[(c * kh + i) * kw + j]
                off, lo, hi = tap_columns(j, sw, pw, dw, ow, width)
                for n in range(n_img):
                    for y in range(oh):
                        iy = y * sh - ph + i * dh
                        if iy < 0 or iy >= height:
                            continue
                        out = n * plane + y * ow
                        dst = ((n * chans + c) * height + iy) * width + off
                        if sw == 1:
                            for xo in range(lo, hi):
                                dxf[uintp(dst + xo)] += crow[uintp(out + xo)]
                        else:
                            for xo in range(lo, hi):
                                dxf[uintp(dst + xo * sw)] += crow[uintp(out + xo)]


@njit(cache=True, nogil=True, parallel=True)
def channels_last_to_first(buf, bias, has_bias, y, relu=False, slope=0.0):
    """buf (O, N*P) -> y (N, O, P), adding bias[o]: the matrix product's layout to the blob's; relu: a ReLU
    after (take_planes)."""
    n_img, out_c, plane = y.shape
    yf, bf, width = y.reshape(-1), buf.reshape(-1), n_img * plane
    for n in prange(n_img):
        for o in range(out_c):
            b = bias[o] if has_bias else 0.0
            dst, src = (n * out_c + o) * plane, o * width + n * plane
            for q in range(plane):
                v = bf[uintp(src + q)] + b
                yf[uintp(dst + q)] = v if not relu or v > 0 else v * slope


@njit(cache=True, nogil=True, parallel=True)
def channels_first_to_last(dy, buf):
    """dy (N, O, P) -> buf (O, N*P)."""
    n_img, out_c, plane = dy.shape
    dyf, bf, width = dy.reshape(-1), buf.reshape(-1), n_img * plane
    for o in prange(out_c):
        for n in range(n_img):
            src, dst = (n * out_c + o) * plane, o * width + n * plane
            for q in range(plane):
                bf[uintp(dst + q)] = dyf[uintp(src + q)]


def _place_planes(x, buf, start, row):
    """x (N, C, H, W) -> buf (N, B, L), B >= C: buf[n, c, start + i*row + j] = x[n, c, i, j]; the rest of buf
    (its zero padding) is not touched."""
    n_img, chans, height, width = x.shape
    xf, bf = x.reshape(-1), buf.reshape(-1)
    planes, length = buf.shape[1], buf.shape[2]
    for p in prange(n_img * chans):
        n, c = p // chans, p % chans
        src, dst = p * height * width, (n * planes + c) * length + start
        for i in range(height):
            for j in range(width):
                bf[uintp(dst + i * row + j)] = xf[uintp(src + i * width + j)]


place_planes = spread(_place_planes, SPREAD)


def _take_planes(buf, row, y, relu=False, slope=0.0):
    """buf (N, B, L) -> y (N, C, H, W), B >= C: y[n, c, i, j] = buf[n, c, i*row + j]; relu: a ReLU (with
    negative slope `slope`) applied on the way (an in-place ReLU above, folded in inference)."""
    n_img, chans, height, width = y.shape
    yf, bf = y.reshape(-1), buf.reshape(-1)
    planes, length = buf.shape[1], buf.shape[2]
    none = yf[:0]
    for p in prange(n_img * chans):
        n, c = p // chans, p % chans
        src, dst = (n * planes + c) * length, p * height * width
        for i in range(height):
            store_row(bf, src + i * row, yf, dst + i * width, width, none, False, 1.0, 0.0, relu, slope)


take_planes = spread(_take_planes, SPREAD)


@njit(cache=True, nogil=True)  # a copy, on one thread (place_planes)
def place_phases(x, buf, ph, pw, s, row, rows):
    """x (N, C, H, W) -> buf (N, B, L), B >= C*s*s, the zero-padded planes split into s*s phases of rows `row`:
    x[n, c, i, j] goes to phase ((i + ph) % s)*s + (j + pw) % s of channel c at ((i + ph)//s)*row + (j + pw)//s;
    only the rows i with rows[(i + ph) % s] (the phases the taps read); the rest of buf (its zero padding) is
    not touched. Stride 2 splits a row's columns by shuffles (simd.deinterleave2; the loop over pairs it replaced
    took 5 us for resnet_fashion's 16 x 28x28 bottom at batch 1, 2 us so)."""
    n_img, chans, height, width = x.shape
    xf, bf = x.reshape(-1), buf.reshape(-1)
    planes, length = buf.shape[1], buf.shape[2]  # (planes: C*s*s, or one more: DirectPlan.bias_tap's ones)
    pairs, r0, r1 = width // 2, pw % 2, (1 + pw) % 2  # stride 2: column 2k + b to phase (2k + b + pw) % 2
    for p in range(n_img * chans):
        src, first = p * height * width, (p // chans * planes + p % chans * s * s) * length  # (its first phase)
        for i in range(height):
            u, pi = (i + ph) // s, (i + ph) % s
            if not rows[pi]:
                continue
            at, base = src + i * width, first + pi * s * length + u * row
            if s == 2:
                d0, d1 = base + r0 * length + pw // 2, base + r1 * length + (1 + pw) // 2
                deinterleave2(xf, at, pairs, bf, d0, d1)
                if width % 2:
                    bf[uintp(d0 + pairs)] = xf[uintp(at + 2 * pairs)]
                continue
            for r in range(s):  # the columns of phase r: every s-th from j0, to consecutive places
                j0 = (r - pw) % s
                dst = base + r * length + (j0 + pw) // s
                for k in range((width - j0 + s - 1) // s):
                    bf[uintp(dst + k)] = xf[uintp(at + j0 + k * s)]


def place_subsampled(x, buf, s):
    """x (N, C, H, W) -> phase (0, 0) of buf (N, C*s*s, L): x[n, c, s*i, s*j] at i*ceil(W/s) + j (place_phases
    for a 1x1 kernel of stride s without pad, whose taps read that phase alone), by NumPy's strided copy."""
    n, c, h, w = x.shape
    oh, ow = -(-h // s), -(-w // s)
    np.copyto(buf.reshape(n, c, s * s, -1)[:, :, 0, :oh * ow].reshape(n, c, oh, ow), x[:, :, ::s, ::s])


def _nothing():
    """Convolution.bound_forward's placing where the kernels read the bottom itself (DirectPlan.x_direct)."""


@njit(cache=True, nogil=True, parallel=True)
def direct_conv(xp, offs, w, bias, out):
    """xp (N, C*L) padded planes, offs (K,), w (K, Opad), bias (Opad,) -> out (N, Opad, NQ):
    out[n, o, q] = bias[o] + sum_k w[k, o] * xp[n, offs[k] + q]. Opad is a multiple of BCAST_MR, NQ of a
    vector, and every offs[k] + NQ fits in a plane."""
    n_img, per_image = xp.shape
    opad, nq = out.shape[1], out.shape[2]
    width = VECTOR_BYTES // xp.itemsize
    body = nq - nq % (3 * width)
    xf, wf, of = xp.reshape(-1), w.reshape(-1), out.reshape(-1)
    blocks = opad // BCAST_MR
    for task in prange(n_img * blocks):  # (image, filter block): a batch of one still splits over the threads
        n, o0 = task // blocks, task % blocks * BCAST_MR
        at = (n * opad + o0) * nq
        for q0 in range(0, body, 3 * width):
            tile_bcast3(xf, n * per_image + q0, offs, wf, o0, opad, bias, o0, of, at + q0, nq)
        if nq - body == 2 * width:
            tile_bcast2(xf, n * per_image + body, offs, wf, o0, opad, bias, o0, of, at + body, nq)
        elif nq - body == width:
            tile_bcast1(xf, n * per_image + body, offs, wf, o0, opad, bias, o0, of, at + body, nq)


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_rows(xp, offs, w, bias, y, wp, res, ca, cb, relu, slope):
    """direct_conv written to the top y (N, O, OH, OW) itself, a tile an output row (OW a multiple of a vector,
    or on AVX-512 of half of one): y[n, o, i, j] = bias[o] + sum_k w[k, o] * xp[n, offs[k] + i*wp + j], w (K,
    Opad), bias (Opad,). Computes no column past a row's end and copies nothing after (direct_conv's padded rows
    kept 86% of LeNet's conv1 and 89% of CIFAR-10 quick's, and take_planes' copy cost 60% of the product); the
    filters of a last partial tile go through a row of its own. res (N*O*OH*OW,) or empty, ca, cb, relu, slope:
    as direct_conv_bands, applied to each plane of a block of filters after its sums (still in L1 or L2: a
    forward-only ResNet's folded ReLU and SUM; the unpadded kernel they took before ran 0.92x on 32-wide rows)."""
    n_img, per_image = xp.shape
    out_c, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    opad = w.shape[1]
    vec = VECTOR_BYTES // xp.itemsize
    half = ow % vec != 0  # (rows of half vectors on AVX-512: DirectPlan.rows_direct)
    unit = vec // 2 if half else vec
    vectors, plane, blocks = ow // unit, oh * ow, opad // BCAST_MR
    xf, wf, yf = xp.reshape(-1), w.reshape(-1), y.reshape(-1)
    added = res.size > 0
    for task in prange(n_img * blocks):  # (image, filter block), as direct_conv
        n, o0 = task // blocks, task % blocks * BCAST_MR
        kept = min(BCAST_MR, out_c - o0)
        part = np.empty(BCAST_MR * ow if kept < BCAST_MR else 0, xp.dtype)  # (the filters past O: not in y)
        of, os_ = (yf, plane) if kept == BCAST_MR else (part, ow)
        for i in range(oh):
            xb = n * per_image + i * wp
            yb = (n * out_c + o0) * plane + i * ow if kept == BCAST_MR else 0
            v = 0
            while v < vectors:  # tiles of three vectors, two where four or two are left, one where one is
                left, at = vectors - v, v * unit
                if left == 4 or left == 2:
                    if half:
                        tile_bcast_h2(xf, xb + at, offs, wf, o0, opad, bias, o0, of, yb + at, os_)
                    else:
                        tile_bcast2(xf, xb + at, offs, wf, o0, opad, bias, o0, of, yb + at, os_)
                    v += 2
                elif left == 1:
                    if half:
                        tile_bcast_h1(xf, xb + at, offs, wf, o0, opad, bias, o0, of, yb + at, os_)
                    else:
                        tile_bcast1(xf, xb + at, offs, wf, o0, opad, bias, o0, of, yb + at, os_)
                    v += 1
                else:
                    if half:
                        tile_bcast_h3(xf, xb + at, offs, wf, o0, opad, bias, o0, of, yb + at, os_)
                    else:
                        tile_bcast3(xf, xb + at, offs, wf, o0, opad, bias, o0, of, yb + at, os_)
                    v += 3
            if kept < BCAST_MR:
                for r in range(kept):
                    dst = ((n * out_c + o0 + r) * oh + i) * ow
                    for j in range(ow):
                        yf[uintp(dst + j)] = part[r * ow + j]
        if added or relu:  # (a call a plane of the block, 8 x 4 KB in L1 for ResNet-20's 32x32: a call a row
            for r in range(kept):  # took 2-3x as long)
                at = (n * out_c + o0 + r) * plane
                store_row(yf, at, yf, at, plane, res, added, ca, cb, relu, slope)


@njit(cache=True, nogil=True)
def place_band(xf, n, chans, height, width, bf, xbase, length, ph, pw, s, wp, rows, lo, hi):
    """The rows of image n of x (flat, N x C x H x W) that positions lo..hi of its padded planes (or their phases)
    hold, placed as place_planes (s = 1) or place_phases (s > 1; `rows`: the row phases the taps read) place
    them, in the planes at xbase of bf (flat)."""
    ia, ib = max(0, lo // wp * s - ph), min(height, (hi // wp + 1) * s - ph)  # (no test nor division a row)
    for c in range(chans):
        src = (n * chans + c) * height * width
        if s == 1:
            for i in range(ia, ib):
                at, base = src + i * width, xbase + c * length + (i + ph) * wp + pw
                for j in range(width):
                    bf[uintp(base + j)] = xf[uintp(at + j)]
            continue
        for i in range(ia, ib):
            u, pi = ((i + ph) >> 1, (i + ph) & 1) if s == 2 else ((i + ph) // s, (i + ph) % s)
            if not rows[pi]:
                continue
            at, base = src + i * width, xbase + (c * s + pi) * s * length + u * wp
            if s == 2:
                pairs, r0, r1 = width // 2, pw % 2, (1 + pw) % 2
                d0, d1 = base + r0 * length + pw // 2, base + r1 * length + (1 + pw) // 2
                deinterleave2(xf, at, pairs, bf, d0, d1)
                if width % 2:
                    bf[uintp(d0 + pairs)] = xf[uintp(at + 2 * pairs)]
            else:
                for r in range(s):
                    j0 = (r - pw) % s
                    dst = base + r * length + (j0 + pw) // s
                    for k in range((width - j0 + s - 1) // s):
                        bf[uintp(dst + k)] = xf[uintp(at + j0 + k * s)]


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_bands(x, xpad, ph, pw, s, wp, rows, reach, offs, w, bias, out, y, res, ca, cb, relu, slope, parts):
    """place_planes (or place_phases), direct_conv and take_planes in one pass, a task a band of an image's output
    rows: it places the input rows its band reads, sums every filter over the band and copies the band to the top
    (with the ReLU of take_planes), so that its values stay in its core's caches. parts: bands an image (a batch
    smaller than the threads; as three kernels at a batch of one, each serial copy read what the other core's
    product wrote: a ResNet-20 convolution on two threads took twice its time on one). xpad (N, C*s*s, L), or
    (N*parts, C*s*s, L) with parts > 1: each band places the rows it reads in planes of its own (in shared planes
    both bands wrote the rows between them, whose cache lines then went back and forth between the cores: the
    banded kernel on two threads was no faster than on one). wp: the padded rows; reach: the largest tap offset
    within a plane; ph, pw, s, rows: as place_phases. res: empty, or an array of y's size: then y = ca * the
    convolution + cb * res (an Eltwise SUM above it, as sum_two computes it), before the ReLU."""
    n_img, chans, height, width = x.shape
    planes, length = xpad.shape[1], xpad.shape[2]
    opad, nq = out.shape[1], out.shape[2]
    out_c, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    vec = VECTOR_BYTES // xpad.itemsize
    xf, bf, wf, of, yf = x.reshape(-1), xpad.reshape(-1), w.reshape(-1), out.reshape(-1), y.reshape(-1)
    own = parts if xpad.shape[0] > n_img else 1  # planes an image
    added = res.size > 0
    for task in prange(n_img * parts):
        n, g = task // parts, task % parts
        # the band: its share of the padded rows' positions in whole vectors (the layers of one plane size share
        # their bands out about alike: what one writes, the next reads on the same core). (By output rows cut to
        # a vector, a 7x7 plane's 4 vectors went 1 and 3: ResNet's 64-channel layer 26.4 us on two threads, 22.4.)
        qa = (g * (nq // vec) // parts) * vec
        qb = ((g + 1) * (nq // vec) // parts) * vec
        if qb <= qa:
            continue
        body = qa + (qb - qa) // (3 * vec) * (3 * vec)
        xbase = (n * own + g % own) * planes * length  # the band's planes
        place_band(xf, n, chans, height, width, bf, xbase, length, ph, pw, s, wp, rows, qa, qb - 1 + reach)
        for o0 in range(0, opad, BCAST_MR):
            at = (n * opad + o0) * nq
            for q0 in range(qa, body, 3 * vec):
                tile_bcast3(bf, xbase + q0, offs, wf, o0, opad, bias, o0, of, at + q0, nq)
            if qb - body == 2 * vec:
                tile_bcast2(bf, xbase + body, offs, wf, o0, opad, bias, o0, of, at + body, nq)
            elif qb - body == vec:
                tile_bcast1(bf, xbase + body, offs, wf, o0, opad, bias, o0, of, at + body, nq)
        i0, i1 = qa // wp, min(oh, (qb - 1) // wp + 1)  # the band's rows
        if wp == ow:  # (rows without padding, a 1x1 kernel's: the band as one run; resnet_fashion's projections at
            i0, i1, wp_, ow_ = 0, 1, 0, 0  # a slice of 32, 333 -> 259 and 237 -> 160 us, from runs of 14 and 7)
        else:
            wp_, ow_ = wp, ow
        for o in range(out_c):  # the band to the top
            src, dst = (n * opad + o) * nq, (n * out_c + o) * oh * ow
            for i in range(i0, i1):
                if wp_ == 0:
                    j0, j1 = qa, min(qb, oh * ow)
                else:
                    j0, j1 = max(0, qa - i * wp_), min(ow_, qb - i * wp_)
                if j1 > j0:  # (simd.store_row: in vectors, a masked last part)
                    store_row(of, src + i * wp_ + j0, yf, dst + i * ow_ + j0, j1 - j0, res, added, ca, cb, relu, slope)


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_unpadded(x, kh, kw, ph, pw, s, w, bias, y, res, ca, cb, relu, slope, parts):
    """A convolution of stride s (1, or 2 with the top's rows one vector) straight from x (N, C, H, W): no padded
    planes placed, no padded columns summed, no copy to the top (simd.tile_unpadded*: each load masked to the
    columns inside the image, each row's taps limited to the rows inside it). w (K, Opad) and bias (Opad,) as
    DirectPlan lays them out; y (N, O, OH, OW); res, ca, cb, relu, slope as direct_conv_bands (applied to a band's
    rows after its sums). A task a band of an image's rows (parts bands an image). Rows of the top of up to two
    vectors (AVX-512: OW <= 32): a row of two vectors a tile, else three rows of one (24 sums, as tile_bcast3),
    two, or one where the kernel rows inside the image differ. ResNet-20's 32x16x16 3x3 at batch 64: 1.02 ->
    0.85 ms (the bands placed each image's padded planes, summed 18 columns a row for 16 and copied them back)."""
    n_img, chans, height, width = x.shape
    out_c, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    opad = w.shape[1]
    vec = VECTOR_BYTES // x.itemsize
    two = ow > vec
    oplane = oh * ow
    xf, wf, yf = x.reshape(-1), w.reshape(-1), y.reshape(-1)
    added = res.size > 0
    for task in prange(n_img * parts):
        n, g = task // parts, task % parts
        r0, r1 = g * oh // parts, (g + 1) * oh // parts
        if r1 <= r0:
            continue
        xbase = n * chans * height * width
        i = r0
        while i < r1:
            # the kernel rows inside the image for the top's rows i, i + 1, i + 2
            lo, hi = max(0, ph - i * s), min(kh, height + ph - i * s)
            lo1, hi1 = max(0, ph - (i + 1) * s), min(kh, height + ph - (i + 1) * s)
            lo2, hi2 = max(0, ph - (i + 2) * s), min(kh, height + ph - (i + 2) * s)
            pair = not two and i + 1 < r1 and lo1 == lo and hi1 == hi
            trip = pair and i + 2 < r1 and lo2 == lo and hi2 == hi
            for o0 in range(0, out_c, BCAST_MR):
                args = (xf, xbase, chans, height, width, i, kh, kw, ph, pw, lo, hi, wf, o0, opad, bias, o0,
                        min(BCAST_MR, out_c - o0), yf, (n * out_c + o0) * oplane, ow, oplane)
                if two:
                    tile_unpadded12(*args)
                elif trip:  # three rows of one vector: 24 sums a tile, as tile_bcast3's
                    if s == 1:
                        tile_unpadded31(*args)
                    else:
                        tile_unpadded31_s2(*args)
                elif pair:
                    if s == 1:
                        tile_unpadded21(*args)
                    else:
                        tile_unpadded21_s2(*args)
                elif s == 1:
                    tile_unpadded11(*args)
                else:
                    tile_unpadded11_s2(*args)
            i += 3 if trip else 2 if pair else 1
        if added or relu:
            for o in range(out_c):
                at = (n * out_c + o) * oplane + r0 * ow
                store_row(yf, at, yf, at, (r1 - r0) * ow, res, added, ca, cb, relu, slope)


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_flat(x, kh, kw, ph, pw, w, bias, y, rows_of, cols_of, res, ca, cb, relu, slope, parts):
    """A stride-1 "same" convolution (the top's planes the bottom's size) straight from x (N, C, H, W), its planes
    taken flat: runs of three vectors of positions across the rows (simd.tile_flat*: loads masked by each
    position's row and column, rows_of and cols_of (int32, H*W rounded up to whole vectors, the rest rows no image
    has)), so rows narrower than the vectors waste no lanes (28x28: 49 vectors, not 28 rows of 2). w, bias, y, res,
    ca, cb, relu, slope as direct_conv_unpadded (whose sums these are, to the bit); a task a band of an image's
    vectors (parts bands an image)."""
    n_img, chans, height, width = x.shape
    out_c = y.shape[1]
    opad = w.shape[1]
    vec = VECTOR_BYTES // x.itemsize
    plane = height * width
    nvec = (plane + vec - 1) // vec
    xf, wf, yf = x.reshape(-1), w.reshape(-1), y.reshape(-1)
    added = res.size > 0
    for task in prange(n_img * parts):
        n, g = task // parts, task % parts
        va, vb = g * nvec // parts, (g + 1) * nvec // parts
        if vb <= va:
            continue
        xbase, ybase = n * chans * plane, n * out_c * plane
        v = va
        while v < vb:
            left = vb - v
            for o0 in range(0, out_c, BCAST_MR):
                args = (xf, xbase, chans, height, width, v * vec, kh, kw, ph, pw, rows_of, cols_of, wf, o0, opad,
                        bias, o0, min(BCAST_MR, out_c - o0), yf, ybase + o0 * plane, plane)
                if left >= 3:
                    tile_flat3(*args)
                elif left == 2:
                    tile_flat2(*args)
                else:
                    tile_flat1(*args)
            v += min(3, left)
        if added or relu:
            q0, q1 = va * vec, min(vb * vec, plane)
            for o in range(out_c):
                at = ybase + o * plane + q0
                store_row(yf, at, yf, at, q1 - q0, res, added, ca, cb, relu, slope)


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_pixels_bands(x, xpad, ph, pw, s, wp, rows, reach, offs, w, bias, qs, out, y, res, ca, cb, relu,
                             slope, parts):
    """place_planes (or place_phases), direct_conv_pixels and pixels_to_top in one pass, a task a band of an
    image's pixel tiles (as direct_conv_bands for the rows, res too; the same sums as direct_conv_pixels).
    y (N, O, OH, OW)."""
    n_img, chans, height, width = x.shape
    planes, length = xpad.shape[1], xpad.shape[2]
    ppad, opad = out.shape[1], out.shape[2]
    out_c, rows_out, row_len = y.shape[1], y.shape[2], y.shape[3]
    plane = rows_out * row_len
    step = PIX_NV * (VECTOR_BYTES // xpad.itemsize)
    tiles, taps = ppad // PIX_MR, offs.shape[0]
    xf, bf, wf, of, yf = x.reshape(-1), xpad.reshape(-1), w.reshape(-1), out.reshape(-1), y.reshape(-1)
    own, added = (parts if xpad.shape[0] > n_img else 1), res.size > 0
    kb = max(PIX_MR, PIX_KB_VALUES // opad)  # (direct_conv_pixels' blocks of taps)
    for task in prange(n_img * parts):
        n, g = task // parts, task % parts
        t0, t1 = g * tiles // parts, (g + 1) * tiles // parts  # (by output rows, 7x7 planes split 3 to 6 tiles)
        if t1 <= t0:
            continue
        xbase, obase = (n * own + g % own) * planes * length, n * ppad * opad
        place_band(xf, n, chans, height, width, bf, xbase, length, ph, pw, s, wp, rows, qs[t0 * PIX_MR],
                   qs[t1 * PIX_MR - 1] + reach)
        for k0 in range(0, taps, kb):
            ob, wb = offs[k0:min(k0 + kb, taps)], wf[k0 * opad:]
            for t in range(t0, t1):
                for o0 in range(0, opad, step):
                    if k0 == 0:
                        tile_pixels(bf, xbase, qs, t * PIX_MR, ob, wb, o0, opad, bias, of, obase, opad)
                    else:
                        tile_pixels_acc(bf, xbase, qs, t * PIX_MR, ob, wb, o0, opad, bias, of, obase, opad)
        for o in range(out_c):  # the band's pixels to the top
            dst, src = (n * out_c + o) * plane, obase + o
            for p in range(t0 * PIX_MR, min(t1 * PIX_MR, plane)):
                v = of[uintp(src + p * opad)]
                if added:
                    v = ca * v + cb * res[uintp(dst + p)]
                yf[uintp(dst + p)] = v if not relu or v > 0 else v * slope


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_pixels(xp, offs, w, bias, qs, out, threads=1):
    """xp (N, C*L) padded planes, offs (K,), w (K, Opad), bias (Opad,), qs (Ppad,) the positions of the output
    pixels in a plane -> out (N, Ppad, Opad), channels-last: out[n, p, o] = bias[o] + sum_k w[k, o] *
    xp[n, offs[k] + qs[p]]. Computes only the pixels kept (direct_conv computes every column of a padded row:
    a third wasted on 8x8 planes); Opad a multiple of PIX_NV vectors, Ppad of PIX_MR. threads: Numba's threads
    (a batch smaller than them splits each image's pixels; a kernel calling get_num_threads cannot be cached)."""
    n_img, per_image = xp.shape
    ppad, opad = out.shape[1], out.shape[2]
    step = PIX_NV * (VECTOR_BYTES // xp.itemsize)
    tiles, taps = ppad // PIX_MR, offs.shape[0]
    xf, wf, of = xp.reshape(-1), w.reshape(-1), out.reshape(-1)
    if PIX_KB_VALUES == 0:  # (the taps unblocked: every tile reads all weights)
        for task in prange(n_img * tiles):
            n, t = task // tiles, task % tiles
            for o0 in range(0, opad, step):
                tile_pixels(xf, n * per_image, qs, t * PIX_MR, offs, wf, o0, opad, bias, of, n * ppad * opad, opad)
        return
    # blocks of taps whose weights (kb x Opad) stay in L1 while every pixel tile of a task sums them (a tile
    # reading all the weights streamed them from L2 once a tile: ResNet's 64 filters on 8x8, 147 KB 11 times);
    # an image's tiles in as many parts as keep the threads busy at a small batch
    kb = max(PIX_MR, PIX_KB_VALUES // opad)
    parts = min(tiles, max(1, -(-threads // n_img)))
    for task in prange(n_img * parts):
        n, g = task // parts, task % parts
        xbase, obase = n * per_image, n * ppad * opad
        for k0 in range(0, taps, kb):
            ob, wb = offs[k0:min(k0 + kb, taps)], wf[k0 * opad:]
            for t in range(g * tiles // parts, (g + 1) * tiles // parts):
                for o0 in range(0, opad, step):
                    if k0 == 0:
                        tile_pixels(xf, xbase, qs, t * PIX_MR, ob, wb, o0, opad, bias, of, obase, opad)
                    else:
                        tile_pixels_acc(xf, xbase, qs, t * PIX_MR, ob, wb, o0, opad, bias, of, obase, opad)


@njit(cache=True, nogil=True)
def pixels_to_top(buf, y, relu=False, slope=0.0):
    """buf (N, Ppad, Opad) -> y (N, O, P): y[n, o, p] = buf[n, p, o], with a ReLU as take_planes."""
    n_img, out_c, plane = y.shape
    yf, bf = y.reshape(-1), buf.reshape(-1)
    ppad, opad = buf.shape[1], buf.shape[2]
    for n in range(n_img):
        for p0 in range(0, plane, 32):  # blocks of pixels whose values stay in L1 across the filters
            p1 = min(p0 + 32, plane)
            for o in range(out_c):
                dst, src = (n * out_c + o) * plane, n * ppad * opad + o
                for p in range(p0, p1):
                    v = bf[uintp(src + p * opad)]
                    yf[uintp(dst + p)] = v if not relu or v > 0 else v * slope


def _place_channels_last(x, buf, row):
    """x (N, C, H, W) -> buf (N, Q, B), B >= C: buf[n, i*row + j, c] = x[n, c, i, j]; the rest of buf is not
    touched. Blocks of a vector's channels by as many columns of a row transposed in registers (`transpose_tile`),
    the channels and columns past the last whole block one by one (ResNet-20's 64 x 16 x 32x32: 0.46 -> 0.30 ms;
    the loops alone wrote 8 GB/s)."""
    n_img, chans, height, width = x.shape
    xf, bf = x.reshape(-1), buf.reshape(-1)
    positions, planes = buf.shape[1], buf.shape[2]
    step = VECTOR_BYTES // x.itemsize
    cbody, jbody = chans - chans % step, width - width % step
    zeros = np.zeros(step, x.dtype)
    for p in prange(n_img * height):
        n, i = p // height, p % height
        base = (n * positions + i * row) * planes
        for c0 in range(0, cbody, step):
            src = ((n * chans + c0) * height + i) * width
            for j0 in range(0, jbody, step):
                transpose_tile(xf, src + j0, height * width, bf, base + j0 * planes + c0, planes, zeros, 0, False,
                               0.0)
        for c in range(chans):
            src = ((n * chans + c) * height + i) * width
            for j in range(0 if c >= cbody else jbody, width):
                bf[uintp(base + j * planes + c)] = xf[uintp(src + j)]


place_channels_last = spread(_place_channels_last, SPREAD)


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_dw(xp, offs, dyt, oh, ow, wp, dwt, threads=1):
    """dwt (Kpad, Opad) += sum over n and q = y*wp + x (y < oh, x < ow) of xp[n, offs[k] + q] * dyt[n, q, o]
    (xp (N, C*L) padded planes, offs (Kpad,), dyt (N, Q, Opad) the top diff channels-last; Opad whole vectors,
    the last of an odd number on a tile of its own, tile_taps_last). Each thread sums a
    run of tap blocks, image by image (a few images where they are small): the image's top diff and planes stay
    in L1/L2 while every block of its run reads them (blocks outer and all images inner streamed the whole top
    diff from L3 once a block: 1.4-2.1x slower at 32-byte vectors, 1.1-1.4x at 64)."""
    n_img, per_image = xp.shape
    positions, opad = dyt.shape[1], dyt.shape[2]
    step = TAPS_NV * (VECTOR_BYTES // xp.itemsize)
    block = max(1, min(n_img, DW_BLOCK_BYTES // ((per_image + positions * opad) * xp.itemsize)))
    blocks = dwt.shape[0] // TAPS_KR
    parts = max(1, min(threads, blocks))
    xf, df, of = xp.reshape(-1), dyt.reshape(-1), dwt.reshape(-1)
    body = opad - opad % step  # (a last vector of filters: tile_taps_last)
    for part in prange(parts):
        for n in range(0, n_img, block):
            for t in range(part * blocks // parts, (part + 1) * blocks // parts):
                k0 = t * TAPS_KR
                for o0 in range(0, body, step):
                    tile_taps(xf, n * per_image, offs, k0, df, n * positions * opad + o0, opad, oh, ow, wp,
                              min(block, n_img - n), per_image, positions * opad, of, k0 * opad + o0, opad)
                if body < opad:
                    tile_taps_last(xf, n * per_image, offs, k0, df, n * positions * opad + body, opad, oh, ow, wp,
                                   min(block, n_img - n), per_image, positions * opad, of, k0 * opad + body, opad)


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_dw_planar(xp, offs, dy, oh, ow, wp, dw, half=False, threads=1):
    """dw (O, K) += sum over n and output pixels (y, x) of xp[n, offs[k] + y*wp + x] * dy[n, o, y*ow + x]: the
    weight gradient from the top diff as it is, (N, O, OH*OW), no channels-last copy (`tile_planar`: vectors
    along the rows, OW a multiple of a vector; K >= PLANAR_KR and O >= PLANAR_OR: the last block of taps and of
    filters overlaps the one before and adds only its new part). Each thread sums every tile over its share of
    the images, a block of them at a time read back from L2 by every tile (tiles outer streamed all images from
    L3 once a tile: CIFAR-10 quick's conv1 1.75-1.85x), into a dw of its own added at the end: the images are
    those the layer above wrote on its core (split by tiles, LeNet's conv1 whole on two threads ran 0.54 ms in
    the net against 0.36 alone)."""
    n_img, per_image = xp.shape
    out_c, k_all = dw.shape
    plane = dy.shape[2]
    block = max(1, min(n_img, DW_IMAGES // (per_image + out_c * plane)))  # images per pass, read back from cache
    kb, ob = -(-k_all // PLANAR_KR), -(-out_c // PLANAR_OR)
    parts = max(1, min(threads, n_img))
    partial = np.zeros((parts, out_c, k_all), dw.dtype)
    xf, df = xp.reshape(-1), dy.reshape(-1)
    for part in prange(parts):
        res = np.empty(PLANAR_KR * PLANAR_OR, xp.dtype)
        mine = partial[part]
        lo, hi = part * n_img // parts, (part + 1) * n_img // parts
        for n in range(lo, hi, block):
            for t in range(kb * ob):
                kfrom, ofrom = t // ob * PLANAR_KR, t % ob * PLANAR_OR
                k0, o0 = min(kfrom, k_all - PLANAR_KR), min(ofrom, out_c - PLANAR_OR)
                if half:  # half vectors (rows of a multiple of half a vector only)
                    tile_planar_half(xf, n * per_image, offs, k0, df, (n * out_c + o0) * plane, plane, oh, ow, wp,
                                     min(block, hi - n), per_image, out_c * plane, res)
                else:
                    tile_planar(xf, n * per_image, offs, k0, df, (n * out_c + o0) * plane, plane, oh, ow, wp,
                                min(block, hi - n), per_image, out_c * plane, res)
                for s in range(PLANAR_KR):
                    for r in range(PLANAR_OR):
                        if k0 + s >= kfrom and o0 + r >= ofrom:
                            mine[o0 + r, k0 + s] += res[s * PLANAR_OR + r]
    for part in range(parts):
        dw += partial[part]


@njit(cache=True, nogil=True, parallel=True)
def direct_conv_dw1(xp, offs, dyt, oh, ow, wp, dwt, threads=1):
    """direct_conv_dw on tiles of one vector of filters and twice the taps (Opad one vector: 16 filters on
    AVX-512, where two vectors would compute half zeros; ResNet-20's first stage 2x)."""
    n_img, per_image = xp.shape
    positions, opad = dyt.shape[1], dyt.shape[2]
    step = VECTOR_BYTES // xp.itemsize
    block = max(1, min(n_img, DW_BLOCK_BYTES // ((per_image + positions * opad) * xp.itemsize)))
    blocks = dwt.shape[0] // TAPS_KR1
    parts = max(1, min(threads, blocks))
    xf, df, of = xp.reshape(-1), dyt.reshape(-1), dwt.reshape(-1)
    for part in prange(parts):
        for n in range(0, n_img, block):
            for t in range(part * blocks // parts, (part + 1) * blocks // parts):
                k0 = t * TAPS_KR1
                for o0 in range(0, opad, step):
                    tile_taps1(xf, n * per_image, offs, k0, df, n * positions * opad + o0, opad, oh, ow, wp,
                               min(block, n_img - n), per_image, positions * opad, of, k0 * opad + o0, opad)


def _images_to_lanes(x, buf):
    """x (N, A, B) -> buf (G, B, A, L), the images in the lanes: buf[g, b, a, l] = x[g*L + l, a, b], zero for
    g*L + l >= N. Blocks of a vector's lanes of images by as many values of b, transposed in registers: one
    vector of images at a time (the images past the batch's end as rows of zeros in a block of its own), so
    that a vector's images are read as that many runs of memory, not twice that."""
    n_img, rows, cols = x.shape
    groups, width = buf.shape[0], buf.shape[3]
    step = VECTOR_BYTES // x.itemsize
    body = cols - cols % step
    xf, bf = x.reshape(-1), buf.reshape(-1)
    zeros = np.zeros(step, x.dtype)
    for g in prange(groups):  # (the groups a thread fills are those its share of the lanes kernels reads)
        block = np.zeros(step * step, x.dtype)  # a partial vector's images, padded with zeros
        for l0 in range(0, width, step):
            n0 = g * width + l0
            present = min(step, max(0, n_img - n0))
            if present < step:
                block[:] = 0
            for a in range(rows):
                for b0 in range(0, body, step):
                    at = ((g * cols + b0) * rows + a) * width + l0
                    if present == step:
                        transpose_tile(xf, (n0 * rows + a) * cols + b0, rows * cols, bf, at, rows * width, zeros, 0,
                                       False, 0.0)
                    else:
                        for r in range(present):
                            src = ((n0 + r) * rows + a) * cols + b0
                            for b in range(step):
                                block[r * step + b] = xf[uintp(src + b)]
                        transpose_tile(block, 0, step, bf, at, rows * width, zeros, 0, False, 0.0)
                for lane in range(l0, l0 + step):
                    n = n0 + lane - l0
                    for b in range(body, cols):
                        bf[uintp(((g * cols + b) * rows + a) * width + lane)] = \
                            xf[uintp((n * rows + a) * cols + b)] if n < n_img else 0


images_to_lanes = spread(_images_to_lanes, SPREAD)


def _lanes_to_images(buf, x):
    """buf (G, M', L), M' >= M -> x (N, M): x[n, m] = buf[n // L, m, n % L] (blocks transposed in registers, a
    vector of images at a time; a partial vector's through a block of its own)."""
    n_img, m_all = x.shape
    m_buf, width = buf.shape[1], buf.shape[2]
    step = VECTOR_BYTES // x.itemsize
    body = m_all - m_all % step
    xf, bf = x.reshape(-1), buf.reshape(-1)
    zeros = np.zeros(step, x.dtype)
    for g in prange(-(-n_img // width)):
        block = np.empty(step * step, x.dtype)
        for l0 in range(0, width, step):
            n0 = g * width + l0
            present = min(step, n_img - n0)
            if present <= 0:  # lanes past the batch
                continue
            for m0 in range(0, body, step):
                src = (g * m_buf + m0) * width + l0
                if present == step:
                    transpose_tile(bf, src, width, xf, n0 * m_all + m0, m_all, zeros, 0, False, 0.0)
                else:
                    transpose_tile(bf, src, width, block, 0, step, zeros, 0, False, 0.0)
                    for r in range(present):
                        for m in range(step):
                            xf[uintp((n0 + r) * m_all + m0 + m)] = block[r * step + m]
        for n in range(g * width, min(g * width + width, n_img)):
            for m in range(body, m_all):
                xf[uintp(n * m_all + m)] = bf[uintp((g * m_buf + m) * width + n - g * width)]


lanes_to_images = spread(_lanes_to_images, SPREAD)


@njit(cache=True, nogil=True, parallel=True)
def lanes_conv_data(dyb, starts, ent_d, ent_w, wt, dxb, last, blocks):
    """The data gradient with the images in the lanes: dyb (G, Q, O, L) the top diff, wt (B, T, O, LANES_ROW) the
    weights in blocks of the tiles' channels (T = kh*kw taps; a block's weights, contiguous, stay in L1 while it
    sums every pixel), blocks (B, 2) each tile's first channel and width (lane_blocks: one of LANES_WIDTHS; a tile
    reads the first `width` of each row), starts (P+1,) and the entries ent_d, ent_w of each input pixel p (the
    top-diff offset q*O*L and the weight offset t*O*LANES_ROW of every tap t it receives from top pixel q) -> dxb
    (G, Cpad, P, L): dxb[g, c, p, l] = sum over p's entries e and o < O of wt[b, t_e, o, c - c0_b] * dyb[g, q_e, o,
    l] for the block b holding c, for the lanes l that hold images: `last` images in the last group (where one
    vector holds them, the lanes past it are not written)."""
    groups, positions, out_c, width = dyb.shape
    cpad, plane = dxb.shape[1], dxb.shape[2]
    n_blocks, row = blocks.shape[0], wt.shape[3]
    block = wt.shape[1] * wt.shape[2] * row  # one block's weights
    tail = last <= VECTOR_BYTES // dyb.itemsize  # the last group on one vector (tile_lanes_*1)
    df, wf, of = dyb.reshape(-1), wt.reshape(-1), dxb.reshape(-1)
    for task in prange(groups * n_blocks * plane):
        g, rest = task // (n_blocks * plane), task % (n_blocks * plane)
        b, p = rest // plane, rest % plane
        c0, cw = blocks[b, 0], blocks[b, 1]
        db, e0, e1, wb = g * positions * out_c * width, starts[p], starts[p + 1], b * block
        ob, os_ = ((g * cpad + c0) * plane + p) * width, plane * width
        if tail and g == groups - 1:
            if cw == LANES_WIDTHS[0]:
                tile_lanes_a1(df, db, ent_d, ent_w, e0, e1, wf, wb, out_c, width, row, of, ob, os_)
            elif cw == LANES_WIDTHS[1]:
                tile_lanes_b1(df, db, ent_d, ent_w, e0, e1, wf, wb, out_c, width, row, of, ob, os_)
            else:
                tile_lanes_c1(df, db, ent_d, ent_w, e0, e1, wf, wb, out_c, width, row, of, ob, os_)
        elif cw == LANES_WIDTHS[0]:
            tile_lanes_a(df, db, ent_d, ent_w, e0, e1, wf, wb, out_c, width, row, of, ob, os_)
        elif cw == LANES_WIDTHS[1]:
            tile_lanes_b(df, db, ent_d, ent_w, e0, e1, wf, wb, out_c, width, row, of, ob, os_)
        else:
            tile_lanes_c(df, db, ent_d, ent_w, e0, e1, wf, wb, out_c, width, row, of, ob, os_)


@njit(cache=True, nogil=True)
def lanes_weights(w3, wt, blocks):
    """w3 (T, M, N), a view of the weights in any order -> wt (B, T, M, LANES_ROW), lanes_conv_data's blocks:
    wt[b, t, m, r] = w3[t, m, c0_b + r] for r < width_b, zero past it and past N (one pass, no copy between)."""
    taps, rows, n = w3.shape
    row = wt.shape[3]
    for b in range(wt.shape[0]):
        c0 = blocks[b, 0]
        kept = min(blocks[b, 1], n - c0)
        for t in range(taps):
            for m in range(rows):
                for r in range(kept):
                    wt[b, t, m, r] = w3[t, m, c0 + r]
                for r in range(kept, row):
                    wt[b, t, m, r] = 0


@functools.lru_cache(maxsize=None)
def lane_blocks(n):
    """(B, 2) int64, each lanes tile's first channel and width: n channels in tiles of LANES_WIDTHS at the least
    cost (LANES_COST a channel, padding included; ties: fewer tiles, the first widths first). At 32-byte vectors
    20 channels are 5 x 4 (24 as tiles of 6 alone), 50 are 6 x 5 + 5 x 4 (54); at 64-byte, 10 x 2 and 10 x 5."""
    top = n + max(LANES_WIDTHS)
    best = [(0.0, 0, ())] + [None] * top  # covering exactly k channels: (cost, tiles, widths)
    for k in range(1, top + 1):
        for w, c in zip(LANES_WIDTHS, LANES_COST):
            if k >= w and best[k - w] is not None:
                cost, tiles, widths = best[k - w]
                option = (cost + w * c, tiles + 1, tuple(sorted(widths + (w,), key=LANES_WIDTHS.index)))
                if best[k] is None or option[:2] < best[k][:2]:
                    best[k] = option
    widths = min((b for b in best[n:] if b is not None), key=lambda b: b[:2])[2]
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    blocks = np.array(list(zip(starts, widths)), np.int64).reshape(-1, 2)
    blocks.setflags(write=False)
    return blocks


def _lanes_to_top(buf, y, bias, relu=False, slope=0.0, res=None, ca=1.0, cb=0.0):
    """buf (G, Opad, P, L) -> y (N, O, P): y[n, o, p] = buf[n // L, o, p, n % L] + bias[o*P + p], with a ReLU
    (leaky: slope) as take_planes; bias (O*P,) rounded up to a whole vector, each channel's P times. A vector of
    images at a time, as lanes_to_images. res (N*O*P,): y = ca * that + cb * res before the ReLU (an Eltwise SUM
    above, as sum_two adds it: direct_conv_bands)."""
    n_img, out_c, plane = y.shape
    width = buf.shape[3]
    step = VECTOR_BYTES // y.itemsize
    m_all, m_buf = out_c * plane, buf.shape[1] * plane
    body = m_all - m_all % step
    yf, bf = y.reshape(-1), buf.reshape(-1)
    for g in prange(-(-n_img // width)):
        block = np.empty(step * step, y.dtype)
        for l0 in range(0, width, step):
            n0 = g * width + l0
            present = min(step, n_img - n0)
            if present <= 0:  # lanes past the batch
                continue
            for m0 in range(0, body, step):
                src = (g * m_buf + m0) * width + l0
                if present == step and res is None:
                    transpose_tile(bf, src, width, yf, n0 * m_all + m0, m_all, bias, m0, relu, slope)
                    continue
                transpose_tile(bf, src, width, block, 0, step, bias, m0, relu and res is None, slope)
                for r in range(present):
                    at = (n0 + r) * m_all + m0
                    if res is None:
                        for m in range(step):
                            yf[uintp(at + m)] = block[r * step + m]
                    else:
                        for m in range(step):
                            t = ca * block[r * step + m] + cb * res[uintp(at + m)]
                            yf[uintp(at + m)] = t if not relu or t > 0 else t * slope
        for n in range(g * width, min(g * width + width, n_img)):
            for m in range(body, m_all):
                v = bf[uintp((g * m_buf + m) * width + n - g * width)] + bias[m]
                if res is not None:
                    v = ca * v + cb * res[uintp(n * m_all + m)]
                yf[uintp(n * m_all + m)] = v if not relu or v > 0 else v * slope


lanes_to_top = spread(_lanes_to_top, SPREAD)


def lane_entries_forward(in_hw, out_hw, kernel, pad, dilation, stride, chans, width, opad):
    """(starts, ent_d, ent_w) of lanes_conv_data run forward: for every output pixel (oy, ox), in order, the taps
    (i, j) whose input pixel (oy*sh - ph + i*dh, ox*sw - pw + j*dw) is inside the bottom: ent_d = (y*W + x)*C*width,
    ent_w = (i*kw + j)*C*opad (opad: a weight row's length, LANES_ROW in lanes_conv_data's blocks)."""
    (h, w), (oh, ow), (kh, kw), (ph, pw), (dh, dw), (sh, sw) = in_hw, out_hw, kernel, pad, dilation, stride
    oy, ox, i, j = (a.reshape(-1) for a in np.meshgrid(np.arange(oh), np.arange(ow), np.arange(kh), np.arange(kw),
                                                        indexing="ij"))
    y, x = oy * sh - ph + i * dh, ox * sw - pw + j * dw
    keep = (y >= 0) & (x >= 0) & (y < h) & (x < w)
    starts = np.zeros(oh * ow + 1, np.int64)
    np.cumsum(np.bincount((oy * ow + ox)[keep], minlength=oh * ow), out=starts[1:])
    return starts, ((y * w + x)[keep] * chans * width).astype(np.int64), ((i * kw + j)[keep] * chans * opad).astype(
        np.int64)


def lane_entries(in_hw, out_hw, kernel, pad, dilation, stride, out_c, width, cpad):
    """(starts, ent_d, ent_w) of lanes_conv_data: for every input pixel (y, x), in order, the taps (i, j) with a
    top pixel (oy, ox) = ((y + ph - i*dh) / sh, (x + pw - j*dw) / sw) whole and inside the top: ent_d =
    (oy*OW + ox)*O*width, ent_w = (i*kw + j)*O*cpad (cpad: a weight row's length, LANES_ROW in lanes_conv_data's
    blocks)."""
    (h, w), (oh, ow), (kh, kw), (ph, pw), (dh, dw), (sh, sw) = in_hw, out_hw, kernel, pad, dilation, stride
    y, x, i, j = (a.reshape(-1) for a in np.meshgrid(np.arange(h), np.arange(w), np.arange(kh), np.arange(kw),
                                                      indexing="ij"))
    ty, tx = y + ph - i * dh, x + pw - j * dw
    keep = (ty % sh == 0) & (tx % sw == 0) & (ty >= 0) & (tx >= 0) & (ty // sh < oh) & (tx // sw < ow)
    starts = np.zeros(h * w + 1, np.int64)
    np.cumsum(np.bincount((y * w + x)[keep], minlength=h * w), out=starts[1:])
    ent_d = ((ty // sh * ow + tx // sw)[keep] * out_c * width).astype(np.int64)
    ent_w = ((i * kw + j)[keep] * out_c * cpad).astype(np.int64)
    return starts, ent_d, ent_w


def _round_up(value, step):
    return -(-value // step) * step


_scratch = threading.local()


def scratch(key, shape, dtype, zeros=False):
    """An array for use within one pass, shared by the layers of this thread (a net's layers run one at a time;
    each slice of a batch is a thread of its own) that ask with the same key: the same geometry, so the places a
    kernel needs to stay zero (zeros=True) are the same for all. Cuts ResNet-20's training memory about in half:
    each convolution held five activation-sized buffers of its own."""
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    a = pool.get(key)
    if a is None:
        a = pool[key] = (np.zeros if zeros else np.empty)(shape, dtype)
    return a


def release_scratch(*arrays):
    """Drop the calling thread's pooled scratch among `arrays` (a net whose batch now runs as slices: its own
    forward's buffers would otherwise stay in the pool of the thread that ran it)."""
    pool = getattr(_scratch, "pool", None) or {}
    ids = {id(a) for a in arrays if a is not None}
    for key in [k for k, v in pool.items() if id(v) in ids]:
        del pool[key]


class DirectPlan:
    """Buffers and offsets of the direct convolution for one bottom shape and dtype (see the module docstring).

    Forward: x -> xpad (N, C*s*s, L) planes (or phases) of rows Wp (and a plane of ones after them: bias_tap),
    out (N, Opad, NQ) with rows Wp -> top (or the top itself: y_direct, rows_direct).
    Backward: top diff -> dyt (N, Q, Opad) channels-last (rows Wp, zeros past OW) for the weight gradient, and -> dyp
    (N, O, L2) planes padded by the flipped kernel's reach, rows Wq, for the bottom diff dxq (N, Cpad, NQB) -> dx.
    """

    def __init__(self, shape, out_c, kernel, pad, dilation, out_hw, dtype, stride=1):
        n, c, h, w = self.bottom_shape = tuple(shape)
        (kh, kw), (ph, pw), (dh, dw), (oh, ow), s = kernel, pad, dilation, out_hw, stride
        step = lanes(dtype)
        # stride s: each padded plane split into s*s phase planes (every s-th row and column from 0..s-1) of rows
        # wp, so that output q = y*wp + x reads tap (i, j) in phase ((i*dh) % s, (j*dw) % s) at
        # q + ((i*dh) // s)*wp + (j*dw) // s: the stride-1 products on other offsets (s = 1: the padded planes)
        hq = max(-(-(h + 2 * ph) // s), oh + (kh - 1) * dh // s)
        self.wp = max(-(-(w + 2 * pw) // s), ow + (kw - 1) * dw // s)
        self.stride, self.pad, self.start = s, (ph, pw), ph * self.wp + pw
        self.nq = _round_up(oh * self.wp, step)
        taps = [((i * dh % s) * s + j * dw % s, (i * dh // s) * self.wp + j * dw // s)
                for i in range(kh) for j in range(kw)]
        length = max(hq * self.wp, max(t[1] for t in taps) + self.nq)
        self.rows = np.zeros(s, np.bool_)  # the row phases some tap reads (a 1x1 kernel: the first alone)
        self.rows[[t[0] // s for t in taps]] = True
        self.k, self.out_c = c * kh * kw, out_c
        # the weight gradient's tiles: one vector of filters (and twice the taps) where two would compute too many
        # padding filters (simd.TAPS_ONE: 16 filters on AVX-512, 8 on AVX2)
        self.taps_nv = 1 if _round_up(out_c, TAPS_NV * step) > TAPS_ONE * _round_up(out_c, step) else TAPS_NV
        self.offs = np.zeros(_round_up(self.k, TAPS_KR1 if self.taps_nv == 1 else TAPS_KR), np.int64)
        self.offs[:self.k] = ((np.arange(c)[:, None] * s * s + np.array([t[0] for t in taps])[None]) * length
                              + np.array([t[1] for t in taps])[None]).reshape(-1)
        # the forward as rows (direct_conv: every column of a padded row, BCAST_MR filters a tile) or as pixels
        # (direct_conv_pixels: the kept pixels alone, PIX_NV vectors of filters a tile), whichever wastes less
        # by a margin (measured: 16x16 and 8x8 planes of 5x5 kernels 1.2-1.4x as pixels; ResNet's 3x3 on 16x16
        # as fast as rows, whose copy back is cheaper)
        p_out, p_in = oh * ow, h * w
        rows_useful = oh * ow / _round_up(oh * self.wp, step) * out_c / _round_up(out_c, BCAST_MR)
        pix_useful = p_out / _round_up(p_out, PIX_MR) * out_c / _round_up(out_c, PIX_NV * step)
        self.pixels = PIXELS if PIXELS is not None else pix_useful >= PIXELS_MARGIN * rows_useful
        self.o_pad = _round_up(out_c, PIX_NV * step if self.pixels else BCAST_MR)
        self.o_taps = _round_up(out_c, step)  # (two vectors a tile, the last of an odd number one: direct_conv_dw)
        # the weight gradient from the top diff as it is, for a first layer of few channels (its few taps a filter
        # made the channels-last copy and the tap tiles' padding most of the work: CIFAR-10 quick's conv1 2.3x),
        # where the rows are whole vectors; with more channels the tap tiles are faster (1.2-2x)
        self.planar_half = step > 8 and ow % step != 0 and ow % (step // 2) == 0  # (AVX-512 float32 only)
        self.planar = PLANAR and c <= 4 and ow >= 16 and (ow % step == 0 or self.planar_half) \
            and self.k >= PLANAR_KR and out_c >= PLANAR_OR  # (rows under 16: little to gain, one more compile)
        self.nq_valid, self.out_hw = (oh - 1) * self.wp + ow, tuple(out_hw)  # up to the last output pixel
        # scratch within one pass, shared by the layers of this thread with the same geometry; the padded input
        # too (the weight gradient reads it): `holder` says whose input it holds, the backward places it again
        # where another layer's forward came between (ResNet-20: 124 MiB of padded inputs no longer kept)
        self.key = (tuple(shape), out_c, tuple(kernel), tuple(pad), tuple(dilation), tuple(out_hw), np.dtype(dtype).str,
                    s)
        # a 1x1 kernel without pad or stride on planes of whole vectors: the padded planes are the bottom's own
        # layout, and the rows of out (all filters kept) the top's: the kernels read x and write y themselves
        # (MobileNet's pointwise layers, ResNet-50's bottlenecks: no copy in or out, forward or backward)
        self.x_direct = s == 1 and self.start == 0 and self.wp == w and length == h * w
        # a 1x1 kernel of stride s without pad (ResNet's projections) reads phase (0, 0) alone, whose plane is
        # the bottom subsampled: NumPy's strided copy (place_subsampled) 2-2.6x place_phases' pairs on 8-16 wide rows
        self.subsample = s > 1 and kh == kw == 1 and ph == pw == 0 and self.wp == ow
        # the bias gradient as one more tap of the weight gradient where its tiles have room for it (the taps
        # padded to a whole tile: LeNet's 500 and 25, CIFAR-10 quick's 800 and 75), reading a plane of ones after
        # the padded input's: the sums over the images and pixels of the top diff, at no cost (channel_sums read
        # the whole top diff once more: LeNet's conv1 60-80 us a pass)
        self.bias_tap = not self.x_direct and not self.subsample and len(self.offs) > self.k
        if self.bias_tap:
            self.offs[self.k] = c * s * s * length
        planes = c * s * s + self.bias_tap
        self.xpad = None if self.x_direct else scratch(self.key[:1] + self.key[2:] + ("xpad", planes),
                                                       (n, planes, length), dtype, zeros=True)
        if self.bias_tap:
            self.xpad[:, -1] = 1
        self.holder = scratch(self.key[:1] + self.key[2:] + ("xpad holder", planes), (2,), np.int64)
        if self.pixels:
            ys, xs = np.divmod(np.arange(_round_up(p_out, PIX_MR)).clip(max=p_out - 1), ow)
            self.qs = (ys * self.wp + xs).astype(np.int64)  # the pixels' positions (the last repeated to a tile)
            self.out = scratch(self.key + ("pixels",), (n, len(self.qs), self.o_pad), dtype)
        else:
            self.out = scratch(self.key + ("out",), (n, self.o_pad, self.nq), dtype)
        self.w = np.zeros((self.k, self.o_pad), dtype)
        self.bias = np.zeros(self.o_pad, dtype)
        # backward data: the top diff padded by (kh-1)*dh - ph rows and (kw-1)*dw - pw columns
        qh, qw = (kh - 1) * dh - ph, (kw - 1) * dw - pw
        self.wq, self.start_q = ow + 2 * qw, qh * (ow + 2 * qw) + qw
        self.nqb = _round_up(h * self.wq, step)
        length_q = max((oh + 2 * qh) * self.wq, (kh - 1) * dh * self.wq + (kw - 1) * dw + self.nqb)
        taps_q = [i * dh * self.wq + j * dw for i in range(kh) for j in range(kw)]
        self.offs_q = (np.arange(out_c)[:, None] * length_q + np.array(taps_q)[None]).reshape(-1).astype(np.int64)
        # (of the products it computes, those im2col's would: over the output pixels, not the input's)
        data_rows = p_out / self.nqb * c / _round_up(c, BCAST_MR)
        data_pix = p_out / _round_up(p_in, PIX_MR) * c / _round_up(c, PIX_NV * step)
        self.pixels_q = PIXELS if PIXELS is not None else data_pix >= PIXELS_MARGIN * data_rows
        self.c_pad = _round_up(c, PIX_NV * step if self.pixels_q else BCAST_MR)
        if self.pixels_q:
            ys, xs = np.divmod(np.arange(_round_up(p_in, PIX_MR)).clip(max=p_in - 1), w)
            self.qs_q = (ys * self.wq + xs).astype(np.int64)
        self.y_direct = not self.pixels and self.o_pad == out_c and self.nq == oh * ow and self.wp == ow
        # the rows written to the top a row at a time (direct_conv_rows) where the rows are whole vectors: LeNet's
        # conv1 at 32-byte vectors 1.65x (0.274 -> 0.166 ms with the copy), CIFAR-10 quick's 1.2x (1.4x at 64)
        self.rows_direct = not self.pixels and not self.y_direct and (
            ow % step == 0 or (step > 8 and ow % (step // 2) == 0))  # (half vectors on AVX-512 float32)
        self.dy_direct = self.start_q == 0 and self.wq == ow and length_q == oh * ow
        self.dx_direct = not self.pixels_q and self.c_pad == c and self.nqb == h * w and self.wq == w
        self.dx_rows = not self.pixels_q and not self.dx_direct and w % step == 0  # (as rows_direct)
        self.w_q = np.zeros((out_c * kh * kw, self.c_pad), dtype)
        self.zero_bias = np.zeros(self.c_pad, dtype)
        self.dyt = self.dyp = self.dxq = self.dwt = self.dyb = self.dxb = None  # allocated by the first backward
        self.laid = None  # the fold whose weights w and bias hold (Convolution._forward)
        self.wt = None
        self.forward_useful = max(rows_useful, pix_useful) if PIXELS is None else (
            pix_useful if self.pixels else rows_useful)
        self.data_useful = max(data_rows, data_pix) if PIXELS is None else (data_pix if self.pixels_q else data_rows)
        # the data gradient with the images in the lanes (lanes_conv_data: each input pixel sums the taps it
        # receives, nothing padded) where the direct kernels' would keep less than DIRECT_USEFUL_DATA or a stride
        # splits the top, when the batch fills the lanes: LeNet's conv2 2x, ResNet's down-sampling 1.1-1.6x im2col's
        self.lane_width = LANES_NB * step
        self.lane_groups = -(-n // self.lane_width)
        self.lanes_last = n - (self.lane_groups - 1) * self.lane_width  # images in the last group
        self.lanes_data = LANES_DATA and (s > 1 or self.data_useful < DIRECT_USEFUL_DATA) \
            and n >= LANES_FILL * self.lane_groups * self.lane_width
        self.lane_geometry = ((h, w), (oh, ow), (kh, kw), (ph, pw), (dh, dw), (s, s))
        self.lanes_forward = LANES_DATA and oh * ow <= LANES_PLANE and kh * kw > 1 \
            and n >= LANES_FILL * self.lane_groups * self.lane_width
        self.xb = self.yb = self.wt_f = None  # the lanes forward's buffers (lanes_forward_buffers)
        self._backward_shape = (n, out_c, length_q, dtype)
        self.flat = False  # flat_tables' answer, once asked

    def flat_tables(self, x):
        """(rows_of, cols_of) for direct_conv_flat where it takes this convolution of x: a "same" stride-1 one of a
        kernel larger than 1x1, on AVX-512, whose planes taken flat fill FLAT_MARGIN more of the lanes than its
        rows; else None."""
        if self.flat is not False:
            return self.flat
        self.flat = None
        (kh, kw), vec = self.key[2], lanes(x.dtype)
        plane, width = x.shape[2] * x.shape[3], x.shape[3]
        if not (FLAT and VECTOR_BYTES == 64 and self.key[4] == (1, 1) and self.stride == 1 and kh * kw > 1
                and self.out_hw == x.shape[2:] and x.flags.c_contiguous
                and plane / _round_up(plane, vec) >= FLAT_MARGIN * width / _round_up(width, vec)):
            return None
        q = np.arange(_round_up(plane, vec))
        self.flat = np.where(q < plane, q // width, 1 << 30).astype(np.int32), (q % width).astype(np.int32)
        return self.flat

    def source(self, x, owner):
        """(N, C*s*s*L): what the kernels read for the bottom x of layer `owner`: x itself (x_direct), else xpad
        with x placed there (unless it holds it)."""
        if self.x_direct:
            return x.reshape(x.shape[0], -1)
        self.place(x, owner)
        return self.xpad.reshape(x.shape[0], -1)

    def place(self, x, owner):
        """The bottom x of layer `owner` into xpad (its padded planes, or their phases), unless it holds it."""
        token = (id(owner), x.ctypes.data)
        if tuple(self.holder) == token:
            return
        if self.subsample:
            place_subsampled(x, self.xpad, self.stride)
        elif self.stride == 1:
            place_planes(x, self.xpad, self.start, self.wp)
        else:
            place_phases(x, self.xpad, *self.pad, self.stride, self.wp, self.rows)
        self.holder[:] = token

    def lanes_data_buffers(self):
        """The lanes data gradient's entries and buffers, at its first call (dyb, dxb and wt: scratch)."""
        if self.dyb is None:
            out_c, dtype = self._backward_shape[1], self._backward_shape[3]
            (h, w), (oh, ow), (kh, kw) = self.lane_geometry[:3]
            c, width, groups = self.bottom_shape[1], self.lane_width, self.lane_groups
            self.blocks = lane_blocks(c)
            cpad = int(self.blocks[:, 1].sum())
            self.entries = lane_entries(*self.lane_geometry, out_c, width, LANES_ROW)
            self.dyb = scratch(self.key + ("dyb",), (groups, oh * ow, out_c, width), dtype)
            self.dxb = scratch(self.key + ("dxb",), (groups, cpad, h * w, width), dtype)
            self.wt = scratch(self.key + ("wt",), (len(self.blocks), kh * kw, out_c, LANES_ROW), dtype)

    def lanes_forward_buffers(self):
        """(xb (G, H*W, C, L), yb (G, Opad, OH*OW, L)) of the lanes forward, allocated at its first call with the
        entries, the weights laid out in blocks (B, T, C, LANES_ROW) of the tiles' filters (lane_blocks) and the bias by
        top position (each channel's OH*OW times)."""
        if self.wt_f is None:
            (h, w), (oh, ow), (kh, kw) = self.lane_geometry[:3]
            c = self.bottom_shape[1]
            dtype, width, groups = self.w.dtype, self.lane_width, self.lane_groups
            self.blocks_f = lane_blocks(self.out_c)
            opad = int(self.blocks_f[:, 1].sum())
            self.entries_f = lane_entries_forward(*self.lane_geometry, c, width, LANES_ROW)
            self.wt_f = np.zeros((len(self.blocks_f), kh * kw, c, LANES_ROW), dtype)
            self.bias_f = np.zeros(_round_up(self.out_c * oh * ow, lanes(dtype)), dtype)
            self.xb = scratch(self.key + ("xb",), (groups, h * w, c, width), dtype)
            self.yb = scratch(self.key + ("yb",), (groups, opad, oh * ow, width), dtype)
        return self.xb, self.yb

    def buffers(self):
        return self.xb, self.yb, self.xpad, self.holder, self.out, self.dyt, self.dyp, self.dxq, self.dyb, self.dxb, self.wt

    def backward_buffers(self):
        if self.dwt is None:
            n, out_c, length_q, dtype = self._backward_shape
            if not self.planar:
                self.dyt = scratch(self.key + ("dyt",), (n, self.nq_valid, self.o_taps), dtype, zeros=True)
            # the data gradient's own pass, unless it reads dy itself (in the lanes: lanes_data_buffers, at its
            # first call; a first layer has none)
            if self.stride == 1 and not self.lanes_data:
                if not self.dy_direct:
                    self.dyp = scratch(self.key + ("dyp",), (n, out_c, length_q), dtype, zeros=True)
                if self.pixels_q:
                    self.dxq = scratch(self.key + ("dxq pixels",), (n, len(self.qs_q), self.c_pad), dtype)
                elif not self.dx_direct and not self.dx_rows:
                    self.dxq = scratch(self.key + ("dxq",), (n, self.c_pad, self.nqb), dtype)
            self.dwt = np.empty((len(self.offs), self.o_taps), dtype)


def spatial_param(p, block, name, default):
    """Caffe's (name, name_h/name_w) pair: returns (h, w), checking they are not mixed.

    `name` is "kernel" (read from kernel_size), "pad", "stride" or "dilation"; the plain
    field may be a scalar (Pooling) or a repeated field (Convolution).
    """
    full = name + "_size" if name == "kernel" else name
    rep = getattr(p, full)
    rep = [] if rep is None else rep if isinstance(rep, list) else [rep]
    h, w = getattr(p, name + "_h", None), getattr(p, name + "_w", None)
    if rep and (h is not None or w is not None):
        raise LayerError(f"give either {full} or {name}_h/{name}_w, not both", f"{block}.{full}")
    if h is not None or w is not None:
        if name == "pad":  # Caffe: the other one is 0
            return int(h or 0), int(w or 0)
        if h is None or w is None:
            raise LayerError(f"{name}_h and {name}_w must be given together; received "
                             f"{name}_h={h}, {name}_w={w}", f"{block}.{name}_{'h' if h is None else 'w'}")
        return int(h), int(w)
    if not rep:
        if default is None:
            raise LayerError(f"{full} is required (or {name}_h and {name}_w)", block)
        return default, default
    if len(rep) == 1:
        return int(rep[0]), int(rep[0])
    if len(rep) == 2:
        return int(rep[0]), int(rep[1])
    raise LayerError(f"{full} must be given once or once per spatial dimension (2); received {rep}",
                     f"{block}.{full}")


def _hw(name, help_, minimum):
    return (Field(name + "_h", "int", None, help_ + " (height)", minimum=minimum),
            Field(name + "_w", "int", None, help_ + " (width)", minimum=minimum))


@register("Convolution")
class Convolution(Layer):
    """Convolution. Bottom (N, C, H, W) -> top (N, num_output, OH, OW); in general the channel axis is `axis`,
    the axes before it are images and every axis after it is spatial (Caffe's N-D convolution: one spatial axis
    runs as a plane of height 1, three or more on layers/conv_nd.py). Several bottoms of one shape each get the
    same weights, into the top of the same position."""
    backward_reads = ("bottom",)
    bottoms = (1, None)
    tops = (1, None)

    param_block = "convolution_param"
    fields = (
        Field("num_output", "int", None, "number of filters", minimum=1, required=True),
        Field("bias_term", "bool", True, "learn a bias per output channel"),
        Field("kernel_size", "int", None, "kernel size (once, or height and width)", minimum=1, repeated=True),
        Field("pad", "int", None, "zero padding on each side", minimum=0, repeated=True),
        Field("stride", "int", None, "step between windows", minimum=1, repeated=True),
        Field("dilation", "int", None, "spacing between kernel taps", minimum=1, repeated=True),
        *_hw("kernel", "kernel size", 1), *_hw("pad", "zero padding", 0), *_hw("stride", "stride", 1),
        Field("group", "int", 1, "split channels into this many independent groups", minimum=1),
        Field("weight_filler", "filler", None, "filler of the weights (Caffe's default: constant 0)"),
        Field("bias_filler", "filler", None, "filler of the bias (default constant 0)"),
        Field("axis", "int", 1, "the channel axis: the axes before it are images, those after it spatial"),
    )

    def _read_geometry(self, bottom_shapes):
        """Check the bottoms and read kernel, pad, stride and dilation per spatial axis; sets the 2-D (or, for 3+
        spatial axes, flat) view of the bottom. Returns (images, channels, spatial shape)."""
        p, blk = self.p, self.param_block
        shape = tuple(bottom_shapes[0])
        for i, s in enumerate(bottom_shapes[1:], 1):
            if tuple(s) != shape:
                raise LayerError(f"all bottoms must have one shape (the same weights apply to each); bottom {i} "
                                 f"is {list(s)}, bottom 0 {list(shape)}", "bottom")
        if self.n_tops != len(bottom_shapes):
            raise LayerError(f"needs one top per bottom; received {len(bottom_shapes)} bottoms and {self.n_tops} "
                             "tops", "top")
        n, c, spatial, self.axis = split_axes(shape, p.axis, blk)
        k = len(spatial)
        if k == 0:
            raise LayerError(f"bottom {list(shape)} has no spatial axes after the channel axis {self.axis}; "
                             "reshape the data into images first (e.g. data_param.sample_shape), or use "
                             "InnerProduct", None)
        self.kernel_nd, self.pad_nd, self.stride_nd, self.dilation_nd = (
            nd_param(p, blk, name, default, k) for name, default in
            (("kernel", None), ("pad", 0), ("stride", 1), ("dilation", 1)))
        for name, values, low in (("kernel_size", self.kernel_nd, 1), ("stride", self.stride_nd, 1),
                                  ("dilation", self.dilation_nd, 1), ("pad", self.pad_nd, 0)):
            if min(values) < low:
                raise LayerError(f"{name} must be >= {low}; received {list(values)}", f"{blk}.{name}")
        if c % p.group or (p.num_output or p.group) % p.group:
            raise LayerError(f"channels ({c}) and num_output ({p.num_output}) must both be multiples of "
                             f"group; received group={p.group}", f"{blk}.group")
        self.nd = k > 2
        if not self.nd:  # one spatial axis: a plane of height 1
            self.kernel, self.pad, self.stride, self.dilation = (
                (fill,) * (2 - k) + v for v, fill in ((self.kernel_nd, 1), (self.pad_nd, 0), (self.stride_nd, 1),
                                                     (self.dilation_nd, 1)))
            self.view = (n, c) + (1,) * (2 - k) + spatial
        else:
            self.view = (n, c, count(spatial))
        self._last = 0  # the bottom whose gathered input the buffers hold (several bottoms)
        self._col = None
        return n, c, spatial

    def _top_view(self, n, out):
        self.out_hw = (1,) * (2 - len(out)) + out if not self.nd else out
        self.top_view = (n, self.p.num_output) + (self.out_hw if not self.nd else (count(out),))

    def setup(self, bottom_shapes):
        p, blk = self.p, self.param_block
        n, c, spatial = self._read_geometry(bottom_shapes)
        out = tuple((s + 2 * pd - (d * (kk - 1) + 1)) // st + 1 for s, kk, pd, st, d in
                    zip(spatial, self.kernel_nd, self.pad_nd, self.stride_nd, self.dilation_nd))
        if min(out) <= 0:
            x = "x".join
            raise LayerError(f"kernel {x(map(str, self.kernel_nd))} (dilation {x(map(str, self.dilation_nd))}) is "
                             f"larger than the padded input {x(str(s + 2 * q) for s, q in zip(spatial, self.pad_nd))}; "
                             "use a smaller kernel_size or more pad", f"{blk}.kernel_size")
        self._top_view(n, out)
        if self.nd:
            self.path = NdPath(spatial, out, self.kernel_nd, self.pad_nd, self.stride_nd, self.dilation_nd, p.group)
        self.blob_shapes = [((p.num_output, c // p.group) + self.kernel_nd, p.weight_filler)]
        if p.bias_term:
            self.blob_shapes.append(((p.num_output,), p.bias_filler))
        return [tuple(bottom_shapes[0][:self.axis]) + (p.num_output,) + out] * len(bottom_shapes)

    def _geometry(self):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.pad, self.dilation
        return (kh, kw, sh, sw, ph, pw, dh, dw) + self.out_hw

    def _block(self, n: int, k: int, plane: int, itemsize: int) -> int:
        """Images per im2col buffer. Whole batch, except on one thread (each batch as slices: solvers/replicas.py)
        when the buffer would pass BLOCK_BYTES: then blocks of about BLOCK_TARGET, a divisor of n, which the matrix
        products read back from cache (CIFAR-10 quick conv2, 50 images: forward 20 -> 14 ms, backward 37 -> 29)."""
        per_image = k * self.p.group * plane * itemsize
        if per_image * n <= BLOCK_BYTES or num_threads() > 1:
            return n
        target = max(1, BLOCK_TARGET // per_image)
        return max(d for d in range(1, min(n, target) + 1) if n % d == 0)

    def _wino(self, x):
        """Winograd's plans for this bottom (the forward's WinoPlan or None, the data gradient's or None: the direct
        kernels run that pass; the weight gradient's WinoBack), or None where the direct kernels serve all three
        (WINOGRAD, WINO_CHANNELS, WINO3_*)."""
        k = self.kernel[0]
        if not (WINOGRAD and x.dtype == np.float32 and k in (3, 5) and tuple(self.kernel) == (k, k)
                and tuple(self.stride) == (1, 1) and tuple(self.dilation) == (1, 1) and self.p.group == 1
                and self.pad[0] == self.pad[1] <= k - 1
                and min(x.shape[1], self.p.num_output) >= WINO_CHANNELS[k][0]
                and x.shape[1] + self.p.num_output >= WINO_CHANNELS[k][1]
                and (k == 5 or (self.phase == "TRAIN" and min(self.out_hw) >= WINO3_PLANE))):
            return None
        key = (x.shape, num_threads(), WINO3_ALPHA, WINO3_FORWARD)
        plans = getattr(self, "_wino_plans", None)
        if plans is None or plans[0] != key:
            pad, threads, out_c = self.pad[0], key[1], self.p.num_output
            top = (x.shape[0], out_c) + tuple(self.out_hw)
            al, forward = (6, 6) if k == 5 else (WINO3_ALPHA, 4 if min(x.shape[1], out_c) >= WINO3_FORWARD else 0)
            plans = self._wino_plans = (key, WinoPlan(x.shape, out_c, pad, threads, k, forward) if forward else None,
                                        WinoPlan(top, x.shape[1], k - 1 - pad, threads, k, al)
                                        if pad >= WINO_DATA_PAD[k] else None,
                                        WinoBack(x.shape, out_c, pad, threads, k, al))
        return plans[1:]

    def _direct(self, x):
        """The DirectPlan for this bottom, or None where the im2col path serves: two strides, groups, a pad wider
        than the kernel's reach, other dtypes, YAFFE_CONV=im2col, or a forward that would compute more than twice
        the outputs it keeps (few output channels, or planes so narrow that the dropped columns dominate)."""
        (kh, kw), (ph, pw), (dh, dw) = self.kernel, self.pad, self.dilation
        if (not DIRECT or self.stride[0] != self.stride[1] or self.p.group != 1 or ph > (kh - 1) * dh
                or pw > (kw - 1) * dw or x.dtype not in (np.float32, np.float64)):
            return None
        plan = getattr(self, "_plan", None)
        if plan is None or plan.bottom_shape != x.shape or plan.out_hw != self.out_hw or plan.w.dtype != x.dtype:
            plan = self._plan = DirectPlan(x.shape, self.p.num_output, self.kernel, self.pad, self.dilation,
                                           self.out_hw, x.dtype, self.stride[0])
        return plan if plan.forward_useful >= DIRECT_USEFUL or plan.lanes_forward else None  # (the lanes waste none)

    def bound_forward(self, bottom, top):
        """Layer.bound_forward: the direct path's kernels (placing the bottom, the product, the copy to the top;
        whichever DirectPlan's x_direct and y_direct leave) with their arrays bound, the weights (and the fold of
        Net._folds) laid out once: at a batch of one, about 10 us of Python less a convolution."""
        if self.nd or len(bottom) != 1:
            return None
        x, y = bottom[0].data.reshape(self.view), top[0].data.reshape(self.top_view)
        if self._depthwise(x) is not None or (self._wino(x) or [None])[0] is not None or self._direct(x) is None:
            return None
        plan = self._plan
        banded = BANDS and not plan.x_direct and not plan.lanes_forward
        if self.residual is not None and not (banded or plan.lanes_forward):  # the SUM above added after, as Eltwise
            (res, ca, cb), relu = self.residual, self.relu
            self.residual = self.relu = None
            try:
                inner = self.bound_forward(bottom, top)
            finally:
                self.residual, self.relu = (res, ca, cb), relu
            yf, rf, relu_args = y.reshape(-1), res.reshape(-1), (relu is not None, relu or 0.0)

            def run():
                inner()
                sum_into(yf, ca, rf, cb, *relu_args)
            return run
        residual = self.residual
        self.residual = None
        try:
            self._forward(x, y)  # lays the weights out (plan.laid) and says which path it took
        finally:
            self.residual = residual
        relu, slope = (True, self.relu) if self.relu is not None else (False, 0.0)
        if plan.lanes_forward:
            x3, y3, (xb, yb), entries = x.reshape(x.shape[0], x.shape[1], -1), y.reshape(
                y.shape[0], self.p.num_output, -1), plan.lanes_forward_buffers(), plan.entries_f
            wt, bias_f, holder, last, blocks = plan.wt_f, plan.bias_f, plan.holder, plan.lanes_last, plan.blocks_f
            added = () if residual is None else (residual[0].reshape(-1),) + residual[1:]

            def run():
                holder[0] = 0
                images_to_lanes(x3, xb)
                lanes_conv_data(xb, *entries, wt, yb, last, blocks)
                lanes_to_top(yb, y3, bias_f, relu, slope, *added)
            return run
        n, xpad, wp, holder, out = x.shape[0], plan.xpad, plan.wp, plan.holder, plan.out
        xp, offs, w, bias = plan.source(x, self), plan.offs[:plan.k], plan.w, plan.bias
        if plan.x_direct:
            place, args = _nothing, ()
        elif plan.subsample:
            place, args = place_subsampled, (x, xpad, plan.stride)
        elif plan.stride == 1:
            place, args = place_planes, (x, xpad, plan.start, wp)
        else:
            place, args = place_phases, (x, xpad, *plan.pad, plan.stride, wp, plan.rows)
        kh, kw = plan.key[2]
        res, ca, cb = residual if residual is not None else (y[:0], 1.0, 0.0)  # (for the kernels taking a SUM)
        res = res.reshape(-1)
        tables = plan.flat_tables(x) if banded else None
        if tables is not None:
            # a "same" stride-1 convolution whose rows waste lanes (28, 14, 8 or 7 wide) on flat runs of its planes
            rows_of, cols_of = tables

            def run():
                threads = num_threads()
                direct_conv_flat(x, kh, kw, *plan.pad, w, bias, y, rows_of, cols_of, res, ca, cb, relu, slope,
                                 -(-threads // n) if n < threads else 1)
            return run
        if plan.y_direct and not relu and residual is None and not (banded and n < num_threads()):
            y3 = y.reshape(n, self.p.num_output, -1)

            def run():
                holder[0] = 0
                place(*args)
                direct_conv(xp, offs, w, bias, y3)
            return run
        if plan.rows_direct and not (banded and n < num_threads()) and (
                ROWS_EPILOGUE and plan.stride == 1 or not relu and residual is None):

            def run():
                holder[0] = 0
                place(*args)
                direct_conv_rows(xp, offs, w, bias, y, wp, res, ca, cb, relu, slope)
            return run
        widest, ow = lanes(x.dtype) * (2 if n >= UNPADDED_TWO_BATCH else 1), plan.out_hw[1]
        if (banded and UNPADDED and VECTOR_BYTES == 64 and plan.key[4] == (1, 1) and x.flags.c_contiguous
                and ((plan.stride == 1 and plan.out_hw == x.shape[2:] and UNPADDED_MIN_WIDTH <= ow <= widest)
                     or (plan.stride == 2 and UNPADDED_MIN_WIDTH <= ow <= lanes(x.dtype)
                         and (kh == kw == 1 or n >= UNPADDED_TWO_BATCH)))):
            # a "same" stride-1 convolution on rows of one or two vectors, or a stride-2 one on rows of one, from
            # the bottom itself

            def run():
                threads = num_threads()
                direct_conv_unpadded(x, kh, kw, *plan.pad, plan.stride, w, bias, y, res, ca, cb, relu, slope,
                                     -(-threads // n) if n < threads else 1)
            return run
        if banded:
            # one kernel a band of output rows or pixel tiles (direct_conv_bands, direct_conv_pixels_bands)
            length, bands = xpad.shape[2], {}  # {parts: each band's planes of its own (parts > 1)}
            reach, geometry = int((offs % length).max()), (*plan.pad, plan.stride, wp, plan.rows)
            kernel = direct_conv_pixels_bands if plan.pixels else direct_conv_bands
            extra = (plan.qs,) if plan.pixels else ()

            def run():
                holder[0] = 0
                threads = num_threads()
                parts = -(-threads // n) if n < threads else 1
                if parts not in bands:
                    bands[parts] = xpad if parts == 1 else scratch(
                        plan.key + ("bands", parts), (n * parts,) + xpad.shape[1:], xpad.dtype, zeros=True)
                kernel(x, bands[parts], *geometry, reach, offs, w, bias, *extra, out, y, res, ca, cb, relu, slope,
                       parts)
            return run
        if plan.pixels:
            qs, y3 = plan.qs, y.reshape(n, self.p.num_output, -1)

            def run():
                holder[0] = 0  # xpad holds no layer's input for a backward (DirectPlan.place)
                place(*args)
                direct_conv_pixels(xp, offs, w, bias, qs, out, num_threads())
                pixels_to_top(out, y3, relu, slope)
            return run

        def run():
            holder[0] = 0
            place(*args)
            direct_conv(xp, offs, w, bias, out)
            take_planes(out, wp, y, relu, slope)
        return run

    def _im2col_shape(self, n, dtype):
        """(k, plane, images per block) for the im2col path."""
        plane = self.out_hw[0] * self.out_hw[1]
        k = self.blobs[0].data[0].size
        return k, plane, self._block(n, k, plane, np.dtype(dtype).itemsize)

    def _im2col_buffers(self, n, dtype):
        """_im2col_shape, with this layer's buffers allocated."""
        k, plane, block = self._im2col_shape(n, dtype)
        if self._col is None or self._col.shape[1] != block * plane or self._col.dtype != dtype:
            self._col = np.empty((k * self.p.group, block * plane), dtype)
            self._out = np.empty((self.p.num_output, block * plane), dtype)
        return k, plane, block

    def forward(self, bottom, top):
        if self.residual is not None:  # an Eltwise SUM above folded in (Net._folds): added as the Eltwise adds
            (res, ca, cb), relu = self.residual, self.relu
            self.residual = self.relu = None
            try:
                self.forward(bottom, top)
            finally:
                self.residual, self.relu = (res, ca, cb), relu
            return sum_into(top[0].data.reshape(-1), ca, res.reshape(-1), cb, relu is not None, relu or 0.0)
        for b, t in zip(bottom, top):
            x, y = b.data.reshape(self.view), t.data.reshape(self.top_view)
            if self.nd:
                self.path.forward(x, self.blobs[0].data, y)
                if self.p.bias_term:
                    y += self.blobs[1].data[None, :, None]
            else:
                self._forward(x, y)
        self._last = len(bottom) - 1

    def backward(self, top, propagate_down, bottom):
        for i in reversed(range(len(bottom))):
            fresh, self._last = i == self._last, i
            x, dy = bottom[i].data.reshape(self.view), top[i].diff.reshape(self.top_view)
            dx = bottom[i].diff.reshape(self.view)
            if self.nd:
                self.path.weights(x, dy, self.blobs[0].diff)
                if self.p.bias_term:
                    self.blobs[1].diff += dy.sum(axis=(0, 2))
                if propagate_down[i]:
                    self.path.data(self.blobs[0].data, dy, dx)
            else:
                self._backward(x, dy, dx, propagate_down[i], fresh)

    fold = None  # (weights, bias) to use in place of the blobs for a pass: a BatchNorm folded in (Net._folds)
    relu = None  # for a pass: the negative slope of a ReLU above applied on the way out (Net._folds)
    residual = None  # for a pass: (array of the top's shape, coefficient of the convolution, of the array): the
    # Eltwise SUM above whose top this convolution writes (Net._folds), before the ReLU
    path_taken = None  # which kernels the last forward ran: direct, im2col, depthwise (run.py time says)

    def weights_and_bias(self):
        """(weights, bias) as a fold gives them: the blobs' arrays, zeros for a layer without a bias."""
        w = self.blobs[0].data
        return w, self.blobs[1].data if self.p.bias_term else np.zeros(self.p.num_output, w.dtype)

    def release_buffers(self):
        if getattr(self, "_plan", None) is not None:
            release_scratch(*self._plan.buffers())
        self._plan = self._dw_plan = self._col = self._out = None

    def _depthwise(self, x):
        """The DepthwisePlan for a depthwise convolution (group = the input channels, > 1, one stride), run on its
        own kernels (layers/depthwise.py) unless YAFFE_CONV=im2col; else None."""
        if not (DIRECT and self.type == "Convolution" and self.p.group > 1 and self.p.group == x.shape[1]
                and x.dtype in (np.float32, np.float64) and self.stride[0] == self.stride[1]):
            return None
        plan = getattr(self, "_dw_plan", None)
        if plan is None or plan.bottom_shape != x.shape or plan.dtype != x.dtype or plan.out_hw != self.out_hw:
            width = LANES_NB * lanes(x.dtype)
            fills = LANES_DATA and x.shape[0] >= LANES_FILL * -(-x.shape[0] // width) * width
            plan = self._dw_plan = DepthwisePlan(x.shape, self.p.num_output, self.kernel, self.pad, self.stride,
                                                 self.dilation, self.out_hw, x.dtype, lanes=fills)
        return plan

    def _depthwise_lanes(self, dwp, *names):
        """The lanes buffers of a depthwise plan (scratch, shared by the layers of one geometry): xb (G, C*H*W, L)
        the bottom, yb (G, O*P, L) the top or its diff, dxb (G, C*H*W, L) the bottom diff."""
        n, c = dwp.bottom_shape[:2]
        g, width, plane = dwp.lane_groups, dwp.lane_width, self.out_hw[0] * self.out_hw[1]
        rows = {"xb": c * dwp.hw, "yb": self.p.num_output * plane, "dxb": c * dwp.hw}
        key = ("depthwise lanes", dwp.bottom_shape, self.p.num_output, plane, dwp.dtype.str)
        return [scratch(key + (k,), (g, rows[k], width), dwp.dtype) for k in names]

    def _forward(self, x, y):
        """One bottom's forward on the 2-D kernels: x (N, C, H, W) -> y (N, O, OH, OW)."""
        weight, has_bias = (self.blobs[0].data, self.p.bias_term) if self.fold is None else (self.fold[0], True)
        bias = (self.blobs[1].data if self.fold is None else self.fold[1]) if has_bias else weight.reshape(-1)
        relu = (True, self.relu) if self.relu is not None else (False, 0.0)
        dwp = self._depthwise(x)
        if dwp is not None:
            self.path_taken = "depthwise"
            if dwp.lanes:
                self.path_taken = "depthwise (images in the lanes)"
                n, out_c, plane = x.shape[0], self.p.num_output, self.out_hw[0] * self.out_hw[1]
                xb, yb = self._depthwise_lanes(dwp, "xb", "yb")
                images_to_lanes(x.reshape(n, 1, -1), xb.reshape(dwp.lane_groups, -1, 1, dwp.lane_width))
                depthwise_lanes(xb, weight, dwp.hw, *dwp.entries[0], yb)
                rows = np.zeros(_round_up(out_c * plane, lanes(x.dtype)), x.dtype)
                if has_bias:
                    rows[:out_c * plane] = np.repeat(bias, plane)
                return lanes_to_top(yb.reshape(dwp.lane_groups, out_c, plane, dwp.lane_width),
                                    y.reshape(n, out_c, plane), rows, *relu)
            return depthwise_forward(x, weight, bias, has_bias, *dwp.args(), y, *relu)
        wino = self._wino(x)
        if wino is not None and wino[0] is not None:
            k = self.kernel[0]
            self.path_taken = "Winograd " + WINO_NAMES[wino[0].al, k]
            wk = weight.reshape(y.shape[1], x.shape[1], k, k)
            return wino_forward(x, wk, bias if has_bias else None, self.pad[0], y, wino[0], *relu)
        plan = self._direct(x)
        self.path_taken = "direct" if plan is not None else ("im2col" if self.p.group == 1 else
                                                               f"im2col, {self.p.group} groups")
        if plan is not None and plan.lanes_forward:
            self.path_taken = "direct (images in the lanes)"
            out_c, c = self.p.num_output, x.shape[1]
            xb, yb = plan.lanes_forward_buffers()
            if self.fold is None or plan.laid is not self.fold:
                lanes_weights(weight.reshape(out_c, c, -1).transpose(2, 1, 0), plan.wt_f, plan.blocks_f)
                plan.bias_f[:y[0].size] = np.repeat(bias, y[0, 0].size) if has_bias else 0
                plan.laid = self.fold
            plan.holder[:] = 0  # (xpad holds no layer's input now: the backward places x there)
            images_to_lanes(x.reshape(x.shape[0], c, -1), xb)
            lanes_conv_data(xb, *plan.entries_f, plan.wt_f, yb, plan.lanes_last, plan.blocks_f)
            lanes_to_top(yb, y.reshape(y.shape[0], out_c, -1), plan.bias_f, *relu)
            return
        if plan is not None:
            out_c = self.p.num_output
            if self.fold is None or plan.laid is not self.fold:  # a fold is a new tuple when its weights change
                plan.w[:, :out_c] = weight.reshape(out_c, plan.k).T
                plan.bias[:out_c] = bias if has_bias else 0
                plan.laid = self.fold
            plan.holder[:] = 0  # its forward places x anew: the values of x may have changed since
            n = x.shape[0]
            if plan.rows_direct:
                direct_conv_rows(plan.source(x, self), plan.offs[:plan.k], plan.w, plan.bias, y, plan.wp,
                                 y.reshape(-1)[:0], 1.0, 0.0, *relu)
                return
            if TRAIN_BANDS and BANDS and not plan.x_direct and not plan.subsample and n >= num_threads() \
                    and not (plan.y_direct and not relu[0]):
                # place, product and copy to the top in one task an image (its values stay in the core's caches);
                # the padded planes hold x after it, for the backward
                length = plan.xpad.shape[2]
                reach = int((plan.offs[:plan.k] % length).max())
                res = y.reshape(-1)[:0]
                if plan.pixels:
                    direct_conv_pixels_bands(x, plan.xpad, *plan.pad, plan.stride, plan.wp, plan.rows, reach,
                                             plan.offs[:plan.k], plan.w, plan.bias, plan.qs, plan.out, y, res, 1.0,
                                             0.0, *relu, 1)
                else:
                    direct_conv_bands(x, plan.xpad, *plan.pad, plan.stride, plan.wp, plan.rows, reach,
                                      plan.offs[:plan.k], plan.w, plan.bias, plan.out, y, res, 1.0, 0.0, *relu, 1)
                plan.holder[:] = (id(self), x.ctypes.data)
                return
            xp = plan.source(x, self)
            if plan.pixels:
                direct_conv_pixels(xp, plan.offs[:plan.k], plan.w, plan.bias, plan.qs, plan.out,
                                   num_threads())
                pixels_to_top(plan.out, y.reshape(y.shape[0], out_c, -1), *relu)
                return
            if plan.y_direct and not relu[0]:
                direct_conv(xp, plan.offs[:plan.k], plan.w, plan.bias, y.reshape(y.shape[0], out_c, -1))
                return
            direct_conv(xp, plan.offs[:plan.k], plan.w, plan.bias, plan.out)
            take_planes(plan.out, plan.wp, y, *relu)
            return
        n = x.shape[0]
        out_c, groups = self.p.num_output, self.p.group
        k, plane, block = self._im2col_buffers(n, x.dtype)
        og = out_c // groups
        y = y.reshape(n, out_c, plane)
        for s in range(0, n, block):
            im2col(x[s:s + block], *self._geometry(), self._col)
            for g in range(groups):
                gemm(weight[g * og:(g + 1) * og].reshape(og, k), self._col[g * k:(g + 1) * k],
                     self._out[g * og:(g + 1) * og])
            channels_last_to_first(self._out, bias, has_bias, y[s:s + block], *relu)

    def _backward(self, x, dy, dx, want_dx, fresh):
        """One bottom's backward on the 2-D kernels; fresh: the forward's buffers hold this bottom's input."""
        dwp = self._depthwise(x)
        if dwp is not None:
            if dwp.lanes:
                n, groups, width = x.shape[0], dwp.lane_groups, dwp.lane_width
                xb, dyb, dxb = self._depthwise_lanes(dwp, "xb", "yb", "dxb")
                images_to_lanes(x.reshape(n, 1, -1), xb.reshape(groups, -1, 1, width))
                images_to_lanes(dy.reshape(n, 1, -1), dyb.reshape(groups, -1, 1, width))
                depthwise_lanes_weights(xb, dyb, dwp.hw, *dwp.entries[2], self.blobs[0].diff)
                if self.p.bias_term:
                    channel_sums(dy.reshape(n, x.shape[1], -1), self.blobs[1].diff)
                if want_dx:
                    depthwise_lanes(dyb, self.blobs[0].data, dyb.shape[1] // x.shape[1], *dwp.entries[1], dxb)
                    lanes_to_images(dxb, dx.reshape(n, -1))
                return
            bias_diff = self.blobs[1].diff if self.p.bias_term else dy.reshape(-1)  # (unused without a bias)
            depthwise_backward(x, dy, self.blobs[0].data, *dwp.args(), self.blobs[0].diff, bias_diff,
                               self.p.bias_term, dx, want_dx)
            return
        wino = self._wino(x)
        if wino is not None:
            n, out_c, shape = x.shape[0], self.p.num_output, (self.p.num_output, x.shape[1]) + tuple(self.kernel)
            if self.p.bias_term:
                channel_sums(dy.reshape(n, out_c, -1), self.blobs[1].diff)
            wino_weight_diff(x, dy, self.pad[0], self.blobs[0].diff.reshape(shape), wino[2])
            if want_dx and wino[1] is not None:
                wino_data(dy, self.blobs[0].data.reshape(shape), self.pad[0], dx, wino[1])
            elif want_dx:  # (the direct kernels' data gradient, or im2col's)
                plan = self._direct(x)
                if plan is None:
                    return self._im2col_backward(dy, x, dx, params=False, data=True)
                plan.backward_buffers()
                self._direct_data(plan, x, dy, dx)
            return
        plan = self._direct(x)
        if plan is None:
            return self._im2col_backward(dy, x, dx, params=True, data=want_dx, fresh=fresh)
        n, c = x.shape[:2]
        out_c = self.p.num_output
        weight = self.blobs[0]
        xp = plan.source(x, self)  # unless the padded input still holds x (another layer of its geometry came between)
        plan.backward_buffers()
        bias_tap = self.p.bias_term and plan.bias_tap  # (DirectPlan.bias_tap: the bias gradient as a tap)
        if self.p.bias_term and not bias_tap:
            channel_sums(dy.reshape(n, out_c, -1), self.blobs[1].diff)  # (NumPy's sum over axes 0 and 2: 8x slower)
        if plan.planar:  # summed straight into the weight diff (O, C*kh*kw), or through a buffer
            k = plan.k + bias_tap
            direct = weight.diff.flags.c_contiguous and weight.diff.dtype == x.dtype and not bias_tap
            wd = weight.diff.reshape(out_c, k) if direct else np.zeros((out_c, k), x.dtype)
            direct_conv_dw_planar(xp, plan.offs[:k], np.ascontiguousarray(
                dy.reshape(n, out_c, -1)), *self.out_hw, plan.wp, wd, plan.planar_half, num_threads())
            if not direct:
                weight.diff.reshape(out_c, plan.k)[...] += wd[:, :plan.k]
            if bias_tap:
                self.blobs[1].diff += wd[:, plan.k]
        else:
            place_channels_last(dy, plan.dyt, plan.wp)
            plan.dwt.fill(0)
            (direct_conv_dw1 if plan.taps_nv == 1 else direct_conv_dw)(xp, plan.offs, plan.dyt, *self.out_hw, plan.wp,
                                                                       plan.dwt, num_threads())
            weight.diff.reshape(out_c, plan.k)[...] += plan.dwt[:plan.k, :out_c].T
            if bias_tap:
                self.blobs[1].diff += plan.dwt[plan.k, :out_c]
        if want_dx:
            self._direct_data(plan, x, dy, dx)

    def _direct_data(self, plan, x, dy, dx):
        """The bottom diff on the direct plan's kernels (or im2col's where they would waste too much)."""
        n, c = x.shape[:2]
        out_c = self.p.num_output
        weight = self.blobs[0]
        if plan.lanes_data:
            plan.lanes_data_buffers()
            images_to_lanes(dy.reshape(n, out_c, -1), plan.dyb)
            lanes_weights(weight.data.reshape(out_c, c, -1).transpose(2, 0, 1), plan.wt, plan.blocks)
            lanes_conv_data(plan.dyb, *plan.entries, plan.wt, plan.dxb, plan.lanes_last, plan.blocks)
            lanes_to_images(plan.dxb.reshape(plan.lane_groups, -1, plan.lane_width), dx.reshape(n, -1))
            return
        if plan.stride > 1 or plan.data_useful < DIRECT_USEFUL_DATA:
            return self._im2col_backward(dy, x, dx, params=False, data=True)
        if plan.dy_direct:
            dyp = dy.reshape(n, -1)
        else:
            place_planes(dy, plan.dyp, plan.start_q, plan.wq)
            dyp = plan.dyp.reshape(n, -1)
        w4 = weight.data.reshape((out_c, c) + self.kernel)
        plan.w_q[:, :c] = w4[:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(-1, c)
        if plan.pixels_q:
            direct_conv_pixels(dyp, plan.offs_q, plan.w_q, plan.zero_bias, plan.qs_q, plan.dxq,
                               num_threads())
            pixels_to_top(plan.dxq, dx.reshape(n, c, -1), False, 0.0)
        elif plan.dx_direct:
            direct_conv(dyp, plan.offs_q, plan.w_q, plan.zero_bias, dx.reshape(n, c, -1))
        elif plan.dx_rows:
            direct_conv_rows(dyp, plan.offs_q, plan.w_q, plan.zero_bias, dx, plan.wq, dx.reshape(-1)[:0], 1.0, 0.0,
                             False, 0.0)
        else:
            direct_conv(dyp, plan.offs_q, plan.w_q, plan.zero_bias, plan.dxq)
            take_planes(plan.dxq, plan.wq, dx, False, 0.0)  # (the forward's signature: one compile)

    def _im2col_backward(self, dy, x, dx, params, data, fresh=True):
        """The parameter gradients (params) and the bottom diff (data) through im2col and BLAS."""
        n = dy.shape[0]
        out_c, groups = self.p.num_output, self.p.group
        if params:  # the forward ran im2col: its blocks, and its buffer for the whole batch when unblocked
            k, plane = self.blobs[0].data[0].size, self.out_hw[0] * self.out_hw[1]
            block = self._col.shape[1] // plane
            col, dt = self._col, self._out  # _out reused as the (O, block*P) diff buffer
        else:  # the data pass alone (the forward ran the direct kernels): buffers for this pass only, shared
            k, plane, block = self._im2col_shape(n, x.dtype)
            key = ("im2col", k * groups, out_c, block * plane, np.dtype(x.dtype).str)
            col, dt = scratch(key + ("col",), (k * groups, block * plane), x.dtype), \
                scratch(key + ("out",), (out_c, block * plane), x.dtype)
        weight = self.blobs[0]
        og = out_c // groups
        dw = weight.diff.reshape(out_c, k)
        for s in range(0, n, block):
            channels_first_to_last(dy[s:s + block].reshape(block, out_c, plane), dt)
            if params:
                if block < n or not fresh:  # the buffer holds another block or bottom: gather this one again
                    im2col(x[s:s + block], *self._geometry(), col)
                if self.p.bias_term:
                    self.blobs[1].diff += dt.sum(axis=1)  # contiguous rows: NumPy's vectorized pairwise sums
                for g in range(groups):
                    gemm_acc(dt[g * og:(g + 1) * og], col[g * k:(g + 1) * k].T, dw[g * og:(g + 1) * og])
            if data:
                for g in range(groups):
                    gemm(weight.data[g * og:(g + 1) * og].reshape(og, k).T, dt[g * og:(g + 1) * og],
                         col[g * k:(g + 1) * k])
                col2im(col, *self._geometry(), dx[s:s + block])


@register("Deconvolution")
class Deconvolution(Convolution):
    """Transposed convolution (the backward of Convolution). Bottom (N, C, H, W) -> top (N, num_output, OH, OW)
    with OH = stride_h*(H - 1) + dilation_h*(kh - 1) + 1 - 2*pad_h. Weight (C, num_output/group, kh, kw). Any
    channel axis and number of spatial axes, and several bottoms, as Convolution."""

    def setup(self, bottom_shapes):
        p, blk = self.p, self.param_block
        n, c, spatial = self._read_geometry(bottom_shapes)
        out = tuple(st * (s - 1) + d * (kk - 1) + 1 - 2 * pd for s, kk, pd, st, d in
                    zip(spatial, self.kernel_nd, self.pad_nd, self.stride_nd, self.dilation_nd))
        if min(out) <= 0:
            raise LayerError(f"pad {'x'.join(map(str, self.pad_nd))} leaves no output "
                             f"({'x'.join(map(str, out))}); use less pad", f"{blk}.pad")
        self._top_view(n, out)
        self.in_hw = (1,) * (2 - len(spatial)) + spatial if not self.nd else spatial
        if self.nd:  # the convolution from the top's spatial shape to the bottom's, run backwards
            self.path = NdPath(out, spatial, self.kernel_nd, self.pad_nd, self.stride_nd, self.dilation_nd, p.group)
        self.blob_shapes = [((c, p.num_output // p.group) + self.kernel_nd, p.weight_filler)]
        if p.bias_term:
            self.blob_shapes.append(((p.num_output,), p.bias_filler))
        return [tuple(bottom_shapes[0][:self.axis]) + (p.num_output,) + out] * len(bottom_shapes)

    def _geometry(self):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.pad, self.dilation
        return (kh, kw, sh, sw, ph, pw, dh, dw) + self.in_hw

    def _buffers(self, x):
        n, c = x.shape[:2]
        plane = self.in_hw[0] * self.in_hw[1]
        k = self.blobs[0].data[0].size  # (num_output/group)*kh*kw
        if self._col is None or self._col.shape[1] != n * plane or self._col.dtype != x.dtype:
            self._col = np.empty((k * self.p.group, n * plane), x.dtype)
            self._x = np.empty((c, n * plane), x.dtype)
        return n, c, plane, k

    def forward(self, bottom, top):
        for b, t in zip(bottom, top):
            x, y = b.data.reshape(self.view), t.data.reshape(self.top_view)
            if self.nd:
                self.path.data(self.blobs[0].data, x, y)
            else:
                self._deconv(x, y)
            if self.p.bias_term:
                y += self.blobs[1].data.reshape((1, -1) + (1,) * (y.ndim - 2))

    def _deconv(self, x, y):
        n, c, plane, k = self._buffers(x)
        groups = self.p.group
        cg = c // groups
        weight = self.blobs[0].data.reshape(c, k)
        self._x.reshape(c, n, plane)[...] = x.reshape(n, c, plane).transpose(1, 0, 2)
        for g in range(groups):
            gemm(weight[g * cg:(g + 1) * cg].T, self._x[g * cg:(g + 1) * cg], self._col[g * k:(g + 1) * k])
        col2im(self._col, *self._geometry(), y)

    def backward(self, top, propagate_down, bottom):
        for b, t, want_dx in zip(bottom, top, propagate_down):
            x, dy, dx = b.data.reshape(self.view), t.diff.reshape(self.top_view), b.diff.reshape(self.view)
            if self.p.bias_term:
                self.blobs[1].diff += dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))
            if self.nd:
                self.path.weights(dy, x, self.blobs[0].diff)
                if want_dx:
                    self.path.forward(dy, self.blobs[0].data, dx)
            else:
                self._deconv_backward(x, dy, dx, want_dx)

    def _deconv_backward(self, x, dy, dx, want_dx):
        n, c, plane, k = self._buffers(x)
        groups = self.p.group
        cg = c // groups
        im2col(dy, *self._geometry(), self._col)
        self._x.reshape(c, n, plane)[...] = x.reshape(n, c, plane).transpose(1, 0, 2)
        dw = self.blobs[0].diff.reshape(c, k)
        weight = self.blobs[0].data.reshape(c, k)
        for g in range(groups):
            gemm_acc(self._x[g * cg:(g + 1) * cg], self._col[g * k:(g + 1) * k].T, dw[g * cg:(g + 1) * cg])
        if want_dx:
            for g in range(groups):
                gemm(weight[g * cg:(g + 1) * cg], self._col[g * k:(g + 1) * k], self._x[g * cg:(g + 1) * cg])
            dx.reshape(n, c, plane)[...] = self._x.reshape(c, n, plane).transpose(1, 0, 2)


@register("Im2col")
class Im2col(Convolution):
    """The columns a convolution multiplies (Caffe's Im2col): bottom (N, C, H, W) -> top (N, C*kh*kw, OH, OW),
    each column the input under one output pixel's window (zeros in the padding). convolution_param's kernel,
    pad, stride and dilation; no weights."""
    fields = tuple(f if f.name != "num_output" else Field("num_output", "int", None, "ignored (Caffe's too)")
                   for f in Convolution.fields)
    backward_reads = ()
    bottoms = (1, 1)
    tops = (1, 1)

    def setup(self, bottom_shapes):
        n, c, spatial = self._read_geometry(bottom_shapes)
        if self.nd or self.axis != 1 or len(spatial) != 2:
            raise LayerError(f"Im2col takes 2-D images (N, C, H, W) with axis 1; received {list(bottom_shapes[0])}",
                             None)
        out = tuple((s + 2 * pd - (d * (kk - 1) + 1)) // st + 1 for s, kk, pd, st, d in
                    zip(spatial, self.kernel_nd, self.pad_nd, self.stride_nd, self.dilation_nd))
        if min(out) <= 0:
            raise LayerError(f"kernel {self.kernel_nd} is larger than the padded input", f"{self.param_block}.kernel_size")
        self.out_hw, self.k = out, c * math.prod(self.kernel_nd)
        self.blob_shapes = []
        return [(n, self.k) + out]

    def forward(self, bottom, top):
        x = bottom[0].data
        n, plane = x.shape[0], self.out_hw[0] * self.out_hw[1]
        col = np.empty((self.k, n * plane), x.dtype)
        im2col(x, *self._geometry(), col)
        top[0].data.reshape(n, self.k, plane)[...] = col.reshape(self.k, n, plane).transpose(1, 0, 2)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff
            n, plane = dy.shape[0], self.out_hw[0] * self.out_hw[1]
            col = np.ascontiguousarray(dy.reshape(n, self.k, plane).transpose(1, 0, 2)).reshape(self.k, n * plane)
            col2im(col, *self._geometry(), bottom[0].diff)
