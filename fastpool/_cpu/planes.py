"""Kernels whose geometry differs per (n, c) plane: fractional max pooling and max unpooling.

Fractional pooling takes logical ``(N, C, D, H, W)`` views of any strides (both memory layouts
arrive as views); unpooling flat views of either layout.  Both run in parallel over planes
(unpooling channels-last: over images).
"""
import numpy as np
from numba import prange

from ._intrinsics import load, to_storage, new_full, flat_view
from ._simd import stream_lines, sfence, vscatter_set, RING_LANES
from .._dtypes import PLAIN
from .._runtime import jit

U = np.uint64  # (an unsigned index: no negative-index handling, which blocks vectorisation)


def make_fractional_max(layout, parallel):
    """``starts`` is (N, C, 3, maxout): each window's first cell per plane and dim."""

    def kernel(x, out, idx, starts, kd, kh, kw, want_idx, init, marker):
        N = out.shape[0]
        C = out.shape[1]
        OD = out.shape[2]
        OH = out.shape[3]
        OW = out.shape[4]
        H = x.shape[3]
        W = x.shape[4]
        for pl in prange(N * C):
            n = pl // C
            c = pl - n * C
            for od in range(OD):
                d0 = starts[n, c, 0, od]
                for oh in range(OH):
                    h0 = starts[n, c, 1, oh]
                    for ow in range(OW):
                        w0 = starts[n, c, 2, ow]
                        m = init
                        mi = (d0 * H + h0) * W + w0
                        for z in range(d0, d0 + kd):
                            for y in range(h0, h0 + kh):
                                for w in range(w0, w0 + kw):
                                    v = load(x[n, c, z, y, w], marker)
                                    if v > m or v != v:
                                        m = v
                                        mi = (z * H + y) * W + w
                        out[n, c, od, oh, ow] = to_storage(m, marker)
                        if want_idx:
                            idx[n, c, od, oh, ow] = mi
    return jit(kernel, parallel=parallel)


def make_unpool(layout, parallel):
    """Max unpooling: ``out`` (zeroed here) gets ``x`` at each plane's flat ``idx``; later
    cells win ties.  Views are C-contiguous and flat per plane: channels-first ``x``, ``idx``
    ``(P, S)`` and ``out`` ``(P, T)``; channels-last ``(N, S, C)`` and ``(N, T, C)``.  The
    output cell of index ``i`` is then ``p * T + i`` or ``(n * T + i) * C + c``: no division.

    ``bad`` (planes, 2) receives (1, index) for the first out-of-range index of each plane
    holding one (channels-last: the image's planes then stay zero).  ``nt`` (channels-first,
    float): each plane is built in scratch and streamed out over its whole lines.  ``zero``:
    0 in ``out``'s type.  Channels-last stores ``RING_LANES`` channels at a time
    (``_simd.vscatter_set``: one scatter)."""
    if layout == "cf":
        def kernel(x, idx, out, bad, blk, nt, zero):
            P = x.shape[0]
            S = x.shape[1]
            T = out.shape[1]
            for t in prange((P + blk - 1) // blk):
                buf = new_full(T if nt else 1, zero)
                of = flat_view(out)
                for p in range(t * blk, min(P, (t + 1) * blk)):
                    miss = 0
                    for s in range(S):
                        miss += 1 if U(idx[p, s]) >= U(T) else 0
                    if miss:
                        for s in range(S):
                            if U(idx[p, s]) >= U(T):
                                bad[p, 0] = 1
                                bad[p, 1] = idx[p, s]
                                break
                    if nt:
                        if not miss:
                            for s in range(S):
                                buf[U(idx[p, s])] = x[p, s]
                        if not stream_lines(buf, 0, of, p * T, T, PLAIN):
                            for j in range(T):
                                of[U(p * T + j)] = buf[j]
                        if not miss:
                            for s in range(S):
                                buf[U(idx[p, s])] = zero
                    else:
                        for j in range(T):
                            out[p, j] = zero
                        if not miss:
                            for s in range(S):
                                out[p, U(idx[p, s])] = x[p, s]
                if nt:
                    sfence()
    else:
        def kernel(x, idx, out, bad, blk, nt, zero):
            N = x.shape[0]
            S = x.shape[1]
            C = x.shape[2]
            T = out.shape[1]
            for n in prange(N):
                xf = flat_view(x[max(n, 0)])
                jf = flat_view(idx[max(n, 0)])
                miss = 0
                for j in range(S * C):
                    miss += 1 if U(jf[j]) >= U(T) else 0
                if miss:
                    for c in range(C):
                        for s in range(S):
                            if U(jf[U(s * C + c)]) >= U(T):
                                bad[n * C + c, 0] = 1
                                bad[n * C + c, 1] = jf[U(s * C + c)]
                                break
                of = flat_view(out[max(n, 0)])
                for j in range(T * C):
                    of[j] = zero
                if miss:
                    continue
                for s in range(S):
                    cv = 0
                    while cv + RING_LANES <= C:
                        vscatter_set(of, jf, s * C + cv, xf, s * C + cv, C, cv, T)
                        cv += RING_LANES
                    for c in range(cv, C):
                        of[U(jf[U(s * C + c)] * C + c)] = xf[U(s * C + c)]
    return jit(kernel, parallel=parallel)
