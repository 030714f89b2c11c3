"""Data bigger than memory, measured (issue: streaming data layers). Three parts:

    python benchmarks/streaming.py memory --gb 4 8 [--iterations 300]
        LMDBs of encoded 3x256x256 JPEGs of the given sizes (made here from a few hundred distinct images,
        repeated under new keys), each trained from with a small net (random crop 64, mirror), in a child process;
        peak memory from /proc (anonymous and file-backed) and getrusage. Memory must not grow with the data.
    python benchmarks/streaming.py pipeline [--images 5000] [--threads 2]
        the data pipeline alone on a list of 32x32 JPEGs (decode, random crop 28, mirror, batches of 100):
        yaffe's ImageData with stream: always against PyTorch's DataLoader with the same decode and transforms
        and as many workers (pip install torch==2.13.0).
    python benchmarks/streaming.py cifar [--iterations 200]
        CIFAR-10 quick (Caffe's net, 32x32 inputs, mirror) from that 32x32 JPEG list, with the decode in the
        prefetch threads: the share of each iteration spent waiting for data, from the training log.

Scratch files go to --work (default /tmp/yaffe_streaming); the LMDBs are kept between runs.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def jpeg(rng, size, quality=90):
    from PIL import Image
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth images, as photos are: ~10-20 KB at 256
    img = Image.fromarray(base).resize((size, size), Image.BICUBIC)
    noise = rng.integers(-20, 20, (size, size, 3))
    img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_lmdb(path, gb, distinct=300):
    """An LMDB of encoded-JPEG Datum records totalling about `gb` GiB (distinct images repeated under new keys)."""
    import lmdb
    from netspec.caffemodel import _field, _int_field
    if os.path.isdir(path):
        return path
    rng = np.random.default_rng(0)
    images = [jpeg(rng, 256) for _ in range(distinct)]
    mean = np.mean([len(b) for b in images])
    n = int(gb * 2**30 / mean)
    env = lmdb.open(path, map_size=int(gb * 2**30 * 1.3) + (1 << 28))
    k = 0
    while k < n:
        with env.begin(write=True) as txn:
            for _ in range(min(5000, n - k)):
                body = _int_field(1, 3) + _int_field(2, 256) + _int_field(3, 256) + _field(4, images[k % distinct])
                txn.put(f"{k:09d}".encode(), body + _int_field(5, k % 10) + _int_field(7, 1))
                k += 1
    env.close()
    print(f"  made {path}: {n:,} JPEGs, {sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**30:.2f} GiB")
    return path


MEMORY_NET = """
layer:
  - name: data
    type: Data
    top: [data, label]
    data_param: {source: %s, batch_size: 32, shuffle: true, stream: always, prefetch: 4}
    transform_param: {crop_size: 64, mirror: true, scale: 0.00390625}
  - {name: conv, type: Convolution, bottom: data, top: conv,
     convolution_param: {num_output: 8, kernel_size: 8, stride: 8, weight_filler: {type: xavier}}}
  - {name: relu, type: ReLU, bottom: conv, top: conv}
  - {name: ip, type: InnerProduct, bottom: conv, top: ip, inner_product_param: {num_output: 10, weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def watch_memory(pid, peaks, stop):
    """Peak RssAnon and RssFile (kB) of a process from /proc, every 50 ms."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in ("RssAnon", "RssFile", "VmRSS"):
                        peaks[key] = max(peaks.get(key, 0), int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.05)


def memory(args):
    rows = []
    for gb in args.gb:
        db = make_lmdb(os.path.join(args.work, f"jpeg_{gb:g}gb_lmdb"), gb)
        folder = os.path.join(args.work, f"run_{gb:g}gb")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "net.yaml"), "w") as f:
            f.write(MEMORY_NET % db)
        with open(os.path.join(folder, "solver.yaml"), "w") as f:
            f.write(f"net: net.yaml\nbase_lr: 0.01\nmomentum: 0.9\nmax_iter: {args.iterations}\ndisplay: 50\n"
                    "snapshot_prefix: snap\nsnapshot_after_train: false\nrandom_seed: 1\n")
        t0 = time.time()
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "train", "solver.yaml", "--force"],
                             cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peaks, stop = {}, threading.Event()
        watcher = threading.Thread(target=watch_memory, args=(p.pid, peaks, stop))
        watcher.start()
        out, _ = p.communicate()
        stop.set()
        watcher.join()
        if p.returncode:
            print(out[-3000:])
            raise SystemExit(f"training from the {gb} GiB LMDB failed")
        waits = [float(w) for w in re.findall(r"data wait ([\d.]+) ms/iter", out)]
        rows.append((gb, peaks.get("VmRSS", 0) / 2**10, peaks.get("RssAnon", 0) / 2**10, peaks.get("RssFile", 0) / 2**10,
                     args.iterations * 32, time.time() - t0, statistics.median(waits) if waits else float("nan")))
    print("\n| LMDB | peak RSS | anonymous | file-backed | images read | wall | data wait (median) |")
    print("|---|---|---|---|---|---|---|")
    for gb, rss, anon, fil, n, wall, wait in rows:
        print(f"| {gb:g} GiB | {rss:.0f} MiB | {anon:.0f} MiB | {fil:.0f} MiB | {n:,} | {wall:.0f} s | {wait:.1f} ms/iter |")


def image_list(work, n):
    folder = os.path.join(work, f"jpeg32_{n}")
    listing = os.path.join(folder, "list.txt")
    if not os.path.isfile(listing):
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(1)
        with open(listing, "w") as f:
            for i in range(n):
                with open(os.path.join(folder, f"{i}.jpg"), "wb") as g:
                    g.write(jpeg(rng, 32))
                f.write(f"{i}.jpg {i % 10}\n")
    return listing


PIPE_NET = """
layer:
  - name: data
    type: ImageData
    top: [data, label]
    image_data_param: {source: %s, batch_size: 100, shuffle: true, stream: always, prefetch: %d, processes: %d}
    transform_param: {crop_size: 28, mirror: true, scale: 0.00390625}
"""


def pipeline(args):
    from netspec.loader import loads
    from netspec.net import Net
    listing = image_list(args.work, args.images)
    batches = args.images // 100
    ours = {}
    for processes in (0, args.threads):
        net = Net(loads(PIPE_NET % (listing, args.threads * 2, processes), os.path.join(args.work, "p.yaml")),
                  "TRAIN", os.path.join(args.work, "p.yaml"), seed=0)
        layer = net.layers[0]
        layer.load()
        for _ in range(3):
            net.forward()  # start the threads (min(prefetch, cores) of them) and the processes
        t0 = time.perf_counter()
        for _ in range(batches):
            net.forward()
        ours[processes] = batches * 100 / (time.perf_counter() - t0)
        layer._stop_prefetch()
    theirs = None
    try:
        import torch
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset
    except ImportError:
        torch = None
    if torch is not None:
        folder = os.path.dirname(listing)
        entries = [line.split() for line in open(listing)]

        class Jpegs(Dataset):
            def __len__(self):
                return len(entries)

            def __getitem__(self, i):  # the same work: decode, random 28x28 crop, mirror, scale, CHW float32
                with Image.open(os.path.join(folder, entries[i][0])) as im:
                    a = np.asarray(im.convert("RGB"), np.float32)
                y, x = np.random.randint(0, 5, 2)
                a = a[y:y + 28, x:x + 28]
                if np.random.rand() < 0.5:
                    a = a[:, ::-1]
                return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)) / 256), int(entries[i][1])

        torch.set_num_threads(1)
        loader = DataLoader(Jpegs(), batch_size=100, shuffle=True, num_workers=args.threads,
                            persistent_workers=True, prefetch_factor=2)
        for _ in loader:  # warm the workers
            break
        t0 = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += len(x)
        theirs = n / (time.perf_counter() - t0)
    print(f"\n| data pipeline, 32x32 JPEGs, decode + crop 28 + mirror, batches of 100, {args.threads} threads/workers | images/s |")
    print("|---|---|")
    print(f"| yaffe ImageData, stream: always, {args.threads} threads | {ours[0]:,.0f} |")
    print(f"| yaffe ImageData, stream: always, processes: {args.threads} | {ours[args.threads]:,.0f} |")
    print(f"| PyTorch DataLoader | {theirs:,.0f} |" if theirs else "| PyTorch DataLoader | (torch not installed) |")


def cifar(args):
    listing = image_list(args.work, args.images)
    folder = os.path.join(args.work, "cifar_run")
    os.makedirs(folder, exist_ok=True)
    text = open(os.path.join(ROOT, "tests", "fixtures", "caffe_examples", "cifar10", "cifar10_quick_train_test.prototxt")).read()
    data = (f'layer {{ name: "cifar" type: "ImageData" top: "data" top: "label" include {{ phase: TRAIN }}\n'
            f'  transform_param {{ mirror: true scale: 0.00390625 }}\n'
            f'  image_data_param {{ source: "{listing}" batch_size: 100 shuffle: true stream: always prefetch: 4 }} }}\n')
    body = text[text.index("layer {", text.index("phase: TEST")):]  # from the first layer after the data layers
    with open(os.path.join(folder, "net.prototxt"), "w") as f:
        f.write('name: "CIFAR10_quick"\n' + data + body)
    with open(os.path.join(folder, "solver.prototxt"), "w") as f:
        f.write(f'net: "net.prototxt"\nbase_lr: 0.001\nmomentum: 0.9\nweight_decay: 0.004\nlr_policy: "fixed"\n'
                f'display: 20\nmax_iter: {args.iterations}\nsnapshot_after_train: false\nrandom_seed: 1\n'
                f'snapshot_prefix: "snap"\n')
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "train", "solver.prototxt", "--force"],
                       cwd=folder, capture_output=True, text=True)
    if r.returncode:
        print(r.stdout[-2000:], r.stderr[-2000:])
        raise SystemExit("CIFAR-10 quick failed")
    shares = [float(s) for s in re.findall(r"data wait [\d.]+ ms/iter \((\d+)%\)", r.stdout)]
    waits = [float(s) for s in re.findall(r"data wait ([\d.]+) ms/iter", r.stdout)]
    speeds = [float(s) for s in re.findall(r"([\d.]+) img/s", r.stdout)]
    print(f"\nCIFAR-10 quick from {args.images:,} 32x32 JPEGs (decode + mirror in the prefetch threads), "
          f"{args.iterations} iterations: data wait median {statistics.median(waits):.1f} ms/iter, "
          f"{statistics.median(shares):.0f}% of an iteration (per display: {', '.join(f'{s:.0f}%' for s in shares)}); "
          f"{statistics.median(speeds):,.0f} img/s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("memory", "pipeline", "cifar"))
    p.add_argument("--work", default="/tmp/yaffe_streaming")
    p.add_argument("--gb", type=float, nargs="+", default=[4, 8])
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)
    {"memory": memory, "pipeline": pipeline, "cifar": cifar}[args.part](args)


if __name__ == "__main__":
    main()
