"""`run.py validate MODEL --summary`: per layer its type, top shapes, parameter count and activation
memory, with totals (like Keras's model.summary())."""
from __future__ import annotations

import math

from . import inplace
from .graph import as_list
from .net import Net


def summarize(net: Net) -> list[dict]:
    """One row per layer of the spec (inserted Splits are left out; they share their bottom's data). kept_bytes:
    the copies the net keeps for this layer's backward where a layer above overwrites its data in place
    (netspec/inplace.py; counted for every differentiable layer, as in a TRAIN net)."""
    keep = inplace.plan(net.defs, net.layers, net.shapes, [l.differentiable for l in net.layers])
    kept_by = {}
    for k, names in keep.reads.items():  # a copy read by several layers is counted at the first
        for b in names.values():
            kept_by.setdefault(b, k)
    rows = []
    for i, (d, layer) in enumerate(zip(net.defs, net.layers)):
        kept = sum(math.prod(keep.sizes[b][1]) for b, k in kept_by.items() if k == i)
        if d.node is None:
            continue
        tops = {}
        memory = saved = 0
        for j, t in enumerate(d.tops):
            tops[t] = list(net.shapes[t])
            size = math.prod(net.shapes[t]) * net.dtype.itemsize
            if d.in_place(j) is not None:  # in place reuses the bottom's memory
                saved += size
            else:
                memory += size
        params = sum(math.prod(shape) for shape, _ in layer.blob_shapes)
        row = {"name": d.name, "type": d.type, "bottoms": as_list(d.node.get("bottom")), "tops": tops,
               "params": params, "memory_bytes": memory, "in_place_saved_bytes": saved,
               "kept_bytes": kept * net.dtype.itemsize}
        if hasattr(layer, "T") and hasattr(layer, "gates"):  # a recurrent layer: what its axes mean
            row["note"] = (f"{layer.T} steps x {layer.N} sequences (time first), {layer.I} inputs -> {layer.H} "
                           f"hidden" + (", x_static" if layer.static else "")
                           + (", state carried across batches" if layer.p.expose_hidden else ""))
        rows.append(row)
    return rows


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_summary(rows: list[dict], name: str, phase: str) -> str:
    lines = [f'Net "{name}" ({phase})']
    head = f"{'Layer (type)':<32} {'Top: shape':<36} {'Params':>10} {'Memory':>11}"
    lines += ["=" * len(head), head, "=" * len(head)]
    for r in rows:
        tops = [f"{t}: {s}" for t, s in r["tops"].items()] or ["-"]
        label = f"{r['name']} ({r['type']})"
        lines.append(f"{label:<32} {tops[0]:<36} {r['params']:>10,} {_size(r['memory_bytes']):>11}")
        lines += [f"{'':<32} {t:<36}" for t in tops[1:]]
        if r.get("note"):
            lines.append(f"{'':<32} ({r['note']})")
    total_p = sum(r["params"] for r in rows)
    total_m = sum(r["memory_bytes"] for r in rows)
    saved = sum(r["in_place_saved_bytes"] for r in rows)
    kept = sum(r.get("kept_bytes", 0) for r in rows)
    lines += ["=" * len(head), f"Total params: {total_p:,} ({_size(total_p * 4)} as float32)",
              f"Activation memory: {_size(total_m)} (data; training holds as much again in diffs)"]
    if saved:
        net_saved = saved - kept
        lines.append(f"In-place layers save {_size(saved)} of data ({100 * saved / (saved + total_m):.0f}%) and as "
                     "much again of diffs")
        if kept:
            lines.append(f"Training keeps {_size(kept)} of copies for the backward of layers whose data a layer above "
                         "overwrites in place")
        lines.append(f"In all, in place saves {_size(net_saved + saved)} of {_size(2 * (saved + total_m))} of "
                     f"data and diffs in training ({100 * (net_saved + saved) / (2 * (saved + total_m)):.0f}%)")
    return "\n".join(lines)
