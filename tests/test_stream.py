"""Streamed sources (layers/stream.py): every kind serves the batches the same source held in memory serves,
without holding it; a run killed with -9 and resumed sees the same batches as one that was not."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from netspec.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, SHAPE = 45, (1, 4, 5)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N,) + SHAPE).astype(np.uint8), rng.integers(0, 7, N).astype(np.float32)


def _lmdb(path, data, labels):
    """An LMDB of uint8 Datum records, keys 00000000, ... (convert_mnist_data's)."""
    import lmdb
    from layers.sources import datum_bytes
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(len(data)):
            txn.put(f"{i:08d}".encode(), datum_bytes(data[i], int(labels[i])))
    env.close()


def _write(kind, folder):
    """The same 45 examples as a source of each kind; (source name, net field for it, the block)."""
    data, labels = _data()
    if kind == "lmdb" or kind == "leveldb":
        from layers.sources import datum_bytes
        if kind == "lmdb":
            _lmdb(folder / "db", data, labels)
        else:
            plyvel = pytest.importorskip("plyvel")
            db = plyvel.DB(str(folder / "db"), create_if_missing=True)
            for i in range(N):
                db.put(f"{i:08d}".encode(), datum_bytes(data[i], int(labels[i])))
            db.close()
        return "db", "Data", "data_param"
    if kind == "npz":  # stored, not compressed: memory-mapped
        np.savez(folder / "rows.npz", data=data.astype(np.float32), label=labels)
        return "rows.npz", "Data", "data_param"
    if kind == "idx":
        import struct
        with open(folder / "set-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">iiii", 0x0803, N, SHAPE[1], SHAPE[2]) + data.tobytes())
        with open(folder / "set-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">ii", 0x0801, N) + labels.astype(np.uint8).tobytes())
        return "set-images-idx3-ubyte", "Data", "data_param"
    if kind == "csv":
        with open(folder / "rows.csv", "w") as f:
            f.write("".join(",".join(map(str, list(d.ravel()) + [int(l)])) + "\n" for d, l in zip(data, labels)))
        return "rows.csv", "Data", "data_param"
    if kind == "hdf5":
        h5py = pytest.importorskip("h5py")
        for part, rows in (("a", slice(0, 20)), ("b", slice(20, N))):
            with h5py.File(folder / f"{part}.h5", "w") as f:
                f["data"], f["label"] = data[rows].astype(np.float32), labels[rows]
        (folder / "list.txt").write_text("a.h5\nb.h5\n")
        return "list.txt", "HDF5Data", "hdf5_data_param"
    if kind == "images":
        pytest.importorskip("PIL")
        from PIL import Image
        lines = []
        for i in range(N):
            Image.fromarray(data[i, 0]).save(folder / f"im{i}.png")
            lines.append(f"im{i}.png {int(labels[i])}")
        (folder / "list.txt").write_text("\n".join(lines) + "\n")
        return "list.txt", "ImageData", "image_data_param"
    raise ValueError(kind)


NET = """
layer:
  - name: data
    type: %s
    top: [data, label]
    %s: {source: %s, batch_size: 8, shuffle: true, stream: %s%s}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 7}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


@pytest.mark.parametrize("kind", ["lmdb", "leveldb", "npz", "idx", "csv", "hdf5", "images", "images+processes",
                                  "lmdb+processes"])
def test_a_streamed_source_serves_the_batches_of_the_same_source_in_memory(kind, tmp_path):
    kind, _, processes = kind.partition("+")
    source, type_, block = _write(kind, tmp_path)
    extra = ", is_color: false" if kind == "images" else ""
    extra += ", processes: 2" if processes else ""  # read and decoded in two processes
    nets = {}
    for mode in ("never", "always"):
        path = str(tmp_path / f"{mode}.yaml")
        with open(path, "w") as f:
            f.write(NET % (type_, block, source, mode, extra))
        from netspec.loader import load
        nets[mode] = Net(load(path), "TRAIN", path, seed=5)
    batches = {mode: [] for mode in nets}
    for _ in range(14):  # two and a half epochs of 45 in batches of 8: reshuffles between
        for mode, net in nets.items():
            net.forward()
            batches[mode].append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    streamed = nets["always"].layers[0]
    assert streamed.reader is not None and streamed.arrays is None  # never the whole source in memory
    assert (streamed.prefetcher.processes is not None) == bool(processes)
    assert nets["never"].layers[0].reader is None
    if kind in ("lmdb", "leveldb", "idx"):  # uint8 as stored: a quarter of float32's memory, the same batches
        assert nets["never"].layers[0].arrays[0].dtype == np.uint8
    for (d0, l0), (d1, l1) in zip(batches["never"], batches["always"]):
        np.testing.assert_array_equal(l0, l1)
        np.testing.assert_array_equal(d0, d1)
    seen = np.concatenate([l for _, l in batches["always"][:6]])[:N]  # the first epoch: a permutation of all rows
    assert sorted(seen.tolist()) == sorted(_data()[1].tolist())
    streamed._stop_prefetch()


def test_the_snapshot_of_a_streamed_source_is_where_the_batches_used_end_not_the_prefetch(tmp_path):
    source, type_, block = _write("lmdb", tmp_path)
    path = str(tmp_path / "n.yaml")
    with open(path, "w") as f:
        f.write(NET % (type_, block, source, "always", ""))
    from netspec.loader import load
    net = Net(load(path), "TRAIN", path, seed=5)
    for _ in range(7):
        net.forward()
    layer = net.layers[0]
    state = layer.state_dict()
    assert state["batch_no"] == 7 and layer.batch_no > 7  # the prefetch ran ahead
    following = []
    for _ in range(6):
        net.forward()
        following.append(net.blobs["label"].data.copy())
    again = Net(load(path), "TRAIN", path, seed=5)
    again.layers[0].load_state_dict(state)
    again.layers[0].rng.bit_generator.state = state["rng"]
    for labels in following:
        again.forward()
        np.testing.assert_array_equal(again.blobs["label"].data, labels)


def test_a_streamed_run_killed_and_resumed_sees_the_batches_of_an_uninterrupted_one(tmp_path):
    """kill -9 after the snapshot at iteration 20; resuming from it, iterations 20..39 read the same labels in the
    same order as a run that was never stopped (a Python layer writes each batch's labels)."""
    source, type_, block = _write("lmdb", tmp_path)
    logs = {}
    for run in ("whole", "killed"):
        folder = tmp_path / run
        folder.mkdir()
        os.symlink(tmp_path / "db", folder / "db")
        net = NET % (type_, block, source, "always", "") + (
            f"  - {{name: log, type: Python, bottom: label, python_param: {{module: tests.pylayer_cases, "
            f"layer: LabelLog, param_str: '{folder / 'labels.txt'} 0.05'}}, include: {{phase: TRAIN}}}}\n")
        (folder / "net.yaml").write_text(net)
        (folder / "solver.yaml").write_text("net: net.yaml\nbase_lr: 0.00001\nmax_iter: 40\nsnapshot: 20\n"
                                            "snapshot_prefix: snap\nrandom_seed: 3\ndisplay: 0\n")
        env = dict(os.environ, PYTHONPATH=ROOT)
        cmd = [sys.executable, os.path.join(ROOT, "run.py"), "train", "solver.yaml"]
        if run == "whole":
            r = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
        else:
            p = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.time() + 240
            while time.time() < deadline:
                log = folder / "labels.txt"
                if (folder / "snap_iter_20.solverstate.npz").exists() and log.exists() and \
                        len(log.read_text().splitlines()) >= 26:
                    break
                time.sleep(0.05)
            p.send_signal(signal.SIGKILL)
            p.wait()
            before = len((folder / "labels.txt").read_text().splitlines())
            assert before < 40, "the run ended before it could be killed"
            r = subprocess.run(cmd + ["--snapshot", "snap_iter_20.solverstate.npz"], cwd=folder, env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            logs["resumed"] = (folder / "labels.txt").read_text().splitlines()[before:]
        logs[run] = (folder / "labels.txt").read_text().splitlines()
    assert len(logs["whole"]) == 40 and len(logs["resumed"]) == 20
    assert logs["resumed"] == logs["whole"][20:]


def test_a_broken_record_in_a_streamed_lmdb_is_a_clear_error(tmp_path):
    import lmdb
    source, type_, block = _write("lmdb", tmp_path)
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(f"{30:08d}".encode(), b"\xff\xff garbage")
    env.close()
    path = str(tmp_path / "n.yaml")
    with open(path, "w") as f:
        f.write((NET % (type_, block, source, "always", "")).replace("shuffle: true", "shuffle: false"))
    from netspec.errors import UserError
    from netspec.loader import load
    net = Net(load(path), "TRAIN", path, seed=5)
    with pytest.raises(UserError, match="not a valid Caffe Datum"):
        for _ in range(6):
            net.forward()


def test_an_lmdb_read_into_memory_fills_one_array_and_names_a_record_of_another_shape(tmp_path):
    """In memory, the records go into one array made for their count (not a list stacked at the end, which held
    them twice); a record of another shape is an error naming it and the fix."""
    from layers import sources
    data, labels = _data()
    _lmdb(tmp_path / "db", data, labels)
    images, got = sources.lmdb_load(str(tmp_path / "db"), ["data", "label"], np.float32)
    np.testing.assert_array_equal(images, data.astype(np.float32))
    np.testing.assert_array_equal(got, labels)
    assert images.base is None or images.base.shape[0] == N  # one array
    import lmdb
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(f"{7:08d}".encode(), sources.datum_bytes(np.zeros((1, 5, 5), np.uint8), 1))
    env.close()
    with pytest.raises(sources.SourceError, match=r"record 7 holds an example of shape \[1, 5, 5\], the first one "
                       r"of \[1, 4, 5\].*--resize HxW"):
        sources.lmdb_load(str(tmp_path / "db"), ["data", "label"], np.float32)


def test_run_py_time_reports_the_data_layer_alone(tmp_path):
    from netspec.timing import time_net
    source, type_, block = _write("lmdb", tmp_path)
    path = tmp_path / "n.yaml"
    path.write_text(NET % (type_, block, source, "always", ""))
    lines = []
    result = time_net(str(path), iterations=3, out=lines.append)
    (row,) = result["data_layers"]
    assert row["how"] == "streamed" and row["images_per_s"] > 0
    assert any(line.startswith("Data layer 'data' alone (streamed)") for line in lines)


def test_hdf5_shuffles_as_caffe_files_in_a_new_order_and_rows_within_each_file(tmp_path):
    source, type_, block = _write("hdf5", tmp_path)  # a.h5 rows 0..19, b.h5 rows 20..44
    path = tmp_path / "n.yaml"
    for mode in ("always", "never"):
        path.write_text(NET % (type_, block, source, mode, ""))
        from netspec.loader import load
        layer = Net(load(str(path)), "TRAIN", str(path), seed=5).layers[0]
        layer.load()
        orders = [layer.order]
        for _ in range(5):
            orders.append(layer._shuffled(layer.order))
        for order in orders:
            first = 20 if order[0] < 20 else 25  # whichever file comes first, all its rows come together
            assert sorted(order[:first]) == list(range(0, 20) if first == 20 else range(20, 45))
        assert len({tuple(o) for o in orders}) == len(orders)
        layer._stop_prefetch()


@pytest.mark.parametrize("kind", ["jpeg list", "encoded lmdb", "gzip hdf5"])
def test_auto_streams_a_source_by_what_it_takes_decoded_not_by_its_stored_bytes(kind, tmp_path, monkeypatch):
    """stream: auto (the default) compares what the rows would take in memory, decoded, with the threshold, not
    the bytes the source takes on disk: 45 MiB of 500x375 JPEGs were read into 3.2 GiB (7.6 GB resident). Here a
    threshold between the two streams the source; one above what it takes decoded holds it in memory."""
    import layers.stream
    rows, shape = 24, (3, 48, 40)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:shape[1], 0:shape[2]]
    images = np.stack([np.stack([(xx * (1 + i % 3) + yy * c) % 256 for c in range(3)]) for i in range(rows)])
    images, labels = images.astype(np.uint8), rng.integers(0, 7, rows).astype(np.float32)
    pixel = 4  # bytes a value held in memory: float32, but uint8 for decoded images and Datum pixels
    if kind in ("jpeg list", "encoded lmdb"):
        pytest.importorskip("PIL")
        from PIL import Image
        for i in range(rows):
            Image.fromarray(images[i].transpose(1, 2, 0)).save(tmp_path / f"im{i}.jpg", quality=90)
        (tmp_path / "list.txt").write_text("".join(f"im{i}.jpg {int(labels[i])}\n" for i in range(rows)))
        source, type_, block, stored, pixel = "list.txt", "ImageData", "image_data_param", sum(
            os.path.getsize(tmp_path / f"im{i}.jpg") for i in range(rows)), 1
    if kind == "encoded lmdb":  # (convert_imageset -encoded's records)
        from layers.sources import write_dataset
        write_dataset(str(tmp_path / "list.txt"), str(tmp_path / "db"), encoded="")
        source, type_, block, pixel = "db", "Data", "data_param", 1
        stored = os.path.getsize(tmp_path / "db" / "data.mdb")
    if kind == "gzip hdf5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp_path / "a.h5", "w") as f:
            f.create_dataset("data", data=images.astype(np.float32), compression="gzip")
            f.create_dataset("label", data=labels, compression="gzip")
        (tmp_path / "list.txt").write_text("a.h5\n")
        source, type_, block, stored = "list.txt", "HDF5Data", "hdf5_data_param", os.path.getsize(tmp_path / "a.h5")
    decoded = rows * (np.prod(shape) * pixel + 4)
    assert stored < decoded / 2  # (compressed or encoded)
    from netspec.loader import load
    path = str(tmp_path / "net.yaml")
    (tmp_path / "net.yaml").write_text(NET % (type_, block, source, "auto", ""))
    for threshold, streamed in ((stored + (decoded - stored) // 2, True), (decoded + 1024, False)):
        monkeypatch.setattr(layers.stream, "STREAM_ABOVE", threshold)
        net = Net(load(path), "TRAIN", path, seed=5)
        net.forward()
        layer = net.layers[0]
        assert (layer.reader is not None) == streamed and (layer.arrays is None) == streamed, (threshold, stored)
        assert layer.held_estimate == pytest.approx(decoded, rel=0.01)
        if streamed:
            assert "MiB decoded)" in layer.data_note
            layer._stop_prefetch()


def test_a_source_above_the_threshold_that_cannot_be_streamed_says_why_and_how(tmp_path, monkeypatch):
    """A gzip IDX (or csv.gz, or a compressed npz) above the threshold is read into memory, as it cannot be read by
    row; the note says so and how to make it streamable, not that it is below the threshold."""
    import gzip
    import struct
    import layers.stream
    from netspec.loader import load
    data, labels = _data()
    with gzip.open(tmp_path / "set-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">iiii", 0x0803, N, SHAPE[1], SHAPE[2]) + data.tobytes())
    with gzip.open(tmp_path / "set-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">ii", 0x0801, N) + labels.astype(np.uint8).tobytes())
    path = str(tmp_path / "net.yaml")
    (tmp_path / "net.yaml").write_text(NET % ("Data", "data_param", "set-images-idx3-ubyte.gz", "auto", ""))
    for threshold, note in ((1024, "its format cannot be streamed: a gzip file cannot be read by row; gunzip it"),
                            (1 << 20, "below the streaming threshold")):
        monkeypatch.setattr(layers.stream, "STREAM_ABOVE", threshold)
        net = Net(load(path), "TRAIN", path, seed=5)
        net.forward()
        assert net.layers[0].reader is None and note in net.layers[0].data_note
        assert net.layers[0].held_estimate == N * (np.prod(SHAPE) + 4)  # uint8 pixels, float32 labels


def test_hdf5_files_read_into_memory_fill_one_array_and_a_file_of_another_shape_is_named(tmp_path):
    h5py = pytest.importorskip("h5py")
    from layers import sources
    source, _, _ = _write("hdf5", tmp_path)
    (data, lengths), (want, labels) = sources.hdf5_load(str(tmp_path / source), ["data", "label"], np.float32,
                                                        with_lengths=True), _data()
    np.testing.assert_array_equal(data[0], want.astype(np.float32))
    np.testing.assert_array_equal(data[1], labels)
    assert lengths == [20, N - 20]
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["data"], f["label"] = np.zeros((3, 1, 5, 4), np.float32), np.zeros(3, np.float32)
    (tmp_path / source).write_text("a.h5\nb.h5\nc.h5\n")
    with pytest.raises(sources.SourceError, match=r"c.h5: dataset 'data' has rows of shape \[1, 5, 4\], .*a.h5's "
                       r"\[1, 4, 5\]"):
        sources.hdf5_load(str(tmp_path / source), ["data", "label"], np.float32)
