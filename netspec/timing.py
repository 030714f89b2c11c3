"""`run.py time MODEL`: like `caffe time`, per-layer forward and backward times averaged over iterations
after a warm-up (which also compiles the Numba kernels). No weight updates. Where `run.py train` runs each
batch as slices on the threads (solvers/replicas.py), the time of those passes follows the table."""
from __future__ import annotations

import os
import time

import numpy as np

from .net import Net
from .spec import INLINE, load_net


def time_net(path: str, iterations: int = 50, phase: str = "TRAIN", out=print, level: int = 0, stages=()) -> dict:
    """path: a net, or a solver (its net is timed, as `validate` follows a solver to its net)."""
    from .loader import load
    from .spec import kind_of, load_solver
    if INLINE not in os.path.basename(path) and kind_of(load(path)) == "solver":
        _, _, path = load_solver(path)
        out(f"Timing the solver's net {path}")
    net = Net(load_net(path), phase, path, seed=0, level=level, stages=tuple(stages))
    net.forward_backward()  # warm-up
    fwd = np.zeros(len(net.layers))
    bwd = np.zeros(len(net.layers))
    start = time.perf_counter()
    for _ in range(iterations):
        for k, (layer, bottom, top) in enumerate(zip(net.layers, net.bottom_vecs, net.top_vecs)):
            t = time.perf_counter()
            net.forward_layer(k)  # with the copies in-place layers' backward needs (netspec/inplace.py)
            fwd[k] += time.perf_counter() - t
        for blob, w in net.loss_blobs:
            blob.diff[...] = w
        for k in reversed(range(len(net.layers))):
            if net.need_backward[k]:
                t = time.perf_counter()
                net.backward_layer(k)
                bwd[k] += time.perf_counter() - t
    total = time.perf_counter() - start
    fwd, bwd = fwd / iterations * 1e3, bwd / iterations * 1e3
    rows = []
    out(f"{'layer':<24} {'type':<18} {'forward ms':>11} {'backward ms':>12}")
    for d, f, b in zip(net.defs, fwd, bwd):
        rows.append({"name": d.name, "type": d.type, "forward_ms": float(f), "backward_ms": float(b)})
        out(f"{d.name:<24} {d.type:<18} {f:11.3f} {b:12.3f}")
    batch = net.source_batch_axes()[0] or next((net.shapes[d.tops[0]][0] for d, l in zip(net.defs, net.layers)
                                               if l.is_data or d.type == "Input"), 1)  # sequences (T, N): N
    result = {"layers": rows, "forward_ms": float(fwd.sum()), "backward_ms": float(bwd.sum()),
              "forward_backward_ms": float(fwd.sum() + bwd.sum()), "total_ms": total / iterations * 1e3,
              "images_per_s": batch * iterations / total}
    out(f"Average forward pass: {result['forward_ms']:.3f} ms")
    out(f"Average backward pass: {result['backward_ms']:.3f} ms")
    out(f"Average forward-backward: {result['forward_backward_ms']:.3f} ms ({result['images_per_s']:.0f} img/s at "
        f"batch {batch})")
    out(f"Total time: {total * 1e3:.1f} ms for {iterations} iterations")
    result["kernels"] = _kernels(net, out, phase)
    result["data_layers"] = _data_alone(net, iterations, out)
    if phase == "TRAIN":
        from solvers.replicas import start
        replicas, line = start(net, None)
        if replicas is not None:
            try:
                replicas.forward_backward()  # warm-up
                start_time = time.perf_counter()
                for _ in range(iterations):
                    replicas.forward_backward()
                each = (time.perf_counter() - start_time) / iterations
            finally:
                replicas.close()
            result.update(replicas=replicas.k, replicas_forward_backward_ms=each * 1e3, replicas_images_per_s=batch / each)
            out(f"As run.py train runs it ({line.split(' (')[0]}): {each * 1e3:.3f} ms a forward-backward pass "
                f"({batch / each:.0f} img/s)")
    return result


def _kernels(net, out, phase="TRAIN") -> dict:
    """The vector width and register tiles the kernels were compiled for, and each convolution's path."""
    from layers import simd
    from layers.winograd import NAMES as WINO_NAMES
    width = {64: "AVX-512", 32: "AVX2"}[simd.VECTOR_BYTES]
    forced = ", forced by YAFFE_VECTOR_BYTES" if os.environ.get("YAFFE_VECTOR_BYTES") else ""

    def path(k, layer):
        plan = getattr(layer, "_plan", None)
        wino = getattr(layer, "_wino_plans", None) if phase == "TRAIN" else None  # (key, forward, data, weights)
        pixels = layer.path_taken == "direct" and getattr(plan, "pixels", False)
        lanes = layer.path_taken.startswith("direct") and getattr(plan, "lanes_data", False) and phase == "TRAIN" \
            and any(net.propagate[k]) and not (wino and wino[2])
        back = ""
        if wino and wino[1] is None:  # the forward on other kernels, the gradients on Winograd's
            back = f", weight{' and data' if wino[2] and any(net.propagate[k]) else ''} gradient Winograd " + \
                WINO_NAMES[wino[3].al, wino[3].k]
        elif wino and wino[3].al != wino[1].al:
            back = f", gradients Winograd {WINO_NAMES[wino[3].al, wino[3].k]}"
        return (layer.path_taken + (" (pixel tiles)" if pixels else "")
                + (", data gradient in the lanes" if lanes else "") + back)
    paths = {d.name: path(k, layer) for k, (d, layer) in enumerate(zip(net.defs, net.layers))
             if getattr(layer, "path_taken", None)}
    out(f"Kernels: {simd.cpu_model()}, {simd.VECTOR_BYTES}-byte vectors ({width}{forced}); convolution tiles "
        f"{simd.BCAST_MR} rows x 3 vectors (forward), {simd.PIX_MR} pixels x {simd.PIX_NV} vectors (pixel tiles), "
        f"{simd.TAPS_KR} taps x {simd.TAPS_NV} vectors (weight gradient; {simd.TAPS_KR1} taps x 1 vector where the "
        f"filters fill one vector), {'/'.join(map(str, simd.LANES_WIDTHS))} channels x {simd.LANES_NB} vectors of "
        "images (images in the lanes), " + "/".join(f"{mr}x{nv}" for mr, nv in simd.CL_TILES) + " pixels x vectors "
        "(forward-only runs of convolutions, channels-last)")
    if paths:
        out("Convolution paths: " + ", ".join(f"{name} {path}" for name, path in paths.items()))
    relus = getattr(net, "_fused_relu", {})
    fused = [f"{net.defs[i].name} + {net.defs[j].name}" + (f" + {net.defs[relus[i][0]].name}" if i in relus else "")
             for i, (j, _) in getattr(net, "_fused", {}).items()]
    if fused:
        out(f"Fused in training (BatchNorm + Scale, and the in-place ReLU above them for {len(relus)}: one pass "
            f"forward, two backward; the table above times them apart): {len(fused)} pairs ({', '.join(fused[:3])}"
            f"{', ...' if len(fused) > 3 else ''})")
    return {"cpu": simd.cpu_model(), "vector_bytes": simd.VECTOR_BYTES, "bcast_rows": simd.BCAST_MR,
            "pixel_rows": simd.PIX_MR, "taps_rows": simd.TAPS_KR, "lanes_channels": list(simd.LANES_WIDTHS),
            "convolutions": paths, "fused": fused}


def _data_alone(net, iterations, out) -> list:
    """Each data layer that reads a source, run on its own: the batches it can deliver (read, decode, transform;
    a streamed source with its prefetch threads or processes) against what the net consumes."""
    rows = []
    for d, layer, top in zip(net.defs, net.layers, net.top_vecs):
        if not (layer.is_data and getattr(layer.p, "source", None)):
            continue
        n = max(iterations, 20)
        t = time.perf_counter()
        for _ in range(n):
            layer.forward([], top)
        each = (time.perf_counter() - t) / n
        batch = top[0].data.shape[0]
        how = "streamed" if getattr(layer, "reader", None) is not None else "in memory"
        rows.append({"name": d.name, "ms_per_batch": each * 1e3, "images_per_s": batch / each, "how": how})
        out(f"Data layer '{d.name}' alone ({how}): {each * 1e3:.3f} ms a batch ({batch / each:.0f} img/s)")
    return rows
