"""One numerical gradient check (float64, central differences) over the whole layer registry.

Every registered type needs a case here; a type without one fails, so a new layer cannot
land without its gradient check. Non-differentiable types say why instead.
"""
import numpy as np
import pytest

from layers.base import REGISTRY
from tests.gradcheck import check_gradients


def away_from_zero(shape, seed=0, gap=0.05):
    """Values whose magnitude is at least `gap` (no ReLU kink within eps)."""
    x = np.random.default_rng(seed).normal(0, 1, shape)
    return np.where(x >= 0, x + gap, x - gap)


def distinct(shape, seed=0):
    """Values spaced 0.01 apart in random order (no ties within a max-pooling window)."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.01 - n * 0.005).reshape(shape)


def labels(n, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.float64)


NOT_DIFFERENTIABLE = {
    "Data": "a data source: no bottoms",
    "Input": "fed from Python: no bottoms",
    "Accuracy": "a metric; Caffe's backward is NOT_IMPLEMENTED and the net never calls it",
}

CASES = {
    "Convolution": [
        ({"convolution_param": {"num_output": 3, "kernel_size": 3, "pad": 1, "stride": 2}},
         [np.random.default_rng(1).normal(size=(2, 2, 5, 6))]),
        ({"convolution_param": {"num_output": 4, "kernel_h": 2, "kernel_w": 3, "group": 2, "dilation": 2}},
         [np.random.default_rng(2).normal(size=(2, 4, 6, 7))]),
        ({"convolution_param": {"num_output": 2, "kernel_size": 1, "bias_term": False}},
         [np.random.default_rng(3).normal(size=(1, 3, 3, 3))]),
    ],
    "Pooling": [
        ({"pooling_param": {"pool": "MAX", "kernel_size": 3, "stride": 2, "pad": 1}}, [distinct((2, 2, 6, 5))]),
        ({"pooling_param": {"pool": "AVE", "kernel_size": 3, "stride": 2, "pad": 1}}, [distinct((2, 2, 6, 5))]),
        ({"pooling_param": {"pool": "AVE", "kernel_size": 2, "stride": 2}}, [distinct((1, 2, 5, 5))]),
        ({"pooling_param": {"pool": "MAX", "global_pooling": True}}, [distinct((2, 3, 3, 4))]),
    ],
    "InnerProduct": [
        ({"inner_product_param": {"num_output": 4}}, [np.random.default_rng(4).normal(size=(3, 2, 2, 2))]),
        ({"inner_product_param": {"num_output": 3, "axis": 2, "bias_term": False}},
         [np.random.default_rng(5).normal(size=(2, 3, 4))]),
    ],
    "ReLU": [
        ({}, [away_from_zero((2, 3, 4))]),
        ({"relu_param": {"negative_slope": 0.1}}, [away_from_zero((3, 5))]),
    ],
    "Softmax": [
        ({}, [np.random.default_rng(6).normal(size=(2, 4, 3))]),
        ({"softmax_param": {"axis": 2}}, [np.random.default_rng(7).normal(size=(2, 3, 4))]),
    ],
    "SoftmaxWithLoss": [
        ({}, [np.random.default_rng(8).normal(size=(5, 4)), labels(5, 4)], [0]),
        ({"loss_param": {"ignore_label": 1, "normalization": "FULL"}},
         [np.random.default_rng(9).normal(size=(2, 3, 2, 2)), labels(8, 3, seed=1).reshape(2, 2, 2)], [0]),
    ],
    "Split": [({"top": ["a", "b", "c"]}, [np.random.default_rng(10).normal(size=(2, 3))])],
    "Concat": [
        ({}, [np.random.default_rng(11).normal(size=(2, 3, 2)), np.random.default_rng(12).normal(size=(2, 1, 2))]),
        ({"concat_param": {"axis": -1}}, [np.random.default_rng(13).normal(size=(2, 3)),
                                          np.random.default_rng(14).normal(size=(2, 2))]),
    ],
    "Eltwise": [
        ({"eltwise_param": {"coeff": [0.5, -2, 1]}}, [np.random.default_rng(15 + i).normal(size=(2, 3)) for i in range(3)]),
        ({"eltwise_param": {"operation": "PROD"}}, [np.random.default_rng(18 + i).normal(size=(2, 3)) for i in range(3)]),
        ({"eltwise_param": {"operation": "MAX"}}, [distinct((2, 3), seed=i) + 0.003 * i for i in range(3)]),
    ],
    "Flatten": [({}, [np.random.default_rng(21).normal(size=(2, 3, 2, 2))])],
    "Reshape": [({"reshape_param": {"shape": {"dim": [0, -1, 2]}}}, [np.random.default_rng(22).normal(size=(2, 3, 4))])],
    "BatchNorm": [
        ({}, [np.random.default_rng(23).normal(size=(4, 3, 2, 2))]),
        ({"batch_norm_param": {"use_global_stats": True}}, [np.random.default_rng(24).normal(size=(3, 2))]),
    ],
    "Dropout": [({"dropout_param": {"dropout_ratio": 0.3}}, [np.random.default_rng(25).normal(size=(4, 5))])],
}


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
def test_layer_gradient_matches_central_differences(type_name):
    if type_name in NOT_DIFFERENTIABLE:
        assert REGISTRY[type_name].differentiable is False, (
            f"{type_name} is listed as not differentiable but declares differentiable = True")
        return
    if type_name not in CASES:
        pytest.fail(f"layer type '{type_name}' has no gradient case in tests/test_gradients.py CASES")
    for case in CASES[type_name]:
        spec, bottoms = case[0], case[1]
        check = case[2] if len(case) > 2 else None
        check_gradients(type_name, spec, [np.array(b, np.float64) for b in bottoms], check)


def test_checker_catches_a_wrong_gradient(monkeypatch):
    """The checker itself must fail on a layer whose backward is off by a factor."""
    cls = REGISTRY["InnerProduct"]
    original = cls.backward

    def wrong(self, top, propagate_down, bottom):
        original(self, top, propagate_down, bottom)
        bottom[0].diff *= 1.01

    monkeypatch.setattr(cls, "backward", wrong)
    with pytest.raises(AssertionError, match="gradient element"):
        check_gradients("InnerProduct", {"inner_product_param": {"num_output": 2}},
                        [np.random.default_rng(0).normal(size=(2, 3))])


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_layer_overwrites_its_tops_and_bottom_diffs(type_name):
    """Garbage left in tops and bottom diffs (np.empty, a previous iteration) must not leak into
    results: forward writes every top element, backward overwrites (=) bottom diffs."""
    from layers.base import Blob
    from tests.gradcheck import make_layer
    for case in CASES[type_name]:
        spec, arrays = case[0], [np.asarray(a, np.float64) for a in case[1]]
        check = case[2] if len(case) > 2 else list(range(len(arrays)))
        results = []
        for garbage in (0.0, 1e3):
            layer, tops = make_layer(type_name, spec, [a.shape for a in arrays])
            bottom = []
            for i, a in enumerate(arrays):
                b = Blob(f"b{i}", a.shape, np.float64)
                b.data[...] = a
                b.diff[...] = garbage
                bottom.append(b)
            for t in tops:
                t.data[...] = garbage
            layer.forward(bottom, tops)
            for t in tops:
                t.diff[...] = 1.0
            layer.backward(tops, [i in check for i in range(len(bottom))], bottom)
            results.append([t.data.copy() for t in tops] + [bottom[i].diff.copy() for i in check])
        for clean, dirty in zip(*results):
            np.testing.assert_allclose(dirty, clean, rtol=1e-12, atol=1e-12)
