"""Data-parallel training and search over MPI: real `mpiexec -n 2` runs of run.py (the mpi extra)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "run.py")


def mpiexec():
    path = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if path is None:
        pytest.fail("mpiexec not found: install the mpi extra (pip install -e '.[test]' includes it)")
    return path


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_LOCAL"))}
    env.pop("YAFFE_DEBUG", None)
    return env


def run(args, ranks=None, timeout=240, **kw):
    cmd = ([mpiexec(), "-n", str(ranks)] if ranks else []) + [sys.executable, RUN] + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), **kw)


NET = """name: mlp
layer:
  - {{name: d, type: Data, top: [data, label], include: {{phase: TRAIN}},
     data_param: {{source: rows.npz, batch_size: {batch}, shuffle: true}}}}
  - {{name: d, type: Data, top: [data, label], include: {{phase: TEST}}, data_param: {{source: rows.npz, batch_size: 24}}}}
  - {{name: ip1, type: InnerProduct, bottom: data, top: ip1,
     inner_product_param: {{num_output: 16, weight_filler: {{type: xavier}}}}}}
  - {{name: relu1, type: ReLU, bottom: ip1, top: ip1}}
  - {{name: ip2, type: InnerProduct, bottom: ip1, top: ip2,
     inner_product_param: {{num_output: 4, weight_filler: {{type: xavier}}}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip2, label], top: loss}}
  - {{name: acc, type: Accuracy, bottom: [ip2, label], top: acc, include: {{phase: TEST}}}}
"""


# the rows as sequences of 4 steps of 3 values, time first for the LSTM: ranks split them along N, never T
SEQ_NET = """name: mlp
layer:
  - {{name: d, type: Data, top: [data, label], include: {{phase: TRAIN}},
     data_param: {{source: rows.npz, batch_size: {batch}, shuffle: true}}}}
  - {{name: d, type: Data, top: [data, label], include: {{phase: TEST}}, data_param: {{source: rows.npz, batch_size: 24}}}}
  - {{name: steps, type: Reshape, bottom: data, top: steps, reshape_param: {{shape: {{dim: [0, 4, 3]}}}}}}
  - {{name: time_first, type: Permute, bottom: steps, top: seq, permute_param: {{order: [1, 0, 2]}}}}
  - {{name: cont, type: DummyData, top: cont, include: {{phase: TRAIN}},
     dummy_data_param: {{shape: {{dim: [4, {batch}]}}, data_filler: {{type: constant, value: 1}}}}}}
  - {{name: cont, type: DummyData, top: cont, include: {{phase: TEST}},
     dummy_data_param: {{shape: {{dim: [4, 24]}}, data_filler: {{type: constant, value: 1}}}}}}
  - {{name: lstm, type: LSTM, bottom: [seq, cont], top: h, recurrent_param: {{num_output: 6,
     weight_filler: {{type: uniform, min: -0.3, max: 0.3}}}}}}
  - {{name: last, type: Slice, bottom: h, top: [h_early, h_last], slice_param: {{axis: 0, slice_point: 3}}}}
  - {{name: quiet, type: Silence, bottom: h_early}}
  - {{name: flat, type: Reshape, bottom: h_last, top: features, reshape_param: {{shape: {{dim: [-1, 6]}}}}}}
  - {{name: ip2, type: InnerProduct, bottom: features, top: ip2,
     inner_product_param: {{num_output: 4, weight_filler: {{type: xavier}}}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [ip2, label], top: loss}}
  - {{name: acc, type: Accuracy, bottom: [ip2, label], top: acc, include: {{phase: TEST}}}}
"""


def setup_run(folder, batch, max_iter=20, net=NET, **extra):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(72, 12)).astype(np.float32)
    np.savez(os.path.join(folder, "rows.npz"), data=x, label=(x[:, 0] > 0) + 2 * (x[:, 1] > 0))
    with open(os.path.join(folder, "net.yaml"), "w") as f:
        f.write(net.format(batch=batch))
    cfg = {"net": "net.yaml", "base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.001, "max_iter": max_iter,
           "display": 1, "snapshot": 10, "test_iter": 3, "test_interval": 10, "random_seed": 5,
           "snapshot_prefix": "snap/mlp", **extra}
    with open(os.path.join(folder, "solver.yaml"), "w") as f:
        f.writelines(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items() if v is not None)
    return os.path.join(folder, "solver.yaml")


def losses(folder):
    with open(os.path.join(folder, "snap", "mlp_metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["iter"]: r["loss"] for r in recs if r["phase"] == "train" and r.get("images_per_s")}


def weights(folder, it):
    with np.load(os.path.join(folder, "snap", f"mlp_iter_{it}.weights.npz")) as z:
        return {k: z[k] for k in z.files}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-6, err_msg=k)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """One process with batch 16, and 2 ranks with batch 8 each, on the same data order."""
    base = tmp_path_factory.mktemp("mpi")
    one, two = str(base / "one"), str(base / "two")
    r1 = run(["train", setup_run(one, 16)])
    r2 = run(["train", setup_run(two, 8)], ranks=2)
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stdout + r2.stderr
    return one, two, r1, r2


def test_two_ranks_match_one_process_with_the_double_batch(one_and_two):
    one, two, _, r2 = one_and_two
    l1, l2 = losses(one), losses(two)
    assert sorted(l1) == sorted(l2) == list(range(20))
    np.testing.assert_allclose([l2[i] for i in range(20)], [l1[i] for i in range(20)], rtol=1e-4)
    assert_same(weights(one, 20), weights(two, 20))
    assert "Data-parallel over 2 MPI ranks: batch 8 per rank, effective batch 16" in r2.stdout


def test_a_recurrent_net_over_two_ranks_splits_its_sequences_along_n(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    r1 = run(["train", setup_run(one, 16, max_iter=10, net=SEQ_NET, snapshot=0), "--replicas", "1"])
    r2 = run(["train", setup_run(two, 8, max_iter=10, net=SEQ_NET, snapshot=0), "--replicas", "1"], ranks=2)
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stdout + r2.stderr
    l1, l2 = losses(one), losses(two)
    np.testing.assert_allclose([l2[i] for i in range(10)], [l1[i] for i in range(10)], rtol=1e-4)
    assert_same(weights(one, 10), weights(two, 10))


def final_loss(folder):
    """The loss of Caffe's extra forward pass after the last update (the record without a rate)."""
    with open(os.path.join(folder, "snap", "mlp_metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [r["loss"] for r in recs if r["phase"] == "train" and r["iter"] == 20 and not r.get("images_per_s")]


def test_the_final_loss_is_the_whole_batchs_not_rank_0s(one_and_two):
    one, two, _, _ = one_and_two
    (l1,), (l2,) = final_loss(one), final_loss(two)
    assert l2 == pytest.approx(l1, rel=1e-4)


def test_only_rank_0_logs_tests_and_snapshots(one_and_two):
    _, two, _, r2 = one_and_two
    assert r2.stdout.count("Optimization Done.") == 1
    assert r2.stdout.count("Test net output #1: acc") == 3  # iterations 0, 10, 20: rank 0 alone
    assert sorted(os.listdir(os.path.join(two, "snap"))) == [
        "mlp_iter_10.solverstate.npz", "mlp_iter_10.weights.npz", "mlp_iter_20.solverstate.npz",
        "mlp_iter_20.weights.npz", "mlp_metrics.jsonl"]


def test_resume_across_a_change_in_the_number_of_ranks(one_and_two, tmp_path):
    one, two, _, _ = one_and_two
    # 2 ranks -> 1 process (batch 16): continues exactly as the 2-rank run did
    a = str(tmp_path / "a")
    setup_run(a, 16)
    r = run(["train", os.path.join(a, "solver.yaml"), "--snapshot", os.path.join(two, "snap", "mlp_iter_10.solverstate.npz")])
    assert r.returncode == 0, r.stderr
    assert_same(weights(a, 20), weights(two, 20))
    # 1 process -> 2 ranks (batch 8 each): continues exactly as the 1-process run did
    b = str(tmp_path / "b")
    setup_run(b, 8)
    r = run(["train", os.path.join(b, "solver.yaml"), "--snapshot", os.path.join(one, "snap", "mlp_iter_10.solverstate.npz")],
            ranks=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Resumed from iteration 10" in r.stdout
    assert_same(weights(b, 20), weights(one, 20))


def rank_pid(solver, rank):
    """The pid of the yaffe process of `rank` training `solver` (read from /proc)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if solver.encode() in cmd and RUN.encode() in cmd and f"PMI_RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.parametrize("how", ["hangs", "dies"])
def test_a_rank_that_hangs_or_dies_stops_the_others_and_the_last_snapshot_is_intact(tmp_path, how):
    folder = str(tmp_path)
    solver = setup_run(folder, 8, max_iter=100000, snapshot=20, display=0, test_iter=None, test_interval=None)
    cmd = [mpiexec(), "-n", "2", sys.executable, RUN, "train", solver, "--mpi-timeout", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(folder, "snap", "mlp_iter_20.solverstate.npz")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        pid = rank_pid(solver, 1)
        assert pid is not None
        started = time.time()
        os.kill(pid, signal.SIGSTOP if how == "hangs" else signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        took = time.time() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and took < 30
    if how == "hangs":  # yaffe's own timeout names the silent rank
        assert "rank 0: no answer within 3 s while summing the gradients" in err, (proc.returncode, out[-2000:], err)
        assert "rank 1 of 2 stopped answering" in err and "resume from it with --snapshot" in err
    else:  # the launcher ends the job and names the dead process
        assert "KILLED" in (out + err).upper() or "signal 9" in out + err, (out, err)
    snaps = sorted(f for f in os.listdir(os.path.join(folder, "snap")) if f.endswith(".solverstate.npz"))
    last = os.path.join(folder, "snap", snaps[-1])
    r = run(["train", solver, "--snapshot", last, "--set", f"max_iter={int(snaps[-1].split('_')[2].split('.')[0]) + 2}"])
    assert r.returncode == 0, r.stderr  # the last snapshot resumes


def test_search_hands_trials_to_the_other_ranks(tmp_path):
    solver = setup_run(str(tmp_path), 8)
    (tmp_path / "space.yaml").write_text("base_lr: {log_uniform: [1e-3, 1e-1]}\n")
    r = run(["search", solver, "--space", str(tmp_path / "space.yaml"), "--trials", "3", "--iters", "5", "--mpi",
         "--out", str(tmp_path / "s")], ranks=2, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("trial ") >= 3 and "Best: trial" in r.stdout
    with open(tmp_path / "s" / "results.jsonl") as f:
        results = [json.loads(line) for line in f]
    assert len(results) == 3 and all(np.isfinite(r["score"]) for r in results)


def test_search_mpi_without_mpiexec_says_how_to_launch(tmp_path):
    solver = setup_run(str(tmp_path), 8)
    (tmp_path / "space.yaml").write_text("base_lr: {log_uniform: [1e-3, 1e-1]}\n")
    r = run(["search", solver, "--space", str(tmp_path / "space.yaml"), "--mpi"])
    assert r.returncode == 2 and "mpiexec -n K python run.py search" in r.stderr


def test_mpiexec_without_mpi4py_says_how_to_install_it(tmp_path):
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    solver = setup_run(str(tmp_path), 8)
    env = dict(clean_env(), PMI_SIZE="2", PMI_RANK="0", PYTHONPATH=str(tmp_path / "fake"))
    r = subprocess.run([sys.executable, RUN, "train", solver], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "pip install 'yaffe[mpi]'" in r.stderr and "Traceback" not in r.stderr


def test_single_process_training_never_imports_mpi(tmp_path):
    solver = setup_run(str(tmp_path), 8, max_iter=2, test_iter=None, test_interval=None)
    code = ("import sys, runpy; sys.argv = ['run.py', 'train', %r]\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('MPI imported' if 'mpi4py' in sys.modules else 'no MPI')") % (solver, RUN)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.stdout.strip().endswith("no MPI"), r.stdout + r.stderr
