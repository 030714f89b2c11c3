#!/usr/bin/env python
"""Data-parallel scaling over MPI: LeNet throughput with 1 and 2 ranks, and the projected Allreduce cost.

    python benchmarks/mpi_scaling.py [--repeats 3] [--iterations 400] [--ranks 2]

LeNet (the benchmark's, batch 64 per rank, DummyData) trains with 1 thread per rank, so that 1 rank and K
ranks use 1 and K cores: the ratio is the parallel efficiency of the data-parallel run (K x 64 images per
iteration). 1 rank with K threads is shown beside it. Runs alternate; the table gives medians of the
steady-state images/s that training records in its metrics file.

Then, for each example model, the bytes one Allreduce sums per iteration (every learnable blob, float32)
and the time a ring Allreduce needs for them on a 10 Gbit/s network: each rank sends and receives
2 (K - 1) / K times the buffer, so at most twice the parameter bytes however many ranks there are.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.train_throughput import LENET  # noqa: E402

LINK = 10e9 / 8  # bytes per second of a 10 Gbit/s network


def throughput(folder: str, ranks: int, threads: int, iterations: int) -> float:
    """Median steady-state images/s of one training run (all ranks together)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    shutil.rmtree(os.path.join(folder, "snap"), ignore_errors=True)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    cmd = ([mpiexec, "-n", str(ranks)] if ranks > 1 else []) + [
        sys.executable, os.path.join(ROOT, "run.py"), "train", os.path.join(folder, "solver.yaml"),
        "--set", f"max_iter={iterations}"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(os.path.join(folder, "snap", "lenet_metrics.jsonl")) as f:
        rates = [r["images_per_s"] for r in map(json.loads, f) if r.get("images_per_s") and r["iter"] > 0]
    return statistics.median(rates)


def model_bytes() -> list[tuple[str, int]]:
    """(model, learnable bytes) of each example model whose data is present (the net reads its shapes)."""
    from netspec.net import Net
    from netspec.spec import load_net, load_solver
    rows = []
    for solver in sorted(glob.glob(os.path.join(ROOT, "models", "*", "solver.yaml"))):
        name = os.path.basename(os.path.dirname(solver))
        try:
            _, _, net_path = load_solver(solver)
            net = Net(load_net(net_path), "TRAIN", net_path, seed=0)
        except Exception as e:  # noqa: BLE001  (a model whose dataset is not installed here)
            print(f"  ({name}: skipped: {str(e).splitlines()[0][:100]})")
            continue
        rows.append((name, sum(4 * p.blob.count for p in net.params if p.lr_mult)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    k = args.ranks
    with tempfile.TemporaryDirectory() as folder:
        # random images with random labels: the loss stays near ln 10, as in real training (DummyData's
        # constant label drives it to 0 within 30 iterations, and the gradients then sink into float32
        # denormals, which slow every CPU down 10x or more)
        rng = np.random.default_rng(0)
        np.savez(os.path.join(folder, "rows.npz"), data=rng.random((6400, 1, 28, 28), np.float32),
                 label=rng.integers(0, 10, 6400))
        data = ("  - {name: d, type: Data, top: [data, label], data_param: {source: rows.npz, batch_size: 64, "
                "shuffle: true}}")
        lines = [data if "DummyData" in line else line for line in LENET.splitlines()]
        with open(os.path.join(folder, "net.yaml"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(folder, "solver.yaml"), "w") as f:
            f.write("net: net.yaml\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\nmax_iter: 400\n"
                    "display: 50\nrandom_seed: 1\nsnapshot_prefix: snap/lenet\nsnapshot_after_train: false\n")
        runs = {"1 rank, 1 thread": (1, 1), f"{k} ranks, 1 thread each": (k, 1), f"1 rank, {k} threads": (1, k)}
        seen = {name: [] for name in runs}
        throughput(folder, 1, 1, 60)  # compile once, so that every run finds a warm cache
        for _ in range(args.repeats):
            for name, (ranks, threads) in runs.items():
                seen[name].append(throughput(folder, ranks, threads, args.iterations))
    base = statistics.median(seen["1 rank, 1 thread"])
    print(f"LeNet, batch 64 per rank, {args.iterations} iterations, median of {args.repeats} runs")
    print(f"{'run':28s} {'img/s':>9s} {'vs 1 rank':>10s}   runs")
    for name, values in seen.items():
        m = statistics.median(values)
        print(f"{name:28s} {m:9.0f} {m / base:9.2f}x   {', '.join(f'{v:.0f}' for v in values)}")
    print()
    print("Projected Allreduce per iteration on 10 Gbit/s (ring: 2 (K-1)/K x the bytes sent and received per rank)")
    print(f"{'model':20s} {'MiB':>8s} {'K=2 ms':>8s} {'K=8 ms':>8s}")
    for name, nbytes in model_bytes():
        t2, t8 = nbytes * 2 * 1 / 2 / LINK, nbytes * 2 * 7 / 8 / LINK
        print(f"{name:20s} {nbytes / 2**20:8.2f} {t2 * 1e3:8.2f} {t8 * 1e3:8.2f}")


if __name__ == "__main__":
    main()
