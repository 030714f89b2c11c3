"""Solvers and lr policies: hand-computed steps, a plain NumPy re-implementation over 50 iterations."""
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from layers.base import resolve
from solvers.lr_policy import LearningRate
from solvers.params import SOLVER_FIELDS
from solvers.trainer import Trainer

# w (a Parameter, starting at 0) pulled towards t = -1 by EuclideanLoss: loss = (w - t)^2 / 2, g = w + 1
SCALAR_NET = """layer:
  - {name: t, type: DummyData, top: t, dummy_data_param: {shape: {dim: [1, 1]}, data_filler: {type: constant, value: -1}}}
  - {name: w, type: Parameter, top: w, parameter_param: {shape: {dim: [1, 1]}}}
  - {name: loss, type: EuclideanLoss, bottom: [w, t], top: loss}
"""


def run_solver(tmp_path, net, iters, **solver):
    (tmp_path / "net.yaml").write_text(net)
    cfg = {"net": "net.yaml", "max_iter": iters, "display": 1, "snapshot_after_train": False, "random_seed": 3}
    cfg.update(solver)
    (tmp_path / "solver.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None, force=True)  # called again in one folder
    t.train()
    return t


def w_after(tmp_path, iters, **solver):
    return float(run_solver(tmp_path, SCALAR_NET, iters, **solver).net.layer_by_name("w").blobs[0].data.ravel()[0])


# hand-computed: g0 = 1 (w0 = 0), then g1 = w1 + 1
HAND = {
    # v1 = .1*1 = .1, w1 = -.1; g1 = .9, v2 = .9*.1 + .1*.9 = .18, w2 = -.28
    "SGD": ({"base_lr": 0.1, "momentum": 0.9}, -0.1, -0.28),
    # v1 = .1, step = 1.9*.1 = .19, w1 = -.19; g1 = .81, v2 = .09 + .081 = .171, step = 1.9*.171 - .9*.1 = .2349
    "Nesterov": ({"base_lr": 0.1, "momentum": 0.9}, -0.19, -0.4249),
    # h1 = 1, step = .1; g1 = .9, h2 = 1.81, step = .1*.9/sqrt(1.81) = .0668965
    "AdaGrad": ({"base_lr": 0.1}, -0.1, -0.1 - 0.09 / math.sqrt(1.81)),
    # h1 = .01*1, step = .1*1/.1 = 1, w1 = -1; g1 = 0: no step
    "RMSProp": ({"base_lr": 0.1}, -1.0, -1.0),
    # h1 = .05, u = sqrt(1e-6/.050001) = .00447209, h2' = .05*u^2; g1 = 1 + w1
    "AdaDelta": ({"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6}, -math.sqrt(1e-6 / 0.050001), None),
    # t=1: m = .1, v = .001, step = .1*sqrt(.001)/.1 * .1/sqrt(.001) = .1; t=2 below
    "Adam": ({"base_lr": 0.1, "momentum": 0.9, "momentum2": 0.999}, -0.1, None),
}


def adadelta_two():
    u1 = math.sqrt(1e-6 / 0.050001)
    w1, h, h2 = -u1, 0.05, 0.05 * u1 * u1
    g = 1 + w1
    h = 0.95 * h + 0.05 * g * g
    u = g * math.sqrt((h2 + 1e-6) / (h + 1e-6))
    return w1 - u


def adam_two():
    g = 0.9
    m, v = 0.9 * 0.1 + 0.1 * g, 0.999 * 0.001 + 0.001 * g * g
    return -0.1 - 0.1 * math.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2) * m / (math.sqrt(v) + 1e-8)


@pytest.mark.parametrize("solver", sorted(HAND))
def test_two_steps_match_hand_computation(tmp_path, solver):
    params, one, two = HAND[solver]
    two = two if two is not None else {"AdaDelta": adadelta_two, "Adam": adam_two}[solver]()
    assert w_after(tmp_path, 1, type=solver, **params) == pytest.approx(one, rel=1e-5, abs=1e-7)
    assert w_after(tmp_path, 2, type=solver, **params) == pytest.approx(two, rel=1e-5, abs=1e-7)


def policy(**kw):
    return LearningRate(resolve(SOLVER_FIELDS, dict({"base_lr": 0.1, "max_iter": 100}, **kw)))


def test_lr_policies_follow_caffe_formulas():
    assert policy(lr_policy="fixed")(57) == pytest.approx(0.1)
    assert policy(lr_policy="step", gamma=0.5, stepsize=10)(25) == pytest.approx(0.025)
    assert policy(lr_policy="exp", gamma=0.9)(3) == pytest.approx(0.0729)
    assert policy(lr_policy="inv", gamma=0.01, power=0.5)(300) == pytest.approx(0.05)
    assert policy(lr_policy="poly", power=2)(50) == pytest.approx(0.025)
    assert policy(lr_policy="sigmoid", gamma=-0.5, stepsize=10)(10) == pytest.approx(0.05)
    multi = policy(lr_policy="multistep", gamma=0.1, stepvalue=[3, 5])
    assert [round(multi(i), 6) for i in range(7)] == [0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


SOFTMAX_NET = """layer:
  - {name: d, type: Data, top: [data, label], data_param: {source: d.npz, batch_size: 8}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, param: [{lr_mult: 1}, {lr_mult: 2, decay_mult: 0}],
     inner_product_param: {num_output: 3, weight_filler: {type: gaussian, std: 0.5}, bias_filler: {type: constant, value: 0.1}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def numpy_reference(x, y, w, b, cfg, iters, batch=8):
    """The same training in float64 NumPy, Caffe's order: clip, /iter_size, decay, rule, w -= step."""
    params = [w.astype(np.float64), b.astype(np.float64)]
    lr_mult, decay_mult = [1.0, 2.0], [1.0, 0.0]
    slots = 2 if cfg.type in ("AdaDelta", "Adam") else 1
    hist = [[np.zeros_like(p) for p in params] for _ in range(slots)]
    rate_of = LearningRate(cfg)
    pos = 0
    for it in range(iters):
        grads = [np.zeros_like(p) for p in params]
        for _ in range(cfg.iter_size):
            xb, yb = x[pos:pos + batch], y[pos:pos + batch].astype(int)
            pos = (pos + batch) % len(x)
            z = xb @ params[0].T + params[1]
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(batch), yb] -= 1
            p /= batch
            grads[0] += p.T @ xb
            grads[1] += p.sum(0)
        if cfg.clip_gradients >= 0:
            norm = math.sqrt(sum((g ** 2).sum() for g in grads))
            if norm > cfg.clip_gradients:
                grads = [g * cfg.clip_gradients / norm for g in grads]
        rate = rate_of(it)
        for k, (prm, g) in enumerate(zip(params, grads)):
            g = g / cfg.iter_size
            lam = cfg.weight_decay * decay_mult[k]
            g = g + lam * (prm if cfg.regularization_type == "L2" else np.sign(prm))
            a, h = rate * lr_mult[k], hist[0][k]
            if cfg.type == "SGD":
                h[...] = cfg.momentum * h + a * g
                step = h
            elif cfg.type == "Nesterov":
                old = h.copy()
                h[...] = cfg.momentum * h + a * g
                step = (1 + cfg.momentum) * h - cfg.momentum * old
            elif cfg.type == "AdaGrad":
                h += g * g
                step = a * g / (np.sqrt(h) + cfg.delta)
            elif cfg.type == "RMSProp":
                h[...] = cfg.rms_decay * h + (1 - cfg.rms_decay) * g * g
                step = a * g / (np.sqrt(h) + cfg.delta)
            elif cfg.type == "AdaDelta":
                h2 = hist[1][k]
                h[...] = cfg.momentum * h + (1 - cfg.momentum) * g * g
                u = g * np.sqrt((h2 + cfg.delta) / (h + cfg.delta))
                h2[...] = cfg.momentum * h2 + (1 - cfg.momentum) * u * u
                step = a * u
            else:
                v, t = hist[1][k], it + 1
                h[...] = cfg.momentum * h + (1 - cfg.momentum) * g
                v[...] = cfg.momentum2 * v + (1 - cfg.momentum2) * g * g
                step = a * math.sqrt(1 - cfg.momentum2 ** t) / (1 - cfg.momentum ** t) * h / (np.sqrt(v) + cfg.delta)
            prm -= step
    return params


CONFIGS = [
    {"type": "SGD", "base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    {"type": "SGD", "base_lr": 0.1, "momentum": 0.5, "weight_decay": 0.01, "regularization_type": "L1",
     "lr_policy": "step", "gamma": 0.5, "stepsize": 10},
    {"type": "SGD", "base_lr": 0.5, "clip_gradients": 0.1, "iter_size": 2, "lr_policy": "multistep", "gamma": 0.3,
     "stepvalue": [20, 35]},
    {"type": "Nesterov", "base_lr": 0.05, "momentum": 0.9, "weight_decay": 0.005, "lr_policy": "inv", "gamma": 0.01,
     "power": 0.75},
    {"type": "AdaGrad", "base_lr": 0.1, "weight_decay": 0.005, "lr_policy": "exp", "gamma": 0.99},
    {"type": "RMSProp", "base_lr": 0.01, "rms_decay": 0.9, "lr_policy": "poly", "power": 1.5},
    {"type": "AdaDelta", "base_lr": 1.0, "momentum": 0.95, "delta": 1e-6, "weight_decay": 0.001},
    {"type": "Adam", "base_lr": 0.01, "momentum": 0.9, "momentum2": 0.999, "lr_policy": "sigmoid", "gamma": -0.1,
     "stepsize": 30},
]


@pytest.mark.parametrize("solver", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values())[:40])
def test_fifty_iterations_match_plain_numpy(tmp_path, solver):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    np.savez(tmp_path / "d.npz", data=x, label=y)
    cfg = dict(solver, max_iter=50)
    (tmp_path / "net.yaml").write_text(SOFTMAX_NET)
    (tmp_path / "solver.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in dict(
        cfg, net="net.yaml", snapshot_after_train=False, random_seed=1).items()))
    t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None)
    ip = t.net.layer_by_name("ip")
    w0, b0 = ip.blobs[0].data.copy(), ip.blobs[1].data.copy()
    t.train()
    ref = numpy_reference(x, y, w0, b0, resolve(SOLVER_FIELDS, cfg), 50)
    np.testing.assert_allclose(ip.blobs[0].data, ref[0], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(ip.blobs[1].data, ref[1], rtol=2e-4, atol=2e-5)
    assert not np.allclose(ip.blobs[0].data, w0)


def _params(rng, sizes, flat=False):
    """Fake learnable params (what Solver reads): blob.data, blob.diff, lr_mult, decay_mult, key. flat: their
    data and diffs are views of one array each, as a Net lays them out (the solver then updates all in one
    kernel), with a frozen param (lr_mult 0, key "frozen") after the first."""
    out = []
    for k, n in enumerate(sizes):
        blob = SimpleNamespace(data=rng.standard_normal(n).astype(np.float32),
                               diff=rng.standard_normal(n).astype(np.float32))
        out.append(SimpleNamespace(blob=blob, lr_mult=1.0 + k, decay_mult=1.0 + k / 2, key=f"p/{k}"))
    if flat:
        frozen = SimpleNamespace(data=rng.standard_normal(7).astype(np.float32), diff=np.zeros(7, np.float32))
        out.insert(1, SimpleNamespace(blob=frozen, lr_mult=0.0, decay_mult=1.0, key="frozen"))
        data, diff = (np.concatenate([getattr(p.blob, a) for p in out]) for a in ("data", "diff"))
        start = 0
        for p in out:
            n = p.blob.data.size
            p.blob.data, p.blob.diff = data[start:start + n], diff[start:start + n]
            start += n
    return out


@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("iter_size", [1, 3])
@pytest.mark.parametrize("flat", [False, True])
def test_sgd_one_pass_update_equals_two_passes(regularization, iter_size, flat):
    """The one-pass SGD update (w -= v in the same pass) gives bitwise the weights and history of the two-pass
    one, on sizes that run on one thread and on both; flat: all params in one kernel (with a frozen param,
    which it leaves alone, and params cut into several tasks), as a Net's params are."""
    from solvers.rules import PARALLEL_MIN, SGD
    cfg = resolve(SOLVER_FIELDS, {"net": "-", "base_lr": 0.01, "max_iter": 1, "momentum": 0.9,
                                  "weight_decay": 5e-3, "regularization_type": regularization, "iter_size": iter_size})
    runs = []
    for fused in (True, False):
        params = _params(np.random.default_rng(7), [10, 513, PARALLEL_MIN + 17], flat)
        params[0].blob.data[:3] = 0  # L1's sign(0) = 0
        frozen = [(p.blob.data.copy(), p.blob.diff.copy()) for p in params if not p.lr_mult]
        solver = SGD(params, cfg)
        for it in range(3):
            for p in params:
                if p.lr_mult:
                    p.blob.diff[...] = np.random.default_rng(it).standard_normal(p.blob.diff.size)
            solver.apply_update(0.05, it, fused=fused)
            assert all(solver.step_finite.values()) and len(solver.step_finite) == 3
            assert (solver._tasks is not None) == (flat and fused)  # which path ran
        for (data, diff), p in zip(frozen, [p for p in params if not p.lr_mult]):
            np.testing.assert_array_equal(p.blob.data, data)
            np.testing.assert_array_equal(p.blob.diff, diff)
        runs.append(([p.blob.data.copy() for p in params], [h.copy() for h in solver.history]))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_the_one_pass_update_follows_the_thread_count():
    """The update's tasks are cut for the threads of the call that runs it (each thread the rows of every param
    that its products computed: layers.cpu.owned_ranges), planned anew when the count changes; the weights are
    the same bits on one thread and on all."""
    import numba
    from solvers.rules import PARALLEL_MIN, SGD
    cfg = resolve(SOLVER_FIELDS, {"net": "-", "base_lr": 0.01, "max_iter": 1, "momentum": 0.9, "weight_decay": 5e-3})
    runs, total = [], numba.get_num_threads()
    for threads in sorted({1, total}):
        params = _params(np.random.default_rng(3), [PARALLEL_MIN + 17, 513], True)
        solver = SGD(params, cfg)
        numba.set_num_threads(threads)
        try:
            solver.apply_update(0.05, 0)
        finally:
            numba.set_num_threads(total)
        assert solver._tasks.threads == threads and solver._tasks.first.size == threads + 1
        runs.append([p.blob.data.copy() for p in params] + [h.copy() for h in solver.history])
    for a, b in zip(runs[0], runs[-1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("flat", [False, True])
def test_sgd_one_pass_update_takes_every_step_back_when_one_overflows(flat):
    """Param 0 is updated before param 1's step overflows: both keep their weights exactly, and the diffs hold
    the steps for the check (as the two-pass update leaves them); flat: in one kernel over all params."""
    from solvers.rules import PARALLEL_MIN, SGD
    cfg = resolve(SOLVER_FIELDS, {"net": "-", "base_lr": 0.01, "max_iter": 1, "momentum": 0.9})
    params = _params(np.random.default_rng(1), [300, PARALLEL_MIN], flat)  # flat: large enough for one kernel
    params = [p for p in params if p.lr_mult]
    params[1].blob.diff[6] = np.inf
    before = [p.blob.data.copy() for p in params]
    grads = [p.blob.diff.copy() for p in params]
    seen = {}
    solver = SGD(params, cfg)
    solver.apply_update(0.01, 0, before_apply=lambda: seen.update(
        finite=dict(solver.step_finite), data=[p.blob.data.copy() for p in params],
        diff=[p.blob.diff.copy() for p in params]))
    assert seen["finite"] == {"p/0": True, "p/1": False}
    assert (solver._tasks is not None) == flat
    for k in range(2):
        np.testing.assert_array_equal(seen["data"][k], before[k])  # nothing applied when the check runs
        np.testing.assert_array_equal(seen["diff"][k], solver.history[k])  # the steps, where the check reads
    np.testing.assert_array_equal(seen["diff"][0], np.float32(0.01) * grads[0])  # v = a * g from v = 0


def _numpy_rule(kind, g, h, h2, w, cfg, a, it):
    """The rules in float32 NumPy, operation by operation, in Caffe's order (which the one-pass kernels keep)."""
    f = np.float32
    if kind == "Nesterov":
        mu = f(cfg.momentum)
        old = h * mu
        h *= mu
        h += a * g
        g[...] = h * (1 + mu) - old
    elif kind == "AdaGrad":
        h += g * g
        g[...] = a * (g / (np.sqrt(h) + f(cfg.delta)))
    elif kind == "RMSProp":
        rho = f(cfg.rms_decay)
        h *= rho
        h += (1 - rho) * (g * g)
        g[...] = a * (g / (np.sqrt(h) + f(cfg.delta)))
    elif kind == "AdaDelta":
        mu, delta = f(cfg.momentum), f(cfg.delta)
        h *= mu
        h += (1 - mu) * (g * g)
        g *= np.sqrt((h2 + delta) / (h + delta))
        h2 *= mu
        h2 += (1 - mu) * (g * g)
        g *= a
    else:  # Adam
        b1, b2 = f(cfg.momentum), f(cfg.momentum2)
        h *= b1
        h += (1 - b1) * g
        h2 *= b2
        h2 += (1 - b2) * (g * g)
        correction = f(np.sqrt(1 - float(b2) ** (it + 1)) / (1 - float(b1) ** (it + 1)))
        np.divide(h, np.sqrt(h2) + f(cfg.delta), out=g)
        g *= a * correction


@pytest.mark.parametrize("kind", ["Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
@pytest.mark.parametrize("regularization", ["L2", "L1"])
def test_one_pass_rules_equal_their_numpy_operations(kind, regularization):
    """Each solver's one-pass kernel (regularization, rule and the finite check together) gives bitwise what the
    float32 NumPy operations give, with iter_size's scaling, on sizes run on one thread and on both."""
    from solvers.rules import PARALLEL_MIN, SOLVERS
    cfg = resolve(SOLVER_FIELDS, {"net": "-", "base_lr": 0.01, "max_iter": 1, "type": kind, "momentum": 0.9,
                                  "weight_decay": 5e-3, "regularization_type": regularization, "iter_size": 3})
    params = _params(np.random.default_rng(4), [9, PARALLEL_MIN + 3])
    params[0].blob.data[:2] = 0
    ref = [(p.blob.data.copy(), np.zeros_like(p.blob.data), np.zeros_like(p.blob.data)) for p in params]
    solver = SOLVERS[kind](params, cfg)
    f = np.float32
    for it in range(4):
        for k, p in enumerate(params):
            p.blob.diff[...] = np.random.default_rng(it).standard_normal(p.blob.diff.size)
            w, h, h2 = ref[k]
            g = p.blob.diff.copy() * f(1 / 3) + f(5e-3 * p.decay_mult) * (np.sign(w) if regularization == "L1" else w)
            _numpy_rule(kind, g, h, h2, w, cfg, f(0.05 * p.lr_mult), it)
            w -= g
        solver.apply_update(0.05, it)
        assert all(solver.step_finite.values()) and len(solver.step_finite) == 2
    for k, p in enumerate(params):
        np.testing.assert_array_equal(p.blob.data, ref[k][0])
        np.testing.assert_array_equal(solver.history[k], ref[k][1])


def test_cosine_onecycle_and_warmup_follow_their_closed_forms():
    cos = policy(lr_policy="cosine", max_iter=100, min_lr=0.01)
    assert cos(0) == pytest.approx(0.1) and cos(50) == pytest.approx(0.055) and cos(100) == pytest.approx(0.1)
    assert cos(99) == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi * 0.99)) / 2, rel=1e-6)
    restarts = policy(lr_policy="cosine", max_iter=100, cosine_cycle=30)
    assert restarts(30) == pytest.approx(0.1) and restarts(45) == pytest.approx(0.05)
    one = policy(lr_policy="onecycle", max_iter=100, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert one(0) == pytest.approx(0.004) and one(30) == pytest.approx(0.1)
    assert one(15) == pytest.approx(0.004 + 0.096 / 2, rel=1e-6) and one(100) == pytest.approx(0.004 / 1e4, rel=1e-5)
    assert one(65) == pytest.approx(0.004e-4 + (0.1 - 0.004e-4) / 2, rel=1e-5)
    warm = policy(lr_policy="step", gamma=0.5, stepsize=1000, warmup_iter=10, warmup_start_factor=0.2)
    assert [round(warm(i), 6) for i in (0, 5, 10, 20)] == [0.02, 0.06, 0.1, 0.1]


def test_onecycle_cycles_the_momentum_against_the_rate_and_the_update_uses_it(tmp_path):
    one = policy(lr_policy="onecycle", max_iter=100, pct_start=0.3)
    assert one.momentum(0) == pytest.approx(0.95) and one.momentum(30) == pytest.approx(0.85)
    assert one.momentum(15) == pytest.approx(0.9) and one.momentum(100) == pytest.approx(0.95)
    assert one.momentum(65) == pytest.approx(0.9)  # halfway down the rate: halfway up the momentum
    assert policy(lr_policy="onecycle", max_iter=100, cycle_momentum=False).momentum(10) is None
    assert policy(lr_policy="cosine", max_iter=100).momentum(10) is None
    # the SGD update takes the cycle's momentum: a cycle pinned at 0.5 trains as momentum 0.5 without a cycle
    runs = []
    for cycle in (True, False):
        t = _digits(tmp_path / str(cycle), lr_policy="onecycle", max_iter=3, momentum=0.5, cycle_momentum=cycle,
                    test_interval=0, snapshot=0, snapshot_after_train=False)
        t.lr.momentum = lambda it: 0.5 if cycle else None
        t.train()
        runs.append(t.net.param_data.copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    t = _digits(tmp_path / "c", lr_policy="onecycle", max_iter=3, momentum=0.5, test_interval=0, snapshot=0,
                snapshot_after_train=False)
    t.train()
    assert t.solver.momentum_now == pytest.approx(t.lr.momentum(2))
    assert not np.array_equal(t.net.param_data, runs[0])


def test_adamw_decays_the_weights_apart_from_the_moments():
    """AdamW's step is Adam's on the gradient alone plus rate * weight_decay * w (Loshchilov and Hutter; PyTorch's
    torch.optim.AdamW), so the weights shrink with a zero gradient, and Adam's moments never see the decay."""
    from solvers.rules import SOLVERS
    rng = np.random.default_rng(0)
    cfg = resolve(SOLVER_FIELDS, {"type": "AdamW", "base_lr": 0.1, "momentum": 0.9, "momentum2": 0.999,
                                  "weight_decay": 0.01, "delta": 1e-8})
    params = _params(rng, [5])
    w, g = params[0].blob.data.copy().astype(np.float64), params[0].blob.diff.copy().astype(np.float64)
    params[0].lr_mult = params[0].decay_mult = 1.0
    SOLVERS["AdamW"](params, cfg).apply_update(0.1, 0)
    m, v = 0.1 * g, 0.001 * g * g
    adam = 0.1 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
    np.testing.assert_allclose(params[0].blob.data, w - adam - 0.1 * 0.01 * w, rtol=1e-5, atol=1e-6)
    zero = _params(rng, [4])
    zero[0].lr_mult = zero[0].decay_mult = 1.0
    zero[0].blob.diff[...] = 0
    before = zero[0].blob.data.copy()
    SOLVERS["AdamW"](zero, cfg).apply_update(0.1, 0)
    np.testing.assert_allclose(zero[0].blob.data, before * (1 - 0.1 * 0.01), rtol=1e-6)


def _digits(tmp_path, **solver):
    import shutil
    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                                 "lenet_digits"), tmp_path / "m", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("snapshots"))
    return Trainer(str(tmp_path / "m" / "solver.yaml"), out=lambda *a: None, overrides=solver)


def test_weight_ema_averages_after_each_update_tests_with_it_and_resumes(tmp_path):
    t = _digits(tmp_path, ema_decay=0.5, max_iter=1, test_interval=0, snapshot=0, snapshot_after_train=False)
    w0 = t.net.param_data.copy()
    t.train()
    np.testing.assert_allclose(t.ema, 0.5 * w0 + 0.5 * t.net.param_data, rtol=1e-6)
    # the test nets run with the average, and the live weights come back after
    t = _digits(tmp_path / "b", ema_decay=0.9, max_iter=4, test_interval=2, test_iter=[1], snapshot=2)
    seen = []
    original = t._test_one
    t._test_one = lambda k, net, n: (seen.append((net.layer_by_name("conv1").blobs[0].data.copy(), t.ema.copy())),
                                     original(k, net, n))[1]
    t.train()
    assert len(seen) >= 2
    for weights_in_test, ema in seen:
        conv1 = t.net.layer_by_name("conv1").blobs[0]
        assert np.array_equal(weights_in_test.ravel(), ema[:conv1.count])
    assert not np.array_equal(t.net.param_data, t.ema)
    ema_file = tmp_path / "b" / "m" / "snapshots" / "lenet_digits_iter_4.ema.weights.npz"
    with np.load(ema_file) as z:
        np.testing.assert_array_equal(z["conv1/0"].ravel(), t.ema[:conv1.count])
    # resume from iteration 2: the average continues exactly
    again = _digits(tmp_path / "b", ema_decay=0.9, max_iter=4, test_interval=2, test_iter=[1], snapshot=2)
    again.train(snapshot_path=str(tmp_path / "b" / "m" / "snapshots" / "lenet_digits_iter_2.solverstate.npz"))
    np.testing.assert_array_equal(again.ema, t.ema)


BN_NET = """
layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [16, 2, 5, 5]}, {dim: [16]}],
     data_filler: [{type: gaussian, std: 2}, {type: constant, value: 1}]}}
  - {name: conv, type: Convolution, bottom: data, top: conv, convolution_param: {num_output: 3, kernel_size: 3,
     weight_filler: {type: gaussian, std: 0.5}}}
  - {name: bn, type: BatchNorm, bottom: conv, top: bn}
  - {name: ip, type: InnerProduct, bottom: bn, top: ip, inner_product_param: {num_output: 2,
     weight_filler: {type: gaussian, std: 0.5}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def test_ema_recomputes_batch_norm_statistics_for_the_averaged_weights_and_puts_the_data_back(tmp_path):
    (tmp_path / "net.yaml").write_text(BN_NET)
    (tmp_path / "solver.yaml").write_text("net: net.yaml\nbase_lr: 0.1\nmax_iter: 3\nema_decay: 0.5\n"
                                          "ema_bn_batches: 1\nsnapshot_prefix: snap/bn\nrandom_seed: 2\n")
    t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None, replicas=1)
    t.train()
    bn, data = t.net.layer_by_name("bn"), t.net.layer_by_name("d")
    live = [b.data.copy() for b in bn.blobs]
    rng = data.rng.bit_generator.state
    with t._ema_weights():
        mean_sum, var_sum, factor = (b.data.copy() for b in bn.blobs)
        conv = t.net.blobs["conv"].data.astype(np.float64)  # the one batch the statistics were taken on
        weights = t.net.layer_by_name("conv").blobs[0].data.copy()
    assert factor[0] == 1.0  # one batch, moving_average_fraction 1 from zeroed sums: its plain statistics
    np.testing.assert_allclose(mean_sum, conv.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    m = conv.size // conv.shape[1]
    np.testing.assert_allclose(var_sum, conv.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-4)
    np.testing.assert_allclose(weights.ravel(), t.ema[:weights.size])  # with the averaged weights
    assert data.rng.bit_generator.state == rng  # the data stream as it was: training goes on unchanged
    for b, v in zip(bn.blobs, live):
        np.testing.assert_array_equal(b.data, v)  # the live statistics back after
    assert bn.p.moving_average_fraction == 0.999


def test_ema_batch_norm_recompute_leaves_a_data_layers_place_and_a_streamed_one_too(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rows.npz", data=rng.normal(size=(40, 2, 5, 5)).astype(np.float32),
             label=rng.integers(0, 2, 40))
    for stream in ("never", "always"):
        (tmp_path / "net.yaml").write_text(BN_NET.replace(
            "{name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [16, 2, 5, 5]}, "
            "{dim: [16]}],\n     data_filler: [{type: gaussian, std: 2}, {type: constant, value: 1}]}}",
            f"{{name: d, type: Data, top: [data, label], data_param: {{source: rows.npz, batch_size: 16, "
            f"shuffle: true, stream: {stream}}}}}"))
        (tmp_path / "solver.yaml").write_text("net: net.yaml\nbase_lr: 0.1\nmax_iter: 2\nema_decay: 0.5\n"
                                              f"ema_bn_batches: 3\nsnapshot_prefix: snap/{stream}\nrandom_seed: 2\n")
        t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None, replicas=1)
        t.train()
        data = t.net.layer_by_name("d")
        before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in data.state_dict().items()}
        with t._ema_weights():
            assert t.net.layer_by_name("bn").blobs[2].data[0] == 3.0
        after = data.state_dict()
        assert before.keys() == after.keys(), stream
        for k in before:
            assert np.array_equal(np.asarray(before[k]), np.asarray(after[k])), (stream, k)
        # and the next batch is the one training would have read next
        t.net.forward()
        first = t.net.blobs["data"].data.copy()
        (tmp_path / "solver.yaml").write_text((tmp_path / "solver.yaml").read_text().replace(
            f"snap/{stream}", f"snap/{stream}_without").replace("ema_bn_batches: 3", "ema_bn_batches: 0"))
        again = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None, replicas=1)  # no recompute at all
        again.train()
        again.net.forward()
        np.testing.assert_array_equal(again.net.blobs["data"].data, first)
