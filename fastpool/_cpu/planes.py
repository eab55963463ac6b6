"""Kernels whose geometry differs per (n, c) plane: fractional max pooling and max unpooling.

They take logical ``(N, C, D, H, W)`` views of any strides (both memory layouts arrive as
views), and run in parallel over planes.
"""
from numba import prange

from ._intrinsics import load, to_storage
from .._runtime import jit


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
    """Scatter ``x`` into zeroed ``out`` at per-plane flat ``idx``; later cells win ties.

    ``bad`` (planes, 2) receives (1, index) for each plane holding an out-of-range index;
    nothing is written to such a plane.
    """

    def kernel(x, idx, out, bad):
        N = x.shape[0]
        C = x.shape[1]
        ID = x.shape[2]
        IH = x.shape[3]
        IW = x.shape[4]
        OH = out.shape[3]
        OW = out.shape[4]
        total = out.shape[2] * OH * OW
        for pl in prange(N * C):
            n = pl // C
            c = pl - n * C
            ok = True
            for z in range(ID):
                for y in range(IH):
                    for w in range(IW):
                        i = idx[n, c, z, y, w]
                        if (i < 0 or i >= total) and ok:
                            bad[pl, 0] = 1
                            bad[pl, 1] = i
                            ok = False
            if ok:
                for z in range(ID):
                    for y in range(IH):
                        for w in range(IW):
                            i = idx[n, c, z, y, w]
                            oz = i // (OH * OW)
                            r = i - oz * (OH * OW)
                            oy = r // OW
                            out[n, c, oz, oy, r - oy * OW] = x[n, c, z, y, w]
    return jit(kernel, parallel=parallel)
