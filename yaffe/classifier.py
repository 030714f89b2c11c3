"""pycaffe's Classifier and Detector: TEST nets with the preprocessing of an image classifier and of R-CNN windows
(after BVLC's classifier.py and detector.py, BSD-2-Clause)."""
from __future__ import annotations

import numpy as np

from . import io
from .pycaffe import TEST, Net


def _transformer(net, mean, input_scale, raw_scale, channel_swap):
    """The Transformer of the net's first input: H x W x C images to C x H x W, then the options given."""
    in_ = net.inputs[0]
    t = io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))
    for setter, value in ((t.set_mean, mean), (t.set_input_scale, input_scale), (t.set_raw_scale, raw_scale),
                          (t.set_channel_swap, channel_swap)):
        if value is not None:
            setter(in_, value)
    return t


class Classifier(Net):
    """Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None): images (H x W x C, as caffe.io.load_image gives) are resized to image_dims, cropped to
    the net's input size (the centre, or ten crops averaged: oversample) and preprocessed by `self.transformer`
    (transpose to C x H x W, then channel_swap, raw_scale, mean, input_scale)."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        self.transformer = _transformer(self, mean, input_scale, raw_scale, channel_swap)
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


class Detector(Net):
    """pycaffe's Detector (after BVLC's detector.py, R-CNN style): detect_windows([(image file, windows)]) crops
    each window (ymin, xmin, ymax, xmax), with `context_pad` pixels of surrounding context as R-CNN, warps it to
    the net's input and returns [{filename, window, prediction}]. Preprocessing as Classifier's."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = _transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """[{filename, window, prediction}] for every window of every (image filename, windows) pair."""
        images_windows = [(f, [np.asarray(w) for w in ws]) for f, ws in images_windows]
        crops = []
        for image_fname, windows in images_windows:
            image = io.load_image(image_fname).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops[0].shape[2]) + self.blobs[in_].data.shape[2:], np.float32)
        for ix, window_in in enumerate(crops):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections, ix = [], 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Needs the selective_search_ijcv_with_python MATLAB tool, as pycaffe's: give windows to detect_windows."""
        raise NotImplementedError("detect_selective_search runs the selective_search_ijcv_with_python MATLAB tool; "
                                  "compute the proposals yourself and call detect_windows")

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of an H x W x K image, with context_pad pixels of context (the
        part outside the image filled with the mean), as R-CNN's warp."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop
        box = window.astype(float)
        crop_size = self.blobs[self.inputs[0]].width  # assumes a square input
        scale = crop_size / (1. * crop_size - self.context_pad * 2)
        half_h, half_w = (box[2] - box[0] + 1) / 2., (box[3] - box[1] + 1) / 2.
        center = (box[0] + half_h, box[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h, scale_w = crop_size / (box[2] - box[0] + 1), crop_size / (box[3] - box[1] + 1)
        pad_y, pad_x = round(max(0, -box[0]) * scale_h), round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        crop_h, crop_w = min(round(clip_h * scale_h), crop_size - pad_y), min(round(clip_w * scale_w), crop_size - pad_x)
        context_crop = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
        context_crop = io.resize_image(context_crop, (crop_h, crop_w))
        crop = np.ones(self.crop_dims, np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """The crop size (the input's, as H x W x K) and the mean that fills context outside the image."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if self.context_pad:
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                crop_mean = np.broadcast_to(mean, self.blobs[in_].data.shape[1:]).copy().transpose(inv_tpose)
                channel_order = self.transformer.channel_swap.get(in_)
                if channel_order is not None:
                    crop_mean = crop_mean[:, :, [list(channel_order).index(i) for i in range(crop_mean.shape[2])]]
                raw_scale = self.transformer.raw_scale.get(in_)
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
