#!/usr/bin/env python
"""Training throughput of yaffe against PyTorch and BVLC Caffe (when installed) on the same nets, batch and threads.

    python benchmarks/train_throughput.py [--repeats 5] [--iterations 20] [--seconds 1] [--threads N]
                                          [--nets MLP,LeNet] [--caffe-chroot DIR | --caffe CMD]

For LeNet (1x28x28, batch 64), CIFAR-10 quick (3x32x32, batch 100) and an MLP 784-512-512-10 (batch 128),
on DummyData (uniform images, refilled each iteration, and random integer labels: a constant label drives the
loss to 0 within 30 iterations, after which the gradients sink into float32 denormals and every CPU slows down
10x or more): forward, backward and the SGD update (momentum, weight decay), float32. yaffe runs here, PyTorch
(with its own OpenMP settings) and Caffe (`caffe train` on the same nets as prototxt; its labels redrawn every
iteration) in fresh processes, alternately, several repeats of at least --iterations and --seconds each; the
table gives medians, the ratios, and yaffe's achieved GFLOP/s against the matrix-product peak measured in the
same run. It also reports the start-up to the first iteration (cold and warm Numba cache, in fresh processes)
and the peak memory of each net's training in yaffe and PyTorch. benchmarks/README.md says how to get Caffe.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from netspec.prototxt import dumps  # noqa: E402

LENET = """layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [64, 1, 28, 28]}, {dim: [64]}], data_filler: [{type: uniform}, {type: constant, value: 1}]}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1, convolution_param: {num_output: 20, kernel_size: 5, weight_filler: {type: xavier}}}
  - {name: pool1, type: Pooling, bottom: conv1, top: pool1, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: conv2, type: Convolution, bottom: pool1, top: conv2, convolution_param: {num_output: 50, kernel_size: 5, weight_filler: {type: xavier}}}
  - {name: pool2, type: Pooling, bottom: conv2, top: pool2, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: ip1, type: InnerProduct, bottom: pool2, top: ip1, inner_product_param: {num_output: 500, weight_filler: {type: xavier}}}
  - {name: relu1, type: ReLU, bottom: ip1, top: ip1}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2, inner_product_param: {num_output: 10, weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip2, label], top: loss}
"""
CIFAR = """layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [100, 3, 32, 32]}, {dim: [100]}], data_filler: [{type: uniform}, {type: constant, value: 1}]}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1, convolution_param: {num_output: 32, pad: 2, kernel_size: 5, weight_filler: {type: gaussian, std: 0.0001}}}
  - {name: pool1, type: Pooling, bottom: conv1, top: pool1, pooling_param: {pool: MAX, kernel_size: 3, stride: 2}}
  - {name: relu1, type: ReLU, bottom: pool1, top: pool1}
  - {name: conv2, type: Convolution, bottom: pool1, top: conv2, convolution_param: {num_output: 32, pad: 2, kernel_size: 5, weight_filler: {type: gaussian, std: 0.01}}}
  - {name: relu2, type: ReLU, bottom: conv2, top: conv2}
  - {name: pool2, type: Pooling, bottom: conv2, top: pool2, pooling_param: {pool: AVE, kernel_size: 3, stride: 2}}
  - {name: conv3, type: Convolution, bottom: pool2, top: conv3, convolution_param: {num_output: 64, pad: 2, kernel_size: 5, weight_filler: {type: gaussian, std: 0.01}}}
  - {name: relu3, type: ReLU, bottom: conv3, top: conv3}
  - {name: pool3, type: Pooling, bottom: conv3, top: pool3, pooling_param: {pool: AVE, kernel_size: 3, stride: 2}}
  - {name: ip1, type: InnerProduct, bottom: pool3, top: ip1, inner_product_param: {num_output: 64, weight_filler: {type: gaussian, std: 0.1}}}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2, inner_product_param: {num_output: 10, weight_filler: {type: gaussian, std: 0.1}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip2, label], top: loss}
"""
MLP = """layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [128, 784]}, {dim: [128]}], data_filler: [{type: uniform}, {type: constant, value: 1}]}}
  - {name: ip1, type: InnerProduct, bottom: data, top: ip1, inner_product_param: {num_output: 512, weight_filler: {type: xavier}}}
  - {name: relu1, type: ReLU, bottom: ip1, top: ip1}
  - {name: ip2, type: InnerProduct, bottom: ip1, top: ip2, inner_product_param: {num_output: 512, weight_filler: {type: xavier}}}
  - {name: relu2, type: ReLU, bottom: ip2, top: ip2}
  - {name: ip3, type: InnerProduct, bottom: ip2, top: ip3, inner_product_param: {num_output: 10, weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip3, label], top: loss}
"""
from benchmarks import nets as big  # noqa: E402

NETS = {"LeNet 1x28x28 (64)": (LENET, 64), "CIFAR-10 quick 3x32x32 (100)": (CIFAR, 100), "MLP 784-512-512-10 (128)": (MLP, 128),
        "ResNet-20 3x32x32 (128)": (big.resnet20(128), 128), "MobileNet-v1 x0.5 3x64x64 (64)": (big.mobilenet(64), 64),
        "LSTM T28 N64 H128 (64)": (big.lstm(64), 64)}
CAFFE = {"LeNet 1x28x28 (64)": 3800, "CIFAR-10 quick 3x32x32 (100)": 660, "MLP 784-512-512-10 (128)": 34600}
SOLVER = {"base_lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}  # the same in yaffe, PyTorch and Caffe


def caffe_net(text):
    """The YAML net as Caffe prototxt; labels drawn uniformly in [0, 9.99) every iteration (Caffe's
    SoftmaxWithLoss truncates them to 0..9), as DummyData cannot hold random labels set once."""
    import yaml
    doc = yaml.safe_load(text)
    fillers = doc["layer"][0]["dummy_data_param"]["data_filler"]
    fillers[1] = {"type": "uniform", "min": 0.0, "max": 9.99}
    return dumps(doc)


def caffe_rate(caffe, name, text, batch, iterations, threads, coretype, workdir, inside="/"):
    """Caffe's img/s from `caffe train` in a fresh process: the median of its own "iter/s" display lines
    (each over `iterations` iterations), the first (warm-up) left out. `caffe`: the command (a list);
    `workdir`: where the files go on this machine, `inside`: the same directory as Caffe sees it (a chroot)."""
    import re
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "net.prototxt"), "w") as f:
        f.write(caffe_net(text))
    with open(os.path.join(workdir, "solver.prototxt"), "w") as f:
        f.write(f'net: "{os.path.join(inside, "net.prototxt")}"\nlr_policy: "fixed"\ndisplay: {iterations}\n'
                f"max_iter: {4 * iterations + 1}\nsnapshot_after_train: false\nsolver_mode: CPU\n"
                + "".join(f"{k}: {v}\n" for k, v in SOLVER.items()))
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), GLOG_logtostderr="1")
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    r = subprocess.run(caffe + ["train", f"--solver={os.path.join(inside, 'solver.prototxt')}"], env=env,
                       capture_output=True, text=True)
    rates = [float(m) for m in re.findall(r"Iteration \d+ \(([0-9.]+) iter/s", r.stderr)]
    if r.returncode != 0 or len(rates) < 2:
        raise RuntimeError(f"caffe failed on {name} (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return statistics.median(rates[1:]) * batch


def yaffe_step_fn(text):
    from layers.base import resolve
    from netspec.loader import loads
    from netspec.net import Net
    from solvers.params import SOLVER_FIELDS
    from solvers.rules import SGD
    net = Net(loads(text), "TRAIN", seed=0)
    net.forward()  # DummyData fills its constant label top once; random labels replace it and stay
    label = net.blobs["label"].data
    label[...] = np.random.default_rng(0).integers(0, 10, label.shape)
    solver = SGD(net.params, resolve(SOLVER_FIELDS, dict(SOLVER, net="-", max_iter=1)))
    net.share_diffs()  # as the trainer does
    net.skip_silenced()
    net.lean_slices = True
    from solvers.replicas import start
    replicas, _ = start(net, None)  # as `run.py train` decides: the batch as slices on the threads, or not
    it = [0]

    def step():
        net.clear_param_diffs()
        (replicas or net).forward_backward()
        solver.apply_update(SOLVER["base_lr"], it[0])
        it[0] += 1
    step.close = replicas.close if replicas else (lambda: None)  # gives the threads back, as training's end does
    return step, net


def flops(net):
    """Training FLOPs per iteration: 3x the forward multiply-adds of convolutions and inner products."""
    total = 0
    for d, layer in zip(net.defs, net.layers):
        if d.type == "Convolution":
            n, o, oh, ow = net.shapes[d.tops[0]]
            total += 2 * n * o * oh * ow * layer.blobs[0].data[0].size
        elif d.type == "InnerProduct":
            total += 2 * layer.m * layer.k * layer.p.num_output
        elif d.type == "LSTM":  # the input and the hidden products of the four gates at every step
            total += 2 * layer.T * layer.N * 4 * layer.H * (layer.I + layer.H)
    return 3 * total


def torch_step_fn(name, threads):
    import torch
    torch.set_num_threads(threads)
    model, shape = torch_model_for(name)
    opt = torch.optim.SGD(model.parameters(), lr=SOLVER["base_lr"], momentum=SOLVER["momentum"],
                          weight_decay=SOLVER["weight_decay"])
    x, y = torch.rand(shape), torch.randint(0, 10, (shape[1] if name.startswith("LSTM") else shape[0],))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        x.uniform_()  # as DummyData's uniform filler refills its top every forward
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def torch_model_for(name):
    """(PyTorch module, input shape at the benchmark's batch) of the net named `name` (a NETS key's start)."""
    from torch import nn
    if name.startswith(("ResNet", "MobileNet", "LSTM")):
        model, shape = big.torch_model(name)
    elif name.startswith("LeNet"):
        model, shape = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
                                     nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10)), (64, 1, 28, 28)
    elif name.startswith("CIFAR"):
        model, shape = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10)), (100, 3, 32, 32)
    else:
        model, shape = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                     nn.Linear(512, 10)), (128, 784)
    return model, shape


def rate(step, iterations, batch, warmup=3, seconds=0.0):
    """img/s over at least `iterations` iterations and at least `seconds` (after `warmup` iterations)."""
    for _ in range(warmup):  # first calls allocate (and compile, or pick oneDNN kernels)
        step()
    done, t = 0, time.perf_counter()
    while done < iterations or time.perf_counter() - t < seconds:
        step()
        done += 1
    return batch * done / (time.perf_counter() - t)


def matmul_peak(threads):
    """GFLOP/s of a 1024^3 float32 product on OpenBLAS's threads (before any net puts OpenBLAS on one thread)."""
    from layers.cpu import blas_threads
    blas_threads(threads)
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    np.matmul(a, a)
    best, start, tries = 0.0, time.perf_counter(), 0
    while tries < 5 or time.perf_counter() - start < 1.0:  # the best of a second's tries (five took 25 ms: one
        t = time.perf_counter()                            # run's peak read 187 GFLOP/s, the next 395)
        np.matmul(a, a)
        best, tries = max(best, 2 * 1024 ** 3 / (time.perf_counter() - t) / 1e9), tries + 1
    return best


def core_round_trip(rounds=20000):
    """ns for a cache line to go from Numba's thread 0 to thread 1 and back (two spinning threads passing a
    counter), or nan on one thread. On the 2-core VM ~85 ns where its two cores share an L3 and ~380 where the
    host put them apart, which moves many rows (benchmarks/README.md, thirty-sixth session)."""
    import numba
    if numba.get_num_threads() < 2:
        return float("nan")
    flag = np.zeros(8, np.int64)
    _ping_pong(flag, 100)
    flag[:] = 0
    t = time.perf_counter()
    _ping_pong(flag, rounds)
    return float("nan") if flag[1] else (time.perf_counter() - t) / rounds * 1e9


def _ping_pong(flag, rounds):
    kernel = _PING_PONG[0] if _PING_PONG else None
    if kernel is None:
        from numba import njit, prange
        from layers.cpu import _load_acquire, _store_release

        @njit(parallel=True)
        def kernel(flag, rounds):  # flag[1] = 1: a wait gave up (both parts on one thread): no answer, no hang
            for p in prange(2):
                for i in range(rounds):
                    want = 2 * i + 2 if p == 0 else 2 * i + 1
                    if p == 0:
                        _store_release(flag, 0, 2 * i + 1)
                    spins = 0
                    while _load_acquire(flag, 0) != want and _load_acquire(flag, 1) == 0:
                        spins += 1
                        if spins > 100_000_000:
                            _store_release(flag, 1, 1)
                    if _load_acquire(flag, 1) != 0:
                        break
                    if p == 1:
                        _store_release(flag, 0, 2 * i + 2)
        _PING_PONG.append(kernel)
    kernel(flag, rounds)


_PING_PONG = []


def startup(cache_dir, warm):
    """Seconds from `run.py train` to the first iteration's log line, in a fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        solver = os.path.join(tmp, "solver.yaml")
        with open(solver, "w") as f:
            f.write(f"net: {os.path.join(ROOT, 'models', 'lenet_digits', 'net.yaml')}\nbase_lr: 0.01\nmax_iter: 1\n"
                    f"display: 1\nsnapshot_after_train: false\n")
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "train", solver], env=env,
                             stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            if line.startswith("Iteration 0 "):
                break
        elapsed = time.perf_counter() - t
        p.wait()
    return elapsed


def peak_rss(code):
    """MiB: the child's VmHWM (ru_maxrss would carry over the parent's peak across fork and exec)."""
    probe = "\nprint([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    r = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, cwd=ROOT, env=_env())
    return int(r.stdout.strip().splitlines()[-1]) / 1024 if r.returncode == 0 else float("nan")


def _env():
    """The environment of a child: PyTorch with its own default OpenMP settings."""
    return dict(os.environ)


def torch_rate_in_child(name, threads, iterations, batch, seconds):
    """PyTorch's img/s measured in a fresh process with its default OpenMP settings."""
    code = (f"import sys; sys.path.insert(0, '.'); from benchmarks.train_throughput import *; "
            f"print(rate(torch_step_fn({name!r}, {threads}), {iterations}, {batch}, seconds={seconds}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env())
    return float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20, help="at least this many iterations per measurement")
    ap.add_argument("--seconds", type=float, default=1.0, help="and at least this long (default 1 s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--nets", default="", help="comma-separated words: run only the nets whose names contain one "
                    "(e.g. MLP,LeNet)")
    ap.add_argument("--caffe-chroot", metavar="DIR", help="also run BVLC Caffe: a Debian root with the caffe package "
                    "(benchmarks/README.md says how to make one); Caffe runs as `chroot DIR caffe train`")
    ap.add_argument("--caffe", metavar="CMD", help="also run BVLC Caffe through this command (e.g. a caffe binary "
                    "on this machine)")
    ap.add_argument("--caffe-coretype", default="auto", help="OPENBLAS_CORETYPE for Caffe's OpenBLAS (auto: "
                    "SKYLAKEX on AVX-512 CPUs, as older OpenBLAS builds fall back to SSE3 kernels on CPUs newer than "
                    "they know; 'none' leaves it unset)")
    args = ap.parse_args()
    caffe = caffe_dir = None
    if args.caffe_chroot and not os.path.isfile(os.path.join(args.caffe_chroot, "usr", "bin", "caffe")):
        ap.error(f"--caffe-chroot {args.caffe_chroot}: no usr/bin/caffe there; make the chroot as "
                 "benchmarks/README.md says (debootstrap --variant=minbase --include=caffe bullseye DIR ...)")
    if args.caffe_chroot or args.caffe:
        import shlex
        caffe = (["chroot", args.caffe_chroot, "/usr/bin/caffe"] if args.caffe_chroot else shlex.split(args.caffe))
        coretype = {"none": None}.get(args.caffe_coretype, args.caffe_coretype)
        if coretype == "auto":
            flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
            coretype = "SKYLAKEX" if " avx512f" in flags else ("HASWELL" if " avx2" in flags else None)
        caffe_dir = tempfile.mkdtemp(dir=os.path.join(args.caffe_chroot, "tmp") if args.caffe_chroot else None)
        caffe_inside = "/" + os.path.relpath(caffe_dir, args.caffe_chroot) if args.caffe_chroot else caffe_dir
    import importlib.util
    have_torch = importlib.util.find_spec("torch") is not None
    if not have_torch:
        print("PyTorch is not installed (pip install torch==2.13.0): yaffe only\n")
    peak = matmul_peak(args.threads)
    print(f"{'net (batch)':<30} {'yaffe img/s':>12} {'PyTorch img/s':>14} {'Caffe img/s':>12} {'yaffe/PyTorch':>14} "
          f"{'yaffe/Caffe':>12} {'yaffe/#8 Caffe':>15} {'GFLOP/s':>8} {'of peak':>8} {'cores ns':>10}")
    for name, (text, batch) in NETS.items():
        if args.nets and not any(w.lower() in name.lower() for w in args.nets.split(",")):
            continue
        ystep, net = yaffe_step_fn(text)  # closed below: replicas hold OpenBLAS and Numba at one thread each
        ys, ts, cs, trips = [], [], [], []
        for _ in range(args.repeats):  # alternately: yaffe here, PyTorch and Caffe in fresh processes of their own
            trips.append(core_round_trip())
            ys.append(rate(ystep, args.iterations, batch, seconds=args.seconds))
            trips.append(core_round_trip())
            if have_torch:
                ts.append(torch_rate_in_child(name, args.threads, args.iterations, batch, args.seconds))
            if caffe:  # Caffe's display interval: about `seconds` at yaffe's rate
                display = max(args.iterations, round(args.seconds * ys[0] / batch))
                try:
                    cs.append(caffe_rate(caffe, name, text, batch, display, args.threads, coretype, caffe_dir,
                                         caffe_inside))
                except (RuntimeError, OSError) as e:  # not root for chroot, no caffe there, ...
                    print(f"Caffe left out: {e}\n(--caffe-chroot needs root; benchmarks/README.md says how to "
                          "make the chroot)", file=sys.stderr)
                    caffe = None
        ystep.close()
        y = statistics.median(ys)
        t = statistics.median(ts) if ts else float("nan")
        c = statistics.median(cs) if cs else float("nan")
        gf = flops(net) * y / batch / 1e9
        issue8 = y / CAFFE.get(name, float("nan"))
        print(f"{name:<30} {y:12.0f} {t:14.0f} {c:12.0f} {y / t:14.2f} {y / c:12.2f} {issue8:15.2f} "
              f"{gf:8.1f} {gf / peak:8.0%} {min(trips):5.0f}-{max(trips):<4.0f}", flush=True)
    from layers.simd import VECTOR_BYTES, cpu_model
    print(f"\nCPU: {cpu_model()}; yaffe's kernels on {VECTOR_BYTES}-byte vectors")
    print(f"matrix-product peak (1024^3 float32, {args.threads} threads): {peak:.1f} GFLOP/s")
    print("cores ns: a cache line's round trip between yaffe's two threads before and after each of its measurements "
          "(~85 ns: the VM's cores share an L3; ~380: the host put them apart, and rows slow: benchmarks/README.md)")
    if caffe_dir:
        import shutil
        shutil.rmtree(caffe_dir, ignore_errors=True)
    if caffe:
        print(f"Caffe: {' '.join(caffe)}, OPENBLAS_CORETYPE={coretype}; labels redrawn every iteration")
    print("yaffe/#8 Caffe: against the Caffe rates quoted in issue #8 (" +
          ", ".join(f"{v:,}" for v in CAFFE.values()) + " img/s, measured on another machine)")
    if not args.skip_startup:
        with tempfile.TemporaryDirectory() as cache:
            cold = startup(cache, False)
            warm = statistics.median(startup(cache, True) for _ in range(3))
        print(f"start-up to the first iteration (lenet_digits): {cold:.1f} s with an empty Numba cache, "
              f"{warm:.1f} s warm")
    print("\npeak memory (max RSS, MiB) of 5 training iterations in a fresh process:")
    for name in NETS:
        if args.nets and not any(w.lower() in name.lower() for w in args.nets.split(",")):
            continue
        head = "import sys; sys.path.insert(0, '.'); from benchmarks.train_throughput import *; "
        y_rss = peak_rss(head + f"s, _ = yaffe_step_fn(NETS[{name!r}][0])\nfor _ in range(5): s()")
        line = f"  {name:<30} yaffe {y_rss:6.0f}"
        if have_torch:
            t_rss = peak_rss(head + f"s = torch_step_fn({name!r}, {args.threads})\nfor _ in range(5): s()")
            line += f"   PyTorch {t_rss:6.0f}   yaffe/PyTorch {y_rss / t_rss:.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
