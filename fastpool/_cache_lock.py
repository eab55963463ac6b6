"""Numba's kernel cache made safe for several processes at once.

Numba keeps one index file per function, mapping each compiled variant (its signature, the CPU,
and the hashes of the bytecode and closure contents, so every specialisation of one kernel
factory shares the index) to a numbered data file.  Saving reads the index, picks the first
unused number, writes the index and then the data, with no lock.  Two processes that save
different variants at once can both pick the same number: the index then names one variant's
key and the data file holds the other's machine code, which a later process loads and runs for
the wrong key.  Dask or multiprocessing workers, or several jobs started together, all compiling
fastpool's kernels on their first calls, is exactly that case.

``guard(dispatcher)`` fixes it for fastpool's kernels (Numba's own and other libraries' are left
alone):

* saves are made under an exclusive ``flock`` on ``<index>.lock``, reading the index inside
  the lock and writing the data file before the index that names it, so a reader never sees an
  entry whose data is not yet (or no longer) that entry's;
* a process that is about to compile a variant first takes a lock of that variant's own
  (``<index>.<key hash>.lock``) and looks in the cache again once it holds it, so when several
  processes need one variant at the same time one compiles it and the others load it.

Waits are bounded: past ``_WAIT_S`` a compile goes ahead without its lock (only wasted work),
and a save is skipped (the kernel stays compiled in memory; no entry is better than a wrong
one).  Where ``fcntl`` or ``flock`` is unavailable everything runs as Numba does by itself.
"""
import hashlib
import os
import threading
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

_WAIT_S = 300.0
_held = threading.local()  # lock paths this thread holds (a nested compile never re-locks)


class _Lock:
    """An exclusive ``flock`` on ``path``, waited for at most ``wait`` seconds; ``acquired``
    says whether it is held."""

    def __init__(self, path, wait=None):
        self.path = path
        self.wait = _WAIT_S if wait is None else wait
        self.fd = None
        self.acquired = False

    def __enter__(self):
        held = getattr(_held, "paths", None)
        if held is None:
            held = _held.paths = set()
        if self.path in held:  # (only reached with fcntl: guard does nothing without it)
            self.acquired = True
            return self
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return self
        deadline = time.monotonic() + self.wait
        delay = 0.002
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.acquired = True
                held.add(self.path)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return self
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            except OSError:  # a file system without flock
                return self

    def __exit__(self, *exc):
        if self.fd is not None:
            if self.acquired:
                _held.paths.discard(self.path)
            os.close(self.fd)  # (closing releases the flock)
            self.fd = None
        return False


def _locked_file_class(base):
    class LockedIndexDataCacheFile(base):
        """Numba's index and data files, saved under a lock, data before index."""

        def save(self, key, data):
            with _Lock(self._index_path + ".lock") as lock:
                if not lock.acquired:
                    return
                overloads = self._load_index()
                name = overloads.get(key)
                new = name is None
                if new:
                    used = set(overloads.values())
                    i = 1
                    while self._data_name(i) in used:
                        i += 1
                    name = self._data_name(i)
                self._save_data(name, data)
                if new:
                    overloads[key] = name
                    self._save_index(overloads)

    return LockedIndexDataCacheFile


_classes = {}


def guard(disp):
    """Make ``disp`` (a caching Numba dispatcher) save under a lock and compile each variant
    in one process at a time; a no-op where Numba's internals are not the expected ones."""
    if fcntl is None:
        return
    cache = getattr(disp, "_cache", None)
    cfile = getattr(cache, "_cache_file", None)
    needed = ("_load_index", "_save_index", "_save_data", "_data_name", "_index_path")
    if cfile is None or not all(hasattr(cfile, a) for a in needed) or \
            not hasattr(cache, "_index_key"):
        return
    base = type(cfile)
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = _locked_file_class(base)
    cfile.__class__ = cls
    compile_ = disp.compile
    from numba.core.compiler_lock import global_compiler_lock

    def compile(sig):
        with global_compiler_lock:  # (a thread's own locks are always taken in this order)
            try:
                path = compile_lock_path(disp, sig)
            except Exception:  # (a signature Numba itself will reject)
                path = None
            if path is None:
                return compile_(sig)
            with _Lock(path):
                return compile_(sig)  # looks in the cache first, now that no one else compiles

    disp.compile = compile


def compile_lock_path(disp, sig):
    """The file whose lock a process holds while it compiles ``disp`` for ``sig`` (None when
    that variant is compiled in this process already: typing a call to a helper kernel asks
    for its compile every time)."""
    from numba.core import sigutils
    args, _ = sigutils.normalize_signature(sig)
    if disp.overloads.get(tuple(args)) is not None:
        return None
    key = disp._cache._index_key(sig, disp.targetctx.codegen())
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    return f"{disp._cache._cache_file._index_path}.{digest}.lock"
