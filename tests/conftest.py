"""Shared helpers for the fastpool test-suite.

``reference.py`` (the NumPy oracle) and the helpers below are importable from every test
module (``import reference as R``; ``from conftest import make_input, ...``).
"""

import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# pytest-xdist (``-n 2``): the workers share one kernel cache folder, set before anything
# imports Numba, so that a kernel one worker compiled the other loads (fastpool's kernels save
# under a lock and compile each variant in one process at a time: ``fastpool/_cache_lock.py``).
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("NUMBA_CACHE_DIR"):
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(os.path.dirname(_HERE), ".pytest_cache", "numba")

import reference as R  # noqa: E402

FLOAT_DTYPES = [np.float16, np.float32, np.float64]
INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64]
MAX_DTYPES = FLOAT_DTYPES + INT_DTYPES


def make_input(rng, shape, dtype, nan=True, special=True):
    """Values from a small integer set (many ties), NaN and +-inf sprinkled in for floats;
    the dtype's extremes sprinkled in for integers."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        x = rng.integers(-4, 5, shape).astype(np.float64)
        x += rng.choice([0.0, 0.5], shape)
        if nan:
            x[rng.random(shape) < 0.06] = np.nan
        if special:
            x[rng.random(shape) < 0.03] = -np.inf
            x[rng.random(shape) < 0.02] = np.inf
        return x.astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -5), min(info.max, 5)
    x = rng.integers(lo, hi + 1, shape).astype(dtype)
    if special:
        x[rng.random(shape) < 0.05] = info.min
        x[rng.random(shape) < 0.05] = info.max
    return x


def assert_same(a, b, exact=True, rtol=1e-6, atol=1e-6):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if exact:
        np.testing.assert_array_equal(a, b)  # NaN == NaN here
    else:
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol,
                                   atol=atol, equal_nan=True)


def tol(dtype):
    dtype = np.dtype(dtype)
    return {np.float16: (2e-3, 2e-3), np.float32: (1e-5, 1e-5)}.get(dtype.type, (1e-12, 1e-12))


def windows_hit_input(sp, k, s, pads, d, ceil_mode):
    """True when every window holds at least one input cell (PyTorch returns -inf and an
    out-of-range index otherwise, which the contract makes an error)."""
    for n, kk, ss, (b, a), dd in zip(sp, k, s, pads, d):
        for o in range(R.output_len(n, kk, ss, b, a, dd, ceil_mode)):
            if not any(0 <= o * ss - b + j * dd < n for j in range(kk)):
                return False
    return True


def draw_asymmetric(rng, k, s, d, ceil_mode, extra=6):
    """(before, after) pads up to the kernel size, and spatial sizes with every window
    holding an input cell."""
    while True:
        pads = [(int(rng.integers(0, kk + 1)), int(rng.integers(0, kk + 1))) for kk in k]
        sp = tuple(max((kk - 1) * dd + 1 - b - a, 0) + int(rng.integers(1, extra))
                   for kk, dd, (b, a) in zip(k, d, pads))
        if windows_hit_input(sp, k, s, pads, d, ceil_mode):
            return pads, sp


def draw_window(rng, nd, dilation=True, max_pad_half=True, ceil=None, min_input_kernel=False):
    """Draw kernel/stride/padding/dilation/ceil and input spatial sizes (not dividing evenly)."""
    while True:
        k = [int(rng.integers(1, 5 if nd < 3 else 4)) for _ in range(nd)]
        s = [int(rng.choice([1, 2, 3, k[i], k[i] + 1])) for i in range(nd)]
        d = [int(rng.integers(1, 3)) if dilation else 1 for _ in range(nd)]
        p = [int(rng.integers(0, k[i] // 2 + 1)) if max_pad_half else 0 for i in range(nd)]
        ceil_mode = bool(rng.integers(0, 2)) if ceil is None else ceil
        sp = []
        for i in range(nd):
            eff = (k[i] - 1) * d[i] + 1
            lo = eff if min_input_kernel else max(eff - 2 * p[i], 1)
            sp.append(int(rng.integers(lo, lo + (9 if nd < 3 else 5))))
        if windows_hit_input(sp, k, s, [(v, v) for v in p], d, ceil_mode):
            return tuple(k), tuple(s), tuple(p), tuple(d), ceil_mode, tuple(sp)


