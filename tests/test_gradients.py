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
    "DummyData": "a data source: no bottoms",
    "HDF5Data": "a data source: no bottoms",
    "MemoryData": "a data source: no bottoms",
    "ImageData": "a data source: no bottoms",
    "WindowData": "a data source: no bottoms",
    "HDF5Output": "a sink: writes its bottoms to a file; no tops, nothing flows back (Caffe's backward is empty)",
    "Accuracy": "a metric; Caffe's backward is NOT_IMPLEMENTED and the net never calls it",
    "Threshold": "a step function: zero gradient almost everywhere; Caffe's backward is NOT_IMPLEMENTED",
}


def positive(shape, seed=0, low=0.5, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape)

CASES = {
    "Convolution": [
        ({"convolution_param": {"num_output": 3, "kernel_size": 3, "pad": 1, "stride": 2}},
         [np.random.default_rng(1).normal(size=(2, 2, 5, 6))]),
        ({"convolution_param": {"num_output": 4, "kernel_h": 2, "kernel_w": 3, "group": 2, "dilation": 2}},
         [np.random.default_rng(2).normal(size=(2, 4, 6, 7))]),
        ({"convolution_param": {"num_output": 2, "kernel_size": 1, "bias_term": False}},
         [np.random.default_rng(3).normal(size=(1, 3, 3, 3))]),
        ({"convolution_param": {"num_output": 9, "kernel_h": 3, "kernel_w": 2, "pad": 1, "dilation": [1, 2]}},
         [np.random.default_rng(5).normal(size=(2, 2, 5, 6))]),  # stride 1: the direct path (layers/simd.py)
        ({"top": ["a", "b"], "convolution_param": {"num_output": 2, "kernel_size": 3, "pad": 1}},
         [np.random.default_rng(76).normal(size=(2, 2, 4, 4)), np.random.default_rng(77).normal(size=(2, 2, 4, 4))]),
        ({"convolution_param": {"num_output": 2, "kernel_size": [2, 3, 2], "pad": [0, 1, 1], "stride": [1, 2, 1],
                                "group": 2}},
         [np.random.default_rng(78).normal(size=(2, 4, 3, 4, 3))]),  # 3-D (layers/conv_nd.py)
        ({"convolution_param": {"num_output": 3, "kernel_size": 3, "axis": 2, "dilation": 2}},
         [np.random.default_rng(79).normal(size=(2, 3, 2, 7))]),  # 1-D over the last axis, 2 x 3 images
        ({"convolution_param": {"num_output": 6, "kernel_h": 3, "kernel_w": 2, "group": 3, "pad": [1, 2],
                                "stride": 2, "dilation": [1, 2]}},
         [np.random.default_rng(80).normal(size=(2, 3, 6, 5))]),  # depthwise, 2 filters a channel (layers/depthwise.py)
    ],
    "Pooling": [
        ({"pooling_param": {"pool": "MAX", "kernel_size": 3, "stride": 2, "pad": 1}}, [distinct((2, 2, 6, 5))]),
        ({"pooling_param": {"pool": "AVE", "kernel_size": 3, "stride": 2, "pad": 1}}, [distinct((2, 2, 6, 5))]),
        ({"pooling_param": {"pool": "AVE", "kernel_size": 2, "stride": 2}}, [distinct((1, 2, 5, 5))]),
        ({"pooling_param": {"pool": "MAX", "global_pooling": True}}, [distinct((2, 3, 3, 4))]),
        ({"pooling_param": {"pool": "AVE", "global_pooling": True}}, [distinct((3, 3, 3, 4), seed=87)]),  # 9 planes
        ({"pooling_param": {"pool": "STOCHASTIC", "kernel_size": 3, "stride": 2}}, [positive((2, 2, 6, 5), seed=88)]),
        ({"phase": "TEST", "pooling_param": {"pool": "STOCHASTIC", "kernel_size": 2, "stride": 2}},
         [positive((2, 2, 5, 5), seed=89)]),
    ],
    "SPP": [
        ({"spp_param": {"pyramid_height": 3, "pool": "MAX"}}, [distinct((2, 2, 7, 9), seed=90)]),
        ({"spp_param": {"pyramid_height": 2, "pool": "AVE"}}, [distinct((1, 3, 5, 4), seed=91)]),
        ({"spp_param": {"pyramid_height": 1}}, [distinct((2, 2, 3, 3), seed=92)]),
        ({"spp_param": {"pyramid_height": 2, "pool": "STOCHASTIC"}}, [positive((2, 2, 6, 6), seed=93)]),
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
        ({}, [np.random.default_rng(96).normal(size=(4, 3)), positive((4, 3), seed=97) / 3], [0]),  # soft labels
        ({"loss_param": {"label_smoothing": 0.2, "class_weight": [1, 2, 0.5]}},
         [np.random.default_rng(115).normal(size=(5, 3)), labels(5, 3, seed=2)], [0]),
        ({"loss_param": {"focal_gamma": 2, "class_weight": [1, 0.5, 2]}},
         [np.random.default_rng(125).normal(size=(5, 3)), labels(5, 3, seed=4)], [0]),
        ({"loss_param": {"label_smoothing": 0.1, "ignore_label": 1}},
         [np.random.default_rng(116).normal(size=(2, 3, 2)), labels(4, 3, seed=3).reshape(2, 2)], [0]),
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
    "Sigmoid": [({}, [np.random.default_rng(26).normal(size=(3, 4))])],
    "TanH": [({}, [np.random.default_rng(27).normal(size=(3, 4))])],
    "AbsVal": [({}, [away_from_zero((3, 4), seed=28)])],
    "BNLL": [({}, [np.random.default_rng(29).normal(0, 3, size=(3, 4))])],
    "ELU": [({"elu_param": {"alpha": 0.7}}, [away_from_zero((3, 4), seed=30)])],
    "Power": [({"power_param": {"power": 2.5, "scale": 0.5, "shift": 1.0}}, [positive((3, 4), seed=31)]),
              ({"power_param": {"power": 2, "scale": -1.5}}, [np.random.default_rng(32).normal(size=(5,))])],
    "Exp": [({}, [np.random.default_rng(33).normal(size=(3, 4))]),
            ({"exp_param": {"base": 2, "scale": 0.5, "shift": 0.1}}, [np.random.default_rng(34).normal(size=(6,))])],
    "Log": [({}, [positive((3, 4), seed=35)]),
            ({"log_param": {"base": 10, "scale": 2, "shift": 0.5}}, [positive((6,), seed=36)])],
    "Clip": [({"clip_param": {"min": -0.5, "max": 0.6}}, [np.array([-2.0, -0.7, -0.3, 0.0, 0.2, 0.55, 0.9, 3.0])])],
    "Swish": [({}, [np.random.default_rng(37).normal(size=(3, 4))]),
              ({"swish_param": {"beta": 2.5}}, [np.random.default_rng(38).normal(size=(6,))])],
    "PReLU": [({}, [away_from_zero((2, 3, 2, 2), seed=39)]),
              ({"prelu_param": {"channel_shared": True}}, [away_from_zero((2, 3, 4), seed=40)])],
    "Maxout": [({"maxout_param": {"num_pieces": 3}}, [distinct((2, 6, 2, 2), seed=41)])],
    "Scale": [
        ({"scale_param": {"bias_term": True, "filler": {"type": "gaussian"}}}, [np.random.default_rng(42).normal(size=(2, 3, 4))]),
        ({"scale_param": {"axis": 0, "num_axes": -1}}, [np.random.default_rng(43).normal(size=(2, 3))]),
        ({}, [np.random.default_rng(44).normal(size=(2, 3, 2)), np.random.default_rng(45).normal(size=(3,))]),
    ],
    "Bias": [({"bias_param": {"filler": {"type": "gaussian"}}}, [np.random.default_rng(46).normal(size=(2, 3, 2))]),
             ({"bias_param": {"axis": 1}}, [np.random.default_rng(47).normal(size=(2, 3, 2)),
                                            np.random.default_rng(48).normal(size=(3, 2))])],
    "MVN": [({}, [np.random.default_rng(49).normal(size=(2, 3, 2, 2))]),
            ({"mvn_param": {"across_channels": True, "normalize_variance": False}},
             [np.random.default_rng(50).normal(size=(2, 3, 2))])],
    "LRN": [({"lrn_param": {"local_size": 3, "alpha": 0.5, "beta": 0.75, "k": 2}},
             [np.random.default_rng(51).normal(size=(2, 5, 3, 3))]),
            ({"lrn_param": {"local_size": 3, "alpha": 0.3, "norm_region": "WITHIN_CHANNEL"}},
             [np.random.default_rng(52).normal(size=(1, 2, 4, 4))])],
    "Deconvolution": [
        ({"convolution_param": {"num_output": 3, "kernel_size": 3, "stride": 2, "pad": 1}},
         [np.random.default_rng(53).normal(size=(2, 2, 3, 3))]),
        ({"convolution_param": {"num_output": 4, "kernel_size": 2, "group": 2, "bias_term": False}},
         [np.random.default_rng(54).normal(size=(1, 4, 2, 3))]),
        ({"convolution_param": {"num_output": 2, "kernel_size": 2, "stride": [2, 1, 2], "pad": [0, 1, 0]}},
         [np.random.default_rng(80).normal(size=(2, 2, 2, 3, 2))]),  # 3-D
        ({"top": ["a", "b"], "convolution_param": {"num_output": 2, "kernel_size": 3, "stride": 2}},
         [np.random.default_rng(81).normal(size=(1, 2, 3)), np.random.default_rng(82).normal(size=(1, 2, 3))]),
    ],
    "Crop": [({"crop_param": {"axis": 2, "offset": [1, 2]}},
              [np.random.default_rng(55).normal(size=(2, 2, 5, 6)), np.zeros((2, 2, 3, 3))], [0])],
    "Slice": [({"top": ["a", "b", "c"], "slice_param": {"slice_point": [1, 3]}},
               [np.random.default_rng(56).normal(size=(2, 5, 2))]),
              ({"top": ["a", "b"], "slice_param": {"axis": 0}}, [np.random.default_rng(57).normal(size=(4, 3))])],
    "Silence": [({"top": []}, [np.random.default_rng(58).normal(size=(2, 3))])],
    "LSTMUnit": [({"top": ["c", "h"]}, [np.random.default_rng(98).normal(size=(1, 3, 2)),
                                         np.random.default_rng(99).normal(size=(1, 3, 8)),
                                         np.array([[1.0, 0, 1]])], [0, 1])],
    "LSTM": [
        ({"recurrent_param": {"num_output": 2}},
         [np.random.default_rng(100).normal(size=(4, 2, 3)), np.array([[0, 0], [1, 1], [1, 0], [1, 1.0]])], [0]),
        ({"top": ["h", "h_T", "c_T"], "recurrent_param": {"num_output": 2, "expose_hidden": True}},
         [np.random.default_rng(101).normal(size=(3, 2, 2, 2)), np.array([[1, 0], [1, 1], [0, 1.0]]),
          np.random.default_rng(102).normal(size=(2, 3)), np.random.default_rng(103).normal(size=(1, 2, 2)),
          np.random.default_rng(104).normal(size=(1, 2, 2))], [0, 2], {"detached_tops": (1, 2)}),  # x_static;
        # the carried state (h_0, c_0 in, h_T, c_T out) is a constant across batches, as in Caffe
    ],
    "RNN": [
        ({"recurrent_param": {"num_output": 3}},
         [np.random.default_rng(105).normal(size=(4, 2, 3)), np.array([[0, 0], [1, 1], [0, 1], [1, 1.0]])], [0]),
        ({"top": ["o", "h_T"], "recurrent_param": {"num_output": 2, "expose_hidden": True}},
         [np.random.default_rng(106).normal(size=(3, 2, 2)), np.array([[1, 1], [1, 0], [1, 1.0]]),
          np.random.default_rng(107).normal(size=(2, 4)), np.random.default_rng(108).normal(size=(1, 2, 2))],
         [0, 2], {"detached_tops": (1,)}),
    ],
    "Permute": [({"permute_param": {"order": [1, 0, 2]}}, [np.random.default_rng(109).normal(size=(2, 3, 4))]),
                ({"permute_param": {"order": [2]}}, [np.random.default_rng(110).normal(size=(2, 3, 4))])],
    "LayerNorm": [({}, [np.random.default_rng(117).normal(size=(3, 4, 2))]),
                  ({"layer_norm_param": {"axis": 2, "affine": False}}, [np.random.default_rng(118).normal(size=(2, 3, 5))])],
    "GroupNorm": [({"group_norm_param": {"num_groups": 2}}, [np.random.default_rng(119).normal(size=(2, 4, 3, 2))])],
    "SmoothL1Loss": [({}, [away_from_zero((3, 4), seed=120) * 2, np.zeros((3, 4))], [0, 1]),
                     ({"smooth_l1_loss_param": {"sigma": 3}},
                      [away_from_zero((2, 5), seed=121), np.random.default_rng(122).normal(size=(2, 5)) * 0.1,
                       positive((2, 5), seed=123), positive((2, 5), seed=124)], [0, 1])],
    "DropPath": [({"drop_path_param": {"drop_prob": 0.4}}, [np.random.default_rng(126).normal(size=(6, 2, 3))])],
    "GELU": [({}, [np.random.default_rng(111).normal(size=(3, 4))])],
    "Mish": [({}, [np.random.default_rng(112).normal(size=(3, 4)) * 2])],
    "HardSwish": [({}, [away_from_zero((3, 4), seed=113) * 2 + 0.37])],  # no kink at -3 or 3 within eps
    "SiLU": [({}, [np.random.default_rng(114).normal(size=(3, 4))])],
    "Filter": [({"top": ["a", "b"]}, [np.random.default_rng(94).normal(size=(5, 3, 2)),
                                      np.random.default_rng(95).normal(size=(5, 2)),
                                      np.array([1.0, 0, 0, 2, 1])], [0, 1])],
    "BatchReindex": [({}, [np.random.default_rng(83).normal(size=(4, 3)), np.array([2, 0, 2, 3, 1.0])], [0])],
    "Im2col": [({"convolution_param": {"kernel_size": 3, "pad": 1, "stride": 2}},
                [np.random.default_rng(84).normal(size=(2, 2, 5, 4))]),
               ({"convolution_param": {"kernel_h": 2, "kernel_w": 3, "dilation": 2}},
                [np.random.default_rng(85).normal(size=(1, 3, 6, 7))])],
    "Python": [({"python_param": {"module": "tests.pylayer_cases", "layer": "Cube", "param_str": "0.5"}},
                [np.random.default_rng(86).normal(size=(2, 3))]),
               ({"python_param": {"module": "tests.pylayer_cases", "layer": "ScaleBias"}},
                [np.random.default_rng(87).normal(size=(2, 3, 2, 2))])],  # learnable blobs (add_blob)
    "Tile": [({"tile_param": {"tiles": 3, "axis": 1}}, [np.random.default_rng(59).normal(size=(2, 2, 3))])],
    "Reduction": [({"reduction_param": {"operation": op, "axis": 1, "coeff": 0.5}}, [away_from_zero((3, 4, 2), seed=60)])
                  for op in ("SUM", "ASUM", "SUMSQ", "MEAN")],
    "Embed": [({"embed_param": {"num_output": 3, "input_dim": 5, "weight_filler": {"type": "gaussian"}}},
               [np.array([[0, 4], [2, 2], [1, 0]], np.float64)], [])],
    "Parameter": [({"parameter_param": {"shape": {"dim": [2, 3]}}}, [])],
    "InnerProduct_transposed": None,
    "EuclideanLoss": [({}, [np.random.default_rng(61).normal(size=(4, 3)), np.random.default_rng(62).normal(size=(4, 3))])],
    "SigmoidCrossEntropyLoss": [
        ({}, [np.random.default_rng(63).normal(size=(4, 3)), np.random.default_rng(64).uniform(size=(4, 3))], [0]),
        ({"loss_param": {"ignore_label": -1, "normalization": "VALID"}},
         [np.random.default_rng(65).normal(size=(6,)), np.array([1, 0, -1, 1, -1, 0.0])], [0]),
    ],
    "MultinomialLogisticLoss": [({}, [positive((4, 3), seed=66, low=0.1, high=0.9), labels(4, 3)], [0])],
    "HingeLoss": [({}, [away_from_zero((5, 4), seed=67) * 0.4 + 0.03, labels(5, 4, seed=2)], [0]),
                  ({"hinge_loss_param": {"norm": "L2"}}, [np.random.default_rng(68).normal(size=(5, 4)), labels(5, 4)], [0])],
    "InfogainLoss": [({}, [np.random.default_rng(69).normal(size=(4, 3)), labels(4, 3),
                           np.random.default_rng(70).uniform(size=(3, 3))], [0])],
    "ContrastiveLoss": [
        ({"contrastive_loss_param": {"margin": 2.0}}, [np.random.default_rng(71).normal(size=(6, 3)),
                                                       np.random.default_rng(72).normal(size=(6, 3)),
                                                       np.array([1, 0, 1, 0, 0, 1.0])], [0, 1],
         {"rtol": 1e-3}),  # NOTE: Caffe's gradient divides by d + 1e-4, not d: approximate by design
        ({"contrastive_loss_param": {"margin": 5.0, "legacy_version": True}},
         [np.random.default_rng(73).normal(size=(4, 2)), np.random.default_rng(74).normal(size=(4, 2)),
          np.array([0, 0, 1, 0.0])], [0, 1]),
    ],
}
del CASES["InnerProduct_transposed"]
CASES["InnerProduct"].append(({"inner_product_param": {"num_output": 3, "transpose": True}},
                              [np.random.default_rng(75).normal(size=(2, 4))]))
CASES["Pooling"].append(({"top": ["p", "mask"], "pooling_param": {"pool": "MAX", "kernel_size": 2, "stride": 2}},
                         [distinct((1, 2, 4, 4), seed=76)]))
NOT_DIFFERENTIABLE["ArgMax"] = "indices of the largest values: piecewise constant; Caffe has no backward"


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
        tolerances = case[3] if len(case) > 3 else {}
        check_gradients(type_name, spec, [np.array(b, np.float64) for b in bottoms], check, **tolerances)


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


IN_PLACE = sorted(t for t, cls in REGISTRY.items() if cls.in_place_ok and cls.differentiable)


def test_in_place_capable_types_are_the_documented_ones():
    assert set(IN_PLACE) == {"ReLU", "BatchNorm", "Scale", "Bias", "Dropout", "PReLU", "Sigmoid", "TanH", "ELU",
                             "Exp", "Swish", "SiLU", "Softmax"}
    # in place through the net, chains of them: tests/test_in_place.py
