"""Update rules (Caffe's sgd_solvers). Per iteration, after the gradients are summed over iter_size passes:
clip (global L2 norm over all learnable diffs), divide by iter_size, add weight decay (L2: lambda*w, L1:
lambda*sign(w)), the solver's rule (which turns the diff into the step), w -= step.

g = regularized gradient, a = rate * lr_mult, t = iter + 1 (Adam):
SGD       v = mu*v + a*g; step = v                       (the rate sits inside v, as in Caffe)
Nesterov  v' = mu*v + a*g; step = (1 + mu)*v' - mu*v
AdaGrad   h += g^2; step = a*g / (sqrt(h) + delta)
RMSProp   h = rho*h + (1 - rho)*g^2; step = a*g / (sqrt(h) + delta)
AdaDelta  h = mu*h + (1 - mu)*g^2; u = g*sqrt((h2 + delta) / (h + delta)); h2 = mu*h2 + (1 - mu)*u^2; step = a*u
Adam      m = b1*m + (1 - b1)*g; v = b2*v + (1 - b2)*g^2; step = a*sqrt(1 - b2^t)/(1 - b1^t) * m/(sqrt(v) + delta)
All arithmetic in the parameters' dtype (float32), with float32 scalars, like Caffe.
"""
from __future__ import annotations


import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

from layers.cpu import num_threads, owned_ranges, threaded
from netspec.errors import UserError


@intrinsic
def _llvm_sqrt(typingctx, x):
    """IEEE square root as LLVM's sqrt intrinsic, which vectorizes (np.sqrt on a scalar calls libm's sqrtf,
    which LLVM cannot: the adaptive rules' loops ran scalar). The same correctly rounded result."""
    if not isinstance(x, nbtypes.Float):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        name = "llvm.sqrt.f32" if ty == ir.FloatType() else "llvm.sqrt.f64"
        return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]), name), args)
    return x(x), codegen


_sqrt = np.sqrt if config.DISABLE_JIT else _llvm_sqrt  # under NUMBA_DISABLE_JIT the kernels run as Python


@njit(cache=True, nogil=True, inline="always")
def _reg(r, l1):
    """What weight decay multiplies: sign(r) for L1 (+-1, 0 for 0, NaN for NaN), else r, in r's type (r - r,
    not r * 0, which would make r a float64 in Numba's typing)."""
    if l1:
        return r / abs(r) if r != 0 and r == r else r - r
    return r


def _sgd_step(g, w, v, scale, decay, l1, mu, a):
    """SGD with its regularization in one pass: g = v = mu * v + a * (g * scale + decay * reg(w)), on flat
    arrays, the float32 operations of the regularization, then of the momentum step; returns whether every step is finite (an integer
    count, which vectorizes where a float sum would not)."""
    bad = 0
    for i in prange(g.size):
        t = g[i] * scale + decay * _reg(w[i], l1)
        s = v[i] * mu + a * t
        v[i] = s
        g[i] = s
        bad += np.int64(s - s != 0)  # s - s: NaN for an Inf or a NaN, 0 otherwise
    return bad == 0


def _sgd_apply(g, w, v, scale, decay, l1, mu, a):
    """SGD's whole update in one pass over flat arrays: v = mu * v + a * (g * scale + decay * reg(w)) (the step,
    the same float32 operations as _sgd_step), w -= v, and g = the weight before (so that a step found
    non-finite can be taken back exactly). Returns whether every step is finite."""
    bad = 0
    for i in prange(g.size):
        x = w[i]
        t = g[i] * scale + decay * _reg(x, l1)
        s = v[i] * mu + a * t
        v[i] = s
        g[i] = x
        w[i] = x - s
        bad += np.int64(s - s != 0)
    return bad == 0


def _nesterov_step(g, w, v, scale, decay, l1, reg, mu, mu1, a):
    """Nesterov in one pass: v' = mu * v + a * g; g = mu1 * v' - mu * v (mu1 = 1 + mu), after the regularization
    (reg: scale and decay apply); the float32 operations of the NumPy rule, in its order. Returns all-finite."""
    bad = 0
    for i in prange(g.size):
        t = g[i] * scale + decay * _reg(w[i], l1) if reg else g[i]
        old = v[i] * mu
        vn = v[i] * mu + a * t
        v[i] = vn
        s = vn * mu1 - old
        g[i] = s
        bad += np.int64(s - s != 0)
    return bad == 0


def _adagrad_step(g, w, h, scale, decay, l1, reg, delta, a):
    """AdaGrad in one pass: h += g^2; g = a * (g / (sqrt(h) + delta)), in Caffe's order of operations (so its
    float32 rounding: a * g / ... rounds differently, and 20 iterations of a chaotic net amplify that)."""
    bad = 0
    for i in prange(g.size):
        t = g[i] * scale + decay * _reg(w[i], l1) if reg else g[i]
        hn = h[i] + t * t
        h[i] = hn
        s = a * (t / (_sqrt(hn) + delta))
        g[i] = s
        bad += np.int64(s - s != 0)
    return bad == 0


def _rmsprop_step(g, w, h, scale, decay, l1, reg, rho, omr, delta, a):
    """RMSProp in one pass: h = rho * h + (1 - rho) * g^2 (omr = 1 - rho); g = a * (g / (sqrt(h) + delta))."""
    bad = 0
    for i in prange(g.size):
        t = g[i] * scale + decay * _reg(w[i], l1) if reg else g[i]
        hn = h[i] * rho + omr * (t * t)
        h[i] = hn
        s = a * (t / (_sqrt(hn) + delta))
        g[i] = s
        bad += np.int64(s - s != 0)
    return bad == 0


def _adadelta_step(g, w, h, h2, scale, decay, l1, reg, mu, omm, delta, a):
    """AdaDelta in one pass: h = mu * h + (1 - mu) * g^2 (omm = 1 - mu); u = g * sqrt((h2 + delta) / (h + delta));
    h2 = mu * h2 + (1 - mu) * u^2; g = a * u."""
    bad = 0
    for i in prange(g.size):
        t = g[i] * scale + decay * _reg(w[i], l1) if reg else g[i]
        hn = h[i] * mu + omm * (t * t)
        h[i] = hn
        u = t * _sqrt((h2[i] + delta) / (hn + delta))
        h2[i] = h2[i] * mu + omm * (u * u)
        s = u * a
        g[i] = s
        bad += np.int64(s - s != 0)
    return bad == 0


def _adam_step(g, w, m, v, scale, decay, l1, reg, b1, omb1, b2, omb2, delta, ac):
    """Adam in one pass: m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g^2; g = m / (sqrt(v) + delta) * ac
    (ac = the rate times the bias correction; omb1, omb2 = 1 - b1, 1 - b2)."""
    bad = 0
    for i in prange(g.size):
        t = g[i] * scale + decay * _reg(w[i], l1) if reg else g[i]
        mn = m[i] * b1 + omb1 * t
        vn = v[i] * b2 + omb2 * (t * t)
        m[i] = mn
        v[i] = vn
        s = mn / (_sqrt(vn) + delta) * ac
        g[i] = s
        bad += np.int64(s - s != 0)
    return bad == 0


def _subtract_step(w, g):
    """w -= g, on flat arrays."""
    for i in prange(w.size):
        w[i] -= g[i]


def _sgd_apply_tasks(g, w, v, lo, hi, first, decay, a, scale, l1, mu, bad):
    """_sgd_apply over many params at once: task t is elements [lo[t], hi[t]) of the flat arrays, one param's
    (or a chunk of one), with its decay and rate; bad[t] = 1 where a step is non-finite. One kernel launch,
    thread p doing tasks first[p]:first[p + 1] (the rows it computed: layers.cpu.owned_ranges)."""
    for p in prange(first.size - 1):
        for t in range(first[p], first[p + 1]):
            i, j = lo[t], hi[t]
            bad[t] = 0 if _sgd_apply_serial(g[i:j], w[i:j], v[i:j], scale, decay[t], l1, mu, a[t]) else 1
    return bad.sum()


PARALLEL_MIN = 1 << 16  # elements: below this the update runs on the calling thread


def _both(fn):
    """fn on all threads for PARALLEL_MIN elements or more (the first argument's size), else on this thread;
    IEEE division (error_model numpy: x / 0 = inf, caught by the finite count) and no ZeroDivisionError
    branch, which kept the adaptive rules from vectorizing."""
    return threaded(fn, PARALLEL_MIN, error_model="numpy")


sgd_step, sgd_apply, subtract_step = map(_both, (_sgd_step, _sgd_apply, _subtract_step))
_sgd_apply_serial = sgd_apply.serial
sgd_apply_tasks = _both(_sgd_apply_tasks)
nesterov_step, adagrad_step, rmsprop_step, adadelta_step, adam_step = map(
    _both, (_nesterov_step, _adagrad_step, _rmsprop_step, _adadelta_step, _adam_step))


def _base(params, which="data"):
    """The 1-D array whose views every param's data (or diff) is, C-contiguous, or None."""
    arrays = [getattr(p.blob, which) for p in params]
    base = arrays[0].base if arrays else None
    if (base is None or base.ndim != 1 or not base.flags.c_contiguous
            or any(a.base is not base or not a.flags.c_contiguous or a.dtype != base.dtype for a in arrays)):
        return None
    return base


def _offsets(base, params, which="data"):
    """Where each param's data (or diff) starts in base, in elements."""
    start = base.ctypes.data
    return [(getattr(p.blob, which).ctypes.data - start) // base.itemsize for p in params]


class _Tasks:
    """The one-pass update of many params as tasks of one kernel: task t updates elements [lo[t], hi[t]) of
    the flat data w, diff g and history, all of param[t]; thread p the tasks first[p]:first[p + 1], the rows of
    each param it computed (layers.cpu.owned_ranges) for `threads` threads."""

    def __init__(self, w, g, params, offsets, threads):
        self.w, self.g, self.threads = w, g, threads
        self.lo, self.hi, self.first, self.param = owned_ranges([p.blob.data.shape for p in params], offsets,
                                                                threads)
        self.lr_mult = np.array([params[k].lr_mult for k in self.param], np.float64)
        self.bad = np.zeros(len(self.lo), np.int64)
        self.all_finite = {p.key: True for p in params}


class Solver:
    """Holds the history blobs (`slots` per parameter) and applies one update."""

    type = "SGD"
    slots = 1
    cycles_momentum = False  # follows lr_policy onecycle's momentum cycle (momentum_now, set by the trainer)
    momentum_now = None

    @property
    def momentum(self) -> float:
        """The momentum of this update: the cycle's where one runs, else the solver's field."""
        return self.cfg.momentum if self.momentum_now is None else self.momentum_now

    def __init__(self, params, cfg):
        self.params, self.cfg = params, cfg
        base = _base(params)
        if base is None:
            self.history = [np.zeros_like(p.blob.data) for _ in range(self.slots) for p in params]
        else:  # laid out as the params' data (netspec/net.py: one array), so one pass can update them all
            self.flat_history = [np.zeros_like(base) for _ in range(self.slots)]
            self.history = [h[o:o + p.blob.data.size].reshape(p.blob.data.shape)
                            for h in self.flat_history for p, o in zip(params, _offsets(base, params))]
        self.step_finite = {}  # {param key: bool} from the last update's kernels
        self._tasks, self._planned = None, []  # the one-pass plan (_plan) and the arrays it was made for

    def _hist(self, i, slot=0):
        return self.history[slot * len(self.params) + i]

    def history_arrays(self) -> dict:
        """{"layer/i" (or "layer/i#k" for a second slot): array}, Caffe's order: first slots, then second."""
        out = {}
        for slot in range(self.slots):
            for i, p in enumerate(self.params):
                out[p.key + (f"#{slot}" if slot else "")] = self._hist(i, slot)
        return out

    def load_history(self, arrays: dict, source: str, partial: bool = False):
        """The history saved in a snapshot; partial (--force on a changed net): the params found, zeros for the
        others."""
        mine = self.history_arrays()
        if partial:
            arrays = {k: v for k, v in arrays.items() if k in mine}
            mine = {k: h for k, h in mine.items() if k in arrays}
        if sorted(arrays) != sorted(mine):
            extra, missing = sorted(set(arrays) - set(mine)), sorted(set(mine) - set(arrays))
            raise UserError(f"{source}: error: the snapshot's solver history does not fit this net and solver "
                            f"(missing {missing[:3]}, unexpected {extra[:3]}); resume with the net the "
                            "snapshot was taken with, or start from its weights with --weights")
        for key, h in mine.items():
            a = arrays[key]
            if a.shape != h.shape:
                raise UserError(f"{source}: error: history of param '{key}' has shape {list(a.shape)} "
                                f"but the net's param has {list(h.shape)}; resume with the same net")
            h[...] = a

    def apply_update(self, rate: float, it: int, before_apply=None, fused: bool = True):
        """Compute every param's step into its diff; `before_apply()` may inspect them; then w -= step.
        fused: where the solver has a one-pass kernel (SGD), compute and apply each step in one pass instead;
        the diffs then hold the old weights, not the steps. If a step is non-finite, every weight is put back
        (exactly, from the diffs) and the steps put into the diffs before `before_apply()`, as on the two-pass
        path. Pass fused=False when something reads the steps from the diffs (debug_info, monitor)."""
        cfg = self.cfg
        dtype = self.params[0].blob.data.dtype.type if self.params else np.float32
        if cfg.clip_gradients >= 0:
            norm = float(np.sqrt(sum(float(np.dot(p.blob.diff.ravel(), p.blob.diff.ravel()))
                                     for p in self.params if p.lr_mult)))
            if norm > cfg.clip_gradients:
                scale = dtype(cfg.clip_gradients / norm)
                for p in self.params:
                    p.blob.diff *= scale
        self.step_finite = {}
        scale = dtype(1.0 / cfg.iter_size if cfg.iter_size > 1 else 1.0)
        l1 = cfg.regularization_type != "L2"
        learnable = [(i, p, dtype(cfg.weight_decay * p.decay_mult), dtype(rate * p.lr_mult))
                     for i, p in enumerate(self.params) if p.lr_mult]
        if fused and self.one_pass:
            plan = self._plan(learnable) if self.flat_history else None
            if plan is not None:
                self._apply_tasks(plan, learnable, rate, scale, l1)
            else:
                for i, p, decay, a in learnable:
                    self.step_finite[p.key] = self.apply_step(i, p.blob.diff.reshape(-1), p.blob.data.reshape(-1),
                                                              a, scale, decay, l1)
            if all(self.step_finite.values()):
                if before_apply is not None:
                    before_apply()
                return
            for i, p, _, _ in learnable:  # a step is non-finite: take all of them back
                p.blob.data[...] = p.blob.diff
                p.blob.diff[...] = self.step_of(i)
        else:
            for i, p, decay, a in learnable:
                self.step_finite[p.key] = self.fused_rule(p.blob.diff.reshape(-1), p.blob.data.reshape(-1), i, a,
                                                          scale, decay, l1, it)
        if before_apply is not None:
            before_apply()
        for _, p, _, _ in learnable:
            subtract_step(p.blob.data.reshape(-1), p.blob.diff.reshape(-1))

    one_pass = False  # the solver has apply_step and step_of
    flat_history = ()  # where the params' data is one array: the history laid out the same (one per slot)

    def _plan(self, learnable):
        """The _Tasks over the flat arrays for `learnable`, or None where the data or the diffs are not views of
        one array at the same offsets (then each param is updated on its own). Kept while the arrays stay."""
        arrays = [a for _, p, _, _ in learnable for a in (p.blob.data, p.blob.diff)]
        threads = num_threads()
        if (len(arrays) == len(self._planned) and all(a is b for a, b in zip(arrays, self._planned))
                and (self._tasks is None or self._tasks.threads == threads)):
            return self._tasks
        params = [p for _, p, _, _ in learnable]
        data, diff = _base(params), _base(params, "diff")
        self._planned, self._tasks = arrays, None
        if (data is None or diff is None or data.shape != self.flat_history[0].shape or diff.size < data.size
                or data.size < PARALLEL_MIN or _offsets(data, params) != _offsets(diff, params, "diff")):
            return None
        self._tasks = _Tasks(data, diff[:data.size], params, _offsets(data, params), threads)
        return self._tasks

    def _apply_tasks(self, plan, learnable, rate, scale, l1):
        w = plan.w
        decay = np.array([d for _, _, d, _ in learnable], w.dtype)[plan.param]
        a = (rate * plan.lr_mult).astype(w.dtype)  # as dtype(rate * lr_mult) per param
        if self.apply_tasks(plan.g, w, plan.lo, plan.hi, plan.first, decay, a, scale, l1, plan.bad) == 0:
            self.step_finite = plan.all_finite
            return
        hit = set(plan.param[plan.bad != 0].tolist())
        self.step_finite = {p.key: k not in hit for k, (_, p, _, _) in enumerate(learnable)}

    def apply_tasks(self, g, w, lo, hi, first, decay, a, scale, l1, bad):
        """apply_step over all params at once (tasks from _plan, thread p's first[p]:first[p + 1]); bad[t] = 1
        where task t's step is non-finite; returns the number of such tasks."""
        raise NotImplementedError

    def apply_step(self, i, g, w, a, scale, decay, l1):
        """Regularization, rule and w -= step of parameter i in one pass over flat g and w, leaving the old
        weights in g and the step where step_of(i) finds it; returns whether the step is finite."""
        raise NotImplementedError

    def step_of(self, i):
        """Where apply_step left parameter i's step."""
        raise NotImplementedError

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        """Regularization and rule of parameter i in one pass over flat g (the gradient becomes the step),
        returning whether the step is finite (`step_finite` keeps it for the trainer's check)."""
        raise NotImplementedError

    def _flat(self, i, slot=0):
        return self._hist(i, slot).reshape(-1)


class SGD(Solver):
    type = "SGD"
    cycles_momentum = True

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        return sgd_step(g, w, self._flat(i), scale, decay, l1, g.dtype.type(self.momentum), a)

    one_pass = True

    def apply_step(self, i, g, w, a, scale, decay, l1):
        return sgd_apply(g, w, self._flat(i), scale, decay, l1, w.dtype.type(self.momentum), a)

    def step_of(self, i):
        return self._hist(i)  # SGD's step is its history: v = mu * v + a * g; w -= v

    def apply_tasks(self, g, w, lo, hi, first, decay, a, scale, l1, bad):
        mu = w.dtype.type(self.momentum)
        return sgd_apply_tasks(g, w, self.flat_history[0], lo, hi, first, decay, a, scale, l1, mu, bad)


class Nesterov(Solver):
    type = "Nesterov"
    cycles_momentum = True

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        mu = w.dtype.type(self.momentum)
        return nesterov_step(g, w, self._flat(i), scale, decay, l1, bool(decay) or scale != 1, mu, 1 + mu, a)


class AdaGrad(Solver):
    type = "AdaGrad"

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        return adagrad_step(g, w, self._flat(i), scale, decay, l1, bool(decay) or scale != 1,
                            w.dtype.type(self.cfg.delta), a)


class RMSProp(Solver):
    type = "RMSProp"

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        rho = w.dtype.type(self.cfg.rms_decay)
        return rmsprop_step(g, w, self._flat(i), scale, decay, l1, bool(decay) or scale != 1, rho, 1 - rho,
                            w.dtype.type(self.cfg.delta), a)


class AdaDelta(Solver):
    type = "AdaDelta"
    slots = 2

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        mu = w.dtype.type(self.cfg.momentum)
        return adadelta_step(g, w, self._flat(i, 0), self._flat(i, 1), scale, decay, l1, bool(decay) or scale != 1,
                             mu, 1 - mu, w.dtype.type(self.cfg.delta), a)


class Adam(Solver):
    type = "Adam"
    slots = 2
    cycles_momentum = True

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        kind = w.dtype.type
        b1, b2 = kind(self.momentum), kind(self.cfg.momentum2)
        t = it + 1
        correction = kind(np.sqrt(1 - float(b2) ** t) / (1 - float(b1) ** t))
        return adam_step(g, w, self._flat(i, 0), self._flat(i, 1), scale, decay, l1, bool(decay) or scale != 1,
                         b1, 1 - b1, b2, 1 - b2, kind(self.cfg.delta), a * correction)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter): the step is Adam's on the gradient alone plus
    rate * weight_decay * w, so the decay does not pass through the moment estimates (PyTorch's AdamW: w -= lr *
    (m_hat / (sqrt(v_hat) + eps) + wd * w))."""
    type = "AdamW"

    def fused_rule(self, g, w, i, a, scale, decay, l1, it):
        finite = super().fused_rule(g, w, i, a, scale, decay.dtype.type(0), l1, it)
        if decay:
            g += (a * decay) * (np.sign(w) if l1 else w)
        return finite


SOLVERS = {cls.type: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, AdamW)}
