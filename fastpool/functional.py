"""Public pooling functions: one implementation per op, the rank a parameter.

The flow of one call: public name -> ``_<op>`` here (parameters via ``_params``, layout via
``_prepare``) -> ``_dispatch.kernel`` -> a Numba kernel on canonical rank-3 views.
"""
import math

import numpy as np

from . import _alloc, _dispatch
from ._dtypes import (AVG_DTYPES, FLOAT_DTYPES, HALF, MAX_DTYPES, PLAIN, check_dtype, storage)
from ._params import (adaptive_table, as_sequence, check_alloc, check_empty_windows, check_float,
                      dim_table, int_tuple, padding_arg, positive, split_shape, stack_tables,
                      window_geometry, _bounded, _is_int)
from ._runtime import STREAM_MIN_BYTES, launch_lock

CF, CL = "cf", "cl"
# below this many window taps a call runs the serial kernel: a parallel launch costs more
PARALLEL_MIN_WORK = 1 << 16
# small calls of hot windows start on a kernel that serves every window (one compilation, ~1.5
# s), and move on to the window's specialised kernel (2.3-4 s to compile) once it is compiled
# or cached, or after this many calls of the plan
SPECIALISE_AFTER = 256
# large calls of other regular windows (KD and KH at most WARM_MAX, KW and the stride along
# W at most WARM_MAX_W, dilation 1 along W) start on the table-driven kernel too and move on
# to their specialised one after this many calls of the plan (or on the first, where it is
# compiled or cached): float32 16x128x112x112 / 64x256x4096 on a 2-core EPYC, max 2x1
# windows 28.6 -> 5.1-5.6 ms, 3x3 at stride 3 10.6 -> 5.5 ms, 1-d k4s4 58 -> 9-13 ms (PyTorch
# 29 ms), k2s1 147 -> 27 ms (PyTorch 79 ms); ~1-2 s to compile each
SPECIALISE_AFTER_LARGE = 3
WARM_MAX = 7
# (along W: 1-d 64x128x1024 float32 max k8s8 7.1 -> 1.3-1.5 ms, PyTorch 1.6-1.9 ms; k16s16
# 10.6 -> 1.2 ms, k32s32 6.7 -> 1.2 ms: separable.row_factors)
WARM_MAX_W = 32


# ----------------------------------------------------------------------------- arrays, layouts

def _as_array(op, x, name="input"):
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{op}: {name} is a CUDA array; fastpool's CUDA kernels are not part of "
                        f"this build")
    if type(x).__module__.startswith("dask"):
        raise TypeError(f"{op}: {name} is a Dask array; fastpool.{op.split()[0]} maps Dask "
                        f"arrays block by block")
    try:
        a = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{op}: {name} must be an array, got {type(x).__name__}") from exc
    if a.dtype == object:
        raise TypeError(f"{op}: {name} must be a numeric array, got dtype object")
    return a


class _Layout:
    """How a user's array maps onto a kernel's canonical view, and back.

    ``mem`` is the memory layout the kernels see (CF or CL); ``to_mem`` the axis permutation
    from the (batched) user order to memory order (None when they agree); ``copy`` whether the
    input must be copied once to make it C-contiguous in that order.
    """
    __slots__ = ("mem", "batched", "channels_last", "n", "c", "spatial", "rank", "to_mem",
                 "to_user", "copy")

    def __init__(self, mem, batched, channels_last, n, c, spatial, copy=False):
        self.mem = mem
        self.batched = batched
        self.channels_last = channels_last
        self.n = n
        self.c = c
        self.spatial = spatial
        self.rank = len(spatial)
        self.copy = copy
        nd = self.rank + 2
        if channels_last == (mem == CL):
            self.to_mem = self.to_user = None
        elif channels_last:  # (N, *sp, C) viewed as (N, C, *sp)
            self.to_mem = (0, nd - 1) + tuple(range(1, nd - 1))
            self.to_user = (0,) + tuple(range(2, nd)) + (1,)
        else:  # (N, C, *sp) viewed as (N, *sp, C)
            self.to_mem = (0,) + tuple(range(2, nd)) + (1,)
            self.to_user = (0, nd - 1) + tuple(range(1, nd - 1))

    def input_mem(self, x):
        """The user's input as a C-contiguous array in memory order (a copy only if needed)."""
        a = x if self.batched else x[None]
        if self.to_mem is not None:
            a = a.transpose(self.to_mem)
        return np.ascontiguousarray(a) if self.copy else a

    def mem_shape(self, spatial, c=None):
        c = self.c if c is None else c
        if self.mem == CF:
            return (self.n, c) + tuple(spatial)
        return (self.n,) + tuple(spatial) + (c,)

    def kernel_shape(self, spatial):
        s3 = self.canon(spatial)
        if self.mem == CF:
            return (self.n * self.c,) + s3
        return (self.n,) + s3 + (self.c,)

    def canon(self, spatial):
        return (1,) * (3 - len(spatial)) + tuple(spatial)

    def user_shape(self, spatial, c=None):
        c = self.c if c is None else c
        if self.channels_last:
            shape = (self.n,) + tuple(spatial) + (c,)
        else:
            shape = (self.n, c) + tuple(spatial)
        return shape if self.batched else shape[1:]

    def mem_view(self, user):
        """A user-ordered array -> its memory-ordered view (N, C, *sp) or (N, *sp, C)."""
        a = user if self.batched else user[None]
        return a if self.to_mem is None else a.transpose(self.to_mem)

    def user_view(self, mem):
        a = mem if self.to_user is None else mem.transpose(self.to_user)
        return a if self.batched else a[0]

    def kernel_view(self, mem, spatial):
        """Memory-ordered C-contiguous array -> canonical rank-3 kernel view."""
        s3 = self.canon(spatial)
        if self.mem == CF:
            return mem.reshape((mem.shape[0] * mem.shape[1],) + s3)
        return mem.reshape((mem.shape[0],) + s3 + (mem.shape[-1],))

    def logical5(self, mem, spatial):
        """Memory-ordered array -> logical (N, C, D, H, W) view (any strides)."""
        s3 = self.canon(spatial)
        if self.mem == CF:
            return mem.reshape(mem.shape[:2] + s3)
        return np.moveaxis(mem.reshape((mem.shape[0],) + s3 + (mem.shape[-1],)), -1, 1)

    def allocate(self, op, spatial, dtype, out, name="out", zero=False):
        """Result array in memory order: fresh, or the validated ``out`` the user gave."""
        shape = self.user_shape(spatial)
        if out is None:
            mshape = self.mem_shape(spatial)
            check_alloc(op, mshape, np.dtype(dtype).itemsize)
            return (np.zeros(mshape, dtype) if zero else _alloc.empty(mshape, dtype)), None
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{op}: {name} must be a numpy array, got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(f"{op}: {name} has shape {out.shape}, expected {shape}")
        if out.dtype != np.dtype(dtype):
            raise ValueError(f"{op}: {name} has dtype {out.dtype}, expected {np.dtype(dtype)}")
        if not out.flags.writeable:
            raise ValueError(f"{op}: {name} is read-only")
        mem = self.mem_view(out)
        if not mem.flags.c_contiguous:
            want = "channels-last" if self.mem == CL else "channels-first"
            raise ValueError(f"{op}: {name} must be {want} contiguous like the result "
                             f"(strides {out.strides} do not match)")
        if zero:
            mem[...] = 0
        return mem, out


def _layout(op, x, rank, channels_last, dtypes):
    """Validate the input array and choose the kernel layout for it."""
    check_dtype(x.dtype, dtypes, op)
    batched, n, c, spatial = split_shape(op, x.shape, rank, bool(channels_last))
    xb = x if batched else x[None]
    lnc = np.moveaxis(xb, -1, 1) if channels_last else xb  # logical (N, C, *spatial)
    cl = np.moveaxis(lnc, 1, -1)
    first, second = (cl, lnc) if channels_last else (lnc, cl)
    copy = False
    if first.flags.c_contiguous:
        mem = CL if channels_last else CF
    elif second.flags.c_contiguous:
        mem = CF if channels_last else CL
    else:
        # copy once into the nearer layout: channels innermost when they have the smaller stride
        near_cl = abs(lnc.strides[1]) < abs(lnc.strides[-1]) if lnc.shape[1] > 1 else \
            bool(channels_last)
        mem = CL if near_cl else CF
        copy = True
    return _Layout(mem, batched, bool(channels_last), n, c, spatial, copy)


def _prepare(op, x, rank, channels_last, dtypes):
    """Validate the input and choose the kernel layout; returns (memory array, _Layout)."""
    x = _as_array(op, x)
    lay = _layout(op, x, rank, channels_last, dtypes)
    return lay.input_mem(x), lay


def _freeze(v):
    """A hashable key for a parameter that tells 2 from 2.0 and True from 1."""
    t = type(v)
    if t is int or t is str or v is None:
        return v
    if t is tuple or t is list:
        return (t,) + tuple(_freeze(e) for e in v)
    return (t, v)


_PLANS = {}
_PLAN_LIMIT = 512


_NESTED = {}  # parameter types -> whether one of them is a tuple or list (frozen deeply)


def _planned(op, params, input, out, build, rank, types=None):
    """Run the plan ``build(x, op, rank, params)`` makes for ``input``, reusing the plan of an
    identical earlier call.

    A plan holds everything that depends only on the parameters and the input's shape, strides
    and dtype (validation, geometry, kernel choice), so repeated calls skip straight to the
    allocation and the kernel launch.  Builders are module-level functions rather than
    closures: a closure over a call's arguments costs ~0.6 us to create, on every call.

    ``types``: the types of the parameters whose type the build checks (a caller that knows
    which ones does: ``tuple(map(type, params))`` cost 0.3-0.5 us of a 5-7 us call), in
    place of every parameter's.
    """
    x = input if type(input) is np.ndarray else _as_array(op, input)
    try:
        # parameters and their types (2 is not 2.0, True is not 1); nested ones frozen deeply
        if types is None:
            types = tuple(map(type, params))
        nested = _NESTED.get(types)
        if nested is None:
            nested = tuple in types or list in types
            if len(_NESTED) < 4096:
                _NESTED[types] = nested
        key = (op, tuple([_freeze(p) for p in params]) if nested else params, types,
               x.shape, x.strides, x.dtype)
        plan = _PLANS.get(key)
    except TypeError:  # an unhashable parameter: no caching, the build reports it
        key = plan = None
    if plan is None:
        plan = build(x, op, rank, params)
        if key is not None:
            if len(_PLANS) >= _PLAN_LIMIT:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan(x, out)


def _index_dtype(op, index_dtype, plane):
    try:
        dt = np.dtype(index_dtype)
    except TypeError:
        raise TypeError(f"{op}: index_dtype must be int64 or int32, got {index_dtype!r}") \
            from None
    if dt == np.int64:
        return dt
    if dt == np.int32:
        if plane >= 2 ** 31:
            raise ValueError(f"{op}: index_dtype int32 cannot hold indices of a plane of {plane} "
                             f"cells (2**31 or more)")
        return dt
    raise TypeError(f"{op}: index_dtype must be int64 or int32, got {dt}")


def _lowest(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.float32(-np.inf) if dtype.itemsize <= 4 else np.float64(-np.inf)
    return dtype.type(np.iinfo(dtype).min)




def _parallel(work):
    return work >= PARALLEL_MIN_WORK


def _move_on(calls, kern, argv, after=None):
    """Does a plan, ``calls`` calls old, move on to the specialised ``kern`` now: after
    ``after`` calls (SPECIALISE_AFTER: a small call's plan), or on its first call when
    ``kern`` is at hand (compiled in this process, or in the cache)?"""
    return calls >= (SPECIALISE_AFTER if after is None else after) or \
        (calls == 0 and _dispatch.ready(kern, argv))


def _check_out_overlap(op, x, *outs, indices=None):
    """``out`` (one array, or values and indices) must not share memory with the input, the
    ``indices`` argument (unpooling) or each other: the results would overwrite what is
    still to be read."""
    for o in outs:
        if o is not None and np.may_share_memory(o, x):
            raise ValueError(f"{op}: out must not overlap the input")
        if o is not None and indices is not None and np.may_share_memory(o, indices):
            raise ValueError(f"{op}: out must not overlap indices")
    if len(outs) == 2 and outs[0] is not None and outs[1] is not None and \
            np.may_share_memory(outs[0], outs[1]):
        raise ValueError(f"{op}: out's values and indices (out[0], out[1]) must not overlap")


def _unpack_out(op, out, with_indices):
    if out is None:
        return None, None
    if with_indices:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"{op}: with return_indices=True, out must be a (values, indices) "
                             f"pair")
        return out[0], out[1]
    if isinstance(out, (tuple, list)):
        raise ValueError(f"{op}: out must be one array when return_indices=False")
    return out, None


# ----------------------------------------------------------------------------- windowed ops

def _window_params(op, rank, spatial, kernel_size, stride, padding, dilation, ceil_mode,
                   half_limit=True):
    k = int_tuple(op, "kernel_size", kernel_size, rank,
                  spread_one=not op.startswith("lp_pool"))
    positive(op, "kernel_size", k)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        s = k
    else:
        s = int_tuple(op, "stride", stride, rank)
        positive(op, "stride", s)
    d = int_tuple(op, "dilation", dilation, rank)
    positive(op, "dilation", d)
    pads, onnx = padding_arg(op, padding, rank, k, s, d, spatial, half_limit)
    osp = window_geometry(op, spatial, k, s, pads, d, bool(ceil_mode), onnx)
    return k, s, d, pads, onnx, osp


def _window(op, rank, spatial, kernel_size, stride, padding, dilation, ceil_mode,
            sum3d=None):
    """Everything about a windowed op's geometry: (k, s, d, pads, out size, tables, dilation).
    ``sum3d``: "avg" or "lp" for the average and Lp ops, whose 3-d forms in PyTorch (and their
    gradients) refuse an input smaller than the kernel along any dim, padding or not; the same
    ``ValueError`` here wherever PyTorch has the call (PyTorch's padding, no dilation; Lp also
    without padding)."""
    k, s, d, pads, onnx, osp = _window_params(op, rank, spatial, kernel_size, stride, padding,
                                              dilation, ceil_mode)
    if sum3d and rank == 3 and not onnx and all(v == 1 for v in d) and \
            (sum3d == "avg" or all(b == 0 and a == 0 for b, a in pads)) and \
            any(n < kk for n, kk in zip(spatial, k)):
        raise ValueError(f"{op}: input size {tuple(spatial)} is smaller than kernel_size "
                         f"{tuple(k)} (PyTorch's 3-d average and Lp pooling need every input "
                         f"dim at least the kernel's, padding or not)")
    tab, dil = _tables(op, spatial, k, s, pads, d, osp, onnx)
    return k, s, d, pads, osp, tab, dil


def _tables(op, spatial, k, s, pads, d, osp, onnx):
    pad3 = 3 - len(spatial)
    tabs = [dim_table(1, 1, 1, 0, 0, 1, 1)] * pad3
    for i in range(len(spatial)):
        check_alloc(op, (), 1, osp[i])
        tabs.append(dim_table(spatial[i], k[i], s[i], pads[i][0], pads[i][1], d[i], osp[i]))
    if onnx:
        check_empty_windows(op, tabs[pad3:], spatial)
    return stack_tables(tabs), np.array((1,) * pad3 + tuple(d), dtype=np.int64)


# Windows compiled as constants, (KD, KH, KW, SW) with W dilation 1: the shapes that dominate
# real networks.  Each costs a compilation per (kind, layout, dtype), so large (parallel) calls
# get the whole set and small (serial) calls only the most common windows, which they reach
# after a start on _cpu/small.py's kernels (one for every window: see SPECIALISE_AFTER);
# everything else runs the table-driven kernels, which handle any geometry.
_HOT_WINDOWS = frozenset({
    (1, 3, 3, 2), (1, 2, 2, 2), (1, 3, 3, 1), (1, 5, 5, 1), (1, 1, 3, 2), (1, 1, 2, 2),
    (2, 2, 2, 2), (3, 3, 3, 2), (3, 3, 3, 1), (1, 1, 3, 1), (1, 1, 5, 1),
})
_HOT_SERIAL = frozenset({(1, 3, 3, 2), (1, 2, 2, 2)})


def _sep_args(wspec, width, out_width, parallel, kind="max", warm=False):
    """Specialisation constants (KD, KH, KW, SW) and the interior columns [lo, hi).

    ``wspec`` is (kernel3, stride_w, dilation_w, pad_before_w) with ``kernel3`` the window in
    canonical rank 3, or None for adaptive windows.  ``warm``: any regular window of a large
    call (WARM_MAX, WARM_MAX_W), not only the hot ones.
    """
    if wspec is None or kind == "lp":
        return (0, 0, 0, 0), 0, 0, 0
    k3, s, d, pw = wspec
    key = k3 + (s,)
    hot = key in (_HOT_WINDOWS if parallel else _HOT_SERIAL) or \
        (warm and parallel and max(k3[:2]) <= WARM_MAX and max(k3[2], s) <= WARM_MAX_W and
         _warm_window(key, kind))
    if d != 1 or not hot:
        return (0, 0, 0, 0), 0, 0, 0
    lo, hi = _interior(width, out_width, k3[2], s, pw)
    return key, lo, hi, pw


def _warm_window(key, kind):
    """Is a regular window outside the hot set worth its specialised kernel?  Not windows of
    several rows that do not overlap along W and whose rows do not fuse (too many taps): there
    the specialised passes lost to the table-driven kernel (float32 16x64x112x112 on a 2-core
    EPYC, paired in one process: max 5x5 at stride 5 1.39x the time, 7x7 1.35x, average 7x7
    1.43x, 4x4 0.93-1.09x; 4x32x32x64x64 max 4x4x4 5.4x), where overlapping windows gained
    (max 4x4 at stride 2 0.34x, 2x2 at stride 1 0.17x, 1-d k7s3 0.30x, k31s31 0.57x)."""
    from ._cpu.separable import fuses_channels_first
    KD, KH, KW, SW = key
    return not (KW == SW and KD * KH > 1 and
                not fuses_channels_first(KD, KH, KW, SW, kind == "max"))


def _sep_kernel(kind, parallel, consts, tab, lay, osp, lo, hi, x, dtype):
    """The parallel-capable separable kernel of ``consts`` (make_sep), with the flags the
    geometry allows (fused rows alone, wide rows)."""
    from ._cpu.separable import fused_rows, wide_rows, rowwise_rows
    fonly = kind in ("max", "avg") and \
        fused_rows(tab, *consts, lay.canon(osp), lo, hi, lay.mem == CL, kind == "max")
    if lay.mem == CL:  # max rows folded in turn (make_sep's CLROW)
        wide = parallel and consts[2] > 0 and consts[2] == consts[3] and \
            rowwise_rows(kind, dtype, lay.c, osp[-1])
    else:
        wide = not fonly and kind in ("max", "avg") and consts[2] > 0 and \
            x.flags.c_contiguous and wide_rows(kind, dtype, lay.spatial[-1], osp[-1], lo, hi)
    return _dispatch.kernel("separable", "cpu", kind, parallel, *consts,
                            *_sep_flags(lay.mem == CL, fonly, dtype, wide))


def _sep_flags(channels_last, fused_only, dtype, wide=False):
    """``make_sep``'s trailing arguments (channels_last, fused_only, integer, wide), without
    the defaults at the end (one memo key per kernel)."""
    flags = (bool(channels_last), bool(fused_only), np.dtype(dtype).kind in "iu", bool(wide))
    while len(flags) > 1 and not flags[-1]:
        flags = flags[:-1]
    return flags


def _interior(width, out_width, k, s, pw, d=1):
    """The columns [lo, hi) whose windows (k taps d apart, stride s, left pad pw) lie
    wholly inside a row of ``width``."""
    lo = min(-(-pw // s), out_width)
    return lo, max(lo, min(out_width, (width - (k - 1) * d - 1 + pw) // s + 1))


# (KH, KW) of the flat max kernels: stride-1 windows that keep the size, on planes of at most
# _FLAT_PLANE cells (beyond ~64 x 64 the row-wise separable kernels are as fast or faster)
_FLAT_WINDOWS = frozenset({(3, 3), (5, 5), (1, 3), (1, 5)})
_FLAT_PLANE = 1 << 12
# outputs per vector of make_same (float16 and float32: 8, computed in float32; float64: 4)
_LANES = {2: 8, 4: 8, 8: 4}


def _flat_spec(k, s, d, pads, spatial, osp):
    """(KH, KW, pad top, pad left) when the flat kernels apply, else None: at most 2 spatial
    dims, stride and dilation 1, symmetric pads that keep the size, a hot window, a small
    plane.  (The plan also needs a C-contiguous channels-first input.)"""
    if len(spatial) > 2 or tuple(osp) != tuple(spatial) or any(v != 1 for v in s) or \
            any(v != 1 for v in d) or math.prod(spatial) > _FLAT_PLANE:
        return None
    kh, ph = (k[0], pads[0][0]) if len(k) == 2 else (1, 0)
    if (kh, k[-1]) not in _FLAT_WINDOWS or 2 * ph != kh - 1 or 2 * pads[-1][0] != k[-1] - 1:
        return None
    return kh, k[-1], ph, pads[-1][0]


def _same_spec(k, s, d, pads, spatial, osp):
    """(KH, KW) when the vector kernels for stride-1 size-keeping max windows apply, else None:
    1 or 2 spatial dims, stride and dilation 1, symmetric pads ``(K - 1) / 2``, KH odd up to 7
    and KW 3, 5 or 7 (any plane size; the plan also needs a C-contiguous channels-first float
    input at least one vector wide)."""
    if len(spatial) > 2 or tuple(osp) != tuple(spatial) or any(v != 1 for v in s) or \
            any(v != 1 for v in d):
        return None
    kh, ph = (k[0], pads[0][0]) if len(k) == 2 else (1, 0)
    kw, pw = k[-1], pads[-1][0]
    if kh not in (1, 3, 5, 7) or kw not in (3, 5, 7) or 2 * ph != kh - 1 or 2 * pw != kw - 1:
        return None
    return kh, kw


# (KH, KW, SW) of the flat-rows kernels: overlapping windows, stride > 1, on short output rows
# that tile the input rows; rows of at most _FLAT_ROWS_OW outputs (on 28-wide ones the
# row-wise kernels were faster) and planes of at most _FLAT_ROWS_CELLS scratch cells
_FLAT_ROWS_WINDOWS = frozenset({(3, 3, 2), (1, 3, 2)})
_FLAT_ROWS_OW = 16
_FLAT_ROWS_CELLS = 1 << 16


def _flat_rows_spec(wspec, spatial, osp, kind):
    """(KH, KW, SW, lo, hi, pw) when the flat-rows kernels apply, else None: 1 or 2 spatial
    dims, a hot window with W dilation 1 and W == OW * SW, short output rows.  (The plan also
    needs a C-contiguous channels-first input.)"""
    if wspec is None or kind == "lp" or len(spatial) > 2:
        return None
    k3, sw, dw, pw = wspec
    W, OW = spatial[-1], osp[-1]
    OH = osp[0] if len(spatial) == 2 else 1
    if dw != 1 or k3[0] != 1 or (k3[1], k3[2], sw) not in _FLAT_ROWS_WINDOWS or \
            OW * sw != W or OW > _FLAT_ROWS_OW or OH * W > _FLAT_ROWS_CELLS:
        return None
    return (k3[1], k3[2], sw) + _interior(W, OW, k3[2], sw, pw) + (pw,)


def _cell_divisors(tab, divmode, dov, OH, OW):
    """The average's divisor of each output cell of a 1-d/2-d plane (the sum kernels' rules:
    0 divisor_override, 1 count_include_pad, 2 cells in range), int64, OH * OW."""
    if divmode == 0:
        return np.full(OH * OW, dov, np.int64)
    f = 2 if divmode == 1 else 1
    d = tab[0, f, 0] * tab[1, f, :OH].astype(np.int64)[:, None] * tab[2, f, :OW][None, :]
    return np.ascontiguousarray(d.reshape(-1), dtype=np.int64)


def _is_global(tab, spatial, osp, divmode):
    """Does each output plane hold one window covering its whole input plane (same divisor)?"""
    if any(o != 1 for o in osp):
        return False
    for i in range(3):
        size = 1 if i < 3 - len(spatial) else spatial[i - 3 + len(spatial)]
        if tab[i, 0, 0] != 0 or tab[i, 1, 0] != size:
            return False
        if divmode == 1 and tab[i, 2, 0] != size:
            return False
    return divmode != 0


def _k3(k):
    return (1,) * (3 - len(k)) + tuple(k)


def _zero(dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64(0)
    if dtype.kind in "iu":
        return np.int64(0)
    return np.float32(0)


def _one_depth_row(tab, dil, o3):
    """Windows over a single depth row, undilated, with at least one output row and column."""
    return tab is not None and o3[0] == 1 and o3[1] >= 1 and o3[2] >= 1 and \
        tab[0, 0, 0] == 0 and tab[0, 1, 0] == 1 and all(int(d) == 1 for d in dil)


def _tiling_window(tab, dil, s3, o3):
    """K when the windows are K x K at stride 2 over a single depth row and tile an even plane
    (``H == 2 * OH``, ``W == 2 * OW``) with padding 1 (K = 3) or none (K = 2): the case of
    ``make_max_backward_tiled``; else 0."""
    if s3[0] != 1 or not _one_depth_row(tab, dil, o3) or s3[1] != 2 * o3[1] or \
            s3[2] != 2 * o3[2]:
        return 0
    ok = True
    for d in (1, 2):
        n, o = s3[d], np.arange(o3[d])
        first = np.maximum(2 * o - 1, 0)
        ok = ok and np.array_equal(tab[d, 0, :o.size], first) and \
            np.array_equal(tab[d, 1, :o.size], np.minimum(2 * o + 2, n) - first)
    if ok:
        return 3
    return 2 if _pair_windows(tab, dil, s3, o3, False) else 0


def _pair_windows(tab, dil, s3, o3, padded_divisor):
    """Whether the windows are 2 x 2 at stride 2 from the plane's corner over a single depth
    row, every one whole (no padding, no partial ceil-mode window; an odd last row or column
    of the plane belongs to none).  ``padded_divisor``: an average that divides by the window's
    extent with its padding, which must then be 1 x 2 x 2 too (a 3 x 3 window over 2 x 2 cells
    and a padding row and column has the cells of a pair window, not its divisor)."""
    if s3[0] != 1 or not _one_depth_row(tab, dil, o3) or not _pairs_along(tab, o3, (1, 2)):
        return False
    # (padded_divisor: the padded extent along every dim, depth too, is the window's cells)
    return not padded_divisor or all(np.array_equal(tab[d, 2, :o3[d]], tab[d, 1, :o3[d]])
                                     for d in range(3))


def _cube_windows(tab, dil, o3):
    """Whether the windows are 2 x 2 x 2 at stride 2 from the volume's corner, every one whole
    and undilated (the floor-mode tiling: an odd last slice, row or column belongs to none)."""
    return tab is not None and min(o3) >= 1 and all(int(d) == 1 for d in dil) and \
        _pairs_along(tab, o3, (0, 1, 2))


def _pairs_along(tab, o3, dims):
    """Whether along each of ``dims`` window o starts at 2 * o and holds 2 input cells."""
    return all(np.array_equal(tab[d, 0, :o3[d]], 2 * np.arange(o3[d])) and
               bool(np.all(tab[d, 1, :o3[d]] == 2)) for d in dims)


def _tile_codes(dtype):
    """The tiled kernels' codes in ``dtype``: taps 0..8 (row * 3 + column), the padding's code
    (never the first maximum) and -1 (no window)."""
    return np.array(list(range(9)) + [1e6, -1], dtype)


def _window_plan(op, kind, x, lay, osp, tab, dil, taps, wspec=None, divmode=0, dov=1, p=1.0,
                 knumel=1, return_indices=False, index_dtype=np.int64, flat=None,
                 adaptive=None, same=None):
    """Choose the kernel for a windowed op and return ``run(x, out)``.

    kind: "max", "avg" or "lp".  Channels-first without indices runs the separable kernels
    (or the global one), channels-last the channels-last kernels, channels-first with indices
    the argmax kernel.
    """
    dtype = x.dtype
    half = dtype == np.float16
    marker = HALF if half else PLAIN
    mshape = lay.mem_shape(osp)
    check_alloc(op, mshape, dtype.itemsize)
    size = math.prod(mshape)
    parallel = _parallel(size * taps)
    init = _lowest(dtype) if kind == "max" else _zero(dtype)
    idt = _index_dtype(op, index_dtype, math.prod(lay.spatial)) if return_indices else None
    xshape = lay.kernel_shape(lay.spatial)
    oshape = lay.kernel_shape(osp)
    with_idx = return_indices  # the kernel takes an index array
    if adaptive is not None and wspec is not None and \
            _sep_args(wspec, lay.spatial[-1], osp[-1], parallel, kind,
                      warm=lay.mem == CF)[0] != (0, 0, 0, 0):
        # adaptive windows of one size that are a specialised regular window (see
        # _uniform_window): the separable kernels, not the two-size adaptive ones
        adaptive = None
    later = None  # (kernel, args) to move on to (see the separable kernels below)
    after = None  # after how many calls (None: SPECIALISE_AFTER)
    if same is not None and not return_indices and lay.mem == CF and x.flags.c_contiguous and \
            dtype.kind == "f" and lay.canon(lay.spatial)[-1] >= _LANES[dtype.itemsize]:
        # stride-1 "same" max, float planes at least a vector wide: explicit vectors, rows in
        # pairs (separable.make_same)
        KH, KW = same
        H, W = lay.canon(lay.spatial)[1:]
        kern = _dispatch.kernel("same", "cpu", kind, parallel, KH, KW)
        xshape = oshape = (lay.n * lay.c, H * W)
        if KH == 1:  # windows one row high: every row of every plane is a plane's row alike
            # (1-row planes would otherwise leave half of each row pair unused)
            H, xshape, oshape = lay.n * lay.c * H, (1, lay.n * lay.c * H * W), \
                (1, lay.n * lay.c * H * W)
        args = (H, W, init, marker)
    elif flat is not None and not return_indices and lay.mem == CF and x.flags.c_contiguous:
        # stride-1 "same" max on small planes: flat passes over whole planes (separable.py)
        KH, KW, ph, pw = flat
        H, W = lay.canon(lay.spatial)[1:]
        kern = _dispatch.kernel("flat", "cpu", kind, parallel, KH, KW)
        xshape = oshape = (lay.n * lay.c, H * W)
        args = (H, W, ph, pw, init, marker)
    elif adaptive is not None and not return_indices and lay.mem == CF and \
            x.flags.c_contiguous:
        # adaptive windows of two sizes per axis on contiguous 1-d/2-d planes (separable.py)
        KH, KW = adaptive
        H, W = lay.canon(lay.spatial)[1:]
        OH, OW = lay.canon(osp)[1:]
        kern = _dispatch.kernel("adaptive", "cpu", kind, parallel, KH, KW)
        xshape, oshape = (lay.n * lay.c, H * W), (lay.n * lay.c, OH * OW)
        from ._cpu.separable import adaptive_cells
        args = (tab, *adaptive_cells(tab, W, OH, OW, KW), H, W, OH, init, marker)
    elif not return_indices and lay.mem == CF and x.flags.c_contiguous and \
            (frows := _flat_rows_spec(wspec, lay.spatial, osp, kind)) is not None:
        # overlapping windows on short rows: one flat horizontal pass per plane (separable.py)
        KH, KW, SW, lo, hi, pw = frows
        H, W = lay.canon(lay.spatial)[1:]
        OH, OW = lay.canon(osp)[1:]
        kern = _dispatch.kernel("flat_rows", "cpu", kind, parallel, KH, KW, SW)
        xshape, oshape = (lay.n * lay.c, H * W), (lay.n * lay.c, OH * OW)
        dv = _cell_divisors(tab, divmode, dov, OH, OW) if kind == "avg" else \
            np.ones(1, np.int64)
        args = (tab, dv, H, W, OH, OW, int(dil[1]), lo, hi, pw, init, marker)
    elif not return_indices and kind == "max" and parallel and lay.mem == CF and \
            x.flags.c_contiguous and dtype.kind == "f" and \
            _cube_windows(tab, dil, lay.canon(osp)):
        # 2 x 2 x 2 windows at stride 2 without padding: the depth slices in turn
        # (separable.make_cube_max)
        kern = _dispatch.kernel("cube_max", "cpu", kind, parallel)
        xshape = (lay.n * lay.c,) + tuple(lay.canon(lay.spatial))
        oshape = (lay.n * lay.c,) + tuple(lay.canon(osp))
        args = (marker,)
    elif not return_indices and not parallel and kind != "lp" and lay.mem == CF and \
            x.flags.c_contiguous and _pair_windows(tab, dil, lay.canon(lay.spatial),
                                                   lay.canon(osp), kind == "avg" and divmode == 1):
        # small calls of 2x2 windows at stride 2 without padding: a kernel with few arguments
        # and little per-row work (separable.make_pairs)
        H, W = lay.canon(lay.spatial)[1:]
        kern = _dispatch.kernel("pairs", "cpu", kind, False)
        xshape = (lay.n, lay.c, H, W)  # (a batched 2-d input as it is: no reshape per call)
        oshape = (lay.n, lay.c) + tuple(lay.canon(osp)[1:])
        args = (dov if divmode == 0 else 4, init, marker)
    elif not return_indices:
        if lay.mem == CF and kind != "lp" and \
                _is_global(tab, lay.spatial, osp, divmode if kind == "avg" else 2):
            kern = _dispatch.kernel("global", "cpu", kind, parallel)
            xshape, oshape = (oshape[0], -1), (oshape[0],)
            args = (init, marker)
        else:  # separable kernels; channels-last rows are (W * C) long
            c = lay.c if lay.mem == CL else 1
            xshape, oshape = xshape[:3] + (xshape[3] * c,), oshape[:3] + (oshape[3] * c,)
            consts, lo, hi, pw = _sep_args(wspec, lay.spatial[-1], osp[-1], parallel, kind)
            if consts == (0, 0, 0, 0) and wspec is not None and lay.mem == CF:
                # the table-driven kernel's whole windows (make_sep's TABLE_RUNS)
                lo, hi = _interior(lay.spatial[-1], osp[-1], wspec[0][2], wspec[1], wspec[3],
                                   wspec[2])
            args = (tab, dil, lo, hi, pw, divmode, dov, init, float(p), knumel, c, marker)
            if not parallel and wspec is not None:
                # small calls of regular windows: one kernel for every window (_cpu/small.py);
                # hot windows move on to their specialised kernel (see _move_on)
                if consts != (0, 0, 0, 0):
                    later = (_dispatch.kernel("separable", "cpu", kind, False, *consts,
                                              *_sep_flags(lay.mem == CL, False, dtype)), args)
                k3, sw, _, pw = wspec
                kern = _dispatch.kernel("small", "cpu", kind, False, lay.mem == CL)
                args = (tab, dil, k3[2], sw, pw) + args[5:]
            else:
                kern = _sep_kernel(kind, parallel, consts, tab, lay, osp, lo, hi, x, dtype)
                if consts == (0, 0, 0, 0) and parallel and lay.mem == CF:
                    # other regular windows: their specialised kernel later (see
                    # SPECIALISE_AFTER_LARGE; channels-last ones keep the table-driven kernel:
                    # (32, 28, 28, 256) float32 max 7x7 windows 1.3 ms, specialised 17-34 ms)
                    wc, wlo, whi, wpw = _sep_args(wspec, lay.spatial[-1], osp[-1], parallel,
                                                  kind, warm=True)
                    if wc != (0, 0, 0, 0):
                        later = (_sep_kernel(kind, parallel, wc, tab, lay, osp, wlo, whi, x,
                                             dtype), (tab, dil, wlo, whi, wpw) + args[5:])
                        after = SPECIALISE_AFTER_LARGE
    elif lay.mem == CF and x.flags.c_contiguous and dtype.kind == "f" and \
            _pair_windows(tab, dil, lay.canon(lay.spatial), lay.canon(osp), False):
        # 2x2 windows at stride 2 without padding, with indices: vectors of values and
        # positions (separable.make_pairs_index)
        H, W = lay.canon(lay.spatial)[1:]
        kern = _dispatch.kernel("pairs_index", "cpu", kind, parallel)
        xshape = (lay.n * lay.c, H, W)
        oshape = (lay.n * lay.c,) + tuple(lay.canon(osp)[1:])
        args = (marker,)
    elif lay.mem == CL:
        kern = _dispatch.kernel("cl", "cpu", kind, parallel)
        args = (tab, dil, init, marker)
        if not parallel:  # small calls: the lean kernel first (as the separable ones above)
            later = (kern, args)
            kern = _dispatch.kernel("cl_lean", "cpu", kind, False)
    elif x.flags.c_contiguous and dtype.kind == "f" and \
            _tiling_window(tab, dil, lay.canon(lay.spatial), lay.canon(osp)) == 3:
        # 3x3 windows at stride 2, padding 1, tiling even planes (_cpu/window.py; 32x64x112x112:
        # 0.87x the time, 8x64x56x56 0.65x)
        H, W = lay.canon(lay.spatial)[1:]
        OH, OW = lay.canon(osp)[1:]
        kern = _dispatch.kernel("max_tiled", "cpu", CF, parallel, 3)
        xshape = oshape = (-1,)
        b2 = ((2 * np.arange(OH) - 1) * W)[:, None] + (2 * np.arange(OW) - 1)[None, :]
        args = (lay.n * lay.c, H, W, OH, OW, np.ascontiguousarray(b2.reshape(-1), np.int64),
                _tile_codes(init.dtype), init, marker)
    else:
        consts, lo, hi, pw = _sep_args(wspec, lay.spatial[-1], osp[-1], parallel)
        kern = _dispatch.kernel("max", "cpu", CF, parallel, *consts)
        args = (tab, dil, lo, hi, pw, init, init, marker)  # (init again: the unused zero)
        if not parallel:  # small calls: as the separable kernels above (_cpu/small.py)
            if consts != (0, 0, 0, 0):
                later = (kern, args)
            kern = _dispatch.kernel("max_small", "cpu", CF, False)

    # the common case, decided once: the input is already the kernel's C-contiguous memory and
    # the result needs no transposition (no per-call layout work)
    direct_in = lay.batched and lay.to_mem is None and not lay.copy and not half
    direct_out = lay.batched and lay.to_user is None and not half
    # the kernel takes the arrays in their own shapes (a reshape costs ~0.2 us)
    same_in = direct_in and tuple(xshape) == x.shape
    same_out = not half and tuple(oshape) == tuple(mshape)
    lock = launch_lock() if parallel else None  # serial kernels never need the launch lock
    new_res = _alloc.allocator(mshape, dtype)
    new_idx = _alloc.allocator(mshape, idt) if return_indices else None
    # the compiled overload these arguments select, called directly once known: a plan's
    # argument types are fixed (its key holds the input's shape, strides and dtype), so
    # Numba's per-call type dispatch (~0.3 us of a 10 us call) is skipped; fresh outputs and
    # an aligned input only (a user's `out=` or an unaligned view go through the dispatcher)
    # (kernel, arguments, entry point), replaced as one: threads share the plan
    cur = (kern, args, None)
    calls = 0

    def run(x, out):
        nonlocal cur, later, calls
        if out is None:
            res = new_res()
            ires = new_idx() if return_indices else None
            user = uidx = None
        else:
            vout, iout = _unpack_out(op, out, return_indices)
            _check_out_overlap(op, x, vout, iout)
            res, user = lay.allocate(op, osp, dtype, vout)
            if return_indices:
                ires, uidx = lay.allocate(op, osp, idt, iout, name="out[1] (indices)")
        if size:
            if same_in:
                xin = x
            elif direct_in:
                xin = x.reshape(xshape)
            else:
                a = lay.input_mem(x)
                xin = (a.view(np.uint16) if half else a).reshape(xshape)
            rk = res if same_out else (res.view(np.uint16) if half else res).reshape(oshape)
            arrays = (xin, rk, ires.reshape(oshape)) if with_idx else (xin, rk)
            nxt = later
            if nxt is not None:
                if _move_on(calls, nxt[0], arrays + nxt[1], after):
                    cur = nxt + (None,)
                    later = None
                calls += 1
            kern, args, entry = cur
            call = kern if (entry is None or user is not None or not xin.flags.aligned) \
                else entry
            if lock is None:
                call(*arrays, *args)
            else:
                with lock:
                    call(*arrays, *args)
            if entry is None and user is None:
                entry = _dispatch.entry_point(kern, arrays + args)
                if cur[0] is kern:
                    cur = (kern, args, entry)
        if user is not None:
            values = user
        else:
            values = res if direct_out else lay.user_view(res)
        if not return_indices:
            return values
        return values, (uidx if uidx is not None else lay.user_view(ires))
    return run


def _ops(name):
    return (None,) + tuple(f"{name}{r}d" for r in (1, 2, 3))


def _build_max(x, op, rank, params):
    kernel_size, stride, padding, dilation, ceil_mode, return_indices, channels_last, \
        index_dtype = params
    lay = _layout(op, x, rank, bool(channels_last), MAX_DTYPES)
    k, s, d, pads, osp, tab, dil = _window(op, rank, lay.spatial, kernel_size, stride,
                                           padding, dilation, bool(ceil_mode))
    return _window_plan(op, "max", x, lay, osp, tab, dil, math.prod(k),
                        (_k3(k), s[-1], d[-1], pads[-1][0]),
                        return_indices=bool(return_indices), index_dtype=index_dtype,
                        flat=_flat_spec(k, s, d, pads, lay.spatial, osp),
                        same=_same_spec(k, s, d, pads, lay.spatial, osp))


_MAX_OPS = _ops("max_pool")


def _max_pool(rank, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
              channels_last, out, index_dtype):
    params = (kernel_size, stride, padding, dilation, ceil_mode, return_indices, channels_last,
              index_dtype)
    # (the flags are taken as bool(), and index_dtype through np.dtype(): only the window's
    # parameters have types to tell apart)
    return _planned(_MAX_OPS[rank], params, input, out, _build_max, rank,
                    (type(kernel_size), type(stride), type(padding), type(dilation)))


def _avg_divisor(op, count_include_pad, divisor_override):
    """(divmode, dov) of the sum kernels: 0 divisor_override, 1 count_include_pad, 2 cells."""
    if divisor_override is not None:
        if not _is_int(divisor_override):
            raise TypeError(f"{op}: divisor_override must be an int, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError(f"{op}: divisor_override must be non-zero, got 0")
        return 0, _bounded(op, "divisor_override", int(divisor_override))
    return (1 if count_include_pad else 2), 1


def _build_avg(x, op, rank, params):
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation, \
        channels_last = params
    lay = _layout(op, x, rank, bool(channels_last), AVG_DTYPES)
    k, s, d, pads, osp, tab, dil = _window(op, rank, lay.spatial, kernel_size, stride,
                                           padding, dilation, bool(ceil_mode), "avg")
    divmode, dov = _avg_divisor(op, bool(count_include_pad), divisor_override)
    return _window_plan(op, "avg", x, lay, osp, tab, dil, math.prod(k),
                        (_k3(k), s[-1], d[-1], pads[-1][0]), divmode, dov)


_AVG_OPS = _ops("avg_pool")


def _avg_pool(rank, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, dilation, channels_last, out):
    params = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
              dilation, channels_last)
    return _planned(_AVG_OPS[rank], params, input, out, _build_avg, rank,
                    (type(kernel_size), type(stride), type(padding), type(divisor_override),
                     type(dilation)))


def _norm_type(op, norm_type):
    p = check_float(op, "norm_type", norm_type)
    if p == 0 or not math.isfinite(p):
        raise ValueError(f"{op}: norm_type must be a non-zero finite number, got {norm_type!r}")
    return p


def _build_lp(x, op, rank, params):
    norm_type, kernel_size, stride, ceil_mode, padding, dilation, channels_last = params
    p = _norm_type(op, norm_type)
    lay = _layout(op, x, rank, bool(channels_last), FLOAT_DTYPES)
    k, s, d, pads, osp, tab, dil = _window(op, rank, lay.spatial, kernel_size, stride,
                                           padding, dilation, bool(ceil_mode), "lp")
    knumel = math.prod(k)
    return _window_plan(op, "lp", x, lay, osp, tab, dil, knumel,
                        (_k3(k), s[-1], d[-1], pads[-1][0]), 1, 1, p, knumel)


_LP_OPS = _ops("lp_pool")


def _lp_pool(rank, input, norm_type, kernel_size, stride, ceil_mode, padding, dilation,
             channels_last, out):
    params = (norm_type, kernel_size, stride, ceil_mode, padding, dilation, channels_last)
    return _planned(_LP_OPS[rank], params, input, out, _build_lp, rank)


# ----------------------------------------------------------------------------- adaptive ops

def _adaptive_size(op, rank, spatial, output_size):
    """The adaptive ops' output size: ints, None keeping that dim's input size."""
    osz = int_tuple(op, "output_size", output_size, rank, allow_none=True, spread_one=False)
    osz = tuple(spatial[i] if v is None else v for i, v in enumerate(osz))
    if min(osz) < 0:
        raise ValueError(f"{op}: output_size must be non-negative, got {osz!r}")
    return osz


def _adaptive_params(op, rank, spatial, output_size, plane_bytes=1):
    """Output size, window tables and taps per window; ``plane_bytes`` (N*C*itemsize) lets
    the result's size be refused before any table is built."""
    osz = _adaptive_size(op, rank, spatial, output_size)
    check_alloc(op, osz, plane_bytes)
    pad3 = 3 - rank
    tabs = [adaptive_table(1, 1)] * pad3
    for i in range(rank):
        check_alloc(op, (), 1, osz[i])
        tabs.append(adaptive_table(spatial[i], osz[i]))
    taps = math.prod(-(-spatial[i] // max(osz[i], 1)) + 1 for i in range(rank))
    return osz, stack_tables(tabs) if all(osz) else None, taps


# widest windows (rows and columns) the two-size adaptive kernels take: their horizontal pass
# reduces every KW-wide run of a row, which pays only while runs are short
_ADAPTIVE_MAX_K = 8
# (1-d averages up to 16: 64x128x1024 float32 -> 100, windows of 10 and 11, 4.4 ms against 7.1
# table-driven, PyTorch 5.3 ms, paired in one process; 1-d max 1.03-1.11x, 2-d 1.8-3.1x the
# time, so not those)
_ADAPTIVE_MAX_K_1D = 16
# most scratch cells (output rows x 32-padded input row) per task of those kernels and of the
# adaptive backward; larger problems have rows long enough for the row-wise kernels
ADAPTIVE_MAX_SCRATCH = 1 << 20


def _adaptive_spec(rank, tab, osz, kind="max"):
    """(KH, KW) of the two-size adaptive kernels, or None: 1-d/2-d windows whose sizes along
    each axis are K or K + 1 with K at most _ADAPTIVE_MAX_K (1-d averages: _ADAPTIVE_MAX_K_1D).
    (The plan also needs a C-contiguous channels-first input.)"""
    if tab is None or rank > 2 or all(v == 1 for v in osz):  # (one window: the global kernels)
        return None
    osz = (1,) * (3 - rank) + tuple(osz)
    width = int(tab[2, 0, osz[2] - 1] + tab[2, 1, osz[2] - 1])  # the input's W
    if osz[1] * -(-width // 32) * 32 > ADAPTIVE_MAX_SCRATCH:
        return None
    spec = []
    for ax in (1, 2):
        n = tab[ax, 1, :osz[ax]]
        k = int(n.min())
        if int(n.max()) > k + 1 or \
                k > (_ADAPTIVE_MAX_K_1D if rank == 1 and kind == "avg" else _ADAPTIVE_MAX_K):
            return None
        spec.append(k)
    return tuple(spec)


_UNIT_DIL = np.ones(3, dtype=np.int64)


def _uniform_window(spatial, osz):
    """``wspec`` of the regular window that adaptive windows are where every input size is a
    multiple of its output size (windows of one size, stride the size, no padding), else
    None: such calls reach the specialised kernels of regular windows (1-d 64x128x1024
    float32 -> 64, average 5.9 -> ~1.2 ms, PyTorch 3.6 ms)."""
    if not spatial or any(o <= 0 or n % o for n, o in zip(spatial, osz)) or \
            all(o == 1 for o in osz):
        return None
    k = tuple(n // o for n, o in zip(spatial, osz))
    return (_k3(k), k[-1], 1, 0)


def _build_adaptive_max(x, op, rank, params):
    output_size, return_indices, channels_last, index_dtype = params
    lay = _layout(op, x, rank, bool(channels_last), MAX_DTYPES)
    osz, tab, taps = _adaptive_params(op, rank, lay.spatial, output_size,
                                      lay.n * lay.c * x.dtype.itemsize)
    return _window_plan(op, "max", x, lay, osz, tab, _UNIT_DIL, taps,
                        _uniform_window(lay.spatial, osz),
                        return_indices=bool(return_indices), index_dtype=index_dtype,
                        adaptive=_adaptive_spec(rank, tab, osz))


def _build_adaptive_avg(x, op, rank, params):
    output_size, channels_last = params
    lay = _layout(op, x, rank, bool(channels_last), AVG_DTYPES)
    osz, tab, taps = _adaptive_params(op, rank, lay.spatial, output_size,
                                      lay.n * lay.c * x.dtype.itemsize)
    return _window_plan(op, "avg", x, lay, osz, tab, _UNIT_DIL, taps,
                        _uniform_window(lay.spatial, osz), divmode=2,
                        adaptive=_adaptive_spec(rank, tab, osz, "avg"))


_ADAPTIVE_MAX_OPS = _ops("adaptive_max_pool")
_ADAPTIVE_AVG_OPS = _ops("adaptive_avg_pool")


def _channel_free(op, rank, x, output_size, channels_last, batched_too, dtypes):
    """PyTorch's adaptive ops take an unbatched input without channels, ``(0, *spatial)``, as
    an empty batch (its 1-d and 2-d average also a batched one, ``(N, 0, *spatial)``): the
    result's shape (the output size in place of the spatial dims) for such an input, else
    None (every other input takes the usual checks)."""
    if not isinstance(x, np.ndarray) or x.size or x.ndim not in (rank + 1, rank + 2) or \
            (x.ndim == rank + 2 and not batched_too):
        return None
    lead = x.shape[:x.ndim - rank - 1]
    cl = bool(channels_last)
    c = x.shape[-1] if cl else x.shape[len(lead)]
    sp = x.shape[len(lead):-1] if cl else x.shape[len(lead) + 1:]
    if c != 0 or 0 in sp:
        return None
    check_dtype(x.dtype, dtypes, op)
    osz = _adaptive_size(op, rank, sp, output_size)
    return lead + (osz + (0,) if cl else (0,) + osz)


def _empty_out(op, shape, dtype, out, name="out"):
    """The empty result of ``shape``: ``out`` itself when it fits, else a new array."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype:
        got = (out.shape, out.dtype) if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"{op}: {name} must be an array of shape {tuple(shape)} and dtype "
                         f"{np.dtype(dtype)}, got {got}")
    return out


def _adaptive_max_pool(rank, input, output_size, return_indices, channels_last, out,
                       index_dtype):
    op = _ADAPTIVE_MAX_OPS[rank]
    shape = _channel_free(op, rank, input, output_size, channels_last, False, MAX_DTYPES)
    if shape is not None:
        if not return_indices:
            return _empty_out(op, shape, input.dtype, out)
        vout, iout = _unpack_out(op, out, True)
        return (_empty_out(op, shape, input.dtype, vout, "out[0] (values)"),
                _empty_out(op, shape, _index_dtype(op, index_dtype, 0), iout,
                           "out[1] (indices)"))
    params = (output_size, return_indices, channels_last, index_dtype)
    return _planned(op, params, input, out, _build_adaptive_max, rank)


def _channel_free_avg(op, rank, x, output_size, channels_last, dtypes=AVG_DTYPES):
    """``_channel_free`` for the adaptive average: batched inputs too in 1-d and 2-d, and in
    3-d where every output size is 1 (PyTorch's mean path takes them there)."""
    shape = _channel_free(op, rank, x, output_size, channels_last, True, dtypes)
    if shape is not None and rank == 3 and x.ndim == rank + 2:
        sp = shape[1:-1] if channels_last else shape[2:]
        if any(v != 1 for v in sp):
            return None
    return shape


def _adaptive_avg_pool(rank, input, output_size, channels_last, out):
    op = _ADAPTIVE_AVG_OPS[rank]
    shape = _channel_free_avg(op, rank, input, output_size, channels_last)
    if shape is not None:
        return _empty_out(op, shape, input.dtype, out)
    return _planned(op, (output_size, channels_last), input, out, _build_adaptive_avg, rank)


# ----------------------------------------------------------------------------- fractional

def _fractional_starts(op, samples, spatial, kernel, osz, dtype):
    """PyTorch's interval rule, per plane: (N, C, 3, maxout) window starts.

    The arithmetic runs in the input's float type, as PyTorch's (float16 rounds after every
    operation, like ``c10::Half``; integer inputs use float32).  PyTorch's 2-d kernel reads the
    samples as (W, H), its 3-d kernel as (T, H, W).
    """
    n, c, rank = samples.shape
    ft = dtype.type if dtype.kind == "f" else np.float32
    m = max(osz)
    starts = np.zeros((n, c, 3, m), dtype=np.int64)
    for i in range(rank):
        u = samples[:, :, rank - 1 - i if rank == 2 else i].astype(ft)
        o, size, k = osz[i], spatial[i], kernel[i]
        dim = 3 - rank + i
        if o > 1:
            alpha = ft(size - k) / ft(o - 1)
            steps = np.arange(o - 1).astype(ft)
            seq = ((steps + u[..., None]) * alpha).astype(np.int64) - \
                (u * alpha).astype(np.int64)[..., None]
            starts[:, :, dim, :o - 1] = seq
        if o >= 1:
            starts[:, :, dim, o - 1] = size - k
    return starts


def _fractional_size(op, rank, spatial, kernel_size, output_size, output_ratio):
    """(kernel, output size) of fractional max pooling, every check on them."""
    k = int_tuple(op, "kernel_size", kernel_size, rank, spread_one=False)
    positive(op, "kernel_size", k)
    if output_size is not None:
        osz = int_tuple(op, "output_size", output_size, rank, spread_one=False)
        if min(osz) < 0:  # (0: an empty result, as PyTorch)
            raise ValueError(f"{op}: output_size must be non-negative, got {osz!r}")
    elif output_ratio is not None:
        if isinstance(output_ratio, (tuple, list)):
            if len(output_ratio) != rank:
                raise ValueError(f"{op}: output_ratio must be a number or a tuple of {rank} "
                                 f"numbers, got {tuple(output_ratio)!r}")
            ratios = tuple(check_float(op, "output_ratio", r) for r in output_ratio)
        else:
            ratios = (check_float(op, "output_ratio", output_ratio),) * rank
        for r in ratios:
            if not 0 < r < 1:
                raise ValueError(f"{op}: output_ratio must be in the range (0, 1), got {ratios!r}")
        osz = tuple(int(spatial[i] * ratios[i]) for i in range(rank))  # (0: empty, as PyTorch)
    else:
        raise ValueError(f"{op}: requires specifying either an output_size or an output_ratio")
    # (PyTorch's 3-d op wants the windows' span strictly inside the input, its 2-d op not)
    strict = rank == 3
    for i in range(rank):
        if osz[i] + k[i] - 1 > spatial[i] - strict:
            raise ValueError(f"{op}: kernel_size {k[i]} with output size {osz[i]} is too large "
                             f"for input size {spatial[i]} in spatial dim {i} "
                             f"(needs output_size + kernel_size - 1 "
                             f"{'<' if strict else '<='} input size)")
    return k, osz


def _samples(op, random_samples, shape):
    """Fractional pooling's samples, checked (a float array of ``shape`` in [0, 1)), or drawn
    from NumPy's global generator when None."""
    if random_samples is None:
        return np.random.random_sample(shape)
    samples = _as_array(op, random_samples, "random_samples")
    if samples.dtype.kind != "f":
        raise TypeError(f"{op}: random_samples must be a float array, got {samples.dtype}")
    if samples.shape != shape:
        raise ValueError(f"{op}: random_samples must have shape {shape}, got {samples.shape}")
    if samples.size and not (np.all(samples >= 0) and np.all(samples < 1)):
        raise ValueError(f"{op}: random_samples must lie in [0, 1)")
    return samples


def _fractional_max_pool(rank, input, kernel_size, output_size, output_ratio, return_indices,
                         random_samples, channels_last):
    op = f"fractional_max_pool{rank}d"
    arr, lay = _prepare(op, input, rank, channels_last, MAX_DTYPES)
    spatial = lay.spatial
    k, osz = _fractional_size(op, rank, spatial, kernel_size, output_size, output_ratio)
    shape = (lay.n if lay.batched else 1, lay.c, rank)
    samples = _samples(op, random_samples, shape)
    starts = _fractional_starts(op, samples, spatial, k, osz, arr.dtype)
    res, _ = lay.allocate(op, osz, arr.dtype, None)
    if return_indices:
        ires, _ = lay.allocate(op, osz, np.int64, None)
        kidx = lay.logical5(ires, osz)
    else:
        kidx = np.zeros((1, 1, 1, 1, 1), np.int64)
    if res.size:
        k3 = (1,) * (3 - rank) + k
        xs, marker = storage(arr)
        rs, _ = storage(res)
        kern = _dispatch.kernel("fractional_max", "cpu", "any",
                                _parallel(res.size * math.prod(k)))
        with launch_lock():
            kern(lay.logical5(xs, spatial), lay.logical5(rs, osz), kidx, starts, k3[0], k3[1],
                 k3[2], bool(return_indices), _lowest(arr.dtype), marker)
    values = lay.user_view(res)
    return (values, lay.user_view(ires)) if return_indices else values


# ----------------------------------------------------------------------------- unpooling

def _unpool_size(op, rank, spatial, k, s, pads, output_size):
    default = tuple((spatial[i] - 1) * s[i] + k[i] - pads[i][0] - pads[i][1]
                    for i in range(rank))
    if output_size is None:
        osz = default
    else:
        output_size = as_sequence(output_size)
        if not isinstance(output_size, (tuple, list)):
            if not _is_int(output_size):
                raise TypeError(f"{op}: output_size must be an int or a sequence of ints, got "
                                f"{output_size!r}")
            output_size = (output_size,) * rank
        osz = tuple(output_size)
        if len(osz) == rank + 2:  # (a full (N, C, *spatial) shape, as PyTorch takes it)
            osz = osz[2:]
        elif len(osz) != rank:
            raise ValueError(f"{op}: output_size must have {rank} or {rank + 2} entries (the "
                             f"spatial size, or a full (N, C, *spatial) shape), got {osz!r} "
                             f"(length {len(osz)})")
        osz = int_tuple(op, "output_size", osz, rank, spread_one=False)
        for i in range(rank):
            lo, hi = default[i] - s[i], default[i] + s[i]
            if not lo < osz[i] < hi:
                raise ValueError(f"{op}: output_size {osz} must be within ({lo}, {hi}) "
                                 f"exclusive in spatial dim {i} (default size {default[i]})")
    for v in osz:  # (0 along a dim: an empty result, as PyTorch gives)
        if v < 0:
            raise ValueError(f"{op}: output size {osz} must be non-negative (input "
                             f"{tuple(spatial)}, kernel_size {tuple(k)}, stride {tuple(s)}, "
                             f"padding {tuple(p[0] if p[0] == p[1] else p for p in pads)})")
    return osz


def _unpool_geometry(op, rank, spatial, kernel_size, stride, padding, output_size):
    """Output size of max unpooling from the user's parameters."""
    k = int_tuple(op, "kernel_size", kernel_size, rank, spread_one=False)
    positive(op, "kernel_size", k)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        s = k
    else:
        s = int_tuple(op, "stride", stride, rank, spread_one=False)
        positive(op, "stride", s)
    pads, _ = padding_arg(op, padding, rank, k, s, (1,) * rank, spatial, half_limit=False)
    return _unpool_size(op, rank, spatial, k, s, pads, output_size)


# Channels-first unpooling results of this many bytes and more (float) are built plane by plane
# in scratch and streamed out: the output is mostly written, and a plain store reads its line
# (see _runtime.STREAM_MIN_BYTES)
_UNPOOL_STREAM_MIN = STREAM_MIN_BYTES


def _max_unpool(rank, input, indices, kernel_size, stride, padding, output_size, channels_last,
                out):
    op = f"max_unpool{rank}d"
    arr, lay = _prepare(op, input, rank, channels_last, MAX_DTYPES)
    idx = _as_array(op, indices, "indices")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be an integer array, got dtype {idx.dtype}")
    expect = lay.user_shape(lay.spatial)
    if idx.shape != expect:
        raise ValueError(f"{op}: indices has shape {idx.shape}, expected the input's shape "
                         f"{expect}")
    osz = _unpool_geometry(op, rank, lay.spatial, kernel_size, stride, padding, output_size)
    if isinstance(out, (tuple, list)):
        raise ValueError(f"{op}: out must be one array")
    _check_out_overlap(op, arr, out, indices=idx)
    T = math.prod(osz)
    run = arr.size > 0 and T > 0  # (else no cell for any index, nothing to write)
    res, user_res = lay.allocate(op, osz, arr.dtype, out, zero=not run)
    if run:
        xs, _ = storage(arr)
        rs, _ = storage(res)
        S = math.prod(lay.spatial)
        # flat views per plane (channels-first) or image (channels-last) of the memory layout;
        # the indices in that memory order too (a copy only where they are not)
        im = np.ascontiguousarray(lay.mem_view(idx))
        if lay.mem == CL:
            views = (xs.reshape(lay.n, S, lay.c), im.reshape(lay.n, S, lay.c),
                     rs.reshape(lay.n, T, lay.c))
            blk, nt = 1, False
        else:
            P = lay.n * lay.c
            views = (xs.reshape(P, S), im.reshape(P, S), rs.reshape(P, T))
            from .backward import _plane_block  # (a circular import at the top)
            blk = _plane_block(P, T)
            nt = rs.dtype.kind == "f" and res.nbytes >= _UNPOOL_STREAM_MIN
        bad = np.zeros((lay.n * lay.c, 2), dtype=np.int64)
        kern = _dispatch.kernel("max_unpool", "cpu", lay.mem, _parallel(arr.size + T * lay.n *
                                                                        lay.c))
        with launch_lock():
            kern(*views, bad, blk, nt, np.zeros(1, rs.dtype)[0])
        if bad[:, 0].any():
            pl = int(np.argmax(bad[:, 0]))
            raise ValueError(f"{op}: indices holds {int(bad[pl, 1])} in plane {pl}, outside the "
                             f"output plane of {T} cells (output size {osz})")
    return user_res if user_res is not None else lay.user_view(res)


# ----------------------------------------------------------------------------- public names

def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, channels_last=False, out=None, index_dtype=np.int64):
    """1-d max pooling over (N, C, W); see ``max_pool2d``."""
    return _max_pool(1, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, channels_last, out, index_dtype)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, channels_last=False, out=None, index_dtype=np.int64):
    """2-d max pooling, PyTorch's semantics; padding may also be (before, after) pairs or
    'same' / 'same_lower' / 'valid'.  Returns values, or (values, indices)."""
    return _max_pool(2, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, channels_last, out, index_dtype)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, channels_last=False, out=None, index_dtype=np.int64):
    """3-d max pooling over (N, C, D, H, W); see ``max_pool2d``."""
    return _max_pool(3, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, channels_last, out, index_dtype)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, dilation=1,
               channels_last=False, out=None):
    """1-d average pooling; see ``avg_pool2d``."""
    return _avg_pool(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, channels_last, out)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, dilation=1,
               channels_last=False, out=None):
    """2-d average pooling, PyTorch's semantics, plus dilation and ONNX-style padding."""
    return _avg_pool(2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, channels_last, out)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, dilation=1,
               channels_last=False, out=None):
    """3-d average pooling; see ``avg_pool2d``."""
    return _avg_pool(3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, channels_last, out)


def lp_pool1d(input, norm_type, kernel_size, stride=None, ceil_mode=False, *, padding=0,
              dilation=1, channels_last=False, out=None):
    """1-d power-average pooling; see ``lp_pool2d``."""
    return _lp_pool(1, input, norm_type, kernel_size, stride, ceil_mode, padding, dilation,
                    channels_last, out)


def lp_pool2d(input, norm_type, kernel_size, stride=None, ceil_mode=False, *, padding=0,
              dilation=1, channels_last=False, out=None):
    """2-d power-average pooling, PyTorch's definition ``(sum x**p) ** (1/p)``."""
    return _lp_pool(2, input, norm_type, kernel_size, stride, ceil_mode, padding, dilation,
                    channels_last, out)


def lp_pool3d(input, norm_type, kernel_size, stride=None, ceil_mode=False, *, padding=0,
              dilation=1, channels_last=False, out=None):
    """3-d power-average pooling; see ``lp_pool2d``."""
    return _lp_pool(3, input, norm_type, kernel_size, stride, ceil_mode, padding, dilation,
                    channels_last, out)


def adaptive_max_pool1d(input, output_size, return_indices=False, *, channels_last=False,
                        out=None, index_dtype=np.int64):
    """1-d adaptive max pooling; see ``adaptive_max_pool2d``."""
    return _adaptive_max_pool(1, input, output_size, return_indices, channels_last, out,
                              index_dtype)


def adaptive_max_pool2d(input, output_size, return_indices=False, *, channels_last=False,
                        out=None, index_dtype=np.int64):
    """2-d adaptive max pooling: windows [floor(i*in/out), ceil((i+1)*in/out))."""
    return _adaptive_max_pool(2, input, output_size, return_indices, channels_last, out,
                              index_dtype)


def adaptive_max_pool3d(input, output_size, return_indices=False, *, channels_last=False,
                        out=None, index_dtype=np.int64):
    """3-d adaptive max pooling; see ``adaptive_max_pool2d``."""
    return _adaptive_max_pool(3, input, output_size, return_indices, channels_last, out,
                              index_dtype)


def adaptive_avg_pool1d(input, output_size, *, channels_last=False, out=None):
    """1-d adaptive average pooling; see ``adaptive_avg_pool2d``."""
    return _adaptive_avg_pool(1, input, output_size, channels_last, out)


def adaptive_avg_pool2d(input, output_size, *, channels_last=False, out=None):
    """2-d adaptive average pooling: windows [floor(i*in/out), ceil((i+1)*in/out))."""
    return _adaptive_avg_pool(2, input, output_size, channels_last, out)


def adaptive_avg_pool3d(input, output_size, *, channels_last=False, out=None):
    """3-d adaptive average pooling; see ``adaptive_avg_pool2d``."""
    return _adaptive_avg_pool(3, input, output_size, channels_last, out)


def fractional_max_pool2d(input, kernel_size, output_size=None, output_ratio=None,
                          return_indices=False, *, random_samples=None, _random_samples=None,
                          channels_last=False):
    """2-d fractional max pooling (PyTorch's pseudo-random intervals)."""
    if random_samples is None:
        random_samples = _random_samples
    return _fractional_max_pool(2, input, kernel_size, output_size, output_ratio,
                                return_indices, random_samples, channels_last)


def fractional_max_pool3d(input, kernel_size, output_size=None, output_ratio=None,
                          return_indices=False, *, random_samples=None, _random_samples=None,
                          channels_last=False):
    """3-d fractional max pooling; see ``fractional_max_pool2d``."""
    if random_samples is None:
        random_samples = _random_samples
    return _fractional_max_pool(3, input, kernel_size, output_size, output_ratio,
                                return_indices, random_samples, channels_last)


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None, *,
                 channels_last=False, out=None):
    """1-d partial inverse of max pooling; see ``max_unpool2d``."""
    return _max_unpool(1, input, indices, kernel_size, stride, padding, output_size,
                       channels_last, out)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None, *,
                 channels_last=False, out=None):
    """2-d partial inverse of max pooling: zeros except the values at their indices."""
    return _max_unpool(2, input, indices, kernel_size, stride, padding, output_size,
                       channels_last, out)


def max_unpool3d(input, indices, kernel_size, stride=None, padding=0, output_size=None, *,
                 channels_last=False, out=None):
    """3-d partial inverse of max pooling; see ``max_unpool2d``."""
    return _max_unpool(3, input, indices, kernel_size, stride, padding, output_size,
                       channels_last, out)
