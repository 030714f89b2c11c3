"""Shapes that change between batches (Caffe's Reshape): an Input blob reshaped from Python, ImageData with
images of different sizes. The reshaped net must compute what a net built for the new shape computes."""
import numpy as np
import pytest

from netspec.errors import SpecError, UserError
from netspec.loader import loads
from netspec.net import Net

FCN = """
name: fcn
layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 3, %d, %d]}}}
  - {name: conv1, type: Convolution, bottom: data, top: conv1,
     convolution_param: {num_output: 4, kernel_size: 3, pad: 1, weight_filler: {type: xavier}}}
  - {name: bn, type: BatchNorm, bottom: conv1, top: conv1}
  - {name: sc, type: Scale, bottom: conv1, top: conv1, scale_param: {bias_term: true}}
  - {name: relu, type: ReLU, bottom: conv1, top: conv1}
  - {name: pool, type: Pooling, bottom: conv1, top: pool, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: conv2, type: Convolution, bottom: pool, top: conv2,
     convolution_param: {num_output: 5, kernel_size: 1, weight_filler: {type: gaussian, std: 0.3}}}
  - {name: gap, type: Pooling, bottom: conv2, top: gap, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: ip, type: InnerProduct, bottom: gap, top: ip, inner_product_param: {num_output: 3}}
"""


def fcn(h, w):
    return Net(loads(FCN % (h, w), "fcn.yaml"), "TRAIN", "fcn.yaml", seed=1, dtype=np.float64)


def run(net, x, dy):
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["ip"].diff[...] = dy
    for k in reversed(range(len(net.layers))):
        if net.need_backward[k]:
            net.backward_layer(k)
    return net.blobs["ip"].data.copy(), net.blobs["data"].diff.copy(), [p.blob.diff.copy() for p in net.params]


@pytest.mark.parametrize("how", ["net.reshape()", "at forward"])
def test_reshaping_an_input_blob_gives_what_a_net_built_for_that_shape_gives(how):
    rng = np.random.default_rng(0)
    small, big = fcn(6, 8), fcn(11, 7)
    for p, q in zip(small.params, big.params):
        q.blob.data[...] = p.blob.data
    x, dy = rng.normal(size=(5, 3, 11, 7)), rng.normal(size=(5, 3))
    big_in = big.blobs["data"]
    big_in.reshape(5, 3, 11, 7)
    big.reshape()
    small.blobs["data"].reshape(5, 3, 11, 7)
    if how == "net.reshape()":
        small.reshape()
        assert small.blobs["pool"].data.shape == (5, 4, 6, 4)
    expected = run(big, x, dy)
    got = run(small, x, dy)
    for a, b in zip(got[:2] + tuple(got[2]), expected[:2] + tuple(expected[2])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert small.shapes["conv1"] == (5, 4, 11, 7)
    weights = [p.blob.data.copy() for p in small.params]
    small.blobs["data"].reshape(2, 3, 6, 8)  # and back: weights untouched
    small.reshape()
    assert all(np.array_equal(w, p.blob.data) for w, p in zip(weights, small.params))


def test_a_reshape_that_would_change_learned_weights_is_a_clear_error():
    net = Net(loads("""
layer:
  - {name: in, type: Input, top: data, input_param: {shape: {dim: [2, 3, 4, 4]}}}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 3}}
""", "n.yaml"), "TEST", "n.yaml")
    net.blobs["data"].reshape(2, 3, 5, 5)
    with pytest.raises(SpecError) as e:
        net.reshape()
    text = str(e.value)
    assert "layer 'ip' (InnerProduct)" in text and "[3, 48]" in text and "[3, 75]" in text
    assert "n.yaml:4" in text


def _images(tmp_path, sizes):
    from PIL import Image
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png {i % 2}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")


IMAGE_NET = """
layer:
  - {name: data, type: ImageData, top: [data, label],
     image_data_param: {source: list.txt, batch_size: %d}, transform_param: {scale: 0.00390625}}
  - {name: conv, type: Convolution, bottom: data, top: conv,
     convolution_param: {num_output: 2, kernel_size: 3, weight_filler: {type: xavier}}}
  - {name: relu, type: ReLU, bottom: conv, top: conv}
  - {name: gap, type: Pooling, bottom: conv, top: gap, pooling_param: {pool: AVE, global_pooling: true}}
  - {name: ip, type: InnerProduct, bottom: gap, top: ip, inner_product_param: {num_output: 2}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def test_image_data_of_different_sizes_reshapes_the_net_per_batch_as_caffe(tmp_path):
    pytest.importorskip("PIL")
    sizes = [(9, 12), (7, 7), (9, 12), (16, 5)]
    _images(tmp_path, sizes)
    net = Net(loads(IMAGE_NET % 1, str(tmp_path / "n.yaml")), "TRAIN", str(tmp_path / "n.yaml"), seed=0)
    seen, outputs = [], []
    for h, w in sizes + sizes[:1]:
        loss = net.forward()
        outputs.append((loss, net.blobs["ip"].data.copy()))
        net.backward()
        seen.append(net.blobs["data"].data.shape)
        assert net.blobs["conv"].data.shape == (1, 2, h - 2, w - 2)
        assert np.isfinite(loss) and np.isfinite(net.params[0].blob.diff).all()
    assert seen == [(1, 3, h, w) for h, w in sizes + sizes[:1]]
    # the same image after three of other sizes (no update in between): the same numbers
    assert outputs[0][0] == outputs[-1][0] and np.array_equal(outputs[0][1], outputs[-1][1])


def test_a_batch_of_images_of_different_sizes_is_a_clear_error(tmp_path):
    pytest.importorskip("PIL")
    _images(tmp_path, [(9, 12), (7, 7)])
    net = Net(loads(IMAGE_NET % 2, str(tmp_path / "n.yaml")), "TRAIN", str(tmp_path / "n.yaml"), seed=0)
    with pytest.raises(UserError) as e:
        net.forward()
    text = str(e.value)
    assert "im0.png" in text and "im1.png" in text and "[3, 7, 7]" in text and "batch_size: 1" in text


PY_NET = """
layer:
  - {name: data, type: Python, top: [data, label], python_param: {module: tests.pylayer_cases, layer: VarRows}}
  - {name: sb, type: Python, bottom: data, top: sb, python_param: {module: tests.pylayer_cases, layer: ScaleBias},
     param: [{lr_mult: 1}, {lr_mult: 2}]}
  - {name: ip, type: InnerProduct, bottom: sb, top: ip, inner_product_param: {num_output: 3,
     weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""


def test_python_layers_reshape_their_tops_per_batch_and_learn_blobs_made_by_add_blob(tmp_path):
    net = Net(loads(PY_NET, "py.yaml"), "TRAIN", "py.yaml", seed=0)
    sb = net.layer_by_name("sb")
    assert [p.key for p in net.params][:2] == ["sb/0", "sb/1"] and [p.lr_mult for p in net.params[:2]] == [1, 2]
    assert sb.blobs[0].data.tolist() == [2.0] and np.allclose(sb.blobs[1].data, [0, 0.1, 0.2, 0.3])
    for k in (2, 3, 4):
        net.clear_param_diffs()
        loss = net.forward()
        net.backward()
        assert net.blobs["data"].data.shape == (k, 4) and net.blobs["ip"].data.shape == (k, 3)
        x, dip = net.blobs["data"].data, net.blobs["sb"].diff
        # the layer's add_blob blobs are the net's: their diffs reach the solver's flat array
        np.testing.assert_allclose(sb.blobs[0].diff, [np.sum(dip * x)], rtol=1e-5)
        np.testing.assert_allclose(sb.blobs[1].diff, dip.sum(axis=0), rtol=1e-5, atol=1e-7)
        assert np.isfinite(loss)
    net.param_data[0] = 3.0  # what the solver updates is what the layer computes with
    net.forward()
    np.testing.assert_allclose(net.blobs["sb"].data, 3.0 * net.blobs["data"].data + sb.blobs[1].data, rtol=1e-6)
    assert "sb/0" in net.weights() and "sb/1" in net.weights()
