"""layers/jit.py: a parallel kernel's wrappers are finalized link-only (optimized and emitted once, in the kernel's
own library), and the kernel computes what it computes without the patch."""
import os
import subprocess
import sys

import numba
import numpy as np
from numba import njit, prange

from layers import jit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _libraries(library, seen=None):
    seen = [] if seen is None else seen
    for lib in library._linking_libraries:
        if lib not in seen:
            seen.append(lib)
            _libraries(lib, seen)
    return seen


def test_the_wrappers_of_a_parfor_are_link_only_and_the_kernel_is_right():
    assert jit.installed == numba.__version__.startswith(jit.TESTED)
    if not jit.installed:
        return

    @njit(parallel=True)
    def rows_sum(x, out):
        for i in prange(x.shape[0]):
            s = 0.0
            for j in range(x.shape[1]):
                s += x[i, j] * 2
            out[i] = s

    x = np.arange(60, dtype=np.float64).reshape(6, 10)
    out = np.zeros(6)
    rows_sum(x, out)
    assert np.array_equal(out, 2 * x.sum(axis=1))
    library = rows_sum.overloads[rows_sum.signatures[0]].library
    linked = _libraries(library)
    link_only = [lib for lib in linked if lib._link_only]
    assert not library._link_only and len(link_only) == 2, [lib.name for lib in linked]
    assert {lib.name for lib in link_only} >= {"parallelgufuncwrapper"}
    assert all(lib._finalized for lib in linked)
    assert library.get_pointer_to_function(library.get_defined_functions().__next__().name)


def test_yaffe_jit_numba_leaves_numba_as_it_is():
    code = ("import numba.core.codegen as c; original = c.CPUCodeLibrary._optimize_final_module; import layers; "
            "from layers import jit; print(jit.installed, c.CPUCodeLibrary._optimize_final_module is original)")
    env = dict(os.environ, YAFFE_JIT="numba", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "True"], out.stderr


def test_a_kernels_cache_goes_stale_with_the_kernel_modules_it_imports(tmp_path):
    """Numba keeps a cached kernel while its own file is unchanged; a kernel that calls or inlines another
    module's (layers/kernels.py's exp32 in layers/neuron.py) must recompile when that module changes: the cache
    stamp of yaffe's files carries a digest of the kernel modules they import, followed through their imports;
    a module without kernels does not count."""
    import os
    from layers import jit
    import layers.neuron as neuron
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import g\nfrom .plain import h\nfrom numba import njit\n")
    (pkg / "b.py").write_text("from .c import k\nfrom numba import njit\n")
    (pkg / "c.py").write_text("from numba import njit\n")
    (pkg / "plain.py").write_text("X = 1\n")

    def digest():
        for f in (jit._imports, jit._has_kernels, jit.dependency_digest):
            f.cache_clear()
        return jit.dependency_digest(str(pkg / "a.py"))
    first = digest()
    (pkg / "plain.py").write_text("X = 2\n")
    assert digest() == first
    (pkg / "c.py").write_text("from numba import njit\n# changed\n")
    assert digest() != first
    stamp = neuron.sigmoid_fwd._cache._cache_file._source_stamp
    assert stamp[1] == jit.dependency_digest(os.path.abspath(neuron.__file__))
    assert jit._imports(os.path.abspath(neuron.__file__)).count(os.path.join(jit.ROOT, "layers", "kernels.py")) == 1


def test_the_kernels_of_the_threaded_training_paths_go_into_numbas_cache():
    """A kernel Numba cannot cache (numba.get_num_threads() inside it, a ctypes pointer as a global) compiles again
    in every process, seconds of each start: training steps of an LSTM net run as chunks and an MLP whose bottom
    diffs and update run on the threads' own rows, with Numba's "Cannot cache" warning made an error."""
    code = """
import warnings
warnings.filterwarnings("error", message=".*Cannot cache")
from benchmarks import nets
from benchmarks.train_throughput import MLP, yaffe_step_fn
for text in (nets.lstm(32), MLP):
    step, net = yaffe_step_fn(text)
    for _ in range(2):
        step()
    step.close()
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=ROOT, NUMBA_NUM_THREADS="2")  # (the warning comes cache or not: no save)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.split()[-1:] == ["ok"], out.stderr[-3000:]
