"""Channels-first window kernels without indices: a vertical pass, then a horizontal pass.

For one output row ``(plane, od, oh)`` the rows of its window (the (z, y) taps) are reduced
into a scratch row ``tmp[0:W]`` with unit-stride, vectorisable loops; the horizontal pass then
reduces ``tmp`` over each window's W taps.  Every input row is read once per output row that
uses it, from cache, so the kernels run close to the memory floor.

Hot shapes get kernels specialised on the window as compile-time constants ``(KD, KH, KW, SW)``:
interior rows then reduce their KD*KH input rows in one unrolled, vectorised loop, and interior
columns their KW taps of ``tmp``; channels-first edge columns read a scratch row padded with
the neutral value, channels-last ones fall back to table-driven loops (``KW = 0`` means a
kernel that is table-driven everywhere).  Rows are handed out in blocks so that the scratch
rows are allocated once per block.

``kind``: "max" (NaN-propagating, first max), "avg" (divisor rules as in ``window.make_sum``),
"lp" (PyTorch's Lp definition).
"""
import numpy as np
from numba import prange

from ._intrinsics import load, to_storage, flat_view, new_full
from ._simd import (vector_lanes, vsum_run, vdiv, int_lanes, ipair_row, hwin32_max, hwin32_avg,
                    hwin22_max, fwin22_max, fwin22_avg, fwin22_maxi, fwin22x4_max, fwin22_maxfold,
                    vcol2_max, vcol2_sum, vcol3_max, vcol3_sum, prefetch, vpair_max, vpair_pmax,
                    rows_nan, hwin31_max, hwin31_pmax, hwin51_max, hwin51_pmax, hwin71_max,
                    hwin71_pmax, AHEAD, ahead_cells, line_cells, stream_lines, streams, sfence,
                    vrun_argmax, vwin1_max, vwin1_avg, vwin2_max, vwin2_avg, vwin3_max, vwin3_avg)
from .window import divide, _next_row, _rows, U, tpow
from .._runtime import host_is_amd

BLOCK = 8  # fewest output rows per parallel task
FLAT_ROWS = 16  # rows finished together by the flat horizontal pass, at most
FLAT_CELLS = 4096  # and at most this many scratch cells
FLAT_MAX_ROW = 48  # for scratch rows of at most this many cells
TASKS = 512  # parallel tasks per call, at most (enough to balance the threads)
# make_sep: rows this long prefetch PFD rows ahead, shorter ones AHEAD bytes (see make_sep)
NEAR_ROW_BYTES = 1024
# make_sep's 1-row windows stream their output rows (scratch row, streaming stores) for results
# of this many bytes and more: max1d k3s2 64x256x4096 float32 0.90-0.92x the time (paired, one
# process, 2 threads); a smaller result stays in the cache for whoever reads it next
ROW_STREAM_MIN_BYTES = 8 << 20
# make_sep's channels-last max rows (CLROW): output rows of at most this many bytes, which stay
# in a core's cache while the window's input rows are folded into them
CL_ROWWISE_BYTES = 256 << 10
# The fast-math flags of the average and Lp kernels (max kernels have none): contraction only.
# Sums over a window's taps keep their order, so that a result has the same bits on every CPU:
# with "reassoc" too, the compiler turned an edge window's scalar loop over its taps into
# gathers on a Xeon and a float64 1-d average came out 1 ULP off the in-order sum (the same
# code kept the order on an EPYC)
SUM_MATH = {"contract"}
SAME_UNITS = 64  # make_same: split planes into row blocks when there are fewer planes than this
SAME_ROWS = 16  # ... of at least this many rows


def _jit_inline(fn):
    from .._runtime import jit
    return jit(fn)


def make_sep(kind, parallel, KD, KH, KW, SW, channels_last=False, fused_only=False,
             integer=False, wide=False):
    """``channels_last``: x is (N, D, H, W*C) and out (N, OD, OH, OW*C) with C innermost; the
    vertical pass then runs over whole W*C rows and the horizontal one over C-vectors.

    ``fused_only`` (non-overlapping windows along W, ``KW == SW``, KD 1; max and average):
    the plan guarantees that every row is fused (every window whole, no column an edge,
    channels-first rows too long for the flat groups: see ``fused_rows``); the kernel then
    holds the fused rows' code alone (a first call of max k2s2 (8, 64, 56, 56) compiles ~1 s
    less).

    ``integer``: the input is an integer array (not float16 bits); a kernel then holds the
    integer vectors alone, and a float one the float vectors alone (the other kind's code,
    typed and lowered for nothing, took a third of a float32 k2s2 kernel's compile time).

    ``wide`` (channels-first float rows, unit-stride, whose input rows and interior output
    columns are each at least a vector wide: see ``wide_rows``): the vertical and horizontal
    vectors cover every row, so the kernel holds no scalar loops after them.  Channels-last
    max of non-overlapping windows along W (C-vectors of a cache line or more, output rows
    that stay in the cache: see ``rowwise_rows``): whole rows fold the window's input rows in
    turn (``CLROW``).

    The loops index the input and output directly instead of taking per-row views: a view costs
    two atomic updates of the array's reference count, which every thread shares, and that cost
    more than a short row's arithmetic.  Views are taken only of task-local scratch (once per
    task for channels-first rows, once per output cell for channels-last C-vectors), and
    offsets are clamped at 0 inside the parallel body so that the compiler can drop
    negative-index handling and vectorise.
    """
    PAR = parallel  # serial variants run all rows as one task
    MAX = kind == "max"
    POWER = kind == "lp"
    SPEC = KW > 0
    assert not (SPEC and POWER), "Lp kernels are table-driven (powers in the vertical pass)"
    CLAST = channels_last
    # table-driven channels-first rows (windows dilated along W, Lp, regular windows of large
    # calls before their specialised kernel): the whole windows of a regular window, [owlo,
    # owhi) from the plan, in vectors of outputs (float max and average at strides 1 to 3:
    # _vwin_run; 1-row windows over an unpadded row read the input row, no vertical pass) or
    # tap by tap over the row (_table_run), instead of a scalar loop over each window's taps.
    # Float32 on a 2-core EPYC, interleaved in one process: max1d (16, 256, 4096) k3s1
    # dilation 2 19.2 -> 3.6 ms (PyTorch 21 ms), k3s2 d2 11.7 -> 2.6 ms (PyTorch 3.5 ms), k5s3
    # d3 p2 13.2 -> 3.7 ms (3.9 ms); max2d (16, 64, 112, 112) k3s1 d2 p1 14.5 -> 4.2 ms;
    # avg1d k3s2 d2 12.8 -> 2.3 ms.  (The vectors' tap loop is not unrolled, and strides of 4
    # or more take the scalar loop: a first call of max1d k3s1 d2 compiled in 2.5-3.0 s, not
    # 3.3-4.1 s; 1.8-1.9 s before the vectors.)
    TABLE_RUNS = not SPEC and not CLAST
    # non-overlapping windows along W (channels-first, specialised): a task's rows can be
    # finished together, one flat loop over several rows' cells, when no column is an edge
    FLATK = SPEC and not CLAST and KW <= SW
    # specialised, channels-first or max: the scratch row has `init` (max: the lowest value,
    # sums: 0) on both sides, so edge windows reduce their KW taps like interior ones, the
    # missing taps reading the neutral padding (an average then divides by the column's own tap
    # count); max rows then have no edge columns at all (channels-last: no table-driven edge
    # loops over C-vectors, less code to compile)
    PADT = SPEC and (MAX or not CLAST)
    # non-overlapping 1-d/2-d windows along W (channels-first, specialised), rows too long for
    # the flat groups: rows whose columns are all interior reduce straight from the input, in
    # PyTorch's row-major tap order (k2s2: 9-24% faster; 3-d windows gained nothing)
    # Channels-first 2 x 2 x 2 max windows at stride 2 (float) too, in vectors of their four
    # rows (fwin22x4_max), both depth slices' rows prefetched: (4, 32, 32, 64, 64) on a 2-core
    # EPYC, alternated processes, float32 0.86-0.97x the time of the separable passes, float64
    # 0.91-0.94x, in the cache (N = 1) 0.86x; without the second slice's prefetch 1.0-1.1x
    VF3 = SPEC and not CLAST and MAX and not integer and KD == 2 and KH == 2 and KW == 2 and \
        SW == 2 and PAR
    FUSEK = SPEC and not CLAST and (VF3 or fuses_channels_first(KD, KH, KW, SW, MAX))
    # (F2 > 1: channels-first rows fused in two stages)
    F1, F2 = row_factors(KD, KH, KW, SW) if FUSEK else (KW, 1)
    # channels-last max / average of non-overlapping windows along W: rows whose every window
    # is whole reduce each output C-vector from the input in row-major tap order (as the
    # channels-first fused rows), no scratch row (max k2s2 (16, 128, 112, 112) 0.88x the time,
    # paired in one process; and the bits of PyTorch's scan where a window holds both zeros,
    # which the separable passes did not keep).  3-d windows too for max (4x32x64x64x32 k2s2
    # on a 2-core EPYC 0.95x the time); the average keeps its separable passes there (1.17x,
    # and their order of additions)
    FUSEC = SPEC and CLAST and not POWER and KW == SW and (KD == 1 or MAX)
    FONLY = (FUSEK or FUSEC) and fused_only
    INTEGER = bool(integer)
    WIDE = bool(wide) and not CLAST and not INTEGER
    assert FONLY == fused_only, "fused_only needs a fused (KW == SW) kernel"
    # explicit vectors (_simd.py) for float rows, channels-first: the fused 2x2 windows (paired
    # A/B against the scalar loop: float16 0.54-0.85x the time, float64 0.89-0.94x, float32
    # 1.0x on long rows, 0.69-0.87x on 28- to 48-wide planes), the vertical pass of 2- and
    # 3-row windows and the horizontal pass of 3-wide (max, average) and 2-wide (max) windows
    # at stride 2 (average k3s2p1 56x56: float32 0.95x, float16 0.86x; max 1.0x, float16
    # 0.94-0.98x).  The last vector of a row ends at the row's end, overlapping the one before
    # (the same values written twice) rather than leaving a scalar tail.
    # software prefetch of the input rows PFD rows below the window, as the vector rows walk
    # along (fused 2x2 rows, and the vertical pass at stride 2): the hardware prefetcher alone
    # left the loads waiting (paired A/B: k2s2 float64 0.82-0.95x the time, float32
    # 0.95-0.99x; k3s2p1 float32 0.85x, float64 0.87x; average k3s2p1 0.95x).  At stride 1 the
    # same prefetches cost 1.13x (k3s1p1), and a next-plane prefetch in make_flat 1.03-1.13x.
    # Rows shorter than NEAR_ROW_BYTES prefetch AHEAD bytes ahead instead (PFD rows of 224
    # bytes are under 1 KiB): average k3s2p1 32x64x56x56 0.82-0.95x the time, max 0.91-0.92x
    # (2 threads, paired A/B, not flushed; flushed 0.95x); 2 KiB ahead measured as PFD rows,
    # and 8 KiB on 448-byte rows 1.01x there, but 0.79-0.85x on a Xeon with a 300 MB L3, so
    # rows under 1 KiB now prefetch AHEAD bytes (on that Xeon the fused rows' input 8 KiB ahead
    # measured 0.93-0.94x, against 1.10x before: they keep PFD rows).  The fused 2x2 rows also
    # prefetch the output AHEAD bytes past each vector, the line a plain store first reads
    # (float32 16x128x112x112 0.91-0.96x the time, float64 1.0x; not float16: 1.18x).
    # Float max 2x2 windows read both rows in the fused vectors at every width: with these
    # prefetches, long rows took 0.71-0.77x the time of the earlier pass over each row on its
    # own before combining the two (paired A/B, 2 threads, caches flushed: float64
    # 16x64x112x112 0.74x, float32 224 wide 0.76x, 448 wide 0.79x, float16 448 wide 0.63x;
    # not flushed 0.71-0.92x).  Integer max 2x2 windows run one row at a time, in explicit
    # vectors of pair maxima (the compiler's loop read both rows: uint8
    # 16x3x512x512 0.93-0.95x the time, 112 wide 0.91x, int16 224 wide 0.93x, int32 200 wide
    # 0.58x; both rows in one vector loop: uint8 1.27-1.35x, int32 0.85x)
    # The vectors and prefetches are in the parallel kernels only: serial ones run small calls,
    # whose time is mostly the call's fixed cost, and without them a serial kernel's first
    # call in a fresh process compiles in 1.6-1.8 s instead of 2.0-2.6 s (max k3s2p1)
    PFD = 4
    # (fused 2x2 rows: float32 16x128x112x112, 448-byte rows, on a 2-core EPYC with a 32 MB
    # L3, paired in one process: 8 rows below 0.86-0.91x the time of 4, 16 rows 0.87-0.95x;
    # float64, 896-byte rows: 8 rows 0.89-1.07x: FUSE_AHEAD bytes of rows)
    FUSE_AHEAD = 3584
    # (the output prefetch: not on AMD cores, where the same rows took 0.91-0.96x the time
    # without it, float32 and float64, 448- and 896-byte rows, paired in one process; the
    # stride-1 rows of make_same keep theirs: 0.97-1.03x)
    OPF = not host_is_amd()
    PFV = SW == 2 and PAR
    VFUSE = FUSEK and KH == 2 and KW == 2 and SW == 2 and not POWER and PAR
    # channels-last fused rows: a prefetch of each output cell's window columns KH rows below
    # (the next output row's window at stride KH): max k2s2 (16, 128, 112, 112), past a 32 MB
    # L3 on a 2-core EPYC, 0.65-0.80x the time, a copy-like kernel 0.75x (2 rows below; 4 rows:
    # 0.80-1.0x)
    PFC = FUSEC and PAR
    # channels-last max of those windows, output rows of at most CL_ROWWISE_BYTES: the window's
    # input rows one after another, each row's KW-tap maxima folded into the output row (still
    # in the cache) as the row-major scan would fold them, and the input prefetched AHEAD
    # bytes on along the row being read: one input stream at a time, in memory order where the
    # window's rows are adjacent (max k2s2 (16, 128, 112, 112) on a 2-core EPYC, paired in one
    # process: 0.72-0.86x the time of the output cells' row-major taps with PFC's prefetches;
    # float64 0.83x, float16 0.90x, 3-d (4, 32, 64, 64, 32) 0.88x).  The plan asks for it
    # (``wide``, see ``rowwise_rows``) where the C-vectors are a cache line or more: 3 channels
    # took 1.19-1.40x the time, 16 float32 channels 0.98x; and a kernel that merely holds
    # these loops ran the cell loop below 1.06x slower (3 float32 channels)
    CLROW = FUSEC and MAX and PAR and bool(wide)
    # channels-first 3-d windows (KD > 1): the vertical pass, a compiler loop, prefetches each
    # of the window's rows AHEAD bytes on (later rows of the same depth slices): max k2s2
    # (4, 32, 32, 64, 64) past a 32 MB L3, 2-core EPYC, paired in one process, 0.85x the time
    # (channels-last rows, 8 KiB here: 1.05x, so not there)
    # Windows of more than 3 rows too (no vertical vectors there), at strides of 2 or more
    # along W (standing for the rows' stride, not a constant): max2d (16, 64, 112, 112) k4s3p1
    # 6.3 -> 2.5 ms, k5s3p2 5.2 -> 2.9 ms, average k5s3p2 5.3 -> 2.6 ms; at stride 1 (k5s1)
    # 1.1-1.3x the time
    PF3 = SPEC and (KD > 1 or (KH > 3 and SW > 1)) and PAR and not POWER and not CLAST
    # channels-last max of 3-row windows too: its vertical pass is the same elementwise
    # reduction of rows (W * C long).  On a 2-core Xeon, the kernel alone, paired in one
    # process: max k3s2p1 (32, 64, 112, 112) 0.87-0.91x the time; 2-row windows (k2s2) and the
    # average 0.96-1.06x, so they keep the compiler's loop
    VCOL = SPEC and (not CLAST or (MAX and KH == 3)) and KD == 1 and (KH == 2 or KH == 3) and \
        not POWER and PAR
    VROW = SPEC and not CLAST and SW == 2 and (KW == 3 or (KW == 2 and MAX)) and not POWER and \
        PAR
    # the other channels-first windows at strides 2 and 3 (float max and average): the interior
    # columns in vectors of outputs (_vwin_max2 ...), where the compiler's loop over them
    # gathered its strided taps, 1-row windows over an unpadded row straight from the input
    # row (``hdir``): max1d (16, 256, 4096) float32 on a 2-core EPYC, interleaved in one
    # process, k4s3 6.1 -> 3.2 ms (PyTorch 4.9 ms), k5s2 10.4 -> 3.8 ms, avg1d k5s3 5.4 ->
    # 3.3 ms
    HVEC = SPEC and not CLAST and not POWER and PAR and not VROW and (SW == 2 or SW == 3)
    # 1-row windows (1-d pooling) whose every window lies inside the row: the horizontal
    # vectors read the input row itself, no scratch row copied first
    VROW1 = VROW and KD == 1 and KH == 1
    # (the kernel may only close over constants: a jitted function in a closure cell changes
    # Numba's cache key in every process, so nothing would ever load from the cache)

    def kernel(x, out, tab, dil, owlo, owhi, pw, divmode, dov, init, p, knumel, C, marker):
        W = x.shape[3]  # W * C for channels-last
        OD = out.shape[1]
        OH = out.shape[2]
        Cn = max(C, 1) if CLAST else 1  # a compile-time 1 for channels-first
        OW = out.shape[3] // Cn
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        nrows = out.shape[0] * OD * OH
        # parallel: at most ~TASKS tasks of at least BLOCK rows (scratch is allocated per task);
        # serial: one task, scratch allocated once
        blk = max(BLOCK, nrows // TASKS) if PAR else max(nrows, 1)
        ntask = (nrows + blk - 1) // blk
        pz = init + p
        invz = init + 1.0 / p
        knz = init + knumel
        p2 = p == 2.0
        p1 = p == 1.0
        one = init + 1  # (tpow's 1)
        for t in prange(ntask):
            # (clamped inside the parallel body, where the compiler sees that they are >= 0)
            Cn = max(C, 1) if CLAST else 1
            # interior columns [lo, hi): full windows (KW taps in range and in the padded extent)
            # (table-driven channels-first kernels: [owlo, owhi) are the regular windows' whole
            # ones, at any dilation, or empty: see TABLE_RUNS)
            lo = max(owlo, 0) if SPEC else (OW if CLAST else min(max(owlo, 0), OW))
            hi = max(owhi, lo) if SPEC else (OW if CLAST else min(max(owhi, lo), OW))
            # flat rows: the vertical pass of up to G rows goes to tmp[rl * TS:], at the stride
            # TS = OW * SW of the output's cells, and one loop then finishes all of them
            TS = max(OW * SW, 1)
            # (only short rows gain: on long ones the larger scratch costs more than it saves)
            # outputs per vector (0: an integer dtype, no vectors); unit-stride rows
            L = vector_lanes(x, marker) if (VFUSE or VROW or VCOL) and not INTEGER else 0
            xunit = x.strides[3] == x.itemsize
            ounit = out.strides[3] == out.itemsize
            flat = not FONLY and FLATK and lo == 0 and hi == OW and TS <= FLAT_MAX_ROW and \
                not (VFUSE and L > 0 and xunit and ounit and OW >= L)
            # 1-row windows all inside the row: the horizontal vectors read the input row
            row1 = VROW1 and L > 0 and xunit and ounit and not flat and owlo <= 0 and \
                owhi >= OW and pw == 0 and OW >= L and (OW - 1) * SW + KW <= W
            G = max(1, min(FLAT_ROWS, FLAT_CELLS // TS)) if flat else 1
            # rows the vertical vectors prefetch ahead: AHEAD bytes' worth on short rows
            pfr = PFD
            # prefetch distances in cells, constants (``a.itemsize`` is loaded at run time: a
            # division by it stayed inside the vector loops)
            ahx = ahead_cells(x)
            aho = ahead_cells(out)
            # the fused 2x2 rows' prefetch: PFD rows below, or FUSE_AHEAD bytes of rows where
            # that is more
            pff = max(PFD, FUSE_AHEAD // max(W * x.itemsize, 1))
            if PFV:  # (pruned from the serial kernels, as the prefetches)
                if W * x.itemsize < NEAR_ROW_BYTES:
                    pfr = max(PFD, AHEAD // max(W * x.itemsize, 1))
            TW = TS if flat else W  # columns the vertical pass computes
            # padded scratch row: tmp[PADL + w] holds column w
            PADL = max(pw, 0) if (PADT and not flat) else 0
            PADR = max((OW - 1) * SW - pw + KW - W // Cn, 0) if PADT else 0
            # every column's window inside the row (none partial, none in the padding): the
            # row's output cells (channels-last: C-vectors) reduce straight from the input
            fused = ((FUSEK and not flat) or FUSEC) and lo == 0 and hi == OW
            if PADT and MAX and not flat:  # max: no divisor, every column is interior
                lo = 0
                hi = OW
            tb = max(PADL + lo * SW - pw, 0) * Cn  # tmp offset of the first interior window
            # (rows that are all fused use no scratch row but the two-stage rows' tmp[0:OW*F2])
            tmp = new_full(OW * F2 if FONLY else (PADL + PADR) * Cn + max(G * TS, W), init)
            VT = vector_lanes(tmp, marker)  # (0: integer rows)
            # large results of 1-row windows: each output row built in tmp and streamed out
            # (see ROW_STREAM_MIN_BYTES)
            nts = VROW1 and row1 and streams(tmp, out, marker) and \
                out.size * out.itemsize >= ROW_STREAM_MIN_BYTES
            tv = tmp[tb:]  # interior windows' columns (one view per task, not per row)
            hv = new_full(Cn, init)  # one output cell of an edge column
            # (TABLE_RUNS: the whole windows' running maxima or sums; float max and average
            # windows at strides 1 to 3 in vectors of outputs (_simd.vwin*), 1-row windows
            # over an unpadded row straight from the input row, without the vertical pass)
            tst = tab[2, 0, lo + 1] - tab[2, 0, lo] if (TABLE_RUNS and hi - lo > 1) else 1
            tvec = TABLE_RUNS and not POWER and hi > lo and VT > 0 and ounit and 1 <= tst <= 3
            acc = new_full(OW if (TABLE_RUNS and hi > lo and not tvec) else 1, init)
            tdir = tvec and xunit and lo == 0 and hi == OW
            # (HVEC: 1-row windows over an unpadded row, all of them whole, read the input row;
            # not the flat groups' rows, which their vertical pass gathers)
            hdir = HVEC and KD == 1 and KH == 1 and VT > 0 and xunit and ounit and pw == 0 and \
                owlo <= 0 and owhi >= OW and not flat
            outf = flat_view(out)  # (flat rows only; a view per task)
            rl = 0  # rows in the current flat group
            g0 = 0  # its first row
            gdiv = 0  # its divisor
            q, od, oh = _rows(t * blk, OD, OH)
            rend = min(nrows, (t + 1) * blk)
            fdh = 0
            d0 = nd = h0 = nh = 0
            for r in range(t * blk, rend + 1):  # one step past the rows: the last flat group
                if r < rend:
                    if r > t * blk:  # next output row: counted on, no divisions
                        q, od, oh = _next_row(q, od, oh, OD, OH)
                    d0 = tab[0, 0, od]
                    nd = tab[0, 1, od]
                    h0 = tab[1, 0, oh]
                    nh = tab[1, 1, oh]
                    # divisor of the row's windows: fdh times the taps along W
                    fdh = tab[0, 2, od] * tab[1, 2, oh] if divmode == 1 else nd * nh
                if flat and rl > 0 and (r == rend or rl == G or fdh != gdiv):
                    # finish the group: out[g0 * OW + i] reduces tmp[i * SW : i * SW + KW]
                    div = dov if divmode == 0 else gdiv * KW
                    ob = max(g0 * OW, 0)
                    for i in range(rl * OW):
                        m = tmp[i * SW]
                        for c in range(1, KW):
                            v = tmp[i * SW + c]
                            if MAX:
                                m = v if ((v > m) | (v != v)) else m
                            else:
                                m += v
                        outf[ob + i] = to_storage(m, marker) if MAX else \
                            _lp_norm(m, div, knz, invz, p1, p2, marker) if POWER else \
                            to_storage(divide(m, div), marker)
                    rl = 0
                if r == rend:
                    break
                gb = PADL * Cn
                if flat:
                    if rl == 0:
                        g0 = r
                        gdiv = fdh
                    gb = max(rl * TS, 0)
                    rl += 1
                if FUSEK or FUSEC:  # (pruned at compile time elsewhere)
                    if FONLY or (fused and nd == KD and nh == KH):
                        # non-overlapping windows, every column interior: each output cell reduces
                        # its KD * KH * KW input taps at once (row-major, PyTorch's scan order),
                        # no scratch row; channels-first rows in vectors of cells below
                        div = dov if divmode == 0 else fdh * KW
                        j0 = 0
                        if INTEGER and MAX and VFUSE and int_lanes(x, marker) > 0 and xunit and \
                                ounit and OW >= int_lanes(x, marker):
                            # integers: one row at a time, vectors of pair maxima (ipair_row),
                            # the second row's folded into the first's in the output row; the
                            # last vector ends at the row's end
                            for b in range(2):
                                j0 = 0
                                while j0 < OW:
                                    jv = min(j0, OW - int_lanes(x, marker))
                                    ipair_row(x, (q, d0, h0 + b * dh, U(2 * jv)), out,
                                              (q, od, oh, U(jv)), b == 1, marker)
                                    j0 += int_lanes(x, marker)
                        if VFUSE and L > 0 and xunit and ounit and OW >= L:
                            # vectors at L-steps, the last one ending at the row's end (it may
                            # overlap the one before: the same values written twice, no
                            # scalar tail)
                            while j0 < OW:
                                jv = min(j0, OW - L)
                                r0 = (q, d0, h0, U(2 * jv))
                                r1 = (q, d0, h0 + dh, U(2 * jv))
                                prefetch(x, (q, d0, h0 + pff * dh, U(2 * jv)))
                                prefetch(x, (q, d0, h0 + (pff + 1) * dh, U(2 * jv)))
                                if VF3:  # (and the second depth slice's rows)
                                    prefetch(x, (q, d0 + dd, h0 + pff * dh, U(2 * jv)))
                                    prefetch(x, (q, d0 + dd, h0 + (pff + 1) * dh, U(2 * jv)))
                                if OPF and x.itemsize >= 4:  # the output line a store
                                    prefetch(out, (q, od, oh, U(jv + aho)))  # reads, ahead
                                if VF3:
                                    fwin22x4_max(x, r0, r1, (q, d0 + dd, h0, U(2 * jv)),
                                                 (q, d0 + dd, h0 + dh, U(2 * jv)), out,
                                                 (q, od, oh, U(jv)), div, marker)
                                elif MAX:
                                    fwin22_max(x, r0, r1, out, (q, od, oh, U(jv)), div, marker)
                                else:
                                    fwin22_avg(x, r0, r1, out, (q, od, oh, U(jv)), div, marker)
                                j0 += L
                        if F2 > 1:
                            # wide 1-row windows in two stages (see row_factors): groups of F1
                            # taps into the scratch row, then F2 of those per output
                            for j2 in range(OW * F2):
                                xb = max(j2 * F1, 0)
                                m = load(x[q, d0, h0, U(xb)], marker)
                                if not MAX:
                                    m = init + m
                                for c in range(1, F1):
                                    v = load(x[q, d0, h0, U(xb + c)], marker)
                                    m = _pick(m, v) if MAX else m + v
                                tmp[j2] = m
                            for j in range(OW):
                                m = tmp[j * F2]
                                for c in range(1, F2):
                                    m = _pick(m, tmp[j * F2 + c]) if MAX else m + tmp[j * F2 + c]
                                out[q, od, oh, U(j)] = to_storage(m, marker) if MAX else \
                                    to_storage(divide(m, div), marker)
                            continue
                        if CLROW:
                            # (see CLROW) the window's rows in turn, row-major
                            for i0 in range(KD * KH):
                                xa = d0 + (i0 // KH) * dd
                                xh = h0 + (i0 % KH) * dh
                                for j in range(OW):
                                    xb = max(j * SW * Cn, 0)
                                    ob = max(j * Cn, 0)
                                    for k in range(0, KW * Cn, line_cells(x)):
                                        prefetch(x, (q, xa, xh, U(xb + k + ahx)))
                                    for ch in range(Cn):
                                        m = load(x[q, xa, xh, U(xb + ch)], marker)
                                        for c in range(1, KW):
                                            v = load(x[q, xa, xh, U(xb + c * Cn + ch)], marker)
                                            m = v if ((v > m) | (v != v)) else m
                                        if i0 > 0:
                                            # the rows before: kept unless this row's maximum
                                            # is greater or NaN (the scan's first maximum, its
                                            # last NaN)
                                            m0 = load(out[q, od, oh, U(ob + ch)], marker)
                                            m = m if ((m > m0) | (m != m)) else m0
                                        out[q, od, oh, U(ob + ch)] = to_storage(m, marker)
                            continue
                        # the rest of the row (channels-last: all of it), unit-stride loops
                        # over the channels (channels-first: one)
                        for j in range(j0, OW):
                            xb = max(j * SW * Cn, 0)
                            ob = max(j * Cn, 0)
                            if PFC:  # the window's columns KH rows below (see PFC)
                                for a in range(KD):
                                    for b in range(KH):
                                        for k in range(0, KW * Cn, line_cells(x)):
                                            prefetch(x, (q, d0 + a * dd, h0 + (KH + b) * dh,
                                                         U(xb + k)))
                            for ch in range(Cn):
                                m = load(x[q, d0, h0, U(xb + ch)], marker)
                                if not MAX:
                                    m = init + m
                                for i in range(1, KD * KH * KW):
                                    a = i // (KH * KW)
                                    b = (i // KW) % KH
                                    c = i % KW
                                    v = load(x[q, d0 + a * dd, h0 + b * dh, U(xb + c * Cn + ch)],
                                             marker)
                                    if MAX:
                                        m = v if ((v > m) | (v != v)) else m
                                    else:
                                        m += v
                                out[q, od, oh, U(ob + ch)] = to_storage(m, marker) if MAX else \
                                    to_storage(divide(m, div), marker)
                        continue
                if VROW1:  # (pruned at compile time elsewhere)
                    if row1 and nd == 1 and nh == 1:
                        div = dov if divmode == 0 else fdh * KW
                        j0 = 0
                        while j0 < OW:  # (the last vector ends at OW: no scalar tail)
                            jv = min(j0, OW - L)
                            # the input AHEAD bytes on (one line a vector of float32): the
                            # hardware prefetcher alone left the loads waiting (max1d k3s2
                            # 64x256x4096 0.82-0.90x the time, average 0.91-0.95x, paired in
                            # one process on a Xeon with a 300 MB L3)
                            prefetch(x, (q, d0, h0, U(2 * jv + ahx)))
                            if nts:  # into the scratch row, streamed out below
                                if KW == 3 and not MAX:
                                    hwin32_avg(x, (q, d0, h0, U(2 * jv)), tmp, U(jv), div,
                                               marker)
                                elif KW == 3:
                                    hwin32_max(x, (q, d0, h0, U(2 * jv)), tmp, U(jv), div,
                                               marker)
                                else:
                                    hwin22_max(x, (q, d0, h0, U(2 * jv)), tmp, U(jv), div,
                                               marker)
                            elif KW == 3 and not MAX:
                                hwin32_avg(x, (q, d0, h0, U(2 * jv)), out, (q, od, oh, U(jv)),
                                           div, marker)
                            elif KW == 3:
                                hwin32_max(x, (q, d0, h0, U(2 * jv)), out, (q, od, oh, U(jv)),
                                           div, marker)
                            else:
                                hwin22_max(x, (q, d0, h0, U(2 * jv)), out, (q, od, oh, U(jv)),
                                           div, marker)
                            j0 += L
                        if nts:
                            stream_lines(tmp, 0, out, (q, od, oh, 0), OW, marker)
                        continue
                # vertical pass: tmp[w] = reduce over the window's (z, y) rows
                # (channels-last rows of 1-row windows, the scratch row unpadded: none, the
                # horizontal pass reads the input row itself, the same values in the same order)
                d1 = CLAST and not PADT and not POWER and not flat and nd == 1 and nh == 1
                if nd == 0 or nh == 0:  # no input row (PyTorch-style padding and dilation)
                    for w in range(TW):
                        tmp[gb + w] = init
                elif d1 or ((tdir or hdir) and nd == 1 and nh == 1):
                    pass
                elif SPEC and nd == KD and nh == KH:
                    w0 = 0
                    if PF3:  # each window row's cells AHEAD bytes on (see PF3)
                        for a in range(KD):
                            for b in range(KH):
                                for w in range(0, TW, line_cells(x)):
                                    prefetch(x, (q, d0 + a * dd, h0 + b * dh, U(w + ahx)))
                    if VCOL and (WIDE or (L > 0 and xunit and TW >= L)):
                        while w0 < TW:  # (the last vector ends at TW: no scalar tail)
                            wv = min(w0, TW - L)
                            if PFV:
                                prefetch(x, (q, d0, h0 + pfr * dh, U(wv)))
                                prefetch(x, (q, d0, h0 + (pfr + 1) * dh, U(wv)))
                            if KH == 2 and MAX:
                                vcol2_max(x, (q, d0, h0, U(wv)), (q, d0, h0 + dh, U(wv)),
                                          tmp, U(gb + wv), marker)
                            elif KH == 2:
                                vcol2_sum(x, (q, d0, h0, U(wv)), (q, d0, h0 + dh, U(wv)),
                                          tmp, U(gb + wv), marker)
                            elif MAX:
                                vcol3_max(x, (q, d0, h0, U(wv)), (q, d0, h0 + dh, U(wv)),
                                          (q, d0, h0 + 2 * dh, U(wv)), tmp, U(gb + wv), marker)
                            else:
                                vcol3_sum(x, (q, d0, h0, U(wv)), (q, d0, h0 + dh, U(wv)),
                                          (q, d0, h0 + 2 * dh, U(wv)), tmp, U(gb + wv), marker)
                            w0 += L
                    if not (WIDE and VCOL):  # (wide rows: the vectors covered them)
                        for w in range(w0, TW):
                            m = load(x[q, d0, h0, w], marker)
                            if not MAX:
                                m = init + m
                            for i in range(1, KD * KH):
                                a = i // KH
                                b = i - a * KH
                                v = load(x[q, d0 + a * dd, h0 + b * dh, w], marker)
                                if MAX:
                                    m = v if ((v > m) | (v != v)) else m
                                else:
                                    m += v
                            tmp[gb + w] = m
                else:
                    for a in range(nd):
                        z = d0 + a * dd
                        for b in range(nh):
                            y = h0 + b * dh
                            first = a == 0 and b == 0
                            for w in range(TW):
                                if MAX:
                                    v = load(x[q, z, y, U(w)], marker)
                                    m = tmp[U(gb + w)]
                                    tmp[U(gb + w)] = v if (first | (v > m) | (v != v)) else m
                                else:
                                    v = init + load(x[q, z, y, U(w)], marker)
                                    if POWER:
                                        v = v if p1 else tpow(v, pz, one)
                                    tmp[U(gb + w)] = v if first else tmp[U(gb + w)] + v
                if flat:
                    continue  # finished with its group
                # horizontal pass, written out finished: specialised interior, table-driven edges
                if TABLE_RUNS and hi > lo:
                    # (see TABLE_RUNS) windows of K taps dw apart, starting st apart
                    K = tab[2, 1, lo]
                    w0 = max(tab[2, 0, lo], 0)
                    st = tst
                    nj = hi - lo
                    div = dov if (divmode == 0 and not POWER) else fdh * K
                    if tvec and MAX:
                        if tdir and nd == 1 and nh == 1:  # (the input row: see tdir)
                            _vwin_run_max(x[q, d0, h0], w0, st, nj, K, dw, out[q, od, oh], lo,
                                          div, init, marker, marker)
                        else:
                            _vwin_run_max(tmp, w0, st, nj, K, dw, out[q, od, oh], lo, div,
                                          init, None, marker)
                    elif tvec:
                        if tdir and nd == 1 and nh == 1:
                            _vwin_run_avg(x[q, d0, h0], w0, st, nj, K, dw, out[q, od, oh], lo,
                                          div, init, marker, marker)
                        else:
                            _vwin_run_avg(tmp, w0, st, nj, K, dw, out[q, od, oh], lo, div,
                                          init, None, marker)
                    else:
                        if st == 1:  # (the compiler's vectors at unit stride)
                            _table_run(tmp, acc, w0, 1, nj, K, dw, MAX, init)
                        else:
                            _table_run(tmp, acc, w0, st, nj, K, dw, MAX, init)
                        for j in range(nj):
                            m = acc[j]
                            out[q, od, oh, lo + j] = to_storage(m, marker) if MAX else \
                                _lp_norm(m, div, knz, invz, p1, p2, marker) if POWER else \
                                to_storage(divide(m, div), marker)
                if SPEC and hi > lo:
                    div = dov if (divmode == 0 and not POWER) else fdh * KW
                    if CLAST and d1:  # (the input row in place of tmp: see d1)
                        for j in range(hi - lo):
                            xb = tb + j * SW * Cn
                            ob = max((lo + j) * Cn, 0)
                            for ch in range(Cn):
                                m = load(x[q, d0, h0, U(xb + ch)], marker)
                                if not MAX:
                                    m = init + m
                                for c in range(1, KW):
                                    v = load(x[q, d0, h0, U(xb + c * Cn + ch)], marker)
                                    if MAX:
                                        m = v if ((v > m) | (v != v)) else m
                                    else:
                                        m += init + v
                                out[q, od, oh, ob + ch] = to_storage(m, marker) if MAX else \
                                    to_storage(divide(m, div), marker)
                    elif CLAST:  # C-vectors: unit-stride loops over the channels
                        for j in range(hi - lo):
                            tj = tmp[tb + j * SW * Cn:]  # a view of task-local scratch
                            ob = max((lo + j) * Cn, 0)
                            for ch in range(Cn):
                                m = tj[ch]
                                for c in range(1, KW):
                                    v = tj[c * Cn + ch]
                                    if MAX:
                                        m = v if ((v > m) | (v != v)) else m
                                    else:
                                        m += v
                                out[q, od, oh, ob + ch] = to_storage(m, marker) if MAX else \
                                    _lp_norm(m, div, knz, invz, p1, p2, marker) if POWER else \
                                    to_storage(divide(m, div), marker)
                    else:  # channels-first: one loop over the cells, vectorised across them
                        j0 = 0
                        if VROW and (WIDE or (L > 0 and ounit and hi - lo >= L)):
                            while j0 < hi - lo:  # (the last vector ends at hi: no scalar tail)
                                jv = min(j0, hi - lo - L)
                                if KW == 3 and not MAX:
                                    hwin32_avg(tv, U(2 * jv), out, (q, od, oh, U(lo + jv)),
                                               div, marker)
                                elif KW == 3:
                                    hwin32_max(tv, U(2 * jv), out, (q, od, oh, U(lo + jv)),
                                               div, marker)
                                else:
                                    hwin22_max(tv, U(2 * jv), out, (q, od, oh, U(lo + jv)),
                                               div, marker)
                                j0 += L
                        if HVEC and hdir and nd == 1 and nh == 1:  # (see hdir)
                            if SW == 2 and MAX:
                                _vwin_max2(x[q, d0, h0], 0, 2, OW, KW, 1, out[q, od, oh], 0,
                                           div, init, marker, marker)
                            elif SW == 2:
                                _vwin_avg2(x[q, d0, h0], 0, 2, OW, KW, 1, out[q, od, oh], 0,
                                           div, init, marker, marker)
                            elif MAX:
                                _vwin_max3(x[q, d0, h0], 0, 3, OW, KW, 1, out[q, od, oh], 0,
                                           div, init, marker, marker)
                            else:
                                _vwin_avg3(x[q, d0, h0], 0, 3, OW, KW, 1, out[q, od, oh], 0,
                                           div, init, marker, marker)
                        elif HVEC and VT > 0 and ounit:  # (see HVEC)
                            if SW == 2 and MAX:
                                _vwin_max2(tv, 0, 2, hi - lo, KW, 1, out[q, od, oh], lo, div,
                                           init, None, marker)
                            elif SW == 2:
                                _vwin_avg2(tv, 0, 2, hi - lo, KW, 1, out[q, od, oh], lo, div,
                                           init, None, marker)
                            elif MAX:
                                _vwin_max3(tv, 0, 3, hi - lo, KW, 1, out[q, od, oh], lo, div,
                                           init, None, marker)
                            else:
                                _vwin_avg3(tv, 0, 3, hi - lo, KW, 1, out[q, od, oh], lo, div,
                                           init, None, marker)
                        elif not (WIDE and VROW):
                            for j in range(j0, hi - lo):
                                m = tv[j * SW]
                                for c in range(1, KW):
                                    v = tv[j * SW + c]
                                    if MAX:
                                        m = v if ((v > m) | (v != v)) else m
                                    else:
                                        m += v
                                out[q, od, oh, lo + j] = to_storage(m, marker) if MAX else \
                                    _lp_norm(m, div, knz, invz, p1, p2, marker) if POWER else \
                                    to_storage(divide(m, div), marker)
                if not (PADT and MAX):  # (padded max rows: every column is interior)
                    for seg in range(2):
                        for ow in range(0 if seg == 0 else hi, lo if seg == 0 else OW):
                            if PADT:  # the KW taps of the padded row; the column's own divisor
                                cb = max(PADL + ow * SW - pw, 0)
                                m = tmp[cb]
                                for c in range(1, KW):
                                    v = tmp[cb + c]
                                    if MAX:
                                        m = v if ((v > m) | (v != v)) else m
                                    else:
                                        m += v
                                if not MAX:
                                    if divmode == 0:
                                        div = dov
                                    else:
                                        div = fdh * (tab[2, 2, ow] if divmode == 1
                                                     else tab[2, 1, ow])
                                out[q, od, oh, ow] = to_storage(m, marker) if MAX else \
                                    _lp_norm(m, div, knz, invz, p1, p2, marker) if POWER else \
                                    to_storage(divide(m, div), marker)
                                continue
                            w0 = tab[2, 0, ow]
                            if POWER or divmode == 1:
                                div = fdh * tab[2, 2, ow]
                            elif divmode == 0:
                                div = dov
                            else:
                                div = fdh * tab[2, 1, ow]
                            if not CLAST and MAX and dw == 1 and VT and \
                                    tab[2, 1, ow] >= 2 * VT:
                                # long windows (adaptive pooling): the in-order scan's bits in
                                # vectors (_simd.vrun_argmax)
                                m, _ = vrun_argmax(tmp, max(w0, 0), tab[2, 1, ow], marker)
                                out[q, od, oh, max(ow, 0)] = to_storage(m, marker)
                                continue
                            if not CLAST:  # one cell: a scalar accumulator
                                m = init
                                for c in range(tab[2, 1, ow]):
                                    v = tmp[max(w0 + c * dw, 0)]
                                    if MAX:
                                        m = v if ((v > m) | (v != v)) else m
                                    else:
                                        m += v
                                out[q, od, oh, max(ow, 0)] = to_storage(m, marker) if MAX else \
                                    _lp_norm(m, div, knz, invz, p1, p2, marker) if POWER else \
                                    to_storage(divide(m, div), marker)
                                continue
                            for ch in range(Cn):
                                hv[ch] = init
                            for c in range(tab[2, 1, ow]):
                                cb = max((w0 + c * dw) * Cn, 0)
                                if d1:  # (as the vertical pass would have stored them)
                                    for ch in range(Cn):
                                        v = load(x[q, d0, h0, U(cb + ch)], marker)
                                        if MAX:
                                            m = hv[ch]
                                            hv[ch] = v if ((v > m) | (v != v)) else m
                                        else:
                                            hv[ch] += init + v
                                    continue
                                for ch in range(Cn):
                                    v = tmp[cb + ch]
                                    if MAX:
                                        m = hv[ch]
                                        hv[ch] = v if ((v > m) | (v != v)) else m
                                    else:
                                        hv[ch] += v
                            ob = max(ow * Cn, 0)
                            for ch in range(Cn):
                                m = hv[ch]
                                out[q, od, oh, ob + ch] = to_storage(m, marker) if MAX else \
                                    _lp_norm(m, div, knz, invz, p1, p2, marker) if POWER else \
                                    to_storage(divide(m, div), marker)
            if nts:
                sfence()
    from .._runtime import jit
    return jit(kernel, parallel=parallel, fastmath=False if MAX else SUM_MATH)


# Taps of the channels-first windows whose rows fuse (``fuses_channels_first``): beyond them
# the scalar loop over each output's taps lost to the separable passes, whose vertical pass
# the compiler vectorises (float32 16x128x112x112 on a 2-core EPYC: max k4s4 41.9 ms fused,
# 8.5-12.3 ms in passes, k3s3 5.5 against 7.6-8.1 ms; average k3s3 6.5 against 4.4-5.7 ms,
# 1-d k4s4 7.8 against 10.9-15.3 ms)
FUSE_TAPS_MAX = 9
FUSE_TAPS_AVG = 4
# (1-row windows fuse up to this many taps: 1-d 64x128x1024 float32 k8s8, max 1.27-1.50 ms
# fused against 1.50 in passes, PyTorch 1.67-1.92 ms; average 0.88 against 2.13, PyTorch 5-6
# ms; at 16 taps the passes won: max 5.1 against 6.6 ms, average 3.1 against 4.5 ms)
FUSE_ROW_TAPS = 8


def row_factors(KD, KH, KW, SW):
    """(F1, F2) for the fused 1-row windows wider than FUSE_ROW_TAPS: KW = F1 * F2, each at
    most FUSE_ROW_TAPS (F1 a power of two where one serves, the largest first: 12 as 4 x 3,
    max 1.4 against 2.1 ms as 6 x 2), reduced in two stages (groups of F1 taps, then F2 of
    those); (KW, 1) for the others, (0, 0) where KW has no such factors.  The compiler
    vectorises a fused loop over up to 8 taps, not over 16: 1-d 64x128x1024 float32 max k16s16
    4.5-5.1 ms in passes, 6.6 ms fused, PyTorch 1.7-2.2 ms."""
    if not (KD == 1 and KH == 1 and KW == SW and KW > FUSE_ROW_TAPS):
        return KW, 1
    for f1 in sorted(range(2, FUSE_ROW_TAPS + 1), key=lambda f: (f & (f - 1) != 0, -f)):
        if KW % f1 == 0 and KW // f1 <= FUSE_ROW_TAPS:
            return f1, KW // f1
    return 0, 0


def fuses_channels_first(KD, KH, KW, SW, is_max):
    """Do a channels-first kernel's rows of (KD, KH, KW, SW) windows fuse (one depth slice,
    non-overlapping along W, few taps, or 1-row windows in two stages: row_factors)?  (The
    2x2x2 max windows fuse too, in make_sep.)"""
    return KW > 0 and KW == SW and KD == 1 and \
        (KH * KW <= (FUSE_TAPS_MAX if is_max else FUSE_TAPS_AVG) or
         (KH == 1 and row_factors(KD, KH, KW, SW)[0] > 0))


def fused_rows(tab, KD, KH, KW, SW, out3, lo, hi, channels_last=False, is_max=False):
    """Does every output row of a ``make_sep`` kernel (KD, KH, KW, SW) with interior columns
    [lo, hi) and output ``out3`` = (OD, OH, OW) take the fused path, so that ``fused_only``
    applies: whole windows along D and H in every row, every column interior, and
    channels-first rows too long for the flat groups (scratch rows ``OW * SW`` over
    FLAT_MAX_ROW)?  (Max and average kernels.)"""
    OD, OH, OW = out3
    fuses = KW > 0 and KW == SW and (KD == 1 or is_max) if channels_last else \
        fuses_channels_first(KD, KH, KW, SW, is_max)
    return fuses and lo == 0 and hi == OW and (channels_last or OW * SW > FLAT_MAX_ROW) and \
        bool(np.all(tab[0, 1, :OD] == KD)) and bool(np.all(tab[1, 1, :OH] == KH))


def rowwise_rows(kind, dtype, C, OW):
    """Channels-last rows of ``OW`` output cells of ``C`` channels for ``make_sep``'s
    ``wide`` (``CLROW``): max, C-vectors of a cache line or more, output rows of at most
    ``CL_ROWWISE_BYTES``.  (The plan also needs a parallel kernel of fused rows, KW == SW.)"""
    size = np.dtype(dtype).itemsize
    return kind == "max" and C * size >= 64 and OW * C * size <= CL_ROWWISE_BYTES


def wide_rows(kind, dtype, W, OW, lo, hi):
    """Are a channels-first float input's rows (``W`` cells, ``OW`` outputs, interior columns
    [lo, hi)) wide enough for ``make_sep``'s ``wide``: the input row and the columns the
    horizontal vectors cover (max: every column, the scratch row being padded; average: the
    interior ones) each at least a vector?  (The plan also needs a C-contiguous input.)"""
    from ._simd import lanes
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return False
    L = lanes(8 if dtype == np.float64 else 4)
    return W >= L and OW >= L and (kind == "max" or hi - lo >= L)


@_jit_inline
def _lp_norm(m, div, knz, invz, p1, p2, marker):
    """PyTorch's Lp norm of a window from its sum of |x|^p, (sum / div * knumel) ** (1/p), in
    storage form.  (Kernels choose between this, the average and max at compile time: an
    average kernel does not compile the root, integer max meets no division.)"""
    s = divide(m, div) * knz
    return to_storage(np.sqrt(s) if p2 else (s if p1 else s ** invz), marker)


def _vwin_runner(is_max, S=0):
    """``_vwin_run_max`` / ``_vwin_run_avg`` (any stride from 1 to 3, ``st``) and the runs of
    one stride ``S`` (the specialised kernels'): one kernel's op alone, and no other stride's
    loop where S is known (their compile time)."""

    def run(src, w0, st, nj, K, dw, dst, lo, div, init, smarker, marker):
        """``dst[lo + j]``, j < nj: windows of K taps dw apart from ``src[w0 + st * j]``
        (a row; ``smarker`` its storage), max or average (over ``div``), st from 1 to 3:
        vectors of outputs (_simd.vwin*), the last one ending at nj (it may overlap the one
        before: the same outputs written twice) while their taps' st * L cells lie in the
        row; the rest scalar."""
        L = vector_lanes(src, smarker)
        last = w0 + (K - 1) * dw
        n = src.size
        j0 = 0
        while j0 < nj:
            jv = min(j0, nj - L)
            if jv < 0 or last + st * (jv + L) > n:
                break
            i = U(w0 + st * jv)
            o = U(lo + jv)
            # (the stride's own vectors: S where the kernel knows it, else the branch taken
            # the same way for every vector of the row)
            if S == 1 or (S == 0 and st == 1):
                if is_max:
                    vwin1_max(src, i, K, dw, dst, o, div, marker)
                else:
                    vwin1_avg(src, i, K, dw, dst, o, div, marker)
            elif S == 2 or (S == 0 and st == 2):
                if is_max:
                    vwin2_max(src, i, K, dw, dst, o, div, marker)
                else:
                    vwin2_avg(src, i, K, dw, dst, o, div, marker)
            elif is_max:
                vwin3_max(src, i, K, dw, dst, o, div, marker)
            else:
                vwin3_avg(src, i, K, dw, dst, o, div, marker)
            j0 += L
        for j in range(j0, nj):
            b = w0 + j * st
            m = load(src[U(b)], smarker)
            if not is_max:
                m = init + m
            for c in range(1, K):
                v = load(src[U(b + c * dw)], smarker)
                if is_max:
                    m = v if ((v > m) | (v != v)) else m
                else:
                    m += v
            dst[U(lo + j)] = to_storage(m, marker) if is_max else to_storage(divide(m, div), marker)
    return _jit_inline(run)


_vwin_run_max = _vwin_runner(True)
_vwin_run_avg = _vwin_runner(False)
_vwin_max2 = _vwin_runner(True, 2)
_vwin_avg2 = _vwin_runner(False, 2)
_vwin_max3 = _vwin_runner(True, 3)
_vwin_avg3 = _vwin_runner(False, 3)


@_jit_inline
def _table_run(tmp, acc, w0, st, nj, K, dw, is_max, zero):
    """``acc[j]`` reduces ``tmp[w0 + j * st + c * dw]`` over the taps c < K, in tap order
    (max: NaN-propagating, the first max; sums from ``zero``, +0), for j < nj: one loop over
    j per tap, which the compiler vectorises at unit stride.  (Unsigned indices: no
    negative-index handling, which made gathers.)"""
    for j in range(nj):
        v = tmp[U(w0 + j * st)]
        acc[U(j)] = v if is_max else zero + v
    for c in range(1, K):
        b = w0 + c * dw
        for j in range(nj):
            v = tmp[U(b + j * st)]
            if is_max:
                m = acc[U(j)]
                acc[U(j)] = v if ((v > m) | (v != v)) else m
            else:
                acc[U(j)] += v


@_jit_inline
def _pick(m, v):
    """NaN-propagating max of two values."""
    return v if ((v > m) | (v != v)) else m


def make_global(kind, parallel):
    """Global pooling: one window covering each whole (contiguous) plane.

    Max of float planes: ``_simd.vrun_argmax``, the in-order scan's bits in vectors; of integer
    planes, eight independent scalar lanes break the dependency chain, combined pairwise at
    the end.  Average of float planes: ``_simd.vsum_run``,
    explicit vectors in a fixed order (the compiler's loop ran a 49-cell plane as one 32-wide
    pass, a 4-wide loop and a scalar one: 32x2048x7x7 0.93-0.96x the time, paired in one
    process); of integer planes, one running sum that the compiler may reassociate (vector
    lanes, combined at the end); nothing else of fast-math is allowed, so NaN and infinities
    propagate as usual and every run gives the same bits.
    """
    MAX = kind == "max"

    def kernel(x, out, init, marker):
        P = x.shape[0]
        n = x.shape[1]
        n8 = n - n % 8
        VL = vector_lanes(x, marker)  # (0: integer planes)
        for q in prange(P):
            if MAX and VL and n >= 2 * VL:
                # float planes: vectors whose lanes each keep their first max / last NaN and
                # its offset, merged so as to give the in-order scan's bits (a maximum of +0.0
                # tied with -0.0, several NaNs); eight scalar lanes merged pairwise (below) took
                # the wrong zero or NaN there
                m, _ = vrun_argmax(x, (q, 0), n, marker)
                out[q] = to_storage(m, marker)
            elif MAX and VL:
                m = init
                for i in range(n):
                    m = _pick(m, load(x[q, i], marker))
                out[q] = to_storage(m, marker)
            elif MAX:
                # integer planes: eight scalar lanes stay in registers
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = init
                for i in range(0, n8, 8):
                    a0 = _pick(a0, load(x[q, i], marker))
                    a1 = _pick(a1, load(x[q, i + 1], marker))
                    a2 = _pick(a2, load(x[q, i + 2], marker))
                    a3 = _pick(a3, load(x[q, i + 3], marker))
                    a4 = _pick(a4, load(x[q, i + 4], marker))
                    a5 = _pick(a5, load(x[q, i + 5], marker))
                    a6 = _pick(a6, load(x[q, i + 6], marker))
                    a7 = _pick(a7, load(x[q, i + 7], marker))
                m = _pick(_pick(_pick(a0, a1), _pick(a2, a3)), _pick(_pick(a4, a5), _pick(a6, a7)))
                for i in range(n8, n):
                    m = _pick(m, load(x[q, i], marker))
                out[q] = to_storage(m, marker)
            elif vector_lanes(x, marker):  # (float planes: explicit vectors, a fixed order)
                out[q] = to_storage(divide(init + vsum_run(x, (q, 0), n, marker), n), marker)
            else:
                s = init
                for i in range(n):
                    s += load(x[q, i], marker)
                out[q] = to_storage(divide(s, n), marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel, fastmath=False if MAX else {"reassoc", "contract"})


def make_flat(kind, parallel, KH, KW):
    """Max over stride-1 windows that keep the size (symmetric pads ``(K - 1) / 2``) on small
    contiguous planes, as flat passes over each whole plane instead of short rows.

    ``x``/``out`` are (planes, H * W).  The vertical pass writes ``R[i] = max over the window's
    rows of x[i + (b - ph) * W]`` for every cell of the interior rows in one loop (the clipped
    top and bottom rows row by row, still unit-stride); the horizontal pass writes ``out[i] =
    max over c of R[i + c - pw]`` in one loop over the plane, right everywhere but in the
    ``KW - 1`` edge columns of each row (their windows would wrap into the next row), which are
    redone as running maxima from each row's ends.  On planes of up to 64 x 64 cells short
    rows otherwise leave most of the work to the scalar remainders of the compiler's 32-wide
    vector loops (a 40-wide row: 8 of 40 columns; 14-wide: all).

    The flat passes take a plain maximum (first max on ties) and OR a NaN flag over the taps
    (pairs of taps share one unordered compare); a window with a NaN yields a quiet NaN.  That
    is 10 vector operations for 5 taps where the NaN-propagating select needs 16 (k5: 57 ->
    48 us for 64 planes of 40 x 40).
    """
    assert kind == "max"
    PAR = parallel
    PW = (KW - 1) // 2  # the pads: symmetric (ph == PH, pw == PW)
    PH = (KH - 1) // 2

    def kernel(x, out, H, W, ph, pw, init, marker):
        P = x.shape[0]
        blk = max(1, P // TASKS) if PAR else max(P, 1)
        ntask = (P + blk - 1) // blk
        nanv = -(init - init)  # a quiet NaN (0x7fc00000) for floats; never used for integers
        for t in prange(ntask):
            Hc = max(H, 0)
            Wc = max(W, 0)
            S = Hc * Wc
            pt = min(max(ph, 0), Hc)
            pb = max(min(Hc - (KH - 1 - ph), Hc), pt)
            pl = max(pw, 0)
            pr = max(KW - 1 - pw, 0)
            R = new_full(max(S, 1), init)
            for q in range(t * blk, min(P, (t + 1) * blk)):
                xq = x[max(q, 0)]
                oq = out[max(q, 0)]
                x0 = max((pt - ph) * Wc, 0)
                r0 = pt * Wc
                for j in range((pb - pt) * Wc):
                    m = load(xq[x0 + j], marker)
                    n = m != m
                    for b in range(1, KH):
                        v = load(xq[x0 + j + b * Wc], marker)
                        m = v if v > m else m
                        n |= v != v
                    R[r0 + j] = nanv if n else m
                if PH > 0 and Hc >= KH:  # the top rows: prefix maxima down the first rows;
                    # the bottom rows: suffix maxima up its last ones (one pass for each)
                    for w in range(Wc):
                        m = load(xq[w], marker)
                        n = m != m
                        for b in range(1, PH + 1):
                            v = load(xq[b * Wc + w], marker)
                            m = v if v > m else m
                            n |= v != v
                        R[w] = nanv if n else m
                        for y in range(1, PH):
                            v = load(xq[(y + PH) * Wc + w], marker)
                            m = v if v > m else m
                            n |= v != v
                            R[y * Wc + w] = nanv if n else m
                    xe = max((Hc - 1) * Wc, 0)
                    for w in range(Wc):
                        m = load(xq[xe + w], marker)
                        n = m != m
                        for b in range(1, PH + 1):
                            v = load(xq[max(xe - b * Wc, 0) + w], marker)
                            m = v if v > m else m
                            n |= v != v
                        R[xe + w] = nanv if n else m
                        for y in range(1, PH):
                            v = load(xq[max(xe - (y + PH) * Wc, 0) + w], marker)
                            m = v if v > m else m
                            n |= v != v
                            R[max(xe - y * Wc, 0) + w] = nanv if n else m
                else:
                    for seg in range(2):  # planes lower than the window: taps clamped
                        for y in range(0 if seg == 0 else pb, pt if seg == 0 else Hc):
                            # into the plane: a repeated edge row changes no maximum, and every
                            # row has a true tap.  The taps are reduced in registers: an update
                            # of R in place per tap became a masked store, slow on this CPU
                            rb = y * Wc
                            for w in range(Wc):
                                m = load(xq[max(max(min(y - ph, Hc - 1), 0) * Wc, 0) + w], marker)
                                n = m != m
                                for b in range(1, KH):
                                    xb = max(max(min(y - ph + b, Hc - 1), 0) * Wc, 0)
                                    v = load(xq[xb + w], marker)
                                    m = v if v > m else m
                                    n |= v != v
                                R[rb + w] = nanv if n else m
                for j in range(S - pr - pl):
                    m = R[j]
                    n = m != m
                    for c in range(1, KW):
                        v = R[j + c]
                        m = v if v > m else m
                        n |= v != v
                    oq[pl + j] = to_storage(nanv if n else m, marker)
                if Wc > KW:  # the edge columns: running max from each row's ends (unrolled)
                    for y in range(Hc):
                        rb = y * Wc
                        m = R[rb]
                        for c in range(1, PW + 1):
                            v = R[rb + c]
                            m = v if ((v > m) | (v != v)) else m
                        for ow in range(PW):
                            v = R[rb + ow + PW]
                            m = v if ((v > m) | (v != v)) else m
                            oq[rb + ow] = to_storage(m, marker)
                        re = rb + Wc - 1
                        m = R[re]
                        for c in range(1, PW + 1):
                            v = R[re - c]
                            m = v if ((v > m) | (v != v)) else m
                        for ow in range(PW):
                            v = R[re - ow - PW]
                            m = v if ((v > m) | (v != v)) else m
                            oq[re - ow] = to_storage(m, marker)
                else:
                    for y in range(Hc):
                        for ow in range(Wc):
                            if ow >= pl and ow < Wc - pr:
                                continue
                            m = init
                            for c in range(max(pl - ow, 0), min(KW, Wc - ow + pl)):
                                v = R[max(y * Wc + ow - pl + c, 0)]
                                m = v if ((v > m) | (v != v)) else m
                            oq[max(y * Wc + ow, 0)] = to_storage(m, marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel)


def make_cube_max(kind, parallel):
    """Max over 2 x 2 x 2 windows at stride 2 without padding (the floor-mode tiling of a
    volume) of large contiguous channels-first float inputs, ``x`` (P, D, H, W) and ``out``
    (P, OD, OH, OW).  A task is one depth row of outputs (p, od): the window's first depth
    slice for all its output rows (2 x 2 windows, row-major: ``_simd.fwin22_max``), then the
    second slice's 2 x 2 maxima folded in (``fwin22_maxfold``: kept unless greater or NaN,
    which is the row-major scan of all 8 taps), so that the input is read in memory order, one
    slice after the other, while the output rows stay in the cache: (4, 32, 32, 64, 64)
    float32 on a 2-core EPYC, interleaved in one process, 0.62-0.79x the time of
    ``make_sep``'s fused rows, which read both slices at once ((8, 64, 16, 32, 32) 0.45x,
    (2, 16, 64, 128, 128) 1.0x).  Rows narrower than a vector, scalar, in the same order.
    (``kind``: "max".)"""
    assert kind == "max"

    def kernel(x, out, marker):
        P = out.shape[0]
        OD = out.shape[1]
        OH = out.shape[2]
        OW = out.shape[3]
        for t in prange(P * OD):
            L = vector_lanes(x, marker)
            p = t // OD
            od = t - p * OD
            for a in range(2):
                z = 2 * od + a
                for oh in range(OH):
                    h = 2 * oh
                    j0 = 0
                    if L > 0 and OW >= L:
                        while j0 < OW:
                            jv = min(j0, OW - L)
                            prefetch(x, (p, z, h, U(2 * jv + ahead_cells(x))))
                            prefetch(x, (p, z, h + 1, U(2 * jv + ahead_cells(x))))
                            if a == 0:
                                fwin22_max(x, (p, z, h, U(2 * jv)), (p, z, h + 1, U(2 * jv)),
                                           out, (p, od, oh, U(jv)), 1, marker)
                            else:
                                fwin22_maxfold(x, (p, z, h, U(2 * jv)),
                                               (p, z, h + 1, U(2 * jv)), out,
                                               (p, od, oh, U(jv)), 1, marker)
                            j0 += L
                    for j in range(j0, OW):
                        w = 2 * j
                        m = load(x[p, z, h, w], marker)
                        m = _pick(m, load(x[p, z, h, w + 1], marker))
                        m = _pick(m, load(x[p, z, h + 1, w], marker))
                        m = _pick(m, load(x[p, z, h + 1, w + 1], marker))
                        if a == 1:
                            m0 = load(out[p, od, oh, j], marker)
                            m = m if ((m > m0) | (m != m)) else m0
                        out[p, od, oh, j] = to_storage(m, marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel)


def make_pairs(kind, parallel):
    """Max/average over 2 x 2 windows at stride 2 without padding (the floor-mode tiling of a
    plane; an odd last row or column is left out) of small contiguous channels-first inputs:
    the serial kernel of small calls, with as few arguments and as little per-row work as
    possible (a call's fixed cost is most of a small call: 1x16x32x32 float32 ~3.5 -> ~1.5 us
    in the kernel against ``make_sep``'s general rows).

    ``x`` is (N, C, H, W), ``out`` (N, C, H // 2, W // 2).  Each window reduces its taps in
    row-major order: the NaN-propagating first max, or ``init`` (the zero of the accumulation
    type) plus the taps divided by ``div``;
    float rows in vectors (``_simd.fwin22_*``, the last one overlapping the one before), the
    rest (integers, rows narrower than a vector) scalar, in the same order."""
    assert not parallel
    MAX = kind == "max"

    def kernel(x, out, div, init, marker):
        N = out.shape[0]
        C = out.shape[1]
        OH = out.shape[2]
        OW = out.shape[3]
        L = vector_lanes(x, marker)
        for n in range(N):
            for c in range(C):
                for oh in range(OH):
                    h = 2 * oh
                    j0 = 0
                    if L > 0 and OW >= L:
                        while j0 < OW:
                            jv = min(j0, OW - L)
                            if MAX:
                                fwin22_max(x, (n, c, h, U(2 * jv)), (n, c, h + 1, U(2 * jv)),
                                           out, (n, c, oh, U(jv)), div, marker)
                            else:
                                fwin22_avg(x, (n, c, h, U(2 * jv)), (n, c, h + 1, U(2 * jv)),
                                           out, (n, c, oh, U(jv)), div, marker)
                            j0 += L
                    for j in range(j0, OW):
                        w = 2 * j
                        a = load(x[n, c, h, w], marker)
                        b = load(x[n, c, h, w + 1], marker)
                        e = load(x[n, c, h + 1, w], marker)
                        d = load(x[n, c, h + 1, w + 1], marker)
                        if MAX:
                            m = a
                            m = b if ((b > m) | (b != b)) else m
                            m = e if ((e > m) | (e != e)) else m
                            m = d if ((d > m) | (d != d)) else m
                            out[n, c, oh, j] = to_storage(m, marker)
                        else:  # the sum in the accumulation type of init (zero)
                            m = init + a
                            m += b
                            m += e
                            m += d
                            out[n, c, oh, j] = to_storage(divide(m, div), marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel)


def make_pairs_index(kind, parallel):
    """Max with indices over 2 x 2 windows at stride 2 without padding (every window whole, as
    ``make_pairs``) of contiguous channels-first float inputs: each row of windows in vectors
    of values and plane positions (``_simd.fwin22_maxi``), the last one overlapping the one
    before, rows narrower than a vector scalar; the parallel kernel prefetches the rows 4 rows
    below (as ``make_sep``'s fused rows).  ``x`` is (planes, H, W), ``out`` and ``idx``
    (planes, H // 2, W // 2).  Positions: the first max, or the last NaN, in row-major order."""
    assert kind == "max"
    PAR = parallel

    def kernel(x, out, idx, marker):
        P = out.shape[0]
        OH = out.shape[1]
        OW = out.shape[2]
        W = x.shape[2]
        nrows = P * OH
        blk = max(BLOCK, nrows // TASKS) if PAR else max(nrows, 1)
        ntask = (nrows + blk - 1) // blk
        for t in prange(ntask):
            L = vector_lanes(x, marker)
            for r in range(t * blk, min(nrows, (t + 1) * blk)):
                q = r // OH
                oh = r - q * OH
                h = 2 * oh
                j0 = 0
                if L > 0 and OW >= L:
                    while j0 < OW:
                        jv = min(j0, OW - L)
                        if PAR:
                            prefetch(x, (q, h + 4, U(2 * jv)))
                            prefetch(x, (q, h + 5, U(2 * jv)))
                        fwin22_maxi(x, (q, h, U(2 * jv)), (q, h + 1, U(2 * jv)), out,
                                    (q, oh, U(jv)), idx, (q, oh, U(jv)), h * W + 2 * jv, W,
                                    marker)
                        j0 += L
                for j in range(j0, OW):
                    w = 2 * j
                    m = load(x[q, h, w], marker)
                    k = h * W + w
                    for c in range(1, 4):
                        v = load(x[q, h + c // 2, w + c % 2], marker)
                        if (v > m) | (v != v):
                            m = v
                            k = (h + c // 2) * W + w + c % 2
                    out[q, oh, j] = to_storage(m, marker)
                    idx[q, oh, j] = k
    from .._runtime import jit
    return jit(kernel, parallel=parallel)


def make_same(kind, parallel, KH, KW):
    """Max over stride-1 windows that keep the size (odd KH <= 7, KW in 3, 5, 7; symmetric pads
    ``(K - 1) / 2``) of contiguous float planes at least one vector wide, with explicit vectors
    (``_simd``), two output rows at a time.

    ``x``/``out`` are (planes, H * W).  The vertical pass of a pair of output rows reduces the
    KH + 1 input rows they span (clamped into the plane: a repeated edge row changes no maximum),
    the KH - 1 rows both windows share once, into two scratch rows padded with ``init`` on both
    sides; the horizontal pass reduces each window's KW taps of a scratch row straight into the
    output row.  Rows are walked in vectors, the last one ending at the row's end (overlapping
    the one before) rather than a scalar tail, so no column or row is an edge case.

    NaN: both passes take a plain first max, which needs no NaN rule on rows without a NaN.  The
    vertical pass also returns which lanes of the two input rows that the pair adds hold a NaN;
    a pair whose window rows hold one is redone with the NaN-propagating vectors (``max``
    intrinsics).  The plain passes cost about half the operations (paired A/B on 2048 planes of
    40 x 40, k5: 0.77x the time of the NaN-propagating passes, and 0.6x make_flat's).

    The parallel kernel prefetches the rows a pair adds AHEAD bytes (at least 4 rows) further on,
    into the next plane at a plane's end: the loads otherwise waited on memory (paired A/B, 2
    threads: float32 16x80x128x128 k3 0.91-0.95x the time, float64 0.83x, 512x520 planes
    0.85x; data that stays in L3 1.0x).  Not for float16, whose conversions keep it busy
    (1.02x, one thread 1.16x).  It also prefetches the output AHEAD bytes past each vector it
    stores, the line that a plain store would first read (then: float32 0.93-0.94x, float64
    0.94x, k5 8x256x40x40 0.86x, float16 0.96x; 16 KiB ahead 1.10x)."""
    assert kind == "max" and KH % 2 == 1 and KW in (3, 5, 7) and KH <= 7
    PAR = parallel
    PH = (KH - 1) // 2
    PW = (KW - 1) // 2

    def kernel(x, out, H, W, init, marker):
        P = x.shape[0]
        Hc = max(H, 1)
        # row blocks: whole planes when there are planes enough to share out, else blocks of
        # at least SAME_ROWS rows, an even count (rows go in pairs)
        RB = Hc
        if PAR and P < SAME_UNITS:
            RB = min(Hc, max(SAME_ROWS, (Hc * P + SAME_UNITS - 1) // SAME_UNITS))
            RB += RB % 2
        nb = (Hc + RB - 1) // RB
        units = P * nb
        chunk = max(1, units // TASKS) if PAR else max(units, 1)
        ntask = (units + chunk - 1) // chunk
        for t in prange(ntask):
            L = max(vector_lanes(x, marker), 1)  # (the caller checks that W >= L, float)
            Wc = max(W, L)
            WP = Wc + 2 * PW
            tmp = new_full(2 * WP, init)  # two scratch rows, PW cells of padding on both sides
            # (parallel) input prefetch distance, cells: AHEAD bytes, at least 4 rows
            ahead = max(ahead_cells(x), 4 * Wc)
            aho = ahead_cells(out)  # (the same for the output)
            for u in range(t * chunk, min(units, (t + 1) * chunk)):
                q = u // nb
                y0 = (u - q * nb) * RB
                y1 = min(Hc, y0 + RB)
                # last (unclamped) input row found to hold a NaN: none yet
                last = y0 - PH - 1
                # the block's first pair adds rows y0 + PH and y0 + PH + 1: the rows above them
                # that its window spans are checked here, two at a time
                for i in range(PH):
                    ra = min(max(y0 - PH + 2 * i, 0), Hc - 1) * Wc
                    rb = min(max(y0 - PH + 2 * i + 1, 0), Hc - 1) * Wc
                    f = 0
                    j = 0
                    while j < Wc:
                        jv = min(j, Wc - L)
                        f |= rows_nan(x, (q, ra + jv), (q, rb + jv), marker)
                        j += L
                    if f != 0:
                        last = y0 + PH - 1
                for y in range(y0, y1, 2):
                    r0 = min(max(y - PH, 0), Hc - 1) * Wc
                    r1 = min(max(y - PH + 1, 0), Hc - 1) * Wc
                    r2 = min(max(y - PH + 2, 0), Hc - 1) * Wc
                    r3 = min(max(y - PH + 3, 0), Hc - 1) * Wc
                    r4 = min(max(y - PH + 4, 0), Hc - 1) * Wc
                    r5 = min(max(y - PH + 5, 0), Hc - 1) * Wc
                    r6 = min(max(y - PH + 6, 0), Hc - 1) * Wc
                    r7 = min(max(y - PH + 7, 0), Hc - 1) * Wc
                    for exact in range(2):
                        f = 0
                        j = 0
                        while j < Wc:
                            jv = min(j, Wc - L)
                            a = PW + jv
                            b = WP + PW + jv
                            if exact == 0:
                                if PAR and x.itemsize >= 4:
                                    # the rows the pair adds, ``ahead`` cells on
                                    pa = (y + PH) * Wc + jv + ahead
                                    prefetch(x, (q, U(pa)))
                                    prefetch(x, (q, U(pa + Wc)))
                                if KH == 1:
                                    f |= vpair_pmax(x, q, (r0, r1), jv, tmp, a, b, marker)
                                elif KH == 3:
                                    f |= vpair_pmax(x, q, (r0, r1, r2, r3), jv, tmp, a, b,
                                                    marker)
                                elif KH == 5:
                                    f |= vpair_pmax(x, q, (r0, r1, r2, r3, r4, r5), jv, tmp, a,
                                                    b, marker)
                                else:
                                    f |= vpair_pmax(x, q, (r0, r1, r2, r3, r4, r5, r6, r7), jv,
                                                    tmp, a, b, marker)
                            elif KH == 1:
                                vpair_max(x, q, (r0, r1), jv, tmp, a, b, marker)
                            elif KH == 3:
                                vpair_max(x, q, (r0, r1, r2, r3), jv, tmp, a, b, marker)
                            elif KH == 5:
                                vpair_max(x, q, (r0, r1, r2, r3, r4, r5), jv, tmp, a, b, marker)
                            else:
                                vpair_max(x, q, (r0, r1, r2, r3, r4, r5, r6, r7), jv, tmp, a, b,
                                          marker)
                            j += L
                        if exact == 0 and f != 0:
                            last = y + PH + 1
                        if exact == 1 or last < y - PH:  # no NaN in the window's rows
                            break
                    nan = last >= y - PH
                    for yy in range(min(2, y1 - y)):
                        ob = (y + yy) * Wc
                        j = 0
                        while j < Wc:
                            jv = min(j, Wc - L)
                            a = yy * WP + jv
                            if PAR:  # (the output line a plain store will read, ahead)
                                prefetch(out, (q, U(ob + jv + aho)))
                            if nan:
                                if KW == 3:
                                    hwin31_max(tmp, a, out, (q, ob + jv), 0, marker)
                                elif KW == 5:
                                    hwin51_max(tmp, a, out, (q, ob + jv), 0, marker)
                                else:
                                    hwin71_max(tmp, a, out, (q, ob + jv), 0, marker)
                            elif KW == 3:
                                hwin31_pmax(tmp, a, out, (q, ob + jv), 0, marker)
                            elif KW == 5:
                                hwin51_pmax(tmp, a, out, (q, ob + jv), 0, marker)
                            else:
                                hwin71_pmax(tmp, a, out, (q, ob + jv), 0, marker)
                            j += L
    from .._runtime import jit
    return jit(kernel, parallel=parallel)


def make_flat_rows(kind, parallel, KH, KW, SW):
    """Max/average over windows KW wide at stride SW (KW > SW) of contiguous channels-first
    1-d/2-d planes whose output rows are short and tile the input rows (W == OW * SW).

    ``x``/``out`` are (planes, H * W) and (planes, OH * OW).  Per plane: the vertical pass
    reduces each output row's input rows into ``T[G + oh * W:]`` (G guard cells first), packed
    at the input's row length; because W == OW * SW, output cell ``i`` of the plane then
    reduces ``T[i * SW:][:KW]`` in one flat loop over all OH * OW cells, vectorised across rows
    (row by row, a 14-wide output row runs entirely in the compiler's scalar remainder).  The
    windows of the edge columns, [0, lo) and [hi, OW), run across row ends there and are redone
    from their own row's taps.  ``dv``: the average's divisor of each cell (plan-built).
    """
    MAX = kind == "max"
    PAR = parallel

    def kernel(x, out, tab, dv, H, W, OH, OW, dh, lo, hi, pw, init, marker):
        P = x.shape[0]
        blk = max(1, P // TASKS) if PAR else max(P, 1)
        ntask = (P + blk - 1) // blk
        for t in prange(ntask):
            Wc = max(W, 0)
            OHc = max(OH, 0)
            OWc = max(OW, 0)
            G = max(pw, 0)  # T[G - pw + i * SW] is cell i's first tap: G - pw == 0
            T = new_full(G + OHc * Wc + KW, init)
            lo_ = min(max(lo, 0), OWc)
            hi_ = min(max(hi, lo_), OWc)
            for q in range(t * blk, min(P, (t + 1) * blk)):
                xq = x[max(q, 0)]
                oq = out[max(q, 0)]
                for r in range(OHc):
                    h0 = tab[1, 0, r]
                    nh = tab[1, 1, r]
                    tb = G + r * Wc
                    if nh == KH:
                        for w in range(Wc):
                            m = load(xq[max(h0 * Wc, 0) + w], marker)
                            if not MAX:
                                m = init + m
                            for b in range(1, KH):
                                v = load(xq[max((h0 + b * dh) * Wc, 0) + w], marker)
                                if MAX:
                                    m = v if ((v > m) | (v != v)) else m
                                else:
                                    m += v
                            T[tb + w] = m
                    else:  # a window cut by the padding (or in it: no row, T stays init)
                        for w in range(Wc):
                            T[tb + w] = init
                        for b in range(nh):
                            xb = max((h0 + b * dh) * Wc, 0)
                            for w in range(Wc):
                                v = load(xq[xb + w], marker)
                                m = T[tb + w]
                                if MAX:
                                    T[tb + w] = v if ((b == 0) | (v > m) | (v != v)) else m
                                else:
                                    T[tb + w] = m + v
                for i in range(OHc * OWc):
                    m = T[i * SW]
                    for c in range(1, KW):
                        v = T[i * SW + c]
                        if MAX:
                            m = v if ((v > m) | (v != v)) else m
                        else:
                            m += v
                    oq[i] = to_storage(m, marker) if MAX else to_storage(divide(m, dv[i]), marker)
                for r in range(OHc):
                    for seg in range(2):
                        for ow in range(0 if seg == 0 else hi_, lo_ if seg == 0 else OWc):
                            cb = max(G + r * Wc + tab[2, 0, ow], 0)
                            m = init
                            for c in range(tab[2, 1, ow]):
                                v = T[cb + c]
                                if MAX:
                                    m = v if ((v > m) | (v != v)) else m
                                else:
                                    m += v
                            i = max(r * OWc + ow, 0)
                            oq[i] = to_storage(m, marker) if MAX else \
                                to_storage(divide(m, dv[i]), marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel, fastmath=False if MAX else SUM_MATH)


def make_adaptive(kind, parallel, KH, KW):
    """Adaptive max/average pooling of contiguous channels-first 1-d/2-d planes whose windows
    are KH or KH + 1 rows and KW or KW + 1 columns (every adaptive window is one of two sizes).

    ``x``/``out`` are (planes, H * W) and (planes, OH * OW); ``off``/``dv`` (built once per
    plan, ``adaptive_cells``): each output cell's run in ``S`` (``S2 = S + TL`` for windows
    KW + 1 wide; ``two``: some are) and its divisor.  Per plane: the vertical pass
    reduces each output row's KH (or KH + 1) input rows into ``T[oh * WP:]`` (WP = W rounded up
    to 32, so that the compiler's 32-wide vector loop runs over the whole row: short rows,
    such as 30-wide ones, would otherwise run in its scalar remainder; the extra columns read on
    into the next rows when the array holds them, and are never used); one flat pass then
    reduces every KW-wide run of ``T`` (a second one extends them to KW + 1 where some window
    is that wide), and each output cell picks its window's run (an average's runs are then
    divided a vector of cells at a time, ``vdiv``: the compiler leaves that loop scalar).  The
    input AHEAD bytes on is prefetched as the rows advance: without it each plane's passes
    wait for its lines, and the time is compute plus memory (16x256x30x30 -> 7, caches flushed
    between calls, 2 threads: 0.93x with the prefetch, 0.98x with the vector division).  Both
    are in the parallel kernel only: the serial one runs small calls, and compiles faster
    without them.  Every offset is clamped at 0 in the parallel body, so that no index needs
    negative-index handling.
    """
    MAX = kind == "max"
    PAR = parallel

    def kernel(x, out, tab, off, dv, two, H, W, OH, init, marker):
        P = x.shape[0]
        N = x.size
        xf = flat_view(x)
        of = flat_view(out)
        Wc = max(W, 1)
        WP = (Wc + 31) // 32 * 32
        TL = max(OH, 1) * WP
        NC = off.size
        blk = max(1, P // TASKS) if PAR else max(P, 1)
        ntask = (P + blk - 1) // blk
        for t in prange(ntask):
            Wt = max(W, 1)
            HW = max(H, 1) * Wt
            T = new_full(TL + 32, init)
            S = new_full(2 * TL + 32, init)
            G = new_full(NC + 32 if PAR else 1, init)
            D = new_full(NC + 32 if PAR else 1, init)  # the divisors in the compute type
            if PAR:
                for i in range(NC):
                    D[i] = dv[i]
            ahead = ahead_cells(xf)  # (cells, constants: no divisions in the loops)
            line = line_cells(xf)
            for q in range(t * blk, min(P, (t + 1) * blk)):
                for oh in range(OH):
                    nh = tab[1, 1, oh]
                    if PAR:
                        # prefetch the input AHEAD bytes past the rows this output row starts
                        # on, up to where the next one starts: the lines then arrive while the
                        # passes below compute (without it each plane's passes waited for
                        # its lines)
                        lo = q * HW + tab[1, 0, oh] * Wt + ahead
                        hi = ahead + (q * HW + tab[1, 0, oh + 1] * Wt if oh + 1 < OH
                                      else (q + 1) * HW)
                        for a in range(lo - lo % line, hi, line):
                            prefetch(xf, U(a))
                    xb = max(q * HW + tab[1, 0, oh] * Wt, 0)
                    tb = max(oh * WP, 0)
                    # the whole padded row when the array holds it, else the row itself
                    n = WP if xb + (nh - 1) * Wt + WP <= N else Wt
                    if nh == KH:
                        for w in range(n):
                            m = load(xf[xb + w], marker)
                            if not MAX:
                                m = init + m
                            for b in range(1, KH):
                                v = load(xf[max(xb + b * Wt, 0) + w], marker)
                                if MAX:
                                    m = v if ((v > m) | (v != v)) else m
                                else:
                                    m += v
                            T[tb + w] = m
                    else:  # KH + 1 rows
                        for w in range(n):
                            m = load(xf[xb + w], marker)
                            if not MAX:
                                m = init + m
                            for b in range(1, KH + 1):
                                v = load(xf[max(xb + b * Wt, 0) + w], marker)
                                if MAX:
                                    m = v if ((v > m) | (v != v)) else m
                                else:
                                    m += v
                            T[tb + w] = m
                # S[j]: the KW-wide run from T[j]; S2[j] = S[j] and T[j + KW]
                for j in range(TL - KW + 1):
                    m = T[j]
                    for c in range(1, KW):
                        v = T[j + c]
                        if MAX:
                            m = v if ((v > m) | (v != v)) else m
                        else:
                            m += v
                    S[j] = m
                if two:
                    for j in range(TL - KW):
                        m = S[j]
                        v = T[j + KW]
                        if MAX:
                            S[TL + j] = v if ((v > m) | (v != v)) else m
                        else:
                            S[TL + j] = m + v
                ob = max(q * NC, 0)
                if PAR and not MAX and vector_lanes(G, marker):
                    # the window sums gathered, then divided a vector at a time (vdiv)
                    for i in range(NC):
                        G[i] = S[off[i]]
                    L = vector_lanes(G, marker)
                    nv = NC - NC % L
                    for i in range(0, nv, L):
                        vdiv(G, i, (D,), i, of, U(ob + i), marker)
                    for i in range(nv, NC):
                        of[ob + i] = to_storage(divide(G[i], dv[i]), marker)
                else:
                    for i in range(NC):
                        m = S[off[i]]
                        of[ob + i] = to_storage(m, marker) if MAX else \
                            to_storage(divide(m, dv[i]), marker)
    from .._runtime import jit
    return jit(kernel, parallel=parallel, fastmath=False if MAX else SUM_MATH)


def adaptive_cells(tab, W, OH, OW, KW):
    """``(off, dv, two)`` of ``make_adaptive``'s kernels for windows ``tab``, input width W."""
    WP = (max(W, 1) + 31) // 32 * 32
    TL = max(OH, 1) * WP
    nw = tab[2, 1, :OW]
    wide = nw > KW
    off = (np.arange(OH)[:, None] * WP + tab[2, 0, :OW] + np.where(wide, TL, 0)).reshape(-1)
    dv = (tab[1, 1, :OH][:, None] * nw).reshape(-1)
    return off.astype(np.int64), dv.astype(np.int64), bool(wide.any())
