"""Register tiles for the direct convolution (layers/conv.py): small matrix-product kernels in LLVM vectors.

Numba cannot keep a tile of accumulators in registers (its arrays live in memory and its SLP vectorizer is off),
so these emit the loop themselves, with one vector per accumulator: 64 bytes (16 float32 or 8 float64 lanes) on
AVX-512, 32 bytes on other CPUs, in tiles sized to the register file (VECTOR_BYTES and the constants below).
They read their inputs in place, from strided planes at a list of offsets, which is what makes the convolution
need no im2col buffer.

- `tile_bcast{NV}(x, xbase, offs, w, wbase, wstride, bias, bbase, out, obase, ostride)`, MR rows by NV = 1, 2, 3
  vectors:
      out[obase + r*ostride + q] = bias[bbase + r] + sum_k w[wbase + k*wstride + r] * x[xbase + offs[k] + q]
  for r < MR, q < NV*lanes (the forward and the backward-data convolutions).
- `tile_taps(x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, out, obase,
  ostride)`, KR offsets by NV vectors (`tile_taps1`: 2*KR offsets by one vector), for s < KR and u < NV*lanes:
      out[obase + s*ostride + u] += sum over m < images, q = y*row + c (y < rows, c < cols) of
          x[xbase + m*ximage + offs[kbase + s] + q] * dy[dbase + m*dimage + q*dstride + u]
  (the weight gradient, from the top diff stored channels-last).
- `tile_lanes_a(d, dbase, ent_d, ent_w, e0, e1, w, wbase, count, dstride, wstride, out, obase, ostride)`, CR
  channels (LANES_WIDTHS: a, b, c) by NB vectors of images (images in the lanes), for r < CR and u < NB*lanes:
      out[obase + r*ostride + u] = sum over e0 <= e < e1 and m < count of
          w[wbase + ent_w[e] + m*wstride + r] * d[dbase + ent_d[e] + m*dstride + u]
  (the data gradient of a convolution over an entry list of the taps each input pixel receives: no padding);
  `tile_lanes_a1` the same on one vector of images (u < lanes).
- `deinterleave2(x, at, count, dst, d0, d1)`: dst[d0 + k] = x[at + 2k], dst[d1 + k] = x[at + 2k + 1], k < count
  (a stride-2 row's columns to its two phases), masked at the end.
- `store_row(src, s0, dst, d0, count, res, added, ca, cb, relu, slope)`: dst[d0 + j] = t, or t * slope where relu
  and t <= 0, with t = ca * src[s0 + j] + cb * res[d0 + j] where added, else src[s0 + j]; as Numba's scalar
  expressions compute it (float64 where ca, cb or slope are) for a slope of the arrays' type (callers round it,
  as Caffe's negative_slope is a Dtype), computed in the arrays' type where that gives the same values (no SUM, or
  ca == cb == 1 and no ReLU or one of slope 0: float64 conversions were 5-7% of a 16-filter tile), masked at the end.
- `tile_unpadded{nr}{nv}[_s2](x, xbase, chans, height, width, row0, kh, kw, ph, pw, di_lo, di_hi, w, wbase,
  wstride, bias, bbase, kept, y, ybase, ow, oplane)`: BCAST_MR filters of nr rows by nv vectors of a convolution's
  top (stride 1, or 2: _s2) read from the unpadded bottom, loads masked to the image (the forward-only kernel).
- `tile_flat{nv}(x, xbase, chans, height, width, q0, kh, kw, ph, pw, rows_of, cols_of, w, wbase, wstride, bias,
  bbase, kept, y, ybase, oplane)`: as tile_unpadded for a stride-1 "same" convolution, on nv vectors of the top's
  plane taken flat (across its rows), loads masked by each position's row and column (the forward-only kernel).
- `tile_cl{1,2,4}(x, xbase, qin, qout, p0, offs, w, o0, wstride, bias, out, obase, res, added, ca, cb, relu,
  slope)`: CL_TILES' pixels by 1, 2 or 4 vectors of filters between channels-last blobs, each pixel at offsets
  qin / qout from lists, the epilogue of store_row in registers (layers/channels_last.py, forward-only runs).
- `max_row{2,3}s2(x, s, t, width, y, out, mask, count, lowest)`: count MAX windows 2x2 or 3x3 of stride 2 along a
  row, their maxima and argmax (plane indices from t) as Caffe's loop finds them.
All indices are flat element offsets into 1-D arrays; the caller guarantees they are in bounds.
"""
from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_bytes() -> int:
    """64 (AVX-512's 32 registers of 64 bytes) where the CPU has AVX-512F, else 32 (AVX2's 16 of 32 bytes; other
    CPUs get the same code from LLVM in their own vectors). YAFFE_VECTOR_BYTES=32 forces the second (tests)."""
    forced = os.environ.get("YAFFE_VECTOR_BYTES")
    if forced in ("32", "64"):
        # The tile sizes are compiled into the kernels, and Numba's cache tells CPUs apart but not this setting:
        # the kernels defined from here on (layers/conv.py's) get a cache of their own.
        import tempfile
        config.CACHE_DIR = os.path.join(config.CACHE_DIR or tempfile.gettempdir(), f"yaffe-vector-{forced}")
        return int(forced)
    try:
        from llvmlite import binding
        return 64 if binding.get_host_cpu_features().get("avx512f") else 32
    except Exception:  # no feature list on this platform
        return 32


VECTOR_BYTES = _vector_bytes()
# Tiles of 24 accumulators in 32 registers (AVX-512), or of 12 in 16 (AVX2), leaving room for the loaded operands:
BCAST_MR = 8 if VECTOR_BYTES == 64 else 4   # tile_bcast3: rows x 3 vectors
TAPS_KR = 12 if VECTOR_BYTES == 64 else 6   # tile_taps: taps x TAPS_NV vectors
TAPS_NV = 2
TAPS_KR1 = 2 * TAPS_KR                       # tile_taps1: taps x 1 vector (filters that fill one vector, not two)
# tile_taps1 only where two vectors would compute more than TAPS_ONE times the filters one computes: its taps'
# pointers spill (12 or 24 of them), and it ran 0.65x (32-byte vectors: LeNet's conv2 73 against 116 GFLOP/s
# computed) and 0.8x (64: ResNet-20's 16 filters 161 against ~205) the speed of two vectors
TAPS_ONE = 1.25 if VECTOR_BYTES == 64 else 1.5
PLANAR_KR, PLANAR_OR = (4, 6) if VECTOR_BYTES == 64 else (3, 4)  # tile_planar: taps x filters


def _pixel_rows() -> int:
    """tile_pixels' pixels a tile. 6 (x 2 vectors: best of 4 sizes measured at 16 registers); 8 on AVX-512 (16
    accumulators: ResNet-20's 8x8 planes as 8 tiles, not 11 of 6: its 64-channel 3x3 at batch 1 27.8 -> 25.0 us on
    the Xeon), but 6 on AMD's Zen 4, which runs a 512-bit instruction as two halves: there the 8-pixel tile ran at
    74-79 GFLOP/s a core, the 6-pixel one at 103-108 (CIFAR-10 quick's 5x5 data gradients; its training 1.08x).
    YAFFE_PIXEL_ROWS=6 or 8 forces one (tests: a cache of its own, as YAFFE_VECTOR_BYTES)."""
    forced = os.environ.get("YAFFE_PIXEL_ROWS")
    if forced in ("6", "8"):
        import tempfile
        config.CACHE_DIR = os.path.join(config.CACHE_DIR or tempfile.gettempdir(), f"yaffe-pixel-rows-{forced}")
        return int(forced)
    if VECTOR_BYTES != 64:
        return 6
    try:
        from llvmlite import binding
        return 6 if binding.get_host_cpu_name() == "znver4" else 8  # (Numba's cache keys hold the CPU's name)
    except Exception:
        return 8


def cpu_model() -> str:
    """The CPU's model as the OS names it (Linux's /proc/cpuinfo, else platform's), with LLVM's name for it."""
    import platform
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    try:
        from llvmlite import binding
        return f"{name} ({binding.get_host_cpu_name()})"
    except Exception:
        return name


PIX_MR, PIX_NV = _pixel_rows(), 2  # tile_pixels: pixels x vectors of filters
LANES_CR, LANES_NB = (8 if VECTOR_BYTES == 64 else 6), 2  # tile_lanes: channels x vectors of images (depthwise)
# the convolutions' lanes tiles come in three widths (channels a tile), mixed so that a layer's channels are covered
# with the least padding (layers/conv.lane_blocks): their cost a channel relative to the first, measured on
# LeNet's conv2 (5 at 32-byte vectors 0.95-1.08x, 4 1.04-1.15x; 10 at 64-byte 0.94-0.96x, 12 0.89-0.93x: their
# products reuse each vector of images more)
LANES_WIDTHS = (8, 10, 12) if VECTOR_BYTES == 64 else (6, 5, 4)
LANES_COST = (1.0, 0.95, 0.92) if VECTOR_BYTES == 64 else (1.0, 1.02, 1.08)
LANES_ROW = max(LANES_WIDTHS)  # a row of the weights' blocks (lanes_conv_data: a tile reads its first `width`)


def lanes(dtype) -> int:
    """Elements of one vector: 16 float32, 8 float64."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _vector_tools(context, builder, array_type, vector_bytes=None):
    """(vector type, load(ptr, index), store(value, ptr, index), splat(scalar), fma(a, b, c)) for the dtype, in
    vectors of VECTOR_BYTES (or vector_bytes)."""
    elem = context.get_value_type(array_type.dtype)
    n = (vector_bytes or VECTOR_BYTES) // (4 if isinstance(elem, ir.FloatType) else 8)
    vec = ir.VectorType(elem, n)
    name = f"llvm.fma.v{n}f{32 if isinstance(elem, ir.FloatType) else 64}"
    fma_fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), name)

    def at(ptr, index):
        return builder.bitcast(builder.gep(ptr, [index]), vec.as_pointer())

    def load(ptr, index):
        return builder.load(at(ptr, index), align=4)

    def store(value, ptr, index):
        builder.store(value, at(ptr, index), align=4)

    def splat(scalar):
        return _splat(builder, scalar, n)

    def fma(a, b, c):
        return builder.call(fma_fn, [a, b, c])
    return vec, n, load, store, splat, fma


def _data(context, builder, typ, value):
    return context.make_array(typ)(context, builder, value)


def _outlined(builder, name, signature, args, body):
    """A call to an LLVM function (noinline, linkonce_odr: one copy however many modules define it) whose body
    body(fbuilder, fargs) emits, defined once a module for the intrinsic `name` and its Numba signature: a large
    kernel compiled once, not inlined into (and optimized again with) each caller (run_program's first compile
    took 8.7 s with the Winograd transforms inlined, 8.1 outlined; the tiles outlined ran 5-50% slower)."""
    tag = hashlib.sha1(f"{name}{signature}{VECTOR_BYTES}".encode()).hexdigest()[:16]
    fnty = ir.FunctionType(ir.VoidType(), [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"yaffe_{name}_{tag}")
    if fn.is_declaration:
        fn.linkage = "linkonce_odr"
        fn.attributes.add("noinline")
        fbuilder = ir.IRBuilder(fn.append_basic_block("entry"))
        body(fbuilder, list(fn.args))
        fbuilder.ret_void()
    builder.call(fn, args)


def _make_tile_bcast(nv, vector_bytes=None):
    """tile_bcast with nv vectors per row (3 for the body of a plane, 1 or 2 for its end), of vector_bytes."""
    def tile(typingctx, x, xbase, offs, w, wbase, wstride, bias, bbase, out, obase, ostride):
        sig = types.void(x, xbase, offs, w, wbase, wstride, bias, bbase, out, obase, ostride)

        def codegen(context, builder, signature, args):
            t = signature.args
            x, xbase, offs, w, wbase, wstride, bias, bbase, out, obase, ostride = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0], vector_bytes)
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            xp, wp, bp, op = (_data(context, builder, t[i], a).data for i, a in ((0, x), (3, w), (6, bias), (8, out)))
            offs_arr = _data(context, builder, t[2], offs)
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(BCAST_MR)]
            for r in range(BCAST_MR):
                b = splat(builder.load(builder.gep(bp, [builder.add(bbase, const(r))])))
                for v in range(nv):
                    builder.store(b, acc[r][v])
            count = builder.extract_value(offs_arr.shape, 0)
            with cgutils.for_range(builder, count) as loop:
                k = loop.index
                start = builder.add(xbase, builder.load(builder.gep(offs_arr.data, [k])))
                xs = [load(xp, builder.add(start, const(v * n))) for v in range(nv)]
                row = builder.add(wbase, builder.mul(k, wstride))
                for r in range(BCAST_MR):
                    a = splat(builder.load(builder.gep(wp, [builder.add(row, const(r))])))
                    for v in range(nv):
                        builder.store(fma(a, xs[v], builder.load(acc[r][v])), acc[r][v])
            for r in range(BCAST_MR):
                base = builder.add(obase, builder.mul(const(r), ostride))
                for v in range(nv):
                    store(builder.load(acc[r][v]), op, builder.add(base, const(v * n)))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"tile_bcast{nv}" + (f"_{vector_bytes}" if vector_bytes else "")
    return intrinsic(tile)


def _make_tile_taps(kr, nv):
    """tile_taps with kr taps by nv vectors of filters (2 vectors; 1, with twice the taps, for a layer whose
    filters fill one vector and not two: a 16-filter layer on AVX-512, ResNet-20's first stage)."""
    def tile(typingctx, x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, out,
             obase, ostride):
        sig = types.void(x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, out,
                         obase, ostride)

        def codegen(context, builder, signature, args):
            t = signature.args
            x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, out, obase, \
                ostride = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            xp, dp, op = (_data(context, builder, t[i], a).data for i, a in ((0, x), (4, dy), (13, out)))
            offs_arr = _data(context, builder, t[2], offs)
            taps = [builder.load(builder.gep(offs_arr.data, [builder.add(kbase, const(s))])) for s in range(kr)]
            slots = [[builder.add(builder.add(obase, builder.mul(const(s), ostride)), const(v * n))
                      for v in range(nv)] for s in range(kr)]
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(kr)]
            for s in range(kr):
                for v in range(nv):
                    builder.store(load(op, slots[s][v]), acc[s][v])
            with cgutils.for_range(builder, images) as image:
                xb = builder.add(xbase, builder.mul(image.index, ximage))
                db = builder.add(dbase, builder.mul(image.index, dimage))
                starts = [builder.add(xb, taps[s]) for s in range(kr)]
                with cgutils.for_range(builder, rows) as y:
                    with cgutils.for_range(builder, cols) as x:
                        q = builder.add(builder.mul(y.index, row), x.index)
                        line = builder.add(db, builder.mul(q, dstride))
                        d = [load(dp, builder.add(line, const(v * n))) for v in range(nv)]
                        for s in range(kr):
                            a = splat(builder.load(builder.gep(xp, [builder.add(starts[s], q)])))
                            for v in range(nv):
                                builder.store(fma(a, d[v], builder.load(acc[s][v])), acc[s][v])
            for s in range(kr):
                for v in range(nv):
                    store(builder.load(acc[s][v]), op, slots[s][v])
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"tile_taps{kr}x{nv}"
    return intrinsic(tile)


def _pixel_taps(builder, tools, offs_arr, xp, starts, wp, wstride, o0, acc):
    """The loop of tile_pixels and tile_cl over the taps k: acc[r][v] += x[starts[r] + offs[k]] * the v-th vector
    of w at k * wstride + o0 (tools: _vector_tools')."""
    vec, n, load, store, splat, fma = tools
    i64 = ir.IntType(64)
    count = builder.extract_value(offs_arr.shape, 0)
    with cgutils.for_range(builder, count) as loop:
        k = loop.index
        off = builder.load(builder.gep(offs_arr.data, [k]))
        row = builder.add(builder.mul(k, wstride), o0)
        ws = [load(wp, builder.add(row, ir.Constant(i64, v * n))) for v in range(len(acc[0]))]
        for r in range(len(acc)):
            a = splat(builder.load(builder.gep(xp, [builder.add(starts[r], off)])))
            for v, w in enumerate(ws):
                builder.store(fma(a, w, builder.load(acc[r][v])), acc[r][v])


def _make_tile_pixels(mr, nv, accumulate=False):
    """tile_pixels: mr output pixels (at any positions of the padded planes, from a list) by nv vectors of
    filters, channels-last; each tap broadcasts one input value per pixel and loads nv vectors of weights.
    accumulate (tile_pixels_acc): the sums start from out's values, not from the bias (a block of taps after
    the first)."""
    def tile(typingctx, x, xbase, qs, pbase, offs, w, o0, wstride, bias, out, obase, ostride):
        sig = types.void(x, xbase, qs, pbase, offs, w, o0, wstride, bias, out, obase, ostride)

        def codegen(context, builder, signature, args):
            t = signature.args
            x, xbase, qs, pbase, offs, w, o0, wstride, bias, out, obase, ostride = args
            tools = _vector_tools(context, builder, t[0])
            vec, n, load, store, splat, fma = tools
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            xp, wp, bp, op = (_data(context, builder, t[i], a).data for i, a in ((0, x), (5, w), (8, bias), (9, out)))
            qp = _data(context, builder, t[2], qs).data
            offs_arr = _data(context, builder, t[4], offs)
            starts = [builder.add(xbase, builder.load(builder.gep(qp, [builder.add(pbase, const(r))])))
                      for r in range(mr)]
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(mr)]
            bases = [builder.add(builder.add(obase, builder.mul(builder.add(pbase, const(r)), ostride)), o0)
                     for r in range(mr)]
            for v in range(nv):
                b = None if accumulate else load(bp, builder.add(o0, const(v * n)))
                for r in range(mr):
                    builder.store(load(op, builder.add(bases[r], const(v * n))) if accumulate else b, acc[r][v])
            _pixel_taps(builder, tools, offs_arr, xp, starts, wp, wstride, o0, acc)
            for r in range(mr):
                for v in range(nv):
                    store(builder.load(acc[r][v]), op, builder.add(bases[r], const(v * n)))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = ("tile_pixels_acc" if accumulate else "tile_pixels") + (
        "" if mr == PIX_MR else f"{mr}")
    return intrinsic(tile)


def _make_tile_cl(mr, nv):
    """tile_cl: mr output pixels (from lists of their offsets in the bottom and the top, channels-last) by nv
    vectors of filters, the epilogue (a SUM's other bottom, a ReLU) applied in registers as they are stored."""
    def tile(typingctx, x, xbase, qin, qout, p0, offs, w, o0, wstride, bias, out, obase, res, added, ca, cb, relu,
             slope):
        sig = types.void(x, xbase, qin, qout, p0, offs, w, o0, wstride, bias, out, obase, res, added, ca, cb, relu,
                         slope)
        kinds = _epilogue_types(typingctx, x.dtype, ca, cb, slope)

        def codegen(context, builder, signature, args):
            t = signature.args
            x, xbase, qin, qout, p0, offs, w, o0, wstride, bias, out, obase, res, added, ca, cb, relu, slope = args
            tools = _vector_tools(context, builder, t[0])
            vec, n, load, store, splat, fma = tools
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            xp, wp, bp, op, rp = (_data(context, builder, t[i], a).data
                                  for i, a in ((0, x), (6, w), (9, bias), (10, out), (12, res)))
            qi, qo = (_data(context, builder, t[i], a).data for i, a in ((2, qin), (3, qout)))
            offs_arr = _data(context, builder, t[5], offs)
            at = lambda q, r: builder.load(builder.gep(q, [builder.add(p0, const(r))]))
            starts = [builder.add(xbase, at(qi, r)) for r in range(mr)]
            bases = [builder.add(builder.add(obase, at(qo, r)), o0) for r in range(mr)]
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(mr)]
            for v in range(nv):
                b = load(bp, builder.add(o0, const(v * n)))
                for r in range(mr):
                    builder.store(b, acc[r][v])
            _pixel_taps(builder, tools, offs_arr, xp, starts, wp, wstride, o0, acc)
            value = _epilogue(context, builder, n, t[0].dtype, kinds, (ca, cb, relu, slope), t[14:18])
            def stores(with_res, unit=False):
                for r in range(mr):
                    for v in range(nv):
                        i = builder.add(bases[r], const(v * n))
                        got = load(rp, i) if with_res else None
                        store(value(builder.load(acc[r][v]), got, unit), op, i)
            _by_epilogue(builder, context.cast(builder, added, t[13], types.boolean), value, stores)
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"tile_cl{mr}x{nv}"
    return intrinsic(tile)


def _py_tile_cl(mr, nv, x, xbase, qin, qout, p0, offs, w, o0, wstride, bias, out, obase, res, added, ca, cb, relu,
                slope):
    n = lanes(x.dtype) * nv
    for r in range(mr):
        q, at = xbase + qin[p0 + r], obase + qout[p0 + r] + o0
        acc = bias[o0:o0 + n].copy()
        for k in range(len(offs)):
            acc += x[q + offs[k]] * w[k * wstride + o0:k * wstride + o0 + n]
        for j in range(n):
            _py_store_row(acc, j, out, at + j, 1, res, added, ca, cb, relu, slope)


def _make_tile_lanes(cr, nb):
    """tile_lanes: cr channels by nb vectors of images; each (entry, m) loads nb vectors of the top diff and
    broadcasts cr weights."""
    def tile(typingctx, d, dbase, ent_d, ent_w, e0, e1, w, wbase, count, dstride, wstride, out, obase, ostride):
        sig = types.void(d, dbase, ent_d, ent_w, e0, e1, w, wbase, count, dstride, wstride, out, obase, ostride)

        def codegen(context, builder, signature, args):
            t = signature.args
            d, dbase, ent_d, ent_w, e0, e1, w, wbase, count, dstride, wstride, out, obase, ostride = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            dp, wp, op = (_data(context, builder, t[i], a).data for i, a in ((0, d), (6, w), (11, out)))
            edp, ewp = (_data(context, builder, t[i], a).data for i, a in ((2, ent_d), (3, ent_w)))
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(nb)] for _ in range(cr)]
            for r in range(cr):
                for v in range(nb):
                    builder.store(ir.Constant(vec, None), acc[r][v])
            with cgutils.for_range(builder, builder.sub(e1, e0)) as entry:
                e = builder.add(e0, entry.index)
                db = builder.add(dbase, builder.load(builder.gep(edp, [e])))
                wb = builder.add(wbase, builder.load(builder.gep(ewp, [e])))
                with cgutils.for_range(builder, count) as m:
                    dq = builder.add(db, builder.mul(m.index, dstride))
                    wq = builder.add(wb, builder.mul(m.index, wstride))
                    ds = [load(dp, builder.add(dq, const(v * n))) for v in range(nb)]
                    for r in range(cr):
                        a = splat(builder.load(builder.gep(wp, [builder.add(wq, const(r))])))
                        for v in range(nb):
                            builder.store(fma(a, ds[v], builder.load(acc[r][v])), acc[r][v])
            for r in range(cr):
                base = builder.add(obase, builder.mul(const(r), ostride))
                for v in range(nb):
                    store(builder.load(acc[r][v]), op, builder.add(base, const(v * n)))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"tile_lanes{cr}" + ("" if nb == LANES_NB else f"_{nb}")
    return intrinsic(tile)


def _make_tile_dw(cr, nb, dot):
    """tile_dw (a depthwise convolution with the images in the lanes): cr channels by nb vectors of images, summed
    over the entries e0..e1. dot False: each entry broadcasts a weight of each channel, w[wbase + r*wstride +
    ent_w[e]], onto nb vectors of its data at abase + r*astride + ent_a[e] (the forward, the data gradient); dot
    True: each entry multiplies two such vectors, a's and b's at bbase + r*bstride + ent_b[e] (the weight
    gradient, per lane). The sums go to out[obase + r*ostride], nb vectors a channel."""
    def tile(typingctx, a, abase, astride, ent_a, b, bbase, bstride, ent_b, e0, e1, out, obase, ostride):
        sig = types.void(a, abase, astride, ent_a, b, bbase, bstride, ent_b, e0, e1, out, obase, ostride)

        def codegen(context, builder, signature, args):
            t = signature.args
            a, abase, astride, ent_a, b, bbase, bstride, ent_b, e0, e1, out, obase, ostride = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            ap, bp, op = (_data(context, builder, t[i], x).data for i, x in ((0, a), (4, b), (10, out)))
            eap, ebp = (_data(context, builder, t[i], x).data for i, x in ((3, ent_a), (7, ent_b)))
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(nb)] for _ in range(cr)]
            for r in range(cr):
                for v in range(nb):
                    builder.store(ir.Constant(vec, None), acc[r][v])
            with cgutils.for_range(builder, builder.sub(e1, e0)) as entry:
                e = builder.add(e0, entry.index)
                ao = builder.add(abase, builder.load(builder.gep(eap, [e])))
                bo = builder.add(bbase, builder.load(builder.gep(ebp, [e])))
                for r in range(cr):
                    ar = builder.add(ao, builder.mul(const(r), astride))
                    br = builder.add(bo, builder.mul(const(r), bstride))
                    if not dot:
                        wv = splat(builder.load(builder.gep(bp, [br])))
                    for v in range(nb):
                        x = load(ap, builder.add(ar, const(v * n)))
                        y = load(bp, builder.add(br, const(v * n))) if dot else wv
                        builder.store(fma(x, y, builder.load(acc[r][v])), acc[r][v])
            for r in range(cr):
                base = builder.add(obase, builder.mul(const(r), ostride))
                for v in range(nb):
                    store(builder.load(acc[r][v]), op, builder.add(base, const(v * n)))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"tile_dw{'_dot' if dot else ''}{cr}"
    return intrinsic(tile)


def _transposed(builder, rows, n):
    """n vectors of n lanes transposed (a network of shuffles: at each level h = n/2 .. 1, rows i and i + h swap
    their off-diagonal h x h blocks)."""
    h = n // 2
    while h:
        lo = ir.Constant(ir.VectorType(ir.IntType(32), n), [j if not j & h else n + j - h for j in range(n)])
        hi = ir.Constant(ir.VectorType(ir.IntType(32), n), [j + h if not j & h else n + j for j in range(n)])
        new = list(rows)
        for i in range(n):
            if not i & h:
                new[i] = builder.shuffle_vector(rows[i], rows[i + h], lo)
                new[i + h] = builder.shuffle_vector(rows[i], rows[i + h], hi)
        rows = new
        h //= 2
    return rows


def _relu_tool(context, builder, vec, splat, relu, relu_type, slope, slope_type, dtype):
    """activate(v): v, or where the kernel's `relu` argument is true, its (leaky) ReLU with the `slope` argument."""
    zero = ir.Constant(vec, None)
    slopes = splat(context.cast(builder, slope, slope_type, dtype))
    on = context.cast(builder, relu, relu_type, types.boolean)

    def activate(v):
        leaky = builder.select(builder.fcmp_ordered(">", v, zero), v, builder.fmul(v, slopes))
        return builder.select(on, leaky, v)
    return activate


def _make_transpose_tile():
    """transpose_tile: a block of lanes x lanes values transposed in registers (a network of shuffles: at each
    level h = lanes/2 .. 1, rows i and i + h swap their off-diagonal h x h blocks), plus a bias by column and an
    optional (leaky) ReLU."""
    def tile(typingctx, src, sbase, sstride, dst, dbase, dstride, bias, bbase, relu, slope):
        sig = types.void(src, sbase, sstride, dst, dbase, dstride, bias, bbase, relu, slope)

        def codegen(context, builder, signature, args):
            t = signature.args
            src, sbase, sstride, dst, dbase, dstride, bias, bbase, relu, slope = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            sp, dp, bp = (_data(context, builder, t[i], a).data for i, a in ((0, src), (3, dst), (6, bias)))
            rows = [load(sp, builder.add(sbase, builder.mul(const(r), sstride))) for r in range(n)]
            rows = _transposed(builder, rows, n)
            b = load(bp, bbase)
            activate = _relu_tool(context, builder, vec, splat, relu, t[8], slope, t[9], t[0].dtype)
            for r in range(n):
                store(activate(builder.fadd(rows[r], b)), dp, builder.add(dbase, builder.mul(const(r), dstride)))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = "transpose_tile"
    return intrinsic(tile)


def _make_transpose_part():
    """transpose_part: transpose_tile's block cut to `count` (< lanes) along one side, nothing read or written past
    it: lanes_cut, the source rows' first count lanes (masked loads) to the first count rows of dst; otherwise the
    first count source rows to every dst row's first count lanes (masked stores). An optional (leaky) ReLU."""
    def tile(typingctx, src, sbase, sstride, dst, dbase, dstride, count, lanes_cut, relu, slope):
        sig = types.void(src, sbase, sstride, dst, dbase, dstride, count, lanes_cut, relu, slope)

        def codegen(context, builder, signature, args):
            t = signature.args
            src, sbase, sstride, dst, dbase, dstride, count, lanes_cut, relu, slope = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            splat64, index, mload, mstore = _masked_tools(builder, vec, n)
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            sp, dp = (_data(context, builder, t[i], a).data for i, a in ((0, src), (3, dst)))
            count = context.cast(builder, count, t[6], types.int64)
            cut = context.cast(builder, lanes_cut, t[7], types.boolean)
            in_lanes = builder.icmp_signed("<", index, splat64(count))  # (lane < count)
            everything = ir.Constant(in_lanes.type, [1] * n)
            nothing = ir.Constant(in_lanes.type, [0] * n)

            def by_row(r):  # the mask of row r: all lanes where r < count, none past it
                return builder.select(builder.icmp_signed("<", const(r), count), everything, nothing)
            rows = [mload(sp, builder.add(sbase, builder.mul(const(r), sstride)),
                          builder.select(cut, in_lanes, by_row(r))) for r in range(n)]
            rows = _transposed(builder, rows, n)
            activate = _relu_tool(context, builder, vec, splat, relu, t[8], slope, t[9], t[0].dtype)
            for r in range(n):
                mstore(activate(rows[r]), dp, builder.add(dbase, builder.mul(const(r), dstride)),
                       builder.select(cut, by_row(r), in_lanes))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = "transpose_part"
    return intrinsic(tile)


def _splat(builder, scalar, n):
    """scalar (any LLVM scalar) in all n lanes of a vector of its type."""
    vt, i32 = ir.VectorType(scalar.type, n), ir.IntType(32)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, n), [0] * n))


def _masked_tools(builder, vec, n):
    """(splat64(i64) -> n lanes, index 0..n-1 as i64 lanes, mload(ptr, index, mask) -> vector (zeros where the
    mask is off, nothing read there), mstore(value, ptr, index, mask)) for LLVM's masked loads and stores of vec (n
    floats, doubles or integers)."""
    i64, i32 = ir.IntType(64), ir.IntType(32)
    ivec, mvec, ptr = ir.VectorType(i64, n), ir.VectorType(ir.IntType(1), n), vec.as_pointer()
    splat64 = lambda v: _splat(builder, v, n)  # (v: an i64)
    element = vec.element
    kind = (f"i{element.width}" if isinstance(element, ir.IntType)
            else f"f{32 if isinstance(element, ir.FloatType) else 64}")
    suffix = f"v{n}{kind}.p0"
    load_fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [ptr, i32, mvec, vec]),
                                             "llvm.masked.load." + suffix)
    store_fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [vec, ptr, i32, mvec]),
                                              "llvm.masked.store." + suffix)
    addr = lambda p, idx: builder.bitcast(builder.gep(p, [idx]), ptr)
    align = ir.Constant(i32, 4)

    def mload(p, idx, mask):
        return builder.call(load_fn, [addr(p, idx), align, mask, ir.Constant(vec, None)])

    def mstore(value, p, idx, mask):
        builder.call(store_fn, [value, addr(p, idx), align, mask])
    return splat64, ir.Constant(ivec, list(range(n))), mload, mstore


def _make_deinterleave2():
    """deinterleave2: the even and the odd elements of x[at:at + 2*count] to dst[d0:d0 + count] and
    dst[d1:d1 + count], a vector of each from two loaded vectors (shuffles); the last partial pair of vectors by
    masked loads and stores (nothing read or written past the ranges)."""
    def tile(typingctx, x, at, count, dst, d0, d1):
        sig = types.void(x, at, count, dst, d0, d1)

        def codegen(context, builder, signature, args):
            t = signature.args
            x, at, count, dst, d0, d1 = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64, i32 = ir.IntType(64), ir.IntType(32)
            const = lambda v: ir.Constant(i64, v)
            xp, dp = _data(context, builder, t[0], x).data, _data(context, builder, t[3], dst).data
            evens = ir.Constant(ir.VectorType(i32, n), [2 * j for j in range(n)])
            odds = ir.Constant(ir.VectorType(i32, n), [2 * j + 1 for j in range(n)])
            full = builder.udiv(count, const(n))
            with cgutils.for_range(builder, full) as loop:
                i = builder.mul(loop.index, const(n))
                src = builder.add(at, builder.add(i, i))
                a, b = load(xp, src), load(xp, builder.add(src, const(n)))
                store(builder.shuffle_vector(a, b, evens), dp, builder.add(d0, i))
                store(builder.shuffle_vector(a, b, odds), dp, builder.add(d1, i))
            rem = builder.sub(count, builder.mul(full, const(n)))
            with builder.if_then(builder.icmp_unsigned(">", rem, const(0))):
                i = builder.mul(full, const(n))
                src = builder.add(at, builder.add(i, i))
                splat64, index, mload, mstore = _masked_tools(builder, vec, n)
                two = splat64(builder.add(rem, rem))
                mask_a = builder.icmp_unsigned("<", index, two)
                mask_b = builder.icmp_unsigned("<", builder.add(index, splat64(const(n))), two)
                mask_s = builder.icmp_unsigned("<", index, splat64(rem))
                a, b = mload(xp, src, mask_a), mload(xp, builder.add(src, const(n)), mask_b)
                mstore(builder.shuffle_vector(a, b, evens), dp, builder.add(d0, i), mask_s)
                mstore(builder.shuffle_vector(a, b, odds), dp, builder.add(d1, i), mask_s)
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = "deinterleave2"
    return intrinsic(tile)


def _epilogue_types(typingctx, dtype, ca, cb, slope):
    """The types Numba gives the epilogue's scalar expressions t = ca * v + cb * r; t if not relu or t > 0 else
    t * slope: (wide, negative)."""
    wide = typingctx.unify_types(dtype, ca, cb)
    return wide, typingctx.unify_types(wide, slope)


def _epilogue(context, builder, n, dty, kinds, args, tys):
    """value(v, r): the vector stored for the sum v (r: the residual's vector, or None), as store_row and the
    channels-last tiles apply a SUM's other bottom and a ReLU: t = ca * v + cb * r (in `wide`, Numba's type of the
    scalar expression), then t if not relu or t > 0 else t * slope, in the arrays' type dty. kinds: the Numba
    types (wide, negative with r); args, tys: (ca, cb, relu, slope) and their Numba types. value.unit_sum: the
    condition under which value(v, r, unit=True) gives the same values faster."""
    wide, neg_t = kinds
    ca, cb, relu, slope = args
    vec = ir.VectorType(context.get_value_type(dty), n)

    def vtype(nbty):
        return ir.VectorType(context.get_value_type(nbty), n)

    def convert(v, frm, to):  # a vector of Numba type frm to Numba type to (float32 <-> float64)
        if frm == to:
            return v
        wider = context.get_value_type(to)
        return (builder.fpext if isinstance(wider, ir.DoubleType) else builder.fptrunc)(v, vtype(to))

    def splat_as(value, frm, to):
        return _splat(builder, context.cast(builder, value, frm, to), n)
    relu_on = _splat(builder, context.cast(builder, relu, tys[2], types.boolean), n)
    ca_v, cb_v = splat_as(ca, tys[0], wide), splat_as(cb, tys[1], wide)
    slope_n, slope_d = splat_as(slope, tys[3], neg_t), splat_as(slope, tys[3], dty)
    zero_w, zero_d = ir.Constant(vtype(wide), None), ir.Constant(vec, None)

    def leaky(x, xt, nt, sl, zero):  # x if not relu or x > 0 else x * slope, in the arrays' type
        neg = convert(builder.fmul(convert(x, xt, nt), sl), nt, dty)
        return builder.select(builder.and_(relu_on, builder.fcmp_unordered("<=", x, zero)), neg,
                              convert(x, xt, dty))

    def value(v, r, unit=False):
        """unit: the sum in the arrays' type (where unit_sum holds: ca == cb == 1 and no ReLU or one of slope 0;
        a sum of two float32 values rounds to float32 as its double does). Without r the ReLU in the arrays' type
        too (the slopes are rounded to it: a product of two float32 values rounds as its double does)."""
        if r is None or unit:
            return leaky(v if r is None else builder.fadd(v, r), dty, dty, slope_d, zero_d)
        tw = builder.fadd(builder.fmul(ca_v, convert(v, dty, wide)), builder.fmul(cb_v, convert(r, dty, wide)))
        return leaky(tw, wide, neg_t, slope_n, zero_w)
    one = lambda value, ty: builder.fcmp_ordered("==", context.cast(builder, value, ty, types.float64),
                                                 ir.Constant(ir.DoubleType(), 1.0))
    flat = builder.or_(builder.not_(context.cast(builder, relu, tys[2], types.boolean)), builder.fcmp_ordered(
        "==", context.cast(builder, slope, tys[3], types.float64), ir.Constant(ir.DoubleType(), 0.0)))
    value.unit_sum = builder.and_(builder.and_(one(ca, tys[0]), one(cb, tys[1])), flat)
    return value


def _make_wino_in():
    """wino_in: Winograd F(2x2, 3x3)'s input transform V = B^T d B of count channels (whole vectors): d[a][b] at
    x[src + a*rs + b*cs + c], V[4a+b] to v[dst + (4a+b)*ds + c] (B^T = [[1,0,-1,0], [0,1,1,0], [0,-1,1,0],
    [0,1,0,-1]])."""
    def tile(typingctx, x, src, rs, cs, v, dst, ds, count):
        sig = types.void(x, src, rs, cs, v, dst, ds, count)

        def codegen(context, outer, signature, outer_args):
            _outlined(outer, "wino_in", signature, outer_args, lambda builder, args: body(context, builder, signature,
                                                                                         args))
            return context.get_dummy_value()

        def body(context, builder, signature, args):
            t = signature.args
            x, src, rs, cs, v, dst, ds, count = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            xp, vp = _data(context, builder, t[0], x).data, _data(context, builder, t[4], v).data
            sub, add = builder.fsub, builder.fadd
            with cgutils.for_range(builder, builder.udiv(count, ir.Constant(i64, n))) as loop:
                c = builder.mul(loop.index, ir.Constant(i64, n))
                d = [[load(xp, builder.add(builder.add(src, c), builder.add(builder.mul(rs, ir.Constant(i64, a)),
                                                                            builder.mul(cs, ir.Constant(i64, b)))))
                      for b in range(4)] for a in range(4)]
                rows = [[sub(d[0][b], d[2][b]) for b in range(4)], [add(d[1][b], d[2][b]) for b in range(4)],
                        [sub(d[2][b], d[1][b]) for b in range(4)], [sub(d[1][b], d[3][b]) for b in range(4)]]
                for a, r in enumerate(rows):
                    for b, value in enumerate((sub(r[0], r[2]), add(r[1], r[2]), sub(r[2], r[1]), sub(r[1], r[3]))):
                        store(value, vp, builder.add(builder.add(dst, c), builder.mul(ds, ir.Constant(i64, 4 * a + b))))
        return sig, codegen
    tile.__name__ = tile.__qualname__ = "wino_in"
    return intrinsic(tile)


def _make_linear(name, mat):
    """A small constant matrix applied in vectors: y[dst + k*ds + c] = sum_i mat[k][i] x[src + i*ss + c] for c <
    count (whole vectors), its entries small integers (the Winograd transforms of layers/winograd.py: additions,
    and products by a splatted constant only where an entry is not +-1)."""
    def tile(typingctx, x, src, ss, y, dst, ds, count):
        sig = types.void(x, src, ss, y, dst, ds, count)

        def codegen(context, builder, signature, args):
            t = signature.args
            x, src, ss, y, dst, ds, count = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            elem = context.get_value_type(t[0].dtype)
            xp, yp = _data(context, builder, t[0], x).data, _data(context, builder, t[3], y).data
            with cgutils.for_range(builder, builder.udiv(count, const(n))) as loop:
                c = builder.mul(loop.index, const(n))
                d = [load(xp, builder.add(builder.add(src, c), builder.mul(ss, const(i)))) for i in range(len(mat[0]))]
                for k, row in enumerate(mat):
                    out = None
                    for i, coef in enumerate(row):
                        if coef == 0:
                            continue
                        term = d[i] if abs(coef) == 1 else builder.fmul(splat(ir.Constant(elem, float(abs(coef)))),
                                                                        d[i])
                        if out is None:
                            out = term if coef > 0 else builder.fneg(term)
                        else:
                            out = builder.fadd(out, term) if coef > 0 else builder.fsub(out, term)
                    store(out, yp, builder.add(builder.add(dst, c), builder.mul(ds, const(k))))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = name
    return intrinsic(tile)


def _make_wino_out():
    """wino_out: Winograd F(2x2, 3x3)'s output transform Y = A^T M A of count filters (whole vectors), M[p] at
    m[src + p*k + o] (A^T = [[1,1,1,0], [0,1,-1,-1]]), Y[i][j] stored at y[dst[i*2+j] + o] where bit i*2+j of mask
    is set, with store_row's epilogue (the SUM's other bottom at res[dst + roff + o])."""
    def tile(typingctx, m, src, k, count, y, dst, mask, res, roff, added, ca, cb, relu, slope):
        sig = types.void(m, src, k, count, y, dst, mask, res, roff, added, ca, cb, relu, slope)
        kinds = _epilogue_types(typingctx, y.dtype, ca, cb, slope)

        def codegen(context, outer, signature, outer_args):
            _outlined(outer, "wino_out", signature, outer_args, lambda builder, args: body(context, builder, signature,
                                                                                          args))
            return context.get_dummy_value()

        def body(context, builder, signature, args):
            t = signature.args
            m, src, k, count, y, dst, mask, res, roff, added, ca, cb, relu, slope = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            mp, yp, rp = (_data(context, builder, t[i], a).data for i, a in ((0, m), (4, y), (7, res)))
            dp = _data(context, builder, t[5], dst).data
            dsts = [builder.load(builder.gep(dp, [const(q)])) for q in range(4)]
            bits = [builder.icmp_unsigned("!=", builder.and_(mask, const(1 << q)), const(0)) for q in range(4)]
            value = _epilogue(context, builder, n, t[4].dtype, kinds, (ca, cb, relu, slope), t[10:14])
            sub, add = builder.fsub, builder.fadd

            def run(with_res, unit=False):
                with cgutils.for_range(builder, builder.udiv(count, const(n))) as loop:
                    o = builder.mul(loop.index, const(n))
                    at = builder.add(src, o)
                    q = [load(mp, builder.add(at, builder.mul(k, const(p)))) for p in range(16)]
                    rows = [[add(add(q[b], q[4 + b]), q[8 + b]) for b in range(4)],
                            [sub(sub(q[4 + b], q[8 + b]), q[12 + b]) for b in range(4)]]
                    for i, r in enumerate(rows):
                        for j, out in enumerate((add(add(r[0], r[1]), r[2]), sub(sub(r[1], r[2]), r[3]))):
                            with builder.if_then(bits[2 * i + j]):
                                at_y = builder.add(dsts[2 * i + j], o)
                                got = load(rp, builder.add(at_y, roff)) if with_res else None
                                store(value(out, got, unit), yp, at_y)
            _by_epilogue(builder, context.cast(builder, added, t[9], types.boolean), value, run)
        return sig, codegen
    tile.__name__ = tile.__qualname__ = "wino_out"
    return intrinsic(tile)


def _by_epilogue(builder, added, value, emit):
    """emit(with_res, unit) under the branches of an epilogue (_epilogue's value): with the SUM's other bottom, in
    the arrays' type where value.unit_sum holds (unit) or not, and without it. added: an LLVM i1."""
    with builder.if_else(added) as (then, otherwise):
        with then:
            with builder.if_else(value.unit_sum) as (unit, other):
                with unit:
                    emit(True, True)
                with other:
                    emit(True)
        with otherwise:
            emit(False)


def _make_store_row():
    """store_row: a run of a band's values to the top, as direct_conv_bands' scalar loop computes them (equal to
    it to the bit), in vectors and a masked last part (ResNet-20's stage-2 3x3 at batch 64 1.04 -> 1.00 ms)."""
    def tile(typingctx, src, s0, dst, d0, count, res, added, ca, cb, relu, slope):
        sig = types.void(src, s0, dst, d0, count, res, added, ca, cb, relu, slope)
        kinds = _epilogue_types(typingctx, src.dtype, ca, cb, slope)

        def codegen(context, builder, signature, args):
            t = signature.args
            src, s0, dst, d0, count, res, added, ca, cb, relu, slope = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            sp, dp, rp = (_data(context, builder, t[i], a).data for i, a in ((0, src), (2, dst), (5, res)))
            value = _epilogue(context, builder, n, t[0].dtype, kinds, (ca, cb, relu, slope), t[7:11])
            is_added = context.cast(builder, added, t[6], types.boolean)
            splat64, index, mload, mstore = _masked_tools(builder, vec, n)
            full = builder.udiv(count, const(n))
            rem = builder.sub(count, builder.mul(full, const(n)))

            def run(with_res, unit=False):
                with cgutils.for_range(builder, full) as loop:
                    i = builder.mul(loop.index, const(n))
                    r = load(rp, builder.add(d0, i)) if with_res else None
                    store(value(load(sp, builder.add(s0, i)), r, unit), dp, builder.add(d0, i))
                with builder.if_then(builder.icmp_unsigned(">", rem, const(0))):
                    i = builder.mul(full, const(n))
                    mask = builder.icmp_unsigned("<", index, splat64(rem))
                    r = mload(rp, builder.add(d0, i), mask) if with_res else None
                    mstore(value(mload(sp, builder.add(s0, i), mask), r, unit), dp, builder.add(d0, i), mask)
            _by_epilogue(builder, is_added, value, run)
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = "store_row"
    return intrinsic(tile)


def _py_store_row(src, s0, dst, d0, count, res, added, ca, cb, relu, slope):
    for j in range(count):
        if added:
            t = ca * src[s0 + j] + cb * res[d0 + j]
        else:
            t = src[s0 + j]
        dst[d0 + j] = t if not relu or t > 0 else t * slope


def _make_tile_unpadded(nr, nv, stride=1):
    """tile_unpadded{nr}{nv}[_s2]: a convolution straight from the unpadded bottom, BCAST_MR filters by nr output rows
    by nv vectors of a row's columns, each load masked to the columns inside the image (the padding's zeros never
    read; the taps' rows limited to [di_lo, di_hi), inside the image for all nr rows); stride 2: two vectors of
    the input row loaded for each of the top's, their even lanes taken (a shuffle). The sums (bias first, then
    dj, di, c in that order) stored to the top (rows of ow, planes of oplane), masked to the row and to `kept`
    filters."""
    mr = BCAST_MR

    def tile(typingctx, x, xbase, chans, height, width, row0, kh, kw, ph, pw, di_lo, di_hi, w, wbase, wstride,
             bias, bbase, kept, y, ybase, ow, oplane):
        sig = types.void(x, xbase, chans, height, width, row0, kh, kw, ph, pw, di_lo, di_hi, w, wbase, wstride,
                         bias, bbase, kept, y, ybase, ow, oplane)

        def codegen(context, builder, signature, args):
            t = signature.args
            (x, xbase, chans, height, width, row0, kh, kw, ph, pw, di_lo, di_hi, w, wbase, wstride, bias, bbase,
             kept, y, ybase, ow, oplane) = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64, i32 = ir.IntType(64), ir.IntType(32)
            const = lambda v: ir.Constant(i64, v)
            xp, wp, bp, yp = (_data(context, builder, t[i], a).data for i, a in ((0, x), (12, w), (15, bias), (18, y)))
            splat64, index, mload, mstore = _masked_tools(builder, vec, n)
            evens = ir.Constant(ir.VectorType(i32, n), [2 * j for j in range(n)])
            plane = builder.mul(height, width)
            acc = [[[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(nr)] for _ in range(mr)]
            for m in range(mr):
                b = splat(builder.load(builder.gep(bp, [builder.add(bbase, const(m))])))
                for r in range(nr):
                    for v in range(nv):
                        builder.store(b, acc[m][r][v])
            # the top's columns each vector's lanes compute: v*n + l < ow
            inside = [builder.icmp_signed("<", builder.add(index, splat64(const(v * n))), splat64(ow))
                      for v in range(nv)]

            def in_row(col):  # lanes whose input column lies in [0, width)
                return builder.and_(builder.icmp_signed(">=", col, splat64(const(0))),
                                    builder.icmp_signed("<", col, splat64(width)))
            with cgutils.for_range(builder, kw) as jloop:
                dj = jloop.index
                shift = builder.sub(dj, pw)
                masks = []  # per vector of the top: the masks of the stride vectors of input read for it
                for v in range(nv):
                    col = builder.add(index, splat64(builder.add(const(v * n * stride), shift)))
                    if stride == 1:
                        masks.append([builder.and_(in_row(col), inside[v])])
                    else:
                        masks.append([in_row(col), in_row(builder.add(col, splat64(const(n))))])
                with cgutils.for_range_slice(builder, di_lo, di_hi, const(1)) as (di, _):
                    # the channels innermost (16-64 of them, the longest loop, at constant strides)
                    k0 = builder.add(builder.mul(di, kw), dj)  # tap (c, di, dj) is c * kh * kw + k0
                    w0 = builder.add(wbase, builder.mul(k0, wstride))
                    wstep = builder.mul(builder.mul(kh, kw), wstride)
                    x0 = builder.add(xbase, builder.add(builder.mul(
                        builder.sub(builder.add(builder.mul(row0, const(stride)), di), ph), width), shift))
                    with cgutils.for_range(builder, chans) as cloop:
                        c = cloop.index
                        wrow = builder.add(w0, builder.mul(c, wstep))
                        first = builder.add(x0, builder.mul(c, plane))
                        xs = []
                        for r in range(nr):
                            at = builder.add(first, builder.mul(const(r * stride), width))
                            row = []
                            for v in range(nv):
                                if stride == 1:
                                    row.append(mload(xp, builder.add(at, const(v * n)), masks[v][0]))
                                else:
                                    a = mload(xp, builder.add(at, const(2 * v * n)), masks[v][0])
                                    b = mload(xp, builder.add(at, const(2 * v * n + n)), masks[v][1])
                                    row.append(builder.shuffle_vector(a, b, evens))
                            xs.append(row)
                        for m in range(mr):
                            a = splat(builder.load(builder.gep(wp, [builder.add(wrow, const(m))])))
                            for r in range(nr):
                                for v in range(nv):
                                    builder.store(fma(a, xs[r][v], builder.load(acc[m][r][v])), acc[m][r][v])
            for m in range(mr):
                with builder.if_then(builder.icmp_signed("<", const(m), kept)):
                    for r in range(nr):
                        at = builder.add(builder.add(ybase, builder.mul(const(m), oplane)),
                                         builder.mul(builder.add(row0, const(r)), ow))
                        for v in range(nv):
                            mstore(builder.load(acc[m][r][v]), yp, builder.add(at, const(v * n)), inside[v])
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"tile_unpadded{nr}{nv}" + ("_s2" if stride == 2 else "")
    return intrinsic(tile)


def _py_tile_unpadded(nr, nv, stride, x, xbase, chans, height, width, row0, kh, kw, ph, pw, di_lo, di_hi, w, wbase,
                      wstride, bias, bbase, kept, y, ybase, ow, oplane):
    n, plane = lanes(x.dtype), height * width
    cols = np.arange(nv * n)
    keep = cols < ow
    for r in range(nr):
        sums = np.repeat(bias[bbase:bbase + BCAST_MR, None].astype(x.dtype), nv * n, axis=1)
        for dj in range(kw):
            src = cols * stride + dj - pw
            ok = keep & (src >= 0) & (src < width)
            for di in range(di_lo, di_hi):
                for c in range(chans):
                    row = x[xbase + c * plane + ((row0 + r) * stride + di - ph) * width:][:width]
                    vals = np.where(ok, row[np.clip(src, 0, width - 1)], 0).astype(x.dtype)
                    k = (c * kh + di) * kw + dj
                    sums = sums + w[wbase + k * wstride:wbase + k * wstride + BCAST_MR, None] * vals[None]
        for m in range(min(kept, BCAST_MR)):
            at = ybase + m * oplane + (row0 + r) * ow
            y[at:at + ow] = sums[m, :ow]


def _make_tile_flat(nv):
    """tile_flat{nv}: BCAST_MR filters by nv vectors of a stride-1 "same" convolution's top taken as one flat run of
    its plane (positions q0 .. q0 + nv*lanes of height*width, across the rows: a 28x28 plane is 49 whole vectors,
    where rows of 28 keep 28 of 32 lanes), read from the unpadded bottom: tap (di, dj) loads the run shifted by
    (di - ph)*width + dj - pw, masked to the lanes whose input row and column lie in the image (rows_of, cols_of:
    int32 per position, the positions past the plane with rows no image has). The sums in tile_unpadded's order
    (bias, then dj, di, c): the same bits. Stored masked to the plane and to `kept` filters."""
    mr = BCAST_MR

    def tile(typingctx, x, xbase, chans, height, width, q0, kh, kw, ph, pw, rows_of, cols_of, w, wbase, wstride,
             bias, bbase, kept, y, ybase, oplane):
        sig = types.void(x, xbase, chans, height, width, q0, kh, kw, ph, pw, rows_of, cols_of, w, wbase, wstride,
                         bias, bbase, kept, y, ybase, oplane)

        def codegen(context, builder, signature, args):
            t = signature.args
            (x, xbase, chans, height, width, q0, kh, kw, ph, pw, rows_of, cols_of, w, wbase, wstride, bias, bbase,
             kept, y, ybase, oplane) = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0])
            i64, i32 = ir.IntType(64), ir.IntType(32)
            const = lambda v: ir.Constant(i64, v)
            xp, wp, bp, yp = (_data(context, builder, t[i], a).data for i, a in ((0, x), (12, w), (15, bias), (18, y)))
            rp, cp = (_data(context, builder, t[i], a).data for i, a in ((10, rows_of), (11, cols_of)))
            splat64, index, mload, mstore = _masked_tools(builder, vec, n)
            ivec = ir.VectorType(i32, n)
            splat32 = lambda v: _splat(builder, builder.trunc(v, i32), n)  # (v: an i64)

            def iload(p, at):
                return builder.load(builder.bitcast(builder.gep(p, [at]), ivec.as_pointer()), align=4)
            rows = [iload(rp, builder.add(q0, const(v * n))) for v in range(nv)]
            cols = [iload(cp, builder.add(q0, const(v * n))) for v in range(nv)]
            plane = builder.mul(height, width)
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(nv)] for _ in range(mr)]
            for m in range(mr):
                b = splat(builder.load(builder.gep(bp, [builder.add(bbase, const(m))])))
                for v in range(nv):
                    builder.store(b, acc[m][v])

            def between(lanes, lo, hi):  # lo <= lanes < hi, lo and hi i64 scalars
                return builder.and_(builder.icmp_signed(">=", lanes, splat32(lo)),
                                    builder.icmp_signed("<", lanes, splat32(hi)))
            with cgutils.for_range(builder, kw) as jloop:
                dj = jloop.index
                cmask = [between(cols[v], builder.sub(pw, dj), builder.sub(builder.add(width, pw), dj))
                         for v in range(nv)]
                with cgutils.for_range(builder, kh) as iloop:
                    di = iloop.index
                    masks = [builder.and_(cmask[v], between(rows[v], builder.sub(ph, di),
                                                            builder.sub(builder.add(height, ph), di)))
                             for v in range(nv)]
                    k0 = builder.add(builder.mul(di, kw), dj)  # tap (c, di, dj) is c * kh * kw + k0
                    w0 = builder.add(wbase, builder.mul(k0, wstride))
                    wstep = builder.mul(builder.mul(kh, kw), wstride)
                    x0 = builder.add(builder.add(xbase, q0), builder.add(
                        builder.mul(builder.sub(di, ph), width), builder.sub(dj, pw)))
                    with cgutils.for_range(builder, chans) as cloop:
                        c = cloop.index
                        wrow = builder.add(w0, builder.mul(c, wstep))
                        first = builder.add(x0, builder.mul(c, plane))
                        xs = [mload(xp, builder.add(first, const(v * n)), masks[v]) for v in range(nv)]
                        for m in range(mr):
                            a = splat(builder.load(builder.gep(wp, [builder.add(wrow, const(m))])))
                            for v in range(nv):
                                builder.store(fma(a, xs[v], builder.load(acc[m][v])), acc[m][v])
            inside = [builder.icmp_signed("<", builder.add(index, splat64(builder.add(q0, const(v * n)))),
                                          splat64(oplane)) for v in range(nv)]
            for m in range(mr):
                with builder.if_then(builder.icmp_signed("<", const(m), kept)):
                    at = builder.add(builder.add(ybase, builder.mul(const(m), oplane)), q0)
                    for v in range(nv):
                        mstore(builder.load(acc[m][v]), yp, builder.add(at, const(v * n)), inside[v])
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"tile_flat{nv}"
    return intrinsic(tile)


def _py_tile_flat(nv, x, xbase, chans, height, width, q0, kh, kw, ph, pw, rows_of, cols_of, w, wbase, wstride,
                  bias, bbase, kept, y, ybase, oplane):
    n, plane = lanes(x.dtype), height * width
    q = q0 + np.arange(nv * n)
    rows, cols = rows_of[q].astype(np.int64), cols_of[q].astype(np.int64)
    sums = np.repeat(bias[bbase:bbase + BCAST_MR, None].astype(x.dtype), nv * n, axis=1)
    for dj in range(kw):
        for di in range(kh):
            r, col = rows + di - ph, cols + dj - pw
            ok = (r >= 0) & (r < height) & (col >= 0) & (col < width)
            for c in range(chans):
                vals = np.where(ok, x[xbase + c * plane + np.where(ok, r * width + col, 0)], 0).astype(x.dtype)
                k = (c * kh + di) * kw + dj
                sums = sums + w[wbase + k * wstride:wbase + k * wstride + BCAST_MR, None] * vals[None]
    keep = q < oplane
    for m in range(min(kept, BCAST_MR)):
        y[ybase + m * oplane + q[keep]] = sums[m, keep]


def _make_max_row_s2(k):
    """max_row{k}s2: up to lanes - 1 (k = 3) or lanes (k = 2) MAX windows k x k of stride 2 inside the image along
    a row, as Caffe's loop (taps in row-major order, strict >, from `lowest`): a window row's taps are the even,
    odd (and next even) lanes of two loaded vectors (shuffles), the maxima and their plane indices kept in
    vectors, stored masked."""
    def tile(typingctx, x, s, t, width, y, out, mask, count, lowest):
        sig = types.void(x, s, t, width, y, out, mask, count, lowest)

        def codegen(context, builder, signature, args):
            ty = signature.args
            x, s, t, width, y, out, mask, count, lowest = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, ty[0])
            i64, i32 = ir.IntType(64), ir.IntType(32)
            const = lambda v: ir.Constant(i64, v)
            xp, yp, mp = (_data(context, builder, ty[i], a).data for i, a in ((0, x), (4, y), (6, mask)))
            splat64, index, mload, mstore = _masked_tools(builder, vec, n)
            ivec = ir.VectorType(i32, n)
            _, _, _, istore = _masked_tools(builder, ivec, n)
            splat32 = lambda v: _splat(builder, v, n)  # (v: an i32)
            picks = [ir.Constant(ir.VectorType(i32, n), [2 * k + j for k in range(n)]) for j in (0, 1)]
            picks.append(ir.Constant(ir.VectorType(i32, n), [min(2 * k + 2, 2 * n - 1) for k in range(n)]))
            lanes2 = builder.add(builder.add(count, count), const(k - 2))  # values a window row reads
            mask_a = builder.icmp_unsigned("<", index, splat64(lanes2))
            mask_b = builder.icmp_unsigned("<", builder.add(index, splat64(const(n))), splat64(lanes2))
            best = splat(context.cast(builder, lowest, ty[8], ty[0].dtype))
            arg = ir.Constant(ivec, [-1] * n)
            twok = builder.add(splat32(builder.trunc(t, i32)), ir.Constant(ivec, [2 * k for k in range(n)]))
            for u in range(k):
                row = builder.add(s, builder.mul(const(u), width))
                a, b = mload(xp, row, mask_a), mload(xp, builder.add(row, const(n)), mask_b)
                for j in range(k):
                    v = builder.shuffle_vector(a, b, picks[j])
                    better = builder.fcmp_ordered(">", v, best)
                    best = builder.select(better, v, best)
                    at = builder.add(twok, splat32(builder.trunc(builder.add(builder.mul(const(u), width), const(j)),
                                                                 i32)))
                    arg = builder.select(better, at, arg)
            keep = builder.icmp_unsigned("<", index, splat64(count))
            mstore(best, yp, out, keep)
            istore(arg, mp, out, keep)
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = f"max_row{k}s2"
    return intrinsic(tile)


def _py_max_row_s2(k, x, s, t, width, y, out, mask, count, lowest):
    for w in range(count):
        best, arg = lowest, -1
        for u in range(k):
            for j in range(k):
                v = x[s + u * width + 2 * w + j]
                if v > best:
                    best, arg = v, t + u * width + 2 * w + j
        y[out + w], mask[out + w] = best, arg


def _py_deinterleave2(x, at, count, dst, d0, d1):
    dst[d0:d0 + count] = x[at:at + 2 * count:2]
    dst[d1:d1 + count] = x[at + 1:at + 2 * count:2]


def _py_transpose_tile(src, sbase, sstride, dst, dbase, dstride, bias, bbase, relu, slope):
    n = lanes(src.dtype)
    block = np.stack([src[sbase + r * sstride:sbase + r * sstride + n] for r in range(n)]).T + bias[bbase:bbase + n]
    if relu:
        block = np.where(block > 0, block, block * slope)
    for r in range(n):
        dst[dbase + r * dstride:dbase + r * dstride + n] = block[r]


def _py_transpose_part(src, sbase, sstride, dst, dbase, dstride, count, lanes_cut, relu, slope):
    n = lanes(src.dtype)
    rows, cols = (n, count) if lanes_cut else (count, n)
    block = np.stack([src[sbase + r * sstride:sbase + r * sstride + cols] for r in range(rows)]).T
    if relu:
        block = np.where(block > 0, block, block * slope)
    for r in range(cols):
        dst[dbase + r * dstride:dbase + r * dstride + rows] = block[r]


def _py_tile_lanes(cr, nb, d, dbase, ent_d, ent_w, e0, e1, w, wbase, count, dstride, wstride, out, obase, ostride):
    n = lanes(d.dtype) * nb
    for r in range(cr):
        acc = np.zeros(n, d.dtype)
        for e in range(e0, e1):
            for m in range(count):
                s = dbase + ent_d[e] + m * dstride
                acc += w[wbase + ent_w[e] + m * wstride + r] * d[s:s + n]
        out[obase + r * ostride:obase + r * ostride + n] = acc


def _py_tile_dw(cr, nb, dot, a, abase, astride, ent_a, b, bbase, bstride, ent_b, e0, e1, out, obase, ostride):
    n = lanes(a.dtype) * nb
    for r in range(cr):
        acc = np.zeros(n, a.dtype)
        for e in range(e0, e1):
            x = a[abase + r * astride + ent_a[e]:][:n]
            br = bbase + r * bstride + ent_b[e]
            acc += x * (b[br:br + n] if dot else b[br])
        out[obase + r * ostride:obase + r * ostride + n] = acc


def _py_tile_pixels(mr, nv, accumulate, x, xbase, qs, pbase, offs, w, o0, wstride, bias, out, obase, ostride):
    n = lanes(x.dtype) * nv
    for r in range(mr):
        q = xbase + qs[pbase + r]
        at = obase + (pbase + r) * ostride + o0
        acc = out[at:at + n].copy() if accumulate else bias[o0:o0 + n].copy()
        for k in range(len(offs)):
            acc += x[q + offs[k]] * w[k * wstride + o0:k * wstride + o0 + n]
        out[at:at + n] = acc


def _make_tile_planar(kr, orr, vector_bytes=None):
    """tile_planar: the weight gradient of kr taps by orr filters from the top diff as it is, planar: vectors run
    along each output row (lanes pixels at a time, OW a multiple of them), one accumulator vector per (tap,
    filter), summed across its lanes at the end into res[s*orr + r]."""
    def tile(typingctx, x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, res):
        sig = types.void(x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, res)

        def codegen(context, builder, signature, args):
            t = signature.args
            x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, res = args
            vec, n, load, store, splat, fma = _vector_tools(context, builder, t[0], vector_bytes)
            i64 = ir.IntType(64)
            const = lambda v: ir.Constant(i64, v)
            xp, dp, rp = (_data(context, builder, t[i], a).data for i, a in ((0, x), (4, dy), (13, res)))
            offs_arr = _data(context, builder, t[2], offs)
            taps = [builder.load(builder.gep(offs_arr.data, [builder.add(kbase, const(s))])) for s in range(kr)]
            acc = [[cgutils.alloca_once(builder, vec) for _ in range(orr)] for _ in range(kr)]
            zero = ir.Constant(vec, [ir.Constant(vec.element, 0.0)] * n)
            for s in range(kr):
                for r in range(orr):
                    builder.store(zero, acc[s][r])
            steps = builder.sdiv(cols, const(n))
            with cgutils.for_range(builder, images) as image:
                xb = builder.add(xbase, builder.mul(image.index, ximage))
                db = builder.add(dbase, builder.mul(image.index, dimage))
                with cgutils.for_range(builder, rows) as y:
                    xrow = builder.add(xb, builder.mul(y.index, row))
                    drow = builder.add(db, builder.mul(y.index, cols))
                    with cgutils.for_range(builder, steps) as step:
                        u = builder.mul(step.index, const(n))
                        xs = [load(xp, builder.add(builder.add(xrow, taps[s]), u)) for s in range(kr)]
                        for r in range(orr):
                            d = load(dp, builder.add(builder.add(drow, builder.mul(const(r), dstride)), u))
                            for s in range(kr):
                                builder.store(fma(xs[s], d, builder.load(acc[s][r])), acc[s][r])
            for s in range(kr):
                for r in range(orr):
                    v = builder.load(acc[s][r])
                    total = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
                    for lane in range(1, n):
                        total = builder.fadd(total, builder.extract_element(v, ir.Constant(ir.IntType(32), lane)))
                    builder.store(total, builder.gep(rp, [const(s * orr + r)]))
            return context.get_dummy_value()
        return sig, codegen
    tile.__name__ = tile.__qualname__ = "tile_planar" if vector_bytes is None else f"tile_planar{vector_bytes}"
    return intrinsic(tile)


def _py_tile_planar(kr, orr, x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage,
                    res):
    for s in range(kr):
        for r in range(orr):
            total = 0.0
            for m in range(images):
                for y in range(rows):
                    xs = xbase + m * ximage + y * row + offs[kbase + s]
                    ds = dbase + m * dimage + r * dstride + y * cols
                    total += float(np.dot(x[xs:xs + cols], dy[ds:ds + cols]))
            res[s * orr + r] = total


def _py_tile_bcast(nv, x, xbase, offs, w, wbase, wstride, bias, bbase, out, obase, ostride):
    n = int(lanes(x.dtype) * nv)  # (nv 1.5, 1, 0.5: three, two, one half vectors)
    for r in range(BCAST_MR):
        acc = np.full(n, bias[bbase + r], x.dtype)
        for k in range(len(offs)):
            s = xbase + offs[k]
            acc += w[wbase + k * wstride + r] * x[s:s + n]
        out[obase + r * ostride:obase + r * ostride + n] = acc


def _py_tile_taps(kr, nv, x, xbase, offs, kbase, dy, dbase, dstride, rows, cols, row, images, ximage, dimage, out,
                  obase, ostride):
    n = lanes(x.dtype) * nv
    qs = [y * row + c for y in range(rows) for c in range(cols)]
    for m in range(images):
        d = np.stack([dy[dbase + m * dimage + q * dstride:dbase + m * dimage + q * dstride + n] for q in qs])
        for s in range(kr):
            start = xbase + m * ximage + offs[kbase + s]
            out[obase + s * ostride:obase + s * ostride + n] += x[[start + q for q in qs]] @ d


# Under NUMBA_DISABLE_JIT the kernels run as Python, so the tiles must too.
if config.DISABLE_JIT:
    tile_bcast1, tile_bcast2, tile_bcast3 = (functools.partial(_py_tile_bcast, nv) for nv in (1, 2, 3))
else:
    tile_bcast1, tile_bcast2, tile_bcast3 = (_make_tile_bcast(nv) for nv in (1, 2, 3))
# half vectors on AVX-512 for rows of a multiple of 8 float32 and not of 16 (layers/conv.direct_conv_rows: LeNet's
# conv1, rows of 24 as three; _h3 is three half vectors a row)
if config.DISABLE_JIT:
    tile_bcast_h1, tile_bcast_h2, tile_bcast_h3 = (functools.partial(_py_tile_bcast, nv / 2) for nv in (1, 2, 3))
else:
    tile_bcast_h1, tile_bcast_h2, tile_bcast_h3 = (_make_tile_bcast(nv, VECTOR_BYTES // 2) for nv in (1, 2, 3))
tile_planar = functools.partial(_py_tile_planar, PLANAR_KR, PLANAR_OR) if config.DISABLE_JIT else _make_tile_planar(
    PLANAR_KR, PLANAR_OR)
# half vectors on AVX-512, for rows of a multiple of 8 float32 and not of 16 (LeNet's 24-wide conv1)
tile_planar_half = functools.partial(_py_tile_planar, PLANAR_KR, PLANAR_OR) if config.DISABLE_JIT else \
    _make_tile_planar(PLANAR_KR, PLANAR_OR, VECTOR_BYTES // 2)
if config.DISABLE_JIT:
    tile_pixels, tile_pixels_acc = (functools.partial(_py_tile_pixels, PIX_MR, PIX_NV, a) for a in (False, True))
else:
    tile_pixels, tile_pixels_acc = _make_tile_pixels(PIX_MR, PIX_NV), _make_tile_pixels(PIX_MR, PIX_NV, True)
# the channels-last convolutions of forward-only nets (layers/channels_last.py): pixels x vectors of filters.
# Measured on Zen 4 (resnet_fashion's layers at batch 32, one thread): on AVX-512 tiles of 8, 4 and 5 pixels ran
# 3-9% faster than of 12, 6 and 6 (24 accumulators: their 12 pixels' offsets no longer fit the general registers);
# on AVX2 6 and 3 (4 and 3 as many vectors of 8 filters) ran 1.1-1.4x faster than 4 and 2. One vector of filters
# on AVX2 makes a load for each FMA of 8 lanes (on AVX-512 of 16): 8 x 1 ran 82-95 GFLOP/s a Zen 4 core (K 20 to
# 200) against 6 x 2's and 3 x 4's 111-117 (12 x 1, its offsets past the general registers, 57-69), so tile_kind
# weighs the values each tile computes by CL_SPEED
CL_TILES = ((8, 1), (7, 2), (4, 4)) if VECTOR_BYTES == 64 else ((8, 1), (6, 2), (3, 4))
CL_SPEED = (1.0, 1.0, 1.0) if VECTOR_BYTES == 64 else (0.78, 1.0, 1.0)
if config.DISABLE_JIT:
    tile_cl1, tile_cl2, tile_cl4 = (functools.partial(_py_tile_cl, mr, nv) for mr, nv in CL_TILES)
else:
    tile_cl1, tile_cl2, tile_cl4 = (_make_tile_cl(mr, nv) for mr, nv in CL_TILES)
transpose_tile = _py_transpose_tile if config.DISABLE_JIT else _make_transpose_tile()
transpose_part = _py_transpose_part if config.DISABLE_JIT else _make_transpose_part()
# a stride-2 row's columns to its two phases (layers/conv.place_phases, place_band)
deinterleave2 = _py_deinterleave2 if config.DISABLE_JIT else _make_deinterleave2()
# MAX pooling's 2x2 and 3x3 windows of stride 2 along a row (layers/pooling.max_pool_2x2s2, max_pool_3x3s2)
if config.DISABLE_JIT:
    max_row2s2, max_row3s2 = (functools.partial(_py_max_row_s2, k) for k in (2, 3))
else:
    max_row2s2, max_row3s2 = (_make_max_row_s2(k) for k in (2, 3))
# a band's run of values to the top, with a SUM above and a ReLU (layers/conv.direct_conv_bands, take_planes)
store_row = _py_store_row if config.DISABLE_JIT else _make_store_row()
wino_in, wino_out = (None, None) if config.DISABLE_JIT else (_make_wino_in(), _make_wino_out())


def _py_linear(mat, x, src, ss, y, dst, ds, count):
    for k, row in enumerate(mat):
        y[dst + k * ds:dst + k * ds + count] = sum(coef * x[src + i * ss:src + i * ss + count]
                                                    for i, coef in enumerate(row) if coef)


# Winograd's F(2x2, 5x5) and F(4x4, 3x3) (layers/winograd.py): F(2x2, 5x5)'s input transform B^T, output transform
# A^T, and A (the top diff's)
WINO5_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
            (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
WINO5_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 1))
WINO5_A = tuple(zip(*WINO5_AT))
wino5_in, wino5_out, wino5_up = (
    (functools.partial(_py_linear, m) for m in (WINO5_BT, WINO5_AT, WINO5_A)) if config.DISABLE_JIT else
    (_make_linear(name, m) for name, m in (("wino5_in", WINO5_BT), ("wino5_out", WINO5_AT), ("wino5_up", WINO5_A))))
# F(4x4, 3x3) on the same points: the same B^T, its A^T (4 x 6) and A
WINO3_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
WINO3_A = tuple(zip(*WINO3_AT))
wino3_out, wino3_up = (
    (functools.partial(_py_linear, m) for m in (WINO3_AT, WINO3_A)) if config.DISABLE_JIT else
    (_make_linear(name, m) for name, m in (("wino3_out", WINO3_AT), ("wino3_up", WINO3_A))))
# F(2x2, 3x3) on the points 0, 1, -1 and infinity (the training 3x3s: transforms of +-1 alone keep its sums about as
# exact as the direct ones)
WINO2_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
WINO2_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
WINO2_A = tuple(zip(*WINO2_AT))
wino2_in, wino2_out, wino2_up = (
    (functools.partial(_py_linear, m) for m in (WINO2_BT, WINO2_AT, WINO2_A)) if config.DISABLE_JIT else
    (_make_linear(name, m) for name, m in (("wino2_in", WINO2_BT), ("wino2_out", WINO2_AT), ("wino2_up", WINO2_A))))
# a convolution from the unpadded bottom (layers/conv.direct_conv_unpadded): a row of two vectors (rows of 17-32 on
# AVX-512), three or two rows of one vector (12-16), one row of one (where the kernel rows inside the image differ);
# stride 2 (_s2): the top's rows of one vector
_UNPADDED = ((1, 2, 1), (3, 1, 1), (2, 1, 1), (1, 1, 1), (3, 1, 2), (2, 1, 2), (1, 1, 2))
if config.DISABLE_JIT:
    (tile_unpadded12, tile_unpadded31, tile_unpadded21, tile_unpadded11, tile_unpadded31_s2, tile_unpadded21_s2,
     tile_unpadded11_s2) = (functools.partial(_py_tile_unpadded, nr, nv, s) for nr, nv, s in _UNPADDED)
else:
    (tile_unpadded12, tile_unpadded31, tile_unpadded21, tile_unpadded11, tile_unpadded31_s2, tile_unpadded21_s2,
     tile_unpadded11_s2) = (_make_tile_unpadded(nr, nv, s) for nr, nv, s in _UNPADDED)

# a stride-1 "same" convolution's top as flat runs of its plane (layers/conv.direct_conv_flat): 3, 2 or 1 vectors
if config.DISABLE_JIT:
    tile_flat3, tile_flat2, tile_flat1 = (functools.partial(_py_tile_flat, nv) for nv in (3, 2, 1))
else:
    tile_flat3, tile_flat2, tile_flat1 = (_make_tile_flat(nv) for nv in (3, 2, 1))

# tile_pixels of ROWS_MR rows (layers/recurrent.step_product: an LSTM step's 32 rows as 4 tiles of 8, not 6 of 6
# whose last overlaps; 16 accumulators, 10 loads for 16 multiply-adds against 8 for 12): AVX-512's 32 registers
ROWS_MR = 8 if VECTOR_BYTES == 64 else PIX_MR
tile_rows = functools.partial(_py_tile_pixels, ROWS_MR, PIX_NV, False) if config.DISABLE_JIT else \
    _make_tile_pixels(ROWS_MR, PIX_NV)
# tile_lanes1: one vector of images, for a last group of lanes that one vector holds (a batch of 50 at 32-byte
# vectors: 56 lanes computed, not 64)
# (a, b, c: LANES_WIDTHS' three widths)
if config.DISABLE_JIT:
    (tile_lanes_a, tile_lanes_a1, tile_lanes_b, tile_lanes_b1, tile_lanes_c, tile_lanes_c1) = (
        functools.partial(_py_tile_lanes, cr, nb) for cr in LANES_WIDTHS for nb in (LANES_NB, 1))
else:
    (tile_lanes_a, tile_lanes_a1, tile_lanes_b, tile_lanes_b1, tile_lanes_c, tile_lanes_c1) = (
        _make_tile_lanes(cr, nb) for cr in LANES_WIDTHS for nb in (LANES_NB, 1))
# the depthwise tiles: LANES_CR channels a tile, and one for the channels past the last whole tile
if config.DISABLE_JIT:
    tile_dw, tile_dw1, tile_dw_dot, tile_dw_dot1 = (functools.partial(_py_tile_dw, cr, LANES_NB, dot)
                                                    for dot in (False, True) for cr in (LANES_CR, 1))
else:
    tile_dw, tile_dw1, tile_dw_dot, tile_dw_dot1 = (_make_tile_dw(cr, LANES_NB, dot) for dot in (False, True)
                                                    for cr in (LANES_CR, 1))
if config.DISABLE_JIT:
    tile_taps, tile_taps1 = (functools.partial(_py_tile_taps, kr, nv) for kr, nv in ((TAPS_KR, TAPS_NV),
                                                                                    (TAPS_KR1, 1)))
else:
    tile_taps, tile_taps1 = _make_tile_taps(TAPS_KR, TAPS_NV), _make_tile_taps(TAPS_KR1, 1)
# the last vector of filters where an odd number of vectors holds them (direct_conv_dw: LeNet's 50 filters at
# 32-byte vectors, 3 tiles of 16 and this one of 8, not 4 of 16)
tile_taps_last = functools.partial(_py_tile_taps, TAPS_KR, 1) if config.DISABLE_JIT else _make_tile_taps(TAPS_KR, 1)
