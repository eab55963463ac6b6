"""Result buffers: large outputs are recycled once nothing outside fastpool references them.

A fresh multi-megabyte ``numpy.empty`` is mapped from the OS on every call (glibc serves blocks
over 32 MB by ``mmap``), and the kernel then pays a page fault per 4 KB page, or per 2 MB one
when transparent huge pages happen to be available: on a large output that costs as much as the
pooling itself and varies several-fold from call to call. fastpool therefore remembers the last
two result buffers of each (shape, dtype), and hands one back out when its only remaining
references are fastpool's own: the caller has dropped the result and every view of it (a view
holds a reference to its base, so a live view keeps the buffer out of reuse).

Bounded by a byte budget (least recently used shapes go first); ``FASTPOOL_OUTPUT_CACHE_MB``
sets it at import, :func:`set_output_cache` at run time, and 0 turns recycling off.
:func:`release_memory` drops every remembered buffer.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import threading
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 20   # smaller results come from malloc's free lists cheaply
PER_KEY = 2           # ``y = f(x)`` keeps the previous y alive during the call: double-buffer


def _cap_from_env() -> int:
    raw = os.environ.get("FASTPOOL_OUTPUT_CACHE_MB", "").strip()
    if not raw:
        return 512 << 20
    try:
        mb = float(raw)
    except ValueError:
        return 512 << 20
    return max(0, int(mb * (1 << 20)))


_cap = _cap_from_env()
_lock = threading.Lock()
_pool: OrderedDict = OrderedDict()   # (shape, dtype) -> [arrays], most recently used last
_held = 0


def _refs(lst, i):
    a = lst[i]
    return sys.getrefcount(a)


# references an unshared buffer has inside _refs: the list slot, the local name, the call's
# argument (measured rather than assumed, so an interpreter that counts differently stays safe)
_FREE = _refs([np.empty(1)], 0)


def empty(shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype``, recycled when one is free."""
    global _held
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or nbytes * PER_KEY > _cap:
        return np.empty(shape, dtype)
    key = (tuple(shape), dtype)
    with _lock:
        lst = _pool.get(key)
        if lst is not None:
            # the most recently used free buffer first: a loop that drops each result before
            # the next call then writes one buffer, which stays in the cache when it fits,
            # instead of alternating between two
            for i in range(len(lst) - 1, -1, -1):
                if _refs(lst, i) == _FREE:
                    a = lst.pop(i)
                    lst.append(a)
                    _pool.move_to_end(key)
                    return a
    a = np.empty(shape, dtype)
    with _lock:
        lst = _pool.get(key)
        if lst is None:
            lst = _pool[key] = []
        if len(lst) >= PER_KEY:   # both busy: forget the older one (its owner keeps it)
            _held -= lst.pop(0).nbytes
        lst.append(a)
        _held += nbytes
        _pool.move_to_end(key)
        _trim()
    return a


def allocator(shape, dtype):
    """A no-argument function returning a result array of ``shape`` and ``dtype``: plain
    ``numpy.empty`` below the recycling size (decided once, per plan), else :func:`empty`."""
    dtype = np.dtype(dtype)
    shape = tuple(shape)
    if math.prod(shape) * dtype.itemsize < MIN_BYTES:
        return functools.partial(np.empty, shape, dtype)
    return functools.partial(empty, shape, dtype)


def _trim():
    global _held
    while _held > _cap and _pool:
        k = next(iter(_pool))
        for a in _pool.pop(k):
            _held -= a.nbytes


def set_output_cache(max_bytes):
    """Limit the memory kept for recycled result buffers to ``max_bytes`` (0: recycle none).

    Returns the previous limit.
    """
    global _cap
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)):
        raise TypeError(f"set_output_cache: max_bytes must be an int, got {max_bytes!r}")
    if max_bytes < 0:
        raise ValueError(f"set_output_cache: max_bytes must be >= 0, got {max_bytes}")
    with _lock:
        old, _cap = _cap, int(max_bytes)
        _trim()
    return old


def release_memory():
    """Forget every remembered result buffer (results the caller still holds stay valid)."""
    global _held
    with _lock:
        _pool.clear()
        _held = 0


def output_cache_info() -> dict:
    with _lock:
        return {"limit_bytes": _cap, "held_bytes": _held,
                "buffers": sum(len(v) for v in _pool.values())}


def _after_fork():
    global _lock, _held
    _lock = threading.Lock()   # a thread of the parent may have held it at the fork
    _pool.clear()
    _held = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
