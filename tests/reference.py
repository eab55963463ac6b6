"""Slow, obviously-correct NumPy oracle for every fastpool operator.

Written independently of the package: plain Python loops over output cells, no
vectorisation tricks.  Only meant for the tiny inputs used in the tests.

Conventions (see /work/shared/api.md):

* arrays are channels-first ``(N, C, *spatial)`` with 1..3 spatial dims; tests transpose
  channels-last data and add a batch axis for unbatched data before calling in here;
* ``kernel``, ``stride``, ``dilation`` are tuples with one int per spatial dim;
* ``pads`` is a list of ``(before, after)`` pairs, one per spatial dim;
* indices are flat positions inside one ``(n, c)`` plane, row-major over the spatial dims,
  ``int64``.

The validation of this module against PyTorch itself lives in ``tests/test_reference.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "output_len",
    "same_pads",
    "resolve_pads",
    "acc_dtype",
    "ref_max_pool",
    "ref_avg_pool",
    "ref_lp_pool",
    "ref_adaptive_max_pool",
    "ref_adaptive_avg_pool",
    "ref_fractional_max_pool",
    "fractional_intervals",
    "ref_max_unpool",
    "ref_max_pool_backward",
    "ref_avg_pool_backward",
    "ref_lp_pool_backward",
    "ref_adaptive_max_pool_backward",
    "ref_adaptive_avg_pool_backward",
    "ref_fractional_max_pool_backward",
    "ref_max_unpool_backward",
    "FRACTIONAL_SAMPLE_COLUMN",
]


# ---------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------

def output_len(n, k, s, b=0, a=0, d=1, ceil_mode=False):
    """Output length of one spatial dim.

    ``floor_or_ceil((n + b + a - ((k - 1) * d + 1)) / s) + 1``; in ceil mode the last window is
    dropped when it would start at or past ``n + b`` (i.e. entirely in the trailing padding).
    """
    eff = (k - 1) * d + 1
    num = n + b + a - eff
    if ceil_mode:
        # (a window overhanging the padded input by less than a stride still counts: ceil of
        # a fraction in (-1, 0) is 0)
        out = -(-num // s) + 1
        if out >= 1 and (out - 1) * s >= n + b:
            out -= 1
    else:
        out = num // s + 1
    if out < 1:
        raise ValueError(f"window ({eff}) larger than padded input ({n + b + a})")
    return out


def same_pads(n, k, s, d=1, lower=False):
    """(before, after) padding for ``"same"`` (odd cell at the end) / ``"same_lower"``."""
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def _tup(v, nd, name="value"):
    if isinstance(v, (int, np.integer)):
        return (int(v),) * nd
    v = tuple(v)
    if len(v) == 1 and nd != 1:
        v = v * nd
    if len(v) != nd:
        raise ValueError(f"{name} needs {nd} entries, got {v}")
    return tuple(int(e) for e in v)


def resolve_pads(padding, spatial, kernel, stride=None, dilation=1):
    """Turn a public ``padding=`` argument into a list of ``(before, after)`` pairs.

    Accepts an int, a tuple of ints (symmetric), a tuple of pairs, ``"valid"``, ``"same"`` and
    ``"same_lower"``.  Does not validate PyTorch's half-kernel limit (that is the package's job).
    """
    nd = len(spatial)
    kernel = _tup(kernel, nd, "kernel")
    stride = kernel if stride is None else _tup(stride, nd, "stride")
    dilation = _tup(dilation, nd, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        if padding in ("same", "same_lower"):
            return [same_pads(n, k, s, d, lower=(padding == "same_lower"))
                    for n, k, s, d in zip(spatial, kernel, stride, dilation)]
        raise ValueError(padding)
    if isinstance(padding, (int, np.integer)):
        return [(int(padding), int(padding))] * nd
    padding = tuple(padding)
    if all(isinstance(p, (int, np.integer)) for p in padding):
        return [(int(p), int(p)) for p in _tup(padding, nd, "padding")]
    if len(padding) != nd:
        raise ValueError("padding pairs")
    return [(int(b), int(a)) for b, a in padding]


def acc_dtype(dtype):
    """Accumulation dtype: float64 for float64, float32 for other floats, int64 for integers."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.dtype(np.float64)
    if dtype.kind == "f":
        return np.dtype(np.float32)
    if dtype.kind in "iu":
        return np.dtype(np.int64)
    raise TypeError(f"unsupported dtype {dtype}")


def _geometry(x, kernel, stride, pads, dilation):
    x = np.asarray(x)
    nd = x.ndim - 2
    if not 1 <= nd <= 3:
        raise ValueError(f"expected (N, C, *spatial) with 1..3 spatial dims, got {x.shape}")
    kernel = _tup(kernel, nd, "kernel")
    stride = kernel if stride is None else _tup(stride, nd, "stride")
    dilation = _tup(1 if dilation is None else dilation, nd, "dilation")
    if pads is None:
        pads = [(0, 0)] * nd
    elif isinstance(pads, (int, np.integer)):
        pads = [(int(pads), int(pads))] * nd
    pads = [tuple(int(v) for v in p) for p in pads]
    if len(pads) != nd:
        raise ValueError("pads needs one pair per spatial dim")
    return x, nd, kernel, stride, pads, dilation


def _window_taps(o, k, s, b, d):
    """All tap positions (input coordinates, possibly in the padding) of window ``o``."""
    start = o * s - b
    return [start + j * d for j in range(k)]


def _is_nan(v):
    return v != v


def _argmax(plane, cells):
    """PyTorch's scan: ``if val > best or isnan(val)``, first cell initialises."""
    best = None
    best_cell = None
    for cell in cells:
        v = plane[cell]
        if best is None or v > best or _is_nan(v):
            best = v
            best_cell = cell
    if best_cell is None:
        raise ValueError("window holds no input cell")
    return best, int(np.ravel_multi_index(best_cell, plane.shape))


def _trunc_div(num, den):
    q = abs(num) // abs(den)
    return -q if (num < 0) != (den < 0) else q


def _cast_int(v, dtype):
    # wrap like a C cast (numpy would raise for out-of-range Python ints)
    return np.array(np.int64(v)).astype(dtype)[()]


# ---------------------------------------------------------------------------------------------
# forward references
# ---------------------------------------------------------------------------------------------

def _max_pool_windows(shape_sp, kernel, stride, pads, dilation, ceil_mode):
    """Yield (out_cell, cells_in_window) with the window's valid cells in row-major order."""
    out_sp = tuple(output_len(n, k, s, b, a, d, ceil_mode)
                   for n, k, s, (b, a), d in zip(shape_sp, kernel, stride, pads, dilation))
    def gen():
        for ocell in itertools.product(*[range(o) for o in out_sp]):
            per_dim = []
            for o, n, k, s, (b, a), d in zip(ocell, shape_sp, kernel, stride, pads, dilation):
                per_dim.append([t for t in _window_taps(o, k, s, b, d) if 0 <= t < n])
            yield ocell, list(itertools.product(*per_dim))
    return out_sp, gen()


def ref_max_pool(x, kernel, stride=None, pads=None, dilation=None, ceil_mode=False):
    """Max pooling; returns ``(values, indices)`` (indices int64, flat per plane)."""
    x, nd, kernel, stride, pads, dilation = _geometry(x, kernel, stride, pads, dilation)
    N, C = x.shape[:2]
    out_sp, windows = _max_pool_windows(x.shape[2:], kernel, stride, pads, dilation, ceil_mode)
    windows = list(windows)
    vals = np.zeros((N, C) + out_sp, dtype=x.dtype)
    idx = np.zeros((N, C) + out_sp, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            plane = x[n, c]
            for ocell, cells in windows:
                v, i = _argmax(plane, cells)
                vals[(n, c) + ocell] = v
                idx[(n, c) + ocell] = i
    return vals, idx


@np.errstate(all="ignore")
def ref_avg_pool(x, kernel, stride=None, pads=None, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, dilation=None):
    """Average pooling with PyTorch's divisor rules (extended to asymmetric pads/dilation)."""
    x, nd, kernel, stride, pads, dilation = _geometry(x, kernel, stride, pads, dilation)
    N, C = x.shape[:2]
    sp = x.shape[2:]
    acc = acc_dtype(x.dtype).type
    is_int = x.dtype.kind in "iu"
    out_sp = tuple(output_len(n, k, s, b, a, d, ceil_mode)
                   for n, k, s, (b, a), d in zip(sp, kernel, stride, pads, dilation))
    out = np.zeros((N, C) + out_sp, dtype=x.dtype)
    for ocell in itertools.product(*[range(o) for o in out_sp]):
        valid, extent = [], 1
        for o, n, k, s, (b, a), d in zip(ocell, sp, kernel, stride, pads, dilation):
            taps = _window_taps(o, k, s, b, d)
            valid.append([t for t in taps if 0 <= t < n])
            extent *= sum(1 for t in taps if -b <= t < n + a)
        cells = list(itertools.product(*valid))
        if divisor_override is not None:
            div = int(divisor_override)
        elif count_include_pad:
            div = extent
        else:
            div = len(cells)
        if div == 0:
            raise ValueError("empty window")
        for n_ in range(N):
            for c in range(C):
                plane = x[n_, c]
                if is_int:
                    total = 0
                    for cell in cells:
                        total += int(plane[cell])
                    out[(n_, c) + ocell] = _cast_int(_trunc_div(total, div), x.dtype)
                else:
                    total = acc(0)
                    for cell in cells:
                        total = acc(total + acc(plane[cell]))
                    out[(n_, c) + ocell] = acc(total / acc(div))
    return out


def ref_lp_pool(x, p, kernel, stride=None, pads=None, dilation=None, ceil_mode=False):
    """PyTorch's Lp pooling: ``(avg_pool(x**p, count_include_pad=True) * prod(kernel))**(1/p)``.

    Computed in float32 for float16/float32 (float64 for float64) and rounded once.
    """
    x, nd, kernel, stride, pads, dilation = _geometry(x, kernel, stride, pads, dilation)
    if x.dtype.kind != "f":
        raise TypeError("lp pooling needs floats")
    if math.isinf(p):
        # PyTorch: max_pool(|x|) for +inf, -max_pool(-|x|) for -inf
        sign = 1 if p > 0 else -1
        v, _ = ref_max_pool(sign * np.abs(x), kernel, stride, pads, dilation, ceil_mode)
        return (sign * v).astype(x.dtype)
    acc = acc_dtype(x.dtype).type
    with np.errstate(all="ignore"):
        xp = x.astype(acc) ** acc(p)
        avg = ref_avg_pool(xp, kernel, stride, pads, ceil_mode, True, None, dilation)
        out = avg * acc(math.prod(kernel))
        out = out ** acc(1.0 / p)
    return out.astype(x.dtype)


def _adaptive_bounds(n, out):
    return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


def _out_sizes(sp, output_size):
    nd = len(sp)
    if output_size is None or isinstance(output_size, (int, np.integer)):
        output_size = (output_size,) * nd
    output_size = tuple(output_size)
    if len(output_size) == 1 and nd > 1:
        output_size = output_size * nd
    return tuple(n if o is None else int(o) for n, o in zip(sp, output_size))


def ref_adaptive_max_pool(x, output_size):
    x = np.asarray(x)
    sp = x.shape[2:]
    out_sp = _out_sizes(sp, output_size)
    N, C = x.shape[:2]
    bounds = [_adaptive_bounds(n, o) for n, o in zip(sp, out_sp)]
    vals = np.zeros((N, C) + out_sp, dtype=x.dtype)
    idx = np.zeros((N, C) + out_sp, dtype=np.int64)
    for ocell in itertools.product(*[range(o) for o in out_sp]):
        cells = list(itertools.product(*[range(*bounds[d][o]) for d, o in enumerate(ocell)]))
        for n in range(N):
            for c in range(C):
                v, i = _argmax(x[n, c], cells)
                vals[(n, c) + ocell] = v
                idx[(n, c) + ocell] = i
    return vals, idx


@np.errstate(all="ignore")
def ref_adaptive_avg_pool(x, output_size):
    x = np.asarray(x)
    sp = x.shape[2:]
    out_sp = _out_sizes(sp, output_size)
    N, C = x.shape[:2]
    acc = acc_dtype(x.dtype).type
    is_int = x.dtype.kind in "iu"
    bounds = [_adaptive_bounds(n, o) for n, o in zip(sp, out_sp)]
    out = np.zeros((N, C) + out_sp, dtype=x.dtype)
    for ocell in itertools.product(*[range(o) for o in out_sp]):
        cells = list(itertools.product(*[range(*bounds[d][o]) for d, o in enumerate(ocell)]))
        for n in range(N):
            for c in range(C):
                plane = x[n, c]
                if is_int:
                    total = sum(int(plane[cell]) for cell in cells)
                    out[(n, c) + ocell] = _cast_int(_trunc_div(total, len(cells)), x.dtype)
                else:
                    total = acc(0)
                    for cell in cells:
                        total = acc(total + acc(plane[cell]))
                    out[(n, c) + ocell] = acc(total / acc(len(cells)))
    return out


# PyTorch's fractional_max_pool{2,3}d: which column of random_samples[n, c, :] drives which
# spatial dim (spatial dims numbered in (D, H, W) / (H, W) order).  Verified empirically in
# test_reference.py: 2-d uses sample[..., 0] for W and sample[..., 1] for H; 3-d uses
# sample[..., 0] for D(T), [1] for H, [2] for W.
FRACTIONAL_SAMPLE_COLUMN = {2: (1, 0), 3: (0, 1, 2)}


def fractional_intervals(u, n, out, k, dtype=np.float64):
    """PyTorch's ``generate_intervals``: window starts, arithmetic in ``dtype``."""
    t = np.dtype(dtype).type
    seq = [0] * out
    if out > 1:
        alpha = t(t(n - k) / t(out - 1))
        u = t(u)
        for i in range(out - 1):
            seq[i] = int(t(t(t(i) + u) * alpha)) - int(t(u * alpha))
    if out > 0:
        seq[out - 1] = n - k
    return seq


def _frac_dtype(x, interval_dtype):
    if interval_dtype is not None:
        return np.dtype(interval_dtype)
    if x.dtype.kind == "f":
        return x.dtype
    return np.dtype(np.float64)  # integer inputs: PyTorch has no such path; assume float64


def _frac_setup(x, kernel, output_size, samples, interval_dtype):
    x = np.asarray(x)
    nd = x.ndim - 2
    kernel = _tup(kernel, nd, "kernel")
    out_sp = _tup(output_size, nd, "output_size")
    samples = np.asarray(samples)
    N, C = x.shape[:2]
    if samples.shape != (N, C, nd):
        raise ValueError(f"samples shape {samples.shape} != {(N, C, nd)}")
    cols = FRACTIONAL_SAMPLE_COLUMN[nd]
    dt = _frac_dtype(x, interval_dtype)
    samples = samples.astype(dt)
    for n_, o, k in zip(x.shape[2:], out_sp, kernel):
        if o + k - 1 > n_:
            raise ValueError("fractional output too large")
    return x, nd, kernel, out_sp, samples, cols, dt


def ref_fractional_max_pool(x, kernel, output_size, samples, interval_dtype=None):
    """Fractional max pooling with PyTorch's interval generation; ``(values, indices)``.

    ``interval_dtype`` defaults to the input dtype for floats (as PyTorch) and float64 for
    integer inputs.
    """
    x, nd, kernel, out_sp, samples, cols, dt = _frac_setup(x, kernel, output_size, samples,
                                                           interval_dtype)
    N, C = x.shape[:2]
    sp = x.shape[2:]
    vals = np.zeros((N, C) + out_sp, dtype=x.dtype)
    idx = np.zeros((N, C) + out_sp, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            starts = [fractional_intervals(samples[n, c, cols[d]], sp[d], out_sp[d], kernel[d], dt)
                      for d in range(nd)]
            for ocell in itertools.product(*[range(o) for o in out_sp]):
                cells = list(itertools.product(*[range(starts[d][o], starts[d][o] + kernel[d])
                                                 for d, o in enumerate(ocell)]))
                v, i = _argmax(x[n, c], cells)
                vals[(n, c) + ocell] = v
                idx[(n, c) + ocell] = i
    return vals, idx


def ref_max_unpool(x, indices, output_spatial_size):
    """Zeros, then ``out.flat[idx] = value`` per plane, in input order (later writes win)."""
    x = np.asarray(x)
    indices = np.asarray(indices)
    if indices.shape != x.shape:
        raise ValueError("indices shape must match input shape")
    if indices.dtype.kind not in "iu":
        raise TypeError("indices must be integers")
    N, C = x.shape[:2]
    out_sp = tuple(int(v) for v in output_spatial_size)
    out = np.zeros((N, C) + out_sp, dtype=x.dtype)
    size = math.prod(out_sp)
    for n in range(N):
        for c in range(C):
            flat = out[n, c].reshape(-1)
            src = x[n, c].reshape(-1)
            ind = indices[n, c].reshape(-1)
            for i in range(src.size):
                j = int(ind[i])
                if not 0 <= j < size:
                    raise ValueError(f"index {j} out of range for plane of {size}")
                flat[j] = src[i]
            out[n, c] = flat.reshape(out_sp)
    return out


# ---------------------------------------------------------------------------------------------
# backward references (gradient with respect to the input; same shape and dtype as x)
# ---------------------------------------------------------------------------------------------

def _grad_dtype(x):
    return acc_dtype(x.dtype) if x.dtype.kind == "f" else np.dtype(np.float64)


@np.errstate(all="ignore")
def _scatter_argmax(grad_out, x, idx):
    g = np.zeros(x.shape, dtype=_grad_dtype(x))
    t = g.dtype.type
    grad_out = np.asarray(grad_out)
    N, C = x.shape[:2]
    for n in range(N):
        for c in range(C):
            flat = g[n, c].reshape(-1)
            go = grad_out[n, c].reshape(-1)
            ii = idx[n, c].reshape(-1)
            for o in range(go.size):
                flat[ii[o]] = t(flat[ii[o]] + t(go[o]))
            g[n, c] = flat.reshape(x.shape[2:])
    return g.astype(x.dtype)


def ref_max_pool_backward(grad_out, x, kernel, stride=None, pads=None, dilation=None,
                          ceil_mode=False):
    """Each output's gradient goes to its argmax cell (accumulated over overlapping windows)."""
    _, idx = ref_max_pool(x, kernel, stride, pads, dilation, ceil_mode)
    return _scatter_argmax(grad_out, np.asarray(x), idx)


def ref_adaptive_max_pool_backward(grad_out, x, output_size):
    _, idx = ref_adaptive_max_pool(x, output_size)
    return _scatter_argmax(grad_out, np.asarray(x), idx)


def ref_fractional_max_pool_backward(grad_out, x, kernel, output_size, samples,
                                     interval_dtype=None):
    _, idx = ref_fractional_max_pool(x, kernel, output_size, samples, interval_dtype)
    return _scatter_argmax(grad_out, np.asarray(x), idx)


@np.errstate(all="ignore")
def ref_avg_pool_backward(grad_out, x, kernel, stride=None, pads=None, ceil_mode=False,
                          count_include_pad=True, divisor_override=None, dilation=None):
    """``grad / divisor`` added to every input tap of each window."""
    x, nd, kernel, stride, pads, dilation = _geometry(x, kernel, stride, pads, dilation)
    grad_out = np.asarray(grad_out)
    N, C = x.shape[:2]
    sp = x.shape[2:]
    g = np.zeros(x.shape, dtype=_grad_dtype(x))
    t = g.dtype.type
    out_sp = tuple(output_len(n, k, s, b, a, d, ceil_mode)
                   for n, k, s, (b, a), d in zip(sp, kernel, stride, pads, dilation))
    if grad_out.shape != (N, C) + out_sp:
        raise ValueError(f"grad_out shape {grad_out.shape} != {(N, C) + out_sp}")
    for ocell in itertools.product(*[range(o) for o in out_sp]):
        valid, extent = [], 1
        for o, n, k, s, (b, a), d in zip(ocell, sp, kernel, stride, pads, dilation):
            taps = _window_taps(o, k, s, b, d)
            valid.append([tp for tp in taps if 0 <= tp < n])
            extent *= sum(1 for tp in taps if -b <= tp < n + a)
        cells = list(itertools.product(*valid))
        if divisor_override is not None:
            div = int(divisor_override)
        elif count_include_pad:
            div = extent
        else:
            div = len(cells)
        for n_ in range(N):
            for c in range(C):
                share = t(t(grad_out[(n_, c) + ocell]) / t(div))
                for cell in cells:
                    g[(n_, c) + cell] = t(g[(n_, c) + cell] + share)
    return g.astype(x.dtype)


@np.errstate(all="ignore")
def ref_adaptive_avg_pool_backward(grad_out, x, output_size):
    x = np.asarray(x)
    grad_out = np.asarray(grad_out)
    sp = x.shape[2:]
    out_sp = _out_sizes(sp, output_size)
    N, C = x.shape[:2]
    g = np.zeros(x.shape, dtype=_grad_dtype(x))
    t = g.dtype.type
    bounds = [_adaptive_bounds(n, o) for n, o in zip(sp, out_sp)]
    for ocell in itertools.product(*[range(o) for o in out_sp]):
        cells = list(itertools.product(*[range(*bounds[d][o]) for d, o in enumerate(ocell)]))
        for n in range(N):
            for c in range(C):
                share = t(t(grad_out[(n, c) + ocell]) / t(len(cells)))
                for cell in cells:
                    g[(n, c) + cell] = t(g[(n, c) + cell] + share)
    return g.astype(x.dtype)


def ref_lp_pool_backward(grad_out, x, p, kernel, stride=None, pads=None, dilation=None,
                         ceil_mode=False):
    """Gradient of PyTorch's lp_pool formula, following its autograd graph step by step.

    Forward:  A = avg_pool(x**p, count_include_pad=True); Y = sign(A)*relu(|A|) * K;
    out = Y**(1/p) with K = prod(kernel).  Backward:
      gY = g * (1/p) * Y**(1/p - 1)            (pow)
      gA = gY * K, and 0 where A == 0            (mul, sign*relu(abs) -> zero grad at 0)
      g(x**p) = avg_pool_backward(gA)           (count_include_pad=True divisor)
      gx = g(x**p) * p * x**(p - 1)             (pow)
    i.e. gx_i = sum_windows g * (K / divisor) * x_i**(p-1) * out**(1-p)  (for A != 0).
    """
    x, nd, kernel, stride, pads, dilation = _geometry(x, kernel, stride, pads, dilation)
    if math.isinf(p):
        sign = 1 if p > 0 else -1
        g = ref_max_pool_backward(grad_out, sign * np.abs(x), kernel, stride, pads, dilation,
                                  ceil_mode)
        return (g * np.sign(x)).astype(x.dtype)
    acc = _grad_dtype(x).type
    K = acc(math.prod(kernel))
    with np.errstate(all="ignore"):
        xa = x.astype(acc)
        xp = xa ** acc(p)
        A = ref_avg_pool(xp, kernel, stride, pads, ceil_mode, True, None, dilation)
        Y = A * K
        e = acc(1.0 / p)
        if e == 0:
            gY = np.zeros_like(Y)
        else:
            gY = np.asarray(grad_out).astype(acc) * e * Y ** (e - acc(1))
        gA = np.where(A == 0, acc(0), gY * K).astype(acc)
        gxp = ref_avg_pool_backward(gA, xp, kernel, stride, pads, ceil_mode, True, None,
                                    dilation)
        gx = gxp * (acc(p) * xa ** (acc(p) - acc(1)))
    return gx.astype(x.dtype)


def ref_max_unpool_backward(grad_out, x, indices, output_spatial_size=None):
    """Gradient of unpooling with respect to its input values: gather at the indices."""
    x = np.asarray(x)
    grad_out = np.asarray(grad_out)
    indices = np.asarray(indices)
    N, C = x.shape[:2]
    g = np.zeros(x.shape, dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            go = grad_out[n, c].reshape(-1)
            g[n, c] = go[indices[n, c].reshape(-1)].reshape(x.shape[2:])
    return g
