"""Channels-first window kernels without indices: a vertical pass, then a horizontal pass.

For one output row ``(plane, od, oh)`` the rows of its window (the (z, y) taps) are reduced
into a scratch row ``tmp[0:W]`` with unit-stride, vectorisable loops; the horizontal pass then
reduces ``tmp`` over each window's W taps.  Every input row is read once per output row that
uses it, from cache, so the kernels run close to the memory floor.

The horizontal pass is specialised on ``(KW, SW, DW)`` as compile-time constants for the shapes
that dominate real use (``KW = 0`` means runtime windows from the table everywhere).  Rows
are handed out in blocks so that the scratch row is allocated once per block.

``kind``: "max" (NaN-propagating, first max), "avg" (divisor rules as in ``window.make_sum``),
"lp" (PyTorch's Lp definition).
"""
import numpy as np
from numba import prange

from ._intrinsics import load, to_storage
from .window import divide, _rows

BLOCK = 8  # output rows per parallel task


def make_sep(kind, parallel, KW, SW, DW):
    PAR = parallel  # noqa: F841  (in the closure so that each option set caches apart)
    MAX = kind == "max"
    POWER = kind == "lp"
    SPEC = KW > 0

    def kernel(x, out, tab, dil, owlo, owhi, pw, divmode, dov, init, p, knumel, marker):
        W = x.shape[3]
        OD = out.shape[1]
        OH = out.shape[2]
        OW = out.shape[3]
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        nrows = out.shape[0] * OD * OH
        ntask = (nrows + BLOCK - 1) // BLOCK
        pz = init + p
        invz = init + 1.0 / p
        knz = init + knumel
        for t in prange(ntask):
            tmp = np.full(W, init)
            hv = np.full(OW, init)
            for r in range(t * BLOCK, min(nrows, (t + 1) * BLOCK)):
                q, od, oh = _rows(r, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                # vertical pass: tmp[w] = reduce over the window's (z, y) rows
                for a in range(nd):
                    z = d0 + a * dd
                    for b in range(nh):
                        y = h0 + b * dh
                        first = a == 0 and b == 0
                        for w in range(W):
                            if MAX:
                                v = load(x[q, z, y, w], marker)
                                m = tmp[w]
                                tmp[w] = v if (first or v > m or v != v) else m
                            else:
                                v = init + load(x[q, z, y, w], marker)
                                if POWER:
                                    if p == 2.0:
                                        v = v * v
                                    elif p != 1.0:
                                        v = v ** pz
                                tmp[w] = v if first else tmp[w] + v
                # horizontal pass into hv[ow]: specialised interior, table-driven edges
                lo = owlo if SPEC else OW
                hi = owhi if SPEC else OW
                for ow in range(lo, hi):
                    w0 = ow * SW - pw
                    m = tmp[w0]
                    for c in range(1, KW):
                        v = tmp[w0 + c * DW]
                        if MAX:
                            m = v if (v > m or v != v) else m
                        else:
                            m += v
                    hv[ow] = m
                for ow in range(OW):
                    if ow >= lo and ow < hi:
                        continue
                    w0 = tab[2, 0, ow]
                    m = init
                    for c in range(tab[2, 1, ow]):
                        v = tmp[w0 + c * dw]
                        if MAX:
                            m = v if (v > m or v != v) else m
                        else:
                            m += v
                    hv[ow] = m
                # finish: divisors and roots, conversion to the stored type
                if MAX:
                    for ow in range(OW):
                        out[q, od, oh, ow] = to_storage(hv[ow], marker)
                else:
                    if divmode == 1:
                        fdh = tab[0, 2, od] * tab[1, 2, oh]
                    else:
                        fdh = nd * nh
                    for ow in range(OW):
                        if POWER:
                            s = divide(hv[ow], fdh * tab[2, 2, ow]) * knz
                            if p == 2.0:
                                s = np.sqrt(s)
                            elif p != 1.0:
                                s = s ** invz
                            out[q, od, oh, ow] = to_storage(s, marker)
                        elif divmode == 0:
                            out[q, od, oh, ow] = to_storage(divide(hv[ow], dov), marker)
                        elif divmode == 1:
                            out[q, od, oh, ow] = to_storage(divide(hv[ow], fdh * tab[2, 2, ow]),
                                                            marker)
                        else:
                            out[q, od, oh, ow] = to_storage(divide(hv[ow], fdh * tab[2, 1, ow]),
                                                            marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel)
