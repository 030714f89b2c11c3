"""Depthwise convolution: yaffe's own kernels (layers/depthwise.py) against its grouped im2col path (one product per
group) and PyTorch's `groups=C` convolution, on the depthwise 3x3 layers of a MobileNet-v1 of width 0.5 on 3x64x64
inputs (batch 64): forward and backward (weights, bias, data), float32, on the same threads.

    python benchmarks/depthwise.py [--repeats 5] [--iterations 10]

Prints a row per layer with the median ms of each path and the ratios (pip install torch==2.13.0 for PyTorch's).
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

# MobileNet-v1 x0.5 on 64x64: (channels, plane, stride) of each depthwise layer (the first conv halves 64 to 32)
LAYERS = [(16, 32, 1), (32, 32, 2), (64, 16, 1), (64, 16, 2), (128, 8, 1), (128, 8, 2), (256, 4, 1), (256, 4, 2),
          (512, 2, 1)]
BATCH = 64


def yaffe_ms(c, plane, stride, direct, iterations, repeats):
    import layers.conv as conv
    from layers.cpu import flush_denormals
    from netspec.loader import loads
    from netspec.net import Net
    flush_denormals()
    conv.DIRECT = direct
    net = Net(loads(f"""
layer:
  - {{name: d, type: Input, top: data, input_param: {{shape: {{dim: [{BATCH}, {c}, {plane}, {plane}]}}}}}}
  - {{name: dw, type: Convolution, bottom: data, top: dw, convolution_param: {{num_output: {c}, group: {c},
      kernel_size: 3, pad: 1, stride: {stride}, weight_filler: {{type: msra}}}}}}
"""), "TRAIN", seed=0)
    layer, bottom, top = net.layers[1], net.bottom_vecs[1], net.top_vecs[1]
    bottom[0].data[...] = np.random.default_rng(0).normal(size=bottom[0].data.shape)
    top[0].diff[...] = np.random.default_rng(1).normal(size=top[0].diff.shape)
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(iterations):
            layer.forward(bottom, top)
            layer.backward(top, [True], bottom)
        if r:  # the first repeat compiles and warms up
            times.append((time.perf_counter() - t0) / iterations * 1e3)
    conv.DIRECT = True
    return statistics.median(times)


def torch_ms(c, plane, stride, iterations, repeats, threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    layer = torch.nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c)
    x = torch.randn(BATCH, c, plane, plane, requires_grad=True)
    out = layer(x)
    g = torch.randn(out.shape)
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(iterations):
            x.grad = None
            layer(x).backward(g)
        if r:
            times.append((time.perf_counter() - t0) / iterations * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()
    import numba
    threads = numba.get_num_threads()
    print(f"Depthwise 3x3, batch {BATCH}, {threads} threads, ms per forward+backward (medians of {args.repeats})\n")
    print("| channels x plane, stride | yaffe depthwise | yaffe grouped im2col | PyTorch | grouped / depthwise | "
          "PyTorch / depthwise |")
    print("|---|---|---|---|---|---|")
    sums = [0.0, 0.0, 0.0]
    for c, plane, stride in LAYERS:
        d = yaffe_ms(c, plane, stride, True, args.iterations, args.repeats)
        g = yaffe_ms(c, plane, stride, False, args.iterations, args.repeats)
        t = torch_ms(c, plane, stride, args.iterations, args.repeats, threads)
        sums[0] += d
        sums[1] += g
        sums[2] += t or 0.0
        print(f"| {c} x {plane}x{plane}, {stride} | {d:.2f} | {g:.2f} | {t:.2f} | {g / d:.1f} | {t / d:.2f} |"
              if t else f"| {c} x {plane}x{plane}, {stride} | {d:.2f} | {g:.2f} | - | {g / d:.1f} | - |")
    print(f"| all {len(LAYERS)} layers | {sums[0]:.2f} | {sums[1]:.2f} | {sums[2]:.2f} | {sums[1] / sums[0]:.1f} | "
          f"{sums[2] / sums[0]:.2f} |")


if __name__ == "__main__":
    main()
