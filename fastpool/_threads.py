"""Parallel kernels as serial ones run over Python threads ("split" kernels), when
``FASTPOOL_SPLIT_KERNELS=1`` (``_runtime.SPLIT``; off by default: faster first calls, slower
kernels at 2 threads, see the README).

Numba compiles a ``parallel=True`` kernel 2.5-3x slower than the same loops serial (its parfor
passes, then the loop body lowered again as a gufunc): a large call's first call in a fresh
process took 5-11 s.  A split kernel is the kernel's source with its one task loop ``for t in
prange(E)`` turned into the tasks of one part of ``parts`` (``_cpu/_specialise._split_prange``),
compiled serial with ``nogil``.  ``SplitKernel`` cuts a call into a few parts per thread, which
the calling thread and pool workers take in turn from a shared counter (a dynamic schedule);
the caller waits for the parts, not for the workers.

The pool holds daemon threads, started on first use and grown on demand up to
``_MAX_WORKERS``; each has its own job queue, and after a job spins on its flag outside the GIL
(``_spin``) before it blocks.  A forked child starts with none (the parent's threads do not
exist there) and builds its own.  Several Python threads may call at once: each takes idle
workers, or runs every part itself when there are none.
"""
import itertools
import os
import queue
import threading

_lock = threading.Lock()
_idle = []       # workers no call holds (a worker's call puts it back when it returns)
_workers = []    # every live worker (to count them)


# After a part a worker waits for the next job spinning on its flag, outside the GIL, for up
# to SPIN_ITERS pause instructions (~0.2-1 ms) before it blocks: a blocked thread takes tens
# of microseconds to wake here, which a call of a millisecond pays at every start.  0: block
# at once.
SPIN_ITERS = int(os.environ.get("FASTPOOL_SPIN_ITERS", "20000") or 0)
_flags = None    # int64 per worker: 1 while a job waits for it


class _Worker:
    """A pool thread: takes jobs from its own queue, in order.  The caller that took it from
    the idle list puts it back when its call returns, even if the thread has not yet seen the
    job (it then finds no part left): a later job only queues behind."""
    __slots__ = ("jobs", "thread", "slot")

    def __init__(self, slot):
        self.jobs = queue.SimpleQueue()
        self.slot = slot
        self.thread = threading.Thread(target=self._loop, name="fastpool-worker", daemon=True)
        self.thread.start()

    def signal(self, job):
        self.jobs.put(job)
        if _flags is not None:  # (after the put: a worker that saw the flag finds the job)
            _flags[self.slot] = 1

    def _loop(self):
        flags = _flags  # (None: SPIN_ITERS is 0, the worker blocks at once)
        if flags is not None:
            from ._spin import spin_wait  # (compiled or loaded by _ensure_flags already)
        jobs = self.jobs
        while True:
            if flags is not None and jobs.empty():
                spin_wait(flags, self.slot, SPIN_ITERS)
            job = jobs.get()
            if flags is not None:
                flags[self.slot] = 0
            job.run_parts()
            job = None  # (a job holds the call's arguments, and a result buffer that anything
            # still references is not recycled: _alloc counts references)


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
            _ensure_flags()
            w = _Worker(len(_workers))
            _workers.append(w)
            got.append(w)
    return got


_MAX_WORKERS = max(4 * (os.cpu_count() or 1), 8)


def _ensure_flags():
    """The flags and the spin wait (``_spin``, a tiny kernel), before the first worker starts:
    compiled or loaded here, in the caller, rather than in a new worker while the caller
    compiles its kernel."""
    global _flags
    if _flags is None and SPIN_ITERS > 0:
        import numpy as np

        from ._spin import spin_wait
        spin_wait(np.zeros(1, np.int64), 0, 0)
        _flags = np.zeros(_MAX_WORKERS, np.int64)


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
    workers = _take_workers(threads - 1)
    for w in workers:
        w.signal(job)
    try:
        job.run_parts()
        job.done.wait()
    finally:
        with _lock:
            _idle.extend(workers)
    err, job.fn, job.args = job.error, None, None
    if err is not None:
        raise err


def _after_fork():
    global _lock, _idle, _workers, _flags
    _lock = threading.Lock()
    _idle = []
    _workers = []
    _flags = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


PARTS_PER_THREAD = 4


def _threads():
    """``numba.get_num_threads()``, without starting Numba's threading layer (~10 ms at the
    first call) when nothing started it: before that no one can have set a count either."""
    import numba
    from numba.np.ufunc import parallel
    if not parallel._is_initialized:
        return numba.config.NUMBA_NUM_THREADS
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

