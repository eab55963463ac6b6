"""Numba's kernel cache shared by several processes (``fastpool/_cache_lock.py``): saves made at
the same time keep every entry with its own data, and a variant one process is compiling is
loaded, not compiled again, by another that needs it at the same time."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fastpool import _cache_lock

pytestmark = pytest.mark.skipif(_cache_lock.fcntl is None, reason="no fcntl (not POSIX)")

_SAVER = textwrap.dedent("""
    import sys, time, pickle
    from numba.core.caching import IndexDataCacheFile
    from fastpool import _cache_lock
    folder, worker, n, start, locked = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        float(sys.argv[4]), sys.argv[5] == "1"
    cls = IndexDataCacheFile
    if locked:
        cls = _cache_lock._locked_file_class(IndexDataCacheFile)
    f = cls(folder, "kernel", "stamp")
    while time.time() < start:
        pass
    for i in range(n):
        f.save(("key", worker, i), ("data", worker, i) + (0,) * 2000)
""")


def _save_from_processes(folder, locked, workers=4, n=40):
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _SAVER, str(folder), str(w), str(n),
                               repr(start), "1" if locked else "0"]) for w in range(workers)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    from numba.core.caching import IndexDataCacheFile
    f = IndexDataCacheFile(str(folder), "kernel", "stamp")
    wrong = 0
    for w in range(workers):
        for i in range(n):
            got = f.load(("key", w, i))
            wrong += got is None or got[:3] != ("data", w, i)
    return wrong


def test_saves_from_several_processes_keep_every_entry(tmp_path):
    """Four processes save 40 entries each into one index at the same time: every key is found
    afterwards, with its own data."""
    assert _save_from_processes(tmp_path, locked=True) == 0


def test_unlocked_saves_lose_entries(tmp_path):
    """The same run through Numba's own save loses or mixes up entries (what the lock is for;
    a run in which the processes happen not to overlap is skipped, not passed)."""
    wrong = _save_from_processes(tmp_path, locked=False)
    if wrong == 0:
        pytest.skip("the processes did not overlap this time")
    assert wrong > 0


def test_save_waits_for_the_lock(tmp_path):
    from numba.core.caching import IndexDataCacheFile
    f = _cache_lock._locked_file_class(IndexDataCacheFile)(str(tmp_path), "k", "stamp")
    done = threading.Event()
    with _cache_lock._Lock(f._index_path + ".lock") as lock:
        assert lock.acquired
        t = threading.Thread(target=lambda: (f.save("a", (1,)), done.set()))
        t.start()
        assert not done.wait(0.3), "a save went ahead while another held the lock"
    t.join(10)
    assert done.is_set()
    assert f.load("a") == (1,)


def test_save_without_the_lock_is_skipped(tmp_path, monkeypatch):
    """Past the wait a save is dropped (no entry rather than a racing one)."""
    from numba.core.caching import IndexDataCacheFile
    monkeypatch.setattr(_cache_lock, "_WAIT_S", 0.05)
    f = _cache_lock._locked_file_class(IndexDataCacheFile)(str(tmp_path), "k", "stamp")
    res = {}

    def save():
        f.save("a", (1,))
        res["saved"] = f.load("a")

    with _cache_lock._Lock(f._index_path + ".lock"):
        t = threading.Thread(target=save)
        t.start()
        t.join(10)
    assert not t.is_alive() and res["saved"] is None


_MODULE = '''
import numpy as np
from fastpool._runtime import jit

def make(k):
    def kernel(x):
        s = 0.0
        for i in range(x.shape[0] - k + 1):
            m = x[i]
            for j in range(1, k):
                m = max(m, x[i + j])
            s += m
        return s
    return jit(kernel)
'''

_COMPILER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, sys.argv[1])
    import tmpkernels
    f = tmpkernels.make(int(sys.argv[2]))
    print(f(np.arange(10.0)), f.stats.cache_hits[f.signatures[0]],
          f.stats.cache_misses[f.signatures[0]])
""")


def test_a_variant_compiling_elsewhere_is_loaded_not_compiled(tmp_path):
    """While this process holds a variant's compile lock, a second process that needs the same
    variant waits; once this process has compiled and saved it, the second loads it."""
    import numpy as np
    (tmp_path / "tmpkernels.py").write_text(_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import tmpkernels
        f = tmpkernels.make(3)
        sig = (__import__("numba").typeof(np.arange(10.0)),)
        path = _cache_lock.compile_lock_path(f, sig)
        assert path is not None
        with _cache_lock._Lock(path) as lock:
            assert lock.acquired
            child = subprocess.Popen([sys.executable, "-c", _COMPILER, str(tmp_path), "3"],
                                     stdout=subprocess.PIPE, text=True, env=dict(os.environ))
            time.sleep(1.0)
            assert child.poll() is None, "the second process did not wait"
            assert f(np.arange(10.0)) == sum(range(2, 10))
            assert f.stats.cache_misses[f.signatures[0]] == 1
        out, _ = child.communicate(timeout=120)
        value, hits, misses = out.split()
        assert float(value) == sum(range(2, 10))
        assert (int(hits), int(misses)) == (1, 0), out
        # another variant of the same kernel (a different closure) is compiled, not loaded
        other = subprocess.run([sys.executable, "-c", _COMPILER, str(tmp_path), "2"],
                               capture_output=True, text=True, timeout=120)
        value, hits, misses = other.stdout.split()
        assert float(value) == sum(range(1, 10)) and (int(hits), int(misses)) == (0, 1)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tmpkernels", None)
