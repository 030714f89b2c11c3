"""layers/cpu.py: matrix products cut into parts on Numba's threads, and the small threaded kernels."""
import os

import numba
import numpy as np
import pytest

import layers.cpu as cpu
from layers.cpu import add_column_sums, gemm, gemm_acc, zero


def _operands(rng, m, n, k, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return (a.T if ta else a), (b.T if tb else b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parts", ["one", "several", "openblas"])
def test_gemm_equals_the_product_for_every_layout(monkeypatch, dtype, parts):
    """c = a b + beta c (+ bias) for transposed and plain operands, into a view of a wider array (the columns
    around it untouched), cut into parts along the rows or the columns; odd sizes give parts of unequal size.
    openblas: as with YAFFE_GEMM=openblas (OpenBLAS's own threads, NumPy where CBLAS does not fit)."""
    monkeypatch.setattr(cpu, "MIN_PART", 1 if parts == "several" else 1 << 62)
    if parts == "openblas":
        monkeypatch.setattr(cpu, "_POOLED", [False])
    rng = np.random.default_rng(0)
    for m, n, k in ((37, 5, 11), (5, 70, 9), (128, 512, 20), (64, 33, 1)):
        for ta in (False, True):
            for tb in (False, True):
                a, b = _operands(rng, m, n, k, ta, tb, dtype)
                for beta, bias in ((0.0, None), (1.0, None), (0.0, rng.standard_normal(n).astype(dtype))):
                    wide = rng.standard_normal((m, n + 3)).astype(dtype)
                    before = wide.copy()
                    c = wide[:, 1:n + 1]
                    want = a.astype(np.float64) @ b.astype(np.float64) + beta * c + (0 if bias is None else bias)
                    gemm(a, b, c, beta, bias)
                    np.testing.assert_allclose(c, want, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                               atol=1e-4 if dtype == np.float32 else 1e-12)
                    np.testing.assert_array_equal(wide[:, [0, n + 1, n + 2]], before[:, [0, n + 1, n + 2]])
    acc = np.ones((6, 7), dtype)
    a, b = _operands(rng, 6, 7, 5, True, False, dtype)
    gemm_acc(a, b, acc)
    np.testing.assert_allclose(acc, 1 + a.astype(np.float64) @ b, rtol=1e-5)


def test_products_run_on_numbas_threads_with_numpys_openblas():
    """NumPy's wheels bundle OpenBLAS with 64-bit CBLAS: the products are cut into parts there, and a net puts
    OpenBLAS on its caller's thread (one pool of threads: Numba's)."""
    import subprocess
    import sys
    code = ("import numpy as np; from layers import cpu; from netspec.loader import loads; from netspec.net import Net\n"
            "Net(loads('layer: [{name: i, type: Input, top: x, input_param: {shape: {dim: [1]}}}]', '<t>'), 'TEST')\n"
            "print(cpu.pooled(), cpu.blas_threads())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.stdout.split() == ["True", "1"], r.stdout + r.stderr


def test_kernels_naming_sgemm_run_in_a_fresh_process_before_any_net():
    """The kernels' ?gemm symbols are registered when layers.cpu is imported: step_product's OpenBLAS path
    (rows fewer than a tile) called alone, before any net or pooled(), crashed the process before. Then the
    same with the symbol pointing at the NumPy fallback (another BLAS than OpenBLAS), compiled afresh."""
    import subprocess
    import sys
    import tempfile
    code = ("import numpy as np, ctypes, sys; from layers.recurrent import step_product; from layers import cpu\n"
            "if sys.argv[1] == 'numpy':\n"
            "    import llvmlite.binding as llvm; f = cpu._numpy_gemm(np.float32)\n"
            "    llvm.add_symbol('yaffe_cblas_sgemm', ctypes.cast(f, ctypes.c_void_p).value)\n"
            "rng = np.random.default_rng(1)\n"
            "a, b = rng.random((3, 40), np.float32), rng.random((40, 70), np.float32)\n"
            "c = np.zeros((3, 70), np.float32); step_product(a, b, c, np.empty(0, np.float32))\n"
            "print(float(abs(c - a.astype(np.float64) @ b).max()))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for how in ("openblas", "numpy"):
        env = dict(os.environ)
        if how == "numpy":
            env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp()
        r = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=300, cwd=root,
                           env=env)
        assert r.returncode == 0 and float(r.stdout.split()[-1]) < 1e-4, (how, r.returncode, r.stdout + r.stderr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_gemm_fallback_follows_cblas(dtype):
    """_numpy_gemm: CBLAS's row-major ?gemm (alpha, beta, transposes, leading dimensions wider than the rows)."""
    rng = np.random.default_rng(2)
    f = cpu._numpy_gemm(dtype)
    m, n, k = 5, 7, 6
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((k, m + 2) if ta else (m, k + 2)).astype(dtype)
            b = rng.standard_normal((n, k + 1) if tb else (k, n + 1)).astype(dtype)
            c = rng.standard_normal((m, n + 3)).astype(dtype)
            av = a[:, :m].T if ta else a[:, :k]
            bv = b[:, :k].T if tb else b[:, :n]
            want = c.astype(np.float64).copy()
            want[:, :n] = 2.0 * av.astype(np.float64) @ bv + 0.5 * c[:, :n]
            f(cpu.ROW_MAJOR, cpu.TRANS if ta else cpu.NO_TRANS, cpu.TRANS if tb else cpu.NO_TRANS, m, n, k, 2.0,
              a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.5, c.ctypes.data, c.shape[1])
            np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)


def test_cut_gives_parts_on_cache_lines():
    cuts = [cpu._cut(100, 3, p) for p in range(4)]
    assert cuts[0] == 0 and cuts[-1] == 100 and all(c % 16 == 0 for c in cuts[:-1]) and cuts == sorted(cuts)


@numba.njit(parallel=True)
def _thread_of_part(parts, out):
    for p in numba.prange(parts):
        out[p] = numba.get_thread_id()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_owned_ranges_give_each_thread_the_rows_its_products_cut(threads):
    """Every element of the flat params in exactly one task; thread p's tasks are the rows _cut gives part p of a
    product (gemm's parts) of each param, in tasks of at most OWNED_TASK; and zero_owned clears all of them."""
    shapes = [(500, 800), (500,), (10, 500), (10,), (3, 2, 5, 5), ()]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    offsets = list(np.cumsum([0] + sizes[:-1]))
    lo, hi, first, which = cpu.owned_ranges(shapes, offsets, threads)
    assert first[0] == 0 and first[-1] == lo.size and first.size == threads + 1 and (hi - lo).max() <= cpu.OWNED_TASK
    owner = np.full(sum(sizes), -1)
    for p in range(threads):
        for t in range(first[p], first[p + 1]):
            assert (owner[lo[t]:hi[t]] == -1).all() and lo[t] < hi[t]
            owner[lo[t]:hi[t]] = p
            k = which[t]
            assert offsets[k] <= lo[t] and hi[t] <= offsets[k] + sizes[k]
    assert (owner >= 0).all()
    for k, shape in enumerate(shapes):
        rows = shape[0] if shape else 1
        mine = owner[offsets[k]:offsets[k] + sizes[k]].reshape(rows, -1)
        for p in range(threads):
            assert (mine[cpu._cut(rows, threads, p):cpu._cut(rows, threads, p + 1)] == p).all()
    a = np.ones(sum(sizes), np.float32)
    cpu.zero_owned(a, lo, hi, first)
    assert not a.any()


def test_a_parallel_loop_of_one_iteration_a_thread_runs_iteration_p_on_thread_p():
    """What owned_ranges relies on: a prange over as many parts as threads runs part p on Numba's thread p in every
    kernel (gemm's parts, the update's and zero_owned's), so the thread that computed a weight's rows updates them."""
    threads = numba.get_num_threads()
    seen = np.full(threads, -1)
    for _ in range(20):
        _thread_of_part(threads, seen)
        assert list(seen) == list(range(threads))


@pytest.mark.parametrize("size", [5, (1 << 16) + 3])
def test_zero_and_column_sums_on_one_thread_and_on_all(size):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(size).astype(np.float32)
    zero(a)
    assert not a.any()
    n = max(3, size // 64)
    dy = rng.standard_normal((64, n)).astype(np.float32)
    db = rng.standard_normal(n).astype(np.float32)
    want, same_order = db + dy.sum(axis=0, dtype=np.float64), db + dy.sum(axis=0)
    add_column_sums(dy, db)
    np.testing.assert_allclose(db, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(db, same_order)  # each column in row order, then added: NumPy's float32 sum


def _column_total(a, out):
    for j in numba.prange(a.shape[1]):
        acc = 0.0
        for i in range(a.shape[0]):
            acc += a[i, j]
        out[j] = acc


def test_spread_shares_a_large_call_out_only_where_the_thread_has_others():
    """cpu.spread: the parallel build for large calls on a thread with several Numba threads (a net running its
    batch whole), the serial one on a slice's single thread or for small calls; both give the same values."""
    total = cpu.spread(_column_total, 1000)
    big, small = np.arange(4000.0).reshape(100, 40), np.ones((3, 4))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        out = np.zeros(40)
        total(big, out)
        assert total.serial.signatures and not total.parallel.signatures
        threads = min(2, numba.config.NUMBA_NUM_THREADS)  # (a one-core machine has no others to share with)
        numba.set_num_threads(threads)
        total(small, np.zeros(4))
        assert not total.parallel.signatures
        again = np.zeros(40)
        total(big, again)
        assert bool(total.parallel.signatures) is (threads > 1)
        np.testing.assert_array_equal(out, again)
        np.testing.assert_array_equal(out, big.sum(axis=0))
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("rounds", [1 << 14, 1])
def test_batchsync_sums_the_slices_parts_in_their_order_and_spins_or_yields_until_all_arrive(rounds, monkeypatch):
    """layers.base.BatchSync over 3 threads (cpu.sync_total): every slice gets the sum of all parts, added in the
    slices' order (bit-equal everywhere), for parts of differing lengths in the three buffers, with one slice late
    (the others spin, or with 1 round a time yield to the OS and spin again)."""
    import threading
    import time

    from layers import cpu
    from layers.base import BatchSync
    monkeypatch.setattr(cpu, "SPIN_ROUNDS", rounds)
    k, rng = 3, np.random.default_rng(0)
    sync = BatchSync(k, 16)
    parts = [[rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, n) for r in range(k)] for n in (16, 5, 9, 16, 1, 16)]
    got = [[None] * len(parts) for _ in range(k)]

    def slice_(r):
        for i, step in enumerate(parts):
            if r == 2 and i == 3:
                time.sleep(0.01)  # late: the others wait
            got[r][i] = sync.total(r, i % 3, step[r])
    threads = [threading.Thread(target=slice_, args=(r,)) for r in range(1, k)]
    for t in threads:
        t.start()
    slice_(0)
    for t in threads:
        t.join()
    for i, step in enumerate(parts):
        expected = (step[0] + step[1]) + step[2]
        for r in range(k):
            np.testing.assert_array_equal(got[r][i], expected)


def test_batchsync_abort_breaks_the_wait_and_reset_makes_it_usable_again():
    import threading

    from layers.base import BatchSync
    sync = BatchSync(2, 4)
    threading.Timer(0.05, sync.abort).start()
    with pytest.raises(threading.BrokenBarrierError):
        sync.total(0, 0, np.ones(4))  # slice 1 never comes
    sync.reset()
    t = threading.Thread(target=sync.total, args=(1, 0, np.ones(4)))
    t.start()
    np.testing.assert_array_equal(sync.total(0, 0, np.full(4, 2.0)), np.full(4, 3.0))
    t.join()


def test_num_threads_follows_numba_in_every_thread():
    """cpu.num_threads (numba.get_num_threads without its locks) reads each thread's own count, as Numba's does:
    the slices' threads set theirs to 1 and the spread kernels pick their serial builds from it."""
    import threading

    import numba

    from layers.cpu import num_threads
    assert num_threads() == numba.get_num_threads()
    seen = []

    def slice_thread():
        numba.set_num_threads(1)
        seen.append((num_threads(), numba.get_num_threads()))

    t = threading.Thread(target=slice_thread)
    t.start()
    t.join()
    assert seen == [(1, 1)]
    assert num_threads() == numba.get_num_threads()  # the calling thread's count is its own
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert num_threads() == 1
    finally:
        numba.set_num_threads(before)
    assert num_threads() == before


def test_thread_choice_follows_whichever_measured_faster_and_explores_the_other():
    """ThreadChoice (a forward-only net's short passes: all of Numba's threads or the calling thread alone): two
    warm-up passes on all the threads, then all the threads three times and the calling thread alone three times,
    then the faster by the median of its last timings, the other once every EXPLORE passes (4x as seldom where one
    is over 1.25x the other), following the machine when it changes; passes over LONG on all the threads (their
    median: one long pass, a loaded machine's, does not) end the choosing; a single thread has nothing to choose."""
    from layers.cpu import ThreadChoice
    speed = {1: 1e-4, 4: 2e-4}  # the calling thread alone twice as fast (a VM whose other cores sleep)
    choice = ThreadChoice()
    picks = []
    for _ in range(200):
        k = choice.pick(4)
        picks.append(k)
        choice.record(k, 4, speed[k])
    assert picks[:8] == [4, 4, 4, 4, 4, 1, 1, 1]
    rest = picks[8:]
    assert rest.count(4) == sum(1 for c in range(9, 201) if c % (4 * ThreadChoice.EXPLORE) == 0) > 0
    speed = {1: 3e-4, 4: 2.8e-4}  # the machine changed: all the threads a little faster
    for _ in range(200):
        k = choice.pick(4)
        picks.append(k)
        choice.record(k, 4, speed[k])
    late = picks[-100:]
    assert late.count(4) > 90 and 1 in late  # (within 1.25x: the other every EXPLORE passes)
    long_ = ThreadChoice()
    ks = []
    for _ in range(20):
        k = long_.pick(2)
        ks.append(k)
        long_.record(k, 2, 0.02 if k == 2 else 0.01)
    assert ks == [2] * 20 and long_.off
    loaded = ThreadChoice()  # one long pass on all the threads among short ones: still choosing
    for i in range(12):
        k = loaded.pick(2)
        loaded.record(k, 2, 0.02 if i == 3 else 1e-4)
    assert not loaded.off and set(loaded.times) == {1, 2}
    single = ThreadChoice()
    assert {single.pick(1) for _ in range(20)} == {1}


def test_a_forward_only_net_at_a_batch_of_one_chooses_its_threads_and_gives_them_back(monkeypatch):
    """Net.forward of a forward-only net with constant weights (run.py predict, test, the benchmarks) runs its
    passes through a ThreadChoice: after its warm-up both choices are measured, Numba's thread count is the same
    after every pass, the tops equal those of passes on all the threads, new input shapes start the measuring
    anew and new weights do not."""
    from netspec.loader import loads
    from netspec.net import Net
    text = """layer:
  - {name: data, type: Input, top: data, input_param: {shape: {dim: [1, 3, 16, 16]}}}
  - {name: conv, type: Convolution, bottom: data, top: conv, convolution_param: {num_output: 16, kernel_size: 3, pad: 1}}
  - {name: relu, type: ReLU, bottom: conv, top: conv}
  - {name: pool, type: Pooling, bottom: conv, top: pool, pooling_param: {pool: MAX, kernel_size: 2, stride: 2}}
  - {name: ip, type: InnerProduct, bottom: pool, top: ip, inner_product_param: {num_output: 10}}
"""
    from layers.cpu import ThreadChoice
    monkeypatch.setattr(ThreadChoice, "LONG", 1.0)  # (a loaded machine's slow passes: still choosing)
    net = Net(loads(text), "TEST", seed=0)
    net.keep_for_backward, net.constant_weights = False, True
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=(1, 3, 16, 16))
    total = numba.get_num_threads()
    tops = []
    for _ in range(12):
        net.forward()
        assert numba.get_num_threads() == total
        tops.append(net.blobs["ip"].data.copy())
    for t in tops[1:]:
        np.testing.assert_allclose(t, tops[0], rtol=1e-6, atol=1e-6)
    assert set(net._threads.times) == ({1, total} if total > 1 else {1})
    net.blobs["data"].reshape(2, 3, 16, 16)
    net.reshape()
    net.forward()
    assert net._threads.count == 1 and not net._threads.times  # (a warm-up pass: it bound the new arrays)
    for _ in range(4):  # new weights alone (pycaffe's forward says so every pass): still measuring
        net.weights_changed()
        net.forward()
    assert net._threads.count == 5 and net._threads.times


@pytest.mark.parametrize("batch", [64, 67])
def test_an_inner_products_bottom_diff_with_the_weights_rows_on_the_threads_equals_the_product(batch):
    """InnerProduct's bottom diff dy W on cpu.gemm_k_parts (each thread the rows of W its forward and weight
    gradient computed, the parts summed after) equals the float64 product, on every thread count the machine has;
    at 67 rows the sum's row cut is uneven."""
    from netspec.loader import loads
    from netspec.net import Net
    text = f"""layer:
  - {{name: d, type: DummyData, top: [x, t], dummy_data_param: {{shape: [{{dim: [{batch}, 200]}}, {{dim: [{batch}, 400]}}],
      data_filler: [{{type: gaussian}}, {{type: gaussian}}]}}}}
  - {{name: ip0, type: InnerProduct, bottom: x, top: h, inner_product_param: {{num_output: 330, weight_filler: {{type: xavier}}}}}}
  - {{name: ip, type: InnerProduct, bottom: h, top: y, inner_product_param: {{num_output: 400, weight_filler: {{type: xavier}}}}}}
  - {{name: loss, type: EuclideanLoss, bottom: [y, t], top: loss}}
"""
    net = Net(loads(text), "TRAIN", seed=0)
    net.forward_backward()
    ip = net.layers[[d.name for d in net.defs].index("ip")]
    w = ip.blobs[0].data.astype(np.float64)
    want = net.blobs["y"].diff.astype(np.float64) @ w
    np.testing.assert_allclose(net.blobs["h"].diff, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert (getattr(ip, "_scratch", None) is not None) == (numba.get_num_threads() > 1 and cpu.pooled())
