"""Backward (gradient) kernels of every pooling op, deterministic by construction.

No atomics and no races, and every gradient cell sums its contributions in one fixed order (the
order of the outputs, as PyTorch's CPU kernels), so the result is bit-identical whatever the
thread count or the task sizes:

* **Exclusive ownership** (``make_max_scatter``, ``make_max_ring``, ``make_max_recompute``):
  a task owns whole gradient planes (channels-first: a block of planes; channels-last: one n
  and a block of channels) and adds every contribution to them itself, in output order, into a
  scratch buffer of the accumulation type (float32 for float16/float32, float64 for float64)
  written out, rounded once, at the end (``make_max_ring``: a ring of rows, each written out
  once no later output row can reach it).
* **Gather** (``make_max_gather``, ``make_sum_backward``, ``make_global_backward``,
  ``make_unpool_backward``): each gradient cell reads the windows covering it, listed per dim in
  ascending order by ``inv``/``ilist`` (``inv[dim, 0/1, x]``: start and count of input position
  ``x``'s covering output positions in ``ilist[dim]``).  The average kernels first spread each
  output row's shares along W into a row of ``T`` (separable), then gather whole rows.

Views (C-contiguous, made by ``fastpool.backward``): channels-first grad_output ``(P, OD, OH,
OW)``, input ``(P, D, H, W)`` (flat ``(P, OS)``/``(P, S)`` for the scatter kernels);
channels-last ``(N, OD, OH, OW, C)``, ``(N, D, H, W, C)`` (flat ``(N, OS, C)``/``(N, S, C)``).
The window tables ``tab``/``dil`` are those of the forward kernels (see ``window.py``).
``bad`` (tasks, 2) receives (1 + plane, value) for the first out-of-range index of a task.

``nt`` (gradients too large to stay in the cache) selects non-temporal stores, which write a
line without reading it first: channels-first average/Lp rows, the max scatter (float32/
float64, both layouts) and the tiled max build each task's run of gin in scratch and stream it
out as its rows or planes are done (``_simd.stream_upto``); the channels-last max without
indices and average stream each finished row over its whole lines (``stream_lines``,
``stream_sum``).  The adaptive average takes the choice at compile time (``stream``).

Indices that are not plain ``range`` variables are cast to unsigned (``U``) before indexing:
Numba's negative-index wraparound on a signed index otherwise blocks vectorisation.
"""
import numpy as np
from numba import prange, types
from numba.extending import intrinsic, overload

from ._intrinsics import (load, to_storage, new_empty, flat_view, new_full, new_zeros,
                          lined_full)
from ._simd import (prefetch, line_cells, sfence, stream_lines, stream_sum, stream_upto,
                    vcol1_sum, vcol2_sum, vcol_pair, vdiv, vector_lanes, vspread, vring_add,
                    vpair_cells, RING_LANES)
from .._runtime import jit
from .window import CF, CL, U, tpow, lp_share, _int64s, _ROW3


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


@intrinsic
def cl_task(typingctx, t, nb, blk, C):
    """Channels-last task ``t`` of ``nb`` per image (all four >= 0, ``nb`` > 0): (n, first
    channel, channels) = (t // nb, (t % nb) * blk, min(C, c0 + blk) - c0).  An intrinsic: as
    an inlined jitted helper it took 75-130 ms of a fresh process's first call."""
    if not all(isinstance(a, types.Integer) for a in (t, nb, blk, C)):
        return None

    def codegen(context, builder, sig, args):
        tt, nn, bb, cc = _int64s(context, builder, sig, args)
        n = builder.sdiv(tt, nn)
        c0 = builder.mul(builder.sub(tt, builder.mul(n, nn)), bb)
        end = builder.add(c0, bb)
        end = builder.select(builder.icmp_signed("<", cc, end), cc, end)
        return context.make_tuple(builder, _ROW3, [n, c0, builder.sub(end, c0)])
    return _ROW3(t, nb, blk, C), codegen


# ----------------------------------------------------------------------------- max family

PF = 8192  # software prefetch distance of the scatter's streams, bytes


def make_max_scatter(layout, parallel, direct=False):
    """grad_input[idx[o]] += grad_output[o] per plane, outputs in order (any indices).

    Indices from the plane's size up to ``past`` name no cell, and their gradients go
    nowhere: where some windows have no input cell (a dilation stepping over the input), the
    forward gives them PyTorch's index, the first tap at or past the input's start, which can
    lie past the plane (PyTorch's autograd then writes past the plane, into the next one in
    memory); ``past`` bounds those (the plane's size where there are no such windows).

    ``direct`` (the storage type is the accumulation type: float32, float64): the sums go
    straight into the zeroed gradient plane (channels-first), which stays in cache, or the
    zeroed gradient image (channels-last tasks holding whole channel vectors), instead of
    through a scratch copied out afterwards."""
    DIRECT = direct

    if layout == CF:
        def kernel(g, idx, gin, bad, past, blk, nt, zero, marker):
            P = g.shape[0]
            OS = g.shape[1]
            S = gin.shape[1]
            for t in prange((P + blk - 1) // blk):
                # nt (direct only): the sums go to scratch holding the task's planes (one run
                # of gin), streamed out as each plane is done (the gradient is never read, as
                # the zeroing stores would)
                p0 = t * blk
                ntd = DIRECT and nt
                inbuf = ntd or not DIRECT
                buf = new_full((min(P, p0 + blk) - p0) * S if ntd else (S if inbuf else 1), zero)
                gf = flat_view(gin)
                done = 0
                pfi = PF // 8  # (the distances in elements, worked out once)
                pfg = PF // max(g.itemsize, 1)
                for p in range(t * blk, min(P, (t + 1) * blk)):
                    pb = (p - p0) * S if ntd else 0  # the plane in buf (zeroed again after
                    # each plane unless ntd)
                    if not inbuf:
                        for j in range(S):
                            gin[p, j] = zero
                    ok = True
                    for o in range(OS):
                        # both streams PF bytes ahead: the hardware prefetcher alone left the
                        # loads waiting (k3s2p1 (32, 64, 112, 112) 0.84-0.93x the time, paired
                        # in one process on a Xeon with a 300 MB L3; the distances divided in
                        # the loop instead: 1.4x)
                        prefetch(idx, (p, U(o + pfi)))
                        prefetch(g, (p, U(o + pfg)))
                        i = idx[p, o]
                        if U(i) >= U(S):
                            if S <= i < past:  # (no cell: see the docstring)
                                continue
                            bad[t, 0] = 1 + p
                            bad[t, 1] = i
                            ok = False
                            break
                        if not inbuf:
                            gin[p, U(i)] += load(g[p, o], marker)
                        else:
                            buf[U(pb + i)] += load(g[p, o], marker)
                    if not ok:
                        break
                    if DIRECT and nt:
                        done = stream_upto(buf, done, pb + S, gf, p0 * S, marker)
                    elif not DIRECT:
                        for j in range(S):
                            gin[p, j] = to_storage(buf[j], marker)
                            buf[j] = zero
                if DIRECT and nt:
                    stream_upto(buf, done, -(min(P, p0 + blk) - p0) * S, gf, p0 * S, marker)
                    sfence()
    else:
        def kernel(g, idx, gin, bad, past, blk, nt, zero, marker):
            N = g.shape[0]
            OS = g.shape[1]
            C = g.shape[2]
            S = gin.shape[1]
            nb = (C + blk - 1) // blk
            for t in prange(N * nb):
                n, c0, wb = cl_task(t, nb, blk, C)
                # direct: whole channel vectors, the image's gradient itself is the scratch;
                # with nt, the sums go to scratch holding the image, streamed out at the end
                # (the image's gradient is one run of gin: only its two ends are plain stores)
                own = DIRECT and wb == C
                ntd = DIRECT and nt and own
                buf = new_full(S * C if ntd else (1 if own else S * wb), zero)
                gn = flat_view(gin[max(n, 0)])
                if own and not ntd:
                    for j in range(S * C):
                        gn[j] = zero
                ok = True
                # (no prefetches: channels-first's, issued per output cell for its channels'
                # lines, took 1.14-1.27x the time here)
                for o in range(OS):
                    # channels RING_LANES at a time as a gather, add and scatter (distinct
                    # channels: no two lanes meet); a vector with an index out of range added
                    # its others and has that one looked at below
                    cv = 0
                    while cv + RING_LANES <= wb:
                        if ntd:
                            okv = vring_add(buf, idx, (n, o, cv), g, (n, o, cv), 0, S, 0, S, C,
                                            cv, marker)
                        elif own:
                            okv = vring_add(gn, idx, (n, o, cv), g, (n, o, cv), 0, S, 0, S, C,
                                            cv, marker)
                        else:
                            okv = vring_add(buf, idx, (n, o, c0 + cv), g, (n, o, c0 + cv), 0, S,
                                            0, S, wb, cv, marker)
                        if not okv:
                            for c in range(cv, cv + RING_LANES):
                                i = idx[n, o, U(c0 + c)]
                                if U(i) >= U(S) and not S <= i < past:
                                    if ok:
                                        bad[t, 0] = 1 + n * C + c0 + c
                                        bad[t, 1] = i
                                    ok = False
                        cv += RING_LANES
                    for c in range(cv, wb):
                        i = idx[n, o, U(c0 + c)]
                        if U(i) >= U(S):
                            if not S <= i < past:  # (else no cell: see the docstring)
                                if ok:
                                    bad[t, 0] = 1 + n * C + c0 + c
                                    bad[t, 1] = i
                                ok = False
                        elif ntd:
                            buf[U(i * C + c)] += load(g[n, o, U(c)], marker)
                        elif own:
                            gn[U(i * C + c)] += load(g[n, o, U(c)], marker)
                        else:
                            buf[U(i * wb + c)] += load(g[n, o, U(c0 + c)], marker)
                    if not ok:
                        break
                if DIRECT and nt and own:  # (ntd, spelled so that float16 folds it away)
                    stream_upto(buf, 0, -(S * C), gn, 0, marker)
                    sfence()
                if ok and not own:
                    for s in range(S):
                        for c in range(wb):
                            gin[n, s, U(c0 + c)] = to_storage(buf[U(s * wb + c)], marker)
    return jit(kernel, parallel=parallel)


def make_max_ring(layout, parallel):
    """Channels-last max backward from indices through a ring of input rows.

    The scatter's scratch holds a whole image, which outgrows the core's cache on large
    images; here a task (one image, all its channels) holds only the ``R`` outer rows (rows of
    the first spatial dim with more than one cell, ``RW`` cells each) that the output row
    being scattered may reach, as a circle.  Output row ``o`` adds its gradients, in output
    order and from +0 as the scatter, to rows ``lo[o] .. lo[o] + R - 1``; the rows below
    ``lo[o + 1]`` then take no more: they are written out (one run of gin each, over its whole
    lines with streaming stores where ``nt``) and start again from +0 as the ring's next
    rows.  Rows that no output row reaches are written as zeros.  The sums, hence the bits,
    are the scatter's.

    An index outside its output row's ring (or out of range) ends the task with
    ``bad[n] = 1``: the caller then runs the scatter, which takes any index and reports bad
    ones.  ``lo`` (OR + 1,): each output row's first ring row, non-decreasing, and then the
    outer dim's size."""

    def kernel(g, idx, gin, bad, lo, R, RW, ORW, nt, zero, marker):
        N = g.shape[0]
        C = g.shape[2]
        S = gin.shape[1]
        OR = lo.shape[0] - 1
        H = S // RW  # (the outer dim: S = H * RW)
        RS = RW * C  # cells of a ring row
        RRW = R * RW
        po = max(1, PF // max(C * idx.itemsize, 1))  # output cells ahead
        for n in prange(N):
            ring = new_full(R * RS, zero)
            gn = flat_view(gin[n])
            done = 0  # rows [0, done) are written
            head = 0  # the ring's slot of row lo[orow]
            ok = True
            for orow in range(OR):
                base = lo[orow]
                nxt = lo[orow + 1]
                off = base * RW
                lim = min(RRW, S - off)
                hc = head * RW
                for o in range(orow * ORW, (orow + 1) * ORW):
                    # the indices and gradients PF bytes of indices on (one stream each: the
                    # hardware prefetcher alone left the loads waiting)
                    for c in range(0, C, line_cells(idx)):
                        prefetch(idx, (n, o + po, U(c)))
                    for c in range(0, C, line_cells(g)):
                        prefetch(g, (n, o + po, U(c)))
                    # channels RING_LANES at a time as a gather, add and scatter (distinct
                    # channels: no two lanes meet), the rest one by one
                    cv = 0
                    while cv + RING_LANES <= C:
                        if not vring_add(ring, idx, (n, o, cv), g, (n, o, cv), off, lim, hc,
                                         RRW, C, cv, marker):
                            ok = False
                        cv += RING_LANES
                    for c in range(cv, C):
                        j = idx[n, o, c] - off
                        if U(j) >= U(lim):
                            ok = False
                        else:
                            q = j + hc
                            q = q - RRW if q >= RRW else q
                            ring[U(q * C + c)] += load(g[n, o, c], marker)
                    if not ok:
                        break
                if not ok:
                    break
                # rows [done, nxt) are complete: from the ring, or zeros past its rows
                for r in range(done, min(nxt, H)):
                    if base <= r < base + R:
                        sl = head + r - base
                        s0 = (sl - R if sl >= R else sl) * RS
                        if not (nt and stream_lines(ring, s0, gn, r * RS, RS, marker)):
                            for k in range(RS):
                                gn[U(r * RS + k)] = to_storage(ring[U(s0 + k)], marker)
                    else:
                        for k in range(RS):
                            gn[U(r * RS + k)] = to_storage(zero, marker)
                done = max(done, min(nxt, H))
                # the ring moves on: the rows written start again from +0 as its next rows
                step = min(nxt - base, R)
                for r in range(step):
                    sl = head + r
                    s0 = (sl - R if sl >= R else sl) * RS
                    for k in range(RS):
                        ring[U(s0 + k)] = zero
                head = head + step
                head = head - R if head >= R else head
            if not ok:
                bad[n] = 1
            elif nt:
                sfence()
    return jit(kernel, parallel=parallel)


def make_max_gather(layout, parallel):
    """Channels-last max backward from indices as a gather over the covering windows.

    ``matches[r]`` counts the (output, channel) pairs whose index was found in input row ``r``;
    the caller falls back to the scatter kernel unless they add up to every output (indices
    outside their own window or out of range).
    """

    def kernel(g, idx, gin, inv, ilist, matches, blk, zero, marker):
        N = g.shape[0]
        C = g.shape[4]
        D = gin.shape[1]
        H = gin.shape[2]
        W = gin.shape[3]
        rows = N * D * H
        for t in prange((rows + blk - 1) // blk):
            acc = new_full(C, zero)
            for r in range(t * blk, min(rows, (t + 1) * blk)):
                n = r // (D * H)
                zy = r - n * (D * H)
                z = zy // H
                y = zy - z * H
                zs = inv[0, 0, z]
                zn = inv[0, 1, z]
                ys = inv[1, 0, y]
                yn = inv[1, 1, y]
                cnt = 0
                for w in range(W):
                    ws = inv[2, 0, w]
                    wn = inv[2, 1, w]
                    pos = (z * H + y) * W + w
                    for c in range(C):
                        acc[c] = zero
                    if zn > 0 and yn > 0 and wn > 0:
                        # the indices and gradients of the output row below the first covering
                        # window's (the rows a later input row gathers from)
                        od = ilist[0, U(zs)]
                        oh = ilist[1, U(ys)] + 1
                        ow = ilist[2, U(ws)]
                        for c in range(0, C, line_cells(idx)):
                            prefetch(idx, (n, U(od), U(oh), U(ow), U(c)))
                        for c in range(0, C, line_cells(g)):
                            prefetch(g, (n, U(od), U(oh), U(ow), U(c)))
                    for i in range(zn):
                        od = ilist[0, U(zs + i)]
                        for j in range(yn):
                            oh = ilist[1, U(ys + j)]
                            for k in range(wn):
                                ow = ilist[2, U(ws + k)]
                                for c in range(C):
                                    hit = idx[n, U(od), U(oh), U(ow), c] == pos
                                    gv = zero + load(g[n, U(od), U(oh), U(ow), c], marker)
                                    acc[c] += gv if hit else zero
                                    cnt += hit
                    for c in range(C):
                        gin[n, z, y, w, c] = to_storage(acc[c], marker)
                matches[r] = cnt
    return jit(kernel, parallel=parallel)


def make_max_recompute(layout, parallel, KD=0, KH=0, KW=0):
    """Channels-last max backward without indices: each window's argmax recomputed per channel
    (the forward's scan: NaN wins, ties go to the first cell) and its gradient added, in output
    order, to the task's scratch (one n, a block of channels).  (Channels-first runs
    ``window.make_max_backward``, the forward argmax kernel's scan.)

    Scratch: for 1-d and 2-d problems a ring of the input rows that windows still touch (row y
    in slot y % RB, RB rows of W * wb cells, about the rows one window spans), each row written
    out and zeroed as soon as no later window touches it, so the scratch stays in cache; for
    3-d problems a ring of ``rbd`` depth slices alike (slice z in slot z % rbd, each H * W * wb
    cells, written out once no later window touches it; ``backward._depth_ring``), or with
    ``rbd`` 0 the whole plane, written out at the end.

    ``KD, KH, KW`` (0: none): a hot window compiled as constants; its full windows keep each
    channel's running (max, tap number) in registers over the unrolled taps, one vectorised
    loop over the channels, instead of updating scratch vectors tap by tap.  (A plan starts on
    the table-driven kernel and moves on to this one: see ``backward._max_plan``.)  The input
    is indexed directly (a view per tap costs two atomic reference-count updates)."""
    assert layout == CL
    SPEC = KW > 0
    KT = KD * KH * KW
    # full windows prefetch their columns in the two input rows below the window (the rows a
    # later output row reads first; the hardware prefetcher alone left the loads waiting)
    PFR = SPEC and parallel
    # full windows of at most 9 taps keep each channel's running (max, tap) in registers over
    # the unrolled taps and add the gradients in one vectorised pass per tap; larger ones,
    # whose channel loop then stayed scalar, scan tap by tap over vectorised channel loops and
    # add each channel's gradient to its argmax cell (2-core EPYC, (8, 64, 64, 64) float32:
    # k5s1p2 113 -> 9 ms; 3x3 windows tap by tap took 1.56-1.67x the time)
    TAP_PASSES = KT <= 9

    def kernel(g, x, gin, tab, dil, lo, hi, pw, ptype, blk, nt, rbd, init, zero, marker):
        N = g.shape[0]
        OD = g.shape[1]
        OH = g.shape[2]
        OW = g.shape[3]
        C = g.shape[4]
        D = x.shape[1]
        H = x.shape[2]
        W = x.shape[3]
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        ring = D == 1 and OD == 1  # (a 3-d window over one depth row may repeat it)
        # ring: before output row oh, the rows below mh[oh] (the lowest first row of any window
        # from oh on: with dilation and padding first rows need not increase) are finished;
        # the rows held at once, [mh[oh], the last row touched so far], fit RB slots
        mh = new_full(OH + 1, H)
        for oh in range(OH - 1, -1, -1):
            mh[oh] = min(mh[oh + 1], tab[1, 0, oh] if tab[1, 1, oh] > 0 else H)
        RB = 1
        ml = -1
        # a window without an input cell along W sends its gradient to the row its index
        # aliases, up to aw rows below its first row (see the scan below): held too
        aw = -1
        for ow in range(OW):
            if tab[2, 1, ow] == 0:
                aw = max(aw, tab[2, 0, ow] // max(W, 1))
        for oh in range(OH):
            if tab[1, 1, oh] > 0:
                ml = max(ml, tab[1, 0, oh] + (tab[1, 1, oh] - 1) * dh, tab[1, 0, oh] + aw)
            RB = max(RB, min(ml, H - 1) - mh[oh] + 1)
        dring = not ring and rbd > 0  # the ring of depth slices (every window has a cell)
        # depth ring: before depth row od the slices below md[od] (the lowest first slice of any
        # window from od on) are finished
        md = new_full(OD + 1, D)
        for od in range(OD - 1, -1, -1):
            md[od] = min(md[od + 1], tab[0, 0, od])
        RB = RB if ring else (rbd * H if dring else D * H)  # scratch rows
        nb = (C + blk - 1) // blk
        for t in prange(N * nb):
            n, c0, wb = cl_task(t, nb, blk, C)
            RW = W * wb
            buf = new_full(RB * RW, zero)
            mv = new_full(wb, init)
            mi = new_zeros(wb, ptype.dtype)
            tap = new_zeros(wb if SPEC else 1, np.int32)  # full windows: each channel's argmax tap
            rs = new_zeros(max(KT, 1), np.int64)  # full windows: scratch row of each (a, b)
            gnf = flat_view(gin[max(n, 0)])
            # rings: plane rows (z * H + y) below nf are written out; row z * H + y lives in
            # slot (z * H + y) % RB (the depth ring: slices z % rbd)
            nf = 0
            for r in range(OD * OH + 1):
                od = r // OH
                oh = r - od * OH
                # the rows no later window touches are finished (all of them at the end): the
                # ring of rows at every output row, the depth ring's whole slices at each new
                # depth row of windows
                upto = nf
                if ring:
                    upto = H if r == OD * OH else mh[oh]
                elif dring and oh == 0:
                    upto = (D if r == OD * OH else md[od]) * H
                for y in range(nf, upto):
                    sb = (y % RB) * RW
                    # (nt, whole channel vectors: the row is one run of gin) streamed out over
                    # its whole lines; the ends of the row plain
                    if nt and wb == C and stream_lines(buf, sb, gnf, y * RW, RW, marker):
                        for i in range(RW):
                            buf[U(sb + i)] = zero
                        continue
                    for w in range(W):
                        for c in range(wb):
                            gnf[U((y * W + w) * C + c0 + c)] = to_storage(
                                buf[U(sb + w * wb + c)], marker)
                            buf[U(sb + w * wb + c)] = zero
                nf = max(nf, upto)
                if r == OD * OH:
                    break
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                full_rows = SPEC and nd == KD and nh == KH
                if full_rows:
                    for a in range(KD):
                        for b in range(KH):
                            y = h0 + b * dh
                            # (the whole plane: RB = D * H, the remainder is the row)
                            rs[a * KH + b] = ((d0 + a * dd) * H + y) % RB
                for ow in range(OW):
                    w0 = tab[2, 0, ow]
                    nw = tab[2, 1, ow]
                    if full_rows and nw == KW:
                        if PFR:  # the window's columns in the two rows below it (see PFR)
                            for a in range(KD):
                                for b in range(2):
                                    for k in range(KW):
                                        for c in range(0, wb, line_cells(x)):
                                            prefetch(x, (n, U(d0 + a * dd),
                                                         U(h0 + (KH + b) * dh),
                                                         U(w0 + k * dw), U(c0 + c)))
                        if TAP_PASSES:
                            # each channel's running (max, tap) in registers over the unrolled
                            # taps
                            for c in range(wb):
                                m = load(x[n, U(d0), U(h0), U(w0), U(c0 + c)], marker)
                                ti = np.int32(0)
                                for i in range(1, KT):
                                    a = i // (KH * KW)
                                    b = (i // KW) % KH
                                    k = i % KW
                                    v = load(x[n, U(d0 + a * dd), U(h0 + b * dh),
                                               U(w0 + k * dw), U(c0 + c)], marker)
                                    take = (v > m) | (v != v)
                                    m = v if take else m
                                    ti = np.int32(i) if take else ti
                                tap[c] = ti
                        else:  # (larger windows: tap by tap, each a vectorised channel loop)
                            for c in range(wb):
                                mv[c] = load(x[n, U(d0), U(h0), U(w0), U(c0 + c)], marker)
                                tap[c] = np.int32(0)
                            for i in range(1, KT):
                                a = i // (KH * KW)
                                b = (i // KW) % KH
                                k = i % KW
                                for c in range(wb):
                                    v = load(x[n, U(d0 + a * dd), U(h0 + b * dh),
                                               U(w0 + k * dw), U(c0 + c)], marker)
                                    m = mv[c]
                                    take = (v > m) | (v != v)
                                    mv[c] = v if take else m
                                    tap[c] = np.int32(i) if take else tap[c]
                        if TAP_PASSES:
                            # each tap's cells take the gradients of the channels whose argmax
                            # it is, + 0 elsewhere (no bit changes: the sums start at +0, never
                            # -0): one vectorised pass per tap, not a scattered add per channel
                            for i in range(KT):
                                sl = rs[i // KW] * RW + (w0 + (i % KW) * dw) * wb
                                for c in range(wb):
                                    v = load(g[n, od, oh, ow, U(c0 + c)], marker)
                                    buf[U(sl + c)] += v if tap[c] == i else zero
                        else:  # (larger windows: each channel's gradient to its argmax cell)
                            for c in range(wb):
                                i = tap[c]
                                sl = rs[i // KW] * RW + (w0 + (i % KW) * dw) * wb
                                buf[U(sl + c)] += load(g[n, od, oh, ow, U(c0 + c)], marker)
                        continue
                    first = (d0 * H + h0) * W + w0
                    if nd * nh * nw == 0:
                        # a window without an input cell (dilation past the input: PyTorch's
                        # -inf): its gradient goes to the forward's index, PyTorch's position
                        # of its first tap past the input, when that lies in the plane (as
                        # PyTorch's autograd; ring: in a row the ring holds), else nowhere
                        y = first // max(W, 1)
                        if first < 0 or first >= D * H * W or \
                                (ring and (y < nf or y >= nf + RB)):
                            continue
                    for c in range(wb):
                        mv[c] = init
                        mi[c] = first
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            for k in range(nw):
                                w = w0 + k * dw
                                pos = (z * H + y) * W + w
                                for c in range(wb):
                                    v = load(x[n, U(z), U(y), U(w), U(c0 + c)], marker)
                                    m = mv[c]
                                    take = (v > m) | (v != v)
                                    mv[c] = v if take else m
                                    mi[c] = pos if take else mi[c]
                    for c in range(wb):
                        pos = mi[c]
                        if ring or dring:  # (the plane row's slot)
                            y = pos // W
                            pos = (y % RB) * W + pos - y * W
                        buf[U(pos * wb + c)] += load(g[n, od, oh, ow, U(c0 + c)], marker)
            if ring or dring:
                if nt and wb == C:
                    sfence()
                continue
            # (through the flat view: 5-d stores cost the first compile ~0.5 s, see
            # make_max_recompute_pairs)
            for j in range(D * H * W):
                for c in range(wb):
                    gnf[U(j * C + c0 + c)] = to_storage(buf[U(j * wb + c)], marker)
    return jit(kernel, parallel=parallel)


def make_max_recompute_pairs(layout, parallel):
    """Channels-last max backward without indices for 3x3 windows at stride 2 (dilation 1, left
    pads ``PH``, ``PW`` of 0 or 1) on 1-d and 2-d planes (``backward._pair_pads``): a gather,
    each input row written once.

    A task (one n, a block of channels) takes the output rows in order.  For each it finds
    every window's argmax per channel (the forward's scan: NaN wins, ties go to the first tap)
    as a code ``dy * 3 + dx`` relative to the window's first tap before clipping (``2 * oh -
    PH``, ``2 * ow - PW``), kept with the window's gradients for two output rows (``K``, ``G``,
    window ``ow`` at column ``ow + 1``, columns 0 and ``OW + 1`` and a third row holding no
    window: code -1, gradient +0).  Input row ``u = y + PH`` is covered by output row ``u / 2``
    (``dy = 1``) for odd ``u``, else by rows ``u / 2 - 1`` (``dy = 2``) and ``u / 2`` (``dy =
    0``), so it is complete once row ``u / 2`` is known; columns likewise.  Each cell sums the
    gradients of its covering windows whose code names it, in output order from +0, which are
    the scatter kernel's sums bit for bit (the windows that do not name it add +0, which
    changes no bit of a sum started at +0).  Rows are built in scratch and streamed out
    (``nt``, whole channel vectors), else written with plain stores.  Whole and clipped
    windows run one scan over the padded 3x3 taps with those outside the input masked out
    (a first call of (8, 56, 56, 64) compiled in 1.9-2.0 s instead of 2.2-2.4 s with a loop
    of its own for clipped windows; the time per call within 1.00-1.03x), and each pass over
    a row's windows writes both of a window's columns (2i - PW and 2i - PW + 1), into a
    scratch row padded so that no column needs a range check (half the loops: first call
    2.0-2.2 s instead of 2.3-2.9 s, the time per call 1.00x, paired).  Odd input rows (one
    covering output row) run the even rows' pass with the upper row's slot pointing at the
    empty third row, and the plain stores go through the flat view (on a 2-core Xeon, the
    bench's (8, 56, 56, 64) first call, alternated fresh processes: the kernel compiled in a
    median 2.2 s instead of 2.7 s; the time per call 1.02-1.05x, paired in one process).  That
    pass runs in explicit vectors (``_simd.vpair_cells``) over scratch that starts on cache
    lines: 32x64x112x112 float32 then took 0.90-0.93x the time of the scalar loop's two
    passes (paired, one process, 2 threads, Xeon); in the cache, 1.0 us a row against 1.9."""
    assert layout == CL
    # software prefetch of the two input rows the next output row reads first
    PFP = parallel

    def kernel(g, x, gin, tab, PH, PW, blk, nt, init, zero, marker):
        N = g.shape[0]
        OH = g.shape[2]
        OW = g.shape[3]
        C = g.shape[4]
        H = x.shape[2]
        W = x.shape[3]
        nb = (C + blk - 1) // blk
        for t in prange(N * nb):
            n, c0, wb = cl_task(t, nb, blk, C)
            OWP = OW + 2
            # (scratch on cache lines: the vectors of whole lines' channels then load and store
            # within one line each, see _intrinsics.lined_full)
            K = lined_full(3 * OWP * wb, np.int32(-1), 0)
            G = lined_full(3 * OWP * wb, zero, 0)
            ROW = lined_full((W + 4) * wb, zero, 0)  # (columns -1 .. W + 2)
            gnf = flat_view(gin[max(n, 0)])
            RW = W * wb
            a0 = np.int32(6)  # the upper covering row's codes (dy = 2)
            a1 = np.int32(7)
            a2 = np.int32(8)
            for r in range(OH + 1):
                if r < OH:
                    # the codes and gradients of output row r, in slot r % 2
                    oh = r
                    h0 = tab[1, 0, oh]
                    nh = tab[1, 1, oh]
                    oy = h0 - (2 * oh - PH)
                    for ow in range(OW):
                        w0 = tab[2, 0, ow]
                        nw = tab[2, 1, ow]
                        kb = ((oh % 2) * OWP + ow + 1) * wb
                        for c in range(wb):
                            G[U(kb + c)] = load(g[n, 0, oh, ow, U(c0 + c)], marker)
                        # every window scans its padded 3x3 taps, those outside the input
                        # masked out (the padding never wins): one loop for whole and clipped
                        # windows, the same codes as scanning the taps inside alone
                        ox = w0 - (2 * ow - PW)
                        yb = 2 * oh - PH
                        xb = 2 * ow - PW
                        f0 = np.int32(oy * 3 + ox)  # the first tap inside
                        if PFP:  # the two input rows below the window, its first two columns
                            for b in range(3, 5):
                                for k in range(2):
                                    for c in range(0, wb, line_cells(x)):
                                        prefetch(x, (n, 0, U(min(yb + b, H - 1)),
                                                     U(min(max(xb + k, 0), W - 1)), U(c0 + c)))
                        for c in range(wb):
                            m = init
                            ti = f0
                            for i in range(9):
                                a = i // 3
                                k = i - a * 3
                                inside = (a >= oy) & (a < oy + nh) & (k >= ox) & (k < ox + nw)
                                v = load(x[n, 0, U(min(max(yb + a, 0), H - 1)),
                                           U(min(max(xb + k, 0), W - 1)), U(c0 + c)], marker)
                                take = inside & ((v > m) | (v != v))
                                m = v if take else m
                                ti = np.int32(i) if take else ti
                            K[U(kb + c)] = ti
                # the input rows now complete: u = 2r (rows r - 1 and r) and u = 2r + 1 (row
                # r); past the last output row, u = 2 * OH and every later row (none)
                for u in range(2 * r, 2 * r + 2 if r < OH else H + PH):
                    y = u - PH
                    if y < 0 or y >= H:
                        continue
                    two = u % 2 == 0
                    # the slots of the covering rows u // 2 (b) and, u even, u // 2 - 1 (a);
                    # 2: none.  Codes: a's taps at dy = 2, b's at dy = 0 (u even) or 1
                    # (u odd: no upper covering row, its pass reads slot 2: codes -1, gradients +0)
                    if r < OH:
                        sb = r % 2
                        sa = (r - 1) % 2 if (two and r > 0) else 2
                    else:
                        sb = 2
                        sa = (OH - 1) % 2 if (u == 2 * OH and OH > 0) else 2
                    b0 = np.int32(0 if two else 3)  # (int32: the compares then vectorise)
                    b1 = np.int32(1 if two else 4)
                    b2 = np.int32(2 if two else 5)
                    codes = (a0, a1, a2, b0, b1, b2)
                    # input columns 2i - PW (windows i - 1, dx 2, and i, dx 0) and 2i - PW + 1
                    # (window i, dx 1) in one pass, at ROW[(w + 1) * wb]: ROW has a column of
                    # padding on the left and two on the right for the columns a pass writes
                    # outside the row, never copied out
                    for i in range(OW + 1):
                        ka = (sa * OWP + i) * wb
                        kb = (sb * OWP + i) * wb
                        rb = max(2 * i - PW + 1, 0) * wb
                        vpair_cells(G, K, ka, kb, wb, ROW, rb, codes)
                    # columns past every window
                    for j in range(max(2 * OW + 3 - PW, 1) * wb, (W + 1) * wb):
                        ROW[j] = zero
                    if nt and wb == C and stream_lines(ROW, wb, gnf, y * RW, RW, marker):
                        continue
                    # (through the flat view: the 5-d stores took a quarter of the compile time)
                    for w in range(W):
                        ob = (y * W + w) * C + c0
                        for c in range(wb):
                            gnf[U(ob + c)] = to_storage(ROW[U((w + 1) * wb + c)], marker)
            if nt and wb == C:
                sfence()
    return jit(kernel, parallel=parallel)


# ----------------------------------------------------------------------------- average and Lp

def sum_backward_spec(power, divmode, hw, dw, W, OW, acc_bytes):
    """The channels-first ``make_sum_backward`` kernel's compile-time case (see its ``spec``,
    which adds whether the output is streamed) for divisor rule ``divmode``, W windows ``hw`` =
    (kernel, stride, left pad) with dilation ``dw``, input / output widths ``W`` / ``OW`` and a
    compute type of ``acc_bytes`` bytes; the kernel's own definitions, worked out here once."""
    KW, SW, PW = max(hw[0], 0), max(hw[1], 1), max(hw[2], 0)
    uniform = KW > 0
    plane = not power and uniform and divmode != 3
    pair = KW == 3 and SW == 2 and dw == 1
    ows = min(OW, (W + PW + SW - 1) // SW)
    flat = pair and plane and ows == OW and W == 2 * OW and PW <= 1
    from ._simd import lanes
    vec = W >= lanes(acc_bytes)  # rows of whole vectors (of the compute type's lanes)
    return int(divmode), bool(uniform), bool(pair), bool(flat), int(PW) if flat else 0, \
        bool(vec)


def sum_backward_program(power, spec, tab, dil, inv, ilist, shape, oshape, hw, dtype):
    """What the channels-first ``make_sum_backward`` kernel (case ``spec``, without the
    streaming flag) reads besides the arrays, worked out once per plan: ``(dv, RK, RB1, RB2)``.

    ``dv``: the divisors as floats of the compute ``dtype`` (int-to-float conversions and
    divisions by them do not vectorise): per output cell (rules 1 and 2, NR * OW), the W
    extents (rule 3, OW), ones (rule 0 and Lp, OW).

    The input rows' program, input row ``r = z * H + y`` being ``RK[r]`` = 0 (no covering
    window: zeros), 1 (one covering T row: +0 + T[RB1]), 2 (two: (+0 + T[RB1]) + T[RB2]), 3
    (rows at least a vector wide: one, and the next row, 4, is covered by the same T row and
    the one after, RB2: 3-row windows at stride 2, both rows in one pass) or 5 (the rest, and
    every Lp row: the covering rows summed in turn).  ``shape`` / ``oshape``: (D, H, W) and
    (OD, OH, OW)."""
    from ._simd import lanes
    DM, UNIFORM, PAIR, FLATT = int(spec[0]), bool(spec[1]), bool(spec[2]), bool(spec[3])
    D, H, W = shape
    OD, OH, OW = oshape
    KW, PW = max(int(hw[0]), 0), max(int(hw[2]), 0)
    LM = max((KW - 1) * int(dil[2]), 0)
    RS = W if FLATT else (W + PW + LM if UNIFORM else W)  # row stride of the T rows
    TO = PW if (PAIR and not FLATT) else 0  # offset of input column 0 in a T row
    if power or DM == 0:
        dv = np.ones(OW, dtype)
    elif DM == 3:
        dv = tab[2, 1, :OW].astype(dtype)
    else:
        f = 2 if DM == 1 else 1
        n = tab[0, f, :OD, None, None] * tab[1, f, None, :OH, None] * tab[2, f, None, None, :OW]
        dv = np.ascontiguousarray(n.reshape(-1).astype(dtype))
    pairs = W >= lanes(np.dtype(dtype).itemsize)
    RK = np.full(D * H, 5, np.int64)
    RB1 = np.zeros(D * H, np.int64)
    RB2 = np.zeros(D * H, np.int64)
    for z in range(D if not power else 0):
        zs, zn = int(inv[0, 0, z]), int(inv[0, 1, z])
        for y in range(H):
            r = z * H + y
            ys, yn = int(inv[1, 0, y]), int(inv[1, 1, y])
            if zn * yn > 2 or RK[r] == 4:
                continue
            RK[r] = zn * yn
            if zn * yn == 0:
                continue
            RB1[r] = (ilist[0, zs] * OH + ilist[1, ys]) * RS + TO
            if zn * yn == 2:
                RB2[r] = (ilist[0, zs + (1 if zn == 2 else 0)] * OH +
                          ilist[1, ys + (1 if yn == 2 else 0)]) * RS + TO
            elif pairs and zn == 1 and y + 1 < H and inv[1, 1, y + 1] == 2 and \
                    ilist[1, inv[1, 0, y + 1]] == ilist[1, ys]:
                RK[r] = 3
                RK[r + 1] = 4
                RB2[r] = (ilist[0, zs] * OH + ilist[1, inv[1, 0, y + 1] + 1]) * RS + TO
    return dv, RK, RB1, RB2


def make_sum_backward(layout, parallel, power, *spec):
    """Average (power=False) and Lp (power=True) backward, also adaptive average.

    Separable: each output row's shares are spread along W into a row of ``T`` (``T[od, oh,
    w]``), then each input row ``(z, y)`` sums the ``T`` rows of the windows covering it and is
    written once.  Per cell the order is (od, oh) ascending, then ow ascending.

    Channels-first rows of ``T`` come from long unit-stride loops: with uniform windows along W
    (``hw`` = kernel, stride, left pad) a plane's shares are stuffed into rows ``E`` that are
    zero elsewhere, at ``LM + ow * SW``, and ``T[w] = sum over taps c, the last first, of
    E[LM + w + pw - c * dw]``: exactly the shares of the windows covering ``w`` in ascending
    order, plus zeros, which change no bit (a sum started at +0 is never -0).  Adaptive windows
    (``hw[0] == 0``) add each window's share to its columns instead.  3-wide windows at stride 2
    (the common case) skip the stuffed rows: each T cell is one share or the sum of two
    neighbouring ones, written in pairs, over whole planes when the windows tile the rows
    (every 56-wide row, 28 windows: 1.4x faster than the stuffed rows at (32, 64, 56, 56)).
    The average's shares (gradient / divisor) are computed for a whole plane in one loop.

    ``divmode``: 0 divide by ``dov``; 1 by the taps inside the padded extent; 2 by the taps
    inside the input; 3 sequentially by the taps of each dim (PyTorch's adaptive average).
    For Lp (always the padded-extent divisor, as the forward) the gradient follows PyTorch's
    autograd of ``(sign(A) * relu(|A|) * K) ** (1/p)`` with ``A = avg(x**p)``: per window
    ``gA = g * (1/p) * (A*K)**(1/p - 1) * K`` (0 where ``A == 0``), spread as ``gA / divisor``
    over the window, and each cell's sum times ``p * x**(p-1)``.
    ``blk``: planes per task (channels-first) or channels per task (channels-last).

    ``spec`` (channels-first only, and required there): ``sum_backward_spec(...) + (nt,)``,
    the case as compile-time constants: the divisor rule, windows uniform along W, 3-wide
    windows at stride 2 without dilation along W (the pair rows), rows that the pairs tile
    and their left pad, rows at least a vector wide, and streamed output.  The branches the
    other cases take are then removed before Numba sees the kernel (``_specialise``): the
    first call of average k3s2p1 (8, 64, 56, 56) compiled its kernel in ~3 s instead of
    ~4.5 s.  The channels-first kernel takes the divisors and the rows' program from
    ``sum_backward_program`` (worked out once per plan, in Python: with the other cuts of
    this change, its first call took 1.5-1.9 s instead of 2.7-4.4 s), and its ``hw`` is the
    one the spec was made from.
    """
    POWER = power
    if layout == CF:
        if len(spec) != 7:
            raise ValueError(f"make_sum_backward: channels-first needs sum_backward_spec(...), "
                             f"got {spec!r}")
        DM, UNIFORM, KW3S2, FLAT, FPW, VECS, NT = int(spec[0]), bool(spec[1]), \
            bool(spec[2]), bool(spec[3]), int(spec[4]), bool(spec[5]), bool(spec[6])
    elif spec:
        raise ValueError(f"make_sum_backward: no spec for channels-last, got {spec!r}")

    if layout == CF:
        def kernel(g, x, gin, tab, dil, inv, ilist, dv, RK, RB1, RB2, dov, zero, p, knumel,
                   blk, hw, marker):
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
            dz = as_acc(zero, dov)
            NR = OD * OH
            # uniform windows along W (hw = (KW, SW, left pad); KW = 0: adaptive windows):
            # the shares of the plane's output rows are stuffed into zero rows ``E`` at their
            # windows' first taps, and T is then a KW-tap sum of E (see the docstring)
            KWu = max(hw[0], 0)
            SWu = max(hw[1], 1)
            PWu = FPW if FLAT else max(hw[2], 0)
            LM = max((KWu - 1) * dw, 0)  # left margin of an E row
            # windows whose first tap lies past the row cover no cell (none in practice: the
            # geometry checks reject windows without an input tap)
            OWs = min(OW, (W + PWu + SWu - 1) // SWu)
            # the shares of a whole plane in one loop (the divisions vectorise across its rows),
            # at SHP[1:] with a zero on either side
            PLANE = not POWER and UNIFORM and DM != 3
            # 3-wide windows at stride 2 (dilation 1), the common case: no stuffed rows.  Input
            # column w (u = w + PWu) is covered by window u / 2 - 1 and u / 2 (u even) or by
            # (u - 1) / 2 alone (u odd); its T cell is (0 + share) + share or 0 + share, the
            # sums the stuffed rows give, written in pairs:
            PAIR = KW3S2
            # - the rows of a plane whose windows tile it (W == 2 * OW, left pad 0 or 1): one
            #   loop over the plane's shares (T rows W long), then each row's edge cell redone
            #   (its pair read the neighbouring row's share);
            FLATT = FLAT  # (sum_backward_spec)
            # - otherwise row by row, from the row's shares at SP[1:] (zeros around them), T
            #   row cell u being (0 + SP[u / 2]) + SP[u / 2 + 1] (u even) or 0 + SP[(u + 1) / 2]
            RS = W if FLATT else (W + PWu + LM if UNIFORM else W)  # row stride of E and T
            TO = PWu if (PAIR and not FLATT) else 0  # offset of input column 0 in a T row
            # (the divisors dv and the rows' program RK, RB1, RB2: sum_backward_program)
            NP = (W + PWu + 1) // 2  # pairs of T cells per row
            HW = D * H * W
            # flat views made once, out here, rather than per task and per plane (each view
            # takes a reference to its array: an atomic update of a count the threads share)
            gf = flat_view(gin)
            gfl = flat_view(g)  # (grad_output is C-contiguous)
            for t in prange((P + blk - 1) // blk):
                T = new_full(NR * RS, zero)
                # (zero apart from the shares)
                E = new_full(NR * RS + RS if (UNIFORM and not PAIR) else 1, zero)
                acc = new_full(W, zero)
                sh = new_full(OW, zero)
                SP = new_full(max(OWs, NP) + 2 if (PAIR and not FLATT) else 1, zero)
                SHP = new_full(NR * OW + 2 if PLANE else 1, zero)
                # (NT) the task's planes, one run of gin, built here and streamed out as they
                # are done: the planes' ends need not fall on vector boundaries
                PL = new_empty((min(P, (t + 1) * blk) - t * blk) * HW if NT else 1, gin.dtype)
                done = 0
                # arrays chosen, and tuples of arrays built, once per task rather than per
                # plane or row (each binding of an array updates its reference count)
                dst = PL if NT else gf
                src = SHP if PLANE else sh
                dvt = (dv,)
                for q in range(t * blk, min(P, (t + 1) * blk)):
                    if PLANE:
                        gb = U(max(q, 0) * NR * OW)
                        # whole vectors of quotients (the compiler's loop divides one cell at
                        # a time), then the cells past the last one
                        nv = NR * OW - (NR * OW) % vector_lanes(SHP, marker)
                        if DM == 0:
                            for i in range(0, nv, vector_lanes(SHP, marker)):
                                vdiv(gfl, gb + U(i), (dz,), i, SHP, i + 1, marker)
                            for i in range(nv, NR * OW):
                                SHP[i + 1] = (zero + load(gfl[gb + U(i)], marker)) / dz
                        else:
                            for i in range(0, nv, vector_lanes(SHP, marker)):
                                vdiv(gfl, gb + U(i), dvt, i, SHP, i + 1, marker)
                            for i in range(nv, NR * OW):
                                SHP[i + 1] = (zero + load(gfl[gb + U(i)], marker)) / dv[i]
                        if FLATT:
                            # T[2J], T[2J + 1] from the shares of cell J and its neighbour
                            if PWu == 1:
                                for i in range(NR * OW):
                                    a = SHP[i + 1]
                                    T[2 * i] = zero + a
                                    T[2 * i + 1] = (zero + a) + SHP[i + 2]
                                for r in range(NR):  # the last column: its own row's share
                                    T[U(r * W + W - 1)] = zero + SHP[U(r * OW + OW)]
                            else:
                                for i in range(NR * OW):
                                    b = SHP[i + 1]
                                    T[2 * i] = (zero + SHP[i]) + b
                                    T[2 * i + 1] = zero + b
                                for r in range(NR):  # the first column
                                    T[U(r * W)] = zero + SHP[U(r * OW + 1)]
                    for od in range(0 if FLATT else OD):
                        d0 = tab[0, 0, od]
                        nd = tab[0, 1, od]
                        for oh in range(OH):
                            h0 = tab[1, 0, oh]
                            nh = tab[1, 1, oh]
                            base = (od * OH + oh) * RS
                            if PLANE:
                                pass  # (the row's shares are in SHP)
                            elif POWER:
                                for ow in range(OW):
                                    w0 = tab[2, 0, ow]
                                    nw = tab[2, 1, ow]
                                    gv = zero + load(g[q, od, oh, ow], marker)
                                    s = zero
                                    for a in range(nd):
                                        z = d0 + a * dd
                                        for b in range(nh):
                                            y = h0 + b * dh
                                            for c in range(nw):
                                                v = zero + load(x[q, U(z), U(y), U(w0 + c * dw)],
                                                                marker)
                                                if p != 1.0:  # (tpow: v * v for p = 2)
                                                    v = tpow(v, pz, one)
                                                s += v
                                    div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] *
                                                 tab[2, 2, ow])
                                    sh[ow] = lp_share(gv, s / div, div, e, kz, zero, one)
                            elif DM == 0:  # one loop per divisor rule: they vectorise
                                for ow in range(OW):
                                    sh[ow] = (zero + load(g[q, od, oh, ow], marker)) / dz
                            elif DM == 3:  # by each dim's extent in turn
                                an = as_acc(zero, nd)
                                ah = as_acc(zero, nh)
                                for ow in range(OW):
                                    sh[ow] = (zero + load(g[q, od, oh, ow], marker)) / an / ah / \
                                        dv[ow]
                            else:
                                db = (od * OH + oh) * OW
                                for ow in range(OW):
                                    sh[ow] = (zero + load(g[q, od, oh, ow], marker)) / \
                                        dv[U(db + ow)]
                            if UNIFORM:  # the row's shares: SP (pairs) or stuffed into E
                                so = (od * OH + oh) * OW + 1 if PLANE else 0
                                if PAIR:
                                    for ow in range(OWs):
                                        SP[ow + 1] = src[U(so + ow)]
                                else:
                                    eb = base + LM
                                    for ow in range(OWs):
                                        E[U(eb + ow * SWu)] = src[U(so + ow)]
                            if PAIR:
                                for j in range(NP):
                                    a = SP[j]
                                    b = SP[j + 1]
                                    T[U(base + 2 * j)] = (zero + a) + b
                                    T[U(base + 2 * j + 1)] = zero + b
                            if UNIFORM:
                                continue
                            # adaptive windows: each window adds its share to its columns,
                            # windows in ascending order (every cell sums in that order)
                            for w in range(W):
                                T[U(base + w)] = zero
                            for ow in range(OW):
                                w0 = base + tab[2, 0, ow]
                                v = sh[ow]
                                for c in range(tab[2, 1, ow]):
                                    T[U(w0 + c * dw)] += v
                    if UNIFORM and not PAIR:
                        # T[i] sums E over the taps, the last tap first (windows ascending);
                        # the zeros between the shares add nothing (a sum started at +0 is
                        # never -0, and v + 0 == v)
                        for c in range(KWu - 1, -1, -1):
                            off = PWu + LM - c * dw
                            if c == KWu - 1:
                                for i in range(NR * RS):
                                    T[i] = zero + E[U(i + off)]
                            else:
                                for i in range(NR * RS):
                                    T[i] += E[U(i + off)]
                    # the plane's rows go to the scratch ``PL`` and are streamed out as they
                    # are done (NT), or straight into gin
                    pb = (q - t * blk) * HW if NT else q * HW  # the plane in dst
                    VL = vector_lanes(T, marker)
                    VEC = VECS  # (W >= VL: sum_backward_spec)
                    for r in range(D * H):
                        k = 5 if POWER else RK[r]  # (Lp: every row summed in turn)
                        if k == 4:  # (written with the row before)
                            continue
                        rb = pb + r * W  # the row in dst
                        if NT:
                            done = stream_upto(PL, done, rb, gf, t * blk * HW, marker)
                        b1 = RB1[r]
                        b2 = RB2[r]
                        # rows of whole vectors, the last one overlapping the one before (the
                        # compiler's 32-wide loop leaves a 56-wide row's last 24 cells to its
                        # scalar remainder)
                        if k == 3:
                            for w in range(0, W - VL, VL):
                                vcol_pair(T, b1 + w, b2 + w, dst, rb + w, rb + W + w, marker)
                            vcol_pair(T, b1 + W - VL, b2 + W - VL, dst, rb + W - VL,
                                      rb + 2 * W - VL, marker)
                        elif k == 1:
                            if VEC:
                                for w in range(0, W - VL, VL):
                                    vcol1_sum(T, b1 + w, dst, rb + w, marker)
                                vcol1_sum(T, b1 + W - VL, dst, rb + W - VL, marker)
                            else:
                                for w in range(W):
                                    dst[U(rb + w)] = to_storage(zero + T[U(b1 + w)], marker)
                        elif k == 2:
                            if VEC:
                                for w in range(0, W - VL, VL):
                                    vcol2_sum(T, b1 + w, b2 + w, dst, rb + w, marker)
                                vcol2_sum(T, b1 + W - VL, b2 + W - VL, dst, rb + W - VL,
                                          marker)
                            else:
                                for w in range(W):
                                    dst[U(rb + w)] = to_storage((zero + T[U(b1 + w)]) +
                                                                T[U(b2 + w)], marker)
                        elif k == 0:
                            for w in range(W):
                                dst[U(rb + w)] = to_storage(zero, marker)
                        else:  # every covering row in turn (Lp: times p * x ** (p - 1))
                            z = r // H
                            y = r - z * H
                            zs = inv[0, 0, z]
                            zn = inv[0, 1, z]
                            ys = inv[1, 0, y]
                            yn = inv[1, 1, y]
                            for w in range(W):
                                acc[w] = zero
                            for i in range(zn):
                                od = ilist[0, U(zs + i)]
                                for j in range(yn):
                                    base = (od * OH + ilist[1, U(ys + j)]) * RS + TO
                                    for w in range(W):
                                        acc[w] += T[U(base + w)]
                            if POWER:
                                for w in range(W):
                                    v = acc[w]
                                    if p == 1.0:
                                        v = v * pz
                                    elif p == 2.0:
                                        v = v * (pz * (zero + load(x[q, z, y, w], marker)))
                                    else:
                                        v = v * (pz * tpow(zero + load(x[q, z, y, w], marker),
                                                           pz - one, one))
                                    dst[U(rb + w)] = to_storage(v, marker)
                            else:
                                for w in range(W):
                                    dst[U(rb + w)] = to_storage(acc[w], marker)
                if NT:
                    stream_upto(PL, done, -(min(P, (t + 1) * blk) - t * blk) * HW, gf,
                                t * blk * HW, marker)
                    sfence()
    else:
        def kernel(g, x, gin, tab, dil, inv, ilist, divmode, dov, zero, p, knumel, blk,
                   hw, nt, marker):
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
            dz = as_acc(zero, dov)
            nb = (C + blk - 1) // blk
            gfl = flat_view(g)  # (grad_output is C-contiguous)
            L = vector_lanes(g, marker)
            for t in prange(N * nb):
                n, c0, wb = cl_task(t, nb, blk, C)
                RW = W * wb
                T = new_full(OD * OH * RW, zero)
                acc = new_full(RW, zero)
                sh = new_full(wb, zero)
                ntw = nt and wb == C
                gnf = flat_view(gin[max(n, 0)])
                for od in range(OD):
                    d0 = tab[0, 0, od]
                    nd = tab[0, 1, od]
                    for oh in range(OH):
                        h0 = tab[1, 0, oh]
                        nh = tab[1, 1, oh]
                        base = (od * OH + oh) * RW
                        for i in range(RW):
                            T[U(base + i)] = zero
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
                                                v = zero + load(x[n, U(z), U(y), U(w),
                                                                  U(c0 + c)], marker)
                                                if p != 1.0:  # (tpow: v * v for p = 2)
                                                    v = tpow(v, pz, one)
                                                sh[c] += v
                                div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow])
                                for c in range(wb):
                                    gv = zero + load(g[n, od, oh, ow, U(c0 + c)], marker)
                                    sh[c] = lp_share(gv, sh[c] / div, div, e, kz, zero, one)
                            elif divmode == 3:
                                fd = as_acc(zero, nd)
                                fh = as_acc(zero, nh)
                                fw = as_acc(zero, nw)
                                for c in range(wb):
                                    sh[c] = (zero + load(g[n, od, oh, ow, U(c0 + c)],
                                                         marker)) / fd / fh / fw
                            else:
                                if divmode == 0:
                                    div = dz
                                elif divmode == 1:
                                    div = as_acc(zero, tab[0, 2, od] * tab[1, 2, oh] *
                                                 tab[2, 2, ow])
                                else:
                                    div = as_acc(zero, nd * nh * nw)
                                # whole vectors of quotients (vdiv), then the scalar rest
                                gb = (((n * OD + od) * OH + oh) * OW + ow) * C + c0
                                c1 = 0
                                if L > 0:
                                    c1 = wb - wb % L
                                    for c in range(0, c1, L):
                                        vdiv(gfl, U(gb + c), (div,), 0, sh, c, marker)
                                for c in range(c1, wb):
                                    sh[c] = (zero + load(g[n, od, oh, ow, U(c0 + c)],
                                                         marker)) / div
                            for k in range(nw):
                                b2 = base + (w0 + k * dw) * wb
                                for c in range(wb):
                                    T[U(b2 + c)] += sh[c]
                for z in range(D):
                    zs = inv[0, 0, z]
                    zn = inv[0, 1, z]
                    for y in range(H):
                        ys = inv[1, 0, y]
                        yn = inv[1, 1, y]
                        if not POWER and zn * yn <= 2:
                            # one or two covering rows (the common case): written at once
                            b1 = (ilist[0, U(zs)] * OH + ilist[1, U(ys)]) * RW if zn * yn else 0
                            b2 = (ilist[0, U(zs + (1 if zn == 2 else 0))] * OH +
                                  ilist[1, U(ys + (1 if yn == 2 else 0))]) * RW if zn * yn else 0
                            # (nt, whole channel vectors: the row is one run of gin) streamed
                            # over its whole lines, the same sums
                            if ntw and zn * yn > 0 and stream_sum(T, b1, b2, zn * yn == 2, gnf,
                                                                  (z * H + y) * RW, RW, marker):
                                continue
                            for w in range(W):
                                for c in range(wb):
                                    i = w * wb + c
                                    if zn * yn == 0:
                                        v = zero
                                    elif zn * yn == 1:
                                        v = zero + T[U(b1 + i)]
                                    else:
                                        v = (zero + T[U(b1 + i)]) + T[U(b2 + i)]
                                    gin[n, z, y, w, U(c0 + c)] = to_storage(v, marker)
                            continue
                        for i in range(RW):
                            acc[i] = zero
                        for i in range(zn):
                            od = ilist[0, U(zs + i)]
                            for j in range(yn):
                                base = (od * OH + ilist[1, U(ys + j)]) * RW
                                for i2 in range(RW):
                                    acc[i2] += T[U(base + i2)]
                        for w in range(W):
                            for c in range(wb):
                                v = acc[U(w * wb + c)]
                                if POWER:
                                    xv = zero + load(x[n, z, y, w, U(c0 + c)], marker)
                                    if p == 1.0:
                                        v = v * pz
                                    elif p == 2.0:
                                        v = v * (pz * xv)
                                    else:
                                        v = v * (pz * tpow(xv, pz - one, one))
                                gin[n, z, y, w, U(c0 + c)] = to_storage(v, marker)
                if ntw:
                    sfence()
    return jit(kernel, parallel=parallel)


def make_global_backward(layout, parallel):
    """One window covering the whole plane: every cell gets ``grad_output / div``."""

    if layout == CF:
        def kernel(g, gin, div, blk, zero, marker):
            P = gin.shape[0]
            S = gin.shape[1]
            dz = as_acc(zero, div)
            for t in prange((P + blk - 1) // blk):
                for q in range(t * blk, min(P, (t + 1) * blk)):
                    v = to_storage((zero + load(g[q], marker)) / dz, marker)
                    for i in range(S):
                        gin[q, i] = v
    else:
        def kernel(g, gin, div, blk, zero, marker):
            N = gin.shape[0]
            S = gin.shape[1]
            C = gin.shape[2]
            dz = as_acc(zero, div)
            nb = (S + blk - 1) // blk
            for t in prange(N * nb):
                n = t // nb
                s0 = (t - n * nb) * blk
                row = new_empty(C, gin.dtype)
                for c in range(C):
                    row[c] = to_storage((zero + load(g[n, c], marker)) / dz, marker)
                for s in range(s0, min(S, s0 + blk)):
                    for c in range(C):
                        gin[n, U(s), c] = row[c]
    return jit(kernel, parallel=parallel)


def make_adaptive_backward(layout, parallel, stream=False):
    """Adaptive average backward on contiguous channels-first 1-d/2-d planes (``g`` (P, OH *
    OW), ``gin`` (P, H * W); PyTorch's shares ``g / nh / nw``), bit-identical to the row-wise
    kernel (``make_sum_backward``): every cell sums the same shares in the same order.

    Per plane, the shares come from one loop over its output cells (``dh``/``dw``: each
    cell's divisors).  Rows ``T[oh * W + w]`` then hold the sum of the shares of the windows
    covering column ``w``, in ascending order, built for the whole plane at once: ``T[i] = 0 +
    sh[gt[0, i]] + sh[gt[1, i]] + ...`` (``gt[k, oh * W + w]``: the share of the k-th window
    covering ``w`` in output row ``oh``, or OH * OW, a slot holding +0).  One flat loop per
    covering window, where stuffed rows and one pass per tap, or row-by-row gathers, left the
    short rows to the compiler's scalar remainders (30 -> 7: 0.78x the time; 14 -> 6: 0.69x;
    5 -> 17: 0.70x).  Where an output row's shares fit one vector (OW at most 8 float32 /
    float16 lanes, 4 float64 ones; ``gi`` (NCW, WP) int32: the k-th covering window's column,
    OW where none), each T row is instead picked from that vector a vector of cells at a time
    (``vspread``, one permute): the same sums, 16x256x30x30 -> 7 with caches flushed 0.79x
    the time (the gathers were half the in-cache work); ``gi`` has no columns otherwise.

    Each input row then sums the ``T`` rows of its covering output rows (``ih``, ``ch``; OH is a
    row of zeros) in ascending order.  Rows are written WP (W rounded up to 32) cells at a time
    where the task's part of ``gin`` holds them: the cells past the row's end are rewritten by
    the rows after it, and the compiler's 32-wide vector loop never leaves a row to its scalar
    remainder.
    """
    assert layout == CF
    STREAM = stream

    def kernel(g, gin, gt, gi, ih, ch, dh, dw, H, W, OH, OW, blk, zero, marker):
        P = gin.shape[0]
        NCW = gt.shape[0]
        Wc = max(W, 1)
        WP = (Wc + 31) // 32 * 32
        NG = g.size
        gf = flat_view(g)
        of = flat_view(gin)
        for t in prange((P + blk - 1) // blk):
            Wt = max(W, 1)
            HW = max(H, 1) * Wt
            OSt = max(OH * OW, 1)
            NT = max(OH, 0) * Wt
            q1 = min(P, (t + 1) * blk)
            end = q1 * HW  # the task's part of gin ends here
            sh = new_full(OSt + 32, zero)  # sh[OS] stays +0
            T = new_full((OH + 1) * Wt + WP, zero)  # so does row OH, and every cell past it
            acc = new_full(WP, zero)
            # (stream) the task's planes (one run of gin) built here and streamed out as each
            # plane is done; a row's cells past its end are rewritten by the rows after it
            q0 = t * blk
            PL = new_empty((q1 - q0) * HW + WP if STREAM else 1, gin.dtype)
            done = 0
            # the divisors' tuple and the rows' destination bound once per task rather than
            # per vector of shares and per row (each binding of an array updates its
            # reference count, an atomic operation): paired runs 0.85-1.0x the time
            dd = (dh, dw)
            dst = PL if STREAM else of
            for q in range(q0, q1):
                gb = U(q * OSt)
                ns = (OSt + 31) // 32 * 32 if q * OSt + (OSt + 31) // 32 * 32 <= NG else OSt
                nv = ns - ns % vector_lanes(sh, marker)
                for i in range(0, nv, vector_lanes(sh, marker)):
                    vdiv(gf, gb + U(i), dd, i, sh, i, marker)
                for i in range(nv, ns):
                    sh[i] = (zero + load(gf[gb + U(i)], marker)) / dh[i] / dw[i]
                sh[OSt] = zero
                if gi.shape[1] > 0 and vector_lanes(T, marker) > 0:
                    # a row of shares fits one vector: each T row is picked from it a vector
                    # at a time (vspread; cells past the row's end pick +0, rewritten by the
                    # next row, or left +0 in row OH)
                    for oh in range(OH):
                        for k in range(NCW):
                            for c in range(0, Wt, vector_lanes(T, marker)):
                                vspread(sh, U(oh * OW), OW, gi, (k, c), T, U(oh * Wt + c),
                                        k == 0, marker)
                else:
                    for i in range(NT):
                        T[i] = zero + sh[U(gt[0, i])]
                    for k in range(1, NCW):
                        for i in range(NT):
                            T[i] += sh[U(gt[k, i])]
                for y in range(H):
                    if STREAM:
                        rb = U((q - q0) * HW + y * Wt)
                        n = WP
                    else:
                        rb = U(q * HW + y * Wt)
                        n = WP if q * HW + y * Wt + WP <= end else Wt
                    r0 = U(ih[0, y] * Wt)
                    c = ch[y]
                    if c == 1:
                        for w in range(n):
                            dst[rb + U(w)] = to_storage(zero + T[r0 + U(w)], marker)
                    elif c == 2:
                        r1 = U(ih[1, y] * Wt)
                        for w in range(n):
                            dst[rb + U(w)] = to_storage((zero + T[r0 + U(w)]) + T[r1 + U(w)],
                                                        marker)
                    else:
                        for w in range(n):
                            acc[w] = zero
                        for k in range(c):
                            rk = U(ih[k, y] * Wt)
                            for w in range(n):
                                acc[w] += T[rk + U(w)]
                        for w in range(n):
                            dst[rb + U(w)] = to_storage(acc[w], marker)
                if STREAM:
                    done = stream_upto(PL, done, (q - q0 + 1) * HW, of, q0 * HW, marker)
            if STREAM:
                stream_upto(PL, done, -((q1 - q0) * HW), of, q0 * HW, marker)
                sfence()
    return jit(kernel, parallel=parallel)


def adaptive_gather(iw, OH, OW):
    """``gt`` of ``make_adaptive_backward``: for the k-th window covering each column (``iw``,
    (NCW, W), OW past a column's last one) and each output row, its cell's share slot, or
    OH * OW (the +0 slot)."""
    rows = np.arange(OH, dtype=np.int64)[:, None] * OW
    gt = np.where(iw[:, None, :] < OW, rows[None] + iw[:, None, :], OH * OW)
    return np.ascontiguousarray(gt.reshape(iw.shape[0], -1), dtype=np.int64)


# ----------------------------------------------------------------------------- unpool: gather

def make_unpool_backward(layout, parallel):
    """grad_input[i] = grad_output[idx[i]] per plane (a gather: no accumulation)."""

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
                        gin[p, i] = g[p, U(j)]
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
                            gin[n, i, c] = g[n, U(j), c]
    return jit(kernel, parallel=parallel)
