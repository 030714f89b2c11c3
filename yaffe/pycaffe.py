"""pycaffe's Python interface over yaffe's Net and Trainer, so that Caffe's scripts and notebooks run with
`import yaffe as caffe` as their only change.

    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].reshape(1, 3, 227, 227); net.reshape()
    out = net.forward(data=batch)          # {output name: array}
    solver = caffe.SGDSolver("solver.prototxt"); solver.step(100)

Blobs and params are live views of the net's arrays (writes reach the net), as in pycaffe.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np

from layers.python import PyBlob
from netspec.errors import UserError

TRAIN, TEST = 0, 1  # caffe.TRAIN, caffe.TEST
_PHASES = {TRAIN: "TRAIN", TEST: "TEST", "TRAIN": "TRAIN", "TEST": "TEST"}
_notes = set()


def _note(message):
    if message not in _notes:
        _notes.add(message)
        print(f"yaffe: {message}")


def set_mode_cpu():
    """Caffe's CPU mode: yaffe always runs on the CPU."""


def set_mode_gpu():
    """No effect: yaffe runs on the CPU (said once)."""
    _note("set_mode_gpu() has no effect: yaffe runs on the CPU")


def set_device(device_id):
    """No effect: yaffe runs on the CPU (said once)."""
    _note(f"set_device({device_id}) has no effect: yaffe runs on the CPU")


def set_random_seed(seed):
    """The seed of the fillers and data order of nets made after this call."""
    global _seed
    _seed = int(seed)


_seed = None


def has_nccl():
    """False: yaffe runs one process's threads, not NCCL's GPUs (run.py train --mpi for several processes)."""
    return False


_solver_count, _solver_rank = 1, 0


def solver_count():
    """Caffe's multi-GPU solver count (set_solver_count); 1 unless a script sets it."""
    return _solver_count


def set_solver_count(count):
    global _solver_count
    _solver_count = int(count)


def solver_rank():
    """Caffe's multi-GPU solver rank (set_solver_rank); 0 unless a script sets it."""
    return _solver_rank


def set_solver_rank(rank):
    global _solver_rank
    _solver_rank = int(rank)


def set_multiprocess(multiprocess):
    """No effect (Caffe's flag for its multi-GPU processes)."""


def init_log(level=0, stderr=False):
    """No effect: yaffe prints its own lines (Caffe's glog set-up)."""


def log(message):
    """Print a line, as Caffe's caffe.log writes one to its log."""
    print(message)


class NCCL:
    """Caffe's NCCL for python/train.py with one device: bcast() and the callbacks do nothing (one process holds every
    weight). With more than one solver (set_solver_count), a clear error: yaffe runs one process's threads, or
    several processes with `run.py train --mpi`."""

    def __init__(self, solver=None, uid=None):
        if _solver_count > 1:
            raise UserError(f"caffe.NCCL: {_solver_count} solvers (GPUs) asked for; yaffe has no NCCL and no GPUs: run "
                            "python/train.py with one device (--gpus 0: every core's threads train the batch), or "
                            "several processes with run.py train SOLVER --mpi (mpiexec -n N)")

    @staticmethod
    def new_uid():
        return b"yaffe-single-process"

    def bcast(self):
        """Nothing to broadcast: one process holds the weights."""

    def __call__(self, *args):
        """As a Net after_backward hook (layer_wise_reduce): nothing to reduce."""


class Timer:
    """caffe.Timer: start(), stop(), ms (the milliseconds between them, or since start() while running)."""

    def __init__(self):
        self._start = self._stop = None

    def start(self):
        self._start, self._stop = time.perf_counter(), None

    def stop(self):
        if self._start is not None:
            self._stop = time.perf_counter()

    @property
    def ms(self):
        if self._start is None:
            return 0.0
        return ((self._stop if self._stop is not None else time.perf_counter()) - self._start) * 1e3


def layer_type_list():
    """The registered layer types (caffe.layer_type_list())."""
    import layers
    return sorted(layers.REGISTRY)


class Blob(PyBlob):
    """pycaffe's Blob: `data`, `diff` (live arrays), `shape`, `count`, `num`/`channels`/`height`/`width`,
    `reshape(*shape)` (new zeroed arrays; Net.reshape() or the next forward reshapes the layers above).
    Assigning `blob.data[...] = x` writes into the net."""

    def __init__(self, blob):
        super().__init__(blob, fixed=False)

    def __repr__(self):
        return f"<Blob {self._blob.name} {list(self.shape)}>"


class LayerView:
    """pycaffe's view of a net's layer (net.layers): `type`, `blobs` (its learnable or statistics blobs)."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def type(self):
        """The layer's Caffe type name (Convolution, ...)."""
        return self._layer.type

    @property
    def blobs(self):
        """The layer's learnable (or statistics) blobs, live."""
        return [Blob(b) for b in self._layer.blobs]

    def __repr__(self):
        return f"<Layer {self._layer.name} ({self.type})>"


def _load_doc(model):
    from netspec.spec import load_net
    if not os.path.isfile(model):
        raise UserError(f"{model}: error: no such net file")
    return load_net(model)


def _weights(path):
    from solvers.snapshot import load_weights_file
    return load_weights_file(path)


def _chunk(rows, start, size):
    """{name: rows[start:start + size]}, the last batch padded with zeros to the size, as pycaffe pads it."""
    out = {}
    for k, v in rows.items():
        part = v[start:start + size]
        if len(part) < size:
            part = np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:], part.dtype)])
        out[k] = part
    return out


# pycaffe's TEST nets with weights up to this size run forward() forward-only (Net._forward_only); larger ones (VGG's
# 528 MB) layer by layer, as before, rather than keep a second copy of their weights to compare
FORWARD_ONLY_BYTES = 64 << 20


class Net:
    """pycaffe's Net: Net(model, phase), Net(model, weights, phase), Net(model, phase, weights=...), with
    level= and stages= as Caffe's NetState. `model`: a .prototxt or a yaffe .yaml; `weights`: a .caffemodel or a
    yaffe .weights.npz (layers matched by name)."""

    def __init__(self, model, *args, weights=None, phase=None, level=0, stages=(), _net=None):
        if _net is not None:  # a view of a net yaffe made (a solver's)
            self._net = _net
            return
        args = list(args)
        if args and isinstance(args[0], str):
            weights = args.pop(0)
        if args:
            phase = args.pop(0)
        if phase is None or args:
            raise TypeError("Net(model, phase), Net(model, weights, phase) or Net(model, phase, weights=...); "
                            "phase is caffe.TRAIN or caffe.TEST")
        if phase not in _PHASES:
            raise ValueError(f"phase must be caffe.TRAIN or caffe.TEST; received {phase!r}")
        model = os.fspath(model)
        from netspec.errors import SpecError
        from netspec.net import Net as _Net
        try:
            self._net = _Net(_load_doc(model), _PHASES[phase], model, seed=_seed, level=level, stages=tuple(stages))
        except SpecError as e:
            original = getattr(e, "original", None)
            if original is None:
                raise
            original.add_note(str(e))  # a Python layer's own exception, as pycaffe raises it
            raise original from None
        self._owned = True  # (forward_only: not a solver's net, whose flags its trainer sets)
        if weights:
            self.copy_from(weights)

    # ---- structure --------------------------------------------------------------------------

    @property
    def blobs(self) -> OrderedDict:
        """Blob name -> Blob, in the order the layers make them."""
        out = OrderedDict()
        for d, tops in zip(self._net.defs, self._net.top_vecs):
            for name, blob in zip(d.tops, tops):
                out.setdefault(name, Blob(blob))
        return out

    @property
    def params(self) -> OrderedDict:
        """Layer name -> [Blob] for layers with blobs (weights, bias; BatchNorm's statistics)."""
        return OrderedDict((name, [Blob(b) for b in layer.blobs])
                           for name, layer in zip(self._net.keys, self._net.layers) if layer.blobs)

    @property
    def layers(self):
        """The layers in order (each with .type and .blobs)."""
        return [LayerView(l) for l in self._net.layers]

    @property
    def _layer_names(self):
        return list(self._net.keys)

    @property
    def layer_dict(self) -> OrderedDict:
        """Layer name -> layer."""
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def inputs(self):
        """The tops of Input layers (Caffe's net inputs)."""
        return [t for d, l in zip(self._net.defs, self._net.layers) if l.type == "Input" for t in d.tops]

    @property
    def outputs(self):
        """The blobs no layer consumes (the net's outputs)."""
        return list(self._net.outputs)

    @property
    def top_names(self) -> OrderedDict:
        """Layer name -> its top blob names."""
        return OrderedDict((k, list(d.tops)) for k, d in zip(self._net.keys, self._net.defs))

    @property
    def bottom_names(self) -> OrderedDict:
        """Layer name -> its bottom blob names."""
        return OrderedDict((k, list(d.bottoms)) for k, d in zip(self._net.keys, self._net.defs))

    @property
    def phase(self):
        """caffe.TRAIN or caffe.TEST."""
        return TRAIN if self._net.phase == "TRAIN" else TEST

    @property
    def net(self):
        """yaffe's own Net underneath."""
        return self._net

    def _index(self, name, default):
        if name is None:
            return default
        if name not in self._net.keys:
            raise KeyError(f"no layer named {name!r} (layers: {', '.join(self._net.keys)})")
        return self._net.keys.index(name)

    # ---- running ----------------------------------------------------------------------------

    def _set(self, kwargs, what):
        blobs = self._net.blobs
        for name, value in kwargs.items():
            if name not in blobs:
                raise KeyError(f"no blob named {name!r} to set the {what} of (blobs: {', '.join(blobs)})")
            value = np.asarray(value)
            target = blobs[name].data if what == "data" else blobs[name].diff
            if value.shape != target.shape and value.shape[0] != target.shape[0]:
                raise ValueError(f"{what} for {name!r} has shape {list(value.shape)}; the blob is "
                                 f"{list(target.shape)} (reshape it first: net.blobs[{name!r}].reshape(...))")
            target[...] = value

    def _hooks(self, kind):
        return getattr(self, "_callbacks", {}).get(kind, ())

    def _add_hook(self, kind, run):
        if not hasattr(self, "_callbacks"):
            self._callbacks = {}
        self._callbacks.setdefault(kind, []).append(run)

    def before_forward(self, run):
        """Call run(layer index) before each layer's forward (in forward() and inside a solver's step(), as Caffe)."""
        self._add_hook("before_forward", run)

    def after_forward(self, run):
        """Call run(layer index) after each layer's forward."""
        self._add_hook("after_forward", run)

    def before_backward(self, run):
        """Call run(layer index) before each layer's backward (every layer, as Caffe: those without one too)."""
        self._add_hook("before_backward", run)

    def after_backward(self, run):
        """Call run(layer index) after each layer's backward (Caffe's NCCL object: nothing to reduce in one process)."""
        if isinstance(run, NCCL):
            return
        self._add_hook("after_backward", run)

    @property
    def blob_loss_weights(self) -> OrderedDict:
        """{blob name: its loss weight} (0 for the blobs that are not losses), as pycaffe."""
        weights = {id(blob): w for blob, w in self._net.loss_blobs}
        return OrderedDict((name, float(weights.get(id(blob), 0.0))) for name, blob in self._net.blobs.items())

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Set the input blobs given as keywords, run the layers from `start` to `end` (names, both included),
        and return {name: data} of the net's outputs (or of `end`'s tops) and of the `blobs` named."""
        self._set(kwargs, "data")
        net = self._net
        n = len(net.layers)
        i0, i1 = self._index(start, 0), self._index(end, n - 1)
        before, after = self._hooks("before_forward"), self._hooks("after_forward")
        whole = i0 == 0 and i1 == n - 1 and not before and not after
        if whole and self._forward_only():
            # as run.py predict runs it (BatchNorm folded, each layer bound to its blobs once): made again only
            # when some weight changed since the last pass (compared), every blob written as the layers would
            net.keep_for_backward, net.constant_weights = False, True
            if not net.keep_blobs:
                net.keep_blobs = list(net.blobs)
            if not net.weights_same():
                net.weights_changed()
            net.forward()
            self._unkept = True  # backward() runs it again, keeping what the layers' backward reads
            return self._outputs(end, i1, blobs)
        if self.__dict__.get("_unkept") is not None:
            net.keep_for_backward, net.constant_weights, self._unkept = True, False, None
        if net.constant_weights:  # the caller may have changed the weights since the folds were made
            net.weights_changed()
        if whole:
            net.forward()
        else:
            for i in range(i0, i1 + 1):
                for run in before:
                    run(i)
                self._net.forward_layer(i)
                for run in after:
                    run(i)
            self._net._kept = True
        return self._outputs(end, i1, blobs)

    def _outputs(self, end, i1, blobs):
        names = self.outputs if end is None else list(self._net.defs[i1].tops)
        return {name: self._net.blobs[name].data for name in list(names) + list(blobs or [])}

    def _forward_only(self) -> bool:
        """Whether a whole forward() runs forward-only: a TEST net built here (not a solver's) whose data layers
        (Input, or data layers: an evaluation loop over a TEST net's batches) all come first, no layer writing
        their tops in place, without Python layers, weights of up to FORWARD_ONLY_BYTES (Net.weights_same keeps a
        copy of them): backward() runs the layers after them again, keeping what the layers' backward reads
        (nothing there may run twice differently; the batch stays)."""
        net = self._net
        if not self.__dict__.get("_owned") or net.phase != "TEST":
            return False
        fit = self.__dict__.get("_fit")
        if fit is None:
            sources = [i for i, layer in enumerate(net.layers) if layer.is_source]
            tops = {t for i in sources for t in net.defs[i].tops}
            written = {t for i, d in enumerate(net.defs) if i not in sources for t in d.tops}
            weights = sum(b.data.nbytes for layer in net.layers for b in layer.blobs)
            fit = self._fit = sources == list(range(len(sources))) and not (tops & written) and not any(
                d.type == "Python" for d in net.defs) and weights <= FORWARD_ONLY_BYTES
            self._rerun_from = len(sources)
        return fit

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Set the output diffs given as keywords (loss tops get their loss weight, as in Caffe), run the backward
        of the layers from `start` down to `end` (names, both included), and return {name: diff} of the inputs
        (or of `end`'s bottoms) and of the `diffs` named. Param diffs accumulate, as in Caffe."""
        net = self._net
        if self.__dict__.get("_unkept"):  # the last forward kept nothing for a backward: again, keeping it
            net.keep_for_backward, net.constant_weights, self._unkept = True, False, None
            net.forward(start=self._rerun_from)  # (the data layers' tops as the last forward left them)
        for blob, w in net.loss_blobs:
            blob.diff[...] = w
        self._set(kwargs, "diff")
        n = len(net.layers)
        i0, i1 = self._index(start, n - 1), self._index(end, 0)
        before, after = self._hooks("before_backward"), self._hooks("after_backward")
        for k in range(i0, i1 - 1, -1):
            for run in before:
                run(k)
            if net.need_backward[k]:
                net.backward_layer(k)
            for run in after:
                run(k)
        names = self.inputs if end is None else list(net.defs[i1].bottoms)
        return {name: net.blobs[name].diff for name in list(names) + list(diffs or []) if name in net.blobs}

    def _batch(self, names):
        for name in names:
            if name in self._net.blobs and self._net.blobs[name].data.ndim:
                return self._net.blobs[name].data.shape[0]
        return 1

    def forward_all(self, blobs=None, **kwargs):
        """forward() over inputs of any number of rows, in batches of the net's batch size (the last padded);
        returns {name: all rows} of the outputs and of the `blobs` named."""
        names = list(self.outputs) + list(blobs or [])
        rows = {k: np.asarray(v) for k, v in kwargs.items()}
        if not rows:
            return {k: v.copy() for k, v in self.forward(blobs).items()}
        total = len(next(iter(rows.values())))
        size = self._batch(rows)
        parts = {name: [] for name in names}
        for s in range(0, total, size):
            out = self.forward(blobs, **_chunk(rows, s, size))
            for name in names:
                parts[name].append(np.array(out[name]))
        out = {}
        for name, p in parts.items():
            a = np.concatenate([x if x.ndim else x[None] for x in p])
            out[name] = a[:total] if a.shape[0] >= total and p[0].ndim else a
        return out

    def backward_all(self, diffs=None, **kwargs):
        """backward() over top diffs of any number of rows, batched as forward_all."""
        rows = {k: np.asarray(v) for k, v in kwargs.items()}
        if not rows:
            return {k: v.copy() for k, v in self.backward(diffs).items()}
        total, size = len(next(iter(rows.values()))), self._batch(rows)
        names = list(self.inputs) + list(diffs or [])
        parts = {name: [] for name in names}
        for s in range(0, total, size):
            chunk = {k: v[s:s + size] for k, v in rows.items()}
            out = self.backward(diffs, **chunk)
            for name in names:
                parts[name].append(np.array(out[name]))
        return {name: np.concatenate(p)[:total] for name, p in parts.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward() then backward() over rows of any number, in batches of the net's batch size (the last
        padded): the inputs given as keywords feed the forwards, the outputs given as keywords seed the backwards.
        Returns ({name: all rows} of the outputs and `blobs`, {name: all rows} of the input diffs and `diffs`)."""
        inputs = {k: np.asarray(v) for k, v in kwargs.items() if k in self.inputs}
        seeds = {k: np.asarray(v) for k, v in kwargs.items() if k in self.outputs and k not in inputs}
        unknown = set(kwargs) - set(inputs) - set(seeds)
        if unknown:
            raise KeyError(f"{sorted(unknown)}: neither inputs ({list(self.inputs)}) nor outputs "
                           f"({list(self.outputs)})")
        outs = {name: [] for name in list(self.outputs) + list(blobs or [])}
        grads = {name: [] for name in list(self.inputs) + list(diffs or [])}
        given = inputs or seeds
        total = len(next(iter(given.values()))) if given else None
        size = self._batch(given) if given else 1
        for s in range(0, total if total is not None else 1, size):
            for name, value in self.forward(blobs, **_chunk(inputs, s, size)).items():
                outs[name].append(np.array(value))
            for name, value in self.backward(diffs, **_chunk(seeds, s, size)).items():
                grads[name].append(np.array(value))

        def joined(parts):
            a = np.concatenate([x if x.ndim else x[None] for x in parts])
            return a[:total] if total is not None and parts[0].ndim and a.shape[0] >= total else a
        return ({k: joined(v) for k, v in outs.items() if v}, {k: joined(v) for k, v in grads.items() if v})

    def reshape(self):
        """Infer every shape again from the input blobs as they now are (Caffe's Net::Reshape)."""
        self._net.reshape()

    def clear_param_diffs(self):
        """Zero every param diff (Caffe's ClearParamDiffs): param diffs accumulate over backward calls."""
        self._net.clear_param_diffs()

    def set_input_arrays(self, data, labels):
        """Give the MemoryData layer its examples."""
        self._net.set_input_arrays(data, labels)

    # ---- weights ----------------------------------------------------------------------------

    def copy_from(self, path):
        """Weights from a .caffemodel (or a yaffe .weights.npz), matched by layer name; others are untouched."""
        path = os.fspath(path)
        self._net.load_weights(_weights(path), path)

    def save(self, path):
        """Write the weights: a Caffe .caffemodel (any name but .npz), or yaffe's .npz."""
        path = os.fspath(path)
        from solvers import snapshot as snap
        if path.endswith(".npz"):
            snap.save_npz(path, self._net.weights())
            return
        from netspec.caffemodel import caffemodel_bytes
        layers = [(k, l.type, [b.data for b in l.blobs]) for k, l in zip(self._net.keys, self._net.layers) if l.blobs]
        snap.atomic_write(path, caffemodel_bytes(self._net.name, layers))

    def save_hdf5(self, path):
        """Write the weights as Caffe's HDF5 (data/<layer>/<i>; extra hdf5)."""
        from solvers.snapshot import write_hdf5_weights
        write_hdf5_weights(os.fspath(path), self._net)

    def load_hdf5(self, path):
        """Weights from Caffe's HDF5 layout, matched by layer name."""
        from solvers.snapshot import read_hdf5_weights
        path = os.fspath(path)
        self._net.load_weights(read_hdf5_weights(path), path)

    def to_onnx(self, path, batch=None):
        """Write this net's graph with its weights as an ONNX model (run.py export; extra onnx)."""
        from netspec.onnx_export import export
        return export(self._net, os.fspath(path), batch=batch, out=lambda *a: None)

    def share_with(self, other: "Net"):
        """Use `other`'s weights for the layers of the same name (Caffe's ShareTrainedLayersWith)."""
        self._net.share_weights_from(other._net)

    def __repr__(self):
        return f"<Net {self._net.name} ({self._net.phase}), {len(self._net.layers)} layers>"


class Solver:
    """pycaffe's solvers: SGDSolver(path) and the others, or get_solver(path). `.net`, `.test_nets`, `.iter`,
    `.step(n)`, `.solve()`, `.snapshot()`, `.restore(state)`, `.apply_update()`, with the arithmetic of `run.py
    train` (yaffe's Trainer). The solver file's type wins; the class name only says what a script expects."""

    expects = None

    def __init__(self, path, *, quiet=False):
        from solvers.trainer import Trainer
        path = os.fspath(path)
        self._t = Trainer(path, out=(lambda *a: None) if quiet else print, share_diffs=False)  # Caffe's diffs
        if self.expects and self._t.cfg.type != self.expects:
            _note(f"{type(self).__name__}({os.path.basename(path)}): the file says type {self._t.cfg.type}; "
                  "that is what runs")
        self.net = Net(None, _net=self._t.net)
        self.test_nets = [Net(None, _net=n) for n in self._t.test_nets]
        self._begun = False

    @property
    def iter(self):
        """The iterations done."""
        return self._t.iter

    @property
    def type(self):
        """The solver type of the file (SGD, Adam, ...)."""
        return self._t.cfg.type

    @property
    def param(self):
        """The resolved solver settings (base_lr, max_iter, ...)."""
        return self._t.cfg

    def _begin(self):
        if not self._begun:
            self._t.begin(guard=False)
            self._begun = True

    def _hooks(self):
        """Run the training passes layer by layer through the Python Net where a script set hooks on it (Caffe calls
        them inside Step too); the usual passes otherwise."""
        net = self.net
        if any(net._hooks(k) for k in ("before_forward", "after_forward", "before_backward", "after_backward")):
            def step():
                net.forward()
                net.backward()
                return net._net.loss()
            self._t.hooked_step = step
        else:
            self._t.hooked_step = None

    def step(self, iters: int):
        """`iters` iterations (tests, displays and snapshots as the solver file says), as Caffe's Step."""
        self._begin()
        self._hooks()
        self._t.run(until=self._t.iter + int(iters))

    def solve(self, resume_file=None):
        """Train to max_iter (resuming from a snapshot when given), then Caffe's last snapshot and test."""
        if resume_file:
            self.restore(resume_file)
        self._begin()
        self._hooks()
        try:
            return self._t.run()
        finally:
            self._t.end()
            self._begun = False

    @property
    def lr(self):
        """The learning rate of this iteration (the lr policy at iter), as pycaffe's SGDSolver.lr."""
        return float(self._t.rate(self._t.iter))

    def add_callback(self, on_start, on_gradients=None):
        """Call on_start() at the start of each iteration (after the diffs are cleared and the test) and
        on_gradients() once its gradients are in the diffs (after iter_size passes), before the update: Caffe's
        solver callbacks, e.g. to read or change the gradients. add_callback(nccl), Caffe's multi-GPU form, is taken
        for one process (NCCL)."""
        if isinstance(on_start, NCCL):
            return
        self._t.callbacks.append((on_start, on_gradients))

    def share_weights(self, net):
        """Make `net` use this solver's net's weights for the layers of the same name (a test net of your own)."""
        net.share_with(self.net)

    def snapshot(self):
        """Write the snapshot of this iteration (the solver's snapshot_format)."""
        return self._t.snapshot()

    def restore(self, state):
        """Resume from a solver state: yaffe's .solverstate.npz or Caffe's .solverstate."""
        state = os.fspath(state)
        (self._t.restore_caffe if state.endswith((".solverstate", ".solverstate.h5")) else self._t.restore)(state)

    def apply_update(self):
        """One update from the diffs the net holds (after your own forward and backward), at the rate of this
        iteration; then the diffs are cleared and, unlike pycaffe's (which leaves that to Step), iter moves on,
        so that the lr policy and the momentum history advance as in `run.py train`."""
        t = self._t
        t.solver.apply_update(t.rate(t.iter), t.iter, lambda: None)
        t.iter += 1
        t.net.clear_param_diffs()

    def __repr__(self):
        return f"<{type(self).__name__} {self.type} at iteration {self.iter}>"


def _solver_class(name, kind):
    return type(name, (Solver,), {"expects": kind, "__doc__": f"pycaffe's {name}: a Solver whose file says type "
                                  f"{kind} (see Solver)."})


SGDSolver = _solver_class("SGDSolver", "SGD")
NesterovSolver = _solver_class("NesterovSolver", "Nesterov")
AdaGradSolver = _solver_class("AdaGradSolver", "AdaGrad")
RMSPropSolver = _solver_class("RMSPropSolver", "RMSProp")
AdaDeltaSolver = _solver_class("AdaDeltaSolver", "AdaDelta")
AdamSolver = _solver_class("AdamSolver", "Adam")


def get_solver(path):
    """The solver the file describes (caffe.get_solver)."""
    return Solver(path)
