"""Training end to end on the shipped digits: the loss falls, metrics are data, resume is exact."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from solvers.snapshot import load_npz
from solvers.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = os.path.join(ROOT, "models", "lenet_digits", "net.yaml")


def solver(tmp_path, name="solver.yaml", **overrides):
    cfg = {"net": NET, "base_lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "lr_policy": "inv",
           "gamma": 0.0001, "power": 0.75, "max_iter": 40, "display": 1, "test_iter": 1, "test_interval": 10,
           "snapshot_prefix": "snap/run", "random_seed": 7}
    cfg.update(overrides)
    path = tmp_path / name
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items() if v is not None))
    return str(path)


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def quiet(*_):
    pass


def test_short_training_lowers_the_loss(tmp_path):
    t = Trainer(solver(tmp_path, max_iter=60), out=quiet)
    t.train()
    train = [r for r in records(t.metrics_path) if r["phase"] == "train"]
    first, last = np.mean([r["loss"] for r in train[:10]]), np.mean([r["loss"] for r in train[50:60]])
    assert first > 1.5 and last < 0.5 * first


def test_metrics_records_follow_caffe_numbering(tmp_path):
    t = Trainer(solver(tmp_path, max_iter=20, display=5, test_interval=10), out=quiet)
    t.train()
    recs = records(os.path.join(tmp_path, "snap", "run_metrics.jsonl"))
    train = [r for r in recs if r["phase"] == "train"]
    test = [r for r in recs if r["phase"] == "test"]
    assert [r["iter"] for r in train] == [0, 5, 10, 15, 20]          # 20: the forward-only pass at the end
    assert set(train[1]) >= {"phase", "iter", "loss", "lr", "elapsed_s", "images_per_s"}
    assert train[0]["lr"] == pytest.approx(0.05) and train[1]["lr"] == pytest.approx(0.05 * (1 + 0.0001 * 5) ** -0.75)
    assert [r["iter"] for r in test] == [0, 10, 20]
    assert 0 <= test[-1]["accuracy"] <= 1 and test[-1]["loss"] > 0
    assert 0 < train[0]["elapsed_s"] < train[1]["elapsed_s"] < train[3]["elapsed_s"]
    assert train[0]["images_per_s"] > 0


def test_resume_continues_at_snapshot_iteration_with_same_history(tmp_path):
    whole = Trainer(solver(tmp_path, "whole.yaml", snapshot_prefix="whole/run"), out=quiet)
    whole.train()
    half = Trainer(solver(tmp_path, "half.yaml", max_iter=20, snapshot_prefix="half/run"), out=quiet)
    half.train()
    state = os.path.join(tmp_path, "half", "run_iter_20.solverstate.npz")
    assert os.path.exists(state)
    resumed = Trainer(solver(tmp_path, "half.yaml", snapshot_prefix="half/run"), out=quiet)
    resumed.train(snapshot_path=state)
    assert resumed.iter == 40

    def losses(path):
        return {r["iter"]: r["loss"] for r in records(path) if r["phase"] == "train"}

    a, b = losses(whole.metrics_path), losses(resumed.metrics_path)
    assert [b[it] for it in range(20, 41)] == [a[it] for it in range(20, 41)]      # bitwise
    for key, w in whole.net.weights().items():
        np.testing.assert_array_equal(resumed.net.weights()[key], w)
    for h1, h2 in zip(whole.solver.history, resumed.solver.history):
        np.testing.assert_array_equal(h2, h1)


def test_snapshots_are_written_whole_and_named_after_the_iteration(tmp_path):
    t = Trainer(solver(tmp_path, max_iter=10, snapshot=5, test_interval=0, test_iter=[]), out=quiet)
    t.train()
    files = sorted(os.listdir(os.path.join(tmp_path, "snap")))
    assert files == ["run_iter_10.solverstate.npz", "run_iter_10.weights.npz", "run_iter_5.solverstate.npz",
                     "run_iter_5.weights.npz", "run_metrics.jsonl"]
    w = load_npz(os.path.join(tmp_path, "snap", "run_iter_10.weights.npz"), "weights")
    np.testing.assert_array_equal(w["conv1/0"], t.net.layer_by_name("conv1").blobs[0].data)


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_train_and_test_commands(tmp_path):
    s = solver(tmp_path, max_iter=30, display=10, test_interval=30)
    r = cli("train", s)
    assert r.returncode == 0, r.stderr
    assert "Iteration 10 (" in r.stdout and "iter/s" in r.stdout and "img/s), loss = " in r.stdout
    assert "Iteration 10, lr = " in r.stdout
    assert "Test net output #0: accuracy = " in r.stdout
    weights = os.path.join(tmp_path, "snap", "run_iter_30.weights.npz")
    r = cli("test", NET, "--weights", weights, "--iterations", "2")
    assert r.returncode == 0, r.stderr
    assert "accuracy = " in r.stdout and "Loss: " not in r.stdout  # one loss of weight 1: printed once
    assert len([l for l in r.stdout.splitlines() if l.startswith("loss = ") and "(* 1 = " in l]) == 1
    assert "Note: 2 batches read the 359 examples of 'digits_test.csv.gz' in batches of 359 2 times over" in r.stdout
    r = cli("test", NET, "--weights", weights)  # by default one pass over the TEST data
    assert r.stdout.startswith("Testing 1 batches: the 359 examples of 'digits_test.csv.gz' in batches of 359, once")
    assert r.stdout.count("Batch ") == 2  # accuracy and loss of batch 0
    # a weights file where a solver state belongs: a clear error, not a traceback
    r = cli("train", s, "--snapshot", weights)
    assert r.returncode == 2 and "looks like a weights file: use --weights" in r.stderr
    assert "Traceback" not in r.stderr


def test_ctrl_c_snapshots_and_stops(tmp_path):
    s = solver(tmp_path, max_iter=100000, display=50, test_interval=0, test_iter=[])
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "train", s], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("Iteration 50 "):
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    snaps = [f for f in os.listdir(os.path.join(tmp_path, "snap")) if f.endswith(".solverstate.npz")]
    assert len(snaps) == 1 and "Traceback" not in err


def test_resume_with_lower_lr_prints_what_changed_and_the_next_rate(tmp_path):
    half = Trainer(solver(tmp_path, max_iter=10, lr_policy="fixed", test_interval=0, test_iter=[]), out=quiet)
    half.train()
    state = os.path.join(tmp_path, "snap", "run_iter_10.solverstate.npz")
    lines = []
    t = Trainer(solver(tmp_path, max_iter=14, lr_policy="fixed", test_interval=0, test_iter=[]), out=lines.append,
                overrides={"base_lr": 0.005})
    t.train(snapshot_path=state)
    text = "\n".join(lines)
    assert f"Resumed from iteration 10 of {state}" in text
    assert "base_lr: 0.05 -> 0.005" in text and "max_iter: 10 -> 14" in text
    assert "Learning rate of the next iteration (10): 0.005" in text
    recs = [r for r in records(t.metrics_path) if r["phase"] == "train"]
    assert [r["lr"] for r in recs if r["iter"] >= 10 and r["lr"] is not None][0] == pytest.approx(0.005)


def test_lr_scale_multiplies_the_policy_rate_and_stays_in_later_snapshots(tmp_path):
    Trainer(solver(tmp_path, max_iter=10, test_interval=0, test_iter=[]), out=quiet).train()
    lines = []
    t = Trainer(solver(tmp_path, max_iter=20, snapshot=15, test_interval=0, test_iter=[]), out=lines.append,
                lr_scale=0.1)
    t.train(snapshot_path=os.path.join(tmp_path, "snap", "run_iter_10.solverstate.npz"))
    want = 0.1 * 0.05 * (1 + 0.0001 * 12) ** -0.75
    rec = {r["iter"]: r for r in records(t.metrics_path) if r["phase"] == "train"}
    assert rec[12]["lr"] == pytest.approx(want, rel=1e-6)
    later = Trainer(solver(tmp_path, max_iter=20, test_interval=0, test_iter=[]), out=lines.append)
    later.restore(os.path.join(tmp_path, "snap", "run_iter_15.solverstate.npz"))
    assert later.lr_scale == pytest.approx(0.1)


def test_solver_type_differing_from_the_snapshot_is_an_error(tmp_path):
    Trainer(solver(tmp_path, max_iter=5, test_interval=0, test_iter=[]), out=quiet).train()
    from netspec.errors import UserError
    t = Trainer(solver(tmp_path, max_iter=10, type="Adam", test_interval=0, test_iter=[]), out=quiet)
    with pytest.raises(UserError, match="holds SGD history but the solver says type: Adam; use type: SGD"):
        t.train(snapshot_path=os.path.join(tmp_path, "snap", "run_iter_5.solverstate.npz"))


def test_state_passed_as_weights_is_a_clear_error(tmp_path):
    s = solver(tmp_path, max_iter=5, test_interval=0, test_iter=[])
    Trainer(s, out=quiet).train()
    r = cli("train", s, "--weights", os.path.join(tmp_path, "snap", "run_iter_5.solverstate.npz"))
    assert r.returncode == 2 and "this is a solver state, not weights; resume from it with --snapshot" in r.stderr


def test_several_weights_files_apply_in_order(tmp_path):
    s = solver(tmp_path, max_iter=5, test_interval=0, test_iter=[])
    Trainer(s, out=quiet).train()
    w = os.path.join(tmp_path, "snap", "run_iter_5.weights.npz")
    arrays = dict(np.load(w))
    arrays["ip2/1"] = np.full_like(arrays["ip2/1"], 7)
    np.savez(tmp_path / "second.npz", **{"ip2/1": arrays["ip2/1"]})
    t = Trainer(solver(tmp_path, max_iter=0, test_interval=0, test_iter=[], snapshot_after_train=False), out=quiet,
                force=True)
    t.train(weights_path=f"{w},{tmp_path / 'second.npz'}")
    np.testing.assert_array_equal(t.net.layer_by_name("ip2").blobs[1].data, 7)
    np.testing.assert_array_equal(t.net.layer_by_name("conv1").blobs[0].data, arrays["conv1/0"])


def test_set_rejects_unknown_fields_and_bad_values(tmp_path):
    s = solver(tmp_path, max_iter=5)
    r = cli("train", s, "--set", "base_rl=0.1")
    assert r.returncode == 2 and "unknown solver field 'base_rl'; did you mean 'base_lr'?" in r.stderr
    r = cli("train", s, "--set", "solver_type=RMSPROP")  # Caffe's old enum (it suggested 'solver_mode')
    assert r.returncode == 2 and "solver_type is Caffe's deprecated field; use --set type=RMSProp" in r.stderr
    r = cli("validate", solver(tmp_path, name="old.yaml", solver_type="ADAM"))
    assert r.returncode == 2 and "old.yaml:14:14: error: solver_type is Caffe's deprecated field; write type: Adam" \
        in r.stdout + r.stderr, r.stdout + r.stderr
    r = cli("train", s, "--set", "momentum=2")
    assert r.returncode == 2 and r.stderr.startswith("--set momentum=2: error: 2 is greater than or equal to the "
                                                     "maximum of 1; give a value of the field's type, e.g. --set")
    r = cli("data", "convert", os.path.join(ROOT, "models", "lenet_digits", "digits_test.csv.gz"),
            str(tmp_path / "out.npz"), "--resize", "4x4")
    assert r.returncode == 2 and "--resize applies to image lists only; this is a csv file" in r.stderr
    assert not (tmp_path / "out.npz").exists()
    r = cli("data", "convert", "list.txt", str(tmp_path / "out.npz"), "--resize", "0x4")  # (Caffe resizes to both)
    assert r.returncode == 2 and "two sizes above 0" in r.stderr
    r = cli("data", "convert", "list.txt", str(tmp_path / "db"), "--root", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "--root" in r.stderr and "no such folder" in r.stderr
    r = cli("data", "convert", str(tmp_path / "missing.csv"), str(tmp_path / "out.npz"))
    assert r.returncode == 2 and r.stderr.startswith(f"{tmp_path / 'missing.csv'}: error: no such file or directory; "
                                                     "check the path") and "Errno" not in r.stderr


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "1.0e-3", ".1e-2", "+1e-3"])
def test_set_reads_every_number_form_float_reads(text):
    import run
    assert run.field_value(f"base_lr={text}") == ("base_lr", 0.001)
    assert run.field_value("max_iter=1e3") == ("max_iter", 1000.0) and run.field_value("gamma=1.0e9")[1] == 1e9
    from netspec.loader import loads
    assert loads(f"base_lr: {text}\nstepvalue: [1e3, 2E3]\n") == {"base_lr": 0.001, "stepvalue": [1000.0, 2000.0]}


def test_set_with_scientific_notation_resumes_training(tmp_path):
    s = solver(tmp_path, max_iter=4, test_interval=0, test_iter=[], snapshot=4, lr_policy="fixed")
    assert cli("train", s).returncode == 0
    r = cli("train", s, "--snapshot", str(tmp_path / "snap" / "run_iter_4.solverstate.npz"), "--set", "base_lr=1e-3",
            "--set", "max_iter=6")
    assert r.returncode == 0, r.stderr
    assert "lr = 0.001" in r.stdout


def test_test_command_json(tmp_path):
    s = solver(tmp_path, max_iter=5, test_interval=0, test_iter=[])
    Trainer(s, out=quiet).train()
    r = cli("test", NET, "--weights", os.path.join(tmp_path, "snap", "run_iter_5.weights.npz"), "--iterations", "2",
            "--json")
    out = json.loads(r.stdout)
    assert set(out) >= {"accuracy", "loss", "weighted_loss"} and 0 <= out["accuracy"] <= 1
    assert out["loss"] == pytest.approx(out["weighted_loss"])  # the net's own output, not overwritten


def test_test_command_prints_the_weighted_total_for_several_losses(tmp_path):
    from solvers.trainer import test_model
    net = tmp_path / "two.yaml"
    net.write_text("""layer:
  - {name: in, type: Input, top: [x, y], input_param: {shape: [{dim: [4, 3]}, {dim: [4, 3]}]}}
  - {name: l2, type: EuclideanLoss, bottom: [x, y], top: l2, loss_weight: 2}
  - {name: l1, type: EuclideanLoss, bottom: [y, x], top: l1, loss_weight: 0.5}
""")
    lines = []
    out = test_model(str(net), None, 1, out=lines.append)
    assert out["weighted_loss"] == pytest.approx(2.5 * out["l2"]) and "weighted_loss" not in (out["l1"], out["l2"])
    assert any(l.startswith("l2 = ") and "(* 2 = " in l for l in lines) and any(l.startswith("Loss: ") for l in lines)


def endless_training(tmp_path):
    """`run.py train` of a long run in a child process, displaying every 50 iterations."""
    s = solver(tmp_path, max_iter=100000, display=50, test_interval=0, test_iter=[])
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "train", s], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sighup_snapshots_and_goes_on(tmp_path):
    p = endless_training(tmp_path)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("Iteration 50 "):
            p.send_signal(signal.SIGHUP)
        if line.startswith("Iteration 150 "):
            break
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    text = "".join(seen)
    assert "SIGHUP: snapshotting after this iteration, then going on" in text
    states = sorted(f for f in os.listdir(os.path.join(tmp_path, "snap")) if f.endswith(".solverstate.npz"))
    assert len(states) == 2 and p.returncode == 130   # the SIGHUP one, and the SIGINT one at the end


def test_sigterm_from_a_batch_scheduler_snapshots_and_stops(tmp_path):
    p = endless_training(tmp_path)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("Iteration 50 "):
            p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert "SIGTERM: finishing this iteration, then snapshotting and stopping" in "".join(seen)
    states = [f for f in os.listdir(os.path.join(tmp_path, "snap")) if f.endswith(".solverstate.npz")]
    assert len(states) == 1 and p.returncode == 143


def test_kill_during_snapshots_leaves_only_whole_files_and_resume_works(tmp_path):
    """Snapshot every iteration, kill -9 at some point, then every file on disk loads and the newest
    state resumes."""
    s = solver(tmp_path, max_iter=100000, display=0, snapshot=1, test_interval=0, test_iter=[])
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "train", s], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for n, line in enumerate(p.stdout):
        if line.startswith("Snapshotting solver state") and n > 40:
            break
    time.sleep(0.037)  # somewhere in the middle of the next snapshots
    p.kill()
    p.wait(timeout=60)
    folder = os.path.join(tmp_path, "snap")
    done = [f for f in os.listdir(folder) if f.endswith(".npz")]
    for f in done:  # no torn file under a final name
        with np.load(os.path.join(folder, f)) as z:
            [z[k] for k in z.files]
    states = sorted((int(f.split("_iter_")[1].split(".")[0]), f) for f in done if f.endswith(".solverstate.npz"))
    newest = os.path.join(folder, states[-1][1])
    t = Trainer(solver(tmp_path, max_iter=states[-1][0] + 3, snapshot=0, test_interval=0, test_iter=[]), out=quiet)
    t.train(snapshot_path=newest)
    assert t.iter == states[-1][0] + 3


def test_several_test_nets_are_tested_in_turn_and_the_first_drives_the_decisions(tmp_path):
    """Caffe's order: test_net files, then instances of `net`, each with its own test_iter and test_state."""
    lines = []
    t = Trainer(solver(tmp_path, max_iter=10, display=0, test_net=[NET], test_iter=[1, 2],
                       test_state=[{"stage": ["a"]}, {"stage": ["b"]}]), out=lines.append)
    assert [n.path for n in t.test_nets] == [NET, NET] and t.test_net is t.test_nets[0]
    t.train()
    assert [l for l in lines if "Testing net" in l] == ["Iteration 0, Testing net (#0)", "Iteration 0, Testing net (#1)",
                                                        "Iteration 10, Testing net (#0)", "Iteration 10, Testing net (#1)"]
    tests = [r for r in records(t.metrics_path) if r["phase"] == "test"]
    assert [(r["iter"], r["net"]) for r in tests] == [(0, 0), (0, 1), (10, 0), (10, 1)]
    assert tests[2]["accuracy"] == pytest.approx(tests[3]["accuracy"])  # the same net, the same test set


def test_test_iter_must_cover_every_test_net(tmp_path):
    from netspec.spec import validate
    path = solver(tmp_path, net=None, train_net=NET, test_net=[NET, NET], test_iter=[1])
    errors = [f.message for f in validate([path]) if f.severity == "error"]
    assert any("1 test_iter value(s) for 2 test net(s): give one test_iter per test net" in m for m in errors)


# ---- runs that survive: existing runs, locks, metrics after a crash, edited nets ---------------------------------

def test_a_second_run_on_the_same_prefix_is_refused_unless_forced(tmp_path):
    from netspec.errors import UserError
    s = solver(tmp_path, max_iter=4, test_interval=0, test_iter=[], snapshot=2)
    Trainer(s, out=quiet).train()
    with pytest.raises(UserError, match=r"already holds a run \(run_iter_2.solverstate.npz, .*resume it with "
                                        r"--snapshot \S+run_iter_4.solverstate.npz, .*--force"):
        Trainer(s, out=quiet).train()
    lines = []
    Trainer(s, out=lines.append, force=True).train()
    assert any("Overwriting the run" in l for l in lines)
    r = cli("train", s)
    assert r.returncode == 2 and "already holds a run" in r.stderr and "Traceback" not in r.stderr


def test_a_prefix_in_use_by_a_live_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    from netspec.errors import UserError
    s = solver(tmp_path, max_iter=2, test_interval=0, test_iter=[])
    os.makedirs(tmp_path / "snap", exist_ok=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "snap" / "run.lock").write_text(f"{sleeper.pid}\n")
        with pytest.raises(UserError, match=f"another trainer \\(PID {sleeper.pid}\\) is writing"):
            Trainer(s, out=quiet).train()
    finally:
        sleeper.kill()
        sleeper.wait()
    lines = []
    Trainer(s, out=lines.append).train()  # the sleeper is gone: its lock is stale
    assert any(f"taking over" in l and f"PID {sleeper.pid}" in l for l in lines)
    assert not (tmp_path / "snap" / "run.lock").exists()  # released at the end


def test_metrics_survive_a_crash_after_resume_and_elapsed_goes_on(tmp_path):
    s = solver(tmp_path, max_iter=6, test_interval=0, test_iter=[], snapshot=3, display=1)
    t = Trainer(s, out=quiet)
    t.train()
    before = records(t.metrics_path)
    state = str(tmp_path / "snap" / "run_iter_3.solverstate.npz")
    t2 = Trainer(s, out=quiet, overrides={"max_iter": 8})
    boom = RuntimeError("crash")

    def crash(*a, **k):
        raise boom
    t2._loop = crash
    with pytest.raises(RuntimeError):
        t2.train(snapshot_path=state)
    kept = [r for r in records(t.metrics_path) if r["phase"] != "run"]
    assert kept == [r for r in before if r["iter"] < 3 and r["phase"] != "run"] and kept  # history kept
    t3 = Trainer(s, out=quiet, overrides={"max_iter": 8})
    t3.train(snapshot_path=state)
    recs = [r for r in records(t.metrics_path) if r["phase"] == "train" and r.get("images_per_s")]
    assert [r["iter"] for r in recs] == list(range(8))
    resumed = [r["elapsed_s"] for r in recs if r["iter"] >= 3]
    assert resumed[0] >= recs[2]["elapsed_s"] and resumed == sorted(resumed)


def test_resuming_into_an_edited_net_says_what_changed_and_refuses_new_learnable_layers(tmp_path):
    from netspec.errors import UserError
    net = open(NET).read().replace("digits_train.csv.gz", os.path.join(os.path.dirname(NET), "digits_train.csv.gz"))
    net = net.replace("digits_test.csv.gz", os.path.join(os.path.dirname(NET), "digits_test.csv.gz"))
    (tmp_path / "net.yaml").write_text(net)
    s = solver(tmp_path, net="net.yaml", max_iter=2, test_interval=0, test_iter=[], snapshot=2)
    Trainer(s, out=quiet).train()
    state = str(tmp_path / "snap" / "run_iter_2.solverstate.npz")
    (tmp_path / "net.yaml").write_text(net.replace("pool: MAX", "pool: AVE"))
    lines = []
    Trainer(s, out=lines.append, overrides={"max_iter": 3}).train(snapshot_path=state)
    assert any("pooling_param.pool: MAX -> AVE" in l for l in lines)
    (tmp_path / "net.yaml").write_text(net.replace("name: ip1", "name: ip1_new"))
    with pytest.raises(UserError, match="ip1_new would start from their fillers.*ip1 would be dropped.*--force"):
        Trainer(s, out=quiet, overrides={"max_iter": 3}).train(snapshot_path=state)
    Trainer(s, out=quiet, overrides={"max_iter": 3}, force=True).train(snapshot_path=state)


def read_events(folder):
    """{tag: [(step, value)]} from TensorBoard event files (TFRecord framing: length, its CRC, data, its CRC)."""
    import glob
    import struct
    from tensorboardX.proto import event_pb2
    out = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        data = open(path, "rb").read()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_gets_the_metrics_scalars(tmp_path):
    s = solver(tmp_path, max_iter=20, display=5, test_interval=10)
    t = Trainer(s, out=quiet, tensorboard=str(tmp_path / "tb"))
    t.train()
    events = read_events(tmp_path / "tb")
    recs = records(t.metrics_path)
    train = {r["iter"]: r for r in recs if r["phase"] == "train"}  # with the final pass's at 20
    assert [s for s, _ in events["train/loss"]] == sorted(train) and sorted(train) == [0, 5, 10, 15, 20]
    for step, value in events["train/loss"]:
        assert value == pytest.approx(train[step]["loss"], rel=1e-6)
    tests = [r for r in recs if r["phase"] == "test"]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in events["test/accuracy"]] == [
        (r["iter"], r["accuracy"]) for r in tests]
    assert "train/lr" in events


def test_a_full_disk_during_a_snapshot_is_a_clear_error_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """ENOSPC while the iteration-6 files are written (injected at their fsync): a user error naming the path, the
    bytes needed and free; the iteration-3 snapshot intact, no partial file left."""
    import errno
    from solvers import snapshot as snap
    s = solver(tmp_path, max_iter=6, test_interval=0, test_iter=[], snapshot=3)
    real_fsync = os.fsync

    def fsync(fd):
        if "_iter_6" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(snap.os, "fsync", fsync)
    with pytest.raises(snap.DiskFull, match=r"run_iter_6.weights.npz: error: the disk is full .*: [\d,]+ bytes "
                                            r"needed, [\d,]+ free in .*the previous snapshot is intact"):
        Trainer(s, out=quiet).train()
    files = sorted(os.listdir(tmp_path / "snap"))
    assert "run_iter_3.solverstate.npz" in files and not any(".tmp" in f or "_iter_6" in f for f in files)
    r = cli("train", s, "--snapshot", str(tmp_path / "snap" / "run_iter_3.solverstate.npz"))  # resumes fine
    assert r.returncode == 0, r.stderr


def test_a_full_disk_for_the_metrics_warns_and_training_goes_on(tmp_path):
    import errno
    s = solver(tmp_path, max_iter=6, test_interval=0, test_iter=[], display=1)
    lines = []
    t = Trainer(s, out=lines.append)
    opened = {}

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            pass
    real_init = t.train

    def train():
        from solvers import trainer as tr
        orig = tr.Metrics.__init__

        def init(self, *a, **k):
            orig(self, *a, **k)
            if self.file:
                self.file.close()
                self.file = Full()
                opened["yes"] = True
        tr.Metrics.__init__ = init
        try:
            return real_init()
        finally:
            tr.Metrics.__init__ = orig
    train()
    assert opened and t.iter == 6
    assert sum("cannot write the metrics" in l for l in lines) == 1


def test_temporary_files_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    s = solver(tmp_path, max_iter=2, test_interval=0, test_iter=[])
    os.makedirs(tmp_path / "snap")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "snap" / f"run_iter_5.weights.npz.tmp{dead.pid}").write_bytes(b"partial")
    lines = []
    Trainer(s, out=lines.append).train()
    assert not any(".tmp" in f for f in os.listdir(tmp_path / "snap"))
    assert any("left by a run killed while writing it" in l for l in lines)


def test_kill_9_during_a_resume_leaves_the_metrics_history(tmp_path):
    s = solver(tmp_path, max_iter=20, test_interval=0, test_iter=[], snapshot=10, display=1)
    assert cli("train", s).returncode == 0
    before = [r for r in records(str(tmp_path / "snap" / "run_metrics.jsonl")) if r["phase"] == "train"]
    for attempt in range(3):  # kill at different moments of the resume
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "train", s, "--snapshot",
                              str(tmp_path / "snap" / "run_iter_10.solverstate.npz"), "--set", "max_iter=100000"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in p.stdout:
            if line.startswith("Resumed") and attempt == 0 or line.startswith(f"Iteration {10 + 5 * attempt} ("):
                break
        p.kill()
        p.wait()
        after = [r for r in records(str(tmp_path / "snap" / "run_metrics.jsonl")) if r["phase"] == "train"]
        assert [r for r in after if r["iter"] < 10] == [r for r in before if r["iter"] < 10]
        # the killed run's lock stays behind; the next attempt takes it over


def test_weights_that_leave_a_layer_out_are_said_when_testing_and_when_fine_tuning(tmp_path):
    """A layer renamed since the weights were saved gets none (Caffe matches by name and ignores the rest): run.py
    test warns that the outputs are not the trained net's; fine-tuning says which layers start from scratch and
    which of the file's it does not use."""
    from solvers.trainer import Trainer, test_model
    root = os.path.join(ROOT, "models", "lenet_digits")
    for name in ("digits_train.csv.gz", "digits_test.csv.gz"):
        shutil.copy(os.path.join(root, name), tmp_path / name)
    net = open(os.path.join(root, "net.yaml")).read()
    (tmp_path / "net.yaml").write_text(net)
    (tmp_path / "solver.yaml").write_text("net: net.yaml\nbase_lr: 0.01\nmax_iter: 2\nsnapshot_prefix: snap/a\n")
    t = Trainer(str(tmp_path / "solver.yaml"), out=lambda *a: None)
    t.train()
    weights = str(tmp_path / "snap" / "a_iter_2.weights.npz")
    (tmp_path / "renamed.yaml").write_text(net.replace("name: ip2\n", "name: ip2_new\n"))
    lines = []
    test_model(str(tmp_path / "renamed.yaml"), weights, out=lines.append)
    said = [line for line in lines if line.startswith("Warning:")]
    assert len(said) == 1 and "1 layer(s) got no weights from" in said[0] and "'ip2_new' (InnerProduct)" in said[0]
    assert "the file has 'ip2', which this net does not use" in said[0]
    lines.clear()
    test_model(str(tmp_path / "net.yaml"), weights, out=lines.append)
    assert not any(line.startswith("Warning:") for line in lines)
    (tmp_path / "ft.yaml").write_text("net: renamed.yaml\nbase_lr: 0.01\nmax_iter: 1\nsnapshot_prefix: snap/b\n")
    lines.clear()
    Trainer(str(tmp_path / "ft.yaml"), out=lines.append).train(weights_path=weights)
    text = "\n".join(map(str, lines))
    assert "(its layer 'ip2' is not in this net)" in text
    assert "Learned from scratch (no weights of that name in" in text and ": 'ip2_new'" in text
