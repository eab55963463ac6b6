"""Split kernels: parallel kernels compiled serial over one part of their tasks, launched over
Numba's threads (fastpool/_launch.py, fastpool/_cpu/_specialise._split_prange)."""
import ast
import os
import subprocess
import sys
import textwrap

import numpy as np
from numba import prange
import pytest

from fastpool import _dispatch, _launch, _runtime
from fastpool._cpu import _specialise

def _rewritten(src):
    tree = ast.parse(textwrap.dedent(src))
    ok = _specialise._split_prange(tree.body[0])
    return ok, ast.unparse(tree)


def test_split_rewrite_shape():
    ok, text = _rewritten("""
        def kernel(a, n):
            m = n * 2
            for t in prange(m + 1):
                a[t] = t
        """)
    assert ok
    assert "prange" not in text and "_fp_part, _fp_parts" in text
    assert "_fp_ntask = m + 1\n" in text
    assert "_fp_lo = max(_fp_ntask * _fp_part // _fp_parts, 0)\n" in text
    assert "_fp_hi = _fp_ntask * (_fp_part + 1) // _fp_parts\n" in text
    assert "for t in range(_fp_lo, _fp_hi):\n        t = _fp_nonneg(t)\n        a[t] = t" in text
    # other shapes stay parallel kernels: two task loops, a loop not last, a nested one
    for src in ("""
        def kernel(a):
            for t in prange(3):
                a[t] = 1
            for t in prange(3):
                a[t] += 1
        """, """
        def kernel(a):
            for t in prange(3):
                a[t] = 1
            a[0] = 5
        """, """
        def kernel(a):
            for r in range(2):
                for t in prange(3):
                    a[t] = r
        """):
        assert _rewritten(src)[0] is False


_K = """
def kernel(out, n, k):
    for t in prange(n):
        out[t] = out[t] * k + t
"""


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 8, 13])
def test_parts_cover_every_task_once(parts):
    ns = {"prange": range, "_fp_nonneg": lambda v: v}
    ok, text = _rewritten(_K)
    exec(text, ns)
    rng = np.random.default_rng(parts)
    for n in (0, 1, 2, 7, 64, 97):
        a = rng.standard_normal(n)
        want = a * 3.0 + np.arange(n)
        for p in range(parts):  # every part once, any order: each task exactly once
            ns["kernel"](a, n, 3.0, p, parts)
        np.testing.assert_array_equal(a, want)


def test_split_kernels_when_asked(monkeypatch):
    make = _dispatch.kernel.__wrapped__  # (not the memo: nothing compiled, nothing kept)
    monkeypatch.setattr(_runtime, "SPLIT", True)
    k = make("max_backward_pairs", "cpu", "cl", True)
    assert isinstance(k, _launch.SplitKernel)
    assert k.py_func.__qualname__.endswith("_split")
    assert not isinstance(make("max_backward_pairs", "cpu", "cl", False), _launch.SplitKernel)
    monkeypatch.setattr(_runtime, "SPLIT", False)
    assert not isinstance(make("max_backward_pairs", "cpu", "cl", True), _launch.SplitKernel)


_SAME = r"""
import sys, numpy as np, fastpool
from fastpool import functional, backward
functional.PARALLEL_MIN_WORK = 0
backward._parallel = lambda work: True
rng = np.random.default_rng(5)
x = rng.standard_normal((3, 13, 11, 6), dtype=np.float32).transpose(0, 3, 1, 2)  # NHWC
x[0, 1, 2, 3] = np.nan
y, i = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
g = rng.standard_normal(y.shape, dtype=np.float32)
gx = fastpool.max_pool2d_backward(g, x, 3, 2, 1)
a = fastpool.avg_pool2d(np.ascontiguousarray(x), 3, 2, 1, ceil_mode=True)
ga = fastpool.avg_pool2d_backward(np.ones_like(a), np.ascontiguousarray(x), 3, 2, 1,
                                  ceil_mode=True)
np.savez(sys.argv[1], y=y, i=i, gx=gx, a=a, ga=ga)
# eight Python threads calling at once, each checked against the results above
import threading
from fastpool import _runtime
errors = []
def work(k):
    try:
        for _ in range(10):
            assert np.array_equal(fastpool.max_pool2d_backward(g, x, 3, 2, 1), gx, equal_nan=True)
            yk, ik = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
            assert np.array_equal(yk, y, equal_nan=True) and np.array_equal(ik, i)
    except Exception as e:
        errors.append(e)
ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
assert not errors, errors
print("split" if _runtime.SPLIT else "numba")
"""


def test_split_and_numba_parallel_kernels_agree(tmp_path):
    """The same parallel calls with split kernels and with Numba's parallel ones (each in its
    own process): bit for bit the same values, indices and gradients, NaN included; eight
    threads calling at once in each."""
    script = tmp_path / "same.py"
    script.write_text(_SAME)
    res = {}
    for mode in ("1", "0"):
        env = dict(os.environ, FASTPOOL_SPLIT_KERNELS=mode)
        out = tmp_path / f"r{mode}.npz"
        done = subprocess.run([sys.executable, str(script), str(out)], env=env, check=True,
                              timeout=900, capture_output=True, text=True)
        assert done.stdout.split()[-1] == ("split" if mode == "1" else "numba")
        res[mode] = np.load(out)
    for k in ("y", "i", "gx", "a", "ga"):
        np.testing.assert_array_equal(res["1"][k], res["0"][k])


def _add_index(out, n):
    for t in prange(n):
        out[t] += t + 1.0


def _raise_on_negative(out, n):
    for t in prange(n):
        if out[t] < 0:
            raise ValueError("a negative value")
        out[t] *= 2.0


@pytest.fixture
def split_jit(monkeypatch):
    monkeypatch.setattr(_runtime, "SPLIT", True)

    def make(fn):
        k = _runtime.jit(fn, parallel=True)
        assert isinstance(k, _launch.SplitKernel)
        return k
    return make


@pytest.mark.parametrize("threads", [1, 2])
def test_launch_runs_every_task_once(split_jit, threads):
    """Every task of a call runs exactly once (``+=``: a task run twice or skipped shows),
    for any task count, on one thread (the serial path) or more (the launcher)."""
    import numba
    k = split_jit(_add_index)
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        rng = np.random.default_rng(threads)
        for n in (0, 1, 2, 3, 17, 1000):
            a = rng.standard_normal(n + 5)
            want = a.copy()
            want[:n] += np.arange(n) + 1.0
            k(a, n)
            np.testing.assert_array_equal(a, want)
    finally:
        numba.set_num_threads(old)


def test_launch_per_argument_types(split_jit):
    """Arguments of other types (dtype, an unaligned or a strided view) get their own compiled
    kernel and launcher, and the call does not keep its arguments alive (fastpool recycles
    result buffers by their reference count)."""
    k = split_jit(_add_index)
    a = np.zeros(9)
    base = sys.getrefcount(a)
    k(a, 9)
    assert sys.getrefcount(a) == base
    np.testing.assert_array_equal(a, np.arange(9) + 1.0)
    raw = np.zeros(8 * 9 + 1, np.uint8)[1:].view(np.float64)  # unaligned
    assert not raw.flags.aligned
    k(raw, 9)
    np.testing.assert_array_equal(raw, np.arange(9) + 1.0)
    b = np.zeros(20, np.float32)[::2]
    k(b, 10)
    np.testing.assert_array_equal(b, np.arange(10) + 1.0)
    if _launch._threads() > 1:
        assert len(k._targets) == 3


def test_a_part_that_raises_is_raised(split_jit):
    k = split_jit(_raise_on_negative)
    a = np.ones(50)
    k(a, 50)
    np.testing.assert_array_equal(a, 2.0)
    a[37] = -1.0
    with pytest.raises(ValueError, match="a negative value"):
        k(a, 50)


def test_launcher_ready(split_jit):
    """``_dispatch.ready`` of a split kernel: its kernel and its launcher both at hand."""
    k = split_jit(_add_index)
    a = np.zeros(4, np.float32)
    k(a, 4)
    assert _dispatch.ready(k, (a, 4))
    assert not _dispatch.ready(k, (np.zeros((2, 2), np.int16), 4))
