"""The Data layer: csv and npz sources, order, shuffling per epoch, transform, positions in specs."""
import gzip

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


def test_npz_without_an_array_for_a_top(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 2)), label=np.zeros(3))
    with pytest.raises(SpecError, match="has no array named 'data'"):
        data_net(tmp_path, "d.npz")
