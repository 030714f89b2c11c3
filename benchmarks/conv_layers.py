"""Each convolution of a net on one thread, yaffe against PyTorch: forward, and backward (the weight and bias
gradients, and the data gradient where the layer's bottom is not the data), ms per call, float32.

    python benchmarks/conv_layers.py [--net cifar|resnet20|lenet] [--batch 50] [--repeats 7]
    YAFFE_VECTOR_BYTES=32 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/conv_layers.py  # AVX2

One thread on both sides (a slice of the batch, as `run.py train` runs CIFAR-10 quick and ResNet-20: each slice on
a thread of its own; `torch.set_num_threads(1)`). PyTorch's backward is `aten.convolution_backward` called
directly: through autograd it runs on autograd's own thread, whose OpenMP pool is not held to one thread. Issue
#27 asks every CIFAR-10 quick convolution at least at PyTorch's speed, forward and backward, at 32-byte vectors.
Medians of `--repeats` alternating rounds, each of at least 0.2 s a side (pip install torch==2.13.0).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (name, in channels, out channels, plane, kernel, pad, stride, data gradient)
NETS = {
    "cifar": [("conv1", 3, 32, 32, 5, 2, 1, False), ("conv2", 32, 32, 16, 5, 2, 1, True),
              ("conv3", 32, 64, 8, 5, 2, 1, True)],
    "lenet": [("conv1", 1, 20, 28, 5, 0, 1, False), ("conv2", 20, 50, 12, 5, 0, 1, True)],
    "resnet20": [("16->16 32x32", 16, 16, 32, 3, 1, 1, True), ("16->32 32x32 /2", 16, 32, 32, 3, 1, 2, True),
                 ("32->32 16x16", 32, 32, 16, 3, 1, 1, True), ("32->64 16x16 /2", 32, 64, 16, 3, 1, 2, True),
                 ("64->64 8x8", 64, 64, 8, 3, 1, 1, True)],
}


def timed(fn, seconds=0.2):
    """Seconds per call of fn, over at least `seconds` (after one untimed call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return elapsed / n


def yaffe_calls(c, o, hw, k, pad, stride, data_grad, batch):
    """(forward, backward) callables of a yaffe Convolution on random data."""
    from layers.base import Blob
    from layers.cpu import flush_denormals, use_own_threads
    from layers.gradcheck import make_layer
    flush_denormals()
    use_own_threads()
    shape = (batch, c, hw, hw)
    layer, tops = make_layer("Convolution", {"convolution_param": {"num_output": o, "kernel_size": k, "pad": pad,
                                                                   "stride": stride}}, [shape], dtype=np.float32)
    rng = np.random.default_rng(0)
    x = Blob("x", shape)
    x.data[...] = rng.normal(size=shape)
    tops[0].diff[...] = rng.normal(size=tops[0].shape)
    return (lambda: layer.forward([x], tops)), (lambda: layer.backward(tops, [data_grad], [x]))


def torch_calls(c, o, hw, k, pad, stride, data_grad, batch):
    import torch
    import torch.nn.functional as F
    x, w, b = torch.randn(batch, c, hw, hw), torch.randn(o, c, k, k), torch.randn(o)
    y = F.conv2d(x, w, b, stride, pad)
    g = torch.randn_like(y)
    mask = [data_grad, True, True]
    return ((lambda: F.conv2d(x, w, b, stride, pad)),
            (lambda: torch.ops.aten.convolution_backward(g, x, w, [o], [stride] * 2, [pad] * 2, [1, 1], False,
                                                        [0, 0], 1, mask)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=sorted(NETS), default="cifar")
    p.add_argument("--batch", type=int, default=None, help="images a call (default: the slice that run.py train "
                   "runs on a thread: 50 for cifar, 32 for lenet, 64 for resnet20)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    batch = args.batch or {"cifar": 50, "lenet": 32, "resnet20": 64}[args.net]
    import numba
    numba.set_num_threads(1)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    from layers.simd import VECTOR_BYTES, cpu_model
    print(f"{args.net}, {batch} images a call, one thread, {cpu_model()}, {VECTOR_BYTES}-byte vectors (yaffe)"
          + ("" if torch is None else f", PyTorch {torch.__version__} (ATEN_CPU_CAPABILITY="
                                      f"{os.environ.get('ATEN_CPU_CAPABILITY', 'default')})"))
    print("| layer | yaffe forward ms | PyTorch forward ms | yaffe backward ms | PyTorch backward ms | "
          "speed / PyTorch's, forward | backward |")
    print("|---|---|---|---|---|---|---|")
    for name, *geometry in NETS[args.net]:
        sides = {"yaffe": yaffe_calls(*geometry, batch)}
        if torch is not None:
            sides["torch"] = torch_calls(*geometry, batch)
        times = {side: ([], []) for side in sides}
        for _ in range(args.repeats):
            for side, calls in sides.items():
                for j, fn in enumerate(calls):
                    times[side][j].append(timed(fn))
        f, b = (statistics.median(v) * 1e3 for v in times["yaffe"])
        if torch is None:
            print(f"| {name} | {f:.3f} | - | {b:.3f} | - | - | - |")
            continue
        tf, tb = (statistics.median(v) * 1e3 for v in times["torch"])
        print(f"| {name} | {f:.3f} | {tf:.3f} | {b:.3f} | {tb:.3f} | {tf / f:.2f} | {tb / b:.2f} |")


if __name__ == "__main__":
    main()
