"""Weight fillers, as in Caffe's filler.hpp.

fan_in = count / shape[0], fan_out = count / shape[1] (count for a 1-D blob); for a
convolution weight (O, I/g, kh, kw) that is I/g*kh*kw and O*kh*kw.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .base import Field
from .cpu import threaded

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")

FIELDS = (
    Field("type", "enum", "constant", "filler name", choices=FILLER_TYPES),
    Field("value", "float", 0.0, "constant: the value"),
    Field("min", "float", 0.0, "uniform: lower bound"),
    Field("max", "float", 1.0, "uniform: upper bound"),
    Field("mean", "float", 0.0, "gaussian: mean"),
    Field("std", "float", 1.0, "gaussian: standard deviation", minimum=0),
    Field("sparse", "int", -1, "gaussian: expected non-zero weights per output (-1: dense)", minimum=-1),
    Field("variance_norm", "enum", "FAN_IN", "xavier/msra: which fan sets the variance",
          choices=("FAN_IN", "FAN_OUT", "AVERAGE")),
)


def _fan(shape, variance_norm):
    n = int(np.prod(shape))
    fan_in = n / shape[0] if len(shape) else 1
    fan_out = n / shape[1] if len(shape) > 1 else n
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[variance_norm]


def weight_rms(shape, filler: dict | None) -> float | None:
    """The root mean square of the weights `filler` draws for `shape` (None where it is not a plain random draw:
    constant, bilinear, positive_unitball, sparse, given arrays)."""
    f = {field.name: field.default for field in FIELDS}
    f.update(filler or {})
    kind = f["type"]
    if "array" in f or kind in ("constant", "bilinear", "positive_unitball") or (kind == "gaussian" and
                                                                               f["sparse"] >= 0):
        return None
    if kind == "uniform":
        return float(np.sqrt((f["min"] ** 2 + f["min"] * f["max"] + f["max"] ** 2) / 3))
    if kind == "gaussian":
        return float(np.hypot(f["mean"], f["std"]))
    return float(np.sqrt((1.0 if kind == "xavier" else 2.0) / _fan(shape, f["variance_norm"])))


def fill(shape, filler: dict | None, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """A new array of `shape` filled as `filler` says (None means Caffe's default: constant 0)."""
    f = {field.name: field.default for field in FIELDS}
    f.update(filler or {})
    kind = f["type"]
    if "array" in f:  # initial values given by the layer itself (a Python layer's blobs after its setup)
        out = np.array(f["array"], np.float64).reshape(shape)
    elif kind == "constant":  # straight in the dtype: CaffeNet's 61M weights, 2 s through float64
        if f["value"] == 0:
            return np.zeros(shape, dtype)  # pages the OS gives zeroed, touched only when written
        return np.full(shape, np.asarray(f["value"], np.float64).astype(dtype), dtype)
    elif kind == "uniform":
        out = rng.uniform(f["min"], f["max"], shape)
    elif kind == "gaussian":
        out = rng.normal(f["mean"], f["std"], shape)
        if f["sparse"] >= 0:  # keep each weight with probability sparse / num_output
            out *= rng.random(shape) < f["sparse"] / shape[0]
    elif kind == "positive_unitball":  # U[0, 1], each row (output) normalized to sum to 1
        out = rng.uniform(0, 1, shape)
        rows = out.reshape(shape[0], -1)
        rows /= rows.sum(axis=1, keepdims=True)
    elif kind == "bilinear":  # upsampling weights for a Deconvolution: the same for every (out, in) slice
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ValueError(f"the bilinear filler needs a square 4-D kernel; received shape {list(shape)}")
        k = shape[3]
        factor = int(np.ceil(k / 2))
        c = (k - 1) / (2.0 * factor)
        ramp = 1 - np.abs(np.arange(k) / factor - c)
        out = np.broadcast_to(np.outer(ramp, ramp), shape).copy()
    elif kind == "xavier":
        scale = np.sqrt(3.0 / _fan(shape, f["variance_norm"]))
        out = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        out = rng.normal(0.0, np.sqrt(2.0 / _fan(shape, f["variance_norm"])), shape)
    else:  # the schema rejects these before we get here
        raise ValueError(f"unknown filler '{kind}'")
    return out.astype(dtype)


_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _uniform_hash(out, key, shift, scale, low, width):
    """out[i] = low + width * u_i, u_i = the top bits of SplitMix64's output for counter i (key + (i+1) * golden
    ratio, then its two xor-shift-multiply rounds), times 2^-bits: 24 bits for float32, 53 for float64."""
    kind = out.dtype.type
    for i in prange(out.size):
        z = key + np.uint64(i + 1) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        out[i] = low + width * (kind(np.int64(z >> shift)) * scale)


_uniform_hash = threaded(_uniform_hash, 1 << 15)


def uniform_into(out: np.ndarray, rng: np.random.Generator, low: float = 0.0, high: float = 1.0):
    """Fill flat float32/float64 `out` with U[low, high) in its own dtype, drawing one 64-bit key from `rng`
    (so a snapshot of rng's state resumes the same sequence): a counter-based generator (SplitMix64 per
    element), vectorized, about 30x faster than NumPy's per-element draws for DummyData's refills."""
    kind = out.dtype.type
    bits = 24 if out.dtype == np.float32 else 53
    key = np.uint64(rng.integers(0, 2 ** 63, dtype=np.int64))
    _uniform_hash(out, key, np.uint64(64 - bits), kind(2.0 ** -bits), kind(low), kind(high - low))
