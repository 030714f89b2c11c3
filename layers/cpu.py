"""Flush float32 denormals to zero on x86 (the MXCSR FTZ and DAZ bits), in this thread and Numba's threads.

When a loss approaches 0 or a layer's gradients vanish, values below 1.2e-38 appear; x86 computes on them
through microcode assists, 10-100x slower, and a whole training run can crawl (LeNet: 1,600 -> 110 img/s).
Caffe built with Intel's compilers and PyTorch's `set_flush_denormal(True)` do the same. They are far below
anything that changes a result. `YAFFE_DENORMALS=keep` turns it off.
"""
from __future__ import annotations

import os
import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

FTZ_DAZ = 0x8040  # flush-to-zero (bit 15) and denormals-are-zero (bit 6)


@intrinsic
def _or_mxcsr(typingctx, bits):
    """MXCSR |= bits, through LLVM's x86 intrinsics (no inline assembly)."""
    def codegen(context, builder, signature, args):
        ptr = ir.IntType(8).as_pointer()
        fty = ir.FunctionType(ir.VoidType(), [ptr])
        store = cgutils.get_or_insert_function(builder.module, fty, "llvm.x86.sse.stmxcsr")
        load = cgutils.get_or_insert_function(builder.module, fty, "llvm.x86.sse.ldmxcsr")
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.call(store, [builder.bitcast(slot, ptr)])
        builder.store(builder.or_(builder.load(slot), builder.trunc(args[0], ir.IntType(32))), slot)
        builder.call(load, [builder.bitcast(slot, ptr)])
        return context.get_dummy_value()
    return types.void(bits), codegen


@njit(cache=True, nogil=True)
def _set_here(bits):
    _or_mxcsr(bits)


@njit(cache=True, nogil=True, parallel=True)
def _set_in_threads(bits, n):
    for _ in prange(n):  # many small chunks: every worker thread runs at least one
        _or_mxcsr(bits)


def flush_denormals(restart_blas: bool = False) -> bool:
    """Set FTZ and DAZ in the calling thread and in Numba's worker threads, and with restart_blas in OpenBLAS's
    (it shuts them down, so that the next threaded product starts new ones from this thread: a new thread
    inherits its creator's MXCSR; only where no product runs in another thread). False where not applicable."""
    if os.environ.get("YAFFE_DENORMALS", "").lower() == "keep":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    from numba import get_num_threads
    _set_here(FTZ_DAZ)
    _set_in_threads(FTZ_DAZ, 64 * get_num_threads())
    lib = _openblas() if restart_blas else None
    if lib is not None and hasattr(lib, "blas_thread_shutdown_"):
        lib.blas_thread_shutdown_()
    return True


_LIB = []


def _openblas():
    """The OpenBLAS that NumPy loaded (ctypes), or None (another BLAS, or none found). Read from this process's
    memory map, so it finds the copy NumPy's wheel bundles."""
    if not _LIB:
        import ctypes
        found = None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            if any(hasattr(lib, f"{p}_set_num_threads{s}") for p in ("scipy_openblas", "openblas") for s in ("64_", "")):
                found = lib
                break
        _LIB.append(found)
    return _LIB[0]


_BLAS = []


def _blas_setter():
    """OpenBLAS's (set_num_threads, get_num_threads), or None."""
    if not _BLAS:
        import ctypes
        lib, found = _openblas(), None
        for name in ("scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads64_", "openblas_{}_num_threads"):
            set_, get = (getattr(lib, name.format(v), None) if lib is not None else None for v in ("set", "get"))
            if set_ is not None and get is not None:
                set_.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
                found = (set_, get)
                break
        _BLAS.append(found)
    return _BLAS[0]


def blas_threads(n: int | None = None) -> int | None:
    """OpenBLAS's thread count: sets it to n when given; returns the count before (None: not OpenBLAS)."""
    found = _blas_setter()
    if found is None:
        return None
    before = int(found[1]())
    if n is not None:
        found[0](int(n))
    return before


_GEMM = []
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _gemm_functions():
    """OpenBLAS's cblas_sgemm and cblas_dgemm with 64-bit integers (NumPy's wheels), or None."""
    if not _GEMM:
        import ctypes
        lib, found = _openblas(), None
        if lib is not None and hasattr(lib, "scipy_cblas_sgemm64_"):
            found = {}
            i, ll, p = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
            for dtype, name, real in ((np.float32, "scipy_cblas_sgemm64_", ctypes.c_float),
                                      (np.float64, "scipy_cblas_dgemm64_", ctypes.c_double)):
                f = getattr(lib, name)
                f.argtypes = [i, i, i, ll, ll, ll, real, p, ll, p, ll, real, p, ll]
                f.restype = None
                found[np.dtype(dtype)] = f
        _GEMM.append(found)
    return _GEMM[0]


def _operand(x):
    """(transpose flag, leading dimension) for BLAS, or None when x's layout needs a copy."""
    item = x.itemsize
    if x.strides[1] == item and x.strides[0] >= max(1, x.shape[1]) * item:
        return NO_TRANS, x.strides[0] // item
    if x.strides[0] == item and x.strides[1] >= max(1, x.shape[0]) * item:
        return TRANS, x.strides[1] // item
    return None


def gemm_acc(a, b, c):
    """c += a @ b in one BLAS call (beta = 1: no temporary, no extra pass); a and b may be transposed views.
    Falls back to NumPy where OpenBLAS's CBLAS is not found or a layout does not fit."""
    functions = _gemm_functions()
    f = functions.get(c.dtype) if functions else None
    oa, ob = _operand(a), _operand(b)
    if (f is None or oa is None or ob is None or a.dtype != c.dtype or b.dtype != c.dtype
            or c.strides[1] != c.itemsize or c.shape != (a.shape[0], b.shape[1]) or a.shape[1] != b.shape[0]):
        c += a @ b
        return
    m, n, k = c.shape[0], c.shape[1], a.shape[1]
    f(ROW_MAJOR, oa[0], ob[0], m, n, k, 1.0, a.ctypes.data, oa[1], b.ctypes.data, ob[1], 1.0, c.ctypes.data,
      c.strides[0] // c.itemsize)
