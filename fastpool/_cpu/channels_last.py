"""Channels-last max pooling with indices: ``(N, D, H, W, C)`` with C innermost.

One parallel task is a block of output rows ``(n, od, oh)``; each output cell scans its window
taps (from the tables, any geometry) in row-major order, updating C running maxima and their
positions with unit-stride, vectorised loops over C: ties keep the first tap, NaN moves the
index to the last NaN.  Channels-last pooling without indices runs the separable kernels.
"""
import numpy as np
from numba import prange

from ._intrinsics import load, to_storage, new_full, new_zeros
from .window import _rows

BLOCK = 4  # fewest output rows per parallel task
TASKS = 512  # parallel tasks per call, at most (enough to balance the threads)


def make_cl(kind, parallel, lean=False):
    """``lean`` (serial only): without the int32-position loops, half the code (a first call
    compiles in 1.4-1.9 s instead of 2.6-3.0 s, and runs small calls 1.1-1.5x slower): small
    calls start on it and move on to the full kernel (see ``functional.SPECIALISE_AFTER``)."""
    PAR = parallel  # serial variants run all rows as one task
    LEAN = lean
    assert kind == "max" and not (lean and parallel)

    def kernel(x, out, ind, tab, dil, init, marker):
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
        # parallel: at most ~TASKS tasks of at least BLOCK rows (scratch is allocated per task);
        # serial: one task, scratch allocated once
        blk = max(BLOCK, nrows // TASKS) if PAR else max(nrows, 1)
        ntask = (nrows + blk - 1) // blk
        small = not LEAN and H * W * x.shape[1] < 2 ** 31  # positions fit int32
        for t in prange(ntask):
            acc = new_full(C, init)
            acci = new_zeros(C, np.int64)
            rel = new_zeros(C, np.int32)  # position relative to the window's first tap
            for r in range(t * blk, min(nrows, (t + 1) * blk)):
                n, od, oh = _rows(r, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                for ow in range(OW):
                    w0 = tab[2, 0, ow]
                    nw = tab[2, 1, ow]
                    # a window without input cells keeps PyTorch's -inf and first-tap index
                    first_pos = (d0 * H + h0) * W + w0
                    if nd == 0 or nh == 0 or nw == 0:
                        for ch in range(C):
                            out[n, od, oh, ow, ch] = to_storage(init, marker)
                            ind[n, od, oh, ow, ch] = first_pos
                        continue
                    if small:  # int32 positions: the loops over C run at the values' width
                        for a in range(nd):
                            z = max(d0 + a * dd, 0)
                            for b in range(nh):
                                y = max(h0 + b * dh, 0)
                                for c in range(nw):
                                    w = max(w0 + c * dw, 0)
                                    p = np.int32((z * H + y) * W + w - first_pos)
                                    if a == 0 and b == 0 and c == 0:
                                        for ch in range(C):
                                            acc[ch] = load(x[n, z, y, w, ch], marker)
                                            rel[ch] = p
                                    else:
                                        for ch in range(C):
                                            # (both running values loaded before either
                                            # store: the loop then vectorises)
                                            v = load(x[n, z, y, w, ch], marker)
                                            m = acc[ch]
                                            i = rel[ch]
                                            take = (v > m) | (v != v)
                                            acc[ch] = v if take else m
                                            rel[ch] = p if take else i
                        for ch in range(C):
                            out[n, od, oh, ow, ch] = to_storage(acc[ch], marker)
                            ind[n, od, oh, ow, ch] = first_pos + rel[ch]
                        continue
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            for c in range(nw):
                                w = w0 + c * dw
                                pos = (z * H + y) * W + w
                                first = a == 0 and b == 0 and c == 0
                                for ch in range(C):  # direct indexing: no per-tap views
                                    v = load(x[n, z, y, w, ch], marker)
                                    m = acc[ch]
                                    take = first | (v > m) | (v != v)
                                    acc[ch] = v if take else m
                                    acci[ch] = pos if take else acci[ch]
                    for ch in range(C):
                        out[n, od, oh, ow, ch] = to_storage(acc[ch], marker)
                        ind[n, od, oh, ow, ch] = acci[ch]
    from .._runtime import jit
    return jit(kernel, parallel=parallel)
