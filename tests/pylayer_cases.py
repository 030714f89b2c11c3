"""Python layers for the tests, written as Caffe users write them (`import caffe`, `caffe.Layer`)."""
import caffe
import numpy as np


class Cube(caffe.Layer):
    """top = scale * bottom^3, scale from param_str (default 1)."""

    def setup(self, bottom, top):
        self.scale = float(self.param_str or 1)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.scale * bottom[0].data ** 3

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 3 * self.scale * bottom[0].data ** 2 * top[0].diff


class EuclideanLossLayer(caffe.Layer):
    """Caffe's examples/pycaffe/layers/pyloss.py: sum((a - b)^2) / num / 2."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class ScaleBias(caffe.Layer):
    """top = w * bottom + b[channel], with learnable w (1,) and b (C,) made by add_blob (pycaffe's way)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs.add_blob(bottom[0].channels)
        self.blobs[0].data[...] = 2.0
        self.blobs[1].data[...] = np.arange(bottom[0].channels) * 0.1

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def _b(self, x):
        return self.blobs[1].data.reshape((1, -1) + (1,) * (x.ndim - 2))

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data + self._b(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        self.blobs[0].diff[...] += np.sum(dy * bottom[0].data)
        axes = (0,) + tuple(range(2, dy.ndim))
        self.blobs[1].diff[...] += dy.sum(axis=axes)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * dy


class VarRows(caffe.Layer):
    """A data layer whose batch grows by one row each forward (2, 3, 4, ...): tops data (k, 4) and label (k,)."""

    def setup(self, bottom, top):
        self.k, self.rng = 1, np.random.default_rng(0)

    def reshape(self, bottom, top):
        top[0].reshape(self.k + 1, 4)
        top[1].reshape(self.k + 1)

    def forward(self, bottom, top):
        self.k += 1
        top[0].reshape(self.k, 4)
        top[1].reshape(self.k)
        top[0].data[...] = self.rng.normal(size=(self.k, 4))
        top[1].data[...] = self.rng.integers(0, 3, self.k)

    def backward(self, top, propagate_down, bottom):
        pass


class PerExampleCube(Cube):
    """Cube, declared per-example: a batch may run as slices on several threads."""

    per_example = True


class LabelLog(caffe.Layer):
    """Appends each batch's labels (its bottom) as one line to the file param_str names; slows each forward by
    param 'sleep' seconds (after a space) so that a test can kill the run mid-way."""

    def setup(self, bottom, top):
        parts = self.param_str.split()
        self.path, self.sleep = parts[0], float(parts[1]) if len(parts) > 1 else 0.0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        import time
        with open(self.path, "a") as f:
            f.write(" ".join(str(int(v)) for v in bottom[0].data.ravel()) + "\n")
        time.sleep(self.sleep)

    def backward(self, top, propagate_down, bottom):
        pass


class Stop(caffe.Layer):
    """top = bottom; a backward that writes nothing (`pass`, as many user layers do): Caffe's bottom diff stays 0."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        pass
