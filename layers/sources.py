"""Readers of the files a data layer can serve: .npz, .csv/.csv.gz, MNIST-style IDX, and Caffe's HDF5
lists. Each gives the per-example shapes without reading the data (for shape inference) and the arrays.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import warnings
import zipfile

import numpy as np

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class SourceError(Exception):
    """A problem with a data file; the layer adds its name and the spec position."""


def open_maybe_gz(path, mode="rb"):
    return gzip.open(path, mode) if path.endswith(".gz") else open(path, mode)


def kind(path: str) -> str:
    name = os.path.basename(path)
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if re.search(r"idx\d-ubyte(\.gz)?$", name):
        return "idx"
    raise SourceError("unknown file type; use .npz, .csv, .csv.gz or an IDX file (*-idx3-ubyte[.gz])")


# ---- npz ---------------------------------------------------------------------------------------

def npz_headers(path):
    """{array name: shape} from the npy headers only."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    with z.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        out[info.filename[:-4]] = tuple(read(f)[0])
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise SourceError(f"not a readable .npz file ({e})") from None
    return out


def npz_inspect(path, tops):
    arrays = npz_headers(path)
    missing = [t for t in tops if t not in arrays]
    if missing:
        raise SourceError(f"has no array named {missing[0]!r} for the top of that name (arrays: "
                          f"{', '.join(sorted(arrays))}); name the tops after the arrays")
    rows = {arrays[t][0] if arrays[t] else 0 for t in tops}
    if len(rows) != 1:
        raise SourceError(f"arrays {tops} have different numbers of rows {sorted(rows)}")
    return [arrays[t][1:] for t in tops]


def npz_load(path, tops, dtype):
    with np.load(path) as z:
        return [np.ascontiguousarray(z[t], dtype=dtype) for t in tops]


# ---- csv ---------------------------------------------------------------------------------------

def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def csv_header_lines(path) -> int:
    with open_maybe_gz(path, "rt") as f:
        first = f.readline()
    return 0 if any(_is_number(v) for v in first.strip().split(",")) else 1


def csv_inspect(path, tops, sample_shape):
    with open_maybe_gz(path, "rt") as f:
        first = f.readline().strip().split(",")
    if len(first) < 2:
        raise SourceError("a csv row needs at least one feature and a label")
    features = len(first) - 1
    if sample_shape:
        shape = tuple(sample_shape)
        if math.prod(shape) != features:
            raise SourceError(f"sample_shape {list(shape)} holds {math.prod(shape)} values but each row has "
                              f"{features} features")
    else:
        side = math.isqrt(features)
        shape = (1, side, side) if side * side == features and side > 1 else (features,)
    return [shape, ()][:len(tops) or 1]


def csv_load(path, tops, dtype, sample_shape):
    skip = csv_header_lines(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported by the caller
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=skip, ndmin=2)
    except ValueError as e:
        raise SourceError(f"cannot read the csv ({e}); every row must be numbers separated by commas: the "
                          "features, then the label") from None
    n = table.shape[0]
    return [table[:, :-1].reshape((n,) + tuple(sample_shape)).astype(dtype), table[:, -1].astype(dtype)][:len(tops)]


# ---- IDX (MNIST) -------------------------------------------------------------------------------

def idx_labels_path(path):
    """The labels file beside an images file: train-images-idx3-ubyte.gz -> train-labels-idx1-ubyte.gz."""
    return os.path.join(os.path.dirname(path), re.sub(r"images-idx3", "labels-idx1", os.path.basename(path)))


def idx_header(path):
    with open_maybe_gz(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] or head[1] or head[2] not in IDX_TYPES:
            raise SourceError(f"{os.path.basename(path)} is not an IDX file (bad magic number {head.hex()})")
        dims = np.frombuffer(f.read(4 * head[3]), ">u4").astype(int)
    return IDX_TYPES[head[2]], tuple(dims)


def idx_inspect(path, tops):
    _, dims = idx_header(path)
    sample = (1,) + dims[1:] if len(dims) == 3 else dims[1:]  # images get a channel axis
    shapes = [sample]
    if len(tops) > 1:
        labels = idx_labels_path(path)
        if not os.path.isfile(labels):
            raise SourceError(f"the labels file {labels} is not beside the images; put it there or use one top")
        _, ldims = idx_header(labels)
        if ldims[0] != dims[0]:
            raise SourceError(f"{os.path.basename(path)} has {dims[0]} images but {os.path.basename(labels)} has "
                              f"{ldims[0]} labels")
        shapes.append(ldims[1:])
    return shapes


def idx_read(path, dtype):
    kind_, dims = idx_header(path)
    with open_maybe_gz(path) as f:
        f.read(4 + 4 * len(dims))
        data = np.frombuffer(f.read(), kind_)
    if data.size != math.prod(dims):
        raise SourceError(f"{os.path.basename(path)} is truncated: {data.size} values, the header says "
                          f"{math.prod(dims)}")
    return data.reshape(dims).astype(dtype)


def idx_load(path, tops, dtype):
    images = idx_read(path, dtype)
    if images.ndim == 3:
        images = images[:, None]
    out = [images]
    if len(tops) > 1:
        out.append(idx_read(idx_labels_path(path), dtype))
    return out


# ---- HDF5 lists (Caffe's HDF5Data) -------------------------------------------------------------

def h5py_module():
    try:
        import h5py
    except ImportError:
        raise SourceError("HDF5 files need h5py: pip install 'yaffe[hdf5]' (or pip install h5py)") from None
    return h5py


def hdf5_files(list_path):
    base = os.path.dirname(list_path)
    with open(list_path) as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not names:
        raise SourceError("lists no .h5 files; put one path per line")
    paths = [n if os.path.isabs(n) else os.path.join(base, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SourceError(f"lists {missing[0]}, which does not exist (paths are relative to the list file)")
    return paths


def hdf5_inspect(list_path, tops):
    h5py = h5py_module()
    paths = hdf5_files(list_path)
    with h5py.File(paths[0], "r") as f:
        missing = [t for t in tops if t not in f]
        if missing:
            raise SourceError(f"{paths[0]} has no dataset {missing[0]!r} (datasets: {', '.join(f.keys())}); name "
                              "the tops after the datasets")
        return [tuple(f[t].shape[1:]) for t in tops]


def hdf5_load(list_path, tops, dtype):
    h5py = h5py_module()
    parts = [[] for _ in tops]
    for p in hdf5_files(list_path):
        with h5py.File(p, "r") as f:
            for k, t in enumerate(tops):
                parts[k].append(np.asarray(f[t], dtype=dtype))
    arrays = [np.concatenate(a) for a in parts]
    if len({a.shape[0] for a in arrays}) != 1:
        raise SourceError(f"the datasets {tops} have different numbers of rows")
    return arrays
