"""pycaffe's caffe.io: images in and out of a net's input layout, and Caffe's BlobProto and Datum messages.

    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1)); transformer.set_raw_scale("data", 255)
    net.blobs["data"].data[...] = transformer.preprocess("data", caffe.io.load_image("cat.jpg"))
"""
from __future__ import annotations

import os

import numpy as np

from .proto import caffe_pb2


def load_image(filename, color=True):
    """An image file as float32 H x W x C in [0, 1], as pycaffe's load_image (scikit-image's imread): RGB, the
    alpha channel dropped; grey (color=False) as 1 channel by scikit-image's weights (0.2125 R + 0.7154 G +
    0.0721 B, after blending any alpha onto white); a grey file in colour repeated to 3 channels; 16-bit files
    divided by 65535. Needs Pillow (extra images)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("caffe.io.load_image needs Pillow: pip install 'yaffe[images]'") from None
    with Image.open(filename) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            scale = 65535.0 if im.mode.startswith("I;16") else 2147483647.0
            img = np.asarray(im, np.float64) / scale
        elif im.mode == "F":
            img = np.asarray(im, np.float64)
        elif im.mode in ("1", "L"):
            img = np.asarray(im.convert("L"), np.float64) / 255.0
        else:
            alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
            img = np.asarray(im.convert("RGBA" if alpha else "RGB"), np.float64) / 255.0
    if img.ndim == 3 and not color:
        if img.shape[2] == 4:  # scikit-image's rgba2rgb: onto a white background
            img = np.clip((1 - img[:, :, 3:]) + img[:, :, 3:] * img[:, :, :3], 0, 1)
        img = img[:, :, :3] @ np.array([0.2125, 0.7154, 0.0721])
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, None]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img[:, :, :3] if img.shape[2] == 4 else img


def _gaussian_axis(x, axis, sigma):
    """scipy.ndimage.gaussian_filter1d of x along axis (truncate 4, zeros beyond the edges: mode 'constant'),
    computed in float64."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 / sigma ** 2 * np.arange(-radius, radius + 1) ** 2)
    taps /= taps.sum()
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    padded = np.zeros((x.shape[0] + 2 * radius,) + x.shape[1:])
    padded[radius:radius + x.shape[0]] = x
    out = np.zeros(x.shape)
    for k, t in enumerate(taps):
        out += t * padded[k:k + x.shape[0]]
    return np.moveaxis(out, 0, axis)


def _warp_axis(n_in, n_out, nearest):
    """Per output position along one axis: the source indices and weights of scikit-image's resize (pixel centres
    mapped, the coordinate in float32 as its float32 warp computes it). Bilinear: (lower, upper, weight of the
    upper); nearest: (index, index, 0). Indices outside 0..n_in-1 read the constant (see _warp)."""
    factor, shift = np.float32(n_in / n_out), np.float32(0.5 * (n_in / n_out) - 0.5)
    pos = (np.arange(n_out, dtype=np.float32) * factor + shift).astype(np.float64)
    if nearest:  # C's round: halves away from zero
        idx = (np.sign(pos) * np.floor(np.abs(pos) + 0.5)).astype(int)
        return idx, idx, np.zeros(n_out)
    lo = np.floor(pos).astype(int)
    return lo, np.ceil(pos).astype(int), pos - lo


def _warp(im, h, w, nearest, cval=0.0):
    """scikit-image's warp of an H x W x C image to h x w by a scale (mode 'constant': outside is cval)."""
    r0, r1, rw = _warp_axis(im.shape[0], h, nearest)
    c0, c1, cw = _warp_axis(im.shape[1], w, nearest)
    padded = np.full((im.shape[0] + 2, im.shape[1] + 2) + im.shape[2:], cval, np.float64)
    padded[1:-1, 1:-1] = im

    def at(rows, cols):
        rows = np.where((rows >= 0) & (rows < im.shape[0]), rows + 1, 0)
        cols = np.where((cols >= 0) & (cols < im.shape[1]), cols + 1, 0)
        return padded[rows[:, None], cols[None, :]]
    if nearest:
        return at(r0, c0)
    shape = (1, -1) + (1,) * (im.ndim - 2)
    cw = cw.reshape(shape)
    top = (1 - cw) * at(r0, c0) + cw * at(r0, c1)
    bottom = (1 - cw) * at(r1, c0) + cw * at(r1, c1)
    rw = rw.reshape((-1, 1) + (1,) * (im.ndim - 2))
    return (1 - rw) * top + rw * bottom


def _zoom(im, h, w):
    """scipy.ndimage.zoom of an H x W x K image to h x w, order 1 (corners aligned), as pycaffe resizes images
    of other than 1 or 3 channels."""
    out = np.asarray(im, np.float64)
    for axis, n_out in ((0, h), (1, w)):
        out = np.moveaxis(out, axis, 0)
        n_in = out.shape[0]
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        t = (pos - lo).reshape((-1,) + (1,) * (out.ndim - 1))
        out = np.moveaxis(out[lo] * (1 - t) + out[np.minimum(lo + 1, n_in - 1)] * t, 0, axis)
    return out


def resize_image(im, new_dims, interp_order=1):
    """im (H, W, K) resized to new_dims (h, w), as pycaffe's resize_image computes it: 1 or 3 channels through
    scikit-image's resize of the image scaled to [0, 1] (pixel centres mapped; beyond the edges the image's
    minimum, mode 'constant'; a Gaussian of sigma (factor - 1) / 2 first along an axis it shrinks; bilinear for
    interp_order 1, nearest for 0; clipped to the range), other channel counts through scipy's zoom (bilinear,
    corners aligned). float32 out."""
    im = np.asarray(im, np.float32)
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.ndim == 2:
        im = im[:, :, None]
    if im.shape[-1] not in (1, 3):
        return _zoom(im, h, w).astype(np.float32)
    im_min, im_max = im.min(), im.max()
    if not im_max > im_min:
        return np.full((h, w, im.shape[-1]), im_min, np.float32)
    std = (im - im_min) / (im_max - im_min)
    for axis, n_out in ((0, h), (1, w)):
        sigma = max(0.0, (std.shape[axis] / n_out - 1) / 2)
        if sigma > 1e-15:
            std = _gaussian_axis(std, axis, sigma).astype(np.float32)
    out = _warp(np.asarray(std, np.float64), h, w, interp_order == 0)
    if interp_order != 0:
        lo, hi = float(std.min()), float(std.max())
        keep = (out == 0.0) if not lo <= 0.0 <= hi else None
        out = np.clip(out, lo, hi)
        if keep is not None:
            out[keep] = 0.0
    return (out.astype(np.float32) * (im_max - im_min) + im_min).astype(np.float32)


def oversample(images, crop_dims):
    """Ten crops of each image (N x H x W x C): the four corners and the centre, and their mirrors ->
    (10 N, h, w, C), as pycaffe's oversample."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    im_center = im_shape[:2] / 2.0
    h_indices, w_indices = (0, im_shape[0] - crop_dims[0]), (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    k = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[k] = (i, j, i + crop_dims[0], j + crop_dims[1])
            k += 1
    crops_ix[4] = np.tile(im_center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]  # the second five mirrored
    return crops


class Transformer:
    """Turns H x W x C images into a net input's C x H x W layout and back (pycaffe's Transformer): resize to
    the input's size, transpose, channel swap, raw scale, mean, input scale, in that order.

    Args: inputs: {input blob name: its shape (N, C, H, W)}."""

    def __init__(self, inputs):
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.transpose, self.channel_swap, self.raw_scale, self.mean, self.input_scale = {}, {}, {}, {}, {}

    def _check(self, in_):
        if in_ not in self.inputs:
            raise KeyError(f"{in_} is not one of the net inputs: {list(self.inputs)}")

    def set_transpose(self, in_, order):
        """The order of the image's axes in the input, e.g. (2, 0, 1) for H x W x C -> C x H x W."""
        self._check(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Reorder the channels after transposing, e.g. (2, 1, 0) for RGB -> BGR (Caffe's models are BGR)."""
        self._check(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the image by this before the mean, e.g. 255 for load_image's [0, 1] -> [0, 255]."""
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Subtract this: per channel (C,) or per pixel (C, H, W), resized to the input's size if it differs (a
        256 x 256 ImageNet mean for a 227 x 227 input, as pycaffe resizes it)."""
        self._check(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:  # resized to the input, as pycaffe does (e.g. 256 x 256 -> 227 x 227)
                mean = mean.reshape(ms)
                if mean.shape[0] != self.inputs[in_][1]:
                    raise ValueError(f"Mean shape {list(ms)} incompatible with input shape "
                                     f"{list(self.inputs[in_][1:])}: its channels differ")
                m_min, m_max = mean.min(), mean.max()
                normal = (mean - m_min) / (m_max - m_min) if m_max > m_min else mean - m_min
                mean = resize_image(normal.transpose((1, 2, 0)), self.inputs[in_][2:]).transpose((2, 0, 1)) \
                    * (m_max - m_min) + m_min
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply by this after the mean (e.g. 0.017 for nets trained on scaled inputs)."""
        self._check(in_)
        self.input_scale[in_] = scale

    def preprocess(self, in_, data):
        """An H x W x C image -> the input's C x H x W float32 array."""
        self._check(in_)
        caffe_in = np.asarray(data, np.float32)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != tuple(in_dims):
            caffe_in = resize_image(caffe_in, in_dims)
        if in_ in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            caffe_in = caffe_in[list(self.channel_swap[in_]), :, :]
        caffe_in = np.array(caffe_in, np.float32)
        if in_ in self.raw_scale:
            caffe_in *= self.raw_scale[in_]
        if in_ in self.mean:
            caffe_in -= self.mean[in_]
        if in_ in self.input_scale:
            caffe_in *= self.input_scale[in_]
        return caffe_in

    def deprocess(self, in_, data):
        """The inverse of preprocess (without the resize): an input array -> an H x W x C image."""
        self._check(in_)
        decaf_in = np.array(data, np.float32).squeeze()
        if in_ in self.input_scale:
            decaf_in /= self.input_scale[in_]
        if in_ in self.mean:
            decaf_in += self.mean[in_]
        if in_ in self.raw_scale:
            decaf_in /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            decaf_in = decaf_in[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[in_]))
        return decaf_in


def load_dataset(path):
    """(data float32 (N, C, H, W) or (N, features), labels (N,)) of a dataset file as yaffe's Data layer reads it:
    IDX (labels from the file beside), .csv[.gz], .npz, an LMDB or LevelDB, or a list file of `path label`
    lines. Values as stored (pixels 0..255): scale them as the net's transform_param does. yaffe's own."""
    from layers import sources
    from netspec.errors import UserError
    try:
        with sources.reading():
            data, labels = sources.read_any(os.fspath(path))
    except sources.SourceError as e:
        raise UserError(f"{path}: error: {e}") from None
    return np.asarray(data, np.float32), np.asarray(labels, np.float32)


# ---- Caffe's messages ------------------------------------------------------------------------------

def array_to_blobproto(arr, diff=None):
    """A BlobProto of an array (its shape and float data; diff when given)."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(np.asarray(arr).shape)
    blob.data.extend(np.asarray(arr, np.float32).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff, np.float32).flat)
    return blob


def blobproto_to_array(blob, return_diff=False):
    """The array of a BlobProto (a mean file's: (1, C, H, W) for legacy 4-D blobs)."""
    values = blob.diff if return_diff else (blob.data or blob.double_data)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    return np.asarray(values, np.float32).reshape(shape)


def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(buf):
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(buf)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum of a C x H x W array: uint8 arrays as bytes, others as float_data."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """The C x H x W array of a Datum (uint8 data, or float_data as float); encoded images are not decoded."""
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(datum.channels, datum.height, datum.width)
    return np.array(datum.float_data).astype(float).reshape(datum.channels, datum.height, datum.width)
