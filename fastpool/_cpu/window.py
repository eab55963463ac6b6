"""Channels-first max pooling with indices, and the helpers every window kernel shares.

Every kernel works on the canonical rank-3 problem: channels-first ``(planes, D, H, W)`` or
channels-last ``(N, D, H, W, C)``.  The window geometry arrives as ``tab``, an int64 array of
shape (3 dims, 3 rows, out): row 0 the input position of each window's first in-range tap,
row 1 the number of in-range taps, row 2 the taps inside the padded extent.  Taps along a dim
are ``dil[dim]`` apart.  Adaptive pooling uses the same kernels with adaptive tables.

Kernels without indices are in ``separable.py`` (channels-first) and ``channels_last.py``.
The float16 handling and the element types come from the argument types (see ``_dtypes``).
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


@overload(divide)
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


def make_max(layout, parallel, KD, KH, KW, SW):
    """Channels-first max with argmax: one scan of each window in row-major order.

    Interior windows of hot shapes run with the window ``(KD, KH, KW)`` and stride ``SW`` as
    compile-time constants (``KW = 0``: table-driven everywhere).
    """
    PAR = parallel  # noqa: F841  (in the closure so that each option set caches apart)
    SPEC = KW > 0

    def kernel(x, out, idx, tab, dil, owlo, owhi, pw, init, marker):
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
            xp = x[p]
            orow = out[p, od, oh]
            irow = idx[p, od, oh]
            lo = owlo if (SPEC and nd == KD and nh == KH) else OW
            hi = owhi if (SPEC and nd == KD and nh == KH) else OW
            if hi > lo:
                for ow in range(lo, hi):
                    w0 = ow * SW - pw
                    m = load(xp[d0, h0, w0], marker)
                    mi = (d0 * H + h0) * W + w0
                    for i in range(1, KD * KH * KW):
                        a = i // (KH * KW)
                        b = (i // KW) % KH
                        c = i % KW
                        z = d0 + a * dd
                        y = h0 + b * dh
                        v = load(xp[z, y, w0 + c], marker)
                        take = (v > m) | (v != v)
                        m = v if take else m
                        mi = ((z * H + y) * W + w0 + c) if take else mi
                    orow[ow] = to_storage(m, marker)
                    irow[ow] = mi
            for seg in range(2):
                for ow in range(0 if seg == 0 else hi, lo if seg == 0 else OW):
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
                                v = load(xp[z, y, w], marker)
                                take = (v > m) | (v != v)
                                m = v if take else m
                                mi = ((z * H + y) * W + w) if take else mi
                    orow[ow] = to_storage(m, marker)
                    irow[ow] = mi
    return jit(kernel, parallel=parallel)
