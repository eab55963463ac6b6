"""Serial kernels for small calls with regular windows, compiled once for every window size.

Below the parallel threshold a call's time is mostly its fixed cost, and a kernel specialised on
the window (``separable.make_sep``) costs 2-3 s to compile on its first call in a fresh process.
These kernels take the window along W (``KW`` taps at stride ``SW``, dilation ``dil[2]``, from
column ``-pw``) and every (D, H) geometry from the tables at run time, so one compiled kernel per
(kind, layout, dtype) serves every window: ~1.4-1.6 s to compile.

For one output row the window's input rows are reduced into a scratch row (the vertical pass),
then each tap along W is applied to every output cell of the row in turn (the horizontal pass):
all inner loops run over whole rows, unit-stride along W*C, so the compiler vectorises them.
The scratch row carries ``init`` (max: the lowest value, sums: 0) on both sides, so that every
window reduces its KW columns, the padding neutral; averages then divide by each column's own
tap count from the tables.  Max reduces into a second scratch row instead of in place: a
conditional store would compile to masked vector stores, which are slow on some CPUs.  Scratch
indices are unsigned: with signed ones the negative-index handling stops vectorisation.

Results are those of ``make_sep``: max keeps the first maximum and propagates NaN, sums add the
window's rows first (in window order), then its columns.
"""
import numpy as np

from ._intrinsics import load, to_storage, new_full, flat_view
from .window import divide, U, tpow, lp_share


def make_small(kind, parallel, channels_last):
    assert not parallel, "serial kernels only"
    MAX = kind == "max"
    POWER = kind == "lp"
    CLAST = channels_last

    def kernel(x, out, tab, dil, KW, SW, pw, divmode, dov, init, p, knumel, C, marker):
        WC = x.shape[3]  # W * C for channels-last
        OD = out.shape[1]
        OH = out.shape[2]
        Cn = max(C, 1) if CLAST else 1  # (a compile-time 1 for channels-first)
        OW = out.shape[3] // Cn
        W = WC // Cn
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        pz = init + p
        invz = init + 1.0 / p
        knz = init + knumel
        one = init + 1  # (tpow's 1)
        # scratch rows: column w at PL + w, padding up to the last window's last tap
        PL = max(pw, 0)
        RL = (PL + max((OW - 1) * SW - pw + (KW - 1) * dw + 1, W)) * Cn
        OC = OW * Cn
        tmp = new_full(2 * RL, init)  # two rows, at 0 and RL (max alternates)
        acc = new_full(2 * OC, init)  # the output row being reduced (two for max)
        for q in range(out.shape[0]):
            for od in range(OD):
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                for oh in range(OH):
                    h0 = tab[1, 0, oh]
                    nh = tab[1, 1, oh]
                    # vertical pass into the scratch row at s
                    s = 0
                    for i in range(WC):
                        tmp[U(PL * Cn + i)] = init
                    for a in range(nd):
                        for b in range(nh):
                            z = d0 + a * dd
                            y = h0 + b * dh
                            if MAX:
                                t = RL - s
                                for i in range(WC):
                                    v = load(x[q, z, y, U(i)], marker)
                                    m = tmp[U(s + PL * Cn + i)]
                                    tmp[U(t + PL * Cn + i)] = v if ((v > m) | (v != v)) else m
                                s = t
                            else:
                                for i in range(WC):
                                    v = init + load(x[q, z, y, U(i)], marker)
                                    if POWER:
                                        v = v if p == 1.0 else tpow(v, pz, one)
                                    tmp[U(PL * Cn + i)] += v
                    fdh = tab[0, 2, od] * tab[1, 2, oh] if divmode == 1 else nd * nh
                    # horizontal pass: tap c of every cell, into acc[e:e + OC]
                    e = 0
                    for c in range(KW):
                        f = OC - e if MAX and c > 0 else e
                        cb = s + c * dw * Cn
                        for ow in range(OW):
                            for ch in range(Cn):
                                v = tmp[U(cb + ow * SW * Cn + ch)]
                                if c == 0:
                                    acc[U(f + ow * Cn + ch)] = v
                                elif MAX:
                                    m = acc[U(e + ow * Cn + ch)]
                                    acc[U(f + ow * Cn + ch)] = v if ((v > m) | (v != v)) else m
                                else:
                                    acc[U(ow * Cn + ch)] += v
                        e = f
                    for ow in range(OW):
                        if not MAX:
                            if divmode == 0:
                                div = dov
                            else:
                                div = fdh * (tab[2, 2, ow] if divmode == 1 else tab[2, 1, ow])
                        for ch in range(Cn):
                            m = acc[U(e + ow * Cn + ch)]
                            if MAX:
                                out[q, od, oh, ow * Cn + ch] = to_storage(m, marker)
                            elif POWER:
                                r = divide(m, div) * knz
                                out[q, od, oh, ow * Cn + ch] = to_storage(
                                    np.sqrt(r) if p == 2.0 else (r if p == 1.0 else r ** invz),
                                    marker)
                            else:
                                out[q, od, oh, ow * Cn + ch] = to_storage(divide(m, div), marker)
    from .._runtime import jit
    return jit(kernel)


def make_small_sum_backward(layout, parallel, power):
    """Average (``power`` False; also adaptive average) and Lp backward for small calls, every
    geometry from the tables: ``backward.make_sum_backward``'s sums in its order, in little
    code (its serial kernel took 7-9 s to compile in a fresh process, this one ~1.5 s).

    Per plane, each output row's shares are spread along W into a scratch row ``T`` (windows in
    ascending order, from +0), and ``T`` is added into every input row the window covers, into
    a plane of sums started at +0 (output rows in ascending order); the plane is then written
    (Lp: times ``p * x ** (p - 1)``).  Arrays are (planes, D, H, W) channels-first and (N, D, H,
    W * C) channels-last, ``C`` channels innermost.
    """
    assert not parallel, "serial kernels only"
    POWER = power
    CLAST = layout == "cl"
    from .backward import as_acc

    def kernel(g, x, gin, tab, dil, divmode, dov, zero, p, knumel, C, marker):
        OD = g.shape[1]
        OH = g.shape[2]
        Cn = max(C, 1) if CLAST else 1  # (a compile-time 1 for channels-first)
        OW = g.shape[3] // Cn
        D = gin.shape[1]
        H = gin.shape[2]
        WC = gin.shape[3]
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        pz = as_acc(zero, p)
        e = as_acc(zero, 1.0 / p)
        one = as_acc(zero, 1)
        kz = as_acc(zero, knumel)
        dz = as_acc(zero, dov)
        S = new_full(D * H * WC, zero)  # the plane's sums
        T = new_full(WC, zero)  # one output row's shares, spread along W
        sh = new_full(Cn, zero)  # one output cell's shares
        for q in range(g.shape[0]):
            for i in range(D * H * WC):
                S[U(i)] = zero
            for od in range(OD):
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                for oh in range(OH):
                    h0 = tab[1, 0, oh]
                    nh = tab[1, 1, oh]
                    for i in range(WC):
                        T[U(i)] = zero
                    for ow in range(OW):
                        w0 = tab[2, 0, ow]
                        nw = tab[2, 1, ow]
                        if POWER:  # PyTorch's autograd of the Lp forward, per window
                            div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow])
                            for ch in range(Cn):
                                s = zero
                                for a in range(nd):
                                    for b in range(nh):
                                        for c in range(nw):
                                            v = zero + load(x[q, d0 + a * dd, h0 + b * dh,
                                                              (w0 + c * dw) * Cn + ch], marker)
                                            if p != 1.0:  # (tpow: v * v for p = 2)
                                                v = tpow(v, pz, one)
                                            s += v
                                gv = zero + load(g[q, od, oh, ow * Cn + ch], marker)
                                sh[U(ch)] = lp_share(gv, s / div, div, e, kz, zero, one)
                        elif divmode == 3:  # adaptive: by each dim's extent in turn
                            for ch in range(Cn):
                                sh[U(ch)] = (zero + load(g[q, od, oh, ow * Cn + ch], marker)) / \
                                    as_acc(zero, nd) / as_acc(zero, nh) / as_acc(zero, nw)
                        else:
                            if divmode == 0:
                                div = dz
                            elif divmode == 1:
                                div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow])
                            else:
                                div = as_acc(zero, nd * nh * nw)
                            for ch in range(Cn):
                                sh[U(ch)] = (zero + load(g[q, od, oh, ow * Cn + ch], marker)) / div
                        for c in range(nw):
                            cb = (w0 + c * dw) * Cn
                            for ch in range(Cn):
                                T[U(cb + ch)] += sh[U(ch)]
                    for a in range(nd):
                        for b in range(nh):
                            rb = ((d0 + a * dd) * H + h0 + b * dh) * WC
                            for i in range(WC):
                                S[U(rb + i)] += T[U(i)]
            for z in range(D):
                for y in range(H):
                    rb = (z * H + y) * WC
                    for i in range(WC):
                        v = S[U(rb + i)]
                        if POWER:
                            if p == 1.0:
                                v = v * pz
                            elif p == 2.0:
                                v = v * (pz * (zero + load(x[q, z, y, i], marker)))
                            else:
                                v = v * (pz * tpow(zero + load(x[q, z, y, i], marker),
                                                   pz - one, one))
                        gin[q, z, y, i] = to_storage(v, marker)
    from .._runtime import jit
    return jit(kernel)


def make_small_max(layout, parallel, backward=False):
    """Channels-first max with indices for small calls, every geometry from the tables:
    ``window.make_max``'s table-driven rows (and its backward mode: the gradient added at each
    window's argmax, per plane, without indices) in little code, with its arguments.

    Vertical pass: each column's first max / last NaN over the window's rows, in order, with
    its flat position; horizontal pass: each cell merges its columns (a larger value, an equal
    one at a smaller position, or a NaN at a larger position or over a non-NaN).
    """
    assert not parallel, "serial kernels only"
    BWD = backward

    def kernel(x, out, idx, tab, dil, owlo, owhi, pw, init, zero, marker):
        H = x.shape[2]
        W = x.shape[3]
        OD = out.shape[1]
        OH = out.shape[2]
        OW = out.shape[3]
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        S = x.shape[1] * H * W
        tv = new_full(W, init)
        ti = new_full(W, 0)  # (int64 positions)
        if BWD:
            buf = new_full(S, zero)  # the plane's gradient sums
            cp = new_full(OW, 0)
        for q in range(out.shape[0]):
            for od in range(OD):
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                for oh in range(OH):
                    h0 = tab[1, 0, oh]
                    nh = tab[1, 1, oh]
                    base0 = (d0 * H + h0) * W
                    if nd == 0 or nh == 0:  # no input row (PyTorch-style padding, dilation)
                        for w in range(W):
                            tv[U(w)] = init
                            ti[U(w)] = base0 + w
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            rb = (z * H + y) * W
                            first = a == 0 and b == 0
                            for w in range(W):
                                v = load(x[q, z, y, w], marker)
                                m = tv[U(w)]
                                take = first | (v > m) | (v != v)
                                tv[U(w)] = v if take else m
                                ti[U(w)] = (rb + w) if take else ti[U(w)]
                    for ow in range(OW):
                        w0 = tab[2, 0, ow]
                        m = init
                        mi = base0 + w0
                        for c in range(tab[2, 1, ow]):
                            w = w0 + c * dw
                            v = tv[U(w)]
                            ci = ti[U(w)]
                            take = (v > m) | ((v == m) & (ci < mi)) | \
                                ((v != v) & ((m == m) | (ci > mi)))
                            m = v if take else m
                            mi = ci if take else mi
                        if BWD:
                            cp[U(ow)] = mi
                        else:
                            out[q, od, oh, ow] = to_storage(m, marker)
                            idx[q, od, oh, ow] = mi
                    if BWD:  # the row's gradients at its argmax cells, outputs in order
                        # (a window without an input cell: at the forward's index, PyTorch's,
                        # when it lies in the plane, as PyTorch's autograd; see window.make_max)
                        for ow in range(OW):
                            c = cp[U(ow)]
                            if c >= 0 and c < S:
                                buf[U(c)] += zero + load(out[q, od, oh, ow], marker)
            if BWD:  # the plane written out (rounded once), the sums zeroed again
                gq = flat_view(idx[max(q, 0)])
                for j in range(S):
                    gq[U(j)] = to_storage(buf[U(j)], marker)
                    buf[U(j)] = zero
    from .._runtime import jit
    return jit(kernel)
