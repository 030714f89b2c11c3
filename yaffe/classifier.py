"""pycaffe's Classifier: a TEST net with the preprocessing of an image classifier (after BVLC's classifier.py)."""
from __future__ import annotations

import numpy as np

from . import io
from .pycaffe import TEST, Net


class Classifier(Net):
    """Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None): images (H x W x C, as caffe.io.load_image gives) are resized to image_dims, cropped to
    the net's input size (the centre, or ten crops averaged: oversample) and preprocessed by `self.transformer`
    (transpose to C x H x W, then channel_swap, raw_scale, mean, input_scale)."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        self.transformer = io.Transformer({in_: self.blobs[in_].data.shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = self.crop_dims if not image_dims else np.array(image_dims)

    def predict(self, inputs, oversample=True):
        """(N, classes) of the net's first output for N images; oversample: the mean over ten crops."""
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]), np.float32)
        for ix, im in enumerate(inputs):
            input_[ix] = io.resize_image(im, self.image_dims)
        if oversample:
            input_ = io.oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = (np.tile(center, (1, 2))[0] + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0]))
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], np.float32)
        for ix, im in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(self.inputs[0], im)
        predictions = self.forward_all(**{self.inputs[0]: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
