"""The training loop (Caffe's Solver::Step and Solve), tests, metrics and snapshots.

Per iteration: zero the param diffs; test on test_interval; iter_size forward/backward
passes (gradients sum); record the loss (computed before this iteration's update) on
display iterations; clip, normalize, regularize, update; iter += 1; snapshot on schedule.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections import deque

import numpy as np

from netspec.errors import Finding, SpecError, UserError
from netspec.graph import as_list
from netspec.progress import Progress
from netspec.loader import is_caffe
from netspec.net import Net
from netspec.spec import load_net, load_solver
from . import snapshot as snap
from .lr_policy import LearningRate
from .rules import SOLVERS

HYPER = ("type", "base_lr", "lr_policy", "gamma", "power", "stepsize", "stepvalue", "momentum", "momentum2",
         "rms_decay", "delta", "weight_decay", "regularization_type", "clip_gradients", "iter_size", "max_iter")


def _spec_hash(*docs) -> str:
    return hashlib.sha256(json.dumps(docs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Metrics:
    """JSON lines, one record per display iteration and per test, each flushed as written. Resuming at iteration
    N keeps the records before N (those from N on belong to the run being replaced): they are written to a new
    file that replaces the old one in one rename, so a crash at any moment leaves the history, then appended to."""

    def __init__(self, path: str | None, resume_from: int | None = None, warn=None, append: bool = False):
        self.path, self.file, self.warn, self.lost = path, None, warn, 0
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if resume_from is not None and os.path.exists(path):
                kept = []
                with open(path) as f:
                    for line in f:
                        try:
                            it = json.loads(line).get("iter", 0)
                            if isinstance(it, (int, float)) and it < resume_from:
                                kept.append(line if line.endswith("\n") else line + "\n")
                        except (ValueError, AttributeError):
                            pass  # a line torn by a crash, or not a record
                tmp = f"{path}.tmp{os.getpid()}"
                with open(tmp, "w") as f:
                    f.writelines(kept)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                self.file = open(path, "a")
            else:
                self.file = open(path, "a" if append else "w")  # append: the Python API, beside a run's records

        self.board = None  # a TensorBoard writer (open_tensorboard)

    def open_tensorboard(self, folder: str):
        """Also write every numeric value of the train, test and lr records as TensorBoard scalars (train/loss,
        test/accuracy, ...) under `folder`, through the tensorboard extra (tensorboardX)."""
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs tensorboardX: pip install 'yaffe[tensorboard]'; the metrics file "
                            "holds the same values as JSON lines") from None
        self.board = SummaryWriter(folder, flush_secs=5)

    def write(self, record: dict):
        if self.file:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as e:  # a full disk: training goes on, the records are lost until there is room
                self.lost += 1
                if self.lost == 1 and self.warn:
                    self.warn(f"Warning: cannot write the metrics to {self.path} ({e.strerror}); training goes on "
                              "without them until there is room (the snapshots are written separately)")
        if self.board is not None and record.get("phase") in ("train", "test", "lr"):
            group = "test" if record["phase"] == "test" else "train"
            for key, value in record.items():
                if key not in ("phase", "iter") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.board.add_scalar(f"{group}/{key}", value, record["iter"])

    def close(self):
        if self.file:
            self.file.close()
        if self.board is not None:
            self.board.close()


def say(*args):
    """Print a log line at once, also when stdout is a file or a pipe (tee, nohup)."""
    if Progress.shown:
        Progress.clear()
    print(*args, flush=True)


def say_glog(*args):
    """say() with each line prefixed as Caffe's glog prefixes its log lines (`I1204 12:07:44.033315 12123
    solver.cpp:0] `: severity and date, time, thread, source), which Caffe's tools/extra/parse_log.py and
    plot_training_log.py, and the scripts written for Caffe's logs, read (`run.py train --log-format glog`)."""
    import datetime
    import threading
    now = datetime.datetime.now()
    head = f"I{now:%m%d %H:%M:%S.%f} {threading.get_native_id()} solver.cpp:0] "
    say("\n".join(head + line for line in " ".join(str(a) for a in args).split("\n")))


class Trainer:
    """Builds the TRAIN net, the TEST net sharing its weights, and the solver, from a solver file.

    share_diffs: the TRAIN net's blob diffs share arrays by lifetime (netspec/diffs.py; PyTorch frees a gradient
    once used), so `net.blobs[name].diff` is valid only within the backward; False keeps one per blob (Caffe's,
    and what yaffe's pycaffe Solver does). Param diffs and what each loss sends back are always kept."""

    def __init__(self, solver_path: str, *, out=say, metrics_path: str | None = None, overrides: dict | None = None,
                 lr_scale: float | None = None, sigint_effect: str = "stop", sighup_effect: str = "snapshot",
                 sigterm_effect: str = "stop",
                 monitor: bool = False, comm=None, mpi_timeout: float = 300.0, replicas: int | None = None,
                 force: bool = False, tensorboard: str | None = None, precompile: bool = False,
                 share_diffs: bool = True, from_weights: bool = False):
        self.comm, self.rank = comm, (comm.Get_rank() if comm is not None else 0)
        self.force = force  # start over a run already at snapshot_prefix; resume a net edited past its state
        self.tensorboard = tensorboard
        self.out = out if self.rank == 0 else (lambda *a: None)  # under MPI only rank 0 speaks
        self.solver_path = solver_path
        self.solver_doc, self.cfg, self.net_path = load_solver(solver_path, overrides)
        if comm is not None:
            from .parallel import agree_seed
            self.cfg.random_seed = agree_seed(comm, self.cfg.random_seed)
        self.overrides = dict(overrides or {})
        self.lr_scale, self.lr_scale_given = (1.0 if lr_scale is None else float(lr_scale)), lr_scale is not None
        self.effects = {"SIGINT": sigint_effect, "SIGHUP": sighup_effect, "SIGTERM": sigterm_effect}
        self.monitor = monitor
        cfg = self.cfg
        self.net_doc = load_net(self.net_path)
        train_state = cfg.train_state or {}
        self.net = Net(self.net_doc, "TRAIN", self.net_path, seed=cfg.random_seed,
                       level=train_state.get("level", 0), stages=tuple(as_list(train_state.get("stage"))))
        # a cold start: a second process compiles kernels from the other end of the net (netspec/warmup.py)
        from netspec import warmup
        self._warmup = warmup.start(self.net, solver_path, overrides) if precompile and comm is None else None
        self.test_nets: list[Net] = []  # Caffe's order: test_net files, inline test_net_param, then `net`
        if cfg.test_iter and self.rank == 0:
            from netspec.spec import caffe_relative
            paths = [caffe_relative(solver_path, t) for t in cfg.test_net]
            paths += [f"{solver_path}#test_net_param" + (f".{i}" if i else "") for i in range(len(cfg.test_net_param))]
            paths += [self.net_path] * (len(cfg.test_iter) - len(paths))
            for k, test_path in enumerate(paths):
                test_doc = load_net(test_path) if test_path != self.net_path else self.net_doc
                test_state = (cfg.test_state or [])[k] if k < len(cfg.test_state or []) else {}
                test_net = Net(test_doc, "TEST", test_path, seed=self.net.seed, level=test_state.get("level", 0),
                               stages=tuple(as_list(test_state.get("stage"))))
                test_net.share_weights_from(self.net)
                # forward only: no copies for a backward (netspec/inplace.py); constant_weights only within a test
                test_net.keep_for_backward = False
                self.test_nets.append(test_net)
        self.test_net = self.test_nets[0] if self.test_nets else None  # the one early stop and plateau watch
        self._preflight(fillers=not (from_weights or cfg.weights))
        # blob diffs share arrays by lifetime (netspec/diffs.py: ResNet-20 at batch 128 holds 200 MiB less); not
        # where they are read after the pass (debug_info prints them; pycaffe's solver.net.blobs[...].diff)
        if share_diffs and not cfg.debug_info:
            self.net.share_diffs()
            self.net.skip_silenced()  # (tops only Silence reads: not computed)
            self.net.lean_slices = not self.monitor
        self.dp = None
        if comm is not None:  # before the solver: the param diffs become views of one fused buffer
            from .parallel import DataParallel
            self.dp = DataParallel(comm, self.net, mpi_timeout)
        from .replicas import start
        self.replicas, self.replicas_line = start(self.net, replicas)  # each batch as slices on the threads
        # the test nets too, when the train net is split (and they allow it); replicas=1 keeps them whole
        self.test_runners = [(start(t, None, held=self.replicas is not None)[0]
                              if self.replicas or replicas is None else None) or t for t in self.test_nets]
        self.solver = SOLVERS[cfg.type](self.net.params, cfg)
        self.lr = LearningRate(cfg)
        self.iter = 0
        self.losses = deque(maxlen=cfg.average_loss)
        self.callbacks = []  # (on_start, on_gradients) of pycaffe's Solver.add_callback
        self.hooked_step = None  # pycaffe's forward-backward with its Net's before/after hooks, where a script set some
        base = os.path.dirname(solver_path)
        prefix = cfg.snapshot_prefix or os.path.splitext(os.path.basename(solver_path))[0]
        self.prefix = os.path.join(base, prefix)
        if is_caffe(solver_path) and not os.path.isabs(prefix):
            # Caffe's rule: relative to the working directory, unless only the solver's folder has the prefix's folder
            folder = os.path.dirname(prefix)
            if not folder or os.path.isdir(folder) or not os.path.isdir(os.path.join(base, folder)):
                self.prefix = prefix
        self.metrics_path = (metrics_path or f"{self.prefix}_metrics.jsonl") if self.rank == 0 else None
        self.spec_hash = _spec_hash(self.solver_doc, self.net_doc)
        self.batch = next((self.net.shapes[d.tops[0]][0] for d, l in zip(self.net.defs, self.net.layers)
                           if l.is_data and self.net.shapes.get(d.tops[0])), 1)
        self.stop_requested = False
        self.snapshot_requested = False
        self.elapsed_base = 0.0  # seconds of training before this process (a resumed run's)
        self._last_rate = None   # the rate last written to the metrics
        self.metrics = Metrics(None)  # train() opens the file

    def _preflight(self, fillers: bool = True):
        """Every check of `run.py validate`, once, before the first iteration: warnings are printed,
        errors stop training before it starts. fillers: False where the weights will come from a file (--weights,
        --snapshot, the solver's weights), so that fillers left out are not warned of."""
        from netspec.checks import batchnorm_window_findings, data_findings, structure_findings, transform_findings
        doc, cfg = self.solver_doc, self.cfg
        findings = list(getattr(doc, "notes", [])) + list(getattr(self.net_doc, "notes", []))
        findings += list(self.net.warnings) + structure_findings(self.net, self.net_doc, True, fillers)
        findings += batchnorm_window_findings(self.net, cfg.max_iter)
        findings += data_findings(self.net)
        for test_net, iters in zip(self.test_nets, cfg.test_iter):
            findings += transform_findings(self.net, test_net)
            findings += test_net.warnings + data_findings(
                test_net, iters, doc.at("test_iter") if "test_iter" in doc else None)
        findings = list(dict.fromkeys(findings))
        for f in findings:
            if f.severity != "error":
                self.out(str(f))
        if any(f.severity == "error" for f in findings):
            raise SpecError(findings)

    # ---- state -------------------------------------------------------------------------

    def _stateful_layers(self):
        """Layers with a random generator or a data cursor, keyed by net and name (for snapshots)."""
        tagged = [("train", self.net)] + [("test" + (str(k) if k else ""), n) for k, n in enumerate(self.test_nets)]
        for tag, net in tagged:
            for layer in net.layers:
                if layer.rng is not None:
                    yield f"{tag}/{layer.name}", layer

    def _run_files(self) -> list[str]:
        """The files of a run at snapshot_prefix: its snapshots and its metrics."""
        import glob
        found = sorted(f for f in glob.glob(glob.escape(self.prefix) + "_iter_*") if ".tmp" not in f)
        if self.metrics_path and os.path.exists(self.metrics_path) and os.path.getsize(self.metrics_path):
            found.append(self.metrics_path)
        return found

    def _refuse_overwrite(self):
        """A new run (not a resume) where snapshot_prefix already holds one would overwrite its snapshots and its
        metrics: refused unless force."""
        found = self._run_files() if self.rank == 0 else []
        if not found or self.force:
            if found:
                self.out(f"Overwriting the run at {self.prefix} (--force): {len(found)} file(s)")
            return
        names = ", ".join(os.path.basename(f) for f in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4
                                                                      else "")
        states = [f for f in found if f.endswith(".solverstate.npz") and "_lastgood" not in f]
        resume = f"resume it with --snapshot {states[-1]}, " if states else ""
        raise UserError(f"{self.solver_path}: error: snapshot_prefix {self.prefix!r} already holds a run ({names}); "
                        f"{resume}start a new one with --set snapshot_prefix=..., or overwrite it with --force")

    def _lock(self):
        """<prefix>.lock with this process's PID while training: a second trainer on the same prefix stops; a
        lock left by a process that is gone is taken over with a note."""
        self._lock_path = None
        if self.rank:
            return
        path = f"{self.prefix}.lock"
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    with open(path) as f:
                        pid = int(f.read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                alive = False
                if pid > 0:
                    try:
                        os.kill(pid, 0)
                        alive = True
                    except ProcessLookupError:
                        pass
                    except PermissionError:
                        alive = True
                if alive and pid != os.getpid():
                    raise UserError(f"{self.solver_path}: error: another trainer (PID {pid}) is writing to "
                                    f"snapshot_prefix {self.prefix!r} ({path}); wait for it, stop it, or give this "
                                    "run its own prefix with --set snapshot_prefix=...") from None
                self.out(f"Note: taking over {path}, left by a trainer that is gone (PID {pid})")
                os.unlink(path)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self._lock_path = path
            return

    def _unlock(self):
        if getattr(self, "_lock_path", None):
            try:
                os.unlink(self._lock_path)
            except OSError:
                pass
            self._lock_path = None

    GOOD_SHARE = 0.02  # the most of the training time that copies of the last good state may take

    def _keep_good(self, loss: float):
        """Copy the weights that just gave a finite loss and gradient (with the solver's history and the step of
        the rate): what _write_last_good writes if training diverges later. Every iteration where the copy is cheap
        next to the iteration (small nets), else as often as keeps the copies within GOOD_SHARE of the time. Not
        while the loss is 10x its lowest so far: a run on its way up to Inf has finite but exploded weights (and
        momentum), and resuming those with a lower rate diverges again."""
        best = getattr(self, "_best_loss", None)
        self._best_loss = loss if best is None else min(best, loss)
        if best is not None and abs(loss) > 10 * abs(self._best_loss) + 1e-6:
            return
        now = time.perf_counter()
        if self._good is not None and now - self._good_t < self._good_cost / self.GOOD_SHARE:
            return
        self._good = (self.iter, {k: v.copy() for k, v in self.net.weights().items()},
                      [h.copy() for h in self.solver.history], self.lr.current_step, list(self.losses))
        self._good_t = time.perf_counter()
        self._good_cost = self._good_t - now

    def _write_last_good(self) -> str:
        """Write the last good state as <prefix>_iter_N_lastgood (weights checked finite first); returns the
        sentence for the stop message."""
        if self._good is None:
            return (" No earlier state is kept: the loss or gradient was non-finite at the first iteration "
                    f"({self.iter}); check the weights or data it starts from.")
        it, weights, history, step, losses = self._good
        bad = [k for k, v in weights.items() if not np.isfinite(v).all()]
        bad += [f"history {i}" for i, h in enumerate(history) if not np.isfinite(h).all()]
        if bad:
            return f" The last kept state (iteration {it}) holds non-finite values ({bad[0]}); none was written."
        for layer in self.net.layers:
            for i, b in enumerate(layer.blobs):
                b.data[...] = weights[f"{layer.name}/{i}"]
        for h, g in zip(self.solver.history, history):
            h[...] = g
        self.iter, self.lr.current_step, self.losses = it, step, type(self.losses)(losses, maxlen=self.losses.maxlen)
        path = self.snapshot("_lastgood")
        if path is None:  # an MPI rank other than 0: rank 0 writes it
            return ""
        return (f" The last good state, from iteration {it} (its weights gave a finite loss, within 10x the lowest, "
                f"and gradient), is in "
                f"{path}: resume from it with a lower rate, e.g. --snapshot {path} --set base_lr=...")

    def snapshot(self, tag: str = "") -> str | None:
        if self.rank:  # under MPI rank 0 writes for all
            return None
        meta = {"type": self.cfg.type, "lr_current_step": self.lr.current_step, "seed": self.net.seed,
                "lr_scale": self.lr_scale, "plateau_scale": self.lr.plateau_scale,
                "losses": list(self.losses), "spec_hash": self.spec_hash, "net": _plain(self.net_doc),
                "elapsed_s": (time.perf_counter() - self._t0) if getattr(self, "_t0", None) else self.elapsed_base,
                "solver": {k: getattr(self.cfg, k) for k in HYPER}, "rng": {}, "data": {}}
        extra = {}
        for key, layer in self._stateful_layers():
            state = layer.state_dict()  # a streamed source: as of the batches used, not those prefetched
            meta["rng"][key] = state.get("rng") or layer.rng.bit_generator.state
            if state:
                meta["data"][key] = {k: v for k, v in state.items() if k not in ("order", "rng")}
                extra[f"{key}/order"] = state["order"]
        if getattr(self, "ema", None) is not None:
            extra["ema"] = self.ema  # resume restores it
        for key, blob in self.net.carried_states().items():  # a recurrent state carried across batches
            extra[f"state/{key}"] = blob.data.copy()
        wpath, spath = snap.write(self.prefix, self.iter, self.net.weights(), self.solver.history_arrays(),
                                  meta, extra, tag)
        self.out(f"Snapshotting to {wpath}")
        if getattr(self, "ema", None) is not None and not tag:
            with self._ema_weights():
                epath = f"{self.prefix}_iter_{self.iter}{tag}.ema.weights.npz"
                snap.save_npz(epath, {k: v.copy() for k, v in self.net.weights().items()})
            self.out(f"Snapshotting the weights' moving average to {epath}")
        self.out(f"Snapshotting solver state to {spath}")
        if tag:
            return spath
        fmt = self.solver_doc.get("snapshot_format")
        if fmt is None and is_caffe(self.solver_path):
            fmt = "BINARYPROTO"  # Caffe's default: a Caffe user's next step reads the .caffemodel
        if fmt == "BINARYPROTO":  # Caffe's files too
            from netspec.caffemodel import caffemodel_bytes, solverstate_bytes
            model = f"{self.prefix}_iter_{self.iter}.caffemodel"
            layers = [(l.name, l.type, [b.data for b in l.blobs]) for l in self.net.layers if l.blobs]
            snap.atomic_write(model, caffemodel_bytes(self.net.name, layers))
            # learned_net: the model's path as written, as Caffe writes it (prefix + _iter_N.caffemodel, from the
            # working directory): `caffe train --snapshot` opens it from there
            snap.atomic_write(f"{self.prefix}_iter_{self.iter}.solverstate", solverstate_bytes(
                self.iter, model, self.solver.history, self.lr.current_step))
            self.out(f"Snapshotting to {model} (and its Caffe .solverstate)")
        elif fmt == "HDF5":  # Caffe's HDF5 layout, through the hdf5 extra
            model = f"{self.prefix}_iter_{self.iter}.caffemodel.h5"
            snap.write_hdf5(model, f"{self.prefix}_iter_{self.iter}.solverstate.h5", self.iter, self.net,
                            self.solver.history, self.lr.current_step)
            self.out(f"Snapshotting to {model} (and its Caffe .solverstate.h5)")
        return spath

    def restore_caffe(self, state_path: str):
        """Resume from Caffe's .solverstate (binary) or .solverstate.h5 (snapshot_format: HDF5), with the weights it
        names beside it."""
        from netspec.caffemodel import read_solverstate
        state = snap.read_hdf5_state(state_path) if state_path.endswith(".h5") else read_solverstate(state_path)
        model = os.path.join(os.path.dirname(state_path), os.path.basename(state["learned_net"]))
        if not os.path.isfile(model):
            raise UserError(f"{state_path}: error: it names the weights {state['learned_net']!r}, which are not "
                            f"beside it ({model}); put the {os.path.splitext(model)[1] or 'weights'} file next to the "
                            "solver state")
        self.net.load_weights(snap.load_weights_file(model), model)
        history = state["history"]
        if len(history) != len(self.solver.history):
            raise UserError(f"{state_path}: error: {len(history)} history blobs for a {self.cfg.type} solver that "
                            f"needs {len(self.solver.history)} (Caffe: 'Incorrect length of history blobs'); resume "
                            "with the solver type and net the state was written with")
        for mine, theirs in zip(self.solver.history, history):
            if mine.size != theirs.size:
                raise UserError(f"{state_path}: error: a history blob has {theirs.size} values where the net's "
                                f"param has {mine.size}; resume with the net the state was written with")
            mine[...] = theirs.reshape(mine.shape)
        self.iter, self.lr.current_step = int(state["iter"]), int(state["current_step"])
        self.out(f"Resumed from iteration {self.iter} of Caffe's {state_path} (weights {model}); data layers "
                 "start from their beginning, as in Caffe")
        self.out(f"Learning rate of the next iteration ({self.iter}): {self._peek_lr():g}")

    def restore(self, state_path: str):
        meta, weights, history, extra = snap.read(state_path)
        if meta.get("type") != self.cfg.type:
            raise UserError(f"{state_path}: error: the snapshot holds {meta.get('type')} history but the solver "
                            f"says type: {self.cfg.type}; use type: {meta.get('type')} to resume, or start "
                            f"{self.cfg.type} from the snapshot's weights with --weights {meta.get('weights')}")
        if int(meta["iter"]) > self.cfg.max_iter:
            w = self.solver_doc.at("max_iter")
            raise SpecError([Finding(w[0], w[1], w[2], "error", f"max_iter {self.cfg.max_iter} is smaller than "
                                     f"the iteration of the snapshot {state_path} ({meta['iter']}), so there is "
                                     f"nothing to train; raise max_iter above {meta['iter']}")])
        self._net_changes(meta, weights, state_path)  # before loading: a changed net fails there less clearly
        self.net.load_weights(weights, os.path.join(os.path.dirname(state_path), meta["weights"]))
        self.solver.load_history(history, state_path, partial=self.force)
        self.iter = int(meta["iter"])
        self.lr.current_step = int(meta.get("lr_current_step", 0))
        self.lr.plateau_scale = float(meta.get("plateau_scale", 1.0))
        self.losses.extend(meta.get("losses", []))
        self.elapsed_base = float(meta.get("elapsed_s", 0.0))
        if "ema" in extra and self.cfg.ema_decay:
            self.ema = np.array(extra["ema"], self.net.param_data.dtype)
        for key, blob in self.net.carried_states().items():
            saved = extra.get(f"state/{key}")
            if saved is not None and saved.shape == blob.data.shape:
                blob.data[...] = saved
                self.out(f"  the state '{key}' carried across batches restored")
            elif saved is not None:  # another batch size: the sequences of the snapshot are not this run's
                self.out(f"  the state '{key}' carried across batches starts from its initial value: the snapshot's "
                         f"is {list(saved.shape)}, this net's {list(blob.data.shape)} (another batch size)")
        for key, layer in self._stateful_layers():
            if key in meta.get("data", {}):  # first: loading the data draws a first shuffle
                layer.load_state_dict(dict(meta["data"][key], order=extra[f"{key}/order"]))
            if key in meta.get("rng", {}):
                layer.rng.bit_generator.state = meta["rng"][key]
        if not self.lr_scale_given:
            self.lr_scale = float(meta.get("lr_scale", 1.0))  # a scale given at an earlier resume stays
        self.changed = {k: (v, getattr(self.cfg, k)) for k, v in meta.get("solver", {}).items()
                        if getattr(self.cfg, k) != v}
        self.out(f"Resumed from iteration {self.iter} of {state_path}")
        for k, (old, new) in self.changed.items():
            self.out(f"  {k}: {old} -> {new}")
        if self.lr_scale != 1.0:
            self.out(f"  learning rate scaled by {self.lr_scale:g} from here on")
        self.out(f"Learning rate of the next iteration ({self.iter}): {self._peek_lr():g}")

    def _net_changes(self, meta: dict, weights: dict, state_path: str):
        """Say what changed in the net since the snapshot; refuse (unless force) where a layer with weights has none
        in the snapshot, or the snapshot's weights belong to a layer the net no longer has: the state would then
        not be the run's."""
        old = meta.get("net")
        if old is None:
            if meta.get("spec_hash") and meta["spec_hash"] != self.spec_hash:
                self.out("Note: the net or solver changed since the snapshot (its spec hash differs)")
            return
        before = {l.get("name"): l for l in old.get("layer", []) if isinstance(l, dict)}
        now = {l.get("name"): l for l in _plain(self.net_doc).get("layer", []) if isinstance(l, dict)}
        lines = [f"  layer '{n}' added" for n in now if n not in before]
        lines += [f"  layer '{n}' removed" for n in before if n not in now]
        for n in now:
            if n in before and now[n] != before[n]:
                diffs = _changed(before[n], now[n])
                lines += [f"  layer '{n}': {k}: {a} -> {b}" for k, a, b in diffs[:6]]
        if lines:
            self.out(f"The net changed since the snapshot {state_path}:")
            for line in lines:
                self.out(line)
        learned = {k for k, l in zip(self.net.keys, self.net.layers) if l.blobs}
        saved = {k.rsplit("/", 1)[0] for k in weights}
        fresh, orphan = sorted(learned - saved), sorted(saved - learned)
        if (fresh or orphan) and not self.force:
            what = (f"layer(s) {', '.join(fresh)} would start from their fillers" if fresh else "") + \
                   ("; " if fresh and orphan else "") + \
                   (f"the snapshot's weights of {', '.join(orphan)} would be dropped" if orphan else "")
            raise UserError(f"{state_path}: error: the net's learnable layers changed since this snapshot: {what}, so "
                            "the solver state no longer describes the run. Fine-tune instead with --weights "
                            f"{os.path.join(os.path.dirname(state_path), meta['weights'])}, or resume anyway with "
                            "--force")

    def _peek_lr(self) -> float:
        step = self.lr.current_step
        rate = self.rate(self.iter)
        self.lr.current_step = step  # peeking must not advance multistep
        return rate

    def rate(self, it: int) -> float:
        """The policy's rate times --lr-scale (in float32, as Caffe computes it)."""
        rate = self.lr(it)
        return rate if self.lr_scale == 1.0 else float(np.float32(rate * self.lr_scale))

    # ---- loop --------------------------------------------------------------------------

    def test(self):
        """Every test net in turn (Caffe's order); the first one's record drives early stop and plateau. With
        ema_decay the test nets run with the weights' moving average (the live weights are put back after)."""
        with self._ema_weights():
            records = [self._test_one(k, net, n) for k, (net, n) in enumerate(zip(self.test_nets, self.cfg.test_iter))]
        record = records[0]
        if getattr(self, "watch", None) is not None and self.losses:
            self.watch.after_test(self.iter, record["loss"], float(np.mean(self.losses)), self._snapshot_near)
            self.watch.check_chance(self.iter, self.cfg.max_iter, self.test_nets[0], record)
        self._after_test(record)
        return record

    @contextlib.contextmanager
    def _ema_weights(self):
        """The moving average in the params' place for the duration (test, the EMA snapshot)."""
        ema = getattr(self, "ema", None)
        if ema is None:
            yield
            return
        live = self.net.param_data.copy()
        self.net.param_data[...] = ema
        try:
            if self.cfg.ema_bn_batches:
                self._recompute_batch_norm(self.cfg.ema_bn_batches)
            yield
        finally:
            self.net.param_data[...] = live

    def _recompute_batch_norm(self, batches: int):
        """BatchNorm's stored statistics for the weights in place now (the average's): the plain mean over
        `batches` TRAIN forwards (moving_average_fraction 1 from zeroed sums), as PyTorch's update_bn; the
        training data's place and the random streams are put back after, so the run goes on as without it."""
        nets = [self.net] + (self.replicas.nets if self.replicas else [])
        norms = [l for n in nets for l in n.layers if l.type == "BatchNorm"]
        if not norms:
            return
        saved = []  # as a snapshot keeps them (a streamed source: as of the batches used, not those prefetched)
        for key, layer in self._stateful_layers():
            if key.startswith("train/"):
                state = layer.state_dict()
                saved.append((layer, state, state.get("rng") or layer.rng.bit_generator.state))
        fractions = [l.p.moving_average_fraction for l in norms]
        for layer in norms:
            layer.p.moving_average_fraction = 1.0
            for b in layer.blobs:
                b.data[...] = 0
        try:
            for _ in range(batches):
                (self.replicas or self.net).forward()
        finally:
            for layer, f in zip(norms, fractions):
                layer.p.moving_average_fraction = f
            for layer, state, rng in saved:
                if state:
                    layer.load_state_dict(state)
                layer.rng.bit_generator.state = rng

    def _test_one(self, k, net, n):
        runner = self.test_runners[k]
        runner.weights_changed()  # trained (or the average's) since the last test: the folds are made again
        net.constant_weights = True  # within this test: folds made once (the slices follow the net each pass)
        try:
            return self._test_batches(k, net, n, runner)
        finally:  # outside a test the weights may change (a step, or the caller's code): the folds made in the test
            net.constant_weights = False  # kept no copies, so the next pass makes them again, then compares

    def _test_batches(self, k, net, n, runner):
        """Test net k's n batches: its outputs averaged, printed and recorded."""
        self.out(f"Iteration {self.iter}, Testing net (#{k})")  # (Caffe's line: log parsers take the iteration here)
        sums: dict = {}
        loss = 0.0
        for i in range(n):
            loss += runner.forward()
            Progress.update(i + 1, n, "testing")
            for name in net.outputs:
                v = net.blobs[name].data.astype(np.float64)
                sums[name] = sums.get(name, 0) + v
        weights = {id(b): w for b, w in net.loss_blobs}
        record = {"phase": "test", "iter": self.iter, "loss": loss / n,  # elapsed: training's seconds, tests included
                  "elapsed_s": round(time.perf_counter() - self._t0 if getattr(self, "_t0", None) else
                                     self.elapsed_base, 3)}
        if len(self.test_nets) > 1:
            record["net"] = k
        for j, name in enumerate(net.outputs):
            value = sums[name] / n
            value = float(value) if value.ndim == 0 else value.tolist()
            w = weights.get(id(net.blobs[name]), 0)
            note = f" (* {w:g} = {w * value:g} loss)" if w and isinstance(value, float) else ""
            self.out(f"    Test net output #{j}: {name} = {value:g}{note}" if isinstance(value, float)
                     else f"    Test net output #{j}: {name} = {value}")
            record.setdefault(name, value)
        self.metrics.write(record)
        return record

    def _train_outputs(self, net):
        """Caffe's lines after a display's loss: this iteration's value of every output of the train net, a line
        each value, numbered across them, a loss's with its weight (`Train net output #0: loss = 0.19 (* 1 = 0.19
        loss)`; Caffe's tools/extra/parse_log.py reads its train columns from them)."""
        weights = {id(b): w for b, w in net.loss_blobs}
        index = 0
        for name in net.outputs:
            blob = net.blobs[name]
            w = weights.get(id(blob), 0)
            for v in np.asarray(blob.data, np.float64).reshape(-1):
                note = f" (* {w:g} = {w * v:g} loss)" if w else ""
                self.out(f"    Train net output #{index}: {name} = {v:g}{note}")
                index += 1

    def _after_test(self, record):
        """The plateau policy and early stopping, both driven by the test outputs."""
        cfg = self.cfg
        track = getattr(self, "_track", None)
        if track is None:
            track = self._track = {"best_loss": None, "since": 0, "best": None, "stop_best": None, "stop_since": 0}
        if cfg.lr_policy == "plateau":
            if track["best_loss"] is None or record["loss"] < track["best_loss"]:
                track["best_loss"], track["since"] = record["loss"], 0
                track["best"] = (self.iter, {k: v.copy() for k, v in self.net.weights().items()},
                                 [h.copy() for h in self.solver.history])
            else:
                track["since"] += 1
                if track["since"] >= cfg.patience and self.rate(self.iter) > cfg.min_lr:
                    best_iter, weights, history = track["best"]
                    self.net.load_weights(weights, "the best test's weights")
                    for h, saved in zip(self.solver.history, history):
                        h[...] = saved
                    self.lr.plateau_scale *= cfg.gamma if cfg.gamma is not None else 0.1
                    track["since"] = 0
                    self.out(f"Plateau: the test loss has not improved for {cfg.patience} tests; back to the weights "
                             f"of iteration {best_iter} (test loss {track['best_loss']:.4g}), learning rate now "
                             f"{self._peek_lr():g}")
                    self.metrics.write({"phase": "plateau", "iter": self.iter, "best_iter": best_iter,
                                        "lr": self._peek_lr()})
        stop = cfg.early_stop
        if stop:
            metric = stop["metric"]
            if metric not in record or not isinstance(record[metric], float):
                raise UserError(f"early_stop.metric '{metric}' is not a scalar output of the TEST net (outputs: "
                                f"{', '.join(k for k in record if k not in ('phase', 'iter'))})")
            value, falling = record[metric], "loss" in metric
            better = (track["stop_best"] is None or
                      (value < track["stop_best"][1] - stop.get("min_delta", 0) if falling
                       else value > track["stop_best"][1] + stop.get("min_delta", 0)))
            if better:
                track["stop_best"], track["stop_since"] = (self.iter, value), 0
            else:
                track["stop_since"] += 1
                if track["stop_since"] >= stop.get("patience", 3):
                    best_iter, best_value = track["stop_best"]
                    self.out(f"Early stop: {metric} has not improved for {track['stop_since']} tests; the best was "
                             f"{best_value:.4g} at iteration {best_iter}"
                             + (f" ({self._snapshot_near(best_iter)})" if self._snapshot_near(best_iter) else ""))
                    self.metrics.write({"phase": "early_stop", "iter": self.iter, "best_iter": best_iter,
                                        metric: best_value})
                    self.stop_requested = True
                    self.early_stopped = True

    def _share_test_decisions(self):
        """Under MPI: rank 0's test decided on early stopping or a plateau; every rank follows."""
        scale = self.lr.plateau_scale
        if self.rank == 0:
            self._decision = (self.stop_requested, scale, getattr(self, "_scale_before_test", scale) != scale)
        stop, self.lr.plateau_scale, restored = self.dp.bcast(getattr(self, "_decision", None))
        self.agreed_stop = self.agreed_stop or stop
        if restored:  # the plateau went back to the best weights and history
            self.dp.bcast_weights(self.solver.history)
        self._scale_before_test = self.lr.plateau_scale

    def _snapshot_near(self, it: int):
        """The snapshot written at iteration `it`, if there is one."""
        path = snap.paths(self.prefix, it)[0]
        return path if os.path.exists(path) else None

    def _on_signal(self, signum, frame):
        name = signal.Signals(signum).name  # SIGINT, SIGHUP or SIGTERM (what batch schedulers send before a kill)
        effect = self.effects[name]
        if effect == "stop":
            if self.stop_requested and name == "SIGINT":
                raise KeyboardInterrupt
            self.stop_requested = True
            self.stop_signal = signum
            self.out(f"{name}: finishing this iteration, then snapshotting and stopping"
                     + (" (Ctrl-C again aborts at once)" if name == "SIGINT" else ""))
        elif effect == "snapshot":
            self.snapshot_requested = True
            self.out(f"{name}: snapshotting after this iteration, then going on")

    def train(self, snapshot_path: str | None = None, weights_path: str | None = None) -> dict:
        """Train to max_iter (or a stop): run.py train. Returns the last display or test record."""
        self.begin(snapshot_path, weights_path)
        handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled} if _main_thread() else {}
        try:
            return self.run() or {}
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.end()

    def begin(self, snapshot_path: str | None = None, weights_path: str | None = None, *, guard: bool = True):
        """Everything before the first iteration: weights or a snapshot, the run's files and lock (guard: False
        for the Python API, which neither locks nor refuses an existing prefix, as pycaffe), the metrics file,
        the watch."""
        cfg = self.cfg
        if snapshot_path and weights_path:
            raise UserError("give --snapshot to resume training or --weights to fine-tune, not both")
        if not snapshot_path and not weights_path and cfg.weights:  # the solver's own weights field
            base = os.path.dirname(self.solver_path)
            weights_path = ",".join(os.path.join(base, w) for w in cfg.weights)
        if weights_path:
            loaded = set()
            for path in weights_path.split(","):  # several files: applied in order, as in Caffe
                match = self.net.load_weights(snap.load_weights_file(path), path)
                loaded |= {d.name for d in self.net.defs if d.name} - {d.name for d in match.missing}
                unused = ", ".join(repr(n) for n in match.unused)
                self.out(f"Fine-tuning from {path}" + ((f" (its layer {unused} is not in this net)" if len(
                    match.unused) == 1 else f" (its layers {unused} are not in this net)") if match.unused else ""))
            fresh = [d.name for d, layer in zip(self.net.defs, self.net.layers) if layer.blobs and d.name not in loaded]
            if fresh:
                self.out(f"Learned from scratch (no weights of that name in {weights_path}): "
                         f"{', '.join(repr(n) for n in fresh)}")
        if snapshot_path and snapshot_path.endswith(".caffemodel"):
            raise UserError(f"{snapshot_path}: error: this is a Caffe weights file, not a solver state; fine-tune "
                            f"from it with --weights {snapshot_path}, or resume from its .solverstate")
        if snapshot_path and snapshot_path.endswith((".solverstate", ".solverstate.h5")):
            self.restore_caffe(snapshot_path)
        elif snapshot_path:
            self.restore(snapshot_path)
        for path in snap.remove_stale_temporaries(self.prefix) if self.rank == 0 else []:
            self.out(f"Removed {path}, left by a run killed while writing it")
        if guard:
            if not snapshot_path:
                self._refuse_overwrite()
            self._lock()
        if snapshot_path and self.dp:
            self.dp.reseed(self.iter)
            self.dp.iteration = self.iter
        elif self.lr_scale_given:
            self.out(f"Learning rate scaled by {self.lr_scale:g}")
        self.metrics = Metrics(self.metrics_path, resume_from=self.iter if snapshot_path else None, warn=self.out,
                               append=not guard)
        board = self.tensorboard or (os.path.join(os.path.dirname(self.solver_path), cfg.tensorboard)
                                     if cfg.tensorboard else None)
        if board and self.rank == 0:
            self.metrics.open_tensorboard(board)
        self.metrics.write({"phase": "run", "iter": self.iter, "net": self.net.name, "resumed": bool(snapshot_path),
                            "solver": {k: v for k, v in _plain(self.solver_doc).items()
                                       if k not in ("net", "snapshot_prefix", "yaffe")}})
        self.out(f"Solving {self.net.name} ({cfg.type}, lr_policy {cfg.lr_policy}), "
                 f"{sum(p.blob.count for p in self.net.params):,} learnable parameters")
        if self.dp:
            self.out(f"Data-parallel over {self.dp.size} MPI ranks: batch {self.batch} per rank, effective batch "
                     f"{self.dp.size * self.batch} ({self.dp.param_bytes / 2**20:.2f} MiB of gradients summed per "
                     "iteration in one Allreduce)")
        if self.replicas_line:
            self.out(f"Threads: {self.replicas_line}")
        for net in [self.net] + self.test_nets:  # how each data source is read (streamed, prefetched)
            for layer in net.layers:
                if getattr(layer, "data_note", ""):
                    self.out(layer.data_note)
        from .watch import Watch
        self.watch = Watch(cfg, self.net, self.out, self.metrics, self.monitor)
        if self.replicas:  # the slices run the batch: their layers hold its probabilities
            self.watch.nets = self.replicas.nets
        self._good, self._good_t, self._good_cost, self._best_loss = None, 0.0, 0.0, None
        if cfg.ema_decay and getattr(self, "ema", None) is None:  # the average starts at the weights trained from
            self.ema = self.net.param_data.copy()
        self._started = True

    def _data_wait(self):
        """Seconds the TRAIN net's streamed data layers made it wait since the last call; None if none streams."""
        layers = [l for l in self.net.layers if getattr(l, "reader", None) is not None]
        if not layers:
            return None
        total = sum(l.data_wait for l in layers)
        for l in layers:
            l.data_wait = 0.0
        return total

    def run(self, until: int | None = None):
        """Iterations up to `until` (None: max_iter, then Caffe's end of a solve: the last snapshot and test).
        Keeps the work on an error of the user's (a snapshot) and the last good weights on a divergence."""
        from .watch import Diverged
        start_iter = self.iter
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the watch reports non-finite values
                return self._loop(until)
        except Diverged as e:
            said = str(e).rstrip()
            e.args = (said + ("" if said.endswith((".", "!", "?")) else ".") + self._write_last_good(),)
            raise
        except snap.DiskFull:
            raise  # the snapshot that failed is the one that would keep the work; the previous one is intact
        except UserError:
            if self.iter > start_iter:
                self.snapshot()  # keep the work done so far
            raise

    def end(self):
        """Close the metrics, the lock and the threads (and a compile helper still running)."""
        if getattr(self, "_warmup", None) is not None:
            from netspec import warmup
            warmup.stop(self._warmup)
            self._warmup = None
        self.metrics.close()
        self._unlock()
        for runner in [self.replicas] + self.test_runners:
            if hasattr(runner, "close"):
                runner.close()

    def _loop(self, until=None):
        cfg, net = self.cfg, self.net
        t0 = last_t = None
        last_iter = self.iter
        record = None
        snapped = False
        dp = self.dp
        step = self.replicas.forward_backward if self.replicas else net.forward_backward
        if self.hooked_step is not None:  # pycaffe's per-layer hooks on the solver's net: the whole net, layer by layer
            step = self.hooked_step
        self.agreed_stop = False  # under MPI: the stop every rank knows of (signals reach ranks at other times)
        stop_at = cfg.max_iter if until is None else until
        while self.iter < stop_at and not (self.agreed_stop if dp else self.stop_requested):
            net.clear_param_diffs()
            if (cfg.test_iter and cfg.test_interval and self.iter % cfg.test_interval == 0
                    and (self.iter > 0 or cfg.test_initialization)):
                if self.test_net:
                    self.test()
                if dp:
                    self._share_test_decisions()
                if self.agreed_stop if dp else self.stop_requested:  # early stopping
                    break
            if t0 is None:
                last_t = time.perf_counter()
                t0 = self._t0 = last_t - self.elapsed_base  # elapsed_s goes on after a resume
            for on_start, _ in self.callbacks:  # pycaffe's Solver.add_callback
                on_start()
            loss = sum(step() for _ in range(cfg.iter_size)) / cfg.iter_size
            if dp:  # sum the gradients (and losses, stop and snapshot requests) over the ranks
                loss, self.agreed_stop, agreed_snapshot = dp.reduce(loss, self.stop_requested,
                                                                    self.snapshot_requested)
                self.snapshot_requested = agreed_snapshot
            self.watch.after_backward(self.iter, loss)
            if not self.watch.suspect:
                self._keep_good(loss)
            self.losses.append(loss)
            rate = self.rate(self.iter)
            if self.solver.cycles_momentum:
                self.solver.momentum_now = self.lr.momentum(self.iter)
            if rate != self._last_rate and not (cfg.display and self.iter % cfg.display == 0):
                if self._last_rate is None or abs(rate - self._last_rate) > 0.01 * abs(self._last_rate):
                    self.metrics.write({"phase": "lr", "iter": self.iter, "lr": rate})  # for the steps of plots
                    self._last_rate = rate
            shown = bool(cfg.display and self.iter % cfg.display == 0)
            if shown and cfg.debug_info:
                self.watch.debug(self.iter, "Forward/Backward")
            if cfg.display and self.iter % cfg.display == 0:
                now = time.perf_counter()
                # iterations per second since the last display (the first: this iteration's passes)
                its = (max(self.iter - last_iter, 1)) / max(now - last_t, 1e-9)
                smoothed = float(np.mean(self.losses))
                images = self.batch * cfg.iter_size * (dp.size if dp else 1)
                speed = f"{its:.1f} iter/s, {its * images:.0f} img/s"
                waited = self._data_wait()
                if waited is not None:  # a streamed source: how long the iterations waited for its batches
                    per_iter = waited / max(self.iter - last_iter, 1)
                    speed += f", data wait {per_iter * 1e3:.1f} ms/iter ({100 * per_iter * its:.0f}%)"
                self.out(f"Iteration {self.iter} ({speed}), loss = {smoothed:.6g}")
                self._train_outputs(net)
                record = {"phase": "train", "iter": self.iter, "loss": smoothed, "lr": rate,
                          "elapsed_s": round(now - t0, 6), "images_per_s": its * images}
                if waited is not None:
                    record["data_wait_s"] = round(per_iter, 6)
                for k, name in enumerate(net.outputs):
                    blob = net.blobs[name]
                    if blob.data.ndim == 0 and name not in record:
                        record[name] = float(blob.data)
                self.metrics.write(record)
                self._last_rate = rate
                self.out(f"Iteration {self.iter}, lr = {rate:g}" + (f", momentum = {self.solver.momentum_now:.4g}"
                                                                    if self.solver.momentum_now is not None else ""))
                last_iter, last_t = self.iter, now
            for _, on_gradients in self.callbacks:
                on_gradients()
            it = self.iter
            grads = _layer_norms(net) if shown and self.watch.monitor else None  # before the diffs become steps

            def before_apply():
                self.watch.check_update(it, self.solver.step_finite)
                if grads is not None:
                    self.watch.monitor_layers(it, _layer_norms(net), grads)

            # the one-pass update leaves the old weights in the diffs: not where debug_info and monitor read steps
            self.solver.apply_update(rate, self.iter, before_apply,
                                     fused=not (shown and (cfg.debug_info or self.watch.monitor)))
            if getattr(self, "ema", None) is not None:  # the weights' moving average, in one pass over one array
                self.ema *= self.ema.dtype.type(cfg.ema_decay)
                self.ema += self.ema.dtype.type(1 - cfg.ema_decay) * self.net.param_data
            if shown and cfg.debug_info:
                self.watch.debug(self.iter, "Update")  # the params after the update, the diffs hold the steps
            self.iter += 1
            if self._warmup is not None:  # the first iteration ran: every kernel it needs is compiled
                from netspec import warmup
                warmup.finish(self._warmup, self.net)
                self._warmup = None
            Progress.update(self.iter, cfg.max_iter, "training")
            snapped = bool(cfg.snapshot and self.iter % cfg.snapshot == 0) or self.snapshot_requested
            if snapped:
                self.snapshot()
                self.snapshot_requested = False
        if until is not None:  # Caffe's Step(n): no end-of-solve snapshot, forward or test
            Progress.close()
            return record
        if cfg.snapshot_after_train and not snapped and (self.iter > 0 or self.stop_requested):
            self.snapshot()
        if self.agreed_stop if dp else self.stop_requested:
            return record
        if cfg.display and self.iter % cfg.display == 0 and self.iter > 0:
            loss = (self.replicas or net).forward()  # Caffe's extra forward-only pass after the last update
            if dp:
                loss = dp.mean(loss)  # each rank ran its share of the batch
            self.out(f"Iteration {self.iter}, loss = {loss:.6g}")
            record = {"phase": "train", "iter": self.iter, "loss": loss, "lr": self._peek_lr(),
                      "elapsed_s": round(time.perf_counter() - t0 if t0 else self.elapsed_base, 6),
                      "images_per_s": None}
            self.metrics.write(record)
        if self.test_net and cfg.test_interval and self.iter % cfg.test_interval == 0:
            record = self.test()
        Progress.close()
        self.out("Optimization Done.")
        return record


def _plain(doc):
    """A spec as plain JSON-able dicts and lists."""
    from netspec.loader import to_plain
    return json.loads(json.dumps(to_plain(doc), default=str))


def _changed(a, b, path="") -> list:
    """[(field path, before, after)] between two layer specs."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _changed(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if a == b else [(path, a, b)]


def _layer_norms(net) -> dict:
    """{layer name: L2 norm of its params' diffs}, in float64."""
    sums = {}
    for p in net.params:
        sums[p.layer] = sums.get(p.layer, 0.0) + float((p.blob.diff.astype(np.float64) ** 2).sum())
    return {k: v ** 0.5 for k, v in sums.items()}


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _original_unit_losses(net):
    """[(output name, EuclideanLoss layer, scale)] for losses whose targets a data layer normalized."""
    from netspec.checks import _producer
    found = []
    for k, (d, layer) in enumerate(zip(net.defs, net.layers)):
        if d.type != "EuclideanLoss":
            continue
        src_def, src, top_index = _producer(net, k, d.bottoms[1])
        scale = src.target_scale() if src is not None and top_index == 1 and hasattr(src, "target_scale") else None
        if scale is not None:
            found.append((f"{d.tops[0]}_original_units", layer, np.asarray(scale, np.float64)))
    return found


def _one_pass(net) -> tuple[int | None, str]:
    """(batches that read every data source of the net once, what that is), from the sources' sizes; None
    where no layer reads a source of known size."""
    longest, what = None, ""
    for layer in net.layers:
        if not hasattr(layer, "load") or not getattr(layer.p, "source", None):
            continue
        if not layer.loaded:
            layer.load()
        n = -(-layer.rows // layer.batch_size)
        if longest is None or n > longest:
            longest, what = n, f"the {layer.rows} examples of '{layer.p.source}' in batches of {layer.batch_size}"
    return longest, what


def _sum_outputs(net, originals, sums, out, i):
    """Add batch i's outputs (and the originals' losses, EuclideanLoss on normalized targets in the targets'
    units) to sums."""
    for name, layer, scale in originals:
        d = layer.d * scale.reshape((1,) + layer.d.shape[1:]) if np.ndim(scale) else layer.d * scale
        sums[name] = sums.get(name, 0) + float((d.astype(np.float64) ** 2).sum()) / (2 * layer.n)
    for name in net.outputs:
        v = net.blobs[name].data
        sums[name] = sums.get(name, 0) + v.astype(np.float64)
        if v.ndim == 0:
            out(f"Batch {i}, {name} = {float(v):g}")


def test_model(model_path: str, weights_path: str | None, iterations: int | None = None, out=say, level: int = 0,
               stages=()) -> dict:
    """`run.py test`: the TEST-phase net with the given weights, `iterations` batches (default: one pass over its
    data, else Caffe's 50); the mean of each output, and `weighted_loss` (sum of loss_weight * output)."""
    doc = load_net(model_path)
    net = Net(doc, "TEST", model_path, seed=0, level=level, stages=tuple(stages))
    net.keep_for_backward = False
    if weights_path:
        said = net.load_weights(snap.load_weights_file(weights_path), weights_path).warning()
        if said:
            out(f"Warning: {said}")
    net.constant_weights = True  # nothing changes them while testing: BatchNorm folds made once
    if not net.outputs:
        raise UserError(f"{model_path}: error: the TEST net has no outputs to report; add an Accuracy or loss "
                        "layer")
    one_pass, what = _one_pass(net)
    if iterations is None:
        iterations = one_pass or 50
        out(f"Testing {iterations} batches: " + (f"{what}, once" if one_pass else "Caffe's default (--iterations N)"))
    elif one_pass is not None and iterations > one_pass:
        out(f"Note: {iterations} batches read {what} {iterations / one_pass:.3g} times over (some examples count "
            f"more than others); --iterations {one_pass} reads them once")
    sums: dict = {}
    total = 0.0
    originals = _original_unit_losses(net)
    weights = {}
    for blob, w in net.loss_blobs:
        weights[blob.name] = weights.get(blob.name, 0.0) + w
    from .replicas import start
    runner = None if originals else start(net, None)[0]  # the batch as slices on the threads, where it pays
    try:
        for i in range(iterations):
            total += (runner or net).forward()
            Progress.update(i + 1, iterations, "testing")
            _sum_outputs(net, originals, sums, out, i)
    finally:
        if runner is not None:
            runner.close()
    result = {}
    for name in net.outputs + [o[0] for o in originals]:
        value = np.asarray(sums[name]) / iterations
        result[name] = float(value) if value.ndim == 0 else value.tolist()
        line = f"{name} = {result[name]:g}" if value.ndim == 0 else f"{name} = {result[name]}"
        if name in weights and value.ndim == 0:  # Caffe's "(* weight = contribution loss)"
            line += f" (* {weights[name]:g} = {weights[name] * result[name]:g} loss)"
        out(line)
    result["weighted_loss"] = total / iterations
    if len(weights) > 1 or any(w != 1 for w in weights.values()):
        out(f"Loss: {result['weighted_loss']:g} (the sum of loss_weight x output)")
    return result
