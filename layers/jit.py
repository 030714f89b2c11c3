"""Less compiling for the kernels with `parallel=True` (Numba's parfors): each wrapper optimized once, not three times.

Numba lowers a `prange` loop into three code libraries besides the kernel's own: the loop's body, a gufunc wrapper
around it and a parallel wrapper around that, each linking the one before. Every library, when finalized, runs
LLVM's optimization over its whole module, the linked code included, and adds it to the JIT engine, which
emits machine code for it: the body is optimized and emitted four times, and a kernel with a vectorized body
(im2col, the poolings) compiled 2.5-3 s instead of 0.9 s without `parallel`. The two wrappers of a parfor are
never called but from the kernel that links them, so here they are finalized as link-only: their modules are
linked on, unoptimized and not emitted, and the kernel's library optimizes and emits everything once. Numba
already works this way for every library it links but these. The machine code is the same: the kernel's module
is optimized as a whole as before (run time of im2col unchanged, within noise; the tests compare every kernel's
results). Applied to the Numba versions it was tested on (`TESTED`); `YAFFE_JIT=numba` leaves Numba as it is.

Also: Numba's on-disk cache keeps a kernel while its own source file is unchanged, but a kernel compiles in the
kernels it calls or inlines from other modules (layers/simd.py's tiles, layers/kernels.py's exp32, layers/cpu.py's
sgemm call), so an edit or upgrade of those alone would leave stale machine code in use. `install_cache_stamps`
adds a digest of those modules' source (every yaffe module the file imports, followed through their imports) to
the freshness stamp of the cache of each of yaffe's own files.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import threading

TESTED = ("0.68",)
_state = threading.local()
installed = False


def install():
    """Patch Numba (once) where its version is one of TESTED and the hooks are where they were."""
    global installed
    if installed or os.environ.get("YAFFE_JIT", "").lower() == "numba":
        return
    try:
        import numba
        from numba.core import codegen
        from numba.np.ufunc import parallel
        if not numba.__version__.startswith(TESTED):
            return
        library_class = codegen.CPUCodeLibrary
        build, init = parallel.build_gufunc_wrapper, library_class.__init__
        optimize, emit = library_class._optimize_final_module, library_class._finalize_final_module
        finalize_globals = library_class._finalize_dynamic_globals
    except (ImportError, AttributeError):
        return

    def build_gufunc_wrapper(py_func, cres, sin, sout, cache, is_parfors):
        """A parfor's wrappers: the libraries made meanwhile are link-only."""
        if not is_parfors:
            return build(py_func, cres, sin, sout, cache, is_parfors)
        _state.parfor = True
        try:
            return build(py_func, cres, sin, sout, cache, is_parfors)
        finally:
            _state.parfor = False

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._link_only = getattr(_state, "parfor", False)

    def _optimize_final_module(self):
        if not getattr(self, "_link_only", False):
            optimize(self)

    def _finalize_final_module(self):
        if getattr(self, "_link_only", False):
            finalize_globals(self)
            self._finalized = True
        else:
            emit(self)

    parallel.build_gufunc_wrapper = build_gufunc_wrapper
    library_class.__init__ = __init__
    library_class._optimize_final_module = _optimize_final_module
    library_class._finalize_final_module = _finalize_final_module
    installed = True


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder of layers/, solvers/, netspec/
_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.+|layers\.?|solvers\.?|netspec\.?)([\w.]*)[ \t]+import[ \t]+\(?([\w \t,]*)",
                     re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _imports(path: str) -> tuple:
    """The source files of yaffe's modules that `path` imports with `from ... import` (relative, or from layers,
    solvers, netspec), without following them."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ()
    here, found = os.path.dirname(path), []
    for dots, module, names in _IMPORT.findall(text):
        if dots.startswith("."):
            base = here
            for _ in range(len(dots) - 1):
                base = os.path.dirname(base)
        else:
            base = os.path.join(ROOT, dots.rstrip("."))
        parts = [p for p in module.split(".") if p]
        target = os.path.join(base, *parts)
        candidates = [target + ".py"] if parts else [os.path.join(target, n.strip() + ".py") for n in names.split(",")]
        found += [c for c in candidates if os.path.isfile(c)]
    return tuple(sorted(set(found) - {path}))


@functools.lru_cache(maxsize=None)
def _has_kernels(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return any(word in text for word in ("njit", "intrinsic", "overload"))


@functools.lru_cache(maxsize=None)
def dependency_digest(path: str) -> str:
    """A digest of the source of every yaffe module with kernels that `path` imports, directly or through such
    modules (a module without kernels, layers/base.py say, cannot change a compiled kernel)."""
    seen, todo = set(), [os.path.abspath(path)]
    while todo:
        for dep in _imports(todo.pop()):
            if dep not in seen and _has_kernels(dep):
                seen.add(dep)
                todo.append(dep)
    seen.discard(os.path.abspath(path))
    h = hashlib.sha1()
    for dep in sorted(seen):
        with open(dep, "rb") as f:
            h.update(dep.encode() + b"\0" + f.read())
    return h.hexdigest()


def install_cache_stamps():
    """Numba's cache stamp of each of yaffe's source files: its own, plus dependency_digest (once)."""
    try:
        from numba.core import caching
        mixin = caching._SourceFileBackedLocatorMixin
        own = mixin.get_source_stamp
    except (ImportError, AttributeError):
        return
    if getattr(own, "yaffe", False):
        return

    def get_source_stamp(self):
        stamp = own(self)
        path = os.path.abspath(getattr(self, "_py_file", "") or "")
        if not path.startswith(ROOT + os.sep):
            return stamp
        return stamp, dependency_digest(path)
    get_source_stamp.yaffe = True
    mixin.get_source_stamp = get_source_stamp


install()
install_cache_stamps()
