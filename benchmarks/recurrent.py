"""LSTM training throughput: yaffe's LSTM layer against PyTorch's nn.LSTM, the same shapes (T=28 steps, N=64
sequences, 28 inputs, 128 hidden units: models/lstm_mnist's), forward and backward, float32, on the same threads.

    python benchmarks/recurrent.py [--repeats 7] [--iterations 30]

Prints the median ms per forward+backward of each and the ratio (pip install torch==2.13.0 for its row).
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


def yaffe_lstm(t, n, i, h, iterations, repeats):
    from layers.base import Blob
    from layers.cpu import flush_denormals, use_own_threads
    from tests.gradcheck import make_layer
    flush_denormals()  # as a Net does for the thread that runs it (layers/cpu.py)
    use_own_threads()  # as a Net does: products on Numba's threads, OpenBLAS on its caller's
    filler = {"type": "uniform", "min": -0.08, "max": 0.08}  # models/lstm_mnist's
    layer, tops = make_layer("LSTM", {"recurrent_param": {"num_output": h, "weight_filler": filler}},
                             [(t, n, i), (t, n)], dtype=np.float32)
    rng = np.random.default_rng(0)
    x, cont = Blob("x", (t, n, i)), Blob("cont", (t, n))
    x.data[...] = rng.normal(size=x.shape)
    cont.data[...] = 1
    cont.data[0] = 0
    tops[0].diff[...] = rng.normal(size=tops[0].shape)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iterations):
            layer.forward([x, cont], tops)
            layer.backward(tops, [True, False], [x, cont])
        times.append((time.perf_counter() - t0) / iterations)
    return statistics.median(times)


def torch_lstm(t, n, i, h, iterations, repeats):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(i, h)
    x = torch.randn(t, n, i, requires_grad=True)
    g = torch.randn(t, n, h)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iterations):
            out, _ = lstm(x)
            out.backward(g)
        times.append((time.perf_counter() - t0) / iterations)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--iterations", type=int, default=30)
    args = p.parse_args()
    shape = (28, 64, 28, 128)
    ours = yaffe_lstm(*shape, args.iterations, args.repeats)
    theirs = torch_lstm(*shape, args.iterations, args.repeats)
    print("| LSTM T=28, N=64, 28 -> 128, forward + backward | ms (median) | sequences/s |")
    print("|---|---|---|")
    print(f"| yaffe LSTM | {ours * 1e3:.2f} | {64 / ours:,.0f} |")
    if theirs:
        print(f"| PyTorch nn.LSTM | {theirs * 1e3:.2f} | {64 / theirs:,.0f} |")
        print(f"\nyaffe / PyTorch: {theirs / ours:.2f}x the throughput")


if __name__ == "__main__":
    main()
