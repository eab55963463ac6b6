"""Split kernels: parallel kernels compiled serial over one part of their tasks, run on threads
(fastpool/_threads.py, fastpool/_cpu/_specialise._split_prange)."""
import ast
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from fastpool import _dispatch, _runtime, _threads
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
    assert "for t in range(_fp_ntask * (_fp_part + 1) // _fp_parts):" in text
    assert "if t < _fp_ntask * _fp_part // _fp_parts:\n            continue" in text
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
    ns = {"prange": range}
    ok, text = _rewritten(_K)
    exec(text, ns)
    rng = np.random.default_rng(parts)
    for n in (0, 1, 2, 7, 64, 97):
        a = rng.standard_normal(n)
        want = a * 3.0 + np.arange(n)
        for p in range(parts):  # every part once, any order: each task exactly once
            ns["kernel"](a, n, 3.0, p, parts)
        np.testing.assert_array_equal(a, want)


def test_run_parts_runs_every_part_and_reraises():
    seen = []
    lock = threading.Lock()

    def fn(x, part, parts):
        with lock:
            seen.append((x, part, parts))
        if part == 2:
            raise ValueError("part 2 failed")

    with pytest.raises(ValueError, match="part 2 failed"):
        _threads.run_parts(fn, ("a",), 4)
    assert sorted(seen) == [("a", p, 4) for p in range(4)]  # every part ran
    seen.clear()
    _threads.run_parts(fn, ("b",), 1)
    assert seen == [("b", 0, 1)]


def test_workers_release_the_arguments():
    """A worker must not keep the last call's arguments alive: fastpool recycles result
    buffers by their reference count."""
    a = np.zeros(10)
    base = sys.getrefcount(a)
    _threads.run_parts(lambda arr, p, q: None, (a,), 4)
    assert sys.getrefcount(a) == base


def test_split_kernels_when_asked(monkeypatch):
    make = _dispatch.kernel.__wrapped__  # (not the memo: nothing compiled, nothing kept)
    monkeypatch.setattr(_runtime, "SPLIT", True)
    k = make("max_backward_pairs", "cpu", "cl", True)
    assert isinstance(k, _threads.SplitKernel)
    assert k.py_func.__qualname__.endswith("_split")
    assert not isinstance(make("max_backward_pairs", "cpu", "cl", False), _threads.SplitKernel)
    monkeypatch.setattr(_runtime, "SPLIT", False)
    assert not isinstance(make("max_backward_pairs", "cpu", "cl", True), _threads.SplitKernel)


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
from fastpool import _runtime, _threads
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
assert len(_threads._workers) <= _threads._MAX_WORKERS
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


def test_spin_wait_sees_a_flag_set_by_another_thread():
    from fastpool._spin import spin_wait
    f = np.zeros(3, np.int64)
    f[1] = 1
    assert spin_wait(f, 1, 10)
    assert not spin_wait(f, 0, 1000)
    # set while it spins: the load must be made anew on each turn (not hoisted)
    t = threading.Timer(0.02, f.__setitem__, (2, 1))
    t.start()
    assert spin_wait(f, 2, 10 ** 8)
    t.join()
