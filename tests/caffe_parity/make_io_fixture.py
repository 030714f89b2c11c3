"""Record pycaffe's caffe.io on small images, for tests/test_caffe_parity.py's check of yaffe.io: resize_image (the
bilinear resize of 1- and 3-channel images through scikit-image, edges against the image's minimum, anti-aliased
where it shrinks; nearest with interp_order 0; other channel counts through scipy's zoom), Transformer.preprocess
(resize, transpose, channel swap, raw_scale, mean, input_scale) and load_image of RGB and RGBA PNGs in colour and in
grey. Runs inside the chroot with pycaffe (tests/caffe_parity/README.md; Debian bullseye: scikit-image 0.18,
scipy 1.6, Pillow 8.1):

    python3 make_io_fixture.py OUT.npz

The images come from NumPy's RandomState (images()), so the test makes them again; the fixture holds only Caffe's
results.
"""
import io
import sys

import numpy as np

# (name, input shape, output (h, w), interp_order, value range)
RESIZE = [
    ("mixed", (7, 9, 3), (12, 5), 1, (0, 1)),
    ("shrink", (10, 10, 1), (4, 4), 1, (0, 1)),
    ("shrink3", (24, 17, 3), (7, 9), 1, (0, 1)),
    ("grow", (5, 6, 3), (13, 17), 1, (0, 1)),
    ("zoom2", (8, 8, 2), (5, 11), 1, (0, 1)),
    ("zoom4", (6, 5, 4), (9, 3), 1, (0, 1)),
    ("nearest", (6, 7, 3), (9, 4), 0, (0, 1)),
    ("nearest_shrink", (11, 13, 1), (4, 5), 0, (0, 1)),
    ("same", (9, 9, 3), (9, 9), 1, (0, 1)),
    ("range", (6, 5, 3), (3, 8), 1, (-40, 255)),
    ("constant", (4, 4, 3), (6, 6), 1, (0.25, 0.25)),
]


def images():
    """The inputs of RESIZE, the Transformer's image and the PNGs' pixels, from one RandomState."""
    rng = np.random.RandomState(7)
    out = {}
    for name, shape, _, _, (lo, hi) in RESIZE:
        out[name] = (lo + (hi - lo) * rng.rand(*shape)).astype(np.float32)
    out["transformer"] = rng.rand(12, 10, 3).astype(np.float32)
    out["mean"] = (100 + 50 * rng.rand(3, 10, 12)).astype(np.float64)
    out["rgb_png"] = rng.randint(0, 256, (5, 7, 3)).astype(np.uint8)
    out["rgba_png"] = rng.randint(0, 256, (6, 4, 4)).astype(np.uint8)
    return out


def transformer(caffe):
    """caffe.io.Transformer for a 1 x 3 x 8 x 8 input with every step set, as Caffe's examples set them."""
    t = caffe.io.Transformer({"data": (1, 3, 8, 8)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.017)
    return t


def png_bytes(pixels):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def load_image(filename, color=True):
    """pycaffe's caffe.io.load_image with as_gray for as_grey: bullseye's scikit-image refuses the old spelling
    (the packaged load_image fails on every file with "unexpected keyword argument 'as_grey'")."""
    import skimage
    import skimage.io
    img = skimage.img_as_float(skimage.io.imread(filename, as_gray=not color)).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def main(out_path):
    import os
    import tempfile
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    ims = images()
    rec = {}
    for name, _, dims, order, _ in RESIZE:
        rec[f"resize_{name}"] = caffe.io.resize_image(ims[name], dims, interp_order=order)
    t = transformer(caffe)
    rec["preprocess"] = t.preprocess("data", ims["transformer"])
    rec["deprocess"] = t.deprocess("data", rec["preprocess"])
    t.set_mean("data", ims["mean"])  # a per-pixel mean of another size: resized to the input
    rec["preprocess_pixel_mean"] = t.preprocess("data", ims["transformer"])
    with tempfile.TemporaryDirectory() as tmp:
        for key in ("rgb_png", "rgba_png"):
            path = os.path.join(tmp, key + ".png")
            with open(path, "wb") as f:
                f.write(png_bytes(ims[key]))
            rec[f"load_{key}_color"] = load_image(path)
            rec[f"load_{key}_grey"] = load_image(path, color=False)
    np.savez_compressed(out_path, **rec)
    print("wrote", out_path, sorted(rec))


if __name__ == "__main__":
    main(sys.argv[1])
