"""Flush float32 denormals to zero on x86 (the MXCSR FTZ and DAZ bits), in this thread and Numba's threads.

When a loss approaches 0 or a layer's gradients vanish, values below 1.2e-38 appear; x86 computes on them
through microcode assists, 10-100x slower, and a whole training run can crawl (LeNet: 1,600 -> 110 img/s).
Caffe built with Intel's compilers and PyTorch's `set_flush_denormal(True)` do the same. They are far below
anything that changes a result. `YAFFE_DENORMALS=keep` turns it off.
"""
from __future__ import annotations

import os
import platform

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


def flush_denormals() -> bool:
    """Set FTZ and DAZ in the calling thread and in Numba's worker threads; False where not applicable."""
    if os.environ.get("YAFFE_DENORMALS", "").lower() == "keep":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    from numba import get_num_threads
    _set_here(FTZ_DAZ)
    _set_in_threads(FTZ_DAZ, 64 * get_num_threads())
    return True


_BLAS = []


def _blas_setter():
    """The OpenBLAS that NumPy loaded: (set_num_threads, get_num_threads) through ctypes, or None (another BLAS,
    or none found). Read from this process's memory map, so it finds the copy NumPy's wheel bundles."""
    if not _BLAS:
        import ctypes
        found = None
        try:
            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
        except OSError:
            paths = set()
        for path in sorted(paths):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", ""):
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    if set_ is not None and get is not None:
                        set_.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
                        found = (set_, get)
                        break
                if found:
                    break
            if found:
                break
        _BLAS.append(found)
    return _BLAS[0]


def blas_threads(n: int | None = None) -> int | None:
    """OpenBLAS's thread count: sets it to n when given; returns the count before (None: not OpenBLAS)."""
    import numpy  # noqa: F401  (loads the BLAS)
    found = _blas_setter()
    if found is None:
        return None
    before = int(found[1]())
    if n is not None:
        found[0](int(n))
    return before
