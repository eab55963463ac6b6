"""Parameter normalisation and every shape rule, in pure Python.

Nothing here touches array data: functions take sizes and user arguments, return validated
tuples, and raise ``ValueError``/``TypeError`` naming the parameter and the numbers involved.
"""
import functools
import numbers
import os

import numpy as np


def _is_int(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


# the largest magnitude of a size parameter: sizes and offsets are int64 in the kernels
PARAM_LIMIT = 1 << 62


def _bounded(op, name, v):
    if not -PARAM_LIMIT < v < PARAM_LIMIT:
        raise ValueError(f"{op}: {name} {v} is out of range (its magnitude must be below 2**62)")
    return v


def as_sequence(value):
    """A 0-d or 1-d integer array as a Python int or list (size parameters); else ``value``."""
    if isinstance(value, np.ndarray) and value.ndim <= 1 and value.dtype.kind in "iu":
        return value.tolist()
    return value


def int_tuple(op, name, value, rank, allow_none=False, spread_one=True):
    """An int, or a tuple/list (or 1-d integer array) of ``rank`` ints, as a tuple of
    ``rank`` Python ints, each of magnitude below 2**62.  ``spread_one``: a one-element tuple
    stands for every dim (as PyTorch's max and average pooling take it; its Lp kernel size,
    adaptive output sizes, fractional and unpooling parameters do not)."""
    value = as_sequence(value)
    if _is_int(value):
        return (_bounded(op, name, int(value)),) * rank
    if allow_none and value is None:
        return (None,) * rank
    if isinstance(value, (tuple, list)):
        if len(value) == 1 and rank > 1 and spread_one and _is_int(value[0]):
            return (_bounded(op, name, int(value[0])),) * rank
        if len(value) != rank:
            raise ValueError(
                f"{op}: {name} must be an int or a tuple of {rank} ints, got {tuple(value)!r} "
                f"(length {len(value)})")
        out = []
        for v in value:
            if allow_none and v is None:
                out.append(None)
            elif _is_int(v):
                out.append(_bounded(op, name, int(v)))
            else:
                raise TypeError(f"{op}: {name} entries must be ints, got {v!r} in {tuple(value)!r}")
        return tuple(out)
    raise TypeError(f"{op}: {name} must be an int or a tuple of {rank} ints, got {value!r}")


def positive(op, name, values):
    for v in values:
        if v <= 0:
            raise ValueError(f"{op}: {name} must be positive, got {values!r}")


def check_float(op, name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating,
                                                                     np.integer)):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    return float(value)


def split_shape(op, shape, rank, channels_last):
    """Return (batched, N, C, spatial) for an input shape of ``rank`` spatial dims."""
    nd = len(shape)
    if nd not in (rank + 1, rank + 2):
        lay = "(N, *spatial, C)" if channels_last else "(N, C, *spatial)"
        raise ValueError(
            f"{op}: input must have {rank + 1} or {rank + 2} dims {lay} for {rank} spatial dims, "
            f"got shape {tuple(shape)}")
    batched = nd == rank + 2
    if channels_last:
        n = shape[0] if batched else 1
        sp = tuple(shape[1:-1]) if batched else tuple(shape[:-1])
        c = shape[-1]
    else:
        n = shape[0] if batched else 1
        c = shape[1] if batched else shape[0]
        sp = tuple(shape[2:]) if batched else tuple(shape[1:])
    if c == 0 or any(s == 0 for s in sp):
        raise ValueError(
            f"{op}: channel and spatial sizes must be non-zero, got shape {tuple(shape)}")
    return batched, n, c, sp


def output_len(in_size, k, s, before, after, d, ceil_mode):
    """Number of windows along one dim (may be <= 0 when the window does not fit)."""
    eff = (k - 1) * d + 1
    span = in_size + before + after - eff
    if span < 0 and not ceil_mode:
        return 0
    # (ceil mode: ceil(span / s) + 1, one window while the window overhangs the padded input
    # by less than a stride, as PyTorch's output size)
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= in_size + before:
        out -= 1
    return out


def same_pads(in_size, k, s, d, lower=False):
    out = -(-in_size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - in_size, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


def padding_arg(op, padding, rank, kernel, stride, dilation, spatial, half_limit=True):
    """Normalise ``padding`` to ((before, after), ...) and say whether ONNX rules apply."""
    padding = as_sequence(padding)  # (integer arrays, as the other size parameters)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * rank, True
        if mode in ("same", "same_upper", "same_lower"):
            lower = mode == "same_lower"
            return tuple(same_pads(spatial[i], kernel[i], stride[i], dilation[i], lower)
                         for i in range(rank)), True
        raise ValueError(f"{op}: padding must be an int, a tuple, or one of 'valid', 'same' "
                         f"('same_upper'), 'same_lower' (any case); got {padding!r}")
    if _is_int(padding):
        pads = (int(padding),) * rank
    elif isinstance(padding, (tuple, list)):
        if len(padding) == 1 and rank > 1 and _is_int(padding[0]):
            padding = tuple(padding) * rank
        if len(padding) != rank:
            raise ValueError(f"{op}: padding must be an int or a tuple of {rank} entries, got "
                             f"{tuple(padding)!r} (length {len(padding)})")
        if all(_is_int(p) for p in padding):
            pads = tuple(int(p) for p in padding)
        elif all(isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(q) for q in p)
                 for p in padding):
            pairs = tuple((int(p[0]), int(p[1])) for p in padding)
            if any(b < 0 or a < 0 for b, a in pairs):
                raise ValueError(f"{op}: padding must be non-negative, got {pairs!r}")
            return pairs, True
        else:
            raise ValueError(f"{op}: padding must be ints or (before, after) pairs of ints, "
                             f"got {tuple(padding)!r}")
    else:
        raise TypeError(f"{op}: padding must be an int, a tuple or a string, got {padding!r}")
    if any(p < 0 for p in pads):
        raise ValueError(f"{op}: padding must be non-negative, got {pads!r}")
    if half_limit:
        for p, k in zip(pads, kernel):
            if p > k // 2:
                raise ValueError(f"{op}: padding should be at most half of kernel size, got "
                                 f"padding={pads!r} with kernel_size={tuple(kernel)!r}")
    return tuple((p, p) for p in pads), False


def window_geometry(op, spatial, kernel, stride, pads, dilation, ceil_mode, onnx):
    """Output sizes after every check on the window; raises when no window fits."""
    outs = []
    for i, n in enumerate(spatial):
        k, s, (b, a), d = kernel[i], stride[i], pads[i], dilation[i]
        eff = (k - 1) * d + 1
        if eff > n + b + a and (not ceil_mode or eff - (n + b + a) >= s):
            raise ValueError(
                f"{op}: window (kernel_size={k}, dilation={d}, extent {eff}) is larger than the "
                f"padded input (size {n} + padding {b}+{a}) in spatial dim {i}" +
                (f" by {eff - (n + b + a)}, at least the stride {s} (ceil_mode)" if ceil_mode
                 else ""))
        if onnx and b >= eff:
            raise ValueError(f"{op}: padding {b} before spatial dim {i} leaves the first window "
                             f"(extent {eff}) without any input cell")
        out = output_len(n, k, s, b, a, d, ceil_mode)
        # (the last window after ceil mode's drop rule: past the input, it holds no cell)
        if onnx and out >= 1 and (out - 1) * s - b >= n:
            raise ValueError(f"{op}: padding {a} after spatial dim {i} leaves the last window "
                             f"(extent {eff}, stride {s}) without any input cell")
        if out <= 0:
            raise ValueError(f"{op}: output size is too small: input {tuple(spatial)}, "
                             f"computed output size {out} in spatial dim {i}")
        outs.append(out)
    return tuple(outs)


@functools.lru_cache(maxsize=4096)
def dim_table(n, k, s, b, a, d, out):
    """Per output position along one dim: first in-range tap, tap count, taps within padding.

    Returns an int64 array of shape (3, out): row 0 is the input position of the first tap that
    lies inside the input, row 1 the number of such taps (taps are ``d`` apart), row 2 the number
    of taps inside the padded extent ``[-b, n + a)`` (the count_include_pad divisor factor).
    """
    first = np.arange(out, dtype=np.int64) * s - b
    j0 = np.where(first < 0, (-first + d - 1) // d, 0)
    j1 = np.minimum(k, np.maximum((n - first + d - 1) // d, 0))
    cnt = np.maximum(j1 - j0, 0)
    incl = np.minimum(k, (n + a - first + d - 1) // d)
    t = np.empty((3, out), dtype=np.int64)
    t[0] = first + j0 * d
    t[1] = cnt
    t[2] = incl
    t.setflags(write=False)
    return t


@functools.lru_cache(maxsize=4096)
def adaptive_table(n, out):
    """Adaptive windows [floor(i*n/out), ceil((i+1)*n/out)) as a dim_table-shaped array."""
    i = np.arange(out, dtype=np.int64)
    start = (i * n) // out
    end = -((-(i + 1) * n) // out)
    t = np.empty((3, out), dtype=np.int64)
    t[0] = start
    t[1] = end - start
    t[2] = end - start
    t.setflags(write=False)
    return t


def stack_tables(tables):
    """Stack 3 per-dim tables into one (3, 3, maxout) int64 array for the kernels."""
    m = max(t.shape[1] for t in tables)
    out = np.zeros((3, 3, m), dtype=np.int64)
    for i, t in enumerate(tables):
        out[i, :, :t.shape[1]] = t
    return out


def check_empty_windows(op, tables, spatial):
    for i, t in enumerate(tables):
        if t.shape[1] and t[1].min() == 0:
            o = int(np.argmin(t[1]))
            raise ValueError(f"{op}: output position {o} of spatial dim {i} has a window with no "
                             f"input cell (input size {spatial[i]}); reduce the padding")


def _phys_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


PHYS_BYTES = _phys_bytes()


def check_alloc(op, shape, itemsize, table_len=0):
    if 24 * 3 * table_len > PHYS_BYTES // 4:
        raise ValueError(f"{op}: an output length of {table_len} along one dim is absurd")
    total = itemsize
    for s in shape:
        total *= int(s)
    if total > PHYS_BYTES:
        raise ValueError(f"{op}: the result of shape {tuple(shape)} would need {total} bytes, more "
                         f"than this machine's memory ({PHYS_BYTES} bytes)")
