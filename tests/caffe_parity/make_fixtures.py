"""Record what real Caffe computes, for tests/test_caffe_parity.py. Runs inside a chroot with pycaffe
(tests/caffe_parity/README.md); needs only numpy and caffe, not yaffe.

    python3 make_fixtures.py OUT_DIR [NETS_DIR]

Writes OUT_DIR/layers.npz (and vectors.npz, the longer VECTOR_CASES): for every case below, a net of Input layers feeding one layer (force_backward),
with its bottoms, params, tops, the top diffs given and the bottom and param diffs Caffe computed. With
NETS_DIR (made by export_nets.py outside the chroot: each model's net with its data layers replaced by Input,
a batch of its real data, its solver), also OUT_DIR/nets.npz: per net, one forward/backward and 20 solver
iterations from the same initial weights, and the same for LeNet under each solver type.
"""
import os
import sys

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402

caffe.set_mode_cpu()

# name: (layer type, params (prototxt text inside the layer), [(bottom shape, kind)], options)
# kinds: normal, distinct (no ties), away (|x| >= 0.1), positive, unit (0..1), labels:C, ints:N, binary,
# ignore:C:L (labels with some equal to the ignore label L)
CASES = {
    "conv_pad_stride": ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 }",
                        [((2, 3, 7, 6), "normal")], {}),
    "conv_dilation_group": ("Convolution", "convolution_param { num_output: 4 kernel_h: 2 kernel_w: 3 group: 2 "
                            "dilation: 2 pad_h: 1 pad_w: 0 }", [((2, 4, 7, 8), "normal")], {}),
    "conv_1x1_nobias": ("Convolution", "convolution_param { num_output: 5 kernel_size: 1 bias_term: false }",
                        [((2, 3, 4, 4), "normal")], {}),
    "conv_rect_stride": ("Convolution", "convolution_param { num_output: 3 kernel_h: 3 kernel_w: 1 stride_h: 2 "
                         "stride_w: 1 pad_w: 1 }", [((1, 2, 6, 5), "normal")], {}),
    "conv_axis2": ("Convolution", "convolution_param { num_output: 2 kernel_size: 3 axis: 2 }",
                   [((2, 3, 2, 5), "normal")], {}),
    "conv_two_bottoms": ("Convolution", "convolution_param { num_output: 3 kernel_size: 3 pad: 1 }",
                         [((2, 2, 5, 5), "normal"), ((2, 2, 5, 5), "normal")], {"tops": 2}),
    "conv_3d": ("Convolution", "convolution_param { num_output: 3 kernel_size: 2 kernel_size: 3 kernel_size: 2 "
                "stride: 1 pad: 0 pad: 1 pad: 0 }", [((2, 2, 3, 4, 4), "normal")], {}),
    "deconv_stride_pad": ("Deconvolution", "convolution_param { num_output: 3 kernel_size: 3 stride: 2 pad: 1 }",
                          [((2, 2, 3, 4), "normal")], {}),
    "deconv_group": ("Deconvolution", "convolution_param { num_output: 4 kernel_size: 2 group: 2 bias_term: false }",
                     [((1, 4, 3, 3), "normal")], {}),
    "pool_max_ceil": ("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
                      [((2, 2, 6, 7), "distinct")], {}),
    "pool_max_pad": ("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }",
                     [((2, 2, 5, 5), "distinct")], {}),
    "pool_ave_pad": ("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
                     [((2, 2, 6, 5), "normal")], {}),
    "pool_ave_ceil": ("Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 }",
                      [((1, 2, 6, 6), "normal")], {}),
    "pool_global_ave": ("Pooling", "pooling_param { pool: AVE global_pooling: true }",
                        [((2, 3, 4, 3), "normal")], {}),
    "pool_global_max": ("Pooling", "pooling_param { pool: MAX global_pooling: true }",
                        [((2, 3, 3, 3), "distinct")], {}),
    "pool_max_mask": ("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }",
                      [((1, 2, 4, 5), "distinct")], {"tops": 2, "check_tops": [0, 1]}),
    "ip": ("InnerProduct", "inner_product_param { num_output: 4 }", [((3, 2, 2, 2), "normal")], {}),
    "ip_axis2": ("InnerProduct", "inner_product_param { num_output: 3 axis: 2 bias_term: false }",
                 [((2, 3, 4), "normal")], {}),
    "ip_transpose": ("InnerProduct", "inner_product_param { num_output: 3 transpose: true }",
                     [((2, 5), "normal")], {}),
    "relu": ("ReLU", "", [((2, 3, 4), "away")], {}),
    "relu_leaky": ("ReLU", "relu_param { negative_slope: 0.1 }", [((2, 3, 4), "away")], {}),
    "prelu": ("PReLU", "", [((2, 3, 2, 2), "away")], {}),
    "prelu_shared": ("PReLU", "prelu_param { channel_shared: true }", [((2, 3, 4), "away")], {}),
    "elu": ("ELU", "elu_param { alpha: 0.7 }", [((3, 4), "away")], {}),
    "elu_alpha0": ("ELU", "elu_param { alpha: 0 }", [((3, 4), "away")], {}),
    "sigmoid": ("Sigmoid", "", [((3, 4), "normal")], {}),
    "tanh": ("TanH", "", [((3, 4), "normal")], {}),
    "absval": ("AbsVal", "", [((3, 4), "away")], {}),
    "bnll": ("BNLL", "", [((3, 4), "normal")], {}),
    "power": ("Power", "power_param { power: 2.5 scale: 0.5 shift: 1.0 }", [((3, 4), "positive")], {}),
    "power_square": ("Power", "power_param { power: 2 scale: -1.5 }", [((5,), "normal")], {}),
    "exp": ("Exp", "", [((3, 4), "normal")], {}),
    "exp_base": ("Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }", [((6,), "normal")], {}),
    "log": ("Log", "", [((3, 4), "positive")], {}),
    "log_base": ("Log", "log_param { base: 10 scale: 2 shift: 0.5 }", [((6,), "positive")], {}),
    "threshold": ("Threshold", "threshold_param { threshold: 0.2 }", [((3, 4), "away")], {"backward": False}),
    "clip": ("Clip", "clip_param { min: -0.5 max: 0.6 }", [((3, 4), "away")], {}),
    "swish": ("Swish", "swish_param { beta: 1.5 }", [((3, 4), "normal")], {}),
    "dropout_test": ("Dropout", "dropout_param { dropout_ratio: 0.3 }", [((4, 5), "normal")], {"phase": "TEST"}),
    "batchnorm_train": ("BatchNorm", "", [((4, 3, 2, 2), "normal")], {"params_after": True}),
    "batchnorm_global": ("BatchNorm", "batch_norm_param { use_global_stats: true }", [((3, 2, 2), "normal")], {}),
    "batchnorm_test": ("BatchNorm", "batch_norm_param { eps: 0.001 }", [((3, 4), "normal")], {"phase": "TEST"}),
    "batchnorm_2d": ("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 }", [((5, 3), "normal")],
                     {"params_after": True}),
    "scale_bias": ("Scale", "scale_param { bias_term: true }", [((2, 3, 4), "normal")], {}),
    "scale_axis0_all": ("Scale", "scale_param { axis: 0 num_axes: -1 }", [((2, 3), "normal")], {}),
    "scale_scalar": ("Scale", "scale_param { num_axes: 0 }", [((2, 3, 2), "normal")], {}),
    "scale_two_bottoms": ("Scale", "scale_param { axis: 1 }", [((2, 3, 2), "normal"), ((3,), "normal")], {}),
    "scale_two_bottoms_2axes": ("Scale", "scale_param { axis: 1 }", [((2, 3, 2, 2), "normal"), ((3, 2), "normal")],
                                {}),
    "bias": ("Bias", "", [((2, 3, 2), "normal")], {}),
    "bias_two_bottoms": ("Bias", "bias_param { axis: 1 }", [((2, 3, 2), "normal"), ((3, 2), "normal")], {}),
    "mvn": ("MVN", "", [((2, 3, 2, 2), "normal")], {}),
    "mvn_across_nonvar": ("MVN", "mvn_param { across_channels: true normalize_variance: false }",
                          [((2, 3, 2), "normal")], {}),
    "lrn_across": ("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }", [((2, 5, 3, 3), "normal")], {}),
    "lrn_within": ("LRN", "lrn_param { local_size: 3 alpha: 0.3 norm_region: WITHIN_CHANNEL }",
                   [((1, 2, 4, 4), "normal")], {}),
    "softmax": ("Softmax", "", [((2, 4, 3), "normal")], {}),
    "softmax_axis2": ("Softmax", "softmax_param { axis: 2 }", [((2, 3, 4), "normal")], {}),
    "concat": ("Concat", "", [((2, 3, 2), "normal"), ((2, 1, 2), "normal")], {}),
    "concat_axis_last": ("Concat", "concat_param { axis: -1 }", [((2, 3), "normal"), ((2, 2), "normal")], {}),
    "slice": ("Slice", "slice_param { slice_point: 1 slice_point: 3 }", [((2, 5, 2), "normal")], {"tops": 3}),
    "slice_axis0": ("Slice", "slice_param { axis: 0 }", [((4, 3), "normal")], {"tops": 2}),
    "split": ("Split", "", [((2, 3), "normal")], {"tops": 2}),
    "flatten": ("Flatten", "", [((2, 3, 2, 2), "normal")], {}),
    "flatten_axes": ("Flatten", "flatten_param { axis: 1 end_axis: 2 }", [((2, 3, 2, 2), "normal")], {}),
    "reshape": ("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }", [((2, 3, 4), "normal")], {}),
    "reshape_axis": ("Reshape", "reshape_param { shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 }",
                     [((2, 4, 3), "normal")], {}),
    "crop": ("Crop", "crop_param { axis: 2 offset: 1 offset: 2 }", [((2, 2, 5, 6), "normal"), ((2, 2, 3, 3), "normal")],
             {"check": [0]}),
    "eltwise_sum_coeff": ("Eltwise", "eltwise_param { coeff: 0.5 coeff: -2 coeff: 1 }",
                          [((2, 3), "normal")] * 3, {}),
    "eltwise_prod": ("Eltwise", "eltwise_param { operation: PROD }", [((2, 3), "normal")] * 3, {}),
    "eltwise_max": ("Eltwise", "eltwise_param { operation: MAX }", [((2, 3), "distinct")] * 3, {}),
    # forward only: Caffe aborts when force_backward asks for the indices' gradient (yaffe's is checked numerically)
    "batch_reindex": ("BatchReindex", "", [((4, 3), "normal"), ((5,), "ints:4")], {"backward": False}),
    # forward only, for the same reason (the selector); the backward is checked in a net (test_caffe_layers.py)
    "filter": ("Filter", "", [((6, 3, 2), "normal"), ((6, 2), "normal"), ((6,), "binary")],
               {"tops": 2, "backward": False}),
    "hdf5_output": ("HDF5Output", 'hdf5_output_param { file_name: "out.h5" }',
                    [((3, 4), "normal"), ((3,), "labels:5")], {"tops": 0, "backward": False, "output_file": "out.h5"}),
    "lstm_unit": ("LSTMUnit", "", [((1, 3, 2), "normal"), ((1, 3, 8), "normal"), ((1, 3), "binary")],
                  {"tops": 2, "check": [0, 1]}),
    "lstm": ("LSTM", "recurrent_param { num_output: 3 }", [((4, 2, 3), "normal"), ((4, 2), "binary")],
             {"check": [0]}),
    "lstm_static_exposed": ("LSTM", "recurrent_param { num_output: 3 expose_hidden: true }",
                            [((3, 2, 2, 2), "normal"), ((3, 2), "binary"), ((2, 3), "normal"), ((1, 2, 3), "normal"),
                             ((1, 2, 3), "normal")], {"tops": 3, "check": [0, 2, 3, 4]}),
    "rnn": ("RNN", "recurrent_param { num_output: 3 }", [((4, 2, 3), "normal"), ((4, 2), "binary")],
            {"check": [0]}),
    "rnn_static_exposed": ("RNN", "recurrent_param { num_output: 2 expose_hidden: true }",
                           [((3, 2, 2), "normal"), ((3, 2), "binary"), ((2, 4), "normal"), ((1, 2, 2), "normal")],
                           {"tops": 2, "check": [0, 2, 3]}),
    "spp_max": ("SPP", "spp_param { pyramid_height: 3 pool: MAX }", [((2, 2, 13, 10), "distinct")], {}),
    "spp_ave": ("SPP", "spp_param { pyramid_height: 2 pool: AVE }", [((2, 3, 7, 5), "normal")], {}),
    "spp_one_level": ("SPP", "spp_param { pyramid_height: 1 pool: MAX }", [((1, 2, 5, 6), "distinct")], {}),
    "im2col": ("Im2col", "convolution_param { kernel_size: 3 pad: 1 stride: 2 }", [((2, 2, 5, 4), "normal")], {}),
    "im2col_dilation": ("Im2col", "convolution_param { kernel_h: 2 kernel_w: 3 dilation: 2 }",
                        [((1, 3, 6, 7), "normal")], {}),
    "tile": ("Tile", "tile_param { tiles: 3 axis: 1 }", [((2, 2, 3), "normal")], {}),
    "reduction_sum": ("Reduction", "reduction_param { operation: SUM axis: 1 coeff: 0.5 }",
                      [((3, 4, 2), "away")], {}),
    "reduction_asum": ("Reduction", "reduction_param { operation: ASUM axis: 1 }", [((3, 4, 2), "away")], {}),
    "reduction_sumsq": ("Reduction", "reduction_param { operation: SUMSQ axis: 2 }", [((3, 4, 2), "away")], {}),
    "reduction_mean_all": ("Reduction", "reduction_param { operation: MEAN axis: 0 coeff: -1.5 }",
                           [((3, 4), "away")], {}),
    "argmax": ("ArgMax", "", [((3, 2, 2, 2), "distinct")], {"backward": False}),
    "argmax_topk_val": ("ArgMax", "argmax_param { top_k: 2 out_max_val: true }", [((3, 5), "distinct")],
                        {"backward": False}),
    "argmax_axis": ("ArgMax", "argmax_param { axis: 1 top_k: 2 }", [((2, 4, 3), "distinct")], {"backward": False}),
    "embed": ("Embed", "loss_weight: 1 embed_param { num_output: 3 input_dim: 5 }", [((3, 2), "ints:5")],
              {"check": [], "force_backward": False}),  # a loss weight: else Caffe skips its backward
    "softmax_loss": ("SoftmaxWithLoss", "", [((5, 4), "normal"), ((5,), "labels:4")], {"check": [0]}),
    "softmax_loss_ignore_valid": ("SoftmaxWithLoss", "loss_param { ignore_label: 1 }",
                                  [((2, 3, 2, 2), "normal"), ((2, 2, 2), "ignore:3:1")], {"check": [0]}),
    "softmax_loss_ignore_full": ("SoftmaxWithLoss", "loss_param { ignore_label: 1 normalization: FULL }",
                                 [((2, 3, 2, 2), "normal"), ((2, 2, 2), "ignore:3:1")], {"check": [0]}),
    "softmax_loss_batch_size": ("SoftmaxWithLoss", "loss_param { normalization: BATCH_SIZE }",
                                [((2, 3, 2, 2), "normal"), ((2, 2, 2), "labels:3")], {"check": [0]}),
    "softmax_loss_none": ("SoftmaxWithLoss", "loss_param { normalization: NONE }",
                          [((3, 4), "normal"), ((3,), "labels:4")], {"check": [0]}),
    "softmax_loss_weight": ("SoftmaxWithLoss", "loss_weight: 2.5", [((3, 4), "normal"), ((3,), "labels:4")],
                            {"check": [0]}),
    "euclidean_loss": ("EuclideanLoss", "", [((4, 3), "normal"), ((4, 3), "normal")], {}),
    "sigmoid_ce_loss": ("SigmoidCrossEntropyLoss", "", [((4, 3), "normal"), ((4, 3), "binary")], {"check": [0]}),
    "sigmoid_ce_loss_ignore": ("SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 normalization: VALID }",
                               [((6,), "normal"), ((6,), "ignore:2:-1")], {"check": [0]}),
    "multinomial_loss": ("MultinomialLogisticLoss", "", [((4, 3), "unit"), ((4,), "labels:3")], {"check": [0]}),
    "hinge_l1": ("HingeLoss", "", [((5, 4), "away"), ((5,), "labels:4")], {"check": [0]}),
    "hinge_l2": ("HingeLoss", "hinge_loss_param { norm: L2 }", [((5, 4), "normal"), ((5,), "labels:4")],
                 {"check": [0]}),
    "infogain_loss": ("InfogainLoss", 'infogain_loss_param { source: "H.binaryproto" }',
                      [((4, 3), "normal"), ((4,), "labels:3")], {"check": [0], "H": (3, 3)}),
    "contrastive_loss": ("ContrastiveLoss", "contrastive_loss_param { margin: 2.0 }",
                         [((6, 3), "normal"), ((6, 3), "normal"), ((6,), "binary")], {"check": [0, 1]}),
    "contrastive_loss_legacy": ("ContrastiveLoss", "contrastive_loss_param { margin: 5.0 legacy_version: true }",
                                [((4, 2), "normal"), ((4, 2), "normal"), ((4,), "binary")], {"check": [0, 1]}),
    "python_euclidean": ("Python", "loss_weight: 1 python_param { module: 'pylayer_cases' layer: 'EuclideanLossLayer' }",
                         [((3, 4), "normal"), ((3, 4), "normal")], {"pymodule": "pylayer_cases.py"}),
    "python_scale_bias": ("Python", "python_param { module: 'pylayer_cases' layer: 'ScaleBias' }",
                          [((2, 3, 2, 2), "normal")], {"pymodule": "pylayer_cases.py"}),
    "python_cube": ("Python", "python_param { module: 'pylayer_cases' layer: 'Cube' param_str: '0.5' }",
                    [((2, 3), "normal")], {"pymodule": "pylayer_cases.py"}),
    "accuracy": ("Accuracy", "", [((6, 4), "distinct"), ((6,), "labels:4")], {"backward": False}),
    "accuracy_top2_ignore": ("Accuracy", "accuracy_param { top_k: 2 ignore_label: 0 }",
                             [((6, 4), "distinct"), ((6,), "labels:4")], {"backward": False, "tops": 2}),
    "conv_depthwise": ("Convolution", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 4 }",
                       [((2, 4, 6, 7), "normal")], {}),
    "conv_depthwise_stride_mult": ("Convolution", "convolution_param { num_output: 6 kernel_size: 3 pad: 2 stride: 2 "
                                   "dilation: 2 group: 3 }", [((2, 3, 9, 8), "normal")], {}),
}

# Longer bottoms for the vectorized kernels: their vector loops and remainders, the float32 exp/log/tanh/erfc
# approximations over a spread of values, the LSTM's register tiles (N >= 6, H a multiple of the tile width, on
# one thread) -> vectors.npz, kept small (hundreds of values a bottom).
VECTOR_CASES = {
    "sigmoid_wide": ("Sigmoid", "", [((2, 301), "normal")], {}),
    "tanh_wide": ("TanH", "", [((2, 301), "normal")], {}),
    "elu_wide": ("ELU", "elu_param { alpha: 0.7 }", [((2, 301), "away")], {}),
    "exp_wide": ("Exp", "exp_param { base: 2 scale: 0.7 shift: 0.2 }", [((2, 301), "normal")], {}),
    "bnll_wide": ("BNLL", "", [((2, 301), "normal")], {}),
    "log_wide": ("Log", "log_param { scale: 2 shift: 0.1 }", [((2, 301), "positive")], {}),
    "power_half_wide": ("Power", "power_param { power: 0.5 scale: 0.5 shift: 1.0 }", [((2, 301), "positive")], {}),
    "power_square_wide": ("Power", "power_param { power: 2 scale: -1.5 shift: 0.3 }", [((2, 301), "normal")], {}),
    "prelu_wide": ("PReLU", "", [((2, 3, 5, 37), "away")], {}),
    "softmax_planes": ("Softmax", "", [((2, 21, 5, 7), "normal")], {}),
    "softmax_loss_planes": ("SoftmaxWithLoss", "", [((2, 21, 5, 7), "normal"), ((2, 1, 5, 7), "labels:21")],
                            {"check": [0]}),
    "sigmoid_ce_wide": ("SigmoidCrossEntropyLoss", "", [((4, 196), "normal"), ((4, 196), "unit")], {"check": [0]}),
    "lrn_across_wide": ("LRN", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }", [((2, 12, 7, 5), "normal")],
                        {}),
    "mvn_wide": ("MVN", "", [((2, 3, 11, 13), "normal")], {}),
    "lstm_tiles": ("LSTM", "recurrent_param { num_output: 32 weight_filler { type: 'uniform' min: -0.3 max: 0.3 } }",
                   [((9, 7, 5), "normal"), ((9, 7), "binary")], {}),
    # depthwise with the images in the lanes (26 fill them at either vector width): a tile of channels and a
    # tail, 4x4 planes (MobileNet's); stride 2 on an odd rectangle
    "conv_depthwise_lanes": ("Convolution", "convolution_param { num_output: 10 kernel_size: 3 pad: 1 group: 10 "
                             "bias_filler { type: 'gaussian' } }", [((26, 10, 4, 4), "normal")], {}),
    "conv_depthwise_lanes_s2": ("Convolution", "convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 "
                                "group: 6 }", [((26, 6, 7, 6), "normal")], {}),
    # on two threads, two chunks of 9 sequences side by side (lstm_forward32_chunks); recorded alone (its draws
    # those of a first case: `python3 make_fixtures.py out lstm_chunks`), then merged into vectors.npz
    "lstm_chunks": ("LSTM", "recurrent_param { num_output: 32 weight_filler { type: 'uniform' min: -0.3 max: 0.3 } }",
                    [((6, 18, 5), "normal"), ((6, 18), "binary")], {}),
}



def values(shape, kind, rng):
    n = int(np.prod(shape))
    if kind == "normal":
        return rng.normal(size=shape)
    if kind == "distinct":
        return (rng.permutation(n) * 0.05 - n * 0.025).reshape(shape)
    if kind == "away":
        x = rng.normal(size=shape)
        return np.where(x >= 0, x + 0.1, x - 0.1)
    if kind == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "unit":
        return rng.uniform(0.1, 0.9, shape)
    if kind == "binary":
        return rng.integers(0, 2, shape).astype(float)
    if kind.startswith(("labels:", "ints:")):
        return rng.integers(0, int(kind.split(":")[1]), shape).astype(float)
    if kind.startswith("ignore:"):
        _, c, ignore = kind.split(":")
        x = rng.integers(0, int(c), shape).astype(float)
        x.flat[::3] = float(ignore)
        return x
    raise ValueError(kind)


def layer_net(kind, params, bottoms, opts):
    """The prototxt of Input layers feeding one layer (top diffs given by the caller: force_backward)."""
    lines = ["force_backward: true"] if opts.get("force_backward", True) else []
    for i, (shape, _) in enumerate(bottoms):
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(f'layer {{ name: "in{i}" type: "Input" top: "b{i}" input_param {{ shape {{ {dims} }} }} }}')
    bottom = " ".join(f'bottom: "b{i}"' for i in range(len(bottoms)))
    top = " ".join(f'top: "t{i}"' for i in range(opts.get("tops", 1)))
    lines.append(f'layer {{ name: "under_test" type: "{kind}" {bottom} {top} {params} }}')
    return "\n".join(lines) + "\n"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def layer_fixtures(out, cases=None, file="layers.npz"):
    rng = np.random.default_rng(1701)
    record = {}
    for name, (kind, params, bottoms, opts) in (CASES if cases is None else cases).items():
        rec = {"prototxt": np.array(layer_net(kind, params, bottoms, opts)), "phase": np.array(opts.get("phase", "TRAIN"))}
        text = layer_net(kind, params, bottoms, opts)
        if "pymodule" in opts:  # the Python layer's module, beside the script (and in the fixture for yaffe)
            rec["pymodule"] = np.array(open(opts["pymodule"]).read())
        if "H" in opts:  # InfogainLoss's matrix, as the BlobProto file Caffe reads (bottom 2 cannot be forced)
            rec["H"] = rng.uniform(0.1, 0.9, opts["H"]).astype(np.float32)
            with open("H.binaryproto", "wb") as f:
                f.write(caffe.io.array_to_blobproto(rec["H"].reshape((1, 1) + opts["H"])).SerializeToString())
        write("case.prototxt", text)
        net = caffe.Net("case.prototxt", caffe.TEST if opts.get("phase") == "TEST" else caffe.TRAIN)
        for i, (shape, k) in enumerate(bottoms):
            net.blobs[f"b{i}"].data[...] = rec[f"b{i}"] = values(shape, k, rng).astype(np.float32)
        for i, p in enumerate(net.params.get("under_test", [])):
            if kind == "BatchNorm":
                v = [rng.normal(size=p.data.shape), rng.uniform(0.5, 2, p.data.shape), np.full(p.data.shape, 1.5)][i]
            elif kind == "PReLU":
                v = rng.uniform(0.1, 0.5, p.data.shape)
            else:
                v = rng.normal(size=p.data.shape) * 0.7
            p.data[...] = rec[f"p{i}"] = v.astype(np.float32)
        net.forward()
        tops = opts.get("check_tops", range(opts.get("tops", 1)))
        for i in range(opts.get("tops", 1)):
            rec[f"t{i}"] = net.blobs[f"t{i}"].data.copy()
        for i, p in enumerate(net.params.get("under_test", [])):
            if opts.get("params_after"):
                rec[f"pa{i}"] = p.data.copy()  # running statistics after one forward
        if opts.get("backward", True):
            for i in tops:
                t = net.blobs[f"t{i}"]
                d = np.ones(t.diff.shape) * (2.5 if "loss_weight: 2.5" in params else 1.0) if "Loss" in kind \
                    else rng.normal(size=t.diff.shape)
                t.diff[...] = rec[f"dt{i}"] = d.astype(np.float32)
            for p in net.params.get("under_test", []):
                p.diff[...] = 0
            net.backward()  # from the top diffs set above (pycaffe's keyword form refuses 0-d tops)
            for i in opts.get("check", range(len(bottoms))):
                rec[f"db{i}"] = net.blobs[f"b{i}"].diff.copy()
            for i, p in enumerate(net.params.get("under_test", [])):
                rec[f"dp{i}"] = p.diff.copy()
        print(f"{name}: {kind} tops {[list(net.blobs[f't{i}'].data.shape) for i in range(opts.get('tops', 1))]}")
        if "output_file" in opts:  # the file the layer wrote, closed by the net's destructor
            del net
            rec["output_file"] = np.frombuffer(open(opts["output_file"], "rb").read(), np.uint8)
        for key, value in rec.items():
            record[f"{name}/{key}"] = value
    np.savez_compressed(os.path.join(out, file), **record)


def net_fixtures(out, nets_dir):
    """For each exported net: its first forward/backward (outputs, samples of every param diff, sums of every
    blob) and 20 solver iterations from the same initial weights on the same batch (outputs per iteration,
    samples of the final weights). Samples: nets.sample (all of a small blob, else spaced entries and sums)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from nets import sample
    record = {}
    for name in sorted(os.listdir(nets_dir)):
        d = os.path.join(nets_dir, name)
        if not os.path.isdir(d):
            continue
        inputs, init = np.load(os.path.join(d, "inputs.npz")), np.load(os.path.join(d, "init.npz"))
        os.chdir(d)  # Caffe reads the solver's net path against the working directory
        solver = caffe.get_solver("solver.prototxt")
        net = solver.net

        def start():
            for key in init.files:
                layer, i = key.rsplit("/", 1)
                net.params[layer][int(i)].data[...] = init[key].reshape(net.params[layer][int(i)].data.shape)
            for key in inputs.files:
                net.blobs[key].data[...] = inputs[key]
        start()
        record[f"{name}/init_sum"] = np.array([float(np.sum(init[k], dtype=np.float64)) for k in sorted(init.files)])
        for key in inputs.files:  # the batch's shapes: the test rebuilds the net without the data files
            record[f"{name}/input_shape/{key}"] = np.array(inputs[key].shape)
        outputs = net.forward()
        net.backward()
        for o in net.outputs:
            record[f"{name}/out0/{o}"] = np.array(float(outputs[o].sum()))
        for layer, blobs in net.params.items():
            for i, p in enumerate(blobs):
                record[f"{name}/diff/{layer}/{i}"] = sample(p.diff)
        for blob, b in net.blobs.items():
            record[f"{name}/blob/{blob}"] = sample(b.data, 0)
        start()
        rows = []
        for _ in range(20):
            solver.step(1)
            rows.append([float(net.blobs[o].data.sum()) for o in net.outputs])
        for j, o in enumerate(net.outputs):
            record[f"{name}/steps/{o}"] = np.array([row[j] for row in rows])
        for layer, blobs in net.params.items():
            for i, p in enumerate(blobs):
                record[f"{name}/final/{layer}/{i}"] = sample(p.data)
        print(f"{name}: outputs {dict((o, round(float(outputs[o].sum()), 6)) for o in net.outputs)}, "
              f"after 20 iterations {rows[-1]}")
    np.savez_compressed(os.path.join(out, "nets.npz"), **record)


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    if len(sys.argv) > 2 and sys.argv[2] in VECTOR_CASES:  # one case alone, into out/<name>.npz
        layer_fixtures(out, {sys.argv[2]: VECTOR_CASES[sys.argv[2]]}, sys.argv[2] + ".npz")
        sys.exit()
    layer_fixtures(out)
    layer_fixtures(out, VECTOR_CASES, "vectors.npz")
    if len(sys.argv) > 2:
        net_fixtures(out, sys.argv[2])
