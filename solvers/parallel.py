"""Synchronous data-parallel training over MPI (as Caffe's multi-GPU training and Horovod).

`mpiexec -n K python run.py train SOLVER`: every rank builds the same TRAIN net from the same seed and
reads its own B rows (`batch_size`) of every global batch of K x B rows, in the order one process with
batch K x B would read them. After the forward/backward passes, one `Iallreduce` over a single fused
float32 buffer (every param's diff, then the loss and the stop/snapshot requests) sums the gradients; each
rank divides by K and applies the same update, so the weights stay identical without being sent. BatchNorm
statistics stay per rank (as in Caffe); rank 0 tests, logs, writes the metrics and the snapshots, and
sends the decisions its tests make (early stop, a plateau's lowered rate and restored weights).

A rank that stops answering (dead, stuck, or on a lost host) makes the others stop within `timeout`
seconds with an error naming it; MPI is then aborted so that `mpiexec` ends. MPI is imported only here,
and only when yaffe runs under an MPI launcher.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from netspec.errors import UserError
from .launch import launched_size

INSTALL = "pip install 'yaffe[mpi]' (mpi4py and the MPICH wheel; on a cluster, mpi4py built on the site's MPI)"
ALIVE_TAG = 7001


def world():
    """MPI's world communicator, or None when yaffe runs as one plain process. Errors come back as
    exceptions instead of aborting the job."""
    if launched_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError(f"this run was started by an MPI launcher with {launched_size()} ranks, but mpi4py is not "
                        f"installed; install it with {INSTALL}, or run without mpiexec") from None
    comm = MPI.COMM_WORLD
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    return comm


def trial_pool():
    """mpi4py's futures pool over MPI's world for `search --mpi`: a context that gives rank 0 the executor
    and keeps the other ranks serving trials (None there) until rank 0 leaves it."""
    size = launched_size()
    if size < 2:
        raise UserError(f"search --mpi runs trials on the ranks of an MPI job, but this is {size} process; start "
                        "it as mpiexec -n K python run.py search ... --mpi with K >= 2 (rank 0 hands out the "
                        "trials, ranks 1..K-1 run them), or use --jobs N for local processes")
    comm = world()
    from mpi4py.futures import MPICommExecutor
    return MPICommExecutor(comm, root=0)


def end_job(comm, error: BaseException, report) -> int:
    """A rank's training failed: report it (`report` prints it, returns the exit status) and end every rank.
    An error every rank meets alike (a spec error, divergence) is reported by rank 0 alone, which ends the job;
    any other ends it from here with MPI_Abort, after the launcher had time to forward the message."""
    from netspec.errors import SpecError
    from .watch import Diverged
    rank = comm.Get_rank()
    if rank and isinstance(error, (SpecError, Diverged)):
        return getattr(error, "exit_code", 2)
    code = report(error)
    print(f"rank {rank} of {comm.Get_size()} stops the job", file=sys.stderr, flush=True)
    if rank and isinstance(error, RankFailure):
        time.sleep(10)  # rank 0, if alive, first writes its snapshot and ends the job itself
    time.sleep(1)
    comm.Abort(code)
    return code


def agree_seed(comm, seed) -> int:
    """Rank 0's random_seed (a fresh one when unset) for every rank: the same initial weights and shuffles."""
    if seed is None or seed < 0:
        seed = int(np.random.SeedSequence().entropy % 2**31)
    return comm.bcast(int(seed), root=0)


class DataParallel:
    """The MPI side of one training run: shards the data, fuses the gradients, reduces them."""

    def __init__(self, comm, net, timeout: float = 300.0):
        from mpi4py import MPI
        self.MPI, self.comm, self.net, self.timeout = MPI, comm, net, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.iteration = 0
        for layer in net.layers:
            if hasattr(layer, "shard"):  # data layers: this rank's rows of every global batch
                layer.shard = (self.rank, self.size)
        self.reseed(0)
        # one buffer: every param's diff is a view into it, then [loss, stop, snapshot]
        params = [p for p in net.params if p.blob.diff.size]
        total = sum(p.blob.diff.size for p in params)
        self.buffer = np.zeros(total + 3, np.float32)
        start = 0
        for p in params:
            n = p.blob.diff.size
            view = self.buffer[start:start + n].reshape(p.blob.diff.shape)
            view[...] = p.blob.diff
            p.blob.diff = view
            start += n
        self.grads = self.buffer[:total]
        self.param_bytes = 4 * total
        self.bcast_weights()

    def reseed(self, iteration: int):
        """Per-rank random streams for augmentation and Dropout (the shuffle stays common to all ranks)."""
        for i, layer in enumerate(self.net.layers):
            if hasattr(layer, "shard"):
                layer.transform_rng = np.random.default_rng([self.net.seed, 2, i, self.rank, iteration])
            elif layer.rng is not None and self.rank:
                layer.rng = np.random.default_rng([self.net.seed, 1, i, self.rank, iteration])

    def bcast_weights(self, history=()):
        """Rank 0's weights (and optionally solver history) to every rank."""
        for p in self.net.params:
            self._wait(self.comm.Ibcast(p.blob.data, root=0), "broadcasting the weights")
        for h in history:
            self._wait(self.comm.Ibcast(h, root=0), "broadcasting the solver history")
        for layer in self.net.layers:  # BatchNorm statistics and other non-learned blobs start equal too
            if layer.statistics:
                for b in layer.blobs:
                    self._wait(self.comm.Ibcast(b.data, root=0), "broadcasting the statistics")

    def reduce(self, loss: float, stop: bool, snapshot: bool) -> tuple[float, bool, bool]:
        """Sum gradients, losses and requests over the ranks; returns the mean loss and whether any rank
        asked to stop or to snapshot (a signal reaches the ranks at different moments)."""
        self.iteration += 1
        tail = self.buffer[-3:]
        tail[0], tail[1], tail[2] = loss, float(stop), float(snapshot)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, self.buffer, op=self.MPI.SUM), "summing the gradients")
        self.grads *= np.float32(1.0 / self.size)
        return float(tail[0]) / self.size, tail[1] > 0, tail[2] > 0

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks (the loss of Caffe's extra forward pass after the last update)."""
        buf = np.array([value], np.float64)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), "averaging the final loss")
        return float(buf[0]) / self.size

    def bcast(self, obj):
        """A small Python object from rank 0 (the decisions of a test), pickled, through two Ibcasts."""
        import pickle
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == 0 else None
        size = np.array([data.size if data is not None else 0], np.int64)
        self._wait(self.comm.Ibcast(size, root=0), "waiting for rank 0's test")
        if data is None:
            data = np.empty(int(size[0]), np.uint8)
        self._wait(self.comm.Ibcast(data, root=0), "waiting for rank 0's test")
        return pickle.loads(data.tobytes())

    def _wait(self, req, what):
        """Complete a nonblocking MPI request, or name the ranks that did not answer within the timeout."""
        t0 = time.monotonic()
        pause = 0.0001
        while True:
            try:
                done, value = req.test()
            except self.MPI.Exception as e:
                self._fail(f"MPI failed while {what}: {e.Get_error_string()}")
            if done:
                return value
            if time.monotonic() - t0 > self.timeout:
                self._fail(f"no answer within {self.timeout:g} s while {what} at iteration {self.iteration}")
            if time.monotonic() - t0 > 0.2:  # MPI progresses only inside test(): spin first, then rest
                time.sleep(pause)
                pause = min(0.002, pause + 0.0001)

    def silent_ranks(self, wait: float = 2.0) -> list[int]:
        """Ranks that do not answer a direct message within `wait` seconds."""
        others = [r for r in range(self.size) if r != self.rank]
        for r in others:
            self.comm.isend(self.rank, dest=r, tag=ALIVE_TAG)
        heard, t0 = set(), time.monotonic()
        while len(heard) < len(others) and time.monotonic() - t0 < wait:
            for r in others:
                if r not in heard and self.comm.iprobe(source=r, tag=ALIVE_TAG):
                    self.comm.recv(source=r, tag=ALIVE_TAG)
                    heard.add(r)
            time.sleep(0.01)
        return [r for r in others if r not in heard]

    def _fail(self, message):
        silent = self.silent_ranks()
        who = (f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} of {self.size} stopped "
               "answering (dead, stuck or unreachable)" if silent else "the ranks disagree")
        failure = RankFailure(f"rank {self.rank}: {message}: {who}; the last snapshot is intact: resume from "
                              f"it with --snapshot (on any number of ranks)")
        print(failure, file=sys.stderr, flush=True)  # now: the launcher may kill this rank any moment
        failure.printed = True
        raise failure


class RankFailure(UserError):
    """Another rank died or hangs; mpiexec must be ended with MPI_Abort."""
