"""The Data layer: csv and npz sources, order, shuffling per epoch, transform, positions in specs."""
import gzip
import os

import numpy as np
import pytest

from netspec.errors import SpecError
from netspec.loader import loads
from netspec.net import Net


def data_net(tmp_path, source, shuffle=False, batch=4, extra="", seed=5):
    (tmp_path / "net.yaml").write_text(f"""layer:
  - name: d
    type: Data
    top: [data, label]
    data_param: {{source: {source}, batch_size: {batch}, shuffle: {str(shuffle).lower()}}}
    {extra}
""")
    path = str(tmp_path / "net.yaml")
    return Net(loads((tmp_path / "net.yaml").read_text(), path), "TRAIN", path, seed=seed)


def write_csv(path, n=10, features=4, gz=False, header=False):
    rows = [",".join(str(i * 10 + j) for j in range(features)) + f",{i % 3}" for i in range(n)]
    text = ("a,b,c,d,label\n" if header else "") + "\n".join(rows) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def batches(net, n):
    """Row numbers served by the next n batches (feature 0 of row i is 10*i)."""
    out = []
    for _ in range(n):
        net.forward()
        out.append(net.blobs["data"].data.reshape(net.blobs["data"].shape[0], -1)[:, 0] / 10)
    return np.concatenate(out)


def test_csv_rows_in_order_wrapping_across_epochs(tmp_path):
    write_csv(tmp_path / "d.csv")
    net = data_net(tmp_path, "d.csv")
    assert net.blobs["data"].shape == (4, 1, 2, 2)          # 4 features: a 1 x 2 x 2 image
    np.testing.assert_array_equal(batches(net, 3), np.r_[0:10, 0:2])


def test_header_and_gzip_are_read(tmp_path):
    write_csv(tmp_path / "d.csv.gz", gz=True, header=True)
    net = data_net(tmp_path, "d.csv.gz")
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2, 0])


def test_shuffle_is_a_new_permutation_each_epoch_and_seeded(tmp_path):
    write_csv(tmp_path / "d.csv", n=8)
    net = data_net(tmp_path, "d.csv", shuffle=True, batch=8)
    seen = [batches(net, 1) for _ in range(3)]
    for s in seen:
        assert sorted(s) == list(range(8))
    assert not all((seen[0] == s).all() for s in seen[1:])
    again = data_net(tmp_path, "d.csv", shuffle=True, batch=8)
    np.testing.assert_array_equal(batches(again, 1), seen[0])


def test_transform_subtracts_mean_then_scales(tmp_path):
    write_csv(tmp_path / "d.csv", n=4)
    net = data_net(tmp_path, "d.csv", extra="transform_param: {scale: 0.5, mean_value: 2}")
    net.forward()
    np.testing.assert_allclose(net.blobs["data"].data.reshape(4, 4)[1], (np.array([10, 11, 12, 13]) - 2) * 0.5)


def test_npz_arrays_are_named_after_the_tops(tmp_path):
    x = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    np.savez(tmp_path / "d.npz", data=x, label=np.arange(5) % 2)
    net = data_net(tmp_path, "d.npz", batch=2)
    assert net.blobs["data"].shape == (2, 3, 2, 2)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, x[:2])


def test_missing_source_points_at_the_field(tmp_path):
    with pytest.raises(SpecError) as e:
        data_net(tmp_path, "nope.csv")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'net.yaml'}:5:") and "source 'nope.csv'" in msg and "no such file" in msg


def test_missing_absolute_source_names_the_package_of_a_packaged_dataset(tmp_path, monkeypatch):
    """An absolute path is not 'relative to the net file'; a Debian dataset's path says which package to install."""
    from layers import sources
    with pytest.raises(SpecError) as e:
        data_net(tmp_path, str(tmp_path / "nope.csv"))
    assert "no such file; give the path of an existing file" in str(e.value) and "relative" not in str(e.value)
    monkeypatch.setitem(sources.PACKAGED, str(tmp_path / "datasets") + "/", "sudo apt-get install dataset-x")
    with pytest.raises(SpecError) as e:
        data_net(tmp_path, str(tmp_path / "datasets" / "train-images-idx3-ubyte.gz"))
    assert "no such file; this dataset is a Debian package: sudo apt-get install dataset-x" in str(e.value)


def test_npz_without_an_array_for_a_top(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 2)), label=np.zeros(3))
    with pytest.raises(SpecError, match="has no array named 'data'"):
        data_net(tmp_path, "d.npz")


# ---- more sources ------------------------------------------------------------------------------

def write_idx(path, array):
    import struct
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_idx_images_with_the_labels_file_beside_them(tmp_path):
    images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5], np.uint8))
    net = data_net(tmp_path, "train-images-idx3-ubyte.gz", batch=2)
    assert net.blobs["data"].shape == (2, 1, 4, 3)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0], images[:2])
    np.testing.assert_array_equal(net.blobs["label"].data, [3, 1])


def test_idx_without_labels_file_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "t-images-idx3-ubyte.gz", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(SpecError, match="the labels file .*t-labels-idx1-ubyte.gz is not beside the images"):
        data_net(tmp_path, "t-images-idx3-ubyte.gz")


def test_hdf5_data_reads_a_list_of_files_in_order(tmp_path):
    import h5py  # the hdf5 extra, part of the test extra
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    for i, rows in enumerate((slice(0, 4), slice(4, 6))):
        with h5py.File(tmp_path / f"part{i}.h5", "w") as f:
            f["data"], f["label"] = x[rows], np.arange(6)[rows]
    (tmp_path / "train.txt").write_text("part0.h5\npart1.h5\n")
    (tmp_path / "net.yaml").write_text("layer:\n  - {name: h, type: HDF5Data, top: [data, label], "
                                       "hdf5_data_param: {source: train.txt, batch_size: 4}}\n")
    path = str(tmp_path / "net.yaml")
    net = Net(loads((tmp_path / "net.yaml").read_text(), path), "TRAIN", path, seed=0)
    net.forward()
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [4, 5, 0, 1])   # spans files, wraps
    np.testing.assert_array_equal(net.blobs["data"].data[0], x[4])


def test_memory_data_is_fed_from_python():
    net = Net(loads("layer:\n  - {name: m, type: MemoryData, top: [data, label], memory_data_param: "
                    "{batch_size: 2, channels: 1, height: 2, width: 2}}\n"), "TRAIN", seed=0)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.array([0, 1, 2, 3]))
    net.forward()
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[2:])
    from netspec.errors import UserError
    with pytest.raises(UserError, match="3 examples is not a multiple of batch_size 2"):
        net.set_input_arrays(data[:3], np.zeros(3))


def test_dummy_data_fills_from_fillers():
    net = Net(loads("layer:\n  - {name: d, type: DummyData, top: [a, b], dummy_data_param: "
                    "{shape: [{dim: [2, 3]}, {dim: [2]}], data_filler: [{type: gaussian}, {type: constant, value: 7}]}}\n"),
              "TRAIN", seed=0)
    net.forward()
    first = net.blobs["a"].data.copy()
    net.forward()
    assert first.std() > 0 and not np.array_equal(first, net.blobs["a"].data)   # redrawn each batch
    np.testing.assert_array_equal(net.blobs["b"].data, [7, 7])


def test_dummy_data_refills_in_place_with_the_fillers_distribution():
    net = Net(loads("layer:\n  - {name: d, type: DummyData, top: [u, g], dummy_data_param: {shape: {dim: [200, 100]}, "
                    "data_filler: [{type: uniform, min: -2, max: 3}, {type: gaussian, mean: 5, std: 0.5}]}}\n"),
              "TRAIN", seed=0)
    u, g = net.blobs["u"].data, net.blobs["g"].data
    net.forward()
    first = u.copy()
    net.forward()
    assert net.blobs["u"].data is u and u.dtype == np.float32 and not np.array_equal(first, u)
    assert -2 <= u.min() < -1.99 and 2.99 < u.max() < 3 and abs(u.mean() - 0.5) < 0.05
    assert abs(g.mean() - 5) < 0.02 and abs(g.std() - 0.5) < 0.02


def test_uniform_refill_is_uniform_independent_and_resumes_from_the_rng_state():
    """DummyData's uniform refill (a counter-based SplitMix64 kernel keyed by one draw of the layer's
    generator): uniform histogram, no correlation between neighbours or between refills, float64 too, and a
    generator restored from a snapshot's state gives the same next batch."""
    from layers.fillers import uniform_into
    rng = np.random.default_rng(3)
    u = np.empty(400_000, np.float32)
    uniform_into(u, rng)
    counts = np.histogram(u, 50, (0, 1))[0]
    chi2 = ((counts - 8000) ** 2 / 8000).sum()
    assert chi2 < 100 and 0 <= u.min() and u.max() < 1  # 49 dof: p < 1e-5 above 100
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    first = u.copy()
    uniform_into(u, rng)
    assert abs(np.corrcoef(first, u)[0, 1]) < 0.01
    d = np.empty(100_000, np.float64)
    uniform_into(d, rng, -1.0, 1.0)
    assert -1 <= d.min() and d.max() < 1 and abs(d.mean()) < 0.01 and len(np.unique(d)) > 99_000
    state = rng.bit_generator.state
    uniform_into(u, rng)
    again = np.random.default_rng(0)
    again.bit_generator.state = state
    v = np.empty_like(u)
    uniform_into(v, again)
    np.testing.assert_array_equal(u, v)


def test_image_data_reads_resizes_and_labels(tmp_path):
    from PIL import Image  # the images extra, part of the test extra
    for i in range(3):
        Image.fromarray(np.full((6, 4, 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "list.txt").write_text("img0.png 0\nimg1.png 2\nimg2.png 1\n")
    (tmp_path / "net.yaml").write_text("layer:\n  - {name: i, type: ImageData, top: [data, label], image_data_param: "
                                       "{source: list.txt, batch_size: 3, new_height: 3, new_width: 2, is_color: false}}\n")
    path = str(tmp_path / "net.yaml")
    net = Net(loads((tmp_path / "net.yaml").read_text(), path), "TRAIN", path, seed=0)
    assert net.blobs["data"].shape == (3, 1, 3, 2)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 2, 1])
    np.testing.assert_allclose(net.blobs["data"].data[:, 0, 0, 0], [0, 40, 80], atol=1)


def test_image_lists_start_where_caffe_starts_them_and_new_sizes_go_together(tmp_path, monkeypatch):
    """An image list's relative paths start at the list file's folder or, as in Caffe, at the working directory
    (whichever holds the first image; a Caffe prototxt prefers the working directory where both do); root_folder
    and `data convert --root` say it outright. new_height without new_width is an error at its field, as Caffe's
    check (Caffe resizes only to both)."""
    from PIL import Image
    from layers import sources
    (tmp_path / "img").mkdir()
    (tmp_path / "lists").mkdir()
    for i in range(2):
        Image.fromarray(np.full((5, 4, 3), 60 * i + 10, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "lists" / "list.txt").write_text("img/0.png 0\nimg/1.png 1\n")  # from the working directory
    monkeypatch.chdir(tmp_path)
    text = ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { '
            'source: "lists/list.txt" batch_size: 2 } }\n')
    (tmp_path / "net.prototxt").write_text(text)
    from netspec.loader import load
    net = Net(load("net.prototxt"), "TEST", str(tmp_path / "net.prototxt"), seed=0)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[:, :, 0, 0], [[10] * 3, [70] * 3])
    data, labels = sources.read_any("lists/list.txt")  # run.py data convert's reading
    assert data.shape == (2, 3, 5, 4) and list(labels) == [0, 1]
    with pytest.raises(sources.SourceError, match=r"does not exist .*relative paths start at .*--root lists"):
        sources.read_any("lists/list.txt", root="lists")
    assert sources.read_any("lists/list.txt", root=".")[0].shape == (2, 3, 5, 4)
    (tmp_path / "lists" / "img").mkdir()  # now the list's folder holds them too: a Caffe net reads Caffe's
    Image.fromarray(np.full((5, 4, 3), 200, np.uint8)).save(tmp_path / "lists" / "img" / "0.png")
    assert sources.list_root("lists/list.txt", ["img/0.png"], str(tmp_path), caffe=True) == str(tmp_path)
    assert sources.list_root("lists/list.txt", ["img/0.png"], str(tmp_path)) == str(tmp_path / "lists")
    from layers.sources import with_root  # root_folder: Caffe's string prefix, or a folder where only that exists
    assert with_root(str(tmp_path), "img/", ["0.png"]) == [str(tmp_path / "img" / "0.png")]
    assert with_root(str(tmp_path), "img", ["0.png"]) == [str(tmp_path / "img" / "0.png")]
    assert with_root(str(tmp_path), "img/", ["/abs.png"]) == ["/abs.png"]
    (tmp_path / "lists" / "names.txt").write_text("0.png 0\n1.png 1\n")
    (tmp_path / "rooted.prototxt").write_text(text.replace('source: "lists/list.txt"', 'source: "lists/names.txt" '
                                                            'root_folder: "img/"'))
    rooted = Net(load("rooted.prototxt"), "TEST", str(tmp_path / "rooted.prototxt"), seed=0)
    rooted.forward()
    np.testing.assert_array_equal(rooted.blobs["data"].data[:, :, 0, 0], [[10] * 3, [70] * 3])
    (tmp_path / "bad.prototxt").write_text(text.replace("batch_size: 2", "batch_size: 2 new_height: 10"))
    with pytest.raises(SpecError, match=r"new_height is 10 and the other is 0.*set new_height and new_width") as e:
        Net(load("bad.prototxt"), "TEST", str(tmp_path / "bad.prototxt"), seed=0)
    assert ":1:" in str(e.value)


# ---- the transformer ---------------------------------------------------------------------------

def image_npz(tmp_path, n=4):
    x = np.arange(n * 2 * 4 * 4, dtype=np.float32).reshape(n, 2, 4, 4)
    np.savez(tmp_path / "d.npz", data=x, label=np.arange(n) % 2)
    return x


def test_crop_is_centred_in_test_and_random_in_train(tmp_path):
    x = image_npz(tmp_path)
    (tmp_path / "net.yaml").write_text("layer:\n  - {name: d, type: Data, top: [data, label], data_param: "
                                       "{source: d.npz, batch_size: 4}, transform_param: {crop_size: 2}}\n")
    path = str(tmp_path / "net.yaml")
    test = Net(loads((tmp_path / "net.yaml").read_text(), path), "TEST", path, seed=0)
    test.forward()
    np.testing.assert_array_equal(test.blobs["data"].data, x[:, :, 1:3, 1:3])
    train = Net(loads((tmp_path / "net.yaml").read_text(), path), "TRAIN", path, seed=0)
    seen = set()
    for _ in range(5):
        train.forward()
        for i in range(4):
            patch = train.blobs["data"].data[i]
            matches = [(t, l) for t in range(3) for l in range(3) if np.array_equal(patch, x[i, :, t:t + 2, l:l + 2])]
            assert matches
            seen.update(matches)
    assert len(seen) > 2


def test_mean_file_is_taken_at_the_source_position_and_mirror_flips(tmp_path):
    x = image_npz(tmp_path)
    mean = np.random.default_rng(0).normal(size=(2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "mean.npy", mean)
    (tmp_path / "net.yaml").write_text("layer:\n  - {name: d, type: Data, top: [data, label], data_param: "
                                       "{source: d.npz, batch_size: 4}, transform_param: "
                                       "{mean_file: mean.npy, scale: 0.5, crop_size: 2, mirror: true}}\n")
    path = str(tmp_path / "net.yaml")
    net = Net(loads((tmp_path / "net.yaml").read_text(), path), "TEST", path, seed=1)
    flips = 0
    for _ in range(4):
        net.forward()
        want = ((x - mean) * 0.5)[:, :, 1:3, 1:3]
        got = net.blobs["data"].data
        for i in range(4):
            same, flipped = np.allclose(got[i], want[i]), np.allclose(got[i], want[i][..., ::-1])
            assert same or flipped
            flips += flipped and not same
    assert 0 < flips < 16


def test_normalize_steps_are_fitted_on_train_and_shared_with_test(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(5, 3, size=(50, 3)).astype(np.float32)
    test = rng.normal(5, 3, size=(10, 3)).astype(np.float32)
    np.savez(tmp_path / "train.npz", data=train, label=np.zeros(50))
    np.savez(tmp_path / "test.npz", data=test, label=np.zeros(10))
    spec = """layer:
  - {name: d, type: Data, top: [data, label], include: {phase: TRAIN}, data_param: {source: train.npz, batch_size: 50},
     transform_param: {normalize: [{type: zero_center, per: feature}, {type: z_score, per: feature}]}}
  - {name: d, type: Data, top: [data, label], include: {phase: TEST}, data_param: {source: test.npz, batch_size: 10},
     transform_param: {normalize: [{type: zero_center, per: feature}, {type: z_score, per: feature}]}}
"""
    (tmp_path / "net.yaml").write_text(spec)
    path = str(tmp_path / "net.yaml")
    tr = Net(loads(spec, path), "TRAIN", path, seed=0)
    te = Net(loads(spec, path), "TEST", path, seed=0)
    te.share_weights_from(tr)
    tr.forward()
    np.testing.assert_allclose(tr.blobs["data"].data.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(tr.blobs["data"].data.std(0), 1, rtol=1e-4)
    te.forward()                                   # the TRAIN statistics, not the test set's own
    np.testing.assert_allclose(te.blobs["data"].data, (test - train.mean(0)) / train.std(0), rtol=1e-4, atol=1e-5)
    assert "d/0" in tr.weights() and tr.weights()["d/0"][0] == 1      # saved with the weights


@pytest.mark.parametrize("step, check", [
    ({"type": "linear_scale", "per": "feature"}, lambda y, x: np.allclose(y.min(0), -1) and np.allclose(y.max(0), 1)),
    ({"type": "log"}, lambda y, x: np.allclose(y, np.log1p(x))),
    ({"type": "clip", "min": 1, "max": 2}, lambda y, x: np.allclose(y, np.clip(x, 1, 2))),
    ({"type": "binary_threshold", "threshold": 1.5}, lambda y, x: np.array_equal(y, (x > 1.5).astype(np.float32))),
    ({"type": "zero_center", "per": "image"}, lambda y, x: np.allclose(y.mean(1), 0, atol=1e-6)),
    ({"type": "pca_whiten", "epsilon": 0}, lambda y, x: np.allclose(np.cov(y, rowvar=False, bias=True), np.eye(3), atol=1e-4)),
])
def test_normalize_step(tmp_path, step, check):
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(size=(40, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])).astype(np.float32) + 0.1
    np.savez(tmp_path / "d.npz", data=x, label=np.zeros(40))
    import json
    (tmp_path / "net.yaml").write_text("layer:\n  - {name: d, type: Data, top: [data, label], data_param: "
                                       "{source: d.npz, batch_size: 40}, transform_param: {normalize: ["
                                       + json.dumps(step) + "]}}\n")
    path = str(tmp_path / "net.yaml")
    net = Net(loads((tmp_path / "net.yaml").read_text(), path), "TRAIN", path, seed=0)
    net.forward()
    assert check(net.blobs["data"].data.astype(np.float64), x)


def test_z_score_never_divides_a_constant_feature(tmp_path):
    x = np.ones((5, 2), np.float32)
    x[:, 1] = np.arange(5)
    np.savez(tmp_path / "d.npz", data=x, label=np.zeros(5))
    (tmp_path / "net.yaml").write_text("layer:\n  - {name: d, type: Data, top: [data, label], data_param: "
                                       "{source: d.npz, batch_size: 5}, transform_param: {normalize: "
                                       "[{type: z_score, per: feature}]}}\n")
    path = str(tmp_path / "net.yaml")
    net = Net(loads((tmp_path / "net.yaml").read_text(), path), "TRAIN", path, seed=0)
    net.forward()
    assert np.isfinite(net.blobs["data"].data).all() and (net.blobs["data"].data[:, 0] == 1).all()


def test_data_convert_writes_an_lmdb_the_data_layer_reads(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    images = (np.arange(6 * 4 * 4) % 256).astype(np.uint8).reshape(6, 4, 4)
    write_idx(tmp_path / "x-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "x-labels-idx1-ubyte.gz", np.array([5, 4, 3, 2, 1, 0], np.uint8))
    r = subprocess.run([sys.executable, os.path.join(root, "run.py"), "data", "convert",
                        str(tmp_path / "x-images-idx3-ubyte.gz"), str(tmp_path / "db")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Wrote 6 examples" in r.stdout, r.stderr
    (tmp_path / "net.yaml").write_text("layer:\n  - {name: d, type: Data, top: [data, label], data_param: "
                                       "{source: db, backend: LMDB, batch_size: 4}}\n")
    path = str(tmp_path / "net.yaml")
    net = Net(loads((tmp_path / "net.yaml").read_text(), path), "TRAIN", path, seed=0)
    assert net.blobs["data"].shape == (4, 1, 4, 4)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0], images[:4])
    np.testing.assert_array_equal(net.blobs["label"].data, [5, 4, 3, 2])


def test_lmdb_with_encoded_and_float_datums(tmp_path):
    import io
    import lmdb
    from PIL import Image
    from netspec.caffemodel import _field, _int_field
    png = io.BytesIO()
    Image.fromarray(np.full((3, 2), 9, np.uint8)).save(png, format="PNG")
    encoded = _field(4, png.getvalue()) + _int_field(5, 1) + _int_field(7, 1)
    floats = (_int_field(1, 1) + _int_field(2, 3) + _int_field(3, 2)
              + _field(6, np.full(6, 0.5, "<f4").tobytes()) + _int_field(5, 2))
    env = lmdb.open(str(tmp_path / "db"))
    with env.begin(write=True) as txn:
        txn.put(b"0", encoded)
        txn.put(b"1", floats)
    env.close()
    net = data_net(tmp_path, "db", batch=2, extra="")
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[0, 0], np.full((3, 2), 9))
    np.testing.assert_array_equal(net.blobs["data"].data[1, 0], np.full((3, 2), 0.5))
    np.testing.assert_array_equal(net.blobs["label"].data, [1, 2])


def test_regression_targets_are_normalized_and_reported_in_their_units(tmp_path):
    import subprocess
    import sys
    import json as _json
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([[2.0], [-1.0], [0.5]]) * 50 + 300).astype(np.float32)      # targets around 300, std ~ 100
    np.savez(tmp_path / "d.npz", data=x, target=y)
    spec = ("layer:\n  - {name: d, type: Data, top: [data, target], data_param: {source: d.npz, batch_size: 40}, "
            "transform_param: {normalize_target: [{type: zero_center, per: feature}, {type: z_score, per: feature}]}}\n"
            "  - {name: ip, type: InnerProduct, bottom: data, top: pred, inner_product_param: {num_output: 1}}\n"
            "  - {name: loss, type: EuclideanLoss, bottom: [pred, target], top: loss}\n")
    (tmp_path / "net.yaml").write_text(spec)
    path = str(tmp_path / "net.yaml")
    net = Net(loads(spec, path), "TRAIN", path, seed=0)
    net.forward()
    t = net.blobs["target"].data
    np.testing.assert_allclose(t.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(t.std(0), 1, rtol=1e-3)
    weights = {k: v for k, v in net.weights().items()}
    np.savez(tmp_path / "w.npz", **weights)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "run.py"), "test", path, "--weights",
                        str(tmp_path / "w.npz"), "--iterations", "1", "--json"], capture_output=True, text=True,
                       timeout=300)
    out = _json.loads(r.stdout)
    # the prediction is 0 (zero weights): in normalized units the loss is about 1/2, in original units var(y)/2
    assert out["loss"] == pytest.approx(0.5, rel=1e-3)
    assert out["loss_original_units"] == pytest.approx(float(y.var()) / 2, rel=1e-3)


def test_rand_skip_starts_training_at_a_random_example_and_force_encoded_color_gives_three_channels(tmp_path):
    import io as _io
    import lmdb
    from PIL import Image
    from netspec.caffemodel import _field, _int_field
    from netspec.loader import loads
    from netspec.net import Net
    np.savez(tmp_path / "rows.npz", data=np.arange(20, dtype=np.float32)[:, None], label=np.zeros(20, np.float32))
    starts = set()
    for seed in range(8):
        net = Net(loads("layer:\n  - {name: d, type: Data, top: [data, label], data_param: {source: rows.npz, "
                        "batch_size: 2, rand_skip: 10}}\n"), "TRAIN", str(tmp_path / "n.yaml"), seed=seed)
        net.forward()
        starts.add(float(net.blobs["data"].data[0, 0]))
    assert len(starts) > 2 and max(starts) < 10
    buf = _io.BytesIO()
    Image.fromarray(np.full((4, 5), 200, np.uint8)).save(buf, "PNG")
    datum = _int_field(1, 1) + _int_field(2, 4) + _int_field(3, 5) + _field(4, buf.getvalue()) + _int_field(5, 3) \
        + _int_field(7, 1)
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", datum)
    env.close()
    for force, channels in ((False, 1), (True, 3)):
        text = ("layer:\n  - {name: d, type: Data, top: [data, label], data_param: {source: db, batch_size: 1, "
                f"backend: LMDB, force_encoded_color: {str(force).lower()}}}}}\n")
        net = Net(loads(text), "TRAIN", str(tmp_path / "n.yaml"), seed=0)
        net.forward()
        assert net.blobs["data"].shape == (1, channels, 4, 5) and (net.blobs["data"].data == 200).all()


def test_window_data_samples_background_then_foreground_windows_and_crops_them(tmp_path):
    """Caffe's WindowData: batch 8 with fg_fraction 0.25: 6 background windows (label 0), then 2 foreground; each
    window warped to crop_size, in BGR order, mean and scale applied; context_pad outside the image stays 0."""
    from PIL import Image
    from netspec.loader import loads
    from netspec.net import Net
    img = np.zeros((6, 8, 3), np.uint8)
    img[:, :4] = (10, 20, 30)    # left half: the background window (RGB)
    img[:, 4:] = (200, 100, 50)  # right half: the object
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "windows.txt").write_text("# 0\na.png\n3\n6\n8\n2\n7 0.9 4 0 7 5\n0 0.1 0 0 3 5\n")
    text = ("layer:\n  - {name: w, type: WindowData, top: [data, label], transform_param: {crop_size: 4, "
            "mean_value: [1, 2, 3]}, window_data_param: {source: windows.txt, batch_size: 8, scale: 0.5}}\n")
    net = Net(loads(text), "TRAIN", str(tmp_path / "n.yaml"), seed=0)
    net.forward()
    data, label = net.blobs["data"].data, net.blobs["label"].data
    assert data.shape == (8, 3, 4, 4) and label.tolist() == [0] * 6 + [7] * 2
    np.testing.assert_allclose(data[0, :, 1, 1], (np.array([30, 20, 10]) - [1, 2, 3]) * 0.5)  # BGR
    np.testing.assert_allclose(data[7, :, 1, 1], (np.array([50, 100, 200]) - [1, 2, 3]) * 0.5)
    padded = Net(loads(text.replace("scale: 0.5}", "scale: 1, context_pad: 1}")), "TRAIN", str(tmp_path / "n.yaml"),
                 seed=0)
    padded.forward()  # the context of the right window runs past the image's right edge: zeros there
    fg = padded.blobs["data"].data[6]
    assert (fg[:, :, -1] == 0).all() and (fg[:, 1:3, 1] != 0).all()


def test_the_mean_of_an_image_list_is_streamed_image_by_image(tmp_path):
    """run.py data mean on an image list (it said 'unknown file type'): the images read as Caffe reads them (BGR),
    summed one at a time in float32; images of another size are a clear error."""
    from PIL import Image
    from layers import images, sources
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pics):
        Image.fromarray(p).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("0.png 0\n1.png 1\n2.png\n")  # (a label is not needed for a mean)
    mean, count = sources.image_mean(str(tmp_path / "list.txt"))
    expected = sum(images.read_image(str(tmp_path / f"{i}.png")).astype(np.float32) for i in range(3)) / np.float32(3)
    assert count == 3 and mean.shape == (3, 4, 5)
    np.testing.assert_array_equal(mean, expected)
    np.testing.assert_allclose(mean[0], np.mean([p[:, :, 2] for p in pics], axis=0), rtol=1e-6)  # B first
    Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / "3.png")
    (tmp_path / "list.txt").write_text("0.png 0\n3.png 1\n")
    with pytest.raises(sources.SourceError, match=r"example 1 has shape \[3, 6, 5\], the first \[3, 4, 5\]"):
        sources.image_mean(str(tmp_path / "list.txt"))
