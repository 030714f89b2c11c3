"""Record Caffe's forward of a ResNet-style deploy net, for tests/test_caffe_parity.py's forward-only check
(yaffe's inference kernels: BatchNorm, Scale, ReLU and the residual SUM folded into the convolutions; on AVX-512
the unpadded kernel on rows of 16 and 32 at stride 1 and on stride-2 rows of 16; bands and pixel tiles at batch 1).
Runs inside the chroot with pycaffe (tests/caffe_parity/README.md); needs only numpy and caffe.

    python3 make_deploy_fixture.py OUT.npz

Writes the prototxt and Caffe's tops of the stage outputs (samples of the larger: SAMPLES), the pooling, the
InnerProduct and the softmax, for a batch of 8 and for its first image alone. The params (params()) and the batch
(batch()) come from NumPy's RandomState, so the test makes them again.
"""
import os
import sys

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")


def conv(name, bottom, n, k, stride=1, pad=None):
    pad = k // 2 if pad is None else pad
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param {{ '
            f'num_output: {n} kernel_size: {k} stride: {stride} pad: {pad} bias_term: false }} }}\n'
            f'layer {{ name: "{name}_bn" type: "BatchNorm" bottom: "{name}" top: "{name}" '
            f'batch_norm_param {{ use_global_stats: true }} }}\n'
            f'layer {{ name: "{name}_sc" type: "Scale" bottom: "{name}" top: "{name}" scale_param {{ bias_term: true }} }}\n')


def relu(name, slope=0.0):
    extra = f" relu_param {{ negative_slope: {slope} }}" if slope else ""
    return f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}"{extra} }}\n'


def block(name, bottom, n, stride):
    text = conv(f"{name}_a", bottom, n, 3, stride) + relu(f"{name}_a")
    text += conv(f"{name}_b", f"{name}_a", n, 3)
    short = bottom
    if stride != 1:
        text += conv(f"{name}_proj", bottom, n, 1, stride, 0)
        short = f"{name}_proj"
    text += (f'layer {{ name: "{name}" type: "Eltwise" bottom: "{short}" bottom: "{name}_b" top: "{name}" }}\n'
             + relu(name, 0.1 if stride == 1 and n == 16 else 0.0))
    return text


PROTOTXT = ('name: "deploy_resnet"\n'
            'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 3 dim: 32 dim: 32 } } }\n'
            + conv("conv1", "data", 16, 3) + relu("conv1")
            + block("s1", "conv1", 16, 1) + block("s2", "s1", 32, 2) + block("s3", "s2", 64, 2)
            + 'layer { name: "pool" type: "Pooling" bottom: "s3" top: "pool" '
              'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n'
            + 'layer { name: "gap" type: "Pooling" bottom: "pool" top: "gap" '
              'pooling_param { pool: AVE global_pooling: true } }\n'
            + 'layer { name: "ip" type: "InnerProduct" bottom: "gap" top: "ip" inner_product_param { num_output: 10 } }\n'
            + 'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }\n')
COMPARED = ["conv1", "s1", "s2", "s3", "pool", "gap", "ip", "prob"]
# (batch, blob): the index kept of the larger tops (every image's edges and corners stay in)
SAMPLES = {("b8", "conv1"): np.s_[[0, 3, 7], ::4], ("b8", "s1"): np.s_[[0, 3, 7], ::4],
           ("b8", "s2"): np.s_[[0, 3, 7], ::2], ("b8", "s3"): np.s_[:, ::4],
           ("b1", "conv1"): np.s_[:, ::2], ("b1", "s1"): np.s_[:, ::2]}


def batch():
    return np.random.RandomState(8).normal(0, 1, (8, 3, 32, 32)).astype(np.float32)


def params(shapes):
    """{(layer, i): array} for the layers' param shapes [(layer, type, [shape])], from RandomState(7)."""
    rs, out = np.random.RandomState(7), {}
    for layer, kind, blob_shapes in shapes:
        for i, shape in enumerate(blob_shapes):
            if kind == "BatchNorm":
                value = (rs.normal(0, 0.2, shape) if i == 0 else rs.uniform(0.5, 1.5, shape) if i == 1
                         else np.ones(shape))
            elif kind == "Scale":
                value = rs.uniform(0.5, 1.5, shape) if i == 0 else rs.normal(0, 0.2, shape)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                value = rs.normal(0, np.sqrt(2.0 / fan_in), shape) if i == 0 else rs.normal(0, 0.1, shape)
            out[layer, i] = value.astype(np.float32)
    return out


def main(out):
    import caffe
    caffe.set_mode_cpu()
    with open("/tmp/deploy_resnet.prototxt", "w") as f:
        f.write(PROTOTXT)
    net = caffe.Net("/tmp/deploy_resnet.prototxt", caffe.TEST)
    shapes = [(name, layer.type, [b.data.shape for b in layer.blobs])
              for name, layer in zip(net._layer_names, net.layers) if len(layer.blobs)]
    values = params(shapes)
    for (layer, i), value in values.items():
        net.params[layer][i].data[...] = value
    x = batch()
    record = {}
    for tag, images in (("b8", x), ("b1", x[:1])):
        net.blobs["data"].reshape(*images.shape)
        net.reshape()
        net.blobs["data"].data[...] = images
        net.forward()
        record.update({f"{tag}/{name}": net.blobs[name].data[SAMPLES.get((tag, name), np.s_[:])].copy()
                       for name in COMPARED})
    np.savez_compressed(out, **record)


if __name__ == "__main__":
    main(sys.argv[1])
