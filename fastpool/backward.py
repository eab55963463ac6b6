"""Gradients of the pooling ops with respect to their input: ``<op>_backward``.

``f_backward(grad_output, input, <f's parameters>)`` returns ``d(loss)/d(input)`` given
``grad_output = d(loss)/d(f(input))``, with PyTorch autograd's values, in the input's shape, dtype
and memory layout.  Max-type ops take ``indices=`` from the forward call; without it the argmax
is recomputed inside the backward kernel with the forward's scan rule (NaN wins, ties go to the
first cell in row-major window order).

The flow mirrors the forward (``functional.py``): parameters and geometry through the same
helpers, ``_layout`` for the memory layout, a plan cached per (parameters, input shape, strides,
dtype) by ``functional._planned`` so that repeated calls go straight to the kernel, one kernel
per (op, layout, parallel) from ``_dispatch`` on canonical views (``_cpu/backward.py`` describes
them and why the results are bit-identical for every thread count).
"""
import functools
import math

import numpy as np

from . import _alloc, _dispatch
from . import functional as _f
from ._dtypes import FLOAT_DTYPES, HALF, PLAIN
from ._runtime import STREAM_MIN_BYTES as _STREAM_MIN_BYTES, host_is_amd as _host_is_amd, \
    launch_lock
from .functional import (CF, CL, _adaptive_params, _as_array, _avg_divisor, _fractional_size,
                         _layout, _parallel, _planned, _unpool_geometry, _window, _zero)

# scratch buffer of a channels-last task (one n, a block of channels): at most this many bytes
# (all channels when they fit: contiguous rows; the buffers are walked sequentially, so they
# need not fit a cache)
_CL_BUFFER_BYTES = 1 << 23
# a block of channels split off for a thread of its own: runs of at least this many bytes
_CL_MIN_RUN_BYTES = 128


# ----------------------------------------------------------------------------- shared pieces

def _grad_mem(op, grad_output, lay, osp, dtype):
    """Validated grad_output as a C-contiguous array in the kernel's memory order."""
    g = _as_array(op, grad_output, "grad_output")
    expect = lay.user_shape(osp)
    if g.shape != expect:
        raise ValueError(f"{op}: grad_output has shape {g.shape}, expected {expect} (the shape of "
                         f"the forward output)")
    if g.dtype != dtype:
        raise TypeError(f"{op}: grad_output has dtype {g.dtype}, expected the input's dtype "
                        f"{np.dtype(dtype)}")
    return np.ascontiguousarray(lay.mem_view(g))


def _index_mem(op, indices, lay, osp, name="indices", what="the forward output's shape"):
    idx = _as_array(op, indices, name)
    if idx.dtype not in (np.int32, np.int64):
        raise TypeError(f"{op}: {name} must be int64 or int32, got dtype {idx.dtype}")
    expect = lay.user_shape(osp)
    if idx.shape != expect:
        raise ValueError(f"{op}: {name} has shape {idx.shape}, expected {expect} ({what})")
    return np.ascontiguousarray(lay.mem_view(idx))


def _bits(a):
    """The array a kernel sees: float16 as uint16 bits."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _flat(lay, mem, spatial):
    """Memory-ordered array -> (planes, cells) or (N, cells, C)."""
    cells = math.prod(spatial)
    if lay.mem == CF:
        return mem.reshape(mem.shape[0] * mem.shape[1], cells)
    return mem.reshape(mem.shape[0], cells, mem.shape[-1])


def _threads():
    import numba
    return numba.get_num_threads()


def _plane_block(planes, cells, streamed_bytes=0):
    """Planes per channels-first task: ~16K cells, and several tasks per thread.  A task that
    streams its planes out of scratch (``streamed_bytes``: a plane's bytes) takes ~256 KiB
    of them: a task's end waits for its streaming stores to drain (a profile's samples gather
    on its first locked instruction), and tasks free and allocate scratch (average backward
    32x64x56x56 k3s2p1 float32, 5 -> 20 planes a task: 0.89-0.95x the time, paired runs)."""
    per = (1 << 18) // max(1, streamed_bytes) if streamed_bytes else (1 << 14) // max(1, cells)
    return max(1, min(-(-planes // (4 * _threads())), per))


def _channel_block(n, c, cells, itemsize):
    """Channels per channels-last task: all if the scratch buffer stays within
    _CL_BUFFER_BYTES, else a multiple of 8; split further only where there are fewer images
    than threads, into one block per thread of at least _CL_MIN_RUN_BYTES.  The result does
    not depend on it.

    A block of channels makes its task read and write strided runs of every pixel's channel
    vector, and the tasks of one image share its cache lines: on a 2-core EPYC, 2 threads,
    float32 gradients of (N, 112, 112, 64), the rule that split images until every thread had
    four tasks took 1.2-5.5x the time of whole images at N = 2-4 (recompute 3x3 and 2x2, the
    average), and (1, 112, 112, 32) split in two 1.4x the time of one idle thread; one block
    of 32 or more channels per thread for a single image 0.61-0.86x the time of whole images
    (64 and 128 channels)."""
    cb = max(1, _CL_BUFFER_BYTES // max(1, cells * itemsize))
    cb = c if cb >= c else min(c, max(8, cb // 8 * 8))
    t = _threads()
    if n * -(-c // cb) < t:
        k = -(-t // max(n, 1))  # blocks per image: one per thread
        if c // k * itemsize >= _CL_MIN_RUN_BYTES:
            share = -(-c // k)
            cb = min(cb, -(-share // 8) * 8)
    return cb


def _mean_cover(inv, s3):
    """The mean number of windows covering an input cell (``inv`` of ``_inverse``)."""
    return math.prod(float(inv[d, 1, :s3[d]].mean()) if s3[d] else 1.0 for d in range(3))


def _whole_images(n, cover):
    """Channels-last max gradient from indices: one task per image (the ring or the scatter,
    one thread an image) rather than channel blocks (the gather, which reads every covering
    window's index of every cell: ~``cover`` times the ring's work, at most ~3.5x measured;
    the split scatter, ~2x)?  Whole images win where the rounds of images they take over the
    threads cost less than that."""
    t = _threads()
    return -(-n // t) * t / max(n, 1) < min(cover, 3.5)


def _row_block(rows, cells):
    """Rows per task of a gather kernel: ~16K cells, and several tasks per thread."""
    return max(1, min(-(-rows // (4 * _threads())), (1 << 14) // max(1, cells)))


# Gradients of at least this many bytes are written with streaming (non-temporal) stores
# where a kernel builds its task's rows in scratch first: a plain store reads each line it
# fills (the gradient is mostly written, little read), a streaming one does not.  Smaller
# results are left in the cache for the next operation (8 MiB, or a sixteenth of the
# last-level cache where that is more: see _runtime).
STREAM_MIN_BYTES = _STREAM_MIN_BYTES


# Plane sizes (bytes) whose adaptive average gradient is streamed (STREAM_MIN_BYTES and more):
# the kernel then builds its task's planes in scratch; larger planes would make the scratch
# outgrow the cache.  Every smaller plane repays it once the gradient is past
# STREAM_MIN_BYTES (paired A/B, 2 threads, float32 gradients of 40 MB / 120 MB / 1.2 GB, time
# relative to plain stores: 30x30 planes 0.56 / 0.49 / 0.49, 20x20 0.48 / 0.59 / 0.45, 13x13
# 0.78 / 0.64 / 0.59, 9x9 0.70 / 0.66 / 0.64, 4x4 0.91 / 0.88 / 0.90; float64 3x3 0.80 /
# 0.87 / 0.91).  Below that bound, where the gradient stays in the cache, small planes lost
# (13x13 float32 1.20x the time); float16, whose conversions already cost more than the
# memory, is not streamed (63x61 1.13x).  On a 2-core AMD EPYC (Zen) the kernel's plain stores
# were faster at every size, so there nothing is streamed: 16x256x30x30 -> 7 float32 in the
# bench's rounds 0.90-1.29x the memory floor against 1.55-1.58x streamed; paired in one
# process, time plain / streamed 0.55-0.66 (14.7 MB), 0.47 (16x64x56x56 -> 7, 12.8 MB), 0.83
# (59 MB), 0.78 (236 MB).  (Streaming only whole 64-byte lines changed nothing there.)
# None: decided by the host (_host_planes); a tuple (lo, hi) sets the range.
_ADAPTIVE_STREAM_PLANES = None


@functools.lru_cache(maxsize=None)
def _host_planes():
    return (1, 0) if _host_is_amd() else (0, 256 << 10)


def _adaptive_streamed(nbytes, plane_bytes, dtype):
    lo, hi = _ADAPTIVE_STREAM_PLANES or _host_planes()
    return _streamed(nbytes) and dtype != np.float16 and lo <= plane_bytes <= hi


def _streamed(res):
    """Whether a gradient (an array, or its size in bytes) is written with streaming stores."""
    return (res if isinstance(res, int) else res.nbytes) >= STREAM_MIN_BYTES


def _raise_bad(op, bad, name, limit, what):
    if bad[:, 0].any():
        t = int(np.argmax(bad[:, 0] != 0))
        raise ValueError(f"{op}: {name} holds {int(bad[t, 1])} in plane {int(bad[t, 0]) - 1}, "
                         f"outside [0, {limit}) ({what})")


@functools.lru_cache(maxsize=256)
def _inverse_cached(key, shape, dil, spatial3):
    tab = np.frombuffer(key, np.int64).reshape(shape)
    rows = []
    for dim in range(3):
        first, cnt = tab[dim, 0], tab[dim, 1]
        o = np.repeat(np.arange(cnt.size), cnt)
        j = np.arange(o.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        xpos = first[o] + j * dil[dim]
        counts = np.bincount(xpos, minlength=spatial3[dim])
        rows.append((np.cumsum(counts) - counts, counts, o[np.argsort(xpos, kind="stable")]))
    inv = np.zeros((3, 2, max(spatial3)), np.int64)
    ilist = np.zeros((3, max(1, max(r[2].size for r in rows))), np.int64)
    for dim, (st, ct, ol) in enumerate(rows):
        inv[dim, 0, :st.size] = st
        inv[dim, 1, :ct.size] = ct
        ilist[dim, :ol.size] = ol
    inv.setflags(write=False)
    ilist.setflags(write=False)
    return inv, ilist


def _covering(inv, ilist, dim, n, sentinel):
    """(most covering windows, n): the k-th window covering each position of ``dim``, in
    ascending order, or ``sentinel`` past the position's last one."""
    cnt = inv[dim, 1, :n]
    out = np.full((max(1, int(cnt.max()) if n else 1), n), sentinel, np.int64)
    for k in range(out.shape[0]):
        has = cnt > k
        out[k, has] = ilist[dim, inv[dim, 0, :n][has] + k]
    return out


def _inverse(tab, dil, spatial3):
    """Per dim and input position, the windows covering it (ascending): ``inv`` (3, 2, maxn)
    holds (start, count) into ``ilist`` (3, maxlist)."""
    t = np.ascontiguousarray(tab, np.int64)
    return _inverse_cached(t.tobytes(), t.shape, tuple(int(v) for v in dil), tuple(spatial3))


# ----------------------------------------------------------------------------- max family

# positions of the channels-last recompute kernel's scratch (int32 when a plane fits)
_POS32 = np.zeros(1, np.int32)
_POS64 = np.zeros(1, np.int64)


# the most bytes of a channels-last max gradient's ring of rows (make_max_ring): about a
# core's L2 and more (4x32x32x64x64 k3s2p1, a ring of 1.5 MB: 4.1 ms against 7.2-9.4 with the
# scatter; k3s1p1 15.7 against 29.5)
_RING_BYTES = 1 << 22
# the fewest bytes of a float32/float64 gradient that takes the ring (see _max_plan)
_RING_MIN_BYTES = STREAM_MIN_BYTES
# the most channels for which disjoint windows take the ring rather than the gather
_RING_DISJOINT_C = 64


def _ring_rows(tab, dil, sp3, op3):
    """(lo, R, RW, ORW) of ``make_max_ring`` over the first canonical dim with more than one
    cell in the input or the output (not W: rows of one cell), or None: each output row's
    first ring row is the first input row that it or a later output row reaches
    (non-decreasing, also where dilation makes a window's first row in the input come after
    the next window's)."""
    a = next((d for d in range(2) if sp3[d] > 1 or op3[d] > 1), None)
    if a is None or op3[a] == 0:
        return None
    O, n = op3[a], sp3[a]
    first = np.asarray(tab[a, 0, :O], np.int64)
    cnt = np.asarray(tab[a, 1, :O], np.int64)
    has = cnt > 0
    if not has.any():
        return None
    lo = np.minimum(np.minimum.accumulate(np.where(has, first, n)[::-1])[::-1], n)
    last = first + (cnt - 1) * int(dil[a])
    R = int((last - lo + 1)[has].max())
    return np.append(lo, n), R, math.prod(sp3[a + 1:]), math.prod(op3[a + 1:])


def _depth_ring(tab, dil, sp3, op3):
    """Depth slices in the ring of the channels-last recompute kernel (``make_max_recompute``)
    for 3-d problems, or 0 (the whole plane as scratch): the most slices held at once, from the
    lowest first slice of the windows still to come to the last slice touched so far.  0 where
    a window has no input cell (its gradient goes to an aliased position), where the input
    has one slice, or where the ring would hold every slice."""
    D, OD = sp3[0], op3[0]
    if D <= 1 or OD == 0 or any(bool((tab[d, 1, :op3[d]] == 0).any()) for d in range(3)):
        return 0
    first = np.asarray(tab[0, 0, :OD], np.int64)
    last = first + (np.asarray(tab[0, 1, :OD], np.int64) - 1) * int(dil[0])
    md = np.minimum.accumulate(first[::-1])[::-1]
    rbd = int((np.minimum(np.maximum.accumulate(last), D - 1) - md + 1).max())
    return rbd if rbd < D else 0


def _past_plane(tab, dil, sp3, op3, k3):
    """The scatter's bound on indices past the plane that name no cell: where some window has
    no input cell along a dim, its forward index (PyTorch's) takes there the first tap at or
    past the input's start, below the dim's size plus the window's span; else the plane's
    size (every index past it is an error)."""
    cells = math.prod(sp3)
    if tab is None or k3 is None or \
            not any(bool((tab[d, 1, :op3[d]] == 0).any()) for d in range(3)):
        return cells
    hi = [sp3[d] + (int(k3[d]) - 1) * int(dil[d]) + 1 for d in range(3)]
    return ((hi[0] - 1) * sp3[1] + hi[1] - 1) * sp3[2] + hi[2]


def _pair_pads(tab, dil, sp3, op3):
    """(left pad along H, along W) where every window covers what a window 3 wide at stride 2
    and dilation 1 along both would, with a left pad of 0 or 1 (clipped at the far ends as
    ceil mode and right pads leave them), and one depth; else None.  A 1-d problem's single
    row passes (its windows cover row 0 as such a window clipped to one row would)."""
    if sp3[0] != 1 or op3[0] != 1 or tab[0, 1, 0] != 1:
        return None
    pads = []
    for dim in (1, 2):
        n, o = sp3[dim], np.arange(op3[dim])
        if dil[dim] != 1 or o.size == 0:
            return None
        for p in (0, 1):
            st = 2 * o - p
            first = np.maximum(st, 0)
            if np.array_equal(tab[dim, 0, :o.size], first) and \
                    np.array_equal(tab[dim, 1, :o.size], np.minimum(st + 3, n) - first):
                pads.append(p)
                break
        else:
            return None
    return tuple(pads)


def _max_plan(op, x, lay, osp, tab, dil, taps, wspec=None, forward=None, k3=None):
    """``run(x, (grad_output, indices, samples))`` for a max-type op.

    ``tab``/``dil``: the window tables (None for fractional pooling, whose argmax without
    indices comes from ``forward(input_view, samples)``).  ``wspec``: (kernel, stride,
    dilation, pad before) along W and ``k3`` the window in rank 3, for uniform windows."""
    dtype = x.dtype
    marker = HALF if dtype == np.float16 else PLAIN
    acc = _zero(dtype)
    init = _f._lowest(dtype)
    cells = math.prod(lay.spatial)
    mshape = lay.mem_shape(lay.spatial)
    gsize = math.prod(lay.mem_shape(osp))
    xshape, oshape = lay.kernel_shape(lay.spatial), lay.kernel_shape(osp)
    par_idx = _parallel(2 * cells * lay.n * lay.c + gsize)
    par_rec = _parallel(cells * lay.n * lay.c + gsize * taps)
    gather = tab is not None and lay.mem != CF
    if gather:
        s3 = lay.canon(lay.spatial)
        inv, ilist = _inverse(tab, dil, s3)
        rows = lay.n * s3[0] * s3[1]
        # overlapping windows (a cell under two or more): the gather compares every covering
        # window's indices, and the scatter of whole channel vectors was faster (32x64x112x112
        # k3s2p1: 0.83x the time, 6 of 7 shapes 0.75-0.94x); the gather stays for disjoint
        # windows (16x128x56x56 k2s2: the scatter took 1.22x) and split channel blocks
        overlap = any(bool((inv[d, 1, :s3[d]] > 1).any()) for d in range(3))
        # the ring (whole images) for overlapping windows, and for disjoint ones over short
        # channel vectors, where the gather's work per cell is mostly its loop's own
        # (16x64x56x56 k2s2: 0.84-0.90x the time, 64x32x56x56 0.70x, 4x32x32x64x64 0.45x;
        # 16x128x56x56 1.09x, 8x256x28x28 1.2x: the gather stays there)
        ringed = overlap or lay.c <= _RING_DISJOINT_C
    # without indices, hot windows as constants: channels-first runs the forward argmax
    # kernel's scan in backward mode, channels-last the recompute kernel (KD, KH, KW)
    sep = None if wspec is None else (k3, wspec[1], wspec[2], wspec[3])
    consts, lo, hi, pw = _f._sep_args(sep, lay.spatial[-1], osp[-1], par_rec)
    pos = _POS32 if cells < 2 ** 31 else _POS64
    # (the channels-last recompute kernel with the 3x3x3 window as constants ran 4-5x slower
    # than table-driven, 4x32x32x64x64 k3s2p1 145-174 ms against 34: it stays table-driven)
    rconsts = consts[:3] if consts[0] <= 2 else (0, 0, 0)
    # channels-first 3x3 (padding 1) and 2x2 windows at stride 2 tiling even planes: a kernel
    # that writes each input row once from the windows' argmax codes (32x64x112x112 k3s2p1:
    # 0.65x the time; 16x128x112x112 k2s2: 0.82x)
    sp3, op3 = lay.canon(lay.spatial), lay.canon(osp)
    tiled = _f._tiling_window(tab, dil, sp3, op3) \
        if lay.mem == CF and tab is not None and dtype.kind == "f" else 0
    # channels-last 3x3 windows at stride 2 on 2-d planes: a gather writing each input row once
    # (_cpu/backward.py, make_max_recompute_pairs)
    pairs = _pair_pads(tab, dil, sp3, op3) if lay.mem == CL and tab is not None else None
    # channels-last from indices, whole channel blocks: a ring of the input rows that the
    # windows reach (make_max_ring), else the scatter into the image's own gradient.  Also
    # past the scratch bound, where images make enough tasks or the alternative costs more
    # (the ring, or for float32/float64 the scatter into the gradient itself): the gather for
    # windows with tables (ringed ones), the split scatter for fractional windows, which have
    # none (2x24x19x33x47: 0.57x the time of channel blocks)
    res_bytes = math.prod(mshape) * dtype.itemsize
    ring = _ring_rows(tab, dil, sp3, op3) if gather else None
    if ring is not None and ring[1] * ring[2] * lay.c * acc.itemsize > _RING_BYTES:
        ring = None
    whole = lay.mem == CL and (
        _channel_block(lay.n, lay.c, cells, acc.itemsize) == lay.c or
        ((not gather or ringed) and (ring is not None or dtype != np.float16) and
         _whole_images(lay.n, max(2.0, _mean_cover(inv, s3)) if gather else 2.0)))
    # (gradients that stay in the cache, float32/float64: the scatter straight into the zeroed
    # gradient, which has no ring to write out and clear; 2x24x19x33x47 k3s1p1 0.77x the time,
    # 2x64x56x56 k3s2p1 0.89x)
    ring = ring if whole and (dtype == np.float16 or res_bytes >= _RING_MIN_BYTES) else None
    # channels-first scatter: streamed through scratch where outputs are at least an eighth
    # of the cells; sparser ones (adaptive windows) zero the gradient and add into it (the
    # zeroing is a memset, itself streaming when large: 16x64x112x112 adaptive 5x5 0.61x the
    # time, 32x64x112x112 0.75x)
    streamed = _streamed(res_bytes)
    nt_planes = streamed and 8 * gsize >= lay.n * lay.c * cells
    # (whole images past the scratch bound: the scatter adds into the zeroed gradient itself)
    nt_scatter = streamed and not (whole and cells * lay.c * acc.itemsize > _CL_BUFFER_BYTES)
    # (split channel blocks: the gather, which writes whole rows; the ring's rows would be
    # strided runs, and took 1.5-2x the time on images of 64 x 56 x 56 and more)
    gather_first = gather and not (ringed and whole)
    if tiled:
        kdims = (lay.n * lay.c, sp3[1], sp3[2], op3[1], op3[2])
        codes = _f._tile_codes(acc.dtype)
        from ._cpu._simd import tile_lanes_for
        # (K = 3, a vector of windows per row or more: the kernel without scalar loops)
        tspec = (tiled, True) if tiled == 3 and op3[2] >= tile_lanes_for(acc.itemsize) \
            else (tiled,)

    past = _past_plane(tab, dil, sp3, op3, k3)
    # the recompute kernel's scratch: a ring of depth slices (3-d), else the whole plane (the
    # channel block's bound counts the whole plane for 1-d / 2-d too, though the kernel then
    # holds a ring of rows)
    rbd = _depth_ring(tab, dil, sp3, op3) if lay.mem == CL and tab is not None else 0
    rec_cells = rbd * sp3[1] * sp3[2] if rbd else cells

    def scatter(gm, im, res):
        if lay.mem == CF:
            blk = _plane_block(lay.n * lay.c, cells)
            ntask = -(-(lay.n * lay.c) // blk)
        else:
            blk = lay.c if whole else _channel_block(lay.n, lay.c, cells, acc.itemsize)
            ntask = lay.n * -(-lay.c // blk)
        bad = np.zeros((ntask, 2), np.int64)
        kern = _dispatch.kernel("max_backward", "cpu", lay.mem, par_idx,
                                dtype != np.float16)
        with launch_lock():
            kern(_flat(lay, _bits(gm), osp), _flat(lay, im, osp),
                 _flat(lay, _bits(res), lay.spatial), bad, past, blk,
                 dtype != np.float16 and (nt_scatter if lay.mem == CL else nt_planes),
                 acc, marker)
        _raise_bad(op, bad, "indices", cells, f"the input plane of {lay.spatial}")

    # small calls of the channels-first scan run the kernel for every window; a hot window
    # moves on to its own kernel once that is at hand, or after SPECIALISE_AFTER calls (as in
    # functional): [still on the kernel for every window, calls]
    small_scan = not par_rec and tab is not None and lay.mem == CF
    scan = [small_scan, 0]
    # the channels-last recompute kernel with a hot window as constants compiles for 3.1-3.8 s
    # in a fresh process (2-core Xeon VM; 1.6-2.5 s table-driven), and ran 0.94-1.07x the
    # table-driven kernel's time there (2-d 2x2 to 5x5 and 3-d 2x2x2 windows, 3-128 channels;
    # on a 2-core EPYC its 3x3 windows took 1.56-1.67x the time tap by tap): a plan starts on
    # the table-driven kernel and moves on to it as functional's calls do (once at hand, or
    # after SPECIALISE_AFTER_LARGE calls, small ones SPECIALISE_AFTER): [still table-driven,
    # calls]
    rec = [rconsts != (0, 0, 0), 0]

    def run(x, extra):
        g, indices, samples = extra
        gm = _grad_mem(op, g, lay, osp, dtype)
        res = _alloc.empty(mshape, dtype)
        if gsize == 0:
            res[...] = 0
            return lay.user_view(res)
        if indices is None and tab is not None:
            a = lay.input_mem(x)
            if tiled:
                kern = _dispatch.kernel("max_backward_tiled", "cpu", CF, par_rec, *tspec)
                with launch_lock():
                    kern(_bits(a).reshape(-1), _bits(gm).reshape(-1), _bits(res).reshape(-1),
                         *kdims, codes, init, _streamed(res), acc, marker)
                return lay.user_view(res)
            if lay.mem == CF:
                argv = (_bits(a).reshape(xshape), _bits(gm).reshape(oshape),
                        _bits(res).reshape(xshape), tab, dil, lo, hi, pw, init, acc, marker)
                if scan[0] and consts != (0, 0, 0, 0):
                    if _f._move_on(scan[1], _dispatch.kernel("max_backward_scan", "cpu", CF,
                                                             False, *consts), argv):
                        scan[0] = False
                    scan[1] += 1
                if scan[0]:  # (serial: no launch lock)
                    _dispatch.kernel("max_backward_small", "cpu", CF, False)(*argv)
                    return lay.user_view(res)
                kern = _dispatch.kernel("max_backward_scan", "cpu", CF, par_rec, *consts)
                with launch_lock():
                    kern(*argv)
                return lay.user_view(res)
            if pairs is not None:
                kern = _dispatch.kernel("max_backward_pairs", "cpu", CL, par_rec)
                with launch_lock():
                    kern(_bits(gm).reshape(oshape), _bits(a).reshape(xshape),
                         _bits(res).reshape(xshape), tab, pairs[0], pairs[1],
                         _channel_block(lay.n, lay.c, cells, acc.itemsize), _streamed(res),
                         init, acc, marker)
                return lay.user_view(res)
            argv = (_bits(gm).reshape(oshape), _bits(a).reshape(xshape),
                    _bits(res).reshape(xshape), tab, dil, lo, hi, pw, pos,
                    _channel_block(lay.n, lay.c, rec_cells, acc.itemsize), _streamed(res),
                    rbd, init, acc, marker)
            if rec[0]:
                if _f._move_on(rec[1], _dispatch.kernel("max_backward_recompute", "cpu",
                                                        lay.mem, par_rec, *rconsts),
                               argv, _f.SPECIALISE_AFTER_LARGE if par_rec else None):
                    rec[0] = False
                rec[1] += 1
            kern = _dispatch.kernel("max_backward_recompute", "cpu", lay.mem, par_rec,
                                    *((0, 0, 0) if rec[0] else rconsts))
            with launch_lock():
                kern(*argv)
            return lay.user_view(res)
        if indices is None:
            indices = forward(lay.user_view(lay.input_mem(x)), samples)
        im = _index_mem(op, indices, lay, osp)
        if gather_first:
            # channels-last: a gather over the covering windows, kept when every index was
            # found in its own window (else the scatter, which also reports bad indices)
            matches = np.zeros(rows, np.int64)
            kern = _dispatch.kernel("max_backward_gather", "cpu", lay.mem, par_idx)
            with launch_lock():
                kern(_bits(gm).reshape(oshape), im.reshape(oshape), _bits(res).reshape(xshape),
                     inv, ilist, matches, _row_block(rows, s3[2] * lay.c), acc, marker)
            if int(matches.sum()) == gsize:
                return lay.user_view(res)
        elif ring is not None:
            bad = np.zeros(lay.n, np.int64)
            kern = _dispatch.kernel("max_backward_ring", "cpu", CL, par_idx)
            with launch_lock():
                kern(_flat(lay, _bits(gm), osp), _flat(lay, im, osp),
                     _flat(lay, _bits(res), lay.spatial), bad, *ring, _streamed(res), acc,
                     marker)
            if not bad.any():
                return lay.user_view(res)
        scatter(gm, im, res)
        return lay.user_view(res)
    return run


# Plan builders take (x, op, rank, params), like the forward ones (see functional._planned).

def _build_max_backward(x, op, rank, params):
    kernel_size, stride, padding, dilation, ceil_mode, channels_last = params
    lay = _layout(op, x, rank, channels_last, FLOAT_DTYPES)
    k, s, d, pads, osp, tab, dil = _window(op, rank, lay.spatial, kernel_size, stride,
                                           padding, dilation, ceil_mode)
    return _max_plan(op, x, lay, osp, tab, dil, math.prod(k),
                     (k[-1], s[-1], d[-1], pads[-1][0]), k3=_f._k3(k))


def _max_pool_backward(rank, grad_output, input, kernel_size, stride, padding, dilation,
                       ceil_mode, indices, channels_last):
    params = (kernel_size, stride, padding, dilation, bool(ceil_mode), bool(channels_last))
    return _planned(f"max_pool{rank}d_backward", params, input, (grad_output, indices, None),
                    _build_max_backward, rank)


def _build_adaptive_max_backward(x, op, rank, params):
    output_size, channels_last = params
    lay = _layout(op, x, rank, channels_last, FLOAT_DTYPES)
    osz, tab, taps = _adaptive_params(op, rank, lay.spatial, output_size)
    return _max_plan(op, x, lay, osz, tab, _f._UNIT_DIL, taps)


def _channel_free_backward(op, rank, grad_output, input, output_size, channels_last, avg):
    """The gradient of an input without channels that the forward took as an empty batch
    (``functional._channel_free``): zeros of its shape (PyTorch's backward refuses some of
    these); None for any other input."""
    shape = _f._channel_free_avg(op, rank, input, output_size, channels_last, FLOAT_DTYPES) \
        if avg else \
        _f._channel_free(op, rank, input, output_size, channels_last, False, FLOAT_DTYPES)
    if shape is None:
        return None
    g = _as_array(op, grad_output, "grad_output")
    if g.shape != shape or g.dtype != input.dtype:
        raise ValueError(f"{op}: grad_output has shape {g.shape} and dtype {g.dtype}, expected "
                         f"{shape} and {input.dtype} (the forward output's)")
    return np.zeros(input.shape, input.dtype)


def _adaptive_max_pool_backward(rank, grad_output, input, output_size, indices, channels_last):
    res = _channel_free_backward(f"adaptive_max_pool{rank}d_backward", rank, grad_output, input,
                                 output_size, channels_last, False)
    if res is not None:
        return res
    return _planned(f"adaptive_max_pool{rank}d_backward", (output_size, bool(channels_last)),
                    input, (grad_output, indices, None), _build_adaptive_max_backward, rank)


def _build_fractional_max_backward(x, op, rank, params):
    kernel_size, output_size, output_ratio, channels_last = params
    lay = _layout(op, x, rank, channels_last, FLOAT_DTYPES)
    _, osz = _fractional_size(op, rank, lay.spatial, kernel_size, output_size, output_ratio)
    fwd = getattr(_f, f"fractional_max_pool{rank}d")

    def forward(xv, samples):
        return fwd(xv, kernel_size, output_size, output_ratio, True,
                   random_samples=samples, channels_last=channels_last)[1]
    return _max_plan(op, x, lay, osz, None, None, 1, forward=forward)


def _fractional_max_pool_backward(rank, grad_output, input, kernel_size, output_size,
                                  output_ratio, indices, random_samples, channels_last):
    op = f"fractional_max_pool{rank}d_backward"
    if indices is None and random_samples is None:
        raise ValueError(f"{op}: needs the forward's indices or its random_samples to know "
                         f"the windows")
    params = (kernel_size, output_size, output_ratio, bool(channels_last))
    return _planned(op, params, input, (grad_output, indices, random_samples),
                    _build_fractional_max_backward, rank)


# ----------------------------------------------------------------------------- average, Lp

def _sum_plan(op, power, x, lay, osp, tab, dil, divmode, dov, p, knumel, taps, hw):
    """``run(x, (grad_output, ...))`` for average, Lp and adaptive average pooling.  ``hw``:
    (kernel, stride, left pad) of uniform windows along W, (0, 1, 0) for adaptive ones."""
    dtype = x.dtype
    marker = HALF if dtype == np.float16 else PLAIN
    acc = _zero(dtype)
    mshape = lay.mem_shape(lay.spatial)
    gsize = math.prod(lay.mem_shape(osp))
    xshape, oshape = lay.kernel_shape(lay.spatial), lay.kernel_shape(osp)
    s3, o3 = lay.canon(lay.spatial), lay.canon(osp)
    cells = math.prod(s3)
    fill = gsize and not power and o3 == (1, 1, 1) and divmode != 3 and \
        all(tab[i, 1, 0] == s3[i] for i in range(3))
    if fill:
        # one window covering the plane: a fill with grad_output / divisor
        div = {0: dov, 1: int(tab[0, 2, 0] * tab[1, 2, 0] * tab[2, 2, 0]), 2: cells}[divmode]
        kern = _dispatch.kernel("global_backward", "cpu", lay.mem, _parallel(cells * lay.n *
                                                                             lay.c))
        gflat = (lay.n * lay.c,) if lay.mem == CF else (lay.n, lay.c)
        rflat = (lay.n * lay.c, cells) if lay.mem == CF else (lay.n, cells, lay.c)
    # adaptive average, channels-first 1-d/2-d: rows of shares gathered per column and whole
    # rows written at once (_cpu/backward.py, make_adaptive_backward)
    adaptive = bool(gsize) and not fill and not power and divmode == 3 and lay.mem == CF and \
        s3[0] == 1 and o3[0] == 1 and \
        (o3[1] + 1) * (-(-s3[2] // 32) * 32 + 32) <= _f.ADAPTIVE_MAX_SCRATCH
    if gsize and not fill:
        inv, ilist = _inverse(tab, dil, s3)
    small = False
    spec = None
    if gsize and not fill and not adaptive:
        hwa = np.array(hw, np.int64)
        par = _parallel(cells * lay.n * lay.c + gsize * taps * (2 if power else 1))
        # small calls: the kernel with little code (~1.5 s to compile, against 7-9 s)
        small = not par
        kname = ("lp_backward" if power else "avg_backward") + ("_small" if small else "")
        if lay.mem == CF and not small:
            # (the case as compile-time constants, and whether the output is streamed, which
            # each call decides)
            from ._cpu.backward import sum_backward_spec, sum_backward_program
            spec = sum_backward_spec(power, divmode, hw, int(dil[2]), s3[2], o3[2],
                                     acc.itemsize)
            prog = sum_backward_program(power, spec, tab, dil, inv, ilist, s3, o3, hw,
                                        acc.dtype)
        kern = _dispatch.kernel(kname, "cpu", lay.mem, par,
                                *(() if spec is None else spec + (False,)))
        # the kernel's arguments after the tables: channels-first, the divisors and rows'
        # program; channels-last, the divisor rule (and, last, whether the output is streamed)
        mid = prog if spec is not None else (divmode,)
        if small:  # channels-last rows W * C long
            xs = xshape if lay.mem == CF else xshape[:3] + (xshape[3] * xshape[4],)
            os_ = oshape if lay.mem == CF else oshape[:3] + (oshape[3] * oshape[4],)
            nc = 1 if lay.mem == CF else lay.c
    if adaptive:
        from ._cpu.backward import adaptive_gather
        from ._cpu._simd import lanes
        iw = _covering(inv, ilist, 2, s3[2], o3[2])
        gt = adaptive_gather(iw, o3[1], o3[2])
        # output rows of at most a vector of shares: each cell's covering windows along W as
        # lanes of that vector (o3[2] where none), padded to whole 32-cell rows
        gi = np.zeros((iw.shape[0], 0), np.int32)
        if o3[2] <= lanes(8 if dtype == np.float64 else 4):  # (compute type's bytes)
            gi = np.full((iw.shape[0], -(-s3[2] // 32) * 32), o3[2], np.int32)
            gi[:, :s3[2]] = iw
        ih = _covering(inv, ilist, 1, s3[1], o3[1])
        ch = np.ascontiguousarray(inv[1, 1, :s3[1]])
        # per output cell, its divisors along H and W (padded: the kernel's share loop runs
        # in whole 32-cell vectors)
        ncell = o3[1] * o3[2]
        dh = np.ones(ncell + 32, acc.dtype)
        dw = np.ones(ncell + 32, acc.dtype)
        dh[:ncell] = np.repeat(tab[1, 1, :o3[1]], o3[2])
        dw[:ncell] = np.tile(tab[2, 1, :o3[2]], o3[1])
        # (a large gradient of mid-sized planes: the kernel that streams the planes out)
        kern = _dispatch.kernel("adaptive_backward", "cpu", CF,
                                _parallel(cells * lay.n * lay.c + gsize * taps),
                                _adaptive_streamed(math.prod(mshape) * dtype.itemsize,
                                                   cells * dtype.itemsize, dtype))

    def run(x, extra):
        gm = _grad_mem(op, extra[0], lay, osp, dtype)
        res = _alloc.empty(mshape, dtype)
        if gsize == 0:
            res[...] = 0
        elif fill:
            blk = _plane_block(lay.n * lay.c, cells) if lay.mem == CF else \
                _row_block(lay.n * cells, lay.c)
            with launch_lock():
                kern(_bits(gm).reshape(gflat), _bits(res).reshape(rflat), div, blk, acc, marker)
        elif adaptive:
            with launch_lock():
                kern(_bits(gm).reshape(lay.n * lay.c, -1), _bits(res).reshape(lay.n * lay.c, -1),
                     gt, gi, ih, ch, dh, dw, s3[1], s3[2], o3[1], o3[2],
                     _plane_block(lay.n * lay.c, cells), acc, marker)
        else:
            nt = _streamed(res)
            k = kern
            if lay.mem == CF:
                blk = _plane_block(lay.n * lay.c, cells, cells * dtype.itemsize if nt else 0)
                if spec is not None and nt:
                    k = _dispatch.kernel(kname, "cpu", CF, par, *spec, True)
            else:
                blk = _channel_block(lay.n, lay.c, o3[0] * o3[1] * s3[2], acc.itemsize)
            a = lay.input_mem(x) if power else res  # the input is read by Lp only
            if small:  # (serial: no launch lock)
                kern(_bits(gm).reshape(os_), _bits(a).reshape(xs), _bits(res).reshape(xs), tab,
                     dil, divmode, dov, acc, float(p), knumel, nc, marker)
                return lay.user_view(res)
            with launch_lock():
                k(_bits(gm).reshape(oshape), _bits(a).reshape(xshape),
                  _bits(res).reshape(xshape), tab, dil, inv, ilist, *mid, dov, acc, float(p),
                  knumel, blk, hwa, *(() if lay.mem == CF else (nt,)), marker)
        return lay.user_view(res)
    return run


def _build_avg_backward(x, op, rank, params):
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation, \
        channels_last = params
    lay = _layout(op, x, rank, channels_last, FLOAT_DTYPES)
    k, s, d, pads, osp, tab, dil = _window(op, rank, lay.spatial, kernel_size, stride,
                                           padding, dilation, ceil_mode, "avg")
    divmode, dov = _avg_divisor(op, count_include_pad, divisor_override)
    return _sum_plan(op, False, x, lay, osp, tab, dil, divmode, dov, 1.0, 1, math.prod(k),
                     (k[-1], s[-1], pads[-1][0]))


def _avg_pool_backward(rank, grad_output, input, kernel_size, stride, padding, ceil_mode,
                       count_include_pad, divisor_override, dilation, channels_last):
    params = (kernel_size, stride, padding, bool(ceil_mode), bool(count_include_pad),
              divisor_override, dilation, bool(channels_last))
    return _planned(f"avg_pool{rank}d_backward", params, input, (grad_output,),
                    _build_avg_backward, rank)


def _build_lp_backward(x, op, rank, params):
    norm_type, kernel_size, stride, ceil_mode, padding, dilation, channels_last = params
    p = _f._norm_type(op, norm_type)
    lay = _layout(op, x, rank, channels_last, FLOAT_DTYPES)
    k, s, d, pads, osp, tab, dil = _window(op, rank, lay.spatial, kernel_size, stride,
                                           padding, dilation, ceil_mode, "lp")
    knumel = math.prod(k)
    return _sum_plan(op, True, x, lay, osp, tab, dil, 1, 1, p, knumel, knumel,
                     (k[-1], s[-1], pads[-1][0]))


def _lp_pool_backward(rank, grad_output, input, norm_type, kernel_size, stride, ceil_mode,
                      padding, dilation, channels_last):
    params = (norm_type, kernel_size, stride, bool(ceil_mode), padding, dilation,
              bool(channels_last))
    return _planned(f"lp_pool{rank}d_backward", params, input, (grad_output,),
                    _build_lp_backward, rank)


def _build_adaptive_avg_backward(x, op, rank, params):
    output_size, channels_last = params
    lay = _layout(op, x, rank, channels_last, FLOAT_DTYPES)
    osz, tab, taps = _adaptive_params(op, rank, lay.spatial, output_size)
    # PyTorch: global pooling is a mean (one division by the cell count); other adaptive
    # windows divide by each dim's extent in turn
    divmode = 2 if all(o == 1 for o in osz) else 3
    return _sum_plan(op, False, x, lay, osz, tab, _f._UNIT_DIL, divmode, 1, 1.0, 1, taps,
                     (0, 1, 0))


def _adaptive_avg_pool_backward(rank, grad_output, input, output_size, channels_last):
    res = _channel_free_backward(f"adaptive_avg_pool{rank}d_backward", rank, grad_output, input,
                                 output_size, channels_last, True)
    if res is not None:
        return res
    return _planned(f"adaptive_avg_pool{rank}d_backward", (output_size, bool(channels_last)),
                    input, (grad_output,), _build_adaptive_avg_backward, rank)


# ----------------------------------------------------------------------------- unpooling

def _build_max_unpool_backward(x, op, rank, params):
    kernel_size, stride, padding, output_size, channels_last = params
    lay = _layout(op, x, rank, channels_last, FLOAT_DTYPES)
    osz = _unpool_geometry(op, rank, lay.spatial, kernel_size, stride, padding, output_size)
    mshape = lay.mem_shape(lay.spatial)
    size = math.prod(mshape)
    kern = _dispatch.kernel("max_unpool_backward", "cpu", lay.mem, _parallel(2 * size))

    def run(x, extra):
        g, idx = extra
        im = _index_mem(op, idx, lay, lay.spatial, what="the input's shape")
        gm = _grad_mem(op, g, lay, osz, x.dtype)
        res = _alloc.empty(mshape, x.dtype)
        bad = np.zeros((lay.n * lay.c if lay.mem == CF else lay.n, 2), np.int64)
        with launch_lock():
            kern(_flat(lay, _bits(gm), osz), _flat(lay, im, lay.spatial),
                 _flat(lay, _bits(res), lay.spatial), bad)
        _raise_bad(op, bad, "indices", math.prod(osz), f"the output plane of {osz}")
        return lay.user_view(res)
    return run


def _max_unpool_backward(rank, grad_output, input, indices, kernel_size, stride, padding,
                         output_size, channels_last):
    params = (kernel_size, stride, padding, output_size, bool(channels_last))
    return _planned(f"max_unpool{rank}d_backward", params, input, (grad_output, indices),
                    _build_max_unpool_backward, rank)


# ----------------------------------------------------------------------------- public names

def max_pool1d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, *, indices=None, channels_last=False):
    """Gradient of ``max_pool1d`` with respect to ``input``; see ``max_pool2d_backward``."""
    return _max_pool_backward(1, grad_output, input, kernel_size, stride, padding, dilation,
                              ceil_mode, indices, channels_last)


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, *, indices=None, channels_last=False):
    """Gradient of ``max_pool2d``: each output's gradient added to its argmax cell.

    ``indices``: the forward's ``return_indices`` result (int64 or int32), else the argmax is
    recomputed."""
    return _max_pool_backward(2, grad_output, input, kernel_size, stride, padding, dilation,
                              ceil_mode, indices, channels_last)


def max_pool3d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False, *, indices=None, channels_last=False):
    """Gradient of ``max_pool3d``; see ``max_pool2d_backward``."""
    return _max_pool_backward(3, grad_output, input, kernel_size, stride, padding, dilation,
                              ceil_mode, indices, channels_last)


def avg_pool1d_backward(grad_output, input, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None, *,
                        dilation=1, channels_last=False):
    """Gradient of ``avg_pool1d``; see ``avg_pool2d_backward``."""
    return _avg_pool_backward(1, grad_output, input, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, divisor_override, dilation, channels_last)


def avg_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None, *,
                        dilation=1, channels_last=False):
    """Gradient of ``avg_pool2d``: each output's gradient / its divisor, added to its window."""
    return _avg_pool_backward(2, grad_output, input, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, divisor_override, dilation, channels_last)


def avg_pool3d_backward(grad_output, input, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None, *,
                        dilation=1, channels_last=False):
    """Gradient of ``avg_pool3d``; see ``avg_pool2d_backward``."""
    return _avg_pool_backward(3, grad_output, input, kernel_size, stride, padding, ceil_mode,
                              count_include_pad, divisor_override, dilation, channels_last)


def lp_pool1d_backward(grad_output, input, norm_type, kernel_size, stride=None, ceil_mode=False,
                       *, padding=0, dilation=1, channels_last=False):
    """Gradient of ``lp_pool1d``; see ``lp_pool2d_backward``."""
    return _lp_pool_backward(1, grad_output, input, norm_type, kernel_size, stride, ceil_mode,
                             padding, dilation, channels_last)


def lp_pool2d_backward(grad_output, input, norm_type, kernel_size, stride=None, ceil_mode=False,
                       *, padding=0, dilation=1, channels_last=False):
    """Gradient of ``lp_pool2d``, PyTorch autograd's result for its definition (a zero window
    sum gives zero gradient; zero inputs with ``norm_type < 1`` give inf/NaN as in PyTorch)."""
    return _lp_pool_backward(2, grad_output, input, norm_type, kernel_size, stride, ceil_mode,
                             padding, dilation, channels_last)


def lp_pool3d_backward(grad_output, input, norm_type, kernel_size, stride=None, ceil_mode=False,
                       *, padding=0, dilation=1, channels_last=False):
    """Gradient of ``lp_pool3d``; see ``lp_pool2d_backward``."""
    return _lp_pool_backward(3, grad_output, input, norm_type, kernel_size, stride, ceil_mode,
                             padding, dilation, channels_last)


def adaptive_max_pool1d_backward(grad_output, input, output_size, *, indices=None,
                                 channels_last=False):
    """Gradient of ``adaptive_max_pool1d``; see ``max_pool2d_backward``."""
    return _adaptive_max_pool_backward(1, grad_output, input, output_size, indices,
                                       channels_last)


def adaptive_max_pool2d_backward(grad_output, input, output_size, *, indices=None,
                                 channels_last=False):
    """Gradient of ``adaptive_max_pool2d``; see ``max_pool2d_backward``."""
    return _adaptive_max_pool_backward(2, grad_output, input, output_size, indices,
                                       channels_last)


def adaptive_max_pool3d_backward(grad_output, input, output_size, *, indices=None,
                                 channels_last=False):
    """Gradient of ``adaptive_max_pool3d``; see ``max_pool2d_backward``."""
    return _adaptive_max_pool_backward(3, grad_output, input, output_size, indices,
                                       channels_last)


def adaptive_avg_pool1d_backward(grad_output, input, output_size, *, channels_last=False):
    """Gradient of ``adaptive_avg_pool1d``; see ``adaptive_avg_pool2d_backward``."""
    return _adaptive_avg_pool_backward(1, grad_output, input, output_size, channels_last)


def adaptive_avg_pool2d_backward(grad_output, input, output_size, *, channels_last=False):
    """Gradient of ``adaptive_avg_pool2d``: each output's gradient spread over its window."""
    return _adaptive_avg_pool_backward(2, grad_output, input, output_size, channels_last)


def adaptive_avg_pool3d_backward(grad_output, input, output_size, *, channels_last=False):
    """Gradient of ``adaptive_avg_pool3d``; see ``adaptive_avg_pool2d_backward``."""
    return _adaptive_avg_pool_backward(3, grad_output, input, output_size, channels_last)


def fractional_max_pool2d_backward(grad_output, input, kernel_size, output_size=None,
                                   output_ratio=None, *, indices=None, random_samples=None,
                                   _random_samples=None, channels_last=False):
    """Gradient of ``fractional_max_pool2d``: needs the forward's ``indices`` or the same
    ``random_samples`` (the windows are recomputed from them)."""
    if random_samples is None:
        random_samples = _random_samples
    return _fractional_max_pool_backward(2, grad_output, input, kernel_size, output_size,
                                         output_ratio, indices, random_samples, channels_last)


def fractional_max_pool3d_backward(grad_output, input, kernel_size, output_size=None,
                                   output_ratio=None, *, indices=None, random_samples=None,
                                   _random_samples=None, channels_last=False):
    """Gradient of ``fractional_max_pool3d``; see ``fractional_max_pool2d_backward``."""
    if random_samples is None:
        random_samples = _random_samples
    return _fractional_max_pool_backward(3, grad_output, input, kernel_size, output_size,
                                         output_ratio, indices, random_samples, channels_last)


def max_unpool1d_backward(grad_output, input, indices, kernel_size, stride=None, padding=0,
                          output_size=None, *, channels_last=False):
    """Gradient of ``max_unpool1d`` with respect to its input; see ``max_unpool2d_backward``."""
    return _max_unpool_backward(1, grad_output, input, indices, kernel_size, stride, padding,
                                output_size, channels_last)


def max_unpool2d_backward(grad_output, input, indices, kernel_size, stride=None, padding=0,
                          output_size=None, *, channels_last=False):
    """Gradient of ``max_unpool2d`` with respect to its input: ``grad_output`` gathered at
    ``indices``."""
    return _max_unpool_backward(2, grad_output, input, indices, kernel_size, stride, padding,
                                output_size, channels_last)


def max_unpool3d_backward(grad_output, input, indices, kernel_size, stride=None, padding=0,
                          output_size=None, *, channels_last=False):
    """Gradient of ``max_unpool3d`` with respect to its input; see ``max_unpool2d_backward``."""
    return _max_unpool_backward(3, grad_output, input, indices, kernel_size, stride, padding,
                                output_size, channels_last)
