"""The Net: layers in order, their blobs, forward and backward.

Built from a loaded spec for one phase: compile the graph (netspec.graph), run every
layer's setup to infer all shapes (no data is read), then allocate the blobs once. An
in-place layer's top is its bottom's Blob; a Split's tops share their bottom's data.
"""
from __future__ import annotations

import operator
import os
import threading
import time
from dataclasses import dataclass, field

import numba
import numpy as np

import layers
from layers.base import BatchSync, Blob, SharedBlob, resolve
from layers.cpu import ThreadChoice, num_threads, owned_ranges, zero_owned
from layers.fillers import fill
from .errors import Finding, LayerError, SpecError
from . import inplace
from .channels_last import chain_runs
from .graph import LayerDef, compile_net

_DATA = operator.attrgetter("data")


_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}  # (Net.weights_same)


@dataclass
class Param:
    """A learnable blob as the solver sees it."""

    layer: str
    index: int
    blob: Blob
    lr_mult: float
    decay_mult: float
    spec: dict = field(default_factory=dict)  # the param {...} entry it was made from

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.index}"


@dataclass
class WeightsMatch:
    """What Net.load_weights matched: `missing`, the net's layer defs with blobs the file holds none for (they keep
    their fillers' values); `unused`, the file's layer names this net has no layer for (Caffe: "Ignoring source
    layer")."""
    source: str
    missing: list
    unused: list

    def warning(self) -> str | None:
        """For a net used as trained (test, predict, export): the layers that did not get weights, or None."""
        if not self.missing:
            return None
        names = ", ".join(f"'{d.name}' ({d.type})" for d in self.missing[:5]) + (" ..." if len(self.missing) > 5
                                                                                 else "")
        other = (f"; the file has {', '.join(repr(n) for n in self.unused[:5])}, which this net does not use"
                 if self.unused else "")
        return (f"{len(self.missing)} layer(s) got no weights from {self.source}, which has no layer of their name: "
                f"{names}{other}. They keep their initial values (Caffe's default filler: zeros), so the outputs "
                "are not the trained net's; name them as in the file")


def _legacy(shape) -> tuple:
    """A shape without its leading 1s: Caffe's old (num, channels, height, width) blobs padded shapes with them."""
    shape = tuple(shape)
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def fold_batch_norm(conv, bn, scale=None):
    """(weights, bias) of `conv` with `bn` (stored statistics) and `scale` (per channel) after it folded in:
    y = ((conv(x) - mean) / sqrt(var + eps)) * gamma + beta = conv'(x), computed in float64."""
    mean_sum, var_sum, factor = (b.data for b in bn.blobs)
    f = 0.0 if factor[0] == 0 else 1.0 / float(factor[0])
    a = 1.0 / np.sqrt(var_sum.astype(np.float64) * f + bn.p.eps)
    b = -mean_sum.astype(np.float64) * f * a
    if conv.p.bias_term:
        b += conv.blobs[1].data * a
    if scale is not None:
        gamma = scale.blobs[0].data.astype(np.float64)
        a, b = a * gamma, b * gamma
        if scale.p.bias_term:
            b += scale.blobs[1].data
    w = conv.blobs[0].data
    dtype = w.dtype
    return (w * a.astype(dtype).reshape((-1,) + (1,) * (w.ndim - 1))).astype(dtype), b.astype(dtype)


_RESHAPED = object()  # what a call of Net._bound_calls returns when the net was reshaped above its layer


class NotSplittable(Exception):
    """Why a net cannot run its batch as slices (Net.replicate)."""


_flushed = threading.local()
_blas_restarted = []


def _flush_denormals_once():
    """Float32 denormals to zero in the thread that builds (and then runs) nets: see layers/cpu.py. The first
    net of the process also restarts OpenBLAS's threads from this thread, so that they flush too."""
    if not getattr(_flushed, "done", False):
        from layers.cpu import flush_denormals, use_own_threads
        if not _blas_restarted:
            use_own_threads()  # products on Numba's threads, OpenBLAS on its caller's (layers/cpu.py)
        flush_denormals(restart_blas=not _blas_restarted)
        _blas_restarted.append(True)
        _flushed.done = True


class Net:
    """A compiled net for one phase.

    Args: doc (a loaded net spec), phase ("TRAIN" | "TEST"), path (the spec file, for
    errors and relative data paths), seed (fillers and shuffling; None: random), dtype.
    """

    # True where nothing changes the weights between passes (run.py predict and test): the folds of a forward-only
    # net are then made once, not checked against their sources every pass
    constant_weights = False
    # True where nobody reads the blobs after a pass but the loss (the trainer's net, without debug_info or
    # monitor): the slices of a sequence batch (replicate) then copy back into it only their data tops (a
    # carried state) and the losses' bottoms (its checks of several losses), not every blob of the sequence
    lean_slices = False

    def __init__(self, doc: dict, phase: str = "TRAIN", path: str = "<net>", *, seed: int | None = None,
                 dtype=np.float32, level: int = 0, stages=(), allocate: bool = True, replica_of=None):
        _flush_denormals_once()
        if not hasattr(doc, "where"):  # a net built in Python: plain dicts
            from .loader import from_plain
            doc = from_plain(doc, path)
        self._phase, self.path, self.dtype = phase, path, np.dtype(dtype)
        self.doc, self.level, self.stages = doc, level, tuple(stages)
        self._replica = replica_of  # (parent net, r, k): see replicate()
        self.name = doc.get("name", os.path.basename(path))
        self.seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None or seed < 0 else int(seed)
        self.warnings: list[Finding] = []
        try:
            self.defs: list[LayerDef] = compile_net(doc, phase, level, stages, self.warnings)
            self.layers = []
            self.shapes: dict = {}
            self._setup_all(os.path.dirname(os.path.abspath(path)) if path != "<net>" else os.getcwd())
        except SpecError as e:
            error = SpecError(self.warnings + e.findings)
            error.original = getattr(self, "user_exception", None)  # a Python layer's own exception (pycaffe's API)
            raise error from None
        if replica_of is not None:
            self._allocate_replica(*replica_of, doc.get("force_backward", False))
        elif allocate:  # False: shapes only (validate, summary)
            self._allocate(doc.get("force_backward", False))

    # ---- construction ------------------------------------------------------------------

    def _setup_all(self, base_dir):
        seen: dict = {}
        self.keys = []  # a unique key per layer for weights and solver history: the name, then name@2, name@3
        for d in self.defs:
            seen[d.name] = seen.get(d.name, 0) + 1
            self.keys.append(d.name if seen[d.name] == 1 else f"{d.name}@{seen[d.name]}")
        findings, failed = [], set()
        from .loader import is_caffe
        caffe_file = bool(self.path) and is_caffe(self.path)
        for i, d in enumerate(self.defs):
            cls = layers.REGISTRY[d.type]
            if self._replica is not None and (cls.is_data or d.type == "Input"):  # the parent's data layer fills the whole batch
                parent, _, k = self._replica
                self.layers.append(parent.layers[i])
                for t in d.tops:
                    shape = list(parent.shapes[t])
                    shape[parent.batch_axes[t]] //= k
                    self.shapes[t] = tuple(shape)
                continue
            node = d.node or {}
            layer = cls(d.name, resolve(cls.fields, node.get(cls.param_block)), d.phase, self.dtype, d.spec())
            layer.base_dir, layer.net_dir = self._base_for(node, base_dir), base_dir
            layer.caffe_file = caffe_file  # (Caffe's defaults apply where it reads the net too)
            if layer.base_dir != base_dir:
                layer.relative_to = "the working directory, as in Caffe (or to the net file)"
            if cls.needs_rng:
                layer.rng = np.random.default_rng([self.seed, 1, i])
            self.layers.append(layer)
            if any(b in failed for b in d.bottoms):
                failed.update(d.tops)  # already reported upstream
                continue
            try:
                shapes = layer.setup([self.shapes[b] for b in d.bottoms])
                for j, spec in enumerate(d.params if layer.statistics else []):
                    if spec.get("lr_mult", 0) != 0:
                        raise LayerError(f"param {j} has lr_mult {spec['lr_mult']}, but the blobs of {d.type} are "
                                         "running statistics, not learned weights; set lr_mult: 0 or remove the "
                                         "param entries", "param")
            except LayerError as e:
                w = d.where(e.field)
                findings.append(Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): {e}"))
                failed.update(d.tops)
                self.user_exception = getattr(self, "user_exception", None) or getattr(e, "original", None)
                continue
            for t, s in zip(d.tops, shapes):
                self.shapes[t] = tuple(int(v) for v in s)
            for message, where, *severity in layer.warnings:  # (message, field[, "info"])
                w = d.where(where)
                self.warnings.append(Finding(w[0], w[1], w[2], severity[0] if severity else "warning",
                                             f"layer '{d.name}' ({d.type}): {message}"))
        if findings:
            raise SpecError(findings)

    def _base_for(self, node, base_dir):
        """Where a layer's relative paths (source, mean_file) start: the net file's folder for YAML; for a Caffe
        prototxt, the working directory as in Caffe, or the net file's folder where only the path from there
        exists (said once in an info line)."""
        from .loader import is_caffe
        if not is_caffe(self.path):
            return base_dir
        names = [v.get(k) for v in node.values() if isinstance(v, dict) for k in ("source", "mean_file")]
        names = [n for n in names if isinstance(n, str) and n and not os.path.isabs(n)]
        cwd = os.getcwd()
        if not names or any(os.path.exists(os.path.join(cwd, n)) for n in names):
            return cwd
        if all(os.path.exists(os.path.join(base_dir, n)) for n in names):
            from .errors import Finding
            w = node.where if hasattr(node, "where") else (self.path, 1, 1)
            self.warnings.append(Finding(w[0], w[1], w[2], "info", f"'{names[0]}' is not in the working directory "
                                         f"({cwd}), where Caffe looks; read from beside the net file instead"))
            return base_dir
        return cwd

    def _allocate(self, force_backward):
        self.blobs: dict[str, Blob] = {}
        self.bottom_vecs, self.top_vecs = [], []
        self.params: list[Param] = []
        self.loss_blobs: list[tuple[Blob, float]] = []
        shared: dict = {}
        zero_filled: set = set()  # ids of the param blobs a constant 0 filled
        rng = np.random.default_rng([self.seed, 0])
        for d, layer, key in zip(self.defs, self.layers, self.keys):
            bottoms = [self.blobs[b] for b in d.bottoms]
            tops = []
            for j, t in enumerate(d.tops):
                if d.in_place(j) is not None:
                    blob = bottoms[d.in_place(j)]            # in place
                elif d.type == "Split":
                    blob = Blob(t, (), self.dtype)
                    blob.data, blob.diff = bottoms[0].data, np.zeros_like(bottoms[0].data)
                elif getattr(layer, "shares_bottom", False):  # Flatten, Reshape: a view, as Caffe's ShareData
                    blob = Blob(t, (), self.dtype)
                    blob.data = bottoms[0].data.reshape(self.shapes[t])
                    blob.diff = bottoms[0].diff.reshape(self.shapes[t])
                else:
                    blob = Blob(t, self.shapes[t], self.dtype)
                self.blobs[t] = blob
                tops.append(blob)
                if d.loss_weights[j]:
                    self.loss_blobs.append((blob, d.loss_weights[j]))
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            for i, (shape, filler) in enumerate(layer.blob_shapes):
                spec = d.params[i] if i < len(d.params) else {}
                owner = shared.get(spec.get("name")) if spec.get("name") else None
                if owner is not None:
                    if owner.blob.shape != tuple(shape):
                        w = d.where("param")
                        raise SpecError([Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): "
                                        f"shared param '{spec['name']}' has shape {list(shape)} here but "
                                        f"{list(owner.blob.shape)} in layer '{owner.layer}'; shared params "
                                        "need equal shapes")])
                    for mult in ("lr_mult", "decay_mult"):
                        if mult in spec and mult in owner.spec and spec[mult] != owner.spec[mult]:
                            w = d.where("param")
                            raise SpecError([Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): "
                                            f"shared param '{spec['name']}' has {mult} {spec[mult]} here but "
                                            f"{owner.spec[mult]} in layer '{owner.layer}'; give it once, or the "
                                            "same value in both")])
                    layer.blobs.append(owner.blob)
                    continue
                blob = Blob(f"{key}/{i}", (), self.dtype)
                if not filler or (filler.get("type", "constant") == "constant" and not filler.get("value", 0)
                                  and "array" not in filler):
                    zero_filled.add(id(blob))
                try:
                    blob.data = fill(tuple(shape), filler, rng, self.dtype)
                except ValueError as e:
                    w = d.where()
                    raise SpecError([Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): param {i}: "
                                    f"{e}; choose another filler")]) from None
                blob.diff = np.zeros(shape, self.dtype)
                layer.blobs.append(blob)
                default = 0.0 if layer.statistics else 1.0
                p = Param(key, i, blob, float(spec.get("lr_mult", default)),
                          float(spec.get("decay_mult", default)), spec)
                self.params.append(p)
                if spec.get("name"):
                    shared[spec["name"]] = p
            if len(d.params) > len(layer.blob_shapes):
                w = d.where("param")
                raise SpecError([Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): "
                                f"{len(d.params)} param entries given but the layer has {len(layer.blob_shapes)} "
                                "learnable blobs; remove the extra entries")])
        self._flatten_params(zero_filled)
        consumed = {b for d in self.defs for b in d.bottoms}
        self.outputs = [t for d in self.defs for t in d.tops if t not in consumed]
        self.outputs = list(dict.fromkeys(self.outputs))
        self._plan_backward(force_backward)

    def source_batch_axes(self) -> tuple:
        """(the batch, {source top: its batch axis}): 0, or 1 for a sequence's (T, N, ...) read by a recurrent
        layer (or a top whose second axis alone is the batch's size)."""
        origin = {}
        for d in self.defs:
            if d.type == "Split":  # a Split's tops are its bottom
                origin.update((t, origin.get(d.bottoms[0], d.bottoms[0])) for t in d.tops)
        time_major = {origin.get(d.bottoms[j], d.bottoms[j]) for d, layer in zip(self.defs, self.layers)
                      for j in getattr(layer, "time_major_bottoms", ()) if j < len(d.bottoms)}
        tops = [(t, self.shapes[t]) for d, layer in zip(self.defs, self.layers) if layer.is_source for t in d.tops]
        batch = next((s[0] for t, s in tops if s and t not in time_major), None)
        batch = batch or next((s[1] for _, s in tops if len(s) > 1), None)
        return batch, {t: 1 if len(s) > 1 and (t in time_major or s[0] != batch) and s[1] == batch else 0
                       for t, s in tops}

    def replicate(self, k: int) -> list["Net"]:
        """k nets that each run 1/k of every batch, on row slices of this net's blobs (this net's data layers
        fill the whole batch), sharing its learnable blobs: replica 0 adds its gradients into this net's diffs,
        the others into their own; loss weights are divided by k, so the sum of the replicas' gradients is
        this net's. Raises NotSplittable, with the reason, where that would change a result. BatchNorm with
        batch statistics sums its statistics over the slices (Layer.sync: one BatchSync per layer, kept in
        `self.syncs`), so every slice normalizes with the whole batch's; each replica keeps its own running sums
        (`statistics`), all equal, copied back from replica 0."""
        batch, self.batch_axes = self.source_batch_axes()
        for d, layer in zip(self.defs, self.layers):
            for t in d.tops if layer.is_source else ():
                shape = self.shapes[t]
                n = shape[self.batch_axes[t]] if shape else None
                if n != batch or not n or n % k:
                    raise NotSplittable(f"top '{t}' of data layer '{d.name}' has shape {list(shape)}; the batch "
                                        f"({batch}) must be the first dimension of every data top (the second of "
                                        f"a sequence's, (T, N, ...)) and a multiple of {k}")
        along_0 = []  # layers working along axis 0: fine where that is a sequence's time axis (known from the slices)
        for d, layer in zip(self.defs, self.layers):
            if not layer.is_source and (reason := layer.batch_coupling()) is not None and not layer.syncable:
                w = d.where()
                error = NotSplittable(f"layer '{d.name}' ({d.type}, {w[0]}:{w[1]}:{w[2]}): {reason}")
                if getattr(layer, "axis", None) != 0 or not d.bottoms:
                    raise error
                along_0.append((d, error))
        if batch is None:
            raise NotSplittable("the net has no data layer")
        self.syncs = {}  # {layer index: BatchSync}, filled as the replicas are built
        try:
            nets = [Net(self.doc, self._phase, self.path, seed=self.seed, dtype=self.dtype, level=self.level,
                        stages=self.stages, replica_of=(self, r, k)) for r in range(k)]
        except (SpecError, NotSplittable) as e:  # a slice's shapes do not fit
            raise (along_0[0][1] if along_0 else NotSplittable(e.findings[-1].message if isinstance(e, SpecError)
                                                                 else str(e))) from None
        for d, error in along_0:
            if any(nets[0].shapes[b][:1] != self.shapes[b][:1] for b in d.bottoms):
                raise error
        for n in nets if getattr(self, "shared_diffs", 0) else ():
            n.share_diffs()
        for n in nets if getattr(self, "silenced", 0) else ():
            n.skip_silenced()
        return nets

    def _allocate_replica(self, parent: "Net", r: int, k: int, force_backward):
        """Blobs of replica r of k: rows [r*n, (r+1)*n) of the parent's blobs; blobs that do not scale with the
        batch (losses, metrics) are its own and `averaged` into the parent's after a pass. A sequence's blobs
        (T, N, ...) are split along N: the replica's are its own arrays (`strided`: a column slice of the
        parent's is not contiguous), copied in from a data layer's top before a pass and out to the parent's
        after it, so that the parent's blobs hold the whole batch as for rows."""
        self.blobs, self.bottom_vecs, self.top_vecs = {}, [], []
        self.params, self.loss_blobs, self.averaged, self.shared, self.statistics = [], [], [], [], []
        self.strided_in, self.strided = [], []  # [(own blob, the parent's, column slice)]
        own = set()
        by_blob = {id(p.blob): p for p in parent.params}
        for d, layer, twin in zip(self.defs, self.layers, parent.layers):
            bottoms = [self.blobs[b] for b in d.bottoms]
            tops = []
            for j, t in enumerate(d.tops):
                whole, shape = parent.blobs[t], self.shapes[t]
                n = shape[0] if shape else 0
                if d.in_place(j) is not None:
                    blob = bottoms[d.in_place(j)]
                elif bottoms and id(bottoms[0]) in own and (d.type == "Split" or getattr(layer, "shares_bottom",
                                                                                         False)):
                    blob = Blob(t, (), self.dtype)  # a view of this replica's own array
                    blob.data = bottoms[0].data if d.type == "Split" else bottoms[0].data.reshape(shape)
                    blob.diff = np.zeros(shape, self.dtype) if d.type == "Split" else bottoms[0].diff.reshape(shape)
                    own.add(id(blob))
                elif shape and whole.shape == (k * n,) + shape[1:]:
                    blob = Blob(t, (), self.dtype)
                    blob.data, blob.diff = whole.data[r * n:(r + 1) * n], whole.diff[r * n:(r + 1) * n]
                    blob.offset = r * blob.data.size
                elif len(shape) > 1 and whole.shape == (shape[0], k * shape[1]) + shape[2:]:
                    blob = Blob(t, shape, self.dtype)
                    blob.offset = r * blob.data.size
                    cols = slice(r * shape[1], (r + 1) * shape[1])
                    (self.strided_in if layer.is_source else self.strided).append((blob, whole, cols))
                    own.add(id(blob))
                elif whole.shape == shape:
                    blob = Blob(t, (), self.dtype)
                    blob.data, blob.diff = np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)
                    self.averaged.append((blob, whole))
                else:
                    raise NotSplittable(f"blob '{t}' has shape {list(whole.shape)} for the whole batch but "
                                        f"{list(shape)} for 1/{k} of it")
                self.blobs[t] = blob
                tops.append(blob)
                if d.loss_weights[j]:
                    self.loss_blobs.append((blob, d.loss_weights[j] / k))
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            if layer is not twin and layer.statistics and layer.batch_coupling() is not None:
                layer.blobs = [Blob(b.name, b.shape, self.dtype) for b in twin.blobs]  # this slice's running sums
                self.statistics += zip(layer.blobs, twin.blobs)
                if layer.syncable:
                    i = len(self.top_vecs) - 1
                    layer.sync = (r, parent.syncs.setdefault(i, BatchSync(k, 2 * layer.channels)))
            elif layer is not twin:
                layer.blobs = [SharedBlob(b, own_diff=r > 0) for b in twin.blobs]
                self.shared += layer.blobs
                for b, tb in zip(layer.blobs, twin.blobs):
                    if (p := by_blob.get(id(tb))) is not None:
                        self.params.append(Param(p.layer, p.index, b, p.lr_mult, p.decay_mult, p.spec))
        self.outputs = parent.outputs
        self._plan_backward(force_backward)

    def _plan_backward(self, force_backward):
        """Which layers run backward, and into which bottoms (Caffe's backward-need analysis)."""
        lr = {id(p.blob): p.lr_mult for p in self.params}
        needs: dict = {}
        self.need_backward, self.propagate = [], []
        for d, layer in zip(self.defs, self.layers):
            need_b = [needs.get(b, False) or force_backward for b in d.bottoms]
            if d.propagate_down is not None:
                need_b = [bool(v) for v in d.propagate_down]
            for j in layer.blocked_bottoms:  # never into labels or indices
                if j < len(need_b):
                    need_b[j] = False
            own = any(lr.get(id(b), 0) != 0 for b in layer.blobs)
            need = layer.differentiable and (any(need_b) or own or force_backward)
            self.need_backward.append(need)
            self.propagate.append(need_b if need else [False] * len(need_b))
            for t in d.tops:
                needs[t] = need
        contributes = {id(b) for b, _ in self.loss_blobs}
        for k in reversed(range(len(self.defs))):
            tops = self.top_vecs[k]
            if self.need_backward[k] and not force_backward and not any(id(t) in contributes for t in tops):
                self.need_backward[k] = False
                self.propagate[k] = [False] * len(self.propagate[k])
            if self.need_backward[k]:
                contributes.update(id(b) for b, p in zip(self.bottom_vecs[k], self.propagate[k]) if p)
        self._plan_keeps()
        # False skips those copies where no backward follows (a trainer's test nets, run.py test)
        self.keep_for_backward = True
        self._kept = False

    def release_buffers(self):
        """Free what only this net's own passes use (the copies for the backward, the layers' scratch): its batch
        now runs as slices (solvers/replicas.py), each with its own. A later pass of its own makes them again."""
        self._keeps, self._kept_arrays, self._backward_vecs, self._fused, self._fused_relu = {}, [], {}, {}, {}
        self._released, self._bound = True, None
        for layer in self.layers:
            if not layer.is_source:
                layer.release_buffers()

    def _plan_keeps(self):
        """The copies of values that a later layer overwrites and a backward reads (netspec/inplace.py)."""
        reuse = {}
        for (name, shape), array in zip(getattr(self, "keep_plan", inplace.Plan()).sizes, getattr(self, "_kept_arrays", [])):
            reuse.setdefault((name, tuple(shape)), []).append(array)
        self.keep_plan = inplace.plan(self.defs, self.layers, self.shapes, self.need_backward)
        self._keeps, stand_ins, self._kept_arrays = inplace.allocate(self.keep_plan, self.blobs, self.dtype, reuse)
        self._backward_vecs = {k: ([names.get(t, b) for t, b in zip(self.defs[k].tops, self.top_vecs[k])],
                                   [names.get(n, b) for n, b in zip(self.defs[k].bottoms, self.bottom_vecs[k])])
                               for k, names in stand_ins.items()}
        self._fused = self._plan_fusion()

    def _plan_fusion(self):
        """{BatchNorm index: (Scale index, copy)}: in training, a BatchNorm normalizing with the batch's statistics
        whose top the next layer, a per-channel Scale in place, scales (Caffe's ResNets) runs as one layer with
        it (BatchNorm.forward_scaled and backward_scaled): the normalized values go straight into `copy`, the
        copy of them the backwards read (netspec/inplace.py), and no pass runs for the Scale alone; nor for an
        in-place ReLU above them (`_fused_relu`: its forward in the same pass, its gradient made from the top diff
        within BatchNorm's two backward passes). The blobs, their diffs and the copy hold what the layers give run
        one by one. YAFFE_FUSE_BN=0: not fused; YAFFE_FUSE_BN_RELU=0: the ReLU runs alone."""
        fused, self._fused_relu = {}, {}  # {BatchNorm index: (ReLU index, negative slope)}: that ReLU runs with them
        if os.environ.get("YAFFE_FUSE_BN", "1") == "0":
            return fused
        relu = os.environ.get("YAFFE_FUSE_BN_RELU", "1") != "0"
        for i, (d, layer) in enumerate(zip(self.defs[:-1], self.layers[:-1])):
            if d.type != "BatchNorm" or layer.p.use_global_stats is not None or len(d.tops) != 1:
                continue
            t, sc, scale = d.tops[0], self.defs[i + 1], self.layers[i + 1]
            if not (sc.type == "Scale" and sc.bottoms == [t] and sc.tops == [t] and scale.p.axis == 1
                    and scale.p.num_axes == 1 and tuple(scale.view) == tuple(layer.view)
                    and self.need_backward[i] and self.need_backward[i + 1] and self.propagate[i + 1][0]):
                continue
            copy = [c for source, c in self._keeps.get(i, ()) if source is self.blobs[t].data]
            reads = self._backward_vecs.get(i + 1, ((), ()))[1]
            if len(copy) == 1 and reads and reads[0].data.base is copy[0].base is not None:  # the Scale reads it
                fused[i] = (i + 1, copy[0])
                r = i + 2  # and an in-place ReLU above, which reads its own top in the backward (no stand-in)
                if (relu and r < len(self.defs) and self.defs[r].type == "ReLU" and self.defs[r].bottoms == [t]
                        and self.defs[r].tops == [t] and self.need_backward[r] and self.propagate[r][0]
                        and r not in self._backward_vecs):
                    self._fused_relu[i] = (r, float(self.layers[r].p.negative_slope))
        return fused

    # ---- shapes that change between batches -------------------------------------------------

    def reshape(self, start: int = 0):
        """Caffe's Net::Reshape: infer the shapes again from the sources' tops as they now are (a blob reshaped
        from Python, a batch of images of another size, a Filter's selection), from layer `start` on, and
        reallocate only the blobs whose shape changed. Learnable blobs keep their values; their shapes must not
        change (an InnerProduct's input size, say), else a clear error."""
        if self._replica is not None or getattr(self, "syncs", None) is not None:
            from .errors import UserError
            raise UserError(f"net '{self.name}': a shape changed between batches, which a batch split over threads "
                            "cannot follow; run it on one thread (solver: threads: 1)")
        for k in range(start, len(self.layers)):
            d, layer, bottoms, tops = self.defs[k], self.layers[k], self.bottom_vecs[k], self.top_vecs[k]
            if layer.is_source:
                shapes = [t.data.shape for t in tops]
            else:
                try:
                    shapes = layer.reshape_tops([b.data.shape for b in bottoms])
                except LayerError as e:
                    w = d.where(e.field)
                    raise SpecError([Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): {e} "
                                             "(after a change of shape)")]) from None
                for i, ((shape, _), blob) in enumerate(zip(layer.blob_shapes, layer.blobs)):
                    if tuple(shape) != blob.data.shape:
                        w = d.where()
                        raise SpecError([Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): param {i} "
                                                 f"would need shape {list(shape)} for bottom shapes "
                                                 f"{[list(b.data.shape) for b in bottoms]}, but it holds "
                                                 f"{list(blob.data.shape)}; a reshape cannot change learned "
                                                 "weights: keep the input size the weights were made for")])
            self._retop(k, shapes)
        self._plan_keeps()

    def _retop(self, k, shapes):
        """Point layer k's top blobs at arrays of the given shapes (views and in-place tops follow their bottom)."""
        d, layer, bottoms = self.defs[k], self.layers[k], self.bottom_vecs[k]
        for j, (t, blob, shape) in enumerate(zip(d.tops, self.top_vecs[k], shapes)):
            shape = tuple(int(v) for v in shape)
            self.shapes[t] = shape
            if d.in_place(j) is not None:
                continue
            if d.type == "Split":
                blob.data = bottoms[0].data
                if blob.diff.shape != shape:
                    blob.diff = np.zeros(shape, self.dtype)
            elif getattr(layer, "shares_bottom", False):
                blob.data, blob.diff = bottoms[0].data.reshape(shape), bottoms[0].diff.reshape(shape)
            else:
                if blob.data.shape != shape:
                    blob.data = np.zeros(shape, self.dtype)
                if blob.diff.shape != shape:
                    blob.diff = np.zeros(shape, self.dtype)

    def _follow(self, i):
        """After layer i's forward: where it gave its tops another shape, reshape the layers above it."""
        d = self.defs[i]
        if all(blob.data.shape == self.shapes[t] for t, blob in zip(d.tops, self.top_vecs[i])):
            return False
        self._retop(i, [blob.data.shape for blob in self.top_vecs[i]])
        self.reshape(i + 1)
        return True

    @property
    def phase(self) -> str:
        """TRAIN or TEST. Setting it switches Dropout and BatchNorm (without use_global_stats) at once, like
        PyTorch's train()/eval(); the layers included were chosen when the net was built."""
        return self._phase

    @phase.setter
    def phase(self, value: str):
        if value not in ("TRAIN", "TEST"):
            raise ValueError(f"phase must be TRAIN or TEST; received {value!r}")
        self._phase = value
        for d, layer in zip(self.defs, self.layers):
            if not (d.node and "phase" in d.node):  # a layer's own phase field wins
                layer.phase = value

    @property
    def has_loss(self) -> bool:
        """Some top carries a loss weight (known before allocation)."""
        return any(w for d in self.defs for w in d.loss_weights)

    # ---- running -----------------------------------------------------------------------

    def forward(self, start: int = 0) -> float:
        """Run every layer (from layer `start` on: the layers before it have run, or their tops were set);
        returns the weighted loss sum(w * sum(top))."""
        replica = self._replica is not None
        if getattr(self, "_released", False) and self.keep_for_backward:
            self._released = False
            self._plan_keeps()
        keeps = self._keeps if self.keep_for_backward else {}
        folds, folded = self._folds() if not self.keep_for_backward else ({}, ())
        made_folds = self._folded_weights(folds) if folds else {}
        relus = {} if self.keep_for_backward else self._fold_relus
        adds = {} if self.keep_for_backward else self._fold_adds
        if start and folded:  # a layer folded into one before `start` (which does not run) runs itself
            folds = {i: c for i, c in folds.items() if i >= start}
            folded = {j for j in folded if self._fold_owner[j] >= start}
            relus = {i: v for i, v in relus.items() if i >= start}
            adds = {i: v for i, v in adds.items() if i >= start}
        for blob, whole, cols in getattr(self, "strided_in", ()):  # a replica's columns of a sequence
            blob.data[...] = whole.data[:, cols]
        if self.constant_weights and not self.keep_for_backward and not start:
            # on all the threads or on this one alone, whichever runs this net's passes faster (ThreadChoice)
            # (measured anew for new input shapes or thread counts; kept when only the weights changed: pycaffe's
            # forward calls weights_changed() every pass)
            calls = self._bound_calls(folds, folded, made_folds, relus, adds, replica)
            total, chooser = num_threads(), self.__dict__.get("_threads")
            key = (total, self._bound[5])  # (the data layers' top shapes when the calls were bound)
            if chooser is None or chooser.key != key:
                chooser = self._threads = ThreadChoice(key)
            threads = chooser.pick(total)
            if threads != total:
                numba.set_num_threads(threads)
            begun = time.perf_counter()
            try:
                first = 0
                while first is not None:  # again from the layer above one that reshaped the net
                    first = next((i + 1 for i, call in calls if i >= first and call() is _RESHAPED), None)
                    calls = self._bound_calls(folds, folded, made_folds, relus, adds, replica) if first else calls
            finally:
                if threads != total:
                    numba.set_num_threads(total)
            chooser.record(threads, total, time.perf_counter() - begun)
            self._kept = False
            self._strided_out("data")
            return self.loss()
        fused = self._fused if self.keep_for_backward else {}
        scaled = relued = None  # the indices of the Scale and ReLU its BatchNorm just ran (fused)
        for i, (layer, bottom, top) in enumerate(zip(self.layers, self.bottom_vecs, self.top_vecs)):
            made = None  # a copy this layer's forward wrote itself
            if i < start:
                continue
            if i in folds:
                layer.fold, layer.relu = made_folds[i], relus.get(i)
                if i in adds:  # it writes the Eltwise's top, the other bottom added
                    top, layer.residual = self._residual(adds[i])
                layer.forward(bottom, top)
                layer.fold = layer.relu = layer.residual = None
            elif i in relus:  # an Eltwise SUM applying the ReLU above it
                layer.relu = relus[i]
                layer.forward(bottom, top)
                layer.relu = None
            elif i in folded:
                continue
            elif i == scaled or i == relued:
                pass  # its BatchNorm ran it; the copies of its top below are made as after its own forward
            elif i in fused and not layer.global_stats:
                scaled, made = fused[i]
                relued, slope = self._fused_relu.get(i, (None, None))
                layer.forward_scaled(bottom, top, self.layers[scaled], made, slope)
            elif not (replica and layer.is_source):
                layer.forward(bottom, top)
                if layer.reshapes and self._follow(i):
                    keeps = self._keeps if self.keep_for_backward else {}
                    fused = self._fused if self.keep_for_backward else {}
            for source, copy in keeps.get(i, ()):
                if copy is not made:
                    np.copyto(copy, source)
        self._kept = bool(keeps)
        self._strided_out("data")
        return self.loss()

    def _source_tops(self):
        """The data layers' top blobs (their shapes key Net.forward's ThreadChoice)."""
        tops = self.__dict__.get("_sources_cache")
        if tops is None:
            tops = self._sources_cache = [t for layer, vec in zip(self.layers, self.top_vecs) if layer.is_source
                                          for t in vec]
        return tops

    def _residual(self, add):
        """(top, residual) for a convolution that writes the Eltwise SUM above it (Net._folds' adds): the Eltwise's
        top, and (the other bottom's array, the convolution's coefficient, the other's)."""
        j, side = add
        coeff = self.layers[j].coeff
        return self.top_vecs[j], (self.bottom_vecs[j][1 - side].data, float(coeff[side]), float(coeff[1 - side]))

    def _bound_calls(self, folds, folded, made_folds, relus, adds, replica):
        """[(layer index, callable)]: forward()'s loop for a forward-only net with constant weights, each layer's
        forward bound to its blobs once (Layer.bound_forward; batch 1 spends most of its time in the per-layer
        Python this saves), at its first call (the layers below it have run: a reshape from Python is followed).
        Made again when an array of a blob, the folds or the phase changed (a reshape, a blob reshaped from
        Python, weights_changed(), release_buffers()); a reshaping layer's call returns _RESHAPED when the layers
        above it were reshaped (their calls are then made again)."""
        state = self.__dict__.get("_bound")
        if state is not None and state[0] is (made_folds or None) and state[1] == self._phase and all(
                map(operator.is_, map(_DATA, state[2]), state[3])):  # (each blob's array as bound; 3x a generator)
            return state[4]
        blobs = list({id(b): b for vec in self.bottom_vecs + self.top_vecs for b in vec}.values())
        calls = []

        def binder(k, i, layer, bottom, top):
            def bind():
                fold, relu = made_folds.get(i), relus.get(i)
                top_, residual = self._residual(adds[i]) if i in adds else (top, None)
                if i in folds or relu is not None:
                    layer.fold, layer.relu, layer.residual = fold, relu, residual
                    try:
                        call = layer.bound_forward(bottom, top_)
                    finally:
                        layer.fold = layer.relu = layer.residual = None
                else:
                    call = None if layer.reshapes else layer.bound_forward(bottom, top_)
                call = call or self._unbound_call(i, layer, bottom, top_, i in folds, fold, relu, residual)
                calls[k] = (i, call)
                return call()
            return bind

        indices = [i for i, layer in enumerate(self.layers) if i not in folded and not (replica and layer.is_source)]
        runs = {k0: (k1, call) for k0, k1, call in chain_runs(self, indices, made_folds, relus, adds)}
        k = 0
        while k < len(indices):
            if k in runs:  # convolutions kept channels-last between them (netspec/channels_last.py)
                calls.append((indices[k], runs[k][1]))
                k = runs[k][0]
                continue
            i = indices[k]
            calls.append((i, binder(len(calls), i, self.layers[i], self.bottom_vecs[i], self.top_vecs[i])))
            k += 1
        self._bound = (made_folds or None, self._phase, blobs, [b.data for b in blobs], calls,
                       tuple(b.data.shape for b in self._source_tops()))
        return calls

    def _unbound_call(self, i, layer, bottom, top, folds, fold, relu, residual=None):
        """_bound_calls' call of a layer without a bound forward: forward() with its fold, ReLU and residual set as
        the loop in forward() sets them."""
        if folds or relu is not None:
            def call():
                if folds:
                    layer.fold, layer.residual = fold, residual
                layer.relu = relu
                layer.forward(bottom, top)
                layer.fold = layer.relu = layer.residual = None
        elif layer.reshapes:
            def call():
                layer.forward(bottom, top)
                return _RESHAPED if self._follow(i) else None
        else:
            forward = layer.forward

            def call():
                forward(bottom, top)
        return call

    def _folds(self):
        """Inference (no backward kept): {convolution index: (BatchNorm, Scale indices)} for each convolution whose
        top a BatchNorm with the stored statistics, then optionally a per-channel Scale, change in place (Caffe's
        ResNets): folded into the convolution's weights and bias for the pass, as ONNX Runtime does (the other
        convolutions have empty chains); and the indices of the layers folded so (skipped), with each in-place ReLU
        right after a chain, which the convolution applies as it writes its top (`_fold_relus`)."""
        if getattr(self, "_fold_phase", None) == self._phase:  # the phase decides BatchNorm's statistics
            return self._fold_plan
        folds = {}
        for i, (d, layer) in enumerate(zip(self.defs, self.layers)):
            if d.type != "Convolution" or layer.nd or len(d.bottoms) != 1:
                continue
            if i + 1 >= len(self.defs):
                folds[i] = ()
                continue
            bn, t = self.defs[i + 1], d.tops[0]
            if bn.type != "BatchNorm" or bn.bottoms != [t] or bn.tops != [t] or not self.layers[i + 1].global_stats:
                folds[i] = ()  # nothing to fold: the weights checked with the others, laid out once while unchanged
                continue
            chain = [i + 1]
            if i + 2 < len(self.defs):
                sc, scale = self.defs[i + 2], self.layers[i + 2]
                if (sc.type == "Scale" and sc.bottoms == [t] and sc.tops == [t] and scale.p.axis == 1
                        and scale.p.num_axes == 1):
                    chain.append(i + 2)
            folds[i] = tuple(chain)
        # {convolution or Eltwise SUM of two: the negative slope of the in-place ReLU right after it (after its
        # chain), which it applies as it writes its top}
        ends = {**{i: i + len(chain) for i, chain in folds.items()},
                **{i: i for i, (d, layer) in enumerate(zip(self.defs, self.layers)) if d.type == "Eltwise"
                   and layer.p.operation == "SUM" and len(d.bottoms) == 2 and d.tops[0] not in d.bottoms}}
        relus, relu_at = {}, {}
        for i, end in ends.items():
            j, t = end + 1, self.defs[i].tops[0]
            if j < len(self.defs) and self.defs[j].type == "ReLU" and self.defs[j].bottoms == self.defs[j].tops == [t]:
                relus[i] = float(self.dtype.type(self.layers[j].p.negative_slope))  # rounded as the ReLU's
                relu_at[i] = j
        adds = self._residual_adds(folds, ends, relus)
        for i, (j, _) in adds.items():  # the ReLU above the SUM now applied by the convolution
            if j in relus:
                relus[i], relu_at[i] = relus.pop(j), relu_at.pop(j)
        self._fold_relus, self._fold_adds = relus, adds
        self._fold_owner = {**{j: i for i, c in folds.items() for j in c}, **{r: i for i, r in relu_at.items()},
                            **{j: i for i, (j, _) in adds.items()}}
        self._fold_phase = self._phase
        self._fold_plan = folds, set(self._fold_owner)
        return self._fold_plan

    @property
    def keep_blobs(self) -> frozenset:
        """Blobs that a forward-only net must fill as the layers one by one would, though a folding leaves them
        unwritten (a convolution that writes the Eltwise SUM above it: `_residual_adds`); predict's named blobs.
        A forward(start=k) from a layer between such a convolution and its SUM reads the convolution's top as the
        last pass left it: name it here first."""
        return self.__dict__.get("_keep_blobs", frozenset())

    @keep_blobs.setter
    def keep_blobs(self, names):
        self._keep_blobs = frozenset(names)
        self._fold_phase = self._bound = None  # folded again at the next pass

    def _residual_adds(self, folds, ends, relus):
        """{convolution index: (Eltwise index, the convolution's side)} for ResNet's block end in a forward-only
        net: an Eltwise SUM of two whose one bottom is the top of a convolution (after its folded chain, without a
        ReLU) that nothing else reads, and whose other bottom is ready before that convolution runs: the
        convolution writes the SUM's top itself, the other bottom added (with the coefficients) as it writes each
        band of its top, and the ReLU above the SUM applied (as ONNX Runtime fuses Conv and Add). Its own top is
        then not written: blobs named in keep_blobs, and the net's outputs, are left out."""
        writers, readers = {}, {}
        for k, d in enumerate(self.defs):
            for b in d.bottoms:
                readers.setdefault(b, []).append(k)
            for t in d.tops:
                writers.setdefault(t, []).append(k)
        adds = {}
        for j, (d, layer) in enumerate(zip(self.defs, self.layers)):
            if not (d.type == "Eltwise" and layer.p.operation == "SUM" and len(d.bottoms) == 2
                    and d.tops[0] not in d.bottoms and d.bottoms[0] != d.bottoms[1]):
                continue
            t = d.tops[0]
            for side in (0, 1):
                a, b = d.bottoms[side], d.bottoms[1 - side]
                last = max((k for k in writers.get(a, ()) if k < j), default=-1)
                i = next((c for c in folds if ends[c] == last and self.defs[c].tops[0] == a), None)
                if i is None or i in relus or i in adds or a in self.keep_blobs or a in self.outputs:
                    continue
                if any(k != j and k not in folds[i] for k in readers.get(a, ())):
                    continue  # read by another layer
                if max((k for k in writers.get(b, ()) if k < j), default=-1) >= i:
                    continue  # the other bottom is not ready when the convolution runs
                if any(t in self.defs[k].bottoms or t in self.defs[k].tops for k in range(i, j)):
                    continue
                adds[i] = (j, side)
                break
        return adds

    def _folded_weights(self, folds):
        """{convolution index: (weights, bias)} with each chain of `folds` folded in. With constant_weights (run.py
        predict and test; the trainer's test nets within a test, after weights_changed()) they are made once;
        else remade for the chains whose source arrays changed since the last pass (weights change in place, from
        Python), compared with copies (one array_equal per array: 0.7 ms a pass on ResNet-20)."""
        state = self.__dict__.get("_fold_state")
        if self.constant_weights and state is not None and state["folds"] is folds:
            return state["made"]
        chains = [(i, (i,) + tuple(chain)) for i, chain in folds.items()]
        if state is None or state["folds"] is not folds:
            blobs = [[b for k in ks for b in self.layers[k].blobs] for _, ks in chains]
            state = self._fold_state = {"folds": folds, "blobs": blobs, "made": {}, "copies": [None] * len(chains)}
        for j, (i, ks) in enumerate(chains):
            copies = state["copies"][j]
            if copies is None or not all(np.array_equal(b.data, c) for b, c in zip(state["blobs"][j], copies)):
                state["made"][i] = fold_batch_norm(*(self.layers[k] for k in ks)) if len(ks) > 1 else \
                    self.layers[i].weights_and_bias()
                state["copies"][j] = None if self.constant_weights else [b.data.copy() for b in state["blobs"][j]]
        return state["made"]

    def weights_same(self) -> bool:
        """Whether every layer's blobs (weights, BatchNorm's statistics) hold the values of the last call (copies
        kept, bit patterns compared: ~25 us a pass on resnet_fashion's 78,000 values, where array_equal took 0.7
        ms on ResNet-20's); False at the first call and after any change, the copies then refreshed. pycaffe's
        forward asks before each pass of a forward-only net, whose folds and bound calls weights_changed() makes
        again (~0.6 ms)."""
        from numba.typed import List
        from layers.kernels import refresh_copies
        arrays = [b.data for layer in self.layers for b in layer.blobs]
        state = self.__dict__.get("_weights_seen")
        if state is None or len(state[0]) != len(arrays) or any(a is not b for a, b in zip(arrays, state[0])):
            sizes = {a.dtype.itemsize for a in arrays}
            if len(sizes) > 1 or not all(a.flags.c_contiguous for a in arrays):  # (none of yaffe's nets)
                self._weights_seen = None
                return False
            if arrays:
                bits = _BITS[sizes.pop()]
                views = List([a.reshape(-1).view(bits) for a in arrays])
                self._weights_seen = (arrays, views, np.concatenate(list(views)),
                                      np.cumsum([0] + [a.size for a in arrays]))
            else:
                self._weights_seen = (arrays, None)
            return False
        return state[1] is None or not refresh_copies(*state[1:])

    def weights_changed(self):
        """Make the folds of a forward-only net with constant_weights again at its next pass (the trainer calls it
        before each test: the weights trained since; pycaffe's forward before each pass)."""
        self._fold_state = self._bound = None

    def _strided_out(self, kind):
        """A replica: its columns of the sequence blobs into the parent's, so that they hold the whole batch (or
        only those the parent reads: lean_slices)."""
        out = getattr(self, "strided", [])
        if not out and (kind != "data" or not getattr(self, "strided_in", None)):
            return
        if out and self._replica[0].lean_slices:
            if not hasattr(self, "_read_by_losses"):
                read = {b for d, layer in zip(self.defs, self.layers) if layer.is_loss for b in d.bottoms}
                self._read_by_losses = [e for e in out if e[0].name in read]
            out = self._read_by_losses
        for blob, whole, cols in out + (getattr(self, "strided_in", []) if kind == "data" else []):
            getattr(whole, kind)[:, cols] = getattr(blob, kind)  # a data top too: a carried state written in place

    def forward_layer(self, i: int):
        """Layer i's forward alone, keeping what its backward and the backward below it need."""
        self.layers[i].forward(self.bottom_vecs[i], self.top_vecs[i])
        if self.layers[i].reshapes:
            self._follow(i)
        for source, copy in self._keeps.get(i, ()) if self.keep_for_backward else ():
            np.copyto(copy, source)

    def backward_layer(self, k: int):
        """Layer k's backward alone (the tops' diffs set), on the data its forward kept (netspec/inplace.py)."""
        tops, bottoms = self._backward_vecs.get(k, (self.top_vecs[k], self.bottom_vecs[k]))
        self.layers[k].backward(tops, self.propagate[k], bottoms)

    def loss(self) -> float:
        if not self.loss_blobs:
            return 0.0
        return float(sum(w * float(b.data.sum(dtype=np.float64)) for b, w in self.loss_blobs))

    def backward(self):
        """Seed each loss top's diff with its weight, then run backward in reverse order."""
        if self._backward_vecs and not self._kept:
            from .errors import UserError
            raise UserError(f"net '{self.name}' ({self._phase}): backward needs the copies its forward keeps for "
                            "layers whose data a later layer overwrites in place, and this net was told not to "
                            "keep them; set net.keep_for_backward = True before forward")
        for blob, w in self.loss_blobs:
            blob.diff[...] = w
        fused = {s: (k, copy) for k, (s, copy) in self._fused.items()  # {Scale: (BatchNorm, copy)}, batch statistics
                 if not getattr(self.layers[k], "used_global", True)}
        relus = {self._fused_relu[k][0]: k for k, _ in fused.values() if k in self._fused_relu}  # {ReLU: BatchNorm}
        for k in reversed(range(len(self.layers))):
            if self.need_backward[k]:
                tops, bottoms = self._backward_vecs.get(k, (self.top_vecs[k], self.bottom_vecs[k]))
                if k in fused or k in relus:  # a Scale or ReLU: its BatchNorm below runs their backwards
                    continue
                if k + 1 in fused and fused[k + 1][0] == k:
                    r = self._fused_relu.get(k)
                    self.layers[k].backward_scaled(tops, self.propagate[k], bottoms, self.layers[k + 1],
                                                   fused[k + 1][1], r and (self.top_vecs[r[0]][0].data, r[1]))
                else:
                    self.layers[k].backward(tops, self.propagate[k], bottoms)
        self._strided_out("diff")

    def forward_backward(self) -> float:
        loss = self.forward()
        self.backward()
        return loss

    def _flatten_params(self, zero_filled=()):
        """Put every param's data, and every param's diff, into one array each (`param_data`, `param_diff`), in
        the order of `params`; the blobs hold views. The solver then updates them all in one pass and the diffs
        are cleared in one (solvers/rules.py)."""
        total = sum(p.blob.data.size for p in self.params)
        self.param_data, self.param_diff = np.zeros(total, self.dtype), np.zeros(total, self.dtype)
        start = 0
        for p in self.params:
            n, shape = p.blob.data.size, p.blob.data.shape
            data = self.param_data[start:start + n].reshape(shape)
            if id(p.blob) not in zero_filled:  # (zeros are there already: their pages stay untouched until written,
                data[...] = p.blob.data        # e.g. by the weights a deploy net loads)
            p.blob.data, p.blob.diff = data, self.param_diff[start:start + n].reshape(shape)
            start += n

    def clear_param_diffs(self):
        flat = getattr(self, "param_diff", None)
        if flat is not None and all(p.blob.diff.base is flat for p in self.params):
            if flat.size < 1 << 16:
                flat.fill(0)
                return
            key = (id(flat), num_threads())  # each thread clears the rows it computes (cpu.owned_ranges)
            owned = self.__dict__.get("_owned_diffs")
            if owned is None or owned[0] != key:
                start = flat.ctypes.data
                offsets = [(p.blob.diff.ctypes.data - start) // flat.itemsize for p in self.params]
                owned = self._owned_diffs = key, owned_ranges([p.blob.diff.shape for p in self.params], offsets,
                                                              key[1])[:3]
            zero_owned(flat, *owned[1])
            return
        for p in self.params:
            p.blob.diff[...] = 0

    # ---- weights -----------------------------------------------------------------------

    def set_input_arrays(self, data, labels, layer: str | None = None):
        """Give a MemoryData layer (the first, or the one named) its examples: data (N, C, H, W), labels (N,)."""
        from .errors import UserError
        targets = [l for l in self.layers if l.type == "MemoryData" and (layer is None or l.name == layer)]
        if not targets:
            raise UserError(f"the {self.phase} net has no MemoryData layer" + (f" named '{layer}'" if layer else ""))
        targets[0].set_arrays(data, labels)

    def layer_by_name(self, name):
        return next((l for l in self.layers if l.name == name), None)

    def share_diffs(self) -> int:
        """Let blob diffs whose spans in the backward do not meet share arrays (netspec/diffs.py); returns the
        bytes saved. For a net whose blob diffs nobody reads after a backward (the trainer's TRAIN net): after it,
        `blobs[name].diff` holds the gradient only while the backward uses it. Not for sequences split along N,
        nor with force_backward. The slices of such a net (replicate) share their own: slices of one array would
        meet across the slices, which run side by side."""
        if self.doc.get("force_backward", False) or any(getattr(l, "time_major_bottoms", None) for l in self.layers):
            return 0
        from . import diffs
        groups = diffs.plan(self.layers, self.top_vecs, self.bottom_vecs, self.need_backward, self.propagate,
                            self.loss_blobs)
        saved = diffs.share(groups, self.dtype)
        self._plan_keeps()  # the stand-ins of the backward hold the blobs' diffs
        self.shared_diffs = saved
        return saved

    def skip_silenced(self) -> int:
        """Let layers leave out the tops that only Silence reads (Slice: Caffe's LSTM idiom slices the last step
        off a sequence and silences the others; copying those 27 of 28 steps forward and their zero diffs back
        took ~5% of models/lstm_mnist's pass). Their diff in the bottom is zero, as Silence's backward makes it.
        For a net whose blobs nobody reads after a pass (the trainer's TRAIN net without debug_info): the data
        of a skipped top is then stale. Returns the number of tops left out (kept for the net's slices)."""
        readers: dict = {}
        for d in self.defs:
            for b in d.bottoms:
                readers.setdefault(b, set()).add(d.type)
        losses = {id(b) for b, _ in self.loss_blobs}
        skipped = 0
        for d, layer, tops in zip(self.defs, self.layers, self.top_vecs):
            if hasattr(layer, "silenced"):
                layer.silenced = tuple(j for j, t in enumerate(d.tops) if readers.get(t) == {"Silence"}
                                       and d.in_place(j) is None and id(tops[j]) not in losses)
                skipped += len(layer.silenced)
        left = {d.tops[j] for d, layer in zip(self.defs, self.layers) for j in getattr(layer, "silenced", ())}
        for d, layer in zip(self.defs, self.layers):  # nobody reads the diffs of those: Silence leaves them
            if d.type == "Silence":
                layer.unread = tuple(i for i, b in enumerate(d.bottoms) if b in left)
        self.silenced = skipped
        return skipped

    def share_weights_from(self, other: "Net"):
        """Use `other`'s learnable blobs for layers of the same name (Caffe's ShareTrainedLayersWith)."""
        for layer in self.layers:
            src = other.layer_by_name(layer.name)
            if src is None or not layer.blobs:
                continue
            for i, (mine, theirs) in enumerate(zip(layer.blobs, src.blobs)):
                if mine.shape != theirs.shape:
                    raise SpecError([Finding(self.path, 0, 0, "error",
                                     f"layer '{layer.name}' param {i} has shape {list(mine.shape)} in the "
                                     f"{self.phase} net but {list(theirs.shape)} in the {other.phase} net; "
                                     "a layer of the same name must have the same params in both phases")])
            layer.blobs[:] = src.blobs[:len(layer.blobs)]
        by_id = {id(p.blob): p for p in other.params}
        self.params = [by_id.get(id(p.blob), p) for p in self.params]

    def carried_states(self) -> dict:
        """{'layer/blob': blob} of the states a recurrent layer carries across batches (its final state named as
        its initial one, recurrent_param.expose_hidden): part of a run's state, kept in snapshots."""
        return {f"{key}/{t}": tops[j] for d, key, tops in zip(self.defs, self.keys, self.top_vecs)
                for j, t in enumerate(d.tops) if j and d.in_place(j) is not None and d.in_place(j) != j}

    def weights(self) -> dict:
        """{"layer/i": array} of every layer's blobs (for snapshots)."""
        return {f"{k}/{i}": b.data for k, l in zip(self.keys, self.layers) for i, b in enumerate(l.blobs)}

    def load_weights(self, arrays: dict, source: str) -> "WeightsMatch":
        """Copy blobs by layer name (Caffe's CopyTrainedLayersFrom); names not in this net are ignored. Returns
        which of this net's layers with blobs the file left out, and which of its layers this net does not use."""
        findings = []
        names = {k.rsplit("/", 1)[0] for k in arrays}
        if not names & {k for k, l in zip(self.keys, self.layers) if l.blobs}:
            from .errors import UserError
            raise UserError(f"{source}: error: no layer of this file ({', '.join(sorted(names)[:5]) or 'none'}) "
                            f"is in the net; weights are matched by layer name")
        for d, layer, lkey in zip(self.defs, self.layers, self.keys):
            for i, b in enumerate(layer.blobs):
                key = f"{lkey}/{i}"
                if key not in arrays:
                    continue
                a = arrays[key]
                if a.size and not np.isfinite(a).all():
                    w = d.where()
                    bad = int(np.count_nonzero(~np.isfinite(a)))
                    findings.append(Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): param {i} in "
                                            f"{source} holds {bad} NaN or Inf value(s) of {a.size}: the file comes from "
                                            "a run that diverged, or is damaged; use an earlier snapshot (a "
                                            "_lastgood one after a divergence)"))
                    continue
                if a.shape == b.shape or (a.size == b.count and _legacy(a.shape) == _legacy(b.shape)):
                    b.data[...] = a.reshape(b.shape)  # Caffe's legacy 4-D shapes (1, 1, O, I) load too
                    continue
                why = ""
                if d.type == "InnerProduct" and i == 0 and a.shape[0] == b.shape[0]:
                    why = (f" (its input size {b.shape[1]} comes from bottom '{d.bottoms[0]}' "
                           f"{list(self.shapes[d.bottoms[0]])}, the weights expect {a.shape[1]}: a different "
                           "input or crop size?)")
                w = d.where()
                findings.append(Finding(w[0], w[1], w[2], "error", f"layer '{d.name}' ({d.type}): param {i} has "
                                        f"shape {list(b.shape)} in the net but {list(a.shape)} in {source}{why}; "
                                        "to learn this layer from scratch instead, rename it"))
        if findings:
            raise SpecError(findings)
        mine = [(d, k) for d, layer, k in zip(self.defs, self.layers, self.keys) if layer.blobs]
        return WeightsMatch(source, [d for d, k in mine if k not in names],
                            sorted(names - {k for _, k in mine}))
