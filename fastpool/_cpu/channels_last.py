"""Channels-last window kernels: ``(N, D, H, W, C)`` with C innermost.

One parallel task is a block of output rows ``(n, od, oh)``; each output cell reduces its window
taps (from the tables, any geometry) into a scratch vector of C accumulators with unit-stride,
vectorised loops over C, then converts into the output row.  ``IDX`` (compile-time) adds the
argmax per channel: ties keep the first tap in row-major order, NaN moves it to the last NaN.
"""
import numpy as np
from numba import prange

from ._intrinsics import load, to_storage
from .window import divide, _rows

BLOCK = 4  # output rows per parallel task


def make_cl(kind, parallel, idx):
    PAR = parallel  # in the closure so that each option set caches apart
    MAX = kind == "max"
    POWER = kind == "lp"
    IDX = idx

    def kernel(x, out, ind, tab, dil, divmode, dov, init, p, knumel, marker):
        H = x.shape[2]
        W = x.shape[3]
        C = x.shape[4]
        OD = out.shape[1]
        OH = out.shape[2]
        OW = out.shape[3]
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        nrows = out.shape[0] * OD * OH
        blk = BLOCK if PAR else max(nrows, 1)  # serial: one task, scratch allocated once
        ntask = (nrows + blk - 1) // blk
        pz = init + p
        invz = init + 1.0 / p
        knz = init + knumel
        p2 = p == 2.0
        p1 = p == 1.0
        for t in prange(ntask):
            acc = np.full(C, init)
            acci = np.zeros(C if IDX else 1, np.int64)
            for r in range(t * blk, min(nrows, (t + 1) * blk)):
                n, od, oh = _rows(r, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                xn = x[n]
                for ow in range(OW):
                    w0 = tab[2, 0, ow]
                    nw = tab[2, 1, ow]
                    first = True
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            for c in range(nw):
                                w = w0 + c * dw
                                xr = xn[z, y, w]
                                if MAX:
                                    if IDX:
                                        pos = (z * H + y) * W + w
                                        for ch in range(C):
                                            v = load(xr[ch], marker)
                                            m = acc[ch]
                                            take = first | (v > m) | (v != v)
                                            acc[ch] = v if take else m
                                            acci[ch] = pos if take else acci[ch]
                                    else:
                                        for ch in range(C):
                                            v = load(xr[ch], marker)
                                            m = acc[ch]
                                            acc[ch] = v if (first | (v > m) | (v != v)) else m
                                else:
                                    for ch in range(C):
                                        v = init + load(xr[ch], marker)
                                        if POWER:
                                            v = v * v if p2 else (v if p1 else v ** pz)
                                        acc[ch] = v if first else acc[ch] + v
                                first = False
                    orow = out[n, od, oh, ow]
                    if MAX:
                        if first:  # a window without input cells (PyTorch: -inf, first tap)
                            for ch in range(C):
                                acc[ch] = init
                                if IDX:
                                    acci[ch] = (d0 * H + h0) * W + w0
                        for ch in range(C):
                            orow[ch] = to_storage(acc[ch], marker)
                        if IDX:
                            irow = ind[n, od, oh, ow]
                            for ch in range(C):
                                irow[ch] = acci[ch]
                    else:
                        if first:
                            for ch in range(C):
                                acc[ch] = init
                        if divmode == 0:
                            div = dov
                        elif divmode == 1 or POWER:
                            div = tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow]
                        else:
                            div = nd * nh * nw
                        for ch in range(C):
                            if POWER:
                                s = divide(acc[ch], div) * knz
                                s = np.sqrt(s) if p2 else (s if p1 else s ** invz)
                                orow[ch] = to_storage(s, marker)
                            else:
                                orow[ch] = to_storage(divide(acc[ch], div), marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel)
