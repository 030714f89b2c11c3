"""A cold start compiles Numba's kernels in two processes instead of one (`run.py train`).

Numba compiles each kernel the first time it runs, one after another on one core, into its cache on disk
(`cache=True`), so on a new machine (or after an upgrade) the first iteration waits for all of them. Right after
the train net is built, `start` launches a helper process that builds the same net at the batch of one slice (its
data layers replaced by Input tops of the same shapes) and first runs a training iteration dry: every call of a
kernel not yet compiled is recorded (kernel and argument types) and skipped, which lists the kernels the main
process will need, in its order, in a moment. The helper then compiles them from the end of that list (the update,
the first layers' backward, ...) while the main process compiles from its start (the first layers' forward); Numba
reads its cache's index again whenever it needs a kernel it does not hold, so what one process compiled the other
loads. A marker in the cache folder records the nets whose kernels were compiled so, and warm starts launch
nothing. `YAFFE_PRECOMPILE=0` turns it off.

The two processes never compile the same kernel at once: each compile first claims the kernel's signature (a file
made with O_EXCL in a folder of this run's). The main process, finding a claim of the helper's, waits for it and
then loads the kernel from the cache; the helper, finding one of the main process's, leaves that kernel for a later
round and goes on with the next (so it never waits, and the two cannot wait for each other). lenet_digits from an
empty cache to its first iteration, medians of 3 alternating runs on the 2-core machine: 17.0 s without the
helper, 10.8 s with it (benchmarks/README.md, "Cold start").
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _marker(net) -> str:
    """The marker file of this net's layer types (with the Numba and Python versions and the vector width)."""
    import numba
    key = json.dumps([numba.__version__, sys.version_info[:2], os.environ.get("YAFFE_VECTOR_BYTES", ""),
                      str(net.dtype), sorted({d.type for d in net.defs})])
    folder = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(ROOT, "layers", "__pycache__")
    return os.path.join(folder, f"yaffe-compiled-{hashlib.sha1(key.encode()).hexdigest()[:16]}")


def helper_doc(net) -> dict:
    """The net's TRAIN layers as run, each data layer an Input of its tops' shapes at the batch of one slice (the
    batch over the threads, at most 32: the kernels' paths can depend on the sizes)."""
    import numba
    threads = numba.get_num_threads()
    _, axes = net.source_batch_axes()
    layers = []
    for d, layer in zip(net.defs, net.layers):
        if d.node is None:  # a Split the compiler inserted: it inserts it again
            continue
        if layer.is_source:
            shapes = []
            for t in d.tops:
                shape = list(net.shapes[t])
                a = axes.get(t, 0)
                if len(shape) > a:
                    shape[a] = min(-(-shape[a] // threads), 32)  # (its memory bounded for large nets)
                shapes.append({"dim": shape})
            layers.append({"name": d.name, "type": "Input", "top": list(d.tops), "input_param": {"shape": shapes}})
        else:
            node = json.loads(json.dumps(d.node, default=str))
            node.pop("include", None)
            node.pop("exclude", None)
            layers.append(node)
    doc = {k: v for k, v in json.loads(json.dumps(net.doc, default=str)).items() if k not in ("layer", "layers")}
    doc.pop("input", None), doc.pop("input_shape", None), doc.pop("input_dim", None)
    doc["layer"] = layers
    return doc


class Busy(Exception):
    """The other process is compiling this kernel now (the helper's claims only)."""


_claims = None  # {"folder", "wait", "proc", "compile"} while the two processes share the compiling


def _claim_path(dispatcher, sig) -> tuple:
    """(the kernel's name and argument types, its claim file)."""
    key = f"{dispatcher.py_func.__module__}.{dispatcher.py_func.__qualname__}{sig}"
    return key, os.path.join(_claims["folder"], hashlib.sha1(key.encode()).hexdigest()[:24])


def _claimed_compile(dispatcher, sig):
    """Dispatcher.compile with a claim (see the module docstring): compile, or wait for the other process's compile
    (the main process), or raise Busy (the helper). Claimed under Numba's compiler lock, so that a thread of the
    main process claims only what it compiles now (not while another of its threads compiles)."""
    from numba.core import sigutils
    from numba.core.compiler_lock import global_compiler_lock
    claims = _claims
    original = claims["compile"]
    if tuple(sigutils.normalize_signature(sig)[0]) in dispatcher.overloads:
        return original(dispatcher, sig)
    key, path = _claim_path(dispatcher, sig)
    with global_compiler_lock:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not claims["wait"]:
                claims["busy"] = True  # (Numba may wrap the exception in a typing error of the kernel that calls it)
                raise Busy(key) from None
            proc, give_up = claims["proc"], time.monotonic() + 120
            while os.path.exists(path) and proc.poll() is None and time.monotonic() < give_up:
                time.sleep(0.005)
            return original(dispatcher, sig)  # from the cache where the helper finished it
        except OSError:  # the folder is gone (the run ended): compile unclaimed
            return original(dispatcher, sig)
        os.close(fd)
        try:
            return original(dispatcher, sig)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass


def _install_claims(folder: str, wait: bool, proc=None):
    global _claims
    from numba.core.registry import CPUDispatcher
    if _claims is None:
        _claims = {"compile": CPUDispatcher.compile}
        CPUDispatcher.compile = _claimed_compile
    _claims.update(folder=folder, wait=wait, proc=proc)


def _remove_claims():
    global _claims
    if _claims is not None:
        from numba.core.registry import CPUDispatcher
        CPUDispatcher.compile = _claims["compile"]
        if _claims["wait"]:
            shutil.rmtree(_claims["folder"], ignore_errors=True)
        _claims = None


def start(net, solver_path: str, overrides: dict | None = None):
    """Launch the helper for this train net (None where it is off, already done, or cannot be made)."""
    if os.environ.get("YAFFE_PRECOMPILE", "1") == "0" or os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return None
    try:
        marker = _marker(net)
        if os.path.exists(marker):
            return None
        job = json.dumps({"doc": helper_doc(net), "dtype": str(net.dtype), "solver": os.path.abspath(solver_path),
                          "overrides": overrides or {}}, default=str)
        folder = tempfile.mkdtemp(prefix="yaffe-claims-")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", YAFFE_CLAIMS=folder)
        proc = subprocess.Popen([sys.executable, "-c", "from netspec.warmup import main; main()"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                cwd=ROOT)
        proc.stdin.write(job.encode())
        proc.stdin.close()
        _install_claims(folder, True, proc)
        return proc
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def finish(proc, net):
    """After the first iteration: the helper is no longer needed (stopped if it still runs); the marker says
    this net's kernels are in the cache."""
    if proc is None:
        return
    stop(proc)
    try:
        marker = _marker(net)
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            f.write("kernels compiled for a net of these layer types\n")
    except OSError:
        pass


def stop(proc):
    """The helper stopped (where it still runs) and the claims removed."""
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    _remove_claims()


def main():
    """The helper: the kernels of a training iteration (_needs), compiled from the last the main process needs."""
    job = json.loads(sys.stdin.read())
    _install_claims(os.environ.get("YAFFE_CLAIMS") or tempfile.mkdtemp(prefix="yaffe-claims-"), False)
    try:
        _run(job)
    finally:
        if not os.environ.get("YAFFE_CLAIMS"):
            shutil.rmtree(_claims["folder"], ignore_errors=True)
        _remove_claims()


def _run(job):
    order = _needs(job)
    pending = list(reversed(order))  # the main process's last need first
    while pending:
        left = []
        for dispatcher, sig in pending:
            _claims["busy"] = False
            try:
                dispatcher.compile(sig)
            except Exception:  # noqa: BLE001 - Busy (maybe wrapped by Numba), or left to the main process
                if _claims["busy"]:
                    left.append((dispatcher, sig))  # the main process compiles it, or one it calls, now: later
        if len(left) == len(pending):
            time.sleep(0.02)
        pending = left


@functools.lru_cache(maxsize=None)  # (a kernel called at every step of a loop is read once)
def _stand_in(dispatcher):
    """A function returning what may stand for the kernel's result in the dry run: zeros, as many as its source
    returns (a tuple of n: n zeros), else None."""
    import ast
    import inspect
    import textwrap
    value = 0
    try:
        returns = [n.value for n in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(dispatcher.py_func))))
                   if isinstance(n, ast.Return) and n.value is not None]
        value = ((0,) * len(returns[0].elts) if isinstance(returns[0], ast.Tuple) else 0) if returns else None
    except (OSError, TypeError, SyntaxError):
        pass
    return lambda *args, **kws: value


def _needs(job) -> list:
    """The kernels (dispatcher, argument types) that a training iteration of the job's net needs, in the order the
    main process needs them: the forward, the backward and the update run once with every kernel call that would
    compile recorded and skipped (returning zeros: _stand_in), which takes a moment; the values do not matter. A
    layer that fails so (a skipped kernel's result was needed, e.g. a loss's label check) runs for real: its
    kernels are compiled here, first."""
    import numpy as np
    from numba.core import types
    from numba.core.dispatcher import OmittedArg
    from numba.core.registry import CPUDispatcher
    from netspec.net import Net
    order, seen = [], set()

    def record(dispatcher, *args, **kws):
        sig = tuple(types.Omitted(a.value) if isinstance(a, OmittedArg) else dispatcher.typeof_pyval(a) for a in args)
        if (dispatcher, sig) not in seen:
            seen.add((dispatcher, sig))
            order.append((dispatcher, sig))
        return _stand_in(dispatcher)

    compile_for_args = CPUDispatcher._compile_for_args

    def attempt(call):
        try:
            return call()
        except Exception:  # noqa: BLE001 - for real, then
            pass
        CPUDispatcher._compile_for_args = compile_for_args
        try:
            call()
        except Exception:  # noqa: BLE001 - what fails here is compiled by the main process
            pass
        finally:
            CPUDispatcher._compile_for_args = record

    net = Net(job["doc"], "TRAIN", "<precompile>", seed=1, dtype=np.dtype(job["dtype"]))
    CPUDispatcher._compile_for_args = record
    try:
        try:
            net.forward()
        except Exception:  # noqa: BLE001 - each layer on its own
            for i in range(len(net.layers)):
                attempt(lambda: net.forward_layer(i))
        try:
            net.backward()
        except Exception:  # noqa: BLE001
            for i in reversed(range(len(net.layers))):
                if net.need_backward[i]:
                    attempt(lambda: net.backward_layer(i))
        from netspec.spec import load_solver
        from solvers.rules import SOLVERS
        from solvers.watch import sum_squares
        cfg = load_solver(job["solver"], job["overrides"])[1]
        attempt(lambda: SOLVERS[cfg.type](net.params, cfg).apply_update(0.0, 0))
        attempt(lambda: sum_squares(net.params[0].blob.diff.reshape(-1)))  # the trainer's finite check
    finally:
        CPUDispatcher._compile_for_args = compile_for_args
    return order
