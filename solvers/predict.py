"""`run.py predict`: a trained net on new inputs, as Caffe's classification example and extract_features.

The net runs in TEST. A deploy net (an Input layer) takes the rows as they are, after the optional --scale and
--mean; a net with a data layer takes them through that layer's TEST transform (scale, mean, centre crop,
normalize statistics from the weights) and runs the layers above it. Inputs: image files, folders of images,
list files (`path [label]` lines), .npz, .csv[.gz], IDX, LMDB or LevelDB; images are read as the ImageData layer
reads them (BGR as Caffe's OpenCV reads them, or grey for one channel) and resized to the input's size by
OpenCV's bilinear arithmetic, as Caffe's classification example resizes them.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from layers import sources
from netspec.errors import UserError
from netspec.net import Net
from netspec.progress import Progress
from netspec.spec import load_net
from . import snapshot as snap

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


def _image(path, channels, hw):
    from layers.images import read_image
    try:
        return read_image(path, channels != 1, *(hw or (0, 0))).astype(np.float32)
    except sources.SourceError as e:
        raise UserError(f"{path}: error: {e}") from None


def read_inputs(paths, sample_shape):
    """(rows (N, ...) float32 as the source holds them, names of the rows) from every path given."""
    rows, names = [], []
    channels = sample_shape[0] if len(sample_shape) == 3 else 3
    hw = tuple(sample_shape[1:]) if len(sample_shape) == 3 else None
    for path in paths:
        database = any(os.path.isfile(os.path.join(path, f)) for f in ("data.mdb", "CURRENT"))  # LMDB, LevelDB
        if os.path.isdir(path) and not database:
            found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise UserError(f"{path}: error: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for f in found:
                rows.append(_image(f, channels, hw))
                names.append(f)
        elif path.lower().endswith(IMAGE_SUFFIXES):
            if not os.path.isfile(path):
                raise UserError(f"{path}: error: no such file")
            rows.append(_image(path, channels, hw))
            names.append(path)
        else:
            # a list file of `path [label]` lines where it is no other kind (or nothing readable: read_any says which)
            kind = sources.kind_or_none(path) or "list"
            try:
                with sources.reading():
                    if kind == "list":
                        data, _ = sources.read_any(path, None, hw, gray=channels == 1, need_labels=False)
                    else:
                        data, _ = sources.read_any(path, list(sample_shape) if kind == "csv" else None)
            except sources.SourceError as e:
                raise UserError(f"{path}: error: {e}") from None
            data = np.asarray(data, np.float32)
            if hw and data.ndim == 4 and data.shape[2:] != hw:
                raise UserError(f"{path}: error: its examples are {list(data.shape[1:])} but the net takes "
                                f"{list(sample_shape)}; resize them, or use a net for that size")
            rows.extend(data)
            names.extend(f"{path}[{i}]" for i in range(len(data)))
    if not rows:
        raise UserError("no inputs given")
    shapes = {r.shape for r in rows}
    if len(shapes) > 1:
        raise UserError(f"the inputs have different shapes ({', '.join(str(list(s)) for s in sorted(shapes))}); "
                        "give examples of one shape")
    return np.stack(rows), names


class Predictor:
    """A TEST net with weights, fed batches of rows at its input blob."""

    def __init__(self, model, weights, scale=None, mean=None, batch=None):
        doc = load_net(model)
        self.net = net = Net(doc, "TEST", model, seed=0)
        net.keep_for_backward = False
        if weights:
            said = net.load_weights(snap.load_weights_file(weights), weights).warning()
            if said:
                print(f"Warning: {said}", file=sys.stderr)
        net.constant_weights = True  # nothing changes them while predicting: BatchNorm folds made once
        self.start, self.source = 0, None
        for i, (d, layer) in enumerate(zip(net.defs, net.layers)):
            if layer.type == "Input" or (layer.is_data and not hasattr(layer, "sample_shapes")):  # (DummyData)
                self.input = d.tops[0]
                self.start = i + 1
                break
            if layer.is_data:
                self.input, self.source, self.start = d.tops[0], layer, i + 1
                break
        else:
            raise UserError(f"{model}: error: the net has no Input or data layer to feed; predict needs a deploy net "
                            "(an Input layer) or a net with a TEST data layer")
        shape = net.shapes[self.input]
        self.sample = tuple(self.source.sample_shapes[0]) if self.source is not None else tuple(shape[1:])
        self.batch = int(batch or shape[0])
        self.scale, self.mean = scale, mean

    def outputs(self, blobs):
        """The blobs to report: those named, else the net's outputs (for a net with a loss, its input instead)."""
        net = self.net
        if blobs:
            missing = [b for b in blobs if b not in net.blobs]
            if missing:
                raise UserError(f"no blob {missing[0]!r} in the net (blobs: {', '.join(net.blobs)})")
            return list(blobs)
        losses = [d for d, l in zip(net.defs, net.layers) if l.is_loss or l.type == "Accuracy"]
        if losses:  # a train/test net: the scores the loss reads (the blob a Split copied them from)
            return [self._unsplit(losses[0].bottoms[0])]
        return list(net.outputs)

    def _unsplit(self, blob):
        split = {t: d.bottoms[0] for d in self.net.defs if d.type == "Split" for t in d.tops}
        while blob in split:
            blob = split[blob]
        return blob

    def softmax_loss_reading(self, blobs):
        """The name of the SoftmaxWithLoss whose scores (N, C) are the reported blob (no --blobs), or None."""
        if blobs:
            return None
        d = next((d for d, l in zip(self.net.defs, self.net.layers) if l.is_loss or l.type == "Accuracy"), None)
        if d is None:
            return None
        scores = self._unsplit(d.bottoms[0])
        soft = next((e for e in self.net.defs if e.type == "SoftmaxWithLoss" and self._unsplit(e.bottoms[0]) == scores),
                    None)
        return soft.name if soft is not None and self.net.blobs[scores].data.ndim == 2 else None

    def _feed(self, rows):
        """Put the rows at the input blob (transformed as the data layer would); True where the shapes changed."""
        net, n = self.net, len(rows)
        blob = net.blobs[self.input]
        if self.source is not None:
            tf = self.source.transformer
            tf.phase = "TEST"
            shape = (n,) + tuple(tf.out_shape)
        else:
            if blob.data.shape[1:] != rows.shape[1:]:
                raise UserError(f"the inputs are {list(rows.shape[1:])} but the net's input '{self.input}' takes "
                                f"{list(blob.data.shape[1:])}")
            shape = (n,) + blob.data.shape[1:]
        changed = blob.data.shape != shape
        if changed:
            blob.reshape(shape)
            d = net.defs[self.start - 1]
            for t in d.tops[1:]:  # a data layer's labels: a batch of n too (unused)
                net.blobs[t].reshape((n,) + net.blobs[t].data.shape[1:])
        if self.source is not None:
            stats = [b.data for b in self.source.blobs][:getattr(self.source, "n_data_stats", None)]
            tf.apply(rows, blob.data, stats, np.random.default_rng(0))
        else:
            x = rows.astype(np.float32)
            if self.mean is not None:
                x = x - self._fit_mean(x.shape[1:])
            if self.scale is not None:
                x = x * self.scale
            blob.data[...] = x
        return changed

    def _fit_mean(self, shape):
        """--mean for inputs of `shape` (C, H, W): as given, or a mean image of another size as its channels'
        means (as Caffe's classification example takes a 256 x 256 mean for a 227 x 227 input)."""
        mean = np.asarray(self.mean, np.float32)
        if mean.ndim == 4 and mean.shape[0] == 1:
            mean = mean[0]
        if len(shape) == 3 and mean.ndim == 3 and mean.shape[1:] != tuple(shape[1:]) and mean.shape[1:] != (1, 1):
            mean = mean.mean(axis=(1, 2), keepdims=True)
        try:
            fits = np.broadcast_shapes(mean.shape, tuple(shape)) == tuple(shape)
        except ValueError:
            fits = False
        if not fits:
            raise UserError(f"--mean: its shape {list(mean.shape)} does not fit the input's {list(shape)}; give one "
                            f"value per channel ({shape[0]}) or a mean image of {shape[0]} channels")
        return mean

    def run(self, rows, blobs):
        """{blob: (N, ...) array} for all rows, in batches."""
        from .replicas import start
        net, names = self.net, self.outputs(blobs)
        if not set(names) <= net.keep_blobs:
            net.keep_blobs = net.keep_blobs | set(names)  # (a folding that would leave one unwritten is not made)
        parts = {b: [] for b in names}
        total = len(rows)
        slices = None  # the batch as slices on the threads (solvers/replicas.py), made at the first batch
        try:
            for s in range(0, total, self.batch):
                chunk = rows[s:s + self.batch]
                n = len(chunk)
                if slices and n < self.batch:  # a last, shorter batch: padded (each row's outputs are its own
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, axis=0)])  # in a split net)
                if self._feed(chunk):
                    net.reshape(self.start - 1)
                if slices is None:
                    slices = start(net, None)[0] or False
                if slices:
                    slices.forward(sources=False)
                else:
                    net.forward(self.start)
                for b in names:
                    v = net.blobs[b].data
                    parts[b].append(np.array(v[:n] if v.ndim and len(v) == len(chunk) else v))
                Progress.update(min(s + self.batch, total), total, "predicting")
        finally:
            if slices:
                slices.close()
        Progress.close()
        return {b: np.concatenate(p) if p[0].ndim else np.array(p) for b, p in parts.items()}


def _labels(path):
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise UserError(f"{path}: error: cannot read the labels file ({e.strerror})") from None


def _mean(value):
    """--mean: a .npy / .binaryproto file, or comma-separated values per channel."""
    if value is None:
        return None
    if os.path.isfile(value):
        if value.endswith(".binaryproto"):
            from netspec.caffemodel import read_blob
            with open(value, "rb") as f:
                return read_blob(f.read())[0]
        return np.load(value)
    try:
        return np.array([float(v) for v in value.split(",")], np.float32).reshape(-1, 1, 1)
    except ValueError:
        raise UserError(f"--mean {value!r}: give a .npy or .binaryproto file, or values per channel such as "
                        "104,117,123") from None


def predict(model, weights, inputs, blobs=None, labels=None, top_k=5, output=None, scale=None, mean=None,
            batch=None, out=print) -> dict:
    p = Predictor(model, weights, scale, _mean(mean), batch)
    rows, names = read_inputs(inputs, p.sample)
    results = p.run(rows, blobs)
    names_of = _labels(labels)
    scores = results[p.outputs(blobs)[0]]
    flat = scores.reshape(len(rows), -1)
    k = max(1, min(top_k, flat.shape[1]))
    top = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    if names_of is not None and len(names_of) != flat.shape[1]:
        raise UserError(f"{labels}: error: {len(names_of)} labels for {flat.shape[1]} classes; give one line per "
                        "class, in the order of the net's outputs")
    shown, loss = flat, p.softmax_loss_reading(blobs)
    if loss is not None:  # the logits a SoftmaxWithLoss reads: printed as the probabilities it computes
        e = np.exp(flat - flat.max(axis=1, keepdims=True))
        shown = e / e.sum(axis=1, keepdims=True)
        out(f"(softmax probabilities of '{p.outputs(blobs)[0]}', the scores SoftmaxWithLoss '{loss}' reads"
            + ("; the file gets the scores)" if output else ")"))
    if output is None or not output.endswith((".csv", ".jsonl")):
        for name, idx, row in zip(names, top, shown):
            picks = ", ".join(f"{row[j]:.4f} {names_of[j] if names_of else j}" for j in idx)
            out(f"{name}: {picks}")
    if output:
        _write(output, names, results, top, flat, names_of)
        out(f"Wrote {output} ({len(names)} inputs: {', '.join(results)})")
    return {"names": names, "top": top, **results}


def _write(output, names, results, top, flat, labels):
    if output.endswith(".npz"):
        snap.save_npz(output, {"inputs": np.array(names), "top_k": top, **results})
    elif output.endswith(".jsonl"):
        with open(output, "w") as f:
            for i, name in enumerate(names):
                record = {"input": name, "top_k": [{"class": int(j), "score": float(flat[i, j]),
                                                    **({"label": labels[j]} if labels else {})} for j in top[i]]}
                record.update({b: np.asarray(v[i]).tolist() for b, v in results.items()})
                f.write(json.dumps(record) + "\n")
    elif output.endswith(".csv"):
        with open(output, "w") as f:
            header = ["input", "top1"] + [f"{b}_{j}" for b, v in results.items()
                                          for j in range(int(np.prod(v.shape[1:])))]
            f.write(",".join(header) + "\n")
            for i, name in enumerate(names):
                values = [f"{x:.7g}" for v in results.values() for x in np.asarray(v[i]).ravel()]
                f.write(",".join([json.dumps(name), str(int(top[i, 0]))] + values) + "\n")
    elif any(os.path.splitext(d)[1] for d in output.split(",")):
        raise UserError(f"-o {output}: write .npz, .csv or .jsonl, or name LMDB folders (fc7_db,fc8_db: one per blob, "
                        "as extract_features writes them)")
    else:
        _write_dbs(output, results)


def feature_datum(values) -> bytes:
    """A Datum of one input's blob values as extract_features writes it: channels, height, width the blob's axes
    1-3 (1 where it has fewer), the values as float_data, one field each (caffe.proto's unpacked repeated float)."""
    from netspec.caffemodel import _int_field
    v = np.asarray(values, "<f4")
    dims = list(v.shape) + [1] * (3 - v.ndim)
    c, h, w = dims[0], dims[1], int(np.prod(dims[2:]))
    return (_int_field(1, c) + _int_field(2, h) + _int_field(3, w)
            + b"".join(b"\x35" + x.tobytes() for x in v.reshape(-1, 1)))  # (field 6, wire type 5)


def _write_dbs(output, results, backend="lmdb", flag="-o"):
    """-o fc7_db,fc8_db: an LMDB (or LevelDB) per blob (in --blobs order) of a Datum per input, keys 0000000000, ...,
    as Caffe's extract_features writes them."""
    dbs = [d for d in output.split(",") if d]
    if len(dbs) != len(results):
        raise UserError(f"{flag} {output}: {len(dbs)} databases for {len(results)} blobs ({', '.join(results)}); "
                        "write .npz, .csv or .jsonl, or name one LMDB folder per blob as extract_features does")
    _new_dbs(dbs, flag)
    for db, values in zip(dbs, results.values()):
        sources._write_records(db, backend, ((f"{i:010d}", feature_datum(v)) for i, v in enumerate(values)))


def _new_dbs(dbs, flag):
    for db in dbs:
        if os.path.exists(db):
            raise UserError(f"{flag} {db}: error: it exists; extract_features writes a new database (remove it "
                            "first)")


def extract_features(weights, model, blobs, dbs, batches, db_type="lmdb", out=print) -> dict:
    """Caffe's tools/extract_features: the TEST net of `model` (its own data layer: an ImageData list, an LMDB)
    with `weights`, run for `batches` mini-batches; each named blob (comma-separated) to its database (an LMDB or
    LevelDB per blob), a Datum per example as extract_features writes them."""
    from solvers.snapshot import load_weights_file
    net = Net(load_net(model), "TEST", model, seed=0)
    said = net.load_weights(load_weights_file(weights), weights).warning()
    if said:
        print(f"Warning: {said}", file=sys.stderr)
    names = [b for b in blobs.split(",") if b]
    missing = [b for b in names if b not in net.blobs]
    if missing:
        raise UserError(f"{model}: error: the TEST net has no blob '{missing[0]}' (blobs: {', '.join(net.blobs)}); "
                        "name the blobs to extract")
    if db_type.lower() not in ("lmdb", "leveldb"):
        raise UserError(f"db_type {db_type!r}: error: extract_features writes lmdb or leveldb; give one of them")
    count = len([d for d in dbs.split(",") if d])
    if count != len(names):  # (before running the net)
        raise UserError(f"{dbs}: error: {count} databases for {len(names)} blobs ({blobs}); give one per blob")
    _new_dbs([d for d in dbs.split(",") if d], "save_feature_dataset_names")  # (before the net runs, too)
    out("Extracting Features")
    results = {b: [] for b in names}
    for _ in range(batches):
        net.forward()
        for b in names:
            results[b].append(net.blobs[b].data.copy())
    results = {b: np.concatenate(v) for b, v in results.items()}
    _write_dbs(dbs, results, db_type.lower(), flag="save_feature_dataset_names")
    for b, v in results.items():
        out(f"Extracted features of {len(v)} query images for feature blob {b}")
    out("Successfully extracted the features!")
    return results
