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
from numba import get_num_threads, njit, prange, types, uintp
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
    if pooled():
        gemm(a, b, c, 1.0)
        return
    _gemm_acc_blas(a, b, c)


def _gemm_acc_blas(a, b, c):
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


def _renamed(fn, suffix):
    """A copy of fn under another name (Numba's on-disk cache tells functions apart by name, not options)."""
    import types as pytypes
    copy = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    return copy


def _fast_num_threads():
    """numba.get_num_threads without its locks: once Numba's threads are launched, the thread-local count read
    straight from the threading layer (0.1 us; the public function takes a multiprocessing lock and a threading
    lock every call, 0.7 us alone and far more when two slices of a batch call it at once: 9% of the time
    ResNet-20's slices held Python's lock). Numba versions without the private name keep the public one."""
    get_num_threads()  # launches the threads (and checks the count) once
    try:
        from numba.np.ufunc.parallel import _get_num_threads as fast
        if fast() == get_num_threads():
            return fast
    except (ImportError, AttributeError, TypeError):
        pass
    return get_num_threads


_NUM_THREADS = []


def num_threads() -> int:
    """The calling thread's Numba thread count (numba.get_num_threads), fast after the first call."""
    if not _NUM_THREADS:
        _NUM_THREADS.append(_fast_num_threads())
    return _NUM_THREADS[0]()


class ThreadChoice:
    """For short passes run again and again (a forward-only net at a small batch: batch-1 inference), whether to
    run a pass on all of Numba's threads or on the calling thread alone: whichever the last passes measured
    faster. On a VM whose other core is busy or asleep each parallel kernel waits tens of microseconds for it:
    there models/resnet_fashion's batch of one took 310 us on two threads and 257 on one, where on a quiet machine
    two took 172 and one 261; LeNet 136 against 109. The choice follows the machine: every EXPLORE passes the
    other one runs once (every 4 x EXPLORE where one is over 1.25x the other). Passes whose median on all the
    threads is over LONG always take them (the split pays for itself). pick() says how many threads the next pass
    takes; record() its seconds."""
    EXPLORE = 16
    KEPT = 5       # each choice's last timings, whose median is compared
    LONG = 5e-3    # seconds

    def __init__(self, key=None):
        self.count, self.times, self.off, self.key = 0, {}, False, key  # key: what it measures (threads, shapes)
        self.median, self.best, self.every = {}, None, self.EXPLORE  # (kept by record(): pick() sorts nothing)

    def pick(self, total: int) -> int:
        self.count += 1
        if total < 2 or self.off or self.count <= 2:  # (the first passes bind, fold and warm the caches)
            return total
        if self.best is None:  # all the threads measured three times first (a long pass ends it there), then one
            return total if total not in self.median else 1
        return (total + 1 - self.best) if self.count % self.every == 0 else self.best

    def record(self, threads: int, total: int, seconds: float):
        if self.count <= 2 or self.off:
            return
        kept = self.times.get(threads)
        if kept is None:
            kept = self.times[threads] = []
        kept.append(seconds)
        if len(kept) > self.KEPT:
            del kept[0]
        if len(kept) < 3:
            return
        median = self.median[threads] = sorted(kept)[len(kept) // 2]
        if threads == total and median > self.LONG:
            self.off = True  # long passes (by their median: one pass can be long on a loaded machine): all threads
        if len(self.median) == 2:
            one, all_ = self.median[1], self.median[total]
            self.best = 1 if one < all_ else total
            far = max(one, all_) > 1.25 * min(one, all_)
            self.every = self.EXPLORE * (4 if far else 1)  # (the other seldom where they are far apart)


def threaded(fn, minimum, **options):
    """fn compiled twice: on all of Numba's threads (its prange loops shared out) for calls whose first
    argument has `minimum` elements or more, and on the calling thread (a launch costs a few us while the
    threads spin, 30-300 us once they sleep). The builds are `.serial` and `.parallel`."""
    parallel = njit(cache=True, nogil=True, parallel=True, **options)(fn)
    serial = njit(cache=True, nogil=True, **options)(_renamed(fn, "_serial"))

    def call(first, *rest):
        return (parallel if first.size >= minimum else serial)(first, *rest)
    call.__name__, call.__doc__ = fn.__name__.lstrip("_"), fn.__doc__
    call.serial, call.parallel, call.py_func = serial, parallel, fn
    return call


def spread(fn, minimum, **options):
    """threaded(fn, minimum), and the serial build also wherever the calling thread has no others: a slice's
    thread (solvers/replicas.py), where a launch costs more than the copy it shares out (ResNet-20's slices 2.5%
    slower); the parallel build for a net running its batch whole."""
    both = threaded(fn, minimum, **options)

    def call(first, *rest):
        return (both if num_threads() > 1 else both.serial)(first, *rest)
    call.__name__, call.__doc__ = both.__name__, fn.__doc__
    call.serial, call.parallel, call.py_func = both.serial, both.parallel, fn
    return call


@njit(cache=True, nogil=True, parallel=True)
def _zero(a):
    block = 1 << 14
    for b in prange((a.size + block - 1) // block):
        a[b * block:(b + 1) * block] = 0


def zero(a):
    """a[...] = 0 on a flat array: blocks shared out to the threads when large."""
    if a.size >= 1 << 16:
        _zero(a)
    else:
        a.fill(0)


OWNED_TASK = 1 << 14  # elements a task of owned_ranges at most


def owned_ranges(shapes, offsets, threads):
    """Which elements of a flat array of params each thread owns: (lo, hi, first, which), task t covering
    [lo[t], hi[t]) of param which[t], and thread p's tasks first[p]:first[p + 1]. Thread p owns the rows
    _cut(rows, threads, p) of each param (its first axis, as the products cut a weight's rows: gemm's parts, part p
    on thread p), in tasks of at most OWNED_TASK elements. Clearing the diffs and the update follow it, so that a
    thread writes the weights and gradients it computed: where the VM puts its two cores on different L3 caches
    (a cache line written by one reaching the other in 380 ns, not 85), each weight one thread had and the other
    wrote crossed between them every step (the MLP's update: 0.11 ms on one L3, 1 ms on two; 0.5 with this)."""
    parts = max(threads, 1)
    per = [[] for _ in range(parts)]
    for k, (shape, o) in enumerate(zip(shapes, offsets)):
        rows = shape[0] if len(shape) else 1
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        cuts = [_cut.py_func(rows, parts, p) for p in range(parts + 1)]
        for p in range(parts):
            a, b = o + cuts[p] * row, o + cuts[p + 1] * row
            per[p].extend((i, min(i + OWNED_TASK, b), k) for i in range(a, b, OWNED_TASK))
    first = np.cumsum([0] + [len(t) for t in per]).astype(np.int64)
    lo, hi, which = (np.array([r[j] for t in per for r in t], np.int64) for j in range(3))
    return lo, hi, first, which


@njit(cache=True, nogil=True, parallel=True)
def zero_owned(a, lo, hi, first):
    """a[lo[t]:hi[t]] = 0 for every task, thread p doing tasks first[p]:first[p + 1] (owned_ranges)."""
    for p in prange(first.size - 1):
        for t in range(first[p], first[p + 1]):
            a[lo[t]:hi[t]] = 0


@njit(cache=True, nogil=True, parallel=True)
def _add_column_sums(dy, db):
    m, n = dy.shape
    block = 256
    f = dy.reshape(-1)  # (flat indices: LLVM vectorized the 2-D ones' loop 4-7x slower than NumPy's)
    for b in prange((n + block - 1) // block):
        lo = b * block
        w = min(n, lo + block) - lo
        acc = np.zeros(block, dy.dtype)
        for i in range(m):
            base = i * n + lo
            for j in range(w):
                acc[j] += f[uintp(base + j)]
        for j in range(w):
            db[lo + j] += acc[j]


def add_column_sums(dy, db):
    """db += dy summed over its rows (a bias gradient): dy (m, n), db (n,); blocks of columns on the threads
    when large, each column summed in row order, then added."""
    if dy.size >= 1 << 15:
        _add_column_sums(dy, db)
    else:
        db += dy.sum(axis=0)


# ---- matrix products on Numba's threads ---------------------------------------------------------------------
# OpenBLAS runs on the calling thread only (blas_threads(1), set by use_own_threads), and a product is cut into
# one part per Numba thread, each part one single-threaded OpenBLAS call made from a Numba kernel. Then one pool
# of threads does all the work: Numba's. Two pools (OpenBLAS's and Numba's, each spinning after its work, or
# each sleeping and woken at 30-300 us on a VM) cost more than the products of a small net.

_SYMBOL = {np.dtype(np.float32): ("scipy_cblas_sgemm64_", "yaffe_cblas_sgemm"),  # OpenBLAS's name, the kernels'
           np.dtype(np.float64): ("scipy_cblas_dgemm64_", "yaffe_cblas_dgemm")}
_i32, _i64 = types.int32, types.int64
_sgemm = types.ExternalFunction("yaffe_cblas_sgemm", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float32, _i64, _i64, _i64, _i64, types.float32, _i64, _i64))
_dgemm = types.ExternalFunction("yaffe_cblas_dgemm", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float64, _i64, _i64, _i64, _i64, types.float64, _i64, _i64))
_POOLED = []
SMALL_PRODUCT = 1 << 17  # multiply-adds below which NumPy's matmul is called (measured: 8 against 3 us)
MIN_PART = 1 << 18  # multiply-adds per part: smaller products run on the calling thread (a part costs ~5 us)


_FALLBACK = []  # the ctypes callbacks registered where OpenBLAS's CBLAS is not found (kept alive here)


def _numpy_gemm(dtype):
    """A C-callable ?gemm with the CBLAS signature above (row-major only) that computes with NumPy: what the
    kernels' symbols point at where OpenBLAS's CBLAS is not found (another BLAS), so that a kernel naming them
    still links; slow (the GIL, copies), and only reached on paths that pooled() normally keeps them from."""
    import ctypes
    real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    i, ll = ctypes.c_int32, ctypes.c_int64
    item = np.dtype(dtype).itemsize

    def view(address, rows, cols, ld):
        buf = (ctypes.c_char * max(1, ((rows - 1) * ld + cols) * item)).from_address(address)
        return np.lib.stride_tricks.as_strided(np.frombuffer(buf, dtype), (rows, cols), (ld * item, item))

    def gemm_c(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        if m <= 0 or n <= 0:
            return
        av = view(a, k, m, lda).T if ta == TRANS else view(a, m, k, lda)
        bv = view(b, n, k, ldb).T if tb == TRANS else view(b, k, n, ldb)
        cv = view(c, m, n, ldc)
        product = (av @ bv) * dtype(alpha) if k > 0 else np.zeros((m, n), dtype)
        cv[...] = product + cv * dtype(beta) if beta else product

    return ctypes.CFUNCTYPE(None, i, i, i, ll, ll, ll, real, ll, ll, ll, ll, real, ll, ll)(gemm_c)


def _register_symbols():
    """Register yaffe_cblas_sgemm/dgemm with LLVM at import, before any kernel that names them is compiled or
    loaded from the cache (one that was, alone in a fresh process, crashed): OpenBLAS's CBLAS where NumPy
    loaded it, else NumPy behind a ctypes callback (_numpy_gemm). Returns whether OpenBLAS's were registered."""
    import ctypes
    import llvmlite.binding as llvm
    functions = _gemm_functions()
    lib = _openblas() if functions else None
    for dtype, (real, alias) in _SYMBOL.items():
        if lib is not None:
            address = ctypes.cast(getattr(lib, real), ctypes.c_void_p).value
        else:
            _FALLBACK.append(_numpy_gemm(dtype.type))
            address = ctypes.cast(_FALLBACK[-1], ctypes.c_void_p).value
        llvm.add_symbol(alias, address)
    return lib is not None


_OPENBLAS_SYMBOLS = _register_symbols()


def pooled() -> bool:
    """Whether products can run as parts on Numba's threads: OpenBLAS's CBLAS (64-bit integers) was found (its
    ?gemm registered under yaffe's names for the kernels at import, by name, so their cache stays valid) and
    YAFFE_GEMM is not `openblas`."""
    if not _POOLED:
        _POOLED.append(_OPENBLAS_SYMBOLS and os.environ.get("YAFFE_GEMM", "").lower() != "openblas")
    return _POOLED[0]


def use_own_threads():
    """OpenBLAS on the calling thread from now on, where products run on Numba's threads (pooled())."""
    if pooled():
        blas_threads(1)


@njit(cache=True, nogil=True, inline="always")
def _cut(n, parts, p):
    """Start of part p of n (a multiple of 16, so that parts start on a cache line)."""
    return n if p >= parts else (n * p // parts) // 16 * 16


@njit(cache=True, nogil=True, parallel=True)
def _gemm_parts(ta, tb, m, n, k, a, lda, b, ldb, beta, c, bias, split_n, parts):
    """c = op(a) op(b) + beta c (+ bias on every row when bias has n values), as `parts` OpenBLAS calls on
    the threads: the columns of c cut into parts (split_n) or its rows. a, b: addresses; c: (m, n) view with
    unit column stride; row-major, ta/tb are CBLAS's 111 (no transpose) or 112."""
    item, ldc = c.itemsize, c.strides[0] // c.itemsize
    for p in prange(parts):
        lo, hi = _cut(n if split_n else m, parts, p), _cut(n if split_n else m, parts, p + 1)
        if hi <= lo:
            continue
        mm, nn, ao, bo, co = m, n, a, b, c.ctypes.data
        if split_n:
            nn = hi - lo
            bo = b + lo * item * (1 if tb == 111 else ldb)
            co += lo * item
            rows, cols = (0, m), (lo, hi)
        else:
            mm = hi - lo
            ao = a + lo * item * (lda if ta == 111 else 1)
            co += lo * ldc * item
            rows, cols = (lo, hi), (0, n)
        cb = beta
        if bias.size:
            for i in range(rows[0], rows[1]):
                for j in range(cols[0], cols[1]):
                    c[i, j] = bias[j]
            cb = 1.0
        if item == 4:
            _sgemm(np.int32(101), np.int32(ta), np.int32(tb), np.int64(mm), np.int64(nn), np.int64(k),
                   np.float32(1.0), np.int64(ao), np.int64(lda), np.int64(bo), np.int64(ldb), np.float32(cb),
                   np.int64(co), np.int64(ldc))
        else:
            _dgemm(np.int32(101), np.int32(ta), np.int32(tb), np.int64(mm), np.int64(nn), np.int64(k),
                   np.float64(1.0), np.int64(ao), np.int64(lda), np.int64(bo), np.int64(ldb), np.float64(cb),
                   np.int64(co), np.int64(ldc))


@njit(cache=True, nogil=True, parallel=True)
def _k_parts(m, n, k, a, lda, b, ldb, c, scratch, parts):
    ldc = c.strides[0] // 4
    for p in prange(parts):
        lo, hi = _cut(k, parts, p), _cut(k, parts, p + 1)
        out = c.ctypes.data if p == 0 else scratch[p - 1].ctypes.data
        _sgemm(np.int32(101), np.int32(111), np.int32(111), np.int64(m), np.int64(n), np.int64(hi - lo),
               np.float32(1.0), np.int64(a + lo * 4), np.int64(lda), np.int64(b + lo * ldb * 4), np.int64(ldb),
               np.float32(0.0), np.int64(out), np.int64(ldc if p == 0 else n))


@njit(cache=True, nogil=True, parallel=True)
def _add_parts(c, scratch, parts):
    for q in prange(parts):
        for i in range(_cut(c.shape[0], parts, q), _cut(c.shape[0], parts, q + 1)):
            row = c[i]
            for s in range(parts - 1):
                other = scratch[s, i]
                for j in range(c.shape[1]):
                    row[j] += other[j]


def gemm_k_parts(m, n, k, a, lda, b, ldb, c, scratch, parts):
    """c (m, n) = a (m, k) b (k, n), float32, row-major, a and b addresses: part p (on thread p) the product of
    a's columns and b's rows _cut(k, parts, p), into c (part 0) or scratch[p - 1] (parts - 1, m, n); then each
    thread adds the others' rows _cut(m, parts, q) of scratch into c. For an InnerProduct's bottom diff dy W:
    each thread reads only the rows of W it owns (owned_ranges), where cutting c's columns had it read half of
    every row, which the other thread then wrote in the update. Two kernels: in one, Numba fused the two loops
    (it cannot see that OpenBLAS writes scratch), and a thread added a part before the other had computed it."""
    _k_parts(m, n, k, a, lda, b, ldb, c, scratch, parts)
    _add_parts(c, scratch, parts)


_NO_BIAS = {}


def gemm(a, b, c, beta=0.0, bias=None):
    """c = a @ b + beta * c, plus bias (n values) on every row of c; a and b may be transposed views, c is
    (m, n) with unit column stride. One product, split over Numba's threads where pooled(), else OpenBLAS's
    (or NumPy where the layouts do not fit CBLAS)."""
    m, n = c.shape
    k = a.shape[1]
    oa, ob = _operand(a), _operand(b)
    item = c.itemsize
    if (m == 1 or m * n * k < SMALL_PRODUCT) and not beta and a.dtype == b.dtype == c.dtype:
        # a row times a matrix (a batch of one) or a tiny product: NumPy's matmul, which calls gemv for a row (5x
        # faster than gemm with m = 1: 21 against 100 us for LeNet's 800 x 500) and costs less to call
        np.matmul(a, b, out=c)
        if bias is not None:
            c += bias
        return
    if (not (_POOLED[0] if _POOLED else pooled()) or oa is None or ob is None or a.dtype != c.dtype
            or b.dtype != c.dtype or c.dtype not in _SYMBOL or c.strides[1] != item or m == 0 or n == 0):
        if bias is not None:
            c[...] = bias
            beta = 1.0
        if beta:
            if beta != 1:
                c *= beta
            _gemm_acc_blas(a, b, c)
        else:
            np.matmul(a, b, out=c)
        return
    parts = min(num_threads(), m * n * k // MIN_PART)
    if parts <= 1:
        if bias is not None:
            c[...] = bias
            beta = 1.0
        _gemm_functions()[c.dtype](ROW_MAJOR, oa[0], ob[0], m, n, k, 1.0, a.ctypes.data, oa[1], b.ctypes.data,
                                   ob[1], beta, c.ctypes.data, c.strides[0] // item)
        return
    if bias is None:
        bias = _NO_BIAS.get(c.dtype)
        if bias is None:
            bias = _NO_BIAS[c.dtype] = np.zeros(0, c.dtype)
    # columns for wide products, rows for weight gradients (measured on the MLP's products: 3-6% faster)
    _gemm_parts(oa[0], ob[0], m, n, k, a.ctypes.data, oa[1], b.ctypes.data, ob[1], beta, c, bias, n >= 2 * m, parts)


# ---- waiting for the other slices, without sleeping ---------------------------------------------------------------
# A slice that waits on a threading.Barrier sleeps, and wakes 10-80 us after the last one arrives (and then waits
# for Python's lock, which that one holds): MobileNet's 27 BatchNorms wait twice a pass. sync_total spins instead,
# in a kernel, without Python's lock: MobileNet-v1 x0.5 training 36.8 -> 34.1 ms a step.
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _load_acquire(typingctx, a, i):
    """a[i] (int64) as an atomic load with acquire ordering: read anew on every call (not hoisted out of a loop)."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(array.data, [args[1]]), "acquire", 8)
    return types.int64(a, i), codegen


@intrinsic
def _store_release(typingctx, a, i, v):
    """a[i] = v (int64) as an atomic store with release ordering: what was written before is seen with it."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(array.data, [args[1]]), "release", 8)
        return context.get_dummy_value()
    return types.void(a, i, v), codegen


@intrinsic
def _spin_pause(typingctx):
    """x86's PAUSE (a spinning core lends its pipeline to its hyperthread sibling); nothing elsewhere."""
    def codegen(context, builder, signature, args):
        if _X86:
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _pointer_to(typingctx, address, like):
    """A pointer to like's dtype at the integer address (numba.carray makes an array of it: arrays handed to a
    kernel by address, where a typed List of them cost ~1 us a call to unbox)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return types.CPointer(like.dtype)(address, like), codegen


@intrinsic
def _fetch_add(typingctx, a, i, v):
    """a[i] += v (int64) as one atomic read-modify-write (sequentially consistent); returns a[i] before."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(array.data, [args[1]]), value, "seq_cst")
    return types.int64(a, i, v), codegen


@intrinsic
def _yield_cpu(typingctx):
    """POSIX's sched_yield(): let the OS run another thread on this core (a waiter on a shared core)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


SPIN_ROUNDS = 1 << 14  # ~100-300 us of PAUSEs, then the waiter lets the OS run others (a core shared, a slice late)
_ARRIVED, _WAITING, _ABORTED = 0, 1, 2


@njit(cache=True, nogil=True)
def _sync_wait(flags, k, gen, rounds):
    """Spin until every one of the k slices' flags (flags[8 * q], a cache line each) reached `gen`; flags[8 * k]
    != 0: aborted. Returns _ARRIVED, _WAITING (rounds spent) or _ABORTED."""
    for q in range(k):
        while _load_acquire(flags, 8 * q) < gen:
            if _load_acquire(flags, 8 * k) != 0:
                return _ABORTED
            rounds -= 1
            if rounds <= 0:
                return _WAITING
            _spin_pause()
    return _ARRIVED


@njit(cache=True, nogil=True)
def _sync_put(parts, flags, r, gen, which, part, rounds):
    """Slice r's part into parts[which, r], its flag to `gen`, then _sync_wait."""
    for j in range(part.size):
        parts[which, r, j] = part[j]
    _store_release(flags, 8 * r, gen)
    return _sync_wait(flags, parts.shape[1], gen, rounds)


@njit(cache=True, nogil=True)
def _sync_sum(parts, which, n, out):
    """out[:n] = the sum of parts[which, :, :n] over the slices, in their order (the same in every slice)."""
    for j in range(n):
        s = 0.0
        for q in range(parts.shape[1]):
            s += parts[which, q, j]
        out[j] = s


def sync_total(parts, flags, r, gen, which, part):
    """The sum over the k slices of their `part`s (float64, each slice's in parts[which, r]), once all have put
    theirs: slice r's flag (flags[8 * r]) set to `gen`, the others' spun on. None if aborted (flags[8 * k])."""
    import time
    part = np.ascontiguousarray(part, np.float64)
    state = _sync_put(parts, flags, r, gen, which, part, SPIN_ROUNDS)
    while state == _WAITING:
        time.sleep(0)  # let the OS run a slice that shares this core, then spin again
        state = _sync_wait(flags, parts.shape[1], gen, SPIN_ROUNDS)
    if state == _ABORTED:
        return None
    out = np.empty(part.size)
    _sync_sum(parts, which, part.size, out)
    return out
