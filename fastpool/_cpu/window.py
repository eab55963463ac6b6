"""Generic window kernels (max, average, Lp) for both layouts, driven by window tables.

Every kernel works on the canonical rank-3 problem: channels-first ``(planes, D, H, W)`` or
channels-last ``(N, D, H, W, C)``.  The window geometry arrives as ``tab``, an int64 array of
shape (3 dims, 3 rows, out): row 0 the input position of each window's first in-range tap,
row 1 the number of in-range taps, row 2 the taps inside the padded extent.  Taps along a dim
are ``dil[dim]`` apart.  Adaptive pooling uses the same kernels with adaptive tables.

Each factory returns one kernel per (layout, parallel) pair; the float16 handling and the
element types come from the argument types (see ``_dtypes``).
"""
import numpy as np
from numba import prange
from numba.extending import overload

from ._intrinsics import load, to_storage
from .._runtime import jit

CF = "cf"
CL = "cl"


def divide(s, n):  # pragma: no cover - replaced by the overload inside kernels
    raise NotImplementedError


@overload(divide, inline="always")
def _divide_impl(s, n):
    from numba import types
    if isinstance(s, types.Integer):
        def impl(s, n):  # C-style truncation toward zero, as PyTorch's integer average
            q = s // n
            if q < 0 and q * n != s:
                q += 1
            return q
        return impl
    if isinstance(s, types.Float) and s.bitwidth == 32:
        def impl(s, n):
            return s / np.float32(n)
        return impl

    def impl(s, n):
        return s / np.float64(n)
    return impl


def _rows_cf(r, OD, OH):
    p = r // (OD * OH)
    q = r - p * (OD * OH)
    od = q // OH
    return p, od, q - od * OH


_rows = jit(_rows_cf)


def make_max(layout, parallel):
    PAR = parallel  # noqa: F841  (in the closure so that each option set caches apart)

    if layout == CF:
        def kernel(x, out, idx, tab, dil, want_idx, init, marker):
            H = x.shape[2]
            W = x.shape[3]
            OD = out.shape[1]
            OH = out.shape[2]
            OW = out.shape[3]
            dd = dil[0]
            dh = dil[1]
            dw = dil[2]
            for r in prange(out.shape[0] * OD * OH):
                p, od, oh = _rows(r, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                for ow in range(OW):
                    w0 = tab[2, 0, ow]
                    nw = tab[2, 1, ow]
                    m = init
                    mi = (d0 * H + h0) * W + w0
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            for c in range(nw):
                                w = w0 + c * dw
                                v = load(x[p, z, y, w], marker)
                                if v > m or v != v:
                                    m = v
                                    mi = (z * H + y) * W + w
                    out[p, od, oh, ow] = to_storage(m, marker)
                    if want_idx:
                        idx[p, od, oh, ow] = mi
    else:
        def kernel(x, out, idx, tab, dil, want_idx, init, marker):
            H = x.shape[2]
            W = x.shape[3]
            C = x.shape[4]
            OD = out.shape[1]
            OH = out.shape[2]
            OW = out.shape[3]
            dd = dil[0]
            dh = dil[1]
            dw = dil[2]
            for r in prange(out.shape[0] * OD * OH):
                n, od, oh = _rows(r, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                mv = np.full(C, init)
                mi = np.zeros(C, np.int64)
                for ow in range(OW):
                    w0 = tab[2, 0, ow]
                    nw = tab[2, 1, ow]
                    first = (d0 * H + h0) * W + w0
                    for ch in range(C):
                        mv[ch] = init
                        mi[ch] = first
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            for c in range(nw):
                                w = w0 + c * dw
                                pos = (z * H + y) * W + w
                                for ch in range(C):
                                    v = load(x[n, z, y, w, ch], marker)
                                    if v > mv[ch] or v != v:
                                        mv[ch] = v
                                        mi[ch] = pos
                    for ch in range(C):
                        out[n, od, oh, ow, ch] = to_storage(mv[ch], marker)
                    if want_idx:
                        for ch in range(C):
                            idx[n, od, oh, ow, ch] = mi[ch]
    return jit(kernel, parallel=parallel)


def make_sum(layout, parallel, power):
    """Average (power=False) and Lp (power=True) pooling.

    ``divmode``: 0 divide by ``dov`` (divisor_override), 1 by the taps inside the padded extent
    (count_include_pad), 2 by the taps inside the input.  For Lp the result is
    ``(sum(x**p) / incl * knumel) ** (1/p)``, PyTorch's definition.
    """
    PAR = parallel  # noqa: F841
    POWER = power  # a compile-time constant: the Lp branches vanish from the average kernels

    if layout == CF:
        def kernel(x, out, tab, dil, divmode, dov, zero, p, knumel, marker):
            OD = out.shape[1]
            OH = out.shape[2]
            OW = out.shape[3]
            dd = dil[0]
            dh = dil[1]
            dw = dil[2]
            inv = 1.0 / p
            pz = zero + p
            invz = zero + inv
            for r in prange(out.shape[0] * OD * OH):
                q, od, oh = _rows(r, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                fd = tab[0, 2, od] if divmode == 1 else nd
                fdh = fd * (tab[1, 2, oh] if divmode == 1 else nh)
                for ow in range(OW):
                    w0 = tab[2, 0, ow]
                    nw = tab[2, 1, ow]
                    s = zero
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            for c in range(nw):
                                v = zero + load(x[q, z, y, w0 + c * dw], marker)
                                if POWER:
                                    if p == 2.0:
                                        v = v * v
                                    elif p != 1.0:
                                        v = v ** pz
                                s += v
                    if POWER:
                        t = divide(s, fdh * tab[2, 2, ow]) * (zero + knumel)
                        if p == 2.0:
                            t = np.sqrt(t)
                        elif p != 1.0:
                            t = t ** invz
                        out[q, od, oh, ow] = to_storage(t, marker)
                    elif divmode == 0:
                        out[q, od, oh, ow] = to_storage(divide(s, dov), marker)
                    else:
                        div = fdh * (tab[2, 2, ow] if divmode == 1 else nw)
                        out[q, od, oh, ow] = to_storage(divide(s, div), marker)
    else:
        def kernel(x, out, tab, dil, divmode, dov, zero, p, knumel, marker):
            C = x.shape[4]
            OD = out.shape[1]
            OH = out.shape[2]
            OW = out.shape[3]
            dd = dil[0]
            dh = dil[1]
            dw = dil[2]
            inv = 1.0 / p
            pz = zero + p
            invz = zero + inv
            for r in prange(out.shape[0] * OD * OH):
                n, od, oh = _rows(r, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                fd = tab[0, 2, od] if divmode == 1 else nd
                fdh = fd * (tab[1, 2, oh] if divmode == 1 else nh)
                acc = np.full(C, zero)
                for ow in range(OW):
                    w0 = tab[2, 0, ow]
                    nw = tab[2, 1, ow]
                    for ch in range(C):
                        acc[ch] = zero
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            for c in range(nw):
                                w = w0 + c * dw
                                for ch in range(C):
                                    v = zero + load(x[n, z, y, w, ch], marker)
                                    if POWER:
                                        if p == 2.0:
                                            v = v * v
                                        elif p != 1.0:
                                            v = v ** pz
                                    acc[ch] += v
                    if POWER:
                        div = fdh * tab[2, 2, ow]
                        for ch in range(C):
                            t = divide(acc[ch], div) * (zero + knumel)
                            if p == 2.0:
                                t = np.sqrt(t)
                            elif p != 1.0:
                                t = t ** invz
                            out[n, od, oh, ow, ch] = to_storage(t, marker)
                    else:
                        if divmode == 0:
                            div = dov
                        else:
                            div = fdh * (tab[2, 2, ow] if divmode == 1 else nw)
                        for ch in range(C):
                            out[n, od, oh, ow, ch] = to_storage(divide(acc[ch], div), marker)
    return jit(kernel, parallel=parallel)
