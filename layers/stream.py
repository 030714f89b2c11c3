"""Data bigger than memory: sources read row by row where a batch needs them, and a prefetch stage.

A reader gives random access to a source's rows without loading it: LMDB and LevelDB (Caffe's Datum records,
by key), IDX and stored .npz (memory-mapped), csv (an index of line offsets), HDF5 (file by file, rows by
index) and image lists (decoded on demand). Shuffling is a permutation of row indices, so it needs no data.

The Prefetcher runs `depth` batches ahead on worker threads: each reads its rows, decodes and transforms them
into a buffer from a small pool (Pillow, h5py, LMDB and NumPy release the GIL while they work). The main
thread decides each batch's rows and its random draws, in order, so a run is the same whatever the threads'
timing, and a resume continues exactly. Memory held: O(depth x batch), never O(dataset).
"""
from __future__ import annotations

import bisect
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import sources
from .sources import SourceError

# stream: auto streams a source that would take more bytes than this in memory (decoded) or on disk
STREAM_ABOVE = int(float(os.environ.get("YAFFE_STREAM_ABOVE_MB", "512")) * 2**20)


def stored_bytes(path: str) -> int:
    """Bytes a source takes on disk (a folder: its files; an HDF5 or image list: the files it names)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
                   if os.path.isfile(os.path.join(path, f)))
    return os.path.getsize(path) if os.path.isfile(path) else 0


def release_file_pages(file_path: str):
    """Drop this process's mapping of a file's pages (the kernel keeps them cached): LMDB maps its whole file, so
    an epoch would otherwise count the file in the process's resident memory. Linux; elsewhere nothing."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/self/maps") as f:
            spans = [line.split()[0] for line in f if line.rstrip().endswith(file_path)]
        for span in spans:
            lo, hi = (int(x, 16) for x in span.split("-"))
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED
    except (OSError, AttributeError, ValueError):
        pass


class Reader:
    """Random access to the rows of a source: `n`, `read(idx) -> [array per top]` (rows in idx's order, raw,
    before any transform), `extras(idx)` (the tops after the first: labels, without decoding images), `close()`."""

    n = 0

    def read(self, idx):
        raise NotImplementedError

    def extras(self, idx):
        return self.read(idx)[1:]

    def close(self):
        pass


class DatumReader(Reader):
    """An LMDB or a LevelDB of Caffe Datum records, in key order (Caffe's cursor order)."""

    def __init__(self, path, kind, n_tops, dtype, force_color=False):
        self.path, self.kind, self.n_tops, self.dtype, self.force_color = path, kind, n_tops, dtype, force_color
        self._local = threading.local()
        if kind == "leveldb":
            plyvel = sources.leveldb_module()
            try:
                self.db = plyvel.DB(path, create_if_missing=False)
            except plyvel.Error as e:
                raise SourceError(f"cannot open the LevelDB ({e})") from None
            self.keys = list(self.db.iterator(include_value=False))
        else:
            self.env = sources.lmdb_records(path)
            self.data_file = os.path.realpath(os.path.join(path, "data.mdb") if os.path.isdir(path) else path)
            self.keys = []
            with self.env.begin() as txn:
                for key in txn.cursor().iternext(keys=True, values=False):
                    self.keys.append(key)
                    if len(self.keys) % 16384 == 0:  # the scan maps pages in as it goes
                        release_file_pages(self.data_file)
            release_file_pages(self.data_file)
            self.read_bytes = 0
        self.n = len(self.keys)
        if not self.n:
            raise SourceError(f"the {'LevelDB' if kind == 'leveldb' else 'LMDB'} holds no records")

    def __getstate__(self):  # for decoding processes: reopened there (keys kept)
        return {k: self.__dict__[k] for k in ("path", "kind", "n_tops", "dtype", "force_color", "keys", "n")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()
        if self.kind == "leveldb":
            self.db = sources.leveldb_module().DB(self.path, create_if_missing=False)
        else:
            self.env = sources.lmdb_records(self.path)
            self.data_file = os.path.realpath(os.path.join(self.path, "data.mdb") if os.path.isdir(self.path)
                                              else self.path)
            self.read_bytes = 0

    def _get(self, key):
        value = self.db.get(key) if self.kind == "leveldb" else self._txn().get(key)
        if value is None:
            raise SourceError(f"record {key!r} vanished while reading; is another process writing the database?")
        return value

    def _txn(self):
        txn = getattr(self._local, "txn", None)  # one read transaction per thread
        if txn is None:
            txn = self._local.txn = self.env.begin(buffers=False)
        return txn

    def _values(self, idx):
        values = [self._get(self.keys[i]) for i in idx]
        if self.kind == "lmdb":
            self.read_bytes += sum(len(v) for v in values)
            if self.read_bytes > 64 << 20:  # every 64 MiB read: unmap what LMDB mapped in
                self.read_bytes = 0
                release_file_pages(self.data_file)
        return values

    def extras(self, idx):
        return [np.array([sources.datum_label(v) for v in self._values(idx)], self.dtype)][:self.n_tops - 1]

    def read(self, idx):
        images, labels = [], np.empty(len(idx), self.dtype)
        for j, value in enumerate(self._values(idx)):
            a, labels[j] = sources.parse_datum(value, self.dtype, self.force_color)
            images.append(a)
        if len({a.shape for a in images}) > 1:
            return [_ragged(images), labels][:self.n_tops]
        return [np.stack(images), labels][:self.n_tops]

    def close(self):
        if self.kind == "leveldb":
            self.db.close()
        else:
            sources.lmdb_release(self.path)


def _ragged(items):
    out = np.empty(len(items), object)
    out[:] = items
    return out


class MemmapReader(Reader):
    """Arrays on disk read through memory maps (IDX files, and .npz members stored without compression)."""

    def __init__(self, arrays, dtype):
        self.arrays, self.dtype = arrays, dtype
        self.n = len(arrays[0])

    def read(self, idx):
        order = np.argsort(idx, kind="stable")  # read in file order, then put back in idx's order
        out = []
        for a in self.arrays:
            rows = np.take(a, np.asarray(idx)[order], axis=0).astype(self.dtype)
            back = np.empty_like(rows)
            back[order] = rows
            out.append(back)
        return out


def _memmap_extras(self, idx):
    return [np.asarray(a[np.asarray(idx)], self.dtype) for a in self.arrays[1:]]


MemmapReader.extras = _memmap_extras


def npz_memmaps(path, tops):
    """Memory maps of an .npz's arrays named after the tops, or None where a member is compressed."""
    import zipfile
    maps = []
    with zipfile.ZipFile(path) as z:
        for top in tops:
            name = top + ".npy"
            if name not in z.namelist():
                return None
            info = z.getinfo(name)
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            with open(path, "rb") as f:  # the member's data starts after its local header
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), "<u2")
                start = info.header_offset + 30 + int(name_len) + int(extra_len)
                f.seek(start)
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                offset = f.tell()
            if fortran or dtype.hasobject:
                return None
            maps.append(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape))
    return maps


def idx_memmaps(path, tops):
    """Memory maps of an uncompressed IDX images file (and the labels file beside it), or None for .gz."""
    if path.endswith(".gz"):
        return None
    dtype, shape = sources.idx_header(path)
    images = np.memmap(path, dtype=dtype, mode="r", offset=4 + 4 * len(shape), shape=shape)
    if images.ndim == 3:
        images = images.reshape(shape[0], 1, shape[1], shape[2])
    maps = [images]
    if len(tops) > 1:
        labels_path = sources.idx_labels_path(path)
        if labels_path.endswith(".gz"):
            return None
        ldtype, lshape = sources.idx_header(labels_path)
        maps.append(np.memmap(labels_path, dtype=ldtype, mode="r", offset=4 + 4 * len(lshape), shape=lshape))
    return maps


def cifar_memmaps(path, tops):
    """Memory maps of a CIFAR binary batch: the images (N, 3, 32, 32) and labels (N,), views of its records."""
    record = sources.cifar_record(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, record)
    return [raw[:, record - 3072:].reshape((-1,) + sources.CIFAR_IMAGE), raw[:, record - 3073]][:len(tops) or 1]


class CsvReader(Reader):
    """An uncompressed csv read by line: one pass notes where each data line starts (8 bytes a row)."""

    def __init__(self, path, header_lines, sample_shape, dtype, n_tops):
        self.path, self.sample_shape, self.dtype, self.n_tops = path, tuple(sample_shape), dtype, n_tops
        offsets, pos = [], 0
        with open(path, "rb") as f:
            for k, line in enumerate(f):
                if k >= header_lines and line.strip():
                    offsets.append(pos)
                pos += len(line)
        self.offsets = np.asarray(offsets, np.int64)
        self.n = len(offsets)
        self._local = threading.local()

    def read(self, idx):
        f = getattr(self._local, "f", None)
        if f is None:
            f = self._local.f = open(self.path, "rb")
        rows = []
        for i in idx:
            f.seek(self.offsets[i])
            rows.append(np.array(f.readline().split(b","), np.float64))
        a = np.stack(rows)
        data = a[:, :-1].astype(self.dtype).reshape((len(idx),) + self.sample_shape)
        return [data, a[:, -1].astype(self.dtype)][:self.n_tops]


class Hdf5Reader(Reader):
    """Caffe's list of HDF5 files, rows by global index (file after file)."""

    def __init__(self, files, tops, dtype):
        h5py = sources.h5py_module()
        self.files, self.tops, self.dtype = files, tops, dtype
        self.handles = [h5py.File(f, "r") for f in files]
        self.lengths = [len(h[tops[0]]) for h in self.handles]
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.n = int(self.starts[-1])
        self.lock = threading.Lock()  # h5py serializes anyway; one reader at a time keeps it simple

    def file_of(self, i):
        return bisect.bisect_right(self.starts, i) - 1

    def read(self, idx):
        idx = np.asarray(idx)
        out = [None] * len(self.tops)
        with self.lock:
            for f in np.unique([self.file_of(i) for i in idx]):
                mine = np.flatnonzero((idx >= self.starts[f]) & (idx < self.starts[f + 1]))
                local = idx[mine] - self.starts[f]
                order = np.argsort(local, kind="stable")
                uniq, inverse = np.unique(local[order], return_inverse=True)
                for k, top in enumerate(self.tops):
                    part = np.asarray(self.handles[f][top][uniq], self.dtype)[inverse]
                    if out[k] is None:
                        out[k] = np.empty((len(idx),) + part.shape[1:], self.dtype)
                    out[k][mine[order]] = part
        return out

    def close(self):
        for h in self.handles:
            h.close()


def decode_image(path, color=True, new_height=0, new_width=0, dtype=np.uint8):
    """An image file as (C, H, W): BGR or grey, resized when both new sizes are given (ImageData's reading, as
    Caffe's OpenCV reads it: layers/images.py)."""
    from .images import read_image
    return read_image(path, color, new_height, new_width).astype(dtype, copy=False)


class ImageReader(Reader):
    """ImageData's list of `path label` lines, each image decoded when a batch needs it (as uint8: the
    transform makes the floats)."""

    def __init__(self, entries, color, new_height, new_width, dtype):
        self.entries, self.dtype = entries, dtype
        self.decode_args = (color, new_height, new_width)
        self.n = len(entries)

    def decode(self, path):
        return decode_image(path, *self.decode_args)

    def extras(self, idx):
        return [np.array([self.entries[i][1] for i in idx], self.dtype)]

    def read(self, idx):
        images = [self.decode(self.entries[i][0]) for i in idx]
        labels = np.array([self.entries[i][1] for i in idx], self.dtype)
        if len({a.shape for a in images}) > 1:
            return [_ragged(images), labels]
        return [np.stack(images), labels]


class Prefetcher:
    """Batches `depth` ahead on `workers` threads. schedule() -> (indices, job state) runs in the main thread,
    in order; fill(indices, state, buffers) -> buffers runs on a worker. next() -> (buffers, state, seconds
    waited); release(buffers) gives them back to the pool."""

    def __init__(self, schedule, fill, make_buffers, depth=4, workers=None, reader=None, processes=0):
        self.schedule, self.fill, self.depth = schedule, fill, max(1, int(depth))
        self.make_buffers = make_buffers
        self.workers = workers or max(1, min(self.depth, os.cpu_count() or 1))
        self.processes = None
        if processes and reader is not None:  # reading and decoding in processes: no GIL shared with the net
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            self.processes = ProcessPoolExecutor(int(processes), multiprocessing.get_context("forkserver"),
                                                 initializer=_child_init, initargs=(reader,))
            self.workers = max(self.workers, int(processes))
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="yaffe-data")
        self.free = queue.SimpleQueue()
        for _ in range(self.depth + 1):
            self.free.put(make_buffers())
        self.pending = []

    def _top_up(self):
        while len(self.pending) < self.depth:
            idx, state = self.schedule()
            buffers = self.free.get()
            self.pending.append((self.pool.submit(self.fill, idx, state, buffers), state))

    def next(self):
        self._top_up()
        future, state = self.pending.pop(0)
        t0 = time.perf_counter()
        buffers = future.result()  # a worker's exception (a broken record) is raised here, in order
        waited = time.perf_counter() - t0
        self._top_up()
        return buffers, state, waited

    def release(self, buffers, usual=True):
        """Back to the pool; usual=False: buffers made for one odd batch (images of another size) are replaced."""
        self.free.put(buffers if usual else self.make_buffers())

    def read(self, reader, idx):
        """The rows of idx: by a decoding process where there are some, else here (a worker thread)."""
        if self.processes is not None:
            return self.processes.submit(_child_read, idx).result()
        return reader.read(idx)

    def close(self):
        for future, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown(wait=True, cancel_futures=True)
        self.pending = []


_CHILD = {}


def _child_init(reader):
    _CHILD["reader"] = reader


def _child_read(idx):
    with sources.reading():
        return _CHILD["reader"].read(idx)
