"""Record pycaffe's caffe.io on small images, for tests/test_caffe_parity.py's check of yaffe.io: resize_image (the
bilinear resize of 1- and 3-channel images through scikit-image, edges against the image's minimum, anti-aliased
where it shrinks; nearest with interp_order 0; other channel counts through scipy's zoom), Transformer.preprocess
(resize, transpose, channel swap, raw_scale, mean, input_scale) and load_image of RGB and RGBA PNGs in colour and in
grey; the ImageData layer's reading of PNGs and a JPEG (OpenCV's imread, BGR, and its bilinear resize), and
WindowData's crops (warp, context padding, square); and convert_imageset's LMDB records (needs python3-lmdb in
the chroot). Runs
inside the chroot with pycaffe (tests/caffe_parity/README.md; Debian bullseye: scikit-image 0.18,
scipy 1.6, Pillow 8.1):

    python3 make_io_fixture.py OUT.npz

The images come from NumPy's RandomState (images()), so the test makes them again; the fixture holds only Caffe's
results.
"""
import io
import os
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


# ImageData's reading (OpenCV's imread and resize, BGR): (file, channels stored, (new_height, new_width), is_color)
IMAGE_DATA = [
    ("a.png", 3, (24, 30), True),     # shrink by 1.54 x 1.77
    ("a.png", 3, (64, 80), True),     # grow
    ("a.png", 3, (50, 20), True),     # grow one way, shrink the other
    ("b.png", 3, (20, 26), True),     # exactly half: OpenCV takes its area path
    ("b.png", 3, (40, 52), True),     # the same size
    ("b.png", 3, (0, 0), True),       # no resize
    ("c.png", 1, (17, 61), True),     # a grey file in colour
    ("a.png", 3, (24, 30), False),    # a colour file in grey (PNG)
    ("c.png", 1, (31, 9), False),
    ("d.jpg", 3, (0, 0), True),       # a JPEG as stored
    ("d.jpg", 3, (45, 45), True),
    ("d.jpg", 3, (0, 0), False),      # a JPEG's luma
    ("d.jpg", 3, (30, 41), False),
    ("e.bmp", 3, (0, 0), False),      # OpenCV's own decoder's grey
    ("e.bmp", 3, (23, 15), True),
]


EXIF = range(1, 9)  # JPEG EXIF orientations, which OpenCV's imread applies


def exif_jpeg(orientation):
    """A 10 x 14 JPEG whose EXIF says `orientation`."""
    from PIL import Image
    y, x = np.mgrid[0:10, 0:14]
    im = Image.fromarray(np.stack([(x * 18) % 256, (y * 25) % 256, ((x + 2 * y) * 9) % 256], -1).astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def image_data_top(caffe, tmp, name, h, w, color):
    """Caffe's ImageData top (C, H, W) of one file of `tmp`, resized to h x w unless 0."""
    with open(os.path.join(tmp, "list.txt"), "w") as f:
        f.write(f"{name} 3\n")
    with open(os.path.join(tmp, "net.prototxt"), "w") as f:
        f.write(f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ '
                f'source: "{tmp}/list.txt" root_folder: "{tmp}/" batch_size: 1 new_height: {h} new_width: {w} '
                f'is_color: {"true" if color else "false"} }} }}\n')
    net = caffe.Net(os.path.join(tmp, "net.prototxt"), caffe.TEST)
    net.forward()
    return net.blobs["data"].data[0].copy()


def exif_data(caffe, tmp):
    """Caffe's ImageData top of each EXIF JPEG, colour and grey; and the files' bytes."""
    rec = {}
    for o in EXIF:
        data = exif_jpeg(o)
        rec[f"exif_file_{o}"] = np.frombuffer(data, np.uint8)
        with open(os.path.join(tmp, f"exif{o}.jpg"), "wb") as f:
            f.write(data)
        for color in (True, False):
            rec[f"exif_{o}_{'color' if color else 'grey'}"] = image_data_top(caffe, tmp, f"exif{o}.jpg", 0, 0, color)
    return rec


def image_files():
    """{name: pixels (H, W, 3 RGB or H, W)} of IMAGE_DATA's files: smooth gradients with noise, from a RandomState."""
    rng = np.random.RandomState(11)
    out = {}
    for name, shape in (("a.png", (37, 53)), ("b.png", (40, 52)), ("c.png", (29, 35)), ("d.jpg", (48, 64)),
                        ("e.bmp", (21, 26))):
        y, x = np.mgrid[0:shape[0], 0:shape[1]]
        chans = [128 + 90 * np.sin(x / (4.0 + 3 * c) + c) * np.cos(y / 7.0) for c in range(3)]
        img = np.clip(np.stack(chans, -1) + rng.randn(*shape, 3) * 8, 0, 255).astype(np.uint8)
        out[name] = img[:, :, 1] if name == "c.png" else img
    return out


def image_bytes(name, pixels):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format={"jpg": "JPEG", "png": "PNG", "bmp": "BMP"}[name[-3:]], quality=90)
    return buf.getvalue()


def image_data(caffe, tmp):
    """Caffe's ImageData top for each IMAGE_DATA case: {f"imagedata_{k}": (C, H, W) float32}, and the files' bytes
    (the JPEG's, so that the test decodes the same file)."""
    rec = {}
    for name, pixels in image_files().items():
        data = image_bytes(name, pixels)
        rec[f"file_{name}"] = np.frombuffer(data, np.uint8)
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    for k, (name, _, (h, w), color) in enumerate(IMAGE_DATA):
        rec[f"imagedata_{k}"] = image_data_top(caffe, tmp, name, h, w, color)
    return rec


# convert_imageset runs on IMAGE_DATA's files: (name, flags)
IMAGESET = [("plain", []), ("resized", ["--resize_height=9", "--resize_width=11"]), ("grey", ["--gray"])]
IMAGESET_LIST = "a.png 0\nd.jpg 3\nc.png 1\ne.bmp 7\nb.png 2\n"


def imageset(tmp):
    """convert_imageset's LMDB records of IMAGESET_LIST for each IMAGESET case: {f"imageset_{name}_keys": the keys
    joined by newlines (uint8), f"imageset_{name}_values": the records concatenated, f"..._sizes": their lengths}."""
    import subprocess
    import lmdb
    with open(os.path.join(tmp, "imageset.txt"), "w") as f:
        f.write(IMAGESET_LIST)
    rec = {}
    for name, flags in IMAGESET:
        db = os.path.join(tmp, f"db_{name}")
        subprocess.run(["convert_imageset", *flags, tmp + "/", os.path.join(tmp, "imageset.txt"), db], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = lmdb.open(db, readonly=True, lock=False)
        with env.begin() as txn:
            items = list(txn.cursor())
        env.close()
        rec[f"imageset_{name}_keys"] = np.frombuffer(b"\n".join(bytes(k) for k, _ in items), np.uint8)
        rec[f"imageset_{name}_values"] = np.frombuffer(b"".join(bytes(v) for _, v in items), np.uint8)
        rec[f"imageset_{name}_sizes"] = np.array([len(v) for _, v in items])
    return rec


WINDOW_DATA = [(0, "warp"), (16, "warp"), (8, "square")]  # (context_pad, crop_mode)


def window_files(tmp):
    """WindowData's inputs in `tmp`: a 120 x 160 PNG (a.png's recipe at another size) and a window file of one
    foreground and one background window, so that the batch (one of each) is the same whatever the sampling."""
    from PIL import Image
    rng = np.random.RandomState(3)
    y, x = np.mgrid[0:120, 0:160]
    chans = [128 + 100 * np.sin(x / 9.0 + c) * np.cos(y / 13.0) for c in range(3)]
    Image.fromarray(np.clip(np.stack(chans, -1) + rng.randn(120, 160, 3) * 6, 0, 255).astype(np.uint8)).save(
        os.path.join(tmp, "w.png"))
    with open(os.path.join(tmp, "windows.txt"), "w") as f:
        f.write(f"# 0\n{tmp}/w.png\n3\n120\n160\n2\n3 0.9 10 20 90 100\n0 0.1 5 8 40 50\n")


def window_net(tmp, pad, mode):
    return (f'layer {{ name: "d" type: "WindowData" top: "data" top: "label" window_data_param {{ '
            f'source: "{tmp}/windows.txt" batch_size: 2 fg_fraction: 0.5 context_pad: {pad} crop_mode: "{mode}" }} '
            'transform_param { crop_size: 48 mean_value: 104 mean_value: 117 mean_value: 123 } }\n')


def window_data(caffe, tmp):
    """Caffe's WindowData tops (warp without and with context, square): {f"window_{pad}_{mode}": (2, 3, 48, 48)}."""
    window_files(tmp)
    rec = {}
    for pad, mode in WINDOW_DATA:
        with open(os.path.join(tmp, "w.prototxt"), "w") as f:
            f.write(window_net(tmp, pad, mode))
        net = caffe.Net(os.path.join(tmp, "w.prototxt"), caffe.TRAIN)
        net.forward()
        rec[f"window_{pad}_{mode}"] = net.blobs["data"].data.copy()
        rec[f"window_{pad}_{mode}_label"] = net.blobs["label"].data.copy()
    return rec


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
        rec.update(image_data(caffe, tmp))
        rec.update(window_data(caffe, tmp))
        rec.update(imageset(tmp))
        rec.update(exif_data(caffe, tmp))
    np.savez_compressed(out_path, **rec)
    print("wrote", out_path, sorted(rec))


if __name__ == "__main__":
    main(sys.argv[1])
