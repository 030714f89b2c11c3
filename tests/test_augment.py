"""Augmentation in transform_param (TRAIN only): random-resized crop, rotation, colour jitter, mixup and cutmix
with soft labels for SoftmaxWithLoss; reproducible from the seed, in memory and streamed alike."""
import numpy as np
import pytest

from layers.transform import jitter, resize_bilinear, resized_crop_box, rotate
from netspec.errors import SpecError
from netspec.net import Net

RNG = np.random.default_rng(0)


def test_rotation_by_90_degrees_is_a_quarter_turn_and_resize_to_the_same_size_is_the_identity():
    img = RNG.uniform(size=(2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(rotate(img, 90), np.rot90(img, -1, axes=(1, 2)), atol=1e-5)  # clockwise
    np.testing.assert_allclose(rotate(img, 0), img, atol=1e-6)
    np.testing.assert_allclose(resize_bilinear(img, (5, 5)), img, atol=1e-6)
    big = resize_bilinear(np.ones((1, 3, 4), np.float32), (7, 9))
    np.testing.assert_allclose(big, 1, atol=1e-6)  # a constant stays constant


def test_resized_crop_boxes_lie_inside_and_cover_the_asked_share():
    rng = np.random.default_rng(1)
    for _ in range(200):
        y, x, h, w = resized_crop_box(40, 60, [0.2, 0.6], [0.75, 4 / 3], rng)
        assert 0 <= y and y + h <= 40 and 0 <= x and x + w <= 60
        assert 0.15 < h * w / 2400 < 0.65


def test_jitter_brightness_alone_scales_by_a_factor_within_the_range():
    img = RNG.uniform(0.1, 1, size=(3, 4, 4)).astype(np.float32)
    for seed in range(20):
        out = jitter(img, 0.3, 0, 0, np.random.default_rng(seed))
        factor = out / img
        assert np.allclose(factor, factor.flat[0], rtol=1e-5) and 0.7 <= factor.flat[0] <= 1.3


NET = """
layer:
  - name: data
    type: Data
    top: [data, label]
    include: {phase: %s}
    data_param: {source: rows.npz, batch_size: 8, shuffle: true%s}
    transform_param: {crop_size: 6, mirror: true, scale: 0.00390625, mean_value: [100], %s}
  - {name: ip, type: InnerProduct, bottom: data, top: ip, inner_product_param: {num_output: 5,
     weight_filler: {type: xavier}}}
  - {name: loss, type: SoftmaxWithLoss, bottom: [ip, label], top: loss}
"""
AUGMENT = ("resized_crop_scale: [0.3, 1], rotation: 20, brightness: 0.4, contrast: 0.4, mixup_alpha: 0.4, "
           "cutmix_alpha: 1.0, mix_classes: 5")


def _net(tmp_path, phase="TRAIN", augment=AUGMENT, stream=""):
    if not (tmp_path / "rows.npz").exists():
        rng = np.random.default_rng(2)
        np.savez(tmp_path / "rows.npz", data=rng.integers(0, 256, (40, 1, 10, 10)).astype(np.float32),
                 label=rng.integers(0, 5, 40).astype(np.float32))
    path = str(tmp_path / f"n{phase}{stream}.yaml")
    with open(path, "w") as f:
        f.write(NET % (phase, stream, augment))
    from netspec.loader import load
    return Net(load(path), phase, path, seed=4)


def test_augmented_batches_are_reproducible_vary_and_carry_soft_labels(tmp_path):
    a, b = _net(tmp_path), _net(tmp_path)
    assert a.blobs["label"].shape == (8, 5)  # soft labels for the loss
    batches = []
    for _ in range(6):
        a.forward()
        b.forward()
        np.testing.assert_array_equal(a.blobs["data"].data, b.blobs["data"].data)
        np.testing.assert_array_equal(a.blobs["label"].data, b.blobs["label"].data)
        labels = a.blobs["label"].data
        np.testing.assert_allclose(labels.sum(1), 1, rtol=1e-5)
        assert (labels >= 0).all()
        batches.append(a.blobs["data"].data.copy())
        a.backward()
        assert np.isfinite(a.loss()) and np.isfinite(a.params[0].blob.diff).all()
    assert not np.array_equal(batches[0], batches[1])


def test_a_streamed_source_augments_the_same_way_whatever_the_threads_do(tmp_path):
    a, b = _net(tmp_path, stream=", stream: always"), _net(tmp_path, stream=", stream: always")
    for _ in range(8):
        a.forward()
        b.forward()
        np.testing.assert_array_equal(a.blobs["data"].data, b.blobs["data"].data)
        np.testing.assert_array_equal(a.blobs["label"].data, b.blobs["label"].data)
    a.layers[0]._stop_prefetch()
    b.layers[0]._stop_prefetch()


def test_test_phase_is_not_augmented(tmp_path):
    net = _net(tmp_path, "TEST")
    plain = _net(tmp_path, "TEST", augment="mix_classes: 0")
    net.forward()
    plain.forward()
    assert net.blobs["label"].shape == (8,)
    np.testing.assert_array_equal(net.blobs["data"].data, plain.blobs["data"].data)


def test_mixing_without_classes_and_augmenting_with_a_mean_file_are_clear_errors(tmp_path):
    with pytest.raises(SpecError, match="set mix_classes"):
        _net(tmp_path, augment="mixup_alpha: 0.2")
    with pytest.raises(SpecError, match="resized_crop_scale takes \\[min, max\\]"):
        _net(tmp_path, augment="resized_crop_scale: [0.5]")


def test_training_with_mixup_and_cutmix_lowers_the_loss(tmp_path):
    net = _net(tmp_path, augment="mixup_alpha: 0.2, cutmix_alpha: 0.5, mix_classes: 5")
    losses = []
    for it in range(60):
        net.clear_param_diffs()
        losses.append(net.forward_backward())
        for p in net.params:
            p.blob.data -= 0.5 * p.blob.diff
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def _share_stats(train, test):
    """The TEST data layer takes the TRAIN layer's normalize statistics (as a trainer's test net does)."""
    if train.layers[0].blobs and train.layers[0].blobs[0].data[0] == 0:
        train.forward()  # fits them
    for a, b in zip(test.layers[0].blobs, train.layers[0].blobs):
        a.data[...] = b.data


def _pad_net(tmp_path, phase, tp, shape=(40, 1, 6, 6)):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "p.npz", data=rng.integers(1, 256, shape).astype(np.float32),
             label=rng.integers(0, 5, shape[0]).astype(np.float32))
    path = str(tmp_path / f"p{phase}.yaml")
    with open(path, "w") as f:
        f.write("layer:\n  - {name: data, type: Data, top: [data, label], data_param: {source: p.npz, batch_size: 40}, "
                "transform_param: {%s}}\n" % tp)
    from netspec.loader import load
    return Net(load(path), phase, path, seed=5), np.load(tmp_path / "p.npz")["data"]


@pytest.mark.parametrize("tp, fill", [
    ("pad: 2, scale: 0.5, mean_value: [10]", -5.0),             # (0 - 10) * 0.5
    ("pad: 2, crop_size: 4, scale: 0.5, mean_value: [10]", -5.0),
    ("pad: 3, normalize: [{type: zero_center}, {type: z_score}]", None),
    ("pad: 2, mirror: true, brightness: 0.0000001, mean_value: [10]", -10.0),  # the augmentation path
])
def test_pad_crops_a_random_window_of_the_padded_image(tmp_path, tp, fill):
    """TRAIN: each example is a window of the (transformed) image padded with the transformed zero, at an offset
    anywhere in [-pad, H - size + pad]; the offsets vary. TEST: the plain image, no padding."""
    import re
    net, raw = _pad_net(tmp_path, "TRAIN", tp)
    pad = int(re.search(r"pad: (\d)", tp).group(1))
    crop = re.search(r"crop_size: (\d)", tp)
    size = int(crop.group(1)) if crop else 6
    test, _ = _pad_net(tmp_path, "TEST", tp)
    _share_stats(net, test)
    test.forward()
    plain = test.blobs["data"].data  # TEST: no padding (a centre crop where crop_size is given)
    assert plain.shape == (40, 1, size, size)
    full = plain if size == 6 else None
    if fill is None:  # normalize: the zero's transformed value from the stored statistics
        mean, std = net.layers[0].blobs[1].data, net.layers[0].blobs[2].data
        fill = float((0 - mean[0]) / std[0])
    if full is None:
        t2, _ = _pad_net(tmp_path, "TEST", tp.replace(f"crop_size: {size}, ", ""))
        _share_stats(net, t2)
        t2.forward()
        full = t2.blobs["data"].data
    offsets = set()
    for _ in range(3):
        net.forward()
        out = net.blobs["data"].data
        assert out.shape == (40, 1, size, size)
        for i in range(40):
            padded = np.pad(full[i, 0], pad, constant_values=fill)
            hits = [(y, x, m) for y in range(6 + 2 * pad - size + 1) for x in range(6 + 2 * pad - size + 1)
                    for m in (False, True)
                    if np.allclose((lambda w: w[:, ::-1] if m else w)(padded[y:y + size, x:x + size]), out[i, 0],
                                   rtol=1e-4, atol=1e-3)]
            assert hits, f"example {i} is no window of its padded image"
            assert "mirror" in tp or any(not m for _, _, m in hits)
            offsets.add(hits[0][:2])
    assert len(offsets) > (2 * pad + 1) ** 2 // 2  # the offsets spread over the padded range
    assert any(y in (0, 6 + 2 * pad - size) for y, _ in offsets)  # the extreme windows occur


def test_pad_needs_images(tmp_path):
    from netspec.errors import LayerError, UserError
    with pytest.raises((LayerError, UserError), match="pad needs images"):
        _pad_net(tmp_path, "TRAIN", "pad: 2", shape=(40, 6))
