"""`run.py validate`: one test per check, each feeding a bad spec and asserting the message and position."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from netspec.spec import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEAD = """layer:
  - {name: in, type: Input, top: [data, label], input_param: {shape: [{dim: [4, 1, 6, 6]}, {dim: [4]}]}}
"""
IP = "  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 3}}\n"
LOSS = "  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}\n"


def findings(tmp_path, net, solver=None, name="net.yaml", **kw):
    (tmp_path / name).write_text(net)
    target = tmp_path / name
    if solver is not None:
        (tmp_path / "solver.yaml").write_text(solver)
        target = tmp_path / "solver.yaml"
    return [str(f) for f in validate([str(target)], **kw)]


def one(found, severity="error"):
    picked = [f for f in found if f": {severity}: " in f]
    assert len(picked) == 1, found
    return picked[0]


def test_valid_net_has_no_findings(tmp_path):
    assert findings(tmp_path, HEAD + IP + LOSS) == []


def test_duplicate_layer_names(tmp_path):
    found = findings(tmp_path, HEAD + IP + IP.replace("top: ip", "top: ip2") + LOSS)
    f = one([x for x in found if "already used" in x], "warning")  # Caffe accepts it: a warning, not an error
    assert ":4:12: warning: layer 'ip' (InnerProduct): the name 'ip' is already used by the layer at line 3" in f


def test_same_name_in_different_phases_is_fine(tmp_path):
    net = HEAD + IP.replace("}\n", ", include: {phase: TRAIN}}\n") + IP.replace("}\n", ", include: {phase: TEST}}\n")
    assert findings(tmp_path, net + LOSS) == []


def test_bottom_nobody_produces_names_the_closest_blob(tmp_path):
    f = one(findings(tmp_path, HEAD + IP.replace("bottom: data", "bottom: dat") + LOSS))
    assert ":3:" in f and "bottom 'dat' is not produced by any earlier layer" in f and "did you mean 'data'" in f


def test_top_produced_twice(tmp_path):
    net = HEAD + IP + "  - {name: ip_b, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 3}}\n"
    f = one(findings(tmp_path, net + LOSS))
    assert ":4:" in f and "top 'ip' is already produced by layer 'ip'" in f


def test_train_net_without_loss_is_an_error_for_a_solver_and_a_warning_alone(tmp_path):
    net = HEAD + IP
    data = HEAD.replace("type: Input", "type: DummyData").replace("input_param", "dummy_data_param") + IP
    assert "no loss layer" in one(findings(tmp_path, data), "warning")  # a data layer: meant to be trained
    f = one(findings(tmp_path, net, "net: net.yaml\nbase_lr: 0.1\nmax_iter: 10\n"))
    assert "the TRAIN net has no loss layer" in f and "add e.g. a SoftmaxWithLoss" in f


def test_layer_whose_output_nothing_uses_is_a_warning(tmp_path):
    net = HEAD + IP + "  - {name: extra, type: InnerProduct, bottom: data, top: dangling, inner_product_param: {num_output: 2}}\n"
    f = one(findings(tmp_path, net + LOSS), "warning")
    assert ":4:" in f and "layer 'extra' (InnerProduct): nothing uses its output 'dangling'" in f


def test_include_and_exclude_both_set(tmp_path):
    net = HEAD + IP.replace("}\n", ", include: {phase: TRAIN}, exclude: {phase: TEST}}\n") + LOSS
    found = findings(tmp_path, net)
    assert any(":3:" in f and "give either include or exclude rules, not both" in f for f in found), found


def test_unknown_phase_suggests_the_right_one(tmp_path):
    f = one(findings(tmp_path, HEAD + IP.replace("}\n", ", include: {phase: TRIAN}}\n") + LOSS))
    assert "'include.phase' must be one of TRAIN, TEST; received 'TRIAN'; did you mean 'TRAIN'?" in f


def test_in_place_refused_for_a_layer_whose_backward_needs_its_input(tmp_path):
    net = HEAD + "  - {name: ip, type: InnerProduct, bottom: data, top: data, inner_product_param: {num_output: 3}}\n"
    f = findings(tmp_path, net)
    assert any("cannot compute in place (top 'data' is also its bottom); give the top a new name" in x for x in f)


def test_kernel_larger_than_padded_input(tmp_path):
    net = HEAD + ("  - {name: c, type: Convolution, bottom: data, top: c,\n"
                  "     convolution_param: {num_output: 2, kernel_size: 9, pad: 1}}\n")
    f = one(findings(tmp_path, net))
    assert ":4:54: error: layer 'c' (Convolution): kernel 9x9" in f  # at the kernel_size value and "larger than the padded input 8x8" in f


def test_pooling_stride_larger_than_kernel(tmp_path):
    net = HEAD + "  - {name: p, type: Pooling, bottom: data, top: p, pooling_param: {kernel_size: 2, stride: 3}}\n"
    f = one(findings(tmp_path, net))
    assert ":3:92: error: layer 'p' (Pooling): stride 3x3 is larger than the kernel 2x2" in f  # at the 3
    assert "use stride <= kernel_size" in f


def test_pooling_stride_zero_and_pad_not_smaller_than_kernel(tmp_path):
    net = HEAD + "  - {name: p, type: Pooling, bottom: data, top: p, pooling_param: {kernel_size: 2, stride: 0}}\n"
    assert "'pooling_param.stride' must be >= 1; received 0" in one(findings(tmp_path, net))
    net = HEAD + "  - {name: p, type: Pooling, bottom: data, top: p, pooling_param: {kernel_size: 2, pad: 2}}\n"
    assert "pad 2x2 must be smaller than the kernel 2x2" in one(findings(tmp_path, net))


def test_default_value_error_points_at_the_block(tmp_path):
    # stride is inherited (1) but kernel_h/kernel_w make it a problem nowhere; a missing kernel_size is
    # reported at the pooling_param block that lacks it
    net = HEAD + "  - {name: p, type: Pooling, bottom: data, top: p, pooling_param: {pool: MAX}}\n"
    f = one(findings(tmp_path, net))
    assert ":3:67: error: layer 'p' (Pooling): kernel_size is required" in f


# ---- data ---------------------------------------------------------------------------------------

def data_net(source, classes=3, test_batch=None):
    test = (f"  - {{name: d, type: Data, top: [data, label], include: {{phase: TEST}}, "
            f"data_param: {{source: {source}, batch_size: {test_batch}}}}}\n") if test_batch else ""
    return (f"layer:\n  - {{name: d, type: Data, top: [data, label], include: {{phase: TRAIN}}, "
            f"data_param: {{source: {source}, batch_size: 2}}}}\n" + test +
            f"  - {{name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {{num_output: {classes}}}}}\n"
            + LOSS)


def write_csv(path, labels, bad_row=None):
    rows = []
    for i, lab in enumerate(labels):
        feats = ["0.5", "1", "2", "3"] if i != bad_row else ["0.5", "nan", "2", "3"]
        rows.append(",".join(feats + [str(lab)]))
    path.write_text("\n".join(rows) + "\n")


def test_one_based_labels_get_the_subtract_one_hint(tmp_path):
    write_csv(tmp_path / "d.csv", [1, 2, 3, 1, 2])
    f = one(findings(tmp_path, data_net("d.csv")))
    assert ":2:" in f and "labels run from 1 to 3" in f and "labels must start at 0: subtract 1" in f


def test_label_out_of_range_names_the_row_and_num_output(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1, 7, 2])
    f = one(findings(tmp_path, data_net("d.csv")))
    assert "label 7 at line 3 is out of range" in f and "num_output 3 of layer 'ip'" in f
    assert "raise num_output to 8" in f


def test_negative_label_is_an_error_unless_it_is_the_ignore_label(tmp_path):
    write_csv(tmp_path / "d.csv", [0, -1, 2, 1])
    f = one(findings(tmp_path, data_net("d.csv")))
    assert "label -1 at line 2 is negative" in f and "ignore_label" in f
    net = data_net("d.csv").replace("top: loss}", "top: loss, loss_param: {ignore_label: -1}}")
    assert findings(tmp_path, net) == []


def test_non_integer_label(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1.5, 2])
    assert "label 1.5 at line 2 is not an integer" in one(findings(tmp_path, data_net("d.csv")))


def test_num_output_larger_than_classes_seen_is_only_a_warning(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1, 1, 0])
    found = findings(tmp_path, data_net("d.csv", classes=10))
    f = one(found, "warning")
    assert not any(": error: " in x for x in found)
    assert "num_output 10 of layer 'ip' but the labels in 'd.csv' only go up to 1; harmless" in f


def test_nan_in_the_data_names_file_and_row(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1, 2, 0], bad_row=2)
    f = one(findings(tmp_path, data_net("d.csv")))
    assert "source 'd.csv' holds nan in 'data' at line 3, value 1" in f and "fix or drop that row" in f


def test_inf_in_npz_data(tmp_path):
    x = np.zeros((4, 3), np.float32)
    x[1, 2] = np.inf
    np.savez(tmp_path / "d.npz", data=x, label=np.array([0, 1, 2, 0]))
    assert "holds inf in 'data' at row 1 (index into the arrays), value 2" in one(findings(tmp_path, data_net("d.npz")))


def test_test_pass_longer_than_the_test_set_is_a_warning(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1, 2, 0, 1])
    solver = "net: net.yaml\nbase_lr: 0.1\nmax_iter: 10\ntest_iter: 3\ntest_interval: 5\n"
    f = one(findings(tmp_path, data_net("d.csv", test_batch=2), solver), "warning")
    assert "solver.yaml:4:12: warning: test_iter 3 x batch_size 2" in f and "has 5: the test repeats examples" in f
    assert "use test_iter 2" in f


def test_strict_turns_warnings_into_errors(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1, 1, 0])
    found = findings(tmp_path, data_net("d.csv", classes=10), strict=True)
    assert len(found) == 1 and ": error: " in found[0]


# ---- solver -------------------------------------------------------------------------------------

SOLVER = "net: net.yaml\nbase_lr: 0.1\nmax_iter: 10\n"


@pytest.mark.parametrize("extra, message", [
    ("lr_policy: step\ngamma: 0.1\n", "lr_policy 'step' needs 'stepsize', which is not given"),
    ("lr_policy: inv\ngamma: 0.1\n", "lr_policy 'inv' needs 'power'"),
    ("lr_policy: multistep\ngamma: 0.1\nstepvalue: [5, 3]\n", "stepvalue must be increasing; received [5, 3]"),
    ("lr_policy: stepp\n", "'lr_policy' must be one of fixed, step, exp, inv, multistep, poly, sigmoid, plateau, cosine, onecycle; "
                           "received 'stepp'; did you mean 'step'?"),
    ("type: Adamm\n", "'type' must be one of"),
    ("momentum: 1.0\n", "'momentum' must be < 1; received 1.0"),
    ("clip_gradients: 0\n", "clip_gradients 0 would zero every gradient"),
    ("test_interval: 5\n", "test_interval 5 is set but test_iter is not"),
])
def test_solver_checks(tmp_path, extra, message):
    found = findings(tmp_path, HEAD + IP + LOSS, SOLVER + extra)
    assert any(message in f for f in found), found


def test_base_lr_must_be_positive(tmp_path):
    found = findings(tmp_path, HEAD + IP + LOSS, SOLVER.replace("0.1", "0"))
    assert any(f.endswith("solver.yaml:2:10: error: 'base_lr' must be > 0; received 0") for f in found)


def test_missing_net_file(tmp_path):
    (tmp_path / "solver.yaml").write_text("net: nets/missing.yaml\nbase_lr: 0.1\nmax_iter: 1\n")
    found = [str(f) for f in validate([str(tmp_path / "solver.yaml")])]
    assert "net file 'nets/missing.yaml' not found" in found[0] and ":1:6:" in found[0]


def test_unwritable_snapshot_folder(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # root may write anywhere, so the folder's permission is simulated rather than set with chmod
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    found = findings(tmp_path, HEAD + IP + LOSS, SOLVER + "snapshot_prefix: locked/run\n")
    assert any(f"{locked} cannot be written" in f and "choose a snapshot_prefix" in f for f in found), found


def test_snapshot_prefix_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("")
    found = findings(tmp_path, HEAD + IP + LOSS, SOLVER + "snapshot_prefix: afile/sub/run\n")
    assert any(":4:18: error: snapshots and metrics go to" in f and "afile is a file, not a folder" in f
               for f in found), found


def test_resume_past_max_iter_is_refused(tmp_path):
    from solvers.trainer import Trainer
    (tmp_path / "digits.csv").write_text("\n".join(f"{i % 4},{(i * 3) % 5},1,2,{i % 3}" for i in range(20)) + "\n")
    (tmp_path / "net.yaml").write_text(data_net("digits.csv"))
    (tmp_path / "s.yaml").write_text(SOLVER.replace("max_iter: 10", "max_iter: 6"))
    t = Trainer(str(tmp_path / "s.yaml"), out=lambda *a: None)
    t.train()
    (tmp_path / "s.yaml").write_text(SOLVER.replace("max_iter: 10", "max_iter: 4"))
    from netspec.errors import SpecError
    with pytest.raises(SpecError, match=r"s.yaml:3:11: error: max_iter 4 is smaller than the iteration"):
        Trainer(str(tmp_path / "s.yaml"), out=lambda *a: None).train(snapshot_path=str(tmp_path / "s_iter_6.solverstate.npz"))


# ---- legacy inputs, summary, CLI ----------------------------------------------------------------

def test_legacy_input_fields_become_an_input_layer_with_a_warning(tmp_path):
    net = "input: data\ninput_dim: [1, 3, 8, 8]\nlayer:\n  - {name: p, type: Pooling, bottom: data, top: p, pooling_param: {kernel_size: 2, stride: 2}}\n"
    found = findings(tmp_path, net)
    assert not any(": error: " in f for f in found), found
    f = [f for f in found if "deprecated" in f][0]
    assert ":1:8: warning: the net-level input/input_dim fields are deprecated; they were read as an Input layer" in f


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_summary_json_of_a_deploy_net_needs_no_data(tmp_path):
    (tmp_path / "deploy.yaml").write_text(
        "input: data\ninput_shape: {dim: [2, 1, 6, 6]}\nlayer:\n"
        "  - {name: conv, type: Convolution, bottom: data, top: conv, convolution_param: {num_output: 4, kernel_size: 3}}\n"
        "  - {name: relu, type: ReLU, bottom: conv, top: conv}\n"
        "  - {name: prob, type: Softmax, bottom: conv, top: prob}\n")
    r = cli("validate", str(tmp_path / "deploy.yaml"), "--summary", "--format", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [l["name"] for l in out["layers"]] == ["input", "conv", "relu", "prob"]
    conv = out["layers"][1]
    assert conv["tops"] == {"conv": [2, 4, 4, 4]} and conv["params"] == 4 * 9 + 4 and conv["bottoms"] == ["data"]
    assert out["findings"][0]["severity"] == "warning"  # the deprecated input fields


def test_summary_text_has_totals_and_test_phase(tmp_path):
    r = cli("validate", "models/lenet_digits/net.yaml", "--summary", "--phase", "TEST")
    assert r.returncode == 0
    assert 'Net "LeNet-digits" (TEST)' in r.stdout and "accuracy (Accuracy)" in r.stdout
    assert "Total params: 63,276" in r.stdout and "data: [359, 1, 8, 8]" in r.stdout


def test_train_refuses_to_start_on_a_data_error(tmp_path):
    write_csv(tmp_path / "d.csv", [1, 2, 3, 1])
    (tmp_path / "net.yaml").write_text(data_net("d.csv"))
    (tmp_path / "solver.yaml").write_text(SOLVER)
    r = cli("train", str(tmp_path / "solver.yaml"))
    assert r.returncode == 2 and "subtract 1" in r.stderr and "Iteration" not in r.stdout
    assert not os.path.exists(tmp_path / "solver_metrics.jsonl")


def test_train_starts_with_solver_warnings_printed(tmp_path):
    """A solver with warnings alone (a rate that grows, test_interval without test_iter: Caffe runs both) trains,
    the warnings printed before the first iteration (an error would stop it: test_solver_checks)."""
    write_csv(tmp_path / "d.csv", [0, 1, 2, 1])
    (tmp_path / "net.yaml").write_text(data_net("d.csv"))
    (tmp_path / "solver.yaml").write_text(SOLVER + "lr_policy: step\nstepsize: 4\ngamma: 2\ntest_interval: 5\n")
    r = cli("train", str(tmp_path / "solver.yaml"))
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "warning: gamma 2 > 1" in out and "warning: test_interval 5 is set but test_iter is not" in out
    assert out.index("warning: gamma") < out.index("Solving") < out.index("Optimization Done.")
    assert "Testing net" not in out


def test_weights_whose_shape_differs_point_at_the_layer(tmp_path):
    from netspec.errors import SpecError
    from netspec.loader import loads
    from netspec.net import Net
    (tmp_path / "net.yaml").write_text(HEAD + IP + LOSS)
    net = Net(loads((tmp_path / "net.yaml").read_text(), str(tmp_path / "net.yaml")), "TRAIN",
              str(tmp_path / "net.yaml"), seed=0)
    with pytest.raises(SpecError) as e:
        net.load_weights({"ip/0": np.zeros((3, 25), np.float32)}, "w.npz")
    msg = str(e.value)
    assert ":3:5: error: layer 'ip' (InnerProduct): param 0 has shape [3, 36] in the net but [3, 25] in w.npz" in msg
    assert "its input size 36 comes from bottom 'data' [4, 1, 6, 6]" in msg and "rename it" in msg


# ---- BatchNorm, Dropout, shape mismatches ------------------------------------------------------

BN = "  - {name: bn, type: BatchNorm, bottom: ip, top: ip, batch_norm_param: {use_global_stats: %s}}\n"


def test_batchnorm_global_stats_in_a_train_net_is_an_error(tmp_path):
    f = one(findings(tmp_path, HEAD + IP + BN % "true" + LOSS))
    assert ":4:" in f and "use_global_stats: true in a net used for TRAIN" in f
    assert "remove use_global_stats and let the phase decide" in f


def test_batchnorm_batch_stats_in_a_test_net_is_a_warning(tmp_path):
    net = HEAD + IP + BN.replace("}}\n", "}, include: {phase: TEST}}\n") % "false" + LOSS
    f = one(findings(tmp_path, net), "warning")
    assert "use_global_stats: false in the TEST net" in f


def test_batchnorm_learned_statistics_is_an_error(tmp_path):
    net = HEAD + IP + "  - {name: bn, type: BatchNorm, bottom: ip, top: ip, param: [{lr_mult: 1}, {lr_mult: 0}, {lr_mult: 0}]}\n" + LOSS
    f = one(findings(tmp_path, net))
    assert "param 0 has lr_mult 1, but the blobs of BatchNorm are running statistics" in f


def test_dropout_ratio_outside_zero_one(tmp_path):
    net = HEAD + IP + "  - {name: d, type: Dropout, bottom: ip, top: ip, dropout_param: {dropout_ratio: 1.0}}\n" + LOSS
    assert "'dropout_param.dropout_ratio' must be < 1; received 1.0" in one(findings(tmp_path, net))


def test_concat_shape_mismatch_names_the_shapes(tmp_path):
    net = HEAD + IP + ("  - {name: ip2, type: InnerProduct, bottom: data, top: ip2, inner_product_param: {num_output: 2}}\n"
                       "  - {name: cat, type: Concat, bottom: [ip, ip2, data], top: cat}\n")
    f = [x for x in findings(tmp_path, net) if ": error: " in x][0]
    assert "layer 'cat' (Concat): all bottoms must have the same shape except along axis 1; received [4, 3], " \
           "[4, 2], [4, 1, 6, 6]" in f


def test_eltwise_shape_mismatch(tmp_path):
    net = HEAD + IP + "  - {name: e, type: Eltwise, bottom: [ip, data], top: e}\n" + LOSS
    assert "Eltwise does not broadcast" in one(findings(tmp_path, net))


def test_reshape_that_changes_the_count(tmp_path):
    net = HEAD + "  - {name: r, type: Reshape, bottom: data, top: r, reshape_param: {shape: {dim: [4, 30]}}}\n"
    f = one(findings(tmp_path, net))
    assert "Reshape changes the count: bottom [4, 1, 6, 6] holds 144 values but shape [4, 30] gives [4, 30] = 120" in f


def test_constant_feature_feeding_batchnorm_is_a_warning(tmp_path):
    write_csv(tmp_path / "d.csv", [0, 1, 2, 0])
    net = data_net("d.csv").replace("  - {name: ip,", "  - {name: bn, type: BatchNorm, bottom: data, top: data}\n  - {name: ip,")
    f = one(findings(tmp_path, net), "warning")
    assert "4 feature(s) of 'd.csv' never change" in f and "layer 'bn' divides by their standard deviation" in f


def test_a_parameter_block_of_another_type_is_a_warning(tmp_path):
    net = HEAD + IP.replace("}\n", ", pooling_param: {kernel_size: 2}}\n") + LOSS
    f = one(findings(tmp_path, net), "warning")
    assert ":3:" in f and "pooling_param does not apply to InnerProduct layers and is ignored" in f


def test_hdf5_data_with_transform_param_is_an_error(tmp_path):
    net = ("layer:\n  - {name: h, type: HDF5Data, top: [data, label], hdf5_data_param: {source: l.txt, batch_size: 2},"
           " transform_param: {scale: 0.5}}\n")
    found = findings(tmp_path, net)
    assert any("HDF5Data does not transform its data (as in Caffe)" in f for f in found), found


def test_batchnorm_running_average_too_slow_for_a_short_run_is_a_warning(tmp_path):
    net = HEAD + IP + "  - {name: bn, type: BatchNorm, bottom: ip, top: ip}\n" + LOSS
    f = one(findings(tmp_path, net, SOLVER.replace("max_iter: 10", "max_iter: 2000")), "warning")
    assert "moving_average_fraction 0.999 averages the statistics over about 1000 iterations" in f
    assert "use 0.99 or 0.9" in f
    fine = net.replace("top: ip}\n  - {name: loss", "top: ip, batch_norm_param: {moving_average_fraction: 0.9}}\n  - {name: loss")
    assert findings(tmp_path, fine, SOLVER.replace("max_iter: 10", "max_iter: 2000")) == []


def test_a_net_too_big_for_the_machine_is_an_error_naming_the_layers_that_need_most(tmp_path):
    (tmp_path / "net.yaml").write_text("""layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [64, 3, 32, 32]}, {dim: [64]}]}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 1000000000000}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
""")
    found = [f for f in validate([str(tmp_path / "net.yaml")]) if f.severity == "error"]
    assert len(found) == 1 and found[0].line == 3 and "GiB to train" in found[0].message
    assert "most in 'ip'" in found[0].message and "lower batch_size or num_output" in found[0].message
    from netspec.checks import memory_findings
    from netspec.loader import load
    from netspec.net import Net
    small = Net(load(os.path.join(ROOT, "models", "lenet_digits", "net.yaml")), "TRAIN",
                os.path.join(ROOT, "models", "lenet_digits", "net.yaml"), seed=0, allocate=False)
    assert memory_findings(small) == []
    assert [f.severity for f in memory_findings(small, machine=1 << 20)] == ["error"]   # 1 MiB of memory
    assert [f.severity for f in memory_findings(small, machine=4 << 20)] == ["warning"]  # it needs about 3 MiB


def test_a_solver_whose_net_is_a_solver_is_an_error(tmp_path):
    (tmp_path / "solver.yaml").write_text("net: solver.yaml\nbase_lr: 0.1\nmax_iter: 10\n")
    found = validate([str(tmp_path / "solver.yaml")])
    assert [f.severity for f in found] == ["error"] and "is a solver file, not a net" in found[0].message


def test_an_unknown_type_does_not_hide_the_parameter_errors_of_other_layers(tmp_path):
    (tmp_path / "net.yaml").write_text("""layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [4, 1, 8, 8]}, {dim: [4]}]}}
  - {name: conv, type: Convolutoin, bottom: data, top: conv, convolution_param: {num_output: 2, kernel_size: 3}}
  - {name: pool, type: Pooling, bottom: conv, top: pool, pooling_param: {pool: MAX, kernel_size: 2, stride: 3}}
  - {name: clip, type: Clip, bottom: pool, top: clip, clip_param: {min: 2, max: 1}}
  - {name: ip, type: InnerProduct, bottom: clip, top: ip, inner_product_param: {num_output: 10}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
""")
    found = validate([str(tmp_path / "net.yaml")])
    assert [(f.line, f.severity) for f in found] == [(3, "error"), (4, "error"), (5, "error")]
    assert "did you mean 'Convolution'" in found[0].message and "stride 3x3 is larger than the kernel 2x2" in \
        found[1].message and "min 2 is larger than max 1" in found[2].message


def test_shape_checks_run_on_the_layers_below_an_unknown_type(tmp_path):
    (tmp_path / "net.yaml").write_text("""layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [4, 1, 8, 8]}, {dim: [4]}]}}
  - {name: pool0, type: Pooling, bottom: data, top: p0, pooling_param: {pool: MAX, kernel_size: 20}}
  - {name: conv, type: Convolutoin, bottom: p0, top: conv, convolution_param: {num_output: 2, kernel_size: 3}}
  - {name: ip, type: InnerProduct, bottom: conv, top: ip, inner_product_param: {num_output: 10}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
""")
    found = validate([str(tmp_path / "net.yaml")])
    assert [(f.line, f.severity) for f in found] == [(3, "error"), (4, "error")]
    assert "kernel 20x20 is larger than the padded input 8x8" in found[0].message  # a shape check, below 'conv'


def test_a_deploy_net_validates_strictly_without_the_no_loss_warning(tmp_path):
    (tmp_path / "deploy.yaml").write_text("""layer:
  - {name: d, type: Input, top: x, input_param: {shape: {dim: [1, 3]}}}
  - {name: ip, type: InnerProduct, bottom: x, top: y, inner_product_param: {num_output: 2}}
  - {name: p, type: Softmax, bottom: y, top: prob}
""")
    assert validate([str(tmp_path / "deploy.yaml")], strict=True) == []
    (tmp_path / "solver.yaml").write_text("net: deploy.yaml\nbase_lr: 0.1\nmax_iter: 10\n")
    assert any("no loss layer" in f.message and f.severity == "error" for f in validate([str(tmp_path / "solver.yaml")]))
    from netspec.spec import summary
    assert summary(str(tmp_path / "deploy.yaml"))["text"].startswith('Net "') and "(TEST)" in \
        summary(str(tmp_path / "deploy.yaml"))["text"].splitlines()[0]


def test_validate_builds_the_staged_nets_training_builds(tmp_path):
    (tmp_path / "net.yaml").write_text("""layer:
  - {name: d, type: DummyData, top: [data, label], include: {phase: TRAIN},
     dummy_data_param: {shape: [{dim: [4, 3]}, {dim: [4]}]}}
  - {name: d, type: DummyData, top: [data, label], include: {phase: TEST, stage: val},
     dummy_data_param: {shape: [{dim: [4, 3]}, {dim: [4]}]}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 2}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
""")
    (tmp_path / "solver.yaml").write_text("net: net.yaml\nbase_lr: 0.1\nmax_iter: 2\ntest_iter: 1\ntest_interval: 1\n"
                                          "test_state: {stage: val}\n")
    assert [f for f in validate([str(tmp_path / "solver.yaml")]) if f.severity == "error"] == []
    (tmp_path / "solver.yaml").write_text("net: net.yaml\nbase_lr: 0.1\nmax_iter: 2\ntest_iter: 1\ntest_interval: 1\n")
    assert any("'data'" in f.message for f in validate([str(tmp_path / "solver.yaml")]) if f.severity == "error")


def test_duplicate_layer_names_are_accepted_as_in_caffe_and_kept_apart_in_snapshots(tmp_path):
    from netspec.loader import load
    from netspec.net import Net
    (tmp_path / "net.yaml").write_text("""layer:
  - {name: d, type: DummyData, top: [data, label], dummy_data_param: {shape: [{dim: [4, 3]}, {dim: [4]}]}}
  - {name: ip, type: InnerProduct, bottom: data, top: a, inner_product_param: {num_output: 2, weight_filler: {type: gaussian}}}
  - {name: ip, type: InnerProduct, bottom: data, top: b, inner_product_param: {num_output: 2, weight_filler: {type: gaussian}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [a, label], top: la}
  - {name: loss, type: EuclideanLoss, bottom: [a, b], top: lb}
""")
    found = validate([str(tmp_path / "net.yaml")])
    assert [f.severity for f in found] == ["warning", "warning"] and "Caffe accepts it" in found[0].message
    net = Net(load(str(tmp_path / "net.yaml")), "TRAIN", str(tmp_path / "net.yaml"), seed=1)
    w = net.weights()
    assert set(w) == {"ip/0", "ip/1", "ip@2/0", "ip@2/1"} and not np.array_equal(w["ip/0"], w["ip@2/0"])
    other = Net(load(str(tmp_path / "net.yaml")), "TRAIN", str(tmp_path / "net.yaml"), seed=2)
    other.load_weights({k: v.copy() for k, v in w.items()}, "w")
    for k, v in other.weights().items():
        np.testing.assert_array_equal(v, w[k])


def test_the_command_line_runs_as_python_m_yaffe_and_the_yaffe_command(tmp_path):
    import shutil as sh
    r = subprocess.run([sys.executable, "-m", "yaffe", "validate", os.path.join(ROOT, "models", "lenet_digits",
                        "solver.yaml")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and (r.stdout + r.stderr).strip().endswith("valid"), r.stderr
    command = sh.which("yaffe", path=os.path.dirname(sys.executable))
    assert command, "pip install . installs a yaffe command beside python"
    r = subprocess.run([command, "schema", "solver"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["type"] == "object"
    import yaffe
    assert yaffe.Net and yaffe.Trainer and yaffe.validate


def test_a_field_of_a_shared_block_that_the_type_does_not_use_is_a_warning(tmp_path):
    found = findings(tmp_path, """
layer:
  - {name: in, type: Input, top: [x, y], input_param: {shape: [{dim: [2, 3]}, {dim: [2, 3]}]}}
  - {name: loss, type: SigmoidCrossEntropyLoss, bottom: [x, y], top: loss, loss_param: {label_smoothing: 0.1}}
""")
    assert any("loss_param.label_smoothing does not apply to SigmoidCrossEntropyLoss layers" in f for f in found), found


def test_a_hidden_layer_without_a_weight_filler_is_a_warning_at_its_block(tmp_path):
    """Caffe's default weight filler is constant 0: a hidden layer without one never trains (equal outputs,
    equal gradients; behind a ReLU none). The last learned layer may start at 0 (a logistic regression does), and
    a layer with lr_mult 0 or a filler is fine."""
    hidden = ("  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 5}}\n"
              "  - {name: relu, type: ReLU, bottom: ip, top: ip}\n"
              "  - {name: out, type: InnerProduct, bottom: ip, top: out, inner_product_param: {num_output: 3}}\n"
              "  - {name: loss, type: SoftmaxWithLoss, bottom: [out, label], top: loss}\n")
    f = one(findings(tmp_path, HEAD + hidden), "warning")
    assert f.startswith(f"{tmp_path / 'net.yaml'}:3:") and "inner_product_param" not in f.split(": warning")[0]
    assert "layer 'ip' (InnerProduct) has no weight_filler" in f and "its 5 outputs start equal" in f
    assert "'out' above sees one feature" in f and "{type: xavier}" in f
    assert findings(tmp_path, HEAD + IP + LOSS) == []  # the last learned layer alone
    filled = hidden.replace("{num_output: 5}", "{num_output: 5, weight_filler: {type: gaussian, std: 0.1}}")
    assert findings(tmp_path, HEAD + filled) == []
    frozen = hidden.replace("top: ip, inner_product_param", "top: ip, param: [{lr_mult: 0}], inner_product_param")
    assert findings(tmp_path, HEAD + frozen) == []
    zero = hidden.replace("{num_output: 5}", "{num_output: 5, weight_filler: {type: constant}}")
    assert "a weight_filler of constant 0" in one(findings(tmp_path, HEAD + zero), "warning")


def test_a_training_source_sorted_by_label_is_a_warning_unless_shuffled(tmp_path):
    """Rows written class by class and read in order (convert_imageset without --shuffle): most batches hold one
    class. A warning at the source, with the count of runs and single-class batches, and the two fixes; none
    when the layer shuffles, for a TEST source, or for rows in a mixed order."""
    write_csv(tmp_path / "d.csv", [0] * 8 + [1] * 8 + [2] * 8)
    f = one(findings(tmp_path, data_net("d.csv")), "warning")
    assert ":2:" in f and "source 'd.csv': the rows come sorted by label (3 runs of one class in 24 rows)" in f
    assert "12 of its 12 batches of 2 hold a single class" in f
    assert "--shuffle" in f and "data_param.shuffle: true" in f
    assert findings(tmp_path, data_net("d.csv").replace("batch_size: 2}", "batch_size: 2, shuffle: true}")) == []
    write_csv(tmp_path / "d.csv", [0, 1, 2] * 8)
    assert findings(tmp_path, data_net("d.csv")) == []


def test_raw_pixels_fed_unscaled_to_a_first_layer_are_a_warning(tmp_path):
    """Pixels 0..255 with no scale or mean into an InnerProduct with xavier weights: its outputs start ~100x too
    large (the first losses 87.3365 or NaN, then blamed on the rate). The warning gives the start and Caffe's
    scale; none with a scale, a mean, or weights small enough for such inputs (cifar10_quick's std 0.0001)."""
    rng = np.random.default_rng(0)
    rows = [",".join(str(v) for v in rng.integers(0, 256, 16)) + f",{i % 3}" for i in range(30)]
    (tmp_path / "px.csv").write_text("\n".join(rows) + "\n")

    def net(transform="", filler="{type: xavier}"):
        return (f"layer:\n  - {{name: d, type: Data, top: [data, label], data_param: {{source: px.csv, batch_size: 3, "
                f"shuffle: true}}{transform}}}\n  - {{name: ip, type: InnerProduct, bottom: data, top: ip, "
                f"inner_product_param: {{num_output: 3, weight_filler: {filler}}}}}\n" + LOSS)
    f = one(findings(tmp_path, net()), "warning")
    assert "the inputs of 'px.csv' reach 255" in f and "layer 'ip' (InnerProduct, xavier weights) starts" in f
    assert "transform_param {scale: 0.00390625}" in f
    assert findings(tmp_path, net(", transform_param: {scale: 0.00390625}")) == []
    assert findings(tmp_path, net(", transform_param: {mean_value: [128]}")) == []
    assert findings(tmp_path, net(filler="{type: gaussian, std: 0.0001}")) == []


@pytest.mark.parametrize("extra, where, message", [
    ("lr_policy: step\ngamma: 10\nstepsize: 4\n", "5:8", "gamma 10 > 1 with lr_policy 'step' multiplies the rate by "
                                                         "10 at each step: it grows instead of decaying"),
    ("lr_policy: exp\ngamma: 1.01\n", "5:8", "(usually 0.9999 or so)"),
    ("lr_policy: step\ngamma: 0.1\nstepsize: 10\n", "6:11", "stepsize 10 >= max_iter 10: the rate never steps down "
                                                            "in this run; a stepsize of about max_iter / 3 (3)"),
    ("lr_policy: multistep\ngamma: 0.1\nstepvalue: [4, 12]\n", "6:12", "stepvalue 12 is at or past max_iter 10: "
                                                                       "the run ends before that step"),
])
def test_a_schedule_that_grows_the_rate_or_never_steps_is_a_warning(tmp_path, extra, where, message):
    """Caffe runs these silently: a decay with gamma > 1 grows the rate until training diverges; steps at or past
    max_iter never happen."""
    f = one(findings(tmp_path, HEAD + IP + LOSS, SOLVER + extra), "warning")
    assert f"solver.yaml:{where}: warning: " in f and message in f
    assert [g for g in findings(tmp_path, HEAD + IP + LOSS, SOLVER + "lr_policy: step\ngamma: 0.1\nstepsize: 4\n")
            if ": warning: " in g] == []


def test_a_test_data_layer_transformed_unlike_the_train_one_is_a_warning(tmp_path):
    """A scale (or mean) copied into one phase's data layer only: the test scores a net on inputs of another
    range. Warned at the TEST layer's transform_param; crop and mirror may differ."""
    write_csv(tmp_path / "d.csv", [0, 1, 2] * 4)

    def net(train_tf, test_tf):
        return ("layer:\n"
                f"  - {{name: d, type: Data, top: [data, label], include: {{phase: TRAIN}}, data_param: "
                f"{{source: d.csv, batch_size: 2}}, transform_param: {train_tf}}}\n"
                f"  - {{name: t, type: Data, top: [data, label], include: {{phase: TEST}}, data_param: "
                f"{{source: d.csv, batch_size: 2}}, transform_param: {test_tf}}}\n"
                "  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 3}}\n"
                + LOSS)
    f = one(findings(tmp_path, net("{scale: 0.5}", "{}")), "warning")
    assert ":3:" in f and "layer 't' (TEST) transforms 'data' unlike layer 'd' (TRAIN): scale 1 in TEST, scale 0.5 " \
                          "in TRAIN" in f
    f = one(findings(tmp_path, net("{scale: 0.5, mean_value: [1]}", "{scale: 0.5}")), "warning")
    assert "no mean in TEST, mean_value [1] in TRAIN" in f
    assert findings(tmp_path, net("{scale: 0.5, mirror: true}", "{scale: 0.5}")) == []


def test_a_train_net_with_every_blob_frozen_is_a_warning(tmp_path):
    """lr_mult 0 on every learnable blob (BatchNorm's statistics aside): the solver changes nothing."""
    frozen = IP.replace("type: InnerProduct, bottom", "type: InnerProduct, param: [{lr_mult: 0}, {lr_mult: 0}], bottom")
    f = one(findings(tmp_path, HEAD + frozen + LOSS), "warning")
    assert "every learnable blob of the TRAIN net has lr_mult 0 (the first: layer 'ip')" in f
    half = IP.replace("type: InnerProduct, bottom", "type: InnerProduct, param: [{lr_mult: 0}], bottom")
    assert findings(tmp_path, HEAD + half + LOSS) == []  # its bias still learns


def test_many_hidden_layers_without_fillers_are_one_warning(tmp_path):
    """A fine-tuning prototxt leaves every filler out (its weights come from a .caffemodel): one warning names
    them all, not one a layer; training from --weights does not warn at all."""
    text = HEAD
    bottom = "data"
    for i in range(4):
        text += (f"  - {{name: ip{i}, type: InnerProduct, bottom: {bottom}, top: ip{i}, "
                 f"inner_product_param: {{num_output: 5}}}}\n")
        bottom = f"ip{i}"
    text += (f"  - {{name: ip, type: InnerProduct, bottom: {bottom}, top: ip, "
             "inner_product_param: {num_output: 3}}\n" + LOSS)
    f = one(findings(tmp_path, text), "warning")
    assert "4 hidden layers ('ip0', 'ip1', 'ip2', 'ip3') have no weight_filler" in f and "(--weights)" in f
    from solvers.trainer import Trainer
    (tmp_path / "solver.yaml").write_text(SOLVER)
    lines = []
    Trainer(str(tmp_path / "solver.yaml"), out=lines.append)
    assert any("4 hidden layers" in str(line) for line in lines)
    lines.clear()
    Trainer(str(tmp_path / "solver.yaml"), out=lines.append, from_weights=True)
    assert not any("weight_filler" in str(line) for line in lines)


def test_labels_nearly_all_one_class_are_a_warning_with_class_weights(tmp_path):
    """95% of the labels one class: always answering it scores 0.95. The warning gives inverse-frequency
    class_weight values; none once class_weight is set, or for balanced labels."""
    write_csv(tmp_path / "d.csv", [0] * 19 + [1] + [0] * 19 + [2])
    net = data_net("d.csv").replace("batch_size: 2}", "batch_size: 2, shuffle: true}")
    f = one(findings(tmp_path, net), "warning")
    assert "95.0% of the labels are class 0" in f and "scores 0.950 accuracy" in f
    assert "loss_param.class_weight: [0.351, 13.3, 13.3]" in f
    weighted = net.replace("top: loss}", "top: loss, loss_param: {class_weight: [0.35, 6.7, 6.7]}}")
    assert findings(tmp_path, weighted) == []
    write_csv(tmp_path / "d.csv", [0, 1, 2] * 10)
    assert findings(tmp_path, net) == []
