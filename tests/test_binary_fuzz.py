"""The binary readers (caffemodel, solverstate, BlobProto, Datum) on random and hostile bytes: a clear error or
a result, never another exception, and in time linear in the input (a 10-byte bound on varints, every length
checked against the bytes that remain)."""
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from layers.sources import SourceError, datum_bytes, parse_datum
from netspec.caffemodel import blob_bytes, caffemodel_bytes, read_blob, read_caffemodel, read_solverstate
from netspec.errors import UserError

GOOD_MODEL = caffemodel_bytes("net", [("ip", "InnerProduct", [np.ones((2, 3), np.float32), np.zeros(2, np.float32)])])
GOOD_DATUM = datum_bytes(np.arange(12, dtype=np.uint8).reshape(3, 2, 2), 7)


def mutations():
    """Random bytes, and the good files with bytes flipped, cut short or grown."""
    good = st.sampled_from([GOOD_MODEL, GOOD_DATUM, blob_bytes(np.ones((2, 2), np.float32))])
    flip = st.tuples(good, st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8)).map(
        lambda t: bytes(b if i not in dict(t[1]) else dict(t[1])[i] for i, b in enumerate(t[0])))
    cut = st.tuples(good, st.integers(0, 100)).map(lambda t: t[0][:t[1]])
    return st.one_of(st.binary(max_size=512), flip, cut)


def _file_reader(read, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "x.bin"

    def run(data):
        path.write_bytes(data)
        try:
            read(str(path))
        except UserError:
            pass
    return run


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations())
def test_caffemodel_and_solverstate_readers_fail_clearly(tmp_path_factory, data):
    for read in (read_caffemodel, read_solverstate):
        _file_reader(read, tmp_path_factory)(data)


@settings(max_examples=300, deadline=None)
@given(mutations())
def test_datum_and_blob_readers_fail_clearly(data):
    try:
        parse_datum(data)
    except SourceError:
        pass
    try:
        read_blob(data)
    except ValueError:
        pass


@pytest.mark.parametrize("pattern", [b"\xff", b"\x80", b"\x0a\xff", b"\x12\xff\xff\xff\xff\x0f"])
def test_hostile_bytes_take_linear_time(tmp_path, pattern):
    """1 MB of a repeated pattern (0xff: one endless varint) must be refused in well under a second."""
    path = tmp_path / "x.caffemodel"
    path.write_bytes(pattern * (1_000_000 // len(pattern)))
    t = time.perf_counter()
    with pytest.raises(UserError, match="not a binary Caffe NetParameter"):
        read_caffemodel(str(path))
    assert time.perf_counter() - t < 1.0
    t = time.perf_counter()
    with pytest.raises(SourceError, match="not a valid Caffe Datum"):
        parse_datum(path.read_bytes())
    assert time.perf_counter() - t < 1.0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), st.tuples(st.integers(0, 3), st.integers(0, 255), st.integers(0, 255),
                                                    st.lists(st.integers(0, 2**32 - 1), max_size=6),
                                                    st.binary(max_size=64)).map(
    lambda t: bytes([0, 0, [8, 9, 0x0B, 0x0D][t[0]], t[1] % 9]) + b"".join(v.to_bytes(4, "big") for v in t[3]) + t[4])))
def test_idx_and_npz_readers_fail_clearly(tmp_path_factory, data):
    from layers.sources import SourceError, idx_load, npz_load, reading
    folder = tmp_path_factory.mktemp("fuzz")
    for name, read in (("x-images-idx3-ubyte", lambda p: idx_load(p, ["data"], np.float32)),
                       ("x.npz", lambda p: npz_load(p, ["data", "label"], np.float32))):
        path = folder / name
        path.write_bytes(data)
        t = time.perf_counter()
        try:
            with reading():
                read(str(path))
        except SourceError:
            pass
        assert time.perf_counter() - t < 1.0
