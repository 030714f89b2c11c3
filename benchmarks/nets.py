"""The larger benchmark nets, written once and given to yaffe (YAML), Caffe (the same as prototxt) and PyTorch (the
same modules): ResNet-20 for 32x32 inputs (He et al.'s CIFAR net: 3 stages of 3 basic blocks, 16/32/64 channels,
BatchNorm + Scale + ReLU in place, projection shortcuts where the shape changes, global average pooling),
a MobileNet-v1 of width 0.5 on 3x64x64 (depthwise 3x3 as `group: C`, pointwise 1x1), and the row-by-row LSTM of
models/lstm_mnist (T=28, N=64, 128 hidden units). DummyData inputs: uniform images, labels set by the caller.
"""
from __future__ import annotations


def _data(batch, shape):
    dims = [batch] + list(shape)
    return (f"  - {{name: d, type: DummyData, top: [data, label], dummy_data_param: {{shape: [{{dim: {dims}}}, "
            f"{{dim: [{batch}]}}], data_filler: [{{type: uniform}}, {{type: constant, value: 1}}]}}}}\n")


def _conv_bn(name, bottom, out, k, stride=1, group=1, relu=True):
    pad = k // 2
    s = (f"  - {{name: {name}, type: Convolution, bottom: {bottom}, top: {name}, convolution_param: {{num_output: {out}, "
         f"kernel_size: {k}, stride: {stride}, pad: {pad}, group: {group}, bias_term: false, "
         f"weight_filler: {{type: msra}}}}}}\n"
         f"  - {{name: {name}_bn, type: BatchNorm, bottom: {name}, top: {name}}}\n"
         f"  - {{name: {name}_scale, type: Scale, bottom: {name}, top: {name}, scale_param: {{bias_term: true}}}}\n")
    if relu:
        s += f"  - {{name: {name}_relu, type: ReLU, bottom: {name}, top: {name}}}\n"
    return s


def _head(bottom, classes=10):
    return (f"  - {{name: pool, type: Pooling, bottom: {bottom}, top: pool, pooling_param: {{pool: AVE, "
            f"global_pooling: true}}}}\n"
            f"  - {{name: fc, type: InnerProduct, bottom: pool, top: fc, inner_product_param: {{num_output: {classes}, "
            f"weight_filler: {{type: xavier}}}}}}\n"
            f"  - {{name: loss, type: SoftmaxWithLoss, bottom: [fc, label], top: loss}}\n")


RESNET20_STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride of the first block), 3 blocks each
MOBILENET_BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (256, 1), (256, 1), (256, 1),
                    (256, 1), (512, 2), (512, 1))  # (pointwise channels at width 1, depthwise stride), then x0.5


def resnet20(batch=128):
    t = "name: ResNet-20\nlayer:\n" + _data(batch, (3, 32, 32)) + _conv_bn("conv1", "data", 16, 3)
    bottom, width = "conv1", 16
    for s, (channels, stride) in enumerate(RESNET20_STAGES, start=1):
        for b in range(3):
            name, st = f"s{s}b{b}", stride if b == 0 else 1
            t += _conv_bn(f"{name}_a", bottom, channels, 3, st)
            t += _conv_bn(f"{name}_b", f"{name}_a", channels, 3, relu=False)
            short = bottom
            if st != 1 or channels != width:
                t += _conv_bn(f"{name}_proj", bottom, channels, 1, st, relu=False)
                short = f"{name}_proj"
            t += (f"  - {{name: {name}, type: Eltwise, bottom: [{short}, {name}_b], top: {name}}}\n"
                  f"  - {{name: {name}_relu, type: ReLU, bottom: {name}, top: {name}}}\n")
            bottom, width = name, channels
    return t + _head(bottom)


def mobilenet(batch=64, width=0.5):
    t = "name: MobileNet-v1-0.5\nlayer:\n" + _data(batch, (3, 64, 64))
    c = int(32 * width)
    t += _conv_bn("conv1", "data", c, 3, 2)
    bottom = "conv1"
    for i, (out, stride) in enumerate(MOBILENET_BLOCKS):
        t += _conv_bn(f"dw{i}", bottom, c, 3, stride, group=c)
        c = int(out * width)
        t += _conv_bn(f"pw{i}", f"dw{i}", c, 1)
        bottom = f"pw{i}"
    return t + _head(bottom)


def lstm(batch=64, steps=28, inputs=28, hidden=128):
    return f"""name: LSTM
layer:
  - {{name: d, type: DummyData, top: [data, label, cont], dummy_data_param: {{shape: [{{dim: [{steps}, {batch}, {inputs}]}},
     {{dim: [{batch}]}}, {{dim: [{steps}, {batch}]}}], data_filler: [{{type: uniform}}, {{type: constant, value: 1}},
     {{type: constant, value: 1}}]}}}}
  - {{name: lstm, type: LSTM, bottom: [data, cont], top: h, recurrent_param: {{num_output: {hidden},
     weight_filler: {{type: uniform, min: -0.08, max: 0.08}}}}}}
  - {{name: last, type: Slice, bottom: h, top: [h_early, h_last], slice_param: {{axis: 0, slice_point: {steps - 1}}}}}
  - {{name: quiet, type: Silence, bottom: h_early}}
  - {{name: flat, type: Reshape, bottom: h_last, top: features, reshape_param: {{shape: {{dim: [-1, {hidden}]}}}}}}
  - {{name: fc, type: InnerProduct, bottom: features, top: fc, inner_product_param: {{num_output: 10,
     weight_filler: {{type: xavier}}}}}}
  - {{name: loss, type: SoftmaxWithLoss, bottom: [fc, label], top: loss}}
"""


def torch_model(name):
    """(module, input shape) of PyTorch's equivalent of resnet20(), mobilenet() or lstm()."""
    from torch import nn

    def conv_bn(cin, cout, k, stride=1, groups=1, relu=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, relu=False)
            self.proj = conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            return (self.proj(x) + self.b(self.a(x))).relu_()

    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if name.startswith("ResNet"):
        blocks, cin = [conv_bn(3, 16, 3)], 16
        for channels, stride in RESNET20_STAGES:
            for b in range(3):
                blocks.append(Block(cin, channels, stride if b == 0 else 1))
                cin = channels
        return nn.Sequential(*blocks, *head, nn.Linear(64, 10)), (128, 3, 32, 32)
    if name.startswith("MobileNet"):
        c = 16
        layers = [conv_bn(3, c, 3, 2)]
        for out, stride in MOBILENET_BLOCKS:
            layers += [conv_bn(c, c, 3, stride, groups=c), conv_bn(c, out // 2, 1)]
            c = out // 2
        return nn.Sequential(*layers, *head, nn.Linear(c, 10)), (64, 3, 64, 64)

    class LastStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(28, 128), nn.Linear(128, 10)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][-1])
    return LastStep(), (28, 64, 28)
