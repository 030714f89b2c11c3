"""Data layers: `Data` (npz / csv files held in memory) and `Input` (fed from Python).

`Data` serves batches of rows in order, or in a new random order each epoch with
`shuffle: true` (seeded from the solver's random_seed); a batch that runs past the end
continues at the start of the next epoch. `transform_param` maps each value x to
(x - mean_value) * scale, in that order, as Caffe's data transformer does.
"""
from __future__ import annotations

import gzip
import math
import os
import warnings
import zipfile

import numpy as np

from netspec.errors import LayerError, UserError
from .base import Field, Layer, register, resolve

TRANSFORM_FIELDS = (
    Field("scale", "float", 1.0, "multiply every value by this (after subtracting the mean)"),
    Field("mean_value", "float", None, "subtract this (once, or once per channel) before scaling",
          repeated=True),
)


def _open_text(path):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _npz_shapes(path):
    """{array name: (shape, dtype)} read from the npy headers only, without loading the data."""
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
            out[info.filename[:-4]] = (tuple(shape), dtype)
    return out


@register("Data")
class Data(Layer):
    """Rows from a file. Tops: data (N, ...sample shape) [, label (N,)].

    `.npz`: one array per top, named after the top, all with the same first dimension.
    `.csv` / `.csv.gz`: each row is the features then an integer label (a non-numeric first
    line is taken as a header). A square number of features s*s is read as a 1 x s x s
    image unless `sample_shape` says otherwise.
    """

    param_block = "data_param"
    fields = (
        Field("source", "str", None, "an .npz, .csv or .csv.gz file, relative to the net file", required=True),
        Field("batch_size", "int", None, "examples per batch", minimum=1, required=True),
        Field("shuffle", "bool", False, "serve the rows in a new random order each epoch"),
        Field("sample_shape", "int", None, "shape of one example, e.g. [1, 8, 8] (csv only)",
              minimum=1, repeated=True),
    )
    bottoms = (0, 0)
    tops = (1, 2)
    is_data = True
    needs_rng = True
    differentiable = False
    other_blocks = {"transform_param": TRANSFORM_FIELDS}
    base_dir = "."

    @property
    def path(self):
        return os.path.normpath(os.path.join(self.base_dir, self.p.source))

    def _fail(self, message):
        raise LayerError(f"source '{self.p.source}' ({self.path}): {message}", "data_param.source")

    def _inspect(self):
        """(sample shapes per top, number of rows) from the file's header or first line."""
        path = self.path
        if not os.path.isfile(path):
            self._fail("no such file; the path is relative to the net file")
        names = self.spec.get("top", [])
        if path.endswith(".npz"):
            try:
                arrays = _npz_shapes(path)
            except (OSError, zipfile.BadZipFile, ValueError) as e:
                self._fail(f"not a readable .npz file ({e})")
            missing = [t for t in names if t not in arrays]
            if missing:
                self._fail(f"has no array named {missing[0]!r} for the top of that name (arrays: "
                           f"{', '.join(sorted(arrays))}); name the tops after the arrays")
            rows = {arrays[t][0][0] if arrays[t][0] else 0 for t in names}
            if len(rows) != 1:
                self._fail(f"arrays {names} have different numbers of rows {sorted(rows)}")
            return [arrays[t][0][1:] for t in names], rows.pop()
        if path.endswith((".csv", ".csv.gz")):
            with _open_text(path) as f:
                first = f.readline().strip().split(",")
            if len(first) < 2:
                self._fail("a csv row needs at least one feature and a label")
            features = len(first) - 1
            if self.p.sample_shape:
                shape = tuple(self.p.sample_shape)
                if math.prod(shape) != features:
                    raise LayerError(f"sample_shape {list(shape)} holds {math.prod(shape)} values but each "
                                     f"row of '{self.p.source}' has {features} features",
                                     "data_param.sample_shape")
            else:
                side = math.isqrt(features)
                shape = (1, side, side) if side * side == features and side > 1 else (features,)
            return [shape, ()][:len(names) or 1], None
        self._fail("unknown file type; use .npz, .csv or .csv.gz")

    def setup(self, bottom_shapes):
        self.transform = resolve(TRANSFORM_FIELDS, self.spec.get("transform_param"))
        shapes, _ = self._inspect()
        self.sample_shapes = shapes
        mean = self.transform.mean_value
        channels = shapes[0][0] if shapes[0] else 1
        if mean and len(mean) not in (1, channels):
            raise LayerError(f"mean_value needs 1 value or one per channel ({channels}); received {len(mean)}",
                             "transform_param.mean_value")
        self.arrays = None
        return [(self.p.batch_size,) + tuple(s) for s in shapes]

    def load(self):
        """Read the whole source into memory (float32) and set up the row order."""
        path = self.path
        if path.endswith(".npz"):
            with np.load(path) as z:
                self.arrays = [np.ascontiguousarray(z[t], dtype=self.dtype) for t in self.spec["top"]]
        else:
            with _open_text(path) as f:
                first = f.readline()
                skip = 0 if any(_is_number(v) for v in first.strip().split(",")) else 1  # a header row
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # an empty file is reported below
                    table = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=skip, ndmin=2)
            except ValueError as e:
                raise UserError(f"{path}: error: cannot read the csv ({e}); every row must be numbers "
                                "separated by commas: the features, then the label") from None
            n = table.shape[0]
            self.arrays = [table[:, :-1].reshape((n,) + tuple(self.sample_shapes[0])).astype(self.dtype),
                           table[:, -1].astype(self.dtype)][:len(self.sample_shapes)]
        self.header_lines = 0 if path.endswith(".npz") else skip
        self.rows = self.arrays[0].shape[0]
        if self.rows == 0:
            raise UserError(f"{path}: error: the source has no rows")
        self.order = np.arange(self.rows)
        self.pos = 0
        self.epoch = 0
        if self.p.shuffle:
            self.rng.shuffle(self.order)
        t, ndim = self.transform, len(self.sample_shapes[0])
        self.mean = None
        if t.mean_value:
            self.mean = np.asarray(t.mean_value, self.dtype)
            self.mean = self.mean.reshape((-1,) + (1,) * (ndim - 1)) if self.mean.size > 1 else self.mean[0]
        self.scale = self.dtype.type(t.scale)

    def describe_row(self, i: int) -> str:
        """Where row i stands in the source: a csv line number, or an npz index."""
        if self.path.endswith(".npz"):
            return f"row {i} (index into the arrays)"
        return f"line {i + 1 + self.header_lines}"

    def next_indices(self):
        """Row indices of the next batch, starting a new (reshuffled) epoch when the rows run out."""
        out = np.empty(self.p.batch_size, np.int64)
        filled = 0
        while filled < out.size:
            take = min(out.size - filled, self.rows - self.pos)
            out[filled:filled + take] = self.order[self.pos:self.pos + take]
            filled += take
            self.pos += take
            if self.pos == self.rows:
                self.pos = 0
                self.epoch += 1
                if self.p.shuffle:
                    self.rng.shuffle(self.order)
        return out

    def forward(self, bottom, top):
        if self.arrays is None:
            self.load()
        idx = self.next_indices()
        self.last_indices = idx
        x = top[0].data
        np.take(self.arrays[0], idx, axis=0, out=x)
        if self.mean is not None:
            x -= self.mean
        if self.scale != 1:
            x *= self.scale
        for t, arr in zip(top[1:], self.arrays[1:]):
            np.take(arr, idx, axis=0, out=t.data)

    def state_dict(self):
        if self.arrays is None:
            return {}
        return {"pos": self.pos, "epoch": self.epoch, "order": self.order.copy()}

    def load_state_dict(self, state):
        if not state:
            return
        if self.arrays is None:
            self.load()
        if len(state["order"]) != self.rows:
            raise UserError(f"layer '{self.name}': the snapshot was taken with {len(state['order'])} rows in "
                            f"'{self.p.source}' but it now has {self.rows}; resume with the same data")
        self.order = np.asarray(state["order"], np.int64)
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])


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
        shapes = [tuple(s.get("dim", [])) for s in shapes]
        return shapes * self.n_tops if len(shapes) == 1 else shapes

    def forward(self, bottom, top):
        pass
