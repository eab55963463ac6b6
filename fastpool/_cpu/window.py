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
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload, register_jitable

from ._intrinsics import (load, to_storage, flat_view, new_full, new_zeros, lined_full,
                          lined_empty)
from ._simd import (prefetch, sfence, stream_upto, vector_lanes, tile_lanes, vtile_col,
                    vtile_merge3, vtile_rows3, line_cells, vrun_argmax)
from .._runtime import jit

U = np.uint64  # (an unsigned index: no negative-index handling, which blocks vectorisation)
CF = "cf"
CL = "cl"


@register_jitable
def tpow(v, e, one):
    """``v ** e`` as PyTorch's ``Tensor.pow`` with a scalar exponent computes it: its special
    cases (a square root for 0.5, its reciprocal for -0.5, products for 2 and 3, a reciprocal
    for -1 and -2) round differently from ``pow`` and differ at -0.0 and -inf (sqrt(-0.0) is
    -0.0, sqrt(-inf) NaN); ``one`` is 1 in ``v``'s type.  (Lp pooling's powers and their
    derivatives.)"""
    if e == 2.0:
        return v * v
    if e == 3.0:
        return v * v * v
    if e == 0.5:
        return np.sqrt(v)
    if e == -0.5:
        return one / np.sqrt(v)
    if e == -1.0:
        return one / v
    if e == -2.0:
        return one / (v * v)
    return v ** e


@register_jitable
def lp_share(gv, A, div, e, kz, zero, one):
    """One cell's share of an Lp window's gradient ``gv`` (the window's mean of x ** p ``A``,
    divisor ``div``, ``e`` = 1 / p, ``kz`` = the kernel's cells), PyTorch's autograd of
    ``(sign(A) * relu(|A|) * K) ** e``: ``gv * e * (A * K) ** (e - 1) * K / div``, 0 where
    ``A == 0``; a NaN mean is times PyTorch's sign(NaN) = 0 (0 for p = 1, where NaN ** 0 = 1,
    NaN for the others)."""
    if A == 0:
        return zero
    gy = gv * (e * (A * kz) ** (e - one))
    return (gy * kz) / div * (zero if A != A else one)


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


# Row bookkeeping as intrinsics: as jitted helpers, each took 55-80 ms of a fresh process's
# first call (compiled on their own, once per process)

def _int64s(context, builder, sig, args):
    """An intrinsic's integer arguments as int64 values (also ``backward.cl_task``)."""
    return [context.cast(builder, a, ty, types.int64) for a, ty in zip(args, sig.args)]


_ROW3 = types.UniTuple(types.int64, 3)  # (three int64 indices: the intrinsics' result)


@intrinsic
def _rows(typingctx, r, OD, OH):
    """Output row ``r`` (>= 0) of (plane, D, H) order as ``(plane, od, oh)``."""
    if not all(isinstance(a, types.Integer) for a in (r, OD, OH)):
        return None

    def codegen(context, builder, sig, args):
        rr, d, h = _int64s(context, builder, sig, args)
        one = ir.Constant(rr.type, 1)

        def safe(v):  # (a divisor of 0: no rows, the result unused)
            return builder.select(builder.icmp_signed("<", v, one), one, v)
        dh = safe(builder.mul(d, h))
        p = builder.sdiv(rr, dh)
        q = builder.sub(rr, builder.mul(p, dh))
        od = builder.sdiv(q, safe(h))
        return context.make_tuple(builder, _ROW3, [p, od, builder.sub(q, builder.mul(od, h))])
    return _ROW3(r, OD, OH), codegen


@intrinsic
def _next_row(typingctx, q, od, oh, OD, OH):
    """The output row after (q, od, oh) in (plane, D, H) order."""
    if not all(isinstance(a, types.Integer) for a in (q, od, oh, OD, OH)):
        return None

    def codegen(context, builder, sig, args):
        qq, d, h, D, H = _int64s(context, builder, sig, args)
        one = ir.Constant(qq.type, 1)
        zero = ir.Constant(qq.type, 0)
        h = builder.add(h, one)
        wrap_h = builder.icmp_signed("==", h, H)
        d = builder.select(wrap_h, builder.add(d, one), d)
        h = builder.select(wrap_h, zero, h)
        wrap_d = builder.and_(wrap_h, builder.icmp_signed("==", d, D))
        qq = builder.select(wrap_d, builder.add(qq, one), qq)
        d = builder.select(wrap_d, zero, d)
        return context.make_tuple(builder, _ROW3, [qq, d, h])
    return _ROW3(q, od, oh, OD, OH), codegen


BLOCK = 8  # fewest output rows per parallel task
TASKS = 512  # parallel tasks per call, at most (enough to balance the threads)


@jit
def _merge(m, mi, v, ci):
    """A window's running (max, flat position) after the candidate (v, ci), columns merged
    in any order: a larger value, an equal one at a smaller position, or a NaN at a larger
    position (or over a non-NaN) wins."""
    take = (v > m) | ((v == m) & (ci < mi)) | ((v != v) & ((m == m) | (ci > mi)))
    return (v if take else m), (ci if take else mi)


@jit
def _col_argmax(x, q, d0, h0, w, dd, dh, sa, sh, KD, KH, marker):
    """Column w's first max / last NaN over a full window's KD * KH rows (rows in order), and
    its int32 flat offset from the first row; ``KD``/``KH`` are a kernel's constants."""
    m = load(x[q, d0, h0, w], marker)
    mi = np.int32(0)
    for i in range(1, KD * KH):
        a = i // KH
        b = i - a * KH
        v = load(x[q, d0 + a * dd, h0 + b * dh, w], marker)
        take = (v > m) | (v != v)
        m = v if take else m
        mi = np.int32(a * sa + b * sh) if take else mi
    return m, mi


def make_max(layout, parallel, KD, KH, KW, SW, backward=False):
    """Channels-first max with argmax: a vertical pass, then a horizontal pass.

    For one output row ``(plane, od, oh)`` the window's (z, y) rows are reduced per column into
    scratch rows ``tv[w]`` (value) and ``ti[w]`` (its flat input position), scanning rows in
    order so that the first maximum and the last NaN win.  The horizontal pass then reduces each
    window's columns of ``tv``/``ti``; flat positions increase in row-major window order, so the
    cross-column rule is: a larger value, an equal one at a smaller position, or a NaN at a
    larger position (or over a non-NaN).  Interior rows and columns of hot shapes run with the
    window ``(KD, KH, KW)`` and stride ``SW`` as compile-time constants (``KW = 0``:
    table-driven everywhere); edges and empty windows (value ``init``, position of the first
    tap) use the tables.  Arrays are indexed directly, without per-row views (see
    ``separable.make_sep``).
    """
    PAR = parallel  # serial variants run all rows as one task
    SPEC = KW > 0
    # one input row per window (1-d pooling): the horizontal pass reads the input row itself
    DIRECT = SPEC and KD * KH == 1
    PFR = SPEC and SW == 2 and KD * KH > 1  # prefetch the rows ahead (stride-2 windows)
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
        nrows = out.shape[0] * OD * OH
        sa = dd * H * W  # flat distance between window rows a and a + 1
        sh = dh * W  # ... and b and b + 1
        small = x.shape[1] * H * W < 2 ** 31  # positions within a plane fit int32
        # parallel: at most ~TASKS tasks of at least BLOCK rows (scratch is allocated per task);
        # serial: one task, scratch allocated once
        blk = max(BLOCK, nrows // TASKS) if PAR else max(nrows, 1)
        S = x.shape[1] * H * W
        if BWD:  # a task owns whole planes (its gradient planes are summed in its scratch)
            RP = max(OD * OH, 1)
            blk = RP * (max(1, out.shape[0] // TASKS) if PAR else max(out.shape[0], 1))
        ntask = (nrows + blk - 1) // blk
        for t in prange(ntask):
            # (clamped inside the parallel body, where the compiler sees that they are >= 0)
            lo = max(owlo, 0) if SPEC else OW
            hi = max(owhi, lo) if SPEC else OW
            xb = max(lo * SW - pw, 0)  # first column of the first interior window
            tv = new_full(W, init)
            if BWD:
                ti = new_zeros(W, np.int64)  # flat input position of tv[w] (table-driven rows)
            else:
                ti = new_zeros(W, idx.dtype)
            # backward: a row's argmax positions, and the owned gradient plane being summed
            if BWD:
                cp = new_zeros(OW, np.int64)
                buf = new_full(S, zero)  # (zero again after each plane)
            tr = new_zeros(W, np.int32)  # position of tv[w] relative to base0 (specialised rows)
            sv = tv[xb:]  # interior windows' columns (views made once per task, not per row)
            si = tr[xb:]
            LINE = line_cells(x)  # elements per cache line (a constant)
            VL = vector_lanes(tv, marker)
            q, od, oh = _rows(t * blk, OD, OH)
            for r in range(t * blk, min(nrows, (t + 1) * blk)):
                if r > t * blk:  # next output row: counted on, no divisions
                    q, od, oh = _next_row(q, od, oh, OD, OH)
                d0 = tab[0, 0, od]
                nd = tab[0, 1, od]
                h0 = tab[1, 0, oh]
                nh = tab[1, 1, oh]
                base0 = (d0 * H + h0) * W
                full = SPEC and small and nd == KD and nh == KH
                if PFR:  # the two rows 4 rows below (stride-2 windows; see separable.make_sep)
                    for k in range(0, W, LINE):
                        prefetch(x, (q, d0, h0 + 4 * dh, U(k)))
                        prefetch(x, (q, d0, h0 + 5 * dh, U(k)))
                # vertical pass: (tv, ti)[w] = first max / last NaN over the window's rows
                if DIRECT and full:
                    pass  # the horizontal pass reads x[q, d0, h0] directly
                elif nd == 0 or nh == 0:  # no input row (PyTorch-style padding and dilation)
                    for w in range(W):
                        tv[w] = init
                        ti[w] = base0 + w
                elif full:
                    for w in range(W):
                        m, mi = _col_argmax(x, q, d0, h0, w, dd, dh, sa, sh, KD, KH, marker)
                        tv[w] = m
                        tr[w] = mi + np.int32(w)
                else:
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            rb = (z * H + y) * W
                            if a == 0 and b == 0:
                                for w in range(W):
                                    tv[w] = load(x[q, z, y, w], marker)
                                    ti[w] = rb + w
                            else:
                                for w in range(W):
                                    v = load(x[q, z, y, w], marker)
                                    m = tv[w]
                                    take = (v > m) | (v != v)
                                    tv[w] = v if take else m
                                    ti[w] = (rb + w) if take else ti[w]
                # horizontal pass: specialised interior [lo, hi), table-driven edges
                if full and hi > lo:
                    if DIRECT:
                        for j in range(hi - lo):
                            w = xb + j * SW
                            m = load(x[q, d0, h0, w], marker)
                            mi = w
                            if KW == 2:
                                # (the position as an addition, not a select: LLVM's x86
                                # pass that turns selects in loops into branches made it
                                # one, mispredicted half the time on random data; 1-d k2s2
                                # gradient without indices 14.1 -> 3.9 ms)
                                v = load(x[q, d0, h0, w + 1], marker)
                                take = (v > m) | (v != v)
                                m = v if take else m
                                mi = w + np.int64(take)
                            else:
                                for c in range(1, KW):
                                    v = load(x[q, d0, h0, w + c], marker)
                                    take = (v > m) | (v != v)
                                    m = v if take else m
                                    mi = (w + c) if take else mi
                            if BWD:
                                cp[lo + j] = base0 + mi
                            else:
                                out[q, od, oh, lo + j] = to_storage(m, marker)
                                idx[q, od, oh, lo + j] = base0 + mi
                    else:
                        for j in range(hi - lo):
                            w = j * SW
                            m = sv[w]
                            mi = si[w]
                            for c in range(1, KW):
                                m, mi = _merge(m, mi, sv[w + c], si[w + c])
                            if BWD:
                                cp[lo + j] = base0 + mi
                            else:
                                out[q, od, oh, lo + j] = to_storage(m, marker)
                                idx[q, od, oh, lo + j] = base0 + mi
                elo = lo if full else OW  # edge columns: [0, elo) and [ehi, OW)
                ehi = hi if full else OW
                if DIRECT and full and (elo > 0 or ehi < OW):
                    # edge columns of a direct row: (tv, ti) were not filled
                    for w in range(W):
                        tv[w] = load(x[q, d0, h0, w], marker)
                        ti[w] = base0 + w
                # windows over one row, of two vectors and more, unit-stride (adaptive pooling
                # of long rows): (tv, ti) hold the row and its positions, in order, so the
                # row's scan runs in vectors (_simd.vrun_argmax: ~10x a scalar scan's speed)
                one = dw == 1 and (DIRECT if full else nd * nh == 1)
                runs = one and VL > 0
                for seg in range(2):
                    for ow in range(0 if seg == 0 else ehi, elo if seg == 0 else OW):
                        w0 = tab[2, 0, ow]
                        m = init
                        mi = base0 + w0
                        if runs and tab[2, 1, ow] >= 2 * VL:
                            m, off = vrun_argmax(tv, w0, tab[2, 1, ow], marker)
                            mi = ti[w0 + off]
                        elif one:  # (in order: the row's own first max rule)
                            for w in range(w0, w0 + tab[2, 1, ow]):
                                v = tv[w]
                                take = (v > m) | (v != v)
                                m = v if take else m
                                mi = ti[w] if take else mi
                        else:
                            for c in range(tab[2, 1, ow]):
                                w = w0 + c * dw
                                if full and not DIRECT:
                                    m, mi = _merge(m, mi, tv[w], base0 + tr[w])
                                else:
                                    m, mi = _merge(m, mi, tv[w], ti[w])
                        if BWD:
                            cp[ow] = mi
                        else:
                            out[q, od, oh, ow] = to_storage(m, marker)
                            idx[q, od, oh, ow] = mi
                if BWD:
                    # the row's gradients added at its argmax cells, outputs in order; the
                    # plane written out (rounded once) after its last row.  A window without
                    # an input cell (dilation past the input: PyTorch's -inf) has PyTorch's
                    # position of its first tap past the input, as the forward's index: its
                    # gradient goes there when that lies in the plane (as PyTorch's autograd),
                    # and nowhere when it lies past it
                    for ow in range(OW):
                        c = cp[ow]
                        if c >= 0 and c < S:
                            buf[c] += zero + load(out[q, od, oh, ow], marker)
                    if od == OD - 1 and oh == OH - 1:  # zeroed again for the next plane
                        gq = flat_view(idx[max(q, 0)])
                        for j in range(S):
                            gq[j] = to_storage(buf[j], marker)
                            buf[j] = zero
    return jit(kernel, parallel=parallel)


def make_max_backward(layout, parallel, KD, KH, KW, SW):
    """Channels-first max backward without indices: ``make_max``'s argmax scan, each output
    row's gradients then added at its argmax cells (outputs in order) into a scratch plane of
    the accumulation type that the task owns, written out once.  Arguments as the forward's,
    with ``out`` the grad_output and ``idx`` the grad_input, and ``zero`` the accumulation
    type's zero."""
    return make_max(layout, parallel, KD, KH, KW, SW, backward=True)


@jit
def _tiled_columns(xf, V, A, q, H, W, OH, RS, off, pad, cz, marker):
    """The vertical pass of the tiled kernels for plane ``q``: per output row ``oh``, each
    column's first max / last NaN over the window's rows (rows 2 oh - 1 .. 2 oh + 1 clipped,
    ``pad``, or 2 oh, 2 oh + 1) into ``V[oh * RS + off + w]``, and its row in the padded
    window as a code (3 a) into ``A``; in vectors of columns (``_simd.vtile_col``) on rows at
    least a vector wide."""
    c0 = cz[0]
    c3 = cz[3]
    c6 = cz[6]
    # the codes of a two-row window's rows: the top window of K = 3 starts in the padding
    r0 = c3 if pad else c0
    r1 = c6 if pad else c3
    LINE = line_cells(xf)  # elements per cache line (a constant)
    VL = tile_lanes(xf, marker)
    for oh in range(OH):
        vb = oh * RS + off
        rb = (q * H + (max(2 * oh - 1, 0) if pad else 2 * oh)) * W
        # prefetch the two rows 4 rows below (see separable.make_sep; paired A/B: forward with
        # indices k3s2p1 0.93x the time, backward k3s2p1 0.93x, k2s2 0.95x)
        for k in range(0, 2 * W, LINE):
            prefetch(xf, U(rb + 4 * W + k))
        w0 = 0
        if VL > 0 and W >= VL:  # vectors of columns, the last one ending at the row's end
            while w0 < W:
                wv = min(w0, W - VL)
                if not pad or oh == 0:
                    vtile_col(xf, U(rb + wv), U(rb + W + wv), U(rb + W + wv), V, A,
                              U(vb + wv), (r0, r1), marker)
                else:
                    vtile_col(xf, U(rb + wv), U(rb + W + wv), U(rb + 2 * W + wv), V, A,
                              U(vb + wv), (c0, c3, c6), marker)
                w0 += VL
        if not pad or oh == 0:
            for w in range(w0, W):
                m = load(xf[U(rb + w)], marker)
                v = load(xf[U(rb + W + w)], marker)
                take = (v > m) | (v != v)
                V[U(vb + w)] = v if take else m
                A[U(vb + w)] = r1 if take else r0
        else:
            for w in range(w0, W):
                m = load(xf[U(rb + w)], marker)
                v = load(xf[U(rb + W + w)], marker)
                take = (v > m) | (v != v)
                m = v if take else m
                a = c3 if take else c0
                v = load(xf[U(rb + 2 * W + w)], marker)
                take = (v > m) | (v != v)
                V[U(vb + w)] = v if take else m
                A[U(vb + w)] = c6 if take else a


def make_max_backward_tiled(layout, parallel, K, wide=False):
    """Channels-first max backward without indices for K x K windows (K = 2 or 3) at stride 2
    that tile planes of even height and width (``H == 2 * OH``, ``W == 2 * OW``; padding 1 for
    K = 3, none for K = 2: ResNet's stem, VGG's pools), bit for bit ``make_max_backward``.

    Each output's argmax becomes a code ``a * 3 + c`` (the winning tap's row and column in the
    padded window; ties and NaN as the forward's scan): a vertical pass per output row keeps
    each column's first max / last NaN and its row, then one loop over the whole plane merges
    the windows' columns (``_merge``: the codes order the taps as their flat positions do).
    Each pair of input rows is then written once: every cell is the sum, started at +0 and in
    output order, of the gradients of the windows whose code names it (+0 from the others,
    which changes no bit).  No scratch plane, no scattered adds, no copy out.

    The codes are held in the accumulation type (``cz``: codes 0..8, the padding's code, and
    -1): compares and selects then run in lanes of one width (int32 codes were widened to
    int64 lanes, and the merge took 5x as long).  Arrays are flat and indexed
    ``U(offset + j)``: indexing 3-d arrays with computed rows kept these loops scalar.

    K = 3 merges a vector of windows at a time (``_simd.vtile_merge3``: the columns split into
    even and odd lanes by shuffles) and writes both input rows of a vector of windows at once
    (``_simd.vtile_rows3``: the even and odd cells interleaved by shuffles), the last vector
    ending at the last window, the same sums in the same order (paired A/B, one process, 2
    threads: 32x64x112x112 0.94-0.95x the time, in cache 0.90x; the three passes before took
    2.0, 2.3 and 1.8 of 7.5 us a 112 x 112 plane in cache, one thread).
    Arguments: flat input, grad_output and grad_input, then (planes, H, W, OH, OW).
    ``wide`` (K = 3, at least a vector of windows per output row: the plan checks): no scalar
    loops after the vectors (less to compile on a first call)."""
    assert K in (2, 3)
    PAR = parallel
    PAD = K == 3  # (K = 3: padding 1 on every side)
    WIDE = PAD and bool(wide)  # (see the docstring)

    def kernel(xf, gf, ginf, P, H, W, OH, OW, cz, init, nt, zero, marker):
        VL = tile_lanes(cz, marker)  # windows per vector (the accumulation type's lanes)
        # row stride of the codes and shares; K = 3 reads window m + 1, a zero-share slot
        # after each row, and rounds the stride up to half a vector, so that the rows of V
        # and A (twice as long) and of the codes start on cache lines (_intrinsics.lined_full)
        HV = max(VL // 2, 1)
        CS = (OW + HV) // HV * HV if PAD else OW
        c0 = cz[0]
        c1 = cz[1]
        c2 = cz[2]
        c3 = cz[3]
        c4 = cz[4]
        c5 = cz[5]
        c6 = cz[6]
        c7 = cz[7]
        c8 = cz[8]
        cbig = cz[9]  # padding columns: never the first maximum, never a NaN
        cm1 = cz[10]  # no window (the row past the last)
        NC = (OH + 1) * CS + 1
        bp = max(1, P // TASKS) if PAR else max(P, 1)
        ntask = (P + bp - 1) // bp
        for t in prange(ntask):
            # row stride of V / A: column w at PL + w (K = 3: padding at 0 and from W + 1 on;
            # window m of a row merges columns 2 m .. 2 m + 2).  The vector stores of the three
            # passes start on cache lines where the row strides allow (see _intrinsics.lined_full)
            RS = 2 * CS if PAD else W
            PL = 1 if PAD else 0
            V = lined_full(OH * RS + 3, init, PL)
            A = lined_full(OH * RS + 3, cbig, PL)
            CD = lined_full(NC, cm1, 0)
            G = lined_full(NC, zero, 0)
            # nt: the task's planes (one run of gin) are built in ``PS`` and streamed out as
            # their rows are done
            q0 = t * bp
            q1 = min(P, (t + 1) * bp)
            PS = lined_empty((q1 - q0) * H * W if nt else 1, ginf, 0)
            dst = PS if nt else ginf
            done = 0
            # the task's next plane (input and gradients) is prefetched while this one's rows
            # are written, a share per output row (cells per share: whole cache lines)
            HWp = H * W
            OHW = OH * OW
            LINEp = line_cells(xf)
            PFX = (HWp + OH * LINEp - 1) // (OH * LINEp) * LINEp
            PFG = (OHW + OH * LINEp - 1) // (OH * LINEp) * LINEp
            for q in range(q0, q1):
                _tiled_columns(xf, V, A, q, H, W, OH, RS, PL, PAD, cz, marker)
                for oh in range(OH):
                    b = oh * CS
                    gb = (q * OH + oh) * OW
                    for j in range(OW):
                        G[U(b + j)] = zero + load(gf[U(gb + j)], marker)
                # the windows of all rows in one loop (2 columns apart throughout); K = 3:
                # each row's extra slot gets a code too, harmless: its share is 0.  K = 3 in
                # vectors of windows, the last one ending at the last window
                NW = OH * CS
                k0 = 0
                if PAD and (WIDE or (VL > 0 and NW >= VL)):
                    while k0 < NW:
                        vtile_merge3(V, A, min(k0, NW - VL), CD, c1, c2, marker)
                        k0 += VL
                if not WIDE:  # (wide rows: the vectors covered every window)
                    for k in range(k0, NW):
                        m = V[2 * k]
                        ci = A[2 * k]
                        m, ci = _merge(m, ci, V[2 * k + 1], A[2 * k + 1] + c1)
                        if PAD:
                            m, ci = _merge(m, ci, V[2 * k + 2], A[2 * k + 2] + c2)
                        CD[k] = ci
                for i in range(OH):
                    b = i * CS
                    bn = b + CS
                    o0 = ((q - q0 if nt else q) * H + 2 * i) * W
                    o1 = o0 + W
                    if nt:
                        done = stream_upto(PS, done, o0, ginf, q0 * H * W, marker)
                    if q + 1 < q1:
                        for k in range(i * PFX, min(i * PFX + PFX, HWp), LINEp):
                            prefetch(xf, U((q + 1) * HWp + k))
                        for k in range(i * PFG, min(i * PFG + PFG, OHW), LINEp):
                            prefetch(gf, U((q + 1) * OHW + k))
                    if not PAD:
                        # K = 2: cell (2i + a, 2m + c) is tap (a, c) of window (i, m) alone
                        for a in range(2):
                            oa = o0 + a * W
                            ka = c3 if a == 1 else c0
                            kb = c4 if a == 1 else c1
                            for m_ in range(OW):
                                k00 = CD[U(b + m_)]
                                g00 = G[U(b + m_)]
                                dst[U(oa + 2 * m_)] = to_storage(
                                    zero + (g00 if k00 == ka else zero), marker)
                                dst[U(oa + 2 * m_ + 1)] = to_storage(
                                    zero + (g00 if k00 == kb else zero), marker)
                        continue
                    # K = 3: input rows 2i (window row i, a = 1) and 2i + 1 (rows i, a = 2,
                    # and i + 1, a = 0); column 2m is tap c = 1 of window m, column 2m + 1
                    # tap 2 of window m and tap 0 of window m + 1.  Gradients are added in
                    # output order.  Vectors of windows (both rows at once), the last one
                    # ending at the row's last window, then the scalar loops for the rest
                    m0 = 0
                    if WIDE or (VL > 0 and OW >= VL):
                        while m0 < OW:
                            mv = min(m0, OW - VL)
                            vtile_rows3(CD, G, b + mv, bn + mv,
                                        (c0, c1, c2, c3, c4, c5, c6, c7, c8), dst,
                                        o0 + 2 * mv, o1 + 2 * mv, marker)
                            m0 += VL
                    if not WIDE:  # (wide rows: the vectors covered every window)
                        for m_ in range(m0, OW):
                            k00 = CD[U(b + m_)]
                            k01 = CD[U(b + m_ + 1)]
                            g00 = G[U(b + m_)]
                            g01 = G[U(b + m_ + 1)]
                            dst[U(o0 + 2 * m_)] = to_storage(zero + (g00 if k00 == c4 else zero),
                                                              marker)
                            dst[U(o0 + 2 * m_ + 1)] = to_storage(
                                (zero + (g00 if k00 == c5 else zero)) +
                                (g01 if k01 == c3 else zero), marker)
                        for m_ in range(m0, OW):
                            k00 = CD[U(b + m_)]
                            k01 = CD[U(b + m_ + 1)]
                            k10 = CD[U(bn + m_)]
                            k11 = CD[U(bn + m_ + 1)]
                            g00 = G[U(b + m_)]
                            g01 = G[U(b + m_ + 1)]
                            g10 = G[U(bn + m_)]
                            g11 = G[U(bn + m_ + 1)]
                            dst[U(o1 + 2 * m_)] = to_storage(
                                (zero + (g00 if k00 == c7 else zero)) +
                                (g10 if k10 == c1 else zero), marker)
                            dst[U(o1 + 2 * m_ + 1)] = to_storage(
                                (((zero + (g00 if k00 == c8 else zero)) +
                                  (g01 if k01 == c6 else zero)) +
                                 (g10 if k10 == c2 else zero)) + (g11 if k11 == c0 else zero),
                                marker)
            if nt:
                stream_upto(PS, done, -(q1 - q0) * H * W, ginf, q0 * H * W, marker)
                sfence()
    return jit(kernel, parallel=parallel)


def make_max_tiled(layout, parallel, K):
    """Channels-first max with indices for 3x3 windows at stride 2 with padding 1 tiling even
    planes (``make_max_backward_tiled``'s K = 3), the same values and indices as ``make_max``.
    (For 2x2 windows ``make_max`` was faster: this scheme took 1.2-1.35x the time.)

    The same vertical pass and codes; the merge is one loop over the plane's windows, each
    row's first window then merged again without its padding column (which the flat layout
    fills with the previous row's last column); values and flat positions are written for the
    whole plane in one loop: ``B2[k]`` (the position of window k's padded first tap, computed
    once per call) plus the code's row times W plus its column.  Arguments: flat input, output
    and indices, (planes, H, W, OH, OW), ``B2``, the codes ``cz`` in the value type, ``init``."""
    assert K == 3
    PAR = parallel

    def kernel(xf, of, idf, P, H, W, OH, OW, B2, cz, init, marker):
        c1 = cz[1]
        c2 = cz[2]
        cbig = cz[9]
        S = OH * OW
        bp = max(1, P // TASKS) if PAR else max(P, 1)
        ntask = (P + bp - 1) // bp
        for t in prange(ntask):
            # column w of output row i's window rows at 1 + i * W + w (W == 2 * OW: window
            # k = i * OW + j starts at 2 * k)
            V = lined_full(OH * W + 3, init, 1)
            A = lined_full(OH * W + 3, cbig, 1)
            VM = lined_full(S, init, 0)
            CD = lined_full(S, cbig, 0)
            for q in range(t * bp, min(P, (t + 1) * bp)):
                _tiled_columns(xf, V, A, q, H, W, OH, W, 1, True, cz, marker)
                for k in range(S):
                    m = V[2 * k]
                    ci = A[2 * k]
                    m, ci = _merge(m, ci, V[2 * k + 1], A[2 * k + 1] + c1)
                    m, ci = _merge(m, ci, V[2 * k + 2], A[2 * k + 2] + c2)
                    VM[k] = m
                    CD[k] = ci
                for i in range(OH):  # each row's first window, without its padding column
                    k = i * OW
                    m, ci = _merge(V[2 * k + 1], A[2 * k + 1] + c1, V[2 * k + 2],
                                   A[2 * k + 2] + c2)
                    VM[k] = m
                    CD[k] = ci
                qo = q * S
                for k in range(S):
                    of[U(qo + k)] = to_storage(VM[k], marker)
                    kk = np.int32(CD[k])
                    a = (kk >= 3) * 1 + (kk >= 6) * 1
                    idf[U(qo + k)] = B2[k] + a * W + (kk - 3 * a)
    return jit(kernel, parallel=parallel)
