"""Image files as Caffe's C++ reads them (OpenCV's imread and resize): uint8 (C, H, W), colour in BGR order, grey as
one channel, a JPEG turned by its EXIF orientation; resized by OpenCV's bilinear arithmetic (INTER_LINEAR in 11-bit
fixed point, exact halving by 2x2 means), so that ImageData, WindowData, `run.py data convert` (convert_imageset),
encoded Datum records and `run.py predict` give the bytes Caffe gives, and Caffe's BGR means (104, 117, 123) and
pretrained weights fit them."""
from __future__ import annotations

import io

import numpy as np
from numba import njit

from .sources import SourceError

COEF_BITS = 11
COEF_SCALE = 1 << COEF_BITS


def pillow():
    """PIL.Image, or a SourceError saying how to install Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise SourceError("reading images needs Pillow: pip install 'yaffe[images]' (or pip install pillow)") from None
    Image.MAX_IMAGE_PIXELS = 1 << 28  # a decompression bomb raises instead of filling the memory
    return Image


def _taps(n_in, n_out, columns):
    """OpenCV's bilinear taps along one axis: (first source index, second, weight of the first, of the second), the
    weights in 11-bit fixed point rounded from float32 as OpenCV rounds them. Past the edges the columns take one
    tap of weight 1; the rows keep their weights and read the edge row twice (the same values)."""
    f = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if columns:
        f[(s < 0) | (s >= n_in - 1)] = 0
    w0 = np.rint((np.float32(1) - f) * np.float32(COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(COEF_SCALE)).astype(np.int32)
    return np.clip(s, 0, n_in - 1), np.clip(s + 1, 0, n_in - 1), w0, w1


def cv_resize(a, height, width):
    """uint8 (H, W) or (H, W, C) resized to (height, width) as OpenCV's cv::resize with INTER_LINEAR computes it:
    taps at pixel centres, edges clamped, 11-bit weights, each row's sums in int32, the vertical pass in OpenCV's
    vector arithmetic (((S0 >> 4) w0 >> 16) + ((S1 >> 4) w1 >> 16) + 2 >> 2; measured against Caffe: its rows' last
    values too, not the scalar rounding). Halving both sides exactly: 2x2 means (OpenCV's INTER_AREA path)."""
    a = np.asarray(a, np.uint8)
    h, w = a.shape[:2]
    if (h, w) == (height, width):
        return a.copy()
    if h == 2 * height and w == 2 * width:  # OpenCV's INTER_AREA fast path
        s = a.astype(np.int32)
        s = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    cn = a.shape[2] if a.ndim == 3 else 1
    out = np.empty((height, width * cn), np.uint8)
    _linear(a.reshape(h, w * cn), cn, *_taps(w, width, True), *_taps(h, height, False), out)
    return out.reshape((height, width) + a.shape[2:])


@njit(cache=True, nogil=True)
def _linear(src, cn, x0, x1, a0, a1, y0, y1, b0, b1, out):
    """cv_resize's two passes: src (H, W*cn) uint8 -> out (h, w*cn); the horizontal sums (int32) of each source
    row once, then each output row from its two."""
    n = out.shape[1]
    o0, o1 = np.empty(n, np.int64), np.empty(n, np.int64)
    w0, w1 = np.empty(n, np.int32), np.empty(n, np.int32)
    for j in range(n):
        dx, k = j // cn, j % cn
        o0[j], o1[j], w0[j], w1[j] = x0[dx] * cn + k, x1[dx] * cn + k, a0[dx], a1[dx]
    rows = np.empty((src.shape[0], n), np.int32)
    done = np.zeros(src.shape[0], np.bool_)
    for dy in range(out.shape[0]):
        for sy in (y0[dy], y1[dy]):
            if not done[sy]:
                for j in range(n):
                    rows[sy, j] = np.int32(src[sy, o0[j]]) * w0[j] + np.int32(src[sy, o1[j]]) * w1[j]
                done[sy] = True
        r0, r1, c0, c1 = rows[y0[dy]], rows[y1[dy]], b0[dy], b1[dy]
        for j in range(n):
            v = ((((r0[j] >> 4) * c0) >> 16) + (((r1[j] >> 4) * c1) >> 16) + 2) >> 2
            out[dy, j] = min(max(v, 0), 255)


def _decode(im, color):
    """A PIL image -> uint8 (H, W, 3) BGR or (H, W) grey, as cv::imread with IMREAD_COLOR / IMREAD_GRAYSCALE: 16-bit
    samples cut to their high byte, alpha dropped; grey from colour as each of OpenCV's decoders makes it (a JPEG's
    luma as libjpeg gives it, a PNG's by libpng's truncating weights, others by OpenCV's rounded 14-bit weights)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = (np.asarray(im, np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2) if color else a
    if color:
        return np.asarray(im.convert("RGB"), np.uint8)[:, :, ::-1]
    if im.mode in ("1", "L"):
        return np.asarray(im.convert("L"), np.uint8)
    if im.format == "JPEG":
        im.draft("L", im.size)
        return np.asarray(im.convert("L"), np.uint8)
    rgb = np.asarray(im.convert("RGB"), np.int64)
    if im.format == "PNG":  # png_set_rgb_to_gray(0.299, 0.587): weights 9797, 19234, 3737 of 2^15, truncated
        return ((9797 * rgb[:, :, 0] + 19234 * rgb[:, :, 1] + 3737 * rgb[:, :, 2]) >> 15).astype(np.uint8)
    return ((4899 * rgb[:, :, 0] + 9617 * rgb[:, :, 1] + 1868 * rgb[:, :, 2] + 8192) >> 14).astype(np.uint8)


def _orientation(im):
    """A JPEG's EXIF orientation (1..8), which OpenCV's imread applies (not a PNG's); 1 where there is none."""
    if im.format != "JPEG" or "exif" not in im.info:  # (most files: no EXIF block to parse)
        return 1
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001: a broken EXIF block reads as none, as OpenCV's reader skips it
        return 1


def _orient(a, orientation):
    """uint8 (H, W[, C]) turned as OpenCV's ApplyExifOrientation turns it."""
    if orientation in (5, 6, 7, 8):
        a = a.swapaxes(0, 1)
    flip = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    for axis in flip:
        a = np.flip(a, axis)
    return np.ascontiguousarray(a)


def read_image(path, color=True, new_height=0, new_width=0):
    """An image file as uint8 (C, H, W): BGR (color) or grey, resized to new_height x new_width when both are given
    (Caffe's ReadImageToCVMat)."""
    Image = pillow()
    try:
        with Image.open(path) as im:
            orientation = _orientation(im)
            a = _orient(_decode(im, color), orientation)
    except Exception as e:  # noqa: BLE001: not an image, truncated, a decompression bomb
        raise SourceError(f"cannot read image {path}: {e}") from None
    if new_height and new_width:
        a = cv_resize(a, new_height, new_width)
    return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]


def decode_bytes(data, color=None):
    """An encoded image (a Datum's PNG or JPEG bytes) as uint8 (C, H, W): as stored (grey or BGR) when color is None,
    else forced to BGR / grey (Caffe's DecodeDatumToCVMat)."""
    Image = pillow()
    with Image.open(io.BytesIO(data)) as im:
        turn = 1 if color is None else _orientation(im)  # (Caffe decodes a record as stored, IMREAD_UNCHANGED,
        if color is None:                                 # unless force_color / force_gray: then as imread)
            color = im.mode not in ("1", "L", "I;16", "I")
        a = _orient(_decode(im, color), turn)
    return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]
