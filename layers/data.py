"""Data layers. Each serves batches of examples held in memory, in order or in a new random order each
epoch (`shuffle`, seeded from the solver's random_seed); a batch that runs past the end continues at the
start of the next epoch. Examples go through the transformer (transform.py).

Data: .npz (arrays named after the tops), .csv/.csv.gz (features then an integer label), MNIST-style
IDX files. HDF5Data: Caffe's list of .h5 files (datasets named after the tops; no transform).
MemoryData: arrays given from Python. ImageData: a list file of `path label` lines. DummyData: fillers.
Input: tops set from Python.
"""
from __future__ import annotations

import math
import os

import numpy as np

from netspec.errors import LayerError, UserError
from . import sources
from .base import Field, Layer, dims, register, resolve
from .fillers import fill, uniform_into
from .transform import TRANSFORM_FIELDS, Transformer

CHECK_SAMPLE = 100000  # rows of a streamed source the data checks read (evenly spaced) ...
CHECK_BYTES = 64 << 20  # ... of its data, as many as fit in this once decoded


def _ragged_concat(parts):
    out = np.empty(sum(len(p) for p in parts), object)
    out[:] = [a for p in parts for a in p]
    return out
FIT_SAMPLE = 50000  # rows a streamed source's normalize statistics are fitted on (evenly spaced)
STREAM_FIELD = Field("stream", "enum", "auto", "read rows when a batch needs them, prefetched by threads, rather "
                     "than the whole source into memory: auto (where it would take more than "
                     "YAFFE_STREAM_ABOVE_MB, default 512 MiB, decoded, or stored), always, never",
                     choices=("auto", "always", "never"))


class RowData(Layer):
    """Base of the data layers that serve rows of in-memory arrays (one per top)."""

    bottoms = (0, 0)
    tops = (1, 2)
    is_data = True
    needs_rng = True
    differentiable = False
    statistics = True  # its only blobs are the normalize statistics
    transforms = True
    mixed = False           # ImageData: images of different sizes
    base_dir = "."
    shard = (0, 1)          # (rank, ranks) under MPI: this rank's part of every global batch
    transform_rng = None    # crop and mirror draws (under MPI: one per rank; else the layer's rng)

    # subclasses: _inspect() -> per-top sample shapes; _load() -> arrays; batch_size property
    relative_to = "the net file"  # or, for a Caffe prototxt, the working directory (Net._base_for)
    @property
    def batch_size(self):
        return self.p.batch_size

    def _fail(self, message, field=None):
        raise LayerError(message, field or f"{self.param_block}.source")

    def setup(self, bottom_shapes):
        try:
            with sources.reading():
                shapes = self._inspect()
        except sources.SourceError as e:
            self._fail(f"source '{getattr(self.p, 'source', '')}' ({self.path}): {e}")
        self.sample_shapes = [tuple(s) for s in shapes]
        tp = resolve(TRANSFORM_FIELDS, self.spec.get("transform_param") if self.transforms else None)
        self.transformer = Transformer(tp, self.phase, self.base_dir, self.sample_shapes[0], self.dtype)
        self.blob_shapes = self.transformer.stat_shapes()
        self.target_tf = None
        if tp.normalize_target:
            if len(shapes) < 2:
                raise LayerError("normalize_target needs a second top (the targets)", "transform_param.normalize_target")
            self.target_tf = Transformer.for_targets(tp, self.phase, self.sample_shapes[1], self.dtype)
            self.n_data_stats = len(self.blob_shapes)
            self.blob_shapes = self.blob_shapes + self.target_tf.stat_shapes()
        self.arrays = None
        tops = [(self.batch_size,) + self.transformer.out_shape] + [(self.batch_size,) + s for s in shapes[1:]]
        if self.transformer.mixes:  # mixup/cutmix: soft labels over the classes (SoftmaxWithLoss takes them)
            if len(tops) != 2 or self.target_tf is not None:
                raise LayerError("mixup and cutmix need a data top and a label top", "transform_param.mix_classes")
            tops[1] = (self.batch_size, self.transformer.p.mix_classes)
        return tops

    @property
    def path(self):
        src = getattr(self.p, "source", None) or ""
        return os.path.normpath(os.path.join(self.base_dir, src))

    reader = None        # layers/stream.py: rows read where a batch needs them (a source bigger than memory)
    held_estimate = None  # bytes the source would take in memory, decoded (_held_bytes), where known
    prefetcher = None
    data_note = ""       # how the source is read, said once in the training log
    data_wait = 0.0      # seconds forward waited for a prefetched batch (the trainer reads and resets it)

    @property
    def loaded(self) -> bool:
        return self.arrays is not None or self.reader is not None

    def _stream_reader(self):
        """A reader of the source's rows (layers/stream.py), or None where this source is read into memory."""
        return None

    def _wants_stream(self) -> bool:
        mode = getattr(self.p, "stream", "never")
        if mode == "never":
            return False
        if mode == "always":
            return True
        from .stream import STREAM_ABOVE, stored_bytes
        if self._source_bytes(stored_bytes) > STREAM_ABOVE:
            return True
        try:
            with sources.reading():
                self.held_estimate = self._held_bytes(STREAM_ABOVE)
        except sources.SourceError:
            return False  # (the load says what is wrong)
        return self.held_estimate is not None and self.held_estimate > STREAM_ABOVE

    def _source_bytes(self, stored_bytes):
        return stored_bytes(self.path)

    def _held_bytes(self, limit):
        """What the rows would take in memory once decoded (uint8 pixels as uint8, the rest float32), or None where
        not known before reading them; counting may stop once past `limit`. Compressed and encoded sources (JPEG
        lists and LMDBs, gzip IDX and HDF5, compressed npz) take many times their stored bytes: 45 MiB of 500x375
        JPEGs are 805 MiB of pixels."""
        row = self._row_bytes()
        rows = self._count_rows(limit // max(1, row) + 1)
        return None if rows is None else rows * row

    def _decoded_bytes(self):
        return self.rows * self._row_bytes()

    def _row_bytes(self):
        return sum(math.prod(s) for s in self.sample_shapes) * self.dtype.itemsize

    def _count_rows(self, cap):
        """The number of rows (or any number >= cap when there are more), or None where reading them is the only
        way to know."""
        return None

    def load(self):
        """Read the whole source into memory (or open it for streaming, above a size), set up the row order, fit
        normalize statistics (TRAIN)."""
        wanted = self._wants_stream()
        if wanted:
            try:
                with sources.reading():
                    reader = self._stream_reader()
            except sources.SourceError as e:
                raise UserError(f"{self.path}: error: {e}") from None
            if reader is not None:
                return self._open_stream(reader)
        try:
            with sources.reading():
                arrays = self._load()
                for a in arrays:
                    if a.dtype.kind not in "biuf" and not self.mixed:
                        raise sources.SourceError(f"holds {a.dtype} values; data and labels must be real numbers")
        except sources.SourceError as e:
            raise UserError(f"{self.path}: error: {e}") from None
        self._set_arrays(arrays)
        if getattr(self.p, "stream", None) is not None:  # said once in the training log, as a streamed source is
            held = sum(a.nbytes for a in arrays if a.dtype != object)
            why = ("stream: never" if self.p.stream == "never" else "below the streaming threshold, "
                   "YAFFE_STREAM_ABOVE_MB") if not wanted else "its format cannot be streamed"
            if wanted and self.path.endswith(".gz"):
                why += ": a gzip file cannot be read by row; gunzip it to stream it"
            elif wanted and self.path.endswith(".npz"):
                why += ": a compressed .npz cannot be read by row; save it with np.savez to stream it"
            self.data_note = (f"Data layer '{self.name}': '{self.p.source}' read into memory ({self.rows:,} rows, "
                              f"{held / 2**20:,.1f} MiB; {why})")
        stats = [b.data for b in self.blobs]
        data_stats, target_stats = self._split_stats(stats)
        if data_stats and data_stats[0][0] == 0 and self.phase == "TRAIN":
            self.transformer.fit(self.arrays[0], data_stats)
        if target_stats and target_stats[0][0] == 0 and self.phase == "TRAIN":
            self.target_tf.fit(self.arrays[1], target_stats)

    def _split_stats(self, stats):
        """(the data's normalize statistics, the targets')."""
        if self.target_tf is None:
            return stats, []
        return stats[:self.n_data_stats], stats[self.n_data_stats:]

    def check_rows(self):
        """[(array, row ids or None)] per top for validation's data checks: every row held in memory, or for a
        streamed source even samples, read a chunk at a time and never the whole source: CHECK_SAMPLE rows
        (YAFFE_DATA_SAMPLE, run.py validate --data-sample) of the labels and other small tops, and of the data
        as many as fit in CHECK_BYTES once decoded."""
        if self.arrays is not None:
            return [(a, None) for a in self.arrays]
        limit = int(os.environ.get("YAFFE_DATA_SAMPLE", CHECK_SAMPLE))
        row_bytes = max(1, int(np.prod(self.sample_shapes[0])) * self.dtype.itemsize)

        def sample(n):
            return np.unique(np.linspace(0, self.rows - 1, max(1, min(self.rows, n))).astype(np.int64))

        out = []
        with sources.reading():
            ids = sample(min(limit, CHECK_BYTES // row_bytes))
            parts = [self.reader.read(ids[s:s + 256])[0] for s in range(0, len(ids), 256)]
            same = all(p.dtype != object for p in parts) and len({p.shape[1:] for p in parts}) == 1
            data = np.concatenate(parts) if same else _ragged_concat(parts)  # ragged: images of several sizes
            out.append((data, ids))
            if len(self.spec.get("top", [])) > 1:
                ids = sample(limit)
                parts = [self.reader.extras(ids[s:s + 4096]) for s in range(0, len(ids), 4096)]
                out.extend((np.concatenate([p[k] for p in parts]), ids) for k in range(len(parts[0])))
        return out

    def _set_arrays(self, arrays):
        self.arrays = arrays
        self._set_rows(len(arrays[0]))

    def _set_rows(self, n):
        self.rows = n
        if self.rows == 0:
            raise UserError(f"{self.path}: error: the source has no rows")
        self.order = np.arange(self.rows)
        self.pos = self.epoch = 0
        if getattr(self.p, "shuffle", False):
            self.order = self._shuffled(self.order)
        skip = getattr(self.p, "rand_skip", 0)
        if skip and self.phase == "TRAIN":  # Caffe's rand_skip: start at a random example below it
            self.pos = int(self.rng.integers(skip)) % self.rows

    def describe_row(self, i: int) -> str:
        return f"row {i}"

    def _shuffled(self, order):
        """A new epoch's order (a new array: batches prefetched keep theirs)."""
        order = order.copy()
        self.rng.shuffle(order)
        return order

    def next_indices(self):
        """Row indices of the next batch, starting a new (reshuffled) epoch when the rows run out. Under MPI
        every rank walks the same global batch of ranks x batch_size rows and keeps its own slice."""
        rank, ranks = self.shard
        out = np.empty(self.batch_size * ranks, np.int64)
        filled = 0
        while filled < out.size:
            take = min(out.size - filled, self.rows - self.pos)
            out[filled:filled + take] = self.order[self.pos:self.pos + take]
            filled += take
            self.pos += take
            if self.pos == self.rows:
                self.pos = 0
                self.epoch += 1
                if getattr(self.p, "shuffle", False):  # a new array: batches made ahead keep theirs
                    self.order = self._shuffled(self.order)
        return out[rank * self.batch_size:(rank + 1) * self.batch_size] if ranks > 1 else out

    def _rows(self, k, idx):
        return np.take(self.arrays[k], idx, axis=0)

    def forward(self, bottom, top):
        if not self.loaded:
            self.load()
        if self.reader is not None:
            return self._stream_forward(top)
        idx = self.next_indices()
        self.last_indices = idx
        self.transformer.phase = self.phase
        data_stats, target_stats = self._split_stats([b.data for b in self.blobs])
        rng = self.transform_rng or self.rng
        self.transformer.apply(self._rows(0, idx), top[0].data, data_stats, rng)
        for k, t in enumerate(top[1:], 1):
            if k == 1 and self.transformer.mixes:
                t.data[...] = self.transformer.mix(top[0].data, self._rows(1, idx), rng)
            elif k == 1 and self.target_tf is not None:
                self.target_tf.apply(self._rows(1, idx), t.data, target_stats, self.transform_rng or self.rng)
            else:
                t.data[...] = self._rows(k, idx)

    def target_scale(self):
        """Per-value factor from normalized targets back to their units (None: not normalized, or not affine)."""
        if self.target_tf is None:
            return None
        return self.target_tf.affine_scale(self._split_stats([b.data for b in self.blobs])[1])

    def state_dict(self):
        if not self.loaded:
            return {}
        if self.reader is not None and self.prefetcher is not None:
            return dict(self.consumed)  # where the batches used so far end, not where the prefetch has got to
        return {"pos": self.pos, "epoch": self.epoch, "order": self.order.copy(),
                **({"rng": self.rng.bit_generator.state} if self.reader is not None else {})}

    def load_state_dict(self, state):
        if not state:
            return
        if not self.loaded:
            self.load()
        if len(state["order"]) != self.rows:
            raise UserError(f"layer '{self.name}': the snapshot was taken with {len(state['order'])} rows in the "
                            f"source but it now has {self.rows}; resume with the same data")
        self.order = np.asarray(state["order"], np.int64)
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])
        if "rng" in state:  # streaming: the shuffle's generator as it was at the last batch used
            self.rng.bit_generator.state = state["rng"]
        if "batch_no" in state:
            self.batch_no = int(state["batch_no"])
        self._stop_prefetch()

    # ---- streaming (layers/stream.py) -----------------------------------------------------------------

    def _open_stream(self, reader):
        from .stream import stored_bytes
        self.reader = reader
        self._set_rows(reader.n)
        # the batches' crop and mirror draws derive from it: from the layer's seed, drawing nothing (a streamed
        # source shuffles as the same source held in memory)
        seq = getattr(self.rng.bit_generator, "seed_seq", None)
        self.stream_seed = int(seq.generate_state(1, np.uint64)[0] >> np.uint64(2)) if seq is not None else 0
        self.batch_no = 0
        stats = [b.data for b in self.blobs]
        data_stats, target_stats = self._split_stats(stats)
        fit = (data_stats and data_stats[0][0] == 0) or (target_stats and target_stats[0][0] == 0)
        sample = ""
        if fit and self.phase == "TRAIN":  # normalize statistics from an even sample of the rows
            n = getattr(self.transformer.p, "normalize_sample", FIT_SAMPLE)
            idx = np.unique(np.linspace(0, self.rows - 1, min(self.rows, n)).astype(np.int64))
            with sources.reading():
                rows = reader.read(idx)
            if data_stats and data_stats[0][0] == 0:
                self.transformer.fit(rows[0], data_stats)
            if target_stats and target_stats[0][0] == 0:
                self.target_tf.fit(rows[1], target_stats)
            sample = f"; normalize fitted on {len(idx):,} evenly spaced rows"
        depth = getattr(self.p, "prefetch", 4)
        decoded = "" if self.held_estimate is None else f", ~{self._decoded_bytes() / 2**20:,.0f} MiB decoded"
        self.data_note = (f"Data layer '{self.name}': streaming {self.rows:,} rows of '{self.p.source}' "
                          f"({self._source_bytes(stored_bytes) / 2**20:,.0f} MiB stored{decoded}), {depth} batches "
                          f"prefetched{sample}")

    def _stop_prefetch(self):
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None

    def _schedule(self):
        """The next batch's rows and the state after it (main thread, in order)."""
        idx = self.next_indices()
        self.batch_no += 1
        state = {"pos": self.pos, "epoch": self.epoch, "order": self.order, "rng": self.rng.bit_generator.state,
                 "idx": idx, "batch": self.batch_no}
        return idx, state

    def _fill(self, idx, state, buffers):
        """Read and transform one batch into the buffers (a worker thread)."""
        with sources.reading():
            raw = self.prefetcher.read(self.reader, idx)
        rng = np.random.default_rng([self.stream_seed, state["batch"]])
        data_stats, target_stats = self._split_stats([b.data for b in self.blobs])
        first = raw[0]
        if first.dtype == object or buffers[0].shape[1:] != self.transformer.out_shape:
            buffers = [None] + list(buffers[1:])
            buffers[0] = self._odd_batch(first, rng)
        else:
            self.transformer.apply(first, buffers[0], data_stats, rng)
        for k in range(1, len(buffers)):
            if k == 1 and self.transformer.mixes:
                buffers[1][...] = self.transformer.mix(buffers[0], raw[1], rng)
            elif k == 1 and self.target_tf is not None:
                self.target_tf.apply(raw[1], buffers[1], target_stats, rng)
            else:
                buffers[k][...] = raw[k].reshape(buffers[k].shape)
        return buffers

    def _odd_batch(self, first, rng):
        raise UserError(f"{self.path}: error: the rows have different shapes; give rows of one shape")

    def _stream_forward(self, top):
        from .stream import Prefetcher
        if self.prefetcher is None:
            shapes = [t.data.shape for t in top]
            self.prefetcher = Prefetcher(self._schedule, self._fill,
                                         lambda: [np.empty(s, self.dtype) for s in shapes],
                                         depth=getattr(self.p, "prefetch", 4), reader=self.reader,
                                         processes=getattr(self.p, "processes", 0))
        self.transformer.phase = self.phase
        try:
            buffers, state, waited = self.prefetcher.next()
        except sources.SourceError as e:  # a record a worker could not read
            self._stop_prefetch()
            raise UserError(f"{self.path}: error: {e}") from None
        self.data_wait += waited
        usual = all(b.shape == t.data.shape for b, t in zip(buffers, top))
        for b, t in zip(buffers, top):
            if t.data.shape != b.shape:  # images of another size: the net reshapes (Net._follow)
                t.data, t.diff = np.empty(b.shape, self.dtype), np.zeros(b.shape, self.dtype)
            np.copyto(t.data, b)
        self.prefetcher.release(buffers, usual)
        self.consumed = {k: v for k, v in state.items() if k not in ("idx", "batch")}
        self.consumed["batch_no"] = state["batch"]
        self.last_indices = state["idx"]


@register("Data")
class Data(RowData):
    """Rows from a file. Tops: data (N, ...example shape) [, label (N,)].

    `.npz`: one array per top, named after the top. `.csv`/`.csv.gz`: each row is the features then an
    integer label (a non-numeric first line is a header); a square number of features s*s is read as a
    1 x s x s image unless `sample_shape` says otherwise. IDX (`*-images-idx3-ubyte[.gz]`): images, with
    the labels from the matching `*-labels-idx1-ubyte[.gz]` file beside it.
    """

    param_block = "data_param"
    fields = (
        Field("source", "str", None, "an .npz, .csv, .csv.gz, IDX images file or CIFAR binary batch (.bin), or "
              "an LMDB or LevelDB folder",
              required=True),
        Field("batch_size", "int", None, "examples per batch", minimum=1, required=True),
        Field("shuffle", "bool", False, "serve the rows in a new random order each epoch"),
        Field("sample_shape", "int", None, "shape of one example, e.g. [1, 8, 8] (csv only)", minimum=1,
              repeated=True),
        Field("backend", "enum", None, "LMDB or LEVELDB: source is a database of Caffe Datum records (extras "
              "lmdb, leveldb); found from the folder's files when not given",
              choices=("LMDB", "LEVELDB")),
        Field("rand_skip", "int", 0, "skip a random number (below this) of examples at the start, as Caffe does "
              "so that parallel runs see different batches", minimum=0),
        Field("force_encoded_color", "bool", False, "decode encoded (PNG/JPEG) Datum images as 3-channel color"),
        Field("prefetch", "int", 4, "batches read ahead by threads when the source is streamed", minimum=1),
        Field("processes", "int", 0, "streamed: read and decode in this many processes (images decode faster "
              "there than on threads, which share the GIL); 0: threads only", minimum=0),
        STREAM_FIELD,
    )
    other_blocks = {"transform_param": TRANSFORM_FIELDS}

    def _inspect(self):
        path, tops = self.path, self.spec.get("top", [])
        if not os.path.exists(path):
            raise sources.missing(getattr(self.p, "source", None) or self.path, self.relative_to)
        self.kind = sources.kind(path, self.p.backend)
        if self.kind == "lmdb" and self.p.backend is None and getattr(self, "caffe_file", False):
            self.warnings.append(("the source is an LMDB and backend is not set: yaffe reads it, but Caffe opens it "
                                  "as a LevelDB (its default) and fails; add backend: LMDB to data_param for Caffe",
                                  "data_param.source", "info"))
        stored = {"dtype": self.dtype}  # what the images are held as in memory (_load)
        self.stored_dtype = stored["dtype"]
        if self.kind in ("lmdb", "leveldb"):
            shapes = sources.lmdb_inspect(path, tops, self.p.force_encoded_color, self.kind, stored)
            self.stored_dtype = stored["dtype"]
            return shapes
        if self.kind == "npz":
            return sources.npz_inspect(path, tops)
        if self.kind == "csv":
            return sources.csv_inspect(path, tops, self.p.sample_shape)
        if self.kind == "cifar":
            self.stored_dtype = np.dtype(np.uint8)
            return [sources.CIFAR_IMAGE, ()][:len(tops) or 1]
        if np.dtype(sources.idx_header(path)[0]) == np.uint8:
            self.stored_dtype = np.dtype(np.uint8)
        return sources.idx_inspect(path, tops)

    def _row_bytes(self):
        """A row as held in memory: the image as stored (uint8 pixels: a byte a value), the label as float."""
        first = math.prod(self.sample_shapes[0]) * np.dtype(getattr(self, "stored_dtype", self.dtype)).itemsize
        return first + sum(math.prod(s) for s in self.sample_shapes[1:]) * self.dtype.itemsize

    def _count_rows(self, cap):
        if self.kind in ("lmdb", "leveldb"):
            return sources.db_count(self.path, self.kind, cap)
        if self.kind == "npz":
            tops = self.spec.get("top", []) or ["data"]
            shape = sources.npz_headers(self.path).get(tops[0])
            return shape[0] if shape else None
        if self.kind == "idx":
            return sources.idx_header(self.path)[1][0]
        if self.kind == "cifar":
            return os.path.getsize(self.path) // sources.cifar_record(self.path)
        return None  # csv: its text takes about what its floats take

    def _load(self):
        """The rows; images stored as uint8 (Datum pixels, MNIST's IDX, CIFAR's batches) stay uint8 in memory, a
        quarter of float32's bytes: the transform makes each batch float."""
        path, tops = self.path, self.spec.get("top", [])
        if self.kind in ("lmdb", "leveldb"):
            return sources.lmdb_load(path, tops, None, self.p.force_encoded_color, self.kind)
        if self.kind == "npz":
            return sources.npz_load(path, tops, self.dtype)
        if self.kind == "csv":
            self.header_lines = sources.csv_header_lines(path)
            return sources.csv_load(path, tops, self.dtype, self.sample_shapes[0])
        if self.kind == "cifar":
            return sources.cifar_load(path, tops, self.dtype, images_as_stored=True)
        return sources.idx_load(path, tops, self.dtype, images_as_stored=True)

    def _stream_reader(self):
        from . import stream
        path, tops = self.path, self.spec.get("top", []) or ["data"]
        if self.kind in ("lmdb", "leveldb"):
            return stream.DatumReader(path, self.kind, len(tops), self.dtype, self.p.force_encoded_color)
        if self.kind == "csv":
            if path.endswith(".gz"):
                return None  # a gzip stream cannot seek: read into memory
            self.header_lines = sources.csv_header_lines(path)
            return stream.CsvReader(path, self.header_lines, self.sample_shapes[0], self.dtype, len(tops))
        maps = (stream.npz_memmaps(path, tops) if self.kind == "npz" else stream.cifar_memmaps(path, tops)
                if self.kind == "cifar" else stream.idx_memmaps(path, tops))
        return stream.MemmapReader(maps, self.dtype) if maps is not None else None

    def describe_row(self, i: int) -> str:
        if self.kind == "csv":
            return f"line {i + 1 + self.header_lines}"
        return f"row {i} (index into the arrays)" if self.kind == "npz" else f"example {i}"


@register("HDF5Data")
class HDF5Data(RowData):
    """Caffe's HDF5Data: `source` is a text file listing .h5 files (one per line, relative to it); the tops
    are named after datasets, which must share their first dimension. No transform (as in Caffe).
    Needs the optional h5py: pip install 'yaffe[hdf5]'."""

    param_block = "hdf5_data_param"
    fields = (
        Field("source", "str", None, "a text file listing .h5 files", required=True),
        Field("batch_size", "int", None, "examples per batch", minimum=1, required=True),
        Field("shuffle", "bool", False, "serve the rows in a new random order each epoch"),
        Field("prefetch", "int", 4, "batches read ahead by threads when the files are streamed", minimum=1),
        STREAM_FIELD,
    )
    tops = (1, None)
    transforms = False

    def _source_bytes(self, stored_bytes):
        return sum(stored_bytes(f) for f in sources.hdf5_files(self.path))

    def _count_rows(self, cap):
        h5py, top = sources.h5py_module(), (self.spec.get("top", []) or ["data"])[0]
        rows = 0
        for path in sources.hdf5_files(self.path):
            with h5py.File(path, "r") as f:
                rows += f[top].shape[0] if top in f else 0
            if rows >= cap:
                break
        return rows

    def _stream_reader(self):
        from .stream import Hdf5Reader
        reader = Hdf5Reader(sources.hdf5_files(self.path), self.spec.get("top", []), self.dtype)
        self.file_rows = reader.lengths
        return reader

    def _shuffled(self, order):
        """Caffe's HDF5 shuffle: the files in a new order each epoch, the rows of each file shuffled within it."""
        starts = np.concatenate([[0], np.cumsum(self.file_rows)]).astype(np.int64)
        return np.concatenate([starts[f] + self.rng.permutation(self.file_rows[f])
                               for f in self.rng.permutation(len(self.file_rows))])

    def _inspect(self):
        if not os.path.isfile(self.path):
            raise sources.missing(getattr(self.p, "source", None) or self.path, self.relative_to)
        return sources.hdf5_inspect(self.path, self.spec.get("top", []))

    def _load(self):
        arrays, self.file_rows = sources.hdf5_load(self.path, self.spec.get("top", []), self.dtype, with_lengths=True)
        return arrays


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes its two bottoms, data (N, ...) and label (N, ...), to the HDF5 file hdf5_output_param.file_name
    as datasets "data" and "label" (Caffe's HDF5Output: float32, padded to 4 axes as Caffe's), rows appended at
    every forward (Caffe can write one batch only), so HDF5Data reads the file back. The file is created (emptied) at the first forward and
    flushed after each. No tops; nothing flows back. Needs h5py: pip install 'yaffe[hdf5]'."""

    param_block = "hdf5_output_param"
    fields = (Field("file_name", "str", None, "the .h5 file to write (relative to the working directory for a "
                    "Caffe prototxt, to the net file for YAML)", required=True),)
    bottoms = (2, 2)
    tops = (0, 0)
    differentiable = False
    base_dir = "."

    @property
    def path(self):
        return os.path.normpath(os.path.join(self.base_dir, self.p.file_name))

    def setup(self, bottom_shapes):
        data, label = (tuple(s) for s in bottom_shapes)
        if not data or not label or data[0] != label[0]:
            raise LayerError(f"data {list(data)} and label {list(label)} must have the same first dimension (the "
                             "batch)", "bottom")
        if not os.path.isdir(os.path.dirname(self.path) or "."):
            raise LayerError(f"file_name '{self.p.file_name}': the folder {os.path.dirname(self.path)} does not "
                             "exist; create it or write elsewhere", "hdf5_output_param.file_name")
        self.file = None
        return []

    def forward(self, bottom, top):
        if self.file is None:
            try:
                h5py = sources.h5py_module()
            except sources.SourceError as e:
                raise UserError(f"layer '{self.name}' (HDF5Output): {e}") from None
            try:
                self.file = h5py.File(self.path, "w")
            except OSError as e:
                raise UserError(f"{self.path}: error: cannot create the HDF5 file ({e}); is another net (the TRAIN "
                                "and the TEST net?) writing it? Give each its own file_name") from None
            for name, b in (("data", bottom[0]), ("label", bottom[1])):
                row = self._row_shape(b.data.shape)
                self.file.create_dataset(name, shape=(0,) + row, maxshape=(None,) + row, dtype=b.data.dtype,
                                         chunks=True)
        for name, b in (("data", bottom[0]), ("label", bottom[1])):
            ds = self.file[name]
            n = ds.shape[0]
            ds.resize(n + b.data.shape[0], axis=0)
            ds[n:] = b.data.reshape((-1,) + ds.shape[1:])
        self.file.flush()

    @staticmethod
    def _row_shape(shape):
        """Caffe writes (num, channels, height, width): up to 4 axes padded with 1s, e.g. labels (N,) as (N, 1, 1, 1)."""
        return tuple(shape[1:]) + (1,) * (4 - len(shape)) if len(shape) <= 4 else tuple(shape[1:])

    def __del__(self):
        f = getattr(self, "file", None)
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001: interpreter shutdown
                pass


@register("MemoryData")
class MemoryData(RowData):
    """Arrays given from Python: ``net.set_input_arrays(data, labels)``. Tops: data (N, C, H, W), label (N,).
    The number of examples must be a multiple of batch_size (as in Caffe)."""

    param_block = "memory_data_param"
    fields = (
        Field("batch_size", "int", None, "examples per batch", minimum=1, required=True),
        Field("channels", "int", None, "channels per example", minimum=1, required=True),
        Field("height", "int", None, "height per example", minimum=1, required=True),
        Field("width", "int", None, "width per example", minimum=1, required=True),
    )
    tops = (2, 2)
    other_blocks = {"transform_param": TRANSFORM_FIELDS}

    def _inspect(self):
        return [(self.p.channels, self.p.height, self.p.width), ()]

    def _load(self):
        raise UserError(f"layer '{self.name}' (MemoryData) has no data: call net.set_input_arrays(data, labels) "
                        "before running the net")

    def set_arrays(self, data, labels):
        data = np.ascontiguousarray(data, self.dtype)
        labels = np.ascontiguousarray(labels, self.dtype).reshape(-1)
        want = self.sample_shapes[0]
        if data.ndim != 4 or data.shape[1:] != want or len(labels) != len(data):
            raise UserError(f"layer '{self.name}' (MemoryData): needs data (N, {', '.join(map(str, want))}) and N "
                            f"labels; received {list(data.shape)} and {len(labels)} labels")
        if len(data) % self.batch_size:
            raise UserError(f"layer '{self.name}' (MemoryData): {len(data)} examples is not a multiple of "
                            f"batch_size {self.batch_size}")
        self._set_arrays([data, labels])


@register("DummyData")
class DummyData(Layer):
    """Tops filled by fillers (constant 0 by default), e.g. for benchmarks. dummy_data_param.shape: one
    shape per top (or one for all); data_filler: none, one, or one per top. As in Caffe, a top with a constant
    filler is filled once (so it can be set from Python and stays), the others at every forward. Caffe's
    legacy num/channels/height/width (each once, or once per top) give 4-D shapes instead of `shape`."""

    param_block = "dummy_data_param"
    LEGACY = ("num", "channels", "height", "width")
    fields = (
        Field("shape", "shape", None, "one {dim: [...]} per top, or one for all", repeated=True),
        Field("data_filler", "filler", None, "one filler, or one per top (default constant 0)", repeated=True),
        *(Field(name, "int", None, f"legacy 4-D shapes: the {name} of each top (once, or once per top)",
                minimum=0, repeated=True) for name in LEGACY),
    )
    bottoms = (0, 0)
    tops = (1, None)
    is_data = True
    needs_rng = True
    differentiable = False

    def setup(self, bottom_shapes):
        shapes, fillers = self.p.shape, self.p.data_filler
        n = self.n_tops
        legacy = [getattr(self.p, name) for name in self.LEGACY]
        if any(legacy):
            if shapes:
                raise LayerError("give either shape or the legacy num/channels/height/width, not both",
                                 "dummy_data_param.shape")
            for name, values in zip(self.LEGACY, legacy):
                if len(values) not in (1, n):
                    raise LayerError(f"the legacy {name} needs 1 or {n} values (with num, channels, height and "
                                     f"width); received {values}", f"dummy_data_param.{name}")
            shapes = [{"dim": [v[i if len(v) > 1 else 0] for v in legacy]} for i in range(n)]
        elif not shapes:
            raise LayerError("needs shape (one {dim: [...]} per top, or one for all)", "dummy_data_param")
        for s in shapes:
            if not dims(s) or any(not isinstance(d, int) or d < 1 for d in dims(s)):
                raise LayerError(f"shape {{dim: {list(dims(s))}}}: every dim must be a whole number >= 1",
                                 "dummy_data_param.shape")
        if len(shapes) not in (1, n) or len(fillers) not in (0, 1, n):
            raise LayerError(f"needs 1 or {n} shapes and 0, 1 or {n} data_fillers; received {len(shapes)} and "
                             f"{len(fillers)}", "dummy_data_param")
        self.fillers = (fillers * n if len(fillers) == 1 else fillers) or [None] * n
        self.refill = [bool(f) and f.get("type", "constant") != "constant" for f in self.fillers]
        self.filled = False
        shapes = shapes * n if len(shapes) == 1 else shapes
        return [dims(s) for s in shapes]

    def forward(self, bottom, top):
        for t, f, refill in zip(top, self.fillers, self.refill):
            if (refill and f["type"] in ("uniform", "gaussian") and f.get("sparse", -1) < 0
                    and t.data.flags.c_contiguous and t.data.dtype in (np.float32, np.float64)):
                self._draw(t.data.reshape(-1), f)
            elif refill or not self.filled:
                t.data[...] = fill(t.shape, f, self.rng, t.data.dtype)
        self.filled = True

    def _draw(self, out, f):
        """Refill in place in the blob's dtype (no float64 array per forward): U[min, max) or N(mean, std)."""
        kind = out.dtype.type
        if f["type"] == "uniform":
            uniform_into(out, self.rng, f.get("min", 0.0), f.get("max", 1.0))
        else:
            self.rng.standard_normal(out=out, dtype=out.dtype)
            out *= kind(f.get("std", 1.0))
            out += kind(f.get("mean", 0.0))


@register("ImageData")
class ImageData(RowData):
    """Images listed in a text file of `path label` lines (paths after root_folder, or from the list file's folder
    or the working directory: sources.list_root), read as Caffe reads them (BGR: layers/images.py). Tops: data
    (N, C, H, W), label (N,). Images are decoded once, resized to new_height x new_width when given, grey unless
    is_color. Images of different sizes: each batch takes its first image's size
    (the net reshapes to it, as Caffe's does); a batch must share one size, or all be at least crop_size.
    Needs the optional Pillow: pip install 'yaffe[images]'."""

    param_block = "image_data_param"
    fields = (
        Field("source", "str", None, "the list file of `path label` lines", required=True),
        Field("batch_size", "int", 1, "examples per batch", minimum=1),
        Field("shuffle", "bool", False, "serve the images in a new random order each epoch"),
        Field("new_height", "int", 0, "resize to this height (0: keep)", minimum=0),
        Field("new_width", "int", 0, "resize to this width (0: keep)", minimum=0),
        Field("is_color", "bool", True, "3 channels (BGR, as Caffe's OpenCV reads them) rather than 1 (grey)"),
        Field("root_folder", "str", "", "prefixed to each image path as Caffe prefixes it (\"data/\" + \"x.jpg\"; "
              "without it: the list file's folder or the working directory, whichever holds the first image)"),
        Field("prefetch", "int", 4, "batches decoded ahead by threads when the images are streamed", minimum=1),
        Field("processes", "int", 0, "streamed: read and decode in this many processes (images decode faster "
              "there than on threads, which share the GIL); 0: threads only", minimum=0),
        STREAM_FIELD,
    )
    tops = (2, 2)
    other_blocks = {"transform_param": TRANSFORM_FIELDS}

    def _source_bytes(self, stored_bytes):
        entries = self._entries()
        some = entries[:: max(1, len(entries) // 64)]  # the mean of 64 spread files, times their number
        return int(np.mean([stored_bytes(p) for p, _ in some]) * len(entries))

    def _held_bytes(self, limit):
        """The decoded images (uint8) and labels (float32): new_height x new_width, or the mean size of 64 spread
        images, read from their headers (nothing decoded), times their number."""
        from .images import pillow
        entries = self._entries()
        if not entries:
            return None
        if self.p.new_height and self.p.new_width:
            plane = self.p.new_height * self.p.new_width
        else:
            image, sizes = pillow(), []
            for path, _ in entries[:: max(1, len(entries) // 64)]:
                try:
                    with image.open(path) as im:
                        sizes.append(im.size[0] * im.size[1])
                except (OSError, ValueError):
                    pass  # (the load names it)
            if not sizes:
                return None
            plane = float(np.mean(sizes))
        return int(len(entries) * ((3 if self.p.is_color else 1) * plane + self.dtype.itemsize))

    def _decoded_bytes(self):
        return self.held_estimate

    def _stream_reader(self):
        from .stream import ImageReader
        self.entries = self._entries()
        return ImageReader(self.entries, self.p.is_color, self.p.new_height, self.p.new_width, self.dtype)

    def _odd_batch(self, first, rng):
        """A batch of images of another size than the first batch's (or of mixed sizes, all >= crop_size)."""
        shapes = {a.shape for a in first}
        if len(shapes) > 1 and not (self.transformer.p.crop_size and
                                    min(min(s[1:]) for s in shapes) >= self.transformer.p.crop_size):
            raise UserError(f"{self.path}: error: one batch holds images of sizes "
                            f"{', '.join(str(list(s)) for s in sorted(shapes))}; as in Caffe, the images of a batch "
                            "must share a size (or all be at least crop_size); set new_height and new_width, or "
                            "batch_size: 1")
        out = None
        for k, img in enumerate(first):
            tf = Transformer(self.transformer.p, self.phase, self.base_dir, img.shape, self.dtype)
            if out is None:
                out = np.empty((len(first),) + tf.out_shape, self.dtype)
            tf.apply(np.asarray(img)[None], out[k:k + 1], [], rng)
        return out

    def _entries(self):
        if not os.path.isfile(self.path):
            raise sources.missing(getattr(self.p, "source", None) or self.path, self.relative_to)
        entries = []
        with open(self.path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rsplit(maxsplit=1)
                try:
                    entries.append((parts[0], float(parts[1])))
                except (IndexError, ValueError):
                    raise sources.SourceError(f"line {n} is {line.strip()!r}; each line must be 'path label'") from None
        if not entries:
            raise sources.SourceError("lists no images")
        if self.p.root_folder:
            paths = sources.with_root(self.base_dir, self.p.root_folder, [p for p, _ in entries])
            return [(p, lab) for p, (_, lab) in zip(paths, entries)]
        root = sources.list_root(self.path, [p for p, _ in entries], self.base_dir, getattr(self, "caffe_file", False))
        return [(os.path.join(root, p) if not os.path.isabs(p) else p, lab) for p, lab in entries]

    def _image(self, path):
        from .stream import decode_image
        return decode_image(path, self.p.is_color, self.p.new_height, self.p.new_width, np.uint8)  # (as decoded:
        # held in memory, a quarter of float32's bytes; the transform makes each batch float)

    def _inspect(self):
        if bool(self.p.new_height) != bool(self.p.new_width):
            given = "new_height" if self.p.new_height else "new_width"
            raise LayerError(f"{given} is {getattr(self.p, given)} and the other is 0; as in Caffe, images are resized "
                             "only to both: set new_height and new_width (or neither)", f"image_data_param.{given}")
        self.entries = self._entries()
        c = 3 if self.p.is_color else 1
        if self.p.new_height and self.p.new_width:
            return [(c, self.p.new_height, self.p.new_width), ()]
        return [self._image(self.entries[0][0]).shape, ()]

    def _load(self):
        labels = np.array([lab for _, lab in self.entries], self.dtype)
        first = self._image(self.entries[0][0])
        same = np.empty((len(self.entries),) + first.shape, first.dtype)  # (one array, not a list stacked: the
        same[0], images = first, None                                       # images once in memory, not twice)
        for i, (path, _) in enumerate(self.entries[1:], 1):
            image = self._image(path)
            if images is None and image.shape == first.shape:
                same[i] = image
                continue
            if images is None:
                images = list(same[:i])
            images.append(image)
        self.mixed = images is not None
        if not self.mixed:
            return [same, labels]
        if self.blobs:
            raise sources.SourceError(f"holds images of different sizes ({list(images[0].shape)}, ...), and "
                                      "transform_param.normalize needs one size; set new_height and new_width")
        # As Caffe: each batch takes the size of its first image, and the net reshapes to it (Net.reshape)
        self.reshapes, self._transformers = True, {self.sample_shapes[0]: self.transformer}
        images_array = np.empty(len(images), object)
        images_array[:] = images
        return [images_array, labels]

    def forward(self, bottom, top):
        if not self.loaded:
            self.load()
        if self.reader is not None:
            self.reshapes = True  # a batch of other-sized images reshapes the net
            return self._stream_forward(top)
        if not self.mixed:
            return super().forward(bottom, top)
        idx = self.next_indices()
        self.last_indices = idx
        shape = self.arrays[0][idx[0]].shape
        for i in idx:
            if self.arrays[0][i].shape != shape:
                crop = self.transformer.p.crop_size
                if not crop or min(self.arrays[0][i].shape[1:]) < crop:
                    raise UserError(f"{self.path}: error: one batch holds {self.describe_row(idx[0])}, "
                                    f"{list(shape)}, and {self.describe_row(i)}, {list(self.arrays[0][i].shape)}; "
                                    "as in Caffe, the images of a batch must share a size (or all be at least "
                                    "crop_size); set new_height and new_width, or batch_size: 1")
        if shape not in self._transformers:
            tp = self.transformer.p
            self._transformers[shape] = Transformer(tp, self.phase, self.base_dir, shape, self.dtype)
        tf = self._transformers[shape]
        out = (len(idx),) + tf.out_shape
        if top[0].data.shape != out:
            top[0].data, top[0].diff = np.empty(out, self.dtype), np.empty(out, self.dtype)
        for k, i in enumerate(idx):
            img = self.arrays[0][i]
            t = tf if img.shape == shape else self._transformers.setdefault(
                img.shape, Transformer(tf.p, self.phase, self.base_dir, img.shape, self.dtype))
            t.phase = self.phase
            t.apply(img[None], top[0].data[k:k + 1], [], self.transform_rng or self.rng)
        top[1].data[...] = self.arrays[1][idx]

    def describe_row(self, i: int) -> str:
        return f"line {i + 1} ({self.entries[i][0]})"


@register("Input")
class Input(Layer):
    """Tops whose data is set from Python (``net.blobs[name].data[...] = x``). No bottoms.

    input_param.shape: one BlobShape for every top, or one per top.
    """

    param_block = "input_param"
    fields = (Field("shape", "shape", None, "one {dim: [...]} per top, or one for all", repeated=True),)
    bottoms = (0, 0)
    tops = (1, None)
    differentiable = False

    def setup(self, bottom_shapes):
        shapes = self.p.shape
        if len(shapes) not in (1, self.n_tops):
            raise LayerError(f"input_param.shape needs one shape or one per top ({self.n_tops}); "
                             f"received {len(shapes)}", "input_param.shape")
        shapes = [dims(s) for s in shapes]
        for s in shapes:
            if not s or any(not isinstance(d, int) or d < 1 for d in s):
                raise LayerError(f"input_param.shape {{dim: {list(s)}}}: every dim must be a whole number >= 1",
                                 "input_param.shape")
        return shapes * self.n_tops if len(shapes) == 1 else shapes

    reshapes = True  # a blob reshaped from Python (net.blobs['data'].reshape(...)) reshapes the net at forward

    def forward(self, bottom, top):
        pass


@register("WindowData")
class WindowData(Layer):
    """R-CNN's windows (Caffe's WindowData): each batch samples fg_fraction of its windows among those whose
    overlap with a ground-truth box is >= fg_threshold (label: their class) and the rest among those < bg_threshold
    (label 0), crops each from its image with context_pad pixels of context (crop_mode warp: stretched to
    crop_size x crop_size; square: the square around the window), mirrors at random, subtracts the mean and
    scales. Tops: data (N, C, crop_size, crop_size) in Caffe's BGR order, label (N,).

    The window file: for each image `# index`, its path, channels, height, width, the number of windows, then a
    line `class overlap x1 y1 x2 y2` per window (pixels, inclusive)."""

    param_block = "window_data_param"
    fields = (
        Field("source", "str", None, "the window file", required=True),
        Field("batch_size", "int", None, "windows per batch", minimum=1, required=True),
        Field("fg_threshold", "float", 0.5, "overlap from which a window is foreground", minimum=0, maximum=1),
        Field("bg_threshold", "float", 0.5, "overlap below which a window is background", minimum=0, maximum=1),
        Field("fg_fraction", "float", 0.25, "the share of foreground windows in a batch", minimum=0, maximum=1),
        Field("context_pad", "int", 0, "pixels of context around each window (in the crop's scale)", minimum=0),
        Field("crop_mode", "enum", "warp", "warp: stretch the window to a square; square: the square around it",
              choices=("warp", "square")),
        Field("root_folder", "str", "", "prefix of the image paths"),
        Field("scale", "float", 1.0, "multiplies each pixel after the mean"),
        Field("mean_file", "str", None, "deprecated here: give it in transform_param"),
        Field("crop_size", "int", 0, "deprecated here: give it in transform_param", minimum=0),
        Field("mirror", "bool", False, "deprecated here: give it in transform_param"),
        Field("cache_images", "bool", False, "keep the decoded images in memory"),
    )
    other_blocks = {"transform_param": TRANSFORM_FIELDS}
    bottoms = (0, 0)
    tops = (2, 2)
    is_data = True
    needs_rng = True
    differentiable = False
    base_dir = "."

    def setup(self, bottom_shapes):
        tp = resolve(TRANSFORM_FIELDS, self.spec.get("transform_param"))
        self.crop = tp.crop_size or self.p.crop_size
        self.mirror = tp.mirror or self.p.mirror
        self.mean_values = list(tp.mean_value or [])
        if not self.crop:
            raise LayerError("needs transform_param.crop_size: the windows are warped to that square",
                             "transform_param.crop_size")
        path = os.path.normpath(os.path.join(self.base_dir, self.p.source))
        try:
            with sources.reading():
                self.images, self.fg, self.bg = self._read_windows(path)
        except sources.SourceError as e:
            raise LayerError(f"source '{self.p.source}' ({path}): {e}", f"{self.param_block}.source") from None
        mean_file = tp.mean_file or self.p.mean_file
        self.mean = None
        if mean_file:
            from netspec.caffemodel import read_blob
            mpath = os.path.normpath(os.path.join(self.base_dir, mean_file))
            try:
                with open(mpath, "rb") as f:
                    m = read_blob(f.read()) if mpath.endswith(".binaryproto") else np.load(mpath)
            except (OSError, ValueError) as e:
                raise LayerError(f"cannot read mean_file '{mean_file}' ({mpath}): {e}", "transform_param.mean_file") \
                    from None
            self.mean = m.reshape(m.shape[-3:]).astype(np.float32)
        self.cache = {}
        return [(self.p.batch_size, self.channels, self.crop, self.crop), (self.p.batch_size,)]

    def _read_windows(self, path):
        if not os.path.isfile(path):
            raise sources.missing(self.p.source or path, getattr(self, "relative_to", None))
        with open(path) as f:
            words = f.read().split()
        images, fg, bg, i = [], [], [], 0
        while i < len(words):
            if words[i] != "#":
                raise sources.SourceError(f"expected '# <image index>' at word {i + 1}; received {words[i]!r}")
            name, c, h, w, n = words[i + 2], int(words[i + 3]), int(words[i + 4]), int(words[i + 5]), int(words[i + 6])
            images.append((sources.with_root(self.base_dir, self.p.root_folder, [name])[0], c, h, w))
            i += 7
            for _ in range(n):
                label, overlap = int(words[i]), float(words[i + 1])
                box = [int(v) for v in words[i + 2:i + 6]]
                i += 6
                if overlap >= self.p.fg_threshold:
                    if label <= 0:
                        raise sources.SourceError(f"a foreground window of image {len(images) - 1} has class {label}; "
                                                  "classes start at 1 (0 is the background)")
                    fg.append((len(images) - 1, label, *box))
                elif overlap < self.p.bg_threshold:
                    bg.append((len(images) - 1, 0, *box))
        if not images:
            raise sources.SourceError("lists no images")
        if not fg or not bg:
            raise sources.SourceError(f"has {len(fg)} foreground and {len(bg)} background windows at the thresholds "
                                      f"({self.p.fg_threshold}, {self.p.bg_threshold}); it needs both")
        self.channels = images[0][1]
        return images, fg, bg

    def _image(self, k):
        if k in self.cache:
            return self.cache[k]
        from .images import read_image
        path = self.images[k][0]
        try:
            a = read_image(path).transpose(1, 2, 0)  # H x W x 3, BGR as OpenCV reads it for Caffe
        except sources.SourceError as e:
            raise UserError(f"{path}: error: cannot read the image of window file '{self.p.source}' ({e})") from None
        if self.p.cache_images:
            self.cache[k] = a
        return a

    def forward(self, bottom, top):
        """Caffe's load_batch: background windows first, then foreground; the crop arithmetic is Caffe's."""
        from .images import cv_resize
        data, label = top[0].data, top[1].data
        data[...] = 0
        crop, pad = self.crop, self.p.context_pad
        n_fg = int(self.p.batch_size * self.p.fg_fraction)
        item = 0
        for windows, count in ((self.bg, self.p.batch_size - n_fg), (self.fg, n_fg)):
            for _ in range(count):
                k, cls, x1, y1, x2, y2 = windows[int(self.rng.integers(len(windows)))]
                flip = self.mirror and bool(self.rng.integers(2))
                img = self._image(k)
                rows, cols = img.shape[:2]
                size_w = size_h = crop
                pad_w = pad_h = 0
                if pad > 0 or self.p.crop_mode == "square":
                    context = crop / (crop - 2 * pad)
                    hh, hw = (y2 - y1 + 1) / 2.0, (x2 - x1 + 1) / 2.0
                    cx, cy = x1 + hw, y1 + hh
                    if self.p.crop_mode == "square":
                        hh = hw = max(hh, hw)
                    x1, x2 = int(round(cx - hw * context)), int(round(cx + hw * context))
                    y1, y2 = int(round(cy - hh * context)), int(round(cy + hh * context))
                    uh, uw = y2 - y1 + 1, x2 - x1 + 1
                    px1, py1, px2, py2 = max(0, -x1), max(0, -y1), max(0, x2 - cols + 1), max(0, y2 - rows + 1)
                    x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
                    sx, sy = crop / uw, crop / uh
                    size_w, size_h = int(round((x2 - x1 + 1) * sx)), int(round((y2 - y1 + 1) * sy))
                    pad_h = int(round(py1 * sy))
                    pad_w = int(round((px2 if flip else px1) * sx))
                    size_h, size_w = min(size_h, crop - pad_h), min(size_w, crop - pad_w)
                x1, y1 = max(0, min(x1, cols - 1)), max(0, min(y1, rows - 1))
                x2, y2 = max(x1, min(x2, cols - 1)), max(y1, min(y2, rows - 1))
                patch = cv_resize(img[y1:y2 + 1, x1:x2 + 1], max(size_h, 1), max(size_w, 1)).astype(np.float32)
                if flip:
                    patch = patch[:, ::-1]
                patch = patch.transpose(2, 0, 1)[:self.channels]
                h, w = patch.shape[1:]
                if self.mean is not None:
                    off = (self.mean.shape[-1] - crop) // 2
                    patch = patch - self.mean[:self.channels, off + pad_h:off + pad_h + h, off + pad_w:off + pad_w + w]
                elif self.mean_values:
                    mv = np.resize(np.asarray(self.mean_values, np.float32), self.channels)
                    patch = patch - mv[:, None, None]
                data[item, :, pad_h:pad_h + h, pad_w:pad_w + w] = patch * self.p.scale
                label[item] = cls
                item += 1
