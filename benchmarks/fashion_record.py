"""Time to accuracy on Fashion-MNIST: models/fashion_record trained by `run.py train`, and the same recipe in PyTorch.

    python benchmarks/fashion_record.py                      # yaffe, seeds 1-5, then PyTorch, seed 1
    python benchmarks/fashion_record.py --seeds 1 --torch-seeds 1,2 --plot record.png --json record.json

The PyTorch side reads the same files: the net (models/fashion_record/net.yaml, translated layer by layer into
torch modules: Convolution, BatchNorm + Scale as BatchNorm2d, ReLU, Eltwise SUM, MAX and AVE pooling,
InnerProduct), the solver (Nesterov SGD with momentum and weight decay on the same blobs, OneCycleLR with its
momentum cycle, the weights' EMA tested after BatchNorm's statistics are recomputed on ema_bn_batches batches)
and the data layer (the normalize statistics, pad + random crop + mirror, label smoothing), with
torch.set_num_threads equal to this machine's cores. Both test at the solver's test_interval on the 10,000 test
images; the table gives the accuracy of the last test finished by 2, 5 and 10 minutes (tests included in the
time) and the end-to-end wall time of the process (startup, data, Numba's compile or torch's import included).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "fashion_record")
MARKS = (2, 5, 10)  # minutes


def run_yaffe(seed: int, solver: str, work: str) -> dict:
    """One `run.py train` of the record; its test points from the metrics file."""
    metrics = os.path.join(work, f"yaffe_{seed}.jsonl")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "train", solver, "--force",
                           "--set", f"random_seed={seed}", "--set", f"snapshot_prefix={work}/yaffe_{seed}",
                           "--metrics", metrics], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"run.py train failed (seed {seed}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    points = []
    with open(metrics) as f:
        for line in f:
            r = json.loads(line)
            if r.get("phase") == "test":
                points.append((r["elapsed_s"], r["accuracy"], r["iter"]))
    return {"framework": "yaffe", "seed": seed, "wall_s": wall, "points": points}


# ---- the same recipe in PyTorch --------------------------------------------------------------------------------

def _idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _layers(net_path):
    with open(net_path) as f:
        return yaml.safe_load(f)["layer"]


def torch_net(layers):
    """A torch module running the net's layers in order over a dict of blobs (in-place layers overwrite)."""
    import torch
    from torch import nn

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps, self.mods, shapes = [], nn.ModuleDict(), {"data": 1}
            skip = set()
            for i, l in enumerate(layers):
                t, name = l["type"], l["name"]
                if t in ("Data", "Accuracy", "SoftmaxWithLoss") or name in skip:
                    continue
                bottoms = l["bottom"] if isinstance(l["bottom"], list) else [l["bottom"]]
                top = l["top"] if isinstance(l["top"], str) else l["top"][0]
                c = shapes.get(bottoms[0])
                if t == "Convolution":
                    p = l["convolution_param"]
                    mod = nn.Conv2d(c, p["num_output"], p["kernel_size"], p.get("stride", 1), p.get("pad", 0),
                                    bias=p.get("bias_term", True))
                    nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")  # msra (Caffe: fan_in)
                    c = p["num_output"]
                elif t == "BatchNorm":
                    nxt = layers[i + 1] if i + 1 < len(layers) else {}
                    affine = nxt.get("type") == "Scale" and nxt.get("bottom") == top
                    if affine:
                        skip.add(nxt["name"])
                    maf = l.get("batch_norm_param", {}).get("moving_average_fraction", 0.999)
                    mod = nn.BatchNorm2d(c, eps=1e-5, momentum=1 - maf, affine=affine)
                elif t == "ReLU":
                    mod = nn.ReLU()
                elif t == "Eltwise":
                    mod = None
                elif t == "Pooling":
                    p = l.get("pooling_param", {})
                    if p.get("global_pooling"):
                        mod = nn.AdaptiveAvgPool2d(1) if p.get("pool", "MAX") == "AVE" else nn.AdaptiveMaxPool2d(1)
                    else:  # Caffe rounds the output size up
                        k, st, pd = p["kernel_size"], p.get("stride", 1), p.get("pad", 0)
                        mod = (nn.MaxPool2d(k, st, pd, ceil_mode=True) if p.get("pool", "MAX") == "MAX"
                               else nn.AvgPool2d(k, st, pd, ceil_mode=True))
                elif t == "InnerProduct":
                    mod = nn.Linear(c, l["inner_product_param"]["num_output"])
                    nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(mod.bias)
                    c = l["inner_product_param"]["num_output"]
                else:
                    raise SystemExit(f"benchmarks/fashion_record.py: no PyTorch mapping of {t} (layer {name})")
                if mod is not None:
                    self.mods[name] = mod
                self.steps.append((name, t, bottoms, top))
                shapes[top] = c

        def forward(self, x):
            blobs = {"data": x}
            for name, t, bottoms, top in self.steps:
                if t == "Eltwise":
                    blobs[top] = blobs[bottoms[0]] + blobs[bottoms[1]]
                elif t == "InnerProduct":
                    blobs[top] = self.mods[name](torch.flatten(blobs[bottoms[0]], 1))
                else:
                    blobs[top] = self.mods[name](blobs[bottoms[0]])
                last = top
            return blobs[last]

    return Graph()


def run_torch(seed: int, solver_path: str, threads: int) -> dict:
    t_start = time.perf_counter()
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with open(solver_path) as f:
        cfg = yaml.safe_load(f)
    layers = _layers(os.path.join(os.path.dirname(solver_path), cfg["net"]))
    train_l = next(l for l in layers if l["type"] == "Data" and l.get("include", {}).get("phase") == "TRAIN")
    test_l = next(l for l in layers if l["type"] == "Data" and l.get("include", {}).get("phase") == "TEST")
    loss_l = next(l for l in layers if l["type"] == "SoftmaxWithLoss")
    tp = train_l["transform_param"]
    batch, test_batch = train_l["data_param"]["batch_size"], test_l["data_param"]["batch_size"]
    x_train = _idx(train_l["data_param"]["source"]).astype(np.float32)[:, None] * tp.get("scale", 1)
    y_train = torch.from_numpy(_idx(train_l["data_param"]["source"].replace("images-idx3", "labels-idx1"))
                               .astype(np.int64))
    x_test = _idx(test_l["data_param"]["source"]).astype(np.float32)[:, None] * tp.get("scale", 1)
    y_test = torch.from_numpy(_idx(test_l["data_param"]["source"].replace("images-idx3", "labels-idx1"))
                              .astype(np.int64))
    mean, std = float(x_train.mean()), float(x_train.std())  # zero_center, z_score (one channel)
    x_train, x_test = torch.from_numpy((x_train - mean) / std), torch.from_numpy((x_test - mean) / std)
    fill, pad = (0 - mean) / std, tp.get("pad", 0)

    model = torch_net(layers)
    decay = [p for n, p in model.named_parameters() if not (n.startswith("mods.fc.") and n.endswith("bias"))]
    no_decay = [p for n, p in model.named_parameters() if n.startswith("mods.fc.") and n.endswith("bias")]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0}], lr=cfg["base_lr"], momentum=cfg["momentum"],
                          nesterov=cfg["type"] == "Nesterov")
    steps = cfg["max_iter"]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["base_lr"], total_steps=steps, pct_start=cfg.get("pct_start", 0.3),
        div_factor=cfg.get("div_factor", 25.0), final_div_factor=cfg.get("final_div_factor", 1e4),
        base_momentum=cfg.get("base_momentum", 0.85), max_momentum=cfg.get("max_momentum", 0.95))
    smoothing = loss_l.get("loss_param", {}).get("label_smoothing", 0.0)
    ema_decay, bn_batches = cfg.get("ema_decay", 0.0), cfg.get("ema_bn_batches", 0)
    ema = [t.detach().clone() for t in model.state_dict().values()] if ema_decay else None

    order, at = rng.permutation(len(x_train)), 0

    def next_batch():
        nonlocal order, at
        if at + batch > len(order):
            order, at = rng.permutation(len(x_train)), 0
        idx = order[at:at + batch]
        at += batch
        x = x_train[idx]
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), value=fill)
            h, w = x.shape[-2] - 2 * pad, x.shape[-1] - 2 * pad
            tops, lefts = rng.integers(0, 2 * pad + 1, batch), rng.integers(0, 2 * pad + 1, batch)
            x = torch.stack([x[i, :, tops[i]:tops[i] + h, lefts[i]:lefts[i] + w] for i in range(batch)])
        if tp.get("mirror"):
            flip = torch.from_numpy(rng.random(batch) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x.contiguous(), y_train[idx]

    def test():
        live = [t.detach().clone() for t in model.state_dict().values()] if ema else None
        if ema:
            for t, e in zip(model.state_dict().values(), ema):
                t.copy_(e)
            if bn_batches:  # update_bn: the plain mean over the batches
                saved = (order.copy(), at, rng.bit_generator.state)
                bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
                for m in bns:
                    m.reset_running_stats()
                    m.momentum = None
                model.train()
                with torch.no_grad():
                    for _ in range(bn_batches):
                        model(next_batch()[0])
                for m, l in zip(bns, [l for l in layers if l["type"] == "BatchNorm"]):
                    m.momentum = 1 - l.get("batch_norm_param", {}).get("moving_average_fraction", 0.999)
                restore(saved)
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(x_test), test_batch):
                correct += int((model(x_test[i:i + test_batch]).argmax(1) == y_test[i:i + test_batch]).sum())
        model.train()
        if live:
            for t, v in zip(model.state_dict().values(), live):
                t.copy_(v)
        return correct / len(x_test)

    def restore(saved):
        nonlocal order, at
        order, at = saved[0], saved[1]
        rng.bit_generator.state = saved[2]

    points, interval = [], cfg.get("test_interval", 0)
    t0 = time.perf_counter()
    model.train()
    for it in range(1, steps + 1):
        x, y = next_batch()
        loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema:
            with torch.no_grad():
                for e, t in zip(ema, model.state_dict().values()):
                    if t.dtype.is_floating_point:
                        e.mul_(ema_decay).add_(t, alpha=1 - ema_decay)
                    else:
                        e.copy_(t)
        if (interval and it % interval == 0) or it == steps:
            points.append((time.perf_counter() - t0, test(), it))
            print(f"  torch seed {seed}: iteration {it}, {points[-1][0]:.0f} s, accuracy {points[-1][1]:.4f}",
                  flush=True)
    return {"framework": "PyTorch", "seed": seed, "wall_s": time.perf_counter() - t_start, "points": points}


# ---- the report ------------------------------------------------------------------------------------------------

def reached(points, minutes):
    """The accuracy of the last test finished within `minutes` (None before the first)."""
    done = [a for t, a, _ in points if t <= minutes * 60]
    return done[-1] if done else None


def _median_reached(runs, minutes):
    """The median over runs of `reached` ("-" where it falls on a run with no test finished yet)."""
    got = [reached(r["points"], minutes) for r in runs]
    if all(g is not None for g in got):
        return statistics.median(got)
    low = statistics.median_low([-1.0 if g is None else g for g in got])
    return None if low < 0 else low


def table(runs):
    def fmt(v):
        return "-" if v is None else f"{v:.4f}"
    rows = ["| framework | seed | " + " | ".join(f"at {m} min" for m in MARKS) + " | final | iterations | "
            "training s | end to end s |", "|---" * (len(MARKS) + 6) + "|"]
    for r in runs:
        t, a, it = r["points"][-1]
        rows.append(f"| {r['framework']} | {r['seed']} | " + " | ".join(fmt(reached(r["points"], m)) for m in MARKS)
                    + f" | {a:.4f} | {it} | {t:.0f} | {r['wall_s']:.0f} |")
    for fw in sorted({r["framework"] for r in runs}):
        mine = [r for r in runs if r["framework"] == fw]
        finals = [r["points"][-1][1] for r in mine]
        walls = [r["wall_s"] for r in mine]
        rows.append(f"| {fw} | median of {len(mine)} | " + " | ".join(
            fmt(_median_reached(mine, m)) for m in MARKS) +
            f" | {statistics.median(finals):.4f} (min {min(finals):.4f}, max {max(finals):.4f}) | | "
            f"{statistics.median(r['points'][-1][0] for r in mine):.0f} | {statistics.median(walls):.0f} |")
    return "\n".join(rows)


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"yaffe": "tab:blue", "PyTorch": "tab:orange"}
    for r in runs:
        ts, accs = [t / 60 for t, _, _ in r["points"]], [a for _, a, _ in r["points"]]
        ax.plot(ts, accs, "o-", color=colours[r["framework"]], alpha=0.7,
                label=r["framework"] if r is next(q for q in runs if q["framework"] == r["framework"]) else None)
    ax.axhline(0.94, color="grey", ls="--", lw=1)
    ax.set_xlabel("training time, tests included (minutes)")
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title("Fashion-MNIST, models/fashion_record, 2 threads")
    ax.set_ylim(0.85, 0.96)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solver", default=os.path.join(MODEL, "solver.yaml"))
    ap.add_argument("--seeds", default="1,2,3,4,5", help="yaffe's seeds (comma-separated; empty: none)")
    ap.add_argument("--torch-seeds", default="1", help="PyTorch's seeds (empty: none)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write the runs here")
    ap.add_argument("--plot", help="write accuracy against time here (PNG; needs matplotlib)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    torch_seeds = [int(s) for s in args.torch_seeds.split(",") if s]
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for s in seeds:
            runs.append(run_yaffe(s, os.path.abspath(args.solver), work))
            print(f"  yaffe seed {s}: " + ", ".join(f"{t:.0f} s {a:.4f}" for t, a, _ in runs[-1]["points"]) +
                  f"; {runs[-1]['wall_s']:.0f} s end to end", flush=True)
    for s in torch_seeds:
        runs.append(run_torch(s, os.path.abspath(args.solver), args.threads))
    print(table(runs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
