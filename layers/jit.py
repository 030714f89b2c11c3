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
"""
from __future__ import annotations

import os
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


install()
