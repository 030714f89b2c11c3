"""`run.py predict`: a trained lenet_digits on new inputs (images, folders, csv), the top-k classes with label
names, blobs written per input (Caffe's extract_features), and clear errors."""
import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from solvers.trainer import Trainer
    work = tmp_path_factory.mktemp("predict")
    shutil.copytree(os.path.join(ROOT, "models", "lenet_digits"), work / "lenet_digits",
                    ignore=shutil.ignore_patterns("snapshots"))
    Trainer(str(work / "lenet_digits" / "solver.yaml"), out=lambda *a: None, overrides={"max_iter": 200}).train()
    with gzip.open(work / "lenet_digits" / "digits_test.csv.gz", "rt") as f:
        lines = f.read().splitlines()
    rows = np.loadtxt(lines[0 if lines[0][0].isdigit() else 1:], delimiter=",")
    pytest.importorskip("PIL")
    from PIL import Image
    (work / "imgs").mkdir()
    for i in range(6):  # 8x8 grey PNGs of pixels 0..16 x 15
        Image.fromarray((rows[i, :64].reshape(8, 8) * 15).astype(np.uint8)).save(work / "imgs" / f"d{i}.png")
    (work / "names.txt").write_text("".join(f"digit {k}\n" for k in range(10)))
    return work, rows


WEIGHTS = "lenet_digits/snapshots/lenet_digits_iter_200.weights.npz"


def test_predict_on_the_test_csv_agrees_with_run_py_test(work):
    work, rows = work
    r = run("predict", "lenet_digits/net.yaml", "--weights", WEIGHTS, "lenet_digits/digits_test.csv.gz",
            "-o", "out.jsonl", "--blobs", "ip2,ip1", cwd=work)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in open(work / "out.jsonl")]
    assert len(records) == len(rows) and len(records[0]["ip1"]) == 256 and len(records[0]["top_k"]) == 5
    ours = np.mean([rec["top_k"][0]["class"] == label for rec, label in zip(records, rows[:, 64])])
    t = run("test", "lenet_digits/net.yaml", "--weights", WEIGHTS, "--json", cwd=work)
    assert t.returncode == 0, t.stderr
    assert ours == pytest.approx(json.loads(t.stdout)["accuracy"], abs=1e-6)


def test_predict_with_a_training_net_prints_the_probabilities_its_softmax_loss_computes(work):
    """No --blobs on a net with SoftmaxWithLoss: the scores it reads (ip2, not the Split's copy of it) are written
    to the file as they are and printed as softmax probabilities (raw logits looked like probabilities)."""
    work, rows = work
    r = run("predict", "lenet_digits/net.yaml", "--weights", WEIGHTS, "imgs", "--top-k", "10", "-o", "raw.npz",
            cwd=work)
    assert r.returncode == 0, r.stderr
    assert "(softmax probabilities of 'ip2', the scores SoftmaxWithLoss 'loss' reads; the file gets the scores)" \
        in r.stdout
    with np.load(work / "raw.npz") as z:
        scores = z["ip2"]
    lines = [l for l in r.stdout.splitlines() if l.startswith("imgs")]
    for line, row in zip(lines, scores):
        printed = {int(p.split()[1]): float(p.split()[0]) for p in line.split(": ", 1)[1].split(", ")}
        e = np.exp(row - row.max())
        assert sum(printed.values()) == pytest.approx(1.0, abs=1e-3)
        assert [printed[k] for k in range(10)] == pytest.approx(list(e / e.sum()), abs=1e-4)


def test_predict_classifies_a_folder_of_images_with_the_deploy_net_and_label_names(work):
    work, rows = work
    r = run("predict", "lenet_digits/deploy.yaml", "--weights", WEIGHTS, "imgs", "--scale", str(1 / 15 / 16),
            "--labels", "names.txt", "--top-k", "2", "-o", "out.npz", cwd=work)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith(str(work / "imgs")) or l.startswith("imgs")]
    assert len(lines) == 6 and all(l.count("digit ") == 2 for l in lines)
    with np.load(work / "out.npz") as z:
        assert z["prob"].shape == (6, 10) and list(z["inputs"]) == [f"imgs/d{i}.png" for i in range(6)]
        top = z["top_k"][:, 0]
    assert np.mean(top == rows[:6, 64]) >= 5 / 6
    for line, k in zip(lines, top):  # the printed first class is the written one, by its name
        assert line.split(": ", 1)[1].split(", ")[0].endswith(f"digit {k}")


def test_predict_takes_a_mean_image_of_another_size_as_its_channel_means(work):
    """--mean m.binaryproto of 10 x 10 for an 8 x 8 input: its channels' means, as Caffe's classification example
    takes a 256 x 256 mean for 227 x 227 (it was an internal error); a mean of other channels is a clear error."""
    work, rows = work
    from yaffe.io import array_to_blobproto
    mean = np.arange(100, dtype=np.float32).reshape(1, 1, 10, 10)  # channel mean 49.5
    (work / "m.binaryproto").write_bytes(array_to_blobproto(mean).SerializeToString())
    outs = []
    for m in ("m.binaryproto", "49.5"):
        r = run("predict", "lenet_digits/deploy.yaml", "--weights", WEIGHTS, "imgs", "--mean", m, "-o", f"{m}.npz",
                cwd=work)
        assert r.returncode == 0, r.stderr
        with np.load(work / f"{m}.npz") as z:
            outs.append(z["prob"])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5)
    r = run("predict", "lenet_digits/deploy.yaml", "--weights", WEIGHTS, "imgs", "--mean", "1,2", cwd=work)
    assert r.returncode != 0 and "does not fit the input's [1, 8, 8]" in r.stderr and "Traceback" not in r.stderr


def test_predict_writes_extract_features_databases(work):
    """-o ip1_db,ip2_db (Caffe's extract_features): an LMDB per blob, a Datum per input keyed 0000000000, ... with
    the blob's axes as channels/height/width and its values as float_data, field for field as Caffe writes them
    (compared by hand with BVLC Caffe's extract_features on cifar10_full: the same bytes but the floats' last
    bits); the values those of the .npz output; a count of databases other than of blobs is a clear error."""
    pytest.importorskip("lmdb")
    import lmdb
    from layers.sources import parse_datum
    work, rows = work
    args = ["predict", "lenet_digits/net.yaml", "--weights", WEIGHTS, "lenet_digits/digits_test.csv.gz", "--blobs",
            "ip1,ip2"]
    assert run(*args, "-o", "f.npz", cwd=work).returncode == 0
    r = run(*args, "-o", "ip1_db,ip2_db", cwd=work)
    assert r.returncode == 0, r.stderr
    with np.load(work / "f.npz") as z:
        for blob in ("ip1", "ip2"):
            env = lmdb.open(str(work / f"{blob}_db"), readonly=True, lock=False)
            with env.begin() as txn:
                items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
            env.close()
            assert [k for k, _ in items] == [f"{i:010d}".encode() for i in range(len(rows))]
            values = np.stack([parse_datum(v)[0] for _, v in items])
            assert values.shape == (len(rows), z[blob].shape[1], 1, 1)
            np.testing.assert_array_equal(values.reshape(z[blob].shape), z[blob])
    r = run(*args, "-o", "only_one_db", cwd=work)
    assert r.returncode != 0 and "1 databases for 2 blobs" in r.stderr and "Traceback" not in r.stderr


def test_predict_reads_a_list_of_paths_with_or_without_labels_as_the_folder(work):
    """A list file's lines may be `path label` or a path alone (predict needs no labels): the same rows, in the
    list's order, as the folder of the same images."""
    work, rows = work
    (work / "some.txt").write_text("imgs/d2.png 2\nimgs/d0.png\n\nimgs/d1.png 7\n")
    r = run("predict", "lenet_digits/deploy.yaml", "--weights", WEIGHTS, "some.txt", "imgs", "--scale",
            str(1 / 15 / 16), "-o", "out.npz", cwd=work)
    assert r.returncode == 0, r.stderr
    with np.load(work / "out.npz") as z:
        assert list(z["inputs"])[:3] == ["some.txt[0]", "some.txt[1]", "some.txt[2]"]
        np.testing.assert_allclose(z["prob"][:3], z["prob"][[3 + 2, 3 + 0, 3 + 1]], rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--labels", "three.txt"], "3 labels for 10 classes"),
    (["--blobs", "fc7"], "no blob 'fc7' in the net"),
    (["-o", "out.txt"], "write .npz, .csv or .jsonl"),
])
def test_predict_mistakes_are_one_line_errors(work, args, message):
    work, _ = work
    (work / "three.txt").write_text("a\nb\nc\n")
    r = run("predict", "lenet_digits/deploy.yaml", "--weights", WEIGHTS, "imgs", *args, cwd=work)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_lstm_deploy_net_predicts_batches_of_any_size_as_one_forward(tmp_path):
    """models/lstm_mnist/deploy.yaml makes its cont from the input, so a last batch of 6 (70 = 64 + 6) runs, and
    each row's scores are those of a forward of that image alone."""
    from netspec.loader import load
    from netspec.net import Net
    from solvers.predict import Predictor
    from solvers.snapshot import save_npz
    model = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "lstm_mnist",
                         "deploy.yaml")
    net = Net(load(model), "TEST", model, seed=0)
    rng = np.random.default_rng(0)
    for p in net.params:
        p.blob.data[...] = rng.normal(0, 0.1, p.blob.data.shape)
    save_npz(str(tmp_path / "w.weights.npz"), {k: v.copy() for k, v in net.weights().items()})
    rows = rng.uniform(size=(70, 1, 28, 28)).astype(np.float32)
    scores = Predictor(model, str(tmp_path / "w.weights.npz")).run(rows, ["prob"])["prob"]
    assert scores.shape == (70, 10) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    net.blobs["data"].reshape((1, 1, 28, 28))
    net.reshape()
    net.blobs["data"].data[...] = rows[66:67]
    net.forward()
    np.testing.assert_allclose(scores[66], net.blobs["prob"].data[0], rtol=1e-4, atol=1e-6)


RESIDUAL_DEPLOY = """
layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [4, 3, 12, 12]}}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1, convolution_param: {num_output: 8, kernel_size: 3, pad: 1}}
  - {name: relu1, type: ReLU, bottom: conv1, top: conv1}
  - {name: conv2, type: Convolution, bottom: conv1, top: conv2, convolution_param: {num_output: 8, kernel_size: 3, pad: 1}}
  - {name: sum, type: Eltwise, bottom: [conv1, conv2], top: sum}
  - {name: relu2, type: ReLU, bottom: sum, top: sum}
  - {name: fc, type: InnerProduct, bottom: sum, top: fc, inner_product_param: {num_output: 5}}
"""


def test_predict_writes_a_named_blob_that_a_fused_convolution_would_skip(tmp_path):
    """A forward-only net's convolution writes the Eltwise SUM above it and not its own top (Net._residual_adds);
    predict's named blobs are written as the layers one by one write them, the fused path's scores unchanged."""
    from netspec.loader import loads
    from netspec.net import Net
    from solvers.predict import Predictor
    from solvers.snapshot import save_npz
    (tmp_path / "deploy.yaml").write_text(RESIDUAL_DEPLOY)
    net = Net(loads(RESIDUAL_DEPLOY), "TEST", seed=0)
    rng = np.random.default_rng(0)
    for p in net.params:
        p.blob.data[...] = rng.normal(0, 0.3, p.blob.data.shape)
    save_npz(str(tmp_path / "w.weights.npz"), {k: v.copy() for k, v in net.weights().items()})
    rows = rng.normal(size=(4, 3, 12, 12)).astype(np.float32)
    net.blobs["data"].data[...] = rows
    net.forward()  # the layers one by one (keep_for_backward: nothing folded)
    fused = Predictor(str(tmp_path / "deploy.yaml"), str(tmp_path / "w.weights.npz"))
    got = fused.run(rows, ["fc"])["fc"]
    assert [fused.net.layers[i].name for i in fused.net._fold_adds] == ["conv2"]
    np.testing.assert_allclose(got, net.blobs["fc"].data, rtol=1e-5, atol=1e-5)
    named = Predictor(str(tmp_path / "deploy.yaml"), str(tmp_path / "w.weights.npz")).run(rows, ["conv2", "fc"])
    np.testing.assert_allclose(named["conv2"], net.blobs["conv2"].data, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(named["fc"], got, rtol=1e-6, atol=1e-6)
