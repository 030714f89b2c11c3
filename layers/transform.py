"""The data transformer: Caffe's transform_param, then yaffe's `normalize` steps.

Order (Caffe's): out = mirror(crop((x - mean) * scale)), the mean taken at the source (uncropped)
position; yaffe's normalize steps run on the whole example after scaling and before the crop.
crop_size takes a random offset in TRAIN and the centre in TEST; mirror flips horizontally with
probability 1/2 in either phase (as Caffe does). pad (yaffe's, TRAIN only) lets the random crop start up to pad
pixels outside the image, which reads as a source value of 0 (transformed like any pixel).

normalize: steps whose statistics are computed once from the TRAIN data layer's whole source and kept
as that layer's blobs, so they are shared with the TEST layer of the same name and saved with the weights
(deployment uses the same numbers). Steps: zero_center, z_score, linear_scale (to [-1, 1]), log
(log(x + 1)), clip (min, max), binary_threshold (threshold), pca_whiten (epsilon). `per` chooses the
statistics: channel (default), feature (every value position) or image (each example's own; nothing stored).
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

from netspec.errors import LayerError
from .base import Field

STEPS = ("zero_center", "z_score", "linear_scale", "log", "clip", "binary_threshold", "pca_whiten")

TRANSFORM_FIELDS = (
    Field("scale", "float", 1.0, "multiply every value by this (after subtracting the mean)"),
    Field("mean_value", "float", None, "subtract this (once, or once per channel) before scaling", repeated=True),
    Field("mean_file", "str", None, "a .npy (or Caffe .binaryproto) mean image of the full example shape, "
          "relative to the net file"),
    Field("crop_size", "int", 0, "crop square patches of this size (random in TRAIN, centre in TEST)", minimum=0),
    Field("mirror", "bool", False, "flip each example horizontally with probability 1/2"),
    Field("pad", "int", 0, "TRAIN: pad each side with this many zero pixels (zero in the source's units: black), then "
          "crop at a random offset to crop_size, or back to the image's size (torchvision's RandomCrop(padding)); "
          "TEST: no padding", minimum=0),
    Field("normalize", "normalize_step", None, "normalization steps fitted on the TRAIN data", repeated=True),
    # augmentation in TRAIN (yaffe's; in the prefetch threads for a streamed source), before mean, scale, mirror
    Field("resized_crop_scale", "float", None, "random-resized crop to crop_size: the share [min, max] of the "
          "image's area a crop covers (e.g. [0.08, 1]); TRAIN only, TEST takes the centre crop", repeated=True,
          exclusive_minimum=0, maximum=1),
    Field("resized_crop_ratio", "float", None, "random-resized crop: the aspect ratios [min, max] (default "
          "[0.75, 1.3333])", repeated=True, exclusive_minimum=0),
    Field("rotation", "float", 0.0, "rotate by a random angle in [-rotation, rotation] degrees (zeros outside)",
          minimum=0, maximum=180),
    Field("brightness", "float", 0.0, "colour jitter: scale the values by a factor in [1 - b, 1 + b]", minimum=0),
    Field("contrast", "float", 0.0, "colour jitter: scale the distance from the mean grey by [1 - c, 1 + c]",
          minimum=0),
    Field("saturation", "float", 0.0, "colour jitter (3 channels): scale the distance from grey by [1 - s, 1 + s]",
          minimum=0),
    Field("mixup_alpha", "float", 0.0, "mixup: blend each example with another of the batch by a Beta(a, a) "
          "weight; the labels become the blend of their one-hot vectors (needs mix_classes)", minimum=0),
    Field("cutmix_alpha", "float", 0.0, "cutmix: paste a box of another example, its area from Beta(a, a); labels "
          "mixed by area (needs mix_classes; with mixup, each batch takes one of the two)", minimum=0),
    Field("mix_classes", "int", 0, "classes of the soft labels mixup and cutmix make: the label top becomes (N, "
          "classes) in TRAIN, for SoftmaxWithLoss", minimum=0),
    Field("normalize_sample", "int", 50000, "a streamed source fits the normalize statistics on this many evenly "
          "spaced rows (a source in memory: on all of them)", minimum=1),
    Field("normalize_target", "normalize_step", None, "the same for the second top (regression targets); "
          "run.py test reports EuclideanLoss in the targets' own units too", repeated=True),
)

STEP_FIELDS = (
    Field("type", "enum", None, "the step", choices=STEPS, required=True),
    Field("per", "enum", "channel", "zero_center, z_score, linear_scale: whose statistics",
          choices=("channel", "feature", "image")),
    Field("min", "float", None, "clip: lower bound"),
    Field("max", "float", None, "clip: upper bound"),
    Field("threshold", "float", 0.0, "binary_threshold: values above become 1, the rest 0"),
    Field("epsilon", "float", 1e-5, "pca_whiten: added to each eigenvalue", minimum=0),
)


@njit(cache=True, nogil=True, parallel=True)
def crop_mirror(x, mean, scale, tops, lefts, flips, fill, out):
    """out[i, c, h, w] = (x[i, c, tops[i] + h, lefts[i] + v] - mean[c, tops[i] + h, lefts[i] + v]) * scale,
    v = w or, where flips[i], W_out - 1 - w; fill[c] where the position falls outside the image (pad).
    x (N, C, H, W) of any dtype, mean (C, H, W), fill (C,), out (N, C, h, w)."""
    n, chans, oh, ow = out.shape
    ih, iw = x.shape[2], x.shape[3]
    for i in prange(n):
        for c in range(chans):
            for h in range(oh):
                r = tops[i] + h
                for w in range(ow):
                    v = lefts[i] + (ow - 1 - w if flips[i] else w)
                    if r < 0 or r >= ih or v < 0 or v >= iw:
                        out[i, c, h, w] = fill[c]
                    else:
                        out[i, c, h, w] = (x[i, c, r, v] - mean[c, r, v]) * scale


class Transformer:
    """Applies transform_param to batches of raw examples of `sample_shape`."""

    def __init__(self, p, phase, base_dir, sample_shape, dtype):
        self.p, self.phase, self.dtype = p, phase, np.dtype(dtype)
        self.sample = tuple(sample_shape)
        self.steps = [dict({"per": "channel", "threshold": 0.0, "epsilon": 1e-5}, **s) for s in (p.normalize or [])]
        self.mean = None
        if p.mean_file and p.mean_value:
            raise LayerError("give either mean_file or mean_value, not both", "transform_param.mean_file")
        if p.mean_file:
            path = os.path.normpath(os.path.join(base_dir, p.mean_file))
            try:
                if path.endswith(".binaryproto"):  # Caffe's BlobProto (1, C, H, W)
                    from netspec.caffemodel import read_blob
                    with open(path, "rb") as f:
                        mean = read_blob(f.read())
                    self.mean = mean.reshape(mean.shape[1:] if mean.ndim == 4 and mean.shape[0] == 1 else mean.shape)
                else:
                    self.mean = np.load(path)
                self.mean = self.mean.astype(self.dtype)
            except (OSError, ValueError, IndexError) as e:
                raise LayerError(f"cannot read mean_file '{p.mean_file}' ({path}): {e}; give a .npy array or "
                                 "Caffe's .binaryproto", "transform_param.mean_file") from None
            if self.mean.shape != self.sample:
                raise LayerError(f"mean_file holds shape {list(self.mean.shape)} but the examples are "
                                 f"{list(self.sample)}; the mean image must have the full example size",
                                 "transform_param.mean_file")
        elif p.mean_value:
            channels = self.sample[0] if self.sample else 1
            if len(p.mean_value) not in (1, channels):
                raise LayerError(f"mean_value needs 1 value or one per channel ({channels}); received "
                                 f"{len(p.mean_value)}", "transform_param.mean_value")
            m = np.asarray(p.mean_value, self.dtype)
            self.mean = m.reshape((-1,) + (1,) * (len(self.sample) - 1)) if m.size > 1 else m[0]
        if p.crop_size:
            if len(self.sample) < 2 or min(self.sample[-2:]) < p.crop_size:
                raise LayerError(f"crop_size {p.crop_size} needs examples of at least {p.crop_size} x "
                                 f"{p.crop_size}; they are {list(self.sample)}", "transform_param.crop_size")
        if getattr(p, "pad", 0) and len(self.sample) != 3:
            raise LayerError(f"pad needs images (C, H, W); the examples are {list(self.sample)}: remove pad, or read "
                             "the source as images", "transform_param.pad")
        self.augments = bool(getattr(p, "resized_crop_scale", None) or getattr(p, "rotation", 0) or
                             getattr(p, "brightness", 0) or getattr(p, "contrast", 0) or getattr(p, "saturation", 0))
        if self.augments:
            if self.steps:
                raise LayerError("augmentation (resized_crop_scale, rotation, brightness, contrast, saturation) and "
                                 "normalize steps do not combine; use mean_value and scale", "transform_param.normalize")
            if p.mean_file:
                raise LayerError("augmentation moves the pixels, so a per-pixel mean_file no longer lines up; give "
                                 "mean_value per channel", "transform_param.mean_file")
            if len(self.sample) != 3:
                raise LayerError(f"augmentation needs images (C, H, W); the examples are {list(self.sample)}",
                                 "transform_param")
            if p.resized_crop_scale and (len(p.resized_crop_scale) != 2 or not p.crop_size):
                raise LayerError("resized_crop_scale takes [min, max] and needs crop_size (the size it resizes to)",
                                 "transform_param.resized_crop_scale")
            if p.saturation and self.sample[0] != 3:
                raise LayerError(f"saturation needs 3 channels; the images have {self.sample[0]}",
                                 "transform_param.saturation")
        if (getattr(p, "mixup_alpha", 0) or getattr(p, "cutmix_alpha", 0)) and not getattr(p, "mix_classes", 0):
            raise LayerError("mixup and cutmix make soft labels over the classes: set mix_classes (the loss's "
                             "num_output)", "transform_param.mix_classes")
        for i, s in enumerate(self.steps):
            if s["type"] == "clip" and (s.get("min") is None or s.get("max") is None or s["min"] > s["max"]):
                raise LayerError(f"normalize step {i} (clip) needs min <= max; received min={s.get('min')}, "
                                 f"max={s.get('max')}", "transform_param.normalize")

    # ---- augmentation (TRAIN) ---------------------------------------------------------------------

    def _augmented(self, raw, out, rng):
        """Per image, in this order: rotation, random-resized crop (or Caffe's random crop), colour jitter, then
        mean, scale and mirror. The draws come from rng in a fixed order, so a batch is reproducible."""
        p = self.p
        size = out.shape[-2:]
        for i in range(len(raw)):
            img = np.asarray(raw[i], np.float32)
            if p.rotation:
                img = rotate(img, rng.uniform(-p.rotation, p.rotation))
            if getattr(p, "pad", 0):
                img = np.pad(img, ((0, 0), (p.pad, p.pad), (p.pad, p.pad)))
            c, h, w = img.shape
            if p.resized_crop_scale:
                y, x, ch, cw = resized_crop_box(h, w, p.resized_crop_scale, p.resized_crop_ratio or [0.75, 4 / 3], rng)
                img = resize_bilinear(img[:, y:y + ch, x:x + cw], size)
            elif p.crop_size or getattr(p, "pad", 0):
                y, x = rng.integers(0, h - size[0] + 1), rng.integers(0, w - size[1] + 1)
                img = img[:, y:y + size[0], x:x + size[1]]
            if p.brightness or p.contrast or p.saturation:
                img = jitter(img, p.brightness, p.contrast, p.saturation, rng)
            if self.mean is not None:
                img = img - (self.mean if np.ndim(self.mean) == 0 else np.asarray(self.mean).reshape(-1, 1, 1))
            if p.mirror and rng.random() < 0.5:
                img = img[:, :, ::-1]
            out[i] = img * p.scale

    def mix(self, data, labels, rng):
        """mixup or cutmix over a transformed batch (N, C, H, W), in place; returns the soft labels (N, classes)."""
        p, n = self.p, len(data)
        classes = p.mix_classes
        onehot = np.zeros((n, classes), self.dtype)
        onehot[np.arange(n), np.asarray(labels, np.int64).ravel()] = 1
        use_cutmix = p.cutmix_alpha and (not p.mixup_alpha or rng.random() < 0.5)
        perm = rng.permutation(n)
        if use_cutmix:
            lam = rng.beta(p.cutmix_alpha, p.cutmix_alpha)
            h, w = data.shape[-2:]
            ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
            cy, cx = rng.integers(h), rng.integers(w)
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            data[:, :, y0:y1, x0:x1] = data[perm][:, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the share actually kept
        else:
            lam = rng.beta(p.mixup_alpha, p.mixup_alpha)
            data[...] = lam * data + (1 - lam) * data[perm]
        return (lam * onehot + (1 - lam) * onehot[perm]).astype(self.dtype)

    @property
    def mixes(self) -> bool:
        return bool(getattr(self.p, "mixup_alpha", 0) or getattr(self.p, "cutmix_alpha", 0)) and self.phase == "TRAIN"

    @classmethod
    def for_targets(cls, p, phase, sample_shape, dtype):
        """A transformer of the second top: only p.normalize_target's steps."""
        from types import SimpleNamespace
        q = SimpleNamespace(scale=1.0, mean_value=None, mean_file=None, crop_size=0, mirror=False,
                            normalize=p.normalize_target, mixup_alpha=0, cutmix_alpha=0)
        return cls(q, phase, ".", sample_shape, dtype)

    def affine_scale(self, blobs):
        """The factor that maps a normalized difference back to original units (per value), when every step
        is zero_center, z_score or linear_scale with stored statistics; else None."""
        scale, k = 1.0, 1
        for s in self.steps:
            if s["type"] not in ("zero_center", "z_score", "linear_scale") or s["per"] == "image":
                return None
            stat = blobs[k]
            if s["type"] == "z_score":
                scale = scale * np.where(stat > 0, stat, 1)
            elif s["type"] == "linear_scale":
                span = stat[1] - stat[0]
                scale = scale * np.where(span > 0, span / 2, 1)
            k += 1
        return scale

    @property
    def out_shape(self):
        if self.p.crop_size:
            return self.sample[:-2] + (self.p.crop_size, self.p.crop_size)
        return self.sample

    # ---- normalize statistics as blobs -----------------------------------------------------

    def _channel_shape(self, per):
        if per == "feature":
            return self.sample
        return (self.sample[0],) if self.sample else (1,)

    def stat_shapes(self):
        """[(shape, filler)]: a 'fitted' flag, then each step's statistics."""
        if not self.steps:
            return []
        shapes = [(1,)]
        f = int(np.prod(self.sample, dtype=np.int64))
        for s in self.steps:
            if s["type"] in ("zero_center", "z_score") and s["per"] != "image":
                shapes.append(self._channel_shape(s["per"]))
            elif s["type"] == "linear_scale" and s["per"] != "image":
                shapes.append((2,) + self._channel_shape(s["per"]))
            elif s["type"] == "pca_whiten":
                shapes += [(f,), (f, f)]
        return [(sh, {"type": "constant", "value": 0}) for sh in shapes]

    def _axes(self, x, per):
        """Axes to reduce for per=channel|feature|image on a batch x (N, ...sample)."""
        if per == "feature":
            return (0,)
        if per == "image":
            return tuple(range(1, x.ndim))
        return (0,) + tuple(range(2, x.ndim))

    def _shaped(self, stat, per, x):
        return stat if per == "feature" else stat.reshape((1, -1) + (1,) * (x.ndim - 2))

    def fit(self, raw, blobs):
        """Compute every step's statistics from the whole training source (N, ...sample)."""
        x = self._scaled(raw.astype(np.float64))
        k = 1
        for s in self.steps:
            t, per = s["type"], s["per"]
            if t in ("zero_center", "z_score", "linear_scale") and per != "image":
                axes = self._axes(x, per)
                if t == "zero_center":
                    blobs[k][...] = x.mean(axis=axes)
                elif t == "z_score":
                    blobs[k][...] = x.std(axis=axes)
                else:
                    blobs[k][0], blobs[k][1] = x.min(axis=axes), x.max(axis=axes)
                k += 1
            elif t == "pca_whiten":
                flat = x.reshape(len(x), -1)
                mean = flat.mean(axis=0)
                cov = np.cov(flat - mean, rowvar=False, bias=True).reshape(flat.shape[1], flat.shape[1])
                vals, vecs = np.linalg.eigh(cov)
                blobs[k][...] = mean
                blobs[k + 1][...] = vecs / np.sqrt(np.maximum(vals, 0) + s["epsilon"])
                k += 2
            x = self._step(x, s, blobs, k - self._n_stats(s))
        blobs[0][0] = 1

    @staticmethod
    def _n_stats(s):
        if s["type"] == "pca_whiten":
            return 2
        return 1 if s["type"] in ("zero_center", "z_score", "linear_scale") and s["per"] != "image" else 0

    def _step(self, x, s, blobs, k):
        t, per = s["type"], s["per"]
        if t == "zero_center":
            return x - (x.mean(axis=self._axes(x, per), keepdims=True) if per == "image"
                        else self._shaped(blobs[k], per, x))
        if t == "z_score":
            std = x.std(axis=self._axes(x, per), keepdims=True) if per == "image" else self._shaped(blobs[k], per, x)
            return x / np.where(std > 0, std, 1)  # never divide a constant feature by 0
        if t == "linear_scale":
            if per == "image":
                axes = self._axes(x, per)
                lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
            else:
                lo, hi = self._shaped(blobs[k][0], per, x), self._shaped(blobs[k][1], per, x)
            span = hi - lo
            return np.where(span > 0, 2 * (x - lo) / np.where(span > 0, span, 1) - 1, 0)
        if t == "log":
            return np.log1p(x)
        if t == "clip":
            return np.clip(x, s["min"], s["max"])
        if t == "binary_threshold":
            return (x > s["threshold"]).astype(x.dtype)
        flat = x.reshape(len(x), -1)  # pca_whiten
        return ((flat - blobs[k]) @ blobs[k + 1]).reshape(x.shape)

    def _scaled(self, x):
        if self.mean is not None:
            x = x - self.mean
        return x * self.p.scale if self.p.scale != 1 else x

    def _pad_fill(self, blobs):
        """(C,): what a padded position holds, a source value of 0 transformed as any pixel (mean, scale, the
        normalize steps), averaged over the positions of its channel."""
        zero = np.zeros((1,) + self.sample, np.float64)
        x = self._scaled(zero)
        if self.steps:
            k = 1
            for s in self.steps:
                x = self._step(x, s, blobs, k)
                k += self._n_stats(s)
        return np.broadcast_to(x, zero.shape).reshape(self.sample[0], -1).mean(axis=1).astype(self.dtype)

    # ---- per batch ----------------------------------------------------------------------------

    def apply(self, raw, out, blobs, rng):
        """raw (N, ...sample) -> out (N, ...out_shape)."""
        if self.augments and self.phase == "TRAIN":
            return self._augmented(raw, out, rng)
        pad = getattr(self.p, "pad", 0) if self.phase == "TRAIN" else 0
        if not self.steps and not self.p.crop_size and not self.p.mirror and not pad:
            np.copyto(out, raw, casting="unsafe")
            if self.mean is not None:
                out -= self.mean
            if self.p.scale != 1:
                out *= self.dtype.type(self.p.scale)
            return
        n_img, n = len(raw), self.p.crop_size
        h, w = self.sample[-2:] if len(self.sample) >= 2 else (1, self.sample[-1])
        tops, lefts = np.zeros(n_img, np.int64), np.zeros(n_img, np.int64)
        if n or pad:
            nh, nw = (n, n) if n else (h, w)
            for i in range(n_img):
                if self.phase == "TRAIN":
                    tops[i] = rng.integers(-pad, h - nh + pad + 1)
                    lefts[i] = rng.integers(-pad, w - nw + pad + 1)
                else:
                    tops[i], lefts[i] = (h - n) // 2, (w - n) // 2
        flips = rng.random(n_img) < 0.5 if self.p.mirror else np.zeros(n_img, np.bool_)
        if self.steps:
            if blobs[0][0] == 0:
                from netspec.errors import UserError
                raise UserError("the normalize statistics were never fitted: they come from the TRAIN data layer "
                                "of the same name (or the weights file); give the TEST data layer the TRAIN "
                                "layer's name")
            x, k = self._scaled(raw.astype(self.dtype)), 1
            for s in self.steps:
                x = self._step(x, s, blobs, k).astype(self.dtype, copy=False)
                k += self._n_stats(s)
            mean, scale = None, 1.0
        else:  # the plain Caffe transformer: one pass from the raw batch
            x, mean, scale = raw, self.mean, self.p.scale
        if getattr(self, "_full_mean", None) is None:  # (C, H, W), made once
            full = np.zeros(self.sample, self.dtype) if mean is None else np.broadcast_to(
                np.asarray(mean, self.dtype), self.sample)
            self._full_mean = np.ascontiguousarray(full.reshape((-1, h, w)))
            self._fill = self._pad_fill(blobs) if getattr(self.p, "pad", 0) else np.zeros(len(self._full_mean),
                                                                                          self.dtype)
        shaped = out.reshape((n_img, -1) + out.shape[-2:] if out.ndim >= 3 else (n_img, 1, 1, out.shape[-1]))
        crop_mirror(x.reshape((n_img, -1, h, w)), self._full_mean, self.dtype.type(scale), tops, lefts, flips,
                    self._fill, shaped)


# ---- augmentation helpers: one image (C, H, W) float32 ------------------------------------------------------

def _bilinear(img, ys, xs):
    """img sampled at float positions ys (h, w), xs (h, w); zeros outside."""
    c, h, w = img.shape
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = (ys - y0).astype(np.float32), (xs - x0).astype(np.float32)
    out = np.zeros((c,) + ys.shape, np.float32)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out += img[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)] * (wy * wx * inside)
    return out


def rotate(img, degrees):
    """Rotated about the centre by `degrees` (clockwise as displayed, rows down), the same size, zeros where
    nothing maps."""
    c, h, w = img.shape
    t = np.deg2rad(degrees)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys = cy + (yy - cy) * np.cos(t) - (xx - cx) * np.sin(t)
    xs = cx + (yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
    return _bilinear(img, ys, xs)


def resize_bilinear(img, size):
    """img (C, h, w) resized to size (H, W), pixel centres aligned (as PIL's and OpenCV's bilinear)."""
    c, h, w = img.shape
    oh, ow = size
    ys = np.clip((np.arange(oh) + 0.5) * h / oh - 0.5, 0, h - 1)
    xs = np.clip((np.arange(ow) + 0.5) * w / ow - 0.5, 0, w - 1)
    return _bilinear(img, *np.meshgrid(ys, xs, indexing="ij"))


def resized_crop_box(h, w, scale, ratio, rng):
    """(top, left, height, width) of a random-resized crop (Inception's): an area share in `scale` and an aspect
    ratio log-uniform in `ratio`; ten tries, then the centred largest box of an allowed ratio."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def jitter(img, brightness, contrast, saturation, rng):
    """Colour jitter in a random order of the three, each factor uniform in [1 - x, 1 + x]."""
    for op in rng.permutation(3):
        if op == 0 and brightness:
            img = img * rng.uniform(1 - brightness, 1 + brightness)
        elif op == 1 and contrast:
            grey = _grey(img).mean()
            img = (img - grey) * rng.uniform(1 - contrast, 1 + contrast) + grey
        elif op == 2 and saturation and img.shape[0] == 3:
            grey = _grey(img)[None]
            img = (img - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
    return img.astype(np.float32, copy=False)


def _grey(img):
    if img.shape[0] != 3:
        return img.mean(0)
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
