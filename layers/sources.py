"""Readers of the files a data layer can serve: .npz, .csv/.csv.gz, MNIST-style IDX, and Caffe's HDF5
lists. Each gives the per-example shapes without reading the data (for shape inference) and the arrays.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
import struct
import warnings
import zipfile

import numpy as np

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class SourceError(Exception):
    """A problem with a data file; the layer adds its name and the spec position."""


# datasets that Debian packages, where a missing file most likely means the package is not installed
PACKAGED = {"/usr/share/datasets/fashion-mnist/": "sudo apt-get install dataset-fashion-mnist"}


def missing(path: str, relative_to: str | None) -> SourceError:
    """The error for a source that does not exist: where a relative path was looked for, and what installs a
    packaged dataset."""
    if not os.path.isabs(path) or relative_to is None:
        return SourceError(f"no such file; the path is relative to {relative_to or 'the net file'}")
    for prefix, fix in PACKAGED.items():
        if path.startswith(prefix):
            return SourceError(f"no such file; this dataset is a Debian package: {fix}")
    return SourceError("no such file; give the path of an existing file ('run.py data convert' writes an LMDB or "
                       "an .npz from other formats)")


# What reading a malformed file raises, from the standard library, NumPy, Pillow, h5py, lmdb: all are the file's
# fault, never yaffe's, and become SourceError (reading()).
FILE_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, UnicodeError, zipfile.BadZipFile,
               OverflowError, MemoryError, struct.error)


@contextlib.contextmanager
def reading():
    """Turn what a malformed data file raises into SourceError with the reader's words."""
    try:
        yield
    except (SourceError, FileNotFoundError):
        raise  # a missing file: its callers name it with their own words
    except FILE_ERRORS as e:
        raise SourceError(f"cannot read it ({_describe(e)}); check that it is the kind of file its name says") from None
    except Exception as e:  # noqa: BLE001: Pillow's DecompressionBombError, h5py's and lmdb's own errors
        if type(e).__module__.split(".")[0] in ("PIL", "h5py", "lmdb", "plyvel"):
            raise SourceError(f"cannot read it ({_describe(e)})") from None
        raise


def _describe(e: BaseException) -> str:
    text = str(e).split("\n")[0][:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def open_maybe_gz(path, mode="rb"):
    return gzip.open(path, mode) if path.endswith(".gz") else open(path, mode)


def kind(path: str, backend: str | None = None) -> str:
    name = os.path.basename(path.rstrip("/"))
    if backend == "LMDB" or os.path.isfile(os.path.join(path, "data.mdb")):
        return "lmdb"
    if backend == "LEVELDB" or os.path.isfile(os.path.join(path, "CURRENT")):
        return "leveldb"
    if os.path.exists(path) and not os.path.isfile(path):  # a folder, a FIFO, a device (a link to /dev/zero)
        what = "a folder" if os.path.isdir(path) else "not a regular file (a pipe, a device or a link to one)"
        raise SourceError(f"is {what}; give a data file (.npz, .csv, IDX), or an LMDB or LevelDB folder")
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if re.search(r"idx\d-ubyte(\.gz)?$", name):
        return "idx"
    if name.endswith(".bin") and cifar_record(path):
        return "cifar"
    raise SourceError("unknown file type; use .npz, .csv, .csv.gz, an IDX file (*-idx3-ubyte[.gz]) or a CIFAR "
                      "binary batch (data_batch_1.bin)")


# ---- CIFAR binary batches (Caffe's data/cifar10, examples/cifar10/convert_cifar_data) ----------

CIFAR_IMAGE = (3, 32, 32)


def cifar_record(path) -> int:
    """The bytes of one record of a CIFAR binary batch: 3073 for CIFAR-10 (a label byte, then 3072 pixel bytes:
    the R, G and B planes of a 32x32 image), 3074 for CIFAR-100 (coarse and fine label bytes; train.bin,
    test.bin); 0 where the file is neither."""
    size, name = os.path.getsize(path) if os.path.isfile(path) else -1, os.path.basename(path)
    if size > 0 and name in ("train.bin", "test.bin") and size % 3074 == 0:
        return 3074
    return 3073 if size > 0 and size % 3073 == 0 else 0


def cifar_load(path, tops, dtype, images_as_stored=False):
    """(images (N, 3, 32, 32), labels (N,)) of a CIFAR binary batch, the planes in the file's order (R, G, B, as
    convert_cifar_data stores them), CIFAR-100's fine label; images_as_stored: uint8, else dtype."""
    record = cifar_record(path)
    raw = np.fromfile(path, np.uint8).reshape(-1, record)
    images = np.ascontiguousarray(raw[:, record - 3072:]).reshape((-1,) + CIFAR_IMAGE)
    return [_as(images, None if images_as_stored else dtype), raw[:, record - 3073].astype(dtype)][:len(tops) or 1]


# ---- npz ---------------------------------------------------------------------------------------

def kind_or_none(path):
    """kind(path), or None where it is none of the known files (an image list)."""
    try:
        return kind(path)
    except SourceError:
        return None


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
    with np.load(path, allow_pickle=False) as z:
        missing = [t for t in tops if t not in z.files]
        if missing:
            raise SourceError(f"has no array named {missing[0]!r} (it holds {', '.join(z.files) or 'none'}); "
                              "name the arrays after the layer's tops")
        arrays = [z[t] for t in tops]
    for t, a in zip(tops, arrays):
        if a.dtype.kind not in "biuf":
            raise SourceError(f"array {t!r} holds {a.dtype} values; data and labels must be real numbers")
        if a.ndim == 0:
            raise SourceError(f"array {t!r} is a single value; it needs one entry per example")
    if len({len(a) for a in arrays}) > 1:
        raise SourceError(f"its arrays hold different numbers of examples ({', '.join(str(len(a)) for a in arrays)})")
    return [np.ascontiguousarray(a, dtype=dtype) for a in arrays]


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
    if n == 0 or table.shape[1] < 2:
        raise SourceError("has no data rows (a row is the features, then the label)" if n == 0 else
                          "a row needs at least one feature and a label")
    if math.prod(sample_shape) != table.shape[1] - 1:
        raise SourceError(f"its rows have {table.shape[1] - 1} features but the first row promised "
                          f"{math.prod(sample_shape)}")
    return [table[:, :-1].reshape((n,) + tuple(sample_shape)).astype(dtype), table[:, -1].astype(dtype)][:len(tops)]


# ---- IDX (MNIST) -------------------------------------------------------------------------------

def idx_labels_path(path):
    """The labels file beside an images file: train-images-idx3-ubyte.gz -> train-labels-idx1-ubyte.gz."""
    name = os.path.basename(path)
    if "images-idx3" not in name:
        raise SourceError(f"cannot tell where its labels are: name the images file <set>-images-idx3-ubyte[.gz] "
                          "and put <set>-labels-idx1-ubyte[.gz] beside it (or use one top)")
    return os.path.join(os.path.dirname(path), name.replace("images-idx3", "labels-idx1"))


def _stored_bytes(path) -> int:
    """The bytes a file holds once decompressed: its size, or a .gz file's ISIZE trailer (the size mod 2^32)."""
    size = os.path.getsize(path)
    if not path.endswith(".gz") or size < 4:
        return size
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def idx_header(path):
    """(dtype, dims) from an IDX header, checked against the size of the file (a header may claim any size)."""
    with open_maybe_gz(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] or head[1] or head[2] not in IDX_TYPES:
            raise SourceError(f"{os.path.basename(path)} is not an IDX file (bad magic number {head.hex()})")
        if not 1 <= head[3] <= 8:
            raise SourceError(f"{os.path.basename(path)}: an IDX header with {head[3]} dimensions (1 to 8 expected)")
        raw = f.read(4 * head[3])
        if len(raw) < 4 * head[3]:
            raise SourceError(f"{os.path.basename(path)} is truncated inside its header")
        dims = tuple(int(d) for d in np.frombuffer(raw, ">u4"))
    need = math.prod(dims) * np.dtype(IDX_TYPES[head[2]]).itemsize
    have = _stored_bytes(path) - 4 - 4 * head[3]
    if need > have and not (path.endswith(".gz") and need >= 1 << 32):  # ISIZE is the size mod 2^32
        raise SourceError(f"{os.path.basename(path)}: the header says {' x '.join(map(str, dims))} values "
                          f"({need:,} bytes) but the file holds {max(have, 0):,}; the file is truncated or not IDX")
    return IDX_TYPES[head[2]], dims


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
    return _as(data.reshape(dims), dtype)


def idx_load(path, tops, dtype, images_as_stored=False):
    """(images (N, 1, H, W) or rows, labels); images_as_stored: their IDX type (uint8 for MNIST: a quarter of
    float32's memory), else dtype."""
    stored = images_as_stored and np.dtype(idx_header(path)[0]) == np.uint8
    images = idx_read(path, None if stored else dtype)
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


def hdf5_load(list_path, tops, dtype, with_lengths=False):
    """Every file's datasets, one array per top made for all the files' rows (from their shapes, read first) and
    filled file by file: the data once in memory, not as parts and then their concatenation."""
    h5py = h5py_module()
    paths, shapes = hdf5_files(list_path), []
    for p in paths:
        with h5py.File(p, "r") as f:
            missing = [t for t in tops if t not in f]
            if missing:
                raise SourceError(f"{p} has no dataset {missing[0]!r} (datasets: {', '.join(f.keys())})")
            shapes.append([tuple(f[t].shape) for t in tops])
    for p, shape in zip(paths, shapes):
        if len({s[0] if s else 1 for s in shape}) != 1:
            raise SourceError(f"the datasets {tops} have different numbers of rows in {p}")
        for t, s, s0 in zip(tops, shape, shapes[0]):
            if s[1:] != s0[1:]:
                raise SourceError(f"{p}: dataset {t!r} has rows of shape {list(s[1:])}, {paths[0]}'s "
                                  f"{list(s0[1:])}; every file's rows must have one shape")
    lengths = [shape[0][0] if shape[0] else 1 for shape in shapes]
    arrays = [np.empty((sum(lengths),) + s0[1:], dtype) for s0 in shapes[0]]
    start = 0
    for p, n in zip(paths, lengths):
        with h5py.File(p, "r") as f:
            for k, t in enumerate(tops):
                arrays[k][start:start + n] = np.asarray(f[t]).reshape((n,) + arrays[k].shape[1:])
        start += n
    return (arrays, lengths) if with_lengths else arrays


# ---- LMDB of Caffe Datum records ---------------------------------------------------------------

def lmdb_module():
    try:
        import lmdb
    except ImportError:
        raise SourceError("an LMDB source needs the lmdb package: pip install 'yaffe[lmdb]' (or pip install lmdb)") from None
    return lmdb


def parse_datum(buf: bytes, dtype=np.float32, force_color: bool = False):
    """(array (C, H, W), label) of a Caffe Datum: channels 1, height 2, width 3, data 4 (uint8 bytes),
    label 5, float_data 6, encoded 7 (data is a PNG/JPEG file). A record that is not one raises SourceError."""
    try:
        return _parse_datum(buf, dtype, force_color)
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001: garbage bytes, a lying shape, a broken or bomb image: all the record's
        raise SourceError(f"the record is not a valid Caffe Datum ({type(e).__name__}: {e})") from None


def datum_label(buf: bytes) -> int:
    """A Datum's label (field 5) without decoding its image."""
    from netspec.caffemodel import fields
    try:
        return next((v for num, wire, v in fields(buf) if num == 5 and wire == 0), 0)
    except Exception as e:  # noqa: BLE001: garbage bytes
        raise SourceError(f"the record is not a valid Caffe Datum ({type(e).__name__}: {e})") from None


def _parse_datum(buf: bytes, dtype, force_color=False):
    from netspec.caffemodel import fields
    c = h = w = 0
    data, floats, label, encoded = b"", [], 0, False
    for num, wire, v in fields(buf):
        if num in (1, 2, 3, 5, 7) and wire != 0 or num in (4, 6) and wire not in (2, 5):
            raise ValueError(f"field {num} has wire type {wire}")
        if num == 1:
            c = v
        elif num == 2:
            h = v
        elif num == 3:
            w = v
        elif num == 4:
            data = v
        elif num == 5:
            label = v - (1 << 64) if v >= 1 << 63 else v
        elif num == 6:
            floats.append(np.frombuffer(v, "<f4") if wire == 2 else np.frombuffer(v, "<f4"))
        elif num == 7:
            encoded = bool(v)
    if encoded:  # a PNG/JPEG as stored (grey or BGR), BGR with force_color, as Caffe's DecodeDatumToCVMat
        from .images import decode_bytes
        return _as(decode_bytes(data, True if force_color else None), dtype), label
    if c * h * w > (1 << 31):
        raise ValueError(f"a shape of {c} x {h} x {w}")
    if floats:
        return _as(np.concatenate(floats).reshape(c, h, w), dtype), label
    return _as(np.frombuffer(data, np.uint8).reshape(c, h, w), dtype), label


def _as(a, dtype):
    """a as dtype, or as stored (uint8 pixels, float32 float_data) where dtype is None."""
    return a if dtype is None else a.astype(dtype)


def datum_bytes(array, label: int, encoded=None) -> bytes:
    """A Caffe Datum of uint8 (C, H, W) data and an integer label (and `encoded: false` when encoded is False, as
    convert_imageset writes it; convert_mnist_data leaves it out)."""
    from netspec.caffemodel import _field, _int_field
    a = np.ascontiguousarray(array, np.uint8)
    c, h, w = a.shape
    return (_int_field(1, c) + _int_field(2, h) + _int_field(3, w) + _field(4, a.tobytes())
            + _int_field(5, int(label)) + (b"" if encoded is None else _int_field(7, int(encoded))))


_LMDB: dict = {}  # real path -> [environment, users]: LMDB allows one open environment per file and process


def lmdb_records(path):
    """The LMDB's environment, shared by every reader of the process (release it with lmdb_release)."""
    key = os.path.realpath(path)
    if key in _LMDB:
        _LMDB[key][1] += 1
        return _LMDB[key][0]
    lmdb = lmdb_module()
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=os.path.isdir(path))
    except lmdb.Error as e:
        raise SourceError(f"cannot open the LMDB ({e})") from None
    _LMDB[key] = [env, 1]
    return env


def lmdb_release(path):
    entry = _LMDB.get(os.path.realpath(path))
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _LMDB[os.path.realpath(path)]


def leveldb_module():
    try:
        import plyvel
    except ImportError:
        raise SourceError("a LevelDB source needs the plyvel package: pip install 'yaffe[leveldb]' "
                          "(or pip install plyvel)") from None
    return plyvel


def db_values(path, kind="lmdb"):
    """The values of an LMDB or a LevelDB (Caffe's two Data backends) in key order, as Caffe's cursor reads them."""
    if kind == "leveldb":
        plyvel = leveldb_module()
        if not os.path.isdir(path):
            raise SourceError("backend: LEVELDB needs the LevelDB's folder")
        try:
            db = plyvel.DB(path, create_if_missing=False)
        except plyvel.Error as e:
            raise SourceError(f"cannot open the LevelDB ({e})") from None
        try:
            for _, value in db.iterator():
                yield value
        finally:
            db.close()
        return
    env = lmdb_records(path)
    try:
        with env.begin() as txn:
            for _, value in txn.cursor():
                yield value
    finally:
        lmdb_release(path)


def db_count(path, kind="lmdb", cap=None) -> int:
    """The records of an LMDB (its count, kept by LMDB) or a LevelDB (its keys walked, stopping at `cap`: the
    count only matters up to a limit)."""
    if kind == "leveldb":
        plyvel = leveldb_module()
        try:
            db = plyvel.DB(path, create_if_missing=False)
        except plyvel.Error as e:
            raise SourceError(f"cannot open the LevelDB ({e})") from None
        n = 0
        try:
            for _ in db.iterator(include_value=False):
                n += 1
                if cap is not None and n >= cap:
                    break
        finally:
            db.close()
        return n
    env = lmdb_records(path)
    try:
        return int(env.stat()["entries"])
    finally:
        lmdb_release(path)


def lmdb_inspect(path, tops, force_color=False, kind="lmdb", stored=None):
    """The shapes of the tops, from the first record; stored (a dict): its "dtype" as stored (uint8 pixels, float32
    float_data)."""
    values = db_values(path, kind)
    first = next(values, None)
    values.close()
    if first is None:
        raise SourceError(f"the {'LevelDB' if kind == 'leveldb' else 'LMDB'} holds no records")
    array, _ = parse_datum(first, None, force_color=force_color)
    if stored is not None:
        stored["dtype"] = array.dtype
    return [array.shape, ()][:len(tops) or 1]


def lmdb_load(path, tops, dtype, force_color=False, kind="lmdb"):
    """Every record, decoded into one array made for them all (counted first: a list of arrays stacked at the end
    held the data twice at the peak, 180 MiB more for MNIST)."""
    n = db_count(path, kind)
    images, labels = None, np.zeros(n, dtype or np.float32)
    count = 0
    for value in db_values(path, kind):
        a, lab = parse_datum(value, dtype, force_color)
        if images is None:
            images = np.empty((n,) + a.shape, a.dtype)
        if a.dtype != images.dtype and images.dtype != np.float32:  # (uint8 records, then a float one: all
            images = images.astype(np.float32)                      # float from then on, copied once)
        if a.shape != images.shape[1:]:
            raise SourceError(f"record {count} holds an example of shape {list(a.shape)}, the first one of "
                              f"{list(images.shape[1:])}; a Data layer's records must have one shape (resize "
                              "them: run.py data convert LIST DB --resize HxW)")
        if count == n:  # (records added since the count)
            break
        images[count], labels[count] = a, lab
        count += 1
    if images is None:
        images = np.zeros((0,), dtype or np.float32)
    return [images[:count], labels[:count]][:len(tops)]


# ---- run.py data mean (Caffe's compute_image_mean) ---------------------------------------------

def image_mean(path, out=None):
    """(mean (C, H, W) float32, count) of the examples of a dataset file (an LMDB, LevelDB or image list streamed
    example by example, the other kinds read whole), as Caffe's compute_image_mean computes it: each example's values as
    stored added in float32 in the records' order, the sums divided by the count in float32. out(line): its
    progress lines."""
    k = kind_or_none(path)
    total, count = None, 0
    if k in ("lmdb", "leveldb"):
        examples = (parse_datum(value)[0] for value in db_values(path, k))
    elif k is None:  # an image list, an image at a time
        examples = (a.astype(np.float32) for _, _, a, _ in list_images(path, need_labels=False))
    else:
        data = read_any(path)[0]
        examples = (np.asarray(a, np.float32) for a in data)
    for a in examples:
        if total is None:
            total = np.zeros(a.shape, np.float32)
        elif a.shape != total.shape:
            raise SourceError(f"example {count} has shape {list(a.shape)}, the first {list(total.shape)}; "
                              "a mean needs examples of one shape")
        total += a
        count += 1
        if out and count % 10000 == 0:
            out(f"Processed {count} files.")
    if total is None:
        raise SourceError("it holds no examples")
    if out and count % 10000:
        out(f"Processed {count} files.")
    return total / np.float32(count), count


# ---- run.py data convert -----------------------------------------------------------------------

def read_any(path, sample_shape=None, new_size=None, gray=False, root=None, need_labels=True):
    """(images uint8-range float (N, C, H, W) or features, labels) from an IDX images file, a csv, an npz, an
    LMDB or LevelDB of Datum records, or an image list file of `path label` lines (Caffe's convert_imageset input;
    relative paths from `root`, else from the list file's folder or the working directory: list_root; with
    need_labels=False a line may be a path alone, its label NaN)."""
    k = kind_or_none(path)
    if k in ("idx", "csv", "npz", "cifar") and (new_size or gray):
        given = " and ".join(o for o, v in (("--resize", new_size), ("--gray", gray)) if v)
        raise SourceError(f"{given} applies to image lists only; this is {'an' if k == 'idx' else 'a'} {k} file, "
                          "whose examples are kept as they are: leave it out")
    if k == "idx":
        return idx_load(path, ["data", "label"], np.float32)
    if k == "csv":
        shape = csv_inspect(path, ["data", "label"], sample_shape)[0]
        return csv_load(path, ["data", "label"], np.float32, shape)
    if k == "npz":
        return npz_load(path, ["data", "label"], np.float32)
    if k in ("lmdb", "leveldb"):  # Caffe's databases, e.g. a LevelDB to LMDB or npz
        return lmdb_load(path, ["data", "label"], np.float32, kind=k)
    if k == "cifar":
        return cifar_load(path, ["data", "label"], np.float32)
    images, labels, shapes = [], [], {}
    for n, name, a, label in list_images(path, new_size, gray, root, need_labels):
        images.append(a.astype(np.float32))
        labels.append(label)
        shapes.setdefault(a.shape, (n, name))
    if len(shapes) > 1:
        (s1, (n1, f1)), (s2, (n2, f2)) = list(shapes.items())[:2]
        raise SourceError(f"its images differ in size ({f1!r}, line {n1}: {s1[1]} x {s1[2]}; {f2!r}, line {n2}: "
                          f"{s2[1]} x {s2[2]}); give --resize HxW (an LMDB holds them as they are)")
    return [np.stack(images), np.asarray(labels, np.float32)]


def list_images(path, new_size=None, gray=False, root=None, need_labels=True, order=None, with_paths=False):
    """(line number, path as listed, uint8 (C, H, W) image, label) of each line of an image list, read as Caffe's
    OpenCV reads them (layers/images.py), in the list's order or in `order` (indices of its lines)."""
    from .images import pillow, read_image
    pillow()  # (its absence is one error, not one a line)
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    where = (f"--root {root}" if root else "neither the list file's folder nor the working directory holds the "
             "first; give the folder they start at: --root DIR, convert_imageset's ROOTFOLDER")
    root = os.path.abspath(root) if root else list_root(path, [ln.rsplit(maxsplit=1)[0] for _, ln in lines],
                                                        os.getcwd())
    for k in (range(len(lines)) if order is None else order):
        n, line = lines[k]
        parts = line.rsplit(maxsplit=1)
        if not need_labels and (len(parts) == 1 or not _is_number(parts[1])):
            parts = [line.strip(), "nan"]
        if len(parts) != 2:
            raise SourceError(f"line {n} is {line.strip()!r}; each line must be 'path label'")
        p = parts[0] if os.path.isabs(parts[0]) else os.path.join(root, parts[0])
        try:
            label = float(parts[1])
            if not os.path.isfile(p):
                raise FileNotFoundError(p)
            a = read_image(p, not gray, *(new_size or (0, 0)))
        except FileNotFoundError:
            raise SourceError(f"line {n}: the image {parts[0]!r} does not exist ({p}); relative paths start at "
                              f"{root} ({where})") from None
        except Exception as e:  # noqa: BLE001: a broken or bomb image, a label that is not a number
            raise SourceError(f"line {n}: cannot read {parts[0]!r} with its label {parts[1]!r} "
                              f"({_describe(e)})") from None
        yield (n, parts[0], a, label, p) if with_paths else (n, parts[0], a, label)


def count_list(path):
    """The number of entries (non-empty lines) of an image list."""
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def _is_number(word):
    try:
        float(word)
        return True
    except ValueError:
        return False


def with_root(base_dir, root_folder, paths):
    """The paths of a list prefixed by root_folder as Caffe prefixes them (strings concatenated: "/data/img_" +
    "001.jpg"), or as a folder where only that holds the first image ("data" + "/" + "x.jpg"), from base_dir."""
    first = next((p for p in paths if not os.path.isabs(p)), None)
    glue = ""
    if first is not None and not root_folder.endswith(("/", os.sep)):
        if (not os.path.exists(os.path.join(base_dir, root_folder + first))
                and os.path.exists(os.path.join(base_dir, root_folder, first))):
            glue = os.sep
    return [p if os.path.isabs(p) else os.path.join(base_dir, root_folder + glue + p) for p in paths]


def list_root(list_path, paths, base_dir, caffe=False):
    """The folder a list file's relative image paths start from (without a root folder): the list file's own
    folder or base_dir (Caffe's: the working directory), whichever holds the first relative path; where both
    or neither do, Caffe's for a Caffe net (caffe=True) and the list's folder otherwise."""
    first = next((p for p in paths if not os.path.isabs(p)), None)
    here = os.path.dirname(os.path.abspath(list_path))
    if first is None:
        return here
    in_here, in_base = os.path.exists(os.path.join(here, first)), os.path.exists(os.path.join(base_dir, first))
    if in_here != in_base:
        return here if in_here else base_dir
    return base_dir if caffe else here


def write_dataset(src, out, shuffle=False, seed=0, sample_shape=None, new_size=None, gray=False, root=None,
                  backend="lmdb", pairs=False, encoded=None) -> int:
    """Write `src` as an .npz (data, label) or, for any other name, a database (an LMDB, or a LevelDB with
    backend="leveldb") of Caffe Datum records (uint8 data; keys 00000000, 00000001, ... as convert_mnist_data
    writes them). An image list goes one image at a time, as convert_imageset writes it (keys 00000000_path, ...,
    `encoded: false`, each image at its size unless resized, commits every 1,000): byte for byte Caffe's records,
    and no more memory than an image's. pairs: Caffe's convert_mnist_siamese_data (examples/siamese): as many
    records as examples, each two examples drawn at random (seeded) as 2C channels, label 1 where their classes
    are the same, else 0. encoded (an image list to a database): convert_imageset -encoded, each image as its file
    (or encoded as this type, "" for each file's own). A database that exists is an error (Caffe's tools refuse it
    too): records of another run would stay among the new ones. Returns the number of records."""
    if not out.endswith(".npz") and os.path.exists(out):
        raise SourceError(f"the output {out} exists already; remove it first (rm -r {out}: Caffe's create_*.sh "
                          "scripts do) or give another name; records written into it would mix with its own")
    srcs = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    kinds = [kind_or_none(s) for s in srcs]
    if len(srcs) > 1 and None in kinds:
        raise SourceError(f"{srcs[kinds.index(None)]} is an image list (or an unknown file): several sources are "
                          "data files (IDX, csv, npz, CIFAR .bin, LMDB, LevelDB) written one after the other; put "
                          "the images into one list instead")
    if encoded is not None and (kinds[0] is not None or out.endswith(".npz") or pairs):
        raise SourceError("--encoded stores image files as they are: it applies to an image list written to a "
                          "database; leave it out")
    if kinds[0] is None and not out.endswith(".npz") and not pairs:
        return _write_records(out, backend, _list_records(srcs[0], shuffle, seed, new_size, gray, root, encoded))
    digits = 5 if set(kinds) == {"cifar"} else 8  # (convert_cifar_data's keys: 00000, 00001, ...)
    parts = []
    if kinds == ["idx", "idx"] and len(idx_header(srcs[1])[1]) == 1 < len(idx_header(srcs[0])[1]):
        # convert_mnist_data IMAGES LABELS DB: the labels file named, wherever it is
        with reading():
            images, labels = idx_read(srcs[0], np.float32), idx_read(srcs[1], np.float32)
        if len(images) != len(labels):
            raise SourceError(f"{srcs[0]} has {len(images)} images but {srcs[1]} has {len(labels)} labels")
        parts, srcs = [(images[:, None] if images.ndim == 3 else images, labels)], srcs[:1]
    for s in srcs[len(parts):]:
        try:
            with reading():
                parts.append(read_any(s, sample_shape, new_size, gray, root))
        except SourceError as e:
            raise SourceError(f"{s}: {e}" if len(srcs) > 1 else str(e)) from None
    if len({p[0].shape[1:] for p in parts}) > 1:
        shapes = ", ".join(str(list(p[0].shape[1:])) for p in parts)
        raise SourceError(f"the sources' examples differ in shape ({shapes}); sources written into one database "
                          "must share one")
    data, labels = (parts[0] if len(parts) == 1 else
                    (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    if len(data) == 0:
        raise SourceError("holds no examples; nothing to write")
    if pairs:
        rng = np.random.default_rng(seed)
        first, second = rng.integers(0, len(data), len(data)), rng.integers(0, len(data), len(data))
        if out.endswith(".npz"):
            np.savez_compressed(out, data=np.concatenate((data[first], data[second]), axis=1),
                                label=(labels[first] == labels[second]).astype(np.float32))
            return len(data)
        _check_images(data)
        return _write_records(out, backend, ((f"{k:08d}", datum_bytes(np.concatenate((data[i], data[j])),
                                                                      int(labels[i] == labels[j])))
                                             for k, (i, j) in enumerate(zip(first, second))))
    order = np.random.default_rng(seed).permutation(len(data)) if shuffle else np.arange(len(data))
    data, labels = data[order], labels[order]
    if out.endswith(".npz"):
        np.savez_compressed(out, data=data, label=labels)
        return len(data)
    _check_images(data)
    return _write_records(out, backend, ((f"{i:0{digits}d}", datum_bytes(a, int(lab)))
                                         for i, (a, lab) in enumerate(zip(data, labels))))


def _check_images(data):
    if data.ndim != 4 or data.min() < 0 or data.max() > 255 or (data != np.round(data)).any():
        raise SourceError("a database of Datum records holds uint8 images (N, C, H, W); this data is not; write an "
                          ".npz instead")


def _list_records(src, shuffle, seed, new_size, gray, root, encoded=None):
    """(key, Datum bytes) of an image list, one image at a time (convert_imageset's keys and records)."""
    total = count_list(src)
    if total == 0:
        raise SourceError("holds no examples; nothing to write")
    return _list_images_records(src, np.random.default_rng(seed).permutation(total) if shuffle else None, new_size,
                                gray, root, encoded)


def _extension(name):
    ext = name.rsplit(".", 1)[-1].lower() if "." in os.path.basename(name) else ""
    return "jpg" if ext == "jpeg" else ext


def encoded_image_bytes(path, image, encode_type, resized):
    """convert_imageset -encoded's bytes of one image: the file as it is where nothing was resized and its
    extension is the encoding (ReadFileToDatum), else the decoded image (BGR (C, H, W)) encoded again as
    encode_type (Pillow's encoder: not OpenCV's bytes; JPEG at OpenCV's quality 95)."""
    if not resized and _extension(path) == encode_type:
        with open(path, "rb") as f:
            return f.read()
    from .images import pillow
    import io
    a = image[::-1].transpose(1, 2, 0) if image.shape[0] == 3 else image[0]  # BGR planes -> RGB pixels
    out = io.BytesIO()
    fmt = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}.get(encode_type)
    if fmt is None:
        raise SourceError(f"encode type {encode_type!r} is not one yaffe writes; use jpg or png")
    pillow().fromarray(np.ascontiguousarray(a, np.uint8)).save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def _list_images_records(src, order, new_size, gray, root, encoded=None):
    from netspec.caffemodel import _field, _int_field
    with reading():
        for i, (n, name, a, label, path) in enumerate(list_images(src, new_size, gray, root, True, order, True)):
            if label != int(label):
                raise SourceError(f"line {n}: the label {label} of {name!r} is not an integer (a Datum's label is)")
            if encoded is None:
                yield f"{i:08d}_{name}", datum_bytes(a, int(label), encoded=False)
            else:  # convert_imageset -encoded: data, label, encoded: true (no channels, height, width)
                data = encoded_image_bytes(path, a, encoded or _extension(name), bool(new_size))
                yield f"{i:08d}_{name}", _field(4, data) + _int_field(5, int(label)) + _int_field(7, 1)


def _write_records(out, backend, records) -> int:
    """Put (key, value) records into a new LMDB or LevelDB, committed every 1,000 as Caffe's tools commit;
    returns their number. On an error the database is left as far as it was committed."""
    i = -1
    if backend == "leveldb":
        plyvel = leveldb_module()
        db = plyvel.DB(out, create_if_missing=True, error_if_exists=True)
        try:
            batch = db.write_batch()
            for i, (key, value) in enumerate(records):
                batch.put(key.encode(), value)
                if (i + 1) % 1000 == 0:
                    batch.write()
                    batch = db.write_batch()
            batch.write()
        finally:
            db.close()
        return i + 1
    lmdb = lmdb_module()
    env = lmdb.open(out, map_size=1 << 40)  # Caffe's 1 TB: a sparse file, as large as what is written
    txn = env.begin(write=True)
    try:
        for i, (key, value) in enumerate(records):
            txn.put(key.encode(), value)
            if (i + 1) % 1000 == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
    except BaseException:
        txn.abort()
        raise
    finally:
        env.close()
    return i + 1
