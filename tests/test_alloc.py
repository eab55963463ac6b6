"""The per-call fast paths: result buffers recycled only once nothing outside fastpool
references them, and plans that call their compiled kernel directly (same argument types)."""
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastpool
from fastpool import _alloc

SHAPE = (8, 64, 61, 57)   # output of k2 s2: 8*64*30*28*4 bytes = 1.7 MB (over MIN_BYTES)


def _x(seed):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _ref(x):
    return F.max_pool2d(torch.from_numpy(x), 2).numpy()


@pytest.fixture(autouse=True)
def _fresh_pool():
    fastpool.release_memory()
    old = fastpool.set_output_cache(256 << 20)
    yield
    fastpool.set_output_cache(old)
    fastpool.release_memory()


def test_dropped_result_is_reused_and_recomputed():
    x1, x2 = _x(1), _x(2)
    y = fastpool.max_pool2d(x1, 2)
    assert y.nbytes >= _alloc.MIN_BYTES
    addr = y.ctypes.data
    del y
    y2 = fastpool.max_pool2d(x2, 2)
    assert y2.ctypes.data == addr
    np.testing.assert_array_equal(y2, _ref(x2))


def test_held_result_and_views_are_never_overwritten():
    xs = [_x(s) for s in range(5)]
    held = fastpool.max_pool2d(xs[0], 2)
    view = fastpool.max_pool2d(xs[1], 2)[1:, 3]      # only a view of the result survives
    per_call = []
    for x in xs[2:]:                                   # the loop variable drops each result
        y = fastpool.max_pool2d(x, 2)
        per_call.append((y.ctypes.data, y.copy()))
    np.testing.assert_array_equal(held, _ref(xs[0]))
    np.testing.assert_array_equal(view, _ref(xs[1])[1:, 3])
    for (addr, got), x in zip(per_call, xs[2:]):
        np.testing.assert_array_equal(got, _ref(x))
        assert addr not in (held.ctypes.data, view.base.ctypes.data)


def test_rebinding_loop_alternates_two_buffers():
    addrs = set()
    y = None
    for s in range(6):
        x = _x(s)
        y = fastpool.max_pool2d(x, 2)   # the previous y is alive during this call
        np.testing.assert_array_equal(y, _ref(x))
        addrs.add(y.ctypes.data)
    assert len(addrs) == 2


def test_dropping_loop_writes_one_buffer():
    """Once two buffers are remembered, a loop that drops each result before the next call
    gets the most recently used one every time (it may still be in the cache), not the two in
    turn."""
    a = fastpool.max_pool2d(_x(0), 2)
    b = fastpool.max_pool2d(_x(1), 2)       # a is alive: a second buffer
    assert a.ctypes.data != b.ctypes.data
    last = b.ctypes.data
    del a, b
    for s in range(2, 7):
        x = _x(s)
        y = fastpool.max_pool2d(x, 2)
        np.testing.assert_array_equal(y, _ref(x))
        assert y.ctypes.data == last
        del y


def test_indices_and_other_layouts_are_recycled_too():
    x = _x(3)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for _ in range(3):
        v, i = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
        tv, ti = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, return_indices=True)
        np.testing.assert_array_equal(v, tv.numpy())
        np.testing.assert_array_equal(i, ti.numpy())
        yl = fastpool.avg_pool2d(xl, 3, 2, 1, channels_last=True)
        ref = F.avg_pool2d(torch.from_numpy(x), 3, 2, 1).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(yl, ref, rtol=1e-6, atol=1e-6)
        del v, i, yl


def test_threads_never_share_a_buffer():
    xs = [_x(10 + s) for s in range(8)]
    refs = [_ref(x) for x in xs]
    errors = []

    def worker(k):
        try:
            for _ in range(10):
                y = fastpool.max_pool2d(xs[k], 2)
                if not np.array_equal(y, refs[k]):
                    errors.append(k)
                del y
        except Exception as e:   # pragma: no cover - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def test_cache_limit_zero_disables_and_release_forgets():
    x = _x(4)
    y = fastpool.max_pool2d(x, 2)
    assert _alloc.output_cache_info()["buffers"] >= 1
    fastpool.release_memory()
    assert _alloc.output_cache_info() == {"limit_bytes": 256 << 20, "held_bytes": 0,
                                          "buffers": 0}
    fastpool.set_output_cache(0)
    del y
    y = fastpool.max_pool2d(x, 2)
    np.testing.assert_array_equal(y, _ref(x))
    assert _alloc.output_cache_info()["buffers"] == 0


def test_byte_limit_evicts_least_recently_used():
    fastpool.set_output_cache(5_000_000)   # room for two of the ~1.7-2.4 MB results below
    addr = None
    for s in range(4):   # four shapes, one result each
        x = np.random.default_rng(s).standard_normal((8 + s, 64, 61, 57)).astype(np.float32)
        y = fastpool.max_pool2d(x, 2)
        addr = y.ctypes.data
        del y
    info = _alloc.output_cache_info()
    assert 0 < info["held_bytes"] <= 5_000_000
    assert info["buffers"] <= 2
    y = fastpool.max_pool2d(x, 2)   # the most recent shape is still remembered
    assert y.ctypes.data == addr
    np.testing.assert_array_equal(y, _ref(x))


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), (True, TypeError),
                                     ("1", TypeError)])
def test_set_output_cache_rejects(bad, exc):
    with pytest.raises(exc, match="max_bytes"):
        fastpool.set_output_cache(bad)


def test_plan_reused_with_unaligned_and_read_only_inputs():
    """A plan calls its compiled overload directly after the first call; an input with the
    same shape, strides and dtype but unaligned or read-only memory must still be right."""
    rng = np.random.default_rng(5)
    shape = (2, 3, 9, 11)
    n = int(np.prod(shape))
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(fastpool.max_pool2d(x, 2), _ref(x))
        buf = bytearray(4 * n + 1)
        xu = np.frombuffer(buf, dtype=np.float32, count=n, offset=1).reshape(shape)
        xu[...] = x
        assert not xu.flags.aligned and xu.strides == x.strides
        np.testing.assert_array_equal(fastpool.max_pool2d(xu, 2), _ref(x))
        xr = x.copy()
        xr.flags.writeable = False
        np.testing.assert_array_equal(fastpool.max_pool2d(xr, 2), _ref(x))
        np.testing.assert_allclose(fastpool.avg_pool2d(xu, 3, 2, 1),
                                   F.avg_pool2d(torch.from_numpy(x), 3, 2, 1).numpy(),
                                   rtol=1e-6, atol=1e-6)
