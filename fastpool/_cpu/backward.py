"""Backward (gradient) kernels of every pooling op, deterministic by construction.

Two patterns, both free of atomics and races, so that the result is bit-identical whatever the
thread count:

* **Exclusive ownership** (max scatter, average / Lp / adaptive average): a task owns whole
  gradient cells — one plane ``p`` in channels-first, one (n, channel block) in channels-last —
  and adds every contribution to them itself, in output order (the order PyTorch's CPU kernels
  use), into a scratch buffer of the accumulation type (float32 for float16/float32, float64 for
  float64) that is written out, rounded once, at the end of the task.  The block size only
  groups channels; a cell's sum order never depends on it.
* **Gather** (max unpooling, whose gradient is ``grad_output[indices]``): each gradient cell
  reads its own value.

Views (all C-contiguous, made by ``fastpool.backward``):
  channels-first  grad_output (P, OD, OH, OW) or flat (P, OS); input (P, D, H, W) or (P, S)
  channels-last   grad_output (N, OD, OH, OW, C) or (N, OS, C); input (N, D, H, W, C) or
                  (N, S, C)
The window tables ``tab``/``dil`` are those of the forward kernels (see ``window.py``).
``bad`` (tasks, 2) receives (1 + plane, value) for the first out-of-range index of a task, which
then writes nothing.
"""
import numpy as np
from numba import prange
from numba.extending import overload

from ._intrinsics import load, to_storage
from .._runtime import jit

CF = "cf"
CL = "cl"


def as_acc(zero, n):  # pragma: no cover - replaced by the overload inside kernels
    raise NotImplementedError


@overload(as_acc, inline="always")
def _as_acc_impl(zero, n):
    """The number ``n`` in the accumulation type of ``zero`` (float32 or float64)."""
    from numba import types
    if isinstance(zero, types.Float) and zero.bitwidth == 32:
        def impl(zero, n):
            return np.float32(n)
        return impl

    def impl(zero, n):
        return np.float64(n)
    return impl


# ----------------------------------------------------------------------------- max: scatter

def make_max_scatter(layout, parallel):
    """grad_input[idx[o]] += grad_output[o] per plane, outputs in order."""
    PAR = parallel  # noqa: F841  (in the closure so that each option set caches apart)

    if layout == CF:
        def kernel(g, idx, gin, bad, cb, zero, marker):
            P = g.shape[0]
            OS = g.shape[1]
            S = gin.shape[1]
            for p in prange(P):
                buf = np.full(S, zero)
                ok = True
                for o in range(OS):
                    i = idx[p, o]
                    if i < 0 or i >= S:
                        bad[p, 0] = 1 + p
                        bad[p, 1] = i
                        ok = False
                        break
                    buf[i] += load(g[p, o], marker)
                if ok:
                    for j in range(S):
                        gin[p, j] = to_storage(buf[j], marker)
    else:
        def kernel(g, idx, gin, bad, cb, zero, marker):
            N = g.shape[0]
            OS = g.shape[1]
            C = g.shape[2]
            S = gin.shape[1]
            nb = (C + cb - 1) // cb
            for t in prange(N * nb):
                n = t // nb
                c0 = (t - n * nb) * cb
                c1 = min(C, c0 + cb)
                w = c1 - c0
                buf = np.full(S * w, zero)
                ok = True
                for o in range(OS):
                    for c in range(c0, c1):
                        i = idx[n, o, c]
                        if i < 0 or i >= S:
                            if ok:
                                bad[t, 0] = 1 + n * C + c
                                bad[t, 1] = i
                            ok = False
                        else:
                            buf[i * w + c - c0] += load(g[n, o, c], marker)
                    if not ok:
                        break
                if ok:
                    for s in range(S):
                        for c in range(c0, c1):
                            gin[n, s, c] = to_storage(buf[s * w + c - c0], marker)
    return jit(kernel, parallel=parallel)


# ----------------------------------------------------------------------------- average and Lp

def make_sum_backward(layout, parallel, power):
    """Average (power=False) and Lp (power=True) backward, also adaptive average.

    ``divmode``: 0 divide by ``dov``; 1 by the taps inside the padded extent; 2 by the taps
    inside the input; 3 sequentially by the taps of each dim (PyTorch's adaptive average).
    For Lp (always the padded-extent divisor, as the forward) the gradient follows PyTorch's
    autograd of ``(sign(A) * relu(|A|) * K) ** (1/p)`` with ``A = avg(x**p)``: per window
    ``gA = g * (1/p) * (A*K)**(1/p - 1) * K`` (0 where ``A == 0``), spread as ``gA / divisor``
    over the window, and each cell's sum times ``p * x**(p-1)``.
    """
    PAR = parallel  # noqa: F841
    POWER = power

    if layout == CF:
        def kernel(g, x, gin, tab, dil, divmode, dov, zero, p, knumel, marker):
            P = g.shape[0]
            OD = g.shape[1]
            OH = g.shape[2]
            OW = g.shape[3]
            D = gin.shape[1]
            H = gin.shape[2]
            W = gin.shape[3]
            dd = dil[0]
            dh = dil[1]
            dw = dil[2]
            pz = as_acc(zero, p)
            e = as_acc(zero, 1.0 / p)
            one = as_acc(zero, 1)
            kz = as_acc(zero, knumel)
            for q in prange(P):
                buf = np.full(D * H * W, zero)
                for od in range(OD):
                    d0 = tab[0, 0, od]
                    nd = tab[0, 1, od]
                    for oh in range(OH):
                        h0 = tab[1, 0, oh]
                        nh = tab[1, 1, oh]
                        for ow in range(OW):
                            w0 = tab[2, 0, ow]
                            nw = tab[2, 1, ow]
                            gv = zero + load(g[q, od, oh, ow], marker)
                            if POWER:
                                s = zero
                                for a in range(nd):
                                    z = d0 + a * dd
                                    for b in range(nh):
                                        y = h0 + b * dh
                                        for c in range(nw):
                                            v = zero + load(x[q, z, y, w0 + c * dw], marker)
                                            if p == 2.0:
                                                v = v * v
                                            elif p != 1.0:
                                                v = v ** pz
                                            s += v
                                div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow])
                                A = s / div
                                if A == 0:
                                    share = zero
                                else:
                                    gy = gv * (e * (A * kz) ** (e - one))
                                    share = (gy * kz) / div
                            elif divmode == 0:
                                share = gv / as_acc(zero, dov)
                            elif divmode == 1:
                                share = gv / as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] *
                                                    tab[2, 2, ow])
                            elif divmode == 2:
                                share = gv / as_acc(zero, nd * nh * nw)
                            else:
                                share = gv / as_acc(zero, nd) / as_acc(zero, nh) / \
                                    as_acc(zero, nw)
                            for a in range(nd):
                                z = d0 + a * dd
                                for b in range(nh):
                                    row = (z * H + h0 + b * dh) * W + w0
                                    for c in range(nw):
                                        buf[row + c * dw] += share
                j = 0
                for z in range(D):
                    for y in range(H):
                        for w in range(W):
                            v = buf[j]
                            if POWER:
                                if p == 1.0:
                                    v = v * pz
                                elif p == 2.0:
                                    v = v * (pz * (zero + load(x[q, z, y, w], marker)))
                                else:
                                    v = v * (pz * (zero + load(x[q, z, y, w], marker))
                                             ** (pz - one))
                            gin[q, z, y, w] = to_storage(v, marker)
                            j += 1
    else:
        def kernel(g, x, gin, tab, dil, divmode, dov, zero, p, knumel, cb, marker):
            N = g.shape[0]
            OD = g.shape[1]
            OH = g.shape[2]
            OW = g.shape[3]
            C = g.shape[4]
            D = gin.shape[1]
            H = gin.shape[2]
            W = gin.shape[3]
            dd = dil[0]
            dh = dil[1]
            dw = dil[2]
            pz = as_acc(zero, p)
            e = as_acc(zero, 1.0 / p)
            one = as_acc(zero, 1)
            kz = as_acc(zero, knumel)
            nb = (C + cb - 1) // cb
            for t in prange(N * nb):
                n = t // nb
                c0 = (t - n * nb) * cb
                c1 = min(C, c0 + cb)
                wb = c1 - c0
                buf = np.full(D * H * W * wb, zero)
                sh = np.full(wb, zero)
                for od in range(OD):
                    d0 = tab[0, 0, od]
                    nd = tab[0, 1, od]
                    for oh in range(OH):
                        h0 = tab[1, 0, oh]
                        nh = tab[1, 1, oh]
                        for ow in range(OW):
                            w0 = tab[2, 0, ow]
                            nw = tab[2, 1, ow]
                            if POWER:
                                for c in range(wb):
                                    sh[c] = zero
                                for a in range(nd):
                                    z = d0 + a * dd
                                    for b in range(nh):
                                        y = h0 + b * dh
                                        for k in range(nw):
                                            w = w0 + k * dw
                                            for c in range(wb):
                                                v = zero + load(x[n, z, y, w, c0 + c], marker)
                                                if p == 2.0:
                                                    v = v * v
                                                elif p != 1.0:
                                                    v = v ** pz
                                                sh[c] += v
                                div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow])
                                for c in range(wb):
                                    A = sh[c] / div
                                    if A == 0:
                                        sh[c] = zero
                                    else:
                                        gv = zero + load(g[n, od, oh, ow, c0 + c], marker)
                                        gy = gv * (e * (A * kz) ** (e - one))
                                        sh[c] = (gy * kz) / div
                            else:
                                if divmode == 0:
                                    div = as_acc(zero, dov)
                                elif divmode == 1:
                                    div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] *
                                                 tab[2, 2, ow])
                                else:
                                    div = as_acc(zero, nd * nh * nw)
                                if divmode == 3:
                                    fd = as_acc(zero, nd)
                                    fh = as_acc(zero, nh)
                                    fw = as_acc(zero, nw)
                                    for c in range(wb):
                                        sh[c] = (zero + load(g[n, od, oh, ow, c0 + c],
                                                             marker)) / fd / fh / fw
                                else:
                                    for c in range(wb):
                                        sh[c] = (zero + load(g[n, od, oh, ow, c0 + c],
                                                             marker)) / div
                            for a in range(nd):
                                z = d0 + a * dd
                                for b in range(nh):
                                    y = h0 + b * dh
                                    for k in range(nw):
                                        base = ((z * H + y) * W + w0 + k * dw) * wb
                                        for c in range(wb):
                                            buf[base + c] += sh[c]
                j = 0
                for z in range(D):
                    for y in range(H):
                        for w in range(W):
                            for c in range(wb):
                                v = buf[j]
                                if POWER:
                                    if p == 1.0:
                                        v = v * pz
                                    elif p == 2.0:
                                        v = v * (pz * (zero + load(x[n, z, y, w, c0 + c],
                                                                   marker)))
                                    else:
                                        v = v * (pz * (zero + load(x[n, z, y, w, c0 + c],
                                                                   marker)) ** (pz - one))
                                gin[n, z, y, w, c0 + c] = to_storage(v, marker)
                                j += 1
    return jit(kernel, parallel=parallel)


# ----------------------------------------------------------------------------- unpool: gather

def make_unpool_backward(layout, parallel):
    """grad_input[i] = grad_output[idx[i]] per plane (a gather: no accumulation)."""
    PAR = parallel  # noqa: F841

    if layout == CF:
        def kernel(g, idx, gin, bad):
            P = gin.shape[0]
            S = gin.shape[1]
            OS = g.shape[1]
            for p in prange(P):
                for i in range(S):
                    j = idx[p, i]
                    if j < 0 or j >= OS:
                        if bad[p, 0] == 0:
                            bad[p, 0] = 1 + p
                            bad[p, 1] = j
                    else:
                        gin[p, i] = g[p, j]
    else:
        def kernel(g, idx, gin, bad):
            N = gin.shape[0]
            S = gin.shape[1]
            C = gin.shape[2]
            OS = g.shape[1]
            for n in prange(N):
                for i in range(S):
                    for c in range(C):
                        j = idx[n, i, c]
                        if j < 0 or j >= OS:
                            if bad[n, 0] == 0:
                                bad[n, 0] = 1 + n * C + c
                                bad[n, 1] = j
                        else:
                            gin[n, i, c] = g[n, j, c]
    return jit(kernel, parallel=parallel)
