"""Nets of Caffe's examples and model zoo, written from their published structure, run through the prototxt
reader and the shape inference: every published output shape comes out, with no error."""
import os

import pytest

from netspec.net import Net
from netspec.prototxt import loads
from netspec.schema import check, net_schema

ZOO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "caffe_zoo")


def conv(name, bottom, n, k, s=1, p=0, bias=True, group=1):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param {{ '
            f'num_output: {n} kernel_size: {k} stride: {s} pad: {p} group: {group} bias_term: {str(bias).lower()} }} }}\n')


def relu(blob):
    return f'layer {{ name: "{blob}_relu" type: "ReLU" bottom: "{blob}" top: "{blob}" }}\n'


def pool(name, bottom, k, s, p=0, kind="MAX"):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" pooling_param {{ pool: {kind} '
            f'kernel_size: {k} stride: {s} pad: {p} }} }}\n')


def googlenet_stem_and_inception3():
    """GoogLeNet (bvlc_googlenet deploy) up to pool3/3x3_s2, with the inception_3a and 3b blocks."""
    t = 'name: "GoogleNet" input: "data" input_dim: 10 input_dim: 3 input_dim: 224 input_dim: 224\n'
    t += conv("conv1/7x7_s2", "data", 64, 7, 2, 3) + relu("conv1/7x7_s2")
    t += pool("pool1/3x3_s2", "conv1/7x7_s2", 3, 2)
    t += 'layer { name: "pool1/norm1" type: "LRN" bottom: "pool1/3x3_s2" top: "pool1/norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }\n'
    t += conv("conv2/3x3_reduce", "pool1/norm1", 64, 1) + relu("conv2/3x3_reduce")
    t += conv("conv2/3x3", "conv2/3x3_reduce", 192, 3, 1, 1) + relu("conv2/3x3")
    t += 'layer { name: "conv2/norm2" type: "LRN" bottom: "conv2/3x3" top: "conv2/norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }\n'
    t += pool("pool2/3x3_s2", "conv2/norm2", 3, 2)

    def inception(name, bottom, c1, c3r, c3, c5r, c5, pp):
        b = f"inception_{name}"
        s = conv(f"{b}/1x1", bottom, c1, 1) + relu(f"{b}/1x1")
        s += conv(f"{b}/3x3_reduce", bottom, c3r, 1) + relu(f"{b}/3x3_reduce")
        s += conv(f"{b}/3x3", f"{b}/3x3_reduce", c3, 3, 1, 1) + relu(f"{b}/3x3")
        s += conv(f"{b}/5x5_reduce", bottom, c5r, 1) + relu(f"{b}/5x5_reduce")
        s += conv(f"{b}/5x5", f"{b}/5x5_reduce", c5, 5, 1, 2) + relu(f"{b}/5x5")
        s += pool(f"{b}/pool", bottom, 3, 1, 1)
        s += conv(f"{b}/pool_proj", f"{b}/pool", pp, 1) + relu(f"{b}/pool_proj")
        s += (f'layer {{ name: "{b}/output" type: "Concat" bottom: "{b}/1x1" bottom: "{b}/3x3" bottom: "{b}/5x5" '
              f'bottom: "{b}/pool_proj" top: "{b}/output" }}\n')
        return s

    t += inception("3a", "pool2/3x3_s2", 64, 96, 128, 16, 32, 32)
    t += inception("3b", "inception_3a/output", 128, 128, 192, 32, 96, 64)
    t += pool("pool3/3x3_s2", "inception_3b/output", 3, 2)
    return t


def resnet50_deploy():
    """Kaiming He's ResNet-50-deploy.prototxt: bottleneck blocks, BatchNorm (use_global_stats) + Scale."""
    def bn(blob, act=True):
        s = (f'layer {{ name: "bn_{blob}" type: "BatchNorm" bottom: "{blob}" top: "{blob}" '
             f'batch_norm_param {{ use_global_stats: true }} }}\n'
             f'layer {{ name: "scale_{blob}" type: "Scale" bottom: "{blob}" top: "{blob}" scale_param {{ bias_term: true }} }}\n')
        return s + (relu(blob) if act else "")

    t = 'name: "ResNet-50" input: "data" input_dim: 1 input_dim: 3 input_dim: 224 input_dim: 224\n'
    t += conv("conv1", "data", 64, 7, 2, 3) + bn("conv1") + pool("pool1", "conv1", 3, 2)
    bottom = "pool1"
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=2):
        for i in range(blocks):
            name = f"res{stage}{'abcdef'[i]}"
            stride = 2 if i == 0 and stage > 2 else 1
            if i == 0:
                t += conv(f"{name}_branch1", bottom, width * 4, 1, stride, bias=False) + bn(f"{name}_branch1", False)
                short = f"{name}_branch1"
            else:
                short = bottom
            t += conv(f"{name}_branch2a", bottom, width, 1, stride, bias=False) + bn(f"{name}_branch2a")
            t += conv(f"{name}_branch2b", f"{name}_branch2a", width, 3, 1, 1, bias=False) + bn(f"{name}_branch2b")
            t += conv(f"{name}_branch2c", f"{name}_branch2b", width * 4, 1, bias=False) + bn(f"{name}_branch2c", False)
            t += f'layer {{ name: "{name}" type: "Eltwise" bottom: "{short}" bottom: "{name}_branch2c" top: "{name}" }}\n'
            t += relu(name)
            bottom = name
    t += pool("pool5", bottom, 7, 1, kind="AVE")
    t += 'layer { name: "fc1000" type: "InnerProduct" bottom: "pool5" top: "fc1000" inner_product_param { num_output: 1000 } }\n'
    t += 'layer { name: "prob" type: "Softmax" bottom: "fc1000" top: "prob" }\n'
    return t


def shapes_of(text, name, phase="TEST"):
    doc, notes = loads(text, name)
    assert check(doc, net_schema(), name) == []
    assert not [n for n in notes if n.severity == "error"]
    net = Net(doc, phase, os.path.join(ZOO, name), seed=0, allocate=False)
    return net.shapes


def read(name):
    with open(os.path.join(ZOO, name)) as f:
        return f.read()


@pytest.mark.parametrize("name, expected", [
    ("cifar10_quick.prototxt", {"conv1": (1, 32, 32, 32), "pool1": (1, 32, 16, 16), "pool2": (1, 32, 8, 8),
                                "pool3": (1, 64, 4, 4), "ip1": (1, 64), "prob": (1, 10)}),
    ("cifar10_full.prototxt", {"norm1": (1, 32, 16, 16), "norm2": (1, 32, 8, 8), "pool3": (1, 64, 4, 4),
                               "prob": (1, 10)}),
    ("caffenet.prototxt", {"conv1": (10, 96, 55, 55), "pool1": (10, 96, 27, 27), "conv2": (10, 256, 27, 27),
                           "pool2": (10, 256, 13, 13), "conv5": (10, 256, 13, 13), "pool5": (10, 256, 6, 6),
                           "fc6": (10, 4096), "prob": (10, 1000)}),
    ("mnist_siamese.prototxt", {"data": (64, 1, 28, 28), "pool2": (64, 50, 4, 4), "feat": (64, 2),
                                "feat_p": (64, 2), "loss": ()}),
])
def test_published_shapes(name, expected):
    shapes = shapes_of(read(name), name, "TRAIN" if "siamese" in name else "TEST")
    for blob, shape in expected.items():
        assert shapes[blob] == shape, blob


def test_googlenet_inception_blocks():
    shapes = shapes_of(googlenet_stem_and_inception3(), "googlenet.prototxt")
    assert shapes["conv1/7x7_s2"] == (10, 64, 112, 112)
    assert shapes["pool1/3x3_s2"] == (10, 64, 56, 56)           # Caffe's ceil rounding
    assert shapes["pool2/3x3_s2"] == (10, 192, 28, 28)
    assert shapes["inception_3a/output"] == (10, 256, 28, 28)
    assert shapes["inception_3b/output"] == (10, 480, 28, 28)
    assert shapes["pool3/3x3_s2"] == (10, 480, 14, 14)


def test_resnet50_deploy():
    shapes = shapes_of(resnet50_deploy(), "resnet50.prototxt")
    assert shapes["pool1"] == (1, 64, 56, 56)
    assert shapes["res2c"] == (1, 256, 56, 56) and shapes["res3d"] == (1, 512, 28, 28)
    assert shapes["res4f"] == (1, 1024, 14, 14) and shapes["res5c"] == (1, 2048, 7, 7)
    assert shapes["pool5"] == (1, 2048, 1, 1) and shapes["prob"] == (1, 1000)


def test_siamese_towers_share_their_params():
    doc, _ = loads(read("mnist_siamese.prototxt"), "siamese.prototxt")
    net = Net(doc, "TRAIN", os.path.join(ZOO, "siamese.prototxt"), seed=0)
    assert net.layer_by_name("conv1").blobs[0] is net.layer_by_name("conv1_p").blobs[0]
    assert len(net.params) == 10          # five layers' weights and biases, each owned once
