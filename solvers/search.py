"""`run.py search`: random hyperparameter search, coarse to fine (CS231n's recipe).

The space is a YAML file mapping a field to a distribution:
    base_lr: {log_uniform: [1e-4, 1e-1]}
    momentum: {uniform: [0.8, 0.99]}
    layer.drop1.dropout_param.dropout_ratio: {uniform: [0.2, 0.6]}
    layer.ip1.inner_product_param.num_output: {choice: [64, 128, 256]}
A plain name is a solver field; `layer.<name>.<block>.<field>` is a field of the net's layer of that name.
Round 1 samples the whole space; round 2 samples a narrower range around the best third of round 1. Trials
run in parallel processes; each trains `iters` iterations and is scored by its last test (accuracy, else
minus the loss). The results go to results.csv and results.jsonl, sorted, and the best configuration to a
ready solver (and net) YAML.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import yaml

from netspec.errors import UserError
from netspec.loader import load, to_plain
from netspec.progress import Progress


def read_space(path: str) -> dict:
    space = to_plain(load(path))
    if not isinstance(space, dict) or not space:
        raise UserError(f"{path}: error: the space must map fields to distributions, e.g. base_lr: "
                        "{log_uniform: [1e-4, 1e-1]}")
    for key, dist in space.items():
        ok = isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in ("log_uniform", "uniform", "choice")
        if ok and next(iter(dist)) != "choice":
            lo_hi = next(iter(dist.values()))
            ok = (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(isinstance(v, (int, float)) for v in lo_hi)
                  and lo_hi[0] < lo_hi[1] and (next(iter(dist)) != "log_uniform" or lo_hi[0] > 0))
        if not ok:
            raise UserError(f"{path}: error: '{key}': expected {{log_uniform: [low, high]}} (low > 0), "
                            f"{{uniform: [low, high]}} or {{choice: [a, b, ...]}}; received {dist}")
    return space


def sample(space: dict, rng, around: dict | None = None) -> dict:
    """One configuration; `around`: a best configuration to sample a quarter-width range around."""
    out = {}
    for key, dist in space.items():
        kind, arg = next(iter(dist.items()))
        if kind == "choice":
            out[key] = arg[int(rng.integers(len(arg)))] if around is None or rng.random() < 0.3 else around[key]
            continue
        lo, hi = arg
        if kind == "log_uniform":
            lo, hi = math.log(lo), math.log(hi)
        if around is not None:
            center = math.log(around[key]) if kind == "log_uniform" else around[key]
            half = (hi - lo) / 8
            lo, hi = max(lo, center - half), min(hi, center + half)
        value = float(rng.uniform(lo, hi))
        out[key] = math.exp(value) if kind == "log_uniform" else value
        if isinstance(arg[0], int) and isinstance(arg[1], int) and kind == "uniform":
            out[key] = int(round(out[key]))
    return out


def apply(solver: dict, net: dict, config: dict):
    for key, value in config.items():
        if key.startswith("layer."):
            _, name, *path = key.split(".")
            layer = next((l for l in net.get("layer", []) if l.get("name") == name), None)
            if layer is None or not path:
                raise UserError(f"search space: no layer named '{name}' in the net for '{key}'")
            node = layer
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        else:
            solver[key] = value


def _share_cores(threads: int):
    """In a trial process: this many Numba threads (and OpenBLAS's, where products do not run on Numba's)."""
    import numba
    from layers.cpu import blas_threads, pooled
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    blas_threads(1 if pooled() else threads)


def _write_trial(folder: str, solver: dict, net: dict) -> str:
    """A trial's net.yaml and solver.yaml in its folder; returns the solver's path."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "net.yaml"), "w") as f:
        yaml.safe_dump(net, f, sort_keys=False)
    with open(os.path.join(folder, "solver.yaml"), "w") as f:
        yaml.safe_dump(solver, f, sort_keys=False)
    return os.path.join(folder, "solver.yaml")


def _score(test: dict) -> float:
    """A trial's score from a test record: its accuracy, else minus its loss."""
    return test["accuracy"] if "accuracy" in test else -test.get("loss", math.inf)


def _settings(record: dict, space: dict) -> str:
    return ", ".join(f"{k}={record[k]:.3g}" if isinstance(record[k], float) else f"{k}={record[k]}" for k in space)


def run_trial(args) -> dict:
    """One trial in its own folder; returns its record (run in a worker process)."""
    index, folder, solver, net, config = args
    from solvers.trainer import Trainer
    path = _write_trial(folder, solver, net)
    record = {"trial": index, **config}
    try:
        final = Trainer(path, out=lambda *a: None).train()
        record.update({k: v for k, v in final.items() if isinstance(v, float)})
        record["score"] = _score(final)
    except UserError as e:
        record.update(score=-math.inf, error=str(e).splitlines()[0])
    return record


def _bases(solver_path: str):
    """(solver dict, net dict with its data sources made absolute)."""
    base_solver = to_plain(load(solver_path))
    net_path = os.path.join(os.path.dirname(os.path.abspath(solver_path)), base_solver["net"])
    base_net = to_plain(load(net_path))
    for layer in base_net.get("layer", []):  # data sources stay where they are
        for block in [k for k in layer if k.endswith("data_param")]:
            src = layer[block].get("source")
            if src and not os.path.isabs(src):
                layer[block]["source"] = os.path.normpath(os.path.join(os.path.dirname(net_path), src))
    return base_solver, base_net


def search(solver_path: str, space_path: str, trials: int, iters: int, jobs: int = 1, out_dir: str | None = None,
           seed: int = 0, out=print, pool=None) -> list[dict]:
    """pool: an executor to run the trials on (mpi4py's pool under --mpi); default: `jobs` local processes."""
    space = read_space(space_path)
    base_solver, base_net = _bases(solver_path)
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(solver_path)), "search")
    rng = np.random.default_rng(seed)
    results: list[dict] = []
    rounds = [(1, max(1, trials - trials // 3)), (2, trials // 3)]
    for round_no, count in rounds:
        if count == 0:
            continue
        best = sorted(results, key=lambda r: -r["score"])[:max(1, len(results) // 3)]
        jobs_args = []
        for i in range(count):
            around = best[i % len(best)] if round_no == 2 and best else None
            config = sample(space, rng, {k: around[k] for k in space} if around else None)
            solver, net = copy.deepcopy(base_solver), copy.deepcopy(base_net)
            apply(solver, net, config)
            index = len(results) + len(jobs_args)
            solver.update(net="net.yaml", max_iter=iters, snapshot=0, snapshot_after_train=False, display=0,
                          test_interval=iters, snapshot_prefix="trial")
            jobs_args.append((index, os.path.join(out_dir, f"trial_{index:03d}"), solver, net, config))
        # spawned, not forked: a process that has run a parallel Numba kernel (GNU OpenMP) cannot fork safely
        threads = max(1, (os.cpu_count() or 1) // jobs)  # jobs x threads never exceeds the cores
        with (ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_share_cores, initargs=(threads,)) if pool is None
              else contextlib.nullcontext(pool)) as runner:
            for record in runner.map(run_trial, jobs_args):
                record["round"] = round_no
                results.append(record)
                Progress.update(len(results), trials, "search")
                out(f"trial {record['trial']} (round {round_no}): score {record['score']:.4g}  "
                    + _settings(record, space))
    return _write_results(results, space, base_solver, base_net, out_dir, out)


def _write_results(results, space, base_solver, base_net, out_dir, out) -> list[dict]:
    """results.csv and results.jsonl, best first, and the best configuration as best_solver.yaml/best_net.yaml."""
    results.sort(key=lambda r: -r["score"])
    os.makedirs(out_dir, exist_ok=True)
    keys = list(dict.fromkeys(k for r in results for k in r))
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(results)
    with open(os.path.join(out_dir, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    best = results[0]
    solver, net = copy.deepcopy(base_solver), copy.deepcopy(base_net)
    apply(solver, net, {k: best[k] for k in space})
    with open(os.path.join(out_dir, "best_net.yaml"), "w") as f:
        yaml.safe_dump(net, f, sort_keys=False)
    solver["net"] = "best_net.yaml"
    with open(os.path.join(out_dir, "best_solver.yaml"), "w") as f:
        yaml.safe_dump(solver, f, sort_keys=False)
    out(f"Best: trial {best['trial']}, score {best['score']:.4g}; wrote {out_dir}/results.csv, results.jsonl, "
        "best_solver.yaml")
    return results


def search_optuna(solver_path: str, space_path: str, trials: int, iters: int, out_dir: str | None = None,
                  seed: int = 0, out=print) -> list[dict]:
    """The same search through Optuna (the optuna extra): TPE sampling, and trials pruned at their tests (four
    per trial) when their score falls below the median of earlier trials at that point (MedianPruner). Trials run
    one at a time in this process (pruning reads each test as it happens); results are written as search()'s."""
    try:
        import optuna
    except ImportError:
        raise UserError("--backend optuna needs Optuna: pip install 'yaffe[optuna]'") from None
    from solvers.trainer import Trainer
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = read_space(space_path)
    base_solver, base_net = _bases(solver_path)
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(solver_path)), "search")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    results: list[dict] = []

    def objective(trial):
        config = {}
        for key, dist in space.items():
            kind, arg = next(iter(dist.items()))
            if kind == "choice":
                config[key] = trial.suggest_categorical(key, arg)
            elif kind == "uniform" and all(isinstance(v, int) for v in arg):
                config[key] = trial.suggest_int(key, arg[0], arg[1])
            else:
                config[key] = trial.suggest_float(key, float(arg[0]), float(arg[1]), log=kind == "log_uniform")
        solver, net = copy.deepcopy(base_solver), copy.deepcopy(base_net)
        apply(solver, net, config)
        solver.update(net="net.yaml", max_iter=iters, snapshot=0, snapshot_after_train=False, display=0,
                      test_interval=max(1, iters // 4), snapshot_prefix="trial")
        path = _write_trial(os.path.join(out_dir, f"trial_{trial.number:03d}"), solver, net)
        record = {"trial": trial.number, **config}
        results.append(record)
        try:
            t = Trainer(path, out=lambda *a: None, force=True)
            seen = t._after_test

            def after_test(test):
                seen(test)
                score = _score(test)
                trial.report(score, t.iter)
                if trial.should_prune():
                    record.update(score=score, pruned_at=t.iter)
                    raise optuna.TrialPruned()
            t._after_test = after_test
            final = t.train()
        except UserError as e:
            record.update(score=-math.inf, error=str(e).splitlines()[0])
            return float("-inf")
        finally:
            Progress.update(len(results), trials, "search")
        record.update({k: v for k, v in final.items() if isinstance(v, float)})
        record["score"] = _score(final)
        out(f"trial {trial.number}: score {record['score']:.4g}  " + _settings(record, space))
        return record["score"]

    study.optimize(objective, n_trials=trials, catch=())
    pruned = sum("pruned_at" in r for r in results)
    out(f"Optuna: {len(results)} trials, {pruned} pruned early")
    return _write_results(results, space, base_solver, base_net, out_dir, out)
