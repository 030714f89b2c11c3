"""A cold start compiles Numba's kernels in two processes instead of one (`run.py train`).

Numba compiles each kernel the first time it runs, one after another on one core, into its cache on disk
(`cache=True`), so on a new machine (or after an upgrade) the first iteration waits for all of them. Right after
the train net is built, `start` launches a helper process that builds the same net at a batch of 2 (its data
layers replaced by Input tops of the same shapes) and runs the solver's update, then the layers' backward from the
last to the first (each layer's forward first only where its backward needs it), while the main process runs its
forward from the first layer: each kernel is compiled by whichever process reaches it first, and the other loads
it from the cache (Numba reads the cache's index again whenever it needs a kernel it does not hold). A marker in
the cache folder records the nets whose kernels were compiled so, and warm starts launch nothing.
`YAFFE_PRECOMPILE=0` turns it off.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _marker(net) -> str:
    """The marker file of this net's layer types (with the Numba and Python versions and the vector width)."""
    import numba
    key = json.dumps([numba.__version__, sys.version_info[:2], os.environ.get("YAFFE_VECTOR_BYTES", ""),
                      str(net.dtype), sorted({d.type for d in net.defs})])
    folder = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(ROOT, "layers", "__pycache__")
    return os.path.join(folder, f"yaffe-compiled-{hashlib.sha1(key.encode()).hexdigest()[:16]}")


def helper_doc(net) -> dict:
    """The net's TRAIN layers as run, each data layer an Input of its tops' shapes at a batch of at most 2."""
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
                    shape[a] = min(shape[a], 2)
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
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
                   NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        proc = subprocess.Popen([sys.executable, "-c", "from netspec.warmup import main; main()"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                cwd=ROOT)
        proc.stdin.write(job.encode())
        proc.stdin.close()
        return proc
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def finish(proc, net):
    """After the first iteration: the helper is no longer needed (stopped if it still runs); the marker says
    this net's kernels are in the cache."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=5)
        marker = _marker(net)
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w") as f:
            f.write("kernels compiled for a net of these layer types\n")
    except (OSError, subprocess.TimeoutExpired):
        pass


def main():
    """The helper: the update, then each layer's backward from the last (with its forward first where the backward
    needs it); the values do not matter."""
    import numpy as np
    job = json.loads(sys.stdin.read())
    from netspec.net import Net
    net = Net(job["doc"], "TRAIN", "<precompile>", seed=1, dtype=np.dtype(job["dtype"]))
    try:
        from solvers.params import load_solver
        from solvers.rules import SOLVERS
        cfg = load_solver(job["solver"], job["overrides"])[1]
        SOLVERS[cfg.type](net.params, cfg).apply_update(0.0, 0)
    except Exception:  # noqa: BLE001 - a helper: whatever fails is compiled by the main process
        pass
    scale_of = {j: i for i, (j, _) in net._fused.items()}
    for i in reversed(range(len(net.layers))):  # backward first: the main process is busy with its forward
        if i in scale_of or not net.need_backward[i]:
            continue
        if i in net._fused:
            j, copy = net._fused[i]
            layer, scale = net.layers[i], net.layers[j]
            runs = [lambda: layer.backward_scaled(net.top_vecs[i], net.propagate[i], net.bottom_vecs[i], scale, copy),
                    lambda: layer.forward_scaled(net.bottom_vecs[i], net.top_vecs[i], scale, copy)]
        else:
            runs = [lambda: net.backward_layer(i), lambda: net.forward_layer(i)]
        try:
            runs[0]()  # most backwards run on the zeros as they are
        except Exception:  # noqa: BLE001 - it needs its forward's state: forward, then backward
            try:
                runs[1]()
                runs[0]()
            except Exception:  # noqa: BLE001 - left to the main process
                pass
