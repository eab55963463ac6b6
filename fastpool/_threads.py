"""Parallel kernels as serial ones run over Python threads ("split" kernels), when
``FASTPOOL_SPLIT_KERNELS=1`` (``_runtime.SPLIT``; off by default: faster first calls, slower
kernels at 2 threads, see the README).

Numba compiles a ``parallel=True`` kernel 2.5-3x slower than the same loops serial (its parfor
passes, then the loop body lowered again as a gufunc): a large call's first call in a fresh
process took 5-11 s.  A split kernel is the kernel's source with its one task loop ``for t in
prange(E)`` turned into ``for t in range(E * part // parts, E * (part + 1) // parts)``
(``_cpu/_specialise._split_prange``), compiled serial with ``nogil``.  ``SplitKernel`` runs
part 0 in the calling thread and the others on a small pool of worker threads: the same static
partition of the tasks into equal chunks as Numba's default schedule.

The pool holds ``threads - 1`` daemon threads, started on first use and grown on demand; a
forked child starts with none (the parent's threads do not exist there) and builds its own.
Several Python threads may call at once: each call hands its parts to idle workers, and a part
that finds none free runs in the calling thread itself, so no call waits on another's.
"""
import itertools
import os
import threading

_lock = threading.Lock()
_idle = []       # workers waiting for a part
_workers = []    # every live worker (to count them)


class _Worker:
    __slots__ = ("go", "job", "thread")

    def __init__(self):
        self.go = threading.Semaphore(0)
        self.job = None
        self.thread = threading.Thread(target=self._loop, name="fastpool-worker", daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            self.go.acquire()
            job, self.job = self.job, None
            job.run_parts()
            job = None  # (a job holds the call's arguments, and a result buffer that anything
            with _lock:  # still references is not recycled: _alloc counts references)
                _idle.append(self)


class _Job:
    """One call's parts, taken in turn by the caller and its workers through a shared counter
    (a thread that finishes early takes the next part: a dynamic schedule).  The caller waits
    for the parts, not for the workers: one that wakes after every part was taken finds none.
    """
    __slots__ = ("fn", "args", "parts", "next", "finished", "done", "error")

    def __init__(self, fn, args, parts):
        self.fn, self.args, self.parts = fn, args, parts
        self.next = itertools.count()
        self.finished = 0
        self.done = threading.Event()
        self.error = None

    def run_parts(self):
        while True:
            i = next(self.next)  # (atomic: itertools.count under the GIL)
            if i >= self.parts:
                return
            try:  # (fn and args are read only for a part not yet finished: the caller drops
                self.fn(*self.args, i, self.parts)  # them once every part is)
            except BaseException as e:  # (handed to the caller; the other parts still run)
                self.error = self.error or e
            with _lock:
                self.finished += 1
                last = self.finished == self.parts
            if last:
                self.done.set()


def _take_workers(k):
    """Up to ``k`` idle workers, starting new ones while the pool is below ``k``."""
    with _lock:
        got = [_idle.pop() for _ in range(min(k, len(_idle)))]
        while len(got) < k and len(_workers) < _MAX_WORKERS:
            w = _Worker()
            _workers.append(w)
            got.append(w)
    return got


_MAX_WORKERS = max(4 * (os.cpu_count() or 1), 8)


def run_parts(fn, args, parts, threads=None):
    """``fn(*args, part, parts)`` for every part in ``range(parts)``, on ``threads`` threads
    (default ``parts``; this one included), each taking the next part not yet taken; re-raises
    a part's exception after every part has finished."""
    threads = parts if threads is None else max(1, min(threads, parts))
    if threads <= 1:
        for i in range(parts):
            fn(*args, i, parts)
        return
    job = _Job(fn, args, parts)
    for w in _take_workers(threads - 1):
        w.job = job
        w.go.release()
    job.run_parts()
    job.done.wait()
    err, job.fn, job.args = job.error, None, None
    if err is not None:
        raise err


def _after_fork():
    global _lock, _idle, _workers
    _lock = threading.Lock()
    _idle = []
    _workers = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


PARTS_PER_THREAD = 4


def _threads():
    import numba
    return numba.get_num_threads()


class SplitKernel:
    """A serial Numba dispatcher of a split kernel, called like the parallel kernel it stands
    for: ``kern(*args)`` runs its parts on ``numba.get_num_threads()`` threads."""

    def __init__(self, disp):
        self.dispatcher = disp
        self.py_func = disp.py_func
        self.__name__ = getattr(disp, "__name__", "kernel")
        self.__qualname__ = getattr(disp, "__qualname__", self.__name__)

    def __call__(self, *args):
        threads = _threads()
        if threads <= 1:
            return self.dispatcher(*args, 0, 1)
        # a few parts per thread: one that finishes early takes more (a worker starts tens of
        # microseconds after the caller, and tasks differ in cost)
        return run_parts(self.dispatcher, args, PARTS_PER_THREAD * threads, threads)

    def __getattr__(self, name):  # the dispatcher's own (overloads, stats, _cache ...); its
        if name == "dispatcher":    # signatures end in the two part ints
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self):
        return f"SplitKernel({self.__qualname__})"

