"""The compile helper of a cold start (netspec/warmup.py): the net it builds, the kernels it lists, the order it
compiles them in, the claims that keep two processes from compiling one kernel, its marker."""
import io
import json
import os
import subprocess
import sys

import numpy as np
from numba import njit

from netspec import warmup
from netspec.loader import load
from netspec.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "models", "lenet_digits")


def test_the_helper_builds_the_train_net_at_the_batch_of_one_slice(monkeypatch):
    import numba
    path = os.path.join(LENET, "net.yaml")
    net = Net(load(path), "TRAIN", path, seed=1)
    doc = warmup.helper_doc(net)
    helper = Net(doc, "TRAIN", "<precompile>", seed=1)
    assert [d.type for d in helper.defs][1:] == [d.type for d in net.defs][1:]
    assert net.defs[0].type == "Data" and helper.defs[0].type == "Input"  # the data layer became an Input
    threads = numba.get_num_threads()
    for t, shape in net.shapes.items():  # (the loss is a scalar)
        assert helper.shapes[t] == ((min(-(-shape[0] // threads), 32),) + tuple(shape[1:]) if shape else ())


def test_the_dry_run_lists_the_kernels_in_the_main_process_order(tmp_path):
    """In a fresh process (this one holds the kernels already): the list of a lenet_digits iteration, and the Numba
    cache after it (what was compiled)."""
    code = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
from netspec import warmup
from netspec.loader import load
from netspec.net import Net
net = Net(load({os.path.join(LENET, 'net.yaml')!r}), "TRAIN", {os.path.join(LENET, 'net.yaml')!r}, seed=1)
job = {{"doc": warmup.helper_doc(net), "dtype": "float32", "solver": {os.path.join(LENET, 'solver.yaml')!r},
        "overrides": {{}}}}
print(json.dumps([d.py_func.__name__ for d, sig in warmup._needs(job)]))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = json.loads(out.stdout.strip().splitlines()[-1])
    builds = {n.lstrip("_").removesuffix("_serial") for n in names}  # (cpu.spread's two builds of a kernel)
    for first, then in [("max_pool_2x2s2", "max_pool_backward"), ("_softmax_rows_kernel", "nll_backward"),
                        ("nll_backward", "max_pool_backward"), ("max_pool_backward", "_sgd_apply_serial")]:
        assert names.index(first) < names.index(then), names
    # both forwards with the images in the lanes (8x8 and 4x4 planes, a batch of 64)
    assert {"relu_backward_in_place", "lanes_conv_data", "lanes_to_top", "sum_squares"} <= builds
    assert {"direct_conv_dw", "direct_conv_dw1"} & set(names)  # (which: the vector width's weight-gradient tile)
    # conv2's data gradient (4x4 planes) runs on the forward's direct kernels: no im2col kernels to compile
    assert not {"col2im", "channels_first_to_last", "im2col"} & set(names), names
    cached = {f.split("-")[0] for _, _, files in os.walk(tmp_path / "cache") for f in files if f.endswith(".nbi")}
    # compiled: the denormal setters (at the net's construction) and the loss layer's kernels, which ran for real
    # (its label check reads a kernel's result); nothing of the convolutions, poolings, ReLUs or the update
    assert cached and all(k.startswith(("cpu._set_", "softmax.")) for k in cached), cached


def test_the_helper_compiles_from_the_end_and_comes_back_to_what_was_busy(monkeypatch, tmp_path):
    calls = []

    class Kernel:
        def __init__(self, name, busy_times=0):
            self.name, self.busy = name, busy_times

        def compile(self, sig):
            calls.append(self.name)
            if self.busy:
                self.busy -= 1
                warmup._claims["busy"] = True
                raise RuntimeError("a typing error around Busy")
            if self.name == "broken":
                raise RuntimeError("not a claim: left to the main process")

    kernels = [Kernel("first"), Kernel("second", busy_times=2), Kernel("broken"), Kernel("last")]
    monkeypatch.setattr(warmup, "_needs", lambda job: [(k, ()) for k in kernels])
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({})))
    monkeypatch.setenv("YAFFE_CLAIMS", str(tmp_path))
    warmup.main()
    assert calls == ["last", "broken", "second", "first", "second", "second"]
    assert warmup._claims is None  # the helper's claims are removed at its end


def _kernel():
    @njit
    def twice(x):
        return 2 * x
    return twice


def test_a_claim_of_the_other_process_makes_the_helper_skip_and_the_main_process_wait(tmp_path):
    from numba import types
    k = _kernel()
    sig = (types.float64,)

    class Finished:  # a helper that has stopped: the main process does not wait for its claims
        def poll(self):
            return 0

    try:
        warmup._install_claims(str(tmp_path), False)
        key, path = warmup._claim_path(k, sig)
        open(path, "w").close()  # the other process compiles it now
        try:
            k.compile(sig)
            raise AssertionError("Busy expected")
        except warmup.Busy:
            assert warmup._claims["busy"]
        assert not k.overloads
        warmup._install_claims(str(tmp_path), True, Finished())
        k.compile(sig)  # waits while the claim is held and the helper runs: here it has stopped
        assert k(1.5) == 3.0 and os.path.exists(path)  # (not its claim: left to its owner)
        os.unlink(path)
        k2 = _kernel()
        k2.compile(sig)  # unclaimed: claimed, compiled, released
        assert k2.overloads and os.listdir(tmp_path) == []
    finally:
        warmup._remove_claims()
    from numba.core.registry import CPUDispatcher
    assert CPUDispatcher.compile is not warmup._claimed_compile


def test_a_marker_turns_the_helper_off_and_zero_does_too(monkeypatch, tmp_path):
    path = os.path.join(LENET, "net.yaml")
    net = Net(load(path), "TRAIN", path, seed=1)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("YAFFE_PRECOMPILE", "0")
    assert warmup.start(net, path) is None
    monkeypatch.setenv("YAFFE_PRECOMPILE", "1")
    proc = warmup.start(net, os.path.join(LENET, "solver.yaml"))
    assert proc is not None and warmup._claims["wait"]
    warmup.finish(proc, net)  # stops it, writes the marker, removes the claims
    assert warmup._claims is None
    assert os.path.exists(warmup._marker(net)) and os.path.dirname(warmup._marker(net)) == str(tmp_path)
    assert warmup.start(net, path) is None  # warm: nothing launched
    assert np.dtype(net.dtype) == np.float32
